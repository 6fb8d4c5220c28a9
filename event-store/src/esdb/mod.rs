//! The EventStoreDB / KurrentDB backend (feature `eventstoredb`), on the
//! official gRPC client, the `eventstore` crate.
//!
//! A thin adapter: `mapping` turns the trait's values into EventStoreDB's and
//! back (and is unit-tested); this module only calls the client. Where the
//! two differ, the adapter either makes up for it or declares it in
//! [`Guarantees`] (see `docs/adr/0007-eventstoredb-backend.md`):
//!
//! - **The log.** The store's global log is `$all` restricted to the
//!   system's categories (`order-`, `payment-`, `inventory-` streams, under an
//!   optional prefix): subscriptions filter on the server, reads of `$all`
//!   filter here. Appends to streams of other categories are refused, so the
//!   log holds every event the store accepted.
//! - **Positions** are `$all`'s `(commit, prepare)` byte offsets: ordered,
//!   never dense. Nothing is committed out of order, so nothing is held back.
//! - **Idempotence.** After every append the adapter reads the appended
//!   events back and compares them with what it sent, so a repeat with other
//!   content is refused and the result names the exact last position (one
//!   extra read per append). EventStoreDB recognises a repeat by event id
//!   within a stream, and with `Any` only within its idempotence window; an
//!   id may be stored again in another stream.
//! - **One stream per append**, as everywhere (the trait has no other).
//! - **Failures.** A client that stopped connecting is replaced
//!   (`connection`); every error class is mapped on purpose
//!   ([`mapping::store_error`]); each call's gRPC deadline is the operation
//!   timeout, which the connection string's `defaultDeadline` sets; a
//!   subscription that goes silent is taken again (`follower`); events
//!   another program wrote into the store's streams are skipped by the log
//!   and refused in a stream's history ([`mapping::Found`]).

mod connection;
mod follower;
mod head;
mod mapping;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use eventstore::{AppendToStreamOptions, ClientSettings, ReadAllOptions, ReadStreamOptions, StreamPosition};

use crate::{
    append, snapshot, AppendResult, EventStore, EventStream, ExpectedVersion, Guarantees, LogPosition, LogStats,
    NewEvent, RecordedEvent, Snapshot, StoreError,
};
use connection::Connection;
pub use mapping::Streams;

/// Events read from `$all` per request.
const PAGE: usize = 500;

/// How to reach EventStoreDB and which of its streams are the store's.
#[derive(Clone)]
pub struct EsdbConfig {
    /// The connection string: `esdb://localhost:2113?tls=false`.
    pub url: String,
    pub streams: Streams,
    /// Longest time one operation may take before it fails as unavailable,
    /// and each of its gRPC calls' deadline.
    pub operation_timeout: Duration,
    /// Longest wait between attempts to subscribe again after a failure,
    /// and between new clients after one stopped connecting.
    pub max_error_backoff: Duration,
    /// A subscription from which nothing at all (no event, no checkpoint)
    /// arrives for this long is taken again from its last event.
    pub idle_resubscribe: Duration,
}

impl EsdbConfig {
    /// The store of `categories`' streams, unprefixed, with default timeouts:
    /// operations take at most the connection string's `defaultDeadline`
    /// (milliseconds), 10 s without it.
    pub fn new(url: &str, categories: &[&str]) -> Self {
        Self {
            url: url.to_owned(),
            streams: Streams::new("", categories),
            operation_timeout: url::default_deadline(url).unwrap_or(Duration::from_secs(10)),
            max_error_backoff: Duration::from_secs(5),
            idle_resubscribe: Duration::from_secs(60),
        }
    }
}

/// Parses a connection string (`kurrentdb://` is read as `esdb://`: the
/// format is the same); the error says why it is not one.
pub fn parse_settings(url: &str) -> Result<ClientSettings, String> {
    let settings = url::esdb_scheme(url)
        .parse::<ClientSettings>()
        .map_err(|e| format!("not an EventStoreDB connection string: {e}"))?;
    // Appends are read back right after the write, and the log is followed
    // for read-your-writes: a follower may not have them yet.
    if settings.node_preference() != eventstore::NodePreference::Leader {
        return Err(format!(
            "nodePreference={:?}: this store writes and reads back at once, so it needs the leader (drop the setting or set nodePreference=leader)",
            settings.node_preference()
        ));
    }
    // The 4.0 client spends its first attempt on a single node picking the
    // host: with one attempt it never connects.
    if !settings.is_dns_discovery_enabled() && settings.hosts().len() == 1 && settings.max_discover_attempts() < 2 {
        return Err(format!(
            "maxDiscoverAttempts={}: against a single node the client never connects with fewer than 2 (drop the setting: the default is 3)",
            settings.max_discover_attempts()
        ));
    }
    Ok(settings)
}

mod url {
    use std::time::Duration;

    /// The connection string's `defaultDeadline`, if it sets a positive one
    /// (the client's own parser has checked the value; -1, no deadline,
    /// leaves the default).
    pub fn default_deadline(url: &str) -> Option<Duration> {
        let (_, query) = url.split_once('?')?;
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(name, _)| name.eq_ignore_ascii_case("defaultDeadline"))
            .and_then(|(_, value)| value.trim().parse::<u64>().ok())
            .filter(|&ms| ms > 0)
            .map(Duration::from_millis)
    }

    /// `kurrentdb://` and `kurrentdb+discover://` as the client reads them:
    /// only the scheme changes (a host named `kurrentdb`, common in compose
    /// files, stays what it is).
    pub fn esdb_scheme(url: &str) -> String {
        let trimmed = url.trim_start();
        let lower = trimmed.to_ascii_lowercase();
        for (from, to) in [("kurrentdb+discover://", "esdb+discover://"), ("kurrentdb://", "esdb://")] {
            if lower.starts_with(from) {
                return format!("{to}{}", &trimmed[from.len()..]);
            }
        }
        url.to_owned()
    }

    #[cfg(test)]
    mod tests {
        use std::time::Duration;

        use super::esdb_scheme;

        #[test]
        fn only_the_scheme_is_rewritten() {
            assert_eq!(esdb_scheme("kurrentdb://kurrentdb:2113?tls=false"), "esdb://kurrentdb:2113?tls=false");
            assert_eq!(esdb_scheme("esdb://kurrentdb:2113?tls=false"), "esdb://kurrentdb:2113?tls=false");
            assert_eq!(esdb_scheme("KurrentDB+discover://a:2113,b:2113"), "esdb+discover://a:2113,b:2113");
            assert_eq!(esdb_scheme("esdb+discover://kurrentdb-0:2113"), "esdb+discover://kurrentdb-0:2113");
            let settings = super::super::parse_settings("esdb://kurrentdb:2113?tls=false").unwrap();
            assert_eq!(settings.hosts()[0].host, "kurrentdb");
        }

        #[test]
        fn the_default_deadline_of_the_connection_string_is_the_operation_timeout() {
            use super::super::EsdbConfig;
            let timeout = |url: &str| EsdbConfig::new(url, &[]).operation_timeout;
            assert_eq!(timeout("esdb://h:2113?tls=false&defaultDeadline=2500"), Duration::from_millis(2500));
            assert_eq!(timeout("esdb://h:2113?DefaultDeadline=30000&tls=false"), Duration::from_secs(30));
            assert_eq!(timeout("esdb://h:2113?tls=false"), Duration::from_secs(10));
            assert_eq!(timeout("esdb://h:2113?defaultDeadline=-1"), Duration::from_secs(10));
            assert_eq!(timeout("esdb://h:2113"), Duration::from_secs(10));
        }

        #[test]
        fn a_single_node_needs_two_discovery_attempts() {
            let parse = |url: &str| super::super::parse_settings(url);
            let refused = parse("esdb://h:2113?tls=false&maxDiscoverAttempts=1").unwrap_err();
            assert!(refused.contains("maxDiscoverAttempts=1"), "{refused}");
            assert!(parse("esdb://h:2113?tls=false&maxDiscoverAttempts=2").is_ok());
            assert!(parse("esdb://a:2113,b:2113,c:2113?tls=false&maxDiscoverAttempts=1").is_ok());
        }

        #[test]
        fn only_the_leader_is_accepted() {
            let parse = |url: &str| super::super::parse_settings(url);
            assert!(parse("esdb://h:2113?tls=false&nodePreference=leader").is_ok());
            for preference in ["follower", "random", "readonlyreplica"] {
                let refused = parse(&format!("esdb://h:2113?tls=false&nodePreference={preference}")).unwrap_err();
                assert!(refused.contains("needs the leader"), "{preference}: {refused}");
            }
        }
    }
}

#[derive(Clone)]
pub struct EsdbEventStore {
    connection: Arc<Connection>,
    config: Arc<EsdbConfig>,
    head: Arc<head::Head>,
}

impl EsdbEventStore {
    /// A client of the server; it connects on first use (call inside a Tokio runtime).
    pub fn connect(config: EsdbConfig) -> Result<Self, StoreError> {
        let settings = parse_settings(&config.url).map_err(|e| StoreError::Backend(e.into()))?;
        let connection = Arc::new(Connection::new(settings, config.max_error_backoff)?);
        Ok(Self { connection, config: Arc::new(config), head: Arc::default() })
    }

    fn streams(&self) -> &Streams {
        &self.config.streams
    }

    async fn timed<T>(&self, work: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        StoreError::within(self.config.operation_timeout, work).await
    }

    /// At most `limit` events of one stream from `from_version` on.
    async fn read_stream_limited(
        &self,
        stream_id: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let options = ReadStreamOptions::default()
            .forwards()
            .position(StreamPosition::Position(from_version.saturating_sub(1)))
            .max_count(limit);
        self.read_stream_with(stream_id, options).await
    }

    /// At most `limit` events of one stream, the newest first.
    async fn read_stream_back(&self, stream_id: &str, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let options = ReadStreamOptions::default().backwards().position(StreamPosition::End).max_count(limit);
        self.read_stream_with(stream_id, options).await
    }

    /// The events of one stream a read with `options` finds (none if the stream does not exist).
    async fn read_stream_with(
        &self,
        stream_id: &str,
        options: ReadStreamOptions,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let options = options.deadline(self.config.operation_timeout);
        let lease = self.connection.lease();
        let mut read = match lease.client.read_stream(self.streams().name(stream_id), &options).await {
            Ok(read) => read,
            Err(eventstore::Error::ResourceNotFound) => return Ok(Vec::new()),
            Err(error) => return Err(lease.failed(error)),
        };
        let mut events = Vec::new();
        loop {
            match read.next().await {
                Ok(Some(resolved)) => {
                    let found = mapping::recorded_event(self.streams(), resolved.get_original_event())?;
                    events.extend(found.in_a_stream()?);
                }
                Ok(None) | Err(eventstore::Error::ResourceNotFound) => break,
                Err(error) => return Err(lease.failed(error)),
            }
        }
        lease.succeeded();
        Ok(events)
    }

    /// The store's events among `$all`'s after `after`, at most `limit`,
    /// reading pages of `$all` (which holds other streams too) until found.
    async fn read_log(&self, after: Option<LogPosition>, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut found = Vec::new();
        let mut seen = after;
        loop {
            let options = ReadAllOptions::default()
                .forwards()
                .position(mapping::start_at(seen))
                .max_count(PAGE)
                .deadline(self.config.operation_timeout);
            let lease = self.connection.lease();
            let mut read = lease.client.read_all(&options).await.map_err(|e| lease.failed(e))?;
            let mut read_count = 0;
            while let Some(resolved) = read.next().await.map_err(|e| lease.failed(e))? {
                read_count += 1;
                let event = resolved.get_original_event();
                let position = mapping::log_position(event.position);
                if seen.is_some_and(|seen| position <= seen) {
                    continue; // reads start at `seen` itself
                }
                seen = Some(position);
                if let Some(event) = mapping::recorded_event(self.streams(), event)?.in_the_log() {
                    found.push(event);
                    if found.len() == limit {
                        return Ok(found);
                    }
                }
            }
            lease.succeeded();
            if read_count < PAGE {
                return Ok(found);
            }
        }
    }

    /// Up to `count` events of `$all` backwards from `before`, newest first,
    /// each with its log position if it is the store's (for [`head::Head`]).
    async fn read_all_back(
        &self,
        before: StreamPosition<eventstore::Position>,
        count: usize,
    ) -> Result<Vec<head::Seen>, StoreError> {
        let options = ReadAllOptions::default()
            .position(before)
            .backwards()
            .max_count(count)
            .deadline(self.config.operation_timeout);
        let lease = self.connection.lease();
        let mut read = lease.client.read_all(&options).await.map_err(|e| lease.failed(e))?;
        let mut seen = Vec::new();
        while let Some(resolved) = read.next().await.map_err(|e| lease.failed(e))? {
            let event = resolved.get_original_event();
            let ours = mapping::recorded_event(self.streams(), event)?.in_the_log().map(|e| e.log_position);
            seen.push((event.position, ours));
        }
        lease.succeeded();
        Ok(seen)
    }

    /// Reads back what an append stored where it says it stored it, and
    /// checks it is this append (EventStoreDB takes a repeated event id as
    /// a repeat whatever its content).
    async fn confirm(
        &self,
        stream_id: &str,
        events: &[NewEvent],
        written: eventstore::WriteResult,
    ) -> Result<AppendResult, StoreError> {
        let first_version = (written.next_expected_version + 2).saturating_sub(events.len() as u64);
        let stored = self.read_stream_limited(stream_id, first_version, events.len()).await?;
        if stored.len() < events.len() {
            // Written, but not readable where it says: the outcome is unknown,
            // and a retry with the same ids is safe.
            return Err(StoreError::Unavailable(
                format!("the append to {stream_id} was acknowledged but its events cannot be read back yet").into(),
            ));
        }
        let mut result = append::replayed_result(stream_id, events, stored)?;
        if result.log_position == LogPosition::START {
            // A server that leaves `$all` positions out of stream reads: the
            // write's own position is where the append committed.
            result.log_position = mapping::log_position(written.position);
        }
        Ok(result)
    }

    /// The version conflict EventStoreDB reported, unless the events are
    /// stored already where the expected version says (a late repeat).
    async fn conflict(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
        current: eventstore::CurrentRevision,
    ) -> Result<AppendResult, StoreError> {
        if expected.required().is_none() {
            // `Any` never conflicts on the version: EventStoreDB refuses an
            // append that repeats only some stored ids (or in another order).
            return Err(StoreError::DuplicateEventId { event_id: events[0].event_id });
        }
        if let Some(repeat) = self.stored_already(stream_id, expected, events).await? {
            return repeat;
        }
        Err(StoreError::WrongExpectedVersion {
            stream_id: stream_id.to_owned(),
            expected,
            actual: mapping::version(current),
        })
    }

    /// The outcome of an earlier append of these events, if the stream holds
    /// them where this append would have put them (with `Any`: among its
    /// last events): a repeat, answered as one, or refused if its content
    /// differs.
    async fn stored_already(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<Option<Result<AppendResult, StoreError>>, StoreError> {
        let is_ours = |stored: &RecordedEvent| events.iter().any(|new| new.event_id == stored.event_id);
        let stored = match expected.required() {
            Some(required) => self.read_stream_limited(stream_id, required + 1, events.len()).await?,
            None => {
                let tail = self.read_stream_back(stream_id, PAGE).await?;
                let Some(slot) = mapping::slot_in_tail(tail, events[0].event_id, events.len()) else { return Ok(None) };
                slot
            }
        };
        if !stored.iter().any(is_ours) {
            return Ok(None);
        }
        Ok(Some(append::replayed_result(stream_id, events, stored)))
    }

    /// An append whose call ended Aborted or past its deadline: while an
    /// identical append is written but not yet indexed, the server drops a
    /// repeat without an answer. Look for the events (a few times, as the
    /// original is indexed) before answering unavailable.
    async fn dropped_repeat(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
        error: StoreError,
    ) -> Result<AppendResult, StoreError> {
        for wait in [Duration::ZERO, Duration::from_millis(50), Duration::from_millis(200)] {
            tokio::time::sleep(wait).await;
            if let Ok(Some(repeat)) = self.stored_already(stream_id, expected, events).await {
                return repeat;
            }
        }
        Err(error)
    }
}

#[async_trait]
impl EventStore for EsdbEventStore {
    #[tracing::instrument(skip_all, fields(stream_id = %stream_id, events = events.len()))]
    async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        append::validate(stream_id, &events)?;
        if !self.streams().owns(stream_id) {
            return Err(StoreError::InvalidAppend(format!(
                "stream {stream_id} is of no category of this store ({:?})",
                self.streams().filter_prefixes()
            )));
        }
        let started = std::time::Instant::now();
        let data = events.iter().map(mapping::event_data).collect::<Result<Vec<_>, _>>()?;
        // The call may take three quarters of the operation's time: the rest
        // is for reading the events back, or looking for a dropped repeat.
        let options = AppendToStreamOptions::default()
            .expected_revision(mapping::expected_revision(expected))
            .deadline(self.config.operation_timeout * 3 / 4);
        let appended = self
            .timed(async {
                let lease = self.connection.lease();
                match lease.client.append_to_stream(self.streams().name(stream_id), &options, data).await {
                    Ok(written) => {
                        lease.succeeded();
                        self.confirm(stream_id, &events, written).await
                    }
                    Err(eventstore::Error::WrongExpectedVersion { current, .. }) => {
                        self.conflict(stream_id, expected, &events, current).await
                    }
                    Err(error) if mapping::maybe_a_dropped_repeat(&error) => {
                        let error = lease.failed(error);
                        self.dropped_repeat(stream_id, expected, &events, error).await
                    }
                    Err(error) => Err(lease.failed(error)),
                }
            })
            .await;
        append::observe(&appended, events.len(), started);
        appended
    }

    async fn read_stream(&self, stream_id: &str, from_version: u64) -> Result<Vec<RecordedEvent>, StoreError> {
        self.timed(self.read_stream_limited(stream_id, from_version.max(1), usize::MAX)).await
    }

    async fn read_stream_page(
        &self,
        stream_id: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.timed(self.read_stream_limited(stream_id, from_version.max(1), limit)).await
    }

    async fn read_all(&self, after: Option<LogPosition>, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.timed(self.read_log(after, limit)).await
    }

    fn subscribe(&self, after: Option<LogPosition>) -> EventStream {
        let follower = follower::Follower::new(self.clone(), after);
        Box::pin(futures_util::stream::unfold(follower, |mut follower| async move {
            let item = follower.next().await;
            Some((item, follower))
        }))
    }

    async fn stats(&self) -> Result<LogStats, StoreError> {
        // Nothing commits behind a reader: nothing is ever held back.
        let head = self.head.find(PAGE, |before, count| self.read_all_back(before, count));
        Ok(LogStats { readable_head: self.timed(head).await?, ..LogStats::default() })
    }

    /// The last event of the stream's snapshot stream (`snapshot-<stream id>`
    /// under the store's prefix, a category no subscription of the store
    /// follows; the stream keeps only its latest event, `$maxCount` 1).
    async fn read_snapshot(&self, stream_id: &str) -> Result<Option<Snapshot>, StoreError> {
        let name = self.streams().name(&mapping::snapshot_stream(stream_id));
        let options = ReadStreamOptions::default()
            .backwards()
            .position(StreamPosition::End)
            .max_count(1)
            .deadline(self.config.operation_timeout);
        self.timed(async {
            let lease = self.connection.lease();
            let mut read = match lease.client.read_stream(name, &options).await {
                Ok(read) => read,
                Err(eventstore::Error::ResourceNotFound) => return Ok(None),
                Err(error) => return Err(lease.failed(error)),
            };
            match read.next().await {
                Ok(Some(resolved)) => mapping::snapshot(stream_id, resolved.get_original_event()).map(Some),
                Ok(None) | Err(eventstore::Error::ResourceNotFound) => Ok(None),
                Err(error) => Err(lease.failed(error)),
            }
        })
        .await
    }

    async fn write_snapshot(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        let kept = self.read_snapshot(&snapshot.stream_id).await?;
        if kept.is_some_and(|kept| !snapshot::replaces(&snapshot, &kept)) {
            return Ok(());
        }
        let name = self.streams().name(&mapping::snapshot_stream(&snapshot.stream_id));
        let data = mapping::snapshot_data(&snapshot)?;
        let options = AppendToStreamOptions::default().deadline(self.config.operation_timeout);
        self.timed(async {
            let lease = self.connection.lease();
            let written = lease.client.append_to_stream(name.as_str(), &options, data).await;
            let written = written.map_err(|e| lease.failed(e))?;
            if written.next_expected_version == 0 {
                // The first snapshot: only the latest is ever read.
                let metadata = eventstore::StreamMetadata::builder().max_count(1).build();
                lease
                    .client
                    .set_stream_metadata(name.as_str(), &options, &metadata)
                    .await
                    .map_err(|e| lease.failed(e))?;
            }
            Ok(())
        })
        .await
    }

    fn offer_snapshot(&self, snapshot: Snapshot) {
        snapshot::offer(self, snapshot);
    }

    async fn locate(&self, position: u64) -> Result<Option<LogPosition>, StoreError> {
        // Appends commit where they are prepared: an event's commit and
        // prepare positions are the same.
        let at = LogPosition { commit: position, position };
        let options = ReadAllOptions::default()
            .forwards()
            .position(mapping::start_at(Some(at)))
            .max_count(1)
            .deadline(self.config.operation_timeout);
        self.timed(async {
            let lease = self.connection.lease();
            // A number that is no event's position may be refused by the
            // server: then no event has it. Not reaching the server is an error.
            let refused = |error| match lease.failed(error) {
                unavailable @ StoreError::Unavailable(_) => Err(unavailable),
                other => {
                    tracing::debug!(error = %other, position, "no event at this position");
                    Ok(None)
                }
            };
            let mut read = match lease.client.read_all(&options).await {
                Ok(read) => read,
                Err(error) => return refused(error),
            };
            let resolved = match read.next().await {
                Ok(Some(resolved)) => resolved,
                Ok(None) => return Ok(None),
                Err(error) => return refused(error),
            };
            let event = resolved.get_original_event();
            Ok(mapping::recorded_event(self.streams(), event)?
                .in_the_log()
                .map(|e| e.log_position)
                .filter(|found| found.position == position))
        })
        .await
    }

    fn guarantees(&self) -> Guarantees {
        Guarantees { store_wide_event_ids: false, any_version_repeats_always_recognised: false }
    }
}
