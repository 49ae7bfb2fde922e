//! `tandem bench`: benchmark drivers. They are measurements, not tests:
//! once a run finished they print their figures, the goals and PASS/MISS,
//! and exit 0 either way.
//!
//! This module owns everything a run needs: a dedicated bench database
//! (dropped, created and migrated on the server of `DATABASE_URL`, dropped
//! again at the end unless `--keep`), a whole stack started in-process on
//! 127.0.0.1:0 with a fresh Redis/NATS namespace and rate limits out of
//! the way, the HTTP load loops, the pgbench baseline, and the summaries.
//!
//! Run them from a release build, with Postgres, Redis and NATS reachable
//! at `DATABASE_URL`, `REDIS_URL` and `NATS_URL` (local defaults otherwise):
//!
//! ```text
//! cargo build --release --bin tandem
//! target/release/tandem bench commands [--concurrency 64] [--duration-secs 10] [--warmup-secs 2]
//! target/release/tandem bench login-storm [--logins 32] [--background-concurrency 8] [--duration-secs 10]
//! ```
//!
//! - `commands`: `concurrency` users alternate `POST /projects` and
//!   `PUT /workspaces/{id}/files/f{n}.txt` over real HTTP; then, with the
//!   stack stopped, pgbench runs single-row inserts into the same Postgres
//!   at the same concurrency. Goals: a command rate of at least 50 % of
//!   pgbench's, and p99 under 20 ms at concurrency 64.
//! - `login-storm`: a steady background of `POST /projects` is measured
//!   alone, then while waves of concurrent logins keep Argon2 busy. Goal:
//!   the background p99 during the storm at most twice the baseline's.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use futures::{StreamExt, TryStreamExt};
use rand::RngCore;
use reqwest::{Client, Method, RequestBuilder};
use serde_json::{json, Value};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tandem_commands::db::PoolConfig;
use tandem_commands::sequencer::SequencerConfig;
use tandem_commands::WriteSideConfig;
use tandem_gateway::{GatewayConfig, Secret};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::settings::Common;
use crate::stack::{self, Endpoints, Stack, StackOptions};

#[derive(Subcommand, Clone, Debug)]
pub enum Which {
    /// The command path vs pgbench single-row inserts, same Postgres, same concurrency.
    Commands(CommandsArgs),
    /// Latency of ordinary requests while concurrent logins keep Argon2 busy.
    LoginStorm(LoginStormArgs),
}

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

#[derive(Args, Clone, Debug)]
pub struct LoginStormArgs {
    /// Concurrent logins per wave (each a different account).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub logins: u32,
    /// Concurrent loops of cheap authenticated commands, measured throughout.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub background_concurrency: u32,
    /// Both windows together: half baseline, half storm.
    #[arg(long, default_value_t = 10)]
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
}

pub async fn run(common: &Common, which: &Which) -> anyhow::Result<()> {
    match which {
        Which::Commands(args) => commands(common, args).await,
        Which::LoginStorm(args) => login_storm(common, args).await,
    }
}

// ---------------------------------------------------------------------------
// The bench database

/// A throwaway database on the server of `DATABASE_URL`.
struct BenchDatabase {
    /// Connection options of the bench database itself.
    options: PgConnectOptions,
    name: String,
    url: String,
}

impl BenchDatabase {
    /// Drops any leftover of an earlier run, creates and migrates it.
    async fn recreate(database_url: &str, name: &str) -> anyhow::Result<Self> {
        check_bench_name(name)?;
        let server = PgConnectOptions::from_str(database_url)
            .context("parsing DATABASE_URL")?
            .disable_statement_logging();
        let db = Self {
            options: server.clone().database(name),
            name: name.to_owned(),
            url: server.database(name).to_url_lossy().to_string(),
        };
        db.admin(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await?;
        db.admin(&format!("CREATE DATABASE {name}")).await?;
        stack::migrate(&db.url).await?;
        Ok(db)
    }

    /// Drops it, unless asked to keep it. `FORCE`: a background task of the
    /// stopped stack may still hold a connection.
    async fn finish(self, keep: bool) -> anyhow::Result<()> {
        if keep {
            println!("kept database {}", self.name);
            return Ok(());
        }
        self.admin(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .await
    }

    /// Runs `sql` on the server's `postgres` database (CREATE/DROP DATABASE
    /// cannot run inside the database they target).
    async fn admin(&self, sql: &str) -> anyhow::Result<()> {
        let mut conn = PgConnection::connect_with(&self.options.clone().database("postgres"))
            .await
            .context("connecting to the `postgres` database of DATABASE_URL's server")?;
        sqlx::query(sql)
            .execute(&mut conn)
            .await
            .with_context(|| format!("running `{sql}`"))?;
        conn.close().await?;
        Ok(())
    }

    async fn connect(&self) -> anyhow::Result<PgConnection> {
        Ok(PgConnection::connect_with(&self.options).await?)
    }
}

/// The name goes into DROP DATABASE unquoted, so it must be a plain
/// identifier; and it must say `bench`, so a slip cannot drop real data.
fn check_bench_name(name: &str) -> anyhow::Result<()> {
    let plain = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !plain || !name.contains("bench") {
        bail!("bench database {name:?} must be lowercase [a-z0-9_] and contain \"bench\"");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The stack under test, and talking to it

/// The gateway's base URL and a client with enough pooled connections for
/// every concurrent loop (so no request pays for a new TCP connection).
#[derive(Clone)]
struct Api {
    base: String,
    client: Client,
}

impl Api {
    fn new(addr: SocketAddr, connections: usize) -> anyhow::Result<Self> {
        let client = Client::builder()
            .pool_max_idle_per_host(connections)
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self {
            base: format!("http://{addr}/api/v1"),
            client,
        })
    }

    fn request(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let request = self.client.request(method, format!("{}{path}", self.base));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends a setup request (not measured): anything but 2xx is an error.
    async fn expect_ok(&self, request: RequestBuilder) -> anyhow::Result<Value> {
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("setup request failed with {status}: {text}");
        }
        Ok(serde_json::from_str(&text)?)
    }
}

/// A whole stack in this process, as `tandem up` runs it (sequencer on,
/// default write side), minus the rate limits, which would measure
/// themselves instead of the command path.
struct Running {
    stack: Stack,
    api: Api,
}

impl Running {
    async fn start(
        common: &Common,
        db: &BenchDatabase,
        pool_size: u32,
        http_connections: usize,
        write: WriteSideConfig,
    ) -> anyhow::Result<Self> {
        let endpoints = Endpoints {
            database_url: db.url.clone(),
            redis_url: common.redis_url.clone(),
            nats_url: common.nats_url.clone(),
            pool: PoolConfig {
                max_connections: pool_size,
                acquire_timeout: Duration::from_secs(30),
            },
        };
        let connections = stack::connect(&endpoints).await?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let options = StackOptions {
            gateway: bench_gateway_config(),
            write,
            sequencer: Some(SequencerConfig::default()),
        };
        let stack = Stack::start(connections, listener, options).await?;
        let api = Api::new(stack.addr, http_connections)?;
        Ok(Self { stack, api })
    }

    /// Stops the roles and closes the pool, so its connections do not
    /// count against the server's `max_connections` during pgbench.
    async fn stop(self) {
        self.stack.stop().await;
    }
}

/// A random JWT key and a fresh namespace per run, so a bench never shares
/// keys, Redis state or subjects with a real deployment.
fn bench_gateway_config() -> GatewayConfig {
    let mut config = GatewayConfig::with_secret(Secret::new(random_hex().into_bytes()));
    config.namespace = format!("bench{}", Uuid::new_v4().simple());
    config.rate_limits.auth_per_ip = 1_000_000;
    config.rate_limits.login_per_account = 1_000_000;
    config.rate_limits.api_per_user = 1_000_000;
    config
}

/// 256 random bits as hex: the JWT key, and the bench users' password.
fn random_hex() -> String {
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------
// Setup: users, projects, workspaces (not timed)

/// Argon2 runs behind a small semaphore anyway; more setup requests in
/// flight would only queue.
const SETUP_PARALLELISM: usize = 8;

/// Registers `count` users with one password; returns their emails.
async fn register_users(api: &Api, count: u32, password: &str) -> anyhow::Result<Vec<String>> {
    let run = Uuid::new_v4().simple().to_string();
    futures::stream::iter(0..count)
        .map(|i| {
            let email = format!("bench{i}-{run}@example.com");
            let body = json!({"email": email, "password": password, "display_name": "Bench"});
            async move {
                api.expect_ok(
                    api.request(Method::POST, "/auth/register", None)
                        .json(&body),
                )
                .await?;
                Ok::<_, anyhow::Error>(email)
            }
        })
        .buffered(SETUP_PARALLELISM)
        .try_collect()
        .await
}

/// Logs every user in; returns their access tokens.
async fn log_in_all(api: &Api, emails: &[String], password: &str) -> anyhow::Result<Vec<String>> {
    futures::stream::iter(emails)
        .map(|email| async move {
            let body = json!({"email": email, "password": password});
            let tokens = api
                .expect_ok(api.request(Method::POST, "/auth/login", None).json(&body))
                .await?;
            let access = tokens["access_token"].as_str().context("no access_token")?;
            Ok::<_, anyhow::Error>(access.to_owned())
        })
        .buffered(SETUP_PARALLELISM)
        .try_collect()
        .await
}

/// `count` logged-in users.
async fn tokens(api: &Api, count: u32) -> anyhow::Result<Vec<String>> {
    let password = random_hex();
    let emails = register_users(api, count, &password).await?;
    log_in_all(api, &emails, &password).await
}

/// A logged-in user with a workspace of its own to write files into.
struct Actor {
    token: String,
    workspace: String,
}

async fn actor(api: &Api, token: String) -> anyhow::Result<Actor> {
    let project = api
        .expect_ok(
            api.request(Method::POST, "/projects", Some(&token))
                .json(&json!({"name": "Bench"})),
        )
        .await?;
    let project = project["id"].as_str().context("project without id")?;
    let workspace = api
        .expect_ok(
            api.request(
                Method::POST,
                &format!("/projects/{project}/workspaces"),
                Some(&token),
            )
            .json(&json!({"name": "bench"})),
        )
        .await?;
    let workspace = workspace["id"].as_str().context("workspace without id")?;
    Ok(Actor {
        workspace: workspace.to_owned(),
        token,
    })
}

async fn actors(api: &Api, count: u32) -> anyhow::Result<Vec<Actor>> {
    let tokens = tokens(api, count).await?;
    futures::stream::iter(tokens)
        .map(|token| actor(api, token))
        .buffered(SETUP_PARALLELISM)
        .try_collect()
        .await
}

// ---------------------------------------------------------------------------
// Sending measured requests

/// What one measured request came back with.
enum Outcome {
    Ok {
        has_position: bool,
    },
    /// `"<status> <code>"` or `"transport: ..."`, counted by kind.
    Failed(String),
}

async fn send(request: RequestBuilder) -> Outcome {
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => return Outcome::Failed(format!("transport: {e}")),
    };
    let status = response.status();
    // The body is part of the answer: read it inside the timed span.
    let body = match response.bytes().await {
        Ok(bytes) => serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
        Err(e) => return Outcome::Failed(format!("transport (body): {e}")),
    };
    if status.is_success() {
        Outcome::Ok {
            has_position: body["position"].is_i64(),
        }
    } else {
        let code = body["code"].as_str().unwrap_or("(no code)");
        Outcome::Failed(format!("{} {code}", status.as_u16()))
    }
}

type Errors = BTreeMap<String, usize>;

fn merge_errors(into: &mut Errors, from: Errors) {
    for (kind, n) in from {
        *into.entry(kind).or_default() += n;
    }
}

fn error_total(errors: &Errors) -> usize {
    errors.values().sum()
}

fn print_errors(indent: &str, errors: &Errors) {
    for (kind, n) in errors {
        println!("{indent}{n:>8} × {kind}");
    }
}

// ---------------------------------------------------------------------------
// Latency statistics

#[derive(Clone, Copy)]
struct Percentiles {
    count: usize,
    p50: Duration,
    p90: Duration,
    p99: Duration,
    max: Duration,
}

impl Percentiles {
    /// `None` without samples.
    fn of(mut samples: Vec<Duration>) -> Option<Self> {
        samples.sort_unstable();
        let max = *samples.last()?;
        Some(Self {
            count: samples.len(),
            p50: nearest_rank(&samples, 50.0),
            p90: nearest_rank(&samples, 90.0),
            p99: nearest_rank(&samples, 99.0),
            max,
        })
    }
}

/// The nearest-rank percentile of a sorted, non-empty slice.
fn nearest_rank(sorted: &[Duration], p: f64) -> Duration {
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn verdict(met: bool) -> &'static str {
    if met {
        "PASS"
    } else {
        "MISS"
    }
}

// ---------------------------------------------------------------------------
// `bench commands`

async fn commands(common: &Common, args: &CommandsArgs) -> anyhow::Result<()> {
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
    let pgbench = run_pgbench(args, db).await;
    print_commands_summary(args, pool_size, &load, &pgbench);
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
}

async fn drive_commands(
    api: &Api,
    actors: Vec<Actor>,
    args: &CommandsArgs,
) -> anyhow::Result<CommandLoad> {
    let measure_from = Instant::now() + Duration::from_secs(args.warmup_secs);
    let end = measure_from + Duration::from_secs(args.duration_secs);
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
    })
}

/// One user's loop: a command, its answer, the next command. Requests
/// started before `measure_from` are the warmup.
async fn command_loop(api: Api, actor: Actor, measure_from: Instant, end: Instant) -> Tally {
    let mut tally = Tally::default();
    let mut n: u64 = 0;
    while Instant::now() < end {
        let request = next_command(&api, &actor, n);
        n += 1;
        let started = Instant::now();
        let outcome = send(request).await;
        tally.record(outcome, started.elapsed(), started >= measure_from);
    }
    tally
}

/// Alternates a new aggregate (`ProjectCreated`) and a new file in the
/// user's workspace (`FileSaved`, a first version each time).
fn next_command(api: &Api, actor: &Actor, n: u64) -> RequestBuilder {
    let token = Some(actor.token.as_str());
    if n % 2 == 0 {
        api.request(Method::POST, "/projects", token)
            .json(&json!({"name": format!("Bench {n}")}))
    } else {
        let path = format!("/workspaces/{}/files/f{n}.txt", actor.workspace);
        api.request(Method::PUT, &path, token)
            .json(&json!({"content": file_content(n)}))
    }
}

/// About 100 bytes, different each time.
fn file_content(n: u64) -> String {
    format!(
        "{n:>12} the quick brown fox jumps over the lazy dog; pack my box with five dozen jugs\n"
    )
}

// -- pgbench ----------------------------------------------------------------

const PGBENCH_TABLE: &str = "CREATE TABLE IF NOT EXISTS bench_pgbench (
    id bigserial PRIMARY KEY,
    payload jsonb NOT NULL,
    created_at timestamptz DEFAULT now())";

const PGBENCH_SCRIPT: &str = "INSERT INTO bench_pgbench (payload) VALUES ('{\"k\":\"v\"}');\n";

struct Pgbench {
    tps: f64,
    latency_avg_ms: f64,
    clients: u32,
    threads: u32,
}

/// Single-row inserts at the command bench's concurrency and duration,
/// against the bench database, from a script in a temporary folder.
async fn run_pgbench(args: &CommandsArgs, db: &BenchDatabase) -> anyhow::Result<Pgbench> {
    let mut conn = db.connect().await?;
    sqlx::query(PGBENCH_TABLE).execute(&mut conn).await?;
    conn.close().await?;
    let dir = std::env::temp_dir().join(format!("tandem-bench-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let script = dir.join("insert.sql");
    let output = match std::fs::write(&script, PGBENCH_SCRIPT) {
        Ok(()) => pgbench_command(args, db, &script).output().await,
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_dir_all(&dir);
    let output = output.with_context(|| format!("running {}", args.pgbench))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!("pgbench failed ({}): {}", output.status, stderr.trim());
    }
    let (tps, latency_avg_ms) = parse_pgbench(&String::from_utf8_lossy(&output.stdout))
        .context("pgbench printed no `tps =` or `latency average =` line")?;
    Ok(Pgbench {
        tps,
        latency_avg_ms,
        clients: args.concurrency,
        threads: pgbench_threads(args.concurrency),
    })
}

/// pgbench refuses more threads than clients.
fn pgbench_threads(clients: u32) -> u32 {
    clients.min(2)
}

fn pgbench_command(
    args: &CommandsArgs,
    db: &BenchDatabase,
    script: &Path,
) -> tokio::process::Command {
    let options = &db.options;
    let host = options.get_socket().map_or_else(
        || options.get_host().to_owned(),
        |s| s.display().to_string(),
    );
    let mut command = tokio::process::Command::new(&args.pgbench);
    command
        .args(["-n", "-M", "prepared"])
        .args(["-c", &args.concurrency.to_string()])
        .args(["-j", &pgbench_threads(args.concurrency).to_string()])
        .args(["-T", &args.duration_secs.max(1).to_string()])
        .arg("-f")
        .arg(script)
        .args(["-h", &host, "-p", &options.get_port().to_string()])
        .args(["-U", options.get_username(), db.name.as_str()])
        .kill_on_drop(true);
    // Through the environment, not the command line, where `ps` shows it.
    if let Some(password) = url_password(&db.url) {
        command.env("PGPASSWORD", password);
    }
    command
}

/// The decoded password of a `postgres://user:password@...` URL.
fn url_password(url: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    url.password().map(percent_decode)
}

fn percent_decode(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut rest = s.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        let escaped = tail
            .get(..2)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (byte, escaped) {
            (b'%', Some(value)) => {
                out.push(value);
                rest = &tail[2..];
            }
            _ => {
                out.push(byte);
                rest = tail;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `(tps without initial connection time, average latency in ms)`.
fn parse_pgbench(stdout: &str) -> Option<(f64, f64)> {
    let number_after = |prefix: &str| {
        stdout
            .lines()
            .find_map(|line| line.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok())
    };
    let tps = stdout
        .lines()
        .filter(|line| line.contains("without initial connection time"))
        .find_map(|line| line.trim().strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())?;
    Some((tps, number_after("latency average = ")?))
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

// ---------------------------------------------------------------------------
// `bench login-storm`

const P99_RATIO_GOAL: f64 = 2.0;

async fn login_storm(common: &Common, args: &LoginStormArgs) -> anyhow::Result<()> {
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
    let background: Vec<_> = background_tokens
        .into_iter()
        .map(|token| tokio::spawn(background_loop(api.clone(), token, stop.clone())))
        .collect();
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
        match send(request).await {
            Outcome::Ok { .. } => out.samples.push(Sample {
                started,
                latency: started.elapsed(),
            }),
            Outcome::Failed(kind) => *out.errors.entry(kind).or_default() += 1,
        }
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
    println!(
        "  setup        {} background users (POST /projects back to back), waves of {} concurrent logins, database {}",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = Percentiles::of(samples).unwrap();
        assert_eq!(p.p50, Duration::from_millis(50));
        assert_eq!(p.p90, Duration::from_millis(90));
        assert_eq!(p.p99, Duration::from_millis(99));
        assert_eq!(p.max, Duration::from_millis(100));
        assert!(Percentiles::of(Vec::new()).is_none());
        let one = Percentiles::of(vec![Duration::from_millis(7)]).unwrap();
        assert_eq!(one.p50, Duration::from_millis(7));
    }

    #[test]
    fn parses_pgbench_output() {
        let out = "number of transactions actually processed: 1000\n\
                   latency average = 12.345 ms\n\
                   initial connection time = 40.1 ms\n\
                   tps = 5183.417 (without initial connection time)\n";
        assert_eq!(parse_pgbench(out), Some((5183.417, 12.345)));
        assert_eq!(parse_pgbench("nothing"), None);
    }

    #[test]
    fn bench_names_are_guarded() {
        assert!(check_bench_name("tandem_bench").is_ok());
        assert!(check_bench_name("tandem").is_err());
        assert!(check_bench_name("bench; DROP").is_err());
        assert!(check_bench_name("Bench").is_err());
    }

    #[test]
    fn url_passwords_are_decoded() {
        assert_eq!(
            url_password("postgres://u:p%40ss@h:5432/db").as_deref(),
            Some("p@ss")
        );
        assert_eq!(url_password("postgres://u@h/db"), None);
    }
}
