//! `/auth/*` and `/me`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tandem_commands::accounts::Profile;
use tandem_commands::CommandContext;
use tandem_domain::values::{DisplayName, Email, Password};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::caller::Caller;
use crate::auth::jwt::now_secs;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, Fields, RequestMeta};
use crate::rejections::invalid_credentials;
use crate::reply::{set_position, Reply};
use crate::state::AppState;

/// Longest password we even try to verify; longer ones cannot be ours.
const MAX_LOGIN_PASSWORD_BYTES: usize = 1024;

/// Routes limited per client address.
pub fn auth_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
}

pub fn me_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(me, update_me))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    #[schema(example = "ada@example.com")]
    email: String,
    /// 10 to 128 characters.
    password: String,
    display_name: String,
}

#[derive(Serialize, ToSchema)]
pub struct UserBody {
    id: uuid::Uuid,
    email: String,
    display_name: String,
    created_at: DateTime<Utc>,
}

impl From<Profile> for UserBody {
    fn from(p: Profile) -> Self {
        Self {
            id: p.user_id,
            email: p.email,
            display_name: p.display_name,
            created_at: p.created_at,
        }
    }
}

/// A user, as a command answer: with the log position of its last event.
#[derive(Serialize, ToSchema)]
pub struct UserCommandBody {
    #[serde(flatten)]
    user: UserBody,
    position: Option<i64>,
}

#[utoipa::path(post, path = "/auth/register", tag = "auth",
    request_body = RegisterRequest,
    responses(
        (status = 201, body = UserCommandBody),
        (status = 409, description = "`email_taken`", body = Problem),
        (status = 422, body = Problem),
        (status = 429, body = Problem),
    ))]
async fn register(
    State(state): State<AppState>,
    meta: RequestMeta,
    ApiJson(body): ApiJson<RegisterRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let mut f = Fields::default();
    let email = f.check("email", Email::parse(&body.email));
    let password = f.check("password", Password::parse(body.password));
    let name = f.check("display_name", DisplayName::parse(&body.display_name));
    let (Some(email), Some(password), Some(name)) = (email, password, name) else {
        return Err(f.into_error());
    };
    let _turn = state.write.accounts.admit().await;
    let ctx = CommandContext::for_request(None, meta.request_id, meta.correlation_id);
    let (profile, committed) = state
        .write
        .accounts
        .register(&ctx, email, password, name)
        .await?;
    let body = UserCommandBody {
        user: profile.into(),
        position: committed.position,
    };
    Ok(Reply::new(StatusCode::CREATED, body, &committed).located("/api/v1/me".to_owned()))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    email: String,
    password: String,
}

#[derive(Serialize, ToSchema)]
pub struct TokenPair {
    access_token: String,
    refresh_token: String,
    #[schema(example = "Bearer")]
    token_type: &'static str,
    /// Seconds until the access token expires.
    expires_in: u64,
    /// Log position of `UserLoggedIn` (login only; `null` when refreshing,
    /// which records no event, or when not sequenced in time).
    position: Option<i64>,
}

fn pair(state: &AppState, issued: tandem_commands::sessions::IssuedRefresh) -> Response {
    let access = state.jwt.issue(issued.user_id, issued.session_id);
    let mut response = Json(TokenPair {
        access_token: access.token,
        refresh_token: issued.token,
        token_type: "Bearer",
        expires_in: access.expires_in,
        position: issued.position,
    })
    .into_response();
    set_position(&mut response, issued.position);
    response
}

#[utoipa::path(post, path = "/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, body = TokenPair),
        (status = 401, description = "`invalid_credentials`, for unknown email and wrong password alike", body = Problem),
        (status = 429, body = Problem),
    ))]
async fn login(
    State(state): State<AppState>,
    meta: RequestMeta,
    ApiJson(body): ApiJson<LoginRequest>,
) -> Result<impl IntoResponse, ApiError> {
    // Held until the hash is done: a wave of logins then checks limits and
    // looks up accounts as hashes finish, not all at once ahead of others.
    let turn = state.write.accounts.admit().await;
    let account = body.email.trim().to_lowercase();
    let limit = state.config.rate_limits.login_per_account;
    match state.redis.hit("login", &account, limit).await {
        Ok(v) if !v.allowed => return Err(v.rejection()),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "login limiter unavailable"),
    }
    if body.password.len() > MAX_LOGIN_PASSWORD_BYTES {
        return Err(invalid_credentials());
    }
    let user = state
        .write
        .accounts
        .authenticate(&body.email, body.password)
        .await?;
    drop(turn);
    let ctx = CommandContext::for_request(Some(user), meta.request_id, meta.correlation_id);
    let issued = state.write.sessions.start(&ctx, user).await?;
    Ok(pair(&state, issued))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    refresh_token: String,
}

#[utoipa::path(post, path = "/auth/refresh", tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new pair; the presented refresh token is spent", body = TokenPair),
        (status = 401, description = "`invalid_refresh_token`, or `refresh_token_reused` (the whole family is now revoked)", body = Problem),
    ))]
async fn refresh(
    State(state): State<AppState>,
    meta: RequestMeta,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let ctx = CommandContext::for_request(None, meta.request_id, meta.correlation_id);
    match state.write.sessions.rotate(&ctx, &body.refresh_token).await {
        Ok(issued) => Ok(pair(&state, issued)),
        Err(e) => {
            if let tandem_commands::sessions::SessionStoreError::Reused { session_id, .. } = &e {
                let ttl = state.config.jwt.access_ttl.as_secs();
                state
                    .redis
                    .deny_session(&session_id.to_string(), ttl)
                    .await?;
            }
            Err(e.into())
        }
    }
}

#[utoipa::path(post, path = "/auth/logout", tag = "auth",
    request_body = RefreshRequest,
    security(("bearer" = [])),
    responses(
        (status = 204, description = "The session's refresh tokens and the presented access token are revoked; \
            `Tandem-Position` names `UserLoggedOut`"),
        (status = 401, body = Problem),
    ))]
async fn logout(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> Result<Response, ApiError> {
    let (session, committed) = state
        .write
        .sessions
        .end(&caller.ctx(), caller.user, &body.refresh_token)
        .await?;
    let remaining = caller.token.expires_at.saturating_sub(now_secs()) + 1;
    state.redis.deny_token(&caller.token.jti, remaining).await?;
    let ttl = state.config.jwt.access_ttl.as_secs();
    state.redis.deny_session(&session.to_string(), ttl).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    set_position(&mut response, committed.position);
    Ok(response)
}

#[utoipa::path(get, path = "/me", tag = "auth",
    security(("bearer" = [])),
    responses((status = 200, body = UserBody), (status = 401, body = Problem)))]
async fn me(State(state): State<AppState>, caller: Caller) -> Result<Json<UserBody>, ApiError> {
    let profile = state.write.accounts.profile(caller.user).await?;
    profile
        .map(|p| Json(p.into()))
        .ok_or_else(|| ApiError::not_found("user"))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMeRequest {
    display_name: String,
}

#[utoipa::path(patch, path = "/me", tag = "auth",
    request_body = UpdateMeRequest,
    security(("bearer" = [])),
    responses((status = 200, body = UserCommandBody), (status = 401, body = Problem), (status = 422, body = Problem)))]
async fn update_me(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<UpdateMeRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let name =
        DisplayName::parse(&body.display_name).map_err(|e| ApiError::field("display_name", e.0))?;
    let (profile, committed) = state
        .write
        .accounts
        .update_display_name(&caller.ctx(), caller.user, name)
        .await?;
    let body = UserCommandBody {
        user: profile.into(),
        position: committed.position,
    };
    Ok(Reply::new(StatusCode::OK, body, &committed))
}
