//! For tests: a metrics recorder that counts, set for the test's thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

/// Counters by `name{label=value,...}`; gauges and histograms are dropped.
#[derive(Default)]
pub(crate) struct Counters(Mutex<HashMap<String, Arc<AtomicU64>>>);

impl Counters {
    /// A counter's value (0 if never incremented).
    pub(crate) fn get(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let counters = self.0.lock().expect("counters");
        counters.get(&render(name, labels.iter().copied())).map_or(0, |c| c.load(Ordering::SeqCst))
    }
}

fn render<'a>(name: &str, labels: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let labels: Vec<String> = labels.map(|(k, v)| format!("{k}={v}")).collect();
    format!("{name}{{{}}}", labels.join(","))
}

impl Recorder for Counters {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let name = render(key.name(), key.labels().map(|l| (l.key(), l.value())));
        Counter::from_arc(self.0.lock().expect("counters").entry(name).or_default().clone())
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}
