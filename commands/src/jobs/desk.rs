//! [`JobDesk`]: where executors' claims, heartbeats and reports become
//! commands on the `Job` aggregate.
//!
//! - **Claims** (core request/reply, queue group `desk`): the desk starts
//!   the attempt in the log before it answers `run`, so of two executors
//!   claiming one attempt exactly one gets it (optimistic concurrency on
//!   the job). It takes the attempt's lease first, so a started attempt
//!   always has one, however the claim ends.
//! - **Heartbeats** (core, queue group `desk`) renew a worker's leases.
//! - **Reaper**: a lease not renewed within its TTL fails the attempt
//!   (`worker_lost`): the executor was killed, hung or cut off.
//! - **Reports** (a durable consumer of the reports stream, shared by every
//!   desk): finished / stopped at a limit / attempt failed become
//!   `Complete` / `Terminate` / `FailAttempt`; a report the job no longer
//!   accepts (late, cancelled meanwhile) changes nothing.
//! - After any failed attempt the desk decides: a retry after a backoff
//!   while the budget lasts, else dead ([`super::decide`]).
//!
//! Every step is safe to repeat: the aggregate refuses what no longer
//! applies, so redeliveries, two desks and a crash between steps leave
//! exactly one outcome per attempt.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy};
use async_nats::jetstream::{self, AckKind};
use chrono::Utc;
use futures::StreamExt;
use sqlx::PgPool;
use tandem_domain::envelope::BusNames;
use tandem_domain::job::{Job, JobCommand, JobError};
use tandem_domain::work::{Assignment, ClaimRequest, ClaimVerdict, Heartbeat, Report, RunOutput};
use tandem_domain::{JobId, ProjectScoped};
use uuid::Uuid;

use super::decide::{self, Claim};
use super::dispatch::reports_stream_config;
use super::leases::{self, Lease};
use crate::bus::{CommandBus, CommandContext, CommandError};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone, Debug)]
pub struct JobDeskConfig {
    /// A running attempt whose worker sent no heartbeat for this long is
    /// failed as lost. Executors heartbeat several times per TTL.
    pub lease_ttl: Duration,
    pub reap_interval: Duration,
    /// Reports handled at once.
    pub report_concurrency: usize,
}

impl Default for JobDeskConfig {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(30),
            reap_interval: Duration::from_secs(1),
            report_concurrency: 16,
        }
    }
}

#[derive(Clone)]
pub struct JobDesk {
    bus: CommandBus,
    pool: PgPool,
    nats: async_nats::Client,
    names: BusNames,
    config: JobDeskConfig,
}

/// Output as the log can hold it: Postgres text and `jsonb` have no NUL
/// character, so each becomes U+FFFD (the live view saw the real bytes).
fn storable(mut output: RunOutput) -> RunOutput {
    for text in [&mut output.stdout, &mut output.stderr] {
        if text.contains('\0') {
            *text = text.replace('\0', "\u{fffd}");
        }
    }
    output
}

/// How a report or claim failed on our side (not the job's state).
enum Trouble {
    /// Postgres or NATS: try again later.
    Transient(BoxError),
    /// The store refused it as it is (a bug or data it cannot hold):
    /// trying again will not help.
    Permanent(BoxError),
}

/// Deliveries of one report before a permanent failure gives up on it.
const REPORT_DELIVERIES: i64 = 5;

impl<E: std::error::Error + Send + Sync + 'static> From<CommandError<E>> for Trouble {
    fn from(e: CommandError<E>) -> Self {
        match e {
            CommandError::Internal(_) => Trouble::Permanent(Box::new(e)),
            other => Trouble::Transient(Box::new(other)),
        }
    }
}

impl From<sqlx::Error> for Trouble {
    fn from(e: sqlx::Error) -> Self {
        Trouble::Transient(Box::new(e))
    }
}

impl std::fmt::Display for Trouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trouble::Transient(e) | Trouble::Permanent(e) => write!(f, "{e}"),
        }
    }
}

impl JobDesk {
    pub fn new(
        bus: CommandBus,
        pool: PgPool,
        nats: async_nats::Client,
        names: BusNames,
        config: JobDeskConfig,
    ) -> Self {
        Self {
            bus,
            pool,
            nats,
            names,
            config,
        }
    }

    /// Serves claims, heartbeats and reports and reaps lost workers until
    /// `shutdown` resolves; each part retries through outages on its own.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let parts = async {
            tokio::join!(
                self.keep("claims", || self.serve_claims()),
                self.keep("heartbeats", || self.serve_heartbeats()),
                self.keep("reports", || self.serve_reports()),
                self.keep("reaper", || self.reap()),
            )
        };
        tokio::select! {
            _ = parts => {}
            () = shutdown => tracing::info!("job desk stopped"),
        }
    }

    async fn keep<F, Fut>(&self, part: &'static str, run: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(), BoxError>>,
    {
        let mut backoff = Duration::from_millis(200);
        loop {
            match run().await {
                Ok(()) => backoff = Duration::from_millis(200),
                Err(e) => {
                    tracing::warn!(part, error = %e, "job desk interrupted; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn context(job: JobId, cause: &str) -> CommandContext {
        CommandContext {
            actor: None,
            request_id: format!("job-desk/{}", Uuid::now_v7()),
            correlation_id: job.to_string(),
            causation_id: cause.to_owned(),
        }
    }

    // -- claims --------------------------------------------------------------

    async fn serve_claims(&self) -> Result<(), BoxError> {
        let mut requests = self
            .nats
            .queue_subscribe(self.names.job_claim_subject(), "desk".into())
            .await?;
        while let Some(request) = requests.next().await {
            let desk = self.clone();
            tokio::spawn(async move {
                let verdict = match serde_json::from_slice::<ClaimRequest>(&request.payload) {
                    Ok(claim) => desk.claim(claim).await,
                    Err(e) => ClaimVerdict::Drop {
                        reason: format!("malformed claim: {e}"),
                    },
                };
                if let Some(reply) = request.reply {
                    let body = serde_json::to_vec(&verdict).expect("verdicts serialize");
                    if let Err(e) = desk.nats.publish(reply, body.into()).await {
                        tracing::warn!(error = %e, "could not answer a claim");
                    }
                }
            });
        }
        Err("claim subscription ended".into())
    }

    /// The verdict on one claim; a transient failure says "later".
    pub async fn claim(&self, request: ClaimRequest) -> ClaimVerdict {
        match self.try_claim(&request).await {
            Ok(verdict) => verdict,
            Err(e) => {
                tracing::warn!(job_id = %request.job_id, error = %e, "claim failed; the executor will ask again");
                ClaimVerdict::Later { after_ms: 1000 }
            }
        }
    }

    async fn try_claim(&self, request: &ClaimRequest) -> Result<ClaimVerdict, Trouble> {
        let id = request.job_id.to_string();
        // The lease comes first, so a started attempt always has one. Its
        // attempt number is a guess from the job as it is now; a claim
        // that finds another number (a race) moves its lease along.
        // A work item made by a submission or a scheduled retry names the
        // attempt: the common path then loads the job once, in the command.
        let guess = match request.attempt {
            Some(attempt) => attempt,
            None => {
                let (before, version) = self.bus.load::<Job>(&id).await?;
                match decide::claim(&before, version, Utc::now()) {
                    Claim::Start { attempt } => attempt,
                    Claim::Later(after) => {
                        return Ok(ClaimVerdict::Later {
                            after_ms: after.as_millis().max(1) as u64,
                        })
                    }
                    Claim::Drop(reason) => return Ok(ClaimVerdict::Drop { reason }),
                }
            }
        };
        let mut lease = Lease {
            job_id: request.job_id,
            attempt: guess,
            worker: request.worker.clone(),
        };
        leases::take(&self.pool, &lease, self.config.lease_ttl).await?;
        let start = JobCommand::StartAttempt {
            worker: request.worker.clone(),
            now: Utc::now(),
        };
        let ctx = Self::context(request.job_id, &format!("claim/{}", request.worker));
        // The executor needs the decision and the code, not the position.
        let job = match self.bus.execute_unpositioned::<Job>(&id, start, &ctx).await {
            Ok((_, job)) => job,
            Err(e) => {
                leases::release(&self.pool, &lease).await?;
                return match e {
                    CommandError::Rejected(JobError::NotDue { until }) => {
                        let after = (until - Utc::now()).num_milliseconds().max(1) as u64;
                        Ok(ClaimVerdict::Later { after_ms: after })
                    }
                    CommandError::Rejected(refusal) => Ok(ClaimVerdict::Drop {
                        reason: refusal.to_string(),
                    }),
                    other => Err(other.into()),
                };
            }
        };
        let (Some((attempt, _)), Some(spec), Some(project_id)) =
            (job.running(), job.spec(), job.project_id())
        else {
            return Ok(ClaimVerdict::Drop {
                reason: "job without a submission".into(),
            });
        };
        if attempt != lease.attempt {
            let guessed = std::mem::replace(&mut lease.attempt, attempt);
            leases::take(&self.pool, &lease, self.config.lease_ttl).await?;
            leases::release(
                &self.pool,
                &Lease {
                    attempt: guessed,
                    ..lease.clone()
                },
            )
            .await?;
        }
        tracing::debug!(job_id = %request.job_id, attempt, worker = %request.worker, "attempt started");
        Ok(ClaimVerdict::Run(Assignment {
            job_id: request.job_id,
            project_id,
            attempt,
            language: spec.language,
            source: spec.source.clone(),
            stdin: spec.stdin.clone(),
            timeout_ms: spec.timeout_ms,
        }))
    }

    // -- heartbeats and the reaper -------------------------------------------

    async fn serve_heartbeats(&self) -> Result<(), BoxError> {
        let mut beats = self
            .nats
            .queue_subscribe(self.names.job_heartbeat_subject(), "desk".into())
            .await?;
        while let Some(beat) = beats.next().await {
            let Ok(beat) = serde_json::from_slice::<Heartbeat>(&beat.payload) else {
                tracing::warn!("malformed heartbeat ignored");
                continue;
            };
            if beat.running.is_empty() {
                continue;
            }
            if let Err(e) = leases::renew(
                &self.pool,
                &beat.worker,
                &beat.running,
                self.config.lease_ttl,
            )
            .await
            {
                tracing::warn!(worker = %beat.worker, error = %e, "could not renew leases");
            }
        }
        Err("heartbeat subscription ended".into())
    }

    async fn reap(&self) -> Result<(), BoxError> {
        let mut tick = tokio::time::interval(self.config.reap_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for lease in leases::expired(&self.pool, 100).await? {
                if let Err(e) = self.reap_one(&lease).await {
                    tracing::warn!(job_id = %lease.job_id, error = %e, "could not reap a lease");
                }
            }
        }
    }

    async fn reap_one(&self, lease: &Lease) -> Result<(), Trouble> {
        let id = lease.job_id.to_string();
        let (job, _) = self.bus.load::<Job>(&id).await?;
        if job.running() == Some((lease.attempt, lease.worker.as_str())) {
            tracing::warn!(job_id = %lease.job_id, attempt = lease.attempt, worker = %lease.worker, "worker lost; failing its attempt");
            let fail = JobCommand::FailAttempt {
                attempt: lease.attempt,
                reason: "worker_lost".into(),
            };
            let ctx = Self::context(lease.job_id, &format!("lease/{}", lease.worker));
            self.refusal_is_fine(self.bus.execute_unpositioned::<Job>(&id, fail, &ctx).await)?;
        }
        self.settle(lease.job_id, "lease").await?;
        leases::release(&self.pool, lease).await?;
        Ok(())
    }

    // -- reports -------------------------------------------------------------

    async fn serve_reports(&self) -> Result<(), BoxError> {
        let js = jetstream::new(self.nats.clone());
        let stream = js
            .get_or_create_stream(reports_stream_config(&self.names))
            .await?;
        let name = self.names.consumer("job-desk");
        let consumer: jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(
                &name,
                pull::Config {
                    durable_name: Some(name.clone()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    ..Default::default()
                },
            )
            .await?;
        let messages = consumer.messages().await?;
        messages
            .for_each_concurrent(self.config.report_concurrency, |message| async move {
                let message = match message {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::info!(error = %e, "reports consumer hiccup");
                        return;
                    }
                };
                let delivered = message.info().map_or(1, |i| i.delivered);
                let ack = match serde_json::from_slice::<Report>(&message.payload) {
                    Ok(report) => self.record_or_give_up(report, delivered).await,
                    Err(e) => {
                        tracing::error!(error = %e, "malformed report dropped");
                        AckKind::Ack
                    }
                };
                if let Err(e) = message.ack_with(ack).await {
                    tracing::warn!(error = %e, "could not acknowledge a report");
                }
            })
            .await;
        Err("reports consumer ended".into())
    }

    /// Records `report`; one the store keeps refusing fails its attempt
    /// instead, so the job is retried rather than stuck running.
    async fn record_or_give_up(&self, report: Report, delivered: i64) -> AckKind {
        let (job, attempt) = (report.job_id(), report.attempt());
        match self.record(report).await {
            Ok(()) => AckKind::Ack,
            Err(Trouble::Permanent(e)) if delivered >= REPORT_DELIVERIES => {
                tracing::error!(job_id = %job, attempt, error = %e, "report cannot be recorded; failing its attempt");
                let failed = Report::AttemptFailed {
                    job_id: job,
                    attempt,
                    reason: "report_unrecordable".into(),
                };
                match self.record(failed).await {
                    Ok(()) => AckKind::Ack,
                    Err(e) => {
                        tracing::warn!(job_id = %job, error = %e, "could not fail the attempt yet");
                        AckKind::Nak(Some(Duration::from_secs(1)))
                    }
                }
            }
            Err(e) => {
                tracing::warn!(job_id = %job, attempt, error = %e, "report not recorded yet; redelivering");
                AckKind::Nak(Some(Duration::from_secs(1)))
            }
        }
    }

    /// Turns one report into its command, then settles the job.
    async fn record(&self, report: Report) -> Result<(), Trouble> {
        let job = report.job_id();
        let attempt = report.attempt();
        let cause = format!("report/{}", report.message_id());
        let command = match report {
            Report::Finished {
                exit_code,
                output,
                attempt,
                job_id: _,
            } => {
                let RunOutput {
                    stdout,
                    stderr,
                    duration_ms,
                    truncated,
                } = storable(output);
                JobCommand::Complete {
                    attempt,
                    exit_code,
                    stdout,
                    stderr,
                    duration_ms,
                    truncated,
                }
            }
            Report::LimitExceeded {
                limit,
                output,
                attempt,
                job_id: _,
            } => {
                let output = storable(output);
                JobCommand::Terminate {
                    attempt,
                    limit,
                    stdout: output.stdout,
                    stderr: output.stderr,
                    duration_ms: output.duration_ms,
                    truncated: output.truncated,
                }
            }
            Report::AttemptFailed {
                reason,
                attempt,
                job_id: _,
            } => JobCommand::FailAttempt { attempt, reason },
        };
        let id = job.to_string();
        let ctx = Self::context(job, &cause);
        let failed = matches!(command, JobCommand::FailAttempt { .. });
        let accepted = match self
            .bus
            .execute_unpositioned::<Job>(&id, command, &ctx)
            .await
        {
            Ok(_) => true,
            Err(CommandError::Rejected(refusal)) => {
                tracing::debug!(%refusal, "job refused a report");
                false
            }
            Err(e) => return Err(e.into()),
        };
        // An accepted result is final; anything else may leave a failed
        // attempt waiting for its retry-or-dead decision.
        if failed || !accepted {
            self.settle(job, &cause).await?;
        }
        leases::release_attempt(&self.pool, job, attempt).await?;
        Ok(())
    }

    /// A failed attempt gets its retry or its death.
    async fn settle(&self, job: JobId, cause: &str) -> Result<(), Trouble> {
        let id = job.to_string();
        let (state, _) = self.bus.load::<Job>(&id).await?;
        let Some(next) = decide::after_failure(&state, Utc::now(), rand::random::<f64>()) else {
            return Ok(());
        };
        let ctx = Self::context(job, cause);
        self.refusal_is_fine(self.bus.execute_unpositioned::<Job>(&id, next, &ctx).await)
    }

    /// The job refusing a command (a late report, a decision someone else
    /// made first) is an answer, not a failure.
    fn refusal_is_fine<T>(&self, result: Result<T, CommandError<JobError>>) -> Result<(), Trouble> {
        match result {
            Ok(_) => Ok(()),
            Err(CommandError::Rejected(refusal)) => {
                tracing::debug!(%refusal, "job refused a report or decision");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}
