//! Rate-limit middleware. Counters live in Redis, so limits hold across
//! every gateway instance; each gateway counts from a local lease of a
//! window's requests ([`crate::quota`]) and asks Redis once per chunk.
//! Auth endpoints count per client address; other API endpoints count per
//! user (per address when anonymous). Every answer carries
//! `RateLimit-Limit/Remaining/Reset`; over the limit is a 429 problem with
//! `Retry-After`. If Redis is down the request goes through unlimited
//! (logged) once its lease is spent: limits protect the service, they must
//! not stop it. Requests let through go on to the idempotency middleware
//! ([`crate::idempotency`]) in the same layer.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::caller::{bearer, Verified};
use crate::idempotency;
use crate::redis_keys::{Verdict, LIMIT};
use crate::state::AppState;
use crate::telemetry::RequestTimer;

/// The client's address: the socket peer, or the first `X-Forwarded-For`
/// hop when configured to trust a proxy in front.
pub fn client_addr(state: &AppState, headers: &HeaderMap, peer: Option<SocketAddr>) -> String {
    if state.config.trust_forwarded_for {
        let forwarded = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty());
        if let Some(addr) = forwarded {
            return addr.to_owned();
        }
    }
    peer.map_or_else(|| "unknown".to_owned(), |p| p.ip().to_string())
}

fn peer(req: &Request) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

fn unlimited(e: &redis::RedisError) {
    tracing::warn!(error = %e, "rate limiter unavailable; not limiting");
}

/// Refuses over the limit, else runs the idempotency middleware and the
/// route; and records the request's metrics (`timer`, started before the
/// limiter ran). One layer for all three because a layer costs every
/// request a boxed service clone, and every API route has them all; rate
/// limiting comes first so idempotent replays are counted too.
async fn enforce(
    state: AppState,
    timer: RequestTimer,
    policy: &str,
    verdict: Option<Verdict>,
    req: Request,
    next: Next,
) -> Response {
    let response = match verdict.filter(|v| !v.allowed) {
        Some(v) => {
            metrics::counter!("tandem_rate_limited_total", "policy" => policy.to_owned())
                .increment(1);
            v.rejection().into_response()
        }
        None => {
            let mut response = idempotency::middleware(State(state), req, next).await;
            if let Some(v) = verdict {
                write_if_absent(&v, response.headers_mut());
            }
            response
        }
    };
    timer.finish(&response);
    response
}

/// A handler may have answered with a tighter limit's headers (login per
/// account); those win.
fn write_if_absent(v: &Verdict, headers: &mut HeaderMap) {
    if !headers.contains_key(LIMIT) {
        v.write_headers(headers);
    }
}

pub async fn per_address(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let timer = RequestTimer::start(&req);
    let addr = client_addr(&state, req.headers(), peer(&req));
    let limit = state.config.rate_limits.auth_per_ip;
    let verdict = state.redis.hit("auth", &addr, limit).await;
    let verdict = verdict.inspect_err(unlimited).ok();
    enforce(state, timer, "auth", verdict, req, next).await
}

/// Per user when the bearer token verifies, else per address. For a user,
/// the token is checked against the denylist here too (in the same Redis
/// round trip when both need one) and the answer handed to the
/// [`crate::auth::caller::Caller`] extractor.
pub async fn per_user(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let timer = RequestTimer::start(&req);
    let limit = state.config.rate_limits.api_per_user;
    let verdict = match bearer(req.headers()).and_then(|t| state.jwt.verify(t)) {
        Some(token) => {
            let subject = format!("user:{}", token.user);
            let sid = token.session.to_string();
            let checked = state
                .redis
                .hit_and_check("api", &subject, limit, &token.jti, &sid)
                .await;
            let (verdict, denied) = match checked {
                Ok((verdict, denied)) => (Some(verdict), Some(denied)),
                Err(e) => {
                    unlimited(&e);
                    (None, None)
                }
            };
            req.extensions_mut().insert(Verified { token, denied });
            verdict
        }
        None => {
            let subject = format!("addr:{}", client_addr(&state, req.headers(), peer(&req)));
            let verdict = state.redis.hit("api", &subject, limit).await;
            verdict.inspect_err(unlimited).ok()
        }
    };
    enforce(state, timer, "api", verdict, req, next).await
}
