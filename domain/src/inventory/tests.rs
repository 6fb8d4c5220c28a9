//! Given events, when a command, then events or an error.

use proptest::prelude::*;
use uuid::Uuid;

use super::*;
use crate::EventPayload;

const SKU: &str = "SKU-1";

fn order(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn received(quantity: u64) -> InventoryEvent {
    InventoryEvent::StockReceived { sku: SKU.into(), quantity }
}

fn reserved(n: u128, quantity: u32) -> InventoryEvent {
    InventoryEvent::StockReserved { sku: SKU.into(), order_id: order(n), quantity }
}

fn reserve(n: u128, quantity: i64) -> InventoryCommand {
    InventoryCommand::Reserve { sku: SKU.into(), order_id: order(n), quantity }
}

fn release(n: u128) -> InventoryCommand {
    InventoryCommand::Release { sku: SKU.into(), order_id: order(n) }
}

fn when(given: &[InventoryEvent], command: InventoryCommand) -> Result<Vec<InventoryEvent>, DomainError> {
    Inventory::decide(&Inventory::fold(given), command)
}

#[test]
fn a_first_receipt_creates_the_item() {
    let receive = InventoryCommand::Receive { sku: SKU.into(), quantity: 50 };
    assert_eq!(when(&[], receive), Ok(vec![received(50)]));
}

#[test]
fn a_receipt_needs_a_valid_sku_and_quantity() {
    for (sku, quantity) in [("SKU 1", 5), (SKU, 0), (SKU, -5), (SKU, rules::MAX_RECEIPT_QUANTITY + 1)] {
        let receive = InventoryCommand::Receive { sku: sku.into(), quantity };
        assert!(matches!(when(&[], receive), Err(DomainError::Invalid(_))), "{sku} {quantity}");
    }
}

#[test]
fn an_item_never_holds_more_than_its_limit() {
    let full = received(rules::MAX_ON_HAND);
    let receive = InventoryCommand::Receive { sku: SKU.into(), quantity: 1 };
    assert!(matches!(when(&[full], receive), Err(DomainError::Conflict(_))));
}

#[test]
fn stock_on_hand_is_reserved_for_an_order() {
    assert_eq!(when(&[received(5)], reserve(1, 5)), Ok(vec![reserved(1, 5)]));
}

#[test]
fn reserving_twice_for_the_same_order_reserves_once() {
    assert_eq!(when(&[received(5), reserved(1, 2)], reserve(1, 2)), Ok(vec![]));
}

#[test]
fn a_reservation_beyond_what_is_available_is_rejected() {
    assert_eq!(
        when(&[received(5), reserved(1, 4)], reserve(2, 2)),
        Ok(vec![InventoryEvent::StockReservationRejected {
            sku: SKU.into(),
            order_id: order(2),
            requested: 2,
            available: 1
        }])
    );
}

#[test]
fn an_unknown_item_rejects_reservations() {
    assert!(matches!(
        when(&[], reserve(1, 1)).unwrap().as_slice(),
        [InventoryEvent::StockReservationRejected { available: 0, .. }]
    ));
}

#[test]
fn a_rejected_order_is_not_reserved_for_later() {
    let rejected = when(&[received(1)], reserve(1, 2)).unwrap();
    let history = [vec![received(1), received(5)], rejected].concat();
    assert_eq!(when(&history, reserve(1, 2)), Ok(vec![]));
}

#[test]
fn a_reservation_needs_a_valid_quantity() {
    for quantity in [0, -1, rules::MAX_LINE_QUANTITY + 1] {
        assert!(matches!(when(&[received(5)], reserve(1, quantity)), Err(DomainError::Invalid(_))));
    }
}

#[test]
fn releasing_returns_what_the_order_held_once() {
    let released = InventoryEvent::StockReleased { sku: SKU.into(), order_id: order(1), quantity: 3 };
    assert_eq!(when(&[received(5), reserved(1, 3)], release(1)), Ok(vec![released.clone()]));
    assert_eq!(when(&[received(5), reserved(1, 3), released], release(1)), Ok(vec![]));
}

#[test]
fn a_release_before_the_reservation_blocks_the_late_reservation() {
    let tombstone = InventoryEvent::StockReleased { sku: SKU.into(), order_id: order(1), quantity: 0 };
    assert_eq!(when(&[received(5)], release(1)), Ok(vec![tombstone.clone()]));
    assert_eq!(when(&[received(5), tombstone], reserve(1, 3)), Ok(vec![]));
}

#[test]
fn every_inventory_event_survives_storage() {
    let events = [
        received(3),
        reserved(1, 2),
        InventoryEvent::StockReservationRejected { sku: SKU.into(), order_id: order(2), requested: 9, available: 1 },
        InventoryEvent::StockReleased { sku: SKU.into(), order_id: order(1), quantity: 2 },
    ];
    for event in events {
        let loaded = InventoryEvent::from_stored(event.event_type(), event.schema_version(), event.to_payload());
        assert_eq!(loaded.unwrap(), event);
    }
}

fn any_command() -> impl Strategy<Value = InventoryCommand> {
    let order_id = (0u128..6).prop_map(order);
    prop_oneof![
        (-2i64..30).prop_map(|quantity| InventoryCommand::Receive { sku: SKU.into(), quantity }),
        (order_id.clone(), -1i64..20).prop_map(|(order_id, quantity)| InventoryCommand::Reserve {
            sku: SKU.into(),
            order_id,
            quantity
        }),
        order_id.prop_map(|order_id| InventoryCommand::Release { sku: SKU.into(), order_id }),
    ]
}

proptest! {
    #[test]
    fn available_stock_is_on_hand_minus_reserved_and_never_negative(
        commands in prop::collection::vec(any_command(), 0..60)
    ) {
        let mut state = InventoryState::default();
        for command in commands {
            if let Ok(events) = Inventory::decide(&state, command) {
                for event in &events {
                    state = Inventory::evolve(state, event);
                }
            }
            prop_assert!(state.reserved <= state.on_hand);
            prop_assert_eq!(state.available(), state.on_hand - state.reserved);
            prop_assert_eq!(state.reserved, state.holds.values().map(|q| u64::from(*q)).sum::<u64>());
            prop_assert!(state.holds.keys().all(|o| !state.closed.contains(o)));
        }
    }
}
