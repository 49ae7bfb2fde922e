//! Every projector, applied directly (no NATS): the same event delivered
//! twice changes nothing the second time.
//!
//! One realistic log ([`history`]) touches every read model; each
//! projector's test applies the whole of it (a projector sees every event
//! of the stream, not only its own), checks the resulting rows value by
//! value, then redelivers the log every way a consumer can (the same batch
//! again, a batch behind the checkpoint, single events, overlapping
//! chunks) and checks that a digest of its tables did not move.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use cqrs_es::{Aggregate, DomainEvent};
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use tandem_domain::envelope::{Envelope, LogRecord};
use tandem_domain::file::{File, FileEvent};
use tandem_domain::job::{Job, JobEvent, Language};
use tandem_domain::project::{Project, ProjectEvent};
use tandem_domain::user::{User, UserEvent};
use tandem_domain::{FileId, JobId, ProjectId, Role, UserId, WorkspaceId};
use tandem_projections::consumer::Sink;
use tandem_projections::models::{Activity, Files, Jobs, Projects, Users};
use tandem_projections::rows::RowOps;
use tandem_projections::tables::ApplyError;
use tandem_projections::{Projector, ReadModels, TableProjection};
use uuid::Uuid;

use crate::support::{fresh_database, pool};

// Building envelopes ---------------------------------------------------------

/// Which stream an event belongs to and who caused it.
#[derive(Clone, Copy, Debug)]
struct Source {
    aggregate_type: &'static str,
    aggregate_id: Uuid,
    project: Option<Uuid>,
    /// `None` for events no user caused (the executor's reports).
    actor: Option<Uuid>,
}

fn user_source(user: UserId) -> Source {
    Source {
        aggregate_type: User::TYPE,
        aggregate_id: user.as_uuid(),
        project: None,
        actor: Some(user.as_uuid()),
    }
}

fn project_source(project: ProjectId, actor: UserId) -> Source {
    Source {
        aggregate_type: Project::TYPE,
        aggregate_id: project.as_uuid(),
        project: Some(project.as_uuid()),
        actor: Some(actor.as_uuid()),
    }
}

fn file_source(project: ProjectId, workspace: WorkspaceId, path: &str, actor: UserId) -> Source {
    Source {
        aggregate_type: File::TYPE,
        aggregate_id: FileId::for_path(workspace, path).as_uuid(),
        project: Some(project.as_uuid()),
        actor: Some(actor.as_uuid()),
    }
}

fn job_source(job: JobId, project: ProjectId, actor: Option<UserId>) -> Source {
    Source {
        aggregate_type: Job::TYPE,
        aggregate_id: job.as_uuid(),
        project: Some(project.as_uuid()),
        actor: actor.map(|a| a.as_uuid()),
    }
}

/// The envelope the relay would publish for `event` at `position`: the
/// payload is the domain event's store shape, the metadata carries the actor.
fn envelope<E: DomainEvent + Serialize>(
    event: &E,
    source: Source,
    position: i64,
    sequence: i64,
    time: DateTime<Utc>,
) -> Envelope {
    let payload = serde_json::to_value(event).expect("events serialize");
    let metadata = match source.actor {
        Some(actor) => json!({"actor_id": actor.to_string(), "correlation_id": "test"}),
        None => json!({}),
    };
    let (event_type, event_version) = (event.event_type(), event.event_version());
    let aggregate_id = source.aggregate_id.to_string();
    Envelope::from_log(&LogRecord {
        position,
        event_id: Uuid::now_v7(),
        aggregate_type: source.aggregate_type,
        aggregate_id: &aggregate_id,
        sequence,
        event_type: &event_type,
        event_version: &event_version,
        payload: &payload,
        metadata: &metadata,
        recorded_at: time,
        project_id: source.project,
    })
}

/// A log under construction: consecutive positions from 1, sequences per
/// aggregate from 1, one minute between events.
struct Log {
    events: Vec<Envelope>,
    sequences: HashMap<Uuid, i64>,
    clock: DateTime<Utc>,
}

impl Log {
    fn starting_at(clock: DateTime<Utc>) -> Self {
        Self {
            events: Vec::new(),
            sequences: HashMap::new(),
            clock,
        }
    }

    fn push<E: DomainEvent + Serialize>(&mut self, source: Source, event: E) -> Envelope {
        let position = self.events.len() as i64 + 1;
        let sequence = self.sequences.entry(source.aggregate_id).or_insert(0);
        *sequence += 1;
        let envelope = envelope(&event, source, position, *sequence, self.clock);
        self.clock += Duration::minutes(1);
        self.events.push(envelope.clone());
        envelope
    }
}

// The realistic log ----------------------------------------------------------

const A_PY: &str = "src/a.py";
const README: &str = "README.md";
const NOTES: &str = "notes.txt";

/// Every kind of event of every aggregate, across two UTC days (midnight
/// falls between positions 15 and 16) and two projects.
struct History {
    log: Vec<Envelope>,
    owner: UserId,
    alice: UserId,
    bob: UserId,
    p: ProjectId,
    q: ProjectId,
    w1: WorkspaceId,
    w2: WorkspaceId,
    j1: JobId,
    j2: JobId,
    j3: JobId,
    /// Events the assertions refer to, by name.
    marks: HashMap<&'static str, Envelope>,
}

impl History {
    fn time(&self, mark: &str) -> DateTime<Utc> {
        self.marks[mark].time
    }

    fn last(&self) -> i64 {
        self.log.last().expect("a history has events").position
    }
}

fn saved(p: ProjectId, w: WorkspaceId, path: &str, content: &str, by: UserId) -> FileEvent {
    FileEvent::FileSaved {
        project_id: p,
        workspace_id: w,
        path: path.to_owned(),
        content: content.to_owned(),
        size_bytes: content.len() as u64,
        by,
    }
}

fn deleted(p: ProjectId, w: WorkspaceId, path: &str, by: UserId) -> FileEvent {
    FileEvent::FileDeleted {
        project_id: p,
        workspace_id: w,
        path: path.to_owned(),
        by,
    }
}

fn started(attempt: u32, worker: &str) -> JobEvent {
    JobEvent::JobAttemptStarted {
        attempt,
        worker: worker.to_owned(),
    }
}

fn history() -> History {
    let (owner, alice, bob) = (UserId::generate(), UserId::generate(), UserId::generate());
    let (p, q) = (ProjectId::generate(), ProjectId::generate());
    let (w1, w2) = (WorkspaceId::generate(), WorkspaceId::generate());
    let (j1, j2, j3) = (JobId::generate(), JobId::generate(), JobId::generate());
    let start = Utc.with_ymd_and_hms(2026, 11, 22, 23, 45, 0).unwrap();
    let mut log = Log::starting_at(start);
    let mut marks = HashMap::new();
    let mut mark = |name: &'static str, e: Envelope| {
        marks.insert(name, e);
    };

    // 1-3: users.
    for (user, email, name, label) in [
        (owner, "olga@example.com", "Olga Owner", "owner registered"),
        (alice, "alice@example.com", "Alice", "alice registered"),
        (bob, "bob@example.com", "Bob", "bob registered"),
    ] {
        let e = log.push(
            user_source(user),
            UserEvent::UserRegistered {
                user_id: user,
                email: email.to_owned(),
                display_name: name.to_owned(),
            },
        );
        mark(label, e);
    }

    // 4-11: project P, its members and workspaces.
    let by_owner = project_source(p, owner);
    let e = log.push(
        by_owner,
        ProjectEvent::ProjectCreated {
            project_id: p,
            owner_id: owner,
            name: "Draft".to_owned(),
            description: String::new(),
        },
    );
    mark("p created", e);
    log.push(
        by_owner,
        ProjectEvent::ProjectDetailsUpdated {
            name: "Tandem demo".to_owned(),
            description: "Shared scratchpad".to_owned(),
            by: owner,
        },
    );
    log.push(
        by_owner,
        ProjectEvent::CollaboratorInvited {
            user_id: alice,
            role: Role::Collaborator,
            by: owner,
        },
    );
    let e = log.push(
        by_owner,
        ProjectEvent::CollaboratorInvited {
            user_id: bob,
            role: Role::Viewer,
            by: owner,
        },
    );
    mark("bob invited", e);
    let e = log.push(
        by_owner,
        ProjectEvent::MemberRoleChanged {
            user_id: bob,
            from: Role::Viewer,
            to: Role::Collaborator,
            by: owner,
        },
    );
    mark("bob promoted", e);
    let e = log.push(
        by_owner,
        ProjectEvent::WorkspaceCreated {
            workspace_id: w1,
            name: "main".to_owned(),
            by: owner,
        },
    );
    mark("w1 created", e);
    log.push(
        project_source(p, alice),
        ProjectEvent::WorkspaceCreated {
            workspace_id: w2,
            name: "scratch".to_owned(),
            by: alice,
        },
    );
    let e = log.push(
        by_owner,
        ProjectEvent::WorkspaceRenamed {
            workspace_id: w1,
            name: "trunk".to_owned(),
            by: owner,
        },
    );
    mark("w1 renamed", e);

    // 12-18: files. a.py saved twice then deleted; README saved once;
    // notes saved, deleted and saved again (version 3).
    let e = log.push(
        file_source(p, w1, A_PY, alice),
        saved(p, w1, A_PY, "print(1)\n", alice),
    );
    mark("a.py v1", e);
    let e = log.push(
        file_source(p, w1, A_PY, bob),
        saved(p, w1, A_PY, "print(2)\n", bob),
    );
    mark("a.py v2", e);
    let e = log.push(
        file_source(p, w1, README, bob),
        saved(p, w1, README, "# Demo\n", bob),
    );
    mark("readme v1", e);
    log.push(file_source(p, w1, A_PY, alice), deleted(p, w1, A_PY, alice));
    let e = log.push(
        file_source(p, w2, NOTES, alice),
        saved(p, w2, NOTES, "first", alice),
    );
    mark("notes v1", e);
    log.push(
        file_source(p, w2, NOTES, alice),
        deleted(p, w2, NOTES, alice),
    );
    let e = log.push(
        file_source(p, w2, NOTES, alice),
        saved(p, w2, NOTES, "second", alice),
    );
    mark("notes v3", e);

    // 19: a profile change.
    let e = log.push(
        user_source(alice),
        UserEvent::DisplayNameUpdated {
            display_name: "Alice Liddell".to_owned(),
        },
    );
    mark("alice renamed", e);

    // 20-28: job 1 fails an attempt, is retried, fails on its own, is
    // retried on request and cancelled while running.
    let executor = job_source(j1, p, None);
    let e = log.push(
        job_source(j1, p, Some(alice)),
        JobEvent::JobSubmitted {
            job_id: j1,
            project_id: p,
            submitted_by: alice,
            language: Language::Bash,
            source: "cat README.md".to_owned(),
            workspace_id: Some(w1),
            path: Some(README.to_owned()),
            file_version: Some(1),
            stdin: String::new(),
            timeout_ms: 5_000,
            max_attempts: 2,
        },
    );
    mark("j1 submitted", e);
    log.push(executor, started(1, "worker-a"));
    let e = log.push(
        executor,
        JobEvent::JobAttemptFailed {
            attempt: 1,
            reason: "worker lost".to_owned(),
        },
    );
    mark("j1 attempt 1 failed", e);
    let retry_at = log.clock + Duration::seconds(2);
    log.push(
        executor,
        JobEvent::JobRetryScheduled {
            next_attempt: 2,
            retry_at,
        },
    );
    log.push(executor, started(2, "worker-b"));
    let e = log.push(
        executor,
        JobEvent::JobCompleted {
            attempt: 2,
            exit_code: 1,
            stdout: "out".to_owned(),
            stderr: "boom".to_owned(),
            duration_ms: 120,
            truncated: false,
        },
    );
    mark("j1 completed", e);
    log.push(
        job_source(j1, p, Some(alice)),
        JobEvent::JobRetryRequested { by: alice },
    );
    log.push(executor, started(3, "worker-a"));
    let e = log.push(
        job_source(j1, p, Some(owner)),
        JobEvent::JobCancelled { by: owner },
    );
    mark("j1 cancelled", e);

    // 29-32: job 2 times out and is marked dead.
    let executor = job_source(j2, p, None);
    let e = log.push(
        job_source(j2, p, Some(bob)),
        JobEvent::JobSubmitted {
            job_id: j2,
            project_id: p,
            submitted_by: bob,
            language: Language::Python,
            source: "while True: pass".to_owned(),
            workspace_id: None,
            path: None,
            file_version: None,
            stdin: String::new(),
            timeout_ms: 1_000,
            max_attempts: 1,
        },
    );
    mark("j2 submitted", e);
    log.push(executor, started(1, "worker-b"));
    let e = log.push(
        executor,
        JobEvent::JobAttemptFailed {
            attempt: 1,
            reason: "timed out".to_owned(),
        },
    );
    mark("j2 attempt 1 failed", e);
    let e = log.push(
        executor,
        JobEvent::JobMarkedDead {
            reason: "attempts exhausted: timed out".to_owned(),
        },
    );
    mark("j2 dead", e);

    // 33-35: job 3 succeeds.
    let executor = job_source(j3, p, None);
    let e = log.push(
        job_source(j3, p, Some(owner)),
        JobEvent::JobSubmitted {
            job_id: j3,
            project_id: p,
            submitted_by: owner,
            language: Language::Javascript,
            source: "console.log('hi')".to_owned(),
            workspace_id: None,
            path: None,
            file_version: None,
            stdin: "x".to_owned(),
            timeout_ms: 2_000,
            max_attempts: 3,
        },
    );
    mark("j3 submitted", e);
    log.push(executor, started(1, "worker-a"));
    let e = log.push(
        executor,
        JobEvent::JobCompleted {
            attempt: 1,
            exit_code: 0,
            stdout: "hi\n".to_owned(),
            stderr: String::new(),
            duration_ms: 42,
            truncated: true,
        },
    );
    mark("j3 completed", e);

    // 36-38: P loses a member and a workspace, then is archived.
    log.push(
        by_owner,
        ProjectEvent::MemberRemoved {
            user_id: alice,
            by: owner,
        },
    );
    log.push(
        by_owner,
        ProjectEvent::WorkspaceDeleted {
            workspace_id: w2,
            by: owner,
        },
    );
    let e = log.push(by_owner, ProjectEvent::ProjectArchived { by: owner });
    mark("p archived", e);

    // 39: another project, so nothing leaks between projects.
    let e = log.push(
        project_source(q, bob),
        ProjectEvent::ProjectCreated {
            project_id: q,
            owner_id: bob,
            name: "Side project".to_owned(),
            description: "Bob's".to_owned(),
        },
    );
    mark("q created", e);

    History {
        log: log.events,
        owner,
        alice,
        bob,
        p,
        q,
        w1,
        w2,
        j1,
        j2,
        j3,
        marks,
    }
}

// Applying and comparing -----------------------------------------------------

/// Per table of the projector: row count and a sum of row hashes.
type Digest = Vec<(String, i64, String)>;

async fn digest(pool: &PgPool, projector: &dyn Projector) -> Digest {
    let mut out = Vec::new();
    for table in projector.tables() {
        let (count, sum): (i64, String) = sqlx::query_as(&format!(
            "SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)::numeric), 0)::text
               FROM read.{table} t"
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        out.push(((*table).to_owned(), count, sum));
    }
    out
}

/// A live projection of `projector` on a fresh database.
async fn fresh_projection(projector: Arc<dyn Projector>) -> (PgPool, TableProjection) {
    let url = fresh_database().await;
    let pool = pool(&url, 4).await;
    let projection = TableProjection::live(pool.clone(), projector);
    assert_eq!(projection.checkpoint().await.unwrap(), 0);
    (pool, projection)
}

/// `result` is the checkpoint guard's refusal (`tandem_advance_projection`).
fn assert_refused(result: Result<i64, ApplyError>) {
    match result {
        Err(ApplyError::Database(sqlx::Error::Database(e))) => {
            assert_eq!(e.code().as_deref(), Some("T0001"), "{e}");
        }
        other => panic!("expected the checkpoint guard to refuse the batch, got {other:?}"),
    }
}

/// `result` failed in the database with SQLSTATE `code`.
fn assert_database_error(result: Result<i64, ApplyError>, code: &str) {
    match result {
        Err(ApplyError::Database(sqlx::Error::Database(e))) => {
            assert_eq!(e.code().as_deref(), Some(code), "{e}");
        }
        other => panic!("expected SQLSTATE {code}, got {other:?}"),
    }
}

/// Tables and checkpoint are still `digest` and `checkpoint`.
async fn assert_unchanged(
    pool: &PgPool,
    projection: &TableProjection,
    digest_before: &Digest,
    checkpoint: i64,
    what: &str,
) {
    assert_eq!(
        &digest(pool, projection.projector().as_ref()).await,
        digest_before,
        "{what} changed the tables"
    );
    assert_eq!(
        projection.checkpoint().await.unwrap(),
        checkpoint,
        "{what} moved the checkpoint"
    );
}

/// Applies `events` (positions 1..) to a fresh projection in one batch, then
/// redelivers them every way a consumer can and checks that nothing moves;
/// also checks that delivering them in pieces converges on the same tables.
/// Returns the pool of the one-batch database and its digest.
async fn apply_twice(projector: Arc<dyn Projector>, events: &[Envelope]) -> (PgPool, Digest) {
    let last = events.last().expect("events to apply").position;
    let (pool, projection) = fresh_projection(projector.clone()).await;
    assert_eq!(projection.apply(0, events).await.unwrap(), last);
    assert_eq!(projection.checkpoint().await.unwrap(), last);
    let applied = digest(&pool, projector.as_ref()).await;
    assert!(
        applied.iter().any(|(_, count, _)| *count > 0),
        "{}: the log left its tables empty",
        projector.name()
    );

    // (a) The same batch again, from the same starting point: refused.
    assert_refused(projection.apply(0, events).await);
    assert_unchanged(&pool, &projection, &applied, last, "the same batch again").await;

    // (b) The same events after the checkpoint: all skipped.
    assert_eq!(projection.apply(last, events).await.unwrap(), last);
    assert_unchanged(&pool, &projection, &applied, last, "a redelivery").await;

    // (c) Each event alone: skipped when delivered behind the checkpoint,
    // refused when it claims to follow its predecessor.
    for event in events {
        assert_eq!(
            projection
                .apply(last, std::slice::from_ref(event))
                .await
                .unwrap(),
            last
        );
        assert_refused(
            projection
                .apply(event.position - 1, std::slice::from_ref(event))
                .await,
        );
    }
    assert_unchanged(&pool, &projection, &applied, last, "single redeliveries").await;

    // (d) Elsewhere: the first half one event per batch, each delivered
    // twice, then the whole log again from the half (the overlap skipped).
    let (other_pool, other) = fresh_projection(projector.clone()).await;
    let half = events.len() / 2;
    let mut checkpoint = 0;
    for event in &events[..half] {
        let one = std::slice::from_ref(event);
        checkpoint = other.apply(checkpoint, one).await.unwrap();
        assert_eq!(checkpoint, event.position);
        assert_eq!(other.apply(checkpoint, one).await.unwrap(), checkpoint);
    }
    assert_eq!(other.apply(checkpoint, events).await.unwrap(), last);
    assert_eq!(
        digest(&other_pool, projector.as_ref()).await,
        applied,
        "{}: piecewise delivery built different tables",
        projector.name()
    );
    other_pool.close().await;

    (pool, applied)
}

// Rows as the tests read them back.
type UserRow = (Uuid, String, DateTime<Utc>, DateTime<Utc>, i64);
type MemberRow = (Uuid, Uuid, String, DateTime<Utc>, DateTime<Utc>);
type WorkspaceRow = (Uuid, Uuid, String, Uuid, DateTime<Utc>, DateTime<Utc>);
type FileRow = (Uuid, String, Uuid, Uuid, i64, i64, Uuid, DateTime<Utc>);
type VersionRow = (Uuid, i64, Uuid, String, String, i64, Uuid, DateTime<Utc>);

// One test per projector -------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_apply_twice() {
    let h = history();
    let (pool, _) = apply_twice(Arc::new(Users), &h.log).await;
    let rows: Vec<UserRow> = sqlx::query_as(
        "SELECT user_id, display_name, registered_at, updated_at, version
           FROM read.users ORDER BY registered_at",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let owner_at = h.time("owner registered");
    let alice_at = h.time("alice registered");
    let bob_at = h.time("bob registered");
    assert_eq!(
        rows,
        vec![
            (h.owner.0, "Olga Owner".to_owned(), owner_at, owner_at, 1),
            (
                h.alice.0,
                "Alice Liddell".to_owned(),
                alice_at,
                h.time("alice renamed"),
                2
            ),
            (h.bob.0, "Bob".to_owned(), bob_at, bob_at, 1),
        ]
    );
}

type ProjectRow = (
    Uuid,
    String,
    String,
    Uuid,
    bool,
    Option<DateTime<Utc>>,
    i32,
    DateTime<Utc>,
    DateTime<Utc>,
    i64,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projects_apply_twice() {
    let h = history();
    let (pool, _) = apply_twice(Arc::new(Projects), &h.log).await;

    let projects: Vec<ProjectRow> = sqlx::query_as(
        "SELECT project_id, name, description, owner_id, archived, archived_at, member_count,
                created_at, updated_at, version
           FROM read.projects ORDER BY created_at",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let archived_at = h.time("p archived");
    let q_at = h.time("q created");
    assert_eq!(
        projects,
        vec![
            (
                h.p.0,
                "Tandem demo".to_owned(),
                "Shared scratchpad".to_owned(),
                h.owner.0,
                true,
                Some(archived_at),
                2,
                h.time("p created"),
                archived_at,
                11,
            ),
            (
                h.q.0,
                "Side project".to_owned(),
                "Bob's".to_owned(),
                h.bob.0,
                false,
                None,
                1,
                q_at,
                q_at,
                1,
            ),
        ]
    );

    // Alice was invited and removed; Bob was invited as a viewer, promoted.
    let members: Vec<MemberRow> = sqlx::query_as(
        "SELECT project_id, user_id, role, joined_at, updated_at
           FROM read.members ORDER BY joined_at",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let p_at = h.time("p created");
    assert_eq!(
        members,
        vec![
            (h.p.0, h.owner.0, "owner".to_owned(), p_at, p_at),
            (
                h.p.0,
                h.bob.0,
                "collaborator".to_owned(),
                h.time("bob invited"),
                h.time("bob promoted")
            ),
            (h.q.0, h.bob.0, "owner".to_owned(), q_at, q_at),
        ]
    );
    // member_count agrees with the members table.
    let disagreeing: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM read.projects p
          WHERE p.member_count <> (SELECT count(*) FROM read.members m WHERE m.project_id = p.project_id)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(disagreeing, 0);

    // w1 renamed, w2 deleted.
    let workspaces: Vec<WorkspaceRow> = sqlx::query_as(
        "SELECT workspace_id, project_id, name, created_by, created_at, updated_at
               FROM read.workspaces",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        workspaces,
        vec![(
            h.w1.0,
            h.p.0,
            "trunk".to_owned(),
            h.owner.0,
            h.time("w1 created"),
            h.time("w1 renamed")
        )]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_apply_twice() {
    let h = history();
    let (pool, _) = apply_twice(Arc::new(Files), &h.log).await;
    let a = FileId::for_path(h.w1, A_PY).as_uuid();
    let readme = FileId::for_path(h.w1, README).as_uuid();
    let notes = FileId::for_path(h.w2, NOTES).as_uuid();

    // a.py is deleted; notes.txt is back at version 3.
    let files: Vec<FileRow> = sqlx::query_as(
        "SELECT workspace_id, path, file_id, project_id, version, size_bytes, updated_by, updated_at
           FROM read.files ORDER BY path COLLATE \"C\"",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        files,
        vec![
            (
                h.w1.0,
                README.to_owned(),
                readme,
                h.p.0,
                1,
                7,
                h.bob.0,
                h.time("readme v1")
            ),
            (
                h.w2.0,
                NOTES.to_owned(),
                notes,
                h.p.0,
                3,
                6,
                h.alice.0,
                h.time("notes v3")
            ),
        ]
    );

    // Every saved content stays, deleted or not.
    let versions: Vec<VersionRow> = sqlx::query_as(
        "SELECT file_id, version, workspace_id, path, content, size_bytes, saved_by, saved_at
               FROM read.file_versions ORDER BY saved_at",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let row = |file: Uuid,
               version: i64,
               w: WorkspaceId,
               path: &str,
               content: &str,
               by: UserId,
               mark: &str| {
        (
            file,
            version,
            w.0,
            path.to_owned(),
            content.to_owned(),
            content.len() as i64,
            by.0,
            h.time(mark),
        )
    };
    assert_eq!(
        versions,
        vec![
            row(a, 1, h.w1, A_PY, "print(1)\n", h.alice, "a.py v1"),
            row(a, 2, h.w1, A_PY, "print(2)\n", h.bob, "a.py v2"),
            row(readme, 1, h.w1, README, "# Demo\n", h.bob, "readme v1"),
            row(notes, 1, h.w2, NOTES, "first", h.alice, "notes v1"),
            row(notes, 3, h.w2, NOTES, "second", h.alice, "notes v3"),
        ]
    );
    // The current version of every file is among its versions, with its size.
    let orphans: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM read.files f
          WHERE NOT EXISTS (SELECT 1 FROM read.file_versions v
                             WHERE v.file_id = f.file_id AND v.version = f.version
                               AND v.size_bytes = f.size_bytes AND v.path = f.path)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(orphans, 0);
}

type JobRow = (
    Uuid,
    String,
    i32,
    Option<i32>,
    Option<String>,
    Option<String>,
    Option<bool>,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    DateTime<Utc>,
    i64,
);

type AttemptRow = (
    Uuid,
    i32,
    String,
    String,
    Option<i32>,
    Option<String>,
    Option<i64>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_apply_twice() {
    let h = history();
    let (pool, _) = apply_twice(Arc::new(Jobs), &h.log).await;

    let jobs: Vec<JobRow> = sqlx::query_as(
        "SELECT job_id, status, attempts, exit_code, stdout, stderr, truncated, reason, retry_at,
                finished_at, updated_at, version
           FROM read.jobs ORDER BY submitted_at",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let cancelled = h.time("j1 cancelled");
    let dead = h.time("j2 dead");
    let succeeded = h.time("j3 completed");
    assert_eq!(
        jobs,
        vec![
            // The retry on request cleared the failed run's result.
            (
                h.j1.0,
                "cancelled".to_owned(),
                3,
                None,
                None,
                None,
                None,
                None,
                None,
                Some(cancelled),
                cancelled,
                9
            ),
            (
                h.j2.0,
                "dead".to_owned(),
                1,
                None,
                None,
                None,
                None,
                Some("attempts exhausted: timed out".to_owned()),
                None,
                Some(dead),
                dead,
                4
            ),
            (
                h.j3.0,
                "succeeded".to_owned(),
                1,
                Some(0),
                Some("hi\n".to_owned()),
                Some(String::new()),
                Some(true),
                None,
                None,
                Some(succeeded),
                succeeded,
                3
            ),
        ]
    );

    // What the submission said stays as it was.
    type Submission = (
        Uuid,
        Uuid,
        String,
        Option<Uuid>,
        Option<String>,
        i64,
        i32,
        DateTime<Utc>,
    );
    let submitted: Vec<Submission> = sqlx::query_as(
        "SELECT project_id, submitted_by, language, workspace_id, path, timeout_ms, max_attempts,
                submitted_at
           FROM read.jobs ORDER BY submitted_at",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        submitted,
        vec![
            (
                h.p.0,
                h.alice.0,
                "bash".to_owned(),
                Some(h.w1.0),
                Some(README.to_owned()),
                5_000,
                2,
                h.time("j1 submitted")
            ),
            (
                h.p.0,
                h.bob.0,
                "python".to_owned(),
                None,
                None,
                1_000,
                1,
                h.time("j2 submitted")
            ),
            (
                h.p.0,
                h.owner.0,
                "javascript".to_owned(),
                None,
                None,
                2_000,
                3,
                h.time("j3 submitted")
            ),
        ]
    );

    let attempts: Vec<AttemptRow> = sqlx::query_as(
        "SELECT job_id, attempt, worker, status, exit_code, reason, duration_ms, started_at,
                finished_at
           FROM read.job_attempts ORDER BY started_at",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let minute = Duration::minutes(1);
    let j1_failed = h.time("j1 attempt 1 failed");
    let j1_completed = h.time("j1 completed");
    let j2_failed = h.time("j2 attempt 1 failed");
    assert_eq!(
        attempts,
        vec![
            (
                h.j1.0,
                1,
                "worker-a".to_owned(),
                "failed".to_owned(),
                None,
                Some("worker lost".to_owned()),
                None,
                j1_failed - minute,
                Some(j1_failed)
            ),
            (
                h.j1.0,
                2,
                "worker-b".to_owned(),
                "failed".to_owned(),
                Some(1),
                None,
                Some(120),
                j1_completed - minute,
                Some(j1_completed)
            ),
            (
                h.j1.0,
                3,
                "worker-a".to_owned(),
                "cancelled".to_owned(),
                None,
                None,
                None,
                cancelled - minute,
                Some(cancelled)
            ),
            (
                h.j2.0,
                1,
                "worker-b".to_owned(),
                "failed".to_owned(),
                None,
                Some("timed out".to_owned()),
                None,
                j2_failed - minute,
                Some(j2_failed)
            ),
            (
                h.j3.0,
                1,
                "worker-a".to_owned(),
                "succeeded".to_owned(),
                Some(0),
                None,
                Some(42),
                succeeded - minute,
                Some(succeeded)
            ),
        ]
    );

    // Job 1's status after each of its events, one event per batch.
    let (timeline_pool, projection) = fresh_projection(Arc::new(Jobs)).await;
    let mut timeline = Vec::new();
    let mut checkpoint = 0;
    for event in &h.log {
        checkpoint = projection
            .apply(checkpoint, std::slice::from_ref(event))
            .await
            .unwrap();
        if event.aggregateid == h.j1.to_string() {
            let state: (String, i32, bool) = sqlx::query_as(
                "SELECT status, attempts, retry_at IS NOT NULL FROM read.jobs WHERE job_id = $1",
            )
            .bind(h.j1.0)
            .fetch_one(&timeline_pool)
            .await
            .unwrap();
            timeline.push((event.event_type.clone(), state.0, state.1, state.2));
        }
    }
    let expected = [
        ("JobSubmitted", "queued", 0, false),
        ("JobAttemptStarted", "running", 1, false),
        ("JobAttemptFailed", "queued", 1, false),
        ("JobRetryScheduled", "queued", 1, true),
        ("JobAttemptStarted", "running", 2, false),
        ("JobCompleted", "failed", 2, false),
        ("JobRetryRequested", "queued", 2, false),
        ("JobAttemptStarted", "running", 3, false),
        ("JobCancelled", "cancelled", 3, false),
    ]
    .map(|(e, s, a, r)| (e.to_owned(), s.to_owned(), a, r));
    assert_eq!(timeline, expected);
    timeline_pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_apply_twice() {
    let h = history();
    let (pool, _) = apply_twice(Arc::new(Activity), &h.log).await;

    let rows: Vec<(Uuid, NaiveDate, String, Uuid, i64)> = sqlx::query_as(
        "SELECT project_id, day, event_type, actor_id, events FROM read.activity_daily",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let table: BTreeMap<(Uuid, NaiveDate, String, Uuid), i64> = rows
        .into_iter()
        .map(|(p, d, t, a, n)| ((p, d, t, a), n))
        .collect();

    // Every event of a project counts once, under its UTC day; events no
    // user caused count under the nil actor; events outside projects don't.
    let mut expected = BTreeMap::new();
    for e in h.log.iter() {
        if let Some(project) = e.projectid {
            let key = (
                project,
                e.time.date_naive(),
                e.event_type.clone(),
                e.actorid.unwrap_or(Uuid::nil()),
            );
            *expected.entry(key).or_insert(0_i64) += 1;
        }
    }
    assert_eq!(table, expected);

    // The same, spelled out where it matters.
    let day1 = NaiveDate::from_ymd_opt(2026, 11, 22).unwrap();
    let day2 = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
    let count = |p: ProjectId, day, event_type: &str, actor: Uuid| {
        table
            .get(&(p.0, day, event_type.to_owned(), actor))
            .copied()
    };
    assert_eq!(count(h.p, day1, "CollaboratorInvited", h.owner.0), Some(2));
    assert_eq!(count(h.p, day1, "FileSaved", h.bob.0), Some(2));
    assert_eq!(count(h.p, day1, "FileSaved", h.alice.0), Some(1));
    // Midnight falls between a.py's deletion and notes' first save.
    assert_eq!(count(h.p, day2, "FileSaved", h.alice.0), Some(2));
    assert_eq!(count(h.p, day2, "JobAttemptStarted", Uuid::nil()), Some(5));
    assert_eq!(count(h.q, day2, "ProjectCreated", h.bob.0), Some(1));
    let total: i64 = table.values().sum();
    assert_eq!(total, 35, "39 events, 4 of them outside projects");
    assert!(table
        .keys()
        .all(|(_, _, t, _)| !t.starts_with("User") && t != "DisplayNameUpdated"));
}

// Failures -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_batch_leaves_tables_and_checkpoint_untouched() {
    let h = history();
    let (pool, projection) = fresh_projection(Arc::new(Projects)).await;
    // Up to bob's promotion (position 8).
    assert_eq!(projection.apply(0, &h.log[..8]).await.unwrap(), 8);
    let before = digest(&pool, &Projects).await;

    // A batch that skips position 9: its statements run, then the guard
    // refuses the checkpoint and everything rolls back.
    assert_refused(projection.apply(9, &h.log[8..11]).await);
    assert_unchanged(&pool, &projection, &before, 8, "a batch with a gap").await;

    // A valid event followed by one whose SQL violates a constraint (P
    // created twice): the valid one rolls back with it.
    let again = envelope(
        &ProjectEvent::ProjectCreated {
            project_id: h.p,
            owner_id: h.owner,
            name: "Twice".to_owned(),
            description: String::new(),
        },
        project_source(h.p, h.owner),
        10,
        7,
        h.log[9].time,
    );
    let batch = [h.log[8].clone(), again];
    assert_database_error(projection.apply(8, &batch).await, "23505");
    assert_unchanged(&pool, &projection, &before, 8, "a constraint violation").await;

    // An undecodable payload, and a claim check never filled in: refused
    // before anything reaches the database.
    let mut garbled = h.log[9].clone();
    garbled.data = Some(json!({"type": "WorkspaceConjured", "workspace_id": "nope"}));
    let result = projection.apply(8, &[h.log[8].clone(), garbled]).await;
    assert!(
        matches!(result, Err(ApplyError::Projection(_))),
        "{result:?}"
    );
    let omitted = h.log[9].clone().without_data();
    let result = projection.apply(8, &[h.log[8].clone(), omitted]).await;
    assert!(
        matches!(result, Err(ApplyError::Projection(_))),
        "{result:?}"
    );
    // A project event whose aggregate id is not a UUID.
    let mut misaddressed = h.log[9].clone();
    misaddressed.aggregateid = "not-a-uuid".to_owned();
    let result = projection.apply(8, &[h.log[8].clone(), misaddressed]).await;
    assert!(
        matches!(result, Err(ApplyError::Projection(_))),
        "{result:?}"
    );
    assert_unchanged(&pool, &projection, &before, 8, "an unreadable event").await;

    // The failures left nothing behind: the rest of the log applies, and
    // the result is what a clean run builds.
    assert_eq!(projection.apply(8, &h.log).await.unwrap(), h.last());
    let (clean_pool, clean) = fresh_projection(Arc::new(Projects)).await;
    assert_eq!(clean.apply(0, &h.log).await.unwrap(), h.last());
    assert_eq!(
        digest(&pool, &Projects).await,
        digest(&clean_pool, &Projects).await
    );
    clean_pool.close().await;
}

/// A batch bigger than one round trip is committed in several transactions,
/// each with its checkpoint: a failure in a later one keeps the earlier
/// ones, and the redelivery from the checkpoint completes the batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_cut_into_round_trips_fails_and_resumes_cleanly() {
    let (project, workspace, user) = (
        ProjectId::generate(),
        WorkspaceId::generate(),
        UserId::generate(),
    );
    let big = |n: u8| char::from(b'a' + n).to_string().repeat(1_500_000);
    let mut log = Log::starting_at(Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap());
    for n in 0..5 {
        log.push(
            file_source(project, workspace, "big.bin", user),
            saved(project, workspace, "big.bin", &big(n), user),
        );
    }
    let events = log.events;

    // Event 5 replays version 4 (a primary-key violation). The first three
    // saves make more than one round trip's worth of SQL, so they commit
    // on their own before event 5 fails.
    let (pool, projection) = fresh_projection(Arc::new(Files)).await;
    let mut bad = events.clone();
    bad[4].sequence = 4;
    assert_database_error(projection.apply(0, &bad).await, "23505");
    let checkpoint = projection.checkpoint().await.unwrap();
    assert_eq!(checkpoint, 3, "the first round trip is committed");
    let versions: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT version, length(content)::bigint FROM read.file_versions ORDER BY version",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        versions,
        vec![(1, 1_500_000), (2, 1_500_000), (3, 1_500_000)]
    );
    let current: i64 = sqlx::query_scalar("SELECT version FROM read.files")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(current, 3);

    // A redelivery from the old start is refused; from the checkpoint it
    // completes the log.
    assert_refused(projection.apply(0, &events).await);
    assert_eq!(projection.apply(checkpoint, &events).await.unwrap(), 5);
    let (count, current, content): (i64, i64, String) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM read.file_versions), f.version,
                (SELECT left(content, 3) FROM read.file_versions WHERE version = 5)
           FROM read.files f",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((count, current, content.as_str()), (5, 5, "eee"));
    let applied = digest(&pool, &Files).await;
    assert_eq!(projection.apply(5, &events).await.unwrap(), 5);
    assert_refused(projection.apply(3, &events[3..]).await);
    assert_unchanged(&pool, &projection, &applied, 5, "a redelivered big batch").await;
}

// Text -------------------------------------------------------------------------------

/// Text that has broken hand-quoted SQL before.
const NASTY: &[&str] = &[
    r#"it's \ "quoted" ünïcødé ');DROP TABLE x;--"#,
    r"\'); DROP TABLE read.projects; --",
    r"ends with a backslash \",
    r"\\server\share\n\t\x41\u0041",
    "'",
    "''",
    "$1 $2 $$ $tag$ %s {} ? :name",
    "E'\\x41' U&'\\0041'",
    "line\nbreak\ttab\r\nand a carriage return\r",
    "emoji 🦀👩‍💻, RTL \u{202e}txet, zero-width \u{200b}, combining e\u{301}, 漢字",
    "/* not a comment */ -- nor this",
];

/// Writes every [`NASTY`] string through each projector's text columns,
/// inlined in the batch's SQL text or bound as `inline_up_to` says, and
/// reads them back.
async fn assert_text_round_trips(pool: &PgPool, inline_up_to: usize) {
    let owner = UserId::generate();
    let mut log = Log::starting_at(Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap());
    let mut expected = Vec::new();
    for text in NASTY {
        let (p, w, j) = (
            ProjectId::generate(),
            WorkspaceId::generate(),
            JobId::generate(),
        );
        let path = format!("dir/{text}");
        log.push(
            project_source(p, owner),
            ProjectEvent::ProjectCreated {
                project_id: p,
                owner_id: owner,
                name: (*text).to_owned(),
                description: format!("{text}{text}"),
            },
        );
        log.push(
            project_source(p, owner),
            ProjectEvent::WorkspaceCreated {
                workspace_id: w,
                name: (*text).to_owned(),
                by: owner,
            },
        );
        log.push(
            file_source(p, w, &path, owner),
            saved(p, w, &path, text, owner),
        );
        let executor = job_source(j, p, None);
        log.push(
            job_source(j, p, Some(owner)),
            JobEvent::JobSubmitted {
                job_id: j,
                project_id: p,
                submitted_by: owner,
                language: Language::Bash,
                source: (*text).to_owned(),
                workspace_id: Some(w),
                path: Some(path.clone()),
                file_version: Some(1),
                stdin: (*text).to_owned(),
                timeout_ms: 1_000,
                max_attempts: 1,
            },
        );
        log.push(executor, started(1, text));
        log.push(
            executor,
            JobEvent::JobCompleted {
                attempt: 1,
                exit_code: 3,
                stdout: (*text).to_owned(),
                stderr: format!("{text}\n{text}"),
                duration_ms: 1,
                truncated: false,
            },
        );
        expected.push((p, w, j, path, (*text).to_owned()));
    }
    log.push(
        user_source(owner),
        UserEvent::UserRegistered {
            user_id: owner,
            email: "nasty@example.com".to_owned(),
            display_name: NASTY.concat(),
        },
    );
    let last = log.events.len() as i64;
    for projector in tandem_projections::models::all() {
        let projection = TableProjection::live(pool.clone(), projector).inline_up_to(inline_up_to);
        assert_eq!(projection.apply(0, &log.events).await.unwrap(), last);
    }

    for (p, w, j, path, text) in expected {
        let (name, description): (String, String) =
            sqlx::query_as("SELECT name, description FROM read.projects WHERE project_id = $1")
                .bind(p.0)
                .fetch_one(pool)
                .await
                .unwrap();
        assert_eq!(name, text);
        assert_eq!(description, format!("{text}{text}"));
        let workspace: String =
            sqlx::query_scalar("SELECT name FROM read.workspaces WHERE workspace_id = $1")
                .bind(w.0)
                .fetch_one(pool)
                .await
                .unwrap();
        assert_eq!(workspace, text);
        let (stored_path, content, size): (String, String, i64) = sqlx::query_as(
            "SELECT path, content, size_bytes FROM read.file_versions WHERE file_id = $1",
        )
        .bind(FileId::for_path(w, &path).as_uuid())
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(stored_path, path);
        assert_eq!(content, text);
        assert_eq!(size, text.len() as i64);
        let current: String =
            sqlx::query_scalar("SELECT path FROM read.files WHERE workspace_id = $1 AND path = $2")
                .bind(w.0)
                .bind(&path)
                .fetch_one(pool)
                .await
                .unwrap();
        assert_eq!(current, path);
        let (job_path, stdout, stderr, worker): (String, String, String, String) = sqlx::query_as(
            "SELECT j.path, j.stdout, j.stderr, a.worker
               FROM read.jobs j JOIN read.job_attempts a USING (job_id) WHERE job_id = $1",
        )
        .bind(j.0)
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(job_path, path);
        assert_eq!(stdout, text);
        assert_eq!(stderr, format!("{text}\n{text}"));
        assert_eq!(worker, text);
    }
    let display_name: String =
        sqlx::query_scalar("SELECT display_name FROM read.users WHERE user_id = $1")
            .bind(owner.0)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(display_name, NASTY.concat());
    let activity_types: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT event_type) FROM read.activity_daily")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(activity_types, 6);
}

/// Both ways a batch travels: values inlined as literals in one SQL text,
/// and bound.
const INLINED_AND_BOUND: [usize; 2] = [usize::MAX, 0];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_round_trips_exactly() {
    for inline_up_to in INLINED_AND_BOUND {
        let url = fresh_database().await;
        let pool = pool(&url, 4).await;
        assert_text_round_trips(&pool, inline_up_to).await;
    }
}

/// Inlined text goes in escape strings (`E'...'`), whose quoting does not
/// depend on `standard_conforming_strings`: text must round-trip, and
/// never run as SQL, even where the database's default is `off`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_round_trips_where_strings_are_not_standard_conforming_by_default() {
    for inline_up_to in INLINED_AND_BOUND {
        text_round_trips_without_standard_conforming_strings(inline_up_to).await;
    }
}

async fn text_round_trips_without_standard_conforming_strings(inline_up_to: usize) {
    let url = fresh_database().await;
    let setup = pool(&url, 1).await;
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&setup)
        .await
        .unwrap();
    sqlx::query(&format!(
        "ALTER DATABASE \"{name}\" SET standard_conforming_strings = off"
    ))
    .execute(&setup)
    .await
    .unwrap();
    setup.close().await;
    let pool = pool(&url, 4).await;
    let setting: String = sqlx::query_scalar("SHOW standard_conforming_strings")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(setting, "off");

    // A file's content, as any collaborator may save it.
    let (p, w, by) = (
        ProjectId::generate(),
        WorkspaceId::generate(),
        UserId::generate(),
    );
    let content = r"\'); DROP TABLE read.users; --";
    let save = envelope(
        &saved(p, w, "x.sql", content, by),
        file_source(p, w, "x.sql", by),
        1,
        1,
        Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap(),
    );
    let projection = TableProjection::new(pool.clone(), Arc::new(Files), "read", "files-scs")
        .inline_up_to(inline_up_to);
    let applied = projection.apply(0, &[save]).await;
    let users: Option<String> = sqlx::query_scalar("SELECT to_regclass('read.users')::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        users.is_some(),
        "file content ran as SQL and dropped read.users (apply: {applied:?})"
    );
    assert_eq!(applied.unwrap(), 1);
    let stored: String = sqlx::query_scalar("SELECT content FROM read.file_versions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, content);

    assert_text_round_trips(&pool, inline_up_to).await;
}

#[tokio::test]
async fn a_job_marked_dead_while_an_attempt_runs_ends_that_attempt_as_failed() {
    let (project, alice, job) = (ProjectId::generate(), UserId::generate(), JobId::generate());
    let mut log = Log::starting_at(Utc::now());
    log.push(
        job_source(job, project, Some(alice)),
        JobEvent::JobSubmitted {
            job_id: job,
            project_id: project,
            submitted_by: alice,
            language: Language::Python,
            source: "print(1)".to_owned(),
            workspace_id: None,
            path: None,
            file_version: None,
            stdin: String::new(),
            timeout_ms: 1_000,
            max_attempts: 1,
        },
    );
    log.push(job_source(job, project, None), started(1, "w-lost"));
    log.push(
        job_source(job, project, None),
        JobEvent::JobMarkedDead {
            reason: "worker lost".to_owned(),
        },
    );
    let (pool, projection) = fresh_projection(Arc::new(Jobs)).await;
    // One event per batch, and all in one batch: the same end.
    for event in &log.events {
        let at = projection.checkpoint().await.unwrap();
        projection
            .apply(at, std::slice::from_ref(event))
            .await
            .unwrap();
    }
    let attempt: (String, Option<String>, bool) = sqlx::query_as(
        "SELECT status, reason, finished_at IS NOT NULL FROM read.job_attempts WHERE job_id = $1",
    )
    .bind(job.as_uuid())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        attempt,
        ("failed".to_owned(), Some("worker lost".to_owned()), true)
    );
    let (pool, projection) = fresh_projection(Arc::new(Jobs)).await;
    projection.apply(0, &log.events).await.unwrap();
    let status: String =
        sqlx::query_scalar("SELECT status FROM read.job_attempts WHERE job_id = $1")
            .bind(job.as_uuid())
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(status, "failed");
}

// The read models together -----------------------------------------------------

/// Every read model's digest on `pool`.
async fn digests(pool: &PgPool) -> Vec<Digest> {
    let mut out = Vec::new();
    for projector in tandem_projections::models::all() {
        out.push(digest(pool, projector.as_ref()).await);
    }
    out
}

/// Every read model's checkpoint on `pool`.
async fn checkpoints(pool: &PgPool) -> BTreeMap<String, i64> {
    sqlx::query_as("SELECT projection, position FROM projection_checkpoints")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// The read models applied together (one consumer, one transaction per
/// batch) build what each builds alone; redeliveries change nothing; a
/// read model that is ahead (a rebuild swapped it in at the head) skips
/// what it has while the others catch up; a failing batch moves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_models_applied_together_equal_each_applied_alone() {
    let h = history();
    let last = h.last();
    let alone_pool = pool(&fresh_database().await, 4).await;
    for projector in tandem_projections::models::all() {
        let projection = TableProjection::live(alone_pool.clone(), projector);
        assert_eq!(projection.apply(0, &h.log).await.unwrap(), last);
    }
    let expected = digests(&alone_pool).await;

    // In three batches, each delivered twice.
    let together_pool = pool(&fresh_database().await, 4).await;
    let together = ReadModels::live(together_pool.clone(), tandem_projections::models::all());
    assert_eq!(Sink::checkpoint(&together).await.unwrap(), 0);
    // A second applier that reads the checkpoints now and applies later
    // (a split brain).
    let stale = ReadModels::live(together_pool.clone(), tandem_projections::models::all());
    assert_eq!(Sink::checkpoint(&stale).await.unwrap(), 0);
    let mut at = 0;
    for batch in h.log.chunks(h.log.len() / 3 + 1) {
        let next = together.apply(at, batch).await.unwrap();
        assert_eq!(next, batch.last().unwrap().position);
        assert_eq!(together.apply(next, batch).await.unwrap(), next);
        at = next;
    }
    assert_eq!(at, last);
    assert_eq!(digests(&together_pool).await, expected);
    let moved = checkpoints(&together_pool).await;
    assert_eq!(moved.len(), 5, "{moved:?}");
    assert!(moved.values().all(|p| *p == last), "{moved:?}");

    // The stale applier's batch: the guard refuses, nothing moves.
    assert_refused(stale.apply(0, &h.log).await);
    assert_eq!(digests(&together_pool).await, expected);
    assert_eq!(checkpoints(&together_pool).await, moved);
    // An applier that reads the checkpoints first skips everything.
    let fresh = ReadModels::live(together_pool.clone(), tandem_projections::models::all());
    assert_eq!(fresh.apply(0, &h.log).await.unwrap(), last);
    assert_eq!(digests(&together_pool).await, expected);
    assert_eq!(checkpoints(&together_pool).await, moved);

    // Files ahead at the head, the others at 0: the set's checkpoint is
    // the lowest, and catching up leaves the files' rows as they were.
    let ahead_pool = pool(&fresh_database().await, 4).await;
    let files = TableProjection::live(ahead_pool.clone(), Arc::new(Files));
    assert_eq!(files.apply(0, &h.log).await.unwrap(), last);
    let files_digest = digest(&ahead_pool, &Files).await;
    let set = ReadModels::live(ahead_pool.clone(), tandem_projections::models::all());
    assert_eq!(Sink::checkpoint(&set).await.unwrap(), 0);
    assert_eq!(set.apply(0, &h.log).await.unwrap(), last);
    assert_eq!(digest(&ahead_pool, &Files).await, files_digest);
    assert_eq!(digests(&ahead_pool).await, expected);

    for p in [alone_pool, together_pool, ahead_pool] {
        p.close().await;
    }
}

/// What a projector declares insert-only (a rebuild fills it without its
/// primary key) only ever gets inserts, over a history that exercises
/// every event.
#[test]
fn insert_only_tables_only_get_inserts() {
    let h = history();
    let mut declared = 0;
    for projector in tandem_projections::models::all() {
        let mut rows = RowOps::new();
        for event in &h.log {
            projector.project(event, &mut rows).unwrap();
        }
        for table in projector.insert_only() {
            assert!(projector.tables().contains(table), "{table}");
            assert!(
                rows.only_inserts_into(table),
                "{}: {table}",
                projector.name()
            );
            declared += 1;
        }
    }
    assert!(declared > 0);
}

/// Batches cut anywhere, across calls (one event each, or the whole
/// history in one, fed in uneven chunks), build the same tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_folded_across_chunks_equal_one_apply() {
    let h = history();
    let reference = pool(&fresh_database().await, 4).await;
    for projector in tandem_projections::models::all() {
        let projection = TableProjection::live(reference.clone(), projector);
        assert_eq!(projection.apply(0, &h.log).await.unwrap(), h.last());
    }
    let expected = digests(&reference).await;
    for max_bytes in [1, usize::MAX] {
        let folded = pool(&fresh_database().await, 4).await;
        for projector in tandem_projections::models::all() {
            let projection = TableProjection::live(folded.clone(), projector);
            let mut batcher = projection.batcher(0, max_bytes);
            let mut batches = Vec::new();
            for chunk in h.log.chunks(7) {
                batches.extend(batcher.add(chunk).unwrap());
                // Already seen: skipped.
                assert!(batcher.add(chunk).unwrap().is_empty());
            }
            batches.extend(batcher.finish());
            if max_bytes == usize::MAX {
                assert_eq!(batches.len(), 1);
            }
            let mut at = 0;
            for batch in batches {
                at = projection.commit(batch).await.unwrap();
            }
            assert_eq!(at, h.last());
        }
        assert_eq!(
            digests(&folded).await,
            expected,
            "batches of {max_bytes} bytes"
        );
    }
}

/// A batch inlined in one SQL text leaves exactly what the same batch
/// bound does, times included (truncated to the microsecond both ways).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inlined_batches_equal_bound_ones() {
    let mut log = history().log;
    for (n, event) in log.iter_mut().enumerate() {
        event.time += chrono::Duration::nanoseconds(123_456_789 + n as i64 * 1_001);
    }
    let mut found = Vec::new();
    for inline_up_to in INLINED_AND_BOUND {
        let pool = pool(&fresh_database().await, 4).await;
        for projector in tandem_projections::models::all() {
            let projection =
                TableProjection::live(pool.clone(), projector).inline_up_to(inline_up_to);
            assert_eq!(projection.apply(0, &log).await.unwrap(), log.len() as i64);
        }
        let stamps: Vec<String> = sqlx::query_scalar(
            "SELECT to_char(updated_at, 'HH24:MI:SS.US') FROM read.files ORDER BY file_id",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert!(!stamps.is_empty());
        found.push((digests(&pool).await, stamps));
    }
    assert_eq!(found[0], found[1]);
}
