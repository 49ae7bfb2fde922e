//! Extractors whose rejections are problem+json like every other error:
//! [`ApiJson`] (400 malformed, 413 too large, 415 not JSON, 422 with the
//! offending field), [`ApiQuery`] (422 naming the parameter), [`ApiPath`] (a malformed id is an unknown resource:
//! 404), [`RequestMeta`] (request and correlation ids), and [`Fields`], the
//! collector that turns parse failures into one 422 listing every field.

use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use tandem_domain::values::InvalidValue;

use crate::error::{ApiError, FieldError};

pub const REQUEST_ID: &str = "x-request-id";
pub const CORRELATION_ID: &str = "x-correlation-id";

/// A JSON body, deserialized with the path of the first bad field known.
pub struct ApiJson<T>(pub T);

fn is_json(content_type: &str) -> bool {
    let mime = content_type.split(';').next().unwrap_or("").trim();
    mime.eq_ignore_ascii_case("application/json")
        || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// serde's message without its "at line 1 column 9" position.
fn clean(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let message = clean(&inner.to_string());
                // serde reports a missing field at its parent's path.
                let field = match message.strip_prefix("missing field `") {
                    Some(rest) => {
                        let name = rest.trim_end_matches('`');
                        if path == "." {
                            name.to_owned()
                        } else {
                            format!("{path}.{name}")
                        }
                    }
                    None if path == "." => "body".to_owned(),
                    None => path,
                };
                ApiError::field(&field, message)
            }
            serde_json::error::Category::Syntax
            | serde_json::error::Category::Eof
            | serde_json::error::Category::Io => {
                ApiError::malformed(format!("malformed JSON: {}", clean(&inner.to_string())))
            }
        }
    })
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let content_type = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !is_json(content_type) {
            return Err(ApiError::new(
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|rejection| match rejection {
                BytesRejection::FailedToBufferBody(_) if is_length_limit(&rejection) => {
                    ApiError::too_large()
                }
                other => ApiError::malformed(format!("could not read the body: {other}")),
            })?;
        parse_json(&bytes).map(ApiJson)
    }
}

fn is_length_limit(rejection: &BytesRejection) -> bool {
    rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE
}

/// Path parameters; one that doesn't parse (not a UUID) names nothing.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|_| ApiError::not_found("resource"))
    }
}

/// Query parameters; a mistyped one is a 422 naming it.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| ApiQuery(q.0))
            .map_err(|e| {
                // "Failed to deserialize query string: limit: invalid digit ..."
                let text = e.body_text();
                let detail = text.split_once("query string: ").map_or(&*text, |(_, d)| d);
                let field = detail
                    .split_once(": ")
                    .map(|(f, _)| f)
                    .filter(|f| f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or("query");
                ApiError::field(field, detail)
            })
    }
}

/// The ids that tie a request to the events it causes.
#[derive(Clone, Debug)]
pub struct RequestMeta {
    pub request_id: String,
    /// The client's `X-Correlation-Id`, if it sent a sane one.
    pub correlation_id: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for RequestMeta {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty() && v.len() <= 128)
                .map(str::to_owned)
        };
        Ok(Self {
            request_id: header(REQUEST_ID).unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
            correlation_id: header(CORRELATION_ID),
        })
    }
}

/// Collects field errors so one 422 can name every bad field at once.
#[derive(Default)]
pub struct Fields {
    errors: Vec<FieldError>,
}

impl Fields {
    pub fn check<T>(&mut self, field: &str, parsed: Result<T, InvalidValue>) -> Option<T> {
        match parsed {
            Ok(v) => Some(v),
            Err(e) => {
                self.fail(field, e.0);
                None
            }
        }
    }

    pub fn fail(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.to_owned(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    pub fn into_error(self) -> ApiError {
        ApiError::validation(self.errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        limit: u32,
    }

    #[test]
    fn syntax_errors_are_400_and_type_errors_name_the_field() {
        let e = parse_json::<Body>(b"{\"name\": ").unwrap_err();
        assert_eq!(e.status(), 400);
        let e = parse_json::<Body>(br#"{"name": "x", "limit": "ten"}"#).unwrap_err();
        assert_eq!(e.status(), 422);
        assert_eq!(e.problem().errors[0].field, "limit");
        let e = parse_json::<Body>(br#"{"limit": 1}"#).unwrap_err();
        assert_eq!(e.problem().errors[0].field, "name");
        assert!(!e.problem().errors[0].message.contains("line"));
        let e = parse_json::<Body>(br#"{"name": "x", "limit": 1, "extra": 2}"#).unwrap_err();
        assert_eq!(e.status(), 422);
    }

    #[test]
    fn json_media_types_are_recognized() {
        assert!(is_json("application/json"));
        assert!(is_json("application/json; charset=utf-8"));
        assert!(is_json("application/merge-patch+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json(""));
    }
}
