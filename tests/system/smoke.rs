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
    let position: i64 = r.headers()["tandem-position"].to_str().unwrap().parse().unwrap();
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
