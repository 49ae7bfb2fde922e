//! Command endpoints, one module per resource. Each handler parses its
//! body into domain values (422 naming every bad field), builds the
//! command with the caller as actor, and lets the aggregate decide.
//! Authorization is the aggregate's, at command time; nothing here reads a
//! cache or a read model to allow or refuse.

pub mod files;
pub mod jobs;
pub mod members;
pub mod projects;
pub mod workspaces;

use serde::Serialize;
use utoipa::ToSchema;

/// The answer to a command that changed a resource.
#[derive(Serialize, ToSchema)]
pub struct Changed {
    pub id: uuid::Uuid,
    /// The aggregate's version after the command (also the `ETag`).
    pub version: u64,
    /// Log position of the last event; `null` if not sequenced in time.
    pub position: Option<i64>,
}
