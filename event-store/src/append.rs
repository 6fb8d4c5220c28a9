//! Rules every backend applies to an append: what a well-formed append is,
//! and when a repeated append is the same one (and so returns the original result).

use std::collections::HashSet;

use crate::{AppendResult, NewEvent, RecordedEvent, StoreError};

/// The most events one append may carry.
pub const MAX_EVENTS_PER_APPEND: usize = 10_000;
/// The longest stream id.
pub const MAX_STREAM_ID_LEN: usize = 200;

pub(crate) fn validate(stream_id: &str, events: &[NewEvent]) -> Result<(), StoreError> {
    let invalid = |why: String| Err(StoreError::InvalidAppend(why));
    if stream_id.is_empty() || stream_id.len() > MAX_STREAM_ID_LEN || stream_id.chars().any(char::is_control) {
        return invalid(format!("a stream id is 1 to {MAX_STREAM_ID_LEN} bytes without control characters"));
    }
    if events.is_empty() || events.len() > MAX_EVENTS_PER_APPEND {
        return invalid(format!("an append carries 1 to {MAX_EVENTS_PER_APPEND} events"));
    }
    let mut ids = HashSet::with_capacity(if events.len() > 1 { events.len() } else { 0 });
    for event in events {
        if events.len() > 1 && !ids.insert(event.event_id) {
            return invalid(format!("event id {} appears twice in one append", event.event_id));
        }
        if event.event_type.is_empty() || event.schema_version == 0 {
            return invalid(format!("event {} needs a type and a schema version from 1", event.event_id));
        }
    }
    Ok(())
}

/// Records an append's outcome (metrics `event_store_appends_total`,
/// `event_store_events_appended_total`, `event_store_append_seconds`) and
/// logs its failure; the same for every backend.
pub(crate) fn observe(appended: &Result<AppendResult, StoreError>, events: usize, started: std::time::Instant) {
    let outcome = match appended {
        Ok(_) => {
            metrics::counter!("event_store_events_appended_total").increment(events as u64);
            "ok"
        }
        // A conflict is the optimistic concurrency doing its job: the caller decides again.
        Err(error @ StoreError::WrongExpectedVersion { .. }) => {
            tracing::debug!(%error, "append conflict");
            "conflict"
        }
        Err(error) => {
            tracing::error!(%error, "append failed");
            "error"
        }
    };
    metrics::counter!("event_store_appends_total", "outcome" => outcome).increment(1);
    metrics::histogram!("event_store_append_seconds").record(started.elapsed().as_secs_f64());
}

/// Some of the events' ids are stored already. If the stored events are
/// exactly this append (same stream, same order, same content), the result
/// is the original one; otherwise the retry is a different append.
pub(crate) fn replayed_result(
    stream_id: &str,
    events: &[NewEvent],
    mut stored: Vec<RecordedEvent>,
) -> Result<AppendResult, StoreError> {
    stored.sort_by(|a, b| (&a.stream_id, a.stream_version).cmp(&(&b.stream_id, b.stream_version)));
    let consecutive = stored.windows(2).all(|w| w[1].stream_version == w[0].stream_version + 1);
    let mismatch = events.iter().zip(&stored).find(|(new, old)| {
        old.stream_id != stream_id
            || old.event_id != new.event_id
            || old.event_type != new.event_type
            || old.schema_version != new.schema_version
            || old.payload != new.payload
    });
    match (stored.last(), mismatch) {
        (Some(last), None) if stored.len() == events.len() && consecutive => {
            Ok(AppendResult { stream_version: last.stream_version, log_position: last.log_position })
        }
        (_, Some((new, _))) => Err(StoreError::DuplicateEventId { event_id: new.event_id }),
        _ => {
            let stored_ids: HashSet<_> = stored.iter().map(|e| e.event_id).collect();
            let event_id = events.iter().map(|e| e.event_id).find(|id| stored_ids.contains(id));
            Err(StoreError::DuplicateEventId { event_id: event_id.unwrap_or(events[0].event_id) })
        }
    }
}
