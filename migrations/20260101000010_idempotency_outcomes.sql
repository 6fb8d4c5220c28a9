-- Idempotency keys (command-side/application/src/idempotency.rs): the
-- outcome of the request that claimed a key, as the application layer
-- answered it (`{"accepted": {...}}` or `{"refused": {"kind": ...}}`), instead
-- of an HTTP response. Rows completed before this migration keep `status`
-- and `body`, which the application reads as the same outcomes.
ALTER TABLE http_idempotency_keys ADD COLUMN outcome jsonb;
