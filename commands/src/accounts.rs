//! Accounts: registration with race-free, case-insensitive email
//! uniqueness, password checks, and the profile behind `/me`.
//!
//! Registration reserves the email first (a unique index settles races:
//! of 32 concurrent registrations exactly one inserts), then hashes, then
//! appends `UserRegistered`, then marks the account registered. A crash in
//! between leaves an unregistered reservation that cannot log in; the next
//! registration of that email heals it (if the event made it into the log)
//! or takes it over (if it is stale and the event never did).

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tandem_domain::user::{User, UserCommand, UserError};
use tandem_domain::values::{DisplayName, Email, Password};
use tandem_domain::UserId;

use crate::bus::{CommandBus, CommandContext, CommandError, Committed};
use crate::passwords::{Admission, HashError, PasswordHasher};

/// A reservation this old whose `UserRegistered` never reached the log is
/// abandoned (its registering request died).
const STALE_RESERVATION_SECS: i64 = 60;

/// Stored instead of a hash while a reservation is being completed; never
/// a valid PHC string, so it can never verify.
const PENDING_HASH: &str = "!pending";

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Profile {
    pub user_id: uuid::Uuid,
    pub email: String,
    pub display_name: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("email already registered")]
    EmailTaken,
    #[error(transparent)]
    Command(#[from] CommandError<UserError>),
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Unknown email and wrong password alike.
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

#[derive(Clone)]
pub struct Accounts {
    pool: PgPool,
    bus: CommandBus,
    hasher: PasswordHasher,
}

impl Accounts {
    pub fn new(pool: PgPool, bus: CommandBus, hasher: PasswordHasher) -> Self {
        Self { pool, bus, hasher }
    }

    /// A turn at the password hashers, to hold from before a login's or a
    /// registration's other work until its hash is done
    /// ([`PasswordHasher::admit`]).
    pub async fn admit(&self) -> Admission {
        self.hasher.admit().await
    }

    pub async fn register(
        &self,
        ctx: &CommandContext,
        email: Email,
        password: Password,
        display_name: DisplayName,
    ) -> Result<(Profile, Committed), RegisterError> {
        let user = UserId::generate();
        self.reserve(user, &email, &display_name).await?;
        let result = self
            .complete_registration(ctx, user, email, password, display_name)
            .await;
        if result.is_err() {
            let released =
                sqlx::query("DELETE FROM accounts WHERE user_id = $1 AND NOT registered")
                    .bind(user.0)
                    .execute(&self.pool)
                    .await;
            if let Err(e) = released {
                tracing::warn!(error = %e, %user, "could not release an email reservation");
            }
        }
        result
    }

    async fn complete_registration(
        &self,
        ctx: &CommandContext,
        user: UserId,
        email: Email,
        password: Password,
        display_name: DisplayName,
    ) -> Result<(Profile, Committed), RegisterError> {
        let hash = self.hasher.hash(password).await?;
        sqlx::query("UPDATE accounts SET password_hash = $2 WHERE user_id = $1")
            .bind(user.0)
            .bind(&hash)
            .execute(&self.pool)
            .await?;
        let command = UserCommand::Register {
            user_id: user,
            email,
            display_name,
        };
        let committed = self
            .bus
            .execute_new::<User>(&user.to_string(), command, &ctx.with_actor(user))
            .await?;
        let profile = sqlx::query_as(
            "UPDATE accounts SET registered = true WHERE user_id = $1
             RETURNING user_id, email, display_name, created_at",
        )
        .bind(user.0)
        .fetch_one(&self.pool)
        .await?;
        Ok((profile, committed))
    }

    /// Claims the email for `user`, or says why it can't.
    async fn reserve(
        &self,
        user: UserId,
        email: &Email,
        display_name: &DisplayName,
    ) -> Result<(), RegisterError> {
        for _ in 0..2 {
            let inserted = sqlx::query(
                "INSERT INTO accounts (user_id, email, email_normalized, password_hash, display_name)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (email_normalized) DO NOTHING",
            )
            .bind(user.0)
            .bind(email.as_str())
            .bind(email.normalized())
            .bind(PENDING_HASH)
            .bind(display_name.as_str())
            .execute(&self.pool)
            .await?
            .rows_affected();
            if inserted == 1 {
                return Ok(());
            }
            if !self.reclaim_abandoned(&email.normalized()).await? {
                return Err(RegisterError::EmailTaken);
            }
        }
        Err(RegisterError::EmailTaken)
    }

    /// Looks at the reservation holding `normalized`: heals it if its user
    /// is in the log, deletes it if it is abandoned. True when the email is
    /// free again.
    async fn reclaim_abandoned(&self, normalized: &str) -> Result<bool, sqlx::Error> {
        let holder: Option<(uuid::Uuid, bool, bool)> = sqlx::query_as(
            "SELECT user_id, registered, created_at < now() - make_interval(secs => $2)
               FROM accounts WHERE email_normalized = $1",
        )
        .bind(normalized)
        .bind(STALE_RESERVATION_SECS as f64)
        .fetch_optional(&self.pool)
        .await?;
        let Some((holder, registered, stale)) = holder else {
            return Ok(true);
        };
        if registered {
            return Ok(false);
        }
        if self.user_in_log(holder).await? {
            sqlx::query("UPDATE accounts SET registered = true WHERE user_id = $1")
                .bind(holder)
                .execute(&self.pool)
                .await?;
            return Ok(false);
        }
        if !stale {
            // Another registration of this email is in flight right now.
            return Ok(false);
        }
        sqlx::query("DELETE FROM accounts WHERE user_id = $1 AND NOT registered")
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(true)
    }

    async fn user_in_log(&self, user: uuid::Uuid) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM events WHERE aggregate_type = 'User' AND aggregate_id = $1)",
        )
        .bind(user.to_string())
        .fetch_one(&self.pool)
        .await
    }

    /// The user behind `email` and `password`; any mismatch (including an
    /// unknown or malformed email) is `InvalidCredentials` after the same
    /// Argon2 work.
    pub async fn authenticate(&self, email: &str, password: String) -> Result<UserId, LoginError> {
        let normalized = email.trim().to_lowercase();
        let account: Option<(uuid::Uuid, String)> = sqlx::query_as(
            "SELECT user_id, password_hash FROM accounts WHERE email_normalized = $1 AND registered",
        )
        .bind(&normalized)
        .fetch_optional(&self.pool)
        .await?;
        let (user, stored) = match account {
            Some((user, hash)) => (Some(user), Some(hash)),
            None => (None, None),
        };
        let verified = self.hasher.verify(password, stored).await?;
        match user {
            Some(user) if verified => Ok(UserId(user)),
            Some(_) | None => Err(LoginError::InvalidCredentials),
        }
    }

    pub async fn profile(&self, user: UserId) -> Result<Option<Profile>, sqlx::Error> {
        sqlx::query_as(
            "SELECT user_id, email, display_name, created_at FROM accounts
              WHERE user_id = $1 AND registered",
        )
        .bind(user.0)
        .fetch_optional(&self.pool)
        .await
    }

    /// A registered user by email (case-insensitive), for invitations.
    pub async fn find_by_email(&self, email: &Email) -> Result<Option<UserId>, sqlx::Error> {
        let id: Option<uuid::Uuid> = sqlx::query_scalar(
            "SELECT user_id FROM accounts WHERE email_normalized = $1 AND registered",
        )
        .bind(email.normalized())
        .fetch_optional(&self.pool)
        .await?;
        Ok(id.map(UserId))
    }

    pub async fn exists(&self, user: UserId) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM accounts WHERE user_id = $1 AND registered)",
        )
        .bind(user.0)
        .fetch_one(&self.pool)
        .await
    }

    pub async fn update_display_name(
        &self,
        ctx: &CommandContext,
        user: UserId,
        display_name: DisplayName,
    ) -> Result<(Profile, Committed), RegisterError> {
        let command = UserCommand::UpdateDisplayName {
            actor: user,
            display_name: display_name.clone(),
        };
        let committed = self
            .bus
            .execute::<User>(&user.to_string(), command, ctx, None)
            .await?;
        let profile = sqlx::query_as(
            "UPDATE accounts SET display_name = $2 WHERE user_id = $1
             RETURNING user_id, email, display_name, created_at",
        )
        .bind(user.0)
        .bind(display_name.as_str())
        .fetch_one(&self.pool)
        .await?;
        Ok((profile, committed))
    }
}
