//! `GET /workspaces/{id}/files`, `GET /workspaces/{id}/files/{*path}`
//! (`?version=N` for an old version).

use axum::extract::State;
use axum::http::header::ETAG;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tandem_projections::queries::{self, FileRow};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::Paged;
use crate::auth::caller::Caller;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiPath, ApiQuery};
use crate::read::{CaughtUp, ListParams};
use crate::reply::etag;
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_files))
}

#[derive(Serialize, ToSchema)]
pub struct FileSummary {
    path: String,
    version: i64,
    size_bytes: i64,
    updated_by: Uuid,
    updated_at: DateTime<Utc>,
}

impl From<FileRow> for FileSummary {
    fn from(f: FileRow) -> Self {
        Self {
            path: f.path,
            version: f.version,
            size_bytes: f.size_bytes,
            updated_by: f.updated_by,
            updated_at: f.updated_at,
        }
    }
}

#[utoipa::path(get, path = "/workspaces/{id}/files", tag = "files",
    params(("id" = Uuid, Path), ListParams),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Paged<FileSummary>, description = "files by path"),
        (status = 401, body = Problem),
        (status = 404, description = "unknown workspace or not a member", body = Problem),
        (status = 422, body = Problem),
        (status = 503, description = "`not_caught_up`", body = Problem),
    ))]
async fn list_files(
    State(state): State<AppState>,
    caller: Caller,
    _: CaughtUp,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Paged<FileSummary>>, ApiError> {
    let page = queries::files(
        &state.read.pool,
        caller.user.as_uuid(),
        id,
        params.after_text()?,
        params.limit()?,
    )
    .await?
    .ok_or_else(|| ApiError::not_found("workspace"))?;
    Ok(Json(Paged::from_page(page, FileSummary::from)))
}

#[derive(Serialize, ToSchema)]
pub struct FileContent {
    workspace_id: Uuid,
    path: String,
    /// The version shown.
    version: i64,
    /// The file's latest version (what `base_version` must name).
    current_version: i64,
    size_bytes: i64,
    content: String,
    saved_by: Uuid,
    saved_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FileParams {
    /// An earlier version of the file.
    version: Option<i64>,
    /// Wait until the read side has applied this log position.
    min_position: Option<i64>,
}

/// Registered by hand (`{*path}`): see `app::api`.
#[utoipa::path(get, path = "/workspaces/{id}/files/{path}", tag = "files",
    params(("id" = Uuid, Path), ("path" = String, Path, description = "may contain `/`"), FileParams),
    security(("bearer" = [])),
    responses(
        (status = 200, body = FileContent, headers(("ETag" = String, description = "the current version, when showing it"))),
        (status = 401, body = Problem),
        (status = 404, description = "unknown workspace, file or version, or not a member", body = Problem),
        (status = 422, body = Problem),
        (status = 503, description = "`not_caught_up`", body = Problem),
    ))]
pub async fn get_file(
    State(state): State<AppState>,
    caller: Caller,
    _: CaughtUp,
    ApiPath((id, path)): ApiPath<(Uuid, String)>,
    ApiQuery(params): ApiQuery<FileParams>,
) -> Result<Response, ApiError> {
    let _ = params.min_position;
    if params.version.is_some_and(|v| v < 1) {
        return Err(ApiError::field("version", "must be 1 or more"));
    }
    let file = queries::file(
        &state.read.pool,
        caller.user.as_uuid(),
        id,
        &path,
        params.version,
    )
    .await?
    .ok_or_else(|| ApiError::not_found("file"))?;
    let current = file.version == file.current_version;
    let body = Json(FileContent {
        workspace_id: file.workspace_id,
        path: file.path,
        version: file.version,
        current_version: file.current_version,
        size_bytes: file.size_bytes,
        content: file.content,
        saved_by: file.saved_by,
        saved_at: file.saved_at,
    });
    let mut response = body.into_response();
    if current {
        response
            .headers_mut()
            .insert(ETAG, etag(file.current_version as u64));
    }
    Ok(response)
}
