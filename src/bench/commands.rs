//! `bench commands`: the command path over HTTP, then pgbench single-row
//! inserts into the same Postgres at the same concurrency; and the summary.

use std::time::{Duration, Instant};

use clap::Args;
use reqwest::Method;
use serde_json::json;
use tandem_commands::WriteSideConfig;

use super::database::BenchDatabase;
use super::harness::{actors, Actor, Api, Running, API_PREFIX};
use super::machine::{cpu_line, CpuShares, CpuWindow};
use super::measure::{
    error_total, merge_errors, ms, print_errors, send_on, verdict, Errors, Outcome, Percentiles,
};
use super::pgbench::{run_pgbench, Pgbench};
use super::wire::Call;
use crate::settings::Common;

#[derive(Args, Clone, Debug)]
pub struct CommandsArgs {
    /// Concurrent users, each with its own HTTP loop (and pgbench clients).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
    /// Measured time, after the warmup.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Load before measuring (connections, caches, JIT-free steady state).
    #[arg(long, default_value_t = 2)]
    pub warmup_secs: u64,
    /// The bench database: dropped and recreated; its name must contain `bench`.
    #[arg(long, default_value = "tandem_bench")]
    pub database: String,
    /// Keep the bench database afterwards, to look at what the run wrote.
    #[arg(long)]
    pub keep: bool,
    /// Postgres connections of the stack (default: concurrency + 16).
    #[arg(long)]
    pub pool_size: Option<u32>,
    /// The pgbench program.
    #[arg(long, env = "PGBENCH", default_value = "pgbench")]
    pub pgbench: String,
}

pub(super) async fn commands(common: &Common, args: &CommandsArgs) -> anyhow::Result<()> {
    let db = BenchDatabase::recreate(&common.database_url, &args.database).await?;
    let outcome = commands_on(common, args, &db).await;
    let finished = db.finish(args.keep).await;
    outcome?;
    finished
}

async fn commands_on(
    common: &Common,
    args: &CommandsArgs,
    db: &BenchDatabase,
) -> anyhow::Result<()> {
    let pool_size = args.pool_size.unwrap_or(args.concurrency + 16);
    let write = WriteSideConfig::default();
    let running =
        Running::start(common, db, pool_size, args.concurrency as usize * 2, write).await?;
    eprintln!(
        "bench: stack on {}, setting up {} users...",
        running.stack.addr, args.concurrency
    );
    let actors = actors(&running.api, args.concurrency).await?;
    eprintln!("bench: running the command load...");
    let load = drive_commands(&running.api, actors, args).await?;
    running.stop().await;
    eprintln!("bench: stack stopped; running pgbench...");
    let window = CpuWindow::start();
    let pgbench = run_pgbench(args, db).await;
    let pgbench_cpu = window.finish();
    print_commands_summary(args, pool_size, &load, &pgbench, pgbench_cpu);
    Ok(())
}

/// What the command loops saw. Latencies are of 2xx answers in the
/// measured window; errors and positions are checked on every answer,
/// warmup included.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    errors: Errors,
    answered: usize,
    null_positions: usize,
}

impl Tally {
    fn record(&mut self, outcome: Outcome, latency: Duration, measured: bool) {
        match outcome {
            Outcome::Ok { has_position } => {
                self.answered += 1;
                self.null_positions += usize::from(!has_position);
                if measured {
                    self.latencies.push(latency);
                }
            }
            Outcome::Failed(kind) => *self.errors.entry(kind).or_default() += 1,
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latencies.extend(other.latencies);
        merge_errors(&mut self.errors, other.errors);
        self.answered += other.answered;
        self.null_positions += other.null_positions;
    }
}

struct CommandLoad {
    tally: Tally,
    /// From the end of the warmup until the last measured answer.
    measured_span: Duration,
    /// The machine's CPUs over the measured window.
    cpu: Option<CpuShares>,
}

async fn drive_commands(
    api: &Api,
    actors: Vec<Actor>,
    args: &CommandsArgs,
) -> anyhow::Result<CommandLoad> {
    let measure_from = Instant::now() + Duration::from_secs(args.warmup_secs);
    let end = measure_from + Duration::from_secs(args.duration_secs);
    let cpu = CpuWindow::between(measure_from, end);
    let workers: Vec<_> = actors
        .into_iter()
        .map(|actor| tokio::spawn(command_loop(api.clone(), actor, measure_from, end)))
        .collect();
    let mut tally = Tally::default();
    for worker in workers {
        tally.merge(worker.await?);
    }
    Ok(CommandLoad {
        tally,
        measured_span: measure_from.elapsed(),
        cpu: cpu.await?,
    })
}

/// One user's loop, on a connection of its own: a command, its answer,
/// the next command. Requests started before `measure_from` are the warmup.
async fn command_loop(api: Api, actor: Actor, measure_from: Instant, end: Instant) -> Tally {
    let mut tally = Tally::default();
    let mut wire = api.wire();
    let mut n: u64 = 0;
    while Instant::now() < end {
        let (method, path, body) = next_command(&actor, n);
        n += 1;
        let call = Call {
            method,
            path: &path,
            token: Some(&actor.token),
            json: Some(body.to_string().into_bytes()),
        };
        let started = Instant::now();
        let outcome = send_on(&mut wire, call).await;
        tally.record(outcome, started.elapsed(), started >= measure_from);
    }
    tally
}

/// Alternates a new aggregate (`ProjectCreated`) and a new file in the
/// user's workspace (`FileSaved`, a first version each time).
fn next_command(actor: &Actor, n: u64) -> (Method, String, serde_json::Value) {
    if n % 2 == 0 {
        (
            Method::POST,
            format!("{API_PREFIX}/projects"),
            json!({"name": format!("Bench {n}")}),
        )
    } else {
        (
            Method::PUT,
            format!("{API_PREFIX}/workspaces/{}/files/f{n}.txt", actor.workspace),
            json!({"content": file_content(n)}),
        )
    }
}

/// About 100 bytes, different each time.
fn file_content(n: u64) -> String {
    format!(
        "{n:>12} the quick brown fox jumps over the lazy dog; pack my box with five dozen jugs\n"
    )
}

// -- the summary ------------------------------------------------------------

const RATE_GOAL_PERCENT: f64 = 50.0;
const P99_GOAL: Duration = Duration::from_millis(20);
const P99_GOAL_CONCURRENCY: u32 = 64;

fn print_commands_summary(
    args: &CommandsArgs,
    pool_size: u32,
    load: &CommandLoad,
    pgbench: &anyhow::Result<Pgbench>,
    pgbench_cpu: Option<CpuShares>,
) {
    let tally = &load.tally;
    let rate = tally.latencies.len() as f64 / load.measured_span.as_secs_f64();
    let latency = Percentiles::of(tally.latencies.clone());
    println!();
    println!("tandem bench commands");
    println!(
        "  setup        {} users over HTTP, in-process stack (sequencer on, {pool_size} Postgres connections), database {}",
        args.concurrency, args.database
    );
    println!(
        "  load         POST /projects and PUT /workspaces/{{id}}/files/f{{n}}.txt alternately, {}s warmup + {}s measured",
        args.warmup_secs, args.duration_secs
    );
    println!(
        "  commands     {} ok in {:.2}s = {rate:.1} req/s",
        tally.latencies.len(),
        load.measured_span.as_secs_f64()
    );
    print_latency("  latency ms  ", latency);
    print_command_checks(tally);
    let pgbench_tps = print_pgbench(args, pgbench);
    let ratio = pgbench_tps.map(|tps| rate / tps * 100.0);
    match ratio {
        Some(r) => println!("  ratio        commands = {r:.1} % of pgbench"),
        None => println!("  ratio        n/a (no pgbench figure)"),
    }
    println!("{}", cpu_line("cpu commands", load.cpu));
    println!("{}", cpu_line("cpu pgbench", pgbench_cpu));
    print_command_goals(args.concurrency, ratio, latency);
}

fn print_latency(label: &str, latency: Option<Percentiles>) {
    match latency {
        Some(l) => println!(
            "{label}p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}  ({} samples)",
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.max),
            l.count
        ),
        None => println!("{label}no successful answers"),
    }
}

fn print_command_checks(tally: &Tally) {
    let errors = error_total(&tally.errors);
    println!("  errors       {errors} (warmup included)");
    print_errors("               ", &tally.errors);
    println!(
        "  positions    {} null of {} 2xx answers (warmup included)",
        tally.null_positions, tally.answered
    );
    if errors > 0 || tally.null_positions > 0 {
        println!("  WARNING      this run had errors or null positions: its figures are not clean");
    }
}

/// Prints pgbench's line; returns its tps when it ran.
fn print_pgbench(args: &CommandsArgs, pgbench: &anyhow::Result<Pgbench>) -> Option<f64> {
    match pgbench {
        Ok(p) => {
            println!(
                "  pgbench      tps {:.1}, latency avg {:.2} ms ({} clients, {} threads, {}s, prepared single-row INSERT; tandem stack stopped first)",
                p.tps, p.latency_avg_ms, p.clients, p.threads, args.duration_secs
            );
            Some(p.tps)
        }
        Err(e) => {
            println!("  pgbench      did not run: {e:#}");
            None
        }
    }
}

fn print_command_goals(concurrency: u32, ratio: Option<f64>, latency: Option<Percentiles>) {
    println!("goals");
    let rate_met = ratio.is_some_and(|r| r >= RATE_GOAL_PERCENT);
    let ratio_text = ratio.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.1} %"));
    println!(
        "  command rate >= {RATE_GOAL_PERCENT:.0} % of pgbench    {} ({ratio_text})",
        verdict(rate_met)
    );
    let p99 = latency.map(|l| l.p99);
    let p99_met = p99.is_some_and(|p| p < P99_GOAL);
    let p99_text = p99.map_or_else(|| "n/a".to_owned(), |p| format!("{:.2} ms", ms(p)));
    let caveat = if concurrency == P99_GOAL_CONCURRENCY {
        String::new()
    } else {
        format!("; the goal is stated at {P99_GOAL_CONCURRENCY}, this run used {concurrency}")
    };
    println!(
        "  p99 < {} ms at concurrency {P99_GOAL_CONCURRENCY}    {} ({p99_text}{caveat})",
        P99_GOAL.as_millis(),
        verdict(p99_met)
    );
}
