use crate::ids::{UserId, WorkspaceId};
use crate::values::{FileContent, FilePath};

#[derive(Debug, Clone, PartialEq)]
pub enum FileCommand {
    /// `base_version`: the version the writer edited; a save on top of any
    /// other version is a conflict. `Some(0)` means "create, must not exist".
    Save {
        actor: UserId,
        workspace_id: WorkspaceId,
        path: FilePath,
        content: FileContent,
        base_version: Option<u64>,
    },
    Delete {
        actor: UserId,
        workspace_id: WorkspaceId,
        path: FilePath,
        base_version: Option<u64>,
    },
}

impl FileCommand {
    /// The workspace whose project decides who may run this command.
    pub fn workspace_id(&self) -> WorkspaceId {
        match self {
            Self::Save { workspace_id, .. } | Self::Delete { workspace_id, .. } => *workspace_id,
        }
    }
}
