//! One engine per trial: an executor task walking the sequence and a watchdog task keeping its
//! backup. The API holds an [`EngineHandle`] (cheap to clone) and talks to the tasks only
//! through channels: signals go to the executor, restores to the watchdog, and the engine's
//! state is read from a `watch` channel. No handler ever waits for a running step.

pub mod executor;
pub mod failure;
pub mod nst;
pub mod redact;
pub mod sequence;
pub mod state;
pub mod steps;
pub mod watchdog;

use std::sync::{Arc, Mutex};

use chrono::Utc;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::{AbortHandle, JoinHandle};
use tracing::Instrument;

use crate::config::Settings;
use crate::domain::TrialId;
use crate::services::ServiceClient;
use crate::store::{EngineRecord, Store};
use crate::tokens::TokenManager;
use executor::{Checkpoint, Executor, ExecutorExit, SignalOutcome, SignalRequest};
use redact::Redactor;
use sequence::{Signal, Step};
use state::{Backup, EngineStatus, ExecutorStatus, Position, Snapshot, TrialData, TrialEvent};
use watchdog::{RestoreError, RestoreRequest, Watchdog};

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
    /// Hides the configuration's secrets in whatever is recorded.
    pub redactor: Redactor,
    pub hooks: EngineHooks,
}

/// State shared by the handle and the two tasks.
pub struct EngineShared {
    pub id: TrialId,
    pub deps: Arc<EngineDeps>,
    pub state: Arc<watch::Sender<Snapshot>>,
    /// The current executor's signal channel; a restore replaces it.
    commands: Mutex<mpsc::Sender<SignalRequest>>,
    restores: mpsc::Sender<RestoreRequest>,
    tasks: Mutex<Tasks>,
    /// Live events for `/events` subscribers; made on the first subscription, so an engine
    /// nobody watches carries no buffer.
    events: Mutex<Option<broadcast::Sender<TrialEvent>>>,
    /// The trial's callback token once minted, so deleting the engine can revoke it.
    token: Mutex<Option<String>>,
}

#[derive(Default)]
struct Tasks {
    executor: Option<AbortHandle>,
    watchdog: Option<JoinHandle<()>>,
}

/// How many signals may queue for an executor; it answers them at once, so few ever wait.
const SIGNAL_QUEUE: usize = 16;

/// How many events a slow `/events` subscriber may fall behind before it skips some.
const EVENT_BUFFER: usize = 64;

/// A handle to one trial's engine.
#[derive(Clone)]
pub struct EngineHandle {
    shared: Arc<EngineShared>,
}

impl EngineHandle {
    /// Creates the engine and starts it at the first step.
    pub fn start(id: TrialId, deps: Arc<EngineDeps>) -> Self {
        let backup = Backup {
            position: Position::Run(sequence::FIRST),
            data: TrialData::default(),
            accepted: Vec::new(),
            held: Vec::new(),
            failure: None,
        };
        Self::recover(
            deps,
            EngineRecord {
                id,
                status: EngineStatus::Active,
                backup,
            },
        )
    }

    /// Brings back an engine from its saved record: an active one resumes from its backup
    /// (a waiting point waits again, a step in flight runs again), a failed one waits for a
    /// restore, a finished one is only listed.
    pub fn recover(deps: Arc<EngineDeps>, record: EngineRecord) -> Self {
        let EngineRecord { id, status, backup } = record;
        let live = status == EngineStatus::Active;
        let (state, _) = watch::channel(Snapshot {
            engine: status,
            executor: match status {
                EngineStatus::Active => ExecutorStatus::Running,
                EngineStatus::Failed => ExecutorStatus::Failed,
                EngineStatus::Finished => ExecutorStatus::Finished,
                EngineStatus::Stopped => ExecutorStatus::Stopped,
            },
            position: backup.position,
            kpi_status: backup.data.kpi_status,
            failure: backup.failure.clone(),
            restorable: status == EngineStatus::Failed,
            responses: backup.data.responses.clone(),
            history: backup.data.history.clone(),
            created_at: Utc::now(),
        });
        let (commands, _) = mpsc::channel(1);
        let (restores, restore_rx) = mpsc::channel(4);
        let (checkpoint_tx, checkpoint_rx) = mpsc::channel(4);
        let shared = Arc::new(EngineShared {
            id,
            deps,
            state: Arc::new(state),
            commands: Mutex::new(commands),
            restores,
            tasks: Mutex::new(Tasks::default()),
            events: Mutex::new(None),
            token: Mutex::new(backup.data.token.clone()),
        });
        if matches!(status, EngineStatus::Active | EngineStatus::Failed) {
            let watchdog = Watchdog {
                shared: shared.clone(),
                backup,
                start_executor: live,
                executor: None,
                checkpoints: checkpoint_rx,
                checkpoint_tx,
                restores: restore_rx,
            };
            let handle = watchdog::spawn(watchdog, shared.span());
            shared.tasks().watchdog = Some(handle);
        }
        Self { shared }
    }

    /// The trial id.
    pub fn id(&self) -> &TrialId {
        &self.shared.id
    }

    /// The engine's current state.
    pub fn snapshot(&self) -> Snapshot {
        self.shared.state.borrow().clone()
    }

    /// A receiver that sees every change of the engine's state.
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.shared.state.subscribe()
    }

    /// The history so far and a receiver of every later event (no gap, no repeat: events in
    /// the receiver that are already in the history have a `seq` below its length).
    pub fn events(&self) -> (Arc<Vec<Arc<TrialEvent>>>, broadcast::Receiver<TrialEvent>) {
        let receiver = {
            let mut events = self.shared.events.lock().unwrap_or_else(|p| p.into_inner());
            events
                .get_or_insert_with(|| broadcast::channel(EVENT_BUFFER).0)
                .subscribe()
        };
        let history = self.shared.state.borrow().history.clone();
        (history, receiver)
    }

    /// Delivers a signal; the executor answers at once, whatever it is doing.
    pub async fn signal(&self, signal: Signal) -> SignalOutcome {
        let outcome = self.deliver(signal).await;
        metrics::counter!(
            "lcm_signals_total",
            "signal" => signal.name(),
            "outcome" => outcome.label()
        )
        .increment(1);
        outcome
    }

    async fn deliver(&self, signal: Signal) -> SignalOutcome {
        let engine = self.shared.state.borrow().engine;
        if engine != EngineStatus::Active {
            return SignalOutcome::NotLive(engine);
        }
        let sender = self.shared.commands().clone();
        let (reply, answer) = oneshot::channel();
        if sender.send(SignalRequest { signal, reply }).await.is_err() {
            return SignalOutcome::NotLive(self.shared.state.borrow().engine);
        }
        answer
            .await
            .unwrap_or_else(|_| SignalOutcome::NotLive(self.shared.state.borrow().engine))
    }

    /// The trial's callback token, once minted.
    pub fn token(&self) -> Option<String> {
        self.shared.token().clone()
    }

    /// Restores a failed engine from its backup.
    pub async fn restore(&self) -> Result<(), RestoreError> {
        {
            let state = self.shared.state.borrow();
            if state.engine == EngineStatus::Finished {
                return Err(RestoreError::Finished);
            }
            if state.engine == EngineStatus::Failed && !state.restorable {
                return Err(RestoreError::Reporting);
            }
        }
        let (reply, answer) = oneshot::channel();
        self.shared
            .restores
            .send(RestoreRequest { reply })
            .await
            .map_err(|_| RestoreError::Gone)?;
        answer.await.unwrap_or(Err(RestoreError::Gone))
    }

    /// Stops both tasks; a request in flight is cancelled.
    pub fn stop(&self) {
        let watchdog = self.abort_tasks();
        drop(watchdog);
    }

    /// Stops both tasks and waits until the watchdog has ended, so no write of this engine
    /// can reach the store after the caller's next one.
    pub async fn stop_and_wait(&self) {
        if let Some(watchdog) = self.abort_tasks() {
            // An aborted task ends with a cancellation error; that is the point.
            let _ = watchdog.await;
        }
    }

    fn abort_tasks(&self) -> Option<JoinHandle<()>> {
        let (watchdog, executor) = {
            let mut tasks = self.shared.tasks();
            (tasks.watchdog.take(), tasks.executor.take())
        };
        if let Some(executor) = executor {
            executor.abort();
        }
        if let Some(watchdog) = &watchdog {
            watchdog.abort();
        }
        self.shared.state.send_modify(|s| {
            s.engine = EngineStatus::Stopped;
            s.executor = ExecutorStatus::Stopped;
        });
        watchdog
    }
}

impl EngineShared {
    fn commands(&self) -> std::sync::MutexGuard<'_, mpsc::Sender<SignalRequest>> {
        self.commands.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn token(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.token.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, Tasks> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes an event of the history known: in the snapshot and to live subscribers.
    pub fn announce(&self, history: &Arc<Vec<Arc<TrialEvent>>>, event: TrialEvent) {
        self.state.send_modify(|s| s.history = history.clone());
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = &*events {
            // No subscriber left is fine.
            let _ = sender.send(event);
        }
    }

    /// The span every log line of this engine is written in.
    fn span(&self) -> tracing::Span {
        tracing::info_span!("engine", trial = %self.id)
    }
}

/// Starts an executor task from a backup, with a fresh signal channel. `rerun` says the
/// backup's step may have run before (a restore or a recovery).
fn spawn_executor(
    shared: &Arc<EngineShared>,
    backup: Backup,
    checkpoints: mpsc::Sender<Checkpoint>,
    rerun: bool,
) -> JoinHandle<ExecutorExit> {
    let (commands_tx, commands) = mpsc::channel(SIGNAL_QUEUE);
    let executor = Executor {
        id: shared.id.clone(),
        deps: shared.deps.clone(),
        position: backup.position,
        data: backup.data,
        accepted: backup.accepted,
        held: backup.held,
        rerun,
        commands,
        checkpoints,
        shared: shared.clone(),
    };
    *shared.commands() = commands_tx;
    let handle = tokio::spawn(executor.run().instrument(shared.span()));
    shared.tasks().executor = Some(handle.abort_handle());
    handle
}
