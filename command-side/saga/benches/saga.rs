//! Saga completion: how long an order takes from placed to confirmed, at a
//! steady 200 orders/s, with everything running: the command API over HTTP,
//! the relay, the saga participants and the payment gateway simulator (no
//! injected latency), on the real PostgreSQL and NATS. The orders are placed
//! by a load generator in a process of its own (this binary again), so it
//! shares neither the services' runtime nor their threads.
//!
//! Run: `cargo bench -p saga --bench saga` (needs DATABASE_URL and
//! NATS_URL, see .cargo/config.toml). Uses a database and JetStream streams of
//! its own, deleted afterwards, and writes its section of BENCHMARKS.md,
//! with the same rate run again over two items and with two saga instances.
//! `BENCH_QUICK=1` runs 10 s instead of 30 s and leaves BENCHMARKS.md alone;
//! `BENCH_SECONDS=n` runs n seconds; `BENCH_RATE=n` places n orders/s;
//! `BENCH_SKUS=n` spreads them over n items instead of 50;
//! `BENCH_SAGA_INSTANCES=n` runs n saga instances on the same consumers
//! instead of one, each with its own store and state cache, as separate
//! processes would (they race for the items' versions).
//!
//! `BENCH_LOG=<filter>` (e.g. `info`) has the services log as they do in
//! production, JSON on stderr with their spans: without it they record
//! nothing, which leaves out about 6% of their CPU (docs/performance.md,
//! "Where the cost is now"). The gateway simulator's two lines per order at
//! `info` (its access line and its `charge`; `payment_gateway=warn` drops
//! the latter) have no counterpart in a deployment.
//!
//! `BENCH_CAPACITY=1` searches instead for the highest rate whose p99 stays
//! under 100 ms (runs of up to 15 s from `BENCH_FROM`, 100/s by default) and
//! writes the section "Saga capacity".
//!
//! Each run also reports, per order placed, the appends refused because
//! their stream had moved on and the commands decided again after one, by
//! aggregate (the services' own counters): near zero with one instance, the
//! price of racing with several.
//!
//! Latency is `OrderConfirmed.recorded_at - OrderPlaced.recorded_at`, both
//! stamped by the database. The saga takes four trips through the relay and
//! JetStream (placed -> reserved -> ready for payment -> captured ->
//! confirmed). Baseline, measured in the same run: one such trip, from an
//! `OrderPlaced` committed to a JetStream consumer holding it.

#![allow(clippy::print_stdout)] // a benchmark reports its figures on stdout

#[path = "../tests/saga/shop.rs"]
mod shop;

/// The services' allocator: the benchmark runs them as they run in production.
#[global_allocator]
static ALLOCATOR: service_kit::Allocator = service_kit::Allocator;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{self, pull};
use chrono::Utc;
use event_store::bench::{self, quick};
use event_store::RecordedEvent;
use futures_util::StreamExt;
use shop::{with_shop, Setup, Shop};
use uuid::Uuid;

/// Orders per second: 200, or `BENCH_RATE`.
static RATE: std::sync::LazyLock<u64> =
    std::sync::LazyLock::new(|| std::env::var("BENCH_RATE").map_or(200, |r| r.parse().expect("BENCH_RATE: orders/s")));
/// The shop's shape: the items the orders buy, and the saga instances.
#[derive(Clone, Copy, PartialEq)]
struct Shape {
    /// 50, or `BENCH_SKUS` (fewer makes each item's stream hotter: its
    /// commands queue for its turn). An order's second line is 7 items on
    /// from its first, so 1 and 7 are refused.
    skus: usize,
    /// Saga instances sharing the consumers: 1, or `BENCH_SAGA_INSTANCES`.
    instances: usize,
}

impl Shape {
    const DEFAULT: Self = Self { skus: 50, instances: 1 };

    fn from_env() -> Self {
        let skus = std::env::var("BENCH_SKUS").map_or(50, |s| s.parse().expect("BENCH_SKUS: a number of items"));
        assert!(skus > 0 && 7 % skus != 0, "BENCH_SKUS: two lines of an order must be two items (not 1 or 7)");
        let instances =
            std::env::var("BENCH_SAGA_INSTANCES").map_or(1, |n| n.parse().expect("BENCH_SAGA_INSTANCES: a number"));
        Self { skus, instances: instances.max(1) }
    }

    fn describe(self) -> String {
        let instances =
            if self.instances == 1 { "one saga instance".into() } else { format!("{} saga instances", self.instances) };
        format!("{} items, {instances}", self.skus)
    }
}

const WARM_UP: Duration = Duration::from_secs(2);
/// The run's measured part is also cut into windows this long, each with its p99.
const WINDOW_SECONDS: usize = 10;
/// What the saga must hold: placed -> confirmed p99 under this many milliseconds.
const TARGET_P99_MS: f64 = 100.0;

/// What the services of the benchmark's process have counted so far (their
/// metrics, as `GET /metrics` shows them): the appends refused because their
/// stream had moved on, and the commands decided again after one, by
/// aggregate (with several saga instances, the cost of their racing).
fn contention() -> (u64, [u64; 3]) {
    let text = service_kit::metrics::handle().render();
    let counted = |name: &str, label: &str| -> u64 {
        let series = format!("{name}{{{label}}} ");
        let line = text.lines().find_map(|line| line.strip_prefix(series.as_str()));
        line.and_then(|value| value.trim().parse::<f64>().ok()).map_or(0, |value| value as u64)
    };
    let refused = counted("event_store_appends_total", "outcome=\"conflict\"");
    let decided_again = ["inventory", "order", "payment"]
        .map(|aggregate| counted("application_commands_decided_again_total", &format!("aggregate=\"{aggregate}\"")));
    (refused, decided_again)
}

/// What one run at a steady rate measured.
struct Run {
    rate: u64,
    offered: f64,
    /// Placed -> confirmed: samples, p50, p99, max.
    saga: (usize, f64, f64, f64),
    /// Per order placed: appends refused, and commands decided again (inventory / order / payment).
    contention: String,
    /// The table's rows: the saga, its stages, the one-trip baseline.
    rows: String,
    window_p99s: String,
    facts: String,
}

/// Set in the load generator's process (see [`place_in_own_process`]): the command API to place orders with.
const LOAD_API: &str = "BENCH_LOAD_API";

#[tokio::main]
async fn main() {
    if let Ok(api) = std::env::var(LOAD_API) {
        return generate_load(&api).await;
    }
    let _telemetry = std::env::var("BENCH_LOG").ok().map(|filter| {
        if let Err(error) = service_kit::telemetry::parse_level(&filter) {
            panic!("BENCH_LOG: {error}");
        }
        service_kit::telemetry::init("saga-bench", &filter, service_kit::telemetry::LogFormat::Json)
    });
    let seconds = std::env::var("BENCH_SECONDS")
        .map_or(if quick() { 10 } else { 30 }, |s| s.parse().expect("BENCH_SECONDS: seconds of load"));
    if std::env::var_os("BENCH_CAPACITY").is_some_and(|v| v != "0") {
        return capacity_search(seconds.min(15)).await;
    }
    let shape = Shape::from_env();
    let run = run_at(*RATE, seconds, shape).await;
    println!(
        "offered {:.0} orders/s\n{}\nsaga p99 per {WINDOW_SECONDS} s window: {} ms\nper order, appends refused; decided again (inventory / order / payment): {}",
        run.offered, run.rows, run.window_p99s, run.contention
    );
    // The shop's other shapes at the same rate, where a change's cost or
    // stall shows first: a hot item's commands queue for its turn; two
    // instances race for the same streams' versions.
    let shape_row = |shape: Shape, run: &Run| {
        format!("| {} | {:.0} | {} | {} |", shape.describe(), run.offered, figures(run.saga), run.contention)
    };
    let mut shapes = vec![shape_row(shape, &run)];
    if shape == Shape::DEFAULT && !quick() {
        for other in [Shape { skus: 2, ..shape }, Shape { instances: 2, ..shape }] {
            let row = shape_row(other, &run_at(*RATE, seconds, other).await);
            println!("{row}");
            shapes.push(row);
        }
    }
    let shapes = if shapes.len() > 1 {
        format!(
            "\n\nThe same rate and length, placed -> confirmed, with the orders over two items (each in about every \
             order: its commands queue for its turn) and with two saga instances on the same consumers (each with \
             its own store and kept states, as two processes: they race for the items' and orders' versions). \
             Per order placed: the appends refused because their stream had moved on \
             (`event_store_appends_total{{outcome=\"conflict\"}}`) and the commands read and decided again after \
             one, by aggregate (`application_commands_decided_again_total`):\n\n\
             | shop | orders/s achieved | samples | p50 ms | p99 ms | max ms | per order: appends refused; decided \
             again (inventory / order / payment) |\n|---|---:|---:|---:|---:|---:|---|\n{}",
            shapes.join("\n")
        )
    } else {
        String::new()
    };
    let Run { rate, offered, rows, window_p99s, facts, .. } = run;
    let section = format!(
        "## Saga completion\n\n\
         `cargo bench -p saga --bench saga` — {facts} — {}.\n\n\
         Orders of one or two lines ({}) placed over HTTP at a steady {rate}/s for {seconds} s \
         ({offered:.0}/s achieved) by a load generator in a process of its own, with the command API, the relay, \
         the saga participants and the payment gateway simulator (no injected latency) running in the \
         benchmark's process; the first {} s are warm-up and not counted. \
         Placed -> confirmed is four trips through the relay and JetStream plus the participants' reads and \
         appends. Baseline, same run: one trip, an `OrderPlaced` committed -> a JetStream consumer holding it. \
         Target: p99 under 100 ms.\n\n\
         | what | samples | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|\n{rows}\n\n\
         Placed -> confirmed p99 in each {WINDOW_SECONDS} s window of the run (orders by when they were \
         placed): {window_p99s} ms.{shapes}\n",
        bench::commit_and_date(),
        shape.describe(),
        WARM_UP.as_secs(),
    );
    if !quick() {
        bench::write_section("saga", &section);
    }
}

/// The highest steady rate whose placed -> confirmed p99 stays under
/// [`TARGET_P99_MS`]: rates grow by half while they hold it, then the gap
/// between the last that held and the first that did not is halved three
/// times. Each rate is a run of its own on a fresh shop.
async fn capacity_search(seconds: usize) {
    let mut runs: Vec<Run> = Vec::new();
    let holds = |run: &Run| run.saga.2 < TARGET_P99_MS && run.offered >= run.rate as f64 * 0.95;
    let mut rate = std::env::var("BENCH_FROM").map_or(100, |r| r.parse().expect("BENCH_FROM: orders/s"));
    let (mut good, mut bad) = (0u64, None::<u64>);
    for _ in 0..12 {
        let run = run_at(rate, seconds, Shape::from_env()).await;
        println!("{rate}/s: offered {:.0}/s, p50 {:.1} ms, p99 {:.1} ms", run.offered, run.saga.1, run.saga.2);
        if holds(&run) {
            good = good.max(rate)
        } else {
            bad = Some(bad.map_or(rate, |b: u64| b.min(rate)))
        }
        runs.push(run);
        rate = match bad {
            None => rate * 3 / 2,
            Some(bad) if bad - good > (good / 20).max(10) && runs.len() < 12 => (good + bad) / 2,
            Some(_) => break,
        };
    }
    runs.sort_by_key(|run| run.rate);
    let rows: Vec<String> = runs
        .iter()
        .map(|run| {
            let (n, p50, p99, _) = run.saga;
            let verdict = if holds(run) { "holds" } else { "does not" };
            format!("| {} | {:.0} | {n} | {p50:.1} | {p99:.1} | {verdict} |", run.rate, run.offered)
        })
        .collect();
    let facts = runs.first().map(|run| run.facts.clone()).unwrap_or_default();
    let section = format!(
        "## Saga capacity\n\n\
         `BENCH_CAPACITY=1 cargo bench -p saga --bench saga` — {facts} — {}.\n\n\
         The saga benchmark's shop (every service in the benchmark's process, the load generator in one of its \
         own) at steady rates of {seconds} s each, \
         a fresh shop per rate: the rate grows by half while placed -> confirmed p99 stays under {TARGET_P99_MS} ms \
         (and the rate is achieved), then the gap to the first rate that fails is halved.\n\n\
         | orders/s asked | achieved | orders measured | p50 ms | p99 ms | p99 under {TARGET_P99_MS} ms |\n\
         |---:|---:|---:|---:|---:|---|\n{}\n\n\
         Capacity: **{good} orders/s** with p99 under {TARGET_P99_MS} ms.\n",
        bench::commit_and_date(),
        rows.join("\n"),
    );
    println!("capacity: {good} orders/s");
    if !quick() {
        bench::write_section("saga-capacity", &section);
    }
}

/// Places orders at `rate` per second for `seconds`, waits until each is
/// confirmed, and measures.
async fn run_at(rate: u64, seconds: usize, shape: Shape) -> Run {
    let report = Arc::new(Mutex::new(None));
    let out = report.clone();
    with_shop(Setup { saga_instances: shape.instances, ..Setup::default() }, |shop| async move {
        let shop = Arc::new(shop);
        for sku in 0..shape.skus {
            shop.receive(&format!("SKU-{sku}"), 1_000_000).await;
        }
        let facts = format!(
            "{}, NATS {} with JetStream",
            bench::server_facts(&shop.pool).await,
            shop.js.client().server_info().version
        );
        let hops = Arc::new(Mutex::new(Vec::new()));
        let watcher = tokio::spawn(watch_hops(shop.clone(), hops.clone()));
        let counted_before = contention();

        let (orders, offered) = place_in_own_process(&shop.api, rate, seconds, shape.skus).await;
        let measured: Vec<(Duration, Uuid)> = orders.iter().filter(|(at, _)| *at >= WARM_UP).copied().collect();

        let mut latencies = Vec::with_capacity(measured.len());
        // The saga's latencies by the 10-second window the order was placed in: is the p99 steady?
        let mut windows: Vec<Vec<f64>> = Vec::new();
        let mut stages: [Vec<f64>; 4] = Default::default();
        for (placed_at, order_id) in &measured {
            let confirmed = |o: &domain::order::PlacedOrder| o.status == domain::order::OrderStatus::Confirmed;
            shop.until_order(*order_id, Duration::from_secs(120), confirmed).await;
            let mut events = shop.events(&format!("order-{order_id}")).await;
            events.extend(shop.events(&format!("payment-{order_id}")).await);
            let at = |kind: &str| events.iter().find(|e| e.event_type == kind).map(|e| e.recorded_at).unwrap();
            let marks =
                ["OrderPlaced", "OrderReadyForPayment", "PaymentRequested", "PaymentCaptured", "OrderConfirmed"];
            let latency = millis(at(marks[4]) - at(marks[0]));
            latencies.push(latency);
            let window = (*placed_at - WARM_UP).as_secs() as usize / WINDOW_SECONDS;
            windows.resize_with(windows.len().max(window + 1), Vec::new);
            windows[window].push(latency);
            for (stage, pair) in stages.iter_mut().zip(marks.windows(2)) {
                stage.push(millis(at(pair[1]) - at(pair[0])));
            }
        }
        let (refused, decided_again) = contention();
        let per_order = |n: u64, before: u64| (n - before) as f64 / orders.len().max(1) as f64;
        let decided_again: Vec<String> = decided_again
            .iter()
            .zip(counted_before.1)
            .map(|(n, before)| format!("{:.2}", per_order(*n, before)))
            .collect();
        let contention = format!("{:.2}; {}", per_order(refused, counted_before.0), decided_again.join(" / "));
        watcher.abort();
        // Aborted, it still holds the shop until it has been dropped.
        let _ = watcher.await;
        let mut hops = hops.lock().unwrap().clone();
        let (saga, hop) = (summary(&mut latencies), summary(&mut hops));
        let row = |what: &str, summary| format!("| {what} | {} |", figures(summary));
        let names = [
            "- placed -> ready for payment (2 trips, stock reserved)",
            "- ready -> payment requested (1 trip)",
            "- requested -> captured (gateway call)",
            "- captured -> confirmed (1 trip)",
        ];
        let mut rows = vec![row("placed -> confirmed (saga)", saga)];
        rows.extend(names.iter().zip(stages.iter_mut()).map(|(name, stage)| row(name, summary(stage))));
        rows.push(row("one trip: committed -> consumer (baseline)", hop));
        let rows = rows.join("\n");
        let window_p99s: Vec<String> =
            windows.iter_mut().filter(|w| !w.is_empty()).map(|w| format!("{:.1}", summary(w).2)).collect();
        let window_p99s = window_p99s.join(" / ");
        *out.lock().unwrap() = Some(Run { rate, offered, saga, contention, rows, window_p99s, facts });
        Arc::into_inner(shop).expect("every task is done with the shop").stop().await;
    })
    .await;
    let run = report.lock().unwrap().take();
    run.expect("the run reported")
}

/// Runs the load generator in a process of its own (this binary again,
/// with [`LOAD_API`] set), so that placing orders does not share the
/// services' runtime or compete with them for its threads; answers each
/// order with when it was placed (after the load began), and the rate achieved.
async fn place_in_own_process(api: &str, rate: u64, seconds: usize, skus: usize) -> (Vec<(Duration, Uuid)>, f64) {
    let mut generator = std::process::Command::new(std::env::current_exe().expect("this benchmark's binary"));
    generator
        .env(LOAD_API, api)
        .env("BENCH_SKUS", skus.to_string())
        .env("BENCH_LOAD_RATE", rate.to_string())
        .env("BENCH_LOAD_SECONDS", seconds.to_string())
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit());
    let output = tokio::task::spawn_blocking(move || generator.output()).await.unwrap().expect("the load generator");
    assert!(output.status.success(), "the load generator failed: {}", output.status);
    let report = String::from_utf8(output.stdout).expect("the load generator's report");
    let mut lines = report.lines();
    let elapsed: f64 = lines.next().and_then(|l| l.strip_prefix("elapsed_s ")).expect("elapsed_s").parse().unwrap();
    let orders: Vec<(Duration, Uuid)> = lines
        .map(|line| {
            let (micros, id) = line.split_once(' ').expect("<micros> <order id>");
            (Duration::from_micros(micros.parse().unwrap()), id.parse().unwrap())
        })
        .collect();
    let offered = orders.len() as f64 / elapsed;
    (orders, offered)
}

/// The load generator's process: places orders of one or two lines at the
/// steady `BENCH_LOAD_RATE` for `BENCH_LOAD_SECONDS`, then prints how long
/// that took and, per order, when it was placed (microseconds after the
/// first) and its id.
async fn generate_load(api: &str) {
    let number = |name: &str| -> u64 { std::env::var(name).ok().and_then(|v| v.parse().ok()).expect(name) };
    let (rate, seconds) = (number("BENCH_LOAD_RATE"), number("BENCH_LOAD_SECONDS"));
    let skus = Shape::from_env().skus;
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let mut placing = Vec::new();
    for n in 0..(rate * seconds) as usize {
        tick.tick().await;
        let (http, api) = (http.clone(), api.to_owned());
        placing.push(tokio::spawn(async move {
            let lines =
                [(format!("SKU-{}", n % skus), 1 + (n % 3) as u32, 1000), (format!("SKU-{}", (n + 7) % skus), 1, 250)];
            let lines: Vec<(&str, u32, u64)> =
                lines.iter().take(1 + n % 2).map(|(s, q, p)| (s.as_str(), *q, *p)).collect();
            let at = started.elapsed();
            (at, shop::place(&http, &api, &lines, "tok_visa", None).await)
        }));
    }
    let mut report = Vec::with_capacity(placing.len());
    for task in placing {
        report.push(task.await.unwrap());
    }
    let mut out = format!("elapsed_s {}\n", started.elapsed().as_secs_f64());
    for (at, order_id) in report {
        out.push_str(&format!("{} {order_id}\n", at.as_micros()));
    }
    print!("{out}");
}

/// Latency of one trip: each `OrderPlaced`, from its commit to a JetStream consumer.
async fn watch_hops(shop: Arc<Shop>, hops: Arc<Mutex<Vec<f64>>>) {
    let stream = loop {
        match shop.js.get_stream(&shop.config.deliveries.events.stream).await {
            Ok(stream) => break stream,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let consumer: consumer::PullConsumer = stream
        .create_consumer(pull::Config {
            filter_subject: format!("{}.order.OrderPlaced", shop.config.deliveries.events.subject_prefix),
            ack_policy: consumer::AckPolicy::None,
            deliver_policy: consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    while let Some(Ok(message)) = messages.next().await {
        let received = Utc::now();
        if let Ok(event) = serde_json::from_slice::<RecordedEvent>(&message.payload) {
            hops.lock().unwrap().push(millis(received - event.recorded_at));
        }
    }
}

fn millis(duration: chrono::TimeDelta) -> f64 {
    duration.num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0
}

/// Samples, p50, p99 and max.
/// A summary's cells: samples | p50 | p99 | max.
fn figures((n, p50, p99, max): (usize, f64, f64, f64)) -> String {
    format!("{n} | {p50:.1} | {p99:.1} | {max:.1}")
}

fn summary(samples: &mut [f64]) -> (usize, f64, f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples.get(((samples.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN);
    (samples.len(), at(0.5), at(0.99), at(1.0))
}
