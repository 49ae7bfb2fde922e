//! Connecting to Postgres, creating the database when it is missing, and
//! the embedded migrations (one set for the event store, the write side's
//! tables and, later, the read models).

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Pool settings; the defaults suit one process running every role.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_connections: 32,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// The options of `url`. A server on this machine (loopback or a socket)
/// is spoken to in the clear unless the URL or `PGSSLMODE` names a mode:
/// the default `prefer` would wrap every query in TLS, which on loopback
/// costs both ends CPU (measured: several percent of a job's machinery)
/// and protects nothing.
pub fn connect_options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    let named = std::env::var_os("PGSSLMODE").is_some();
    parse_options(url, named)
}

/// [`connect_options`] with "a mode is named elsewhere" given.
fn parse_options(url: &str, named_elsewhere: bool) -> Result<PgConnectOptions, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?;
    let named = named_elsewhere || url.contains("sslmode=") || url.contains("ssl-mode=");
    let local = options.get_socket().is_some() || is_loopback(options.get_host());
    Ok(if local && !named {
        options.ssl_mode(PgSslMode::Disable)
    } else {
        options
    })
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host.starts_with('/')
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Prepared statements each connection keeps.
const STATEMENT_CACHE_CAPACITY: usize = 256;

pub async fn connect(url: &str, config: &PoolConfig) -> Result<PgPool, sqlx::Error> {
    // Slow statements are measured by metrics, not logged: a projection's
    // batch is megabytes of SQL carrying users' file contents.
    //
    // One process runs every role on one pool, and the group load alone
    // prepares up to 16 statements (one per batch size): room for all of
    // them, so no connection evicts and re-prepares (sqlx's default is 100).
    let options = connect_options(url)?
        .statement_cache_capacity(STATEMENT_CACHE_CAPACITY)
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(
            tracing::log::LevelFilter::Off,
            std::time::Duration::from_secs(1),
        );
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        // A ping before every checkout doubles the round trips of a short
        // query; a connection that died is noticed by its next query
        // instead (that request fails once and the pool replaces it).
        .test_before_acquire(false)
        .connect_with(options)
        .await
}

/// Creates the database named in `url` if it does not exist, connecting to
/// the server's `postgres` database to do so.
pub async fn ensure_database(url: &str) -> Result<(), sqlx::Error> {
    let options = connect_options(url)?;
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let mut admin = PgConnection::connect_with(&options.clone().database("postgres")).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        match sqlx::query(&sql).execute(&mut admin).await {
            Ok(_) => {}
            // Someone else created it between our check and our create.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e),
        }
    }
    admin.close().await
}

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Whether `e` means "the database can't be reached or won't serve us
/// right now" (retry later: 503) rather than a bug (500).
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 53: insufficient resources;
            // 57P0x: shutdown or restart; 55000: not accepting connections.
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P")
                || code == "55000"
        }),
        _ => false,
    }
}

/// Opens a connection of its own and waits until it holds the session
/// advisory lock `key` (trying every `standby`): the leader of a role is
/// whoever holds it, for as long as this connection lives.
pub async fn lead(
    pool: &PgPool,
    key: i64,
    standby: std::time::Duration,
) -> Result<PgConnection, sqlx::Error> {
    let mut conn = PgConnection::connect_with(&pool.connect_options()).await?;
    loop {
        let leader: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut conn)
            .await?;
        if leader {
            return Ok(conn);
        }
        tokio::time::sleep(standby).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(url: &str, named_elsewhere: bool) -> PgSslMode {
        parse_options(url, named_elsewhere).unwrap().get_ssl_mode()
    }

    #[test]
    fn loopback_without_a_named_mode_goes_in_the_clear() {
        for url in [
            "postgres://u@127.0.0.1:5432/db",
            "postgres://u@localhost/db",
            "postgres://u@[::1]:5432/db",
            "postgres://u@localhost/db?host=/var/run/postgresql",
        ] {
            assert!(matches!(mode(url, false), PgSslMode::Disable), "{url}");
        }
    }

    #[test]
    fn a_named_mode_or_a_remote_host_is_left_as_sqlx_reads_it() {
        assert!(matches!(
            mode("postgres://u@127.0.0.1/db?sslmode=require", false),
            PgSslMode::Require
        ));
        for (url, named_elsewhere) in [
            ("postgres://u@127.0.0.1/db", true),
            ("postgres://u@db.example.com/db", false),
        ] {
            let untouched = PgConnectOptions::from_str(url).unwrap().get_ssl_mode();
            assert_eq!(
                format!("{:?}", mode(url, named_elsewhere)),
                format!("{untouched:?}"),
                "{url}"
            );
        }
    }
}
