//! `bench queries`: the cached `GET /projects` against a hello-world
//! endpoint of the same server (`GET /healthz`), same connections, same
//! run; and the summary.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use futures::{StreamExt, TryStreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tandem_commands::WriteSideConfig;

use super::database::BenchDatabase;
use super::harness::{bench_gateway_config, projects_at, tokens, Api, Roles, Running, API_PREFIX};
use super::machine::{cpu_line, CpuShares, CpuWindow};
use super::measure::{
    error_total, merge_errors, metric_value, ms, print_errors, verdict, Errors, Percentiles,
};
use super::wire::{Call, Wire};
use crate::settings::Common;

#[derive(Args, Clone, Debug)]
pub struct QueriesArgs {
    /// Concurrent connections per endpoint, each with its own loop and, on
    /// `/projects`, its own user (so each has its own cache entry).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
    /// Measured time per endpoint, after its warmup.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Load on each endpoint before measuring it.
    #[arg(long, default_value_t = 2)]
    pub warmup_secs: u64,
    /// Projects each user owns: the items of its `GET /projects` page.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub projects_per_user: u32,
    /// The bench database: dropped and recreated; its name must contain `bench`.
    #[arg(long, default_value = "tandem_bench_queries")]
    pub database: String,
    /// Keep the bench database afterwards.
    #[arg(long)]
    pub keep: bool,
}

const RATIO_GOAL_PERCENT: f64 = 70.0;
const RATIO_GOAL_CONCURRENCY: u32 = 64;
/// The stack's own Postgres connections: the cached path needs few.
const POOL_SIZE: u32 = 32;
const SETUP_PARALLELISM: usize = 8;

pub(super) async fn queries(common: &Common, args: &QueriesArgs) -> anyhow::Result<()> {
    let db = BenchDatabase::recreate(&common.database_url, &args.database).await?;
    let outcome = queries_on(common, args, &db).await;
    let finished = db.finish(args.keep).await;
    outcome?;
    finished
}

async fn queries_on(common: &Common, args: &QueriesArgs, db: &BenchDatabase) -> anyhow::Result<()> {
    let running = Running::start(
        common,
        db,
        POOL_SIZE,
        SETUP_PARALLELISM * 2,
        WriteSideConfig::default(),
        Roles::WithReadSide,
        bench_gateway_config(),
    )
    .await?;
    let measured = measure(&running, args).await;
    running.stop_and_clean(common).await;
    print_queries_summary(args, &measured?);
    Ok(())
}

struct Measured {
    page_bytes: usize,
    warmup: Duration,
    projects: Phase,
    healthz: Phase,
    /// `tandem_query_cache_hits_total` over the whole load (warmup
    /// included); `None` when `/metrics` did not show it.
    cache_hits: Option<u64>,
    /// The machine's CPUs over the measured window (both endpoints').
    cpu: Option<CpuShares>,
}

async fn measure(running: &Running, args: &QueriesArgs) -> anyhow::Result<Measured> {
    let api = &running.api;
    eprintln!(
        "bench: stack on {} (namespace {}), setting up {} users with {} projects each...",
        running.stack.addr, running.namespace, args.concurrency, args.projects_per_user
    );
    let tokens = tokens(api, args.concurrency).await?;
    let last_position = create_projects(api, &tokens, args.projects_per_user).await?;
    eprintln!("bench: waiting for the read side to apply position {last_position}...");
    let page_bytes = catch_up(api, &tokens, last_position, args.projects_per_user).await?;
    let hits_before = cache_hits(api).await?;
    eprintln!("bench: GET /api/v1/projects and GET /healthz in turns...");
    let (projects, healthz, schedule, cpu) = run_load(api, tokens, args).await?;
    let hits_after = cache_hits(api).await?;
    Ok(Measured {
        page_bytes,
        warmup: schedule.measure_from - schedule.start,
        projects,
        healthz,
        // Absent before any hit: the counter is registered on its first.
        cache_hits: hits_after.map(|a| a - hits_before.unwrap_or(0)),
        cpu,
    })
}

/// Each user creates `per_user` projects; returns the last log position.
async fn create_projects(api: &Api, tokens: &[String], per_user: u32) -> anyhow::Result<i64> {
    let requests = tokens
        .iter()
        .flat_map(|token| (0..per_user).map(move |n| (token, n)));
    let positions: Vec<i64> = futures::stream::iter(requests)
        .map(|(token, n)| async move {
            let body = json!({"name": format!("Bench {n}"), "description": "a project of the queries bench"});
            let created = api
                .expect_ok(
                    api.request(Method::POST, "/projects", Some(token))
                        .json(&body),
                )
                .await?;
            created["position"].as_i64().context("project created without position")
        })
        .buffer_unordered(SETUP_PARALLELISM)
        .try_collect()
        .await?;
    positions.into_iter().max().context("no projects created")
}

/// One `GET /projects?min_position=` per user (retried while the read
/// side is behind), checking the page; this also fills each user's cache
/// entry. Returns the largest page's size in bytes.
async fn catch_up(
    api: &Api,
    tokens: &[String],
    position: i64,
    per_user: u32,
) -> anyhow::Result<usize> {
    let mut largest = 0;
    for token in tokens {
        let page = projects_at(api, token, position).await?;
        let items = serde_json::from_slice::<Value>(&page)?["items"]
            .as_array()
            .map_or(0, Vec::len);
        if items != per_user as usize {
            bail!("GET /projects listed {items} projects, expected {per_user}");
        }
        largest = largest.max(page.len());
    }
    Ok(largest)
}

/// The process-wide cache hit counter as `/metrics` shows it.
async fn cache_hits(api: &Api) -> anyhow::Result<Option<u64>> {
    let text = api
        .operations(Method::GET, "/metrics")
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(metric_value(&text, "tandem_query_cache_hits_total").map(|v| v as u64))
}

// -- the load ------------------------------------------------------------------

/// The two endpoints take turns in slices of this length, on the same
/// connections, so whatever else the machine does hits both alike.
const SLICE: Duration = Duration::from_secs(1);

#[derive(Clone, Copy)]
enum Endpoint {
    Projects = 0,
    Healthz = 1,
}

/// When the load starts, is measured and ends, and whose turn it is.
#[derive(Clone, Copy)]
struct Schedule {
    start: Instant,
    measure_from: Instant,
    end: Instant,
}

impl Schedule {
    fn new(args: &QueriesArgs) -> Self {
        let start = Instant::now();
        // Whole slices, each endpoint as many: warmup and window are
        // rounded up to an even number of slices.
        let even =
            |secs: u64| (Duration::from_secs(secs).div_duration_f64(SLICE) / 2.0).ceil() as u32 * 2;
        let measure_from = start + SLICE * even(args.warmup_secs);
        Self {
            start,
            measure_from,
            end: measure_from + SLICE * even(args.duration_secs) * 2,
        }
    }

    fn endpoint_at(&self, t: Instant) -> Endpoint {
        let slice = (t - self.start).div_duration_f64(SLICE) as u64;
        if slice % 2 == 0 {
            Endpoint::Projects
        } else {
            Endpoint::Healthz
        }
    }

    /// Measured time per endpoint: half the window.
    fn measured_per_endpoint(&self) -> Duration {
        (self.end - self.measure_from) / 2
    }
}

/// What the loops saw on one endpoint. Latencies are of 200 answers to
/// requests started in the measured window; errors are counted throughout.
#[derive(Default)]
struct Phase {
    latencies: Vec<Duration>,
    /// 200 answers, warmup included.
    answered: usize,
    /// 200 answers whose body length differed from the loop's first one.
    odd_bodies: usize,
    errors: Errors,
    /// Measured time on this endpoint (the sum of its slices).
    measured_span: Duration,
}

impl Phase {
    fn merge(&mut self, other: Phase) {
        self.latencies.extend(other.latencies);
        self.answered += other.answered;
        self.odd_bodies += other.odd_bodies;
        merge_errors(&mut self.errors, other.errors);
    }

    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.measured_span.as_secs_f64().max(f64::EPSILON)
    }
}

/// One loop per token, each on a connection of its own (see [`Wire`]),
/// so "N connections" is what the server sees and the loops share
/// nothing. Each loop sends `GET /projects` with its user's token or
/// `GET /healthz` without, as the slice says; returns (projects, healthz)
/// and the schedule they ran on.
async fn run_load(
    api: &Api,
    tokens: Vec<String>,
    args: &QueriesArgs,
) -> anyhow::Result<(Phase, Phase, Schedule, Option<CpuShares>)> {
    let schedule = Schedule::new(args);
    let cpu = CpuWindow::between(schedule.measure_from, schedule.end);
    let workers: Vec<_> = tokens
        .into_iter()
        .map(|token| tokio::spawn(get_loop(api.wire(), token, schedule)))
        .collect();
    let (mut projects, mut healthz) = (Phase::default(), Phase::default());
    for worker in workers {
        let [p, h] = worker.await?;
        projects.merge(p);
        healthz.merge(h);
    }
    projects.measured_span = schedule.measured_per_endpoint();
    healthz.measured_span = schedule.measured_per_endpoint();
    Ok((projects, healthz, schedule, cpu.await?.shares()))
}

async fn get_loop(mut wire: Wire, token: String, schedule: Schedule) -> [Phase; 2] {
    let projects_path = format!("{API_PREFIX}/projects");
    let mut phases = [Phase::default(), Phase::default()];
    let mut first_len = [None, None];
    loop {
        let started = Instant::now();
        if started >= schedule.end {
            break;
        }
        let endpoint = schedule.endpoint_at(started) as usize;
        let call = if endpoint == Endpoint::Projects as usize {
            Call {
                method: Method::GET,
                path: &projects_path,
                token: Some(&token),
                json: None,
            }
        } else {
            Call {
                method: Method::GET,
                path: "/healthz",
                token: None,
                json: None,
            }
        };
        let outcome = match wire.send(call).await {
            Ok((StatusCode::OK, body)) => Ok(body.len()),
            Ok((status, _)) => Err(status.as_u16().to_string()),
            Err(e) => Err(format!("transport: {e:#}")),
        };
        let latency = started.elapsed();
        let phase = &mut phases[endpoint];
        match outcome {
            Ok(len) => {
                phase.answered += 1;
                if *first_len[endpoint].get_or_insert(len) != len {
                    phase.odd_bodies += 1;
                }
                if started >= schedule.measure_from {
                    phase.latencies.push(latency);
                }
            }
            Err(kind) => *phase.errors.entry(kind).or_default() += 1,
        }
    }
    phases
}

// -- the summary ------------------------------------------------------------

fn print_queries_summary(args: &QueriesArgs, m: &Measured) {
    let ratio = m.projects.rate() / m.healthz.rate().max(f64::EPSILON) * 100.0;
    println!();
    println!("tandem bench queries");
    println!(
        "  setup        {} users with {} projects each over HTTP; in-process stack (sequencer, relay, projections on), database {}",
        args.concurrency, args.projects_per_user, args.database
    );
    println!(
        "  load         {} connections (one keep-alive connection and loop each, closed loop) on both endpoints in turns of {} ms; {:.0}s warmup, then {:.0}s measured per endpoint",
        args.concurrency,
        SLICE.as_millis(),
        m.warmup.as_secs_f64(),
        m.projects.measured_span.as_secs_f64()
    );
    println!(
        "  note         the load generator runs in the same process, on the same cores as the server"
    );
    print_phase(
        "GET /api/v1/projects",
        &format!("cached, a token per connection, {} B page", m.page_bytes),
        &m.projects,
    );
    print_phase(
        "GET /healthz",
        "the reference: hello-world of the same server, no auth",
        &m.healthz,
    );
    println!("  ratio        /projects = {ratio:.1} % of /healthz requests/s");
    match m.cache_hits {
        Some(hits) => println!(
            "  cache        {hits} hits of {} /projects answers (warmup included)",
            m.projects.answered
        ),
        None => println!("  cache        hits not found on /metrics"),
    }
    let errors = error_total(&m.projects.errors) + error_total(&m.healthz.errors);
    println!(
        "  errors       {errors} non-200 or failed (warmup included); {} bodies of unexpected length",
        m.projects.odd_bodies + m.healthz.odd_bodies
    );
    print_errors("               /projects ", &m.projects.errors);
    print_errors("               /healthz ", &m.healthz.errors);
    if errors > 0 || m.projects.odd_bodies + m.healthz.odd_bodies > 0 {
        println!("  WARNING      this run had errors: its figures are not clean");
    }
    println!("{}", cpu_line("cpu", m.cpu));
    println!("goal");
    let caveat = if args.concurrency == RATIO_GOAL_CONCURRENCY {
        String::new()
    } else {
        format!(
            "; the goal is stated at {RATIO_GOAL_CONCURRENCY} connections, this run used {}",
            args.concurrency
        )
    };
    println!(
        "  GET /projects (cached) >= {RATIO_GOAL_PERCENT:.0} % of hello-world req/s at {RATIO_GOAL_CONCURRENCY} connections    {} ({ratio:.1} %{caveat})",
        verdict(ratio >= RATIO_GOAL_PERCENT && m.projects.rate() > 0.0)
    );
}

fn print_phase(name: &str, what: &str, phase: &Phase) {
    println!("  {name}   ({what})");
    println!(
        "    rate       {} ok in {:.2}s = {:.1} req/s",
        phase.latencies.len(),
        phase.measured_span.as_secs_f64(),
        phase.rate()
    );
    match Percentiles::of(phase.latencies.clone()) {
        Some(l) => println!(
            "    latency ms p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.2}",
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.max)
        ),
        None => println!("    latency    no successful answers"),
    }
}
