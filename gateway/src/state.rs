//! [`AppState`]: what every handler shares.

use std::ops::Deref;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tandem_commands::WriteSide;

use crate::auth::jwt::JwtKeys;
use crate::config::GatewayConfig;
use crate::read::ReadSide;
use crate::realtime::Realtime;
use crate::redis_keys::RedisState;

pub struct Shared {
    pub write: WriteSide,
    pub read: ReadSide,
    pub realtime: Realtime,
    pub redis: RedisState,
    pub nats: async_nats::Client,
    pub jwt: JwtKeys,
    pub config: GatewayConfig,
    pub metrics: PrometheusHandle,
}

#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}
