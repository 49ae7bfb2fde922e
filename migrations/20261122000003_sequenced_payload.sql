-- Sequencing, revised:
-- * The queue row carries what a step needs (project id, aggregate id and
--   sequence), so a step never touches `events` (joining it made every
--   step scan the whole log).
-- * An empty queue returns at once, found through the primary-key index
--   (a sequential scan would wade through the queue's dead rows), and
--   without locking the state row: a lock costs a transaction id and a WAL
--   flush per idle wake-up.
-- * The notifications name what was sequenced, in chunks of 100:
--     "<position of the first> <aggregate_id>/<sequence>,<aggregate_id>/<sequence>,..."
--   (or just "<position of the first>" if a chunk would not fit a payload)
--   in position order, so a waiting command computes its own position
--   without asking the database.
-- * The queue is vacuumed eagerly: it is all churn.

ALTER TABLE unsequenced_events
    ADD COLUMN project_id   uuid,
    ADD COLUMN aggregate_id text   NOT NULL DEFAULT '',
    ADD COLUMN sequence     bigint NOT NULL DEFAULT 0;

ALTER TABLE unsequenced_events SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0
);

CREATE OR REPLACE FUNCTION tandem_enqueue_for_sequencing() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO unsequenced_events (global_id, project_id, aggregate_id, sequence)
    VALUES (NEW.global_id, NEW.project_id, NEW.aggregate_id, NEW.sequence);
    RETURN NULL;
END
$$;

DROP FUNCTION tandem_sequence_batch(integer);

CREATE FUNCTION tandem_sequence_batch(max_events integer)
    RETURNS TABLE (assigned bigint, last_position bigint)
LANGUAGE plpgsql AS $$
DECLARE
    previous bigint;
    n        bigint;
    payloads text[];
    payload  text;
BEGIN
    PERFORM 1 FROM unsequenced_events q ORDER BY q.global_id LIMIT 1;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 0::bigint, s.last_position FROM sequencer_state s WHERE s.singleton;
        RETURN;
    END IF;

    SELECT s.last_position INTO previous FROM sequencer_state s WHERE s.singleton FOR UPDATE;

    WITH batch AS (
        DELETE FROM unsequenced_events u
        -- = ANY(ARRAY(...)) keeps this on the primary key: an IN-subquery
        -- gets a hash join over the whole queue, dead rows and all.
        WHERE u.global_id = ANY (ARRAY(
            SELECT q.global_id FROM unsequenced_events q ORDER BY q.global_id LIMIT max_events))
        RETURNING u.global_id, u.project_id, u.aggregate_id, u.sequence
    ), numbered AS (
        SELECT previous + row_number() OVER (ORDER BY b.global_id) AS position, b.*
        FROM batch b
    ), logged AS (
        INSERT INTO event_log (position, global_id, project_id)
        SELECT position, global_id, project_id FROM numbered
    ), chunks AS (
        SELECT min(position) AS first, count(*) AS size,
               string_agg(aggregate_id || '/' || sequence, ',' ORDER BY position) AS entries
        FROM numbered
        GROUP BY (position - previous - 1) / 100
    )
    SELECT coalesce(sum(size), 0), array_agg(first::text || ' ' || entries ORDER BY first)
      INTO n, payloads
      FROM chunks;

    IF n > 0 THEN
        UPDATE sequencer_state s SET last_position = previous + n WHERE s.singleton;
        FOREACH payload IN ARRAY payloads LOOP
            -- NOTIFY refuses payloads of 8000 bytes or more, and a failing
            -- step would stop the log; unusually long ids get a bare
            -- "<first position>" and their waiters ask the database.
            IF octet_length(payload) >= 7900 THEN
                payload := split_part(payload, ' ', 1);
            END IF;
            PERFORM pg_notify('tandem_sequenced', payload);
        END LOOP;
    END IF;
    RETURN QUERY SELECT n, previous + n;
END
$$;
