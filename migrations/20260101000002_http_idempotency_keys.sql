-- Idempotency keys of the command API (command-side/src/idempotency.rs).
-- A row is claimed by the first request with a key; status and body are
-- filled in when it completes. Rows older than IDEMPOTENCY_KEY_TTL are deleted.
CREATE TABLE http_idempotency_keys (
    principal    TEXT NOT NULL,
    key          TEXT NOT NULL,
    fingerprint  BYTEA NOT NULL,
    requested_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    lease_until  TIMESTAMPTZ NOT NULL,
    status       SMALLINT,
    body         JSONB,
    location     TEXT,
    PRIMARY KEY (principal, key)
);

CREATE INDEX http_idempotency_keys_requested_at ON http_idempotency_keys (requested_at);
