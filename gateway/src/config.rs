//! [`GatewayConfig`]: everything the gateway is told from outside, parsed
//! once by the binary (flags and environment) into validated types.

use std::time::Duration;

use axum::http::HeaderValue;

/// A secret that never appears in logs or debug output.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Clone, Debug)]
pub struct JwtConfig {
    pub secret: Secret,
    pub issuer: String,
    pub audience: String,
    pub access_ttl: Duration,
    /// Clock skew tolerated on `exp`/`nbf`; at most 30 s.
    pub leeway: Duration,
}

/// Requests per minute, per subject.
#[derive(Clone, Debug)]
pub struct RateLimits {
    /// Auth endpoints, per client address.
    pub auth_per_ip: u32,
    /// Login attempts per account (email).
    pub login_per_account: u32,
    /// Everything else, per user (per address when anonymous).
    pub api_per_user: u32,
}

#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub jwt: JwtConfig,
    pub rate_limits: RateLimits,
    /// Largest accepted request body.
    pub body_limit: usize,
    /// Origins allowed by CORS and to open WebSockets. Empty: none.
    pub cors_origins: Vec<HeaderValue>,
    /// Prefix of every Redis key and NATS subject of this deployment.
    pub namespace: String,
    /// Take the client address from `X-Forwarded-For` (behind a proxy).
    pub trust_forwarded_for: bool,
    /// How long a retry waits for the first request with its
    /// `Idempotency-Key` to finish.
    pub idempotency_wait: Duration,
    pub realtime: RealtimeConfig,
}

/// The WebSocket endpoint's limits and clocks.
#[derive(Clone, Debug)]
pub struct RealtimeConfig {
    /// A connection must authenticate within this long.
    pub auth_timeout: Duration,
    /// Frames waiting to be written to one connection; a connection whose
    /// queue overflows is closed as a slow consumer (1013).
    pub outbox_frames: usize,
    /// Largest client message (1009 above it).
    pub max_message_bytes: usize,
    /// Largest `data` of a cursor or broadcast, serialized.
    pub ephemeral_max_bytes: usize,
    /// Cursors and broadcasts per second per connection (burst: twice that).
    pub ephemeral_per_sec: u32,
    /// How often the server pings; a connection silent for
    /// `idle_timeout` is closed.
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    /// A presence entry lives this long without a heartbeat, so the users of
    /// a gateway that died leave within it.
    pub presence_ttl: Duration,
    /// Connections one gateway holds at most (503 beyond).
    pub max_connections: usize,
}

impl Default for RealtimeConfig {
    fn default() -> Self {
        Self {
            auth_timeout: Duration::from_secs(5),
            outbox_frames: 1024,
            max_message_bytes: 64 * 1024,
            ephemeral_max_bytes: 4 * 1024,
            ephemeral_per_sec: 30,
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            presence_ttl: Duration::from_secs(30),
            max_connections: 100_000,
        }
    }
}

impl GatewayConfig {
    /// Local-development defaults around a given secret.
    pub fn with_secret(secret: Secret) -> Self {
        Self {
            jwt: JwtConfig {
                secret,
                issuer: "tandem".to_owned(),
                audience: "tandem-api".to_owned(),
                access_ttl: Duration::from_secs(15 * 60),
                leeway: Duration::from_secs(30),
            },
            rate_limits: RateLimits {
                auth_per_ip: 10,
                login_per_account: 10,
                api_per_user: 600,
            },
            body_limit: 1024 * 1024,
            cors_origins: Vec::new(),
            namespace: "tandem".to_owned(),
            trust_forwarded_for: false,
            idempotency_wait: Duration::from_secs(10),
            realtime: RealtimeConfig::default(),
        }
    }
}
