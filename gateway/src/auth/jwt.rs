//! Access tokens: HS256 JWTs with every registered claim required and the
//! algorithm allow-listed, so `alg: none`, another algorithm, a missing
//! claim, a foreign issuer or audience, or an expired token are all 401.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tandem_domain::{SessionId, UserId};

use super::verified::{VerifiedTokens, Window};
use crate::config::JwtConfig;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
    /// The session (refresh-token family) this token was minted for.
    pub sid: String,
}

/// A verified access token.
#[derive(Clone, Debug)]
pub struct AccessToken {
    pub user: UserId,
    pub session: SessionId,
    pub jti: String,
    pub expires_at: u64,
}

pub struct Issued {
    pub token: String,
    pub expires_in: u64,
}

pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    config: JwtConfig,
    verified: VerifiedTokens,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl JwtKeys {
    pub fn new(config: &JwtConfig) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = config.leeway.as_secs().min(30);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        // iat, jti and sid are required by `Claims` itself (non-optional).
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(config.secret.expose()),
            decoding: DecodingKey::from_secret(config.secret.expose()),
            validation,
            config: config.clone(),
            verified: VerifiedTokens::default(),
        }
    }

    pub fn issue(&self, user: UserId, session: SessionId) -> Issued {
        let now = now_secs();
        let ttl = self.config.access_ttl.as_secs();
        let claims = Claims {
            iss: self.config.issuer.clone(),
            aud: self.config.audience.clone(),
            sub: user.to_string(),
            exp: now + ttl,
            nbf: now,
            iat: now,
            jti: uuid::Uuid::now_v7().to_string(),
            sid: session.to_string(),
        };
        let token = encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail");
        Issued {
            token,
            expires_in: ttl,
        }
    }

    /// Signature, algorithm and every claim checked; `None` otherwise.
    pub fn verify(&self, token: &str) -> Option<AccessToken> {
        let now = now_secs();
        if let Some(access) = self.verified.get(token, now) {
            return Some(access);
        }
        let data = decode::<Claims>(token, &self.decoding, &self.validation).ok()?;
        let claims = data.claims;
        let leeway = self.validation.leeway;
        // jsonwebtoken requires `iat` to exist but not to make sense: a
        // token issued in the future was not issued by us.
        if claims.iat > now + leeway {
            return None;
        }
        let access = AccessToken {
            user: claims.sub.parse().ok()?,
            session: claims.sid.parse().ok()?,
            jti: claims.jti,
            expires_at: claims.exp,
        };
        // The bounds `decode` and the `iat` check above apply, for the hits.
        let window = Window {
            from: claims.nbf.max(claims.iat).saturating_sub(leeway),
            until: claims.exp.saturating_add(leeway),
        };
        self.verified.insert(token, &access, window);
        Some(access)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Secret;

    fn config(secret: &[u8]) -> JwtConfig {
        JwtConfig {
            secret: Secret::new(secret.to_vec()),
            issuer: "tandem".into(),
            audience: "tandem-api".into(),
            access_ttl: Duration::from_secs(900),
            leeway: Duration::from_secs(30),
        }
    }

    #[test]
    fn issued_tokens_verify_and_name_their_user() {
        let keys = JwtKeys::new(&config(b"0123456789abcdef0123456789abcdef"));
        let user = UserId::generate();
        let issued = keys.issue(user, SessionId::generate());
        assert_eq!(issued.expires_in, 900);
        assert_eq!(keys.verify(&issued.token).unwrap().user, user);
    }

    #[test]
    fn tokens_issued_in_the_future_are_refused() {
        let config = config(b"0123456789abcdef0123456789abcdef");
        let keys = JwtKeys::new(&config);
        let now = now_secs();
        let claims = Claims {
            iss: "tandem".into(),
            aud: "tandem-api".into(),
            sub: UserId::generate().to_string(),
            exp: now + 3600,
            nbf: now,
            iat: now + 600,
            jti: "j".into(),
            sid: SessionId::generate().to_string(),
        };
        let key = EncodingKey::from_secret(config.secret.expose());
        let token = encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap();
        assert!(keys.verify(&token).is_none());
        assert!(keys.verify(&token).is_none(), "a refusal is not cached");
    }

    #[test]
    fn a_verified_token_verifies_again_from_the_cache_and_a_tampered_one_does_not() {
        let keys = JwtKeys::new(&config(b"0123456789abcdef0123456789abcdef"));
        let user = UserId::generate();
        let issued = keys.issue(user, SessionId::generate());
        let first = keys.verify(&issued.token).unwrap();
        let again = keys.verify(&issued.token).unwrap();
        assert_eq!((again.user, again.jti), (first.user, first.jti));
        // One changed signature character (not the last, whose low bits
        // are padding): not a hit, and refused.
        let mut bytes = issued.token.clone().into_bytes();
        let at = bytes.len() - 10;
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert!(keys.verify(&tampered).is_none());
    }

    #[test]
    fn tokens_signed_with_another_key_are_refused() {
        let keys = JwtKeys::new(&config(b"0123456789abcdef0123456789abcdef"));
        let other = JwtKeys::new(&config(b"ffffffffffffffffffffffffffffffff"));
        let issued = other.issue(UserId::generate(), SessionId::generate());
        assert!(keys.verify(&issued.token).is_none());
        assert!(keys.verify("not.a.jwt").is_none());
    }
}
