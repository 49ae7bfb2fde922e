//! The gateway: Tandem's HTTP face. REST commands go to the write side
//! (`tandem-commands`); queries are answered from the read models
//! (`tandem-projections`); WebSocket subscriptions arrive in a later issue.
//!
//! # Layout
//! - [`app`]: `router(state)` and `serve(listener, router, shutdown)`.
//! - [`config`], [`state`]: what the gateway is told and what it shares.
//! - [`auth`]: access tokens, the [`auth::caller::Caller`] extractor, `/auth/*`, `/me`.
//! - [`routes`]: the command endpoints, one module per resource.
//! - [`queries`], [`read`]: the query endpoints, `?min_position=`, the
//!   query cache and its invalidation.
//! - [`realtime`]: `GET /api/v1/ws`: subscriptions, presence, cursors.
//! - [`error`], [`rejections`], [`extract`], [`reply`]: problem+json, the
//!   domain-error → HTTP mapping, extractors, command answers.
//! - [`rate_limit`], [`idempotency`], [`redis_keys`]: middleware and the
//!   Redis state behind them; [`quota`] and [`denylist`], the local lease
//!   and copy that spare most requests the Redis round trip.
//! - [`ops`], [`telemetry`], [`openapi`]: health, metrics, logs, OpenAPI.

pub mod app;
pub mod auth;
pub mod config;
pub mod denylist;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod openapi;
pub mod ops;
pub mod queries;
pub mod quota;
pub mod rate_limit;
pub mod read;
pub mod realtime;
pub mod redis_keys;
pub mod rejections;
pub mod reply;
pub mod routes;
pub mod state;
pub mod telemetry;

pub use app::{router, serve};
pub use config::{GatewayConfig, JwtConfig, RateLimits, RealtimeConfig, Secret};
pub use state::{AppState, Shared};
