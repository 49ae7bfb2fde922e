//! Facts an aggregate needs from outside its own stream. File and job
//! commands are authorized by the *project's* membership, which lives in
//! the project aggregate; the write side implements [`ProjectDirectory`] by
//! loading that aggregate from the event store at command time, so the
//! answer is strongly consistent (never a cache or a read model).

use std::sync::Arc;

use async_trait::async_trait;

use crate::ids::{ProjectId, UserId, WorkspaceId};
use crate::roles::Role;

/// A user's standing in one project at command time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectAccess {
    pub project_id: ProjectId,
    /// `None` when the user is not a member (or the project doesn't exist).
    pub role: Option<Role>,
    pub archived: bool,
}

/// Why a user may not change a project's content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteDenied {
    /// Not a member: the project is invisible to them.
    NotVisible,
    /// A member whose role only reads.
    ReadOnlyRole,
    Archived,
}

impl ProjectAccess {
    /// The standing a writer needs: a member, with a write role, in a
    /// project that still takes writes. Checked in that order, so a
    /// non-member learns nothing about the project's state.
    pub fn require_write(&self) -> Result<ProjectId, WriteDenied> {
        let role = self.role.ok_or(WriteDenied::NotVisible)?;
        if !role.can_write() {
            return Err(WriteDenied::ReadOnlyRole);
        }
        if self.archived {
            return Err(WriteDenied::Archived);
        }
        Ok(self.project_id)
    }
}

/// A user's standing in the project that owns a workspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkspaceAccess {
    pub project: ProjectAccess,
    /// The workspace exists and has not been deleted.
    pub live: bool,
}

/// A file's current content, as read for a job that runs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSnapshot {
    pub version: u64,
    pub content: String,
}

/// The lookup failed for a reason outside the domain (database down). The
/// text goes to logs only; the client sees an opaque 503/500.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("project directory unavailable: {0}")]
pub struct LookupError(pub String);

#[async_trait]
pub trait ProjectDirectory: Send + Sync {
    /// `Ok(None)` when no such project exists.
    async fn project_access(
        &self,
        project: ProjectId,
        user: UserId,
    ) -> Result<Option<ProjectAccess>, LookupError>;

    /// `Ok(None)` when no project has ever had this workspace.
    async fn workspace_access(
        &self,
        workspace: WorkspaceId,
        user: UserId,
    ) -> Result<Option<WorkspaceAccess>, LookupError>;

    /// The current content of a live file, `Ok(None)` if it does not exist.
    async fn file_snapshot(
        &self,
        workspace: WorkspaceId,
        path: &str,
    ) -> Result<Option<FileSnapshot>, LookupError>;
}

/// What file and job aggregates receive as their `Services`.
pub type Directory = Arc<dyn ProjectDirectory>;
