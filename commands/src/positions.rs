//! The two signals around the sequencer.
//!
//! * [`AppendNotifier`]: after a command commits, wake the sequencer: at
//!   once in-process ([`AppendNotifier::local`]), and — unless that one
//!   leads — in other processes with `NOTIFY tandem_appended`, sent *after* commit from
//!   a separate tiny statement — not from a trigger inside the writer's
//!   transaction, where it would take Postgres's global notify lock at
//!   commit and serialize every writer's commit behind it. Pokes coalesce,
//!   so a burst of commits costs one NOTIFY in flight.
//! * [`PositionWaiter`]: a command waits, bounded, until its last event has
//!   a position. The sequencer's `tandem_sequenced` notifications list the
//!   events it numbered, so a waiter that subscribed before its commit
//!   learns its position from them; it asks the database only when it fell
//!   behind or nothing came for a while.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, Notify};
use tokio::time::Instant;

pub const APPENDED_CHANNEL: &str = "tandem_appended";
pub const SEQUENCED_CHANNEL: &str = "tandem_sequenced";

/// Re-check interval when no notification arrives (lost notification,
/// listener reconnecting).
const FALLBACK_POLL: Duration = Duration::from_millis(200);

/// Batches a slow waiter may fall behind before it re-asks the database.
const BATCH_BACKLOG: usize = 4096;

#[derive(Clone)]
pub struct AppendNotifier {
    pending: Arc<AtomicBool>,
    wake: Arc<Notify>,
    local: LocalSequencer,
}

/// The link between this process's appends and its own sequencer.
#[derive(Clone, Default)]
pub struct LocalSequencer {
    /// Notified on every append in this process.
    pub wake: Arc<Notify>,
    /// Set while the in-process sequencer leads: then nobody else needs a
    /// NOTIFY, and the round trip is saved.
    pub leading: Arc<AtomicBool>,
}

impl AppendNotifier {
    /// Spawns the task that turns pokes into NOTIFYs on `pool`.
    pub fn spawn(pool: PgPool) -> Self {
        let notifier = Self {
            pending: Arc::new(AtomicBool::new(false)),
            wake: Arc::new(Notify::new()),
            local: LocalSequencer::default(),
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

/// Taken before a command commits, so no notification about its events can
/// slip by between the commit and the wait.
pub struct Subscription(broadcast::Receiver<Arc<Sequenced>>);

#[derive(Clone)]
pub struct PositionWaiter {
    pool: PgPool,
    batches: broadcast::Sender<Arc<Sequenced>>,
    timeout: Duration,
}

impl PositionWaiter {
    /// Spawns the `tandem_sequenced` listener. `timeout` bounds every wait.
    pub async fn spawn(pool: PgPool, timeout: Duration) -> Result<Self, sqlx::Error> {
        let (batches, _) = broadcast::channel(BATCH_BACKLOG);
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(SEQUENCED_CHANNEL).await?;
        let tx = batches.clone();
        tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(n) => match Sequenced::parse(n.payload()) {
                        Some(batch) => {
                            let _ = tx.send(Arc::new(batch));
                        }
                        None => tracing::warn!(payload = n.payload(), "unreadable notification"),
                    },
                    // The process is shutting down.
                    Err(sqlx::Error::PoolClosed) => return,
                    Err(e) => {
                        // PgListener reconnects on the next recv; meanwhile
                        // waiters fall back to polling.
                        tracing::warn!(error = %e, "sequenced-listener lost its connection");
                        tokio::time::sleep(FALLBACK_POLL).await;
                    }
                }
            }
        });
        Ok(Self {
            pool,
            batches,
            timeout,
        })
    }

    pub fn subscribe(&self) -> Subscription {
        Subscription(self.batches.subscribe())
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

    /// The log position of event `sequence` of the aggregate, waiting up to
    /// the configured bound for the sequencer; `None` when it did not come.
    /// `recorded_earlier`: the event was not appended under `subscription`
    /// (a command that changed nothing), so ask the database first.
    pub async fn wait_for(
        &self,
        subscription: Subscription,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: u64,
        recorded_earlier: bool,
    ) -> Result<Option<i64>, sqlx::Error> {
        let Subscription(mut batches) = subscription;
        let deadline = Instant::now() + self.timeout;
        if recorded_earlier {
            if let Some(position) = self.lookup(aggregate_type, aggregate_id, sequence).await? {
                return Ok(Some(position));
            }
        }
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let nap = (deadline - now).min(FALLBACK_POLL);
            match tokio::time::timeout(nap, batches.recv()).await {
                Ok(Ok(batch)) => {
                    if let Some(position) = batch.position_of(aggregate_id, sequence) {
                        return Ok(Some(position));
                    }
                    if !batch.is_unlisted() {
                        continue;
                    }
                }
                Ok(Err(RecvError::Closed)) => tokio::time::sleep(nap).await,
                // Fell behind, or nothing came: ask the database.
                Ok(Err(RecvError::Lagged(_))) | Err(_) => {}
            }
            if let Some(position) = self.lookup(aggregate_type, aggregate_id, sequence).await? {
                return Ok(Some(position));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Sequenced;

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
}
