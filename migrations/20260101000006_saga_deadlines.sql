-- The deadline participant's own table: orders still pending, and when they
-- expire. Filled from OrderPlaced, emptied by the order's final event or by
-- the expiry itself.
CREATE TABLE saga_deadlines (
    order_id       uuid PRIMARY KEY,
    deadline       timestamptz NOT NULL,
    correlation_id text NOT NULL DEFAULT ''
);

CREATE INDEX saga_deadlines_by_deadline ON saga_deadlines (deadline);
