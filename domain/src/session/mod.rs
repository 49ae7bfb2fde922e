//! The `Session` aggregate: one login and its refresh-token family, so that
//! logins, logouts and detected refresh-token reuse are events in the log
//! like everything else. The tokens themselves (hashes, rotation) are kept
//! by the write side's token store; this stream is the audit trail.

mod aggregate;
mod commands;
mod events;

pub use aggregate::{Session, SessionError};
pub use commands::SessionCommand;
pub use events::SessionEvent;
