//! Given events, when a command, then events or an error.

use proptest::prelude::*;
use uuid::Uuid;

use super::*;
use crate::EventPayload;

fn order() -> Uuid {
    Uuid::from_u128(7)
}

fn request() -> PaymentCommand {
    PaymentCommand::Request {
        order_id: order(),
        amount_cents: 3998,
        currency: "EUR".into(),
        payment_token: "tok_visa".into(),
    }
}

fn requested() -> PaymentEvent {
    PaymentEvent::PaymentRequested {
        order_id: order(),
        amount_cents: 3998,
        currency: "EUR".into(),
        payment_token: "tok_visa".into(),
    }
}

fn capture(provider_ref: &str) -> PaymentCommand {
    PaymentCommand::Capture { order_id: order(), provider_ref: provider_ref.into() }
}

fn captured() -> PaymentEvent {
    PaymentEvent::PaymentCaptured { order_id: order(), amount_cents: 3998, provider_ref: "pay_1".into() }
}

fn decline() -> PaymentCommand {
    PaymentCommand::Decline { order_id: order(), reason: "card declined".into() }
}

fn refund() -> PaymentCommand {
    PaymentCommand::Refund { order_id: order(), reason: "order cancelled".into() }
}

fn refunded() -> PaymentEvent {
    PaymentEvent::PaymentRefunded { order_id: order(), amount_cents: 3998, reason: "order cancelled".into() }
}

fn voided() -> PaymentEvent {
    PaymentEvent::PaymentVoided { order_id: order(), reason: "order cancelled".into() }
}

fn when(given: &[PaymentEvent], command: PaymentCommand) -> Result<Vec<PaymentEvent>, DomainError> {
    Payment::decide(&Payment::fold(given), command)
}

#[test]
fn a_payment_is_requested_once() {
    assert_eq!(when(&[], request()), Ok(vec![requested()]));
    assert_eq!(when(&[requested()], request()), Ok(vec![]));
}

#[test]
fn a_request_needs_a_valid_amount_currency_and_token() {
    let bad = PaymentCommand::Request {
        order_id: order(),
        amount_cents: -1,
        currency: "eu".into(),
        payment_token: String::new(),
    };
    let Err(DomainError::Invalid(errors)) = when(&[], bad) else { panic!("expected invalid") };
    let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["amount_cents", "currency", "payment_token"]);
}

#[test]
fn the_gateway_captures_a_requested_payment() {
    assert_eq!(when(&[requested()], capture("pay_1")), Ok(vec![captured()]));
}

#[test]
fn a_redelivered_capture_changes_nothing() {
    assert_eq!(when(&[requested(), captured()], capture("pay_1")), Ok(vec![]));
}

#[test]
fn a_second_capture_with_another_reference_is_refused() {
    assert!(matches!(when(&[requested(), captured()], capture("pay_2")), Err(DomainError::Conflict(_))));
}

#[test]
fn the_gateway_declines_a_requested_payment_once() {
    let declined = PaymentEvent::PaymentDeclined { order_id: order(), reason: "card declined".into() };
    assert_eq!(when(&[requested()], decline()), Ok(vec![declined.clone()]));
    assert_eq!(when(&[requested(), declined.clone()], decline()), Ok(vec![]));
    assert!(matches!(when(&[requested(), declined], capture("pay_1")), Err(DomainError::Conflict(_))));
}

#[test]
fn a_captured_payment_cannot_be_declined() {
    assert!(matches!(when(&[requested(), captured()], decline()), Err(DomainError::Conflict(_))));
}

#[test]
fn a_gateway_answer_without_a_request_is_not_found() {
    assert_eq!(when(&[], capture("pay_1")), Err(DomainError::NotFound("payment")));
    assert_eq!(when(&[], decline()), Err(DomainError::NotFound("payment")));
}

#[test]
fn cancelling_refunds_a_captured_payment_once() {
    assert_eq!(when(&[requested(), captured()], refund()), Ok(vec![refunded()]));
    assert_eq!(when(&[requested(), captured(), refunded()], refund()), Ok(vec![]));
}

#[test]
fn cancelling_before_capture_voids_the_payment() {
    assert_eq!(when(&[requested()], refund()), Ok(vec![voided()]));
    assert_eq!(when(&[], refund()), Ok(vec![voided()]));
    assert_eq!(when(&[requested(), voided()], refund()), Ok(vec![]));
}

#[test]
fn a_payment_voided_after_its_request_may_have_been_charged() {
    assert!(Payment::fold(&[requested(), voided()]).voided_with_charge_unknown());
    assert!(!Payment::fold(&[voided()]).voided_with_charge_unknown(), "never requested: never charged");
    assert!(!Payment::fold(&[requested()]).voided_with_charge_unknown());
    let settled = Payment::fold(&[requested(), voided(), captured(), refunded()]);
    assert!(!settled.voided_with_charge_unknown(), "the capture came, and was refunded");
}

#[test]
fn a_voided_payment_is_not_requested_again() {
    assert_eq!(when(&[voided()], request()), Ok(vec![]));
}

#[test]
fn a_capture_that_arrives_after_the_void_is_refunded_at_once() {
    assert_eq!(
        when(&[requested(), voided()], capture("pay_1")),
        Ok(vec![
            captured(),
            PaymentEvent::PaymentRefunded {
                order_id: order(),
                amount_cents: 3998,
                reason: "captured after the order ended".into()
            }
        ])
    );
}

#[test]
fn a_declined_payment_has_nothing_to_refund() {
    let declined = PaymentEvent::PaymentDeclined { order_id: order(), reason: "card declined".into() };
    assert_eq!(when(&[requested(), declined], refund()), Ok(vec![]));
}

#[test]
fn every_payment_event_survives_storage() {
    let declined = PaymentEvent::PaymentDeclined { order_id: order(), reason: "r".into() };
    for event in [requested(), captured(), declined, refunded(), voided()] {
        let loaded = PaymentEvent::from_stored(event.event_type(), event.schema_version(), event.to_payload());
        assert_eq!(loaded.unwrap(), event);
    }
}

fn any_command() -> impl Strategy<Value = PaymentCommand> {
    prop_oneof![
        Just(request()),
        prop_oneof![Just("pay_1"), Just("pay_2")].prop_map(capture),
        Just(decline()),
        Just(refund()),
    ]
}

proptest! {
    #[test]
    fn a_payment_is_never_captured_twice_nor_refunded_beyond_its_capture(
        commands in prop::collection::vec(any_command(), 0..30)
    ) {
        let mut state = PaymentState::default();
        let mut captures = 0;
        for command in commands {
            if let Ok(events) = Payment::decide(&state, command) {
                for event in &events {
                    captures += usize::from(matches!(event, PaymentEvent::PaymentCaptured { .. }));
                    state = Payment::evolve(state, event);
                }
            }
            prop_assert!(captures <= 1);
            prop_assert!(state.refunded_cents <= state.captured_cents);
            prop_assert!(state.captured_cents <= state.amount_cents);
        }
    }
}
