//! Realtime: `GET /api/v1/ws`, one WebSocket carrying many project
//! subscriptions (API.md, *Realtime*).
//!
//! # Layout
//! - [`route`]: the upgrade (origin check, `?token=`, frame limits).
//! - [`connection`]: one task per socket: authentication, client ops, the
//!   writer with its bounded outbox, heartbeats, expiry and shutdown.
//! - [`subscription`]: one subscribe: authorize from the membership read
//!   model, join presence, catch up from the log, go live at the seam.
//! - [`hub`]: this gateway's subscription table and fan-out.
//! - [`feed`]: the hub's inputs (JetStream's live tail, core-NATS
//!   ephemeral traffic).
//! - [`effects`]: what an event does to subscriptions (removal, roles,
//!   logout).
//! - [`presence`]: who is here, in Redis, across gateways.
//! - [`protocol`]: the wire format.
//!
//! Gateways share nothing but NATS, Redis and Postgres: any gateway can
//! serve any client, and a client that reconnects elsewhere resumes with
//! `since`.

pub mod connection;
pub mod effects;
pub mod feed;
pub mod hub;
pub mod presence;
pub mod protocol;
pub mod route;
pub mod subscription;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionManager;
use sqlx::PgPool;
use tandem_domain::envelope::BusNames;
use tandem_domain::live::{kind, Origin, PresenceChange};
use tandem_projections::hot::HotState;
use tandem_projections::positions::ReadPositions;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::config::RealtimeConfig;
use hub::{ConnId, Hub};
use presence::Presence;

/// What the realtime endpoint of one gateway shares between connections.
#[derive(Clone)]
pub struct Realtime(Arc<Inner>);

pub struct Inner {
    pub hub: Arc<Hub>,
    pub presence: Presence,
    pub hot: HotState,
    pub pool: PgPool,
    pub positions: ReadPositions,
    pub nats: async_nats::Client,
    pub names: BusNames,
    pub config: RealtimeConfig,
    /// This gateway process, for presence entries and echo suppression.
    pub gateway: Uuid,
    next_connection: AtomicU64,
    connections: AtomicUsize,
    /// Presence entries this gateway holds: project → connection → user.
    joined: Mutex<HashMap<Uuid, HashMap<ConnId, Uuid>>>,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
}

impl std::ops::Deref for Realtime {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// What [`Realtime::start`] needs.
pub struct RealtimeParts {
    pub pool: PgPool,
    pub redis: ConnectionManager,
    pub nats: async_nats::Client,
    pub names: BusNames,
    pub positions: ReadPositions,
    pub config: RealtimeConfig,
    pub shutdown: CancellationToken,
}

impl Realtime {
    /// Starts the hub's feeds and the presence heartbeat. Live delivery
    /// begins after the log's current head.
    pub async fn start(parts: RealtimeParts) -> Result<Self, sqlx::Error> {
        let head = tandem_commands::log::head(&parts.pool).await?;
        let hub = Arc::new(Hub::new(head, parts.config.outbox_frames.max(1024) * 4));
        let gateway = Uuid::new_v4();
        let realtime = Self(Arc::new(Inner {
            hub: hub.clone(),
            presence: Presence::new(
                parts.redis.clone(),
                parts.names.namespace(),
                parts.config.presence_ttl,
            ),
            hot: HotState::new(parts.redis, parts.names.namespace()),
            pool: parts.pool.clone(),
            positions: parts.positions,
            nats: parts.nats.clone(),
            names: parts.names.clone(),
            config: parts.config,
            gateway,
            next_connection: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
            joined: Mutex::new(HashMap::new()),
            shutdown: parts.shutdown.clone(),
            tracker: TaskTracker::new(),
        }));
        tokio::spawn(feed::run_events(
            hub.clone(),
            parts.nats.clone(),
            parts.names.clone(),
            parts.pool,
            parts.shutdown.clone(),
        ));
        feed::spawn_ephemeral(hub, parts.nats, parts.names, gateway, parts.shutdown).await;
        tokio::spawn(realtime.clone().keep_presence());
        Ok(realtime)
    }

    /// Waits (bounded) for every connection to have said goodbye.
    pub async fn drained(&self, timeout: Duration) {
        self.tracker.close();
        let _ = tokio::time::timeout(timeout, self.tracker.wait()).await;
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Counts a new connection, unless the gateway is full.
    fn admit(&self) -> Option<ConnId> {
        let before = self.connections.fetch_add(1, Ordering::AcqRel);
        if before >= self.config.max_connections {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        metrics::gauge!("tandem_ws_connections").increment(1.0);
        Some(self.next_connection.fetch_add(1, Ordering::Relaxed))
    }

    fn depart(&self) {
        self.connections.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("tandem_ws_connections").decrement(1.0);
    }

    fn origin(&self, connection: ConnId) -> Origin {
        Origin {
            gateway: self.gateway,
            connection,
        }
    }

    fn presence_key(&self, connection: ConnId) -> String {
        format!("{}/{connection}", self.gateway)
    }

    async fn announce(&self, project: Uuid, change: PresenceChange) {
        let subject = self.names.live_subject(project, kind::PRESENCE);
        let payload = serde_json::to_vec(&change).unwrap_or_default();
        if let Err(e) = self.nats.publish(subject, payload.into()).await {
            tracing::warn!(error = %e, "could not announce a presence change");
        }
    }

    /// Enters the user in the project's presence; returns who is here.
    pub async fn join_presence(&self, project: Uuid, user: Uuid, connection: ConnId) -> Vec<Uuid> {
        self.joined
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(project)
            .or_default()
            .insert(connection, user);
        match self
            .presence
            .join(project, user, &self.presence_key(connection))
            .await
        {
            Ok(joined) => {
                if joined.arrived {
                    let change = PresenceChange {
                        origin: Some(self.origin(connection)),
                        joined: vec![user],
                        left: Vec::new(),
                    };
                    self.announce(project, change).await;
                }
                joined.present
            }
            Err(e) => {
                tracing::warn!(error = %e, "presence unavailable (Redis); subscribing without it");
                vec![user]
            }
        }
    }

    pub async fn leave_presence(&self, project: Uuid, user: Uuid, connection: ConnId) {
        {
            let mut joined = self
                .joined
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(here) = joined.get_mut(&project) else {
                return;
            };
            if here.remove(&connection).is_none() {
                return;
            }
            if here.is_empty() {
                joined.remove(&project);
            }
        }
        match self
            .presence
            .leave(project, user, &self.presence_key(connection))
            .await
        {
            Ok(true) => {
                let change = PresenceChange {
                    origin: Some(self.origin(connection)),
                    joined: Vec::new(),
                    left: vec![user],
                };
                self.announce(project, change).await;
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not leave presence; it will expire"),
        }
    }

    /// Heartbeats this gateway's presence entries and sweeps the expired
    /// ones of the projects it serves, every third of the TTL.
    async fn keep_presence(self) {
        let period = (self.config.presence_ttl / 3).max(Duration::from_millis(100));
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let entries: HashMap<Uuid, Vec<(String, Uuid)>> = self
                .joined
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .map(|(project, here)| {
                    let entries = here
                        .iter()
                        .map(|(conn, user)| (self.presence_key(*conn), *user))
                        .collect();
                    (*project, entries)
                })
                .collect();
            match self.presence.heartbeat(&entries).await {
                Ok(back) => {
                    for (project, joined) in back {
                        let change = PresenceChange {
                            origin: None,
                            joined,
                            left: Vec::new(),
                        };
                        self.announce(project, change).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "presence heartbeat failed"),
            }
            for project in self.hub.projects() {
                match self.presence.sweep(project).await {
                    Ok(left) if !left.is_empty() => {
                        let change = PresenceChange {
                            origin: None,
                            joined: Vec::new(),
                            left,
                        };
                        self.announce(project, change).await;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "presence sweep failed"),
                }
            }
        }
    }
}
