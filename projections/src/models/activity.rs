//! `read.activity_daily`: events per project, UTC day, event type and actor.

use tandem_domain::envelope::Envelope;
use uuid::Uuid;

use crate::projector::{ProjectionError, Projector};
use crate::sql::{Lit, SqlBatch};

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
    fn project(&self, event: &Envelope, batch: &mut SqlBatch) -> Result<(), ProjectionError> {
        let Some(project) = event.projectid else {
            return Ok(());
        };
        batch.push(
            "INSERT INTO activity_daily (project_id, day, event_type, actor_id, events)
             VALUES ($1, $2, $3, $4, 1)
             ON CONFLICT (project_id, day, event_type, actor_id)
             DO UPDATE SET events = activity_daily.events + 1",
            &[
                project.into(),
                Lit::Date(event.time.date_naive()),
                (&event.event_type).into(),
                event.actorid.unwrap_or(Uuid::nil()).into(),
            ],
        );
        Ok(())
    }
}
