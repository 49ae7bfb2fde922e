//! Assembling the HTTP application: [`router`] builds the whole `Router`
//! (so tests can drive it), [`serve`] runs it on a listener until a
//! shutdown future resolves.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderName, Method, StatusCode};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::auth::routes::{auth_routes, me_routes};
use crate::error::ApiError;
use crate::extract::REQUEST_ID;
use crate::openapi::ApiDoc;
use crate::routes::{files, jobs, members, projects, workspaces};
use crate::state::AppState;
use crate::{ops, queries, rate_limit, realtime, telemetry};

fn api(state: &AppState) -> OpenApiRouter<AppState> {
    // Each rate limiter runs the idempotency middleware after it.
    let auth = auth_routes().layer(from_fn_with_state(state.clone(), rate_limit::per_address));
    let rest = OpenApiRouter::new()
        .merge(me_routes())
        .merge(projects::routes())
        .merge(members::routes())
        .merge(workspaces::routes())
        // `{*path}` may hold slashes; utoipa-axum cannot register a
        // wildcard, so the route is added by hand and documented in ApiDoc.
        .route(
            "/workspaces/{id}/files/{*path}",
            get(queries::files::get_file)
                .put(files::save_file)
                .delete(files::delete_file),
        )
        .merge(jobs::routes())
        .merge(queries::projects::routes())
        .merge(queries::workspaces::routes())
        .merge(queries::files::routes())
        .merge(queries::jobs::routes())
        .layer(from_fn_with_state(state.clone(), rate_limit::per_user));
    // The socket authenticates in-band, and is limited per connection; the
    // rate limiters time the other routes themselves.
    let realtime = OpenApiRouter::new()
        .routes(utoipa_axum::routes!(realtime::route::upgrade))
        .route_layer(from_fn(telemetry::track_requests));
    auth.merge(rest).merge(realtime)
}

fn cors(state: &AppState) -> CorsLayer {
    let exposed = [
        header::ETAG,
        header::LOCATION,
        header::RETRY_AFTER,
        HeaderName::from_static("tandem-position"),
        HeaderName::from_static("ratelimit-limit"),
        HeaderName::from_static("ratelimit-remaining"),
        HeaderName::from_static("ratelimit-reset"),
        HeaderName::from_static(REQUEST_ID),
    ];
    let allowed = [
        header::AUTHORIZATION,
        header::CONTENT_TYPE,
        header::IF_MATCH,
        HeaderName::from_static("idempotency-key"),
        HeaderName::from_static(REQUEST_ID),
        HeaderName::from_static("x-correlation-id"),
    ];
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(state.config.cors_origins.clone()))
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers(allowed)
        .expose_headers(exposed)
        .max_age(Duration::from_secs(600))
}

/// A panic in a handler is a bug: log it, answer an opaque problem.
fn panicked(cause: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    let message = cause
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| cause.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    let error = std::io::Error::other(format!("handler panicked: {message}"));
    axum::response::IntoResponse::into_response(ApiError::internal(&error))
}

async fn no_route() -> ApiError {
    ApiError::not_found("resource")
}

async fn wrong_method() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this resource does not support that method",
    )
}

/// The whole application.
pub fn router(state: AppState) -> Router {
    let (api, api_doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v1", api(&state))
        .split_for_parts();
    let span = |req: &axum::http::Request<_>| {
        let request_id = req
            .headers()
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        tracing::info_span!("request", method = %req.method(), uri = %req.uri().path(), request_id)
    };
    Router::new()
        .merge(api)
        .merge(SwaggerUi::new("/docs").url("/openapi.json", api_doc))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(CatchPanicLayer::custom(panicked))
        .layer(DefaultBodyLimit::max(state.config.body_limit))
        .layer(cors(&state))
        .layer(PropagateRequestIdLayer::new(HeaderName::from_static(
            REQUEST_ID,
        )))
        .layer(TraceLayer::new_for_http().make_span_with(span))
        .layer(SetRequestIdLayer::new(
            HeaderName::from_static(REQUEST_ID),
            MakeRequestUuid,
        ))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains.
/// Every connection is `TCP_NODELAY`: without it, a WebSocket frame sent
/// while the previous one is unacknowledged waits for the client's delayed
/// ACK (up to 40 ms on Linux).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = listener.tap_io(|stream| {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
