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
    /// load that folded at least this many.
    pub every: u64,
}
