//! Given events, when a command, then events or an error.

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::json;
use uuid::Uuid;

use super::*;
use crate::{Aggregate, DomainError, EventPayload};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap()
}

fn order_id() -> Uuid {
    Uuid::from_u128(0x42)
}

fn line(sku: &str, quantity: i64, unit_price_cents: i64) -> LineInput {
    LineInput { sku: sku.into(), quantity, unit_price_cents }
}

fn place_with(lines: Vec<LineInput>) -> PlaceOrder {
    PlaceOrder {
        order_id: order_id(),
        customer_id: "c-42".into(),
        currency: "EUR".into(),
        payment_token: "tok_visa".into(),
        lines,
        placed_at: t0(),
        deadline: t0() + Duration::minutes(15),
        contact_email: None,
    }
}

fn place() -> PlaceOrder {
    place_with(vec![line("SKU-1", 2, 1999), line("SKU-2", 1, 500)])
}

fn placed() -> OrderEvent {
    Order::decide(&OrderState::NotPlaced, OrderCommand::Place(place())).unwrap().remove(0)
}

fn reserved(sku: &str) -> OrderEvent {
    OrderEvent::OrderLineReserved { sku: sku.into() }
}

fn ready() -> OrderEvent {
    OrderEvent::OrderReadyForPayment { amount_cents: 4498, currency: "EUR".into(), payment_token: "tok_visa".into() }
}

fn confirmed() -> OrderEvent {
    OrderEvent::OrderConfirmed { provider_ref: "pay_1".into() }
}

fn when(given: &[OrderEvent], command: OrderCommand) -> Result<Vec<OrderEvent>, DomainError> {
    Order::decide(&Order::fold(given), command)
}

fn broken_fields(result: Result<Vec<OrderEvent>, DomainError>) -> Vec<String> {
    match result {
        Err(DomainError::Invalid(errors)) => errors.into_iter().map(|e| e.field).collect(),
        other => panic!("expected a rule to be broken, got {other:?}"),
    }
}

fn cancel(by: CancelledBy) -> OrderCommand {
    OrderCommand::Cancel { reason: "changed my mind".into(), by }
}

#[test]
fn placing_an_order_records_its_lines_and_total() {
    assert_eq!(
        when(&[], OrderCommand::Place(place())),
        Ok(vec![OrderEvent::OrderPlaced {
            order_id: order_id(),
            customer_id: "c-42".into(),
            currency: "EUR".into(),
            payment_token: "tok_visa".into(),
            lines: vec![
                OrderLine { sku: "SKU-1".into(), quantity: 2, unit_price_cents: 1999 },
                OrderLine { sku: "SKU-2".into(), quantity: 1, unit_price_cents: 500 },
            ],
            total_cents: 4498,
            placed_at: t0(),
            deadline: t0() + Duration::minutes(15),
            contact_email: None,
        }])
    );
}

#[test]
fn placing_an_order_at_the_limits_is_accepted() {
    let lines = (0..100).map(|i| line(&format!("SKU-{i}"), 10_000, 1_000_000_000)).collect();
    let events = when(&[], OrderCommand::Place(place_with(lines))).unwrap();
    let OrderEvent::OrderPlaced { total_cents, .. } = &events[0] else { panic!() };
    assert_eq!(*total_cents, 100 * 10_000 * 1_000_000_000);
    assert!(when(&[], OrderCommand::Place(place_with(vec![line("FREE", 1, 0)]))).is_ok());
}

#[test]
fn an_order_needs_one_to_a_hundred_lines() {
    assert_eq!(broken_fields(when(&[], OrderCommand::Place(place_with(vec![])))), ["lines"]);
    let lines = (0..101).map(|i| line(&format!("SKU-{i}"), 1, 1)).collect();
    assert_eq!(broken_fields(when(&[], OrderCommand::Place(place_with(lines)))), ["lines"]);
}

#[test]
fn an_order_rejects_a_duplicate_sku() {
    let lines = vec![line("SKU-1", 1, 1), line("SKU-1", 2, 1)];
    assert_eq!(broken_fields(when(&[], OrderCommand::Place(place_with(lines)))), ["lines[1].sku"]);
}

#[test]
fn an_order_rejects_out_of_range_quantities_and_prices() {
    for (q, p, field) in [
        (0, 1, "lines[0].quantity"),
        (-1, 1, "lines[0].quantity"),
        (10_001, 1, "lines[0].quantity"),
        (1, -1, "lines[0].unit_price_cents"),
        (1, 1_000_000_001, "lines[0].unit_price_cents"),
    ] {
        let result = when(&[], OrderCommand::Place(place_with(vec![line("SKU-1", q, p)])));
        assert_eq!(broken_fields(result), [field], "quantity {q}, price {p}");
    }
}

#[test]
fn an_order_rejects_a_bad_currency_customer_token_sku_or_deadline() {
    let mut cmd = place();
    cmd.currency = "eur".into();
    cmd.customer_id = "x".repeat(65);
    cmd.payment_token = String::new();
    cmd.lines[1].sku = "SKU 2".into();
    cmd.deadline = cmd.placed_at;
    assert_eq!(
        broken_fields(when(&[], OrderCommand::Place(cmd))),
        ["customer_id", "currency", "payment_token", "lines[1].sku", "deadline"]
    );
}

#[test]
fn placing_an_order_twice_conflicts() {
    assert!(matches!(when(&[placed()], OrderCommand::Place(place())), Err(DomainError::Conflict(_))));
}

#[test]
fn commands_to_an_order_never_placed_are_not_found() {
    for command in [
        OrderCommand::RecordLineReserved { sku: "SKU-1".into() },
        OrderCommand::RecordLineRejected { sku: "SKU-1".into(), reason: "none left".into() },
        OrderCommand::Confirm { provider_ref: "p".into() },
        cancel(CancelledBy::Customer),
        OrderCommand::Expire { now: t0() },
    ] {
        assert_eq!(when(&[], command), Err(DomainError::NotFound("order")));
    }
}

#[test]
fn reserving_the_last_line_makes_the_order_ready_for_payment() {
    let first = OrderCommand::RecordLineReserved { sku: "SKU-1".into() };
    assert_eq!(when(&[placed()], first), Ok(vec![reserved("SKU-1")]));
    let last = OrderCommand::RecordLineReserved { sku: "SKU-2".into() };
    assert_eq!(when(&[placed(), reserved("SKU-1")], last), Ok(vec![reserved("SKU-2"), ready()]));
}

#[test]
fn a_redelivered_reservation_changes_nothing() {
    let again = OrderCommand::RecordLineReserved { sku: "SKU-1".into() };
    assert_eq!(when(&[placed(), reserved("SKU-1")], again), Ok(vec![]));
}

#[test]
fn a_reservation_for_a_line_the_order_lacks_is_invalid() {
    let other = OrderCommand::RecordLineReserved { sku: "SKU-9".into() };
    assert_eq!(broken_fields(when(&[placed()], other)), ["sku"]);
}

#[test]
fn a_reservation_after_the_order_ended_is_ignored() {
    let cancelled =
        OrderEvent::OrderCancelled { reason: "x".into(), by: CancelledBy::Customer, payment_refund_due: false };
    let late = OrderCommand::RecordLineReserved { sku: "SKU-1".into() };
    assert_eq!(when(&[placed(), cancelled], late), Ok(vec![]));
}

#[test]
fn a_rejected_line_rejects_a_pending_order_once() {
    let reject = || OrderCommand::RecordLineRejected { sku: "SKU-2".into(), reason: "out of stock".into() };
    let rejected = OrderEvent::OrderRejected { reason: "out of stock".into(), sku: "SKU-2".into() };
    assert_eq!(when(&[placed(), reserved("SKU-1")], reject()), Ok(vec![rejected.clone()]));
    assert_eq!(when(&[placed(), rejected], reject()), Ok(vec![]));
}

#[test]
fn a_captured_payment_confirms_a_ready_order_once() {
    let confirm = || OrderCommand::Confirm { provider_ref: "pay_1".into() };
    let ready_order = [placed(), reserved("SKU-1"), reserved("SKU-2"), ready()];
    assert_eq!(when(&ready_order, confirm()), Ok(vec![confirmed()]));
    let confirmed_order = [&ready_order[..], &[confirmed()]].concat();
    assert_eq!(when(&confirmed_order, confirm()), Ok(vec![]));
}

#[test]
fn a_payment_before_the_stock_is_reserved_conflicts() {
    let confirm = OrderCommand::Confirm { provider_ref: "pay_1".into() };
    assert!(matches!(when(&[placed()], confirm), Err(DomainError::Conflict(_))));
}

#[test]
fn a_payment_captured_after_cancellation_leaves_the_order_cancelled() {
    let cancelled = when(&[placed(), reserved("SKU-1"), reserved("SKU-2"), ready()], cancel(CancelledBy::Deadline));
    let history = [vec![placed(), reserved("SKU-1"), reserved("SKU-2"), ready()], cancelled.unwrap()].concat();
    assert_eq!(when(&history, OrderCommand::Confirm { provider_ref: "p".into() }), Ok(vec![]));
}

#[test]
fn a_customer_cancels_a_pending_order() {
    assert_eq!(
        when(&[placed()], cancel(CancelledBy::Customer)),
        Ok(vec![OrderEvent::OrderCancelled {
            reason: "changed my mind".into(),
            by: CancelledBy::Customer,
            payment_refund_due: false,
        }])
    );
}

#[test]
fn cancelling_a_confirmed_order_says_a_refund_is_due() {
    let history = [placed(), reserved("SKU-1"), reserved("SKU-2"), ready(), confirmed()];
    assert_eq!(
        when(&history, cancel(CancelledBy::Customer)),
        Ok(vec![OrderEvent::OrderCancelled {
            reason: "changed my mind".into(),
            by: CancelledBy::Customer,
            payment_refund_due: true,
        }])
    );
}

#[test]
fn a_customer_cannot_cancel_a_cancelled_or_rejected_order() {
    let cancelled = when(&[placed()], cancel(CancelledBy::Customer)).unwrap();
    let history = [vec![placed()], cancelled].concat();
    assert!(matches!(when(&history, cancel(CancelledBy::Customer)), Err(DomainError::Conflict(_))));
    let rejected = OrderEvent::OrderRejected { reason: "none".into(), sku: "SKU-1".into() };
    assert!(matches!(when(&[placed(), rejected], cancel(CancelledBy::Customer)), Err(DomainError::Conflict(_))));
}

#[test]
fn the_sagas_cancellations_of_an_ended_order_change_nothing() {
    let cancelled = when(&[placed()], cancel(CancelledBy::Customer)).unwrap();
    let history = [vec![placed()], cancelled].concat();
    assert_eq!(when(&history, cancel(CancelledBy::PaymentDeclined)), Ok(vec![]));
    assert_eq!(when(&history, cancel(CancelledBy::Deadline)), Ok(vec![]));
}

#[test]
fn a_cancellation_needs_a_reason() {
    let command = OrderCommand::Cancel { reason: String::new(), by: CancelledBy::Customer };
    assert_eq!(broken_fields(when(&[placed()], command)), ["reason"]);
}

#[test]
fn an_order_still_pending_at_its_deadline_is_cancelled() {
    let deadline = t0() + Duration::minutes(15);
    let early = OrderCommand::Expire { now: deadline - Duration::seconds(1) };
    assert_eq!(when(&[placed()], early), Ok(vec![]));
    let due = when(&[placed()], OrderCommand::Expire { now: deadline }).unwrap();
    assert!(matches!(due.as_slice(), [OrderEvent::OrderCancelled { by: CancelledBy::Deadline, .. }]));
}

/// The state says who ended a cancelled order, and a later cancellation by
/// someone else (which decides nothing) does not change it: the deadline
/// watcher tells its own expiry from a customer's cancel by it.
#[test]
fn a_cancelled_order_remembers_who_cancelled_it() {
    let cancelled_by = |history: &[OrderEvent]| match Order::fold(history) {
        OrderState::Placed(order) => order.cancelled_by,
        OrderState::NotPlaced => panic!("placed"),
    };
    assert_eq!(cancelled_by(&[placed()]), None);
    let expired = when(&[placed()], OrderCommand::Expire { now: t0() + Duration::days(1) }).unwrap();
    assert_eq!(cancelled_by(&[vec![placed()], expired].concat()), Some(CancelledBy::Deadline));
    let by_customer = [vec![placed()], when(&[placed()], cancel(CancelledBy::Customer)).unwrap()].concat();
    assert_eq!(cancelled_by(&by_customer), Some(CancelledBy::Customer));
    let late = OrderCommand::Expire { now: t0() + Duration::days(1) };
    assert_eq!(when(&by_customer, late), Ok(vec![]));
}

#[test]
fn the_deadline_does_not_touch_a_confirmed_order() {
    let history = [placed(), reserved("SKU-1"), reserved("SKU-2"), ready(), confirmed()];
    let late = OrderCommand::Expire { now: t0() + Duration::days(1) };
    assert_eq!(when(&history, late), Ok(vec![]));
}

fn shipped() -> OrderEvent {
    OrderEvent::OrderShipped { shipped_at: t0() + Duration::hours(1) }
}

fn ship() -> OrderCommand {
    OrderCommand::Ship { now: t0() + Duration::hours(1) }
}

fn confirmed_order() -> Vec<OrderEvent> {
    vec![placed(), reserved("SKU-1"), reserved("SKU-2"), ready(), confirmed()]
}

#[test]
fn a_confirmed_order_ships() {
    assert_eq!(when(&confirmed_order(), ship()), Ok(vec![shipped()]));
}

#[test]
fn only_a_confirmed_order_ships() {
    let pending = vec![placed(), reserved("SKU-1")];
    let shipped_already = [confirmed_order(), vec![shipped()]].concat();
    let cancelled = [vec![placed()], when(&[placed()], cancel(CancelledBy::Customer)).unwrap()].concat();
    let rejected = vec![placed(), OrderEvent::OrderRejected { reason: "none".into(), sku: "SKU-1".into() }];
    for history in [pending, shipped_already, cancelled, rejected] {
        assert!(matches!(when(&history, ship()), Err(DomainError::Conflict(_))), "{history:?}");
    }
    assert_eq!(when(&[], ship()), Err(DomainError::NotFound("order")));
}

#[test]
fn a_shipped_order_cannot_be_cancelled_and_the_saga_leaves_it_alone() {
    let history = [confirmed_order(), vec![shipped()]].concat();
    assert!(matches!(when(&history, cancel(CancelledBy::Customer)), Err(DomainError::Conflict(_))));
    assert_eq!(when(&history, cancel(CancelledBy::PaymentDeclined)), Ok(vec![]));
    assert_eq!(when(&history, OrderCommand::Expire { now: t0() + Duration::days(1) }), Ok(vec![]));
    assert_eq!(when(&history, OrderCommand::Confirm { provider_ref: "pay_1".into() }), Ok(vec![]));
    let OrderState::Placed(order) = Order::fold(&history) else { panic!("placed") };
    assert!(order.status.is_final());
}

#[test]
fn every_order_event_survives_storage() {
    let events = [
        placed(),
        reserved("SKU-1"),
        ready(),
        confirmed(),
        shipped(),
        OrderEvent::OrderRejected { reason: "r".into(), sku: "SKU-1".into() },
        OrderEvent::OrderCancelled { reason: "r".into(), by: CancelledBy::PaymentDeclined, payment_refund_due: true },
    ];
    for event in events {
        let loaded = OrderEvent::from_stored(event.event_type(), event.schema_version(), event.to_payload());
        assert_eq!(loaded.unwrap(), event);
    }
}

#[test]
fn order_placed_v1_loads_with_the_legacy_deadline() {
    let v1 = json!({
        "order_id": order_id(), "customer_id": "c-1", "currency": "EUR", "payment_token": "tok_visa",
        "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 100}],
        "total_cents": 100, "placed_at": "2026-01-01T12:00:00Z"
    });
    let OrderEvent::OrderPlaced { deadline, .. } = OrderEvent::from_stored("OrderPlaced", 1, v1).unwrap() else {
        panic!("not an OrderPlaced")
    };
    assert_eq!(deadline, t0() + LEGACY_DEADLINE);
    assert_eq!(placed().schema_version(), 2);
}

#[test]
fn a_sealed_contact_goes_into_the_event_as_it_came_and_an_order_without_one_has_none() {
    use crate::personal::Sealed;
    let sealed = Sealed { key_id: Uuid::from_u128(7), sealed: "bm9uY2UuLi4".into() };
    let cmd = PlaceOrder { contact_email: Some(sealed.clone()), ..place() };
    let events = Order::decide(&OrderState::NotPlaced, OrderCommand::Place(cmd)).unwrap();
    let OrderEvent::OrderPlaced { contact_email, .. } = &events[0] else { panic!("not an OrderPlaced") };
    assert_eq!(contact_email.as_ref(), Some(&sealed));
    // Stored with it, and loaded back; an event without one (all before it existed) has none.
    let payload = events[0].to_payload();
    assert_eq!(payload["contact_email"], json!({"key_id": Uuid::from_u128(7), "sealed": "bm9uY2UuLi4"}));
    assert_eq!(OrderEvent::from_stored("OrderPlaced", 2, payload).unwrap(), events[0]);
    let without = placed().to_payload();
    assert!(without.get("contact_email").is_none(), "{without}");
    let OrderEvent::OrderPlaced { contact_email, .. } = OrderEvent::from_stored("OrderPlaced", 2, without).unwrap()
    else {
        panic!("not an OrderPlaced")
    };
    assert_eq!(contact_email, None);
}

#[test]
fn unknown_types_versions_and_payloads_are_decode_errors() {
    use crate::DecodeError;
    assert!(matches!(OrderEvent::from_stored("OrderReturned", 1, json!({})), Err(DecodeError::UnknownType(_))));
    assert!(matches!(
        OrderEvent::from_stored("OrderPlaced", 3, json!({})),
        Err(DecodeError::UnknownVersion { version: 3, .. })
    ));
    assert!(matches!(OrderEvent::from_stored("OrderConfirmed", 2, json!({})), Err(DecodeError::UnknownVersion { .. })));
    assert!(matches!(
        OrderEvent::from_stored("OrderConfirmed", 1, json!({"provider_ref": 7})),
        Err(DecodeError::Payload { .. })
    ));
}

fn any_command() -> impl Strategy<Value = OrderCommand> {
    let sku = prop_oneof![Just("SKU-1".to_string()), Just("SKU-2".to_string())];
    let by = prop_oneof![Just(CancelledBy::Customer), Just(CancelledBy::PaymentDeclined), Just(CancelledBy::Deadline)];
    prop_oneof![
        Just(OrderCommand::Place(place())),
        sku.clone().prop_map(|sku| OrderCommand::RecordLineReserved { sku }),
        sku.prop_map(|sku| OrderCommand::RecordLineRejected { sku, reason: "none left".into() }),
        Just(OrderCommand::Confirm { provider_ref: "pay_1".into() }),
        Just(ship()),
        by.prop_map(|by| OrderCommand::Cancel { reason: "why".into(), by }),
        (0i64..40).prop_map(|m| OrderCommand::Expire { now: t0() + Duration::minutes(m) }),
    ]
}

proptest! {
    #[test]
    fn an_orders_status_only_moves_forward(commands in prop::collection::vec(any_command(), 0..40)) {
        let mut state = OrderState::NotPlaced;
        let mut last_rank = 0;
        let mut confirmations = 0;
        for command in commands {
            if let Ok(events) = Order::decide(&state, command) {
                for event in &events {
                    if matches!(event, OrderEvent::OrderConfirmed { .. }) {
                        confirmations += 1;
                    }
                    state = Order::evolve(state, event);
                }
            }
            if let OrderState::Placed(order) = &state {
                prop_assert!(order.status.rank() >= last_rank, "{:?} after rank {}", order.status, last_rank);
                last_rank = order.status.rank();
                prop_assert!(order.reserved.iter().all(|sku| order.has_line(sku)));
                if matches!(order.status, OrderStatus::Confirmed | OrderStatus::Shipped) {
                    prop_assert!(order.ready_for_payment);
                }
            }
        }
        prop_assert!(confirmations <= 1);
    }
}
