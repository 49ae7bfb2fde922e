-- The pipeline: the relay's checkpoint, the projections' checkpoints and
-- the read models (schema `read`, documented in docs/analytics.md).
--
-- Read-model tables hold only what events say: every time in them is an
-- event's `recorded_at`, never now(), so a replay from position 0 rebuilds
-- them byte for byte (what `tandem replay` and the convergence test check).

CREATE TABLE relay_checkpoints
(
    stream     text PRIMARY KEY,
    -- Last position the events stream acknowledged.
    position   bigint      NOT NULL CHECK (position >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE projection_checkpoints
(
    projection text PRIMARY KEY,
    -- Last position applied to the projection's tables, written in the
    -- same transaction as the changes it covers.
    position   bigint      NOT NULL CHECK (position >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE SCHEMA read;

-- users --------------------------------------------------------------------

CREATE TABLE read.users
(
    user_id       uuid PRIMARY KEY,
    display_name  text        NOT NULL,
    registered_at timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    version       bigint      NOT NULL
);

-- projects, members, workspaces ----------------------------------------------

CREATE TABLE read.projects
(
    project_id   uuid PRIMARY KEY,
    name         text        NOT NULL,
    description  text        NOT NULL,
    owner_id     uuid        NOT NULL,
    archived     boolean     NOT NULL DEFAULT false,
    archived_at  timestamptz,
    member_count integer     NOT NULL,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    -- The project aggregate's version (its ETag).
    version      bigint      NOT NULL
);

CREATE TABLE read.members
(
    project_id uuid        NOT NULL,
    user_id    uuid        NOT NULL,
    role       text        NOT NULL CHECK (role IN ('owner', 'collaborator', 'viewer')),
    joined_at  timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (project_id, user_id)
);

-- "My projects", newest first: GET /projects pages along this index.
CREATE INDEX members_by_user ON read.members (user_id, project_id DESC);

CREATE TABLE read.workspaces
(
    workspace_id uuid PRIMARY KEY,
    project_id   uuid        NOT NULL,
    name         text        NOT NULL,
    created_by   uuid        NOT NULL,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL
);

CREATE INDEX workspaces_by_project ON read.workspaces (project_id, workspace_id);

-- files ----------------------------------------------------------------------

CREATE TABLE read.files
(
    workspace_id uuid        NOT NULL,
    path         text        NOT NULL,
    file_id      uuid        NOT NULL UNIQUE,
    project_id   uuid        NOT NULL,
    -- The file aggregate's version of the current content.
    version      bigint      NOT NULL,
    size_bytes   bigint      NOT NULL,
    updated_by   uuid        NOT NULL,
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, path)
);

-- Every saved content; a deleted file keeps its history here.
CREATE TABLE read.file_versions
(
    file_id      uuid        NOT NULL,
    version      bigint      NOT NULL,
    workspace_id uuid        NOT NULL,
    path         text        NOT NULL,
    project_id   uuid        NOT NULL,
    content      text        NOT NULL,
    size_bytes   bigint      NOT NULL,
    saved_by     uuid        NOT NULL,
    saved_at     timestamptz NOT NULL,
    PRIMARY KEY (file_id, version)
);

-- jobs -----------------------------------------------------------------------

CREATE TABLE read.jobs
(
    job_id        uuid PRIMARY KEY,
    project_id    uuid        NOT NULL,
    submitted_by  uuid        NOT NULL,
    language      text        NOT NULL,
    status        text        NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'dead')),
    workspace_id  uuid,
    path          text,
    timeout_ms    bigint      NOT NULL,
    max_attempts  integer     NOT NULL,
    attempts      integer     NOT NULL DEFAULT 0,
    exit_code     integer,
    stdout        text,
    stderr        text,
    duration_ms   bigint,
    truncated     boolean,
    reason        text,
    retry_at      timestamptz,
    submitted_at  timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    finished_at   timestamptz,
    version       bigint      NOT NULL
);

CREATE INDEX jobs_by_project ON read.jobs (project_id, job_id DESC);
CREATE INDEX jobs_by_project_status ON read.jobs (project_id, status, job_id DESC);

CREATE TABLE read.job_attempts
(
    job_id      uuid        NOT NULL,
    attempt     integer     NOT NULL,
    worker      text        NOT NULL,
    status      text        NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled')),
    exit_code   integer,
    reason      text,
    duration_ms bigint,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz,
    PRIMARY KEY (job_id, attempt)
);

-- activity -------------------------------------------------------------------

CREATE TABLE read.activity_daily
(
    project_id uuid   NOT NULL,
    day        date   NOT NULL,
    event_type text   NOT NULL,
    -- The nil UUID for events no user caused (the executor's reports).
    actor_id   uuid   NOT NULL,
    events     bigint NOT NULL,
    PRIMARY KEY (project_id, day, event_type, actor_id)
);

CREATE INDEX activity_by_day ON read.activity_daily (day, project_id);

-- A projection's checkpoint moves with its tables: NOTIFY after the commit
-- tells gateways waiting on `min_position` (payload "name position").
CREATE FUNCTION tandem_projection_advanced() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tandem_projected', NEW.projection || ' ' || NEW.position);
    RETURN NULL;
END
$$;

CREATE TRIGGER projection_checkpoints_notify
    AFTER INSERT OR UPDATE ON projection_checkpoints
    FOR EACH ROW EXECUTE FUNCTION tandem_projection_advanced();

-- Moves a projection's checkpoint from `from_position` to `to_position`,
-- refusing (and so rolling back the batch it ends) when the checkpoint is
-- not where the batch started: a second applier, or a redelivery.
CREATE FUNCTION tandem_advance_projection(name text, from_position bigint, to_position bigint)
    RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    current bigint;
BEGIN
    INSERT INTO projection_checkpoints (projection, position) VALUES (name, 0)
    ON CONFLICT (projection) DO NOTHING;
    SELECT c.position INTO current FROM projection_checkpoints c WHERE c.projection = name FOR UPDATE;
    IF current <> from_position THEN
        RAISE EXCEPTION 'projection % is at %, not %', name, current, from_position
            USING ERRCODE = 'T0001';
    END IF;
    UPDATE projection_checkpoints c SET position = to_position, updated_at = now()
    WHERE c.projection = name;
END
$$;
