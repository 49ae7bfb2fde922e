-- Sequencing at commit: the leading sequencer's own process appends and
-- sequences in one transaction.
--
-- A command used to wait for two WAL flushes in series: its append's
-- commit, then the next sequencing step's commit (plus the step's wait for
-- its turn and the NOTIFY coming round). When the process that appends
-- also holds the sequencer's lead, its group commit runs the step itself,
-- after its INSERT and before its COMMIT: one transaction, one flush.
--
-- Nothing about the step changes, so neither do its guarantees: the
-- events trigger has queued the batch's rows (visible to this transaction
-- only), the step takes the sequencer_state row lock, numbers every queued
-- row it can see — this batch's and those of transactions that committed
-- before — and holds the lock until this transaction commits, so positions
-- still become visible in order and without gaps. The lock is the last one
-- the transaction takes, and its holders wait for no other lock, so no
-- deadlock can form. Writers that do not lead (other processes, or this one
-- while another leads) append as before and never touch the lock.
CREATE FUNCTION tandem_append_sequenced(
    types text[], ids text[], sequences bigint[], event_types text[],
    event_versions text[], payloads jsonb[], metadata jsonb[], max_events integer)
    RETURNS TABLE (assigned bigint, last_position bigint)
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
    SELECT t, i, s, et, ev, p, m
      FROM unnest(types, ids, sequences, event_types, event_versions, payloads, metadata)
           WITH ORDINALITY AS r(t, i, s, et, ev, p, m, n)
     ORDER BY n;
    RETURN QUERY SELECT b.assigned, b.last_position FROM tandem_sequence_batch(max_events) b;
END
$$;
