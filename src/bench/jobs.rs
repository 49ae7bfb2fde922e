//! `bench jobs`: the job machinery against the bare sandbox, in one run.
//!
//! 1. *raw*: `slots` loops run `print(1)` in python in the sandbox
//!    directly ([`Sandbox::run`]), no NATS, no log: the reference rate.
//! 2. *machinery*: `submitters` users each submit `print(1)` over HTTP and
//!    wait for its `JobCompleted` event on the bus before the next; the
//!    in-process executor has the same `slots`. Jobs/s against raw. The
//!    stack runs what running jobs takes (gateway, write side, sequencer,
//!    relay, job desk, executor), then again with the projections too, as
//!    `tandem up` runs on one machine: both figures are printed.
//! 3. *latency*: one submitter, one job at a time: submit (request sent)
//!    → `JobCompleted` on the bus (the job is `succeeded` in the log and
//!    every subscriber can know it), on the stack with projections.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures::StreamExt;
use reqwest::Method;
use serde_json::json;
use tandem_commands::WriteSideConfig;
use tandem_domain::envelope::{BusNames, Envelope};
use tandem_executor::sandbox::{Finish, Language, Limits, RunRequest, Sandbox};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::database::BenchDatabase;
use super::harness::{tokens, Api, Roles, Running};
use super::measure::{ms, verdict, Percentiles};
use crate::settings::Common;

#[derive(Args, Clone, Debug)]
pub struct JobsArgs {
    /// Users submitting at once in the machinery phase.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub submitters: u32,
    /// Sandbox slots, for the executor and the raw loops alike (default: cores).
    #[arg(long)]
    pub slots: Option<usize>,
    /// Measured time of the raw and the machinery phase each.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    #[arg(long, default_value_t = 2)]
    pub warmup_secs: u64,
    /// Jobs timed one after another in the latency phase.
    #[arg(long, default_value_t = 200)]
    pub latency_jobs: u32,
    /// The bench database: dropped and recreated; its name must contain `bench`.
    #[arg(long, default_value = "tandem_bench_jobs")]
    pub database: String,
    #[arg(long)]
    pub keep: bool,
    #[arg(long, default_value_t = 32)]
    pub pool_size: u32,
}

const RATIO_GOAL: f64 = 0.70;
const LATENCY_P50_GOAL: Duration = Duration::from_millis(100);
const SOURCE: &str = "print(1)";

pub(super) async fn jobs(common: &Common, args: &JobsArgs) -> anyhow::Result<()> {
    let slots = args
        .slots
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    let raw = raw_rate(slots, args).await?;
    let (rate, _) = on_fresh_stack(common, args, slots, false, 0).await?;
    let (full_rate, latency) = on_fresh_stack(common, args, slots, true, args.latency_jobs).await?;
    let latency = latency.context("no latency samples")?;
    println!();
    println!("bench jobs: python print(1), {slots} sandbox slots");
    println!("  raw sandbox:  {raw:.1} runs/s ({slots} loops)");
    println!(
        "  machinery:    {rate:.1} jobs/s ({} submitters, submit → JobCompleted; gateway, write side, relay, desk, executor)",
        args.submitters
    );
    let ratio = rate / raw;
    println!(
        "  ratio:        {:.1} % (goal ≥ {:.0} %): {}",
        ratio * 100.0,
        RATIO_GOAL * 100.0,
        verdict(ratio >= RATIO_GOAL)
    );
    println!(
        "  with the projections on the same cores too: {full_rate:.1} jobs/s, {:.1} % of raw",
        full_rate / raw * 100.0
    );
    println!(
        "  latency, one job at a time ({} jobs): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms (goal p50 < {} ms): {}",
        latency.count,
        ms(latency.p50),
        ms(latency.p90),
        ms(latency.p99),
        ms(latency.max),
        LATENCY_P50_GOAL.as_millis(),
        verdict(latency.p50 < LATENCY_P50_GOAL)
    );
    Ok(())
}

fn python_print() -> RunRequest {
    RunRequest {
        language: Language::Python,
        source: SOURCE.into(),
        stdin: String::new(),
        limits: Limits::default(),
    }
}

/// Runs per second of the bare sandbox with `slots` loops.
async fn raw_rate(slots: usize, args: &JobsArgs) -> anyhow::Result<f64> {
    let config =
        crate::settings::executor_config(std::env::current_exe()?, slots, Limits::default());
    let sandbox = Arc::new(Sandbox::new(config.sandbox).context("setting up the sandbox")?);
    let counted = Arc::new(AtomicUsize::new(0));
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = CancellationToken::new();
    let never = CancellationToken::new();
    let loops: Vec<_> = (0..slots)
        .map(|_| {
            let (sandbox, counted, measuring, stop, never) = (
                sandbox.clone(),
                counted.clone(),
                measuring.clone(),
                stop.clone(),
                never.clone(),
            );
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let outcome = sandbox.run(python_print(), None, &never).await?;
                    anyhow::ensure!(
                        outcome.finish == Finish::Exited(0) && outcome.stdout == "1\n",
                        "print(1) gave {:?} {:?}",
                        outcome.finish,
                        outcome.stderr
                    );
                    if measuring.load(Ordering::Relaxed) {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(args.warmup_secs)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.duration_secs)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.cancel();
    for l in loops {
        l.await??;
    }
    Ok(counted.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64())
}

/// When each job's `JobCompleted` went by on the bus.
#[derive(Default)]
struct Completions {
    slots: Mutex<HashMap<Uuid, Slot>>,
}

enum Slot {
    Arrived(Instant),
    Waiting(oneshot::Sender<Instant>),
}

impl Completions {
    fn arrived(&self, job: Uuid, at: Instant) {
        let mut slots = self.slots.lock().expect("completions lock");
        match slots.remove(&job) {
            Some(Slot::Waiting(tx)) => {
                let _ = tx.send(at);
            }
            _ => {
                slots.insert(job, Slot::Arrived(at));
            }
        }
    }

    async fn wait(&self, job: Uuid) -> anyhow::Result<Instant> {
        let rx = {
            let mut slots = self.slots.lock().expect("completions lock");
            match slots.remove(&job) {
                Some(Slot::Arrived(at)) => return Ok(at),
                Some(Slot::Waiting(_)) | None => {
                    let (tx, rx) = oneshot::channel();
                    slots.insert(job, Slot::Waiting(tx));
                    rx
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), rx)
            .await
            .context("a job did not complete within 60 s")?
            .context("completion watcher ended")
    }
}

/// The machinery's rate (and, with `latency_jobs`, its latency) on a
/// stack of its own, on a fresh bench database.
async fn on_fresh_stack(
    common: &Common,
    args: &JobsArgs,
    slots: usize,
    projections: bool,
    latency_jobs: u32,
) -> anyhow::Result<(f64, Option<Percentiles>)> {
    let db = BenchDatabase::recreate(&common.database_url, &args.database).await?;
    let outcome = async {
        let running = Running::start_with(
            common,
            &db,
            args.pool_size,
            64,
            WriteSideConfig::default(),
            Roles::WithJobs { slots, projections },
        )
        .await?;
        let outcome = measure(common, args, &running, latency_jobs).await;
        running.stop_and_clean(common).await;
        outcome
    }
    .await;
    let finished = db.finish(args.keep).await;
    let measured = outcome?;
    finished?;
    Ok(measured)
}

async fn measure(
    common: &Common,
    args: &JobsArgs,
    running: &Running,
    latency_jobs: u32,
) -> anyhow::Result<(f64, Option<Percentiles>)> {
    let api = &running.api;
    let names = BusNames::new(&running.namespace)?;
    let nats = async_nats::connect(common.nats_url.as_str()).await?;
    let mut completed = nats
        .subscribe(names.job_event_subject("JobCompleted"))
        .await?;
    let completions = Arc::new(Completions::default());
    let watcher = {
        let completions = completions.clone();
        tokio::spawn(async move {
            while let Some(message) = completed.next().await {
                let at = Instant::now();
                if let Ok(envelope) = serde_json::from_slice::<Envelope>(&message.payload) {
                    if let Ok(job) = envelope.aggregateid.parse() {
                        completions.arrived(job, at);
                    }
                }
            }
        })
    };
    let users = tokens(api, args.submitters).await?;
    let mut projects = Vec::new();
    for token in &users {
        let project = api
            .expect_ok(
                api.request(Method::POST, "/projects", Some(token))
                    .json(&json!({"name": "Jobs"})),
            )
            .await?;
        projects.push(project["id"].as_str().context("project id")?.to_owned());
    }
    // Machinery: closed loops, one per submitter.
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let counted = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let loops: Vec<_> = users
        .iter()
        .zip(&projects)
        .map(|(token, project)| {
            let (api, completions, measuring, counted, stop) = (
                api.clone(),
                completions.clone(),
                measuring.clone(),
                counted.clone(),
                stop.clone(),
            );
            let (token, project) = (token.clone(), project.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let job = submit(&api, &token, &project).await?;
                    completions.wait(job).await?;
                    if measuring.load(Ordering::Relaxed) {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                }
                anyhow::Ok(())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(args.warmup_secs)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.duration_secs)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.cancel();
    for l in loops {
        l.await??;
    }
    let rate = counted.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64();
    // Latency: one at a time.
    let mut samples = Vec::with_capacity(latency_jobs as usize);
    for _ in 0..latency_jobs {
        let sent = Instant::now();
        let job = submit(api, &users[0], &projects[0]).await?;
        let done = completions.wait(job).await?;
        samples.push(done - sent);
    }
    watcher.abort();
    Ok((rate, Percentiles::of(samples)))
}

async fn submit(api: &Api, token: &str, project: &str) -> anyhow::Result<Uuid> {
    let accepted = api
        .expect_ok(
            api.request(
                Method::POST,
                &format!("/projects/{project}/jobs"),
                Some(token),
            )
            .json(&json!({"language": "python", "source": SOURCE})),
        )
        .await?;
    Ok(accepted["id"].as_str().context("job id")?.parse()?)
}
