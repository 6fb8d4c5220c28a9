-- Read models, written only by the projectors (projections/src/). Each
-- projector's checkpoint commits in the same transaction as its writes.

CREATE TABLE projection_checkpoints (
    name            TEXT PRIMARY KEY,
    -- The LogPosition of the last event applied: (commit, position).
    commit_id       BIGINT NOT NULL DEFAULT 0,
    position        BIGINT NOT NULL DEFAULT 0,
    events_processed  BIGINT NOT NULL DEFAULT 0,
    -- 'running', or 'failed' (with the event and the error) until restarted.
    state           TEXT NOT NULL DEFAULT 'running',
    failed_event_id UUID,
    failed_position BIGINT,
    error           TEXT,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE rm_orders (
    order_id        UUID PRIMARY KEY,
    customer_id     TEXT NOT NULL,
    status          TEXT NOT NULL,
    payment_status  TEXT NOT NULL,
    reason          TEXT,
    currency        TEXT NOT NULL,
    total_cents     BIGINT NOT NULL,
    lines           JSONB NOT NULL,
    -- The order stream's version, and the payment stream's.
    version         BIGINT NOT NULL,
    payment_version BIGINT NOT NULL DEFAULT 0,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);

-- The list queries: newest first, by customer and/or status.
CREATE INDEX rm_orders_newest ON rm_orders (created_at DESC, order_id DESC);
CREATE INDEX rm_orders_customer ON rm_orders (customer_id, created_at DESC, order_id DESC);
CREATE INDEX rm_orders_status ON rm_orders (status, created_at DESC, order_id DESC);

CREATE TABLE rm_inventory (
    sku        TEXT PRIMARY KEY,
    on_hand    BIGINT NOT NULL,
    reserved   BIGINT NOT NULL,
    version    BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE rm_payments (
    order_id     UUID PRIMARY KEY,
    status       TEXT NOT NULL,
    amount_cents BIGINT NOT NULL,
    currency     TEXT NOT NULL,
    provider_ref TEXT,
    version      BIGINT NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL
);
