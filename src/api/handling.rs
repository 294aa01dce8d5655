//! Each request handled to its end in a task of its own, a bounded number at once.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::Request;
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, error, warn};

use super::ApiError;

/// When a client refused for too many requests in handling may try again.
const BUSY_RETRY_AFTER_SECS: u64 = 1;

/// How requests are handled: each to its end in a task of its own, at most `slots` at once.
#[derive(Clone)]
pub(super) struct Handling {
    /// `server.handler_timeout_secs`: a handler still running then is answered 504.
    limit: Duration,
    /// Every handler, so that shutdown waits for them.
    tracker: TaskTracker,
    /// `server.max_connections` permits: a caller that hangs up leaves its handler running and
    /// frees its connection, so the connection limit alone does not bound the handlers.
    slots: Arc<Semaphore>,
    /// How many permits there are.
    most: usize,
    refusals: Arc<Refusals>,
}

impl Handling {
    /// Handlers answered 504 after `limit`, tracked by `tracker`, `slots` at once.
    pub(super) fn new(limit: Duration, tracker: TaskTracker, slots: usize) -> Self {
        Self {
            limit,
            tracker,
            slots: Arc::new(Semaphore::new(slots)),
            most: slots,
            refusals: Arc::new(Refusals::new()),
        }
    }
}

/// The requests refused for want of a slot, told in the log at most once a minute: a client
/// that keeps sending then cannot fill the disk with the same warning.
struct Refusals {
    since_warned: AtomicU64,
    warnings: DefaultDirectRateLimiter,
}

impl Refusals {
    fn new() -> Self {
        Self {
            since_warned: AtomicU64::new(0),
            warnings: RateLimiter::direct(Quota::per_minute(NonZeroU32::MIN)),
        }
    }

    /// Counts a refusal; the refusals since the last warning when one is due now.
    fn note(&self) -> Option<u64> {
        self.since_warned.fetch_add(1, Ordering::Relaxed);
        self.warnings
            .check()
            .is_ok()
            .then(|| self.since_warned.swap(0, Ordering::Relaxed))
    }
}

/// Handles each request to its end in a task of its own, and answers 504 if that takes longer
/// than `limit` (`server.handler_timeout_secs`: no handler waits on a step, but a few wait on
/// the trial registry). A request whose caller goes away (the client hung up, the answer came
/// too late, the server is shutting down) thus never leaves a change half made: a job saved but
/// never armed, an engine stopped but never removed. Not 408: a client may send a request again
/// on 408 by itself, and this one goes on. With as many requests already in handling as
/// connections may be open, the request is refused before anything is done (503).
pub(super) async fn to_the_end(handling: Handling, request: Request, next: Next) -> Response {
    let Ok(slot) = handling.slots.clone().try_acquire_owned() else {
        let in_handling = handling.tracker.len();
        metrics::counter!("lcm_requests_refused_busy_total").increment(1);
        if let Some(refused) = handling.refusals.note() {
            warn!(
                refused,
                in_handling,
                "requests refused with 503 since the last such warning (one a minute at most; lcm_requests_refused_busy_total counts them all): as many are being handled as server.max_connections, and callers that hung up leave theirs running"
            );
        }
        let mut refused = ApiError::unavailable(format!(
            "too many requests are being handled (server.max_connections = {}); nothing was done, try again in {BUSY_RETRY_AFTER_SECS} s",
            handling.most
        ))
        .into_response();
        refused
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(BUSY_RETRY_AFTER_SECS));
        return refused;
    };
    // For the log only; both are cheap to clone (a method is an enum, a path shared bytes).
    let (method, uri) = (request.method().clone(), request.uri().clone());
    let (handler_method, handler_uri) = (method.clone(), uri.clone());
    let handler = handling.tracker.spawn(
        async move {
            let response = next.run(request).await;
            drop(slot);
            // Here rather than where the answer is sent: its caller may be gone.
            let status = response.status();
            if status.is_server_error() {
                warn!(
                    status = status.as_u16(),
                    "{handler_method} {} ended with a server error",
                    handler_uri.path()
                );
            }
            response
        }
        .in_current_span(),
    );
    let path = uri.path();
    match tokio::time::timeout(handling.limit, handler).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            error!(error = %e, "{method} {path}: its handler did not complete");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the request could not be handled (an internal error, logged)",
            )
            .into_response()
        }
        Err(_) => {
            let limit = handling.limit.as_secs();
            warn!(
                "{method} {path} answered 504 after {limit} s (server.handler_timeout_secs); its handling goes on"
            );
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "no answer within {limit} s (server.handler_timeout_secs); the request goes on, so look at its effect before sending it again"
                ),
            )
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::{Body, to_bytes};
    use axum::routing::get;
    use tower::ServiceExt;

    /// Handlers within `limit`, `slots` at once.
    fn handling(limit: Duration, slots: usize) -> Handling {
        Handling::new(limit, TaskTracker::new(), slots)
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
                to_the_end(handling.clone(), request, next)
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
            body.contains("too many requests are being handled (server.max_connections = 1)"),
            "{body}"
        );
        release.send(()).unwrap();
        finished
            .await
            .expect("the handler ran to its end after the 504");
    }

    #[test]
    fn refusals_are_told_once_a_minute_with_their_count() {
        let refusals = Refusals::new();
        assert_eq!(refusals.note(), Some(1));
        assert_eq!(refusals.note(), None);
        assert_eq!(refusals.note(), None);
        assert_eq!(refusals.since_warned.load(Ordering::Relaxed), 2);
    }
}
