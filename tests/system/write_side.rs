//! The write side's guarantees under races: per-aggregate optimistic
//! concurrency, email uniqueness, idempotency claims, and the metadata
//! stamped on every event.

use std::time::Duration;

use futures::future::join_all;
use reqwest::Method;
use serde_json::json;
use tandem_commands::idempotency::{Claim, IdempotencyStore};
use tandem_commands::{CommandContext, CommandError, WriteSide, WriteSideConfig};
use tandem_domain::project::{Project, ProjectCommand};
use tandem_domain::values::{Description, ProjectName};
use tandem_domain::{ProjectId, UserId};

use crate::support::*;

async fn write_side(app: &TestApp) -> WriteSide {
    let config = WriteSideConfig {
        position_wait: Duration::from_millis(500),
        ..WriteSideConfig::default()
    };
    WriteSide::start(app.pool.clone(), &config, None)
        .await
        .unwrap()
}

fn ctx(actor: UserId) -> CommandContext {
    CommandContext::for_request(Some(actor), uuid::Uuid::now_v7().to_string(), None)
}

async fn new_project(write: &WriteSide, owner: UserId) -> ProjectId {
    let id = ProjectId::generate();
    let create = ProjectCommand::Create {
        project_id: id,
        owner,
        name: ProjectName::parse("Race").unwrap(),
        description: Description::default(),
    };
    write
        .bus
        .execute::<Project>(&id.to_string(), create, &ctx(owner), None)
        .await
        .unwrap();
    id
}

fn rename(actor: UserId, n: usize) -> ProjectCommand {
    ProjectCommand::UpdateDetails {
        actor,
        name: Some(ProjectName::parse(&format!("name {n}")).unwrap()),
        description: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_concurrent_writers_expecting_one_version_exactly_one_wins() {
    let app = spawn_app().await;
    let write = write_side(&app).await;
    let owner = UserId::generate();
    let project = new_project(&write, owner).await;
    let attempts = (0..16).map(|n| {
        let write = write.clone();
        async move {
            write
                .bus
                .execute::<Project>(&project.to_string(), rename(owner, n), &ctx(owner), Some(1))
                .await
        }
    });
    let results = join_all(attempts).await;
    let wins = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "exactly one writer wins");
    for r in &results {
        match r {
            Ok(c) => assert_eq!(c.version, 2),
            Err(CommandError::PreconditionFailed { expected, current }) => {
                assert_eq!((*expected, *current), (1, 2));
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(app.events_of(&project.to_string()).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_without_a_precondition_are_re_decided_and_none_is_lost() {
    let app = spawn_app().await;
    let write = write_side(&app).await;
    let owner = UserId::generate();
    let project = new_project(&write, owner).await;
    let attempts = (0..12).map(|n| {
        let write = write.clone();
        async move {
            write
                .bus
                .execute::<Project>(&project.to_string(), rename(owner, n), &ctx(owner), None)
                .await
                .unwrap()
                .version
        }
    });
    let mut versions = join_all(attempts).await;
    versions.sort_unstable();
    assert_eq!(versions, (2..=13).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_parallel_registrations_of_one_email_admit_exactly_one() {
    let app = spawn_app().await;
    let registrations = (0..32).map(|i| {
        let app = &app;
        // Case and spacing vary; uniqueness is case-insensitive.
        let email = if i % 2 == 0 {
            "Race@Example.com".to_owned()
        } else {
            " race@example.COM ".to_owned()
        };
        async move { app.register(&email).await.status().as_u16() }
    });
    let statuses = join_all(registrations).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        31,
        "{statuses:?}"
    );
    let accounts: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(accounts, 1);
    let registered: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'UserRegistered'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(registered, 1);
    assert_eq!(app.login("RACE@example.com", PASSWORD).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_racing_claims_on_one_idempotency_key_exactly_one_runs() {
    let app = spawn_app().await;
    let store = IdempotencyStore::new(app.pool.clone());
    let claims = (0..16).map(|_| {
        let store = store.clone();
        async move {
            store
                .claim(
                    "user:x",
                    "key-1",
                    b"same request",
                    Duration::from_millis(300),
                )
                .await
                .unwrap()
        }
    });
    let results = join_all(claims).await;
    let fresh = results.iter().filter(|c| **c == Claim::Fresh).count();
    assert_eq!(fresh, 1, "{results:?}");
    assert!(results
        .iter()
        .all(|c| matches!(c, Claim::Fresh | Claim::InFlight)));
    let other = store
        .claim("user:x", "key-1", b"another request", Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(other, Claim::Mismatch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_carries_its_metadata_id_time_and_project() {
    let app = spawn_app().await;
    let owner = app.user().await;
    let r = app
        .as_user(&owner, Method::POST, "/projects")
        .header("x-correlation-id", "flow-42")
        .json(&json!({"name": "Traced"}))
        .send()
        .await
        .unwrap();
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let project = body(r).await["id"].as_str().unwrap().to_owned();
    let ws = app
        .create_workspace(&owner, project.parse().unwrap(), "main")
        .await;
    let put = app
        .as_user(
            &owner,
            Method::PUT,
            &format!("/workspaces/{ws}/files/a/b.py"),
        )
        .json(&json!({"content": "print(1)"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);

    let rows: Vec<(
        String,
        serde_json::Value,
        uuid::Uuid,
        Option<uuid::Uuid>,
        bool,
    )> = sqlx::query_as(
        "SELECT event_type, metadata, event_id, project_id, recorded_at <= now() FROM events",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(rows.len() >= 5, "{rows:?}");
    for (event_type, metadata, event_id, project_id, recorded) in &rows {
        assert_eq!(
            event_id.get_version_num(),
            7,
            "{event_type}: event ids are UUIDv7"
        );
        assert!(recorded);
        for key in ["request_id", "correlation_id", "causation_id", "actor_id"] {
            assert!(
                metadata[key].is_string(),
                "{event_type} lacks {key}: {metadata}"
            );
        }
        let scoped = !matches!(
            event_type.as_str(),
            "UserRegistered" | "UserLoggedIn" | "UserLoggedOut" | "DisplayNameUpdated"
        );
        if scoped {
            assert_eq!(metadata["project_id"], project.as_str(), "{event_type}");
            assert_eq!(project_id.map(|p| p.to_string()), Some(project.clone()));
        } else {
            assert!(project_id.is_none(), "{event_type}");
        }
    }
    let created = rows
        .iter()
        .find(|r| r.0 == "ProjectCreated")
        .map(|r| r.1.clone())
        .unwrap();
    assert_eq!(created["correlation_id"], "flow-42");
    assert_eq!(created["request_id"], request_id.as_str());
    assert_eq!(created["causation_id"], request_id.as_str());
    assert_eq!(created["actor_id"], owner.id.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_claim_abandoned_by_a_dead_request_can_be_taken_over() {
    let app = spawn_app().await;
    let store = IdempotencyStore::new(app.pool.clone());
    let first = store
        .claim("user:y", "k", b"req", Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(first, Claim::Fresh);
    // Still running a moment later: a retry is told so.
    let retry = store
        .claim("user:y", "k", b"req", Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(retry, Claim::InFlight);
    // Its process died: two minutes on, nobody will answer it.
    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '2 minutes'")
        .execute(&app.pool)
        .await
        .unwrap();
    let later = store
        .claim("user:y", "k", b"req", Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(later, Claim::Fresh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_race_in_a_group_commit_fails_only_its_own_command() {
    let app = spawn_app().await;
    let write = write_side(&app).await;
    let owner = UserId::generate();
    let contested = new_project(&write, owner).await;
    // Creations of fresh projects and renames racing for one version, all
    // at once, so they share batches.
    let creations = (0..24).map(|_| {
        let write = write.clone();
        async move { new_project(&write, owner).await }
    });
    let renames = (0..8).map(|n| {
        let write = write.clone();
        async move {
            write
                .bus
                .execute::<Project>(
                    &contested.to_string(),
                    rename(owner, n),
                    &ctx(owner),
                    Some(1),
                )
                .await
                .is_ok()
        }
    });
    let (created, renamed) = tokio::join!(join_all(creations), join_all(renames));
    assert_eq!(created.len(), 24);
    assert_eq!(renamed.iter().filter(|ok| **ok).count(), 1, "{renamed:?}");
    for project in created {
        assert_eq!(app.events_of(&project.to_string()).await.len(), 1);
    }
    assert_eq!(app.events_of(&contested.to_string()).await.len(), 2);
}

/// Loads of one aggregate that share a batch each get its events once
/// (not once per asker).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_loads_of_one_aggregate_each_see_its_events_once() {
    use cqrs_es::persist::PersistedEventRepository;
    use tandem_commands::event_store::BatchedEventStore;
    use tandem_commands::positions::AppendNotifier;

    let app = spawn_app().await;
    let write = write_side(&app).await;
    let owner = UserId::generate();
    let project = new_project(&write, owner).await;
    for n in 0..3 {
        write
            .bus
            .execute::<Project>(&project.to_string(), rename(owner, n), &ctx(owner), None)
            .await
            .unwrap();
    }
    let store = BatchedEventStore::new(&app.pool, AppendNotifier::spawn(app.pool.clone()));
    let id = project.to_string();
    // Enough at once that many share a batch, with other streams between.
    let loads = (0..64).map(|n| {
        let store = store.clone();
        let id = id.clone();
        async move {
            if n % 4 == 3 {
                store
                    .get_events::<Project>(&ProjectId::generate().to_string())
                    .await
            } else {
                store.get_events::<Project>(&id).await
            }
        }
    });
    for (n, loaded) in join_all(loads).await.into_iter().enumerate() {
        let events = loaded.unwrap();
        let sequences: Vec<usize> = events.iter().map(|e| e.sequence).collect();
        let expected: Vec<usize> = if n % 4 == 3 {
            vec![]
        } else {
            (1..=4).collect()
        };
        assert_eq!(sequences, expected, "load {n}");
    }
}

/// The event store's appender keeps its connection between batches: a
/// refused append (a lost race) leaves it in use, and a connection whose
/// backend died fails one append and is replaced for the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_appender_keeps_its_connection_through_a_refusal_and_replaces_a_dead_one() {
    use cqrs_es::persist::{PersistedEventRepository, PersistenceError, SerializedEvent};
    use tandem_commands::event_store::BatchedEventStore;
    use tandem_commands::positions::AppendNotifier;

    let pool = pool(&fresh_database().await, 4).await;
    let store = BatchedEventStore::new(&pool, AppendNotifier::spawn(pool.clone()));
    let id = ProjectId::generate().to_string();
    let event = |sequence| SerializedEvent {
        aggregate_id: id.clone(),
        sequence,
        aggregate_type: "Project".to_owned(),
        event_type: "Probe".to_owned(),
        event_version: "1".to_owned(),
        payload: json!({}),
        metadata: json!({}),
    };
    let appender = || async {
        sqlx::query_scalar::<_, i32>(
            "SELECT pid FROM pg_stat_activity
              WHERE datname = current_database() AND query LIKE '%tandem_append(%'
                AND query NOT LIKE '%pg_stat_activity%'",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    store.persist::<Project>(&[event(1)], None).await.unwrap();
    let first = appender().await;
    assert_eq!(first.len(), 1, "one appending backend: {first:?}");

    let refused = store.persist::<Project>(&[event(1)], None).await;
    assert!(matches!(
        refused,
        Err(PersistenceError::OptimisticLockError)
    ));
    store.persist::<Project>(&[event(2)], None).await.unwrap();
    assert_eq!(
        appender().await,
        first,
        "the same connection after a refusal"
    );

    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(first[0])
        .execute(&pool)
        .await
        .unwrap();
    while appender().await == first {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lost = store.persist::<Project>(&[event(3)], None).await;
    assert!(
        matches!(lost, Err(PersistenceError::ConnectionError(_))),
        "the dead connection's append fails as unavailable: {lost:?}"
    );
    store.persist::<Project>(&[event(3)], None).await.unwrap();
    let replaced = appender().await;
    assert_eq!(replaced.len(), 1);
    assert_ne!(replaced, first, "a new connection");
    let sequences: Vec<usize> = store
        .get_events::<Project>(&id)
        .await
        .unwrap()
        .iter()
        .map(|e| e.sequence)
        .collect();
    assert_eq!(sequences, [1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_this_process_leads_its_appends_are_sequenced_by_their_own_commit() {
    use std::sync::atomic::Ordering;
    // No sequencer runs anywhere: only the append's transaction can number
    // its events.
    let app = spawn_app_with(|o| o.sequencer = false).await;
    let write = write_side(&app).await;
    let local = write.local_sequencer();
    local.step_size.store(100, Ordering::Release);
    local.leading.store(true, Ordering::Release);
    let owner = UserId::generate();
    let project = new_project(&write, owner).await;
    let id = project.to_string();
    let at_commit = position_of(&app.pool, &id, 1).await;
    assert!(at_commit.is_some(), "sequenced when the command returned");
    assert_eq!(local.known_head(), at_commit);

    // Leading no more: a plain append, left for a sequencer.
    local.leading.store(false, Ordering::Release);
    let committed = write
        .bus
        .execute::<Project>(&id, rename(owner, 1), &ctx(owner), None)
        .await
        .unwrap();
    assert_eq!(committed.position, None);
    assert_eq!(position_of(&app.pool, &id, 2).await, None);
}

/// The append that sequenced its events at commit tells the waiting
/// command itself: no notification is needed, and none can arrive here
/// (the listener listens to another database, and there is no time to
/// wait for one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_sequenced_at_commit_answers_with_its_position_without_waiting() {
    use std::sync::atomic::Ordering;
    use tandem_commands::notifications::Notifications;
    use tandem_commands::positions::SEQUENCED_CHANNEL;

    let app = spawn_app_with(|o| o.sequencer = false).await;
    let elsewhere = pool(&fresh_database().await, 2).await;
    let deaf = Notifications::listen(&elsewhere, &[SEQUENCED_CHANNEL])
        .await
        .unwrap();
    let config = WriteSideConfig {
        position_wait: Duration::ZERO,
        ..WriteSideConfig::default()
    };
    let write = WriteSide::start(app.pool.clone(), &config, Some(&deaf))
        .await
        .unwrap();
    let local = write.local_sequencer();
    local.step_size.store(100, Ordering::Release);
    local.leading.store(true, Ordering::Release);
    let owner = UserId::generate();
    let project = ProjectId::generate();
    let id = project.to_string();
    let create = ProjectCommand::Create {
        project_id: project,
        owner,
        name: ProjectName::parse("Told").unwrap(),
        description: Description::default(),
    };
    let created = write
        .bus
        .execute_new::<Project>(&id, create, &ctx(owner))
        .await
        .unwrap();
    assert!(created.position.is_some());
    assert_eq!(created.position, position_of(&app.pool, &id, 1).await);
    // One step numbers several commands' events: each hears its own.
    let renames = (0..8).map(|n| {
        let write = write.clone();
        let id = id.clone();
        async move {
            write
                .bus
                .execute::<Project>(&id, rename(owner, n), &ctx(owner), None)
                .await
                .unwrap()
        }
    });
    for committed in join_all(renames).await {
        let sequence = committed.version as i64;
        assert!(committed.position.is_some(), "{committed:?}");
        assert_eq!(
            committed.position,
            position_of(&app.pool, &id, sequence).await
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_at_commit_that_fills_up_leaves_the_rest_to_the_woken_sequencer() {
    use tandem_commands::sequencer::{Sequencer, SequencerConfig};
    let app = spawn_app_with(|o| o.sequencer = false).await;
    let write = write_side(&app).await;
    let local = write.local_sequencer();
    // Steps of 3, and no polling to speak of: the sequencer steps again
    // only when woken.
    let config = SequencerConfig {
        batch_size: 3,
        poll_interval: Duration::from_secs(3600),
        ..SequencerConfig::default()
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let sequencer = Sequencer::new(app.pool.clone(), config).with_local(local.clone());
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { sequencer.run(stop.cancelled()).await }
    });
    eventually(Duration::from_secs(10), || async { local.known_head() }).await;
    // A backlog nobody announced: committed, queued, but no NOTIFY.
    for n in 1..=7 {
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
             VALUES ('Probe', 'backlog', $1, 'Probed', '1', '{}', '{}')",
        )
        .bind(n)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    let owner = UserId::generate();
    let project = new_project(&write, owner).await;
    // Its step of 3 took the backlog's oldest; the rest, its own event
    // among them, came from the sequencer it woke.
    let position = position_of(&app.pool, &project.to_string(), 1)
        .await
        .expect("sequenced within the wait");
    assert_eq!(position, 8);
    assert_eq!(position_of(&app.pool, "backlog", 7).await, Some(7));
    stop.cancel();
    task.await.unwrap();
}
