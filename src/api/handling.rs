//! Each request handled to its end in a task of its own.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, to_bytes};
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, error, warn};

use super::ApiError;
use super::audit::AuditDetail;
use crate::server::ConnectionSlot;

/// How requests are handled: each to its end in a task of its own.
#[derive(Clone)]
pub(super) struct Handling {
    /// `server.handler_timeout_secs`: a handler still running then is answered 504.
    limit: Duration,
    /// Every handler, so that shutdown waits for them.
    tracker: TaskTracker,
    /// Hides the secrets in what the log lines of a failed handling quote of a request (its
    /// path, its answer's detail).
    hide: Hide,
}

/// Hides the secrets in a text a log line quotes of a request with the given path (see
/// [`super::error::hidden`]).
pub(super) type Hide = Arc<dyn Fn(&str, &str) -> String + Send + Sync>;

impl Handling {
    /// Handlers answered 504 after `limit`, tracked by `tracker`.
    pub(super) fn new(limit: Duration, tracker: TaskTracker, hide: Hide) -> Self {
        Self {
            limit,
            tracker,
            hide,
        }
    }
}

/// Handles each request to its end in a task of its own, and answers 504 if that takes longer
/// than `limit` (`server.handler_timeout_secs`: no handler waits on a step, but a few wait on
/// the trial registry). A request whose caller goes away (the client hung up, the answer came
/// too late, the server is shutting down) thus never leaves a change half made: a job saved but
/// never armed, an engine stopped but never removed. Not 408: a client may send a request again
/// on 408 by itself, and this one goes on. The handling keeps its connection's place among
/// `server.max_connections` ([`ConnectionSlot`]) until it ends, so requests whose callers hung
/// up cannot pile up.
pub(super) async fn to_the_end(handling: Handling, request: Request, next: Next) -> Response {
    let slot = request.extensions().get::<ConnectionSlot>().cloned();
    // For the log only; both are cheap to clone (a method is an enum, a path shared bytes).
    let (method, uri) = (request.method().clone(), request.uri().clone());
    let (handler_method, handler_uri) = (method.clone(), uri.clone());
    let hide = handling.hide.clone();
    let handler = handling.tracker.spawn(
        async move {
            let response = next.run(request).await;
            drop(slot);
            // Here rather than where the answer is sent: its caller may be gone.
            let status = response.status();
            if status.is_server_error() {
                let path = handler_uri.path();
                let detail = response.extensions().get::<AuditDetail>();
                warn!(
                    status = status.as_u16(),
                    detail = detail.map_or_else(|| "-".to_owned(), |d| hide(path, &d.0)),
                    "{handler_method} {} ended with a server error",
                    hide(path, path)
                );
            }
            response
        }
        .in_current_span(),
    );
    let path = (handling.hide)(uri.path(), uri.path());
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

/// How long a request's body may take to arrive after its head, and how large it may be.
#[derive(Clone, Copy)]
pub(super) struct Arrival {
    /// `server.header_read_timeout_secs`.
    pub(super) time: Duration,
    /// `server.max_body_bytes`.
    pub(super) max_bytes: usize,
}

/// Reads a request's body whole before it is handled. A body that has not arrived within
/// `server.header_read_timeout_secs` of its head is answered 408 and the connection closed,
/// like a head that stalls: nothing was done, so the client may send it again. (Read by the
/// handler, a stalled body held it until `server.handler_timeout_secs`, then got a 504 saying
/// the request went on.) Left as they are: requests without a body, `GET`s (no route reads
/// theirs), and a body declared larger than `server.max_body_bytes`, which the API's limit
/// refuses from its head at once. One without a declared length that grows past the limit
/// gets 413 here.
pub(super) async fn body_in_time(arrival: Arrival, request: Request, next: Next) -> Response {
    let declared = http_body::Body::size_hint(request.body());
    let max_bytes = u64::try_from(arrival.max_bytes).unwrap_or(u64::MAX);
    if declared.exact() == Some(0)
        || declared.lower() > max_bytes
        || matches!(
            *request.method(),
            Method::GET | Method::HEAD | Method::OPTIONS
        )
    {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(arrival.time, to_bytes(body, arrival.max_bytes)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(e)) if too_large(&e) => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, super::error::TOO_LARGE).into_response()
        }
        // The client went away while sending it: nobody reads this.
        Ok(Err(e)) => ApiError::bad_request(format!("the request body could not be read: {e}"))
            .into_response(),
        Err(_) => {
            let secs = arrival.time.as_secs();
            let mut response = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {secs} s of its head (server.header_read_timeout_secs); nothing was done"
                ),
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
    }
}

/// Whether reading a body failed on its size.
fn too_large(error: &axum::Error) -> bool {
    let first: &(dyn std::error::Error + 'static) = error;
    std::iter::successors(Some(first), |e| e.source())
        .any(|e| e.is::<http_body_util::LengthLimitError>())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use axum::Router;
    use axum::body::{Body, to_bytes};
    use axum::routing::get;
    use tokio::sync::Semaphore;
    use tower::ServiceExt;

    /// A request's answer from a router with one route, `handler`, handled as `handling`
    /// says, the request holding the only place of `places`.
    async fn answer_of<H, T>(
        handler: H,
        handling: &Handling,
        places: &Arc<Semaphore>,
    ) -> (StatusCode, String)
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
        let mut request = axum::http::Request::new(Body::empty());
        let permit = places.clone().try_acquire_owned().expect("a free place");
        request.extensions_mut().insert(ConnectionSlot::new(permit));
        let Ok(response) = router.oneshot(request).await;
        let status = response.status();
        let body = to_bytes(response.into_body(), 4096).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_handler_that_panics_is_answered_500_with_a_detail_and_frees_its_place() {
        async fn faulty() -> StatusCode {
            panic!("a fault in a handler")
        }
        let handling = Handling::new(
            Duration::from_secs(5),
            TaskTracker::new(),
            Arc::new(|_: &str, text: &str| text.to_owned()),
        );
        let places = Arc::new(Semaphore::new(1));
        let (status, body) = answer_of(faulty, &handling, &places).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            body.contains(r#""detail":"the request could not be handled"#),
            "{body}"
        );
        assert_eq!(places.available_permits(), 1);
    }

    #[tokio::test]
    async fn a_handler_answered_too_late_gets_504_and_runs_to_its_end_holding_its_place() {
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        // Handlers are cloned: the one the request reaches takes the receiver.
        let released = Arc::new(std::sync::Mutex::new(Some(released)));
        let held = move || {
            let released = released.lock().unwrap().take();
            async move {
                if let Some(released) = released {
                    let _ = released.await;
                }
            }
        };
        let handling = Handling::new(
            Duration::from_millis(50),
            TaskTracker::new(),
            Arc::new(|_: &str, text: &str| text.to_owned()),
        );
        let places = Arc::new(Semaphore::new(1));
        let (status, body) = answer_of(held, &handling, &places).await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        assert!(body.contains("server.handler_timeout_secs"), "{body}");
        // The answer is sent and the request dropped; its handling still holds the place.
        assert_eq!(places.available_permits(), 0);
        release.send(()).unwrap();
        handling.tracker.close();
        handling.tracker.wait().await;
        assert_eq!(places.available_permits(), 1, "given back at the end");
    }
}
