use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

use super::{UserCommand, UserEvent};
use crate::ids::{ProjectId, UserId};
use crate::ProjectScoped;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct User {
    id: Option<UserId>,
    display_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("user already registered")]
    AlreadyRegistered,
    #[error("user not found")]
    NotFound,
    #[error("a user can only change their own profile")]
    NotSelf,
}

impl Aggregate for User {
    const TYPE: &'static str = "User";
    type Command = UserCommand;
    type Event = UserEvent;
    type Error = UserError;
    type Services = ();

    async fn handle(
        &mut self,
        command: UserCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), UserError> {
        match command {
            UserCommand::Register {
                user_id,
                email,
                display_name,
            } => {
                if self.id.is_some() {
                    return Err(UserError::AlreadyRegistered);
                }
                let event = UserEvent::UserRegistered {
                    user_id,
                    email: email.as_str().to_owned(),
                    display_name: display_name.into_string(),
                };
                sink.write(event, self).await;
            }
            UserCommand::UpdateDisplayName {
                actor,
                display_name,
            } => {
                let id = self.id.ok_or(UserError::NotFound)?;
                if actor != id {
                    return Err(UserError::NotSelf);
                }
                if display_name.as_str() == self.display_name {
                    return Ok(());
                }
                let event = UserEvent::DisplayNameUpdated {
                    display_name: display_name.into_string(),
                };
                sink.write(event, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: UserEvent) {
        match event {
            UserEvent::UserRegistered {
                user_id,
                display_name,
                email: _,
            } => {
                self.id = Some(user_id);
                self.display_name = display_name;
            }
            UserEvent::DisplayNameUpdated { display_name } => self.display_name = display_name,
        }
    }
}

impl ProjectScoped for User {
    fn project_id(&self) -> Option<ProjectId> {
        None
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;
    use crate::values::{DisplayName, Email};

    type Test = TestFramework<User>;

    fn registered(id: UserId) -> UserEvent {
        UserEvent::UserRegistered {
            user_id: id,
            email: "ada@example.com".into(),
            display_name: "Ada".into(),
        }
    }

    #[test]
    fn registering_a_new_user_records_it() {
        let id = UserId::generate();
        Test::with(())
            .given_no_previous_events()
            .when(UserCommand::Register {
                user_id: id,
                email: Email::parse("ada@example.com").unwrap(),
                display_name: DisplayName::parse("Ada").unwrap(),
            })
            .then_expect_events(vec![registered(id)]);
    }

    #[test]
    fn registering_twice_is_refused() {
        let id = UserId::generate();
        Test::with(())
            .given(vec![registered(id)])
            .when(UserCommand::Register {
                user_id: id,
                email: Email::parse("ada@example.com").unwrap(),
                display_name: DisplayName::parse("Ada").unwrap(),
            })
            .then_expect_error(UserError::AlreadyRegistered);
    }

    #[test]
    fn a_user_renames_themselves() {
        let id = UserId::generate();
        Test::with(())
            .given(vec![registered(id)])
            .when(UserCommand::UpdateDisplayName {
                actor: id,
                display_name: DisplayName::parse("Countess").unwrap(),
            })
            .then_expect_events(vec![UserEvent::DisplayNameUpdated {
                display_name: "Countess".into(),
            }]);
    }

    #[test]
    fn renaming_to_the_same_name_records_nothing() {
        let id = UserId::generate();
        Test::with(())
            .given(vec![registered(id)])
            .when(UserCommand::UpdateDisplayName {
                actor: id,
                display_name: DisplayName::parse("Ada").unwrap(),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn nobody_renames_someone_else() {
        let id = UserId::generate();
        Test::with(())
            .given(vec![registered(id)])
            .when(UserCommand::UpdateDisplayName {
                actor: UserId::generate(),
                display_name: DisplayName::parse("Mallory").unwrap(),
            })
            .then_expect_error(UserError::NotSelf);
    }

    #[test]
    fn renaming_an_unknown_user_is_not_found() {
        let id = UserId::generate();
        Test::with(())
            .given_no_previous_events()
            .when(UserCommand::UpdateDisplayName {
                actor: id,
                display_name: DisplayName::parse("Ghost").unwrap(),
            })
            .then_expect_error(UserError::NotFound);
    }
}
