//! What a person can do from the console, and how it is done: every action is sent through
//! the REST API's own handler, in-process, as the session's key holder. So the role a route
//! needs, the checks it makes, its answer and its audit entry (with the key's name) are the
//! API's; the console adds the confirmation and shows the answer.
//!
//! Which buttons a page shows follows the role of the API extractor each action's route
//! declares ([`TrialAction::role`]); a button shown by mistake would still be refused by the
//! API (a test checks the two agree).

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde_json::{Value, json};
use tower::ServiceExt as _;

use super::layout::{self, Section};
use super::session::{Post, Signed};
use crate::api::AppState;
use crate::api::audit::{Audited, said};
use crate::api::extract::{Admin, Operator};
use crate::config::Role;
use crate::domain::TrialId;

/// Whether an action asks why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    None,
    Optional,
    Required,
}

/// What a person can do to one trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrialAction {
    Active,
    Finish,
    Pause,
    Resume,
    Step,
    Abort,
    Restore,
    Skip,
    Delete,
    Unschedule,
}

impl TrialAction {
    /// Every action, in the order the buttons are shown.
    pub const ALL: [TrialAction; 10] = [
        TrialAction::Active,
        TrialAction::Finish,
        TrialAction::Pause,
        TrialAction::Resume,
        TrialAction::Step,
        TrialAction::Restore,
        TrialAction::Skip,
        TrialAction::Abort,
        TrialAction::Unschedule,
        TrialAction::Delete,
    ];

    /// The action's path segment in the console.
    pub fn segment(self) -> &'static str {
        match self {
            TrialAction::Active => "active",
            TrialAction::Finish => "finish",
            TrialAction::Pause => "pause",
            TrialAction::Resume => "resume",
            TrialAction::Step => "step",
            TrialAction::Abort => "abort",
            TrialAction::Restore => "restore",
            TrialAction::Skip => "skip",
            TrialAction::Delete => "delete",
            TrialAction::Unschedule => "unschedule",
        }
    }

    /// The action named by a path segment.
    pub fn parse(segment: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.segment() == segment)
    }

    /// The button's label.
    pub fn label(self) -> &'static str {
        match self {
            TrialAction::Active => "Active",
            TrialAction::Finish => "Finish",
            TrialAction::Pause => "Pause",
            TrialAction::Resume => "Resume",
            TrialAction::Step => "Step",
            TrialAction::Abort => "Abort",
            TrialAction::Restore => "Restore",
            TrialAction::Skip => "Skip step",
            TrialAction::Delete => "Delete",
            TrialAction::Unschedule => "Unschedule",
        }
    }

    /// The API route the action is sent to.
    pub fn route(self, id: &TrialId) -> (Method, String) {
        match self {
            TrialAction::Active
            | TrialAction::Finish
            | TrialAction::Pause
            | TrialAction::Resume
            | TrialAction::Step
            | TrialAction::Abort => (Method::POST, format!("/trial/{id}/{}", self.segment())),
            TrialAction::Restore => (Method::POST, format!("/debug/engine/{id}/restore")),
            TrialAction::Skip => (Method::POST, format!("/debug/engine/{id}/skip")),
            TrialAction::Delete => (Method::DELETE, format!("/debug/engine/{id}")),
            TrialAction::Unschedule => (Method::DELETE, format!("/debug/trial/{id}/schedule")),
        }
    }

    /// The smallest role that may do it: the role of the extractor of its API handler.
    pub fn role(self) -> Role {
        match self {
            TrialAction::Active
            | TrialAction::Finish
            | TrialAction::Pause
            | TrialAction::Resume
            | TrialAction::Step
            | TrialAction::Abort
            | TrialAction::Unschedule => Operator::ROLE,
            TrialAction::Restore | TrialAction::Skip | TrialAction::Delete => Admin::ROLE,
        }
    }

    /// Whether it asks why.
    pub fn reason(self) -> Reason {
        match self {
            TrialAction::Pause | TrialAction::Resume | TrialAction::Step | TrialAction::Abort => {
                Reason::Optional
            }
            TrialAction::Skip => Reason::Required,
            TrialAction::Active
            | TrialAction::Finish
            | TrialAction::Restore
            | TrialAction::Delete
            | TrialAction::Unschedule => Reason::None,
        }
    }

    /// Undoes work or loses records: its button is marked as dangerous.
    pub fn dangerous(self) -> bool {
        matches!(
            self,
            TrialAction::Abort | TrialAction::Delete | TrialAction::Skip | TrialAction::Unschedule
        )
    }

    /// What confirming it does, in words.
    fn question(self, id: &TrialId) -> String {
        match self {
            TrialAction::Active => format!(
                "Mark trial {id}'s KPIs active? The trial goes on to SendKpiActive and UpdateStatusActive."
            ),
            TrialAction::Finish => format!(
                "Finish trial {id}? It stops: KPIs marked finished, the measurement job deleted, the slice closed."
            ),
            TrialAction::Pause => format!(
                "Pause trial {id}? No new request starts until it is resumed; callbacks are still taken."
            ),
            TrialAction::Resume => format!("Resume trial {id}?"),
            TrialAction::Step => {
                format!("Run exactly the next step of trial {id}? It stays paused afterwards.")
            }
            TrialAction::Abort => format!(
                "Abort trial {id}? What it deployed is undone (KPI marking, measurement job, slice) and it ends Aborted."
            ),
            TrialAction::Restore => format!(
                "Restore trial {id} from its last checkpoint? The step that failed runs again."
            ),
            TrialAction::Skip => format!(
                "Mark the failed step of trial {id} done without running it, and go on with the next?"
            ),
            TrialAction::Delete => format!(
                "Delete trial {id}? Its engine stops (a request in flight is cancelled) and its records are forgotten. A trial that may still have a slice or a measurement job deployed is refused: abort it first."
            ),
            TrialAction::Unschedule => format!("Remove the scheduled start of trial {id}?"),
        }
    }
}

/// What the API answered: its status and its `message` (or `detail`).
pub struct ApiAnswer {
    pub status: StatusCode,
    pub text: String,
}

/// The largest answer read back from the API.
const ANSWER_LIMIT: usize = 256 * 1024;

/// Sends `method path` (with a JSON `body`) through the API's handler as the session's key
/// holder, from the client's address; the API's audit layer records it.
pub async fn call_api(
    state: &AppState,
    post: &Post,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> ApiAnswer {
    let mut builder = Request::builder().method(method).uri(path);
    if body.is_some() {
        builder = builder.header(header::CONTENT_TYPE, "application/json");
    }
    let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
    let mut request = match builder.body(body) {
        Ok(request) => request,
        Err(e) => {
            return ApiAnswer {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                text: format!("the request could not be made: {e}"),
            };
        }
    };
    request.extensions_mut().insert(post.signed.actor());
    if let Some(ConnectInfo(addr)) = post.client {
        request
            .extensions_mut()
            .insert(ConnectInfo::<SocketAddr>(addr));
    }
    let router = post.signed.console.api(state);
    let Ok(response) = router.oneshot(request).await;
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), ANSWER_LIMIT)
        .await
        .unwrap_or_default();
    let text =
        said(&bytes).unwrap_or_else(|| status.canonical_reason().unwrap_or("done").to_owned());
    ApiAnswer { status, text }
}

/// The console's answer to an action the API answered: back to `back` with the API's message
/// (kept for the next page), or, when the API refused the caller itself (401, 403, 429), an
/// error page with that status. The API handler wrote the audit entry.
pub fn answer(signed: &Signed, answer: ApiAnswer, back: &str) -> Response {
    let mut response = match answer.status.as_u16() {
        401 | 403 | 429 => layout::error_page(Some(signed), answer.status, &answer.text),
        _ => {
            signed.flash(answer.status.is_success(), answer.text);
            Redirect::to(back).into_response()
        }
    };
    response.extensions_mut().insert(Audited);
    response
}

/// Why a request names no trial or action the console knows.
enum BadTarget {
    TrialId,
    Action,
}

impl BadTarget {
    /// The page that says so.
    fn page(self, signed: &Signed) -> Response {
        match self {
            BadTarget::TrialId => layout::error_page(
                Some(signed),
                StatusCode::BAD_REQUEST,
                "That is not a valid trial id.",
            ),
            BadTarget::Action => layout::error_page(
                Some(signed),
                StatusCode::NOT_FOUND,
                "There is no such action.",
            ),
        }
    }
}

/// The trial and the action a request names.
fn target(raw_id: &str, action: &str) -> Result<(TrialId, TrialAction), BadTarget> {
    let id = TrialId::parse(raw_id).map_err(|_| BadTarget::TrialId)?;
    let action = TrialAction::parse(action).ok_or(BadTarget::Action)?;
    Ok((id, action))
}

/// The form that confirms `action` on trial `id`: the question, a reason if it takes one, and
/// the confirming button; `cancel` is the way back (a link, or the dialog's close button).
pub fn confirm_form(signed: &Signed, id: &TrialId, action: TrialAction, cancel: Markup) -> Markup {
    let field = format!("reason-{}", action.segment());
    html! {
        form.confirm method="post" action={ "/ui/trials/" (id) "/actions/" (action.segment()) } {
            (layout::csrf(signed))
            p { (action.question(id)) }
            @match action.reason() {
                Reason::None => {},
                Reason::Optional => {
                    label for=(field) { "Reason (optional, kept in the history)" }
                    textarea id=(field) name="reason" maxlength="500" rows="2" {}
                },
                Reason::Required => {
                    label for=(field) { "Reason (required, kept in the history)" }
                    textarea id=(field) name="reason" maxlength="500" rows="2" required {}
                },
            }
            div.buttons {
                button type="submit" class=[action.dangerous().then_some("danger")]
                    data-confirm=(action.segment()) {
                    "Confirm: " (action.label())
                }
                (cancel)
            }
        }
    }
}

/// `GET /ui/trials/{trial_id}/confirm/{action}`: the confirmation as a page of its own, for
/// browsers without scripts (with scripts, the same form opens in a dialog).
pub async fn confirm_page(
    signed: Signed,
    State(state): State<AppState>,
    Path((raw_id, action)): Path<(String, String)>,
) -> Response {
    let (id, action) = match target(&raw_id, &action) {
        Ok(target) => target,
        Err(bad) => return bad.page(&signed),
    };
    if !signed.may(action.role()) {
        return layout::error_page(
            Some(&signed),
            StatusCode::FORBIDDEN,
            &format!(
                "{} needs the {} role; your key has the {} role.",
                action.label(),
                action.role(),
                signed.holder.role
            ),
        );
    }
    // A trial the service does not know is said so here, not once the action is confirmed.
    if !state.scheduler.is_scheduled(&id)
        && let Err(e) = state.find_trial(&id).await
        && e.status == StatusCode::NOT_FOUND
    {
        return layout::error_page(Some(&signed), e.status, &e.detail);
    }
    let back = format!("/ui/trials/{id}");
    let body = html! {
        h1 { (action.label()) ": trial " (id) }
        (confirm_form(&signed, &id, action, html! { a.button href=(back) { "Cancel" } }))
    };
    layout::respond(
        StatusCode::OK,
        layout::shell(
            action.label(),
            Some(&signed),
            Some(Section::Trials),
            None,
            body,
        ),
    )
}

/// `POST /ui/trials/{trial_id}/actions/{action}`: does the confirmed action.
pub async fn trial_action(
    State(state): State<AppState>,
    Path((raw_id, action)): Path<(String, String)>,
    post: Post,
) -> Response {
    let (id, action) = match target(&raw_id, &action) {
        Ok(target) => target,
        Err(bad) => return post.audited(bad.page(&post.signed)),
    };
    // The reason's box wraps, and a line typed in it is one reason: its lines are joined.
    let reason = post
        .form
        .get("reason")
        .map(|reason| reason.split_whitespace().collect::<Vec<_>>().join(" "));
    let body = match (action.reason(), reason) {
        (Reason::None, _) => None,
        (Reason::Optional, None) => None,
        (Reason::Required, None) => Some(json!({"reason": ""})),
        (_, Some(reason)) => Some(json!({"reason": reason})),
    };
    let (method, path) = action.route(&id);
    let answered = call_api(&state, &post, method, &path, body).await;
    let back = match action {
        // The trial is gone: back to the list.
        TrialAction::Delete | TrialAction::Unschedule if answered.status.is_success() => {
            "/ui/trials".to_owned()
        }
        _ => format!("/ui/trials/{id}"),
    };
    answer(&post.signed, answered, &back)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_has_its_own_segment() {
        for action in TrialAction::ALL {
            assert_eq!(TrialAction::parse(action.segment()), Some(action));
        }
    }
}
