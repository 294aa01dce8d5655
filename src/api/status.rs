//! `GET /status` and the heartbeat debug endpoints.

use axum::Json;
use axum::extract::{Query, State};
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ErrorBody};
use super::extract::{Admin, TrialIdParam, TrialPath, Viewer};
use super::{AppState, Message};
use crate::domain::TrialId;

/// The routes of this area.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(status))
        .routes(routes!(add_heartbeat))
        .routes(routes!(remove_heartbeat))
}

/// The service version, as shown in `/status`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The service's state
///
/// Version and uptime, the scheduler (`Scheduler_status`, `Automatic_scheduling`,
/// `scheduled_trials` as `{"id", "trigger", "start_time"}`, `missed_trials`), the engines
/// (`Executor_Engine_instances` as `{"ID", "status"}`) and the heartbeats
/// (`Heartbeat_instances`).
#[utoipa::path(
    get,
    path = "/status",
    tag = "status",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The service's state", body = Object),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
    ),
)]
async fn status(_: Viewer, State(state): State<AppState>) -> Json<Value> {
    let jobs = state.scheduler.jobs();
    let scheduled: Vec<Value> = jobs
        .iter()
        .map(|job| {
            json!({
                "id": job.id,
                "trigger": format!("date[{}]", job.start_time),
                // As the operator gave it, offset included: it reads back as written.
                "start_time": job.start_time,
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

/// Start a heartbeat
///
/// A periodic task that checks the trial's services are reachable; its last result shows in
/// `/status`.
#[utoipa::path(
    post,
    path = "/debug/add-heartbeat",
    tag = "heartbeats",
    security(("api_key" = [])),
    params(("trial_id" = String, Query, description = "The trial's id", example = "trial-42")),
    responses(
        (status = 200, description = "Heartbeat added", body = Message),
        (status = 400, description = "No, an invalid or a repeated `trial_id`, or another query parameter", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 409, description = "The trial already has a heartbeat", body = ErrorBody),
        (status = 503, description = "The service is stopping", body = ErrorBody),
    ),
)]
async fn add_heartbeat(
    _: Admin,
    State(state): State<AppState>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<Message>, ApiError> {
    super::paging::once_each(&pairs, &[])?;
    let mut raw = None;
    for (key, value) in &pairs {
        match key.as_str() {
            "trial_id" => raw = Some(value),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter '{other}': use trial_id"
                )));
            }
        }
    }
    let raw = raw.ok_or_else(|| ApiError::bad_request("query parameter 'trial_id' is required"))?;
    let id = TrialId::parse(raw)?;
    state.heartbeats.add(&id)?;
    Ok(Json(Message::new(format!(
        "Heartbeat added for trial {id}"
    ))))
}

/// Stop a heartbeat
#[utoipa::path(
    delete,
    path = "/debug/heartbeat/{trial_id}",
    tag = "heartbeats",
    security(("api_key" = [])),
    params(TrialIdParam),
    responses(
        (status = 200, description = "Heartbeat removed", body = Message),
        (status = 400, description = "Invalid trial id", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "The trial has no heartbeat", body = ErrorBody),
    ),
)]
async fn remove_heartbeat(
    _: Admin,
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
) -> Result<Json<Message>, ApiError> {
    if state.heartbeats.remove(&id) {
        Ok(Json(Message::new(format!(
            "Heartbeat removed for trial {id}"
        ))))
    } else {
        Err(ApiError::not_found(format!(
            "trial '{id}' has no heartbeat"
        )))
    }
}
