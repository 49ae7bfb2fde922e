//! Command-line flags, each with an environment variable and a default
//! that works on a developer machine. Secrets have no default: a local run
//! without `TANDEM_JWT_SECRET` generates one under the data folder.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use rand::RngCore;
use tandem_gateway::{GatewayConfig, Secret};

#[derive(Args, Clone, Debug)]
pub struct Common {
    /// Postgres holding the event store (created if missing).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/tandem",
        global = true
    )]
    pub database_url: String,
    /// NATS with JetStream.
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true
    )]
    pub nats_url: String,
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        global = true
    )]
    pub redis_url: String,
    /// Prefix of every NATS subject/stream and Redis key of this deployment.
    #[arg(
        long,
        env = "TANDEM_NAMESPACE",
        default_value = "tandem",
        global = true
    )]
    pub namespace: String,
    /// Local state: generated secrets, private service instances.
    #[arg(
        long,
        env = "TANDEM_DATA_DIR",
        default_value = ".tandem",
        global = true
    )]
    pub data_dir: PathBuf,
    /// `json`, `pretty` or `auto` (pretty on a terminal).
    #[arg(long, env = "TANDEM_LOG_FORMAT", default_value = "auto", global = true)]
    pub log_format: String,
    /// Postgres connections per process.
    #[arg(
        long,
        env = "TANDEM_DB_MAX_CONNECTIONS",
        default_value_t = 32,
        global = true
    )]
    pub db_max_connections: u32,
}

#[derive(Args, Clone, Debug)]
pub struct Http {
    #[arg(long, env = "TANDEM_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// HS256 key for access tokens (at least 32 bytes).
    #[arg(long, env = "TANDEM_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    #[arg(long, env = "TANDEM_JWT_ISSUER", default_value = "tandem")]
    pub jwt_issuer: String,
    #[arg(long, env = "TANDEM_JWT_AUDIENCE", default_value = "tandem-api")]
    pub jwt_audience: String,
    #[arg(long, env = "TANDEM_ACCESS_TOKEN_TTL_SECS", default_value_t = 900)]
    pub access_token_ttl_secs: u64,
    #[arg(long, env = "TANDEM_SESSION_TTL_SECS", default_value_t = 30 * 24 * 3600)]
    pub session_ttl_secs: u64,
    #[arg(long, env = "TANDEM_BODY_LIMIT_BYTES", default_value_t = 1024 * 1024)]
    pub body_limit_bytes: usize,
    /// Comma-separated origins allowed by CORS, e.g. `https://app.example.com`.
    #[arg(
        long,
        env = "TANDEM_CORS_ORIGINS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub cors_origins: Vec<String>,
    /// Auth endpoints, per client address, per minute.
    #[arg(long, env = "TANDEM_RATE_LIMIT_AUTH_PER_MIN", default_value_t = 10)]
    pub rate_limit_auth_per_min: u32,
    /// Login attempts per account per minute.
    #[arg(
        long,
        env = "TANDEM_RATE_LIMIT_LOGIN_PER_ACCOUNT_PER_MIN",
        default_value_t = 10
    )]
    pub rate_limit_login_per_account_per_min: u32,
    /// Other API requests per user per minute.
    #[arg(long, env = "TANDEM_RATE_LIMIT_API_PER_MIN", default_value_t = 600)]
    pub rate_limit_api_per_min: u32,
    /// Take the client address from X-Forwarded-For (only behind a proxy).
    #[arg(long, env = "TANDEM_TRUST_FORWARDED_FOR", default_value_t = false)]
    pub trust_forwarded_for: bool,
    /// How long a command waits for its events' log position.
    #[arg(long, env = "TANDEM_POSITION_WAIT_MS", default_value_t = 2000)]
    pub position_wait_ms: u64,
    /// Argon2 hashes at once (default: half the cores).
    #[arg(long, env = "TANDEM_HASH_CONCURRENCY")]
    pub hash_concurrency: Option<usize>,
    /// The share of time (percent) each hashing thread may spend hashing;
    /// the rest protects other requests from a login storm.
    #[arg(long, env = "TANDEM_HASH_DUTY_PERCENT", default_value_t = tandem_commands::passwords::DEFAULT_DUTY_PERCENT,
          value_parser = clap::value_parser!(u8).range(1..=100))]
    pub hash_duty_percent: u8,
    /// WebSocket frames queued per connection before it is cut off as a
    /// slow consumer (close 1013).
    #[arg(long, env = "TANDEM_WS_OUTBOX_FRAMES", default_value_t = 1024)]
    pub ws_outbox_frames: usize,
    /// WebSocket connections one gateway holds at most.
    #[arg(long, env = "TANDEM_WS_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub ws_max_connections: usize,
    /// A WebSocket must authenticate within this long.
    #[arg(long, env = "TANDEM_WS_AUTH_TIMEOUT_MS", default_value_t = 5000)]
    pub ws_auth_timeout_ms: u64,
    /// Server pings every this long; a connection silent for three times
    /// as long is closed.
    #[arg(long, env = "TANDEM_WS_PING_SECS", default_value_t = 20)]
    pub ws_ping_secs: u64,
    /// Presence outlives a dead gateway by at most this long.
    #[arg(long, env = "TANDEM_WS_PRESENCE_TTL_SECS", default_value_t = 30)]
    pub ws_presence_ttl_secs: u64,
    /// Cursors and broadcasts per second per connection.
    #[arg(long, env = "TANDEM_WS_EPHEMERAL_PER_SEC", default_value_t = 30)]
    pub ws_ephemeral_per_sec: u32,
}

/// Running jobs (`tandem executor`, and inside `tandem up`).
#[derive(Args, Clone, Debug)]
pub struct Executing {
    /// Jobs run at once by one executor (default: the number of cores).
    #[arg(long, env = "TANDEM_EXECUTOR_CONCURRENCY")]
    pub executor_concurrency: Option<usize>,
    /// Ceiling of a job's wall-time limit (a job asks for its own, 10 s by default).
    #[arg(long, env = "TANDEM_JOB_MAX_WALL_MS", default_value_t = 60_000)]
    pub job_max_wall_ms: u64,
    /// CPU time a run may use.
    #[arg(long, env = "TANDEM_JOB_MAX_CPU_MS", default_value_t = 10_000)]
    pub job_max_cpu_ms: u64,
    /// Memory of a run's processes together (cgroup).
    #[arg(long, env = "TANDEM_JOB_MAX_MEMORY_MB", default_value_t = 256)]
    pub job_max_memory_mb: u64,
    /// Processes (and threads) a run may have at once.
    #[arg(long, env = "TANDEM_JOB_MAX_PROCESSES", default_value_t = 64)]
    pub job_max_processes: u32,
    /// Output kept per stream (stdout, stderr); beyond it the result says `truncated`.
    #[arg(long, env = "TANDEM_JOB_MAX_OUTPUT_BYTES", default_value_t = 1 << 20)]
    pub job_max_output_bytes: u64,
    /// Size of a run's working directory.
    #[arg(long, env = "TANDEM_JOB_MAX_WORKDIR_MB", default_value_t = 16)]
    pub job_max_workdir_mb: u64,
    /// How often an executor declares its running attempts alive.
    #[arg(long, env = "TANDEM_EXECUTOR_HEARTBEAT_MS", default_value_t = 5_000)]
    pub executor_heartbeat_ms: u64,
}

impl Executing {
    /// The executor of this process, launching sandboxes with this binary.
    pub fn config(&self) -> anyhow::Result<tandem_executor::ExecutorConfig> {
        let exe =
            std::env::current_exe().context("locating the tandem binary (the sandbox launcher)")?;
        let concurrency = self
            .executor_concurrency
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
            .max(1);
        let ceiling = tandem_executor::sandbox::Limits {
            wall_ms: self.job_max_wall_ms.max(100),
            cpu_ms: self.job_max_cpu_ms.max(100),
            memory_bytes: self.job_max_memory_mb.max(16) << 20,
            processes: self.job_max_processes.max(1),
            output_bytes: self.job_max_output_bytes,
            workdir_bytes: self.job_max_workdir_mb.max(1) << 20,
        };
        let mut config = executor_config(exe, concurrency, ceiling);
        config.heartbeat_interval = Duration::from_millis(self.executor_heartbeat_ms.max(10));
        Ok(config)
    }
}

/// Whether this process may build sandboxes: each run switches to a slot
/// uid of its own and gets cgroups, which takes root.
pub fn may_run_sandboxes() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let uids = status.lines().find(|l| l.starts_with("Uid:"))?.to_owned();
            Some(uids.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// An executor whose sandboxes are launched by `exe __sandbox` (the
/// `tandem` binary), `concurrency` runs at once.
pub fn executor_config(
    exe: PathBuf,
    concurrency: usize,
    ceiling: tandem_executor::sandbox::Limits,
) -> tandem_executor::ExecutorConfig {
    let sandbox = tandem_executor::sandbox::SandboxConfig {
        launcher: vec![exe.into_os_string(), tandem_executor::LAUNCHER_ARG.into()],
        max_concurrent: concurrency,
        ceiling,
    };
    tandem_executor::ExecutorConfig::new(sandbox)
}

/// How long a running attempt's worker may stay silent (the write side's lease).
#[derive(Args, Clone, Debug)]
pub struct JobLeases {
    #[arg(long, env = "TANDEM_JOB_LEASE_MS", default_value_t = 30_000)]
    pub job_lease_ms: u64,
}

impl JobLeases {
    pub fn config(&self) -> tandem_commands::jobs::JobDeskConfig {
        tandem_commands::jobs::JobDeskConfig {
            lease_ttl: Duration::from_millis(self.job_lease_ms.max(100)),
            ..Default::default()
        }
    }
}

#[derive(Args, Clone, Debug)]
pub struct Sequencing {
    /// Fallback poll when no NOTIFY arrives.
    #[arg(long, env = "TANDEM_SEQUENCER_POLL_MS", default_value_t = 250)]
    pub sequencer_poll_ms: u64,
    #[arg(long, env = "TANDEM_SEQUENCER_BATCH", default_value_t = 5000)]
    pub sequencer_batch: i32,
}

impl Sequencing {
    pub fn config(&self) -> tandem_commands::sequencer::SequencerConfig {
        tandem_commands::sequencer::SequencerConfig {
            batch_size: self.sequencer_batch.max(1),
            poll_interval: Duration::from_millis(self.sequencer_poll_ms.max(1)),
            ..Default::default()
        }
    }
}

impl Http {
    pub fn gateway_config(&self, common: &Common) -> anyhow::Result<GatewayConfig> {
        let secret = match &self.jwt_secret {
            Some(s) if s.len() >= 32 => s.as_bytes().to_vec(),
            Some(_) => anyhow::bail!("TANDEM_JWT_SECRET must be at least 32 bytes"),
            None => local_secret(&common.data_dir)?,
        };
        let mut config = GatewayConfig::with_secret(Secret::new(secret));
        config.jwt.issuer = self.jwt_issuer.clone();
        config.jwt.audience = self.jwt_audience.clone();
        config.jwt.access_ttl = Duration::from_secs(self.access_token_ttl_secs.max(1));
        config.rate_limits.auth_per_ip = self.rate_limit_auth_per_min;
        config.rate_limits.login_per_account = self.rate_limit_login_per_account_per_min;
        config.rate_limits.api_per_user = self.rate_limit_api_per_min;
        config.body_limit = self.body_limit_bytes;
        config.cors_origins = self
            .cors_origins
            .iter()
            .map(|o| o.trim())
            .filter(|o| !o.is_empty())
            .map(|o| o.parse().with_context(|| format!("bad CORS origin {o:?}")))
            .collect::<anyhow::Result<_>>()?;
        config.namespace = common.namespace.clone();
        config.trust_forwarded_for = self.trust_forwarded_for;
        let ping = Duration::from_secs(self.ws_ping_secs.max(1));
        config.realtime = tandem_gateway::RealtimeConfig {
            outbox_frames: self.ws_outbox_frames.max(2),
            max_connections: self.ws_max_connections,
            auth_timeout: Duration::from_millis(self.ws_auth_timeout_ms.max(1)),
            ping_interval: ping,
            idle_timeout: ping * 3,
            presence_ttl: Duration::from_secs(self.ws_presence_ttl_secs.max(1)),
            ephemeral_per_sec: self.ws_ephemeral_per_sec.max(1),
            ..config.realtime
        };
        Ok(config)
    }

    pub fn write_config(&self) -> tandem_commands::WriteSideConfig {
        let mut config = tandem_commands::WriteSideConfig {
            position_wait: Duration::from_millis(self.position_wait_ms),
            session_ttl: Duration::from_secs(self.session_ttl_secs.max(60)),
            hash_duty_percent: self.hash_duty_percent,
            ..Default::default()
        };
        if let Some(n) = self.hash_concurrency {
            config.hash_concurrency = n.max(1);
        }
        config
    }
}

/// The JWT key of a local run: read from `<data_dir>/jwt-secret`, or made
/// (256 random bits, owner-only file) on first start.
fn local_secret(data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let path = data_dir.join("jwt-secret");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim();
        if existing.len() >= 32 {
            return Ok(existing.as_bytes().to_vec());
        }
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let secret: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, &secret).with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(path = %path.display(), "generated a local JWT secret");
    Ok(secret.into_bytes())
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_run_generates_its_jwt_secret_once_and_keeps_it_private() {
        let dir = std::env::temp_dir().join(format!("tandem-secret-{}", uuid::Uuid::new_v4()));
        let first = local_secret(&dir).unwrap();
        assert_eq!(first.len(), 64, "256 bits, hex");
        assert_eq!(local_secret(&dir).unwrap(), first, "a second run reuses it");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("jwt-secret"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "readable by its owner only");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
