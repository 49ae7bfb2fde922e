//! Given/when/then tests: every job command, accepted and refused, and the
//! state machine's illegal transitions.

use chrono::{TimeZone, Utc};
use cqrs_es::test::TestFramework;

use super::*;
use crate::ids::{JobId, WorkspaceId};
use crate::job::{JobLimit, Language};
use crate::roles::Role;
use crate::testing::FixedDirectory;
use crate::values::FilePath;

type Test = TestFramework<Job>;

struct Scene {
    job: JobId,
    project: ProjectId,
    ws: WorkspaceId,
    writer: UserId,
    viewer: UserId,
    stranger: UserId,
}

impl Scene {
    fn new() -> Self {
        Self {
            job: JobId::generate(),
            project: ProjectId::generate(),
            ws: WorkspaceId::generate(),
            writer: UserId::generate(),
            viewer: UserId::generate(),
            stranger: UserId::generate(),
        }
    }

    fn directory(&self) -> FixedDirectory {
        FixedDirectory::new(self.project)
            .member(self.writer, Role::Collaborator)
            .member(self.viewer, Role::Viewer)
            .workspace(self.ws, true)
            .file(self.ws, "main.py", 3, "print('hi')")
    }

    fn test(&self) -> Test {
        Test::with(self.directory().shared())
    }

    fn submit(&self, actor: UserId, source: JobSource) -> JobCommand {
        JobCommand::Submit {
            job_id: self.job,
            project_id: self.project,
            actor,
            language: Language::Python,
            source,
            stdin: String::new(),
            timeout_ms: 5000,
            max_attempts: 2,
        }
    }

    fn inline(&self, actor: UserId) -> JobCommand {
        self.submit(actor, JobSource::Inline("print(1)".into()))
    }

    fn submitted(&self) -> JobEvent {
        JobEvent::JobSubmitted {
            job_id: self.job,
            project_id: self.project,
            submitted_by: self.writer,
            language: Language::Python,
            source: "print(1)".into(),
            workspace_id: None,
            path: None,
            file_version: None,
            stdin: String::new(),
            timeout_ms: 5000,
            max_attempts: 2,
        }
    }

    fn queued(&self) -> Vec<JobEvent> {
        vec![self.submitted()]
    }

    fn running(&self) -> Vec<JobEvent> {
        vec![self.submitted(), started(1)]
    }

    fn attempt_failed(&self) -> Vec<JobEvent> {
        vec![self.submitted(), started(1), failed_attempt(1)]
    }

    fn exhausted(&self) -> Vec<JobEvent> {
        let mut h = self.attempt_failed();
        h.extend([retry_scheduled(2), started(2), failed_attempt(2)]);
        h
    }

    fn finished(&self, exit_code: i32) -> Vec<JobEvent> {
        let mut h = self.running();
        h.push(completed(1, exit_code));
        h
    }

    fn cancelled(&self) -> Vec<JobEvent> {
        let mut h = self.queued();
        h.push(JobEvent::JobCancelled { by: self.writer });
        h
    }

    fn dead(&self) -> Vec<JobEvent> {
        let mut h = self.exhausted();
        h.push(JobEvent::JobMarkedDead {
            reason: "out of attempts".into(),
        });
        h
    }
}

fn started(attempt: u32) -> JobEvent {
    JobEvent::JobAttemptStarted {
        attempt,
        worker: "w1".into(),
    }
}

fn failed_attempt(attempt: u32) -> JobEvent {
    JobEvent::JobAttemptFailed {
        attempt,
        reason: "worker lost".into(),
    }
}

fn retry_scheduled(next_attempt: u32) -> JobEvent {
    JobEvent::JobRetryScheduled {
        next_attempt,
        retry_at: at(),
    }
}

fn completed(attempt: u32, exit_code: i32) -> JobEvent {
    JobEvent::JobCompleted {
        attempt,
        exit_code,
        stdout: "1\n".into(),
        stderr: String::new(),
        duration_ms: 12,
        truncated: false,
    }
}

fn complete(attempt: u32, exit_code: i32) -> JobCommand {
    JobCommand::Complete {
        attempt,
        exit_code,
        stdout: "1\n".into(),
        stderr: String::new(),
        duration_ms: 12,
        truncated: false,
    }
}

fn at() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

fn invalid(status: JobStatus, action: &'static str) -> JobError {
    JobError::InvalidTransition { status, action }
}

#[test]
fn a_writer_submits_inline_code() {
    let s = Scene::new();
    s.test()
        .given_no_previous_events()
        .when(s.inline(s.writer))
        .then_expect_events(s.queued());
}

#[test]
fn a_workspace_file_is_copied_into_the_job() {
    let s = Scene::new();
    let source = JobSource::Workspace {
        workspace_id: s.ws,
        path: FilePath::parse("main.py").unwrap(),
    };
    s.test()
        .given_no_previous_events()
        .when(s.submit(s.writer, source))
        .then_expect_events(vec![JobEvent::JobSubmitted {
            job_id: s.job,
            project_id: s.project,
            submitted_by: s.writer,
            language: Language::Python,
            source: "print('hi')".into(),
            workspace_id: Some(s.ws),
            path: Some("main.py".into()),
            file_version: Some(3),
            stdin: String::new(),
            timeout_ms: 5000,
            max_attempts: 2,
        }]);
}

#[test]
fn submissions_are_refused_without_write_access_or_source() {
    let s = Scene::new();
    let missing_file = JobSource::Workspace {
        workspace_id: s.ws,
        path: FilePath::parse("nope.py").unwrap(),
    };
    let missing_ws = JobSource::Workspace {
        workspace_id: WorkspaceId::generate(),
        path: FilePath::parse("main.py").unwrap(),
    };
    let cases = [
        (s.inline(s.viewer), JobError::Forbidden),
        (s.inline(s.stranger), JobError::ProjectNotFound),
        (s.submit(s.writer, missing_file), JobError::FileNotFound),
        (s.submit(s.writer, missing_ws), JobError::WorkspaceNotFound),
    ];
    for (command, error) in cases {
        s.test()
            .given_no_previous_events()
            .when(command)
            .then_expect_error(error);
    }
    Test::with(s.directory().archived().shared())
        .given_no_previous_events()
        .when(s.inline(s.writer))
        .then_expect_error(JobError::Archived);
    s.test()
        .given(s.queued())
        .when(s.inline(s.writer))
        .then_expect_error(JobError::AlreadySubmitted);
}

#[test]
fn a_queued_job_starts_its_next_attempt() {
    let s = Scene::new();
    s.test()
        .given(s.queued())
        .when(start_at(at()))
        .then_expect_events(vec![started(1)]);
}

fn start_at(now: chrono::DateTime<Utc>) -> JobCommand {
    JobCommand::StartAttempt {
        worker: "w1".into(),
        now,
    }
}

#[test]
fn a_scheduled_retry_starts_once_it_is_due() {
    let s = Scene::new();
    let mut waiting = s.attempt_failed();
    waiting.push(retry_scheduled(2));
    s.test()
        .given(waiting.clone())
        .when(start_at(at() - chrono::Duration::seconds(1)))
        .then_expect_error(JobError::NotDue { until: at() });
    s.test()
        .given(waiting)
        .when(start_at(at()))
        .then_expect_events(vec![started(2)]);
}

#[test]
fn starts_are_refused_unless_queued() {
    let s = Scene::new();
    s.test()
        .given(s.running())
        .when(start_at(at()))
        .then_expect_error(invalid(JobStatus::Running, "start"));
    s.test()
        .given(s.attempt_failed())
        .when(start_at(at()))
        .then_expect_error(invalid(JobStatus::Queued, "start"));
    s.test()
        .given(s.finished(0))
        .when(start_at(at()))
        .then_expect_error(invalid(JobStatus::Succeeded, "start"));
    s.test()
        .given_no_previous_events()
        .when(start_at(at()))
        .then_expect_error(JobError::NotFound);
}

#[test]
fn a_running_job_completes_with_its_exit_code() {
    let s = Scene::new();
    for code in [0, 3] {
        s.test()
            .given(s.running())
            .when(complete(1, code))
            .then_expect_events(vec![completed(1, code)]);
    }
}

#[test]
fn completion_is_refused_when_cancelled_queued_or_stale() {
    let s = Scene::new();
    let mut cancelled_while_running = s.running();
    cancelled_while_running.push(JobEvent::JobCancelled { by: s.writer });
    s.test()
        .given(cancelled_while_running)
        .when(complete(1, 0))
        .then_expect_error(invalid(JobStatus::Cancelled, "complete"));
    s.test()
        .given(s.queued())
        .when(complete(1, 0))
        .then_expect_error(invalid(JobStatus::Queued, "complete"));
    s.test()
        .given(s.running())
        .when(complete(7, 0))
        .then_expect_error(JobError::StaleAttempt {
            current: Some(1),
            got: 7,
        });
}

#[test]
fn a_running_attempt_fails() {
    let s = Scene::new();
    s.test()
        .given(s.running())
        .when(JobCommand::FailAttempt {
            attempt: 1,
            reason: "worker lost".into(),
        })
        .then_expect_events(vec![failed_attempt(1)]);
}

#[test]
fn failing_an_attempt_needs_a_running_one() {
    let s = Scene::new();
    s.test()
        .given(s.finished(0))
        .when(JobCommand::FailAttempt {
            attempt: 1,
            reason: "late".into(),
        })
        .then_expect_error(invalid(JobStatus::Succeeded, "fail an attempt"));
}

#[test]
fn a_failed_attempt_is_retried_while_attempts_remain() {
    let s = Scene::new();
    s.test()
        .given(s.attempt_failed())
        .when(JobCommand::ScheduleRetry { retry_at: at() })
        .then_expect_events(vec![retry_scheduled(2)]);
}

#[test]
fn retries_are_refused_when_exhausted_or_not_failed() {
    let s = Scene::new();
    s.test()
        .given(s.exhausted())
        .when(JobCommand::ScheduleRetry { retry_at: at() })
        .then_expect_error(JobError::AttemptsExhausted);
    s.test()
        .given(s.running())
        .when(JobCommand::ScheduleRetry { retry_at: at() })
        .then_expect_error(invalid(JobStatus::Running, "schedule a retry"));
}

#[test]
fn an_exhausted_job_is_marked_dead() {
    let s = Scene::new();
    s.test()
        .given(s.exhausted())
        .when(JobCommand::MarkDead {
            reason: "out of attempts".into(),
        })
        .then_expect_events(vec![JobEvent::JobMarkedDead {
            reason: "out of attempts".into(),
        }]);
}

#[test]
fn finished_jobs_cannot_die() {
    let s = Scene::new();
    s.test()
        .given(s.finished(1))
        .when(JobCommand::MarkDead { reason: "x".into() })
        .then_expect_error(invalid(JobStatus::Failed, "be marked dead"));
}

#[test]
fn writers_cancel_unfinished_jobs() {
    let s = Scene::new();
    for history in [s.queued(), s.running(), s.attempt_failed()] {
        s.test()
            .given(history)
            .when(JobCommand::Cancel { actor: s.writer })
            .then_expect_events(vec![JobEvent::JobCancelled { by: s.writer }]);
    }
}

#[test]
fn cancel_is_refused_for_finished_jobs_viewers_and_strangers() {
    let s = Scene::new();
    s.test()
        .given(s.finished(0))
        .when(JobCommand::Cancel { actor: s.writer })
        .then_expect_error(invalid(JobStatus::Succeeded, "be cancelled"));
    s.test()
        .given(s.cancelled())
        .when(JobCommand::Cancel { actor: s.writer })
        .then_expect_error(invalid(JobStatus::Cancelled, "be cancelled"));
    s.test()
        .given(s.queued())
        .when(JobCommand::Cancel { actor: s.viewer })
        .then_expect_error(JobError::Forbidden);
    s.test()
        .given(s.queued())
        .when(JobCommand::Cancel { actor: s.stranger })
        .then_expect_error(JobError::NotFound);
    s.test()
        .given_no_previous_events()
        .when(JobCommand::Cancel { actor: s.writer })
        .then_expect_error(JobError::NotFound);
}

#[test]
fn writers_retry_failed_dead_and_cancelled_jobs() {
    let s = Scene::new();
    for history in [s.finished(1), s.dead(), s.cancelled()] {
        s.test()
            .given(history)
            .when(JobCommand::Retry { actor: s.writer })
            .then_expect_events(vec![JobEvent::JobRetryRequested { by: s.writer }]);
    }
}

#[test]
fn retry_is_refused_for_running_queued_and_succeeded_jobs() {
    let s = Scene::new();
    let cases = [
        (s.running(), JobStatus::Running),
        (s.queued(), JobStatus::Queued),
        (s.finished(0), JobStatus::Succeeded),
    ];
    for (history, status) in cases {
        s.test()
            .given(history)
            .when(JobCommand::Retry { actor: s.writer })
            .then_expect_error(invalid(status, "be retried"));
    }
    Test::with(s.directory().archived().shared())
        .given(s.dead())
        .when(JobCommand::Retry { actor: s.writer })
        .then_expect_error(JobError::Archived);
}

#[test]
fn a_retry_on_request_renews_the_attempt_budget() {
    let s = Scene::new();
    let mut job = Job::default();
    for e in s.dead() {
        job.apply(e);
    }
    assert!(!job.can_retry_attempt());
    job.apply(JobEvent::JobRetryRequested { by: s.writer });
    assert!(job.can_retry_attempt());
    assert_eq!(job.status(), Some(JobStatus::Queued));
    // Attempt numbers keep counting, so old reports stay stale.
    s.test()
        .given(s.dead())
        .and(vec![JobEvent::JobRetryRequested { by: s.writer }])
        .when(start_at(at()))
        .then_expect_events(vec![started(3)]);
}

#[test]
fn backoff_doubles_and_is_capped() {
    assert_eq!(retry_delay(1), Duration::from_secs(1));
    assert_eq!(retry_delay(2), Duration::from_secs(2));
    assert_eq!(retry_delay(4), Duration::from_secs(8));
    assert_eq!(retry_delay(6), Duration::from_secs(32));
    assert_eq!(retry_delay(7), Duration::from_secs(60));
    assert_eq!(retry_delay(40), Duration::from_secs(60));
}

fn limit_exceeded(attempt: u32, limit: JobLimit) -> JobEvent {
    JobEvent::JobLimitExceeded {
        attempt,
        limit,
        stdout: "partial".into(),
        stderr: String::new(),
        duration_ms: 10_000,
        truncated: false,
    }
}

fn terminate(attempt: u32, limit: JobLimit) -> JobCommand {
    JobCommand::Terminate {
        attempt,
        limit,
        stdout: "partial".into(),
        stderr: String::new(),
        duration_ms: 10_000,
        truncated: false,
    }
}

#[test]
fn a_running_job_stopped_at_a_limit_has_failed_for_good() {
    let s = Scene::new();
    for limit in [JobLimit::Timeout, JobLimit::CpuLimit, JobLimit::MemoryLimit] {
        s.test()
            .given(s.running())
            .when(terminate(1, limit))
            .then_expect_events(vec![limit_exceeded(1, limit)]);
    }
    let mut job = Job::default();
    for event in s.running() {
        job.apply(event);
    }
    job.apply(limit_exceeded(1, JobLimit::Timeout));
    assert_eq!(job.status(), Some(JobStatus::Failed));
    assert_eq!(job.claimable(), None, "not retried");
    assert_eq!(JobLimit::Timeout.as_str(), "timeout");
}

#[test]
fn a_limit_report_is_refused_unless_its_attempt_runs() {
    let s = Scene::new();
    s.test()
        .given(s.queued())
        .when(terminate(1, JobLimit::Timeout))
        .then_expect_error(invalid(JobStatus::Queued, "be stopped at a limit"));
    s.test()
        .given(s.running())
        .when(terminate(2, JobLimit::Timeout))
        .then_expect_error(JobError::StaleAttempt {
            current: Some(1),
            got: 2,
        });
    s.test()
        .given(s.cancelled())
        .when(terminate(1, JobLimit::MemoryLimit))
        .then_expect_error(invalid(JobStatus::Cancelled, "be stopped at a limit"));
}

fn state(events: Vec<JobEvent>) -> Job {
    let mut job = Job::default();
    for event in events {
        job.apply(event);
    }
    job
}

#[test]
fn the_next_claimable_attempt_follows_the_state_machine() {
    let s = Scene::new();
    let queued = state(s.queued());
    assert_eq!(
        queued.claimable(),
        Some(Claimable {
            attempt: 1,
            not_before: None
        })
    );
    assert_eq!(
        queued.spec().map(|spec| spec.source.as_str()),
        Some("print(1)")
    );
    let running = state(s.running());
    assert_eq!(running.claimable(), None);
    assert_eq!(running.running(), Some((1, "w1")));
    let failed = state(s.attempt_failed());
    assert!(failed.awaits_retry_decision());
    assert_eq!(failed.claimable(), None, "the decision comes first");
    let mut retrying = s.attempt_failed();
    retrying.push(retry_scheduled(2));
    assert_eq!(
        state(retrying).claimable(),
        Some(Claimable {
            attempt: 2,
            not_before: Some(at())
        })
    );
    let mut requested = s.dead();
    requested.push(JobEvent::JobRetryRequested { by: s.writer });
    assert_eq!(
        state(requested).claimable(),
        Some(Claimable {
            attempt: 3,
            not_before: None
        }),
        "a retry on request starts at once, with the next attempt number"
    );
    assert_eq!(state(s.finished(0)).claimable(), None);
    assert_eq!(state(s.cancelled()).claimable(), None);
}
