-- Appends bring their events' ids, minted by the process (UUIDv7, as
-- tandem_uuid_v7 makes them), instead of having the INSERT call
-- tandem_uuid_v7() per row: the group commit's INSERT is the serial stage
-- of every command, and that call cost it about 2 µs a row (200,000 calls
-- in psql: 456-536 ms against 296 ms for gen_random_uuid alone). The
-- column keeps its default for any other writer.

DROP FUNCTION tandem_append_sequenced(text[], text[], bigint[], text[], text[], jsonb[], jsonb[], integer);
DROP FUNCTION tandem_append(text[], text[], bigint[], text[], text[], jsonb[], jsonb[]);

-- Migration append_plan_kept's, with the ids.
CREATE FUNCTION tandem_append(
    event_ids uuid[], types text[], ids text[], sequences bigint[], event_types text[],
    event_versions text[], payloads jsonb[], metadata jsonb[])
    RETURNS TABLE (global_id bigint, project_id uuid, aggregate_id text, sequence bigint)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    INSERT INTO events AS e (event_id, aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
    SELECT id, t, i, s, et, ev, p, m
      FROM unnest(event_ids, types, ids, sequences, event_types, event_versions, payloads, metadata)
           WITH ORDINALITY AS r(id, t, i, s, et, ev, p, m, n)
     ORDER BY n
    RETURNING e.global_id, e.project_id, e.aggregate_id, e.sequence;
END
$$;

-- Migration at_commit_numbers_its_own_rows's, with the ids.
CREATE FUNCTION tandem_append_sequenced(
    event_ids uuid[], types text[], ids text[], sequences bigint[], event_types text[],
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
      FROM tandem_append(event_ids, types, ids, sequences, event_types, event_versions, payloads, metadata) a;
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
