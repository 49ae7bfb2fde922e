use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

use super::{JobLimit, Language};
use crate::ids::{JobId, ProjectId, UserId, WorkspaceId};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum JobEvent {
    JobSubmitted {
        job_id: JobId,
        project_id: ProjectId,
        submitted_by: UserId,
        language: Language,
        /// The code itself, copied from the workspace file when it came from one.
        source: String,
        workspace_id: Option<WorkspaceId>,
        path: Option<String>,
        file_version: Option<u64>,
        stdin: String,
        timeout_ms: u64,
        max_attempts: u32,
    },
    JobAttemptStarted {
        attempt: u32,
        worker: String,
    },
    /// The user's code ran to an exit code: 0 is `succeeded`, anything else
    /// `failed` (not retried: it is the code's answer, not an accident).
    JobCompleted {
        attempt: u32,
        exit_code: i32,
        stdout: String,
        stderr: String,
        duration_ms: u64,
        truncated: bool,
    },
    /// The sandbox stopped the code at a limit: `failed`, not retried.
    JobLimitExceeded {
        attempt: u32,
        limit: JobLimit,
        stdout: String,
        stderr: String,
        duration_ms: u64,
        truncated: bool,
    },
    JobAttemptFailed {
        attempt: u32,
        reason: String,
    },
    JobRetryScheduled {
        next_attempt: u32,
        retry_at: DateTime<Utc>,
    },
    JobMarkedDead {
        reason: String,
    },
    JobCancelled {
        by: UserId,
    },
    JobRetryRequested {
        by: UserId,
    },
}

impl DomainEvent for JobEvent {
    fn event_type(&self) -> String {
        match self {
            JobEvent::JobSubmitted { .. } => "JobSubmitted",
            JobEvent::JobAttemptStarted { .. } => "JobAttemptStarted",
            JobEvent::JobCompleted { .. } => "JobCompleted",
            JobEvent::JobLimitExceeded { .. } => "JobLimitExceeded",
            JobEvent::JobAttemptFailed { .. } => "JobAttemptFailed",
            JobEvent::JobRetryScheduled { .. } => "JobRetryScheduled",
            JobEvent::JobMarkedDead { .. } => "JobMarkedDead",
            JobEvent::JobCancelled { .. } => "JobCancelled",
            JobEvent::JobRetryRequested { .. } => "JobRetryRequested",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        crate::EVENT_VERSION.to_owned()
    }
}
