//! The stack under test and talking to it: the in-process stack, the HTTP
//! client, and the untimed setup of users, projects and workspaces.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::{StreamExt, TryStreamExt};
use rand::RngCore;
use redis::AsyncCommands;
use reqwest::{Client, Method, RequestBuilder};
use serde_json::{json, Value};
use tandem_commands::db::PoolConfig;
use tandem_commands::relay::RelayConfig;
use tandem_commands::sequencer::SequencerConfig;
use tandem_commands::WriteSideConfig;
use tandem_domain::envelope::BusNames;
use tandem_gateway::{GatewayConfig, Secret};
use tandem_projections::consumer::ConsumerConfig;
use tokio::net::TcpListener;
use uuid::Uuid;

use super::database::BenchDatabase;
use super::wire::Wire;
use crate::settings::Common;
use crate::stack::{self, Endpoints, Stack, StackOptions};

/// Where the gateway serves the API.
pub(super) const API_PREFIX: &str = "/api/v1";

/// The gateway's base URL and a client with enough pooled connections for
/// every concurrent loop (so no request pays for a new TCP connection).
#[derive(Clone)]
pub(super) struct Api {
    addr: SocketAddr,
    /// `http://<addr>`: the operations endpoints (`/healthz`, `/metrics`).
    origin: String,
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
            addr,
            origin: format!("http://{addr}"),
            base: format!("http://{addr}{API_PREFIX}"),
            client,
        })
    }

    /// A connection of its own for a load loop (see [`Wire`]).
    pub(super) fn wire(&self) -> Wire {
        Wire::new(self.addr)
    }

    /// A request outside the API prefix (`/healthz`, `/metrics`).
    pub(super) fn operations(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.origin))
    }

    pub(super) fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
    ) -> RequestBuilder {
        let request = self.client.request(method, format!("{}{path}", self.base));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends a setup request (not measured): anything but 2xx is an error.
    pub(super) async fn expect_ok(&self, request: RequestBuilder) -> anyhow::Result<Value> {
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("setup request failed with {status}: {text}");
        }
        Ok(serde_json::from_str(&text)?)
    }
}

/// What runs besides the gateway and the sequencer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Roles {
    /// The command path alone: no relay, no projections.
    CommandPath,
    /// Also the relay (log to JetStream) and the projections (JetStream to
    /// the read models and the hot state), with their default settings.
    WithReadSide,
    /// The relay, the job desk and an executor of `slots`; with or
    /// without the projections (the read side is not needed to run jobs).
    WithJobs { slots: usize, projections: bool },
}

/// A whole stack in this process, as `tandem up` runs it (sequencer on,
/// default write side), minus the rate limits, which would measure
/// themselves instead of the command path.
pub(super) struct Running {
    pub(super) stack: Stack,
    pub(super) api: Api,
    /// This run's own NATS/Redis namespace (`bench<uuid>`).
    pub(super) namespace: String,
    /// Its gateway's configuration (secret, namespace), to start again.
    pub(super) gateway: GatewayConfig,
}

impl Running {
    /// Starts the stack with `roles`. A stack started again with the
    /// [`Running::gateway`] of an earlier one (same secret and namespace)
    /// accepts its tokens; [`bench_gateway_config`] makes a fresh one.
    pub(super) async fn start(
        common: &Common,
        db: &BenchDatabase,
        pool_size: u32,
        http_connections: usize,
        write: WriteSideConfig,
        roles: Roles,
        gateway: GatewayConfig,
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
        let namespace = gateway.namespace.clone();
        let (relay, projections) = match roles {
            Roles::CommandPath => (false, false),
            Roles::WithReadSide => (true, true),
            Roles::WithJobs { projections, .. } => (true, projections),
        };
        let executor = match roles {
            Roles::WithJobs { slots, .. } => Some(crate::settings::executor_config(
                std::env::current_exe()?,
                slots,
                tandem_executor::sandbox::Limits::default(),
            )),
            Roles::CommandPath | Roles::WithReadSide => None,
        };
        let options = StackOptions {
            gateway: gateway.clone(),
            write,
            sequencer: Some(SequencerConfig::default()),
            // Without the read side: the command path alone, as the
            // foundation's goal measures it.
            relay: relay.then(RelayConfig::default),
            projections: projections.then(ConsumerConfig::default),
            job_desk: executor
                .is_some()
                .then(tandem_commands::jobs::JobDeskConfig::default),
            executor,
        };
        let stack = Stack::start(connections, listener, options).await?;
        let api = Api::new(stack.addr, http_connections)?;
        Ok(Self {
            stack,
            api,
            namespace,
            gateway,
        })
    }

    /// Stops the roles and closes the pool, so its connections do not
    /// count against the server's `max_connections` during pgbench.
    pub(super) async fn stop(self) {
        self.stack.stop().await;
    }

    /// Stops, then removes what the run left on the shared servers: its
    /// JetStream events stream (with its consumers) and its Redis keys.
    /// Best effort: a failure is reported, not fatal.
    pub(super) async fn stop_and_clean(self, common: &Common) {
        let namespace = self.namespace.clone();
        self.stop().await;
        if let Err(e) = remove_namespace(common, &namespace).await {
            eprintln!("bench: could not remove namespace {namespace} from NATS/Redis: {e:#}");
        }
    }
}

/// Deletes namespace `namespace`'s events stream and Redis keys.
async fn remove_namespace(common: &Common, namespace: &str) -> anyhow::Result<()> {
    let names = BusNames::new(namespace)?;
    let nats = async_nats::connect(common.nats_url.as_str()).await?;
    let js = async_nats::jetstream::new(nats);
    // Absent when the relay never created them: nothing to remove.
    for stream in [
        names.events_stream(),
        names.jobs_stream(),
        names.job_reports_stream(),
    ] {
        let _ = js.delete_stream(stream).await;
    }
    let mut redis = redis::Client::open(common.redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let keys: Vec<String> = redis
        .scan_match::<_, String>(format!("{namespace}:*"))
        .await?
        .try_collect()
        .await?;
    for chunk in keys.chunks(500) {
        redis.del::<_, ()>(chunk).await?;
    }
    Ok(())
}

/// A random JWT key and a fresh namespace per run, so a bench never shares
/// keys, Redis state or subjects with a real deployment.
pub(super) fn bench_gateway_config() -> GatewayConfig {
    let mut config = GatewayConfig::with_secret(Secret::new(random_hex().into_bytes()));
    config.namespace = format!("bench{}", Uuid::new_v4().simple());
    config.rate_limits.auth_per_ip = 1_000_000;
    config.rate_limits.login_per_account = 1_000_000;
    config.rate_limits.api_per_user = 1_000_000;
    config
}

/// 256 random bits as hex: the JWT key, and the bench users' password.
pub(super) fn random_hex() -> String {
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

// -- setup: users, projects, workspaces (not timed) -------------------------

/// Argon2 runs behind a small semaphore anyway; more setup requests in
/// flight would only queue.
const SETUP_PARALLELISM: usize = 8;

/// Registers `count` users with one password; returns their emails.
pub(super) async fn register_users(
    api: &Api,
    count: u32,
    password: &str,
) -> anyhow::Result<Vec<String>> {
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

/// Logs every user in through `login` (the request to send each one's
/// credentials to); returns their access tokens.
pub(super) async fn log_in_all(
    emails: &[String],
    password: &str,
    login: impl Fn(&str) -> RequestBuilder,
) -> anyhow::Result<Vec<String>> {
    futures::stream::iter(emails)
        .map(|email| {
            let request = login(email).json(&json!({"email": email, "password": password}));
            async move {
                let response = request.send().await?;
                let status = response.status();
                let body: Value = response.json().await?;
                anyhow::ensure!(status.is_success(), "login failed with {status}: {body}");
                let token = body["access_token"].as_str().context("no access_token")?;
                Ok(token.to_owned())
            }
        })
        .buffered(SETUP_PARALLELISM)
        .try_collect()
        .await
}

/// How long setup waits for the read side to catch up.
pub(super) const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// `GET /projects?min_position=N` as `token`, retried while the read side
/// answers 503 `not_caught_up`; the page's bytes.
pub(super) async fn projects_at(api: &Api, token: &str, position: i64) -> anyhow::Result<Vec<u8>> {
    let deadline = tokio::time::Instant::now() + CATCH_UP_TIMEOUT;
    loop {
        let path = format!("/projects?min_position={position}");
        let response = api.request(Method::GET, &path, Some(token)).send().await?;
        let status = response.status();
        let body = response.bytes().await?;
        if status == reqwest::StatusCode::OK {
            return Ok(body.to_vec());
        }
        if status != reqwest::StatusCode::SERVICE_UNAVAILABLE
            || tokio::time::Instant::now() > deadline
        {
            bail!("GET {path}: {status} {}", String::from_utf8_lossy(&body));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends a command; its position (the last of its events) or the kind of
/// failure.
pub(super) async fn send_command(request: RequestBuilder) -> Result<i64, String> {
    let response = request
        .send()
        .await
        .map_err(|e| format!("transport: {e}"))?;
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| format!("transport (body): {e}"))?;
    let body = serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null);
    if !status.is_success() {
        let code = body["code"].as_str().unwrap_or("(no code)");
        return Err(format!("{} {code}", status.as_u16()));
    }
    body["position"]
        .as_i64()
        .ok_or_else(|| format!("{} without position", status.as_u16()))
}

/// `count` logged-in users.
pub(super) async fn tokens(api: &Api, count: u32) -> anyhow::Result<Vec<String>> {
    let password = random_hex();
    let emails = register_users(api, count, &password).await?;
    log_in_all(&emails, &password, |_| {
        api.request(Method::POST, "/auth/login", None)
    })
    .await
}

/// A logged-in user with a workspace of its own to write files into.
#[derive(Clone)]
pub(super) struct Actor {
    pub(super) token: String,
    pub(super) workspace: String,
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

pub(super) async fn actors(api: &Api, count: u32) -> anyhow::Result<Vec<Actor>> {
    let tokens = tokens(api, count).await?;
    futures::stream::iter(tokens)
        .map(|token| actor(api, token))
        .buffered(SETUP_PARALLELISM)
        .try_collect()
        .await
}
