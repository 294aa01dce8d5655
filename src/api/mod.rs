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
pub mod listing;
pub mod observe;
mod paging;
pub mod scheduling;
pub mod status;
pub mod tokens;
pub mod trials;
pub mod view;

use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::TraceLayer;
use tracing::{Instrument as _, error, warn};
use utoipa::OpenApi as _;
use utoipa::openapi::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::access::Access;
use crate::config::Settings;
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
}

impl AppState {
    /// Wraps the service's parts.
    pub fn new(inner: AppInner) -> Self {
        Self(Arc::new(inner))
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

/// How requests are handled: each to its end in a task of its own, at most `slots` at once.
#[derive(Clone)]
struct Handling {
    /// `server.handler_timeout_secs`: a handler still running then is answered 504.
    limit: Duration,
    /// Every handler, so that shutdown waits for them.
    tracker: TaskTracker,
    /// `server.max_connections` permits: a caller that hangs up leaves its handler running and
    /// frees its connection, so the connection limit alone does not bound the handlers.
    slots: Arc<Semaphore>,
}

/// Handles each request to its end in a task of its own, and answers 504 if that takes longer
/// than `limit` (`server.handler_timeout_secs`: no handler waits on a step, but a few wait on
/// the trial registry). A request whose caller goes away (the client hung up, the answer came
/// too late, the server is shutting down) thus never leaves a change half made: a job saved but
/// never armed, an engine stopped but never removed. Not 408: a client may send a request again
/// on 408 by itself, and this one goes on. With as many requests already in handling as
/// connections may be open, the request is refused before anything is done (503).
async fn handle_to_the_end(handling: Handling, request: Request, next: Next) -> Response {
    let Ok(slot) = handling.slots.clone().try_acquire_owned() else {
        warn!(
            in_handling = handling.tracker.len(),
            "a request was refused: as many requests are being handled as server.max_connections (callers that hung up leave theirs running)"
        );
        let mut refused = ApiError::unavailable(format!(
            "too many requests are being handled ({}: server.max_connections); nothing was done, try again in {BUSY_RETRY_AFTER_SECS} s",
            handling.tracker.len()
        ))
        .into_response();
        refused
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(BUSY_RETRY_AFTER_SECS));
        return refused;
    };
    let handler = handling.tracker.spawn(
        async move {
            let response = next.run(request).await;
            drop(slot);
            response
        }
        .in_current_span(),
    );
    match tokio::time::timeout(handling.limit, handler).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            error!(error = %e, "a request's handler did not complete");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the request could not be handled (an internal error, logged)",
            )
            .into_response()
        }
        Err(_) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "no answer within {} s (server.handler_timeout_secs); the request goes on, so look at its effect before sending it again",
                handling.limit.as_secs()
            ),
        )
        .into_response(),
    }
}

/// When a client refused for too many requests in handling may try again.
const BUSY_RETRY_AFTER_SECS: u64 = 1;

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
    docs::describe_access_refusals(api.get_openapi_mut());
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
    let handling = Handling {
        limit: Duration::from_secs(settings.server.handler_timeout_secs),
        tracker: state.handlers.clone(),
        slots: Arc::new(Semaphore::new(settings.server.max_connections)),
    };
    layered_api(&state)
        // The console answers HTML, its errors too, and audits through its own layer.
        .merge(crate::console::routes(&state))
        .layer(axum::middleware::from_fn(move |request, next| {
            handle_to_the_end(handling.clone(), request, next)
        }))
        .layer(cors(&settings.server.cors_origins))
        .layer(TraceLayer::new_for_http())
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{Body, to_bytes};
    use axum::routing::get;
    use tower::ServiceExt;

    /// Handlers within `limit`, `slots` at once.
    fn handling(limit: Duration, slots: usize) -> Handling {
        Handling {
            limit,
            tracker: TaskTracker::new(),
            slots: Arc::new(Semaphore::new(slots)),
        }
    }

    /// A router with one route, `handler`, handled to its end as `handling` says.
    async fn answer_of<H, T>(handler: H, handling: &Handling) -> (StatusCode, String)
    where
        H: axum::handler::Handler<T, ()>,
        T: 'static,
    {
        let handling = handling.clone();
        let router = Router::new()
            .route("/", get(handler))
            .layer(axum::middleware::from_fn(move |request, next| {
                handle_to_the_end(handling.clone(), request, next)
            }));
        let request = axum::http::Request::new(Body::empty());
        let Ok(response) = router.oneshot(request).await;
        let status = response.status();
        let body = to_bytes(response.into_body(), 4096).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_handler_that_panics_is_answered_500_with_a_detail() {
        async fn faulty() -> StatusCode {
            panic!("a fault in a handler")
        }
        // One slot: the second request is handled only if the first one's panic freed it.
        let handling = handling(Duration::from_secs(5), 1);
        for _ in 0..2 {
            let (status, body) = answer_of(faulty, &handling).await;
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
            assert!(
                body.contains(r#""detail":"the request could not be handled"#),
                "{body}"
            );
        }
    }

    #[tokio::test]
    async fn a_handler_answered_too_late_gets_504_and_still_runs_to_its_end_holding_its_slot() {
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let waits = Arc::new(std::sync::Mutex::new(Some((released, done))));
        // Held until the test has its answer, then done.
        let held = move || {
            let waits = waits.lock().unwrap().take();
            async move {
                if let Some((released, done)) = waits {
                    let _ = released.await;
                    let _ = done.send(());
                }
            }
        };
        let handling = handling(Duration::from_millis(50), 1);
        let (status, body) = answer_of(held.clone(), &handling).await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        assert!(body.contains("server.handler_timeout_secs"), "{body}");
        // Its slot is still taken: the next request is refused before it is handled.
        let (status, body) = answer_of(held, &handling).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body.contains("too many requests are being handled (1: server.max_connections)"),
            "{body}"
        );
        release.send(()).unwrap();
        finished
            .await
            .expect("the handler ran to its end after the 504");
    }
}
