-- Notifications to customers (e-mail) and merchants (webhooks): the notifier
-- process (command-side/notifier, ADR 0015).

-- A merchant's webhook endpoint, registered through POST /v1/webhooks.
-- Deleting one keeps the row (its deliveries stay listed) and stops sending.
CREATE TABLE webhook_endpoints (
    endpoint_id UUID PRIMARY KEY,
    url         TEXT NOT NULL,
    -- Event types it hears: order.confirmed, order.rejected, order.cancelled, order.shipped.
    event_types TEXT[] NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    -- whsec_<base64>: the key of the Standard Webhooks signature, shown once at registration.
    secret      TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at  TIMESTAMPTZ
);

-- One message to one recipient because of one event: the outbox the
-- notifier sends from. Its id is derived from the event id and the recipient,
-- so a redelivered event records nothing new, and a resend (after a crash
-- between sending and recording) carries the same id (webhook-id, Message-ID).
CREATE TABLE notification_deliveries (
    delivery_id     UUID PRIMARY KEY,
    channel         TEXT NOT NULL CHECK (channel IN ('email', 'webhook')),
    -- The webhook endpoint; NULL for e-mail.
    endpoint_id     UUID,
    event_id        UUID NOT NULL,
    event_type      TEXT NOT NULL,
    order_id        UUID NOT NULL,
    correlation_id  TEXT NOT NULL DEFAULT '',
    -- Webhooks: the JSON body. E-mail: the text (no address in it).
    body            TEXT NOT NULL,
    subject         TEXT,
    -- E-mail: the address as the event has it, sealed under the customer's
    -- key (ADR 0014), opened only to send: an erasure stops the mail.
    recipient_key_id UUID,
    recipient_sealed TEXT,
    status          TEXT NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'dead', 'skipped', 'cancelled')),
    attempts        INT NOT NULL DEFAULT 0,
    -- Pending: when it is due. While an attempt runs, the lease's end: a
    -- notifier that died mid-attempt leaves it to be sent again from then.
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at     TIMESTAMPTZ,
    last_error      TEXT
);
CREATE INDEX notification_deliveries_due ON notification_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX notification_deliveries_endpoint ON notification_deliveries (endpoint_id, created_at DESC);
CREATE INDEX notification_deliveries_finished ON notification_deliveries (finished_at) WHERE status <> 'pending';

-- Every attempt, with its answer: GET /v1/webhooks/{id}/deliveries.
CREATE TABLE notification_attempts (
    delivery_id  UUID NOT NULL REFERENCES notification_deliveries ON DELETE CASCADE,
    attempt      INT NOT NULL,
    attempted_at TIMESTAMPTZ NOT NULL,
    -- HTTP status of a webhook's answer (NULL: none came, see error).
    status_code  INT,
    latency_ms   DOUBLE PRECISION NOT NULL,
    error        TEXT,
    PRIMARY KEY (delivery_id, attempt)
);
