//! Races a review found: a restore racing a delete, a schedule whose save fails, a failed
//! trial recovered before its failure procedure was done. Each refused or finished change
//! must leave nothing behind.

use std::sync::atomic::Ordering;

use chrono::Utc;
use futures_util::future::join_all;
use lcm::domain::TrialId;
use lcm::engine::sequence::Step;
use lcm::engine::state::{Checkpoint, Failure, Lifecycle, Position};
use lcm::sim::{Component, Fault, FaultAction, Gate, Platform};
use lcm::store::sqlite::SqliteBackend;
use lcm::store::{Backend, Op, TrialRecord};
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_a_delete_answers_no_request_of_the_trial_leaves() {
    let app = spawn_app_with_settings(single_attempt).await;
    let raced: Vec<String> = (0..8).map(|i| format!("raced-{i}")).collect();
    for id in &raced {
        app.platform
            .inject(flight_plan_fault(id, FaultAction::Status(500)));
        app.start_trial(id).await;
    }
    for id in &raced {
        app.wait_failed(id).await;
    }
    // Each trial is restored and deleted at the same moment.
    let app = &app;
    let answers = join_all(raced.iter().map(|id| async move {
        let (restore, delete) = (
            format!("/debug/engine/{id}/restore"),
            format!("/debug/engine/{id}?force=true"),
        );
        let (restored, deleted) = tokio::join!(app.post(&restore, None), app.delete(&delete));
        (Utc::now(), restored, deleted)
    }))
    .await;
    for (_, restored, deleted) in &answers {
        assert_eq!(deleted.status, StatusCode::OK, "{deleted:?}");
        assert_stopped_or_gone(restored, StatusCode::OK);
    }
    // A trial run to IDLE meanwhile: long enough for a stray executor to send something.
    app.start_trial("sentinel").await;
    app.wait_waiting("sentinel", "operator (active or finish)")
        .await;
    // The simulators note a request when they read it, which a loaded machine can put off:
    // the one request in flight when the delete came (and was cancelled) may be read after
    // its answer. An executor left running would send the rest of the trial.
    for (id, (deleted_at, _, _)) in raced.iter().zip(&answers) {
        let late: Vec<String> = app
            .platform
            .requests_for(id)
            .iter()
            .filter(|r| r.at > *deleted_at)
            .map(|r| r.line())
            .collect();
        assert!(late.len() <= 1, "{id} sent after its delete: {late:?}");
        assert_eq!(
            app.get(&format!("/trial/{id}/status")).await.status,
            StatusCode::NOT_FOUND
        );
    }
}

/// A call that raced a delete: taken before it (`taken`), or refused because the engine
/// stopped before it answered (503) or was already removed (404); never a refusal that
/// blames the trial's phase.
fn assert_stopped_or_gone(answer: &Answer, taken: StatusCode) {
    match answer.status {
        StatusCode::SERVICE_UNAVAILABLE => assert_eq!(
            answer.body["detail"],
            lcm::engine::executor::STOPPED,
            "{answer:?}"
        ),
        status => assert!(
            status == taken || status == StatusCode::NOT_FOUND,
            "{answer:?}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_racing_a_delete_is_taken_or_told_the_engine_stopped() {
    let app = spawn_app().await;
    let raced: Vec<String> = (0..20).map(|i| format!("signalled-{i}")).collect();
    join_all(raced.iter().map(|id| app.start_to_idle(id))).await;
    let app = &app;
    let answers = join_all(raced.iter().map(|id| async move {
        let (active, delete) = (
            format!("/trial/{id}/active"),
            format!("/debug/engine/{id}?force=true"),
        );
        tokio::join!(app.post(&active, None), app.delete(&delete))
    }))
    .await;
    for (signalled, deleted) in &answers {
        assert_eq!(deleted.status, StatusCode::OK, "{deleted:?}");
        assert_stopped_or_gone(signalled, StatusCode::OK);
    }
}

#[tokio::test]
async fn a_delete_that_was_not_saved_changes_nothing_and_the_trial_goes_on() {
    let (app, broken) = spawn_app_with_flaky_store(AppOptions::default()).await;
    let id = "undeleted";
    app.start_trial(id).await;
    app.wait_waiting(id, "operator (active or finish)").await;
    let token = app.token_of(id);
    let paused = app.post(&format!("/trial/{id}/pause"), None).await;
    assert_eq!(paused.status, StatusCode::OK, "{paused:?}");

    broken.store(true, Ordering::SeqCst);
    let refused = app.delete(&format!("/debug/engine/{id}?force=true")).await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{refused:?}"
    );
    assert!(refused.detail().contains("not saved"), "{refused:?}");
    broken.store(false, Ordering::SeqCst);

    let status = app.trial_status(id).await;
    assert_eq!(status["status"], "Waiting", "{status}");
    assert_eq!(
        status["paused"], true,
        "the pause came back with the engine: {status}"
    );
    let engines = app.engines().await;
    assert!(engines.iter().any(|(e, _)| e == id), "{engines:?}");
    // The token was not revoked: it still opens the trial's callbacks.
    let again = app.callback(id, "slice", Some(&token)).await;
    assert_ok_saying(&again, "already registered");
    let resumed = app.post(&format!("/trial/{id}/resume"), None).await;
    assert_eq!(resumed.status, StatusCode::OK, "{resumed:?}");
    app.drive_to_finished(id).await;

    let deleted = app.delete(&format!("/debug/engine/{id}?force=true")).await;
    assert_eq!(deleted.status, StatusCode::OK, "{deleted:?}");
    let revoked = app.callback(id, "slice", Some(&token)).await;
    assert_eq!(revoked.status, StatusCode::UNAUTHORIZED, "{revoked:?}");
}

#[tokio::test]
async fn an_ended_engine_whose_delete_was_not_saved_still_leaves_memory() {
    let (app, broken) = spawn_app_with_flaky_store(AppOptions {
        settings: Box::new(|s| s.engine.keep_finished_secs = 2),
        ..AppOptions::default()
    })
    .await;
    let id = "ended-undeleted";
    app.run_to_finished(id).await;
    broken.store(true, Ordering::SeqCst);
    let refused = app.delete(&format!("/debug/engine/{id}?force=true")).await;
    broken.store(false, Ordering::SeqCst);
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{refused:?}"
    );
    assert_eq!(app.trial_status(id).await["engine_status"], "Finished");
    app.wait_engine_gone(id).await;
    assert_eq!(
        app.trial_status(id).await["engine_status"],
        "Finished",
        "read from the store once it left memory"
    );
}

/// Adds trial `id` to the platform, whose trial enforcement refuses its flight plan once (a
/// failure of the step `EnforceUavPlan`, with one attempt).
fn add_trial_refused_at_flightplan(app: &TestApp, id: &str) {
    app.platform.add_trial(Platform::trial(id, None));
    app.platform.inject(
        Fault::new(
            Component::Enforcement,
            "POST",
            "/flightplan",
            FaultAction::Status(400),
        )
        .for_trial(id)
        .times(1),
    );
}

#[tokio::test]
async fn an_ended_engine_whose_end_was_not_saved_stays_in_memory_until_it_is() {
    let (app, faults) = spawn_app_with_store_faults(
        AppOptions {
            settings: Box::new(|s| s.engine.keep_finished_secs = 1),
            ..AppOptions::default()
        },
        StoreFaults {
            refused: RefusedSaves::of(Lifecycle::is_ended),
            ..StoreFaults::default()
        },
    )
    .await;
    let saves = faults.refused;
    let id = "end-unsaved";
    saves.refusing.store(true, Ordering::SeqCst);
    app.run_to_finished(id).await;
    // The end is saved again and again; the engine does not leave memory meanwhile, although
    // it ended more than `keep_finished_secs` ago by the first save again. (A refused save
    // counts once or twice: the store tries a write batched with others again alone.)
    eventually_at_least("the end to be saved again", 3, || {
        saves.refused.load(Ordering::SeqCst)
    })
    .await;
    assert!(
        app.engines().await.iter().any(|(e, _)| e == id),
        "an engine whose end the store does not hold left memory"
    );
    assert_eq!(app.trial_status(id).await["engine_status"], "Finished");

    saves.refusing.store(false, Ordering::SeqCst);
    app.wait_engine_gone(id).await;
    assert_eq!(saves.passed.load(Ordering::SeqCst), 1);
    assert_eq!(
        app.trial_status(id).await["engine_status"],
        "Finished",
        "read from the store once it left memory"
    );
}

#[tokio::test]
async fn a_failure_that_was_not_saved_is_reported_once_the_store_takes_it() {
    let (app, faults) = spawn_app_with_store_faults(
        AppOptions {
            settings: Box::new(single_attempt),
            ..AppOptions::default()
        },
        StoreFaults {
            refused: RefusedSaves::of(|lifecycle| lifecycle == Lifecycle::Failed),
            ..StoreFaults::default()
        },
    )
    .await;
    let saves = faults.refused;
    let id = "failure-unsaved";
    add_trial_refused_at_flightplan(&app, id);
    saves.refuse(true);
    app.schedule_in(id, 300).await;
    // The executor's save and the watchdog's are refused, then tried again a second later:
    // long after a report would have gone, none has.
    saves.wait_refused("the failure", 3).await;
    assert_never_reported_failed(&app, id);
    assert!(app.failure_file(id).is_none(), "no failure file either");

    saves.refuse(false);
    let status = app.wait_failed(id).await;
    assert_eq!(status["engine_status"], "Failed", "{status}");
    assert_eq!(app.platform.last_status(id).as_deref(), Some("FAILED"));
    assert!(app.failure_file(id).is_some());
}

#[tokio::test]
async fn an_abort_a_skip_or_a_restore_that_was_not_saved_is_not_made() {
    let (app, broken) = spawn_app_with_flaky_store(AppOptions {
        settings: Box::new(single_attempt),
        ..AppOptions::default()
    })
    .await;
    let id = "unaborted";
    add_trial_refused_at_flightplan(&app, id);
    app.schedule_in(id, 300).await;
    app.wait_failed(id).await;

    broken.store(true, Ordering::SeqCst);
    for action in ["abort", "skip", "restore"] {
        let path = match action {
            "abort" => format!("/trial/{id}/abort"),
            _ => format!("/debug/engine/{id}/{action}"),
        };
        // Restore takes no body.
        let body = (action != "restore").then(|| serde_json::json!({"reason": "test"}));
        let refused = app.post(&path, body).await;
        assert_eq!(
            refused.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{action}: {refused:?}"
        );
    }
    broken.store(false, Ordering::SeqCst);
    let status = app.trial_status(id).await;
    assert_eq!(
        (
            status["engine_status"].as_str(),
            status["aborting"].as_bool()
        ),
        (Some("Failed"), Some(false)),
        "{status}"
    );
    let kinds = app.event_kinds(id).await;
    for kind in ["abort_requested", "cleanup_started", "skipped"] {
        assert!(!kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }
    // The restore runs the failed step again, not a clean-up or the step after it.
    let restored = app.post(&format!("/debug/engine/{id}/restore"), None).await;
    assert_eq!(restored.status, StatusCode::OK, "{restored:?}");
    app.wait_waiting(id, "operator (active or finish)").await;
    let plans = lines(&app, id)
        .iter()
        .filter(|l| *l == "POST /flightplan")
        .count();
    assert_eq!(plans, 2, "the flight plan was sent again");
}

#[tokio::test]
async fn a_reschedule_that_was_not_saved_keeps_the_saved_start_time() {
    let (app, broken) = spawn_app_with_flaky_store(AppOptions::default()).await;
    let id = "moved";
    let hour = Utc::now() + chrono::Duration::hours(1);
    let job = || async {
        let body = app.get("/status").await.body;
        body["scheduled_trials"]
            .as_array()
            .and_then(|jobs| jobs.iter().find(|job| job["id"] == id).cloned())
    };
    app.platform.add_trial(Platform::trial(id, Some(hour)));
    let first = app.post("/debug/trial/schedule-all", None).await;
    assert_eq!(
        first.body["scheduled"],
        serde_json::json!([id]),
        "{first:?}"
    );
    let saved = job().await.expect("the job is listed");

    app.platform
        .add_trial(Platform::trial(id, Some(hour + chrono::Duration::hours(1))));
    broken.store(true, Ordering::SeqCst);
    let refused = app.post("/debug/trial/schedule-all", None).await;
    broken.store(false, Ordering::SeqCst);
    assert_eq!(refused.status, StatusCode::OK, "{refused:?}");
    assert_eq!(refused.body["skipped"][0]["id"], id, "{refused:?}");
    assert_eq!(job().await, Some(saved), "the saved job stands");

    let moved = app.post("/debug/trial/schedule-all", None).await;
    assert_eq!(
        moved.body["rescheduled"],
        serde_json::json!([id]),
        "{moved:?}"
    );
}

#[tokio::test]
async fn a_pause_an_unschedule_or_a_toggle_that_was_not_saved_is_not_made() {
    let (app, broken) = spawn_app_with_flaky_store(AppOptions::default()).await;
    let (id, job) = ("unpaused", "unremoved");
    app.start_trial(id).await;
    app.wait_waiting(id, "operator (active or finish)").await;
    app.platform.add_trial(Platform::trial(job, None));
    app.schedule_in(job, 3_600_000).await;
    let automatic = app.get("/status").await.body["Automatic_scheduling"].clone();

    broken.store(true, Ordering::SeqCst);
    let refusals = [
        app.post(&format!("/trial/{id}/pause"), None).await,
        app.delete(&format!("/debug/trial/{job}/schedule")).await,
        app.post("/trial/scheduling", None).await,
    ];
    broken.store(false, Ordering::SeqCst);
    for refused in &refusals {
        assert_eq!(
            refused.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{refused:?}"
        );
    }
    assert_eq!(app.trial_status(id).await["paused"], false);
    let status = app.get("/status").await.body;
    assert_eq!(status["Automatic_scheduling"], automatic, "{status}");
    let jobs = status["scheduled_trials"].as_array().expect("a list");
    assert!(jobs.iter().any(|j| j["id"] == job), "{status}");
    // What was refused can be done once the store takes writes.
    let paused = app.post(&format!("/trial/{id}/pause"), None).await;
    assert_eq!(paused.status, StatusCode::OK, "{paused:?}");
    let removed = app.delete(&format!("/debug/trial/{job}/schedule")).await;
    assert_eq!(removed.status, StatusCode::OK, "{removed:?}");
}

#[tokio::test]
async fn a_schedule_that_was_not_saved_never_starts() {
    let (app, broken) = spawn_app_with_flaky_store(AppOptions::default()).await;
    let (unsaved, sentinel) = ("unsaved", "after-unsaved");
    app.platform.add_trial(Platform::trial(unsaved, None));
    broken.store(true, Ordering::SeqCst);
    // Two seconds ahead; on a busy machine the request can come after that time (a 400, "in
    // the past"): then a later one is sent, as `schedule_in` does. Any other answer ends it.
    let answered = std::sync::Mutex::new(None);
    let due = schedule_ahead(unsaved, 2000, |due| {
        let (app, answered) = (&app, &answered);
        async move {
            let answer = app
                .schedule(
                    unsaved,
                    &due.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                )
                .await;
            let body = answer.body.clone();
            let status = match answer.status {
                StatusCode::BAD_REQUEST => 400,
                _ => 200,
            };
            *answered.lock().unwrap() = Some(answer);
            (status, body)
        }
    })
    .await;
    let refused = answered.into_inner().unwrap().expect("an answer");
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{refused:?}"
    );
    broken.store(false, Ordering::SeqCst);
    // Once a trial due after it has started, the refused one's time has passed.
    app.start_after(sentinel, due).await;
    let engines = app.engines().await;
    assert!(!engines.iter().any(|(e, _)| e == unsaved), "{engines:?}");
    assert!(app.platform.requests_for(unsaved).is_empty());
}

/// A store holding trial `id` failed at its first step, its failure procedure not done when
/// the service stopped, and with `abort` if the operator asked for one meanwhile.
fn failed_mid_report(id: &str, abort: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = SqliteBackend::open(dir.path()).expect("store");
    let now = Utc::now();
    let mut checkpoint = Checkpoint::new(now);
    checkpoint.position = Position::Run(Step::GetCallbackToken);
    checkpoint.failure = Some(Failure {
        reason: "GetCallbackToken failed: trial enforcement answered 500".to_owned(),
        at: now,
        reported: false,
        cleanup_failed: false,
        leftovers: Vec::new(),
        abort: abort.map(str::to_owned),
    });
    store
        .apply(&[Op::PutTrial(Box::new(TrialRecord {
            id: TrialId::parse(id).expect("id"),
            lifecycle: Lifecycle::Failed,
            checkpoint,
            created_at: now,
            updated_at: now,
            ended_at: None,
        }))])
        .expect("saved");
    dir
}

#[tokio::test]
async fn a_failed_trial_recovered_mid_report_finishes_its_report_before_a_restore() {
    let id = "half-reported";
    let dir = failed_mid_report(id, None);
    let path = dir.path().to_path_buf();
    // The report waits until a restore has been tried meanwhile.
    let report = Gate::default();
    let held = report.clone();
    let app = spawn_app_with(AppOptions {
        settings: Box::new(move |s| s.store.data_dir = path),
        platform: Box::new(move |platform| {
            platform.add_trial(Platform::trial(id, None));
            platform.inject(
                Fault::new(
                    Component::Repository,
                    "PUT",
                    "/trial/",
                    FaultAction::HoldUntil(held),
                )
                .times(1),
            );
        }),
        ..AppOptions::default()
    })
    .await;
    let early = app.trial_status(id).await;
    assert_eq!(early["restorable"], false, "{early}");
    let refused = app.post(&format!("/debug/engine/{id}/restore"), None).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{refused:?}");
    assert!(
        refused.detail().contains("failure procedure"),
        "{refused:?}"
    );
    report.open();
    app.wait_failed(id).await;
    assert_eq!(app.platform.status_history(id), ["FAILED"]);
    assert!(app.failure_file(id).is_some());
    assert_eq!(
        app.post(&format!("/debug/engine/{id}/restore"), None)
            .await
            .status,
        StatusCode::OK
    );
    app.drive_to_finished(id).await;
}

#[tokio::test]
async fn an_abort_asked_for_mid_report_is_carried_out_after_a_restart() {
    let id = "abort-outlived";
    let dir = failed_mid_report(id, Some("operator: wrong facility"));
    let path = dir.path().to_path_buf();
    let app = spawn_app_with(AppOptions {
        settings: Box::new(move |s| s.store.data_dir = path),
        platform: Box::new(move |platform| platform.add_trial(Platform::trial(id, None))),
        ..AppOptions::default()
    })
    .await;
    let status = app
        .wait_for(id, "Aborted", |s| s["engine_status"] == "Aborted")
        .await;
    assert_eq!(
        status["abort_reason"], "operator: wrong facility",
        "{status}"
    );
    assert_eq!(app.platform.status_history(id), ["FAILED", "ABORTED"]);
    assert!(app.failure_file(id).is_some());
}

/// The service with handlers answered after 1 s at most, on a store that holds the writes `of`
/// picks while the returned gate is held.
async fn spawn_app_answering_late(of: fn(&Op) -> bool) -> (TestApp, HeldWrites) {
    let (app, faults) = spawn_app_with_store_faults(
        AppOptions {
            settings: Box::new(|s| s.server.handler_timeout_secs = 1),
            ..AppOptions::default()
        },
        StoreFaults {
            held: HeldWrites::of(of),
            ..StoreFaults::default()
        },
    )
    .await;
    (app, faults.held)
}

/// Sends `DELETE path` while the store holds its write: the answer comes too late (504, in
/// the `{"detail"}` shape), and the delete is still under way when it does.
async fn delete_answered_late(app: &TestApp, held: &HeldWrites, path: &str) {
    held.hold();
    // The write stays held until the answer is read, however long the delete takes to get to
    // it.
    let (late, ()) = tokio::join!(
        app.delete(path),
        eventually_at_least("the delete's write held by the store", 1, || {
            held.waiting.load(Ordering::SeqCst)
        })
    );
    let waiting = held.waiting.load(Ordering::SeqCst);
    held.release();
    assert_eq!(late.status, StatusCode::GATEWAY_TIMEOUT, "{late:?}");
    assert!(
        late.detail().contains("server.handler_timeout_secs"),
        "{late:?}"
    );
    assert_eq!(
        waiting, 1,
        "the delete waited for the store when it was answered"
    );
}

#[tokio::test]
async fn a_delete_answered_too_late_still_removes_the_engine() {
    let (app, held) = spawn_app_answering_late(|op| matches!(op, Op::DeleteTrial { .. })).await;
    let id = "late-delete";
    app.start_trial(id).await;
    app.wait_waiting(id, "operator (active or finish)").await;
    delete_answered_late(&app, &held, &format!("/debug/engine/{id}?force=true")).await;
    // Half made, it would leave a stopped engine that no delete removes and that blocks the id.
    app.wait_engine_gone(id).await;
    // Audited with the status its handling ended with, saved with the removal.
    let audit = app.get(&format!("/audit?trial_id={id}")).await.body;
    let deletes: Vec<&Value> = audit["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["action"] == "DELETE /debug/engine/{trial_id}")
        .collect();
    assert_eq!(deletes.len(), 1, "{audit}");
    assert_eq!(deletes[0]["outcome"], 200, "{audit}");
    app.schedule_in(id, 300).await;
    app.wait_engine(id).await;
}

#[tokio::test]
async fn an_unschedule_answered_too_late_still_removes_the_job() {
    let (app, held) = spawn_app_answering_late(|op| matches!(op, Op::Unschedule { .. })).await;
    let id = "late-unschedule";
    app.platform.add_trial(Platform::trial(id, None));
    app.schedule_in(id, 3_600_000).await;
    delete_answered_late(&app, &held, &format!("/debug/trial/{id}/schedule")).await;
    // Half made, it would leave a job without a timer, listed forever and blocking the id.
    eventually(&format!("the job of {id} to go"), || async {
        let status = app.get("/status").await.body;
        match status["scheduled_trials"].as_array() {
            Some(jobs) if jobs.is_empty() => Ok(()),
            _ => Err(status.to_string()),
        }
    })
    .await;
    app.schedule_in(id, 3_600_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toggles_of_automatic_scheduling_at_once_each_count() {
    let app = spawn_app().await;
    let before = app.get("/status").await.body["Automatic_scheduling"].clone();
    let toggles = join_all((0..10).map(|_| app.post("/trial/scheduling", None))).await;
    let mut shown: Vec<bool> = toggles
        .iter()
        .map(|t| {
            assert_eq!(t.status, StatusCode::OK, "{t:?}");
            t.body["Automatic_scheduling"] == true
        })
        .collect();
    shown.sort_unstable();
    // Ten toggles: five answered on, five off, and the switch is back where it was.
    assert_eq!(shown, [[false; 5], [true; 5]].concat(), "{toggles:?}");
    assert_eq!(
        app.get("/status").await.body["Automatic_scheduling"],
        before
    );
}

#[tokio::test]
async fn an_early_callback_outlives_a_delete_that_was_not_saved() {
    let (app, broken) = spawn_app_with_flaky_store(AppOptions::default()).await;
    let id = "kept-undeleted";
    for fault in first_deployment_hangs(id) {
        app.platform.inject(fault);
    }
    let token = app.slice_deployment_in_flight(id).await;
    let early = app.callback(id, "slice", Some(&token)).await;
    assert_ok_saying(&early, "when SliceDeployment completes");

    broken.store(true, Ordering::SeqCst);
    let refused = app.delete(&format!("/debug/engine/{id}?force=true")).await;
    broken.store(false, Ordering::SeqCst);
    assert_detail(&refused, StatusCode::SERVICE_UNAVAILABLE);

    // The engine brought back runs the step again and takes the callback kept before.
    app.wait_waiting(id, "operator (active or finish)").await;
}
