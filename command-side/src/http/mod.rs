//! The command API's routes, and what every command handler shares: the JSON
//! body, `If-Match`, `Idempotency-Key`, and the mapping of failures to
//! problem+json.

mod doc;
mod inventory;
mod orders;

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use domain::DomainError;
use event_store::{EventStore, Metadata, StoreError};
use serde::de::DeserializeOwned;
use service_kit::auth::{self, Gate, Principal};
use service_kit::http::{FieldProblem, Problem, RequestContext, PROBLEM_JSON};
use service_kit::ops::Check;
use sqlx::PgPool;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use crate::commands::{CommandError, EventIds, Invocation};
use crate::idempotency::{self, Claim, StoredResponse};

#[derive(Clone)]
pub(crate) struct AppState {
    pub store: Arc<dyn EventStore>,
    pub pool: PgPool,
    pub command_max_attempts: u32,
    pub order_deadline: chrono::Duration,
    /// Longest a request waits for another one running under the same
    /// `Idempotency-Key` before it answers 409: short of the request timeout.
    pub idempotency_wait: std::time::Duration,
}

/// The API's routes with their documentation, registered together.
fn documented() -> OpenApiRouter<AppState> {
    let scope = |scope: &'static str| from_fn(move |request, next| auth::require_scope(scope, request, next));
    let orders = OpenApiRouter::new()
        .routes(routes!(orders::place))
        .routes(routes!(orders::cancel))
        .route_layer(scope(auth::ORDERS_WRITE));
    let inventory = OpenApiRouter::new().routes(routes!(inventory::receive)).route_layer(scope(auth::INVENTORY_WRITE));
    OpenApiRouter::with_openapi(doc::ApiDoc::openapi().merge_from(service_kit::ops::OpsApi::openapi()))
        .merge(orders)
        .merge(inventory)
}

/// The OpenAPI document the API serves at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    documented().into_openapi()
}

pub(crate) fn router(state: AppState, body_limit: usize, gate: Gate, checks: Vec<Check>) -> Router {
    let (api, document) = documented().layer(from_fn_with_state(gate, auth::authenticate)).split_for_parts();
    Router::new()
        .merge(api)
        .merge(SwaggerUi::new("/docs").url("/openapi.json", document))
        .merge(service_kit::ops::router(checks))
        .fallback(service_kit::http::not_found_route)
        .method_not_allowed_fallback(|| async {
            Problem::new(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "Method not allowed")
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// A JSON request body, kept as bytes too (the idempotency fingerprint).
pub(crate) struct JsonBody<T> {
    pub value: T,
    pub bytes: Bytes,
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

/// What a command handler answers on success.
pub(crate) struct Accepted {
    pub body: serde_json::Value,
    pub location: String,
}

/// Runs a command handler with the conventions of every command: `If-Match`,
/// `Idempotency-Key`, the event metadata, and problem+json for failures.
pub(crate) async fn run_command<F, Fut>(
    state: &AppState,
    principal: &Principal,
    context: &RequestContext,
    headers: &HeaderMap,
    path: &str,
    body: &[u8],
    handler: F,
) -> Response
where
    F: FnOnce(Invocation, DateTime<Utc>) -> Fut,
    Fut: Future<Output = Result<Accepted, Problem>>,
{
    let expected_version = match if_match(headers) {
        Ok(version) => version,
        Err(problem) => return problem.into_response(),
    };
    let key = match idempotency_key(headers) {
        Ok(key) => key,
        Err(problem) => return problem.into_response(),
    };
    // Keys are the principal's own: another principal's key is another key.
    let owner = principal.actor();
    let (now, ids, lease) = match key {
        None => (Utc::now(), EventIds::Random, None),
        Some(key) => {
            let fingerprint = idempotency::fingerprint("POST", path, body);
            match idempotency::claim(&state.pool, &owner, key, &fingerprint, state.idempotency_wait).await {
                Ok(Claim::Run(lease)) => (lease.requested_at, EventIds::Derived(lease.namespace), Some(lease)),
                Ok(Claim::Replay(stored)) => return respond(&stored, true),
                Ok(Claim::Mismatch) => {
                    return Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused", "Key reused")
                        .with_detail("this Idempotency-Key was used with another request")
                        .into_response()
                }
                Ok(Claim::StillRunning) => {
                    return Problem::conflict("a request with this Idempotency-Key is still being processed")
                        .with_retry_after(1)
                        .into_response()
                }
                Err(error) => {
                    tracing::error!(%error, "idempotency key lookup failed");
                    return store_unavailable();
                }
            }
        }
    };
    let invocation = Invocation {
        metadata: Metadata {
            correlation_id: context.correlation_id.clone(),
            causation_id: context.request_id.clone(),
            actor: owner.clone(),
            trace_context: service_kit::telemetry::traceparent(&tracing::Span::current()),
        },
        ids,
        expected_version,
        max_attempts: state.command_max_attempts,
    };
    let outcome = handler(invocation, now).await;
    if let (Some(key), Some(lease)) = (key, lease) {
        // A failure of ours (5xx) or a transient one (sent with Retry-After,
        // such as contention) is not remembered: the client's retry runs again.
        let remembered = match &outcome {
            Err(problem) if problem.status >= 500 || problem.retry_after.is_some() => {
                idempotency::release(&state.pool, &owner, key, &lease).await
            }
            _ => idempotency::complete(&state.pool, &owner, key, &lease, &stored_form(&outcome)).await,
        };
        match remembered {
            Ok(true) => {}
            // This request outlived its lease and another took the key over:
            // the events are the same (derived ids), the successor answers.
            Ok(false) => tracing::warn!("the idempotency key was taken over; its new holder records the outcome"),
            // The command's outcome stands; a retry with the key finds its events.
            Err(error) => tracing::warn!(%error, "could not record the idempotency key's outcome"),
        }
    }
    match outcome {
        Ok(_) => respond(&stored_form(&outcome), false),
        Err(problem) => problem.into_response(),
    }
}

/// What is remembered of an answer under an idempotency key.
fn stored_form(outcome: &Result<Accepted, Problem>) -> StoredResponse {
    match outcome {
        Ok(accepted) => {
            StoredResponse { status: 202, body: accepted.body.clone(), location: Some(accepted.location.clone()) }
        }
        Err(problem) => StoredResponse {
            status: problem.status,
            body: serde_json::to_value(problem).unwrap_or_default(),
            location: None,
        },
    }
}

fn store_unavailable() -> Response {
    Problem::unavailable("the event store is unavailable", 1).into_response()
}

fn respond(stored: &StoredResponse, replayed: bool) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, Json(&stored.body)).into_response();
    let headers = response.headers_mut();
    if status.is_client_error() || status.is_server_error() {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    }
    if let Some(location) = stored.location.as_deref().and_then(|l| HeaderValue::from_str(l).ok()) {
        headers.insert(header::LOCATION, location);
    }
    if let Some(version) = stored.body.get("version").and_then(|v| v.as_u64()) {
        if let Ok(etag) = HeaderValue::from_str(&format!("\"{version}\"")) {
            headers.insert(header::ETAG, etag);
        }
    }
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
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

fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, Problem> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    match value.to_str() {
        Ok(key) if idempotency::valid_key(key) => Ok(Some(key)),
        _ => Err(Problem::bad_request(format!(
            "Idempotency-Key must be 1 to {} visible ASCII characters",
            idempotency::MAX_KEY_LEN
        ))),
    }
}

/// A failed command, as the client sees it.
impl From<CommandError> for Problem {
    fn from(error: CommandError) -> Self {
        match error {
            CommandError::Rejected(DomainError::Invalid(errors)) => Problem::validation(
                errors.into_iter().map(|e| FieldProblem { field: e.field, message: e.message }).collect(),
            ),
            CommandError::Rejected(DomainError::NotFound(what)) => Problem::not_found(format!("{what} not found")),
            CommandError::Rejected(DomainError::Conflict(why)) => Problem::conflict(why),
            CommandError::VersionMismatch { required, actual } => Problem::precondition_failed(format!(
                "If-Match requires version {required}; the current version is {actual}"
            )),
            CommandError::Contention(attempts) => {
                Problem::conflict(format!("the resource changed under {attempts} attempts in a row; try again"))
                    .with_retry_after(1)
            }
            CommandError::Store(StoreError::Unavailable(error)) => {
                tracing::warn!(%error, "event store unavailable");
                Problem::unavailable("the event store is unavailable", 1)
            }
            other => {
                tracing::error!(error = %other, "command failed");
                Problem::internal()
            }
        }
    }
}
