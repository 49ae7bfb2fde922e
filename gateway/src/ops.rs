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
    let read_side = if postgres.is_ok() {
        read_side_progress(&state).await.unwrap_or(json!(null))
    } else {
        json!(null)
    };
    let jobs = jobs_progress(&state, postgres.is_ok() && nats.is_ok()).await;
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
        "read_side": read_side,
        "jobs": jobs,
    });
    (status, Json(body))
}

/// The job machinery's backlog: work items waiting for an executor,
/// reports waiting for the desk, attempts running under a lease. Also
/// refreshes their gauges. `null` parts were not reachable.
async fn jobs_progress(state: &AppState, reachable: bool) -> serde_json::Value {
    if !reachable {
        return json!(null);
    }
    let Ok(names) = tandem_domain::envelope::BusNames::new(&state.config.namespace) else {
        return json!(null);
    };
    let js = async_nats::jetstream::new(state.nats.clone());
    let depth = |stream: String| {
        let js = js.clone();
        async move {
            let mut stream = js.get_stream(stream).await.ok()?;
            Some(stream.info().await.ok()?.state.messages)
        }
    };
    let queued = depth(names.jobs_stream()).await;
    let reports = depth(names.job_reports_stream()).await;
    let leases: Option<i64> = sqlx::query_scalar("SELECT count(*) FROM job_leases")
        .fetch_one(&state.write.pool)
        .await
        .ok();
    let gauge = |name: &'static str, value: Option<f64>| {
        if let Some(v) = value {
            metrics::gauge!(name).set(v);
        }
    };
    gauge("tandem_jobs_queued_items", queued.map(|n| n as f64));
    gauge("tandem_jobs_reports_pending", reports.map(|n| n as f64));
    gauge("tandem_jobs_running_leases", leases.map(|n| n as f64));
    json!({
        "queued_work_items": queued,
        "reports_pending": reports,
        "running_leases": leases,
    })
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    // Lag is head minus checkpoint, so it is computed when scraped.
    let _ = read_side_progress(&state).await;
    let _ = jobs_progress(&state, true).await;
    state.metrics.run_upkeep();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// Where the relay and each projection are against the log head, as
/// `/readyz` shows it; also refreshes the lag gauges. Lag does not make the
/// gateway unready: it still answers, `?min_position=` waits.
async fn read_side_progress(state: &AppState) -> Result<serde_json::Value, sqlx::Error> {
    let pool = &state.read.pool;
    let head = tandem_commands::log::head(pool).await?;
    let relay: Option<i64> = sqlx::query_scalar("SELECT max(position) FROM relay_checkpoints")
        .fetch_one(pool)
        .await?;
    let projections: serde_json::Map<String, serde_json::Value> = state
        .read
        .positions
        .by_projection()
        .into_iter()
        .map(|(name, position)| {
            let lag = (head - position).max(0);
            metrics::gauge!("tandem_projection_lag_events", "projection" => name.clone())
                .set(lag as f64);
            (name, json!({"position": position, "lag": lag}))
        })
        .collect();
    if let Some(relay) = relay {
        metrics::gauge!("tandem_relay_lag_events").set((head - relay).max(0) as f64);
    }
    let live = state.realtime.hub.position();
    metrics::gauge!("tandem_ws_live_lag_events").set((head - live).max(0) as f64);
    Ok(json!({
        "head_position": head,
        "relay_position": relay,
        "read_position": state.read.positions.current(),
        "projections": projections,
        "realtime": {
            "live_position": live,
            "lag": (head - live).max(0),
            "connections": state.realtime.connection_count(),
            "subscriptions": state.realtime.hub.subscriptions(),
        },
    }))
}
