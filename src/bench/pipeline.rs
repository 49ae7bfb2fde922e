//! `bench pipeline`: latencies along the pipeline at a fixed command rate.
//! An open-loop load (a ticker starts each command on time, whether or not
//! earlier ones answered) runs against the whole stack; an observer thread
//! hears the read side advance (`LISTEN tandem_projected`) and the events
//! go by on NATS; afterwards each event's times are joined: `recorded_at`
//! and `sequenced_at` from Postgres (and its transaction's commit time,
//! where the server records commit times), the time JetStream stored it
//! (and so acknowledged it) from the stream itself.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy};
use clap::Args;
use futures::StreamExt;
use reqwest::{Method, RequestBuilder};
use serde_json::json;
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection};
use tandem_commands::WriteSideConfig;
use tandem_domain::envelope::{BusNames, Envelope};
use tandem_projections::positions::PROJECTED_CHANNEL;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::database::BenchDatabase;
use super::harness::{actors, bench_gateway_config, send_command, Actor, Api, Roles, Running};
use super::machine::{cpu_line, CpuShares, CpuWindow};
use super::measure::{ms, print_errors, verdict, Errors, Percentiles};
use crate::settings::Common;
use crate::stack;

#[derive(Args, Clone, Debug)]
pub struct PipelineArgs {
    /// Commands started per second, on schedule (open loop).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: u32,
    /// Measured time, after the warmup.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Load before measuring.
    #[arg(long, default_value_t = 2)]
    pub warmup_secs: u64,
    /// Users the commands are spread over (each with a project and a
    /// workspace of its own).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub users: u32,
    /// The bench database: dropped and recreated; its name must contain `bench`.
    #[arg(long, default_value = "tandem_bench_pipeline")]
    pub database: String,
    /// Keep the bench database afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Postgres connections of the stack.
    #[arg(long, default_value_t = 80)]
    pub pool_size: u32,
    /// Also write each measured event's times (wall µs) to this CSV file.
    #[arg(long)]
    pub dump_events: Option<std::path::PathBuf>,
}

const ACK_P99_GOAL: Duration = Duration::from_millis(10);
const VISIBLE_P99_GOAL: Duration = Duration::from_millis(25);
const GOAL_RATE: u32 = 1000;
/// How long the pipeline may take to catch up after the setup and after
/// the load before the run counts as failed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

pub(super) async fn pipeline(common: &Common, args: &PipelineArgs) -> anyhow::Result<()> {
    let db = BenchDatabase::recreate(&common.database_url, &args.database).await?;
    let outcome = pipeline_on(common, args, &db).await;
    let finished = db.finish(args.keep).await;
    outcome?;
    finished
}

async fn pipeline_on(
    common: &Common,
    args: &PipelineArgs,
    db: &BenchDatabase,
) -> anyhow::Result<()> {
    let running = Running::start(
        common,
        db,
        args.pool_size,
        256,
        WriteSideConfig::default(),
        Roles::WithReadSide,
        bench_gateway_config(),
    )
    .await?;
    let namespace = running.namespace.clone();
    let outcome = measure(common, args, db, &running).await;
    running.stop_and_clean(common).await;
    let (load, joined) = outcome?;
    print_pipeline_summary(args, &namespace, &load, &joined);
    Ok(())
}

async fn measure(
    common: &Common,
    args: &PipelineArgs,
    db: &BenchDatabase,
    running: &Running,
) -> anyhow::Result<(Load, Joined)> {
    let names = BusNames::new(&running.namespace)?;
    eprintln!(
        "bench: stack on {} (namespace {}), setting up {} users...",
        running.stack.addr, running.namespace, args.users
    );
    let actors = actors(&running.api, args.users).await?;
    let observer = Observer::start(&db.url, &common.nats_url, &names).await?;
    let setup_end = last_position(db).await?;
    eprintln!("bench: waiting for the pipeline to apply the setup (position {setup_end})...");
    observer.wait_until(setup_end, false).await?;
    eprintln!(
        "bench: {} commands/s for {}s warmup + {}s...",
        args.rate, args.warmup_secs, args.duration_secs
    );
    let load = drive(&running.api, actors, args).await;
    let last = load
        .commands
        .iter()
        .filter_map(|c| c.outcome.as_ref().ok())
        .copied()
        .max()
        .unwrap_or(setup_end);
    eprintln!("bench: waiting for the pipeline to apply position {last}...");
    let drained = observer.wait_until(last, true).await;
    let observed = observer.stop().await?;
    drained?;
    let (lo, hi) = load
        .measured_range()
        .context("no command of the measured window succeeded")?;
    eprintln!("bench: reading the times of positions {lo}..={hi} from Postgres and JetStream...");
    let logged = logged_times(db, lo, hi).await?;
    let stored = stored_times(common, &names, lo, hi).await?;
    if let Some(path) = &args.dump_events {
        dump_events(path, &logged, &stored, &observed)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let joined = Joined::new(&load, &observed, &logged, &stored);
    Ok((load, joined))
}

/// One line per event: its times in wall µs (empty when unknown).
fn dump_events(
    path: &std::path::Path,
    logged: &[Logged],
    stored: &HashMap<i64, i64>,
    observed: &Observed,
) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(
        out,
        "position,transaction_events,recorded_us,last_insert_us,sequenced_us,first_sequenced_us,stored_us,delivered_us,visible_us"
    )?;
    let known = |v: Option<i64>| v.map_or_else(String::new, |v| v.to_string());
    for e in logged {
        writeln!(
            out,
            "{},{},{},{},{},{},{},{},{}",
            e.position,
            e.transaction_events,
            e.recorded_us,
            e.last_insert_us,
            e.sequenced_us,
            e.first_sequenced_us,
            known(stored.get(&e.position).copied()),
            known(observed.delivered.get(&e.position).copied()),
            known(first_at(&observed.read_side, e.position).map(|m| m.wall_us)),
        )?;
    }
    out.flush()?;
    Ok(())
}

/// The last position the sequencer gave out.
async fn last_position(db: &BenchDatabase) -> anyhow::Result<i64> {
    let mut conn = db.connect().await?;
    let last = sqlx::query_scalar("SELECT last_position FROM sequencer_state")
        .fetch_one(&mut conn)
        .await?;
    conn.close().await?;
    Ok(last)
}

fn unix_micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

// -- the load ---------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `POST /projects`: read model `projects`.
    Project,
    /// `PUT /workspaces/{id}/files/...`: read model `files`.
    File,
}

impl Kind {
    fn read_model(self) -> &'static str {
        match self {
            Kind::Project => "projects",
            Kind::File => "files",
        }
    }
}

/// One command of the load.
struct Command {
    kind: Kind,
    /// When the ticker meant it to start (the offered load's clock).
    scheduled: Instant,
    answered: Instant,
    /// Its log position (the last of its events), or the error's kind.
    outcome: Result<i64, String>,
}

struct Load {
    /// Every command, warmup included, in no particular order.
    commands: Vec<Command>,
    measure_from: Instant,
    end: Instant,
    /// Commands scheduled in the measured window.
    offered: usize,
    /// The machine's CPUs over the measured window.
    cpu: Option<CpuShares>,
}

impl Load {
    fn measured(&self) -> impl Iterator<Item = &Command> {
        self.commands
            .iter()
            .filter(|c| c.scheduled >= self.measure_from && c.scheduled < self.end)
    }

    fn window(&self) -> Duration {
        self.end - self.measure_from
    }

    /// The positions the measured commands answered with.
    fn measured_range(&self) -> Option<(i64, i64)> {
        let positions = self.measured().filter_map(|c| c.outcome.as_ref().ok());
        let (lo, hi) = positions.fold((i64::MAX, i64::MIN), |(lo, hi), &p| (lo.min(p), hi.max(p)));
        (lo <= hi).then_some((lo, hi))
    }

    fn errors(&self) -> Errors {
        let mut errors = Errors::new();
        for c in &self.commands {
            if let Err(kind) = &c.outcome {
                *errors.entry(kind.clone()).or_default() += 1;
            }
        }
        errors
    }
}

/// Starts `args.rate` commands per second on a fixed schedule, each in a
/// task of its own, so a slow answer never delays the next start. Command
/// `k` goes to user `(k / 2) % users`, alternately a new project and a new
/// file in the user's workspace (as `bench commands` does).
async fn drive(api: &Api, actors: Vec<Actor>, args: &PipelineArgs) -> Load {
    let period = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(args.warmup_secs);
    let end = measure_from + Duration::from_secs(args.duration_secs);
    let cpu = CpuWindow::between(measure_from, end);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut k: u64 = 0;
    let mut offered = 0;
    loop {
        let scheduled = start + period.mul_f64(k as f64);
        if scheduled >= end {
            break;
        }
        // Behind schedule, this returns at once: late commands start
        // immediately, so the offered rate holds.
        tokio::time::sleep_until(scheduled.into()).await;
        if scheduled >= measure_from {
            offered += 1;
        }
        let (kind, request) = command(api, &actors, k);
        let tx = tx.clone();
        tokio::spawn(async move {
            let outcome = send_command(request).await;
            let _ = tx.send(Command {
                kind,
                scheduled,
                answered: Instant::now(),
                outcome,
            });
        });
        k += 1;
    }
    drop(tx);
    let mut commands = Vec::with_capacity(k as usize);
    while let Some(c) = rx.recv().await {
        commands.push(c);
    }
    Load {
        commands,
        measure_from,
        end,
        offered,
        cpu: cpu.await.ok().and_then(|sum| sum.shares()),
    }
}

fn command(api: &Api, actors: &[Actor], k: u64) -> (Kind, RequestBuilder) {
    let actor = &actors[((k / 2) % actors.len() as u64) as usize];
    let token = Some(actor.token.as_str());
    if k % 2 == 0 {
        let request = api
            .request(Method::POST, "/projects", token)
            .json(&json!({"name": format!("Pipeline {k}")}));
        (Kind::Project, request)
    } else {
        let path = format!("/workspaces/{}/files/p{k}.txt", actor.workspace);
        let content = format!(
            "{k:>12} the quick brown fox jumps over the lazy dog; pack my box with five dozen jugs\n"
        );
        let request = api
            .request(Method::PUT, &path, token)
            .json(&json!({"content": content}));
        (Kind::File, request)
    }
}

// -- the observer -------------------------------------------------------------

/// A position reached, and when (monotonic and wall clock).
#[derive(Clone, Copy)]
struct Mark {
    position: i64,
    at: Instant,
    wall_us: i64,
}

/// The first mark at or past `position` of an increasing series.
fn first_at(marks: &[Mark], position: i64) -> Option<Mark> {
    marks
        .get(marks.partition_point(|m| m.position < position))
        .copied()
}

#[derive(Default)]
struct Observed {
    /// The minimum over every projection's checkpoint (what
    /// `?min_position=` waits for), each time it rose.
    read_side: Vec<Mark>,
    /// Each projection's checkpoint, each time it rose.
    by_projection: BTreeMap<String, Vec<Mark>>,
    /// Each event as a core NATS subscriber received it: position → wall µs.
    delivered: HashMap<i64, i64>,
}

/// Listens on a thread (and runtime) of its own, so its timestamps do not
/// wait behind the load's tasks on the stack's runtime.
struct Observer {
    stop: CancellationToken,
    read_side: Arc<AtomicI64>,
    delivered: Arc<AtomicI64>,
    thread: std::thread::JoinHandle<anyhow::Result<Observed>>,
}

impl Observer {
    /// Returns once it listens to both.
    async fn start(database_url: &str, nats_url: &str, names: &BusNames) -> anyhow::Result<Self> {
        let stop = CancellationToken::new();
        let read_side = Arc::new(AtomicI64::new(0));
        let delivered = Arc::new(AtomicI64::new(0));
        let (ready_tx, ready_rx) = oneshot::channel();
        let watch = Watch {
            database_url: database_url.to_owned(),
            nats_url: nats_url.to_owned(),
            subjects: names.events_wildcard(),
            projections: stack::projection_names(),
            stop: stop.clone(),
            read_side: read_side.clone(),
            delivered: delivered.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("bench-observer".to_owned())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(watch.run(ready_tx))
            })?;
        match ready_rx.await {
            Ok(Ok(())) => Ok(Self {
                stop,
                read_side,
                delivered,
                thread,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => match thread.join() {
                Ok(Err(e)) => Err(e),
                _ => bail!("the observer thread ended before it listened"),
            },
        }
    }

    /// Waits until the read side reached `position` and, with `on_bus`,
    /// the NATS subscriber too (it only hears what is published after it
    /// subscribed).
    async fn wait_until(&self, position: i64, on_bus: bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        loop {
            let (read, bus) = (
                self.read_side.load(Ordering::Acquire),
                self.delivered.load(Ordering::Acquire),
            );
            if read >= position && (!on_bus || bus >= position) {
                return Ok(());
            }
            if Instant::now() > deadline || self.thread.is_finished() {
                bail!("the pipeline did not reach position {position} (read side at {read}, NATS at {bus})");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(self) -> anyhow::Result<Observed> {
        self.stop.cancel();
        let thread = self.thread;
        match tokio::task::spawn_blocking(move || thread.join()).await? {
            Ok(observed) => observed,
            Err(_) => bail!("the observer thread panicked"),
        }
    }
}

struct Watch {
    database_url: String,
    nats_url: String,
    subjects: String,
    /// The read side is at the minimum of these projections' checkpoints.
    projections: Vec<String>,
    stop: CancellationToken,
    read_side: Arc<AtomicI64>,
    delivered: Arc<AtomicI64>,
}

impl Watch {
    async fn run(self, ready: oneshot::Sender<anyhow::Result<()>>) -> anyhow::Result<Observed> {
        let mut observed = Observed::default();
        let mut checkpoints = BTreeMap::new();
        let listening = self.listen(&mut observed, &mut checkpoints).await;
        let (mut listener, mut events) = match listening {
            Ok(both) => {
                let _ = ready.send(Ok(()));
                both
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                bail!("the observer could not listen");
            }
        };
        loop {
            tokio::select! {
                biased;
                () = self.stop.cancelled() => break,
                notification = listener.recv() => {
                    let notification = notification?;
                    let now = (Instant::now(), unix_micros(SystemTime::now()));
                    if let Some((name, position)) = notification.payload().split_once(' ') {
                        if let Ok(position) = position.parse() {
                            self.projected(&mut observed, &mut checkpoints, name, position, now);
                        }
                    }
                }
                message = events.next() => {
                    let received = unix_micros(SystemTime::now());
                    let Some(message) = message else {
                        bail!("the NATS subscription ended");
                    };
                    if let Ok(event) = serde_json::from_slice::<Envelope>(&message.payload) {
                        observed.delivered.entry(event.position).or_insert(received);
                        self.delivered.fetch_max(event.position, Ordering::AcqRel);
                    }
                }
            }
        }
        Ok(observed)
    }

    /// Subscribes to both, then reads the checkpoints as they are now.
    async fn listen(
        &self,
        observed: &mut Observed,
        checkpoints: &mut BTreeMap<String, i64>,
    ) -> anyhow::Result<(PgListener, async_nats::Subscriber)> {
        let mut listener = PgListener::connect(&self.database_url).await?;
        listener.listen(PROJECTED_CHANNEL).await?;
        let nats = async_nats::connect(self.nats_url.as_str()).await?;
        let events = nats.subscribe(self.subjects.clone()).await?;
        nats.flush().await?;
        let mut conn = PgConnection::connect(&self.database_url).await?;
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT projection, position FROM projection_checkpoints")
                .fetch_all(&mut conn)
                .await?;
        conn.close().await?;
        let now = (Instant::now(), unix_micros(SystemTime::now()));
        for (name, position) in rows {
            self.projected(observed, checkpoints, &name, position, now);
        }
        Ok((listener, events))
    }

    fn projected(
        &self,
        observed: &mut Observed,
        checkpoints: &mut BTreeMap<String, i64>,
        name: &str,
        position: i64,
        (at, wall_us): (Instant, i64),
    ) {
        let current = checkpoints.entry(name.to_owned()).or_insert(0);
        if position <= *current {
            return;
        }
        *current = position;
        let mark = Mark {
            position,
            at,
            wall_us,
        };
        observed
            .by_projection
            .entry(name.to_owned())
            .or_default()
            .push(mark);
        let min = self
            .projections
            .iter()
            .map(|p| checkpoints.get(p).copied().unwrap_or(0))
            .min()
            .unwrap_or(0);
        if observed.read_side.last().is_none_or(|m| min > m.position) {
            observed.read_side.push(Mark {
                position: min,
                ..mark
            });
            self.read_side.store(min, Ordering::Release);
        }
    }
}

// -- times read back after the run -----------------------------------------------

/// What Postgres knows of an event's times, in wall µs. The commit of its
/// transaction lies between `last_insert_us` (the transaction's last
/// row's INSERT time: group commit writes a batch of events in one
/// multi-row INSERT, then commits) and `first_sequenced_us` (the
/// sequencer only sees committed events).
struct Logged {
    position: i64,
    /// Its `recorded_at`: `clock_timestamp()` at its INSERT.
    recorded_us: i64,
    /// The latest `recorded_at` of its transaction.
    last_insert_us: i64,
    /// When the sequencer numbered it (`event_log.sequenced_at`).
    sequenced_us: i64,
    /// The earliest `sequenced_at` of its transaction's events.
    first_sequenced_us: i64,
    /// Events its transaction wrote.
    transaction_events: i64,
    /// Its transaction's commit time, when the server records them
    /// (`track_commit_timestamp = on`).
    committed_us: Option<i64>,
}

/// position, recorded, last insert, sequenced, first sequenced (µs),
/// events of its transaction, committed (µs, when tracked).
type LoggedRow = (i64, i64, i64, i64, i64, i64, Option<i64>);

async fn logged_times(db: &BenchDatabase, lo: i64, hi: i64) -> anyhow::Result<Vec<Logged>> {
    let mut conn = db.connect().await?;
    // Events of one transaction share their `xmin`.
    let rows: Vec<LoggedRow> = sqlx::query_as(
        "WITH logged AS (
             SELECT l.position, e.xmin::text::int8 AS tx, e.recorded_at, l.sequenced_at,
                    CASE WHEN current_setting('track_commit_timestamp')::bool
                         THEN pg_xact_commit_timestamp(e.xmin)
                    END AS committed_at
             FROM event_log l JOIN events e ON e.global_id = l.global_id
         ), transactions AS (
             SELECT tx, max(recorded_at) AS last_insert, min(sequenced_at) AS first_sequenced,
                    count(*) AS events, max(committed_at) AS committed_at
             FROM logged GROUP BY tx
         )
         SELECT l.position,
                (extract(epoch FROM l.recorded_at) * 1000000)::int8,
                (extract(epoch FROM t.last_insert) * 1000000)::int8,
                (extract(epoch FROM l.sequenced_at) * 1000000)::int8,
                (extract(epoch FROM t.first_sequenced) * 1000000)::int8,
                t.events,
                (extract(epoch FROM t.committed_at) * 1000000)::int8
         FROM logged l JOIN transactions t USING (tx)
         WHERE l.position BETWEEN $1 AND $2
         ORDER BY l.position",
    )
    .bind(lo)
    .bind(hi)
    .fetch_all(&mut conn)
    .await?;
    conn.close().await?;
    Ok(rows
        .into_iter()
        .map(
            |(
                position,
                recorded_us,
                last_insert_us,
                sequenced_us,
                first_sequenced_us,
                events,
                committed_us,
            )| Logged {
                position,
                recorded_us,
                last_insert_us,
                sequenced_us,
                first_sequenced_us,
                transaction_events: events,
                committed_us,
            },
        )
        .collect())
}

/// When JetStream stored each event (stream sequence = position): the
/// message timestamp the server sets as it stores the message, right
/// before it sends the publisher its ack. Read with an ordered consumer.
async fn stored_times(
    common: &Common,
    names: &BusNames,
    lo: i64,
    hi: i64,
) -> anyhow::Result<HashMap<i64, i64>> {
    let nats = async_nats::connect(common.nats_url.as_str()).await?;
    let js = jetstream::new(nats);
    let stream = js.get_stream(names.events_stream()).await?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: lo as u64,
            },
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut stored = HashMap::with_capacity((hi - lo + 1) as usize);
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .context("reading the events stream timed out")?
            .context("the events stream ended")??;
        let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        let position = info.stream_sequence as i64;
        if position > hi {
            break;
        }
        stored.insert(
            position,
            (info.published.unix_timestamp_nanos() / 1000) as i64,
        );
        if position == hi {
            break;
        }
    }
    Ok(stored)
}

// -- joining it all -------------------------------------------------------------

fn micros(us: i64) -> Duration {
    Duration::from_micros(us.max(0) as u64)
}

/// Per-event and per-command latencies of the measured window.
#[derive(Default)]
struct Joined {
    events: usize,
    /// `recorded_at` of the first and last measured event.
    events_span: Duration,
    /// Mean and largest events per transaction (group commit batches).
    events_per_transaction: (f64, i64),
    /// Commit → stored in the stream: from the transaction's last INSERT
    /// (an upper bound) and from its first sequencing (a lower bound).
    commit_to_stored_upper: Vec<Duration>,
    commit_to_stored_lower: Vec<Duration>,
    /// From the commit timestamp Postgres recorded, when it records them.
    commit_to_stored: Vec<Duration>,
    /// The envelope's `time` (the event's own INSERT) → a core NATS
    /// subscriber received it.
    insert_to_delivered: Vec<Duration>,
    // Stages: insert → last insert of its transaction → sequenced →
    // stored → every projection applied it.
    insert_to_last_insert: Vec<Duration>,
    last_insert_to_sequenced: Vec<Duration>,
    sequenced_to_stored: Vec<Duration>,
    stored_to_visible: Vec<Duration>,
    /// Events missing from the stream or the subscriber's view.
    missing_stored: usize,
    missing_delivered: usize,
    accepted_to_visible: Vec<Duration>,
    accepted_to_own_model: Vec<Duration>,
    scheduled_to_visible: Vec<Duration>,
    command_latency: Vec<Duration>,
    /// Measured commands answered 2xx before the window's end.
    answered_in_window: usize,
    /// When the last measured command was answered, after the window's end.
    last_answer_after_end: Duration,
    /// Read side there before the client had its answer (counted as 0).
    visible_before_answer: usize,
    never_visible: usize,
}

impl Joined {
    fn new(
        load: &Load,
        observed: &Observed,
        logged: &[Logged],
        stored: &HashMap<i64, i64>,
    ) -> Self {
        let mut j = Joined {
            events: logged.len(),
            ..Joined::default()
        };
        if let (Some(a), Some(b)) = (logged.first(), logged.last()) {
            j.events_span = micros(b.recorded_us - a.recorded_us);
            // Each event counts its transaction's size once per event: weigh by 1/size.
            let transactions: f64 = logged
                .iter()
                .map(|e| 1.0 / e.transaction_events.max(1) as f64)
                .sum();
            let largest = logged
                .iter()
                .map(|e| e.transaction_events)
                .max()
                .unwrap_or(0);
            j.events_per_transaction = (logged.len() as f64 / transactions.max(1.0), largest);
        }
        for e in logged {
            j.insert_to_last_insert
                .push(micros(e.last_insert_us - e.recorded_us));
            j.last_insert_to_sequenced
                .push(micros(e.sequenced_us - e.last_insert_us));
            match stored.get(&e.position) {
                Some(&stored_us) => {
                    j.commit_to_stored_upper
                        .push(micros(stored_us - e.last_insert_us));
                    j.commit_to_stored_lower
                        .push(micros(stored_us - e.first_sequenced_us));
                    if let Some(committed_us) = e.committed_us {
                        j.commit_to_stored.push(micros(stored_us - committed_us));
                    }
                    j.sequenced_to_stored
                        .push(micros(stored_us - e.sequenced_us));
                    if let Some(visible) = first_at(&observed.read_side, e.position) {
                        j.stored_to_visible
                            .push(micros(visible.wall_us - stored_us));
                    }
                }
                None => j.missing_stored += 1,
            }
            match observed.delivered.get(&e.position) {
                Some(&delivered_us) => j
                    .insert_to_delivered
                    .push(micros(delivered_us - e.recorded_us)),
                None => j.missing_delivered += 1,
            }
        }
        for command in load.measured() {
            let Ok(position) = command.outcome else {
                continue;
            };
            j.command_latency.push(command.answered - command.scheduled);
            if command.answered < load.end {
                j.answered_in_window += 1;
            }
            j.last_answer_after_end = j
                .last_answer_after_end
                .max(command.answered.saturating_duration_since(load.end));
            let Some(visible) = first_at(&observed.read_side, position) else {
                j.never_visible += 1;
                continue;
            };
            if visible.at < command.answered {
                j.visible_before_answer += 1;
            }
            j.accepted_to_visible
                .push(visible.at.saturating_duration_since(command.answered));
            j.scheduled_to_visible.push(visible.at - command.scheduled);
            let own = observed
                .by_projection
                .get(command.kind.read_model())
                .and_then(|marks| first_at(marks, position));
            if let Some(own) = own {
                j.accepted_to_own_model
                    .push(own.at.saturating_duration_since(command.answered));
            }
        }
        j
    }
}

// -- the summary ------------------------------------------------------------

fn print_pipeline_summary(args: &PipelineArgs, namespace: &str, load: &Load, j: &Joined) {
    let window = load.window().as_secs_f64();
    let ok = j.command_latency.len();
    let errors = load.errors();
    let error_count: usize = errors.values().sum();
    let event_rate = j.events as f64 / j.events_span.as_secs_f64().max(f64::EPSILON);
    println!();
    println!("tandem bench pipeline");
    println!(
        "  setup        {} users with a project and a workspace each; in-process stack (sequencer, relay, projections on), namespace {namespace} (removed afterwards), database {}",
        args.users, args.database
    );
    println!(
        "  load         open loop: {} commands/s started on schedule, each in its own task (POST /projects and PUT /workspaces/{{id}}/files/p{{k}}.txt alternately), {}s warmup + {}s measured",
        args.rate, args.warmup_secs, args.duration_secs
    );
    println!(
        "  note         the load generator and the observer (its own thread) run in the same process, on the same cores as the stack"
    );
    println!(
        "  commands     offered {} = {:.1}/s; 2xx {ok}, of which {} answered within the window = {:.1}/s (the last {:.2}s after it); errors {error_count} (warmup included)",
        load.offered,
        load.offered as f64 / window,
        j.answered_in_window,
        j.answered_in_window as f64 / window,
        j.last_answer_after_end.as_secs_f64()
    );
    print_errors("               ", &errors);
    print_line(
        "  command      ",
        "scheduled start → 2xx answer",
        &j.command_latency,
    );
    println!(
        "  events       {} at the measured commands' positions, {event_rate:.1}/s by recorded_at; {:.1} events per transaction on average, {} at most (group commit)",
        j.events, j.events_per_transaction.0, j.events_per_transaction.1
    );
    println!("commit → JetStream ack, per event (the ack time is JetStream's stored-message timestamp, taken as it stores the message and then acks)");
    print_line(
        "  upper bound          ",
        "from its transaction's last INSERT (recorded_at), which the commit follows",
        &j.commit_to_stored_upper,
    );
    print_line(
        "  lower bound          ",
        "from the first sequenced_at of its transaction, which the commit precedes",
        &j.commit_to_stored_lower,
    );
    if j.commit_to_stored.is_empty() {
        println!("  exact                not measured: the server does not record commit times (track_commit_timestamp = on would)");
    } else {
        print_line(
            "  exact                ",
            "from its transaction's commit timestamp (track_commit_timestamp)",
            &j.commit_to_stored,
        );
    }
    print_line(
        "  insert → subscriber  ",
        "the envelope's time (its own INSERT) → received by a core NATS subscriber of <ns>.events.> (this process, own thread)",
        &j.insert_to_delivered,
    );
    if j.missing_stored + j.missing_delivered > 0 {
        println!(
            "  WARNING      {} events missing from the stream, {} never reached the subscriber",
            j.missing_stored, j.missing_delivered
        );
    }
    println!("command accepted → visible, per command (LISTEN tandem_projected on the observer's thread)");
    print_line(
        "  all read models      ",
        "2xx answer received → every projection's checkpoint reached its position (what ?min_position= waits for)",
        &j.accepted_to_visible,
    );
    print_line(
        "  its read model       ",
        "2xx answer received → `projects` (POST) or `files` (PUT) reached it",
        &j.accepted_to_own_model,
    );
    print_line(
        "  scheduled → visible  ",
        "scheduled start → every projection reached it",
        &j.scheduled_to_visible,
    );
    println!(
        "  note         {} commands were visible before the client had read their answer (counted as 0); {} never became visible",
        j.visible_before_answer, j.never_visible
    );
    println!("where the time goes, per event (wall clocks of Postgres, NATS and this process: one machine)");
    print_line(
        "  group commit batch   ",
        "its INSERT → its transaction's last INSERT",
        &j.insert_to_last_insert,
    );
    print_line(
        "  commit + sequencer   ",
        "its transaction's last INSERT → sequenced_at",
        &j.last_insert_to_sequenced,
    );
    print_line(
        "  relay                ",
        "sequenced_at → stored in the stream (read, publish, store)",
        &j.sequenced_to_stored,
    );
    print_line(
        "  projections          ",
        "stored → every projection's checkpoint has it (pull, apply, commit, NOTIFY)",
        &j.stored_to_visible,
    );
    if error_count > 0 || j.never_visible > 0 || j.missing_stored > 0 {
        println!("  WARNING      this run had errors or lost events: its figures are not clean");
    }
    println!("{}", cpu_line("cpu", load.cpu));
    print_pipeline_goals(args, j, event_rate, ok as f64 / window);
}

fn print_line(label: &str, what: &str, samples: &[Duration]) {
    match Percentiles::of(samples.to_vec()) {
        Some(l) => println!(
            "{label}p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2} ms  ({} samples; {what})",
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.max),
            l.count
        ),
        None => println!("{label}no samples ({what})"),
    }
}

fn print_pipeline_goals(args: &PipelineArgs, j: &Joined, event_rate: f64, command_rate: f64) {
    println!("goals");
    let p99 = |samples: &[Duration]| Percentiles::of(samples.to_vec()).map(|l| l.p99);
    let text =
        |p: Option<Duration>| p.map_or_else(|| "n/a".to_owned(), |p| format!("{:.2} ms", ms(p)));
    let caveat = if args.rate == GOAL_RATE {
        String::new()
    } else {
        format!(
            "; the goals are stated at {GOAL_RATE}/s, this run offered {}/s",
            args.rate
        )
    };
    let (upper, lower, exact) = (
        p99(&j.commit_to_stored_upper),
        p99(&j.commit_to_stored_lower),
        p99(&j.commit_to_stored),
    );
    // Judged on the commit's own time when Postgres records it, else on
    // the upper bound; the lower bound says how wrong that can be.
    let judged = exact.or(upper);
    println!(
        "  commit → JetStream ack p99 < {} ms at {GOAL_RATE} events/s    {} (p99 {}; upper bound {}, lower bound {}; {event_rate:.0} events/s{caveat})",
        ACK_P99_GOAL.as_millis(),
        verdict(j.missing_stored == 0 && judged.is_some_and(|p| p < ACK_P99_GOAL)),
        match exact {
            Some(_) => format!("from the commit {}", text(exact)),
            None => "from the commit not measured".to_owned(),
        },
        text(upper),
        text(lower),
    );
    let (all, own) = (p99(&j.accepted_to_visible), p99(&j.accepted_to_own_model));
    println!(
        "  accepted → visible p99 < {} ms at {GOAL_RATE} commands/s    {} (p99 {} until every read model has it, {} for its own read model; {command_rate:.0} commands/s{caveat})",
        VISIBLE_P99_GOAL.as_millis(),
        verdict(j.never_visible == 0 && all.is_some_and(|p| p < VISIBLE_P99_GOAL)),
        text(all),
        text(own),
    );
}
