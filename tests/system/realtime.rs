//! `GET /api/v1/ws`: subscriptions with catch-up and resume, the seam
//! between log and live, several gateways, presence, cursors, job output,
//! membership, auth, limits and slow consumers.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tandem::bench::ws_client::{Incoming, WsClient};
use tandem_domain::envelope::BusNames;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::support::{
    body, eventually, nats_url, redis_url, spawn_app, spawn_app_with, TestApp, User,
};

const WAIT: Duration = Duration::from_secs(15);
/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(700);

async fn connect(app: &TestApp, user: &User) -> WsClient {
    WsClient::connect(&app.ws_url(), &user.access)
        .await
        .expect("socket opens and authenticates")
}

/// The next frame, skipping presence announcements unless asked for.
async fn next(ws: &mut WsClient) -> Value {
    loop {
        let frame = ws
            .recv_within(WAIT)
            .await
            .unwrap()
            .expect("a frame in time")
            .frame();
        if frame["op"] != "presence" {
            return frame;
        }
    }
}

async fn expect_op(ws: &mut WsClient, op: &str) -> Value {
    let frame = next(ws).await;
    assert_eq!(frame["op"], op, "got {frame}");
    frame
}

async fn subscribe(ws: &mut WsClient, project: Uuid, since: Option<i64>) -> Value {
    ws.subscribe(project, since).await.unwrap();
    expect_op(ws, "subscribed").await
}

/// Subscribes for what happens from now on: `since` = the project's last
/// position in the log (live may start earlier, while the hub catches up
/// with the relay; `since` keeps those out).
async fn subscribe_now(app: &TestApp, ws: &mut WsClient, project: Uuid) -> Value {
    let latest = log_positions(app, project, 0).await.last().copied();
    subscribe(ws, project, latest).await
}

/// Positions of the next `n` event frames.
async fn events(ws: &mut WsClient, n: usize) -> Vec<i64> {
    let mut positions = Vec::with_capacity(n);
    while positions.len() < n {
        let frame = expect_op(ws, "event").await;
        assert_eq!(frame["position"], frame["event"]["position"]);
        positions.push(frame["position"].as_i64().unwrap());
    }
    positions
}

/// Asserts no event (or anything but presence) arrives for a while.
async fn quiet(ws: &mut WsClient) {
    loop {
        match ws.recv_within(QUIET).await.unwrap() {
            None => return,
            Some(Incoming::Frame(f)) if f["op"] == "presence" => {}
            Some(other) => panic!("expected silence, got {other:?}"),
        }
    }
}

/// The error frame and close code a server goodbye consists of.
async fn goodbye(ws: &mut WsClient) -> (Value, Option<u16>) {
    let mut error = Value::Null;
    loop {
        match ws
            .recv_within(WAIT)
            .await
            .unwrap()
            .expect("the server says goodbye")
        {
            Incoming::Frame(f) if f["op"] == "error" => error = f,
            Incoming::Frame(_) => {}
            Incoming::Closed(code) => return (error, code),
        }
    }
}

/// The project's positions in the log after `after`.
async fn log_positions(app: &TestApp, project: Uuid, after: i64) -> Vec<i64> {
    sqlx::query_scalar(
        "SELECT position FROM event_log WHERE project_id = $1 AND position > $2 ORDER BY position",
    )
    .bind(project)
    .bind(after)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

/// Issues a command that adds one event to the project; returns its position.
async fn touch(app: &TestApp, user: &User, project: Uuid) -> i64 {
    let name = format!("w{}", Uuid::new_v4().simple());
    app.create_workspace_at(user, project, &name).await.1
}

/// Saves a file (an aggregate of its own, so concurrent saves to
/// different paths never conflict); returns the event's position.
async fn save(app: &TestApp, user: &User, workspace: Uuid, path: &str) -> i64 {
    let r = app
        .as_user(
            user,
            Method::PUT,
            &format!("/workspaces/{workspace}/files/{path}"),
        )
        .json(&json!({"content": path}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    body(r).await["position"].as_i64().expect("sequenced")
}

#[tokio::test]
async fn a_reconnecting_subscriber_gets_exactly_what_it_missed() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let project = app.create_project(&owner).await;
    let mut ws = connect(&app, &owner).await;
    let subscribed = subscribe(&mut ws, project, None).await;
    assert_eq!(subscribed["project_id"], project.to_string());
    // Live starts after `position`: the hub may not have dispatched the
    // project's creation yet, and then it comes live too.
    let live_from = subscribed["position"].as_i64().unwrap();
    for _ in 0..3 {
        touch(&app, &owner, project).await;
    }
    let expected = log_positions(&app, project, live_from).await;
    assert!(expected.len() >= 3);
    let seen = events(&mut ws, expected.len()).await;
    assert_eq!(seen, expected);
    drop(ws);

    let last_seen = *seen.last().unwrap();
    for _ in 0..4 {
        touch(&app, &owner, project).await;
    }
    let missed = log_positions(&app, project, last_seen).await;
    assert_eq!(missed.len(), 4);
    let mut ws = connect(&app, &owner).await;
    subscribe(&mut ws, project, Some(last_seen)).await;
    assert_eq!(events(&mut ws, 4).await, missed);
    quiet(&mut ws).await;

    // However old: from the beginning, the project's whole history.
    let mut ws = connect(&app, &owner).await;
    subscribe(&mut ws, project, Some(0)).await;
    let all = log_positions(&app, project, 0).await;
    let first = expect_op(&mut ws, "event").await;
    assert_eq!(first["event"]["type"], "ProjectCreated");
    let mut seen = vec![first["position"].as_i64().unwrap()];
    seen.extend(events(&mut ws, all.len() - 1).await);
    assert_eq!(seen, all);
    quiet(&mut ws).await;
}

#[tokio::test]
async fn events_committed_during_catch_up_are_neither_lost_nor_repeated() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let project = app.create_project(&owner).await;
    let workspace = app.create_workspace(&owner, project, "hammered").await;
    for _ in 0..19 {
        touch(&app, &owner, project).await;
    }
    // The writers wait at two gates, so that however fast they are, some
    // of their events come before, some during and some after the
    // subscriptions: the first gate opens once the replaying subscriber
    // is in (its catch-up then races the writes), the second once the live
    // one is.
    let (gates, opened) = tokio::sync::watch::channel(0u8);
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let app = app.handle();
            let owner = owner.clone();
            let mut opened = opened.clone();
            tokio::spawn(async move {
                for i in 0..25 {
                    let gate = match i {
                        5 => 1,
                        15 => 2,
                        _ => 0,
                    };
                    opened.wait_for(|open| *open >= gate).await.unwrap();
                    save(&app, &owner, workspace, &format!("w{w}/f{i}.txt")).await;
                }
            })
        })
        .collect();
    // Subscribe twice while the writers run: once replaying everything,
    // once live only.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut replaying = connect(&app, &owner).await;
    subscribe(&mut replaying, project, Some(0)).await;
    gates.send_replace(1);
    let mut live = connect(&app, &owner).await;
    let live_from = subscribe(&mut live, project, None).await["position"]
        .as_i64()
        .unwrap();
    gates.send_replace(2);
    for writer in writers {
        writer.await.unwrap();
    }
    let all = log_positions(&app, project, 0).await;
    assert_eq!(all.len(), 1 + 20 + 200);
    assert_eq!(events(&mut replaying, all.len()).await, all);
    quiet(&mut replaying).await;
    let after: Vec<i64> = all.iter().copied().filter(|p| *p > live_from).collect();
    assert!(
        !after.is_empty(),
        "the live subscriber started before the writers ended"
    );
    assert_eq!(events(&mut live, after.len()).await, after);
    quiet(&mut live).await;
}

#[tokio::test]
async fn gateways_share_events_presence_and_cursors() {
    let a = spawn_app().await;
    let b = a.another_gateway(|_| {}).await;
    let owner = a.user().await;
    let collaborator = a.user().await;
    let project = a.create_project(&owner).await;
    a.invite(&owner, project, &collaborator, "collaborator")
        .await;

    let mut on_b = connect(&b, &owner).await;
    let subscribed = subscribe_now(&a, &mut on_b, project).await;
    assert_eq!(subscribed["presence"], json!([owner.id]));
    let mut on_a = connect(&a, &collaborator).await;
    let subscribed = subscribe_now(&a, &mut on_a, project).await;
    let present: HashSet<String> = serde_json::from_value(subscribed["presence"].clone()).unwrap();
    assert_eq!(
        present,
        HashSet::from([owner.id.to_string(), collaborator.id.to_string()])
    );

    let joined = on_b.recv_within(WAIT).await.unwrap().unwrap().frame();
    assert_eq!(joined["op"], "presence");
    assert_eq!(joined["joined"], json!([collaborator.id]));
    assert_eq!(joined["left"], json!([]));

    // A command through gateway A reaches the subscriber on gateway B.
    let position = touch(&a, &collaborator, project).await;
    assert_eq!(events(&mut on_b, 1).await, [position]);
    assert_eq!(events(&mut on_a, 1).await, [position]);

    // A cursor from A reaches B, and is not echoed to its sender.
    on_a.send(&json!({"op": "cursor", "project_id": project, "data": {"line": 7}}))
        .await
        .unwrap();
    let cursor = next(&mut on_b).await;
    assert_eq!(cursor["op"], "cursor");
    assert_eq!(cursor["user_id"], collaborator.id.to_string());
    assert_eq!(cursor["data"], json!({"line": 7}));
    on_b.send(&json!({"op": "broadcast", "project_id": project, "data": "hi"}))
        .await
        .unwrap();
    let broadcast = next(&mut on_a).await;
    assert_eq!(
        broadcast["op"], "broadcast",
        "the cursor was not echoed: {broadcast}"
    );
    assert_eq!(broadcast["user_id"], owner.id.to_string());

    drop(on_a);
    let left = on_b.recv_within(WAIT).await.unwrap().unwrap().frame();
    assert_eq!(left["op"], "presence");
    assert_eq!(left["left"], json!([collaborator.id]));
}

#[tokio::test]
async fn two_tabs_are_one_presence_and_a_dead_gateways_users_leave() {
    let app =
        spawn_app_with(|o| o.gateway.realtime.presence_ttl = Duration::from_millis(1500)).await;
    let owner = app.user().await;
    let other = app.user().await;
    let project = app.create_project(&owner).await;
    app.invite(&owner, project, &other, "viewer").await;
    let mut watcher = connect(&app, &owner).await;
    subscribe_now(&app, &mut watcher, project).await;

    let mut tab1 = connect(&app, &other).await;
    subscribe_now(&app, &mut tab1, project).await;
    let joined = watcher.recv_within(WAIT).await.unwrap().unwrap().frame();
    assert_eq!(joined["joined"], json!([other.id]));
    let mut tab2 = connect(&app, &other).await;
    let second = subscribe_now(&app, &mut tab2, project).await;
    assert_eq!(second["presence"].as_array().unwrap().len(), 2);
    drop(tab1);
    assert!(
        watcher.recv_within(QUIET).await.unwrap().is_none(),
        "a second tab arriving or the first leaving changes nothing"
    );
    drop(tab2);
    let left = watcher.recv_within(WAIT).await.unwrap().unwrap().frame();
    assert_eq!(left["left"], json!([other.id]));

    // A gateway that died left its entries behind; they expire and the
    // sweep announces the leave.
    let ghost = Uuid::now_v7();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let key = format!("{}:presence:{project}", app.namespace);
    let mut redis = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::pipe()
        .zadd(&key, ghost.to_string(), now_ms + 500)
        .zadd(format!("{key}:{ghost}"), "dead-gateway/1", now_ms + 500)
        .query_async(&mut redis)
        .await
        .unwrap();
    let left = watcher.recv_within(WAIT).await.unwrap().unwrap().frame();
    assert_eq!(left["op"], "presence", "{left}");
    assert_eq!(left["left"], json!([ghost]), "{left}");
}

#[tokio::test]
async fn membership_decides_who_subscribes_and_who_sends() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let viewer = app.user().await;
    let stranger = app.user().await;
    let project = app.create_project(&owner).await;
    app.invite(&owner, project, &viewer, "viewer").await;

    let mut ws = connect(&app, &stranger).await;
    ws.subscribe(project, None).await.unwrap();
    let refused = expect_op(&mut ws, "error").await;
    assert_eq!(refused["code"], "forbidden");
    ws.subscribe(Uuid::now_v7(), None).await.unwrap();
    let unknown = expect_op(&mut ws, "error").await;
    assert_eq!(unknown["code"], refused["code"]);
    assert_eq!(
        unknown["message"], refused["message"],
        "no hint the project exists"
    );
    touch(&app, &owner, project).await;
    quiet(&mut ws).await;

    let mut ws = connect(&app, &viewer).await;
    subscribe_now(&app, &mut ws, project).await;
    ws.send(&json!({"op": "cursor", "project_id": project, "data": {"x": 1}}))
        .await
        .unwrap();
    let refused = expect_op(&mut ws, "error").await;
    assert_eq!(refused["code"], "forbidden");

    let r = app
        .as_user(
            &owner,
            Method::DELETE,
            &format!("/projects/{project}/members/{}", viewer.id),
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let removal = expect_op(&mut ws, "event").await;
    assert_eq!(removal["event"]["type"], "MemberRemoved");
    let ended = expect_op(&mut ws, "error").await;
    assert_eq!(ended["code"], "forbidden");
    assert_eq!(ended["project_id"], project.to_string());
    touch(&app, &owner, project).await;
    quiet(&mut ws).await;
    ws.send(&json!({"op": "cursor", "project_id": project, "data": 1}))
        .await
        .unwrap();
    assert_eq!(expect_op(&mut ws, "error").await["code"], "not_subscribed");
}

#[tokio::test]
async fn a_promoted_viewer_may_send_cursors() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let member = app.user().await;
    let project = app.create_project(&owner).await;
    app.invite(&owner, project, &member, "viewer").await;
    let mut ws = connect(&app, &member).await;
    subscribe_now(&app, &mut ws, project).await;
    let r = app
        .as_user(
            &owner,
            Method::PATCH,
            &format!("/projects/{project}/members/{}", member.id),
        )
        .json(&json!({"role": "collaborator"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert_eq!(
        expect_op(&mut ws, "event").await["event"]["type"],
        "MemberRoleChanged"
    );
    let mut watcher = connect(&app, &owner).await;
    subscribe_now(&app, &mut watcher, project).await;
    ws.send(&json!({"op": "cursor", "project_id": project, "data": [1, 2]}))
        .await
        .unwrap();
    assert_eq!(next(&mut watcher).await["data"], json!([1, 2]));
}

#[tokio::test]
async fn cursors_are_size_capped_and_rate_limited() {
    let app = spawn_app_with(|o| o.gateway.realtime.ephemeral_per_sec = 2).await;
    let owner = app.user().await;
    let project = app.create_project(&owner).await;
    let mut ws = connect(&app, &owner).await;
    subscribe_now(&app, &mut ws, project).await;
    let big = "x".repeat(5000);
    ws.send(&json!({"op": "broadcast", "project_id": project, "data": big}))
        .await
        .unwrap();
    assert_eq!(expect_op(&mut ws, "error").await["code"], "too_large");
    // Burst of 4 (twice the rate), then refused.
    for _ in 0..5 {
        ws.send(&json!({"op": "cursor", "project_id": project, "data": 1}))
            .await
            .unwrap();
    }
    assert_eq!(expect_op(&mut ws, "error").await["code"], "rate_limited");
}

#[tokio::test]
async fn job_output_reaches_the_projects_subscribers() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let project = app.create_project(&owner).await;
    let mut ws = connect(&app, &owner).await;
    subscribe_now(&app, &mut ws, project).await;
    let job = Uuid::now_v7();
    let nats = async_nats::connect(nats_url()).await.unwrap();
    let names = BusNames::new(&app.namespace).unwrap();
    let chunk = json!({"job_id": job, "stream": "stdout", "chunk": "hello\n"});
    nats.publish(
        names.live_subject(project, "job_output"),
        serde_json::to_vec(&chunk).unwrap().into(),
    )
    .await
    .unwrap();
    nats.flush().await.unwrap();
    let frame = expect_op(&mut ws, "job_output").await;
    assert_eq!(frame["project_id"], project.to_string());
    assert_eq!(frame["job_id"], job.to_string());
    assert_eq!(frame["stream"], "stdout");
    assert_eq!(frame["chunk"], "hello\n");
}

#[tokio::test]
async fn authentication_is_required_checked_and_renewable() {
    let app = spawn_app_with(|o| {
        o.gateway.realtime.auth_timeout = Duration::from_millis(300);
        o.gateway.jwt.access_ttl = Duration::from_secs(3);
    })
    .await;
    let user = app.user().await;
    let other = app.user().await;

    let mut silent = WsClient::open(&app.ws_url(), None).await.unwrap();
    let (error, code) = goodbye(&mut silent).await;
    assert_eq!(
        (error["code"].as_str(), code),
        (Some("auth_timeout"), Some(1008))
    );

    let mut rude = WsClient::open(&app.ws_url(), None).await.unwrap();
    rude.send(&json!({"op": "ping"})).await.unwrap();
    let (error, code) = goodbye(&mut rude).await;
    assert_eq!(
        (error["code"].as_str(), code),
        (Some("unauthenticated"), Some(1008))
    );

    let mut forged = WsClient::open(&app.ws_url(), None).await.unwrap();
    forged
        .send(&json!({"op": "auth", "token": "not.a.jwt"}))
        .await
        .unwrap();
    let (error, code) = goodbye(&mut forged).await;
    assert_eq!(
        (error["code"].as_str(), code),
        (Some("invalid_token"), Some(1008))
    );

    // `?token=` works without a first message.
    let url = format!("{}?token={}", app.ws_url(), user.access);
    let mut by_query = WsClient::open(&url, None).await.unwrap();
    assert_eq!(
        by_query.recv().await.unwrap().frame()["op"],
        "authenticated"
    );
    by_query.send(&json!({"op": "ping"})).await.unwrap();
    assert_eq!(by_query.recv().await.unwrap().frame()["op"], "pong");

    // The token expires: the socket closes, unless renewed in time.
    let mut renewed = connect(&app, &user).await;
    // A fresh token minted later than the first expires later.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let fresh = crate::support::body(app.login(&user.email, crate::support::PASSWORD).await).await;
    renewed
        .send(&json!({"op": "auth", "token": fresh["access_token"]}))
        .await
        .unwrap();
    assert_eq!(renewed.recv().await.unwrap().frame()["op"], "authenticated");
    let (error, code) = goodbye(&mut by_query).await;
    assert_eq!(
        (error["code"].as_str(), code),
        (Some("token_expired"), Some(1008))
    );
    // `renewed` holds a token minted after the first one: it outlived it.
    renewed.send(&json!({"op": "ping"})).await.unwrap();
    assert_eq!(renewed.recv().await.unwrap().frame()["op"], "pong");
    // Another user's token cannot take a connection over.
    renewed
        .send(&json!({"op": "auth", "token": other.access}))
        .await
        .unwrap();
    assert_eq!(renewed.recv().await.unwrap().frame()["code"], "forbidden");
}

#[tokio::test]
async fn logout_closes_the_sessions_sockets_at_once() {
    let app = spawn_app().await;
    let user = app.user().await;
    let bystander = app.user().await;
    let mut mine = connect(&app, &user).await;
    let mut theirs = connect(&app, &bystander).await;
    let r = app
        .as_user(&user, Method::POST, "/auth/logout")
        .json(&json!({"refresh_token": user.refresh}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (error, code) = goodbye(&mut mine).await;
    assert_eq!(
        (error["code"].as_str(), code),
        (Some("token_revoked"), Some(1008))
    );
    theirs.send(&json!({"op": "ping"})).await.unwrap();
    assert_eq!(theirs.recv().await.unwrap().frame()["op"], "pong");
    // And the revoked token cannot open a new one.
    let mut again = WsClient::open(&app.ws_url(), None).await.unwrap();
    again
        .send(&json!({"op": "auth", "token": user.access}))
        .await
        .unwrap();
    let (error, _) = goodbye(&mut again).await;
    assert_eq!(error["code"], "token_revoked");
}

#[tokio::test]
async fn foreign_origins_are_refused_and_allowlisted_ones_accepted() {
    let app = spawn_app_with(|o| {
        o.gateway.cors_origins = vec!["https://app.example".parse().unwrap()];
    })
    .await;
    let refused = WsClient::open(&app.ws_url(), Some("https://evil.example")).await;
    let error = format!("{:#}", refused.err().expect("a foreign origin is refused"));
    assert!(error.contains("403"), "{error}");
    let user = app.user().await;
    let mut ok = WsClient::open(&app.ws_url(), Some("https://app.example"))
        .await
        .unwrap();
    ok.authenticate(&user.access).await.unwrap();
    // A plain GET is not an upgrade: problem+json, not a socket.
    let r = app.request(Method::GET, "/ws").send().await.unwrap();
    crate::support::problem(r, 400, "websocket_upgrade_required").await;
}

#[tokio::test]
async fn malformed_and_oversized_messages() {
    let app = spawn_app().await;
    let user = app.user().await;
    let mut ws = connect(&app, &user).await;
    ws.send(&json!({"op": "subscribe", "project_id": "nope"}))
        .await
        .unwrap();
    assert_eq!(expect_op(&mut ws, "error").await["code"], "bad_request");
    ws.send_raw("{not json").await.unwrap();
    assert_eq!(expect_op(&mut ws, "error").await["code"], "bad_request");
    ws.send(&json!({"op": "subscribe", "project_id": Uuid::now_v7(), "since": -1}))
        .await
        .unwrap();
    assert_eq!(expect_op(&mut ws, "error").await["code"], "bad_request");
    ws.send(&json!({"op": "unsubscribe", "project_id": Uuid::now_v7()}))
        .await
        .unwrap();
    assert_eq!(expect_op(&mut ws, "error").await["code"], "not_subscribed");
    let huge =
        json!({"op": "broadcast", "project_id": Uuid::now_v7(), "data": "y".repeat(70 * 1024)});
    ws.send(&huge).await.unwrap();
    let (error, code) = goodbye(&mut ws).await;
    assert_eq!(
        (error["code"].as_str(), code),
        (Some("message_too_large"), Some(1009))
    );
}

#[tokio::test]
async fn a_slow_consumer_is_cut_off_and_forgotten() {
    let app = spawn_app_with(|o| o.gateway.realtime.outbox_frames = 8).await;
    let owner = app.user().await;
    let project = app.create_project(&owner).await;
    let workspace = app.create_workspace(&owner, project, "big").await;
    let mut slow = WsClient::open_small_buffer(app.addr, &owner.access)
        .await
        .unwrap();
    subscribe_now(&app, &mut slow, project).await;
    let realtime = app.realtime();
    assert_eq!(realtime.hub.subscriptions(), 1);
    // 60 KiB events, never read: the kernel buffers fill, then the outbox.
    let content = "z".repeat(60 * 1024);
    for n in 0..200 {
        let r = app
            .as_user(
                &owner,
                Method::PUT,
                &format!("/workspaces/{workspace}/files/f{n}.txt"),
            )
            .json(&json!({ "content": content }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        if realtime.hub.subscriptions() == 0 {
            break;
        }
    }
    eventually(WAIT, || async {
        (realtime.hub.subscriptions() == 0).then_some(())
    })
    .await;
    // What the client finds once it reads again: what was already on the
    // wire, then the reason and 1013.
    let (error, code) = goodbye(&mut slow).await;
    assert_eq!(
        (error["code"].as_str(), code),
        (Some("slow_consumer"), Some(1013))
    );
    eventually(WAIT, || async {
        (realtime.connection_count() == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn shutdown_says_goodbye_with_going_away() {
    let app = spawn_app().await;
    let user = app.user().await;
    let mut ws = connect(&app, &user).await;
    drop(app);
    let (error, code) = goodbye(&mut ws).await;
    assert_eq!(
        (error["code"].as_str(), code),
        (Some("shutting_down"), Some(1001))
    );
}

#[tokio::test]
async fn a_python_websockets_client_resumes_in_order() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let project = app.create_project(&owner).await;
    for _ in 0..5 {
        touch(&app, &owner, project).await;
    }
    let expected = log_positions(&app, project, 0).await;
    let python = std::env::var("TANDEM_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/system/ws_client.py");
    let output = tokio::process::Command::new(&python)
        .arg(script)
        .arg(app.ws_url())
        .arg(&owner.access)
        .arg(project.to_string())
        .arg(expected.len().to_string())
        .output()
        .await
        .unwrap_or_else(|e| panic!("running {python}: {e}"));
    assert!(
        output.status.success(),
        "the Python client failed (is `websockets` installed? scripts/test installs it): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Vec<i64> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn readyz_and_metrics_report_the_live_feed() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let project = app.create_project(&owner).await;
    let mut ws = connect(&app, &owner).await;
    subscribe_now(&app, &mut ws, project).await;
    let position = touch(&app, &owner, project).await;
    assert_eq!(events(&mut ws, 1).await.last(), Some(&position));
    let realtime = body(app.ops("readyz").await).await["read_side"]["realtime"].clone();
    assert!(
        realtime["live_position"].as_i64().unwrap() >= position,
        "{realtime}"
    );
    assert_eq!(realtime["connections"], 1, "{realtime}");
    assert_eq!(realtime["subscriptions"], 1, "{realtime}");
    assert!(app
        .metrics_text()
        .await
        .contains("tandem_ws_live_lag_events"));
}

#[tokio::test]
async fn a_silent_client_is_pinged_then_closed_as_idle() {
    let app = spawn_app_with(|o| {
        o.gateway.realtime.ping_interval = Duration::from_millis(200);
        o.gateway.realtime.idle_timeout = Duration::from_millis(700);
    })
    .await;
    let user = app.user().await;
    let mut ws = connect(&app, &user).await;
    // Not reading means not answering pings: after the idle timeout the
    // server gives up on us.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut pings = 0;
    let mut error = Value::Null;
    let code = loop {
        match ws.socket.next().await {
            Some(Ok(Message::Ping(_))) => pings += 1,
            Some(Ok(Message::Text(text))) => error = serde_json::from_str(&text).unwrap(),
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(pings >= 1, "the server pinged before giving up");
    assert_eq!((error["code"].as_str(), code), (Some("idle"), Some(1001)));

    // A client that reads answers the pings and stays.
    let mut ws = connect(&app, &user).await;
    assert!(ws
        .recv_within(Duration::from_millis(1500))
        .await
        .unwrap()
        .is_none());
    ws.send(&json!({"op": "ping"})).await.unwrap();
    assert_eq!(ws.recv().await.unwrap().frame()["op"], "pong");
}

#[tokio::test]
async fn a_project_is_subscribable_the_moment_it_is_created() {
    // The hub may lag the log: membership must be judged as of the log,
    // or a brand-new project's owner would be refused.
    let app = spawn_app().await;
    let owner = app.user().await;
    for _ in 0..10 {
        let project = app.create_project(&owner).await;
        let mut ws = connect(&app, &owner).await;
        let subscribed = subscribe(&mut ws, project, None).await;
        assert_eq!(subscribed["project_id"], project.to_string());
    }
}
