//! The input rules of shared/API.md, in one place. Each check appends the
//! problems it finds to a list, so a client learns every broken rule at once.

use crate::FieldError;

pub const MAX_LINES: usize = 100;
pub const MAX_LINE_QUANTITY: i64 = 10_000;
pub const MAX_UNIT_PRICE_CENTS: i64 = 1_000_000_000;
pub const MAX_ID_CHARS: usize = 64;
pub const MAX_TOKEN_CHARS: usize = 256;
pub const MAX_REASON_CHARS: usize = 500;
/// Largest quantity one stock receipt may add.
pub const MAX_RECEIPT_QUANTITY: i64 = 1_000_000;
/// Largest quantity an inventory item may hold.
pub const MAX_ON_HAND: u64 = 1_000_000_000_000;

/// Collects broken rules.
#[derive(Debug, Default)]
pub struct Problems(pub Vec<FieldError>);

impl Problems {
    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }

    pub fn into_result(self) -> Result<(), crate::DomainError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(crate::DomainError::Invalid(self.0))
        }
    }
}

/// sku: 1 to 64 of `A-Z a-z 0-9 - _ .`
pub fn check_sku(problems: &mut Problems, field: &str, sku: &str) {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if sku.is_empty() || sku.len() > MAX_ID_CHARS || !sku.chars().all(allowed) {
        problems.add(field, "must be 1 to 64 characters of A-Z a-z 0-9 - _ .");
    }
}

/// customer_id: 1 to 64 characters, no control characters.
pub fn check_customer_id(problems: &mut Problems, field: &str, id: &str) {
    let n = id.chars().count();
    if n == 0 || n > MAX_ID_CHARS || id.chars().any(char::is_control) {
        problems.add(field, "must be 1 to 64 characters without control characters");
    }
}

/// currency: three upper-case letters.
pub fn check_currency(problems: &mut Problems, field: &str, currency: &str) {
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        problems.add(field, "must be three upper-case letters (ISO 4217)");
    }
}

pub fn check_quantity(problems: &mut Problems, field: &str, quantity: i64, max: i64) {
    if !(1..=max).contains(&quantity) {
        problems.add(field, format!("must be between 1 and {max}"));
    }
}

pub fn check_unit_price(problems: &mut Problems, field: &str, cents: i64) {
    if !(0..=MAX_UNIT_PRICE_CENTS).contains(&cents) {
        problems.add(field, format!("must be between 0 and {MAX_UNIT_PRICE_CENTS}"));
    }
}

/// Free text such as a payment token or a reason: 1 to `max` characters, no control characters.
pub fn check_text(problems: &mut Problems, field: &str, text: &str, max: usize) {
    let n = text.chars().count();
    if n == 0 || n > max || text.chars().any(char::is_control) {
        problems.add(field, format!("must be 1 to {max} characters without control characters"));
    }
}

/// Longest e-mail address (RFC 5321's path limit).
pub const MAX_EMAIL_CHARS: usize = 254;

/// An e-mail address: `local@domain`, 3 to 254 characters, one `@`, a local
/// part of at most 64, a domain of dot-separated labels of letters, digits
/// and `-`, no spaces or control characters. Deliverability is the mail
/// server's to tell.
pub fn check_email(problems: &mut Problems, field: &str, email: &str) {
    let well_formed = email.len() <= MAX_EMAIL_CHARS
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(local, domain)| {
            let label_ok = |label: &str| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.chars().all(|c| c.is_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            };
            !local.is_empty()
                && local.len() <= 64
                && !local.contains('@')
                && domain.contains('.')
                && domain.split('.').all(label_ok)
        });
    if !well_formed {
        problems.add(field, "must be an e-mail address (local@example.com), at most 254 characters");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e_mail_addresses_are_checked_for_their_form() {
        for good in ["a@b.co", "ada.lovelace+orders@example.com", "x@sub.domain-1.example", "ü@bücher.de"] {
            let mut problems = Problems::default();
            check_email(&mut problems, "contact_email", good);
            assert!(problems.0.is_empty(), "{good}");
        }
        let long = format!("{}@example.com", "a".repeat(65));
        for bad in ["", "a", "@b.co", "a@", "a@b", "a@@b.co", "a@b..co", "a b@c.de", "a@-b.co", "a@b.co\n", &long] {
            let mut problems = Problems::default();
            check_email(&mut problems, "contact_email", bad);
            assert_eq!(problems.0.len(), 1, "{bad:?}");
        }
    }

    fn broken(check: impl FnOnce(&mut Problems)) -> bool {
        let mut p = Problems::default();
        check(&mut p);
        !p.0.is_empty()
    }

    #[test]
    fn sku_allows_its_alphabet_and_length() {
        assert!(!broken(|p| check_sku(p, "sku", "SKU-1_a.b")));
        assert!(!broken(|p| check_sku(p, "sku", &"a".repeat(64))));
        assert!(broken(|p| check_sku(p, "sku", "")));
        assert!(broken(|p| check_sku(p, "sku", &"a".repeat(65))));
        assert!(broken(|p| check_sku(p, "sku", "SKU 1")));
        assert!(broken(|p| check_sku(p, "sku", "SKU/1")));
        assert!(broken(|p| check_sku(p, "sku", "SKÜ")));
    }

    #[test]
    fn currency_is_three_upper_case_letters() {
        assert!(!broken(|p| check_currency(p, "currency", "EUR")));
        for bad in ["eur", "EU", "EURO", "E1R", ""] {
            assert!(broken(|p| check_currency(p, "currency", bad)), "{bad}");
        }
    }

    #[test]
    fn customer_id_counts_characters_not_bytes() {
        assert!(!broken(|p| check_customer_id(p, "customer_id", &"é".repeat(64))));
        assert!(broken(|p| check_customer_id(p, "customer_id", &"é".repeat(65))));
        assert!(broken(|p| check_customer_id(p, "customer_id", "")));
        assert!(broken(|p| check_customer_id(p, "customer_id", "a\nb")));
    }

    #[test]
    fn numbers_have_inclusive_bounds() {
        assert!(!broken(|p| check_quantity(p, "q", 1, MAX_LINE_QUANTITY)));
        assert!(!broken(|p| check_quantity(p, "q", MAX_LINE_QUANTITY, MAX_LINE_QUANTITY)));
        assert!(broken(|p| check_quantity(p, "q", 0, MAX_LINE_QUANTITY)));
        assert!(broken(|p| check_quantity(p, "q", -1, MAX_LINE_QUANTITY)));
        assert!(broken(|p| check_quantity(p, "q", MAX_LINE_QUANTITY + 1, MAX_LINE_QUANTITY)));
        assert!(!broken(|p| check_unit_price(p, "c", 0)));
        assert!(!broken(|p| check_unit_price(p, "c", MAX_UNIT_PRICE_CENTS)));
        assert!(broken(|p| check_unit_price(p, "c", -1)));
        assert!(broken(|p| check_unit_price(p, "c", MAX_UNIT_PRICE_CENTS + 1)));
    }
}
