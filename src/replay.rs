//! `tandem replay [--projection NAME]`: rebuilds read models from the log
//! into fresh tables and swaps them in (see `tandem_projections::rebuild`),
//! with a progress bar on stderr and a report of old vs new.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use sqlx::PgPool;
use tandem_commands::log::{self, LoggedEvent};
use tandem_domain::envelope::Envelope;
use tandem_projections::consumer::BoxError;
use tandem_projections::rebuild::{self, LogSource, Progress, Report};
use tandem_projections::{models, Projector};

/// The sequenced log in Postgres, as envelopes.
pub struct PostgresLog(pub PgPool);

impl LogSource for PostgresLog {
    async fn read(&self, after: i64, limit: i64) -> Result<Vec<Envelope>, BoxError> {
        let events = log::read_after(&self.0, after, limit).await?;
        Ok(events.into_iter().map(LoggedEvent::into_envelope).collect())
    }

    async fn head(&self) -> Result<i64, BoxError> {
        Ok(log::head(&self.0).await?)
    }
}

/// One line on stderr, redrawn: bar, position, rate, ETA.
pub struct ProgressBar;

impl Progress for ProgressBar {
    fn advanced(&self, position: i64, head: i64, elapsed: Duration) {
        const WIDTH: usize = 30;
        let done = if head == 0 {
            1.0
        } else {
            position as f64 / head as f64
        };
        let filled = ((done * WIDTH as f64) as usize).min(WIDTH);
        let rate = position as f64 / elapsed.as_secs_f64().max(1e-3);
        let eta = if rate > 0.0 {
            (head - position) as f64 / rate
        } else {
            0.0
        };
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "\r[{}{}] {:>5.1}%  {position}/{head} events  {:.0} events/s  ETA {:.0}s   ",
            "#".repeat(filled),
            ".".repeat(WIDTH - filled),
            done * 100.0,
            rate,
            eta
        );
        if position >= head {
            let _ = writeln!(err);
        }
        let _ = err.flush();
    }
}

/// The projectors to rebuild: one by name, or all.
pub fn select(name: Option<&str>) -> anyhow::Result<Vec<Arc<dyn Projector>>> {
    match name {
        None => Ok(models::all()),
        Some(name) => match models::by_name(name) {
            Some(p) => Ok(vec![p]),
            None => {
                let known: Vec<&str> = models::all().iter().map(|p| p.name()).collect();
                bail!("no projection {name:?}; known: {}", known.join(", "))
            }
        },
    }
}

pub async fn run(pool: &PgPool, name: Option<&str>) -> anyhow::Result<Vec<Report>> {
    let projectors = select(name)?;
    let reports = rebuild::rebuild(pool, &projectors, &PostgresLog(pool.clone()), &ProgressBar)
        .await
        .map_err(|e| anyhow::anyhow!(e))
        .context("rebuilding")?;
    for report in &reports {
        println!(
            "{}: rebuilt to position {} in {:.1}s",
            report.projection, report.position, report.seconds
        );
        for t in &report.tables {
            println!(
                "  {:<16} rows {:>9} -> {:<9} digest {} -> {}  {}",
                t.table,
                t.old_rows,
                t.new_rows,
                t.old_digest,
                t.new_digest,
                if t.identical() {
                    "identical"
                } else {
                    "CHANGED"
                }
            );
        }
    }
    Ok(reports)
}
