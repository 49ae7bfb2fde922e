use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{JobId, ProjectId, UserId, WorkspaceId};
use crate::values::FilePath;

/// The interpreters the executor offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Language {
    Python,
    Javascript,
    Bash,
}

impl Language {
    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Javascript => "javascript",
            Language::Bash => "bash",
        }
    }
}

/// The limit a run was stopped at. Stored as `timeout`, `cpu_limit`,
/// `memory_limit`: also the job's `reason` in the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobLimit {
    /// Wall time.
    Timeout,
    CpuLimit,
    MemoryLimit,
}

impl JobLimit {
    pub fn as_str(self) -> &'static str {
        match self {
            JobLimit::Timeout => "timeout",
            JobLimit::CpuLimit => "cpu_limit",
            JobLimit::MemoryLimit => "memory_limit",
        }
    }
}

/// Where the code to run comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum JobSource {
    Inline(String),
    /// A file as it is at submission time; its content is copied into the
    /// job's event so the run is reproducible whatever happens to the file.
    Workspace {
        workspace_id: WorkspaceId,
        path: FilePath,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum JobCommand {
    Submit {
        job_id: JobId,
        project_id: ProjectId,
        actor: UserId,
        language: Language,
        source: JobSource,
        stdin: String,
        timeout_ms: u64,
        max_attempts: u32,
    },
    /// An executor claims the next attempt at `now`: started if the job is
    /// queued and a scheduled retry is due.
    StartAttempt {
        worker: String,
        now: DateTime<Utc>,
    },
    Complete {
        attempt: u32,
        exit_code: i32,
        stdout: String,
        stderr: String,
        duration_ms: u64,
        truncated: bool,
    },
    /// The sandbox stopped the user's code at one of its limits: a
    /// `failed` result, not retried (the code would hit it again).
    Terminate {
        attempt: u32,
        limit: JobLimit,
        stdout: String,
        stderr: String,
        duration_ms: u64,
        truncated: bool,
    },
    /// The attempt died for a reason that is not the user's code (lost
    /// worker, sandbox crash, infrastructure error).
    FailAttempt {
        attempt: u32,
        reason: String,
    },
    ScheduleRetry {
        retry_at: DateTime<Utc>,
    },
    MarkDead {
        reason: String,
    },
    Cancel {
        actor: UserId,
    },
    Retry {
        actor: UserId,
    },
}
