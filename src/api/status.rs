//! `GET /status` and the heartbeat debug endpoints.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiKey, TrialPath};
use crate::domain::TrialId;

/// The routes of this area.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/status", get(status))
        .route("/debug/add-heartbeat", post(add_heartbeat))
        .route("/debug/heartbeat/{trial_id}", delete(remove_heartbeat))
}

/// The service version, as shown in `/status`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

async fn status(_: ApiKey, State(state): State<AppState>) -> Json<Value> {
    let jobs = state.scheduler.jobs();
    let scheduled: Vec<Value> = jobs
        .iter()
        .map(|job| {
            json!({
                "id": job.id,
                "trigger": format!("date[{}]", job.start_time),
                "start_time": job.start_time.utc(),
            })
        })
        .collect();
    let engines: Vec<Value> = state
        .scheduler
        .engines()
        .list()
        .into_iter()
        .map(|(id, status)| json!({"ID": id, "status": status}))
        .collect();
    Json(json!({
        "message": format!("This is Lifecycle Manager {VERSION}!"),
        "version": VERSION,
        "uptime_secs": state.started.elapsed().as_secs(),
        "Scheduler_status": if jobs.is_empty() { "Idle" } else { "Scheduled job(s) initiated" },
        "Automatic_scheduling": state.scheduler.automatic(),
        "scheduled_trials": scheduled,
        "missed_trials": state.scheduler.missed(),
        "Executor_Engine_instances": engines,
        "Heartbeat_instances": state.heartbeats.reports(),
    }))
}

async fn add_heartbeat(
    _: ApiKey,
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let raw = query
        .get("trial_id")
        .ok_or_else(|| ApiError::bad_request("query parameter 'trial_id' is required"))?;
    let id = TrialId::parse(raw)?;
    state.heartbeats.add(&id)?;
    Ok(Json(
        json!({"message": format!("Heartbeat added for trial {id}")}),
    ))
}

async fn remove_heartbeat(
    _: ApiKey,
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
) -> Result<Json<Value>, ApiError> {
    if state.heartbeats.remove(&id) {
        Ok(Json(
            json!({"message": format!("Heartbeat removed for trial {id}")}),
        ))
    } else {
        Err(ApiError::not_found(format!(
            "trial '{id}' has no heartbeat"
        )))
    }
}
