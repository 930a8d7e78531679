-- Proteus event store, migration 1: tables, indexes and the write functions.
--
-- Applied by the migration runner inside one transaction holding the schema's advisory lock,
-- with `search_path` set to the store's schema, so every name below lives in that schema.
-- The functions pin that `search_path` (SET search_path FROM CURRENT).

-- The head of the $all feed: the last position handed out. One row. Appends lock it (UPDATE)
-- to take their positions, so positions are assigned in commit order (see the crate's docs).
CREATE TABLE head (
    id       smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    position bigint   NOT NULL CHECK (position >= 0)
);
INSERT INTO head (id, position) VALUES (1, 0);

-- One row per stream that has events or was deleted. `last_version` is NULL only for a stream
-- deleted before it had any event (a reserved name).
CREATE TABLE streams (
    name          text    PRIMARY KEY,
    last_version  bigint  CHECK (last_version >= 0),
    last_position bigint  CHECK (last_position >= 1),
    deleted       boolean NOT NULL DEFAULT false
);

-- Every event, keyed by its global position: the $all feed.
CREATE TABLE events (
    position       bigint PRIMARY KEY CHECK (position >= 1),
    stream         text   NOT NULL,
    version        bigint NOT NULL CHECK (version >= 0),
    category       text   NOT NULL,
    event_id       text   NOT NULL,
    event_type     text   NOT NULL,
    schema_version bigint,
    -- Raw JSON bytes exactly as appended (validated by the domain before they get here).
    data           bytea  NOT NULL,
    metadata       bytea,
    recorded_ms    bigint NOT NULL,
    -- A stream's events in order; one event per version.
    CONSTRAINT events_stream_version UNIQUE (stream, version),
    -- Idempotency: an event id is used once per stream.
    CONSTRAINT events_stream_event_id UNIQUE (stream, event_id)
);

-- Category reads in $all order.
CREATE INDEX events_category_position ON events (category, position);

-- The latest snapshot of each stream.
CREATE TABLE snapshots (
    stream        text   PRIMARY KEY,
    version       bigint NOT NULL CHECK (version >= 0),
    snapshot_type text   NOT NULL,
    data          bytea  NOT NULL,
    recorded_ms   bigint NOT NULL
);

-- Whether a stream whose last version is `actual` (NULL: no stream) meets an expected version:
-- kind 0 any, 1 no stream, 2 stream exists, 3 exactly `expected` (-1 never matches).
CREATE FUNCTION expected_matches(kind smallint, expected bigint, actual bigint)
RETURNS boolean
LANGUAGE sql IMMUTABLE
AS $$
    SELECT CASE kind
        WHEN 0 THEN true
        WHEN 1 THEN actual IS NULL
        WHEN 2 THEN actual IS NOT NULL
        ELSE COALESCE(actual = expected, false)
    END
$$;

-- One append, atomically: lock the stream's row, refuse a deleted stream, recognise a retry by
-- its event ids, check the expected version, then take positions from `head` (row lock held
-- until commit), insert the events, update the stream and notify listeners.
--
-- o_status: 0 written (o_first_version, o_first_position), 1 stream deleted, 2 wrong expected
-- version (o_actual), 3 some ids are already in the stream (o_known_versions and
-- o_known_positions, per proposed event, NULL where unknown; the caller decides).
CREATE FUNCTION append_events(
    p_stream          text,
    p_category        text,
    p_expected_kind   smallint,
    p_expected        bigint,
    p_ids             text[],
    p_types           text[],
    p_schema_versions bigint[],
    p_data            bytea[],
    p_metadata        bytea[],
    -- The append's events are elements p_offset + 1 to p_offset + p_count of the arrays
    -- (append_batch passes the arrays of a whole batch); NULL p_count: all of them.
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
        -- Refuse before creating anything, so a failed append leaves no row behind.
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
            -- Another transaction created it meanwhile (and has committed): lock it.
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
    -- From here to the commit this transaction holds the head row: the next append takes its
    -- positions only once this one is committed and visible.
    UPDATE head SET position = position + v_count WHERE id = 1
        RETURNING position - v_count INTO v_base;
    INSERT INTO events (position, stream, version, category, event_id, event_type,
                        schema_version, data, metadata, recorded_ms)
    SELECT v_base + i.ord - p_offset, p_stream, v_first + i.ord - p_offset - 1, p_category,
           i.id, i.t, i.sv, i.d, i.m, v_now
      FROM unnest(p_ids, p_types, p_schema_versions, p_data, p_metadata)
           WITH ORDINALITY AS i(id, t, sv, d, m, ord)
     WHERE i.ord > p_offset AND i.ord <= p_offset + v_count;
    UPDATE streams SET last_version = v_first + v_count - 1, last_position = v_base + v_count
     WHERE name = p_stream;
    PERFORM pg_notify(current_schema() || '.head', (v_base + v_count)::text);
    RETURN QUERY SELECT 0::smallint, v_last, v_first, v_base + 1, NULL::bigint[], NULL::bigint[];
END
$$;

-- Several appends in one transaction (group commit: one commit, one fsync for all). Every
-- stream of the batch is locked first, in name order, creating a placeholder row for a new
-- one, so the head row is always the last lock taken and concurrent batches and single
-- appends cannot deadlock; placeholders of new streams whose appends all failed are removed
-- before the commit, so nobody ever sees them. Appends apply in order (a later one sees the
-- earlier ones of the batch); append i has p_counts[i] events, following those of the
-- appends before it in the event arrays. One result row per append, in order, as
-- append_events answers.
CREATE FUNCTION append_batch(
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
    v_name   text;
    v_index  integer;
    v_offset integer := 0;
BEGIN
    FOR v_name IN SELECT DISTINCT n FROM unnest(p_streams) AS n ORDER BY n LOOP
        INSERT INTO streams (name) VALUES (v_name) ON CONFLICT (name) DO NOTHING;
        PERFORM 1 FROM streams s WHERE s.name = v_name FOR UPDATE;
    END LOOP;
    FOR v_index IN 1 .. cardinality(p_streams) LOOP
        RETURN QUERY SELECT * FROM append_events(p_streams[v_index], p_categories[v_index],
            p_expected_kinds[v_index], p_expected[v_index], p_ids, p_types, p_schema_versions,
            p_data, p_metadata, v_offset, p_counts[v_index]);
        v_offset := v_offset + p_counts[v_index];
    END LOOP;
    DELETE FROM streams s
     WHERE s.name = ANY(p_streams) AND s.last_version IS NULL AND NOT s.deleted;
END
$$;

-- Tombstones a stream. o_status: 0 deleted (o_actual: its last version), 1 already deleted,
-- 2 wrong expected version (o_actual).
CREATE FUNCTION delete_stream(p_stream text, p_expected_kind smallint, p_expected bigint)
RETURNS TABLE (o_status smallint, o_actual bigint)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_last    bigint;
    v_deleted boolean;
BEGIN
    SELECT s.last_version, s.deleted INTO v_last, v_deleted
      FROM streams s WHERE s.name = p_stream FOR UPDATE;
    IF NOT FOUND THEN
        IF NOT expected_matches(p_expected_kind, p_expected, NULL) THEN
            RETURN QUERY SELECT 2::smallint, NULL::bigint;
            RETURN;
        END IF;
        -- Reserve the name.
        INSERT INTO streams (name, deleted) VALUES (p_stream, true) ON CONFLICT (name) DO NOTHING;
        IF FOUND THEN
            RETURN QUERY SELECT 0::smallint, NULL::bigint;
            RETURN;
        END IF;
        SELECT s.last_version, s.deleted INTO v_last, v_deleted
          FROM streams s WHERE s.name = p_stream FOR UPDATE;
    END IF;
    IF v_deleted THEN
        RETURN QUERY SELECT 1::smallint, v_last;
        RETURN;
    END IF;
    IF NOT expected_matches(p_expected_kind, p_expected, v_last) THEN
        RETURN QUERY SELECT 2::smallint, v_last;
        RETURN;
    END IF;
    UPDATE streams SET deleted = true WHERE name = p_stream;
    -- The snapshot can no longer be read: free its space.
    DELETE FROM snapshots WHERE stream = p_stream;
    RETURN QUERY SELECT 0::smallint, v_last;
END
$$;

-- Stores a snapshot. o_status: 0 stored, 1 stream deleted, 4 no such stream, 5 ahead of the
-- stream (o_actual: its last version), 6 older than the stored one (o_actual: its version).
CREATE FUNCTION put_snapshot(p_stream text, p_version bigint, p_type text, p_data bytea)
RETURNS TABLE (o_status smallint, o_actual bigint)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_last    bigint;
    v_deleted boolean;
    v_stored  bigint;
BEGIN
    SELECT s.last_version, s.deleted INTO v_last, v_deleted
      FROM streams s WHERE s.name = p_stream FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 4::smallint, NULL::bigint;
        RETURN;
    END IF;
    IF v_deleted THEN
        RETURN QUERY SELECT 1::smallint, v_last;
        RETURN;
    END IF;
    IF v_last IS NULL OR p_version > v_last THEN
        RETURN QUERY SELECT 5::smallint, v_last;
        RETURN;
    END IF;
    SELECT sn.version INTO v_stored FROM snapshots sn WHERE sn.stream = p_stream;
    IF FOUND AND v_stored > p_version THEN
        RETURN QUERY SELECT 6::smallint, v_stored;
        RETURN;
    END IF;
    INSERT INTO snapshots (stream, version, snapshot_type, data, recorded_ms)
    VALUES (p_stream, p_version, p_type, p_data,
            floor(extract(epoch FROM statement_timestamp()) * 1000)::bigint)
    ON CONFLICT (stream) DO UPDATE
        SET version = EXCLUDED.version, snapshot_type = EXCLUDED.snapshot_type,
            data = EXCLUDED.data, recorded_ms = EXCLUDED.recorded_ms;
    RETURN QUERY SELECT 0::smallint, NULL::bigint;
END
$$;
