//! `Idempotency-Key`: a retried request returns the first one's outcome and
//! changes nothing more. Keys are remembered, with their outcomes, for
//! `IDEMPOTENCY_KEY_TTL` (24 hours by default), per principal.
//!
//! A straight-line step of each command (zero-to-production's
//! `try_processing`): [`try_processing`] claims the key (a row in
//! `http_idempotency_keys`) and says to start, or returns the outcome saved
//! by the request that ran first; the command then runs and [`save`]s its
//! outcome, or [`release`]s the key after a failure of ours (the client's
//! retry runs again). Requests racing the first one wait for its outcome.
//!
//! The claimed request's event ids and new aggregate ids are derived from the
//! key and the key's generation (drawn at the first claim), and its clock is
//! the claim's, so a request that takes over the claim of one that died
//! recognises the events the dead one appended (see
//! `commands::already_applied`), while a key used again after it was forgotten
//! derives new ids. Only the holder of a claim saves or releases it: a
//! request whose claim was taken over leaves the key to its successor.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::outcome::Refusal;
use crate::EventIds;

/// How long a claim holds before another request may take it over.
pub const LEASE: Duration = Duration::from_secs(15);
/// How often a waiting request looks for the first one's outcome.
const POLL: Duration = Duration::from_millis(20);

/// Namespace of the ids derived from idempotency keys.
const NAMESPACE: Uuid = Uuid::from_u128(0x6f0c_9d2e_51b4_4c1a_9a7e_3c55_d0b8_21aa);

pub const MAX_KEY_LEN: usize = 255;

/// A request's key, and what identifies the request under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub key: String,
    /// The route and the exact body: see [`fingerprint`].
    pub fingerprint: Vec<u8>,
}

/// A request's identity under its key: the route and the exact body.
pub fn fingerprint(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut hash = Sha256::new();
    hash.update(method.as_bytes());
    hash.update(b"\n");
    hash.update(path.as_bytes());
    hash.update(b"\n");
    hash.update(body);
    hash.finalize().to_vec()
}

/// A key is 1 to 255 visible ASCII characters.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_LEN && key.bytes().all(|b| b.is_ascii_graphic())
}

/// The outcome remembered under a key: what the command answered, or which
/// rule of the client's it broke. Failures of ours are not remembered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Saved<T> {
    Accepted(T),
    Refused(Refusal),
}

/// A claim on a key: the request holding it runs, as of `requested_at`, with
/// these ids (derived from the key's generation, in time order as of
/// `requested_at` for generations drawn as UUIDv7s).
#[derive(Debug, Clone)]
pub struct Lease {
    pub requested_at: DateTime<Utc>,
    pub ids: EventIds,
    holder: Uuid,
}

/// What to do with a request, given its key.
#[derive(Debug)]
pub enum NextAction<T> {
    /// Run it under this lease, then save its outcome.
    StartProcessing(Lease),
    /// It ran before: answer this.
    ReturnSaved(Saved<T>),
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("this Idempotency-Key was used with another request")]
    Reused,
    #[error("a request with this Idempotency-Key is still being processed")]
    Busy,
    #[error("the outcome saved under this key cannot be read: {0}")]
    Unreadable(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The namespace of a key's derived ids; keys claimed before generations
/// existed have none.
fn namespace(principal: &str, key: &str, generation: Option<Uuid>) -> Uuid {
    match generation {
        Some(generation) => Uuid::new_v5(&NAMESPACE, format!("{principal}\n{key}\n{generation}").as_bytes()),
        None => Uuid::new_v5(&NAMESPACE, format!("{principal}\n{key}").as_bytes()),
    }
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    fingerprint: Vec<u8>,
    outcome: Option<serde_json::Value>,
    /// What the service answered before outcomes were saved (migration 0010).
    status: Option<i16>,
    body: Option<serde_json::Value>,
    lease_expired: bool,
}

/// Claims `key` for a request of `principal`, or returns the outcome saved by
/// the request that claimed it first. Waits for a running first request at
/// most `wait`, then answers [`KeyError::Busy`].
pub async fn try_processing<T: DeserializeOwned>(
    pool: &PgPool,
    principal: &str,
    key: &Key,
    wait: Duration,
) -> Result<NextAction<T>, KeyError> {
    let deadline = tokio::time::Instant::now() + wait;
    let lease = |(requested_at, generation): (DateTime<Utc>, Option<Uuid>), holder| {
        let namespace = namespace(principal, &key.key, generation);
        let ids = generation.map_or(EventIds::Derived(namespace), |g| EventIds::derived(g, namespace, requested_at));
        NextAction::StartProcessing(Lease { requested_at, ids, holder })
    };
    loop {
        let holder = Uuid::new_v4();
        let claimed: Option<(DateTime<Utc>, Option<Uuid>)> = sqlx::query_as(
            "INSERT INTO http_idempotency_keys (principal, key, fingerprint, lease_until, generation, holder) \
             VALUES ($1, $2, $3, now() + $4 * interval '1 millisecond', $6, $5) \
             ON CONFLICT (principal, key) DO NOTHING RETURNING requested_at, generation",
        )
        .bind(principal)
        .bind(&key.key)
        .bind(&key.fingerprint)
        .bind(LEASE.as_millis() as f64)
        .bind(holder)
        // A UUIDv7: the request's ids are derived in time order (EventIds::derived).
        .bind(Uuid::now_v7())
        .fetch_optional(pool)
        .await?;
        if let Some(claimed) = claimed {
            return Ok(lease(claimed, holder));
        }
        let row: Option<KeyRow> = sqlx::query_as(
            "SELECT fingerprint, outcome, status, body, lease_until < now() AS lease_expired \
             FROM http_idempotency_keys WHERE principal = $1 AND key = $2",
        )
        .bind(principal)
        .bind(&key.key)
        .fetch_optional(pool)
        .await?;
        if let Some(row) = row {
            if row.fingerprint != key.fingerprint {
                return Err(KeyError::Reused);
            }
            let saved = row.outcome.or_else(|| row.status.zip(row.body).map(|(status, body)| legacy(status, body)));
            if let Some(saved) = saved {
                let saved = serde_json::from_value(saved).map_err(|e| KeyError::Unreadable(e.to_string()))?;
                return Ok(NextAction::ReturnSaved(saved));
            }
            if row.lease_expired {
                let taken: Option<(DateTime<Utc>, Option<Uuid>)> = sqlx::query_as(
                    "UPDATE http_idempotency_keys \
                     SET lease_until = now() + $3 * interval '1 millisecond', holder = $4 \
                     WHERE principal = $1 AND key = $2 AND outcome IS NULL AND status IS NULL \
                       AND lease_until < now() \
                     RETURNING requested_at, generation",
                )
                .bind(principal)
                .bind(&key.key)
                .bind(LEASE.as_millis() as f64)
                .bind(holder)
                .fetch_optional(pool)
                .await?;
                if let Some(taken) = taken {
                    tracing::warn!(key = key.key, "took over an idempotency key whose first request did not finish");
                    return Ok(lease(taken, holder));
                }
            }
        } // else: expired and removed between the two statements: claim afresh.
        if tokio::time::Instant::now() + POLL >= deadline {
            return Err(KeyError::Busy);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Saves the outcome of a claimed request; `false` (and nothing written) if
/// the claim was taken over meanwhile: the new holder saves its own.
pub async fn save<T: Serialize>(
    pool: &PgPool,
    principal: &str,
    key: &Key,
    lease: &Lease,
    saved: &Saved<T>,
) -> Result<bool, sqlx::Error> {
    let outcome = serde_json::to_value(saved).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let done = sqlx::query(
        "UPDATE http_idempotency_keys SET outcome = $4 \
         WHERE principal = $1 AND key = $2 AND holder = $3 AND outcome IS NULL AND status IS NULL",
    )
    .bind(principal)
    .bind(&key.key)
    .bind(lease.holder)
    .bind(outcome)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Gives a claimed key back after a failure of ours, so a retry runs again;
/// `false` if the claim was taken over meanwhile (the key is the new holder's).
pub async fn release(pool: &PgPool, principal: &str, key: &Key, lease: &Lease) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM http_idempotency_keys \
         WHERE principal = $1 AND key = $2 AND holder = $3 AND outcome IS NULL AND status IS NULL",
    )
    .bind(principal)
    .bind(&key.key)
    .bind(lease.holder)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Keys forgotten per transaction: a transaction of this database holds the
/// log's read horizon while it runs (ADR 0013), so the janitor deletes in
/// short ones (a few milliseconds each) however many keys expired at once.
pub const FORGET_BATCH: i64 = 1_000;

/// Forgets keys older than `ttl`, [`FORGET_BATCH`] per transaction; returns how many.
pub async fn forget_expired(pool: &PgPool, ttl: Duration) -> Result<u64, sqlx::Error> {
    let mut forgotten = 0;
    loop {
        let done = sqlx::query(
            "DELETE FROM http_idempotency_keys WHERE ctid = ANY(ARRAY( \
                 SELECT ctid FROM http_idempotency_keys \
                 WHERE requested_at < now() - $1 * interval '1 millisecond' LIMIT $2))",
        )
        .bind(ttl.as_millis() as f64)
        .bind(FORGET_BATCH)
        .execute(pool)
        .await?;
        forgotten += done.rows_affected();
        if done.rows_affected() < FORGET_BATCH as u64 {
            return Ok(forgotten);
        }
    }
}

/// A response saved before outcomes were (HTTP status and body), as the
/// outcome it stood for: 202 with the accepted body, or the problem+json of a
/// rule the client broke.
fn legacy(status: i16, body: serde_json::Value) -> serde_json::Value {
    use serde_json::json;
    if status == 202 {
        return json!({ "accepted": body });
    }
    let detail = body["detail"].as_str().unwrap_or_default().to_owned();
    let refusal = match body["type"].as_str().unwrap_or_default() {
        "/problems/validation" => json!({"kind": "invalid", "errors": body["errors"].clone()}),
        "/problems/not-found" => json!({"kind": "not_found", "what": detail.trim_end_matches(" not found")}),
        "/problems/version-mismatch" => {
            // "If-Match requires version R; the current version is A"
            let numbers: Vec<u64> =
                detail.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect();
            json!({"kind": "version_mismatch", "required": numbers.first(), "actual": numbers.get(1)})
        }
        "/problems/forbidden" => json!({"kind": "forbidden", "reason": detail}),
        _ => json!({"kind": "conflict", "reason": detail}),
    };
    json!({ "refused": refusal })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_covers_route_and_body() {
        let a = fingerprint("POST", "/v1/orders", b"{}");
        assert_eq!(a, fingerprint("POST", "/v1/orders", b"{}"));
        assert_ne!(a, fingerprint("POST", "/v1/orders", b"{ }"));
        assert_ne!(a, fingerprint("POST", "/v1/inventory/x/receipts", b"{}"));
    }

    #[test]
    fn keys_are_short_visible_ascii() {
        assert!(valid_key("order-2026-11-25-0001"));
        assert!(!valid_key(""));
        assert!(!valid_key("has space"));
        assert!(!valid_key(&"k".repeat(256)));
        assert!(!valid_key("ключ"));
    }

    #[test]
    fn ids_derive_per_principal_key_and_generation() {
        let (g1, g2) = (Some(Uuid::from_u128(1)), Some(Uuid::from_u128(2)));
        assert_eq!(namespace("a", "k", g1), namespace("a", "k", g1));
        assert_ne!(namespace("a", "k", g1), namespace("b", "k", g1));
        assert_ne!(namespace("a", "k", g1), namespace("a", "k2", g1));
        assert_ne!(namespace("a", "k", g1), namespace("a", "k", g2));
        assert_ne!(namespace("a", "k", g1), namespace("a", "k", None));
    }

    #[test]
    fn responses_saved_before_outcomes_read_as_the_outcomes_they_stood_for() {
        use serde_json::json;
        let read = |status, body| serde_json::from_value::<Saved<serde_json::Value>>(legacy(status, body)).unwrap();
        assert_eq!(read(202, json!({"sku": "A", "version": 1})), Saved::Accepted(json!({"sku": "A", "version": 1})));
        let invalid = json!({"type": "/problems/validation", "errors": [{"field": "quantity", "message": "1 to 10"}]});
        assert_eq!(
            read(422, invalid),
            Saved::Refused(Refusal::Invalid { errors: vec![domain::FieldError::new("quantity", "1 to 10")] })
        );
        let missing = json!({"type": "/problems/not-found", "detail": "order not found"});
        assert_eq!(read(404, missing), Saved::Refused(Refusal::NotFound { what: "order".into() }));
        let pinned = json!({"type": "/problems/version-mismatch",
                            "detail": "If-Match requires version 3; the current version is 5"});
        assert_eq!(read(412, pinned), Saved::Refused(Refusal::VersionMismatch { required: 3, actual: 5 }));
        let conflict = json!({"type": "/problems/conflict", "detail": "the order is already cancelled"});
        assert_eq!(
            read(409, conflict),
            Saved::Refused(Refusal::Conflict { reason: "the order is already cancelled".into() })
        );
    }
}
