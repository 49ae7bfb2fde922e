//! [`Notifications`]: one `LISTEN` connection per process, shared by every
//! role that waits for a Postgres notification (the sequencer, the position
//! waiter, the relay, the read positions).
//!
//! Why one: at every commit that notifies, Postgres signals *every*
//! backend of the database that listens, on whatever channel, and each
//! signalled backend wakes, reads the notification queue and forwards what
//! its session listens to. Four roles with a connection each cost four
//! wake-ups per notification in Postgres and four sockets to read here;
//! one connection listening on every channel costs one.
//!
//! A subscriber hears the payloads of its channel sent after it
//! subscribed, in order. It hears [`Notice::Missed`] when some may have
//! gone past it — the connection was lost and re-made, or it fell more than
//! [`BACKLOG`] behind — and must then look for itself (every role has a
//! fallback poll for exactly this).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::{broadcast, oneshot};

/// Notifications a subscriber may lag behind before it hears `Missed`.
pub const BACKLOG: usize = 4096;

/// What a subscriber hears.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// One notification's payload.
    Payload(Arc<str>),
    /// Notifications may have been lost: look in the database.
    Missed,
}

/// A cheap handle; the listening task ends when the last clone is dropped.
#[derive(Clone)]
pub struct Notifications {
    channels: Arc<HashMap<&'static str, broadcast::Sender<Notice>>>,
    _alive: Arc<oneshot::Sender<()>>,
}

/// One role's end of one channel.
pub struct Subscription {
    heard: broadcast::Receiver<Notice>,
    /// A listener made for this subscription alone, kept as long as it.
    _own: Option<Notifications>,
}

impl Subscription {
    /// The next notice; waits forever once the listening task is gone
    /// (the process is shutting down), like a channel nobody notifies.
    pub async fn recv(&mut self) -> Notice {
        match self.heard.recv().await {
            Ok(notice) => notice,
            Err(broadcast::error::RecvError::Lagged(_)) => Notice::Missed,
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }

    /// A notice that has already arrived, without waiting.
    pub fn try_recv(&mut self) -> Option<Notice> {
        match self.heard.try_recv() {
            Ok(notice) => Some(notice),
            Err(broadcast::error::TryRecvError::Lagged(_)) => Some(Notice::Missed),
            Err(_) => None,
        }
    }
}

impl Notifications {
    /// Listens on `channels` over one connection of `pool`'s database.
    /// Fails if the first connection cannot be made; later losses are
    /// reconnected in the background (with `Missed` to every subscriber).
    pub async fn listen(pool: &PgPool, channels: &[&'static str]) -> Result<Self, sqlx::Error> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen_all(channels.iter().copied()).await?;
        let senders: HashMap<_, _> = channels
            .iter()
            .map(|c| (*c, broadcast::channel(BACKLOG).0))
            .collect();
        let channels = Arc::new(senders);
        let (alive, dropped) = oneshot::channel();
        tokio::spawn(forward(listener, channels.clone(), dropped));
        Ok(Self {
            channels,
            _alive: Arc::new(alive),
        })
    }

    /// Subscribes to `channel`, which must be one this was made to listen
    /// on.
    pub fn subscribe(&self, channel: &str) -> Subscription {
        let sender = self
            .channels
            .get(channel)
            .unwrap_or_else(|| panic!("not listening on {channel}"));
        Subscription {
            heard: sender.subscribe(),
            _own: None,
        }
    }

    /// Subscribes to `channel` through `shared`, or, without it, through a
    /// listener of its own that lives as long as the subscription (a role
    /// running outside the stack, as tools and tests run them).
    pub async fn subscribe_to(
        shared: Option<&Notifications>,
        pool: &PgPool,
        channel: &'static str,
    ) -> Result<Subscription, sqlx::Error> {
        if let Some(shared) = shared {
            return Ok(shared.subscribe(channel));
        }
        let own = Self::listen(pool, &[channel]).await?;
        let mut subscription = own.subscribe(channel);
        subscription._own = Some(own);
        Ok(subscription)
    }
}

fn tell_all(channels: &HashMap<&'static str, broadcast::Sender<Notice>>, notice: &Notice) {
    for sender in channels.values() {
        let _ = sender.send(notice.clone());
    }
}

/// Reads the connection until every handle is gone. `PgListener`
/// reconnects and listens again by itself on the call after a loss.
async fn forward(
    mut listener: PgListener,
    channels: Arc<HashMap<&'static str, broadcast::Sender<Notice>>>,
    mut dropped: oneshot::Receiver<()>,
) {
    loop {
        let next = tokio::select! {
            next = listener.try_recv() => next,
            _ = &mut dropped => return,
        };
        match next {
            Ok(Some(n)) => {
                if let Some(sender) = channels.get(n.channel()) {
                    let _ = sender.send(Notice::Payload(n.payload().into()));
                }
            }
            // Lost; the next call reconnects. Whatever was sent meanwhile
            // is gone.
            Ok(None) => tell_all(&channels, &Notice::Missed),
            Err(sqlx::Error::PoolClosed) => return,
            Err(e) => {
                tracing::warn!(error = %e, "the notification listener lost its connection");
                tell_all(&channels, &Notice::Missed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
