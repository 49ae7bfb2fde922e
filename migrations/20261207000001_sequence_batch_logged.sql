-- A sequencing step that also returns what it sequenced.
--
-- An in-process relay used to learn of a step by notification and then
-- read the step's events back (a second round trip, on the path from
-- commit to the stream, queued behind every other query of a busy
-- database). This variant runs the same step and returns the events it
-- numbered, in position order, in the step's own round trip; the relay
-- takes them from memory.
--
-- One row per sequenced event, each carrying the log's last position; an
-- empty step returns one row whose event columns are NULL, so the caller
-- always learns the head. The statements inside a PL/pgSQL function each
-- take a new snapshot, so the read sees the step's own inserts; the rows
-- reach the client before the implicit transaction commits, but a client
-- that waits for the statement to complete (ReadyForQuery) has them only
-- once they are committed.

CREATE FUNCTION tandem_sequence_batch_logged(max_events integer)
    RETURNS TABLE (
        last_position  bigint,
        "position"     bigint,
        event_id       uuid,
        aggregate_type text,
        aggregate_id   text,
        sequence       bigint,
        event_type     text,
        event_version  text,
        payload        jsonb,
        metadata       jsonb,
        recorded_at    timestamptz,
        project_id     uuid
    )
LANGUAGE plpgsql AS $$
DECLARE
    step record;
BEGIN
    SELECT s.assigned, s.last_position INTO step FROM tandem_sequence_batch(max_events) s;
    IF step.assigned = 0 THEN
        RETURN QUERY SELECT step.last_position, NULL::bigint, NULL::uuid, NULL::text, NULL::text,
                            NULL::bigint, NULL::text, NULL::text, NULL::jsonb, NULL::jsonb,
                            NULL::timestamptz, NULL::uuid;
        RETURN;
    END IF;
    RETURN QUERY
        SELECT step.last_position, l.position, e.event_id, e.aggregate_type, e.aggregate_id,
               e.sequence, e.event_type, e.event_version, e.payload, e.metadata, e.recorded_at,
               e.project_id
          FROM event_log l JOIN events e ON e.global_id = l.global_id
         WHERE l.position > step.last_position - step.assigned
         ORDER BY l.position;
END
$$;
