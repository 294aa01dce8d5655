//! The platform's endpoints of a running trial: component callbacks (token), the operator's
//! `active` and `finish` (API key), and the trial's status and recorded responses.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ErrorBody};
use super::extract::{CallbackToken, Operator, TrialIdParam, TrialPath, Viewer};
use super::{AppState, Message};
use crate::domain::TrialId;
use crate::engine::executor::SignalOutcome;
use crate::engine::sequence::{self, Signal};
use crate::engine::state::{ExecutorStatus, Position};

/// The callback kinds, as path segments.
pub const CALLBACK_KINDS: [&str; 5] = [
    "slice",
    "cloudvnfboarding",
    "cloudvnfdeployment",
    "edgevnfonboarding",
    "edgevnfdeployment",
];

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
}

/// Defines the handler of one callback kind, routed and documented as its own path (so an
/// unknown kind stays the router's 404 and each kind has its own page in the document); a
/// macro so the five share one description. A test checks they are exactly [`CALLBACK_KINDS`].
macro_rules! callback_handler {
    ($handler:ident, $kind:literal, $summary:literal, $what:literal) => {
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
                (status = 403, description = "A token of another trial, or of a finished or failed trial", body = ErrorBody),
                (status = 404, description = "The trial has no engine", body = ErrorBody),
                (status = 409, description = "The trial is not waiting for this callback", body = ErrorBody),
            ),
        )]
        async fn $handler(token: CallbackToken) -> Result<Json<Message>, ApiError> {
            callback(token, $kind).await
        }
    };
}

callback_handler!(
    callback_slice,
    "slice",
    "Slice callback",
    "The slice was created (or, at the end of the trial, closed)."
);
callback_handler!(
    callback_cloudvnfboarding,
    "cloudvnfboarding",
    "Cloud VNF onboarding callback",
    "The cloud VNF branch: the VNF was onboarded."
);
callback_handler!(
    callback_cloudvnfdeployment,
    "cloudvnfdeployment",
    "Cloud VNF deployment callback",
    "The cloud VNF branch: the VNF was deployed."
);
callback_handler!(
    callback_edgevnfonboarding,
    "edgevnfonboarding",
    "Edge VNF onboarding callback",
    "The edge VNF branch: the VNF was onboarded."
);
callback_handler!(
    callback_edgevnfdeployment,
    "edgevnfdeployment",
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
            format!(
                "{} accepted for trial {id}; next step {}",
                signal.name(),
                next.name()
            )
        }
        SignalOutcome::Held(step) => format!(
            "{} accepted for trial {id}; it takes effect when {} completes",
            signal.name(),
            step.name()
        ),
        SignalOutcome::AlreadyRegistered => {
            format!("{} already registered for trial {id}", signal.name())
        }
        SignalOutcome::Refused(reason) => return Err(ApiError::conflict(reason)),
        SignalOutcome::NotLive(status) => {
            return Err(ApiError::conflict(format!(
                "trial '{id}' does not take signals: its engine is {status:?}"
            )));
        }
    };
    Ok(Json(Message::new(message)))
}

async fn callback(
    CallbackToken {
        trial: id, engine, ..
    }: CallbackToken,
    kind: &str,
) -> Result<Json<Message>, ApiError> {
    let signal = Signal::from_callback_kind(kind).ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("callback kind '{kind}' has no signal"),
        )
    })?;
    let engine = engine.ok_or_else(|| ApiError::no_engine(&id))?;
    let outcome = engine.signal(signal).await;
    signal_answer(&id, signal, outcome)
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
    ),
)]
async fn active(
    _: Operator,
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
) -> Result<Json<Message>, ApiError> {
    let outcome = state.engine(&id)?.signal(Signal::Active).await;
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
    ),
)]
async fn finish(
    _: Operator,
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
) -> Result<Json<Message>, ApiError> {
    let outcome = state.engine(&id)?.signal(Signal::Finish).await;
    signal_answer(&id, Signal::Finish, outcome)
}

/// The trial's status
///
/// `{"message": "Status: <status> State: <state>", "status", "state", "step", "waiting_for",
/// "kpi_status", "failed", "finished", "engine_status", "failure", "restorable"}`.
#[utoipa::path(
    get,
    path = "/trial/{trial_id}/status",
    tag = "trials",
    security(("api_key" = [])),
    params(TrialIdParam),
    responses(
        (status = 200, description = "The trial's status", body = Object),
        (status = 400, description = "Invalid trial id", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "The trial has no engine", body = ErrorBody),
    ),
)]
async fn status(
    _: Viewer,
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
) -> Result<Json<Value>, ApiError> {
    let snapshot = state.engine(&id)?.snapshot();
    let waiting_for = match snapshot.position {
        Position::Wait(wait) => Some(sequence::wait_spec(wait).waiting_for),
        Position::Run(_) => None,
    };
    let step = match snapshot.position {
        Position::Run(step) => Some(step.name()),
        Position::Wait(_) => None,
    };
    let status = snapshot.executor;
    Ok(Json(json!({
        "message": format!("Status: {status:?} State: {}", snapshot.state()),
        "status": status,
        "state": snapshot.state(),
        "step": step,
        "waiting_for": waiting_for,
        "kpi_status": snapshot.kpi_status,
        "failed": status == ExecutorStatus::Failed,
        "finished": status == ExecutorStatus::Finished,
        "engine_status": snapshot.engine,
        "failure": snapshot.failure,
        "restorable": snapshot.restorable,
    })))
}

/// Every response the trial's engine recorded
///
/// `{"trial_id", "responses": [...]}`, in the order they were received.
#[utoipa::path(
    get,
    path = "/trial/{trial_id}/responses",
    tag = "trials",
    security(("api_key" = [])),
    params(TrialIdParam),
    responses(
        (status = 200, description = "The recorded responses", body = Object),
        (status = 400, description = "Invalid trial id", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "The trial has no engine", body = ErrorBody),
    ),
)]
async fn responses(
    _: Viewer,
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
) -> Result<Json<Value>, ApiError> {
    let snapshot = state.engine(&id)?.snapshot();
    Ok(Json(json!({
        "trial_id": id,
        "responses": *snapshot.responses,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_callback_kind_is_routed_and_has_a_signal() {
        let openapi = routes().into_openapi();
        let mut routed: Vec<&str> = openapi
            .paths
            .paths
            .keys()
            .filter_map(|p| p.strip_prefix("/trial/{trial_id}/callback/"))
            .collect();
        routed.sort_unstable();
        let mut kinds = CALLBACK_KINDS.to_vec();
        kinds.sort_unstable();
        assert_eq!(routed, kinds);
        for kind in CALLBACK_KINDS {
            assert!(Signal::from_callback_kind(kind).is_some(), "{kind}");
        }
    }
}
