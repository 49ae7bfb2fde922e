//! `Idempotency-Key` middleware for POST commands. The key is scoped to
//! the caller (user, or client address when anonymous) and bound to a hash
//! of method, path and body: the same key and body replay the stored
//! answer (`Idempotent-Replayed: true`) and write nothing; the same key
//! with another body is a 422; a concurrent duplicate waits for the first.
//! Answers ≥ 500 are not stored, so a retry after a failure runs again.
//! Login, refresh and logout ignore the header: their answers hold tokens,
//! which are never stored.

use std::net::SocketAddr;

use axum::body::{to_bytes, Body};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use tandem_commands::idempotency::{Claim, StoredResponse};

use crate::auth::caller::{bearer, Verified};
use crate::error::ApiError;
use crate::rate_limit::client_addr;
use crate::state::AppState;

pub const HEADER: &str = "idempotency-key";
const REPLAYED: &str = "idempotent-replayed";
/// Headers worth replaying; the rest are recomputed per answer.
const KEPT_HEADERS: [&str; 4] = ["content-type", "etag", "location", "tandem-position"];
const UNSTORED_PATHS: [&str; 3] = ["/auth/login", "/auth/refresh", "/auth/logout"];

fn valid_key(key: &str) -> bool {
    (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

pub async fn middleware(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match run(state, req, next).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn run(state: AppState, req: Request, next: Next) -> Result<Response, ApiError> {
    let path = req.uri().path();
    let key = match req.headers().get(HEADER) {
        Some(key)
            if req.method() == Method::POST
                && !UNSTORED_PATHS.iter().any(|p| path.ends_with(p)) =>
        {
            key
        }
        _ => return Ok(next.run(req).await),
    };
    let path = path.to_owned();
    let key = key
        .to_str()
        .ok()
        .filter(|k| valid_key(k))
        .ok_or_else(|| {
            ApiError::malformed("Idempotency-Key must be 1 to 255 visible ASCII characters")
        })?
        .to_owned();
    let scope = scope(&state, &req);
    let (parts, body) = req.into_parts();
    let bytes = to_bytes(body, state.config.body_limit)
        .await
        .map_err(|_| ApiError::too_large())?;
    let mut hasher = Sha256::new();
    hasher.update(parts.method.as_str());
    hasher.update(b" ");
    hasher.update(path.as_bytes());
    hasher.update(b"\n");
    hasher.update(&bytes);
    let hash = hasher.finalize().to_vec();

    let store = &state.write.idempotency;
    let claim = store
        .claim(&scope, &key, &hash, state.config.idempotency_wait)
        .await?;
    match claim {
        Claim::Replay(stored) => Ok(replay(stored)),
        Claim::Mismatch => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different request",
        )),
        Claim::InFlight => Err(ApiError::conflict(
            "idempotency_in_progress",
            "a request with this Idempotency-Key is still being processed",
        )),
        Claim::Fresh => {
            let response = next
                .run(Request::from_parts(parts, Body::from(bytes)))
                .await;
            let (parts, body) = response.into_parts();
            let body = to_bytes(body, usize::MAX)
                .await
                .map_err(|e| ApiError::internal(&e))?;
            if parts.status.is_server_error() {
                store.release(&scope, &key).await?;
            } else {
                let headers = KEPT_HEADERS
                    .iter()
                    .filter_map(|h| {
                        let v = parts.headers.get(*h)?.to_str().ok()?;
                        Some(((*h).to_owned(), v.to_owned()))
                    })
                    .collect();
                let stored = StoredResponse {
                    status: parts.status.as_u16(),
                    headers,
                    body: body.to_vec(),
                };
                store.complete(&scope, &key, &stored).await?;
            }
            Ok(Response::from_parts(parts, Body::from(body)))
        }
    }
}

fn scope(state: &AppState, req: &Request) -> String {
    if let Some(verified) = req.extensions().get::<Verified>() {
        return format!("user:{}", verified.token.user);
    }
    if let Some(token) = bearer(req.headers()).and_then(|t| state.jwt.verify(t)) {
        return format!("user:{}", token.user);
    }
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    format!("addr:{}", client_addr(state, req.headers(), peer))
}

fn replay(stored: StoredResponse) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let mut response = (status, stored.body).into_response();
    let headers = response.headers_mut();
    for (name, value) in stored.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.insert(n, v);
        }
    }
    headers.insert(REPLAYED, HeaderValue::from_static("true"));
    response
}

#[cfg(test)]
mod tests {
    use super::valid_key;

    #[test]
    fn keys_are_short_visible_ascii() {
        assert!(valid_key("9f1c-42"));
        assert!(!valid_key(""));
        assert!(!valid_key("has space"));
        assert!(!valid_key(&"k".repeat(256)));
    }
}
