//! The relay: publishes the sequenced log to JetStream, in position order,
//! each event exactly once.
//!
//! Invariant: the events stream holds the log's prefix, position `p` at
//! stream sequence `p`. Every publish carries `Nats-Expected-Last-Sequence
//! = p - 1`, so the stream refuses anything out of order (a stale leader, a
//! gap after a failed publish), and `Nats-Msg-Id` = event id, so a
//! republished event inside the de-duplication window is acknowledged as a
//! duplicate instead of stored twice.
//!
//! Its checkpoint (last position acknowledged by the stream) lives in
//! Postgres, written after the acks. After a crash between publish and
//! checkpoint it resumes from the checkpoint and de-duplication absorbs the
//! overlap; past the window the stream's `wrong last sequence` answer makes
//! it re-read the stream's state and skip what is already there. When the
//! stream lost its tail or was deleted (JetStream is a cache of the log,
//! not its record) it recreates the stream and publishes again from what
//! the stream has.
//!
//! One relay leads (a session advisory lock); others stand by. It wakes on
//! the sequencer's `NOTIFY tandem_sequenced`, directly when the sequencer
//! runs in the same process (the notification that follows is then known
//! to be read already, and costs no query), and polls as a fallback.
//!
//! Job events that make a job runnable also become work items on the jobs
//! work-queue stream ([`crate::jobs::dispatch`]), in the same round and
//! under the same checkpoint: a round whose work item was not acknowledged
//! is published again, and de-duplication (`Nats-Msg-Id` = `work-<position>`)
//! absorbs what had arrived.

use std::convert::Infallible;
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use sqlx::{PgConnection, PgPool};
use tandem_domain::envelope::{BusNames, Envelope};
use tandem_domain::work::WorkItem;

use crate::jobs::dispatch;
use crate::log::{self, LoggedEvent};
use crate::notifications::{Notice, Notifications, Subscription};
use crate::positions::{notified_or_never, LocalSequencer, Sequenced, SEQUENCED_CHANNEL};

/// Advisory-lock key of the relay leader ("tandem" + 2).
pub const RELAY_LOCK_KEY: i64 = 0x7461_6e64_656d_0002;

/// How often an idle relay makes sure the jobs queue still exists.
const JOBS_STREAM_CHECK: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Events read and published per round (acks are awaited per round).
    pub batch_size: i64,
    pub poll_interval: Duration,
    pub standby_interval: Duration,
    /// JetStream's de-duplication window of the events stream.
    pub duplicate_window: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 512,
            poll_interval: Duration::from_millis(250),
            standby_interval: Duration::from_secs(1),
            duplicate_window: Duration::from_secs(120),
        }
    }
}

pub struct Relay {
    pool: PgPool,
    js: jetstream::Context,
    names: BusNames,
    config: RelayConfig,
    /// An in-process sequencer: its wake-up after each step, and the head
    /// it last numbered.
    local: Option<LocalSequencer>,
    /// The process's shared listener; without it, a connection of our own.
    notifications: Option<Notifications>,
}

/// Why a round stopped before publishing everything it read.
enum Interrupted {
    /// The stream disagrees with the checkpoint (gone, truncated, or ahead):
    /// re-read its state and start over from there.
    Resync,
    /// NATS or Postgres failed: back off and retry.
    Failed(BoxError),
}

/// Keeps a failure's cause chain for the log without `anyhow` in a library.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl From<sqlx::Error> for Interrupted {
    fn from(e: sqlx::Error) -> Self {
        Self::Failed(Box::new(e))
    }
}

impl Relay {
    pub fn new(
        pool: PgPool,
        nats: async_nats::Client,
        names: BusNames,
        config: RelayConfig,
    ) -> Self {
        Self {
            pool,
            js: jetstream::new(nats),
            names,
            config,
            local: None,
            notifications: None,
        }
    }

    /// Hears the sequencer's notifications through the process's shared
    /// listener.
    pub fn hearing(mut self, notifications: Notifications) -> Self {
        self.notifications = Some(notifications);
        self
    }

    /// Also wakes on the steps of the sequencer in this process, and while
    /// that one leads, reads the log only when its head has moved past
    /// what was read (the read that overlaps a round's acks is mostly
    /// empty, and a query is not free).
    pub fn woken_by(mut self, local: LocalSequencer) -> Self {
        self.local = Some(local);
        self
    }

    /// Relays until `shutdown` resolves, surviving outages of Postgres and
    /// NATS by retrying with backoff.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let work = async {
            let mut backoff = self.config.standby_interval;
            loop {
                let Err(e) = self.lead().await;
                tracing::warn!(error = %e, "relay interrupted; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        };
        tokio::select! {
            () = work => {}
            () = shutdown => tracing::info!("relay stopped"),
        }
    }

    /// The stream's configuration (created when missing).
    pub fn stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.names.events_stream(),
            subjects: vec![self.names.events_wildcard()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            duplicate_window: self.config.duplicate_window,
            allow_direct: true,
            ..Default::default()
        }
    }

    async fn lead(&self) -> Result<Infallible, BoxError> {
        let mut conn =
            crate::db::lead(&self.pool, RELAY_LOCK_KEY, self.config.standby_interval).await?;
        let mut sequenced =
            Notifications::subscribe_to(self.notifications.as_ref(), &self.pool, SEQUENCED_CHANNEL)
                .await?;
        tracing::info!(stream = self.names.events_stream(), "relay is leading");
        // After a restart the checkpoint may trail the stream (a crash
        // between publish and checkpoint): resume from it and let
        // de-duplication absorb the overlap. Only when the stream refuses a
        // publish (past the window) is the stream's own state trusted.
        let mut refused = false;
        loop {
            let stream_last = self.stream_last_sequence(&mut conn).await? as i64;
            let stream = self.names.events_stream();
            let mut checkpoint = load_checkpoint(&mut conn, &stream).await?;
            if stream_last < checkpoint {
                tracing::warn!(
                    stream_last,
                    checkpoint,
                    "the events stream lost its tail; publishing again from the log"
                );
                checkpoint = stream_last;
                save_checkpoint(&mut conn, &stream, checkpoint).await?;
            } else if refused && stream_last > checkpoint {
                tracing::info!(
                    stream_last,
                    checkpoint,
                    "the events stream already holds events past the checkpoint; skipping them"
                );
                checkpoint = stream_last;
                save_checkpoint(&mut conn, &stream, checkpoint).await?;
            }
            match self
                .publish_from(&mut conn, &mut sequenced, checkpoint)
                .await
            {
                Interrupted::Resync => refused = true,
                Interrupted::Failed(e) => return Err(e),
            }
        }
    }

    /// The events stream's last sequence, creating the stream if missing.
    async fn stream_last_sequence(&self, conn: &mut PgConnection) -> Result<u64, BoxError> {
        self.ensure_jobs_stream(conn).await?;
        let mut stream = self.js.get_or_create_stream(self.stream_config()).await?;
        Ok(stream.info().await?.state.last_sequence)
    }

    /// The jobs work queue, created when missing; a new one is filled with
    /// every job the log says is waiting (its items were lost with the old).
    async fn ensure_jobs_stream(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        use async_nats::jetstream::context::GetStreamErrorKind;
        match self.js.get_stream(self.names.jobs_stream()).await {
            Ok(_) => return Ok(()),
            Err(e) if matches!(e.kind(), GetStreamErrorKind::JetStream(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let config = dispatch::jobs_stream_config(&self.names, self.config.duplicate_window);
        self.js.get_or_create_stream(config).await?;
        let waiting = dispatch::waiting_jobs(&mut *conn).await?;
        if !waiting.is_empty() {
            tracing::warn!(
                jobs = waiting.len(),
                "the jobs queue was missing; queueing waiting jobs again from the log"
            );
        }
        for item in waiting {
            self.publish_work(&item).await?.await?;
        }
        Ok(())
    }

    /// A work item onto the jobs queue, de-duplicated by its position.
    async fn publish_work(
        &self,
        item: &WorkItem,
    ) -> Result<
        async_nats::jetstream::context::PublishAckFuture,
        async_nats::jetstream::context::PublishError,
    > {
        let payload = serde_json::to_vec(item).expect("work items serialize");
        let message = PublishMessage::build()
            .payload(payload.into())
            .message_id(format!("work-{}", item.position));
        self.js
            .send_publish(self.names.job_work_subject(item.job_id.0), message)
            .await
    }

    /// Publishes everything after `checkpoint`, then waits for more, until
    /// the stream disagrees or something fails.
    ///
    /// One round's acks are awaited while the next round is read, so the
    /// database read costs a busy relay no latency, and the checkpoint is
    /// written off that path: at most every [`CHECKPOINT_EVERY`], busy or
    /// idle. A checkpoint that trails what the stream holds only makes a
    /// restart republish what de-duplication absorbs.
    async fn publish_from(
        &self,
        conn: &mut PgConnection,
        sequenced: &mut Subscription,
        mut checkpoint: i64,
    ) -> Interrupted {
        let stream = self.names.events_stream();
        let mut jobs_checked = tokio::time::Instant::now();
        let mut saved = Saved {
            position: checkpoint,
            at: tokio::time::Instant::now(),
        };
        let mut in_flight: Option<Round> = None;
        // Set when something other than the local sequencer woke us: its
        // head says nothing of another process's steps.
        let mut must_read = true;
        loop {
            let sent = in_flight.as_ref().map_or(checkpoint, |r| r.last);
            let nothing_new = !must_read
                && self
                    .local
                    .as_ref()
                    .and_then(LocalSequencer::known_head)
                    .is_some_and(|head| head <= sent);
            must_read = false;
            let read = async {
                if nothing_new {
                    Ok(Vec::new())
                } else {
                    log::read_after(&mut *conn, sent, self.config.batch_size).await
                }
            };
            let settle = async {
                match in_flight.take() {
                    Some(round) => Some(round.settle().await),
                    None => None,
                }
            };
            let (events, settled) = tokio::join!(read, settle);
            if let Some((acked, interrupted)) = settled {
                checkpoint = checkpoint.max(acked);
                metrics::gauge!("tandem_relay_position").set(checkpoint as f64);
                if let Some(interrupted) = interrupted {
                    // What was read after the failed round is dropped: the
                    // next round starts again from the checkpoint.
                    return match saved.save(conn, &stream, checkpoint).await {
                        Ok(()) => interrupted,
                        Err(e) => e.into(),
                    };
                }
            }
            let events = match events {
                Ok(events) => events,
                Err(e) => return e.into(),
            };
            if events.is_empty() {
                // While idle, now and then: queued jobs must not wait for
                // the next job event to find their lost queue refilled.
                if jobs_checked.elapsed() >= JOBS_STREAM_CHECK {
                    jobs_checked = tokio::time::Instant::now();
                    if let Err(e) = self.ensure_jobs_stream(conn).await {
                        return Interrupted::Failed(e);
                    }
                }
                let dirty = saved.position != checkpoint;
                let mut checkpoint_due = false;
                let poll = tokio::time::sleep(self.config.poll_interval);
                tokio::pin!(poll);
                loop {
                    let local = notified_or_never(self.local.as_ref().map(|l| &*l.sequenced));
                    tokio::select! {
                        notice = sequenced.recv() => {
                            let newest = drain_newest(sequenced, last_listed(&notice));
                            // A local wake-up already read this far.
                            if newest.is_some_and(|p| p <= sent) {
                                continue;
                            }
                            must_read = true;
                        }
                        () = local => {}
                        () = &mut poll => must_read = true,
                        () = tokio::time::sleep_until(saved.at + CHECKPOINT_EVERY), if dirty => {
                            checkpoint_due = true;
                        }
                    }
                    break;
                }
                if checkpoint_due {
                    if let Err(e) = saved.save(conn, &stream, checkpoint).await {
                        return e.into();
                    }
                }
                continue;
            }
            if saved.at.elapsed() >= CHECKPOINT_EVERY {
                if let Err(e) = saved.save(conn, &stream, checkpoint).await {
                    return e.into();
                }
            }
            in_flight = Some(self.send(&events).await);
        }
    }

    /// Sends `events` (consecutive positions) without waiting for the
    /// stream's acks: [`Round::settle`] collects them.
    async fn send(&self, events: &[LoggedEvent]) -> Round {
        let max_payload = self.js.client().server_info().max_payload;
        let mut round = Round {
            first: events[0].position,
            last: events[0].position - 1,
            pending: Vec::with_capacity(events.len()),
            work: Vec::new(),
            interrupted: None,
        };
        for event in events {
            let envelope = Envelope::from_log(&event.record());
            let subject = self.names.event_subject(&envelope);
            let item = dispatch::work_item(&envelope);
            let payload = encode(envelope, max_payload);
            let message = PublishMessage::build()
                .payload(payload.into())
                .message_id(event.event_id.to_string())
                .expected_last_sequence((event.position - 1) as u64);
            match self.js.send_publish(subject, message).await {
                Ok(ack) => round.pending.push((event.position, ack)),
                Err(e) => {
                    round.interrupted = Some(Interrupted::Failed(Box::new(e)));
                    break;
                }
            }
            round.last = event.position;
            if let Some(item) = item {
                match self.publish_work(&item).await {
                    Ok(ack) => round.work.push((event.position, ack)),
                    Err(e) => {
                        round.interrupted = Some(Interrupted::Failed(Box::new(e)));
                        break;
                    }
                }
            }
        }
        round
    }
}

/// The checkpoint is written at most this often (and this long after the
/// relay fell idle at the latest).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// The checkpoint as last written.
struct Saved {
    position: i64,
    at: tokio::time::Instant,
}

impl Saved {
    /// Writes `position` unless it is already the saved one.
    async fn save(
        &mut self,
        conn: &mut PgConnection,
        stream: &str,
        position: i64,
    ) -> Result<(), sqlx::Error> {
        if position != self.position {
            save_checkpoint(conn, stream, position).await?;
            self.position = position;
        }
        self.at = tokio::time::Instant::now();
        Ok(())
    }
}

type Ack = async_nats::jetstream::context::PublishAckFuture;

/// One round of sent events whose acks are outstanding.
struct Round {
    first: i64,
    /// The last position sent (`first - 1` when none was).
    last: i64,
    pending: Vec<(i64, Ack)>,
    work: Vec<(i64, Ack)>,
    /// Why sending stopped early.
    interrupted: Option<Interrupted>,
}

impl Round {
    /// Awaits the acks; returns the last position the stream acknowledged
    /// in order, plus why the round stopped early.
    async fn settle(self) -> (i64, Option<Interrupted>) {
        let mut interrupted = self.interrupted;
        let mut acked = self.first - 1;
        for (position, ack) in self.pending {
            match ack.await {
                Ok(ack) if ack.duplicate || ack.sequence == position as u64 => {
                    if interrupted.is_none() {
                        acked = position;
                    }
                }
                Ok(ack) => {
                    tracing::warn!(
                        position,
                        stream_sequence = ack.sequence,
                        "stream out of step with the log"
                    );
                    interrupted.get_or_insert(Interrupted::Resync);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        PublishErrorKind::WrongLastSequence | PublishErrorKind::StreamNotFound
                    ) =>
                {
                    tracing::info!(position, error = %e, "the events stream changed; re-reading it");
                    interrupted.get_or_insert(Interrupted::Resync);
                }
                Err(e) => {
                    interrupted.get_or_insert(Interrupted::Failed(Box::new(e)));
                }
            }
        }
        // A work item that did not make it holds the checkpoint before its
        // event, so the next round publishes both again.
        for (position, ack) in self.work {
            if let Err(e) = ack.await {
                tracing::warn!(position, error = %e, "a job's work item was not stored; publishing again");
                acked = acked.min(position - 1);
                interrupted.get_or_insert(Interrupted::Failed(Box::new(e)));
            }
        }
        metrics::counter!("tandem_relay_published_total")
            .increment((acked - (self.first - 1)).max(0) as u64);
        (acked, interrupted)
    }
}

/// The envelope as JSON; without its payload when it would not fit one
/// NATS message (headers and subject take a little of the limit).
fn encode(envelope: Envelope, max_payload: usize) -> Vec<u8> {
    const HEADROOM: usize = 1024;
    let json = serde_json::to_vec(&envelope).expect("envelopes serialize");
    if json.len() + HEADROOM <= max_payload {
        return json;
    }
    serde_json::to_vec(&envelope.without_data()).expect("envelopes serialize")
}

pub async fn load_checkpoint(conn: &mut PgConnection, stream: &str) -> Result<i64, sqlx::Error> {
    let position: Option<i64> =
        sqlx::query_scalar("SELECT position FROM relay_checkpoints WHERE stream = $1")
            .bind(stream)
            .fetch_optional(conn)
            .await?;
    Ok(position.unwrap_or(0))
}

/// Without waiting for the WAL flush: a checkpoint lost in a crash only
/// makes the relay republish, which the stream absorbs.
async fn save_checkpoint(
    conn: &mut PgConnection,
    stream: &str,
    position: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH fast AS (SELECT set_config('synchronous_commit', 'off', true))
         INSERT INTO relay_checkpoints (stream, position, updated_at)
         SELECT $1, $2, now() FROM fast
         ON CONFLICT (stream) DO UPDATE SET position = EXCLUDED.position, updated_at = now()",
    )
    .bind(stream)
    .bind(position)
    .execute(conn)
    .await?;
    Ok(())
}

/// The last position `notice` lists; `None` when it does not say (an
/// unlisted batch, or notifications were missed).
fn last_listed(notice: &Notice) -> Option<i64> {
    match notice {
        Notice::Payload(payload) => Sequenced::last_listed(payload),
        Notice::Missed => None,
    }
}

/// The newest position of `first` and the notices buffered behind it;
/// `None` if any of them does not say (then the log must be read).
fn drain_newest(sequenced: &mut Subscription, first: Option<i64>) -> Option<i64> {
    let mut newest = first;
    while let Some(notice) = sequenced.try_recv() {
        newest = newest.zip(last_listed(&notice)).map(|(a, b)| a.max(b));
    }
    newest
}
