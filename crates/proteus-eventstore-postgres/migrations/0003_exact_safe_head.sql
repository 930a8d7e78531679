-- Proteus event store, migration 3: the safe head from the oldest position in flight.
--
-- With migration 2 a reader knew the last position handed out and WHICH writers were in
-- flight, not which positions they held, so one slow writer (an append waiting on a row lock)
-- held back every position, even those committed long before its own. Now the first
-- transaction-level take of positions also takes an advisory lock that names its first
-- position (class: the schema's in-flight class; key: the position's low 32 bits), under the
-- allocation lock like the positions themselves. `safe_head` takes the allocation lock, reads
-- the last position handed out and the oldest in-flight position, and answers: every position
-- below the oldest in flight is committed and visible or never will be (PostgreSQL releases a
-- transaction's locks after making it visible). `head_probe` stays for processes still running
-- the previous version during an upgrade.

-- The advisory-lock class of in-flight positions of this schema's store.
CREATE FUNCTION in_flight_class()
RETURNS integer
LANGUAGE sql STABLE
SET search_path FROM CURRENT
AS $$ SELECT hashtext(current_schema() || '/positions-in-flight') $$;

-- Inside take_positions and import_positions, under the allocation lock: marks the calling
-- transaction as holding positions from `p_first` on, once per transaction and schema (later
-- takes by the same transaction are higher). The key is the position's low 32 bits, as a
-- signed integer; readers rebuild the position from the last one handed out (no transaction
-- holds positions 2^32 apart).
CREATE FUNCTION mark_in_flight(p_first bigint)
RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
    IF current_setting('proteus.positions_in_flight', true) IS DISTINCT FROM current_schema() THEN
        PERFORM pg_advisory_xact_lock(in_flight_class(), ((p_first << 32) >> 32)::integer);
        PERFORM set_config('proteus.positions_in_flight', current_schema(), true);
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION take_positions(p_count bigint)
RETURNS bigint
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_key   integer := hashtext(current_schema());
    v_first bigint;
BEGIN
    PERFORM pg_advisory_lock(1347572801, v_key);
    BEGIN
        v_first := nextval('positions');
        IF p_count > 1 THEN
            PERFORM setval('positions', v_first + p_count - 1);
        END IF;
        PERFORM mark_in_flight(v_first);
    EXCEPTION WHEN OTHERS THEN
        -- A session lock outlives the transaction: never leave it held.
        PERFORM pg_advisory_unlock(1347572801, v_key);
        RAISE;
    END;
    PERFORM pg_advisory_unlock(1347572801, v_key);
    RETURN v_first;
END
$$;

-- An import (holding the writers key exclusively, so no append is in flight) writes positions
-- `p_first` to `p_last` itself: it marks them in flight, then moves the sequence past them.
CREATE FUNCTION import_positions(p_first bigint, p_last bigint)
RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_key integer := hashtext(current_schema());
BEGIN
    PERFORM pg_advisory_lock(1347572801, v_key);
    BEGIN
        PERFORM mark_in_flight(p_first);
        PERFORM setval('positions', p_last);
    EXCEPTION WHEN OTHERS THEN
        PERFORM pg_advisory_unlock(1347572801, v_key);
        RAISE;
    END;
    PERFORM pg_advisory_unlock(1347572801, v_key);
END
$$;

-- The last position handed out and the safe head: one below the oldest position a transaction
-- in flight holds, or the last one when none is in flight. Read under the allocation lock, so
-- no transaction is between taking positions and marking them.
CREATE FUNCTION safe_head(OUT o_last bigint, OUT o_safe bigint)
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_key    integer := hashtext(current_schema());
    v_class  integer := in_flight_class();
    v_oldest bigint;
BEGIN
    PERFORM pg_advisory_lock(1347572801, v_key);
    BEGIN
        SELECT CASE WHEN is_called THEN last_value ELSE 0 END INTO o_last FROM positions;
        SELECT min(o_last - (((o_last & 4294967295) - l.objid::bigint + 4294967296)
                             % 4294967296))
          INTO v_oldest
          FROM pg_locks l
         WHERE l.locktype = 'advisory' AND l.granted AND l.database = (
                   SELECT oid FROM pg_database WHERE datname = current_database())
           AND l.classid = v_class::oid AND l.objsubid = 2;
    EXCEPTION WHEN OTHERS THEN
        PERFORM pg_advisory_unlock(1347572801, v_key);
        RAISE;
    END;
    PERFORM pg_advisory_unlock(1347572801, v_key);
    o_safe := coalesce(v_oldest - 1, o_last);
END
$$;
