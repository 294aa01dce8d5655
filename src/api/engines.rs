//! The engines' debug endpoints: restore from backup, stop and remove (SPEC §4.3).

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use tracing::info;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ErrorBody};
use super::extract::{Admin, TrialIdParam, TrialPath};
use super::{AppState, Message};
use crate::engine::watchdog::RestoreError;

/// The routes of this area.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(restore))
        .routes(routes!(remove))
}

/// Restore a failed engine from its backup
///
/// The executor resumes from its last checkpoint. The answer has a `message` and the trial's
/// `state`.
#[utoipa::path(
    post,
    path = "/debug/engine/{trial_id}/restore",
    tag = "engines",
    security(("api_key" = [])),
    params(TrialIdParam),
    responses(
        (status = 200, description = "Restored", body = Object),
        (status = 400, description = "Invalid trial id", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "The trial has no engine", body = ErrorBody),
        (status = 409, description = "The engine is running or finished", body = ErrorBody),
        (status = 503, description = "The restore could not be saved, so it was not made", body = ErrorBody),
    ),
)]
async fn restore(
    _: Admin,
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
) -> Result<Json<Value>, ApiError> {
    let engine = state.engine(&id)?;
    match engine.restore().await {
        Ok(()) => {
            let snapshot = engine.snapshot();
            info!(trial = %id, state = snapshot.state(), "engine restored");
            Ok(Json(json!({
                "message": format!("Engine of trial {id} restored from its backup"),
                "state": snapshot.state(),
            })))
        }
        Err(e @ (RestoreError::Running | RestoreError::Finished | RestoreError::Reporting)) => {
            Err(ApiError::conflict(e.to_string()))
        }
        Err(e @ RestoreError::Gone) => Err(ApiError::not_found(e.to_string())),
        Err(e @ RestoreError::NotSaved(_)) => Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        )),
    }
}

/// Stop and remove an engine
#[utoipa::path(
    delete,
    path = "/debug/engine/{trial_id}",
    tag = "engines",
    security(("api_key" = [])),
    params(TrialIdParam),
    responses(
        (status = 200, description = "Engine stopped and removed", body = Message),
        (status = 400, description = "Invalid trial id", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "The trial has no engine", body = ErrorBody),
        (status = 503, description = "The removal could not be saved, so it was not made", body = ErrorBody),
    ),
)]
async fn remove(
    _: Admin,
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
) -> Result<Json<Message>, ApiError> {
    let deleted = state.scheduler.delete_engine(&id).await.map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("the engine is stopped, but its removal was not saved ({e}); delete it again"),
        )
    })?;
    match deleted {
        true => {
            info!(trial = %id, "engine stopped and removed");
            Ok(Json(Message::new(format!(
                "Engine of trial {id} stopped and removed"
            ))))
        }
        false => Err(ApiError::no_engine(&id)),
    }
}
