//! The `Project` aggregate: details, the archived flag, the member list with
//! roles, and the project's workspaces. It is the authority on who may do
//! what in a project; file and job commands ask it (through
//! [`crate::services::ProjectDirectory`]) at command time.

mod aggregate;
mod commands;
mod events;

pub use aggregate::{Project, ProjectError};
pub use commands::ProjectCommand;
pub use events::ProjectEvent;
