//! What the gateway keeps in Redis, under the deployment's namespace so
//! several deployments (and tests) share one server without colliding:
//! rate-limit windows, and the denylist of revoked access tokens and
//! sessions (until the tokens would have expired anyway).

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, RedisError, Script};

use crate::error::ApiError;

const WINDOW_MS: u64 = 60_000;

/// Fixed one-minute windows: INCR, set the expiry on the first hit, and
/// return the count and time left, atomically.
const HIT: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('PTTL', KEYS[1])
return {n, ttl}
";

/// The same, and in the same round trip whether any of the further keys
/// (the caller's denylist entries) exists.
const HIT_AND_CHECK: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('PTTL', KEYS[1])
local denied = 0
if #KEYS > 1 then denied = redis.call('EXISTS', unpack(KEYS, 2)) end
return {n, ttl, denied}
";

/// The outcome of counting one request against a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the window resets.
    pub reset: u64,
    pub allowed: bool,
}

impl Verdict {
    fn of(limit: u32, count: u64, ttl_ms: i64) -> Self {
        Self {
            limit,
            remaining: (u64::from(limit).saturating_sub(count)) as u32,
            reset: (ttl_ms.max(0) as u64).div_ceil(1000).max(1),
            allowed: count <= u64::from(limit),
        }
    }

    pub fn write_headers(&self, headers: &mut HeaderMap) {
        headers.insert("ratelimit-limit", HeaderValue::from(self.limit));
        headers.insert("ratelimit-remaining", HeaderValue::from(self.remaining));
        headers.insert("ratelimit-reset", HeaderValue::from(self.reset));
    }

    pub fn rejection(&self) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many requests; retry in {} s", self.reset),
        )
        .with_header(
            axum::http::header::RETRY_AFTER,
            HeaderValue::from(self.reset),
        );
        let mut headers = HeaderMap::new();
        self.write_headers(&mut headers);
        for (name, value) in headers {
            if let Some(name) = name {
                e = e.with_header(name, value);
            }
        }
        e
    }
}

#[derive(Clone)]
pub struct RedisState {
    redis: ConnectionManager,
    prefix: String,
    hit: Script,
    hit_and_check: Script,
}

impl RedisState {
    pub fn new(redis: ConnectionManager, namespace: &str) -> Self {
        Self {
            redis,
            prefix: namespace.to_owned(),
            hit: Script::new(HIT),
            hit_and_check: Script::new(HIT_AND_CHECK),
        }
    }

    pub fn connection(&self) -> ConnectionManager {
        self.redis.clone()
    }

    fn rate_key(&self, policy: &str, subject: &str) -> String {
        format!("{}:rl:{policy}:{subject}", self.prefix)
    }

    /// Counts a request of `subject` against `policy`'s per-minute `limit`.
    pub async fn hit(
        &self,
        policy: &str,
        subject: &str,
        limit: u32,
    ) -> Result<Verdict, RedisError> {
        let (count, ttl_ms): (u64, i64) = self
            .hit
            .key(self.rate_key(policy, subject))
            .arg(WINDOW_MS)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(Verdict::of(limit, count, ttl_ms))
    }

    /// [`Self::hit`] and [`Self::is_denied`] in one round trip, for the
    /// requests of an authenticated user.
    pub async fn hit_and_check(
        &self,
        policy: &str,
        subject: &str,
        limit: u32,
        jti: &str,
        sid: &str,
    ) -> Result<(Verdict, bool), RedisError> {
        let (count, ttl_ms, denied): (u64, i64, u32) = self
            .hit_and_check
            .key(self.rate_key(policy, subject))
            .key(self.deny_key("jti", jti))
            .key(self.deny_key("sid", sid))
            .arg(WINDOW_MS)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok((Verdict::of(limit, count, ttl_ms), denied > 0))
    }

    fn deny_key(&self, kind: &str, id: &str) -> String {
        format!("{}:deny:{kind}:{id}", self.prefix)
    }

    /// Refuses the access token `jti` for `ttl_secs` (its remaining life).
    pub async fn deny_token(&self, jti: &str, ttl_secs: u64) -> Result<(), RedisError> {
        let key = self.deny_key("jti", jti);
        self.redis
            .clone()
            .set_ex::<_, _, ()>(key, 1, ttl_secs.max(1))
            .await
    }

    /// Refuses every access token of session `sid` for `ttl_secs` (the
    /// longest an access token lives).
    pub async fn deny_session(&self, sid: &str, ttl_secs: u64) -> Result<(), RedisError> {
        let key = self.deny_key("sid", sid);
        self.redis
            .clone()
            .set_ex::<_, _, ()>(key, 1, ttl_secs.max(1))
            .await
    }

    pub async fn is_denied(&self, jti: &str, sid: &str) -> Result<bool, RedisError> {
        let keys = [self.deny_key("jti", jti), self.deny_key("sid", sid)];
        let n: u32 = self.redis.clone().exists(&keys).await?;
        Ok(n > 0)
    }

    pub async fn ping(&self) -> Result<(), RedisError> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.redis.clone())
            .await
            .map(|_| ())
    }
}
