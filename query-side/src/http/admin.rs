//! `GET /v1/admin/projections`: where each projection stands against the
//! head of the log. (Rebuilds are not built yet; auth comes with issue 6.)

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use service_kit::http::Problem;

use super::{database_error, AppState};

#[derive(Debug, Serialize, sqlx::FromRow)]
pub(crate) struct ProjectionView {
    name: String,
    /// Global position of the last event the projection processed (0: none).
    checkpoint: i64,
    /// Global position of the newest readable event.
    head: i64,
    /// Readable events the projection has not processed yet.
    lag: i64,
    /// `running`, or `failed` (see `failure`).
    state: String,
    events_processed: i64,
    failure: Option<serde_json::Value>,
    updated_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Projections {
    projections: Vec<ProjectionView>,
}

pub(crate) async fn list(State(state): State<AppState>) -> Result<Json<Projections>, Problem> {
    // The head and the lag count only readable events, below the horizon,
    // the same events the projections can see.
    let projections: Vec<ProjectionView> = sqlx::query_as(
        "WITH horizon AS MATERIALIZED (SELECT es_read_horizon() AS xid), \
              head AS MATERIALIZED ( \
                SELECT coalesce(max(position), 0) AS position FROM es_events, horizon \
                WHERE transaction_id < horizon.xid) \
         SELECT c.name, c.position AS checkpoint, head.position AS head, \
                (SELECT count(*) FROM es_events e, horizon \
                  WHERE (e.transaction_id, e.position) > (c.commit_id::text::xid8, c.position) \
                    AND e.transaction_id < horizon.xid) AS lag, \
                c.state, c.events_processed, \
                CASE WHEN c.error IS NULL THEN NULL ELSE json_build_object( \
                  'event_id', c.failed_event_id, 'position', c.failed_position, 'error', c.error)::jsonb END AS failure, \
                c.updated_at \
         FROM projection_checkpoints c, head ORDER BY c.name",
    )
    .fetch_all(&state.pool)
    .await
    .map_err(database_error)?;
    Ok(Json(Projections { projections }))
}
