//! What feeds the [`Hub`]: the log's live tail from JetStream (one ordered
//! consumer per gateway, starting after the hub's position) and the
//! ephemeral traffic of core NATS (`<ns>.live.>`).
//!
//! The hub needs every position once, in order. The ordered consumer gives
//! that while the stream is healthy; whatever it cannot (a message lost to
//! a recreated stream, a gap after reconnecting) is filled from the log of
//! record before the next event is dispatched, and duplicates are dropped
//! by position. So the hub's order is the log's order, always.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::consumer::DeliverPolicy;
use futures::StreamExt;
use sqlx::PgPool;
use tandem_domain::envelope::{BusNames, Envelope};
use tandem_domain::live::{kind, JobOutputChunk, PresenceChange, Relayed};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::hub::{Dispatch, Ephemeral, Hub};
use super::{effects, protocol};

/// Turns an envelope into what the hub fans out. `json`: the envelope as
/// it travelled on the bus, when it can be reused as is.
pub fn dispatch_of(event: &Envelope, json: Option<&[u8]>) -> Dispatch {
    let frame = event.projectid.map(|project| {
        let owned;
        let json = match json {
            Some(json) => json,
            None => {
                owned = serde_json::to_vec(event).unwrap_or_default();
                &owned
            }
        };
        protocol::event(project, event.position, json)
    });
    Dispatch {
        position: event.position,
        project: event.projectid,
        frame,
        control: effects::control(event),
        revoked_session: effects::revoked_session(event),
    }
}

/// Pause before the first retry of a broken feed; it doubles up to
/// [`RETRY_MAX`] while the feed keeps failing.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// A feed that ran this long was healthy: its next failure starts the
/// backoff and the warnings afresh.
const HEALTHY_RUN: Duration = Duration::from_secs(10);
/// While the feed keeps failing (no stream before any relay made one, NATS
/// down), a warning at most this often; the rest go to debug.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Runs until `shutdown`: keeps an ordered consumer on the events stream
/// and dispatches every position after the hub's.
pub async fn run_events(
    hub: Arc<Hub>,
    nats: async_nats::Client,
    names: BusNames,
    pool: PgPool,
    shutdown: CancellationToken,
) {
    let mut backoff = RETRY_FIRST;
    let mut warned: Option<Instant> = None;
    loop {
        let started = Instant::now();
        let outcome = tokio::select! {
            () = shutdown.cancelled() => return,
            outcome = consume(&hub, &nats, &names, &pool) => outcome,
        };
        if started.elapsed() >= HEALTHY_RUN {
            backoff = RETRY_FIRST;
            warned = None;
        }
        if let Err(e) = outcome {
            if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                tracing::warn!(error = %e, "live event feed interrupted; resuming from the hub's position");
                warned = Some(Instant::now());
            } else {
                tracing::debug!(error = %e, "live event feed still interrupted; retrying");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(RETRY_MAX);
    }
}

async fn consume(
    hub: &Hub,
    nats: &async_nats::Client,
    names: &BusNames,
    pool: &PgPool,
) -> anyhow::Result<()> {
    let jetstream = async_nats::jetstream::new(nats.clone());
    let stream = jetstream.get_stream(names.events_stream()).await?;
    let start = u64::try_from(hub.position() + 1)?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_subject: nats.new_inbox(),
            filter_subject: names.events_wildcard(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await?;
    let messages = consumer.messages().await?;
    let mut batches = messages.ready_chunks(256);
    while let Some(batch) = batches.next().await {
        for message in batch {
            let message = message?;
            let mut event: Envelope = match serde_json::from_slice(&message.payload) {
                Ok(event) => event,
                Err(e) => {
                    tracing::error!(error = %e, "undecodable event on the bus; skipped");
                    continue;
                }
            };
            let expected = hub.position() + 1;
            if event.position < expected {
                continue;
            }
            if event.position > expected {
                fill_from_log(hub, pool, event.position - 1).await?;
            }
            if event.dataomitted {
                tandem_projections::consumer::fill_claim_checks(
                    pool,
                    std::slice::from_mut(&mut event),
                )
                .await?;
                hub.dispatch(dispatch_of(&event, None));
            } else {
                hub.dispatch(dispatch_of(&event, Some(&message.payload)));
            }
        }
    }
    anyhow::bail!("the ordered consumer ended")
}

/// Dispatches the log's events after the hub's position up to `upto`.
async fn fill_from_log(hub: &Hub, pool: &PgPool, upto: i64) -> anyhow::Result<()> {
    loop {
        let after = hub.position();
        if after >= upto {
            return Ok(());
        }
        let events =
            tandem_commands::log::read_after(pool, after, (upto - after).min(1000)).await?;
        if events.is_empty() {
            anyhow::bail!("the log has no position {} yet", after + 1);
        }
        tracing::info!(after, upto, "filled a gap in the live feed from the log");
        for logged in events {
            hub.dispatch(dispatch_of(&logged.into_envelope(), None));
        }
    }
}

/// Subscribes to core-NATS ephemeral traffic at once (so nothing sent
/// after the gateway started is missed), then relays it, until `shutdown`,
/// to the subscribers of its project on this gateway.
pub async fn spawn_ephemeral(
    hub: Arc<Hub>,
    nats: async_nats::Client,
    names: BusNames,
    gateway: Uuid,
    shutdown: CancellationToken,
) {
    let wildcard = format!("{}.live.>", names.namespace());
    let mut first = nats.subscribe(wildcard.clone()).await.ok();
    tokio::spawn(async move {
        loop {
            let subscribed = match first.take() {
                Some(s) => Ok(s),
                None => nats.subscribe(wildcard.clone()).await,
            };
            let messages = match subscribed {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot subscribe to live traffic; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            if relay_until_closed(&hub, gateway, messages, &shutdown).await {
                return;
            }
        }
    });
}

/// `true` when it stopped for shutdown.
async fn relay_until_closed(
    hub: &Hub,
    gateway: Uuid,
    mut messages: async_nats::Subscriber,
    shutdown: &CancellationToken,
) -> bool {
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return true,
            m = messages.next() => m,
        };
        let Some(message) = message else { return false };
        relay_ephemeral(hub, gateway, &message.subject, &message.payload);
    }
}

fn relay_ephemeral(hub: &Hub, gateway: Uuid, subject: &str, payload: &[u8]) {
    // <ns>.live.<project>.<kind>
    let mut tokens = subject.rsplitn(3, '.');
    let (Some(what), Some(project)) = (tokens.next(), tokens.next()) else {
        return;
    };
    let Ok(project) = project.parse::<Uuid>() else {
        return;
    };
    let local = |origin: Option<tandem_domain::live::Origin>| {
        origin
            .filter(|o| o.gateway == gateway)
            .map(|o| o.connection)
    };
    match what {
        kind::PRESENCE => {
            let Ok(change) = serde_json::from_slice::<PresenceChange>(payload) else {
                return;
            };
            let frame = protocol::presence(project, &change.joined, &change.left);
            hub.dispatch_ephemeral(
                project,
                local(change.origin),
                frame,
                Ephemeral::KeepWhileHeld,
            );
        }
        kind::CURSOR | kind::BROADCAST => {
            let Ok(message) = serde_json::from_slice::<Relayed>(payload) else {
                return;
            };
            let frame = protocol::relayed(what, project, message.user_id, &message.data);
            hub.dispatch_ephemeral(
                project,
                local(Some(message.origin)),
                frame,
                Ephemeral::DropWhileHeld,
            );
        }
        kind::JOB_OUTPUT => {
            let Ok(chunk) = serde_json::from_slice::<JobOutputChunk>(payload) else {
                return;
            };
            let frame = protocol::job_output(project, &chunk);
            hub.dispatch_ephemeral(project, None, frame, Ephemeral::KeepWhileHeld);
        }
        _ => {}
    }
}
