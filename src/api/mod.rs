//! The REST surface (SPEC §5): routers per area, extractors that validate at the edge, and one
//! error type answered as `{"detail"}`.

pub mod engines;
pub mod error;
pub mod extract;
pub mod observe;
pub mod scheduling;
pub mod status;
pub mod tokens;
pub mod trials;

use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode};
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

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
    pub scheduler: Scheduler,
    pub tokens: Arc<TokenManager>,
    pub heartbeats: Heartbeats,
    pub started: Instant,
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

/// No handler waits on a step, but a few wait on the trial registry; none should take longer.
const HANDLER_TIMEOUT: Duration = Duration::from_secs(90);

/// The whole router with its middleware.
pub fn router(state: AppState) -> Router {
    let settings = &state.settings;
    let max_body = settings.server.max_body_bytes;
    Router::new()
        .merge(status::routes())
        .merge(scheduling::routes())
        .merge(tokens::routes())
        .merge(trials::routes())
        .merge(engines::routes())
        .merge(observe::routes())
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(RequestBodyLimitLayer::new(max_body))
        .layer(axum::middleware::map_response(error::json_errors))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            HANDLER_TIMEOUT,
        ))
        .layer(cors(&settings.server.cors_origins))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
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
