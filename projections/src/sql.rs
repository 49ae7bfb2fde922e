//! [`Lit`]: a typed SQL value as projectors produce it, and how values
//! travel to Postgres: never as text spliced into SQL, always as bound
//! parameters, a column of many rows as one typed array ([`Column`]) that
//! the statement `unnest`s.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::Postgres;
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

#[cfg(test)]
mod tests {
    use super::*;

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
