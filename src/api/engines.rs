//! The engines' debug endpoints: restore from backup, stop and remove (SPEC §4.3).

use axum::extract::State;
use axum::routing::{delete, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use tracing::info;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiKey, TrialPath};
use crate::engine::watchdog::RestoreError;

/// The routes of this area.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/debug/engine/{trial_id}/restore", post(restore))
        .route("/debug/engine/{trial_id}", delete(remove))
}

async fn restore(
    _: ApiKey,
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
) -> Result<Json<Value>, ApiError> {
    let engine = state
        .scheduler
        .engines()
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("trial '{id}' has no engine")))?;
    match engine.restore().await {
        Ok(()) => {
            let snapshot = engine.snapshot();
            info!(trial = %id, state = snapshot.state(), "engine restored");
            Ok(Json(json!({
                "message": format!("Engine of trial {id} restored from its backup"),
                "state": snapshot.state(),
            })))
        }
        Err(e @ (RestoreError::Running | RestoreError::Finished)) => {
            Err(ApiError::conflict(e.to_string()))
        }
        Err(e @ RestoreError::Gone) => Err(ApiError::not_found(e.to_string())),
        Err(e @ RestoreError::NotSaved(_)) => Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        )),
    }
}

async fn remove(
    _: ApiKey,
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
) -> Result<Json<Value>, ApiError> {
    match state.scheduler.delete_engine(&id).await? {
        true => {
            info!(trial = %id, "engine stopped and removed");
            Ok(Json(
                json!({"message": format!("Engine of trial {id} stopped and removed")}),
            ))
        }
        false => Err(ApiError::not_found(format!("trial '{id}' has no engine"))),
    }
}
