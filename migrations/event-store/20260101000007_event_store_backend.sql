-- Which event store the read models, checkpoints and saga state in this
-- database were built from (`postgres` or `eventstoredb`), recorded by the
-- first service that opens one. Positions of one backend mean nothing in
-- the other, so a service that finds another backend recorded refuses to
-- start instead of mixing them (see docs/operations.md to switch on purpose).
CREATE TABLE event_store_backend (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    backend     text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
