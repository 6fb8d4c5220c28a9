//! The simulator's books: charges, voids and refunds by idempotency key.
//! Pure, so the rules are tested without HTTP.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChargeRequest {
    pub idempotency_key: String,
    pub amount_cents: u64,
    pub currency: String,
    pub token: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChargeStatus {
    Captured,
    Declined,
    /// Voided before any charge was made under its key: none ever will be.
    Voided,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    pub charge_id: String,
    pub status: ChargeStatus,
    /// Why it was declined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub amount_cents: u64,
    pub refunded_cents: u64,
}

/// Close an idempotency key: the charge made under it, if any, is answered;
/// if none was made, none ever will be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoidRequest {
    pub idempotency_key: String,
}

/// A charge with the key it was made (or voided) under, as the listing shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyedCharge {
    pub idempotency_key: String,
    #[serde(flatten)]
    pub charge: Charge,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    pub idempotency_key: String,
    pub charge_id: String,
    pub amount_cents: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    pub refund_id: String,
    pub charge_id: String,
    pub amount_cents: u64,
}

/// What the gateway has done, in sums.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub charges_captured: u64,
    pub charges_declined: u64,
    pub captured_cents: u64,
    pub refunds: u64,
    pub refunded_cents: u64,
    /// Keys closed before any charge was made under them.
    #[serde(default)]
    pub voids: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LedgerError {
    #[error("idempotency key {0:?} was used for another request")]
    KeyReused(String),
    #[error("{0}: {1}")]
    Invalid(&'static str, &'static str),
    #[error("no charge {0}")]
    UnknownCharge(String),
    #[error("charge {0} was not captured")]
    NotCaptured(String),
    #[error("charge {charge_id} has {left} cents left to refund, not {asked}")]
    TooMuch { charge_id: String, left: u64, asked: u64 },
}

#[derive(Debug, Default)]
pub struct Ledger {
    /// By charge id: the request that made it (none for a void), and the charge.
    charges: HashMap<String, (Option<ChargeRequest>, Charge)>,
    charge_keys: HashMap<String, String>,
    refunds: HashMap<String, (RefundRequest, Refund)>,
    totals: Totals,
}

impl Ledger {
    pub fn charge(&mut self, request: ChargeRequest) -> Result<Charge, LedgerError> {
        if let Some(charge_id) = self.charge_keys.get(&request.idempotency_key) {
            let (first, charge) = &self.charges[charge_id];
            return match first {
                // Voided first: nothing is charged under this key, ever.
                None => Ok(charge.clone()),
                Some(first) if *first == request => Ok(charge.clone()),
                Some(_) => Err(LedgerError::KeyReused(request.idempotency_key)),
            };
        }
        check_key(&request.idempotency_key)?;
        if request.currency.len() != 3 || !request.currency.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(LedgerError::Invalid("currency", "three upper-case letters"));
        }
        let (status, reason) = match request.token.as_str() {
            "tok_visa" => (ChargeStatus::Captured, None),
            "tok_declined" => (ChargeStatus::Declined, Some("card declined".to_owned())),
            _ => (ChargeStatus::Declined, Some("invalid card token".to_owned())),
        };
        let charge = Charge {
            charge_id: format!("ch_{}", Uuid::new_v4().simple()),
            status,
            reason,
            amount_cents: request.amount_cents,
            refunded_cents: 0,
        };
        if status == ChargeStatus::Captured {
            self.totals.charges_captured += 1;
            self.totals.captured_cents += request.amount_cents;
        } else {
            self.totals.charges_declined += 1;
        }
        self.charge_keys.insert(request.idempotency_key.clone(), charge.charge_id.clone());
        self.charges.insert(charge.charge_id.clone(), (Some(request), charge.clone()));
        Ok(charge)
    }

    /// Closes a charge's idempotency key: answers the charge made under it,
    /// or, if none was, records that none ever will be (a later charge with
    /// the key is answered `voided` and charges nothing).
    pub fn void(&mut self, request: VoidRequest) -> Result<Charge, LedgerError> {
        if let Some(charge_id) = self.charge_keys.get(&request.idempotency_key) {
            return Ok(self.charges[charge_id].1.clone());
        }
        check_key(&request.idempotency_key)?;
        let charge = Charge {
            charge_id: format!("vo_{}", Uuid::new_v4().simple()),
            status: ChargeStatus::Voided,
            reason: Some("voided before any charge was made".to_owned()),
            amount_cents: 0,
            refunded_cents: 0,
        };
        self.totals.voids += 1;
        self.charge_keys.insert(request.idempotency_key, charge.charge_id.clone());
        self.charges.insert(charge.charge_id.clone(), (None, charge.clone()));
        Ok(charge)
    }

    /// Every charge and void, with its key.
    pub fn charges(&self) -> Vec<KeyedCharge> {
        let mut all: Vec<KeyedCharge> = self
            .charge_keys
            .iter()
            .map(|(key, charge_id)| KeyedCharge {
                idempotency_key: key.clone(),
                charge: self.charges[charge_id].1.clone(),
            })
            .collect();
        all.sort_by(|a, b| a.idempotency_key.cmp(&b.idempotency_key));
        all
    }

    pub fn refund(&mut self, request: RefundRequest) -> Result<Refund, LedgerError> {
        if let Some((first, refund)) = self.refunds.get(&request.idempotency_key) {
            return if *first == request {
                Ok(refund.clone())
            } else {
                Err(LedgerError::KeyReused(request.idempotency_key))
            };
        }
        check_key(&request.idempotency_key)?;
        let Some((_, charge)) = self.charges.get_mut(&request.charge_id) else {
            return Err(LedgerError::UnknownCharge(request.charge_id));
        };
        if charge.status != ChargeStatus::Captured {
            return Err(LedgerError::NotCaptured(request.charge_id));
        }
        let left = charge.amount_cents - charge.refunded_cents;
        if request.amount_cents > left {
            return Err(LedgerError::TooMuch { charge_id: request.charge_id, left, asked: request.amount_cents });
        }
        charge.refunded_cents += request.amount_cents;
        let refund = Refund {
            refund_id: format!("re_{}", Uuid::new_v4().simple()),
            charge_id: request.charge_id.clone(),
            amount_cents: request.amount_cents,
        };
        self.totals.refunds += 1;
        self.totals.refunded_cents += request.amount_cents;
        self.refunds.insert(request.idempotency_key.clone(), (request, refund.clone()));
        Ok(refund)
    }

    pub fn totals(&self) -> Totals {
        self.totals
    }
}

fn check_key(key: &str) -> Result<(), LedgerError> {
    if key.is_empty() || key.len() > 200 {
        return Err(LedgerError::Invalid("idempotency_key", "1 to 200 characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(key: &str, token: &str, amount_cents: u64) -> ChargeRequest {
        ChargeRequest { idempotency_key: key.into(), amount_cents, currency: "EUR".into(), token: token.into() }
    }

    fn refund(key: &str, charge_id: &str, amount_cents: u64) -> RefundRequest {
        RefundRequest { idempotency_key: key.into(), charge_id: charge_id.into(), amount_cents }
    }

    #[test]
    fn the_token_decides_capture_or_decline() {
        let mut ledger = Ledger::default();
        assert_eq!(ledger.charge(charge("a", "tok_visa", 100)).unwrap().status, ChargeStatus::Captured);
        let declined = ledger.charge(charge("b", "tok_declined", 100)).unwrap();
        assert_eq!((declined.status, declined.reason.as_deref()), (ChargeStatus::Declined, Some("card declined")));
        let invalid = ledger.charge(charge("c", "tok_whatever", 100)).unwrap();
        assert_eq!(invalid.reason.as_deref(), Some("invalid card token"));
        let totals = ledger.totals();
        assert_eq!((totals.charges_captured, totals.charges_declined, totals.captured_cents), (1, 2, 100));
    }

    #[test]
    fn a_repeated_key_charges_once_and_answers_the_same() {
        let mut ledger = Ledger::default();
        let first = ledger.charge(charge("k", "tok_visa", 100)).unwrap();
        assert_eq!(ledger.charge(charge("k", "tok_visa", 100)).unwrap(), first);
        assert_eq!(ledger.totals().captured_cents, 100);
        assert_eq!(ledger.charge(charge("k", "tok_visa", 101)), Err(LedgerError::KeyReused("k".into())));
    }

    #[test]
    fn refunds_are_idempotent_and_bounded_by_the_capture() {
        let mut ledger = Ledger::default();
        let captured = ledger.charge(charge("k", "tok_visa", 100)).unwrap();
        let first = ledger.refund(refund("r1", &captured.charge_id, 60)).unwrap();
        assert_eq!(ledger.refund(refund("r1", &captured.charge_id, 60)).unwrap(), first);
        assert!(matches!(
            ledger.refund(refund("r2", &captured.charge_id, 41)),
            Err(LedgerError::TooMuch { left: 40, .. })
        ));
        ledger.refund(refund("r2", &captured.charge_id, 40)).unwrap();
        assert_eq!((ledger.totals().refunds, ledger.totals().refunded_cents), (2, 100));
    }

    #[test]
    fn a_void_answers_the_charge_made_under_its_key_or_closes_the_key() {
        let mut ledger = Ledger::default();
        let captured = ledger.charge(charge("k1", "tok_visa", 100)).unwrap();
        let void = |key: &str| VoidRequest { idempotency_key: key.into() };
        assert_eq!(ledger.void(void("k1")).unwrap(), captured, "the charge that was made");
        let voided = ledger.void(void("k2")).unwrap();
        assert_eq!((voided.status, voided.amount_cents), (ChargeStatus::Voided, 0));
        assert_eq!(ledger.charge(charge("k2", "tok_visa", 100)).unwrap(), voided, "nothing is charged after");
        assert_eq!(ledger.void(void("k2")).unwrap(), voided);
        let totals = ledger.totals();
        assert_eq!((totals.charges_captured, totals.captured_cents, totals.voids), (1, 100, 1));
        let keys: Vec<_> = ledger.charges().into_iter().map(|c| (c.idempotency_key, c.charge.status)).collect();
        assert_eq!(keys, [("k1".into(), ChargeStatus::Captured), ("k2".into(), ChargeStatus::Voided)]);
    }

    #[test]
    fn only_a_captured_charge_is_refunded() {
        let mut ledger = Ledger::default();
        let declined = ledger.charge(charge("k", "tok_declined", 100)).unwrap();
        assert!(matches!(ledger.refund(refund("r", &declined.charge_id, 1)), Err(LedgerError::NotCaptured(_))));
        assert!(matches!(ledger.refund(refund("r", "ch_nope", 1)), Err(LedgerError::UnknownCharge(_))));
        assert!(matches!(ledger.charge(charge("", "tok_visa", 1)), Err(LedgerError::Invalid("idempotency_key", _))));
        assert!(matches!(ledger.charge(charge("x", "tok_visa", 1)).map(|c| c.status), Ok(ChargeStatus::Captured)));
        let mut bad = charge("y", "tok_visa", 1);
        bad.currency = "eur".into();
        assert!(matches!(ledger.charge(bad), Err(LedgerError::Invalid("currency", _))));
    }
}
