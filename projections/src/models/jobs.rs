//! `read.jobs` (status, latest result) and `read.job_attempts`.
//! Statuses follow API.md: an attempt that failed and awaits its retry
//! decision shows as `queued`.

use cqrs_es::Aggregate;
use tandem_domain::envelope::Envelope;
use tandem_domain::job::{Job, JobEvent};

use crate::projector::{aggregate_uuid, ProjectionError, Projector};
use crate::sql::{Lit, SqlBatch};

pub struct Jobs;

fn finished_status(exit_code: i32) -> &'static str {
    if exit_code == 0 {
        "succeeded"
    } else {
        "failed"
    }
}

impl Projector for Jobs {
    fn name(&self) -> &'static str {
        "jobs"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["jobs", "job_attempts"]
    }

    fn project(&self, event: &Envelope, batch: &mut SqlBatch) -> Result<(), ProjectionError> {
        if event.aggregatetype != Job::TYPE {
            return Ok(());
        }
        let job = Lit::Uuid(aggregate_uuid(event)?);
        let at = Lit::Time(event.time);
        let version = Lit::Int(event.sequence);
        match event.decode::<JobEvent>()? {
            JobEvent::JobSubmitted {
                project_id,
                submitted_by,
                language,
                workspace_id,
                path,
                timeout_ms,
                max_attempts,
                job_id: _,
                source: _,
                file_version: _,
                stdin: _,
            } => batch.push(
                "INSERT INTO jobs (job_id, project_id, submitted_by, language, status, workspace_id,
                                   path, timeout_ms, max_attempts, submitted_at, updated_at, version)
                 VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7, $8, $9, $9, $10)",
                &[
                    job,
                    project_id.as_uuid().into(),
                    submitted_by.as_uuid().into(),
                    language.as_str().into(),
                    workspace_id.map(|w| w.as_uuid()).into(),
                    path.as_ref().into(),
                    Lit::Int(i64::try_from(timeout_ms).unwrap_or(i64::MAX)),
                    Lit::Int(i64::from(max_attempts)),
                    at,
                    version,
                ],
            ),
            JobEvent::JobAttemptStarted { attempt, worker } => {
                let attempt = Lit::Int(i64::from(attempt));
                batch.push(
                    "UPDATE jobs SET status = 'running', attempts = $2, retry_at = NULL,
                                     updated_at = $3, version = $4
                     WHERE job_id = $1",
                    &[job.clone(), attempt.clone(), at.clone(), version],
                );
                batch.push(
                    "INSERT INTO job_attempts (job_id, attempt, worker, status, started_at)
                     VALUES ($1, $2, $3, 'running', $4)",
                    &[job, attempt, (&worker).into(), at],
                );
            }
            JobEvent::JobCompleted {
                attempt,
                exit_code,
                stdout,
                stderr,
                duration_ms,
                truncated,
            } => {
                let status = Lit::Text(finished_status(exit_code));
                let exit_code = Lit::Int(i64::from(exit_code));
                let duration = Lit::Int(i64::try_from(duration_ms).unwrap_or(i64::MAX));
                batch.push(
                    "UPDATE jobs SET status = $2, exit_code = $3, stdout = $4, stderr = $5,
                                     duration_ms = $6, truncated = $7, reason = NULL,
                                     finished_at = $8, updated_at = $8, version = $9
                     WHERE job_id = $1",
                    &[
                        job.clone(),
                        status.clone(),
                        exit_code.clone(),
                        (&stdout).into(),
                        (&stderr).into(),
                        duration.clone(),
                        truncated.into(),
                        at.clone(),
                        version,
                    ],
                );
                batch.push(
                    "UPDATE job_attempts SET status = $3, exit_code = $4, duration_ms = $5, finished_at = $6
                     WHERE job_id = $1 AND attempt = $2",
                    &[job, Lit::Int(i64::from(attempt)), status, exit_code, duration, at],
                );
            }
            JobEvent::JobAttemptFailed { attempt, reason } => {
                batch.push(
                    "UPDATE jobs SET status = 'queued', reason = $2, updated_at = $3, version = $4
                     WHERE job_id = $1",
                    &[job.clone(), (&reason).into(), at.clone(), version],
                );
                batch.push(
                    "UPDATE job_attempts SET status = 'failed', reason = $3, finished_at = $4
                     WHERE job_id = $1 AND attempt = $2",
                    &[job, Lit::Int(i64::from(attempt)), (&reason).into(), at],
                );
            }
            JobEvent::JobRetryScheduled {
                retry_at,
                next_attempt: _,
            } => batch.push(
                "UPDATE jobs SET status = 'queued', retry_at = $2, updated_at = $3, version = $4
                 WHERE job_id = $1",
                &[job, retry_at.into(), at, version],
            ),
            JobEvent::JobMarkedDead { reason } => batch.push(
                "UPDATE jobs SET status = 'dead', reason = $2, retry_at = NULL, finished_at = $3,
                                 updated_at = $3, version = $4
                 WHERE job_id = $1",
                &[job, (&reason).into(), at, version],
            ),
            JobEvent::JobCancelled { by: _ } => {
                batch.push(
                    "UPDATE jobs SET status = 'cancelled', retry_at = NULL, finished_at = $2,
                                     updated_at = $2, version = $3
                     WHERE job_id = $1",
                    &[job.clone(), at.clone(), version],
                );
                batch.push(
                    "UPDATE job_attempts SET status = 'cancelled', finished_at = $2
                     WHERE job_id = $1 AND status = 'running'",
                    &[job, at],
                );
            }
            JobEvent::JobRetryRequested { by: _ } => batch.push(
                "UPDATE jobs SET status = 'queued', exit_code = NULL, stdout = NULL, stderr = NULL,
                                 duration_ms = NULL, truncated = NULL, reason = NULL,
                                 finished_at = NULL, updated_at = $2, version = $3
                 WHERE job_id = $1",
                &[job, at, version],
            ),
        }
        Ok(())
    }
}
