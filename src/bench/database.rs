//! The bench database: a throwaway database on the server of `DATABASE_URL`,
//! dropped, created and migrated per run, and the guard on its name.

use anyhow::{bail, Context};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

use crate::stack;

/// A throwaway database on the server of `DATABASE_URL`.
pub(super) struct BenchDatabase {
    /// Connection options of the bench database itself.
    pub(super) options: PgConnectOptions,
    pub(super) name: String,
    pub(super) url: String,
}

impl BenchDatabase {
    /// Drops any leftover of an earlier run, creates and migrates it.
    pub(super) async fn recreate(database_url: &str, name: &str) -> anyhow::Result<Self> {
        check_bench_name(name)?;
        let server = tandem_commands::db::connect_options(database_url)
            .context("parsing DATABASE_URL")?
            .disable_statement_logging();
        let db = Self {
            options: server.clone().database(name),
            name: name.to_owned(),
            url: server.database(name).to_url_lossy().to_string(),
        };
        db.admin(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await?;
        db.admin(&format!("CREATE DATABASE {name}")).await?;
        stack::migrate(&db.url).await?;
        Ok(db)
    }

    /// Drops it, unless asked to keep it. `FORCE`: a background task of the
    /// stopped stack may still hold a connection.
    pub(super) async fn finish(self, keep: bool) -> anyhow::Result<()> {
        if keep {
            println!("kept database {}", self.name);
            return Ok(());
        }
        self.admin(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .await
    }

    /// Runs `sql` on the server's `postgres` database (CREATE/DROP DATABASE
    /// cannot run inside the database they target).
    async fn admin(&self, sql: &str) -> anyhow::Result<()> {
        let mut conn = PgConnection::connect_with(&self.options.clone().database("postgres"))
            .await
            .context("connecting to the `postgres` database of DATABASE_URL's server")?;
        sqlx::query(sql)
            .execute(&mut conn)
            .await
            .with_context(|| format!("running `{sql}`"))?;
        conn.close().await?;
        Ok(())
    }

    pub(super) async fn connect(&self) -> anyhow::Result<PgConnection> {
        Ok(PgConnection::connect_with(&self.options).await?)
    }
}

/// The name goes into DROP DATABASE unquoted, so it must be a plain
/// identifier; and it must say `bench`, so a slip cannot drop real data.
fn check_bench_name(name: &str) -> anyhow::Result<()> {
    let plain = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !plain || !name.contains("bench") {
        bail!("bench database {name:?} must be lowercase [a-z0-9_] and contain \"bench\"");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_names_are_guarded() {
        assert!(check_bench_name("tandem_bench").is_ok());
        assert!(check_bench_name("tandem").is_err());
        assert!(check_bench_name("bench; DROP").is_err());
        assert!(check_bench_name("Bench").is_err());
    }
}
