//! Login sessions and their refresh-token families.
//!
//! A refresh token is 256 random bits, shown to the client once and stored
//! only as its SHA-256. Each refresh spends the presented token and issues
//! the next one of the same family (rotation). Presenting a spent token
//! means two parties hold the family — one of them a thief — so the whole
//! family is revoked and the reuse is recorded as an event. Logins and
//! logouts are events too (the `Session` aggregate).

use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use sqlx::PgPool;
use tandem_domain::session::{Session, SessionCommand, SessionError};
use tandem_domain::{SessionId, UserId};

use crate::bus::{CommandBus, CommandContext, CommandError, Committed};

/// A freshly issued refresh token.
#[derive(Clone, Debug)]
pub struct IssuedRefresh {
    pub session_id: SessionId,
    pub user_id: UserId,
    /// The opaque token; only its hash is kept.
    pub token: String,
    pub expires_at: DateTime<Utc>,
    /// Log position of the session's latest event (`UserLoggedIn` for a
    /// new session); `None` for a rotation, which records nothing.
    pub position: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionStoreError {
    /// Unknown, expired, revoked, or someone else's token.
    #[error("invalid refresh token")]
    Invalid,
    /// A spent token came back; its family is now revoked.
    #[error("refresh token reused; session revoked")]
    Reused {
        session_id: SessionId,
        user_id: UserId,
    },
    #[error(transparent)]
    Command(#[from] CommandError<SessionError>),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

#[derive(Clone)]
pub struct Sessions {
    pool: PgPool,
    bus: CommandBus,
    ttl: Duration,
}

fn new_token() -> (String, Vec<u8>) {
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let hash = token_hash(&token);
    (token, hash)
}

fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

impl Sessions {
    /// `ttl`: how long a session (and each of its refresh tokens) lives.
    pub fn new(pool: PgPool, bus: CommandBus, ttl: Duration) -> Self {
        Self { pool, bus, ttl }
    }

    fn expiry(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::days(30))
    }

    /// Starts a session for an authenticated user: its first refresh token,
    /// and `UserLoggedIn` in the log.
    pub async fn start(
        &self,
        ctx: &CommandContext,
        user: UserId,
    ) -> Result<IssuedRefresh, SessionStoreError> {
        let session = SessionId::generate();
        let expires_at = self.expiry();
        let (token, hash) = new_token();
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO sessions (session_id, user_id, expires_at) VALUES ($1, $2, $3)")
            .bind(session.0)
            .bind(user.0)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, session_id, expires_at) VALUES ($1, $2, $3)",
        )
        .bind(&hash)
        .bind(session.0)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let command = SessionCommand::RecordLogin {
            session_id: session,
            user,
        };
        let recorded = self
            .bus
            .execute_new::<Session>(&session.to_string(), command, &ctx.with_actor(user))
            .await;
        let committed = match recorded {
            Ok(committed) => committed,
            Err(e) => {
                // No event, no session: a login the log doesn't know must not work.
                self.revoke(session, "login_not_recorded").await?;
                return Err(e.into());
            }
        };
        Ok(IssuedRefresh {
            session_id: session,
            user_id: user,
            token,
            expires_at,
            position: committed.position,
        })
    }

    /// Spends `token` and issues the next of its family.
    pub async fn rotate(
        &self,
        ctx: &CommandContext,
        token: &str,
    ) -> Result<IssuedRefresh, SessionStoreError> {
        let hash = token_hash(token);
        let mut tx = self.pool.begin().await?;
        let spent: Option<(uuid::Uuid, uuid::Uuid)> = sqlx::query_as(
            "UPDATE refresh_tokens rt SET spent_at = now()
               FROM sessions s
              WHERE rt.token_hash = $1 AND rt.spent_at IS NULL AND rt.expires_at > now()
                AND s.session_id = rt.session_id AND s.revoked_at IS NULL AND s.expires_at > now()
             RETURNING rt.session_id, s.user_id",
        )
        .bind(&hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((session, user)) = spent else {
            tx.rollback().await?;
            return Err(self.refused(ctx, &hash).await?);
        };
        let expires_at = self.expiry();
        let (next, next_hash) = new_token();
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, session_id, expires_at) VALUES ($1, $2, $3)",
        )
        .bind(&next_hash)
        .bind(session)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(IssuedRefresh {
            session_id: SessionId(session),
            user_id: UserId(user),
            token: next,
            expires_at,
            position: None,
        })
    }

    /// Why a refresh was refused; revokes the family on reuse.
    async fn refused(
        &self,
        ctx: &CommandContext,
        hash: &[u8],
    ) -> Result<SessionStoreError, SessionStoreError> {
        let known: Option<(uuid::Uuid, uuid::Uuid, bool)> = sqlx::query_as(
            "SELECT rt.session_id, s.user_id, rt.spent_at IS NOT NULL
               FROM refresh_tokens rt JOIN sessions s ON s.session_id = rt.session_id
              WHERE rt.token_hash = $1",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some((session, user, spent)) = known else {
            return Ok(SessionStoreError::Invalid);
        };
        if !spent {
            return Ok(SessionStoreError::Invalid);
        }
        let session = SessionId(session);
        let user = UserId(user);
        if self.revoke(session, "refresh_token_reuse").await? {
            tracing::warn!(%session, %user, "refresh token reuse: family revoked");
            self.bus
                .execute::<Session>(
                    &session.to_string(),
                    SessionCommand::RecordRefreshReuse,
                    &ctx.with_actor(user),
                    None,
                )
                .await?;
        }
        Ok(SessionStoreError::Reused {
            session_id: session,
            user_id: user,
        })
    }

    /// Ends the session that `token` (spent or not) belongs to, if it is
    /// `actor`'s; records `UserLoggedOut`.
    pub async fn end(
        &self,
        ctx: &CommandContext,
        actor: UserId,
        token: &str,
    ) -> Result<(SessionId, Committed), SessionStoreError> {
        let owner: Option<(uuid::Uuid, uuid::Uuid)> = sqlx::query_as(
            "SELECT rt.session_id, s.user_id
               FROM refresh_tokens rt JOIN sessions s ON s.session_id = rt.session_id
              WHERE rt.token_hash = $1",
        )
        .bind(token_hash(token))
        .fetch_optional(&self.pool)
        .await?;
        let Some((session, _)) = owner.filter(|(_, user)| *user == actor.0) else {
            return Err(SessionStoreError::Invalid);
        };
        let session = SessionId(session);
        self.revoke(session, "logout").await?;
        let committed = self
            .bus
            .execute::<Session>(
                &session.to_string(),
                SessionCommand::RecordLogout { actor },
                ctx,
                None,
            )
            .await?;
        Ok((session, committed))
    }

    /// True if this call revoked it (it was live before).
    async fn revoke(&self, session: SessionId, reason: &str) -> Result<bool, sqlx::Error> {
        let n = sqlx::query(
            "UPDATE sessions SET revoked_at = now(), revoke_reason = $2
              WHERE session_id = $1 AND revoked_at IS NULL",
        )
        .bind(session.0)
        .bind(reason)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Whether the session can still mint tokens.
    pub async fn is_live(&self, session: SessionId) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sessions
              WHERE session_id = $1 AND revoked_at IS NULL AND expires_at > now())",
        )
        .bind(session.0)
        .fetch_one(&self.pool)
        .await
    }
}
