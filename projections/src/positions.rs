//! [`ReadPositions`]: how far the read side has applied the log, for
//! `?min_position=` (read-your-writes) and for `/readyz` lag.
//!
//! The read side is at position `p` when every Postgres projection's
//! checkpoint is at least `p`: a query may join several read models (files
//! with memberships), so waiting on all of them is what makes "I see my
//! write" true for any query. Checkpoint changes arrive by `NOTIFY
//! tandem_projected` (sent at commit by a trigger), through the process's
//! shared listener ([`Heard`]); a poll covers lost notifications and
//! listener reconnects.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use sqlx::PgPool;
use tokio::sync::watch;

/// `tandem_projected` as heard: a payload, or `None` when some may have
/// been missed (the checkpoints are read again). The stream ends with the
/// process.
pub type Heard = BoxStream<'static, Option<Arc<str>>>;

pub const PROJECTED_CHANNEL: &str = "tandem_projected";

const POLL: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct ReadPositions {
    /// The minimum over `required` projections.
    read_side: watch::Receiver<i64>,
    by_projection: Arc<std::sync::Mutex<BTreeMap<String, i64>>>,
}

impl ReadPositions {
    /// Spawns the follower on `heard` (`tandem_projected`, from the
    /// process's shared listener); `required` are the projections queries
    /// read.
    pub fn hearing(pool: PgPool, required: Vec<String>, mut heard: Heard) -> Self {
        let (tx, read_side) = watch::channel(0);
        let by_projection = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
        let shared = by_projection.clone();
        let update = move |name: String, position: i64| {
            let min = {
                let mut map = shared.lock().expect("positions lock");
                let entry = map.entry(name).or_insert(0);
                *entry = (*entry).max(position);
                required
                    .iter()
                    .map(|r| map.get(r).copied().unwrap_or(0))
                    .min()
                    .unwrap_or(0)
            };
            tx.send_if_modified(|current| {
                let changed = *current != min;
                *current = min;
                changed
            });
        };
        tokio::spawn(async move {
            loop {
                match poll(&pool).await {
                    Ok(rows) => rows.into_iter().for_each(|(n, p)| update(n, p)),
                    Err(sqlx::Error::PoolClosed) => return,
                    Err(e) => tracing::warn!(error = %e, "reading projection checkpoints"),
                }
                let deadline = tokio::time::sleep(POLL);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        n = heard.next() => match n {
                            Some(Some(payload)) => {
                                if let Some((name, position)) = payload.split_once(' ') {
                                    if let Ok(position) = position.parse() {
                                        update(name.to_owned(), position);
                                    }
                                }
                            }
                            // Some may have gone by: read them all again.
                            Some(None) => break,
                            None => return,
                        },
                        () = &mut deadline => break,
                    }
                }
            }
        });
        Self {
            read_side,
            by_projection,
        }
    }

    /// The position every required projection has applied.
    pub fn current(&self) -> i64 {
        *self.read_side.borrow()
    }

    /// Each projection's checkpoint as last heard.
    pub fn by_projection(&self) -> BTreeMap<String, i64> {
        self.by_projection.lock().expect("positions lock").clone()
    }

    /// Whether the read side reached `position` within `timeout`.
    pub async fn wait_for(&self, position: i64, timeout: Duration) -> bool {
        let mut rx = self.read_side.clone();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|p| *p >= position)).await;
        matches!(reached, Ok(Ok(_)))
    }

    /// A receiver that changes whenever the read side advances.
    pub fn watch(&self) -> watch::Receiver<i64> {
        self.read_side.clone()
    }
}

async fn poll(pool: &PgPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT projection, position FROM projection_checkpoints")
        .fetch_all(pool)
        .await
}
