use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

use crate::ids::{ProjectId, UserId, WorkspaceId};
use crate::roles::Role;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ProjectEvent {
    ProjectCreated {
        project_id: ProjectId,
        owner_id: UserId,
        name: String,
        description: String,
    },
    /// Carries the full new values, so a reader needs no earlier event.
    ProjectDetailsUpdated {
        name: String,
        description: String,
        by: UserId,
    },
    ProjectArchived {
        by: UserId,
    },
    CollaboratorInvited {
        user_id: UserId,
        role: Role,
        by: UserId,
    },
    MemberRoleChanged {
        user_id: UserId,
        from: Role,
        to: Role,
        by: UserId,
    },
    /// `by == user_id` when the member left on their own.
    MemberRemoved {
        user_id: UserId,
        by: UserId,
    },
    WorkspaceCreated {
        workspace_id: WorkspaceId,
        name: String,
        by: UserId,
    },
    WorkspaceRenamed {
        workspace_id: WorkspaceId,
        name: String,
        by: UserId,
    },
    WorkspaceDeleted {
        workspace_id: WorkspaceId,
        by: UserId,
    },
}

impl DomainEvent for ProjectEvent {
    fn event_type(&self) -> String {
        match self {
            ProjectEvent::ProjectCreated { .. } => "ProjectCreated",
            ProjectEvent::ProjectDetailsUpdated { .. } => "ProjectDetailsUpdated",
            ProjectEvent::ProjectArchived { .. } => "ProjectArchived",
            ProjectEvent::CollaboratorInvited { .. } => "CollaboratorInvited",
            ProjectEvent::MemberRoleChanged { .. } => "MemberRoleChanged",
            ProjectEvent::MemberRemoved { .. } => "MemberRemoved",
            ProjectEvent::WorkspaceCreated { .. } => "WorkspaceCreated",
            ProjectEvent::WorkspaceRenamed { .. } => "WorkspaceRenamed",
            ProjectEvent::WorkspaceDeleted { .. } => "WorkspaceDeleted",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        crate::EVENT_VERSION.to_owned()
    }
}
