-- The event store: streams with their versions, and every event in one table
-- that is also the global log.
--
-- The global log is ordered by (transaction_id, position), not by position
-- alone: a sequence hands out positions in insert order, but transactions
-- commit in another order. Readers only read events whose transaction id is
-- below es_read_horizon(), so nothing can commit "behind" them later.
-- See event-store/src/postgres/mod.rs.

CREATE TABLE es_streams (
    stream_id TEXT PRIMARY KEY,
    version   BIGINT NOT NULL CHECK (version > 0)
);

CREATE TABLE es_events (
    position        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id  XID8 NOT NULL DEFAULT pg_current_xact_id(),
    event_id        UUID NOT NULL,
    stream_id       TEXT NOT NULL,
    stream_version  BIGINT NOT NULL CHECK (stream_version > 0),
    event_type      TEXT NOT NULL,
    schema_version  INT NOT NULL CHECK (schema_version > 0),
    payload         JSONB NOT NULL,
    metadata        JSONB NOT NULL,
    recorded_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT es_events_event_id_key UNIQUE (event_id),
    CONSTRAINT es_events_stream_version_key UNIQUE (stream_id, stream_version)
);

CREATE INDEX es_events_log_order ON es_events (transaction_id, position);

-- Appends events to one stream in one round trip and one transaction.
--
-- p_expected: NULL = any version, 0 = the stream must not exist, n = the
-- stream must be at version n. Returns one row:
--   ('appended',  new version, transaction id, position of the last event)
--   ('conflict',  actual version, NULL, NULL)   nothing written
--   ('duplicate', NULL, NULL, NULL)             some ids are stored already; nothing written
-- Writers of different streams never wait for each other; writers of one
-- stream queue on its es_streams row.
CREATE FUNCTION es_append(
    p_stream_id       TEXT,
    p_expected        BIGINT,
    p_event_ids       UUID[],
    p_types           TEXT[],
    p_schema_versions INT[],
    p_payloads        JSONB[],
    p_metadata        JSONB[]
) RETURNS TABLE (result TEXT, new_version BIGINT, commit_id BIGINT, last_position BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
    v_count   INT := cardinality(p_event_ids);
    v_version BIGINT;
    v_last    BIGINT;
BEGIN
    IF EXISTS (SELECT 1 FROM es_events e WHERE e.event_id = ANY (p_event_ids)) THEN
        RETURN QUERY SELECT 'duplicate'::TEXT, NULL::BIGINT, NULL::BIGINT, NULL::BIGINT;
        RETURN;
    END IF;

    IF p_expected IS NULL THEN
        INSERT INTO es_streams AS s (stream_id, version) VALUES (p_stream_id, v_count)
        ON CONFLICT (stream_id) DO UPDATE SET version = s.version + v_count
        RETURNING s.version INTO v_version;
    ELSIF p_expected = 0 THEN
        INSERT INTO es_streams (stream_id, version) VALUES (p_stream_id, v_count)
        ON CONFLICT (stream_id) DO NOTHING
        RETURNING version INTO v_version;
    ELSE
        UPDATE es_streams SET version = version + v_count
        WHERE stream_id = p_stream_id AND version = p_expected
        RETURNING version INTO v_version;
    END IF;

    IF v_version IS NULL THEN
        -- Each statement sees what committed before it: a racing identical
        -- append that won shows up here as a duplicate, not a conflict.
        IF EXISTS (SELECT 1 FROM es_events e WHERE e.event_id = ANY (p_event_ids)) THEN
            RETURN QUERY SELECT 'duplicate'::TEXT, NULL::BIGINT, NULL::BIGINT, NULL::BIGINT;
        ELSE
            RETURN QUERY SELECT 'conflict'::TEXT,
                coalesce((SELECT s.version FROM es_streams s WHERE s.stream_id = p_stream_id), 0),
                NULL::BIGINT, NULL::BIGINT;
        END IF;
        RETURN;
    END IF;

    WITH inserted AS (
        INSERT INTO es_events (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
        SELECT e.event_id, p_stream_id, v_version - v_count + e.ord, e.event_type, e.schema_version, e.payload, e.metadata
        FROM unnest(p_event_ids, p_types, p_schema_versions, p_payloads, p_metadata)
             WITH ORDINALITY AS e (event_id, event_type, schema_version, payload, metadata, ord)
        ORDER BY e.ord
        RETURNING es_events.position
    )
    SELECT max(i.position) INTO v_last FROM inserted i;

    RETURN QUERY SELECT 'appended'::TEXT, v_version, pg_current_xact_id()::TEXT::BIGINT, v_last;
END
$$;

-- The read horizon of the global log: every transaction below it has ended,
-- so no event with a smaller transaction id can still commit. It is the
-- oldest transaction still open in this database, or, when there is none,
-- the first transaction id the current snapshot does not know yet.
-- Transactions open in other databases of the cluster are ignored: a
-- transaction writes to one database only. One whose database cannot be
-- told (it just ended, or its row is hidden from this role) still counts.
CREATE FUNCTION es_read_horizon() RETURNS XID8
LANGUAGE sql STABLE AS $$
    SELECT coalesce(
        (SELECT min(open_xid)
         FROM pg_snapshot_xip(snapshot.s) AS open_xid
         WHERE NOT EXISTS (
             SELECT 1 FROM pg_stat_activity a
             WHERE a.backend_xid::TEXT::BIGINT = open_xid::TEXT::BIGINT % 4294967296
               AND a.datid <> (SELECT d.oid FROM pg_database d WHERE d.datname = current_database()))),
        pg_snapshot_xmax(snapshot.s))
    FROM (SELECT pg_current_snapshot() AS s) snapshot
$$;
