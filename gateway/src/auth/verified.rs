//! [`VerifiedTokens`]: access tokens this gateway has already verified, so
//! a client's next request with the same token skips the signature check
//! and the claims' decoding (the better part of an authenticated cached
//! read). A hit is the whole token compared byte for byte, never a hash of
//! it, and its time claims are checked again at every hit, so a cached
//! token expires exactly when a decoded one would. Revocation is not
//! cached here: the denylist is asked on every request regardless.
//!
//! Bounded by moka, like the gateway's other caches: at most
//! [`CAPACITY`] tokens; one evicted costs its next request a full
//! verification.

use super::jwt::AccessToken;

const CAPACITY: u64 = 16_384;

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

pub struct VerifiedTokens {
    tokens: moka::sync::Cache<Box<str>, (AccessToken, Window)>,
}

impl Default for VerifiedTokens {
    fn default() -> Self {
        Self {
            tokens: moka::sync::Cache::new(CAPACITY),
        }
    }
}

impl VerifiedTokens {
    /// The token's verified claims, when it was verified before and is
    /// inside its validity window at `now`.
    pub fn get(&self, token: &str, now: u64) -> Option<AccessToken> {
        let (access, window) = self.tokens.get(token)?;
        window.contains(now).then_some(access)
    }

    /// Remembers a token that passed full verification.
    pub fn insert(&self, token: &str, access: &AccessToken, window: Window) {
        self.tokens.insert(token.into(), (access.clone(), window));
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
        for n in 0..CAPACITY * 3 {
            cache.insert(&format!("token-{n}"), &access(), window);
        }
        cache.tokens.run_pending_tasks();
        assert!(cache.tokens.entry_count() <= CAPACITY);
    }
}
