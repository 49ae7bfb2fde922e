//! [`ReadModels`]: the live Postgres projections applied together, one
//! transaction per batch for all of them.
//!
//! Each projection keeps its own checkpoint, so its tables can still be
//! rebuilt and swapped alone (`tandem replay --projection`) and `/readyz`
//! still reports each one's lag. One consumer feeds them all: a batch is
//! delivered and decoded once, and every checkpoint moves in one
//! transaction with one commit and one wake-up of the `NOTIFY` listeners,
//! where a consumer per projection paid each of those once per projection.
//!
//! A projection whose checkpoint is ahead of the others (a rebuild swapped
//! it in at the head) skips the events it has; the set's checkpoint is the
//! lowest of them.

use std::sync::{Arc, Mutex};

use sqlx::PgPool;
use tandem_domain::envelope::Envelope;

use crate::consumer::{BoxError, Sink};
use crate::projector::Projector;
use crate::rows::RowOps;
use crate::tables::{commit_batch, ApplyError, INLINE_MAX_BYTES, LIVE_SCHEMA, MAX_SQL_BYTES};

pub struct ReadModels {
    pool: PgPool,
    projectors: Vec<Arc<dyn Projector>>,
    /// Each projection's checkpoint as last read or moved here, in
    /// `projectors` order; `None` until read, and again after a failure,
    /// when only the database knows.
    known: Mutex<Option<Vec<i64>>>,
}

impl ReadModels {
    /// The consumer's name (and its leader lock's).
    pub const NAME: &'static str = "read-models";

    /// `projectors` in schema `read`, under their own checkpoints.
    pub fn live(pool: PgPool, projectors: Vec<Arc<dyn Projector>>) -> Self {
        assert!(!projectors.is_empty(), "a set of no read models");
        Self {
            pool,
            projectors,
            known: Mutex::new(None),
        }
    }

    /// Each projection's checkpoint, in `projectors` order (0 before its
    /// first batch).
    pub async fn checkpoints(&self) -> Result<Vec<i64>, sqlx::Error> {
        let names: Vec<&str> = self.projectors.iter().map(|p| p.name()).collect();
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT projection, position FROM projection_checkpoints WHERE projection = ANY($1)",
        )
        .bind(&names)
        .fetch_all(&self.pool)
        .await?;
        Ok(names
            .iter()
            .map(|name| {
                rows.iter()
                    .find(|(projection, _)| projection == name)
                    .map_or(0, |(_, position)| *position)
            })
            .collect())
    }

    fn remember(&self, checkpoints: Option<Vec<i64>>) {
        *self.known.lock().expect("read models lock") = checkpoints;
    }

    /// Applies `events` (consecutive positions) to every projection that
    /// has not applied them, on top of `after` (the set's checkpoint).
    /// Returns the set's new checkpoint.
    pub async fn apply(&self, after: i64, events: &[Envelope]) -> Result<i64, ApplyError> {
        let known = self.known.lock().expect("read models lock").take();
        let mut at = match known {
            Some(known) => known,
            None => self.checkpoints().await?,
        };
        // The caller vouches for `after`: nobody is behind it.
        for position in &mut at {
            *position = (*position).max(after);
        }
        // A fold per projection, as each would have alone: one projection's
        // many-row statement must not cut another's folds short.
        let mut rows: Vec<RowOps> = self.projectors.iter().map(|_| RowOps::new()).collect();
        let mut last = after;
        for event in events {
            for ((projector, applied), rows) in self.projectors.iter().zip(&at).zip(&mut rows) {
                if event.position > *applied {
                    projector.project(event, rows)?;
                }
            }
            last = last.max(event.position);
            if rows.iter().map(RowOps::size).sum::<usize>() >= MAX_SQL_BYTES {
                let full = rows.iter_mut().map(std::mem::take).collect();
                self.commit(full, &mut at, last).await?;
            }
        }
        self.commit(rows, &mut at, last).await?;
        self.remember(Some(at));
        Ok(last)
    }

    /// Moves every checkpoint below `to` there, with `rows`, in one
    /// transaction; on success `at` says so.
    async fn commit(&self, rows: Vec<RowOps>, at: &mut [i64], to: i64) -> Result<(), ApplyError> {
        let moves: Vec<(&str, i64)> = self
            .projectors
            .iter()
            .zip(at.iter())
            .filter(|(_, from)| **from < to)
            .map(|(projector, from)| (projector.name(), *from))
            .collect();
        if moves.is_empty() {
            return Ok(());
        }
        commit_batch(&self.pool, LIVE_SCHEMA, &moves, to, rows, INLINE_MAX_BYTES).await?;
        for position in at.iter_mut() {
            *position = (*position).max(to);
        }
        Ok(())
    }
}

impl Sink for ReadModels {
    fn name(&self) -> &str {
        Self::NAME
    }

    async fn checkpoint(&self) -> Result<i64, BoxError> {
        let checkpoints = self.checkpoints().await?;
        let lowest = checkpoints.iter().copied().min().unwrap_or(0);
        self.remember(Some(checkpoints));
        Ok(lowest)
    }

    async fn apply(&self, after: i64, events: &[Envelope]) -> Result<i64, BoxError> {
        Ok(ReadModels::apply(self, after, events).await?)
    }

    /// Each projection had a consumer of its own before they were applied
    /// together.
    fn replaces(&self) -> Vec<String> {
        self.projectors
            .iter()
            .map(|p| p.name().to_owned())
            .collect()
    }
}
