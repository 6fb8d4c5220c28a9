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

    /// The name of the stream that holds the instance with this id.
    fn stream_id(id: impl std::fmt::Display) -> String {
        format!("{}-{}", Self::CATEGORY, id)
    }
}
