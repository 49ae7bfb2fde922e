//! The pgbench baseline of `bench commands`: its table and insert script,
//! running it against the bench database, and parsing what it prints.

use std::path::Path;

use anyhow::{bail, Context};
use sqlx::postgres::PgSslMode;
use sqlx::Connection;
use uuid::Uuid;

use super::commands::CommandsArgs;
use super::database::BenchDatabase;

const PGBENCH_TABLE: &str = "CREATE TABLE IF NOT EXISTS bench_pgbench (
    id bigserial PRIMARY KEY,
    payload jsonb NOT NULL,
    created_at timestamptz DEFAULT now())";

const PGBENCH_SCRIPT: &str = "INSERT INTO bench_pgbench (payload) VALUES ('{\"k\":\"v\"}');\n";

pub(super) struct Pgbench {
    pub(super) tps: f64,
    pub(super) latency_avg_ms: f64,
    pub(super) clients: u32,
    pub(super) threads: u32,
}

/// Single-row inserts at the command bench's concurrency for `secs`,
/// against the bench database, from a script in a temporary folder.
pub(super) async fn run_pgbench(
    args: &CommandsArgs,
    db: &BenchDatabase,
    secs: u64,
) -> anyhow::Result<Pgbench> {
    let mut conn = db.connect().await?;
    sqlx::query(PGBENCH_TABLE).execute(&mut conn).await?;
    conn.close().await?;
    let dir = std::env::temp_dir().join(format!("tandem-bench-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let script = dir.join("insert.sql");
    let output = match std::fs::write(&script, PGBENCH_SCRIPT) {
        Ok(()) => pgbench_command(args, db, &script, secs).output().await,
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_dir_all(&dir);
    let output = output.with_context(|| format!("running {}", args.pgbench))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!("pgbench failed ({}): {}", output.status, stderr.trim());
    }
    let (tps, latency_avg_ms) = parse_pgbench(&String::from_utf8_lossy(&output.stdout))
        .context("pgbench printed no `tps =` or `latency average =` line")?;
    Ok(Pgbench {
        tps,
        latency_avg_ms,
        clients: args.concurrency,
        threads: pgbench_threads(args.concurrency),
    })
}

/// pgbench refuses more threads than clients.
fn pgbench_threads(clients: u32) -> u32 {
    clients.min(2)
}

fn pgbench_command(
    args: &CommandsArgs,
    db: &BenchDatabase,
    script: &Path,
    secs: u64,
) -> tokio::process::Command {
    let options = &db.options;
    let host = options.get_socket().map_or_else(
        || options.get_host().to_owned(),
        |s| s.display().to_string(),
    );
    let mut command = tokio::process::Command::new(&args.pgbench);
    command
        .args(["-n", "-M", "prepared"])
        .args(["-c", &args.concurrency.to_string()])
        .args(["-j", &pgbench_threads(args.concurrency).to_string()])
        .args(["-T", &secs.max(1).to_string()])
        .arg("-f")
        .arg(script)
        .args(["-h", &host, "-p", &options.get_port().to_string()])
        .args(["-U", options.get_username(), db.name.as_str()])
        .kill_on_drop(true);
    // The same transport as the system under test: TLS or not.
    command.env("PGSSLMODE", ssl_mode_name(options.get_ssl_mode()));
    // Through the environment, not the command line, where `ps` shows it.
    if let Some(password) = url_password(&db.url) {
        command.env("PGPASSWORD", password);
    }
    command
}

fn ssl_mode_name(mode: PgSslMode) -> &'static str {
    match mode {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
}

/// The decoded password of a `postgres://user:password@...` URL.
fn url_password(url: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    url.password().map(percent_decode)
}

fn percent_decode(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut rest = s.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        let escaped = tail
            .get(..2)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (byte, escaped) {
            (b'%', Some(value)) => {
                out.push(value);
                rest = &tail[2..];
            }
            _ => {
                out.push(byte);
                rest = tail;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `(tps without initial connection time, average latency in ms)`.
fn parse_pgbench(stdout: &str) -> Option<(f64, f64)> {
    let number_after = |prefix: &str| {
        stdout
            .lines()
            .find_map(|line| line.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok())
    };
    let tps = stdout
        .lines()
        .filter(|line| line.contains("without initial connection time"))
        .find_map(|line| line.trim().strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())?;
    Some((tps, number_after("latency average = ")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pgbench_output() {
        let out = "number of transactions actually processed: 1000\n\
                   latency average = 12.345 ms\n\
                   initial connection time = 40.1 ms\n\
                   tps = 5183.417 (without initial connection time)\n";
        assert_eq!(parse_pgbench(out), Some((5183.417, 12.345)));
        assert_eq!(parse_pgbench("nothing"), None);
    }

    #[test]
    fn url_passwords_are_decoded() {
        assert_eq!(
            url_password("postgres://u:p%40ss@h:5432/db").as_deref(),
            Some("p@ss")
        );
        assert_eq!(url_password("postgres://u@h/db"), None);
    }
}
