//! Jobs end to end: submitted over HTTP, run by a real executor in the real
//! sandbox, reported back into the log, read back over HTTP. Also the
//! machinery around runs: claims, leases, retries, dead jobs, cancel, and
//! an executor killed mid-job.

use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};
use tandem_domain::envelope::BusNames;
use tandem_domain::work::{ClaimRequest, ClaimVerdict};
use tandem_domain::JobId;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(30);

/// An app with an executor of `concurrency` slots in-process.
async fn app_running_jobs(concurrency: usize) -> TestApp {
    spawn_app_with(|o| o.executor = Some(test_executor(concurrency))).await
}

async fn submit(app: &TestApp, user: &User, project: Uuid, body: Value) -> Uuid {
    let r = app
        .as_user(user, Method::POST, &format!("/projects/{project}/jobs"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let accepted = crate::support::body(r).await;
    assert_eq!(accepted["status"], "queued");
    accepted["id"].as_str().unwrap().parse().unwrap()
}

/// `POST /jobs/{id}/<action>` (`cancel`, `retry`), which must be accepted.
async fn act(app: &TestApp, user: &User, id: Uuid, action: &str) {
    let r = app
        .as_user(user, Method::POST, &format!("/jobs/{id}/{action}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{action}");
}

/// A user and a project it owns.
async fn owner_with_project(app: &TestApp) -> (User, Uuid) {
    let owner = app.user().await;
    let project = app.create_project(&owner).await;
    (owner, project)
}

/// The job as the read side has it; `None` until the read side knows it.
async fn job_view(app: &TestApp, user: &User, job: Uuid) -> Option<Value> {
    let r = app
        .as_user(user, Method::GET, &format!("/jobs/{job}"))
        .send()
        .await
        .unwrap();
    if r.status() == 404 {
        return None;
    }
    assert_eq!(r.status(), 200);
    Some(body(r).await)
}

const FINAL: [&str; 4] = ["succeeded", "failed", "cancelled", "dead"];

/// The job once it reached a final status.
async fn finished(app: &TestApp, user: &User, id: Uuid) -> Value {
    eventually(WAIT, || async {
        let j = job_view(app, user, id).await?;
        FINAL
            .contains(&j["status"].as_str().unwrap_or_default())
            .then_some(j)
    })
    .await
}

async fn with_status(app: &TestApp, user: &User, id: Uuid, status: &str) -> Value {
    eventually(WAIT, || async {
        let j = job_view(app, user, id).await?;
        (j["status"] == status).then_some(j)
    })
    .await
}

/// Event types of one job, in order.
async fn job_events(app: &TestApp, id: Uuid) -> Vec<String> {
    app.events_of(&id.to_string())
        .await
        .into_iter()
        .map(|(t, _)| t)
        .collect()
}

fn terminal_events(events: &[String]) -> usize {
    events
        .iter()
        .filter(|e| {
            matches!(
                e.as_str(),
                "JobCompleted" | "JobLimitExceeded" | "JobMarkedDead" | "JobCancelled"
            )
        })
        .count()
}

#[tokio::test]
async fn code_in_each_language_runs_and_its_output_comes_back() {
    let app = app_running_jobs(2).await;
    let (owner, project) = owner_with_project(&app).await;
    let cases = [
        (
            "python",
            "import sys\nprint(sum(range(10)))\nprint('py', file=sys.stderr)",
        ),
        ("javascript", "console.log(6 * 7); console.error('js')"),
        ("bash", "echo $((2 + 3)); echo sh >&2"),
    ];
    let mut ids = Vec::new();
    for (language, source) in cases {
        ids.push(
            submit(
                &app,
                &owner,
                project,
                json!({"language": language, "source": source}),
            )
            .await,
        );
    }
    let expected = [("45\n", "py\n"), ("42\n", "js\n"), ("5\n", "sh\n")];
    for (id, (stdout, stderr)) in ids.into_iter().zip(expected) {
        let j = finished(&app, &owner, id).await;
        assert_eq!(j["status"], "succeeded", "{j}");
        assert_eq!(j["result"]["exit_code"], 0);
        assert_eq!(
            j["result"]["stdout"], stdout,
            "stdout and stderr stay apart: {j}"
        );
        assert_eq!(j["result"]["stderr"], stderr);
        assert_eq!(j["result"]["truncated"], false);
        assert_eq!(j["attempts"].as_array().unwrap().len(), 1);
        assert_eq!(j["attempts"][0]["status"], "succeeded");
        let events = job_events(&app, id).await;
        assert_eq!(
            events,
            ["JobSubmitted", "JobAttemptStarted", "JobCompleted"]
        );
    }
}

#[tokio::test]
async fn stdin_reaches_the_code_and_a_nonzero_exit_is_a_failure_not_retried() {
    let app = app_running_jobs(1).await;
    let (owner, project) = owner_with_project(&app).await;
    let source = "import sys\ndata = sys.stdin.read()\nprint(data.upper(), end='')\nsys.exit(3)";
    let id = submit(
        &app,
        &owner,
        project,
        json!({"language": "python", "source": source, "stdin": "hello\nworld", "max_attempts": 3}),
    )
    .await;
    let j = finished(&app, &owner, id).await;
    assert_eq!(j["status"], "failed");
    assert_eq!(j["result"]["exit_code"], 3);
    assert_eq!(j["result"]["stdout"], "HELLO\nWORLD");
    assert_eq!(
        j["attempts"].as_array().unwrap().len(),
        1,
        "the code's answer is not retried"
    );
}

#[tokio::test]
async fn code_running_past_its_timeout_fails_with_reason_timeout() {
    let app = app_running_jobs(1).await;
    let (owner, project) = owner_with_project(&app).await;
    let id = submit(
        &app,
        &owner,
        project,
        json!({"language": "bash", "source": "echo started; sleep 30", "timeout_ms": 700}),
    )
    .await;
    let j = finished(&app, &owner, id).await;
    assert_eq!(j["status"], "failed", "{j}");
    assert_eq!(j["reason"], "timeout");
    assert_eq!(j["result"]["reason"], "timeout");
    assert_eq!(j["result"]["exit_code"], Value::Null);
    assert_eq!(j["result"]["stdout"], "started\n");
    assert_eq!(
        j["attempts"].as_array().unwrap().len(),
        1,
        "a timeout is not retried"
    );
    assert_eq!(
        job_events(&app, id).await,
        ["JobSubmitted", "JobAttemptStarted", "JobLimitExceeded"]
    );
}

#[tokio::test]
async fn output_beyond_the_limit_is_cut_and_flagged() {
    let app = app_running_jobs(1).await;
    let (owner, project) = owner_with_project(&app).await;
    let id = submit(
        &app,
        &owner,
        project,
        json!({"language": "python", "source": "import sys\nsys.stdout.write('x' * (3 << 20))\nprint('tail', file=sys.stderr)"}),
    )
    .await;
    let j = finished(&app, &owner, id).await;
    assert_eq!(j["status"], "succeeded", "{j:.200}");
    assert_eq!(j["result"]["truncated"], true);
    let stdout = j["result"]["stdout"].as_str().unwrap();
    assert!(
        stdout.len() <= 1 << 20,
        "at most 1 MiB kept, got {}",
        stdout.len()
    );
    assert!(stdout.len() > 64 << 10, "the beginning is kept");
    assert!(stdout.bytes().all(|b| b == b'x'));
    assert_eq!(j["result"]["stderr"], "tail\n");
}

/// An executor whose sandbox cannot start (its launcher is missing): an
/// infrastructure failure on every attempt.
fn broken_executor() -> tandem_executor::ExecutorConfig {
    let mut config = test_executor(1);
    config.sandbox.launcher = vec!["/nonexistent/tandem-launcher".into()];
    config
}

#[tokio::test]
async fn infrastructure_failures_are_retried_with_backoff_then_the_job_is_dead() {
    let app = spawn_app_with(|o| o.executor = Some(broken_executor())).await;
    let (owner, project) = owner_with_project(&app).await;
    let id = submit(
        &app,
        &owner,
        project,
        json!({"language": "python", "source": "print(1)", "max_attempts": 3}),
    )
    .await;
    let j = with_status(&app, &owner, id, "dead").await;
    let attempts = j["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{j}");
    for a in attempts {
        assert_eq!(a["status"], "failed");
        assert!(a["reason"].as_str().unwrap().starts_with("sandbox"), "{a}");
    }
    let events = job_events(&app, id).await;
    assert_eq!(
        events,
        [
            "JobSubmitted",
            "JobAttemptStarted",
            "JobAttemptFailed",
            "JobRetryScheduled",
            "JobAttemptStarted",
            "JobAttemptFailed",
            "JobRetryScheduled",
            "JobAttemptStarted",
            "JobAttemptFailed",
            "JobMarkedDead",
        ]
    );
    // The backoff as recorded: each retry is due at least half its full
    // delay (1 s, then 2 s) after the failure that caused it.
    let rows: Vec<(String, Value, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT event_type, payload, recorded_at FROM events WHERE aggregate_id = $1 ORDER BY sequence",
    )
    .bind(id.to_string())
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let mut failed_at = None;
    let mut delays = Vec::new();
    for (kind, payload, at) in rows {
        match kind.as_str() {
            "JobAttemptFailed" => failed_at = Some(at),
            "JobRetryScheduled" => {
                let due: chrono::DateTime<chrono::Utc> =
                    serde_json::from_value(payload["retry_at"].clone()).unwrap();
                delays.push((due - failed_at.unwrap()).num_milliseconds());
            }
            _ => {}
        }
    }
    assert_eq!(delays.len(), 2);
    assert!(
        (490..=1100).contains(&delays[0]),
        "first backoff in [0.5 s, 1 s]: {delays:?}"
    );
    assert!(
        (990..=2100).contains(&delays[1]),
        "second backoff in [1 s, 2 s]: {delays:?}"
    );
}

#[tokio::test]
async fn a_cancelled_queued_job_never_runs() {
    // No executor yet: the job waits in the queue.
    let app = spawn_app().await;
    let (owner, project) = owner_with_project(&app).await;
    let id = submit(
        &app,
        &owner,
        project,
        json!({"language": "bash", "source": "echo ran"}),
    )
    .await;
    act(&app, &owner, id, "cancel").await;
    let executor = ExtraExecutor::start(&app, 1).await;
    // The executor takes the work item and lets it go without running it.
    queued_items_reach(&app, 0).await;
    executor.stop().await;
    let j = with_status(&app, &owner, id, "cancelled").await;
    assert_eq!(j["attempts"].as_array().unwrap().len(), 0, "never started");
    assert_eq!(job_events(&app, id).await, ["JobSubmitted", "JobCancelled"]);
}

#[tokio::test]
async fn cancelling_a_running_job_stops_its_output_and_ends_it_cancelled() {
    let app = app_running_jobs(1).await;
    let (owner, project) = owner_with_project(&app).await;
    let names = BusNames::new(&app.namespace).unwrap();
    let nats = async_nats::connect(nats_url()).await.unwrap();
    let mut output = nats
        .subscribe(names.live_subject(project, "job_output"))
        .await
        .unwrap();
    let id = submit(
        &app,
        &owner,
        project,
        json!({"language": "bash", "source": "while true; do echo tick; sleep 0.05; done", "timeout_ms": 30000}),
    )
    .await;
    // Live output proves it runs.
    let first = tokio::time::timeout(WAIT, output.next())
        .await
        .unwrap()
        .unwrap();
    let chunk: Value = serde_json::from_slice(&first.payload).unwrap();
    assert_eq!(chunk["job_id"], id.to_string());
    assert!(chunk["chunk"].as_str().unwrap().contains("tick"));
    act(&app, &owner, id, "cancel").await;
    let j = with_status(&app, &owner, id, "cancelled").await;
    assert_eq!(j["attempts"][0]["status"], "cancelled");
    // The process tree is gone: once the executor has let go of the run,
    // no more output arrives.
    eventually(WAIT, || async {
        let text = app.metrics_text().await;
        text.lines()
            .any(|l| l.starts_with("tandem_executor_running ") && l.ends_with(" 0"))
            .then_some(())
    })
    .await;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), output.next()).await {}
    let silence = tokio::time::timeout(Duration::from_millis(800), output.next()).await;
    assert!(silence.is_err(), "output after the run was stopped");
    let events = job_events(&app, id).await;
    assert_eq!(
        events,
        ["JobSubmitted", "JobAttemptStarted", "JobCancelled"]
    );
}

#[tokio::test]
async fn of_many_claims_on_one_attempt_exactly_one_runs() {
    let app = spawn_app().await;
    let (owner, project) = owner_with_project(&app).await;
    let id = submit(
        &app,
        &owner,
        project,
        json!({"language": "bash", "source": "true"}),
    )
    .await;
    let names = BusNames::new(&app.namespace).unwrap();
    let nats = async_nats::connect(nats_url()).await.unwrap();
    let claims = (0..16).map(|i| {
        let nats = nats.clone();
        let subject = names.job_claim_subject();
        async move {
            let request = ClaimRequest {
                job_id: JobId(id),
                worker: format!("racer-{i}"),
                // Half of them with the work item's hint, half without.
                attempt: (i % 2 == 0).then_some(1),
            };
            let reply = nats
                .request(subject, serde_json::to_vec(&request).unwrap().into())
                .await
                .unwrap();
            serde_json::from_slice::<ClaimVerdict>(&reply.payload).unwrap()
        }
    });
    let verdicts = futures::future::join_all(claims).await;
    let runs: Vec<_> = verdicts
        .iter()
        .filter_map(|v| match v {
            ClaimVerdict::Run(a) => Some(a.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(runs.len(), 1, "{verdicts:?}");
    assert_eq!(runs[0].attempt, 1);
    assert_eq!(runs[0].source, "true");
    assert!(verdicts
        .iter()
        .all(|v| !matches!(v, ClaimVerdict::Later { .. })));
    let events = job_events(&app, id).await;
    assert_eq!(events, ["JobSubmitted", "JobAttemptStarted"]);
    let leases: i64 = sqlx::query_scalar("SELECT count(*) FROM job_leases WHERE job_id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(leases, 1, "losers leave no lease behind");
}

#[tokio::test]
async fn two_executors_share_the_queue_and_run_each_attempt_once() {
    let app = app_running_jobs(2).await;
    let second = ExtraExecutor::start(&app, 2).await;
    let (owner, project) = owner_with_project(&app).await;
    let mut ids = Vec::new();
    for i in 0..24 {
        let source = format!("echo job-{i}");
        ids.push(
            submit(
                &app,
                &owner,
                project,
                json!({"language": "bash", "source": source}),
            )
            .await,
        );
    }
    let mut workers = std::collections::HashSet::new();
    for (i, id) in ids.iter().enumerate() {
        let j = finished(&app, &owner, *id).await;
        assert_eq!(j["status"], "succeeded", "{j}");
        assert_eq!(j["result"]["stdout"], format!("job-{i}\n"));
        let attempts = j["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "one run per attempt: {j}");
        workers.insert(attempts[0]["worker"].as_str().unwrap().to_owned());
        assert_eq!(
            job_events(&app, *id).await,
            ["JobSubmitted", "JobAttemptStarted", "JobCompleted"]
        );
    }
    assert!(!workers.is_empty());
    second.stop().await;
}

#[tokio::test]
async fn a_failed_job_retried_on_request_runs_again_with_the_next_attempt() {
    let app = app_running_jobs(1).await;
    let (owner, project) = owner_with_project(&app).await;
    let id = submit(
        &app,
        &owner,
        project,
        json!({"language": "bash", "source": "echo again; exit 1"}),
    )
    .await;
    assert_eq!(finished(&app, &owner, id).await["status"], "failed");
    act(&app, &owner, id, "retry").await;
    let j = eventually(WAIT, || async {
        let j = job_view(&app, &owner, id).await?;
        (j["attempts"].as_array().unwrap().len() == 2 && j["status"] == "failed").then_some(j)
    })
    .await;
    assert_eq!(j["attempts"][1]["attempt"], 2);
    assert_eq!(j["result"]["stdout"], "again\n");
}

/// Waits until the jobs queue holds `n` work items.
async fn queued_items_reach(app: &TestApp, n: u64) {
    let names = BusNames::new(&app.namespace).unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    eventually(WAIT, || async {
        let mut stream = js.get_stream(names.jobs_stream()).await.ok()?;
        (stream.info().await.ok()?.state.messages == n).then_some(())
    })
    .await;
}

/// An executor of its own in this process, on `app`'s namespace, as
/// another `tandem executor` would run.
struct ExtraExecutor {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl ExtraExecutor {
    async fn start(app: &TestApp, concurrency: usize) -> Self {
        let names = BusNames::new(&app.namespace).unwrap();
        let nats = async_nats::connect(nats_url()).await.unwrap();
        let stop = CancellationToken::new();
        let task =
            tandem::stack::spawn_executor(nats, names, test_executor(concurrency), stop.clone())
                .unwrap();
        Self { stop, task }
    }

    /// Stops it the way SIGTERM does, and waits until it has.
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

/// The `tandem executor` binary in its own process, on this app's namespace.
fn executor_process(app: &TestApp) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("executor")
        .env_clear()
        .env("NATS_URL", nats_url())
        .env("TANDEM_NAMESPACE", &app.namespace)
        .env("TANDEM_EXECUTOR_CONCURRENCY", "1")
        .env("TANDEM_EXECUTOR_HEARTBEAT_MS", "200")
        .env("TANDEM_LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("tandem executor starts")
}

/// Processes whose command line contains `marker`.
fn processes_with(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .chars()
                .all(|c| c.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|cmd| {
            String::from_utf8_lossy(cmd)
                .replace('\0', " ")
                .contains(marker)
        })
        .count()
}

#[tokio::test]
async fn an_executor_killed_mid_job_loses_its_attempt_and_another_finishes_the_job() {
    let app =
        spawn_app_with(|o| o.job_desk = Some(quick_leases(Duration::from_millis(1500)))).await;
    let (owner, project) = owner_with_project(&app).await;
    let mut doomed = executor_process(&app);
    // A sleep long enough to be caught running, with a marker to find it.
    let marker = format!("{}.{}", 4, Uuid::new_v4().as_u128() % 1_000_000);
    let source = format!("sleep {marker}; echo finished");
    let id = submit(
        &app,
        &owner,
        project,
        json!({"language": "bash", "source": source}),
    )
    .await;
    with_status(&app, &owner, id, "running").await;
    eventually(WAIT, || async {
        (processes_with(&format!("sleep {marker}")) > 0).then_some(())
    })
    .await;
    doomed.start_kill().unwrap();
    doomed.wait().await.unwrap();
    // Its sandbox dies with it.
    eventually(WAIT, || async {
        (processes_with(&format!("sleep {marker}")) == 0).then_some(())
    })
    .await;
    let rescuer = ExtraExecutor::start(&app, 1).await;
    let j = with_status(&app, &owner, id, "succeeded").await;
    let attempts = j["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{j}");
    assert_eq!(attempts[0]["status"], "failed");
    assert_eq!(attempts[0]["reason"], "worker_lost");
    assert_eq!(attempts[1]["status"], "succeeded");
    assert_ne!(attempts[0]["worker"], attempts[1]["worker"]);
    assert_eq!(j["result"]["stdout"], "finished\n");
    let events = job_events(&app, id).await;
    assert_eq!(
        terminal_events(&events),
        1,
        "exactly one terminal state: {events:?}"
    );
    rescuer.stop().await;
}

#[tokio::test]
async fn an_executor_shutting_down_hands_its_attempt_back_for_a_retry() {
    let app = spawn_app().await;
    let (owner, project) = owner_with_project(&app).await;
    let first = ExtraExecutor::start(&app, 1).await;
    let id = submit(
        &app,
        &owner,
        project,
        json!({"language": "bash", "source": "sleep 1.5; echo done"}),
    )
    .await;
    with_status(&app, &owner, id, "running").await;
    first.stop().await;
    let second = ExtraExecutor::start(&app, 1).await;
    let j = with_status(&app, &owner, id, "succeeded").await;
    let attempts = j["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{j}");
    assert_eq!(attempts[0]["reason"], "executor_shutdown");
    assert_eq!(j["result"]["stdout"], "done\n");
    second.stop().await;
}

#[tokio::test]
async fn the_executors_environment_never_reaches_the_job() {
    // The executor runs in this test process: whatever it has in its
    // environment, a job must not see.
    let app = app_running_jobs(1).await;
    let (owner, project) = owner_with_project(&app).await;
    let secret = std::env::var("DATABASE_URL").unwrap_or_else(|_| database_url());
    let source = "import os\nprint(sorted(os.environ))\nprint(open('/proc/self/environ').read() if os.path.exists('/proc/self/environ') else '')";
    let id = submit(
        &app,
        &owner,
        project,
        json!({"language": "python", "source": source}),
    )
    .await;
    let j = finished(&app, &owner, id).await;
    let out = format!("{}{}", j["result"]["stdout"], j["result"]["stderr"]);
    assert!(!out.contains(&secret), "{out}");
    assert!(!out.contains("DATABASE_URL"), "{out}");
    assert!(!out.contains("NATS_URL"), "{out}");
}

#[tokio::test]
async fn live_output_reaches_websocket_subscribers_of_the_project() {
    let app = app_running_jobs(1).await;
    let (owner, project) = owner_with_project(&app).await;
    let mut ws = tandem::bench::ws_client::WsClient::connect(&app.ws_url(), &owner.access)
        .await
        .unwrap();
    let latest: Option<i64> =
        sqlx::query_scalar("SELECT max(position) FROM event_log WHERE project_id = $1")
            .bind(project)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    ws.subscribe(project, latest).await.unwrap();
    let id = submit(
        &app,
        &owner,
        project,
        json!({"language": "python", "source": "import time\nfor i in range(3):\n    print('line', i)\n    time.sleep(0.1)"}),
    )
    .await;
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !seen.contains("line 2") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "live output seen: {seen:?}"
        );
        let Some(frame) = ws.recv_within(WAIT).await.unwrap() else {
            continue;
        };
        let frame = frame.frame();
        if frame["op"] == "job_output" {
            assert_eq!(frame["job_id"], id.to_string());
            assert_eq!(frame["stream"], "stdout");
            seen.push_str(frame["chunk"].as_str().unwrap());
        }
    }
    assert!(
        seen.contains("line 0") && seen.contains("line 1"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_lost_jobs_queue_is_refilled_from_the_log() {
    // No executor: the jobs wait in the queue, which is then deleted.
    let app = spawn_app().await;
    let (owner, project) = owner_with_project(&app).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let source = format!("echo {i}");
        ids.push(
            submit(
                &app,
                &owner,
                project,
                json!({"language": "bash", "source": source}),
            )
            .await,
        );
    }
    queued_items_reach(&app, 3).await;
    let names = BusNames::new(&app.namespace).unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    js.delete_stream(names.jobs_stream()).await.unwrap();
    let executor = ExtraExecutor::start(&app, 2).await;
    for (i, id) in ids.iter().enumerate() {
        let j = with_status(&app, &owner, *id, "succeeded").await;
        assert_eq!(j["result"]["stdout"], format!("{i}\n"));
        assert_eq!(j["attempts"].as_array().unwrap().len(), 1);
    }
    executor.stop().await;
}

#[tokio::test]
async fn readyz_and_metrics_show_the_job_backlog() {
    // No executor: a submitted job waits as a work item.
    let app = spawn_app().await;
    let (owner, project) = owner_with_project(&app).await;
    submit(
        &app,
        &owner,
        project,
        json!({"language": "bash", "source": "true"}),
    )
    .await;
    let ready = eventually(WAIT, || async {
        let r: Value = app.ops("readyz").await.json().await.ok()?;
        (r["jobs"]["queued_work_items"] == 1).then_some(r)
    })
    .await;
    assert_eq!(ready["jobs"]["running_leases"], 0);
    let text = app.metrics_text().await;
    assert!(
        text.lines().any(|l| l == "tandem_jobs_queued_items 1"),
        "{text}"
    );
}

#[tokio::test]
async fn output_with_nul_bytes_is_recorded_with_replacement_characters() {
    let app = app_running_jobs(1).await;
    let (owner, project) = owner_with_project(&app).await;
    let id = submit(
        &app,
        &owner,
        project,
        json!({"language": "bash", "source": "printf 'a\\0b'"}),
    )
    .await;
    let j = finished(&app, &owner, id).await;
    assert_eq!(j["status"], "succeeded");
    assert_eq!(j["result"]["stdout"], "a\u{fffd}b");
}
