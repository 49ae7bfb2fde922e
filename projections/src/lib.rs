//! The read side: JetStream consumers that turn the sequenced log into
//! read models, and the read API over them.
//!
//! # Layout
//! - [`projector`]: the [`Projector`] trait, one event → SQL statements.
//! - [`models`]: the Postgres read models in schema `read` (users,
//!   projects + members + workspaces, files + versions, jobs + attempts,
//!   daily activity), documented for analysts in `docs/analytics.md`.
//! - [`rows`]: [`rows::RowOps`], row operations folded per batch and run
//!   as a few set-based statements.
//! - [`sql`]: [`sql::Lit`] values and the typed array columns they travel in.
//! - [`tables`]: [`TableProjection`], a projector bound to a schema and a
//!   checkpoint, applying batches with their checkpoint atomically.
//! - [`read_models`]: [`ReadModels`], the live projections applied
//!   together by one consumer, one transaction per batch.
//! - [`consumer`]: the durable JetStream consumer feeding a [`consumer::Sink`].
//! - [`hot`]: hot state in Redis (member sets, job snapshots), versioned
//!   by position so every update is idempotent.
//! - [`positions`]: how far the read side has applied the log
//!   (`?min_position=`, `/readyz` lag).
//! - [`rebuild`]: `tandem replay`: rebuild from position 0 into fresh
//!   tables, then swap them in under the live checkpoint's lock.
//! - [`queries`]: what the gateway's GET endpoints read.
//!
//! Architecture invariant: this crate knows the log only as envelopes and
//! positions; it never writes the event store and never reads aggregates.

pub mod consumer;
pub mod hot;
pub mod models;
pub mod positions;
pub mod projector;
pub mod queries;
pub mod read_models;
pub mod rebuild;
pub mod rows;
pub mod sql;
pub mod tables;

pub use projector::Projector;
pub use read_models::ReadModels;
pub use tables::TableProjection;
