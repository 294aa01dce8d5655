//! The engines' debug endpoints: restore from the checkpoint, skip a failed step, stop and
//! remove (SPEC §4.3, §14).

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::audit::{AuditCx, Audited};
use super::error::{ApiError, ErrorBody};
use super::extract::{Admin, NoBody, OptionalJson, TrialIdParam, TrialPath};
use super::trials::checked_text;
use super::{AppState, Message};
use crate::domain::TrialId;
use crate::engine::state;
use crate::engine::watchdog::RestoreError;
use crate::scheduler::{Deleted, Undo};

/// The routes of this area.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(restore))
        .routes(routes!(skip))
        .routes(routes!(remove))
}

/// Body of a skip: why (required).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SkipBody {
    /// Why the failed step may be left out (one line, at most 500 characters); kept in the history.
    #[schema(example = "flight plan enforced by hand on the facility")]
    reason: String,
}

/// The answer of a restore.
#[derive(Debug, Serialize, ToSchema)]
struct Restored {
    /// What was done, in words.
    #[schema(example = "Engine of trial trial-42 restored from its backup")]
    message: String,
    /// Where the new executor starts: the step it runs again, or `Waiting` at the wait it
    /// resumes.
    #[schema(example = "SliceDeployment")]
    state: String,
}

fn restore_error(e: RestoreError) -> ApiError {
    match e {
        RestoreError::Running
        | RestoreError::Ended(_)
        | RestoreError::Reporting
        | RestoreError::CleanupFailed
        | RestoreError::AbortAsked
        | RestoreError::NotSkippable(_) => ApiError::conflict(e.to_string()),
        RestoreError::Stopped | RestoreError::NotSaved(_) => ApiError::unavailable(e.to_string()),
    }
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
        (status = 200, description = "Restored", body = Restored),
        (status = 400, description = "Invalid trial id", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "The trial has no engine", body = ErrorBody),
        (status = 409, description = "The engine is running, ended, still reporting its failure, aborting (an abort was asked for while it reported), or its clean-up failed (abort retries it)", body = ErrorBody),
        (status = 503, description = "The restore could not be saved, so it was not made, or the engine stopped before it answered", body = ErrorBody),
    ),
)]
async fn restore(
    _: Admin,
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
    _: NoBody,
) -> Result<Json<Restored>, ApiError> {
    let engine = state.engine_to_act_on(&id).await?;
    let at = engine.restore().await.map_err(restore_error)?;
    info!(trial = %id, state = %at, "engine restored");
    Ok(Json(Restored {
        message: format!("Engine of trial {id} restored from its backup"),
        state: at,
    }))
}

/// Skip the step a failed trial stopped at
///
/// Marks the failed step done without running it and goes on with the next (a failed wait for
/// a component's callback counts as received). Refused for the steps whose output later steps
/// need (`GetCallbackToken`, `GetTrialInfo`, `SliceDeployment`, `CreateMeasurementJob`) and
/// for the operator's waits. Body `{"reason"}`, required; kept in the history.
#[utoipa::path(
    post,
    path = "/debug/engine/{trial_id}/skip",
    tag = "engines",
    security(("api_key" = [])),
    params(TrialIdParam),
    request_body = SkipBody,
    responses(
        (status = 200, description = "Skipped; the trial goes on", body = Message),
        (status = 400, description = "Invalid trial id or malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "The trial has no engine", body = ErrorBody),
        (status = 409, description = "Not failed, or the step cannot be skipped (the detail says what later steps need)", body = ErrorBody),
        (status = 422, description = "No reason, an empty one, one too long or not one line, or an unknown field or one given twice", body = ErrorBody),
        (status = 503, description = "The skip could not be saved, so it was not made", body = ErrorBody),
    ),
)]
async fn skip(
    _: Admin,
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
    OptionalJson(body): OptionalJson<SkipBody>,
) -> Result<Json<Message>, ApiError> {
    // No body at all is no reason, as an empty one is.
    let reason = checked_text("reason", body.map(|b| b.reason))?.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "'reason' must say why the step may be left out",
        )
    })?;
    let engine = state.engine_to_act_on(&id).await?;
    let done = engine.skip(reason).await.map_err(restore_error)?;
    info!(trial = %id, "{done}");
    Ok(Json(Message::new(done)))
}

/// Stop and remove an engine
#[utoipa::path(
    delete,
    path = "/debug/engine/{trial_id}",
    tag = "engines",
    security(("api_key" = [])),
    params(
        TrialIdParam,
        ("force" = Option<bool>, Query, description = "Remove the engine of a trial that may still have a slice or a measurement job deployed, and leave them there (to be closed on the facility by hand): without it, such a delete is refused"),
    ),
    responses(
        (status = 200, description = "Engine stopped and removed (with `force`, the message names what was left deployed)", body = Message),
        (status = 400, description = "Invalid trial id, or a query parameter other than `force=true|false`", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "The trial has no engine (or another delete of it is under way)", body = ErrorBody),
        (status = 409, description = "The trial may still have a slice or a measurement job deployed (or its record, set aside as Corrupt, cannot say): abort it first, or delete with `force=true`", body = ErrorBody),
        (status = 503, description = "The removal could not be saved, so it was not made", body = ErrorBody),
    ),
)]
async fn remove(
    _: Admin,
    audit: AuditCx,
    State(state): State<AppState>,
    TrialPath(id): TrialPath,
    Query(pairs): Query<Vec<(String, String)>>,
    _: NoBody,
) -> Result<Response, ApiError> {
    let force = force(&pairs)?;
    let message = format!("Engine of trial {id} stopped and removed");
    let entry = audit.entry(StatusCode::OK, Some(message.clone()));
    let deleted = (state.scheduler)
        .delete_engine(&id, Some(entry), force)
        .await?;
    // A refusal is logged by the audit, which hides an id that is a key or a secret.
    let (left, removed, audited) = match deleted {
        Deleted::Engine { left } => (left, "engine stopped and removed", true),
        Deleted::Record {
            left,
            set_aside: false,
        } => (left, "record of an ended trial removed", false),
        Deleted::Record {
            left,
            set_aside: true,
        } => (left, "record set aside as Corrupt removed", false),
        Deleted::Deployed(undo) => return Err(deployed(&id, undo)),
        Deleted::Nothing => return Err(ApiError::no_engine(&id)),
    };
    // A trial forgotten takes its heartbeat instance with it.
    state.heartbeats.remove(&id);
    let message = match left.is_empty() {
        true => {
            info!(trial = %id, "{removed}");
            message
        }
        false => {
            let named = state::named(&left);
            warn!(trial = %id, left = %named, "{removed} with what it deployed left on the facility: close it there by hand");
            format!("{message}; {}", state::left_deployed(&left))
        }
    };
    let answer = Json(Message::new(message));
    // An engine's removal is audited with the change; a record's, by the answer.
    Ok(match audited {
        true => (Extension(Audited), answer).into_response(),
        false => answer.into_response(),
    })
}

/// The refusal of a delete over what trial `id` may still have deployed, saying what undoes it.
fn deployed(id: &TrialId, undo: Undo) -> ApiError {
    let undo = match undo {
        Undo::ByHand => "the trial has ended, and nothing of this service undoes them now: close them on the facility by hand, then delete it with ?force=true".to_owned(),
        Undo::CleanUp => format!(
            "its clean-up is under way and undoes them: wait for it to end (GET /trial/{id}/status), or delete it with ?force=true to leave them there"
        ),
        Undo::Unreadable => format!(
            "its record cannot be read (it was set aside as Corrupt), so what is left of them is unknown: its recorded responses (GET /trial/{id}/responses) show what it deployed and closed; close what is left on the facility by hand, then delete it with ?force=true"
        ),
        Undo::Abort => format!(
            "abort it first (POST /trial/{id}/abort undoes them), or delete it with ?force=true to leave them there"
        ),
    };
    ApiError::new(
        StatusCode::CONFLICT,
        format!(
            "trial {id} may still have a slice or a measurement job deployed on the facility, and its records are the only ones of them: {undo}"
        ),
    )
}

/// The `force` query parameter of a delete: `true` or `false`, at most once, alone.
fn force(pairs: &[(String, String)]) -> Result<bool, ApiError> {
    super::paging::once_each(pairs, &[])?;
    let mut force = false;
    for (key, value) in pairs {
        force = match (key.as_str(), value.as_str()) {
            ("force", "true") => true,
            ("force", "false") => false,
            ("force", other) => {
                return Err(ApiError::bad_request(format!(
                    "force must be true or false, not '{other}'"
                )));
            }
            (other, _) => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter '{other}': use force"
                )));
            }
        };
    }
    Ok(force)
}
