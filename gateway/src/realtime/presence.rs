//! Who is here, per project, shared by every gateway through Redis.
//!
//! Keys (prefix = namespace):
//! - `<ns>:presence:<project_id>`: sorted set user id → expiry (ms), the
//!   latest of that user's connections;
//! - `<ns>:presence:<project_id>:<user_id>`: sorted set connection
//!   (`<gateway>/<connection>`) → expiry (ms).
//!
//! A user is present while any of their connections is unexpired, so two
//! tabs are one presence. Each gateway refreshes its own entries every
//! third of the TTL; the entries of a gateway that died expire, and the
//! next sweep by any gateway with subscribers in that project announces
//! the leave. Every change is one Lua script, so of two gateways sweeping
//! the same user only one announces it. Every key expires with its latest
//! entry, so gateways that all died leave nothing behind.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;
use redis::{RedisError, Script};
use uuid::Uuid;

/// `KEYS[1]` the project's set; ARGV: connection, user, now, expiry.
/// Returns `{joined (0/1), present users...}`.
const JOIN: &str = r"
local conns = KEYS[1] .. ':' .. ARGV[2]
redis.call('ZREMRANGEBYSCORE', conns, '-inf', ARGV[3])
local had = redis.call('ZCARD', conns)
redis.call('ZADD', conns, ARGV[4], ARGV[1])
redis.call('PEXPIREAT', conns, ARGV[4])
local before = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[2]) or '0')
redis.call('ZADD', KEYS[1], 'GT', ARGV[4], ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[4])
local joined = 0
if had == 0 and before <= tonumber(ARGV[3]) then joined = 1 end
local reply = { joined }
for _, user in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[3], '+inf')) do
  table.insert(reply, user)
end
return reply
";

/// `KEYS[1]` the project's set; ARGV: connection, user, now.
/// Returns 1 when that was the user's last connection.
const LEAVE: &str = r"
local conns = KEYS[1] .. ':' .. ARGV[2]
redis.call('ZREM', conns, ARGV[1])
redis.call('ZREMRANGEBYSCORE', conns, '-inf', ARGV[3])
if redis.call('ZCARD', conns) == 0 then
  return redis.call('ZREM', KEYS[1], ARGV[2])
end
return 0
";

/// `KEYS[1]` the project's set; ARGV: now, expiry, then connection/user
/// pairs. Refreshes them; returns the users this brought back (a pause
/// longer than the TTL let a sweep remove them).
const HEARTBEAT: &str = r"
local back = {}
for i = 3, #ARGV, 2 do
  local conns = KEYS[1] .. ':' .. ARGV[i + 1]
  local before = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i + 1]) or '0')
  redis.call('ZADD', conns, ARGV[2], ARGV[i])
  redis.call('PEXPIREAT', conns, ARGV[2])
  redis.call('ZADD', KEYS[1], 'GT', ARGV[2], ARGV[i + 1])
  if before <= tonumber(ARGV[1]) then table.insert(back, ARGV[i + 1]) end
end
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return back
";

/// `KEYS[1]` the project's set; ARGV: now. Removes users whose every
/// connection expired and returns them.
const SWEEP: &str = r"
local gone = {}
for _, user in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])) do
  local conns = KEYS[1] .. ':' .. user
  redis.call('ZREMRANGEBYSCORE', conns, '-inf', ARGV[1])
  if redis.call('ZCARD', conns) == 0 then
    if redis.call('ZREM', KEYS[1], user) == 1 then table.insert(gone, user) end
  end
end
return gone
";

#[derive(Clone)]
pub struct Presence {
    redis: ConnectionManager,
    prefix: String,
    ttl: Duration,
    join: Script,
    leave: Script,
    heartbeat: Script,
    sweep: Script,
}

/// The result of a join: whether the user just arrived, and who is here.
pub struct Joined {
    pub arrived: bool,
    pub present: Vec<Uuid>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn users(raw: &[String]) -> Vec<Uuid> {
    raw.iter().filter_map(|u| u.parse().ok()).collect()
}

impl Presence {
    pub fn new(redis: ConnectionManager, namespace: &str, ttl: Duration) -> Self {
        Self {
            redis,
            prefix: format!("{namespace}:presence"),
            ttl,
            join: Script::new(JOIN),
            leave: Script::new(LEAVE),
            heartbeat: Script::new(HEARTBEAT),
            sweep: Script::new(SWEEP),
        }
    }

    fn key(&self, project: Uuid) -> String {
        format!("{}:{project}", self.prefix)
    }

    fn expiry(&self, now: u64) -> u64 {
        now + u64::try_from(self.ttl.as_millis()).unwrap_or(30_000)
    }

    pub async fn join(
        &self,
        project: Uuid,
        user: Uuid,
        connection: &str,
    ) -> Result<Joined, RedisError> {
        let now = now_ms();
        let reply: Vec<redis::Value> = self
            .join
            .key(self.key(project))
            .arg(connection)
            .arg(user.to_string())
            .arg(now)
            .arg(self.expiry(now))
            .invoke_async(&mut self.redis.clone())
            .await?;
        let arrived = matches!(reply.first(), Some(redis::Value::Int(1)));
        let present: Vec<String> = reply
            .iter()
            .skip(1)
            .filter_map(|v| redis::from_redis_value_ref(v).ok())
            .collect();
        Ok(Joined {
            arrived,
            present: users(&present),
        })
    }

    /// `true` when this was the user's last connection in the project.
    pub async fn leave(
        &self,
        project: Uuid,
        user: Uuid,
        connection: &str,
    ) -> Result<bool, RedisError> {
        let left: i64 = self
            .leave
            .key(self.key(project))
            .arg(connection)
            .arg(user.to_string())
            .arg(now_ms())
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(left == 1)
    }

    /// Refreshes this gateway's entries: `(connection, user)` per project.
    /// Returns, per project, users that had been swept and are back.
    pub async fn heartbeat(
        &self,
        entries: &HashMap<Uuid, Vec<(String, Uuid)>>,
    ) -> Result<Vec<(Uuid, Vec<Uuid>)>, RedisError> {
        let now = now_ms();
        let mut back = Vec::new();
        for (project, connections) in entries {
            let mut invocation = self.heartbeat.key(self.key(*project));
            invocation.arg(now).arg(self.expiry(now));
            for (connection, user) in connections {
                invocation.arg(connection).arg(user.to_string());
            }
            let returned: Vec<String> = invocation.invoke_async(&mut self.redis.clone()).await?;
            if !returned.is_empty() {
                back.push((*project, users(&returned)));
            }
        }
        Ok(back)
    }

    /// Removes users of `project` whose connections all expired.
    pub async fn sweep(&self, project: Uuid) -> Result<Vec<Uuid>, RedisError> {
        let gone: Vec<String> = self
            .sweep
            .key(self.key(project))
            .arg(now_ms())
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(users(&gone))
    }
}
