//! What an engine knows: where the executor is in the sequence, the small state a restored
//! executor needs (the [`Checkpoint`]), what the trial has deployed so far (the [`Ledger`] the
//! clean-up path undoes), and the [`Snapshot`] the API reads.
//!
//! The events and responses of a trial are not here: they are appended to the trial's
//! journal as they happen (see `journal.rs`), so a checkpoint stays the same size however long
//! the trial runs.

use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

use super::sequence::{Signal, Step, Wait};

/// The time of something that happens to a trial, to the microsecond: the precision the store
/// keeps, so a trial reads the same from memory and from the store.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Where an engine is in its life. The list view's [`EngineStatus`] and the executor's
/// [`ExecutorStatus`] are both read off it, so they can never disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// A step runs (or is about to).
    Running,
    /// Paused at a waiting point, or held before a step by the operator's pause.
    Waiting,
    /// The trial failed; the engine keeps its checkpoint for a restore, a skip or an abort.
    Failed,
    /// The trial ran to its end.
    Finished,
    /// The trial was aborted and its clean-up completed.
    Aborted,
    /// The engine was deleted, or the service is stopping: its tasks are gone.
    Stopped,
}

impl Lifecycle {
    /// The engine status of the list view.
    pub fn engine_status(self) -> EngineStatus {
        match self {
            Lifecycle::Running | Lifecycle::Waiting => EngineStatus::Active,
            Lifecycle::Failed => EngineStatus::Failed,
            Lifecycle::Finished => EngineStatus::Finished,
            Lifecycle::Aborted => EngineStatus::Aborted,
            Lifecycle::Stopped => EngineStatus::Stopped,
        }
    }

    /// The executor status.
    pub fn executor_status(self) -> ExecutorStatus {
        match self {
            Lifecycle::Running => ExecutorStatus::Running,
            Lifecycle::Waiting => ExecutorStatus::Waiting,
            Lifecycle::Failed => ExecutorStatus::Failed,
            Lifecycle::Finished => ExecutorStatus::Finished,
            Lifecycle::Aborted => ExecutorStatus::Aborted,
            Lifecycle::Stopped => ExecutorStatus::Stopped,
        }
    }

    /// Finished or aborted: nothing more will happen to the trial.
    pub fn is_ended(self) -> bool {
        matches!(self, Lifecycle::Finished | Lifecycle::Aborted)
    }

    /// Nothing moves the engine any more: it ended, or was stopped.
    pub fn is_final(self) -> bool {
        self.is_ended() || self == Lifecycle::Stopped
    }

    /// Still takes callbacks and operator signals.
    pub fn is_live(self) -> bool {
        matches!(self, Lifecycle::Running | Lifecycle::Waiting)
    }
}

/// Engine status in the list view (SPEC §3, §14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
pub enum EngineStatus {
    Active,
    Failed,
    Finished,
    Aborted,
    Stopped,
}

impl EngineStatus {
    /// The status as the API and the store write it.
    pub fn name(self) -> &'static str {
        match self {
            EngineStatus::Active => "Active",
            EngineStatus::Failed => "Failed",
            EngineStatus::Finished => "Finished",
            EngineStatus::Aborted => "Aborted",
            EngineStatus::Stopped => "Stopped",
        }
    }
}

/// Executor status (SPEC §3; `Aborted` from §14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub enum ExecutorStatus {
    Stopped,
    Running,
    Waiting,
    Finished,
    Failed,
    Aborted,
}

impl ExecutorStatus {
    /// The status as the API and the store write it.
    pub fn name(self) -> &'static str {
        match self {
            ExecutorStatus::Stopped => "Stopped",
            ExecutorStatus::Running => "Running",
            ExecutorStatus::Waiting => "Waiting",
            ExecutorStatus::Finished => "Finished",
            ExecutorStatus::Failed => "Failed",
            ExecutorStatus::Aborted => "Aborted",
        }
    }
}

/// The last KPI marking sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub enum KpiStatus {
    Idle,
    Active,
    Finished,
}

impl KpiStatus {
    /// The `Marking` value sent to KPI monitoring (also how the API and store name it).
    pub fn marking(self) -> &'static str {
        match self {
            KpiStatus::Idle => "Idle",
            KpiStatus::Active => "Active",
            KpiStatus::Finished => "Finished",
        }
    }

    /// The marking named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        [KpiStatus::Idle, KpiStatus::Active, KpiStatus::Finished]
            .into_iter()
            .find(|k| k.marking() == name)
    }
}

/// Where the executor is: about to run (or running) a step, or paused at a waiting point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    Run(Step),
    Wait(Wait),
}

impl Position {
    /// The `state` field of the status: the step, or `Waiting` at a waiting point.
    pub fn state(self) -> &'static str {
        match self {
            Position::Run(step) => step.name(),
            Position::Wait(_) => "Waiting",
        }
    }
}

/// Which path the executor walks: the trial sequence, or the clean-up path of an abort.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Undoing what the trial deployed (SPEC §14), for this reason.
    Cleanup {
        reason: String,
        /// The first step of this clean-up that failed for good, and why: the clean-up undoes
        /// the rest, then fails there.
        failed: Option<(Step, String)>,
        /// The abort let the slice deployment have its answer: the slice-created callback is
        /// still to come, and the first slice callback is that one.
        creation_due: bool,
    },
}

/// What happened to the trial's network slice.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SliceState {
    /// Never asked for.
    #[default]
    None,
    /// `POST /sliceDeployment` was sent with this `Idempotency-Key` (none in a record of the
    /// first format) and no answer said what became of it: the slice may exist. Sent again
    /// with the same key (after a restore too, which is otherwise a new run), a component that
    /// honours it answers with the slice it made instead of making a second.
    Requested(Option<String>),
    /// Trial enforcement answered with the slice's id.
    Created,
    /// A deployment never answered was followed by its slice-created callback (the clean-up
    /// waited for it): the slice exists, though trial enforcement may not list it yet, so a
    /// close answered 404 has not closed it.
    Announced,
    /// `DELETE /sliceDeployment` was accepted, or may have closed the slice (its answer was
    /// lost, or a slice announced was not listed yet): the slice-closed callback may be due,
    /// and a close run again that finds no slice counts it closed.
    Closing,
    /// The slice is gone.
    Closed,
}

impl SliceState {
    /// The slice may still exist on the facility.
    pub fn may_exist(&self) -> bool {
        matches!(
            self,
            SliceState::Requested(_)
                | SliceState::Created
                | SliceState::Announced
                | SliceState::Closing
        )
    }
}

/// What happened to the trial's measurement job.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum JobState {
    #[default]
    None,
    /// `POST /measurementjobs` was sent with this `Idempotency-Key` and no answer said what
    /// became of it: the job may exist, its id unknown. Sent again with the same key, a
    /// component that honours it answers with that job.
    Requested(String),
    /// Created, with this id.
    Created(String),
    /// Deleted.
    Deleted,
}

/// What the trial has deployed on the facility so far: what an abort has to undo.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ledger {
    pub slice: SliceState,
    pub measurement_job: JobState,
}

/// Something a failed clean-up left deployed (`leftovers` in the status and failure file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Leftover {
    /// What was left: the slice or the measurement job.
    pub kind: LeftoverKind,
    /// Its id on the facility (for a slice or a measurement job whose creation got no answer,
    /// why it is unknown: `unknown: …`).
    pub id: String,
}

impl Leftover {
    /// What a trial whose record cannot be read may have left: a slice and a measurement job,
    /// of unknown ids.
    pub fn unreadable() -> Vec<Leftover> {
        let id = || "unknown: its record cannot be read".to_owned();
        vec![
            Leftover {
                kind: LeftoverKind::Slice,
                id: id(),
            },
            Leftover {
                kind: LeftoverKind::MeasurementJob,
                id: id(),
            },
        ]
    }
}

/// What `left` names, for an answer or a log line: `slice s-1, measurement_job mj-1`.
pub fn named(left: &[Leftover]) -> String {
    let named: Vec<String> = (left.iter())
        .map(|l| format!("{} {}", l.kind.name(), l.id))
        .collect();
    named.join(", ")
}

/// What a delete told to leave them says of `left`.
pub fn left_deployed(left: &[Leftover]) -> String {
    format!(
        "left deployed: {} (close them on the facility by hand)",
        named(left)
    )
}

/// What kind of thing was left deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeftoverKind {
    Slice,
    MeasurementJob,
}

impl LeftoverKind {
    /// Its `kind` in the status and the failure file, and in the log.
    pub fn name(self) -> &'static str {
        match self {
            Self::Slice => "slice",
            Self::MeasurementJob => "measurement_job",
        }
    }
}

impl Serialize for LeftoverKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl utoipa::PartialSchema for LeftoverKind {
    fn schema() -> RefOr<Schema> {
        let kinds = [LeftoverKind::Slice, LeftoverKind::MeasurementJob];
        names_schema("What was left deployed", kinds.map(LeftoverKind::name))
    }
}

impl ToSchema for LeftoverKind {}

/// The schema of a kind written as one of `names`, for the kinds that serialize by their
/// name: the document lists the very strings the API writes.
fn names_schema(description: &str, names: impl IntoIterator<Item = &'static str>) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .enum_values(Some(names))
        .into()
}

impl Ledger {
    /// Whether the trial may still have something deployed on the facility: what
    /// [`Self::leftovers`] would list.
    fn holds_any(&self) -> bool {
        self.slice.may_exist()
            || matches!(
                self.measurement_job,
                JobState::Created(_) | JobState::Requested(_)
            )
    }

    /// What is still deployed, as `leftovers`.
    pub fn leftovers(&self, trial: &str, info: Option<&TrialInfo>) -> Vec<Leftover> {
        let mut leftovers = Vec::new();
        if self.slice.may_exist() {
            // Trial enforcement closes a slice by the trial's id: that much is known.
            let unknown = |sent: String| {
                format!(
                    "unknown: no answer to its deployment{sent} named it; trial enforcement closes it by the trial id, {trial}"
                )
            };
            let id = info
                .and_then(|i| slice_id(&i.deployed_slice))
                .unwrap_or_else(|| match &self.slice {
                    SliceState::Requested(Some(key)) => {
                        unknown(format!(" (Idempotency-Key {key})"))
                    }
                    _ => unknown(String::new()),
                });
            leftovers.push(Leftover {
                kind: LeftoverKind::Slice,
                id,
            });
        }
        let job = match &self.measurement_job {
            JobState::Created(id) => Some(id.clone()),
            JobState::Requested(key) => Some(format!(
                "unknown: no answer to its creation (Idempotency-Key {key}) named it"
            )),
            JobState::None | JobState::Deleted => None,
        };
        if let Some(id) = job {
            leftovers.push(Leftover {
                kind: LeftoverKind::MeasurementJob,
                id,
            });
        }
        leftovers
    }
}

/// The slice id in trial enforcement's answer (`{"Slice": {"id": …}}`).
pub fn slice_id(deployed_slice: &Value) -> Option<String> {
    match deployed_slice.pointer("/Slice/id") {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// Why and how the trial failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: String,
    pub at: DateTime<Utc>,
    /// The failure procedure (repository told, failure file written) is done: a restore,
    /// skip or abort may start.
    pub reported: bool,
    /// The failure happened while cleaning up after an abort; `abort` again retries.
    pub cleanup_failed: bool,
    /// What a failed clean-up left deployed.
    pub leftovers: Vec<Leftover>,
    /// An abort the operator asked for while the failure procedure ran, with its reason: its
    /// clean-up starts once the procedure is done.
    pub abort: Option<String>,
}

/// The trial information gathered by `GetTrialInfo` and completed by later steps. Field names
/// are the wire names of the old service.
#[derive(Debug, Clone, PartialEq, Serialize)]
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

/// What the steps gather and change as the trial runs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TrialData {
    pub token: Option<String>,
    /// Shared: a checkpoint is copied at every step, the trial's information rarely changes.
    pub info: Option<Arc<TrialInfo>>,
    pub kpi_status: Option<KpiStatus>,
    /// The last status this LCM wrote to the trial repository (including `FAILED`).
    pub repository_status: Option<String>,
    pub ledger: Ledger,
    /// When the trial finishes on its own (`executor.max_trial_secs`, the registry's
    /// `end_time`), once known.
    pub deadline: Option<DateTime<Utc>>,
}

/// Everything a new executor needs to carry on from where the last one stopped: what the
/// watchdog keeps and the store saves after every step and at every waiting point. It holds
/// no history, so it does not grow with the trial.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub position: Position,
    pub mode: Mode,
    pub data: TrialData,
    /// Signals accepted so far, with the waiting point each was taken at (for duplicates).
    pub accepted: Vec<(Wait, Signal)>,
    /// Early signals kept for a waiting point not reached yet.
    pub held: Vec<(Wait, Signal)>,
    pub failure: Option<Failure>,
    /// The operator paused the trial: no new request starts until resumed.
    pub paused: bool,
    /// How many times the trial was restored (the run of each step, for idempotency keys).
    pub run: u32,
    /// When the engine was created.
    pub started_at: DateTime<Utc>,
    /// When the trial reached the waiting point it stands at: the wait's deadline counts from
    /// here, across restarts (none at a step, or in a checkpoint written before it was kept).
    pub waiting_since: Option<DateTime<Utc>>,
    /// The last progress a component reported at the waiting point it stands at (SPEC §13):
    /// shown in the status until the wait ends, across restarts.
    pub progress: Option<Progress>,
}

impl Checkpoint {
    /// Moves to `position`; a waiting point's deadline counts from now (a restore at a wait
    /// gives it its whole time again).
    pub fn go_to(&mut self, position: Position) {
        self.position = position;
        self.waiting_since = match position {
            Position::Wait(_) => Some(Utc::now()),
            Position::Run(_) => None,
        };
    }

    /// Fails trial `trial` at this checkpoint for `reason`. The early callbacks of the step
    /// it stands at, which failed or died, go with it: a restore sends the step's request
    /// again and awaits that request's own callback (those of a step that completed stand,
    /// like the operator's early signals). Not so for a slice deployment that may have made
    /// the slice: it goes again under its own key, and a replay brings no new callback, so
    /// the one that came is kept. A failure while cleaning up names what is still deployed.
    pub fn fail(&mut self, trial: &str, reason: String) {
        let replayed = self.position == Position::Run(super::sequence::Step::SliceDeployment)
            && matches!(self.data.ledger.slice, SliceState::Requested(_));
        if let Position::Run(step) = self.position
            && !replayed
        {
            let before = self.held.len();
            self.held.retain(|(wait, _)| {
                let spec = super::sequence::wait_spec(*wait);
                spec.waiter == super::sequence::Waiter::Operator
                    || !spec.early_during.contains(&step)
            });
            if self.held.len() < before {
                tracing::info!(
                    step = step.name(),
                    "an early callback was dropped with the step: a restore awaits a new one"
                );
            }
        }
        let cleanup_failed = matches!(self.mode, Mode::Cleanup { .. });
        let leftovers = if cleanup_failed {
            self.data.ledger.leftovers(trial, self.data.info.as_deref())
        } else {
            Vec::new()
        };
        self.failure = Some(Failure {
            reason,
            at: now(),
            reported: false,
            cleanup_failed,
            leftovers,
            abort: None,
        });
    }

    /// The checkpoint of a new engine, before its first step.
    pub fn new(started_at: DateTime<Utc>) -> Self {
        Self {
            position: Position::Run(super::sequence::FIRST),
            mode: Mode::Normal,
            data: TrialData::default(),
            accepted: Vec::new(),
            held: Vec::new(),
            failure: None,
            paused: false,
            run: 0,
            started_at,
            waiting_since: None,
            progress: None,
        }
    }
}

/// One answer from a service (or its absence), recorded under the step that asked.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ResponseRecord {
    /// The step that sent the request.
    pub step: String,
    /// The service asked: `trial_repository`, `trial_enforcement` or `kpi_monitoring`.
    pub service: String,
    /// The request's HTTP method.
    pub method: String,
    /// The request's path, below the service's base URL.
    pub path: String,
    /// The answer's HTTP status; null when no answer came (the error says why).
    #[schema(required = true)]
    pub status: Option<u16>,
    /// The JSON body, if the answer had one (a token in it is redacted).
    #[schema(required = true)]
    pub body: Option<Value>,
    /// The start of a body that is not JSON, or the transport error.
    #[schema(required = true)]
    pub error: Option<String>,
    /// How long the request took, in milliseconds.
    pub duration_ms: u64,
    /// Which try of the request this was, from 1 (SPEC §13).
    pub attempt: u32,
    /// When the answer (or its absence) was recorded.
    pub at: DateTime<Utc>,
}

/// What happened to a trial, as listed by `/history` and streamed by `/events`. Every field
/// is in every entry, `null` when the event has none, as in the other answers.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TrialEvent {
    /// Position in the trial's history, from 0.
    pub seq: u64,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What happened.
    pub event: EventKind,
    /// The step it happened at, if any.
    #[schema(required = true)]
    pub step: Option<String>,
    /// What the executor waits for, which signal it took, why it failed, or the reason an
    /// operator gave.
    #[schema(required = true)]
    pub detail: Option<String>,
    /// How long the step ran or the wait lasted, in milliseconds.
    #[schema(required = true)]
    pub duration_ms: Option<u64>,
}

macro_rules! event_kinds {
    ($($variant:ident => $name:literal,)*) => {
        /// The kinds of [`TrialEvent`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum EventKind {
            $($variant,)*
        }

        impl EventKind {
            /// Every kind.
            pub const ALL: &[EventKind] = &[$(EventKind::$variant,)*];

            /// The kind as the API, the event stream and the store name it.
            pub fn name(self) -> &'static str {
                match self {
                    $(EventKind::$variant => $name,)*
                }
            }
        }
    };
}

event_kinds! {
    StepStarted => "step_started",
    StepCompleted => "step_completed",
    StepFailed => "step_failed",
    StepRetry => "step_retry",
    Waiting => "waiting",
    SignalAccepted => "signal_accepted",
    Progress => "progress",
    Paused => "paused",
    Resumed => "resumed",
    Stepped => "stepped",
    Skipped => "skipped",
    TrialDeadline => "trial_deadline",
    NoSliceMade => "no_slice_made",
    CloseAskedAgain => "close_asked_again",
    AbortRequested => "abort_requested",
    AbortNotCarriedOut => "abort_not_carried_out",
    CleanupStarted => "cleanup_started",
    CleanupCompleted => "cleanup_completed",
    TrialFinished => "trial_finished",
    TrialFailed => "trial_failed",
    TrialAborted => "trial_aborted",
    Restored => "restored",
    Recovered => "recovered",
}

impl EventKind {
    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.name() == name)
    }

    /// After this event the trial's stream has nothing more to say.
    pub fn ends_trial(self) -> bool {
        matches!(self, EventKind::TrialFinished | EventKind::TrialAborted)
    }
}

impl Serialize for EventKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl utoipa::PartialSchema for EventKind {
    fn schema() -> RefOr<Schema> {
        names_schema(
            "What happened to the trial",
            EventKind::ALL.iter().map(|kind| kind.name()),
        )
    }
}

impl ToSchema for EventKind {}

/// The last progress callback of a component wait (SPEC §13).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Progress {
    pub progress: Option<u8>,
    pub message: Option<String>,
    pub at: DateTime<Utc>,
}

/// What the API sees of an engine, published on a `watch` channel. Small on purpose: the
/// pollers of `/status` and `/trial/{id}/status` read it often; the history and responses
/// live in the journal.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Where the engine was last moved (see [`Snapshot::lifecycle`] for what is shown).
    lifecycle: Lifecycle,
    pub position: Position,
    pub mode: Mode,
    pub kpi_status: Option<KpiStatus>,
    pub failure: Option<Failure>,
    pub paused: bool,
    pub progress: Option<Progress>,
    /// What the engine waits for, where its position does not say it all.
    pub waiting_for: Option<Awaiting>,
    /// Whether the trial may still have something deployed on the facility: its ledger holds
    /// a slice or a measurement job, or a live engine is at the step that makes one (its
    /// request may be in flight).
    pub deployed: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
}

/// What an engine waits for where its position does not say it all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Awaiting {
    /// The operator's pause holds a running step in its middle: its next request waits.
    HeldMidway,
    /// A clean-up that awaits the slice-created callback before the slice-closed one.
    BothSliceCallbacks,
    /// A clean-up after trial enforcement had no slice of a deployment it never answered.
    LateSliceCreation,
}

impl Awaiting {
    /// In words, as the status shows it.
    pub fn text(self) -> &'static str {
        match self {
            Awaiting::HeldMidway => {
                "the operator to resume (paused in the middle of the step: its next request waits)"
            }
            Awaiting::BothSliceCallbacks => {
                "the slice callbacks (slice created, then slice closed)"
            }
            Awaiting::LateSliceCreation => {
                "a late slice callback (slice created): the slice deployment was never answered and trial enforcement has no slice yet; a slice it makes is closed"
            }
        }
    }
}

impl Snapshot {
    /// Where the engine stands, as shown: a running step the operator's pause holds in its
    /// middle waits for resume.
    pub fn lifecycle(&self) -> Lifecycle {
        match self.lifecycle {
            Lifecycle::Running if self.held_midway() => Lifecycle::Waiting,
            lifecycle => lifecycle,
        }
    }

    /// Whether the operator's pause holds the step in its middle (before its next request):
    /// only resume moves it on, not step.
    pub fn held_midway(&self) -> bool {
        self.waiting_for == Some(Awaiting::HeldMidway)
    }

    /// Moves the engine to `lifecycle` at `checkpoint`, `now`: the one place where what a
    /// live engine stands changes. What it waits for beyond its position, `awaiting`, and its
    /// progress are kept only for a wait that goes on.
    pub(super) fn move_to(
        &mut self,
        lifecycle: Lifecycle,
        checkpoint: &Checkpoint,
        awaiting: Option<Awaiting>,
        now: DateTime<Utc>,
    ) {
        let ended_at = if lifecycle.is_ended() {
            Some(now)
        } else {
            self.ended_at
        };
        *self = Snapshot {
            progress: self.progress.take(),
            waiting_for: awaiting,
            ..Snapshot::at(lifecycle, checkpoint, self.created_at, now, ended_at)
        };
    }

    /// Shows the engine stopped for good: nothing moves it any more.
    pub(super) fn stop(&mut self) {
        self.lifecycle = Lifecycle::Stopped;
    }

    /// What the API shows of an engine at `checkpoint`.
    pub fn at(
        lifecycle: Lifecycle,
        checkpoint: &Checkpoint,
        created_at: DateTime<Utc>,
        updated_at: DateTime<Utc>,
        ended_at: Option<DateTime<Utc>>,
    ) -> Self {
        Self {
            lifecycle,
            position: checkpoint.position,
            mode: checkpoint.mode.clone(),
            kpi_status: checkpoint.data.kpi_status,
            failure: checkpoint.failure.clone(),
            paused: checkpoint.paused,
            progress: checkpoint.progress.clone(),
            waiting_for: None,
            // A live engine's saved ledger does not count a request in flight yet.
            deployed: checkpoint.data.ledger.holds_any()
                || (lifecycle.is_live()
                    && matches!(checkpoint.position,
                        Position::Run(step) if super::sequence::DEPLOYING.contains(&step))),
            created_at,
            updated_at,
            ended_at,
        }
    }

    /// The engine status of the list view.
    pub fn engine_status(&self) -> EngineStatus {
        self.lifecycle.engine_status()
    }

    /// Whether the trial is being aborted: its clean-up runs, or an abort asked for while its
    /// failure was reported waits for the report's end.
    pub fn aborting(&self) -> bool {
        self.failure.as_ref().is_some_and(|f| f.abort.is_some())
            || (matches!(self.mode, Mode::Cleanup { .. }) && self.lifecycle.is_live())
    }

    /// Failed, with the failure procedure done and no abort asked for: a restore may start.
    pub fn restorable(&self) -> bool {
        self.lifecycle == Lifecycle::Failed
            && self
                .failure
                .as_ref()
                .is_some_and(|f| f.reported && !f.cleanup_failed && f.abort.is_none())
    }
}
