//! The documented problem+json answers, optimistic concurrency over HTTP,
//! `Idempotency-Key`, domain conflicts and log positions — and that the
//! log stays intact: no refused request appends an event.

use std::collections::HashSet;

use futures::future::join_all;
use reqwest::{Method, Response};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::*;

/// What is wrong with a problem document (RFC 9457 members missing, or
/// internals leaking); empty when nothing is.
pub fn problem_defects(text: &str) -> Vec<String> {
    let mut defects = Vec::new();
    let Ok(b) = serde_json::from_str::<Value>(text) else {
        return vec![format!("the problem is not JSON: {text}")];
    };
    for member in ["type", "title", "detail", "code"] {
        if b[member].as_str().is_none_or(str::is_empty) {
            defects.push(format!("`{member}` missing or empty in {text}"));
        }
    }
    if !b["status"].is_u64() {
        defects.push(format!("`status` is not a number in {text}"));
    }
    let lower = text.to_lowercase();
    for leak in ["sqlx", "panicked", "postgres", "events"] {
        if lower.contains(leak) {
            defects.push(format!("the problem leaks {leak:?}: {text}"));
        }
    }
    if text.contains("SELECT") {
        defects.push(format!("the problem leaks SQL: {text}"));
    }
    defects
}

/// Asserts a documented problem: status, `code`, problem+json, every RFC
/// 9457 member, nothing internal. Returns the body.
pub async fn documented_problem(r: Response, status: u16, code: &str) -> Value {
    let b = problem(r, status, code).await;
    let defects = problem_defects(&b.to_string());
    assert!(defects.is_empty(), "{defects:?}");
    b
}

fn header(r: &Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

async fn count_of(app: &TestApp, event_type: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = $1")
        .bind(event_type)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn save(app: &TestApp, user: &User, workspace: Uuid, path: &str, b: Value) -> Response {
    app.as_user(
        user,
        Method::PUT,
        &format!("/workspaces/{workspace}/files/{path}"),
    )
    .json(&b)
    .send()
    .await
    .unwrap()
}

async fn submit_job(app: &TestApp, user: &User, project: Uuid) -> Uuid {
    let r = app
        .as_user(user, Method::POST, &format!("/projects/{project}/jobs"))
        .json(&json!({"language": "python", "source": "print(1)"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    body(r).await["id"].as_str().unwrap().parse().unwrap()
}

// ---- malformed requests ----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_a_400_malformed_request() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let before = app.event_count().await;
    let r = app
        .as_user(&owner, Method::POST, "/projects")
        .header("content-type", "application/json")
        .body(r#"{"name": "#)
        .send()
        .await
        .unwrap();
    documented_problem(r, 400, "malformed_request").await;
    assert_eq!(app.event_count().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_json_is_a_415_unsupported_media_type() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let before = app.event_count().await;
    let r = app
        .as_user(&owner, Method::POST, "/projects")
        .header("content-type", "text/plain")
        .body(r#"{"name": "Apollo"}"#)
        .send()
        .await
        .unwrap();
    documented_problem(r, 415, "unsupported_media_type").await;
    let r = app
        .as_user(&owner, Method::POST, "/projects")
        .body(r#"{"name": "Apollo"}"#)
        .send()
        .await
        .unwrap();
    documented_problem(r, 415, "unsupported_media_type").await;
    assert_eq!(app.event_count().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mistyped_field_is_a_422_naming_the_field() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let project = app.create_project(&owner).await;
    let before = app.event_count().await;
    let r = app
        .as_user(&owner, Method::POST, "/projects")
        .json(&json!({"name": 42}))
        .send()
        .await
        .unwrap();
    let b = documented_problem(r, 422, "validation_failed").await;
    assert_eq!(b["errors"][0]["field"], "name", "{b}");
    assert!(b["errors"][0]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    let r = app
        .as_user(&owner, Method::POST, &format!("/projects/{project}/jobs"))
        .json(&json!({"language": "python", "source": "print(1)", "timeout_ms": "soon"}))
        .send()
        .await
        .unwrap();
    let b = documented_problem(r, 422, "validation_failed").await;
    assert_eq!(b["errors"][0]["field"], "timeout_ms", "{b}");
    assert_eq!(app.event_count().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_field_is_a_422() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let project = app.create_project(&owner).await;
    let before = app.event_count().await;
    let r = app
        .as_user(&owner, Method::POST, "/projects")
        .json(&json!({"name": "Apollo", "colour": "red"}))
        .send()
        .await
        .unwrap();
    let b = documented_problem(r, 422, "validation_failed").await;
    assert!(b["errors"].to_string().contains("colour"), "{b}");
    let r = app
        .as_user(&owner, Method::PATCH, &format!("/projects/{project}"))
        .json(&json!({"name": "Apollo 2", "owner": owner.id}))
        .send()
        .await
        .unwrap();
    documented_problem(r, 422, "validation_failed").await;
    assert_eq!(app.event_count().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_required_field_is_a_422_naming_it() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let project = app.create_project(&owner).await;
    let before = app.event_count().await;
    let r = app
        .as_user(&owner, Method::POST, "/projects")
        .json(&json!({"description": "no name"}))
        .send()
        .await
        .unwrap();
    let b = documented_problem(r, 422, "validation_failed").await;
    assert_eq!(b["errors"][0]["field"], "name", "{b}");
    let r = app
        .as_user(&owner, Method::POST, &format!("/projects/{project}/jobs"))
        .json(&json!({"source": "print(1)"}))
        .send()
        .await
        .unwrap();
    let b = documented_problem(r, 422, "validation_failed").await;
    assert_eq!(b["errors"][0]["field"], "language", "{b}");
    let r = app
        .as_user(
            &owner,
            Method::POST,
            &format!("/projects/{project}/members"),
        )
        .json(&json!({"user_id": owner.id}))
        .send()
        .await
        .unwrap();
    let b = documented_problem(r, 422, "validation_failed").await;
    assert_eq!(b["errors"][0]["field"], "role", "{b}");
    assert_eq!(app.event_count().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_configured_limit_is_a_413() {
    let app = spawn_app_with(|o| o.gateway.body_limit = 1024).await;
    let owner = app.user().await;
    let before = app.event_count().await;
    let big = json!({"name": "Apollo", "description": "x".repeat(2048)});
    let r = app
        .as_user(&owner, Method::POST, "/projects")
        .json(&big)
        .send()
        .await
        .unwrap();
    documented_problem(r, 413, "payload_too_large").await;
    // The idempotency layer reads the body first; same answer.
    let r = app
        .as_user(&owner, Method::POST, "/projects")
        .header("idempotency-key", "big-body")
        .json(&big)
        .send()
        .await
        .unwrap();
    documented_problem(r, 413, "payload_too_large").await;
    assert_eq!(app.event_count().await, before);
    // A body under the limit still goes through.
    app.create_project(&owner).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_save_over_the_default_one_mebibyte_limit_is_a_413() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let project = app.create_project(&owner).await;
    let workspace = app.create_workspace(&owner, project, "main").await;
    let before = app.event_count().await;
    let content = "x".repeat(1024 * 1024 + 512 * 1024);
    let r = save(
        &app,
        &owner,
        workspace,
        "big.txt",
        json!({ "content": content }),
    )
    .await;
    documented_problem(r, 413, "payload_too_large").await;
    assert_eq!(app.event_count().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_content_over_one_mebibyte_is_a_422_naming_content_when_the_body_fits() {
    let app = spawn_app_with(|o| o.gateway.body_limit = 4 * 1024 * 1024).await;
    let owner = app.user().await;
    let project = app.create_project(&owner).await;
    let workspace = app.create_workspace(&owner, project, "main").await;
    let before = app.event_count().await;
    let content = "x".repeat(1024 * 1024 + 1);
    let r = save(
        &app,
        &owner,
        workspace,
        "big.txt",
        json!({ "content": content }),
    )
    .await;
    let b = documented_problem(r, 422, "validation_failed").await;
    assert_eq!(b["errors"][0]["field"], "content", "{b}");
    assert_eq!(app.event_count().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_of_exactly_the_documented_maximum_size_can_be_saved() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let project = app.create_project(&owner).await;
    let workspace = app.create_workspace(&owner, project, "main").await;
    let content = "x".repeat(768 * 1024);
    let r = save(
        &app,
        &owner,
        workspace,
        "max.txt",
        json!({ "content": content }),
    )
    .await;
    let status = r.status();
    assert_eq!(status, 201, "{}", r.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_uuid_in_the_path_is_a_404() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let before = app.event_count().await;
    let r = app
        .as_user(&owner, Method::PATCH, "/projects/not-a-uuid")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    documented_problem(r, 404, "not_found").await;
    let r = app
        .as_user(&owner, Method::POST, "/jobs/12345/cancel")
        .send()
        .await
        .unwrap();
    documented_problem(r, 404, "not_found").await;
    let r = app
        .as_user(&owner, Method::PUT, "/workspaces/nope/files/a.txt")
        .json(&json!({"content": "x"}))
        .send()
        .await
        .unwrap();
    documented_problem(r, 404, "not_found").await;
    assert_eq!(app.event_count().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_project_is_a_404() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let before = app.event_count().await;
    let ghost = Uuid::now_v7();
    let r = app
        .as_user(&owner, Method::PATCH, &format!("/projects/{ghost}"))
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    documented_problem(r, 404, "not_found").await;
    let r = app
        .as_user(&owner, Method::POST, &format!("/projects/{ghost}/jobs"))
        .json(&json!({"language": "python", "source": "print(1)"}))
        .send()
        .await
        .unwrap();
    documented_problem(r, 404, "not_found").await;
    assert_eq!(app.event_count().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_route_is_a_404_problem() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let before = app.event_count().await;
    for path in ["/nope", "/projects/x/y/z/w", "/"] {
        let r = app.as_user(&owner, Method::GET, path).send().await.unwrap();
        documented_problem(r, 404, "not_found").await;
    }
    let r = app
        .client
        .get(format!("http://{}/definitely-not-here", app.addr))
        .send()
        .await
        .unwrap();
    documented_problem(r, 404, "not_found").await;
    assert_eq!(app.event_count().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_method_is_a_405_problem() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let project = app.create_project(&owner).await;
    let before = app.event_count().await;
    let members = format!("/projects/{project}/members/{}", owner.id);
    let r = app
        .as_user(&owner, Method::GET, &members)
        .send()
        .await
        .unwrap();
    documented_problem(r, 405, "method_not_allowed").await;
    let r = app
        .as_user(&owner, Method::PUT, &format!("/projects/{project}"))
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    documented_problem(r, 405, "method_not_allowed").await;
    let r = app
        .as_user(
            &owner,
            Method::GET,
            &format!("/jobs/{}/cancel", Uuid::now_v7()),
        )
        .send()
        .await
        .unwrap();
    documented_problem(r, 405, "method_not_allowed").await;
    assert_eq!(app.event_count().await, before);
}

// ---- optimistic concurrency ------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_answers_carry_the_new_version_as_etag() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let r = app
        .as_user(&owner, Method::POST, "/projects")
        .json(&json!({"name": "Apollo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "etag").as_deref(), Some("\"1\""));
    let project = body(r).await["id"].as_str().unwrap().to_owned();
    let r = app
        .as_user(&owner, Method::PATCH, &format!("/projects/{project}"))
        .json(&json!({"name": "Apollo 11"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "etag").as_deref(), Some("\"2\""));
    assert_eq!(body(r).await["version"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_if_match_is_a_412_with_the_current_version_and_the_right_one_succeeds() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let project = app.create_project(&owner).await;
    let path = format!("/projects/{project}");
    let r = app
        .as_user(&owner, Method::PATCH, &path)
        .json(&json!({"name": "Apollo 11"}))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "etag").as_deref(), Some("\"2\""));
    let before = app.event_count().await;
    let r = app
        .as_user(&owner, Method::PATCH, &path)
        .header("if-match", "\"1\"")
        .json(&json!({"name": "Apollo 12"}))
        .send()
        .await
        .unwrap();
    let b = documented_problem(r, 412, "precondition_failed").await;
    assert_eq!(b["current_version"], 2, "{b}");
    assert_eq!(app.event_count().await, before);
    let r = app
        .as_user(&owner, Method::PATCH, &path)
        .header("if-match", "\"2\"")
        .json(&json!({"name": "Apollo 12"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "etag").as_deref(), Some("\"3\""));
    assert_eq!(body(r).await["version"], 3);
    assert_eq!(app.event_count().await, before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_if_match_is_a_400_invalid_if_match() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let project = app.create_project(&owner).await;
    let before = app.event_count().await;
    for value in ["\"abc\"", "version-two", "\"-1\""] {
        let r = app
            .as_user(&owner, Method::PATCH, &format!("/projects/{project}"))
            .header("if-match", value)
            .json(&json!({"name": "Apollo 12"}))
            .send()
            .await
            .unwrap();
        documented_problem(r, 400, "invalid_if_match").await;
    }
    assert_eq!(app.event_count().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_saves_detect_stale_base_versions() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let project = app.create_project(&owner).await;
    let ws = app.create_workspace(&owner, project, "main").await;
    let first = save(
        &app,
        &owner,
        ws,
        "src/a.py",
        json!({"content": "v1", "base_version": 0}),
    )
    .await;
    assert_eq!(first.status(), 201);
    assert_eq!(header(&first, "etag").as_deref(), Some("\"1\""));
    assert_eq!(body(first).await["version"], 1);

    let before = app.event_count().await;
    let r = save(
        &app,
        &owner,
        ws,
        "src/a.py",
        json!({"content": "again", "base_version": 0}),
    )
    .await;
    let b = documented_problem(r, 409, "version_conflict").await;
    assert_eq!(b["current_version"], 1, "{b}");
    assert_eq!(app.event_count().await, before);

    let r = save(
        &app,
        &owner,
        ws,
        "src/a.py",
        json!({"content": "v2", "base_version": 1}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "etag").as_deref(), Some("\"2\""));
    assert_eq!(body(r).await["version"], 2);

    let before = app.event_count().await;
    let r = save(
        &app,
        &owner,
        ws,
        "src/a.py",
        json!({"content": "v2'", "base_version": 1}),
    )
    .await;
    let b = documented_problem(r, 409, "version_conflict").await;
    assert_eq!(b["current_version"], 2, "{b}");
    assert_eq!(app.event_count().await, before);

    let r = save(
        &app,
        &owner,
        ws,
        "src/a.py",
        json!({"content": "v3", "base_version": 2}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(body(r).await["version"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_if_match_on_a_file_save_is_a_412() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let project = app.create_project(&owner).await;
    let ws = app.create_workspace(&owner, project, "main").await;
    let r = save(&app, &owner, ws, "a.txt", json!({"content": "v1"})).await;
    assert_eq!(r.status(), 201);
    let r = save(&app, &owner, ws, "a.txt", json!({"content": "v2"})).await;
    assert_eq!(r.status(), 200);
    let before = app.event_count().await;
    let r = app
        .as_user(
            &owner,
            Method::PUT,
            &format!("/workspaces/{ws}/files/a.txt"),
        )
        .header("if-match", "\"1\"")
        .json(&json!({"content": "v3"}))
        .send()
        .await
        .unwrap();
    let b = documented_problem(r, 412, "precondition_failed").await;
    assert_eq!(b["current_version"], 2, "{b}");
    assert_eq!(app.event_count().await, before);
    let r = app
        .as_user(
            &owner,
            Method::PUT,
            &format!("/workspaces/{ws}/files/a.txt"),
        )
        .header("if-match", "\"2\"")
        .json(&json!({"content": "v3"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "etag").as_deref(), Some("\"3\""));
}

// ---- Idempotency-Key -------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_idempotency_key_returns_the_original_answer_and_writes_nothing() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let send = || {
        app.as_user(&owner, Method::POST, "/projects")
            .header("idempotency-key", "create-apollo-1")
            .json(&json!({"name": "Apollo", "description": "once"}))
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), 201);
    assert_eq!(header(&first, "idempotent-replayed"), None);
    let first_etag = header(&first, "etag");
    let first_position = header(&first, "tandem-position");
    let first_body = first.text().await.unwrap();
    let before = app.event_count().await;

    let second = send().await.unwrap();
    assert_eq!(second.status(), 201);
    assert_eq!(
        header(&second, "idempotent-replayed").as_deref(),
        Some("true")
    );
    assert_eq!(header(&second, "etag"), first_etag);
    assert_eq!(header(&second, "tandem-position"), first_position);
    let second_body = second.text().await.unwrap();
    assert_eq!(second_body, first_body);
    assert_eq!(app.event_count().await, before);
    assert_eq!(count_of(&app, "ProjectCreated").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_reused_with_another_body_is_a_422() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let r = app
        .as_user(&owner, Method::POST, "/projects")
        .header("idempotency-key", "k-1")
        .json(&json!({"name": "Apollo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let before = app.event_count().await;
    let r = app
        .as_user(&owner, Method::POST, "/projects")
        .header("idempotency-key", "k-1")
        .json(&json!({"name": "Gemini"}))
        .send()
        .await
        .unwrap();
    documented_problem(r, 422, "idempotency_key_reused").await;
    assert_eq!(app.event_count().await, before);
    assert_eq!(count_of(&app, "ProjectCreated").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_are_scoped_to_the_caller() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let bob = app.user().await;
    let mut ids = HashSet::new();
    for user in [&alice, &bob] {
        let r = app
            .as_user(user, Method::POST, "/projects")
            .header("idempotency-key", "shared-key")
            .json(&json!({"name": "Apollo"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        assert_eq!(header(&r, "idempotent-replayed"), None);
        ids.insert(body(r).await["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 2);
    assert_eq!(count_of(&app, "ProjectCreated").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_idempotency_key_create_one_project() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let answers = join_all((0..20).map(|_| async {
        let r = app
            .as_user(&owner, Method::POST, "/projects")
            .header("idempotency-key", "race-1")
            .json(&json!({"name": "Apollo"}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let etag = header(&r, "etag");
        (status, etag, r.text().await.unwrap())
    }))
    .await;
    let first = &answers[0];
    assert_eq!(first.0, 201, "{}", first.2);
    for answer in &answers {
        assert_eq!(answer, first);
    }
    assert_eq!(count_of(&app, "ProjectCreated").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_an_idempotency_key_each_create_a_project() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let a = app.create_project(&owner).await;
    let b = app.create_project(&owner).await;
    assert_ne!(a, b);
    assert_eq!(count_of(&app, "ProjectCreated").await, 2);
}

// ---- domain conflicts ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inviting_an_existing_member_is_a_409_already_member() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let mate = app.user().await;
    let project = app.create_project(&owner).await;
    app.invite(&owner, project, &mate, "viewer").await;
    let before = app.event_count().await;
    for b in [
        json!({"user_id": mate.id, "role": "collaborator"}),
        json!({"email": mate.email, "role": "viewer"}),
        json!({"user_id": owner.id, "role": "viewer"}),
    ] {
        let r = app
            .as_user(
                &owner,
                Method::POST,
                &format!("/projects/{project}/members"),
            )
            .json(&b)
            .send()
            .await
            .unwrap();
        documented_problem(r, 409, "already_member").await;
    }
    assert_eq!(app.event_count().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inviting_an_unknown_user_is_a_404_user_not_found() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let project = app.create_project(&owner).await;
    let before = app.event_count().await;
    for b in [
        json!({"email": "nobody-here@example.com", "role": "viewer"}),
        json!({"user_id": Uuid::now_v7(), "role": "viewer"}),
    ] {
        let r = app
            .as_user(
                &owner,
                Method::POST,
                &format!("/projects/{project}/members"),
            )
            .json(&b)
            .send()
            .await
            .unwrap();
        documented_problem(r, 404, "user_not_found").await;
    }
    assert_eq!(app.event_count().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn granting_the_owner_role_is_a_422_naming_role() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let mate = app.user().await;
    let project = app.create_project(&owner).await;
    let before = app.event_count().await;
    let r = app
        .as_user(
            &owner,
            Method::POST,
            &format!("/projects/{project}/members"),
        )
        .json(&json!({"user_id": mate.id, "role": "owner"}))
        .send()
        .await
        .unwrap();
    let b = documented_problem(r, 422, "validation_failed").await;
    assert_eq!(b["errors"][0]["field"], "role", "{b}");
    app.invite(&owner, project, &mate, "viewer").await;
    let before_change = app.event_count().await;
    let r = app
        .as_user(
            &owner,
            Method::PATCH,
            &format!("/projects/{project}/members/{}", mate.id),
        )
        .json(&json!({"role": "owner"}))
        .send()
        .await
        .unwrap();
    let b = documented_problem(r, 422, "validation_failed").await;
    assert_eq!(b["errors"][0]["field"], "role", "{b}");
    assert_eq!(app.event_count().await, before_change);
    assert_eq!(before_change, before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_workspace_name_is_a_409_workspace_name_taken() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let project = app.create_project(&owner).await;
    app.create_workspace(&owner, project, "main").await;
    let other = app.create_workspace(&owner, project, "other").await;
    let before = app.event_count().await;
    let r = app
        .as_user(
            &owner,
            Method::POST,
            &format!("/projects/{project}/workspaces"),
        )
        .json(&json!({"name": "main"}))
        .send()
        .await
        .unwrap();
    documented_problem(r, 409, "workspace_name_taken").await;
    let r = app
        .as_user(&owner, Method::PATCH, &format!("/workspaces/{other}"))
        .json(&json!({"name": "main"}))
        .send()
        .await
        .unwrap();
    documented_problem(r, 409, "workspace_name_taken").await;
    assert_eq!(app.event_count().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_missing_file_is_a_404_file_not_found() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let project = app.create_project(&owner).await;
    let ws = app.create_workspace(&owner, project, "main").await;
    let before = app.event_count().await;
    let r = app
        .as_user(
            &owner,
            Method::DELETE,
            &format!("/workspaces/{ws}/files/never.txt"),
        )
        .send()
        .await
        .unwrap();
    documented_problem(r, 404, "file_not_found").await;
    assert_eq!(app.event_count().await, before);
    // Deleted once, it is missing again.
    assert_eq!(
        save(&app, &owner, ws, "gone.txt", json!({"content": "x"}))
            .await
            .status(),
        201
    );
    let r = app
        .as_user(
            &owner,
            Method::DELETE,
            &format!("/workspaces/{ws}/files/gone.txt"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let before = app.event_count().await;
    let r = app
        .as_user(
            &owner,
            Method::DELETE,
            &format!("/workspaces/{ws}/files/gone.txt"),
        )
        .send()
        .await
        .unwrap();
    documented_problem(r, 404, "file_not_found").await;
    assert_eq!(app.event_count().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_cancelled_job_is_a_409_invalid_job_state() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let project = app.create_project(&owner).await;
    let job = submit_job(&app, &owner, project).await;
    let cancel = || {
        app.as_user(&owner, Method::POST, &format!("/jobs/{job}/cancel"))
            .send()
    };
    let r = cancel().await.unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(body(r).await["status"], "cancelled");
    let before = app.event_count().await;
    let r = cancel().await.unwrap();
    documented_problem(r, 409, "invalid_job_state").await;
    assert_eq!(app.event_count().await, before);
}

// ---- positions ---------------------------------------------------------------

/// The answer's `position`, checked against `Tandem-Position`.
async fn position_of(r: Response, status: u16, what: &str) -> (i64, Value) {
    assert_eq!(r.status().as_u16(), status, "{what}");
    let raw = header(&r, "tandem-position")
        .unwrap_or_else(|| panic!("{what}: no Tandem-Position header"));
    let from_header: i64 = raw
        .parse()
        .unwrap_or_else(|_| panic!("{what}: Tandem-Position {raw:?} is not a number"));
    let b = body(r).await;
    assert_eq!(b["position"].as_i64(), Some(from_header), "{what}: {b}");
    (from_header, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_answer_carries_its_log_position_and_positions_grow() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let mate = app.user().await;
    let mut positions: Vec<(String, i64)> = Vec::new();
    let mut record = |what: &str, p: i64| positions.push((what.to_owned(), p));

    let r = app
        .as_user(&owner, Method::POST, "/projects")
        .json(&json!({"name": "Apollo"}))
        .send()
        .await
        .unwrap();
    let (p, b) = position_of(r, 201, "create project").await;
    record("create project", p);
    let project = b["id"].as_str().unwrap().to_owned();

    let steps: Vec<(&str, Method, String, Option<Value>, u16)> = vec![
        (
            "update project",
            Method::PATCH,
            format!("/projects/{project}"),
            Some(json!({"name": "Apollo 11"})),
            200,
        ),
        (
            "invite",
            Method::POST,
            format!("/projects/{project}/members"),
            Some(json!({"user_id": mate.id, "role": "viewer"})),
            201,
        ),
        (
            "change role",
            Method::PATCH,
            format!("/projects/{project}/members/{}", mate.id),
            Some(json!({"role": "collaborator"})),
            200,
        ),
    ];
    for (what, method, path, payload, status) in steps {
        let mut req = app.as_user(&owner, method, &path);
        if let Some(p) = payload {
            req = req.json(&p);
        }
        let (p, _) = position_of(req.send().await.unwrap(), status, what).await;
        record(what, p);
    }
    let r = app
        .as_user(
            &owner,
            Method::POST,
            &format!("/projects/{project}/workspaces"),
        )
        .json(&json!({"name": "main"}))
        .send()
        .await
        .unwrap();
    let (p, b) = position_of(r, 201, "create workspace").await;
    record("create workspace", p);
    let ws = b["id"].as_str().unwrap().to_owned();
    let steps: Vec<(&str, Method, String, Option<Value>, u16)> = vec![
        (
            "rename workspace",
            Method::PATCH,
            format!("/workspaces/{ws}"),
            Some(json!({"name": "renamed"})),
            200,
        ),
        (
            "create file",
            Method::PUT,
            format!("/workspaces/{ws}/files/a.py"),
            Some(json!({"content": "print(1)"})),
            201,
        ),
        (
            "save file",
            Method::PUT,
            format!("/workspaces/{ws}/files/a.py"),
            Some(json!({"content": "print(2)", "base_version": 1})),
            200,
        ),
        (
            "delete file",
            Method::DELETE,
            format!("/workspaces/{ws}/files/a.py"),
            None,
            200,
        ),
    ];
    for (what, method, path, payload, status) in steps {
        let mut req = app.as_user(&owner, method, &path);
        if let Some(p) = payload {
            req = req.json(&p);
        }
        let (p, _) = position_of(req.send().await.unwrap(), status, what).await;
        record(what, p);
    }

    let r = app
        .as_user(&owner, Method::POST, &format!("/projects/{project}/jobs"))
        .json(&json!({"language": "python", "source": "print(1)"}))
        .send()
        .await
        .unwrap();
    let (p, b) = position_of(r, 202, "submit job").await;
    record("submit job", p);
    let job = b["id"].as_str().unwrap().to_owned();
    let steps: Vec<(&str, Method, String, u16)> = vec![
        (
            "cancel job",
            Method::POST,
            format!("/jobs/{job}/cancel"),
            202,
        ),
        ("retry job", Method::POST, format!("/jobs/{job}/retry"), 202),
        (
            "delete workspace",
            Method::DELETE,
            format!("/workspaces/{ws}"),
            200,
        ),
        (
            "remove member",
            Method::DELETE,
            format!("/projects/{project}/members/{}", mate.id),
            200,
        ),
        (
            "archive project",
            Method::DELETE,
            format!("/projects/{project}"),
            200,
        ),
    ];
    for (what, method, path, status) in steps {
        let r = app.as_user(&owner, method, &path).send().await.unwrap();
        let (p, _) = position_of(r, status, what).await;
        record(what, p);
    }

    for pair in positions.windows(2) {
        assert!(
            pair[1].1 > pair[0].1,
            "positions must grow: {} at {} then {} at {}",
            pair[0].0,
            pair[0].1,
            pair[1].0,
            pair[1].1
        );
    }
    let last = positions.last().unwrap().1;
    let logged: i64 = sqlx::query_scalar("SELECT max(position) FROM event_log")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        last, logged,
        "the last command's position is the log's last"
    );
}

/// Concurrent edits of one file version: one wins, and every loser is told
/// the version that really is current (loads that share a batch must not
/// replay an event twice, which would make a version up).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_concurrent_edits_of_one_version_one_wins_and_the_rest_hear_the_true_version() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let project = app.create_project(&owner).await;
    let ws = app.create_workspace(&owner, project, "w").await;
    for base in 0..3 {
        let r = save(
            &app,
            &owner,
            ws,
            "a.txt",
            json!({"content": format!("v{base}"), "base_version": base}),
        )
        .await;
        assert!(r.status().is_success(), "{}", r.status());
    }
    let edits = (0..16).map(|n| {
        let app = app.handle();
        let owner = owner.clone();
        async move {
            save(
                &app,
                &owner,
                ws,
                "a.txt",
                json!({"content": format!("edit {n}"), "base_version": 3}),
            )
            .await
        }
    });
    let mut won = 0;
    for r in join_all(edits).await {
        if r.status() == 200 {
            won += 1;
        } else {
            let b = documented_problem(r, 409, "version_conflict").await;
            assert_eq!(b["current_version"], 4, "{b}");
        }
    }
    assert_eq!(won, 1);
}
