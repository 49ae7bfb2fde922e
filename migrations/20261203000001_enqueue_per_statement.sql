-- Appends are multi-row INSERTs (group commit): enqueue each statement's
-- events for the sequencer in one set-based INSERT from the transition
-- table, instead of one PL/pgSQL call and one INSERT per event. Still a
-- trigger, so no writer can append an event that the sequencer misses.

DROP TRIGGER events_enqueue_for_sequencing ON events;

CREATE OR REPLACE FUNCTION tandem_enqueue_for_sequencing() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO unsequenced_events (global_id, project_id, aggregate_id, sequence)
    SELECT n.global_id, n.project_id, n.aggregate_id, n.sequence FROM appended n;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_enqueue_for_sequencing
    AFTER INSERT ON events
    REFERENCING NEW TABLE AS appended
    FOR EACH STATEMENT EXECUTE FUNCTION tandem_enqueue_for_sequencing();
