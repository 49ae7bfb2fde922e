//! `read.projects`, `read.members`, `read.workspaces`: one projector, since
//! all three come from the project aggregate and change together.

use cqrs_es::Aggregate;
use tandem_domain::envelope::Envelope;
use tandem_domain::project::{Project, ProjectEvent};
use tandem_domain::Role;

use crate::projector::{aggregate_uuid, ProjectionError, Projector};
use crate::sql::{Lit, SqlBatch};

pub struct Projects;

/// Every project event moves the project's version and `updated_at`.
const TOUCH: &str = "UPDATE projects SET updated_at = $2, version = $3 WHERE project_id = $1";

impl Projector for Projects {
    fn name(&self) -> &'static str {
        "projects"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["projects", "members", "workspaces"]
    }

    fn project(&self, event: &Envelope, batch: &mut SqlBatch) -> Result<(), ProjectionError> {
        if event.aggregatetype != Project::TYPE {
            return Ok(());
        }
        let project = Lit::Uuid(aggregate_uuid(event)?);
        let at = Lit::Time(event.time);
        let version = Lit::Int(event.sequence);
        match event.decode::<ProjectEvent>()? {
            ProjectEvent::ProjectCreated {
                owner_id,
                name,
                description,
                project_id: _,
            } => {
                batch.push(
                    "INSERT INTO projects (project_id, name, description, owner_id, member_count,
                                           created_at, updated_at, version)
                     VALUES ($1, $2, $3, $4, 1, $5, $5, $6)",
                    &[
                        project.clone(),
                        (&name).into(),
                        (&description).into(),
                        owner_id.as_uuid().into(),
                        at.clone(),
                        version.clone(),
                    ],
                );
                add_member(batch, &project, owner_id.as_uuid(), Role::Owner, &at);
            }
            ProjectEvent::ProjectDetailsUpdated {
                name,
                description,
                by: _,
            } => batch.push(
                "UPDATE projects SET name = $2, description = $3 WHERE project_id = $1",
                &[project.clone(), (&name).into(), (&description).into()],
            ),
            ProjectEvent::ProjectArchived { by: _ } => batch.push(
                "UPDATE projects SET archived = true, archived_at = $2 WHERE project_id = $1",
                &[project.clone(), at.clone()],
            ),
            ProjectEvent::CollaboratorInvited {
                user_id,
                role,
                by: _,
            } => {
                add_member(batch, &project, user_id.as_uuid(), role, &at);
                batch.push(
                    "UPDATE projects SET member_count = member_count + 1 WHERE project_id = $1",
                    std::slice::from_ref(&project),
                );
            }
            ProjectEvent::MemberRoleChanged {
                user_id,
                to,
                from: _,
                by: _,
            } => batch.push(
                "UPDATE members SET role = $3, updated_at = $4 WHERE project_id = $1 AND user_id = $2",
                &[
                    project.clone(),
                    user_id.as_uuid().into(),
                    to.as_str().into(),
                    at.clone(),
                ],
            ),
            ProjectEvent::MemberRemoved { user_id, by: _ } => {
                batch.push(
                    "DELETE FROM members WHERE project_id = $1 AND user_id = $2",
                    &[project.clone(), user_id.as_uuid().into()],
                );
                batch.push(
                    "UPDATE projects SET member_count = member_count - 1 WHERE project_id = $1",
                    std::slice::from_ref(&project),
                );
            }
            ProjectEvent::WorkspaceCreated {
                workspace_id,
                name,
                by,
            } => batch.push(
                "INSERT INTO workspaces (workspace_id, project_id, name, created_by, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $5)",
                &[
                    workspace_id.as_uuid().into(),
                    project.clone(),
                    (&name).into(),
                    by.as_uuid().into(),
                    at.clone(),
                ],
            ),
            ProjectEvent::WorkspaceRenamed {
                workspace_id,
                name,
                by: _,
            } => batch.push(
                "UPDATE workspaces SET name = $2, updated_at = $3 WHERE workspace_id = $1",
                &[workspace_id.as_uuid().into(), (&name).into(), at.clone()],
            ),
            ProjectEvent::WorkspaceDeleted {
                workspace_id,
                by: _,
            } => batch.push(
                "DELETE FROM workspaces WHERE workspace_id = $1",
                &[workspace_id.as_uuid().into()],
            ),
        }
        batch.push(TOUCH, &[project, at, version]);
        Ok(())
    }
}

fn add_member(batch: &mut SqlBatch, project: &Lit<'_>, user: uuid::Uuid, role: Role, at: &Lit<'_>) {
    batch.push(
        "INSERT INTO members (project_id, user_id, role, joined_at, updated_at) VALUES ($1, $2, $3, $4, $4)",
        &[project.clone(), user.into(), role.as_str().into(), at.clone()],
    );
}
