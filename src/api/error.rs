//! The API's one error type: a status code and a `detail`, answered as `{"detail": …}`, and
//! the mapping of every core error to it.

use axum::Json;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::audit::AuditDetail;
use crate::domain::{InvalidStartTime, InvalidTrialId, at_most};
use crate::engine::redact::REDACTED;
use crate::heartbeat::HeartbeatRefused;
use crate::scheduler::ScheduleError;
use crate::services::registry::RegistryError;
use crate::store::StoreError;
use crate::tokens::TokenError;

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A human-readable reason.
    #[schema(example = "trial 't1' has no engine")]
    pub detail: String,
}

/// The most of a detail an answer carries: one that quotes what the client sent (an unknown
/// field's name, a value) cannot make the answer, its audit entry and its log line as large
/// as the request.
pub const MAX_DETAIL_CHARS: usize = 1000;

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: String,
}

impl ApiError {
    /// An error with this status and detail (cut after [`MAX_DETAIL_CHARS`]).
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: at_most(detail.into(), MAX_DETAIL_CHARS),
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, detail)
    }

    /// The trial has no engine (404).
    pub fn no_engine(id: &crate::domain::TrialId) -> Self {
        Self::not_found(format!("trial '{id}' has no engine"))
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, detail)
    }

    pub fn bad_gateway(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, detail)
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let told = AuditDetail(self.detail.clone());
        let mut response = (
            self.status,
            Json(ErrorBody {
                detail: self.detail,
            }),
        )
            .into_response();
        response.extensions_mut().insert(told);
        response
    }
}

impl From<InvalidTrialId> for ApiError {
    fn from(e: InvalidTrialId) -> Self {
        Self::bad_request(e.to_string())
    }
}

impl From<InvalidStartTime> for ApiError {
    fn from(e: InvalidStartTime) -> Self {
        Self::bad_request(e.to_string())
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::OtherTrial => Self::forbidden(e.to_string()),
            TokenError::Expired
            | TokenError::Invalid
            | TokenError::Revoked
            | TokenError::NotYetValid
            | TokenError::TooLong => Self::unauthorized(e.to_string()),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NotFound(_) => Self::not_found(e.to_string()),
            RegistryError::Unreachable(_)
            | RegistryError::Status(_)
            | RegistryError::Garbage { .. }
            | RegistryError::OtherTrial { .. } => Self::bad_gateway(e.to_string()),
        }
    }
}

impl From<ScheduleError> for ApiError {
    fn from(e: ScheduleError) -> Self {
        match e {
            ScheduleError::JobExists(_)
            | ScheduleError::EngineExists(_)
            | ScheduleError::Ran(_) => Self::conflict(e.to_string()),
            ScheduleError::Time(e) => e.into(),
            ScheduleError::Registry(e) => e.into(),
            ScheduleError::NoStartTime(_) => Self::bad_gateway(e.to_string()),
            ScheduleError::Store(e) => e.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Damaged(_) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the store could not be read: {e}"),
            ),
            StoreError::Unreadable(_) => {
                Self::unavailable(format!("the store could not be read; retry: {e}"))
            }
            StoreError::Backend(_) | StoreError::Unwritable(_) | StoreError::Closed => {
                Self::unavailable(format!("the change was not saved, so it was not made: {e}"))
            }
        }
    }
}

impl From<HeartbeatRefused> for ApiError {
    fn from(e: HeartbeatRefused) -> Self {
        match e {
            HeartbeatRefused::Exists(_) | HeartbeatRefused::TooMany => {
                Self::conflict(e.to_string())
            }
            HeartbeatRefused::Stopping => Self::unavailable(e.to_string()),
        }
    }
}

/// The detail of every 413, whichever layer refuses the body.
pub const TOO_LARGE: &str = "request body is too large (server.max_body_bytes)";

/// Hides the service's secrets in an error's detail, as the log and the audit do: a refusal
/// may quote what the client sent, and a client may paste an API key, the token secret or a
/// token into the wrong field, or a key into a path as a trial's id.
pub async fn hide_secrets(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let uri = request.uri().clone();
    let response = next.run(request).await;
    let status = response.status();
    let small = http_body::Body::size_hint(response.body())
        .upper()
        .is_some_and(|size| size <= ERROR_READ_LIMIT as u64);
    if !(status.is_client_error() || status.is_server_error()) || !small {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = to_bytes(body, ERROR_READ_LIMIT).await else {
        parts.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(parts, Body::empty());
    };
    let mut answer = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(answer) if answer["detail"].is_string() => answer,
        _ => return Response::from_parts(parts, Body::from(bytes)),
    };
    let detail = answer["detail"].as_str().unwrap_or_default();
    let shown = hidden(&state, uri.path(), detail);
    if shown == detail {
        return Response::from_parts(parts, Body::from(bytes));
    }
    answer["detail"] = shown.into();
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(answer.to_string()))
}

/// `text` (an answer's detail, or a request's path) as an answer or a log line shows it: a
/// configured secret or a token in it is hidden, and so is every part of the request's `path`
/// between slashes that is an API key or a secret (a key pasted as a trial id), wherever
/// `text` quotes it, as written or decoded.
pub fn hidden(state: &AppState, path: &str, text: &str) -> String {
    let mut shown = (state.scheduler.deps().secrets.redactor()).text_and_tokens(text);
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        let decoded = percent_decode_str(segment).decode_utf8_lossy();
        if state.scheduler.is_a_secret(&decoded) {
            shown = shown
                .replace(segment, REDACTED)
                .replace(decoded.as_ref(), REDACTED);
        }
    }
    shown
}

/// The most of an error answer [`hide_secrets`] reads: a detail is at most
/// [`MAX_DETAIL_CHARS`] characters.
const ERROR_READ_LIMIT: usize = 64 * 1024;

/// Gives every error answer the `{"detail"}` shape, including those made by the framework
/// and the middleware (unknown route, wrong method, body too large, timeout, …).
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = to_bytes(body, 16 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let detail = if status == StatusCode::PAYLOAD_TOO_LARGE {
        TOO_LARGE.to_owned()
    } else if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_owned()
    } else {
        at_most(text, MAX_DETAIL_CHARS)
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    let body = serde_json::to_vec(&ErrorBody { detail }).unwrap_or_default();
    Response::from_parts(parts, Body::from(body))
}
