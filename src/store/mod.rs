//! Durable state (scheduled jobs, engine checkpoints with their responses and status, token
//! revocations, the automatic-scheduling switch), so trials survive a restart.
//!
//! A [`Backend`] is the small interface a database implements: apply a batch of [`Op`]s in one
//! transaction, and load everything at start-up. [`Store`] runs one backend on a dedicated
//! writer thread: callers `await` their write, writes are applied in the order they were
//! submitted, and writes that queue up meanwhile are committed together (group commit). One
//! thread whatever the number of trials, and no blocking on the async threads.

pub mod sqlite;

use std::sync::mpsc;
use std::thread;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::error;

use crate::domain::{StartTime, TrialId};
use crate::engine::state::{Backup, EngineStatus};

/// Why the store could not do something.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Backend(String),
    #[error("store: the writer thread has stopped")]
    Closed,
}

/// One change to the durable state.
#[derive(Debug, Clone)]
pub enum Op {
    PutJob {
        id: TrialId,
        start: StartTime,
    },
    DeleteJob {
        id: TrialId,
    },
    /// Saves an engine's checkpoint and status; an engine supersedes its trial's job.
    PutEngine(Box<EngineRecord>),
    DeleteEngine {
        id: TrialId,
    },
    Revoke {
        jti: String,
        exp: i64,
    },
    SetAutomatic(bool),
}

impl Op {
    /// What the operation does, for logs (an engine record holds secrets: never log it whole).
    pub fn kind(&self) -> &'static str {
        match self {
            Op::PutJob { .. } => "put job",
            Op::DeleteJob { .. } => "delete job",
            Op::PutEngine(_) => "put engine",
            Op::DeleteEngine { .. } => "delete engine",
            Op::Revoke { .. } => "revoke token",
            Op::SetAutomatic(_) => "set automatic scheduling",
        }
    }
}

/// An engine as saved: its status and its latest backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EngineRecord {
    pub id: TrialId,
    pub status: EngineStatus,
    pub backup: Backup,
}

/// Everything saved, as read at start-up.
#[derive(Debug, Default)]
pub struct Loaded {
    pub jobs: Vec<(TrialId, StartTime)>,
    pub engines: Vec<EngineRecord>,
    /// Revoked token ids that have not expired, with their expiry.
    pub revoked: Vec<(String, i64)>,
    pub automatic: Option<bool>,
}

/// What a database must do to hold the LCM's state.
pub trait Backend: Send + 'static {
    /// Applies the operations in one transaction: all or nothing.
    fn apply(&mut self, ops: &[Op]) -> Result<(), StoreError>;
    /// Reads everything (at start-up).
    fn load(&mut self) -> Result<Loaded, StoreError>;
}

type Request = (Op, oneshot::Sender<Result<(), StoreError>>);

/// At most this many queued writes are committed in one transaction.
const MAX_BATCH: usize = 512;

/// The handle to the writer thread (cheap to clone).
#[derive(Clone)]
pub struct Store {
    requests: mpsc::Sender<Request>,
}

impl Store {
    /// Loads the backend's state and starts its writer thread.
    pub fn start(mut backend: impl Backend) -> Result<(Self, Loaded), StoreError> {
        let loaded = backend.load()?;
        let (requests, queue) = mpsc::channel::<Request>();
        thread::Builder::new()
            .name("lcm-store".to_owned())
            .spawn(move || write_loop(backend, queue))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        Ok((Self { requests }, loaded))
    }

    /// Applies one change; returns once it is committed.
    pub async fn write(&self, op: Op) -> Result<(), StoreError> {
        let (reply, done) = oneshot::channel();
        self.requests
            .send((op, reply))
            .map_err(|_| StoreError::Closed)?;
        done.await.unwrap_or(Err(StoreError::Closed))
    }
}

fn write_loop(mut backend: impl Backend, queue: mpsc::Receiver<Request>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let ops: Vec<Op> = batch.iter().map(|(op, _)| op.clone()).collect();
        match backend.apply(&ops) {
            Ok(()) => {
                for (_, reply) in batch {
                    let _ = reply.send(Ok(()));
                }
            }
            // One bad write must not fail the others: retry each alone to find it.
            Err(_) if batch.len() > 1 => {
                for (op, reply) in batch {
                    let result = backend.apply(std::slice::from_ref(&op));
                    if let Err(e) = &result {
                        error!(error = %e, op = op.kind(), "store write failed");
                    }
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                error!(error = %e, "store write failed");
                for (_, reply) in batch {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}
