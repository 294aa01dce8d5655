//! A trial's journal: its events (the history, each numbered here) and the responses its
//! services gave (numbered by the store as it appends them), kept in memory while the engine is, streamed to `/events` subscribers, and
//! appended to the store once, as its own row, when it happens (SPEC §12).
//!
//! Whoever records something (executor, watchdog, an operator's action) goes through here,
//! so the numbering has one owner. The store's writer applies writes in the order they were
//! submitted, and an entry is submitted under the journal's lock: rows land in `seq` order,
//! and a checkpoint committed after them finds them committed too.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use super::sequence::Step;
use super::state;
use super::state::{EventKind, ResponseRecord, TrialEvent};
use crate::domain::TrialId;
use crate::store::{Op, Store, StoreError};

/// How many events a slow `/events` subscriber may fall behind before it takes the ones it
/// missed from the history instead (see [`Follower`]).
const EVENT_BUFFER: usize = 64;

/// The journal of one trial.
pub struct Journal {
    id: TrialId,
    store: Store,
    inner: Mutex<Inner>,
}

struct Inner {
    events: Vec<Arc<TrialEvent>>,
    /// The next event's number: after the last one kept, whatever came before it.
    next_event: u64,
    /// The numbers of the events whose commit is awaited ([`Journal::event_saved`]): the
    /// events numbered after one of them wait in `later` until it is kept or given up, so the
    /// history and its streams go in the order of the numbers.
    saving: BTreeSet<u64>,
    later: Vec<Arc<TrialEvent>>,
    responses: Vec<Arc<ResponseRecord>>,
    live: Live,
}

/// Where live events go.
enum Live {
    /// Nobody has subscribed yet: a journal nobody watches carries no buffer.
    Unwatched,
    Open(broadcast::Sender<Arc<TrialEvent>>),
    /// The engine is gone: a subscriber gets the history and the end of the stream.
    Closed,
}

impl Inner {
    /// The next event, numbered.
    fn numbered(
        &mut self,
        kind: EventKind,
        step: Option<Step>,
        detail: Option<String>,
        duration_ms: Option<u64>,
    ) -> Arc<TrialEvent> {
        let seq = self.next_event;
        self.next_event += 1;
        Arc::new(TrialEvent {
            seq,
            at: state::now(),
            event: kind,
            step: step.map(|s| s.name().to_owned()),
            detail,
            duration_ms,
        })
    }

    /// Keeps an event and streams it, unless an event numbered before it waits for its
    /// commit: then it waits for that one.
    fn keep(&mut self, event: Arc<TrialEvent>) {
        if self.saving.first().is_some_and(|&first| first < event.seq) {
            self.later.push(event);
            return;
        }
        if let Live::Open(live) = &self.live {
            // No subscriber left is fine.
            let _ = live.send(event.clone());
        }
        self.events.push(event);
    }

    /// The event numbered `seq`, whose commit was awaited, is kept (`Some`) or given up:
    /// the events that waited for it follow.
    fn settle(&mut self, seq: u64, saved: Option<Arc<TrialEvent>>) {
        self.saving.remove(&seq);
        match saved {
            Some(event) => self.keep(event),
            // Its number goes back unless a later event took the next one meanwhile.
            None if self.next_event == seq + 1 => self.next_event = seq,
            None => {}
        }
        let mut later = std::mem::take(&mut self.later);
        later.sort_by_key(|event| event.seq);
        for event in later {
            self.keep(event);
        }
    }
}

impl Journal {
    /// A journal that goes on from what the store holds of the trial, numbering its next
    /// event `next_event`.
    pub fn new(
        id: TrialId,
        store: Store,
        events: Vec<TrialEvent>,
        responses: Vec<ResponseRecord>,
        next_event: u64,
    ) -> Self {
        Self {
            id,
            store,
            inner: Mutex::new(Inner {
                next_event: events
                    .last()
                    .map_or(next_event, |last| next_event.max(last.seq + 1)),
                saving: BTreeSet::new(),
                later: Vec::new(),
                events: events.into_iter().map(Arc::new).collect(),
                responses: responses.into_iter().map(Arc::new).collect(),
                live: Live::Unwatched,
            }),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an event: numbers it, keeps it, streams it and appends it to the store.
    pub fn event(
        &self,
        kind: EventKind,
        step: Option<Step>,
        detail: Option<String>,
        duration_ms: Option<u64>,
    ) {
        let mut inner = self.inner();
        let event = inner.numbered(kind, step, detail, duration_ms);
        self.store.submit(Op::AppendEvent {
            id: self.id.clone(),
            event: event.clone(),
        });
        inner.keep(event);
    }

    /// Records an event committed with `with` in one transaction, and waits for it: one not
    /// saved is not kept either (the caller answers that nothing was done).
    pub async fn event_saved(
        &self,
        kind: EventKind,
        step: Option<Step>,
        detail: Option<String>,
        with: Vec<Op>,
    ) -> Result<(), StoreError> {
        let (event, saved) = {
            let mut inner = self.inner();
            let event = inner.numbered(kind, step, detail, None);
            inner.saving.insert(event.seq);
            let mut ops = with;
            ops.push(Op::AppendEvent {
                id: self.id.clone(),
                event: event.clone(),
            });
            // Queued under the lock, so in order with the rows of the events around it.
            (event, self.store.write_all(ops))
        };
        let saved = saved.await;
        let seq = event.seq;
        self.inner().settle(seq, saved.is_ok().then_some(event));
        saved.map(|_| ())
    }

    /// Records a response: keeps it and appends it to the store (which numbers it).
    pub fn response(&self, record: ResponseRecord) {
        let mut inner = self.inner();
        let record = Arc::new(record);
        self.store.submit(Op::AppendResponse {
            id: self.id.clone(),
            record: record.clone(),
        });
        inner.responses.push(record);
    }

    /// The history so far.
    pub fn history(&self) -> Vec<Arc<TrialEvent>> {
        self.inner().events.clone()
    }

    /// Every response so far.
    pub fn responses(&self) -> Vec<Arc<ResponseRecord>> {
        self.inner().responses.clone()
    }

    /// The number the next event takes.
    pub fn next_event(&self) -> u64 {
        self.inner().next_event
    }

    /// The history so far and a receiver of every later event, taken together so there is
    /// no gap between them and no repeat.
    pub fn subscribe(&self) -> Subscription {
        let mut inner = self.inner();
        let receiver = match &mut inner.live {
            Live::Open(sender) => sender.subscribe(),
            live @ Live::Unwatched => {
                let (sender, receiver) = broadcast::channel(EVENT_BUFFER);
                *live = Live::Open(sender);
                receiver
            }
            // A receiver whose sender is gone already: it ends after the history.
            Live::Closed => broadcast::channel(1).1,
        };
        (inner.events.clone(), receiver)
    }

    /// Ends every live stream, and those subscribed later (the engine is gone).
    pub fn close(&self) {
        self.inner().live = Live::Closed;
    }
}

/// The history so far and a receiver of every later event (what [`Journal::subscribe`] gives).
pub type Subscription = (Vec<Arc<TrialEvent>>, broadcast::Receiver<Arc<TrialEvent>>);

/// Follows a journal's live events from a number on: each event once, in order, until the one
/// that ends the trial or the journal closes. A follower that falls more than the buffer behind
/// takes the events it missed from the history (`subscribe` subscribes again), so a slow
/// reader sees no gap.
pub struct Follower<S> {
    subscribe: S,
    receiver: broadcast::Receiver<Arc<TrialEvent>>,
    next: u64,
    done: bool,
    missed: VecDeque<Arc<TrialEvent>>,
}

impl<S: FnMut() -> Subscription> Follower<S> {
    /// Follows from the event after `history` (taken with `receiver`), or ends at once if
    /// `history` already holds the trial's end.
    pub fn after(
        history: &[Arc<TrialEvent>],
        receiver: broadcast::Receiver<Arc<TrialEvent>>,
        subscribe: S,
    ) -> Self {
        Self {
            subscribe,
            receiver,
            // Numbers go on from the last event, whatever came before it.
            next: history.last().map_or(0, |e| e.seq + 1),
            done: history.iter().any(|e| e.event.ends_trial()),
            missed: VecDeque::new(),
        }
    }

    /// The next event; `None` once the trial has ended or the journal is closed.
    pub async fn next(&mut self) -> Option<Arc<TrialEvent>> {
        while !self.done {
            let event = match self.missed.pop_front() {
                Some(event) => event,
                None => match self.receiver.recv().await {
                    Ok(event) => event,
                    Err(RecvError::Lagged(_)) => {
                        let (history, receiver) = (self.subscribe)();
                        self.receiver = receiver;
                        self.missed = history.into_iter().filter(|e| e.seq >= self.next).collect();
                        continue;
                    }
                    Err(RecvError::Closed) => return None,
                },
            };
            // Already seen: in the history it started from, or taken again after a lag.
            if event.seq < self.next {
                continue;
            }
            self.next = event.seq + 1;
            self.done = event.event.ends_trial();
            return Some(event);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::sqlite::SqliteBackend;

    /// An empty journal on an in-memory store.
    fn journal(id: &str) -> Arc<Journal> {
        let (store, _) = Store::start(SqliteBackend::in_memory().unwrap()).unwrap();
        let id = TrialId::parse(id).unwrap();
        Arc::new(Journal::new(id, store, Vec::new(), Vec::new(), 0))
    }

    /// A follower of `journal` from now on, and the history it starts after.
    fn follow(
        journal: &Arc<Journal>,
    ) -> (Vec<Arc<TrialEvent>>, Follower<impl FnMut() -> Subscription>) {
        let (history, receiver) = journal.subscribe();
        let again = journal.clone();
        let follower = Follower::after(&history, receiver, move || again.subscribe());
        (history, follower)
    }

    /// `n` progress events.
    fn progress(journal: &Journal, n: usize) {
        for _ in 0..n {
            journal.event(EventKind::Progress, None, None, None);
        }
    }

    /// The numbers of the events `follower` gives until it ends; a follower that never ends
    /// fails the test after 10 s instead of hanging it.
    async fn followed<S: FnMut() -> Subscription>(follower: &mut Follower<S>) -> Vec<u64> {
        let mut seen = Vec::new();
        let all = async {
            while let Some(event) = follower.next().await {
                seen.push(event.seq);
            }
        };
        tokio::time::timeout(Duration::from_secs(10), all)
            .await
            .expect("the follower ends");
        seen
    }

    /// An in-memory store whose commits wait at a gate while it is shut, and fail while
    /// `fail` is set.
    struct Gated {
        inner: SqliteBackend,
        shut: Arc<(Mutex<bool>, std::sync::Condvar)>,
        fail: Arc<std::sync::atomic::AtomicBool>,
    }

    impl crate::store::Backend for Gated {
        fn apply(&mut self, ops: &[Op]) -> Result<Vec<usize>, StoreError> {
            let (shut, opened) = &*self.shut;
            let mut shut = shut.lock().unwrap();
            while *shut {
                shut = opened.wait(shut).unwrap();
            }
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError::Backend("refused (simulated)".into()));
            }
            self.inner.apply(ops)
        }

        fn load(&mut self) -> Result<crate::store::Loaded, StoreError> {
            self.inner.load()
        }

        fn reader(&self) -> Result<Box<dyn crate::store::Reader>, StoreError> {
            self.inner.reader()
        }
    }

    #[tokio::test]
    async fn events_recorded_while_one_waits_for_its_commit_follow_it_in_order() {
        use std::sync::atomic::Ordering::SeqCst;
        let shut = Arc::new((Mutex::new(true), std::sync::Condvar::new()));
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let backend = Gated {
            inner: SqliteBackend::in_memory().unwrap(),
            shut: shut.clone(),
            fail: fail.clone(),
        };
        let (store, _) = Store::start(backend).unwrap();
        let id = TrialId::parse("saving").unwrap();
        let journal = Arc::new(Journal::new(id, store, Vec::new(), Vec::new(), 0));
        let open = |failing: bool| {
            fail.store(failing, SeqCst);
            let (shut, opened) = &*shut;
            *shut.lock().unwrap() = false;
            opened.notify_all();
        };
        let (_, mut follower) = follow(&journal);

        // Saved: the event recorded while it waits comes after it.
        let saving = tokio::spawn({
            let journal = journal.clone();
            async move {
                journal
                    .event_saved(EventKind::Paused, None, None, Vec::new())
                    .await
            }
        });
        while journal.next_event() == 0 {
            tokio::task::yield_now().await;
        }
        progress(&journal, 1);
        assert!(journal.history().is_empty(), "the later event waits");
        open(false);
        assert!(saving.await.unwrap().is_ok());
        let kinds = |journal: &Journal| -> Vec<(u64, EventKind)> {
            journal.history().iter().map(|e| (e.seq, e.event)).collect()
        };
        assert_eq!(
            kinds(&journal),
            [(0, EventKind::Paused), (1, EventKind::Progress)]
        );

        // Not saved: it is not kept, and the event that waited for it follows.
        *shut.0.lock().unwrap() = true;
        let refused = tokio::spawn({
            let journal = journal.clone();
            async move {
                journal
                    .event_saved(EventKind::Resumed, None, None, Vec::new())
                    .await
            }
        });
        while journal.next_event() == 2 {
            tokio::task::yield_now().await;
        }
        progress(&journal, 1);
        open(true);
        assert!(refused.await.unwrap().is_err());
        fail.store(false, SeqCst);
        journal.event(EventKind::TrialFinished, None, None, None);
        assert_eq!(
            kinds(&journal),
            [
                (0, EventKind::Paused),
                (1, EventKind::Progress),
                (3, EventKind::Progress),
                (4, EventKind::TrialFinished)
            ]
        );
        assert_eq!(followed(&mut follower).await, [0, 1, 3, 4]);
    }

    #[tokio::test]
    async fn a_follower_that_falls_behind_takes_what_it_missed_from_the_history() {
        let journal = journal("lagging");
        let (_, mut follower) = follow(&journal);
        // Four buffers' worth before the follower reads one: the receiver lags.
        let sent = EVENT_BUFFER * 4;
        progress(&journal, sent);
        journal.event(EventKind::TrialFinished, None, None, None);
        let all: Vec<u64> = (0..=sent as u64).collect();
        assert_eq!(
            followed(&mut follower).await,
            all,
            "each event once, in order, up to the end"
        );
    }

    #[tokio::test]
    async fn a_follower_behind_a_journal_that_closes_ends_after_what_it_missed() {
        let journal = journal("closing");
        let (_, mut follower) = follow(&journal);
        // Behind by more than the buffer when the engine goes, with no end event.
        let sent = EVENT_BUFFER * 2;
        progress(&journal, sent);
        journal.close();
        let all: Vec<u64> = (0..sent as u64).collect();
        assert_eq!(followed(&mut follower).await, all);
        // Subscribed after the close: the history, then the end at once.
        let (history, mut late) = follow(&journal);
        assert_eq!(history.len(), sent);
        assert!(followed(&mut late).await.is_empty());
    }
}
