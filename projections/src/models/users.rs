//! `read.users`: public profiles (never the email).

use cqrs_es::Aggregate;
use tandem_domain::envelope::Envelope;
use tandem_domain::user::{User, UserEvent};

use crate::projector::{aggregate_uuid, ProjectionError, Projector};
use crate::rows::{RowOps, Set};
use crate::sql::Lit;

pub struct Users;

impl Projector for Users {
    fn name(&self) -> &'static str {
        "users"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["users"]
    }

    fn project(&self, event: &Envelope, rows: &mut RowOps) -> Result<(), ProjectionError> {
        if event.aggregatetype != User::TYPE {
            return Ok(());
        }
        let key = vec![("user_id", Lit::Uuid(aggregate_uuid(event)?))];
        let (at, version) = (Lit::Time(event.time), Lit::Int(event.sequence));
        match event.decode::<UserEvent>()? {
            UserEvent::UserRegistered {
                display_name,
                user_id: _,
                email: _,
            } => rows.insert(
                "users",
                key,
                vec![
                    ("display_name", display_name.into()),
                    ("registered_at", at.clone()),
                    ("updated_at", at),
                    ("version", version),
                ],
            ),
            UserEvent::DisplayNameUpdated { display_name } => rows.update(
                "users",
                key,
                vec![
                    ("display_name", Set::To(display_name.into())),
                    ("updated_at", Set::To(at)),
                    ("version", Set::To(version)),
                ],
            ),
        }
        Ok(())
    }
}
