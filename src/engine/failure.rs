//! What happens when a trial fails (SPEC §4.3): the repository is told `FAILED` (best effort)
//! and `logs/executor_<id>_fail.log` is written with the executor's parameters and every
//! response, the token redacted.

use std::path::PathBuf;

use chrono::Utc;
use reqwest::Method;
use serde_json::json;
use tracing::{error, info, warn};

use super::EngineDeps;
use super::redact::{REDACTED, Redactor};
use super::state::{Backup, Position};
use super::steps::record;
use crate::domain::TrialId;
use crate::services::{Outbound, Service};

/// The label under which the `FAILED` report's answer is recorded.
pub const REPORT_LABEL: &str = "ReportFailure";

/// The path of a trial's failure file.
pub fn failure_file(deps: &EngineDeps, id: &TrialId) -> PathBuf {
    deps.settings
        .logging
        .dir
        .join(format!("executor_{id}_fail.log"))
}

/// Tells the repository and writes the failure file. `backup` gets the report's answer.
pub async fn report(deps: &EngineDeps, id: &TrialId, backup: &mut Backup, reason: &str) {
    let request = Outbound::new(
        Service::TrialRepository,
        Method::PUT,
        format!("trial/{id}/"),
    )
    .json(json!({"status": "FAILED"}));
    let reply = deps.services.send(&request).await;
    match &reply {
        Ok(r) if r.status == 204 => {
            info!("trial repository told FAILED");
            backup.data.repository_status = Some("FAILED".to_owned());
        }
        Ok(r) => warn!(
            status = r.status,
            "trial repository refused the FAILED status"
        ),
        Err(e) => warn!(error = %e, "could not tell the trial repository FAILED"),
    }
    let redactor = deps.redactor.with(backup.data.token.as_deref());
    backup
        .data
        .record(record(REPORT_LABEL, &request, &reply, &redactor));
    write_file(deps, id, backup, reason, &redactor).await;
}

async fn write_file(
    deps: &EngineDeps,
    id: &TrialId,
    backup: &Backup,
    reason: &str,
    redactor: &Redactor,
) {
    let state = match backup.position {
        Position::Run(step) => step.name().to_owned(),
        Position::Wait(wait) => format!("Waiting ({wait:?})"),
    };
    let mut content = json!({
        "trial_id": id.as_str(),
        "failed_at": Utc::now(),
        "reason": reason,
        "parameters": {
            "state": state,
            "status": "Failed",
            "kpi_status": backup.data.kpi_status,
            "trial_info": backup.data.info,
            "token": backup.data.token.as_ref().map(|_| REDACTED),
            "accepted_signals": backup.accepted,
        },
        "responses": *backup.data.responses,
    });
    redactor.value(&mut content);
    let path = failure_file(deps, id);
    let text = match serde_json::to_string_pretty(&content) {
        Ok(text) => text,
        Err(e) => {
            error!(error = %e, "cannot serialise the failure file");
            return;
        }
    };
    if let Err(e) = tokio::fs::create_dir_all(&deps.settings.logging.dir).await {
        error!(error = %e, dir = %deps.settings.logging.dir.display(), "cannot create the log directory");
    }
    match tokio::fs::write(&path, text).await {
        Ok(()) => info!(file = %path.display(), "failure file written"),
        Err(e) => error!(error = %e, file = %path.display(), "cannot write the failure file"),
    }
}
