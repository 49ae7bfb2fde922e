//! [`CommandBus`]: load → decide → append, for every aggregate.
//!
//! cqrs-es's `CqrsFramework` hides what it committed; the bus drives the
//! same pieces (`EventStore::load_aggregate`, `Aggregate::handle`,
//! `EventStore::commit`) itself so it can check an expected version
//! (`If-Match`), stamp metadata from the aggregate's state, retry lost
//! optimistic-concurrency races, and report the new version and position.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::Arc;

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{EventStoreAggregateContext, PersistedEventStore};
use cqrs_es::{Aggregate, AggregateContext, AggregateError, EventStore};
use tandem_domain::file::{File, FileCommand};
use tandem_domain::job::Job;
use tandem_domain::project::Project;
use tandem_domain::services::Directory;
use tandem_domain::session::Session;
use tandem_domain::user::User;
use tandem_domain::{ProjectScoped, UserId};

use crate::directory::{EventStoreDirectory, Prefetched};
use crate::event_store::BatchedEventStore;
use crate::positions::PositionWaiter;

type PgStore<A> = PersistedEventStore<BatchedEventStore, A>;

/// Lost optimistic-concurrency races are re-decided on fresh state this many
/// times before the caller hears `Conflict`. Each retry waits a random
/// moment (growing with the attempt) so contenders spread out.
const CONFLICT_RETRIES: u32 = 30;

/// Who asked, and why: stamped on every event as metadata.
#[derive(Clone, Debug)]
pub struct CommandContext {
    /// `None` for commands the system issues itself (job reports).
    pub actor: Option<UserId>,
    pub request_id: String,
    /// Shared by everything one user action sets off.
    pub correlation_id: String,
    /// The request or event that directly caused this command.
    pub causation_id: String,
}

impl CommandContext {
    /// A command from an HTTP request; without a client-supplied correlation
    /// id the request starts a new correlation.
    pub fn for_request(
        actor: Option<UserId>,
        request_id: impl Into<String>,
        correlation_id: Option<String>,
    ) -> Self {
        let request_id = request_id.into();
        Self {
            actor,
            correlation_id: correlation_id.unwrap_or_else(|| request_id.clone()),
            causation_id: request_id.clone(),
            request_id,
        }
    }

    /// The same request issuing a follow-up command on behalf of `actor`.
    pub fn with_actor(&self, actor: UserId) -> Self {
        Self {
            actor: Some(actor),
            ..self.clone()
        }
    }
}

/// What an accepted command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    pub aggregate_id: String,
    /// The aggregate's version after the command (its last sequence).
    pub version: u64,
    /// Events this command appended; 0 when it changed nothing.
    pub appended: usize,
    /// Log position of the aggregate's last event, once sequenced; `None`
    /// if the sequencer did not get to it within the wait bound.
    pub position: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: StdError> {
    /// The aggregate refused: a domain rule.
    #[error(transparent)]
    Rejected(E),
    /// `If-Match` named another version than the aggregate's.
    #[error("expected version {expected}, but the aggregate is at {current}")]
    PreconditionFailed { expected: u64, current: u64 },
    /// Other writers kept winning the race for this aggregate.
    #[error("the aggregate kept changing concurrently")]
    Conflict,
    /// Postgres could not be reached.
    #[error("event store unavailable")]
    Unavailable(#[source] Box<dyn StdError + Send + Sync>),
    /// Anything else: a bug or corrupt data. Logged in full, shown opaque.
    #[error("event store failure")]
    Internal(#[source] Box<dyn StdError + Send + Sync>),
}

impl<E: StdError> CommandError<E> {
    fn from_store(err: AggregateError<E>) -> Self {
        match err {
            AggregateError::UserError(e) => Self::Rejected(e),
            AggregateError::AggregateConflict => Self::Conflict,
            AggregateError::DatabaseConnectionError(e) => Self::Unavailable(e),
            AggregateError::UnexpectedError(e)
                if e.downcast_ref::<sqlx::Error>()
                    .is_some_and(crate::db::is_unavailable) =>
            {
                Self::Unavailable(e)
            }
            AggregateError::DeserializationError(e) | AggregateError::UnexpectedError(e) => {
                Self::Internal(e)
            }
        }
    }
}

/// An aggregate the bus can run: where its events live and what services
/// it gets.
pub trait Handled: Aggregate + ProjectScoped + Clone + 'static {
    fn parts(bus: &CommandBus) -> (&PgStore<Self>, &Self::Services);

    /// Services of `command`'s own for its first decision, which have
    /// started reading what it will ask, to overlap the aggregate's own
    /// load; `None`: the shared ones.
    fn prefetch(_bus: &CommandBus, _command: &Self::Command) -> Option<Self::Services> {
        None
    }
}

macro_rules! handled {
    ($aggregate:ty, $store:ident, $services:ident) => {
        handled!($aggregate, $store, $services, {});
    };
    ($aggregate:ty, $store:ident, $services:ident, { $($more:item)* }) => {
        impl Handled for $aggregate {
            fn parts(bus: &CommandBus) -> (&PgStore<Self>, &Self::Services) {
                (&bus.inner.$store, &bus.inner.$services)
            }
            $($more)*
        }
    };
}

handled!(User, users, unit);
handled!(Session, sessions, unit);
handled!(Project, projects, unit);
handled!(File, files, directory, {
    fn prefetch(bus: &CommandBus, command: &FileCommand) -> Option<Directory> {
        let workspace = command.workspace_id();
        Some(Arc::new(Prefetched::start(
            &bus.inner.event_directory,
            workspace,
        )))
    }
});
handled!(Job, jobs, directory);

struct Inner {
    users: PgStore<User>,
    sessions: PgStore<Session>,
    projects: PgStore<Project>,
    files: PgStore<File>,
    jobs: PgStore<Job>,
    unit: (),
    directory: Directory,
    /// `directory`, as the type it is.
    event_directory: Arc<EventStoreDirectory>,
    positions: PositionWaiter,
}

/// Cheap to clone; one per process.
#[derive(Clone)]
pub struct CommandBus {
    inner: Arc<Inner>,
}

fn store<A: Aggregate>(events: &BatchedEventStore) -> PgStore<A> {
    PersistedEventStore::new_event_store(events.clone())
}

impl CommandBus {
    pub fn new(
        events: &BatchedEventStore,
        directory: Arc<EventStoreDirectory>,
        positions: PositionWaiter,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                users: store(events),
                sessions: store(events),
                projects: store(events),
                files: store(events),
                jobs: store(events),
                unit: (),
                directory: directory.clone(),
                event_directory: directory,
                positions,
            }),
        }
    }

    /// Loads `A` from its events alone (no snapshot), as commands see it.
    pub async fn load<A: Handled>(&self, id: &str) -> Result<(A, u64), CommandError<A::Error>> {
        let (store, _) = A::parts(self);
        let ctx = store
            .load_aggregate(id)
            .await
            .map_err(CommandError::from_store)?;
        let version = ctx.current_sequence as u64;
        Ok((ctx.aggregate, version))
    }

    /// Runs `command` against aggregate `id`. With `expected_version`
    /// (from `If-Match`) the command only runs on exactly that version and
    /// a lost race is `PreconditionFailed`; without it a lost race is
    /// re-decided on the winner's state.
    pub async fn execute<A>(
        &self,
        id: &str,
        command: A::Command,
        ctx: &CommandContext,
        expected_version: Option<u64>,
    ) -> Result<Committed, CommandError<A::Error>>
    where
        A: Handled,
        A::Command: Clone,
    {
        let (committed, _) = self
            .run::<A>(id, command, ctx, expected_version, false, true)
            .await?;
        Ok(committed)
    }

    /// Like [`execute`](Self::execute), without waiting for the log
    /// position (`position` is `None`), and with the aggregate as the
    /// command left it: for system commands whose caller needs the
    /// decision and the state, not the coordinate (an executor's claim).
    pub async fn execute_unpositioned<A>(
        &self,
        id: &str,
        command: A::Command,
        ctx: &CommandContext,
    ) -> Result<(Committed, A), CommandError<A::Error>>
    where
        A: Handled,
        A::Command: Clone,
    {
        let (committed, state) = self.run::<A>(id, command, ctx, None, false, false).await?;
        Ok((committed, state.unwrap_or_default()))
    }

    /// For a command that creates its aggregate under an id minted for it:
    /// the stream is empty by construction, so loading it is skipped. Were
    /// the id taken after all, the append would conflict and the command
    /// be re-run on the loaded aggregate.
    pub async fn execute_new<A>(
        &self,
        id: &str,
        command: A::Command,
        ctx: &CommandContext,
    ) -> Result<Committed, CommandError<A::Error>>
    where
        A: Handled,
        A::Command: Clone,
    {
        let (committed, _) = self.run::<A>(id, command, ctx, None, true, true).await?;
        Ok(committed)
    }

    async fn run<A>(
        &self,
        id: &str,
        command: A::Command,
        ctx: &CommandContext,
        expected_version: Option<u64>,
        fresh: bool,
        positioned: bool,
    ) -> Result<(Committed, Option<A>), CommandError<A::Error>>
    where
        A: Handled,
        A::Command: Clone,
    {
        let (store, shared) = A::parts(self);
        // Retries decide on what they read themselves, after the loss.
        let prefetched = A::prefetch(self, &command);
        let mut attempt = 0;
        let mut subscription = None;
        let (version, appended, state) = loop {
            let mut context = if fresh && attempt == 0 {
                EventStoreAggregateContext {
                    aggregate_id: id.to_owned(),
                    aggregate: A::default(),
                    current_sequence: 0,
                    current_snapshot: None,
                }
            } else {
                store
                    .load_aggregate(id)
                    .await
                    .map_err(CommandError::from_store)?
            };
            let current = context.current_sequence as u64;
            let services = match &prefetched {
                Some(own) if attempt == 0 => own,
                _ => shared,
            };
            let sink = EventSink::default();
            // The aggregate decides first: someone who may not see it must
            // learn nothing from a version mismatch (not even existence).
            context
                .aggregate()
                .handle(command.clone(), services, &sink)
                .await
                .map_err(CommandError::Rejected)?;
            if let Some(expected) = expected_version {
                if expected != current {
                    return Err(CommandError::PreconditionFailed { expected, current });
                }
            }
            let events = sink.collect().await;
            if events.is_empty() {
                break (current, 0, Some(context.aggregate));
            }
            let metadata = metadata(ctx, context.aggregate().project_id());
            if positioned {
                let last = current + events.len() as u64;
                subscription = Some(self.inner.positions.subscribe(id, last));
            }
            // The events are applied already (the sink applies as it
            // writes): this is the state the commit makes true. Only the
            // unpositioned caller wants it.
            let state = (!positioned).then(|| context.aggregate.clone());
            match store.commit(events, context, metadata).await {
                Ok(committed) => {
                    let last = committed.last().map_or(current, |e| e.sequence as u64);
                    break (last, committed.len(), state);
                }
                Err(AggregateError::AggregateConflict) => {
                    if let Some(expected) = expected_version {
                        let current = self.load::<A>(id).await?.1;
                        return Err(CommandError::PreconditionFailed { expected, current });
                    }
                    attempt += 1;
                    if attempt > CONFLICT_RETRIES {
                        return Err(CommandError::Conflict);
                    }
                    tracing::debug!(aggregate_id = id, attempt, "lost a write race; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) => return Err(CommandError::from_store(e)),
            }
        };
        let position = if version == 0 || !positioned {
            None
        } else {
            let recorded_earlier = appended == 0;
            let subscription =
                subscription.unwrap_or_else(|| self.inner.positions.subscribe(id, version));
            self.inner
                .positions
                .wait_for(subscription, A::TYPE, recorded_earlier)
                .await
                .map_err(|e| CommandError::Unavailable(Box::new(e)))?
        };
        let committed = Committed {
            aggregate_id: id.to_owned(),
            version,
            appended,
            position,
        };
        Ok((committed, state))
    }
}

fn backoff(attempt: u32) -> std::time::Duration {
    let ceiling_us = 500u64 << attempt.min(6);
    std::time::Duration::from_micros(rand::random_range(0..ceiling_us))
}

fn metadata(
    ctx: &CommandContext,
    project: Option<tandem_domain::ProjectId>,
) -> HashMap<String, String> {
    let mut m = HashMap::with_capacity(5);
    if let Some(actor) = ctx.actor {
        m.insert("actor_id".to_owned(), actor.to_string());
    }
    if let Some(project) = project {
        m.insert("project_id".to_owned(), project.to_string());
    }
    m.insert("request_id".to_owned(), ctx.request_id.clone());
    m.insert("correlation_id".to_owned(), ctx.correlation_id.clone());
    m.insert("causation_id".to_owned(), ctx.causation_id.clone());
    m
}
