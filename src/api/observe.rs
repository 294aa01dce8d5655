//! Seeing inside: Prometheus metrics, a trial's history, and its live events (SSE).

use std::convert::Infallible;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiKey, TrialPath};
use crate::engine::EngineHandle;
use crate::engine::state::{EngineStatus, EventKind, TrialEvent};
use crate::telemetry;

/// The routes of this area.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/trial/{trial_id}/history", get(history))
        .route("/trial/{trial_id}/events", get(events))
}

fn engine_of(state: &AppState, id: &crate::domain::TrialId) -> Result<EngineHandle, ApiError> {
    state
        .scheduler
        .engines()
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("trial '{id}' has no engine")))
}

/// Prometheus text. Gauges of the current population are taken at scrape time.
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

async fn history(
    _: ApiKey,
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
) -> Result<Json<Value>, ApiError> {
    let snapshot = engine_of(&state, &id)?.snapshot();
    Ok(Json(json!({"trial_id": id, "history": *snapshot.history})))
}

/// The trial's history so far, then each event as it happens; the stream ends after the
/// trial finishes (or when its engine is deleted).
async fn events(
    _: ApiKey,
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let (history, receiver) = engine_of(&state, &id)?.events();
    let finished = history.iter().any(|e| e.event == EventKind::TrialFinished);
    let replay = stream::iter(history.iter().cloned().collect::<Vec<_>>());
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
    let stream = replay.chain(live).map(|event| Ok(to_sse(&event)));
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
