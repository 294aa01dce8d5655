//! The executor task: walks the trial sequence (or, after an abort, the clean-up path),
//! answers every command at once (even while a step's request is in flight), and hands a
//! checkpoint to the watchdog after every completed step and at every waiting point.
//!
//! Before each step sits the operator's gate: a paused trial starts no new request until it
//! is resumed or stepped. At a waiting point three clocks run: the wait's own deadline, the
//! component's heartbeat (reset by progress callbacks) and, at the operator's waits, the
//! trial's own deadline, which finishes it the way the operator's finish would.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant as Deadline;
use tracing::{Instrument, error, info, warn};

use super::failure;
use super::queue::Inbox;
use super::sequence::{self, Next, Signal, Step, WAITS, Wait, Waiter};
use super::state::{
    self as state, Awaiting, Checkpoint, EventKind, Lifecycle, Mode, Position, Progress, SliceState,
};
use super::steps::{self, StepCx, StepError};
use super::watchdog::{ControlRequest, RESAVE_FIRST, RestoreError, resave_after};
use super::{EngineDeps, EngineShared};
use crate::deadline::{self, elapsed_ms, sleep_until};
use crate::domain::{TrialId, at_most};
use crate::store::Op;

/// How the executor took a signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalOutcome {
    /// Taken: the executor moves on to this.
    Accepted(Next),
    /// Arrived while the step that asked for it is still running: kept, applied when it ends.
    Held(Step),
    /// A component's callback that arrived while the trial had failed: kept, taken at its wait
    /// once the trial is restored.
    KeptForRestore,
    /// The same signal was accepted before; nothing changes.
    AlreadyRegistered,
    /// It does not fit where the executor is; nothing changes.
    Refused(String),
    /// The engine no longer takes signals.
    NotLive(Lifecycle),
    /// It would be kept, but keeping it could not be saved; nothing changes.
    NotSaved(String),
    /// The engine stopped before it answered (the service is stopping, or the engine was
    /// deleted): whether it was taken is told by the trial's status.
    Stopped,
}

/// The refusal of what only a live engine takes.
pub(super) fn not_live(id: &TrialId, lifecycle: Lifecycle) -> ControlError {
    let next = match lifecycle {
        Lifecycle::Failed => {
            "; restore it to go on (a pause it had stays: resume it then), skip its failed step, or abort it"
        }
        Lifecycle::Running
        | Lifecycle::Waiting
        | Lifecycle::Finished
        | Lifecycle::Aborted
        | Lifecycle::Stopped => "",
    };
    ControlError::NotLive(format!(
        "trial '{id}' does not take this now: its engine is {}{next}",
        lifecycle.engine_status().name()
    ))
}

/// The longest failure reason a step's failure records: one quotes what components said,
/// each part cut already; this bounds the whole whatever a step quotes.
const MAX_REASON_CHARS: usize = 1_000;

/// The slice-created callback, as the waits record it.
const SLICE_CREATED: (Wait, Signal) = (Wait::SliceCreated, Signal::SliceCallback);

/// Why an abort that waited for an answer in flight when the service stopped was not done.
const ABORT_NOT_CARRIED_OUT: &str = "the service stopped while the abort waited for the answer in flight: its caller was told 503, and the trial goes on after the restart";

/// How many of a wait's progress reports have a history event.
const PROGRESS_EVENTS_PER_WAIT: usize = 1_000;

/// Why an engine did not answer what it was asked.
pub const STOPPED: &str = "the engine stopped before it answered (the service is stopping, or the engine was deleted): the trial's status says where it stands";

impl SignalOutcome {
    /// The outcome as a metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            SignalOutcome::Accepted(_) => "accepted",
            SignalOutcome::Held(_) => "held",
            SignalOutcome::KeptForRestore => "kept_for_restore",
            SignalOutcome::AlreadyRegistered => "already_registered",
            SignalOutcome::Refused(_) => "refused_wrong_phase",
            SignalOutcome::NotLive(_) => "refused_not_live",
            SignalOutcome::NotSaved(_) => "not_saved",
            SignalOutcome::Stopped => "refused_not_live",
        }
    }
}

/// An operator's action on a trial (SPEC §14), each with its reason where one is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    Pause { reason: Option<String> },
    Resume { reason: Option<String> },
    Step { reason: Option<String> },
    Abort { reason: String },
}

impl Control {
    /// The same action, its reason as `f` writes it.
    pub fn map_reason(self, f: impl Fn(&str) -> String) -> Self {
        let each = |reason: Option<String>| reason.map(|r| f(&r));
        match self {
            Control::Pause { reason } => Control::Pause {
                reason: each(reason),
            },
            Control::Resume { reason } => Control::Resume {
                reason: each(reason),
            },
            Control::Step { reason } => Control::Step {
                reason: each(reason),
            },
            Control::Abort { reason } => Control::Abort { reason: f(&reason) },
        }
    }

    /// The action as the API, the metrics and the history name it.
    pub fn name(&self) -> &'static str {
        match self {
            Control::Pause { .. } => "pause",
            Control::Resume { .. } => "resume",
            Control::Step { .. } => "step",
            Control::Abort { .. } => "abort",
        }
    }
}

/// Why an operator's action, or a component's progress report, was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// It does not fit where the trial is now (the API's 409).
    #[error("{0}")]
    Refused(String),
    /// The trial has no live executor: it ended, or failed (the API's 409).
    #[error("{0}")]
    NotLive(String),
    /// It fits, but could not be saved, so it was not made (the API's 503).
    #[error("the change was not saved, so it was not made: {0}")]
    NotSaved(String),
    /// The engine stopped before it answered: the service is stopping, or the engine was
    /// deleted (the API's 503).
    #[error("{STOPPED}")]
    Stopped,
}

impl ControlError {
    /// The outcome as a metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            ControlError::Refused(_) => "refused_wrong_phase",
            ControlError::NotLive(_) => "refused_not_live",
            ControlError::NotSaved(_) => "not_saved",
            ControlError::Stopped => "refused_not_live",
        }
    }
}

/// How an action, or a progress report, was taken: `Ok` with what was done.
pub type ControlOutcome = Result<String, ControlError>;

/// An action that does not fit now, with why.
fn refused(reason: String) -> ControlOutcome {
    Err(ControlError::Refused(reason))
}

/// A component's progress report (SPEC §13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgressReport {
    pub progress: Option<u8>,
    pub message: Option<String>,
}

/// Something for the executor, and where to send its answer.
pub enum Command {
    Signal(Signal, oneshot::Sender<SignalOutcome>),
    Progress(ProgressReport, oneshot::Sender<ControlOutcome>),
    Control(Control, oneshot::Sender<ControlOutcome>),
}

/// A checkpoint for the watchdog, acknowledged once it is kept (and, with a store, saved),
/// with the callers whose answer waits for that save.
pub struct Checkpointed {
    /// Boxed: every engine's channel keeps a block of slots, which stays small this way.
    pub checkpoint: Box<Checkpoint>,
    pub lifecycle: Lifecycle,
    pub ack: Ack,
    /// Boxed like the checkpoint.
    pub answers: Box<Answers>,
}

/// Where the watchdog says whether it saved a checkpoint the executor handed over.
pub type Ack = oneshot::Sender<Result<(), Unsaved>>;

/// The callers answered once a checkpoint is saved, by whoever saves it: when the service
/// stops, the executor may be gone by then, and a caller told that its change was not made
/// must not find it made after the restart.
pub struct Answers {
    /// The signal the checkpoint takes, and its answer once saved.
    signal: Option<(oneshot::Sender<SignalOutcome>, SignalOutcome)>,
    /// The aborts whose clean-up the checkpoint begins, or goes on with.
    aborts: Vec<oneshot::Sender<ControlOutcome>>,
}

/// A checkpoint not saved: why, and the aborts that wait for the next save of it.
pub struct Unsaved {
    error: String,
    aborts: Vec<oneshot::Sender<ControlOutcome>>,
}

impl Answers {
    /// Whether the checkpoint takes a signal (which a failed save leaves untaken).
    pub fn takes_signal(&self) -> bool {
        self.signal.is_some()
    }

    /// Answers the callers after the save of their checkpoint: a signal is taken, or told it
    /// was not (and to send it again); aborts are accepted, or handed back to wait for the
    /// next save.
    pub fn settle(self, id: &TrialId, saved: Result<(), String>) -> Result<(), Unsaved> {
        match saved {
            Ok(()) => {
                if let Some((reply, outcome)) = self.signal {
                    let _ = reply.send(outcome);
                }
                for (i, reply) in self.aborts.into_iter().enumerate() {
                    let _ = reply.send(Ok(abort_accepted(id, i > 0)));
                }
                Ok(())
            }
            Err(error) => {
                if let Some((reply, _)) = self.signal {
                    let _ = reply.send(SignalOutcome::NotSaved(error.clone()));
                }
                Err(Unsaved {
                    error,
                    aborts: self.aborts,
                })
            }
        }
    }
}

/// How the executor task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecutorExit {
    Finished,
    Aborted,
    Failed(String),
    /// The service stops, and the step in flight failed on the answer it had meanwhile: the
    /// failure is not acted on, and the step runs again after the restart.
    Stopped,
}

/// What the executor does with a signal, decided from where it is (SPEC §4's signal rules).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
    Take(Step),
    Hold(Wait),
    Duplicate,
    Refuse(String),
}

/// Decides a signal's fate. `accepted` and `held` are the signals taken or kept so far.
fn decide(
    position: Position,
    signal: Signal,
    accepted: &[(Wait, Signal)],
    held: &[(Wait, Signal)],
) -> Decision {
    let seen = |wait: Option<Wait>| {
        accepted
            .iter()
            .chain(held)
            .any(|(w, s)| *s == signal && wait.is_none_or(|wait| wait == *w))
    };
    match position {
        Position::Wait(wait) => {
            if let Some((_, next)) = sequence::wait_spec(wait)
                .exits
                .iter()
                .find(|(s, _)| *s == signal)
            {
                return Decision::Take(*next);
            }
        }
        Position::Run(step) => {
            let early = WAITS.iter().find(|spec| {
                spec.early_during.contains(&step) && spec.exits.iter().any(|(s, _)| *s == signal)
            });
            if let Some(spec) = early {
                return if seen(Some(spec.wait)) {
                    Decision::Duplicate
                } else {
                    Decision::Hold(spec.wait)
                };
            }
        }
    }
    if seen(None) {
        return Decision::Duplicate;
    }
    let now = match position {
        Position::Run(step) => format!("the executor is running {}", step.name()),
        Position::Wait(wait) => format!(
            "the executor is waiting for {}",
            sequence::wait_spec(wait).waiting_for
        ),
    };
    Decision::Refuse(format!("{} does not fit now: {now}", signal.name()))
}

/// Where a step or a wait leads.
enum Outcome {
    To(Position),
    Finished,
    /// The clean-up path is done.
    Aborted,
    Failed(String),
    /// The service stops: see [`ExecutorExit::Stopped`].
    Stopped,
    /// The operator asked for an abort; whatever was in flight is dropped. `recorded`: its
    /// `abort_requested` event is in the history already (it waited for a request's answer).
    Abort {
        reason: String,
        recorded: bool,
    },
}

/// The executor: owns the trial's checkpoint while it runs.
pub struct Executor {
    pub(super) id: TrialId,
    pub(super) deps: Arc<EngineDeps>,
    pub(super) shared: Arc<EngineShared>,
    pub(super) checkpoint: Checkpoint,
    /// The first step runs again (the executor was restored, or recovered after a crash).
    pub(super) rerun: bool,
    pub(super) commands: Inbox<Command>,
    pub(super) checkpoints: mpsc::Sender<Checkpointed>,
    /// The operator stepped a paused trial: the next step may run.
    pub(super) stepping: bool,
    /// The answer to a signal taken at a waiting point, sent once the checkpoint that takes
    /// it is saved: a caller told it was accepted finds it accepted after a crash.
    pub(super) answer: Option<PendingAnswer>,
    /// Aborts not answered yet: each is answered once the clean-up it starts is saved, so an
    /// operator told it is accepted finds the trial aborting after a restart.
    pub(super) aborts: Vec<oneshot::Sender<ControlOutcome>>,
}

/// A signal taken at a waiting point, not answered yet.
pub(super) struct PendingAnswer {
    reply: oneshot::Sender<SignalOutcome>,
    outcome: SignalOutcome,
    /// The checkpoint before the signal was taken: the trial is back there if it is not saved.
    before: Box<Checkpoint>,
}

impl Executor {
    /// Runs until the trial finishes, is aborted, or fails. A step's requests and the ending
    /// are boxed, each while it runs: the task of an engine that waits (most of them, most of
    /// the time) keeps only what waiting needs, a third of the size.
    pub async fn run(mut self) -> ExecutorExit {
        loop {
            let outcome = match (self.status_again(), self.checkpoint.position) {
                (Some(step), _) => self.write_status_again(step).await,
                (None, Position::Run(step)) if self.checkpoint.paused && !self.stepping => {
                    self.hold(step).await
                }
                (None, Position::Run(step)) => Box::pin(self.run_step(step)).await,
                (None, Position::Wait(wait)) => self.wait(wait).await,
            };
            let position = match outcome {
                Outcome::To(position) => position,
                Outcome::Finished => return Box::pin(self.end(Lifecycle::Finished)).await,
                Outcome::Aborted => return Box::pin(self.end(Lifecycle::Aborted)).await,
                Outcome::Failed(reason) => {
                    let first = match &mut self.checkpoint.mode {
                        Mode::Cleanup { failed, .. } => failed.take(),
                        Mode::Normal => None,
                    };
                    let reason = match first {
                        // A clean-up fails where it first failed, whatever failed last.
                        Some((step, first)) => {
                            self.checkpoint.go_to(Position::Run(step));
                            first
                        }
                        None => reason,
                    };
                    return Box::pin(self.fail(reason)).await;
                }
                Outcome::Stopped => return ExecutorExit::Stopped,
                Outcome::Abort { reason, recorded } => self.begin_cleanup(reason, recorded),
            };
            self.checkpoint.go_to(position);
            self.save_until_kept(self.lifecycle()).await;
        }
    }

    /// Saves the checkpoint, again and again while the store cannot (a full disk, say): a
    /// store's fault is waited out, never a reason to fail the trial. The trial stays where it
    /// stands, its next request not sent, and each command meanwhile is told the store cannot
    /// save it now. A checkpoint that took a signal is not saved again: that signal's caller
    /// is told it was not taken, and the trial is back where the signal found it.
    async fn save_until_kept(&mut self, lifecycle: Lifecycle) {
        let mut wait = RESAVE_FIRST;
        let mut retried = false;
        loop {
            let took_signal = self.answer.is_some();
            let aborts = std::mem::take(&mut self.aborts);
            match self.save(lifecycle, aborts).await {
                Ok(()) => {
                    if retried {
                        info!("the checkpoint is saved now: the trial goes on");
                    }
                    return;
                }
                Err(e) if took_signal => {
                    warn!(error = %e, "the checkpoint that took a signal was not saved: the signal is not taken, and its sender is told to send it again");
                    // It came, and its sender was told to send it again: the wait's time
                    // counts again from now, so a store that cannot write does not time the
                    // wait out while the signal is being sent again.
                    self.checkpoint.waiting_since = Some(Utc::now());
                    return;
                }
                Err(e) => {
                    warn!(
                        error = %e,
                        "checkpoint not saved: the trial waits here, its next request not sent, and saves it again in {} s",
                        wait.as_secs()
                    );
                    self.answer_unsaved_until(Deadline::now() + wait, &e).await;
                    wait = resave_after(wait);
                    retried = true;
                }
            }
        }
    }

    /// Until `until`, while the checkpoint is not saved, tells each command that the store
    /// cannot save it now (503, not taken); an abort of a trial already aborting waits with
    /// the others for the save.
    async fn answer_unsaved_until(&mut self, until: Deadline, error: &str) {
        let cleaning_up = self.cleaning_up();
        let aborts = &mut self.aborts;
        self.commands
            .answer_until(until, |command| match command {
                Command::Signal(_, reply) => {
                    let _ = reply.send(SignalOutcome::NotSaved(error.to_owned()));
                }
                Command::Control(Control::Abort { .. }, reply) if cleaning_up => {
                    aborts.push(reply);
                }
                Command::Control(_, reply) | Command::Progress(_, reply) => {
                    let _ = reply.send(Err(ControlError::NotSaved(error.to_owned())));
                }
            })
            .await;
    }

    /// The status step to run again before the trial goes on from where it stands, while the
    /// repository shows the `FAILED` of a failure it was restored from
    /// ([`sequence::status_again_before`]).
    fn status_again(&self) -> Option<Step> {
        if self.cleaning_up()
            || self.checkpoint.data.repository_status.as_deref() != Some(failure::REPORTED)
        {
            return None;
        }
        sequence::status_again_before(
            self.checkpoint.position,
            !self.deps.settings.executor.disable_vnf,
        )
    }

    /// Runs status `step` again, even while the trial is paused, like the status step a
    /// restore runs before the operator's wait; the trial stays where it stands.
    async fn write_status_again(&mut self, step: Step) -> Outcome {
        info!(
            step = step.name(),
            "the repository shows FAILED since the trial failed: the status it had is written again first"
        );
        // The step where the trial stands keeps what it was to be told; this one goes as if
        // stepped to, so the operator's pause does not hold it.
        let (rerun, stepping) = (self.rerun, self.stepping);
        self.stepping = true;
        let outcome = Box::pin(self.run_step(step)).await;
        (self.rerun, self.stepping) = (rerun, stepping);
        match outcome {
            Outcome::To(_) => Outcome::To(self.checkpoint.position),
            other => other,
        }
    }

    fn cleaning_up(&self) -> bool {
        matches!(self.checkpoint.mode, Mode::Cleanup { .. })
    }

    /// The lifecycle at the current position.
    fn lifecycle(&self) -> Lifecycle {
        match self.checkpoint.position {
            Position::Run(_) if self.checkpoint.paused && !self.stepping => Lifecycle::Waiting,
            Position::Run(_) => Lifecycle::Running,
            Position::Wait(_) => Lifecycle::Waiting,
        }
    }

    /// Runs one step while still answering commands: a request in flight never blocks the
    /// API. An abort drops the step (its request is cancelled), unless the request in flight
    /// makes what the clean-up undoes, or writes the repository's status: then the clean-up
    /// begins once that attempt has its answer (no further attempt is made).
    async fn run_step(&mut self, step: Step) -> Outcome {
        self.shared.move_to(Lifecycle::Running, &self.checkpoint);
        info!(step = step.name(), "step started");
        self.shared
            .journal
            .event(EventKind::StepStarted, Some(step), None, None);
        if let Some(hook) = &self.deps.hooks.before_step {
            hook(&self.id, step);
        }
        let started = Instant::now();
        let cleanup = self.cleaning_up();
        let stepping = self.stepping;
        let uncut = &self.shared.uncut;
        let last_attempt = self.shared.stop.child_token();
        let mut abort_after: Option<String> = None;
        // The service began to stop while the abort waited: it is not carried out.
        let mut abort_dropped = false;
        let result = {
            let Checkpoint {
                data,
                accepted,
                held,
                paused,
                run,
                started_at,
                ..
            } = &mut self.checkpoint;
            let mut cx = StepCx {
                deps: &self.deps,
                id: &self.id,
                data,
                step,
                rerun: std::mem::take(&mut self.rerun),
                cleanup,
                run: *run,
                started_at: *started_at,
                posts: 0,
                may_have_made: false,
                done_before_last: false,
                last_attempt: &last_attempt,
                shared: &self.shared,
                stepping,
            };
            let work = steps::run(&mut cx);
            tokio::pin!(work);
            loop {
                tokio::select! {
                    result = &mut work => break Ok(result),
                    // Said as the stop begins, whether the answer comes within the grace or not.
                    () = self.shared.stop.cancelled(), if abort_after.is_some() && !abort_dropped => {
                        abort_dropped = true;
                        abort_not_carried_out(&self.shared, step);
                    }
                    Some(command) = self.commands.recv() => {
                        let command = match command {
                            Command::Control(Control::Abort { reason }, reply)
                                if !cleanup && (abort_after.is_some() || uncut.load(Ordering::SeqCst)) =>
                            {
                                if abort_after.is_none() {
                                    info!(step = step.name(), "abort: the clean-up begins once the step has its answer");
                                    self.shared.journal.event(
                                        EventKind::AbortRequested,
                                        Some(step),
                                        Some(reason.clone()),
                                        None,
                                    );
                                    self.shared.show_aborting(&reason);
                                    last_attempt.cancel();
                                    abort_after = Some(reason);
                                }
                                self.aborts.push(reply);
                                continue;
                            }
                            command => command,
                        };
                        let doing = "the executor is running";
                        // Once an abort waits for the answer, the trial is as good as cleaning up.
                        let cleanup = cleanup || abort_after.is_some();
                        match at_step(step, doing, command, accepted, held, &self.id, cleanup) {
                            AtStep::Answered => {}
                            AtStep::Kept(signal, reply) => {
                                let _ = reply.send(keep(&self.shared, step, signal, held).await);
                            }
                            AtStep::Abort(reason, reply) => {
                                self.aborts.push(reply);
                                break Err(reason);
                            }
                            AtStep::Control(Control::Step { .. }, reply) if *paused => {
                                let _ = reply.send(refused(if stepping {
                                    format!(
                                        "trial {} is paused and completes the step it was stepped to first: step once it holds before the next",
                                        self.id
                                    )
                                } else {
                                    format!(
                                        "trial {} was paused while {} ran: a request in flight completes, and the step's next request waits for resume (step moves a trial held between steps)",
                                        self.id,
                                        step.name()
                                    )
                                }));
                            }
                            AtStep::Control(control, reply) => {
                                set_pause(&self.shared, paused, control, reply, cleanup, None)
                                    .await;
                            }
                        }
                    }
                }
            }
        };
        let elapsed_ms = elapsed_ms(started);
        self.stepping = false;
        let result = match result {
            Ok(result) => result,
            Err(reason) => {
                info!(step = step.name(), "step cancelled by an abort");
                return Outcome::Abort {
                    reason,
                    recorded: false,
                };
            }
        };
        let label = if result.is_ok() {
            "completed"
        } else {
            "failed"
        };
        metrics::counter!("lcm_steps_total", "step" => step.name(), "outcome" => label)
            .increment(1);
        let outcome = match result {
            Ok(()) => {
                info!(step = step.name(), elapsed_ms, "step completed");
                if step == Step::GetCallbackToken {
                    *self.shared.token() = self.checkpoint.data.token.clone();
                }
                self.shared.journal.event(
                    EventKind::StepCompleted,
                    Some(step),
                    None,
                    Some(elapsed_ms),
                );
                self.after(step)
            }
            Err(StepError(e)) => {
                // A step's reason may quote what a component answered: shown, it is redacted.
                let redactor = self
                    .deps
                    .secrets
                    .with(self.checkpoint.data.token.as_deref());
                let reason = at_most(
                    redactor.text(&format!("{} failed: {e}", step.name())),
                    MAX_REASON_CHARS,
                );
                self.shared.journal.event(
                    EventKind::StepFailed,
                    Some(step),
                    Some(reason.clone()),
                    Some(elapsed_ms),
                );
                if self.shared.stop.is_cancelled() {
                    info!(
                        step = step.name(),
                        reason = %reason,
                        "the service stops: the step failed on the answer it waited for, and runs again after the restart; nothing is reported as failed"
                    );
                    Outcome::Stopped
                } else if cleanup {
                    self.after_cleanup_failure(step, reason)
                } else {
                    Outcome::Failed(reason)
                }
            }
        };
        match abort_after {
            // The service stops while the abort waited for this answer: the step's own outcome
            // is what is saved, and the abort is not carried out; its caller is told the engine
            // stopped before it was saved (503), so the answer and what happens agree.
            Some(_) if self.shared.stop.is_cancelled() => {
                if !abort_dropped {
                    abort_not_carried_out(&self.shared, step);
                }
                // Not answered with the step's checkpoint, which does not take them.
                self.aborts.clear();
                outcome
            }
            Some(reason) => Outcome::Abort {
                reason,
                recorded: true,
            },
            None => outcome,
        }
    }

    /// A clean-up step failed for good: the clean-up goes on with what it can still undo, then
    /// fails with the first reason.
    fn after_cleanup_failure(&mut self, step: Step, reason: String) -> Outcome {
        // Saved with the checkpoint: the first failure outlives a restart.
        if let Mode::Cleanup { failed, .. } = &mut self.checkpoint.mode {
            failed.get_or_insert((step, reason.clone()));
        }
        let data = &self.checkpoint.data;
        match sequence::undo_after_failure(step, data.kpi_status, &data.ledger) {
            Some(next) => {
                info!(
                    step = step.name(),
                    next = next.name(),
                    "clean-up step failed: undoing the rest first"
                );
                Outcome::To(Position::Run(next))
            }
            None => Outcome::Failed(reason),
        }
    }

    /// Where the path goes after `step` completed.
    fn after(&self, step: Step) -> Outcome {
        match &self.checkpoint.mode {
            Mode::Normal => match sequence::after_deployed(
                step,
                !self.deps.settings.executor.disable_vnf,
                &self.checkpoint.data.ledger,
            ) {
                Some(next) => next.position().map_or(Outcome::Finished, Outcome::To),
                None => Outcome::Failed(format!(
                    "{} is not a step of the trial sequence",
                    step.name()
                )),
            },
            Mode::Cleanup { failed, .. } => {
                let data = &self.checkpoint.data;
                match (
                    sequence::cleanup_after(step, data.kpi_status, &data.ledger),
                    failed,
                ) {
                    (None, _) => {
                        Outcome::Failed(format!("{} is not a step of the clean-up", step.name()))
                    }
                    // The repository hears ABORTED only once everything is undone: else the
                    // clean-up fails with its first failure (`run` puts it where it was).
                    (Some(Next::Step(Step::UpdateStatusAborted)), Some((_, first))) => {
                        Outcome::Failed(first.clone())
                    }
                    (Some(next), _) => next.position().map_or(Outcome::Aborted, Outcome::To),
                }
            }
        }
    }

    /// The operator's gate before `step`: holds until the trial is resumed, stepped or
    /// aborted, answering every command meanwhile.
    async fn hold(&mut self, step: Step) -> Outcome {
        self.shared.move_to(Lifecycle::Waiting, &self.checkpoint);
        info!(step = step.name(), "paused before the step");
        let cleanup = self.cleaning_up();
        loop {
            let Some(command) = self.commands.recv().await else {
                return Outcome::Failed("the engine's command channel closed".to_owned());
            };
            let Checkpoint { accepted, held, .. } = &mut self.checkpoint;
            let doing = "the trial is paused before";
            match at_step(step, doing, command, accepted, held, &self.id, cleanup) {
                AtStep::Answered => {}
                AtStep::Kept(signal, reply) => {
                    let _ = reply.send(keep(&self.shared, step, signal, held).await);
                }
                AtStep::Abort(reason, reply) => {
                    self.aborts.push(reply);
                    return Outcome::Abort {
                        reason,
                        recorded: false,
                    };
                }
                AtStep::Control(Control::Step { reason }, reply) => {
                    // Saved as what it leaves, a trial paused after the step, with its event
                    // in one commit, before the operator hears of it: a store that cannot
                    // write refuses the step, and nothing runs. (The event makes the commit
                    // write: a trial paused already changes no page.)
                    let pause = Op::SetPaused {
                        id: self.id.clone(),
                        paused: true,
                    };
                    let saved = (self.shared.journal)
                        .event_saved(EventKind::Stepped, Some(step), reason, vec![pause])
                        .await;
                    if let Err(e) = saved {
                        let _ = reply.send(Err(ControlError::NotSaved(e.to_string())));
                        continue;
                    }
                    self.stepping = true;
                    let _ = reply.send(Ok(format!(
                        "trial {} runs {} and stays paused",
                        self.id,
                        step.name()
                    )));
                    return Outcome::To(Position::Run(step));
                }
                AtStep::Control(control, reply) => {
                    let held = Some(self.checkpoint.clone());
                    set_pause(
                        &self.shared,
                        &mut self.checkpoint.paused,
                        control,
                        reply,
                        cleanup,
                        held,
                    )
                    .await;
                    if !self.checkpoint.paused {
                        return Outcome::To(Position::Run(step));
                    }
                }
            }
        }
    }

    /// Waits at a waiting point for a signal that leaves it, answering every command.
    async fn wait(&mut self, wait: Wait) -> Outcome {
        let spec = sequence::wait_spec(wait);
        let awaits_creation = self.awaits_slice_creation(wait);
        if awaits_creation && self.take_held_slice_callback() {
            // Kept early, during the slice deployment the abort let finish or the clean-up's
            // close: the first slice callback is the creation's all the same.
            self.checkpoint.accepted.push(SLICE_CREATED);
            return self.wait_again(wait, "slice callback (slice created, arrived early)", 0);
        }
        // Cleaning up, a deployment never answered may still make its slice: any slice callback
        // kept meanwhile is that slice's creation.
        let late_creation = self.cleaning_up() && wait == Wait::SliceCreated;
        if late_creation && self.take_held_slice_callback() {
            let detail = "slice callback (slice created, late; arrived early)".to_owned();
            return self.take(wait, Signal::SliceCallback, Step::CloseService, detail, 0);
        }
        if late_creation && let Some(sent) = self.slice_deployment_sent_at() {
            // A late slice's callback is due within the time a component is given to call
            // back, counted from the deployment it answers, not from the clean-up.
            let reached = self.checkpoint.waiting_since.get_or_insert(sent);
            *reached = (*reached).min(sent);
        }
        if let Some(i) = self.checkpoint.held.iter().position(|(w, _)| *w == wait) {
            let (_, signal) = self.checkpoint.held.remove(i);
            if let Decision::Take(next) =
                decide(Position::Wait(wait), signal, &self.checkpoint.accepted, &[])
            {
                info!(signal = signal.name(), "applying the early signal");
                let detail = format!("{} (arrived early)", signal.name());
                return self.take(wait, signal, next, detail, 0);
            }
        }
        let executor = &self.deps.settings.executor;
        let at = |secs: u64| Deadline::now() + Duration::from_secs(secs);
        // The wait's time counts from when the trial reached it, across restarts.
        let since = *self.checkpoint.waiting_since.get_or_insert_with(Utc::now);
        // (Settings hold at most ten years.)
        let after = |secs: u64| {
            deadline::at(
                since + chrono::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX / 1000)),
            )
        };
        let (limit, heartbeat_secs, trial_deadline) = match spec.waiter {
            Waiter::Component => (
                Some(after(executor.callback_timeout_secs)),
                // A slice not made sends no progress.
                executor.callback_heartbeat_secs.filter(|_| !late_creation),
                None,
            ),
            Waiter::Operator => (
                executor.operator_timeout_secs.map(after),
                None,
                self.checkpoint
                    .data
                    .deadline
                    .filter(|_| !self.cleaning_up())
                    .map(deadline::at),
            ),
        };
        if late_creation && limit.is_some_and(|limit| limit <= Deadline::now()) {
            // The clean-up came after the late slice's callback was due: nothing to wait for.
            return self.no_slice_made();
        }
        let awaiting = if awaits_creation {
            Some(Awaiting::BothSliceCallbacks)
        } else if late_creation {
            Some(Awaiting::LateSliceCreation)
        } else {
            None
        };
        let waiting_for = awaiting.map_or(spec.waiting_for, Awaiting::text);
        info!(waiting_for, "waiting");
        self.shared
            .journal
            .event(EventKind::Waiting, None, Some(waiting_for.to_owned()), None);
        self.shared
            .move_awaiting(Lifecycle::Waiting, &self.checkpoint, awaiting);
        let waiting_since = Instant::now();
        let mut heartbeat = heartbeat_secs.map(at);
        // The progress reports taken in this wait.
        let mut reports = 0;
        let cleanup = self.cleaning_up();
        let outcome = loop {
            let command = tokio::select! {
                command = self.commands.recv() => command,
                () = sleep_until(limit) => {
                    if late_creation {
                        break self.no_slice_made();
                    }
                    if self.may_have_taken_the_closing(wait) {
                        break self.close_again();
                    }
                    break Outcome::Failed(format!("timed out waiting for {}", spec.waiting_for));
                }
                () = sleep_until(heartbeat) => {
                    break Outcome::Failed(format!(
                        "timed out waiting for {}: no progress for {} s",
                        spec.waiting_for,
                        heartbeat_secs.unwrap_or_default()
                    ));
                }
                () = sleep_until(trial_deadline) => {
                    info!("the trial's deadline has come: finishing it");
                    self.shared.journal.event(
                        EventKind::TrialDeadline,
                        None,
                        Some("the trial's deadline has come: finishing it".to_owned()),
                        None,
                    );
                    match decide(Position::Wait(wait), Signal::Finish, &self.checkpoint.accepted, &[]) {
                        Decision::Take(next) => {
                            let waited = elapsed_ms(waiting_since);
                            break self.take(wait, Signal::Finish, next, "finish (trial deadline)".to_owned(), waited);
                        }
                        other => break Outcome::Failed(format!("the trial's deadline came, but it cannot finish here: {other:?}")),
                    }
                }
            };
            let Some(command) = command else {
                break Outcome::Failed("the engine's command channel closed".to_owned());
            };
            match command {
                Command::Signal(Signal::SliceCallback, reply) if awaits_creation => {
                    info!("slice callback: the slice-created one, come after the abort");
                    let before = Box::new(self.checkpoint.clone());
                    self.checkpoint.accepted.push(SLICE_CREATED);
                    let waited = elapsed_ms(waiting_since);
                    self.answer = Some(PendingAnswer {
                        reply,
                        outcome: SignalOutcome::Accepted(Next::Wait(wait)),
                        before,
                    });
                    break self.wait_again(wait, "slice callback (slice created)", waited);
                }
                Command::Signal(signal, reply) => {
                    let decision = decide(
                        Position::Wait(wait),
                        signal,
                        &self.checkpoint.accepted,
                        &self.checkpoint.held,
                    );
                    if let Decision::Take(next) = decision {
                        info!(
                            signal = signal.name(),
                            "signal taken: answered once its checkpoint is saved"
                        );
                        let waited = elapsed_ms(waiting_since);
                        let before = Box::new(self.checkpoint.clone());
                        let detail = if late_creation {
                            "slice callback (slice created, late)".to_owned()
                        } else {
                            signal.name().to_owned()
                        };
                        let outcome = self.take(wait, signal, next, detail, waited);
                        // Where the executor goes from here: on the clean-up path, not the table's.
                        // Answered once the checkpoint that takes it is saved.
                        let accepted = SignalOutcome::Accepted(match &outcome {
                            Outcome::To(Position::Run(step)) => Next::Step(*step),
                            Outcome::To(Position::Wait(wait)) => Next::Wait(*wait),
                            Outcome::Finished
                            | Outcome::Aborted
                            | Outcome::Failed(_)
                            | Outcome::Stopped
                            | Outcome::Abort { .. } => Next::End,
                        });
                        self.answer = Some(PendingAnswer {
                            reply,
                            outcome: accepted,
                            before,
                        });
                        break outcome;
                    }
                    let _ = reply.send(answer(decision));
                }
                Command::Progress(report, reply) => {
                    if spec.waiter != Waiter::Component {
                        let _ = reply.send(refused(format!(
                            "no component callback is awaited: the executor is waiting for {}",
                            spec.waiting_for
                        )));
                        continue;
                    }
                    let (progress, detail) = self.progress(report);
                    // Saved before it counts, is shown and is answered: a report answered is
                    // shown after a restart too, and one refused changes nothing.
                    let saved = self
                        .shared
                        .deps
                        .store
                        .write(Op::SetProgress {
                            id: self.id.clone(),
                            progress: progress.clone(),
                        })
                        .await;
                    if let Err(e) = saved {
                        let _ = reply.send(Err(ControlError::NotSaved(e.to_string())));
                        continue;
                    }
                    heartbeat = heartbeat_secs.map(at);
                    reports += 1;
                    self.progress_event(reports, detail).await;
                    self.checkpoint.progress = Some(progress.clone());
                    self.shared.show_progress(progress);
                    let _ = reply.send(Ok(format!("progress recorded for trial {}", self.id)));
                }
                Command::Control(Control::Abort { reason }, reply) => {
                    if cleanup {
                        let _ = reply.send(Ok(abort_accepted(&self.id, true)));
                    } else {
                        self.aborts.push(reply);
                        break Outcome::Abort {
                            reason,
                            recorded: false,
                        };
                    }
                }
                Command::Control(Control::Step { .. }, reply) => {
                    let _ = reply.send(refused(if cleanup {
                        being_aborted(&self.id)
                    } else if self.checkpoint.paused {
                        format!(
                            "the trial is waiting for {}: nothing to step yet",
                            spec.waiting_for
                        )
                    } else {
                        "the trial is not paused".to_owned()
                    }));
                }
                Command::Control(control, reply) => {
                    set_pause(
                        &self.shared,
                        &mut self.checkpoint.paused,
                        control,
                        reply,
                        cleanup,
                        None,
                    )
                    .await;
                }
            }
        };
        self.checkpoint.progress = None;
        self.shared.clear_progress();
        outcome
    }

    /// Takes a signal that leaves `wait` for `next`.
    fn take(
        &mut self,
        wait: Wait,
        signal: Signal,
        next: Step,
        detail: String,
        waited: u64,
    ) -> Outcome {
        self.checkpoint.accepted.push((wait, signal));
        self.shared
            .journal
            .event(EventKind::SignalAccepted, None, Some(detail), Some(waited));
        match wait {
            Wait::SliceClosed => self.checkpoint.data.ledger.slice = SliceState::Closed,
            // A slice made late by a deployment never answered: the clean-up closes it next.
            Wait::SliceCreated if self.cleaning_up() => {
                self.checkpoint.data.ledger.slice = SliceState::Announced;
            }
            _ => {}
        }
        if self.cleaning_up() {
            // The clean-up's own path goes on after the slice is closed.
            return self.after(Step::CloseService);
        }
        Outcome::To(Position::Run(next))
    }

    /// The clean-up's wait for a late slice-created callback ended without one, the
    /// `callback_timeout_secs` a component is given to call back: the deployment made no
    /// slice, and nothing is left to close.
    fn no_slice_made(&mut self) -> Outcome {
        let timeout_secs = self.deps.settings.executor.callback_timeout_secs;
        let detail = format!(
            "no slice-created callback came within {timeout_secs} s (executor.callback_timeout_secs) of a slice deployment that was never answered (counted from when it was sent), and trial enforcement had no slice: it made none, and nothing is left to close"
        );
        info!("{detail}");
        self.shared
            .journal
            .event(EventKind::NoSliceMade, None, Some(detail), None);
        self.checkpoint.data.ledger.slice = SliceState::Closed;
        self.after(Step::CloseService)
    }

    /// Whether `wait` is the clean-up's wait for the slice-closed callback while the
    /// slice-created one has not come though it is due: the abort let the slice deployment
    /// have its answer, just before. The first slice callback is then the creation's (SPEC §4:
    /// the first time created, the second closed). A trial aborted later, at the wait for it,
    /// takes the first callback as the closing's: that creation's callback may never come.
    fn awaits_slice_creation(&self, wait: Wait) -> bool {
        self.closing_after_creation_due(wait) == Some(false)
    }

    /// Whether `wait` is the clean-up's wait for the slice-closed callback after it took the
    /// first callback as the slice-created one that was due ([`Self::awaits_slice_creation`]):
    /// when no second one comes, the first may have been the closing's, the creation's never
    /// sent.
    fn may_have_taken_the_closing(&self, wait: Wait) -> bool {
        self.closing_after_creation_due(wait) == Some(true)
    }

    /// At the clean-up's wait for the slice-closed callback with the slice-created one due
    /// (the abort let the slice deployment have its answer): whether a callback was taken as
    /// the creation's since. `None` at any other wait.
    fn closing_after_creation_due(&self, wait: Wait) -> Option<bool> {
        let creation_due = matches!(
            self.checkpoint.mode,
            Mode::Cleanup {
                creation_due: true,
                ..
            }
        );
        (wait == Wait::SliceClosed && creation_due)
            .then(|| self.checkpoint.accepted.contains(&SLICE_CREATED))
    }

    /// The clean-up's wait for the slice-closed callback ended without one, after the callback
    /// taken as the slice-created one may have been the closing's: `CloseService` is sent once
    /// more, and trial enforcement's 404 (it has no such slice) says the slice is closed. Any
    /// other answer waits for the closing's callback again, which, not coming, fails the
    /// clean-up as any wait's end does.
    fn close_again(&mut self) -> Outcome {
        let timeout_secs = self.deps.settings.executor.callback_timeout_secs;
        let detail = format!(
            "no second slice callback came within {timeout_secs} s (executor.callback_timeout_secs): the one taken as the slice-created callback may have been the closing's, the creation's never sent; the close is sent again, and trial enforcement's 404 says the slice is closed"
        );
        info!("{detail}");
        self.shared
            .journal
            .event(EventKind::CloseAskedAgain, None, Some(detail), None);
        if let Mode::Cleanup { creation_due, .. } = &mut self.checkpoint.mode {
            *creation_due = false;
        }
        Outcome::To(Position::Run(Step::CloseService))
    }

    /// When the slice deployment was last sent, as its last recorded attempt says (none if no
    /// attempt was recorded: one in flight when the service was killed).
    fn slice_deployment_sent_at(&self) -> Option<DateTime<Utc>> {
        self.shared
            .journal
            .responses()
            .iter()
            .rev()
            .find(|r| r.step == Step::SliceDeployment.name() && r.method == "POST")
            .map(|r| {
                let took = i64::try_from(r.duration_ms).ok();
                let took = took.and_then(chrono::Duration::try_milliseconds);
                took.and_then(|took| r.at.checked_sub_signed(took))
                    .unwrap_or(r.at)
            })
    }

    /// Removes a slice callback kept early, for whichever wait it was kept: whether there was.
    fn take_held_slice_callback(&mut self) -> bool {
        let held = &mut self.checkpoint.held;
        match held.iter().position(|(_, s)| *s == Signal::SliceCallback) {
            Some(i) => {
                held.remove(i);
                true
            }
            None => false,
        }
    }

    /// Records the slice-created callback taken at `wait`, which goes on waiting.
    fn wait_again(&mut self, wait: Wait, detail: &str, waited: u64) -> Outcome {
        self.shared.journal.event(
            EventKind::SignalAccepted,
            None,
            Some(detail.to_owned()),
            Some(waited),
        );
        Outcome::To(Position::Wait(wait))
    }

    /// The history event of a wait's `nth` progress report, committed before it is answered.
    /// A wait keeps the events of its first [`PROGRESS_EVENTS_PER_WAIT`] reports, and one that
    /// says the next ones are not kept: a component that reports in a tight loop cannot fill
    /// the memory and the store (the status still shows each report).
    async fn progress_event(&self, nth: usize, detail: Option<String>) {
        let detail = if nth <= PROGRESS_EVENTS_PER_WAIT {
            detail
        } else if nth == PROGRESS_EVENTS_PER_WAIT + 1 {
            Some(format!(
                "more than {PROGRESS_EVENTS_PER_WAIT} progress reports in this wait: the next ones show in the status only"
            ))
        } else {
            return;
        };
        let journal = &self.shared.journal;
        journal.event(EventKind::Progress, None, detail, None);
        if let Err(e) = self.shared.deps.store.flush().await {
            warn!("a progress report's history event could not be saved: {e}");
        }
    }

    /// A component's progress report: what the status is to show until the wait ends (a field
    /// it leaves out keeps the value an earlier report of the same wait gave: a bare heartbeat
    /// wipes nothing), and its history event's detail.
    fn progress(&self, mut report: ProgressReport) -> (Progress, Option<String>) {
        // A component may quote a secret (its credentials, a token of the trial): what is kept
        // and shown of its report is redacted, as its answers are, and any token in it.
        if let Some(message) = &mut report.message {
            let redactor = self
                .deps
                .secrets
                .with(self.checkpoint.data.token.as_deref());
            *message = redactor.text_and_tokens(message);
        }
        let detail = match (&report.progress, &report.message) {
            (Some(p), Some(m)) => Some(format!("{p}%: {m}")),
            (Some(p), None) => Some(format!("{p}%")),
            (None, Some(m)) => Some(m.clone()),
            (None, None) => None,
        };
        let last = self.checkpoint.progress.as_ref();
        let progress = Progress {
            progress: report.progress.or(last.and_then(|l| l.progress)),
            message: report
                .message
                .or_else(|| last.and_then(|l| l.message.clone())),
            at: state::now(),
        };
        (progress, detail)
    }

    /// Switches to the clean-up path (SPEC §14); returns where it starts. `recorded`: the
    /// abort's event is in the history already (it waited for a request's answer).
    fn begin_cleanup(&mut self, reason: String, recorded: bool) -> Position {
        sequence::start_cleanup(&mut self.checkpoint, &reason);
        self.stepping = false;
        info!(reason = %reason, "aborting: the clean-up starts");
        if !recorded {
            self.shared
                .journal
                .event(EventKind::AbortRequested, None, Some(reason.clone()), None);
        }
        self.shared.journal.event(
            EventKind::CleanupStarted,
            None,
            Some(format!("{reason}; undoing what the trial deployed")),
            None,
        );
        self.checkpoint.position
    }

    /// Hands the checkpoint to the watchdog, with the signal it takes and the `aborts` it
    /// begins the clean-up of, and waits until it is kept. The watchdog answers them once it is
    /// saved; if it is not, the trial is back where the signal found it, and the aborts wait
    /// for the next save.
    async fn save(
        &mut self,
        lifecycle: Lifecycle,
        aborts: Vec<oneshot::Sender<ControlOutcome>>,
    ) -> Result<(), String> {
        let (signal, before) = match self.answer.take() {
            Some(PendingAnswer {
                reply,
                outcome,
                before,
            }) => (Some((reply, outcome)), Some(before)),
            None => (None, None),
        };
        let (ack, acked) = oneshot::channel();
        let message = Checkpointed {
            checkpoint: Box::new(self.checkpoint.clone()),
            lifecycle,
            ack,
            answers: Box::new(Answers { signal, aborts }),
        };
        let gone = || "the watchdog is gone".to_owned();
        let saved = match self.checkpoints.send(message).await {
            Ok(()) => {
                // The watchdog has the early signals now, with the rest.
                self.shared.kept().take();
                // Dropped unanswered: the callers are told the engine stopped.
                acked.await.map_err(|_| gone()).and_then(|saved| {
                    saved.map_err(|Unsaved { error, aborts }| {
                        self.aborts = aborts;
                        error
                    })
                })
            }
            Err(mpsc::error::SendError(message)) => message
                .answers
                .settle(&self.id, Err(gone()))
                .map_err(|unsaved| unsaved.error),
        };
        if saved.is_err()
            && let Some(before) = before
        {
            // Not taken: the trial stays where the signal found it.
            self.checkpoint = *before;
        }
        saved
    }

    /// The trial is over: finished, or aborted with its clean-up done.
    async fn end(mut self, lifecycle: Lifecycle) -> ExecutorExit {
        self.commands.close();
        self.answer_queued(lifecycle);
        // An ended trial is not paused: nothing is left to resume.
        self.checkpoint.paused = false;
        let exit = if lifecycle == Lifecycle::Aborted {
            info!("clean-up completed: trial aborted");
            self.shared
                .journal
                .event(EventKind::CleanupCompleted, None, None, None);
            self.shared
                .journal
                .event(EventKind::TrialAborted, None, None, None);
            ExecutorExit::Aborted
        } else {
            info!("trial finished");
            self.shared
                .journal
                .event(EventKind::TrialFinished, None, None, None);
            ExecutorExit::Finished
        };
        self.shared.move_to(lifecycle, &self.checkpoint);
        if let Err(e) = self.save(lifecycle, Vec::new()).await {
            error!(error = %e, "the end of the trial was not saved");
        }
        exit
    }

    /// Answers the commands that were queued when the executor stopped reading them, ending as
    /// `lifecycle`: an abort of a failed trial goes to the watchdog, which cleans up once the
    /// failure procedure is done; anything else is told the trial no longer takes it.
    fn answer_queued(&mut self, lifecycle: Lifecycle) {
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Signal(_, reply) => {
                    let _ = reply.send(SignalOutcome::NotLive(lifecycle));
                }
                Command::Control(Control::Abort { reason }, reply)
                    if lifecycle == Lifecycle::Failed =>
                {
                    let request = ControlRequest::Abort { reason, reply };
                    if let Err(e) = self.shared.controls.sender().try_send(request)
                        && let ControlRequest::Abort { reply, .. } = e.into_inner()
                    {
                        let _ = reply.send(Err(ControlError::Stopped));
                    }
                }
                Command::Control(Control::Abort { .. }, reply) => {
                    // Finished or aborted: refused as the watchdog refuses it.
                    let refusal = RestoreError::shown(lifecycle, None)
                        .map_or(ControlError::Stopped, |r| {
                            r.refusing_abort(self.id.as_str())
                        });
                    let _ = reply.send(Err(refusal));
                }
                Command::Control(_, reply) | Command::Progress(_, reply) => {
                    let _ = reply.send(Err(not_live(&self.id, lifecycle)));
                }
            }
        }
    }

    /// Stops at a failure: commands are refused from this moment on, and the checkpoint (its
    /// position still the step that failed, or the waiting point that timed out) goes to the
    /// watchdog, which runs the failure procedure.
    async fn fail(mut self, reason: String) -> ExecutorExit {
        self.commands.close();
        self.answer_queued(Lifecycle::Failed);
        if self.cleaning_up() {
            error!(reason = %reason, "the clean-up after an abort failed");
        } else {
            error!(reason = %reason, "trial failed");
        }
        self.shared
            .journal
            .event(EventKind::TrialFailed, None, Some(reason.clone()), None);
        self.checkpoint.fail(self.id.as_str(), reason.clone());
        self.shared.move_to(Lifecycle::Failed, &self.checkpoint);
        if let Err(e) = self.save(Lifecycle::Failed, Vec::new()).await {
            warn!(error = %e, "the failure checkpoint was not saved");
        }
        ExecutorExit::Failed(reason)
    }
}

/// Says, in the log and the trial's history, that the abort waiting for the answer to `step`
/// is not carried out, the service stopping: the history says why the trial goes on.
fn abort_not_carried_out(shared: &EngineShared, step: Step) {
    info!(
        step = step.name(),
        "the service stops: the abort that waits for this answer is not carried out"
    );
    shared.journal.event(
        EventKind::AbortNotCarriedOut,
        None,
        Some(ABORT_NOT_CARRIED_OUT.to_owned()),
        None,
    );
}

/// A command while `step` runs, or is held at the operator's gate before it.
enum AtStep {
    /// Answered already.
    Answered,
    /// An early signal, kept in `held`: for the caller to save, then answer.
    Kept(Signal, oneshot::Sender<SignalOutcome>),
    /// The operator's abort, answered once its clean-up is saved: the step is dropped for it.
    Abort(String, oneshot::Sender<ControlOutcome>),
    /// Pause, resume or step: for the caller to take.
    Control(Control, oneshot::Sender<ControlOutcome>),
}

/// Answers what a step answers the same way running or held (`doing` says which, before the
/// step's name): signals, progress reports (none is awaited) and an abort (taken, unless the
/// clean-up already runs).
fn at_step(
    step: Step,
    doing: &str,
    command: Command,
    accepted: &[(Wait, Signal)],
    held: &mut Vec<(Wait, Signal)>,
    id: &TrialId,
    cleanup: bool,
) -> AtStep {
    match command {
        Command::Signal(signal, reply) => match during_step(step, signal, accepted, held) {
            SignalOutcome::Held(_) => AtStep::Kept(signal, reply),
            outcome => {
                let _ = reply.send(outcome);
                AtStep::Answered
            }
        },
        Command::Progress(_, reply) => {
            let _ = reply.send(refused(format!(
                "no component callback is awaited: {doing} {}",
                step.name()
            )));
            AtStep::Answered
        }
        Command::Control(Control::Abort { reason }, reply) => {
            if cleanup {
                let _ = reply.send(Ok(abort_accepted(id, true)));
                AtStep::Answered
            } else {
                AtStep::Abort(reason, reply)
            }
        }
        Command::Control(control, reply) => AtStep::Control(control, reply),
    }
}

/// A signal that arrives while `step` runs (or waits at the gate to run): an early signal for
/// the wait that follows is kept, anything else is answered from the rules.
fn during_step(
    step: Step,
    signal: Signal,
    accepted: &[(Wait, Signal)],
    held: &mut Vec<(Wait, Signal)>,
) -> SignalOutcome {
    match decide(Position::Run(step), signal, accepted, held) {
        Decision::Hold(wait) => {
            held.push((wait, signal));
            SignalOutcome::Held(step)
        }
        other => answer(other),
    }
}

/// A component's callback that arrives while the trial has failed at `position`: kept in
/// `held` for the wait it ends (the wait the trial failed at, or the one after the step it
/// failed in), since the component does not send it again; the wait is returned. A repeat of
/// one taken or kept is a duplicate; any other is refused, saying what a failed trial keeps.
pub(super) fn keep_while_failed(
    position: Position,
    signal: Signal,
    accepted: &[(Wait, Signal)],
    held: &mut Vec<(Wait, Signal)>,
) -> Result<Wait, SignalOutcome> {
    match (decide(position, signal, accepted, held), position) {
        (Decision::Hold(wait), _) | (Decision::Take(_), Position::Wait(wait)) => {
            if held.contains(&(wait, signal)) {
                return Err(SignalOutcome::AlreadyRegistered);
            }
            held.push((wait, signal));
            Ok(wait)
        }
        (Decision::Refuse(_), _) => Err(SignalOutcome::Refused(format!(
            "{} does not fit now: the trial has failed, and keeps only a callback of the wait it failed at or of the one after the step it failed in",
            signal.name()
        ))),
        (decision, _) => Err(answer(decision)),
    }
}

/// Saves the early signals with the one just kept in `held`, before the caller hears it is
/// kept: a restart in the middle of the step finds it. Unsaved, it is dropped again.
async fn keep(
    shared: &EngineShared,
    step: Step,
    signal: Signal,
    held: &mut Vec<(Wait, Signal)>,
) -> SignalOutcome {
    let saved = shared
        .deps
        .store
        .write(Op::SetHeld {
            id: shared.id.clone(),
            held: held.clone(),
        })
        .await;
    match saved {
        Ok(_) => {
            info!(
                signal = signal.name(),
                step = step.name(),
                "early signal kept until the step completes"
            );
            *shared.kept() = Some(held.clone());
            SignalOutcome::Held(step)
        }
        Err(e) => {
            // The one just kept, pushed last; those kept before it stay.
            held.pop();
            SignalOutcome::NotSaved(e.to_string())
        }
    }
}

fn answer(decision: Decision) -> SignalOutcome {
    match decision {
        Decision::Take(step) => SignalOutcome::Accepted(Next::Step(step)),
        Decision::Duplicate => SignalOutcome::AlreadyRegistered,
        // Kept only by a step that runs (see `during_step`): anywhere else it is not taken.
        Decision::Hold(wait) => SignalOutcome::Refused(format!(
            "it is early: it ends the wait for {}, which has not begun",
            sequence::wait_spec(wait).waiting_for
        )),
        Decision::Refuse(reason) => SignalOutcome::Refused(reason),
    }
}

pub(super) fn abort_accepted(id: &TrialId, already: bool) -> String {
    if already {
        format!("trial {id} is already aborting")
    } else {
        format!("trial {id}: abort accepted; the clean-up starts")
    }
}

/// Pauses or resumes (SPEC §14); the pause is saved at once, on its own, so it outlives a
/// restart whatever the executor is doing. `Step` here (not paused) is refused. A trial held
/// before a step, resumed, is shown running (from `held`, the executor's checkpoint) before
/// the caller hears of it.
///
/// The save runs as a task of its own, which answers the caller: a stop that ends the
/// executor meanwhile does not cut it short (the watchdog waits for it), so the caller hears
/// 200 exactly when the store holds the change, and the history has its event.
async fn set_pause(
    shared: &Arc<EngineShared>,
    paused: &mut bool,
    control: Control,
    reply: oneshot::Sender<ControlOutcome>,
    cleanup: bool,
    held: Option<Checkpoint>,
) {
    let id = &shared.id;
    let (want, reason) = match pause_change(id, *paused, control, cleanup) {
        Ok(change) => change,
        Err(answer) => {
            let _ = reply.send(answer);
            return;
        }
    };
    let save = save_pause(shared.clone(), want, reason, held, reply);
    if shared
        .pause_saves
        .spawn(save.in_current_span())
        .await
        .unwrap_or(false)
    {
        *paused = want;
    }
}

/// Why a pause, resume or step is refused during the clean-up.
fn being_aborted(id: &TrialId) -> String {
    format!("trial {id} is being aborted: its clean-up cannot be paused or stepped")
}

/// What a pause, resume or step asked of an engine `paused` (or not) changes: whether it is
/// paused, and why; or the answer, if nothing changes.
fn pause_change(
    id: &TrialId,
    paused: bool,
    control: Control,
    cleanup: bool,
) -> Result<(bool, Option<String>), ControlOutcome> {
    if cleanup {
        return Err(refused(being_aborted(id)));
    }
    let (want, reason) = match control {
        Control::Pause { reason } => (true, reason),
        Control::Resume { reason } => (false, reason),
        Control::Step { .. } => return Err(refused(format!("trial {id} is not paused"))),
        Control::Abort { .. } => return Err(refused(format!("trial {id}: abort is not a pause"))),
    };
    if paused == want {
        return Err(Ok(format!(
            "trial {id} is already {}",
            if want { "paused" } else { "running" }
        )));
    }
    Ok((want, reason))
}

/// Saves a pause or resume, records its event, shows it and answers its caller.
async fn save_pause(
    shared: Arc<EngineShared>,
    want: bool,
    reason: Option<String>,
    held: Option<Checkpoint>,
    reply: oneshot::Sender<ControlOutcome>,
) -> bool {
    let id = &shared.id;
    let op = Op::SetPaused {
        id: id.clone(),
        paused: want,
    };
    let kind = if want {
        EventKind::Paused
    } else {
        EventKind::Resumed
    };
    // Committed with its event before the operator hears of the change: both or neither.
    if let Err(e) = shared
        .journal
        .event_saved(kind, None, reason, vec![op])
        .await
    {
        let _ = reply.send(Err(ControlError::NotSaved(e.to_string())));
        return false;
    }
    shared.set_paused(want);
    if let Some(checkpoint) = held.filter(|_| !want) {
        shared.move_to(
            Lifecycle::Running,
            &Checkpoint {
                paused: false,
                ..checkpoint
            },
        );
    }
    info!(
        paused = want,
        "operator {}",
        if want {
            "paused the trial"
        } else {
            "resumed the trial"
        }
    );
    let _ = reply.send(Ok(format!(
        "trial {id} {}",
        if want {
            "paused: no new request starts until it is resumed"
        } else {
            "resumed"
        }
    )));
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use Signal::{Active, SliceCallback};
    use Step::*;

    #[test]
    fn a_pause_changes_only_a_running_trial_and_a_resume_only_a_paused_one() {
        let id = TrialId::parse("t1").unwrap();
        let pause = || Control::Pause {
            reason: Some("new facility".into()),
        };
        let resume = || Control::Resume { reason: None };
        assert_eq!(
            pause_change(&id, false, pause(), false),
            Ok((true, Some("new facility".into())))
        );
        assert_eq!(pause_change(&id, true, resume(), false), Ok((false, None)));
        assert_eq!(
            pause_change(&id, true, pause(), false),
            Err(Ok("trial t1 is already paused".into()))
        );
        assert_eq!(
            pause_change(&id, false, resume(), false),
            Err(Ok("trial t1 is already running".into()))
        );
        for control in [pause(), resume(), Control::Step { reason: None }] {
            assert!(matches!(
                pause_change(&id, false, control, true),
                Err(Err(ControlError::Refused(_)))
            ));
        }
    }

    #[test]
    fn a_repeated_slice_callback_at_idle_is_a_duplicate_not_slice_closed() {
        let accepted = [(Wait::SliceCreated, SliceCallback)];
        assert_eq!(
            decide(Position::Wait(Wait::Idle), SliceCallback, &accepted, &[]),
            Decision::Duplicate
        );
        assert_eq!(
            decide(Position::Run(SendKpiFinish), SliceCallback, &accepted, &[]),
            Decision::Duplicate
        );
    }

    #[test]
    fn early_callbacks_are_held_once() {
        assert_eq!(
            decide(Position::Run(SliceDeployment), SliceCallback, &[], &[]),
            Decision::Hold(Wait::SliceCreated)
        );
        let held = [(Wait::SliceCreated, SliceCallback)];
        assert_eq!(
            decide(Position::Run(SliceDeployment), SliceCallback, &[], &held),
            Decision::Duplicate
        );
        let accepted = [(Wait::SliceCreated, SliceCallback)];
        assert_eq!(
            decide(Position::Run(CloseService), SliceCallback, &accepted, &[]),
            Decision::Hold(Wait::SliceClosed)
        );
    }

    #[test]
    fn a_failed_trial_keeps_a_callback_for_the_wait_it_ends_once() {
        // Failed at the wait (the callback came late), or in the step before it (its answer
        // was lost): kept for that wait.
        for failed_at in [
            Position::Wait(Wait::SliceCreated),
            Position::Run(SliceDeployment),
        ] {
            let mut held = Vec::new();
            let kept = keep_while_failed(failed_at, SliceCallback, &[], &mut held);
            assert_eq!(kept.ok(), Some(Wait::SliceCreated), "{failed_at:?}");
            assert_eq!(held, [(Wait::SliceCreated, SliceCallback)]);
            let again = keep_while_failed(failed_at, SliceCallback, &[], &mut held);
            assert!(
                matches!(again, Err(SignalOutcome::AlreadyRegistered)),
                "{failed_at:?}"
            );
            assert_eq!(held.len(), 1);
        }
        // Failed later: a slice callback taken already is a duplicate, and one that fits no
        // wait is refused.
        let mut held = Vec::new();
        let accepted = [(Wait::SliceCreated, SliceCallback)];
        let duplicate = keep_while_failed(
            Position::Run(EnforceUavPlan),
            SliceCallback,
            &accepted,
            &mut held,
        );
        assert!(matches!(duplicate, Err(SignalOutcome::AlreadyRegistered)));
        let stray = keep_while_failed(Position::Run(EnforceUavPlan), SliceCallback, &[], &mut held);
        assert!(matches!(stray, Err(SignalOutcome::Refused(_))));
        assert!(held.is_empty());
    }

    #[test]
    fn operator_signals_follow_the_waiting_points() {
        assert_eq!(
            decide(Position::Wait(Wait::Idle), Active, &[], &[]),
            Decision::Take(SendKpiActive)
        );
        assert_eq!(
            decide(Position::Wait(Wait::Idle), Signal::Finish, &[], &[]),
            Decision::Take(UpdateStatusStopping)
        );
        assert!(matches!(
            decide(Position::Run(UpdateStatusIdle), Signal::Finish, &[], &[]),
            Decision::Refuse(_)
        ));
        assert!(matches!(
            decide(Position::Wait(Wait::SliceCreated), Active, &[], &[]),
            Decision::Refuse(_)
        ));
        let active = [(Wait::Idle, Active)];
        assert_eq!(
            decide(
                Position::Run(UpdateStatusActive),
                Signal::Finish,
                &active,
                &[]
            ),
            Decision::Hold(Wait::Active)
        );
        let finished_from_idle = [(Wait::Idle, Signal::Finish)];
        assert!(matches!(
            decide(
                Position::Run(UpdateStatusStopping),
                Active,
                &finished_from_idle,
                &[]
            ),
            Decision::Refuse(_)
        ));
        assert_eq!(
            decide(
                Position::Run(UpdateStatusStopping),
                Signal::Finish,
                &finished_from_idle,
                &[]
            ),
            Decision::Duplicate
        );
    }
}
