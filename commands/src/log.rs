//! Reading the sequenced log: events in position order, as every consumer
//! (relay, catch-up, audit, tests) sees them.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgExecutor, PgPool};
use tandem_domain::envelope::LogRecord;
use uuid::Uuid;

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct LoggedEvent {
    pub position: i64,
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: Value,
    pub metadata: Value,
    pub recorded_at: DateTime<Utc>,
    pub project_id: Option<Uuid>,
}

impl LoggedEvent {
    /// The event's envelope, moving the payload instead of copying it.
    pub fn into_envelope(mut self) -> tandem_domain::envelope::Envelope {
        let payload = std::mem::take(&mut self.payload);
        let mut envelope = tandem_domain::envelope::Envelope::from_log(&self.record());
        envelope.data = Some(payload);
        envelope
    }

    /// The fields an envelope is built from.
    pub fn record(&self) -> LogRecord<'_> {
        LogRecord {
            position: self.position,
            event_id: self.event_id,
            aggregate_type: &self.aggregate_type,
            aggregate_id: &self.aggregate_id,
            sequence: self.sequence,
            event_type: &self.event_type,
            event_version: &self.event_version,
            payload: &self.payload,
            metadata: &self.metadata,
            recorded_at: self.recorded_at,
            project_id: self.project_id,
        }
    }
}

const SELECT: &str = "SELECT l.position, e.event_id, e.aggregate_type, e.aggregate_id, e.sequence,
        e.event_type, e.event_version, e.payload, e.metadata, e.recorded_at, e.project_id
   FROM event_log l JOIN events e ON e.global_id = l.global_id";

/// Up to `limit` events with position > `after`, in position order.
pub async fn read_after(
    db: impl PgExecutor<'_>,
    after: i64,
    limit: i64,
) -> Result<Vec<LoggedEvent>, sqlx::Error> {
    sqlx::query_as(&format!(
        "{SELECT} WHERE l.position > $1 ORDER BY l.position LIMIT $2"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// One project's events after `after`, in position order (one index range).
pub async fn read_project_after(
    pool: &PgPool,
    project: Uuid,
    after: i64,
    limit: i64,
) -> Result<Vec<LoggedEvent>, sqlx::Error> {
    sqlx::query_as(&format!(
        "{SELECT} WHERE l.project_id = $1 AND l.position > $2 ORDER BY l.position LIMIT $3"
    ))
    .bind(project)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The last assigned position (0 for an empty log).
pub async fn head(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT last_position FROM sequencer_state")
        .fetch_one(pool)
        .await
}

/// Committed events still waiting for a position.
pub async fn unsequenced(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM unsequenced_events")
        .fetch_one(pool)
        .await
}
