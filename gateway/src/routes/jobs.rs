//! `POST /projects/{id}/jobs`, `POST /jobs/{id}/cancel`, `POST
//! /jobs/{id}/retry`. A job is accepted into the log as `queued`; running
//! it is the executor's business (the relay hands it to the work queue).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use tandem_domain::job::{Job, JobCommand, JobSource, JobStatus, Language};
use tandem_domain::values::FilePath;
use tandem_domain::{JobId, ProjectId, WorkspaceId};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::caller::Caller;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, Fields};
use crate::reply::{IfMatch, Reply};
use crate::state::AppState;

pub const MAX_SOURCE_BYTES: usize = 256 * 1024;
pub const MAX_STDIN_BYTES: usize = 64 * 1024;
/// The wall-time limit a job may ask for; executors also cap it at their
/// configured ceiling.
pub const TIMEOUT_MS: std::ops::RangeInclusive<u64> = 100..=60_000;
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
pub const ATTEMPTS: std::ops::RangeInclusive<u32> = 1..=10;
pub const DEFAULT_ATTEMPTS: u32 = 3;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(submit_job))
        .routes(routes!(cancel_job))
        .routes(routes!(retry_job))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitJobRequest {
    /// `python`, `javascript` or `bash`.
    language: String,
    /// The code to run, or
    source: Option<String>,
    /// a workspace file to run (with `path`).
    workspace_id: Option<Uuid>,
    path: Option<String>,
    stdin: Option<String>,
    /// Wall-time limit, 100 to 60000; default 10000.
    timeout_ms: Option<u64>,
    /// 1 to 10; default 3.
    max_attempts: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct JobAccepted {
    id: Uuid,
    #[schema(value_type = String, example = "queued")]
    status: JobStatus,
    position: Option<i64>,
}

fn parse_submission(body: SubmitJobRequest) -> Result<SubmitParts, ApiError> {
    let mut f = Fields::default();
    let language = match body.language.as_str() {
        "python" => Some(Language::Python),
        "javascript" => Some(Language::Javascript),
        "bash" => Some(Language::Bash),
        _ => {
            f.fail("language", "must be \"python\", \"javascript\" or \"bash\"");
            None
        }
    };
    let source = match (body.source, body.workspace_id, body.path) {
        (Some(code), None, None) => {
            if code.trim().is_empty() {
                f.fail("source", "must not be empty");
            } else if code.len() > MAX_SOURCE_BYTES {
                f.fail("source", "must be at most 256 KiB");
            }
            Some(JobSource::Inline(code))
        }
        (None, Some(ws), Some(path)) => {
            f.check("path", FilePath::parse(&path))
                .map(|path| JobSource::Workspace {
                    workspace_id: WorkspaceId(ws),
                    path,
                })
        }
        _ => {
            f.fail("source", "send either source, or workspace_id and path");
            None
        }
    };
    let stdin = body.stdin.unwrap_or_default();
    if stdin.len() > MAX_STDIN_BYTES {
        f.fail("stdin", "must be at most 64 KiB");
    }
    let timeout_ms = body.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if !TIMEOUT_MS.contains(&timeout_ms) {
        f.fail("timeout_ms", "must be between 100 and 60000");
    }
    let max_attempts = body.max_attempts.unwrap_or(DEFAULT_ATTEMPTS);
    if !ATTEMPTS.contains(&max_attempts) {
        f.fail("max_attempts", "must be between 1 and 10");
    }
    match (language, source) {
        (Some(language), Some(source)) if f.is_empty() => Ok(SubmitParts {
            language,
            source,
            stdin,
            timeout_ms,
            max_attempts,
        }),
        _ => Err(f.into_error()),
    }
}

struct SubmitParts {
    language: Language,
    source: JobSource,
    stdin: String,
    timeout_ms: u64,
    max_attempts: u32,
}

#[utoipa::path(post, path = "/projects/{id}/jobs", tag = "jobs",
    params(("id" = Uuid, Path)),
    request_body = SubmitJobRequest,
    security(("bearer" = [])),
    responses(
        (status = 202, body = JobAccepted),
        (status = 403, body = Problem),
        (status = 404, description = "project, workspace or `file_not_found`", body = Problem),
        (status = 409, description = "`project_archived`", body = Problem),
        (status = 422, body = Problem),
    ))]
async fn submit_job(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(project): ApiPath<Uuid>,
    ApiJson(body): ApiJson<SubmitJobRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let parts = parse_submission(body)?;
    let job = JobId::generate();
    let command = JobCommand::Submit {
        job_id: job,
        project_id: ProjectId(project),
        actor: caller.user,
        language: parts.language,
        source: parts.source,
        stdin: parts.stdin,
        timeout_ms: parts.timeout_ms,
        max_attempts: parts.max_attempts,
    };
    let committed = state
        .write
        .bus
        .execute_new::<Job>(&job.to_string(), command, &caller.ctx())
        .await?;
    let body = JobAccepted {
        id: job.0,
        status: JobStatus::Queued,
        position: committed.position,
    };
    Ok(Reply::new(StatusCode::ACCEPTED, body, &committed).located(format!("/api/v1/jobs/{job}")))
}

#[utoipa::path(post, path = "/jobs/{id}/cancel", tag = "jobs",
    description = "Cancels a queued or running job; a running job's process is killed.",
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header)),
    security(("bearer" = [])),
    responses(
        (status = 202, body = JobAccepted),
        (status = 403, body = Problem),
        (status = 404, body = Problem),
        (status = 409, description = "`invalid_job_state`: already finished", body = Problem),
    ))]
async fn cancel_job(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(job): ApiPath<Uuid>,
    IfMatch(expected): IfMatch,
) -> Result<impl IntoResponse, ApiError> {
    let command = JobCommand::Cancel { actor: caller.user };
    job_command(
        &state,
        &caller,
        job,
        command,
        JobStatus::Cancelled,
        expected,
    )
    .await
}

#[utoipa::path(post, path = "/jobs/{id}/retry", tag = "jobs",
    description = "Queues a failed, dead or cancelled job again with a fresh attempt budget.",
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header)),
    security(("bearer" = [])),
    responses(
        (status = 202, body = JobAccepted),
        (status = 403, body = Problem),
        (status = 404, body = Problem),
        (status = 409, description = "`invalid_job_state`", body = Problem),
    ))]
async fn retry_job(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(job): ApiPath<Uuid>,
    IfMatch(expected): IfMatch,
) -> Result<impl IntoResponse, ApiError> {
    let command = JobCommand::Retry { actor: caller.user };
    job_command(&state, &caller, job, command, JobStatus::Queued, expected).await
}

async fn job_command(
    state: &AppState,
    caller: &Caller,
    job: Uuid,
    command: JobCommand,
    status: JobStatus,
    expected: Option<u64>,
) -> Result<Reply<JobAccepted>, ApiError> {
    let committed = state
        .write
        .bus
        .execute::<Job>(&job.to_string(), command, &caller.ctx(), expected)
        .await?;
    let body = JobAccepted {
        id: job,
        status,
        position: committed.position,
    };
    Ok(Reply::new(StatusCode::ACCEPTED, body, &committed))
}
