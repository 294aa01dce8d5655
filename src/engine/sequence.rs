//! The trial sequence (SPEC §4), declared in one place and read top to bottom like the table.
//!
//! [`SEQUENCE`] says what follows each step; [`WAITS`] says which signals leave each waiting
//! point, where they lead, and during which steps such a signal may arrive early (before the
//! request that asked for it has been answered) and be kept. What each step sends is in
//! `steps.rs`; the diagrams in `sequence-diagrams/` show the same steps (a test checks it).

use serde::{Deserialize, Serialize};

/// A step of the executor, named as in the spec and the diagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
}

/// A waiting point: the executor pauses until one of the signals in [`WAITS`] arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Signal {
    SliceCallback,
    CloudVnfBoardingCallback,
    CloudVnfDeploymentCallback,
    EdgeVnfOnboardingCallback,
    EdgeVnfDeploymentCallback,
    Active,
    Finish,
}

/// What comes after a step.
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
pub const SEQUENCE: &[(Step, Then)] = &[
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

/// Every waiting point, in sequence order.
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

/// The first step of every trial.
pub const FIRST: Step = GetCallbackToken;

/// What follows `step`, with the VNF branch resolved.
pub fn after(step: Step, vnf_enabled: bool) -> Then {
    let then = SEQUENCE
        .iter()
        .find(|(s, _)| *s == step)
        .map_or(Then::End, |(_, then)| *then);
    match then {
        Then::Branch { vnf, plain } => Then::Step(if vnf_enabled { vnf } else { plain }),
        other => other,
    }
}

/// The spec of a waiting point.
pub fn wait_spec(wait: Wait) -> &'static WaitSpec {
    WAITS
        .iter()
        .find(|spec| spec.wait == wait)
        .unwrap_or(&WAITS[0])
}

/// The steps a trial walks when every waiting point takes its first exit and no step fails:
/// the happy path (with `active`), used by the diagram test and the documentation.
pub fn happy_path(vnf_enabled: bool) -> Vec<Step> {
    let mut steps = vec![FIRST];
    let mut step = FIRST;
    loop {
        step = match after(step, vnf_enabled) {
            Then::Step(next) => next,
            Then::Wait(wait) => wait_spec(wait).exits[0].1,
            Then::End | Then::Branch { .. } => return steps,
        };
        steps.push(step);
    }
}

impl Step {
    /// The name used in logs, responses and diagrams.
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
        }
    }

    /// The step's number in the table of SPEC §4 (the VNF steps sit between 4 and 5).
    pub fn ordinal(self) -> usize {
        SEQUENCE
            .iter()
            .position(|(s, _)| *s == self)
            .unwrap_or(SEQUENCE.len())
    }
}

impl Signal {
    /// The signal as the API names it.
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

    /// The callback signal for a `/trial/{id}/callback/{kind}` path segment.
    pub fn from_callback_kind(kind: &str) -> Option<Self> {
        Some(match kind {
            "slice" => Signal::SliceCallback,
            "cloudvnfboarding" => Signal::CloudVnfBoardingCallback,
            "cloudvnfdeployment" => Signal::CloudVnfDeploymentCallback,
            "edgevnfonboarding" => Signal::EdgeVnfOnboardingCallback,
            "edgevnfdeployment" => Signal::EdgeVnfDeploymentCallback,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_has_one_row_and_every_wait_one_spec() {
        for (i, (step, _)) in SEQUENCE.iter().enumerate() {
            assert_eq!(step.ordinal(), i, "{step:?} appears twice");
        }
        for (i, spec) in WAITS.iter().enumerate() {
            assert_eq!(
                WAITS.iter().position(|s| s.wait == spec.wait),
                Some(i),
                "{:?}",
                spec.wait
            );
        }
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
