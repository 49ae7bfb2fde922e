//! The write side of running jobs: what makes executors' work and reports
//! into the log.
//!
//! # Layout
//! - [`dispatch`]: which events make a job runnable, as work items the
//!   relay publishes on the work-queue stream (with the log, in order).
//! - [`decide`]: the pure decisions: a claim's verdict, retry or dead.
//! - [`leases`]: who runs which attempt until when (Postgres).
//! - [`desk`]: [`JobDesk`], the service executors talk to: claims (core
//!   request/reply), heartbeats, reports (a durable JetStream consumer),
//!   and the reaper that fails attempts whose worker went silent.
//!
//! Every job state change is a command on the `Job` aggregate through the
//! [`CommandBus`](crate::CommandBus), so it is an event in the log like any
//! other; executors never touch Postgres.

pub mod decide;
pub mod desk;
pub mod dispatch;
pub mod leases;

pub use desk::{JobDesk, JobDeskConfig};
