//! Feeding a read model from the events stream: a durable JetStream
//! consumer per projection, whose progress of record is the projection's
//! own checkpoint, not the consumer's.
//!
//! The relay keeps stream sequence = log position, so the consumer can
//! always be (re)created to start right after the checkpoint. Messages are
//! taken in ready chunks, applied with the checkpoint ([`Sink::apply`]),
//! then acknowledged (`AckPolicy::All`: one ack per chunk). Redeliveries
//! at or below the checkpoint are skipped and acknowledged. A gap (the
//! consumer starts past the checkpoint, the stream was recreated and the
//! consumer with it) deletes and recreates the consumer at the checkpoint.
//!
//! One process applies a projection at a time (a session advisory lock per
//! projection); others stand by, and the checkpoint guard makes even a
//! split brain harmless.
//!
//! A sink that took over others' work ([`Sink::replaces`]: the read models,
//! once a consumer each) deletes their durable consumers at start.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, Message};
use futures::StreamExt;
use sqlx::{Connection, PgConnection, PgPool};
use tandem_domain::envelope::{BusNames, Envelope};
use uuid::Uuid;

/// Keeps a failure's cause chain for the log.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where a projection's events go.
pub trait Sink: Send + Sync {
    fn name(&self) -> &str;
    /// Last applied position (0 before any).
    fn checkpoint(&self) -> impl Future<Output = Result<i64, BoxError>> + Send;
    /// Applies consecutive `events` after `after`; returns the new checkpoint.
    fn apply(
        &self,
        after: i64,
        events: &[Envelope],
    ) -> impl Future<Output = Result<i64, BoxError>> + Send;
    /// Names of sinks whose work this one took over: their durable
    /// consumers, left behind by an earlier version, are deleted at start.
    fn replaces(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The durable consumer's role (as in [`BusNames::consumer`]) of the sink
/// named `sink`.
fn role(sink: &str) -> String {
    format!("projection-{sink}")
}

#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    /// Messages applied per transaction at most.
    pub chunk: usize,
    /// How long JetStream waits for an ack before redelivering.
    pub ack_wait: Duration,
    pub standby_interval: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            chunk: 512,
            ack_wait: Duration::from_secs(30),
            standby_interval: Duration::from_secs(1),
        }
    }
}

pub struct Consumer<S> {
    sink: S,
    js: jetstream::Context,
    names: BusNames,
    /// For the leader lock and for claim checks (payloads too large for NATS).
    pool: PgPool,
    config: ConsumerConfig,
}

enum Restart {
    /// Recreate the consumer at the checkpoint.
    Recreate,
    Failed(BoxError),
}

impl<E: Into<BoxError>> From<E> for Restart {
    fn from(e: E) -> Self {
        Self::Failed(e.into())
    }
}

impl<S: Sink> Consumer<S> {
    pub fn new(
        sink: S,
        nats: async_nats::Client,
        names: BusNames,
        pool: PgPool,
        config: ConsumerConfig,
    ) -> Self {
        Self {
            sink,
            js: jetstream::new(nats),
            names,
            pool,
            config,
        }
    }

    fn durable_name(&self) -> String {
        self.names.consumer(&role(self.sink.name()))
    }

    /// Deletes the durable consumers of the sinks this one replaced. Left
    /// alone they would sit on the server forever, each with its own
    /// state; nothing reads them. Best effort: with no stream yet (a fresh
    /// install) or no such consumer there is nothing to do.
    async fn retire_replaced(&self) {
        let replaced = self.sink.replaces();
        if replaced.is_empty() {
            return;
        }
        let Ok(stream) = self.js.get_stream(self.names.events_stream()).await else {
            return;
        };
        for sink in replaced {
            let durable = self.names.consumer(&role(&sink));
            match stream.delete_consumer(&durable).await {
                Ok(_) => tracing::info!(
                    consumer = durable,
                    "deleted a durable consumer this version no longer uses"
                ),
                Err(e) => {
                    tracing::debug!(consumer = durable, error = %e, "no old consumer to delete")
                }
            }
        }
    }

    /// Consumes until `shutdown` resolves, retrying with backoff through
    /// outages (NATS down, stream missing until the relay creates it).
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let work = async {
            self.retire_replaced().await;
            let mut backoff = Duration::from_millis(100);
            loop {
                match self.lead().await {
                    Ok(()) => backoff = Duration::from_millis(100),
                    Err(e) => {
                        tracing::warn!(projection = self.sink.name(), error = %e, "projection interrupted; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        };
        tokio::select! {
            () = work => {}
            () = shutdown => tracing::info!(projection = self.sink.name(), "projection stopped"),
        }
    }

    /// Waits to lead, then consumes until the consumer must be recreated
    /// (`Ok`) or something fails.
    async fn lead(&self) -> Result<(), BoxError> {
        let mut lock = PgConnection::connect_with(&self.pool.connect_options()).await?;
        loop {
            let leader: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(lock_key(self.sink.name()))
                .fetch_one(&mut lock)
                .await?;
            if leader {
                break;
            }
            tokio::time::sleep(self.config.standby_interval).await;
        }
        loop {
            match self.consume().await {
                Restart::Recreate => tokio::time::sleep(Duration::from_millis(100)).await,
                Restart::Failed(e) => return Err(e),
            }
            // The lock connection must still be ours to go on leading.
            lock.ping().await?;
        }
    }

    async fn consume(&self) -> Restart {
        let mut checkpoint = match self.sink.checkpoint().await {
            Ok(c) => c,
            Err(e) => return Restart::Failed(e),
        };
        let stream = match self.js.get_stream(self.names.events_stream()).await {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    async_nats::jetstream::context::GetStreamErrorKind::JetStream(_)
                ) =>
            {
                // Most likely not created yet (the relay creates it) or
                // deleted and about to be refilled: wait, quietly.
                tracing::debug!(projection = self.sink.name(), error = %e, "waiting for the events stream");
                tokio::time::sleep(Duration::from_millis(500)).await;
                return Restart::Recreate;
            }
            Err(e) => return e.into(),
        };
        let name = self.durable_name();
        let config = pull::Config {
            durable_name: Some(name.clone()),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: (checkpoint + 1) as u64,
            },
            ack_policy: AckPolicy::All,
            ack_wait: self.config.ack_wait,
            max_ack_pending: (self.config.chunk * 8) as i64,
            ..Default::default()
        };
        let consumer: pull::Stream = match stream.get_or_create_consumer(&name, config).await {
            Ok(c) => match c.messages().await {
                Ok(m) => m,
                Err(e) => return e.into(),
            },
            Err(e) => return e.into(),
        };
        let mut chunks = consumer.ready_chunks(self.config.chunk);
        while let Some(chunk) = chunks.next().await {
            let mut messages = Vec::with_capacity(chunk.len());
            for message in chunk {
                match message {
                    Ok(m) => messages.push(m),
                    Err(e) => {
                        tracing::info!(projection = self.sink.name(), error = %e, "consumer interrupted; recreating it");
                        return Restart::Recreate;
                    }
                }
            }
            match self.handle(&messages, checkpoint).await {
                Ok(Step::Applied(next)) => checkpoint = next,
                Ok(Step::Gap { expected, got }) => {
                    tracing::info!(
                        projection = self.sink.name(),
                        expected,
                        got,
                        "consumer is past the checkpoint; recreating it at the checkpoint"
                    );
                    let _ = stream.delete_consumer(&name).await;
                    return Restart::Recreate;
                }
                Err(e) => return Restart::Failed(e),
            }
            if let Some(last) = messages.last() {
                if let Err(e) = last.ack().await {
                    return Restart::Failed(e);
                }
            }
        }
        Restart::Recreate
    }

    async fn handle(&self, messages: &[Message], checkpoint: i64) -> Result<Step, BoxError> {
        let mut events = Vec::with_capacity(messages.len());
        for message in messages {
            let event: Envelope = serde_json::from_slice(&message.payload)?;
            if event.position > checkpoint {
                events.push(event);
            }
        }
        let consecutive = (checkpoint + 1..)
            .zip(&events)
            .take_while(|(expected, event)| event.position == *expected)
            .count();
        if consecutive < events.len() {
            if consecutive == 0 {
                return Ok(Step::Gap {
                    expected: checkpoint + 1,
                    got: events[0].position,
                });
            }
            // Apply the consecutive prefix; the next chunk finds the gap.
            events.truncate(consecutive);
        }
        if events.is_empty() {
            return Ok(Step::Applied(checkpoint));
        }
        fill_claim_checks(&self.pool, &mut events).await?;
        let next = self.sink.apply(checkpoint, &events).await?;
        metrics::gauge!("tandem_projection_position", "projection" => self.sink.name().to_owned())
            .set(next as f64);
        Ok(Step::Applied(next))
    }
}

enum Step {
    Applied(i64),
    Gap { expected: i64, got: i64 },
}

/// Loads the payloads the relay left out (too large for a NATS message).
pub async fn fill_claim_checks(pool: &PgPool, events: &mut [Envelope]) -> Result<(), sqlx::Error> {
    for event in events.iter_mut().filter(|e| e.dataomitted) {
        let payload: serde_json::Value =
            sqlx::query_scalar("SELECT payload FROM events WHERE event_id = $1")
                .bind(event.id)
                .fetch_one(pool)
                .await?;
        event.data = Some(payload);
        event.dataomitted = false;
    }
    Ok(())
}

/// The advisory-lock key of projection `name` (stable across processes).
pub fn lock_key(name: &str) -> i64 {
    let id = Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("tandem-projection:{name}").as_bytes(),
    );
    i64::from_be_bytes(id.as_bytes()[..8].try_into().expect("8 bytes"))
}
