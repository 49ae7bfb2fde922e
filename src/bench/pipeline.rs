//! `bench pipeline`: latencies along the pipeline at a fixed command rate.
//! An open-loop load (a ticker starts each command on time, whether or not
//! earlier ones answered) runs against the whole stack; an observer thread
//! hears the read side advance (`LISTEN tandem_projected`) and the events
//! go by on NATS; afterwards each event's times are joined: `recorded_at`
//! and `sequenced_at` from Postgres, the time JetStream stored it (and so
//! acknowledged it) from the stream itself.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy};
use clap::Args;
use futures::StreamExt;
use reqwest::{Method, RequestBuilder};
use serde_json::{json, Value};
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection};
use tandem_commands::WriteSideConfig;
use tandem_domain::envelope::{BusNames, Envelope};
use tandem_projections::positions::PROJECTED_CHANNEL;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::database::BenchDatabase;
use super::harness::{actors, Actor, Api, Roles, Running};
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
    let running = Running::start_with(
        common,
        db,
        args.pool_size,
        256,
        WriteSideConfig::default(),
        Roles::WithReadSide,
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
    observer.wait_until(setup_end).await?;
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
    let drained = observer.wait_until(last).await;
    let observed = observer.stop().await?;
    drained?;
    let (lo, hi) = load
        .measured_range()
        .context("no command of the measured window succeeded")?;
    eprintln!("bench: reading the times of positions {lo}..={hi} from Postgres and JetStream...");
    let logged = logged_times(db, lo, hi).await?;
    let stored = stored_times(common, &names, lo, hi).await?;
    let joined = Joined::new(&load, &observed, &logged, &stored);
    Ok((load, joined))
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
    let actors = Arc::new(actors);
    let period = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(args.warmup_secs);
    let end = measure_from + Duration::from_secs(args.duration_secs);
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
            let outcome = send(request).await;
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

/// The answer's position, or the kind of failure.
async fn send(request: RequestBuilder) -> Result<i64, String> {
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

    /// Waits until the read side and the NATS subscriber both reached
    /// `position`.
    async fn wait_until(&self, position: i64) -> anyhow::Result<()> {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        loop {
            let (read, bus) = (
                self.read_side.load(Ordering::Acquire),
                self.delivered.load(Ordering::Acquire),
            );
            if read >= position && bus >= position {
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

/// `recorded_at` (set at INSERT, inside the command's transaction) and
/// `sequenced_at` (set when the sequencer numbered it, after that commit),
/// in wall µs, by position.
struct Logged {
    position: i64,
    recorded_us: i64,
    sequenced_us: i64,
}

async fn logged_times(db: &BenchDatabase, lo: i64, hi: i64) -> anyhow::Result<Vec<Logged>> {
    let mut conn = db.connect().await?;
    let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT l.position,
                (extract(epoch FROM e.recorded_at) * 1000000)::int8,
                (extract(epoch FROM l.sequenced_at) * 1000000)::int8
         FROM event_log l JOIN events e ON e.global_id = l.global_id
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
        .map(|(position, recorded_us, sequenced_us)| Logged {
            position,
            recorded_us,
            sequenced_us,
        })
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
struct Joined {
    events: usize,
    /// recorded_at of the first and last measured event.
    events_span: Duration,
    insert_to_stored: Vec<Duration>,
    sequenced_to_stored: Vec<Duration>,
    insert_to_delivered: Vec<Duration>,
    insert_to_sequenced: Vec<Duration>,
    stored_to_visible: Vec<Duration>,
    /// Events missing from the stream or the subscriber's view.
    missing_stored: usize,
    missing_delivered: usize,
    accepted_to_visible: Vec<Duration>,
    accepted_to_own_model: Vec<Duration>,
    scheduled_to_visible: Vec<Duration>,
    command_latency: Vec<Duration>,
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
        let mut joined = Joined {
            events: logged.len(),
            events_span: match (logged.first(), logged.last()) {
                (Some(a), Some(b)) => micros(b.recorded_us - a.recorded_us),
                _ => Duration::ZERO,
            },
            insert_to_stored: Vec::new(),
            sequenced_to_stored: Vec::new(),
            insert_to_delivered: Vec::new(),
            insert_to_sequenced: Vec::new(),
            stored_to_visible: Vec::new(),
            missing_stored: 0,
            missing_delivered: 0,
            accepted_to_visible: Vec::new(),
            accepted_to_own_model: Vec::new(),
            scheduled_to_visible: Vec::new(),
            command_latency: Vec::new(),
            visible_before_answer: 0,
            never_visible: 0,
        };
        for event in logged {
            joined
                .insert_to_sequenced
                .push(micros(event.sequenced_us - event.recorded_us));
            match stored.get(&event.position) {
                Some(&stored_us) => {
                    joined
                        .insert_to_stored
                        .push(micros(stored_us - event.recorded_us));
                    joined
                        .sequenced_to_stored
                        .push(micros(stored_us - event.sequenced_us));
                    if let Some(visible) = first_at(&observed.read_side, event.position) {
                        joined
                            .stored_to_visible
                            .push(micros(visible.wall_us - stored_us));
                    }
                }
                None => joined.missing_stored += 1,
            }
            match observed.delivered.get(&event.position) {
                Some(&delivered_us) => joined
                    .insert_to_delivered
                    .push(micros(delivered_us - event.recorded_us)),
                None => joined.missing_delivered += 1,
            }
        }
        for command in load.measured() {
            let Ok(position) = command.outcome else {
                continue;
            };
            joined
                .command_latency
                .push(command.answered - command.scheduled);
            let Some(visible) = first_at(&observed.read_side, position) else {
                joined.never_visible += 1;
                continue;
            };
            if visible.at < command.answered {
                joined.visible_before_answer += 1;
            }
            joined
                .accepted_to_visible
                .push(visible.at.saturating_duration_since(command.answered));
            joined
                .scheduled_to_visible
                .push(visible.at - command.scheduled);
            let own = observed
                .by_projection
                .get(command.kind.read_model())
                .and_then(|marks| first_at(marks, position));
            if let Some(own) = own {
                joined
                    .accepted_to_own_model
                    .push(own.at.saturating_duration_since(command.answered));
            }
        }
        joined
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
        "  load         open loop: {} commands/s started on schedule (POST /projects and PUT /workspaces/{{id}}/files/p{{k}}.txt alternately), {}s warmup + {}s measured",
        args.rate, args.warmup_secs, args.duration_secs
    );
    println!(
        "  commands     offered {} = {:.1}/s; 2xx {ok} = {:.1}/s; errors {error_count} (warmup included)",
        load.offered,
        load.offered as f64 / window,
        ok as f64 / window
    );
    print_errors("               ", &errors);
    print_line(
        "  command ms   ",
        "scheduled start → 2xx answer",
        &j.command_latency,
    );
    println!(
        "  events       {} in the measured commands' positions, {event_rate:.1}/s by recorded_at",
        j.events
    );
    println!("commit → JetStream ack (per event)");
    print_line(
        "  insert → stored     ",
        "recorded_at (INSERT, before commit) → JetStream's timestamp as it stores the message and acks it: an upper bound",
        &j.insert_to_stored,
    );
    print_line(
        "  sequenced → stored  ",
        "sequenced_at (the sequencer's INSERT into event_log, after the commit) → stored: a lower bound",
        &j.sequenced_to_stored,
    );
    print_line(
        "  insert → subscriber ",
        "recorded_at → a core NATS subscriber of <ns>.events.> in this process received it",
        &j.insert_to_delivered,
    );
    if j.missing_stored + j.missing_delivered > 0 {
        println!(
            "  WARNING      {} events missing from the stream, {} never reached the subscriber",
            j.missing_stored, j.missing_delivered
        );
    }
    println!("command accepted → visible (per command)");
    print_line(
        "  all read models     ",
        "2xx answer received → every projection's checkpoint reached its position (what ?min_position= waits for)",
        &j.accepted_to_visible,
    );
    print_line(
        "  its read model      ",
        "2xx answer received → `projects` (POST) or `files` (PUT) reached it",
        &j.accepted_to_own_model,
    );
    print_line(
        "  scheduled → visible ",
        "scheduled start → every projection reached it",
        &j.scheduled_to_visible,
    );
    println!(
        "  note         {} commands were visible before the client had read their answer (counted as 0); {} never became visible",
        j.visible_before_answer, j.never_visible
    );
    println!("where the time goes (per event)");
    print_line(
        "  insert → sequenced  ",
        "recorded_at → sequenced_at",
        &j.insert_to_sequenced,
    );
    print_line(
        "  sequenced → stored  ",
        "relay: read, publish, JetStream store",
        &j.sequenced_to_stored,
    );
    print_line(
        "  stored → read side  ",
        "projections: pull, apply, commit, NOTIFY heard",
        &j.stored_to_visible,
    );
    if error_count > 0 || j.never_visible > 0 {
        println!("  WARNING      this run had errors or lost events: its figures are not clean");
    }
    print_pipeline_goals(args, load, j, event_rate);
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

fn print_pipeline_goals(args: &PipelineArgs, load: &Load, j: &Joined, event_rate: f64) {
    let command_rate = j.command_latency.len() as f64 / load.window().as_secs_f64();
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
    let (upper, lower) = (p99(&j.insert_to_stored), p99(&j.sequenced_to_stored));
    println!(
        "  commit → JetStream ack p99 < {} ms at {GOAL_RATE} events/s    {} (upper bound {}, lower bound {}; {event_rate:.0} events/s{caveat})",
        ACK_P99_GOAL.as_millis(),
        verdict(upper.is_some_and(|p| p < ACK_P99_GOAL)),
        text(upper),
        text(lower),
    );
    let (all, own) = (p99(&j.accepted_to_visible), p99(&j.accepted_to_own_model));
    let clean = j.never_visible == 0;
    println!(
        "  accepted → visible p99 < {} ms at {GOAL_RATE} commands/s    {} ({} until every read model has it; {} for its own read model; {command_rate:.0} commands/s{caveat})",
        VISIBLE_P99_GOAL.as_millis(),
        verdict(clean && all.is_some_and(|p| p < VISIBLE_P99_GOAL)),
        text(all),
        text(own),
    );
}
