-- The latest snapshot of an aggregate's state per stream (see
-- `EventStore::read_snapshot`): the state as of `stream_version`, in the
-- shape `schema_version` of the aggregate's code. A loader reads it and the
-- events after it; one of another schema is ignored. Derived data: deleting
-- rows (or the table's content) only makes the next loads fold more events.
CREATE TABLE es_snapshots (
    stream_id      text PRIMARY KEY,
    stream_version bigint NOT NULL CHECK (stream_version > 0),
    position       bigint NOT NULL,
    schema_version integer NOT NULL,
    state          jsonb NOT NULL,
    taken_at       timestamptz NOT NULL DEFAULT now()
);
