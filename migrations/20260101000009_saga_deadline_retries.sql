-- Saga deadlines (command-side/saga/src/deadline.rs): when the watcher looks
-- at a row next, apart from the deadline itself. A row whose expiry fails is
-- tried again later (due_at moves back, attempts counts), so rows that keep
-- failing never stay at the head of the queue and hold up every later one.
ALTER TABLE saga_deadlines
    ADD COLUMN due_at timestamptz,
    ADD COLUMN attempts integer NOT NULL DEFAULT 0;
UPDATE saga_deadlines SET due_at = deadline;
ALTER TABLE saga_deadlines ALTER COLUMN due_at SET NOT NULL;
DROP INDEX saga_deadlines_by_deadline;
CREATE INDEX saga_deadlines_by_due_at ON saga_deadlines (due_at);
