use std::collections::BTreeMap;

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

use super::{ProjectCommand, ProjectEvent};
use crate::ids::{ProjectId, UserId, WorkspaceId};
use crate::roles::Role;
use crate::services::ProjectAccess;
use crate::ProjectScoped;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Project {
    id: Option<ProjectId>,
    name: String,
    description: String,
    members: BTreeMap<UserId, Role>,
    archived: bool,
    workspaces: BTreeMap<WorkspaceId, WorkspaceState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct WorkspaceState {
    name: String,
    /// Deleted workspaces stay known, so their id never resolves to another
    /// workspace and their files' history stays attributable.
    deleted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProjectError {
    #[error("project already exists")]
    AlreadyExists,
    /// Also what a non-member gets: a project they can't see does not exist.
    #[error("project not found")]
    NotFound,
    #[error("your role in this project does not allow this")]
    Forbidden,
    #[error("the project is archived and read-only")]
    Archived,
    #[error("the user is already a member")]
    AlreadyMember,
    #[error("no such member")]
    MemberNotFound,
    #[error("the owner cannot be removed or given another role")]
    OwnerIsPermanent,
    #[error("a project has exactly one owner; ownership cannot be granted")]
    OwnerCannotBeGranted,
    #[error("workspace not found")]
    WorkspaceNotFound,
    #[error("a workspace with this name already exists")]
    WorkspaceNameTaken,
}

/// What a command needs from its actor.
#[derive(Clone, Copy)]
enum Need {
    Write,
    Manage,
}

impl Project {
    /// The user's standing, for the write side's `ProjectDirectory`.
    pub fn access_for(&self, user: UserId) -> Option<ProjectAccess> {
        self.id.map(|project_id| ProjectAccess {
            project_id,
            role: self.members.get(&user).copied(),
            archived: self.archived,
        })
    }

    pub fn has_live_workspace(&self, workspace: WorkspaceId) -> bool {
        self.workspaces.get(&workspace).is_some_and(|w| !w.deleted)
    }

    pub fn has_workspace(&self, workspace: WorkspaceId) -> bool {
        self.workspaces.contains_key(&workspace)
    }

    /// Checks, in this order: the actor can see the project (else
    /// `NotFound`), their role allows the action (`Forbidden`), the project
    /// still takes writes (`Archived`).
    fn authorize(&self, actor: UserId, need: Need) -> Result<Role, ProjectError> {
        let role = self.member_role(actor)?;
        let allowed = match need {
            Need::Write => role.can_write(),
            Need::Manage => role.can_manage(),
        };
        if !allowed {
            return Err(ProjectError::Forbidden);
        }
        self.ensure_writable()?;
        Ok(role)
    }

    fn member_role(&self, actor: UserId) -> Result<Role, ProjectError> {
        self.id.ok_or(ProjectError::NotFound)?;
        self.members
            .get(&actor)
            .copied()
            .ok_or(ProjectError::NotFound)
    }

    fn ensure_writable(&self) -> Result<(), ProjectError> {
        if self.archived {
            Err(ProjectError::Archived)
        } else {
            Ok(())
        }
    }

    fn target_member(&self, user: UserId) -> Result<Role, ProjectError> {
        match self.members.get(&user) {
            None => Err(ProjectError::MemberNotFound),
            Some(Role::Owner) => Err(ProjectError::OwnerIsPermanent),
            Some(role) => Ok(*role),
        }
    }

    fn live_workspace(&self, workspace: WorkspaceId) -> Result<&WorkspaceState, ProjectError> {
        self.workspaces
            .get(&workspace)
            .filter(|w| !w.deleted)
            .ok_or(ProjectError::WorkspaceNotFound)
    }

    fn ensure_workspace_name_free(
        &self,
        name: &str,
        except: Option<WorkspaceId>,
    ) -> Result<(), ProjectError> {
        let taken = self
            .workspaces
            .iter()
            .any(|(id, w)| !w.deleted && w.name == name && Some(*id) != except);
        if taken {
            Err(ProjectError::WorkspaceNameTaken)
        } else {
            Ok(())
        }
    }
}

impl Aggregate for Project {
    const TYPE: &'static str = "Project";
    type Command = ProjectCommand;
    type Event = ProjectEvent;
    type Error = ProjectError;
    type Services = ();

    async fn handle(
        &mut self,
        command: ProjectCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), ProjectError> {
        let event = match command {
            ProjectCommand::Create {
                project_id,
                owner,
                name,
                description,
            } => {
                if self.id.is_some() {
                    return Err(ProjectError::AlreadyExists);
                }
                ProjectEvent::ProjectCreated {
                    project_id,
                    owner_id: owner,
                    name: name.into_string(),
                    description: description.into_string(),
                }
            }
            ProjectCommand::UpdateDetails {
                actor,
                name,
                description,
            } => {
                self.authorize(actor, Need::Write)?;
                let name = name.map_or_else(|| self.name.clone(), |n| n.into_string());
                let description =
                    description.map_or_else(|| self.description.clone(), |d| d.into_string());
                if name == self.name && description == self.description {
                    return Ok(());
                }
                ProjectEvent::ProjectDetailsUpdated {
                    name,
                    description,
                    by: actor,
                }
            }
            ProjectCommand::Archive { actor } => {
                self.authorize(actor, Need::Manage)?;
                ProjectEvent::ProjectArchived { by: actor }
            }
            ProjectCommand::InviteCollaborator { actor, user, role } => {
                self.authorize(actor, Need::Manage)?;
                if role == Role::Owner {
                    return Err(ProjectError::OwnerCannotBeGranted);
                }
                if self.members.contains_key(&user) {
                    return Err(ProjectError::AlreadyMember);
                }
                ProjectEvent::CollaboratorInvited {
                    user_id: user,
                    role,
                    by: actor,
                }
            }
            ProjectCommand::ChangeMemberRole { actor, user, role } => {
                self.authorize(actor, Need::Manage)?;
                let from = self.target_member(user)?;
                if role == Role::Owner {
                    return Err(ProjectError::OwnerCannotBeGranted);
                }
                if from == role {
                    return Ok(());
                }
                ProjectEvent::MemberRoleChanged {
                    user_id: user,
                    from,
                    to: role,
                    by: actor,
                }
            }
            ProjectCommand::RemoveMember { actor, user } => {
                if actor == user {
                    // Leaving needs membership only, whatever the role.
                    self.member_role(actor)?;
                    self.ensure_writable()?;
                } else {
                    self.authorize(actor, Need::Manage)?;
                }
                self.target_member(user)?;
                ProjectEvent::MemberRemoved {
                    user_id: user,
                    by: actor,
                }
            }
            ProjectCommand::CreateWorkspace {
                actor,
                workspace_id,
                name,
            } => {
                self.authorize(actor, Need::Write)?;
                if self.workspaces.contains_key(&workspace_id) {
                    return Err(ProjectError::AlreadyExists);
                }
                self.ensure_workspace_name_free(name.as_str(), None)?;
                ProjectEvent::WorkspaceCreated {
                    workspace_id,
                    name: name.into_string(),
                    by: actor,
                }
            }
            ProjectCommand::RenameWorkspace {
                actor,
                workspace_id,
                name,
            } => {
                self.authorize(actor, Need::Write)?;
                let current = self.live_workspace(workspace_id)?;
                if current.name == name.as_str() {
                    return Ok(());
                }
                self.ensure_workspace_name_free(name.as_str(), Some(workspace_id))?;
                ProjectEvent::WorkspaceRenamed {
                    workspace_id,
                    name: name.into_string(),
                    by: actor,
                }
            }
            ProjectCommand::DeleteWorkspace {
                actor,
                workspace_id,
            } => {
                self.authorize(actor, Need::Write)?;
                self.live_workspace(workspace_id)?;
                ProjectEvent::WorkspaceDeleted {
                    workspace_id,
                    by: actor,
                }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: ProjectEvent) {
        match event {
            ProjectEvent::ProjectCreated {
                project_id,
                owner_id,
                name,
                description,
            } => {
                self.id = Some(project_id);
                self.name = name;
                self.description = description;
                self.members.insert(owner_id, Role::Owner);
            }
            ProjectEvent::ProjectDetailsUpdated {
                name,
                description,
                by: _,
            } => {
                self.name = name;
                self.description = description;
            }
            ProjectEvent::ProjectArchived { by: _ } => self.archived = true,
            ProjectEvent::CollaboratorInvited {
                user_id,
                role,
                by: _,
            } => {
                self.members.insert(user_id, role);
            }
            ProjectEvent::MemberRoleChanged {
                user_id,
                to,
                from: _,
                by: _,
            } => {
                self.members.insert(user_id, to);
            }
            ProjectEvent::MemberRemoved { user_id, by: _ } => {
                self.members.remove(&user_id);
            }
            ProjectEvent::WorkspaceCreated {
                workspace_id,
                name,
                by: _,
            } => {
                let ws = WorkspaceState {
                    name,
                    deleted: false,
                };
                self.workspaces.insert(workspace_id, ws);
            }
            ProjectEvent::WorkspaceRenamed {
                workspace_id,
                name,
                by: _,
            } => {
                if let Some(ws) = self.workspaces.get_mut(&workspace_id) {
                    ws.name = name;
                }
            }
            ProjectEvent::WorkspaceDeleted {
                workspace_id,
                by: _,
            } => {
                if let Some(ws) = self.workspaces.get_mut(&workspace_id) {
                    ws.deleted = true;
                }
            }
        }
    }
}

impl ProjectScoped for Project {
    fn project_id(&self) -> Option<ProjectId> {
        self.id
    }
}

#[cfg(test)]
mod tests;
