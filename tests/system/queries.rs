//! Black-box queries: every GET endpoint over the read models, with
//! `?min_position=` for read-your-writes, pagination, role visibility and
//! 404 for non-members.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::{body, problem, spawn_app, TestApp, User};

/// A GET that waits for `position` first; returns the status and body.
async fn get_at(app: &TestApp, user: &User, path: &str, position: i64) -> (StatusCode, Value) {
    let sep = if path.contains('?') { '&' } else { '?' };
    let r = app
        .as_user(
            user,
            Method::GET,
            &format!("{path}{sep}min_position={position}"),
        )
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, body(r).await)
}

async fn command(app: &TestApp, user: &User, method: Method, path: &str, payload: Value) -> Value {
    let r = app
        .as_user(user, method, path)
        .json(&payload)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    body(r).await
}

fn position(answer: &Value) -> i64 {
    answer["position"].as_i64().expect("commands are sequenced")
}

#[tokio::test]
async fn a_created_project_is_listed_at_its_position_every_time() {
    let app = spawn_app().await;
    let owner = app.user().await;
    for i in 0..10 {
        let created = command(
            &app,
            &owner,
            Method::POST,
            "/projects",
            json!({"name": format!("p{i}")}),
        )
        .await;
        let (status, list) = get_at(&app, &owner, "/projects", position(&created)).await;
        assert_eq!(status, StatusCode::OK);
        let ids: Vec<&str> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap())
            .collect();
        assert!(
            ids.contains(&created["id"].as_str().unwrap()),
            "round {i}: {list}"
        );
        assert_eq!(list["items"][0]["role"], "owner");
    }
}

#[tokio::test]
async fn project_detail_members_and_workspaces_follow_the_commands() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let viewer = app.user().await;
    let project = app.create_project(&owner).await;
    app.invite(&owner, project, &viewer, "viewer").await;
    let ws = app.create_workspace(&owner, project, "docs").await;
    let renamed = command(
        &app,
        &owner,
        Method::PATCH,
        &format!("/workspaces/{ws}"),
        json!({"name": "handbook"}),
    )
    .await;
    let at = position(&renamed);

    let (status, detail) = get_at(&app, &viewer, &format!("/projects/{project}"), at).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(detail["id"], project.to_string());
    assert_eq!(detail["role"], "viewer");
    assert_eq!(detail["member_count"], 2);
    assert_eq!(detail["owner_id"], owner.id.to_string());
    assert_eq!(detail["archived"], false);

    let (_, members) = get_at(&app, &viewer, &format!("/projects/{project}/members"), at).await;
    let mut roles: Vec<(String, String)> = members["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["user_id"].as_str().unwrap().to_owned(),
                m["role"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    roles.sort();
    let mut expected = vec![
        (owner.id.to_string(), "owner".to_owned()),
        (viewer.id.to_string(), "viewer".to_owned()),
    ];
    expected.sort();
    assert_eq!(roles, expected);
    assert_eq!(members["items"][0]["display_name"], "Tester");

    let (_, workspaces) = get_at(
        &app,
        &viewer,
        &format!("/projects/{project}/workspaces"),
        at,
    )
    .await;
    assert_eq!(workspaces["items"].as_array().unwrap().len(), 1);
    assert_eq!(workspaces["items"][0]["name"], "handbook");
    let (status, one) = get_at(&app, &viewer, &format!("/workspaces/{ws}"), at).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["project_id"], project.to_string());
}

#[tokio::test]
async fn files_list_content_and_old_versions() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let project = app.create_project(&owner).await;
    let ws = app.create_workspace(&owner, project, "src").await;
    command(
        &app,
        &owner,
        Method::PUT,
        &format!("/workspaces/{ws}/files/lib/a.py"),
        json!({"content": "one"}),
    )
    .await;
    command(
        &app,
        &owner,
        Method::PUT,
        &format!("/workspaces/{ws}/files/b.txt"),
        json!({"content": "bee"}),
    )
    .await;
    let second = command(
        &app,
        &owner,
        Method::PUT,
        &format!("/workspaces/{ws}/files/lib/a.py"),
        json!({"content": "two!"}),
    )
    .await;
    let at = position(&second);

    let (_, list) = get_at(&app, &owner, &format!("/workspaces/{ws}/files"), at).await;
    let paths: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["b.txt", "lib/a.py"]);
    assert_eq!(list["items"][1]["version"], 2);
    assert_eq!(list["items"][1]["size_bytes"], 4);

    let r = app
        .as_user(
            &owner,
            Method::GET,
            &format!("/workspaces/{ws}/files/lib/a.py?min_position={at}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["etag"], "\"2\"");
    let current = body(r).await;
    assert_eq!(current["content"], "two!");
    assert_eq!(current["current_version"], 2);

    let (status, old) = get_at(
        &app,
        &owner,
        &format!("/workspaces/{ws}/files/lib/a.py?version=1"),
        at,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(old["content"], "one");
    assert_eq!(old["version"], 1);
    assert_eq!(old["current_version"], 2);

    let deleted = command(
        &app,
        &owner,
        Method::DELETE,
        &format!("/workspaces/{ws}/files/b.txt"),
        json!({}),
    )
    .await;
    let (status, _) = get_at(
        &app,
        &owner,
        &format!("/workspaces/{ws}/files/b.txt"),
        position(&deleted),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get_at(
        &app,
        &owner,
        &format!("/workspaces/{ws}/files/lib/a.py?version=9"),
        at,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn jobs_list_with_status_filter_and_detail() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let project = app.create_project(&owner).await;
    let first = command(
        &app,
        &owner,
        Method::POST,
        &format!("/projects/{project}/jobs"),
        json!({"language": "python", "source": "print(1)"}),
    )
    .await;
    let second = command(
        &app,
        &owner,
        Method::POST,
        &format!("/projects/{project}/jobs"),
        json!({"language": "bash", "source": "echo 2"}),
    )
    .await;
    let cancelled = command(
        &app,
        &owner,
        Method::POST,
        &format!("/jobs/{}/cancel", second["id"].as_str().unwrap()),
        json!({}),
    )
    .await;
    let at = position(&cancelled);

    let (_, all) = get_at(&app, &owner, &format!("/projects/{project}/jobs"), at).await;
    let ids: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            second["id"].as_str().unwrap(),
            first["id"].as_str().unwrap()
        ],
        "newest first"
    );

    let (_, queued) = get_at(
        &app,
        &owner,
        &format!("/projects/{project}/jobs?status=queued"),
        at,
    )
    .await;
    assert_eq!(queued["items"].as_array().unwrap().len(), 1);
    assert_eq!(queued["items"][0]["id"], first["id"]);
    assert_eq!(queued["items"][0]["language"], "python");

    let (status, detail) = get_at(
        &app,
        &owner,
        &format!("/jobs/{}", second["id"].as_str().unwrap()),
        at,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(detail["status"], "cancelled");
    assert_eq!(detail["attempts"], json!([]));
    assert!(detail["finished_at"].is_string());

    let r = app
        .as_user(
            &owner,
            Method::GET,
            &format!("/projects/{project}/jobs?status=sleeping"),
        )
        .send()
        .await
        .unwrap();
    problem(r, 422, "validation_failed").await;
}

#[tokio::test]
async fn non_members_get_404_from_every_query_and_members_see_only_theirs() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let stranger = app.user().await;
    let project = app.create_project(&owner).await;
    let ws = app.create_workspace(&owner, project, "w").await;
    let saved = command(
        &app,
        &owner,
        Method::PUT,
        &format!("/workspaces/{ws}/files/x"),
        json!({"content": "x"}),
    )
    .await;
    let job = command(
        &app,
        &owner,
        Method::POST,
        &format!("/projects/{project}/jobs"),
        json!({"language": "bash", "source": "true"}),
    )
    .await;
    let at = position(&job).max(position(&saved));
    let paths = [
        format!("/projects/{project}"),
        format!("/projects/{project}/members"),
        format!("/projects/{project}/workspaces"),
        format!("/projects/{project}/jobs"),
        format!("/workspaces/{ws}"),
        format!("/workspaces/{ws}/files"),
        format!("/workspaces/{ws}/files/x"),
        format!("/jobs/{}", job["id"].as_str().unwrap()),
    ];
    for path in &paths {
        let r = app
            .as_user(&stranger, Method::GET, &format!("{path}?min_position={at}"))
            .send()
            .await
            .unwrap();
        let answer = problem(r, 404, "not_found").await;
        // The same answer as for something that does not exist.
        let missing = app
            .as_user(
                &stranger,
                Method::GET,
                &format!("/projects/{}", Uuid::now_v7()),
            )
            .send()
            .await
            .unwrap();
        let missing = problem(missing, 404, "not_found").await;
        assert_eq!(answer["type"], missing["type"], "{path}");
        // The owner sees it.
        let (status, _) = get_at(&app, &owner, path, at).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    let (_, theirs) = get_at(&app, &stranger, "/projects", at).await;
    assert_eq!(theirs["items"], json!([]));
    let r = app.request(Method::GET, "/projects").send().await.unwrap();
    problem(r, 401, "unauthenticated").await;
}

#[tokio::test]
async fn project_lists_page_with_cursors_and_hide_archived_projects() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let mut created = Vec::new();
    let mut at = 0;
    for i in 0..5 {
        let p = command(
            &app,
            &owner,
            Method::POST,
            "/projects",
            json!({"name": format!("p{i}")}),
        )
        .await;
        at = position(&p);
        created.push(p["id"].as_str().unwrap().to_owned());
    }
    let archived = command(
        &app,
        &owner,
        Method::DELETE,
        &format!("/projects/{}", created[0]),
        json!({}),
    )
    .await;
    at = at.max(position(&archived));

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/projects?limit=2&cursor={c}"),
            None => "/projects?limit=2".to_owned(),
        };
        let (status, page) = get_at(&app, &owner, &path, at).await;
        assert_eq!(status, StatusCode::OK);
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|p| p["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mut expected: Vec<String> = created[1..].iter().rev().cloned().collect();
    assert_eq!(seen, expected, "newest first, archived hidden");

    let (_, everything) = get_at(
        &app,
        &owner,
        "/projects?include_archived=true&limit=200",
        at,
    )
    .await;
    expected.push(created[0].clone());
    let all: Vec<String> = everything["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(all, expected);
    assert_eq!(everything["items"][4]["archived"], true);

    for bad in ["limit=0", "limit=201", "limit=ten", "cursor=nope!"] {
        let r = app
            .as_user(&owner, Method::GET, &format!("/projects?{bad}"))
            .send()
            .await
            .unwrap();
        problem(r, 422, "validation_failed").await;
    }
}

#[tokio::test]
async fn a_position_the_read_side_never_reaches_is_503_not_caught_up() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let r = app
        .as_user(&owner, Method::GET, "/projects?min_position=999999999")
        .send()
        .await
        .unwrap();
    let answer = problem(r, 503, "not_caught_up").await;
    assert!(answer["detail"].as_str().unwrap().contains("999999999"));
    let r = app
        .as_user(&owner, Method::GET, "/projects?min_position=-3")
        .send()
        .await
        .unwrap();
    problem(r, 422, "validation_failed").await;
}

#[tokio::test]
async fn cached_project_detail_follows_updates_at_their_position() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let project = app.create_project(&owner).await;
    for i in 0..5 {
        let name = format!("name {i}");
        let updated = command(
            &app,
            &owner,
            Method::PATCH,
            &format!("/projects/{project}"),
            json!({"name": name}),
        )
        .await;
        // Read twice: the second answer may come from the cache.
        for _ in 0..2 {
            let (_, detail) = get_at(
                &app,
                &owner,
                &format!("/projects/{project}"),
                position(&updated),
            )
            .await;
            assert_eq!(detail["name"], name);
        }
        let (_, list) = get_at(&app, &owner, "/projects", position(&updated)).await;
        assert_eq!(list["items"][0]["name"], name);
    }
}

#[tokio::test]
async fn readyz_and_metrics_report_each_projections_position_and_lag() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let created = command(
        &app,
        &owner,
        Method::POST,
        "/projects",
        json!({"name": "lag"}),
    )
    .await;
    let at = position(&created);
    // Once a query has seen the position, /readyz must report it.
    get_at(&app, &owner, "/projects", at).await;
    let ready = body(app.ops("readyz").await).await;
    let read_side = &ready["read_side"];
    assert!(
        read_side["head_position"].as_i64().unwrap() >= at,
        "{ready}"
    );
    assert!(
        read_side["read_position"].as_i64().unwrap() >= at,
        "{ready}"
    );
    for name in ["users", "projects", "files", "jobs", "activity"] {
        let projection = &read_side["projections"][name];
        assert!(
            projection["position"].as_i64().unwrap() >= at,
            "{name}: {ready}"
        );
        assert!(projection["lag"].as_i64().unwrap() >= 0, "{name}: {ready}");
    }
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("tandem_projection_lag_events{projection=\"files\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_cached_project_list_follows_invitations_and_removals_of_its_user() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let guest = app.user().await;
    let project = app.create_project(&owner).await;
    // The guest's (empty) list is cached first.
    let (_, empty) = get_at(&app, &guest, "/projects", 0).await;
    assert_eq!(empty["items"], json!([]));
    let (_, again) = get_at(&app, &guest, "/projects", 0).await;
    assert_eq!(again["items"], json!([]));

    let invited = command(
        &app,
        &owner,
        Method::POST,
        &format!("/projects/{project}/members"),
        json!({"user_id": guest.id, "role": "viewer"}),
    )
    .await;
    let (_, listed) = get_at(&app, &guest, "/projects", position(&invited)).await;
    assert_eq!(listed["items"][0]["id"], project.to_string());
    assert_eq!(listed["items"][0]["role"], "viewer");

    let removed = command(
        &app,
        &owner,
        Method::DELETE,
        &format!("/projects/{project}/members/{}", guest.id),
        json!({}),
    )
    .await;
    let (_, gone) = get_at(&app, &guest, "/projects", position(&removed)).await;
    assert_eq!(gone["items"], json!([]));
    // Without min_position too, once the invalidation has run.
    crate::support::eventually(std::time::Duration::from_secs(10), || async {
        let r = app
            .as_user(&guest, Method::GET, "/projects")
            .send()
            .await
            .unwrap();
        (body(r).await["items"] == json!([])).then_some(())
    })
    .await;
}
