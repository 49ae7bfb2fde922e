//! `GET /projects/{id}/workspaces`, `GET /workspaces/{id}`.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tandem_projections::queries::{self, WorkspaceRow};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::Paged;
use crate::auth::caller::Caller;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiPath, ApiQuery};
use crate::read::{CaughtUp, ListParams};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_workspaces))
        .routes(routes!(get_workspace))
}

#[derive(Serialize, ToSchema)]
pub struct WorkspaceView {
    id: Uuid,
    project_id: Uuid,
    name: String,
    created_by: Uuid,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<WorkspaceRow> for WorkspaceView {
    fn from(w: WorkspaceRow) -> Self {
        Self {
            id: w.workspace_id,
            project_id: w.project_id,
            name: w.name,
            created_by: w.created_by,
            created_at: w.created_at,
            updated_at: w.updated_at,
        }
    }
}

#[utoipa::path(get, path = "/projects/{id}/workspaces", tag = "workspaces",
    params(("id" = Uuid, Path), ListParams),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Paged<WorkspaceView>),
        (status = 401, body = Problem),
        (status = 404, description = "unknown project or not a member", body = Problem),
        (status = 422, body = Problem),
        (status = 503, description = "`not_caught_up`", body = Problem),
    ))]
async fn list_workspaces(
    State(state): State<AppState>,
    caller: Caller,
    _: CaughtUp,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Paged<WorkspaceView>>, ApiError> {
    let page = queries::workspaces(
        &state.read.pool,
        caller.user.as_uuid(),
        id,
        params.after_id()?,
        params.limit()?,
    )
    .await?
    .ok_or_else(|| ApiError::not_found("project"))?;
    Ok(Json(Paged::from_page(page, WorkspaceView::from)))
}

#[utoipa::path(get, path = "/workspaces/{id}", tag = "workspaces",
    params(("id" = Uuid, Path), ("min_position" = Option<i64>, Query, description = "Wait until the read side has applied this log position")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = WorkspaceView),
        (status = 401, body = Problem),
        (status = 404, description = "unknown workspace or not a member", body = Problem),
        (status = 503, description = "`not_caught_up`", body = Problem),
    ))]
async fn get_workspace(
    State(state): State<AppState>,
    caller: Caller,
    _: CaughtUp,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<WorkspaceView>, ApiError> {
    let workspace = queries::workspace(&state.read.pool, caller.user.as_uuid(), id)
        .await?
        .ok_or_else(|| ApiError::not_found("workspace"))?;
    Ok(Json(workspace.into()))
}
