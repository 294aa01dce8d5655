//! `POST/GET/DELETE /token/{id}` and the token check shared with the callbacks (SPEC §6).

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};
use tracing::info;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiKey, PresentedToken, TrialPath};
use crate::domain::TrialId;
use crate::engine::EngineHandle;
use crate::engine::state::EngineStatus;
use crate::tokens::Claims;

/// The routes of this area.
pub fn routes() -> Router<AppState> {
    Router::new().route("/token/{trial_id}", post(mint).get(verify).delete(revoke))
}

/// Verifies a presented token for `id`: signature, expiry, trial, revocation, and that the
/// trial's engine (if it has one) is neither finished nor failed.
pub fn check_token(
    state: &AppState,
    id: &TrialId,
    token: &str,
) -> Result<(Claims, Option<EngineHandle>), ApiError> {
    let claims = state.tokens.verify(token, id)?;
    let engine = state.scheduler.engines().get(id);
    if let Some(engine) = &engine {
        match engine.snapshot().engine {
            EngineStatus::Finished => {
                return Err(ApiError::forbidden(format!(
                    "trial '{id}' has finished; its token is no longer accepted"
                )));
            }
            EngineStatus::Failed => {
                return Err(ApiError::forbidden(format!(
                    "trial '{id}' has failed; its token is not accepted until the engine is restored"
                )));
            }
            EngineStatus::Active | EngineStatus::Stopped => {}
        }
    }
    Ok((claims, engine))
}

async fn mint(
    _: ApiKey,
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
) -> Result<Json<Value>, ApiError> {
    let token = state
        .tokens
        .mint(&id)
        .map_err(|e| ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    info!(trial = %id, "callback token minted");
    Ok(Json(json!({"Authorization": token})))
}

async fn verify(
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
    PresentedToken(token): PresentedToken,
) -> Result<Json<Value>, ApiError> {
    check_token(&state, &id, &token)?;
    Ok(Json(json!({"message": "Success"})))
}

async fn revoke(
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
    PresentedToken(token): PresentedToken,
) -> Result<Json<Value>, ApiError> {
    let (claims, _) = check_token(&state, &id, &token)?;
    state
        .tokens
        .revoke_id(&claims.jti, claims.exp)
        .await
        .map_err(ApiError::from)?;
    info!(trial = %id, jti = %claims.jti, "callback token revoked");
    Ok(Json(json!({"message": "Token revoked"})))
}
