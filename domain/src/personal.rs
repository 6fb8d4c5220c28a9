//! Personal data as the events carry it: sealed under a key per customer
//! (crypto-shredding, ADR 0014). The domain never sees it in clear; the
//! application seals it before a command is decided, and whoever shows or
//! sends it opens it with the customer's key, which an erasure destroys.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A value sealed under the data key `key_id` (AES-256-GCM; the text is
/// `base64url(nonce || ciphertext || tag)`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sealed {
    pub key_id: Uuid,
    pub sealed: String,
}
