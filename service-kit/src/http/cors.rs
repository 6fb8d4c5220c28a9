//! CORS for browser clients of the APIs (`tower-http`): off unless
//! `CORS_ALLOWED_ORIGINS` names the origins allowed.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method};
use axum::Router;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::{self, ConfigError, Source};

/// Headers a browser client may read from an answer besides the simple ones.
const EXPOSED: [&str; 6] =
    ["etag", "location", "retry-after", "idempotent-replayed", "x-correlation-id", "x-request-id"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsConfig {
    /// `CORS_ALLOWED_ORIGINS`: `https://shop.example,https://admin.example`; empty: CORS off.
    pub origins: Vec<HeaderValue>,
    /// `CORS_ALLOWED_METHODS` (default `GET,POST,DELETE`).
    pub methods: Vec<Method>,
    /// `CORS_ALLOWED_HEADERS` (default the ones the APIs read).
    pub headers: Vec<HeaderName>,
    /// `CORS_MAX_AGE`: how long a browser may keep a preflight's answer (default 10m).
    pub max_age: Duration,
}

impl CorsConfig {
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let list = |name: &str, default: &str| {
            let value = source.get(name).filter(|v| !v.trim().is_empty()).unwrap_or_else(|| default.to_owned());
            value.split(',').map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned).collect::<Vec<_>>()
        };
        let mut origins = Vec::new();
        for origin in list("CORS_ALLOWED_ORIGINS", "") {
            let url = url::Url::parse(&origin).ok().filter(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.path() == "/"
                    && !origin.ends_with('/')
                    && u.query().is_none()
            });
            let value = url.and_then(|_| HeaderValue::from_str(&origin).ok()).ok_or_else(|| {
                ConfigError::new("CORS_ALLOWED_ORIGINS", origin.clone(), "origins are scheme://host[:port], no path")
            })?;
            origins.push(value);
        }
        let methods = list("CORS_ALLOWED_METHODS", "GET,POST,DELETE")
            .into_iter()
            .map(|m| m.to_ascii_uppercase().parse::<Method>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                ConfigError::new("CORS_ALLOWED_METHODS", list("CORS_ALLOWED_METHODS", "").join(","), e.to_string())
            })?;
        let headers = list(
            "CORS_ALLOWED_HEADERS",
            "authorization,content-type,idempotency-key,if-match,if-none-match,x-correlation-id,traceparent",
        )
        .into_iter()
        .map(|h| h.parse::<HeaderName>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            ConfigError::new("CORS_ALLOWED_HEADERS", list("CORS_ALLOWED_HEADERS", "").join(","), e.to_string())
        })?;
        let max_age = config::duration(source, "CORS_MAX_AGE", Duration::from_secs(600))?;
        Ok(Self { origins, methods, headers, max_age })
    }

    /// The layer, if any origin is allowed.
    pub fn layer(&self) -> Option<CorsLayer> {
        if self.origins.is_empty() {
            return None;
        }
        Some(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(self.origins.clone()))
                .allow_methods(self.methods.clone())
                .allow_headers(self.headers.clone())
                .expose_headers(EXPOSED.map(HeaderName::from_static))
                .max_age(self.max_age),
        )
    }

    /// `router` with CORS, when it is on.
    pub fn apply(&self, router: Router) -> Router {
        match self.layer() {
            Some(layer) => router.layer(layer),
            None => router,
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;
    use crate::config::Vars;

    fn app(vars: &[(&str, &str)]) -> Router {
        let config = CorsConfig::from_source(&Vars(vars)).unwrap();
        config.apply(Router::new().route("/v1/x", get(|| async { "x" })))
    }

    async fn preflight(app: Router, origin: &str) -> axum::response::Response {
        let request = Request::options("/v1/x")
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .body(Body::empty())
            .unwrap();
        app.oneshot(request).await.unwrap()
    }

    #[tokio::test]
    async fn off_by_default() {
        let answer =
            app(&[]).oneshot(Request::get("/v1/x").header("origin", "https://a.example").body(Body::empty()).unwrap());
        let answer = answer.await.unwrap();
        assert!(answer.headers().get("access-control-allow-origin").is_none());
    }

    #[tokio::test]
    async fn allowed_origins_are_answered_and_others_are_not() {
        let vars = [("CORS_ALLOWED_ORIGINS", "https://shop.example, http://localhost:3000")];
        let allowed = preflight(app(&vars), "https://shop.example").await;
        assert_eq!(allowed.status(), StatusCode::OK);
        assert_eq!(allowed.headers()["access-control-allow-origin"], "https://shop.example");
        assert!(allowed.headers()["access-control-allow-headers"].to_str().unwrap().contains("authorization"));
        assert_eq!(allowed.headers()["access-control-max-age"], "600");
        let other = preflight(app(&vars), "https://evil.example").await;
        assert!(other.headers().get("access-control-allow-origin").is_none());
        let simple = app(&vars)
            .oneshot(Request::get("/v1/x").header("origin", "http://localhost:3000").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(simple.headers()["access-control-allow-origin"], "http://localhost:3000");
        assert!(simple.headers()["access-control-expose-headers"].to_str().unwrap().contains("etag"));
    }

    #[test]
    fn bad_settings_are_named() {
        for (name, value) in [
            ("CORS_ALLOWED_ORIGINS", "shop.example"),
            ("CORS_ALLOWED_ORIGINS", "https://shop.example/path"),
            ("CORS_ALLOWED_METHODS", "GET,NOT A METHOD"),
            ("CORS_ALLOWED_HEADERS", "bad header"),
            ("CORS_MAX_AGE", "forever"),
        ] {
            assert_eq!(CorsConfig::from_source(&Vars(&[(name, value)])).unwrap_err().name, name);
        }
    }
}
