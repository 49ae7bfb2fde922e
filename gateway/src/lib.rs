//! The gateway: Tandem's HTTP face. REST commands go to the write side
//! (`tandem-commands`); queries and WebSocket subscriptions arrive in later
//! issues, served from projections and NATS.
//!
//! # Layout
//! - [`app`]: `router(state)` and `serve(listener, router, shutdown)`.
//! - [`config`], [`state`]: what the gateway is told and what it shares.
//! - [`auth`]: access tokens, the [`auth::caller::Caller`] extractor, `/auth/*`, `/me`.
//! - [`routes`]: the command endpoints, one module per resource.
//! - [`error`], [`rejections`], [`extract`], [`reply`]: problem+json, the
//!   domain-error → HTTP mapping, extractors, command answers.
//! - [`rate_limit`], [`idempotency`], [`redis_keys`]: middleware and the
//!   Redis state behind them.
//! - [`ops`], [`telemetry`], [`openapi`]: health, metrics, logs, OpenAPI.

pub mod app;
pub mod auth;
pub mod config;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod openapi;
pub mod ops;
pub mod rate_limit;
pub mod redis_keys;
pub mod rejections;
pub mod reply;
pub mod routes;
pub mod state;
pub mod telemetry;

pub use app::{router, serve};
pub use config::{GatewayConfig, JwtConfig, RateLimits, Secret};
pub use state::{AppState, Shared};
