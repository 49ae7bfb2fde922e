//! Ephemeral traffic on core NATS (`<ns>.live.<project_id>.<kind>`): who is
//! here, cursors and broadcasts, live job output. Never in the log, never
//! replayed; a subscriber that was not connected simply did not see it.
//!
//! These are the payloads as they travel between processes (gateways and
//! executors); the gateway turns each into a WebSocket frame.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Subject kinds under `<ns>.live.<project_id>.`.
pub mod kind {
    pub const PRESENCE: &str = "presence";
    pub const CURSOR: &str = "cursor";
    pub const BROADCAST: &str = "broadcast";
    pub const JOB_OUTPUT: &str = "job_output";
}

/// The connection a message came from (`<gateway id>/<connection id>`), so
/// the gateway holding that connection does not echo it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub gateway: Uuid,
    pub connection: u64,
}

/// Users who arrived in or left a project (a user counts once, however
/// many connections they hold).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PresenceChange {
    pub origin: Option<Origin>,
    #[serde(default)]
    pub joined: Vec<Uuid>,
    #[serde(default)]
    pub left: Vec<Uuid>,
}

/// A cursor position or a broadcast: opaque, small, from one member.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Relayed {
    pub origin: Origin,
    pub user_id: Uuid,
    pub data: Value,
}

/// Which output stream a chunk of job output came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// A piece of a running job's output, published by the executor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobOutputChunk {
    pub job_id: Uuid,
    pub stream: OutputStream,
    pub chunk: String,
}
