//! [`WriteSide`]: the write side assembled over one pool, as the gateway
//! and the binary use it.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;

use crate::accounts::Accounts;
use crate::bus::CommandBus;
use crate::directory::EventStoreDirectory;
use crate::event_store::BatchedEventStore;
use crate::idempotency::IdempotencyStore;
use crate::notifications::Notifications;
use crate::passwords::PasswordHasher;
use crate::positions::{AppendNotifier, PositionWaiter};
use crate::sessions::Sessions;

#[derive(Clone, Debug)]
pub struct WriteSideConfig {
    /// How long a command waits for its events' log position.
    pub position_wait: Duration,
    /// Argon2 hashes running at once.
    pub hash_concurrency: usize,
    /// The share of time each hashing thread may hash (1..=100).
    pub hash_duty_percent: u8,
    /// Lifetime of a login session and its refresh tokens.
    pub session_ttl: Duration,
}

impl Default for WriteSideConfig {
    fn default() -> Self {
        Self {
            position_wait: Duration::from_secs(2),
            hash_concurrency: PasswordHasher::default_concurrency(),
            hash_duty_percent: crate::passwords::DEFAULT_DUTY_PERCENT,
            session_ttl: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

#[derive(Clone)]
pub struct WriteSide {
    pub pool: PgPool,
    pub bus: CommandBus,
    pub directory: Arc<EventStoreDirectory>,
    pub accounts: Accounts,
    pub sessions: Sessions,
    pub idempotency: IdempotencyStore,
    notifier: AppendNotifier,
}

impl WriteSide {
    /// Spawns the write side's background tasks (append notifier, position
    /// listener) on the current runtime; the position listener hears the
    /// sequencer through `shared` when given.
    pub async fn start(
        pool: PgPool,
        config: &WriteSideConfig,
        shared: Option<&Notifications>,
    ) -> Result<Self, sqlx::Error> {
        let notifier = AppendNotifier::spawn(pool.clone());
        let events = BatchedEventStore::new(&pool, notifier.clone());
        let directory = Arc::new(EventStoreDirectory::new(pool.clone(), &events));
        let positions =
            PositionWaiter::spawn(pool.clone(), config.position_wait, shared, &notifier).await?;
        let bus = CommandBus::new(&events, directory.clone(), positions);
        let hasher = PasswordHasher::new(config.hash_concurrency, config.hash_duty_percent);
        Ok(Self {
            accounts: Accounts::new(pool.clone(), bus.clone(), hasher),
            sessions: Sessions::new(pool.clone(), bus.clone(), config.session_ttl),
            idempotency: IdempotencyStore::new(pool.clone()),
            directory,
            bus,
            pool,
            notifier,
        })
    }

    /// The link an in-process sequencer needs to be woken by this
    /// process's appends.
    pub fn local_sequencer(&self) -> crate::positions::LocalSequencer {
        self.notifier.local()
    }
}
