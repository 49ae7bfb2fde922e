//! The desk's decisions, pure over a job's state: whether a claim should
//! try to start an attempt (the aggregate has the last word), and what
//! follows a failed attempt (retry with
//! exponential backoff and jitter, or dead).

use std::time::Duration;

use chrono::{DateTime, Utc};
use tandem_domain::job::{retry_delay, Job, JobCommand};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Start this attempt (then run it).
    Start { attempt: u32 },
    /// A retry that is not due: ask again after this long.
    Later(Duration),
    /// Nothing to run.
    Drop(String),
}

/// `version` 0: the job does not exist.
pub fn claim(job: &Job, version: u64, now: DateTime<Utc>) -> Claim {
    if version == 0 {
        return Claim::Drop("unknown job".into());
    }
    if let Some(next) = job.claimable() {
        return match next.not_before {
            Some(due) if due > now => Claim::Later((due - now).to_std().unwrap_or(Duration::ZERO)),
            _ => Claim::Start {
                attempt: next.attempt,
            },
        };
    }
    match (job.running(), job.status()) {
        (Some((attempt, worker)), _) => {
            Claim::Drop(format!("attempt {attempt} is running on {worker}"))
        }
        (None, Some(status)) => Claim::Drop(format!("the job is {status:?}").to_lowercase()),
        (None, None) => Claim::Drop("unknown job".into()),
    }
}

/// After an attempt failed: another attempt after a backoff while the
/// budget lasts, else dead. `jitter` in `[0, 1]` spreads the retries of
/// many jobs that failed together: the delay is `d/2 + jitter * d/2`.
pub fn after_failure(job: &Job, now: DateTime<Utc>, jitter: f64) -> Option<JobCommand> {
    if !job.awaits_retry_decision() {
        return None;
    }
    if !job.can_retry_attempt() {
        return Some(JobCommand::MarkDead {
            reason: format!("gave up after {} failed attempts", job.attempts_in_round()),
        });
    }
    let full = retry_delay(job.attempts_in_round());
    let delay = full / 2 + full.mul_f64(jitter.clamp(0.0, 1.0) / 2.0);
    let delay = chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
    Some(JobCommand::ScheduleRetry {
        retry_at: now + delay,
    })
}

#[cfg(test)]
mod tests {
    use cqrs_es::Aggregate;
    use tandem_domain::job::{JobEvent, Language};
    use tandem_domain::{JobId, ProjectId, UserId};

    use super::*;

    fn job(events: Vec<JobEvent>) -> Job {
        let mut job = Job::default();
        for e in events {
            job.apply(e);
        }
        job
    }

    fn submitted(max_attempts: u32) -> JobEvent {
        JobEvent::JobSubmitted {
            job_id: JobId::generate(),
            project_id: ProjectId::generate(),
            submitted_by: UserId::generate(),
            language: Language::Bash,
            source: "true".into(),
            workspace_id: None,
            path: None,
            file_version: None,
            stdin: String::new(),
            timeout_ms: 1000,
            max_attempts,
        }
    }

    fn started(attempt: u32) -> JobEvent {
        JobEvent::JobAttemptStarted {
            attempt,
            worker: "w".into(),
        }
    }

    fn failed(attempt: u32) -> JobEvent {
        JobEvent::JobAttemptFailed {
            attempt,
            reason: "sandbox".into(),
        }
    }

    #[test]
    fn a_queued_job_is_started_and_a_retry_waits_until_due() {
        let now = Utc::now();
        assert_eq!(
            claim(&job(vec![submitted(3)]), 1, now),
            Claim::Start { attempt: 1 }
        );
        let retry = JobEvent::JobRetryScheduled {
            next_attempt: 2,
            retry_at: now + chrono::Duration::seconds(4),
        };
        let waiting = job(vec![submitted(3), started(1), failed(1), retry]);
        assert_eq!(
            claim(&waiting, 4, now),
            Claim::Later(Duration::from_secs(4))
        );
        let later = now + chrono::Duration::seconds(5);
        assert_eq!(claim(&waiting, 4, later), Claim::Start { attempt: 2 });
    }

    #[test]
    fn running_finished_and_unknown_jobs_are_not_claimed() {
        let now = Utc::now();
        assert!(matches!(claim(&Job::default(), 0, now), Claim::Drop(_)));
        let running = job(vec![submitted(3), started(1)]);
        assert!(matches!(claim(&running, 2, now), Claim::Drop(r) if r.contains("running")));
        let awaiting = job(vec![submitted(3), started(1), failed(1)]);
        assert!(matches!(claim(&awaiting, 3, now), Claim::Drop(_)));
    }

    #[test]
    fn failures_back_off_exponentially_with_jitter_then_the_job_dies() {
        let now = Utc::now();
        let once = job(vec![submitted(3), started(1), failed(1)]);
        let at = |jitter| match after_failure(&once, now, jitter) {
            Some(JobCommand::ScheduleRetry { retry_at }) => retry_at - now,
            other => panic!("expected a retry, got {other:?}"),
        };
        assert_eq!(at(0.0), chrono::Duration::milliseconds(500));
        assert_eq!(at(1.0), chrono::Duration::seconds(1));
        let twice = job(vec![
            submitted(3),
            started(1),
            failed(1),
            JobEvent::JobRetryScheduled {
                next_attempt: 2,
                retry_at: now,
            },
            started(2),
            failed(2),
        ]);
        match after_failure(&twice, now, 1.0) {
            Some(JobCommand::ScheduleRetry { retry_at }) => {
                assert_eq!(retry_at - now, chrono::Duration::seconds(2))
            }
            other => panic!("expected a retry, got {other:?}"),
        }
        let exhausted = job(vec![submitted(1), started(1), failed(1)]);
        assert!(matches!(
            after_failure(&exhausted, now, 0.5),
            Some(JobCommand::MarkDead { .. })
        ));
        assert_eq!(after_failure(&job(vec![submitted(1)]), now, 0.5), None);
    }
}
