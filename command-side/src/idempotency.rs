//! `Idempotency-Key`: a retried POST returns the first response and changes
//! nothing more. Keys are remembered, with their responses, for
//! `IDEMPOTENCY_KEY_TTL` (24 hours by default), per principal.
//!
//! The first request with a key claims it (a row in `http_idempotency_keys`)
//! and runs; requests racing it wait for its response. Its event ids and new
//! aggregate ids are derived from the key and the key's generation (drawn at
//! the first claim), and its clock is the claim's, so a request that takes
//! over the claim of one that died recognises the events the dead one
//! appended (see `commands::already_applied`), while a key used again after
//! it was forgotten derives new ids. Only the holder of a claim records its
//! response or gives the key back: a request whose claim was taken over
//! leaves the key to its successor. A failure of ours (5xx) releases the key,
//! so the client's retry runs again.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

/// How long a claim holds before another request may take it over.
pub const LEASE: Duration = Duration::from_secs(15);
/// How often a waiting request looks for the first one's response.
const POLL: Duration = Duration::from_millis(20);

/// Namespace of the ids derived from idempotency keys.
const NAMESPACE: Uuid = Uuid::from_u128(0x6f0c_9d2e_51b4_4c1a_9a7e_3c55_d0b8_21aa);

pub const MAX_KEY_LEN: usize = 255;

/// A stored response.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    pub status: u16,
    pub body: serde_json::Value,
    pub location: Option<String>,
}

/// A claim on a key: the request holding it runs, as of `requested_at`, with
/// ids derived from `namespace`.
#[derive(Debug, Clone)]
pub struct Lease {
    pub requested_at: DateTime<Utc>,
    pub namespace: Uuid,
    holder: Uuid,
}

/// What the key says about this request.
#[derive(Debug)]
pub enum Claim {
    /// Run the request under this lease.
    Run(Lease),
    /// The request ran before: answer this.
    Replay(StoredResponse),
    /// The key was used for another request.
    Mismatch,
    /// The first request is still running after the caller's whole wait.
    StillRunning,
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
    status: Option<i16>,
    body: Option<serde_json::Value>,
    location: Option<String>,
    lease_expired: bool,
}

/// Claims `key` for a request, or tells what became of the request that
/// claimed it first. Waits for a running first request at most `wait`.
pub async fn claim(
    pool: &PgPool,
    principal: &str,
    key: &str,
    fingerprint: &[u8],
    wait: Duration,
) -> Result<Claim, sqlx::Error> {
    let deadline = tokio::time::Instant::now() + wait;
    let lease = |(requested_at, generation): (DateTime<Utc>, Option<Uuid>), holder| {
        Claim::Run(Lease { requested_at, namespace: namespace(principal, key, generation), holder })
    };
    loop {
        let holder = Uuid::new_v4();
        let claimed: Option<(DateTime<Utc>, Option<Uuid>)> = sqlx::query_as(
            "INSERT INTO http_idempotency_keys (principal, key, fingerprint, lease_until, generation, holder) \
             VALUES ($1, $2, $3, now() + $4 * interval '1 millisecond', gen_random_uuid(), $5) \
             ON CONFLICT (principal, key) DO NOTHING RETURNING requested_at, generation",
        )
        .bind(principal)
        .bind(key)
        .bind(fingerprint)
        .bind(LEASE.as_millis() as f64)
        .bind(holder)
        .fetch_optional(pool)
        .await?;
        if let Some(claimed) = claimed {
            return Ok(lease(claimed, holder));
        }
        let row: Option<KeyRow> = sqlx::query_as(
            "SELECT fingerprint, status, body, location, lease_until < now() AS lease_expired \
             FROM http_idempotency_keys WHERE principal = $1 AND key = $2",
        )
        .bind(principal)
        .bind(key)
        .fetch_optional(pool)
        .await?;
        if let Some(row) = row {
            if row.fingerprint != fingerprint {
                return Ok(Claim::Mismatch);
            }
            if let (Some(status), Some(body)) = (row.status, row.body) {
                return Ok(Claim::Replay(StoredResponse { status: status as u16, body, location: row.location }));
            }
            if row.lease_expired {
                let taken: Option<(DateTime<Utc>, Option<Uuid>)> = sqlx::query_as(
                    "UPDATE http_idempotency_keys \
                     SET lease_until = now() + $3 * interval '1 millisecond', holder = $4 \
                     WHERE principal = $1 AND key = $2 AND status IS NULL AND lease_until < now() \
                     RETURNING requested_at, generation",
                )
                .bind(principal)
                .bind(key)
                .bind(LEASE.as_millis() as f64)
                .bind(holder)
                .fetch_optional(pool)
                .await?;
                if let Some(taken) = taken {
                    tracing::warn!(key, "took over an idempotency key whose first request did not finish");
                    return Ok(lease(taken, holder));
                }
            }
        } // else: expired and removed between the two statements: claim afresh.
        if tokio::time::Instant::now() + POLL >= deadline {
            return Ok(Claim::StillRunning);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Remembers the response of a claimed request; `false` (and nothing
/// written) if the claim was taken over meanwhile: the new holder answers.
pub async fn complete(
    pool: &PgPool,
    principal: &str,
    key: &str,
    lease: &Lease,
    response: &StoredResponse,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE http_idempotency_keys SET status = $4, body = $5, location = $6 \
         WHERE principal = $1 AND key = $2 AND holder = $3 AND status IS NULL",
    )
    .bind(principal)
    .bind(key)
    .bind(lease.holder)
    .bind(response.status as i16)
    .bind(&response.body)
    .bind(&response.location)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Gives a claimed key back after a failure of ours, so a retry runs again;
/// `false` if the claim was taken over meanwhile (the key is the new holder's).
pub async fn release(pool: &PgPool, principal: &str, key: &str, lease: &Lease) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM http_idempotency_keys WHERE principal = $1 AND key = $2 AND holder = $3 AND status IS NULL",
    )
    .bind(principal)
    .bind(key)
    .bind(lease.holder)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Forgets keys older than `ttl`; returns how many.
pub async fn forget_expired(pool: &PgPool, ttl: Duration) -> Result<u64, sqlx::Error> {
    let done =
        sqlx::query("DELETE FROM http_idempotency_keys WHERE requested_at < now() - $1 * interval '1 millisecond'")
            .bind(ttl.as_millis() as f64)
            .execute(pool)
            .await?;
    Ok(done.rows_affected())
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
}
