//! The two signals around the sequencer.
//!
//! * [`AppendNotifier`]: after a command commits, wake the sequencer: at
//!   once in-process ([`AppendNotifier::local_wake`]), and for sequencers in
//!   other processes with `NOTIFY tandem_appended`, sent *after* commit from
//!   a separate tiny statement — not from a trigger inside the writer's
//!   transaction, where it would take Postgres's global notify lock at
//!   commit and serialize every writer's commit behind it. Pokes coalesce,
//!   so a burst of commits costs one NOTIFY in flight.
//! * [`PositionWaiter`]: a command waits, bounded, until its last event has
//!   a position. The sequencer's `tandem_sequenced` notification lists the
//!   events it numbered, so a waiter learns its position from the
//!   notification itself; it asks the database only once up front, when a
//!   batch was too big to list, or when it fell behind.

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
    local: Arc<Notify>,
}

impl AppendNotifier {
    /// Spawns the task that turns pokes into NOTIFYs on `pool`.
    pub fn spawn(pool: PgPool) -> Self {
        let notifier = Self {
            pending: Arc::new(AtomicBool::new(false)),
            wake: Arc::new(Notify::new()),
            local: Arc::new(Notify::new()),
        };
        let task = notifier.clone();
        tokio::spawn(async move {
            loop {
                task.wake.notified().await;
                if !task.pending.swap(false, Ordering::AcqRel) {
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
        self.local.notify_one();
        self.pending.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Notified on every append in this process; an in-process sequencer
    /// waits on it to save the NOTIFY round trip.
    pub fn local_wake(&self) -> Arc<Notify> {
        self.local.clone()
    }
}

/// What one sequencing step assigned, as its notification says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sequenced {
    pub first: i64,
    pub last: i64,
    /// The events' `global_id`s in position order, when the batch was
    /// small enough to list.
    pub global_ids: Option<Vec<i64>>,
}

impl Sequenced {
    pub fn parse(payload: &str) -> Option<Self> {
        let mut parts = payload.split(' ');
        let first = parts.next()?.parse().ok()?;
        let last = parts.next()?.parse().ok()?;
        let global_ids = match parts.next() {
            Some(ids) => Some(
                ids.split(',')
                    .map(str::parse)
                    .collect::<Result<Vec<i64>, _>>()
                    .ok()?,
            ),
            None => None,
        };
        Some(Self {
            first,
            last,
            global_ids,
        })
    }

    /// The position of event `global_id`: listed ids are in position order.
    pub fn position_of(&self, global_id: i64) -> Option<i64> {
        let ids = self.global_ids.as_ref()?;
        let index = ids.binary_search(&global_id).ok()?;
        Some(self.first + index as i64)
    }
}

#[derive(Clone)]
pub struct PositionWaiter {
    pool: PgPool,
    batches: broadcast::Sender<Arc<Sequenced>>,
    timeout: Duration,
}

enum Lookup {
    Sequenced(i64),
    Pending(i64),
    Missing,
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

    async fn lookup(
        &self,
        aggregate_type: &str,
        id: &str,
        sequence: u64,
    ) -> Result<Lookup, sqlx::Error> {
        let row: Option<(i64, Option<i64>)> = sqlx::query_as(
            "SELECT e.global_id, l.position FROM events e LEFT JOIN event_log l ON l.global_id = e.global_id
             WHERE e.aggregate_type = $1 AND e.aggregate_id = $2 AND e.sequence = $3",
        )
        .bind(aggregate_type)
        .bind(id)
        .bind(sequence as i64)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some((_, Some(position))) => Lookup::Sequenced(position),
            Some((global_id, None)) => Lookup::Pending(global_id),
            None => Lookup::Missing,
        })
    }

    async fn position_by_id(&self, global_id: i64) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query_scalar("SELECT position FROM event_log WHERE global_id = $1")
            .bind(global_id)
            .fetch_optional(&self.pool)
            .await
    }

    /// The log position of event `sequence` of the aggregate, waiting up to
    /// the configured bound for the sequencer; `None` when it did not come.
    pub async fn wait_for(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: u64,
    ) -> Result<Option<i64>, sqlx::Error> {
        let deadline = Instant::now() + self.timeout;
        // Subscribe before looking, so no batch slips between the two.
        let mut batches = self.batches.subscribe();
        let global_id = match self.lookup(aggregate_type, aggregate_id, sequence).await? {
            Lookup::Sequenced(position) => return Ok(Some(position)),
            Lookup::Pending(global_id) => global_id,
            Lookup::Missing => return Ok(None),
        };
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let nap = (deadline - now).min(FALLBACK_POLL);
            let recheck = match tokio::time::timeout(nap, batches.recv()).await {
                Ok(Ok(batch)) => match batch.position_of(global_id) {
                    Some(position) => return Ok(Some(position)),
                    // Unlisted big batch: it may hold ours.
                    None => batch.global_ids.is_none(),
                },
                Ok(Err(RecvError::Lagged(_))) => true,
                Ok(Err(RecvError::Closed)) => {
                    tokio::time::sleep(nap).await;
                    true
                }
                Err(_) => true,
            };
            if recheck {
                if let Some(position) = self.position_by_id(global_id).await? {
                    return Ok(Some(position));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Sequenced;

    #[test]
    fn notifications_list_positions_in_global_id_order() {
        let s = Sequenced::parse("11 13 40,41,57").unwrap();
        assert_eq!((s.first, s.last), (11, 13));
        assert_eq!(s.position_of(40), Some(11));
        assert_eq!(s.position_of(57), Some(13));
        assert_eq!(s.position_of(42), None);
    }

    #[test]
    fn big_batches_name_only_their_range() {
        let s = Sequenced::parse("1 5000").unwrap();
        assert_eq!(s.global_ids, None);
        assert_eq!(s.position_of(1), None);
        assert!(Sequenced::parse("garbage").is_none());
    }
}
