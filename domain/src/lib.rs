//! The Tandem domain: aggregates, their commands and events, roles and the
//! value types that commands are built from. Pure: no I/O, no SQL, no HTTP.
//!
//! # Layout
//! - [`ids`], [`values`]: newtypes for identifiers and parsed input
//!   (`Email::parse`, `FilePath::parse`, ...). A value that exists is valid.
//! - [`envelope`]: the CloudEvents envelope of a sequenced event and the
//!   NATS names it travels under.
//! - [`live`]: ephemeral messages (presence, cursors, job output) on core NATS.
//! - [`work`]: job work items, claims, heartbeats and reports between the
//!   write side and executors.
//! - [`roles`]: project roles and what each may do.
//! - [`services`]: the facts an aggregate needs from outside its own stream
//!   (another aggregate's membership, a file's content), behind a trait.
//! - one module per aggregate, each with `commands`, `events` and
//!   `aggregate` (state, `handle`, `apply`, and `TestFramework` tests):
//!   [`user`], [`session`], [`project`], [`file`], [`job`].
//!
//! Event type names, aggregate `TYPE`s and payload field names are stored
//! forever: they change only through a new event version and an upcaster.

pub mod envelope;
pub mod ids;
pub mod live;
pub mod roles;
pub mod services;
pub mod values;
pub mod work;

pub mod file;
pub mod job;
pub mod project;
pub mod session;
pub mod user;

#[cfg(test)]
mod testing;

pub use ids::{FileId, JobId, ProjectId, SessionId, UserId, WorkspaceId};
pub use roles::Role;

/// Implemented by every aggregate so the write side can stamp each event
/// with the project it belongs to (metadata `project_id`, NATS subject,
/// the indexed `project_id` column) without knowing the aggregate's shape.
pub trait ProjectScoped {
    /// The project this aggregate belongs to, once known; `None` for
    /// aggregates outside any project (users, sessions).
    fn project_id(&self) -> Option<ProjectId>;
}

/// Schema version written with every event of this crate; bump per event
/// type together with an upcaster when a payload changes shape.
pub const EVENT_VERSION: &str = "1";
