//! The pure domain model of the shop: orders, payments and inventory.
//!
//! Each aggregate is a pair of functions over its own events:
//! `decide(&State, Command) -> Result<Vec<Event>, DomainError>` and
//! `evolve(State, &Event) -> State`. Nothing here does IO, reads the clock or
//! draws random numbers: time and ids arrive inside the commands.

pub mod codec;
mod error;
pub mod inventory;
pub mod order;
pub mod payment;
pub mod personal;
pub mod rules;

pub use codec::{DecodeError, EventPayload};
pub use error::{DomainError, FieldError};

/// The stream categories of the system: every event lives in a stream of one
/// of them (`order-<uuid>`, `payment-<order uuid>`, `inventory-<sku>`).
pub const CATEGORIES: [&str; 3] = [
    <order::Order as Aggregate>::CATEGORY,
    <payment::Payment as Aggregate>::CATEGORY,
    <inventory::Inventory as Aggregate>::CATEGORY,
];

/// An event-sourced aggregate: its state is the fold of its events.
pub trait Aggregate {
    /// Stream category: an instance lives in the stream `<CATEGORY>-<id>`.
    const CATEGORY: &'static str;
    type State: Default + Clone + std::fmt::Debug;
    type Command;
    type Event: EventPayload + Clone + std::fmt::Debug;

    /// Decides which events a command causes in the given state.
    fn decide(state: &Self::State, command: Self::Command) -> Result<Vec<Self::Event>, DomainError>;

    /// Applies one event to the state.
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State;

    /// The state after all the given events.
    fn fold<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self::State
    where
        Self::Event: 'a,
    {
        events.into_iter().fold(Self::State::default(), Self::evolve)
    }

    /// Snapshots of the state, for aggregates whose streams grow long; none
    /// by default.
    const SNAPSHOTS: Option<SnapshotPolicy> = None;

    /// The state as a snapshot keeps it (asked only with [`Self::SNAPSHOTS`]).
    fn encode_state(_state: &Self::State) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// A state a snapshot of this code's schema kept; `None` if it cannot be
    /// read (the loader then folds the whole stream).
    fn decode_state(_state: serde_json::Value) -> Option<Self::State> {
        None
    }

    /// How large a state is, in entries (an item's open orders): what
    /// writing a snapshot of it costs grows with it. Snapshots of a large
    /// state are spaced out to match
    /// ([`SnapshotPolicy::interval`]); 0 by default.
    fn state_size(_state: &Self::State) -> u64 {
        0
    }

    /// The name of the stream that holds the instance with this id.
    fn stream_id(id: impl std::fmt::Display) -> String {
        format!("{}-{}", Self::CATEGORY, id)
    }
}

/// When an aggregate's state is snapshotted, and in which shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// The version of the state's shape: change it whenever the state's
    /// serialised form changes. Snapshots of another version are ignored
    /// (the state is folded from the stream, and the next snapshot replaces them).
    pub schema_version: u32,
    /// A snapshot is taken every this many events of a stream, and after a
    /// load that folded at least this many (more for a large state: see
    /// [`Self::interval`]).
    pub every: u64,
}

impl SnapshotPolicy {
    /// The events between snapshots of a state of `size` entries: `every`,
    /// doubled until it is at least `size`. Writing snapshots then costs at
    /// most about one entry per event, however large the state grows (an
    /// item in a sale holds thousands of open orders, and a snapshot every
    /// `every` events would write them all out each time), and a load folds
    /// fewer events after its snapshot than the larger of `every` and twice
    /// the snapshot's entries. An event costs more to read than an entry (an
    /// item's about ten times: ids, metadata), so a cold load of a large
    /// state folds more than it would with snapshots every `every` events:
    /// paid once per load (a restart), where the old spacing paid on every
    /// command of the item.
    pub fn interval(self, size: u64) -> u64 {
        let mut interval = self.every.max(1);
        while interval < size {
            interval = interval.saturating_mul(2);
        }
        interval
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::SnapshotPolicy;

    #[test]
    fn snapshots_of_a_large_state_come_as_far_apart_as_it_is_large() {
        let policy = SnapshotPolicy { schema_version: 1, every: 100 };
        let intervals: Vec<u64> = [0, 100, 101, 399, 400, 8_000].map(|size| policy.interval(size)).to_vec();
        assert_eq!(intervals, [100, 100, 200, 400, 400, 12_800]);
    }

    proptest! {
        /// At least `every` and the state's size (a snapshot costs at most
        /// an entry per event), less than twice the larger (what a load folds
        /// after its snapshot).
        #[test]
        fn a_snapshot_interval_is_bounded_on_both_sides(every in 1u64..1_000, size in 0u64..10_000_000) {
            let interval = SnapshotPolicy { schema_version: 1, every }.interval(size);
            prop_assert!(interval >= every && interval >= size);
            prop_assert!(interval < 2 * every.max(size));
        }
    }
}
