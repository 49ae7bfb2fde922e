//! Rebuilding read models from position 0 without taking the read API
//! down (`tandem replay`).
//!
//! For each projection: fresh tables in schema `rebuild_<name>` (same
//! definitions as the live ones), filled from the log by the projection's
//! own projector under the checkpoint `<name>@rebuild`. Once it is close
//! to the head, one transaction locks the live checkpoint row (the live
//! consumer's next batch waits on it before touching a table), applies the
//! last events, moves the live tables to `retired_<name>` and the new ones
//! into `read`, and sets the live checkpoint to the rebuild's position.
//! Queries wait a moment on the table locks and never see a half state.
//! Once every projection is swapped in, both versions of each are
//! digested (row count and an order-independent hash of every row) and
//! the retired tables are dropped.
//!
//! Filling is the bulk of the work, so it is cheap per event: the log is
//! read several chunks at once, rows fold across chunks into large batches
//! (many changes to one row become one statement's row), the next chunks
//! are projected while Postgres applies a batch, and a table only inserted
//! into gets its primary key at the end.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use futures::future::try_join_all;
use futures::{stream, StreamExt};
use sqlx::{Connection, PgConnection, PgPool};
use tandem_domain::envelope::Envelope;

use crate::consumer::BoxError;
use crate::projector::Projector;
use crate::tables::{Batch, TableProjection, LIVE_SCHEMA};

/// Events read from the log per round.
const CHUNK: i64 = 10_000;
/// Within this many events of the head, the rest is applied under the
/// swap's lock (briefly holding up the live consumer). Kept small: the
/// fill reads the log once for all projections and overlaps reading with
/// applying, while each swap reads its rest alone and applies it holding
/// the lock. At two chunks, every swap read a log at rest's last
/// 10,000–20,000 events again.
const SWAP_DISTANCE: i64 = 1_000;
/// A rebuild's batches are larger than the live consumer's: its tables are
/// its own, and the more events a batch spans, the more of their row
/// changes fold into one (see [`crate::tables::Batcher`]).
const REBUILD_BATCH_BYTES: usize = 32 << 20;
/// Chunks read from the log at once while filling.
const READS_IN_FLIGHT: usize = 3;

/// Where the events come from: `read(after, limit)` returns up to `limit`
/// events with position > `after`, in order, and `head()` the last position.
pub trait LogSource: Send + Sync {
    fn read(
        &self,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<Envelope>, BoxError>> + Send;
    fn head(&self) -> impl Future<Output = Result<i64, BoxError>> + Send;
}

/// Told how the rebuild goes (a progress bar, a log line).
pub trait Progress: Send + Sync {
    fn advanced(&self, position: i64, head: i64, elapsed: std::time::Duration);
}

/// Rows and digest of one table, before and after.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableReport {
    pub table: String,
    pub old_rows: i64,
    pub new_rows: i64,
    pub old_digest: String,
    pub new_digest: String,
}

impl TableReport {
    pub fn identical(&self) -> bool {
        self.old_rows == self.new_rows && self.old_digest == self.new_digest
    }
}

#[derive(Clone, Debug)]
pub struct Report {
    pub projection: String,
    pub position: i64,
    pub events: i64,
    /// From the start until its new tables were live (swapped in).
    pub live_after: f64,
    /// From the start until its report was done (digests included).
    pub seconds: f64,
    pub tables: Vec<TableReport>,
}

fn rebuild_schema(name: &str) -> String {
    format!("rebuild_{name}")
}

fn retired_schema(name: &str) -> String {
    format!("retired_{name}")
}

fn rebuild_checkpoint(name: &str) -> String {
    format!("{name}@rebuild")
}

/// Rebuilds `projectors` from position 0 and swaps each in; returns what
/// changed. The log is read once for all of them.
pub async fn rebuild(
    pool: &PgPool,
    projectors: &[Arc<dyn Projector>],
    source: &impl LogSource,
    progress: &impl Progress,
) -> Result<Vec<Report>, BoxError> {
    let started = Instant::now();
    let mut targets = Vec::new();
    for projector in projectors {
        prepare(pool, projector.as_ref()).await?;
        targets.push(TableProjection::new(
            pool.clone(),
            projector.clone(),
            &rebuild_schema(projector.name()),
            &rebuild_checkpoint(projector.name()),
        ));
    }
    fill(&targets, source, progress, started).await?;
    // Each on a connection of its own: a small table's build does not
    // wait behind a large one's.
    try_join_all(
        targets
            .iter()
            .map(|target| build_indexes(pool, target.projector().as_ref())),
    )
    .await?;
    let mut swapped = Vec::new();
    for target in &targets {
        let at = swap(pool, target, source).await?;
        swapped.push((target.projector(), at, started.elapsed()));
    }
    // Every new table serves queries before any is digested.
    let mut reports = Vec::new();
    for (projector, at, live_after) in swapped {
        reports.push(Report {
            projection: projector.name().to_owned(),
            position: at,
            events: at,
            live_after: live_after.as_secs_f64(),
            tables: compare(pool, projector.as_ref()).await?,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    let head = source.head().await?;
    progress.advanced(head, head, started.elapsed());
    Ok(reports)
}

/// Applies the log to every target until near the head. One reader feeds
/// each target through a short queue, so reading overlaps applying; each
/// target computes a chunk's rows in one task and commits them in another,
/// so its next chunk is projected while Postgres applies the last one. The
/// slowest target sets the pace.
async fn fill(
    targets: &[TableProjection],
    source: &impl LogSource,
    progress: &impl Progress,
    started: Instant,
) -> Result<(), BoxError> {
    let mut queues = Vec::new();
    let mut stages = Vec::new();
    for target in targets {
        let (tx, mut chunks) = tokio::sync::mpsc::channel::<Arc<Vec<Envelope>>>(4);
        let (to_commit, mut batches) = tokio::sync::mpsc::channel::<Batch>(2);
        queues.push(tx);
        let mut batcher = target.batcher(0, REBUILD_BATCH_BYTES);
        stages.push(tokio::spawn(async move {
            while let Some(chunk) = chunks.recv().await {
                // Off the runtime's threads, so the committers are served
                // promptly while a chunk is projected.
                let full;
                (batcher, full) = tokio::task::spawn_blocking(move || {
                    let full = batcher.add(&chunk);
                    (batcher, full)
                })
                .await?;
                for batch in full? {
                    if to_commit.send(batch).await.is_err() {
                        // The committer failed: its error is reported below.
                        return Ok(());
                    }
                }
            }
            if let Some(batch) = batcher.finish() {
                let _ = to_commit.send(batch).await;
            }
            Ok::<(), BoxError>(())
        }));
        let committing = target.clone();
        stages.push(tokio::spawn(async move {
            while let Some(batch) = batches.recv().await {
                committing.commit(batch).await?;
            }
            Ok::<(), BoxError>(())
        }));
    }
    let mut position = 0;
    let read = async {
        loop {
            let head = source.head().await?;
            if head - position <= SWAP_DISTANCE {
                return Ok::<(), BoxError>(());
            }
            // Positions are gapless, so the chunks up to near the head are
            // known and several are read at once. Were there a gap, chunks
            // would overlap, never miss: targets skip what they have.
            let starts = (position..head - SWAP_DISTANCE).step_by(CHUNK as usize);
            let mut chunks = stream::iter(starts)
                .map(|after| source.read(after, CHUNK))
                .buffered(READS_IN_FLIGHT);
            while let Some(events) = chunks.next().await {
                let events = events?;
                let Some(last) = events.last().map(|e| e.position) else {
                    return Ok(());
                };
                let chunk = Arc::new(events);
                for queue in &queues {
                    if queue.send(chunk.clone()).await.is_err() {
                        // Its applier failed: stop; the error is reported below.
                        return Ok(());
                    }
                }
                position = position.max(last);
                progress.advanced(position, head, started.elapsed());
            }
        }
    };
    let read = read.await;
    drop(queues);
    for stage in stages {
        stage.await??;
    }
    read
}

/// Reads one chunk after `position` and applies it to every target, in
/// parallel (one connection each). Returns the new position.
async fn apply_chunk(
    targets: &[TableProjection],
    source: &impl LogSource,
    position: i64,
) -> Result<i64, BoxError> {
    let events = source.read(position, CHUNK).await?;
    let Some(last) = events.last().map(|e| e.position) else {
        return Ok(position);
    };
    try_join_all(targets.iter().map(|t| t.apply(position, &events))).await?;
    Ok(last)
}

/// A fresh schema with empty copies of the projection's live tables.
async fn prepare(pool: &PgPool, projector: &dyn Projector) -> Result<(), sqlx::Error> {
    let schema = rebuild_schema(projector.name());
    let mut conn = pool.acquire().await?;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(&mut *conn)
        .await?;
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut *conn)
        .await?;
    for table in projector.tables() {
        // Only the primary key while filling (upserts and updates need
        // it), and none on a table only inserted into; other indexes are
        // built once at the end, which is far cheaper than maintaining
        // them row by row. Unlogged while filling: the fill writes no WAL
        // (a crash truncates the tables, and a rebuild always starts over
        // from `prepare`); `build_indexes` makes them logged first.
        sqlx::query(&format!(
            "CREATE UNLOGGED TABLE {schema}.{table} (LIKE {LIVE_SCHEMA}.{table} INCLUDING ALL EXCLUDING INDEXES)"
        ))
        .execute(&mut *conn)
        .await?;
        if !projector.insert_only().contains(table) {
            for statement in copy_constraints(&mut conn, &schema, table, "p").await? {
                sqlx::query(&statement).execute(&mut *conn).await?;
            }
        }
        // Storage parameters (fillfactor) are not copied by LIKE.
        let options: Option<Vec<String>> = sqlx::query_scalar(
            "SELECT reloptions FROM pg_class WHERE oid = ($1 || '.' || $2)::regclass",
        )
        .bind(LIVE_SCHEMA)
        .bind(table)
        .fetch_one(&mut *conn)
        .await?;
        if let Some(options) = options.filter(|o| !o.is_empty()) {
            sqlx::query(&format!(
                "ALTER TABLE {schema}.{table} SET ({})",
                options.join(", ")
            ))
            .execute(&mut *conn)
            .await?;
        }
    }
    sqlx::query("DELETE FROM projection_checkpoints WHERE projection = $1")
        .bind(rebuild_checkpoint(projector.name()))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// `ALTER TABLE` statements giving `schema.table` the live table's
/// constraints of kind `kind` (`p` primary key, `u` unique).
async fn copy_constraints(
    conn: &mut PgConnection,
    schema: &str,
    table: &str,
    kind: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let found: Vec<(String, String)> = sqlx::query_as(
        "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint
          WHERE conrelid = ($1 || '.' || $2)::regclass AND contype = $3::\"char\"",
    )
    .bind(LIVE_SCHEMA)
    .bind(table)
    .bind(kind)
    .fetch_all(conn)
    .await?;
    Ok(found
        .into_iter()
        .map(|(name, definition)| {
            format!("ALTER TABLE {schema}.{table} ADD CONSTRAINT {name} {definition}")
        })
        .collect())
}

/// Makes the filled tables logged (durable from here on: one rewrite,
/// before the indexes exist, so they are built once), then builds the
/// keys, unique constraints and indexes the fill went without.
async fn build_indexes(pool: &PgPool, projector: &dyn Projector) -> Result<(), sqlx::Error> {
    let schema = rebuild_schema(projector.name());
    let mut conn = pool.acquire().await?;
    for table in projector.tables() {
        let mut statements = vec![format!("ALTER TABLE {schema}.{table} SET LOGGED")];
        if projector.insert_only().contains(table) {
            statements.extend(copy_constraints(&mut conn, &schema, table, "p").await?);
        }
        statements.extend(copy_constraints(&mut conn, &schema, table, "u").await?);
        let indexes: Vec<String> = sqlx::query_scalar(
            "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i
              WHERE i.indrelid = ($1 || '.' || $2)::regclass
                AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)",
        )
        .bind(LIVE_SCHEMA)
        .bind(table)
        .fetch_all(&mut *conn)
        .await?;
        let live = format!(" ON {LIVE_SCHEMA}.{table} ");
        let rebuilt = format!(" ON {schema}.{table} ");
        statements.extend(indexes.iter().map(|d| d.replacen(&live, &rebuilt, 1)));
        for statement in statements {
            sqlx::query(&statement).execute(&mut *conn).await?;
        }
    }
    Ok(())
}

/// Catches up under the live checkpoint's lock and swaps the tables.
async fn swap(
    pool: &PgPool,
    target: &TableProjection,
    source: &impl LogSource,
) -> Result<i64, BoxError> {
    let name = target.projector().name();
    let tables = target.projector().tables();
    let (live, rebuilt, retired) = (LIVE_SCHEMA, rebuild_schema(name), retired_schema(name));
    let mut conn = PgConnection::connect_with(&pool.connect_options()).await?;
    let mut tx = conn.begin().await?;
    sqlx::query(
        "INSERT INTO projection_checkpoints (projection, position) VALUES ($1, 0)
         ON CONFLICT (projection) DO NOTHING",
    )
    .bind(name)
    .execute(&mut *tx)
    .await?;
    let live_position: i64 = sqlx::query_scalar(
        "SELECT position FROM projection_checkpoints WHERE projection = $1 FOR UPDATE",
    )
    .bind(name)
    .fetch_one(&mut *tx)
    .await?;
    // The live model is frozen at `live_position` now; reach at least that
    // (and the head as it is).
    let head = source.head().await?.max(live_position);
    let mut position = target.checkpoint().await?;
    while position < head {
        let next = apply_chunk(std::slice::from_ref(target), source, position).await?;
        if next == position {
            break;
        }
        position = next;
    }
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {retired} CASCADE"))
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("CREATE SCHEMA {retired}"))
        .execute(&mut *tx)
        .await?;
    for table in tables {
        sqlx::query(&format!("ALTER TABLE {live}.{table} SET SCHEMA {retired}"))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!("ALTER TABLE {rebuilt}.{table} SET SCHEMA {live}"))
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(
        "UPDATE projection_checkpoints SET position = $2, updated_at = now() WHERE projection = $1",
    )
    .bind(name)
    .bind(position)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM projection_checkpoints WHERE projection = $1")
        .bind(target.checkpoint_name())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    conn.close().await?;
    Ok(position)
}

/// Digests the retired tables against the live ones, then drops them.
/// On a running system the live ones may have moved on since the swap.
async fn compare(pool: &PgPool, projector: &dyn Projector) -> Result<Vec<TableReport>, BoxError> {
    let (live, rebuilt) = (LIVE_SCHEMA, rebuild_schema(projector.name()));
    let retired = retired_schema(projector.name());
    let mut conn = pool.acquire().await?;
    let mut reports = Vec::new();
    for table in projector.tables() {
        let (old_rows, old_digest) = digest(&mut conn, &retired, table).await?;
        let (new_rows, new_digest) = digest(&mut conn, live, table).await?;
        reports.push(TableReport {
            table: (*table).to_owned(),
            old_rows,
            new_rows,
            old_digest,
            new_digest,
        });
    }
    sqlx::query(&format!("DROP SCHEMA {retired} CASCADE"))
        .execute(&mut *conn)
        .await?;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {rebuilt} CASCADE"))
        .execute(&mut *conn)
        .await?;
    Ok(reports)
}

/// Row count and an order-independent digest of every row of a table.
pub async fn digest(
    conn: &mut PgConnection,
    schema: &str,
    table: &str,
) -> Result<(i64, String), sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)::numeric), 0)::text
           FROM {schema}.{table} t"
    ))
    .fetch_one(conn)
    .await
}
