//! [`BatchedEventStore`]: the cqrs-es event repository under the bus and
//! the directory, which shares database round trips between concurrent
//! commands.
//!
//! * **Group load.** Loads of aggregates that arrive while earlier loads
//!   are in flight are answered by one `SELECT` over all their streams. A
//!   load still reads what was committed when it was asked for (its batch
//!   starts after it was queued), so authorization read through it stays
//!   strongly consistent.
//! * **Group commit.** Appends gathered the same way — of any aggregate
//!   type — go to Postgres as one multi-row `INSERT`: one statement, one
//!   transaction, one WAL flush for many commands. postgres-es would send
//!   one `INSERT` per event, each a round trip. If a batch fails —
//!   typically one command lost its optimistic-concurrency race on the
//!   `(aggregate_type, aggregate_id, sequence)` key — each of its commands
//!   is appended again on its own, so each hears exactly its own answer and
//!   a conflict stays the loser's.
//!
//! * **Sequencing at commit.** While this process's sequencer leads, a
//!   batch is appended by `tandem_append_sequenced`, which runs the
//!   sequencing step in the appending transaction: the commands' events
//!   have their positions when the one commit lands, instead of after a
//!   second transaction and flush. Otherwise the batch is a plain `INSERT`
//!   and the sequencer is poked.
//!
//! Rows keep the order they are given in (`WITH ORDINALITY`), so one
//! command's events take increasing `global_id`s and the sequencer, which
//! numbers in `global_id` order, keeps each aggregate's order. Snapshots
//! are not used (the cqrs-es 0.5 snapshot bug); the rarely used calls go
//! straight to postgres-es.

use std::collections::HashMap;
use std::sync::Arc;

use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::Aggregate;
use postgres_es::PostgresEventRepository;
use serde_json::value::RawValue;
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::types::Json;
use sqlx::PgPool;
use tokio::sync::oneshot;

use crate::batcher::{BatchLimits, Batcher};
use crate::kept::KeptConnections;
use crate::positions::AppendNotifier;
use crate::sequencer::{record_step, Step};

/// Fewer, bigger batches win: measured with `tandem bench commands` at 64
/// clients, 1–2 flushes in flight beat 4 or 8. With sequencing at commit,
/// 2 in flight gave the same rate as 1 for 9 points more CPU, and 3 lost a
/// quarter of it (their steps queue on the sequencer's row lock).
const APPEND_LIMITS: BatchLimits = BatchLimits {
    parallel: 1,
    max_weight: 256,
};
/// Streams read by one `SELECT` at most.
const LOAD_LIMITS: BatchLimits = BatchLimits {
    parallel: 1,
    max_weight: 128,
};

/// A plain group commit: `tandem_append` (migrations
/// `appends_bring_event_ids`, `append_plan_kept`,
/// `at_commit_numbers_its_own_rows`), the `INSERT` that keeps the rows in
/// the order given. It answers in [`APPEND_SEQUENCED`]'s shape, with no
/// step taken.
const APPEND: &str = "
SELECT 0::bigint, 0::bigint, '{}'::text[]
  FROM (SELECT count(*) FROM tandem_append($1, $2, $3, $4, $5, $6, $7, $8)) appended";

/// The same `INSERT` and a sequencing step, in one transaction (the
/// migration `sequence_at_commit` says why that is safe).
const APPEND_SEQUENCED: &str = "
SELECT assigned, last_position, listing FROM tandem_append_sequenced($1, $2, $3, $4, $5, $6, $7, $8, $9)";

/// Larger batches: one index range per stream. The correlated subquery
/// keeps it so: as a plain join, a cached generic plan (it guesses 100
/// keys) turns into a hash join over the whole table.
const SELECT: &str = "
SELECT e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, e.event_version, e.payload, e.metadata
  FROM unnest($1::text[], $2::text[]) AS k(aggregate_type, aggregate_id)
  CROSS JOIN LATERAL (
       SELECT * FROM events e
        WHERE e.aggregate_type = k.aggregate_type AND e.aggregate_id = k.aggregate_id
        ORDER BY e.sequence OFFSET 0) e";

/// Batches of up to this many streams are read by a statement of their
/// own size, with a scalar pair of parameters per stream.
const SCALAR_STREAMS_MAX: usize = 16;

/// The statement reading `n` streams with scalar parameters (a `UNION ALL`
/// of one primary-key range each), for `1..=SCALAR_STREAMS_MAX`; `None`
/// beyond, where [`SELECT`] takes arrays. Postgres plans array parameters
/// afresh on every call (a custom plan always looks cheaper than the
/// generic one): pg_stat_statements over `bench pipeline` counted 1,354 ms
/// of planning against 345 ms of execution for [`SELECT`]. Scalar
/// parameters keep one generic plan per connection and size.
fn select_streams(n: usize) -> Option<&'static str> {
    static STATEMENTS: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
        (1..=SCALAR_STREAMS_MAX)
            .map(|n| {
                (0..n)
                    .map(|k| {
                        format!(
                            "(SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata
                                FROM events WHERE aggregate_type = ${} AND aggregate_id = ${} ORDER BY sequence)",
                            2 * k + 1,
                            2 * k + 2
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" UNION ALL ")
            })
            .collect()
    });
    STATEMENTS.get(n.checked_sub(1)?).map(String::as_str)
}

type Answer<T> = oneshot::Sender<Result<T, PersistenceError>>;

struct Append {
    events: Vec<Encoded>,
    done: Answer<()>,
}

/// An event ready for the `INSERT`, its JSON written by the committing
/// command's task: the appender, whose turnaround between two batches is
/// on every command's path, only copies it.
struct Encoded {
    /// Minted here (UUIDv7, as the column's default would make it).
    event_id: uuid::Uuid,
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    event_version: String,
    payload: Box<RawValue>,
    metadata: Box<RawValue>,
}

impl Encoded {
    fn of(event: &SerializedEvent) -> Result<Self, PersistenceError> {
        let json = |value: &Value| {
            serde_json::value::to_raw_value(value)
                .map_err(|e| PersistenceError::UnknownError(Box::new(e)))
        };
        Ok(Self {
            event_id: uuid::Uuid::now_v7(),
            aggregate_type: event.aggregate_type.clone(),
            aggregate_id: event.aggregate_id.clone(),
            sequence: event.sequence as i64,
            event_type: event.event_type.clone(),
            event_version: event.event_version.clone(),
            payload: json(&event.payload)?,
            metadata: json(&event.metadata)?,
        })
    }
}

/// `(aggregate_type, aggregate_id)`.
type StreamKey = (String, String);

struct Load {
    stream: StreamKey,
    done: Answer<Vec<SerializedEvent>>,
}

/// Cheap to clone: every clone feeds the same two batchers.
#[derive(Clone)]
pub struct BatchedEventStore {
    postgres: Arc<PostgresEventRepository>,
    appends: Batcher<Append>,
    loads: Batcher<Load>,
}

impl BatchedEventStore {
    /// Starts the batchers on the current runtime; every committed append
    /// is sequenced at commit or announced through `notifier`.
    pub fn new(pool: &PgPool, notifier: AppendNotifier) -> Self {
        let appending = own_connections(pool, APPEND_LIMITS);
        let loading = own_connections(pool, LOAD_LIMITS);
        Self {
            postgres: Arc::new(PostgresEventRepository::new(pool.clone())),
            appends: Batcher::spawn(
                APPEND_LIMITS,
                |a| a.events.len(),
                move |batch| append_all(appending.clone(), notifier.clone(), batch),
            ),
            loads: Batcher::spawn(
                LOAD_LIMITS,
                |_| 1,
                move |batch| load_all(loading.clone(), batch),
            ),
        }
    }
}

/// Connections of its own for a batcher, as many as it has batches in
/// flight, configured as `shared`, and kept between batches (see
/// [`KeptConnections`]). The batchers' statements then stay prepared,
/// planned and (PL/pgSQL) compiled on the same backend, instead of being
/// planned again, five custom plans each, on every connection of the
/// shared pool. `bench commands`, alternating: 9,910 and 10,264 commands/s
/// with a pool of their own, 7,191 and 7,505 without.
fn own_connections(shared: &PgPool, limits: BatchLimits) -> Arc<KeptConnections> {
    let pool = PgPoolOptions::new()
        .max_connections(limits.parallel as u32)
        .acquire_timeout(shared.options().get_acquire_timeout())
        .test_before_acquire(false)
        .connect_lazy_with((*shared.connect_options()).clone());
    Arc::new(KeptConnections::new(pool))
}

fn gone() -> PersistenceError {
    PersistenceError::UnknownError("the event store's batcher stopped".into())
}

/// postgres-es's reading of a sqlx error (a unique violation is a lost
/// optimistic-concurrency race), with every way of Postgres being out of
/// reach read as a connection error. Shared: one failed `SELECT` answers
/// every load of its batch.
fn persistence_error(e: Arc<sqlx::Error>) -> PersistenceError {
    match &*e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => {
            PersistenceError::OptimisticLockError
        }
        inner if crate::db::is_unavailable(inner) => {
            PersistenceError::ConnectionError(Box::new(SharedError(e)))
        }
        _ => PersistenceError::UnknownError(Box::new(SharedError(e))),
    }
}

/// What a sequencing step at commit did: the step, and its listing of the
/// events it numbered (its `tandem_sequenced` payloads).
type SequencedAtCommit = (Step, Vec<String>);

/// Appends `events` in one statement. Given a `step_size`, the statement
/// also runs a sequencing step of at most that many events, and its result
/// is returned.
async fn insert<'a>(
    connections: &KeptConnections,
    events: impl Iterator<Item = &'a Encoded> + Clone,
    step_size: Option<i32>,
) -> Result<Option<SequencedAtCommit>, PersistenceError> {
    let column = |f: fn(&'a Encoded) -> &'a str| events.clone().map(f).collect::<Vec<_>>();
    let json =
        |f: fn(&'a Encoded) -> &'a RawValue| events.clone().map(|e| Json(f(e))).collect::<Vec<_>>();
    let event_ids: Vec<uuid::Uuid> = events.clone().map(|e| e.event_id).collect();
    let sequences: Vec<i64> = events.clone().map(|e| e.sequence).collect();
    let payloads = json(|e| &e.payload);
    let metadata = json(|e| &e.metadata);
    let query = sqlx::query_as::<_, (i64, i64, Vec<String>)>(
        step_size.map_or(APPEND, |_| APPEND_SEQUENCED),
    )
    .bind(event_ids)
    .bind(column(|e| &e.aggregate_type))
    .bind(column(|e| &e.aggregate_id))
    .bind(sequences)
    .bind(column(|e| &e.event_type))
    .bind(column(|e| &e.event_version))
    .bind(payloads)
    .bind(metadata);
    let query = match step_size {
        Some(size) => query.bind(size),
        None => query,
    };
    let mut conn = connections
        .take()
        .await
        .map_err(|e| persistence_error(Arc::new(e)))?;
    let outcome = query.fetch_one(&mut *conn).await;
    connections.give_back(conn, &outcome);
    let (assigned, last_position, listing) = outcome.map_err(|e| persistence_error(Arc::new(e)))?;
    let step = Step {
        assigned,
        last_position,
    };
    Ok(step_size.map(|_| (step, listing)))
}

/// Appends and, after the commit, has the events sequenced.
async fn append(
    connections: &KeptConnections,
    notifier: &AppendNotifier,
    events: impl Iterator<Item = &Encoded> + Clone,
) -> Result<(), PersistenceError> {
    // Read per batch: leadership can change between two.
    let step_size = notifier.sequencing_at_commit();
    match (insert(connections, events, step_size).await?, step_size) {
        (Some((step, listing)), Some(size)) => {
            record_step(step);
            notifier.sequenced_at_commit(step, size, &listing);
        }
        _ => notifier.poke(),
    }
    Ok(())
}

async fn append_all(
    connections: Arc<KeptConnections>,
    notifier: AppendNotifier,
    batch: Vec<Append>,
) {
    if batch.len() > 1 {
        if append(
            &connections,
            &notifier,
            batch.iter().flat_map(|a| &a.events),
        )
        .await
        .is_ok()
        {
            for append in batch {
                let _ = append.done.send(Ok(()));
            }
            return;
        }
        tracing::debug!(
            commands = batch.len(),
            "group commit failed; appending one by one"
        );
    }
    for one in batch {
        let result = append(&connections, &notifier, one.events.iter()).await;
        let _ = one.done.send(result);
    }
}

async fn load_all(connections: Arc<KeptConnections>, batch: Vec<Load>) {
    // Askers per stream. Each stream is queried once: a key asked for
    // twice would return its rows twice, and every asker would replay each
    // event twice.
    let mut remaining: HashMap<StreamKey, usize> = HashMap::new();
    let (types, ids): (Vec<&str>, Vec<&str>) = batch
        .iter()
        .map(|l| &l.stream)
        .filter(|stream| {
            let askers = remaining.entry((*stream).clone()).or_default();
            *askers += 1;
            *askers == 1
        })
        .map(|(t, i)| (t.as_str(), i.as_str()))
        .unzip();
    let rows = async {
        let mut conn = connections.take().await?;
        let rows = select_rows(&mut conn, types, ids).await;
        connections.give_back(conn, &rows);
        rows
    }
    .await;
    let mut streams: HashMap<StreamKey, Vec<SerializedEvent>> = HashMap::new();
    match rows {
        Ok(rows) => {
            for row in rows {
                let event = row.into_event();
                let key = (event.aggregate_type.clone(), event.aggregate_id.clone());
                streams.entry(key).or_default().push(event);
            }
        }
        Err(e) => {
            let e = Arc::new(e);
            for load in batch {
                let _ = load.done.send(Err(persistence_error(e.clone())));
            }
            return;
        }
    }
    // The last asker of a stream takes its events; earlier ones (the same
    // aggregate twice in one batch) get a copy.
    for load in batch {
        let left = remaining.get_mut(&load.stream).expect("counted above");
        *left -= 1;
        let events = if *left == 0 {
            streams.remove(&load.stream).unwrap_or_default()
        } else {
            streams.get(&load.stream).cloned().unwrap_or_default()
        };
        let _ = load.done.send(Ok(events));
    }
}

/// The events of the streams `types[k]`/`ids[k]`, each stream in order.
async fn select_rows(
    conn: &mut sqlx::PgConnection,
    types: Vec<&str>,
    ids: Vec<&str>,
) -> Result<Vec<EventRow>, sqlx::Error> {
    match select_streams(types.len()) {
        Some(sql) => {
            let mut query = sqlx::query_as(sql);
            for (t, i) in types.into_iter().zip(ids) {
                query = query.bind(t).bind(i);
            }
            query.fetch_all(conn).await
        }
        None => {
            sqlx::query_as(SELECT)
                .bind(types)
                .bind(ids)
                .fetch_all(conn)
                .await
        }
    }
}

#[derive(Debug)]
struct SharedError(Arc<sqlx::Error>);

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

#[derive(sqlx::FromRow)]
struct EventRow {
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    event_version: String,
    payload: Value,
    metadata: Value,
}

impl EventRow {
    fn into_event(self) -> SerializedEvent {
        SerializedEvent {
            aggregate_id: self.aggregate_id,
            sequence: self.sequence as usize,
            aggregate_type: self.aggregate_type,
            event_type: self.event_type,
            event_version: self.event_version,
            payload: self.payload,
            metadata: self.metadata,
        }
    }
}

/// Queues the request `item` builds around its answer channel, and waits
/// for the answer.
async fn ask<I: Send + 'static, T>(
    batcher: &Batcher<I>,
    item: impl FnOnce(Answer<T>) -> I,
) -> Result<T, PersistenceError> {
    let (done, answer) = oneshot::channel();
    batcher.push(item(done)).map_err(|_| gone())?;
    answer.await.map_err(|_| gone())?
}

impl PersistedEventRepository for BatchedEventStore {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let stream = (A::TYPE.to_owned(), aggregate_id.to_owned());
        ask(&self.loads, |done| Load { stream, done }).await
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.postgres
            .get_last_events::<A>(aggregate_id, last_sequence)
            .await
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        self.postgres.get_snapshot::<A>(aggregate_id).await
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        if snapshot_update.is_some() {
            return self.postgres.persist::<A>(events, snapshot_update).await;
        }
        if events.is_empty() {
            return Ok(());
        }
        let events = events
            .iter()
            .map(Encoded::of)
            .collect::<Result<Vec<_>, _>>()?;
        ask(&self.appends, |done| Append { events, done }).await
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        self.postgres.stream_events::<A>(aggregate_id).await
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        self.postgres.stream_all_events::<A>().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_batches_get_a_statement_of_their_size() {
        assert_eq!(select_streams(0), None);
        let one = select_streams(1).unwrap();
        assert!(one.contains("$2") && !one.contains("$3") && !one.contains("UNION"));
        let most = select_streams(SCALAR_STREAMS_MAX).unwrap();
        assert_eq!(most.matches("UNION ALL").count(), SCALAR_STREAMS_MAX - 1);
        assert!(most.contains(&format!("${}", 2 * SCALAR_STREAMS_MAX)));
        assert_eq!(select_streams(SCALAR_STREAMS_MAX + 1), None);
    }
}
