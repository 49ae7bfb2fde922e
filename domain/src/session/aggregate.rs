use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

use super::{SessionCommand, SessionEvent};
use crate::ids::{ProjectId, UserId};
use crate::ProjectScoped;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Session {
    user: Option<UserId>,
    /// Ended by logout or revoked for reuse; either way no token of the
    /// family is accepted again.
    ended: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("session already started")]
    AlreadyStarted,
    #[error("session not found")]
    NotFound,
}

impl Aggregate for Session {
    const TYPE: &'static str = "Session";
    type Command = SessionCommand;
    type Event = SessionEvent;
    type Error = SessionError;
    type Services = ();

    async fn handle(
        &mut self,
        command: SessionCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), SessionError> {
        match command {
            SessionCommand::RecordLogin { session_id, user } => {
                if self.user.is_some() {
                    return Err(SessionError::AlreadyStarted);
                }
                let event = SessionEvent::UserLoggedIn {
                    session_id,
                    user_id: user,
                };
                sink.write(event, self).await;
            }
            SessionCommand::RecordLogout { actor } => {
                // Someone else's session is as good as unknown to the actor.
                let user = self.user.filter(|u| *u == actor);
                let user = user.ok_or(SessionError::NotFound)?;
                // Logging out twice is a no-op, so clients may retry it.
                if !self.ended {
                    sink.write(SessionEvent::UserLoggedOut { user_id: user }, self)
                        .await;
                }
            }
            SessionCommand::RecordRefreshReuse => {
                let user = self.user.ok_or(SessionError::NotFound)?;
                let event = SessionEvent::RefreshTokenReuseDetected { user_id: user };
                sink.write(event, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::UserLoggedIn {
                user_id,
                session_id: _,
            } => self.user = Some(user_id),
            SessionEvent::UserLoggedOut { user_id: _ }
            | SessionEvent::RefreshTokenReuseDetected { user_id: _ } => self.ended = true,
        }
    }
}

impl ProjectScoped for Session {
    fn project_id(&self) -> Option<ProjectId> {
        None
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;
    use crate::ids::SessionId;

    type Test = TestFramework<Session>;

    fn login(session_id: SessionId, user_id: UserId) -> SessionEvent {
        SessionEvent::UserLoggedIn {
            session_id,
            user_id,
        }
    }

    #[test]
    fn a_login_starts_a_session() {
        let (s, u) = (SessionId::generate(), UserId::generate());
        Test::with(())
            .given_no_previous_events()
            .when(SessionCommand::RecordLogin {
                session_id: s,
                user: u,
            })
            .then_expect_events(vec![login(s, u)]);
    }

    #[test]
    fn a_session_starts_once() {
        let (s, u) = (SessionId::generate(), UserId::generate());
        Test::with(())
            .given(vec![login(s, u)])
            .when(SessionCommand::RecordLogin {
                session_id: s,
                user: u,
            })
            .then_expect_error(SessionError::AlreadyStarted);
    }

    #[test]
    fn the_owner_logs_out() {
        let (s, u) = (SessionId::generate(), UserId::generate());
        Test::with(())
            .given(vec![login(s, u)])
            .when(SessionCommand::RecordLogout { actor: u })
            .then_expect_events(vec![SessionEvent::UserLoggedOut { user_id: u }]);
    }

    #[test]
    fn logging_out_twice_records_nothing_more() {
        let (s, u) = (SessionId::generate(), UserId::generate());
        Test::with(())
            .given(vec![
                login(s, u),
                SessionEvent::UserLoggedOut { user_id: u },
            ])
            .when(SessionCommand::RecordLogout { actor: u })
            .then_expect_events(vec![]);
    }

    #[test]
    fn nobody_logs_out_someone_elses_session() {
        let (s, u) = (SessionId::generate(), UserId::generate());
        Test::with(())
            .given(vec![login(s, u)])
            .when(SessionCommand::RecordLogout {
                actor: UserId::generate(),
            })
            .then_expect_error(SessionError::NotFound);
    }

    #[test]
    fn reuse_of_a_refresh_token_is_recorded() {
        let (s, u) = (SessionId::generate(), UserId::generate());
        Test::with(())
            .given(vec![login(s, u)])
            .when(SessionCommand::RecordRefreshReuse)
            .then_expect_events(vec![SessionEvent::RefreshTokenReuseDetected { user_id: u }]);
    }

    #[test]
    fn reuse_on_an_unknown_session_is_refused() {
        Test::with(())
            .given_no_previous_events()
            .when(SessionCommand::RecordRefreshReuse)
            .then_expect_error(SessionError::NotFound);
    }
}
