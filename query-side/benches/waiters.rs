//! Waiting for a position must stay cheap for everyone else: another
//! client's reads while 0, 500 and 1,000 queries wait for a position the log
//! never reaches (`?min_position=` far ahead, spread over clients of 20
//! waits each), and while 2,000 try (half refused at once, 503) and one
//! greedy client tries 600 (all but 20 refused, 429). Each phase measures 8
//! readers of one inventory item for a few seconds; the phase without
//! waiters, in the same run, is the baseline.
//!
//! Run: `cargo bench -p query-side --bench waiters` (needs DATABASE_URL).
//! The query API runs as its own process (the release binary); this process
//! is the load. `BENCH_QUICK=1` runs shorter phases and leaves BENCHMARKS.md alone.

#![allow(clippy::print_stdout)] // a benchmark reports its figures on stdout

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_store::bench::{self, quick, Scratch};
use reqwest::StatusCode;

const SECRET: &str = "a benchmark's secret of thirty-two bytes or more";
const READERS: usize = 8;
const UNREACHABLE: &str = "/v1/inventory/SKU-1?min_position=999999999999";

struct Service {
    child: Child,
    base: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(database_url: &str) -> Service {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(env!("CARGO_BIN_EXE_query-api"))
        .env("DATABASE_URL", database_url)
        .env("QUERY_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("QUERY_OPS_ADDR", "127.0.0.1:0")
        .env("JWT_SECRET", SECRET)
        .env("RATE_LIMIT_PER_SECOND", "1000000")
        .env("RATE_LIMIT_BURST", "1000000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start query-api");
    let service = Service { child, base: format!("http://127.0.0.1:{port}") };
    let client = reqwest::Client::new();
    for _ in 0..300 {
        if client.get(format!("{}/health/ready", service.base)).send().await.is_ok_and(|r| r.status().is_success()) {
            return service;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("query-api did not become ready");
}

fn token(subject: &str) -> String {
    service_kit::testing::token(SECRET, subject, "inventory:read")
}

/// What the waiters were answered during a phase.
#[derive(Default)]
struct Answers {
    waited: AtomicU64,
    refused_503: AtomicU64,
    refused_429: AtomicU64,
}

/// `count` waiting loops, `per_client` of them per client: each asks for an
/// unreachable position, and after a refusal honours `Retry-After` (1 s).
fn waiters(base: &str, count: usize, per_client: usize, stop: &Arc<AtomicBool>, answers: &Arc<Answers>) {
    let client = reqwest::Client::builder().pool_max_idle_per_host(usize::MAX).build().unwrap();
    for n in 0..count {
        let (client, stop, answers) = (client.clone(), stop.clone(), answers.clone());
        let (url, token) = (format!("{base}{UNREACHABLE}"), token(&format!("waiter-{}", n / per_client.max(1))));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(response) = client.get(&url).bearer_auth(&token).send().await else { continue };
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                let counter = match status {
                    StatusCode::TOO_MANY_REQUESTS => &answers.refused_429,
                    StatusCode::SERVICE_UNAVAILABLE if body.contains("has not reached") => &answers.waited,
                    _ => &answers.refused_503,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                if !std::ptr::eq(counter, &answers.waited) {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        });
    }
}

/// `READERS` loops reading the item for `seconds`: latencies in ms, sorted.
async fn read(base: &str, seconds: f64) -> Vec<f64> {
    let client = reqwest::Client::new();
    let (url, token) = (format!("{base}/v1/inventory/SKU-1"), token("reader"));
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let loops = (0..READERS).map(|_| {
        let (client, url, token) = (client.clone(), url.clone(), token.clone());
        tokio::spawn(async move {
            let mut took = Vec::new();
            while Instant::now() < until {
                let started = Instant::now();
                let response = client.get(&url).bearer_auth(&token).send().await.expect("the API answers");
                assert_eq!(response.status(), StatusCode::OK);
                took.push(started.elapsed().as_secs_f64() * 1000.0);
            }
            took
        })
    });
    let mut all: Vec<f64> = futures_util::future::join_all(loops).await.into_iter().flat_map(Result::unwrap).collect();
    all.sort_by(f64::total_cmp);
    all
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() {
    let seconds = if quick() { 3.0 } else { 8.0 };
    let scratch = Scratch::create("bench_waiters", 4).await;
    migrations::MIGRATOR.run(&scratch.pool).await.expect("migrate");
    sqlx::query(
        "INSERT INTO rm_inventory (sku, on_hand, reserved, version, updated_at) VALUES ('SKU-1', 5, 0, 1, now())",
    )
    .execute(&scratch.pool)
    .await
    .unwrap();
    let service = start(&scratch.url).await;
    let facts = bench::server_facts(&scratch.pool).await;

    // (label, waiting loops, loops per client)
    let phases: [(&str, usize, usize); 5] = [
        ("no waiters (baseline)", 0, 20),
        ("500 waiting, 25 clients of 20", 500, 20),
        ("1,000 waiting (the limit), 50 clients of 20", 1_000, 20),
        ("2,000 trying, 100 clients of 20", 2_000, 20),
        ("one client trying 600", 600, 600),
    ];
    let mut rows = Vec::new();
    for (label, count, per_client) in phases {
        let (stop, answers) = (Arc::new(AtomicBool::new(false)), Arc::new(Answers::default()));
        waiters(&service.base, count, per_client, &stop, &answers);
        // Let the waiters settle in before measuring.
        tokio::time::sleep(Duration::from_millis(if count > 0 { 1_500 } else { 0 })).await;
        let took = read(&service.base, seconds).await;
        stop.store(true, Ordering::Relaxed);
        let row = (
            label,
            percentile(&took, 0.5),
            percentile(&took, 0.99),
            took.len() as f64 / seconds,
            answers.waited.load(Ordering::Relaxed),
            answers.refused_503.load(Ordering::Relaxed),
            answers.refused_429.load(Ordering::Relaxed),
        );
        println!("{row:?}");
        rows.push(row);
        // The last waits run out (MIN_POSITION_WAIT, 2 s) before the next phase.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    drop(service);
    scratch.drop_database().await;

    let base_p99 = rows[0].2;
    let mut section = format!(
        "## Waiting for a position\n\n`cargo bench -p query-side --bench waiters` — {}; {facts}.\n\n\
         The query API (release build, its own process, defaults: `MIN_POSITION_WAITERS` 1,000, \
         `MIN_POSITION_WAITERS_PER_CLIENT` 20, `MIN_POSITION_WAIT` 2 s) while waiting loops ask for a position the \
         log never reaches (a refused loop honours `Retry-After`); meanwhile {READERS} readers of another client \
         read one item for {seconds:.0} s. Waits: answered 503 after the full wait; refused: at once.\n\n\
         | phase | reader p50 ms | reader p99 ms | p99 vs no waiters | reads/s | waits | refused 503 | refused 429 |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
        bench::commit_and_date()
    );
    for (label, p50, p99, rate, waited, refused_503, refused_429) in &rows {
        section.push_str(&format!(
            "| {label} | {p50:.2} | {p99:.2} | {:.2}x | {rate:.0} | {waited} | {refused_503} | {refused_429} |\n",
            p99 / base_p99
        ));
    }
    println!("{section}");
    if !quick() {
        bench::write_section("waiters", &section);
    }
}
