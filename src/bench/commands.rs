//! `bench commands`: the command path over HTTP, then pgbench single-row
//! inserts into the same Postgres at the same concurrency; and the summary.

use std::time::{Duration, Instant};

use clap::Args;
use reqwest::Method;
use serde_json::json;
use tandem_commands::WriteSideConfig;

use super::database::BenchDatabase;
use super::harness::{
    actors as actors_of, bench_gateway_config, Actor, Api, Roles, Running, API_PREFIX,
};
use super::machine::{cpu_line, CpuSum, CpuWindow};
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
    /// Measured time of each side, after the warmup, in rounds of
    /// `--slice-secs` (the last one shorter if it does not divide).
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// One round: the command path this long, then pgbench as long.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub slice_secs: u64,
    /// Load before measuring (connections, caches, JIT-free steady state).
    #[arg(long, default_value_t = 2)]
    pub warmup_secs: u64,
    /// The bench database: dropped and recreated; its name must contain `bench`.
    #[arg(long, default_value = "tandem_bench")]
    pub database: String,
    /// Keep the bench database afterwards, to look at what the run wrote.
    #[arg(long)]
    pub keep: bool,
    /// Postgres connections of the stack's pool (default: concurrency +
    /// 16); the event store keeps two more of its own.
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
    let http_connections = args.concurrency as usize * 2;
    let mut gateway = None;
    let mut actors = Vec::new();
    let mut load = CommandLoad::default();
    let mut pgbench = PgbenchRounds::default();
    for (round, secs) in rounds(args.duration_secs, args.slice_secs).enumerate() {
        let running = Running::start(
            common,
            db,
            pool_size,
            http_connections,
            WriteSideConfig::default(),
            Roles::CommandPath,
            gateway.take().unwrap_or_else(bench_gateway_config),
        )
        .await?;
        if actors.is_empty() {
            eprintln!(
                "bench: stack on {}, setting up {} users...",
                running.stack.addr, args.concurrency
            );
            actors = actors_of(&running.api, args.concurrency).await?;
        }
        eprintln!(
            "bench: round {}: the command load for {secs}s...",
            round + 1
        );
        let warmup = if round == 0 {
            args.warmup_secs
        } else {
            RESTART_WARMUP_SECS
        };
        let slice = Slice {
            warmup: Duration::from_secs(warmup),
            measured: Duration::from_secs(secs),
            // Every round writes new files: a name never comes back.
            first_command: round as u64 * COMMANDS_PER_ROUND,
        };
        load.merge(drive_commands(&running.api, &actors, slice).await?);
        gateway = Some(running.gateway.clone());
        // Stopped: its pool's connections would count against the
        // server's `max_connections` beside pgbench's.
        running.stop().await;
        eprintln!("bench: round {}: pgbench for {secs}s...", round + 1);
        let window = CpuWindow::start();
        let outcome = run_pgbench(args, db, secs).await;
        pgbench.record(outcome, window);
    }
    print_commands_summary(args, pool_size, &load, &pgbench);
    Ok(())
}

/// Warmup of every round after the first: the database and the users are
/// warm, the new stack's connections and caches are not.
const RESTART_WARMUP_SECS: u64 = 1;
/// The command numbers of round `k` start at `k` times this.
const COMMANDS_PER_ROUND: u64 = 1 << 32;

/// The measured seconds of each round: `slice` each, the rest last.
fn rounds(total: u64, slice: u64) -> impl Iterator<Item = u64> {
    let slice = slice.max(1);
    (0..total.max(1).div_ceil(slice)).map(move |k| slice.min(total.max(1) - k * slice))
}

/// pgbench's rounds: each one's figures, and the CPUs over all of them.
#[derive(Default)]
struct PgbenchRounds {
    runs: Vec<Pgbench>,
    failed: Option<anyhow::Error>,
    cpu: CpuSum,
}

impl PgbenchRounds {
    fn record(&mut self, outcome: anyhow::Result<Pgbench>, window: CpuWindow) {
        self.cpu.add(window);
        match outcome {
            Ok(run) => self.runs.push(run),
            Err(e) => self.failed = Some(e),
        }
    }

    /// The mean tps of its rounds (each ran as long as the command load
    /// before it), unless a round failed.
    fn tps(&self) -> Option<f64> {
        (self.failed.is_none() && !self.runs.is_empty())
            .then(|| self.runs.iter().map(|r| r.tps).sum::<f64>() / self.runs.len() as f64)
    }
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

/// Every round's load, added up.
#[derive(Default)]
struct CommandLoad {
    tally: Tally,
    /// From the end of each round's warmup until its last measured answer.
    measured_span: Duration,
    /// Each round's rate, in order.
    rates: Vec<f64>,
    /// The machine's CPUs over the measured windows.
    cpu: CpuSum,
}

impl CommandLoad {
    fn merge(&mut self, round: CommandLoad) {
        self.rates.extend(round.rates);
        self.tally.merge(round.tally);
        self.measured_span += round.measured_span;
        self.cpu.merge(round.cpu);
    }
}

/// One round of the command load.
#[derive(Clone, Copy)]
struct Slice {
    warmup: Duration,
    measured: Duration,
    /// Each loop's first command number.
    first_command: u64,
}

async fn drive_commands(api: &Api, actors: &[Actor], slice: Slice) -> anyhow::Result<CommandLoad> {
    let measure_from = Instant::now() + slice.warmup;
    let end = measure_from + slice.measured;
    let cpu = CpuWindow::between(measure_from, end);
    let workers: Vec<_> = actors
        .iter()
        .map(|actor| {
            let run = command_loop(
                api.clone(),
                actor.clone(),
                slice.first_command,
                measure_from,
                end,
            );
            tokio::spawn(run)
        })
        .collect();
    let mut tally = Tally::default();
    for worker in workers {
        tally.merge(worker.await?);
    }
    let measured_span = measure_from.elapsed();
    Ok(CommandLoad {
        rates: vec![tally.latencies.len() as f64 / measured_span.as_secs_f64()],
        tally,
        measured_span,
        cpu: cpu.await?,
    })
}

/// One user's loop, on a connection of its own: a command, its answer,
/// the next command. Requests started before `measure_from` are the warmup.
async fn command_loop(
    api: Api,
    actor: Actor,
    first: u64,
    measure_from: Instant,
    end: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let mut wire = api.wire();
    let mut n = first;
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
    pgbench: &PgbenchRounds,
) {
    let tally = &load.tally;
    let rate = tally.latencies.len() as f64 / load.measured_span.as_secs_f64();
    let latency = Percentiles::of(tally.latencies.clone());
    println!();
    println!("tandem bench commands");
    println!(
        "  setup        {} users over HTTP, in-process stack (sequencer on, a pool of {pool_size} Postgres connections and the event store's 2), database {}",
        args.concurrency, args.database
    );
    println!(
        "  load         POST /projects and PUT /workspaces/{{id}}/files/f{{n}}.txt alternately; {} rounds of the command load then pgbench, {}s each side ({}s in all), so the machine's drift falls on both; {}s warmup, {RESTART_WARMUP_SECS}s in later rounds (a new stack each round)",
        load.rates.len(),
        args.slice_secs,
        args.duration_secs,
        args.warmup_secs
    );
    println!(
        "  commands     {} ok in {:.2}s = {rate:.1} req/s (rounds: {})",
        tally.latencies.len(),
        load.measured_span.as_secs_f64(),
        figures(&load.rates)
    );
    print_latency("  latency ms  ", latency);
    print_command_checks(tally);
    let pgbench_tps = print_pgbench(pgbench);
    let ratio = pgbench_tps.map(|tps| rate / tps * 100.0);
    match ratio {
        Some(r) => println!("  ratio        commands = {r:.1} % of pgbench"),
        None => println!("  ratio        n/a (no pgbench figure)"),
    }
    println!("{}", cpu_line("cpu commands", load.cpu.shares()));
    println!("{}", cpu_line("cpu pgbench", pgbench.cpu.shares()));
    print_command_goals(args.concurrency, ratio, latency);
}

/// `1234.5, 1200.0, ...`
fn figures(values: &[f64]) -> String {
    let texts: Vec<String> = values.iter().map(|v| format!("{v:.1}")).collect();
    texts.join(", ")
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

/// Prints pgbench's line; returns its tps when every round ran.
fn print_pgbench(pgbench: &PgbenchRounds) -> Option<f64> {
    if let Some(e) = &pgbench.failed {
        println!("  pgbench      did not run: {e:#}");
        return None;
    }
    let tps = pgbench.tps()?;
    let first = &pgbench.runs[0];
    let latency =
        pgbench.runs.iter().map(|r| r.latency_avg_ms).sum::<f64>() / pgbench.runs.len() as f64;
    let rates: Vec<f64> = pgbench.runs.iter().map(|r| r.tps).collect();
    println!(
        "  pgbench      tps {tps:.1} (rounds: {}), latency avg {latency:.2} ms ({} clients, {} threads, prepared single-row INSERT; tandem stack stopped first)",
        figures(&rates),
        first.clients,
        first.threads,
    );
    Some(tps)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_are_whole_slices_and_the_rest_comes_last() {
        let of = |total, slice| rounds(total, slice).collect::<Vec<_>>();
        assert_eq!(of(10, 5), [5, 5]);
        assert_eq!(of(12, 5), [5, 5, 2]);
        assert_eq!(of(3, 5), [3]);
        assert_eq!(of(0, 5), [1], "at least one round of one second");
    }

    #[test]
    fn pgbench_is_the_mean_of_its_rounds_and_nothing_if_one_failed() {
        let run = |tps| Pgbench {
            tps,
            latency_avg_ms: 1.0,
            clients: 64,
            threads: 2,
        };
        let mut rounds = PgbenchRounds::default();
        assert_eq!(rounds.tps(), None);
        rounds.record(Ok(run(1000.0)), CpuWindow::start());
        rounds.record(Ok(run(3000.0)), CpuWindow::start());
        assert_eq!(rounds.tps(), Some(2000.0));
        rounds.record(
            Err(anyhow::anyhow!("pgbench: not found")),
            CpuWindow::start(),
        );
        assert_eq!(rounds.tps(), None);
    }
}
