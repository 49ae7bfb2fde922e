//! `tandem`: one binary, every role. `tandem up` runs everything in one
//! process; each role also runs alone so it can scale on its own.

use clap::{Parser, Subcommand};
use tandem::settings::{Common, Executing, Http, JobLeases, Sequencing};
use tandem::stack::{self, Endpoints, Stack, StackOptions};
use tandem_commands::db::PoolConfig;
use tandem_commands::relay::RelayConfig;
use tandem_domain::envelope::BusNames;
use tandem_projections::consumer::ConsumerConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// mimalloc: the request path allocates a lot of small, short-lived
/// buffers; glibc's malloc showed as a fifth of the server's CPU profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tandem",
    version,
    about = "Event-sourced backend for real-time collaborative workspaces"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Migrate, then run every role in this process.
    Up {
        #[command(flatten)]
        http: Http,
        #[command(flatten)]
        sequencing: Sequencing,
        #[command(flatten)]
        executing: Executing,
        #[command(flatten)]
        leases: JobLeases,
    },
    /// Run the HTTP gateway (with its write side and job desk) only.
    Gateway {
        #[command(flatten)]
        http: Http,
        #[command(flatten)]
        leases: JobLeases,
    },
    /// Run jobs only: needs NATS, never the database.
    Executor {
        #[command(flatten)]
        executing: Executing,
    },
    /// Run the sequencer only (one leads; extra instances stand by).
    Sequencer {
        #[command(flatten)]
        sequencing: Sequencing,
    },
    /// Run the relay only: the sequenced log to JetStream (one leads).
    Relay,
    /// Run the projections only: JetStream to the read models (one process
    /// applies each projection; extra instances stand by).
    Projector,
    /// Create the database if needed and apply migrations.
    Migrate,
    /// Rebuild read models from position 0 into fresh tables, catch up,
    /// and swap them in while the read API stays up.
    Replay {
        /// One projection (users, projects, files, jobs, activity); all if omitted.
        #[arg(long)]
        projection: Option<String>,
    },
    /// Benchmarks (not tests): see `tandem bench --help`.
    Bench {
        #[command(subcommand)]
        which: tandem::bench::Which,
    },
}

fn endpoints(common: &Common) -> Endpoints {
    Endpoints {
        database_url: common.database_url.clone(),
        redis_url: common.redis_url.clone(),
        nats_url: common.nats_url.clone(),
        pool: PoolConfig {
            max_connections: common.db_max_connections,
            ..PoolConfig::default()
        },
    }
}

/// `all_roles`: also sequence, relay, project and run jobs (`tandem up`).
async fn run_gateway(
    common: &Common,
    http: &Http,
    leases: &JobLeases,
    all_roles: Option<(&Sequencing, &Executing)>,
) -> anyhow::Result<()> {
    let connections = stack::connect(&endpoints(common)).await?;
    let listener = TcpListener::bind(http.http_addr).await?;
    let options = StackOptions {
        gateway: http.gateway_config(common)?,
        write: http.write_config(),
        sequencer: all_roles.map(|(s, _)| s.config()),
        relay: all_roles.map(|_| RelayConfig::default()),
        projections: all_roles.map(|_| ConsumerConfig::default()),
        job_desk: Some(leases.config()),
        executor: match all_roles {
            Some((_, executing)) if tandem::settings::may_run_sandboxes() => {
                Some(executing.config()?)
            }
            Some(_) => {
                tracing::warn!("not running as root: this process runs no executor (jobs stay queued until a `tandem executor` runs as root)");
                None
            }
            None => None,
        },
    };
    let running = Stack::start(connections, listener, options).await?;
    stack::termination().await;
    running.stop().await;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // The sandbox launcher must start single-threaded (a new user namespace
    // refuses a multi-threaded caller): before clap, logs or tokio.
    if std::env::args_os().nth(1).as_deref() == Some(tandem_executor::LAUNCHER_ARG.as_ref()) {
        tandem_executor::sandbox::launcher_main();
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    // Tokio reads the variable itself; only its default is ours.
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        runtime.worker_threads(default_worker_threads());
    }
    runtime.enable_all().build()?.block_on(run())
}

/// The cores, and at least [`MIN_WORKER_THREADS`].
fn default_worker_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .max(MIN_WORKER_THREADS)
}

/// On a small machine shared with Postgres and NATS, a worker per core is
/// two threads among a score of busy backends: when one is preempted, half
/// of the process waits. Measured with `tandem bench pipeline` on 2 cores,
/// six alternating pairs of runs: commit → JetStream ack p99 16.2–20.9 ms
/// with 4 workers against 17.7–27.9 ms with 2 in four pairs, equal in two;
/// `bench commands` unchanged (5,146 vs 5,226 req/s).
///
/// Measured again later (2026-12-07, lean bench client, kept connections):
/// 2 workers were a little better in absolute terms (`bench pipeline`
/// commit → ack p99 4.90 and 5.44 ms against 5.62 and 6.05; `bench
/// commands` about 3 % more; `bench queries` 86k against 77–80k cached
/// `GET /projects` a second), but hello-world gained more, and cached
/// `GET /projects` fell to 66 % of it against 71–72 % with 4, below the
/// read side's 70 % goal. The floor stays until that path is cheaper.
const MIN_WORKER_THREADS: usize = 4;

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tandem_gateway::telemetry::init_logs(&cli.common.log_format);
    let common = &cli.common;
    match &cli.command {
        Command::Up {
            http,
            sequencing,
            executing,
            leases,
        } => {
            stack::migrate(&common.database_url).await?;
            run_gateway(common, http, leases, Some((sequencing, executing))).await
        }
        Command::Gateway { http, leases } => run_gateway(common, http, leases, None).await,
        Command::Executor { executing } => {
            anyhow::ensure!(
                tandem::settings::may_run_sandboxes(),
                "the executor builds its sandboxes as root (a uid per run, cgroups): run it as root"
            );
            let nats = stack::connect_nats(&common.nats_url).await?;
            let names = BusNames::new(&common.namespace)?;
            let shutdown = CancellationToken::new();
            let task = stack::spawn_executor(nats, names, executing.config()?, shutdown.clone())?;
            stack::termination().await;
            shutdown.cancel();
            task.await?;
            Ok(())
        }
        Command::Sequencer { sequencing } => {
            let pool = stack::connect_postgres(&endpoints(common)).await?;
            let shutdown = CancellationToken::new();
            let task = stack::spawn_sequencer(pool, sequencing.config(), shutdown.clone());
            stack::termination().await;
            shutdown.cancel();
            task.await?;
            Ok(())
        }
        Command::Relay => {
            let connections = stack::connect(&endpoints(common)).await?;
            let names = BusNames::new(&common.namespace)?;
            let shutdown = CancellationToken::new();
            let task = stack::spawn_relay(
                connections.pool,
                connections.relay_nats,
                names,
                RelayConfig::default(),
                shutdown.clone(),
            );
            stack::termination().await;
            shutdown.cancel();
            task.await?;
            Ok(())
        }
        Command::Projector => {
            let connections = stack::connect(&endpoints(common)).await?;
            let names = BusNames::new(&common.namespace)?;
            let shutdown = CancellationToken::new();
            let tasks = stack::spawn_projections(
                &connections,
                &names,
                &ConsumerConfig::default(),
                &shutdown,
            );
            stack::termination().await;
            shutdown.cancel();
            for task in tasks {
                task.await?;
            }
            Ok(())
        }
        Command::Migrate => stack::migrate(&common.database_url).await,
        Command::Replay { projection } => {
            let pool = stack::connect_postgres(&endpoints(common)).await?;
            tandem::replay::run(&pool, projection.as_deref()).await?;
            Ok(())
        }
        Command::Bench { which } => tandem::bench::run(common, which).await,
    }
}
