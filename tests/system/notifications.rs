//! The process's one `LISTEN` connection: each subscriber hears its own
//! channel's payloads in order, and hears `Missed` when the connection is
//! lost, after which notifications flow again.

use std::time::Duration;

use sqlx::PgPool;
use tandem_commands::notifications::{Notice, Notifications, Subscription};

use crate::support::*;

async fn notify(pool: &PgPool, channel: &str, payload: &str) {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(pool)
        .await
        .unwrap();
}

async fn next(subscription: &mut Subscription) -> Notice {
    tokio::time::timeout(Duration::from_secs(10), subscription.recv())
        .await
        .expect("a notice within 10 s")
}

fn payload(text: &str) -> Notice {
    Notice::Payload(text.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_subscriber_hears_its_channel_in_order_and_hears_a_lost_connection() {
    let pool = pool(&fresh_database().await, 4).await;
    let hub = Notifications::listen(&pool, &["chan_a", "chan_b"])
        .await
        .unwrap();
    let mut a = hub.subscribe("chan_a");
    let mut also_a = hub.subscribe("chan_a");
    let mut b = hub.subscribe("chan_b");
    notify(&pool, "chan_a", "1").await;
    notify(&pool, "chan_b", "x").await;
    notify(&pool, "chan_a", "2").await;
    notify(&pool, "chan_other", "nobody listens").await;
    for subscriber in [&mut a, &mut also_a] {
        assert_eq!(next(subscriber).await, payload("1"));
        assert_eq!(next(subscriber).await, payload("2"));
    }
    assert_eq!(next(&mut b).await, payload("x"));
    assert_eq!(b.try_recv(), None, "nothing of chan_a reaches chan_b");

    // One connection listens for the whole hub.
    let listening: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(listening, 1);

    // The connection is cut: every subscriber hears that it may have
    // missed something, and later notifications arrive again.
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .execute(&pool)
    .await
    .unwrap();
    for subscriber in [&mut a, &mut b] {
        assert_eq!(next(subscriber).await, Notice::Missed);
    }
    // Until the listener is back, a notification may fall in the gap.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        notify(&pool, "chan_a", "after").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut heard = false;
        while let Some(notice) = a.try_recv() {
            heard |= notice == payload("after");
        }
        if heard {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing heard after the reconnect"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_the_shared_listener_listens_on_its_own() {
    let pool = pool(&fresh_database().await, 4).await;
    let mut own = Notifications::subscribe_to(None, &pool, "chan_own")
        .await
        .unwrap();
    notify(&pool, "chan_own", "hello").await;
    assert_eq!(next(&mut own).await, payload("hello"));
}
