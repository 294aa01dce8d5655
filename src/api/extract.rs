//! Extractors that validate at the edge: the API key, a presented token, the trial id in the
//! path, and JSON bodies, each refusing with a clear `{"detail"}`.

use std::collections::HashMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;
use crate::domain::TrialId;

/// The credential presented: the `Authorization` header (raw or `Bearer <x>`), else the
/// `Authorization` cookie.
fn presented_credential(parts: &Parts) -> Option<String> {
    let header = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty());
    if let Some(value) = header {
        let value = match value.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            _ => value,
        };
        return (!value.is_empty()).then(|| value.to_owned());
    }
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == "Authorization")
        .map(|c| c.value().to_owned())
        .filter(|v| !v.is_empty())
}

const MISSING: &str = "missing credentials: send them in the Authorization header (raw or 'Bearer <value>') or in an Authorization cookie";

/// Proof that the request carries the API key.
pub struct ApiKey;

impl FromRequestParts<AppState> for ApiKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let presented =
            presented_credential(parts).ok_or_else(|| ApiError::unauthorized(MISSING))?;
        let expected = state.settings.auth.api_key.expose().as_bytes();
        if bool::from(presented.as_bytes().ct_eq(expected)) {
            Ok(ApiKey)
        } else {
            Err(ApiError::unauthorized("wrong API key"))
        }
    }
}

/// A presented callback token, not yet verified (the handler knows which trial it must be for).
pub struct PresentedToken(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PresentedToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        presented_credential(parts)
            .map(PresentedToken)
            .ok_or_else(|| ApiError::unauthorized(MISSING))
    }
}

/// The validated trial id of the path (`{trial_id}` or `{id}`).
pub struct TrialPath(pub TrialId);

impl<S: Send + Sync> FromRequestParts<S> for TrialPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        let raw = params
            .get("trial_id")
            .or_else(|| params.get("id"))
            .ok_or_else(|| ApiError::bad_request("no trial id in the path"))?;
        Ok(TrialPath(TrialId::parse(raw)?))
    }
}

/// The `{trial_id}` path parameter as the OpenAPI document shows it (`params(TrialIdParam)`);
/// [`TrialPath`] is what extracts and validates it.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TrialIdParam {
    /// The trial's id: 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit.
    #[param(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", example = "trial-42")]
    pub trial_id: String,
}

/// A JSON body whose rejections are `{"detail"}` errors with the right status (400 malformed,
/// 413 too large, 415 not JSON, 422 wrong shape).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(value) = axum::Json::<serde_json::Value>::from_request(req, state)
            .await
            .map_err(json_rejection)?;
        // Serde would also take a list of the fields' values in order; only an object is a body.
        if !value.is_object() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "request body must be a JSON object",
            ));
        }
        serde_json::from_value(value).map(ApiJson).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("request body has the wrong shape: {e}"),
            )
        })
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let detail = match &rejection {
        JsonRejection::JsonDataError(e) => {
            format!("request body has the wrong shape: {}", e.body_text())
        }
        JsonRejection::JsonSyntaxError(_) => "request body is not valid JSON".to_owned(),
        JsonRejection::MissingJsonContentType(_) => {
            "request body must be JSON with 'Content-Type: application/json'".to_owned()
        }
        _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            "request body is too large".to_owned()
        }
        other => other.body_text(),
    };
    ApiError::new(rejection.status(), detail)
}

/// A JSON body that may be left out: an empty body is `None`; anything else must be what
/// [`ApiJson`] takes, with the same errors.
pub struct OptionalJson<T>(pub Option<T>);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        // The body limit layer bounds what is read here.
        let bytes = axum::body::to_bytes(body, usize::MAX).await.map_err(|_| {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request body is too large")
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(None));
        }
        let req = Request::from_parts(parts, axum::body::Body::from(bytes));
        let ApiJson(value) = ApiJson::<T>::from_request(req, state).await?;
        Ok(Self(Some(value)))
    }
}
