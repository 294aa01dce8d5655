//! Operators steer trials (SPEC §14): abort with a clean-up that undoes exactly what the trial
//! deployed, from every point of the trial; a clean-up that fails for good; failed trials
//! that are cleaned up on their own; pause, resume and step; skip.

use std::time::Duration;

use lcm::sim::{Component, Fault, FaultAction, Gate, Platform};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

/// The first event of a kind in a trial's history.
async fn first_event(app: &TestApp, id: &str, kind: &str) -> Value {
    app.history(id)
        .await
        .into_iter()
        .find(|e| e["event"] == kind)
        .unwrap_or_else(|| panic!("{id} has no {kind} event"))
}

/// Aborts a trial with a reason and waits until its clean-up is done.
async fn abort(app: &TestApp, id: &str, reason: &str) -> Value {
    abort_shown(app, id, reason, reason).await
}

/// [`abort`], with the reason kept and shown as `shown`.
async fn abort_shown(app: &TestApp, id: &str, reason: &str, shown: &str) -> Value {
    let answer = app.ask_abort(id, reason).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let status = app
        .wait_for(id, "Aborted", |s| s["engine_status"] == "Aborted")
        .await;
    assert_eq!(status["aborted"], true);
    assert_eq!(status["finished"], false);
    assert_eq!(status["abort_reason"], shown);
    let kinds = app.event_kinds(id).await;
    for kind in [
        "abort_requested",
        "cleanup_started",
        "cleanup_completed",
        "trial_aborted",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "{id}: no {kind} in {kinds:?}"
        );
    }
    assert_eq!(
        first_event(app, id, "abort_requested").await["detail"],
        shown
    );
    assert_eq!(kinds.last().map(String::as_str), Some("trial_aborted"));
    status
}

/// Aborts a trial whose clean-up fails for good, first at `step`; its status then.
async fn abort_until_cleanup_fails(app: &TestApp, id: &str, step: &str) -> Value {
    assert_eq!(
        app.post(&format!("/trial/{id}/abort"), None).await.status,
        StatusCode::OK
    );
    let failed = app.wait_cleanup_failed(id).await;
    assert_failure_says(&failed, &format!("{step} failed"));
    assert_eq!(failed["state"], step, "where it failed: {failed}");
    failed
}

/// The request lines a trial sends up to its IDLE waiting point.
fn to_idle(id: &str) -> Vec<String> {
    full_sequence(id, false)[..12].to_vec()
}

fn with(mut lines: Vec<String>, more: &[&str], id: &str) -> Vec<String> {
    lines.extend(more.iter().map(|l| l.replace("{id}", id)));
    lines
}

/// The clean-up's requests when everything was deployed: KPIs finished, the measurement job
/// deleted, the slice closed, the repository told.
const FULL_CLEANUP: [&str; 5] = [
    "POST /markKPIData",
    "POST /markKPIData",
    "DELETE /measurementjobs/mj-{id}",
    "DELETE /sliceDeployment/{id}",
    "PUT /trial/{id}/",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_undoes_exactly_what_the_trial_deployed_at_every_point() {
    let app = spawn_app_with_settings(single_attempt).await;
    let long = FaultAction::Delay(Duration::from_secs(600));
    let (early, deploying, idle, active, closing, failed) = (
        "abort-early",
        "abort-deploying",
        "abort-idle",
        "abort-active",
        "abort-closing",
        "abort-failed",
    );
    let fault = |component, method, path: &str, action: FaultAction, trial: &str| {
        app.platform.inject(
            Fault::new(component, method, path, action)
                .for_trial(trial)
                .times(1),
        );
    };
    fault(Component::Repository, "GET", "/trial/", long.clone(), early);
    let deployment = Gate::default();
    fault(
        Component::Enforcement,
        "POST",
        "/sliceDeployment",
        FaultAction::HoldUntil(deployment.clone()),
        deploying,
    );
    fault(
        Component::Enforcement,
        "DELETE",
        "/sliceDeployment/",
        FaultAction::DropCallback,
        closing,
    );
    fault(
        Component::Enforcement,
        "POST",
        "/flightplan",
        FaultAction::Status(500),
        failed,
    );
    for id in [early, deploying, idle, active, closing, failed] {
        app.start_trial(id).await;
    }

    // Before the slice exists: only the repository is told. (The abort is sent once the
    // repository has the step's read: the step is shown before its request leaves.)
    app.wait_sent(early, "GET", "/trial/").await;
    abort(&app, early, "wrong trial").await;
    assert_eq!(
        lines(&app, early),
        [
            format!("GET /trial/{early}/"),
            format!("PUT /trial/{early}/")
        ]
    );
    assert_eq!(app.platform.status_history(early), ["ABORTED"]);

    // While the slice is being deployed: the abort lets the deployment have its answer, so
    // the slice it made is known and closed, not left on the facility.
    eventually("the slice deployment to be sent", || async {
        let sent = lines(&app, deploying);
        match sent.iter().any(|l| l == "POST /sliceDeployment") {
            true => Ok(()),
            false => Err(format!("{sent:?}")),
        }
    })
    .await;
    let answered = async {
        app.wait_event(deploying, "abort_requested", "").await;
        // As good as cleaning up: the trial shows it, and takes no pause meanwhile.
        let status = app.trial_status(deploying).await;
        assert_eq!(status["aborting"], true, "{status}");
        assert_eq!(status["abort_reason"], "facility closed", "{status}");
        let pause = app.post(&format!("/trial/{deploying}/pause"), None).await;
        assert_eq!(pause.status, StatusCode::CONFLICT, "{pause:?}");
        deployment.open();
    };
    tokio::join!(abort(&app, deploying, "facility closed"), answered);
    let answered: Vec<(String, Value)> =
        app.get(&format!("/trial/{deploying}/responses")).await.body["responses"]
            .as_array()
            .expect("list")
            .iter()
            .filter(|r| r["service"] == "trial_enforcement")
            .map(|r| {
                (
                    r["step"].as_str().unwrap_or_default().to_owned(),
                    r["status"].clone(),
                )
            })
            .collect();
    assert_eq!(
        answered,
        [
            ("SliceDeployment".to_owned(), json!(201)),
            ("CloseService".to_owned(), json!(200))
        ],
        "the slice was made, then closed"
    );
    assert_eq!(
        lines(&app, deploying),
        with(
            full_sequence(deploying, false)[..3].to_vec(),
            &["DELETE /sliceDeployment/{id}", "PUT /trial/{id}/"],
            deploying
        )
    );
    assert_eq!(app.platform.status_history(deploying), ["ABORTED"]);

    // At IDLE and at ACTIVE: everything is undone.
    app.wait_waiting(idle, WAITING_OPERATOR).await;
    let token = app.token_of(idle);
    abort(&app, idle, "weather").await;
    assert_eq!(lines(&app, idle), with(to_idle(idle), &FULL_CLEANUP, idle));
    assert_eq!(
        app.platform.status_history(idle),
        ["ACTIVATING_1", "ACTIVATING_2", "IDLE", "ABORTED"]
    );
    assert_eq!(app.platform.kpi_markings(idle), ["Idle", "Finished"]);
    assert_eq!(
        app.platform.kpi_markings(&format!("slice-{idle}")),
        ["Idle", "Finished"]
    );
    let revoked = app
        .call_as(Method::GET, &format!("/token/{idle}"), None, Some(&token))
        .await;
    // Revoked at the end: its components are told the trial has ended.
    assert_detail(&revoked, StatusCode::FORBIDDEN);
    assert!(revoked.detail().contains("has been aborted"), "{revoked:?}");

    app.wait_waiting(active, WAITING_OPERATOR).await;
    assert_eq!(
        app.post(&format!("/trial/{active}/active"), None)
            .await
            .status,
        StatusCode::OK
    );
    app.wait_waiting(active, "operator (finish)").await;
    abort(&app, active, "drone down").await;
    assert_eq!(
        lines(&app, active),
        with(
            full_sequence(active, true)[..15].to_vec(),
            &FULL_CLEANUP,
            active
        )
    );
    assert_eq!(
        app.platform.kpi_markings(active),
        ["Idle", "Active", "Finished"]
    );

    // During the slice-closed wait: the slice is closed again; nothing else is left.
    app.wait_waiting(closing, WAITING_OPERATOR).await;
    assert_eq!(
        app.post(&format!("/trial/{closing}/finish"), None)
            .await
            .status,
        StatusCode::OK
    );
    app.wait_waiting(closing, "slice callback (slice closed)")
        .await;
    abort(&app, closing, "slice stuck").await;
    assert_eq!(
        lines(&app, closing),
        with(
            full_sequence(closing, false),
            &["DELETE /sliceDeployment/{id}", "PUT /trial/{id}/"],
            closing
        )
        .into_iter()
        .filter(|l| !l.is_empty())
        .enumerate()
        // The finish's own last request (FINISHED) never went out: drop it from the plan.
        .filter(|(i, _)| *i != full_sequence(closing, false).len() - 1)
        .map(|(_, l)| l)
        .collect::<Vec<_>>()
    );
    assert_eq!(
        app.platform
            .status_history(closing)
            .last()
            .map(String::as_str),
        Some("ABORTED")
    );

    // A failed trial: its slice is closed after the failure was reported.
    app.wait_failed(failed).await;
    abort(&app, failed, "no time to restore").await;
    assert_eq!(
        lines(&app, failed),
        with(
            full_sequence(failed, false)[..6].to_vec(),
            &[
                "PUT /trial/{id}/",
                "DELETE /sliceDeployment/{id}",
                "PUT /trial/{id}/"
            ],
            failed
        )
    );
    assert_eq!(
        app.platform.status_history(failed),
        ["ACTIVATING_1", "FAILED", "ABORTED"]
    );

    // An ended trial is not aborted again; an unknown one is not found.
    let again = app.post(&format!("/trial/{idle}/abort"), None).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{again:?}");
    assert_eq!(
        app.post("/trial/never-heard-of/abort", None).await.status,
        StatusCode::NOT_FOUND
    );
    let listed = app.get("/trials?status=Aborted").await.body;
    assert_eq!(
        listed["trials"].as_array().map(Vec::len),
        Some(6),
        "{listed}"
    );
}

#[tokio::test]
async fn a_second_abort_while_cleaning_up_is_already_aborting_and_a_finished_trial_is_refused() {
    let app = spawn_app().await;
    let (id, done) = ("abort-twice", "abort-done");
    // The clean-up's first request is held until the test has sent its second abort.
    let deletion = app.hold_next(Component::Enforcement, "DELETE", "/measurementjobs/", id);
    app.start_trial(id).await;
    app.start_trial(done).await;
    app.wait_waiting(id, WAITING_OPERATOR).await;
    assert_eq!(
        app.post(&format!("/trial/{id}/abort"), None).await.status,
        StatusCode::OK
    );
    app.wait_for(id, "cleaning up", |s| s["step"] == "DeleteMeasurementJob")
        .await;
    let second = app.post(&format!("/trial/{id}/abort"), None).await;
    assert_ok_saying(&second, "already aborting");
    let status = app.trial_status(id).await;
    assert_eq!(status["aborting"], true);
    assert_eq!(status["abort_reason"], "aborted by the operator");
    deletion.open();
    app.wait_for(id, "Aborted", |s| s["engine_status"] == "Aborted")
        .await;
    app.drive_to_finished(done).await;
    let refused = app.post(&format!("/trial/{done}/abort"), None).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{refused:?}");
    for bad in [json!({"reason": "x".repeat(501)}), json!({"why": "typo"})] {
        let answer = app.post(&format!("/trial/{done}/abort"), Some(bad)).await;
        assert_eq!(
            answer.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{answer:?}"
        );
    }
}

#[tokio::test]
async fn the_slice_callback_during_a_clean_up_says_where_the_clean_up_goes() {
    let app = spawn_app().await;
    let id = "abort-closing";
    app.platform.inject(
        Fault::new(
            Component::Enforcement,
            "DELETE",
            "/sliceDeployment/",
            FaultAction::DropCallback,
        )
        .for_trial(id),
    );
    app.start_trial(id).await;
    app.wait_waiting(id, WAITING_OPERATOR).await;
    let token = app.token_of(id);
    assert_eq!(
        app.post(&format!("/trial/{id}/abort"), None).await.status,
        StatusCode::OK
    );
    app.wait_waiting(id, "slice closed").await;
    let closed = app.callback(id, "slice", Some(&token)).await;
    assert_eq!(closed.status, StatusCode::OK, "{closed:?}");
    let message = closed.body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("next step UpdateStatusAborted"),
        "{closed:?}"
    );
    app.wait_for(id, "Aborted", |s| s["engine_status"] == "Aborted")
        .await;
}

/// Starts trial `id`, whose slice deployment is refused, and waits until it has failed while its
/// failure report (the trial's first repository status write) meets `report`.
async fn failed_and_reporting(app: &TestApp, id: &str, report: FaultAction) {
    app.platform.inject(
        Fault::new(
            Component::Enforcement,
            "POST",
            "/sliceDeployment",
            FaultAction::Status(400),
        )
        .for_trial(id),
    );
    app.platform.inject(
        Fault::new(Component::Repository, "PUT", "/trial/", report)
            .for_trial(id)
            .times(1),
    );
    app.start_trial(id).await;
    app.wait_for(id, "failed, still reporting", |s| {
        s["failed"] == true && s["restorable"] == false
    })
    .await;
}

#[tokio::test]
async fn an_abort_during_the_failure_report_is_answered_at_once_and_carried_out_after_it() {
    let app = spawn_app_with_settings(single_attempt).await;
    let id = "abort-reporting";
    // The repository holds the failure report's answer until the test lets it go.
    let report = Gate::new();
    failed_and_reporting(&app, id, FaultAction::HoldUntil(report.clone())).await;
    let answer = app.ask_abort(id, "aborted by the operator").await;
    assert_ok_saying(&answer, "the clean-up starts once the failure is reported");
    let shown = app.trial_status(id).await;
    assert_eq!(shown["aborting"], true, "{shown}");
    assert_eq!(shown["abort_reason"], "aborted by the operator", "{shown}");
    assert_eq!(shown["restorable"], false, "{shown}");
    let asked = |kinds: &[String]| kinds.iter().filter(|k| *k == "abort_requested").count();
    assert_eq!(
        asked(&app.event_kinds(id).await),
        1,
        "in the history when asked"
    );
    let again = app.post(&format!("/trial/{id}/abort"), None).await;
    assert_ok_saying(&again, "already aborting");
    // A restore would undo the abort: refused, before and after the report.
    let restore = format!("/debug/engine/{id}/restore");
    let refused = app.post(&restore, None).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{refused:?}");
    assert!(
        refused.detail().contains("an abort was asked for"),
        "{refused:?}"
    );
    assert_eq!(app.platform.status_history(id), ["FAILED"]);
    let reported_at = chrono::Utc::now();
    report.open();
    let status = app
        .wait_for(id, "Aborted", |s| s["engine_status"] == "Aborted")
        .await;
    assert_eq!(
        status["abort_reason"], "aborted by the operator",
        "{status}"
    );
    assert_eq!(
        app.platform.status_history(id),
        ["FAILED", "ABORTED"],
        "the failure was reported before the clean-up told the repository"
    );
    assert_eq!(asked(&app.event_kinds(id).await), 1, "once");
    let file = app.failure_file(id).expect("the failure file was written");
    let failed_at: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(file["failed_at"].clone()).expect("a time");
    assert!(
        failed_at < reported_at,
        "when the trial failed, not when its report ended: {file}"
    );
}

#[tokio::test]
async fn an_abort_during_the_failure_report_lets_no_attempt_follow_the_one_in_flight() {
    // Requests are tried again (the defaults): the failed step's fault is answered for good.
    let app = spawn_app().await;
    let id = "abort-cuts-retries";
    let report = Gate::new();
    failed_and_reporting(&app, id, FaultAction::HoldThenStatus(report.clone(), 503)).await;
    let answer = app.post(&format!("/trial/{id}/abort"), None).await;
    assert_ok_saying(&answer, "once the failure is reported");
    report.open();
    app.wait_for(id, "Aborted", |s| s["engine_status"] == "Aborted")
        .await;
    assert_eq!(app.platform.status_history(id), ["FAILED", "ABORTED"]);
}

#[tokio::test]
async fn an_abort_while_the_failure_report_waits_to_be_tried_again_cleans_up_at_once() {
    let app = spawn_app_with_settings(|s| s.executor.retry.max_backoff_ms = 600_000).await;
    let id = "abort-report-backoff";
    let busy = FaultAction::RetryAfter(503, lcm::sim::RetryAfter::Seconds(600));
    failed_and_reporting(&app, id, busy).await;
    app.wait_event(id, "step_retry", "trying again in 600")
        .await;
    let answer = app.ask_abort(id, "wrong facility").await;
    assert_ok_saying(&answer, "once the failure is reported");
    app.wait_for(id, "Aborted", |s| s["engine_status"] == "Aborted")
        .await;
    assert_eq!(app.platform.status_history(id), ["FAILED", "ABORTED"]);
}

#[tokio::test]
async fn an_abort_saved_during_the_report_starts_soon_after_a_store_that_refused_it_writes_again() {
    use lcm::engine::state::Lifecycle;

    let (app, refused) = spawn_app_refusing_saves(
        |lifecycle| matches!(lifecycle, Lifecycle::Failed | Lifecycle::Running),
        single_attempt,
    )
    .await;
    let id = "abort-outwaits-store";
    let report = Gate::new();
    failed_and_reporting(&app, id, FaultAction::HoldUntil(report.clone())).await;
    let answer = app.post(&format!("/trial/{id}/abort"), None).await;
    assert_ok_saying(&answer, "once the failure is reported");
    // The report ends while the store cannot write: the clean-up cannot start yet.
    refused.refuse(true);
    report.open();
    refused
        .wait_refused("the failure and the clean-up's start", 4)
        .await;
    refused.refuse(false);
    // Tried again within seconds (a minute would outlast this wait).
    app.wait_for(id, "Aborted", |s| s["engine_status"] == "Aborted")
        .await;
    assert_eq!(app.platform.status_history(id), ["FAILED", "ABORTED"]);
}

/// Trial `id` at IDLE, whose measurement job trial enforcement will not delete (500).
async fn at_idle_with_the_job_deletion_failing(app: &TestApp, id: &str) {
    app.start_trial(id).await;
    app.wait_waiting(id, WAITING_OPERATOR).await;
    app.platform.inject(
        Fault::new(
            Component::Enforcement,
            "DELETE",
            "/measurementjobs/",
            FaultAction::Status(500),
        )
        .for_trial(id),
    );
}

/// With `executor.cleanup_failed_after_secs` set, the log says the failed clean-up is tried
/// again on its own, and when.
#[tokio::test]
async fn the_log_says_when_a_failed_clean_up_is_tried_again_on_its_own() {
    let app = spawn_binary_with(BinaryOptions {
        env: &[("LCM__EXECUTOR__CLEANUP_FAILED_AFTER_SECS", "3600")],
        ..BinaryOptions::default()
    })
    .await;
    let id = "retried-on-its-own";
    at_idle_with_the_job_deletion_failing(&app, id).await;
    abort_until_cleanup_fails(&app, id, "DeleteMeasurementJob").await;
    let left = logged(&app, &[id, "still deployed"]).await;
    assert!(left.contains("tried again on its own in 3600 s"), "{left}");
}

#[tokio::test]
async fn the_log_says_a_clean_up_failed_what_it_left_and_that_abort_retries_it() {
    let app = spawn_binary().await;
    let id = "leaky-log";
    at_idle_with_the_job_deletion_failing(&app, id).await;
    abort_until_cleanup_fails(&app, id, "DeleteMeasurementJob").await;
    let failed = logged(&app, &[id, "the clean-up after an abort failed"]).await;
    assert!(failed.contains("ERROR"), "{failed}");
    let left = logged(&app, &[id, "still deployed", "abort retries it"]).await;
    assert!(
        left.contains("WARN") && left.contains(&format!("measurement_job mj-{id}")),
        "{left}"
    );
    assert!(
        !log_text(&app).contains("checkpoint kept for a restore"),
        "a failed clean-up cannot be restored"
    );

    app.platform.clear_faults();
    let again = app.post(&format!("/trial/{id}/abort"), None).await;
    assert_eq!(again.status, StatusCode::OK, "{again:?}");
    let retried = logged(&app, &[id, "aborting the failed trial"]).await;
    assert!(
        retried.contains("retrying the clean-up that failed"),
        "{retried}"
    );
    app.wait_for(id, "Aborted", |s| s["engine_status"] == "Aborted")
        .await;
    // The failure file, which names the job left, says the trial ended since.
    let file = eventually("the failure file marked resolved", || async {
        match app.failure_file(id) {
            Some(file) if file["resolved"].is_object() => Ok(file),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(file["resolved"]["engine_status"], "Aborted", "{file}");
    assert_eq!(
        file["cleanup_failed"], true,
        "the failure itself is kept: {file}"
    );
}

#[tokio::test]
async fn a_clean_up_step_that_fails_for_good_lets_the_rest_undo_what_they_can_and_abort_again_retries_it()
 {
    let app = spawn_app().await;
    let id = "leaky";
    at_idle_with_the_job_deletion_failing(&app, id).await;
    let failed = abort_until_cleanup_fails(&app, id, "DeleteMeasurementJob").await;
    assert_eq!(failed["aborting"], false, "{failed}");
    assert_eq!(failed["restorable"], false, "{failed}");
    // The slice was closed all the same: only the job is left on the facility, and the
    // repository was not told ABORTED.
    let expected = json!([{"kind": "measurement_job", "id": format!("mj-{id}")}]);
    assert_eq!(failed["leftovers"], expected);
    assert!(
        !app.platform
            .status_history(id)
            .iter()
            .any(|s| s == "ABORTED"),
        "{:?}",
        app.platform.status_history(id)
    );
    // The failure procedure writes the file once the failure is shown.
    let file = eventually("the failure file", || async {
        app.failure_file(id)
            .ok_or_else(|| "not written yet".to_owned())
    })
    .await;
    assert_eq!(file["cleanup_failed"], true);
    assert_eq!(file["leftovers"], expected);
    // (The file is written a moment before the procedure is shown done: until then a restore
    // is told to retry in a moment.)
    let restore = eventually("a restore refused for the failed clean-up", || async {
        let answer = app.post(&format!("/debug/engine/{id}/restore"), None).await;
        match answer.detail().contains("still running") {
            true => Err(format!("{answer:?}")),
            false => Ok(answer),
        }
    })
    .await;
    assert_eq!(restore.status, StatusCode::CONFLICT, "{restore:?}");
    assert!(restore.detail().contains("abort"), "{restore:?}");

    app.platform.clear_faults();
    assert_eq!(
        app.post(&format!("/trial/{id}/abort"), None).await.status,
        StatusCode::OK
    );
    let aborted = app
        .wait_for(id, "Aborted", |s| s["engine_status"] == "Aborted")
        .await;
    assert_eq!(aborted["leftovers"], json!([]));
    let sent = lines(&app, id);
    let markings = sent.iter().filter(|l| *l == "POST /markKPIData").count();
    assert_eq!(markings, 4, "the KPIs were finished once: {sent:?}");
    assert_eq!(
        sent.iter()
            .filter(|l| l.starts_with("DELETE /sliceDeployment/"))
            .count(),
        1,
        "{sent:?}"
    );
}

/// Aborts trial `id` while its slice deployment is held at `deployment`, letting it be answered
/// once the abort waits for that answer.
async fn abort_as_the_deployment_is_answered(app: &TestApp, id: &str, deployment: &Gate) {
    let open = async {
        app.wait_event(id, "abort_requested", "").await;
        deployment.open();
    };
    let abort = format!("/trial/{id}/abort");
    let (aborted, ()) = tokio::join!(app.post(&abort, None), open);
    assert_eq!(aborted.status, StatusCode::OK, "{aborted:?}");
}

#[tokio::test]
async fn a_slice_created_callback_after_an_abort_is_not_taken_for_the_closing() {
    let app = spawn_app().await;
    let id = "created-late";
    let deployment = app.hold_next(Component::Enforcement, "POST", "/sliceDeployment", id);
    app.slice_closes_without_callback(id);
    let token = app.slice_deployment_in_flight(id).await;
    abort_as_the_deployment_is_answered(&app, id, &deployment).await;
    // The creation's callback, sent after the deployment's answer (during the close, or at
    // the wait), is taken as such: the clean-up still waits for the closing's.
    app.wait_event(id, "signal_accepted", "slice callback (slice created")
        .await;
    app.wait_waiting(id, "the slice callback (slice closed)")
        .await;
    let closed = app.callback(id, "slice", Some(&token)).await;
    assert_eq!(closed.status, StatusCode::OK, "{closed:?}");
    let status = app
        .wait_for(id, "Aborted", |s| s["engine_status"] == "Aborted")
        .await;
    assert_eq!(status["leftovers"], json!([]), "{status}");
}

/// A component that answers the slice deployment the abort let through but never sends its
/// slice-created callback, only the closing's: the one callback is taken as the creation's, and
/// when no second one comes the close is sent again. Its 404 says the slice is closed: the trial
/// ends aborted, with nothing left and no `FAILED` told to the repository.
#[tokio::test]
async fn a_closing_callback_taken_for_the_creation_s_is_settled_by_closing_again() {
    let app = spawn_app_with_settings(|s| s.executor.callback_timeout_secs = 3).await;
    let id = "closing-taken-early";
    let deployment = Gate::default();
    app.platform.inject(slice_deployment_fault(
        id,
        FaultAction::HoldThenDropCallback(deployment.clone()),
    ));
    app.platform.inject(
        Fault::new(
            Component::Enforcement,
            "DELETE",
            "/sliceDeployment/",
            FaultAction::Status(404),
        )
        .for_trial(id)
        .after(1),
    );
    app.slice_deployment_in_flight(id).await;
    abort_as_the_deployment_is_answered(&app, id, &deployment).await;
    app.wait_event(id, "close_asked_again", "may have been the closing's")
        .await;
    let status = app
        .wait_for(id, "Aborted", |s| s["engine_status"] == "Aborted")
        .await;
    assert_eq!(status["leftovers"], json!([]), "{status}");
    assert_eq!(status["cleanup_failed"], false, "{status}");
    let written = app.platform.status_history(id);
    assert_eq!(
        written.last().map(String::as_str),
        Some("ABORTED"),
        "{written:?}"
    );
    assert!(!written.contains(&"FAILED".to_owned()), "{written:?}");
    assert_eq!(sent(&app, id, "DELETE", "/sliceDeployment/").len(), 2);
}

#[tokio::test]
async fn an_abort_that_cancels_a_kpi_marking_in_flight_closes_the_marking() {
    let app = spawn_app().await;
    let id = "marking-cut";
    let marking = app.hold_next(Component::Kpi, "POST", "/markKPIData", id);
    app.start_trial(id).await;
    let markings = || {
        app.platform
            .requests_for(id)
            .into_iter()
            .filter(|r| r.path == "/markKPIData")
            .filter_map(|r| Some(r.body?["Marking"].as_str()?.to_owned()))
            .collect::<Vec<_>>()
    };
    eventually("the Idle marking held at KPI monitoring", || async {
        if markings().is_empty() {
            Err("no marking yet".to_owned())
        } else {
            Ok(())
        }
    })
    .await;
    // KPI monitoring has the marking; the abort cancels the request before its answer.
    let aborted = app.post(&format!("/trial/{id}/abort"), None).await;
    assert_eq!(aborted.status, StatusCode::OK, "{aborted:?}");
    marking.open();
    let status = app
        .wait_for(id, "Aborted", |s| s["engine_status"] == "Aborted")
        .await;
    assert_eq!(status["kpi_status"], "Finished", "{status}");
    assert_eq!(markings(), ["Idle", "Finished", "Finished"]);
}

#[tokio::test]
async fn a_kpi_marking_refused_at_once_opened_nothing_to_close() {
    let app = spawn_app().await;
    let id = "marking-refused";
    app.platform.inject(
        kpi_marking_fault(FaultAction::Status(400))
            .for_trial(id)
            .times(1),
    );
    app.start_trial(id).await;
    let failed = app.wait_failed(id).await;
    assert_failure_says(&failed, "SendKpiIdle failed");
    let aborted = app.post(&format!("/trial/{id}/abort"), None).await;
    assert_eq!(aborted.status, StatusCode::OK, "{aborted:?}");
    app.wait_for(id, "Aborted", |s| s["engine_status"] == "Aborted")
        .await;
    let sent = lines(&app, id);
    assert_eq!(
        sent.iter().filter(|l| *l == "POST /markKPIData").count(),
        1,
        "only the refused marking: {sent:?}"
    );
}

#[tokio::test]
async fn kpi_monitoring_down_for_good_keeps_no_slice_deployed() {
    let app = spawn_app_with_settings(single_attempt).await;
    let id = "kpi-down";
    app.start_to_idle(id).await;
    app.platform
        .inject(kpi_marking_fault(FaultAction::Status(503)));
    let failed = abort_until_cleanup_fails(&app, id, "SendKpiFinish").await;
    // Only the KPI marking is left: the job and the slice were undone after it failed.
    assert_eq!(failed["leftovers"], json!([]), "{failed}");
    // The failure procedure tells the repository once the failure is shown.
    eventually("FAILED reported", || async {
        match app.platform.trial_status(id).as_deref() {
            Some("FAILED") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let sent = lines(&app, id);
    let refused = sent
        .iter()
        .rposition(|l| l == "POST /markKPIData")
        .expect("the refused marking");
    assert_eq!(
        sent[refused + 1..],
        [
            format!("DELETE /measurementjobs/mj-{id}"),
            format!("DELETE /sliceDeployment/{id}"),
            format!("PUT /trial/{id}/"),
        ],
        "the job and the slice undone, then FAILED reported: {sent:?}"
    );

    // KPI monitoring back: abort again finishes the marking and ends the trial.
    app.platform.clear_faults();
    let status = abort(&app, id, "aborted by the operator").await;
    assert_eq!(status["leftovers"], json!([]));
    for marked in [id.to_owned(), format!("slice-{id}")] {
        let markings = app.platform.kpi_markings(&marked);
        assert_eq!(
            markings.last().map(String::as_str),
            Some("Finished"),
            "{marked}: {markings:?}"
        );
    }
    assert_eq!(app.platform.trial_status(id).as_deref(), Some("ABORTED"));
}

#[tokio::test]
async fn a_failed_trial_left_alone_is_cleaned_up_on_its_own() {
    let app = spawn_app_with_settings(|s| {
        single_attempt(s);
        // Long enough for the restore to come first, however slow the test.
        s.executor.cleanup_failed_after_secs = Some(5);
    })
    .await;
    let (restored, left) = ("restored-in-time", "left-alone");
    for id in [restored, left] {
        app.platform
            .inject(flight_plan_fault(id, FaultAction::Status(500)));
    }
    app.start_trial(restored).await;
    app.wait_failed(restored).await;
    assert_eq!(
        app.post(&format!("/debug/engine/{restored}/restore"), None)
            .await
            .status,
        StatusCode::OK
    );
    app.start_trial(left).await;
    app.wait_failed(left).await;
    app.wait_for(left, "Aborted", |s| s["engine_status"] == "Aborted")
        .await;
    assert_eq!(
        first_event(&app, left, "abort_requested").await["detail"],
        "not restored within 5 s"
    );
    // The restored trial failed first: its time has passed too, and it carries on.
    let status = app.trial_status(restored).await;
    assert_eq!(status["engine_status"], "Active", "{status}");
    app.drive_to_finished(restored).await;
}

#[tokio::test]
async fn pause_holds_every_request_until_resume_and_step_runs_exactly_one() {
    // A held request is not given up on while the test looks at it.
    let app = spawn_app_with_settings(|s| s.executor.request_timeout_secs = 300).await;
    let id = "stepped";
    // The stepped step's first KPI marking (after the two of `SendKpiIdle`) is held until the
    // test has tried a second step.
    let marking = Gate::default();
    app.platform.inject(
        Fault::new(
            Component::Kpi,
            "POST",
            "/markKPIData",
            FaultAction::HoldUntil(marking.clone()),
        )
        .for_trial(id)
        .after(2)
        .times(1),
    );
    app.start_trial(id).await;
    app.wait_waiting(id, WAITING_OPERATOR).await;
    let step = format!("/trial/{id}/step");
    let refused = app.post(&step, None).await;
    assert_eq!(
        refused.status,
        StatusCode::CONFLICT,
        "not paused: {refused:?}"
    );

    let paused = app
        .post(
            &format!("/trial/{id}/pause"),
            Some(json!({"reason": "new facility"})),
        )
        .await;
    assert_eq!(paused.status, StatusCode::OK, "{paused:?}");
    assert_eq!(app.trial_status(id).await["paused"], true);
    let at_wait = app.post(&step, None).await;
    assert_eq!(at_wait.status, StatusCode::CONFLICT, "{at_wait:?}");
    assert!(at_wait.detail().contains("waiting for"), "{at_wait:?}");
    let sent = lines(&app, id).len();

    // The signal is taken, but no request starts.
    assert_eq!(
        app.post(&format!("/trial/{id}/active"), None).await.status,
        StatusCode::OK
    );
    let held = app
        .wait_for(id, "held before SendKpiActive", |s| {
            s["step"] == "SendKpiActive" && s["status"] == "Waiting"
        })
        .await;
    assert_eq!(held["paused"], true);
    assert!(
        held["waiting_for"]
            .as_str()
            .is_some_and(|w| w.contains("resume")),
        "{held}"
    );
    assert_eq!(lines(&app, id).len(), sent, "nothing was sent while paused");

    // One step: both KPI markings, then held before the next step. A second step while it
    // runs is refused, saying why.
    assert_eq!(app.post(&step, None).await.status, StatusCode::OK);
    app.wait_for(id, "SendKpiActive running", |s| {
        s["step"] == "SendKpiActive" && s["status"] == "Running"
    })
    .await;
    let again = app.post(&step, None).await;
    assert_detail(&again, StatusCode::CONFLICT);
    assert!(
        again
            .detail()
            .contains("completes the step it was stepped to"),
        "{again:?}"
    );
    marking.open();
    app.wait_for(id, "held before UpdateStatusActive", |s| {
        s["step"] == "UpdateStatusActive" && s["status"] == "Waiting"
    })
    .await;
    assert_eq!(
        lines(&app, id)[sent..],
        ["POST /markKPIData", "POST /markKPIData"]
    );
    assert_eq!(app.post(&step, None).await.status, StatusCode::OK);
    app.wait_waiting(id, "operator (finish)").await;
    assert_eq!(app.platform.last_status(id).as_deref(), Some("ACTIVE"));
    assert_eq!(app.trial_status(id).await["paused"], true, "still paused");

    let resumed = app.post(&format!("/trial/{id}/resume"), None).await;
    assert_eq!(resumed.status, StatusCode::OK, "{resumed:?}");
    assert_eq!(
        app.post(&format!("/trial/{id}/finish"), None).await.status,
        StatusCode::OK
    );
    app.wait_finished(id).await;
    let kinds = app.event_kinds(id).await;
    for kind in ["paused", "stepped", "resumed"] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} in {kinds:?}");
    }
    assert_eq!(
        first_event(&app, id, "paused").await["detail"],
        "new facility"
    );
    let ended = app.post(&format!("/trial/{id}/pause"), None).await;
    assert_eq!(ended.status, StatusCode::CONFLICT, "{ended:?}");
}

/// A status write waiting to be tried again (the repository asked for ten minutes) makes no
/// further attempt once an abort comes, and the clean-up does not wait out the wait.
#[tokio::test]
async fn an_abort_while_a_status_write_waits_to_be_tried_again_cleans_up_at_once() {
    let app = spawn_app_with_settings(|s| s.executor.retry.max_backoff_ms = 600_000).await;
    let id = "abort-mid-backoff";
    app.status_write_waiting_ten_minutes(id).await;
    abort(&app, id, "wrong facility").await;
    let written = app.platform.status_history(id);
    assert!(
        written.ends_with(&["IDLE".into(), "ACTIVE".into(), "ABORTED".into()]),
        "one attempt of ACTIVE, then the clean-up's: {written:?}"
    );
}

/// A pause that comes while a request waits to be tried again shows the trial held at once,
/// not running until the wait ends; a resume shows it running again, still waiting out the
/// repository's ten minutes.
#[tokio::test]
async fn a_pause_during_a_retry_wait_shows_the_trial_held_at_once() {
    let app = spawn_app_with_settings(|s| s.executor.retry.max_backoff_ms = 600_000).await;
    let id = "paused-mid-backoff";
    app.status_write_waiting_ten_minutes(id).await;
    assert_eq!(app.trial_status(id).await["status"], "Running");
    let written = app.platform.status_history(id);

    let answer = app.post(&format!("/trial/{id}/pause"), None).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let held = app.wait_waiting(id, "the operator to resume").await;
    assert_eq!(held["step"], "UpdateStatusActive", "{held}");
    let says = held["waiting_for"].as_str().unwrap_or_default();
    assert!(says.contains("middle of the step"), "{held}");

    let answer = app.post(&format!("/trial/{id}/resume"), None).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let running = app
        .wait_for(id, "running again", |s| s["status"] == "Running")
        .await;
    assert_eq!(running["waiting_for"], Value::Null, "{running}");
    assert_eq!(
        app.platform.status_history(id),
        written,
        "the write was tried again before its wait ended"
    );
}

#[tokio::test]
async fn a_reason_with_a_line_break_or_given_twice_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let id = "bad-reasons";
    app.start_trial(id).await;
    app.wait_waiting(id, WAITING_OPERATOR).await;
    let history = app.history(id).await;
    // A reason is one line of text, in the history as in the log.
    let forged = "typo\n2026-12-02T02:00:00Z ERROR trial failed";
    for action in ["abort", "pause", "resume", "step"] {
        let path = format!("/trial/{id}/{action}");
        for (reason, character) in [
            (forged, "\\u{a}"),
            ("a\u{0}b", "\\u{0}"),
            ("a\tb", "\\u{9}"),
            ("a\u{2028}b", "\\u{2028}"),
        ] {
            let answer = app.post(&path, Some(json!({ "reason": reason }))).await;
            assert_detail(&answer, StatusCode::UNPROCESSABLE_ENTITY);
            assert!(
                answer.detail().contains(&format!(
                    "'reason' holds a control character or line separator ({character})"
                )),
                "{action} {reason:?}: {answer:?}"
            );
        }
        let twice = app
            .post_text(&path, r#"{"reason": "wrong facility", "reason": "typo"}"#)
            .await;
        assert_detail(&twice, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            twice.detail().contains("duplicate field `reason`"),
            "{action}: {twice:?}"
        );
    }
    let status = app.trial_status(id).await;
    assert_eq!(status["paused"], false, "{status}");
    assert_eq!(status["aborting"], false, "{status}");
    assert_eq!(app.history(id).await, history, "nothing was recorded");
    app.drive_to_finished(id).await;
}

#[tokio::test]
async fn an_abort_lets_a_status_write_in_flight_have_its_answer_before_the_clean_up_writes_its_own()
{
    let app = spawn_app_with_settings(|s| s.executor.request_timeout_secs = 300).await;
    // The write answered 204; answered 500, which is not tried again once an abort waits.
    for (id, answer) in [("abort-mid-status", None), ("abort-mid-refusal", Some(500))] {
        app.start_to_idle(id).await;
        // The repository holds its answer to the next status write (ACTIVE).
        let written = Gate::new();
        let held = match answer {
            None => FaultAction::HoldUntil(written.clone()),
            Some(status) => FaultAction::HoldThenStatus(written.clone(), status),
        };
        app.platform.inject(
            Fault::new(Component::Repository, "PUT", "/trial/", held)
                .for_trial(id)
                .times(1),
        );
        let active = app.post(&format!("/trial/{id}/active"), None).await;
        assert_eq!(active.status, StatusCode::OK, "{active:?}");
        eventually("ACTIVE to reach the repository", || async {
            let history = app.platform.status_history(id);
            match history.last().map(String::as_str) {
                Some("ACTIVE") => Ok(()),
                _ => Err(format!("{history:?}")),
            }
        })
        .await;
        let answered = async {
            app.wait_event(id, "abort_requested", "").await;
            // The clean-up waits for the answer: it has not started (an abort that cut the
            // write short would have started it with the request of the abort).
            let kinds = app.event_kinds(id).await;
            assert!(!kinds.iter().any(|k| k == "cleanup_started"), "{kinds:?}");
            let status = app.trial_status(id).await;
            assert_eq!(status["step"], "UpdateStatusActive", "{status}");
            written.open();
        };
        tokio::join!(abort(&app, id, "storm"), answered);
        let history = app.platform.status_history(id);
        let written: Vec<&str> = history
            .iter()
            .map(String::as_str)
            .skip_while(|s| *s != "ACTIVE")
            .collect();
        assert_eq!(written, ["ACTIVE", "ABORTED"], "{history:?}");
    }
}

#[tokio::test]
async fn a_trial_stepped_to_its_end_while_paused_is_not_shown_paused() {
    let app = spawn_app().await;
    let id = "stepped-to-the-end";
    app.start_to_idle(id).await;
    let paused = app.post(&format!("/trial/{id}/pause"), None).await;
    assert_eq!(paused.status, StatusCode::OK, "{paused:?}");
    let finish = app.post(&format!("/trial/{id}/finish"), None).await;
    assert_eq!(finish.status, StatusCode::OK, "{finish:?}");
    let step = format!("/trial/{id}/step");
    let ended = loop {
        let status = app
            .wait_for(id, "held before a step, or finished", |s| {
                s["finished"] == true
                    || s["waiting_for"]
                        .as_str()
                        .is_some_and(|w| w.contains("resume"))
            })
            .await;
        if status["finished"] == true {
            break status;
        }
        // Refused while the step it was stepped to still runs.
        let stepped = app.post(&step, None).await;
        assert!(
            [StatusCode::OK, StatusCode::CONFLICT].contains(&stepped.status),
            "{stepped:?}"
        );
    };
    assert_eq!(
        ended["paused"], false,
        "an ended trial is not paused: {ended}"
    );
    assert_eq!(app.trial_status(id).await["paused"], false);
}

#[tokio::test]
async fn a_pause_lets_the_request_in_flight_complete_and_starts_nothing_more() {
    let app = spawn_app().await;
    let id = "paused-mid-step";
    // The flight plan is held until the pause has been taken.
    let plan = app.hold_next(Component::Enforcement, "POST", "/flightplan", id);
    app.start_trial(id).await;
    // The step is shown before its requests leave: the pause comes once the plan has.
    app.wait_sent(id, "POST", "/flightplan").await;
    assert_eq!(
        app.post(&format!("/trial/{id}/pause"), None).await.status,
        StatusCode::OK
    );
    plan.open();
    app.wait_for(id, "held before UpdateUavPlanStatus", |s| {
        s["step"] == "UpdateUavPlanStatus" && s["status"] == "Waiting"
    })
    .await;
    let sent = lines(&app, id);
    assert_eq!(
        sent.last().map(String::as_str),
        Some("POST /flightplan"),
        "{sent:?}"
    );
    assert_eq!(app.platform.status_history(id), ["ACTIVATING_1"]);
    assert_eq!(
        app.post(&format!("/trial/{id}/resume"), None).await.status,
        StatusCode::OK
    );
    app.drive_to_finished(id).await;
}

#[tokio::test]
async fn a_pause_holds_a_step_s_next_request_and_its_next_attempt_until_resume() {
    // The tests' retry waits are 10 ms at most: a retry unheld would go at once.
    let app = spawn_app().await;
    let (second, retried) = ("paused-before-the-job", "paused-before-the-retry");

    // A step's second request: the measurement job's creation, after the step's read of the
    // trial, which is held until the pause has been taken.
    let plan = app.hold_next(Component::Enforcement, "POST", "/flightplan", second);
    app.start_trial(second).await;
    // The step is shown before its requests leave: the next read is the job step's once the
    // plan is in flight.
    app.wait_sent(second, "POST", "/flightplan").await;
    let read = app.hold_next(Component::Repository, "GET", "/trial/", second);
    plan.open();
    app.wait_for(second, "CreateMeasurementJob reading the trial", |s| {
        s["step"] == "CreateMeasurementJob"
    })
    .await;
    // A retry: KPI monitoring's first marking is held, then refused with a 503.
    let marking = Gate::default();
    app.platform.inject(
        kpi_marking_fault(FaultAction::HoldThenStatus(marking.clone(), 503))
            .for_trial(retried)
            .times(1),
    );
    app.start_trial(retried).await;
    app.wait_sent(retried, "POST", "/markKPIData").await;

    for id in [second, retried] {
        let answer = app.post(&format!("/trial/{id}/pause"), None).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    }
    read.open();
    marking.open();
    app.wait_event(retried, "step_retry", "503").await;
    // Each is shown waiting for the operator, in the middle of its step.
    for (id, step) in [(second, "CreateMeasurementJob"), (retried, "SendKpiIdle")] {
        let held = app.wait_waiting(id, "the operator to resume").await;
        assert_eq!(held["state"], "Waiting", "{held}");
        assert_eq!(held["step"], step, "{held}");
        let says = held["waiting_for"].as_str().unwrap_or_default();
        assert!(says.contains("middle of the step"), "{held}");
    }
    // Stepping a trial paused in the middle of a step says why not.
    let answer = app.post(&format!("/trial/{second}/step"), None).await;
    assert_detail(&answer, StatusCode::CONFLICT);
    assert!(answer.detail().contains("waits for resume"), "{answer:?}");
    // A trial run to IDLE meanwhile: long enough for a request let through to be sent.
    app.start_to_idle("clock").await;
    assert!(
        sent(&app, second, "POST", "/measurementjobs").is_empty(),
        "the job was created while paused: {:?}",
        lines(&app, second)
    );
    assert_eq!(
        sent(&app, retried, "POST", "/markKPIData").len(),
        1,
        "retried while paused: {:?}",
        lines(&app, retried)
    );
    for id in [second, retried] {
        let answer = app.post(&format!("/trial/{id}/resume"), None).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        app.drive_to_finished(id).await;
    }
}

#[tokio::test]
async fn skip_goes_past_a_failed_step_with_a_reason_unless_later_steps_need_it() {
    let app = spawn_app_with_settings(single_attempt).await;
    let (skipped, needed) = ("skip-put", "skip-slice");
    app.platform.inject(
        Fault::new(
            Component::Repository,
            "PUT",
            "/trial/",
            FaultAction::Status(500),
        )
        .for_trial(skipped)
        .after(1)
        .times(1),
    );
    app.platform
        .inject(slice_deployment_fault(needed, FaultAction::Status(500)));
    app.start_trial(skipped).await;
    app.start_trial(needed).await;

    let failed = app.wait_failed(skipped).await;
    assert_eq!(failed["step"], "UpdateUavPlanStatus");
    let path = format!("/debug/engine/{skipped}/skip");
    for bad in [
        json!({}),
        json!({"reason": "  "}),
        json!({"reason": "x", "extra": 1}),
    ] {
        let answer = app.post(&path, Some(bad)).await;
        assert_eq!(
            answer.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{answer:?}"
        );
    }
    // No body at all is no reason either.
    let answer = app.post(&path, None).await;
    assert_detail(&answer, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(answer.detail().contains("must say why"), "{answer:?}");
    let answer = app
        .post(
            &path,
            Some(json!({"reason": "status set by hand in the registry"})),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    app.drive_to_finished(skipped).await;
    let statuses = app.platform.status_history(skipped);
    assert_eq!(
        statuses,
        [
            "ACTIVATING_1",
            "ACTIVATING_2",
            "FAILED",
            "IDLE",
            "ACTIVE",
            "STOPPING",
            "FINISHED"
        ],
        "the failed PUT was not sent again"
    );
    let event = first_event(&app, skipped, "skipped").await;
    assert!(
        event["detail"]
            .as_str()
            .is_some_and(|d| d.contains("UpdateUavPlanStatus") && d.contains("by hand")),
        "{event}"
    );
    let again = app.post(&path, Some(json!({"reason": "again"}))).await;
    assert_eq!(
        again.status,
        StatusCode::CONFLICT,
        "a finished trial: {again:?}"
    );

    app.wait_failed(needed).await;
    let refused = app
        .post(
            &format!("/debug/engine/{needed}/skip"),
            Some(json!({"reason": "try"})),
        )
        .await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{refused:?}");
    assert!(refused.detail().contains("slice"), "{refused:?}");
}

#[tokio::test]
async fn skipping_a_request_skips_the_wait_for_its_callback_too() {
    let app = spawn_app_with_settings(|s| {
        single_attempt(s);
        s.executor.disable_vnf = false;
    })
    .await;
    let id = "skip-onboarding";
    app.platform.inject(
        Fault::new(
            Component::Enforcement,
            "POST",
            "/vnf/cloud/boarding",
            FaultAction::Status(500),
        )
        .for_trial(id),
    );
    app.start_trial(id).await;
    let failed = app.wait_failed(id).await;
    assert_eq!(failed["state"], "CloudVnfOnboarding", "{failed}");
    let answer = app
        .post(
            &format!("/debug/engine/{id}/skip"),
            Some(json!({"reason": "cloud VNF onboarded by hand"})),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(
        answer.body["message"],
        "CloudVnfOnboarding and the wait for the cloudvnfboarding callback skipped; the trial goes on at CloudVnfDeployment",
        "{answer:?}"
    );
    // No callback for a request never sent is awaited: the trial goes on to the next request.
    app.wait_waiting(id, WAITING_OPERATOR).await;
    let sent = lines(&app, id);
    assert!(
        sent.iter()
            .any(|l| l.starts_with("POST /vnf/cloud/deployment")),
        "{sent:?}"
    );
}

#[tokio::test]
async fn a_failed_component_wait_can_be_skipped_and_an_operator_wait_cannot() {
    let app = spawn_app_with_settings(|s| {
        s.executor.callback_timeout_secs = 1;
        s.executor.operator_timeout_secs = Some(1);
    })
    .await;
    let (slice, operator) = ("skip-wait", "skip-operator");
    app.platform.inject(drop_slice_callback(slice));
    app.start_trial(slice).await;
    app.start_trial(operator).await;
    let failed = app.wait_failed(slice).await;
    assert_failure_says(&failed, "timed out waiting for the slice callback");
    let answer = app
        .post(
            &format!("/debug/engine/{slice}/skip"),
            Some(json!({"reason": "the facility confirmed the slice by phone"})),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    // Past the slice wait, it waits for the operator (and its one second there may run out
    // before the test looks: its history tells that it got there).
    app.wait_event(slice, "waiting", WAITING_OPERATOR).await;

    app.wait_failed(operator).await;
    let refused = app
        .post(
            &format!("/debug/engine/{operator}/skip"),
            Some(json!({"reason": "go on"})),
        )
        .await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{refused:?}");
}

#[tokio::test]
async fn an_abort_closes_no_slice_that_was_never_requested() {
    // Trial enforcement refuses every connection: no slice deployment reaches it.
    let app = spawn_app_with_settings(|s| {
        single_attempt(s);
        s.services.trial_enforcement.url = "http://127.0.0.1:1".to_owned();
    })
    .await;
    let (pending, unreachable) = ("abort-pending", "abort-unreachable");
    // The repository does not approve this one: its deployment step fails before it asks.
    let mut trial = Platform::trial(pending, None);
    trial["status"] = json!("PENDING");
    app.platform.add_trial(trial);
    app.start_trial(pending).await;
    app.start_trial(unreachable).await;
    for id in [pending, unreachable] {
        let failed = app.wait_failed(id).await;
        assert_eq!(failed["state"], "SliceDeployment", "{failed}");
        let status = abort(&app, id, "aborted by the operator").await;
        assert_eq!(status["leftovers"], json!([]), "{status}");
        assert_eq!(status["cleanup_failed"], false, "{status}");
        // Only the repository heard of the clean-up: there was no slice to close.
        let sent = lines(&app, id);
        assert!(
            !sent
                .iter()
                .any(|l| l.starts_with("DELETE /sliceDeployment")),
            "{id}: {sent:?}"
        );
    }
    assert!(
        app.platform
            .status_history(pending)
            .iter()
            .any(|s| s == "ABORTED")
    );
}

#[tokio::test]
async fn an_abort_closes_no_slice_whose_deployment_was_refused() {
    let app = spawn_app_with_settings(single_attempt).await;
    let id = "slice-refused";
    app.platform
        .inject(slice_deployment_fault(id, FaultAction::Status(400)));
    app.start_trial(id).await;
    let failed = app.wait_failed(id).await;
    assert_eq!(failed["state"], "SliceDeployment", "{failed}");
    let status = abort(&app, id, "aborted by the operator").await;
    assert_eq!(status["leftovers"], json!([]), "{status}");
    let sent = lines(&app, id);
    assert!(
        !sent
            .iter()
            .any(|l| l.starts_with("DELETE /sliceDeployment")),
        "a refused deployment made no slice to close: {sent:?}"
    );
}

/// Closing the slice of trial `id`, answered 404 once: trial enforcement has no slice (yet).
fn no_slice_yet(id: &str) -> Fault {
    Fault::new(
        Component::Enforcement,
        "DELETE",
        "/sliceDeployment",
        FaultAction::Status(404),
    )
    .for_trial(id)
    .times(1)
}

/// A service making `attempts` of each request, with trial `id` aborted after its slice
/// deployment got no answer within 1 s, its clean-up's first `closes_not_found` closes
/// answered 404 (trial enforcement makes the slice only later), now waiting for the late
/// slice's callback; its status then.
async fn waiting_for_a_late_slice(
    id: &str,
    closes_not_found: usize,
    attempts: u32,
) -> (TestApp, Value) {
    let app = deployment_never_answered(id, attempts).await;
    app.platform
        .inject(no_slice_yet(id).times(closes_not_found));
    app.start_trial(id).await;
    let failed = app.wait_failed(id).await;
    assert_eq!(failed["state"], "SliceDeployment", "{failed}");
    let answer = app.ask_abort(id, "drone down").await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let waiting = app
        .wait_for(id, "the wait for a late slice", |s| {
            s["waiting_for"]
                .as_str()
                .is_some_and(|w| w.starts_with("a late slice callback"))
        })
        .await;
    (app, waiting)
}

/// A service making `attempts` of each request (1 s each) whose trial enforcement never
/// answers trial `id`'s slice deployment.
async fn deployment_never_answered(id: &str, attempts: u32) -> TestApp {
    let app = spawn_app_with_settings(move |s| {
        s.executor.retry.max_attempts = attempts;
        s.executor.request_timeout_secs = 1;
    })
    .await;
    app.platform
        .inject(slice_deployment_fault(id, FaultAction::Hang).times(attempts as usize));
    app
}

/// Trial enforcement closes trial `id`'s slice (and calls back) `times`, but the answers are
/// lost on their way.
fn answer_lost(id: &str, times: usize) -> Fault {
    Fault::new(
        Component::Enforcement,
        "DELETE",
        "/sliceDeployment",
        FaultAction::AnswerLost,
    )
    .for_trial(id)
    .times(times)
}

/// Waits until at least `n` of trial `id`'s slice callbacks made by trial enforcement were
/// answered as `answered` takes.
async fn slice_callbacks_answered(
    app: &TestApp,
    id: &str,
    what: &str,
    n: usize,
    answered: impl Fn(Option<u16>) -> bool,
) {
    let slice_callback = format!("/trial/{id}/callback/slice");
    eventually_at_least(what, n, || {
        app.platform
            .callbacks()
            .iter()
            .filter(|c| c.url.ends_with(&slice_callback) && answered(c.status))
            .count()
    })
    .await;
}

/// How many times trial `id`'s slice was closed (`DELETE /sliceDeployment`).
fn closes(app: &TestApp, id: &str) -> usize {
    sent(app, id, "DELETE", "/sliceDeployment").len()
}

#[tokio::test]
async fn a_slice_made_after_its_deployment_went_unanswered_is_closed_by_the_clean_up() {
    let id = "slice-late";
    let (app, waiting) = waiting_for_a_late_slice(id, 1, 1).await;
    assert_eq!(waiting["aborting"], true, "{waiting}");
    assert_eq!(waiting["engine_status"], "Active", "{waiting}");

    // The slice is made now, and trial enforcement calls back: the clean-up closes it.
    let created = app.callback(id, "slice", Some(&app.token_of(id))).await;
    assert_eq!(created.status, StatusCode::OK, "{created:?}");
    let status = app
        .wait_for(id, "Aborted", |s| s["engine_status"] == "Aborted")
        .await;
    assert_eq!(status["leftovers"], json!([]), "{status}");
    assert_eq!(
        closes(&app, id),
        2,
        "the 404, then the close of the slice made"
    );
    let closed: Vec<Option<u16>> = app
        .platform
        .callbacks()
        .iter()
        .filter(|c| c.url.contains(&format!("/trial/{id}/callback/slice")))
        .map(|c| c.status)
        .collect();
    assert_eq!(closed, [Some(200)], "the closing's callback, taken");
    app.wait_event(id, "signal_accepted", "slice created, late")
        .await;
    assert_eq!(app.platform.last_status(id).as_deref(), Some("ABORTED"));
}

#[tokio::test]
async fn a_late_slice_that_its_close_does_not_find_is_a_leftover_until_an_abort_closes_it() {
    let id = "slice-late-unlisted";
    // The late slice-created callback comes, but trial enforcement does not list the slice
    // yet: the close after it answers 404 too.
    let (app, _) = waiting_for_a_late_slice(id, 2, 1).await;
    let created = app.callback(id, "slice", Some(&app.token_of(id))).await;
    assert_eq!(created.status, StatusCode::OK, "{created:?}");
    let failed = app.wait_cleanup_failed(id).await;
    assert_eq!(failed["leftovers"][0]["kind"], "slice", "{failed}");
    assert_failure_says(&failed, "although its slice-created callback came");

    // Listed now: the abort asked again closes it.
    let status = abort(&app, id, "drone down").await;
    assert_eq!(status["leftovers"], json!([]), "{status}");
    assert_eq!(closes(&app, id), 3, "two 404s, then the close");
}

/// A clean-up waiting for a component is not paused, resumed or stepped, and each answer says
/// why the same way.
#[tokio::test]
async fn pause_resume_and_step_are_refused_alike_while_a_clean_up_waits() {
    let id = "slice-late-held";
    let (app, _) = waiting_for_a_late_slice(id, 1, 1).await;
    for control in ["pause", "resume", "step"] {
        let answer = app.post(&format!("/trial/{id}/{control}"), None).await;
        assert_detail(&answer, StatusCode::CONFLICT);
        assert!(
            answer.detail().contains("is being aborted"),
            "{control}: {answer:?}"
        );
    }
}

/// A service making two attempts of each request, with trial `id` aborted and its late
/// slice announced: each of the first `lost` closes of it closes it, but the answer is lost;
/// the close after them finds no slice (404).
async fn late_slice_closed_with_answers_lost(id: &str, lost: usize) -> TestApp {
    let (app, _) = waiting_for_a_late_slice(id, 1, 2).await;
    app.platform.inject(answer_lost(id, lost));
    app.platform.inject(no_slice_yet(id));
    let created = app.callback(id, "slice", Some(&app.token_of(id))).await;
    assert_eq!(created.status, StatusCode::OK, "{created:?}");
    app
}

/// The late slice's close closes it, but its answer is lost: the close tried again finds no
/// slice. That 404 is the first attempt's doing, whose slice-closed callback comes: the
/// clean-up takes it and ends, instead of failing (and failing again at every retry) with
/// the slice it closed as a leftover.
#[tokio::test]
async fn a_late_slice_closed_by_a_close_whose_answer_was_lost_ends_the_clean_up() {
    let id = "slice-late-answer-lost";
    let app = late_slice_closed_with_answers_lost(id, 1).await;
    let status = app
        .wait_for(id, "Aborted", |s| s["engine_status"] == "Aborted")
        .await;
    assert_eq!(status["leftovers"], json!([]), "{status}");
    assert_eq!(status["cleanup_failed"], false, "{status}");
    assert_eq!(
        closes(&app, id),
        3,
        "the 404 before the late slice, the close whose answer was lost, its retry's 404"
    );
    assert_eq!(app.platform.last_status(id).as_deref(), Some("ABORTED"));
}

/// Every answer of the late slice's close is lost: the clean-up fails with the slice a
/// leftover, but the abort asked again that finds no slice knows the lost close closed it.
#[tokio::test]
async fn a_late_slice_whose_every_close_went_unanswered_is_closed_once_its_retry_finds_none() {
    let id = "slice-late-all-lost";
    let app = late_slice_closed_with_answers_lost(id, 2).await;
    let failed = app.wait_cleanup_failed(id).await;
    assert_eq!(failed["leftovers"][0]["kind"], "slice", "{failed}");
    // The lost closes' callbacks came while the clean-up failed (one after the trial's end
    // would close again).
    slice_callbacks_answered(&app, id, "the lost closes' callbacks", 2, |status| {
        status.is_some()
    })
    .await;

    let status = abort(&app, id, "drone down").await;
    assert_eq!(status["leftovers"], json!([]), "{status}");
    assert_eq!(closes(&app, id), 4, "the 404, two lost answers, the 404");
}

/// The clean-up's first close closes a slice made by a deployment never answered, but its
/// answer is lost and its retry finds none: the clean-up waits for a late slice, takes that
/// close's callback as the slice's, and its next close finds none either. The clean-up fails
/// once, and its next try, finding none again, counts the slice closed instead of failing at
/// every try.
#[tokio::test]
async fn a_slice_closed_by_a_close_whose_answer_was_lost_before_it_was_announced_ends_the_clean_up()
{
    let id = "slice-lost-early";
    let app = deployment_never_answered(id, 2).await;
    app.platform.inject(answer_lost(id, 1));
    for _ in 0..3 {
        app.platform.inject(no_slice_yet(id));
    }
    app.start_trial(id).await;
    app.wait_failed(id).await;
    assert_eq!(app.ask_abort(id, "drone down").await.status, StatusCode::OK);
    let failed = app.wait_cleanup_failed(id).await;
    assert_failure_says(&failed, "although its slice-created callback came");
    assert_eq!(failed["leftovers"][0]["kind"], "slice", "{failed}");

    let status = abort(&app, id, "drone down").await;
    assert_eq!(status["leftovers"], json!([]), "{status}");
    assert_eq!(
        closes(&app, id),
        4,
        "the lost answer, its retry's 404, the announced slice's 404, the next try's 404"
    );
    assert_eq!(app.platform.last_status(id).as_deref(), Some("ABORTED"));
}

#[tokio::test]
async fn a_late_slice_s_time_counts_from_its_deployment_so_a_later_clean_up_does_not_wait() {
    // The deployment gets no answer within 2 s: its slice's callback was due within 1 s.
    let app = spawn_app_with_settings(|s| {
        single_attempt(s);
        s.executor.request_timeout_secs = 2;
        s.executor.callback_timeout_secs = 1;
    })
    .await;
    let id = "slice-long-ago";
    app.platform
        .inject(slice_deployment_fault(id, FaultAction::Hang));
    app.platform.inject(no_slice_yet(id));
    app.start_trial(id).await;
    app.wait_failed(id).await;
    abort(&app, id, "drone down").await;
    first_event(&app, id, "no_slice_made").await;
    let waits: Vec<Value> = app
        .history(id)
        .await
        .into_iter()
        .filter(|e| e["event"] == "waiting")
        .collect();
    assert!(
        waits.iter().all(|e| !e["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("a late slice callback"))),
        "nothing left to wait for: {waits:#?}"
    );
}

#[tokio::test]
async fn a_slice_deployment_unanswered_that_made_nothing_ends_the_clean_up_at_its_callback_deadline()
 {
    // The binary, whose log the test reads.
    let app = spawn_binary_with(BinaryOptions {
        env: &[
            ("LCM__EXECUTOR__RETRY__MAX_ATTEMPTS", "1"),
            ("LCM__EXECUTOR__CALLBACK_TIMEOUT_SECS", "1"),
        ],
        ..BinaryOptions::default()
    })
    .await;
    let id = "slice-never";
    // Answered 503, the deployment may have made a slice; it made none, and none comes.
    app.platform
        .inject(slice_deployment_fault(id, FaultAction::Status(503)));
    app.platform.inject(no_slice_yet(id));
    app.start_trial(id).await;
    app.wait_failed(id).await;
    let status = abort(&app, id, "drone down").await;
    assert_eq!(status["leftovers"], json!([]), "{status}");
    let made_none = first_event(&app, id, "no_slice_made").await;
    assert!(
        made_none["detail"]
            .as_str()
            .is_some_and(|d| d.contains("within 1 s")),
        "{made_none}"
    );
    assert_eq!(closes(&app, id), 1);
    assert_eq!(app.platform.last_status(id).as_deref(), Some("ABORTED"));
    // Made after all, later still: its callback is refused, and the slice is closed as the
    // clean-up would have, once: the close's own callback comes back refused too.
    let late = app.callback(id, "slice", Some(&app.token_of(id))).await;
    assert_detail(&late, StatusCode::FORBIDDEN);
    let line = logged(&app, &[id, "came after the trial ended", "closing"]).await;
    assert!(line.contains("made late"), "{line}");
    logged(&app, &[id, "did not close: closed now"]).await;
    slice_callbacks_answered(&app, id, "the close's callback, refused", 1, |status| {
        status == Some(403)
    })
    .await;
    assert_eq!(closes(&app, id), 2, "{:?}", lines(&app, id));
}

/// A deployment sent again after a crash, to a component that does not honour the
/// `Idempotency-Key`, makes a second slice, announced once the trial has ended: the slice is
/// closed, though the callback is refused. So is one announced after that (a callback that
/// only repeats one the trial took makes a close answered 404); the close's own callback
/// closes nothing more.
#[tokio::test]
async fn a_slice_announced_after_the_trial_finished_is_closed_each_time() {
    let app = spawn_binary().await;
    let id = "slice-twice";
    app.run_to_finished(id).await;
    assert_eq!(closes(&app, id), 1);
    let token = app.token_of(id);
    // Another trial's token speaks for nothing here: it closes nothing.
    let other = app.post("/token/another-trial", None).await.body["Authorization"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let foreign = app.callback(id, "slice", Some(&other)).await;
    assert_detail(&foreign, StatusCode::FORBIDDEN);
    for (n, closed) in [(1, 2), (2, 3)] {
        let late = app.callback(id, "slice", Some(&token)).await;
        assert_detail(&late, StatusCode::FORBIDDEN);
        slice_callbacks_answered(&app, id, "the close's callback, refused", n, |status| {
            status == Some(403)
        })
        .await;
        assert_eq!(closes(&app, id), closed);
    }
    let line = logged(&app, &[id, "came after the trial ended"]).await;
    assert!(line.contains("INFO"), "{line}");
    let line = logged(&app, &[id, "did not close: closed now"]).await;
    assert!(line.contains("WARN"), "{line}");
    for close in sent(&app, id, "DELETE", "/sliceDeployment") {
        let presented = close
            .body
            .as_ref()
            .and_then(|b| b["Authorization"].as_str());
        assert_eq!(
            presented,
            Some(token.as_str()),
            "only the trial's own token closes"
        );
    }
}

#[tokio::test]
async fn an_abort_closes_a_kpi_marking_its_step_began_before_it_failed() {
    let app = spawn_app_with_settings(single_attempt).await;
    let id = "half-marked";
    // The trial's Idle marking is taken, the slice's refused: the step fails between them.
    app.platform.inject(
        kpi_marking_fault(FaultAction::Status(400))
            .after(1)
            .times(1),
    );
    app.start_trial(id).await;
    let failed = app.wait_failed(id).await;
    assert_eq!(failed["state"], "SendKpiIdle", "{failed}");
    assert_eq!(failed["kpi_status"], "Idle", "{failed}");
    let status = abort(&app, id, "aborted by the operator").await;
    assert_eq!(status["leftovers"], json!([]), "{status}");
    let markings: Vec<(String, String)> = app
        .platform
        .requests()
        .iter()
        .filter(|r| r.path == "/markKPIData")
        .filter_map(|r| {
            let body = r.body.as_ref()?;
            Some((
                body["TrialID"].as_str()?.to_owned(),
                body["Marking"].as_str()?.to_owned(),
            ))
        })
        .collect();
    let finished: Vec<&str> = markings
        .iter()
        .filter(|(_, marking)| marking == "Finished")
        .map(|(marked, _)| marked.as_str())
        .collect();
    assert_eq!(finished.first(), Some(&id), "{markings:?}");
}

#[tokio::test]
async fn an_abort_racing_the_delete_of_a_trial_whose_failure_is_reported_is_never_409() {
    let app = spawn_app_with_settings(single_attempt).await;
    let id = "abort-outrun";
    // The failure report never comes back while the test runs.
    let report = Gate::default();
    failed_and_reporting(&app, id, FaultAction::HoldUntil(report.clone())).await;
    let (abort, delete) = (format!("/trial/{id}/abort"), format!("/debug/engine/{id}"));
    let (aborted, deleted) = tokio::join!(app.post(&abort, None), app.delete(&delete));
    assert_eq!(deleted.status, StatusCode::OK, "{deleted:?}");
    // An abort taken before the delete is 200 (the delete then removes the trial all the
    // same), one that was waiting when the engine went is 503, one that came after it 404:
    // never a 409 saying a failed trial cannot be aborted.
    match aborted.status {
        StatusCode::OK => assert_ok_saying(&aborted, "abort accepted"),
        StatusCode::SERVICE_UNAVAILABLE => {
            assert!(aborted.detail().contains("engine stopped"), "{aborted:?}");
        }
        StatusCode::NOT_FOUND => assert!(aborted.detail().contains("has no engine")),
        _ => panic!("{aborted:?}"),
    }
}

/// A service that tries each request once, with trial `id` failed at its measurement job's
/// creation, answered 500 (so the job may exist).
async fn failed_creating_the_job(id: &str) -> TestApp {
    let app = spawn_app_with_settings(single_attempt).await;
    app.platform
        .inject(measurement_job_fault(id, FaultAction::Status(500)));
    app.start_trial(id).await;
    app.wait_failed(id).await;
    app
}

#[tokio::test]
async fn a_restore_takes_a_replayed_measurement_job_creation_answered_200() {
    let id = "job-replayed";
    let app = failed_creating_the_job(id).await;
    // A component that honours the key answers the creation sent again as a replay: 200,
    // with the job it made the first time.
    app.platform.inject(measurement_job_fault(
        id,
        FaultAction::Json(200, json!({"MeasurementID": "mj-first"})),
    ));
    let restored = app.post(&format!("/debug/engine/{id}/restore"), None).await;
    assert_eq!(restored.status, StatusCode::OK, "{restored:?}");
    app.wait_waiting(id, WAITING_OPERATOR).await;
    let status = abort(&app, id, "aborted by the operator").await;
    assert_eq!(status["leftovers"], json!([]), "{status}");
    let sent = lines(&app, id);
    assert!(
        sent.contains(&"DELETE /measurementjobs/mj-first".to_owned()),
        "the job the replay named is the one deleted: {sent:?}"
    );
}

#[tokio::test]
async fn a_creation_answered_as_a_replay_where_no_record_says_it_was_sent_is_taken() {
    // What a power cut that lost the last commits leaves: the creation runs again with its
    // key as if for the first time, and the component answers it as the replay it is.
    let app = spawn_app().await;
    let id = "job-replay-unrecorded";
    app.platform.inject(measurement_job_fault(
        id,
        FaultAction::Json(200, json!({"MeasurementID": "mj-first"})),
    ));
    app.start_trial(id).await;
    app.wait_waiting(id, WAITING_OPERATOR).await;
    let status = abort(&app, id, "aborted by the operator").await;
    assert_eq!(status["leftovers"], json!([]), "{status}");
    let sent = lines(&app, id);
    assert!(
        sent.contains(&"DELETE /measurementjobs/mj-first".to_owned()),
        "the job the replay named is the one deleted: {sent:?}"
    );
}

#[tokio::test]
async fn a_measurement_job_whose_creation_went_unanswered_is_found_by_its_key_and_deleted() {
    let app = spawn_app_with_settings(single_attempt).await;
    let (in_doubt, refused) = ("job-in-doubt", "job-refused");
    // One creation answered 500 (the job may exist), one refused with 400 (it does not).
    for (id, status) in [(in_doubt, 500), (refused, 400)] {
        app.platform
            .inject(measurement_job_fault(id, FaultAction::Status(status)));
        app.start_trial(id).await;
    }
    let creations = |id: &str| -> Vec<Option<String>> {
        app.platform
            .requests_for(id)
            .into_iter()
            .filter(|r| r.method == "POST" && r.path == "/measurementjobs")
            .map(|r| r.idempotency_key)
            .collect()
    };
    for id in [in_doubt, refused] {
        let failed = app.wait_failed(id).await;
        assert_eq!(failed["state"], "CreateMeasurementJob", "{failed}");
    }

    // The clean-up sends the creation again as itself, learns the job's id and deletes it.
    let status = abort(&app, in_doubt, "aborted by the operator").await;
    assert_eq!(status["leftovers"], json!([]), "{status}");
    let keys = creations(in_doubt);
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys[0].is_some() && keys[0] == keys[1], "{keys:?}");
    let sent = lines(&app, in_doubt);
    assert!(
        sent.contains(&format!("DELETE /measurementjobs/mj-{in_doubt}")),
        "{sent:?}"
    );

    // A re-sent creation refused (here 409, "still being processed") proves nothing about
    // the first: the job stays a leftover, and the next abort finds and deletes it.
    let replayed = "job-replay-refused";
    app.platform
        .inject(measurement_job_fault(replayed, FaultAction::Status(500)));
    app.start_trial(replayed).await;
    app.wait_failed(replayed).await;
    app.platform
        .inject(measurement_job_fault(replayed, FaultAction::Status(409)));
    let failed = abort_until_cleanup_fails(&app, replayed, "DeleteMeasurementJob").await;
    let leftovers = failed["leftovers"].as_array().expect("leftovers");
    assert!(
        leftovers.iter().any(|l| l["kind"] == "measurement_job"
            && l["id"]
                .as_str()
                .is_some_and(|id| id.contains("no answer to its creation"))),
        "{failed}"
    );
    let status = abort(&app, replayed, "aborted by the operator").await;
    assert_eq!(status["leftovers"], json!([]), "{status}");
    let keys = creations(replayed);
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert!(
        keys.iter().all(|key| key.is_some() && *key == keys[0]),
        "{keys:?}"
    );
    assert!(
        lines(&app, replayed).contains(&format!("DELETE /measurementjobs/mj-{replayed}")),
        "{:?}",
        lines(&app, replayed)
    );

    // A refused creation made nothing: nothing is asked again, nothing deleted.
    let status = abort(&app, refused, "aborted by the operator").await;
    assert_eq!(status["leftovers"], json!([]), "{status}");
    assert_eq!(creations(refused).len(), 1);
    assert!(
        !lines(&app, refused)
            .iter()
            .any(|l| l.starts_with("DELETE /measurementjobs")),
        "{:?}",
        lines(&app, refused)
    );
}

/// The real binary, killed (SIGKILL) while trial `id`'s `POST path` waited for the answer
/// `hang` never gives; with the `Idempotency-Key` that request carried. The test restarts it.
async fn killed_while_creating(id: &str, hang: Fault, path: &'static str) -> (TestApp, String) {
    let mut app = spawn_binary_with(BinaryOptions {
        platform: Box::new(|platform| {
            platform.add_trial(Platform::trial(id, None));
            platform.inject(hang);
        }),
        ..BinaryOptions::default()
    })
    .await;
    app.schedule_in(id, 300).await;
    let key = eventually(&format!("POST {path} sent"), || async {
        app.platform
            .requests_for(id)
            .into_iter()
            .find(|r| r.method == "POST" && r.path == path)
            .and_then(|r| r.idempotency_key)
            .ok_or_else(|| "not yet".to_owned())
    })
    .await;
    if let Server::Process(child) = &mut app.server {
        child.kill().await.expect("SIGKILL");
    }
    (app, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slice_deployment_sent_again_after_a_restart_takes_a_replay_answered_200() {
    let id = "slice-replayed";
    let hang = slice_deployment_fault(id, FaultAction::Hang);
    let (mut app, first_key) = killed_while_creating(id, hang, "/sliceDeployment").await;
    // A component that honours the key answers the creation sent again as a replay.
    app.platform.inject(slice_deployment_fault(
        id,
        FaultAction::Json(200, json!({"Slice": {"id": format!("slice-{id}")}})),
    ));
    app.restart_binary().await;
    let status = app.wait_waiting(id, WAITING_SLICE).await;
    assert_eq!(status["failed"], false, "{status}");
    let keys: Vec<Option<String>> = app
        .platform
        .requests_for(id)
        .into_iter()
        .filter(|r| r.path == "/sliceDeployment")
        .map(|r| r.idempotency_key)
        .collect();
    assert_eq!(
        keys,
        [Some(first_key.clone()), Some(first_key)],
        "sent again as itself"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_after_a_restart_deletes_the_job_whose_creation_the_stop_cut_short() {
    let id = "job-cut-short";
    let hang = measurement_job_fault(id, FaultAction::Hang);
    let (mut app, first_key) = killed_while_creating(id, hang, "/measurementjobs").await;
    // After the restart the step runs again; the abort comes before it asks again.
    let fetch = app.hold_next(Component::Repository, "GET", "/trial/", id);
    app.restart_binary().await;
    eventually("the step running again", || async {
        match app.trial_status(id).await["state"].as_str() {
            Some("CreateMeasurementJob") => Ok(()),
            state => Err(format!("{state:?}")),
        }
    })
    .await;
    let aborted = app.ask_abort(id, "wrong facility").await;
    assert_eq!(aborted.status, StatusCode::OK, "{aborted:?}");
    fetch.open();
    let status = app
        .wait_for(id, "Aborted", |s| s["engine_status"] == "Aborted")
        .await;
    assert_eq!(status["leftovers"], json!([]), "{status}");
    // The creation went again as itself, and the job it named was deleted.
    let keys: Vec<Option<String>> = app
        .platform
        .requests_for(id)
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/measurementjobs")
        .map(|r| r.idempotency_key)
        .collect();
    assert_eq!(keys, [Some(first_key.clone()), Some(first_key)]);
    let sent = lines(&app, id);
    assert!(
        sent.contains(&format!("DELETE /measurementjobs/mj-{id}")),
        "{sent:?}"
    );
}

/// Trial `id` at IDLE, whose repository answers `refusal` to every status written from now on.
async fn at_idle_with_the_status_refused(app: &TestApp, id: &str, refusal: u16) {
    app.start_to_idle(id).await;
    app.platform.inject(
        Fault::new(
            Component::Repository,
            "PUT",
            "/trial/",
            FaultAction::Json(refusal, json!({"detail": "refused"})),
        )
        .for_trial(id),
    );
}

/// Once everything is undone, the repository's refusal of the ABORTED status for good (it no
/// longer has the trial, or takes no such status now) does not keep the trial failed: there is
/// nothing left to undo, and asking again would be answered the same.
#[tokio::test]
async fn a_repository_that_refuses_aborted_for_good_does_not_keep_the_trial_failed() {
    let app = spawn_app_with_settings(single_attempt).await;
    for (id, refusal) in [
        ("aborted-unknown", 404),
        ("aborted-conflict", 409),
        ("aborted-gone", 410),
        ("aborted-refused", 400),
    ] {
        at_idle_with_the_status_refused(&app, id, refusal).await;
        let aborted = app.post(&format!("/trial/{id}/abort"), None).await;
        assert_eq!(aborted.status, StatusCode::OK, "{aborted:?}");
        let status = app
            .wait_for(id, "Aborted", |s| {
                s["engine_status"] == "Aborted" || s["engine_status"] == "Failed"
            })
            .await;
        assert_eq!(status["engine_status"], "Aborted", "{status}");
        let answers = app.get(&format!("/trial/{id}/responses")).await.body;
        let last = answers["responses"]
            .as_array()
            .and_then(|all| {
                all.iter()
                    .rev()
                    .find(|r| r["step"] == "UpdateStatusAborted")
            })
            .cloned()
            .unwrap_or_default();
        assert_eq!(last["status"], refusal, "{answers}");
    }
    // Refused for the LCM's credentials, which can be mended: the clean-up fails, to be retried.
    let id = "aborted-forbidden";
    at_idle_with_the_status_refused(&app, id, 403).await;
    let failed = abort_until_cleanup_fails(&app, id, "UpdateStatusAborted").await;
    assert_eq!(failed["leftovers"], json!([]), "{failed}");
}

/// A clean-up that must send a job's creation again to learn its id, and is refused, says so:
/// the reason names the delete's step and why it sent a creation.
#[tokio::test]
async fn a_job_creation_sent_again_by_the_clean_up_is_retried_under_its_key() {
    let app = spawn_app().await;
    let id = "job-busy";
    // The creation fails the trial (never sent twice: it may have made the job); sent again
    // under its key by the clean-up, its second 503 is tried again, and the third is taken.
    app.platform
        .inject(measurement_job_fault(id, FaultAction::Status(503)).times(2));
    app.start_trial(id).await;
    let failed = app.wait_failed(id).await;
    assert_eq!(failed["state"], "CreateMeasurementJob", "{failed}");
    let status = abort(&app, id, "drone down").await;
    assert_eq!(status["leftovers"], json!([]), "{status}");
    let keys: Vec<Option<String>> = sent(&app, id, "POST", "/measurementjobs")
        .into_iter()
        .map(|r| r.idempotency_key)
        .collect();
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert!(
        keys.iter().all(|k| k.is_some() && *k == keys[0]),
        "{keys:?}"
    );
    assert!(
        lines(&app, id)
            .iter()
            .any(|l| l.starts_with(&format!("DELETE /measurementjobs/mj-{id}"))),
        "the job made is deleted"
    );
    let statuses = app.platform.status_history(id);
    assert_eq!(
        statuses.iter().filter(|s| *s == "FAILED").count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(statuses.last().map(String::as_str), Some("ABORTED"));
}

#[tokio::test]
async fn a_clean_up_that_cannot_learn_the_job_s_id_says_why_it_sent_a_creation() {
    let id = "job-never-answered";
    let app = failed_creating_the_job(id).await;
    app.platform
        .inject(measurement_job_fault(id, FaultAction::Status(500)));
    let failed = abort_until_cleanup_fails(&app, id, "DeleteMeasurementJob").await;
    assert_failure_says(
        &failed,
        "the job's creation was never answered, so it was sent again (same Idempotency-Key) to learn the job's id",
    );
    // Its failure file says why the clean-up failed, and still why the trial failed first.
    let file = eventually("the clean-up's failure file", || async {
        match app.failure_file(id) {
            Some(file) if file["cleanup_failed"] == true => Ok(file),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let earlier = file["earlier"].as_array().cloned().unwrap_or_default();
    assert_eq!(earlier.len(), 1, "{file}");
    assert!(
        earlier[0]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("CreateMeasurementJob failed")),
        "{file}"
    );
}

#[tokio::test]
async fn an_abort_whose_clean_up_cannot_be_saved_yet_is_answered_once_it_is_and_carried_out() {
    use lcm::engine::state::Lifecycle;

    let (app, refused) =
        spawn_app_refusing_saves(|lifecycle| lifecycle == Lifecycle::Running, |_| {}).await;
    let id = "abort-unsaved";
    app.start_to_idle(id).await;
    let sent = lines(&app, id);
    refused.refuse(true);
    let path = format!("/trial/{id}/abort");
    let (answer, ()) = tokio::join!(app.post(&path, Some(json!({"reason": "storm"}))), async {
        refused
            .wait_refused("the clean-up's first checkpoint", 1)
            .await;
        assert_eq!(
            lines(&app, id),
            sent,
            "no clean-up request before its checkpoint is saved"
        );
        refused.refuse(false);
    });
    // Told it is accepted only once a restart would find the trial aborting.
    assert_ok_saying(&answer, "abort accepted");
    let aborted = app
        .wait_for(id, "Aborted", |s| s["engine_status"] == "Aborted")
        .await;
    assert_eq!(aborted["abort_reason"], "storm", "{aborted}");
    assert_never_reported_failed(&app, id);
}

#[tokio::test]
async fn an_abort_while_a_creation_waits_for_its_access_token_cuts_it_before_it_leaves() {
    // Trial enforcement takes OAuth2 access tokens, from the simulated token endpoint; no
    // request times out while the test holds it.
    let app = spawn_app_with_settings(|s| {
        s.services.trial_enforcement.oauth2 = s.services.kpi_monitoring.oauth2.clone();
        s.executor.request_timeout_secs = 300;
    })
    .await;
    let id = "abort-at-token";
    // The endpoint holds the first fetch: the one the slice deployment needs (the trial's
    // first request to trial enforcement).
    let fetched = Gate::new();
    app.platform.inject(
        Fault::new(
            Component::Kpi,
            "POST",
            "/token",
            FaultAction::HoldUntil(fetched.clone()),
        )
        .times(1),
    );
    app.start_trial(id).await;
    eventually("the access token to be asked for", || async {
        let asked = app.platform.requests().iter().any(|r| r.path == "/token");
        asked.then_some(()).ok_or_else(|| "not yet".to_owned())
    })
    .await;
    let status = app.trial_status(id).await;
    assert_eq!(status["step"], "SliceDeployment", "{status}");
    // Nothing has left for the slice yet: the abort cuts the step short and cleans up at
    // once, without waiting for the token.
    let cleaned_up = async {
        app.wait_event(id, "cleanup_started", "").await;
        fetched.open();
    };
    tokio::join!(abort(&app, id, "before the slice"), cleaned_up);
    let enforcement: Vec<String> = app
        .platform
        .requests_for(id)
        .iter()
        .filter(|r| r.component == Component::Enforcement)
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(
        enforcement.is_empty(),
        "trial enforcement was asked for: {enforcement:?}"
    );
}

#[tokio::test]
async fn a_failed_clean_up_tried_again_on_its_own_says_after_how_long() {
    let app = spawn_app_with_settings(|s| s.executor.cleanup_failed_after_secs = Some(1)).await;
    let id = "retried-and-told";
    at_idle_with_the_job_deletion_failing(&app, id).await;
    abort_until_cleanup_fails(&app, id, "DeleteMeasurementJob").await;
    // Tried again a second after the clean-up failed, then two seconds after that one failed.
    app.wait_event(
        id,
        "abort_requested",
        "its clean-up failed: tried again after 1 s",
    )
    .await;
    app.wait_event(
        id,
        "abort_requested",
        "its clean-up failed: tried again after 2 s",
    )
    .await;
    let told: Vec<Value> = app
        .history(id)
        .await
        .into_iter()
        .filter(|e| e["event"] == "abort_requested")
        .map(|e| e["detail"].clone())
        .collect();
    assert!(
        !told.iter().any(|d| d == "not restored within 1 s"),
        "{told:?}"
    );
}

#[tokio::test]
async fn a_secret_or_token_pasted_into_a_reason_is_kept_redacted() {
    let app = spawn_app().await;
    let id = "pasted-reason";
    app.start_to_idle(id).await;
    let token = app.token_of(id);
    let reason = format!("token was {token} key {API_KEY}");
    for action in ["pause", "resume"] {
        let answer = app
            .post(
                &format!("/trial/{id}/{action}"),
                Some(json!({"reason": reason})),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{action}: {answer:?}");
    }
    abort_shown(&app, id, &reason, "token was [redacted] key [redacted]").await;
    let history = app
        .get(&format!("/trial/{id}/history"))
        .await
        .body
        .to_string();
    for secret in [token.as_str(), API_KEY] {
        assert!(!history.contains(secret), "{secret} in {history}");
    }
    assert!(
        history.contains("token was [redacted] key [redacted]"),
        "{history}"
    );
}

/// A delete of an engine whose trial may still have a slice or a measurement job deployed is
/// refused, and changes nothing: forgotten with the engine, they would stay on the facility
/// with nothing to say so. Abort first, or delete with `force=true`, which names them.
#[tokio::test]
async fn deleting_an_engine_whose_slice_is_deployed_needs_an_abort_first_or_force() {
    let app = spawn_app_with_settings(|s| {
        single_attempt(s);
        // Ended trials leave memory at once: a delete reads their records.
        s.engine.keep_finished_secs = 0;
    })
    .await;
    let (id, kept) = ("deployed-del", "deployed-kept");
    let (skipped, cleaning) = ("closed-by-hand", "still-cleaning");
    let close = |trial, action| {
        Fault::new(Component::Enforcement, "DELETE", "/sliceDeployment", action).for_trial(trial)
    };
    app.platform
        .inject(close(skipped, FaultAction::Status(500)));
    app.platform.inject(close(cleaning, FaultAction::Hang));
    for trial in [skipped, cleaning] {
        app.start_to_idle(trial).await;
    }
    // Its close skipped, a finished trial's slice is for a human to close: the delete says so.
    let finish = app.post(&format!("/trial/{skipped}/finish"), None).await;
    assert_eq!(finish.status, StatusCode::OK, "{finish:?}");
    app.wait_failed(skipped).await;
    let skip = json!({"reason": "closed on the facility by hand"});
    let answer = app
        .post(&format!("/debug/engine/{skipped}/skip"), Some(skip))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    app.wait_finished(skipped).await;
    app.wait_engine_gone(skipped).await;
    let (refused, message) = app.delete_refused_then_forced(skipped).await;
    assert!(
        message.contains("left deployed: slice slice-closed-by-hand"),
        "{message}"
    );
    assert!(
        refused
            .detail()
            .contains("close them on the facility by hand"),
        "{refused:?}"
    );
    // While the clean-up closes it, the delete says to wait for it.
    let aborted = app.ask_abort(cleaning, "stop").await;
    assert_eq!(aborted.status, StatusCode::OK, "{aborted:?}");
    app.wait_sent(cleaning, "DELETE", "/sliceDeployment").await;
    let refused = app.delete(&format!("/debug/engine/{cleaning}")).await;
    assert_detail(&refused, StatusCode::CONFLICT);
    assert!(
        refused.detail().contains("clean-up is under way"),
        "{refused:?}"
    );
    // A slice whose deployment was never answered has no known id: the delete says so, and
    // by what trial enforcement closes it, rather than pass the trial's id off as the slice's.
    let unanswered = "never-answered";
    app.platform
        .inject(slice_deployment_fault(unanswered, FaultAction::Hang));
    app.start_trial(unanswered).await;
    app.wait_sent(unanswered, "POST", "/sliceDeployment").await;
    let (_, message) = app.delete_refused_then_forced(unanswered).await;
    assert!(
        message.contains(
            "left deployed: slice unknown: no answer to its deployment (Idempotency-Key "
        ) && message.contains("closes it by the trial id, never-answered"),
        "{message}"
    );

    for trial in [id, kept] {
        app.start_to_idle(trial).await;
        let active = app.post(&format!("/trial/{trial}/active"), None).await;
        assert_eq!(active.status, StatusCode::OK, "{active:?}");
        app.wait_waiting(trial, "operator (finish)").await;
    }
    let before = app.event_kinds(id).await;
    let refused = app.delete(&format!("/debug/engine/{id}")).await;
    assert_detail(&refused, StatusCode::CONFLICT);
    assert!(
        refused.detail().contains("abort it first") && refused.detail().contains("force=true"),
        "{refused:?}"
    );
    for bad in ["?force=yes", "?force=true&force=true", "?forse=true"] {
        let refused = app.delete(&format!("/debug/engine/{id}{bad}")).await;
        assert_detail(&refused, StatusCode::BAD_REQUEST);
    }
    assert_eq!(app.event_kinds(id).await, before);
    assert_eq!(
        app.trial_status(id).await["waiting_for"],
        "the operator (finish)"
    );

    // Told to leave them, the delete names what it left, in its answer and its audit entry.
    let forced = app.delete(&format!("/debug/engine/{id}?force=true")).await;
    assert_eq!(forced.status, StatusCode::OK, "{forced:?}");
    let left = "left deployed: slice slice-deployed-del, measurement_job mj-deployed-del";
    assert!(
        forced.body["message"]
            .as_str()
            .is_some_and(|m| m.contains(left)),
        "{forced:?}"
    );
    app.audited(&format!("?trial_id={id}"), "the forced delete", |entries| {
        entries.iter().any(|e| {
            e["action"] == "DELETE /debug/engine/{trial_id}"
                && e["detail"].as_str().is_some_and(|d| d.contains(left))
        })
    })
    .await;

    // Aborted, nothing is left: the delete needs no force.
    let aborted = app.ask_abort(kept, "done with it").await;
    assert_eq!(aborted.status, StatusCode::OK, "{aborted:?}");
    app.wait_for(kept, "aborted", |s| s["engine_status"] == "Aborted")
        .await;
    let deleted = app.delete(&format!("/debug/engine/{kept}")).await;
    assert_eq!(deleted.status, StatusCode::OK, "{deleted:?}");
    assert_eq!(
        deleted.body["message"],
        format!("Engine of trial {kept} stopped and removed")
    );
}

/// KPI monitoring refusing the clean-up's `Finished` marking for good (a 4xx asking again
/// would get again) does not hold the abort: the slice and the job are undone, and the trial
/// ends `Aborted` with the repository told so, as when the repository refuses `ABORTED`.
#[tokio::test]
async fn a_kpi_marking_refused_for_good_does_not_hold_the_abort() {
    let app = spawn_app().await;
    let (refused, down) = ("kpi-refuses", "kpi-down");
    for id in [refused, down] {
        app.start_to_idle(id).await;
        let active = app.post(&format!("/trial/{id}/active"), None).await;
        assert_eq!(active.status, StatusCode::OK, "{active:?}");
        app.wait_waiting(id, "operator (finish)").await;
    }
    app.platform
        .inject(kpi_marking_fault(FaultAction::Status(404)).for_trial(refused));
    let status = abort(&app, refused, "KPI service dropped the trial").await;
    assert_eq!(status["leftovers"], json!([]), "{status}");
    assert_eq!(
        app.platform.last_status(refused).as_deref(),
        Some("ABORTED")
    );
    let responses = app.get(&format!("/trial/{refused}/responses")).await.body;
    let marking = (responses["responses"].as_array().into_iter().flatten())
        .find(|r| r["step"] == "SendKpiFinish")
        .unwrap_or_else(|| panic!("{responses}"));
    assert_eq!(marking["status"], 404, "{marking}");

    // Not so a KPI monitoring that answers 401 (the LCM's own credentials, which can be
    // mended): the clean-up fails once everything deployed is undone, and says why.
    app.platform
        .inject(kpi_marking_fault(FaultAction::Status(401)).for_trial(down));
    let answer = app.ask_abort(down, "KPI credentials wrong").await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let failed = app.wait_cleanup_failed(down).await;
    assert_failure_says(&failed, "SendKpiFinish");
    assert_eq!(failed["leftovers"], json!([]), "{failed}");
}

#[tokio::test]
async fn a_step_that_cannot_be_saved_is_refused_503_and_runs_nothing() {
    let (app, faults) =
        spawn_app_with_store_faults(AppOptions::default(), StoreFaults::default()).await;
    // One after the other: a fault is the whole store's.
    step_refused_while(&app, "step-unsaved", &faults.broken).await;
    // A full disk: the pause's own write commits, as it changes nothing.
    step_refused_while(&app, "step-disk-full", &faults.full).await;
}

/// Holds trial `id` paused before a step, then asks for the step while `fault` is on: refused
/// 503, nothing runs nor says it did; asked again once it is off, the step runs.
async fn step_refused_while(app: &TestApp, id: &str, fault: &std::sync::atomic::AtomicBool) {
    app.start_to_idle(id).await;
    let paused = app.post(&format!("/trial/{id}/pause"), None).await;
    assert_eq!(paused.status, StatusCode::OK, "{paused:?}");
    let active = app.post(&format!("/trial/{id}/active"), None).await;
    assert_eq!(active.status, StatusCode::OK, "{active:?}");
    let held_before = |s: &Value| s["step"] == "SendKpiActive" && s["status"] == "Waiting";
    app.wait_for(id, "held before SendKpiActive", held_before)
        .await;
    let sent = lines(app, id);

    fault.store(true, std::sync::atomic::Ordering::SeqCst);
    let step = format!("/trial/{id}/step");
    let refused = app.post(&step, None).await;
    fault.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_detail(&refused, StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.detail().contains("not saved"), "{refused:?}");
    // Nothing ran and nothing says it did: still held before the step.
    let status = app.trial_status(id).await;
    assert!(held_before(&status), "{status}");
    assert_eq!(lines(app, id), sent);
    let kinds = app.event_kinds(id).await;
    assert!(!kinds.iter().any(|k| k == "stepped"), "{kinds:?}");

    // Sent again once the store writes, it runs the step and the trial stays paused.
    assert_eq!(app.post(&step, None).await.status, StatusCode::OK);
    app.wait_for(id, "held before UpdateStatusActive", |s| {
        s["step"] == "UpdateStatusActive" && s["status"] == "Waiting"
    })
    .await;
    assert_eq!(app.trial_status(id).await["paused"], true);
}

#[tokio::test]
async fn a_kpi_marking_sent_shows_while_its_step_s_next_marking_waits() {
    // A held request is not given up on while the test looks at it.
    let app = spawn_app_with_settings(|s| s.executor.request_timeout_secs = 300).await;
    let id = "marking-shown";
    // SendKpiIdle's second marking (for the slice) is held until the test has looked.
    let second = Gate::default();
    app.platform.inject(
        Fault::new(
            Component::Kpi,
            "POST",
            "/markKPIData",
            FaultAction::HoldUntil(second.clone()),
        )
        .for_trial(id)
        .after(1)
        .times(1),
    );
    app.start_trial(id).await;
    // Shown as a restart would read it: the Idle marking counts once sent.
    app.wait_for(id, "SendKpiIdle's first marking shown", |s| {
        s["step"] == "SendKpiIdle" && s["kpi_status"] == "Idle"
    })
    .await;
    second.open();
    let waiting = app.wait_waiting(id, WAITING_OPERATOR).await;
    assert_eq!(waiting["kpi_status"], "Idle", "{waiting}");
}

#[tokio::test]
async fn a_paused_trial_that_fails_is_told_how_to_go_on_and_a_restore_keeps_its_pause() {
    let app = spawn_app_with_settings(|s| s.executor.callback_timeout_secs = 2).await;
    let id = "paused-then-failed";
    let token = app.wait_at_slice_callback(id).await;
    let paused = app.post(&format!("/trial/{id}/pause"), None).await;
    assert_eq!(paused.status, StatusCode::OK, "{paused:?}");
    let failed = app.wait_failed(id).await;
    assert_eq!(failed["paused"], true, "{failed}");

    // Resume does not fit a failed trial: the refusal says what does.
    let refused = app.post(&format!("/trial/{id}/resume"), None).await;
    assert_detail(&refused, StatusCode::CONFLICT);
    assert!(
        refused.detail().contains("restore it to go on"),
        "{refused:?}"
    );
    let restored = app.post(&format!("/debug/engine/{id}/restore"), None).await;
    assert_eq!(restored.status, StatusCode::OK, "{restored:?}");
    let waiting = app.wait_waiting(id, WAITING_SLICE).await;
    assert_eq!(waiting["paused"], true, "{waiting}");
    let resumed = app.post(&format!("/trial/{id}/resume"), None).await;
    assert_eq!(resumed.status, StatusCode::OK, "{resumed:?}");
    let answer = app.callback(id, "slice", Some(&token)).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    app.wait_waiting(id, WAITING_OPERATOR).await;
}
