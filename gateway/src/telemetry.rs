//! Logs and metrics. Logs are JSON in production and pretty on a
//! terminal; every request has a span with its `request_id`. Metrics go to
//! one process-wide Prometheus recorder served at `/metrics`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{OnceLock, RwLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// `format`: `json`, `pretty`, or `auto` (pretty on a terminal).
pub fn init_logs(format: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,async_nats=warn"));
    let pretty = match format {
        "json" => false,
        "pretty" => true,
        _ => std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests start many apps in one process) is harmless.
    let _ = if pretty {
        builder.try_init()
    } else {
        builder.json().flatten_event(true).try_init()
    };
}

/// The process-wide recorder; installed on first use.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ])
                .expect("non-empty buckets")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed");
            }
            handle
        })
        .clone()
}

/// Counts and times every routed request by route template and status.
/// The API routes are timed by their rate-limit middleware instead (one
/// middleware layer fewer per request: each costs a boxed clone of the
/// route's service); this layer serves the routes without one.
pub async fn track_requests(req: Request, next: Next) -> Response {
    let timer = RequestTimer::start(&req);
    let response = next.run(req).await;
    timer.finish(&response);
    response
}

/// One request's entry in the request metrics, from its start to its
/// answer.
pub struct RequestTimer {
    start: Instant,
    method: Method,
    route: Option<MatchedPath>,
}

impl RequestTimer {
    pub fn start(req: &Request) -> Self {
        Self {
            start: Instant::now(),
            method: req.method().clone(),
            route: req.extensions().get::<MatchedPath>().cloned(),
        }
    }

    pub fn finish(self, response: &Response) {
        let route = self.route.as_ref().map_or("unmatched", MatchedPath::as_str);
        let (requests, duration) = request_metrics(&self.method, route, response.status().as_u16());
        requests.increment(1);
        duration.record(self.start.elapsed().as_secs_f64());
    }
}

type RequestHandles = (metrics::Counter, metrics::Histogram);

/// The handles of one (method, route, status), registered on first use:
/// registering builds and hashes a labelled key, which a request should not
/// pay for every time.
fn request_metrics(method: &Method, route: &str, status: u16) -> RequestHandles {
    type ByRoute = HashMap<Box<str>, RequestHandles>;
    static HANDLES: OnceLock<RwLock<HashMap<(Method, u16), ByRoute>>> = OnceLock::new();
    let handles = HANDLES.get_or_init(Default::default);
    let known = handles
        .read()
        .expect("metrics handles lock")
        .get(&(method.clone(), status))
        .and_then(|by_route| by_route.get(route).cloned());
    if let Some(known) = known {
        return known;
    }
    let labels = [
        ("method", method.to_string()),
        ("route", route.to_owned()),
        ("status", status.to_string()),
    ];
    let registered = (
        metrics::counter!("tandem_http_requests_total", &labels),
        metrics::histogram!("tandem_http_request_duration_seconds", &labels),
    );
    handles
        .write()
        .expect("metrics handles lock")
        .entry((method.clone(), status))
        .or_default()
        .insert(route.into(), registered.clone());
    registered
}
