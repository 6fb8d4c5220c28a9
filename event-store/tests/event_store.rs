//! The event store's integration tests: the conformance suite against every
//! backend, and what only PostgreSQL can show (open transactions, outages).

use std::sync::Arc;
use std::time::{Duration, Instant};

use event_store::conformance::{self, assert_quiet, event, take};
use event_store::postgres::GroupCommitConfig;
use event_store::testing::{with_database, Harness, HeldAppend, PgHarness, PlainHarness};
use event_store::{Backend, EventStore, ExpectedVersion, MemoryEventStore, PgEventStore, PgStoreConfig, StoreError};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;

/// A local port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Every operation of a store whose backend cannot be reached fails with
/// `Unavailable`, and a subscription yields that error, all within `limit`.
async fn assert_unavailable_everywhere(store: &dyn EventStore, limit: Duration) {
    fn unavailable<T: std::fmt::Debug>(result: Result<T, StoreError>) -> bool {
        matches!(result, Err(StoreError::Unavailable(_)))
    }
    let started = Instant::now();
    assert!(unavailable(store.append("order-1", ExpectedVersion::Any, vec![event("E", json!({}))]).await));
    assert!(unavailable(store.read_stream("order-1", 1).await));
    assert!(unavailable(store.read_all(None, 10).await));
    assert!(unavailable(store.stats().await));
    assert!(unavailable(store.count_after(None, 10).await));
    assert!(unavailable(store.locate(1).await));
    let mut subscription = store.subscribe(None);
    let item = tokio::time::timeout(Duration::from_secs(10), futures_util::StreamExt::next(&mut subscription)).await;
    assert!(matches!(item, Ok(Some(Err(StoreError::Unavailable(_))))), "{item:?}");
    assert!(started.elapsed() < limit, "took {:?}", started.elapsed());
}

/// Connections per test database: enough for the stress test's 8 writers,
/// its subscriber and the store's LISTEN and NOTIFY tasks.
const POOL_SIZE: u32 = 16;

mod memory {
    use super::*;

    macro_rules! memory_cases {
        ($($case:ident),+ $(,)?) => {$(
            #[tokio::test]
            async fn $case() {
                conformance::$case(Arc::new(PlainHarness(MemoryEventStore::new()))).await;
            }
        )+};
    }
    event_store::conformance_cases!(memory_cases);
}

/// The shared tail, with a window of 64 events (so that the stress test
/// also reads past it), over both backends.
mod shared {
    use event_store::testing::SharedHarness;

    use super::*;

    macro_rules! shared_memory_cases {
        ($($case:ident),+ $(,)?) => {$(
            #[tokio::test]
            async fn $case() {
                conformance::$case(Arc::new(SharedHarness(PlainHarness(MemoryEventStore::new())))).await;
            }
        )+};
    }

    mod memory {
        use super::*;
        event_store::conformance_cases!(shared_memory_cases);
    }

    macro_rules! shared_postgres_cases {
        ($($case:ident),+ $(,)?) => {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                with_database(POOL_SIZE, |pool| {
                    conformance::$case(Arc::new(SharedHarness(PgHarness(PgEventStore::new(pool)))))
                })
                .await;
            }
        )+};
    }

    mod postgres {
        use super::*;
        event_store::conformance_cases!(shared_postgres_cases);
    }
}

/// The suite against EventStoreDB, when `EVENTSTOREDB_URL` names a server
/// (`esdb://localhost:2113?tls=false`); without one every case returns at
/// once and `esdb::suite_ran_or_was_skipped` says so in the test output.
#[cfg(feature = "eventstoredb")]
mod esdb {
    use event_store::testing::{esdb_store, EVENTSTOREDB_URL};

    use super::*;

    #[test]
    fn suite_ran_or_was_skipped() {
        match std::env::var(EVENTSTOREDB_URL) {
            Ok(url) if !url.trim().is_empty() => eprintln!("the conformance suite ran against EventStoreDB ({EVENTSTOREDB_URL} is set)"),
            _ => eprintln!(
                "SKIPPED: the EventStoreDB conformance suite did not run: set {EVENTSTOREDB_URL}=esdb://host:2113?tls=false to run it"
            ),
        }
    }

    macro_rules! esdb_cases {
        ($($case:ident),+ $(,)?) => {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if let Some(store) = esdb_store() {
                    conformance::$case(Arc::new(PlainHarness(store))).await;
                }
            }
        )+};
    }
    event_store::conformance_cases!(esdb_cases);

    /// Needs no server: with nothing listening, every operation fails fast
    /// with a typed error and a subscription yields it instead of hanging.
    #[tokio::test]
    async fn an_unreachable_server_is_a_typed_error_not_a_hang() {
        use event_store::esdb::{EsdbConfig, EsdbEventStore};
        let port = closed_port();
        let config = EsdbConfig {
            operation_timeout: Duration::from_secs(2),
            ..EsdbConfig::new(&format!("esdb://127.0.0.1:{port}?tls=false&maxDiscoverAttempts=2"), &["order"])
        };
        let store = EsdbEventStore::connect(config).unwrap();
        assert_unavailable_everywhere(&store, Duration::from_secs(30)).await;
    }

    /// Needs no server: the 4.0 client gives up for good when it finds no
    /// node (every later call: `ConnectionClosed`); the store replaces it.
    /// Started before anything listens on its port, it knocks again once
    /// something does (a plain TCP listener is enough to see the attempt).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_started_before_its_server_connects_once_the_server_listens() {
        use event_store::esdb::{EsdbConfig, EsdbEventStore};
        let port = closed_port();
        let config = EsdbConfig {
            operation_timeout: Duration::from_secs(2),
            max_error_backoff: Duration::from_millis(300),
            ..EsdbConfig::new(
                &format!("esdb://127.0.0.1:{port}?tls=false&maxDiscoverAttempts=2&discoveryInterval=10"),
                &["order"],
            )
        };
        let store = EsdbEventStore::connect(config).unwrap();
        // Nothing listens: the client gives up on the node, then answers "closed".
        for _ in 0..3 {
            let refused = store.read_stream("order-1", 1).await;
            assert!(matches!(refused, Err(StoreError::Unavailable(_))), "{refused:?}");
        }
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let caller = tokio::spawn(async move {
            loop {
                let _ = store.read_stream("order-1", 1).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let knocked = tokio::time::timeout(Duration::from_secs(20), listener.accept()).await;
        caller.abort();
        assert!(matches!(knocked, Ok(Ok(_))), "the store never connected again: {knocked:?}");
    }

    /// Appends to streams outside the store's categories are refused: the
    /// log (`$all` filtered to them) must hold every accepted event.
    #[tokio::test]
    async fn streams_of_other_categories_are_refused_before_any_io() {
        use event_store::esdb::{EsdbConfig, EsdbEventStore};
        let store = EsdbEventStore::connect(EsdbConfig::new("esdb://127.0.0.1:1?tls=false", &["order"])).unwrap();
        let refused = store.append("basket-1", ExpectedVersion::Any, vec![event("E", json!({}))]).await;
        assert!(matches!(refused, Err(StoreError::InvalidAppend(ref why)) if why.contains("basket-1")), "{refused:?}");
        assert_eq!(
            store.guarantees(),
            event_store::Guarantees { store_wide_event_ids: false, any_version_repeats_always_recognised: false }
        );
    }
}

mod postgres {
    use event_store::testing::eventually;

    use super::*;

    macro_rules! postgres_cases {
        ($($case:ident),+ $(,)?) => {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                with_database(POOL_SIZE, |pool| conformance::$case(Arc::new(PgHarness(PgEventStore::new(pool))))).await;
            }
        )+};
    }
    event_store::conformance_cases!(postgres_cases);

    /// A transaction that stays open for 30 seconds holds the log back; when
    /// it commits, a subscriber catches up within 2 seconds and skips nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_open_transaction_stalls_subscribers_instead_of_making_them_skip() {
        with_database(POOL_SIZE, |pool| async move {
            let store = PgEventStore::new(pool.clone());
            let harness = PgHarness(store.clone());
            let mut subscription = store.subscribe(None);
            store.append("order-before", ExpectedVersion::NoStream, vec![event("Happened", json!({}))]).await.unwrap();
            assert_eq!(take(&mut subscription, 1).await[0].stream_id, "order-before");

            // The slow append takes its position first, then others commit after it.
            let slow =
                harness.hold_open("order-slow", ExpectedVersion::NoStream, &[event("Slow", json!({}))]).await.unwrap();
            for i in 0..5 {
                let stream = format!("order-fast{i}");
                store.append(&stream, ExpectedVersion::NoStream, vec![event("Fast", json!({}))]).await.unwrap();
            }
            assert_quiet(&mut subscription, Duration::from_secs(2)).await;
            let stats = store.stats().await.unwrap();
            assert_eq!(stats.held_back_events, 5, "the horizon lag is visible: {stats:?}");

            let slow_position = slow.commit().await.unwrap().log_position;
            let committed_at = Instant::now();
            let delivered = take(&mut subscription, 6).await;
            let waited = committed_at.elapsed();
            assert!(waited < Duration::from_secs(2), "caught up only after {waited:?}");
            let types: Vec<&str> = delivered.iter().map(|e| e.event_type.as_str()).collect();
            assert_eq!(types.iter().filter(|t| **t == "Slow").count(), 1);
            assert_eq!(types.iter().filter(|t| **t == "Fast").count(), 5);
            assert!(delivered.iter().any(|e| e.log_position == slow_position));
            assert_quiet(&mut subscription, Duration::from_millis(300)).await;
            assert_eq!(store.stats().await.unwrap().held_back_events, 0);
        })
        .await;
    }

    /// A session that writes in the events' database and then sits idle in
    /// its transaction holds the log back: the stats name it (its pid, how
    /// long it is open) and how long the first event waits; the database's
    /// idle-in-transaction timeout (a minute, set by the migrations; this
    /// session asks for three seconds) ends it, and the log moves on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_writing_transaction_shows_as_the_blocker_until_its_timeout_ends_it() {
        use sqlx::Connection;
        with_database(POOL_SIZE, |pool| async move {
            let store = PgEventStore::new(pool.clone());
            let options = pool.connect_options();
            // A session opened after the migrations (the pool's may be older).
            let mut idle = sqlx::PgConnection::connect_with(&options).await.unwrap();
            let setting: String =
                sqlx::query_scalar("SHOW idle_in_transaction_session_timeout").fetch_one(&mut idle).await.unwrap();
            assert_eq!(setting, "1min", "the migrations set the database's default");
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut idle).await.unwrap();
            sqlx::query("SET idle_in_transaction_session_timeout = '3s'").execute(&mut idle).await.unwrap();
            sqlx::query("BEGIN").execute(&mut idle).await.unwrap();
            sqlx::query("CREATE TEMP TABLE scratch (n int)").execute(&mut idle).await.unwrap();
            sqlx::query("SELECT pg_current_xact_id()").execute(&mut idle).await.unwrap();
            store.append("order-behind", ExpectedVersion::NoStream, vec![event("Happened", json!({}))]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            let stats = store.stats().await.unwrap();
            assert_eq!(stats.held_back_events, 1, "{stats:?}");
            assert!(stats.held_back_ms >= 200, "{stats:?}");
            let blocker = stats.blocker.expect("the blocker is named");
            assert_eq!((blocker.pid, blocker.prepared), (pid as u32, false));
            assert!(blocker.open_ms >= 300, "{blocker:?}");
            // The timeout ends the idle transaction; the event becomes readable.
            eventually(Duration::from_secs(10), "the log moves on", || async {
                let stats = store.stats().await.unwrap();
                (stats.held_back_events == 0 && stats.blocker.is_none()).then_some(())
            })
            .await;
            assert_eq!(log_of(&store, 1).await.len(), 1);
        })
        .await;
    }

    /// A prepared transaction, even in another database of the cluster,
    /// holds the log back until it is finished: the stats name it as
    /// prepared. (On a server of the test's own: the shared one allows no
    /// prepared transactions.)
    #[tokio::test]
    async fn a_forgotten_prepared_transaction_shows_as_the_blocker() {
        use sqlx::{ConnectOptions, Connection};
        let server = event_store::testing::PgServer::start();
        let mut admin = sqlx::PgConnection::connect(&server.url("postgres")).await.unwrap();
        for database in ["events", "elsewhere"] {
            sqlx::query(&format!("CREATE DATABASE {database}")).execute(&mut admin).await.unwrap();
        }
        let pool = PgPoolOptions::new().max_connections(4).connect(&server.url("events")).await.unwrap();
        let store = PgEventStore::new(pool.clone());
        store.migrate().await.unwrap();
        let options: sqlx::postgres::PgConnectOptions = server.url("elsewhere").parse().unwrap();
        let mut elsewhere = options.connect().await.unwrap();
        for statement in ["BEGIN", "CREATE TABLE t (n int)", "PREPARE TRANSACTION 'forgotten'"] {
            sqlx::query(statement).execute(&mut elsewhere).await.unwrap();
        }
        store.append("order-behind", ExpectedVersion::NoStream, vec![event("Happened", json!({}))]).await.unwrap();
        let stats = store.stats().await.unwrap();
        assert_eq!(stats.held_back_events, 1, "{stats:?}");
        let blocker = stats.blocker.expect("the blocker is named");
        assert_eq!((blocker.pid, blocker.prepared), (0, true));
        sqlx::query("ROLLBACK PREPARED 'forgotten'").execute(&mut elsewhere).await.unwrap();
        let stats = store.stats().await.unwrap();
        assert_eq!((stats.held_back_events, stats.blocker), (0, None));
        assert_eq!(log_of(&store, 1).await.len(), 1);
        pool.close().await;
    }

    /// A transaction open in another database of the same cluster cannot
    /// write to this event store, so it holds nothing back.
    #[tokio::test]
    async fn a_transaction_open_in_another_database_holds_nothing_back() {
        let mut elsewhere = transaction_open_elsewhere().await;
        with_database(4, |pool| async move {
            let store = PgEventStore::new(pool);
            store.append("order-1", ExpectedVersion::NoStream, vec![event("Happened", json!({}))]).await.unwrap();
            assert_eq!(log_of(&store, 1).await.len(), 1);
            assert_eq!(store.stats().await.unwrap().held_back_events, 0);
        })
        .await;
        sqlx::query("ROLLBACK").execute(&mut elsewhere).await.unwrap();
    }

    /// Subscriptions stop at `es_follow_horizon()`, which looks the oldest
    /// open transaction up only once it has held events back for a while:
    /// one of another database open all along still lets them through, on
    /// every session that reads (the store's own connections rotate).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transaction_open_in_another_database_does_not_stop_subscribers() {
        let mut elsewhere = transaction_open_elsewhere().await;
        with_database(POOL_SIZE, |pool| async move {
            let store = PgEventStore::new(pool);
            let mut subscription = store.subscribe(None);
            for i in 0..3 {
                let stream = format!("order-{i}");
                store.append(&stream, ExpectedVersion::NoStream, vec![event("Happened", json!({}))]).await.unwrap();
                assert_eq!(take(&mut subscription, 1).await[0].stream_id, stream);
            }
            assert_quiet(&mut subscription, Duration::from_millis(300)).await;
        })
        .await;
        sqlx::query("ROLLBACK").execute(&mut elsewhere).await.unwrap();
    }

    /// The log once it shows `n` events. A transaction of the test's database
    /// that the test did not open (autovacuum's analyze writes statistics)
    /// can hold the log back a moment, so an append is not always readable
    /// the instant it returns: a test that reads right after appending waits.
    async fn log_of(store: &PgEventStore, n: usize) -> Vec<event_store::RecordedEvent> {
        eventually(Duration::from_secs(10), &format!("{n} events in the log"), || async {
            Some(store.read_all(None, 100).await.unwrap()).filter(|log| log.len() >= n)
        })
        .await
    }

    /// A session of the shared database (not the test's own) in a
    /// transaction that holds an xid, open until the caller rolls it back.
    async fn transaction_open_elsewhere() -> sqlx::PgConnection {
        use sqlx::Connection;
        let url = std::env::var("DATABASE_URL").unwrap();
        let mut elsewhere = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query("BEGIN").execute(&mut elsewhere).await.unwrap();
        let _: i64 =
            sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint").fetch_one(&mut elsewhere).await.unwrap();
        elsewhere
    }

    /// Sessions of the test's database waiting for a lock (a row another
    /// transaction wrote and has not committed).
    async fn sessions_waiting(pool: &sqlx::PgPool) -> i64 {
        let sql =
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'";
        sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
    }

    async fn sessions_waiting_at_least(pool: &sqlx::PgPool, n: i64) {
        eventually(Duration::from_secs(10), &format!("{n} sessions waiting for a lock"), || async {
            (sessions_waiting(pool).await >= n).then_some(())
        })
        .await;
    }

    /// Waits until `n` appends of the store are in flight (queued behind a
    /// busy writer, or being written), and a moment more: an append is
    /// counted just before it enters the queue.
    async fn in_flight_at_least(store: &PgEventStore, n: usize) {
        eventually(Duration::from_secs(10), &format!("{n} appends in flight"), || async {
            (store.appends_in_flight() >= n).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    /// A store with one append writer, for tests that need to know how appends are grouped.
    fn one_writer(pool: sqlx::PgPool) -> PgEventStore {
        let group_commit = GroupCommitConfig { writers: 1, ..GroupCommitConfig::default() };
        PgEventStore::with_config(pool, PgStoreConfig { group_commit, ..PgStoreConfig::default() })
    }

    /// The store's only writer (or one of two), busy until the test releases
    /// it: its append to `order-blocker` waits on another transaction's
    /// uncommitted row there. (The first blocked append finds nothing in
    /// flight and is written by its caller; the second is the writer's.)
    struct Occupied {
        holder: HeldAppend,
        blocked: Vec<tokio::task::JoinHandle<()>>,
    }

    /// The appends an occupied writer keeps in flight: the writer's blocked
    /// one and the one its caller writes.
    const OCCUPYING: usize = 2;

    impl Occupied {
        /// Commits the held row; the blocked appends then find their stream
        /// taken and fail, and the writer takes what queued meanwhile.
        async fn release(self) {
            self.holder.commit().await.unwrap();
            for blocked in self.blocked {
                blocked.await.unwrap();
            }
        }
    }

    async fn occupy_the_writer(store: &PgEventStore) -> Occupied {
        // Each step waits until the database shows it taken, not for a fixed
        // time: on a loaded machine a step can take longer than any sleep.
        let pool = store.pool().clone();
        let waiting = sessions_waiting(&pool).await;
        let held = [event("Held", json!({}))];
        let holder =
            PgHarness(store.clone()).hold_open("order-blocker", ExpectedVersion::NoStream, &held).await.unwrap();
        let mut blocked = Vec::new();
        for n in 1..=2 {
            let store = store.clone();
            blocked.push(tokio::spawn(async move {
                let lost =
                    store.append("order-blocker", ExpectedVersion::NoStream, vec![event("Late", json!({}))]).await;
                assert!(matches!(lost, Err(StoreError::WrongExpectedVersion { .. })), "{lost:?}");
            }));
            sessions_waiting_at_least(&pool, waiting + n).await;
        }
        Occupied { holder, blocked }
    }

    /// Appends that queue up while the writer is busy go in one statement
    /// and one commit (they share a transaction id), and each keeps its own
    /// outcome: new streams are written, a stale expected version conflicts,
    /// a replay answers the original result, and none of the refused ones
    /// writes anything.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_that_arrive_together_share_one_commit_and_keep_their_own_checks() {
        with_database(POOL_SIZE, |pool| async move {
            let store = one_writer(pool);
            let stored = event("Placed", json!({"n": 0}));
            let original =
                store.append("order-existing", ExpectedVersion::NoStream, vec![stored.clone()]).await.unwrap();

            let busy = occupy_the_writer(&store).await;
            let append = |stream: String, expected: ExpectedVersion, events| {
                let store = store.clone();
                tokio::spawn(async move { store.append(&stream, expected, events).await })
            };
            let fresh: Vec<_> = (0..40)
                .map(|i| {
                    append(
                        format!("order-{i}"),
                        ExpectedVersion::NoStream,
                        vec![event("A", json!({})), event("B", json!({}))],
                    )
                })
                .collect();
            let stale = append("order-existing".into(), ExpectedVersion::NoStream, vec![event("Again", json!({}))]);
            let replay = append("order-existing".into(), ExpectedVersion::Exact(0), vec![stored]);
            let any = append("order-any".into(), ExpectedVersion::Any, vec![event("C", json!({}))]);
            in_flight_at_least(&store, OCCUPYING + 43).await;
            busy.release().await;

            let mut commits = std::collections::HashSet::new();
            for task in fresh {
                let result = task.await.unwrap().unwrap();
                assert_eq!(result.stream_version, 2);
                commits.insert(result.log_position.commit);
            }
            assert_eq!(commits.len(), 1, "40 appends queued together, written in {} commits", commits.len());
            let stale = stale.await.unwrap();
            assert!(matches!(stale, Err(StoreError::WrongExpectedVersion { actual: 1, .. })), "{stale:?}");
            assert_eq!(replay.await.unwrap().unwrap(), original, "a replay answers the original result");
            assert_eq!(any.await.unwrap().unwrap().stream_version, 1);

            let log = log_of(&store, 83).await;
            assert_eq!(log.len(), 1 + 1 + 80 + 1, "the first, the blocker's, 40 x 2, order-any");
            assert_eq!(store.read_stream("order-existing", 1).await.unwrap().len(), 1);
            for i in 0..40 {
                let stream = store.read_stream(&format!("order-{i}"), 1).await.unwrap();
                let types: Vec<_> = stream.iter().map(|e| (e.event_type.as_str(), e.stream_version)).collect();
                assert_eq!(types, [("A", 1), ("B", 2)]);
            }
        })
        .await;
    }

    /// A statement stuck on a lock holds up the process's other appends only
    /// for the relief delay (5 ms): with the default two writers, the one
    /// whose turn it is writes its batch beside the stuck one instead of
    /// waiting for it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stuck_statement_holds_up_the_other_appends_only_briefly() {
        with_database(POOL_SIZE, |pool| async move {
            let store = PgEventStore::new(pool);
            let stuck = occupy_the_writer(&store).await;
            let free = store.append("order-free", ExpectedVersion::NoStream, vec![event("Free", json!({}))]).await;
            assert_eq!(free.unwrap().stream_version, 1);
            let blocker = store.read_stream("order-blocker", 1).await.unwrap();
            assert!(blocker.is_empty(), "order-free waited for the stuck statement to commit instead of the relief");
            stuck.release().await;
        })
        .await;
    }

    /// When another transaction takes a stream's next version while a batch
    /// is being written, the batch statement fails as a whole; its appends
    /// are then written one by one: only the raced one conflicts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_that_loses_a_race_is_written_append_by_append() {
        with_database(POOL_SIZE, |pool| async move {
            let store = one_writer(pool);
            let first = [event("First", json!({}))];
            let racer =
                PgHarness(store.clone()).hold_open("order-raced", ExpectedVersion::NoStream, &first).await.unwrap();
            let busy = occupy_the_writer(&store).await;
            let append = |stream: &str, expected: ExpectedVersion| {
                let (store, stream) = (store.clone(), stream.to_owned());
                tokio::spawn(async move { store.append(&stream, expected, vec![event("E", json!({}))]).await })
            };
            let raced = append("order-raced", ExpectedVersion::NoStream);
            let others: Vec<_> =
                (0..5).map(|i| append(&format!("order-other-{i}"), ExpectedVersion::NoStream)).collect();
            in_flight_at_least(&store, OCCUPYING + 6).await;
            busy.release().await;
            // The batch waits for the racer's row; the racer commits it.
            sessions_waiting_at_least(store.pool(), 1).await;
            racer.commit().await.unwrap();

            let raced = raced.await.unwrap();
            assert!(matches!(raced, Err(StoreError::WrongExpectedVersion { actual: 1, .. })), "{raced:?}");
            for other in others {
                assert_eq!(other.await.unwrap().unwrap().stream_version, 1);
            }
            let raced_stream = store.read_stream("order-raced", 1).await.unwrap();
            assert_eq!(raced_stream.len(), 1);
            assert_eq!(raced_stream[0].event_type, "First");
        })
        .await;
    }

    /// A batch inserts its appends in the order of their streams' ids (so its
    /// events take positions in that order), whatever order they came in:
    /// every process's batches meet each other's rows in the same order, and
    /// two of them writing the same streams never wait for each other at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_writes_its_streams_in_the_order_of_their_ids() {
        with_database(POOL_SIZE, |pool| async move {
            let store = one_writer(pool);
            let busy = occupy_the_writer(&store).await;
            let mut appends = Vec::new();
            for stream in ["order-z", "order-m", "order-a", "order-q"] {
                let store = store.clone();
                appends.push(tokio::spawn(async move {
                    let events = vec![event("A", json!({})), event("B", json!({}))];
                    (stream, store.append(stream, ExpectedVersion::NoStream, events).await.unwrap())
                }));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            in_flight_at_least(&store, OCCUPYING + 4).await;
            busy.release().await;
            let mut written = Vec::new();
            for append in appends {
                written.push(append.await.unwrap());
            }
            let commits: std::collections::HashSet<u64> = written.iter().map(|(_, r)| r.log_position.commit).collect();
            assert_eq!(commits.len(), 1, "the four appends were written together: {written:?}");
            written.sort_by_key(|(_, result)| result.log_position.position);
            let streams: Vec<&str> = written.iter().map(|(stream, _)| *stream).collect();
            assert_eq!(streams, ["order-a", "order-m", "order-q", "order-z"]);
        })
        .await;
    }

    /// A batch that another transaction deadlocks with (here one that inserts
    /// its streams in the opposite order) is aborted by PostgreSQL; its
    /// appends are then written one by one, and no caller sees the deadlock.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_caught_in_a_deadlock_is_written_append_by_append() {
        with_database(POOL_SIZE, |pool| async move {
            let store = one_writer(pool.clone());
            let insert = "INSERT INTO es_events (event_id, stream_id, stream_version, event_type, schema_version, \
                          payload, metadata) VALUES (gen_random_uuid(), $1, 1, 'Other', 1, '{}', '{}')";
            let mut other = pool.begin().await.unwrap();
            // The batch's deadlock check fires first and aborts the batch, not this transaction.
            sqlx::query("SET LOCAL deadlock_timeout = '20s'").execute(&mut *other).await.unwrap();
            sqlx::query(insert).bind("order-b").execute(&mut *other).await.unwrap();

            let busy = occupy_the_writer(&store).await;
            let appends: Vec<_> = ["order-a", "order-b"]
                .into_iter()
                .map(|stream| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        store.append(stream, ExpectedVersion::NoStream, vec![event("E", json!({}))]).await
                    })
                })
                .collect();
            in_flight_at_least(&store, OCCUPYING + 2).await;
            busy.release().await;
            // The batch has written order-a and waits for this transaction's order-b.
            sessions_waiting_at_least(&pool, 1).await;
            // This insert waits for the batch's order-a: a deadlock, which
            // aborts the batch. Then it races the split's own append of
            // order-a: it takes the row first, or finds it committed (this
            // session woke later); either way this transaction rolls back.
            match sqlx::query(insert).bind("order-a").execute(&mut *other).await {
                Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("23505") => {}
                outcome => _ = outcome.unwrap(),
            }
            other.rollback().await.unwrap();

            for append in appends {
                assert_eq!(append.await.unwrap().unwrap().stream_version, 1);
            }
        })
        .await;
    }

    /// A database's read models and checkpoints keep to the backend they were
    /// built from: opening another event store over it is refused.
    #[tokio::test]
    async fn a_database_keeps_to_the_event_store_it_was_built_from() {
        with_database(4, |pool| async move {
            Backend::Postgres.open(pool.clone(), &["order"]).await.unwrap();
            Backend::Postgres.open(pool.clone(), &["order"]).await.unwrap();
            // As if the events had lived in EventStoreDB so far.
            sqlx::query("UPDATE event_store_backend SET backend = 'eventstoredb'").execute(&pool).await.unwrap();
            let error = Backend::Postgres.open(pool.clone(), &["order"]).await.err().expect("refused");
            assert!(error.to_string().contains("built from the eventstoredb event store"), "{error}");
            assert!(error.to_string().contains("EVENT_STORE_URL names postgres"), "{error}");
        })
        .await;
    }

    /// The log is read on the primary only: a hot standby is refused at
    /// start-up with a message that says what to do.
    #[tokio::test]
    async fn a_hot_standby_is_refused_with_a_clear_error() {
        let primary = event_store::testing::PgServer::start();
        {
            use sqlx::Connection;
            let mut admin = sqlx::PgConnection::connect(&primary.url("postgres")).await.unwrap();
            sqlx::query("CREATE DATABASE events").execute(&mut admin).await.unwrap();
            let pool = PgPoolOptions::new().max_connections(1).connect(&primary.url("events")).await.unwrap();
            PgEventStore::new(pool.clone()).migrate().await.unwrap();
            Backend::Postgres.open(pool.clone(), &["order"]).await.expect("the primary is fine");
            pool.close().await;
        }
        let standby = event_store::testing::PgServer::standby_of(&primary);
        let pool = PgPoolOptions::new().max_connections(1).connect(&standby.url("events")).await.unwrap();
        let error = Backend::Postgres.open(pool.clone(), &["order"]).await.err().expect("refused");
        assert!(error.to_string().contains("hot standby") && error.to_string().contains("primary"), "{error}");
        pool.close().await;
    }

    /// Positions of rolled-back appends are gaps in the sequence; the log
    /// reads past them and a later reader sees only what committed.
    #[tokio::test]
    async fn rolled_back_appends_leave_gaps_that_readers_pass() {
        with_database(4, |pool| async move {
            let store = PgEventStore::new(pool);
            let harness = PgHarness(store.clone());
            let batch = vec![event("Lost", json!({}))];
            let rolled_back =
                harness.append_held_open("order-x", ExpectedVersion::Any, batch, Duration::ZERO, false).await.unwrap();
            assert_eq!(rolled_back, None);
            store.append("order-x", ExpectedVersion::NoStream, vec![event("Kept", json!({}))]).await.unwrap();
            let log = log_of(&store, 1).await;
            assert_eq!(log.len(), 1);
            assert_eq!(log[0].event_type, "Kept");
            assert_eq!(log[0].stream_version, 1);
            assert!(log[0].log_position.position > 1, "the rolled-back append took position 1");
        })
        .await;
    }

    /// Subscribers in another process are woken by NOTIFY, not by polling.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscriber_on_another_store_instance_is_woken_by_notify() {
        with_database(8, |pool| async move {
            let writer = PgEventStore::new(pool.clone());
            let slow_poll = PgStoreConfig {
                subscription: event_store::SubscriptionConfig {
                    idle_poll: Duration::from_secs(30),
                    ..Default::default()
                },
                ..Default::default()
            };
            let reader = PgEventStore::with_config(pool, slow_poll);
            let mut subscription = reader.subscribe(None);
            assert_quiet(&mut subscription, Duration::from_millis(500)).await;
            let started = Instant::now();
            writer.append("order-n", ExpectedVersion::NoStream, vec![event("Happened", json!({}))]).await.unwrap();
            take(&mut subscription, 1).await;
            assert!(started.elapsed() < Duration::from_secs(5), "woken only after {:?}", started.elapsed());
        })
        .await;
    }

    /// The NOTIFYs a store sends, as a LISTEN of the test's own hears them.
    async fn notifications(pool: &sqlx::PgPool) -> tokio::sync::mpsc::UnboundedReceiver<Instant> {
        let mut listener = sqlx::postgres::PgListener::connect_with(pool).await.unwrap();
        listener.listen(event_store::postgres::CHANNEL).await.unwrap();
        let (heard, receiver) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while listener.recv().await.is_ok() {
                if heard.send(Instant::now()).is_err() {
                    break;
                }
            }
        });
        receiver
    }

    async fn next_notify(heard: &mut tokio::sync::mpsc::UnboundedReceiver<Instant>, within: Duration) -> Instant {
        tokio::time::timeout(within, heard.recv()).await.expect("no NOTIFY came").unwrap()
    }

    /// At most one NOTIFY a pause (`notify_interval`): an append after a
    /// quiet spell is announced at once; appends during the pause by the
    /// append that ends it, at once, or, if none comes, at the end of a
    /// second pause; and with nothing to announce, nothing is sent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_are_announced_at_most_one_notify_a_pause_and_at_most_two_pauses_late() {
        with_database(4, |pool| async move {
            let pause = Duration::from_secs(2);
            let config = PgStoreConfig { notify_interval: pause, ..Default::default() };
            let store = PgEventStore::with_config(pool.clone(), config);
            let mut heard = notifications(&pool).await;
            let mut streams = 0;
            let mut append = || {
                streams += 1;
                let (store, stream) = (store.clone(), format!("order-{streams}"));
                async move {
                    store.append(&stream, ExpectedVersion::NoStream, vec![event("Happened", json!({}))]).await.unwrap();
                    Instant::now()
                }
            };

            let after_quiet = append().await;
            let first = next_notify(&mut heard, pause * 5).await;
            assert!(first - after_quiet < pause / 2, "a first append announced after {:?}", first - after_quiet);
            for _ in 0..5 {
                append().await; // during the pause
            }
            tokio::time::sleep_until((first + pause + Duration::from_millis(500)).into()).await;
            let ending_the_pause = append().await;
            let second = next_notify(&mut heard, pause * 5).await;
            assert!(second > ending_the_pause, "the appends during the pause were announced before it ended");
            assert!(
                second - ending_the_pause < pause / 2,
                "the append after the pause announced after {:?}",
                second - ending_the_pause
            );

            let mut last = second;
            for _ in 0..3 {
                last = append().await; // during the pause, and nothing after them
            }
            let third = next_notify(&mut heard, pause * 5).await;
            assert!(third - second > pause / 2, "two NOTIFYs {:?} apart", third - second);
            assert!(third - last < pause * 2 + pause / 2, "appends announced {:?} late", third - last);
            assert!(
                tokio::time::timeout(pause * 3 / 2, heard.recv()).await.is_err(),
                "a NOTIFY with no append to announce"
            );
        })
        .await;
    }

    /// Appends keep their connection out of the pool between statements (no
    /// check of a connection given back: half the round trips). When the
    /// database drops those connections (a restart, an administrator), the
    /// next appends fail as unavailable, a few at most, and then succeed on
    /// fresh connections.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_keep_their_connection_and_recover_when_the_database_drops_it() {
        with_database(8, |pool| async move {
            let store = PgEventStore::new(pool.clone());
            for n in 0..5 {
                let stream = format!("order-kept-{n}");
                store.append(&stream, ExpectedVersion::NoStream, vec![event("Happened", json!({}))]).await.unwrap();
            }
            assert_eq!(pool.size() as usize - pool.num_idle(), 1, "one connection is kept between appends");

            let terminated: Vec<bool> = sqlx::query_scalar(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            assert!(!terminated.is_empty());
            let mut failures = 0;
            for n in 0.. {
                let stream = format!("order-after-{n}");
                match store.append(&stream, ExpectedVersion::NoStream, vec![event("Happened", json!({}))]).await {
                    Ok(_) => break,
                    Err(StoreError::Unavailable(_)) if failures < 3 => failures += 1,
                    Err(other) => panic!("after {failures} failures: {other:?}"),
                }
            }
            let written = log_of(&store, 6).await;
            assert_eq!(written.len(), 6, "five before, one after; a failed append wrote nothing");
        })
        .await;
    }

    /// Closing the pool waits for every connection to come back: the ones a
    /// live store keeps come back at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closing_the_pool_takes_back_the_connections_a_live_store_keeps() {
        with_database(8, |pool| async move {
            let own = PgPoolOptions::new().max_connections(8).connect_with((*pool.connect_options()).clone());
            let own = own.await.unwrap();
            let store = PgEventStore::new(own.clone());
            store.append("order-kept", ExpectedVersion::NoStream, vec![event("Happened", json!({}))]).await.unwrap();
            assert_eq!(log_of(&store, 1).await.len(), 1);
            tokio::time::timeout(Duration::from_secs(10), own.close()).await.expect("the pool closes");
            drop(store);
        })
        .await;
    }

    /// With the database unreachable every operation fails fast with a typed
    /// error, and a subscription yields the error instead of hanging.
    #[tokio::test]
    async fn an_unreachable_database_is_a_typed_error_not_a_hang() {
        let pool = PgPoolOptions::new()
            .acquire_timeout(Duration::from_secs(1))
            .connect_lazy(&format!("postgres://postgres@127.0.0.1:{}/nowhere", closed_port()))
            .unwrap();
        assert_unavailable_everywhere(&PgEventStore::new(pool), Duration::from_secs(15)).await;
    }
}
