//! Stored answers for `Idempotency-Key`. The first request with a key
//! claims it (a primary-key insert, so of two racing requests exactly one
//! runs); the other waits for the stored answer and replays it. The same
//! key with a different request is refused. Records expire after a day.

use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;

const RETENTION_HOURS: f64 = 24.0;
/// A claim still unanswered after this long lost its request (the process
/// died mid-way); a retry may take it over.
const ABANDONED_AFTER_SECS: f64 = 60.0;
const POLL: Duration = Duration::from_millis(20);

/// The answer to replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A stored key: request hash, the answer once there is one, and whether
/// an unanswered claim is old enough to count as abandoned.
type Record = (Vec<u8>, Option<i16>, Option<Value>, Option<Vec<u8>>, bool);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// This request owns the key: run it, then `complete` or `release`.
    Fresh,
    /// Already answered: send this.
    Replay(StoredResponse),
    /// The key was used for a different request.
    Mismatch,
    /// The first request is still running after the wait bound.
    InFlight,
}

#[derive(Clone)]
pub struct IdempotencyStore {
    pool: PgPool,
}

impl IdempotencyStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Claims `key` in `scope` for a request hashing to `request_hash`,
    /// waiting up to `wait` for a concurrent first request to finish.
    pub async fn claim(
        &self,
        scope: &str,
        key: &str,
        request_hash: &[u8],
        wait: Duration,
    ) -> Result<Claim, sqlx::Error> {
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2
               AND created_at < now() - make_interval(hours => $3::int)",
        )
        .bind(scope)
        .bind(key)
        .bind(RETENTION_HOURS as i32)
        .execute(&self.pool)
        .await?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let inserted = sqlx::query(
                "INSERT INTO idempotency_keys (scope, key, request_hash) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
            )
            .bind(scope)
            .bind(key)
            .bind(request_hash)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if inserted == 1 {
                return Ok(Claim::Fresh);
            }
            let row: Option<Record> = sqlx::query_as(
                "SELECT request_hash, status, headers, body,
                        created_at < now() - make_interval(secs => $3)
                   FROM idempotency_keys WHERE scope = $1 AND key = $2",
            )
            .bind(scope)
            .bind(key)
            .bind(ABANDONED_AFTER_SECS)
            .fetch_optional(&self.pool)
            .await?;
            match row {
                // Released between our insert and our read: try again.
                None => continue,
                Some((hash, ..)) if hash != request_hash => return Ok(Claim::Mismatch),
                Some((_, Some(status), headers, body, _)) => {
                    return Ok(Claim::Replay(StoredResponse {
                        status: status as u16,
                        headers: headers
                            .and_then(|h| serde_json::from_value(h).ok())
                            .unwrap_or_default(),
                        body: body.unwrap_or_default(),
                    }))
                }
                Some((_, None, _, _, true)) => {
                    self.release(scope, key).await?;
                }
                Some((_, None, _, _, false)) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Ok(Claim::InFlight);
                    }
                    tokio::time::sleep(POLL).await;
                }
            }
        }
    }

    pub async fn complete(
        &self,
        scope: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<(), sqlx::Error> {
        let headers = serde_json::to_value(&response.headers).unwrap_or(Value::Null);
        sqlx::query(
            "UPDATE idempotency_keys SET status = $3, headers = $4, body = $5
              WHERE scope = $1 AND key = $2",
        )
        .bind(scope)
        .bind(key)
        .bind(response.status as i16)
        .bind(headers)
        .bind(&response.body)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets a claim whose request failed without an answer worth
    /// replaying (a 5xx), so the client's retry can run.
    pub async fn release(&self, scope: &str, key: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND status IS NULL",
        )
        .bind(scope)
        .bind(key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
