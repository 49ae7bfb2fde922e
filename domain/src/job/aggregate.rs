use std::time::Duration;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

use super::{JobCommand, JobEvent, JobSource, Language};
use crate::ids::{ProjectId, UserId};
use crate::services::{Directory, LookupError, WriteDenied};
use crate::ProjectScoped;

/// The status clients see (API.md). An attempt that failed and awaits its
/// retry decision shows as `queued`: it will run again or become `dead`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Dead,
}

/// Where the job is in its state machine (finer than [`JobStatus`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Phase {
    Queued,
    Running { attempt: u32 },
    AttemptFailed { attempt: u32 },
    Succeeded,
    Failed,
    Cancelled,
    Dead,
}

impl Phase {
    fn status(self) -> JobStatus {
        match self {
            Phase::Queued | Phase::AttemptFailed { .. } => JobStatus::Queued,
            Phase::Running { .. } => JobStatus::Running,
            Phase::Succeeded => JobStatus::Succeeded,
            Phase::Failed => JobStatus::Failed,
            Phase::Cancelled => JobStatus::Cancelled,
            Phase::Dead => JobStatus::Dead,
        }
    }
}

/// What to run: fixed at submission (a workspace file is copied in).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub language: Language,
    pub source: String,
    pub stdin: String,
    pub timeout_ms: u64,
}

/// A queued job's next attempt, as an executor may claim it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claimable {
    pub attempt: u32,
    /// A scheduled retry must not start before this.
    pub not_before: Option<DateTime<Utc>>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Job {
    project_id: Option<ProjectId>,
    phase: Option<Phase>,
    spec: Option<JobSpec>,
    /// Set by a scheduled retry, cleared when an attempt starts.
    not_before: Option<DateTime<Utc>>,
    /// The executor running the current attempt.
    worker: Option<String>,
    max_attempts: u32,
    /// Attempts ever started; the next attempt's number is this + 1.
    attempts_started: u32,
    /// Attempts started since submission or the last retry on request:
    /// what `max_attempts` bounds.
    attempts_in_round: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// No such job, or one in a project the actor can't see.
    #[error("job not found")]
    NotFound,
    /// The project to submit into doesn't exist or the actor isn't a member.
    #[error("project not found")]
    ProjectNotFound,
    #[error("your role in this project does not allow this")]
    Forbidden,
    #[error("the project is archived and read-only")]
    Archived,
    #[error("workspace not found")]
    WorkspaceNotFound,
    #[error("file not found")]
    FileNotFound,
    #[error("job already submitted")]
    AlreadySubmitted,
    #[error("a {status:?} job cannot {action}")]
    InvalidTransition {
        status: JobStatus,
        action: &'static str,
    },
    #[error("report for attempt {got}, but the job is at attempt {current:?}")]
    StaleAttempt { current: Option<u32>, got: u32 },
    #[error("all attempts are used up")]
    AttemptsExhausted,
    /// A scheduled retry claimed before its time.
    #[error("the next attempt is not due before {until}")]
    NotDue { until: DateTime<Utc> },
    #[error(transparent)]
    Lookup(#[from] LookupError),
}

/// Backoff before attempt `n + 1` after `n` failed attempts in a round:
/// 1 s, 2 s, 4 s, ... capped at 60 s. The write side adds jitter.
pub fn retry_delay(failed_attempts: u32) -> Duration {
    let exp = failed_attempts.saturating_sub(1).min(16);
    Duration::from_secs(1u64 << exp).min(Duration::from_secs(60))
}

impl Job {
    pub fn status(&self) -> Option<JobStatus> {
        self.phase.map(Phase::status)
    }

    /// The attempt budget still allows another try.
    pub fn can_retry_attempt(&self) -> bool {
        self.attempts_in_round < self.max_attempts
    }

    pub fn attempts_in_round(&self) -> u32 {
        self.attempts_in_round
    }

    pub fn spec(&self) -> Option<&JobSpec> {
        self.spec.as_ref()
    }

    /// The attempt an executor may start now or later; `None` unless queued.
    pub fn claimable(&self) -> Option<Claimable> {
        (self.phase? == Phase::Queued).then_some(Claimable {
            attempt: self.attempts_started + 1,
            not_before: self.not_before,
        })
    }

    /// The attempt running now and the worker running it.
    pub fn running(&self) -> Option<(u32, &str)> {
        match self.phase? {
            Phase::Running { attempt } => Some((attempt, self.worker.as_deref().unwrap_or(""))),
            _ => None,
        }
    }

    /// An attempt failed and the retry-or-dead decision is still to be made.
    pub fn awaits_retry_decision(&self) -> bool {
        matches!(self.phase, Some(Phase::AttemptFailed { .. }))
    }

    fn phase(&self) -> Result<Phase, JobError> {
        self.phase.ok_or(JobError::NotFound)
    }

    fn invalid(phase: Phase, action: &'static str) -> JobError {
        JobError::InvalidTransition {
            status: phase.status(),
            action,
        }
    }

    /// A user's command on an existing job: the project decides.
    async fn authorize_user(&self, directory: &Directory, actor: UserId) -> Result<(), JobError> {
        let project = self.project_id.ok_or(JobError::NotFound)?;
        Self::require_writer(directory, project, actor, JobError::NotFound).await?;
        Ok(())
    }

    /// `invisible`: the answer for someone who can't see the project.
    async fn require_writer(
        directory: &Directory,
        project: ProjectId,
        actor: UserId,
        invisible: JobError,
    ) -> Result<ProjectId, JobError> {
        let Some(access) = directory.project_access(project, actor).await? else {
            return Err(invisible);
        };
        access.require_write().map_err(|denied| match denied {
            WriteDenied::NotVisible => invisible,
            WriteDenied::ReadOnlyRole => JobError::Forbidden,
            WriteDenied::Archived => JobError::Archived,
        })
    }

    /// Reports name the attempt they are about; anything else is stale.
    fn running_attempt(&self, got: u32, action: &'static str) -> Result<u32, JobError> {
        match self.phase()? {
            Phase::Running { attempt } if attempt == got => Ok(attempt),
            Phase::Running { attempt } => Err(JobError::StaleAttempt {
                current: Some(attempt),
                got,
            }),
            other => Err(Self::invalid(other, action)),
        }
    }

    async fn submit_event(
        &self,
        directory: &Directory,
        command: JobCommand,
    ) -> Result<JobEvent, JobError> {
        let JobCommand::Submit {
            job_id,
            project_id,
            actor,
            language,
            source,
            stdin,
            timeout_ms,
            max_attempts,
        } = command
        else {
            unreachable!("submit_event is only called with Submit");
        };
        if self.phase.is_some() {
            return Err(JobError::AlreadySubmitted);
        }
        Self::require_writer(directory, project_id, actor, JobError::ProjectNotFound).await?;
        let (source, workspace_id, path, file_version) = match source {
            JobSource::Inline(code) => (code, None, None, None),
            JobSource::Workspace { workspace_id, path } => {
                directory
                    .workspace_access(workspace_id, actor)
                    .await?
                    .filter(|w| w.live && w.project.project_id == project_id)
                    .ok_or(JobError::WorkspaceNotFound)?;
                let file = directory
                    .file_snapshot(workspace_id, path.as_str())
                    .await?
                    .ok_or(JobError::FileNotFound)?;
                let path = Some(path.as_str().to_owned());
                (file.content, Some(workspace_id), path, Some(file.version))
            }
        };
        Ok(JobEvent::JobSubmitted {
            job_id,
            project_id,
            submitted_by: actor,
            language,
            source,
            workspace_id,
            path,
            file_version,
            stdin,
            timeout_ms,
            max_attempts,
        })
    }
}

impl Aggregate for Job {
    const TYPE: &'static str = "Job";
    type Command = JobCommand;
    type Event = JobEvent;
    type Error = JobError;
    type Services = Directory;

    async fn handle(
        &mut self,
        command: JobCommand,
        directory: &Directory,
        sink: &EventSink<Self>,
    ) -> Result<(), JobError> {
        let event = match command {
            submit @ JobCommand::Submit { .. } => self.submit_event(directory, submit).await?,
            JobCommand::StartAttempt { worker, now } => {
                let phase = self.phase()?;
                if phase != Phase::Queued {
                    return Err(Self::invalid(phase, "start"));
                }
                if let Some(until) = self.not_before.filter(|due| *due > now) {
                    return Err(JobError::NotDue { until });
                }
                JobEvent::JobAttemptStarted {
                    attempt: self.attempts_started + 1,
                    worker,
                }
            }
            JobCommand::Complete {
                attempt,
                exit_code,
                stdout,
                stderr,
                duration_ms,
                truncated,
            } => {
                let attempt = self.running_attempt(attempt, "complete")?;
                JobEvent::JobCompleted {
                    attempt,
                    exit_code,
                    stdout,
                    stderr,
                    duration_ms,
                    truncated,
                }
            }
            JobCommand::Terminate {
                attempt,
                limit,
                stdout,
                stderr,
                duration_ms,
                truncated,
            } => {
                let attempt = self.running_attempt(attempt, "be stopped at a limit")?;
                JobEvent::JobLimitExceeded {
                    attempt,
                    limit,
                    stdout,
                    stderr,
                    duration_ms,
                    truncated,
                }
            }
            JobCommand::FailAttempt { attempt, reason } => {
                let attempt = self.running_attempt(attempt, "fail an attempt")?;
                JobEvent::JobAttemptFailed { attempt, reason }
            }
            JobCommand::ScheduleRetry { retry_at } => {
                let phase = self.phase()?;
                if !matches!(phase, Phase::AttemptFailed { .. }) {
                    return Err(Self::invalid(phase, "schedule a retry"));
                }
                if !self.can_retry_attempt() {
                    return Err(JobError::AttemptsExhausted);
                }
                JobEvent::JobRetryScheduled {
                    next_attempt: self.attempts_started + 1,
                    retry_at,
                }
            }
            JobCommand::MarkDead { reason } => match self.phase()? {
                Phase::Queued | Phase::Running { .. } | Phase::AttemptFailed { .. } => {
                    JobEvent::JobMarkedDead { reason }
                }
                other @ (Phase::Succeeded | Phase::Failed | Phase::Cancelled | Phase::Dead) => {
                    return Err(Self::invalid(other, "be marked dead"));
                }
            },
            JobCommand::Cancel { actor } => {
                self.authorize_user(directory, actor).await?;
                match self.phase()? {
                    Phase::Queued | Phase::Running { .. } | Phase::AttemptFailed { .. } => {
                        JobEvent::JobCancelled { by: actor }
                    }
                    other @ (Phase::Succeeded | Phase::Failed | Phase::Cancelled | Phase::Dead) => {
                        return Err(Self::invalid(other, "be cancelled"));
                    }
                }
            }
            JobCommand::Retry { actor } => {
                self.authorize_user(directory, actor).await?;
                match self.phase()? {
                    Phase::Failed | Phase::Dead | Phase::Cancelled => {
                        JobEvent::JobRetryRequested { by: actor }
                    }
                    other @ (Phase::Queued
                    | Phase::Running { .. }
                    | Phase::AttemptFailed { .. }
                    | Phase::Succeeded) => return Err(Self::invalid(other, "be retried")),
                }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: JobEvent) {
        match event {
            JobEvent::JobSubmitted {
                project_id,
                max_attempts,
                language,
                source,
                stdin,
                timeout_ms,
                job_id: _,
                submitted_by: _,
                workspace_id: _,
                path: _,
                file_version: _,
            } => {
                self.project_id = Some(project_id);
                self.spec = Some(JobSpec {
                    language,
                    source,
                    stdin,
                    timeout_ms,
                });
                self.max_attempts = max_attempts;
                self.phase = Some(Phase::Queued);
            }
            JobEvent::JobAttemptStarted { attempt, worker } => {
                self.worker = Some(worker);
                self.not_before = None;
                self.attempts_started = attempt;
                self.attempts_in_round += 1;
                self.phase = Some(Phase::Running { attempt });
            }
            JobEvent::JobCompleted {
                exit_code,
                attempt: _,
                stdout: _,
                stderr: _,
                duration_ms: _,
                truncated: _,
            } => {
                self.phase = Some(if exit_code == 0 {
                    Phase::Succeeded
                } else {
                    Phase::Failed
                });
            }
            JobEvent::JobLimitExceeded {
                attempt: _,
                limit: _,
                stdout: _,
                stderr: _,
                duration_ms: _,
                truncated: _,
            } => self.phase = Some(Phase::Failed),
            JobEvent::JobAttemptFailed { attempt, reason: _ } => {
                self.phase = Some(Phase::AttemptFailed { attempt });
            }
            JobEvent::JobRetryScheduled {
                next_attempt: _,
                retry_at,
            } => {
                self.not_before = Some(retry_at);
                self.phase = Some(Phase::Queued);
            }
            JobEvent::JobMarkedDead { reason: _ } => self.phase = Some(Phase::Dead),
            JobEvent::JobCancelled { by: _ } => self.phase = Some(Phase::Cancelled),
            JobEvent::JobRetryRequested { by: _ } => {
                self.not_before = None;
                self.attempts_in_round = 0;
                self.phase = Some(Phase::Queued);
            }
        }
    }
}

impl ProjectScoped for Job {
    fn project_id(&self) -> Option<ProjectId> {
        self.project_id
    }
}

#[cfg(test)]
mod tests;
