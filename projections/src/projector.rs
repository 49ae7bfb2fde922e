//! [`Projector`]: how one read model turns events into SQL statements.
//!
//! A projector is pure: it sees one event at a time, in log order, and
//! says what happens to which rows ([`RowOps`]); the runner owns
//! transactions, checkpoints and delivery. Row operations name tables
//! without a schema: the batch's `search_path` says whether they land in
//! the live schema `read` or in a rebuild's fresh schema.

use tandem_domain::envelope::{Envelope, EnvelopeError};
use uuid::Uuid;

use crate::rows::RowOps;

pub trait Projector: Send + Sync + 'static {
    /// Stable name: checkpoint key, consumer name, `tandem replay --projection`.
    fn name(&self) -> &'static str;

    /// The tables it owns in schema `read` (created by migrations), in an
    /// order in which they can be created.
    fn tables(&self) -> &'static [&'static str];

    /// Those of its tables whose rows are only ever inserted, never changed
    /// or deleted ([`RowOps::only_inserts_into`]): a rebuild fills them
    /// without any index and builds their primary key once at the end,
    /// far cheaper than maintaining it row by row.
    fn insert_only(&self) -> &'static [&'static str] {
        &[]
    }

    /// Adds the row operations of one event; events it does not care about
    /// add nothing.
    fn project(&self, event: &Envelope, rows: &mut RowOps) -> Result<(), ProjectionError>;
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error("event at position {position} has a malformed {what}")]
    Malformed { position: i64, what: &'static str },
}

/// The aggregate id as a UUID (every aggregate of a project is keyed so).
pub(crate) fn aggregate_uuid(event: &Envelope) -> Result<Uuid, ProjectionError> {
    event
        .aggregateid
        .parse()
        .map_err(|_| ProjectionError::Malformed {
            position: event.position,
            what: "aggregate id",
        })
}
