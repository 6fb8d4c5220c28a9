//! The projections service's readiness while someone else's transaction
//! holds the log back: ready but `degraded` once events have waited
//! `STALL_AFTER`, naming the blocker's pid; ready again once it ends.

use std::time::{Duration, Instant};

use event_store::{EventStore, ExpectedVersion, Metadata, NewEvent, PgEventStore};
use migrations::testing::with_database;
use projections::app::{App, Command, Config};
use serde_json::Value;
use service_kit::config::Vars;
use service_kit::Shutdown;
use sqlx::{ConnectOptions, Connection};
use uuid::Uuid;

use crate::helpers::database_url;

/// `/health/ready`'s status and body, once `done` holds (at most `within`).
/// A refused connection counts as not yet: the service binds its port in a
/// task of its own, which may not have run when the first probe goes out.
async fn ready_until(url: &str, within: Duration, done: impl Fn(u16) -> bool) -> (u16, String) {
    let started = Instant::now();
    loop {
        let answer = match reqwest::get(url).await {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.text().await.unwrap();
                if done(status) {
                    return (status, body);
                }
                format!("{status} {body}")
            }
            Err(error) if error.is_connect() => format!("not listening ({error})"),
            Err(error) => panic!("{url}: {error}"),
        };
        assert!(started.elapsed() < within, "still {answer} after {within:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_held_back_by_a_foreign_transaction_degrades_readiness_without_taking_the_service_out() {
    with_database(8, |pool| async move {
        let mut ports = event_store::testing::Ports::default();
        let addr = ports.reserve();
        let url = database_url(&pool);
        let vars = [("DATABASE_URL", url.as_str()), ("PROJECTIONS_OPS_ADDR", addr.as_str())];
        let config = Config::from_source(&Vars(&vars), Command::Serve).unwrap();
        let app = App::build(config).await.unwrap();
        let (stop, shutdown) = Shutdown::new();
        let serving = tokio::spawn(app.run_until(shutdown));
        let ready = format!("http://{addr}/health/ready");
        ready_until(&ready, Duration::from_secs(30), |status| status == 204).await;

        // A session writes and sits idle in its transaction; an event commits after it.
        let mut idle = pool.connect_options().connect().await.unwrap();
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut idle).await.unwrap();
        sqlx::query("BEGIN").execute(&mut idle).await.unwrap();
        sqlx::query("CREATE TEMP TABLE scratch (n int)").execute(&mut idle).await.unwrap();
        let store = PgEventStore::new(pool.clone());
        let event = NewEvent {
            event_id: Uuid::new_v4(),
            event_type: "StockReceived".into(),
            schema_version: 1,
            payload: serde_json::json!({"sku": "SKU-1", "quantity": 1}),
            metadata: Metadata::default(),
        };
        store.append("inventory-SKU-1", ExpectedVersion::Any, vec![event]).await.unwrap();

        let (_, body) = ready_until(&ready, Duration::from_secs(30), |status| status != 204).await;
        let degraded: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(degraded["status"], "degraded", "{body}");
        let detail = degraded["detail"].as_str().unwrap();
        assert!(detail.starts_with("log_horizon") && detail.contains(&pid.to_string()), "{detail}");

        sqlx::query("ROLLBACK").execute(&mut idle).await.unwrap();
        ready_until(&ready, Duration::from_secs(30), |status| status == 204).await;
        let _ = idle.close().await;
        stop.fire();
        serving.await.unwrap().unwrap();
    })
    .await;
}
