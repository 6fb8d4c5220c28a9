-- A session of this database that writes and then sits idle in its
-- transaction holds the log's read horizon back: every subscriber (relay,
-- projections) waits until it ends, and nothing of the system's own does
-- that. End such sessions after a minute (new sessions of this database
-- take the setting; a session may still set its own). Needs the database's
-- owner or a superuser; without the privilege the migration warns and the
-- operator sets it (docs/operations.md).
DO $$
BEGIN
    EXECUTE format('ALTER DATABASE %I SET idle_in_transaction_session_timeout = %L', current_database(), '1min');
EXCEPTION WHEN insufficient_privilege THEN
    RAISE WARNING 'cannot set idle_in_transaction_session_timeout on database %: set it to 1min by hand',
        current_database();
END
$$;
