//! [`KeptConnections`]: a few Postgres connections that one busy task keeps
//! between its statements, instead of handing them back to a pool.
//!
//! sqlx tests every connection it gets back (`PoolConnection`'s drop spawns
//! a task that sends `Sync` and waits for `ReadyForQuery`), and the next
//! acquire waits for that round trip. For a batcher with one connection
//! that is a second round trip on the serial path of every batch: traced on
//! the appender's backend under `bench commands`, the ping arrived 0.35 to
//! 1.5 ms after the batch's answer, and the next batch only after it. A
//! kept connection skips the ping; sqlx still drains whatever a dropped or
//! failed statement left unread before it sends the next one.

use std::sync::Mutex;

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};

/// Connections of `pool` (which bounds how many there are and makes them),
/// kept between uses.
pub struct KeptConnections {
    pool: PgPool,
    idle: Mutex<Vec<PoolConnection<Postgres>>>,
}

impl KeptConnections {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// A kept connection, or a new one from the pool; hand it back with
    /// [`give_back`](Self::give_back).
    pub async fn take(&self) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        let kept = self.idle.lock().expect("kept connections lock").pop();
        match kept {
            Some(conn) => Ok(conn),
            None => self.pool.acquire().await,
        }
    }

    /// Keeps `conn` for the next statement, unless `outcome` says the
    /// connection itself failed: then it goes back to the pool, whose test
    /// on release closes it, and the next statement connects anew. A
    /// database's refusal (a constraint violation, say) leaves it usable.
    pub fn give_back<T>(&self, conn: PoolConnection<Postgres>, outcome: &Result<T, sqlx::Error>) {
        let broken = matches!(outcome, Err(e)
            if !matches!(e, sqlx::Error::Database(_)) || crate::db::is_unavailable(e));
        if broken {
            drop(conn);
        } else {
            self.idle.lock().expect("kept connections lock").push(conn);
        }
    }
}
