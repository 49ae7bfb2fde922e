//! What the gateway keeps in Redis, under the deployment's namespace so
//! several deployments (and tests) share one server without colliding:
//! rate-limit windows, and the denylist of revoked access tokens and
//! sessions (until the tokens would have expired anyway). Requests are
//! counted from a local lease of the window ([`crate::quota`]) and checked
//! against a local copy of the denylist ([`crate::denylist`]) whenever
//! those can answer, so most requests cost Redis nothing.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, RedisError, Script};

use crate::denylist::{Denylist, Revoked};
use crate::error::ApiError;
use crate::quota::{self, Leases};

const WINDOW_MS: u64 = 60_000;

/// Fixed one-minute windows: add a lease of ARGV[2] requests, set the
/// expiry on the window's first lease, and return the count and time
/// left, atomically.
const HIT: &str = r"
local n = redis.call('INCRBY', KEYS[1], ARGV[2])
if n == tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('PTTL', KEYS[1])
return {n, ttl}
";

/// The same, and in the same round trip whether any of the further keys
/// (the caller's denylist entries) exists.
const HIT_AND_CHECK: &str = r"
local n = redis.call('INCRBY', KEYS[1], ARGV[2])
if n == tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('PTTL', KEYS[1])
local denied = 0
if #KEYS > 1 then denied = redis.call('EXISTS', unpack(KEYS, 2)) end
return {n, ttl, denied}
";

// Named once: a `&str` header name is parsed again on every insert.
pub(crate) const LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

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
    pub(crate) fn of(limit: u32, count: u64, ttl_ms: i64) -> Self {
        Self {
            limit,
            remaining: (u64::from(limit).saturating_sub(count)) as u32,
            reset: (ttl_ms.max(0) as u64).div_ceil(1000).max(1),
            allowed: count <= u64::from(limit),
        }
    }

    pub fn write_headers(&self, headers: &mut HeaderMap) {
        headers.insert(LIMIT, HeaderValue::from(self.limit));
        headers.insert(REMAINING, HeaderValue::from(self.remaining));
        headers.insert(RESET, HeaderValue::from(self.reset));
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
    leases: Arc<Leases>,
    denylist: Arc<Denylist>,
}

fn ttl(ttl_ms: i64) -> Duration {
    Duration::from_millis(ttl_ms.max(0) as u64)
}

impl RedisState {
    /// `client` opens the denylist's subscription; `keep` is how long a
    /// revocation can matter (the longest an access token lives).
    pub fn new(
        client: redis::Client,
        redis: ConnectionManager,
        namespace: &str,
        keep: Duration,
    ) -> Self {
        Self {
            redis,
            prefix: namespace.to_owned(),
            hit: Script::new(HIT),
            hit_and_check: Script::new(HIT_AND_CHECK),
            leases: Arc::default(),
            denylist: Denylist::spawn(client, namespace, keep),
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
        let key = self.rate_key(policy, subject);
        if let Some(verdict) = self.leases.take(&key, limit) {
            return Ok(verdict);
        }
        let chunk = quota::chunk(limit);
        let (count, ttl_ms): (u64, i64) = self
            .hit
            .key(&key)
            .arg(WINDOW_MS)
            .arg(chunk)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(self.leases.grant(&key, limit, chunk, count, ttl(ttl_ms)))
    }

    /// [`Self::hit`] and [`Self::is_denied`], in one round trip when both
    /// need Redis, for the requests of an authenticated user.
    pub async fn hit_and_check(
        &self,
        policy: &str,
        subject: &str,
        limit: u32,
        jti: &str,
        sid: &str,
    ) -> Result<(Verdict, bool), RedisError> {
        if let Some(denied) = self.denylist.check(jti, sid) {
            return Ok((self.hit(policy, subject, limit).await?, denied));
        }
        let deny = self.deny_keys(jti, sid);
        let key = self.rate_key(policy, subject);
        if let Some(verdict) = self.leases.take(&key, limit) {
            let n: u32 = self.redis.clone().exists(&deny).await?;
            return Ok((verdict, n > 0));
        }
        let chunk = quota::chunk(limit);
        let (count, ttl_ms, denied): (u64, i64, u32) = self
            .hit_and_check
            .key(&key)
            .key(&deny[0])
            .key(&deny[1])
            .arg(WINDOW_MS)
            .arg(chunk)
            .invoke_async(&mut self.redis.clone())
            .await?;
        let verdict = self.leases.grant(&key, limit, chunk, count, ttl(ttl_ms));
        Ok((verdict, denied > 0))
    }

    fn deny_keys(&self, jti: &str, sid: &str) -> [String; 2] {
        [
            self.denylist.key(Revoked::Token, jti),
            self.denylist.key(Revoked::Session, sid),
        ]
    }

    /// Records `key` in Redis for `ttl_secs` and tells every gateway.
    async fn deny(&self, key: String, ttl_secs: u64) -> Result<(), RedisError> {
        redis::pipe()
            .atomic()
            .set_ex(&key, 1, ttl_secs.max(1))
            .ignore()
            .publish(self.denylist.channel(), &key)
            .ignore()
            .query_async::<()>(&mut self.redis.clone())
            .await?;
        self.denylist.add(&key);
        Ok(())
    }

    /// Refuses the access token `jti` for `ttl_secs` (its remaining life).
    pub async fn deny_token(&self, jti: &str, ttl_secs: u64) -> Result<(), RedisError> {
        self.deny(self.denylist.key(Revoked::Token, jti), ttl_secs)
            .await
    }

    /// Refuses every access token of session `sid` for `ttl_secs` (the
    /// longest an access token lives).
    pub async fn deny_session(&self, sid: &str, ttl_secs: u64) -> Result<(), RedisError> {
        self.deny(self.denylist.key(Revoked::Session, sid), ttl_secs)
            .await
    }

    pub async fn is_denied(&self, jti: &str, sid: &str) -> Result<bool, RedisError> {
        if let Some(denied) = self.denylist.check(jti, sid) {
            return Ok(denied);
        }
        let keys = self.deny_keys(jti, sid);
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
