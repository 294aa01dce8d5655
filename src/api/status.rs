//! `GET /status` and the heartbeat debug endpoints.

use axum::Json;
use axum::extract::{Query, State};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ErrorBody};
use super::extract::{Admin, NoBody, TrialIdParam, TrialPath, Viewer, not_a_secret};
use super::{AppState, Message};
use crate::domain::{StartTime, TrialId};
use crate::engine::state::EngineStatus;
use crate::heartbeat::HeartbeatReport;
use crate::scheduler::MissedJob;
use crate::store::WriteFailure;

/// The routes of this area.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(status))
        .routes(routes!(add_heartbeat))
        .routes(routes!(remove_heartbeat))
}

/// The service version, as shown in `/status`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The answer of `GET /status`. The capitalised names are those of the service this one
/// replaces, kept for its clients.
#[derive(Debug, Serialize, ToSchema)]
struct ServiceStatus {
    /// `This is Lifecycle Manager <version>!`.
    #[schema(example = "This is Lifecycle Manager 0.1.0!")]
    message: String,
    /// The service's version.
    #[schema(example = "0.1.0")]
    version: &'static str,
    /// Seconds since the service started.
    uptime_secs: u64,
    /// Whether any trial is scheduled.
    #[serde(rename = "Scheduler_status")]
    scheduler_status: SchedulerStatus,
    /// Whether the trial repository is polled for trials to schedule.
    #[serde(rename = "Automatic_scheduling")]
    automatic_scheduling: bool,
    /// The jobs waiting for their start time.
    scheduled_trials: Vec<ScheduledTrial>,
    /// The jobs whose start passed while the service was down, beyond
    /// `scheduler.misfire_grace_secs`: not run; schedule them again.
    missed_trials: Vec<MissedJob>,
    /// The engines in memory.
    #[serde(rename = "Executor_Engine_instances")]
    engines: Vec<EngineInstance>,
    /// The heartbeat instances, with their last check.
    #[serde(rename = "Heartbeat_instances")]
    heartbeats: Vec<HeartbeatReport>,
    /// Whether the store takes writes.
    store: StoreState,
}

/// Whether the store takes writes: while it does not, no change is made (each is answered 503)
/// and trials wait at their next checkpoint.
#[derive(Debug, Serialize, ToSchema)]
struct StoreState {
    /// Whether its last commit succeeded.
    writable: bool,
    /// Since when, and why, its commits fail; `null` while they succeed.
    failing: Option<WriteFailure>,
}

/// Whether any trial is scheduled.
#[derive(Debug, Serialize, ToSchema)]
enum SchedulerStatus {
    /// No job.
    Idle,
    /// At least one job waits for its start time.
    #[serde(rename = "Scheduled job(s) initiated")]
    Scheduled,
}

/// A job waiting for its start time.
#[derive(Debug, Serialize, ToSchema)]
struct ScheduledTrial {
    /// The trial's id.
    #[schema(value_type = String)]
    id: TrialId,
    /// When the job fires: `date[<start_time>]`.
    #[schema(example = "date[2031-02-23T07:17:15+02:00]")]
    trigger: String,
    /// When the trial starts, with the offset it was given.
    #[schema(value_type = String)]
    start_time: StartTime,
}

/// An engine in memory.
#[derive(Debug, Serialize, ToSchema)]
struct EngineInstance {
    /// The trial's id.
    #[serde(rename = "ID")]
    #[schema(value_type = String)]
    id: TrialId,
    /// The engine's status.
    status: EngineStatus,
}

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
        (status = 200, description = "The service's state", body = ServiceStatus),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
    ),
)]
async fn status(_: Viewer, State(state): State<AppState>) -> Json<ServiceStatus> {
    let jobs = state.scheduler.jobs();
    Json(ServiceStatus {
        message: format!("This is Lifecycle Manager {VERSION}!"),
        version: VERSION,
        uptime_secs: state.started.elapsed().as_secs(),
        scheduler_status: match jobs.is_empty() {
            true => SchedulerStatus::Idle,
            false => SchedulerStatus::Scheduled,
        },
        automatic_scheduling: state.scheduler.automatic(),
        scheduled_trials: jobs
            .into_iter()
            .map(|job| ScheduledTrial {
                trigger: format!("date[{}]", job.start_time),
                id: job.id,
                // As the operator gave it, offset included: it reads back as written.
                start_time: job.start_time,
            })
            .collect(),
        missed_trials: state.scheduler.missed(),
        engines: state
            .scheduler
            .engines()
            .list()
            .into_iter()
            .map(|(id, status)| EngineInstance { id, status })
            .collect(),
        heartbeats: state.heartbeats.reports(),
        store: {
            let failing = state.scheduler.deps().store.write_failure();
            StoreState {
                writable: failing.is_none(),
                failing,
            }
        },
    })
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
        (status = 400, description = "No, an invalid or a repeated `trial_id`, one that is a key or a secret, or another query parameter", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 409, description = "The trial already has a heartbeat, or 100 heartbeats run already", body = ErrorBody),
        (status = 503, description = "The service is stopping", body = ErrorBody),
    ),
)]
async fn add_heartbeat(
    _: Admin,
    State(state): State<AppState>,
    Query(pairs): Query<Vec<(String, String)>>,
    _: NoBody,
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
    not_a_secret(&state, &id)?;
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
    _: NoBody,
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
