//! How accepted commands answer: the body (which includes `position`),
//! `Tandem-Position` when the events were sequenced in time, `ETag` with
//! the aggregate's new version, and `Location` for created resources.
//! Also [`IfMatch`], the optimistic-concurrency precondition.

use axum::extract::FromRequestParts;
use axum::http::header::{ETAG, IF_MATCH, LOCATION};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use tandem_commands::Committed;

use crate::error::ApiError;

pub const POSITION_HEADER: &str = "tandem-position";

pub struct Reply<T> {
    status: StatusCode,
    body: T,
    position: Option<i64>,
    version: Option<u64>,
    location: Option<String>,
}

impl<T: Serialize> Reply<T> {
    pub fn new(status: StatusCode, body: T, committed: &Committed) -> Self {
        Self {
            status,
            body,
            position: committed.position,
            version: Some(committed.version),
            location: None,
        }
    }

    pub fn located(mut self, location: String) -> Self {
        self.location = Some(location);
        self
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// For answers whose version is not the resource's ETag.
    pub fn without_etag(mut self) -> Self {
        self.version = None;
        self
    }
}

pub fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits are a valid header")
}

/// Adds `Tandem-Position` when the events were sequenced in time.
pub fn set_position(response: &mut Response, position: Option<i64>) {
    if let Some(p) = position {
        response
            .headers_mut()
            .insert(POSITION_HEADER, HeaderValue::from(p));
    }
}

impl<T: Serialize> IntoResponse for Reply<T> {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        set_position(&mut response, self.position);
        let headers = response.headers_mut();
        if let Some(v) = self.version {
            headers.insert(ETAG, etag(v));
        }
        if let Some(l) = self.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
            headers.insert(LOCATION, l);
        }
        response
    }
}

/// `If-Match: "7"` → `Some(7)`; absent or `*` → `None` (no precondition).
pub struct IfMatch(pub Option<u64>);

pub fn parse_if_match(raw: &str) -> Option<Option<u64>> {
    let raw = raw.trim();
    if raw == "*" {
        return Some(None);
    }
    let unquoted = raw.strip_prefix("W/").unwrap_or(raw);
    let digits = unquoted
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(unquoted);
    digits.parse().ok().map(Some)
}

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(IF_MATCH) else {
            return Ok(Self(None));
        };
        value
            .to_str()
            .ok()
            .and_then(parse_if_match)
            .map(Self)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_if_match",
                    "If-Match must be an ETag this API sent, like \"3\"",
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::parse_if_match;

    #[test]
    fn if_match_accepts_our_etags() {
        assert_eq!(parse_if_match("\"3\""), Some(Some(3)));
        assert_eq!(parse_if_match("W/\"12\""), Some(Some(12)));
        assert_eq!(parse_if_match("5"), Some(Some(5)));
        assert_eq!(parse_if_match("*"), Some(None));
        assert_eq!(parse_if_match("\"abc\""), None);
    }
}
