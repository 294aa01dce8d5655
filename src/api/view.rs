//! A trial as the API shows it, the same whether its engine is in memory or only its record
//! is left in the store (an ended trial that left memory): `/trial/{id}/status`, `/history`,
//! `/responses`, `/events` and `/trials` read through here.

use std::sync::Arc;

use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use crate::domain::TrialId;
use crate::engine::EngineHandle;
use crate::engine::sequence;
use crate::engine::state::{
    ExecutorStatus, Lifecycle, Mode, Position, ResponseRecord, Snapshot, TrialEvent,
};
use crate::store::{ListedStatus, StoredTrial, TrialRecord};

/// Where a trial was found.
pub enum Found {
    /// Its engine is in memory.
    Engine(EngineHandle),
    /// Only its record is left in the store.
    Stored(Box<TrialRecord>),
    /// Its record could not be read; it is set aside.
    Corrupt(String),
}

impl AppState {
    /// Finds a trial in memory, else in the store; the API's 404 if neither has it.
    pub async fn find_trial(&self, id: &TrialId) -> Result<Found, ApiError> {
        if let Some(engine) = self.scheduler.engines().get(id) {
            return Ok(Found::Engine(engine));
        }
        let key = id.clone();
        let stored = self
            .scheduler
            .deps()
            .store
            .read(move |reader| reader.trial(&key))
            .await?;
        match stored {
            Some(StoredTrial::Readable(record)) => Ok(Found::Stored(record)),
            Some(StoredTrial::Corrupt { reason }) => Ok(Found::Corrupt(reason)),
            // A job gives way to its engine (a job leaves only once its engine is in): one that
            // did so while the store was read has just started.
            None => match self.scheduler.engines().get(id) {
                Some(engine) => Ok(Found::Engine(engine)),
                None => Err(self.no_trial(id)),
            },
        }
    }

    /// The engine of a trial, to act on: in memory, or a clear refusal (404 for an unknown
    /// trial, 409 for one whose engine has ended and left memory, or whose record is corrupt).
    pub async fn engine_to_act_on(&self, id: &TrialId) -> Result<EngineHandle, ApiError> {
        match self.find_trial(id).await? {
            Found::Engine(engine) => Ok(engine),
            Found::Stored(record) => Err(ApiError::conflict(format!(
                "trial '{id}' has ended ({})",
                record.lifecycle.engine_status().name()
            ))),
            Found::Corrupt(reason) => Err(ApiError::conflict(format!(
                "trial '{id}' has a record that cannot be read: {reason}"
            ))),
        }
    }

    /// The 404 of a trial with no engine and no record, saying if it is scheduled, or was
    /// missed while the service was down.
    fn no_trial(&self, id: &TrialId) -> ApiError {
        if let Some(job) = self.scheduler.jobs().into_iter().find(|job| job.id == *id) {
            return ApiError::not_found(format!(
                "trial '{id}' has no engine yet: it is scheduled to start at {}",
                job.start_time
            ));
        }
        match self
            .scheduler
            .missed()
            .into_iter()
            .find(|job| job.id == *id)
        {
            Some(missed) => ApiError::not_found(format!(
                "trial '{id}' has no engine: its start time {} passed while the service was down, beyond scheduler.misfire_grace_secs, so it was missed; schedule it again",
                missed.start_time
            )),
            None => ApiError::no_engine(id),
        }
    }

    /// A trial's history, from memory or the store.
    pub async fn history(
        &self,
        found: &Found,
        id: &TrialId,
    ) -> Result<Vec<Arc<TrialEvent>>, ApiError> {
        match found {
            Found::Engine(engine) => Ok(engine.history()),
            Found::Stored(_) | Found::Corrupt(_) => {
                let key = id.clone();
                let events = self
                    .scheduler
                    .deps()
                    .store
                    .read(move |r| r.events(&key))
                    .await?;
                Ok(events.into_iter().map(Arc::new).collect())
            }
        }
    }

    /// A trial's recorded responses, from memory or the store.
    pub async fn responses(
        &self,
        found: &Found,
        id: &TrialId,
    ) -> Result<Vec<Arc<ResponseRecord>>, ApiError> {
        match found {
            Found::Engine(engine) => Ok(engine.responses()),
            Found::Stored(_) | Found::Corrupt(_) => {
                let key = id.clone();
                let responses = self
                    .scheduler
                    .deps()
                    .store
                    .read(move |r| r.responses(&key))
                    .await?;
                Ok(responses.into_iter().map(Arc::new).collect())
            }
        }
    }
}

/// What the API shows of a stored trial: the snapshot its engine had when it was saved.
pub fn snapshot_of(record: &TrialRecord) -> Snapshot {
    Snapshot::at(
        record.lifecycle,
        &record.checkpoint,
        record.created_at,
        record.updated_at,
        record.ended_at,
    )
}

/// What the executor waits for, in words: a waiting point, or the operator's resume.
pub fn waiting_for(snapshot: &Snapshot) -> Option<String> {
    if snapshot.lifecycle != Lifecycle::Waiting {
        return None;
    }
    if let Some(waiting_for) = snapshot.waiting_for {
        return Some(waiting_for.to_owned());
    }
    Some(match snapshot.position {
        Position::Wait(wait) => sequence::wait_spec(wait).waiting_for.to_owned(),
        Position::Run(step) => format!(
            "the operator to resume or step (paused before {})",
            step.name()
        ),
    })
}

/// The `state` field: the step, or `Waiting` while paused at a waiting point or the gate.
pub fn state(snapshot: &Snapshot) -> &'static str {
    if snapshot.lifecycle == Lifecycle::Waiting {
        "Waiting"
    } else {
        snapshot.position.state()
    }
}

/// `GET /trial/{id}/status`, from a snapshot (SPEC §5 plus §13's progress and §14's control).
pub fn status(snapshot: &Snapshot) -> Value {
    let status = snapshot.lifecycle.executor_status();
    let step = match snapshot.position {
        Position::Run(step) => Some(step.name()),
        Position::Wait(_) => None,
    };
    let failure = snapshot.failure.as_ref();
    let abort_reason = match &snapshot.mode {
        Mode::Cleanup { reason, .. } => Some(reason.as_str()),
        Mode::Normal => None,
    };
    let state = state(snapshot);
    json!({
        "message": format!("Status: {} State: {state}", status.name()),
        "status": status,
        "state": state,
        "step": step,
        "waiting_for": waiting_for(snapshot),
        "kpi_status": snapshot.kpi_status,
        "failed": status == ExecutorStatus::Failed,
        "finished": status == ExecutorStatus::Finished,
        "aborted": snapshot.lifecycle == Lifecycle::Aborted,
        "engine_status": snapshot.engine_status(),
        "failure": failure.map(|f| f.reason.as_str()),
        "restorable": snapshot.restorable(),
        "cleanup_failed": failure.is_some_and(|f| f.cleanup_failed),
        "leftovers": failure.map(|f| f.leftovers.as_slice()).unwrap_or_default(),
        "aborting": abort_reason.is_some() && snapshot.lifecycle.is_live(),
        "abort_reason": abort_reason,
        "paused": snapshot.paused,
        "progress": snapshot.progress.as_ref().and_then(|p| p.progress),
        "progress_message": snapshot.progress.as_ref().and_then(|p| p.message.as_deref()),
        "created_at": snapshot.created_at,
        "updated_at": snapshot.updated_at,
        "ended_at": snapshot.ended_at,
    })
}

/// The status of a record that could not be read.
pub fn corrupt_status(reason: &str) -> Value {
    json!({
        "message": "Status: Corrupt State: unknown",
        "engine_status": ListedStatus::Corrupt,
        "failure": reason,
        "failed": true,
        "finished": false,
        "restorable": false,
    })
}
