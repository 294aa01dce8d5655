//! Seeing inside: Prometheus metrics, a trial's history, and its live events (SSE).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::{TrialIdParam, TrialPath, Viewer, key_withdrawn};
use super::view::Found;
use crate::domain::TrialId;
use crate::engine::EngineHandle;
use crate::engine::journal::Follower;
use crate::engine::state::{EngineStatus, TrialEvent};
use crate::telemetry;

/// The answer of `GET /trial/{id}/history`.
#[derive(Debug, Serialize, ToSchema)]
struct TrialHistory {
    /// The trial's id.
    #[schema(value_type = String)]
    pub trial_id: TrialId,
    /// Every transition of the trial so far, in order.
    pub history: Vec<Arc<TrialEvent>>,
}

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
        EngineStatus::Aborted,
    ] {
        let count = engines.iter().filter(|(_, s)| *s == status).count();
        metrics::gauge!("lcm_engines", "status" => status.name()).set(count as f64);
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
/// `{"trial_id", "history": [...]}`: every transition of the trial so far, in order. The same
/// once the engine has left memory: the store answers then.
#[utoipa::path(get, path = "/trial/{trial_id}/history", tag = "trials", security(("api_key" = [])), params(TrialIdParam),
    responses(
        (status = 200, description = "The trial's history", body = TrialHistory),
        (status = 400, description = "Invalid trial id", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "The trial has no engine", body = ErrorBody)))]
async fn history(
    _: Viewer,
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
) -> Result<Json<TrialHistory>, ApiError> {
    let found = state.find_trial(&id).await?;
    let history = state.history(&found, &id).await?;
    Ok(Json(TrialHistory {
        trial_id: id,
        history,
    }))
}

type EventStream = Pin<Box<dyn Stream<Item = Event> + Send>>;

/// The trial's live events (Server-Sent Events)
///
/// The trial's history so far, then each event as it happens; the stream ends after the
/// trial finishes or is aborted, or when its engine is stopped by a delete (a delete that
/// could not be saved brings the engine back: subscribe again to follow it). A trial that is
/// scheduled but not started yet streams a `scheduled` event first, then its engine's events from the
/// start time on (or `unscheduled` if its job is removed). An ended trial's history is sent,
/// then the stream ends.
#[utoipa::path(get, path = "/trial/{trial_id}/events", tag = "trials", security(("api_key" = [])), params(TrialIdParam),
    responses(
        (status = 200, description = "A stream of events, one JSON object each, named by its kind: each event of the trial is a `TrialEvent` as `/history` lists it, with its `seq` as the event's `id`. A trial scheduled but not started yet sends first `scheduled`, `{\"trial_id\", \"start_time\"}`, and `unscheduled`, `{\"trial_id\"}`, if its job is removed; neither has an `id`", content_type = "text/event-stream", body = String),
        (status = 400, description = "Invalid trial id", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "The trial has no engine and is not scheduled", body = ErrorBody)))]
async fn events(
    Viewer(holder): Viewer,
    State(state): State<AppState>,
    headers: HeaderMap,
    TrialPath(id): TrialPath,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let withdrawn = key_withdrawn(&headers, &state, holder);
    let stream: EventStream = if let Some(job) = state
        .scheduler
        .jobs()
        .into_iter()
        .find(|job| job.id == id)
        .filter(|_| !state.scheduler.engines().contains(&id))
    {
        let scheduled = Event::default()
            .event("scheduled")
            .json_data(json!({"trial_id": id, "start_time": job.start_time}))
            .unwrap_or_default();
        let started = {
            let scheduler = state.scheduler.clone();
            let id = id.clone();
            async move { scheduler.wait_for_engine(&id).await }
        };
        let unscheduled = Event::default()
            .event("unscheduled")
            .json_data(json!({"trial_id": id}))
            .unwrap_or_default();
        Box::pin(
            stream::once(async move { scheduled }).chain(stream::once(started).flat_map(
                move |engine| match engine {
                    Some(engine) => engine_stream(&engine),
                    None => Box::pin(stream::once(std::future::ready(unscheduled.clone()))),
                },
            )),
        )
    } else {
        match state.find_trial(&id).await? {
            Found::Engine(engine) => engine_stream(&engine),
            found => {
                let history = state.history(&found, &id).await?;
                let events: Vec<Event> = history.iter().map(|e| to_sse(e)).collect();
                Box::pin(stream::iter(events))
            }
        }
    };
    let stream = stream
        .map(Ok)
        .take_until(state.shutdown.clone().cancelled_owned())
        .take_until(withdrawn);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// An engine's history, then its live events until the trial ends (a stream that falls behind
/// takes what it missed from the history: no gap, no repeat).
fn engine_stream(engine: &EngineHandle) -> EventStream {
    let (history, receiver) = engine.events();
    let replay = stream::iter(history.iter().map(|e| to_sse(e)).collect::<Vec<_>>());
    let follower = Follower::after(&history, receiver, {
        let engine = engine.clone();
        move || engine.events()
    });
    let live = stream::unfold(follower, |mut follower| async move {
        let event = follower.next().await?;
        Some((to_sse(&event), follower))
    });
    Box::pin(replay.chain(live))
}

fn to_sse(event: &TrialEvent) -> Event {
    Event::default()
        .event(event.event.name())
        .id(event.seq.to_string())
        .json_data(event)
        .unwrap_or_default()
}
