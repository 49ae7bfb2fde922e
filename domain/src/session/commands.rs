use crate::ids::{SessionId, UserId};

#[derive(Debug, Clone, PartialEq)]
pub enum SessionCommand {
    /// A user proved their password and received a token family.
    RecordLogin { session_id: SessionId, user: UserId },
    /// The user ended the session.
    RecordLogout { actor: UserId },
    /// A spent refresh token of this family was presented again: the family
    /// is revoked because the token has probably been stolen.
    RecordRefreshReuse,
}
