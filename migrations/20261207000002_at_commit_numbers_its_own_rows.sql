-- Two changes to sequencing at commit (migration sequence_at_commit), and
-- the group commit's INSERT in one place (tandem_append), which both the
-- plain and the sequenced append now run.
--
-- 1. The step returns the listing it notifies.
--
-- A command appended and sequenced at commit learned its position from the
-- step's NOTIFY: after the commit, Postgres signals the listening backend,
-- which wakes, reads the queue and sends the payload to the process's
-- listener, which wakes the command. On a busy machine that is two more
-- processes to schedule on every command's path, for a listing the
-- appending backend already built. The step now returns it too, so the
-- appender delivers positions itself the moment its commit is
-- acknowledged. The NOTIFYs still go out, unchanged, for every other
-- listener (other processes' waiters, relays).
--
-- 2. An append sequenced at commit numbers its own rows straight from its
-- INSERT, without a round through the queue.
--
-- Every appended row used to be queued by the events trigger and then,
-- a statement later in the same transaction, deleted again by the step:
-- an insert and a delete per event, their index entries, their WAL, and a
-- queue that autovacuum must keep clearing. Those rows need no queue: the
-- queue exists so that a row becomes visible to the sequencer exactly when
-- its transaction commits, and these are numbered inside that very
-- transaction, under the sequencer's row lock, before it commits.
--
-- How the trigger knows: tandem_append_sequenced sets the transaction-local
-- setting tandem.numbering_own_rows around its INSERT only, and hands the
-- rows it inserted to the step itself. Any other INSERT, before or after
-- it in the same transaction or anywhere else, is queued as always. The
-- setting is a promise to number the rows in the same transaction; nothing
-- in Tandem sets it but this function (as nothing sets
-- session_replication_role, which would skip the trigger altogether).
--
-- Order: the step numbers the union of the visible queue and the own rows
-- in global_id order. It takes the whole visible queue then, not one
-- step's worth: an aggregate's earlier event still queued must never be
-- left behind for a later step while its next one, among the own rows, is
-- numbered now. So the append takes this path only when the queue holds
-- less than a step (checked first; what commits in between is little);
-- otherwise it queues its rows and runs the capped step as before, and a
-- step that fills up wakes the sequencer.

CREATE OR REPLACE FUNCTION tandem_enqueue_for_sequencing() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('tandem.numbering_own_rows', true) = 'on' THEN
        RETURN NULL;
    END IF;
    INSERT INTO unsequenced_events (global_id, project_id, aggregate_id, sequence)
    SELECT n.global_id, n.project_id, n.aggregate_id, n.sequence FROM appended n;
    RETURN NULL;
END
$$;

-- The step of migration sequenced_payload, with rows to number beside the
-- queue's, `own_*` (of the calling transaction, never queued), and the
-- notified payloads returned as `listing`. `max_events` caps the rows
-- taken from the queue; NULL takes them all.
CREATE FUNCTION tandem_sequence_step_with(
    max_events integer, own_global_ids bigint[], own_project_ids uuid[],
    own_aggregate_ids text[], own_sequences bigint[])
    RETURNS TABLE (assigned bigint, last_position bigint, listing text[])
LANGUAGE plpgsql AS $$
DECLARE
    previous bigint;
    n        bigint;
    payloads text[];
    payload  text;
    notified text[] := '{}';
BEGIN
    IF coalesce(cardinality(own_global_ids), 0) = 0 THEN
        PERFORM 1 FROM unsequenced_events q ORDER BY q.global_id LIMIT 1;
        IF NOT FOUND THEN
            RETURN QUERY SELECT 0::bigint, s.last_position, notified FROM sequencer_state s WHERE s.singleton;
            RETURN;
        END IF;
    END IF;

    SELECT s.last_position INTO previous FROM sequencer_state s WHERE s.singleton FOR UPDATE;

    WITH queued AS (
        DELETE FROM unsequenced_events u
        -- = ANY(ARRAY(...)) keeps this on the primary key: an IN-subquery
        -- gets a hash join over the whole queue, dead rows and all.
        WHERE u.global_id = ANY (ARRAY(
            SELECT q.global_id FROM unsequenced_events q ORDER BY q.global_id LIMIT max_events))
        RETURNING u.global_id, u.project_id, u.aggregate_id, u.sequence
    ), batch AS (
        SELECT q.global_id, q.project_id, q.aggregate_id, q.sequence FROM queued q
        UNION ALL
        SELECT o.global_id, o.project_id, o.aggregate_id, o.sequence
          FROM unnest(own_global_ids, own_project_ids, own_aggregate_ids, own_sequences)
               AS o(global_id, project_id, aggregate_id, sequence)
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

-- The sequencer's step: the queue alone.
CREATE OR REPLACE FUNCTION tandem_sequence_batch(max_events integer)
    RETURNS TABLE (assigned bigint, last_position bigint)
LANGUAGE sql AS $$
    SELECT s.assigned, s.last_position
      FROM tandem_sequence_step_with(max_events, '{}', '{}', '{}', '{}') s
$$;

DROP FUNCTION tandem_append_sequenced(text[], text[], bigint[], text[], text[], jsonb[], jsonb[], integer);

-- A group commit's INSERT, the one statement both ways of appending run:
-- the rows in the order given (WITH ORDINALITY), so one command's events
-- take increasing global_ids; what a step needs of them is returned.
CREATE FUNCTION tandem_append(
    types text[], ids text[], sequences bigint[], event_types text[],
    event_versions text[], payloads jsonb[], metadata jsonb[])
    RETURNS TABLE (global_id bigint, project_id uuid, aggregate_id text, sequence bigint)
LANGUAGE sql AS $$
    INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
    SELECT t, i, s, et, ev, p, m
      FROM unnest(types, ids, sequences, event_types, event_versions, payloads, metadata)
           WITH ORDINALITY AS r(t, i, s, et, ev, p, m, n)
     ORDER BY n
    RETURNING global_id, project_id, aggregate_id, sequence
$$;

-- As in migration sequence_at_commit (which says why it is safe), with
-- the step's listing returned, numbering its own rows when the queue holds
-- less than a step.
CREATE FUNCTION tandem_append_sequenced(
    types text[], ids text[], sequences bigint[], event_types text[],
    event_versions text[], payloads jsonb[], metadata jsonb[], max_events integer)
    RETURNS TABLE (assigned bigint, last_position bigint, listing text[])
LANGUAGE plpgsql AS $$
DECLARE
    own         boolean;
    own_ids     bigint[];
    own_project uuid[];
    own_agg     text[];
    own_seq     bigint[];
BEGIN
    SELECT count(*) < max_events INTO own
      FROM (SELECT 1 FROM unsequenced_events q ORDER BY q.global_id LIMIT max_events) b;
    IF own THEN
        PERFORM set_config('tandem.numbering_own_rows', 'on', true);
    END IF;
    SELECT array_agg(a.global_id), array_agg(a.project_id), array_agg(a.aggregate_id), array_agg(a.sequence)
      INTO own_ids, own_project, own_agg, own_seq
      FROM tandem_append(types, ids, sequences, event_types, event_versions, payloads, metadata) a;
    IF NOT own THEN
        RETURN QUERY SELECT b.assigned, b.last_position, b.listing
          FROM tandem_sequence_step_with(max_events, '{}', '{}', '{}', '{}') b;
        RETURN;
    END IF;
    PERFORM set_config('tandem.numbering_own_rows', 'off', true);
    RETURN QUERY SELECT b.assigned, b.last_position, b.listing
      FROM tandem_sequence_step_with(NULL, own_ids, own_project, own_agg, own_seq) b;
END
$$;
