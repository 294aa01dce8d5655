//! The scheduler's debug endpoints and the automatic-scheduling switch (SPEC §5, §8).

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiKey, TrialPath};
use crate::domain::{InvalidStartTime, StartTime, TrialId};
use crate::scheduler::ScheduleError;

/// The routes of this area.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/debug/trial/schedule", post(schedule))
        .route("/debug/trial/schedule-all", post(schedule_all))
        .route(
            "/debug/trial/{trial_id}/schedule",
            post(schedule_from_registry).delete(unschedule),
        )
        .route("/trial/scheduling", post(toggle_automatic))
}

/// Body of `POST /debug/trial/schedule`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleBody {
    trial_id: String,
    start_time: String,
}

async fn schedule(
    _: ApiKey,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ScheduleBody>,
) -> Result<Json<Value>, ApiError> {
    let id = TrialId::parse(&body.trial_id)?;
    let start = StartTime::parse_future(&body.start_time, Utc::now())?;
    state.scheduler.schedule(&id, start).await?;
    Ok(Json(scheduled(&id, start)))
}

fn scheduled(id: &TrialId, start: StartTime) -> Value {
    json!({
        "message": format!("Trial {id} scheduled at {start}"),
        "trial_id": id,
        "start_time": start,
    })
}

async fn schedule_from_registry(
    _: ApiKey,
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
) -> Result<Json<Value>, ApiError> {
    match state.scheduler.schedule_from_registry(&id).await {
        Ok(start) => Ok(Json(scheduled(&id, start))),
        // A start time the registry wrote badly is the registry's garbage, not the caller's.
        Err(ScheduleError::Time(InvalidStartTime::Malformed(raw))) => Err(ApiError::bad_gateway(
            format!("trial repository gives trial '{id}' an unreadable start_time '{raw}'"),
        )),
        Err(e) => Err(e.into()),
    }
}

async fn schedule_all(_: ApiKey, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let report = state.scheduler.schedule_all().await?;
    Ok(Json(json!({
        "message": format!(
            "{} scheduled, {} rescheduled, {} already scheduled, {} already executing, {} skipped",
            report.scheduled.len(),
            report.rescheduled.len(),
            report.already_scheduled.len(),
            report.already_executing.len(),
            report.skipped.len()
        ),
        "scheduled": report.scheduled,
        "rescheduled": report.rescheduled,
        "already_scheduled": report.already_scheduled,
        "already_executing": report.already_executing,
        "skipped": report.skipped,
    })))
}

async fn unschedule(
    _: ApiKey,
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
) -> Result<Json<Value>, ApiError> {
    if state.scheduler.unschedule(&id).await? {
        Ok(Json(
            json!({"message": format!("Scheduled job of trial {id} removed")}),
        ))
    } else {
        Err(ApiError::not_found(format!(
            "trial '{id}' has no scheduled job"
        )))
    }
}

async fn toggle_automatic(
    _: ApiKey,
    State(state): State<AppState>,
) -> Result<Json<Value>, ApiError> {
    let on = state.scheduler.toggle_automatic().await?;
    Ok(Json(json!({
        "message": if on { "Automatic scheduling enabled" } else { "Automatic scheduling disabled" },
        "Automatic_scheduling": on,
    })))
}
