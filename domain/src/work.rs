//! What travels between the write side and executors about running jobs.
//!
//! An executor holds no database credentials, so everything it learns and
//! says goes over NATS, in these shapes:
//!
//! - [`WorkItem`] on the work-queue stream (`<NS>_JOBS`, subject
//!   `<ns>.jobs.work.<job_id>`): "this job became runnable at position
//!   `p`". Published by the relay from the log; `Nats-Msg-Id` is the
//!   position, so a republished item is a duplicate, not a second item.
//! - [`ClaimRequest`] → [`ClaimVerdict`] (core request/reply on
//!   `<ns>.jobs.claim`): the write side starts the attempt in the log
//!   (`JobAttemptStarted`, optimistic concurrency per job) before the
//!   executor runs anything, so two executors never run the same attempt.
//! - [`Heartbeat`] (core, `<ns>.jobs.heartbeat`): the attempts a worker is
//!   running; a lease not renewed in time fails the attempt (lost worker).
//! - [`Report`] on the reports stream (`<NS>_JOB_REPORTS`, subject
//!   `<ns>.jobs.reports.<job_id>`): how an attempt ended. Durable before
//!   the executor lets go of its work item; the write side turns each into
//!   a command.

use serde::{Deserialize, Serialize};

use crate::ids::{JobId, ProjectId};
use crate::job::{JobLimit, Language};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkItem {
    pub job_id: JobId,
    pub project_id: Option<ProjectId>,
    /// The log position of the event that made the job runnable.
    pub position: i64,
    /// The attempt that event makes next, when it says (hints: the claim
    /// decides on the job's state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// A scheduled retry's due time: the executor asks no earlier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRequest {
    pub job_id: JobId,
    /// Stable for the executor process (`<host>/<pid>/<random>`).
    pub worker: String,
    /// The work item's attempt hint, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum ClaimVerdict {
    /// The attempt is started in the log: run it.
    Run(Assignment),
    /// A scheduled retry that is not due yet: ask again after this long.
    Later { after_ms: u64 },
    /// Nothing to run (finished, cancelled, running elsewhere, unknown).
    Drop { reason: String },
}

/// Everything an executor needs to run one attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub job_id: JobId,
    pub project_id: ProjectId,
    pub attempt: u32,
    pub language: Language,
    pub source: String,
    pub stdin: String,
    pub timeout_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub worker: String,
    pub running: Vec<RunningAttempt>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningAttempt {
    pub job_id: JobId,
    pub attempt: u32,
}

/// Output of a run as reported (each stream capped by the executor).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOutput {
    pub stdout: String,
    pub stderr: String,
    pub duration_ms: u64,
    pub truncated: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Report {
    /// The code ran to an exit status (128 + n when killed by signal n).
    Finished {
        job_id: JobId,
        attempt: u32,
        exit_code: i32,
        #[serde(flatten)]
        output: RunOutput,
    },
    /// The sandbox stopped it at a limit.
    LimitExceeded {
        job_id: JobId,
        attempt: u32,
        limit: JobLimit,
        #[serde(flatten)]
        output: RunOutput,
    },
    /// Not the code's doing (sandbox setup, executor shutdown, cancel):
    /// the attempt failed and may be retried.
    AttemptFailed {
        job_id: JobId,
        attempt: u32,
        reason: String,
    },
}

impl Report {
    pub fn job_id(&self) -> JobId {
        match self {
            Report::Finished { job_id, .. }
            | Report::LimitExceeded { job_id, .. }
            | Report::AttemptFailed { job_id, .. } => *job_id,
        }
    }

    pub fn attempt(&self) -> u32 {
        match self {
            Report::Finished { attempt, .. }
            | Report::LimitExceeded { attempt, .. }
            | Report::AttemptFailed { attempt, .. } => *attempt,
        }
    }

    /// De-duplication id: one report per attempt.
    pub fn message_id(&self) -> String {
        format!("{}/{}", self.job_id(), self.attempt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_travel_as_tagged_json() {
        let job = JobId::generate();
        let report = Report::LimitExceeded {
            job_id: job,
            attempt: 2,
            limit: JobLimit::Timeout,
            output: RunOutput {
                stdout: "a".into(),
                stderr: String::new(),
                duration_ms: 10,
                truncated: false,
            },
        };
        let wire = serde_json::to_value(&report).unwrap();
        assert_eq!(wire["outcome"], "limit_exceeded");
        assert_eq!(wire["limit"], "timeout");
        assert_eq!(wire["stdout"], "a");
        assert_eq!(serde_json::from_value::<Report>(wire).unwrap(), report);
        assert_eq!(report.message_id(), format!("{job}/2"));
        let verdict = ClaimVerdict::Later { after_ms: 5 };
        let wire = serde_json::to_value(&verdict).unwrap();
        assert_eq!(wire["verdict"], "later");
        assert_eq!(
            serde_json::from_value::<ClaimVerdict>(wire).unwrap(),
            verdict
        );
    }
}
