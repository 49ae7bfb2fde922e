//! Work items from the log: the events after which a job is queued to run
//! (submitted, retry scheduled, retry requested). The relay publishes them
//! on the jobs work-queue stream as it publishes the log, so a committed
//! submission is never lost between the log and the queue; `Nats-Msg-Id`
//! is the event's position, so a republish is absorbed. The item only
//! says "look at this job": the claim decides on the job's current state.

use async_nats::jetstream::stream;
use tandem_domain::envelope::{BusNames, Envelope};
use tandem_domain::job::JobEvent;
use tandem_domain::work::WorkItem;
use tandem_domain::JobId;

/// Job events after which the job waits for an executor.
const RUNNABLE_AFTER: [&str; 3] = ["JobSubmitted", "JobRetryScheduled", "JobRetryRequested"];

/// The work item an event makes, if any.
pub fn work_item(envelope: &Envelope) -> Option<WorkItem> {
    if envelope.aggregatetype != "Job" || !RUNNABLE_AFTER.contains(&envelope.event_type.as_str()) {
        return None;
    }
    let job_id = JobId(envelope.aggregateid.parse().ok()?);
    let (attempt, not_before) = match envelope.decode::<JobEvent>() {
        Ok(JobEvent::JobSubmitted { .. }) => (Some(1), None),
        Ok(JobEvent::JobRetryScheduled {
            next_attempt,
            retry_at,
        }) => (Some(next_attempt), Some(retry_at)),
        // A retry on request continues the numbering: the desk looks it up.
        _ => (None, None),
    };
    Some(WorkItem {
        job_id,
        project_id: envelope.projectid.map(tandem_domain::ProjectId),
        position: envelope.position,
        attempt,
        not_before,
    })
}

/// Work items for every job waiting for an executor now, from the log: a
/// job whose latest event is one of [`RUNNABLE_AFTER`]. For a jobs stream
/// that was lost and recreated (it is a cache of the log, not its record).
pub async fn waiting_jobs(db: impl sqlx::PgExecutor<'_>) -> Result<Vec<WorkItem>, sqlx::Error> {
    let rows: Vec<(i64, String, Option<uuid::Uuid>)> = sqlx::query_as(
        "SELECT l.position, latest.aggregate_id, latest.project_id
           FROM (SELECT DISTINCT ON (aggregate_id) aggregate_id, event_type, global_id, project_id
                   FROM events WHERE aggregate_type = 'Job'
                  ORDER BY aggregate_id, sequence DESC) latest
           JOIN event_log l ON l.global_id = latest.global_id
          WHERE latest.event_type = ANY($1)
          ORDER BY l.position",
    )
    .bind(&RUNNABLE_AFTER[..])
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(position, id, project)| {
            Some(WorkItem {
                job_id: JobId(id.parse().ok()?),
                project_id: project.map(tandem_domain::ProjectId),
                position,
                attempt: None,
                not_before: None,
            })
        })
        .collect())
}

/// The work-queue stream: each item is delivered to one executor and
/// removed once acknowledged.
pub fn jobs_stream_config(
    names: &BusNames,
    duplicate_window: std::time::Duration,
) -> stream::Config {
    stream::Config {
        name: names.jobs_stream(),
        subjects: vec![names.job_work_wildcard()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::WorkQueue,
        duplicate_window,
        ..Default::default()
    }
}

/// Executors' reports, kept until the desk has turned them into commands.
pub fn reports_stream_config(names: &BusNames) -> stream::Config {
    stream::Config {
        name: names.job_reports_stream(),
        subjects: vec![names.job_reports_wildcard()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::WorkQueue,
        duplicate_window: std::time::Duration::from_secs(120),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;
    use tandem_domain::envelope::LogRecord;
    use uuid::Uuid;

    use super::*;

    fn envelope(aggregate: &str, event: &str, id: &str) -> Envelope {
        let payload = json!({});
        let metadata = json!({});
        Envelope::from_log(&LogRecord {
            position: 42,
            event_id: Uuid::now_v7(),
            aggregate_type: aggregate,
            aggregate_id: id,
            sequence: 1,
            event_type: event,
            event_version: "1",
            payload: &payload,
            metadata: &metadata,
            recorded_at: Utc::now(),
            project_id: None,
        })
    }

    #[test]
    fn submissions_and_retries_make_work_and_nothing_else_does() {
        let job = Uuid::now_v7();
        for event in RUNNABLE_AFTER {
            let item = work_item(&envelope("Job", event, &job.to_string())).unwrap();
            assert_eq!(item.job_id, JobId(job));
            assert_eq!(item.position, 42);
            assert_eq!(item.attempt, None, "payload unreadable here: no hint");
        }
        for event in [
            "JobAttemptStarted",
            "JobCompleted",
            "JobCancelled",
            "JobMarkedDead",
        ] {
            assert_eq!(work_item(&envelope("Job", event, &job.to_string())), None);
        }
        assert_eq!(
            work_item(&envelope("Project", "JobSubmitted", &job.to_string())),
            None
        );
        assert_eq!(
            work_item(&envelope("Job", "JobSubmitted", "not-a-uuid")),
            None
        );
    }
}
