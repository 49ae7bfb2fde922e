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
//! target/release/tandem bench login-storm [--logins 32] [--background-concurrency 8] [--duration-secs 30]
//! target/release/tandem bench queries [--concurrency 64] [--duration-secs 10] [--warmup-secs 2] [--projects-per-user 5]
//! target/release/tandem bench pipeline [--rate 1000] [--duration-secs 10] [--warmup-secs 2] [--users 64]
//! target/release/tandem bench replay [--projects 10000]
//! target/release/tandem bench realtime [--connections 20000] [--fanout-subscribers 10000] [--duration-secs 10] [--only idle,fanout,deliveries]
//! target/release/tandem bench jobs [--submitters 8] [--slots <cores>] [--duration-secs 10] [--latency-jobs 200]
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
//! - `queries`: with the read side running, `concurrency` users own a few
//!   projects each; then `concurrency` keep-alive connections send, in
//!   alternating 1 s turns, `GET /api/v1/projects` (cached, each with its
//!   own user's token) and `GET /healthz` (the hello-world reference of the
//!   same server). Goal: `/projects` at least 70 % of `/healthz`'s
//!   requests/s at 64 connections; every answer must be a 200.
//! - `pipeline`: the whole stack (sequencer, relay, projections) under an
//!   open-loop load of `rate` commands/s (`POST /projects` and `PUT` file
//!   alternately, each started on schedule). Per event, commit → JetStream
//!   ack, bracketed by the transaction's last INSERT and its sequencing,
//!   against the stream's stored-message timestamp; per command, 2xx
//!   answer → every projection's checkpoint at its position (`LISTEN
//!   tandem_projected`); and where the time goes. Goals at 1,000/s: p99
//!   under 10 ms and under 25 ms respectively.
//! - `replay`: a log of about 100 events per project (1M by default) is
//!   generated in SQL and sequenced; then every projection is rebuilt from
//!   position 0 and swapped in, as `tandem replay` does. Goal: at least
//!   50,000 events/s, timed until every new table is live.
//! - `realtime`: WebSockets on one gateway, run as a separate `tandem
//!   gateway` process (this executable, on the bench database and
//!   namespace, with the environment it inherits, so `TANDEM_WS_*` apply)
//!   so its memory is its own; the in-process stack runs the sequencer,
//!   relay and projections and takes the commands (`PATCH /projects/{id}`,
//!   one event each). The open-file limit is raised for this process and
//!   the gateway (past the hard one only with CAP_SYS_RESOURCE). Three
//!   measurements, each on its own connections. *idle*: `connections`
//!   authenticated sockets, each subscribed to one of 100 projects, held
//!   for `--hold-secs` (65, past the gateway's idle timeout, so only
//!   sockets answering its pings count), fewer if the open-file limits
//!   leave no room for them all; the gateway's `VmRSS` after 500 warm-up
//!   connections and after all of them gives the KiB per connection.
//!   Goals: 20,000 connections held, at most 20 KiB each. *fanout*:
//!   10,000 subscribers of one project, one command every
//!   `--fanout-interval-ms`; per event, its command's 2xx answer → the
//!   last subscriber reading it. Goal: p99 under 200 ms, no event missed.
//!   *deliveries*: 10 subscribers in each of the 100 projects while 32
//!   HTTP clients send commands round-robin over them; event frames read
//!   per second, and each subscriber's events compared with its project's
//!   log after its `subscribed` position. Goal: every subscriber gapless
//!   and in order.
//! - `jobs`: `print(1)` in python. First `slots` loops run it in the
//!   sandbox directly (the reference); then `submitters` users each submit
//!   it over HTTP and wait for its `JobCompleted` on the bus, with an
//!   executor of `slots` in-process; then one job at a time, submit →
//!   `JobCompleted`. Goals: at least 70 % of the raw rate; p50 under 100 ms.

mod commands;
mod database;
mod harness;
mod jobs;
mod login_storm;
mod machine;
mod measure;
mod pgbench;
mod pipeline;
mod queries;
mod realtime;
mod replay;
mod wire;
pub mod ws_client;

use clap::Subcommand;

use crate::settings::Common;

pub use commands::CommandsArgs;
pub use jobs::JobsArgs;
pub use login_storm::LoginStormArgs;
pub use pipeline::PipelineArgs;
pub use queries::QueriesArgs;
pub use realtime::RealtimeArgs;
pub use replay::ReplayArgs;

#[derive(Subcommand, Clone, Debug)]
pub enum Which {
    /// The command path vs pgbench single-row inserts, same Postgres, same concurrency.
    Commands(CommandsArgs),
    /// Latency of ordinary requests while concurrent logins keep Argon2 busy.
    LoginStorm(LoginStormArgs),
    /// Rebuilding every projection from a generated log of 1M+ events.
    Replay(ReplayArgs),
    /// `GET /projects` (cached) vs a hello-world endpoint of the same server.
    Queries(QueriesArgs),
    /// Latency at a fixed command rate: commit → JetStream ack, and
    /// command accepted → visible in its read model.
    Pipeline(PipelineArgs),
    /// WebSockets on a gateway process of their own: idle connections and
    /// their memory, fan-out latency to 10,000 subscribers, deliveries/s.
    Realtime(RealtimeArgs),
    /// Jobs/s of `print(1)` through the job machinery vs the bare sandbox,
    /// and submit → succeeded latency.
    Jobs(JobsArgs),
}

pub async fn run(common: &Common, which: &Which) -> anyhow::Result<()> {
    match which {
        Which::Commands(args) => commands::commands(common, args).await,
        Which::LoginStorm(args) => login_storm::login_storm(common, args).await,
        Which::Replay(args) => replay::replay(common, args).await,
        Which::Queries(args) => queries::queries(common, args).await,
        Which::Pipeline(args) => pipeline::pipeline(common, args).await,
        Which::Realtime(args) => realtime::realtime(common, args).await,
        Which::Jobs(args) => jobs::jobs(common, args).await,
    }
}
