//! The read API over schema `read`: what the gateway's GET endpoints ask.
//!
//! Every member-only lookup joins `read.members` for the caller in the same
//! statement, so "not a member" and "does not exist" are one answer
//! (`None`), in one round trip. Lists page by keyset (`after` = the last
//! key of the previous page) and fetch one row more than asked to know
//! whether another page exists.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

pub type Result<T> = std::result::Result<T, sqlx::Error>;

/// A page of items and the key after which the next page starts.
#[derive(Debug)]
pub struct Page<T, K> {
    pub items: Vec<T>,
    pub next: Option<K>,
}

fn page<T, K>(mut rows: Vec<T>, limit: i64, key: impl Fn(&T) -> K) -> Page<T, K> {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next = if more { rows.last().map(key) } else { None };
    Page { items: rows, next }
}

#[derive(Clone, Debug, FromRow, PartialEq)]
pub struct ProjectRow {
    pub project_id: Uuid,
    pub name: String,
    pub description: String,
    pub owner_id: Uuid,
    pub archived: bool,
    pub archived_at: Option<DateTime<Utc>>,
    pub member_count: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
    /// The caller's role in it.
    pub role: String,
}

const PROJECT_COLUMNS: &str = "p.project_id, p.name, p.description, p.owner_id, p.archived,
    p.archived_at, p.member_count, p.created_at, p.updated_at, p.version, m.role";

/// The caller's projects, newest first.
pub async fn projects_of(
    pool: &PgPool,
    user: Uuid,
    include_archived: bool,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Page<ProjectRow, Uuid>> {
    let rows: Vec<ProjectRow> = sqlx::query_as(&format!(
        "SELECT {PROJECT_COLUMNS}
           FROM read.members m JOIN read.projects p ON p.project_id = m.project_id
          WHERE m.user_id = $1 AND ($2 OR NOT p.archived)
            AND ($3::uuid IS NULL OR m.project_id < $3)
          ORDER BY m.project_id DESC
          LIMIT $4"
    ))
    .bind(user)
    .bind(include_archived)
    .bind(after)
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(page(rows, limit, |p| p.project_id))
}

/// The project, if the caller is a member.
pub async fn project(pool: &PgPool, user: Uuid, project: Uuid) -> Result<Option<ProjectRow>> {
    sqlx::query_as(&format!(
        "SELECT {PROJECT_COLUMNS}
           FROM read.projects p JOIN read.members m ON m.project_id = p.project_id AND m.user_id = $2
          WHERE p.project_id = $1"
    ))
    .bind(project)
    .bind(user)
    .fetch_optional(pool)
    .await
}

/// The caller's role in the project, if a member.
pub async fn role(pool: &PgPool, user: Uuid, project: Uuid) -> Result<Option<String>> {
    sqlx::query_scalar("SELECT role FROM read.members WHERE project_id = $1 AND user_id = $2")
        .bind(project)
        .bind(user)
        .fetch_optional(pool)
        .await
}

#[derive(Clone, Debug, FromRow, PartialEq)]
pub struct MemberRow {
    pub user_id: Uuid,
    pub display_name: Option<String>,
    pub role: String,
    pub joined_at: DateTime<Utc>,
}

/// A project's members, owner first then by join time; `None` for a
/// non-member caller.
pub async fn members(
    pool: &PgPool,
    user: Uuid,
    project: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Option<Page<MemberRow, Uuid>>> {
    if role(pool, user, project).await?.is_none() {
        return Ok(None);
    }
    let rows: Vec<MemberRow> = sqlx::query_as(
        "SELECT m.user_id, u.display_name, m.role, m.joined_at
           FROM read.members m LEFT JOIN read.users u ON u.user_id = m.user_id
          WHERE m.project_id = $1 AND ($2::uuid IS NULL OR m.user_id > $2)
          ORDER BY m.user_id
          LIMIT $3",
    )
    .bind(project)
    .bind(after)
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(Some(page(rows, limit, |m| m.user_id)))
}

#[derive(Clone, Debug, FromRow, PartialEq)]
pub struct WorkspaceRow {
    pub workspace_id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A project's workspaces, oldest first; `None` for a non-member.
pub async fn workspaces(
    pool: &PgPool,
    user: Uuid,
    project: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Option<Page<WorkspaceRow, Uuid>>> {
    if role(pool, user, project).await?.is_none() {
        return Ok(None);
    }
    let rows: Vec<WorkspaceRow> = sqlx::query_as(
        "SELECT workspace_id, project_id, name, created_by, created_at, updated_at
           FROM read.workspaces
          WHERE project_id = $1 AND ($2::uuid IS NULL OR workspace_id > $2)
          ORDER BY workspace_id
          LIMIT $3",
    )
    .bind(project)
    .bind(after)
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(Some(page(rows, limit, |w| w.workspace_id)))
}

/// The workspace, if the caller is a member of its project.
pub async fn workspace(pool: &PgPool, user: Uuid, workspace: Uuid) -> Result<Option<WorkspaceRow>> {
    sqlx::query_as(
        "SELECT w.workspace_id, w.project_id, w.name, w.created_by, w.created_at, w.updated_at
           FROM read.workspaces w
           JOIN read.members m ON m.project_id = w.project_id AND m.user_id = $2
          WHERE w.workspace_id = $1",
    )
    .bind(workspace)
    .bind(user)
    .fetch_optional(pool)
    .await
}

#[derive(Clone, Debug, FromRow, PartialEq)]
pub struct FileRow {
    pub workspace_id: Uuid,
    pub path: String,
    pub file_id: Uuid,
    pub version: i64,
    pub size_bytes: i64,
    pub updated_by: Uuid,
    pub updated_at: DateTime<Utc>,
}

/// A workspace's files by path; `None` when the workspace is unknown or
/// the caller is not a member.
pub async fn files(
    pool: &PgPool,
    user: Uuid,
    workspace_id: Uuid,
    after: Option<String>,
    limit: i64,
) -> Result<Option<Page<FileRow, String>>> {
    if workspace(pool, user, workspace_id).await?.is_none() {
        return Ok(None);
    }
    let rows: Vec<FileRow> = sqlx::query_as(
        "SELECT workspace_id, path, file_id, version, size_bytes, updated_by, updated_at
           FROM read.files
          WHERE workspace_id = $1 AND ($2::text IS NULL OR path > $2)
          ORDER BY path
          LIMIT $3",
    )
    .bind(workspace_id)
    .bind(after)
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(Some(page(rows, limit, |f| f.path.clone())))
}

#[derive(Clone, Debug, FromRow, PartialEq)]
pub struct FileContentRow {
    pub workspace_id: Uuid,
    pub path: String,
    pub file_id: Uuid,
    pub version: i64,
    /// The file's current version (`version` differs for `?version=`).
    pub current_version: i64,
    pub size_bytes: i64,
    pub saved_by: Uuid,
    pub saved_at: DateTime<Utc>,
    pub content: String,
}

/// A file's content (the current one, or `version`), if the file exists,
/// its workspace exists and the caller is a member.
pub async fn file(
    pool: &PgPool,
    user: Uuid,
    workspace_id: Uuid,
    path: &str,
    version: Option<i64>,
) -> Result<Option<FileContentRow>> {
    sqlx::query_as(
        "SELECT f.workspace_id, f.path, f.file_id, v.version, f.version AS current_version,
                v.size_bytes, v.saved_by, v.saved_at, v.content
           FROM read.files f
           JOIN read.workspaces w ON w.workspace_id = f.workspace_id
           JOIN read.members m ON m.project_id = w.project_id AND m.user_id = $3
           JOIN read.file_versions v ON v.file_id = f.file_id AND v.version = coalesce($4, f.version)
          WHERE f.workspace_id = $1 AND f.path = $2",
    )
    .bind(workspace_id)
    .bind(path)
    .bind(user)
    .bind(version)
    .fetch_optional(pool)
    .await
}

#[derive(Clone, Debug, FromRow, PartialEq)]
pub struct JobRow {
    pub job_id: Uuid,
    pub project_id: Uuid,
    pub submitted_by: Uuid,
    pub language: String,
    pub status: String,
    pub workspace_id: Option<Uuid>,
    pub path: Option<String>,
    pub timeout_ms: i64,
    pub max_attempts: i32,
    pub attempts: i32,
    pub exit_code: Option<i32>,
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    pub duration_ms: Option<i64>,
    pub truncated: Option<bool>,
    pub reason: Option<String>,
    pub retry_at: Option<DateTime<Utc>>,
    pub submitted_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub version: i64,
}

const JOB_COLUMNS: &str = "j.job_id, j.project_id, j.submitted_by, j.language, j.status,
    j.workspace_id, j.path, j.timeout_ms, j.max_attempts, j.attempts, j.exit_code, j.stdout,
    j.stderr, j.duration_ms, j.truncated, j.reason, j.retry_at, j.submitted_at, j.updated_at,
    j.finished_at, j.version";

/// A project's jobs, newest first, optionally of one status; `None` for a
/// non-member.
pub async fn jobs(
    pool: &PgPool,
    user: Uuid,
    project: Uuid,
    status: Option<&str>,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Option<Page<JobRow, Uuid>>> {
    if role(pool, user, project).await?.is_none() {
        return Ok(None);
    }
    let rows: Vec<JobRow> = sqlx::query_as(&format!(
        "SELECT {JOB_COLUMNS} FROM read.jobs j
          WHERE j.project_id = $1 AND ($2::text IS NULL OR j.status = $2)
            AND ($3::uuid IS NULL OR j.job_id < $3)
          ORDER BY j.job_id DESC
          LIMIT $4"
    ))
    .bind(project)
    .bind(status)
    .bind(after)
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(Some(page(rows, limit, |j| j.job_id)))
}

#[derive(Clone, Debug, FromRow, PartialEq)]
pub struct AttemptRow {
    pub attempt: i32,
    pub worker: String,
    pub status: String,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub duration_ms: Option<i64>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A job and its attempts, if the caller is a member of its project.
pub async fn job(
    pool: &PgPool,
    user: Uuid,
    job_id: Uuid,
) -> Result<Option<(JobRow, Vec<AttemptRow>)>> {
    let job: Option<JobRow> = sqlx::query_as(&format!(
        "SELECT {JOB_COLUMNS} FROM read.jobs j
           JOIN read.members m ON m.project_id = j.project_id AND m.user_id = $2
          WHERE j.job_id = $1"
    ))
    .bind(job_id)
    .bind(user)
    .fetch_optional(pool)
    .await?;
    let Some(job) = job else {
        return Ok(None);
    };
    let attempts = sqlx::query_as(
        "SELECT attempt, worker, status, exit_code, reason, duration_ms, started_at, finished_at
           FROM read.job_attempts WHERE job_id = $1 ORDER BY attempt",
    )
    .bind(job_id)
    .fetch_all(pool)
    .await?;
    Ok(Some((job, attempts)))
}
