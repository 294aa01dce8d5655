//! The scheduler's debug endpoints and the automatic-scheduling switch (SPEC §5, §8).

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::audit::{AuditCx, Audited};
use super::error::{ApiError, ErrorBody};
use super::extract::{
    Admin, ApiJson, NoBody, Operator, OptionalJson, TrialIdParam, TrialPath, not_a_secret,
};
use super::{AppState, Message};
use crate::domain::{InvalidStartTime, StartTime, TrialId};
use crate::scheduler::{ScheduleAllReport, ScheduleError, Skipped, Switched};

/// The routes of this area.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(schedule))
        .routes(routes!(schedule_all))
        .routes(routes!(schedule_from_registry, unschedule))
        .routes(routes!(toggle_automatic))
}

/// Body of `POST /debug/trial/schedule`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ScheduleBody {
    /// The trial's id: 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or
    /// digit.
    #[schema(example = "trial-42")]
    trial_id: String,
    /// When the trial starts: RFC 3339 with an offset, in the future.
    #[schema(example = "2031-02-23T07:17:15+02:00")]
    start_time: String,
}

/// The answer of a scheduling.
#[derive(Serialize, ToSchema)]
struct Scheduled {
    /// What was done, in words.
    #[schema(example = "Trial trial-42 scheduled at 2031-02-23T07:17:15+02:00")]
    message: String,
    /// The trial scheduled.
    #[schema(value_type = String, example = "trial-42")]
    trial_id: TrialId,
    /// The start time, with the offset it was given.
    #[schema(value_type = String, example = "2031-02-23T07:17:15+02:00")]
    start_time: StartTime,
}

/// The answer of the automatic-scheduling switch.
#[derive(Serialize, ToSchema)]
struct AutomaticScheduling {
    /// What was done, in words.
    #[schema(example = "Automatic scheduling enabled")]
    message: String,
    /// Whether the registry is now polled for trials to schedule.
    #[serde(rename = "Automatic_scheduling")]
    automatic_scheduling: bool,
}

/// The answer of `schedule-all`: what became of each trial of the registry, by id.
#[derive(Serialize, ToSchema)]
struct ScheduledAll {
    /// How many trials went each way, in words.
    #[schema(
        example = "1 scheduled, 0 rescheduled, 0 already scheduled, 0 already executing, 0 already ended, 0 skipped"
    )]
    message: String,
    /// Trials scheduled now.
    scheduled: Vec<String>,
    /// Trials whose job was moved to their changed start time.
    rescheduled: Vec<String>,
    /// Trials already scheduled at their start time.
    already_scheduled: Vec<String>,
    /// Trials whose engine is running, or failed and waiting for the operator.
    already_executing: Vec<String>,
    /// Trials that ran to their end (finished or aborted).
    already_ended: Vec<String>,
    /// Trials not scheduled, and why.
    skipped: Vec<Skipped>,
}

impl From<ScheduleAllReport> for ScheduledAll {
    fn from(report: ScheduleAllReport) -> Self {
        Self {
            message: format!(
                "{} scheduled, {} rescheduled, {} already scheduled, {} already executing, {} already ended, {} skipped",
                report.scheduled.len(),
                report.rescheduled.len(),
                report.already_scheduled.len(),
                report.already_executing.len(),
                report.already_ended.len(),
                report.skipped.len()
            ),
            scheduled: report.scheduled,
            rescheduled: report.rescheduled,
            already_scheduled: report.already_scheduled,
            already_executing: report.already_executing,
            already_ended: report.already_ended,
            skipped: report.skipped,
        }
    }
}

/// Schedule a trial at a given time
///
/// Refused if the trial already has a job or an engine.
#[utoipa::path(
    post,
    path = "/debug/trial/schedule",
    tag = "scheduling",
    security(("api_key" = [])),
    request_body = ScheduleBody,
    responses(
        (status = 200, description = "Scheduled", body = Scheduled),
        (status = 400, description = "Invalid trial id, or a start time that is malformed or not in the future", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 409, description = "The trial already has a job or an engine", body = ErrorBody),
        (status = 422, description = "The body is not an object of this shape", body = ErrorBody),
        (status = 503, description = "The job could not be saved, so it was not made", body = ErrorBody),
    ),
)]
async fn schedule(
    _: Operator,
    audit: AuditCx,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ScheduleBody>,
) -> Result<(Extension<Audited>, Json<Scheduled>), ApiError> {
    let id = TrialId::parse(&body.trial_id)?;
    not_a_secret(&state, &id)?;
    let start = StartTime::parse_future(&body.start_time, Utc::now())?;
    let answer = scheduled(&id, start);
    let entry = audit
        .about(id.as_str())
        .entry(StatusCode::OK, Some(answer.message.clone()));
    state.scheduler.schedule(&id, start, Some(entry)).await?;
    Ok((Extension(Audited), Json(answer)))
}

fn scheduled(id: &TrialId, start: StartTime) -> Scheduled {
    Scheduled {
        message: format!("Trial {id} scheduled at {start}"),
        trial_id: id.clone(),
        start_time: start,
    }
}

/// Schedule a trial at its start time in the trial repository
#[utoipa::path(
    post,
    path = "/debug/trial/{trial_id}/schedule",
    tag = "scheduling",
    security(("api_key" = [])),
    params(TrialIdParam),
    responses(
        (status = 200, description = "Scheduled", body = Scheduled),
        (status = 400, description = "Invalid trial id, or a start time in the past", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "The trial repository does not know the trial", body = ErrorBody),
        (status = 409, description = "The trial already has a job or an engine, or has run already", body = ErrorBody),
        (status = 502, description = "The trial repository failed or gave no usable start time", body = ErrorBody),
        (status = 503, description = "The job could not be saved, so it was not made", body = ErrorBody),
    ),
)]
async fn schedule_from_registry(
    _: Operator,
    audit: AuditCx,
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
    _: NoBody,
) -> Result<(Extension<Audited>, Json<Scheduled>), ApiError> {
    not_a_secret(&state, &id)?;
    let entry = audit.entry(StatusCode::OK, None);
    match state
        .scheduler
        .schedule_from_registry(&id, Some(entry))
        .await
    {
        Ok(start) => Ok((Extension(Audited), Json(scheduled(&id, start)))),
        // A start time the registry wrote badly is the registry's garbage, not the caller's.
        Err(ScheduleError::Time(
            e @ (InvalidStartTime::Malformed(_)
            | InvalidStartTime::NoSuchTime(_)
            | InvalidStartTime::TooLate(_)
            | InvalidStartTime::LeapSecond(_)),
        )) => Err(ApiError::bad_gateway(format!(
            "trial repository gives trial '{id}' a start_time that cannot be used: {e}"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Schedule every future trial of the trial repository
///
/// The answer lists the ids `scheduled`, `rescheduled` (a changed start time),
/// `already_scheduled`, `already_executing` (running, or failed and waiting for the operator),
/// `already_ended` (finished or aborted) and `skipped` (with the reason).
#[utoipa::path(
    post,
    path = "/debug/trial/schedule-all",
    tag = "scheduling",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "What was scheduled and what was not", body = ScheduledAll),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 502, description = "The trial repository failed", body = ErrorBody),
        (status = 503, description = "A job could not be saved", body = ErrorBody),
    ),
)]
async fn schedule_all(
    _: Operator,
    State(state): State<AppState>,
    _: NoBody,
) -> Result<Json<ScheduledAll>, ApiError> {
    let report = state.scheduler.schedule_all().await?;
    Ok(Json(report.into()))
}

/// Remove a scheduled job
#[utoipa::path(
    delete,
    path = "/debug/trial/{trial_id}/schedule",
    tag = "scheduling",
    security(("api_key" = [])),
    params(TrialIdParam),
    responses(
        (status = 200, description = "Job removed", body = Message),
        (status = 400, description = "Invalid trial id", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "The trial has no scheduled job (or another removal of it is under way)", body = ErrorBody),
        (status = 503, description = "The removal could not be saved, so it was not made", body = ErrorBody),
    ),
)]
async fn unschedule(
    _: Operator,
    audit: AuditCx,
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
    _: NoBody,
) -> Result<(Extension<Audited>, Json<Message>), ApiError> {
    let message = format!("Scheduled job of trial {id} removed");
    let entry = audit.entry(StatusCode::OK, Some(message.clone()));
    if state.scheduler.unschedule(&id, Some(entry)).await? {
        Ok((Extension(Audited), Json(Message::new(message))))
    } else {
        Err(ApiError::not_found(format!(
            "trial '{id}' has no scheduled job"
        )))
    }
}

/// Optional body of `POST /trial/scheduling`: the state to set automatic scheduling to,
/// whatever it is now (a client that says which state it wants does not undo a change made
/// since it looked). Without a body the request toggles it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetAutomatic {
    /// On (`true`) or off (`false`).
    pub automatic: bool,
}

/// Toggle automatic scheduling, or set it
///
/// While on, the trial repository is polled every `scheduler.poll_interval_secs` and every
/// future trial is scheduled. Without a body the switch is toggled; with
/// `{"automatic": true|false}` it is set to that state.
#[utoipa::path(
    post,
    path = "/trial/scheduling",
    tag = "scheduling",
    security(("api_key" = [])),
    request_body(content = Option<SetAutomatic>, description = "Optional: the state wanted"),
    responses(
        (status = 200, description = "The new setting", body = AutomaticScheduling),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 415, description = "A body that is not JSON", body = ErrorBody),
        (status = 422, description = "A body that is not `{\"automatic\": bool}`", body = ErrorBody),
        (status = 503, description = "The setting could not be saved, so it was not changed", body = ErrorBody),
    ),
)]
async fn toggle_automatic(
    _: Admin,
    audit: AuditCx,
    State(state): State<AppState>,
    OptionalJson(wanted): OptionalJson<SetAutomatic>,
) -> Result<(Extension<Audited>, Json<AutomaticScheduling>), ApiError> {
    let message = |switched: Switched| match (switched.on, switched.changed) {
        (true, true) => "Automatic scheduling enabled",
        (false, true) => "Automatic scheduling disabled",
        (true, false) => "Automatic scheduling is already on",
        (false, false) => "Automatic scheduling is already off",
    };
    let entry =
        move |switched| Some(audit.entry(StatusCode::OK, Some(message(switched).to_owned())));
    let switched = match wanted {
        Some(SetAutomatic { automatic }) => state.scheduler.set_automatic(automatic, entry).await?,
        None => state.scheduler.toggle_automatic(entry).await?,
    };
    Ok((
        Extension(Audited),
        Json(AutomaticScheduling {
            message: message(switched).to_owned(),
            automatic_scheduling: switched.on,
        }),
    ))
}
