-- Proteus event store, migration 2: appends no longer serialise on the head row.
--
-- Migration 1 took positions from one `head` row locked until commit, so a reader never saw
-- position N+1 before N, but appends of every writer queued behind one another's WAL flush.
-- Now positions come from a sequence, taken while the appending transaction holds a SHARED
-- advisory lock on the store's "writers" key (class 'PRTW', the schema's hash) until it ends.
-- Readers do not trust a position until every writer that could hold a smaller one is gone:
-- `head_probe` reads the last position handed out, THEN the writers holding the key; once all
-- of those have released it (their commits are visible first: PostgreSQL releases a
-- transaction's locks after making it visible), every position up to that last one is
-- committed or will never be. The crate's docs (`lib.rs`, "Positions") explain the rest.
-- Positions may now have gaps (a transaction that rolls back after taking some), never holes
-- that fill later.

CREATE SEQUENCE positions AS bigint MINVALUE 1 START 1;
SELECT setval('positions', greatest(position, 1), position > 0) FROM head;
DROP TABLE head;

-- The key every appending transaction holds (shared) from before it takes positions until it
-- ends; importers hold it exclusively.
CREATE FUNCTION writers_key(OUT o_class integer, OUT o_key integer)
LANGUAGE sql STABLE
SET search_path FROM CURRENT
AS $$ SELECT 1347572823, hashtext(current_schema()) $$;

-- `p_count` consecutive positions; returns the first. Consecutive because every taker holds the
-- allocation lock (class 'PRTA', session level, released at once) around nextval and setval.
-- The caller must already hold the writers key.
CREATE FUNCTION take_positions(p_count bigint)
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
    EXCEPTION WHEN OTHERS THEN
        -- A session lock outlives the transaction: never leave it held.
        PERFORM pg_advisory_unlock(1347572801, v_key);
        RAISE;
    END;
    PERFORM pg_advisory_unlock(1347572801, v_key);
    RETURN v_first;
END
$$;

-- The last position handed out, then the writers in flight at that moment (virtual transaction
-- and process id of each holder of the writers key). Two statements, in this order: a writer
-- takes the key before its positions, so any position up to `o_last` belongs to a writer that
-- has ended or is in `o_writers`.
CREATE FUNCTION head_probe(OUT o_last bigint, OUT o_writers text[])
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_key integer := hashtext(current_schema());
BEGIN
    SELECT CASE WHEN is_called THEN last_value ELSE 0 END INTO o_last FROM positions;
    SELECT coalesce(array_agg(l.virtualtransaction || '/' || l.pid), '{}') INTO o_writers
      FROM pg_locks l
     WHERE l.locktype = 'advisory' AND l.granted AND l.database = (
               SELECT oid FROM pg_database WHERE datname = current_database())
       AND l.classid = 1347572823::oid AND l.objid = v_key::oid AND l.objsubid = 2;
END
$$;

-- As in migration 1, except that positions come from `take_positions` under the writers key
-- (no row lock kept until commit) and nothing is notified here: the writer announces its
-- commits afterwards, outside the transaction, because a NOTIFY inside it would serialise
-- every commit of the database on PostgreSQL's notification queue lock.
CREATE OR REPLACE FUNCTION append_events(
    p_stream          text,
    p_category        text,
    p_expected_kind   smallint,
    p_expected        bigint,
    p_ids             text[],
    p_types           text[],
    p_schema_versions bigint[],
    p_data            bytea[],
    p_metadata        bytea[],
    p_offset          integer DEFAULT 0,
    p_count           integer DEFAULT NULL
)
RETURNS TABLE (
    o_status          smallint,
    o_actual          bigint,
    o_first_version   bigint,
    o_first_position  bigint,
    o_known_versions  bigint[],
    o_known_positions bigint[]
)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_last     bigint;
    v_deleted  boolean;
    v_count    bigint := COALESCE(p_count, cardinality(p_ids));
    v_known    bigint;
    v_versions bigint[];
    v_positions bigint[];
    v_first    bigint;
    v_base     bigint;
    v_now      bigint := floor(extract(epoch FROM statement_timestamp()) * 1000)::bigint;
BEGIN
    SELECT s.last_version, s.deleted INTO v_last, v_deleted
      FROM streams s WHERE s.name = p_stream FOR UPDATE;
    IF NOT FOUND THEN
        IF NOT expected_matches(p_expected_kind, p_expected, NULL) THEN
            RETURN QUERY SELECT 2::smallint, NULL::bigint, NULL::bigint, NULL::bigint,
                NULL::bigint[], NULL::bigint[];
            RETURN;
        END IF;
        INSERT INTO streams (name) VALUES (p_stream) ON CONFLICT (name) DO NOTHING;
        IF FOUND THEN
            v_last := NULL;
            v_deleted := false;
        ELSE
            SELECT s.last_version, s.deleted INTO v_last, v_deleted
              FROM streams s WHERE s.name = p_stream FOR UPDATE;
        END IF;
    END IF;
    IF v_deleted THEN
        RETURN QUERY SELECT 1::smallint, v_last, NULL::bigint, NULL::bigint,
            NULL::bigint[], NULL::bigint[];
        RETURN;
    END IF;
    IF v_last IS NOT NULL THEN
        SELECT array_agg(e.version ORDER BY i.ord), array_agg(e.position ORDER BY i.ord),
               count(e.version)
          INTO v_versions, v_positions, v_known
          FROM unnest(p_ids) WITH ORDINALITY AS i(id, ord)
          LEFT JOIN events e ON e.stream = p_stream AND e.event_id = i.id
         WHERE i.ord > p_offset AND i.ord <= p_offset + v_count;
        IF v_known > 0 THEN
            RETURN QUERY SELECT 3::smallint, v_last, NULL::bigint, NULL::bigint,
                v_versions, v_positions;
            RETURN;
        END IF;
    END IF;
    IF NOT expected_matches(p_expected_kind, p_expected, v_last) THEN
        RETURN QUERY SELECT 2::smallint, v_last, NULL::bigint, NULL::bigint,
            NULL::bigint[], NULL::bigint[];
        RETURN;
    END IF;
    v_first := COALESCE(v_last + 1, 0);
    -- Held (shared) until this transaction ends, taken before the positions: readers wait for
    -- it before trusting any position up to ours.
    PERFORM pg_advisory_xact_lock_shared(1347572823, hashtext(current_schema()));
    v_base := take_positions(v_count) - 1;
    INSERT INTO events (position, stream, version, category, event_id, event_type,
                        schema_version, data, metadata, recorded_ms)
    SELECT v_base + i.ord - p_offset, p_stream, v_first + i.ord - p_offset - 1, p_category,
           i.id, i.t, i.sv, i.d, i.m, v_now
      FROM unnest(p_ids, p_types, p_schema_versions, p_data, p_metadata)
           WITH ORDINALITY AS i(id, t, sv, d, m, ord)
     WHERE i.ord > p_offset AND i.ord <= p_offset + v_count;
    UPDATE streams SET last_version = v_first + v_count - 1, last_position = v_base + v_count
     WHERE name = p_stream;
    RETURN QUERY SELECT 0::smallint, v_last, v_first, v_base + 1, NULL::bigint[], NULL::bigint[];
END
$$;

-- As in migration 1, except that each append is handed its own slice of the event arrays:
-- passing the whole batch's arrays with an offset made every append walk all of them, so a
-- batch cost grew with the square of its size.
CREATE OR REPLACE FUNCTION append_batch(
    p_streams         text[],
    p_categories      text[],
    p_expected_kinds  smallint[],
    p_expected        bigint[],
    p_counts          integer[],
    p_ids             text[],
    p_types           text[],
    p_schema_versions bigint[],
    p_data            bytea[],
    p_metadata        bytea[]
)
RETURNS TABLE (
    o_status          smallint,
    o_actual          bigint,
    o_first_version   bigint,
    o_first_position  bigint,
    o_known_versions  bigint[],
    o_known_positions bigint[]
)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_name  text;
    v_index integer;
    v_from  integer := 1;
    v_to    integer;
BEGIN
    FOR v_name IN SELECT DISTINCT n FROM unnest(p_streams) AS n ORDER BY n LOOP
        INSERT INTO streams (name) VALUES (v_name) ON CONFLICT (name) DO NOTHING;
        PERFORM 1 FROM streams s WHERE s.name = v_name FOR UPDATE;
    END LOOP;
    FOR v_index IN 1 .. cardinality(p_streams) LOOP
        v_to := v_from + p_counts[v_index] - 1;
        RETURN QUERY SELECT * FROM append_events(p_streams[v_index], p_categories[v_index],
            p_expected_kinds[v_index], p_expected[v_index], p_ids[v_from:v_to],
            p_types[v_from:v_to], p_schema_versions[v_from:v_to], p_data[v_from:v_to],
            p_metadata[v_from:v_to]);
        v_from := v_to + 1;
    END LOOP;
    DELETE FROM streams s
     WHERE s.name = ANY(p_streams) AND s.last_version IS NULL AND NOT s.deleted;
END
$$;
