-- The story read model (projections/read-models/src/story.rs): one row per
-- event of the shop's streams, keyed by its log position, so the admin API
-- tells an order's story (every event of its correlation ids, across the
-- order, payment and inventory streams, in log order) without reading any
-- stream whole. Rebuilt from the log like every read model.
CREATE TABLE rm_story (
    position       BIGINT PRIMARY KEY,
    correlation_id TEXT NOT NULL,
    stream_id      TEXT NOT NULL,
    stream_version BIGINT NOT NULL,
    event_type     TEXT NOT NULL,
    event_id       UUID NOT NULL,
    causation_id   TEXT NOT NULL,
    actor          TEXT NOT NULL,
    recorded_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX rm_story_correlation ON rm_story (correlation_id, position);
