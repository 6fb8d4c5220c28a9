-- When each pending order was placed: the saga reports how long orders take
-- from placed to their end (`saga_order_seconds`, the placed-to-confirmed SLO).
-- NULL for orders armed before this column existed (not reported).
ALTER TABLE saga_deadlines ADD COLUMN placed_at timestamptz;
