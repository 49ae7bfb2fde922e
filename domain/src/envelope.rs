//! How an event travels once it has a log position: the CloudEvents 1.0
//! JSON envelope (on JetStream, to projections and WebSocket clients) and
//! the NATS names it travels under.
//!
//! Pure data: the relay builds envelopes from the log, consumers read them.
//! Every name is prefixed by the deployment's namespace so that tests and
//! several deployments share one NATS server without seeing each other.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// One sequenced event as CloudEvents 1.0 JSON, with Tandem's extension
/// attributes (`position`, `aggregatetype`, ...). Field names are part of
/// the public contract (API.md): WebSocket clients see them as they are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub specversion: String,
    /// The event id (UUIDv7): also the JetStream `Nats-Msg-Id`.
    pub id: Uuid,
    /// `/projects/<project_id>`, or `/tandem` for events outside projects.
    pub source: String,
    /// The event type (`ProjectCreated`, ...).
    #[serde(rename = "type")]
    pub event_type: String,
    /// `<aggregate_type>/<aggregate_id>`.
    pub subject: String,
    pub time: DateTime<Utc>,
    pub datacontenttype: String,
    /// The payload, as the event store holds it. `None` when it did not fit
    /// a NATS message (see [`Envelope::data_omitted`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    pub position: i64,
    pub aggregatetype: String,
    pub aggregateid: String,
    pub sequence: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projectid: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actorid: Option<Uuid>,
    /// The payload's schema version (`event_version` in the store).
    pub eventversion: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlationid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causationid: Option<String>,
    /// Set when the payload was too large for one NATS message: a consumer
    /// that needs it reads it from the log by `id` (a claim check).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dataomitted: bool,
}

pub const SPEC_VERSION: &str = "1.0";
pub const CONTENT_TYPE: &str = "application/json";

/// What the log knows of one event, from which its envelope is built.
pub struct LogRecord<'a> {
    pub position: i64,
    pub event_id: Uuid,
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub sequence: i64,
    pub event_type: &'a str,
    pub event_version: &'a str,
    pub payload: &'a Value,
    pub metadata: &'a Value,
    pub recorded_at: DateTime<Utc>,
    pub project_id: Option<Uuid>,
}

impl Envelope {
    pub fn from_log(record: &LogRecord<'_>) -> Self {
        let meta = |key: &str| {
            record
                .metadata
                .get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        Self {
            specversion: SPEC_VERSION.to_owned(),
            id: record.event_id,
            source: match record.project_id {
                Some(p) => format!("/projects/{p}"),
                None => "/tandem".to_owned(),
            },
            event_type: record.event_type.to_owned(),
            subject: format!("{}/{}", record.aggregate_type, record.aggregate_id),
            time: record.recorded_at,
            datacontenttype: CONTENT_TYPE.to_owned(),
            data: Some(record.payload.clone()),
            position: record.position,
            aggregatetype: record.aggregate_type.to_owned(),
            aggregateid: record.aggregate_id.to_owned(),
            sequence: record.sequence,
            projectid: record.project_id,
            actorid: meta("actor_id").and_then(|a| a.parse().ok()),
            eventversion: record.event_version.to_owned(),
            correlationid: meta("correlation_id"),
            causationid: meta("causation_id"),
            dataomitted: false,
        }
    }

    /// The same envelope without its payload (a claim check).
    pub fn without_data(mut self) -> Self {
        self.data = None;
        self.dataomitted = true;
        self
    }

    /// The payload as the domain event `E` (the store's serde shape).
    pub fn decode<E: DeserializeOwned>(&self) -> Result<E, EnvelopeError> {
        let data = self.data.as_ref().ok_or(EnvelopeError::DataOmitted)?;
        E::deserialize(data).map_err(|e| EnvelopeError::Payload {
            event_type: self.event_type.clone(),
            reason: e.to_string(),
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("the envelope carries no data (read it from the log)")]
    DataOmitted,
    #[error("unreadable {event_type} payload: {reason}")]
    Payload { event_type: String, reason: String },
}

/// The NATS names of one deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BusNames {
    namespace: String,
}

impl BusNames {
    /// `namespace` becomes the first subject token and the stream name's
    /// prefix; it must be a plain token (letters, digits, `_`, `-`).
    pub fn new(namespace: &str) -> Result<Self, InvalidNamespace> {
        let ok = !namespace.is_empty()
            && namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if ok {
            Ok(Self {
                namespace: namespace.to_owned(),
            })
        } else {
            Err(InvalidNamespace(namespace.to_owned()))
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The stream holding the log: `TANDEM_EVENTS` for namespace `tandem`.
    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.stream_prefix())
    }

    /// Everything the events stream captures: `<ns>.events.>`.
    pub fn events_wildcard(&self) -> String {
        format!("{}.events.>", self.namespace)
    }

    /// One project's whole history: `<ns>.events.<project_id>.>`.
    pub fn project_events_wildcard(&self, project: Uuid) -> String {
        format!("{}.events.{project}.>", self.namespace)
    }

    /// `<ns>.events.<project_id|_>.<aggregate_type>.<event_type>`.
    pub fn event_subject(&self, envelope: &Envelope) -> String {
        let project = envelope
            .projectid
            .map_or_else(|| "_".to_owned(), |p| p.to_string());
        format!(
            "{}.events.{project}.{}.{}",
            self.namespace,
            token(&envelope.aggregatetype),
            token(&envelope.event_type)
        )
    }

    /// Ephemeral traffic of a project: `<ns>.live.<project_id>.<kind>`.
    pub fn live_subject(&self, project: Uuid, kind: &str) -> String {
        format!("{}.live.{project}.{}", self.namespace, token(kind))
    }

    /// The work-queue stream of runnable jobs: `TANDEM_JOBS`.
    pub fn jobs_stream(&self) -> String {
        format!("{}_JOBS", self.stream_prefix())
    }

    /// `<ns>.jobs.work.<job_id>`.
    pub fn job_work_subject(&self, job: Uuid) -> String {
        format!("{}.jobs.work.{job}", self.namespace)
    }

    pub fn job_work_wildcard(&self) -> String {
        format!("{}.jobs.work.>", self.namespace)
    }

    /// Core request/reply: executors claim attempts here.
    pub fn job_claim_subject(&self) -> String {
        format!("{}.jobs.claim", self.namespace)
    }

    /// Core: executors' leases on running attempts.
    pub fn job_heartbeat_subject(&self) -> String {
        format!("{}.jobs.heartbeat", self.namespace)
    }

    /// The stream of executors' reports: `TANDEM_JOB_REPORTS`.
    pub fn job_reports_stream(&self) -> String {
        format!("{}_JOB_REPORTS", self.stream_prefix())
    }

    /// `<ns>.jobs.reports.<job_id>`.
    pub fn job_report_subject(&self, job: Uuid) -> String {
        format!("{}.jobs.reports.{job}", self.namespace)
    }

    pub fn job_reports_wildcard(&self) -> String {
        format!("{}.jobs.reports.>", self.namespace)
    }

    /// Live subjects of one job event type in every project, e.g.
    /// `<ns>.events.*.Job.JobCancelled` (executors stop what they run).
    pub fn job_event_subject(&self, event_type: &str) -> String {
        format!("{}.events.*.Job.{}", self.namespace, token(event_type))
    }

    /// Every event of one aggregate type in every project:
    /// `<ns>.events.*.<aggregate_type>.>`.
    pub fn aggregate_events_wildcard(&self, aggregate_type: &str) -> String {
        format!("{}.events.*.{}.>", self.namespace, token(aggregate_type))
    }

    fn stream_prefix(&self) -> String {
        self.namespace.to_ascii_uppercase().replace('-', "_")
    }

    /// A durable consumer's name for a role (`projections-files`, ...).
    pub fn consumer(&self, role: &str) -> String {
        format!("{}-{}", self.namespace, token(role))
    }
}

/// Keeps names from a stored value out of subject syntax.
fn token(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
#[error("namespace {0:?} must be letters, digits, `_` or `-`")]
pub struct InvalidNamespace(pub String);

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::project::ProjectEvent;

    fn record<'a>(payload: &'a Value, metadata: &'a Value, project: Option<Uuid>) -> LogRecord<'a> {
        LogRecord {
            position: 7,
            event_id: Uuid::now_v7(),
            aggregate_type: "Project",
            aggregate_id: "agg",
            sequence: 3,
            event_type: "ProjectArchived",
            event_version: "1",
            payload,
            metadata,
            recorded_at: Utc::now(),
            project_id: project,
        }
    }

    #[test]
    fn envelopes_carry_the_cloudevents_attributes_and_extensions() {
        let project = Uuid::now_v7();
        let actor = Uuid::now_v7();
        let payload = json!({"ProjectArchived": {"by": actor}});
        let metadata = json!({"actor_id": actor.to_string(), "correlation_id": "c-1"});
        let envelope = Envelope::from_log(&record(&payload, &metadata, Some(project)));
        let wire = serde_json::to_value(&envelope).unwrap();
        assert_eq!(wire["specversion"], "1.0");
        assert_eq!(wire["type"], "ProjectArchived");
        assert_eq!(wire["source"], format!("/projects/{project}"));
        assert_eq!(wire["subject"], "Project/agg");
        assert_eq!(wire["position"], 7);
        assert_eq!(wire["sequence"], 3);
        assert_eq!(wire["projectid"], project.to_string());
        assert_eq!(wire["actorid"], actor.to_string());
        assert_eq!(wire["correlationid"], "c-1");
        assert!(wire.get("dataomitted").is_none());
        let back: Envelope = serde_json::from_value(wire).unwrap();
        assert_eq!(back, envelope);
    }

    #[test]
    fn decoding_reads_the_domain_event_and_refuses_a_claim_check() {
        let by = crate::UserId::generate();
        let event = ProjectEvent::ProjectArchived { by };
        let payload = serde_json::to_value(&event).unwrap();
        let metadata = json!({});
        let envelope = Envelope::from_log(&record(&payload, &metadata, None));
        assert_eq!(envelope.decode::<ProjectEvent>().unwrap(), event);
        assert_eq!(
            envelope.without_data().decode::<ProjectEvent>(),
            Err(EnvelopeError::DataOmitted)
        );
    }

    #[test]
    fn subjects_follow_the_architecture() {
        let names = BusNames::new("t-1").unwrap();
        let project = Uuid::now_v7();
        let payload = json!({});
        let metadata = json!({});
        let envelope = Envelope::from_log(&record(&payload, &metadata, Some(project)));
        assert_eq!(
            names.event_subject(&envelope),
            format!("t-1.events.{project}.Project.ProjectArchived")
        );
        let outside = Envelope::from_log(&record(&payload, &metadata, None));
        assert_eq!(
            names.event_subject(&outside),
            "t-1.events._.Project.ProjectArchived"
        );
        assert_eq!(names.events_stream(), "T_1_EVENTS");
        assert_eq!(
            BusNames::new("tandem").unwrap().events_stream(),
            "TANDEM_EVENTS"
        );
        assert!(BusNames::new("a.b").is_err());
        assert!(BusNames::new("").is_err());
    }
}
