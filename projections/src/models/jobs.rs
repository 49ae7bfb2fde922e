//! `read.jobs` (status, latest result) and `read.job_attempts`.
//! Statuses follow API.md: an attempt that failed and awaits its retry
//! decision shows as `queued`.

use cqrs_es::Aggregate;
use tandem_domain::envelope::Envelope;
use tandem_domain::job::{Job, JobEvent};
use uuid::Uuid;

use crate::projector::{aggregate_uuid, ProjectionError, Projector};
use crate::rows::{RowOps, Set};
use crate::sql::Lit;

pub struct Jobs;

fn finished_status(exit_code: i32) -> &'static str {
    if exit_code == 0 {
        "succeeded"
    } else {
        "failed"
    }
}

fn to(value: impl Into<Lit>) -> Set {
    Set::To(value.into())
}

fn attempt_key(job: Uuid, attempt: u32) -> Vec<(&'static str, Lit)> {
    vec![
        ("job_id", job.into()),
        ("attempt", Lit::Int(i64::from(attempt))),
    ]
}

impl Projector for Jobs {
    fn name(&self) -> &'static str {
        "jobs"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["jobs", "job_attempts"]
    }

    fn project(&self, event: &Envelope, rows: &mut RowOps) -> Result<(), ProjectionError> {
        if event.aggregatetype != Job::TYPE {
            return Ok(());
        }
        let job = aggregate_uuid(event)?;
        let key = || vec![("job_id", Lit::Uuid(job))];
        let at = Lit::Time(event.time);
        let mut changes = vec![
            ("updated_at", Set::To(at.clone())),
            ("version", Set::To(Lit::Int(event.sequence))),
        ];
        let mut changes_with = |more: Vec<(&'static str, Set)>| {
            changes.extend(more);
            std::mem::take(&mut changes)
        };
        let null_time = || to(Lit::Null("timestamptz"));
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
            } => {
                let none_int = Lit::Null("bigint");
                let none_text = Lit::Null("text");
                rows.insert(
                    "jobs",
                    key(),
                    vec![
                        ("project_id", project_id.as_uuid().into()),
                        ("submitted_by", submitted_by.as_uuid().into()),
                        ("language", language.as_str().into()),
                        ("status", "queued".into()),
                        ("workspace_id", workspace_id.map(|w| w.as_uuid()).into()),
                        ("path", path.into()),
                        (
                            "timeout_ms",
                            Lit::Int(i64::try_from(timeout_ms).unwrap_or(i64::MAX)),
                        ),
                        ("max_attempts", Lit::Int(i64::from(max_attempts))),
                        ("attempts", Lit::Int(0)),
                        ("exit_code", none_int.clone()),
                        ("stdout", none_text.clone()),
                        ("stderr", none_text.clone()),
                        ("duration_ms", none_int),
                        ("truncated", Lit::Null("boolean")),
                        ("reason", none_text),
                        ("retry_at", Lit::Null("timestamptz")),
                        ("submitted_at", at.clone()),
                        ("updated_at", at),
                        ("finished_at", Lit::Null("timestamptz")),
                        ("version", Lit::Int(event.sequence)),
                    ],
                );
            }
            JobEvent::JobAttemptStarted { attempt, worker } => {
                let changes = changes_with(vec![
                    ("status", to("running")),
                    ("attempts", to(i64::from(attempt))),
                    ("retry_at", null_time()),
                ]);
                rows.update("jobs", key(), changes);
                rows.insert(
                    "job_attempts",
                    attempt_key(job, attempt),
                    vec![
                        ("worker", worker.into()),
                        ("status", "running".into()),
                        ("exit_code", Lit::Null("bigint")),
                        ("reason", Lit::Null("text")),
                        ("duration_ms", Lit::Null("bigint")),
                        ("started_at", at),
                        ("finished_at", Lit::Null("timestamptz")),
                    ],
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
                let status = finished_status(exit_code);
                let duration = i64::try_from(duration_ms).unwrap_or(i64::MAX);
                let changes = changes_with(vec![
                    ("status", to(status)),
                    ("exit_code", to(i64::from(exit_code))),
                    ("stdout", to(stdout)),
                    ("stderr", to(stderr)),
                    ("duration_ms", to(duration)),
                    ("truncated", to(truncated)),
                    ("reason", to(Lit::Null("text"))),
                    ("finished_at", to(at.clone())),
                ]);
                rows.update("jobs", key(), changes);
                rows.update(
                    "job_attempts",
                    attempt_key(job, attempt),
                    vec![
                        ("status", to(status)),
                        ("exit_code", to(i64::from(exit_code))),
                        ("duration_ms", to(duration)),
                        ("finished_at", to(at)),
                    ],
                );
            }
            JobEvent::JobLimitExceeded {
                attempt,
                limit,
                stdout,
                stderr,
                duration_ms,
                truncated,
            } => {
                let duration = i64::try_from(duration_ms).unwrap_or(i64::MAX);
                let reason = limit.as_str();
                let changes = changes_with(vec![
                    ("status", to("failed")),
                    ("exit_code", to(Lit::Null("bigint"))),
                    ("stdout", to(stdout)),
                    ("stderr", to(stderr)),
                    ("duration_ms", to(duration)),
                    ("truncated", to(truncated)),
                    ("reason", to(reason)),
                    ("finished_at", to(at.clone())),
                ]);
                rows.update("jobs", key(), changes);
                rows.update(
                    "job_attempts",
                    attempt_key(job, attempt),
                    vec![
                        ("status", to("failed")),
                        ("reason", to(reason)),
                        ("duration_ms", to(duration)),
                        ("finished_at", to(at)),
                    ],
                );
            }
            JobEvent::JobAttemptFailed { attempt, reason } => {
                let changes = changes_with(vec![("status", to("queued")), ("reason", to(&reason))]);
                rows.update("jobs", key(), changes);
                rows.update(
                    "job_attempts",
                    attempt_key(job, attempt),
                    vec![
                        ("status", to("failed")),
                        ("reason", to(reason)),
                        ("finished_at", to(at)),
                    ],
                );
            }
            JobEvent::JobRetryScheduled {
                retry_at,
                next_attempt: _,
            } => {
                let changes =
                    changes_with(vec![("status", to("queued")), ("retry_at", to(retry_at))]);
                rows.update("jobs", key(), changes);
            }
            JobEvent::JobMarkedDead { reason } => {
                let changes = changes_with(vec![
                    ("status", to("dead")),
                    ("reason", to(&reason)),
                    ("retry_at", null_time()),
                    ("finished_at", to(at.clone())),
                ]);
                rows.update("jobs", key(), changes);
                // A job may be declared dead while an attempt runs (a lost
                // worker): that attempt failed, for the same reason.
                rows.statement(
                    "UPDATE job_attempts SET status = 'failed', reason = $3, finished_at = $2
                     WHERE job_id = $1 AND status = 'running'",
                    vec![job.into(), at, reason.into()],
                );
            }
            JobEvent::JobCancelled { by: _ } => {
                let changes = changes_with(vec![
                    ("status", to("cancelled")),
                    ("retry_at", null_time()),
                    ("finished_at", to(at.clone())),
                ]);
                rows.update("jobs", key(), changes);
                // The running attempt, whichever it is, ends with the job.
                rows.statement(
                    "UPDATE job_attempts SET status = 'cancelled', finished_at = $2
                     WHERE job_id = $1 AND status = 'running'",
                    vec![job.into(), at],
                );
            }
            JobEvent::JobRetryRequested { by: _ } => {
                let changes = changes_with(vec![
                    ("status", to("queued")),
                    ("exit_code", to(Lit::Null("bigint"))),
                    ("stdout", to(Lit::Null("text"))),
                    ("stderr", to(Lit::Null("text"))),
                    ("duration_ms", to(Lit::Null("bigint"))),
                    ("truncated", to(Lit::Null("boolean"))),
                    ("reason", to(Lit::Null("text"))),
                    ("finished_at", null_time()),
                ]);
                rows.update("jobs", key(), changes);
            }
        }
        Ok(())
    }
}
