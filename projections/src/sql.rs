//! [`Lit`]: a typed SQL value as projectors produce it, and how values
//! travel to Postgres: as bound parameters, a column of many rows as one
//! typed array ([`Column`]) that the statement `unnest`s; or, for a small
//! live batch that must reach Postgres in one round trip, written into the
//! statement as typed literals ([`inline`]).
//!
//! Inlining is the one place values become SQL text, so it is strict: every
//! text goes into an escape string (`E'...'`, whose quoting does not depend
//! on `standard_conforming_strings`) with `\` and `'` escaped, arrays go
//! in Postgres's array syntax inside such a string, every literal carries
//! its type, and a NUL byte (which would end the query text early) is
//! refused. Times are written to the microsecond, truncated, exactly as
//! binding them does.

use std::borrow::Cow;
use std::fmt::Write;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::Postgres;
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
    /// The SQL type of this value.
    pub fn sql_type(&self) -> &'static str {
        match self {
            Lit::Null(ty) => ty,
            Lit::Bool(_) => "boolean",
            Lit::Int(_) => "bigint",
            Lit::Text(_) => "text",
            Lit::Uuid(_) => "uuid",
            Lit::Time(_) => "timestamptz",
            Lit::Date(_) => "date",
        }
    }

    /// Writes an unambiguous identity of the value (a row key), not SQL.
    pub fn write_key(&self, out: &mut String) {
        let _ = match self {
            Lit::Null(ty) => write!(out, "null:{ty}"),
            Lit::Bool(b) => write!(out, "{b}"),
            Lit::Int(i) => write!(out, "{i}"),
            // Length-prefixed, so no text can imitate two values.
            Lit::Text(s) => write!(out, "{}:{s}", s.len()),
            Lit::Uuid(u) => write!(out, "{u}"),
            Lit::Time(t) => write!(out, "{}", t.to_rfc3339()),
            Lit::Date(d) => write!(out, "{d}"),
        };
    }

    /// Roughly its size on the wire (for cutting batches).
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

/// One column of many rows, as a typed array parameter.
#[derive(Debug)]
pub enum Column {
    Bool(Vec<Option<bool>>),
    Int(Vec<Option<i64>>),
    Text(Vec<Option<String>>),
    Uuid(Vec<Option<Uuid>>),
    Time(Vec<Option<DateTime<Utc>>>),
    Date(Vec<Option<NaiveDate>>),
}

#[derive(Debug, thiserror::Error)]
#[error("column {0} mixes value types")]
pub struct MixedColumn(pub String);

impl Column {
    /// The values of one column across rows (moved); the SQL type comes
    /// from the first non-NULL value, or from the NULLs' own type.
    pub fn from_values(name: &str, values: Vec<Lit>) -> Result<Self, MixedColumn> {
        let kind = values
            .iter()
            .find(|v| !matches!(v, Lit::Null(_)))
            .or_else(|| values.first())
            .map_or("text", Lit::sql_type);
        let mixed = || MixedColumn(name.to_owned());
        macro_rules! collect {
            ($variant:ident, $pattern:pat => $value:expr) => {
                Column::$variant(
                    values
                        .into_iter()
                        .map(|v| match v {
                            Lit::Null(_) => Ok(None),
                            $pattern => Ok(Some($value)),
                            _ => Err(mixed()),
                        })
                        .collect::<Result<_, _>>()?,
                )
            };
        }
        Ok(match kind {
            "boolean" => collect!(Bool, Lit::Bool(b) => b),
            "bigint" => collect!(Int, Lit::Int(i) => i),
            "uuid" => collect!(Uuid, Lit::Uuid(u) => u),
            "timestamptz" => collect!(Time, Lit::Time(t) => t),
            "date" => collect!(Date, Lit::Date(d) => d),
            _ => collect!(Text, Lit::Text(t) => t),
        })
    }

    /// The array type to cast the parameter to (`uuid[]`, ...).
    pub fn array_type(&self) -> &'static str {
        match self {
            Column::Bool(_) => "boolean[]",
            Column::Int(_) => "bigint[]",
            Column::Text(_) => "text[]",
            Column::Uuid(_) => "uuid[]",
            Column::Time(_) => "timestamptz[]",
            Column::Date(_) => "date[]",
        }
    }

    pub fn bind(self, query: Query<'_, Postgres, PgArguments>) -> Query<'_, Postgres, PgArguments> {
        match self {
            Column::Bool(v) => query.bind(v),
            Column::Int(v) => query.bind(v),
            Column::Text(v) => query.bind(v),
            Column::Uuid(v) => query.bind(v),
            Column::Time(v) => query.bind(v),
            Column::Date(v) => query.bind(v),
        }
    }
}

/// Binds one value.
pub fn bind_one(
    lit: Lit,
    query: Query<'_, Postgres, PgArguments>,
) -> Query<'_, Postgres, PgArguments> {
    match lit {
        Lit::Null(ty) => match ty {
            "bigint" => query.bind(None::<i64>),
            "boolean" => query.bind(None::<bool>),
            "uuid" => query.bind(None::<Uuid>),
            "timestamptz" => query.bind(None::<DateTime<Utc>>),
            "date" => query.bind(None::<NaiveDate>),
            _ => query.bind(None::<String>),
        },
        Lit::Bool(b) => query.bind(b),
        Lit::Int(i) => query.bind(i),
        Lit::Text(t) => query.bind(t),
        Lit::Uuid(u) => query.bind(u),
        Lit::Time(t) => query.bind(t),
        Lit::Date(d) => query.bind(d),
    }
}

/// A value that cannot be written into SQL text.
#[derive(Debug, thiserror::Error)]
pub enum InlineError {
    #[error("a text value holds a NUL byte")]
    Nul,
    #[error("statement parameter ${0} has no value")]
    MissingParameter(usize),
}

/// Something that can stand for a `$n` parameter as SQL text.
pub trait Inline {
    fn write_sql(&self, out: &mut String) -> Result<(), InlineError>;
}

/// `s` as an escape-string literal.
fn write_escaped(out: &mut String, s: &str) -> Result<(), InlineError> {
    if s.contains('\0') {
        return Err(InlineError::Nul);
    }
    out.reserve(s.len() + 3);
    out.push_str("E'");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("''"),
            c => out.push(c),
        }
    }
    out.push('\'');
    Ok(())
}

fn date_text(d: &NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

/// Postgres's text form of a time, to the microsecond (truncated, as the
/// binary encoding does).
fn time_text(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string()
}

impl Inline for Lit {
    fn write_sql(&self, out: &mut String) -> Result<(), InlineError> {
        match self {
            Lit::Null(ty) => {
                let _ = write!(out, "NULL::{ty}");
            }
            Lit::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Lit::Int(i) => {
                let _ = write!(out, "'{i}'::bigint");
            }
            Lit::Text(t) => {
                write_escaped(out, t)?;
                out.push_str("::text");
            }
            Lit::Uuid(u) => {
                let _ = write!(out, "'{u}'::uuid");
            }
            Lit::Time(t) => {
                let _ = write!(out, "'{}'::timestamptz", time_text(t));
            }
            Lit::Date(d) => {
                let _ = write!(out, "'{}'::date", date_text(d));
            }
        }
        Ok(())
    }
}

/// One array element in Postgres's array syntax: always double-quoted,
/// with `\` and `"` escaped.
fn push_element(array: &mut String, value: Option<&str>) {
    match value {
        None => array.push_str("NULL"),
        Some(v) => {
            array.push('"');
            for c in v.chars() {
                if c == '"' || c == '\\' {
                    array.push('\\');
                }
                array.push(c);
            }
            array.push('"');
        }
    }
}

impl Inline for Column {
    fn write_sql(&self, out: &mut String) -> Result<(), InlineError> {
        fn elements<T>(values: &[Option<T>], text: impl Fn(&T) -> Cow<'_, str>) -> String {
            let mut array = String::from("{");
            for (i, value) in values.iter().enumerate() {
                if i > 0 {
                    array.push(',');
                }
                push_element(&mut array, value.as_ref().map(&text).as_deref());
            }
            array.push('}');
            array
        }
        let array = match self {
            Column::Bool(v) => elements(v, |b| Cow::Borrowed(if *b { "t" } else { "f" })),
            Column::Int(v) => elements(v, |i| Cow::Owned(i.to_string())),
            Column::Text(v) => elements(v, |t| Cow::Borrowed(t.as_str())),
            Column::Uuid(v) => elements(v, |u| Cow::Owned(u.to_string())),
            Column::Time(v) => elements(v, |t| Cow::Owned(time_text(t))),
            Column::Date(v) => elements(v, |d| Cow::Owned(date_text(d))),
        };
        write_escaped(out, &array)?;
        let _ = write!(out, "::{}", self.array_type());
        Ok(())
    }
}

/// Appends `template` to `out` with each `$n` outside quoted text replaced
/// by `args[n - 1]` written as SQL. Templates are this crate's own SQL.
pub fn inline<T: Inline>(template: &str, args: &[T], out: &mut String) -> Result<(), InlineError> {
    let bytes = template.as_bytes();
    let mut quoted = false;
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' => quoted = !quoted,
            b'$' if !quoted && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let digits = bytes[i + 1..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                let n: usize = template[i + 1..i + 1 + digits]
                    .parse()
                    .map_err(|_| InlineError::MissingParameter(0))?;
                let arg = n
                    .checked_sub(1)
                    .and_then(|k| args.get(k))
                    .ok_or(InlineError::MissingParameter(n))?;
                out.push_str(&template[copied..i]);
                arg.write_sql(out)?;
                i += 1 + digits;
                copied = i;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out.push_str(&template[copied..]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inlined_values_are_typed_escaped_literals() {
        let mut sql = String::new();
        let args = vec![
            Lit::from("it's a \\ $1"),
            Lit::Null("uuid"),
            Lit::Int(-7),
            Lit::Bool(true),
        ];
        inline("SELECT $1, '$2', $2, $3, $4, $10", &args, &mut sql).unwrap_err();
        sql.clear();
        inline("SELECT $1, '$2', $2, $3, $4", &args, &mut sql).unwrap();
        assert_eq!(
            sql,
            "SELECT E'it''s a \\\\ $1'::text, '$2', NULL::uuid, '-7'::bigint, true"
        );
        let column = Column::Text(vec![Some("a\"b\\c,{}".into()), None]);
        sql.clear();
        inline("$1", &[column], &mut sql).unwrap();
        assert_eq!(sql, "E'{\"a\\\\\"b\\\\\\\\c,{}\",NULL}'::text[]");
        assert!(matches!(
            inline("$1", &[Lit::from("a\0b")], &mut String::new()),
            Err(InlineError::Nul)
        ));
    }

    #[test]
    fn columns_take_their_type_from_values_or_from_typed_nulls() {
        let values = vec![Lit::Null("bigint"), Lit::Int(3)];
        let column = Column::from_values("n", values).unwrap();
        assert!(matches!(column, Column::Int(v) if v == vec![None, Some(3)]));
        let nulls = vec![Lit::Null("uuid"), Lit::Null("uuid")];
        let column = Column::from_values("u", nulls).unwrap();
        assert_eq!(column.array_type(), "uuid[]");
        let mixed = vec![Lit::Int(1), Lit::from("x")];
        assert!(Column::from_values("m", mixed).is_err());
    }

    #[test]
    fn row_keys_tell_values_apart() {
        let mut a = String::new();
        Lit::from("a|b").write_key(&mut a);
        let mut b = String::new();
        Lit::from("a").write_key(&mut b);
        b.push('|');
        Lit::from("b").write_key(&mut b);
        assert_ne!(a, b);
    }
}
