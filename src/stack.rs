//! Running Tandem: connections to the backing services, and a [`Stack`]
//! of roles (sequencer, relay, projections, job desk, executor, gateway with
//! its realtime hub) in one process that stops cleanly.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use tandem_commands::db::{self, PoolConfig};
use tandem_commands::jobs::{JobDesk, JobDeskConfig};
use tandem_commands::notifications::{Notice, Notifications};
use tandem_commands::positions::{APPENDED_CHANNEL, SEQUENCED_CHANNEL};
use tandem_commands::relay::{Relay, RelayConfig};
use tandem_commands::sequencer::{Sequencer, SequencerConfig};
use tandem_commands::{WriteSide, WriteSideConfig};
use tandem_domain::envelope::BusNames;
use tandem_executor::{Executor, ExecutorConfig};
use tandem_gateway::auth::jwt::JwtKeys;
use tandem_gateway::read::{QueryCache, ReadSide};
use tandem_gateway::realtime::{Realtime, RealtimeParts};
use tandem_gateway::redis_keys::RedisState;
use tandem_gateway::{AppState, GatewayConfig, Shared};
use tandem_projections::consumer::{Consumer, ConsumerConfig, Sink};
use tandem_projections::hot::HotState;
use tandem_projections::positions::{Heard, ReadPositions, PROJECTED_CHANNEL};
use tandem_projections::{models, ReadModels};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Where the backing services are.
#[derive(Clone, Debug)]
pub struct Endpoints {
    pub database_url: String,
    pub redis_url: String,
    pub nats_url: String,
    pub pool: PoolConfig,
}

pub struct Connections {
    pub pool: PgPool,
    pub redis: redis::aio::ConnectionManager,
    /// For the subscriptions a connection manager cannot carry.
    pub redis_client: redis::Client,
    pub nats: async_nats::Client,
    /// The relay's own connection: its publish → ack round trips must not
    /// queue behind the deliveries to every consumer on a shared socket
    /// (measured: acks of a 3-event round took 2 ms at the median there).
    pub relay_nats: async_nats::Client,
}

/// Creates the database if needed and runs the migrations.
pub async fn migrate(database_url: &str) -> anyhow::Result<()> {
    db::ensure_database(database_url)
        .await
        .context("creating the database")?;
    let pool = db::connect(database_url, &PoolConfig::default())
        .await
        .context("connecting to Postgres")?;
    db::migrate(&pool).await.context("running migrations")?;
    pool.close().await;
    Ok(())
}

pub async fn connect_postgres(endpoints: &Endpoints) -> anyhow::Result<PgPool> {
    db::connect(&endpoints.database_url, &endpoints.pool)
        .await
        .with_context(|| {
            "connecting to Postgres (is DATABASE_URL right, and did `tandem migrate` run?)"
        })
}

pub async fn connect(endpoints: &Endpoints) -> anyhow::Result<Connections> {
    let pool = connect_postgres(endpoints).await?;
    // Fail fast while Redis is away: a request must get its 503 (or go
    // through unlimited) at once, not after a ladder of reconnects.
    let redis_config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(1)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(200));
    let redis_client =
        redis::Client::open(endpoints.redis_url.as_str()).context("parsing REDIS_URL")?;
    let redis = redis_client
        .get_connection_manager_with_config(redis_config)
        .await
        .context("connecting to Redis")?;
    let nats = connect_nats(&endpoints.nats_url).await?;
    let relay_nats = connect_nats(&endpoints.nats_url).await?;
    Ok(Connections {
        pool,
        redis,
        redis_client,
        nats,
        relay_nats,
    })
}

/// NATS may come up after us: keep retrying in the background, and let
/// /readyz say so meanwhile.
pub async fn connect_nats(url: &str) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .name("tandem")
        .retry_on_initial_connect()
        .connect(url)
        .await
        .context("connecting to NATS")
}

/// What a stack runs.
pub struct StackOptions {
    pub gateway: GatewayConfig,
    pub write: WriteSideConfig,
    /// `None`: this process does not sequence (another one does).
    pub sequencer: Option<SequencerConfig>,
    /// `None`: another process relays the log to JetStream.
    pub relay: Option<RelayConfig>,
    /// `None`: other processes run the projections.
    pub projections: Option<ConsumerConfig>,
    /// The job desk (executors' claims and reports into commands); every
    /// process with the write side may run one.
    pub job_desk: Option<JobDeskConfig>,
    /// `None`: jobs run in `tandem executor` processes.
    pub executor: Option<ExecutorConfig>,
}

pub struct Stack {
    pub addr: SocketAddr,
    pub pool: PgPool,
    /// The gateway's WebSocket side (its hub, presence, connection count).
    pub realtime: Realtime,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Stack {
    /// Starts the roles on `listener` and returns once it accepts requests.
    pub async fn start(
        connections: Connections,
        listener: TcpListener,
        options: StackOptions,
    ) -> anyhow::Result<Self> {
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();
        let pool = connections.pool.clone();
        // One LISTEN connection for every role of this process.
        let notifications = Notifications::listen(
            &pool,
            &[APPENDED_CHANNEL, SEQUENCED_CHANNEL, PROJECTED_CHANNEL],
        )
        .await
        .context("listening for Postgres notifications")?;
        let write = WriteSide::start(pool.clone(), &options.write, Some(&notifications))
            .await
            .context("starting the write side")?;
        let local_sequencer = options.sequencer.is_some().then(|| write.local_sequencer());
        if let (Some(config), Some(local)) = (options.sequencer, &local_sequencer) {
            let sequencer = Sequencer::new(pool.clone(), config)
                .with_local(local.clone())
                .hearing(notifications.clone());
            tasks.push(run_sequencer(sequencer, shutdown.clone()));
        }
        let names = BusNames::new(&options.gateway.namespace)?;
        if let Some(config) = options.relay {
            let relay = Relay::new(
                pool.clone(),
                connections.relay_nats.clone(),
                names.clone(),
                config,
            )
            .hearing(notifications.clone());
            let relay = match &local_sequencer {
                Some(local) => relay.woken_by(local.clone()),
                None => relay,
            };
            tasks.push(run_relay(relay, shutdown.clone()));
        }
        if let Some(config) = options.projections {
            tasks.extend(spawn_projections(&connections, &names, &config, &shutdown));
        }
        if let Some(config) = options.job_desk {
            let desk = JobDesk::new(
                write.bus.clone(),
                pool.clone(),
                connections.nats.clone(),
                names.clone(),
                config,
            );
            let stop = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                desk.run(async move { stop.cancelled().await }).await
            }));
        }
        if let Some(config) = options.executor {
            tasks.push(spawn_executor(
                connections.nats.clone(),
                names.clone(),
                config,
                shutdown.clone(),
            )?);
        }
        let positions =
            ReadPositions::hearing(pool.clone(), projection_names(), projected(&notifications));
        let cache = QueryCache::new();
        tandem_gateway::read::spawn_invalidator(
            connections.nats.clone(),
            names.clone(),
            cache.clone(),
            positions.clone(),
            pool.clone(),
        );
        let realtime = Realtime::start(RealtimeParts {
            pool: pool.clone(),
            redis: connections.redis.clone(),
            nats: connections.nats.clone(),
            names: names.clone(),
            positions: positions.clone(),
            config: options.gateway.realtime.clone(),
            shutdown: shutdown.clone(),
        })
        .await
        .context("starting the realtime hub")?;
        let read = ReadSide {
            pool: pool.clone(),
            positions,
            cache,
            min_position_wait: options.write.position_wait,
        };
        let jwt = &options.gateway.jwt;
        let redis = RedisState::new(
            connections.redis_client,
            connections.redis,
            &options.gateway.namespace,
            jwt.access_ttl + jwt.leeway,
        );
        let state = AppState::new(Shared {
            write,
            read,
            realtime: realtime.clone(),
            redis,
            nats: connections.nats,
            jwt: JwtKeys::new(&options.gateway.jwt),
            config: options.gateway,
            metrics: tandem_gateway::telemetry::prometheus(),
        });
        let addr = listener.local_addr()?;
        let router = tandem_gateway::router(state);
        let stop = shutdown.clone();
        let hub = realtime.clone();
        tasks.push(tokio::spawn(async move {
            let served =
                tandem_gateway::serve(listener, router, async move { stop.cancelled().await })
                    .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "gateway stopped with an error");
            }
            // Upgraded sockets outlive the HTTP server: let them say goodbye.
            hub.drained(Duration::from_secs(5)).await;
        }));
        tracing::info!(%addr, "gateway listening");
        Ok(Self {
            addr,
            pool,
            realtime,
            shutdown,
            tasks,
        })
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops every role and waits for them (in-flight requests drain).
    pub async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        // Also ends the write side's listener, which holds a connection.
        self.pool.close().await;
    }
}

pub fn spawn_sequencer(
    pool: PgPool,
    config: SequencerConfig,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    run_sequencer(Sequencer::new(pool, config), shutdown)
}

/// An executor: needs NATS only (no database credentials).
pub fn spawn_executor(
    nats: async_nats::Client,
    names: BusNames,
    config: ExecutorConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    let executor = Executor::new(nats, names, config).context("setting up the job sandbox")?;
    Ok(tokio::spawn(async move {
        executor
            .run(async move { shutdown.cancelled().await })
            .await
    }))
}

/// The Postgres projections the read side is made of.
pub fn projection_names() -> Vec<String> {
    models::all().iter().map(|p| p.name().to_owned()).collect()
}

pub fn spawn_relay(
    pool: PgPool,
    nats: async_nats::Client,
    names: BusNames,
    config: RelayConfig,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    run_relay(Relay::new(pool, nats, names, config), shutdown)
}

/// `tandem_projected` through the shared listener, as the read positions
/// hear it.
fn projected(notifications: &Notifications) -> Heard {
    use futures::StreamExt;
    let subscription = notifications.subscribe(PROJECTED_CHANNEL);
    futures::stream::unfold(subscription, |mut subscription| async move {
        let heard = match subscription.recv().await {
            Notice::Payload(payload) => Some(payload),
            Notice::Missed => None,
        };
        Some((heard, subscription))
    })
    .boxed()
}

fn run_relay(relay: Relay, shutdown: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move { relay.run(async move { shutdown.cancelled().await }).await })
}

/// One durable consumer for the Postgres read models (applied together),
/// and one for the hot state in Redis.
pub fn spawn_projections(
    connections: &Connections,
    names: &BusNames,
    config: &ConsumerConfig,
    shutdown: &CancellationToken,
) -> Vec<JoinHandle<()>> {
    let read_models = ReadModels::live(connections.pool.clone(), models::all());
    let hot = HotState::new(connections.redis.clone(), names.namespace());
    vec![
        spawn_consumer(read_models, connections, names, config, shutdown),
        spawn_consumer(hot, connections, names, config, shutdown),
    ]
}

fn spawn_consumer<S: Sink + 'static>(
    sink: S,
    connections: &Connections,
    names: &BusNames,
    config: &ConsumerConfig,
    shutdown: &CancellationToken,
) -> JoinHandle<()> {
    let consumer = Consumer::new(
        sink,
        connections.nats.clone(),
        names.clone(),
        connections.pool.clone(),
        config.clone(),
    );
    let stop = shutdown.clone();
    tokio::spawn(async move { consumer.run(async move { stop.cancelled().await }).await })
}

fn run_sequencer(sequencer: Sequencer, shutdown: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        sequencer
            .run(async move { shutdown.cancelled().await })
            .await;
    })
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn termination() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}
