//! The operator console (SPEC §16): server-rendered pages under `/ui/` for people, beside the
//! REST API for programs.
//!
//! - [`session`]: sign-in with an API key gives a session (a random id in an `HttpOnly`,
//!   `SameSite=Strict` cookie, never the key), kept in memory with the key's name and role; a
//!   session ends at sign-out, after [`session::LIFETIME`], or when its key is no longer in
//!   force (a SIGHUP reload removed or changed it). Every `POST` carries the session's CSRF
//!   token and must come from this origin.
//! - [`actions`]: what an operator can do (active, finish, pause, resume, step, abort,
//!   restore, skip, delete, schedule, unschedule, the scheduling switch, heartbeats). Each is
//!   sent through the REST API's own handler in-process, as the session's key holder: the
//!   role a route needs, its checks, its answer and its audit entry are the API's, so the
//!   console cannot drift from it. The console only decides which buttons to show, by the
//!   role of the API extractor each action goes to.
//! - [`trials`] (the listing), [`trial`] (one trial: where it is in the sequence, a timeline
//!   drawn from its history, progress, failure, responses, audit entries), [`schedule`] and
//!   [`service`] are the pages; [`live`] streams fresh parts of a page over server-sent events
//!   as the trial or the listing changes, so no page needs a reload.
//! - [`layout`] is the page shell and the small shared pieces (status badges, times);
//!   [`assets`] serves the stylesheet and the script, compiled into the binary.
//!
//! The console's routes are not API routes: they are not in the OpenAPI document, answer HTML
//! (errors too), and go through their own audit layer (a refused `POST` is recorded like any
//! other; an action is recorded once, by the API handler it went to).

pub mod actions;
pub mod assets;
pub mod layout;
pub mod live;
pub mod schedule;
pub mod service;
pub mod session;
pub mod timeline;
pub mod trial;
pub mod trials;

use std::sync::{Arc, OnceLock};

use axum::extract::{DefaultBodyLimit, Path};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};

use crate::api::AppState;
use crate::api::audit::Unrouted;
use crate::domain::TrialId;
use session::Sessions;

/// The console's shared parts: its sessions, and the API it sends actions to.
pub struct Console {
    pub sessions: Sessions,
    /// The service's whole router, built on the first action (it holds the console's routes
    /// too, so it cannot be built while they are).
    api: OnceLock<Router>,
}

/// The largest form the console takes (a reason is at most 500 characters).
const MAX_FORM_BYTES: usize = 16 * 1024;

/// Every route of the console, with its own middleware: the audit layer, a small body limit,
/// and the headers every console answer carries.
pub fn routes(state: &AppState) -> Router<AppState> {
    let console = Arc::new(Console {
        sessions: Sessions::new(state.settings.server.public_url.starts_with("https://")),
        api: OnceLock::new(),
    });
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(session::front))
        .route("/ui/sign-in", post(session::sign_in).get(to_front))
        .route("/ui/sign-out", post(session::sign_out).get(to_front))
        .route("/ui/assets/{file}", get(assets::serve))
        .route("/ui/trials", get(trials::page))
        .route("/ui/trials/live", get(trials::live))
        .route("/ui/trials/{trial_id}", get(trial::page))
        .route("/ui/trials/{trial_id}/live", get(trial::live))
        .route(
            "/ui/trials/{trial_id}/confirm/{action}",
            get(actions::confirm_page),
        )
        .route(
            "/ui/trials/{trial_id}/actions/{action}",
            post(actions::trial_action).get(to_trial),
        )
        .route("/ui/schedule", get(schedule::page).post(schedule::at_time))
        .route(
            "/ui/schedule/registry",
            post(schedule::from_registry).get(|| async { Redirect::to("/ui/schedule") }),
        )
        .route("/ui/service", get(service::page))
        .route(
            "/ui/service/{action}",
            post(service::action).get(|| async { Redirect::to("/ui/service") }),
        )
        .route("/ui/{*rest}", get(not_found).post(not_found))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::api::audit::record,
        ))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(axum::middleware::map_response(console_headers))
        .layer(Extension(console))
}

impl Console {
    /// The API with its layers ([`crate::api::layered_api`]), to send an action through the
    /// API's handler.
    fn api(&self, state: &AppState) -> Router {
        self.api
            .get_or_init(|| crate::api::layered_api(state).with_state(state.clone()))
            .clone()
    }
}

/// What a console page may load: its own stylesheet, script and event streams, nothing else;
/// no page may frame it.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Adds the headers every console answer carries (unless a handler set its own, like the
/// assets' cache header).
async fn console_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
    response
}

/// An address a form posts to, opened as a page (the address bar, a tab opened again): the page
/// the form is on, rather than a bare 405.
async fn to_front() -> Redirect {
    Redirect::to("/ui/")
}

/// A trial's action address opened as a page: the trial's page.
async fn to_trial(Path((trial_id, _)): Path<(String, String)>) -> Redirect {
    match TrialId::parse(&trial_id) {
        Ok(id) => Redirect::to(&format!("/ui/trials/{id}")),
        Err(_) => Redirect::to("/ui/trials"),
    }
}

async fn not_found(session: Option<session::Signed>) -> Response {
    let mut response = layout::error_page(
        session.as_ref(),
        StatusCode::NOT_FOUND,
        "There is no such page in the console.",
    )
    .into_response();
    // A path that names nothing is not written to the audit log, as one that reaches no
    // route is not: nothing was tried.
    response.extensions_mut().insert(Unrouted);
    response
}
