use axum::body::Body;
use axum::routing::get;
use axum::Router;
use serde_json::json;
use tower::ServiceExt;

use super::*;
use crate::config::Vars;

const SECRET: &str = "a-test-secret-of-at-least-thirty-two-bytes";
const RSA_PRIVATE: &[u8] = include_bytes!("../../testdata/rsa-private.pem");
const RSA_PUBLIC_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/rsa-public.pem");

fn hs256() -> JwtConfig {
    AuthConfig::from_source(&Vars(&[("JWT_SECRET", SECRET)])).unwrap().jwt.unwrap()
}

fn rs256() -> JwtConfig {
    let vars = [("JWT_ALGORITHM", "RS256"), ("JWT_PUBLIC_KEY_FILE", RSA_PUBLIC_PATH)];
    AuthConfig::from_source(&Vars(&vars)).unwrap().jwt.unwrap()
}

fn claims(scope: &str) -> Claims {
    Claims {
        sub: "c-42".into(),
        iss: "order-system".into(),
        aud: "order-system".into(),
        exp: now() + 600,
        nbf: None,
        scope: scope.into(),
    }
}

fn token(claims: &Claims) -> String {
    mint(Algorithm::HS256, SECRET.as_bytes(), claims).unwrap()
}

fn b64(value: &serde_json::Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

#[test]
fn a_valid_token_names_its_subject_and_scopes() {
    let principal = hs256().verify(&token(&claims("orders:read orders:write"))).unwrap();
    assert_eq!(principal.subject, "c-42");
    assert!(principal.require(ORDERS_WRITE).is_ok() && principal.require(ADMIN).is_err());
    assert_eq!(principal.customer(), Some("c-42"));
    assert_eq!(principal.actor(), "customer:c-42");
    let signed = mint(Algorithm::RS256, RSA_PRIVATE, &claims("admin")).unwrap();
    assert!(rs256().verify(&signed).unwrap().is_admin());
}

#[test]
fn alg_none_is_refused() {
    let header = b64(&json!({"alg": "none", "typ": "JWT"}));
    let body = b64(&serde_json::to_value(claims("admin")).unwrap());
    assert!(hs256().verify(&format!("{header}.{body}.")).is_err());
    assert!(rs256().verify(&format!("{header}.{body}.")).is_err());
}

#[test]
fn an_hs256_token_signed_with_the_public_key_is_refused_by_an_rs256_verifier() {
    let public_pem = std::fs::read(RSA_PUBLIC_PATH).unwrap();
    let forged = mint(Algorithm::HS256, &public_pem, &claims("admin")).unwrap();
    assert!(rs256().verify(&forged).is_err());
    // And the other way round: an RS256 token at an HS256 verifier.
    let signed = mint(Algorithm::RS256, RSA_PRIVATE, &claims("admin")).unwrap();
    assert!(hs256().verify(&signed).is_err());
}

#[test]
fn a_wrong_signature_issuer_audience_or_time_is_refused() {
    let verifier = hs256();
    let other_secret = mint(Algorithm::HS256, b"another-secret-another-secret-xx", &claims("admin")).unwrap();
    let cases = [
        ("signature", other_secret),
        ("issuer", token(&Claims { iss: "someone-else".into(), ..claims("admin") })),
        ("audience", token(&Claims { aud: "another-api".into(), ..claims("admin") })),
        ("expired", token(&Claims { exp: now() - 3600, ..claims("admin") })),
        ("not yet valid", token(&Claims { nbf: Some(now() + 3600), ..claims("admin") })),
    ];
    for (what, token) in cases {
        assert!(verifier.verify(&token).is_err(), "{what}");
    }
}

#[test]
fn a_verified_token_is_kept_only_until_it_expires() {
    let (jwt, verified) = (hs256(), VerifiedTokens::default());
    let valid = token(&claims("orders:read"));
    assert_eq!(verified.verify(&jwt, &valid).unwrap().subject, "c-42");
    assert_eq!(verified.verify(&jwt, &valid).unwrap().subject, "c-42");
    // A token kept while valid, now past its expiry and the leeway: refused again.
    let expired = token(&Claims { exp: now() - 3600, ..claims("admin") });
    let principal = Principal { subject: "c-42".into(), scopes: BTreeSet::from(["admin".to_owned()]) };
    verified.0.lock().unwrap().insert(expired.clone().into(), (principal, now() - LEEWAY_SECONDS - 1));
    assert!(verified.verify(&jwt, &expired).is_err());
    // Refused tokens are not kept.
    assert!(verified.verify(&jwt, "not-a-token").is_err());
    assert!(!verified.0.lock().unwrap().contains_key("not-a-token"));
}

#[test]
fn required_claims_must_be_there() {
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let header = jsonwebtoken::Header::new(Algorithm::HS256);
    let full = json!({"sub": "c-1", "iss": "order-system", "aud": "order-system", "exp": now() + 600});
    for missing in ["sub", "iss", "aud", "exp"] {
        let mut claims = full.clone();
        claims.as_object_mut().unwrap().remove(missing);
        let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
        assert!(hs256().verify(&token).is_err(), "without {missing}");
    }
}

#[test]
fn production_refuses_auth_off_and_weak_or_default_secrets() {
    let production = |extra: &[(&'static str, &'static str)]| {
        let mut vars = vec![("APP_PROFILE", "production")];
        vars.extend_from_slice(extra);
        AuthConfig::from_source(&Vars(&vars)).map(|_| ()).map_err(|e| e.name)
    };
    assert_eq!(production(&[("AUTH_MODE", "off")]), Err("AUTH_MODE".into()));
    assert_eq!(production(&[]), Err("JWT_SECRET".into()));
    assert_eq!(production(&[("JWT_SECRET", "short")]), Err("JWT_SECRET".into()));
    assert_eq!(production(&[("JWT_SECRET", DEVELOPMENT_SECRET)]), Err("JWT_SECRET".into()));
    assert_eq!(production(&[("JWT_SECRET", SECRET)]), Ok(()));
    for (name, value) in [("JWT_ALGORITHM", "none"), ("AUTH_MODE", "maybe"), ("APP_PROFILE", "staging")] {
        assert_eq!(AuthConfig::from_source(&Vars(&[(name, value)])).err().map(|e| e.name), Some(name.to_owned()));
    }
    let missing_key = [("JWT_ALGORITHM", "RS256"), ("JWT_PUBLIC_KEY_FILE", "/nonexistent.pem")];
    assert_eq!(AuthConfig::from_source(&Vars(&missing_key)).err().map(|e| e.name), Some("JWT_PUBLIC_KEY_FILE".into()));
    assert!(AuthConfig::from_source(&Vars(&[("AUTH_MODE", "off")])).unwrap().jwt.is_none());
}

fn app(config: &AuthConfig) -> Router {
    let gate = Gate::new(config);
    Router::new()
        .route("/whoami", get(|principal: Principal| async move { principal.subject }))
        .layer(axum::middleware::from_fn_with_state(gate, authenticate))
}

async fn call(router: &Router, authorization: Option<String>) -> Response {
    let mut request = axum::http::Request::get("/whoami");
    if let Some(value) = authorization {
        request = request.header(header::AUTHORIZATION, value);
    }
    router.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap()
}

#[tokio::test]
async fn requests_without_a_valid_bearer_token_get_401_with_a_challenge() {
    let router = app(&AuthConfig::from_source(&Vars(&[("JWT_SECRET", SECRET)])).unwrap());
    for header in [None, Some("Basic abc".to_owned()), Some("Bearer not-a-jwt".to_owned())] {
        let response = call(&router, header.clone()).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{header:?}");
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }
    let response = call(&router, Some(format!("Bearer {}", token(&claims(""))))).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_principal_over_its_rate_gets_429_with_retry_after_and_others_do_not() {
    let vars = [("JWT_SECRET", SECRET), ("RATE_LIMIT_PER_SECOND", "1"), ("RATE_LIMIT_BURST", "2")];
    let router = app(&AuthConfig::from_source(&Vars(&vars)).unwrap());
    let busy = format!("Bearer {}", token(&claims("")));
    for _ in 0..2 {
        assert_eq!(call(&router, Some(busy.clone())).await.status(), StatusCode::OK);
    }
    let limited = call(&router, Some(busy)).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers().contains_key(header::RETRY_AFTER));
    let other = format!("Bearer {}", token(&Claims { sub: "c-7".into(), ..claims("") }));
    assert_eq!(call(&router, Some(other)).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn requests_without_a_valid_token_are_limited_by_their_peer_address() {
    let vars = [("JWT_SECRET", SECRET), ("RATE_LIMIT_PER_SECOND", "1"), ("RATE_LIMIT_BURST", "2")];
    let router = app(&AuthConfig::from_source(&Vars(&vars)).unwrap());
    let guesses = [None, Some("Bearer not-a-token".to_owned())];
    for guess in guesses.iter().cycle().take(2) {
        assert_eq!(call(&router, guess.clone()).await.status(), StatusCode::UNAUTHORIZED);
    }
    for guess in guesses {
        let limited = call(&router, guess).await;
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(limited.headers().contains_key(header::RETRY_AFTER));
    }
    // A valid token has its own allowance.
    let valid = format!("Bearer {}", token(&claims("")));
    assert_eq!(call(&router, Some(valid)).await.status(), StatusCode::OK);
}
