//! `bench login-storm`: a steady background of cheap commands, measured alone
//! and while waves of concurrent logins keep Argon2 busy; and the summary.

use std::time::{Duration, Instant};

use clap::Args;
use reqwest::Method;
use serde_json::json;
use tandem_commands::WriteSideConfig;
use tokio_util::sync::CancellationToken;

use super::database::BenchDatabase;
use super::harness::{random_hex, register_users, tokens, Api, Running};
use super::measure::{
    error_total, merge_errors, ms, print_errors, send, verdict, Errors, Outcome, Percentiles,
};
use crate::settings::Common;

#[derive(Args, Clone, Debug)]
pub struct LoginStormArgs {
    /// Concurrent logins per wave (each a different account).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub logins: u32,
    /// Background users: with `--background-rate`, the commands go to them
    /// in turn; with `--background-rate 0`, each runs a loop of its own.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub background_concurrency: u32,
    /// Background commands started per second on a fixed schedule (open
    /// loop: a slow answer never delays the next start, and each latency
    /// counts from the scheduled start). 0: closed loops instead, each
    /// sending its next command as soon as the last one answered, which
    /// keeps the machine saturated, so any work added (a hash) shows as
    /// queueing of everything else.
    #[arg(long, default_value_t = 500)]
    pub background_rate: u32,
    /// Both windows together: half baseline, half storm. Shorter windows
    /// make a p99 of a few thousand samples, which wanders by ±30 % here.
    #[arg(long, default_value_t = 30)]
    pub duration_secs: u64,
    /// Background load before the baseline window starts.
    #[arg(long, default_value_t = 1)]
    pub warmup_secs: u64,
    /// The bench database: dropped and recreated; its name must contain `bench`.
    #[arg(long, default_value = "tandem_bench_login")]
    pub database: String,
    /// Keep the bench database afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Argon2 hashing threads (default: as `tandem up`).
    #[arg(long, env = "TANDEM_HASH_CONCURRENCY")]
    pub hash_concurrency: Option<usize>,
    /// Share of time each hashing thread may hash (default: as `tandem up`).
    #[arg(long, env = "TANDEM_HASH_DUTY_PERCENT",
          value_parser = clap::value_parser!(u8).range(1..=100))]
    pub hash_duty_percent: Option<u8>,
}

const P99_RATIO_GOAL: f64 = 2.0;

pub(super) async fn login_storm(common: &Common, args: &LoginStormArgs) -> anyhow::Result<()> {
    let db = BenchDatabase::recreate(&common.database_url, &args.database).await?;
    let outcome = login_storm_on(common, args, &db).await;
    let finished = db.finish(args.keep).await;
    outcome?;
    finished
}

/// When each phase starts; the storm window ends at `storm_until` (its
/// last wave may run past it).
#[derive(Clone, Copy)]
struct Timeline {
    baseline_from: Instant,
    storm_from: Instant,
    storm_until: Instant,
}

impl Timeline {
    fn new(args: &LoginStormArgs) -> Self {
        let window = Duration::from_secs(args.duration_secs.max(2)) / 2;
        let baseline_from = Instant::now() + Duration::from_secs(args.warmup_secs);
        Self {
            baseline_from,
            storm_from: baseline_from + window,
            storm_until: baseline_from + window * 2,
        }
    }

    fn window(&self) -> Duration {
        self.storm_from - self.baseline_from
    }
}

async fn login_storm_on(
    common: &Common,
    args: &LoginStormArgs,
    db: &BenchDatabase,
) -> anyhow::Result<()> {
    let loops = args.background_concurrency + args.logins;
    let mut write = WriteSideConfig::default();
    if let Some(n) = args.hash_concurrency {
        write.hash_concurrency = n.max(1);
    }
    if let Some(duty) = args.hash_duty_percent {
        write.hash_duty_percent = duty;
    }
    let running = Running::start(common, db, loops + 16, loops as usize * 2, write).await?;
    let api = &running.api;
    eprintln!(
        "bench: stack on {}, setting up {loops} users...",
        running.stack.addr
    );
    let background_tokens = tokens(api, args.background_concurrency).await?;
    let storm_password = random_hex();
    let storm_emails = register_users(api, args.logins, &storm_password).await?;
    eprintln!("bench: running the background load and the storm...");
    let timeline = Timeline::new(args);
    let stop = CancellationToken::new();
    let background: Vec<_> = if args.background_rate == 0 {
        background_tokens
            .into_iter()
            .map(|token| tokio::spawn(background_loop(api.clone(), token, stop.clone())))
            .collect()
    } else {
        let rate = args.background_rate;
        vec![tokio::spawn(background_schedule(
            api.clone(),
            background_tokens,
            rate,
            stop.clone(),
        ))]
    };
    let storm = run_storm(api, &storm_emails, &storm_password, timeline).await;
    stop.cancel();
    let mut samples = Background::default();
    for worker in background {
        samples.merge(worker.await?);
    }
    running.stop().await;
    print_storm_summary(args, timeline, &samples, &storm);
    Ok(())
}

/// One timed background request: when it started and how long it took.
struct Sample {
    started: Instant,
    latency: Duration,
}

#[derive(Default)]
struct Background {
    samples: Vec<Sample>,
    errors: Errors,
}

impl Background {
    fn merge(&mut self, other: Background) {
        self.samples.extend(other.samples);
        merge_errors(&mut self.errors, other.errors);
    }

    fn record(&mut self, started: Instant, latency: Duration, outcome: Outcome) {
        match outcome {
            Outcome::Ok { .. } => self.samples.push(Sample { started, latency }),
            Outcome::Failed(kind) => *self.errors.entry(kind).or_default() += 1,
        }
    }

    /// Latencies of the 2xx answers to requests started in `[from, until)`.
    fn window(&self, from: Instant, until: Instant) -> Vec<Duration> {
        self.samples
            .iter()
            .filter(|s| s.started >= from && s.started < until)
            .map(|s| s.latency)
            .collect()
    }
}

/// One user creating projects back to back until told to stop. `POST
/// /projects` is the cheapest authenticated command: a JWT check and one
/// new aggregate, no Argon2.
async fn background_loop(api: Api, token: String, stop: CancellationToken) -> Background {
    let mut out = Background::default();
    let mut n: u64 = 0;
    while !stop.is_cancelled() {
        let request = api
            .request(Method::POST, "/projects", Some(&token))
            .json(&json!({"name": format!("Background {n}")}));
        n += 1;
        let started = Instant::now();
        let outcome = send(request).await;
        out.record(started, started.elapsed(), outcome);
    }
    out
}

/// `rate` commands a second, the users in turn, each command in a task of
/// its own started on schedule (late starts go at once, so the offered
/// rate holds); a sample's start is its scheduled time.
async fn background_schedule(
    api: Api,
    tokens: Vec<String>,
    rate: u32,
    stop: CancellationToken,
) -> Background {
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let start = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut n: u64 = 0;
    while !stop.is_cancelled() {
        let scheduled = start + period.mul_f64(n as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let token = &tokens[(n % tokens.len() as u64) as usize];
        let request = api
            .request(Method::POST, "/projects", Some(token))
            .json(&json!({"name": format!("Background {n}")}));
        n += 1;
        let tx = tx.clone();
        tokio::spawn(async move {
            let outcome = send(request).await;
            let _ = tx.send((scheduled, scheduled.elapsed(), outcome));
        });
    }
    drop(tx);
    let mut out = Background::default();
    while let Some((started, latency, outcome)) = rx.recv().await {
        out.record(started, latency, outcome);
    }
    out
}

#[derive(Default)]
struct Storm {
    waves: usize,
    latencies: Vec<Duration>,
    errors: Errors,
    elapsed: Duration,
}

/// Waves of concurrent logins, one after the other from `storm_from` until
/// `storm_until`, so the hasher never idles during the storm window.
async fn run_storm(api: &Api, emails: &[String], password: &str, timeline: Timeline) -> Storm {
    tokio::time::sleep_until(timeline.storm_from.into()).await;
    let began = Instant::now();
    let mut storm = Storm::default();
    while Instant::now() < timeline.storm_until {
        let wave = emails.iter().map(|email| timed_login(api, email, password));
        for (latency, outcome) in futures::future::join_all(wave).await {
            match outcome {
                Outcome::Ok { .. } => storm.latencies.push(latency),
                Outcome::Failed(kind) => *storm.errors.entry(kind).or_default() += 1,
            }
        }
        storm.waves += 1;
    }
    storm.elapsed = began.elapsed();
    storm
}

async fn timed_login(api: &Api, email: &str, password: &str) -> (Duration, Outcome) {
    let request = api
        .request(Method::POST, "/auth/login", None)
        .json(&json!({"email": email, "password": password}));
    let started = Instant::now();
    let outcome = send(request).await;
    (started.elapsed(), outcome)
}

fn print_storm_summary(
    args: &LoginStormArgs,
    timeline: Timeline,
    background: &Background,
    storm: &Storm,
) {
    let window = timeline.window();
    let baseline = background.window(timeline.baseline_from, timeline.storm_from);
    let during = background.window(timeline.storm_from, timeline.storm_until);
    let (baseline_rate, during_rate) = (
        baseline.len() as f64 / window.as_secs_f64(),
        during.len() as f64 / window.as_secs_f64(),
    );
    let baseline = Percentiles::of(baseline);
    let during = Percentiles::of(during);
    println!();
    println!("tandem bench login-storm");
    let load = if args.background_rate == 0 {
        "closed loops: POST /projects back to back, each".to_owned()
    } else {
        format!(
            "open loop: {} POST /projects a second on schedule, latency from the scheduled start, in turn",
            args.background_rate
        )
    };
    println!(
        "  setup        {} background users ({load}), waves of {} concurrent logins, database {}",
        args.background_concurrency, args.logins, args.database
    );
    println!(
        "  windows      {}s warmup, then {:.1}s baseline, then {:.1}s storm",
        args.warmup_secs,
        window.as_secs_f64(),
        window.as_secs_f64()
    );
    print_window("  baseline     ", baseline, baseline_rate);
    print_window("  during storm ", during, during_rate);
    let ratio = baseline
        .zip(during)
        .map(|(b, d)| ms(d.p99) / ms(b.p99).max(f64::EPSILON));
    match ratio {
        Some(r) => println!("  p99 ratio    {r:.2}× (during storm / baseline)"),
        None => println!("  p99 ratio    n/a (a window had no successful answers)"),
    }
    print_storm_logins(storm);
    print_storm_errors(background, storm);
    println!("goal");
    let ratio_text = ratio.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}×"));
    println!(
        "  background p99 during storm <= {P99_RATIO_GOAL:.0}× baseline    {} ({ratio_text})",
        verdict(ratio.is_some_and(|r| r <= P99_RATIO_GOAL))
    );
}

fn print_window(label: &str, latency: Option<Percentiles>, rate: f64) {
    match latency {
        Some(l) => println!(
            "{label}p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} requests, {rate:.1} req/s)",
            ms(l.p50),
            ms(l.p99),
            ms(l.max),
            l.count
        ),
        None => println!("{label}no successful answers"),
    }
}

fn print_storm_logins(storm: &Storm) {
    let ok = storm.latencies.len();
    let rate = ok as f64 / storm.elapsed.as_secs_f64().max(f64::EPSILON);
    println!(
        "  logins       {ok} ok in {} waves over {:.2}s = {rate:.1} logins/s",
        storm.waves,
        storm.elapsed.as_secs_f64()
    );
    if let Some(l) = Percentiles::of(storm.latencies.clone()) {
        println!(
            "  login ms     p50 {:.2}  p99 {:.2}  max {:.2} (a wave queues behind the Argon2 bound)",
            ms(l.p50),
            ms(l.p99),
            ms(l.max)
        );
    }
}

fn print_storm_errors(background: &Background, storm: &Storm) {
    let (background_errors, login_errors) =
        (error_total(&background.errors), error_total(&storm.errors));
    println!(
        "  errors       background {background_errors} (warmup included), logins {login_errors}"
    );
    print_errors("               background ", &background.errors);
    print_errors("               login ", &storm.errors);
    if background_errors + login_errors > 0 {
        println!("  WARNING      this run had errors: its figures are not clean");
    }
}
