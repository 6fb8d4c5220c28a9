-- Rebuilds of read models by replay (projections/src/rebuild.rs): one row per
-- projection, about its latest rebuild. While one runs, its shadow tables
-- live in schema rebuild_<name>, and its checkpoint here moves in the same
-- transaction as its writes there, so a rebuild that was interrupted resumes.

CREATE TABLE projection_rebuilds (
    name            TEXT PRIMARY KEY,
    -- 'requested' (waiting for the projections service), 'running', 'done' or 'failed'.
    state           TEXT NOT NULL,
    -- The LogPosition of the last event applied to the shadow tables.
    commit_id       BIGINT NOT NULL DEFAULT 0,
    position        BIGINT NOT NULL DEFAULT 0,
    events_done     BIGINT NOT NULL DEFAULT 0,
    -- events_done plus the readable events not replayed yet, when last looked at.
    events_total    BIGINT NOT NULL DEFAULT 0,
    requested_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at      TIMESTAMPTZ,
    -- The current run (a resumed rebuild starts a new one): its rate is
    -- (events_done - run_events_from) over (updated_at - run_started_at).
    run_started_at  TIMESTAMPTZ,
    run_events_from BIGINT NOT NULL DEFAULT 0,
    finished_at     TIMESTAMPTZ,
    failed_event_id UUID,
    failed_position BIGINT,
    error           TEXT,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
