//! `bench jobs`: the job machinery against the bare sandbox, in one run.
//!
//! Two kinds of load take turns (`--turn-secs` each, `--duration-secs` in
//! all for each kind), so both see the same machine: this box's speed
//! drifts by a quarter from one minute to the next.
//! - *raw*: `slots` loops run `print(1)` in python in the sandbox directly
//!   ([`Sandbox::run`]), no NATS, no log: the reference rate.
//! - *machinery*: `submitters` users each submit `print(1)` over HTTP and
//!   wait for its `JobCompleted` event on the bus before the next; the
//!   in-process executor has the same `slots`. A job counts when its
//!   `JobCompleted` arrives within a machinery turn.
//!
//! Between turns every loop finishes what it started (unmeasured), so
//! neither load spills into the other's turn. This runs twice: on a stack
//! with what running jobs takes (gateway, write side, sequencer, relay,
//! job desk, executor), then with the projections too, as `tandem up` runs
//! on one machine. Last, on that second stack, one job at a time: submit
//! (request sent) → `JobCompleted` on the bus (the job is `succeeded` in
//! the log and every subscriber can know it).

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
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use super::database::BenchDatabase;
use super::harness::{bench_gateway_config, tokens, Api, Roles, Running};
use super::measure::{ms, verdict, Percentiles};
use crate::settings::Common;

#[derive(Args, Clone, Debug)]
pub struct JobsArgs {
    /// Users submitting at once in the machinery turns.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub submitters: u32,
    /// Sandbox slots, for the executor and the raw loops alike (default: cores).
    #[arg(long)]
    pub slots: Option<usize>,
    /// Measured time of each kind of load, per stack.
    #[arg(long, default_value_t = 12)]
    pub duration_secs: u64,
    /// Length of one turn.
    #[arg(long, default_value_t = 3)]
    pub turn_secs: u64,
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

/// Rates of one stack's alternating turns.
struct Rates {
    raw: f64,
    machinery: f64,
}

pub(super) async fn jobs(common: &Common, args: &JobsArgs) -> anyhow::Result<()> {
    let slots = args
        .slots
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    let (lean, _) = on_fresh_stack(common, args, slots, false, 0).await?;
    let (full, latency) = on_fresh_stack(common, args, slots, true, args.latency_jobs).await?;
    let latency = latency.context("no latency samples")?;
    println!();
    println!(
        "bench jobs: python print(1), {slots} sandbox slots, {} submitters, {} s of each load in {} s turns",
        args.submitters, args.duration_secs, args.turn_secs
    );
    let ratio = lean.machinery / lean.raw;
    println!("  jobs stack (gateway, write side, relay, desk, executor):");
    println!(
        "    raw sandbox {:.1} runs/s, machinery {:.1} jobs/s (submit → JobCompleted): {:.1} % (goal ≥ {:.0} %): {}",
        lean.raw,
        lean.machinery,
        ratio * 100.0,
        RATIO_GOAL * 100.0,
        verdict(ratio >= RATIO_GOAL)
    );
    println!("  with the projections on the same cores too:");
    println!(
        "    raw sandbox {:.1} runs/s, machinery {:.1} jobs/s: {:.1} %",
        full.raw,
        full.machinery,
        full.machinery / full.raw * 100.0
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

/// Whose turn it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Turn {
    Pause,
    Raw,
    Machinery,
    Done,
}

/// A loop that takes part in turns: it starts work only in its own turn,
/// and says when it is busy so the controller can wait for quiet.
#[derive(Clone)]
struct Turns {
    turn: watch::Receiver<Turn>,
    busy: Arc<AtomicUsize>,
}

impl Turns {
    /// Waits for `mine` (false once the run is over).
    async fn wait_for(&mut self, mine: Turn) -> bool {
        self.turn
            .wait_for(|t| *t == mine || *t == Turn::Done)
            .await
            .map(|t| *t == mine)
            .unwrap_or(false)
    }

    fn is(&self, turn: Turn) -> bool {
        *self.turn.borrow() == turn
    }
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

/// One stack's turns (and, with `latency_jobs`, its latency), on a fresh
/// bench database.
async fn on_fresh_stack(
    common: &Common,
    args: &JobsArgs,
    slots: usize,
    projections: bool,
    latency_jobs: u32,
) -> anyhow::Result<(Rates, Option<Percentiles>)> {
    let db = BenchDatabase::recreate(&common.database_url, &args.database).await?;
    let outcome = async {
        let running = Running::start(
            common,
            &db,
            args.pool_size,
            64,
            WriteSideConfig::default(),
            Roles::WithJobs { slots, projections },
            bench_gateway_config(),
        )
        .await?;
        let outcome = measure(common, args, slots, &running, latency_jobs).await;
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
    slots: usize,
    running: &Running,
    latency_jobs: u32,
) -> anyhow::Result<(Rates, Option<Percentiles>)> {
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
    let config =
        crate::settings::executor_config(std::env::current_exe()?, slots, Limits::default());
    let sandbox = Arc::new(Sandbox::new(config.sandbox).context("setting up the sandbox")?);

    let (turn_tx, turn_rx) = watch::channel(Turn::Pause);
    let turns = Turns {
        turn: turn_rx,
        busy: Arc::new(AtomicUsize::new(0)),
    };
    let raw_done = Arc::new(AtomicUsize::new(0));
    let jobs_done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..slots {
        let (sandbox, mut turns, done) = (sandbox.clone(), turns.clone(), raw_done.clone());
        workers.push(tokio::spawn(async move {
            let never = tokio_util::sync::CancellationToken::new();
            while turns.wait_for(Turn::Raw).await {
                turns.busy.fetch_add(1, Ordering::SeqCst);
                let outcome = sandbox.run(python_print(), None, &never).await;
                turns.busy.fetch_sub(1, Ordering::SeqCst);
                let outcome = outcome?;
                anyhow::ensure!(
                    outcome.finish == Finish::Exited(0) && outcome.stdout == "1\n",
                    "print(1) gave {:?} {:?}",
                    outcome.finish,
                    outcome.stderr
                );
                if turns.is(Turn::Raw) {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        }));
    }
    for (token, project) in users.iter().zip(&projects) {
        let (api, completions, mut turns, done) = (
            api.clone(),
            completions.clone(),
            turns.clone(),
            jobs_done.clone(),
        );
        let (token, project) = (token.clone(), project.clone());
        workers.push(tokio::spawn(async move {
            while turns.wait_for(Turn::Machinery).await {
                turns.busy.fetch_add(1, Ordering::SeqCst);
                let finished = async {
                    let job = submit(&api, &token, &project).await?;
                    completions.wait(job).await
                }
                .await;
                turns.busy.fetch_sub(1, Ordering::SeqCst);
                finished?;
                if turns.is(Turn::Machinery) {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        }));
    }
    // Warm both up (unmeasured), then alternate.
    let turn = Duration::from_secs(args.turn_secs.max(1));
    let rounds = (args.duration_secs.max(1)).div_ceil(args.turn_secs.max(1));
    let mut measured = Duration::ZERO;
    for round in 0..=rounds {
        for kind in [Turn::Raw, Turn::Machinery] {
            let counter = if kind == Turn::Raw {
                &raw_done
            } else {
                &jobs_done
            };
            let before = counter.load(Ordering::Relaxed);
            turn_tx.send_replace(kind);
            tokio::time::sleep(turn).await;
            turn_tx.send_replace(Turn::Pause);
            while turns.busy.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if round == 0 {
                // The warm-up's completions do not count.
                counter.store(before, Ordering::Relaxed);
            }
        }
        if round > 0 {
            measured += turn;
        }
    }
    turn_tx.send_replace(Turn::Done);
    for w in workers {
        w.await??;
    }
    let seconds = measured.as_secs_f64();
    let rates = Rates {
        raw: raw_done.load(Ordering::Relaxed) as f64 / seconds,
        machinery: jobs_done.load(Ordering::Relaxed) as f64 / seconds,
    };
    // Latency: one at a time.
    let mut samples = Vec::with_capacity(latency_jobs as usize);
    for _ in 0..latency_jobs {
        let sent = Instant::now();
        let job = submit(api, &users[0], &projects[0]).await?;
        let done = completions.wait(job).await?;
        samples.push(done - sent);
    }
    watcher.abort();
    Ok((rates, Percentiles::of(samples)))
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
