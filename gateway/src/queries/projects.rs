//! `GET /projects`, `GET /projects/{id}`, `GET /projects/{id}/members`.
//! The first two are cached (see [`crate::read`]).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tandem_projections::queries::{self, MemberRow, ProjectRow};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::Paged;
use crate::auth::caller::Caller;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiPath, ApiQuery};
use crate::read::{CacheKey, Cached, CaughtUp, ListParams};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_projects))
        .routes(routes!(get_project))
        .routes(routes!(list_members))
}

#[derive(Serialize, ToSchema)]
pub struct ProjectView {
    id: Uuid,
    name: String,
    description: String,
    owner_id: Uuid,
    /// The caller's role.
    #[schema(example = "collaborator")]
    role: String,
    archived: bool,
    archived_at: Option<DateTime<Utc>>,
    member_count: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    version: i64,
}

impl From<ProjectRow> for ProjectView {
    fn from(p: ProjectRow) -> Self {
        Self {
            id: p.project_id,
            name: p.name,
            description: p.description,
            owner_id: p.owner_id,
            role: p.role,
            archived: p.archived,
            archived_at: p.archived_at,
            member_count: p.member_count,
            created_at: p.created_at,
            updated_at: p.updated_at,
            version: p.version,
        }
    }
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProjectListParams {
    /// Items per page, 1–200 (default 50).
    limit: Option<i64>,
    /// A previous answer's `next_cursor`.
    cursor: Option<String>,
    /// Also list archived projects.
    #[serde(default)]
    include_archived: bool,
    /// Wait until the read side has applied this log position.
    min_position: Option<i64>,
}

#[utoipa::path(get, path = "/projects", tag = "projects",
    params(ProjectListParams),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Paged<ProjectView>, description = "the caller's projects, newest first"),
        (status = 401, body = Problem),
        (status = 422, body = Problem),
        (status = 503, description = "`not_caught_up`", body = Problem),
    ))]
async fn list_projects(
    State(state): State<AppState>,
    caller: Caller,
    caught_up: CaughtUp,
    ApiQuery(params): ApiQuery<ProjectListParams>,
) -> Result<Cached, ApiError> {
    let page = ListParams {
        limit: params.limit,
        cursor: params.cursor,
        min_position: params.min_position,
    };
    let (limit, after) = (page.limit()?, page.after_id()?);
    let user = caller.user.as_uuid();
    let key = CacheKey::Projects {
        user,
        include_archived: params.include_archived,
        after,
        limit,
    };
    let read = &state.read;
    let body = read
        .cache
        .get_or_fill(key, &caught_up, &read.positions, || async {
            let page =
                queries::projects_of(&read.pool, user, params.include_archived, after, limit)
                    .await?;
            Ok(Some(Cached::of(
                &Paged::from_page(page, ProjectView::from),
                None,
            )))
        })
        .await?
        .expect("lists always have a body");
    Ok(body)
}

#[utoipa::path(get, path = "/projects/{id}", tag = "projects",
    params(("id" = Uuid, Path), ("min_position" = Option<i64>, Query, description = "Wait until the read side has applied this log position")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = ProjectView, headers(("ETag" = String))),
        (status = 401, body = Problem),
        (status = 404, description = "unknown project or not a member", body = Problem),
        (status = 503, description = "`not_caught_up`", body = Problem),
    ))]
async fn get_project(
    State(state): State<AppState>,
    caller: Caller,
    caught_up: CaughtUp,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    let user = caller.user.as_uuid();
    let read = &state.read;
    let body = read
        .cache
        .get_or_fill(
            CacheKey::Project { user, project: id },
            &caught_up,
            &read.positions,
            || async {
                Ok(queries::project(&read.pool, user, id).await?.map(|p| {
                    let version = p.version;
                    Cached::of(&ProjectView::from(p), Some(version))
                }))
            },
        )
        .await?
        .ok_or_else(|| ApiError::not_found("project"))?;
    Ok(body.into_response())
}

#[derive(Serialize, ToSchema)]
pub struct MemberView {
    user_id: Uuid,
    display_name: Option<String>,
    #[schema(example = "viewer")]
    role: String,
    joined_at: DateTime<Utc>,
}

impl From<MemberRow> for MemberView {
    fn from(m: MemberRow) -> Self {
        Self {
            user_id: m.user_id,
            display_name: m.display_name,
            role: m.role,
            joined_at: m.joined_at,
        }
    }
}

#[utoipa::path(get, path = "/projects/{id}/members", tag = "members",
    params(("id" = Uuid, Path), ListParams),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Paged<MemberView>),
        (status = 401, body = Problem),
        (status = 404, description = "unknown project or not a member", body = Problem),
        (status = 422, body = Problem),
        (status = 503, description = "`not_caught_up`", body = Problem),
    ))]
async fn list_members(
    State(state): State<AppState>,
    caller: Caller,
    _: CaughtUp,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Paged<MemberView>>, ApiError> {
    let page = queries::members(
        &state.read.pool,
        caller.user.as_uuid(),
        id,
        params.after_id()?,
        params.limit()?,
    )
    .await?
    .ok_or_else(|| ApiError::not_found("project"))?;
    Ok(Json(Paged::from_page(page, MemberView::from)))
}
