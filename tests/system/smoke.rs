use reqwest::Method;
use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_registers_logs_in_and_creates_a_project_that_is_logged() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let r = app
        .as_user(&owner, Method::POST, "/projects")
        .json(&json!({"name": "Apollo", "description": "to the moon"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let position: i64 = r.headers()["tandem-position"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(r.headers()["etag"], "\"1\"");
    let b = body(r).await;
    assert_eq!(b["position"], position);
    assert_eq!(b["role"], "owner");
    let project = b["id"].as_str().unwrap();
    let events = app.events_of(project).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, "ProjectCreated");
    assert_eq!(events[0].1["actor_id"], owner.id.to_string());
    assert_eq!(events[0].1["project_id"], project);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_answer() {
    let app = spawn_app().await;
    let root = format!("http://{}", app.addr);
    let health = app
        .client
        .get(format!("{root}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready = app
        .client
        .get(format!("{root}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let ready = body(ready).await;
    for check in ["postgres", "redis", "nats"] {
        assert_eq!(ready["checks"][check], "ok", "{ready}");
    }
    assert_eq!(ready["sequencer"]["leader"], true, "{ready}");

    let owner = app.user().await;
    app.create_project(&owner).await;
    let metrics = app
        .client
        .get(format!("{root}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    // Both kinds of API route (limited per address, and per user) are
    // counted by route template and status.
    for series in [
        r#"tandem_http_requests_total{method="POST",route="/api/v1/auth/login",status="200"}"#,
        r#"tandem_http_requests_total{method="POST",route="/api/v1/projects",status="201"}"#,
        r#"tandem_http_request_duration_seconds_count{method="POST",route="/api/v1/projects",status="201"}"#,
    ] {
        assert!(text.contains(series), "{series} missing from\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_covers_every_command_and_swagger_ui_is_served_offline() {
    let app = spawn_app().await;
    let root = format!("http://{}", app.addr);
    let doc = body(
        app.client
            .get(format!("{root}/openapi.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let paths = doc["paths"].as_object().unwrap();
    let expected = [
        ("/api/v1/auth/register", "post"),
        ("/api/v1/auth/login", "post"),
        ("/api/v1/auth/refresh", "post"),
        ("/api/v1/auth/logout", "post"),
        ("/api/v1/me", "get"),
        ("/api/v1/me", "patch"),
        ("/api/v1/projects", "post"),
        ("/api/v1/projects/{id}", "patch"),
        ("/api/v1/projects/{id}", "delete"),
        ("/api/v1/projects/{id}/members", "post"),
        ("/api/v1/projects/{id}/members/{user_id}", "patch"),
        ("/api/v1/projects/{id}/members/{user_id}", "delete"),
        ("/api/v1/projects/{id}/workspaces", "post"),
        ("/api/v1/workspaces/{id}", "patch"),
        ("/api/v1/workspaces/{id}", "delete"),
        ("/api/v1/workspaces/{id}/files/{path}", "put"),
        ("/api/v1/workspaces/{id}/files/{path}", "delete"),
        ("/api/v1/projects/{id}/jobs", "post"),
        ("/api/v1/jobs/{id}/cancel", "post"),
        ("/api/v1/jobs/{id}/retry", "post"),
    ];
    for (path, method) in expected {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    let ui = app
        .client
        .get(format!("{root}/docs/"))
        .send()
        .await
        .unwrap();
    assert_eq!(ui.status(), 200);
    let html = ui.text().await.unwrap();
    assert!(html.contains("swagger"), "{html}");
    assert!(
        !html.contains("https://"),
        "Swagger UI must not load assets from the internet"
    );
    let bundle = app
        .client
        .get(format!("{root}/docs/swagger-ui-bundle.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(bundle.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_configured_origins_only() {
    let app = spawn_app_with(|o| {
        o.gateway.cors_origins = vec!["https://app.example.com".parse().unwrap()];
    })
    .await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/projects"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let allowed = preflight("https://app.example.com").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let refused = preflight("https://evil.example.net").await.unwrap();
    assert!(!refused
        .headers()
        .contains_key("access-control-allow-origin"));
}
