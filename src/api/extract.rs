//! Extractors that validate at the edge: who is calling and whether their role opens the
//! route ([`Viewer`], [`Operator`], [`Admin`], [`CallbackToken`]), the trial id in the path,
//! and JSON bodies, each refusing with a clear `{"detail"}`.
//!
//! A handler declares the role it needs by the extractor in its signature, and only there.
//! [`identify_caller`] runs before routing: it tells who the credential belongs to and puts the
//! [`Actor`] in the request's extensions (and the response's, for layers that look after the
//! handler ran); the extractors decide with it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use super::AppState;
use super::error::ApiError;
use super::tokens::check_token;
use crate::access::{Actor, KeyHolder, TooManyCallbacks, TooManyFailures};
use crate::config::{NamedKey, Role};
use crate::domain::TrialId;
use crate::engine::EngineHandle;
use crate::scheduler::A_SECRET_AS_ID;
use crate::tokens::{Claims, TokenError};

/// The credential presented: the `Authorization` header (raw or `Bearer <x>`), else the
/// `Authorization` cookie. A header that is not text is presented as it is, to be refused as
/// wrong rather than as missing.
fn presented_credential(headers: &HeaderMap) -> Option<String> {
    let header = headers
        .get(header::AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    if let Some(value) = header.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
        let value = match value.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            _ => value,
        };
        return (!value.is_empty()).then(|| value.to_owned());
    }
    cookie_value(headers, "Authorization")
}

/// The value of the request's cookie `name`, if it sent a non-empty one (the API's
/// `Authorization` cookie, the console's session).
pub(crate) fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
        .filter(|v| !v.is_empty())
}

/// The address failed authentications are counted against: the client's, from the
/// connection. Served without connection info (a router driven in-process) every client is
/// one.
pub(crate) fn client_ip(extensions: &Extensions) -> IpAddr {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip())
}

/// How long a client refused with 429 should wait, as `Retry-After` says it: whole seconds,
/// rounded up (a client that waits that long is let through), at least one.
pub(crate) fn retry_after_secs(retry_after: Duration) -> u64 {
    retry_after
        .as_secs()
        .saturating_add(u64::from(retry_after.subsec_nanos() > 0))
        .max(1)
}

const MISSING: &str = "missing credentials: send them in the Authorization header (raw or 'Bearer <value>') or in an Authorization cookie";
const WANTS_KEY: &str = "this route takes an API key, not a trial's callback token";
const WANTS_TOKEN: &str = "this route takes the trial's callback token, not an API key";

/// Who the credential belongs to: one of the API keys, or a callback token whose signature
/// and expiry verify.
fn identify(state: &AppState, headers: &HeaderMap) -> Option<Actor> {
    let credential = presented_credential(headers)?;
    if let Some(holder) = state.access.key_holder(&credential) {
        return Some(Actor::Key(holder));
    }
    let claims = state
        .tokens
        .decode_held(&credential, |claims| {
            super::tokens::held_by_live_engine(state, claims, &credential)
        })
        .ok()?;
    TrialId::parse(&claims.trial_id).ok().map(Actor::Callback)
}

/// What [`identify`] found for this request (also when it found no one), so it runs once.
#[derive(Clone)]
struct Identified(Option<Actor>);

/// Middleware: identifies the caller once per request and puts the [`Actor`] in the request's
/// extensions, and in the response's once the handler has answered. A request made in-process
/// with an [`Actor`] already in its extensions keeps it. It refuses nothing: that is
/// the extractors' decision.
pub async fn identify_caller(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    // A caller identified in-process (the console, by its session) stays who it is:
    // extensions never come from the wire.
    let actor = match request.extensions().get::<Actor>() {
        Some(actor) => Some(actor.clone()),
        None => identify(&state, request.headers()),
    };
    request.extensions_mut().insert(Identified(actor.clone()));
    if let Some(actor) = &actor {
        request.extensions_mut().insert(actor.clone());
    }
    let mut response = next.run(request).await;
    if let Some(actor) = actor {
        response.extensions_mut().insert(actor);
    }
    response
}

/// The request's caller, as [`identify_caller`] found it (or found now, if it did not run).
fn caller(parts: &mut Parts, state: &AppState) -> Option<Actor> {
    if let Some(Identified(actor)) = parts.extensions.get::<Identified>() {
        return actor.clone();
    }
    let actor = identify(state, &parts.headers);
    parts.extensions.insert(Identified(actor.clone()));
    if let Some(actor) = &actor {
        parts.extensions.insert(actor.clone());
    }
    actor
}

/// Why a request's credentials did not open the route.
#[derive(Debug)]
pub enum AuthError {
    /// 401, 403 (or 400 for the path of a token route), with its detail.
    Refused(ApiError),
    /// 429: the client's address failed to authenticate too often.
    TooManyFailures(TooManyFailures),
    /// 429: a callback token of this trial was used too often.
    TooManyCallbacks(TrialId, TooManyCallbacks),
}

impl From<ApiError> for AuthError {
    fn from(e: ApiError) -> Self {
        AuthError::Refused(e)
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        match self {
            AuthError::Refused(e) => e.into_response(),
            AuthError::TooManyFailures(TooManyFailures { retry_after }) => {
                too_many(retry_after, |secs| {
                    format!(
                        "too many failed authentications from this address; try again in {secs} s"
                    )
                })
            }
            AuthError::TooManyCallbacks(
                trial,
                TooManyCallbacks {
                    retry_after,
                    per_minute,
                },
            ) => too_many(retry_after, |secs| {
                format!(
                    "too many requests with the callback token of trial {trial}: at most {per_minute} a minute; nothing was done, try again in {secs} s"
                )
            }),
        }
    }
}

/// A 429 answer with `Retry-After`, saying `detail` of the seconds to wait.
fn too_many(retry_after: Duration, detail: impl FnOnce(u64) -> String) -> Response {
    let secs = retry_after_secs(retry_after);
    let mut response = ApiError::new(StatusCode::TOO_MANY_REQUESTS, detail(secs)).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

/// A failed authentication: 401 with `detail`, or 429 once the client's address has failed too
/// often. Counted per address, so one client cannot guess keys online.
fn failed(parts: &Parts, state: &AppState, detail: impl Into<String>) -> AuthError {
    match state.access.note_failure(client_ip(&parts.extensions)) {
        Ok(()) => AuthError::Refused(ApiError::unauthorized(detail)),
        Err(limited) => AuthError::TooManyFailures(limited),
    }
}

/// Resolves once the API key this request presented is no longer in force as `holder` (a
/// reload removed it or changed its role): what a stream opened with it ends on. A request
/// that presented none (the console's, made in-process for a session that checks its key
/// itself) is not ended by this.
pub fn key_withdrawn(
    headers: &HeaderMap,
    state: &AppState,
    holder: KeyHolder,
) -> impl Future<Output = ()> + Send + use<> {
    let digest = presented_credential(headers).map(|key| NamedKey::digest(&key));
    let access = state.access.clone();
    async move {
        match digest {
            Some(digest) => access.withdrawn(digest, holder).await,
            None => std::future::pending().await,
        }
    }
}

/// 429 for an API key sent from an address refused for failing too often, whether the key is
/// right or wrong, so the answer tells a guesser nothing (see [`crate::access::Access::limited`]).
fn key_from_limited(parts: &Parts, state: &AppState) -> Result<(), AuthError> {
    match state.access.limited(client_ip(&parts.extensions)) {
        Some(limited) => Err(AuthError::TooManyFailures(limited)),
        None => Ok(()),
    }
}

/// The holder of an API key whose role is at least `needed`.
fn authorize(parts: &mut Parts, state: &AppState, needed: Role) -> Result<KeyHolder, AuthError> {
    let actor = caller(parts, state);
    if matches!(actor, Some(Actor::Key(_))) {
        key_from_limited(parts, state)?;
    }
    match actor {
        Some(Actor::Key(holder)) if holder.role >= needed => Ok(holder),
        Some(Actor::Key(holder)) => Err(ApiError::forbidden(format!(
            "this route needs the {needed} role; key '{}' has the {} role",
            holder.name, holder.role
        ))
        .into()),
        // A genuine credential, only the wrong kind: not a guess, so not counted as one.
        Some(Actor::Callback(_)) => Err(ApiError::unauthorized(WANTS_KEY).into()),
        None if presented_credential(&parts.headers).is_none() => {
            Err(failed(parts, state, MISSING))
        }
        None => Err(failed(parts, state, "wrong API key")),
    }
}

/// Defines an extractor that lets through the holders of a key with at least this role.
macro_rules! role_extractor {
    ($name:ident, $role:expr, $doc:literal) => {
        #[doc = $doc]
        ///
        /// Holds the key's holder (name and role). Without a known key: 401 (429 once the client
        /// failed too often); with a key of a smaller role: 403 naming the role needed.
        pub struct $name(pub KeyHolder);

        impl $name {
            /// The smallest role this extractor lets through.
            pub const ROLE: Role = $role;
        }

        impl FromRequestParts<AppState> for $name {
            type Rejection = AuthError;

            async fn from_request_parts(
                parts: &mut Parts,
                state: &AppState,
            ) -> Result<Self, AuthError> {
                authorize(parts, state, $role).map($name)
            }
        }
    };
}

role_extractor!(
    Viewer,
    Role::Viewer,
    "A route any API key may call (`viewer` and up): every `GET`."
);
role_extractor!(
    Operator,
    Role::Operator,
    "A route that runs trials (`operator` and up): active, finish, pause, resume, step, abort, schedule, unschedule."
);
role_extractor!(
    Admin,
    Role::Admin,
    "A route for `admin` keys only: `/debug/*`, token minting, the scheduling switch."
);

/// A callback token valid for the trial in the path (SPEC §6): signature, expiry, trial,
/// revocation, and an engine (if the trial has one, in memory or in the store) that is
/// neither finished nor failed.
pub struct CallbackToken {
    pub trial: TrialId,
    pub claims: Claims,
    /// The trial's engine, if it is live; `None` if the trial has no engine.
    pub engine: Option<EngineHandle>,
}

impl FromRequestParts<AppState> for CallbackToken {
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AuthError> {
        CallbackToken::extract(parts, state, false).await
    }
}

/// A [`CallbackToken`] also taken while the trial has failed: a component's callback (slice,
/// VNF) is kept for the restore, and a token that leaked can be revoked before it.
pub struct TokenOfLiveOrFailed(pub CallbackToken);

impl FromRequestParts<AppState> for TokenOfLiveOrFailed {
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AuthError> {
        CallbackToken::extract(parts, state, true)
            .await
            .map(TokenOfLiveOrFailed)
    }
}

impl CallbackToken {
    /// The token of the request, for a trial whose engine has failed too if `of_failed`.
    async fn extract(
        parts: &mut Parts,
        state: &AppState,
        of_failed: bool,
    ) -> Result<Self, AuthError> {
        let Some(token) = presented_credential(&parts.headers) else {
            return Err(failed(parts, state, MISSING));
        };
        let identified = caller(parts, state);
        match &identified {
            Some(Actor::Key(_)) => {
                key_from_limited(parts, state)?;
                return Err(ApiError::unauthorized(WANTS_TOKEN).into());
            }
            // Held back before anything is checked, answered or written: a component in a loop
            // costs no store write and no log line but one a minute.
            Some(Actor::Callback(of)) => {
                if let Err((throttled, warn)) = state.access.note_callback(of, &token) {
                    if warn {
                        tracing::warn!(
                            trial = %of,
                            "requests with this trial's callback token come more often than auth.max_callbacks_per_minute ({}): a component in a loop? Those beyond are answered 429 and not audited",
                            throttled.per_minute
                        );
                    }
                    return Err(AuthError::TooManyCallbacks(of.clone(), throttled));
                }
            }
            None => {}
        }
        let trial = match TrialPath::from_request_parts(parts, state).await {
            Ok(TrialPath(trial)) => trial,
            // A token this service signed: the path is the caller's mistake.
            Err(e) if identified.is_some() => return Err(e.into()),
            // No token of this service: refused as a failed authentication before the path
            // counts, so a client not let in cannot have its requests written down unthrottled.
            Err(_) => {
                let why = state.tokens.decode(&token).err();
                let detail = why.unwrap_or(TokenError::Invalid).to_string();
                return Err(failed(parts, state, detail));
            }
        };
        let checked = check_token(state, &trial, &token, of_failed).await;
        // Refused with a token this service signed for this trial (revoked, or of an ended
        // trial): it may be the callback of a slice its trial did not close: made late, or
        // made twice.
        let own = matches!(&identified, Some(Actor::Callback(of)) if *of == trial);
        if checked.is_err() && own && parts.uri.path().ends_with("/callback/slice") {
            state.slice_after_the_end(&trial, &token).await;
        }
        match checked {
            Ok((claims, engine)) => Ok(CallbackToken {
                trial,
                claims,
                engine,
            }),
            Err(e) if e.status == StatusCode::UNAUTHORIZED => Err(failed(parts, state, e.detail)),
            Err(e) => Err(e.into()),
        }
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

/// Refuses (400) a trial id that is, or holds, one of the API keys or secrets (pasted into the
/// wrong field, most likely) where the id would be kept: every viewer would see it in
/// `/status`, `/trials` and the log as a trial's name.
pub(crate) fn not_a_secret(state: &AppState, id: &TrialId) -> Result<(), ApiError> {
    match state.scheduler.is_a_secret(id.as_str()) {
        true => Err(ApiError::bad_request(A_SECRET_AS_ID)),
        false => Ok(()),
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
/// 413 too large, 415 not JSON, 422 wrong shape, a field given twice included).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // Read as written, not through a map, so that a field given twice is refused rather
        // than the last one quietly taken.
        let axum::Json(raw) = axum::Json::<Box<RawValue>>::from_request(req, state)
            .await
            .map_err(json_rejection)?;
        // Serde would also take a list of the fields' values in order; only an object is a body.
        if !raw.get().trim_start().starts_with('{') {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "request body must be a JSON object",
            ));
        }
        serde_json::from_str(raw.get()).map(ApiJson).map_err(|e| {
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
            super::error::TOO_LARGE.to_owned()
        }
        other => other.body_text(),
    };
    ApiError::new(rejection.status(), detail)
}

/// The body of a route that takes none: left out, or `{}`. Anything else is refused as
/// [`ApiJson`] refuses a body (400 malformed, 413, 415 not JSON, 422 a field), and nothing
/// is done: a field the client meant something by (a reason, a flag) is not dropped quietly.
pub struct NoBody;

/// What [`NoBody`] takes: an object with no field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoFields {}

impl<S: Send + Sync> FromRequest<S> for NoBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        OptionalJson::<NoFields>::from_request(req, state).await?;
        Ok(Self)
    }
}

/// A JSON body that may be left out: an empty body is `None`; anything else must be what
/// [`ApiJson`] takes, with the same errors.
pub struct OptionalJson<T>(pub Option<T>);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        // The body limit layer bounds what is read here.
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .map_err(|_| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, super::error::TOO_LARGE))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(None));
        }
        let req = Request::from_parts(parts, axum::body::Body::from(bytes));
        let ApiJson(value) = ApiJson::<T>::from_request(req, state).await?;
        Ok(Self(Some(value)))
    }
}
