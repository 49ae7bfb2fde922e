use crate::ids::{ProjectId, UserId, WorkspaceId};
use crate::roles::Role;
use crate::values::{Description, ProjectName, WorkspaceName};

#[derive(Debug, Clone, PartialEq)]
pub enum ProjectCommand {
    Create {
        project_id: ProjectId,
        owner: UserId,
        name: ProjectName,
        description: Description,
    },
    /// `None` leaves a field as it is.
    UpdateDetails {
        actor: UserId,
        name: Option<ProjectName>,
        description: Option<Description>,
    },
    Archive {
        actor: UserId,
    },
    InviteCollaborator {
        actor: UserId,
        user: UserId,
        role: Role,
    },
    ChangeMemberRole {
        actor: UserId,
        user: UserId,
        role: Role,
    },
    /// By the owner, or by the member themself (leaving).
    RemoveMember {
        actor: UserId,
        user: UserId,
    },
    CreateWorkspace {
        actor: UserId,
        workspace_id: WorkspaceId,
        name: WorkspaceName,
    },
    RenameWorkspace {
        actor: UserId,
        workspace_id: WorkspaceId,
        name: WorkspaceName,
    },
    DeleteWorkspace {
        actor: UserId,
        workspace_id: WorkspaceId,
    },
}
