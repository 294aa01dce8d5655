//! The REST surface (SPEC §5): routers per area, extractors that validate at the edge, and one
//! error type answered as `{"detail"}`.
//!
//! Every area's router is a utoipa-axum `OpenApiRouter`: a handler is routed by the `routes!`
//! call that also adds its `#[utoipa::path]` description to the OpenAPI document, so the
//! document served at `GET /openapi.json` (and shown by Swagger UI at `/`, see [`docs`]) cannot
//! drift from what the router serves.

pub mod audit;
pub mod docs;
pub mod engines;
pub mod error;
pub mod extract;
mod handling;
pub mod listing;
pub mod observe;
pub(crate) mod paging;
pub mod scheduling;
pub mod status;
pub mod tokens;
pub mod trials;
pub mod view;

use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::DefaultBodyLimit;
use axum::http::HeaderValue;
use axum::{Extension, Router};
use handling::Handling;
use tokio_util::task::TaskTracker;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::Level;
use utoipa::OpenApi as _;
use utoipa::openapi::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::access::Access;
use crate::config::Settings;
use crate::domain::start_of;
use crate::heartbeat::Heartbeats;
use crate::scheduler::Scheduler;
use crate::tokens::TokenManager;
use error::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

/// The service's shared parts.
pub struct AppInner {
    pub settings: Arc<Settings>,
    /// The API keys in force and the failed-authentication limit.
    pub access: Arc<Access>,
    pub scheduler: Scheduler,
    pub tokens: Arc<TokenManager>,
    pub heartbeats: Heartbeats,
    pub started: Instant,
    /// Cancelled when the service begins to shut down: long-lived answers (event streams)
    /// end then, so the graceful shutdown does not wait on them.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Every request's handling, which goes on after its connection is gone: shutdown waits
    /// for them before the store's last rows are committed.
    pub handlers: TaskTracker,
    /// The ended trials whose slice, announced after their end, this process is closing:
    /// a callback meanwhile, or the close's own, closes nothing more.
    pub late_slices: std::sync::Mutex<std::collections::HashMap<crate::domain::TrialId, LateClose>>,
}

/// Where a close of a slice announced after its trial's end stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LateClose {
    /// Sent, not answered yet; whether a slice callback came meanwhile (the close's own,
    /// if trial enforcement called back before it answered).
    InFlight { callback_came: bool },
    /// Answered 200: its slice-closed callback is due until this instant (the time a
    /// component is given to call back), and comes back refused like the one that asked for
    /// the close.
    OwnCallbackDue(tokio::time::Instant),
}

impl AppState {
    /// Wraps the service's parts.
    pub fn new(inner: AppInner) -> Self {
        Self(Arc::new(inner))
    }

    /// A handle that does not keep the service's parts alive (for a task that must not keep
    /// them once the service has stopped).
    pub fn downgrade(&self) -> std::sync::Weak<AppInner> {
        Arc::downgrade(&self.0)
    }
}

impl AppInner {
    /// Every trial id a viewer is shown now: of an engine in memory, a job, a heartbeat, or a
    /// trial only in the store (`/trials` lists those). When the store cannot be read, the ids
    /// in memory, and the error.
    pub async fn shown_ids(&self) -> (Vec<String>, Option<crate::store::StoreError>) {
        let held = self.scheduler.held_ids().into_iter();
        let mut ids: Vec<String> = held
            .chain(self.heartbeats.ids())
            .map(String::from)
            .collect();
        let stored = self
            .scheduler
            .deps()
            .store
            .read(|reader| reader.ids())
            .await;
        match stored {
            Ok(stored) => {
                ids.extend(stored);
                (ids, None)
            }
            Err(e) => (ids, Some(e)),
        }
    }
}

impl Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

/// The answer of the endpoints that only report what they did: `{"message": …}`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Message {
    /// What was done, in words.
    pub message: String,
}

impl Message {
    /// An answer with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// Every route of the API, each with its description, before the middleware.
pub fn api() -> OpenApiRouter<AppState> {
    let mut api = OpenApiRouter::with_openapi(docs::ApiDoc::openapi())
        .merge(status::routes())
        .merge(scheduling::routes())
        .merge(tokens::routes())
        .merge(trials::routes())
        .merge(listing::routes())
        .merge(audit::routes())
        .merge(engines::routes())
        .merge(observe::routes())
        .merge(docs::routes());
    docs::describe_common_refusals(api.get_openapi_mut());
    api
}

/// The OpenAPI document of the whole API, as served at `GET /openapi.json`.
pub fn openapi() -> OpenApi {
    docs::describe_inputs(api().into_openapi())
}

/// The whole router with its middleware: the API's, the console, and around both the handling
/// of each request to its end, CORS and tracing.
pub fn router(state: AppState) -> Router {
    let settings = &state.settings;
    let secrets = state.clone();
    let handling = Handling::new(
        Duration::from_secs(settings.server.handler_timeout_secs),
        state.handlers.clone(),
        Arc::new(move |path: &str, text: &str| error::hidden(&secrets, path, text)),
    );
    let arrival = handling::Arrival {
        time: Duration::from_secs(settings.server.header_read_timeout_secs),
        max_bytes: settings.server.max_body_bytes,
    };
    let traced = state.clone();
    layered_api(&state)
        // The console answers HTML, its errors too, and audits through its own layer.
        .merge(crate::console::routes(&state))
        .layer(axum::middleware::from_fn(move |request, next| {
            handling::to_the_end(handling.clone(), request, next)
        }))
        // Outside the handling: its time starts once the body is there.
        .layer(axum::middleware::from_fn(move |request, next| {
            handling::body_in_time(arrival, request, next)
        }))
        .layer(cors(&settings.server.cors_origins))
        // Its spans and events are at DEBUG; so are its failures, which the handling above
        // logs with the request's method and path.
        .layer(
            TraceLayer::new_for_http()
                // The path only, its secrets hidden: a query may hold what must not be logged
                // (a token sent there). Both are the client's: a line keeps their start.
                .make_span_with(move |request: &axum::extract::Request| {
                    tracing::debug_span!(
                        "request",
                        method = start_of(request.method().as_str(), 20),
                        path = start_of(
                            &error::hidden(&traced, request.uri().path(), request.uri().path()),
                            200
                        ),
                    )
                })
                .on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
        )
        .with_state(state)
}

/// The API's routes with what every API request goes through: the caller's identification,
/// the audit, the body limits and the `{"detail"}` errors. The console sends its actions
/// through this, from within its own request's handling.
pub fn layered_api(state: &AppState) -> Router<AppState> {
    let max_body = state.settings.server.max_body_bytes;
    let (routes, openapi) = api().split_for_parts();
    routes
        .layer(Extension(Arc::new(docs::describe_inputs(openapi))))
        .fallback(docs::ui_asset_or_no_route)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            extract::identify_caller,
        ))
        // Outside the identification: it sees who the caller was in the answer.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit::record,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(RequestBodyLimitLayer::new(max_body))
        .layer(axum::middleware::map_response(error::json_errors))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            error::hide_secrets,
        ))
}

fn cors(origins: &[String]) -> CorsLayer {
    let layer = CorsLayer::new().allow_methods(Any).allow_headers(Any);
    if origins.iter().any(|o| o == "*") {
        return layer.allow_origin(Any);
    }
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    layer.allow_origin(AllowOrigin::list(origins))
}
