//! What happens when a trial fails (SPEC §4.3): the repository is told `FAILED` (best effort,
//! under the retry policy) and `logs/executor_<id>_fail.log` is written with the executor's
//! parameters, what a failed clean-up left deployed, and every response, every secret
//! redacted.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::Utc;
use reqwest::Method;
use serde_json::{Value, json};
use tracing::{error, info, warn};

use super::EngineShared;
use super::redact::{REDACTED, Redactor};
use super::state::{Checkpoint, Lifecycle, Position, ResponseRecord};
use super::steps::recorder;
use crate::config::Settings;
use crate::domain::TrialId;
use crate::services::{Outbound, Service};

/// The label under which the `FAILED` report's answer is recorded.
const REPORT_LABEL: &str = "ReportFailure";

/// The status the repository is told of a failed trial.
pub const REPORTED: &str = "FAILED";

/// The path of a trial's failure file.
pub fn failure_file(settings: &Settings, id: &TrialId) -> PathBuf {
    settings.logging.dir.join(format!("executor_{id}_fail.log"))
}

/// Tells the repository and writes the failure file; the report's answers are recorded.
pub async fn report(shared: &EngineShared, checkpoint: &mut Checkpoint) {
    let deps = &shared.deps;
    let id = &shared.id;
    let request = Outbound::new(
        Service::TrialRepository,
        Method::PUT,
        format!("trial/{id}/"),
    )
    .json(json!({"status": REPORTED}));
    let redactor = deps.redactor.with(checkpoint.data.token.as_deref());
    let reply = deps
        .services
        .send(
            &request,
            recorder(&shared.journal, REPORT_LABEL, None, &request, &redactor),
        )
        .await;
    match &reply {
        Ok(r) if r.status == 204 => {
            info!("trial repository told FAILED");
            checkpoint.data.repository_status = Some(REPORTED.to_owned());
        }
        Ok(r) => warn!(
            status = r.status,
            "trial repository refused the FAILED status"
        ),
        Err(e) => warn!(error = %e, "could not tell the trial repository FAILED"),
    }
    write_file(shared, checkpoint, &redactor).await;
}

/// The failure file's document, before redaction.
fn document(id: &str, checkpoint: &Checkpoint, responses: &[Arc<ResponseRecord>]) -> Value {
    let state = match checkpoint.position {
        Position::Run(step) => step.name().to_owned(),
        Position::Wait(wait) => format!("Waiting ({})", wait.name()),
    };
    let failure = checkpoint.failure.as_ref();
    let data = &checkpoint.data;
    let accepted: Vec<[&str; 2]> = checkpoint
        .accepted
        .iter()
        .map(|(w, s)| [w.name(), s.name()])
        .collect();
    json!({
        "trial_id": id,
        "failed_at": Utc::now(),
        "reason": failure.map(|f| f.reason.as_str()),
        "cleanup_failed": failure.is_some_and(|f| f.cleanup_failed),
        "leftovers": failure.map(|f| f.leftovers.as_slice()).unwrap_or_default(),
        "parameters": {
            "state": state,
            "status": "Failed",
            "kpi_status": data.kpi_status,
            "trial_info": data.info,
            "token": data.token.as_ref().map(|_| REDACTED),
            "accepted_signals": accepted,
            "run": checkpoint.run,
        },
        "responses": responses,
    })
}

async fn write_file(shared: &EngineShared, checkpoint: &Checkpoint, redactor: &Redactor) {
    let settings = &shared.deps.settings;
    let path = failure_file(settings, &shared.id);
    // Every response recorded (each up to the size of a body) is copied, redacted and written
    // out: work for a blocking thread, not for the runtime's.
    let (id, checkpoint, responses) = (
        shared.id.to_string(),
        checkpoint.clone(),
        shared.journal.responses(),
    );
    let redactor = redactor.clone();
    let text = tokio::task::spawn_blocking(move || {
        let mut content = document(&id, &checkpoint, &responses);
        redactor.value(&mut content);
        serde_json::to_string_pretty(&content).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|text| text);
    let text = match text {
        Ok(text) => text,
        Err(e) => {
            error!(error = %e, "cannot serialise the failure file");
            return;
        }
    };
    if let Err(e) = tokio::fs::create_dir_all(&settings.logging.dir).await {
        error!(error = %e, dir = %settings.logging.dir.display(), "cannot create the log directory");
    }
    match tokio::fs::write(&path, text).await {
        Ok(()) => info!(file = %path.display(), "failure file written"),
        Err(e) => error!(error = %e, file = %path.display(), "cannot write the failure file"),
    }
}

/// Notes in the trial's failure file, if it has one, that the trial ended after that failure
/// (`lifecycle`: restored and finished, or cleaned up by an abort): what the file says was left
/// deployed is not any more, and a reader at the file alone learns it.
pub async fn resolve_file(shared: &EngineShared, lifecycle: Lifecycle) {
    let path = failure_file(&shared.deps.settings, &shared.id);
    let Ok(text) = tokio::fs::read(&path).await else {
        return;
    };
    let Ok(Value::Object(mut content)) = serde_json::from_slice::<Value>(&text) else {
        warn!(file = %path.display(), "the failure file is not the JSON it was written as: left as it is");
        return;
    };
    let how = match lifecycle {
        Lifecycle::Aborted => "aborted: its clean-up undid everything it had deployed",
        _ => "restored, and finished",
    };
    content.insert(
        "resolved".to_owned(),
        json!({"at": Utc::now(), "engine_status": lifecycle.engine_status(), "how": how}),
    );
    let text = serde_json::to_string_pretty(&content).unwrap_or_default();
    match tokio::fs::write(&path, text).await {
        Ok(()) => info!(file = %path.display(), "failure file marked resolved"),
        Err(e) => {
            warn!(error = %e, file = %path.display(), "cannot mark the failure file resolved")
        }
    }
}
