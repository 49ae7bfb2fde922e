//! `bench login-storm`: a steady background of cheap commands, measured alone
//! and while waves of concurrent logins keep Argon2 busy; and the summary.
//!
//! Quiet and storm alternate in slices of a few seconds, and each
//! background request is judged by whether a wave was in flight when it
//! started. A baseline window followed by a storm window compared two
//! stretches of time on a shared VM whose speed drifts: with no storm at all
//! (a wave every few seconds), that design measured ratios from 0.68× to
//! 2.08×, the size of the goal itself. Interleaved, drift falls on both
//! sides alike.

use std::time::{Duration, Instant};

use clap::Args;
use reqwest::Method;
use serde_json::json;
use tandem_commands::WriteSideConfig;
use tokio_util::sync::CancellationToken;

use super::database::BenchDatabase;
use super::harness::{
    bench_gateway_config, random_hex, register_users, tokens, Api, Roles, Running,
};
use super::machine::{cpu_line, CpuShares, CpuSum, CpuWindow};
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
    /// Measured time, quiet and storm slices together.
    #[arg(long, default_value_t = 30)]
    pub duration_secs: u64,
    /// Length of each quiet and each storm slice; they alternate, quiet
    /// first. A wave started in a storm slice runs to its end.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub slice_secs: u64,
    /// Background load before the first slice starts.
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

/// The measured span, cut into alternating slices: quiet, storm, quiet, ...
#[derive(Clone, Copy)]
struct Timeline {
    from: Instant,
    until: Instant,
    slice: Duration,
}

impl Timeline {
    fn new(args: &LoginStormArgs) -> Self {
        let from = Instant::now() + Duration::from_secs(args.warmup_secs);
        Self {
            from,
            until: from + Duration::from_secs(args.duration_secs.max(2 * args.slice_secs)),
            slice: Duration::from_secs(args.slice_secs),
        }
    }

    /// Every slice's start and end, and whether it is a storm slice
    /// (the odd ones: the first is quiet).
    fn slices(&self) -> impl Iterator<Item = (Instant, Instant, bool)> + '_ {
        (0u32..)
            .map(|k| (self.from + self.slice * k, k % 2 == 1))
            .take_while(|(start, _)| *start < self.until)
            .map(|(start, storm)| (start, (start + self.slice).min(self.until), storm))
    }

    /// The storm slices' starts and ends.
    fn storm_slices(&self) -> impl Iterator<Item = (Instant, Instant)> + '_ {
        self.slices()
            .filter(|(_, _, storm)| *storm)
            .map(|(start, end, _)| (start, end))
    }

    /// The machine's CPUs over the quiet slices and over the storm slices,
    /// measured in the background: `[quiet, storm]`.
    fn cpu_by_side(self) -> tokio::task::JoinHandle<[Option<CpuShares>; 2]> {
        tokio::spawn(async move {
            let mut sums = [CpuSum::default(), CpuSum::default()];
            for (start, end, storm) in self.slices() {
                tokio::time::sleep_until(start.into()).await;
                let window = CpuWindow::start();
                tokio::time::sleep_until(end.into()).await;
                sums[usize::from(storm)].add(window);
            }
            sums.map(|sum| sum.shares())
        })
    }
}

/// A background request that starts this close to a wave's start or end
/// counts for neither side: it overlaps the change.
const SETTLE: Duration = Duration::from_millis(100);

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
    let running = Running::start(
        common,
        db,
        loops + 16,
        loops as usize * 2,
        write,
        Roles::CommandPath,
        bench_gateway_config(),
    )
    .await?;
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
    let cpu = timeline.cpu_by_side();
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
    let cpu = cpu.await?;
    running.stop().await;
    print_storm_summary(args, timeline, &samples, &storm, cpu);
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

    /// Latencies of the 2xx answers to requests started in the measured
    /// span: (quiet, during a wave).
    fn split(&self, timeline: Timeline, waves: &[Wave]) -> (Vec<Duration>, Vec<Duration>) {
        let (mut quiet, mut storm) = (Vec::new(), Vec::new());
        for s in &self.samples {
            if s.started < timeline.from || s.started >= timeline.until {
                continue;
            }
            if waves
                .iter()
                .any(|w| w.began <= s.started && s.started < w.ended)
            {
                storm.push(s.latency);
            } else if !waves
                .iter()
                .any(|w| w.began <= s.started + SETTLE && s.started < w.ended + SETTLE)
            {
                quiet.push(s.latency);
            }
        }
        (quiet, storm)
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

/// When a wave of logins was in flight.
#[derive(Clone, Copy)]
struct Wave {
    began: Instant,
    ended: Instant,
}

#[derive(Default)]
struct Storm {
    waves: Vec<Wave>,
    latencies: Vec<Duration>,
    errors: Errors,
}

impl Storm {
    /// Time with a wave in flight.
    fn busy(&self) -> Duration {
        self.waves.iter().map(|w| w.ended - w.began).sum()
    }

    /// Within the measured span, the time with a wave in flight, widened
    /// by `margin` on both sides (the waves come in order): the time
    /// whose requests count as storm (no margin), or as neither quiet nor
    /// storm (a margin of [`SETTLE`]).
    fn covered(&self, timeline: Timeline, margin: Duration) -> Duration {
        let mut total = Duration::ZERO;
        let mut reached = timeline.from;
        for w in &self.waves {
            let began = w.began.checked_sub(margin).unwrap_or(w.began).max(reached);
            let ended = (w.ended + margin).min(timeline.until);
            total += ended.saturating_duration_since(began);
            reached = reached.max(ended);
        }
        total
    }
}

/// In each storm slice, waves of concurrent logins one after the other, so
/// the hasher never idles; the last one may run past the slice's end.
async fn run_storm(api: &Api, emails: &[String], password: &str, timeline: Timeline) -> Storm {
    let mut storm = Storm::default();
    for (start, end) in timeline.storm_slices() {
        tokio::time::sleep_until(start.into()).await;
        while Instant::now() < end {
            let began = Instant::now();
            let wave = emails.iter().map(|email| timed_login(api, email, password));
            for (latency, outcome) in futures::future::join_all(wave).await {
                match outcome {
                    Outcome::Ok { .. } => storm.latencies.push(latency),
                    Outcome::Failed(kind) => *storm.errors.entry(kind).or_default() += 1,
                }
            }
            storm.waves.push(Wave {
                began,
                ended: Instant::now(),
            });
        }
    }
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
    [quiet_cpu, storm_cpu]: [Option<CpuShares>; 2],
) {
    let (baseline, during) = background.split(timeline, &storm.waves);
    let span = timeline.until - timeline.from;
    let storm_time = storm.covered(timeline, Duration::ZERO);
    let quiet_time = span.saturating_sub(storm.covered(timeline, SETTLE));
    let (baseline_rate, during_rate) = (
        baseline.len() as f64 / quiet_time.as_secs_f64().max(f64::EPSILON),
        during.len() as f64 / storm_time.as_secs_f64().max(f64::EPSILON),
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
        "  windows      {}s warmup, then {:.0}s of alternating {}s quiet and storm slices; a request counts as storm if a wave was in flight when it started, as baseline if none was within {} ms",
        args.warmup_secs,
        span.as_secs_f64(),
        args.slice_secs,
        SETTLE.as_millis()
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
    println!("{}", cpu_line("cpu quiet", quiet_cpu));
    println!("{}", cpu_line("cpu storm", storm_cpu));
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
    let busy = storm.busy().as_secs_f64();
    let rate = ok as f64 / busy.max(f64::EPSILON);
    println!(
        "  logins       {ok} ok in {} waves over {busy:.2}s in flight = {rate:.1} logins/s",
        storm.waves.len()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    fn timeline(base: Instant) -> Timeline {
        Timeline {
            from: at(base, 1_000),
            until: at(base, 7_000),
            slice: Duration::from_secs(1),
        }
    }

    #[test]
    fn the_storm_slices_alternate_with_quiet_ones_quiet_first() {
        let base = Instant::now();
        let slices: Vec<_> = timeline(base).storm_slices().collect();
        assert_eq!(
            slices,
            vec![
                (at(base, 2_000), at(base, 3_000)),
                (at(base, 4_000), at(base, 5_000)),
                (at(base, 6_000), at(base, 7_000)),
            ]
        );
        let all: Vec<_> = timeline(base).slices().collect();
        assert_eq!(all.len(), 6, "the slices tile the measured span");
        assert_eq!(all[0], (at(base, 1_000), at(base, 2_000), false));
        assert!(all.windows(2).all(|w| w[0].1 == w[1].0 && w[0].2 != w[1].2));
    }

    #[test]
    fn requests_count_by_whether_a_wave_was_in_flight_and_those_near_a_change_not_at_all() {
        let base = Instant::now();
        let waves = [
            Wave {
                began: at(base, 2_000),
                ended: at(base, 2_500),
            },
            Wave {
                began: at(base, 2_500),
                ended: at(base, 3_200),
            },
        ];
        let sample = |ms, latency_ms| Sample {
            started: at(base, ms),
            latency: Duration::from_millis(latency_ms),
        };
        let background = Background {
            samples: vec![
                sample(500, 99),   // warmup: neither
                sample(1_500, 1),  // quiet
                sample(1_950, 98), // just before a wave: neither
                sample(2_000, 2),  // storm
                sample(3_100, 3),  // storm (the second wave)
                sample(3_250, 97), // just after: neither
                sample(3_400, 4),  // quiet
                sample(7_000, 96), // past the span: neither
            ],
            errors: Errors::default(),
        };
        let (quiet, storm) = background.split(timeline(base), &waves);
        let ms = |d: Vec<Duration>| d.iter().map(Duration::as_millis).collect::<Vec<_>>();
        assert_eq!(ms(quiet), vec![1, 4]);
        assert_eq!(ms(storm), vec![2, 3]);

        let storm = Storm {
            waves: waves.to_vec(),
            ..Storm::default()
        };
        assert_eq!(
            storm.covered(timeline(base), Duration::ZERO),
            Duration::from_millis(1_200)
        );
        // Widened waves overlap: counted once.
        assert_eq!(
            storm.covered(timeline(base), SETTLE),
            Duration::from_millis(1_400)
        );
    }
}
