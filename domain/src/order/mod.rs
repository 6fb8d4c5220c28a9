//! The order aggregate: placing an order, following its saga, confirming,
//! rejecting and cancelling it. Stream: `order-<order uuid>`.

mod commands;
mod decide;
mod events;
mod state;
#[cfg(test)]
mod tests;

pub use commands::{LineInput, OrderCommand, PlaceOrder};
pub use events::{CancelledBy, OrderEvent, OrderLine, LEGACY_DEADLINE};
pub use state::{OrderState, OrderStatus, PlacedOrder};

use crate::{Aggregate, DomainError};

pub struct Order;

impl Aggregate for Order {
    const CATEGORY: &'static str = "order";
    type State = OrderState;
    type Command = OrderCommand;
    type Event = OrderEvent;

    fn decide(state: &OrderState, command: OrderCommand) -> Result<Vec<OrderEvent>, DomainError> {
        decide::decide(state, command)
    }

    fn evolve(state: OrderState, event: &OrderEvent) -> OrderState {
        state::evolve(state, event)
    }
}
