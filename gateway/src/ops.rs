//! Operations endpoints: `/healthz` (the process answers), `/readyz`
//! (Postgres, Redis and NATS reachable; the sequencer's state), `/metrics`.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::state::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Serialize, ToSchema)]
pub struct Health {
    status: &'static str,
}

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is alive", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

async fn check<F, T, E>(f: F) -> Result<T, String>
where
    F: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    match tokio::time::timeout(CHECK_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".to_owned()),
    }
}

fn verdict<T>(r: &Result<T, String>) -> Value {
    match r {
        Ok(_) => json!("ok"),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            json!("unavailable")
        }
    }
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Every dependency is reachable", body = Object),
        (status = 503, description = "A dependency is down", body = Object),
    ))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let pool = &state.write.pool;
    let postgres = check(sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(pool)).await;
    let redis = check(state.redis.ping()).await;
    let nats = match state.nats.connection_state() {
        async_nats::connection::State::Connected => Ok(()),
        other => Err(format!("{other:?}")),
    };
    let mut sequencer = json!(null);
    if postgres.is_ok() {
        let leader = check(tandem_commands::sequencer::leader_present(pool)).await;
        let head = check(tandem_commands::log::head(pool)).await;
        let backlog = check(tandem_commands::log::unsequenced(pool)).await;
        sequencer = json!({
            "leader": leader.ok(),
            "head_position": head.ok(),
            "unsequenced_events": backlog.ok(),
        });
    }
    let ready = postgres.is_ok() && redis.is_ok() && nats.is_ok();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ready { "ready" } else { "unavailable" },
        "checks": {
            "postgres": verdict(&postgres),
            "redis": verdict(&redis),
            "nats": verdict(&nats),
        },
        "sequencer": sequencer,
    });
    (status, Json(body))
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    state.metrics.run_upkeep();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
