//! `POST/GET/DELETE /token/{id}` and the token check shared with the callbacks (SPEC §6).

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Serialize;
use tracing::info;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::audit::{AuditCx, Audited};
use super::error::{ApiError, ErrorBody};
use super::extract::{
    Admin, CallbackToken, NoBody, TokenOfLiveOrFailed, TrialIdParam, TrialPath, not_a_secret,
};
use super::view::Found;
use super::{AppState, Message};
use crate::domain::TrialId;
use crate::engine::EngineHandle;
use crate::engine::state::EngineStatus;
use crate::tokens::{Claims, TokenError};

/// The routes of this area.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(mint, verify, revoke))
}

/// A minted token.
#[derive(Serialize, ToSchema)]
struct Minted {
    /// The callback token, a JWT, to present in the `Authorization` header.
    #[serde(rename = "Authorization")]
    authorization: String,
}

/// Verifies a presented token for `id`: signature, expiry, trial, revocation, and that the
/// trial's engine, in memory or only in the store once it has left memory, has not ended nor
/// (unless `failed` is taken) failed, and began (was scheduled) before the token was minted. A trial with no engine
/// at all gives `None`: the caller decides (a callback or a check answers 404, a revocation
/// goes ahead).
pub async fn check_token(
    state: &AppState,
    id: &TrialId,
    token: &str,
    failed: bool,
) -> Result<(Claims, Option<EngineHandle>), ApiError> {
    let verified = state.tokens.verify(token, id, |claims| {
        held_by_live_engine(state, claims, token)
    });
    let claims = match verified {
        Ok(claims) => claims,
        // The token a trial handed out is revoked at its end: a component calling back then
        // is told the trial has ended (403), as with any other token of an ended trial.
        Err(TokenError::Revoked) => {
            let ended = match state.find_trial(id).await {
                Ok(Found::Engine(engine)) => Some(engine.snapshot().engine_status()),
                Ok(Found::Stored(record)) => Some(record.lifecycle.engine_status()),
                Ok(Found::Corrupt(_)) | Err(_) => None,
            };
            if let Some(status @ (EngineStatus::Finished | EngineStatus::Aborted)) = ended {
                accepting(id, status)?;
            }
            return Err(TokenError::Revoked.into());
        }
        Err(e) => return Err(e.into()),
    };
    match state.find_trial(id).await {
        Ok(Found::Engine(engine)) => {
            let (status, started) = {
                let shown = engine.snapshot();
                (shown.engine_status(), shown.created_at)
            };
            if !(failed && status == EngineStatus::Failed) {
                accepting(id, status)?;
            }
            // A token minted for an earlier run of the trial (deleted, then scheduled again)
            // does not speak for this one: this run's tokens were all minted after it began,
            // and the one its engine holds is this run's whatever the clock said then.
            if claims.issued_before(started) && engine.token().as_deref() != Some(token) {
                return Err(ApiError::forbidden(format!(
                    "the token was issued before this run of trial '{id}' began ({started}): a token of an earlier run is not accepted"
                )));
            }
            Ok((claims, Some(engine)))
        }
        Ok(Found::Stored(record)) => {
            accepting(id, record.lifecycle.engine_status())?;
            Ok((claims, None))
        }
        Ok(Found::Corrupt(reason)) => Err(ApiError::forbidden(format!(
            "trial '{id}' has a record that cannot be read ({reason}); its token is not accepted"
        ))),
        Err(e) if e.status == StatusCode::NOT_FOUND => Ok((claims, None)),
        Err(e) => Err(e),
    }
}

/// Whether `token`, expired, is the one the engine of its trial handed out and holds, the
/// trial not ended: a token speaks for its trial for as long as the trial lives, so a trial
/// kept at a wait longer than `auth.token_ttl_secs` still hears its components.
pub fn held_by_live_engine(state: &AppState, claims: &Claims, token: &str) -> bool {
    TrialId::parse(&claims.trial_id)
        .ok()
        .and_then(|id| state.scheduler.engines().get(&id))
        .is_some_and(|engine| {
            !engine.snapshot().lifecycle().is_ended() && engine.token().as_deref() == Some(token)
        })
}

/// Refuses the token of a trial whose engine has ended (403), the same whether the engine is
/// in memory or its record is all that is left.
fn accepting(id: &TrialId, status: EngineStatus) -> Result<(), ApiError> {
    match status {
        EngineStatus::Finished => Err(ApiError::forbidden(format!(
            "trial '{id}' has finished; its token is no longer accepted"
        ))),
        EngineStatus::Aborted => Err(ApiError::forbidden(format!(
            "trial '{id}' has been aborted; its token is no longer accepted"
        ))),
        EngineStatus::Failed => Err(ApiError::forbidden(format!(
            "trial '{id}' has failed; its token is not accepted until the engine is restored"
        ))),
        EngineStatus::Active | EngineStatus::Stopped => Ok(()),
    }
}

/// Mint a callback token for a trial
#[utoipa::path(
    post,
    path = "/token/{trial_id}",
    tag = "tokens",
    security(("api_key" = [])),
    params(TrialIdParam),
    responses(
        (status = 200, description = "The token", body = Minted),
        (status = 400, description = "Invalid trial id, or one that is a key or a secret", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
    ),
)]
async fn mint(
    Admin(admin): Admin,
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
    _: NoBody,
) -> Result<Json<Minted>, ApiError> {
    not_a_secret(&state, &id)?;
    let token = state
        .tokens
        .mint(&id)
        .map_err(|e| ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    info!(trial = %id, by = %admin.name, "callback token minted");
    Ok(Json(Minted {
        authorization: token,
    }))
}

/// Check a callback token
///
/// `{"message": "Success"}` if the presented token is valid for this trial.
#[utoipa::path(
    get,
    path = "/token/{trial_id}",
    tag = "tokens",
    security(("callback_token" = [])),
    params(TrialIdParam),
    responses(
        (status = 200, description = "The token is valid for this trial", body = Message),
        (status = 400, description = "Invalid trial id", body = ErrorBody),
        (status = 401, description = "Missing, invalid, expired or revoked token", body = ErrorBody),
        (status = 403, description = "A token of another trial, or of a finished or failed trial", body = ErrorBody),
        (status = 404, description = "The trial has no engine", body = ErrorBody),
    ),
)]
async fn verify(
    CallbackToken { trial, engine, .. }: CallbackToken,
) -> Result<Json<Message>, ApiError> {
    match engine {
        Some(_) => Ok(Json(Message::new("Success"))),
        None => Err(ApiError::no_engine(&trial)),
    }
}

/// Revoke a callback token
///
/// The presented token is refused everywhere afterwards. A failed trial's token can be
/// revoked too: its components' callbacks are still taken, for the restore.
#[utoipa::path(
    delete,
    path = "/token/{trial_id}",
    tag = "tokens",
    security(("callback_token" = [])),
    params(TrialIdParam),
    responses(
        (status = 200, description = "Token revoked", body = Message),
        (status = 400, description = "Invalid trial id", body = ErrorBody),
        (status = 401, description = "Missing, invalid, expired or revoked token", body = ErrorBody),
        (status = 403, description = "A token of another trial, or of a finished or aborted trial", body = ErrorBody),
        (status = 503, description = "The revocation could not be saved, so it was not made", body = ErrorBody),
    ),
)]
async fn revoke(
    State(state): State<AppState>,
    audit: AuditCx,
    TokenOfLiveOrFailed(CallbackToken {
        trial: id,
        claims,
        engine,
    }): TokenOfLiveOrFailed,
) -> Result<(Extension<Audited>, Json<Message>), ApiError> {
    let message = "Token revoked";
    let entry = audit.entry(StatusCode::OK, Some(message.to_owned()));
    // The token a live trial's engine holds outlives its expiry (see `held_by_live_engine`),
    // so it is revoked for as long as the trial lives: the trial's end revokes it again, up to
    // its expiry. Any other token is refused as expired after its expiry anyway.
    let held = (engine.and_then(|engine| engine.token()))
        .is_some_and(|token| state.tokens.has_id(&token, &claims.jti));
    let until = if held { i64::MAX } else { claims.exp };
    state
        .tokens
        .revoke_id(&claims.jti, until, Some(entry))
        .await
        .map_err(ApiError::from)?;
    info!(trial = %id, jti = %claims.jti, "callback token revoked");
    Ok((Extension(Audited), Json(Message::new(message))))
}
