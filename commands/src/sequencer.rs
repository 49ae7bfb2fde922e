//! The sequencer: gives every committed event its log position.
//!
//! Appends enqueue their event in `unsequenced_events` (a trigger, inside
//! the appending transaction), so a queue row becomes visible exactly when
//! its event commits. One step (`tandem_sequence_batch`, one round trip)
//! takes the visible queue rows in insertion order, numbers them after the
//! last position, writes them to `event_log` and commits. Hence:
//!
//! * positions are gapless and monotonic: one leader numbers them, under a
//!   row lock on `sequencer_state`, and commits them in order;
//! * an event whose transaction commits late is sequenced when it commits
//!   (it was invisible before, and nothing skips past it);
//! * writers never wait for each other or for the sequencer;
//! * per-aggregate order holds: an aggregate's next event is inserted only
//!   after its previous one committed, so it is visible no earlier and
//!   sorts after it.
//!
//! Only the holder of a session advisory lock sequences (the others stand
//! by); the row lock makes even a split-brain leader harmless. While it
//! leads, its own process's appends run the same step inside their
//! transaction (`tandem_append_sequenced`, see the event store), so most
//! of the leader's steps find the queue empty. It wakes on
//! `NOTIFY tandem_appended` (through the process's shared listener when it
//! runs in the stack) and polls as a fallback.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::{PgConnection, PgPool};

use crate::notifications::Notifications;
use crate::positions::{notified_or_never, LocalSequencer, APPENDED_CHANNEL, UNKNOWN_HEAD};

/// Advisory-lock key of the sequencer leader ("tandem" + 1).
pub const LEADER_LOCK_KEY: i64 = 0x7461_6e64_656d_0001;

#[derive(Clone, Debug)]
pub struct SequencerConfig {
    /// Events per step; a full batch is followed immediately by the next.
    pub batch_size: i32,
    /// Fallback wake-up when no notification arrives.
    pub poll_interval: Duration,
    /// How often a standby tries to become leader.
    pub standby_interval: Duration,
}

impl Default for SequencerConfig {
    fn default() -> Self {
        Self {
            batch_size: 5000,
            poll_interval: Duration::from_millis(250),
            standby_interval: Duration::from_secs(1),
        }
    }
}

pub struct Sequencer {
    pool: PgPool,
    config: SequencerConfig,
    /// Appends in this process wake us directly, without a NOTIFY trip.
    local: Option<LocalSequencer>,
    /// The process's shared listener; without it, a connection of our own.
    notifications: Option<Notifications>,
}

/// The result of one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub assigned: i64,
    pub last_position: i64,
}

impl Sequencer {
    pub fn new(pool: PgPool, config: SequencerConfig) -> Self {
        Self {
            pool,
            config,
            local: None,
            notifications: None,
        }
    }

    pub fn with_local(mut self, local: LocalSequencer) -> Self {
        local
            .step_size
            .store(self.config.batch_size, Ordering::Release);
        self.local = Some(local);
        self
    }

    /// Hears other processes' appends through the process's shared
    /// listener.
    pub fn hearing(mut self, notifications: Notifications) -> Self {
        self.notifications = Some(notifications);
        self
    }

    fn set_leading(&self, leading: bool) {
        if let Some(local) = &self.local {
            local.head.store(UNKNOWN_HEAD, Ordering::Release);
            local.leading.store(leading, Ordering::Release);
        }
    }

    /// Sequences until `shutdown` resolves; survives database restarts by
    /// reconnecting and re-contending for leadership.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let work = async {
            loop {
                let Err(e) = self.lead().await;
                self.set_leading(false);
                tracing::warn!(error = %e, "sequencer lost its connection; retrying");
                tokio::time::sleep(self.config.standby_interval).await;
            }
        };
        tokio::select! {
            () = work => {}
            () = shutdown => tracing::info!("sequencer stopped"),
        }
        self.set_leading(false);
    }

    /// One sequencing step on `conn`; exposed for tools and tests.
    pub async fn step(conn: &mut PgConnection, batch_size: i32) -> Result<Step, sqlx::Error> {
        let (assigned, last_position): (i64, i64) =
            sqlx::query_as("SELECT assigned, last_position FROM tandem_sequence_batch($1)")
                .bind(batch_size)
                .fetch_one(conn)
                .await?;
        Ok(Step {
            assigned,
            last_position,
        })
    }

    async fn lead(&self) -> Result<Infallible, sqlx::Error> {
        // A connection of our own: the advisory lock lives as long as it,
        // and the steps run on it, so losing it stops us from sequencing.
        let mut conn =
            crate::db::lead(&self.pool, LEADER_LOCK_KEY, self.config.standby_interval).await?;
        let mut appended =
            Notifications::subscribe_to(self.notifications.as_ref(), &self.pool, APPENDED_CHANNEL)
                .await?;
        tracing::info!("sequencer is leading");
        self.set_leading(true);
        loop {
            let step = Self::step(&mut conn, self.config.batch_size).await?;
            if step.assigned > 0 {
                tracing::trace!(?step, "sequenced");
                record_step(step);
            }
            if let Some(local) = &self.local {
                if step.assigned > 0 {
                    local.advance(step.last_position);
                } else {
                    local.raise_head(step.last_position);
                }
            }
            if step.assigned >= i64::from(self.config.batch_size) {
                continue;
            }
            let local = notified_or_never(self.local.as_ref().map(|l| &*l.wake));
            tokio::select! {
                // A payload or a miss: either way, step.
                _ = appended.recv() => while appended.try_recv().is_some() {},
                () = local => {}
                () = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
    }
}

/// Counts a step that numbered events, the sequencer's or an append's at
/// commit.
pub fn record_step(step: Step) {
    metrics::counter!("tandem_sequenced_events_total").increment(step.assigned as u64);
    metrics::gauge!("tandem_log_head_position").set(step.last_position as f64);
}

/// Whether an advisory-locked leader currently exists (for `/readyz`).
pub async fn leader_present(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let key = LEADER_LOCK_KEY;
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND ((classid::bigint << 32) | objid::bigint) = $1)",
    )
    .bind(key)
    .fetch_one(pool)
    .await
}
