-- Personal data, sealed with a key per customer (service-kit/src/personal_data.rs, ADR 0014).
-- A customer's data key, sealed with the master key of configuration; the
-- events carry only values sealed under it, with its key_id. Erasing the
-- customer sets wrapped_key to NULL: what was sealed under it reads as erased.
CREATE TABLE personal_data_keys (
    key_id        UUID PRIMARY KEY,
    customer_id   TEXT NOT NULL,
    wrapped_key   BYTEA,
    -- Which master key sealed it (the first 8 hex digits of its SHA-256).
    master_key_id TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    erased_at     TIMESTAMPTZ
);
-- One live key per customer; erased ones stay as tombstones.
CREATE UNIQUE INDEX personal_data_keys_live ON personal_data_keys (customer_id) WHERE erased_at IS NULL;

-- The orders read model keeps the contact e-mail as the event has it: sealed.
-- The query API opens it when it answers, so an erasure shows at once.
ALTER TABLE rm_orders ADD COLUMN contact_key_id UUID, ADD COLUMN contact_email_sealed TEXT;
