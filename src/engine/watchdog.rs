//! The process-check watchdog: keeps (and saves) the executor's latest backup, notices at once
//! when the executor task ends (finished, failed, or died by panic/abort), runs the failure
//! procedure in both failure cases, and starts a new executor from the backup when asked to
//! restore.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{Instrument, error, info};

use super::executor::{Checkpoint, ExecutorExit};
use super::failure;
use super::state::{Backup, EngineStatus, EventKind, ExecutorStatus, Position};
use super::{EngineShared, spawn_executor};
use crate::store::{EngineRecord, Op};

/// Why a restore was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    #[error("the engine is running; only a failed engine can be restored")]
    Running,
    #[error("the engine has finished; there is nothing to restore")]
    Finished,
    #[error("the engine is gone")]
    Gone,
    #[error(
        "the failure procedure is still running (repository report, failure file); retry in a moment"
    )]
    Reporting,
    #[error("the restore was not saved: {0}")]
    NotSaved(String),
}

/// A restore request for the watchdog.
pub struct RestoreRequest {
    pub reply: oneshot::Sender<Result<(), RestoreError>>,
}

/// The watchdog's state.
pub struct Watchdog {
    pub shared: Arc<EngineShared>,
    pub backup: Backup,
    /// Start an executor from `backup` once it is saved (a new or recovered active engine).
    pub start_executor: bool,
    pub executor: Option<JoinHandle<ExecutorExit>>,
    pub checkpoints: mpsc::Receiver<Checkpoint>,
    pub checkpoint_tx: mpsc::Sender<Checkpoint>,
    pub restores: mpsc::Receiver<RestoreRequest>,
}

impl Watchdog {
    /// Supervises until the trial finishes (or the engine is stopped, which aborts this task).
    pub async fn run(mut self) {
        if self.start_executor {
            // The engine's first record is saved before its first request goes out, so a
            // trial whose job has fired can never be lost.
            let status = EngineStatus::Active;
            match self.save(status).await {
                Ok(()) => self.spawn_executor(),
                Err(e) => {
                    self.died(format!("cannot save the engine's state: {e}"))
                        .await
                }
            }
        }
        loop {
            tokio::select! {
                // Checkpoints first: one sent just before the executor ended must be kept.
                biased;
                Some(checkpoint) = self.checkpoints.recv() => {
                    self.backup = *checkpoint.backup;
                    let status = if self.backup.failure.is_some() {
                        EngineStatus::Failed
                    } else {
                        EngineStatus::Active
                    };
                    let _ = checkpoint.ack.send(self.save(status).await);
                }
                result = join(&mut self.executor) => {
                    self.executor = None;
                    match result {
                        Ok(ExecutorExit::Finished) => {
                            if let Err(e) = self.save(EngineStatus::Finished).await {
                                error!(error = %e, "the finished status was not saved");
                            }
                            info!("engine finished; watchdog ends");
                            return;
                        }
                        Ok(ExecutorExit::Failed(reason)) => {
                            self.run_failure_procedure(&reason).await;
                        }
                        Err(e) if e.is_cancelled() => {
                            self.died("the executor task was aborted".to_owned()).await;
                        }
                        Err(e) => {
                            let message = panic_message(e.into_panic());
                            self.died(format!("the executor task panicked: {message}")).await;
                        }
                    }
                }
                Some(request) = self.restores.recv() => {
                    let _ = request.reply.send(self.restore().await);
                }
            }
        }
    }

    /// Saves the latest backup with the engine's status; the executor waits for this before
    /// it sends its next request.
    async fn save(&self, status: EngineStatus) -> Result<(), String> {
        let record = EngineRecord {
            id: self.shared.id.clone(),
            status,
            backup: self.backup.clone(),
        };
        self.shared
            .deps
            .store
            .write(Op::PutEngine(Box::new(record)))
            .await
            .map_err(|e| e.to_string())
    }

    fn spawn_executor(&mut self) {
        // A step the backup stands at has run before unless the engine is brand new.
        let rerun = matches!(self.backup.position, Position::Run(_))
            && !self.backup.data.history.is_empty();
        let handle = spawn_executor(
            &self.shared,
            self.backup.clone(),
            self.checkpoint_tx.clone(),
            rerun,
        );
        self.executor = Some(handle);
    }

    /// The executor died without a word: mark the engine failed from the last backup.
    async fn died(&mut self, reason: String) {
        error!(reason = %reason, "executor died; engine marked Failed");
        self.shared.state.send_modify(|s| {
            s.engine = EngineStatus::Failed;
            s.executor = ExecutorStatus::Failed;
            s.failure = Some(reason.clone());
        });
        self.backup.failure = Some(reason.clone());
        // The executor may have logged events after its last checkpoint: keep them, so the
        // history never goes backwards.
        self.backup.data.history = self.shared.state.borrow().history.clone();
        let event =
            self.backup
                .data
                .log_event(EventKind::TrialFailed, None, Some(reason.clone()), None);
        self.shared.announce(&self.backup.data.history, event);
        self.run_failure_procedure(&reason).await;
    }

    /// SPEC §4.3, for a failed step and a dead executor alike: tell the repository, write the
    /// failure file, save the failed state; then the engine is restorable.
    async fn run_failure_procedure(&mut self, reason: &str) {
        failure::report(&self.shared.deps, &self.shared.id, &mut self.backup, reason).await;
        let responses = self.backup.data.responses.clone();
        self.shared.state.send_modify(|s| s.responses = responses);
        if let Err(e) = self.save(EngineStatus::Failed).await {
            error!(error = %e, "the failed status was not saved");
        }
        info!("failure procedure done; backup kept for a restore");
        self.shared.state.send_modify(|s| s.restorable = true);
    }

    async fn restore(&mut self) -> Result<(), RestoreError> {
        if self.executor.is_some() {
            return Err(RestoreError::Running);
        }
        info!(position = ?self.backup.position, "restoring the executor from the backup");
        self.backup.failure = None;
        let event = self
            .backup
            .data
            .log_event(EventKind::Restored, None, None, None);
        self.shared.announce(&self.backup.data.history, event);
        self.save(EngineStatus::Active)
            .await
            .map_err(RestoreError::NotSaved)?;
        self.shared.state.send_modify(|s| {
            s.engine = EngineStatus::Active;
            s.executor = ExecutorStatus::Running;
            s.failure = None;
            s.restorable = false;
        });
        self.spawn_executor();
        Ok(())
    }
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

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}

/// Runs a watchdog in its own task, inside the engine's span.
pub fn spawn(watchdog: Watchdog, span: tracing::Span) -> JoinHandle<()> {
    tokio::spawn(watchdog.run().instrument(span))
}
