//! The platform's endpoints of a running trial: component callbacks (token), the operator's
//! `active` and `finish` (API key), and the trial's status and recorded responses.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiKey, PresentedToken, TrialPath};
use super::tokens::check_token;
use crate::domain::TrialId;
use crate::engine::EngineHandle;
use crate::engine::executor::SignalOutcome;
use crate::engine::sequence::{self, Signal};
use crate::engine::state::{EngineStatus, ExecutorStatus, Position};

/// The callback kinds, as path segments.
pub const CALLBACK_KINDS: [&str; 5] = [
    "slice",
    "cloudvnfboarding",
    "cloudvnfdeployment",
    "edgevnfonboarding",
    "edgevnfdeployment",
];

/// The routes of this area.
pub fn routes() -> Router<AppState> {
    let mut router = Router::new()
        .route("/trial/{trial_id}/active", post(active))
        .route("/trial/{trial_id}/finish", post(finish))
        .route("/trial/{trial_id}/status", get(status))
        .route("/trial/{trial_id}/responses", get(responses));
    for kind in CALLBACK_KINDS {
        let Some(signal) = Signal::from_callback_kind(kind) else {
            continue;
        };
        router = router.route(
            &format!("/trial/{{trial_id}}/callback/{kind}"),
            post(move |state, path, token| callback(state, path, token, signal)),
        );
    }
    router
}

fn engine_of(state: &AppState, id: &TrialId) -> Result<EngineHandle, ApiError> {
    state
        .scheduler
        .engines()
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("trial '{id}' has no engine")))
}

/// Turns the executor's answer into the API's.
fn signal_answer(
    id: &TrialId,
    signal: Signal,
    outcome: SignalOutcome,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({"message": message})))
}

async fn callback(
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
    PresentedToken(token): PresentedToken,
    signal: Signal,
) -> Result<Json<Value>, ApiError> {
    let (_, engine) = check_token(&state, &id, &token)?;
    let engine =
        engine.ok_or_else(|| ApiError::not_found(format!("trial '{id}' has no engine")))?;
    let outcome = engine.signal(signal).await;
    signal_answer(&id, signal, outcome)
}

async fn active(
    _: ApiKey,
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
) -> Result<Json<Value>, ApiError> {
    let outcome = engine_of(&state, &id)?.signal(Signal::Active).await;
    signal_answer(&id, Signal::Active, outcome)
}

async fn finish(
    _: ApiKey,
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
) -> Result<Json<Value>, ApiError> {
    let outcome = engine_of(&state, &id)?.signal(Signal::Finish).await;
    signal_answer(&id, Signal::Finish, outcome)
}

async fn status(
    _: ApiKey,
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
) -> Result<Json<Value>, ApiError> {
    let snapshot = engine_of(&state, &id)?.snapshot();
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
        "restorable": snapshot.engine == EngineStatus::Failed,
    })))
}

async fn responses(
    _: ApiKey,
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
) -> Result<Json<Value>, ApiError> {
    let snapshot = engine_of(&state, &id)?.snapshot();
    Ok(Json(json!({
        "trial_id": id,
        "responses": *snapshot.responses,
    })))
}
