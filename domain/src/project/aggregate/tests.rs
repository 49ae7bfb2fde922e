//! Given/when/then tests: every project command, accepted and refused.

use cqrs_es::test::TestFramework;

use super::*;
use crate::values::{Description, ProjectName, WorkspaceName};

type Test = TestFramework<Project>;

/// A project with an owner, a collaborator and a viewer, and the events
/// that made it.
struct Cast {
    project: ProjectId,
    owner: UserId,
    collaborator: UserId,
    viewer: UserId,
    stranger: UserId,
}

impl Cast {
    fn new() -> Self {
        Self {
            project: ProjectId::generate(),
            owner: UserId::generate(),
            collaborator: UserId::generate(),
            viewer: UserId::generate(),
            stranger: UserId::generate(),
        }
    }

    fn history(&self) -> Vec<ProjectEvent> {
        vec![
            ProjectEvent::ProjectCreated {
                project_id: self.project,
                owner_id: self.owner,
                name: "Apollo".into(),
                description: "moon".into(),
            },
            ProjectEvent::CollaboratorInvited {
                user_id: self.collaborator,
                role: Role::Collaborator,
                by: self.owner,
            },
            ProjectEvent::CollaboratorInvited {
                user_id: self.viewer,
                role: Role::Viewer,
                by: self.owner,
            },
        ]
    }

    fn archived(&self) -> Vec<ProjectEvent> {
        let mut h = self.history();
        h.push(ProjectEvent::ProjectArchived { by: self.owner });
        h
    }

    fn with_workspace(&self, ws: WorkspaceId, name: &str) -> Vec<ProjectEvent> {
        let mut h = self.history();
        h.push(ProjectEvent::WorkspaceCreated {
            workspace_id: ws,
            name: name.into(),
            by: self.owner,
        });
        h
    }
}

fn name(s: &str) -> ProjectName {
    ProjectName::parse(s).unwrap()
}

fn ws_name(s: &str) -> WorkspaceName {
    WorkspaceName::parse(s).unwrap()
}

#[test]
fn creating_a_project_makes_the_creator_owner() {
    let c = Cast::new();
    Test::with(())
        .given_no_previous_events()
        .when(ProjectCommand::Create {
            project_id: c.project,
            owner: c.owner,
            name: name("Apollo"),
            description: Description::parse("moon").unwrap(),
        })
        .then_expect_events(vec![c.history()[0].clone()]);
}

#[test]
fn a_project_is_created_once() {
    let c = Cast::new();
    Test::with(())
        .given(c.history())
        .when(ProjectCommand::Create {
            project_id: c.project,
            owner: c.stranger,
            name: name("Again"),
            description: Description::default(),
        })
        .then_expect_error(ProjectError::AlreadyExists);
}

#[test]
fn writers_update_details() {
    let c = Cast::new();
    for actor in [c.owner, c.collaborator] {
        Test::with(())
            .given(c.history())
            .when(ProjectCommand::UpdateDetails {
                actor,
                name: Some(name("Artemis")),
                description: None,
            })
            .then_expect_events(vec![ProjectEvent::ProjectDetailsUpdated {
                name: "Artemis".into(),
                description: "moon".into(),
                by: actor,
            }]);
    }
}

#[test]
fn an_update_that_changes_nothing_records_nothing() {
    let c = Cast::new();
    Test::with(())
        .given(c.history())
        .when(ProjectCommand::UpdateDetails {
            actor: c.owner,
            name: Some(name("Apollo")),
            description: None,
        })
        .then_expect_events(vec![]);
}

#[test]
fn viewers_and_strangers_cannot_update_details() {
    let c = Cast::new();
    let cases = [
        (c.viewer, ProjectError::Forbidden),
        (c.stranger, ProjectError::NotFound),
    ];
    for (actor, error) in cases {
        Test::with(())
            .given(c.history())
            .when(ProjectCommand::UpdateDetails {
                actor,
                name: Some(name("Hijacked")),
                description: None,
            })
            .then_expect_error(error);
    }
}

#[test]
fn unknown_projects_are_not_found() {
    let c = Cast::new();
    Test::with(())
        .given_no_previous_events()
        .when(ProjectCommand::Archive { actor: c.owner })
        .then_expect_error(ProjectError::NotFound);
}

#[test]
fn the_owner_archives() {
    let c = Cast::new();
    Test::with(())
        .given(c.history())
        .when(ProjectCommand::Archive { actor: c.owner })
        .then_expect_events(vec![ProjectEvent::ProjectArchived { by: c.owner }]);
}

#[test]
fn only_the_owner_archives() {
    let c = Cast::new();
    Test::with(())
        .given(c.history())
        .when(ProjectCommand::Archive {
            actor: c.collaborator,
        })
        .then_expect_error(ProjectError::Forbidden);
}

#[test]
fn an_archived_project_refuses_every_write() {
    let c = Cast::new();
    let ws = WorkspaceId::generate();
    let commands = vec![
        ProjectCommand::UpdateDetails {
            actor: c.owner,
            name: Some(name("Late")),
            description: None,
        },
        ProjectCommand::Archive { actor: c.owner },
        ProjectCommand::InviteCollaborator {
            actor: c.owner,
            user: c.stranger,
            role: Role::Viewer,
        },
        ProjectCommand::ChangeMemberRole {
            actor: c.owner,
            user: c.viewer,
            role: Role::Collaborator,
        },
        ProjectCommand::RemoveMember {
            actor: c.owner,
            user: c.viewer,
        },
        ProjectCommand::RemoveMember {
            actor: c.viewer,
            user: c.viewer,
        },
        ProjectCommand::CreateWorkspace {
            actor: c.collaborator,
            workspace_id: ws,
            name: ws_name("late"),
        },
    ];
    for command in commands {
        Test::with(())
            .given(c.archived())
            .when(command)
            .then_expect_error(ProjectError::Archived);
    }
}

#[test]
fn the_owner_invites_collaborators_and_viewers() {
    let c = Cast::new();
    for role in [Role::Collaborator, Role::Viewer] {
        Test::with(())
            .given(c.history())
            .when(ProjectCommand::InviteCollaborator {
                actor: c.owner,
                user: c.stranger,
                role,
            })
            .then_expect_events(vec![ProjectEvent::CollaboratorInvited {
                user_id: c.stranger,
                role,
                by: c.owner,
            }]);
    }
}

#[test]
fn invitations_are_refused_for_members_owners_and_non_owners() {
    let c = Cast::new();
    let cases = [
        (
            c.owner,
            c.viewer,
            Role::Collaborator,
            ProjectError::AlreadyMember,
        ),
        (
            c.owner,
            c.stranger,
            Role::Owner,
            ProjectError::OwnerCannotBeGranted,
        ),
        (
            c.collaborator,
            c.stranger,
            Role::Viewer,
            ProjectError::Forbidden,
        ),
        (c.viewer, c.stranger, Role::Viewer, ProjectError::Forbidden),
        (c.stranger, c.stranger, Role::Viewer, ProjectError::NotFound),
    ];
    for (actor, user, role, error) in cases {
        Test::with(())
            .given(c.history())
            .when(ProjectCommand::InviteCollaborator { actor, user, role })
            .then_expect_error(error);
    }
}

#[test]
fn the_owner_changes_a_members_role() {
    let c = Cast::new();
    Test::with(())
        .given(c.history())
        .when(ProjectCommand::ChangeMemberRole {
            actor: c.owner,
            user: c.viewer,
            role: Role::Collaborator,
        })
        .then_expect_events(vec![ProjectEvent::MemberRoleChanged {
            user_id: c.viewer,
            from: Role::Viewer,
            to: Role::Collaborator,
            by: c.owner,
        }]);
}

#[test]
fn role_changes_keep_exactly_one_owner() {
    let c = Cast::new();
    let cases = [
        (
            c.owner,
            c.owner,
            Role::Viewer,
            ProjectError::OwnerIsPermanent,
        ),
        (
            c.owner,
            c.viewer,
            Role::Owner,
            ProjectError::OwnerCannotBeGranted,
        ),
        (
            c.owner,
            c.stranger,
            Role::Viewer,
            ProjectError::MemberNotFound,
        ),
        (
            c.collaborator,
            c.viewer,
            Role::Collaborator,
            ProjectError::Forbidden,
        ),
    ];
    for (actor, user, role, error) in cases {
        Test::with(())
            .given(c.history())
            .when(ProjectCommand::ChangeMemberRole { actor, user, role })
            .then_expect_error(error);
    }
}

#[test]
fn the_owner_removes_members_and_members_leave() {
    let c = Cast::new();
    let cases = [
        (c.owner, c.viewer),
        (c.owner, c.collaborator),
        (c.viewer, c.viewer),
        (c.collaborator, c.collaborator),
    ];
    for (actor, user) in cases {
        Test::with(())
            .given(c.history())
            .when(ProjectCommand::RemoveMember { actor, user })
            .then_expect_events(vec![ProjectEvent::MemberRemoved {
                user_id: user,
                by: actor,
            }]);
    }
}

#[test]
fn removals_never_take_the_owner_and_need_the_owner() {
    let c = Cast::new();
    let cases = [
        (c.owner, c.owner, ProjectError::OwnerIsPermanent),
        (c.collaborator, c.viewer, ProjectError::Forbidden),
        (c.viewer, c.collaborator, ProjectError::Forbidden),
        (c.owner, c.stranger, ProjectError::MemberNotFound),
        (c.stranger, c.stranger, ProjectError::NotFound),
    ];
    for (actor, user, error) in cases {
        Test::with(())
            .given(c.history())
            .when(ProjectCommand::RemoveMember { actor, user })
            .then_expect_error(error);
    }
}

#[test]
fn a_removed_member_loses_access() {
    let c = Cast::new();
    Test::with(())
        .given(c.history())
        .and(vec![ProjectEvent::MemberRemoved {
            user_id: c.collaborator,
            by: c.owner,
        }])
        .when(ProjectCommand::UpdateDetails {
            actor: c.collaborator,
            name: Some(name("Revenge")),
            description: None,
        })
        .then_expect_error(ProjectError::NotFound);
}

#[test]
fn writers_create_workspaces() {
    let c = Cast::new();
    let ws = WorkspaceId::generate();
    Test::with(())
        .given(c.history())
        .when(ProjectCommand::CreateWorkspace {
            actor: c.collaborator,
            workspace_id: ws,
            name: ws_name("main"),
        })
        .then_expect_events(vec![ProjectEvent::WorkspaceCreated {
            workspace_id: ws,
            name: "main".into(),
            by: c.collaborator,
        }]);
}

#[test]
fn workspace_creation_is_refused_for_viewers_and_taken_names() {
    let c = Cast::new();
    let existing = WorkspaceId::generate();
    let cases = [
        (
            c.viewer,
            WorkspaceId::generate(),
            "other",
            ProjectError::Forbidden,
        ),
        (
            c.owner,
            WorkspaceId::generate(),
            "main",
            ProjectError::WorkspaceNameTaken,
        ),
        (c.owner, existing, "fresh", ProjectError::AlreadyExists),
    ];
    for (actor, workspace_id, n, error) in cases {
        Test::with(())
            .given(c.with_workspace(existing, "main"))
            .when(ProjectCommand::CreateWorkspace {
                actor,
                workspace_id,
                name: ws_name(n),
            })
            .then_expect_error(error);
    }
}

#[test]
fn a_deleted_workspaces_name_can_be_reused() {
    let c = Cast::new();
    let old = WorkspaceId::generate();
    let new = WorkspaceId::generate();
    Test::with(())
        .given(c.with_workspace(old, "main"))
        .and(vec![ProjectEvent::WorkspaceDeleted {
            workspace_id: old,
            by: c.owner,
        }])
        .when(ProjectCommand::CreateWorkspace {
            actor: c.owner,
            workspace_id: new,
            name: ws_name("main"),
        })
        .then_expect_events(vec![ProjectEvent::WorkspaceCreated {
            workspace_id: new,
            name: "main".into(),
            by: c.owner,
        }]);
}

#[test]
fn writers_rename_workspaces() {
    let c = Cast::new();
    let ws = WorkspaceId::generate();
    Test::with(())
        .given(c.with_workspace(ws, "main"))
        .when(ProjectCommand::RenameWorkspace {
            actor: c.collaborator,
            workspace_id: ws,
            name: ws_name("trunk"),
        })
        .then_expect_events(vec![ProjectEvent::WorkspaceRenamed {
            workspace_id: ws,
            name: "trunk".into(),
            by: c.collaborator,
        }]);
}

#[test]
fn renames_are_refused_for_viewers_unknown_and_taken_names() {
    let c = Cast::new();
    let ws = WorkspaceId::generate();
    let other = WorkspaceId::generate();
    let mut history = c.with_workspace(ws, "main");
    history.push(ProjectEvent::WorkspaceCreated {
        workspace_id: other,
        name: "docs".into(),
        by: c.owner,
    });
    let cases = [
        (c.viewer, ws, "x", ProjectError::Forbidden),
        (
            c.owner,
            WorkspaceId::generate(),
            "x",
            ProjectError::WorkspaceNotFound,
        ),
        (c.owner, ws, "docs", ProjectError::WorkspaceNameTaken),
    ];
    for (actor, workspace_id, n, error) in cases {
        Test::with(())
            .given(history.clone())
            .when(ProjectCommand::RenameWorkspace {
                actor,
                workspace_id,
                name: ws_name(n),
            })
            .then_expect_error(error);
    }
}

#[test]
fn writers_delete_workspaces() {
    let c = Cast::new();
    let ws = WorkspaceId::generate();
    Test::with(())
        .given(c.with_workspace(ws, "main"))
        .when(ProjectCommand::DeleteWorkspace {
            actor: c.owner,
            workspace_id: ws,
        })
        .then_expect_events(vec![ProjectEvent::WorkspaceDeleted {
            workspace_id: ws,
            by: c.owner,
        }]);
}

#[test]
fn deletes_are_refused_for_viewers_and_deleted_workspaces() {
    let c = Cast::new();
    let ws = WorkspaceId::generate();
    Test::with(())
        .given(c.with_workspace(ws, "main"))
        .when(ProjectCommand::DeleteWorkspace {
            actor: c.viewer,
            workspace_id: ws,
        })
        .then_expect_error(ProjectError::Forbidden);
    Test::with(())
        .given(c.with_workspace(ws, "main"))
        .and(vec![ProjectEvent::WorkspaceDeleted {
            workspace_id: ws,
            by: c.owner,
        }])
        .when(ProjectCommand::DeleteWorkspace {
            actor: c.owner,
            workspace_id: ws,
        })
        .then_expect_error(ProjectError::WorkspaceNotFound);
}

#[test]
fn access_reports_role_and_archived_flag() {
    let c = Cast::new();
    let mut p = Project::default();
    for e in c.archived() {
        p.apply(e);
    }
    let access = p.access_for(c.viewer).unwrap();
    assert_eq!(access.role, Some(Role::Viewer));
    assert!(access.archived);
    assert_eq!(p.access_for(c.stranger).unwrap().role, None);
    assert!(Project::default().access_for(c.owner).is_none());
}
