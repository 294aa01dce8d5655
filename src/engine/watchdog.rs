//! The process-check watchdog: keeps (and saves) the executor's latest checkpoint, notices at
//! once when the executor task ends (finished, aborted, failed, or died by panic), runs the
//! failure procedure, and starts every executor: the first, a restored one, one that
//! continues after a skip, and one that cleans up a failed trial after an abort.
//!
//! It is the only task that spawns executors, and stopping the engine (a delete, the service
//! shutting down) goes through it: it aborts the executor (at a shutdown, once a deployment or
//! status write in flight has its answer), waits until that task is gone, and ends without
//! running the failure procedure. Stopping is never a failure.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant as Deadline;
use tracing::{Instrument, error, info, warn};

use super::EngineShared;
use super::executor::{
    self, Ack, Answers, Checkpointed, Command, Control, ControlError, ControlOutcome, Executor,
    ExecutorExit, STOPPED, SignalOutcome, abort_accepted,
};
use super::failure;
use super::queue::Inbox;
use super::sequence::{self, Next, Signal, Wait, Waiter};
use super::state;
use super::state::{Checkpoint, EventKind, Failure, Lifecycle, Mode, Position};
use crate::deadline::{self, sleep_until};
use crate::domain::TrialId;
use crate::store::{Op, TrialRecord};
use crate::telemetry::panic_message;

/// Why a restore or a skip was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    #[error("the engine is running; only a failed engine can be restored or skipped")]
    Running,
    #[error("the trial has {0}; there is nothing to restore or skip")]
    Ended(Ended),
    #[error("{STOPPED}")]
    Stopped,
    #[error(
        "the failure procedure is still running (repository report, failure file); retry in a moment"
    )]
    Reporting,
    #[error("the clean-up after an abort failed; POST /trial/{{id}}/abort retries it")]
    CleanupFailed,
    #[error("an abort was asked for while the failure was reported: its clean-up follows")]
    AbortAsked,
    #[error("{0}")]
    NotSkippable(String),
    #[error("the change was not saved, so it was not made: {0}")]
    NotSaved(String),
}

/// How a trial ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Finished,
    Aborted,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Ended::Finished => "finished",
            Ended::Aborted => "been aborted",
        })
    }
}

impl RestoreError {
    /// Why an engine in `lifecycle`, with `failure`, cannot be restored, skipped or aborted
    /// by the watchdog, as far as its shown state tells: it ended, or an abort was asked for
    /// while its failure was reported, or its failure procedure still runs, or it stopped.
    /// The watchdog checks more (a live executor).
    pub(super) fn shown(lifecycle: Lifecycle, failure: Option<&Failure>) -> Option<Self> {
        match lifecycle {
            Lifecycle::Finished => Some(RestoreError::Ended(Ended::Finished)),
            Lifecycle::Aborted => Some(RestoreError::Ended(Ended::Aborted)),
            Lifecycle::Failed if failure.is_some_and(|f| f.abort.is_some()) => {
                Some(RestoreError::AbortAsked)
            }
            Lifecycle::Failed if failure.is_some_and(|f| !f.reported) => {
                Some(RestoreError::Reporting)
            }
            Lifecycle::Stopped => Some(RestoreError::Stopped),
            Lifecycle::Failed | Lifecycle::Running | Lifecycle::Waiting => None,
        }
    }

    /// The outcome as a metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            RestoreError::NotSaved(_) => "not_saved",
            RestoreError::Stopped | RestoreError::Ended(_) => "refused_not_live",
            RestoreError::Running
            | RestoreError::Reporting
            | RestoreError::CleanupFailed
            | RestoreError::AbortAsked
            | RestoreError::NotSkippable(_) => "refused_wrong_phase",
        }
    }

    /// The refusal of an abort: said of the trial `id`.
    pub(super) fn refusing_abort(self, id: &str) -> ControlError {
        match self {
            RestoreError::Ended(ended) => ControlError::NotLive(format!("trial {id} has {ended}")),
            RestoreError::NotSaved(e) => ControlError::NotSaved(e),
            RestoreError::Stopped => ControlError::Stopped,
            other @ (RestoreError::Running
            | RestoreError::Reporting
            | RestoreError::CleanupFailed
            | RestoreError::AbortAsked
            | RestoreError::NotSkippable(_)) => ControlError::Refused(other.to_string()),
        }
    }
}

/// What only the watchdog does.
pub enum ControlRequest {
    Restore(oneshot::Sender<Result<String, RestoreError>>),
    Skip {
        reason: String,
        reply: oneshot::Sender<Result<String, RestoreError>>,
    },
    Abort {
        reason: String,
        reply: oneshot::Sender<ControlOutcome>,
    },
    /// A component's callback while the trial has failed, to keep for its restore.
    Keep {
        signal: Signal,
        reply: oneshot::Sender<SignalOutcome>,
    },
}

impl ControlRequest {
    /// Answers the request with `refusal`, as said of trial `id`.
    fn refuse(self, refusal: RestoreError, id: &TrialId) {
        match self {
            ControlRequest::Restore(reply) | ControlRequest::Skip { reply, .. } => {
                let _ = reply.send(Err(refusal));
            }
            ControlRequest::Abort { reply, .. } => {
                let _ = reply.send(Err(refusal.refusing_abort(id.as_str())));
            }
            ControlRequest::Keep { reply, .. } => {
                let _ = reply.send(match refusal {
                    RestoreError::NotSaved(e) => SignalOutcome::NotSaved(e),
                    RestoreError::Stopped => SignalOutcome::Stopped,
                    other => SignalOutcome::Refused(other.to_string()),
                });
            }
        }
    }
}

/// How an engine came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Made now: its first record is not saved yet.
    New,
    /// Brought back from its record at start-up; `rerun`: the step it stands at has run before.
    Recovered { rerun: bool },
    /// Brought back after a delete that was not saved, from the record it had when it was
    /// stopped; `saved`: that record is the store's (else it is saved first, like a new one).
    BroughtBack { rerun: bool, saved: bool },
}

/// What a watchdog leaves when its engine is stopped.
#[derive(Debug, Clone)]
pub struct LastRecord {
    /// The engine's record as it stood (what a restart would bring back).
    pub record: TrialRecord,
    /// Whether the store holds that record (its last save went through).
    pub saved: bool,
}

/// The watchdog's state.
pub struct Watchdog {
    pub(super) shared: Arc<EngineShared>,
    pub(super) checkpoint: Checkpoint,
    pub(super) lifecycle: Lifecycle,
    /// Start an executor (a new or recovered live engine).
    pub(super) start_executor: bool,
    pub(super) origin: Origin,
    pub(super) executor: Option<JoinHandle<ExecutorExit>>,
    pub(super) checkpoints: mpsc::Receiver<Checkpointed>,
    pub(super) checkpoint_tx: mpsc::Sender<Checkpointed>,
    pub(super) controls: Inbox<ControlRequest>,
    /// The aborts that arrived while the executor was ending, answered once it has.
    pub(super) pending_aborts: Vec<(String, oneshot::Sender<ControlOutcome>)>,
    /// The wait before an abort asked for during the failure report, which could not start,
    /// is tried again.
    pub(super) asked_abort_retry: Duration,
    /// The checkpoint being saved was handed over by the executor, which waits for this, with
    /// the callers whose answer waits for the save: answered once it is done.
    pub(super) unanswered: Option<(Ack, Box<Answers>)>,
    /// An automatic abort that could not start is not tried again before this.
    pub(super) auto_abort_not_before: Option<Deadline>,
    /// Automatic aborts of this trial whose clean-up had failed before: each waits twice as
    /// long as the one before.
    pub(super) auto_abort_rounds: u32,
    /// The store holds the record as it stands (the last save went through).
    pub(super) saved: bool,
    /// The store holds an older record than the engine's, which runs no executor (its end or
    /// its failure was not saved): when to save it again, and the wait before the next try
    /// should that one fail too.
    pub(super) resave: Option<(Deadline, Duration)>,
}

/// How long an automatic abort that could not start (its save failed) waits to try again.
const AUTO_ABORT_RETRY: Duration = Duration::from_secs(60);
/// The first and the longest wait before saving again a record or a checkpoint that was not
/// saved.
pub(super) const RESAVE_FIRST: Duration = Duration::from_secs(1);
const RESAVE_MAX: Duration = Duration::from_secs(60);

/// A save due at once (an engine brought back with a record the store does not hold).
pub(super) fn resave_now() -> (Deadline, Duration) {
    (Deadline::now(), RESAVE_FIRST)
}

/// A save due after `wait`, and the wait before the next should it fail too.
fn resave_in(wait: Duration) -> (Deadline, Duration) {
    (Deadline::now() + wait, resave_after(wait))
}

/// The wait before the next try of a save that failed again after `wait`: twice as long, up
/// to [`RESAVE_MAX`].
pub(super) fn resave_after(wait: Duration) -> Duration {
    (wait * 2).min(RESAVE_MAX)
}

impl Watchdog {
    /// Supervises until the engine is stopped; returns the engine's record as it stands then.
    pub async fn run(mut self) -> LastRecord {
        let stop = self.shared.stop.clone();
        tokio::select! {
            biased;
            () = stop.cancelled() => {}
            () = self.supervise() => {}
        }
        let answered = self.answer_in_flight().await;
        if let Some(executor) = self.executor.take() {
            executor.abort();
            // A cancelled task ends with a cancellation error: that is the point.
            let _ = executor.await;
        }
        // A pause or resume the executor was saving goes on to its answer.
        self.shared.pause_saves.close();
        self.shared.pause_saves.wait().await;
        if self.unanswered.is_some() {
            if super::lock(&self.shared.answer_grace).is_some() {
                // The service stops, and cut the save of a checkpoint short, which may or may
                // not have gone through: saved again, so that what its callers are told is
                // what the store holds after the restart.
                info!(
                    "stopping: the checkpoint whose save the stop cut short is saved again, and what waited for it answered"
                );
                let saved = self.save().await;
                self.answer_kept(saved);
            } else {
                // Deleted: its callers are told the engine stopped before it answered.
                self.unanswered = None;
            }
        }
        // A checkpoint the executor handed over just before the stop is kept, like any other:
        // an observer who saw the trial end and stopped the service finds it saved ended.
        let mut handed_over: Vec<Checkpointed> = answered.into_iter().collect();
        while let Ok(message) = self.checkpoints.try_recv() {
            handed_over.push(message);
        }
        for message in handed_over {
            if let Err(e) = self.keep(message).await {
                warn!(error = %e, "the last checkpoint before the stop was not saved");
            }
        }
        self.catch_up();
        LastRecord {
            record: self.record(),
            saved: self.saved,
        }
    }

    /// At a shutdown, waits (up to its grace) for a deployment or status write in flight to
    /// have its answer and its step to hand its checkpoint over, which is answered, like
    /// every checkpoint from now on, never: the executor sends nothing more, and is aborted.
    /// None if no such request is in flight, or the step ended the trial's run (it failed:
    /// the failure is not reported at a stop, and the step runs again after the restart).
    async fn answer_in_flight(&mut self) -> Option<Checkpointed> {
        let grace = (*super::lock(&self.shared.answer_grace))?;
        if self.executor.is_none() || !self.shared.uncut.load(Ordering::SeqCst) {
            return None;
        }
        info!("stopping: the deployment or status write in flight has its answer first");
        tokio::select! {
            message = self.checkpoints.recv() => message.filter(|m| {
                let failed = m.lifecycle == Lifecycle::Failed;
                if failed {
                    info!("stopping: the step failed on that answer; it runs again after the restart");
                }
                !failed
            }),
            _ = join(&mut self.executor) => {
                self.executor = None;
                None
            }
            () = tokio::time::sleep(grace) => {
                warn!(grace_secs = grace.as_secs(), "stopping: no answer within the grace; the step runs again after the restart");
                None
            }
        }
    }

    /// Backs the executor up and answers the operator until the trial ends. The rare, large
    /// things (the failure procedure, abort, restore, skip) are boxed while they run, so the
    /// task of a watchdog that waits stays small.
    async fn supervise(&mut self) {
        if self.start_executor {
            match self.origin {
                // The engine's first record is saved before its first request goes out, so
                // a trial whose job has fired can never be lost.
                Origin::New | Origin::BroughtBack { saved: false, .. } => {
                    self.save_until_kept("the engine's first record (its first request waits)")
                        .await;
                    self.spawn_executor(
                        matches!(self.origin, Origin::BroughtBack { rerun: true, .. }),
                        false,
                    );
                }
                // Its record is the store's.
                Origin::Recovered { rerun } | Origin::BroughtBack { rerun, saved: true } => {
                    self.spawn_executor(rerun, false)
                }
            }
        } else if self.lifecycle == Lifecycle::Failed
            && self
                .checkpoint
                .failure
                .as_ref()
                .is_some_and(|f| !f.reported)
        {
            // The service stopped before the failure procedure was done: finish it now.
            Box::pin(self.run_failure_procedure()).await;
        }
        loop {
            let cleanup_timer = self.cleanup_timer();
            tokio::select! {
                // Checkpoints first: one sent just before the executor ended must be kept.
                biased;
                Some(message) = self.checkpoints.recv() => {
                    let _ = self.keep(message).await;
                }
                result = join(&mut self.executor) => {
                    self.executor = None;
                    let ended = match result {
                        Ok(ExecutorExit::Finished) => Ended::Finished,
                        Ok(ExecutorExit::Aborted) => Ended::Aborted,
                        Ok(ExecutorExit::Failed(_)) => {
                            Box::pin(self.run_failure_procedure()).await;
                            continue;
                        }
                        // The stop is under way: the rest is `run`'s.
                        Ok(ExecutorExit::Stopped) => return,
                        Err(e) if e.is_cancelled() => {
                            Box::pin(self.died("the executor task was aborted".to_owned())).await;
                            continue;
                        }
                        Err(e) => {
                            let message = panic_message(e.into_panic());
                            Box::pin(self.died(format!("the executor task panicked: {message}"))).await;
                            continue;
                        }
                    };
                    self.answer_pending_aborts(ended);
                    // Restored or cleaned up after a failure: its file says it ended.
                    if self.checkpoint.run > 0 {
                        failure::resolve_file(&self.shared, self.lifecycle).await;
                    }
                    if self.saved {
                        return self.leave();
                    }
                    // Leaving memory now would leave the store saying the trial still runs,
                    // and a restart would run it again.
                    self.not_saved("the end of the trial");
                }
                Some(request) = self.controls.recv() => match request {
                    ControlRequest::Restore(reply) => {
                        let _ = reply.send(Box::pin(self.restore()).await);
                    }
                    ControlRequest::Skip { reason, reply } => {
                        let _ = reply.send(Box::pin(self.skip(reason)).await);
                    }
                    ControlRequest::Abort { reason, reply } => Box::pin(self.route_abort(reason, reply)).await,
                    ControlRequest::Keep { signal, reply } => {
                        let _ = reply.send(self.keep_for_restore(signal).await);
                    }
                },
                () = sleep_until(self.resave.map(|(at, _)| at)) => {
                    if self.save_again().await && self.lifecycle.is_ended() {
                        return self.leave();
                    }
                }
                () = sleep_until(cleanup_timer) => Box::pin(self.clean_up_when_due()).await,
            }
        }
    }

    /// The clean-up of a failed trial, when [`Self::cleanup_timer`] says it is due: the abort
    /// asked for while its failure was reported, or an automatic one. One that cannot start
    /// is tried again later.
    async fn clean_up_when_due(&mut self) {
        let asked = self
            .checkpoint
            .failure
            .as_ref()
            .and_then(|f| f.abort.clone());
        // The asked abort's request is in the history since it was saved.
        let recorded = asked.is_some();
        let reason = match asked {
            Some(reason) => {
                info!(reason = %reason, "the failure is reported: the abort asked for meanwhile starts");
                reason
            }
            None => {
                let after = self
                    .shared
                    .deps
                    .settings
                    .executor
                    .cleanup_failed_after_secs
                    .unwrap_or_default();
                let reason = if self
                    .checkpoint
                    .failure
                    .as_ref()
                    .is_some_and(|f| f.cleanup_failed)
                {
                    // Said with the wait it came after, which doubles each time.
                    let waited = auto_abort_delay(after, true, self.auto_abort_rounds);
                    self.auto_abort_rounds = self.auto_abort_rounds.saturating_add(1);
                    format!("its clean-up failed: tried again after {waited} s")
                } else {
                    format!("not restored within {after} s")
                };
                warn!(reason = %reason, "a failed trial was left alone: aborting it");
                reason
            }
        };
        match self.abort(reason, recorded).await {
            Ok(_) => self.asked_abort_retry = RESAVE_FIRST,
            // The operator's abort is tried again soon, like a checkpoint.
            Err(e) if recorded => {
                let wait = self.asked_abort_retry;
                warn!(error = %e, "the clean-up did not start; it is tried again in {} s", wait.as_secs());
                self.auto_abort_not_before = Some(Deadline::now() + wait);
                self.asked_abort_retry = resave_after(wait);
            }
            Err(e) => {
                warn!(error = %e, "the clean-up did not start; it is tried again in a minute");
                self.auto_abort_not_before = Some(Deadline::now() + AUTO_ABORT_RETRY);
            }
        }
    }

    /// Saves the engine's record, again and again while the store cannot, before what depends
    /// on it: the first request of a new engine (its job stays in the store until then), the
    /// `FAILED` report of a failure. The operator's requests meanwhile are told the store
    /// cannot save them now. A stop meanwhile loses nothing and reports nothing: the trial
    /// goes on from the record the store holds.
    async fn save_until_kept(&mut self, what: &str) {
        let mut wait = RESAVE_FIRST;
        while let Err(e) = self.save().await {
            warn!(
                error = %e,
                "{what} is not saved: it is saved again in {} s",
                wait.as_secs()
            );
            // A live trial (a new engine) is running; a failed one reports its failure.
            let phase = match self.lifecycle.is_live() {
                true => RestoreError::Running,
                false => RestoreError::Reporting,
            };
            let not_saved = RestoreError::NotSaved(e);
            for (_, reply) in self.pending_aborts.drain(..) {
                let _ = reply.send(Err(not_saved
                    .clone()
                    .refusing_abort(self.shared.id.as_str())));
            }
            let id = &self.shared.id;
            self.controls
                .answer_until(Deadline::now() + wait, |request| match request {
                    abort @ ControlRequest::Abort { .. } => abort.refuse(not_saved.clone(), id),
                    other => other.refuse(phase.clone(), id),
                })
                .await;
            wait = resave_after(wait);
        }
    }

    /// The trial has ended and the store holds its end: the engine may leave memory.
    fn leave(&self) {
        let _ = self.shared.deps.ended.send(Arc::downgrade(&self.shared));
        info!("trial ended; watchdog ends");
    }

    /// The store does not hold `what` (the end or the failure of a trial, whose executor has
    /// stopped): the engine stays in memory and saves it again later.
    fn not_saved(&mut self, what: &str) {
        warn!(
            "{what} is not saved: the engine stays in memory and saves it again in {} s",
            RESAVE_FIRST.as_secs()
        );
        self.resave = Some(resave_in(RESAVE_FIRST));
    }

    /// Saves the engine's record again; answers whether the store holds it now. If not,
    /// another try is due, each wait twice the last, up to a minute.
    async fn save_again(&mut self) -> bool {
        let wait = self.resave.map_or(RESAVE_FIRST, |(_, wait)| wait);
        match self.save().await {
            Ok(()) => {
                info!("the record that was not saved is saved now");
                true
            }
            Err(e) => {
                warn!(
                    error = %e,
                    "the record is still not saved: trying again in {} s",
                    wait.as_secs()
                );
                self.resave = Some(resave_in(wait));
                false
            }
        }
    }

    /// When a failed trial's clean-up starts on its own: at once if the operator asked for it
    /// while the failure was reported, else once it was left alone for
    /// `executor.cleanup_failed_after_secs`.
    fn cleanup_timer(&self) -> Option<Deadline> {
        let failure = self.checkpoint.failure.as_ref()?;
        if self.executor.is_some() || self.lifecycle != Lifecycle::Failed || !failure.reported {
            return None;
        }
        let due = if failure.abort.is_some() {
            Deadline::now()
        } else {
            let after = self
                .shared
                .deps
                .settings
                .executor
                .cleanup_failed_after_secs?;
            let after = auto_abort_delay(after, failure.cleanup_failed, self.auto_abort_rounds);
            // (A chrono duration holds at most i64::MAX / 1000 seconds.)
            let after = chrono::Duration::seconds(i64::try_from(after).unwrap_or(i64::MAX / 1000));
            deadline::at(failure.at + after)
        };
        Some(
            self.auto_abort_not_before
                .map_or(due, |not_before| due.max(not_before)),
        )
    }

    /// Saves the latest checkpoint with where the engine stands; the executor waits for this
    /// before it sends its next request.
    async fn save(&mut self) -> Result<(), String> {
        // A save cut short by a stop may or may not have gone through: count it as not.
        self.saved = false;
        let saved = self
            .shared
            .deps
            .store
            .write(Op::PutTrial(Box::new(self.record())))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        self.saved = saved.is_ok();
        if self.saved {
            self.resave = None;
        }
        saved
    }

    /// Takes the checkpoint the executor handed over and saves it; then answers the executor,
    /// and the callers whose answer waited for that save.
    async fn keep(&mut self, message: Checkpointed) -> Result<(), String> {
        let Checkpointed {
            checkpoint,
            lifecycle,
            ack,
            answers,
        } = message;
        // A signal not saved is not taken: the executor goes back to where it found the
        // trial, and so does the record this keeps (a stop, a delete or a death saves it).
        let before = answers
            .takes_signal()
            .then(|| (self.checkpoint.clone(), self.lifecycle));
        self.checkpoint = *checkpoint;
        self.lifecycle = lifecycle;
        // Held here until answered: a stop that cuts the save short saves it again and
        // answers them then (see `run`).
        self.unanswered = Some((ack, answers));
        let saved = self.save().await;
        if saved.is_err()
            && let Some((checkpoint, lifecycle)) = before
        {
            self.checkpoint = checkpoint;
            self.lifecycle = lifecycle;
        }
        self.answer_kept(saved.clone());
        saved
    }

    /// Answers the executor, and the callers whose answer waited for the save of the checkpoint
    /// it handed over, with that save's outcome.
    fn answer_kept(&mut self, saved: Result<(), String>) {
        if let Some((ack, answers)) = self.unanswered.take() {
            let _ = ack.send(answers.settle(&self.shared.id, saved));
        }
    }

    /// The engine's record as it stands.
    fn record(&self) -> TrialRecord {
        // The times the API shows, so the record reads the same once the engine is gone.
        let (created_at, updated_at, ended_at) = {
            let shown = self.shared.state.borrow();
            (shown.created_at, shown.updated_at, shown.ended_at)
        };
        TrialRecord {
            id: self.shared.id.clone(),
            lifecycle: self.lifecycle,
            checkpoint: self.checkpoint.clone(),
            created_at,
            updated_at,
            ended_at: if self.lifecycle.is_ended() {
                ended_at.or(Some(updated_at))
            } else {
                None
            },
        }
    }

    /// Starts an executor at the checkpoint: `rerun` when its step ran before, `stepping` to
    /// run that step even while the trial is paused.
    fn spawn_executor(&mut self, rerun: bool, stepping: bool) {
        let executor = Executor {
            id: self.shared.id.clone(),
            deps: self.shared.deps.clone(),
            shared: self.shared.clone(),
            checkpoint: self.checkpoint.clone(),
            rerun,
            commands: self.shared.commands.renew(),
            checkpoints: self.checkpoint_tx.clone(),
            stepping,
            answer: None,
            aborts: Vec::new(),
        };
        // The engine's span, not nested in the watchdog's: each line names the trial once.
        self.executor = Some(tokio::spawn(executor.run().instrument(self.shared.span())));
    }

    /// Moves the engine to `lifecycle` at the checkpoint, in the record to save and as shown.
    fn move_to(&mut self, lifecycle: Lifecycle) {
        self.lifecycle = lifecycle;
        self.shared.move_to(lifecycle, &self.checkpoint);
    }

    /// A pause and the early signals kept while a step ran are saved on their own, at once:
    /// the checkpoint the executor last handed over may not have them yet.
    fn catch_up(&mut self) {
        self.checkpoint.paused = self.shared.state.borrow().paused;
        if let Some(held) = self.shared.kept().take() {
            self.checkpoint.held = held;
        }
    }

    /// The executor died without a word: mark the engine failed from the last checkpoint (with
    /// the operator's pause and the early signals kept since, which a restore keeps).
    async fn died(&mut self, reason: String) {
        error!(reason = %reason, "executor died; engine marked Failed");
        self.catch_up();
        // The last checkpoint was handed over before the step the executor died in.
        let checkpoint = &mut self.checkpoint;
        let (started_at, run) = (checkpoint.started_at, checkpoint.run);
        sequence::count_in_flight(checkpoint.position, &mut checkpoint.data, |step| {
            super::steps::first_post_key(&self.shared.id, started_at, step, run)
        });
        self.shared
            .journal
            .event(EventKind::TrialFailed, None, Some(reason.clone()), None);
        self.checkpoint.fail(self.shared.id.as_str(), reason);
        self.move_to(Lifecycle::Failed);
        if let Err(e) = self.save().await {
            error!(error = %e, "the failure was not saved");
        }
        self.run_failure_procedure().await;
    }

    /// SPEC §4.3, for a failed step and a dead executor alike: tell the repository, write the
    /// failure file, save the failed state; then the engine is restorable.
    async fn run_failure_procedure(&mut self) {
        // The store says the trial failed before anyone is told: a stop before that loses
        // nothing, and a restart does not run on a trial the repository holds FAILED.
        if !self.saved {
            self.save_until_kept("the failure (it is reported once saved)")
                .await;
        }
        // The report may take minutes (a repository that does not answer is asked again):
        // the operator is answered meanwhile, and the aborts that came as the executor ended
        // are answered now.
        for (reason, reply) in std::mem::take(&mut self.pending_aborts) {
            let _ = reply.send(self.abort_after_report(reason).await);
        }
        let (shared, failed) = (self.shared.clone(), self.checkpoint.clone());
        let report = failure::report(&shared, &failed);
        tokio::pin!(report);
        let told = loop {
            tokio::select! {
                told = &mut report => break told,
                Some(request) = self.controls.recv() => self.while_reporting(request).await,
            }
        };
        if told {
            self.checkpoint.data.repository_status = Some(failure::REPORTED.to_owned());
        }
        if let Some(failure) = &mut self.checkpoint.failure {
            failure.reported = true;
        }
        self.move_to(Lifecycle::Failed);
        if let Err(e) = self.save().await {
            error!(error = %e, "the failed status was not saved");
            // A restart would otherwise run the failed step again on the older record.
            self.not_saved("the failure of the trial");
        }
        match self
            .checkpoint
            .failure
            .as_ref()
            .filter(|f| f.cleanup_failed)
        {
            Some(failure) => {
                let leftovers = state::named(&failure.leftovers);
                let left = match leftovers.is_empty() {
                    true => "no slice or measurement job is left (the reason says what failed)",
                    false => "what it names is still deployed",
                };
                let retry = match self.shared.deps.settings.executor.cleanup_failed_after_secs {
                    Some(after) => format!(
                        "it is tried again on its own in {} s (executor.cleanup_failed_after_secs), or at once with POST /trial/{{id}}/abort",
                        auto_abort_delay(after, true, self.auto_abort_rounds)
                    ),
                    None => "POST /trial/{id}/abort retries it".to_owned(),
                };
                warn!(
                    leftovers = %leftovers,
                    "the clean-up after an abort failed: {left}; {retry} (a restore is refused)"
                );
            }
            None => info!("failure procedure done; checkpoint kept for a restore"),
        }
    }

    /// Why a failed engine cannot be restored, skipped or aborted right now.
    fn refuse_unless_failed(&self) -> Result<(), RestoreError> {
        if let Some(refusal) = RestoreError::shown(self.lifecycle, self.checkpoint.failure.as_ref())
        {
            return Err(refusal);
        }
        match self.lifecycle {
            Lifecycle::Stopped => Err(RestoreError::Stopped),
            Lifecycle::Running | Lifecycle::Waiting => Err(RestoreError::Running),
            Lifecycle::Failed if self.executor.is_some() => Err(RestoreError::Running),
            Lifecycle::Failed | Lifecycle::Finished | Lifecycle::Aborted => Ok(()),
        }
    }

    /// Starts a new executor from the checkpoint after a failure: the trial's next run, noted
    /// in the history by `events` once it is saved. `before` is the state before the caller
    /// changed the checkpoint: if the save fails, the engine is left exactly as it was.
    async fn resume(
        &mut self,
        before: (Checkpoint, Lifecycle),
        events: &[(EventKind, Option<String>)],
        stepping: bool,
    ) -> Result<(), RestoreError> {
        self.checkpoint.failure = None;
        self.checkpoint.run += 1;
        // An earlier automatic abort's wait is over: a later failure has its own.
        self.auto_abort_not_before = None;
        // A wait resumed by a restore or a skip has its whole time again.
        self.checkpoint.go_to(self.checkpoint.position);
        self.lifecycle = match self.checkpoint.position {
            Position::Run(_) => Lifecycle::Running,
            Position::Wait(_) => Lifecycle::Waiting,
        };
        if let Err(e) = self.save().await {
            (self.checkpoint, self.lifecycle) = before;
            return Err(RestoreError::NotSaved(e));
        }
        self.record_committed(events).await;
        self.shared.move_to(self.lifecycle, &self.checkpoint);
        let rerun = matches!(self.checkpoint.position, Position::Run(_));
        self.spawn_executor(rerun, stepping);
        Ok(())
    }

    /// Keeps a component's callback that came while the trial has failed, for the wait it ends,
    /// saved before the component is answered: a restore takes it there. A trial being
    /// aborted, or no longer failed, takes none.
    async fn keep_for_restore(&mut self, signal: Signal) -> SignalOutcome {
        let aborting = self
            .checkpoint
            .failure
            .as_ref()
            .is_some_and(|f| f.abort.is_some());
        if self.lifecycle != Lifecycle::Failed
            || self.executor.is_some()
            || aborting
            || !matches!(self.checkpoint.mode, Mode::Normal)
        {
            return SignalOutcome::NotLive(self.lifecycle);
        }
        let Checkpoint {
            position,
            accepted,
            held,
            ..
        } = &mut self.checkpoint;
        let wait = match executor::keep_while_failed(*position, signal, accepted, held) {
            Ok(wait) => wait,
            Err(outcome) => return outcome,
        };
        if let Err(e) = self.save().await {
            self.checkpoint.held.retain(|kept| *kept != (wait, signal));
            return SignalOutcome::NotSaved(e);
        }
        info!(
            signal = signal.name(),
            "a callback came while the trial has failed: kept, a restore takes it at its wait"
        );
        SignalOutcome::KeptForRestore
    }

    /// Records the events of an operator's change just saved, and has them committed before
    /// the operator is answered: a 200 outlives a crash with its history.
    async fn record_committed(&self, events: &[(EventKind, Option<String>)]) {
        for (kind, detail) in events {
            self.shared.journal.event(*kind, None, detail.clone(), None);
        }
        if let Err(e) = self.shared.deps.store.flush().await {
            warn!(error = %e, "the change's history events were not saved");
        }
    }

    async fn restore(&mut self) -> Result<String, RestoreError> {
        self.refuse_unless_failed()?;
        if self
            .checkpoint
            .failure
            .as_ref()
            .is_some_and(|f| f.cleanup_failed)
        {
            return Err(RestoreError::CleanupFailed);
        }
        let before = (self.checkpoint.clone(), self.lifecycle);
        // The repository shows FAILED: at the operator's wait, where nothing else would
        // write a status for as long as the trial waits, the status that announces the wait
        // is written again.
        // It runs even while the trial is paused: the wait it leads to takes the operator's
        // signals while paused, as it did before the failure.
        let announcing = if let Position::Wait(wait) = self.checkpoint.position
            && self.checkpoint.data.repository_status.as_deref() == Some(failure::REPORTED)
            && let Some(step) = sequence::announced_by(wait)
        {
            self.checkpoint.go_to(Position::Run(step));
            true
        } else {
            false
        };
        info!(position = ?self.checkpoint.position, "restoring the executor from the checkpoint");
        self.resume(before, &[(EventKind::Restored, None)], announcing)
            .await?;
        Ok(self.checkpoint.position.state().to_owned())
    }

    /// Takes a component's wait as if its callback had come: the wait, in words, and where
    /// its callback leads.
    fn past(&mut self, wait: Wait) -> (String, Position) {
        let spec = sequence::wait_spec(wait);
        let (signal, next) = spec.exits[0];
        self.checkpoint.accepted.push((wait, signal));
        (
            format!("the wait for {}", spec.waiting_for),
            Position::Run(next),
        )
    }

    /// Marks the failed step done without running it and goes on with the next (SPEC §14).
    async fn skip(&mut self, reason: String) -> Result<String, RestoreError> {
        self.refuse_unless_failed()?;
        if !matches!(self.checkpoint.mode, Mode::Normal) {
            return Err(RestoreError::CleanupFailed);
        }
        let vnf = !self.shared.deps.settings.executor.disable_vnf;
        let before = (self.checkpoint.clone(), self.lifecycle);
        let (skipped, next) = match self.checkpoint.position {
            Position::Run(step) => {
                if let Some(refusal) = sequence::skip_refusal(step) {
                    return Err(RestoreError::NotSkippable(refusal));
                }
                let next = match sequence::after(step, vnf).and_then(Next::position) {
                    Some(next) => next,
                    None => {
                        return Err(RestoreError::NotSkippable(format!(
                            "{} is the last step: restore the trial instead",
                            step.name()
                        )));
                    }
                };
                match next {
                    // The component's callback answers the request skipped: it is not sent,
                    // so no callback comes, and the wait for it is skipped with it.
                    Position::Wait(wait)
                        if sequence::wait_spec(wait).waiter == Waiter::Component =>
                    {
                        let (wait, next) = self.past(wait);
                        (format!("{} and {wait}", step.name()), next)
                    }
                    Position::Wait(_) | Position::Run(_) => (step.name().to_owned(), next),
                }
            }
            Position::Wait(wait) => {
                let spec = sequence::wait_spec(wait);
                if spec.waiter == Waiter::Operator {
                    return Err(RestoreError::NotSkippable(format!(
                        "the trial failed waiting for {}: restore it and send the signal instead",
                        spec.waiting_for
                    )));
                }
                self.past(wait)
            }
        };
        info!(skipped = %skipped, reason = %reason, "skipping the failed step");
        self.checkpoint.go_to(next);
        let event = (EventKind::Skipped, Some(format!("{skipped}: {reason}")));
        self.resume(before, &[event], false).await?;
        Ok(format!(
            "{skipped} skipped; the trial goes on at {}",
            next.state()
        ))
    }

    /// An abort: the live executor takes it itself (it drops whatever is in flight and walks
    /// the clean-up path); a failed engine gets a clean-up executor from here.
    async fn route_abort(&mut self, reason: String, reply: oneshot::Sender<ControlOutcome>) {
        if self.executor.is_some() {
            // Never wait for the executor here: it may be waiting for this task to save.
            let sender = self.shared.commands.sender();
            match sender.try_send(Command::Control(Control::Abort { reason }, reply)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(command)) => {
                    // A busy queue drains as soon as the executor's save is acknowledged.
                    let shared = self.shared.clone();
                    tokio::spawn(async move {
                        if let Err(mpsc::error::SendError(Command::Control(
                            Control::Abort { reason },
                            reply,
                        ))) = sender.send(command).await
                        {
                            // The executor ended meanwhile: ask again, to be answered from here.
                            let _ = shared
                                .controls
                                .sender()
                                .send(ControlRequest::Abort { reason, reply })
                                .await;
                        }
                    });
                }
                Err(mpsc::error::TrySendError::Closed(Command::Control(
                    Control::Abort { reason },
                    reply,
                ))) => {
                    // The executor is ending: answer once its end is known.
                    self.pending_aborts.push((reason, reply));
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
            return;
        }
        let outcome = self.abort(reason, false).await;
        let _ = reply.send(outcome);
    }

    /// The aborts that waited for the executor to end, now that it has `ended` the trial.
    fn answer_pending_aborts(&mut self, ended: Ended) {
        let refusal = RestoreError::Ended(ended).refusing_abort(self.shared.id.as_str());
        for (_, reply) in self.pending_aborts.drain(..) {
            let _ = reply.send(Err(refusal.clone()));
        }
    }

    /// Answers the operator while the failure is being reported: a restore or a skip is
    /// refused until the report's end, an abort is kept with the failure and carried out after
    /// it.
    async fn while_reporting(&mut self, request: ControlRequest) {
        match request {
            ControlRequest::Abort { reason, reply } => {
                let _ = reply.send(self.abort_after_report(reason).await);
            }
            ControlRequest::Keep { signal, reply } => {
                let _ = reply.send(self.keep_for_restore(signal).await);
            }
            request @ (ControlRequest::Restore(_) | ControlRequest::Skip { .. }) => {
                let refusal = RestoreError::shown(self.lifecycle, self.checkpoint.failure.as_ref());
                request.refuse(refusal.unwrap_or(RestoreError::Reporting), &self.shared.id);
            }
        }
    }

    /// An abort asked for while the failure is being reported: saved with the failure, so it
    /// outlives a restart, and carried out once the report is done.
    async fn abort_after_report(&mut self, reason: String) -> ControlOutcome {
        let shared = self.shared.clone();
        let Some(failure) = &mut self.checkpoint.failure else {
            return Err(RestoreError::Running.refusing_abort(shared.id.as_str()));
        };
        if failure.abort.is_some() {
            return Ok(abort_accepted(&shared.id, true));
        }
        failure.abort = Some(reason.clone());
        if let Err(e) = self.save().await {
            if let Some(failure) = &mut self.checkpoint.failure {
                failure.abort = None;
            }
            return Err(ControlError::NotSaved(e));
        }
        self.record_committed(&[(EventKind::AbortRequested, Some(reason))])
            .await;
        // Shown at once: the trial is aborting, and no longer restorable.
        self.shared.move_to(self.lifecycle, &self.checkpoint);
        info!("abort asked for while the failure is reported: the clean-up starts once it is");
        Ok(format!(
            "{} once the failure is reported",
            abort_accepted(&shared.id, false)
        ))
    }

    /// Starts (or, after a failed clean-up, retries) the clean-up of a failed engine.
    /// `recorded`: the abort's request is in the history already.
    async fn abort(&mut self, reason: String, recorded: bool) -> ControlOutcome {
        // The abort asked for during the failure report is this one, or one that replaces it.
        self.refuse_unless_failed()
            .or_else(|e| match e {
                RestoreError::AbortAsked => Ok(()),
                other => Err(other),
            })
            .map_err(|e| e.refusing_abort(self.shared.id.as_str()))?;
        let retry = matches!(self.checkpoint.mode, Mode::Cleanup { .. });
        let before = (self.checkpoint.clone(), self.lifecycle);
        // Planned from what is still deployed, so a retry redoes only what was not undone.
        sequence::start_cleanup(&mut self.checkpoint, &reason);
        let detail = if retry {
            format!("{reason}; retrying the clean-up that failed")
        } else {
            format!("{reason}; undoing what the trial deployed")
        };
        info!(reason = %detail, "aborting the failed trial: the clean-up starts");
        let requested = (EventKind::AbortRequested, Some(reason));
        let started = (EventKind::CleanupStarted, Some(detail));
        let events = match recorded {
            true => vec![started],
            false => vec![requested, started],
        };
        self.resume(before, &events, false)
            .await
            .map_err(|e| e.refusing_abort(self.shared.id.as_str()))?;
        Ok(abort_accepted(&self.shared.id, false))
    }
}

/// How long after a failure its automatic abort comes: `after` seconds, doubled for each
/// automatic abort whose clean-up failed again before (up to 64 times, at most a day), so that
/// a component down for good is not asked, nor the repository told `FAILED`, every few
/// seconds.
fn auto_abort_delay(after: u64, cleanup_failed: bool, rounds: u32) -> u64 {
    const MOST: u64 = 24 * 3600;
    if !cleanup_failed || rounds == 0 {
        return after;
    }
    let doubled = after.saturating_mul(1 << rounds.min(6));
    doubled.min(MOST.max(after))
}

/// Waits for the executor task, or forever when there is none.
async fn join(
    executor: &mut Option<JoinHandle<ExecutorExit>>,
) -> Result<ExecutorExit, tokio::task::JoinError> {
    match executor {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

/// Runs a watchdog in its own task, inside the engine's span.
pub fn spawn(watchdog: Watchdog, span: tracing::Span) -> JoinHandle<LastRecord> {
    // Dropped once the watchdog has ended (its executor with it), or panicked.
    let ended = watchdog.shared.tasks_ended.clone().drop_guard();
    tokio::spawn(
        async move {
            let _ended = ended;
            watchdog.run().await
        }
        .instrument(span),
    )
}

impl Drop for Watchdog {
    /// A watchdog that panicked takes its executor with it: an executor left alone would go on
    /// sending requests with nobody to save its checkpoints.
    fn drop(&mut self) {
        if let Some(executor) = &self.executor {
            executor.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::auto_abort_delay;

    #[test]
    fn automatic_aborts_of_a_failing_clean_up_back_off() {
        assert_eq!(
            auto_abort_delay(60, false, 3),
            60,
            "a first failure waits `after`"
        );
        let waits: Vec<u64> = (0..9)
            .map(|round| auto_abort_delay(60, true, round))
            .collect();
        assert_eq!(waits, [60, 120, 240, 480, 960, 1920, 3840, 3840, 3840]);
        assert_eq!(auto_abort_delay(7200, true, 6), 86_400, "at most a day");
        assert_eq!(
            auto_abort_delay(100_000, true, 6),
            100_000,
            "never below `after`"
        );
    }
}
