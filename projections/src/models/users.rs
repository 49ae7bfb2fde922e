//! `read.users`: public profiles (never the email).

use cqrs_es::Aggregate;
use tandem_domain::envelope::Envelope;
use tandem_domain::user::{User, UserEvent};

use crate::projector::{aggregate_uuid, ProjectionError, Projector};
use crate::sql::{Lit, SqlBatch};

pub struct Users;

impl Projector for Users {
    fn name(&self) -> &'static str {
        "users"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["users"]
    }

    fn project(&self, event: &Envelope, batch: &mut SqlBatch) -> Result<(), ProjectionError> {
        if event.aggregatetype != User::TYPE {
            return Ok(());
        }
        let user = aggregate_uuid(event)?;
        let (at, version) = (Lit::Time(event.time), Lit::Int(event.sequence));
        match event.decode::<UserEvent>()? {
            UserEvent::UserRegistered {
                display_name,
                user_id: _,
                email: _,
            } => batch.push(
                "INSERT INTO users (user_id, display_name, registered_at, updated_at, version)
                 VALUES ($1, $2, $3, $3, $4)",
                &[user.into(), (&display_name).into(), at, version],
            ),
            UserEvent::DisplayNameUpdated { display_name } => batch.push(
                "UPDATE users SET display_name = $2, updated_at = $3, version = $4 WHERE user_id = $1",
                &[user.into(), (&display_name).into(), at, version],
            ),
        }
        Ok(())
    }
}
