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

/// Tells the repository and writes the failure file of the trial failed at `checkpoint`; the
/// report's answers are recorded. Answers whether the repository took `FAILED`.
pub async fn report(shared: &EngineShared, checkpoint: &Checkpoint) -> bool {
    let deps = &shared.deps;
    let id = &shared.id;
    let request = Outbound::new(
        Service::TrialRepository,
        Method::PUT,
        format!("trial/{id}/"),
    )
    .json(json!({"status": REPORTED}));
    let redactor = deps.secrets.with(checkpoint.data.token.as_deref());
    // Once an abort is asked for, the attempt in flight is the last: the clean-up waits.
    let reply = deps
        .services
        .send_until(
            &request,
            recorder(&shared.journal, REPORT_LABEL, None, &request, &redactor),
            shared.abort_asked(),
            // The operator's pause holds the executor's requests, not the report.
            tokio::time::sleep,
        )
        .await;
    let told = match &reply {
        Ok(r) if r.status == 204 => {
            info!("trial repository told FAILED");
            true
        }
        Ok(r) => {
            warn!(
                status = r.status,
                "trial repository refused the FAILED status"
            );
            false
        }
        Err(e) => {
            warn!(error = %e, "could not tell the trial repository FAILED");
            false
        }
    };
    write_file(shared, checkpoint, &redactor).await;
    told
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
        // When the trial failed, not when the report of it ended.
        "failed_at": failure.map_or_else(Utc::now, |f| f.at),
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
    let before = tokio::fs::read(&path).await.ok();
    let text = tokio::task::spawn_blocking(move || {
        let mut content = document(&id, &checkpoint, &responses);
        redactor.value(&mut content);
        if let (Some(before), Value::Object(content)) = (before, &mut content) {
            let earlier = earlier_failures(&before, content.get("failed_at"));
            if !earlier.is_empty() {
                content.insert("earlier".to_owned(), Value::Array(earlier));
            }
        }
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
    match replace_file(&path, text).await {
        Ok(()) => info!(file = %path.display(), "failure file written"),
        Err(e) => error!(error = %e, file = %path.display(), "cannot write the failure file"),
    }
}

/// Writes `text` to `path` whole or not at all: into a file beside it first, then renamed over
/// it. A disk that fills up meanwhile leaves the file as it was, not cut short or empty.
async fn replace_file(path: &std::path::Path, text: String) -> std::io::Result<()> {
    let written = beside(path);
    let result = match tokio::fs::write(&written, text).await {
        Ok(()) => tokio::fs::rename(&written, path).await,
        Err(e) => Err(e),
    };
    if result.is_err() {
        let _ = tokio::fs::remove_file(&written).await;
    }
    result
}

/// The file a new version of `path` is written to before it is renamed over it; a kill in
/// between leaves it there.
fn beside(path: &std::path::Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(".tmp");
    path.with_file_name(name)
}

/// The most earlier failures a failure file lists.
const EARLIER_KEPT: usize = 20;

/// The failures a trial's failure file named before the one failed at `failed_at` (`before`,
/// its text), oldest first, each `{"reason", "failed_at"}`, so a failed clean-up's file still
/// says why the trial failed in the first place: the file's own failure is added unless it is
/// this one written again (after a restart, say).
fn earlier_failures(before: &[u8], failed_at: Option<&Value>) -> Vec<Value> {
    let Ok(Value::Object(mut before)) = serde_json::from_slice::<Value>(before) else {
        return Vec::new();
    };
    let mut earlier = match before.remove("earlier") {
        Some(Value::Array(earlier)) => earlier,
        _ => Vec::new(),
    };
    let last = json!({
        "reason": before.remove("reason").unwrap_or(Value::Null),
        "failed_at": before.remove("failed_at").unwrap_or(Value::Null),
    });
    if last["reason"] != Value::Null
        && Some(&last["failed_at"]) != failed_at
        && earlier.last() != Some(&last)
    {
        earlier.push(last);
    }
    let extra = earlier.len().saturating_sub(EARLIER_KEPT);
    earlier.drain(..extra);
    earlier
}

/// Notes in the trial's failure file, if it has one, that the trial ended after that failure
/// (`lifecycle`: restored and finished, or cleaned up by an abort): what the file says was left
/// deployed is not any more, and a reader at the file alone learns it.
pub async fn resolve_file(shared: &EngineShared, lifecycle: Lifecycle) {
    let how = match lifecycle {
        Lifecycle::Aborted => "aborted: its clean-up undid everything it had deployed",
        Lifecycle::Finished => "restored, and finished",
        // Not ended: the file still says what holds.
        Lifecycle::Running | Lifecycle::Waiting | Lifecycle::Failed | Lifecycle::Stopped => return,
    };
    let path = failure_file(&shared.deps.settings, &shared.id);
    let Ok(text) = tokio::fs::read(&path).await else {
        return;
    };
    let Ok(Value::Object(mut content)) = serde_json::from_slice::<Value>(&text) else {
        warn!(file = %path.display(), "the failure file is not the JSON it was written as: left as it is");
        return;
    };
    content.insert(
        "resolved".to_owned(),
        json!({"at": Utc::now(), "engine_status": lifecycle.engine_status(), "how": how}),
    );
    let text = serde_json::to_string_pretty(&content).unwrap_or_default();
    match replace_file(&path, text).await {
        Ok(()) => info!(file = %path.display(), "failure file marked resolved"),
        Err(e) => {
            warn!(error = %e, file = %path.display(), "cannot mark the failure file resolved")
        }
    }
}

/// Removes the failure file of a trial the service has forgotten (deleted, or purged after
/// its retention): what it says is of no trial any more. A new version's leftover beside it
/// goes too.
pub async fn remove_file(settings: &Settings, id: &TrialId) {
    let path = failure_file(settings, id);
    for path in [beside(&path), path] {
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {
                info!(trial = %id, file = %path.display(), "failure file of a forgotten trial removed")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                warn!(trial = %id, error = %e, file = %path.display(), "cannot remove the failure file of a forgotten trial")
            }
        }
    }
}

/// The trials that have a failure file in the log directory, or the leftover of one's new
/// version.
pub async fn trials_with_files(settings: &Settings) -> Vec<TrialId> {
    let Ok(mut dir) = tokio::fs::read_dir(&settings.logging.dir).await else {
        return Vec::new();
    };
    let mut ids = Vec::new();
    while let Ok(Some(entry)) = dir.next_entry().await {
        let name = entry.file_name();
        let id = name
            .to_str()
            .map(|n| {
                n.strip_prefix('.')
                    .and_then(|n| n.strip_suffix(".tmp"))
                    .unwrap_or(n)
            })
            .and_then(|n| n.strip_prefix("executor_"))
            .and_then(|n| n.strip_suffix("_fail.log"))
            .and_then(|id| TrialId::parse(id).ok());
        ids.extend(id);
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(reason: &str, failed_at: &str, earlier: Value) -> Vec<u8> {
        json!({"reason": reason, "failed_at": failed_at, "earlier": earlier})
            .to_string()
            .into_bytes()
    }

    #[tokio::test]
    async fn a_failure_file_is_replaced_whole_or_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("executor_t_fail.log");
        std::fs::write(&path, "first").unwrap();
        replace_file(&path, "second".to_owned()).await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "second");
        let names = |dir: &std::path::Path| -> Vec<String> {
            std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(names(dir.path()), ["executor_t_fail.log"]);
        // The write fails (here: where it writes first is a directory, as a full disk would
        // fail it): the file keeps what it held.
        std::fs::create_dir(dir.path().join(".executor_t_fail.log.tmp")).unwrap();
        assert!(replace_file(&path, "third".to_owned()).await.is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "second");
    }

    #[test]
    fn a_failure_file_keeps_the_failures_before_it_once_each() {
        let first = file("a failed", "t1", json!([]));
        let listed = earlier_failures(&first, Some(&json!("t2")));
        assert_eq!(listed, [json!({"reason": "a failed", "failed_at": "t1"})]);
        // The same failure written again (after a restart) adds nothing.
        assert!(earlier_failures(&first, Some(&json!("t1"))).is_empty());
        // The same reason again, a later failure: both are listed.
        let second = file("a failed", "t2", Value::Array(listed));
        let listed = earlier_failures(&second, Some(&json!("t3")));
        assert_eq!(listed.len(), 2, "{listed:?}");
        let many: Vec<Value> = (0..30).map(|i| json!({"reason": i})).collect();
        let kept = earlier_failures(&file("c", "t", Value::Array(many)), Some(&json!("u")));
        assert_eq!(kept.len(), EARLIER_KEPT);
        assert_eq!(kept.last().map(|e| e["reason"].clone()), Some(json!("c")));
        assert!(earlier_failures(b"not json", None).is_empty());
    }
}
