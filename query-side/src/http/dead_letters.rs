//! `/v1/admin/dead-letters`: what the consumers gave up on, to read, send
//! again to its subject (safe: every consumer derives what it writes from
//! the event, so a message handled before changes nothing), or discard.

use std::collections::BTreeMap;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use service_kit::http::Problem;
use service_kit::nats::dead_letters::{DeadLetter, DeadLetterError, Replayed};
use utoipa::{IntoParams, ToSchema};

use super::AppState;

/// Most dead letters one request replays.
const REPLAY_LIMIT: usize = 1000;

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeadLetterSummary {
    /// Its sequence in the dead-letter stream: its id here.
    sequence: u64,
    time: DateTime<Utc>,
    /// The consumer that gave up: `<participant>-<EventType>`.
    consumer: String,
    /// Where it was published (and is sent again to).
    subject: String,
    /// Why it was given up on.
    error: String,
    deliveries: u64,
    correlation_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeadLetterPage {
    items: Vec<DeadLetterSummary>,
    /// Pass as `after` for the next page; absent on the last.
    next: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeadLetterDetail {
    #[serde(flatten)]
    summary: DeadLetterSummary,
    /// Every header, the original ones and the `Dead-Letter-*` ones.
    headers: BTreeMap<String, String>,
    /// The body: its JSON when it is JSON, else `body_base64`.
    #[schema(value_type = Object)]
    body: Option<serde_json::Value>,
    body_base64: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ReplayedLetter {
    sequence: u64,
    subject: String,
    /// The events stream's sequence of the copy (a repeat within its
    /// duplicate window is not stored again: `duplicate`).
    stored_as: u64,
    duplicate: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ReplayedLetters {
    replayed: Vec<ReplayedLetter>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct PageQuery {
    /// Only this consumer's (`inventory-deadline-OrderPlaced`, `notifications-OrderConfirmed`, ...).
    #[param(pattern = "^[A-Za-z0-9_-]{1,100}$")]
    consumer: Option<String>,
    /// Only those after this sequence (the previous page's `next`).
    #[param(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    after: Option<u64>,
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    limit: Option<usize>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplayFilter {
    /// Only this consumer's dead letters; absent: all of them (up to 1,000 per request).
    #[schema(pattern = "^[A-Za-z0-9_-]{1,100}$")]
    consumer: Option<String>,
}

pub(crate) fn summary(letter: &DeadLetter) -> DeadLetterSummary {
    DeadLetterSummary {
        sequence: letter.sequence,
        time: letter.time,
        consumer: letter.consumer.clone(),
        subject: letter.subject.clone(),
        error: letter.error.clone(),
        deliveries: letter.deliveries,
        correlation_id: letter.header("Correlation-Id").map(str::to_owned),
    }
}

fn replayed(replayed: Replayed) -> ReplayedLetter {
    let Replayed { sequence, subject, stored_as, duplicate } = replayed;
    ReplayedLetter { sequence, subject, stored_as, duplicate }
}

fn problem(error: DeadLetterError) -> Problem {
    match error {
        DeadLetterError::Unavailable(reason) => {
            tracing::warn!(%reason, "dead letters: NATS unavailable");
            Problem::unavailable("NATS is unavailable", 1)
        }
        DeadLetterError::NoSubject => Problem::conflict(error.to_string()),
    }
}

/// A dead letter's sequence: 1 to 2^63 - 1, as JetStream counts.
fn check_sequence(sequence: u64) -> Result<u64, Problem> {
    if sequence == 0 || sequence > i64::MAX as u64 {
        return Err(Problem::bad_request("a dead letter's sequence is 1 to 9223372036854775807"));
    }
    Ok(sequence)
}

fn check_consumer(consumer: &Option<String>) -> Result<(), Problem> {
    match consumer {
        Some(c)
            if c.is_empty()
                || c.len() > 100
                || !c.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
        {
            Err(Problem::bad_request("consumer: letters, digits, - and _ only, at most 100"))
        }
        _ => Ok(()),
    }
}

/// The dead letters, oldest first, a page at a time.
#[utoipa::path(get, path = "/v1/admin/dead-letters", tag = "admin", operation_id = "list_dead_letters",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of dead letters", body = DeadLetterPage),
        (status = 400, description = "A bad parameter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing scope `admin`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "NATS is unavailable (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["admin"])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<DeadLetterPage>, Problem> {
    let Query(query) = query?;
    check_consumer(&query.consumer)?;
    if query.after.is_some_and(|after| after > i64::MAX as u64) {
        return Err(Problem::bad_request("after is 0 to 9223372036854775807"));
    }
    let limit = query.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(Problem::bad_request("limit must be 1 to 200"));
    }
    let (letters, next) =
        state.dead_letters.page(query.consumer.as_deref(), query.after.unwrap_or(0), limit).await.map_err(problem)?;
    Ok(Json(DeadLetterPage { items: letters.iter().map(summary).collect(), next }))
}

/// One dead letter, with its headers and body.
#[utoipa::path(get, path = "/v1/admin/dead-letters/{sequence}", tag = "admin", operation_id = "show_dead_letter",
    params(("sequence" = u64, Path, minimum = 1, maximum = 9_223_372_036_854_775_807_i64)),
    responses(
        (status = 200, description = "The dead letter", body = DeadLetterDetail),
        (status = 400, description = "Not a sequence", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing scope `admin`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such dead letter (replayed or discarded)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "NATS is unavailable (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["admin"])))]
pub(crate) async fn show(
    State(state): State<AppState>,
    sequence: Result<Path<u64>, PathRejection>,
) -> Result<Json<DeadLetterDetail>, Problem> {
    let sequence = check_sequence(sequence?.0)?;
    let letter = state.dead_letters.get(sequence).await.map_err(problem)?.ok_or_else(|| not_found(sequence))?;
    let body: Option<serde_json::Value> = serde_json::from_slice(&letter.payload).ok();
    let body_base64 = body.is_none().then(|| base64::engine::general_purpose::STANDARD.encode(&letter.payload));
    Ok(Json(DeadLetterDetail {
        summary: summary(&letter),
        headers: letter.headers.iter().cloned().collect(),
        body,
        body_base64,
    }))
}

/// Send a dead letter again to its subject, and remove it from the dead letters.
#[utoipa::path(post, path = "/v1/admin/dead-letters/{sequence}/replay", tag = "admin", operation_id = "replay_dead_letter",
    params(("sequence" = u64, Path, minimum = 1, maximum = 9_223_372_036_854_775_807_i64)),
    responses(
        (status = 202, description = "Sent again", body = ReplayedLetter),
        (status = 400, description = "Not a sequence", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing scope `admin`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such dead letter (replayed or discarded)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "It names no subject to send it to", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "NATS is unavailable (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["admin"])))]
pub(crate) async fn replay_one(
    State(state): State<AppState>,
    sequence: Result<Path<u64>, PathRejection>,
) -> Result<(StatusCode, Json<ReplayedLetter>), Problem> {
    let sequence = check_sequence(sequence?.0)?;
    let done = state.dead_letters.replay(sequence).await.map_err(problem)?.ok_or_else(|| not_found(sequence))?;
    tracing::info!(sequence, subject = %done.subject, "dead letter replayed");
    Ok((StatusCode::ACCEPTED, Json(replayed(done))))
}

/// Send every dead letter (of one consumer, if named) again to its subject,
/// up to 1,000 per request; each replayed one leaves the dead letters.
#[utoipa::path(post, path = "/v1/admin/dead-letters/replay", tag = "admin", operation_id = "replay_dead_letters",
    request_body = ReplayFilter,
    responses(
        (status = 202, description = "Sent again", body = ReplayedLetters),
        (status = 400, description = "Not a filter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing scope `admin`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "NATS is unavailable (`Retry-After`); some may have been sent", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["admin"])))]
pub(crate) async fn replay_many(
    State(state): State<AppState>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<(StatusCode, Json<ReplayedLetters>), Problem> {
    let Json(body) = body?;
    // serde takes a JSON array for a struct (its fields in order): only an object is a filter.
    if !body.is_object() {
        return Err(Problem::bad_request("the body must be a JSON object: {} or {\"consumer\": \"...\"}"));
    }
    let filter: ReplayFilter = serde_json::from_value(body).map_err(|e| Problem::bad_request(e.to_string()))?;
    check_consumer(&filter.consumer)?;
    let (letters, _) = state.dead_letters.page(filter.consumer.as_deref(), 0, REPLAY_LIMIT).await.map_err(problem)?;
    let mut done = Vec::with_capacity(letters.len());
    for letter in letters.iter().filter(|l| !l.subject.is_empty()) {
        if let Some(replayed_letter) = state.dead_letters.replay(letter.sequence).await.map_err(problem)? {
            done.push(replayed(replayed_letter));
        }
    }
    tracing::info!(replayed = done.len(), consumer = ?filter.consumer, "dead letters replayed");
    Ok((StatusCode::ACCEPTED, Json(ReplayedLetters { replayed: done })))
}

/// Discard a dead letter.
#[utoipa::path(delete, path = "/v1/admin/dead-letters/{sequence}", tag = "admin", operation_id = "discard_dead_letter",
    params(("sequence" = u64, Path, minimum = 1, maximum = 9_223_372_036_854_775_807_i64)),
    responses(
        (status = 204, description = "Discarded"),
        (status = 400, description = "Not a sequence", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing scope `admin`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such dead letter", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "NATS is unavailable (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["admin"])))]
pub(crate) async fn discard(
    State(state): State<AppState>,
    sequence: Result<Path<u64>, PathRejection>,
) -> Result<StatusCode, Problem> {
    let sequence = check_sequence(sequence?.0)?;
    if !state.dead_letters.discard(sequence).await.map_err(problem)? {
        return Err(not_found(sequence));
    }
    tracing::info!(sequence, "dead letter discarded");
    Ok(StatusCode::NO_CONTENT)
}

fn not_found(sequence: u64) -> Problem {
    Problem::not_found(format!("no dead letter {sequence}"))
}
