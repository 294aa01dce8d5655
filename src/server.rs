//! The HTTP/1 serve loop: hyper connections with the limits SPEC §15 asks for against hostile
//! or broken clients, which `axum::serve` does not have.
//!
//! Each connection is one task that polls hyper's connection next to a small watch of where
//! the connection stands:
//!
//! - **waiting for a request head** — from the moment the connection opens, and on a
//!   keep-alive connection from the first byte of the next head: the head must be complete
//!   within `server.header_read_timeout_secs` (slowloris) and fit in [`MAX_HEAD_BYTES`];
//! - **busy** — from the moment hyper hands a request to the router until the response body
//!   has been taken whole: no timer, the handlers have their own;
//! - **idle** — between requests on a keep-alive connection: closed after
//!   `server.idle_timeout_secs`.
//!
//! hyper's own `header_read_timeout` cannot tell the idle wait from the head read (it runs
//! from the end of one response to the end of the next head), so it is off and the watch does
//! both. A write the client does not take for `server.idle_timeout_secs` (a client that stopped
//! reading) also closes the connection.
//!
//! At most `server.max_connections` connections are open: beyond that the loop stops
//! accepting, so new connections wait in the listen backlog while open ones carry on. A
//! request whose handling outlives its connection keeps the connection's place
//! ([`ConnectionSlot`]) until it ends. At
//! shutdown the listener closes, connections between requests close at once, those with a
//! request in flight finish it (without keep-alive), and whatever is still open
//! `server.shutdown_grace_secs` after the stop began is dropped.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, error, info, warn};

use crate::api::error::ErrorBody;
use crate::config::ServerSettings;
use crate::deadline::sleep_until;

/// The largest request head (request line and header fields) the service reads; a larger one
/// is answered 431 and the connection closed.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The most header fields a request head may have (hyper's own limit, which it would answer
/// with a bare 431): one with more is answered 431 here, as JSON, before hyper reads it.
const MAX_HEADER_FIELDS: usize = 100;

/// How long a refused connection gets to take its error answer before it is closed.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

/// How long to wait before accepting again after the listener failed (out of file
/// descriptors, say), so a persistent failure does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// The connection limits, from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a request head may take to arrive whole.
    pub header_read_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request, and a write for the
    /// client to take it.
    pub idle_timeout: Duration,
    /// Open connections at most.
    pub max_connections: usize,
    /// How long requests in flight get at shutdown.
    pub shutdown_grace: Duration,
}

impl From<&ServerSettings> for Limits {
    fn from(server: &ServerSettings) -> Self {
        Self {
            header_read_timeout: Duration::from_secs(server.header_read_timeout_secs),
            idle_timeout: Duration::from_secs(server.idle_timeout_secs),
            max_connections: server.max_connections,
            shutdown_grace: Duration::from_secs(server.shutdown_grace_secs),
        }
    }
}

/// How long requests still have once the stop's own work ended, however late it did.
const LAST_ANSWERS: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` until `shutdown` completes, then drains the open connections
/// and waits for the requests still being handled (`handlers`: a request's handling may
/// outlive its connection), both within `limits.shutdown_grace` of the instant `shutdown`
/// returns: when the stop began, so the whole stop, `shutdown`'s own work included, takes
/// one grace (or [`LAST_ANSWERS`] after that work, if it took longer). Handlers see the
/// client's address as [`ConnectInfo<SocketAddr>`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    handlers: TaskTracker,
    shutdown: impl Future<Output = Instant>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let draining = CancellationToken::new();
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let stop_began = loop {
        // Beyond the cap nothing is accepted: a new connection waits in the listen backlog
        // until an open one closes, and the open ones are served meanwhile.
        let permit = tokio::select! {
            biased;
            began = &mut shutdown => break began,
            permit = slots.clone().acquire_owned() => permit,
        };
        let Ok(permit) = permit else {
            break shutdown.await;
        };
        let (stream, peer) = tokio::select! {
            biased;
            began = &mut shutdown => break began,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        // Answers are small and written whole: send them without waiting for more.
        if let Err(e) = stream.set_nodelay(true) {
            debug!(%peer, "cannot set TCP_NODELAY: {e}");
        }
        connections.spawn(serve_connection(
            stream,
            peer,
            router.clone(),
            limits,
            draining.clone(),
            permit,
        ));
        // Finished connections leave the set here, so it holds only open ones.
        while connections.try_join_next().is_some() {}
    };
    // New connections are refused from here on.
    drop(listener);
    draining.cancel();
    // A request the stop's own work held (an abort waiting for an answer in flight, told 503
    // once it ends) gets a moment to be answered even when that work took the whole grace.
    let last_answers = LAST_ANSWERS.min(limits.shutdown_grace);
    let deadline = (stop_began + limits.shutdown_grace).max(Instant::now() + last_answers);
    let drained = tokio::time::timeout_at(deadline, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            open = connections.len(),
            grace_secs = limits.shutdown_grace.as_secs(),
            "connections still open after server.shutdown_grace_secs: closing them"
        );
        connections.shutdown().await;
    }
    info!("every connection closed");
    handlers.close();
    if tokio::time::timeout_at(deadline, handlers.wait())
        .await
        .is_err()
    {
        warn!(
            requests = handlers.len(),
            "requests still being handled after server.shutdown_grace_secs: what they change or audit from now on may not be saved"
        );
    }
}

async fn accept_failed(e: io::Error) {
    // A connection reset before it was accepted concerns only that client.
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    error!("cannot accept a connection: {e}");
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}

/// A connection's place among the `server.max_connections`, in each of its requests'
/// extensions: a request's handling that goes on after its connection closed (its caller hung
/// up) keeps the place until it ends, so such requests count against the cap too and cannot
/// pile up.
#[derive(Clone)]
pub struct ConnectionSlot {
    _permit: Arc<OwnedSemaphorePermit>,
}

impl ConnectionSlot {
    /// The place `permit` holds, shared by the connection and its requests.
    pub fn new(permit: OwnedSemaphorePermit) -> Self {
        Self {
            _permit: Arc::new(permit),
        }
    }
}

/// Serves one connection until it ends, a limit closes it, or shutdown drains it. Holds its
/// slot until then, and each request's handling holds it too.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: Limits,
    draining: CancellationToken,
    permit: OwnedSemaphorePermit,
) {
    let slot = ConnectionSlot::new(permit);
    let watch = Arc::new(Watch::new(limits));
    let service = {
        let watch = watch.clone();
        hyper::service::service_fn(move |mut request: Request<Incoming>| {
            let busy = watch.request_started();
            request.extensions_mut().insert(ConnectInfo(peer));
            request.extensions_mut().insert(slot.clone());
            let response = router.clone().oneshot(request);
            async move {
                let Ok(response) = response.await;
                Ok::<_, Infallible>(response.map(|body| Tracked { body, _busy: busy }))
            }
        })
    };
    let io = TokioIo::new(Guarded {
        stream,
        watch: watch.clone(),
    });
    let mut connection = http1::Builder::new()
        // The watch times the head read and the idle wait apart (see the module docs).
        .header_read_timeout(None)
        .serve_connection(io, service);
    let mut draining_started = false;
    loop {
        let deadline = watch.deadline();
        tokio::select! {
            result = &mut connection => {
                if let Err(e) = result {
                    debug!(%peer, "connection ended: {e}");
                }
                return;
            }
            () = watch.changed.notified() => {}
            () = sleep_until(deadline) => {}
            () = draining.cancelled(), if !draining_started => {
                draining_started = true;
                if !watch.is_busy() {
                    return;
                }
                // hyper finishes the response in flight, without keep-alive, then closes.
                Pin::new(&mut connection).graceful_shutdown();
            }
        }
        let Some(verdict) = watch.verdict(Instant::now()) else {
            continue;
        };
        let refusal = match verdict {
            Verdict::HeadTooLarge => Some((
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!(
                    "the request head (request line and header fields) is larger than {MAX_HEAD_BYTES} bytes"
                ),
            )),
            Verdict::TooManyFields => Some((
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("the request head has more than {MAX_HEADER_FIELDS} header fields"),
            )),
            Verdict::Malformed(why) => Some((
                StatusCode::BAD_REQUEST,
                format!("the request head is not valid HTTP/1.1: {why}"),
            )),
            Verdict::HeadTimeout { started: true } => Some((
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request head did not arrive within {} s (server.header_read_timeout_secs)",
                    limits.header_read_timeout.as_secs()
                ),
            )),
            // Nothing was asked: there is no one to answer.
            Verdict::HeadTimeout { started: false } | Verdict::Idle | Verdict::WriteStalled => None,
        };
        match &refusal {
            Some((status, detail)) => debug!(
                %peer,
                status = status.as_u16(),
                "closing the connection, the request refused before it reached the service: {detail}"
            ),
            None => debug!(%peer, ?verdict, "closing the connection"),
        }
        if let Some((status, detail)) = refusal {
            // No request is in flight (the head never completed), so hyper has nothing left to
            // write and the socket can be taken back to answer on it.
            let Guarded { stream, .. } = connection.into_parts().io.into_inner();
            refuse(stream, status, detail).await;
        }
        return;
    }
}

/// Answers `status` with a `{"detail"}` body on a connection whose request never reached the
/// router, and closes it.
async fn refuse(mut stream: TcpStream, status: StatusCode, detail: String) {
    let body = serde_json::to_string(&ErrorBody { detail }).unwrap_or_default();
    let answer = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default(),
        body.len(),
    );
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the client is still sending (the rest of an oversized head): closing with
        // unread data would reset the connection before the client has read the answer.
        let mut sink = vec![0; 16 * 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}

/// Why a connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// The head outgrew [`MAX_HEAD_BYTES`].
    HeadTooLarge,
    /// The head has more than [`MAX_HEADER_FIELDS`] header fields.
    TooManyFields,
    /// The head is not HTTP/1.1 (what is wrong with it).
    Malformed(Malformed),
    /// The head was not complete in time; `started` if any of it had arrived.
    HeadTimeout { started: bool },
    /// No request came within the idle timeout.
    Idle,
    /// The client has not taken what was written for the idle timeout.
    WriteStalled,
}

/// Where a connection stands.
#[derive(Debug, Clone, Copy)]
enum Stage {
    /// Waiting for a request head since `since`; `bytes` of it read so far.
    Head { since: Instant, bytes: usize },
    /// Requests in the router, or responses not yet taken whole by hyper.
    Busy { requests: usize },
    /// Between requests since `since`.
    Idle { since: Instant },
}

/// What is wrong with a head that is not HTTP/1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Malformed {
    /// It does not parse.
    Parse(httparse::Error),
    /// Its request target is not a URI.
    Target,
    /// Its `Content-Length` is not one number.
    ContentLength,
    /// Its `Transfer-Encoding` cannot frame a body.
    TransferEncoding,
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Parse(e) => e.fmt(f),
            Self::Target => f.write_str("invalid request target"),
            Self::ContentLength => f.write_str("invalid Content-Length"),
            Self::TransferEncoding => f.write_str("invalid Transfer-Encoding"),
        }
    }
}

/// A connection's request heads as they arrive, each parsed each time more of it comes (with
/// `httparse`, as hyper parses it), so that a head hyper would refuse with a bare 400 or 431 is
/// refused here first, with a detail.
///
/// The bytes read while a head is awaited start a head only as long as nothing else can be in
/// them: once a request carried a body, or came with bytes after its head (pipelined), where
/// the next head starts is hyper's to know, and the heads after it are left to hyper.
#[derive(Debug, Default)]
struct HeadCheck {
    /// What has come of the head so far (its bytes are also hyper's).
    read: Vec<u8>,
    /// The head is whole and valid: what follows is a body.
    complete: bool,
    /// Where the next head starts is no longer known: no more heads are checked.
    lost: bool,
}

impl HeadCheck {
    /// A new head is awaited.
    fn next(&mut self) {
        self.read.clear();
        self.complete = false;
    }

    /// Takes `more` of the head; answers why the head must be refused, if it must.
    fn read(&mut self, more: &[u8]) -> Option<Verdict> {
        // Bytes after a whole head: a body, or the next request.
        self.lost |= self.complete;
        if self.lost {
            return None;
        }
        self.read.extend_from_slice(more);
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADER_FIELDS];
        let mut request = httparse::Request::new(&mut fields);
        match request.parse(&self.read) {
            Ok(httparse::Status::Partial) => None,
            Ok(httparse::Status::Complete(length)) => {
                let refusal = refusal_of(&request);
                self.complete = true;
                self.lost = length < self.read.len() || has_body(&request);
                self.read = Vec::new();
                refusal
            }
            Err(httparse::Error::TooManyHeaders) => Some(Verdict::TooManyFields),
            Err(e) => Some(Verdict::Malformed(Malformed::Parse(e))),
        }
    }
}

/// Whether a request says a body follows its head.
fn has_body(request: &httparse::Request<'_, '_>) -> bool {
    request.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            || (h.name.eq_ignore_ascii_case("content-length") && h.value.trim_ascii() != b"0")
    })
}

/// What hyper refuses in a head that parses: a request target that is not a URI, a
/// `Content-Length` that is not one number, a `Transfer-Encoding` on HTTP/1.0 or whose last
/// coding is not `chunked`.
fn refusal_of(request: &httparse::Request<'_, '_>) -> Option<Verdict> {
    let codings: Vec<&[u8]> = request
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
        .flat_map(|h| h.value.split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .collect();
    if let Some(last) = codings.last()
        && (request.version == Some(0) || !last.eq_ignore_ascii_case(b"chunked"))
    {
        return Some(Verdict::Malformed(Malformed::TransferEncoding));
    }
    if request
        .path
        .is_some_and(|path| path.parse::<axum::http::Uri>().is_err())
    {
        return Some(Verdict::Malformed(Malformed::Target));
    }
    let mut lengths = request
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| {
            // Digits only, as hyper reads it (`parse` alone would take a sign).
            let value = std::str::from_utf8(h.value).ok()?.trim();
            let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
            digits.then(|| value.parse::<u64>().ok()).flatten()
        });
    let first = lengths.next();
    if matches!(first, Some(None)) || lengths.any(|length| length != first.flatten()) {
        return Some(Verdict::Malformed(Malformed::ContentLength));
    }
    None
}

#[derive(Debug)]
struct State {
    stage: Stage,
    /// The head being read (while `stage` is `Head`).
    head: HeadCheck,
    write_blocked_since: Option<Instant>,
    refused: Option<Verdict>,
}

/// A connection's stage, shared by its socket wrapper, its service and its task (all polled
/// on that one task, so the lock is never contended). `changed` wakes the task when a
/// deadline moves.
struct Watch {
    limits: Limits,
    state: Mutex<State>,
    changed: Notify,
}

impl Watch {
    fn new(limits: Limits) -> Self {
        Self {
            limits,
            state: Mutex::new(State {
                stage: Stage::Head {
                    since: Instant::now(),
                    bytes: 0,
                },
                head: HeadCheck::default(),
                write_blocked_since: None,
                refused: None,
            }),
            changed: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many more bytes may be read before the head is too large; `None` while busy.
    fn head_budget(&self) -> Option<usize> {
        match self.state().stage {
            Stage::Head { bytes, .. } => Some(MAX_HEAD_BYTES.saturating_sub(bytes)),
            Stage::Idle { .. } => Some(MAX_HEAD_BYTES),
            Stage::Busy { .. } => None,
        }
    }

    /// Takes `read` into account; answers why the head it belongs to must be refused, if it
    /// must (then it must not reach hyper).
    fn read(&self, read: &[u8]) -> Option<Verdict> {
        if read.is_empty() {
            return None;
        }
        let mut state = self.state();
        match &mut state.stage {
            Stage::Idle { .. } => {
                state.stage = Stage::Head {
                    since: Instant::now(),
                    bytes: read.len(),
                };
                state.head.next();
                let refusal = state.head.read(read);
                drop(state);
                self.changed.notify_one();
                refusal
            }
            Stage::Head { bytes, .. } => {
                *bytes += read.len();
                state.head.read(read)
            }
            // A body, or the start of a pipelined request: counted once this one is done, and
            // where the next head starts is hyper's to know.
            Stage::Busy { .. } => {
                state.head.lost = true;
                None
            }
        }
    }

    /// The head is refused (`verdict`): the connection's task answers so and closes.
    fn refuse(&self, verdict: Verdict) {
        self.state().refused = Some(verdict);
        self.changed.notify_one();
    }

    fn request_started(self: &Arc<Self>) -> BusyGuard {
        {
            let mut state = self.state();
            state.stage = match state.stage {
                Stage::Busy { requests } => Stage::Busy {
                    requests: requests + 1,
                },
                Stage::Head { .. } | Stage::Idle { .. } => Stage::Busy { requests: 1 },
            };
        }
        self.changed.notify_one();
        BusyGuard(self.clone())
    }

    fn request_done(&self) {
        {
            let mut state = self.state();
            state.stage = match state.stage {
                Stage::Busy { requests } if requests > 1 => Stage::Busy {
                    requests: requests - 1,
                },
                _ => Stage::Idle {
                    since: Instant::now(),
                },
            };
        }
        self.changed.notify_one();
    }

    fn write_blocked(&self) {
        let mut state = self.state();
        if state.write_blocked_since.is_none() {
            state.write_blocked_since = Some(Instant::now());
            drop(state);
            self.changed.notify_one();
        }
    }

    fn write_done(&self) {
        self.state().write_blocked_since = None;
    }

    fn is_busy(&self) -> bool {
        matches!(self.state().stage, Stage::Busy { .. })
    }

    /// When the connection is next due to be looked at.
    fn deadline(&self) -> Option<Instant> {
        let state = self.state();
        let stage = match state.stage {
            Stage::Head { since, .. } => Some(since + self.limits.header_read_timeout),
            Stage::Idle { since } => Some(since + self.limits.idle_timeout),
            Stage::Busy { .. } => None,
        };
        let write = state
            .write_blocked_since
            .map(|since| since + self.limits.idle_timeout);
        match (stage, write) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the connection must close now, and why.
    fn verdict(&self, now: Instant) -> Option<Verdict> {
        let state = self.state();
        if let Some(verdict) = state.refused {
            return Some(verdict);
        }
        match state.stage {
            Stage::Head { since, bytes, .. } if now >= since + self.limits.header_read_timeout => {
                return Some(Verdict::HeadTimeout { started: bytes > 0 });
            }
            Stage::Idle { since } if now >= since + self.limits.idle_timeout => {
                return Some(Verdict::Idle);
            }
            _ => {}
        }
        state
            .write_blocked_since
            .filter(|since| now >= *since + self.limits.idle_timeout)
            .map(|_| Verdict::WriteStalled)
    }
}

/// Keeps its connection busy until dropped: with the response body, once hyper has taken it
/// whole (or the connection is gone).
struct BusyGuard(Arc<Watch>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.request_done();
    }
}

/// A response body that keeps its connection busy while hyper still sends it.
struct Tracked {
    body: Body,
    _busy: BusyGuard,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The socket as hyper sees it: reads feed the watch (and stop at the head limit), writes
/// tell it when the client stops taking data.
struct Guarded {
    stream: TcpStream,
    watch: Arc<Watch>,
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(budget) = this.watch.head_budget() else {
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.stream).poll_read(cx, buf))?;
            // A body, or the next request sent without waiting: the watch learns where the
            // next head starts is hyper's to know.
            this.watch.read(&buf.filled()[before..]);
            return Poll::Ready(Ok(()));
        };
        if budget == 0 {
            // hyper wants more of a head that already fills the limit. The connection's task,
            // woken by the watch, answers 431 and closes; hyper is not polled again.
            this.watch.refuse(Verdict::HeadTooLarge);
            return Poll::Pending;
        }
        let before = buf.filled().len();
        if buf.remaining() <= budget {
            ready!(Pin::new(&mut this.stream).poll_read(cx, buf))?;
        } else {
            // Read no further than the limit, so hyper never buffers more of a head than that.
            let mut limited = ReadBuf::new(buf.initialize_unfilled_to(budget));
            ready!(Pin::new(&mut this.stream).poll_read(cx, &mut limited))?;
            let n = limited.filled().len();
            buf.advance(n);
        }
        if let Some(refusal) = this.watch.read(&buf.filled()[before..]) {
            // Taken back: hyper would answer a bare 400 or 431. The connection's task answers.
            buf.set_filled(before);
            this.watch.refuse(refusal);
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }
}

impl Guarded {
    fn written(&self, result: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match &result {
            Poll::Pending => self.watch.write_blocked(),
            Poll::Ready(Ok(n)) if *n > 0 => self.watch.write_done(),
            Poll::Ready(_) => {}
        }
        result
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.written(result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.written(result)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    fn limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1,
            shutdown_grace: Duration::from_secs(10),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_head_timer_runs_from_the_open_and_from_the_first_byte_after_idle() {
        let watch = Arc::new(Watch::new(limits()));
        let opened = Instant::now();
        assert_eq!(
            watch.deadline(),
            Some(opened + Duration::from_secs(10)),
            "a fresh connection must send its head in time"
        );
        watch.read(b"GET / HTTP");
        let busy = watch.request_started();
        assert_eq!(watch.deadline(), None, "no timer while a request runs");
        tokio::time::advance(Duration::from_secs(100)).await;
        assert_eq!(watch.verdict(Instant::now()), None);

        drop(busy);
        let idle = Instant::now();
        assert_eq!(watch.deadline(), Some(idle + Duration::from_secs(60)));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(
            watch.verdict(Instant::now()),
            None,
            "idle, within the timeout"
        );

        watch.read(b"GET /");
        let head = Instant::now();
        assert_eq!(watch.deadline(), Some(head + Duration::from_secs(10)));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            watch.verdict(Instant::now()),
            Some(Verdict::HeadTimeout { started: true })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_and_stalled_writes_close() {
        let watch = Arc::new(Watch::new(limits()));
        watch.read(b"G");
        drop(watch.request_started());
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(watch.verdict(Instant::now()), Some(Verdict::Idle));

        let watch = Arc::new(Watch::new(limits()));
        let _busy = watch.request_started();
        watch.write_blocked();
        tokio::time::advance(Duration::from_secs(59)).await;
        watch.write_blocked();
        assert_eq!(watch.verdict(Instant::now()), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(watch.verdict(Instant::now()), Some(Verdict::WriteStalled));
        watch.write_done();
        assert_eq!(watch.verdict(Instant::now()), None, "it moved again");
    }

    #[tokio::test]
    async fn handlers_see_the_client_address() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let router = Router::new().route(
            "/",
            axum::routing::get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                peer.to_string()
            }),
        );
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            router,
            limits(),
            TaskTracker::new(),
            stop.clone().cancelled_owned().map(|()| Instant::now()),
        ));

        let mut stream = TcpStream::connect(address).await.unwrap();
        let local = stream.local_addr().unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with(&local.to_string()), "{answer}");

        stop.cancel();
        server.await.unwrap();
    }

    /// How long after the stop began a request that never ends is dropped, when the stop's own
    /// work (engines waiting for an answer in flight) takes `own_work`.
    async fn a_running_request_dropped_after(own_work: Duration) -> Duration {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let handling = Arc::new(Notify::new());
        let started = handling.clone();
        let router = Router::new().route(
            "/",
            axum::routing::get(move || async move {
                started.notify_one();
                std::future::pending::<()>().await;
            }),
        );
        let stop = CancellationToken::new();
        let stopping = stop.clone();
        let began = Arc::new(Mutex::new(None));
        let began_at = began.clone();
        let server = tokio::spawn(serve(
            listener,
            router,
            limits(),
            TaskTracker::new(),
            async move {
                stopping.cancelled().await;
                let began = Instant::now();
                *began_at.lock().unwrap() = Some(began);
                tokio::time::sleep(own_work).await;
                began
            },
        ));

        let mut stream = TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        handling.notified().await;
        // From here on only timers run: the clock moves on to each as soon as nothing else can.
        tokio::time::pause();
        stop.cancel();
        server.await.unwrap();
        let took = began.lock().unwrap().unwrap().elapsed();
        tokio::time::resume();
        took
    }

    #[tokio::test]
    async fn the_whole_stop_takes_one_grace_whatever_the_stop_s_own_work_took_of_it() {
        let grace = limits().shutdown_grace;
        // Timers fire on the millisecond after their deadline.
        let about = |expected: Duration| expected..expected + Duration::from_millis(10);
        let took = a_running_request_dropped_after(grace - Duration::from_secs(2)).await;
        assert!(
            about(grace).contains(&took),
            "dropped one grace after the stop began, not a grace after the stop's own work: {took:?}"
        );
        let took = a_running_request_dropped_after(grace * 2).await;
        assert!(
            about(grace * 2 + LAST_ANSWERS).contains(&took),
            "work that overran the grace leaves the requests it held a moment to be answered: {took:?}"
        );
    }

    #[tokio::test]
    async fn the_head_budget_counts_only_head_bytes() {
        let watch = Arc::new(Watch::new(limits()));
        assert_eq!(watch.head_budget(), Some(MAX_HEAD_BYTES));
        assert!(watch.read(&[b'a'; 1000]).is_none());
        assert_eq!(watch.head_budget(), Some(MAX_HEAD_BYTES - 1000));
        let busy = watch.request_started();
        assert!(
            watch.read(&vec![b'\n'; 10 * MAX_HEAD_BYTES]).is_none(),
            "a body is not a head"
        );
        assert_eq!(watch.head_budget(), None, "a body is not a head");
        drop(busy);
        assert_eq!(watch.head_budget(), Some(MAX_HEAD_BYTES));
        assert!(watch.read(&vec![b'a'; MAX_HEAD_BYTES]).is_none());
        assert_eq!(watch.head_budget(), Some(0));
        assert_eq!(watch.verdict(Instant::now()), None);
        watch.refuse(Verdict::HeadTooLarge);
        assert_eq!(watch.verdict(Instant::now()), Some(Verdict::HeadTooLarge));
    }

    /// A head is parsed as it arrives, however its bytes come: one hyper would refuse with a
    /// bare answer is refused here first; what follows a whole head (a body) is not looked at.
    #[test]
    fn a_head_is_checked_as_it_arrives() {
        let head = |fields: usize| {
            let mut head = String::from("\r\nPOST / HTTP/1.1\r\n");
            for i in 0..fields {
                head.push_str(&format!("x-{i}: y\r\n"));
            }
            head + "\r\n" + &"\n".repeat(500)
        };
        let check = |text: &str, bytewise: bool| {
            let mut check = HeadCheck::default();
            match bytewise {
                true => text.as_bytes().chunks(1).find_map(|b| check.read(b)),
                false => check.read(text.as_bytes()),
            }
        };
        for bytewise in [false, true] {
            assert_eq!(check(&head(MAX_HEADER_FIELDS), bytewise), None);
            assert_eq!(
                check(&head(MAX_HEADER_FIELDS + 1), bytewise),
                Some(Verdict::TooManyFields)
            );
            for bad in [
                "GARBAGE\r\n\r\n",
                "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
                "GET http://[::1/ HTTP/1.1\r\n\r\n",
                "POST / HTTP/1.1\r\nContent-Length: ten\r\n\r\n",
                "POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\nabc",
                "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            ] {
                assert!(
                    matches!(check(bad, bytewise), Some(Verdict::Malformed(_))),
                    "{bad:?}"
                );
            }
            let fine = "POST /x HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc";
            assert_eq!(check(fine, bytewise), None);
            let chunked = "POST /x HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
            assert_eq!(check(chunked, bytewise), None);
        }
        // Bytes after a head (a body, the next request), or a body said to follow: where the
        // next head starts is hyper's to know, and it is not checked.
        for first in [
            "GET / HTTP/1.1\r\n\r\nGET /next",
            "POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n",
        ] {
            let mut check = HeadCheck::default();
            assert_eq!(check.read(first.as_bytes()), None);
            check.next();
            assert_eq!(
                check.read(b"middle of something\r\n\r\n"),
                None,
                "{first:?}"
            );
        }
        let mut check = HeadCheck::default();
        assert_eq!(check.read(b"GET / HTTP/1.1\r\n\r\n"), None);
        check.next();
        assert!(
            check.read(b"GARBAGE\r\n\r\n").is_some(),
            "a clean second head is checked"
        );
    }
}
