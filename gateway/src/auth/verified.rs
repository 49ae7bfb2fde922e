//! [`VerifiedTokens`]: access tokens this gateway has already verified, so
//! a client's next request with the same token skips the signature check
//! and the claims' decoding (the better part of an authenticated cached
//! read). A hit is the whole token compared byte for byte, never a hash of
//! it, and its time claims are checked again at every hit, so a cached
//! token expires exactly when a decoded one would. Revocation is not
//! cached here: the denylist is asked on every request regardless.
//!
//! Bounded: 16 shards of at most [`SHARD_CAPACITY`] tokens; a full shard
//! is emptied and refilled by the requests that follow (a token costs at
//! most one extra full verification per eviction).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

use super::jwt::AccessToken;

const SHARDS: usize = 16;
const SHARD_CAPACITY: usize = 1024;

/// When a verified token is valid, in Unix seconds, leeway applied.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// `nbf` and `iat`, whichever is later, minus the leeway.
    pub from: u64,
    /// `exp` plus the leeway.
    pub until: u64,
}

impl Window {
    fn contains(self, now: u64) -> bool {
        self.from <= now && now <= self.until
    }
}

/// Tokens (the whole string) to what their verification found.
type Shard = Mutex<HashMap<Box<str>, (AccessToken, Window)>>;

pub struct VerifiedTokens {
    hasher: RandomState,
    shards: Vec<Shard>,
}

impl Default for VerifiedTokens {
    fn default() -> Self {
        Self {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl VerifiedTokens {
    fn shard(&self, token: &str) -> &Shard {
        let n = self.hasher.hash_one(token) as usize % SHARDS;
        &self.shards[n]
    }

    /// The token's verified claims, when it was verified before and is
    /// inside its validity window at `now`.
    pub fn get(&self, token: &str, now: u64) -> Option<AccessToken> {
        let shard = self.shard(token).lock().expect("token cache lock");
        let (access, window) = shard.get(token)?;
        window.contains(now).then(|| access.clone())
    }

    /// Remembers a token that passed full verification.
    pub fn insert(&self, token: &str, access: &AccessToken, window: Window) {
        let mut shard = self.shard(token).lock().expect("token cache lock");
        if shard.len() >= SHARD_CAPACITY {
            shard.clear();
        }
        shard.insert(token.into(), (access.clone(), window));
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().expect("token cache lock").len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_domain::{SessionId, UserId};

    fn access() -> AccessToken {
        AccessToken {
            user: UserId::generate(),
            session: SessionId::generate(),
            jti: "j".into(),
            expires_at: 200,
        }
    }

    #[test]
    fn hits_only_the_same_token_inside_its_window() {
        let cache = VerifiedTokens::default();
        let window = Window {
            from: 100,
            until: 230,
        };
        cache.insert("a.b.c", &access(), window);
        assert!(cache.get("a.b.c", 150).is_some());
        assert!(cache.get("a.b.c", 230).is_some());
        assert!(cache.get("a.b.c", 231).is_none(), "expired");
        assert!(cache.get("a.b.c", 99).is_none(), "not yet valid");
        assert!(cache.get("a.b.d", 150).is_none(), "another token");
        assert!(cache.get("a.b.", 150).is_none(), "a prefix");
    }

    #[test]
    fn stays_bounded() {
        let cache = VerifiedTokens::default();
        let window = Window { from: 0, until: 1 };
        for n in 0..SHARDS * SHARD_CAPACITY * 3 {
            cache.insert(&format!("token-{n}"), &access(), window);
        }
        assert!(cache.remembered() <= SHARDS * SHARD_CAPACITY);
    }
}
