//! `PUT` and `DELETE /workspaces/{id}/files/{*path}`. A file's version is
//! its aggregate version: `base_version` in the body (the version the
//! writer edited) conflicts with 409 `version_conflict`; `If-Match` is the
//! HTTP precondition and fails with 412.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use tandem_domain::file::{File, FileCommand};
use tandem_domain::values::{FileContent, FilePath};
use tandem_domain::{FileId, WorkspaceId};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::caller::Caller;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, Fields};
use crate::reply::{IfMatch, Reply};
use crate::state::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SaveFileRequest {
    /// UTF-8 text, at most 768 KiB (so the request fits the 1 MiB body limit).
    content: String,
    /// The version this edit is based on; `0` to create a new file only.
    base_version: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct FileChanged {
    workspace_id: Uuid,
    path: String,
    version: u64,
    /// `null` once deleted.
    size_bytes: Option<u64>,
    position: Option<i64>,
}

fn parse_path(raw: &str) -> Result<FilePath, ApiError> {
    FilePath::parse(raw).map_err(|e| ApiError::field("path", e.0))
}

#[utoipa::path(put, path = "/api/v1/workspaces/{id}/files/{path}", tag = "files",
    params(("id" = Uuid, Path), ("path" = String, Path, description = "Relative path; may contain `/`"),
           ("If-Match" = Option<String>, Header, description = "Expected file version")),
    request_body = SaveFileRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Saved over an existing version", body = FileChanged),
        (status = 201, description = "Created", body = FileChanged),
        (status = 403, body = Problem),
        (status = 404, body = Problem),
        (status = 409, description = "`version_conflict` (with `current_version`), `project_archived`", body = Problem),
        (status = 412, body = Problem),
        (status = 413, body = Problem),
        (status = 422, body = Problem),
    ))]
pub async fn save_file(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((workspace, path)): ApiPath<(Uuid, String)>,
    IfMatch(expected): IfMatch,
    ApiJson(body): ApiJson<SaveFileRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let mut f = Fields::default();
    let file_path = f.check("path", FilePath::parse(&path));
    let content = f.check("content", FileContent::parse(body.content));
    let (Some(file_path), Some(content)) = (file_path, content) else {
        return Err(f.into_error());
    };
    let size = content.as_str().len() as u64;
    let workspace = WorkspaceId(workspace);
    let command = FileCommand::Save {
        actor: caller.user,
        workspace_id: workspace,
        path: file_path.clone(),
        content,
        base_version: body.base_version,
    };
    let reply = file_command(
        &state,
        &caller,
        workspace,
        file_path,
        Some(size),
        command,
        expected,
    )
    .await?;
    Ok(reply)
}

#[utoipa::path(delete, path = "/api/v1/workspaces/{id}/files/{path}", tag = "files",
    params(("id" = Uuid, Path), ("path" = String, Path), ("If-Match" = Option<String>, Header)),
    security(("bearer" = [])),
    responses(
        (status = 200, body = FileChanged),
        (status = 403, body = Problem),
        (status = 404, description = "`not_found` (workspace) or `file_not_found`", body = Problem),
        (status = 409, body = Problem),
        (status = 412, body = Problem),
    ))]
pub async fn delete_file(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((workspace, path)): ApiPath<(Uuid, String)>,
    IfMatch(expected): IfMatch,
) -> Result<impl IntoResponse, ApiError> {
    let file_path = parse_path(&path)?;
    let workspace = WorkspaceId(workspace);
    let command = FileCommand::Delete {
        actor: caller.user,
        workspace_id: workspace,
        path: file_path.clone(),
        base_version: None,
    };
    file_command(
        &state, &caller, workspace, file_path, None, command, expected,
    )
    .await
}

async fn file_command(
    state: &AppState,
    caller: &Caller,
    workspace: WorkspaceId,
    path: FilePath,
    size: Option<u64>,
    command: FileCommand,
    expected: Option<u64>,
) -> Result<Reply<FileChanged>, ApiError> {
    let id = FileId::for_path(workspace, path.as_str());
    let committed = state
        .write
        .bus
        .execute::<File>(&id.to_string(), command, &caller.ctx(), expected)
        .await?;
    let status = if committed.version == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = FileChanged {
        workspace_id: workspace.0,
        path: path.as_str().to_owned(),
        version: committed.version,
        size_bytes: size,
        position: committed.position,
    };
    Ok(Reply::new(status, body, &committed))
}
