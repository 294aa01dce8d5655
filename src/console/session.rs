//! Signing in and out, the session a sign-in opens, and the checks every console `POST`
//! passes: a live session, its CSRF token, and an `Origin` (or `Referer`) of this service.
//!
//! A session is a random id (256 bits from the operating system) in a cookie that scripts
//! cannot read (`HttpOnly`), that no other site's page or form sends (`SameSite=Strict`),
//! scoped to `/ui`, and `Secure` when `server.public_url` is https. The server keeps, per id,
//! the key holder (name and role), the SHA-256 of the key (so a reload that removes or
//! changes the key ends the session), a CSRF token, the expiry, and a message to show once.
//! The key itself is kept nowhere.
//!
//! A page asked for without a session sends to the sign-in with its address (`?next=`), and
//! the sign-in lands there; only a page of the console is taken (`return_to`), so the
//! sign-in cannot be used to send anyone elsewhere.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{
    ConnectInfo, FromRequest, FromRequestParts, OptionalFromRequestParts, RawQuery, Request,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, extract::State};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cookie::{Cookie, SameSite};
use maud::html;
use subtle::ConstantTimeEq;

use super::Console;
use super::layout;
use crate::access::{Actor, KeyHolder, TooManyFailures};
use crate::api::AppState;
use crate::api::audit::AuditDetail;
use crate::api::extract::{client_ip, cookie_value, retry_after_secs};
use crate::config::{NamedKey, Role};

/// The session cookie's name.
pub const COOKIE: &str = "lcm_session";
/// How long a session lasts from its sign-in.
pub const LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// The most sessions kept at once; beyond it the oldest of the key that holds the most ends.
const MAX_SESSIONS: usize = 10_000;
/// The most sessions one key holds; beyond it that key's oldest ends.
const MAX_SESSIONS_PER_KEY: usize = 1_000;

/// A message shown once, on the next page the session opens.
#[derive(Debug, Clone)]
pub struct Flash {
    pub ok: bool,
    pub text: String,
}

/// What was typed in a form the console refused, given back to fill the form in again on the
/// next page (only that one), so nothing has to be typed twice.
#[derive(Debug, Clone)]
pub struct Typed {
    /// Which form: its `action`.
    pub form: &'static str,
    fields: Vec<(String, String)>,
}

impl Typed {
    /// The longest value kept of a field: more than any valid one, and a bound on memory.
    const MAX_VALUE: usize = 256;

    /// The fields `names` of `form` (those that were filled in), each cut to a bounded length.
    pub fn of(form: &'static str, fields: &FormFields, names: &[&str]) -> Self {
        let fields = names
            .iter()
            .filter_map(|name| {
                let value: String = fields.get(name)?.chars().take(Self::MAX_VALUE).collect();
                Some(((*name).to_owned(), value))
            })
            .collect();
        Self { form, fields }
    }

    /// Forgets every value `secret` says must not be shown again.
    pub fn forget_where(&mut self, secret: impl Fn(&str) -> bool) {
        self.fields.retain(|(_, value)| !secret(value));
    }

    /// The value typed in field `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

struct Session {
    holder: KeyHolder,
    key_sha256: [u8; 32],
    csrf: String,
    expires: Instant,
    flash: Option<Flash>,
    typed: Option<Typed>,
}

/// Every open session, by id.
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    /// Sessions' cookies are `Secure` (the service is reached over https).
    secure: bool,
    /// [`MAX_SESSIONS`] and [`MAX_SESSIONS_PER_KEY`] (smaller in tests).
    max: (usize, usize),
}

/// 256 random bits, URL-safe: a session id or a CSRF token.
fn random_token() -> Option<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).ok()?;
    Some(URL_SAFE_NO_PAD.encode(bytes))
}

impl Sessions {
    /// No sessions yet; `secure` marks the cookies `Secure`.
    pub fn new(secure: bool) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            secure,
            max: (MAX_SESSIONS, MAX_SESSIONS_PER_KEY),
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a session for the holder of the key `key_sha256`; its id, or `None` if the
    /// operating system gave no randomness.
    fn open(&self, holder: KeyHolder, key_sha256: [u8; 32]) -> Option<String> {
        let id = random_token()?;
        let csrf = random_token()?;
        let now = Instant::now();
        let mut map = self.map();
        map.retain(|_, s| s.expires > now);
        // Whoever signs in often ends their own sessions, never those of a key that holds
        // fewer: a viewer signing in again and again cannot sign an admin out.
        let mut held: HashMap<[u8; 32], usize> = HashMap::new();
        for session in map.values() {
            *held.entry(session.key_sha256).or_default() += 1;
        }
        let (max, max_per_key) = self.max;
        let ending = if held.get(&key_sha256) >= Some(&max_per_key) {
            Some(key_sha256)
        } else if map.len() >= max {
            held.into_iter()
                .max_by_key(|(_, count)| *count)
                .map(|(key, _)| key)
        } else {
            None
        };
        if let Some(key) = ending
            && let Some(oldest) = map
                .iter()
                .filter(|(_, s)| s.key_sha256 == key)
                .min_by_key(|(_, s)| s.expires)
                .map(|(id, _)| id.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            id.clone(),
            Session {
                holder,
                key_sha256,
                csrf,
                expires: now + LIFETIME,
                flash: None,
                typed: None,
            },
        );
        Some(id)
    }

    fn close(&self, id: &str) {
        self.map().remove(id);
    }

    /// Keeps a message for the session's next page.
    fn flash(&self, id: &str, flash: Flash) {
        if let Some(session) = self.map().get_mut(id) {
            session.flash = Some(flash);
        }
    }

    /// Takes the session's message, if it has one. What was typed, kept with it, is for the
    /// page that shows the message: it goes too.
    fn take_flash(&self, id: &str) -> Option<Flash> {
        let mut map = self.map();
        let session = map.get_mut(id)?;
        session.typed = None;
        session.flash.take()
    }

    /// Keeps what was typed in a refused form for the session's next page.
    fn keep_typed(&self, id: &str, typed: Typed) {
        if let Some(session) = self.map().get_mut(id) {
            session.typed = Some(typed);
        }
    }

    /// Takes what was typed in a refused form, if the session kept it.
    fn take_typed(&self, id: &str) -> Option<Typed> {
        self.map().get_mut(id).and_then(|s| s.typed.take())
    }

    /// The cookie that carries session `id`.
    fn cookie(&self, id: String) -> Cookie<'static> {
        Cookie::build((COOKIE, id))
            .http_only(true)
            .same_site(SameSite::Strict)
            .path("/ui")
            .secure(self.secure)
            .max_age(cookie::time::Duration::seconds(LIFETIME.as_secs() as i64))
            .build()
    }

    /// The cookie that removes the session cookie.
    fn removal(&self) -> Cookie<'static> {
        let mut cookie = self.cookie(String::new());
        cookie.make_removal();
        cookie
    }
}

/// A request of a signed-in person: the session's id, key holder and CSRF token.
#[derive(Clone)]
pub struct Signed {
    pub id: String,
    pub holder: KeyHolder,
    pub csrf: String,
    pub console: Arc<Console>,
}

impl Signed {
    /// The key holder as the API and the audit log know them.
    pub fn actor(&self) -> Actor {
        Actor::Key(self.holder.clone())
    }

    /// Whether the session's role is at least `role`.
    pub fn may(&self, role: Role) -> bool {
        self.holder.role >= role
    }

    /// Keeps a message for the next page.
    pub fn flash(&self, ok: bool, text: impl Into<String>) {
        self.console.sessions.flash(
            &self.id,
            Flash {
                ok,
                text: text.into(),
            },
        );
    }

    /// Takes the message kept for this page.
    pub fn take_flash(&self) -> Option<Flash> {
        self.console.sessions.take_flash(&self.id)
    }

    /// Keeps what was typed in a refused form for the next page (with its message, see
    /// [`Signed::flash`]).
    pub fn keep_typed(&self, typed: Typed) {
        self.console.sessions.keep_typed(&self.id, typed);
    }

    /// Takes what was typed in a refused form, kept for this page (before the page's shell
    /// takes its message, which ends it).
    pub fn take_typed(&self) -> Option<Typed> {
        self.console.sessions.take_typed(&self.id)
    }

    /// Whether the session still holds: not signed out, not expired, its key still in force.
    pub fn holds(&self, state: &AppState) -> bool {
        in_force(&self.console, &self.id, state).is_some()
    }
}

fn console_of(parts: &Parts) -> Option<Arc<Console>> {
    parts.extensions.get::<Arc<Console>>().cloned()
}

/// The session of this request, if it has a live one whose key is still in force.
fn signed(parts: &Parts, state: &AppState) -> Option<Signed> {
    let console = console_of(parts)?;
    let id = cookie_value(&parts.headers, COOKIE)?;
    let (holder, csrf) = in_force(&console, &id, state)?;
    Some(Signed {
        id,
        holder,
        csrf,
        console,
    })
}

/// The key holder and CSRF token of session `id`, if it has not ended, expired or lost its
/// key (an ended one is forgotten).
fn in_force(console: &Console, id: &str, state: &AppState) -> Option<(KeyHolder, String)> {
    let mut map = console.sessions.map();
    let session = map.get(id)?;
    let key_in_force = state
        .access
        .key_holder_by_digest(&session.key_sha256)
        .is_some_and(|holder| holder == session.holder);
    if session.expires <= Instant::now() || !key_in_force {
        map.remove(id);
        return None;
    }
    Some((session.holder.clone(), session.csrf.clone()))
}

/// Where a sign-in lands when no other page was asked for.
const LANDING: &str = "/ui/trials";
/// The longest page address carried through a sign-in.
const MAX_RETURN: usize = 2048;

/// `next`, if it is a page of the console to go to after signing in: a path under `/ui/`
/// (with its query), in printable ASCII, with no backslash, no `//` and no dot segment, so
/// that it names no other site or scheme, leaves `/ui/` by no route, and splits no header.
fn return_to(next: &str) -> Option<&str> {
    let path = next.split('?').next().unwrap_or_default();
    // Browsers take `%2e` for a dot in a path's segments as well.
    let dot_segment = path.split('/').any(|segment| {
        let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
        decoded == "." || decoded == ".."
    });
    let page = path.starts_with("/ui/")
        && next.len() <= MAX_RETURN
        && next.bytes().all(|b| b.is_ascii_graphic() && b != b'\\')
        && !next.contains("//")
        && !dot_segment;
    page.then_some(next)
}

/// Without a session: pages send the person to sign in (and back to the page asked for
/// after); anything else is refused, with a sign-in link back to the page it was sent from
/// (a form sent from a page left open while the session ended, by a restart say).
pub struct SignInFirst {
    /// The page asked for (path and query), if the request was for a page.
    page: Option<String>,
    /// The page the request was sent from (its `Referer`'s path and query), if not a page.
    sent_from: Option<String>,
}

/// The page a request was sent from: its `Referer`'s path and query.
fn sent_from(parts: &Parts) -> Option<String> {
    let referer = parts.headers.get(axum::http::header::REFERER)?;
    let url = url::Url::parse(referer.to_str().ok()?).ok()?;
    Some(match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    })
}

/// The sign-in page's address, coming back to `page` once signed in if it is a page of the
/// console other than the landing one.
fn sign_in_to(page: Option<&str>) -> String {
    match page.and_then(return_to).filter(|page| *page != LANDING) {
        Some(page) => {
            let query = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("next", page)
                .finish();
            format!("/ui/?{query}")
        }
        None => "/ui/".to_owned(),
    }
}

impl IntoResponse for SignInFirst {
    fn into_response(self) -> Response {
        if let Some(page) = self.page {
            return Redirect::to(&sign_in_to(Some(&page))).into_response();
        }
        layout::error_page_signing_in_to(
            None,
            StatusCode::UNAUTHORIZED,
            "You are not signed in (or your session ended): sign in again.",
            &sign_in_to(self.sent_from.as_deref()),
        )
        .into_response()
    }
}

impl FromRequestParts<AppState> for Signed {
    type Rejection = SignInFirst;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, SignInFirst> {
        signed(parts, state).ok_or_else(|| {
            let page =
                parts.method == axum::http::Method::GET && !parts.uri.path().ends_with("/live");
            SignInFirst {
                page: page.then(|| {
                    parts
                        .uri
                        .path_and_query()
                        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned())
                }),
                sent_from: sent_from(parts),
            }
        })
    }
}

impl OptionalFromRequestParts<AppState> for Signed {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(signed(parts, state))
    }
}

/// Whether the request says it comes from a page of this service: its `Origin` (or, if a
/// browser sent none, its `Referer`) names the host the request was sent to, or the origin
/// of `server.public_url`.
fn same_origin(headers: &HeaderMap, public_url: &str) -> bool {
    let source = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| url::Url::parse(v).ok());
    let Some(source) = source else {
        return false;
    };
    let origin = source.origin().ascii_serialization();
    if url::Url::parse(public_url).is_ok_and(|u| u.origin().ascii_serialization() == origin) {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let authority = match (source.host_str(), source.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        (None, _) => return false,
    };
    host.is_some_and(|host| host.eq_ignore_ascii_case(&authority))
}

/// The fields of a submitted form.
#[derive(Debug, Default)]
pub struct FormFields(Vec<(String, String)>);

impl FormFields {
    /// The field's value, trimmed; `None` if absent or blank.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }
}

/// Why a console `POST` was refused before it did anything.
pub struct Refused {
    signed: Option<Signed>,
    status: StatusCode,
    text: &'static str,
    /// Where its "Sign in" link goes, without a session.
    sign_in: String,
    /// Seconds to wait before trying again (a 429's `Retry-After`).
    retry_after: Option<u64>,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let mut response = layout::error_page_signing_in_to(
            self.signed.as_ref(),
            self.status,
            self.text,
            &self.sign_in,
        )
        .into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        // The audit log names who was refused, when the session says.
        if let Some(signed) = self.signed {
            response.extensions_mut().insert(signed.actor());
        }
        response
    }
}

/// A checked console `POST`: a live session, this service's origin, the session's CSRF
/// token, and the form's fields.
pub struct Post {
    pub signed: Signed,
    pub form: FormFields,
    /// The client's address, for the audit entry of what the form asks for.
    pub client: Option<ConnectInfo<SocketAddr>>,
}

impl Post {
    /// `response`, audited under the session's key (a refusal or a redirect the handler gives
    /// itself, with no API call to audit it).
    pub fn audited(&self, mut response: Response) -> Response {
        response.extensions_mut().insert(self.signed.actor());
        response
    }

    /// The console's error page saying `text`, audited under the session's key.
    pub fn refused(&self, status: StatusCode, text: &str) -> Response {
        self.audited(layout::error_page(Some(&self.signed), status, text))
    }
}

impl FromRequest<AppState> for Post {
    type Rejection = Refused;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Refused> {
        let (parts, body) = request.into_parts();
        // Without a session, the sign-in comes back to the page the form was sent from.
        let sign_in = sign_in_to(sent_from(&parts).as_deref());
        let refuse = |signed: Option<Signed>, status, text| Refused {
            signed,
            status,
            text,
            sign_in: sign_in.clone(),
            retry_after: None,
        };
        let signed = signed(&parts, state);
        let Some(signed) = signed else {
            // A form without a session is a failed authentication of its sender's address, as
            // a request without a key is at the API: counted, so that a client not let in
            // cannot write to the audit log unthrottled.
            return Err(
                match state.access.note_failure(client_ip(&parts.extensions)) {
                    Ok(()) => refuse(
                        None,
                        StatusCode::UNAUTHORIZED,
                        "You are not signed in (or your session ended): sign in again.",
                    ),
                    Err(TooManyFailures { retry_after }) => Refused {
                        retry_after: Some(retry_after_secs(retry_after)),
                        ..refuse(
                            None,
                            StatusCode::TOO_MANY_REQUESTS,
                            "Too many failed authentications from this address: wait a minute, then sign in again.",
                        )
                    },
                },
            );
        };
        if !same_origin(&parts.headers, &state.settings.server.public_url) {
            return Err(refuse(
                Some(signed),
                StatusCode::FORBIDDEN,
                "This form did not come from a page of this console (its Origin is another site's, or missing), so it was not acted on.",
            ));
        }
        let bytes = axum::body::to_bytes(body, super::MAX_FORM_BYTES)
            .await
            .map_err(|_| {
                refuse(
                    Some(signed.clone()),
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "The form is too large.",
                )
            })?;
        let form = FormFields(
            url::form_urlencoded::parse(&bytes)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        );
        let token_ok = form
            .get("csrf")
            .is_some_and(|t| bool::from(t.as_bytes().ct_eq(signed.csrf.as_bytes())));
        if !token_ok {
            return Err(refuse(
                Some(signed),
                StatusCode::FORBIDDEN,
                "This form's security token is missing or stale (open the page again and resubmit), so it was not acted on.",
            ));
        }
        let client = parts.extensions.get::<ConnectInfo<SocketAddr>>().cloned();
        Ok(Post {
            signed,
            form,
            client,
        })
    }
}

/// The `next` field of a query or a form: the page to land on after signing in.
fn next_of(pairs: &[u8]) -> Option<String> {
    url::form_urlencoded::parse(pairs)
        .find(|(k, _)| k == "next")
        .map(|(_, v)| v.into_owned())
}

/// `GET /ui/` (`?next=` the page asked for): the sign-in page, or, for a signed-in person, the
/// page asked for (the trials page if none).
pub async fn front(signed: Option<Signed>, RawQuery(query): RawQuery) -> Response {
    let next = query.and_then(|q| next_of(q.as_bytes()));
    let next = next.as_deref().and_then(return_to);
    if signed.is_some() {
        return Redirect::to(next.unwrap_or(LANDING)).into_response();
    }
    sign_in_page(StatusCode::OK, None, next)
}

/// The sign-in page, saying `problem` if there is one, and carrying the page to land on.
fn sign_in_page(status: StatusCode, problem: Option<&str>, next: Option<&str>) -> Response {
    let body = html! {
        section.sign-in aria-labelledby="sign-in-title" {
            h1 #sign-in-title { "Sign in" }
            p { "Sign in with your API key. Its role decides what you can do here: a "
                strong { "viewer" } " sees everything, an " strong { "operator" }
                " also runs trials, an " strong { "admin" } " also restores, skips and deletes." }
            @if let Some(problem) = problem {
                p.flash.error role="alert" { span aria-hidden="true" { "✕ " } (problem) }
            }
            form method="post" action="/ui/sign-in" {
                @if let Some(next) = next.and_then(return_to) {
                    input type="hidden" name="next" value=(next);
                }
                label for="key" { "API key" }
                input #key type="password" name="key" autocomplete="current-password" required autofocus;
                button type="submit" { "Sign in" }
            }
            p.hint { "The key is checked once and never stored: the console keeps a session instead, for "
                (LIFETIME.as_secs() / 3600) " hours or until you sign out." }
        }
    };
    let mut response = layout::respond(status, layout::shell("Sign in", None, None, None, body));
    // The audit entry of a refused sign-in says why (never the key).
    if let Some(problem) = problem {
        response
            .extensions_mut()
            .insert(AuditDetail(problem.to_owned()));
    }
    response
}

/// `POST /ui/sign-in`: a key opens a session. A wrong key counts as a failed authentication
/// of the client's address, like one sent to the API.
pub async fn sign_in(
    State(state): State<AppState>,
    Extension(console): Extension<Arc<Console>>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    if !same_origin(&parts.headers, &state.settings.server.public_url) {
        return sign_in_page(
            StatusCode::FORBIDDEN,
            Some("This sign-in did not come from the console's own page."),
            None,
        );
    }
    let Ok(bytes) = axum::body::to_bytes(body, super::MAX_FORM_BYTES).await else {
        return sign_in_page(
            StatusCode::PAYLOAD_TOO_LARGE,
            Some("The form is too large."),
            None,
        );
    };
    let key = url::form_urlencoded::parse(&bytes)
        .find(|(k, _)| k == "key")
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let next = next_of(&bytes);
    let next = next.as_deref().and_then(return_to);
    let holder = (!key.is_empty())
        .then(|| state.access.key_holder(&key))
        .flatten();
    let addr = client_ip(&parts.extensions);
    let holder = match holder {
        // A right key from an address refused for failing too often is refused like a wrong
        // one, so the answer tells a guesser nothing.
        Some(holder) => match state.access.limited(addr) {
            None => holder,
            Some(limited) => return too_many_sign_ins(limited, next),
        },
        None => {
            return match state.access.note_failure(addr) {
                Ok(()) => sign_in_page(
                    StatusCode::UNAUTHORIZED,
                    Some("That is not a key of this service."),
                    next,
                ),
                Err(limited) => too_many_sign_ins(limited, next),
            };
        }
    };
    let Some(id) = console
        .sessions
        .open(holder.clone(), NamedKey::digest(&key))
    else {
        return layout::error_page(
            None,
            StatusCode::SERVICE_UNAVAILABLE,
            "No session could be opened: the system gave no random numbers. Try again.",
        )
        .into_response();
    };
    let cookie = console.sessions.cookie(id);
    let mut response = Redirect::to(next.unwrap_or(LANDING)).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie.to_string()) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response.extensions_mut().insert(Actor::Key(holder));
    response
}

/// The sign-in page refusing an address that failed too often, as the API says it.
fn too_many_sign_ins(
    TooManyFailures { retry_after }: TooManyFailures,
    next: Option<&str>,
) -> Response {
    let secs = retry_after_secs(retry_after);
    let mut response = sign_in_page(
        StatusCode::TOO_MANY_REQUESTS,
        Some(&format!(
            "Too many failed sign-ins from this address: try again in {secs} s."
        )),
        next,
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

/// `POST /ui/sign-out`: ends the session and removes its cookie.
pub async fn sign_out(post: Post) -> Response {
    let sessions = &post.signed.console.sessions;
    sessions.close(&post.signed.id);
    let mut response = Redirect::to("/ui/").into_response();
    if let Ok(value) = HeaderValue::from_str(&sessions.removal().to_string()) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    post.audited(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn signing_in_again_and_again_ends_only_the_key_s_own_sessions() {
        let (max, max_per_key) = (20, 5);
        let sessions = Sessions {
            max: (max, max_per_key),
            ..Sessions::new(false)
        };
        let holder = |name: &str, role| KeyHolder {
            name: name.into(),
            role,
        };
        let admin = sessions
            .open(holder("admin", Role::Admin), [1; 32])
            .unwrap();
        let viewer = |n: u8| holder(&format!("viewer-{n}"), Role::Viewer);
        let first = sessions.open(viewer(2), [2; 32]).unwrap();
        for _ in 0..max_per_key {
            sessions.open(viewer(2), [2; 32]).unwrap();
        }
        let count = |key: [u8; 32]| {
            let map = sessions.map();
            map.values().filter(|s| s.key_sha256 == key).count()
        };
        assert_eq!(count([2; 32]), max_per_key);
        assert!(!sessions.map().contains_key(&first), "its own oldest ended");
        // Full: the key holding the most gives way, not the admin's one session.
        for n in 3..12 {
            for _ in 0..max_per_key {
                sessions.open(viewer(n), [n; 32]).unwrap();
            }
        }
        assert_eq!(sessions.map().len(), max);
        assert!(
            sessions.map().contains_key(&admin),
            "the admin is still signed in"
        );
    }

    #[test]
    fn a_post_must_come_from_this_service() {
        let public = "http://lcm.example:5000";
        let ok = |h: &[(&'static str, &str)]| same_origin(&headers(h), public);
        assert!(ok(&[
            ("origin", "http://127.0.0.1:5000"),
            ("host", "127.0.0.1:5000")
        ]));
        assert!(ok(&[
            ("origin", "http://lcm.example:5000"),
            ("host", "10.0.0.1")
        ]));
        assert!(ok(&[
            ("referer", "http://127.0.0.1:5000/ui/trials"),
            ("host", "127.0.0.1:5000")
        ]));
        assert!(!ok(&[
            ("origin", "http://evil.example"),
            ("host", "127.0.0.1:5000")
        ]));
        assert!(!ok(&[
            ("origin", "http://127.0.0.1:5001"),
            ("host", "127.0.0.1:5000")
        ]));
        assert!(!ok(&[("origin", "null"), ("host", "127.0.0.1:5000")]));
        assert!(!ok(&[("host", "127.0.0.1:5000")]));
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_scoped() {
        let plain = Sessions::new(false).cookie("abc".into()).to_string();
        assert!(plain.contains("HttpOnly"), "{plain}");
        assert!(plain.contains("SameSite=Strict"), "{plain}");
        assert!(plain.contains("Path=/ui"), "{plain}");
        assert!(!plain.contains("Secure"), "{plain}");
        let secure = Sessions::new(true).cookie("abc".into()).to_string();
        assert!(secure.contains("Secure"), "{secure}");
    }

    #[test]
    fn a_sign_in_returns_only_to_a_page_of_the_console() {
        for page in [
            "/ui/trials/t1",
            "/ui/trials?status=Failed&q=t",
            "/ui/schedule",
        ] {
            assert_eq!(return_to(page), Some(page), "{page}");
        }
        for elsewhere in [
            "",
            "/",
            "/ui",
            "/uix/trials",
            "/status",
            "https://evil.example/ui/",
            "//evil.example/ui/",
            "/ui//evil.example",
            "/\\evil.example/ui/",
            "/ui/\\..\\status",
            "/ui/../status",
            "/ui/%2e%2e/status",
            "/ui/%2E./status",
            "/ui/trials\r\nSet-Cookie: x=1",
            "/ui/trials t1",
            "/ui/trials/é",
        ] {
            assert_eq!(return_to(elsewhere), None, "{elsewhere:?}");
        }
        assert_eq!(return_to(&format!("/ui/{}", "a".repeat(MAX_RETURN))), None);
    }

    #[test]
    fn session_ids_are_long_and_fresh() {
        let a = random_token().unwrap();
        let b = random_token().unwrap();
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
    }
}
