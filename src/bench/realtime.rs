//! `bench realtime`: the WebSocket side of one gateway. The gateway under
//! test is a separate `tandem gateway` process (this executable), so its
//! memory is its own; the in-process stack of the harness runs the
//! sequencer, the relay and the projections, and takes the HTTP commands
//! whose events the subscribers receive. Three measurements, each on its
//! own set of connections (closed before the next one opens):
//!
//! - idle: `connections` authenticated sockets, each subscribed to one of
//!   `projects` projects, held open; the gateway's RSS per connection;
//! - fan-out: one project with `fanout_subscribers` subscribers, one
//!   command at a time; command accepted → the last subscriber has it;
//! - deliveries: `subscribers_per_project` subscribers in each of the
//!   `projects` projects while a closed loop of HTTP clients sends commands
//!   round-robin over them; event frames delivered per second, and every
//!   subscriber's events checked against the log of record.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use futures::{StreamExt, TryStreamExt};
use reqwest::{Client, Method, RequestBuilder, StatusCode};
use serde::Deserialize;
use serde_json::json;
use tandem_commands::WriteSideConfig;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::database::BenchDatabase;
use super::harness::{
    bench_gateway_config, log_in_all, projects_at, random_hex, register_users, send_command, Api,
    Roles, Running,
};
use super::measure::{
    error_total, merge_errors, metric_value, ms, print_errors, verdict, Errors, Percentiles,
};
use super::ws_client::{self, Incoming, WsClient};
use crate::settings::Common;

#[derive(Args, Clone, Debug)]
pub struct RealtimeArgs {
    /// Idle connections to open and hold.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub connections: u32,
    /// Projects the idle connections (and the deliveries' subscribers) are
    /// spread over.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub projects: u32,
    /// Users owning the projects (round-robin); each connection uses its
    /// project's owner's token.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub users: u32,
    /// How long the idle connections are held before the second reading:
    /// by default past the gateway's idle timeout (60 s), so only sockets
    /// that answer its pings are counted as held.
    #[arg(long, default_value_t = 65)]
    pub hold_secs: u64,
    /// Subscribers of the one project of the fan-out measurement.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub fanout_subscribers: u32,
    /// Commands of the fan-out measurement, one event each.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub fanout_events: u32,
    /// Time between two fan-out commands (each is measured alone).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    pub fanout_interval_ms: u64,
    /// Subscribers per project in the deliveries measurement.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub subscribers_per_project: u32,
    /// Load time of the deliveries measurement.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Concurrent HTTP clients sending commands in the deliveries measurement.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub http_concurrency: u32,
    /// WebSockets being opened at once.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub open_concurrency: u32,
    /// Run only these measurements (comma-separated); all by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Part>,
    /// The bench database: dropped and recreated; its name must contain `bench`.
    #[arg(long, default_value = "tandem_bench_realtime")]
    pub database: String,
    /// Keep the bench database afterwards.
    #[arg(long)]
    pub keep: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Idle,
    Fanout,
    Deliveries,
}

impl RealtimeArgs {
    fn runs(&self, part: Part) -> bool {
        self.only.is_empty() || self.only.contains(&part)
    }
}

const IDLE_CONNECTIONS_GOAL: usize = 20_000;
/// KiB of the gateway's RSS per idle connection.
const IDLE_KIB_GOAL: f64 = 20.0;
const FANOUT_SUBSCRIBERS_GOAL: usize = 10_000;
const FANOUT_P99_GOAL: Duration = Duration::from_millis(200);

/// The in-process stack's Postgres connections (sequencer, relay,
/// projections, the commands' gateway).
const POOL_SIZE: u32 = 32;
/// The measured gateway's own (authorization falls back to Postgres only
/// when Redis is behind).
const GATEWAY_POOL_SIZE: u32 = 16;
/// Open files wanted by this process and its child: the sockets and some.
const NOFILE_WANTED: u64 = 200_000;
/// The client's read buffer: small, like the server's, so 20,000 clients
/// do not need gigabytes.
const CLIENT_READ_BUFFER: usize = 4 * 1024;
/// Descriptors a process keeps for the rest of its work (pools that may
/// grow, reconnects) when the sockets are counted against its limit.
const DESCRIPTOR_RESERVE: u64 = 96;
/// Connect, upgrade, authenticate and be subscribed within this long.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections opened and measured before the first RSS reading, so the
/// gateway's one-off allocations (pools, first-use buffers) are not
/// counted per connection.
const WARM_CONNECTIONS: usize = 500;
/// Pause before a memory reading, for the allocator and stragglers.
const SETTLE: Duration = Duration::from_secs(3);
/// How long closed connections may take to leave the gateway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(90);
/// Registrations and logins in flight during setup.
const SETUP_PARALLELISM: usize = 8;

pub(super) async fn realtime(common: &Common, args: &RealtimeArgs) -> anyhow::Result<()> {
    let limits = raise_nofile_limit();
    let db = BenchDatabase::recreate(&common.database_url, &args.database).await?;
    let outcome = realtime_on(common, args, &db, &limits).await;
    let finished = db.finish(args.keep).await;
    outcome?;
    finished
}

async fn realtime_on(
    common: &Common,
    args: &RealtimeArgs,
    db: &BenchDatabase,
    limits: &NofileLimit,
) -> anyhow::Result<()> {
    let running = Running::start(
        common,
        db,
        POOL_SIZE,
        args.http_concurrency as usize,
        WriteSideConfig::default(),
        Roles::WithReadSide,
        bench_gateway_config(),
    )
    .await?;
    let outcome = match Gateway::spawn(common, &db.url, &running.namespace).await {
        Ok(gateway) => {
            let measured = measure(&running, &gateway, args).await;
            let log = gateway.stop().await;
            measured.map(|m| (m, log))
        }
        Err(e) => Err(e),
    };
    running.stop_and_clean(common).await;
    let (measured, log) = outcome?;
    print_summary(args, limits, log.as_deref(), &measured);
    Ok(())
}

// -- open files ----------------------------------------------------------------

/// The open-file limit before and after raising it (inherited by the
/// gateway process).
struct NofileLimit {
    before: (u64, u64),
    after: (u64, u64),
    error: Option<String>,
}

/// Raises this process's open-file limit, soft and hard (past the hard
/// one only with CAP_SYS_RESOURCE); the gateway it spawns inherits it.
fn raise_nofile_limit() -> NofileLimit {
    use rlimit::Resource;
    let before = rlimit::getrlimit(Resource::NOFILE).unwrap_or((0, 0));
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(NOFILE_WANTED);
    let wanted = NOFILE_WANTED.min(ceiling).max(before.0);
    let mut error = None;
    if before.0 < wanted {
        let raised = rlimit::setrlimit(Resource::NOFILE, wanted, wanted.max(before.1));
        if let Err(e) = raised {
            // Without CAP_SYS_RESOURCE: up to the hard limit only.
            error = Some(e.to_string());
            let _ = rlimit::setrlimit(Resource::NOFILE, before.1, before.1);
        }
    }
    let after = rlimit::getrlimit(Resource::NOFILE).unwrap_or(before);
    if error.is_some() && !has_cap_sys_resource() {
        error =
            error.map(|e| format!("{e}: CAP_SYS_RESOURCE is not in this process's capabilities"));
    }
    NofileLimit {
        before,
        after,
        error,
    }
}

/// Whether CAP_SYS_RESOURCE (bit 24), which raising a hard limit needs,
/// is among this process's effective capabilities.
fn has_cap_sys_resource() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

// -- the gateway under test ----------------------------------------------------

/// `tandem gateway` in a process of its own, on the bench database and
/// namespace, with a JWT key of its own and rate limits out of the way.
struct Gateway {
    child: tokio::process::Child,
    pid: u32,
    addr: SocketAddr,
    origin: String,
    http: Client,
    /// Its stdout and stderr (warnings and errors only), removed at the
    /// end if empty.
    log: PathBuf,
}

impl Gateway {
    async fn spawn(common: &Common, database_url: &str, namespace: &str) -> anyhow::Result<Self> {
        // A free port: the child binds it a moment later.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let log = std::env::temp_dir().join(format!(
            "tandem-bench-realtime-gateway-{}.log",
            std::process::id()
        ));
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let unlimited = "1000000000";
        let child = tokio::process::Command::new(std::env::current_exe()?)
            .arg("gateway")
            .env("DATABASE_URL", database_url)
            .env("NATS_URL", &common.nats_url)
            .env("REDIS_URL", &common.redis_url)
            .env("TANDEM_NAMESPACE", namespace)
            .env("TANDEM_HTTP_ADDR", addr.to_string())
            .env("TANDEM_JWT_SECRET", random_hex())
            .env("TANDEM_ACCESS_TOKEN_TTL_SECS", "3600")
            .env("TANDEM_RATE_LIMIT_AUTH_PER_MIN", unlimited)
            .env("TANDEM_RATE_LIMIT_LOGIN_PER_ACCOUNT_PER_MIN", unlimited)
            .env("TANDEM_RATE_LIMIT_API_PER_MIN", unlimited)
            .env("TANDEM_DB_MAX_CONNECTIONS", GATEWAY_POOL_SIZE.to_string())
            .env("TANDEM_LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .context("starting `tandem gateway`")?;
        let pid = child.id().context("the gateway exited at once")?;
        let mut gateway = Self {
            child,
            pid,
            addr,
            origin: format!("http://{addr}"),
            http: Client::builder().timeout(Duration::from_secs(30)).build()?,
            log,
        };
        gateway.wait_ready().await?;
        Ok(gateway)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "`tandem gateway` exited with {status}; its log is {}",
                    self.log.display()
                );
            }
            let ready = self
                .http
                .get(format!("{}/readyz", self.origin))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK);
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "`tandem gateway` not ready after 30s; its log is {}",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Its memory, from `/proc/<pid>/status`.
    fn memory(&self) -> anyhow::Result<Memory> {
        Memory::of(&format!("/proc/{}/status", self.pid))
    }

    /// A gauge or counter of its `/metrics`.
    async fn metric(&self, name: &str) -> anyhow::Result<Option<f64>> {
        let text = self
            .http
            .get(format!("{}/metrics", self.origin))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(metric_value(&text, name))
    }

    /// Open WebSockets, as the gateway counts them.
    async fn connections(&self) -> Option<u64> {
        self.metric("tandem_ws_connections")
            .await
            .ok()
            .flatten()
            .map(|v| v as u64)
    }

    /// Waits until the gateway holds no WebSocket; returns how long it took.
    async fn drained(&self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            if self.connections().await.unwrap_or(0) == 0 {
                return Ok(started.elapsed());
            }
            if started.elapsed() > DRAIN_TIMEOUT {
                bail!(
                    "the gateway still holds {:?} WebSockets {}s after they were closed",
                    self.connections().await,
                    DRAIN_TIMEOUT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn login(&self) -> RequestBuilder {
        self.http.post(format!("{}/api/v1/auth/login", self.origin))
    }

    /// Ends the process (it holds nothing worth a graceful stop: the
    /// namespace's Redis keys are removed with the in-process stack's).
    /// Returns its log, unless it was empty (and so removed).
    async fn stop(mut self) -> Option<PathBuf> {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        let empty = std::fs::metadata(&self.log).is_ok_and(|m| m.len() == 0);
        if empty && std::fs::remove_file(&self.log).is_ok() {
            return None;
        }
        Some(self.log)
    }
}

/// A process's resident memory, in KiB.
#[derive(Clone, Copy, Default)]
struct Memory {
    rss: u64,
    anon: u64,
}

impl Memory {
    fn of(status_file: &str) -> anyhow::Result<Self> {
        let status = std::fs::read_to_string(status_file)
            .with_context(|| format!("reading {status_file}"))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
                .unwrap_or(0)
        };
        Ok(Self {
            rss: field("VmRSS:"),
            anon: field("RssAnon:"),
        })
    }

    fn own() -> Self {
        Self::of("/proc/self/status").unwrap_or_default()
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// CPU time (user + system, every thread) a process used so far, from
/// `<proc>/stat` (in USER_HZ ticks, 100 per second on Linux).
fn cpu_time(proc: &str) -> Duration {
    let ticks = std::fs::read_to_string(format!("{proc}/stat"))
        .ok()
        .and_then(|stat| {
            // The command name is in parentheses and may hold spaces:
            // fields 14 and 15 (utime, stime) count from after it.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime = fields.get(11)?.parse::<u64>().ok()?;
            let stime = fields.get(12)?.parse::<u64>().ok()?;
            Some(utime + stime)
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// CPU time used by this process and the gateway over a stretch.
#[derive(Clone, Copy, Default)]
struct Cpu {
    own: Duration,
    gateway: Duration,
}

impl Cpu {
    fn now(gateway: &Gateway) -> Self {
        Self {
            own: cpu_time("/proc/self"),
            gateway: cpu_time(&format!("/proc/{}", gateway.pid)),
        }
    }

    fn since(self, earlier: Self) -> Self {
        Self {
            own: self.own.saturating_sub(earlier.own),
            gateway: self.gateway.saturating_sub(earlier.gateway),
        }
    }
}

/// A process's open-file limit (soft) and the descriptors it has open.
#[derive(Clone, Copy)]
struct Descriptors {
    limit: u64,
    open: u64,
}

impl Descriptors {
    /// `proc`: `/proc/self` or `/proc/<pid>`.
    fn of(proc: &str) -> anyhow::Result<Self> {
        let limits = std::fs::read_to_string(format!("{proc}/limits"))
            .with_context(|| format!("reading {proc}/limits"))?;
        // "Max open files            20000                20000                files"
        let limit = limits
            .lines()
            .find(|line| line.starts_with("Max open files"))
            .and_then(|line| line.split_whitespace().nth(3))
            .and_then(|soft| soft.parse().ok())
            .with_context(|| format!("no open-file limit in {proc}/limits"))?;
        let open = std::fs::read_dir(format!("{proc}/fd"))
            .with_context(|| format!("listing {proc}/fd"))?
            .count() as u64;
        Ok(Self { limit, open })
    }

    /// Sockets it can still open, keeping [`DESCRIPTOR_RESERVE`].
    fn room(&self) -> usize {
        self.limit.saturating_sub(self.open + DESCRIPTOR_RESERVE) as usize
    }
}

// -- setup -------------------------------------------------------------------

/// The users and projects every measurement uses.
struct Setup {
    /// Per user: the access token of the in-process gateway (commands) and
    /// of the measured one (WebSockets); JWT keys differ.
    command_tokens: Vec<String>,
    socket_tokens: Vec<Arc<str>>,
    /// The projects of the idle and deliveries measurements; project `i`
    /// belongs to user `i % users`.
    projects: Vec<Uuid>,
    /// The fan-out's project, user 0's.
    fanout_project: Uuid,
}

impl Setup {
    fn owner(&self, project: usize) -> usize {
        project % self.command_tokens.len()
    }
}

async fn set_up(
    running: &Running,
    gateway: &Gateway,
    args: &RealtimeArgs,
) -> anyhow::Result<Setup> {
    let api = &running.api;
    let password = random_hex();
    let emails = register_users(api, args.users, &password).await?;
    let command_tokens = log_in_all(&emails, &password, |_| {
        api.request(Method::POST, "/auth/login", None)
    })
    .await?;
    let socket_tokens = log_in_all(&emails, &password, |_| gateway.login())
        .await?
        .into_iter()
        .map(Arc::from)
        .collect();
    let created: Vec<(Uuid, i64)> = futures::stream::iter(0..=args.projects as usize)
        .map(|i| {
            let token = &command_tokens[i % command_tokens.len()];
            async move {
                let created = api
                    .expect_ok(
                        api.request(Method::POST, "/projects", Some(token))
                            .json(&json!({"name": format!("Realtime {i}")})),
                    )
                    .await?;
                let id = created["id"]
                    .as_str()
                    .and_then(|id| id.parse().ok())
                    .context("project created without id")?;
                let position = created["position"]
                    .as_i64()
                    .context("project created without position")?;
                Ok::<_, anyhow::Error>((id, position))
            }
        })
        .buffered(SETUP_PARALLELISM)
        .try_collect()
        .await?;
    let last = created.iter().map(|(_, p)| *p).max().unwrap_or(0);
    wait_for_read_side(api, &command_tokens[0], last).await?;
    let mut projects: Vec<Uuid> = created.into_iter().map(|(id, _)| id).collect();
    let fanout_project = projects.pop().context("no project created")?;
    Ok(Setup {
        command_tokens,
        socket_tokens,
        projects,
        fanout_project,
    })
}

/// Until the read side has applied `position` (memberships are checked
/// against it when subscribing).
async fn wait_for_read_side(api: &Api, token: &str, position: i64) -> anyhow::Result<()> {
    projects_at(api, token, position).await.map(drop)
}

// -- the clients ---------------------------------------------------------------

/// Connects, authenticates, subscribes and waits for `subscribed`;
/// returns the client and the position live delivery starts after. The
/// error is the kind of failure, for counting.
async fn open(addr: SocketAddr, token: &str, project: Uuid) -> Result<(WsClient, i64), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let config = WebSocketConfig::default().read_buffer_size(CLIENT_READ_BUFFER);
    let (socket, _) = tokio_tungstenite::client_async_with_config(
        ws_client::url(addr),
        MaybeTlsStream::Plain(stream),
        Some(config),
    )
    .await
    .map_err(|e| format!("upgrade: {e}"))?;
    let mut client = WsClient { socket };
    client
        .authenticate(token)
        .await
        .map_err(|e| format!("auth: {e}"))?;
    client
        .subscribe(project, None)
        .await
        .map_err(|e| format!("subscribe: {e}"))?;
    loop {
        match client.recv().await.map_err(|e| format!("subscribe: {e}"))? {
            Incoming::Frame(frame) if frame["op"] == "subscribed" => {
                let position = frame["position"]
                    .as_i64()
                    .ok_or("subscribe: `subscribed` without position")?;
                return Ok((client, position));
            }
            Incoming::Frame(frame) if frame["op"] == "error" => {
                return Err(format!("subscribe: error {}", frame["code"]));
            }
            // Presence.
            Incoming::Frame(_) => {}
            Incoming::Closed(code) => return Err(format!("subscribe: closed ({code:?})")),
        }
    }
}

/// Connections being opened, each in a task that goes on with the
/// connection once it is subscribed.
struct Opening<T> {
    tasks: Vec<JoinHandle<Option<T>>>,
    failures: Arc<Mutex<Errors>>,
    opened: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
    concurrency: u32,
}

impl<T: Send + 'static> Opening<T> {
    fn new(concurrency: u32) -> Self {
        Self {
            tasks: Vec::new(),
            failures: Arc::default(),
            opened: Arc::default(),
            gate: Arc::new(Semaphore::new(concurrency as usize)),
            concurrency,
        }
    }

    /// Opens one more (at most `concurrency` at once); once subscribed the
    /// task runs `then(client, subscribed position)`.
    async fn open<F, Fut>(&mut self, addr: SocketAddr, token: Arc<str>, project: Uuid, then: F)
    where
        F: FnOnce(WsClient, i64) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T> + Send + 'static,
    {
        let Ok(permit) = self.gate.clone().acquire_owned().await else {
            return;
        };
        let failures = self.failures.clone();
        let self_opened = self.opened.clone();
        self.tasks.push(tokio::spawn(async move {
            let outcome = tokio::time::timeout(OPEN_TIMEOUT, open(addr, &token, project))
                .await
                .unwrap_or_else(|_| Err(format!("timed out after {}s", OPEN_TIMEOUT.as_secs())));
            // Counted before the permit goes back, so `settled` sees it.
            let opened = match outcome {
                Ok(opened) => {
                    self_opened.fetch_add(1, Ordering::Relaxed);
                    opened
                }
                Err(kind) => {
                    let mut failures = failures.lock().unwrap_or_else(|e| e.into_inner());
                    *failures.entry(kind).or_default() += 1;
                    return None;
                }
            };
            drop(permit);
            let (client, position) = opened;
            Some(then(client, position).await)
        }));
    }

    /// Waits until every connection asked for is open or failed.
    async fn settled(&self) {
        let _ = self.gate.acquire_many(self.concurrency).await;
    }

    fn opened(&self) -> usize {
        self.opened.load(Ordering::Relaxed)
    }

    fn failures(&self) -> Errors {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Once every connection is open or failed and has had time to
    /// settle: how many opened, and the failures.
    async fn subscribed(&self) -> (usize, Errors) {
        self.settled().await;
        tokio::time::sleep(SETTLE).await;
        (self.opened(), self.failures())
    }

    /// What each task ended with (the connections that opened).
    async fn finish(self) -> Vec<T> {
        let mut out = Vec::with_capacity(self.tasks.len());
        for task in self.tasks {
            if let Ok(Some(t)) = task.await {
                out.push(t);
            }
        }
        out
    }
}

/// Why a connection ended before it was told to: `None` if it did not.
type Lost = Option<String>;

/// Keeps an idle connection open, reading (pings are answered while
/// reading) and dropping what comes, until `stop`.
async fn hold(mut client: WsClient, stop: CancellationToken) -> Lost {
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => return None,
            message = client.socket.next() => message,
        };
        let ended = match message {
            Some(Ok(Message::Close(frame))) => format!(
                "closed by the gateway ({:?})",
                frame.map(|f| u16::from(f.code))
            ),
            Some(Ok(_)) => continue,
            Some(Err(e)) => format!("read: {e}"),
            None => "closed by the gateway (no close frame)".to_owned(),
        };
        return Some(ended);
    }
}

/// What a subscriber received: each event's position and when it was read.
struct Listened {
    project: usize,
    /// Live delivery starts after this position.
    subscribed_at: i64,
    seen: Vec<(i64, Instant)>,
    lost: Lost,
}

/// The fields of a frame a subscriber needs (the CloudEvent is skipped).
#[derive(Deserialize)]
struct FrameHead {
    op: String,
    #[serde(default)]
    position: Option<i64>,
}

/// Reads until `stop`, timestamping every event frame as it is read.
async fn listen(
    mut client: WsClient,
    project: usize,
    subscribed_at: i64,
    stop: CancellationToken,
    received: Arc<AtomicU64>,
) -> Listened {
    let mut seen = Vec::new();
    let lost = loop {
        let message = tokio::select! {
            () = stop.cancelled() => break None,
            message = client.socket.next() => message,
        };
        let at = Instant::now();
        match message {
            Some(Ok(Message::Text(text))) => {
                let Ok(head) = serde_json::from_str::<FrameHead>(&text) else {
                    continue;
                };
                if let ("event", Some(position)) = (head.op.as_str(), head.position) {
                    seen.push((position, at));
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(Ok(Message::Close(frame))) => {
                break Some(format!(
                    "closed by the gateway ({:?})",
                    frame.map(|f| u16::from(f.code))
                ))
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => break Some(format!("read: {e}")),
            None => break Some("closed by the gateway (no close frame)".to_owned()),
        }
    };
    Listened {
        project,
        subscribed_at,
        seen,
        lost,
    }
}

fn count_lost<'a>(lost: impl Iterator<Item = &'a Lost>) -> Errors {
    let mut errors = Errors::new();
    for kind in lost.flatten() {
        *errors.entry(kind.clone()).or_default() += 1;
    }
    errors
}

/// One event in a project: a new description (`PATCH /projects/{id}`).
fn touch(api: &Api, project: Uuid, token: &str, n: u64) -> RequestBuilder {
    api.request(Method::PATCH, &format!("/projects/{project}"), Some(token))
        .json(&json!({"description": format!("realtime bench {n}")}))
}

// -- the measurements ------------------------------------------------------------

struct Measured {
    gateway_pid: u32,
    gateway_addr: SocketAddr,
    namespace: String,
    idle: Option<Idle>,
    fanout: Option<Fanout>,
    deliveries: Option<Deliveries>,
}

async fn measure(
    running: &Running,
    gateway: &Gateway,
    args: &RealtimeArgs,
) -> anyhow::Result<Measured> {
    eprintln!(
        "bench: in-process stack on {}, gateway process {} on {} (namespace {}); {} users, {} projects...",
        running.stack.addr,
        gateway.pid,
        gateway.addr,
        running.namespace,
        args.users,
        args.projects + 1
    );
    let setup = set_up(running, gateway, args).await?;
    let idle = if args.runs(Part::Idle) {
        Some(idle(gateway, &setup, args).await?)
    } else {
        None
    };
    let fanout = if args.runs(Part::Fanout) {
        Some(fanout(running, gateway, &setup, args).await?)
    } else {
        None
    };
    let deliveries = if args.runs(Part::Deliveries) {
        Some(deliveries(running, gateway, &setup, args).await?)
    } else {
        None
    };
    Ok(Measured {
        gateway_pid: gateway.pid,
        gateway_addr: gateway.addr,
        namespace: running.namespace.clone(),
        idle,
        fanout,
        deliveries,
    })
}

// -- idle connections ------------------------------------------------------------

struct Idle {
    asked: usize,
    /// What was opened at most: `asked`, or less if either process's
    /// open-file limit does not leave room for it.
    attempted: usize,
    /// Before opening: this process's and the gateway's descriptors.
    own_files: Descriptors,
    gateway_files: Descriptors,
    /// The gateway's open descriptors after the hold.
    gateway_open_after: u64,
    opened: usize,
    failures: Errors,
    open_time: Duration,
    warm: usize,
    /// After the warm-up connections, after all of them, after the hold.
    before: Memory,
    after_open: Memory,
    after_hold: Memory,
    held_for: Duration,
    /// CPU time while opening, and while holding.
    cpu_open: Cpu,
    cpu_hold: Cpu,
    /// The gateway's own count after the hold.
    gauge: Option<u64>,
    lost: Errors,
    /// This process's RSS with every client open (for scale).
    bench_rss: u64,
    drain: Duration,
}

impl Idle {
    fn held(&self) -> usize {
        self.opened - error_total(&self.lost)
    }

    /// KiB per connection opened after the warm-up, at `after`.
    fn per_connection(&self, after: Memory, anon: bool) -> f64 {
        let (a, b) = if anon {
            (after.anon, self.before.anon)
        } else {
            (after.rss, self.before.rss)
        };
        let counted = self.held().saturating_sub(self.warm).max(1);
        (a as f64 - b as f64) / counted as f64
    }
}

async fn idle(gateway: &Gateway, setup: &Setup, args: &RealtimeArgs) -> anyhow::Result<Idle> {
    let asked = args.connections as usize;
    // A socket is a descriptor at each end: past either limit, `connect`
    // or `accept` fails with EMFILE, and so would everything else the
    // process opens meanwhile (pool connections, reconnects).
    let own_files = Descriptors::of("/proc/self")?;
    let gateway_files = Descriptors::of(&format!("/proc/{}", gateway.pid))?;
    let attempted = asked.min(own_files.room()).min(gateway_files.room());
    if attempted < asked {
        eprintln!(
            "bench: idle: only {attempted} of {asked} connections fit the open-file limits (this process {}/{} in use, the gateway {}/{}, {DESCRIPTOR_RESERVE} kept each)",
            own_files.open, own_files.limit, gateway_files.open, gateway_files.limit
        );
    }
    let warm = WARM_CONNECTIONS.min(attempted / 10);
    let stop = CancellationToken::new();
    let mut opening = Opening::new(args.open_concurrency);
    let started = Instant::now();
    let cpu_started = Cpu::now(gateway);
    let mut before = gateway.memory()?;
    // The pause for the first reading, not counted as opening time.
    let mut paused = Duration::ZERO;
    eprintln!(
        "bench: idle: opening {attempted} connections over {} projects ({} at a time)...",
        setup.projects.len(),
        args.open_concurrency
    );
    for i in 0..attempted {
        if i == warm {
            opening.settled().await;
            tokio::time::sleep(SETTLE).await;
            paused = SETTLE;
            before = gateway.memory()?;
        }
        let project = i % setup.projects.len();
        let token = setup.socket_tokens[setup.owner(project)].clone();
        let stop = stop.clone();
        opening
            .open(
                gateway.addr,
                token,
                setup.projects[project],
                move |client, _| hold(client, stop),
            )
            .await;
    }
    opening.settled().await;
    let open_time = started.elapsed().saturating_sub(paused);
    let cpu_open = Cpu::now(gateway).since(cpu_started);
    let opened = opening.opened();
    let failures = opening.failures();
    eprintln!(
        "bench: idle: {opened} open in {:.1}s ({} failed); holding {}s...",
        open_time.as_secs_f64(),
        error_total(&failures),
        args.hold_secs
    );
    tokio::time::sleep(SETTLE).await;
    let after_open = gateway.memory()?;
    let bench_rss = Memory::own().rss;
    let held_from = Instant::now();
    let cpu_held_from = Cpu::now(gateway);
    tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    let cpu_hold = Cpu::now(gateway).since(cpu_held_from);
    let after_hold = gateway.memory()?;
    let held_for = held_from.elapsed() + SETTLE;
    let gauge = gateway.connections().await;
    let gateway_open_after = Descriptors::of(&format!("/proc/{}", gateway.pid))?.open;
    stop.cancel();
    let lost = count_lost(opening.finish().await.iter());
    eprintln!("bench: idle: closing them...");
    let drain = gateway.drained().await?;
    Ok(Idle {
        asked,
        attempted,
        own_files,
        gateway_files,
        gateway_open_after,
        opened,
        failures,
        open_time,
        warm,
        before,
        after_open,
        after_hold,
        held_for,
        cpu_open,
        cpu_hold,
        gauge,
        lost,
        bench_rss,
        drain,
    })
}

// -- fan-out ----------------------------------------------------------------------

struct Fanout {
    subscribers: usize,
    failures: Errors,
    /// Command accepted → the first and the last subscriber read it.
    first: Vec<Duration>,
    last: Vec<Duration>,
    /// The commands' own latency (sent → 2xx answer).
    answer: Vec<Duration>,
    commands_failed: Errors,
    /// Accepted events some subscriber did not receive, and the deliveries
    /// missing in all.
    events_missed: usize,
    deliveries_missed: usize,
    lost: Errors,
    /// CPU time from the first command until every frame was read.
    cpu: Cpu,
}

async fn fanout(
    running: &Running,
    gateway: &Gateway,
    setup: &Setup,
    args: &RealtimeArgs,
) -> anyhow::Result<Fanout> {
    let asked = args.fanout_subscribers as usize;
    let project = setup.fanout_project;
    let stop = CancellationToken::new();
    let received = Arc::new(AtomicU64::new(0));
    let mut opening = Opening::new(args.open_concurrency);
    eprintln!("bench: fan-out: opening {asked} subscribers of one project...");
    for _ in 0..asked {
        let (stop, received) = (stop.clone(), received.clone());
        opening
            .open(
                gateway.addr,
                setup.socket_tokens[0].clone(),
                project,
                move |client, at| listen(client, 0, at, stop, received),
            )
            .await;
    }
    let (subscribers, failures) = opening.subscribed().await;
    eprintln!(
        "bench: fan-out: {subscribers} subscribed; {} commands, one every {} ms...",
        args.fanout_events, args.fanout_interval_ms
    );
    let api = &running.api;
    let token = &setup.command_tokens[0];
    let mut ticks = tokio::time::interval(Duration::from_millis(args.fanout_interval_ms));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut accepted = Vec::new();
    let mut answer = Vec::new();
    let mut commands_failed = Errors::new();
    let cpu_started = Cpu::now(gateway);
    for n in 0..u64::from(args.fanout_events) {
        ticks.tick().await;
        let sent = Instant::now();
        match send_command(touch(api, project, token, n)).await {
            Ok(position) => {
                let at = Instant::now();
                answer.push(at - sent);
                accepted.push((position, at));
            }
            Err(kind) => *commands_failed.entry(kind).or_default() += 1,
        }
    }
    let expected = (accepted.len() * subscribers) as u64;
    wait_for_deliveries(&received, expected).await;
    let cpu = Cpu::now(gateway).since(cpu_started);
    stop.cancel();
    let listened = opening.finish().await;
    let lost = count_lost(listened.iter().map(|l| &l.lost));
    // Per position: when the first and the last subscriber read it, and
    // how many did.
    let mut reads: HashMap<i64, (Instant, Instant, usize)> = HashMap::new();
    for l in &listened {
        for &(position, at) in &l.seen {
            let entry = reads.entry(position).or_insert((at, at, 0));
            entry.0 = entry.0.min(at);
            entry.1 = entry.1.max(at);
            entry.2 += 1;
        }
    }
    let (mut first, mut last) = (Vec::new(), Vec::new());
    let (mut events_missed, mut deliveries_missed) = (0, 0);
    for (position, at) in &accepted {
        let (earliest, latest, count) = reads.get(position).copied().unwrap_or((*at, *at, 0));
        if count < subscribers {
            events_missed += 1;
            deliveries_missed += subscribers - count;
        }
        if count > 0 {
            first.push(earliest.saturating_duration_since(*at));
            last.push(latest.saturating_duration_since(*at));
        }
    }
    eprintln!("bench: fan-out: closing the subscribers...");
    gateway.drained().await?;
    Ok(Fanout {
        subscribers,
        failures,
        first,
        last,
        answer,
        commands_failed,
        events_missed,
        deliveries_missed,
        lost,
        cpu,
    })
}

/// Until `received` reaches `expected`, or stops growing for a while.
async fn wait_for_deliveries(received: &AtomicU64, expected: u64) -> Duration {
    let started = Instant::now();
    let mut last = (received.load(Ordering::Relaxed), Instant::now());
    loop {
        let now = received.load(Ordering::Relaxed);
        if now >= expected {
            return started.elapsed();
        }
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(5) {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// -- deliveries per second ---------------------------------------------------------

struct Deliveries {
    subscribers: usize,
    failures: Errors,
    window: Duration,
    commands_ok: usize,
    commands_failed: Errors,
    /// Event frames read by all subscribers during the load, and per second.
    delivered_in_window: u64,
    per_second: Vec<u64>,
    /// After the load: until every expected frame was read (or it stopped).
    drain: Duration,
    delivered_total: u64,
    expected_total: u64,
    /// Subscribers whose events equal the log's for their project, after
    /// their `subscribed` position, in order; and what the others had.
    exact: usize,
    missing: usize,
    unexpected: usize,
    out_of_order: usize,
    lost: Errors,
    /// CPU time during the load.
    cpu: Cpu,
}

async fn deliveries(
    running: &Running,
    gateway: &Gateway,
    setup: &Setup,
    args: &RealtimeArgs,
) -> anyhow::Result<Deliveries> {
    let per_project = args.subscribers_per_project as usize;
    let projects = setup.projects.len();
    let stop = CancellationToken::new();
    let received = Arc::new(AtomicU64::new(0));
    // Subscribers that opened, per project.
    let subscribed: Arc<Vec<AtomicUsize>> =
        Arc::new((0..projects).map(|_| AtomicUsize::new(0)).collect());
    let mut opening = Opening::new(args.open_concurrency);
    eprintln!(
        "bench: deliveries: opening {per_project} subscribers in each of {projects} projects..."
    );
    for project in 0..projects {
        for _ in 0..per_project {
            let (stop, received) = (stop.clone(), received.clone());
            let subscribed = subscribed.clone();
            opening
                .open(
                    gateway.addr,
                    setup.socket_tokens[setup.owner(project)].clone(),
                    setup.projects[project],
                    move |client, at| {
                        subscribed[project].fetch_add(1, Ordering::Relaxed);
                        listen(client, project, at, stop, received)
                    },
                )
                .await;
        }
    }
    let (subscribers, failures) = opening.subscribed().await;
    eprintln!(
        "bench: deliveries: {subscribers} subscribed; {} HTTP clients sending commands for {}s...",
        args.http_concurrency, args.duration_secs
    );
    let cpu_started = Cpu::now(gateway);
    let load = drive(running, setup, args, &received).await;
    let cpu = Cpu::now(gateway).since(cpu_started);
    // Frames owed: each accepted command's event to every subscriber of
    // its project.
    let expected_live: u64 = load
        .accepted
        .iter()
        .map(|(project, _)| subscribed[*project].load(Ordering::Relaxed) as u64)
        .sum();
    let drain = wait_for_deliveries(&received, expected_live).await;
    let delivered_total = received.load(Ordering::Relaxed);
    stop.cancel();
    let listened = opening.finish().await;
    let lost = count_lost(listened.iter().map(|l| &l.lost));
    eprintln!("bench: deliveries: checking every subscriber against the log...");
    let check = check_against_log(running, setup, &listened).await?;
    eprintln!("bench: deliveries: closing the subscribers...");
    gateway.drained().await?;
    Ok(Deliveries {
        subscribers,
        failures,
        window: load.window,
        commands_ok: load.accepted.len(),
        commands_failed: load.failed,
        delivered_in_window: load.delivered_in_window,
        per_second: load.per_second,
        drain,
        delivered_total,
        expected_total: expected_live,
        exact: check.exact,
        missing: check.missing,
        unexpected: check.unexpected,
        out_of_order: check.out_of_order,
        lost,
        cpu,
    })
}

struct Load {
    window: Duration,
    /// (project index, position) of every accepted command.
    accepted: Vec<(usize, i64)>,
    failed: Errors,
    delivered_in_window: u64,
    per_second: Vec<u64>,
}

/// `http_concurrency` closed loops, each sending the next project's
/// command (round-robin over all of them) as soon as its last answered;
/// the delivery counter is sampled every second meanwhile.
async fn drive(
    running: &Running,
    setup: &Setup,
    args: &RealtimeArgs,
    received: &Arc<AtomicU64>,
) -> Load {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs(args.duration_secs);
    let delivered_before = received.load(Ordering::Relaxed);
    let mut loops = Vec::new();
    for _ in 0..args.http_concurrency {
        let api = running.api.clone();
        let next = next.clone();
        let projects = setup.projects.clone();
        let tokens: Vec<String> = setup.command_tokens.clone();
        loops.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            let mut failed = Errors::new();
            while Instant::now() < end {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let project = (n % projects.len() as u64) as usize;
                let token = &tokens[project % tokens.len()];
                match send_command(touch(&api, projects[project], token, n)).await {
                    Ok(position) => accepted.push((project, position)),
                    Err(kind) => *failed.entry(kind).or_default() += 1,
                }
            }
            (accepted, failed)
        }));
    }
    let mut per_second = Vec::new();
    let mut previous = delivered_before;
    let mut second = start;
    loop {
        second += Duration::from_secs(1);
        if second > end {
            break;
        }
        tokio::time::sleep_until(second.into()).await;
        let now = received.load(Ordering::Relaxed);
        per_second.push(now - previous);
        previous = now;
    }
    tokio::time::sleep_until(end.into()).await;
    let delivered_in_window = received.load(Ordering::Relaxed) - delivered_before;
    let mut accepted = Vec::new();
    let mut failed = Errors::new();
    for task in loops {
        if let Ok((a, f)) = task.await {
            accepted.extend(a);
            merge_errors(&mut failed, f);
        }
    }
    Load {
        window: end - start,
        accepted,
        failed,
        delivered_in_window,
        per_second,
    }
}

#[derive(Default)]
struct Check {
    exact: usize,
    missing: usize,
    unexpected: usize,
    out_of_order: usize,
}

/// Compares what each subscriber read with its project's events in the
/// log after its `subscribed` position.
async fn check_against_log(
    running: &Running,
    setup: &Setup,
    listened: &[Listened],
) -> anyhow::Result<Check> {
    let mut by_project: HashMap<usize, Vec<&Listened>> = HashMap::new();
    for l in listened {
        by_project.entry(l.project).or_default().push(l);
    }
    let mut check = Check::default();
    for (project, subscribers) in by_project {
        let from = subscribers
            .iter()
            .map(|l| l.subscribed_at)
            .min()
            .unwrap_or(0);
        let log = project_positions(running, setup.projects[project], from).await?;
        for l in subscribers {
            let expected: Vec<i64> = log
                .iter()
                .copied()
                .filter(|p| *p > l.subscribed_at)
                .collect();
            let seen: Vec<i64> = l.seen.iter().map(|(p, _)| *p).collect();
            if seen == expected {
                check.exact += 1;
                continue;
            }
            if seen.windows(2).any(|w| w[0] >= w[1]) {
                check.out_of_order += 1;
            }
            let seen_set: std::collections::HashSet<i64> = seen.iter().copied().collect();
            let expected_set: std::collections::HashSet<i64> = expected.iter().copied().collect();
            check.missing += expected_set.difference(&seen_set).count();
            check.unexpected += seen_set.difference(&expected_set).count();
        }
    }
    Ok(check)
}

/// A project's positions in the log after `after`.
async fn project_positions(
    running: &Running,
    project: Uuid,
    mut after: i64,
) -> anyhow::Result<Vec<i64>> {
    const PAGE: i64 = 1000;
    let mut positions = Vec::new();
    loop {
        let page =
            tandem_commands::log::read_project_after(&running.stack.pool, project, after, PAGE)
                .await?;
        let full = page.len() as i64 == PAGE;
        positions.extend(page.iter().map(|e| e.position));
        match positions.last() {
            Some(&last) if full => after = last,
            _ => return Ok(positions),
        }
    }
}

// -- the summary --------------------------------------------------------------------

fn print_summary(
    args: &RealtimeArgs,
    limits: &NofileLimit,
    log: Option<&std::path::Path>,
    m: &Measured,
) {
    println!();
    println!("tandem bench realtime");
    println!(
        "  setup        {} users owning {} projects (+1 for the fan-out), registered over HTTP; database {}",
        args.users, args.projects, args.database
    );
    println!(
        "  gateway      `tandem gateway` pid {} on {} (namespace {}); {}",
        m.gateway_pid,
        m.gateway_addr,
        m.namespace,
        log.map_or("it logged no warning".to_owned(), |log| format!(
            "its warnings and errors are in {}",
            log.display()
        ))
    );
    println!(
        "               the in-process stack runs sequencer, relay, projections and takes the commands (PATCH /projects/{{id}}: one event each)"
    );
    let limit_note = limits
        .error
        .as_ref()
        .map_or(String::new(), |e| format!(" (raising failed: {e})"));
    println!(
        "  open files   soft/hard {}/{} raised to {}/{} for this process and the gateway{limit_note}",
        limits.before.0, limits.before.1, limits.after.0, limits.after.1
    );
    println!("  note         the clients run in this process, on the same cores as the gateway and the stack");
    if let Some(idle) = &m.idle {
        print_idle(idle);
    }
    if let Some(fanout) = &m.fanout {
        print_fanout(args, fanout);
    }
    if let Some(deliveries) = &m.deliveries {
        print_deliveries(args, deliveries);
    }
    println!("goal");
    if let Some(idle) = &m.idle {
        let per = idle.per_connection(idle.after_hold, false);
        let caveat = if idle.asked < IDLE_CONNECTIONS_GOAL {
            format!(
                "; the goal is stated at {IDLE_CONNECTIONS_GOAL}, this run asked for {}",
                idle.asked
            )
        } else if idle.attempted < IDLE_CONNECTIONS_GOAL {
            format!(
                "; capped at {} by the open-file limits: {} here, {} in the gateway",
                idle.attempted, idle.own_files.limit, idle.gateway_files.limit
            )
        } else {
            String::new()
        };
        goal(
            &format!("{IDLE_CONNECTIONS_GOAL} idle connections held by one gateway"),
            idle.held() >= IDLE_CONNECTIONS_GOAL && error_total(&idle.failures) == 0,
            &format!("{} held{caveat}", idle.held()),
        );
        goal(
            &format!("<= {IDLE_KIB_GOAL:.0} KiB of gateway RSS per idle connection"),
            per <= IDLE_KIB_GOAL && idle.held() > idle.warm,
            &format!("{per:.1} KiB"),
        );
    }
    if let Some(f) = &m.fanout {
        let p99 = Percentiles::of(f.last.clone()).map(|p| p.p99);
        let caveat = if f.subscribers < FANOUT_SUBSCRIBERS_GOAL {
            format!(
                "; the goal is stated at {FANOUT_SUBSCRIBERS_GOAL} subscribers, this run had {}",
                f.subscribers
            )
        } else {
            String::new()
        };
        goal(
            &format!(
                "fan-out to {FANOUT_SUBSCRIBERS_GOAL}: accepted -> last subscriber p99 < {} ms, none missed",
                FANOUT_P99_GOAL.as_millis()
            ),
            p99.is_some_and(|p| p < FANOUT_P99_GOAL) && f.events_missed == 0,
            &format!(
                "p99 {}, {} events missed{caveat}",
                p99.map_or("n/a".to_owned(), |p| format!("{:.1} ms", ms(p))),
                f.events_missed
            ),
        );
    }
    if let Some(d) = &m.deliveries {
        goal(
            "deliveries: each subscriber got its project's events, gapless, in order",
            d.exact == d.subscribers && d.subscribers > 0 && error_total(&d.failures) == 0,
            &format!("{} of {} subscribers exact", d.exact, d.subscribers),
        );
    }
}

fn goal(what: &str, met: bool, detail: &str) {
    println!("  {what:<82} {} ({detail})", verdict(met));
}

fn print_idle(idle: &Idle) {
    println!(
        "  idle connections   (each authenticated and subscribed to one project, then silent)"
    );
    println!(
        "    files      open-file limit (soft) {} here with {} in use, {} in the gateway with {} in use; {} kept for other work",
        idle.own_files.limit,
        idle.own_files.open,
        idle.gateway_files.limit,
        idle.gateway_files.open,
        DESCRIPTOR_RESERVE
    );
    if idle.attempted < idle.asked {
        println!(
            "    capped     {} asked, {} attempted: that is all the open-file limits leave room for",
            idle.asked, idle.attempted
        );
    }
    println!(
        "    opened     {} of {} in {:.1}s ({:.0}/s), {} failed",
        idle.opened,
        idle.attempted,
        idle.open_time.as_secs_f64(),
        idle.opened as f64 / idle.open_time.as_secs_f64().max(f64::EPSILON),
        error_total(&idle.failures)
    );
    print_errors("               ", &idle.failures);
    println!(
        "    held       {} for {:.0}s (by default the gateway pings every 20 s, drops a socket silent for 60 s); it counted {}; {} lost",
        idle.held(),
        idle.held_for.as_secs_f64(),
        idle.gauge.map_or("?".to_owned(), |g| g.to_string()),
        error_total(&idle.lost)
    );
    print_errors("               ", &idle.lost);
    println!(
        "    gateway    {} descriptors open after the hold ({} before)",
        idle.gateway_open_after, idle.gateway_files.open
    );
    println!(
        "    CPU        opening: gateway {:.2}s ({:.0} µs per connection), this process {:.2}s; holding: gateway {:.1} % of a core",
        idle.cpu_open.gateway.as_secs_f64(),
        idle.cpu_open.gateway.as_secs_f64() * 1e6 / idle.opened.max(1) as f64,
        idle.cpu_open.own.as_secs_f64(),
        idle.cpu_hold.gateway.as_secs_f64() * 100.0
            / idle.held_for.saturating_sub(SETTLE).as_secs_f64().max(f64::EPSILON)
    );
    println!(
        "    RSS        {:.1} MiB after {} warm-up connections; {:.1} MiB with all open; {:.1} MiB after the hold",
        mib(idle.before.rss),
        idle.warm,
        mib(idle.after_open.rss),
        mib(idle.after_hold.rss)
    );
    println!(
        "    per conn   {:.1} KiB RSS ({:.1} KiB anonymous) after the hold; {:.1} KiB right after opening",
        idle.per_connection(idle.after_hold, false),
        idle.per_connection(idle.after_hold, true),
        idle.per_connection(idle.after_open, false)
    );
    println!(
        "    clients    this process: {:.1} MiB RSS with every client open; closing took the gateway {:.1}s",
        mib(idle.bench_rss),
        idle.drain.as_secs_f64()
    );
}

fn print_fanout(args: &RealtimeArgs, f: &Fanout) {
    println!(
        "  fan-out   ({} subscribers of one project, one user; {} commands, one every {} ms)",
        f.subscribers, args.fanout_events, args.fanout_interval_ms
    );
    if error_total(&f.failures) > 0 {
        println!(
            "    failed     {} subscribers could not open",
            error_total(&f.failures)
        );
        print_errors("               ", &f.failures);
    }
    print_latency("answer", "command sent -> 2xx answer", &f.answer);
    print_latency("first", "answer -> first subscriber read it", &f.first);
    print_latency("last", "answer -> last subscriber read it", &f.last);
    let events = f.last.len().max(1) as f64;
    println!(
        "    CPU        per event: gateway {:.1} ms, this process (clients and stack) {:.1} ms",
        ms(f.cpu.gateway) / events,
        ms(f.cpu.own) / events
    );
    println!(
        "    missed     {} events missed by some subscriber ({} deliveries); {} commands failed; {} subscribers lost",
        f.events_missed,
        f.deliveries_missed,
        error_total(&f.commands_failed),
        error_total(&f.lost)
    );
    print_errors("               ", &f.commands_failed);
    print_errors("               ", &f.lost);
}

fn print_latency(name: &str, what: &str, samples: &[Duration]) {
    match Percentiles::of(samples.to_vec()) {
        Some(p) => println!(
            "    {name:<10} ms p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}   ({what}, {} events)",
            ms(p.p50),
            ms(p.p90),
            ms(p.p99),
            ms(p.max),
            p.count
        ),
        None => println!("    {name:<10} no samples ({what})"),
    }
}

fn print_deliveries(args: &RealtimeArgs, d: &Deliveries) {
    let secs = d.window.as_secs_f64().max(f64::EPSILON);
    println!(
        "  deliveries   ({} subscribers: {} in each of {} projects; {} HTTP clients, closed loop, round-robin over the projects)",
        d.subscribers,
        args.subscribers_per_project,
        args.projects,
        args.http_concurrency
    );
    if error_total(&d.failures) > 0 {
        println!(
            "    failed     {} subscribers could not open",
            error_total(&d.failures)
        );
        print_errors("               ", &d.failures);
    }
    println!(
        "    commands   {} accepted in {secs:.1}s = {:.0}/s; {} failed",
        d.commands_ok,
        d.commands_ok as f64 / secs,
        error_total(&d.commands_failed)
    );
    print_errors("               ", &d.commands_failed);
    println!(
        "    delivered  {} event frames during the load = {:.0}/s",
        d.delivered_in_window,
        d.delivered_in_window as f64 / secs
    );
    println!(
        "    CPU        gateway {:.0} % of a core ({:.1} µs per delivery), this process {:.0} %",
        d.cpu.gateway.as_secs_f64() * 100.0 / secs,
        d.cpu.gateway.as_secs_f64() * 1e6 / d.delivered_in_window.max(1) as f64,
        d.cpu.own.as_secs_f64() * 100.0 / secs
    );
    let series: Vec<String> = d.per_second.iter().map(u64::to_string).collect();
    println!("    per second {}", series.join(" "));
    println!(
        "    drained    {} of {} owed frames read, {:.2}s after the load ended",
        d.delivered_total,
        d.expected_total,
        d.drain.as_secs_f64()
    );
    println!(
        "    checked    {} subscribers exactly the log's events after their `subscribed` position; {} missing, {} unexpected, {} out of order; {} lost",
        d.exact,
        d.missing,
        d.unexpected,
        d.out_of_order,
        error_total(&d.lost)
    );
    print_errors("               ", &d.lost);
}
