//! The platform's endpoints of a running trial: component callbacks and progress reports
//! (token), the operator's `active`, `finish`, `pause`, `resume`, `step` and `abort` (API
//! key), and the trial's status and recorded responses.

use axum::Json;
use axum::extract::State;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ErrorBody};
use super::extract::{
    CallbackToken, NoBody, Operator, OptionalJson, TokenOfLiveOrFailed, TrialIdParam, TrialPath,
    Viewer,
};
use super::view::{self, Found, StatusAnswer};
use super::{AppState, Message};
use crate::domain::TrialId;
use crate::engine::executor::{
    Control, ControlError, ControlOutcome, ProgressReport, STOPPED, SignalOutcome,
};
use crate::engine::sequence::{self, Next, Signal};
use crate::engine::state::ResponseRecord;

/// The routes of this area.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(active))
        .routes(routes!(finish))
        .routes(routes!(status))
        .routes(routes!(responses))
        .routes(routes!(callback_slice))
        .routes(routes!(callback_cloudvnfboarding))
        .routes(routes!(callback_cloudvnfdeployment))
        .routes(routes!(callback_edgevnfonboarding))
        .routes(routes!(callback_edgevnfdeployment))
        .routes(routes!(callback_progress))
        .routes(routes!(abort))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(step))
}

/// The answer of `GET /trial/{id}/responses`.
#[derive(Debug, Serialize, ToSchema)]
struct TrialResponses {
    /// The trial's id.
    #[schema(value_type = String)]
    pub trial_id: TrialId,
    /// Every answer the trial's requests got (or their absence), every attempt, in the order
    /// received; a token in a body is redacted.
    pub responses: Vec<Arc<ResponseRecord>>,
}

/// The longest reason or progress message taken, in characters.
const MAX_TEXT: usize = 500;

/// Optional body of the operator's actions: why.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    /// Why, in words (one line, at most 500 characters); kept in the trial's history.
    #[schema(example = "wrong facility booked")]
    pub reason: Option<String>,
}

/// Body of a progress report (SPEC §13): both fields optional.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ProgressBody {
    /// How far along, 0 to 100.
    #[schema(minimum = 0, maximum = 100, example = 40)]
    pub progress: Option<i64>,
    /// What the component is doing (one line, at most 500 characters).
    #[schema(example = "deploying the core network functions")]
    pub message: Option<String>,
}

/// A reason or message of at most [`MAX_TEXT`] characters on one line, trimmed; empty means
/// none. Control characters (a line break, a tab, NUL…) and line separators are refused: the
/// text is kept and shown as one line.
pub fn checked_text(field: &str, text: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(text) = text else { return Ok(None) };
    let text = text.trim();
    let refused = |why: String| {
        Err(ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            why,
        ))
    };
    if text.chars().count() > MAX_TEXT {
        return refused(format!("'{field}' is longer than {MAX_TEXT} characters"));
    }
    if let Some(c) = text.chars().find(|&c| crate::domain::breaks_line(c)) {
        return refused(format!(
            "'{field}' holds a control character or line separator ({}): it must be one line of text",
            c.escape_unicode()
        ));
    }
    Ok((!text.is_empty()).then(|| text.to_owned()))
}

/// Defines the handler of one callback kind, routed and documented as its own path (so an
/// unknown kind stays the router's 404 and each kind has its own page in the document); a
/// macro so the five share one description. A test checks they are exactly [`CALLBACK_KINDS`].
macro_rules! callback_handler {
    ($handler:ident, $kind:literal, $signal:ident, $summary:literal, $what:literal) => {
        #[doc = $summary]
        #[doc = ""]
        #[doc = $what]
        #[utoipa::path(
            post,
            path = concat!("/trial/{trial_id}/callback/", $kind),
            tag = "callbacks",
            security(("callback_token" = [])),
            params(TrialIdParam),
            responses(
                (status = 200, description = "Accepted, held until the running step completes, or already registered", body = Message),
                (status = 400, description = "Invalid trial id", body = ErrorBody),
                (status = 401, description = "Missing, invalid, expired or revoked token", body = ErrorBody),
                (status = 403, description = "A token of another trial, or of a finished trial", body = ErrorBody),
                (status = 404, description = "The trial has no engine", body = ErrorBody),
                (status = 409, description = "The trial is not waiting for this callback", body = ErrorBody),
                (status = 503, description = "The callback could not be saved, so it was not taken", body = ErrorBody),
            ),
        )]
        async fn $handler(
            TokenOfLiveOrFailed(token): TokenOfLiveOrFailed,
        ) -> Result<Json<Message>, ApiError> {
            callback(token, Signal::$signal).await
        }
    };
}

callback_handler!(
    callback_slice,
    "slice",
    SliceCallback,
    "Slice callback",
    "The slice was created (or, at the end of the trial, closed)."
);
callback_handler!(
    callback_cloudvnfboarding,
    "cloudvnfboarding",
    CloudVnfBoardingCallback,
    "Cloud VNF onboarding callback",
    "The cloud VNF branch: the VNF was onboarded."
);
callback_handler!(
    callback_cloudvnfdeployment,
    "cloudvnfdeployment",
    CloudVnfDeploymentCallback,
    "Cloud VNF deployment callback",
    "The cloud VNF branch: the VNF was deployed."
);
callback_handler!(
    callback_edgevnfonboarding,
    "edgevnfonboarding",
    EdgeVnfOnboardingCallback,
    "Edge VNF onboarding callback",
    "The edge VNF branch: the VNF was onboarded."
);
callback_handler!(
    callback_edgevnfdeployment,
    "edgevnfdeployment",
    EdgeVnfDeploymentCallback,
    "Edge VNF deployment callback",
    "The edge VNF branch: the VNF was deployed."
);

/// Turns the executor's answer into the API's.
fn signal_answer(
    id: &TrialId,
    signal: Signal,
    outcome: SignalOutcome,
) -> Result<Json<Message>, ApiError> {
    let message = match outcome {
        SignalOutcome::Accepted(next) => {
            let next = match next {
                Next::Step(step) => format!("next step {}", step.name()),
                Next::Wait(wait) => format!(
                    "next it waits for {}",
                    sequence::wait_spec(wait).waiting_for
                ),
                Next::End => "the trial's path ends".to_owned(),
            };
            format!("{} accepted for trial {id}; {next}", signal.name())
        }
        SignalOutcome::Held(step) => format!(
            "{} accepted for trial {id}; it takes effect when {} completes",
            signal.name(),
            step.name()
        ),
        SignalOutcome::KeptForRestore => format!(
            "{} kept for trial {id}: the trial has failed, and a restore takes it at its wait",
            signal.name()
        ),
        SignalOutcome::AlreadyRegistered => {
            format!("{} already registered for trial {id}", signal.name())
        }
        SignalOutcome::Refused(reason) => return Err(ApiError::conflict(reason)),
        SignalOutcome::Stopped => return Err(ApiError::unavailable(STOPPED)),
        SignalOutcome::NotSaved(why) => {
            return Err(ApiError::unavailable(format!(
                "{} for trial {id} could not be saved, so it was not taken: {why}",
                signal.name()
            )));
        }
        SignalOutcome::NotLive(lifecycle) => {
            return Err(ApiError::conflict(format!(
                "trial '{id}' does not take signals: its engine is {}",
                lifecycle.engine_status().name()
            )));
        }
    };
    Ok(Json(Message::new(message)))
}

async fn callback(
    CallbackToken {
        trial: id, engine, ..
    }: CallbackToken,
    signal: Signal,
) -> Result<Json<Message>, ApiError> {
    let engine = engine.ok_or_else(|| ApiError::no_engine(&id))?;
    let outcome = engine.callback(signal).await;
    signal_answer(&id, signal, outcome)
}

/// Turns the answer to an action into the API's: 200 with what was done, 409 with why it does
/// not fit now, or 503 when it could not be saved.
fn control_answer(outcome: ControlOutcome) -> Result<Json<Message>, ApiError> {
    outcome.map(|m| Json(Message::new(m))).map_err(|e| match e {
        ControlError::Refused(why) | ControlError::NotLive(why) => ApiError::conflict(why),
        ControlError::NotSaved(_) | ControlError::Stopped => ApiError::unavailable(e.to_string()),
    })
}

/// A component's progress report
///
/// While the executor waits for this component's callback, a heartbeat: it keeps the wait
/// alive under `executor.callback_heartbeat_secs`, and its `progress` and `message` show in
/// the trial's status and history. Optional JSON body `{"progress": 0-100, "message"}`.
#[utoipa::path(
    post,
    path = "/trial/{trial_id}/callback/progress",
    tag = "callbacks",
    security(("callback_token" = [])),
    params(TrialIdParam),
    request_body(content = Option<ProgressBody>, description = "Optional"),
    responses(
        (status = 200, description = "Progress recorded", body = Message),
        (status = 400, description = "Invalid trial id or malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing, invalid, expired or revoked token", body = ErrorBody),
        (status = 403, description = "A token of another trial, or of a finished or failed trial", body = ErrorBody),
        (status = 404, description = "The trial has no engine", body = ErrorBody),
        (status = 409, description = "The trial is not waiting for a component", body = ErrorBody),
        (status = 422, description = "A field out of range, too long, not one line, unknown or given twice", body = ErrorBody),
        (status = 503, description = "Not saved: the store cannot write (send it again)", body = ErrorBody),
    ),
)]
async fn callback_progress(
    CallbackToken {
        trial: id, engine, ..
    }: CallbackToken,
    OptionalJson(body): OptionalJson<ProgressBody>,
) -> Result<Json<Message>, ApiError> {
    // The token is the first extractor, as on every endpoint: a caller without one learns
    // nothing of the body.
    let body = body.unwrap_or_default();
    let progress = match body.progress {
        None => None,
        Some(p @ 0..=100) => Some(p as u8),
        Some(p) => {
            return Err(ApiError::new(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                format!("'progress' must be between 0 and 100, not {p}"),
            ));
        }
    };
    let message = checked_text("message", body.message)?;
    let engine = engine.ok_or_else(|| ApiError::no_engine(&id))?;
    control_answer(engine.progress(ProgressReport { progress, message }).await)
}

/// Abort the trial and clean up
///
/// From any live or failed state: a request in flight is cancelled (a deployment or a status
/// write to the repository has its answer first), then the clean-up path undoes exactly what
/// the trial deployed (KPI marking, measurement job, slice), writes
/// `executor.aborted_repository_status` to the trial repository and revokes the token; the
/// engine ends `Aborted`. A second abort while cleaning up answers "already aborting"; after
/// a clean-up that failed for good, abort again retries it. While a failed trial's failure is
/// reported, the abort is saved with it and answered at once; its clean-up starts once the
/// report is done. Optional body `{"reason"}`.
#[utoipa::path(
    post,
    path = "/trial/{trial_id}/abort",
    tag = "trials",
    security(("api_key" = [])),
    params(TrialIdParam),
    request_body(content = Option<Reason>, description = "Optional"),
    responses(
        (status = 200, description = "The clean-up starts, or is already running", body = Message),
        (status = 400, description = "Invalid trial id or malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "The trial has no engine", body = ErrorBody),
        (status = 409, description = "The trial has finished or was aborted", body = ErrorBody),
        (status = 503, description = "The change could not be saved; nothing was changed", body = ErrorBody),
        (status = 422, description = "An unknown field or one given twice, or a reason too long or not one line", body = ErrorBody),
    ),
)]
async fn abort(
    _: Operator,
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
    OptionalJson(body): OptionalJson<Reason>,
) -> Result<Json<Message>, ApiError> {
    let reason = checked_text("reason", body.unwrap_or_default().reason)?
        .unwrap_or_else(|| "aborted by the operator".to_owned());
    let engine = state.engine_to_act_on(&id).await?;
    control_answer(engine.control(Control::Abort { reason }).await)
}

/// Pause the trial
///
/// No new request starts until `resume`; a request in flight completes; callbacks are still
/// accepted and held; deadlines keep running. Saved at once, so it outlives a restart.
#[utoipa::path(
    post,
    path = "/trial/{trial_id}/pause",
    tag = "trials",
    security(("api_key" = [])),
    params(TrialIdParam),
    request_body(content = Option<Reason>, description = "Optional"),
    responses(
        (status = 200, description = "Paused (or already paused)", body = Message),
        (status = 400, description = "Invalid trial id or malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "The trial has no engine", body = ErrorBody),
        (status = 409, description = "The trial is not running (ended, failed, or cleaning up)", body = ErrorBody),
        (status = 503, description = "The change could not be saved; nothing was changed", body = ErrorBody),
        (status = 422, description = "An unknown field or one given twice, or a reason too long or not one line", body = ErrorBody),
    ),
)]
async fn pause(
    _: Operator,
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
    OptionalJson(body): OptionalJson<Reason>,
) -> Result<Json<Message>, ApiError> {
    let reason = checked_text("reason", body.unwrap_or_default().reason)?;
    let engine = state.engine_to_act_on(&id).await?;
    control_answer(engine.control(Control::Pause { reason }).await)
}

/// Resume a paused trial
#[utoipa::path(
    post,
    path = "/trial/{trial_id}/resume",
    tag = "trials",
    security(("api_key" = [])),
    params(TrialIdParam),
    request_body(content = Option<Reason>, description = "Optional"),
    responses(
        (status = 200, description = "Resumed (or was not paused)", body = Message),
        (status = 400, description = "Invalid trial id or malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "The trial has no engine", body = ErrorBody),
        (status = 409, description = "The trial is not running", body = ErrorBody),
        (status = 503, description = "The change could not be saved; nothing was changed", body = ErrorBody),
        (status = 422, description = "An unknown field or one given twice, or a reason too long or not one line", body = ErrorBody),
    ),
)]
async fn resume(
    _: Operator,
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
    OptionalJson(body): OptionalJson<Reason>,
) -> Result<Json<Message>, ApiError> {
    let reason = checked_text("reason", body.unwrap_or_default().reason)?;
    let engine = state.engine_to_act_on(&id).await?;
    control_answer(engine.control(Control::Resume { reason }).await)
}

/// Run exactly the next step of a paused trial
///
/// The trial stays paused after it. At a waiting point with no signal yet: 409.
#[utoipa::path(
    post,
    path = "/trial/{trial_id}/step",
    tag = "trials",
    security(("api_key" = [])),
    params(TrialIdParam),
    request_body(content = Option<Reason>, description = "Optional"),
    responses(
        (status = 200, description = "The next step runs", body = Message),
        (status = 400, description = "Invalid trial id or malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "The trial has no engine", body = ErrorBody),
        (status = 409, description = "Not paused, or waiting for a signal", body = ErrorBody),
        (status = 503, description = "The step could not be saved; it was not run", body = ErrorBody),
        (status = 422, description = "An unknown field or one given twice, or a reason too long or not one line", body = ErrorBody),
    ),
)]
async fn step(
    _: Operator,
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
    OptionalJson(body): OptionalJson<Reason>,
) -> Result<Json<Message>, ApiError> {
    let reason = checked_text("reason", body.unwrap_or_default().reason)?;
    let engine = state.engine_to_act_on(&id).await?;
    control_answer(engine.control(Control::Step { reason }).await)
}

/// Mark the trial's KPIs active
#[utoipa::path(
    post,
    path = "/trial/{trial_id}/active",
    tag = "trials",
    security(("api_key" = [])),
    params(TrialIdParam),
    responses(
        (status = 200, description = "Accepted, held until the running step completes, or already registered", body = Message),
        (status = 400, description = "Invalid trial id", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "The trial has no engine", body = ErrorBody),
        (status = 409, description = "The trial is not at a point where it can go active", body = ErrorBody),
        (status = 503, description = "The signal could not be saved, so it was not taken", body = ErrorBody),
    ),
)]
async fn active(
    _: Operator,
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
    _: NoBody,
) -> Result<Json<Message>, ApiError> {
    let outcome = state
        .engine_to_act_on(&id)
        .await?
        .signal(Signal::Active)
        .await;
    signal_answer(&id, Signal::Active, outcome)
}

/// Stop the trial
#[utoipa::path(
    post,
    path = "/trial/{trial_id}/finish",
    tag = "trials",
    security(("api_key" = [])),
    params(TrialIdParam),
    responses(
        (status = 200, description = "Accepted, held until the running step completes, or already registered", body = Message),
        (status = 400, description = "Invalid trial id", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "The trial has no engine", body = ErrorBody),
        (status = 409, description = "The trial is not at a point where it can finish", body = ErrorBody),
        (status = 503, description = "The signal could not be saved, so it was not taken", body = ErrorBody),
    ),
)]
async fn finish(
    _: Operator,
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
    _: NoBody,
) -> Result<Json<Message>, ApiError> {
    let outcome = state
        .engine_to_act_on(&id)
        .await?
        .signal(Signal::Finish)
        .await;
    signal_answer(&id, Signal::Finish, outcome)
}

/// The trial's status
///
/// `{"message": "Status: <status> State: <state>", "status", "state", "step", "waiting_for",
/// "kpi_status", "failed", "finished", "aborted", "engine_status", "failure", "restorable",
/// "cleanup_failed", "leftovers", "aborting", "abort_reason", "paused", "progress",
/// "progress_message", "created_at", "updated_at", "ended_at"}`. The same once the engine
/// has left memory: the store answers then.
#[utoipa::path(
    get,
    path = "/trial/{trial_id}/status",
    tag = "trials",
    security(("api_key" = [])),
    params(TrialIdParam),
    responses(
        (status = 200, description = "The trial's status", body = StatusAnswer),
        (status = 400, description = "Invalid trial id", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "The trial has no engine", body = ErrorBody),
    ),
)]
async fn status(
    _: Viewer,
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
) -> Result<Json<StatusAnswer>, ApiError> {
    Ok(Json(match state.find_trial(&id).await? {
        Found::Engine(engine) => StatusAnswer::Trial(view::status(&engine.snapshot())),
        Found::Stored(record) => StatusAnswer::Trial(view::status(&view::snapshot_of(&record))),
        Found::Corrupt(reason) => StatusAnswer::Corrupt(view::corrupt_status(&reason)),
    }))
}

/// Every response the trial's engine recorded
///
/// `{"trial_id", "responses": [...]}`, every attempt in the order received (`attempt` counts
/// the tries of one request).
#[utoipa::path(
    get,
    path = "/trial/{trial_id}/responses",
    tag = "trials",
    security(("api_key" = [])),
    params(TrialIdParam),
    responses(
        (status = 200, description = "The recorded responses", body = TrialResponses),
        (status = 400, description = "Invalid trial id", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "The trial has no engine", body = ErrorBody),
    ),
)]
async fn responses(
    _: Viewer,
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
) -> Result<Json<TrialResponses>, ApiError> {
    let found = state.find_trial(&id).await?;
    let responses = state.responses(&found, &id).await?;
    Ok(Json(TrialResponses {
        trial_id: id,
        responses,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The callback kinds of SPEC §5, as path segments.
    const CALLBACK_KINDS: [&str; 5] = [
        "slice",
        "cloudvnfboarding",
        "cloudvnfdeployment",
        "edgevnfonboarding",
        "edgevnfdeployment",
    ];

    #[test]
    fn every_callback_kind_is_routed() {
        let openapi = routes().into_openapi();
        let mut routed: Vec<&str> = openapi
            .paths
            .paths
            .keys()
            .filter_map(|p| p.strip_prefix("/trial/{trial_id}/callback/"))
            .filter(|kind| *kind != "progress")
            .collect();
        routed.sort_unstable();
        let mut kinds = CALLBACK_KINDS.to_vec();
        kinds.sort_unstable();
        assert_eq!(routed, kinds);
    }
}
