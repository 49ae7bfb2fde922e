//! [`Caller`]: the authenticated user of a request. Verifies the bearer
//! token (or takes the one the rate limiter already verified), then checks
//! the denylist so a logged-out token stops working at once: the
//! gateway's local copy while its subscription to revocations lives
//! ([`crate::denylist`]), else Redis. Neither available means 503: without
//! the denylist we cannot know a token is live.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use tandem_commands::CommandContext;
use tandem_domain::UserId;

use crate::auth::jwt::AccessToken;
use crate::error::ApiError;
use crate::extract::RequestMeta;
use crate::state::AppState;

pub struct Caller {
    pub user: UserId,
    pub token: AccessToken,
    pub meta: RequestMeta,
}

impl Caller {
    /// Context for commands this request issues.
    pub fn ctx(&self) -> CommandContext {
        CommandContext::for_request(
            Some(self.user),
            self.meta.request_id.clone(),
            self.meta.correlation_id.clone(),
        )
    }
}

pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// The token verified once per request: the rate limiter stores it here,
/// with the denylist's answer when it could ask (`None`: ask again).
#[derive(Clone)]
pub struct Verified {
    pub token: AccessToken,
    pub denied: Option<bool>,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // Taken, not cloned: a second extraction verifies afresh.
        let (token, denied) = match parts.extensions.remove::<Verified>() {
            Some(v) => (v.token, v.denied),
            None => {
                let raw = bearer(&parts.headers).ok_or_else(|| {
                    ApiError::unauthorized("unauthenticated", "send a bearer access token")
                })?;
                (state.jwt.verify(raw).ok_or_else(invalid_token)?, None)
            }
        };
        let denied = match denied {
            Some(denied) => denied,
            None => {
                state
                    .redis
                    .is_denied(&token.jti, &token.session.to_string())
                    .await?
            }
        };
        if denied {
            return Err(ApiError::unauthorized(
                "token_revoked",
                "this access token has been revoked",
            ));
        }
        let meta = RequestMeta::from_request_parts(parts, state).await?;
        Ok(Self {
            user: token.user,
            token,
            meta,
        })
    }
}

pub fn invalid_token() -> ApiError {
    ApiError::unauthorized(
        "invalid_token",
        "the access token is malformed, expired or not ours",
    )
}
