//! The executor task: walks the sequence, answers signals at once (even while a step's
//! request is in flight), and hands a checkpoint to the watchdog after every completed step
//! and at every waiting point.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use super::sequence::{self, Signal, Step, Then, WAITS, Wait, Waiter};
use super::state::{Backup, EngineStatus, EventKind, ExecutorStatus, Position, TrialData};
use super::steps::{self, StepCx, StepError};
use super::{EngineDeps, EngineShared};
use crate::domain::TrialId;

/// A signal for the executor and where to send its answer.
pub struct SignalRequest {
    pub signal: Signal,
    pub reply: oneshot::Sender<SignalOutcome>,
}

/// How the executor took a signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalOutcome {
    /// Taken: the executor moves on to this step.
    Accepted(Step),
    /// Arrived while the step that asked for it is still running: kept, applied when it ends.
    Held(Step),
    /// The same signal was accepted before; nothing changes.
    AlreadyRegistered,
    /// It does not fit where the executor is; nothing changes.
    Refused(String),
    /// The engine no longer takes signals.
    NotLive(EngineStatus),
}

impl SignalOutcome {
    /// The outcome as a metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            SignalOutcome::Accepted(_) => "accepted",
            SignalOutcome::Held(_) => "held",
            SignalOutcome::AlreadyRegistered => "already_registered",
            SignalOutcome::Refused(_) => "refused_wrong_phase",
            SignalOutcome::NotLive(_) => "refused_not_live",
        }
    }
}

/// A backup for the watchdog, acknowledged once it is kept (and, with a store, saved).
pub struct Checkpoint {
    /// Boxed: every engine's channel keeps a block of slots, which stays small this way.
    pub backup: Box<Backup>,
    pub ack: oneshot::Sender<Result<(), String>>,
}

/// How the executor task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecutorExit {
    Finished,
    Failed(String),
}

/// What the executor does with a signal, decided from where it is (SPEC §4's signal rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Take(Step),
    Hold(Wait),
    Duplicate,
    Refuse(String),
}

/// Decides a signal's fate. `accepted` and `held` are the signals taken or kept so far.
pub fn decide(
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

/// The executor: owns the trial's data while it runs.
pub struct Executor {
    pub id: TrialId,
    pub deps: Arc<EngineDeps>,
    pub position: Position,
    pub data: TrialData,
    pub accepted: Vec<(Wait, Signal)>,
    /// Early signals kept until their waiting point is reached.
    pub held: Vec<(Wait, Signal)>,
    /// The first step runs again (the executor was restored, or recovered after a crash).
    pub rerun: bool,
    pub commands: mpsc::Receiver<SignalRequest>,
    pub checkpoints: mpsc::Sender<Checkpoint>,
    pub shared: Arc<EngineShared>,
}

impl Executor {
    /// Runs until the trial finishes or fails.
    pub async fn run(mut self) -> ExecutorExit {
        let vnf_enabled = !self.deps.settings.executor.disable_vnf;
        loop {
            let outcome = match self.position {
                Position::Run(step) => {
                    self.publish(ExecutorStatus::Running);
                    info!(step = step.name(), "step started");
                    self.emit(EventKind::StepStarted, Some(step), None, None);
                    let started = Instant::now();
                    let result = self.run_step(step).await;
                    let elapsed_ms =
                        u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                    let outcome = if result.is_ok() {
                        "completed"
                    } else {
                        "failed"
                    };
                    metrics::counter!("lcm_steps_total", "step" => step.name(), "outcome" => outcome)
                        .increment(1);
                    match result {
                        Ok(()) => {
                            info!(step = step.name(), elapsed_ms, "step completed");
                            if step == Step::GetCallbackToken {
                                *self.shared.token() = self.data.token.clone();
                            }
                            self.emit(EventKind::StepCompleted, Some(step), None, Some(elapsed_ms));
                            match sequence::after(step, vnf_enabled) {
                                Then::Step(next) => Ok(Position::Run(next)),
                                Then::Wait(wait) => Ok(Position::Wait(wait)),
                                Then::End | Then::Branch { .. } => return self.finish(),
                            }
                        }
                        Err(e) => {
                            let reason = format!("{} failed: {e}", step.name());
                            self.emit(
                                EventKind::StepFailed,
                                Some(step),
                                Some(reason.clone()),
                                Some(elapsed_ms),
                            );
                            Err(reason)
                        }
                    }
                }
                Position::Wait(wait) => {
                    self.publish(ExecutorStatus::Waiting);
                    self.wait(wait).await.map(Position::Run)
                }
            };
            match outcome {
                Ok(position) => {
                    self.position = position;
                    if let Err(e) = self.checkpoint().await {
                        return self.fail(format!("checkpoint not saved: {e}")).await;
                    }
                }
                Err(reason) => return self.fail(reason).await,
            }
        }
    }

    /// Runs a step while still answering signals: a request in flight never blocks the API.
    async fn run_step(&mut self, step: Step) -> Result<(), StepError> {
        if let Some(hook) = &self.deps.hooks.before_step {
            hook(&self.id, step);
        }
        let mut cx = StepCx {
            deps: &self.deps,
            id: &self.id,
            data: &mut self.data,
            step,
            rerun: std::mem::take(&mut self.rerun),
        };
        let work = steps::run(&mut cx);
        tokio::pin!(work);
        loop {
            tokio::select! {
                result = &mut work => return result,
                Some(request) = self.commands.recv() => {
                    let outcome = match decide(Position::Run(step), request.signal, &self.accepted, &self.held) {
                        Decision::Hold(wait) => {
                            info!(signal = request.signal.name(), step = step.name(), "early signal kept until the step completes");
                            self.held.push((wait, request.signal));
                            SignalOutcome::Held(step)
                        }
                        other => answer(other),
                    };
                    let _ = request.reply.send(outcome);
                }
            }
        }
    }

    /// Waits at a waiting point for a signal that leaves it; returns the next step.
    async fn wait(&mut self, wait: Wait) -> Result<Step, String> {
        let spec = sequence::wait_spec(wait);
        if let Some(i) = self.held.iter().position(|(w, _)| *w == wait) {
            let (_, signal) = self.held.remove(i);
            if let Decision::Take(next) = decide(Position::Wait(wait), signal, &self.accepted, &[])
            {
                info!(signal = signal.name(), "applying the early signal");
                self.accepted.push((wait, signal));
                let detail = format!("{} (arrived early)", signal.name());
                self.emit(EventKind::SignalAccepted, None, Some(detail), Some(0));
                return Ok(next);
            }
        }
        info!(waiting_for = spec.waiting_for, "waiting");
        self.emit(
            EventKind::Waiting,
            None,
            Some(spec.waiting_for.to_owned()),
            None,
        );
        let waiting_since = Instant::now();
        let executor = &self.deps.settings.executor;
        let limit = match spec.waiter {
            Waiter::Component => Some(executor.callback_timeout_secs),
            Waiter::Operator => executor.operator_timeout_secs,
        };
        let deadline = limit.map(|secs| tokio::time::Instant::now() + Duration::from_secs(secs));
        loop {
            let request = match deadline {
                Some(deadline) => tokio::select! {
                    request = self.commands.recv() => request,
                    () = tokio::time::sleep_until(deadline) => {
                        return Err(format!("timed out waiting for {}", spec.waiting_for));
                    }
                },
                None => self.commands.recv().await,
            };
            let Some(request) = request else {
                return Err("the engine's command channel closed".to_owned());
            };
            match decide(
                Position::Wait(wait),
                request.signal,
                &self.accepted,
                &self.held,
            ) {
                Decision::Take(next) => {
                    info!(signal = request.signal.name(), "signal accepted");
                    self.accepted.push((wait, request.signal));
                    let waited =
                        u64::try_from(waiting_since.elapsed().as_millis()).unwrap_or(u64::MAX);
                    self.emit(
                        EventKind::SignalAccepted,
                        None,
                        Some(request.signal.name().to_owned()),
                        Some(waited),
                    );
                    let _ = request.reply.send(SignalOutcome::Accepted(next));
                    return Ok(next);
                }
                other => {
                    let _ = request.reply.send(answer(other));
                }
            }
        }
    }

    fn backup(&self) -> Backup {
        Backup {
            position: self.position,
            data: self.data.clone(),
            accepted: self.accepted.clone(),
            held: self.held.clone(),
            failure: None,
        }
    }

    /// Hands the backup to the watchdog and waits until it is kept.
    async fn checkpoint(&self) -> Result<(), String> {
        let (ack, acked) = oneshot::channel();
        let checkpoint = Checkpoint {
            backup: Box::new(self.backup()),
            ack,
        };
        if self.checkpoints.send(checkpoint).await.is_err() {
            return Err("the watchdog is gone".to_owned());
        }
        acked
            .await
            .unwrap_or_else(|_| Err("the watchdog is gone".to_owned()))
    }

    fn emit(
        &mut self,
        event: EventKind,
        step: Option<Step>,
        detail: Option<String>,
        duration_ms: Option<u64>,
    ) {
        let event = self
            .data
            .log_event(event, step.map(Step::name), detail, duration_ms);
        self.shared.announce(&self.data.history, event);
    }

    /// Shows the engine's state to the API.
    fn publish(&self, executor: ExecutorStatus) {
        let engine = match executor {
            ExecutorStatus::Finished => EngineStatus::Finished,
            ExecutorStatus::Failed => EngineStatus::Failed,
            _ => EngineStatus::Active,
        };
        self.shared.state.send_modify(|s| {
            s.engine = engine;
            s.executor = executor;
            s.position = self.position;
            s.kpi_status = self.data.kpi_status;
            s.responses = self.data.responses.clone();
            if executor != ExecutorStatus::Failed {
                s.failure = None;
            }
        });
    }

    fn finish(mut self) -> ExecutorExit {
        info!("trial finished");
        self.emit(EventKind::TrialFinished, None, None, None);
        self.publish(ExecutorStatus::Finished);
        ExecutorExit::Finished
    }

    /// Stops at a failure: signals are refused from this moment on, and the backup (the
    /// failed step's answers included; its position is still the step that failed, or the
    /// waiting point that timed out) goes to the watchdog, which runs the failure procedure.
    async fn fail(mut self, reason: String) -> ExecutorExit {
        self.commands.close();
        error!(reason = %reason, "trial failed");
        self.emit(EventKind::TrialFailed, None, Some(reason.clone()), None);
        self.shared
            .state
            .send_modify(|s| s.failure = Some(reason.clone()));
        self.publish(ExecutorStatus::Failed);
        let mut backup = self.backup();
        backup.failure = Some(reason.clone());
        let (ack, acked) = oneshot::channel();
        if self
            .checkpoints
            .send(Checkpoint {
                backup: Box::new(backup),
                ack,
            })
            .await
            .is_ok()
            && let Ok(Err(e)) = acked.await
        {
            warn!(error = %e, "the failure checkpoint was not saved");
        }
        ExecutorExit::Failed(reason)
    }
}

fn answer(decision: Decision) -> SignalOutcome {
    match decision {
        Decision::Take(step) => SignalOutcome::Accepted(step),
        Decision::Hold(_) | Decision::Duplicate => SignalOutcome::AlreadyRegistered,
        Decision::Refuse(reason) => SignalOutcome::Refused(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Signal::{Active, SliceCallback};
    use Step::*;

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
