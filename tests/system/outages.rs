//! When a backing service goes away: the answers are the documented
//! problems, never internals, and the service keeps what it can.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::support::*;

/// A Redis of the test's own, so it can be stopped.
struct PrivateRedis {
    child: Child,
    url: String,
}

impl PrivateRedis {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        let url = format!("redis://127.0.0.1:{port}");
        eventually(Duration::from_secs(10), || async {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| ())
        })
        .await;
        Self { child, url }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_tokens_cannot_be_vouched_for_but_anonymous_requests_go_on() {
    let mut redis = PrivateRedis::start().await;
    let url = redis.url.clone();
    // A limit under 120/min leases one request at a time: every auth
    // request asks Redis, so none is served from a lease below.
    let app = spawn_app_with(|o| {
        o.redis_url = url;
        o.gateway.rate_limits.auth_per_ip = 100;
    })
    .await;
    let user = app.user().await;
    assert_eq!(
        app.as_user(&user, Method::GET, "/me")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    redis.stop();

    // The denylist can't be followed, so a token might be revoked: fail
    // closed, as soon as the gateway's subscription has seen Redis go.
    let mut me = app.as_user(&user, Method::GET, "/me").send().await.unwrap();
    for _ in 0..50 {
        if me.status() == 503 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        me = app.as_user(&user, Method::GET, "/me").send().await.unwrap();
    }
    let problem_body = problem(me, 503, "service_unavailable").await;
    assert!(
        !problem_body.to_string().contains("redis"),
        "{problem_body}"
    );

    // Rate limits fail open: registration still works, unlimited.
    let email = format!("o{}@example.com", uuid::Uuid::new_v4().simple());
    let registered = app.register(&email).await;
    assert_eq!(registered.status(), 201);
    assert!(!registered.headers().contains_key("ratelimit-limit"));

    let ready = app.ops("readyz").await;
    assert_eq!(ready.status(), 503);
    let ready = body(ready).await;
    assert_eq!(ready["checks"]["redis"], "unavailable", "{ready}");
    assert_eq!(ready["checks"]["postgres"], "ok", "{ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_whose_database_is_gone_is_a_503_and_nothing_leaks() {
    let app = spawn_app().await;
    let owner = app.user().await;
    // Cut every connection to this test's database and refuse new ones.
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let mut admin: sqlx::PgConnection = sqlx::Connection::connect_with(&server_options())
        .await
        .unwrap();
    sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&name)
        .execute(&mut admin)
        .await
        .unwrap();
    let r = app
        .as_user(&owner, Method::POST, "/projects")
        .json(&json!({"name": "into the void"}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    assert_eq!(status, 503, "{text}");
    for leak in ["sqlx", "postgres", "SELECT", "connection refused", "events"] {
        assert!(!text.contains(leak), "{leak} leaked: {text}");
    }
    sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .execute(&mut admin)
        .await
        .unwrap();
}
