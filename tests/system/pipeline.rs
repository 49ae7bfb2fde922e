//! The log → JetStream → read side pipeline: the relay publishes every
//! event once, in position order, through late commits, crashes between
//! publish and checkpoint, and a deleted stream; projections follow.

use std::time::Duration;

use async_nats::jetstream;
use futures::future::join_all;
use reqwest::Method;
use serde_json::json;
use sqlx::{Connection, PgConnection, PgPool};
use tandem::stack::spawn_relay;
use tandem_commands::relay::RelayConfig;
use tandem_domain::envelope::{BusNames, Envelope};
use tandem_domain::project::ProjectEvent;
use tandem_domain::{ProjectId, UserId};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::support::*;

async fn jetstream() -> jetstream::Context {
    jetstream::new(async_nats::connect(nats_url()).await.unwrap())
}

fn names(app: &TestApp) -> BusNames {
    BusNames::new(&app.namespace).unwrap()
}

async fn head(pool: &PgPool) -> i64 {
    tandem_commands::log::head(pool).await.unwrap()
}

async fn relay_checkpoint(app: &TestApp) -> i64 {
    let mut conn = PgConnection::connect(&app.db_url).await.unwrap();
    tandem_commands::relay::load_checkpoint(&mut conn, &names(app).events_stream())
        .await
        .unwrap()
}

/// Waits until the stream holds `n` messages and returns them in stream
/// order, checking that stream sequence = log position for each.
async fn stream_holds(app: &TestApp, n: u64) -> Vec<Envelope> {
    let js = jetstream().await;
    let name = names(app).events_stream();
    eventually(Duration::from_secs(60), || async {
        let mut stream = js.get_stream(&name).await.ok()?;
        let info = stream.info().await.ok()?;
        (info.state.last_sequence >= n).then_some(())
    })
    .await;
    let stream = js.get_stream(&name).await.unwrap();
    let mut events = Vec::with_capacity(n as usize);
    for seq in 1..=n {
        let message = stream.get_raw_message(seq).await.unwrap();
        let envelope: Envelope = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(
            envelope.position, seq as i64,
            "stream sequence = log position"
        );
        events.push(envelope);
    }
    events
}

async fn stream_last_sequence(app: &TestApp) -> u64 {
    let js = jetstream().await;
    let mut stream = js.get_stream(names(app).events_stream()).await.unwrap();
    stream.info().await.unwrap().state.last_sequence
}

/// Every event of the log appears once, in position order, with its id.
async fn assert_stream_is_the_log(app: &TestApp) {
    let n = head(&app.pool).await;
    let events = stream_holds(app, n as u64).await;
    let log = tandem_commands::log::read_after(&app.pool, 0, n + 1)
        .await
        .unwrap();
    assert_eq!(events.len(), log.len());
    for (published, logged) in events.iter().zip(&log) {
        assert_eq!(published.id, logged.event_id);
        assert_eq!(published.position, logged.position);
    }
    assert_eq!(stream_last_sequence(app).await, n as u64, "nothing twice");
}

/// A valid `ProjectCreated` appended by hand, as postgres-es would.
async fn append_project(conn: &mut PgConnection, owner: Uuid) -> Uuid {
    let project = Uuid::now_v7();
    let event = ProjectEvent::ProjectCreated {
        project_id: ProjectId::from(project),
        owner_id: UserId::from(owner),
        name: "held".to_owned(),
        description: String::new(),
    };
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('Project', $1, 1, 'ProjectCreated', '1', $2, $3)",
    )
    .bind(project.to_string())
    .bind(serde_json::to_value(&event).unwrap())
    .bind(json!({"project_id": project.to_string(), "actor_id": owner.to_string()}))
    .execute(conn)
    .await
    .unwrap();
    project
}

async fn read_project_exists(pool: &PgPool, project: Uuid) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM read.projects WHERE project_id = $1)")
        .bind(project)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn read_side_at(pool: &PgPool, position: i64) {
    eventually(Duration::from_secs(60), || async {
        let lowest: Option<i64> =
            sqlx::query_scalar("SELECT min(position) FROM projection_checkpoints")
                .fetch_one(pool)
                .await
                .unwrap();
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_checkpoints")
            .fetch_one(pool)
            .await
            .unwrap();
        (count == 5 && lowest.unwrap_or(0) >= position).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_commit_reaches_the_stream_after_later_ones_and_every_read_model() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let mut held = PgConnection::connect(&app.db_url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut held).await.unwrap();
    let late_project = append_project(&mut held, owner.id).await;

    let mut later = Vec::new();
    for _ in 0..3 {
        later.push(app.create_project(&owner).await);
    }
    sqlx::query("COMMIT").execute(&mut held).await.unwrap();

    let late_position: i64 = eventually(Duration::from_secs(10), || async {
        sqlx::query_scalar(
            "SELECT l.position FROM events e JOIN event_log l ON l.global_id = e.global_id
              WHERE e.aggregate_id = $1",
        )
        .bind(late_project.to_string())
        .fetch_optional(&app.pool)
        .await
        .unwrap()
    })
    .await;
    let n = head(&app.pool).await.max(late_position);
    let events = stream_holds(&app, n as u64).await;
    let late = events
        .iter()
        .position(|e| e.aggregateid == late_project.to_string())
        .expect("the late event is in the stream");
    for project in &later {
        let earlier = events
            .iter()
            .position(|e| e.aggregateid == project.to_string())
            .unwrap();
        assert!(
            earlier < late,
            "the late commit follows the commits before it"
        );
    }
    read_side_at(&app.pool, n).await;
    assert!(read_project_exists(&app.pool, late_project).await);
    let hot_role = redis_role(&app, late_project, owner.id).await;
    assert_eq!(hot_role.as_deref(), Some("owner"));
}

async fn redis_role(app: &TestApp, project: Uuid, user: Uuid) -> Option<String> {
    let client = redis::Client::open(redis_url()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    eventually(Duration::from_secs(20), || {
        let mut conn = conn.clone();
        let key = format!("{}:members:{project}", app.namespace);
        async move {
            let role: Option<String> = redis::cmd("HGET")
                .arg(key)
                .arg(user.to_string())
                .query_async(&mut conn)
                .await
                .unwrap();
            role.map(Some)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_concurrent_appends_from_sixteen_writers_reach_the_stream_once_each_in_order()
{
    const WRITERS: usize = 16;
    const EVENTS: usize = 10_000;
    let app = spawn_app().await;
    let writers = (0..WRITERS).map(|w| {
        let url = app.db_url.clone();
        tokio::spawn(async move {
            let mut conn = PgConnection::connect(&url).await.unwrap();
            for i in 0..EVENTS / WRITERS {
                sqlx::query(
                    "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
                     VALUES ('Probe', $1, $2, 'Probed', '1', '{\"type\":\"Probed\"}', '{}')",
                )
                .bind(format!("writer-{w}"))
                .bind(i as i64 + 1)
                .execute(&mut conn)
                .await
                .unwrap();
            }
        })
    });
    for w in join_all(writers).await {
        w.unwrap();
    }
    eventually(Duration::from_secs(60), || async {
        (head(&app.pool).await == EVENTS as i64).then_some(())
    })
    .await;
    assert_stream_is_the_log(&app).await;
    eventually(Duration::from_secs(30), || async {
        (relay_checkpoint(&app).await == EVENTS as i64).then_some(())
    })
    .await;
}

/// Runs a relay until its checkpoint reaches the log head, then stops it;
/// returns that head.
async fn relay_to_head(app: &TestApp, nats: &async_nats::Client, config: &RelayConfig) -> i64 {
    let n = head(&app.pool).await;
    let stop = CancellationToken::new();
    let task = spawn_relay(
        app.pool.clone(),
        nats.clone(),
        names(app),
        config.clone(),
        stop.clone(),
    );
    eventually(Duration::from_secs(20), || async {
        (relay_checkpoint(app).await == n).then_some(())
    })
    .await;
    stop.cancel();
    task.await.unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_between_publish_and_checkpoint_publishes_nothing_twice_after_restart() {
    let app = spawn_app_with(|o| o.read_side = false).await;
    let owner = app.user().await;
    for _ in 0..5 {
        app.create_project(&owner).await;
    }
    let config = RelayConfig {
        poll_interval: Duration::from_millis(50),
        ..RelayConfig::default()
    };
    let nats = async_nats::connect(nats_url()).await.unwrap();
    let n = relay_to_head(&app, &nats, &config).await;
    stream_holds(&app, n as u64).await;

    // The crash: published up to n, but the checkpoint says 1.
    sqlx::query("UPDATE relay_checkpoints SET position = 1")
        .execute(&app.pool)
        .await
        .unwrap();
    for _ in 0..3 {
        app.create_project(&owner).await;
    }
    relay_to_head(&app, &nats, &config).await;
    assert_stream_is_the_log(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_dedup_window_a_restarted_relay_skips_what_the_stream_already_has() {
    let app = spawn_app_with(|o| o.read_side = false).await;
    let owner = app.user().await;
    for _ in 0..4 {
        app.create_project(&owner).await;
    }
    let config = RelayConfig {
        poll_interval: Duration::from_millis(50),
        duplicate_window: Duration::from_millis(500),
        ..RelayConfig::default()
    };
    let nats = async_nats::connect(nats_url()).await.unwrap();
    relay_to_head(&app, &nats, &config).await;
    sqlx::query("UPDATE relay_checkpoints SET position = 0")
        .execute(&app.pool)
        .await
        .unwrap();
    // Outlive the de-duplication window: only the expected-sequence check
    // stands between a republish and a duplicate now.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    app.create_project(&owner).await;
    relay_to_head(&app, &nats, &config).await;
    assert_stream_is_the_log(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_deleted_while_commands_flow_is_recreated_and_refilled_and_projections_follow() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let first = app.create_project(&owner).await;
    read_side_at(&app.pool, head(&app.pool).await).await;

    let writer = {
        let base = app.base.clone();
        let token = owner.access.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut created = Vec::new();
            for i in 0..40 {
                let r = client
                    .post(format!("{base}/projects"))
                    .bearer_auth(&token)
                    .json(&json!({"name": format!("during {i}")}))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success());
                let b: serde_json::Value = r.json().await.unwrap();
                created.push(b["id"].as_str().unwrap().parse::<Uuid>().unwrap());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            created
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let js = jetstream().await;
    js.delete_stream(names(&app).events_stream()).await.unwrap();
    let created = writer.await.unwrap();

    let n = head(&app.pool).await;
    assert_stream_is_the_log(&app).await;
    read_side_at(&app.pool, n).await;
    for project in created.iter().chain([&first]) {
        assert!(read_project_exists(&app.pool, *project).await, "{project}");
    }
    let listed: i64 = sqlx::query_scalar("SELECT count(*) FROM read.projects")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(listed, 41, "each project projected exactly once");
    let (status, list) = {
        let r = app
            .as_user(
                &owner,
                Method::GET,
                &format!("/projects?limit=200&min_position={n}"),
            )
            .send()
            .await
            .unwrap();
        (r.status(), body(r).await)
    };
    assert_eq!(status, 200);
    assert_eq!(list["items"].as_array().unwrap().len(), 41);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_state_follows_membership_and_job_status() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let friend = app.user().await;
    let project = app.create_project(&owner).await;
    app.invite(&owner, project, &friend, "viewer").await;
    assert_eq!(
        redis_role(&app, project, friend.id).await.as_deref(),
        Some("viewer")
    );
    let r = app
        .as_user(
            &owner,
            Method::PATCH,
            &format!("/projects/{project}/members/{}", friend.id),
        )
        .json(&json!({"role": "collaborator"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    eventually(Duration::from_secs(20), || async {
        (redis_role(&app, project, friend.id).await.as_deref() == Some("collaborator"))
            .then_some(())
    })
    .await;
    let job = app
        .as_user(&owner, Method::POST, &format!("/projects/{project}/jobs"))
        .json(&json!({"language": "bash", "source": "true"}))
        .send()
        .await
        .unwrap();
    let job = body(job).await["id"].as_str().unwrap().to_owned();
    let r = app
        .as_user(&owner, Method::POST, &format!("/jobs/{job}/cancel"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{}:job:{job}", app.namespace);
    eventually(Duration::from_secs(20), || {
        let mut conn = conn.clone();
        let key = key.clone();
        async move {
            let status: Option<String> = redis::cmd("HGET")
                .arg(&key)
                .arg("status")
                .query_async(&mut conn)
                .await
                .unwrap();
            (status.as_deref() == Some("cancelled")).then_some(())
        }
    })
    .await;
    let project_of: String = redis::cmd("HGET")
        .arg(&key)
        .arg("project_id")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(project_of, project.to_string());
}

/// The consumer names of `names` that exist on the events stream.
async fn consumers_on_stream(js: &jetstream::Context, names: &BusNames) -> Vec<String> {
    use futures::TryStreamExt;
    let stream = js.get_stream(names.events_stream()).await.unwrap();
    stream.consumer_names().try_collect().await.unwrap()
}

/// Before the read models were applied together each had a durable
/// consumer of its own; the set's consumer deletes those at start and
/// leaves every other consumer alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_an_earlier_version_left_behind_are_deleted_at_start() {
    use async_nats::jetstream::consumer::pull;
    use tandem_projections::consumer::{Consumer, ConsumerConfig};
    use tandem_projections::{models, ReadModels};

    let app = spawn_app().await;
    let owner = app.user().await;
    app.create_project(&owner).await;
    let names = names(&app);
    let js = jetstream().await;
    let stream = eventually(Duration::from_secs(10), || async {
        js.get_stream(names.events_stream()).await.ok()
    })
    .await;
    let old: Vec<String> = models::all()
        .iter()
        .map(|p| names.consumer(&format!("projection-{}", p.name())))
        .collect();
    let unrelated = names.consumer("someone-else");
    for name in old.iter().chain([&unrelated]) {
        stream
            .create_consumer(pull::Config {
                durable_name: Some(name.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let before = consumers_on_stream(&js, &names).await;
    assert!(old.iter().all(|name| before.contains(name)), "{before:?}");

    let consumer = Consumer::new(
        ReadModels::live(app.pool.clone(), models::all()),
        async_nats::connect(nats_url()).await.unwrap(),
        names.clone(),
        app.pool.clone(),
        ConsumerConfig::default(),
    );
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let run = tokio::spawn(async move { consumer.run(stopped.cancelled()).await });
    let after = eventually(Duration::from_secs(10), || async {
        let now = consumers_on_stream(&js, &names).await;
        old.iter().all(|name| !now.contains(name)).then_some(now)
    })
    .await;
    assert!(after.contains(&unrelated), "{after:?}");
    // The read models' own consumer is (re)created and stays.
    let current = names.consumer("projection-read-models");
    eventually(Duration::from_secs(10), || async {
        consumers_on_stream(&js, &names)
            .await
            .contains(&current)
            .then_some(())
    })
    .await;
    stop.cancel();
    run.await.unwrap();
    let last = consumers_on_stream(&js, &names).await;
    assert!(last.contains(&current), "{last:?}");
    assert!(old.iter().all(|name| !last.contains(name)), "{last:?}");
}
