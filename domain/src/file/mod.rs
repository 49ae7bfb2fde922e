//! The `File` aggregate: one path in one workspace, its versions and its
//! deletion. Its id is [`crate::FileId::for_path`]; who may write it is
//! decided by the owning project, asked through the `ProjectDirectory`.

mod aggregate;
mod commands;
mod events;

pub use aggregate::{File, FileError};
pub use commands::FileCommand;
pub use events::FileEvent;
