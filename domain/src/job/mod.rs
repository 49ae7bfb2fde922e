//! The `Job` aggregate: code submitted to run in the background, and the
//! state machine of its attempts:
//!
//! ```text
//! submit ─▶ queued ─start─▶ running ─complete─▶ succeeded | failed (exit ≠ 0)
//!             ▲               │
//!             │          fail attempt
//!             │          (or limit hit ─▶ failed)
//!             │               ▼
//!             └─schedule── attempt failed ─mark dead─▶ dead
//!                retry
//! cancel: queued | running | attempt failed ─▶ cancelled
//! retry on request: failed | dead | cancelled ─▶ queued (fresh attempt budget)
//! ```
//!
//! User commands (submit, cancel, retry) are authorized by the project;
//! the executor's reports (start, complete, fail) are turned into commands
//! by the write side and carry the attempt number they are about, so a
//! late report from a lost worker cannot touch a newer attempt.

mod aggregate;
mod commands;
mod events;

pub use aggregate::{retry_delay, Claimable, Job, JobError, JobSpec, JobStatus};
pub use commands::{JobCommand, JobLimit, JobSource, Language};
pub use events::JobEvent;
