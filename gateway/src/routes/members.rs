//! `POST /projects/{id}/members`, `PATCH` and `DELETE
//! /projects/{id}/members/{user_id}`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use tandem_domain::project::{Project, ProjectCommand, ProjectError};
use tandem_domain::services::ProjectDirectory;
use tandem_domain::values::Email;
use tandem_domain::{ProjectId, Role, UserId};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::caller::Caller;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, Fields};
use crate::rejections::Rejection;
use crate::reply::{IfMatch, Reply};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(invite))
        .routes(routes!(change_role, remove_member))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteRequest {
    /// The invitee's email, or
    email: Option<String>,
    /// their user id (exactly one of the two).
    user_id: Option<Uuid>,
    #[schema(example = "collaborator")]
    role: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeRoleRequest {
    #[schema(example = "viewer")]
    role: String,
}

#[derive(Serialize, ToSchema)]
pub struct Membership {
    project_id: Uuid,
    user_id: Uuid,
    /// The member's role; `null` once removed.
    #[schema(value_type = Option<String>, example = "collaborator")]
    role: Option<Role>,
    version: u64,
    position: Option<i64>,
}

fn grantable_role(f: &mut Fields, raw: &str) -> Option<Role> {
    match raw {
        "collaborator" => Some(Role::Collaborator),
        "viewer" => Some(Role::Viewer),
        _ => {
            f.fail("role", "must be \"collaborator\" or \"viewer\"");
            None
        }
    }
}

fn user_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "user_not_found",
        "no registered user matches",
    )
}

#[utoipa::path(post, path = "/projects/{id}/members", tag = "members",
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header)),
    request_body = InviteRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, body = Membership),
        (status = 403, description = "not the owner", body = Problem),
        (status = 404, description = "`not_found` (project) or `user_not_found`", body = Problem),
        (status = 409, description = "`already_member`, `project_archived`", body = Problem),
        (status = 422, body = Problem),
    ))]
async fn invite(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(project): ApiPath<Uuid>,
    IfMatch(expected): IfMatch,
    ApiJson(body): ApiJson<InviteRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let mut f = Fields::default();
    let role = grantable_role(&mut f, &body.role);
    let email = match (&body.email, body.user_id) {
        (Some(email), None) => f.check("email", Email::parse(email)),
        (None, Some(_)) => None,
        _ => {
            f.fail("email", "send exactly one of email and user_id");
            None
        }
    };
    let Some(role) = role.filter(|_| f.is_empty()) else {
        return Err(f.into_error());
    };
    // Only someone who may invite learns whether an account exists.
    ensure_may_manage(&state, &caller, project).await?;
    let accounts = &state.write.accounts;
    let user = match (email, body.user_id) {
        (Some(email), _) => accounts.find_by_email(&email).await?,
        (None, Some(id)) => Some(UserId(id)),
        (None, None) => None,
    };
    let user = match user {
        Some(u) if accounts.exists(u).await? => u,
        Some(_) | None => return Err(user_not_found()),
    };
    let command = ProjectCommand::InviteCollaborator {
        actor: caller.user,
        user,
        role,
    };
    let reply = member_command(
        &state,
        &caller,
        project,
        user,
        Some(role),
        command,
        expected,
    )
    .await?;
    Ok(reply.with_status(StatusCode::CREATED))
}

/// The project's own verdict on whether the caller may manage members,
/// asked before anything reveals whether an invitee exists.
async fn ensure_may_manage(
    state: &AppState,
    caller: &Caller,
    project: Uuid,
) -> Result<(), ApiError> {
    let access = state
        .write
        .directory
        .project_access(ProjectId(project), caller.user)
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    let role = access.as_ref().and_then(|a| a.role);
    match role {
        None => Err(ProjectError::NotFound.into_api()),
        Some(r) if !r.can_manage() => Err(ProjectError::Forbidden.into_api()),
        Some(_) if access.is_some_and(|a| a.archived) => Err(ProjectError::Archived.into_api()),
        Some(_) => Ok(()),
    }
}

#[utoipa::path(patch, path = "/projects/{id}/members/{user_id}", tag = "members",
    params(("id" = Uuid, Path), ("user_id" = Uuid, Path), ("If-Match" = Option<String>, Header)),
    request_body = ChangeRoleRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, body = Membership),
        (status = 403, body = Problem),
        (status = 404, description = "`not_found` or `member_not_found`", body = Problem),
        (status = 409, description = "`owner_is_permanent`, `project_archived`", body = Problem),
        (status = 422, body = Problem),
    ))]
async fn change_role(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((project, user)): ApiPath<(Uuid, Uuid)>,
    IfMatch(expected): IfMatch,
    ApiJson(body): ApiJson<ChangeRoleRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let mut f = Fields::default();
    let Some(role) = grantable_role(&mut f, &body.role) else {
        return Err(f.into_error());
    };
    let command = ProjectCommand::ChangeMemberRole {
        actor: caller.user,
        user: UserId(user),
        role,
    };
    member_command(
        &state,
        &caller,
        project,
        UserId(user),
        Some(role),
        command,
        expected,
    )
    .await
}

#[utoipa::path(delete, path = "/projects/{id}/members/{user_id}", tag = "members",
    description = "By the owner, or by the member themself to leave.",
    params(("id" = Uuid, Path), ("user_id" = Uuid, Path), ("If-Match" = Option<String>, Header)),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Membership),
        (status = 403, body = Problem),
        (status = 404, body = Problem),
        (status = 409, description = "`owner_is_permanent`, `project_archived`", body = Problem),
    ))]
async fn remove_member(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((project, user)): ApiPath<(Uuid, Uuid)>,
    IfMatch(expected): IfMatch,
) -> Result<impl IntoResponse, ApiError> {
    let command = ProjectCommand::RemoveMember {
        actor: caller.user,
        user: UserId(user),
    };
    member_command(
        &state,
        &caller,
        project,
        UserId(user),
        None,
        command,
        expected,
    )
    .await
}

async fn member_command(
    state: &AppState,
    caller: &Caller,
    project: Uuid,
    user: UserId,
    role: Option<Role>,
    command: ProjectCommand,
    expected: Option<u64>,
) -> Result<Reply<Membership>, ApiError> {
    let committed = state
        .write
        .bus
        .execute::<Project>(&project.to_string(), command, &caller.ctx(), expected)
        .await?;
    let body = Membership {
        project_id: project,
        user_id: user.0,
        role,
        version: committed.version,
        position: committed.position,
    };
    Ok(Reply::new(StatusCode::OK, body, &committed))
}
