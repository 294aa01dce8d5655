//! The engine records of schema version 1, read once to migrate them (version 2). Version 1
//! saved each engine as the serde form of the in-memory backup, every response and event
//! inside it; the shapes below are frozen copies of that form, so the types of today's engine
//! can change freely.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use super::TrialRecord;
use crate::domain::TrialId;
use crate::engine::sequence::{self, Signal, Step, Wait};
use crate::engine::state::{
    Checkpoint, EventKind, Failure, JobState, KpiStatus, Ledger, Lifecycle, Mode, Position,
    ResponseRecord, SliceState, TrialData, TrialEvent, TrialInfo, slice_id,
};

#[derive(Deserialize)]
enum V1Position {
    Run(String),
    Wait(String),
}

#[derive(Deserialize)]
#[allow(non_snake_case)]
struct V1Info {
    trialID: String,
    facility: String,
    kpis: Value,
    name: Value,
    target: String,
    DeployedSlice: Value,
    MeasurementJob: Value,
}

#[derive(Deserialize)]
struct V1Response {
    step: String,
    service: String,
    method: String,
    path: String,
    status: Option<u16>,
    body: Option<Value>,
    error: Option<String>,
    duration_ms: u64,
    at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct V1Event {
    at: DateTime<Utc>,
    event: String,
    step: Option<String>,
    detail: Option<String>,
    duration_ms: Option<u64>,
}

#[derive(Deserialize)]
struct V1Data {
    token: Option<String>,
    info: Option<V1Info>,
    kpi_status: Option<String>,
    #[serde(default)]
    repository_status: Option<String>,
    /// Read one by one: an entry that cannot be read is left out, not the whole trial.
    #[serde(default)]
    responses: Vec<Value>,
    #[serde(default)]
    history: Vec<Value>,
}

/// The entries of a version-1 list that can be read as `T`; each other one is left out with
/// a warning naming the trial `id` and `what` it was.
fn readable<T: serde::de::DeserializeOwned>(id: &str, what: &str, entries: Vec<Value>) -> Vec<T> {
    entries
        .into_iter()
        .filter_map(|entry| {
            serde_json::from_value(entry)
                .inspect_err(|e| {
                    tracing::warn!(trial = %id, error = %e, "an unreadable version-1 {what} is left out");
                })
                .ok()
        })
        .collect()
}

#[derive(Deserialize)]
struct V1Backup {
    position: V1Position,
    data: V1Data,
    #[serde(default)]
    accepted: Vec<(String, String)>,
    #[serde(default)]
    held: Vec<(String, String)>,
    failure: Option<String>,
}

/// A version-1 engine as records of today.
pub struct Converted {
    pub record: TrialRecord,
    pub events: Vec<TrialEvent>,
    pub responses: Vec<ResponseRecord>,
}

/// Version 1 named signals by their Rust variant.
fn v1_signal(name: &str) -> Result<Signal, String> {
    Ok(match name {
        "SliceCallback" => Signal::SliceCallback,
        "CloudVnfBoardingCallback" => Signal::CloudVnfBoardingCallback,
        "CloudVnfDeploymentCallback" => Signal::CloudVnfDeploymentCallback,
        "EdgeVnfOnboardingCallback" => Signal::EdgeVnfOnboardingCallback,
        "EdgeVnfDeploymentCallback" => Signal::EdgeVnfDeploymentCallback,
        "Active" => Signal::Active,
        "Finish" => Signal::Finish,
        other => return Err(format!("unknown signal '{other}'")),
    })
}

fn v1_signals(list: Vec<(String, String)>) -> Result<Vec<(Wait, Signal)>, String> {
    list.into_iter()
        .map(|(w, s)| {
            let wait = Wait::parse(&w).ok_or_else(|| format!("unknown waiting point '{w}'"))?;
            Ok((wait, v1_signal(&s)?))
        })
        .collect()
}

/// How far along the happy path a position is, to tell what the trial has undone already.
fn progress(position: Position) -> usize {
    let steps = sequence::happy_path(true);
    let step = match position {
        Position::Run(step) => step,
        // A waiting point sits just before the step its first exit leads to.
        Position::Wait(wait) => sequence::wait_spec(wait).exits[0].1,
    };
    steps.iter().position(|s| *s == step).unwrap_or(steps.len())
}

fn passed(position: Position, step: Step) -> bool {
    progress(position) > progress(Position::Run(step))
}

/// Converts one version-1 engine row. `status` is its saved engine status.
pub fn convert(
    id: &str,
    status: &str,
    backup: &str,
    updated_at: &str,
) -> Result<Converted, String> {
    let id = TrialId::parse(id).map_err(|e| e.to_string())?;
    let backup: V1Backup =
        serde_json::from_str(backup).map_err(|e| format!("unreadable version-1 record: {e}"))?;
    let updated_at = super::codec::parse_time(updated_at)?;
    let position = match backup.position {
        V1Position::Run(s) => {
            Position::Run(Step::parse(&s).ok_or_else(|| format!("unknown step '{s}'"))?)
        }
        V1Position::Wait(w) => {
            Position::Wait(Wait::parse(&w).ok_or_else(|| format!("unknown waiting point '{w}'"))?)
        }
    };
    let lifecycle = match status {
        "Active" => match position {
            Position::Run(_) => Lifecycle::Running,
            Position::Wait(_) => Lifecycle::Waiting,
        },
        "Failed" => Lifecycle::Failed,
        "Finished" => Lifecycle::Finished,
        other => return Err(format!("engine status '{other}' is not migrated")),
    };
    let data = backup.data;
    let info = data.info.map(|i| TrialInfo {
        trial_id: i.trialID,
        facility: i.facility,
        kpis: i.kpis,
        name: i.name,
        target: i.target,
        deployed_slice: i.DeployedSlice,
        measurement_job: i.MeasurementJob,
    });
    let accepted = v1_signals(backup.accepted)?;
    let slice_created = info
        .as_ref()
        .is_some_and(|i| slice_id(&i.deployed_slice).is_some());
    let ledger = Ledger {
        slice: if lifecycle == Lifecycle::Finished || passed(position, Step::UpdateStatusFinish) {
            SliceState::Closed
        } else if position == Position::Wait(Wait::SliceClosed) {
            SliceState::Closing
        } else if slice_created {
            SliceState::Created
        } else if position == Position::Run(Step::SliceDeployment) {
            // The deployment may have been sent before the record was saved.
            // A record of the first format kept no key: sent again, it gets a new one.
            SliceState::Requested(None)
        } else {
            SliceState::None
        },
        measurement_job: match info
            .as_ref()
            .and_then(|i| i.measurement_job.get("MeasurementID"))
        {
            _ if lifecycle == Lifecycle::Finished
                || passed(position, Step::DeleteMeasurementJob) =>
            {
                JobState::Deleted
            }
            Some(Value::String(s)) => JobState::Created(s.clone()),
            Some(Value::Number(n)) => JobState::Created(n.to_string()),
            _ => JobState::None,
        },
    };
    let responses: Vec<ResponseRecord> =
        readable::<V1Response>(id.as_str(), "response", data.responses)
            .into_iter()
            .map(|r| ResponseRecord {
                step: r.step,
                service: r.service,
                method: r.method,
                path: r.path,
                status: r.status,
                body: r.body,
                error: r.error,
                duration_ms: r.duration_ms,
                attempt: 1,
                at: r.at,
            })
            .collect();
    // Version 1 ran the failure procedure after saving the failure; its report is recorded
    // among the responses once it ran.
    let reported = responses.iter().any(|r| r.step == "ReportFailure");
    let events: Vec<TrialEvent> = readable::<V1Event>(id.as_str(), "event", data.history)
        .into_iter()
        .filter_map(|e| {
            Some(TrialEvent {
                seq: 0,
                at: e.at,
                event: EventKind::parse(&e.event)?,
                step: e.step,
                detail: e.detail,
                duration_ms: e.duration_ms,
            })
        })
        .enumerate()
        .map(|(seq, event)| TrialEvent {
            seq: seq as u64,
            ..event
        })
        .collect();
    let created_at = events.first().map_or(updated_at, |e| e.at);
    let run = events
        .iter()
        .filter(|e| e.event == EventKind::Restored)
        .count() as u32;
    let failure = (lifecycle == Lifecycle::Failed).then(|| Failure {
        reason: backup
            .failure
            .unwrap_or_else(|| "failed before the upgrade".to_owned()),
        at: updated_at,
        reported,
        cleanup_failed: false,
        leftovers: Vec::new(),
        abort: None,
    });
    let checkpoint = Checkpoint {
        position,
        mode: Mode::Normal,
        data: TrialData {
            token: data.token,
            info: info.map(std::sync::Arc::new),
            kpi_status: data
                .kpi_status
                .map(|k| KpiStatus::parse(&k).ok_or_else(|| format!("unknown KPI status '{k}'")))
                .transpose()?,
            repository_status: data.repository_status,
            ledger,
            deadline: None,
        },
        accepted,
        held: v1_signals(backup.held)?,
        failure,
        paused: false,
        run,
        started_at: created_at,
        waiting_since: None,
        progress: None,
    };
    Ok(Converted {
        record: TrialRecord {
            id,
            lifecycle,
            checkpoint,
            created_at,
            updated_at,
            ended_at: lifecycle.is_ended().then_some(updated_at),
        },
        events,
        responses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn converted_at(position: &str, status: &str) -> Converted {
        let backup = format!(
            r#"{{"position": {position}, "data": {{"token": null, "info": null, "kpi_status": null}}, "failure": null}}"#
        );
        convert("v1", status, &backup, "2026-01-02T03:04:05Z").unwrap()
    }

    #[test]
    fn a_slice_deployment_it_stood_at_may_have_created_the_slice() {
        for status in ["Active", "Failed"] {
            let at_deployment = converted_at(r#"{"Run": "SliceDeployment"}"#, status);
            assert_eq!(
                at_deployment.record.checkpoint.data.ledger.slice,
                SliceState::Requested(None),
                "{status}"
            );
        }
        let before = converted_at(r#"{"Run": "GetTrialInfo"}"#, "Failed");
        assert_eq!(before.record.checkpoint.data.ledger.slice, SliceState::None);
    }

    #[test]
    fn an_unreadable_response_or_event_is_left_out_and_the_trial_is_kept() {
        let response = |status: &str| {
            format!(
                r#"{{"step": "GetTrialInfo", "service": "trial_repository", "method": "GET", "path": "trial/v1/", "status": {status}, "body": null, "error": null, "duration_ms": 3, "at": "2026-01-02T03:04:05Z"}}"#
            )
        };
        let event = |at: &str| {
            format!(
                r#"{{"at": {at}, "event": "step_started", "step": "GetTrialInfo", "detail": null, "duration_ms": null}}"#
            )
        };
        let backup = format!(
            r#"{{"position": {{"Wait": "Idle"}}, "data": {{"token": "t", "info": null, "kpi_status": null, "responses": [{}, {}], "history": [{}, {}, {}]}}, "failure": null}}"#,
            response("200"),
            response(r#""two hundred""#),
            event(r#""2026-01-02T03:04:05Z""#),
            event(r#""yesterday""#),
            event(r#""2026-01-02T03:04:06Z""#),
        );
        let converted = convert("v1", "Active", &backup, "2026-01-02T03:04:07Z").unwrap();
        assert_eq!(converted.responses.len(), 1);
        assert_eq!(converted.events.len(), 2);
        assert_eq!(
            converted.record.checkpoint.position,
            Position::Wait(Wait::Idle)
        );
    }
}
