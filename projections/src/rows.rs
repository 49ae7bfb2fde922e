//! [`RowOps`]: what projectors say about rows (insert, upsert, update,
//! delete, count), folded per batch and rendered as set-based SQL.
//!
//! Within one batch the operations on one row (table + key) fold into one:
//! an insert followed by updates is one insert, two updates are one, an
//! insert then a delete is nothing. The folded batch is rendered as one
//! statement per table and kind (deletes first, then inserts, upserts,
//! counters, updates) whose rows arrive as one typed array per column
//! (`unnest($1::uuid[], ...)`), so a batch of thousands of events costs a
//! handful of statements. They run bound ([`RowOps::execute`], a round
//! trip each) or are written out as one SQL text with typed literals
//! ([`RowOps::render`], for a small batch that goes in one round trip). Rows are
//! independent, so the order across rows does not matter; where it would
//! (an operation that does not fold, a statement on many rows), the fold
//! so far is flushed first and order is kept.

use std::collections::{HashMap, HashSet};

use sqlx::PgConnection;

use crate::sql::{bind_one, inline, Column, InlineError, Lit, MixedColumn};

pub type Col = &'static str;

/// A column's new value in an update.
#[derive(Clone, Debug)]
pub enum Set {
    To(Lit),
    Add(i64),
}

#[derive(Clone, Debug)]
enum Body {
    /// Nothing (the row is untouched, or gone if `deleted_first`).
    None,
    /// The row did not exist at the batch's start.
    Insert(Vec<(Col, Lit)>),
    /// Insert, or overwrite these columns.
    Upsert(Vec<(Col, Lit)>),
    Update(Vec<(Col, Set)>),
    /// Insert with `n`, or add `n` to the column.
    Count(Col, i64),
}

#[derive(Clone, Debug)]
struct Pending {
    table: &'static str,
    key: Vec<(Col, Lit)>,
    /// Delete the row as it was at the batch's start before `body`.
    deleted_first: bool,
    body: Body,
}

/// The folded operations of a batch, in first-touch order.
#[derive(Default)]
pub struct RowOps {
    rows: Vec<Pending>,
    index: HashMap<String, usize>,
    /// Statements already fixed in order (flushed folds, raw statements).
    flushed: Vec<Flushed>,
    size: usize,
    /// Tables whose rows an operation other than an insert touched.
    changed: HashSet<&'static str>,
}

enum Flushed {
    Rows(Vec<Pending>),
    Statement(String, Vec<Lit>),
}

fn row_id(table: &str, key: &[(Col, Lit)]) -> String {
    let mut id = String::from(table);
    for (_, value) in key {
        id.push('|');
        value.write_key(&mut id);
    }
    id
}

fn merge_values(into: &mut Vec<(Col, Lit)>, more: Vec<(Col, Lit)>) {
    for (col, value) in more {
        match into.iter_mut().find(|(c, _)| *c == col) {
            Some(slot) => slot.1 = value,
            None => into.push((col, value)),
        }
    }
}

/// Applies `set` to known values; `None` when it cannot (an `Add` to a
/// column whose value is not a known integer).
fn apply_sets(values: &mut Vec<(Col, Lit)>, set: &[(Col, Set)]) -> Option<()> {
    for (col, change) in set {
        match change {
            Set::To(v) => merge_values(values, vec![(col, v.clone())]),
            Set::Add(n) => match values.iter_mut().find(|(c, _)| c == col) {
                Some((_, Lit::Int(current))) => *current += n,
                _ => return None,
            },
        }
    }
    Some(())
}

fn merge_sets(into: &mut Vec<(Col, Set)>, more: Vec<(Col, Set)>) {
    for (col, change) in more {
        match into.iter_mut().find(|(c, _)| *c == col) {
            None => into.push((col, change)),
            Some(slot) => {
                slot.1 = match (&slot.1, change) {
                    (Set::Add(a), Set::Add(b)) => Set::Add(a + b),
                    (Set::To(Lit::Int(v)), Set::Add(b)) => Set::To(Lit::Int(v + b)),
                    (_, later) => later,
                }
            }
        }
    }
}

impl RowOps {
    pub fn new() -> Self {
        Self::default()
    }

    /// Roughly the bytes of SQL this will render to.
    pub fn size(&self) -> usize {
        self.size
    }

    fn fold(&mut self, table: &'static str, key: Vec<(Col, Lit)>, op: Body, delete: bool) {
        if delete || !matches!(op, Body::Insert(_)) {
            self.changed.insert(table);
        }
        self.size += key.iter().map(|(_, v)| v.size()).sum::<usize>() + body_size(&op);
        let id = row_id(table, &key);
        let op = match self.index.get(&id) {
            None => op,
            Some(&at) => match try_fold(&mut self.rows[at], op, delete) {
                Ok(()) => return,
                Err(op) => {
                    self.flush();
                    op
                }
            },
        };
        self.index.insert(id, self.rows.len());
        self.rows.push(Pending {
            table,
            key,
            deleted_first: delete,
            body: op,
        });
    }

    /// Whether every operation so far on `table` was an insert (a
    /// statement naming it counts as a change).
    pub fn only_inserts_into(&self, table: &str) -> bool {
        !self.changed.contains(table)
            && !self.flushed.iter().any(|f| match f {
                Flushed::Statement(template, _) => template
                    .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .any(|word| word == table),
                Flushed::Rows(_) => false,
            })
    }

    /// Fixes the fold so far in order; later operations start a new fold.
    fn flush(&mut self) {
        if !self.rows.is_empty() {
            self.flushed
                .push(Flushed::Rows(std::mem::take(&mut self.rows)));
            self.index.clear();
        }
    }

    pub fn insert(&mut self, table: &'static str, key: Vec<(Col, Lit)>, values: Vec<(Col, Lit)>) {
        let mut all = key.clone();
        all.extend(values);
        self.fold(table, key, Body::Insert(all), false);
    }

    pub fn upsert(&mut self, table: &'static str, key: Vec<(Col, Lit)>, values: Vec<(Col, Lit)>) {
        let mut all = key.clone();
        all.extend(values);
        self.fold(table, key, Body::Upsert(all), false);
    }

    pub fn update(&mut self, table: &'static str, key: Vec<(Col, Lit)>, set: Vec<(Col, Set)>) {
        self.fold(table, key, Body::Update(set), false);
    }

    pub fn delete(&mut self, table: &'static str, key: Vec<(Col, Lit)>) {
        self.fold(table, key, Body::None, true);
    }

    /// Adds `n` to a counter column, creating the row at `n`.
    pub fn count(&mut self, table: &'static str, key: Vec<(Col, Lit)>, col: Col, n: i64) {
        self.fold(table, key, Body::Count(col, n), false);
    }

    /// A statement on many rows (`$n` placeholders): runs after everything
    /// before it and before everything after it.
    pub fn statement(&mut self, template: &str, args: Vec<Lit>) {
        self.flush();
        self.size += template.len() + args.iter().map(Lit::size).sum::<usize>();
        self.flushed
            .push(Flushed::Statement(template.to_owned(), args));
    }

    /// Every statement with its parameters, in the order they run.
    fn into_statements(mut self) -> Result<Vec<(String, Params)>, MixedColumn> {
        self.flush();
        let mut out = Vec::new();
        for part in self.flushed {
            match part {
                Flushed::Rows(rows) => out.extend(
                    statements(rows)?
                        .into_iter()
                        .map(|(sql, columns)| (sql, Params::Columns(columns))),
                ),
                Flushed::Statement(template, args) => out.push((template, Params::Values(args))),
            }
        }
        Ok(out)
    }

    /// Runs everything on `conn` (inside the caller's transaction), in order.
    pub async fn execute(self, conn: &mut PgConnection) -> Result<(), RowsError> {
        for (sql, params) in self.into_statements()? {
            let mut query = sqlx::query(&sql);
            match params {
                Params::Columns(columns) => {
                    for column in columns {
                        query = column.bind(query);
                    }
                }
                Params::Values(values) => {
                    for value in values {
                        query = bind_one(value, query);
                    }
                }
            }
            query.execute(&mut *conn).await?;
        }
        Ok(())
    }

    /// Appends everything to `out` as SQL statements with their values
    /// inlined, each ended by `;`, in the order [`RowOps::execute`] runs
    /// them.
    pub fn render(self, out: &mut String) -> Result<(), RowsError> {
        for (sql, params) in self.into_statements()? {
            match params {
                Params::Columns(columns) => inline(&sql, &columns, out)?,
                Params::Values(values) => inline(&sql, &values, out)?,
            }
            out.push_str(";\n");
        }
        Ok(())
    }
}

/// A statement's parameters: whole columns of a set-based statement, or
/// one value each of a hand-written one.
enum Params {
    Columns(Vec<Column>),
    Values(Vec<Lit>),
}

#[derive(Debug, thiserror::Error)]
pub enum RowsError {
    #[error(transparent)]
    Mixed(#[from] MixedColumn),
    #[error(transparent)]
    Inline(#[from] InlineError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

fn body_size(body: &Body) -> usize {
    match body {
        Body::None | Body::Count(..) => 16,
        Body::Insert(values) | Body::Upsert(values) => {
            values.iter().map(|(c, v)| c.len() + v.size()).sum()
        }
        Body::Update(set) => set
            .iter()
            .map(|(c, s)| c.len() + if let Set::To(v) = s { v.size() } else { 20 })
            .sum(),
    }
}

/// Folds `op` into `row`, or gives it back when it does not fold.
fn try_fold(row: &mut Pending, op: Body, delete: bool) -> Result<(), Body> {
    if delete {
        // A row inserted in this batch did not exist before it.
        row.deleted_first = row.deleted_first || !matches!(row.body, Body::Insert(_));
        row.body = Body::None;
        return Ok(());
    }
    let current = std::mem::replace(&mut row.body, Body::None);
    let (body, result) = match (current, op) {
        // The row is absent here: an update finds nothing.
        (Body::None, Body::Update(_)) => (Body::None, Ok(())),
        (Body::None, op) => (op, Ok(())),
        (Body::Insert(values), Body::Update(set)) => {
            let mut folded = values.clone();
            match apply_sets(&mut folded, &set) {
                Some(()) => (Body::Insert(folded), Ok(())),
                None => (Body::Insert(values), Err(Body::Update(set))),
            }
        }
        (Body::Insert(mut values), Body::Upsert(more)) => {
            merge_values(&mut values, more);
            (Body::Insert(values), Ok(()))
        }
        (Body::Upsert(mut values), Body::Upsert(more)) => {
            merge_values(&mut values, more);
            (Body::Upsert(values), Ok(()))
        }
        (Body::Upsert(values), Body::Update(set))
            if set.iter().all(|(_, s)| matches!(s, Set::To(_))) =>
        {
            let mut folded = values;
            apply_sets(&mut folded, &set).expect("plain values always apply");
            (Body::Upsert(folded), Ok(()))
        }
        (Body::Update(mut set), Body::Update(more)) => {
            merge_sets(&mut set, more);
            (Body::Update(set), Ok(()))
        }
        (Body::Count(col, a), Body::Count(c, b)) if col == c => (Body::Count(col, a + b), Ok(())),
        (current, op) => (current, Err(op)),
    };
    row.body = body;
    result
}

fn cols(values: &[(Col, Lit)]) -> String {
    values
        .iter()
        .map(|(c, _)| *c)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `unnest($1::uuid[], $2::text[], ...)` over `columns`.
fn unnest(columns: &[Column]) -> String {
    let params: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::{}", i + 1, c.array_type()))
        .collect();
    format!("unnest({})", params.join(", "))
}

/// The columns of `names` across `rows` (each row its values in that
/// order), moving the values.
fn columns(names: &[Col], rows: Vec<Vec<Lit>>) -> Result<Vec<Column>, MixedColumn> {
    let mut transposed: Vec<Vec<Lit>> = names
        .iter()
        .map(|_| Vec::with_capacity(rows.len()))
        .collect();
    for row in rows {
        for (column, value) in transposed.iter_mut().zip(row) {
            column.push(value);
        }
    }
    names
        .iter()
        .zip(transposed)
        .map(|(name, values)| Column::from_values(name, values))
        .collect()
}

/// Groups `items` by signature, keeping the first-seen order of groups.
fn group_by<T>(items: Vec<T>, signature: impl Fn(&T) -> String) -> Vec<Vec<T>> {
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut groups: Vec<Vec<T>> = Vec::new();
    for item in items {
        let sig = signature(&item);
        match index.get(&sig) {
            Some(&i) => groups[i].push(item),
            None => {
                index.insert(sig, groups.len());
                groups.push(vec![item]);
            }
        }
    }
    groups
}

fn names_of<V>(values: &[(Col, V)]) -> Vec<Col> {
    values.iter().map(|(c, _)| *c).collect()
}

type Statement = (String, Vec<Column>);

type Keyed<T> = (&'static str, Vec<(Col, Lit)>, T);

fn statements(rows: Vec<Pending>) -> Result<Vec<Statement>, MixedColumn> {
    let mut out = Vec::new();
    // Deletes of rows as they were before the batch.
    let deletes: Vec<(&'static str, Vec<(Col, Lit)>)> = rows
        .iter()
        .filter(|r| r.deleted_first)
        .map(|r| (r.table, r.key.clone()))
        .collect();
    for g in group_by(deletes, |(t, key)| format!("{t}|{}", cols(key))) {
        let (table, names) = (g[0].0, names_of(&g[0].1));
        let values = g
            .into_iter()
            .map(|(_, key)| key.into_iter().map(|(_, v)| v).collect())
            .collect();
        let columns = columns(&names, values)?;
        out.push((
            format!(
                "DELETE FROM {table} WHERE ({}) IN (SELECT * FROM {})",
                names.join(", "),
                unnest(&columns)
            ),
            columns,
        ));
    }
    let (mut inserts, mut upserts, mut counts, mut updates) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for row in rows {
        match row.body {
            Body::None => {}
            Body::Insert(values) => inserts.push((row.table, row.key, values)),
            Body::Upsert(values) => upserts.push((row.table, row.key, values)),
            Body::Count(col, n) => counts.push((row.table, row.key, (col, n))),
            Body::Update(set) => updates.push((row.table, row.key, set)),
        }
    }
    // New rows, and rows written whether or not they existed.
    for (upsert, rows) in [(false, inserts), (true, upserts)] {
        let rows: Vec<Keyed<Vec<(Col, Lit)>>> = rows;
        for g in group_by(rows, |(t, key, values)| {
            format!("{t}|{}|{}", cols(key), cols(values))
        }) {
            let (table, key_names, names) = (g[0].0, names_of(&g[0].1), names_of(&g[0].2));
            let values = g
                .into_iter()
                .map(|(_, _, v)| v.into_iter().map(|(_, v)| v).collect())
                .collect();
            let columns = columns(&names, values)?;
            let mut sql = format!(
                "INSERT INTO {table} ({}) SELECT * FROM {}",
                names.join(", "),
                unnest(&columns)
            );
            if upsert {
                let updates: Vec<String> = names
                    .iter()
                    .filter(|c| !key_names.contains(c))
                    .map(|c| format!("{c} = EXCLUDED.{c}"))
                    .collect();
                let action = if updates.is_empty() {
                    "NOTHING".to_owned()
                } else {
                    format!("UPDATE SET {}", updates.join(", "))
                };
                sql.push_str(&format!(
                    " ON CONFLICT ({}) DO {action}",
                    key_names.join(", ")
                ));
            }
            out.push((sql, columns));
        }
    }
    // Counters.
    for g in group_by(counts, |(t, key, (col, _))| {
        format!("{t}|{}|{col}", cols(key))
    }) {
        let (table, col) = (g[0].0, (g[0].2).0);
        let keys = names_of(&g[0].1).join(", ");
        let mut names = names_of(&g[0].1);
        names.push(col);
        let values = g
            .into_iter()
            .map(|(_, key, (_, n))| {
                key.into_iter()
                    .map(|(_, v)| v)
                    .chain([Lit::Int(n)])
                    .collect()
            })
            .collect();
        let columns = columns(&names, values)?;
        out.push((
            format!(
                "INSERT INTO {table} ({all}) SELECT * FROM {src} ON CONFLICT ({keys}) DO UPDATE SET {col} = {table}.{col} + EXCLUDED.{col}",
                all = names.join(", "),
                src = unnest(&columns),
            ),
            columns,
        ));
    }
    // Changes to rows that existed before the batch.
    let signature = |(t, key, set): &Keyed<Vec<(Col, Set)>>| {
        let kinds: String = set
            .iter()
            .map(|(c, s)| format!("{c}{}", if matches!(s, Set::Add(_)) { "+" } else { "=" }))
            .collect();
        format!("{t}|{}|{kinds}", cols(key))
    };
    for g in group_by(updates, signature) {
        let (table, key_names) = (g[0].0, names_of(&g[0].1));
        let sets: Vec<String> = g[0]
            .2
            .iter()
            .map(|(c, s)| match s {
                Set::To(_) => format!("{c} = v.v_{c}"),
                Set::Add(_) => format!("{c} = t.{c} + v.v_{c}"),
            })
            .collect();
        let aliases: Vec<String> = key_names
            .iter()
            .map(|c| format!("k_{c}"))
            .chain(g[0].2.iter().map(|(c, _)| format!("v_{c}")))
            .collect();
        let mut names = key_names.clone();
        names.extend(names_of(&g[0].2));
        let values = g
            .into_iter()
            .map(|(_, key, set)| {
                key.into_iter()
                    .map(|(_, v)| v)
                    .chain(set.into_iter().map(|(_, s)| match s {
                        Set::To(v) => v,
                        Set::Add(n) => Lit::Int(n),
                    }))
                    .collect()
            })
            .collect();
        let columns = columns(&names, values)?;
        let matches: Vec<String> = key_names
            .iter()
            .map(|c| format!("t.{c} = v.k_{c}"))
            .collect();
        out.push((
            format!(
                "UPDATE {table} AS t SET {} FROM {} AS v({}) WHERE {}",
                sets.join(", "),
                unnest(&columns),
                aliases.join(", "),
                matches.join(" AND ")
            ),
            columns,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: i64) -> Vec<(Col, Lit)> {
        vec![("id", Lit::Int(n))]
    }

    /// The statements a fold runs, without their parameters.
    fn sql(mut ops: RowOps) -> Vec<String> {
        ops.flush();
        let mut out = Vec::new();
        for part in ops.flushed {
            match part {
                Flushed::Rows(rows) => {
                    out.extend(statements(rows).unwrap().into_iter().map(|(s, _)| s))
                }
                Flushed::Statement(s, _) => out.push(s),
            }
        }
        out
    }

    #[test]
    fn only_inserts_into_names_tables_whose_rows_nothing_changed() {
        let mut ops = RowOps::new();
        ops.insert("inserted", key(1), vec![("n", Lit::Int(1))]);
        ops.insert("inserted", key(2), vec![("n", Lit::Int(2))]);
        ops.upsert("upserted", key(1), vec![("n", Lit::Int(1))]);
        ops.insert("updated", key(1), vec![("n", Lit::Int(1))]);
        ops.update("updated", key(1), vec![("n", Set::Add(1))]);
        ops.delete("deleted", key(1));
        ops.count("counted", key(1), "n", 1);
        ops.statement("UPDATE stated SET n = 0 WHERE id = $1", vec![Lit::Int(1)]);
        assert!(ops.only_inserts_into("inserted"));
        assert!(
            ops.only_inserts_into("state"),
            "a word of a statement, not a part of one"
        );
        for table in ["upserted", "updated", "deleted", "counted", "stated"] {
            assert!(!ops.only_inserts_into(table), "{table}");
        }
    }

    #[test]
    fn an_insert_and_its_updates_are_one_insert_of_the_final_values() {
        let mut ops = RowOps::new();
        ops.insert("t", key(1), vec![("n", Lit::Int(1)), ("s", Lit::from("a"))]);
        ops.update(
            "t",
            key(1),
            vec![("n", Set::Add(2)), ("s", Set::To(Lit::from("b")))],
        );
        ops.update("t", key(1), vec![("n", Set::Add(-1))]);
        assert_eq!(ops.rows.len(), 1);
        match &ops.rows[0].body {
            Body::Insert(values) => {
                assert!(values.contains(&("n", Lit::Int(2))));
                assert!(values.contains(&("s", Lit::from("b"))));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(sql(ops), ["INSERT INTO t (id, n, s) SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[])"]);
    }

    #[test]
    fn a_row_inserted_and_deleted_in_one_batch_costs_nothing() {
        let mut ops = RowOps::new();
        ops.insert("t", key(1), vec![("n", Lit::Int(1))]);
        ops.delete("t", key(1));
        assert!(sql(ops).is_empty());
    }

    #[test]
    fn a_row_deleted_then_written_again_is_deleted_first() {
        let mut ops = RowOps::new();
        ops.update("t", key(1), vec![("n", Set::To(Lit::Int(5)))]);
        ops.delete("t", key(1));
        ops.insert("t", key(1), vec![("n", Lit::Int(1))]);
        let statements = sql(ops);
        assert_eq!(statements.len(), 2);
        assert!(statements[0].starts_with("DELETE FROM t WHERE (id) IN"));
        assert!(statements[1].starts_with("INSERT INTO t"));
    }

    #[test]
    fn counters_add_up_and_updates_of_existing_rows_merge() {
        let mut ops = RowOps::new();
        ops.count("c", key(1), "events", 1);
        ops.count("c", key(1), "events", 1);
        ops.count("c", key(2), "events", 1);
        ops.update("t", key(7), vec![("n", Set::Add(1))]);
        ops.update(
            "t",
            key(7),
            vec![("n", Set::Add(1)), ("s", Set::To(Lit::from("x")))],
        );
        assert!(matches!(ops.rows[0].body, Body::Count("events", 2)));
        match &ops.rows[2].body {
            Body::Update(set) => assert!(matches!(set[0], ("n", Set::Add(2)))),
            other => panic!("{other:?}"),
        }
        let statements = sql(ops);
        assert_eq!(statements.len(), 2, "{statements:?}");
        assert!(statements[0].contains("DO UPDATE SET events = c.events + EXCLUDED.events"));
        assert!(
            statements[1].starts_with("UPDATE t AS t SET n = t.n + v.v_n, s = v.v_s FROM unnest(")
        );
    }

    #[test]
    fn what_does_not_fold_flushes_and_keeps_its_order() {
        let mut ops = RowOps::new();
        // An `Add` to a column the insert did not set cannot fold.
        ops.insert("t", key(1), vec![("s", Lit::from("a"))]);
        ops.update("t", key(1), vec![("n", Set::Add(1))]);
        ops.statement("UPDATE t SET n = 0 WHERE id = $1", vec![Lit::Int(1)]);
        let statements = sql(ops);
        assert_eq!(statements.len(), 3, "{statements:?}");
        assert!(statements[0].starts_with("INSERT INTO t"));
        assert!(statements[1].starts_with("UPDATE t AS t SET n = t.n + v.v_n"));
        assert_eq!(statements[2], "UPDATE t SET n = 0 WHERE id = $1");
    }
}
