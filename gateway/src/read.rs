//! The read side as the gateway uses it: [`ReadSide`] (read-model pool,
//! read positions, the query cache), the [`CaughtUp`] extractor behind
//! `?min_position=`, and [`ListParams`] for paged lists.
//!
//! The cache holds finished response bodies of hot queries. It is emptied
//! for a project when an event of that project has been *applied* by the
//! read side (the invalidator hears the event on NATS, then waits for the
//! read positions to pass it), so a refill never reads the state before
//! the event. A fill that raced an invalidation is not stored (a
//! generation counter), and entries expire anyway after [`CACHE_TTL`] as
//! a backstop for a lost NATS message.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures::{FutureExt, StreamExt};
use serde::Deserialize;
use sqlx::PgPool;
use tandem_domain::envelope::{BusNames, Envelope};
use tandem_projections::positions::ReadPositions;
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

const CACHE_TTL: Duration = Duration::from_secs(30);
/// How long the invalidator waits for the read side to apply an event it
/// heard of; past it, it invalidates anyway (the TTL covers the rest).
const APPLY_WAIT: Duration = Duration::from_secs(5);

pub struct ReadSide {
    pub pool: PgPool,
    pub positions: ReadPositions,
    pub cache: QueryCache,
    /// Bound on a `?min_position=` wait.
    pub min_position_wait: Duration,
}

/// What a cached body answers.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum CacheKey {
    Projects {
        user: Uuid,
        include_archived: bool,
        after: Option<Uuid>,
        limit: i64,
    },
    Project {
        user: Uuid,
        project: Uuid,
    },
}

/// A finished JSON answer: cached as bytes, so a hit serializes nothing.
#[derive(Clone, Debug)]
pub struct Cached {
    pub json: bytes::Bytes,
    /// The `ETag` to send, for single resources.
    pub version: Option<i64>,
}

impl Cached {
    pub fn of<T: serde::Serialize>(body: &T, version: Option<i64>) -> Self {
        Self {
            json: serde_json::to_vec(body).expect("views serialize").into(),
            version,
        }
    }
}

impl axum::response::IntoResponse for Cached {
    fn into_response(self) -> axum::response::Response {
        let mut response = (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            self.json,
        )
            .into_response();
        if let Some(version) = self.version {
            response
                .headers_mut()
                .insert(axum::http::header::ETAG, crate::reply::etag(version as u64));
        }
        response
    }
}

/// Registered on the first hit (after the recorder is installed), then
/// reused: registering hashes and looks up the key every time.
fn cache_hits() -> &'static metrics::Counter {
    static HITS: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
    HITS.get_or_init(|| metrics::counter!("tandem_query_cache_hits_total"))
}

/// A cached answer and the read side's position when it was read.
type Entry = (i64, Cached);

#[derive(Clone)]
pub struct QueryCache {
    entries: moka::sync::Cache<CacheKey, Entry>,
    generation: Arc<AtomicU64>,
}

impl Default for QueryCache {
    fn default() -> Self {
        Self::new()
    }
}

impl QueryCache {
    pub fn new() -> Self {
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(CACHE_TTL)
                .support_invalidation_closures()
                .build(),
            generation: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The cached body if it was read at `caught_up`'s position or later,
    /// else `fill`'s (stored unless an invalidation ran meanwhile).
    pub async fn get_or_fill<F, Fut>(
        &self,
        key: CacheKey,
        caught_up: &CaughtUp,
        positions: &ReadPositions,
        fill: F,
    ) -> Result<Option<Cached>, ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Option<Cached>, ApiError>>,
    {
        let wanted = caught_up.0.unwrap_or(0);
        if let Some((read_at, hit)) = self.entries.get(&key) {
            if read_at >= wanted {
                cache_hits().increment(1);
                return Ok(Some(hit));
            }
        }
        let generation = self.generation.load(Ordering::Acquire);
        let read_at = positions.current();
        let Some(value) = fill().await? else {
            return Ok(None);
        };
        if self.generation.load(Ordering::Acquire) == generation {
            self.entries.insert(key, (read_at, value.clone()));
        }
        Ok(Some(value))
    }

    /// Drops what events of `projects` may have changed: their details
    /// for everyone, and the project lists of `users` (their members, and
    /// whoever the events added or removed).
    pub fn invalidate_projects(&self, projects: Vec<Uuid>, users: Vec<Uuid>) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let projects: HashSet<Uuid> = projects.into_iter().collect();
        let users: HashSet<Uuid> = users.into_iter().collect();
        let _ = self.entries.invalidate_entries_if(move |key, _| match key {
            CacheKey::Projects { user, .. } => users.contains(user),
            CacheKey::Project { project, .. } => projects.contains(project),
        });
    }

    pub fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries.invalidate_all();
    }
}

/// Project events handled in one round at most: one wait for the read
/// side, one members query, one sweep of the cache.
const INVALIDATION_ROUND: usize = 256;

/// Listens to the events stream's subjects (core NATS) and invalidates
/// the cache once the read side has applied each project event. Events
/// that arrive together are handled as one round.
pub fn spawn_invalidator(
    nats: async_nats::Client,
    names: BusNames,
    cache: QueryCache,
    positions: ReadPositions,
    pool: PgPool,
) {
    tokio::spawn(async move {
        loop {
            // Only project events change cached answers: the server filters.
            let mut events = match nats
                .subscribe(names.aggregate_events_wildcard("Project"))
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cache invalidator cannot subscribe; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            // Whatever happened while we were not listening is unknown.
            cache.invalidate_all();
            while let Some(first) = events.next().await {
                let mut round = Touched::default();
                round.add(&first.payload);
                for _ in 1..INVALIDATION_ROUND {
                    match events.next().now_or_never() {
                        Some(Some(message)) => round.add(&message.payload),
                        _ => break,
                    }
                }
                if round.projects.is_empty() {
                    continue;
                }
                positions.wait_for(round.last_position, APPLY_WAIT).await;
                match round.affected_users(&pool).await {
                    Ok(users) => cache.invalidate_projects(round.projects, users),
                    Err(e) => {
                        tracing::warn!(error = %e, "cache invalidator could not read members; dropping every list");
                        cache.invalidate_all();
                    }
                }
            }
        }
    });
}

/// What one round of project events may have changed.
#[derive(Default)]
struct Touched {
    projects: Vec<Uuid>,
    /// Projects whose members must be asked for: all but those the round
    /// only created (a new project's one member is its owner, named below).
    ask_members_of: Vec<Uuid>,
    /// Users the events name (an owner, an invited or removed member).
    named: Vec<Uuid>,
    last_position: i64,
}

impl Touched {
    fn add(&mut self, payload: &[u8]) {
        let Ok(event) = serde_json::from_slice::<Envelope>(payload) else {
            return;
        };
        if event.aggregatetype != "Project" {
            return;
        }
        let Some(project) = event.projectid else {
            return;
        };
        self.last_position = self.last_position.max(event.position);
        self.projects.push(project);
        let created = event.event_type == "ProjectCreated" && event.data.is_some();
        if !created {
            self.ask_members_of.push(project);
        }
        if let Some(data) = &event.data {
            for field in ["user_id", "owner_id"] {
                if let Some(user) = data
                    .get(field)
                    .and_then(|v| v.as_str())
                    .and_then(|v| v.parse().ok())
                {
                    self.named.push(user);
                }
            }
        }
    }

    /// Whose project lists the round can change: the members now of every
    /// project it touched, plus the users its events name.
    async fn affected_users(&self, pool: &PgPool) -> Result<Vec<Uuid>, sqlx::Error> {
        let mut users = if self.ask_members_of.is_empty() {
            Vec::new()
        } else {
            sqlx::query_scalar("SELECT user_id FROM read.members WHERE project_id = ANY($1)")
                .bind(&self.ask_members_of)
                .fetch_all(pool)
                .await?
        };
        users.extend_from_slice(&self.named);
        Ok(users)
    }
}

/// `?min_position=N`: the handler runs once the read side has applied
/// position N (which this holds), or the request fails with 503
/// `not_caught_up`.
pub struct CaughtUp(pub Option<i64>);

impl FromRequestParts<AppState> for CaughtUp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(raw) = query_value(parts.uri.query().unwrap_or(""), "min_position") else {
            return Ok(CaughtUp(None));
        };
        let position: i64 = raw
            .parse()
            .ok()
            .filter(|p| *p >= 0)
            .ok_or_else(|| ApiError::field("min_position", "must be a non-negative integer"))?;
        let read = &state.read;
        if read
            .positions
            .wait_for(position, read.min_position_wait)
            .await
        {
            Ok(CaughtUp(Some(position)))
        } else {
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_caught_up",
                format!(
                    "the read side has not reached position {position} yet (it is at {}); retry shortly",
                    read.positions.current()
                ),
            )
            .with_header(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            ))
        }
    }
}

fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `?limit=` (default 50, at most 200) and `?cursor=` (opaque; the value of
/// a previous page's `next_cursor`).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Items per page, 1–200 (default 50).
    pub limit: Option<i64>,
    /// Where the next page starts: a previous answer's `next_cursor`.
    pub cursor: Option<String>,
    /// Wait until the read side has applied this log position.
    pub min_position: Option<i64>,
}

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;

impl ListParams {
    pub fn limit(&self) -> Result<i64, ApiError> {
        match self.limit {
            None => Ok(DEFAULT_LIMIT),
            Some(l) if (1..=MAX_LIMIT).contains(&l) => Ok(l),
            Some(_) => Err(ApiError::field(
                "limit",
                format!("must be between 1 and {MAX_LIMIT}"),
            )),
        }
    }

    /// The cursor's key as text (`None` on the first page).
    pub fn after_text(&self) -> Result<Option<String>, ApiError> {
        self.cursor
            .as_deref()
            .map(|c| {
                URL_SAFE_NO_PAD
                    .decode(c)
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .ok_or_else(|| ApiError::field("cursor", "not a cursor this API gave out"))
            })
            .transpose()
    }

    /// The cursor's key as an id.
    pub fn after_id(&self) -> Result<Option<Uuid>, ApiError> {
        self.after_text()?
            .map(|key| {
                key.parse()
                    .map_err(|_| ApiError::field("cursor", "not a cursor this API gave out"))
            })
            .transpose()
    }
}

/// The opaque cursor for a page's last key.
pub fn cursor(key: impl ToString) -> String {
    URL_SAFE_NO_PAD.encode(key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let id = Uuid::now_v7();
        let params = ListParams {
            cursor: Some(cursor(id)),
            ..ListParams::default()
        };
        assert_eq!(params.after_id().unwrap(), Some(id));
        let bad = ListParams {
            cursor: Some("%%%".to_owned()),
            ..ListParams::default()
        };
        assert_eq!(bad.after_id().unwrap_err().code(), "validation_failed");
    }

    #[test]
    fn limits_default_and_are_bounded() {
        assert_eq!(ListParams::default().limit().unwrap(), DEFAULT_LIMIT);
        for bad in [0, -1, MAX_LIMIT + 1] {
            let params = ListParams {
                limit: Some(bad),
                ..ListParams::default()
            };
            assert!(params.limit().is_err());
        }
    }

    #[test]
    fn min_position_is_read_from_the_query() {
        assert_eq!(
            query_value("limit=5&min_position=42", "min_position"),
            Some("42")
        );
        assert_eq!(query_value("limit=5", "min_position"), None);
    }
}
