//! The RBAC matrix: every command endpoint, for the owner, a collaborator,
//! a viewer, a non-member and an anonymous caller.
//!
//! Each row runs on a fresh project (a [`Scene`]: members, a workspace, a
//! file, a queued and a cancelled job), so one row's success never changes
//! the next row's preconditions. An accepted command appends exactly its
//! event; a refused one appends nothing. A non-member's 404 must be the
//! very answer a nonexistent resource gets, and an archived project refuses
//! every write with 409 `project_archived`.

use reqwest::{Method, RequestBuilder};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::errors::problem_defects;
use crate::support::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Owner,
    Collaborator,
    Viewer,
    NonMember,
    Anonymous,
}

const EVERYONE: [Who; 5] = [
    Who::Owner,
    Who::Collaborator,
    Who::Viewer,
    Who::NonMember,
    Who::Anonymous,
];

/// What a row expects.
#[derive(Clone, Copy, Debug)]
enum Want {
    /// Accepted with this status; the log grows by exactly this event.
    Done(u16, &'static str),
    /// Refused with this status and `code`; the log does not grow.
    Refused(u16, &'static str),
}

const FORBIDDEN: Want = Want::Refused(403, "forbidden");
const NOT_FOUND: Want = Want::Refused(404, "not_found");
const UNAUTHENTICATED: Want = Want::Refused(401, "unauthenticated");
const ARCHIVED: Want = Want::Refused(409, "project_archived");

const FILE: &str = "src/main.py";

/// Every command endpoint, with the target each row acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    CreateProject,
    UpdateProject,
    ArchiveProject,
    InviteById,
    InviteByEmail,
    /// The viewer's role → collaborator.
    ChangeViewerRole,
    RemoveViewer,
    RemoveCollaborator,
    RemoveOwner,
    /// The caller removes themself.
    Leave,
    CreateWorkspace,
    RenameWorkspace,
    DeleteWorkspace,
    /// Saves over the scene's existing file.
    SaveFile,
    DeleteFile,
    SubmitJob,
    CancelJob,
    RetryQueuedJob,
    RetryCancelledJob,
}

/// One project with everything the commands act on.
struct Scene {
    project: Uuid,
    workspace: Uuid,
    /// Queued (no executor runs in the test stack).
    job: Uuid,
    cancelled_job: Uuid,
}

impl Scene {
    /// Ids nobody ever created.
    fn ghost() -> Self {
        Self {
            project: Uuid::now_v7(),
            workspace: Uuid::now_v7(),
            job: Uuid::now_v7(),
            cancelled_job: Uuid::now_v7(),
        }
    }
}

struct World {
    app: TestApp,
    owner: User,
    collaborator: User,
    viewer: User,
    non_member: User,
    /// Never a member of anything until a row invites them.
    invitee: User,
}

fn call(app: &TestApp, user: Option<&User>, method: Method, path: &str) -> RequestBuilder {
    match user {
        Some(u) => app.as_user(u, method, path),
        None => app.request(method, path),
    }
}

impl World {
    async fn new() -> Self {
        let app = spawn_app().await;
        let owner = app.user().await;
        let collaborator = app.user().await;
        let viewer = app.user().await;
        let non_member = app.user().await;
        let invitee = app.user().await;
        Self {
            app,
            owner,
            collaborator,
            viewer,
            non_member,
            invitee,
        }
    }

    fn user(&self, who: Who) -> Option<&User> {
        match who {
            Who::Owner => Some(&self.owner),
            Who::Collaborator => Some(&self.collaborator),
            Who::Viewer => Some(&self.viewer),
            Who::NonMember => Some(&self.non_member),
            Who::Anonymous => None,
        }
    }

    async fn submit_job(&self, project: Uuid) -> Uuid {
        let r = self
            .app
            .as_user(
                &self.owner,
                Method::POST,
                &format!("/projects/{project}/jobs"),
            )
            .json(&json!({"language": "python", "source": "print(1)"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        body(r).await["id"].as_str().unwrap().parse().unwrap()
    }

    async fn scene(&self) -> Scene {
        let app = &self.app;
        let project = app.create_project(&self.owner).await;
        app.invite(&self.owner, project, &self.collaborator, "collaborator")
            .await;
        app.invite(&self.owner, project, &self.viewer, "viewer")
            .await;
        let workspace = app.create_workspace(&self.owner, project, "main").await;
        let saved = app
            .as_user(
                &self.owner,
                Method::PUT,
                &format!("/workspaces/{workspace}/files/{FILE}"),
            )
            .json(&json!({"content": "print(1)"}))
            .send()
            .await
            .unwrap();
        assert_eq!(saved.status(), 201);
        let job = self.submit_job(project).await;
        let cancelled_job = self.submit_job(project).await;
        let cancelled = app
            .as_user(
                &self.owner,
                Method::POST,
                &format!("/jobs/{cancelled_job}/cancel"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(cancelled.status(), 202);
        Scene {
            project,
            workspace,
            job,
            cancelled_job,
        }
    }

    async fn archived_scene(&self) -> Scene {
        let scene = self.scene().await;
        let r = self
            .app
            .as_user(
                &self.owner,
                Method::DELETE,
                &format!("/projects/{}", scene.project),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        scene
    }

    /// `op` on `scene`, as `who`.
    fn request(&self, op: Op, scene: &Scene, who: Who) -> RequestBuilder {
        let p = scene.project;
        let w = scene.workspace;
        let members = format!("/projects/{p}/members");
        let (method, path, payload) = match op {
            Op::CreateProject => (
                Method::POST,
                "/projects".to_owned(),
                Some(json!({"name": "Gemini"})),
            ),
            Op::UpdateProject => (
                Method::PATCH,
                format!("/projects/{p}"),
                Some(json!({"name": "Apollo 11", "description": "renamed"})),
            ),
            Op::ArchiveProject => (Method::DELETE, format!("/projects/{p}"), None),
            Op::InviteById => (
                Method::POST,
                members,
                Some(json!({"user_id": self.invitee.id, "role": "viewer"})),
            ),
            Op::InviteByEmail => (
                Method::POST,
                members,
                Some(json!({"email": self.invitee.email, "role": "collaborator"})),
            ),
            Op::ChangeViewerRole => (
                Method::PATCH,
                format!("{members}/{}", self.viewer.id),
                Some(json!({"role": "collaborator"})),
            ),
            Op::RemoveViewer => (
                Method::DELETE,
                format!("{members}/{}", self.viewer.id),
                None,
            ),
            Op::RemoveCollaborator => (
                Method::DELETE,
                format!("{members}/{}", self.collaborator.id),
                None,
            ),
            Op::RemoveOwner => (Method::DELETE, format!("{members}/{}", self.owner.id), None),
            Op::Leave => {
                let me = self.user(who).map_or_else(Uuid::now_v7, |u| u.id);
                (Method::DELETE, format!("{members}/{me}"), None)
            }
            Op::CreateWorkspace => (
                Method::POST,
                format!("/projects/{p}/workspaces"),
                Some(json!({"name": "second"})),
            ),
            Op::RenameWorkspace => (
                Method::PATCH,
                format!("/workspaces/{w}"),
                Some(json!({"name": "renamed"})),
            ),
            Op::DeleteWorkspace => (Method::DELETE, format!("/workspaces/{w}"), None),
            Op::SaveFile => (
                Method::PUT,
                format!("/workspaces/{w}/files/{FILE}"),
                Some(json!({"content": "print(2)"})),
            ),
            Op::DeleteFile => (
                Method::DELETE,
                format!("/workspaces/{w}/files/{FILE}"),
                None,
            ),
            Op::SubmitJob => (
                Method::POST,
                format!("/projects/{p}/jobs"),
                Some(json!({"language": "python", "source": "print(1)"})),
            ),
            Op::CancelJob => (Method::POST, format!("/jobs/{}/cancel", scene.job), None),
            Op::RetryQueuedJob => (Method::POST, format!("/jobs/{}/retry", scene.job), None),
            Op::RetryCancelledJob => (
                Method::POST,
                format!("/jobs/{}/retry", scene.cancelled_job),
                None,
            ),
        };
        let builder = call(&self.app, self.user(who), method, &path);
        match payload {
            Some(p) => builder.json(&p),
            None => builder,
        }
    }
}

async fn last_global_id(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT coalesce(max(global_id), 0) FROM events")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn event_types_after(app: &TestApp, global_id: i64) -> Vec<String> {
    sqlx::query_scalar("SELECT event_type FROM events WHERE global_id > $1 ORDER BY global_id")
        .bind(global_id)
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

/// An answer as received: status, content type, body text.
struct Answer {
    status: u16,
    content_type: String,
    www_authenticate: Option<String>,
    text: String,
}

impl Answer {
    async fn of(request: RequestBuilder) -> Self {
        let r = request.send().await.unwrap();
        let header = |name: &str| {
            r.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let content_type = header("content-type").unwrap_or_default();
        let www_authenticate = header("www-authenticate");
        let status = r.status().as_u16();
        Self {
            status,
            content_type,
            www_authenticate,
            text: r.text().await.unwrap(),
        }
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
}

/// Runs one row and says what, if anything, was wrong with it.
async fn row(world: &World, op: Op, scene: &Scene, who: Who, want: Want) -> Vec<String> {
    let app = &world.app;
    let count_before = app.event_count().await;
    let mark = last_global_id(app).await;
    let answer = Answer::of(world.request(op, scene, who)).await;
    let appended = event_types_after(app, mark).await;
    let count_after = app.event_count().await;
    let name = format!("{op:?} as {who:?}");
    let mut wrong = Vec::new();
    match want {
        Want::Done(status, event) => {
            if answer.status != status {
                wrong.push(format!(
                    "{name}: expected {status}, got {}: {}",
                    answer.status, answer.text
                ));
            }
            if appended != [event] || count_after != count_before + 1 {
                wrong.push(format!(
                    "{name}: expected exactly one {event} in the log, got {appended:?}"
                ));
            }
        }
        Want::Refused(status, code) => {
            let b = answer.json();
            if answer.status != status || b["code"] != code || b["status"] != status {
                wrong.push(format!(
                    "{name}: expected {status} `{code}`, got {}: {}",
                    answer.status, answer.text
                ));
            }
            if answer.content_type != "application/problem+json" {
                wrong.push(format!(
                    "{name}: content type {:?}, not problem+json",
                    answer.content_type
                ));
            }
            wrong.extend(
                problem_defects(&answer.text)
                    .into_iter()
                    .map(|d| format!("{name}: {d}")),
            );
            if status == 401 && answer.www_authenticate.as_deref() != Some("Bearer") {
                wrong.push(format!(
                    "{name}: a 401 without `WWW-Authenticate: Bearer` ({:?})",
                    answer.www_authenticate
                ));
            }
            if !appended.is_empty() || count_after != count_before {
                wrong.push(format!(
                    "{name}: refused, yet the log grew by {appended:?} ({count_before} → {count_after})"
                ));
            }
        }
    }
    wrong
}

/// Runs `op` for every caller, each on a fresh scene; `wants` follows
/// [`EVERYONE`]'s order.
async fn matrix(op: Op, wants: [Want; 5]) {
    let rows: Vec<(Who, Want)> = EVERYONE.into_iter().zip(wants).collect();
    some_rows(op, &rows).await;
}

/// Runs `op` for the given callers only, each on a fresh scene.
async fn some_rows(op: Op, rows: &[(Who, Want)]) {
    let world = World::new().await;
    let mut wrong = Vec::new();
    for &(who, want) in rows {
        let scene = world.scene().await;
        wrong.extend(row(&world, op, &scene, who, want).await);
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

/// A non-member's answer for each op on a real scene is the very answer
/// the same request gets on ids that never existed: 404, and no hint.
async fn invisible(ops: &[Op]) {
    let world = World::new().await;
    let mut wrong = Vec::new();
    for &op in ops {
        let scene = world.scene().await;
        let count_before = world.app.event_count().await;
        let real = Answer::of(world.request(op, &scene, Who::NonMember)).await;
        let ghost = Answer::of(world.request(op, &Scene::ghost(), Who::NonMember)).await;
        if world.app.event_count().await != count_before {
            wrong.push(format!("{op:?}: the log grew"));
        }
        if real.status != 404 || real.json()["code"] != "not_found" {
            wrong.push(format!(
                "{op:?}: expected 404 `not_found`, got {}: {}",
                real.status, real.text
            ));
        }
        if ghost.status != 404 {
            wrong.push(format!(
                "{op:?} on missing ids: expected 404, got {}: {}",
                ghost.status, ghost.text
            ));
        }
        if real.json() != ghost.json() || real.content_type != ghost.content_type {
            wrong.push(format!(
                "{op:?}: a non-member can tell an existing resource from a missing one: {} vs {}",
                real.text, ghost.text
            ));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

/// Every (op, caller) pair runs on its own freshly archived scene.
async fn archived(rows: &[(Op, Who)]) {
    let world = World::new().await;
    let mut wrong = Vec::new();
    for &(op, who) in rows {
        let scene = world.archived_scene().await;
        wrong.extend(row(&world, op, &scene, who, ARCHIVED).await);
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

// ---- the matrix ----------------------------------------------------------
// Order of `wants`: owner, collaborator, viewer, non-member, anonymous.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_signed_in_user_may_create_a_project_but_not_an_anonymous_one() {
    let created = Want::Done(201, "ProjectCreated");
    matrix(
        Op::CreateProject,
        [created, created, created, created, UNAUTHENTICATED],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_and_collaborators_update_project_details_viewers_may_not() {
    let done = Want::Done(200, "ProjectDetailsUpdated");
    matrix(
        Op::UpdateProject,
        [done, done, FORBIDDEN, NOT_FOUND, UNAUTHENTICATED],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_archives_a_project() {
    matrix(
        Op::ArchiveProject,
        [
            Want::Done(200, "ProjectArchived"),
            FORBIDDEN,
            FORBIDDEN,
            NOT_FOUND,
            UNAUTHENTICATED,
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_invites_by_user_id() {
    matrix(
        Op::InviteById,
        [
            Want::Done(201, "CollaboratorInvited"),
            FORBIDDEN,
            FORBIDDEN,
            NOT_FOUND,
            UNAUTHENTICATED,
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_invites_by_email() {
    matrix(
        Op::InviteByEmail,
        [
            Want::Done(201, "CollaboratorInvited"),
            FORBIDDEN,
            FORBIDDEN,
            NOT_FOUND,
            UNAUTHENTICATED,
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_changes_roles_and_a_viewer_cannot_promote_themself() {
    matrix(
        Op::ChangeViewerRole,
        [
            Want::Done(200, "MemberRoleChanged"),
            FORBIDDEN,
            FORBIDDEN,
            NOT_FOUND,
            UNAUTHENTICATED,
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_removes_a_viewer_a_collaborator_may_not_and_the_viewer_may_leave() {
    let removed = Want::Done(200, "MemberRemoved");
    matrix(
        Op::RemoveViewer,
        [removed, FORBIDDEN, removed, NOT_FOUND, UNAUTHENTICATED],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_removes_a_collaborator_a_viewer_may_not_and_the_collaborator_may_leave() {
    let removed = Want::Done(200, "MemberRemoved");
    matrix(
        Op::RemoveCollaborator,
        [removed, removed, FORBIDDEN, NOT_FOUND, UNAUTHENTICATED],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_removes_the_owner() {
    matrix(
        Op::RemoveOwner,
        [
            Want::Refused(409, "owner_is_permanent"),
            FORBIDDEN,
            FORBIDDEN,
            NOT_FOUND,
            UNAUTHENTICATED,
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_leave_on_their_own_but_the_owner_cannot() {
    let left = Want::Done(200, "MemberRemoved");
    matrix(
        Op::Leave,
        [
            Want::Refused(409, "owner_is_permanent"),
            left,
            left,
            NOT_FOUND,
            UNAUTHENTICATED,
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_and_collaborators_create_workspaces_viewers_may_not() {
    let done = Want::Done(201, "WorkspaceCreated");
    matrix(
        Op::CreateWorkspace,
        [done, done, FORBIDDEN, NOT_FOUND, UNAUTHENTICATED],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_and_collaborators_rename_workspaces_viewers_may_not() {
    let done = Want::Done(200, "WorkspaceRenamed");
    matrix(
        Op::RenameWorkspace,
        [done, done, FORBIDDEN, NOT_FOUND, UNAUTHENTICATED],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_and_collaborators_delete_workspaces_viewers_may_not() {
    let done = Want::Done(200, "WorkspaceDeleted");
    matrix(
        Op::DeleteWorkspace,
        [done, done, FORBIDDEN, NOT_FOUND, UNAUTHENTICATED],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_and_collaborators_save_files_viewers_may_not() {
    let done = Want::Done(200, "FileSaved");
    matrix(
        Op::SaveFile,
        [done, done, FORBIDDEN, NOT_FOUND, UNAUTHENTICATED],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_and_collaborators_delete_files_viewers_may_not() {
    let done = Want::Done(200, "FileDeleted");
    matrix(
        Op::DeleteFile,
        [done, done, FORBIDDEN, NOT_FOUND, UNAUTHENTICATED],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_and_collaborators_submit_jobs_viewers_may_not() {
    let done = Want::Done(202, "JobSubmitted");
    matrix(
        Op::SubmitJob,
        [done, done, FORBIDDEN, NOT_FOUND, UNAUTHENTICATED],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_and_collaborators_cancel_jobs_viewers_may_not() {
    let done = Want::Done(202, "JobCancelled");
    matrix(
        Op::CancelJob,
        [done, done, FORBIDDEN, NOT_FOUND, UNAUTHENTICATED],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrying_a_queued_job_is_a_409_invalid_job_state_for_writers() {
    let state = Want::Refused(409, "invalid_job_state");
    some_rows(
        Op::RetryQueuedJob,
        &[(Who::Owner, state), (Who::Collaborator, state)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrying_a_queued_job_is_forbidden_to_viewers_and_invisible_to_non_members() {
    some_rows(
        Op::RetryQueuedJob,
        &[
            (Who::Viewer, FORBIDDEN),
            (Who::NonMember, NOT_FOUND),
            (Who::Anonymous, UNAUTHENTICATED),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_and_collaborators_retry_cancelled_jobs_viewers_may_not() {
    let done = Want::Done(202, "JobRetryRequested");
    matrix(
        Op::RetryCancelledJob,
        [done, done, FORBIDDEN, NOT_FOUND, UNAUTHENTICATED],
    )
    .await;
}

// ---- a non-member learns nothing ------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_members_project_command_gets_the_answer_of_a_missing_project() {
    invisible(&[
        Op::UpdateProject,
        Op::ArchiveProject,
        Op::CreateWorkspace,
        Op::SubmitJob,
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_members_member_command_gets_the_answer_of_a_missing_project() {
    invisible(&[
        Op::InviteById,
        Op::InviteByEmail,
        Op::ChangeViewerRole,
        Op::RemoveViewer,
        Op::RemoveOwner,
        Op::Leave,
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_members_workspace_command_gets_the_answer_of_a_missing_workspace() {
    invisible(&[Op::RenameWorkspace, Op::DeleteWorkspace]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_members_file_command_gets_the_answer_of_a_missing_workspace() {
    invisible(&[Op::SaveFile, Op::DeleteFile]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_members_job_command_gets_the_answer_of_a_missing_job() {
    invisible(&[Op::CancelJob, Op::RetryQueuedJob, Op::RetryCancelledJob]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_member_with_if_match_learns_nothing_about_versions() {
    let world = World::new().await;
    let scene = world.scene().await;
    let ghost = Scene::ghost();
    let count_before = world.app.event_count().await;
    let mut wrong = Vec::new();
    for op in [Op::UpdateProject, Op::SaveFile, Op::CancelJob] {
        // A version that is stale for the real resources (all at 1 to 4).
        let real = Answer::of(
            world
                .request(op, &scene, Who::NonMember)
                .header("if-match", "\"99\""),
        )
        .await;
        let missing = Answer::of(
            world
                .request(op, &ghost, Who::NonMember)
                .header("if-match", "\"99\""),
        )
        .await;
        if real.status != 404 || real.json()["code"] != "not_found" {
            wrong.push(format!(
                "{op:?}: expected 404 `not_found`, got {}: {}",
                real.status, real.text
            ));
        }
        if real.json() != missing.json() {
            wrong.push(format!(
                "{op:?}: answer differs from a missing resource's: {} vs {}",
                real.text, missing.text
            ));
        }
    }
    assert_eq!(world.app.event_count().await, count_before);
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_signed_out_gets_past_authentication_even_for_missing_resources() {
    let world = World::new().await;
    let ghost = Scene::ghost();
    let mut wrong = Vec::new();
    for op in [
        Op::UpdateProject,
        Op::InviteById,
        Op::RenameWorkspace,
        Op::SaveFile,
        Op::CancelJob,
    ] {
        wrong.extend(row(&world, op, &ghost, Who::Anonymous, UNAUTHENTICATED).await);
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

// ---- an archived project is read-only -------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archived_project_refuses_project_and_member_commands() {
    archived(&[
        (Op::UpdateProject, Who::Owner),
        (Op::UpdateProject, Who::Collaborator),
        (Op::ArchiveProject, Who::Owner),
        (Op::InviteById, Who::Owner),
        (Op::InviteByEmail, Who::Owner),
        (Op::ChangeViewerRole, Who::Owner),
        (Op::RemoveViewer, Who::Owner),
        (Op::RemoveCollaborator, Who::Owner),
        (Op::Leave, Who::Collaborator),
        (Op::Leave, Who::Viewer),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archived_project_refuses_workspace_and_file_commands() {
    archived(&[
        (Op::CreateWorkspace, Who::Owner),
        (Op::CreateWorkspace, Who::Collaborator),
        (Op::RenameWorkspace, Who::Owner),
        (Op::RenameWorkspace, Who::Collaborator),
        (Op::DeleteWorkspace, Who::Owner),
        (Op::DeleteWorkspace, Who::Collaborator),
        (Op::SaveFile, Who::Owner),
        (Op::SaveFile, Who::Collaborator),
        (Op::DeleteFile, Who::Owner),
        (Op::DeleteFile, Who::Collaborator),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archived_project_refuses_job_commands() {
    archived(&[
        (Op::SubmitJob, Who::Owner),
        (Op::SubmitJob, Who::Collaborator),
        (Op::CancelJob, Who::Owner),
        (Op::CancelJob, Who::Collaborator),
        (Op::RetryQueuedJob, Who::Owner),
        (Op::RetryCancelledJob, Who::Owner),
        (Op::RetryCancelledJob, Who::Collaborator),
    ])
    .await;
}
