//! Writing snapshots off a command's path, the same for every backend.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{EventStore, Snapshot};

/// Snapshot writes in flight in this process; beyond [`MAX_IN_FLIGHT`] an
/// offered snapshot is dropped (the next one will do).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
const MAX_IN_FLIGHT: usize = 16;

/// [`EventStore::offer_snapshot`]: writes `snapshot` on a task of its own
/// (`event_store_snapshots_total{outcome}`: written, failed, dropped).
pub(crate) fn offer<S: EventStore + Clone>(store: &S, snapshot: Snapshot) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    if IN_FLIGHT.fetch_add(1, Ordering::SeqCst) >= MAX_IN_FLIGHT {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        metrics::counter!("event_store_snapshots_total", "outcome" => "dropped").increment(1);
        return;
    }
    let (store, slot) = (store.clone(), Slot);
    runtime.spawn(async move {
        // Counted out however the task ends (its runtime may stop before it runs).
        let _slot = slot;
        let (stream_id, version) = (snapshot.stream_id.clone(), snapshot.stream_version);
        let outcome = match store.write_snapshot(snapshot).await {
            Ok(()) => "written",
            Err(error) => {
                tracing::warn!(%error, stream_id, version, "a snapshot was not written");
                "failed"
            }
        };
        metrics::counter!("event_store_snapshots_total", "outcome" => outcome).increment(1);
    });
}

/// One write in flight, given back when dropped.
struct Slot;

impl Drop for Slot {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether `new` is kept instead of `kept`: a later version, or another
/// state schema (the code that writes is the code that reads).
pub(crate) fn replaces(new: &Snapshot, kept: &Snapshot) -> bool {
    new.stream_version > kept.stream_version || new.schema_version != kept.schema_version
}
