//! Leases on running attempts (`job_leases`). A claim takes one before it
//! starts the attempt, so a started attempt always has a lease however the
//! claim ends; a lease whose attempt never started is simply dropped by the
//! reaper. Heartbeats renew a worker's leases; reports end them.
//!
//! None of these waits for the WAL flush: a lease taken is made durable by
//! the claim's own commit right after it (the WAL is one sequence), and a
//! renewal or release lost in a crash only makes the reaper look at an
//! attempt once more.

use std::time::Duration;

use sqlx::PgPool;
use tandem_domain::work::RunningAttempt;
use tandem_domain::JobId;
use uuid::Uuid;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub job_id: JobId,
    pub attempt: u32,
    pub worker: String,
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub async fn take(pool: &PgPool, lease: &Lease, ttl: Duration) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH fast AS (SELECT set_config('synchronous_commit', 'off', true))
         INSERT INTO job_leases (job_id, attempt, worker, expires_at)
         SELECT $1, $2, $3, now() + $4 * interval '1 millisecond' FROM fast
         ON CONFLICT (job_id, attempt, worker) DO UPDATE SET expires_at = EXCLUDED.expires_at",
    )
    .bind(lease.job_id.0)
    .bind(lease.attempt as i32)
    .bind(&lease.worker)
    .bind(millis(ttl))
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn release(pool: &PgPool, lease: &Lease) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH fast AS (SELECT set_config('synchronous_commit', 'off', true))
         DELETE FROM job_leases WHERE job_id = $1 AND attempt = $2 AND worker = $3
           AND EXISTS (SELECT 1 FROM fast)",
    )
    .bind(lease.job_id.0)
    .bind(lease.attempt as i32)
    .bind(&lease.worker)
    .execute(pool)
    .await?;
    Ok(())
}

/// Ends every lease on `attempt` of `job`, whoever holds it (its report
/// arrived: the attempt is over).
pub async fn release_attempt(pool: &PgPool, job: JobId, attempt: u32) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH fast AS (SELECT set_config('synchronous_commit', 'off', true))
         DELETE FROM job_leases WHERE job_id = $1 AND attempt = $2 AND EXISTS (SELECT 1 FROM fast)",
    )
    .bind(job.0)
    .bind(attempt as i32)
    .execute(pool)
    .await?;
    Ok(())
}

/// Renews `worker`'s leases on the attempts it says it runs.
pub async fn renew(
    pool: &PgPool,
    worker: &str,
    running: &[RunningAttempt],
    ttl: Duration,
) -> Result<u64, sqlx::Error> {
    let jobs: Vec<Uuid> = running.iter().map(|r| r.job_id.0).collect();
    let attempts: Vec<i32> = running.iter().map(|r| r.attempt as i32).collect();
    let done = sqlx::query(
        "WITH fast AS (SELECT set_config('synchronous_commit', 'off', true))
         UPDATE job_leases l SET expires_at = now() + $4 * interval '1 millisecond'
         FROM unnest($2::uuid[], $3::int[]) AS r(job_id, attempt), fast
         WHERE l.worker = $1 AND l.job_id = r.job_id AND l.attempt = r.attempt",
    )
    .bind(worker)
    .bind(&jobs)
    .bind(&attempts)
    .bind(millis(ttl))
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Leases past their expiry, oldest first.
pub async fn expired(pool: &PgPool, limit: i64) -> Result<Vec<Lease>, sqlx::Error> {
    let rows: Vec<(Uuid, i32, String)> = sqlx::query_as(
        "SELECT job_id, attempt, worker FROM job_leases
         WHERE expires_at < now() ORDER BY expires_at LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(job, attempt, worker)| Lease {
            job_id: JobId(job),
            attempt: attempt as u32,
            worker,
        })
        .collect())
}
