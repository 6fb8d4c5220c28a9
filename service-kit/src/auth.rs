//! Bearer JWT authentication, scopes and per-principal rate limits, shared
//! by the HTTP APIs (`jsonwebtoken` verifies, `governor` limits).
//!
//! - The algorithm and key come from configuration only, never from the
//!   token: a token whose header names another algorithm is refused, which
//!   also refuses `alg: none` and HS256 tokens signed with a public key.
//! - `iss`, `aud`, `exp` and `sub` are required; `nbf` is checked when present.
//! - Scopes are the space-separated `scope` claim. A token without `admin` is
//!   a customer's: it acts only for the customer named by its `sub`.
//! - Auth can be switched off (`AUTH_MODE=off`) for local development only:
//!   every request then acts as an administrator, with a warning at start-up;
//!   `APP_PROFILE=production` refuses that, and a missing or short secret.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
pub use jsonwebtoken::Algorithm;
use jsonwebtoken::{DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{self, ConfigError, Secret, Source};
use crate::http::Problem;

pub const ORDERS_WRITE: &str = "orders:write";
pub const ORDERS_READ: &str = "orders:read";
/// Fulfilment: ships confirmed orders.
pub const ORDERS_FULFIL: &str = "orders:fulfil";
pub const INVENTORY_WRITE: &str = "inventory:write";
pub const INVENTORY_READ: &str = "inventory:read";
pub const ADMIN: &str = "admin";

/// The secret a development setup signs with when none is configured. The
/// production profile refuses it.
pub const DEVELOPMENT_SECRET: &str = "development-only-secret-do-not-use-in-production";

/// The claims this system reads and `mint-token` writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub iss: String,
    pub aud: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default)]
    pub scope: String,
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub scopes: BTreeSet<String>,
}

impl Principal {
    /// Everyone, when auth is off.
    pub fn developer() -> Self {
        let scopes = [ORDERS_WRITE, ORDERS_READ, ORDERS_FULFIL, INVENTORY_WRITE, INVENTORY_READ, ADMIN];
        Self { subject: "developer".into(), scopes: scopes.iter().map(|s| (*s).to_owned()).collect() }
    }

    pub fn is_admin(&self) -> bool {
        self.scopes.contains(ADMIN)
    }

    /// 403 unless the token carries `scope`.
    pub fn require(&self, scope: &str) -> Result<(), Problem> {
        self.require_one_of(&[scope])
    }

    /// 403 unless the token carries one of `scopes`.
    pub fn require_one_of(&self, scopes: &[&str]) -> Result<(), Problem> {
        match scopes {
            _ if scopes.iter().any(|scope| self.scopes.contains(*scope)) => Ok(()),
            [scope] => Err(forbidden(format!("this route needs the scope {scope:?}"))),
            _ => Err(forbidden(format!("this route needs one of the scopes {scopes:?}"))),
        }
    }

    /// 403 unless this principal may act for `customer_id`: an administrator,
    /// or the customer it names.
    pub fn require_customer(&self, customer_id: &str) -> Result<(), Problem> {
        if self.is_admin() || self.subject == customer_id {
            Ok(())
        } else {
            Err(forbidden("this token acts for another customer"))
        }
    }

    /// The customer this principal is restricted to, if it is not an administrator.
    pub fn customer(&self) -> Option<&str> {
        (!self.is_admin()).then_some(self.subject.as_str())
    }

    /// How events record who asked: `admin:<sub>` or `customer:<sub>`.
    pub fn actor(&self) -> String {
        let kind = if self.is_admin() { "admin" } else { "customer" };
        format!("{kind}:{}", self.subject)
    }
}

fn forbidden(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden").with_detail(detail)
}

fn unauthorized(detail: impl Into<String>) -> Response {
    let mut response =
        Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized").with_detail(detail).into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Development,
    Production,
}

#[derive(Clone)]
pub struct AuthConfig {
    pub profile: Profile,
    /// `None`: auth is off.
    pub jwt: Option<JwtConfig>,
    /// `RATE_LIMIT_PER_SECOND` and `RATE_LIMIT_BURST`, per principal.
    pub rate_per_second: u32,
    pub burst: u32,
}

#[derive(Clone)]
pub struct JwtConfig {
    pub algorithm: Algorithm,
    pub key: DecodingKey,
    pub issuer: String,
    pub audience: String,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let jwt = self.jwt.as_ref().map(|jwt| (jwt.algorithm, &jwt.issuer, &jwt.audience));
        f.debug_struct("AuthConfig")
            .field("profile", &self.profile)
            .field("jwt (algorithm, issuer, audience)", &jwt)
            .field("rate_per_second", &self.rate_per_second)
            .field("burst", &self.burst)
            .finish()
    }
}

impl AuthConfig {
    /// `APP_PROFILE`, `AUTH_MODE`, `JWT_ALGORITHM`, `JWT_SECRET` / `JWT_SECRET_FILE`,
    /// `JWT_PUBLIC_KEY_FILE`, `JWT_ISSUER`, `JWT_AUDIENCE`, `RATE_LIMIT_PER_SECOND`, `RATE_LIMIT_BURST`.
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let profile = match config::parsed(source, "APP_PROFILE", "development".to_owned())?.as_str() {
            "development" => Profile::Development,
            "production" => Profile::Production,
            other => return Err(ConfigError::new("APP_PROFILE", other, "development or production")),
        };
        let jwt = match config::parsed(source, "AUTH_MODE", "jwt".to_owned())?.as_str() {
            "jwt" => Some(JwtConfig::from_source(source, profile)?),
            "off" if profile == Profile::Production => {
                return Err(ConfigError::new("AUTH_MODE", "off", "the production profile needs auth"))
            }
            "off" => None,
            other => return Err(ConfigError::new("AUTH_MODE", other, "jwt or off")),
        };
        Ok(Self {
            profile,
            jwt,
            rate_per_second: config::ranged(source, "RATE_LIMIT_PER_SECOND", 100, 1, 1_000_000)?,
            burst: config::ranged(source, "RATE_LIMIT_BURST", 200, 1, 1_000_000)?,
        })
    }

    /// Auth off, no practical rate limit: for tests of everything but auth.
    pub fn off() -> Self {
        Self { profile: Profile::Development, jwt: None, rate_per_second: 1_000_000, burst: 1_000_000 }
    }
}

/// A secret from `<NAME>` or from the file named by `<NAME>_FILE`.
pub fn secret(source: &dyn Source, name: &str) -> Result<Option<Secret>, ConfigError> {
    let file_setting = format!("{name}_FILE");
    match (source.get(name).filter(|v| !v.is_empty()), source.get(&file_setting).filter(|v| !v.is_empty())) {
        (Some(_), Some(_)) => Err(ConfigError::new(name, "***", format!("set {name} or {file_setting}, not both"))),
        (Some(value), None) => Ok(Some(Secret::new(value))),
        (None, Some(path)) => std::fs::read_to_string(&path)
            .map(|text| Some(Secret::new(text.trim_end().to_owned())))
            .map_err(|e| ConfigError::new(&file_setting, path, format!("cannot be read: {e}"))),
        (None, None) => Ok(None),
    }
}

impl JwtConfig {
    fn from_source(source: &dyn Source, profile: Profile) -> Result<Self, ConfigError> {
        let algorithm = match config::parsed(source, "JWT_ALGORITHM", "HS256".to_owned())?.as_str() {
            "HS256" => Algorithm::HS256,
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            other => return Err(ConfigError::new("JWT_ALGORITHM", other, "HS256, RS256 or ES256")),
        };
        let key = if algorithm == Algorithm::HS256 {
            let secret = match (secret(source, "JWT_SECRET")?, profile) {
                (Some(secret), Profile::Production)
                    if secret.expose().len() < 32 || secret.expose() == DEVELOPMENT_SECRET =>
                {
                    return Err(ConfigError::new("JWT_SECRET", "***", "production needs a secret of 32 bytes or more"));
                }
                (Some(secret), _) => secret,
                (None, Profile::Production) => {
                    return Err(ConfigError::new("JWT_SECRET", "", "production needs JWT_SECRET or JWT_SECRET_FILE"))
                }
                (None, Profile::Development) => Secret::new(DEVELOPMENT_SECRET),
            };
            DecodingKey::from_secret(secret.expose().as_bytes())
        } else {
            let path: String = config::parsed(source, "JWT_PUBLIC_KEY_FILE", String::new())?;
            let pem = std::fs::read(&path).map_err(|e| {
                ConfigError::new(
                    "JWT_PUBLIC_KEY_FILE",
                    &path,
                    format!("a PEM public key is needed for {algorithm:?}: {e}"),
                )
            })?;
            let key = if algorithm == Algorithm::RS256 {
                DecodingKey::from_rsa_pem(&pem)
            } else {
                DecodingKey::from_ec_pem(&pem)
            };
            key.map_err(|e| {
                ConfigError::new("JWT_PUBLIC_KEY_FILE", &path, format!("not a {algorithm:?} public key: {e}"))
            })?
        };
        Ok(Self {
            algorithm,
            key,
            issuer: config::parsed(source, "JWT_ISSUER", "order-system".to_owned())?,
            audience: config::parsed(source, "JWT_AUDIENCE", "order-system".to_owned())?,
        })
    }

    /// The principal a bearer token stands for.
    pub fn verify(&self, token: &str) -> Result<Principal, String> {
        self.verify_until(token).map(|(principal, _)| principal)
    }

    /// [`Self::verify`], and the token's `exp` (seconds since the epoch).
    fn verify_until(&self, token: &str) -> Result<(Principal, u64), String> {
        let mut validation = Validation::new(self.algorithm);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECONDS;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &validation).map_err(|e| e.to_string())?;
        if data.claims.sub.is_empty() || data.claims.sub.len() > 64 {
            return Err("sub must be 1 to 64 characters".into());
        }
        let principal = Principal {
            subject: data.claims.sub,
            scopes: data.claims.scope.split_whitespace().map(str::to_owned).collect(),
        };
        Ok((principal, data.claims.exp))
    }
}

/// Tokens verified before, with their principal, until they expire: a
/// client sends the same token with every request, and checking its
/// signature and claims again each time was a tenth of the command API's
/// CPU per request (docs/performance.md). Only valid tokens are kept, at
/// most [`VERIFIED_TOKENS`] of them (all forgotten when full).
#[derive(Default)]
struct VerifiedTokens(std::sync::Mutex<std::collections::HashMap<Box<str>, (Principal, u64)>>);

/// The most verified tokens kept (a few hundred bytes each).
const VERIFIED_TOKENS: usize = 10_000;

impl VerifiedTokens {
    fn verify(&self, jwt: &JwtConfig, token: &str) -> Result<Principal, String> {
        let now = jsonwebtoken::get_current_timestamp();
        let lock = || self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((principal, exp)) = lock().get(token) {
            // The same leeway as the verification's.
            if now <= exp + LEEWAY_SECONDS {
                return Ok(principal.clone());
            }
        }
        let (principal, exp) = jwt.verify_until(token)?;
        let mut tokens = lock();
        if tokens.len() >= VERIFIED_TOKENS {
            tokens.clear();
        }
        tokens.insert(token.into(), (principal.clone(), exp));
        Ok(principal)
    }
}

/// Clock skew allowed on `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 5;

/// What the auth middleware needs; build one per API at start-up.
#[derive(Clone)]
pub struct Gate {
    jwt: Option<Arc<JwtConfig>>,
    verified: Arc<VerifiedTokens>,
    limiter: Arc<DefaultKeyedRateLimiter<String>>,
    /// Requests seen, to forget idle principals now and then.
    seen: Arc<std::sync::atomic::AtomicU64>,
}

impl Gate {
    pub fn new(config: &AuthConfig) -> Self {
        if config.jwt.is_none() {
            tracing::warn!("AUTH_MODE=off: every request acts as an administrator; for local development only");
        }
        let per_second = NonZeroU32::new(config.rate_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(config.burst).unwrap_or(NonZeroU32::MIN);
        let limiter = RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst));
        Self {
            jwt: config.jwt.clone().map(Arc::new),
            verified: Arc::default(),
            limiter: Arc::new(limiter),
            seen: Arc::default(),
        }
    }
}

/// Requests between two sweeps of idle principals from the rate limiter.
const FORGET_EVERY: u64 = 10_000;

/// Middleware: authenticates the request (401), then applies the rate limit
/// of its principal (429 with `Retry-After`), keyed by the token's subject,
/// or by the peer address when auth is off: never by a header a client sets.
/// Requests without a valid token count against their peer address, so
/// guessing tokens costs a limited share too.
pub async fn authenticate(State(gate): State<Gate>, mut request: Request, next: Next) -> Response {
    let peer_ip = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip());
    let peer = || peer_ip.map_or_else(|| "peer:unknown".to_owned(), |ip| format!("peer:{ip}"));
    let (principal, key) = match &gate.jwt {
        None => (Principal::developer(), peer()),
        Some(jwt) => match bearer(&request).and_then(|token| {
            gate.verified.verify(jwt, token).map_err(|reason| {
                tracing::info!(%reason, "token refused");
                format!("the token is not valid: {reason}")
            })
        }) {
            Ok(principal) => {
                let key = format!("sub:{}", principal.subject);
                (principal, key)
            }
            Err(detail) => return gate.limit(&peer()).unwrap_or_else(|| unauthorized(detail)),
        },
    };
    if let Some(limited) = gate.limit(&key) {
        return limited;
    }
    request.extensions_mut().insert(principal);
    request.extensions_mut().insert(ClientKey(key));
    next.run(request).await
}

/// Who sent a request, as the rate limiter counts it: `sub:<subject>` of the
/// token, or `peer:<ip>` when auth is off. For other per-client bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientKey(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClientKey {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<ClientKey>().cloned().ok_or_else(|| {
            tracing::error!("a route that needs the client's key is not behind the auth middleware");
            Problem::internal()
        })
    }
}

/// The bearer token of a request, or what is wrong with it (the 401's detail).
fn bearer(request: &Request) -> Result<&str, String> {
    let Some(value) = request.headers().get(header::AUTHORIZATION) else {
        return Err("send a bearer token: Authorization: Bearer <jwt>".into());
    };
    let token = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
    token.filter(|t| !t.is_empty()).ok_or_else(|| "the Authorization header must be `Bearer <jwt>`".into())
}

impl Gate {
    /// Counts a request against `key`'s allowance; the 429 once it is spent.
    #[allow(clippy::ptr_arg)] // governor's keyed limiter takes `&String`: no copy per request
    fn limit(&self, key: &String) -> Option<Response> {
        // One entry per key seen: every so often those back at a full
        // allowance are dropped, so the map does not grow with every customer ever.
        if self.seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % FORGET_EVERY == FORGET_EVERY - 1 {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        let Err(not_until) = self.limiter.check_key(key) else { return None };
        let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        metrics::counter!("http_rate_limited_total").increment(1);
        Some(
            Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", "Too many requests")
                .with_detail("this principal sends requests faster than its limit")
                .with_retry_after(seconds.max(1))
                .into_response(),
        )
    }
}

/// Route middleware: 403 unless the principal has `scope`, checked before
/// the body is read. Use as
/// `.route_layer(from_fn(|r, n| auth::require_scope(auth::ORDERS_WRITE, r, n)))`.
pub async fn require_scope(scope: &'static str, request: Request, next: Next) -> Response {
    require_one_of_scopes(&[scope], request, next).await
}

/// [`require_scope`] for a route any of several scopes opens.
pub async fn require_one_of_scopes(scopes: &[&str], request: Request, next: Next) -> Response {
    match request.extensions().get::<Principal>().map(|principal| principal.require_one_of(scopes)) {
        Some(Ok(())) => next.run(request).await,
        Some(Err(problem)) => problem.into_response(),
        None => {
            tracing::error!("a route with a scope is not behind the auth middleware");
            Problem::internal().into_response()
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Principal>().cloned().ok_or_else(|| {
            tracing::error!("a route that needs a principal is not behind the auth middleware");
            Problem::internal()
        })
    }
}

/// Adds the `bearer` (JWT) security scheme to an OpenAPI document; operations
/// name it with their scopes: `security(("bearer" = ["orders:write"]))`.
pub struct BearerSecurity;

impl utoipa::Modify for BearerSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = Http::builder().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build();
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// Signs a token (HS256 with `secret`, or RS256/ES256 with a PEM private key): for `mint-token` and tests.
pub fn mint(algorithm: Algorithm, key: &[u8], claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    let key = match algorithm {
        Algorithm::RS256 => jsonwebtoken::EncodingKey::from_rsa_pem(key)?,
        Algorithm::ES256 => jsonwebtoken::EncodingKey::from_ec_pem(key)?,
        _ => jsonwebtoken::EncodingKey::from_secret(key),
    };
    jsonwebtoken::encode(&jsonwebtoken::Header::new(algorithm), claims, &key)
}

/// Seconds since the epoch, for claims.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests;
