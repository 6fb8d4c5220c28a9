-- The event store: every event in one table that is also the global log.
--
-- Optimistic concurrency needs no table of its own: an append writes its
-- events at the stream's next versions, and the unique index on
-- (stream_id, stream_version) refuses a racing append that read the same
-- version. Appends are one statement (event-store/src/postgres/queries.rs).
--
-- The global log is ordered by (transaction_id, position), not by position
-- alone: a sequence hands out positions in insert order, but transactions
-- commit in another order. Readers only read events whose transaction id is
-- below es_read_horizon(), so nothing can commit "behind" them later.
-- See event-store/src/postgres/mod.rs.

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
