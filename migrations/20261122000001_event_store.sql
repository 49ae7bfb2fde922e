-- The log of record: postgres-es's `events` table, plus what the log needs.
-- postgres-es inserts with an explicit column list, so the extra columns
-- below are filled by their defaults and generated expressions.

-- RFC 9562 UUIDv7 (time-ordered), for event ids. Postgres 15 has no built-in.
CREATE FUNCTION tandem_uuid_v7() RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    SELECT encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6),
            52, 1), 53, 1),
        'hex')::uuid
$$;

CREATE TABLE events
(
    aggregate_type text                         NOT NULL,
    aggregate_id   text                         NOT NULL,
    sequence       bigint CHECK (sequence >= 0) NOT NULL,
    event_type     text                         NOT NULL,
    event_version  text                         NOT NULL,
    payload        jsonb                        NOT NULL,
    metadata       jsonb                        NOT NULL,
    -- Insertion order. NOT a reading order: transactions commit out of
    -- insertion order. Readers use event_log.position.
    global_id      bigint GENERATED ALWAYS AS IDENTITY,
    event_id       uuid                         NOT NULL DEFAULT tandem_uuid_v7(),
    recorded_at    timestamptz                  NOT NULL DEFAULT clock_timestamp(),
    project_id     uuid GENERATED ALWAYS AS ((metadata ->> 'project_id')::uuid) STORED,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence),
    UNIQUE (global_id),
    UNIQUE (event_id)
);

CREATE INDEX events_project_idx ON events (project_id, global_id) WHERE project_id IS NOT NULL;

-- Events are never updated or deleted.
CREATE FUNCTION tandem_events_are_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the event log is append-only (% refused)', TG_OP;
END
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION tandem_events_are_immutable();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION tandem_events_are_immutable();

-- Events waiting for a position. A row becomes visible to the sequencer
-- exactly when the transaction that appended the event commits, so the
-- sequencer never has to reason about in-flight transactions.
CREATE TABLE unsequenced_events
(
    global_id bigint PRIMARY KEY
);

CREATE FUNCTION tandem_enqueue_for_sequencing() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO unsequenced_events (global_id) VALUES (NEW.global_id);
    RETURN NULL;
END
$$;

CREATE TRIGGER events_enqueue_for_sequencing
    AFTER INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION tandem_enqueue_for_sequencing();

-- The log in commit-safe order: position 1, 2, 3, ... with no gap.
CREATE TABLE event_log
(
    position     bigint PRIMARY KEY CHECK (position > 0),
    global_id    bigint      NOT NULL UNIQUE REFERENCES events (global_id),
    -- Copied from the event so a project's history is one index range in
    -- log order.
    project_id   uuid,
    sequenced_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX event_log_project_idx ON event_log (project_id, position) WHERE project_id IS NOT NULL;

CREATE TRIGGER event_log_append_only
    BEFORE UPDATE OR DELETE ON event_log
    FOR EACH ROW EXECUTE FUNCTION tandem_events_are_immutable();

CREATE TABLE sequencer_state
(
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_position bigint NOT NULL
);

INSERT INTO sequencer_state (singleton, last_position) VALUES (true, 0);

-- One sequencing step: takes up to max_events committed, unsequenced events
-- in insertion order, gives them the next positions, and notifies
-- `tandem_sequenced` with the new last position (delivered on commit).
-- The row lock on sequencer_state makes concurrent callers take turns, so
-- even two sequencers that both believe they lead cannot assign twice.
CREATE FUNCTION tandem_sequence_batch(max_events integer)
    RETURNS TABLE (assigned bigint, last_position bigint)
LANGUAGE plpgsql AS $$
DECLARE
    previous bigint;
    n        bigint;
BEGIN
    SELECT s.last_position INTO previous FROM sequencer_state s WHERE s.singleton FOR UPDATE;

    WITH batch AS (
        DELETE FROM unsequenced_events u
        WHERE u.global_id IN (SELECT q.global_id FROM unsequenced_events q ORDER BY q.global_id LIMIT max_events)
        RETURNING u.global_id
    )
    INSERT INTO event_log (position, global_id, project_id)
    SELECT previous + row_number() OVER (ORDER BY b.global_id), b.global_id, e.project_id
    FROM batch b JOIN events e ON e.global_id = b.global_id;

    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        UPDATE sequencer_state s SET last_position = previous + n WHERE s.singleton;
        PERFORM pg_notify('tandem_sequenced', (previous + n)::text);
    END IF;
    RETURN QUERY SELECT n, previous + n;
END
$$;
