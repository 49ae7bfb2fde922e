-- Write-side state that must not travel in events: credentials, refresh
-- tokens, idempotency records, and the workspace → project pointer.

-- One row per email. Inserted *before* the UserRegistered event (the unique
-- index settles registration races); `registered` flips once the event is
-- in the log, and only registered accounts can log in.
CREATE TABLE accounts
(
    user_id          uuid PRIMARY KEY,
    email            text        NOT NULL,
    email_normalized text        NOT NULL UNIQUE,
    password_hash    text        NOT NULL,
    display_name     text        NOT NULL,
    registered       boolean     NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now()
);

-- A login session = one refresh-token family.
CREATE TABLE sessions
(
    session_id    uuid PRIMARY KEY,
    user_id       uuid        NOT NULL REFERENCES accounts (user_id),
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    revoked_at    timestamptz,
    revoke_reason text
);

CREATE INDEX sessions_user_idx ON sessions (user_id);

-- Refresh tokens are opaque; only their SHA-256 is stored.
CREATE TABLE refresh_tokens
(
    token_hash bytea PRIMARY KEY,
    session_id uuid        NOT NULL REFERENCES sessions (session_id),
    issued_at  timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    spent_at   timestamptz
);

CREATE INDEX refresh_tokens_session_idx ON refresh_tokens (session_id);

-- Idempotency-Key records. `status IS NULL` while the first request runs.
CREATE TABLE idempotency_keys
(
    scope        text        NOT NULL,
    key          text        NOT NULL,
    request_hash bytea       NOT NULL,
    status       smallint,
    headers      jsonb,
    body         bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);

CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

-- Which project aggregate to ask about a workspace. Written before the
-- WorkspaceCreated command; the project aggregate stays the authority (a
-- pointer to a project that never created the workspace resolves to
-- "not found").
CREATE TABLE workspace_directory
(
    workspace_id uuid PRIMARY KEY,
    project_id   uuid NOT NULL
);
