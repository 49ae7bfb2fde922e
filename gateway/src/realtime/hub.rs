//! The [`Hub`]: this gateway's table of live subscriptions, and the one
//! place the log's live tail is fanned out to them.
//!
//! The hub sees every event in position order (one feed per gateway, see
//! `feed`) and remembers the last position it dispatched. A subscription
//! starts *held* at that position `H`: the hub buffers what arrives for it
//! while its catch-up reads `(since, H]` from the log of record. Releasing
//! it flushes the buffer and turns it live, under the same lock that
//! dispatch takes, so every event lands exactly once on one side of the
//! seam. If the buffer overflows during a long catch-up it is dropped and
//! the catch-up goes on from the log up to the hub's new position.
//!
//! Frames are built once per event and shared (reference-counted) by every
//! subscriber; each connection has a bounded outbox, and an event that does
//! not fit marks the connection a slow consumer instead of queueing more.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::ws::Utf8Bytes;
use tandem_domain::Role;
use tokio::sync::{broadcast, mpsc, Notify};
use uuid::Uuid;

pub type ConnId = u64;

/// What a connection's writer receives.
#[derive(Debug)]
pub enum Out {
    /// A frame to write as it is.
    Frame(Utf8Bytes),
    /// The user's role in a project, as of the events the connection has
    /// been sent so far.
    Role { project: Uuid, role: Role },
    /// The subscription ended (membership revoked, or refused): write
    /// `frame` and forget the subscription.
    Ended { project: Uuid, frame: Utf8Bytes },
}

/// Raised by anyone who could not queue a frame for the connection.
#[derive(Default)]
pub struct Signals {
    overflowed: AtomicBool,
    notify: Notify,
}

impl Signals {
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }

    /// Resolves once the connection overflowed.
    pub async fn overflow(&self) {
        loop {
            let notified = self.notify.notified();
            if self.overflowed() {
                return;
            }
            notified.await;
        }
    }

    fn raise(&self) {
        self.overflowed.store(true, Ordering::Release);
        self.notify.notify_one();
    }
}

/// The sending half of a connection's bounded queue.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Out>,
    signals: Arc<Signals>,
    capacity: usize,
}

impl Outbox {
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<Out>, Arc<Signals>) {
        let (tx, rx) = mpsc::channel(capacity.max(2));
        let signals = Arc::new(Signals::default());
        let outbox = Self {
            tx,
            signals: signals.clone(),
            capacity: capacity.max(2),
        };
        (outbox, rx, signals)
    }

    /// Queues without waiting; a full queue marks the connection slow.
    pub fn offer(&self, out: Out) -> bool {
        match self.tx.try_send(out) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.signals.raise();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Queues at the reader's pace, for catch-up: it waits while the queue
    /// is more than half full, so live traffic always finds room. `false`
    /// when the connection is gone.
    pub async fn send_paced(&self, out: Out) -> bool {
        while self.tx.capacity() < self.capacity / 2 {
            if self.tx.is_closed() || self.signals.overflowed() {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        self.tx.send(out).await.is_ok()
    }
}

/// What an event means for the subscribers of its project, besides being
/// delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// The user is no longer a member.
    Removed(Uuid),
    /// The user's role is now this.
    Role(Uuid, Role),
}

/// One event of the log, ready to fan out.
pub struct Dispatch {
    pub position: i64,
    pub project: Option<Uuid>,
    pub frame: Option<Utf8Bytes>,
    pub control: Option<Control>,
    /// A session whose tokens stopped working at this event.
    pub revoked_session: Option<Uuid>,
}

/// Which ephemeral messages a held subscription keeps for after its
/// catch-up (presence must not be missed; a stale cursor is worthless).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Ephemeral {
    KeepWhileHeld,
    DropWhileHeld,
}

struct Entry {
    user: Uuid,
    outbox: Outbox,
    /// Events at or below this are not for this subscription.
    floor: i64,
    /// Membership was decided as of this position: membership events up
    /// to it are history, not news for the subscription.
    authorized_at: i64,
    held: Option<Held>,
}

#[derive(Default)]
struct Held {
    /// What arrived while held, with the position it came at (0 for
    /// ephemeral frames).
    buffer: Vec<(i64, Out)>,
    overflowed: bool,
}

impl Entry {
    fn deliver(&mut self, position: i64, out: Out, hold_limit: usize) {
        match &mut self.held {
            None => {
                self.outbox.offer(out);
            }
            Some(held) if held.overflowed => {}
            Some(held) if held.buffer.len() < hold_limit => held.buffer.push((position, out)),
            Some(held) => {
                held.overflowed = true;
                held.buffer = Vec::new();
            }
        }
    }
}

#[derive(Default)]
struct Inner {
    position: i64,
    projects: HashMap<Uuid, HashMap<ConnId, Entry>>,
}

pub enum Release {
    /// The subscription is live.
    Live,
    /// Events after the catch-up's end were dropped: read the log up to
    /// this position, then release again.
    Behind(i64),
    /// The subscription was removed meanwhile.
    Gone,
}

#[derive(Debug, thiserror::Error)]
#[error("already subscribed to this project")]
pub struct AlreadySubscribed;

pub struct Hub {
    inner: Mutex<Inner>,
    revocations: broadcast::Sender<Uuid>,
    hold_limit: usize,
}

impl Hub {
    /// `start`: the last position already in the log when the gateway
    /// started; live delivery begins after it.
    pub fn new(start: i64, hold_limit: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                position: start,
                projects: HashMap::new(),
            }),
            revocations: broadcast::channel(256).0,
            hold_limit,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while dispatching leaves the table consistent enough:
        // every mutation is a single insert or remove.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The last position dispatched.
    pub fn position(&self) -> i64 {
        self.lock().position
    }

    /// Sessions revoked from now on (logout, refresh-token reuse).
    pub fn revocations(&self) -> broadcast::Receiver<Uuid> {
        self.revocations.subscribe()
    }

    /// Registers a held subscription and returns where live delivery will
    /// start.
    pub fn hold(
        &self,
        project: Uuid,
        conn: ConnId,
        user: Uuid,
        outbox: Outbox,
        since: Option<i64>,
    ) -> Result<i64, AlreadySubscribed> {
        let mut inner = self.lock();
        let start = inner.position;
        let subscribers = inner.projects.entry(project).or_default();
        if subscribers.contains_key(&conn) {
            return Err(AlreadySubscribed);
        }
        subscribers.insert(
            conn,
            Entry {
                user,
                outbox,
                floor: since.unwrap_or(start).max(start),
                authorized_at: start,
                held: Some(Held::default()),
            },
        );
        Ok(start)
    }

    /// Records that membership was checked as of `position` (at or after
    /// the hold's start): membership events up to it, buffered or still to
    /// come, no longer act on the subscription.
    pub fn authorized(&self, project: Uuid, conn: ConnId, position: i64) {
        let mut inner = self.lock();
        let Some(entry) = inner
            .projects
            .get_mut(&project)
            .and_then(|s| s.get_mut(&conn))
        else {
            return;
        };
        entry.authorized_at = entry.authorized_at.max(position);
        if let Some(held) = &mut entry.held {
            held.buffer.retain(|(at, out)| {
                let control = matches!(out, Out::Role { .. } | Out::Ended { .. });
                !(control && *at <= position)
            });
        }
    }

    /// Ends a held subscription's catch-up (see the module docs).
    pub fn release(&self, project: Uuid, conn: ConnId) -> Release {
        let mut inner = self.lock();
        let position = inner.position;
        let Some(entry) = inner
            .projects
            .get_mut(&project)
            .and_then(|s| s.get_mut(&conn))
        else {
            return Release::Gone;
        };
        let Some(held) = entry.held.take() else {
            return Release::Live;
        };
        if held.overflowed {
            entry.held = Some(Held::default());
            return Release::Behind(position);
        }
        for (_, out) in held.buffer {
            entry.outbox.offer(out);
        }
        Release::Live
    }

    /// Forgets a subscription; `true` if there was one.
    pub fn remove(&self, project: Uuid, conn: ConnId) -> bool {
        let mut inner = self.lock();
        let Some(subscribers) = inner.projects.get_mut(&project) else {
            return false;
        };
        let removed = subscribers.remove(&conn).is_some();
        if subscribers.is_empty() {
            inner.projects.remove(&project);
        }
        removed
    }

    /// Fans one event out. Events at or below the current position were
    /// dispatched already and are ignored.
    pub fn dispatch(&self, event: Dispatch) {
        let mut inner = self.lock();
        if event.position <= inner.position {
            return;
        }
        inner.position = event.position;
        if let (Some(project), Some(frame)) = (event.project, event.frame) {
            if let Some(subscribers) = inner.projects.get_mut(&project) {
                for entry in subscribers.values_mut() {
                    if event.position <= entry.floor {
                        continue;
                    }
                    let position = event.position;
                    entry.deliver(position, Out::Frame(frame.clone()), self.hold_limit);
                    let control = event.control.filter(|_| position > entry.authorized_at);
                    match control {
                        Some(Control::Removed(user)) if user == entry.user => {
                            let frame = super::protocol::error(
                                super::protocol::code::FORBIDDEN,
                                "you are no longer a member of this project",
                                Some(project),
                            );
                            entry.deliver(position, Out::Ended { project, frame }, self.hold_limit);
                        }
                        Some(Control::Role(user, role)) if user == entry.user => {
                            entry.deliver(position, Out::Role { project, role }, self.hold_limit);
                        }
                        _ => {}
                    }
                }
            }
        }
        drop(inner);
        if let Some(session) = event.revoked_session {
            let _ = self.revocations.send(session);
        }
    }

    /// Fans an ephemeral frame out to a project's subscribers, except the
    /// connection it came from.
    pub fn dispatch_ephemeral(
        &self,
        project: Uuid,
        except: Option<ConnId>,
        frame: Utf8Bytes,
        held: Ephemeral,
    ) {
        let mut inner = self.lock();
        let Some(subscribers) = inner.projects.get_mut(&project) else {
            return;
        };
        for (conn, entry) in subscribers.iter_mut() {
            if Some(*conn) == except || (entry.held.is_some() && held == Ephemeral::DropWhileHeld) {
                continue;
            }
            entry.deliver(0, Out::Frame(frame.clone()), self.hold_limit);
        }
    }

    /// Projects with at least one subscriber here.
    pub fn projects(&self) -> Vec<Uuid> {
        self.lock().projects.keys().copied().collect()
    }

    /// Subscriptions held here.
    pub fn subscriptions(&self) -> usize {
        self.lock().projects.values().map(HashMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(position: i64, project: Uuid) -> Dispatch {
        Dispatch {
            position,
            project: Some(project),
            frame: Some(Utf8Bytes::from(position.to_string())),
            control: None,
            revoked_session: None,
        }
    }

    fn drain(rx: &mut mpsc::Receiver<Out>) -> Vec<String> {
        let mut seen = Vec::new();
        while let Ok(out) = rx.try_recv() {
            if let Out::Frame(f) = out {
                seen.push(f.as_str().to_owned());
            }
        }
        seen
    }

    #[test]
    fn a_held_subscription_gets_what_arrived_during_catch_up_once() {
        let hub = Hub::new(10, 100);
        let project = Uuid::now_v7();
        let (outbox, mut rx, _) = Outbox::new(100);
        assert_eq!(
            hub.hold(project, 1, Uuid::nil(), outbox, Some(3)).unwrap(),
            10
        );
        hub.dispatch(event(11, project));
        hub.dispatch(event(11, project));
        assert!(drain(&mut rx).is_empty(), "held: nothing written yet");
        assert!(matches!(hub.release(project, 1), Release::Live));
        hub.dispatch(event(12, project));
        assert_eq!(drain(&mut rx), ["11", "12"]);
    }

    #[test]
    fn an_overflowing_hold_sends_the_catch_up_back_to_the_log() {
        let hub = Hub::new(0, 2);
        let project = Uuid::now_v7();
        let (outbox, mut rx, _) = Outbox::new(100);
        hub.hold(project, 1, Uuid::nil(), outbox, None).unwrap();
        for p in 1..=5 {
            hub.dispatch(event(p, project));
        }
        assert!(matches!(hub.release(project, 1), Release::Behind(5)));
        hub.dispatch(event(6, project));
        assert!(matches!(hub.release(project, 1), Release::Live));
        assert_eq!(drain(&mut rx), ["6"]);
    }

    #[test]
    fn membership_events_before_the_authorization_do_not_end_it() {
        let hub = Hub::new(0, 100);
        let project = Uuid::now_v7();
        let user = Uuid::now_v7();
        let (outbox, mut rx, _) = Outbox::new(10);
        hub.hold(project, 1, user, outbox, None).unwrap();
        let mut removal = event(1, project);
        removal.control = Some(Control::Removed(user));
        hub.dispatch(removal);
        // Re-invited at 2, and authorized as of 2: the removal is history.
        hub.dispatch(event(2, project));
        hub.authorized(project, 1, 2);
        assert!(matches!(hub.release(project, 1), Release::Live));
        let mut later = event(3, project);
        later.control = Some(Control::Removed(user));
        hub.dispatch(later);
        let ends: Vec<bool> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|o| matches!(o, Out::Ended { .. }))
            .collect();
        assert_eq!(
            ends,
            [false, false, false, true],
            "three frames, then the end"
        );
    }

    #[test]
    fn a_full_outbox_raises_the_slow_consumer_signal() {
        let hub = Hub::new(0, 100);
        let project = Uuid::now_v7();
        let (outbox, _rx, signals) = Outbox::new(2);
        hub.hold(project, 1, Uuid::nil(), outbox, None).unwrap();
        assert!(matches!(hub.release(project, 1), Release::Live));
        for p in 1..=3 {
            hub.dispatch(event(p, project));
        }
        assert!(signals.overflowed());
    }

    #[test]
    fn removal_ends_only_the_removed_users_subscription() {
        let hub = Hub::new(0, 100);
        let project = Uuid::now_v7();
        let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
        let (a, mut a_rx, _) = Outbox::new(10);
        let (b, mut b_rx, _) = Outbox::new(10);
        hub.hold(project, 1, alice, a, None).unwrap();
        hub.hold(project, 2, bob, b, None).unwrap();
        hub.release(project, 1);
        hub.release(project, 2);
        let mut removal = event(1, project);
        removal.control = Some(Control::Removed(bob));
        hub.dispatch(removal);
        let ended = |rx: &mut mpsc::Receiver<Out>| {
            std::iter::from_fn(|| rx.try_recv().ok()).any(|o| matches!(o, Out::Ended { .. }))
        };
        assert!(!ended(&mut a_rx));
        assert!(ended(&mut b_rx));
    }
}
