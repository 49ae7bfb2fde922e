use crate::ids::UserId;
use crate::values::{DisplayName, Email};

#[derive(Debug, Clone, PartialEq)]
pub enum UserCommand {
    /// Email uniqueness is settled by the write side before this runs.
    Register {
        user_id: UserId,
        email: Email,
        display_name: DisplayName,
    },
    UpdateDisplayName {
        actor: UserId,
        display_name: DisplayName,
    },
}
