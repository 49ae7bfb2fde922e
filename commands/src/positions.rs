//! The two signals around the sequencer.
//!
//! * [`AppendNotifier`]: after a command commits, wake the sequencer with
//!   `NOTIFY tandem_appended`. Sent *after* commit from a separate tiny
//!   statement, not from a trigger inside the writer's transaction: a
//!   NOTIFY inside a transaction takes Postgres's global notify lock at
//!   commit and would serialize every writer's commit behind it. Pokes
//!   coalesce, so a burst of commits costs one NOTIFY in flight.
//! * [`PositionWaiter`]: a command waits, bounded, until its last event has
//!   a position. It listens to `tandem_sequenced` and re-checks on every
//!   notification, with a short polling fallback in case one is missed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

pub const APPENDED_CHANNEL: &str = "tandem_appended";
pub const SEQUENCED_CHANNEL: &str = "tandem_sequenced";

/// Re-check interval when no notification arrives (lost notification,
/// listener reconnecting).
const FALLBACK_POLL: Duration = Duration::from_millis(200);

#[derive(Clone)]
pub struct AppendNotifier {
    pending: Arc<AtomicBool>,
    wake: Arc<Notify>,
}

impl AppendNotifier {
    /// Spawns the task that turns pokes into NOTIFYs on `pool`.
    pub fn spawn(pool: PgPool) -> Self {
        let notifier = Self {
            pending: Arc::new(AtomicBool::new(false)),
            wake: Arc::new(Notify::new()),
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
        self.pending.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

#[derive(Clone)]
pub struct PositionWaiter {
    pool: PgPool,
    latest: watch::Receiver<i64>,
    timeout: Duration,
}

impl PositionWaiter {
    /// Spawns the `tandem_sequenced` listener. `timeout` bounds every wait.
    pub async fn spawn(pool: PgPool, timeout: Duration) -> Result<Self, sqlx::Error> {
        let (tx, latest) = watch::channel(0);
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(SEQUENCED_CHANNEL).await?;
        tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(n) => {
                        let position = n.payload().parse().unwrap_or(0);
                        tx.send_replace(position);
                    }
                    Err(e) => {
                        // PgListener reconnects on the next recv; meanwhile
                        // waiters fall back to polling.
                        tracing::warn!(error = %e, "sequenced-listener lost its connection");
                        tokio::time::sleep(FALLBACK_POLL).await;
                    }
                }
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(Self {
            pool,
            latest,
            timeout,
        })
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
        let mut latest = self.latest.clone();
        loop {
            latest.borrow_and_update();
            let position: Option<i64> = sqlx::query_scalar(
                "SELECT l.position FROM events e JOIN event_log l ON l.global_id = e.global_id
                 WHERE e.aggregate_type = $1 AND e.aggregate_id = $2 AND e.sequence = $3",
            )
            .bind(aggregate_type)
            .bind(aggregate_id)
            .bind(sequence as i64)
            .fetch_optional(&self.pool)
            .await?;
            if position.is_some() {
                return Ok(position);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let nap = (deadline - now).min(FALLBACK_POLL);
            // Either a new batch was sequenced or the nap ended: look again.
            let _ = tokio::time::timeout(nap, latest.changed()).await;
        }
    }
}
