//! What an engine knows: the trial's data, where the executor is, the backup the watchdog
//! keeps, and the snapshot the API reads.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::sequence::{Signal, Step, Wait};

/// Engine status in the list view (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EngineStatus {
    Active,
    Failed,
    Finished,
    Stopped,
}

/// Executor status (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecutorStatus {
    Stopped,
    Running,
    Waiting,
    Finished,
    Failed,
}

/// The last KPI marking sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KpiStatus {
    Idle,
    Active,
    Finished,
}

impl KpiStatus {
    /// The `Marking` value sent to KPI monitoring.
    pub fn marking(self) -> &'static str {
        match self {
            KpiStatus::Idle => "Idle",
            KpiStatus::Active => "Active",
            KpiStatus::Finished => "Finished",
        }
    }
}

/// Where the executor is: about to run (or running) a step, or paused at a waiting point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Position {
    Run(Step),
    Wait(Wait),
}

/// The trial information gathered by `GetTrialInfo` and completed by later steps. Field names
/// are the wire names of the old service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialInfo {
    #[serde(rename = "trialID")]
    pub trial_id: String,
    pub facility: String,
    pub kpis: Value,
    pub name: Value,
    pub target: String,
    #[serde(rename = "DeployedSlice")]
    pub deployed_slice: Value,
    #[serde(rename = "MeasurementJob")]
    pub measurement_job: Value,
}

/// One answer from a service, recorded under the step that asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseRecord {
    pub step: String,
    pub service: String,
    pub method: String,
    pub path: String,
    /// HTTP status, or `None` when no answer came (the error says why).
    pub status: Option<u16>,
    /// The JSON body, if the answer had one.
    pub body: Option<Value>,
    /// The start of a body that is not JSON, or the transport error.
    pub error: Option<String>,
    pub duration_ms: u64,
    pub at: DateTime<Utc>,
}

/// What happened to a trial, as listed by `/history` and streamed by `/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialEvent {
    /// Position in the trial's history, from 0.
    pub seq: usize,
    pub at: DateTime<Utc>,
    pub event: EventKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// What the executor waits for, which signal it took, or why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// How long the step ran or the wait lasted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// The kinds of [`TrialEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    StepStarted,
    StepCompleted,
    StepFailed,
    Waiting,
    SignalAccepted,
    TrialFinished,
    TrialFailed,
    Restored,
}

/// The executor's data: everything a restored executor needs to carry on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrialData {
    /// The trial's callback token, minted by `GetCallbackToken`. Never logged or returned.
    pub token: Option<String>,
    pub info: Option<TrialInfo>,
    pub kpi_status: Option<KpiStatus>,
    /// The last status this LCM wrote to the trial repository (including `FAILED`).
    #[serde(default)]
    pub repository_status: Option<String>,
    /// Every response, in order. Shared copy-on-write with the snapshots; each record is
    /// behind its own `Arc`, so a copy of the list copies pointers, not JSON bodies.
    pub responses: Arc<Vec<Arc<ResponseRecord>>>,
    /// Every transition, in order, shared the same way.
    #[serde(default)]
    pub history: Arc<Vec<Arc<TrialEvent>>>,
}

impl TrialData {
    /// Adds a response record.
    pub fn record(&mut self, record: ResponseRecord) {
        Arc::make_mut(&mut self.responses).push(Arc::new(record));
    }

    /// Adds an event to the history (numbering it) and returns it.
    pub fn log_event(
        &mut self,
        event: EventKind,
        step: Option<&str>,
        detail: Option<String>,
        duration_ms: Option<u64>,
    ) -> TrialEvent {
        let history = Arc::make_mut(&mut self.history);
        let entry = TrialEvent {
            seq: history.len(),
            at: Utc::now(),
            event,
            step: step.map(str::to_owned),
            detail,
            duration_ms,
        };
        history.push(Arc::new(entry.clone()));
        entry
    }
}

/// The backup the watchdog keeps: enough to start a new executor at `position`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Backup {
    pub position: Position,
    pub data: TrialData,
    /// Signals accepted so far, with the waiting point each was taken at (for duplicates).
    pub accepted: Vec<(Wait, Signal)>,
    /// Early signals kept for a waiting point not reached yet: a component was told they
    /// were accepted, so they are saved with the rest.
    #[serde(default)]
    pub held: Vec<(Wait, Signal)>,
    /// Why the executor failed, if the backup was taken at a failure.
    pub failure: Option<String>,
}

/// What the API sees of an engine, published on a `watch` channel.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub engine: EngineStatus,
    pub executor: ExecutorStatus,
    pub position: Position,
    pub kpi_status: Option<KpiStatus>,
    pub failure: Option<String>,
    /// Failed, with the failure procedure done (repository told, file written): a restore
    /// may start.
    pub restorable: bool,
    pub responses: Arc<Vec<Arc<ResponseRecord>>>,
    pub history: Arc<Vec<Arc<TrialEvent>>>,
    pub created_at: DateTime<Utc>,
}

impl Snapshot {
    /// The `state` field: the step, or `Waiting` while paused.
    pub fn state(&self) -> &'static str {
        match self.position {
            Position::Run(step) => step.name(),
            Position::Wait(_) => "Waiting",
        }
    }

    /// Whether the engine still takes callbacks and signals.
    pub fn is_live(&self) -> bool {
        self.engine == EngineStatus::Active
    }
}
