//! `GET /projects/{id}/jobs` (`?status=`), `GET /jobs/{id}`.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tandem_projections::queries::{self, AttemptRow, JobRow};
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
        .routes(routes!(list_jobs))
        .routes(routes!(get_job))
}

const STATUSES: [&str; 6] = [
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "dead",
];

#[derive(Serialize, ToSchema)]
pub struct JobResult {
    stdout: String,
    stderr: String,
    /// `null` when the sandbox stopped the run at a limit (see `reason`).
    exit_code: Option<i32>,
    duration_ms: i64,
    /// Output beyond the limit (1 MiB per stream by default) was dropped.
    truncated: bool,
    /// `timeout`, `cpu_limit` or `memory_limit` when a limit ended the run.
    reason: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct AttemptView {
    attempt: i32,
    worker: String,
    #[schema(example = "failed")]
    status: String,
    exit_code: Option<i32>,
    reason: Option<String>,
    duration_ms: Option<i64>,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

impl From<AttemptRow> for AttemptView {
    fn from(a: AttemptRow) -> Self {
        Self {
            attempt: a.attempt,
            worker: a.worker,
            status: a.status,
            exit_code: a.exit_code,
            reason: a.reason,
            duration_ms: a.duration_ms,
            started_at: a.started_at,
            finished_at: a.finished_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct JobView {
    id: Uuid,
    project_id: Uuid,
    submitted_by: Uuid,
    #[schema(example = "python")]
    language: String,
    #[schema(example = "succeeded")]
    status: String,
    workspace_id: Option<Uuid>,
    path: Option<String>,
    timeout_ms: i64,
    max_attempts: i32,
    /// Attempts started so far.
    attempt_count: i32,
    /// Why the last attempt failed or the job died.
    reason: Option<String>,
    /// When a scheduled retry is due.
    retry_at: Option<DateTime<Utc>>,
    submitted_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    version: i64,
    /// The finished run's outcome (detail only).
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<JobResult>,
    /// Every attempt (detail only).
    #[serde(skip_serializing_if = "Option::is_none")]
    attempts: Option<Vec<AttemptView>>,
}

impl JobView {
    fn new(j: JobRow, detail: Option<Vec<AttemptRow>>) -> Self {
        // A run that ended (exit status or limit) has a duration.
        let result = match (&detail, j.duration_ms) {
            (Some(_), Some(duration_ms)) => Some(JobResult {
                stdout: j.stdout.unwrap_or_default(),
                stderr: j.stderr.unwrap_or_default(),
                exit_code: j.exit_code,
                duration_ms,
                truncated: j.truncated.unwrap_or(false),
                reason: j.exit_code.is_none().then(|| j.reason.clone()).flatten(),
            }),
            _ => None,
        };
        Self {
            id: j.job_id,
            project_id: j.project_id,
            submitted_by: j.submitted_by,
            language: j.language,
            status: j.status,
            workspace_id: j.workspace_id,
            path: j.path,
            timeout_ms: j.timeout_ms,
            max_attempts: j.max_attempts,
            attempt_count: j.attempts,
            reason: j.reason,
            retry_at: j.retry_at,
            submitted_at: j.submitted_at,
            updated_at: j.updated_at,
            finished_at: j.finished_at,
            version: j.version,
            result,
            attempts: detail.map(|a| a.into_iter().map(AttemptView::from).collect()),
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobListParams {
    /// Items per page, 1–200 (default 50).
    limit: Option<i64>,
    /// A previous answer's `next_cursor`.
    cursor: Option<String>,
    /// Only jobs in this status.
    status: Option<String>,
    /// Wait until the read side has applied this log position.
    min_position: Option<i64>,
}

#[utoipa::path(get, path = "/projects/{id}/jobs", tag = "jobs",
    params(("id" = Uuid, Path), JobListParams),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Paged<JobView>, description = "newest first"),
        (status = 401, body = Problem),
        (status = 404, description = "unknown project or not a member", body = Problem),
        (status = 422, body = Problem),
        (status = 503, description = "`not_caught_up`", body = Problem),
    ))]
async fn list_jobs(
    State(state): State<AppState>,
    caller: Caller,
    _: CaughtUp,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(params): ApiQuery<JobListParams>,
) -> Result<Json<Paged<JobView>>, ApiError> {
    if let Some(status) = params.status.as_deref() {
        if !STATUSES.contains(&status) {
            return Err(ApiError::field(
                "status",
                format!("must be one of {}", STATUSES.join(", ")),
            ));
        }
    }
    let page = ListParams {
        limit: params.limit,
        cursor: params.cursor,
        min_position: params.min_position,
    };
    let page = queries::jobs(
        &state.read.pool,
        caller.user.as_uuid(),
        id,
        params.status.as_deref(),
        page.after_id()?,
        page.limit()?,
    )
    .await?
    .ok_or_else(|| ApiError::not_found("project"))?;
    Ok(Json(Paged::from_page(page, |j| JobView::new(j, None))))
}

#[utoipa::path(get, path = "/jobs/{id}", tag = "jobs",
    params(("id" = Uuid, Path), ("min_position" = Option<i64>, Query, description = "Wait until the read side has applied this log position")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = JobView),
        (status = 401, body = Problem),
        (status = 404, description = "unknown job or not a member", body = Problem),
        (status = 503, description = "`not_caught_up`", body = Problem),
    ))]
async fn get_job(
    State(state): State<AppState>,
    caller: Caller,
    _: CaughtUp,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<JobView>, ApiError> {
    let (job, attempts) = queries::job(&state.read.pool, caller.user.as_uuid(), id)
        .await?
        .ok_or_else(|| ApiError::not_found("job"))?;
    Ok(Json(JobView::new(job, Some(attempts))))
}
