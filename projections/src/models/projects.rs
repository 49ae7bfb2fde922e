//! `read.projects`, `read.members`, `read.workspaces`: one projector, since
//! all three come from the project aggregate and change together.

use cqrs_es::Aggregate;
use tandem_domain::envelope::Envelope;
use tandem_domain::project::{Project, ProjectEvent};
use tandem_domain::Role;
use uuid::Uuid;

use crate::projector::{aggregate_uuid, ProjectionError, Projector};
use crate::rows::{RowOps, Set};
use crate::sql::Lit;

pub struct Projects;

impl Projector for Projects {
    fn name(&self) -> &'static str {
        "projects"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["projects", "members", "workspaces"]
    }

    fn project(&self, event: &Envelope, rows: &mut RowOps) -> Result<(), ProjectionError> {
        if event.aggregatetype != Project::TYPE {
            return Ok(());
        }
        let project = aggregate_uuid(event)?;
        let key = || vec![("project_id", Lit::Uuid(project))];
        let at = Lit::Time(event.time);
        // Every project event moves the project's version and `updated_at`.
        let mut changes = vec![
            ("updated_at", Set::To(at.clone())),
            ("version", Set::To(Lit::Int(event.sequence))),
        ];
        match event.decode::<ProjectEvent>()? {
            ProjectEvent::ProjectCreated {
                owner_id,
                name,
                description,
                project_id: _,
            } => {
                rows.insert(
                    "projects",
                    key(),
                    vec![
                        ("name", name.into()),
                        ("description", description.into()),
                        ("owner_id", owner_id.as_uuid().into()),
                        ("archived", false.into()),
                        ("archived_at", Lit::Null("timestamptz")),
                        ("member_count", Lit::Int(1)),
                        ("created_at", at.clone()),
                        ("updated_at", at.clone()),
                        ("version", Lit::Int(event.sequence)),
                    ],
                );
                add_member(rows, project, owner_id.as_uuid(), Role::Owner, &at);
                return Ok(());
            }
            ProjectEvent::ProjectDetailsUpdated {
                name,
                description,
                by: _,
            } => {
                changes.push(("name", Set::To(name.into())));
                changes.push(("description", Set::To(description.into())));
            }
            ProjectEvent::ProjectArchived { by: _ } => {
                changes.push(("archived", Set::To(true.into())));
                changes.push(("archived_at", Set::To(at.clone())));
            }
            ProjectEvent::CollaboratorInvited {
                user_id,
                role,
                by: _,
            } => {
                add_member(rows, project, user_id.as_uuid(), role, &at);
                changes.push(("member_count", Set::Add(1)));
            }
            ProjectEvent::MemberRoleChanged {
                user_id,
                to,
                from: _,
                by: _,
            } => rows.update(
                "members",
                member_key(project, user_id.as_uuid()),
                vec![
                    ("role", Set::To(to.as_str().into())),
                    ("updated_at", Set::To(at.clone())),
                ],
            ),
            ProjectEvent::MemberRemoved { user_id, by: _ } => {
                rows.delete("members", member_key(project, user_id.as_uuid()));
                changes.push(("member_count", Set::Add(-1)));
            }
            ProjectEvent::WorkspaceCreated {
                workspace_id,
                name,
                by,
            } => rows.insert(
                "workspaces",
                vec![("workspace_id", workspace_id.as_uuid().into())],
                vec![
                    ("project_id", project.into()),
                    ("name", name.into()),
                    ("created_by", by.as_uuid().into()),
                    ("created_at", at.clone()),
                    ("updated_at", at.clone()),
                ],
            ),
            ProjectEvent::WorkspaceRenamed {
                workspace_id,
                name,
                by: _,
            } => rows.update(
                "workspaces",
                vec![("workspace_id", workspace_id.as_uuid().into())],
                vec![
                    ("name", Set::To(name.into())),
                    ("updated_at", Set::To(at.clone())),
                ],
            ),
            ProjectEvent::WorkspaceDeleted {
                workspace_id,
                by: _,
            } => rows.delete(
                "workspaces",
                vec![("workspace_id", workspace_id.as_uuid().into())],
            ),
        }
        rows.update("projects", key(), changes);
        Ok(())
    }
}

fn member_key(project: Uuid, user: Uuid) -> Vec<(&'static str, Lit)> {
    vec![("project_id", project.into()), ("user_id", user.into())]
}

fn add_member(rows: &mut RowOps, project: Uuid, user: Uuid, role: Role, at: &Lit) {
    rows.insert(
        "members",
        member_key(project, user),
        vec![
            ("role", role.as_str().into()),
            ("joined_at", at.clone()),
            ("updated_at", at.clone()),
        ],
    );
}
