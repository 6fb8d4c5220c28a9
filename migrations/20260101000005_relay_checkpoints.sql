-- Where the relay (command-side/src/relay.rs) stands: the last event of the
-- log that JetStream acknowledged, per stream it publishes to.
CREATE TABLE relay_checkpoints (
    name             TEXT PRIMARY KEY,
    commit_id        BIGINT NOT NULL DEFAULT 0,
    position         BIGINT NOT NULL DEFAULT 0,
    events_published BIGINT NOT NULL DEFAULT 0,
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
