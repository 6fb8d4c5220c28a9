-- The order each story row concerns (its stream's, or an inventory event's
-- order_id): a correlation id is the client's to choose and may be reused,
-- so an order's story keeps to the order's own events. NULL: no order
-- (a stock receipt), or a row written before this column (rebuild to fill).
ALTER TABLE rm_story ADD COLUMN order_id UUID;
