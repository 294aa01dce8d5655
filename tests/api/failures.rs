//! Failures (SPEC §4.3): a failure at every step, garbage from services, services that time out
//! or vanish, a panicking executor, restore and delete.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use lcm::engine::EngineHooks;
use lcm::engine::sequence::Step;
use lcm::sim::{Component, Fault, FaultAction, Platform};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

/// Moves a trial along (active and finish when it waits for the operator) until `stop` holds.
async fn drive_until(app: &TestApp, id: &str, what: &str, stop: impl Fn(&Value) -> bool) -> Value {
    let path = format!("/trial/{id}/status");
    eventually(&format!("trial {id}: {what}"), || async {
        let answer = app.get(&path).await;
        if answer.status != StatusCode::OK {
            return Err("not started yet".to_owned());
        }
        let status = answer.body;
        if stop(&status) {
            return Ok(status);
        }
        match status["waiting_for"].as_str() {
            Some(w) if w.contains("active or finish") => {
                app.post(&format!("/trial/{id}/active"), None).await;
            }
            Some(w) if w.contains("(finish)") => {
                app.post(&format!("/trial/{id}/finish"), None).await;
            }
            _ => {}
        }
        Err(status.to_string())
    })
    .await
}

/// Fails one trial at `step` with `fault`, checks the failure, restores it and finishes it.
async fn fail_and_restore(step: Step, fault: Fault) {
    let app = spawn_app_with_settings(single_attempt).await;
    let id = format!("fail-{}", step.name());
    app.platform.inject(fault.times(1));
    app.start_trial(&id).await;
    let failed = drive_until(&app, &id, "Failed", |s| s["restorable"] == true).await;
    let reason = failed["failure"].as_str().unwrap_or_default().to_owned();
    assert!(
        reason.starts_with(&format!("{} failed", step.name())),
        "{step:?}: {reason}"
    );
    assert_eq!(failed["engine_status"], "Failed");
    assert_eq!(failed["restorable"], true);
    assert_eq!(app.engines().await, [(id.clone(), "Failed".to_owned())]);
    assert_eq!(
        app.platform.trial_status(&id).as_deref(),
        Some("FAILED"),
        "{step:?}"
    );

    let file = app
        .failure_file(&id)
        .unwrap_or_else(|| panic!("{step:?}: no failure file"));
    assert_eq!(file["reason"], reason);
    assert_eq!(file["parameters"]["state"], step.name());
    assert_eq!(file["parameters"]["status"], "Failed");
    assert_eq!(file["parameters"]["token"], "[redacted]");
    let responses = file["responses"].as_array().expect("responses");
    assert!(
        responses
            .iter()
            .any(|r| r["step"] == step.name() && r["status"] == 500),
        "{step:?}: the failing answer is in the file"
    );
    assert_eq!(responses.last().expect("report")["step"], "ReportFailure");
    let text = std::fs::read_to_string(app.logs.path().join(format!("executor_{id}_fail.log")))
        .expect("read");
    // Every HS256 JWT starts with the base64 of '{"': no token of any kind is in the file.
    assert!(
        !text.contains("eyJ"),
        "{step:?}: a token leaked into the failure file"
    );

    let restore = app.post(&format!("/debug/engine/{id}/restore"), None).await;
    assert_eq!(restore.status, StatusCode::OK, "{step:?}: {restore:?}");
    drive_until(&app, &id, "Finished", |s| {
        assert_ne!(s["failed"], true, "{step:?}: failed again: {s}");
        s["finished"] == true
    })
    .await;
    let history = app.platform.status_history(&id);
    assert_eq!(
        history.last().map(String::as_str),
        Some("FINISHED"),
        "{step:?}: {history:?}"
    );
    assert_eq!(app.engines().await, [(id.clone(), "Finished".to_owned())]);
    let again = app.post(&format!("/debug/engine/{id}/restore"), None).await;
    assert_eq!(
        again.status,
        StatusCode::CONFLICT,
        "a finished engine is not restored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_at_any_step_fails_the_trial_and_a_restore_completes_it() {
    use Component::*;
    let fault = |component, method, path: &str| {
        Fault::new(component, method, path, FaultAction::Status(500))
    };
    let put = || fault(Repository, "PUT", "/trial/");
    let mark = || fault(Kpi, "POST", "/markKPIData");
    let cases = [
        (Step::GetTrialInfo, fault(Repository, "GET", "/trial/")),
        (
            Step::SliceDeployment,
            fault(Enforcement, "POST", "/sliceDeployment"),
        ),
        (Step::UpdateDeploymentSlice, put()),
        (
            Step::EnforceUavPlan,
            fault(Enforcement, "POST", "/flightplan"),
        ),
        (Step::UpdateUavPlanStatus, put().after(1)),
        (
            Step::CreateMeasurementJob,
            fault(Enforcement, "POST", "/measurementjobs"),
        ),
        (Step::SendKpiIdle, mark()),
        (Step::UpdateStatusIdle, put().after(2)),
        (Step::SendKpiActive, mark().after(2)),
        (Step::UpdateStatusActive, put().after(3)),
        (Step::UpdateStatusStopping, put().after(4)),
        (Step::SendKpiFinish, mark().after(4)),
        (
            Step::DeleteMeasurementJob,
            fault(Enforcement, "DELETE", "/measurementjobs/"),
        ),
        (
            Step::CloseService,
            fault(Enforcement, "DELETE", "/sliceDeployment/"),
        ),
        (Step::UpdateStatusFinish, put().after(5)),
    ];
    join_all(
        cases
            .into_iter()
            .map(|(step, fault)| fail_and_restore(step, fault)),
    )
    .await;
}

async fn fails_with(trial: Value, faults: Vec<Fault>, expected: &str) {
    let app = spawn_app().await;
    let id = trial["id"].as_str().expect("id").to_owned();
    for fault in faults {
        app.platform.inject(fault);
    }
    app.platform.add_trial(trial);
    app.schedule_in(&id, 300).await;
    let failed = app.wait_failed(&id).await;
    let reason = failed["failure"].as_str().unwrap_or_default();
    assert!(
        reason.contains(expected),
        "expected '{expected}' in '{reason}'"
    );
    assert!(
        reason.chars().count() <= 1_000,
        "{} characters",
        reason.len()
    );
    assert!(app.failure_file(&id).is_some());
}

#[tokio::test]
async fn garbage_from_services_fails_the_step_naming_what_is_missing() {
    use Component::*;
    let ok = |id: &str| Platform::trial(id, None);
    let mut pending = ok("not-approved");
    pending["status"] = json!("PENDING");
    let mut unknown_facility = ok("facility");
    unknown_facility["facility"] = json!("MARS");
    // A value as large as the registry likes is quoted cut short.
    let mut huge_status = ok("huge-status");
    huge_status["status"] = json!(format!("PENDING{}", "x".repeat(100_000)));
    let mut bad_nst = ok("bad-nst");
    bad_nst["nst"] = json!("{'unterminated");
    let mut no_flights = ok("no-flights");
    no_flights
        .as_object_mut()
        .expect("object")
        .remove("flights");
    let mut kpis_not_a_list = ok("kpis-not-a-list");
    kpis_not_a_list["kpis"] = json!("latency");
    join_all([
        fails_with(
            ok("garbage-trial"),
            vec![Fault::new(
                Repository,
                "GET",
                "/trial/",
                FaultAction::Garbage,
            )],
            "not a trial object",
        ),
        fails_with(
            ok("no-slice-id"),
            vec![Fault::new(
                Enforcement,
                "POST",
                "/sliceDeployment",
                FaultAction::Json(201, json!({"status": "ok"})),
            )],
            "Slice.id",
        ),
        fails_with(
            ok("empty-slice-id"),
            vec![Fault::new(
                Enforcement,
                "POST",
                "/sliceDeployment",
                FaultAction::Json(201, json!({"Slice": {"id": ""}})),
            )],
            "no 'Slice.id' (a string that is not blank, or a number)",
        ),
        fails_with(
            ok("empty-measurement-id"),
            vec![Fault::new(
                Enforcement,
                "POST",
                "/measurementjobs",
                FaultAction::Json(201, json!({"MeasurementID": "  "})),
            )],
            "no 'MeasurementID' (a string that is not blank, or a number)",
        ),
        fails_with(kpis_not_a_list, vec![], "'kpis' is not a list"),
        fails_with(
            ok("no-measurement"),
            vec![Fault::new(
                Enforcement,
                "POST",
                "/measurementjobs",
                FaultAction::Json(201, json!({"status": "ok"})),
            )],
            "MeasurementID",
        ),
        fails_with(
            ok("garbage-slice"),
            vec![Fault::new(
                Enforcement,
                "POST",
                "/sliceDeployment",
                FaultAction::Garbage,
            )],
            "Slice.id",
        ),
        fails_with(
            ok("asked-for"),
            vec![Fault::new(
                Repository,
                "GET",
                "/trial/",
                FaultAction::Json(200, Platform::trial("someone-else", None)),
            )],
            "answered trial 'someone-else' when asked for trial 'asked-for'",
        ),
        fails_with(pending, vec![], "trial status is 'PENDING', not APPROVED"),
        fails_with(unknown_facility, vec![], "unknown facility 'MARS'"),
        fails_with(huge_status, vec![], "trial status is 'PENDINGxxx"),
        fails_with(bad_nst, vec![], "'nst'"),
        fails_with(no_flights, vec![], "no 'flights'"),
    ])
    .await;
}

#[tokio::test]
async fn a_service_that_times_out_or_vanishes_fails_the_trial() {
    let slow = async {
        let app = spawn_app_with_settings(|s| s.executor.request_timeout_secs = 1).await;
        app.platform.inject(Fault::new(
            Component::Enforcement,
            "POST",
            "/flightplan",
            FaultAction::Delay(Duration::from_secs(3)),
        ));
        app.start_trial("slow").await;
        let failed = app.wait_failed("slow").await;
        let reason = failed["failure"].as_str().unwrap_or_default().to_owned();
        assert!(reason.contains("did not answer within 1 s"), "{reason}");
    };
    let gone = async {
        let app = spawn_app_with_settings(|s| {
            s.services.trial_enforcement.url = "http://127.0.0.1:1".into()
        })
        .await;
        app.start_trial("gone").await;
        let failed = app.wait_failed("gone").await;
        let reason = failed["failure"].as_str().unwrap_or_default().to_owned();
        assert!(
            reason.starts_with("SliceDeployment failed") && reason.contains("unreachable"),
            "{reason}"
        );
    };
    tokio::join!(slow, gone);
}

#[tokio::test]
async fn the_watchdog_catches_a_panicking_step_and_the_engine_restores() {
    let armed = Arc::new(AtomicBool::new(true));
    let trigger = armed.clone();
    let hooks = EngineHooks {
        before_step: Some(Arc::new(move |_, step| {
            if step == Step::EnforceUavPlan && trigger.swap(false, Ordering::SeqCst) {
                panic!("injected panic in EnforceUavPlan");
            }
        })),
    };
    let app = spawn_app_with(AppOptions {
        hooks,
        ..AppOptions::default()
    })
    .await;
    let id = "panicky";
    app.start_trial(id).await;
    let failed = app.wait_failed(id).await;
    let reason = failed["failure"].as_str().unwrap_or_default();
    assert!(
        reason.contains("panicked: injected panic in EnforceUavPlan"),
        "{reason}"
    );
    assert_eq!(app.engines().await, [(id.to_owned(), "Failed".to_owned())]);
    assert_eq!(app.platform.trial_status(id).as_deref(), Some("FAILED"));
    let file = app.failure_file(id).expect("failure file");
    assert_eq!(file["parameters"]["state"], "EnforceUavPlan");

    let restore = app.post(&format!("/debug/engine/{id}/restore"), None).await;
    assert_eq!(restore.status, StatusCode::OK, "{restore:?}");
    app.drive_to_finished(id).await;
    let flights = lines(&app, id)
        .iter()
        .filter(|l| *l == "POST /flightplan")
        .count();
    assert_eq!(flights, 1, "the panic struck before the request went out");
}

#[tokio::test]
async fn deleting_an_engine_cancels_the_request_in_flight() {
    let app = spawn_app().await;
    let id = "hang";
    app.platform.inject(
        Fault::new(
            Component::Enforcement,
            "POST",
            "/flightplan",
            FaultAction::Hang,
        )
        .for_trial(id),
    );
    app.start_trial(id).await;
    app.wait_for(id, "EnforceUavPlan", |s| s["state"] == "EnforceUavPlan")
        .await;
    let running = app.post(&format!("/debug/engine/{id}/restore"), None).await;
    assert_eq!(
        running.status,
        StatusCode::CONFLICT,
        "a running engine is not restored"
    );

    let deleted = app.delete(&format!("/debug/engine/{id}?force=true")).await;
    assert_eq!(deleted.status, StatusCode::OK, "{deleted:?}");
    assert!(app.engines().await.is_empty());
    assert_eq!(
        app.get(&format!("/trial/{id}/status")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.delete(&format!("/debug/engine/{id}?force=true"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let token = app.token_of(id);
    assert_eq!(
        app.callback(id, "slice", Some(&token)).await.status,
        StatusCode::UNAUTHORIZED,
        "deleting the engine revoked its token"
    );
    let before = lines(&app, id).len();
    // A trial run to IDLE meanwhile: long enough for a stray task to send something.
    app.start_trial("after-delete").await;
    app.wait_waiting("after-delete", "operator (active or finish)")
        .await;
    assert_eq!(
        lines(&app, id).len(),
        before,
        "a deleted engine sends nothing more"
    );
    assert_ne!(app.platform.trial_status(id).as_deref(), Some("FAILED"));

    // The trial can be scheduled again once its engine is gone; the old token stays refused.
    app.platform.clear_faults();
    app.start_trial(id).await;
    app.wait_waiting(id, "operator (active or finish)").await;
    assert_eq!(
        app.callback(id, "slice", Some(&token)).await.status,
        StatusCode::UNAUTHORIZED,
        "the deleted engine's token was revoked"
    );
}

#[tokio::test]
async fn a_rerun_delete_that_finds_the_job_gone_counts_as_done() {
    let app = spawn_app_with_settings(single_attempt).await;
    let id = "gone-job";
    for action in [
        FaultAction::Status(500),
        FaultAction::Json(404, json!({"detail": "Not found."})),
    ] {
        app.platform.inject(
            Fault::new(
                Component::Enforcement,
                "DELETE",
                "/measurementjobs/",
                action,
            )
            .times(1),
        );
    }
    app.start_trial(id).await;
    let failed = drive_until(&app, id, "Failed", |s| s["restorable"] == true).await;
    assert_eq!(failed["state"], "DeleteMeasurementJob");
    let restore = app.post(&format!("/debug/engine/{id}/restore"), None).await;
    assert_eq!(restore.status, StatusCode::OK);
    app.wait_finished(id).await;
    let deletes = lines(&app, id)
        .iter()
        .filter(|l| l.starts_with("DELETE /measurementjobs/"))
        .count();
    assert_eq!(deletes, 2);
}

#[tokio::test]
async fn a_delete_whose_answer_was_lost_finds_it_done_on_its_retry() {
    let app = spawn_app().await;
    let id = "answer-lost";
    // Trial enforcement deletes the job and closes the slice, but the first answer of each
    // is lost (a 503 here); the retry finds nothing left to delete or close.
    for path in ["/measurementjobs/", "/sliceDeployment/"] {
        for action in [
            FaultAction::Status(503),
            FaultAction::Json(404, json!({"detail": "Not found."})),
        ] {
            app.platform.inject(
                Fault::new(Component::Enforcement, "DELETE", path, action)
                    .for_trial(id)
                    .times(1),
            );
        }
    }
    app.start_trial(id).await;
    app.wait_waiting(id, WAITING_OPERATOR).await;
    for signal in ["active", "finish"] {
        let answer = app.post(&format!("/trial/{id}/{signal}"), None).await;
        assert_eq!(answer.status, StatusCode::OK, "{signal}: {answer:?}");
    }
    // The slice closed, the trial waits for the closing's callback (the simulated component
    // makes none after a 404: the test sends it).
    app.wait_waiting(id, "slice callback (slice closed)").await;
    let closed = app.callback(id, "slice", Some(&app.token_of(id))).await;
    assert_eq!(closed.status, StatusCode::OK, "{closed:?}");
    app.wait_finished(id).await;
    let deletes = lines(&app, id)
        .iter()
        .filter(|l| l.starts_with("DELETE "))
        .count();
    assert_eq!(deletes, 4, "each delete sent twice");
}

#[tokio::test]
async fn secrets_a_service_echoes_back_are_redacted_everywhere() {
    let app = spawn_app_with_settings(|s| {
        s.services.abstraction_layer.password = lcm::config::Secret::new("al-secret-pw");
    })
    .await;
    let id = "echo";
    for path in ["/sliceDeployment", "/measurementjobs"] {
        app.platform.inject(Fault::new(
            Component::Enforcement,
            "POST",
            path,
            FaultAction::EchoRequest,
        ));
    }
    app.platform.inject(Fault::new(
        Component::Enforcement,
        "POST",
        "/flightplan",
        FaultAction::Status(500),
    ));
    app.start_trial(id).await;
    app.wait_failed(id).await;
    let token = app.token_of(id);
    let requests = app.platform.requests_for(id);
    let job_request = requests.iter().find(|r| r.path == "/measurementjobs");
    assert!(job_request.is_none(), "the trial failed before the job");

    let responses = app.get(&format!("/trial/{id}/responses")).await.body;
    let slice = responses["responses"]
        .as_array()
        .expect("list")
        .iter()
        .find(|r| r["step"] == "SliceDeployment" && r["status"] == 201)
        .expect("slice answer");
    assert_eq!(
        slice["body"]["echo"]["Authorization"], "[redacted]",
        "{slice}"
    );
    let file = std::fs::read_to_string(app.logs.path().join(format!("executor_{id}_fail.log")))
        .expect("failure file");
    for shown in [responses.to_string(), file] {
        assert!(!shown.contains(&token), "the token leaked");
        assert!(!shown.contains("eyJ"), "a token leaked");
    }
}

#[tokio::test]
async fn credentials_a_service_echoes_back_are_not_recorded() {
    let app = spawn_app_with_service_credentials().await;
    let id = "echo-credentials";
    // An API key, HTTP Basic, and an OAuth2 access token fetched at run time.
    for (component, method, path) in [
        (Component::Repository, "GET", "/trial/"),
        (Component::Enforcement, "POST", "/sliceDeployment"),
        (Component::Kpi, "POST", "/markKPIData"),
    ] {
        app.platform.inject(
            Fault::new(component, method, path, FaultAction::EchoAuthorization)
                .for_trial(id)
                .times(1),
        );
    }
    app.start_trial(id).await;
    app.wait_waiting(id, "operator (active or finish)").await;
    let sent: Vec<String> = app
        .platform
        .requests_for(id)
        .into_iter()
        .filter_map(|r| r.authorization)
        .collect();
    for credential in [
        "repo-key",
        "Basic bGNtOmVuZm9yY2UtcHc=",
        "Bearer kpi-access-1",
    ] {
        assert!(
            sent.iter().any(|a| a == credential),
            "{credential} sent: {sent:?}"
        );
    }

    let responses = app.get(&format!("/trial/{id}/responses")).await.body;
    let echoed: Vec<&Value> = responses["responses"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|r| r["body"].get("authorization"))
        .collect();
    assert_eq!(echoed.len(), 3, "each echo is kept: {responses}");
    for echo in echoed {
        assert!(
            echo.as_str().is_some_and(|e| e.contains("[redacted]")),
            "{echo}"
        );
    }
    let shown = responses.to_string();
    for secret in ["repo-key", "bGNtOmVuZm9yY2UtcHc=", "kpi-access-1"] {
        assert!(!shown.contains(secret), "{secret} was recorded: {shown}");
    }
}

#[tokio::test]
async fn the_trials_data_is_passed_on_unchanged_where_it_holds_a_secrets_text() {
    let app = spawn_app_with_settings(|s| {
        s.services.abstraction_layer.password = lcm::config::Secret::new("ridge");
    })
    .await;
    let id = "survey-7";
    let mut trial = Platform::trial(id, None);
    trial["kpis"] = json!(["ridge_latency"]);
    trial["flights"] = json!([{"id": 1, "waypoint": "north ridge"}]);
    app.platform.add_trial(trial);
    app.schedule_in(id, 300).await;
    app.wait_waiting(id, "operator (active or finish)").await;
    let requests = app.platform.requests_for(id);
    let body_of = |path: &str| {
        requests
            .iter()
            .find(|r| r.path == path)
            .and_then(|r| r.body.clone())
            .unwrap_or_else(|| panic!("{path} sent: {requests:?}"))
    };
    assert_eq!(
        body_of("/flightplan")["flight_plan"]["flights"],
        json!([{"id": 1, "waypoint": "north ridge"}])
    );
    assert_eq!(
        body_of("/measurementjobs")["measurement_job"]["kpis"],
        json!(["ridge_latency"])
    );
    // What is shown is redacted as before.
    let responses = app.get(&format!("/trial/{id}/responses")).await.body;
    let shown = responses.to_string();
    assert!(
        !shown.contains("north ridge") && shown.contains("north [redacted]"),
        "{responses}"
    );
}

#[tokio::test]
async fn a_password_echoed_in_the_measurement_job_is_not_kept() {
    let app = spawn_app_with_settings(|s| {
        s.services.abstraction_layer.password = lcm::config::Secret::new("al-secret-pw");
    })
    .await;
    let id = "echo-job";
    app.platform.inject(Fault::new(
        Component::Enforcement,
        "POST",
        "/measurementjobs",
        FaultAction::EchoRequest,
    ));
    app.platform
        .inject(kpi_marking_fault(FaultAction::Status(500)));
    app.start_trial(id).await;
    app.wait_failed(id).await;
    let sent = app
        .platform
        .requests_for(id)
        .into_iter()
        .find(|r| r.path == "/measurementjobs")
        .expect("job request");
    assert_eq!(
        sent.body.expect("body")["measurement_job"]["auth"]["password"],
        "al-secret-pw"
    );
    let file = std::fs::read_to_string(app.logs.path().join(format!("executor_{id}_fail.log")))
        .expect("failure file");
    let responses = app
        .get(&format!("/trial/{id}/responses"))
        .await
        .body
        .to_string();
    for shown in [responses, file] {
        assert!(
            !shown.contains("al-secret-pw"),
            "the password leaked: {shown}"
        );
        assert!(shown.contains("[redacted]"));
    }
}

#[tokio::test]
async fn a_secret_quoted_in_a_failure_reason_is_redacted_where_it_is_shown() {
    let app = spawn_app_with_settings(|s| {
        s.services.abstraction_layer.password = lcm::config::Secret::new("al-secret-pw");
    })
    .await;
    let id = "quoted-secret";
    app.platform.inject(measurement_job_fault(
        id,
        FaultAction::Text(400, "password al-secret-pw refused".into()),
    ));
    app.start_trial(id).await;
    let failed = app.wait_failed(id).await;
    assert_failure_says(&failed, "password [redacted] refused");
    let history = app.history(id).await;
    let shown = format!("{failed} {history:?}");
    assert!(!shown.contains("al-secret-pw"), "{shown}");
}

/// A component's answer and a registry's field quoted in a failure reason are one line in
/// the log (the reason itself keeps them as they were): their line breaks, escaped, cannot
/// start a line of the service's own.
#[tokio::test]
async fn a_line_break_in_what_a_component_or_the_registry_says_cannot_start_a_log_line() {
    let app = spawn_binary().await;
    let (answered, registered) = ("forged-by-answer", "forged-by-registry");
    let forged = "INFO lcm: trial finished";
    app.platform.inject(measurement_job_fault(
        answered,
        FaultAction::Text(400, format!("refused\n{forged}")),
    ));
    let mut trial = Platform::trial(registered, None);
    trial["end_time"] = json!(format!("2031\u{2028}{forged}\r\n{forged}"));
    app.platform.add_trial(trial);
    app.start_trial(answered).await;
    app.schedule_in(registered, 300).await;
    let failed = app.wait_failed(answered).await;
    assert_failure_says(&failed, &format!("refused\n{forged}"));
    app.wait_failed(registered).await;
    let line = logged(&app, &["trial failed", answered, forged]).await;
    assert!(line.contains("refused\\n"), "{line}");
    let line = logged(&app, &["trial failed", registered, forged]).await;
    assert!(line.contains("2031\\u{2028}"), "{line}");
    assert!(line.contains("\\r\\n"), "{line}");
    let log = log_text(&app);
    assert!(
        !log.lines().any(|l| l.starts_with(forged)),
        "a line of the answer's own: {log}"
    );
}

/// A text answer is shown cut after 200 characters: a secret that the cut would split is
/// hidden whole first, so no part of it is shown. A JSON answer's keys are redacted like its
/// values.
#[tokio::test]
async fn no_part_of_a_secret_is_shown_where_an_answer_is_cut_or_names_it_in_a_key() {
    let secret = "al-secret-pw";
    let app = spawn_app_with_settings(move |s| {
        s.services.abstraction_layer.password = lcm::config::Secret::new(secret);
    })
    .await;
    let (cut, keyed) = ("cut-secret", "keyed-secret");
    app.platform.inject(measurement_job_fault(
        cut,
        FaultAction::Text(400, format!("{}{secret}", "y".repeat(195))),
    ));
    app.platform.inject(measurement_job_fault(
        keyed,
        FaultAction::Json(400, json!({format!("pw_{secret}"): 1, "token": "none"})),
    ));
    app.start_trial(cut).await;
    app.start_trial(keyed).await;
    for id in [cut, keyed] {
        let failed = app.wait_failed(id).await;
        let responses = app.get(&format!("/trial/{id}/responses")).await.body;
        let file = app.failure_file(id).expect("failure file");
        let shown = format!("{failed} {:?} {responses} {file}", app.history(id).await);
        assert!(
            !shown.contains("al-se"),
            "part of the secret is shown: {shown}"
        );
    }
    let responses = app.get(&format!("/trial/{keyed}/responses")).await.body;
    let job = responses["responses"]
        .as_array()
        .expect("list")
        .iter()
        .find(|r| r["status"] == 400)
        .expect("the job's answer");
    assert_eq!(job["body"]["pw_[redacted]"], 1, "{job}");
}

#[tokio::test]
async fn a_restore_at_the_operator_s_wait_tells_the_repository_the_trial_waits_again() {
    // Long enough for the pause to come before it, however slow the test.
    let app = spawn_app_with_settings(|s| s.executor.operator_timeout_secs = Some(5)).await;
    let id = "restored-at-idle";
    app.start_to_idle(id).await;
    // Paused, it times out all the same (deadlines keep running); restored, it is still paused.
    let paused = app.post(&format!("/trial/{id}/pause"), None).await;
    assert_eq!(paused.status, StatusCode::OK, "{paused:?}");
    let failed = app.wait_failed(id).await;
    assert_failure_says(&failed, "timed out waiting for the operator");
    eventually("FAILED reported", || async {
        match app.platform.trial_status(id).as_deref() {
            Some("FAILED") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let restored = app.post(&format!("/debug/engine/{id}/restore"), None).await;
    assert_eq!(restored.status, StatusCode::OK, "{restored:?}");
    // The repository hears the trial waits at IDLE again. (Its wait has a deadline again, so
    // what follows is not asserted.)
    eventually("IDLE written after FAILED", || async {
        let statuses = app.platform.status_history(id);
        if statuses.windows(2).any(|w| w == ["FAILED", "IDLE"]) {
            Ok(())
        } else {
            Err(format!("{statuses:?}"))
        }
    })
    .await;
}

/// Waits until the repository's statuses for `id` end with `last`.
async fn wait_statuses_end_with(app: &TestApp, id: &str, last: &[&str]) {
    eventually(&format!("{last:?} written last"), || async {
        let statuses = app.platform.status_history(id);
        if statuses
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .ends_with(last)
        {
            Ok(())
        } else {
            Err(format!("{statuses:?}"))
        }
    })
    .await;
}

#[tokio::test]
async fn a_restore_in_the_vnf_branch_tells_the_repository_the_trial_runs_again() {
    let app = spawn_app_with_settings(|s| {
        s.executor.disable_vnf = false;
        s.executor.callback_timeout_secs = 2;
        single_attempt(s);
    })
    .await;
    let id = "vnf-restored";
    let fault = |path: &str, action| {
        Fault::new(Component::Enforcement, "POST", path, action)
            .for_trial(id)
            .times(1)
    };
    // A VNF request refused once, then a VNF callback that never comes: each fails the trial.
    app.platform
        .inject(fault("/vnf/cloud/deployment", FaultAction::Status(500)));
    app.platform
        .inject(fault("/vnf/edge/boarding", FaultAction::DropCallback));
    app.start_trial(id).await;
    for (failed_at, paused) in [
        ("CloudVnfDeployment failed", false),
        ("timed out waiting for the edgevnfonboarding", true),
    ] {
        if paused {
            // Paused at the wait, it times out all the same, and is restored paused.
            app.wait_waiting(id, "edgevnfonboarding").await;
            let answer = app.post(&format!("/trial/{id}/pause"), None).await;
            assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        }
        let failed = app.wait_failed(id).await;
        assert_failure_says(&failed, failed_at);
        wait_statuses_end_with(&app, id, &["ACTIVATING_1", "FAILED"]).await;
        let restored = app.post(&format!("/debug/engine/{id}/restore"), None).await;
        assert_eq!(restored.status, StatusCode::OK, "{restored:?}");
        // Told at once, before the step runs again or the callback comes, paused or not.
        wait_statuses_end_with(&app, id, &["FAILED", "ACTIVATING_1"]).await;
    }
    let answer = app.post(&format!("/trial/{id}/resume"), None).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let token = app.token_of(id);
    let called = app.callback(id, "edgevnfonboarding", Some(&token)).await;
    assert_eq!(called.status, StatusCode::OK, "{called:?}");
    app.drive_to_finished(id).await;
    let all = lines(&app, id);
    let put = format!("PUT /trial/{id}/");
    let deployments: Vec<usize> = (0..all.len())
        .filter(|i| all[*i] == "POST /vnf/cloud/deployment")
        .collect();
    let [refused, sent_again] = deployments[..] else {
        panic!("the deployment is sent twice: {all:?}");
    };
    let puts = all[refused..sent_again]
        .iter()
        .filter(|l| **l == put)
        .count();
    assert_eq!(
        puts, 2,
        "FAILED, then the status again, before the deployment is sent again: {all:?}"
    );
    let history = app.platform.status_history(id);
    assert!(
        history.ends_with(
            &["ACTIVATING_2", "IDLE", "ACTIVE", "STOPPING", "FINISHED"].map(String::from)
        ),
        "{history:?}"
    );
}

#[tokio::test]
async fn a_close_run_again_that_finds_the_slice_gone_waits_for_no_callback() {
    let app = spawn_app_with_settings(single_attempt).await;
    let id = "closed-before";
    // The close is done but its answer is lost (here a 502): the trial fails there, and the
    // closing's callback, sent meanwhile, is refused. Run again, the close finds no slice.
    for action in [
        FaultAction::Status(502),
        FaultAction::Json(404, json!({"detail": "Not found."})),
    ] {
        app.platform.inject(
            Fault::new(
                Component::Enforcement,
                "DELETE",
                "/sliceDeployment/",
                action,
            )
            .for_trial(id)
            .times(1),
        );
    }
    app.start_trial(id).await;
    app.wait_waiting(id, WAITING_OPERATOR).await;
    let finish = app.post(&format!("/trial/{id}/finish"), None).await;
    assert_eq!(finish.status, StatusCode::OK, "{finish:?}");
    let failed = app.wait_failed(id).await;
    assert_eq!(failed["state"], "CloseService", "{failed}");
    let restored = app.post(&format!("/debug/engine/{id}/restore"), None).await;
    assert_eq!(restored.status, StatusCode::OK, "{restored:?}");
    app.wait_finished(id).await;
}

/// A component that answers with a redirect is not followed: the slice deployment's body
/// holds the trial's token, and it must reach the configured component only.
#[tokio::test]
async fn a_redirect_is_not_followed_and_fails_the_step() {
    let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a listener");
    let to = format!("http://{}/stolen", elsewhere.local_addr().expect("address"));
    let app = spawn_app_with_settings(single_attempt).await;
    let id = "redirected";
    app.platform
        .inject(slice_deployment_fault(id, FaultAction::Redirect(to)));
    app.start_trial(id).await;
    let failed = app.wait_failed(id).await;
    assert_failure_says(&failed, "answered 307 (expected 201 or 200)");
    let reached = tokio::time::timeout(std::time::Duration::ZERO, elsewhere.accept()).await;
    assert!(reached.is_err(), "the redirect was followed");
}

#[tokio::test]
async fn deleting_a_failed_trial_removes_its_failure_file() {
    let app = spawn_app().await;
    let id = "deleted-failed";
    let mut pending = Platform::trial(id, None);
    pending["status"] = json!("PENDING");
    app.platform.add_trial(pending);
    app.schedule_in(id, 300).await;
    app.wait_failed(id).await;
    assert!(app.failure_file(id).is_some());
    let deleted = app.delete(&format!("/debug/engine/{id}?force=true")).await;
    assert_eq!(deleted.status, StatusCode::OK, "{deleted:?}");
    assert!(app.failure_file(id).is_none(), "forgotten with the trial");
}
