//! The store's own names for what it writes. A checkpoint is saved as a small JSON document
//! whose shape is declared here, field by field, and whose enum values are the explicit names
//! of `Step::name`, `Wait::name`, `Signal::name` and `KpiStatus::marking`: renaming a Rust
//! type or variant changes nothing on disk, and a document written by an earlier release
//! still reads. Times are RFC 3339 in UTC with microseconds, fixed width, so they sort as
//! text in any SQL database.

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::engine::sequence::{self, Signal, Step, Wait};
use crate::engine::state::{
    Checkpoint, Failure, JobState, KpiStatus, Ledger, Leftover, LeftoverKind, Lifecycle, Mode,
    Position, Progress, SliceState, TrialData, TrialInfo,
};

/// The version of the checkpoint document this release writes.
const FORMAT: u32 = 1;

/// A time as the store writes it.
pub fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A time the store wrote, as every answer of the API writes a time (RFC 3339 in UTC, with as
/// many digits of the second as it needs); one that is not a time is kept as it is.
pub fn shown(text: &str) -> String {
    parse_time(text).map_or_else(
        |_| text.to_owned(),
        |at| at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
    )
}

/// A time the store wrote.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("'{text}' is not a time: {e}"))
}

/// What the checkpoint `raw`, which cannot be read as a whole, says its trial may have left
/// deployed, as far as its JSON can be read (`None` if nothing, or if it cannot tell): the
/// reason its record is set aside with names it, so it is undone on the facility before the
/// record is deleted.
pub fn deployed_in(raw: &str) -> Option<String> {
    let doc: Value = serde_json::from_str(raw).ok()?;
    let ledger = doc.get("ledger")?;
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    let mut left = Vec::new();
    match ledger.get("slice").and_then(Value::as_str) {
        Some("none" | "closed") => {}
        state => {
            let id = doc.pointer("/info/DeployedSlice/Slice/id").map(text);
            left.push(format!(
                "slice {} ({})",
                id.as_deref().unwrap_or("of unknown id"),
                state.unwrap_or("state unreadable")
            ));
        }
    }
    match ledger.get("measurement_job") {
        Some(Value::String(state)) if state == "none" || state == "deleted" => {}
        None => {}
        Some(job) => {
            let id = job
                .get("created")
                .or_else(|| doc.pointer("/info/MeasurementJob/MeasurementID"))
                .map(text);
            left.push(format!(
                "measurement job {}",
                id.as_deref().unwrap_or("of unknown id")
            ));
        }
    }
    (!left.is_empty()).then(|| left.join(", "))
}

/// The lifecycle as the store writes it.
pub fn lifecycle_name(lifecycle: Lifecycle) -> &'static str {
    match lifecycle {
        Lifecycle::Running => "Running",
        Lifecycle::Waiting => "Waiting",
        Lifecycle::Failed => "Failed",
        Lifecycle::Finished => "Finished",
        Lifecycle::Aborted => "Aborted",
        Lifecycle::Stopped => "Stopped",
    }
}

/// The lifecycle the store wrote.
pub fn parse_lifecycle(name: &str) -> Result<Lifecycle, String> {
    Ok(match name {
        "Running" => Lifecycle::Running,
        "Waiting" => Lifecycle::Waiting,
        "Failed" => Lifecycle::Failed,
        "Finished" => Lifecycle::Finished,
        "Aborted" => Lifecycle::Aborted,
        "Stopped" => Lifecycle::Stopped,
        other => return Err(format!("unknown lifecycle '{other}'")),
    })
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum PositionDoc<S> {
    Run(S),
    Wait(S),
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ModeDoc<S> {
    Normal,
    Cleanup(S),
}

#[derive(Serialize, Deserialize)]
struct InfoDoc<S, V> {
    #[serde(rename = "trialID")]
    trial_id: S,
    facility: S,
    kpis: V,
    name: V,
    target: S,
    #[serde(rename = "DeployedSlice")]
    deployed_slice: V,
    #[serde(rename = "MeasurementJob")]
    measurement_job: V,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum JobDoc<S> {
    None,
    /// Its creation's idempotency key.
    Requested(S),
    Created(S),
    Deleted,
}

#[derive(Serialize, Deserialize)]
struct LedgerDoc<S> {
    slice: S,
    /// The key of a slice deployment sent and never answered (`slice` is "requested").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    slice_key: Option<S>,
    measurement_job: JobDoc<S>,
}

#[derive(Serialize, Deserialize)]
struct LeftoverDoc<S> {
    kind: S,
    id: S,
}

#[derive(Serialize, Deserialize)]
struct ProgressDoc<S> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    progress: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<S>,
    at: String,
}

#[derive(Serialize, Deserialize)]
struct FailureDoc<S> {
    reason: S,
    at: String,
    reported: bool,
    #[serde(default)]
    cleanup_failed: bool,
    #[serde(default = "Vec::new")]
    leftovers: Vec<LeftoverDoc<S>>,
    #[serde(default = "Option::default", skip_serializing_if = "Option::is_none")]
    abort: Option<S>,
}

/// The checkpoint document, format 1: owned text and values when read (`S = String`,
/// `V = Value`), borrowed from the checkpoint when written (`S = &str`, `V = &Value`), so
/// writing copies nothing.
#[derive(Serialize, Deserialize)]
struct CheckpointDoc<S, V> {
    format: u32,
    position: PositionDoc<S>,
    mode: ModeDoc<S>,
    /// The first step of a clean-up that failed for good, and why (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cleanup_failed_at: Option<(S, S)>,
    /// A clean-up awaits the slice-created callback before the slice-closed one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    slice_created_due: bool,
    token: Option<S>,
    info: Option<InfoDoc<S, V>>,
    kpi_status: Option<S>,
    repository_status: Option<S>,
    accepted: Vec<(S, S)>,
    held: Vec<(S, S)>,
    ledger: LedgerDoc<S>,
    failure: Option<FailureDoc<S>>,
    paused: bool,
    run: u32,
    started_at: String,
    deadline: Option<String>,
    /// When the trial reached its waiting point (absent at a step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    waiting_since: Option<String>,
    /// The last progress reported at the waiting point (absent if none was): a
    /// [`ProgressDoc`], read leniently, since it is only shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    progress: Option<V>,
}

fn slice_name(state: &SliceState) -> &'static str {
    match state {
        SliceState::None => "none",
        SliceState::Requested(_) => "requested",
        SliceState::Created => "created",
        SliceState::Announced => "announced",
        SliceState::Closing => "closing",
        SliceState::Closed => "closed",
    }
}

/// The slice state named `name`; a requested one has the key `key` was written with.
fn parse_slice(name: &str, key: Option<String>) -> Result<SliceState, String> {
    Ok(match name {
        "none" => SliceState::None,
        "requested" => SliceState::Requested(key),
        "created" => SliceState::Created,
        "announced" => SliceState::Announced,
        "closing" => SliceState::Closing,
        "closed" => SliceState::Closed,
        other => return Err(format!("unknown slice state '{other}'")),
    })
}

fn leftover_kind_name(kind: LeftoverKind) -> &'static str {
    match kind {
        LeftoverKind::Slice => "slice",
        LeftoverKind::MeasurementJob => "measurement_job",
    }
}

fn parse_leftover_kind(name: &str) -> Result<LeftoverKind, String> {
    Ok(match name {
        "slice" => LeftoverKind::Slice,
        "measurement_job" => LeftoverKind::MeasurementJob,
        other => return Err(format!("unknown leftover kind '{other}'")),
    })
}

fn step(name: &str) -> Result<Step, String> {
    Step::parse(name).ok_or_else(|| format!("unknown step '{name}'"))
}

fn wait(name: &str) -> Result<Wait, String> {
    Wait::parse(name).ok_or_else(|| format!("unknown waiting point '{name}'"))
}

fn signal(name: &str) -> Result<Signal, String> {
    Signal::parse(name).ok_or_else(|| format!("unknown signal '{name}'"))
}

fn signals_doc(list: &[(Wait, Signal)]) -> Vec<(&'static str, &'static str)> {
    list.iter().map(|(w, s)| (w.name(), s.name())).collect()
}

fn parse_signals(list: Vec<(String, String)>) -> Result<Vec<(Wait, Signal)>, String> {
    list.into_iter()
        .map(|(w, s)| Ok((wait(&w)?, signal(&s)?)))
        .collect()
}

/// A saved checkpoint document with its early signals replaced by `held`, the rest as written.
pub fn with_held(text: &str, held: &[(Wait, Signal)]) -> Result<String, String> {
    with_field(text, "held", serde_json::json!(signals_doc(held)))
}

/// A saved checkpoint document with the progress shown at its waiting point replaced by
/// `progress`, the rest as written.
pub fn with_progress(text: &str, progress: &Progress) -> Result<String, String> {
    with_field(text, "progress", serde_json::json!(progress_doc(progress)))
}

/// A saved checkpoint document with its field `name` replaced by `value`.
fn with_field(text: &str, name: &str, value: Value) -> Result<String, String> {
    let mut doc: Value =
        serde_json::from_str(text).map_err(|e| format!("unreadable checkpoint: {e}"))?;
    let Some(fields) = doc.as_object_mut() else {
        return Err("unreadable checkpoint: not a JSON object".to_owned());
    };
    fields.insert(name.to_owned(), value);
    Ok(doc.to_string())
}

fn progress_doc(progress: &Progress) -> ProgressDoc<&str> {
    ProgressDoc {
        progress: progress.progress,
        message: progress.message.as_deref(),
        at: time(progress.at),
    }
}

/// Writes a checkpoint as the store keeps it.
pub fn encode_checkpoint(checkpoint: &Checkpoint) -> String {
    let progress = checkpoint
        .progress
        .as_ref()
        .map(|p| serde_json::json!(progress_doc(p)));
    let data = &checkpoint.data;
    let doc: CheckpointDoc<&str, &Value> = CheckpointDoc {
        format: FORMAT,
        position: match checkpoint.position {
            Position::Run(s) => PositionDoc::Run(s.name()),
            Position::Wait(w) => PositionDoc::Wait(w.name()),
        },
        mode: match &checkpoint.mode {
            Mode::Normal => ModeDoc::Normal,
            Mode::Cleanup { reason, .. } => ModeDoc::Cleanup(reason.as_str()),
        },
        cleanup_failed_at: match &checkpoint.mode {
            Mode::Cleanup {
                failed: Some((step, why)),
                ..
            } => Some((step.name(), why.as_str())),
            Mode::Cleanup { failed: None, .. } | Mode::Normal => None,
        },
        slice_created_due: matches!(
            checkpoint.mode,
            Mode::Cleanup {
                creation_due: true,
                ..
            }
        ),
        token: data.token.as_deref(),
        info: data.info.as_deref().map(|i| InfoDoc {
            trial_id: i.trial_id.as_str(),
            facility: i.facility.as_str(),
            kpis: &i.kpis,
            name: &i.name,
            target: i.target.as_str(),
            deployed_slice: &i.deployed_slice,
            measurement_job: &i.measurement_job,
        }),
        kpi_status: data.kpi_status.map(KpiStatus::marking),
        repository_status: data.repository_status.as_deref(),
        accepted: signals_doc(&checkpoint.accepted),
        held: signals_doc(&checkpoint.held),
        ledger: LedgerDoc {
            slice: slice_name(&data.ledger.slice),
            slice_key: match &data.ledger.slice {
                SliceState::Requested(key) => key.as_deref(),
                _ => None,
            },
            measurement_job: match &data.ledger.measurement_job {
                JobState::None => JobDoc::None,
                JobState::Requested(key) => JobDoc::Requested(key.as_str()),
                JobState::Created(id) => JobDoc::Created(id.as_str()),
                JobState::Deleted => JobDoc::Deleted,
            },
        },
        failure: checkpoint.failure.as_ref().map(|f| FailureDoc {
            reason: f.reason.as_str(),
            at: time(f.at),
            reported: f.reported,
            cleanup_failed: f.cleanup_failed,
            leftovers: f
                .leftovers
                .iter()
                .map(|l| LeftoverDoc {
                    kind: leftover_kind_name(l.kind),
                    id: l.id.as_str(),
                })
                .collect(),
            abort: f.abort.as_deref(),
        }),
        paused: checkpoint.paused,
        run: checkpoint.run,
        started_at: time(checkpoint.started_at),
        deadline: data.deadline.map(time),
        waiting_since: checkpoint.waiting_since.map(time),
        progress: progress.as_ref(),
    };
    // Plain data of strings, numbers and JSON values: serialising cannot fail.
    serde_json::to_string(&doc).unwrap_or_default()
}

/// Reads a checkpoint the store kept; the error says what is wrong with it.
pub fn decode_checkpoint(text: &str) -> Result<Checkpoint, String> {
    let doc: CheckpointDoc<String, Value> =
        serde_json::from_str(text).map_err(|e| format!("unreadable checkpoint: {e}"))?;
    if doc.format != FORMAT {
        return Err(format!(
            "checkpoint format {} is not {FORMAT} (written by another release?)",
            doc.format
        ));
    }
    let checkpoint = Checkpoint {
        position: match doc.position {
            PositionDoc::Run(s) => Position::Run(step(&s)?),
            PositionDoc::Wait(w) => Position::Wait(wait(&w)?),
        },
        mode: match doc.mode {
            ModeDoc::Normal => Mode::Normal,
            ModeDoc::Cleanup(reason) => Mode::Cleanup {
                reason,
                failed: match doc.cleanup_failed_at {
                    Some((failed, why)) => Some((step(&failed)?, why)),
                    None => None,
                },
                creation_due: doc.slice_created_due,
            },
        },
        data: TrialData {
            token: doc.token,
            info: doc.info.map(|i| {
                Arc::new(TrialInfo {
                    trial_id: i.trial_id,
                    facility: i.facility,
                    kpis: i.kpis,
                    name: i.name,
                    target: i.target,
                    deployed_slice: i.deployed_slice,
                    measurement_job: i.measurement_job,
                })
            }),
            kpi_status: doc
                .kpi_status
                .map(|k| KpiStatus::parse(&k).ok_or_else(|| format!("unknown KPI status '{k}'")))
                .transpose()?,
            repository_status: doc.repository_status,
            ledger: Ledger {
                slice: parse_slice(&doc.ledger.slice, doc.ledger.slice_key)?,
                measurement_job: match doc.ledger.measurement_job {
                    JobDoc::None => JobState::None,
                    JobDoc::Requested(key) => JobState::Requested(key),
                    JobDoc::Created(id) => JobState::Created(id),
                    JobDoc::Deleted => JobState::Deleted,
                },
            },
            deadline: doc.deadline.as_deref().map(parse_time).transpose()?,
        },
        accepted: parse_signals(doc.accepted)?,
        held: parse_signals(doc.held)?,
        failure: doc
            .failure
            .map(|f| -> Result<Failure, String> {
                Ok(Failure {
                    reason: f.reason,
                    at: parse_time(&f.at)?,
                    reported: f.reported,
                    cleanup_failed: f.cleanup_failed,
                    leftovers: f
                        .leftovers
                        .into_iter()
                        .map(|l| {
                            Ok(Leftover {
                                kind: parse_leftover_kind(&l.kind)?,
                                id: l.id,
                            })
                        })
                        .collect::<Result<_, String>>()?,
                    abort: f.abort,
                })
            })
            .transpose()?,
        paused: doc.paused,
        run: doc.run,
        started_at: parse_time(&doc.started_at)?,
        waiting_since: doc.waiting_since.as_deref().map(parse_time).transpose()?,
        // Only shown: one damaged by hand is left out, not a reason to set the trial aside.
        progress: doc
            .progress
            .and_then(|p| serde_json::from_value::<ProgressDoc<String>>(p).ok())
            .and_then(|p| {
                Some(Progress {
                    progress: p.progress,
                    message: p.message,
                    at: parse_time(&p.at).ok()?,
                })
            }),
    };
    // Every step after the first needs the token the first one mints (it cannot be skipped):
    // a checkpoint past it without one is damaged, and would fail the trial later, far from
    // the cause.
    if matches!(checkpoint.mode, Mode::Normal)
        && checkpoint.position != Position::Run(sequence::FIRST)
        && checkpoint.data.token.as_deref().is_none_or(str::is_empty)
    {
        return Err(format!(
            "damaged checkpoint: past {} without the trial's callback token",
            sequence::FIRST.name()
        ));
    }
    // A clean-up stands at one of its own steps or waits: anywhere else it would run a step of
    // the trial sequence (a deployment) while it undoes the trial.
    if matches!(checkpoint.mode, Mode::Cleanup { .. }) && !sequence::in_cleanup(checkpoint.position)
    {
        let at = match checkpoint.position {
            Position::Run(step) => format!("step {}", step.name()),
            Position::Wait(wait) => format!("waiting point {}", wait.name()),
        };
        return Err(format!(
            "damaged checkpoint: a clean-up at {at}, which is not one of its own"
        ));
    }
    Ok(checkpoint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_checkpoint_that_cannot_be_read_still_names_what_its_trial_deployed() {
        let mut doc: Value = serde_json::from_str(GOLDEN).unwrap();
        doc["position"] = json!({"wait": "NoSuchWait"});
        assert_eq!(
            deployed_in(&doc.to_string()).as_deref(),
            Some("slice s1 (closing)")
        );
        doc["ledger"] = json!({"slice": "created", "measurement_job": {"created": "mj-1"}});
        assert_eq!(
            deployed_in(&doc.to_string()).as_deref(),
            Some("slice s1 (created), measurement job mj-1")
        );
        doc["ledger"] = json!({"slice": "closed", "measurement_job": "deleted"});
        assert_eq!(deployed_in(&doc.to_string()), None);
        assert_eq!(deployed_in("not json"), None);
    }

    /// A checkpoint as this release writes it, byte for byte: if this test has to change, a
    /// migration is needed for the databases already written.
    const GOLDEN: &str = r#"{"format":1,"position":{"wait":"SliceClosed"},"mode":{"cleanup":"operator: wrong facility"},"token":"tok","info":{"trialID":"t1","facility":"eurecom","kpis":["latency"],"name":"Trial t1","target":"dummy","DeployedSlice":{"Slice":{"id":"s1"}},"MeasurementJob":{"MeasurementID":"mj-1"}},"kpi_status":"Active","repository_status":"ACTIVE","accepted":[["SliceCreated","slice callback"],["Idle","active"]],"held":[],"ledger":{"slice":"closing","measurement_job":"deleted"},"failure":{"reason":"x","at":"2026-01-02T03:04:05.000006Z","reported":true,"cleanup_failed":true,"leftovers":[{"kind":"slice","id":"s1"}]},"paused":true,"run":2,"started_at":"2026-01-02T03:00:00.000000Z","deadline":null}"#;

    fn golden() -> Checkpoint {
        Checkpoint {
            position: Position::Wait(Wait::SliceClosed),
            mode: Mode::Cleanup {
                reason: "operator: wrong facility".into(),
                failed: None,
                creation_due: false,
            },
            data: TrialData {
                token: Some("tok".into()),
                info: Some(Arc::new(TrialInfo {
                    trial_id: "t1".into(),
                    facility: "eurecom".into(),
                    kpis: json!(["latency"]),
                    name: json!("Trial t1"),
                    target: "dummy".into(),
                    deployed_slice: json!({"Slice": {"id": "s1"}}),
                    measurement_job: json!({"MeasurementID": "mj-1"}),
                })),
                kpi_status: Some(KpiStatus::Active),
                repository_status: Some("ACTIVE".into()),
                ledger: Ledger {
                    slice: SliceState::Closing,
                    measurement_job: JobState::Deleted,
                },
                deadline: None,
            },
            accepted: vec![
                (Wait::SliceCreated, Signal::SliceCallback),
                (Wait::Idle, Signal::Active),
            ],
            held: vec![],
            failure: Some(Failure {
                reason: "x".into(),
                at: parse_time("2026-01-02T03:04:05.000006Z").unwrap(),
                reported: true,
                cleanup_failed: true,
                leftovers: vec![Leftover {
                    kind: LeftoverKind::Slice,
                    id: "s1".into(),
                }],
                abort: None,
            }),
            paused: true,
            run: 2,
            started_at: parse_time("2026-01-02T03:00:00Z").unwrap(),
            waiting_since: None,
            progress: None,
        }
    }

    /// A wait's start is kept (a document written before it was, like [`GOLDEN`], reads as
    /// none: that wait has its whole time again after the restart).
    #[test]
    fn a_wait_s_start_outlives_a_restart() {
        let mut checkpoint = golden();
        checkpoint.waiting_since = Some(parse_time("2026-01-02T03:05:00Z").unwrap());
        let text = encode_checkpoint(&checkpoint);
        assert!(
            text.ends_with(r#""waiting_since":"2026-01-02T03:05:00.000000Z"}"#),
            "{text}"
        );
        assert_eq!(decode_checkpoint(&text).unwrap(), checkpoint);
    }

    /// The progress shown at a wait is kept, whole or in part, and patched in on its own as
    /// it comes.
    #[test]
    fn a_wait_s_progress_outlives_a_restart() {
        let mut checkpoint = golden();
        let at = parse_time("2026-01-02T03:06:00Z").unwrap();
        for (progress, message) in [
            (Some(40), Some("deploying")),
            (None, Some("x")),
            (Some(5), None),
        ] {
            checkpoint.progress = Some(Progress {
                progress,
                message: message.map(str::to_owned),
                at,
            });
            let text = encode_checkpoint(&checkpoint);
            assert_eq!(decode_checkpoint(&text).unwrap(), checkpoint, "{text}");
            let patched = with_progress(GOLDEN, checkpoint.progress.as_ref().unwrap()).unwrap();
            assert_eq!(
                decode_checkpoint(&patched).unwrap(),
                checkpoint,
                "{patched}"
            );
        }
        // Damaged by hand: left out, the rest read.
        for damaged in [
            json!({"progress": 999, "at": "2026-01-02T03:06:00Z"}),
            json!({"progress": 5, "at": "yesterday"}),
            json!("40%"),
        ] {
            let text = with_field(GOLDEN, "progress", damaged).unwrap();
            assert_eq!(decode_checkpoint(&text).unwrap(), golden(), "{text}");
        }
    }

    #[test]
    fn a_clean_up_at_a_step_of_the_trial_sequence_is_damaged() {
        let mut doc: Value = serde_json::from_str(GOLDEN).unwrap();
        doc["mode"] = json!({"cleanup": "operator abort"});
        doc["position"] = json!({"run": "SliceDeployment"});
        assert_eq!(
            decode_checkpoint(&doc.to_string()).unwrap_err(),
            "damaged checkpoint: a clean-up at step SliceDeployment, which is not one of its own"
        );
        doc["position"] = json!({"wait": "Idle"});
        assert!(decode_checkpoint(&doc.to_string()).is_err());
        for position in [
            json!({"run": "CloseService"}),
            json!({"wait": "SliceClosed"}),
        ] {
            doc["position"] = position;
            let checkpoint = decode_checkpoint(&doc.to_string()).unwrap();
            assert!(matches!(checkpoint.mode, Mode::Cleanup { .. }));
        }
    }

    #[test]
    fn the_document_on_disk_is_stable() {
        assert_eq!(encode_checkpoint(&golden()), GOLDEN);
        assert_eq!(decode_checkpoint(GOLDEN).unwrap(), golden());
    }

    #[test]
    fn a_measurement_job_in_doubt_keeps_its_creations_key() {
        let mut checkpoint = golden();
        checkpoint.data.ledger.measurement_job =
            JobState::Requested("t1-7-CreateMeasurementJob-r0-1".into());
        let written = encode_checkpoint(&checkpoint);
        assert!(
            written.contains(r#""measurement_job":{"requested":"t1-7-CreateMeasurementJob-r0-1"}"#),
            "{written}"
        );
        assert_eq!(decode_checkpoint(&written).unwrap(), checkpoint);
    }

    #[test]
    fn a_slice_in_doubt_keeps_its_deployments_key() {
        let mut checkpoint = golden();
        checkpoint.data.ledger.slice =
            SliceState::Requested(Some("t1-7-SliceDeployment-r0-1".into()));
        let written = encode_checkpoint(&checkpoint);
        assert!(
            written.contains(r#""slice":"requested","slice_key":"t1-7-SliceDeployment-r0-1""#),
            "{written}"
        );
        assert_eq!(decode_checkpoint(&written).unwrap(), checkpoint);

        // Its late slice-created callback came: the slice exists, whatever a close answers.
        checkpoint.data.ledger.slice = SliceState::Announced;
        let written = encode_checkpoint(&checkpoint);
        assert!(written.contains(r#""slice":"announced""#), "{written}");
        assert_eq!(decode_checkpoint(&written).unwrap(), checkpoint);
    }

    #[test]
    fn a_failed_clean_ups_first_failure_outlives_a_restart() {
        let mut checkpoint = golden();
        checkpoint.mode = Mode::Cleanup {
            reason: "operator: wrong facility".into(),
            failed: Some((Step::SendKpiFinish, "SendKpiFinish failed: 503".into())),
            creation_due: true,
        };
        let text = encode_checkpoint(&checkpoint);
        assert!(
            text.contains(
                r#""cleanup_failed_at":["SendKpiFinish","SendKpiFinish failed: 503"],"slice_created_due":true"#
            ),
            "{text}"
        );
        assert_eq!(decode_checkpoint(&text).unwrap(), checkpoint);
    }

    #[test]
    fn early_signals_are_replaced_and_the_rest_kept() {
        let held = [(Wait::Idle, Signal::Finish)];
        let patched = decode_checkpoint(&with_held(GOLDEN, &held).unwrap()).unwrap();
        assert_eq!(patched.held, held);
        assert_eq!(
            Checkpoint {
                held: vec![],
                ..patched
            },
            golden()
        );
        assert!(
            with_held("[1]", &held)
                .unwrap_err()
                .contains("not a JSON object")
        );
        assert!(with_held("{", &held).is_err());
    }

    #[test]
    fn a_bad_document_says_what_is_wrong() {
        let err = decode_checkpoint(&GOLDEN.replace("SliceClosed", "Nowhere")).unwrap_err();
        assert!(err.contains("Nowhere"), "{err}");
        let err = decode_checkpoint("{").unwrap_err();
        assert!(err.contains("unreadable"), "{err}");
        let err = decode_checkpoint(&GOLDEN.replace(r#""format":1"#, r#""format":9"#)).unwrap_err();
        assert!(err.contains("format 9"), "{err}");
    }

    #[test]
    fn times_sort_as_text() {
        let early = parse_time("2026-01-02T03:04:05Z").unwrap();
        let late = early + chrono::Duration::microseconds(1);
        assert!(time(early) < time(late));
        assert_eq!(time(early).len(), time(late).len());
    }

    #[test]
    fn a_checkpoint_past_the_first_step_without_a_token_is_damaged() {
        let mut checkpoint = golden();
        checkpoint.mode = Mode::Normal;
        for token in [None, Some(String::new())] {
            checkpoint.data.token = token;
            let reason = decode_checkpoint(&encode_checkpoint(&checkpoint)).unwrap_err();
            assert!(
                reason.contains("without the trial's callback token"),
                "{reason}"
            );
        }
        checkpoint.data.token = None;
        checkpoint.position = Position::Run(sequence::FIRST);
        assert!(decode_checkpoint(&encode_checkpoint(&checkpoint)).is_ok());
        // A clean-up may start before the first step has minted it.
        checkpoint.position = Position::Wait(Wait::SliceClosed);
        checkpoint.mode = golden().mode;
        assert!(decode_checkpoint(&encode_checkpoint(&checkpoint)).is_ok());
    }
}
