//! `GET /api/v1/ws`: checks the `Origin` against the CORS allowlist (a
//! browser page from elsewhere must not ride on a user's token: cross-site
//! WebSocket hijacking), sets the frame limits and hands the socket to its
//! connection task. `?token=` is read here and never logged (the request
//! log records the path only).

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::connection;
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::state::AppState;

#[derive(Debug, Default, Deserialize)]
pub struct Params {
    /// An access token, for clients that cannot send a first message in
    /// time (the `auth` message is preferred: URLs end up in logs).
    #[serde(default)]
    token: Option<String>,
}

/// Opens a WebSocket; the protocol is in API.md, *Realtime*.
#[utoipa::path(
    get,
    path = "/ws",
    tag = "realtime",
    params(("token" = Option<String>, Query, description = "access token, if not sent as the first message")),
    responses(
        (status = 101, description = "switched to the WebSocket protocol"),
        (status = 400, description = "not a WebSocket upgrade", body = crate::error::Problem),
        (status = 403, description = "`origin_not_allowed`: the page's origin is not allowlisted", body = crate::error::Problem),
        (status = 503, description = "`unavailable`: the gateway is full", body = crate::error::Problem),
    )
)]
pub async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<Params>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    if let Some(origin) = headers.get(header::ORIGIN) {
        if !state.config.cors_origins.iter().any(|o| o == origin) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                "WebSockets are accepted only from allowlisted origins",
            ));
        }
    }
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::new(
            rejection.status(),
            "websocket_upgrade_required",
            "this endpoint speaks WebSocket: send a GET with an upgrade",
        )
    })?;
    if state.realtime.connection_count() >= state.realtime.config.max_connections {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "this gateway holds all the connections it can",
        ));
    }
    let limit = state.realtime.config.max_message_bytes;
    Ok(upgrade
        // Small buffers: an idle connection should cost kilobytes. They
        // grow as a large message needs.
        .read_buffer_size(2 * 1024)
        .write_buffer_size(8 * 1024)
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| connection::run(state, socket, params.token)))
}
