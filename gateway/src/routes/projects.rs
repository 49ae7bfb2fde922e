//! `POST /projects`, `PATCH /projects/{id}`, `DELETE /projects/{id}`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use tandem_domain::project::{Project, ProjectCommand};
use tandem_domain::values::{Description, ProjectName};
use tandem_domain::ProjectId;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::Changed;
use crate::auth::caller::Caller;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, Fields};
use crate::reply::{IfMatch, Reply};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_project))
        .routes(routes!(update_project, archive_project))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProjectRequest {
    name: String,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ProjectCreated {
    id: Uuid,
    name: String,
    description: String,
    /// The caller's role: the creator owns the project.
    #[schema(example = "owner")]
    role: &'static str,
    archived: bool,
    version: u64,
    position: Option<i64>,
}

#[utoipa::path(post, path = "/projects", tag = "projects",
    request_body = CreateProjectRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, body = ProjectCreated),
        (status = 401, body = Problem),
        (status = 422, body = Problem),
    ))]
async fn create_project(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateProjectRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let mut f = Fields::default();
    let name = f.check("name", ProjectName::parse(&body.name));
    let description = f.check(
        "description",
        Description::parse(body.description.as_deref().unwrap_or("")),
    );
    let (Some(name), Some(description)) = (name, description) else {
        return Err(f.into_error());
    };
    let id = ProjectId::generate();
    let command = ProjectCommand::Create {
        project_id: id,
        owner: caller.user,
        name: name.clone(),
        description: description.clone(),
    };
    let committed = state
        .write
        .bus
        .execute_new::<Project>(&id.to_string(), command, &caller.ctx())
        .await?;
    let body = ProjectCreated {
        id: id.0,
        name: name.into_string(),
        description: description.into_string(),
        role: "owner",
        archived: false,
        version: committed.version,
        position: committed.position,
    };
    Ok(Reply::new(StatusCode::CREATED, body, &committed).located(format!("/api/v1/projects/{id}")))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProjectRequest {
    name: Option<String>,
    description: Option<String>,
}

#[utoipa::path(patch, path = "/projects/{id}", tag = "projects",
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header, description = "Expected project version")),
    request_body = UpdateProjectRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, body = Changed),
        (status = 403, description = "viewers", body = Problem),
        (status = 404, description = "unknown project or not a member", body = Problem),
        (status = 409, description = "`project_archived`", body = Problem),
        (status = 412, body = Problem),
        (status = 422, body = Problem),
    ))]
async fn update_project(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    IfMatch(expected): IfMatch,
    ApiJson(body): ApiJson<UpdateProjectRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let mut f = Fields::default();
    let name = body
        .name
        .as_deref()
        .and_then(|n| f.check("name", ProjectName::parse(n)));
    let description = body
        .description
        .as_deref()
        .and_then(|d| f.check("description", Description::parse(d)));
    if body.name.is_none() && body.description.is_none() {
        f.fail("body", "send a name, a description or both");
    }
    if !f.is_empty() {
        return Err(f.into_error());
    }
    let command = ProjectCommand::UpdateDetails {
        actor: caller.user,
        name,
        description,
    };
    project_command(&state, &caller, id, command, expected).await
}

#[utoipa::path(delete, path = "/projects/{id}", tag = "projects",
    description = "Archives the project: it becomes read-only and leaves the lists.",
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header)),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Changed),
        (status = 403, description = "not the owner", body = Problem),
        (status = 404, body = Problem),
        (status = 409, description = "`project_archived`: already archived", body = Problem),
    ))]
async fn archive_project(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    IfMatch(expected): IfMatch,
) -> Result<impl IntoResponse, ApiError> {
    let command = ProjectCommand::Archive { actor: caller.user };
    project_command(&state, &caller, id, command, expected).await
}

/// Runs a command on project `id` and answers with its new version.
pub async fn project_command(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    command: ProjectCommand,
    expected: Option<u64>,
) -> Result<Reply<Changed>, ApiError> {
    let committed = state
        .write
        .bus
        .execute::<Project>(&id.to_string(), command, &caller.ctx(), expected)
        .await?;
    let body = Changed {
        id,
        version: committed.version,
        position: committed.position,
    };
    Ok(Reply::new(StatusCode::OK, body, &committed))
}
