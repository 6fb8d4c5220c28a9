//! Soak: the whole shop, every service its own process on a PostgreSQL and a
//! NATS server of the test's own, under a steady load, sampled at a fixed
//! period: how fast requests are answered and orders confirmed, how much
//! memory and how many file descriptors each process holds, the database's
//! connections, and the sizes of the tables and of the stream. Memory and
//! latency must stay flat: nothing may grow with time but the data.
//!
//! With the other tests it runs a short while (`SOAK_SECONDS`, default 40, a
//! sample every 10 s) to keep the harness honest. The documented soak is
//! `scripts/soak.sh`: release builds, 30 minutes, a sample a minute, at
//! `SOAK_RATE` requests per second, written to BENCHMARKS.md (section `soak`).
//! Either way the books must balance at the end.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use system_tests::books;
use system_tests::system::{Kind, Settings, System};
use system_tests::workload::{self, Records, WorkloadConfig};

/// How long the system may take to settle once the load stops.
const SETTLE_WITHIN: Duration = Duration::from_secs(180);

fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

/// One sample: the figures of the period that just ended, and the state now.
#[derive(Debug, Clone, Default)]
struct Sample {
    at: Duration,
    requests: usize,
    /// Answer times of the period's requests (ms): p50, p99, max.
    answer_ms: [f64; 3],
    /// Placed -> confirmed of the orders placed in the period before (ms,
    /// event times): p50, p99, and how many.
    confirm_ms: [f64; 2],
    confirmed: i64,
    /// Resident memory (MiB) and open file descriptors of each process, in `Kind::ALL` order.
    rss_mib: Vec<f64>,
    fds: Vec<usize>,
    /// CPU each process used over the period, in % of one core, same order.
    cpu_percent: Vec<f64>,
    /// CPU of PostgreSQL (the postmaster and its backends alive at both
    /// readings), NATS and this process (the load generator), % of one core.
    servers_percent: [f64; 3],
    /// The whole machine's CPU in use over the period, in % of all its cores
    /// (the services, PostgreSQL, NATS and the load generator).
    machine_percent: f64,
    /// Sessions of the shop's database (the test's own pool included).
    connections: i64,
    events: i64,
    events_mib: f64,
    database_mib: f64,
    stream_messages: u64,
    stream_mib: f64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_steady_load_memory_and_latency_stay_flat() {
    let seconds: u64 = setting("SOAK_SECONDS", 40);
    let period = Duration::from_secs(setting("SOAK_SAMPLE_SECONDS", if seconds >= 600 { 60 } else { 10 }));
    let rate: f64 = setting("SOAK_RATE", 20.0);
    let mut system =
        System::start(Settings { order_deadline: "5m", gateway_timeout: "2s", ..Settings::default() }).await;
    eprintln!("soak: {seconds} s at {rate} requests/s, a sample every {period:?}; logs in {}", system.dir.display());
    let statements = setting("SOAK_PG_STATEMENTS", 0u8) == 1;
    if statements {
        load_pg_stat_statements(&mut system).await;
    }
    let records: workload::Shared = Arc::new(Mutex::new(Records::default()));
    // Many items with stock to spare: orders confirm (the saga's whole path),
    // few cancels, some shipments; no faults.
    let config = WorkloadConfig {
        skus: (1..=40).map(|n| format!("SOAK-{n}")).collect(),
        initial_stock: 1_000_000,
        rate,
        clients: ((rate / 10.0).ceil() as usize).clamp(4, 64),
        receipt_share: 0.02,
        cancel_share: 0.05,
        ship_share: 0.1,
        declined_share: 0.05,
        resend_share: 0.02,
        give_up_after: Duration::from_secs(120),
    };
    workload::stock_up(&system.client, &config, &records).await;
    records.lock().unwrap().answered_in.clear();
    if statements {
        let pool = system.pool().await;
        sqlx::query("SELECT pg_stat_statements_reset()").execute(&pool).await.expect("reset the statements' figures");
    }

    let started = Instant::now();
    let load =
        tokio::spawn(workload::run(system.client.clone(), config, Duration::from_secs(seconds), records.clone()));
    let pool = system.pool().await;
    let nats = async_nats::connect(system.nats.url()).await.expect("the test's NATS server");
    let js = async_nats::jetstream::new(nats);
    let mut samples = Vec::new();
    let mut clock = CpuClock::start(&mut system);
    let mut next = started + period;
    while next <= started + Duration::from_secs(seconds) {
        tokio::time::sleep_until(next.into()).await;
        next += period;
        samples.push(sample(&mut system, &pool, &js, &records, (started.elapsed(), period), &mut clock).await);
        eprintln!("soak: {:?}", samples.last().unwrap());
        for kind in Kind::ALL {
            assert!(system.process(kind).exited().is_none(), "{} exited during the soak", kind.name());
        }
    }
    load.await.expect("the workload does not panic");
    let top = if statements { top_statements(&pool).await } else { String::new() };
    eprint!("{top}");

    let (report, settled_in) = books::settle(&mut system, &records, SETTLE_WITHIN).await;
    report.print("books after the soak");
    if seconds >= 1800 {
        write_benchmarks(&samples, seconds, rate, settled_in, &top);
    }
    assert!(samples.len() >= 2, "at least two samples: {samples:?}");
    assert!(samples.iter().all(|s| s.requests > 0 && s.rss_mib.iter().all(|mib| *mib > 0.0)), "{samples:?}");
    let failed = !report.violations.is_empty();
    system.stop(failed);
    assert!(!failed, "{} violations (see above)", report.violations.len());
}

async fn sample(
    system: &mut System,
    pool: &sqlx::PgPool,
    js: &async_nats::jetstream::Context,
    records: &workload::Shared,
    (at, period): (Duration, Duration),
    clock: &mut CpuClock,
) -> Sample {
    let mut answered: Vec<f64> = std::mem::take(&mut records.lock().unwrap().answered_in)
        .into_iter()
        .map(|took| took.as_secs_f64() * 1000.0)
        .collect();
    answered.sort_by(f64::total_cmp);
    let (mut rss_mib, mut fds) = (Vec::new(), Vec::new());
    for kind in Kind::ALL {
        let pid = system.process(kind).pid().expect("every process runs");
        rss_mib.push(rss_kib(pid) as f64 / 1024.0);
        fds.push(std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count));
    }
    let (cpu_percent, servers_percent, machine_percent) = clock.read(system);
    // Orders placed one to two periods ago have had a period to be confirmed.
    let (p50, p99, confirmed): (Option<f64>, Option<f64>, i64) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), count(*) \
         FROM (SELECT extract(epoch FROM updated_at - created_at) * 1000 AS ms FROM rm_orders \
               WHERE status = 'confirmed' AND created_at >= now() - 2 * $1 * interval '1 second' \
                 AND created_at < now() - $1 * interval '1 second') confirmed",
    )
    .bind(period.as_secs_f64())
    .fetch_one(pool)
    .await
    .expect("the read model answers");
    let (connections, events, events_bytes, database_bytes): (i64, Option<i64>, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()), \
                (SELECT max(position) FROM es_events), pg_total_relation_size('es_events'), \
                pg_database_size(current_database())",
    )
    .fetch_one(pool)
    .await
    .expect("the database answers");
    let stream = js.get_stream(&system.stream).await.expect("the events stream exists");
    let state = stream.cached_info().state.clone();
    Sample {
        at,
        requests: answered.len(),
        answer_ms: [percentile(&answered, 0.5), percentile(&answered, 0.99), answered.last().copied().unwrap_or(0.0)],
        confirm_ms: [p50.unwrap_or(0.0), p99.unwrap_or(0.0)],
        confirmed,
        rss_mib,
        fds,
        cpu_percent,
        servers_percent,
        machine_percent,
        connections,
        events: events.unwrap_or(0),
        events_mib: events_bytes as f64 / 1048576.0,
        database_mib: database_bytes as f64 / 1048576.0,
        stream_messages: state.messages,
        stream_mib: state.bytes as f64 / 1048576.0,
    }
}

/// CPU time of the shop's processes and of the machine, read at each sample.
struct CpuClock {
    at: Instant,
    /// Clock ticks used by each process (`Kind::ALL` order), and by the machine (busy, all).
    process_ticks: Vec<u64>,
    /// Ticks of each PostgreSQL process by pid, of NATS and of this process.
    postgres_ticks: std::collections::HashMap<u32, u64>,
    nats_ticks: u64,
    own_ticks: u64,
    machine_ticks: (u64, u64),
    ticks_per_second: f64,
}

impl CpuClock {
    fn start(system: &mut System) -> Self {
        let ticks_per_second = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .unwrap_or(100.0);
        let services = Kind::ALL.iter().map(|kind| process_ticks(system.process(*kind).pid())).collect();
        Self {
            at: Instant::now(),
            process_ticks: services,
            postgres_ticks: postgres_ticks(system),
            nats_ticks: process_ticks(system.nats.pid()),
            own_ticks: process_ticks(Some(std::process::id())),
            machine_ticks: machine_ticks(),
            ticks_per_second,
        }
    }

    /// Each process's CPU in % of one core, PostgreSQL's, NATS's and the load
    /// generator's, and the machine's in % of all cores, since the last reading.
    fn read(&mut self, system: &mut System) -> (Vec<f64>, [f64; 3], f64) {
        let seconds = self.at.elapsed().as_secs_f64().max(f64::EPSILON);
        self.at = Instant::now();
        let per_core = |ticks: u64| ticks as f64 / self.ticks_per_second / seconds * 100.0;
        let now: Vec<u64> = Kind::ALL.iter().map(|kind| process_ticks(system.process(*kind).pid())).collect();
        let percent =
            now.iter().zip(&self.process_ticks).map(|(now, before)| per_core(now.saturating_sub(*before))).collect();
        self.process_ticks = now;
        let postgres = postgres_ticks(system);
        let postgres_used: u64 = postgres
            .iter()
            .filter_map(|(pid, now)| self.postgres_ticks.get(pid).map(|before| now.saturating_sub(*before)))
            .sum();
        self.postgres_ticks = postgres;
        let (nats, own) = (process_ticks(system.nats.pid()), process_ticks(Some(std::process::id())));
        let servers = [
            per_core(postgres_used),
            per_core(nats.saturating_sub(self.nats_ticks)),
            per_core(own.saturating_sub(self.own_ticks)),
        ];
        (self.nats_ticks, self.own_ticks) = (nats, own);
        let (busy, all) = machine_ticks();
        let machine = busy.saturating_sub(self.machine_ticks.0) as f64
            / (all.saturating_sub(self.machine_ticks.1).max(1)) as f64
            * 100.0;
        self.machine_ticks = (busy, all);
        (percent, servers, machine)
    }
}

/// Ticks of the test's PostgreSQL server: the postmaster and its children, by pid.
fn postgres_ticks(system: &System) -> std::collections::HashMap<u32, u64> {
    let Some(postmaster) = system.pg.postmaster_pid() else { return Default::default() };
    let mut ticks = std::collections::HashMap::from([(postmaster, process_ticks(Some(postmaster)))]);
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let parent = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if parent == Some(postmaster) {
            ticks.insert(pid, process_ticks(Some(pid)));
        }
    }
    ticks
}

/// utime + stime of a process, in clock ticks (0 if it cannot be read).
fn process_ticks(pid: Option<u32>) -> u64 {
    let Some(pid) = pid else { return 0 };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(14) + field(15)
}

/// The machine's busy and total clock ticks since boot (`/proc/stat`).
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let all: u64 = ticks.iter().sum();
    // idle and iowait are not busy.
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    (all - idle, all)
}

/// `VmRSS` of a process, in KiB (0 if it cannot be read).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The `q` quantile of sorted `values` (nearest rank); 0 for none.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Mean of a figure over a slice of samples.
fn mean(samples: &[Sample], figure: impl Fn(&Sample) -> f64) -> f64 {
    samples.iter().map(figure).sum::<f64>() / samples.len().max(1) as f64
}

fn write_benchmarks(samples: &[Sample], seconds: u64, rate: f64, settled_in: Duration, top: &str) {
    let names: Vec<&str> = Kind::ALL.iter().map(|kind| kind.name()).collect();
    let mut section = format!(
        "## Soak\n\n`scripts/soak.sh` (`SOAK_SECONDS={seconds}`, `SOAK_RATE={rate}`) — {}.\n\n\
         Release builds, every service its own process, on a PostgreSQL (fsync off) and a NATS server of the run's own; \
         the load generator in the test's process: {rate} requests/s, 83% of them orders on 40 items with stock to \
         spare (a few declined cards, cancels, shipments, receipts). One row per minute. Answer: a request's time to \
         its answer at the client (p50 / p99 / max, ms). Confirm: placed -> confirmed in event time of the orders \
         placed the minute before (p50 / p99, ms). Memory: resident MiB of {}. Fds: open file descriptors, same order. \
         Connections: sessions of the shop's database. The books balanced {:.0} s after the load stopped.\n\n\
         CPU: % of one core each process used, same order; PostgreSQL / NATS / load generator likewise; machine: % of \
         all cores busy.\n\n\
         | min | requests | answer p50 / p99 / max | confirmed | confirm p50 / p99 | memory MiB | fds | CPU % | PG / NATS / load % | machine % | connections | events | es_events MiB | database MiB | stream msgs | stream MiB |\n\
         |---:|---:|---|---:|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n",
        event_store::bench::commit_and_date(),
        names.join(" / "),
        settled_in.as_secs_f64(),
    );
    for s in samples {
        let rss: Vec<String> = s.rss_mib.iter().map(|mib| format!("{mib:.0}")).collect();
        let fds: Vec<String> = s.fds.iter().map(ToString::to_string).collect();
        let cpu: Vec<String> = s.cpu_percent.iter().map(|percent| format!("{percent:.0}")).collect();
        section.push_str(&format!(
            "| {:.0} | {} | {:.1} / {:.1} / {:.0} | {} | {:.0} / {:.0} | {} | {} | {} | {:.0} / {:.0} / {:.0} | {:.0} | {} | {} | {:.0} | {:.0} | {} | {:.0} |\n",
            s.at.as_secs_f64() / 60.0,
            s.requests,
            s.answer_ms[0],
            s.answer_ms[1],
            s.answer_ms[2],
            s.confirmed,
            s.confirm_ms[0],
            s.confirm_ms[1],
            rss.join(" / "),
            fds.join(" / "),
            cpu.join(" / "),
            s.servers_percent[0],
            s.servers_percent[1],
            s.servers_percent[2],
            s.machine_percent,
            s.connections,
            s.events,
            s.events_mib,
            s.database_mib,
            s.stream_messages,
            s.stream_mib,
        ));
    }
    // Flat or not: the first third (after a minute of warm-up) against the last third.
    let third = (samples.len() / 3).max(1);
    let (early, late) = (&samples[1.min(samples.len() - 1)..third + 1], &samples[samples.len() - third..]);
    section.push_str(&format!(
        "\nFirst third against last third (means): answer p99 {:.1} -> {:.1} ms, confirm p99 {:.0} -> {:.0} ms, \
         memory {} MiB.\n",
        mean(early, |s| s.answer_ms[1]),
        mean(late, |s| s.answer_ms[1]),
        mean(early, |s| s.confirm_ms[1]),
        mean(late, |s| s.confirm_ms[1]),
        (0..names.len())
            .map(|i| format!(
                "{} {:.0} -> {:.0}",
                names[i],
                mean(early, |s| s.rss_mib[i]),
                mean(late, |s| s.rss_mib[i])
            ))
            .collect::<Vec<_>>()
            .join(", "),
    ));
    section.push_str(top);
    event_store::bench::write_section("soak", &section);
}

/// Restarts the shop's PostgreSQL with `pg_stat_statements` loaded, and
/// waits until every service is ready again.
async fn load_pg_stat_statements(system: &mut System) {
    let pool = system.pool().await;
    sqlx::query("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'").execute(&pool).await.unwrap();
    system.restart_postgres(event_store::testing::Stop::Fast, Duration::from_millis(100)).await;
    for kind in Kind::ALL {
        system.wait_ready(kind, Duration::from_secs(60)).await;
    }
    let pool = system.pool().await;
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements").execute(&pool).await.unwrap();
}

/// Where PostgreSQL's time went during the load: its statements by total
/// execution time (all databases of the server: the shop has one), as a table.
async fn top_statements(pool: &sqlx::PgPool) -> String {
    let rows: Vec<(String, i64, f64, f64, f64)> = sqlx::query_as(
        "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 110), calls, total_exec_time, mean_exec_time, \
                100 * total_exec_time / nullif(sum(total_exec_time) OVER (), 0) \
         FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 10",
    )
    .fetch_all(pool)
    .await
    .expect("pg_stat_statements answers");
    let mut table = String::from(
        "\nPostgreSQL's statements during the load (pg_stat_statements, top 10 by total time):\n\n\
         | statement | calls | total ms | mean ms | share |\n|---|---:|---:|---:|---:|\n",
    );
    for (query, calls, total, mean, share) in rows {
        let query = query.replace('|', "\\|");
        table.push_str(&format!("| `{query}` | {calls} | {total:.0} | {mean:.3} | {share:.1}% |\n"));
    }
    table
}
