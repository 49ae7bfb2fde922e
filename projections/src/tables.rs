//! [`TableProjection`]: a [`Projector`] bound to a schema and a checkpoint,
//! applying batches of events with their checkpoint in one transaction.
//!
//! A batch is one transaction that starts by moving the checkpoint with
//! `tandem_advance_projection`, which refuses unless the checkpoint is
//! where the batch started, then runs the batch's few set-based statements
//! ([`RowOps`]). So a redelivered event (position at or below
//! the checkpoint) is skipped, two appliers cannot interleave, and a
//! failure leaves tables and checkpoint as they were.

use std::sync::Arc;

use sqlx::{Executor as _, PgConnection, PgPool};
use tandem_domain::envelope::Envelope;

use crate::projector::{ProjectionError, Projector};
use crate::rows::{RowOps, RowsError};

/// A transaction carries at most about this much data; a batch of large
/// file saves is cut into several, each with its checkpoint.
pub(crate) const MAX_SQL_BYTES: usize = 4 << 20;

pub const LIVE_SCHEMA: &str = "read";

#[derive(Clone)]
pub struct TableProjection {
    pool: PgPool,
    projector: Arc<dyn Projector>,
    schema: String,
    checkpoint: String,
    inline_up_to: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Rows(RowsError),
}

impl From<RowsError> for ApplyError {
    fn from(e: RowsError) -> Self {
        match e {
            RowsError::Database(e) => Self::Database(e),
            other => Self::Rows(other),
        }
    }
}

impl TableProjection {
    /// The projection serving queries: schema `read`, checkpoint = name.
    pub fn live(pool: PgPool, projector: Arc<dyn Projector>) -> Self {
        let checkpoint = projector.name().to_owned();
        Self::new(pool, projector, LIVE_SCHEMA, &checkpoint)
    }

    pub fn new(
        pool: PgPool,
        projector: Arc<dyn Projector>,
        schema: &str,
        checkpoint: &str,
    ) -> Self {
        Self {
            pool,
            projector,
            schema: schema.to_owned(),
            checkpoint: checkpoint.to_owned(),
            inline_up_to: INLINE_MAX_BYTES,
        }
    }

    /// Batches up to `bytes` go in one round trip with their values
    /// inlined, larger ones bound ([`commit_batch`]); 0 binds them all.
    #[must_use]
    pub fn inline_up_to(mut self, bytes: usize) -> Self {
        self.inline_up_to = bytes;
        self
    }

    pub fn projector(&self) -> &Arc<dyn Projector> {
        &self.projector
    }

    pub fn checkpoint_name(&self) -> &str {
        &self.checkpoint
    }

    /// Last applied position (0 before the first batch).
    pub async fn checkpoint(&self) -> Result<i64, sqlx::Error> {
        read_checkpoint(&self.pool, &self.checkpoint).await
    }

    /// Applies `events` (consecutive positions) on top of `after`; events at
    /// or below `after` are skipped. Returns the new checkpoint.
    pub async fn apply(&self, after: i64, events: &[Envelope]) -> Result<i64, ApplyError> {
        let mut last = after;
        for batch in self.batches(after, events)? {
            last = self.commit(batch).await?;
        }
        Ok(last)
    }

    /// The transactions that apply `events` on top of `after` (none when
    /// every event is at or below it), each carrying at most about
    /// [`MAX_SQL_BYTES`].
    pub fn batches(&self, after: i64, events: &[Envelope]) -> Result<Vec<Batch>, ProjectionError> {
        let mut batcher = self.batcher(after, MAX_SQL_BYTES);
        let mut batches = batcher.add(events)?;
        batches.extend(batcher.finish());
        Ok(batches)
    }

    /// Folds events into batches of up to about `max_bytes` across calls.
    pub fn batcher(&self, after: i64, max_bytes: usize) -> Batcher {
        Batcher {
            projector: self.projector.clone(),
            rows: RowOps::new(),
            from: after,
            last: after,
            max_bytes,
        }
    }

    /// Applies one batch (refused unless the checkpoint is at its start);
    /// returns the new checkpoint.
    pub async fn commit(&self, batch: Batch) -> Result<i64, ApplyError> {
        commit_batch(
            &self.pool,
            &self.schema,
            &[(&self.checkpoint, batch.from)],
            batch.to,
            vec![batch.rows],
            self.inline_up_to,
        )
        .await?;
        Ok(batch.to)
    }
}

/// Turns events into [`Batch`]es, folding rows across calls until a batch
/// is full: the larger the batch, the more of a row's changes fold into
/// one statement (a rebuild's counters and upserts fold from hundreds of
/// thousands of events into one row each). Pure work on this side, so a
/// caller may project the next events while Postgres applies a batch.
pub struct Batcher {
    projector: Arc<dyn Projector>,
    rows: RowOps,
    from: i64,
    last: i64,
    max_bytes: usize,
}

impl Batcher {
    /// Projects `events` past what it has seen; returns the batches that
    /// filled up.
    pub fn add(&mut self, events: &[Envelope]) -> Result<Vec<Batch>, ProjectionError> {
        let mut full = Vec::new();
        let seen = self.last;
        for event in events.iter().filter(|e| e.position > seen) {
            self.projector.project(event, &mut self.rows)?;
            self.last = event.position;
            if self.rows.size() >= self.max_bytes {
                full.extend(self.take());
            }
        }
        Ok(full)
    }

    /// The rest, as a batch (none if nothing is pending).
    pub fn finish(mut self) -> Option<Batch> {
        self.take()
    }

    fn take(&mut self) -> Option<Batch> {
        if self.last == self.from {
            return None;
        }
        let batch = Batch {
            rows: std::mem::take(&mut self.rows),
            from: self.from,
            to: self.last,
        };
        self.from = self.last;
        Some(batch)
    }
}

/// One transaction of a [`TableProjection`]: `rows` take its checkpoint
/// from `from` to `to`.
pub struct Batch {
    rows: RowOps,
    from: i64,
    to: i64,
}

/// One batch's transaction: moves each `(checkpoint, from)` to `to`, then
/// runs each of `rows` in `schema`, in order.
///
/// The checkpoints move first: that locks their rows, so a rebuild's swap
/// (which holds one) makes this batch wait before touching any table, and
/// each move is refused unless its checkpoint is at its `from`.
///
/// A round trip costs more here than the statements do. A small batch —
/// a live one, a few events — goes as one multi-statement simple query
/// with its values inlined (`BEGIN` ... `COMMIT`: one round trip, measured
/// with `tandem bench pipeline`: the live apply took 5.7 ms a batch as a
/// round trip per statement). A large one (a rebuild's) is bound: `BEGIN`,
/// the settings and the moves in one round trip, then a round trip per
/// statement, then `COMMIT`, where the binary arrays spare Postgres the
/// parsing of megabytes of literals.
pub(crate) async fn commit_batch(
    pool: &PgPool,
    schema: &str,
    moves: &[(&str, i64)],
    to: i64,
    mut rows: Vec<RowOps>,
    inline_up_to: usize,
) -> Result<(), ApplyError> {
    // No wait for the WAL flush: a crash can lose the last batches, but
    // rows and checkpoints together, so they are simply applied again.
    // Only our own names and integers are spliced into this SQL.
    let advances = moves
        .iter()
        .map(|(checkpoint, from)| {
            format!(
                "tandem_advance_projection({}, {from}, {to})",
                quoted(checkpoint)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let begin = format!(
        "BEGIN; SELECT set_config('search_path', {}, true), set_config('synchronous_commit', 'off', true); SELECT {advances}",
        quoted(&format!("{schema}, public")),
    );
    let inlined = if rows.iter().map(RowOps::size).sum::<usize>() <= inline_up_to {
        Some(one_text(
            begin.clone(),
            rows.iter_mut().map(std::mem::take),
        )?)
    } else {
        None
    };
    // By hand, not `Pool::begin_with`: a failed multi-statement `BEGIN`
    // there hands the connection back still inside the aborted block.
    let mut conn = OpenTransaction {
        conn: pool.acquire().await?,
        open: true,
    };
    let applied = match inlined {
        Some(sql) => conn
            .conn
            .execute(sql.as_str())
            .await
            .map(drop)
            .map_err(Into::into),
        None => run_batch(&mut conn.conn, &begin, rows).await,
    };
    if applied.is_ok() || conn.conn.execute("ROLLBACK").await.is_ok() {
        conn.open = false;
    }
    applied
}

/// Batches up to this size (as [`RowOps::size`] estimates it) go inlined
/// in one round trip.
pub(crate) const INLINE_MAX_BYTES: usize = 256 * 1024;

/// `begin`, every statement of `rows` and `COMMIT` as one SQL text.
fn one_text(begin: String, rows: impl Iterator<Item = RowOps>) -> Result<String, ApplyError> {
    let mut sql = begin;
    sql.push_str(";\n");
    for rows in rows {
        rows.render(&mut sql)?;
    }
    sql.push_str("COMMIT");
    Ok(sql)
}

async fn run_batch(
    conn: &mut PgConnection,
    begin: &str,
    rows: Vec<RowOps>,
) -> Result<(), ApplyError> {
    // A query without arguments goes as a simple query: many statements.
    conn.execute(begin).await?;
    for rows in rows {
        rows.execute(&mut *conn).await?;
    }
    conn.execute("COMMIT").await?;
    Ok(())
}

/// A pooled connection that may be inside a transaction: unless its
/// transaction is known to have ended, the connection is closed rather
/// than handed back (a batch that failed past recovery, or whose future
/// was dropped mid-way).
struct OpenTransaction {
    conn: sqlx::pool::PoolConnection<sqlx::Postgres>,
    open: bool,
}

impl Drop for OpenTransaction {
    fn drop(&mut self) {
        if self.open {
            self.conn.close_on_drop();
        }
    }
}

/// `s` as an SQL string literal (standard-conforming strings).
fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

pub async fn read_checkpoint(pool: &PgPool, name: &str) -> Result<i64, sqlx::Error> {
    let position: Option<i64> =
        sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE projection = $1")
            .bind(name)
            .fetch_optional(pool)
            .await?;
    Ok(position.unwrap_or(0))
}

impl crate::consumer::Sink for TableProjection {
    fn name(&self) -> &str {
        self.projector.name()
    }

    async fn checkpoint(&self) -> Result<i64, crate::consumer::BoxError> {
        Ok(TableProjection::checkpoint(self).await?)
    }

    async fn apply(
        &self,
        after: i64,
        events: &[Envelope],
    ) -> Result<i64, crate::consumer::BoxError> {
        Ok(TableProjection::apply(self, after, events).await?)
    }
}
