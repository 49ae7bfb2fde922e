-- A sequencing step returns the listing it notifies.
--
-- A command appended and sequenced at commit (tandem_append_sequenced)
-- learned its position from the step's NOTIFY: after the commit, Postgres
-- signals the listening backend, which wakes, reads the queue and sends
-- the payload to the process's listener, which wakes the command. On a
-- busy machine that is two more processes to schedule on every command's
-- path, for a listing the appending backend already built. The step now
-- returns it too, so the appender delivers positions itself the moment its
-- commit is acknowledged. The NOTIFYs still go out, unchanged, for every
-- other listener (other processes' waiters, relays).
--
-- tandem_sequence_step is the step, moved here unchanged but for the
-- returned `listing` (the notified payloads, in position order).
-- tandem_sequence_batch keeps its signature and becomes a view of it, so
-- the step's logic stays in one place.

CREATE FUNCTION tandem_sequence_step(max_events integer)
    RETURNS TABLE (assigned bigint, last_position bigint, listing text[])
LANGUAGE plpgsql AS $$
DECLARE
    previous bigint;
    n        bigint;
    payloads text[];
    payload  text;
    notified text[] := '{}';
BEGIN
    PERFORM 1 FROM unsequenced_events q ORDER BY q.global_id LIMIT 1;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 0::bigint, s.last_position, notified FROM sequencer_state s WHERE s.singleton;
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
            notified := notified || payload;
        END LOOP;
    END IF;
    RETURN QUERY SELECT n, previous + n, notified;
END
$$;

CREATE OR REPLACE FUNCTION tandem_sequence_batch(max_events integer)
    RETURNS TABLE (assigned bigint, last_position bigint)
LANGUAGE sql AS $$
    SELECT s.assigned, s.last_position FROM tandem_sequence_step(max_events) s
$$;

DROP FUNCTION tandem_append_sequenced(text[], text[], bigint[], text[], text[], jsonb[], jsonb[], integer);

-- As in migration sequence_at_commit (which says why it is safe), with the
-- step's listing returned.
CREATE FUNCTION tandem_append_sequenced(
    types text[], ids text[], sequences bigint[], event_types text[],
    event_versions text[], payloads jsonb[], metadata jsonb[], max_events integer)
    RETURNS TABLE (assigned bigint, last_position bigint, listing text[])
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
    SELECT t, i, s, et, ev, p, m
      FROM unnest(types, ids, sequences, event_types, event_versions, payloads, metadata)
           WITH ORDINALITY AS r(t, i, s, et, ev, p, m, n)
     ORDER BY n;
    RETURN QUERY SELECT b.assigned, b.last_position, b.listing FROM tandem_sequence_step(max_events) b;
END
$$;
