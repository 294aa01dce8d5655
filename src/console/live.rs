//! Live pages: a page's stream (server-sent events) sends fresh copies of the page's parts
//! whenever what they show changes. Each `patch` event holds whole parts, by element id, so
//! applying one twice changes nothing: a stream that reconnects starts with the current
//! parts, and nothing is shown twice. A `done` event says nothing more will change (the
//! trial ended): the page closes its stream.

use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use super::session::Signed;
use crate::api::AppState;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use maud::Markup;
use tokio::sync::mpsc;

/// How soon a browser reconnects a dropped stream.
const RECONNECT: Duration = Duration::from_secs(1);
/// How often an open stream checks that its session still holds.
const SESSION_CHECK: Duration = Duration::from_secs(1);
/// After a change, more changes are awaited this long so a burst is sent as one patch.
pub const SETTLE: Duration = Duration::from_millis(100);

/// A `patch` event: the page's parts `(element id, content)` to put in place.
pub fn patch(parts: &[(&str, Markup)]) -> Event {
    let parts: serde_json::Map<String, serde_json::Value> = parts
        .iter()
        .map(|(id, markup)| ((*id).to_owned(), markup.clone().into_string().into()))
        .collect();
    Event::default()
        .event("patch")
        .retry(RECONNECT)
        .json_data(parts)
        .unwrap_or_default()
}

/// What a stream has sent of each part, so that it sends a part again only when it changed: a
/// page left open on a trial whose recorded responses are large costs nothing while the trial
/// stands still.
#[derive(Default)]
pub struct Sent(HashMap<&'static str, u64>);

impl Sent {
    /// A `patch` event of the parts that differ from what this stream sent of them last;
    /// `None` when none does.
    pub fn patch(&mut self, parts: Vec<(&'static str, Markup)>) -> Option<Event> {
        let changed: Vec<_> = parts
            .into_iter()
            .filter(|(id, markup)| {
                let mut hasher = DefaultHasher::new();
                markup.0.hash(&mut hasher);
                let digest = hasher.finish();
                self.0.insert(id, digest) != Some(digest)
            })
            .collect();
        (!changed.is_empty()).then(|| patch(&changed))
    }
}

/// The `done` event: nothing more will change.
pub fn done() -> Event {
    Event::default().event("done").data("done")
}

/// A stream fed by a task: `produce` gets the sending end and runs until it returns, the
/// page goes away (sending fails), the service stops, or the session that opened it ends
/// (signed out, expired, or its key taken away: checked every [`SESSION_CHECK`]). The page's
/// reconnection is then refused, and it says it is not live.
pub fn stream<F>(
    state: &AppState,
    signed: Signed,
    produce: impl FnOnce(mpsc::Sender<Event>) -> F,
) -> Response
where
    F: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(4);
    let stop = state.shutdown.clone();
    let session = state.clone();
    let holds = move || signed.holds(&session);
    let task = produce(tx);
    tokio::spawn(async move {
        let session_ends = async move {
            while holds() {
                tokio::time::sleep(SESSION_CHECK).await;
            }
        };
        tokio::select! {
            () = task => {}
            () = stop.cancelled() => {}
            () = session_ends => {}
        }
    });
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|event| (Ok::<_, Infallible>(event), rx))
    })
    .take_until(state.shutdown.clone().cancelled_owned());
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
