//! The write side: everything between a decided command and the log of
//! record, plus the services commands need.
//!
//! # Layout
//! - [`db`]: connecting, creating the database, running migrations.
//! - [`bus`]: [`CommandBus`] loads an aggregate from the Postgres event
//!   store, runs the command, appends the events with per-aggregate
//!   optimistic concurrency and stamps their metadata.
//! - [`event_store`]: the event repository under the bus; concurrent
//!   commands share their loads and their appends (group commit).
//! - [`kept`]: connections a batcher keeps between its statements.
//! - [`sequencer`]: gives every committed event its log position.
//! - [`positions`]: wakes the sequencer after appends and lets a command
//!   wait (bounded) for its events' positions.
//! - [`directory`]: the `ProjectDirectory` that file and job aggregates ask,
//!   answered from the project aggregate at command time.
//! - [`accounts`], [`passwords`], [`sessions`]: registration with race-free
//!   email uniqueness, Argon2id off the async runtime, refresh-token families.
//! - [`idempotency`]: stored answers for `Idempotency-Key` retries.
//! - [`jobs`]: the job desk: executors' claims, heartbeats and reports
//!   become job commands; work items for the relay; lost workers reaped.
//! - [`log`]: reading the sequenced log in position order.
//! - [`relay`]: publishes the sequenced log to JetStream, each event once,
//!   in order, and refills the stream when it lost its tail.

pub mod accounts;
mod batcher;
pub mod bus;
pub mod db;
pub mod directory;
pub mod event_store;
pub mod idempotency;
pub mod jobs;
mod kept;
pub mod log;
pub mod notifications;
pub mod passwords;
pub mod positions;
pub mod preemption;
pub mod relay;
pub mod sequencer;
pub mod sessions;

mod write_side;

pub use bus::{CommandBus, CommandContext, CommandError, Committed};
pub use write_side::{WriteSide, WriteSideConfig};
