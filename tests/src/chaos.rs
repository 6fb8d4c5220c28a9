//! The faults injected while the workload runs, at random moments, each kind
//! at least once per round: every kind of process SIGKILLed and started
//! again, NATS restarted, PostgreSQL restarted (cleanly and as a crash),
//! the payment gateway slow, failing, losing its answers after it acted or
//! garbling them, and a projection rebuilt through the admin API.
//!
//! Between faults the chaos acts as the orchestrator would: a process that
//! exited on its own (one that started while its database was away, say) is
//! started again, and counted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use event_store::testing::Stop;
use payment_gateway::Faults;

use crate::system::{Kind, System};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// SIGKILL, and started again after a pause.
    Kill(Kind),
    RestartNats,
    RestartPostgres(Stop),
    /// Every gateway call slower than the client's timeout.
    GatewaySlow,
    /// Half the gateway calls answered 503 before anything is done.
    GatewayFailing,
    /// Half the gateway calls carried out, then answered 503.
    GatewayLosesAnswers,
    /// A third of the gateway calls carried out, then answered with garbage.
    GatewayGarbles,
    /// A rebuild of the read model, requested through the admin API.
    Rebuild(&'static str),
}

impl Fault {
    pub fn label(self) -> String {
        match self {
            Fault::Kill(kind) => format!("SIGKILL {}", kind.name()),
            Fault::RestartNats => "restart NATS".into(),
            Fault::RestartPostgres(Stop::Fast) => "restart PostgreSQL (fast shutdown)".into(),
            Fault::RestartPostgres(Stop::Immediate) => "restart PostgreSQL (crash)".into(),
            Fault::GatewaySlow => "gateway slower than the timeout".into(),
            Fault::GatewayFailing => "gateway failing half its calls".into(),
            Fault::GatewayLosesAnswers => "gateway losing half its answers after acting".into(),
            Fault::GatewayGarbles => "gateway garbling a third of its answers".into(),
            Fault::Rebuild(name) => format!("rebuild {name} mid-load"),
        }
    }

    /// One round: every kind of fault, each of `kinds`' processes (but the
    /// gateway simulator) killed twice, shuffled.
    pub fn round(kinds: &[Kind]) -> Vec<Fault> {
        let mut faults = Vec::new();
        for kind in kinds.iter().filter(|kind| **kind != Kind::Gateway) {
            faults.extend([Fault::Kill(*kind), Fault::Kill(*kind)]);
        }
        let rebuilt = ["orders", "inventory", "payments", "story"][fastrand::usize(..4)];
        faults.extend([
            Fault::RestartNats,
            Fault::RestartPostgres(Stop::Fast),
            Fault::RestartPostgres(Stop::Immediate),
            Fault::GatewaySlow,
            Fault::GatewayFailing,
            Fault::GatewayLosesAnswers,
            Fault::GatewayGarbles,
            Fault::Rebuild(rebuilt),
        ]);
        fastrand::shuffle(&mut faults);
        faults
    }
}

/// What the chaos did.
#[derive(Debug, Default)]
pub struct ChaosLog {
    /// Each fault, when it began (since the start).
    pub injected: Vec<(Duration, String)>,
    /// Processes that exited on their own and were started again, by name.
    pub self_exits: BTreeMap<&'static str, u32>,
    /// The last log lines of each self-exit, for the report.
    pub exit_notes: Vec<String>,
}

impl ChaosLog {
    pub fn counts(&self) -> BTreeMap<String, u32> {
        let mut counts = BTreeMap::new();
        for (_, label) in &self.injected {
            *counts.entry(label.clone()).or_default() += 1;
        }
        counts
    }
}

/// Injects faults for `duration`: whole rounds, spread evenly, at random moments.
pub async fn run(system: &mut System, duration: Duration) -> ChaosLog {
    let started = Instant::now();
    let mut log = ChaosLog::default();
    let kinds = system.kinds();
    let per_round = Fault::round(&kinds).len();
    // A fault and its recovery take a few seconds: about five per fault.
    let rounds = (duration.as_secs() / (5 * per_round as u64)).max(1);
    let faults: Vec<Fault> = (0..rounds).flat_map(|_| Fault::round(&kinds)).collect();
    let slot = duration / faults.len() as u32;
    for (n, fault) in faults.into_iter().enumerate() {
        // A random moment in this fault's slot.
        let at = slot * n as u32 + slot.mul_f64(fastrand::f64() * 0.5);
        supervise_until(system, &mut log, started + at).await;
        log.injected.push((started.elapsed(), fault.label()));
        inject(system, fault).await;
    }
    supervise_until(system, &mut log, started + duration).await;
    log
}

/// Starts again every process that exited on its own, until `until`.
pub async fn supervise_until(system: &mut System, log: &mut ChaosLog, until: Instant) {
    loop {
        restart_exited(system, log);
        let now = Instant::now();
        if now >= until {
            return;
        }
        tokio::time::sleep((until - now).min(Duration::from_millis(200))).await;
    }
}

fn restart_exited(system: &mut System, log: &mut ChaosLog) {
    for kind in system.kinds() {
        let process = system.process(kind);
        if let Some(status) = process.exited() {
            let note = format!("{} exited on its own ({status}); last lines:\n{}", kind.name(), process.log_tail(3));
            process.restart_after_exit();
            *log.self_exits.entry(kind.name()).or_default() += 1;
            log.exit_notes.push(note);
        }
    }
}

fn pause(from_ms: u64, to_ms: u64) -> Duration {
    Duration::from_millis(fastrand::u64(from_ms..=to_ms))
}

async fn inject(system: &mut System, fault: Fault) {
    match fault {
        Fault::Kill(kind) => system.kill_and_restart(kind, pause(100, 1500)).await,
        Fault::RestartNats => system.restart_nats(pause(1000, 4000)).await,
        Fault::RestartPostgres(how) => system.restart_postgres(how, pause(500, 2500)).await,
        Fault::GatewaySlow => gateway_weather(system, Faults { latency_ms: 1500, ..Faults::default() }).await,
        Fault::GatewayFailing => gateway_weather(system, Faults { error_rate: 0.5, ..Faults::default() }).await,
        Fault::GatewayLosesAnswers => {
            gateway_weather(system, Faults { lost_answer_rate: 0.5, ..Faults::default() }).await
        }
        Fault::GatewayGarbles => {
            gateway_weather(system, Faults { garbled_answer_rate: 0.3, ..Faults::default() }).await
        }
        Fault::Rebuild(name) => request_rebuild(system, name).await,
    }
}

/// The gateway misbehaves for a few seconds.
async fn gateway_weather(system: &mut System, faults: Faults) {
    system.client.set_faults(faults).await;
    tokio::time::sleep(pause(2000, 4000)).await;
    system.client.set_faults(Faults::default()).await;
}

/// Asks the query API for a rebuild, until it accepts (it may be down).
async fn request_rebuild(system: &mut System, name: &str) {
    let client = system.client.clone();
    let url = format!("{}/v1/admin/projections/{name}/rebuild", client.query);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        let sent = client.http.post(&url).bearer_auth(&client.token).send().await;
        if sent.is_ok_and(|r| r.status().is_success() || r.status() == reqwest::StatusCode::CONFLICT) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("the query API never took the rebuild of {name}");
}
