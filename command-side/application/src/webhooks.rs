//! Merchants' webhook endpoints: registered, listed and deleted through the
//! command API (`/v1/webhooks`, scope `admin`), read by the notifier, which
//! sends to them (ADR 0015). Endpoints are configuration, not domain facts:
//! a table, not an event stream.
//!
//! Which URLs are allowed is decided here too ([`UrlPolicy`]), once when an
//! endpoint is registered and again by the notifier for every address a host
//! resolves to, so a name that later points inside the network is refused.

use std::net::IpAddr;

use base64::Engine;
use chrono::{DateTime, Utc};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Serialize;
use service_kit::config::{self, ConfigError, Source};
use sqlx::PgPool;
use url::{Host, Url};
use utoipa::ToSchema;
use uuid::Uuid;

/// The event types an endpoint may hear, as webhooks name them.
pub const EVENT_TYPES: [&str; 4] = ["order.confirmed", "order.rejected", "order.cancelled", "order.shipped"];

/// Longest URL an endpoint may have.
pub const MAX_URL_LEN: usize = 2048;

/// Which webhook URLs may be called: `http`/`https` only, to the hosts of
/// `WEBHOOK_ALLOWED_HOSTS` if it is set, and never to loopback, private,
/// link-local or other internal addresses unless `WEBHOOK_ALLOW_PRIVATE`
/// (default: only when `APP_PROFILE` is not `production`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlPolicy {
    /// Host names allowed (`shop.example`, or `*.example` for its subdomains); empty: any.
    pub allowed_hosts: Vec<String>,
    /// Loopback and private addresses allowed (development, tests).
    pub allow_private: bool,
}

impl Default for UrlPolicy {
    /// The production default: any public host, nothing internal.
    fn default() -> Self {
        Self { allowed_hosts: Vec::new(), allow_private: false }
    }
}

impl UrlPolicy {
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let production = config::parsed(source, "APP_PROFILE", "development".to_owned())? == "production";
        let allow_private = config::parsed(source, "WEBHOOK_ALLOW_PRIVATE", !production)?;
        let hosts = source.get("WEBHOOK_ALLOWED_HOSTS").unwrap_or_default();
        let mut allowed_hosts = Vec::new();
        for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            let name = host.strip_prefix("*.").unwrap_or(host);
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
                return Err(ConfigError::new(
                    "WEBHOOK_ALLOWED_HOSTS",
                    hosts.clone(),
                    format!("{host:?} is not a host name (letters, digits, - and ., optionally *. before)"),
                ));
            }
            allowed_hosts.push(host.to_ascii_lowercase());
        }
        Ok(Self { allowed_hosts, allow_private })
    }

    /// The URL, if an endpoint may have it; otherwise why not.
    pub fn check(&self, text: &str) -> Result<Url, String> {
        if text.len() > MAX_URL_LEN {
            return Err(format!("at most {MAX_URL_LEN} characters"));
        }
        let url = Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("only http and https URLs".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("no credentials in the URL: the signature authenticates the sender".into());
        }
        if url.fragment().is_some() {
            return Err("no fragment (#...)".into());
        }
        let host = url.host().ok_or("the URL names no host")?;
        let name = match &host {
            Host::Domain(name) => name.trim_end_matches('.').to_ascii_lowercase(),
            Host::Ipv4(ip) => ip.to_string(),
            Host::Ipv6(ip) => ip.to_string(),
        };
        if !self.allowed_hosts.is_empty() && !self.allowed_hosts.iter().any(|allowed| host_matches(allowed, &name)) {
            return Err(format!("host {name} is not in WEBHOOK_ALLOWED_HOSTS"));
        }
        let internal = match host {
            Host::Domain(_) => name == "localhost" || name.ends_with(".localhost"),
            Host::Ipv4(ip) => is_internal(IpAddr::V4(ip)),
            Host::Ipv6(ip) => is_internal(IpAddr::V6(ip)),
        };
        if internal && !self.allow_private {
            return Err(format!("host {name} is a loopback or private address (WEBHOOK_ALLOW_PRIVATE is off)"));
        }
        Ok(url)
    }

    /// Whether the notifier may connect to `ip` (every address a host resolves to is asked).
    pub fn address_allowed(&self, ip: IpAddr) -> bool {
        self.allow_private || !is_internal(ip)
    }
}

fn host_matches(allowed: &str, host: &str) -> bool {
    match allowed.strip_prefix("*.") {
        Some(parent) => host.strip_suffix(parent).is_some_and(|sub| sub.ends_with('.') && sub.len() > 1),
        None => allowed == host,
    }
}

/// Loopback, private, link-local (cloud metadata lives there), shared
/// (carrier-grade NAT), unspecified, broadcast, multicast, documentation and
/// benchmarking ranges: nothing a webhook to a merchant needs to reach.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link-local
                || first == 0x2001 && v6.segments()[1] == 0x0db8 // documentation
                || first == 0x64 && v6.segments()[1] == 0xff9b // NAT64 (reaches IPv4 inside)
        }
    }
}

/// A registered endpoint, as listed (its secret is shown only once).
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct Endpoint {
    #[sqlx(rename = "endpoint_id")]
    pub id: Uuid,
    pub url: String,
    /// The event types it hears.
    #[sqlx(rename = "event_types")]
    pub events: Vec<String>,
    pub description: String,
    pub created_at: DateTime<Utc>,
}

/// A new endpoint and its signing secret.
#[derive(Debug, Clone)]
pub struct Registered {
    pub endpoint: Endpoint,
    /// `whsec_<base64 of 32 random bytes>`: the HMAC-SHA256 key of the
    /// `webhook-signature` header (Standard Webhooks). Shown once.
    pub secret: String,
}

/// One attempt to deliver, as `GET /v1/webhooks/{id}/deliveries` shows it.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct Attempt {
    pub attempt: i32,
    pub attempted_at: DateTime<Utc>,
    /// The endpoint's HTTP status; absent when no answer came (see `error`).
    pub status_code: Option<i32>,
    pub latency_ms: f64,
    pub error: Option<String>,
}

/// A message to an endpoint because of one event, with its attempts.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Delivery {
    /// The `webhook-id` the endpoint receives: the same on every attempt.
    pub id: String,
    pub event_type: String,
    pub event_id: Uuid,
    pub order_id: Uuid,
    /// `pending` (due at `next_attempt_at`), `delivered`, `dead` (retried
    /// for `WEBHOOK_RETRY_FOR` in vain), `cancelled` (endpoint deleted).
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub attempts: Vec<Attempt>,
}

/// The `webhook-id` of a delivery.
pub fn message_id(delivery_id: Uuid) -> String {
    format!("msg_{}", delivery_id.simple())
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    #[error("the database: {0}")]
    Database(#[from] sqlx::Error),
}

/// The endpoints' table.
#[derive(Debug, Clone)]
pub struct Registry {
    pool: PgPool,
    policy: UrlPolicy,
}

impl Registry {
    pub fn new(pool: PgPool, policy: UrlPolicy) -> Self {
        Self { pool, policy }
    }

    pub fn policy(&self) -> &UrlPolicy {
        &self.policy
    }

    /// Registers an endpoint for `events` (each one of [`EVENT_TYPES`], at least one).
    pub async fn register(&self, url: &str, events: &[String], description: &str) -> Result<Registered, RegistryError> {
        let url = self.policy.check(url).map_err(|message| RegistryError::Invalid { field: "url", message })?;
        if events.len() > EVENT_TYPES.len() {
            return Err(RegistryError::Invalid {
                field: "events",
                message: format!("at most {} event types", EVENT_TYPES.len()),
            });
        }
        let mut events: Vec<String> = events.to_vec();
        events.sort();
        events.dedup();
        if events.is_empty() {
            return Err(RegistryError::Invalid { field: "events", message: "name at least one event type".into() });
        }
        if let Some(unknown) = events.iter().find(|e| !EVENT_TYPES.contains(&e.as_str())) {
            return Err(RegistryError::Invalid {
                field: "events",
                message: format!("unknown event type {unknown:?}; known: {}", EVENT_TYPES.join(", ")),
            });
        }
        if description.chars().count() > 200 || description.chars().any(char::is_control) {
            return Err(RegistryError::Invalid {
                field: "description",
                message: "at most 200 characters, on one line".into(),
            });
        }
        let secret = new_secret();
        let endpoint: Endpoint = sqlx::query_as(
            "INSERT INTO webhook_endpoints (endpoint_id, url, event_types, description, secret)
             VALUES ($1, $2, $3, $4, $5)
             RETURNING endpoint_id, url, event_types, description, created_at",
        )
        .bind(Uuid::new_v4())
        .bind(url.as_str())
        .bind(&events)
        .bind(description)
        .bind(&secret)
        .fetch_one(&self.pool)
        .await?;
        Ok(Registered { endpoint, secret })
    }

    /// The live endpoints, oldest first.
    pub async fn list(&self) -> Result<Vec<Endpoint>, sqlx::Error> {
        sqlx::query_as(
            "SELECT endpoint_id, url, event_types, description, created_at FROM webhook_endpoints
             WHERE deleted_at IS NULL ORDER BY created_at, endpoint_id",
        )
        .fetch_all(&self.pool)
        .await
    }

    /// Deletes an endpoint: nothing more is sent to it, its pending
    /// deliveries are cancelled, its history stays. False if there was none.
    pub async fn delete(&self, id: Uuid) -> Result<bool, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query(
            "UPDATE webhook_endpoints SET deleted_at = now() WHERE endpoint_id = $1 AND deleted_at IS NULL",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(
            "UPDATE notification_deliveries SET status = 'cancelled', finished_at = now(),
                    last_error = 'the endpoint was deleted'
             WHERE endpoint_id = $1 AND status = 'pending'",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(deleted == 1)
    }

    /// The newest `limit` deliveries to a live endpoint, with their
    /// attempts; `None` if there is no such endpoint (or it was deleted: its
    /// rows stay in the table until `NOTIFY_KEEP`, for operators).
    pub async fn deliveries(&self, id: Uuid, limit: i64) -> Result<Option<Vec<Delivery>>, sqlx::Error> {
        let known: Option<(Uuid,)> =
            sqlx::query_as("SELECT endpoint_id FROM webhook_endpoints WHERE endpoint_id = $1 AND deleted_at IS NULL")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        if known.is_none() {
            return Ok(None);
        }
        type Row = (
            Uuid,
            String,
            Uuid,
            Uuid,
            String,
            DateTime<Utc>,
            DateTime<Utc>,
            Option<DateTime<Utc>>,
            Option<String>,
            Option<sqlx::types::Json<Vec<AttemptRow>>>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT d.delivery_id, d.event_type, d.event_id, d.order_id, d.status, d.created_at,
                    d.next_attempt_at, d.finished_at, d.last_error,
                    (SELECT json_agg(json_build_object('attempt', a.attempt, 'attempted_at', a.attempted_at,
                              'status_code', a.status_code, 'latency_ms', a.latency_ms, 'error', a.error)
                              ORDER BY a.attempt)
                       FROM notification_attempts a WHERE a.delivery_id = d.delivery_id)
             FROM notification_deliveries d
             WHERE d.endpoint_id = $1
             ORDER BY d.created_at DESC, d.delivery_id
             LIMIT $2",
        )
        .bind(id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(Some(
            rows.into_iter()
                .map(
                    |(
                        id,
                        event_type,
                        event_id,
                        order_id,
                        status,
                        created_at,
                        next,
                        finished_at,
                        last_error,
                        attempts,
                    )| {
                        Delivery {
                            id: message_id(id),
                            event_type,
                            event_id,
                            order_id,
                            next_attempt_at: (status == "pending").then_some(next),
                            status,
                            created_at,
                            finished_at,
                            last_error,
                            attempts: attempts
                                .map(|a| a.0)
                                .unwrap_or_default()
                                .into_iter()
                                .map(Attempt::from)
                                .collect(),
                        }
                    },
                )
                .collect(),
        ))
    }
}

/// An attempt as `json_build_object` spells it (timestamps as text).
#[derive(serde::Deserialize)]
struct AttemptRow {
    attempt: i32,
    attempted_at: DateTime<Utc>,
    status_code: Option<i32>,
    latency_ms: f64,
    error: Option<String>,
}

impl From<AttemptRow> for Attempt {
    fn from(row: AttemptRow) -> Self {
        let AttemptRow { attempt, attempted_at, status_code, latency_ms, error } = row;
        Self { attempt, attempted_at, status_code, latency_ms, error }
    }
}

/// `whsec_` and 32 random bytes in base64, as Standard Webhooks spells secrets.
fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    SystemRandom::new().fill(&mut bytes).expect("the system's random source works");
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use service_kit::config::Vars;

    fn strict() -> UrlPolicy {
        UrlPolicy::default()
    }

    #[test]
    fn only_public_http_urls_pass_by_default() {
        for good in ["https://shop.example.com/hooks", "http://93.184.216.34:8080/x?y=1"] {
            assert!(strict().check(good).is_ok(), "{good}");
        }
        for bad in [
            "ftp://shop.example.com/",
            "file:///etc/passwd",
            "https://user:pw@shop.example.com/",
            "http://localhost:9104/metrics",
            "http://api.localhost/",
            "http://127.0.0.1/",
            "http://10.1.2.3/",
            "http://172.20.0.1/",
            "http://192.168.1.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
            "http://[::1]/",
            "http://[fd00::1]/",
            "http://[fe80::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://2130706433/",
            "not a url",
        ] {
            assert!(strict().check(bad).is_err(), "{bad} passed");
        }
    }

    #[test]
    fn development_allows_private_addresses() {
        let dev = UrlPolicy::from_source(&Vars(&[])).unwrap();
        assert!(dev.allow_private);
        assert!(dev.check("http://127.0.0.1:8080/hook").is_ok());
        let production = UrlPolicy::from_source(&Vars(&[("APP_PROFILE", "production")])).unwrap();
        assert!(!production.allow_private);
        assert!(production.check("http://127.0.0.1:8080/hook").is_err());
        let opened = UrlPolicy::from_source(&Vars(&[("APP_PROFILE", "production"), ("WEBHOOK_ALLOW_PRIVATE", "true")]));
        assert!(opened.unwrap().address_allowed("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn the_allow_list_names_hosts_and_their_subdomains() {
        let policy =
            UrlPolicy::from_source(&Vars(&[("WEBHOOK_ALLOWED_HOSTS", "hooks.example.com, *.merchant.test")])).unwrap();
        assert!(policy.check("https://hooks.example.com/a").is_ok());
        assert!(policy.check("https://eu.merchant.test/a").is_ok());
        assert!(policy.check("https://merchant.test/a").is_err());
        assert!(policy.check("https://evilmerchant.test/a").is_err());
        assert!(policy.check("https://example.com/a").is_err());
        let error = UrlPolicy::from_source(&Vars(&[("WEBHOOK_ALLOWED_HOSTS", "a.com, http://b")])).unwrap_err();
        assert_eq!(error.name, "WEBHOOK_ALLOWED_HOSTS");
    }

    #[test]
    fn addresses_are_judged_after_resolution() {
        let policy = strict();
        for internal in
            ["127.0.0.53", "10.0.0.1", "169.254.169.254", "::1", "fc00::1", "::ffff:10.0.0.1", "64:ff9b::a00:1"]
        {
            assert!(!policy.address_allowed(internal.parse().unwrap()), "{internal}");
        }
        for public in ["93.184.216.34", "2606:2800:220:1::1"] {
            assert!(policy.address_allowed(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn secrets_are_32_random_bytes() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        let bytes = base64::engine::general_purpose::STANDARD.decode(a.strip_prefix("whsec_").unwrap()).unwrap();
        assert_eq!(bytes.len(), 32);
    }
}
