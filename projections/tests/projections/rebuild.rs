//! Rebuilding read models by replay: the rebuilt tables are the live ones,
//! row for row, also when the rebuild is killed halfway and run again, and
//! also when it swaps in while appends and queries go on.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::helpers::{by_name, database_url, eventually, eventually_within, processed, start, Running};
use event_store::{EventStore, ExpectedVersion, PgEventStore};
use migrations::testing::with_database;
use projections::rebuild::{rebuild, RebuildOptions};
use projections::testing::{event_count, shop_history, snapshot, write};
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::{watch, Barrier};

/// Each read model's table and key, to snapshot it.
const TABLES: [(&str, &str, &str); 3] = [
    ("orders", "rm_orders", "order_id"),
    ("inventory", "rm_inventory", "sku"),
    ("payments", "rm_payments", "order_id"),
];

async fn snapshots(pool: &PgPool) -> Vec<Vec<Value>> {
    let mut all = Vec::new();
    for (_, table, key) in TABLES {
        all.push(snapshot(pool, table, key).await);
    }
    all
}

/// Runs every projection until each has processed `events`, then stops them.
async fn project_live(store: &PgEventStore, pool: &PgPool, events: u64) {
    let running: Vec<Running> = projections::all().into_iter().map(|p| start(p, store, pool)).collect();
    for (name, _, _) in TABLES {
        eventually_within(60, &format!("{name} caught up"), || async { processed(pool, name).await == events }).await;
    }
    for projector in running {
        projector.stop().await.unwrap();
    }
}

async fn rebuild_row(pool: &PgPool, name: &str) -> (String, i64) {
    sqlx::query_as("SELECT state, events_done FROM projection_rebuilds WHERE name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await
        .unwrap()
        .unwrap_or(("none".into(), 0))
}

async fn schema_exists(pool: &PgPool, schema: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_killed_halfway_and_run_again_builds_the_rows_the_live_projection_built() {
    with_database(12, |pool| async move {
        let store = PgEventStore::new(pool.clone());
        let history = shop_history(1_500, 7);
        let events = event_count(&history) as u64;
        write(Arc::new(store.clone()), history, 8).await;
        project_live(&store, &pool, events).await;
        let built_live = snapshots(&pool).await;
        assert!(built_live[0].len() == 1_500 && built_live[1].len() == 50 && !built_live[2].is_empty());

        let rebuild_orders = || {
            let mut command = Command::new(env!("CARGO_BIN_EXE_projections"));
            command
                .args(["rebuild", "orders"])
                .env("DATABASE_URL", database_url(&pool))
                .env("REBUILD_PAGE_SIZE", "100");
            command
        };
        let mut child = rebuild_orders().spawn().unwrap();
        // Poll quickly: the whole rebuild takes about a second.
        loop {
            assert!(child.try_wait().unwrap().is_none(), "the rebuild finished before it could be killed");
            if rebuild_row(&pool, "orders").await.1 as u64 >= events / 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        child.kill().unwrap(); // SIGKILL: no clean-up of any kind
        child.wait().unwrap();

        let (state, done) = rebuild_row(&pool, "orders").await;
        assert_eq!(state, "running");
        assert!((done as u64) < events, "killed halfway: {done} of {events}");
        assert!(schema_exists(&pool, "rebuild_orders").await);
        assert_eq!(snapshots(&pool).await, built_live, "the live tables are untouched");

        let rerun = rebuild_orders().output().unwrap();
        assert!(rerun.status.success(), "{}", String::from_utf8_lossy(&rerun.stderr));
        assert!(String::from_utf8_lossy(&rerun.stderr).contains("rebuilt and swapped in"));

        assert_eq!(rebuild_row(&pool, "orders").await, ("done".to_owned(), events as i64));
        assert!(!schema_exists(&pool, "rebuild_orders").await);
        assert_eq!(snapshots(&pool).await, built_live, "rebuilt row for row");
        let status = projections::status(&pool, "orders").await.unwrap().unwrap();
        assert_eq!((status.state.as_str(), status.events_processed), ("running", events));
        let indexes: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public' AND tablename = 'rm_orders'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(indexes, 4, "the primary key and the three list indexes, under their own names");
    })
    .await;
}

/// While appends go on, the live projections run and a reader queries the
/// read models without a pause, each projection is rebuilt and swapped in.
/// The reader never fails nor sees a table go back in time, and once the
/// appends stop the tables equal those of a projection run from scratch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_swaps_in_while_appends_and_queries_go_on() {
    with_database(20, |pool| async move {
        let store = PgEventStore::new(pool.clone());
        let first = shop_history(400, 1);
        let second = shop_history(5_000, 2);
        write(Arc::new(store.clone()), first, 4).await;
        let running: Vec<Running> = projections::all().into_iter().map(|p| start(p, &store, &pool)).collect();

        let (stop_reading, reading) = watch::channel(false);
        let reader = {
            let pool = pool.clone();
            tokio::spawn(async move {
                let (mut orders_seen, mut reads) = (0i64, 0u64);
                while !*reading.borrow() {
                    let orders: i64 =
                        sqlx::query_scalar("SELECT count(*) FROM rm_orders").fetch_one(&pool).await.expect("a query");
                    assert!(orders >= orders_seen, "rm_orders went back from {orders_seen} to {orders} rows");
                    orders_seen = orders;
                    let _: Vec<(String, i64)> =
                        sqlx::query_as("SELECT sku, on_hand - reserved FROM rm_inventory ORDER BY sku")
                            .fetch_all(&pool)
                            .await
                            .expect("a query");
                    reads += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                reads
            })
        };
        // Appends go on, at a steady pace, until every rebuild is done.
        let (stop_writing, writing) = watch::channel(false);
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                for (n, append) in second.into_iter().enumerate() {
                    if *writing.borrow() {
                        return;
                    }
                    store.append(&append.stream_id, ExpectedVersion::Any, append.events).await.unwrap();
                    if n % 5 == 0 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                panic!("the history ran out before the rebuilds were done");
            })
        };
        let shared: Arc<dyn EventStore> = Arc::new(store.clone());
        for (name, _, _) in TABLES {
            let (progress, _) = watch::channel(Default::default());
            let options = RebuildOptions { page_size: 200, ..RebuildOptions::default() };
            let done = rebuild(by_name(name), shared.clone(), pool.clone(), options, &progress).await.unwrap();
            assert!(done.swapped && done.events_done > 0);
        }
        let _ = stop_writing.send(true);
        writer.await.unwrap();
        let events: i64 = sqlx::query_scalar("SELECT count(*) FROM es_events").fetch_one(&pool).await.unwrap();
        let events = events as u64;
        for (name, _, _) in TABLES {
            eventually(&format!("{name} follows on after the swap"), || async {
                processed(&pool, name).await == events
            })
            .await;
        }
        let _ = stop_reading.send(true);
        assert!(reader.await.unwrap() > 10, "the reader kept reading");
        for projector in running {
            projector.stop().await.unwrap();
        }
        let rebuilt = snapshots(&pool).await;

        for (name, table, _) in TABLES {
            sqlx::query(&format!("TRUNCATE {table}")).execute(&pool).await.unwrap();
            sqlx::query("DELETE FROM projection_checkpoints WHERE name = $1").bind(name).execute(&pool).await.unwrap();
        }
        project_live(&store, &pool, events).await;
        assert_eq!(rebuilt, snapshots(&pool).await, "rebuilt and followed on = projected from scratch");
    })
    .await;
}

/// Events the live projection applied after the replay's end, but before the
/// swap, are applied to the rebuilt tables by the swap: the read model never
/// goes back in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_swap_brings_the_rebuilt_tables_up_to_the_live_ones() {
    with_database(12, |pool| async move {
        let store = PgEventStore::new(pool.clone());
        let history = shop_history(100, 3);
        let before = event_count(&history) as u64;
        write(Arc::new(store.clone()), history, 2).await;
        let live = start(by_name("orders"), &store, &pool);
        eventually("caught up", || async { processed(&pool, "orders").await == before }).await;

        let pause = Arc::new(Barrier::new(2));
        let options = RebuildOptions { page_size: 100, pause_before_swap: Some(pause.clone()), ..Default::default() };
        let rebuilding = {
            let (store, pool): (Arc<dyn EventStore>, _) = (Arc::new(store.clone()), pool.clone());
            tokio::spawn(async move {
                let (progress, _) = watch::channel(Default::default());
                rebuild(by_name("orders"), store, pool, options, &progress).await
            })
        };
        pause.wait().await; // the replay is done
        let later = shop_history(20, 4);
        let after = before + event_count(&later) as u64;
        write(Arc::new(store.clone()), later, 2).await;
        eventually("the live projection is ahead", || async { processed(&pool, "orders").await == after }).await;
        live.stop().await.unwrap();
        let live_checkpoint = projections::status(&pool, "orders").await.unwrap().unwrap().checkpoint;
        let built_live = snapshot(&pool, "rm_orders", "order_id").await;
        assert_eq!(built_live.len(), 120);
        pause.wait().await; // now swap

        let done = rebuilding.await.unwrap().unwrap();
        assert_eq!(done.events_done, after);
        let status = projections::status(&pool, "orders").await.unwrap().unwrap();
        assert_eq!(status.checkpoint, live_checkpoint);
        assert_eq!(status.events_processed, after);
        assert_eq!(snapshot(&pool, "rm_orders", "order_id").await, built_live);
    })
    .await;
}

/// A transaction of the events' database holds the log back while it runs
/// (ADR 0013): a rebuild builds the shadow tables' indexes while they are
/// empty, never over the replayed rows in one long transaction, and the
/// tables it swaps in have the live tables' indexes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_builds_its_indexes_on_empty_tables() {
    with_database(12, |pool| async move {
        let store = PgEventStore::new(pool.clone());
        let history = shop_history(300, 5);
        let events = event_count(&history) as u64;
        write(Arc::new(store.clone()), history, 4).await;
        project_live(&store, &pool, events).await;
        let indexes = || async {
            let names: Vec<String> = sqlx::query_scalar(
                "SELECT indexname::text FROM pg_indexes WHERE schemaname = 'public' AND tablename = 'rm_orders' ORDER BY 1",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            names
        };
        let live_indexes = indexes().await;
        assert!(live_indexes.len() > 1, "{live_indexes:?}");
        // Every CREATE INDEX notes its table and how many rows the table had then.
        sqlx::raw_sql(
            "CREATE TABLE index_builds (table_name text, rows_then bigint); \
             CREATE FUNCTION note_index_build() RETURNS event_trigger LANGUAGE plpgsql AS $$ \
             DECLARE built record; indexed regclass; rows_then bigint; BEGIN \
                 FOR built IN SELECT objid FROM pg_event_trigger_ddl_commands() WHERE command_tag = 'CREATE INDEX' LOOP \
                     SELECT indrelid::regclass INTO indexed FROM pg_index WHERE indexrelid = built.objid; \
                     EXECUTE format('SELECT count(*) FROM %s', indexed) INTO rows_then; \
                     INSERT INTO index_builds VALUES (indexed::text, rows_then); \
                 END LOOP; END $$; \
             CREATE EVENT TRIGGER note_index_build ON ddl_command_end WHEN TAG IN ('CREATE INDEX') \
                 EXECUTE FUNCTION note_index_build();",
        )
        .execute(&pool)
        .await
        .unwrap();

        let (progress, _) = watch::channel(Default::default());
        let options = RebuildOptions { page_size: 100, ..RebuildOptions::default() };
        let shared: Arc<dyn EventStore> = Arc::new(store.clone());
        let done = rebuild(by_name("orders"), shared, pool.clone(), options, &progress).await.unwrap();
        assert!(done.swapped && done.events_done == events);

        let builds: Vec<(String, i64)> =
            sqlx::query_as("SELECT table_name, rows_then FROM index_builds").fetch_all(&pool).await.unwrap();
        assert!(builds.iter().any(|(table, _)| table.starts_with("rebuild_orders.")), "{builds:?}");
        assert!(builds.iter().all(|(_, rows)| *rows == 0), "an index built over rows: {builds:?}");
        assert_eq!(indexes().await, live_indexes, "the rebuilt table has the live table's indexes");
    })
    .await;
}
