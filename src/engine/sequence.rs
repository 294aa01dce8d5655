//! The trial sequence (SPEC §4) and the clean-up path of an abort (SPEC §14), declared in one
//! place and read top to bottom like the tables.
//!
//! [`SEQUENCE`] says what follows each step; [`WAITS`] says which signals leave each waiting
//! point, where they lead, and during which steps such a signal may arrive early (before the
//! request that asked for it has been answered) and be kept. [`CLEANUP`] is the path an abort
//! walks, each step only when what it undoes exists. What each step sends is in `steps.rs`;
//! the diagrams in `sequence-diagrams/` show the same steps (a test checks it).
//!
//! Every name here (`Step::name`, `Wait::name`, `Signal::name`) is also how the store writes
//! it: renaming a variant changes nothing on disk, renaming a name needs a migration.

use super::state::{
    Checkpoint, JobState, KpiStatus, Ledger, Mode, Position, SliceState, TrialData,
};

/// A step of the executor, named as in the spec and the diagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    GetCallbackToken,
    GetTrialInfo,
    SliceDeployment,
    UpdateDeploymentSlice,
    CloudVnfOnboarding,
    CloudVnfDeployment,
    EdgeVnfOnboarding,
    EdgeVnfDeployment,
    Start5GresourceTesting,
    EnforceUavPlan,
    UpdateUavPlanStatus,
    CreateMeasurementJob,
    SendKpiIdle,
    UpdateStatusIdle,
    SendKpiActive,
    UpdateStatusActive,
    UpdateStatusStopping,
    SendKpiFinish,
    DeleteMeasurementJob,
    CloseService,
    UpdateStatusFinish,
    RemoveCallbackToken,
    Finish,
    /// Clean-up only: `PUT /trial/{id}/` with `executor.aborted_repository_status`.
    UpdateStatusAborted,
}

/// A waiting point: the executor pauses until one of the signals in [`WAITS`] arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Wait {
    SliceCreated,
    CloudVnfBoarded,
    CloudVnfDeployed,
    EdgeVnfBoarded,
    EdgeVnfDeployed,
    Idle,
    Active,
    SliceClosed,
}

/// A signal from outside: a component's callback or an operator's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    SliceCallback,
    CloudVnfBoardingCallback,
    CloudVnfDeploymentCallback,
    EdgeVnfOnboardingCallback,
    EdgeVnfDeploymentCallback,
    Active,
    Finish,
}

/// Where the executor goes next, once the VNF branch is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Step(Step),
    Wait(Wait),
    /// The path is done: the trial finished (or, cleaning up, was aborted).
    End,
}

impl Next {
    /// Where the executor stands to go there; `None` at the end of the path.
    pub fn position(self) -> Option<Position> {
        match self {
            Next::Step(step) => Some(Position::Run(step)),
            Next::Wait(wait) => Some(Position::Wait(wait)),
            Next::End => None,
        }
    }
}

/// What comes after a step, as the table declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    Step(Step),
    Wait(Wait),
    /// The VNF branch when `executor.disable_vnf = false`, else the plain path.
    Branch {
        vnf: Step,
        plain: Step,
    },
    End,
}

use Step::*;

/// Each step and what follows it.
const SEQUENCE: &[(Step, Then)] = &[
    (GetCallbackToken, Then::Step(GetTrialInfo)),
    (GetTrialInfo, Then::Step(SliceDeployment)),
    (SliceDeployment, Then::Wait(Wait::SliceCreated)),
    (
        UpdateDeploymentSlice,
        Then::Branch {
            vnf: CloudVnfOnboarding,
            plain: EnforceUavPlan,
        },
    ),
    (CloudVnfOnboarding, Then::Wait(Wait::CloudVnfBoarded)),
    (CloudVnfDeployment, Then::Wait(Wait::CloudVnfDeployed)),
    (EdgeVnfOnboarding, Then::Wait(Wait::EdgeVnfBoarded)),
    (EdgeVnfDeployment, Then::Wait(Wait::EdgeVnfDeployed)),
    (Start5GresourceTesting, Then::Step(EnforceUavPlan)),
    (EnforceUavPlan, Then::Step(UpdateUavPlanStatus)),
    (UpdateUavPlanStatus, Then::Step(CreateMeasurementJob)),
    (CreateMeasurementJob, Then::Step(SendKpiIdle)),
    (SendKpiIdle, Then::Step(UpdateStatusIdle)),
    (UpdateStatusIdle, Then::Wait(Wait::Idle)),
    (SendKpiActive, Then::Step(UpdateStatusActive)),
    (UpdateStatusActive, Then::Wait(Wait::Active)),
    (UpdateStatusStopping, Then::Step(SendKpiFinish)),
    (SendKpiFinish, Then::Step(DeleteMeasurementJob)),
    (DeleteMeasurementJob, Then::Step(CloseService)),
    (CloseService, Then::Wait(Wait::SliceClosed)),
    (UpdateStatusFinish, Then::Step(RemoveCallbackToken)),
    (RemoveCallbackToken, Then::Step(Finish)),
    (Finish, Then::End),
];

/// Who ends a waiting point, which decides its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiter {
    /// A component's callback: `executor.callback_timeout_secs`.
    Component,
    /// The operator: `executor.operator_timeout_secs`, none by default.
    Operator,
}

/// A waiting point's exits.
#[derive(Debug)]
pub struct WaitSpec {
    pub wait: Wait,
    pub waiter: Waiter,
    /// What the executor is waiting for, in words (status, logs, timeout reasons).
    pub waiting_for: &'static str,
    /// Each accepted signal and the step it leads to.
    pub exits: &'static [(Signal, Step)],
    /// Steps during which such a signal may arrive early; it is kept and applied as soon as
    /// the step completes.
    pub early_during: &'static [Step],
}

/// Every waiting point, in the order of [`Wait`]'s variants (a test checks it).
pub const WAITS: &[WaitSpec] = &[
    WaitSpec {
        wait: Wait::SliceCreated,
        waiter: Waiter::Component,
        waiting_for: "the slice callback (slice created)",
        exits: &[(Signal::SliceCallback, UpdateDeploymentSlice)],
        early_during: &[SliceDeployment],
    },
    WaitSpec {
        wait: Wait::CloudVnfBoarded,
        waiter: Waiter::Component,
        waiting_for: "the cloudvnfboarding callback",
        exits: &[(Signal::CloudVnfBoardingCallback, CloudVnfDeployment)],
        early_during: &[CloudVnfOnboarding],
    },
    WaitSpec {
        wait: Wait::CloudVnfDeployed,
        waiter: Waiter::Component,
        waiting_for: "the cloudvnfdeployment callback",
        exits: &[(Signal::CloudVnfDeploymentCallback, EdgeVnfOnboarding)],
        early_during: &[CloudVnfDeployment],
    },
    WaitSpec {
        wait: Wait::EdgeVnfBoarded,
        waiter: Waiter::Component,
        waiting_for: "the edgevnfonboarding callback",
        exits: &[(Signal::EdgeVnfOnboardingCallback, EdgeVnfDeployment)],
        early_during: &[EdgeVnfOnboarding],
    },
    WaitSpec {
        wait: Wait::EdgeVnfDeployed,
        waiter: Waiter::Component,
        waiting_for: "the edgevnfdeployment callback",
        exits: &[(Signal::EdgeVnfDeploymentCallback, Start5GresourceTesting)],
        early_during: &[EdgeVnfDeployment],
    },
    WaitSpec {
        wait: Wait::Idle,
        waiter: Waiter::Operator,
        waiting_for: "the operator (active or finish)",
        exits: &[
            (Signal::Active, SendKpiActive),
            (Signal::Finish, UpdateStatusStopping),
        ],
        early_during: &[],
    },
    WaitSpec {
        wait: Wait::Active,
        waiter: Waiter::Operator,
        waiting_for: "the operator (finish)",
        exits: &[(Signal::Finish, UpdateStatusStopping)],
        early_during: &[SendKpiActive, UpdateStatusActive],
    },
    WaitSpec {
        wait: Wait::SliceClosed,
        waiter: Waiter::Component,
        waiting_for: "the slice callback (slice closed)",
        exits: &[(Signal::SliceCallback, UpdateStatusFinish)],
        early_during: &[CloseService],
    },
];

/// What an abort's clean-up step undoes; the step runs only if that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undoes {
    /// KPIs marked `Idle` or `Active` and not yet `Finished`.
    KpiMarking,
    /// A measurement job whose id is known.
    MeasurementJob,
    /// A slice that may exist (its deployment was sent and it was not closed).
    Slice,
    /// Nothing: the step always runs (the repository status, the token).
    Always,
}

/// The clean-up path of an abort (SPEC §14), in order. `CloseService` then waits for the
/// slice-closed callback (unless trial enforcement answered 404: the slice is gone already).
/// The engine ends `Aborted` after the last step.
pub const CLEANUP: &[(Step, Undoes)] = &[
    (SendKpiFinish, Undoes::KpiMarking),
    (DeleteMeasurementJob, Undoes::MeasurementJob),
    (CloseService, Undoes::Slice),
    (UpdateStatusAborted, Undoes::Always),
    (RemoveCallbackToken, Undoes::Always),
];

/// Steps whose output later steps need, with what that output is: a failed one cannot be
/// skipped (SPEC §14).
const NOT_SKIPPABLE: &[(Step, &str)] = &[
    (GetCallbackToken, "the trial's callback token"),
    (GetTrialInfo, "the trial information (facility, KPIs, name)"),
    (SliceDeployment, "the deployed slice and its id"),
    (CreateMeasurementJob, "the measurement job and its id"),
];

/// The first step of every trial.
pub const FIRST: Step = GetCallbackToken;

/// What follows `step` on the trial sequence, with the VNF branch resolved; `None` for a step
/// that is not on it (a clean-up-only step).
pub fn after(step: Step, vnf_enabled: bool) -> Option<Next> {
    let (_, then) = SEQUENCE.iter().find(|(s, _)| *s == step)?;
    Some(match *then {
        Then::Step(next) => Next::Step(next),
        Then::Wait(wait) => Next::Wait(wait),
        Then::Branch { vnf, plain } => Next::Step(if vnf_enabled { vnf } else { plain }),
        Then::End => Next::End,
    })
}

/// The step that leads into the operator's waiting point `wait`: the one that writes the
/// status the repository shows while the trial waits there (`IDLE`, `ACTIVE`). A restore at
/// that wait, once the repository was told `FAILED`, runs it again, so that the repository
/// shows the trial waiting again. `None` for a component's wait.
pub fn announced_by(wait: Wait) -> Option<Step> {
    if wait_spec(wait).waiter != Waiter::Operator {
        return None;
    }
    SEQUENCE
        .iter()
        .find(|(_, then)| matches!(then, Then::Wait(w) if *w == wait))
        .map(|(step, _)| *step)
}

/// The status `step` writes to the trial repository, for a step of the sequence that writes
/// one (`UpdateStatusAborted` writes the configured one of the clean-up).
pub fn status_written(step: Step) -> Option<&'static str> {
    match step {
        UpdateDeploymentSlice => Some("ACTIVATING_1"),
        UpdateUavPlanStatus => Some("ACTIVATING_2"),
        UpdateStatusIdle => Some("IDLE"),
        UpdateStatusActive => Some("ACTIVE"),
        UpdateStatusStopping => Some("STOPPING"),
        UpdateStatusFinish => Some("FINISHED"),
        GetCallbackToken
        | GetTrialInfo
        | SliceDeployment
        | CloudVnfOnboarding
        | CloudVnfDeployment
        | EdgeVnfOnboarding
        | EdgeVnfDeployment
        | Start5GresourceTesting
        | EnforceUavPlan
        | CreateMeasurementJob
        | SendKpiIdle
        | SendKpiActive
        | SendKpiFinish
        | DeleteMeasurementJob
        | CloseService
        | RemoveCallbackToken
        | Finish
        | UpdateStatusAborted => None,
    }
}

/// The status step to run again before a trial restored at `position` goes on, once the
/// repository was told `FAILED`: the last status step before `position`, when a component's
/// wait comes before the next one (in the VNF branch, and from `SendKpiFinish` to the
/// slice-closed wait). Else the repository would show `FAILED` while the trial waits for a
/// component. `None` where a status step comes first, before the trial's first status, and at
/// the operator's waits (see [`announced_by`]).
pub fn status_again_before(position: Position, vnf_enabled: bool) -> Option<Step> {
    let path = main_path(vnf_enabled);
    let at = path.iter().position(|p| *p == position)?;
    let waits_first = path[at..]
        .iter()
        .find_map(|p| match p {
            Position::Run(step) => status_written(*step).map(|_| false),
            Position::Wait(wait) => Some(wait_spec(*wait).waiter == Waiter::Component),
        })
        .unwrap_or(false);
    if !waits_first {
        return None;
    }
    path[..at].iter().rev().find_map(|p| match p {
        Position::Run(step) => status_written(*step).map(|_| *step),
        Position::Wait(_) => None,
    })
}

/// Every position of the trial sequence in order, each waiting point left by its first exit.
fn main_path(vnf_enabled: bool) -> Vec<Position> {
    let mut path = Vec::new();
    let mut next = Some(Next::Step(FIRST));
    while let Some(position) = next.and_then(Next::position) {
        path.push(position);
        next = match position {
            Position::Run(step) => after(step, vnf_enabled),
            Position::Wait(wait) => Some(Next::Step(wait_spec(wait).exits[0].1)),
        };
    }
    path
}

/// The spec of a waiting point.
pub fn wait_spec(wait: Wait) -> &'static WaitSpec {
    // WAITS lists every waiting point in the order of the enum (checked by a test).
    &WAITS[wait as usize]
}

/// Whether a clean-up step's work exists, given what the trial did.
pub fn needed(undoes: Undoes, kpi_status: Option<KpiStatus>, ledger: &Ledger) -> bool {
    match undoes {
        Undoes::KpiMarking => matches!(kpi_status, Some(KpiStatus::Idle | KpiStatus::Active)),
        Undoes::MeasurementJob => matches!(
            ledger.measurement_job,
            JobState::Created(_) | JobState::Requested(_)
        ),
        Undoes::Slice => ledger.slice.may_exist(),
        Undoes::Always => true,
    }
}

/// Where the trial's own path goes after `step`, given what the trial has deployed: as
/// [`after`], except past a wait whose callback can no longer come because what it announces
/// is known done already. A close run again that found the slice gone (a 404) waits for no
/// slice-closed callback (the first close's was sent while the trial had failed, or lost).
pub fn after_deployed(step: Step, vnf_enabled: bool, ledger: &Ledger) -> Option<Next> {
    match after(step, vnf_enabled)? {
        Next::Wait(Wait::SliceClosed) if ledger.slice == SliceState::Closed => {
            Some(Next::Step(wait_spec(Wait::SliceClosed).exits[0].1))
        }
        next => Some(next),
    }
}

/// Whether a clean-up can stand at `position`: at one of its steps, or waiting for the slice
/// it closes (or for one a deployment never answered may make).
pub fn in_cleanup(position: Position) -> bool {
    match position {
        Position::Run(step) => CLEANUP.iter().any(|(undo, _)| *undo == step),
        Position::Wait(wait) => matches!(wait, Wait::SliceClosed | Wait::SliceCreated),
    }
}

/// What the clean-up does first: the first step whose work exists.
pub fn cleanup_first(kpi_status: Option<KpiStatus>, ledger: &Ledger) -> Next {
    cleanup_from(0, kpi_status, ledger)
}

/// What the clean-up does after `done`: the slice-closed wait after a `CloseService` that left
/// the slice closing, the slice-created wait after one that found no slice of a deployment
/// never answered (it may make one yet), `CloseService` again once that slice is announced by
/// its callback, else the next step whose work exists. A slice that was closing already is
/// closed again (the component may have lost the request; a 404 counts as done), so the
/// clean-up never waits on a callback nobody will send. None if `done` is not a clean-up step.
pub fn cleanup_after(done: Step, kpi_status: Option<KpiStatus>, ledger: &Ledger) -> Option<Next> {
    match (done, &ledger.slice) {
        (CloseService, SliceState::Closing) => return Some(Next::Wait(Wait::SliceClosed)),
        (CloseService, SliceState::Requested(_)) => return Some(Next::Wait(Wait::SliceCreated)),
        (CloseService, SliceState::Announced) => return Some(Next::Step(CloseService)),
        _ => {}
    }
    let at = CLEANUP.iter().position(|(step, _)| *step == done)?;
    Some(cleanup_from(at + 1, kpi_status, ledger))
}

/// The first clean-up step from `CLEANUP[from]` on whose work exists; the end if none.
fn cleanup_from(from: usize, kpi_status: Option<KpiStatus>, ledger: &Ledger) -> Next {
    CLEANUP[from..]
        .iter()
        .find(|(_, undoes)| needed(*undoes, kpi_status, ledger))
        .map_or(Next::End, |(step, _)| Next::Step(*step))
}

/// The clean-up step to go on with after `failed` failed for good: the next one that undoes
/// something still deployed. A step that fails does not keep the later ones from undoing what
/// they can (KPI monitoring down must not leave the slice on the facility); the repository
/// status and the token are left for a clean-up that undid everything.
pub fn undo_after_failure(
    failed: Step,
    kpi_status: Option<KpiStatus>,
    ledger: &Ledger,
) -> Option<Step> {
    let from = CLEANUP.iter().position(|(step, _)| *step == failed)? + 1;
    CLEANUP[from..]
        .iter()
        .find(|(_, undoes)| *undoes != Undoes::Always && needed(*undoes, kpi_status, ledger))
        .map(|(step, _)| *step)
}

/// Turns `checkpoint` to the clean-up path of an abort for `reason` (a clean-up that failed
/// keeps its first reason): what the trial deployed is its ledger, the pause is lifted, and
/// the position is the first clean-up step whose work exists. The path always ends with the
/// repository status and the token, so there is always a first step.
pub fn start_cleanup(checkpoint: &mut Checkpoint, reason: &str) {
    match &mut checkpoint.mode {
        Mode::Cleanup { failed, .. } => *failed = None,
        Mode::Normal => {
            // Aborted as the slice deployment was answered (an abort waits for that answer):
            // the slice-created callback has not come yet.
            let creation_due = checkpoint.position == Position::Run(SliceDeployment)
                && checkpoint.data.ledger.slice == SliceState::Created;
            checkpoint.mode = Mode::Cleanup {
                reason: reason.to_owned(),
                failed: None,
                creation_due,
            };
        }
    }
    checkpoint.paused = false;
    let data = &checkpoint.data;
    let first = cleanup_first(data.kpi_status, &data.ledger)
        .position()
        .unwrap_or(Position::Run(UpdateStatusAborted));
    checkpoint.go_to(first);
}

/// The steps that deploy something on the facility (a slice, a measurement job): while one
/// runs, its request may be in flight, and a saved ledger does not count what it makes until
/// [`count_in_flight`] does.
pub const DEPLOYING: [Step; 2] = [SliceDeployment, CreateMeasurementJob];

/// Counts what a trial read back from its saved record may have deployed at the step it
/// stood at: a slice deployment or a measurement job's creation (sent with the key
/// `first_key` gives for its step) or a KPI marking that opens (Idle, Active) that was sent
/// before the record was saved may have made what it asked for even though its answer never
/// came. (A running executor's own data is exact: the step counts it just before the request
/// leaves.)
pub fn count_in_flight(
    position: Position,
    data: &mut TrialData,
    first_key: impl FnOnce(Step) -> String,
) {
    let ledger = &mut data.ledger;
    match position {
        Position::Run(SliceDeployment) if ledger.slice == SliceState::None => {
            ledger.slice = SliceState::Requested(Some(first_key(SliceDeployment)));
        }
        Position::Run(CreateMeasurementJob) if ledger.measurement_job == JobState::None => {
            ledger.measurement_job = JobState::Requested(first_key(CreateMeasurementJob));
        }
        Position::Run(SendKpiIdle) if data.kpi_status.is_none() => {
            data.kpi_status = Some(KpiStatus::Idle);
        }
        Position::Run(SendKpiActive) if data.kpi_status != Some(KpiStatus::Idle) => {
            data.kpi_status = Some(KpiStatus::Active);
        }
        _ => {}
    }
}

/// Why a failed step cannot be skipped, if it cannot.
pub fn skip_refusal(step: Step) -> Option<String> {
    NOT_SKIPPABLE
        .iter()
        .find(|(s, _)| *s == step)
        .map(|(s, what)| {
            format!(
                "{} cannot be skipped: later steps need {what}; restore the trial instead",
                s.name()
            )
        })
}

/// The steps a trial walks when every waiting point takes its first exit and no step fails:
/// the happy path (with `active`), used by the diagram test and the documentation.
pub fn happy_path(vnf_enabled: bool) -> Vec<Step> {
    let mut steps = vec![FIRST];
    let mut step = FIRST;
    loop {
        step = match after(step, vnf_enabled) {
            Some(Next::Step(next)) => next,
            Some(Next::Wait(wait)) => wait_spec(wait).exits[0].1,
            Some(Next::End) | None => return steps,
        };
        steps.push(step);
    }
}

/// The clean-up steps an abort walks when the trial has deployed everything and is marked
/// active, as the diagram draws them.
pub fn full_cleanup() -> Vec<Step> {
    CLEANUP.iter().map(|(step, _)| *step).collect()
}

impl Step {
    /// Every step, in the order of the enum.
    pub const ALL: [Step; 24] = [
        GetCallbackToken,
        GetTrialInfo,
        SliceDeployment,
        UpdateDeploymentSlice,
        CloudVnfOnboarding,
        CloudVnfDeployment,
        EdgeVnfOnboarding,
        EdgeVnfDeployment,
        Start5GresourceTesting,
        EnforceUavPlan,
        UpdateUavPlanStatus,
        CreateMeasurementJob,
        SendKpiIdle,
        UpdateStatusIdle,
        SendKpiActive,
        UpdateStatusActive,
        UpdateStatusStopping,
        SendKpiFinish,
        DeleteMeasurementJob,
        CloseService,
        UpdateStatusFinish,
        RemoveCallbackToken,
        Finish,
        UpdateStatusAborted,
    ];

    /// The step named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The name used in logs, responses, diagrams and the store.
    pub fn name(self) -> &'static str {
        match self {
            GetCallbackToken => "GetCallbackToken",
            GetTrialInfo => "GetTrialInfo",
            SliceDeployment => "SliceDeployment",
            UpdateDeploymentSlice => "UpdateDeploymentSlice",
            CloudVnfOnboarding => "CloudVnfOnboarding",
            CloudVnfDeployment => "CloudVnfDeployment",
            EdgeVnfOnboarding => "EdgeVnfOnboarding",
            EdgeVnfDeployment => "EdgeVnfDeployment",
            Start5GresourceTesting => "Start5GresourceTesting",
            EnforceUavPlan => "EnforceUavPlan",
            UpdateUavPlanStatus => "UpdateUavPlanStatus",
            CreateMeasurementJob => "CreateMeasurementJob",
            SendKpiIdle => "SendKpiIdle",
            UpdateStatusIdle => "UpdateStatusIdle",
            SendKpiActive => "SendKpiActive",
            UpdateStatusActive => "UpdateStatusActive",
            UpdateStatusStopping => "UpdateStatusStopping",
            SendKpiFinish => "SendKpiFinish",
            DeleteMeasurementJob => "DeleteMeasurementJob",
            CloseService => "CloseService",
            UpdateStatusFinish => "UpdateStatusFinish",
            RemoveCallbackToken => "RemoveCallbackToken",
            Finish => "Finish",
            UpdateStatusAborted => "UpdateStatusAborted",
        }
    }
}

impl Wait {
    /// Every waiting point, in the order of the enum.
    pub const ALL: [Wait; 8] = [
        Wait::SliceCreated,
        Wait::CloudVnfBoarded,
        Wait::CloudVnfDeployed,
        Wait::EdgeVnfBoarded,
        Wait::EdgeVnfDeployed,
        Wait::Idle,
        Wait::Active,
        Wait::SliceClosed,
    ];

    /// The name the store writes.
    pub fn name(self) -> &'static str {
        match self {
            Wait::SliceCreated => "SliceCreated",
            Wait::CloudVnfBoarded => "CloudVnfBoarded",
            Wait::CloudVnfDeployed => "CloudVnfDeployed",
            Wait::EdgeVnfBoarded => "EdgeVnfBoarded",
            Wait::EdgeVnfDeployed => "EdgeVnfDeployed",
            Wait::Idle => "Idle",
            Wait::Active => "Active",
            Wait::SliceClosed => "SliceClosed",
        }
    }

    /// The waiting point named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|w| w.name() == name)
    }
}

impl Signal {
    /// Every signal.
    pub const ALL: [Signal; 7] = [
        Signal::SliceCallback,
        Signal::CloudVnfBoardingCallback,
        Signal::CloudVnfDeploymentCallback,
        Signal::EdgeVnfOnboardingCallback,
        Signal::EdgeVnfDeploymentCallback,
        Signal::Active,
        Signal::Finish,
    ];

    /// The signal named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The signal as the API, the metrics and the store name it.
    pub fn name(self) -> &'static str {
        match self {
            Signal::SliceCallback => "slice callback",
            Signal::CloudVnfBoardingCallback => "cloudvnfboarding callback",
            Signal::CloudVnfDeploymentCallback => "cloudvnfdeployment callback",
            Signal::EdgeVnfOnboardingCallback => "edgevnfonboarding callback",
            Signal::EdgeVnfDeploymentCallback => "edgevnfdeployment callback",
            Signal::Active => "active",
            Signal::Finish => "finish",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_has_one_row_and_every_wait_one_spec() {
        for step in Step::ALL {
            let rows = SEQUENCE.iter().filter(|(s, _)| *s == step).count()
                + CLEANUP.iter().filter(|(s, _)| *s == step).count();
            assert!(rows >= 1, "{step:?} is on no path");
            assert!(
                SEQUENCE.iter().filter(|(s, _)| *s == step).count() <= 1,
                "{step:?} appears twice"
            );
            assert_eq!(Step::parse(step.name()), Some(step));
        }
        assert_eq!(WAITS.len(), Wait::ALL.len());
        for wait in Wait::ALL {
            assert_eq!(wait_spec(wait).wait, wait, "WAITS is in enum order");
            assert_eq!(Wait::parse(wait.name()), Some(wait));
        }
        for signal in Signal::ALL {
            assert_eq!(Signal::parse(signal.name()), Some(signal));
        }
    }

    #[test]
    fn names_on_disk_do_not_change() {
        // The store writes these names; changing one breaks every database written before.
        assert_eq!(Step::UpdateDeploymentSlice.name(), "UpdateDeploymentSlice");
        assert_eq!(Wait::SliceClosed.name(), "SliceClosed");
        assert_eq!(Signal::SliceCallback.name(), "slice callback");
    }

    #[test]
    fn a_close_that_found_the_slice_gone_awaits_no_callback() {
        let ledger = |slice| Ledger {
            slice,
            ..Ledger::default()
        };
        assert_eq!(
            after_deployed(CloseService, false, &ledger(SliceState::Closing)),
            Some(Next::Wait(Wait::SliceClosed))
        );
        assert_eq!(
            after_deployed(CloseService, false, &ledger(SliceState::Closed)),
            Some(Next::Step(UpdateStatusFinish))
        );
    }

    #[test]
    fn the_operator_s_waits_are_announced_by_a_status_step() {
        assert_eq!(announced_by(Wait::Idle), Some(UpdateStatusIdle));
        assert_eq!(announced_by(Wait::Active), Some(UpdateStatusActive));
        for wait in [Wait::SliceCreated, Wait::CloudVnfBoarded, Wait::SliceClosed] {
            assert_eq!(announced_by(wait), None, "{wait:?}");
        }
    }

    #[test]
    fn a_restore_writes_the_status_again_where_a_component_s_wait_comes_before_the_next() {
        let run = Position::Run;
        let wait = Position::Wait;
        for (position, vnf, again) in [
            (
                wait(Wait::CloudVnfDeployed),
                true,
                Some(UpdateDeploymentSlice),
            ),
            (run(CloudVnfOnboarding), true, Some(UpdateDeploymentSlice)),
            (run(EdgeVnfDeployment), true, Some(UpdateDeploymentSlice)),
            (run(Start5GresourceTesting), true, None),
            (run(EnforceUavPlan), false, None),
            (run(SendKpiFinish), false, Some(UpdateStatusStopping)),
            (wait(Wait::SliceClosed), true, Some(UpdateStatusStopping)),
            (run(RemoveCallbackToken), false, None),
            (run(SliceDeployment), false, None),
            (wait(Wait::SliceCreated), false, None),
            (wait(Wait::Idle), false, None),
            (run(UpdateDeploymentSlice), true, None),
            (run(CloudVnfOnboarding), false, None),
        ] {
            assert_eq!(
                status_again_before(position, vnf),
                again,
                "{position:?} (vnf {vnf})"
            );
        }
    }

    #[test]
    fn the_cleanup_undoes_only_what_exists() {
        let nothing = Ledger::default();
        assert_eq!(
            cleanup_first(None, &nothing),
            Next::Step(UpdateStatusAborted)
        );
        let everything = Ledger {
            slice: SliceState::Created,
            measurement_job: JobState::Created("mj".into()),
        };
        let mut walked = Vec::new();
        let mut ledger = everything.clone();
        let mut next = cleanup_first(Some(KpiStatus::Active), &ledger);
        while let Next::Step(step) = next {
            walked.push(step);
            if step == CloseService {
                ledger.slice = SliceState::Closing;
                assert_eq!(
                    cleanup_after(step, None, &ledger),
                    Some(Next::Wait(Wait::SliceClosed))
                );
                ledger.slice = SliceState::Closed;
            }
            next = cleanup_after(step, Some(KpiStatus::Active), &ledger).expect("a clean-up step");
        }
        assert_eq!(walked, full_cleanup());
        let in_flight = |step: Step| {
            let mut data = TrialData::default();
            count_in_flight(Position::Run(step), &mut data, |step| {
                format!("t-1-{}-r0-1", step.name())
            });
            data
        };
        let slice = in_flight(SliceDeployment);
        assert_eq!(
            cleanup_first(None, &slice.ledger),
            Next::Step(CloseService),
            "a slice deployment in flight may have created the slice"
        );
        assert_eq!(
            slice.ledger.slice,
            SliceState::Requested(Some("t-1-SliceDeployment-r0-1".into()))
        );
        assert_eq!(
            cleanup_after(CloseService, None, &slice.ledger),
            Some(Next::Wait(Wait::SliceCreated)),
            "a close that found no slice of a deployment never answered waits for it to come"
        );
        let announced = Ledger {
            slice: SliceState::Announced,
            ..slice.ledger.clone()
        };
        assert_eq!(
            cleanup_after(CloseService, None, &announced),
            Some(Next::Step(CloseService)),
            "the slice its callback announced is closed next"
        );
        let job = in_flight(CreateMeasurementJob);
        assert_eq!(
            job.ledger.measurement_job,
            JobState::Requested("t-1-CreateMeasurementJob-r0-1".into())
        );
        assert_eq!(
            cleanup_first(None, &job.ledger),
            Next::Step(DeleteMeasurementJob),
            "a measurement job's creation in flight may have made it"
        );
        for step in [SendKpiIdle, SendKpiActive] {
            let marking = in_flight(step);
            assert_eq!(
                cleanup_first(marking.kpi_status, &marking.ledger),
                Next::Step(SendKpiFinish),
                "{step:?} in flight may have opened a marking"
            );
        }
        assert_eq!(in_flight(UpdateStatusActive), TrialData::default());
        let closing = Ledger {
            slice: SliceState::Closing,
            ..Ledger::default()
        };
        assert_eq!(
            cleanup_first(None, &closing),
            Next::Step(CloseService),
            "a slice already closing is closed again"
        );
        assert_eq!(
            cleanup_after(SliceDeployment, None, &everything),
            None,
            "a step of the trial sequence is not one of the clean-up's"
        );
    }

    #[test]
    fn a_failed_clean_up_step_lets_the_rest_undo_what_is_left() {
        let everything = Ledger {
            slice: SliceState::Created,
            measurement_job: JobState::Created("mj".into()),
        };
        let marked = Some(KpiStatus::Idle);
        assert_eq!(
            undo_after_failure(SendKpiFinish, marked, &everything),
            Some(DeleteMeasurementJob)
        );
        let job_gone = Ledger {
            measurement_job: JobState::Deleted,
            ..everything.clone()
        };
        assert_eq!(
            undo_after_failure(SendKpiFinish, marked, &job_gone),
            Some(CloseService)
        );
        // Nothing more to undo: the repository status and the token wait for a clean-up
        // that undid everything.
        assert_eq!(undo_after_failure(CloseService, marked, &everything), None);
        assert_eq!(
            undo_after_failure(UpdateStatusAborted, None, &everything),
            None
        );
    }

    #[test]
    fn happy_paths_follow_the_spec_table() {
        let plain: Vec<&str> = happy_path(false).into_iter().map(Step::name).collect();
        assert_eq!(
            plain,
            [
                "GetCallbackToken",
                "GetTrialInfo",
                "SliceDeployment",
                "UpdateDeploymentSlice",
                "EnforceUavPlan",
                "UpdateUavPlanStatus",
                "CreateMeasurementJob",
                "SendKpiIdle",
                "UpdateStatusIdle",
                "SendKpiActive",
                "UpdateStatusActive",
                "UpdateStatusStopping",
                "SendKpiFinish",
                "DeleteMeasurementJob",
                "CloseService",
                "UpdateStatusFinish",
                "RemoveCallbackToken",
                "Finish",
            ]
        );
        let vnf = happy_path(true);
        assert_eq!(vnf.len(), plain.len() + 5);
        assert_eq!(vnf[4], CloudVnfOnboarding);
        assert_eq!(vnf[8], Start5GresourceTesting);
        assert_eq!(vnf[9], EnforceUavPlan);
    }
}
