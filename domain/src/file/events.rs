use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

use crate::ids::{ProjectId, UserId, WorkspaceId};

/// A file's version is its aggregate sequence: the envelope's `sequence`
/// of the `FileSaved` that wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum FileEvent {
    FileSaved {
        project_id: ProjectId,
        workspace_id: WorkspaceId,
        path: String,
        content: String,
        size_bytes: u64,
        by: UserId,
    },
    FileDeleted {
        project_id: ProjectId,
        workspace_id: WorkspaceId,
        path: String,
        by: UserId,
    },
}

impl DomainEvent for FileEvent {
    fn event_type(&self) -> String {
        match self {
            FileEvent::FileSaved { .. } => "FileSaved",
            FileEvent::FileDeleted { .. } => "FileDeleted",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        crate::EVENT_VERSION.to_owned()
    }
}
