//! The log of record and its sequencer: late commits, concurrency, two
//! sequencers, long transactions elsewhere, no sequencer at all.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::join_all;
use reqwest::Method;
use serde_json::json;
use sqlx::{Connection, PgConnection, PgPool};
use tandem::stack::spawn_sequencer;
use tandem_commands::sequencer::{Sequencer, SequencerConfig};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::support::*;

/// Appends one event the way postgres-es does (same columns, same table).
async fn append(
    conn: &mut PgConnection,
    aggregate: &str,
    sequence: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('Probe', $1, $2, 'Probed', '1', $3, '{}')",
    )
    .bind(aggregate)
    .bind(sequence)
    .bind(json!({"type": "Probed", "n": sequence}))
    .execute(conn)
    .await?;
    Ok(())
}

/// Sequencing steps of `size` forced in a loop from two connections until
/// `stop`, as if two more leaders believed they held the lock.
fn rival_steps(app: &TestApp, size: i32, stop: &CancellationToken) -> Vec<JoinHandle<()>> {
    (0..2)
        .map(|_| {
            let url = app.db_url.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut conn = PgConnection::connect(&url).await.unwrap();
                while !stop.is_cancelled() {
                    Sequencer::step(&mut conn, size).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        })
        .collect()
}

/// Appends `sequences` of `aggregate` in one call of the statement a
/// leading process's group commit uses: inserted and sequenced in one
/// transaction, with a step of at most `step_size`.
async fn append_sequenced(
    conn: &mut PgConnection,
    aggregate: &str,
    sequences: &[i64],
    step_size: i32,
) -> (i64, i64) {
    let n = sequences.len();
    let payloads: Vec<serde_json::Value> = sequences
        .iter()
        .map(|s| json!({"type": "Probed", "n": s}))
        .collect();
    sqlx::query_as(
        "SELECT assigned, last_position FROM tandem_append_sequenced($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind((0..n).map(|_| Uuid::now_v7()).collect::<Vec<_>>())
    .bind(vec!["Probe"; n])
    .bind(vec![aggregate; n])
    .bind(sequences)
    .bind(vec!["Probed"; n])
    .bind(vec!["1"; n])
    .bind(payloads)
    .bind(vec![json!({}); n])
    .bind(step_size)
    .fetch_one(conn)
    .await
    .unwrap()
}

/// Positions are exactly 1..=n, each event appears once, and every
/// committed event has one.
async fn assert_gapless(pool: &PgPool) -> i64 {
    let (count, max, distinct_events): (i64, Option<i64>, i64) =
        sqlx::query_as("SELECT count(*), max(position), count(DISTINCT global_id) FROM event_log")
            .fetch_one(pool)
            .await
            .unwrap();
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(max.unwrap_or(0), count, "positions have a gap");
    assert_eq!(distinct_events, count, "an event has two positions");
    assert_eq!(events, count, "a committed event has no position");
    let head: i64 = sqlx::query_scalar("SELECT last_position FROM sequencer_state")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(head, count);
    count
}

async fn wait_until_sequenced(pool: &PgPool, expected: i64) {
    eventually(Duration::from_secs(60), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM event_log")
            .fetch_one(pool)
            .await
            .unwrap();
        (n >= expected).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_that_commits_late_is_sequenced_when_it_commits_after_later_ones() {
    let app = spawn_app().await;
    let mut held = PgConnection::connect(&app.db_url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut held).await.unwrap();
    append(&mut held, "held", 1).await.unwrap();

    // Later transactions insert after it and commit before it.
    let mut other = PgConnection::connect(&app.db_url).await.unwrap();
    for i in 1..=5 {
        append(&mut other, "later", i).await.unwrap();
    }
    wait_until_sequenced(&app.pool, 5).await;
    assert_eq!(position_of(&app.pool, "held", 1).await, None);

    sqlx::query("COMMIT").execute(&mut held).await.unwrap();
    let late = eventually(Duration::from_secs(10), || async {
        position_of(&app.pool, "held", 1).await
    })
    .await;
    let latest_later = position_of(&app.pool, "later", 5).await.unwrap();
    assert!(
        late > latest_later,
        "late commit {late} must follow {latest_later}"
    );
    assert_eq!(assert_gapless(&app.pool).await, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_concurrent_appends_from_sixteen_writers_get_positions_one_to_n_once_each_in_aggregate_order(
) {
    const WRITERS: usize = 16;
    const EVENTS: usize = 10_000;
    let app = spawn_app().await;
    let writers = (0..WRITERS).map(|w| {
        let url = app.db_url.clone();
        tokio::spawn(async move {
            let mut conn = PgConnection::connect(&url).await.unwrap();
            // Each writer interleaves three aggregates, sometimes several
            // events per transaction, like real commands.
            let aggregates: Vec<String> = (0..3).map(|a| format!("w{w}-a{a}")).collect();
            let mut next = [1i64; 3];
            let mut written = 0;
            let quota = EVENTS / WRITERS;
            for round in 0.. {
                if written >= quota {
                    break;
                }
                let a = round % 3;
                let batch = (1 + round % 2).min(quota - written);
                let mut tx = conn.begin().await.unwrap();
                for _ in 0..batch {
                    append(&mut tx, &aggregates[a], next[a]).await.unwrap();
                    next[a] += 1;
                }
                tx.commit().await.unwrap();
                written += batch;
            }
        })
    });
    for w in join_all(writers).await {
        w.unwrap();
    }
    wait_until_sequenced(&app.pool, EVENTS as i64).await;
    assert_eq!(assert_gapless(&app.pool).await, EVENTS as i64);

    assert_eq!(assert_aggregate_order(&app.pool).await, WRITERS * 3);
}

/// Every aggregate's events have increasing positions in sequence order,
/// its sequences 1, 2, 3, ...; returns how many aggregates there are.
async fn assert_aggregate_order(pool: &PgPool) -> usize {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT e.aggregate_id, e.sequence, l.position
           FROM event_log l JOIN events e ON e.global_id = l.global_id ORDER BY l.position",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut last_seq: HashMap<String, i64> = HashMap::new();
    for (aggregate, sequence, position) in rows {
        let previous = last_seq.insert(aggregate.clone(), sequence).unwrap_or(0);
        assert_eq!(
            sequence,
            previous + 1,
            "{aggregate} out of order at position {position}"
        );
    }
    last_seq.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_sequencers_at_once_never_both_assign() {
    let app = spawn_app_with(|o| o.sequencer = false).await;
    let stop = CancellationToken::new();
    let config = SequencerConfig {
        poll_interval: Duration::from_millis(10),
        batch_size: 7,
        ..SequencerConfig::default()
    };
    let first = spawn_sequencer(app.pool.clone(), config.clone(), stop.clone());
    let second = spawn_sequencer(app.pool.clone(), config, stop.clone());
    // And a split brain.
    let rogue = rival_steps(&app, 3, &stop);
    let mut conn = PgConnection::connect(&app.db_url).await.unwrap();
    for i in 1..=500 {
        append(&mut conn, &format!("agg{}", i % 7), i / 7 + 1)
            .await
            .unwrap();
    }
    wait_until_sequenced(&app.pool, 500).await;
    let leaders: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND ((classid::bigint << 32) | objid::bigint) = $1",
    )
    .bind(tandem_commands::sequencer::LEADER_LOCK_KEY)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(leaders, 1, "exactly one sequencer leads");
    stop.cancel();
    first.await.unwrap();
    second.await.unwrap();
    for r in rogue {
        r.await.unwrap();
    }
    assert_eq!(assert_gapless(&app.pool).await, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_sequenced_at_commit_keep_the_log_gapless_beside_late_commits_plain_appends_and_rival_steps(
) {
    const WRITERS: usize = 4;
    const CALLS: i64 = 60;
    let app = spawn_app_with(|o| o.sequencer = false).await;
    let mut held = PgConnection::connect(&app.db_url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut held).await.unwrap();
    append(&mut held, "held", 1).await.unwrap();

    let stop = CancellationToken::new();
    let rivals = rival_steps(&app, 3, &stop);
    let plain = {
        let url = app.db_url.clone();
        tokio::spawn(async move {
            let mut conn = PgConnection::connect(&url).await.unwrap();
            for i in 1..=100 {
                append(&mut conn, "plain", i).await.unwrap();
            }
        })
    };
    // Each call writes two events of one aggregate; a step of 5 is often
    // smaller than what is queued, and leaves the rest to the rivals.
    let writers = (0..WRITERS).map(|w| {
        let url = app.db_url.clone();
        tokio::spawn(async move {
            let mut conn = PgConnection::connect(&url).await.unwrap();
            let aggregate = format!("fused{w}");
            let mut highest = 0;
            for call in 0..CALLS {
                let (assigned, last) =
                    append_sequenced(&mut conn, &aggregate, &[2 * call + 1, 2 * call + 2], 5).await;
                assert!(assigned >= 1, "its own events or the queue's are numbered");
                highest = highest.max(last);
            }
            highest
        })
    });
    let highest = join_all(writers)
        .await
        .into_iter()
        .map(Result::unwrap)
        .max()
        .unwrap();
    plain.await.unwrap();
    assert_eq!(position_of(&app.pool, "held", 1).await, None);
    sqlx::query("COMMIT").execute(&mut held).await.unwrap();
    let total = 1 + 100 + WRITERS as i64 * CALLS * 2;
    wait_until_sequenced(&app.pool, total).await;
    stop.cancel();
    for r in rivals {
        r.await.unwrap();
    }
    assert_eq!(assert_gapless(&app.pool).await, total);
    assert_eq!(assert_aggregate_order(&app.pool).await, WRITERS + 2);
    let late = position_of(&app.pool, "held", 1).await.unwrap();
    assert!(
        late > highest,
        "the late commit ({late}) follows every step before it ({highest})"
    );
}

/// Rows this transaction inserted into the sequencing queue so far.
async fn queued_by_this_transaction(conn: &mut PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(sum(n_tup_ins), 0)::bigint FROM pg_stat_xact_user_tables
          WHERE relname = 'unsequenced_events'",
    )
    .fetch_one(conn)
    .await
    .unwrap()
}

/// An append at commit numbers its own rows without queueing them, and
/// only them: an INSERT after it in its transaction is queued as always,
/// and with a step's worth already queued it queues its own too, so an
/// aggregate's queued events are never overtaken by its next ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_at_commit_numbers_its_own_rows_unqueued_and_nothing_else() {
    let app = spawn_app_with(|o| o.sequencer = false).await;
    let mut conn = PgConnection::connect(&app.db_url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
    let (assigned, last) = append_sequenced(&mut conn, "own", &[1, 2], 100).await;
    assert_eq!((assigned, last), (2, 2));
    assert_eq!(queued_by_this_transaction(&mut conn).await, 0);
    append(&mut conn, "after", 1).await.unwrap();
    assert_eq!(queued_by_this_transaction(&mut conn).await, 1);
    sqlx::query("COMMIT").execute(&mut conn).await.unwrap();
    assert_eq!(position_of(&app.pool, "own", 2).await, Some(2));
    assert_eq!(
        position_of(&app.pool, "after", 1).await,
        None,
        "left queued"
    );

    // Four queued (`after` and three of `backlog`), more than a step of 3:
    // the next event of `backlog` is queued behind them, not numbered
    // ahead of the one the capped step leaves.
    for sequence in 1..=3 {
        append(&mut conn, "backlog", sequence).await.unwrap();
    }
    let (assigned, _) = append_sequenced(&mut conn, "backlog", &[4], 3).await;
    assert_eq!(assigned, 3);
    assert_eq!(position_of(&app.pool, "backlog", 4).await, None);
    Sequencer::step(&mut conn, 100).await.unwrap();
    assert_eq!(assert_gapless(&app.pool).await, 7);
    assert_eq!(assert_aggregate_order(&app.pool).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_write_transaction_elsewhere_does_not_stall_sequencing() {
    let app = spawn_app().await;
    let owner = app.user().await;
    sqlx::query("CREATE TABLE scratch (n int)")
        .execute(&app.pool)
        .await
        .unwrap();
    let mut long = PgConnection::connect(&app.db_url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut long).await.unwrap();
    sqlx::query("INSERT INTO scratch VALUES (1)")
        .execute(&mut long)
        .await
        .unwrap();
    // It holds a transaction id older than every command below.
    let xid: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text")
        .fetch_one(&mut long)
        .await
        .unwrap();
    assert!(!xid.is_empty());

    for _ in 0..3 {
        let r = app
            .as_user(&owner, Method::POST, "/projects")
            .json(&json!({"name": "while a transaction is open"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        assert!(r.headers().contains_key("tandem-position"));
        assert!(body(r).await["position"].is_i64());
    }
    sqlx::query("ROLLBACK").execute(&mut long).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_sequencer_commands_succeed_with_a_null_position_and_are_sequenced_later() {
    let app = spawn_app_with(|o| {
        o.sequencer = false;
        o.write.position_wait = Duration::from_millis(200);
    })
    .await;
    let owner = app.user().await;
    let r = app
        .as_user(&owner, Method::POST, "/projects")
        .json(&json!({"name": "no sequencer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(!r.headers().contains_key("tandem-position"));
    let b = body(r).await;
    assert!(b["position"].is_null(), "{b}");
    let project = b["id"].as_str().unwrap().to_owned();
    assert_eq!(app.events_of(&project).await.len(), 1);

    let stop = CancellationToken::new();
    let task = spawn_sequencer(app.pool.clone(), SequencerConfig::default(), stop.clone());
    let position = eventually(Duration::from_secs(10), || async {
        position_of(&app.pool, &project, 1).await
    })
    .await;
    assert!(position >= 1);
    stop.cancel();
    task.await.unwrap();
    assert_gapless(&app.pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sequencer_is_woken_by_notify_not_only_by_polling() {
    // With a fallback poll of an hour, a command can only get its position
    // within its wait bound if the append notification wakes the sequencer.
    let app = spawn_app_with(|o| o.sequencer = false).await;
    let stop = CancellationToken::new();
    let config = SequencerConfig {
        poll_interval: Duration::from_secs(3600),
        ..SequencerConfig::default()
    };
    let task = spawn_sequencer(app.pool.clone(), config, stop.clone());
    // Let it take the lead and run its first (empty) step.
    eventually(Duration::from_secs(10), || async {
        tandem_commands::sequencer::leader_present(&app.pool)
            .await
            .unwrap()
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let owner = app.user().await;
    for _ in 0..3 {
        let r = app
            .as_user(&owner, Method::POST, "/projects")
            .json(&json!({"name": "notified"}))
            .send()
            .await
            .unwrap();
        assert!(body(r).await["position"].is_i64());
    }
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_refuses_updates_deletes_and_truncation() {
    let app = spawn_app().await;
    let owner = app.user().await;
    app.create_project(&owner).await;
    let before = app.event_count().await;
    for sql in [
        "UPDATE events SET payload = '{}'",
        "DELETE FROM events",
        "TRUNCATE events CASCADE",
        "UPDATE event_log SET position = position + 100",
        "DELETE FROM event_log",
    ] {
        let refused = sqlx::query(sql).execute(&app.pool).await;
        assert!(refused.is_err(), "{sql} was allowed");
    }
    assert_eq!(app.event_count().await, before);
    assert_gapless(&app.pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projects_history_is_one_index_range_in_log_order() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let a = app.create_project(&owner).await;
    let b = app.create_project(&owner).await;
    app.create_workspace(&owner, a, "main").await;
    app.create_workspace(&owner, b, "main").await;
    let history = tandem_commands::log::read_project_after(&app.pool, a, 0, 100)
        .await
        .unwrap();
    let types: Vec<&str> = history.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["ProjectCreated", "WorkspaceCreated"]);
    assert!(history.windows(2).all(|w| w[0].position < w[1].position));
    assert!(history.iter().all(|e| e.project_id == Some(a)));
    // A tiny table would be scanned whole; ask what a big one would get.
    let mut conn = PgConnection::connect(&app.db_url).await.unwrap();
    sqlx::query("SET enable_seqscan = off")
        .execute(&mut conn)
        .await
        .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN SELECT position FROM event_log WHERE project_id = $1 AND position > 0 ORDER BY position",
    )
    .bind(Uuid::nil())
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("event_log_project_idx"), "{plan}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_whose_ids_overflow_a_notification_are_still_sequenced() {
    let app = spawn_app().await;
    let mut conn = PgConnection::connect(&app.db_url).await.unwrap();
    // Three 3000-byte ids in one batch: their listing cannot fit a NOTIFY
    // payload, which must not stop the log.
    let mut tx = conn.begin().await.unwrap();
    for n in 0..3 {
        append(&mut tx, &format!("{n}{}", "x".repeat(3000)), 1)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    append(&mut conn, "after", 1).await.unwrap();
    wait_until_sequenced(&app.pool, 4).await;
    assert_eq!(assert_gapless(&app.pool).await, 4);
    assert!(position_of(&app.pool, "after", 1).await.is_some());
}
