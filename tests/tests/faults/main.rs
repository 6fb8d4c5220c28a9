//! Nothing lost, nothing doubled, under real faults.
//!
//! Every service runs as its own process, the saga participants as two (on
//! the same consumers), on a PostgreSQL and a NATS server of the test's
//! own. A mixed workload runs (orders of one to three lines on
//! a few hot items with limited stock, declined cards, cancels at random
//! moments, stock receipts; every POST under an `Idempotency-Key`, retried
//! until answered) while faults strike at random moments: each kind of
//! process SIGKILLed and started again, NATS restarted, PostgreSQL restarted
//! cleanly and crashed, the gateway slow, failing, losing its answers after
//! acting and garbling them, a projection rebuilt mid-load. Then the system
//! settles and the books are checked (see `system_tests::books`), every
//! figure printed.
//!
//! The short run (about a minute) runs with the other tests. The long run:
//!
//!     FAULT_RUN_SECONDS=600 cargo nextest run --workspace --all-features -E 'binary(faults)' --no-capture
//!
//! which also writes its figures to BENCHMARKS.md (section `faults`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use payment_gateway::Faults;
use system_tests::books::{self, Report};
use system_tests::chaos::{self, ChaosLog};
use system_tests::system::{Settings, System};
use system_tests::workload::{self, Records, WorkloadConfig};

/// How long the system may take to settle once the load and the faults stop.
const SETTLE_WITHIN: Duration = Duration::from_secs(180);

fn run_seconds() -> u64 {
    std::env::var("FAULT_RUN_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_faults_nothing_acknowledged_is_lost_and_nothing_is_applied_twice() {
    let seconds = run_seconds();
    // Two saga processes on the same consumers, as a deployment that keeps
    // the sagas going while one instance restarts: they race for the hot
    // items' versions, and each is killed on its own.
    let mut system = System::start(Settings { saga_instances: 2, ..Settings::default() }).await;
    eprintln!("fault run: {seconds} s; logs in {}", system.dir.display());
    let records: workload::Shared = Arc::new(Mutex::new(Records::default()));
    let config = WorkloadConfig::default();
    workload::stock_up(&system.client, &config, &records).await;

    let started = Instant::now();
    let load =
        tokio::spawn(workload::run(system.client.clone(), config, Duration::from_secs(seconds), records.clone()));
    let mut chaos_log = chaos::run(&mut system, Duration::from_secs(seconds)).await;
    load.await.expect("the workload does not panic");
    let load_took = started.elapsed();

    // Calm: the gateway behaves, every process runs.
    system.client.set_faults(Faults::default()).await;
    chaos::supervise_until(&mut system, &mut chaos_log, Instant::now()).await;
    for kind in system.kinds() {
        system.wait_ready(kind, Duration::from_secs(60)).await;
    }
    let (report, settled_in) = books::settle(&mut system, &records, SETTLE_WITHIN).await;
    let mut report = report;
    if report.violations.is_empty() {
        rebuild_and_compare(&mut system, &mut report).await;
    }
    figures(&mut report, &system, &chaos_log, load_took, settled_in).await;
    report.print("books after the fault run");
    if seconds >= 600 {
        write_benchmarks(&report, &chaos_log, seconds);
    }
    let failed = !report.violations.is_empty();
    system.stop(failed);
    assert!(!failed, "{} violations (see above)", report.violations.len());
}

/// Rebuilds every read model from scratch on the command line; the rows
/// must be those the live projections wrote.
async fn rebuild_and_compare(system: &mut System, report: &mut Report) {
    let pool = system.pool().await;
    let live = books::read_models(&pool).await;
    for name in ["orders", "inventory", "payments", "story"] {
        let rebuilt = system.rebuild_from_the_command_line(name).await;
        if !rebuilt {
            report.violations.push(format!("projections rebuild {name} failed (see {})", system.dir.display()));
        }
    }
    let rebuilt = books::read_models(&pool).await;
    books::rebuilds_match(&live, &rebuilt, report);
}

async fn figures(report: &mut Report, system: &System, chaos: &ChaosLog, load_took: Duration, settled_in: Duration) {
    let mut head = vec![
        ("load".to_owned(), format!("{:.0} s", load_took.as_secs_f64())),
        ("settled in".to_owned(), format!("{:.1} s", settled_in.as_secs_f64())),
        ("faults injected".to_owned(), chaos.injected.len().to_string()),
    ];
    for (label, count) in chaos.counts() {
        head.push((format!("fault: {label}"), count.to_string()));
    }
    for (name, count) in &chaos.self_exits {
        head.push((format!("{name} exited on its own and was started again"), count.to_string()));
    }
    head.push(("dead letters".to_owned(), dead_letters(system).await.to_string()));
    head.append(&mut report.figures);
    report.figures = head;
    for note in &chaos.exit_notes {
        eprintln!("note: {note}");
    }
}

/// Messages the saga participants gave up on.
async fn dead_letters(system: &System) -> u64 {
    let Ok(client) = async_nats::connect(system.nats.url()).await else { return u64::MAX };
    let js = async_nats::jetstream::new(client);
    match js.get_stream(&system.dead_letter_stream).await {
        Ok(stream) => stream.get_info().await.map_or(u64::MAX, |info| info.state.messages),
        Err(_) => 0,
    }
}

fn write_benchmarks(report: &Report, chaos: &ChaosLog, seconds: u64) {
    let mut section = format!(
        "## Fault injection (long run)\n\n`FAULT_RUN_SECONDS={seconds} cargo nextest run --workspace --all-features -E 'binary(faults)' --no-capture` — {}.\n\n\
         Every service its own process (the saga participants two, on the same consumers) on a PostgreSQL and a \
         NATS server of the test's own; faults at random moments \
         (see `tests/tests/faults/main.rs`); then the system settles and the books are checked.\n\n| figure | value |\n|---|---:|\n",
        event_store::bench::commit_and_date()
    );
    for (name, value) in &report.figures {
        section.push_str(&format!("| {name} | {value} |\n"));
    }
    section.push_str(&format!("| violations | {} |\n", report.violations.len()));
    section.push_str("\nFaults in the order they struck (seconds into the run):\n\n");
    let timeline: Vec<String> =
        chaos.injected.iter().map(|(at, label)| format!("{:.0} s {label}", at.as_secs_f64())).collect();
    section.push_str(&timeline.join("; "));
    section.push('\n');
    event_store::bench::write_section("faults", &section);
}
