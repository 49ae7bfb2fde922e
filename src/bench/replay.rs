//! `bench replay`: rebuilding every projection from a generated log.
//!
//! The log is generated in SQL straight into the event store (the shapes
//! the domain writes: users; projects created with a workspace and an
//! invitation, their details updated six times across the log; files saved
//! six times each across the log; jobs submitted, started and completed
//! back to back) and sequenced, then `tandem replay`'s rebuild runs on it,
//! timed. Goal (pipeline issue): at least 50,000 events/s.

use std::time::Instant;

use anyhow::Context;
use clap::Args;
use sqlx::PgConnection;
use tandem_commands::db::{self, PoolConfig};
use tandem_projections::models;

use super::database::BenchDatabase;
use super::machine::{cpu_line, CpuWindow};
use super::measure::verdict;
use crate::replay::{PostgresLog, ProgressBar};
use crate::settings::Common;

#[derive(Args, Clone, Debug)]
pub struct ReplayArgs {
    /// Projects in the generated log; about 100 events each.
    #[arg(long, default_value_t = 10_000)]
    pub projects: i64,
    /// The bench database: dropped and recreated; its name must contain `bench`.
    #[arg(long, default_value = "tandem_bench_replay")]
    pub database: String,
    /// Keep the bench database afterwards.
    #[arg(long)]
    pub keep: bool,
}

const GOAL_EVENTS_PER_SEC: f64 = 50_000.0;

pub(super) async fn replay(common: &Common, args: &ReplayArgs) -> anyhow::Result<()> {
    let db = BenchDatabase::recreate(&common.database_url, &args.database).await?;
    let outcome = replay_on(args, &db).await;
    let finished = db.finish(args.keep).await;
    outcome?;
    finished
}

async fn replay_on(args: &ReplayArgs, db: &BenchDatabase) -> anyhow::Result<()> {
    let pool = db::connect(
        &db.url,
        &PoolConfig {
            max_connections: 16,
            ..PoolConfig::default()
        },
    )
    .await?;
    let started = Instant::now();
    let mut conn = db.connect().await?;
    eprintln!("bench: generating the log ({} projects)...", args.projects);
    generate(&mut conn, args.projects).await?;
    eprintln!("bench: sequencing...");
    let events = sequence(&mut conn).await?;
    let generated_in = started.elapsed();
    sqlx::query("VACUUM ANALYZE").execute(&mut conn).await?;

    eprintln!("bench: rebuilding every projection from position 0...");
    let started = Instant::now();
    let cpu = CpuWindow::start();
    let reports = tandem_projections::rebuild::rebuild(
        &pool,
        &models::all(),
        &PostgresLog(pool.clone()),
        &ProgressBar,
    )
    .await
    .map_err(|e| anyhow::anyhow!(e))
    .context("rebuilding")?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu.finish();
    // Rebuilt = every projection's new tables are live; the digests of old
    // vs new that follow are a report, timed separately.
    let live = reports.iter().map(|r| r.live_after).fold(0.0, f64::max);
    let rate = events as f64 / live;

    println!();
    println!("tandem bench replay");
    println!(
        "  log          {events} events ({} projects), generated and sequenced in {:.1}s",
        args.projects,
        generated_in.as_secs_f64()
    );
    println!(
        "  rebuild      {} projections from position 0, all swapped in after {live:.2}s = {rate:.0} events/s",
        reports.len()
    );
    println!(
        "  report       digests of old vs new tables done after {seconds:.2}s ({:.0} events/s with them)",
        events as f64 / seconds
    );
    for report in &reports {
        let rows: Vec<String> = report
            .tables
            .iter()
            .map(|t| format!("{} {}", t.table, t.new_rows))
            .collect();
        println!("  {:<12} {}", report.projection, rows.join(", "));
    }
    println!("{}", cpu_line("cpu", cpu));
    println!("goals");
    println!(
        "  rebuild >= {GOAL_EVENTS_PER_SEC:.0} events/s from >= 1M events    {} ({rate:.0} events/s from {events})",
        verdict(rate >= GOAL_EVENTS_PER_SEC && events >= 1_000_000)
    );
    pool.close().await;
    Ok(())
}

/// Runs one generating statement; `$1` is the number of projects.
async fn phase(conn: &mut PgConnection, projects: i64, sql: &str) -> anyhow::Result<()> {
    sqlx::query(sql)
        .bind(projects)
        .execute(conn)
        .await
        .with_context(|| format!("generating: {sql}"))?;
    Ok(())
}

const INSERT: &str = "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)";

/// Ids derived from numbers so every phase can refer to earlier ones.
const IDS: &str = "md5('u' || (i % $1))::uuid AS u, md5('p' || (i % $1))::uuid AS p, \
                   md5('w' || (i % $1))::uuid AS w, md5('v' || (i % $1))::uuid AS v";

async fn generate(conn: &mut PgConnection, projects: i64) -> anyhow::Result<()> {
    // One user per project, registered first.
    phase(conn, projects, &format!(
        "{INSERT} SELECT 'User', u::text, 1, 'UserRegistered', '1',
             jsonb_build_object('type', 'UserRegistered', 'user_id', u, 'email', i || '@example.com', 'display_name', 'user ' || i),
             jsonb_build_object('actor_id', u)
           FROM (SELECT i, {IDS} FROM generate_series(0, $1 - 1) i) g ORDER BY i"
    )).await?;
    // A project, its workspace, and the next user invited, one after the
    // other as a user creating a project does.
    phase(conn, projects, &format!(
        "{INSERT} SELECT 'Project', p::text, seq, t, '1', payload, jsonb_build_object('project_id', p, 'actor_id', u)
           FROM (SELECT i, {IDS} FROM generate_series(0, $1 - 1) i) g,
           LATERAL (VALUES
             (1, 'ProjectCreated', jsonb_build_object('type', 'ProjectCreated', 'project_id', p, 'owner_id', u, 'name', 'project ' || i, 'description', '')),
             (2, 'WorkspaceCreated', jsonb_build_object('type', 'WorkspaceCreated', 'workspace_id', w, 'name', 'main', 'by', u)),
             (3, 'CollaboratorInvited', jsonb_build_object('type', 'CollaboratorInvited', 'user_id', md5('u' || ((i + 1) % $1))::uuid, 'role', 'collaborator', 'by', u))
           ) e(seq, t, payload)
          ORDER BY i, seq"
    )).await?;
    // Ten files per project, each saved six times.
    for version in 1..=6 {
        phase(conn, projects, &format!(
            "{INSERT} SELECT 'File', md5('f' || i)::uuid::text, {version}, 'FileSaved', '1',
                 jsonb_build_object('type', 'FileSaved', 'project_id', p, 'workspace_id', w,
                     'path', 'src/file' || i || '.py', 'content', 'print(\"version {version} of file ' || i || '\")' || repeat(' ', 40),
                     'size_bytes', 80, 'by', u),
                 jsonb_build_object('project_id', p, 'actor_id', u)
               FROM (SELECT i, {IDS} FROM generate_series(0, $1 * 10 - 1) i) g ORDER BY i"
        )).await?;
    }
    // Ten jobs per project, each submitted, started and completed within
    // moments (consecutive here; interleaved with others in real life).
    phase(conn, projects, &format!(
        "{INSERT} SELECT 'Job', md5('j' || i)::uuid::text, seq, t, '1', payload, jsonb_build_object('project_id', p, 'actor_id', u)
           FROM (SELECT i, {IDS} FROM generate_series(0, $1 * 10 - 1) i) g,
           LATERAL (VALUES
             (1, 'JobSubmitted', jsonb_build_object('type', 'JobSubmitted', 'job_id', md5('j' || i)::uuid, 'project_id', p,
                 'submitted_by', u, 'language', 'python', 'source', 'print(1)', 'workspace_id', null, 'path', null,
                 'file_version', null, 'stdin', '', 'timeout_ms', 10000, 'max_attempts', 3)),
             (2, 'JobAttemptStarted', jsonb_build_object('type', 'JobAttemptStarted', 'attempt', 1, 'worker', 'bench')),
             (3, 'JobCompleted', jsonb_build_object('type', 'JobCompleted', 'attempt', 1, 'exit_code', i % 2,
                 'stdout', '1' || chr(10), 'stderr', '', 'duration_ms', 12, 'truncated', false))
           ) e(seq, t, payload)
          ORDER BY i, seq"
    )).await?;
    // Details updated six times per project.
    for sequence in 4..=9 {
        phase(conn, projects, &format!(
            "{INSERT} SELECT 'Project', p::text, {sequence}, 'ProjectDetailsUpdated',
                 '1', jsonb_build_object('type', 'ProjectDetailsUpdated', 'name', 'project ' || i || ' v{sequence}', 'description', 'about ' || i, 'by', u),
                 jsonb_build_object('project_id', p, 'actor_id', u)
               FROM (SELECT i, {IDS} FROM generate_series(0, $1 - 1) i) g ORDER BY i"
        )).await?;
    }
    Ok(())
}

/// Sequences everything and returns the head.
async fn sequence(conn: &mut PgConnection) -> anyhow::Result<i64> {
    loop {
        let step = tandem_commands::sequencer::Sequencer::step(conn, 100_000).await?;
        if step.assigned == 0 {
            return Ok(step.last_position);
        }
    }
}
