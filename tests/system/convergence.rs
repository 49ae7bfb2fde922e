//! Convergence: after a random workload, with the projections killed and
//! restarted mid-run, the live read models equal a from-scratch replay
//! (row counts and digests), and the read API keeps working across the
//! replay's swap.

use std::time::Duration;

use futures::future::join_all;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::Connection;
use tandem::stack::{self, Endpoints};
use tandem_commands::db::PoolConfig;
use tandem_commands::relay::RelayConfig;
use tandem_domain::envelope::BusNames;
use tandem_projections::consumer::ConsumerConfig;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::support::*;

const COMMANDS: usize = 5_000;
const WORKERS: usize = 8;

struct World {
    owner: User,
    others: Vec<User>,
    projects: Vec<Uuid>,
    workspaces: Vec<Uuid>,
}

/// One random command; failures the domain refuses (409, 403, 404) are
/// part of a realistic mix and change nothing.
async fn random_command(app: &TestApp, world: &World, rng: &mut StdRng, jobs: &mut Vec<String>) {
    let project = world.projects[rng.random_range(0..world.projects.len())];
    let ws = world.workspaces[rng.random_range(0..world.workspaces.len())];
    let other = &world.others[rng.random_range(0..world.others.len())];
    let path = format!(
        "dir{}/f{}.txt",
        rng.random_range(0..3),
        rng.random_range(0..20)
    );
    let (method, url, payload): (Method, String, Value) = match rng.random_range(0..100) {
        0..=44 => (
            Method::PUT,
            format!("/workspaces/{ws}/files/{path}"),
            json!({"content": format!("v{} it's \\ \"quoted\" ünï {}", rng.random::<u32>(), "x".repeat(rng.random_range(0..200)))}),
        ),
        45..=52 => (
            Method::DELETE,
            format!("/workspaces/{ws}/files/{path}"),
            json!({}),
        ),
        53..=60 => (
            Method::PATCH,
            format!("/projects/{project}"),
            json!({"description": format!("d{}", rng.random::<u16>())}),
        ),
        61..=66 => (
            Method::POST,
            format!("/projects/{project}/members"),
            json!({"user_id": other.id, "role": if rng.random_bool(0.5) { "viewer" } else { "collaborator" }}),
        ),
        67..=70 => (
            Method::PATCH,
            format!("/projects/{project}/members/{}", other.id),
            json!({"role": if rng.random_bool(0.5) { "viewer" } else { "collaborator" }}),
        ),
        71..=73 => (
            Method::DELETE,
            format!("/projects/{project}/members/{}", other.id),
            json!({}),
        ),
        74..=77 => (
            Method::POST,
            format!("/projects/{project}/workspaces"),
            json!({"name": format!("w{}", rng.random::<u16>())}),
        ),
        78..=80 => (
            Method::PATCH,
            format!("/workspaces/{ws}"),
            json!({"name": format!("r{}", rng.random::<u16>())}),
        ),
        81..=92 => (
            Method::POST,
            format!("/projects/{project}/jobs"),
            json!({"language": "bash", "source": format!("echo {}", rng.random::<u16>())}),
        ),
        _ => match jobs.last() {
            Some(job) => (Method::POST, format!("/jobs/{job}/cancel"), json!({})),
            None => (Method::GET, "/me".to_owned(), json!(null)),
        },
    };
    let mut request = app.as_user(&world.owner, method.clone(), &url);
    if method != Method::GET && method != Method::DELETE {
        request = request.json(&payload);
    }
    let r = request.send().await.unwrap();
    let status = r.status();
    assert!(
        status.is_success()
            || [
                StatusCode::CONFLICT,
                StatusCode::NOT_FOUND,
                StatusCode::FORBIDDEN,
                StatusCode::UNPROCESSABLE_ENTITY
            ]
            .contains(&status),
        "{method} {url}: {status}"
    );
    if status == StatusCode::ACCEPTED && url.ends_with("/jobs") {
        let b = body(r).await;
        if let Some(id) = b["id"].as_str() {
            jobs.push(id.to_owned());
        }
    }
}

async fn live_digests(app: &TestApp) -> Vec<(String, i64, String)> {
    let mut conn = sqlx::PgConnection::connect(&app.db_url).await.unwrap();
    let mut out = Vec::new();
    for projector in tandem_projections::models::all() {
        for table in projector.tables() {
            let (rows, digest) = tandem_projections::rebuild::digest(&mut conn, "read", table)
                .await
                .unwrap();
            out.push(((*table).to_owned(), rows, digest));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_random_workload_and_a_killed_projector_the_read_models_equal_a_replay() {
    let app = spawn_app_with(|o| o.read_side = false).await;
    let endpoints = Endpoints {
        database_url: app.db_url.clone(),
        redis_url: redis_url(),
        nats_url: nats_url(),
        pool: PoolConfig {
            max_connections: 12,
            acquire_timeout: Duration::from_secs(30),
        },
    };
    let connections = stack::connect(&endpoints).await.unwrap();
    let names = BusNames::new(&app.namespace).unwrap();
    let relay_stop = CancellationToken::new();
    let relay = stack::spawn_relay(
        connections.pool.clone(),
        connections.nats.clone(),
        names.clone(),
        RelayConfig {
            poll_interval: Duration::from_millis(50),
            ..RelayConfig::default()
        },
        relay_stop.clone(),
    );
    let start_projections = || {
        let stop = CancellationToken::new();
        let tasks =
            stack::spawn_projections(&connections, &names, &ConsumerConfig::default(), &stop);
        (stop, tasks)
    };
    let (mut projections_stop, mut projection_tasks) = start_projections();

    let owner = app.user().await;
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(app.user().await);
    }
    let mut projects = Vec::new();
    let mut workspaces = Vec::new();
    for i in 0..4 {
        let p = app.create_project(&owner).await;
        workspaces.push(app.create_workspace(&owner, p, &format!("ws{i}")).await);
        projects.push(p);
    }
    let world = std::sync::Arc::new(World {
        owner,
        others,
        projects,
        workspaces,
    });

    let workers = (0..WORKERS).map(|w| {
        let world = world.clone();
        let app = app.handle();
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(w as u64);
            let mut jobs = Vec::new();
            for _ in 0..COMMANDS / WORKERS {
                random_command(&app, &world, &mut rng, &mut jobs).await;
            }
        })
    });
    let workload = tokio::spawn(join_all(workers));

    // Kill the projections mid-run (in-flight batches are dropped, as in a
    // crash) and start them again a moment later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    projections_stop.cancel();
    for task in projection_tasks.drain(..) {
        task.abort();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    (projections_stop, projection_tasks) = start_projections();

    for w in workload.await.unwrap() {
        w.unwrap();
    }
    let head = tandem_commands::log::head(&app.pool).await.unwrap();
    assert!(
        head >= COMMANDS as i64 / 2,
        "the workload wrote {head} events"
    );
    eventually(Duration::from_secs(120), || async {
        let lowest: Option<i64> =
            sqlx::query_scalar("SELECT min(position) FROM projection_checkpoints")
                .fetch_one(&app.pool)
                .await
                .unwrap();
        (lowest == Some(head)).then_some(())
    })
    .await;
    let before = live_digests(&app).await;

    let reports = tandem::replay::run(&app.pool, None).await.unwrap();
    for report in &reports {
        for table in &report.tables {
            assert!(
                table.identical(),
                "{}.{} differs from a replay: {table:?}",
                report.projection,
                table.table
            );
        }
    }
    assert_eq!(live_digests(&app).await, before);

    // The read API and the live consumers go on after the swap.
    let created = app
        .as_user(&world.owner, Method::POST, "/projects")
        .json(&json!({"name": "after the replay"}))
        .send()
        .await
        .unwrap();
    let position = body(created).await["position"].as_i64().unwrap();
    let list = app
        .as_user(
            &world.owner,
            Method::GET,
            &format!("/projects?min_position={position}&limit=200"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), StatusCode::OK);
    let list = body(list).await;
    assert!(list["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "after the replay"));

    projections_stop.cancel();
    relay_stop.cancel();
    for task in projection_tasks {
        let _ = task.await;
    }
    let _ = relay.await;
}
