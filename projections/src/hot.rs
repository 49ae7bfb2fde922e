//! Hot state in Redis, shared by every gateway: per-project member sets
//! (who may subscribe to a project's live stream) and job status
//! snapshots.
//!
//! Keys (prefix = namespace):
//! - `<ns>:members:<project_id>`: hash user id → role;
//!   `<ns>:members:<project_id>:position`: the last project event applied.
//! - `<ns>:job:<job_id>`: hash `status`, `attempt`, `project_id`,
//!   `exit_code`, `updated_at`, `position`.
//! - `<ns>:projection:hot`: the checkpoint.
//!
//! A batch is one Lua script run (one round trip, atomic on the server).
//! Every change is versioned by log position and applied only over an
//! older one, so a redelivery, a replay or two appliers leave the same
//! state. If Redis loses its data the checkpoint goes with it and the
//! consumer starts from position 1 again: Redis is rebuilt from the log.

use cqrs_es::Aggregate;
use redis::aio::ConnectionManager;
use redis::Script;
use serde_json::{json, Value};
use tandem_domain::envelope::Envelope;
use tandem_domain::job::{Job, JobEvent};
use tandem_domain::project::{Project, ProjectEvent};
use uuid::Uuid;

use crate::consumer::{BoxError, Sink};
use crate::projector::aggregate_uuid;

pub const NAME: &str = "hot";

const APPLY: &str = r"
local ops = cjson.decode(ARGV[1])
for _, op in ipairs(ops) do
  if op.kind == 'member' then
    local current = tonumber(redis.call('GET', KEYS[op.position_key]) or '0')
    if op.position > current then
      if op.role then
        redis.call('HSET', KEYS[op.key], op.user, op.role)
      else
        redis.call('HDEL', KEYS[op.key], op.user)
      end
      redis.call('SET', KEYS[op.position_key], op.position)
    end
  else
    local current = tonumber(redis.call('HGET', KEYS[op.key], 'position') or '0')
    if op.position > current then
      redis.call('HSET', KEYS[op.key], 'position', op.position)
      for field, value in pairs(op.fields) do
        redis.call('HSET', KEYS[op.key], field, value)
      end
    end
  end
end
local checkpoint = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[2]) > checkpoint then
  redis.call('SET', KEYS[1], ARGV[2])
end
return 1
";

#[derive(Clone)]
pub struct HotState {
    redis: ConnectionManager,
    namespace: String,
    apply: Script,
}

/// One script invocation being assembled: keys are passed as `KEYS` (so
/// the script declares everything it touches), ops refer to them by index.
struct Ops {
    keys: Vec<String>,
    ops: Vec<Value>,
}

impl Ops {
    fn key(&mut self, key: String) -> usize {
        self.keys.push(key);
        self.keys.len()
    }
}

impl HotState {
    pub fn new(redis: ConnectionManager, namespace: &str) -> Self {
        Self {
            redis,
            namespace: namespace.to_owned(),
            apply: Script::new(APPLY),
        }
    }

    fn members_key(&self, project: Uuid) -> String {
        format!("{}:members:{project}", self.namespace)
    }

    fn job_key(&self, job: Uuid) -> String {
        format!("{}:job:{job}", self.namespace)
    }

    fn checkpoint_key(&self) -> String {
        format!("{}:projection:{NAME}", self.namespace)
    }

    /// The user's role in the project, as the hot state knows it.
    pub async fn role(
        &self,
        project: Uuid,
        user: Uuid,
    ) -> Result<Option<String>, redis::RedisError> {
        let mut redis = self.redis.clone();
        redis::cmd("HGET")
            .arg(self.members_key(project))
            .arg(user.to_string())
            .query_async(&mut redis)
            .await
    }

    /// The user's role in the project together with the hot state's
    /// checkpoint, read atomically (one `MULTI`): the role is what the log
    /// says as of that position.
    pub async fn role_at(
        &self,
        project: Uuid,
        user: Uuid,
    ) -> Result<(i64, Option<String>), redis::RedisError> {
        let mut redis = self.redis.clone();
        let (checkpoint, role): (Option<i64>, Option<String>) = redis::pipe()
            .atomic()
            .get(self.checkpoint_key())
            .hget(self.members_key(project), user.to_string())
            .query_async(&mut redis)
            .await?;
        Ok((checkpoint.unwrap_or(0), role))
    }

    /// A job's snapshot fields (empty when unknown).
    pub async fn job(
        &self,
        job: Uuid,
    ) -> Result<std::collections::HashMap<String, String>, redis::RedisError> {
        let mut redis = self.redis.clone();
        redis::cmd("HGETALL")
            .arg(self.job_key(job))
            .query_async(&mut redis)
            .await
    }

    fn member(
        &self,
        ops: &mut Ops,
        event: &Envelope,
        project: Uuid,
        user: Uuid,
        role: Option<&str>,
    ) {
        let key = ops.key(self.members_key(project));
        let position_key = ops.key(format!("{}:position", self.members_key(project)));
        let mut op = json!({
            "kind": "member", "key": key, "position_key": position_key,
            "position": event.position, "user": user.to_string(),
        });
        // Absent, not null: cjson turns null into a truthy value.
        if let Some(role) = role {
            op["role"] = json!(role);
        }
        ops.ops.push(op);
    }

    fn job_fields(&self, ops: &mut Ops, event: &Envelope, job: Uuid, mut fields: Value) {
        let key = ops.key(self.job_key(job));
        fields["updated_at"] = json!(event.time.to_rfc3339());
        ops.ops.push(json!({
            "kind": "job", "key": key, "position": event.position, "fields": fields,
        }));
    }

    fn project(&self, ops: &mut Ops, event: &Envelope) -> Result<(), BoxError> {
        let project = aggregate_uuid(event)?;
        match event.decode::<ProjectEvent>()? {
            ProjectEvent::ProjectCreated {
                owner_id,
                project_id: _,
                name: _,
                description: _,
            } => self.member(ops, event, project, owner_id.as_uuid(), Some("owner")),
            ProjectEvent::CollaboratorInvited {
                user_id,
                role,
                by: _,
            } => {
                self.member(ops, event, project, user_id.as_uuid(), Some(role.as_str()));
            }
            ProjectEvent::MemberRoleChanged {
                user_id,
                to,
                from: _,
                by: _,
            } => self.member(ops, event, project, user_id.as_uuid(), Some(to.as_str())),
            ProjectEvent::MemberRemoved { user_id, by: _ } => {
                self.member(ops, event, project, user_id.as_uuid(), None);
            }
            ProjectEvent::ProjectDetailsUpdated { .. }
            | ProjectEvent::ProjectArchived { .. }
            | ProjectEvent::WorkspaceCreated { .. }
            | ProjectEvent::WorkspaceRenamed { .. }
            | ProjectEvent::WorkspaceDeleted { .. } => {}
        }
        Ok(())
    }

    fn job_event(&self, ops: &mut Ops, event: &Envelope) -> Result<(), BoxError> {
        let job = aggregate_uuid(event)?;
        let fields = match event.decode::<JobEvent>()? {
            JobEvent::JobSubmitted { project_id, .. } => {
                json!({"status": "queued", "attempt": 0, "project_id": project_id.to_string()})
            }
            JobEvent::JobAttemptStarted { attempt, worker: _ } => {
                json!({"status": "running", "attempt": attempt})
            }
            JobEvent::JobCompleted {
                exit_code,
                attempt,
                stdout: _,
                stderr: _,
                duration_ms: _,
                truncated: _,
            } => json!({
                "status": if exit_code == 0 { "succeeded" } else { "failed" },
                "attempt": attempt,
                "exit_code": exit_code,
            }),
            JobEvent::JobLimitExceeded {
                attempt,
                limit,
                stdout: _,
                stderr: _,
                duration_ms: _,
                truncated: _,
            } => json!({"status": "failed", "attempt": attempt, "reason": limit.as_str()}),
            JobEvent::JobAttemptFailed { .. }
            | JobEvent::JobRetryScheduled { .. }
            | JobEvent::JobRetryRequested { .. } => json!({"status": "queued"}),
            JobEvent::JobMarkedDead { .. } => json!({"status": "dead"}),
            JobEvent::JobCancelled { .. } => json!({"status": "cancelled"}),
        };
        self.job_fields(ops, event, job, fields);
        Ok(())
    }
}

impl Sink for HotState {
    fn name(&self) -> &str {
        NAME
    }

    async fn checkpoint(&self) -> Result<i64, BoxError> {
        let mut redis = self.redis.clone();
        let position: Option<i64> = redis::cmd("GET")
            .arg(self.checkpoint_key())
            .query_async(&mut redis)
            .await?;
        Ok(position.unwrap_or(0))
    }

    async fn apply(&self, after: i64, events: &[Envelope]) -> Result<i64, BoxError> {
        let mut ops = Ops {
            keys: vec![self.checkpoint_key()],
            ops: Vec::new(),
        };
        let mut last = after;
        for event in events.iter().filter(|e| e.position > after) {
            if event.aggregatetype == Project::TYPE {
                self.project(&mut ops, event)?;
            } else if event.aggregatetype == Job::TYPE {
                self.job_event(&mut ops, event)?;
            }
            last = event.position;
        }
        if last == after {
            return Ok(after);
        }
        let mut invocation = self.apply.prepare_invoke();
        for key in &ops.keys {
            invocation.key(key);
        }
        invocation.arg(serde_json::to_string(&ops.ops)?).arg(last);
        let mut redis = self.redis.clone();
        let _: i64 = invocation.invoke_async(&mut redis).await?;
        Ok(last)
    }
}
