//! The job runner: takes runnable jobs from a JetStream work queue, runs
//! their code in a sandbox built from kernel primitives, and reports what
//! happened on NATS. It holds **no database credentials** and does not link
//! the write side's storage: a sandbox escape must not hand out the log.
//!
//! # Layout
//! - [`worker`]: [`Executor`], the NATS side: work items, claims,
//!   heartbeats, live output, reports, stopping cancelled attempts.
//! - [`sandbox`]: [`sandbox::Sandbox`], one run of untrusted code with its
//!   limits, and the launcher process (`tandem __sandbox`) that builds the
//!   sandbox before the interpreter starts.
//! - [`report`]: fitting a report into one NATS message.

pub mod report;
pub mod sandbox;
pub mod worker;

pub use worker::{Executor, ExecutorConfig};

/// The argument that makes the `tandem` binary the sandbox launcher
/// (`tandem __sandbox`, whose `main` calls [`sandbox::launcher_main`]).
pub const LAUNCHER_ARG: &str = "__sandbox";
