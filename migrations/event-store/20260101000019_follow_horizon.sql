-- The read horizon for readers that follow the log (the subscriptions of the
-- relay and the projections), without looking up every open transaction.
--
-- es_read_horizon() leaves out the open transactions of other databases by
-- reading pg_stat_activity whenever any transaction is open. Under load one
-- always is, and that read is dear: PostgreSQL copies every backend's status
-- and takes ProcArrayLock once per backend to learn its xid, against the
-- commits that take it to end theirs. Measured during the saga benchmark at
-- 400 orders/s (auto_explain): the function scan alone took 1.1-8.8 ms of a
-- page read whose rows took 0.03 ms.
--
-- A follower can afford a moment's lag that an interactive read cannot, so
-- this function answers the oldest open transaction not known to belong to
-- another database, and looks it up only when it has held events back for
-- 50 ms: then it finds which open transactions belong to other databases and
-- remembers them for the session (an xid8 is never reused, so what is known
-- stays true). Until then, and for a transaction of this database, it holds
-- the log back exactly as es_read_horizon() does: it never answers a horizon
-- above a transaction that may still commit here. A long transaction of
-- another database costs a follower 50 ms once per session, not a lookup per
-- page. es_read_horizon() is unchanged for read_all and the stats. See ADR 0001.
CREATE FUNCTION es_follow_horizon() RETURNS XID8
LANGUAGE plpgsql STABLE AS $$
DECLARE
    snapshot pg_snapshot := pg_current_snapshot();
    foreign_xids xid8[] := coalesce(nullif(current_setting('es.foreign_xids', true), ''), '{}')::xid8[];
    oldest xid8;
    held_since timestamptz;
BEGIN
    -- Nothing open in the cluster: everything below xmax has ended.
    IF pg_snapshot_xmin(snapshot) = pg_snapshot_xmax(snapshot) THEN
        RETURN pg_snapshot_xmax(snapshot);
    END IF;
    SELECT min(x) INTO oldest FROM pg_snapshot_xip(snapshot) AS x WHERE x <> ALL (foreign_xids);
    IF oldest IS NULL THEN
        RETURN pg_snapshot_xmax(snapshot);
    END IF;
    -- A new oldest transaction: most end within a millisecond or two.
    IF oldest::text IS DISTINCT FROM current_setting('es.oldest_xid', true) THEN
        PERFORM set_config('es.oldest_xid', oldest::text, false),
                set_config('es.oldest_since', clock_timestamp()::text, false);
        RETURN oldest;
    END IF;
    held_since := coalesce(nullif(current_setting('es.oldest_since', true), ''), '-infinity')::timestamptz;
    IF clock_timestamp() - held_since < interval '50 milliseconds' THEN
        RETURN oldest;
    END IF;
    -- It holds back nothing committed (ORDER BY ... LIMIT 1 keeps even a
    -- generic plan on the log's index): no need to know whose it is.
    PERFORM 1 FROM es_events WHERE transaction_id >= oldest ORDER BY transaction_id LIMIT 1;
    IF NOT FOUND THEN
        RETURN oldest;
    END IF;
    -- Which open transactions are of another database (as es_read_horizon()).
    SELECT coalesce(array_agg(x), '{}') INTO foreign_xids
    FROM pg_snapshot_xip(snapshot) AS x
    WHERE EXISTS (
        SELECT 1 FROM pg_stat_activity a
        WHERE a.backend_xid::TEXT::BIGINT = x::TEXT::BIGINT % 4294967296
          AND a.datid <> (SELECT d.oid FROM pg_database d WHERE d.datname = current_database()));
    SELECT min(x) INTO oldest FROM pg_snapshot_xip(snapshot) AS x WHERE x <> ALL (foreign_xids);
    -- Only transactions still open are remembered; the next lookup of this
    -- one, if it is of this database, is 50 ms away.
    PERFORM set_config('es.foreign_xids', foreign_xids::text, false),
            set_config('es.oldest_xid', coalesce(oldest::text, ''), false),
            set_config('es.oldest_since', clock_timestamp()::text, false);
    RETURN coalesce(oldest, pg_snapshot_xmax(snapshot));
END
$$;
