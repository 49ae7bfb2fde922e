-- A projection's checkpoint moves with one UPDATE in the common case
-- (the row exists and is where the batch started), instead of an INSERT
-- ... ON CONFLICT, a SELECT ... FOR UPDATE and an UPDATE on every batch.
-- The UPDATE locks the row exactly as the SELECT ... FOR UPDATE did, and
-- under READ COMMITTED a concurrent mover's commit makes its WHERE fail,
-- so the refusal (SQLSTATE T0001) is unchanged.
CREATE OR REPLACE FUNCTION tandem_advance_projection(name text, from_position bigint, to_position bigint)
    RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    current bigint;
BEGIN
    UPDATE projection_checkpoints c SET position = to_position, updated_at = now()
    WHERE c.projection = name AND c.position = from_position;
    IF FOUND THEN
        RETURN;
    END IF;
    -- A projection's first batch finds no row; any other miss is refused.
    INSERT INTO projection_checkpoints (projection, position) VALUES (name, 0)
    ON CONFLICT (projection) DO NOTHING;
    SELECT c.position INTO current FROM projection_checkpoints c WHERE c.projection = name FOR UPDATE;
    IF current <> from_position THEN
        RAISE EXCEPTION 'projection % is at %, not %', name, current, from_position
            USING ERRCODE = 'T0001';
    END IF;
    UPDATE projection_checkpoints c SET position = to_position, updated_at = now()
    WHERE c.projection = name;
END
$$;
