//! `POST /projects/{id}/workspaces`, `PATCH` and `DELETE /workspaces/{id}`.
//! Workspaces live in their project's aggregate; `/workspaces/{id}` finds
//! that project through the write side's workspace pointer.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use tandem_commands::CommandError;
use tandem_domain::project::{Project, ProjectCommand, ProjectError};
use tandem_domain::values::WorkspaceName;
use tandem_domain::{ProjectId, WorkspaceId};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::caller::Caller;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath};
use crate::reply::{IfMatch, Reply};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_workspace))
        .routes(routes!(rename_workspace, delete_workspace))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceRequest {
    name: String,
}

#[derive(Serialize, ToSchema)]
pub struct WorkspaceChanged {
    id: Uuid,
    project_id: Uuid,
    /// `null` once deleted.
    name: Option<String>,
    /// The project's version (workspaces are part of the project).
    version: u64,
    position: Option<i64>,
}

fn parse_name(raw: &str) -> Result<WorkspaceName, ApiError> {
    WorkspaceName::parse(raw).map_err(|e| ApiError::field("name", e.0))
}

#[utoipa::path(post, path = "/projects/{id}/workspaces", tag = "workspaces",
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header)),
    request_body = WorkspaceRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, body = WorkspaceChanged),
        (status = 403, body = Problem),
        (status = 404, body = Problem),
        (status = 409, description = "`workspace_name_taken`, `project_archived`", body = Problem),
        (status = 422, body = Problem),
    ))]
async fn create_workspace(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(project): ApiPath<Uuid>,
    IfMatch(expected): IfMatch,
    ApiJson(body): ApiJson<WorkspaceRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let name = parse_name(&body.name)?;
    let workspace = WorkspaceId::generate();
    state
        .write
        .directory
        .point_workspace(workspace, ProjectId(project))
        .await?;
    let command = ProjectCommand::CreateWorkspace {
        actor: caller.user,
        workspace_id: workspace,
        name: name.clone(),
    };
    let reply = workspace_command(
        &state,
        &caller,
        project,
        workspace,
        Some(name),
        command,
        expected,
    )
    .await?;
    Ok(reply
        .with_status(StatusCode::CREATED)
        .located(format!("/api/v1/workspaces/{workspace}")))
}

#[utoipa::path(patch, path = "/workspaces/{id}", tag = "workspaces",
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header, description = "Expected project version")),
    request_body = WorkspaceRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, body = WorkspaceChanged),
        (status = 403, body = Problem),
        (status = 404, body = Problem),
        (status = 409, body = Problem),
        (status = 422, body = Problem),
    ))]
async fn rename_workspace(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(workspace): ApiPath<Uuid>,
    IfMatch(expected): IfMatch,
    ApiJson(body): ApiJson<WorkspaceRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let name = parse_name(&body.name)?;
    let workspace = WorkspaceId(workspace);
    let project = owning_project(&state, workspace).await?;
    let command = ProjectCommand::RenameWorkspace {
        actor: caller.user,
        workspace_id: workspace,
        name: name.clone(),
    };
    workspace_command(
        &state,
        &caller,
        project,
        workspace,
        Some(name),
        command,
        expected,
    )
    .await
}

#[utoipa::path(delete, path = "/workspaces/{id}", tag = "workspaces",
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header)),
    security(("bearer" = [])),
    responses(
        (status = 200, body = WorkspaceChanged),
        (status = 403, body = Problem),
        (status = 404, body = Problem),
        (status = 409, body = Problem),
    ))]
async fn delete_workspace(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(workspace): ApiPath<Uuid>,
    IfMatch(expected): IfMatch,
) -> Result<impl IntoResponse, ApiError> {
    let workspace = WorkspaceId(workspace);
    let project = owning_project(&state, workspace).await?;
    let command = ProjectCommand::DeleteWorkspace {
        actor: caller.user,
        workspace_id: workspace,
    };
    workspace_command(&state, &caller, project, workspace, None, command, expected).await
}

async fn owning_project(state: &AppState, workspace: WorkspaceId) -> Result<Uuid, ApiError> {
    state
        .write
        .directory
        .project_of_workspace(workspace)
        .await?
        .map(|p| p.0)
        .ok_or_else(|| ApiError::not_found("workspace"))
}

async fn workspace_command(
    state: &AppState,
    caller: &Caller,
    project: Uuid,
    workspace: WorkspaceId,
    name: Option<WorkspaceName>,
    command: ProjectCommand,
    expected: Option<u64>,
) -> Result<Reply<WorkspaceChanged>, ApiError> {
    // Only creation is addressed by project; the rest name the workspace.
    let by_workspace = !matches!(command, ProjectCommand::CreateWorkspace { .. });
    let committed = state
        .write
        .bus
        .execute::<Project>(&project.to_string(), command, &caller.ctx(), expected)
        .await
        .map_err(|e| match e {
            // Addressed by workspace, an invisible project is an invisible
            // workspace: the same answer as for one that never existed.
            CommandError::Rejected(ProjectError::NotFound) if by_workspace => {
                ApiError::not_found("workspace")
            }
            other => other.into(),
        })?;
    let body = WorkspaceChanged {
        id: workspace.0,
        project_id: project,
        name: name.map(WorkspaceName::into_string),
        version: committed.version,
        position: committed.position,
    };
    Ok(Reply::new(StatusCode::OK, body, &committed))
}
