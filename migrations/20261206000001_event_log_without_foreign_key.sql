-- The sequencing step no longer checks event_log.global_id against events.
--
-- The foreign key ran a referential-integrity query per sequenced event and
-- took a FOR KEY SHARE lock on the event's row, which writes the lock into
-- that row's header: a second write (and WAL record) to every event, on the
-- sequencer's critical path. Measured on one step of 5000 events: 134-163 ms
-- with the key, 72-101 ms without.
--
-- It guarded nothing that can happen: the only writer of event_log is
-- tandem_sequence_batch, which takes global ids from unsequenced_events,
-- whose rows the events trigger inserts in the appending transaction (so
-- they exist exactly when their event has committed), and events can never
-- be updated or deleted (events_append_only, events_no_truncate). The
-- UNIQUE (global_id) on event_log, which keeps "each event once", stays.

ALTER TABLE event_log DROP CONSTRAINT event_log_global_id_fkey;
