//! The `User` aggregate: a registered person and their public profile.
//! Credentials (the password hash) are deliberately *not* in this stream:
//! events are published on the bus, and a hash must never travel there.

mod aggregate;
mod commands;
mod events;

pub use aggregate::{User, UserError};
pub use commands::UserCommand;
pub use events::UserEvent;
