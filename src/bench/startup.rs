//! `lcm bench --startup N`: a store holding N ended trials, each with the journal a whole trial
//! leaves (its events and recorded responses), plus [`LIVE`] trials waiting at IDLE; then an LCM
//! starts on it, and the time to its first answer is measured. Start-up reads live trials only,
//! so the ended ones should not count.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::json;
use tokio::runtime::Handle;

use super::{bytes, machine, print_table};
use crate::domain::TrialId;
use crate::engine::sequence::{self, Step, Wait};
use crate::engine::state::{
    Checkpoint, EventKind, JobState, KpiStatus, Ledger, Lifecycle, Position, ResponseRecord,
    SliceState, TrialData, TrialEvent, TrialInfo,
};
use crate::sim::local::{self, LOCAL_API_KEY, LocalLcm};
use crate::sim::operator::Operator;
use crate::store::sqlite::SqliteBackend;
use crate::store::{Backend, Op, TrialRecord};

/// Live trials in the store besides the ended ones: these are recovered.
const LIVE: usize = 100;
/// Trials written per transaction while filling.
const BATCH: usize = 500;

/// Fills a store, starts an LCM on it, and prints the report.
pub async fn run(ended: usize, lcm_runtime: &Handle, dir: &Path) -> Result<(), String> {
    let data = dir.join("data");
    let filling = Instant::now();
    let fill_dir = data.clone();
    tokio::task::spawn_blocking(move || fill(&fill_dir, ended))
        .await
        .map_err(|e| format!("filling the store: {e}"))??;
    let fill_time = filling.elapsed();
    let store_bytes = ["", "-wal"]
        .iter()
        .filter_map(|suffix| {
            std::fs::metadata(data.join(format!("{}{suffix}", crate::store::sqlite::FILE_NAME)))
                .ok()
        })
        .map(|m| m.len())
        .sum::<u64>();

    let listener = local::bind(0).map_err(|e| format!("cannot listen on 127.0.0.1: {e}"))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?
        .port();
    let settings = local::settings(None, port, dir).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let lcm = LocalLcm::start(settings, listener, lcm_runtime)
        .await
        .map_err(|e| format!("the LCM did not start: {e}"))?;
    let built = started.elapsed();
    let operator = Operator::new(lcm.url(), LOCAL_API_KEY)
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let engines = loop {
        if let Ok(engines) = operator.engines().await {
            break engines;
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err("the LCM did not answer within 60 s".to_owned());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let answering = started.elapsed();
    let listed = operator
        .call(
            reqwest::Method::GET,
            "/trials?status=Finished&limit=1",
            None,
        )
        .await
        .map_err(|e| e.to_string())?;
    if let Err(e) = lcm.stop().await {
        eprintln!("lcm bench: stopping the LCM: {e}");
    }
    let recovered = engines.iter().filter(|(_, s)| s == "Active").count();
    let rows = vec![
        (
            "store".to_owned(),
            format!(
                "{ended} ended trials + {LIVE} live, {}",
                bytes(store_bytes as f64)
            ),
            "each ended trial with the events and responses of a whole trial; filled in one go beforehand".to_owned(),
        ),
        (
            "filling the store".to_owned(),
            format!("{:.1} s", fill_time.as_secs_f64()),
            format!("{BATCH} trials a transaction (not part of the start-up)"),
        ),
        (
            "start-up to listening".to_owned(),
            format!("{:.0} ms", answering.as_secs_f64() * 1000.0),
            "open and migrate the store, read the live trials and their journals, recover them, serve: until `GET /status` answers".to_owned(),
        ),
        (
            "… of which building the service".to_owned(),
            format!("{:.0} ms", built.as_secs_f64() * 1000.0),
            "the store opened and read, the engines recovered".to_owned(),
        ),
        (
            "engines recovered".to_owned(),
            format!("{recovered} / {LIVE}"),
            "live trials listed Active by `GET /status` (ended ones stay in the store)".to_owned(),
        ),
        (
            "ended trials still listed".to_owned(),
            if listed.0.is_success() && listed.1["trials"].as_array().is_some_and(|t| !t.is_empty()) {
                "yes".to_owned()
            } else {
                "no".to_owned()
            },
            "`GET /trials?status=Finished` finds them in the store".to_owned(),
        ),
    ];
    print_table(
        &format!(
            "lcm bench --startup: {ended} ended trials in the store, on {}",
            machine()
        ),
        &rows,
    );
    if recovered != LIVE {
        return Err(format!(
            "only {recovered} of {LIVE} live trials were recovered"
        ));
    }
    Ok(())
}

/// Writes `ended` finished trials with their journals, and [`LIVE`] trials at IDLE.
fn fill(data: &Path, ended: usize) -> Result<(), String> {
    let mut store = SqliteBackend::open(data).map_err(|e| e.to_string())?;
    let steps = sequence::happy_path(false);
    let body = Arc::new(json!({
        "id": "x", "name": "Trial x", "facility": "EUR", "status": "APPROVED",
        "kpis": ["latency", "throughput"], "flights": [{"id": 1, "waypoints": [[43.61, 7.05]]}],
    }));
    let total = ended + LIVE;
    for first in (0..total).step_by(BATCH) {
        let mut ops = Vec::new();
        for i in first..(first + BATCH).min(total) {
            let live = i >= ended;
            let id = TrialId::parse(&format!("{}-{i:07}", if live { "live" } else { "ended" }))
                .map_err(|e| e.to_string())?;
            let at = Utc::now() - chrono::Duration::seconds((total - i) as i64);
            ops.push(Op::PutTrial(Box::new(record(&id, at, live))));
            if live {
                continue;
            }
            for (seq, step) in steps.iter().enumerate() {
                ops.push(Op::AppendEvent {
                    id: id.clone(),
                    event: Arc::new(TrialEvent {
                        seq: seq as u64,
                        at,
                        event: EventKind::StepCompleted,
                        step: Some(step.name().to_owned()),
                        detail: None,
                        duration_ms: Some(3),
                    }),
                });
            }
            for _ in 0..17 {
                ops.push(Op::AppendResponse {
                    id: id.clone(),
                    record: Arc::new(ResponseRecord {
                        step: "GetTrialInfo".to_owned(),
                        service: "trial_repository".to_owned(),
                        method: "GET".to_owned(),
                        path: format!("trial/{id}/"),
                        status: Some(200),
                        body: Some((*body).clone()),
                        error: None,
                        duration_ms: 2,
                        attempt: 1,
                        at,
                    }),
                });
            }
        }
        store.apply(&ops).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn record(id: &TrialId, at: chrono::DateTime<Utc>, live: bool) -> TrialRecord {
    let mut checkpoint = Checkpoint::new(at);
    checkpoint.data = TrialData {
        token: Some("header.payload.signature".to_owned()),
        info: Some(Arc::new(TrialInfo {
            trial_id: id.to_string(),
            facility: "eurecom".to_owned(),
            kpis: json!(["latency", "throughput"]),
            name: json!(format!("Trial {id}")),
            target: "dummy".to_owned(),
            deployed_slice: json!({"Slice": {"id": format!("slice-{id}")}}),
            measurement_job: json!({"MeasurementID": format!("mj-{id}")}),
        })),
        kpi_status: Some(if live {
            KpiStatus::Idle
        } else {
            KpiStatus::Finished
        }),
        repository_status: Some(if live { "IDLE" } else { "FINISHED" }.to_owned()),
        ledger: Ledger {
            slice: if live {
                SliceState::Created
            } else {
                SliceState::Closed
            },
            measurement_job: if live {
                JobState::Created(format!("mj-{id}"))
            } else {
                JobState::Deleted
            },
        },
        deadline: None,
    };
    checkpoint.position = if live {
        Position::Wait(Wait::Idle)
    } else {
        Position::Run(Step::Finish)
    };
    let lifecycle = if live {
        Lifecycle::Waiting
    } else {
        Lifecycle::Finished
    };
    TrialRecord {
        id: id.clone(),
        lifecycle,
        checkpoint,
        created_at: at,
        updated_at: at,
        ended_at: (!live).then_some(at),
    }
}
