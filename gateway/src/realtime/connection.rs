//! One WebSocket, from upgrade to close: authenticate (first message
//! within the timeout, or `?token=`), then serve client ops and write what
//! the hub and the subscription tasks queue, until the client leaves, the
//! token expires or is revoked, the connection falls too far behind, or the
//! gateway shuts down. Every way out says why in an `error` frame and a
//! close frame.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::SinkExt;
use tandem_domain::live::{kind, Relayed};
use tandem_domain::Role;
use tokio::sync::{broadcast, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::hub::{ConnId, Out, Outbox, Signals};
use super::protocol::{self, close, code, ClientOp};
use super::{subscription, Realtime};
use crate::auth::jwt::{now_secs, AccessToken};
use crate::state::AppState;

/// Frames written per flush.
const BATCH: usize = 64;
/// How long the goodbye (error + close frame) may take to write: long
/// enough for a slow consumer to drain what is already on the wire and
/// learn why it is cut off; the queue is freed before.
const GOODBYE: Duration = Duration::from_secs(10);
/// How long the client has to answer our close frame with its own.
const CLOSE_REPLY: Duration = Duration::from_secs(2);

/// Why the connection ends.
struct Closing {
    code: &'static str,
    message: &'static str,
    close: u16,
}

impl Closing {
    const fn new(code: &'static str, message: &'static str, close: u16) -> Self {
        Self {
            code,
            message,
            close,
        }
    }
}

/// The socket went away under us: nothing more can be written.
struct Gone;

enum Ending {
    Close(Closing),
    Gone,
}

impl From<Gone> for Ending {
    fn from(_: Gone) -> Self {
        Ending::Gone
    }
}

impl From<Closing> for Ending {
    fn from(c: Closing) -> Self {
        Ending::Close(c)
    }
}

impl From<axum::Error> for Ending {
    fn from(_: axum::Error) -> Self {
        Ending::Gone
    }
}

struct Subscription {
    /// `None` until authorized.
    role: Option<Role>,
    /// Stops the subscription's catch-up task. Not its `JoinHandle`: a
    /// handle keeps a finished task's memory alive, and most subscriptions
    /// are live, their task long done.
    cancel: CancellationToken,
}

/// Cursors and broadcasts allowed per connection: a token bucket.
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl Bucket {
    fn new(per_sec: u32) -> Self {
        let rate = f64::from(per_sec.max(1));
        Self {
            tokens: rate * 2.0,
            rate,
            burst: rate * 2.0,
            last: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Connection {
    state: AppState,
    realtime: Realtime,
    id: ConnId,
    token: AccessToken,
    outbox: Outbox,
    queue: mpsc::Receiver<Out>,
    signals: Arc<Signals>,
    revocations: broadcast::Receiver<Uuid>,
    subscriptions: HashMap<Uuid, Subscription>,
    bucket: Bucket,
    last_heard: Instant,
    expiry: Pin<Box<Sleep>>,
}

/// Serves one upgraded socket; `token`: from `?token=`, if given.
pub async fn run(state: AppState, mut socket: WebSocket, token: Option<String>) {
    let realtime = state.realtime.clone();
    let Some(id) = realtime.admit() else {
        let full = Closing::new(
            code::UNAVAILABLE,
            "this gateway holds all the connections it can; try another or later",
            close::TRY_AGAIN_LATER,
        );
        goodbye(&mut socket, &full).await;
        return;
    };
    let token = match authenticate(&state, &mut socket, token).await {
        Ok(token) => token,
        Err(Ending::Close(closing)) => {
            goodbye(&mut socket, &closing).await;
            realtime.depart();
            return;
        }
        Err(Ending::Gone) => {
            realtime.depart();
            return;
        }
    };
    let (outbox, queue, signals) = Outbox::new(realtime.config.outbox_frames);
    let mut connection = Connection {
        revocations: realtime.hub.revocations(),
        bucket: Bucket::new(realtime.config.ephemeral_per_sec),
        last_heard: Instant::now(),
        expiry: Box::pin(tokio::time::sleep_until(expiry_of(&token))),
        state,
        realtime: realtime.clone(),
        id,
        token,
        outbox,
        queue,
        signals,
        subscriptions: HashMap::new(),
    };
    let ending = connection.serve(&mut socket).await;
    connection.leave_all().await;
    // Frees the queue before a goodbye that may take a while.
    drop(connection);
    if let Ending::Close(closing) = ending {
        if closing.code == code::SLOW_CONSUMER {
            metrics::counter!("tandem_ws_slow_consumers_total").increment(1);
        }
        goodbye(&mut socket, &closing).await;
    }
    realtime.depart();
}

fn expiry_of(token: &AccessToken) -> Instant {
    Instant::now() + Duration::from_secs(token.expires_at.saturating_sub(now_secs()))
}

/// Writes an `error` frame and a close frame, bounded in time: a client
/// that stopped reading must not keep the task alive.
async fn goodbye(socket: &mut WebSocket, closing: &Closing) {
    let frame = protocol::error(closing.code, closing.message, None);
    let close = Message::Close(Some(CloseFrame {
        code: closing.close,
        reason: Utf8Bytes::from_static(closing.code),
    }));
    let sent = tokio::time::timeout(GOODBYE, async {
        socket.feed(Message::Text(frame)).await?;
        socket.feed(close).await?;
        socket.flush().await
    })
    .await;
    if matches!(sent, Ok(Ok(()))) {
        // The closing handshake: read (and drop) what the client still
        // sends until its close frame, so it does not write into a socket
        // we already shut.
        let _ = tokio::time::timeout(CLOSE_REPLY, async {
            while let Some(Ok(message)) = socket.recv().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

async fn verify(state: &AppState, raw: &str) -> Result<AccessToken, Closing> {
    let token = state.jwt.verify(raw).ok_or(Closing::new(
        code::INVALID_TOKEN,
        "the access token is malformed, expired or not ours",
        close::POLICY,
    ))?;
    match state
        .redis
        .is_denied(&token.jti, &token.session.to_string())
        .await
    {
        Ok(false) => Ok(token),
        Ok(true) => Err(Closing::new(
            code::TOKEN_REVOKED,
            "this access token has been revoked",
            close::POLICY,
        )),
        Err(e) => {
            tracing::warn!(error = %e, "cannot check the token denylist (Redis)");
            Err(Closing::new(
                code::UNAVAILABLE,
                "tokens cannot be checked right now; try again",
                close::TRY_AGAIN_LATER,
            ))
        }
    }
}

async fn authenticate(
    state: &AppState,
    socket: &mut WebSocket,
    token: Option<String>,
) -> Result<AccessToken, Ending> {
    let token = match token {
        Some(raw) => verify(state, &raw).await?,
        None => {
            let first = tokio::time::timeout(state.realtime.config.auth_timeout, socket.recv())
                .await
                .map_err(|_| {
                    Closing::new(
                        code::AUTH_TIMEOUT,
                        "authenticate first: {\"op\":\"auth\",\"token\":...}",
                        close::POLICY,
                    )
                })?;
            let raw = match first {
                Some(Ok(Message::Text(text))) => match serde_json::from_str(&text) {
                    Ok(ClientOp::Auth { token }) => token,
                    _ => {
                        return Err(Closing::new(
                            code::UNAUTHENTICATED,
                            "the first message must be {\"op\":\"auth\",\"token\":...}",
                            close::POLICY,
                        )
                        .into())
                    }
                },
                Some(Ok(_)) => {
                    return Err(Closing::new(
                        code::UNAUTHENTICATED,
                        "the first message must be {\"op\":\"auth\",\"token\":...}",
                        close::POLICY,
                    )
                    .into())
                }
                Some(Err(e)) => return Err(read_failure(e)),
                None => return Err(Ending::Gone),
            };
            verify(state, &raw).await?
        }
    };
    socket
        .send(Message::Text(protocol::authenticated(
            token.user.0,
            token.expires_at,
        )))
        .await?;
    Ok(token)
}

/// A read error: an oversized frame is the client's fault and is said so
/// (1009); anything else means the socket is gone.
fn read_failure(error: axum::Error) -> Ending {
    let too_big = error
        .into_inner()
        .downcast::<tungstenite::Error>()
        .is_ok_and(|e| matches!(*e, tungstenite::Error::Capacity(_)));
    if too_big {
        Ending::Close(Closing::new(
            code::MESSAGE_TOO_LARGE,
            "messages are limited to 64 KiB",
            close::TOO_BIG,
        ))
    } else {
        Ending::Gone
    }
}

impl Connection {
    async fn serve(&mut self, socket: &mut WebSocket) -> Ending {
        let shutdown = self.realtime.shutdown.clone();
        let signals = self.signals.clone();
        let config = self.realtime.config.clone();
        let mut pings =
            tokio::time::interval_at(Instant::now() + config.ping_interval, config.ping_interval);
        let slow = || {
            Ending::Close(Closing::new(
                code::SLOW_CONSUMER,
                "you fell too far behind; reconnect and resume with `since`",
                close::TRY_AGAIN_LATER,
            ))
        };
        loop {
            let step: Result<(), Ending> = tokio::select! {
                biased;
                () = shutdown.cancelled() => Err(Closing::new(
                    code::SHUTTING_DOWN,
                    "the gateway is shutting down; reconnect and resume with `since`",
                    close::GOING_AWAY,
                ).into()),
                () = signals.overflow() => Err(slow()),
                revoked = self.revocations.recv() => self.check_revocation(revoked).await,
                () = &mut self.expiry => Err(Closing::new(
                    code::TOKEN_EXPIRED,
                    "the access token expired; send a fresh one with {\"op\":\"auth\"} before it does",
                    close::POLICY,
                ).into()),
                out = self.queue.recv() => match out {
                    Some(out) => {
                        let written = tokio::select! {
                            written = tokio::time::timeout(config.idle_timeout, self.write(socket, out)) => written,
                            () = signals.overflow() => return slow(),
                        };
                        match written {
                            Ok(result) => result,
                            Err(_) => Err(slow()),
                        }
                    }
                    None => Err(Ending::Gone),
                },
                message = socket.recv() => {
                    self.last_heard = Instant::now();
                    match message {
                        Some(Ok(message)) => self.on_message(socket, message).await,
                        Some(Err(e)) => Err(read_failure(e)),
                        None => Err(Ending::Gone),
                    }
                }
                _ = pings.tick() => {
                    if self.last_heard.elapsed() > config.idle_timeout {
                        Err(Closing::new(code::IDLE, "no traffic from you for too long", close::GOING_AWAY).into())
                    } else {
                        socket.send(Message::Ping(Default::default())).await.map_err(Ending::from)
                    }
                }
            };
            if let Err(ending) = step {
                return ending;
            }
        }
    }

    /// Writes `first` and whatever else is queued (up to a batch), then
    /// flushes once.
    async fn write(&mut self, socket: &mut WebSocket, first: Out) -> Result<(), Ending> {
        let mut next = Some(first);
        let mut written = 0;
        while let Some(out) = next.take() {
            match out {
                Out::Frame(frame) => socket.feed(Message::Text(frame)).await?,
                Out::Role { project, role } => {
                    if let Some(subscription) = self.subscriptions.get_mut(&project) {
                        subscription.role = Some(role);
                    }
                }
                Out::Ended { project, frame } => {
                    if self.forget(project).await {
                        socket.feed(Message::Text(frame)).await?;
                    }
                }
            }
            written += 1;
            if written < BATCH {
                next = self.queue.try_recv().ok();
            }
        }
        socket.flush().await?;
        Ok(())
    }

    async fn check_revocation(
        &mut self,
        revoked: Result<Uuid, broadcast::error::RecvError>,
    ) -> Result<(), Ending> {
        let revoked = match revoked {
            Ok(session) => session == self.token.session.0,
            // Missed some: ask the denylist instead.
            Err(broadcast::error::RecvError::Lagged(_)) => self
                .state
                .redis
                .is_denied(&self.token.jti, &self.token.session.to_string())
                .await
                .unwrap_or(false),
            Err(broadcast::error::RecvError::Closed) => false,
        };
        if revoked {
            Err(Closing::new(
                code::TOKEN_REVOKED,
                "this session was logged out or revoked",
                close::POLICY,
            )
            .into())
        } else {
            Ok(())
        }
    }

    async fn on_message(&mut self, socket: &mut WebSocket, message: Message) -> Result<(), Ending> {
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) => {
                return self
                    .reply_error(socket, code::BAD_REQUEST, "send JSON text frames", None)
                    .await
            }
            Message::Close(_) => return Err(Ending::Gone),
            Message::Ping(_) | Message::Pong(_) => return Ok(()),
        };
        let op = match serde_json::from_str::<ClientOp>(&text) {
            Ok(op) => op,
            Err(e) => {
                let message = format!("not a valid message: {e}");
                let frame = protocol::error(code::BAD_REQUEST, &message, None);
                return socket
                    .send(Message::Text(frame))
                    .await
                    .map_err(Ending::from);
            }
        };
        match op {
            ClientOp::Auth { token } => self.reauthenticate(socket, &token).await,
            ClientOp::Subscribe { project_id, since } => {
                self.subscribe(socket, project_id, since).await
            }
            ClientOp::Unsubscribe { project_id } => {
                if self.forget(project_id).await {
                    let frame = protocol::unsubscribed(project_id);
                    socket.send(Message::Text(frame)).await?;
                    Ok(())
                } else {
                    self.not_subscribed(socket, project_id).await
                }
            }
            ClientOp::Cursor { project_id, data } => {
                self.relay(socket, kind::CURSOR, project_id, data).await
            }
            ClientOp::Broadcast { project_id, data } => {
                self.relay(socket, kind::BROADCAST, project_id, data).await
            }
            ClientOp::Ping => Ok(socket.send(Message::Text(protocol::pong())).await?),
        }
    }

    async fn reply_error(
        &self,
        socket: &mut WebSocket,
        code: &str,
        message: &str,
        project: Option<Uuid>,
    ) -> Result<(), Ending> {
        let frame = protocol::error(code, message, project);
        Ok(socket.send(Message::Text(frame)).await?)
    }

    async fn not_subscribed(&self, socket: &mut WebSocket, project: Uuid) -> Result<(), Ending> {
        self.reply_error(
            socket,
            code::NOT_SUBSCRIBED,
            "not subscribed to that project",
            Some(project),
        )
        .await
    }

    async fn reauthenticate(&mut self, socket: &mut WebSocket, raw: &str) -> Result<(), Ending> {
        let token = match verify(&self.state, raw).await {
            Ok(token) => token,
            // A bad fresh token does not end a connection whose token is
            // still good.
            Err(closing) => {
                return self
                    .reply_error(socket, closing.code, closing.message, None)
                    .await
            }
        };
        if token.user != self.token.user {
            return self
                .reply_error(
                    socket,
                    code::FORBIDDEN,
                    "a connection belongs to one user; open another for this one",
                    None,
                )
                .await;
        }
        self.expiry.as_mut().reset(expiry_of(&token));
        let frame = protocol::authenticated(token.user.0, token.expires_at);
        self.token = token;
        Ok(socket.send(Message::Text(frame)).await?)
    }

    async fn subscribe(
        &mut self,
        socket: &mut WebSocket,
        project: Uuid,
        since: Option<i64>,
    ) -> Result<(), Ending> {
        if since.is_some_and(|s| s < 0) {
            return self
                .reply_error(
                    socket,
                    code::BAD_REQUEST,
                    "`since` is a log position (0 or more)",
                    Some(project),
                )
                .await;
        }
        if self.subscriptions.contains_key(&project) {
            return self
                .reply_error(
                    socket,
                    code::ALREADY_SUBSCRIBED,
                    "this connection is already subscribed to that project",
                    Some(project),
                )
                .await;
        }
        let request = subscription::Request {
            project,
            since,
            connection: self.id,
            user: self.token.user.0,
            outbox: self.outbox.clone(),
        };
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let run = subscription::run(self.realtime.clone(), request);
        self.realtime.tracker.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = run => {}
            }
        });
        self.subscriptions
            .insert(project, Subscription { role: None, cancel });
        metrics::gauge!("tandem_ws_subscriptions").increment(1.0);
        Ok(())
    }

    /// Ends a subscription here, in the hub and in presence; `false` if
    /// there was none.
    async fn forget(&mut self, project: Uuid) -> bool {
        let Some(subscription) = self.subscriptions.remove(&project) else {
            return false;
        };
        subscription.cancel.cancel();
        self.realtime.hub.remove(project, self.id);
        self.realtime
            .leave_presence(project, self.token.user.0, self.id)
            .await;
        metrics::gauge!("tandem_ws_subscriptions").decrement(1.0);
        true
    }

    async fn leave_all(&mut self) {
        let projects: Vec<Uuid> = self.subscriptions.keys().copied().collect();
        for project in projects {
            self.forget(project).await;
        }
    }

    async fn relay(
        &mut self,
        socket: &mut WebSocket,
        what: &str,
        project: Uuid,
        data: serde_json::Value,
    ) -> Result<(), Ending> {
        let Some(role) = self.subscriptions.get(&project).map(|s| s.role) else {
            return self.not_subscribed(socket, project).await;
        };
        let Some(role) = role else {
            return self
                .reply_error(
                    socket,
                    code::NOT_SUBSCRIBED,
                    "wait for `subscribed` before sending to the project",
                    Some(project),
                )
                .await;
        };
        if !role.can_write() {
            return self
                .reply_error(
                    socket,
                    code::FORBIDDEN,
                    "viewers cannot send cursors or broadcasts",
                    Some(project),
                )
                .await;
        }
        let size = serde_json::to_vec(&data).map_or(usize::MAX, |d| d.len());
        if size > self.realtime.config.ephemeral_max_bytes {
            return self
                .reply_error(
                    socket,
                    code::TOO_LARGE,
                    "cursor and broadcast data is limited to 4 KiB",
                    Some(project),
                )
                .await;
        }
        if !self.bucket.take() {
            return self
                .reply_error(
                    socket,
                    code::RATE_LIMITED,
                    "too many cursors or broadcasts; slow down",
                    Some(project),
                )
                .await;
        }
        let message = Relayed {
            origin: self.realtime.origin(self.id),
            user_id: self.token.user.0,
            data,
        };
        let payload = serde_json::to_vec(&message).unwrap_or_default();
        let subject = self.realtime.names.live_subject(project, what);
        if let Err(e) = self.realtime.nats.publish(subject, payload.into()).await {
            tracing::warn!(error = %e, "could not relay a cursor or broadcast");
            return self
                .reply_error(
                    socket,
                    code::UNAVAILABLE,
                    "the message could not be relayed",
                    Some(project),
                )
                .await;
        }
        Ok(())
    }
}
