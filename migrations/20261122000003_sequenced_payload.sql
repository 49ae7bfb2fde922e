-- The sequencer's notification now names what it sequenced:
--   "<first position> <last position>[ <global_id>,<global_id>,...]"
-- with the ids in position order (omitted for batches too big for a
-- NOTIFY payload). A waiting command finds its own event in it and
-- computes its position without asking the database again.
CREATE OR REPLACE FUNCTION tandem_sequence_batch(max_events integer)
    RETURNS TABLE (assigned bigint, last_position bigint)
LANGUAGE plpgsql AS $$
DECLARE
    previous bigint;
    n        bigint;
    ids      text;
BEGIN
    SELECT s.last_position INTO previous FROM sequencer_state s WHERE s.singleton FOR UPDATE;

    WITH batch AS (
        DELETE FROM unsequenced_events u
        WHERE u.global_id IN (SELECT q.global_id FROM unsequenced_events q ORDER BY q.global_id LIMIT max_events)
        RETURNING u.global_id
    ), sequenced AS (
        INSERT INTO event_log (position, global_id, project_id)
        SELECT previous + row_number() OVER (ORDER BY b.global_id), b.global_id, e.project_id
        FROM batch b JOIN events e ON e.global_id = b.global_id
        RETURNING event_log.global_id
    )
    SELECT count(*),
           CASE WHEN count(*) <= 400 THEN string_agg(s.global_id::text, ',' ORDER BY s.global_id) END
      INTO n, ids
      FROM sequenced s;

    IF n > 0 THEN
        UPDATE sequencer_state s SET last_position = previous + n WHERE s.singleton;
        PERFORM pg_notify('tandem_sequenced',
                          (previous + 1)::text || ' ' || (previous + n)::text || coalesce(' ' || ids, ''));
    END IF;
    RETURN QUERY SELECT n, previous + n;
END
$$;
