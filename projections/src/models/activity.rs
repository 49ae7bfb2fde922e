//! `read.activity_daily`: events per project, UTC day, event type and actor.

use tandem_domain::envelope::Envelope;
use uuid::Uuid;

use crate::projector::{ProjectionError, Projector};
use crate::rows::RowOps;
use crate::sql::Lit;

pub struct Activity;

impl Projector for Activity {
    fn name(&self) -> &'static str {
        "activity"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["activity_daily"]
    }

    /// Counts every event of a project, whatever its type: nothing to
    /// decode, so no event can be missed.
    fn project(&self, event: &Envelope, rows: &mut RowOps) -> Result<(), ProjectionError> {
        let Some(project) = event.projectid else {
            return Ok(());
        };
        rows.count(
            "activity_daily",
            vec![
                ("project_id", project.into()),
                ("day", Lit::Date(event.time.date_naive())),
                ("event_type", (&event.event_type).into()),
                ("actor_id", event.actorid.unwrap_or(Uuid::nil()).into()),
            ],
            "events",
            1,
        );
        Ok(())
    }
}
