use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

use crate::ids::{SessionId, UserId};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum SessionEvent {
    UserLoggedIn {
        session_id: SessionId,
        user_id: UserId,
    },
    UserLoggedOut {
        user_id: UserId,
    },
    RefreshTokenReuseDetected {
        user_id: UserId,
    },
}

impl DomainEvent for SessionEvent {
    fn event_type(&self) -> String {
        match self {
            SessionEvent::UserLoggedIn { .. } => "UserLoggedIn",
            SessionEvent::UserLoggedOut { .. } => "UserLoggedOut",
            SessionEvent::RefreshTokenReuseDetected { .. } => "RefreshTokenReuseDetected",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        crate::EVENT_VERSION.to_owned()
    }
}
