//! Domain refusals → HTTP answers. One place decides which broken rule is
//! which status and `code`; handlers just use `?`.

use axum::http::StatusCode;
use tandem_commands::accounts::{LoginError, RegisterError};
use tandem_commands::sessions::SessionStoreError;
use tandem_commands::CommandError;
use tandem_domain::file::FileError;
use tandem_domain::job::{JobError, JobStatus};
use tandem_domain::project::ProjectError;
use tandem_domain::session::SessionError;
use tandem_domain::user::UserError;

use crate::auth::caller::invalid_token;
use crate::error::ApiError;

/// A domain error that knows its HTTP answer.
pub trait Rejection: std::error::Error {
    fn into_api(self) -> ApiError;
}

impl<E: Rejection + 'static> From<CommandError<E>> for ApiError {
    fn from(e: CommandError<E>) -> Self {
        match e {
            CommandError::Rejected(e) => e.into_api(),
            CommandError::PreconditionFailed { current, .. } => {
                ApiError::precondition_failed(current)
            }
            CommandError::Conflict => ApiError::conflict(
                "concurrent_modification",
                "the resource kept changing concurrently; retry",
            ),
            CommandError::Unavailable(cause) => ApiError::unavailable(cause.as_ref()),
            CommandError::Internal(cause) => ApiError::internal(cause.as_ref()),
        }
    }
}

fn archived() -> ApiError {
    ApiError::conflict("project_archived", "the project is archived and read-only")
}

impl Rejection for ProjectError {
    fn into_api(self) -> ApiError {
        let detail = self.to_string();
        match self {
            ProjectError::AlreadyExists => ApiError::conflict("already_exists", detail),
            ProjectError::NotFound => ApiError::not_found("project"),
            ProjectError::Forbidden => ApiError::forbidden(),
            ProjectError::Archived => archived(),
            ProjectError::AlreadyMember => ApiError::conflict("already_member", detail),
            ProjectError::MemberNotFound => {
                ApiError::new(StatusCode::NOT_FOUND, "member_not_found", detail)
            }
            ProjectError::OwnerIsPermanent => ApiError::conflict("owner_is_permanent", detail),
            ProjectError::OwnerCannotBeGranted => {
                ApiError::conflict("owner_cannot_be_granted", detail)
            }
            ProjectError::WorkspaceNotFound => ApiError::not_found("workspace"),
            ProjectError::WorkspaceNameTaken => ApiError::conflict("workspace_name_taken", detail),
        }
    }
}

impl Rejection for FileError {
    fn into_api(self) -> ApiError {
        match self {
            FileError::WorkspaceNotFound => ApiError::not_found("workspace"),
            FileError::Forbidden => ApiError::forbidden(),
            FileError::Archived => archived(),
            FileError::VersionConflict { current, .. } => ApiError::conflict(
                "version_conflict",
                format!("the file changed; it is now at version {current}"),
            )
            .with("current_version", current),
            FileError::FileNotFound => {
                ApiError::new(StatusCode::NOT_FOUND, "file_not_found", "file not found")
            }
            FileError::Lookup(e) => ApiError::unavailable(&e),
        }
    }
}

fn status_name(s: JobStatus) -> &'static str {
    match s {
        JobStatus::Queued => "queued",
        JobStatus::Running => "running",
        JobStatus::Succeeded => "succeeded",
        JobStatus::Failed => "failed",
        JobStatus::Cancelled => "cancelled",
        JobStatus::Dead => "dead",
    }
}

impl Rejection for JobError {
    fn into_api(self) -> ApiError {
        let detail = self.to_string();
        match self {
            JobError::NotFound => ApiError::not_found("job"),
            JobError::ProjectNotFound => ApiError::not_found("project"),
            JobError::Forbidden => ApiError::forbidden(),
            JobError::Archived => archived(),
            JobError::WorkspaceNotFound => ApiError::not_found("workspace"),
            JobError::FileNotFound => {
                ApiError::new(StatusCode::NOT_FOUND, "file_not_found", "file not found")
            }
            JobError::AlreadySubmitted => ApiError::conflict("already_exists", detail),
            JobError::InvalidTransition { status, action } => ApiError::conflict(
                "invalid_job_state",
                format!("a {} job cannot {action}", status_name(status)),
            )
            .with("job_status", status_name(status)),
            JobError::StaleAttempt { .. }
            | JobError::AttemptsExhausted
            | JobError::NotDue { .. } => ApiError::conflict("invalid_job_state", detail),
            JobError::Lookup(e) => ApiError::unavailable(&e),
        }
    }
}

impl Rejection for UserError {
    fn into_api(self) -> ApiError {
        match self {
            UserError::AlreadyRegistered => {
                ApiError::conflict("already_exists", "user already registered")
            }
            UserError::NotFound => ApiError::not_found("user"),
            UserError::NotSelf => ApiError::forbidden(),
        }
    }
}

impl Rejection for SessionError {
    fn into_api(self) -> ApiError {
        match self {
            SessionError::NotFound => invalid_token(),
            SessionError::AlreadyStarted => ApiError::internal(&self),
        }
    }
}

impl From<RegisterError> for ApiError {
    fn from(e: RegisterError) -> Self {
        match e {
            RegisterError::EmailTaken => {
                ApiError::conflict("email_taken", "an account with this email already exists")
            }
            RegisterError::Command(e) => e.into(),
            RegisterError::Hash(e) => ApiError::internal(&e),
            RegisterError::Database(e) => e.into(),
        }
    }
}

pub fn invalid_credentials() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
        "email or password is incorrect",
    )
}

impl From<LoginError> for ApiError {
    fn from(e: LoginError) -> Self {
        match e {
            LoginError::InvalidCredentials => invalid_credentials(),
            LoginError::Hash(e) => ApiError::internal(&e),
            LoginError::Database(e) => e.into(),
        }
    }
}

impl From<SessionStoreError> for ApiError {
    fn from(e: SessionStoreError) -> Self {
        match e {
            SessionStoreError::Invalid => ApiError::unauthorized(
                "invalid_refresh_token",
                "the refresh token is unknown, expired or revoked",
            ),
            SessionStoreError::Reused { .. } => ApiError::unauthorized(
                "refresh_token_reused",
                "this refresh token was already used; the session has been revoked",
            ),
            SessionStoreError::Command(e) => e.into(),
            SessionStoreError::Database(e) => e.into(),
        }
    }
}
