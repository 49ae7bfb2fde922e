//! The two signals around the sequencer.
//!
//! * [`AppendNotifier`]: after a command commits, wake the sequencer: at
//!   once in-process ([`AppendNotifier::local`]), and — unless that one
//!   leads — in other processes with `NOTIFY tandem_appended`, sent *after* commit from
//!   a separate tiny statement — not from a trigger inside the writer's
//!   transaction, where it would take Postgres's global notify lock at
//!   commit and serialize every writer's commit behind it. Pokes coalesce,
//!   so a burst of commits costs one NOTIFY in flight. While the
//!   in-process sequencer leads, appends sequence at commit instead
//!   ([`AppendNotifier::sequencing_at_commit`]) and need no poke.
//! * [`PositionWaiter`]: a command waits, bounded, until its last event has
//!   a position. The sequencer's `tandem_sequenced` notifications list the
//!   events it numbered; one listener reads each once and wakes exactly the
//!   waiters it names, which registered before their commit. A waiter asks
//!   the database only when a notification could not list its events or
//!   nothing came for a while.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::oneshot::error::TryRecvError;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use crate::notifications::{Notice, Notifications};
use crate::sequencer::Step;

pub const APPENDED_CHANNEL: &str = "tandem_appended";
pub const SEQUENCED_CHANNEL: &str = "tandem_sequenced";

/// Re-check interval when no notification arrives (lost notification,
/// listener reconnecting).
const FALLBACK_POLL: Duration = Duration::from_millis(200);

#[derive(Clone)]
pub struct AppendNotifier {
    pending: Arc<AtomicBool>,
    wake: Arc<Notify>,
    local: LocalSequencer,
    /// This process's commands waiting for positions, shared with its
    /// [`PositionWaiter`]: an append sequenced at commit tells them itself.
    waiting: Arc<Waiting>,
}

/// The link between this process's appends and its own sequencer.
#[derive(Clone)]
pub struct LocalSequencer {
    /// Notified on every append in this process.
    pub wake: Arc<Notify>,
    /// Set while the in-process sequencer leads: then nobody else needs a
    /// NOTIFY, and the round trip is saved.
    pub leading: Arc<AtomicBool>,
    /// Notified after every step that numbered events: an in-process relay
    /// wakes on it without waiting for the NOTIFY to come round.
    pub sequenced: Arc<Notify>,
    /// The log's last position as of the latest step this process saw
    /// (stored before `sequenced` is notified); [`UNKNOWN_HEAD`] while it
    /// does not lead or has not stepped yet.
    pub head: Arc<AtomicI64>,
    /// Events per step of the leading sequencer, also the most an append
    /// sequences at commit.
    pub step_size: Arc<AtomicI32>,
}

/// Resolves when `notify` is notified; never without one (a role that runs
/// without its in-process partner waits on its other wake-ups alone).
pub async fn notified_or_never(notify: Option<&Notify>) {
    match notify {
        Some(notify) => notify.notified().await,
        None => std::future::pending().await,
    }
}

/// [`LocalSequencer::head`] when there is no head to tell.
pub const UNKNOWN_HEAD: i64 = i64::MAX;

impl Default for LocalSequencer {
    fn default() -> Self {
        Self {
            wake: Arc::default(),
            leading: Arc::default(),
            sequenced: Arc::default(),
            head: Arc::new(AtomicI64::new(UNKNOWN_HEAD)),
            step_size: Arc::new(AtomicI32::new(1)),
        }
    }
}

impl LocalSequencer {
    /// The log's last position if this process's sequencer leads and has
    /// stepped: everything up to it is sequenced, nothing after.
    pub fn known_head(&self) -> Option<i64> {
        if !self.leading.load(Ordering::Acquire) {
            return None;
        }
        let head = self.head.load(Ordering::Acquire);
        (head != UNKNOWN_HEAD).then_some(head)
    }

    /// The step size when this process's sequencer leads: then its appends
    /// sequence at commit (`tandem_append_sequenced`).
    pub fn leading_step_size(&self) -> Option<i32> {
        self.leading
            .load(Ordering::Acquire)
            .then(|| self.step_size.load(Ordering::Acquire))
    }

    /// A step of this process numbered events up to `last_position`: the
    /// sequencer's, or an append's at commit. The head only moves forward,
    /// as two steps may report out of their commit order; then the
    /// in-process relay is woken.
    pub fn advance(&self, last_position: i64) {
        self.raise_head(last_position);
        self.sequenced.notify_one();
    }

    /// Records the head a step found, without waking anyone (it numbered
    /// nothing).
    pub fn raise_head(&self, last_position: i64) {
        let _ = self
            .head
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |head| {
                (head == UNKNOWN_HEAD || head < last_position).then_some(last_position)
            });
    }
}

impl AppendNotifier {
    /// Spawns the task that turns pokes into NOTIFYs on `pool`.
    pub fn spawn(pool: PgPool) -> Self {
        let notifier = Self {
            pending: Arc::new(AtomicBool::new(false)),
            wake: Arc::new(Notify::new()),
            local: LocalSequencer::default(),
            waiting: Arc::default(),
        };
        let task = notifier.clone();
        tokio::spawn(async move {
            loop {
                task.wake.notified().await;
                if !task.pending.swap(false, Ordering::AcqRel)
                    || task.local.leading.load(Ordering::Acquire)
                {
                    continue;
                }
                let sent = sqlx::query("SELECT pg_notify($1, '')")
                    .bind(APPENDED_CHANNEL)
                    .execute(&pool)
                    .await;
                if let Err(e) = sent {
                    // The sequencer's polling fallback still finds the events.
                    tracing::warn!(error = %e, "could not notify the sequencer");
                }
            }
        });
        notifier
    }

    pub fn poke(&self) {
        self.local.wake.notify_one();
        self.pending.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// For an in-process sequencer: woken directly on every append.
    pub fn local(&self) -> LocalSequencer {
        self.local.clone()
    }

    /// The step size if this process's sequencer leads, when an append
    /// should sequence at commit instead of poking.
    pub fn sequencing_at_commit(&self) -> Option<i32> {
        self.local.leading_step_size()
    }

    /// An append sequenced at commit with `step`, which numbered the
    /// events `listing` names (its notifications' payloads): their waiters
    /// hear it now, not when the NOTIFY comes round. Only a step that
    /// filled up leaves events behind (a backlog older than the batch), and
    /// those are the sequencer's.
    pub fn sequenced_at_commit(&self, step: Step, step_size: i32, listing: &[String]) {
        for payload in listing {
            self.waiting.hear(payload);
        }
        self.local.advance(step.last_position);
        if step.assigned >= i64::from(step_size) {
            self.local.wake.notify_one();
        }
    }
}

/// Part of what one sequencing step assigned, as its notification says:
/// consecutive positions from `first`, for these events in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sequenced {
    pub first: i64,
    /// `(aggregate_id, sequence)` of each event, in position order.
    pub events: Vec<(String, u64)>,
}

impl Sequenced {
    /// A payload without entries (they did not fit) parses with none:
    /// see [`Sequenced::is_unlisted`].
    pub fn parse(payload: &str) -> Option<Self> {
        let (first, entries) = payload.split_once(' ').unwrap_or((payload, ""));
        if entries.is_empty() {
            return Some(Self {
                first: first.parse().ok()?,
                events: Vec::new(),
            });
        }
        let events = entries
            .split(',')
            .map(|entry| {
                let (id, sequence) = entry.rsplit_once('/')?;
                Some((id.to_owned(), sequence.parse().ok()?))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            first: first.parse().ok()?,
            events,
        })
    }

    /// The last position a notification covers, read without parsing its
    /// entries; `None` when it does not list them.
    pub fn last_listed(payload: &str) -> Option<i64> {
        let (first, entries) = payload.split_once(' ')?;
        let first: i64 = first.parse().ok()?;
        let listed = entries.bytes().filter(|b| *b == b',').count() as i64 + 1;
        Some(first + listed - 1)
    }

    /// A batch that says nothing of its events: every waiter looks.
    fn unlisted() -> Self {
        Self {
            first: 0,
            events: Vec::new(),
        }
    }

    /// The notification did not say which events it covers.
    pub fn is_unlisted(&self) -> bool {
        self.events.is_empty()
    }

    pub fn position_of(&self, aggregate_id: &str, sequence: u64) -> Option<i64> {
        let index = self
            .events
            .iter()
            .position(|(id, seq)| *seq == sequence && id == aggregate_id)?;
        Some(self.first + index as i64)
    }
}

/// What the listener tells one waiter.
enum Heard {
    At(i64),
    /// A notification too big to list its events came, or the listener
    /// lost its connection: look in the database.
    AskDatabase,
}

/// Waiters by aggregate id, then sequence: a notification wakes only the
/// commands it numbered, not every command in flight.
#[derive(Default)]
struct Waiting(Mutex<HashMap<String, Vec<Waiter>>>);

/// The sequence waited for, and where to say its position.
type Waiter = (u64, oneshot::Sender<Heard>);

impl Waiting {
    /// Delivers a `tandem_sequenced` payload.
    fn hear(&self, payload: &str) {
        match Sequenced::parse(payload) {
            Some(batch) => self.deliver(&batch),
            None => tracing::warn!(payload, "unreadable notification"),
        }
    }

    fn register(&self, aggregate_id: &str, sequence: u64) -> oneshot::Receiver<Heard> {
        let (tx, rx) = oneshot::channel();
        let mut map = self.0.lock().expect("waiters poisoned");
        map.entry(aggregate_id.to_owned())
            .or_default()
            .push((sequence, tx));
        rx
    }

    fn deliver(&self, batch: &Sequenced) {
        let mut map = self.0.lock().expect("waiters poisoned");
        if batch.is_unlisted() {
            for (_, waiters) in map.drain() {
                for (_, tx) in waiters {
                    let _ = tx.send(Heard::AskDatabase);
                }
            }
            return;
        }
        for (i, (id, sequence)) in batch.events.iter().enumerate() {
            let Some(waiters) = map.get_mut(id.as_str()) else {
                continue;
            };
            let position = batch.first + i as i64;
            let mut k = 0;
            while k < waiters.len() {
                if waiters[k].0 == *sequence {
                    let (_, tx) = waiters.swap_remove(k);
                    let _ = tx.send(Heard::At(position));
                } else {
                    k += 1;
                }
            }
            if waiters.is_empty() {
                map.remove(id.as_str());
            }
        }
    }

    /// Forgets waiters that went away (their command failed or was dropped).
    fn forget_closed(&self, aggregate_id: &str) {
        let mut map = self.0.lock().expect("waiters poisoned");
        if let Some(waiters) = map.get_mut(aggregate_id) {
            waiters.retain(|(_, tx)| !tx.is_closed());
            if waiters.is_empty() {
                map.remove(aggregate_id);
            }
        }
    }
}

/// Taken before a command commits, for the sequence its last event will
/// have, so the notification that numbers it cannot slip by between the
/// commit and the wait. Dropped unused (the commit failed), it unregisters.
pub struct Subscription {
    aggregate_id: String,
    sequence: u64,
    heard: oneshot::Receiver<Heard>,
    waiting: Arc<Waiting>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.heard.close();
        self.waiting.forget_closed(&self.aggregate_id);
    }
}

#[derive(Clone)]
pub struct PositionWaiter {
    pool: PgPool,
    waiting: Arc<Waiting>,
    timeout: Duration,
}

impl PositionWaiter {
    /// Spawns the task that hears `tandem_sequenced`, through the
    /// process's shared listener when given, else a connection of its own.
    /// `timeout` bounds every wait. `appends` tells the same waiters of
    /// events it sequenced at commit.
    pub async fn spawn(
        pool: PgPool,
        timeout: Duration,
        shared: Option<&Notifications>,
        appends: &AppendNotifier,
    ) -> Result<Self, sqlx::Error> {
        let mut heard = Notifications::subscribe_to(shared, &pool, SEQUENCED_CHANNEL).await?;
        let waiting = appends.waiting.clone();
        let delivering = waiting.clone();
        tokio::spawn(async move {
            loop {
                match heard.recv().await {
                    Notice::Payload(payload) => delivering.hear(&payload),
                    // Some may have gone by: everyone waiting looks.
                    Notice::Missed => delivering.deliver(&Sequenced::unlisted()),
                }
            }
        });
        Ok(Self {
            pool,
            waiting,
            timeout,
        })
    }

    /// Waits for event `sequence` of `aggregate_id` (of any type: ids are
    /// UUIDs, unique across types).
    pub fn subscribe(&self, aggregate_id: &str, sequence: u64) -> Subscription {
        Subscription {
            aggregate_id: aggregate_id.to_owned(),
            sequence,
            heard: self.waiting.register(aggregate_id, sequence),
            waiting: self.waiting.clone(),
        }
    }

    async fn lookup(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: u64,
    ) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT l.position FROM events e JOIN event_log l ON l.global_id = e.global_id
             WHERE e.aggregate_type = $1 AND e.aggregate_id = $2 AND e.sequence = $3",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(sequence as i64)
        .fetch_optional(&self.pool)
        .await
    }

    /// The log position of the event `subscription` names, waiting up to
    /// the configured bound for the sequencer; `None` when it did not come.
    /// `recorded_earlier`: the event was not appended under `subscription`
    /// (a command that changed nothing), so ask the database first.
    pub async fn wait_for(
        &self,
        mut subscription: Subscription,
        aggregate_type: &str,
        recorded_earlier: bool,
    ) -> Result<Option<i64>, sqlx::Error> {
        let deadline = Instant::now() + self.timeout;
        let id = subscription.aggregate_id.clone();
        let sequence = subscription.sequence;
        // Told already (the append sequenced it at commit): no wait, however
        // short the bound. Told to look: listen again, and look.
        let mut look_first = recorded_earlier;
        match subscription.heard.try_recv() {
            Ok(Heard::At(position)) => return Ok(Some(position)),
            Err(TryRecvError::Empty) => {}
            Ok(Heard::AskDatabase) | Err(TryRecvError::Closed) => {
                subscription = self.subscribe(&id, sequence);
                look_first = true;
            }
        }
        if look_first {
            if let Some(position) = self.lookup(aggregate_type, &id, sequence).await? {
                return Ok(Some(position));
            }
        }
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let nap = (deadline - now).min(FALLBACK_POLL);
            match tokio::time::timeout(nap, &mut subscription.heard).await {
                Ok(Ok(Heard::At(position))) => return Ok(Some(position)),
                // Told to look, or nothing came for a while: look, and
                // listen again if it is not there yet.
                Ok(Ok(Heard::AskDatabase)) | Ok(Err(_)) => {
                    subscription = self.subscribe(&id, sequence);
                }
                Err(_) => {}
            }
            if let Some(position) = self.lookup(aggregate_type, &id, sequence).await? {
                return Ok(Some(position));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Heard, Sequenced, Waiting};

    fn heard(rx: &mut tokio::sync::oneshot::Receiver<Heard>) -> Option<Option<i64>> {
        match rx.try_recv() {
            Ok(Heard::At(p)) => Some(Some(p)),
            Ok(Heard::AskDatabase) => Some(None),
            Err(_) => None,
        }
    }

    #[test]
    fn a_notification_wakes_exactly_the_waiters_it_names() {
        let waiting = Waiting::default();
        let mut a2 = waiting.register("a", 2);
        let mut a3 = waiting.register("a", 3);
        let mut b1 = waiting.register("b", 1);
        waiting.deliver(&Sequenced::parse("40 a/2,c/9,b/1").unwrap());
        assert_eq!(heard(&mut a2), Some(Some(40)));
        assert_eq!(heard(&mut b1), Some(Some(42)));
        assert_eq!(heard(&mut a3), None, "a/3 was not in the batch");
        waiting.deliver(&Sequenced::parse("43").unwrap());
        assert_eq!(
            heard(&mut a3),
            Some(None),
            "a bare batch sends it to the database"
        );
        assert!(waiting.0.lock().unwrap().is_empty());
    }

    #[test]
    fn a_waiter_that_went_away_is_forgotten() {
        let waiting = Waiting::default();
        let mut kept = waiting.register("a", 1);
        let mut gone = waiting.register("a", 2);
        gone.close();
        waiting.forget_closed("a");
        assert_eq!(waiting.0.lock().unwrap()["a"].len(), 1);
        waiting.deliver(&Sequenced::parse("7 a/1").unwrap());
        assert_eq!(heard(&mut kept), Some(Some(7)));
        assert!(waiting.0.lock().unwrap().is_empty());
    }

    #[test]
    fn notifications_list_events_in_position_order() {
        let id = "0190f2a4-8c1e-7c3b-9a55-1f2e3d4c5b6a";
        let s = Sequenced::parse(&format!("11 {id}/1,other/7,{id}/2")).unwrap();
        assert_eq!(s.position_of(id, 1), Some(11));
        assert_eq!(s.position_of("other", 7), Some(12));
        assert_eq!(s.position_of(id, 2), Some(13));
        assert_eq!(s.position_of(id, 3), None);
    }

    #[test]
    fn unreadable_notifications_are_refused() {
        assert!(Sequenced::parse("garbage").is_none());
        assert!(Sequenced::parse("5 id-without-sequence").is_none());
    }

    #[test]
    fn a_bare_position_is_an_unlisted_batch() {
        let s = Sequenced::parse("42").unwrap();
        assert!(s.is_unlisted());
        assert_eq!(s.position_of("any", 1), None);
    }

    #[test]
    fn the_last_listed_position_is_counted_from_the_entries() {
        assert_eq!(Sequenced::last_listed("11 a/1,b/7,a/2"), Some(13));
        assert_eq!(Sequenced::last_listed("5 a/1"), Some(5));
        assert_eq!(Sequenced::last_listed("42"), None, "unlisted");
        assert_eq!(Sequenced::last_listed("x a/1"), None, "unreadable");
    }
}
