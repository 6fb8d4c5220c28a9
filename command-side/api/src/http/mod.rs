//! The command API's routes, and what every command handler shares: the
//! [`CommandRequest`] extractor (who asks, correlation and trace ids,
//! `Idempotency-Key`, `If-Match`, the JSON body), the [`Accepted`] answer,
//! and the mapping of the application's errors to problem+json ([`ApiError`]).

mod customers;
mod doc;
mod inventory;
mod orders;
mod webhooks;

use application::idempotency::{self, Key};
use application::{Application, Caller, CommandError, Done, Refusal, Request as AppRequest};
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde::Serialize;
use service_kit::auth::{self, AuthConfig, Gate, Principal};
use service_kit::http::{FieldProblem, Problem, RequestContext};
use service_kit::ops::Check;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

/// The API's routes with their documentation, registered together.
fn documented() -> OpenApiRouter<Application> {
    let scope = |scope: &'static str| from_fn(move |request, next| auth::require_scope(scope, request, next));
    let orders = OpenApiRouter::new()
        .routes(routes!(orders::place))
        .routes(routes!(orders::cancel))
        .route_layer(scope(auth::ORDERS_WRITE));
    let fulfilment = OpenApiRouter::new().routes(routes!(orders::ship)).route_layer(from_fn(|request, next| {
        auth::require_one_of_scopes(&[auth::ORDERS_FULFIL, auth::ADMIN], request, next)
    }));
    let inventory = OpenApiRouter::new().routes(routes!(inventory::receive)).route_layer(scope(auth::INVENTORY_WRITE));
    let customers = OpenApiRouter::new().routes(routes!(customers::erase)).route_layer(scope(auth::ADMIN));
    let webhooks = OpenApiRouter::new()
        .routes(routes!(webhooks::register, webhooks::list))
        .routes(routes!(webhooks::delete))
        .routes(routes!(webhooks::deliveries))
        .route_layer(scope(auth::ADMIN));
    OpenApiRouter::with_openapi(doc::ApiDoc::openapi().merge_from(service_kit::ops::OpsApi::openapi()))
        .merge(orders)
        .merge(fulfilment)
        .merge(inventory)
        .merge(customers)
        .merge(webhooks)
}

/// The OpenAPI document the API serves at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    documented().into_openapi()
}

pub(crate) fn router(application: Application, body_limit: usize, auth: &AuthConfig, checks: Vec<Check>) -> Router {
    let gate = Gate::new(auth);
    let (api, document) = documented().layer(from_fn_with_state(gate, auth::authenticate)).split_for_parts();
    Router::new()
        .merge(api)
        .merge(SwaggerUi::new("/docs").url("/openapi.json", document))
        .merge(service_kit::ops::public_health_router(checks))
        .fallback(service_kit::http::not_found_route)
        .method_not_allowed_fallback(|| async {
            Problem::new(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "Method not allowed")
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(application)
}

/// A command request as the application takes it, and its JSON body: who
/// asks (the bearer token's principal), the correlation and request ids,
/// the trace context, `Idempotency-Key` (with the request's fingerprint:
/// method, path and exact body) and `If-Match`.
pub(crate) struct CommandRequest<T> {
    pub request: AppRequest,
    pub body: T,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for CommandRequest<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let (mut parts, body) = request.into_parts();
        let asked = Asked::from_request_parts(&mut parts, state).await?;
        let JsonBody { value, bytes } = JsonBody::from_request(Request::from_parts(parts, body), state).await?;
        Ok(Self { request: asked.with_body(&bytes), body: value })
    }
}

/// A command request without a body (`POST /v1/orders/{id}/ship`): a body
/// sent anyway is not read, nor part of the idempotency fingerprint.
pub(crate) struct BodilessCommand(pub AppRequest);

impl<S: Send + Sync> FromRequestParts<S> for BodilessCommand {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Ok(Self(Asked::from_request_parts(parts, state).await?.with_body(&[])))
    }
}

/// Everything a command request says besides its body.
struct Asked {
    principal: Principal,
    context: RequestContext,
    if_match: Option<u64>,
    key: Option<String>,
    method: String,
    path: String,
}

impl Asked {
    async fn from_request_parts<S: Send + Sync>(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Ok(Self {
            principal: Principal::from_request_parts(parts, state).await?,
            context: RequestContext::from_request_parts(parts, state).await?,
            if_match: if_match(&parts.headers)?,
            key: idempotency_key(&parts.headers)?,
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
        })
    }

    /// The request as the application takes it; the key's fingerprint covers `body`.
    fn with_body(self, body: &[u8]) -> AppRequest {
        let Self { principal, context, if_match, key, method, path } = self;
        AppRequest {
            caller: Caller { actor: principal.actor(), customer: principal.customer().map(str::to_owned) },
            correlation_id: context.correlation_id,
            causation_id: context.request_id,
            trace_context: service_kit::telemetry::traceparent(&tracing::Span::current()),
            key: key.map(|key| Key { fingerprint: idempotency::fingerprint(&method, &path, body), key }),
            if_match,
        }
    }
}

/// A JSON request body, kept as bytes too (the idempotency fingerprint).
pub(crate) struct JsonBody<T> {
    pub value: T,
    bytes: Bytes,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        let json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
            });
        if !json {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Send application/json",
            )
            .with_detail("the body must be JSON, with Content-Type: application/json"));
        }
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", "The body is too large")
                    .with_detail(rejection.body_text())
            } else {
                Problem::bad_request(rejection.body_text())
            }
        })?;
        // serde would also read a struct from a JSON array: every body here is an object.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(Problem::bad_request("the body must be a JSON object"));
        }
        let Json(value) = Json::<T>::from_bytes(&bytes)?;
        Ok(Self { value, bytes })
    }
}

/// An integer as JSON Schema counts them: `343` or `343.0` (an integral
/// number); anything else is refused like a wrong type.
pub(crate) fn integer<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    use serde::de::Error;
    let number = serde_json::Number::deserialize(deserializer)?;
    number
        .as_i64()
        .or_else(|| number.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15).map(|f| f as i64))
        .ok_or_else(|| D::Error::custom(format!("{number} is not an integer in range")))
}

/// `If-Match: "5"` (or `5`): the stream version the client requires.
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, Problem> {
    let Some(value) = headers.get(header::IF_MATCH) else { return Ok(None) };
    let text = value.to_str().unwrap_or_default().trim();
    let unquoted = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(text);
    unquoted
        .parse::<u64>()
        .map(Some)
        .map_err(|_| Problem::bad_request("If-Match must be a stream version, such as \"3\""))
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    match value.to_str() {
        Ok(key) if idempotency::valid_key(key) => Ok(Some(key.to_owned())),
        _ => Err(Problem::bad_request(format!(
            "Idempotency-Key must be 1 to {} visible ASCII characters",
            idempotency::MAX_KEY_LEN
        ))),
    }
}

/// A resource a command answers about: where it is, and its stream version.
pub(crate) trait Resource {
    fn location(&self) -> String;
    fn version(&self) -> u64;
}

/// `202 Accepted` with the command's answer, `Location` and `ETag`, and
/// `idempotent-replayed: true` when it is the answer saved under the key.
pub(crate) struct Accepted<T>(pub Done<T>);

impl<T: Resource + Serialize> IntoResponse for Accepted<T> {
    fn into_response(self) -> Response {
        let Done { value, replayed } = self.0;
        let mut headers = HeaderMap::new();
        if let Ok(location) = HeaderValue::from_str(&value.location()) {
            headers.insert(header::LOCATION, location);
        }
        if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", value.version())) {
            headers.insert(header::ETAG, etag);
        }
        if replayed {
            headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        (StatusCode::ACCEPTED, headers, Json(value)).into_response()
    }
}

/// Whatever a command handler answers instead of `202`: problem+json, with
/// `idempotent-replayed: true` when it is the refusal saved under the key.
pub(crate) struct ApiError {
    problem: Problem,
    replayed: bool,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = self.problem.into_response();
        if self.replayed {
            response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        response
    }
}

impl From<Problem> for ApiError {
    fn from(problem: Problem) -> Self {
        Self { problem, replayed: false }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Problem::from(rejection).into()
    }
}

impl From<CommandError> for ApiError {
    fn from(error: CommandError) -> Self {
        if let CommandError::RefusedBefore(refusal) = error {
            return Self { problem: refused(refusal), replayed: true };
        }
        let problem = match error {
            CommandError::Refused(refusal) | CommandError::RefusedBefore(refusal) => refused(refusal),
            CommandError::KeyReused => {
                Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused", "Key reused")
                    .with_detail(error.to_string())
            }
            CommandError::KeyBusy => Problem::conflict(error.to_string()).with_retry_after(1),
            CommandError::Contention(_) => Problem::conflict(error.to_string()).with_retry_after(1),
            CommandError::Unavailable(reason) => {
                tracing::warn!(%reason, "event store unavailable");
                Problem::unavailable("the event store is unavailable", 1)
            }
            CommandError::Failed(reason) => {
                tracing::error!(%reason, "command failed");
                Problem::internal()
            }
        };
        problem.into()
    }
}

/// A refusal, as the client sees it.
fn refused(refusal: Refusal) -> Problem {
    match refusal {
        Refusal::Invalid { errors } => Problem::validation(
            errors.into_iter().map(|e| FieldProblem { field: e.field, message: e.message }).collect(),
        ),
        Refusal::NotFound { .. } => Problem::not_found(refusal.to_string()),
        Refusal::Conflict { reason } => Problem::conflict(reason),
        Refusal::Forbidden { reason } => {
            Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden").with_detail(reason)
        }
        Refusal::VersionMismatch { .. } => Problem::precondition_failed(refusal.to_string()),
    }
}
