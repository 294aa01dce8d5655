//! One engine per trial: an executor task walking the sequence and a watchdog task keeping its
//! checkpoint. The API holds an [`EngineHandle`] (cheap to clone) and talks to the tasks only
//! through channels: signals and the operator's pause/resume/step go to the executor; restore,
//! skip and abort go to the watchdog; the engine's state is read from a `watch` channel, its
//! history and responses from its [`journal::Journal`]. No handler ever waits for a running
//! step.
//!
//! Every change of where the engine stands goes through [`EngineShared::move_to`], so the
//! status the API shows always matches the checkpoint it came from.

pub mod executor;
pub mod failure;
pub mod journal;
pub mod nst;
mod queue;
pub mod redact;
pub mod sequence;
pub mod state;
pub mod steps;
pub mod watchdog;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Settings;
use crate::domain::TrialId;
use crate::services::ServiceClient;
use crate::store::{RecoveredTrial, Store, TrialRecord};
use crate::tokens::TokenManager;
use executor::{Command, Control, ControlError, ControlOutcome, ProgressReport, SignalOutcome};
use journal::Journal;
use queue::Queue;
use redact::Secrets;
use sequence::{Signal, Step, Wait};
use state::{
    Awaiting, Checkpoint, EventKind, KpiStatus, Lifecycle, Mode, Position, Progress,
    ResponseRecord, Snapshot, TrialEvent,
};
use watchdog::{ControlRequest, LastRecord, Origin, RestoreError, Watchdog};

/// A function called before every step (fault injection for tests and drills).
pub type StepHook = Arc<dyn Fn(&TrialId, Step) + Send + Sync>;

/// Optional hooks into every engine.
#[derive(Clone, Default)]
pub struct EngineHooks {
    pub before_step: Option<StepHook>,
}

/// What every engine needs from the service.
pub struct EngineDeps {
    pub settings: Arc<Settings>,
    pub services: ServiceClient,
    pub tokens: Arc<TokenManager>,
    pub store: Store,
    /// Hides the configuration's secrets, and the API keys reloads bring, in whatever is
    /// recorded.
    pub secrets: Arc<Secrets>,
    pub hooks: EngineHooks,
    /// Told when an engine's trial has ended, so it can leave memory later.
    pub ended: mpsc::UnboundedSender<Weak<EngineShared>>,
}

/// State shared by the handle and the two tasks.
pub struct EngineShared {
    pub id: TrialId,
    deps: Arc<EngineDeps>,
    state: watch::Sender<Snapshot>,
    /// The trial's events and responses.
    journal: Journal,
    /// The current executor's command queue; a new executor renews it.
    commands: Queue<Command>,
    /// The watchdog's queue (restore, skip, abort).
    controls: Queue<ControlRequest>,
    /// Cancelled to stop the engine: the watchdog aborts the executor and ends.
    stop: CancellationToken,
    watchdog: Mutex<Option<JoinHandle<LastRecord>>>,
    /// Cancelled once the engine's tasks have ended (at once for an engine built ended).
    tasks_ended: CancellationToken,
    /// The record of an engine built ended (it has no watchdog to keep one), so that a
    /// delete that was not saved can bring it back.
    ended: Option<LastRecord>,
    /// The trial's callback token once minted, so deleting the engine can revoke it.
    token: Mutex<Option<String>>,
    /// A delete has claimed this engine: exactly one delete removes it.
    deleting: AtomicBool,
    /// The early signals as last saved by the executor while a step ran, if it has not
    /// handed a checkpoint over since: the watchdog's copy lacks them.
    kept: Mutex<Option<Vec<(Wait, Signal)>>>,
    /// A request that an abort, or a shutdown, lets have its answer is in flight (see
    /// `StepCx::call_uncut`).
    uncut: AtomicBool,
    /// At a shutdown, how long such a request may take to have its answer before the engine
    /// stops; none for any other stop (a delete forgets the trial).
    answer_grace: Mutex<Option<Duration>>,
    /// The saves of an operator's pause or resume, each a task of its own that answers its
    /// caller: a stop waits for them, so that what a caller heard is what the store holds.
    pause_saves: TaskTracker,
}

/// Why an executor did not answer a command.
enum Unanswered {
    /// The trial is not live (the lifecycle says how it ended or failed).
    NotLive,
    /// The engine was stopped.
    Stopped,
    /// The engine's first record is not saved yet: its executor has not started.
    NotStarted,
}

/// Why a new engine takes nothing yet.
const NOT_STARTED: &str = "the trial's first record is not saved yet (it is being saved, or the store cannot write): nothing is taken until it is, try again";

/// Why a recovered trial's history says an abort it shows asked for was not carried out.
const ABORT_LOST: &str = "the service stopped (killed, or it crashed) while an abort waited for the answer in flight, before the abort was saved: the trial goes on where its last record left it; ask for the abort again";

/// The step, and what the history says, of a trial brought back at start-up: from where it
/// goes on.
fn recovered_at(lifecycle: Lifecycle, checkpoint: &Checkpoint) -> (Option<Step>, String) {
    let said = "the service started again (after a stop, or killed, or a crash) and brought the trial back from its last record";
    let step = match checkpoint.position {
        Position::Run(step) => Some(step),
        Position::Wait(_) => None,
    };
    let then = match (lifecycle, &checkpoint.mode, step) {
        (Lifecycle::Failed, _, _) => {
            match checkpoint.failure.as_ref().is_some_and(|f| f.reported) {
                true => "still failed: a restore, a skip or an abort goes on from here",
                false => "failed: its failure procedure is finished now",
            }
        }
        (_, Mode::Cleanup { .. }, Some(_)) => "its clean-up goes on with this step, run again",
        (_, Mode::Cleanup { .. }, None) => "its clean-up waits again",
        (_, Mode::Normal, Some(_)) => "it goes on with this step, run again",
        (_, Mode::Normal, None) => "it waits again",
    };
    (step, format!("{said}: {then}"))
}

/// Whether the last abort `events` ask for was left unsaved: neither its clean-up started nor
/// a word that it was not carried out followed it. The service stopped hard while the abort
/// waited for an answer in flight; its caller never had an answer.
fn abort_left_unsaved(events: &[TrialEvent]) -> bool {
    events
        .iter()
        .rev()
        .find_map(|e| match e.event {
            EventKind::AbortRequested => Some(true),
            EventKind::CleanupStarted | EventKind::AbortNotCarriedOut => Some(false),
            _ => None,
        })
        .unwrap_or(false)
}

/// How many commands may queue for an executor; it answers them at once, so few ever wait.
const SIGNAL_QUEUE: usize = 16;

/// A handle to one trial's engine.
#[derive(Clone)]
pub struct EngineHandle {
    shared: Arc<EngineShared>,
}

/// Counts a signal's outcome in `lcm_signals_total`.
fn counted(signal: Signal, outcome: SignalOutcome) -> SignalOutcome {
    metrics::counter!(
        "lcm_signals_total",
        "signal" => signal.name(),
        "outcome" => outcome.label()
    )
    .increment(1);
    outcome
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the trial of `record` (an engine's record as it stood when it stopped) may still
/// have deployed: its ledger, and for a live engine the request of its step that may have
/// been in flight, counted as a restart would.
pub fn leftovers_of(record: &TrialRecord) -> Vec<state::Leftover> {
    let checkpoint = &record.checkpoint;
    let mut data = checkpoint.data.clone();
    if record.lifecycle.is_live() {
        let (started_at, run) = (checkpoint.started_at, checkpoint.run);
        sequence::count_in_flight(checkpoint.position, &mut data, |step| {
            steps::first_post_key(&record.id, started_at, step, run)
        });
    }
    (data.ledger).leftovers(record.id.as_str(), data.info.as_deref())
}

impl EngineHandle {
    /// Creates the engine of a trial scheduled at `created_at` and starts it at the first
    /// step.
    pub fn start(id: TrialId, deps: Arc<EngineDeps>, created_at: DateTime<Utc>) -> Self {
        let now = state::now();
        let record = TrialRecord {
            id,
            lifecycle: Lifecycle::Running,
            checkpoint: Checkpoint::new(now),
            created_at,
            updated_at: now,
            ended_at: None,
        };
        Self::build(
            deps,
            RecoveredTrial {
                record,
                events: Vec::new(),
                responses: Vec::new(),
                next_event: 0,
            },
            Origin::New,
        )
    }

    /// Brings back an engine from its saved record: a live one resumes from its checkpoint
    /// (a waiting point waits again, a step in flight runs again), a failed one waits for a
    /// restore, a skip or an abort.
    pub fn recover(deps: Arc<EngineDeps>, trial: RecoveredTrial) -> Self {
        // A step it stands at has run before, unless the engine had not begun at all.
        let rerun = trial.next_event > 0;
        Self::build(deps, trial, Origin::Recovered { rerun })
    }

    /// Brings back this engine, stopped by a delete that could not be saved, from the record
    /// it had then: it goes on as after a restart (saving that record first if the store does
    /// not hold it).
    pub fn bring_back(&self, last: LastRecord) -> Self {
        let trial = RecoveredTrial {
            record: last.record,
            events: self.history().iter().map(|e| (**e).clone()).collect(),
            responses: self.responses().iter().map(|r| (**r).clone()).collect(),
            next_event: self.shared.journal.next_event(),
        };
        let rerun = trial.next_event > 0;
        let origin = Origin::BroughtBack {
            rerun,
            saved: last.saved,
        };
        Self::build(self.shared.deps.clone(), trial, origin)
    }

    fn build(deps: Arc<EngineDeps>, trial: RecoveredTrial, origin: Origin) -> Self {
        let ended = trial.record.lifecycle.is_ended().then(|| LastRecord {
            record: trial.record.clone(),
            saved: true,
        });
        let RecoveredTrial {
            record,
            events,
            responses,
            next_event,
        } = trial;
        let TrialRecord {
            id,
            lifecycle,
            mut checkpoint,
            created_at,
            updated_at,
            ended_at,
        } = record;
        let live = lifecycle.is_live();
        let abort_lost = live && checkpoint.mode == Mode::Normal && abort_left_unsaved(&events);
        // Said in a history that has begun; a trial whose engine had not begun shows nothing
        // new but its first step.
        let recovered =
            matches!(origin, Origin::Recovered { rerun: true }) && !lifecycle.is_ended();
        let recovered = recovered.then(|| recovered_at(lifecycle, &checkpoint));
        if live {
            let (started_at, run) = (checkpoint.started_at, checkpoint.run);
            sequence::count_in_flight(checkpoint.position, &mut checkpoint.data, |step| {
                steps::first_post_key(&id, started_at, step, run)
            });
        }
        let (state, _) = watch::channel(Snapshot::at(
            lifecycle,
            &checkpoint,
            created_at,
            updated_at,
            ended_at,
        ));
        let commands = Queue::closed(SIGNAL_QUEUE);
        let (controls, controls_rx) = Queue::new(4);
        let (checkpoint_tx, checkpoints) = mpsc::channel(4);
        let journal = Journal::new(
            id.clone(),
            deps.store.clone(),
            events,
            responses,
            next_event,
        );
        let shared = Arc::new(EngineShared {
            id,
            state,
            journal,
            commands,
            controls,
            stop: CancellationToken::new(),
            watchdog: Mutex::new(None),
            tasks_ended: CancellationToken::new(),
            pause_saves: TaskTracker::new(),
            token: Mutex::new(checkpoint.data.token.clone()),
            deleting: AtomicBool::new(false),
            kept: Mutex::new(None),
            uncut: AtomicBool::new(false),
            answer_grace: Mutex::new(None),
            ended,
            deps,
        });
        if let Some((step, detail)) = recovered {
            shared
                .journal
                .event(EventKind::Recovered, step, Some(detail), None);
        }
        if abort_lost {
            tracing::info!(trial = %shared.id, "{ABORT_LOST}");
            shared.journal.event(
                EventKind::AbortNotCarriedOut,
                None,
                Some(ABORT_LOST.to_owned()),
                None,
            );
        }
        // Brought back after a delete that was not saved, ended or failed, with a record the
        // store does not hold either: its watchdog saves it (an ended one before it may leave
        // memory).
        let resave = !live && matches!(origin, Origin::BroughtBack { saved: false, .. });
        if !lifecycle.is_ended() || resave {
            let watchdog = Watchdog {
                shared: shared.clone(),
                checkpoint,
                lifecycle,
                start_executor: live,
                origin,
                executor: None,
                checkpoints,
                checkpoint_tx,
                controls: controls_rx,
                pending_aborts: Vec::new(),
                unanswered: None,
                auto_abort_not_before: None,
                asked_abort_retry: watchdog::RESAVE_FIRST,
                auto_abort_rounds: 0,
                resave: resave.then(watchdog::resave_now),
                saved: !matches!(
                    origin,
                    Origin::New | Origin::BroughtBack { saved: false, .. }
                ),
            };
            let handle = watchdog::spawn(watchdog, shared.span());
            *lock(&shared.watchdog) = Some(handle);
        } else {
            // Ended already (brought back after a delete that was not saved): it leaves
            // memory in its time like any engine that ends.
            shared.tasks_ended.cancel();
            let _ = shared.deps.ended.send(Arc::downgrade(&shared));
        }
        Self { shared }
    }

    /// The trial id.
    pub fn id(&self) -> &TrialId {
        &self.shared.id
    }

    /// Whether the engine's first record is saved: its executor starts then.
    pub fn first_record_saved(&self) -> bool {
        self.shared.commands.renewed()
    }

    /// The engine's current state, borrowed: read what you need and let go.
    pub fn snapshot(&self) -> watch::Ref<'_, Snapshot> {
        self.shared.state.borrow()
    }

    /// A receiver that sees every change of the engine's state.
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.shared.state.subscribe()
    }

    /// The history so far.
    pub fn history(&self) -> Vec<Arc<TrialEvent>> {
        self.shared.journal.history()
    }

    /// Every response recorded so far.
    pub fn responses(&self) -> Vec<Arc<ResponseRecord>> {
        self.shared.journal.responses()
    }

    /// The history so far and a receiver of every later event (no gap, no repeat).
    pub fn events(&self) -> journal::Subscription {
        self.shared.journal.subscribe()
    }

    /// Delivers a signal; the executor answers at once, whatever it is doing.
    pub async fn signal(&self, signal: Signal) -> SignalOutcome {
        counted(signal, self.deliver(signal).await)
    }

    /// A component's callback: taken like any signal; while the trial has failed, kept for its
    /// restore (the component does not send it again).
    pub async fn callback(&self, signal: Signal) -> SignalOutcome {
        let outcome = match self.deliver(signal).await {
            SignalOutcome::NotLive(Lifecycle::Failed) => self.keep_for_restore(signal).await,
            outcome => outcome,
        };
        counted(signal, outcome)
    }

    async fn keep_for_restore(&self, signal: Signal) -> SignalOutcome {
        let (reply, answer) = oneshot::channel();
        let request = ControlRequest::Keep { signal, reply };
        if self.shared.controls.sender().send(request).await.is_err() {
            return SignalOutcome::Stopped;
        }
        answer.await.unwrap_or_else(|_| match self.dropped() {
            Unanswered::NotLive => SignalOutcome::NotLive(self.shared.state.borrow().lifecycle()),
            Unanswered::Stopped | Unanswered::NotStarted => SignalOutcome::Stopped,
        })
    }

    async fn deliver(&self, signal: Signal) -> SignalOutcome {
        self.ask(
            |reply| Command::Signal(signal, reply),
            |why| match why {
                Unanswered::NotLive => {
                    SignalOutcome::NotLive(self.shared.state.borrow().lifecycle())
                }
                Unanswered::Stopped => SignalOutcome::Stopped,
                Unanswered::NotStarted => SignalOutcome::NotSaved(NOT_STARTED.to_owned()),
            },
        )
        .await
    }

    /// A component's progress report; refused unless the executor waits for a component.
    pub async fn progress(&self, report: ProgressReport) -> ControlOutcome {
        let outcome = self
            .ask(
                |reply| Command::Progress(report, reply),
                |why| Err(self.unanswered(why)),
            )
            .await;
        count_signal("progress", control_label(&outcome));
        outcome
    }

    /// An operator's action: pause, resume and step go to the executor, abort to the
    /// watchdog (which hands it to a live executor, or cleans up a failed trial itself).
    pub async fn control(&self, control: Control) -> ControlOutcome {
        let name = control.name();
        let control = control.map_reason(|reason| self.hidden(reason));
        let outcome = match control {
            Control::Abort { reason } => self.abort(reason).await,
            control => {
                self.ask(
                    |reply| Command::Control(control, reply),
                    |why| Err(self.unanswered(why)),
                )
                .await
            }
        };
        count_signal(name, control_label(&outcome));
        outcome
    }

    async fn abort(&self, reason: String) -> ControlOutcome {
        {
            let shown = self.shared.state.borrow();
            // An ended trial has nothing to abort. A failed one whose failure procedure still
            // runs is cleaned up right after it: the watchdog saves the abort with the failure
            // and answers at once.
            if let Some(refusal) = RestoreError::shown(shown.lifecycle(), shown.failure.as_ref())
                && !matches!(refusal, RestoreError::Reporting | RestoreError::AbortAsked)
            {
                return Err(refusal.refusing_abort(self.shared.id.as_str()));
            }
        }
        let (reply, answer) = oneshot::channel();
        let request = ControlRequest::Abort { reason, reply };
        if self.shared.controls.sender().send(request).await.is_err() {
            return Err(ControlError::Stopped);
        }
        // Not answered: the engine was stopped, or its watchdog ended with the trial.
        answer
            .await
            .unwrap_or_else(|_| Err(self.unanswered(self.dropped())))
    }

    /// Sends a command to a live executor and waits for its answer; `unanswered` answers for
    /// it when it cannot (why it did not is the argument).
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
        unanswered: impl Fn(Unanswered) -> T,
    ) -> T {
        if self.shared.stop.is_cancelled() {
            return unanswered(Unanswered::Stopped);
        }
        if !self.shared.state.borrow().lifecycle().is_live() {
            return unanswered(Unanswered::NotLive);
        }
        let (reply, answer) = oneshot::channel();
        if self
            .shared
            .commands
            .sender()
            .send(command(reply))
            .await
            .is_err()
        {
            // The executor's queue is closed: a stop took it, its first record is not saved
            // yet, or it ended on its own (the lifecycle says how).
            return unanswered(if self.shared.stop.is_cancelled() {
                Unanswered::Stopped
            } else if !self.shared.commands.renewed() {
                Unanswered::NotStarted
            } else {
                Unanswered::NotLive
            });
        }
        // Not answered: the engine was stopped, or the executor ended (the lifecycle says
        // how) as the command came.
        answer.await.unwrap_or_else(|_| unanswered(self.dropped()))
    }

    /// Why a request taken by one of the engine's tasks was dropped unanswered.
    fn dropped(&self) -> Unanswered {
        match self.shared.stop.is_cancelled() {
            true => Unanswered::Stopped,
            false => Unanswered::NotLive,
        }
    }

    fn not_live(&self) -> ControlError {
        executor::not_live(&self.shared.id, self.shared.state.borrow().lifecycle())
    }

    fn unanswered(&self, why: Unanswered) -> ControlError {
        match why {
            Unanswered::NotLive => self.not_live(),
            Unanswered::Stopped => ControlError::Stopped,
            Unanswered::NotStarted => ControlError::NotSaved(NOT_STARTED.to_owned()),
        }
    }

    /// The trial's callback token, once minted.
    pub fn token(&self) -> Option<String> {
        self.shared.token().clone()
    }

    /// Restores a failed engine from its checkpoint; answers the state it resumes at.
    pub async fn restore(&self) -> Result<String, RestoreError> {
        self.to_watchdog(ControlRequest::Restore).await
    }

    /// Skips the step a failed engine stopped at, with the operator's reason.
    pub async fn skip(&self, reason: String) -> Result<String, RestoreError> {
        let reason = self.hidden(&reason);
        let outcome = self
            .to_watchdog(|reply| ControlRequest::Skip { reason, reply })
            .await;
        count_signal(
            "skip",
            outcome
                .as_ref()
                .map_or_else(RestoreError::label, |_| "accepted"),
        );
        outcome
    }

    async fn to_watchdog(
        &self,
        request: impl FnOnce(oneshot::Sender<Result<String, RestoreError>>) -> ControlRequest,
    ) -> Result<String, RestoreError> {
        {
            // The watchdog answers once the failure procedure is done; say so at once.
            let shown = self.shared.state.borrow();
            if let Some(refusal) = RestoreError::shown(shown.lifecycle(), shown.failure.as_ref()) {
                return Err(refusal);
            }
        }
        let (reply, answer) = oneshot::channel();
        self.shared
            .controls
            .sender()
            .send(request(reply))
            .await
            .map_err(|_| RestoreError::Stopped)?;
        answer.await.unwrap_or(Err(RestoreError::Stopped))
    }

    /// Claims the engine for a delete; only the first of concurrent deletes gets it.
    pub fn claim_delete(&self) -> bool {
        !self.shared.deleting.swap(true, Ordering::SeqCst)
    }

    /// Gives the engine back after a delete that could not be saved.
    pub fn release_delete(&self) {
        self.shared.deleting.store(false, Ordering::SeqCst);
    }

    /// Stops both tasks (a request in flight is cancelled) and waits until they have ended,
    /// so nothing of this engine reaches a service or the store afterwards. Stopping is not
    /// failing: nothing is reported anywhere. Answers the engine's record as it stood (what a
    /// restart would bring back); `None` if another stop took it, or the watchdog panicked.
    pub async fn stop(&self) -> Option<LastRecord> {
        self.shared.stop.cancel();
        let watchdog = lock(&self.shared.watchdog).take();
        let last = match watchdog {
            // The watchdog ends once its executor has; a panic there is already logged.
            Some(watchdog) => watchdog.await.ok(),
            // Another stop took the watchdog: its tasks may still be ending.
            None => {
                self.shared.tasks_ended.cancelled().await;
                self.shared.ended.clone()
            }
        };
        self.shared.journal.close();
        self.shared.stopped();
        last
    }

    /// Stops the engine as the service stops: like [`EngineHandle::stop`], except that a
    /// deployment or a status write in flight has its answer first, for up to `grace`, and the
    /// checkpoint its step ends with is saved. Restarted, the step would send it again, and a
    /// component that ignores `Idempotency-Key` would make a second slice or job that nobody
    /// undoes.
    pub async fn shut_down(&self, grace: Duration) -> Option<LastRecord> {
        *lock(&self.shared.answer_grace) = Some(grace);
        self.stop().await
    }

    /// An operator's reason as it is kept, logged and shown: a configured secret or a token
    /// pasted into it is `[redacted]`, as in a component's answers.
    fn hidden(&self, reason: &str) -> String {
        let token = lock(&self.shared.token).clone();
        self.shared
            .deps
            .secrets
            .with(token.as_deref())
            .text_and_tokens(reason)
    }

    /// A reference to this engine that does not keep it in memory.
    pub fn weak(&self) -> Weak<EngineShared> {
        Arc::downgrade(&self.shared)
    }

    /// Whether `other` is this very engine (not one made later for the same trial).
    pub fn same(&self, other: &Weak<EngineShared>) -> bool {
        std::ptr::eq(Arc::as_ptr(&self.shared), other.as_ptr())
    }
}

fn control_label(outcome: &ControlOutcome) -> &'static str {
    outcome
        .as_ref()
        .map_or_else(ControlError::label, |_| "accepted")
}

fn count_signal(signal: &'static str, label: &'static str) {
    metrics::counter!("lcm_signals_total", "signal" => signal, "outcome" => label).increment(1);
}

impl EngineShared {
    pub(crate) fn token(&self) -> MutexGuard<'_, Option<String>> {
        lock(&self.token)
    }

    /// The early signals the executor saved while a step ran, and not yet handed over.
    pub(super) fn kept(&self) -> MutexGuard<'_, Option<Vec<(Wait, Signal)>>> {
        lock(&self.kept)
    }

    /// Shows the trial aborting for `reason` while its clean-up waits to begin (an abort that
    /// lets a deployment have its answer first).
    pub(super) fn show_aborting(&self, reason: &str) {
        self.state.send_modify(|s| {
            s.mode = Mode::Cleanup {
                reason: reason.to_owned(),
                failed: None,
                creation_due: false,
            };
        });
    }

    /// Moves the engine to `lifecycle` at the checkpoint's position: the one place where the
    /// state the API shows of a live engine changes. A stopped engine (see
    /// [`EngineShared::stopped`]) stays stopped.
    pub(super) fn move_to(&self, lifecycle: Lifecycle, checkpoint: &Checkpoint) {
        self.move_awaiting(lifecycle, checkpoint, None);
    }

    /// [`Self::move_to`], showing what the engine waits for where its position does not say
    /// it all.
    pub(super) fn move_awaiting(
        &self,
        lifecycle: Lifecycle,
        checkpoint: &Checkpoint,
        awaiting: Option<Awaiting>,
    ) {
        self.state.send_if_modified(|s| {
            if s.lifecycle() == Lifecycle::Stopped {
                return false;
            }
            if s.lifecycle() != lifecycle {
                crate::telemetry::count_outcome(lifecycle);
            }
            s.move_to(lifecycle, checkpoint, awaiting, state::now());
            true
        });
    }

    /// Shows a running step that the operator's pause holds before its next request as
    /// waiting for resume (`held`), or running again once it goes on. It stays where it was
    /// moved: what it shows follows from being held.
    pub(super) fn show_held(&self, held: bool) {
        self.state.send_if_modified(|s| {
            if s.held_midway() == held || (held && s.lifecycle() != Lifecycle::Running) {
                return false;
            }
            s.waiting_for = held.then_some(Awaiting::HeldMidway);
            s.updated_at = state::now();
            true
        });
    }

    /// Forgets the progress shown: the wait it was reported in has ended.
    pub(super) fn clear_progress(&self) {
        self.state.send_modify(|s| s.progress = None);
    }

    /// Shows the last KPI marking that counts while the step that sends it runs.
    pub(super) fn show_kpi_status(&self, kpi_status: Option<KpiStatus>) {
        self.state
            .send_if_modified(|s| std::mem::replace(&mut s.kpi_status, kpi_status) != kpi_status);
    }

    /// Shows a component's latest progress.
    pub(super) fn show_progress(&self, progress: Progress) {
        self.state.send_modify(|s| s.progress = Some(progress));
    }

    /// Completes once an abort is asked for while the failure is reported (shown once it is
    /// saved).
    pub(super) async fn abort_asked(&self) {
        let asked = |s: &Snapshot| s.failure.as_ref().is_some_and(|f| f.abort.is_some());
        // `self` holds the sender: the wait ends only once an abort is asked for.
        let _ = self.state.subscribe().wait_for(asked).await;
    }

    /// Shows the operator's pause.
    pub(super) fn set_paused(&self, paused: bool) {
        self.state.send_modify(|s| s.paused = paused);
    }

    /// Shows the engine stopped for good: its tasks have ended, nothing moves it any more.
    fn stopped(&self) {
        self.state.send_modify(Snapshot::stop);
    }

    /// The span every log line of this engine is written in. Made without a parent, so a
    /// task spawned from another engine task does not name the trial twice, and at the error
    /// level, so that it names the trial at every `logging.level` (a span below the level is
    /// left out, and its lines with it lose the trial).
    fn span(&self) -> tracing::Span {
        tracing::error_span!(parent: None, "engine", trial = %self.id)
    }
}

#[cfg(test)]
impl EngineDeps {
    /// The built-in settings and an in-memory store, and the receiver of ended engines.
    pub(crate) fn for_tests() -> (Arc<Self>, mpsc::UnboundedReceiver<Weak<EngineShared>>) {
        let settings = Arc::new(Settings::defaults().expect("defaults"));
        let backend = crate::store::sqlite::SqliteBackend::in_memory().expect("store");
        let (store, _) = Store::start(backend).expect("store");
        let (ended, ended_rx) = mpsc::unbounded_channel();
        let deps = Arc::new(EngineDeps {
            services: ServiceClient::new(&settings).expect("client"),
            tokens: Arc::new(TokenManager::new(&settings.auth.token_secret, 60)),
            store,
            secrets: Arc::default(),
            hooks: EngineHooks::default(),
            ended,
            settings,
        });
        (deps, ended_rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_stop_returns_once_the_engine_s_tasks_have_ended() {
        let (deps, _ended) = EngineDeps::for_tests();
        let id = TrialId::parse("stopped-twice").expect("id");
        let engine = EngineHandle::start(id, deps, Utc::now());
        // The first stop (a shutdown, say) takes the watchdog and waits for it.
        let other = engine.clone();
        let mut first = Box::pin(other.stop());
        tokio::select! {
            biased;
            _ = &mut first => panic!("the first stop ended at once"),
            () = std::future::ready(()) => {}
        }
        assert!(
            engine.stop().await.is_none(),
            "the first stop has the record"
        );
        assert!(
            engine.shared.controls.sender().is_closed(),
            "the watchdog still runs after the second stop returned"
        );
        assert!(first.await.is_some());
    }
}
