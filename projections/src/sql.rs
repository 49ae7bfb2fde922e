//! [`SqlBatch`]: the statements a batch of events turns into, sent to
//! Postgres as one multi-statement string, so a whole batch and its
//! checkpoint cost one round trip and commit as one implicit transaction.
//!
//! Values are rendered as typed literals by [`Lit`], the only place text
//! from events meets SQL: strings are escape-string constants (`E'...'`)
//! with `\` and `'` doubled, which read the same whatever the session's
//! `standard_conforming_strings` (a `SET` inside the batch could not help:
//! Postgres tokenizes the whole string before running any of it). NUL is
//! dropped (Postgres text cannot hold it); every other kind renders from a
//! type that cannot carry a quote.

use chrono::{DateTime, NaiveDate, Utc};
use std::fmt::Write;
use uuid::Uuid;

/// A value in a statement.
#[derive(Clone, Debug, PartialEq)]
pub enum Lit {
    /// A NULL of this SQL type (typed, so multi-row `VALUES` lists know
    /// their column types even when every row is NULL).
    Null(&'static str),
    Bool(bool),
    Int(i64),
    Text(String),
    Uuid(Uuid),
    Time(DateTime<Utc>),
    Date(NaiveDate),
}

impl Lit {
    pub fn render(&self, out: &mut String) {
        match self {
            Lit::Null(ty) => {
                let _ = write!(out, "NULL::{ty}");
            }
            Lit::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Lit::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Lit::Text(s) => {
                out.push_str("E'");
                for c in s.chars() {
                    match c {
                        '\'' => out.push_str("''"),
                        '\\' => out.push_str("\\\\"),
                        '\0' => {}
                        c => out.push(c),
                    }
                }
                out.push('\'');
            }
            Lit::Uuid(u) => {
                let _ = write!(out, "'{u}'::uuid");
            }
            Lit::Time(t) => {
                let _ = write!(out, "'{}'::timestamptz", t.to_rfc3339());
            }
            Lit::Date(d) => {
                let _ = write!(out, "'{d}'::date");
            }
        }
    }

    /// Roughly the bytes it renders to (for cutting batches).
    pub fn size(&self) -> usize {
        match self {
            Lit::Text(s) => s.len() + 4,
            _ => 40,
        }
    }
}

/// A Rust type with its SQL type, so `None` renders as a typed NULL.
pub trait SqlType {
    const SQL: &'static str;
}
impl SqlType for i64 {
    const SQL: &'static str = "bigint";
}
impl SqlType for bool {
    const SQL: &'static str = "boolean";
}
impl SqlType for String {
    const SQL: &'static str = "text";
}
impl SqlType for &String {
    const SQL: &'static str = "text";
}
impl SqlType for &str {
    const SQL: &'static str = "text";
}
impl SqlType for Uuid {
    const SQL: &'static str = "uuid";
}
impl SqlType for DateTime<Utc> {
    const SQL: &'static str = "timestamptz";
}

impl From<&str> for Lit {
    fn from(s: &str) -> Self {
        Lit::Text(s.to_owned())
    }
}
impl From<&String> for Lit {
    fn from(s: &String) -> Self {
        Lit::Text(s.clone())
    }
}
impl From<String> for Lit {
    fn from(s: String) -> Self {
        Lit::Text(s)
    }
}
impl From<Uuid> for Lit {
    fn from(u: Uuid) -> Self {
        Lit::Uuid(u)
    }
}
impl From<i64> for Lit {
    fn from(i: i64) -> Self {
        Lit::Int(i)
    }
}
impl From<bool> for Lit {
    fn from(b: bool) -> Self {
        Lit::Bool(b)
    }
}
impl From<DateTime<Utc>> for Lit {
    fn from(t: DateTime<Utc>) -> Self {
        Lit::Time(t)
    }
}
impl<T: Into<Lit> + SqlType> From<Option<T>> for Lit {
    fn from(v: Option<T>) -> Self {
        v.map_or(Lit::Null(T::SQL), Into::into)
    }
}

/// Statements in order; see the module doc.
#[derive(Debug)]
pub struct SqlBatch {
    sql: String,
    statements: usize,
}

impl SqlBatch {
    /// Statements on the tables of `schema` (`read`, or a rebuild's): a
    /// constant of this crate, never input.
    pub fn new(schema: &str) -> Self {
        debug_assert!(schema.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        let sql = format!("SET LOCAL search_path = {schema}, public;\n");
        Self { sql, statements: 0 }
    }

    /// Appends `template` with `$1`, `$2`, ... replaced by `args` rendered
    /// as literals. Templates are constants of this crate: a `$` in one is
    /// always a placeholder.
    pub fn push(&mut self, template: &str, args: &[Lit]) {
        let mut rest = template;
        while let Some(at) = rest.find('$') {
            self.sql.push_str(&rest[..at]);
            let digits = rest[at + 1..]
                .find(|c: char| !c.is_ascii_digit())
                .map_or(rest.len() - at - 1, |n| n);
            let index: usize = rest[at + 1..at + 1 + digits]
                .parse()
                .expect("a placeholder is `$` and a number");
            args[index - 1].render(&mut self.sql);
            rest = &rest[at + 1 + digits..];
        }
        self.sql.push_str(rest);
        self.sql.push_str(";\n");
        self.statements += 1;
    }

    pub fn statements(&self) -> usize {
        self.statements
    }

    /// Appends a statement rendered elsewhere (by [`crate::rows`]).
    pub fn raw(&mut self, statement: &str) {
        self.sql.push_str(statement);
        self.sql.push_str(";\n");
        self.statements += 1;
    }

    /// Bytes of SQL so far: the runner cuts batches before they grow huge.
    pub fn len(&self) -> usize {
        self.sql.len()
    }

    pub fn is_empty(&self) -> bool {
        self.statements == 0
    }

    pub fn as_sql(&self) -> &str {
        &self.sql
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_quoted_and_placeholders_are_filled_in_order() {
        let mut batch = SqlBatch::new("read");
        batch.push(
            "INSERT INTO t VALUES ($1, $2, $3, $10)",
            &[
                Lit::from("it's \\ fine\0"),
                Lit::Int(-4),
                Lit::Null("text"),
                Lit::Bool(false),
                Lit::Null("text"),
                Lit::Null("text"),
                Lit::Null("text"),
                Lit::Null("text"),
                Lit::Null("text"),
                Lit::Bool(true),
            ],
        );
        assert!(batch
            .as_sql()
            .ends_with("INSERT INTO t VALUES (E'it''s \\\\ fine', -4, NULL::text, true);\n"));
        assert_eq!(batch.statements(), 1);
    }

    #[test]
    fn typed_values_render_with_their_types() {
        let id = Uuid::nil();
        let mut batch = SqlBatch::new("read");
        batch.push("SELECT $1, $2", &[Lit::Uuid(id), Lit::from(None::<i64>)]);
        assert!(batch
            .as_sql()
            .contains(&format!("SELECT '{id}'::uuid, NULL::bigint;")));
    }
}
