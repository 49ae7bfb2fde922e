//! The harness: every test gets a fresh database (cloned from a migrated
//! template), its own NATS/Redis namespace, and a whole stack on port 0,
//! talking to the real Postgres, NATS and Redis named by `DATABASE_URL`,
//! `NATS_URL` and `REDIS_URL`.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tandem::stack::{self, Connections, Endpoints, Stack, StackOptions};
use tandem_commands::db::{PoolConfig, MIGRATOR};
use tandem_commands::jobs::JobDeskConfig;
use tandem_commands::relay::RelayConfig;
use tandem_commands::sequencer::SequencerConfig;
use tandem_commands::WriteSideConfig;
use tandem_executor::sandbox::{Limits, SandboxConfig};
use tandem_executor::ExecutorConfig;
use tandem_gateway::{GatewayConfig, Secret};
use tandem_projections::consumer::ConsumerConfig;
use tokio::net::TcpListener;
use tokio::sync::OnceCell;
use uuid::Uuid;

pub const PASSWORD: &str = "correct horse battery staple";
pub const JWT_SECRET: &[u8] = b"test-secret-test-secret-test-secret!!";

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/tandem".to_owned())
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

pub fn server_options() -> PgConnectOptions {
    tandem_commands::db::connect_options(&database_url())
        .expect("DATABASE_URL parses")
        .database("postgres")
        .disable_statement_logging()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The template's name carries a digest of the migrations, so a changed
/// migration gets a fresh template.
fn template_name() -> String {
    let mut digest: u64 = 0xcbf2_9ce4_8422_2325;
    for m in MIGRATOR.iter() {
        for b in m.checksum.iter() {
            digest = (digest ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    format!("tandem_tpl_{digest:016x}")
}

static TEMPLATE: OnceCell<String> = OnceCell::const_new();

/// Creates the migrated template once per test run (guarded by an
/// advisory lock against other test processes) and drops test databases
/// left behind by runs more than two hours old.
async fn template() -> &'static str {
    TEMPLATE
        .get_or_init(|| async {
            let name = template_name();
            let mut admin = PgConnection::connect_with(&server_options())
                .await
                .expect("connect to the Postgres server of DATABASE_URL");
            sqlx::query("SELECT pg_advisory_lock(7261756)")
                .execute(&mut admin)
                .await
                .unwrap();
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                    .bind(&name)
                    .fetch_one(&mut admin)
                    .await
                    .unwrap();
            if !exists {
                let building = format!("{name}_building");
                sqlx::query(&format!("DROP DATABASE IF EXISTS {building}"))
                    .execute(&mut admin)
                    .await
                    .unwrap();
                sqlx::query(&format!("CREATE DATABASE {building}"))
                    .execute(&mut admin)
                    .await
                    .unwrap();
                let mut conn = PgConnection::connect_with(&server_options().database(&building))
                    .await
                    .unwrap();
                MIGRATOR.run(&mut conn).await.expect("migrations apply");
                conn.close().await.unwrap();
                sqlx::query(&format!("ALTER DATABASE {building} RENAME TO {name}"))
                    .execute(&mut admin)
                    .await
                    .unwrap();
            }
            let stale: Vec<String> = sqlx::query_scalar(
                "SELECT datname FROM pg_database WHERE datname LIKE 'tandem\\_t\\_%'",
            )
            .fetch_all(&mut admin)
            .await
            .unwrap();
            let cutoff = now_secs().saturating_sub(2 * 3600);
            for db in stale {
                let born: u64 = db
                    .split('_')
                    .nth(2)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(u64::MAX);
                if born < cutoff {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                }
            }
            delete_stale_streams(cutoff).await;
            sqlx::query("SELECT pg_advisory_unlock(7261756)")
                .execute(&mut admin)
                .await
                .unwrap();
            admin.close().await.unwrap();
            name
        })
        .await
}

/// Deletes the events streams of test namespaces born before `cutoff`
/// (`T<unix secs>N<hex>_EVENTS`); NATS being away only skips the cleanup.
async fn delete_stale_streams(cutoff: u64) {
    use futures::StreamExt;
    let Ok(client) = async_nats::connect(nats_url()).await else {
        return;
    };
    let js = async_nats::jetstream::new(client);
    let names: Vec<String> = js
        .stream_names()
        .filter_map(|n| async move { n.ok() })
        .collect()
        .await;
    for name in names {
        let born = name
            .strip_prefix('T')
            .and_then(|rest| rest.split_once('N'))
            .and_then(|(secs, _)| secs.parse::<u64>().ok());
        // Runs before the birth time was in the name: a bare 32-hex id.
        let legacy = name
            .strip_prefix('T')
            .and_then(|rest| rest.strip_suffix("_EVENTS"))
            .is_some_and(|id| id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()));
        let ours = ["_EVENTS", "_JOBS", "_JOB_REPORTS"]
            .iter()
            .any(|suffix| name.ends_with(suffix));
        if legacy || (born.is_some_and(|b| b < cutoff) && ours) {
            let _ = js.delete_stream(&name).await;
        }
    }
}

/// A fresh, migrated database; returns its URL.
pub async fn fresh_database() -> String {
    let template = template().await;
    let name = format!("tandem_t_{}_{}", now_secs(), Uuid::new_v4().simple());
    let mut admin = PgConnection::connect_with(&server_options()).await.unwrap();
    // Cloning needs the template to have no connections; retry briefly if
    // another test is cloning it right now.
    let mut attempts = 0;
    loop {
        let created = sqlx::query(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
            .execute(&mut admin)
            .await;
        match created {
            Ok(_) => break,
            Err(e) if attempts < 50 => {
                attempts += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("could not create a test database: {e}"),
        }
    }
    admin.close().await.unwrap();
    let options = tandem_commands::db::connect_options(&database_url())
        .unwrap()
        .database(&name);
    options.to_url_lossy().to_string()
}

pub async fn pool(url: &str, max: u32) -> PgPool {
    tandem_commands::db::connect(
        url,
        &PoolConfig {
            max_connections: max,
            acquire_timeout: Duration::from_secs(30),
        },
    )
    .await
    .expect("connect to the test database")
}

/// A gateway configuration for tests: limits high enough not to get in the
/// way, except where a test lowers them.
pub fn gateway_config(namespace: &str) -> GatewayConfig {
    let mut config = GatewayConfig::with_secret(Secret::new(JWT_SECRET.to_vec()));
    config.namespace = namespace.to_owned();
    config.rate_limits.auth_per_ip = 100_000;
    config.rate_limits.login_per_account = 100_000;
    config.rate_limits.api_per_user = 100_000;
    config
}

pub struct Options {
    pub gateway: GatewayConfig,
    pub write: WriteSideConfig,
    pub sequencer: bool,
    /// Run the relay and the projections (the read side).
    pub read_side: bool,
    /// Where this app's Redis is (a test may give it one of its own).
    pub redis_url: String,
    /// The job desk (claims, heartbeats, reports); on by default.
    pub job_desk: Option<JobDeskConfig>,
    /// An executor in this process; off unless a test runs jobs.
    pub executor: Option<ExecutorConfig>,
}

/// An executor as the `tandem` binary runs one, launching sandboxes with
/// the binary built for these tests; quick heartbeats and redeliveries.
pub fn test_executor(concurrency: usize) -> ExecutorConfig {
    let sandbox = SandboxConfig {
        launcher: vec![
            env!("CARGO_BIN_EXE_tandem").into(),
            tandem_executor::LAUNCHER_ARG.into(),
        ],
        max_concurrent: concurrency,
        ceiling: Limits::default(),
    };
    let mut config = ExecutorConfig::new(sandbox);
    config.heartbeat_interval = Duration::from_millis(200);
    config.ack_wait = Duration::from_secs(2);
    config
}

/// A desk whose leases run out quickly (lost-worker tests).
pub fn quick_leases(lease: Duration) -> JobDeskConfig {
    JobDeskConfig {
        lease_ttl: lease,
        reap_interval: Duration::from_millis(100),
        ..JobDeskConfig::default()
    }
}

pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    pub pool: PgPool,
    pub db_url: String,
    pub namespace: String,
    stack: Option<Stack>,
    /// What this app created and removes when its test passes.
    owned: Option<Owned>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stack) = &self.stack {
            stack.shutdown_token().cancel();
        }
        // A passed test leaves nothing behind: a long session's leftovers
        // (hundreds of databases for autovacuum to visit, thousands of
        // streams) slow the shared services for everything after them. A
        // failed test keeps its database and streams for a look; the
        // start-up sweep removes them hours later.
        if let Some(owned) = self.owned.take() {
            if !std::thread::panicking() {
                let _ = std::thread::spawn(move || owned.remove()).join();
            }
        }
    }
}

/// A test's own database and, unless it joined another app's, namespace.
struct Owned {
    database: String,
    namespace: Option<String>,
}

impl Owned {
    /// Best effort, on a runtime of its own (the test's may be ending).
    fn remove(self) {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            if let Ok(mut admin) = PgConnection::connect_with(&server_options()).await {
                let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.database);
                let _ = sqlx::query(&drop).execute(&mut admin).await;
                let _ = admin.close().await;
            }
            let Some(namespace) = self.namespace else {
                return;
            };
            let Ok(client) = async_nats::connect(nats_url()).await else {
                return;
            };
            let js = async_nats::jetstream::new(client);
            let prefix = format!("{}_", namespace.to_uppercase());
            use futures::StreamExt;
            let names: Vec<String> = js
                .stream_names()
                .filter_map(|n| async move { n.ok() })
                .collect()
                .await;
            for name in names.into_iter().filter(|n| n.starts_with(&prefix)) {
                let _ = js.delete_stream(&name).await;
            }
        });
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(customize: impl FnOnce(&mut Options)) -> TestApp {
    // The birth time in the name lets a later run remove the NATS streams
    // of runs that were killed before cleaning up.
    let namespace = format!(
        "t{}n{}",
        now_secs(),
        &Uuid::new_v4().simple().to_string()[..12]
    );
    let mut options = Options {
        gateway: gateway_config(&namespace),
        write: WriteSideConfig {
            // The hashing bound is measured by the benchmark; tests want speed.
            hash_concurrency: 4,
            ..WriteSideConfig::default()
        },
        sequencer: true,
        read_side: true,
        redis_url: redis_url(),
        job_desk: Some(JobDeskConfig::default()),
        executor: None,
    };
    customize(&mut options);
    let own_namespace = options.gateway.namespace == namespace;
    let db_url = fresh_database().await;
    let database = db_name(&db_url);
    let mut app = start(db_url, namespace.clone(), options).await;
    app.owned = Some(Owned {
        database,
        namespace: own_namespace.then_some(namespace),
    });
    app
}

/// The database a URL names (`.../<name>` or `.../<name>?...`).
fn db_name(url: &str) -> String {
    let path = url.split('?').next().unwrap_or(url);
    path.rsplit('/').next().unwrap_or(path).to_owned()
}

/// Starts a stack on `db_url` in `namespace`.
async fn start(db_url: String, namespace: String, options: Options) -> TestApp {
    let endpoints = Endpoints {
        database_url: db_url.clone(),
        redis_url: options.redis_url.clone(),
        nats_url: nats_url(),
        pool: PoolConfig {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(30),
        },
    };
    let connections: Connections = stack::connect(&endpoints)
        .await
        .expect("services reachable");
    let pool = connections.pool.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sequencer = options.sequencer.then(|| SequencerConfig {
        poll_interval: Duration::from_millis(50),
        ..SequencerConfig::default()
    });
    let running = Stack::start(
        connections,
        listener,
        StackOptions {
            gateway: options.gateway,
            write: options.write,
            sequencer,
            relay: options.read_side.then(|| RelayConfig {
                poll_interval: Duration::from_millis(50),
                ..RelayConfig::default()
            }),
            projections: options.read_side.then(ConsumerConfig::default),
            job_desk: options.job_desk,
            executor: options.executor,
        },
    )
    .await
    .expect("stack starts");
    let addr = running.addr;
    TestApp {
        addr,
        base: format!("http://{addr}/api/v1"),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        pool,
        db_url,
        namespace,
        stack: Some(running),
        owned: None,
    }
}

/// A registered, logged-in user.
#[derive(Clone, Debug)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub access: String,
    pub refresh: String,
}

impl TestApp {
    /// A second gateway on this app's database and namespace, as another
    /// process would run it: no sequencer, relay or projections of its own.
    pub async fn another_gateway(&self, customize: impl FnOnce(&mut Options)) -> TestApp {
        let mut options = Options {
            gateway: gateway_config(&self.namespace),
            write: WriteSideConfig {
                hash_concurrency: 4,
                ..WriteSideConfig::default()
            },
            sequencer: false,
            read_side: false,
            redis_url: redis_url(),
            job_desk: None,
            executor: None,
        };
        customize(&mut options);
        start(self.db_url.clone(), self.namespace.clone(), options).await
    }

    /// The gateway's realtime side (this handle must own the stack).
    pub fn realtime(&self) -> tandem_gateway::realtime::Realtime {
        self.stack
            .as_ref()
            .expect("the owning handle")
            .realtime
            .clone()
    }

    /// `GET /<path>` outside `/api/v1` (`readyz`, `metrics`, ...).
    pub async fn ops(&self, path: &str) -> Response {
        self.client
            .get(format!("http://{}/{path}", self.addr))
            .send()
            .await
            .unwrap()
    }

    /// The Prometheus exposition of `/metrics`.
    pub async fn metrics_text(&self) -> String {
        self.ops("metrics").await.text().await.unwrap()
    }

    /// `ws://…/api/v1/ws` of this gateway.
    pub fn ws_url(&self) -> String {
        tandem::bench::ws_client::url(self.addr)
    }

    /// Another handle on this app for spawned tasks; dropping it stops nothing.
    pub fn handle(&self) -> TestApp {
        TestApp {
            addr: self.addr,
            base: self.base.clone(),
            client: self.client.clone(),
            pool: self.pool.clone(),
            db_url: self.db_url.clone(),
            namespace: self.namespace.clone(),
            stack: None,
            owned: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    pub fn as_user(&self, user: &User, method: Method, path: &str) -> RequestBuilder {
        self.request(method, path).bearer_auth(&user.access)
    }

    pub async fn register(&self, email: &str) -> Response {
        self.request(Method::POST, "/auth/register")
            .json(&json!({"email": email, "password": PASSWORD, "display_name": "Tester"}))
            .send()
            .await
            .unwrap()
    }

    pub async fn login(&self, email: &str, password: &str) -> Response {
        self.request(Method::POST, "/auth/login")
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap()
    }

    /// Registers and logs in a new user with a unique email.
    pub async fn user(&self) -> User {
        let email = format!("u{}@example.com", Uuid::new_v4().simple());
        let registered = self.register(&email).await;
        assert_eq!(registered.status(), StatusCode::CREATED);
        let id = body(registered).await["id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let tokens = body(self.login(&email, PASSWORD).await).await;
        User {
            id,
            email,
            access: tokens["access_token"].as_str().unwrap().to_owned(),
            refresh: tokens["refresh_token"].as_str().unwrap().to_owned(),
        }
    }

    pub async fn create_project(&self, owner: &User) -> Uuid {
        let r = self
            .as_user(owner, Method::POST, "/projects")
            .json(&json!({"name": "Apollo"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        body(r).await["id"].as_str().unwrap().parse().unwrap()
    }

    pub async fn invite(&self, owner: &User, project: Uuid, user: &User, role: &str) {
        let r = self
            .as_user(owner, Method::POST, &format!("/projects/{project}/members"))
            .json(&json!({"user_id": user.id, "role": role}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "{}",
            r.text().await.unwrap()
        );
    }

    pub async fn create_workspace(&self, user: &User, project: Uuid, name: &str) -> Uuid {
        self.create_workspace_at(user, project, name).await.0
    }

    /// Creates a workspace; returns its id and the event's log position.
    pub async fn create_workspace_at(&self, user: &User, project: Uuid, name: &str) -> (Uuid, i64) {
        let r = self
            .as_user(
                user,
                Method::POST,
                &format!("/projects/{project}/workspaces"),
            )
            .json(&json!({ "name": name }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let created = body(r).await;
        (
            created["id"].as_str().unwrap().parse().unwrap(),
            created["position"].as_i64().expect("sequenced"),
        )
    }

    /// Events of one aggregate as stored, in sequence order.
    pub async fn events_of(&self, aggregate_id: &str) -> Vec<(String, Value)> {
        sqlx::query_as(
            "SELECT event_type, metadata FROM events WHERE aggregate_id = $1 ORDER BY sequence",
        )
        .bind(aggregate_id)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

/// The log position of event `sequence` of `aggregate`, if it has one.
pub async fn position_of(pool: &PgPool, aggregate: &str, sequence: i64) -> Option<i64> {
    sqlx::query_scalar(
        "SELECT l.position FROM events e JOIN event_log l ON l.global_id = e.global_id
          WHERE e.aggregate_id = $1 AND e.sequence = $2",
    )
    .bind(aggregate)
    .bind(sequence)
    .fetch_optional(pool)
    .await
    .unwrap()
}

pub async fn body(r: Response) -> Value {
    let text = r.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
}

/// Asserts a problem+json answer with `status` and `code`; returns it.
pub async fn problem(r: Response, status: u16, code: &str) -> Value {
    let actual = r.status().as_u16();
    let content_type = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let b = body(r).await;
    assert_eq!(actual, status, "unexpected status; body {b}");
    assert_eq!(content_type, "application/problem+json", "body {b}");
    assert_eq!(b["code"], code, "body {b}");
    assert_eq!(b["status"], status);
    b
}

/// Polls `check` until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
