//! The binary as a process: its start-up checks and its shutdown.

use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::database_url;

#[test]
fn a_bad_setting_stops_start_up_with_a_message_naming_it() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_command-api"))
        .env("COMMAND_HTTP_ADDR", "localhost:http")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("COMMAND_HTTP_ADDR"), "{stderr}");
}

/// Starts the binary against the test's database; returns it, its base URL once it answers, and its port held.
async fn spawn_binary(pool: &PgPool) -> (std::process::Child, String, event_store::testing::Ports) {
    let database_url = database_url(pool);
    let mut ports = event_store::testing::Ports::default();
    let port = ports.port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_command-api"))
        .env("DATABASE_URL", &database_url)
        .env("COMMAND_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("COMMAND_OPS_ADDR", "127.0.0.1:0")
        .env("AUTH_MODE", "off")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = Client::new();
    for _ in 0..100 {
        if client.get(format!("{base}/health/live")).send().await.is_ok_and(|r| r.status().is_success()) {
            return (child, base, ports);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the service did not start");
}

async fn wait_for_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    for _ in 0..200 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("still running 10 s after SIGTERM");
}

fn sigterm(child: &std::process::Child) {
    let killed = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
}

#[tokio::test]
async fn sigterm_stops_the_service_cleanly() {
    migrations::testing::with_database(4, |pool| async move {
        let (mut child, _, _ports) = spawn_binary(&pool).await;
        sigterm(&child);
        let status = wait_for_exit(&mut child).await;
        assert!(status.success(), "{status}");
    })
    .await;
}

/// A request in flight when SIGTERM arrives is answered before the process
/// exits. (The request is held in flight by an idempotency key whose first
/// request has not answered yet; the test then stores that answer.)
#[tokio::test]
async fn sigterm_lets_a_request_in_flight_finish() {
    migrations::testing::with_database(4, |pool| async move {
        let (mut child, base, _ports) = spawn_binary(&pool).await;
        let body = json!({"quantity": 5});
        let fingerprint = application::idempotency::fingerprint(
            "POST",
            "/v1/inventory/SKU-1/receipts",
            serde_json::to_string(&body).unwrap().as_bytes(),
        );
        sqlx::query(
            "INSERT INTO http_idempotency_keys (principal, key, fingerprint, lease_until) \
             VALUES ('admin:developer', 'in-flight', $1, now() + interval '1 minute')",
        )
        .bind(&fingerprint)
        .execute(&pool)
        .await
        .unwrap();
        let request = tokio::spawn(
            Client::new()
                .post(format!("{base}/v1/inventory/SKU-1/receipts"))
                .header("idempotency-key", "in-flight")
                .json(&body)
                .send(),
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        sigterm(&child);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(child.try_wait().unwrap().is_none(), "exited with a request in flight");
        sqlx::query(
            "UPDATE http_idempotency_keys \
             SET outcome = '{\"accepted\": {\"sku\": \"SKU-1\", \"version\": 1, \"position\": 1}}' \
             WHERE key = 'in-flight'",
        )
        .execute(&pool)
        .await
        .unwrap();
        let response = request.await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert_eq!(response.json::<Value>().await.unwrap()["version"], 1);
        let status = wait_for_exit(&mut child).await;
        assert!(status.success(), "{status}");
    })
    .await;
}
