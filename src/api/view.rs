//! A trial as the API shows it, the same whether its engine is in memory or only its record
//! is left in the store (an ended trial that left memory): `/trial/{id}/status`, `/history`,
//! `/responses`, `/events` and `/trials` read through here.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tracing::{error, info, warn};
use utoipa::ToSchema;

use super::error::ApiError;
use super::{AppState, LateClose};
use crate::domain::TrialId;
use crate::engine::EngineHandle;
use crate::engine::sequence;
use crate::engine::state::{
    EngineStatus, ExecutorStatus, KpiStatus, Leftover, Lifecycle, Mode, Position, ResponseRecord,
    Snapshot, TrialEvent,
};
use crate::store::{StoredTrial, TrialRecord};

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
            Some(StoredTrial::Corrupt { reason, .. }) => Ok(Found::Corrupt(reason)),
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

    /// A slice callback refused for trial `id`, with `token` (signed by this service), that
    /// comes once the trial has ended: trial enforcement may have a slice the trial did not
    /// close. Its clean-up concluded that a slice deployment never answered made none
    /// (`no_slice_made`), or a deployment sent again made a second (the first was in flight
    /// at a crash, to a component that does not honour the `Idempotency-Key`). Whatever
    /// trial enforcement still has of the trial is closed as the clean-up would have,
    /// `DELETE /sliceDeployment/{id}`, for each such callback but those that come while a
    /// close runs and the close's own callback; the log says what came of it.
    pub async fn slice_after_the_end(&self, id: &TrialId, token: &str) {
        let lifecycle = match self.find_trial(id).await {
            Ok(Found::Engine(engine)) => engine.snapshot().lifecycle(),
            Ok(Found::Stored(record)) => record.lifecycle,
            Ok(Found::Corrupt(_)) | Err(_) => return,
        };
        if !lifecycle.is_ended() {
            return;
        }
        {
            let mut closing = self.late_slices.lock().unwrap_or_else(|p| p.into_inner());
            match closing.get(id).copied() {
                Some(LateClose::InFlight { .. }) => {
                    let came = LateClose::InFlight {
                        callback_came: true,
                    };
                    closing.insert(id.clone(), came);
                    return;
                }
                Some(LateClose::OwnCallbackDue(until)) if tokio::time::Instant::now() <= until => {
                    closing.remove(id);
                    return;
                }
                // None yet, or the close's own callback never came in its time: this one
                // announces another slice.
                Some(LateClose::OwnCallbackDue(_)) | None => {
                    let close = LateClose::InFlight {
                        callback_came: false,
                    };
                    closing.insert(id.clone(), close);
                }
            }
        }
        info!(
            trial = %id,
            "a slice callback came after the trial ended: closing whatever slice trial enforcement still has of it (one made late, after the clean-up concluded none was made, or a second one, for a deployment sent again after a crash)"
        );
        let request = crate::engine::steps::close_request(&self.settings, id, token);
        let callback_time =
            std::time::Duration::from_secs(self.settings.executor.callback_timeout_secs);
        let state = self.clone();
        let id = id.clone();
        self.handlers.spawn(async move {
            let answer = state.scheduler.deps().services.send(&request, |_| {}).await;
            let mut closing = state.late_slices.lock().unwrap_or_else(|p| p.into_inner());
            let callback_came = matches!(
                closing.remove(&id),
                Some(LateClose::InFlight {
                    callback_came: true
                })
            );
            match answer {
                Ok(reply) if reply.status == 200 => {
                    if !callback_came {
                        let until = tokio::time::Instant::now() + callback_time;
                        closing.insert(id.clone(), LateClose::OwnCallbackDue(until));
                    }
                    warn!(trial = %id, "trial enforcement had a slice of the ended trial that the trial did not close: closed now (it answered 200)");
                }
                Ok(reply) if reply.status == 404 => {
                    info!(trial = %id, "trial enforcement has no slice of the ended trial (it answered 404): nothing to close");
                }
                answer => {
                    let said = match answer {
                        Ok(reply) => format!("answered {}", reply.status),
                        Err(e) => e.to_string(),
                    };
                    error!(trial = %id, answer = %said, "the slice announced after its trial's end could not be closed: close it on the facility by hand");
                }
            }
        });
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
    if snapshot.lifecycle() != Lifecycle::Waiting {
        return None;
    }
    if let Some(waiting_for) = snapshot.waiting_for {
        return Some(waiting_for.text().to_owned());
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
    if snapshot.lifecycle() == Lifecycle::Waiting {
        "Waiting"
    } else {
        snapshot.position.state()
    }
}

/// The answer of `GET /trial/{id}/status`: the trial's status, or what is known of a record
/// that could not be read.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum StatusAnswer {
    /// A trial in memory, or one whose record was read from the store.
    Trial(TrialStatus),
    /// A trial whose record could not be read.
    Corrupt(CorruptStatus),
}

/// A trial's status: where its executor is, what it waits for, how it failed or is being
/// aborted, and the last progress a component reported. The same from memory and from the
/// store.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrialStatus {
    /// `Status: <status> State: <state>`.
    #[schema(example = "Status: Waiting State: Waiting")]
    pub message: String,
    /// The executor status.
    pub status: ExecutorStatus,
    /// The current step, or `Waiting` at a waiting point or held by a pause.
    #[schema(example = "SliceDeployment")]
    pub state: &'static str,
    /// The step the executor is at; none at a waiting point.
    #[schema(required = true)]
    pub step: Option<&'static str>,
    /// What the engine waits for, while it waits: a callback, the operator, or a resume.
    #[schema(required = true, example = "operator (active or finish)")]
    pub waiting_for: Option<String>,
    /// The last KPI marking sent; none before the first.
    #[schema(required = true)]
    pub kpi_status: Option<KpiStatus>,
    /// The trial failed (a restore, a skip or an abort may follow).
    pub failed: bool,
    /// The trial ran to its end.
    pub finished: bool,
    /// The trial was aborted and its clean-up completed.
    pub aborted: bool,
    /// The list view's status: `Active` while it runs or waits.
    pub engine_status: EngineStatus,
    /// Why the trial failed.
    #[schema(required = true)]
    pub failure: Option<String>,
    /// Failed, with the failure reported: `POST /debug/engine/{id}/restore` may start.
    pub restorable: bool,
    /// The failure happened while cleaning up after an abort; abort again retries it.
    pub cleanup_failed: bool,
    /// What a failed clean-up left deployed on the facility.
    pub leftovers: Vec<Leftover>,
    /// An abort's clean-up is under way.
    pub aborting: bool,
    /// The reason of the abort, once aborted or aborting.
    #[schema(required = true)]
    pub abort_reason: Option<String>,
    /// The operator paused the trial: no new request starts until resumed.
    pub paused: bool,
    /// The last progress a component reported during the current wait, 0 to 100.
    #[schema(required = true, maximum = 100)]
    pub progress: Option<u8>,
    /// The message of that report.
    #[schema(required = true)]
    pub progress_message: Option<String>,
    /// When the engine was created.
    pub created_at: DateTime<Utc>,
    /// When its status last changed.
    pub updated_at: DateTime<Utc>,
    /// When the trial ended (finished or aborted).
    #[schema(required = true)]
    pub ended_at: Option<DateTime<Utc>>,
}

/// The status of a trial whose record could not be read and was set aside.
#[derive(Debug, Serialize, ToSchema)]
pub struct CorruptStatus {
    /// `Status: Corrupt State: unknown`.
    pub message: &'static str,
    /// Always `Corrupt`.
    pub engine_status: SetAside,
    /// Why the record could not be read.
    pub failure: String,
    /// Always `true`.
    pub failed: bool,
    /// Always `false`.
    pub finished: bool,
    /// Always `false`: a record that cannot be read cannot be restored.
    pub restorable: bool,
}

/// The engine status of a record set aside.
#[derive(Debug, Serialize, ToSchema)]
pub enum SetAside {
    Corrupt,
}

/// `GET /trial/{id}/status`, from a snapshot.
pub fn status(snapshot: &Snapshot) -> TrialStatus {
    let status = snapshot.lifecycle().executor_status();
    let step = match snapshot.position {
        Position::Run(step) => Some(step.name()),
        Position::Wait(_) => None,
    };
    let failure = snapshot.failure.as_ref();
    // An abort asked for while the failure was reported is shown from the moment it is saved.
    let asked = failure.and_then(|f| f.abort.clone());
    let abort_reason = asked.clone().or_else(|| match &snapshot.mode {
        Mode::Cleanup { reason, .. } => Some(reason.clone()),
        Mode::Normal => None,
    });
    let state = state(snapshot);
    TrialStatus {
        message: format!("Status: {} State: {state}", status.name()),
        status,
        state,
        step,
        waiting_for: waiting_for(snapshot),
        kpi_status: snapshot.kpi_status,
        failed: status == ExecutorStatus::Failed,
        finished: status == ExecutorStatus::Finished,
        aborted: snapshot.lifecycle() == Lifecycle::Aborted,
        engine_status: snapshot.engine_status(),
        failure: failure.map(|f| f.reason.clone()),
        restorable: snapshot.restorable(),
        cleanup_failed: failure.is_some_and(|f| f.cleanup_failed),
        leftovers: failure.map(|f| f.leftovers.clone()).unwrap_or_default(),
        aborting: snapshot.aborting(),
        abort_reason,
        paused: snapshot.paused,
        progress: snapshot.progress.as_ref().and_then(|p| p.progress),
        progress_message: snapshot.progress.as_ref().and_then(|p| p.message.clone()),
        created_at: snapshot.created_at,
        updated_at: snapshot.updated_at,
        ended_at: snapshot.ended_at,
    }
}

/// The status of a record that could not be read.
pub fn corrupt_status(reason: &str) -> CorruptStatus {
    CorruptStatus {
        message: "Status: Corrupt State: unknown",
        engine_status: SetAside::Corrupt,
        failure: reason.to_owned(),
        failed: true,
        finished: false,
        restorable: false,
    }
}
