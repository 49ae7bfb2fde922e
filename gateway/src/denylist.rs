//! [`Denylist`]: this gateway's copy of the revoked access tokens and
//! sessions, so a request checks revocation without a Redis round trip.
//!
//! Redis stays the record: a revocation is `SET deny:<kind>:<id>` and then
//! a `PUBLISH` of that key on the deployment's revocations channel, and
//! the revoking gateway also adds it to its own copy at once. Every
//! gateway subscribes, and only once subscribed copies the keys already
//! in Redis (`SCAN`), so nothing revoked before or during the subscribing
//! is missed. The copy is trusted only while that subscription lives;
//! otherwise (connecting, or Redis gone) callers ask Redis per request,
//! as they would without a copy, and fail closed if it does not answer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use redis::AsyncCommands;

/// Pause before re-subscribing after the subscription broke.
const RESUBSCRIBE_AFTER: Duration = Duration::from_millis(200);

pub struct Denylist {
    /// Revoked token ids (`jti`) and session ids, by id alone, so a
    /// request's check builds no key. An entry outlives its Redis key
    /// (which lasts as long as the tokens it refuses could): refusing an
    /// expired token longer changes nothing.
    tokens: moka::sync::Cache<String, ()>,
    sessions: moka::sync::Cache<String, ()>,
    synced: AtomicBool,
    channel: String,
    /// `<namespace>:deny:`, which every deny key starts with.
    key_prefix: String,
    pattern: String,
}

/// What a deny key names: `<namespace>:deny:<kind>:<id>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revoked {
    Token,
    Session,
}

impl Revoked {
    fn kind(self) -> &'static str {
        match self {
            Self::Token => "jti",
            Self::Session => "sid",
        }
    }
}

impl Denylist {
    /// Starts following `channel` on `client`; `keep` bounds how long an
    /// entry is kept (the longest an access token lives, plus leeway).
    pub fn spawn(client: redis::Client, prefix: &str, keep: Duration) -> Arc<Self> {
        let ids = || {
            moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(keep)
                .build()
        };
        let list = Arc::new(Self {
            tokens: ids(),
            sessions: ids(),
            synced: AtomicBool::new(false),
            channel: format!("{prefix}:revocations"),
            key_prefix: format!("{prefix}:deny:"),
            pattern: format!("{prefix}:deny:*"),
        });
        let weak = Arc::downgrade(&list);
        tokio::spawn(async move {
            loop {
                let Some(list) = weak.upgrade() else { return };
                if let Err(e) = list.follow(&client).await {
                    tracing::debug!(error = %e, "revocations subscription broke");
                }
                list.synced.store(false, Ordering::Release);
                drop(list);
                tokio::time::sleep(RESUBSCRIBE_AFTER).await;
            }
        });
        list
    }

    async fn follow(&self, client: &redis::Client) -> redis::RedisResult<()> {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(&self.channel).await?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let mut existing: redis::AsyncIter<String> = conn.scan_match(&self.pattern).await?;
        while let Some(key) = existing.next_item().await {
            self.add(&key?);
        }
        drop(existing);
        drop(conn);
        self.synced.store(true, Ordering::Release);
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            if let Ok(key) = message.get_payload::<String>() {
                self.add(&key);
            }
        }
        Ok(())
    }

    /// The channel a revocation is published on.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The Redis key that records the revocation of `id`.
    pub fn key(&self, revoked: Revoked, id: &str) -> String {
        format!("{}{}:{id}", self.key_prefix, revoked.kind())
    }

    /// Records the revocation `key` names (made here, read from Redis or
    /// heard); a key of another shape is ignored.
    pub fn add(&self, key: &str) {
        let named = key
            .strip_prefix(&self.key_prefix)
            .and_then(|rest| rest.split_once(':'));
        match named {
            Some(("jti", id)) => self.tokens.insert(id.to_owned(), ()),
            Some(("sid", id)) => self.sessions.insert(id.to_owned(), ()),
            _ => tracing::debug!(key, "not a deny key; ignored"),
        }
    }

    /// Whether the token `jti` or its session `sid` is revoked, if the
    /// copy can say; `None`: ask Redis.
    pub fn check(&self, jti: &str, sid: &str) -> Option<bool> {
        self.synced
            .load(Ordering::Acquire)
            .then(|| self.tokens.contains_key(jti) || self.sessions.contains_key(sid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn revocations_are_kept_by_kind_and_id_and_other_keys_are_ignored() {
        // Nothing listens there, and on this single-threaded runtime the
        // following task never runs anyway (the test does not yield): the
        // copy stays unsynced until the test says otherwise.
        let client = redis::Client::open("redis://127.0.0.1:1").unwrap();
        let list = Denylist::spawn(client, "ns", Duration::from_secs(60));
        list.add(&list.key(Revoked::Token, "t-1"));
        list.add(&list.key(Revoked::Session, "s:1"));
        list.add("other:deny:jti:t-2");
        list.add("ns:deny:xyz:t-3");
        assert_eq!(list.check("t-1", "none"), None, "unsynced: ask Redis");
        list.synced.store(true, Ordering::Release);
        assert_eq!(list.check("t-1", "none"), Some(true));
        assert_eq!(list.check("none", "s:1"), Some(true), "ids may hold ':'");
        assert_eq!(list.check("s:1", "t-1"), Some(false), "kinds do not mix");
        assert_eq!(
            list.check("t-2", "t-3"),
            Some(false),
            "foreign keys ignored"
        );
        assert_eq!(list.key(Revoked::Token, "t-1"), "ns:deny:jti:t-1");
    }
}
