//! [`Executor`]: takes runnable jobs off the work queue, claims each
//! attempt from the write side, runs it in the [`Sandbox`], streams its
//! output live and reports how it ended.
//!
//! The executor talks only NATS:
//! - work items from the jobs work-queue stream, through one durable pull
//!   consumer shared by every executor; it asks for as many items as it
//!   has free slots, so nothing waits in its buffer while a lease ticks;
//! - a claim (core request/reply) before running anything: only an
//!   attempt the write side has started in the log is run, so two
//!   executors never run the same attempt, and a cancelled or finished job
//!   never runs;
//! - heartbeats naming the attempts it runs (their leases);
//! - live output chunks on core NATS (`<ns>.live.<project>.job_output`);
//! - the report on the reports stream, acknowledged by JetStream (durable)
//!   before the executor forgets the run;
//! - job events from the log (cancelled, dead, attempt failed) stop a
//!   running attempt within moments.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use tandem_domain::envelope::{BusNames, Envelope};
use tandem_domain::job::{JobEvent, JobLimit};
use tandem_domain::live::{self, JobOutputChunk, OutputStream};
use tandem_domain::work::{
    Assignment, ClaimRequest, ClaimVerdict, Heartbeat, Report, RunOutput, RunningAttempt, WorkItem,
};
use tandem_domain::JobId;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::report::fit_report;
use crate::sandbox::{Finish, Limits, Outcome, RunRequest, Sandbox, SandboxConfig, SandboxError};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone, Debug)]
pub struct ExecutorConfig {
    /// Jobs run at once by this process.
    pub concurrency: usize,
    /// Attempts claimed beyond the free slots, so a slot that frees up
    /// starts the next run at once instead of waiting for a fetch and a
    /// claim (a round trip and a commit). Such an attempt shows as running
    /// from its claim; its `duration_ms` counts from its start.
    pub claim_ahead: usize,
    /// How often the attempts this executor runs are declared alive; the
    /// write side's lease TTL must be several times this.
    pub heartbeat_interval: Duration,
    /// How long the write side has to answer a claim.
    pub claim_timeout: Duration,
    /// How long an unclaimed work item stays with one executor before
    /// JetStream offers it to another.
    pub ack_wait: Duration,
    pub sandbox: SandboxConfig,
    /// Shown in each attempt's `worker`; default `<host>/<pid>/<random>`.
    pub worker: Option<String>,
}

impl ExecutorConfig {
    pub fn new(sandbox: SandboxConfig) -> Self {
        Self {
            concurrency: sandbox.max_concurrent,
            claim_ahead: sandbox.max_concurrent.max(1),
            heartbeat_interval: Duration::from_secs(5),
            claim_timeout: Duration::from_secs(5),
            ack_wait: Duration::from_secs(30),
            sandbox,
            worker: None,
        }
    }
}

/// What stops a running attempt early, and what the report then says.
#[derive(Clone)]
struct Running {
    attempt: u32,
    cancel: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
}

impl Running {
    fn stop(&self, reason: &str) {
        self.reason
            .lock()
            .expect("reason lock")
            .get_or_insert_with(|| reason.to_owned());
        self.cancel.cancel();
    }
}

pub struct Executor {
    inner: Arc<Inner>,
}

struct Inner {
    nats: async_nats::Client,
    js: jetstream::Context,
    names: BusNames,
    config: ExecutorConfig,
    sandbox: Sandbox,
    worker: String,
    running: Mutex<HashMap<JobId, Running>>,
    /// Set at shutdown: an attempt claimed from now on is handed back
    /// (reported failed, so it is retried) instead of run.
    closing: CancellationToken,
}

impl Executor {
    pub fn new(
        nats: async_nats::Client,
        names: BusNames,
        config: ExecutorConfig,
    ) -> Result<Self, SandboxError> {
        let sandbox = Sandbox::new(config.sandbox.clone())?;
        let worker = config.worker.clone().unwrap_or_else(default_worker_name);
        Ok(Self {
            inner: Arc::new(Inner {
                js: jetstream::new(nats.clone()),
                nats,
                names,
                config,
                sandbox,
                worker,
                running: Mutex::new(HashMap::new()),
                closing: CancellationToken::new(),
            }),
        })
    }

    pub fn worker(&self) -> &str {
        &self.inner.worker
    }

    /// Runs jobs until `shutdown` resolves; then stops what runs (each
    /// reported as a failed attempt, so it is retried elsewhere) and
    /// waits, bounded, for those reports to be stored.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let inner = self.inner;
        tracing::info!(worker = %inner.worker, concurrency = inner.config.concurrency, "executor running");
        let slots = Arc::new(Semaphore::new(inner.taking()));
        let background = async {
            tokio::join!(
                keep("work", || inner.clone().take_work(slots.clone())),
                keep("stops", || inner.clone().listen_for_stops()),
                keep("heartbeats", || inner.clone().heartbeat()),
            )
        };
        tokio::select! {
            _ = background => {}
            () = shutdown => {}
        }
        let stopping: Vec<Running> = inner
            .running
            .lock()
            .expect("running lock")
            .values()
            .cloned()
            .collect();
        for run in &stopping {
            run.stop("executor_shutdown");
        }
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            while !inner.running.lock().expect("running lock").is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("executor stopped before every report was stored");
        }
        tracing::info!(worker = %inner.worker, "executor stopped");
    }
}

async fn keep<F, Fut>(part: &'static str, mut run: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), BoxError>>,
{
    let mut backoff = Duration::from_millis(200);
    loop {
        match run().await {
            Ok(()) => backoff = Duration::from_millis(200),
            Err(e) => {
                tracing::warn!(part, error = %e, "executor interrupted; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn default_worker_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "executor".into());
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    format!("{host}/{}/{tag}", std::process::id())
}

impl Inner {
    /// Work items held at once: the slots and the claims ahead of them.
    fn taking(&self) -> usize {
        self.config.concurrency.max(1) + self.config.claim_ahead
    }

    /// Runs are spawned apart from this loop: one outlives a consumer
    /// hiccup, and shutdown waits on `running` instead.
    async fn take_work(self: Arc<Self>, slots: Arc<Semaphore>) -> Result<(), BoxError> {
        use async_nats::jetstream::context::GetStreamErrorKind;
        let stream = match self.js.get_stream(self.names.jobs_stream()).await {
            Ok(stream) => stream,
            Err(e) if matches!(e.kind(), GetStreamErrorKind::JetStream(_)) => {
                // The relay creates the queue: wait for it, quietly.
                tracing::debug!(error = %e, "waiting for the jobs queue");
                tokio::time::sleep(Duration::from_millis(500)).await;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let name = self.names.consumer("executors");
        let consumer: jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(
                &name,
                pull::Config {
                    durable_name: Some(name.clone()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: self.config.ack_wait,
                    max_ack_pending: 100_000,
                    ..Default::default()
                },
            )
            .await?;
        loop {
            let first = slots.clone().acquire_owned().await?;
            let mut permits = vec![first];
            while let Ok(more) = slots.clone().try_acquire_owned() {
                permits.push(more);
            }
            let mut batch = consumer
                .fetch()
                .max_messages(permits.len())
                .expires(Duration::from_secs(1))
                .messages()
                .await?;
            while let Some(message) = batch.next().await {
                let message = message?;
                let Some(permit) = permits.pop() else { break };
                let inner = self.clone();
                tokio::spawn(async move {
                    inner.handle(message).await;
                    drop(permit);
                });
            }
        }
    }

    async fn handle(self: Arc<Self>, message: jetstream::Message) {
        let item: WorkItem = match serde_json::from_slice(&message.payload) {
            Ok(item) => item,
            Err(e) => {
                tracing::error!(error = %e, "malformed work item dropped");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };
        if let Some(due) = item.not_before {
            let wait = (due - chrono::Utc::now()).num_milliseconds();
            if wait > 0 {
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_millis(wait as u64))))
                    .await;
                return;
            }
        }
        let ack = match self.claim(&item).await {
            Ok(ClaimVerdict::Run(assignment)) => {
                // Acknowledged before running: from here the lease, not the
                // queue, covers a lost executor.
                if let Err(e) = message.double_ack().await {
                    tracing::warn!(job_id = %item.job_id, error = %e, "work item ack not confirmed; running anyway");
                }
                self.run_attempt(assignment).await;
                return;
            }
            Ok(ClaimVerdict::Later { after_ms }) => {
                AckKind::Nak(Some(Duration::from_millis(after_ms)))
            }
            Ok(ClaimVerdict::Drop { reason }) => {
                tracing::debug!(job_id = %item.job_id, %reason, "nothing to run");
                AckKind::Ack
            }
            Err(e) => {
                tracing::warn!(job_id = %item.job_id, error = %e, "claim unanswered; asking again soon");
                AckKind::Nak(Some(Duration::from_secs(1)))
            }
        };
        if let Err(e) = message.ack_with(ack).await {
            tracing::warn!(job_id = %item.job_id, error = %e, "could not answer a work item");
        }
    }

    async fn claim(&self, item: &WorkItem) -> Result<ClaimVerdict, BoxError> {
        let request = ClaimRequest {
            job_id: item.job_id,
            worker: self.worker.clone(),
            attempt: item.attempt,
        };
        let body = serde_json::to_vec(&request)?;
        let reply = tokio::time::timeout(
            self.config.claim_timeout,
            self.nats
                .request(self.names.job_claim_subject(), body.into()),
        )
        .await??;
        Ok(serde_json::from_slice(&reply.payload)?)
    }

    async fn run_attempt(self: Arc<Self>, a: Assignment) {
        let running = Running {
            attempt: a.attempt,
            cancel: CancellationToken::new(),
            reason: Arc::default(),
        };
        self.running
            .lock()
            .expect("running lock")
            .insert(a.job_id, running.clone());
        if self.closing.is_cancelled() {
            running.stop("executor_shutdown");
        }
        metrics::gauge!("tandem_executor_running").increment(1.0);
        let (chunks, forwarded) = self.forward_output(&a);
        let request = RunRequest {
            language: a.language,
            source: a.source.clone(),
            stdin: a.stdin.clone(),
            limits: Limits {
                wall_ms: a.timeout_ms,
                ..Limits::default()
            },
        };
        tracing::info!(job_id = %a.job_id, attempt = a.attempt, "running");
        let outcome = self
            .sandbox
            .run(request, Some(chunks), &running.cancel)
            .await;
        let _ = forwarded.await;
        let stop_reason = running.reason.lock().expect("reason lock").clone();
        let report = report_for(&a, outcome, stop_reason);
        metrics::counter!("tandem_executor_runs_total", "outcome" => outcome_label(&report))
            .increment(1);
        self.store_report(report).await;
        self.running.lock().expect("running lock").remove(&a.job_id);
        metrics::gauge!("tandem_executor_running").decrement(1.0);
    }

    /// Live output to the project's subscribers, best effort: chunks that
    /// find the channel full are dropped from the live view (the result
    /// keeps them).
    fn forward_output(
        &self,
        a: &Assignment,
    ) -> (
        mpsc::Sender<(OutputStream, bytes::Bytes)>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, mut rx) = mpsc::channel::<(OutputStream, bytes::Bytes)>(64);
        let subject = self
            .names
            .live_subject(a.project_id.0, live::kind::JOB_OUTPUT);
        let nats = self.nats.clone();
        let job_id = a.job_id.0;
        let task = tokio::spawn(async move {
            while let Some((stream, bytes)) = rx.recv().await {
                let chunk = JobOutputChunk {
                    job_id,
                    stream,
                    chunk: String::from_utf8_lossy(&bytes).into_owned(),
                };
                let body = serde_json::to_vec(&chunk).expect("chunks serialize");
                if nats.publish(subject.clone(), body.into()).await.is_err() {
                    break;
                }
            }
        });
        (tx, task)
    }

    /// Publishes until JetStream has stored it (or gives up after a while:
    /// the lease then fails the attempt as lost, which retries it).
    async fn store_report(&self, report: Report) {
        let max = self.nats.server_info().max_payload;
        let report = fit_report(report, max);
        let body = serde_json::to_vec(&report).expect("reports serialize");
        let subject = self.names.job_report_subject(report.job_id().0);
        let mut backoff = Duration::from_millis(100);
        for _ in 0..20 {
            let message = PublishMessage::build()
                .payload(body.clone().into())
                .message_id(report.message_id());
            let stored = match self.js.send_publish(subject.clone(), message).await {
                Ok(ack) => ack.await.map(|_| ()).map_err(BoxError::from),
                Err(e) => Err(e.into()),
            };
            match stored {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(job_id = %report.job_id(), error = %e, "report not stored yet; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        tracing::error!(job_id = %report.job_id(), "gave up storing a report; the attempt's lease will expire");
    }

    /// Job events that end a running attempt: cancelled, dead, or the
    /// attempt itself failed elsewhere (its lease was reaped).
    async fn listen_for_stops(self: Arc<Self>) -> Result<(), BoxError> {
        let mut subs = Vec::new();
        for event in ["JobCancelled", "JobMarkedDead", "JobAttemptFailed"] {
            subs.push(
                self.nats
                    .subscribe(self.names.job_event_subject(event))
                    .await?,
            );
        }
        let mut events = futures::stream::select_all(subs);
        while let Some(message) = events.next().await {
            let Ok(envelope) = serde_json::from_slice::<Envelope>(&message.payload) else {
                continue;
            };
            let Ok(job) = envelope.aggregateid.parse().map(JobId) else {
                continue;
            };
            let Some(run) = self
                .running
                .lock()
                .expect("running lock")
                .get(&job)
                .cloned()
            else {
                continue;
            };
            let reason = match envelope.decode::<JobEvent>() {
                Ok(JobEvent::JobCancelled { .. }) => "cancelled",
                Ok(JobEvent::JobMarkedDead { .. }) => "job_dead",
                Ok(JobEvent::JobAttemptFailed { attempt, .. }) if attempt == run.attempt => {
                    "attempt_failed_elsewhere"
                }
                _ => continue,
            };
            tracing::info!(job_id = %job, attempt = run.attempt, reason, "stopping a running attempt");
            run.stop(reason);
        }
        Err("job event subscriptions ended".into())
    }

    async fn heartbeat(self: Arc<Self>) -> Result<(), BoxError> {
        let mut tick = tokio::time::interval(self.config.heartbeat_interval);
        loop {
            tick.tick().await;
            let running: Vec<RunningAttempt> = self
                .running
                .lock()
                .expect("running lock")
                .iter()
                .map(|(job, run)| RunningAttempt {
                    job_id: *job,
                    attempt: run.attempt,
                })
                .collect();
            if running.is_empty() {
                continue;
            }
            let beat = Heartbeat {
                worker: self.worker.clone(),
                running,
            };
            let body = serde_json::to_vec(&beat).expect("heartbeats serialize");
            self.nats
                .publish(self.names.job_heartbeat_subject(), body.into())
                .await?;
        }
    }
}

/// How the run ended, as the write side hears it.
fn report_for(
    a: &Assignment,
    outcome: Result<Outcome, SandboxError>,
    stop_reason: Option<String>,
) -> Report {
    let (job_id, attempt) = (a.job_id, a.attempt);
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(e) => {
            tracing::warn!(job_id = %job_id, attempt, error = %e, "sandbox failure");
            return Report::AttemptFailed {
                job_id,
                attempt,
                reason: format!("sandbox: {e}"),
            };
        }
    };
    let output = RunOutput {
        stdout: outcome.stdout,
        stderr: outcome.stderr,
        duration_ms: outcome.duration.as_millis() as u64,
        truncated: outcome.stdout_truncated || outcome.stderr_truncated,
    };
    let limit = |limit| Report::LimitExceeded {
        job_id,
        attempt,
        limit,
        output: output.clone(),
    };
    match outcome.finish {
        Finish::Exited(exit_code) => Report::Finished {
            job_id,
            attempt,
            exit_code,
            output,
        },
        Finish::Signaled(signal) => Report::Finished {
            job_id,
            attempt,
            exit_code: 128 + signal,
            output,
        },
        Finish::TimedOut => limit(JobLimit::Timeout),
        Finish::CpuLimit => limit(JobLimit::CpuLimit),
        Finish::MemoryLimit => limit(JobLimit::MemoryLimit),
        Finish::Cancelled => Report::AttemptFailed {
            job_id,
            attempt,
            reason: stop_reason.unwrap_or_else(|| "cancelled".into()),
        },
    }
}

fn outcome_label(report: &Report) -> &'static str {
    match report {
        Report::Finished { exit_code: 0, .. } => "succeeded",
        Report::Finished { .. } => "failed",
        Report::LimitExceeded { .. } => "limit",
        Report::AttemptFailed { .. } => "attempt_failed",
    }
}
