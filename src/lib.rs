//! The `tandem` binary's library half: settings, and the stack that runs
//! every role in one process. `main.rs` parses the command line and calls
//! into here; the system tests start the same [`stack::Stack`].
//!
//! # Layout
//! - [`settings`]: flags and environment variables, with safe local defaults.
//! - [`stack`]: connect to Postgres, Redis and NATS; start the sequencer and
//!   the gateway; stop them.
//! - [`replay`]: `tandem replay`, rebuilding read models with a progress bar.
//! - [`bench`]: `tandem bench`, the benchmark drivers.

pub mod bench;
pub mod replay;
pub mod settings;
pub mod stack;
