//! The audit log (SPEC §15): every request that changes something — or tried to and was
//! refused — is appended to the store: who (`actor`: the key's name, or `callback:<trial id>`
//! for a callback token; `anonymous` when no credential was recognised), with which role, what
//! (`action`: the method and route), to which trial, with what outcome (the HTTP status), and
//! from where. A handler whose change is one store write commits its entry in the same
//! transaction ([`AuditCx`]); the [`record`] layer writes every other entry once the answer is
//! known. Nothing secret is written: no credential, and of an answer only its `message` or
//! `detail` (never a minted token).
//!
//! `GET /audit` (admin) reads the log back, newest first, filtered and paginated.

use std::net::SocketAddr;

use axum::Json;
use axum::body::{Body, to_bytes};
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{FromRequestParts, MatchedPath, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ErrorBody};
use super::extract::Admin;
use super::{AppState, paging};
use crate::access::Actor;
use crate::config::ANONYMOUS_ACTOR;
use crate::domain::{TrialId, at_most};
use crate::engine::redact::REDACTED;
use crate::engine::state;
use crate::store::{AuditEntry, AuditQuery, Op};

/// The routes of this area.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

/// Marks an answer whose audit entry its handler already wrote with the change.
#[derive(Debug, Clone, Copy)]
pub struct Audited;

/// Marks an answer to a path that names nothing (the console's own not-found page): not
/// written, as a request that reaches no route is not.
#[derive(Debug, Clone, Copy)]
pub struct Unrouted;

/// The reason an answer gives, kept beside it: for its audit entry's `detail` ([`record`]
/// takes it rather than reading the answer, which a console page could not give) and for the
/// line that logs a server error. Every [`ApiError`](super::ApiError) answer carries it. It
/// is what the client is told, so it is never secret.
#[derive(Debug, Clone)]
pub struct AuditDetail(pub String);

/// The outcome an answer's audit entry records where its status does not say it: a console
/// form refused and sent back to the page it came from (a redirect, 303) is recorded with the
/// status the refusal is (400), as the API's answer would be.
#[derive(Debug, Clone, Copy)]
pub struct AuditOutcome(pub StatusCode);

/// The largest body read to find a trial id or an answer's message.
const READ_LIMIT: usize = 64 * 1024;

/// Who asks for what: enough to write the request's audit entry.
#[derive(Debug, Clone)]
pub struct AuditCx {
    actor: String,
    role: Option<String>,
    action: String,
    trial_id: Option<String>,
    remote_addr: Option<String>,
}

impl AuditCx {
    fn of(parts: &Parts, actor: Option<&Actor>) -> Self {
        let template = parts
            .extensions
            .get::<MatchedPath>()
            .map_or_else(|| parts.uri.path().to_owned(), |m| m.as_str().to_owned());
        let trial_id = trial_in_path(&template, parts.uri.path())
            .or_else(|| {
                parts.uri.query().and_then(|q| {
                    url::form_urlencoded::parse(q.as_bytes())
                        .find(|(k, _)| k == "trial_id")
                        .map(|(_, v)| v.into_owned())
                })
            })
            .map(at_most_written);
        let (actor, role) = match actor {
            Some(Actor::Key(holder)) => (holder.name.to_string(), Some(holder.role.to_string())),
            Some(actor @ Actor::Callback(_)) => (actor.to_string(), None),
            None => (ANONYMOUS_ACTOR.to_owned(), None),
        };
        Self {
            actor,
            role,
            action: format!("{} {template}", parts.method),
            trial_id,
            remote_addr: parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| addr.to_string()),
        }
    }

    /// The entry of this request with its outcome.
    pub fn entry(&self, outcome: StatusCode, detail: Option<String>) -> AuditEntry {
        AuditEntry {
            seq: 0,
            at: state::now(),
            actor: self.actor.clone(),
            role: self.role.clone(),
            action: self.action.clone(),
            trial_id: self.trial_id.clone(),
            outcome: outcome.as_u16(),
            detail: detail.map(|d| at_most(d, MAX_WRITTEN_DETAIL)),
            remote_addr: self.remote_addr.clone(),
        }
    }

    /// The same request, about `trial` (named in its body rather than its path).
    pub fn about(mut self, trial: &str) -> Self {
        self.trial_id = Some(at_most_written(trial.to_owned()));
        self
    }
}

impl FromRequestParts<AppState> for AuditCx {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        let actor = parts.extensions.get::<Actor>().cloned();
        Ok(Self::of(parts, actor.as_ref()))
    }
}

/// The most of a client's trial id an entry keeps (a valid one is at most 128 characters),
/// from the path, the query or the body: a refused request cannot make the log hold whatever
/// the client sent.
const MAX_WRITTEN_ID: usize = 200;

/// The most of a detail an entry keeps (an answer's detail is already at most
/// [`super::error::MAX_DETAIL_CHARS`]; a message read from an answer may be longer).
const MAX_WRITTEN_DETAIL: usize = super::error::MAX_DETAIL_CHARS;

/// `id` as an entry keeps it: at most [`MAX_WRITTEN_ID`] characters, `…` marking a cut.
fn at_most_written(id: String) -> String {
    at_most(id, MAX_WRITTEN_ID)
}

/// The `{trial_id}` segment of a path, by its route template, decoded as a query's is.
fn trial_in_path(template: &str, path: &str) -> Option<String> {
    template
        .split('/')
        .zip(path.split('/'))
        .find(|(t, _)| *t == "{trial_id}")
        .map(|(_, value)| {
            percent_encoding::percent_decode_str(value)
                .decode_utf8_lossy()
                .into_owned()
        })
}

/// A `message` or `detail` of a JSON body, if it has one.
pub(crate) fn said(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    ["message", "detail"]
        .iter()
        .find_map(|key| value.get(*key).and_then(Value::as_str))
        .map(str::to_owned)
}

/// Layer: writes the audit entry of every request that changes something, unless its handler
/// wrote it with the change. Runs outside the caller's identification, so it sees who it was.
///
/// Not written, because nothing was tried on anything and nobody was identified yet: requests
/// that reach no route or a route with another method (405), bodies too large to read, and
/// answers 429 (counted instead, in `lcm_requests_throttled_total`). So a client that is not
/// let in cannot fill the log.
pub async fn record(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) || request.extensions().get::<MatchedPath>().is_none()
    {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    // A trial named in the body (`POST /debug/trial/schedule`); the body goes on unchanged.
    let Ok(bytes) = to_bytes(body, state.settings.server.max_body_bytes).await else {
        return axum::response::IntoResponse::into_response(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            super::error::TOO_LARGE,
        ));
    };
    let body_trial = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v.get("trial_id").and_then(Value::as_str).map(str::to_owned));
    let describe = parts.clone();
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    if response.extensions().get::<Audited>().is_some()
        || response.extensions().get::<Unrouted>().is_some()
    {
        return response;
    }
    let mut cx = AuditCx::of(&describe, response.extensions().get::<Actor>());
    if let Some(trial) = body_trial.filter(|_| cx.trial_id.is_none()) {
        cx = cx.about(&trial);
    }
    if matches!(
        response.status(),
        StatusCode::TOO_MANY_REQUESTS | StatusCode::METHOD_NOT_ALLOWED
    ) {
        return response;
    }
    let status = (response.extensions().get::<AuditOutcome>())
        .map_or(response.status(), |outcome| outcome.0);
    let told = response
        .extensions()
        .get::<AuditDetail>()
        .map(|d| d.0.clone());
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    // Only an answer of known, small size is read: the client gets every answer whole.
    let small = http_body::Body::size_hint(response.body())
        .exact()
        .and_then(|size| usize::try_from(size).ok())
        .is_some_and(|size| size <= READ_LIMIT);
    let (response, detail) = match (is_json, small) {
        // Told already: the answer need not be read back.
        _ if told.is_some() => (response, None),
        (true, true) => {
            let (head, body) = response.into_parts();
            match to_bytes(body, READ_LIMIT).await {
                Ok(bytes) => {
                    let detail = said(&bytes);
                    (Response::from_parts(head, Body::from(bytes)), detail)
                }
                Err(e) => {
                    let mut head = head;
                    head.headers.remove(header::CONTENT_LENGTH);
                    (
                        Response::from_parts(head, Body::empty()),
                        Some(format!("the answer could not be read: {e}")),
                    )
                }
            }
        }
        (true, false) => (response, Some("answer too large to show".to_owned())),
        (false, _) => (response, None),
    };
    let mut entry = cx.entry(status, told.or(detail));
    // A refusal may quote what the client sent, and a client may paste a secret into the
    // wrong field: the log and the audit hide the configured secrets and any token in it, as
    // they do in a component's answers. A trial id is kept as it is (`?trial_id=` finds it),
    // unless it is an API key or a secret (the schedule refuses such an id).
    let redactor = state.scheduler.deps().secrets.redactor();
    entry.detail = entry.detail.map(|d| redactor.text_and_tokens(&d));
    if let Some(key) = entry.trial_id.take_if(|t| state.scheduler.is_a_secret(t)) {
        // Hidden wherever the entry names it: an answer about a trial quotes its id.
        entry.detail = entry.detail.map(|d| d.replace(&key, REDACTED));
        entry.trial_id = Some(REDACTED.to_owned());
    }
    entry.trial_id = entry.trial_id.map(|t| match TrialId::parse(&t) {
        Ok(_) => t,
        Err(_) => redactor.text_and_tokens(&t),
    });
    if status.is_client_error() {
        // A refused change (a component's callback with a bad token, a signal out of place)
        // is in the log too, for whoever looks there first.
        // What the client wrote (the trial id, the actor's name) is quoted and escaped: a line
        // break in it cannot make a line of its own.
        tracing::warn!(
            action = %entry.action,
            trial = entry.trial_id.as_deref().unwrap_or("-"),
            actor = entry.actor.as_str(),
            status = entry.outcome,
            detail = entry.detail.as_deref().unwrap_or("-"),
            "request refused"
        );
    }
    let store = &state.scheduler.deps().store;
    let op = Op::Audit(Box::new(entry));
    if status.is_success() {
        // A change answered as made has its entry committed first: it outlives a crash.
        if let Err(e) = store.write(op).await {
            tracing::warn!(error = %e, "the request's audit entry was not saved");
        }
    } else {
        store.submit(op);
    }
    response
}

/// The answer of `GET /audit`: one page of the log, newest first.
#[derive(Debug, Serialize, ToSchema)]
struct AuditPage {
    /// The page's entries, newest first.
    entries: Vec<AuditEntry>,
    /// The `cursor` of the next page; none on the last page.
    #[schema(required = true)]
    next_cursor: Option<String>,
}

fn parse_query(pairs: Vec<(String, String)>) -> Result<AuditQuery, ApiError> {
    let mut query = AuditQuery {
        limit: paging::DEFAULT_LIMIT,
        ..AuditQuery::default()
    };
    paging::once_each(&pairs, &[])?;
    for (key, value) in pairs {
        match key.as_str() {
            "trial_id" => {
                let id = crate::domain::TrialId::parse(&value)?;
                query.trial_id = Some(id.to_string());
            }
            "actor" => {
                if value.is_empty() || value.len() > 200 {
                    return Err(ApiError::bad_request(
                        "actor is a key's name or callback:<trial id>, 1 to 200 characters",
                    ));
                }
                query.actor = Some(value);
            }
            "limit" => query.limit = paging::limit(&value)?,
            "cursor" => {
                // Entries are numbered from 1: no cursor this service gave is below that.
                let seq = |text: &str| {
                    let seq = text.strip_prefix("seq:")?.parse::<i64>().ok();
                    seq.filter(|seq| *seq > 0)
                };
                query.before = Some(paging::position(&value, seq)?);
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter '{other}': use trial_id, actor, limit or cursor"
                )));
            }
        }
    }
    Ok(query)
}

/// The audit log
///
/// `{"entries": [{"seq", "at", "actor", "role", "action", "trial_id", "outcome", "detail",
/// "remote_addr"}], "next_cursor"}`, newest first: every request that changed something or
/// was refused. Query: `trial_id`, `actor` (a key's name or `callback:<trial id>`), `limit`
/// (1–500, default 50), `cursor` (the `next_cursor` of the previous page).
#[utoipa::path(
    get,
    path = "/audit",
    tag = "status",
    security(("api_key" = [])),
    params(
        ("trial_id" = Option<String>, Query, description = "Only entries about this trial"),
        ("actor" = Option<String>, Query, description = "Only entries of this key's name (or `callback:<trial id>`)", example = "alice"),
        ("limit" = Option<u32>, Query, description = "Entries per page, 1 to 500 (default 50)", minimum = 1, maximum = 500),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of the audit log", body = AuditPage),
        (status = 400, description = "An unknown parameter, a bad trial id, limit or cursor", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 403, description = "The key's role is too small: the audit log is for admin keys", body = ErrorBody),
    ),
)]
async fn list(
    _: Admin,
    State(state): State<AppState>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<AuditPage>, ApiError> {
    let query = parse_query(pairs)?;
    let limit = query.limit;
    // The entries of answers already given may still wait to ride with a write: committed
    // first, so that a client reads the entry of the request it has just been answered.
    if let Err(e) = state.scheduler.deps().store.flush().await {
        // Another row's failure: the log is read as it is.
        tracing::warn!(error = %e, "the entries waiting to be written were not, before reading the audit log");
    }
    let mut entries = state
        .scheduler
        .deps()
        .store
        .read(move |reader| reader.audit(&query))
        .await?;
    let next_cursor = (entries.len() > limit).then(|| {
        entries.truncate(limit);
        entries
            .last()
            .map(|e| paging::cursor(&format!("seq:{}", e.seq)))
    });
    Ok(Json(AuditPage {
        entries,
        next_cursor: next_cursor.flatten(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trial_comes_from_the_path_by_its_template() {
        assert_eq!(
            trial_in_path("/trial/{trial_id}/abort", "/trial/t-1/abort").as_deref(),
            Some("t-1")
        );
        assert_eq!(
            trial_in_path("/trial/scheduling", "/trial/scheduling"),
            None
        );
        assert_eq!(
            trial_in_path("/trial/{trial_id}/abort", "/trial/a%2Fb%20c/abort").as_deref(),
            Some("a/b c")
        );
    }

    #[test]
    fn a_clients_trial_id_is_kept_up_to_two_hundred_characters() {
        assert_eq!(at_most_written("t-1".into()), "t-1");
        let long = "é".repeat(20_000);
        let kept = at_most_written(long);
        assert_eq!(kept.chars().count(), MAX_WRITTEN_ID);
        assert!(kept.ends_with('…'));
    }

    #[test]
    fn only_a_message_or_a_detail_is_kept_of_an_answer() {
        assert_eq!(said(br#"{"message": "done"}"#).as_deref(), Some("done"));
        assert_eq!(said(br#"{"detail": "no"}"#).as_deref(), Some("no"));
        assert_eq!(said(br#"{"Authorization": "eyJ.token"}"#), None);
        assert_eq!(said(b"not json"), None);
    }
}
