//! Seeing inside: Prometheus metrics, a trial's history, and its live events (SSE).

use std::convert::Infallible;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::{TrialIdParam, TrialPath, Viewer};
use crate::engine::state::{EngineStatus, EventKind, TrialEvent};
use crate::telemetry;

/// The routes of this area.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(metrics))
        .routes(routes!(history))
        .routes(routes!(events))
}

/// Prometheus metrics
///
/// Prometheus text. Gauges of the current population are taken at scrape time.
#[utoipa::path(get, path = "/metrics", tag = "status",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String)))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let engines = state.scheduler.engines().list();
    for status in [
        EngineStatus::Active,
        EngineStatus::Failed,
        EngineStatus::Finished,
    ] {
        let count = engines.iter().filter(|(_, s)| *s == status).count();
        metrics::gauge!("lcm_engines", "status" => format!("{status:?}")).set(count as f64);
    }
    metrics::gauge!("lcm_scheduled_jobs").set(state.scheduler.jobs().len() as f64);
    metrics::gauge!("lcm_missed_jobs").set(state.scheduler.missed().len() as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        telemetry::metrics().render(),
    )
}

/// The trial's history
///
/// `{"trial_id", "history": [...]}`: every transition of the trial so far, in order.
#[utoipa::path(get, path = "/trial/{trial_id}/history", tag = "trials", security(("api_key" = [])), params(TrialIdParam),
    responses(
        (status = 200, description = "The trial's history", body = Object),
        (status = 400, description = "Invalid trial id", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "The trial has no engine", body = ErrorBody)))]
async fn history(
    _: Viewer,
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
) -> Result<Json<Value>, ApiError> {
    let snapshot = state.engine(&id)?.snapshot();
    Ok(Json(json!({"trial_id": id, "history": *snapshot.history})))
}

/// The trial's live events (Server-Sent Events)
///
/// The trial's history so far, then each event as it happens; the stream ends after the
/// trial finishes (or when its engine is deleted).
#[utoipa::path(get, path = "/trial/{trial_id}/events", tag = "trials", security(("api_key" = [])), params(TrialIdParam),
    responses(
        (status = 200, description = "A stream of events, one JSON object each, named by its kind", content_type = "text/event-stream", body = String),
        (status = 400, description = "Invalid trial id", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "The trial has no engine", body = ErrorBody)))]
async fn events(
    _: Viewer,
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let (history, receiver) = state.engine(&id)?.events();
    let finished = history.iter().any(|e| e.event == EventKind::TrialFinished);
    let replay = stream::iter(
        history
            .iter()
            .map(|e| TrialEvent::clone(e))
            .collect::<Vec<_>>(),
    );
    let live = stream::unfold(
        (receiver, history.len(), finished),
        |(mut receiver, next, done)| async move {
            if done {
                return None;
            }
            loop {
                match receiver.recv().await {
                    // Already sent from the history.
                    Ok(event) if event.seq < next => {}
                    Ok(event) => {
                        let done = event.event == EventKind::TrialFinished;
                        let next = event.seq + 1;
                        return Some((event, (receiver, next, done)));
                    }
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    );
    let stream = replay
        .chain(live)
        .map(|event| Ok(to_sse(&event)))
        .take_until(state.shutdown.clone().cancelled_owned());
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn to_sse(event: &TrialEvent) -> Event {
    let name = serde_json::to_value(event.event)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    Event::default()
        .event(name)
        .id(event.seq.to_string())
        .json_data(event)
        .unwrap_or_default()
}
