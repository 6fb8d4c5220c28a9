//! What the command API's benchmarks share: the API as a process of its own.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The secret the benchmarks' tokens are signed with.
pub const SECRET: &str = "a benchmark's secret of thirty-two bytes or more";

/// The command API as its own process, answering on a free port.
pub struct Service {
    child: Child,
    pub base: String,
}

impl Service {
    pub async fn start(database_url: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(env!("CARGO_BIN_EXE_command-api"))
            .env("DATABASE_URL", database_url)
            .env("DATABASE_MAX_CONNECTIONS", "40")
            .env("COMMAND_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("COMMAND_OPS_ADDR", "127.0.0.1:0")
            .env("JWT_SECRET", SECRET)
            .env("RATE_LIMIT_PER_SECOND", "1000000")
            .env("RATE_LIMIT_BURST", "1000000")
            // Its logs as in production (JSON, info), written nowhere.
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start command-api");
        let service = Self { child, base: format!("http://127.0.0.1:{port}") };
        let client = reqwest::Client::new();
        for _ in 0..300 {
            let ready = client.get(format!("{}/health/ready", service.base)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return service;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("command-api did not become ready");
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
