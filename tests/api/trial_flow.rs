//! Whole trials, as the platform runs them: the happy path, finishing from IDLE, the VNF branch.

use lcm::sim::{Component, FaultAction};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

fn body_of<'a>(requests: &'a [lcm::sim::RecordedRequest], line: &str) -> &'a Value {
    requests
        .iter()
        .find(|r| r.line() == line)
        .and_then(|r| r.body.as_ref())
        .unwrap_or_else(|| panic!("no body for {line}"))
}

#[tokio::test]
async fn a_trial_runs_from_schedule_to_finished_with_the_exact_requests() {
    let app = spawn_app().await;
    let id = "happy-1";
    app.run_to_finished(id).await;

    let expected = full_sequence(id, true);
    assert_eq!(lines(&app, id), expected);
    assert_eq!(app.platform.status_history(id), FULL_HISTORY);
    for marked in [id.to_owned(), format!("slice-{id}")] {
        assert_eq!(
            app.platform.kpi_markings(&marked),
            ["Idle", "Active", "Finished"],
            "markings of {marked}"
        );
    }

    let requests = app.platform.requests_for(id);
    let token = app.token_of(id);
    let slice = requests
        .iter()
        .find(|r| r.line() == "POST /sliceDeployment")
        .expect("slice deployment");
    assert_eq!(
        slice.query["callback_url"],
        format!("{}/trial/{id}/callback/slice", app.address)
    );
    assert_eq!(
        slice.body.as_ref().expect("body"),
        &json!({
            "trialID": id,
            "NST": {"nst": {"name": "eMBB slice", "isolated": true, "shared": false, "qos": null}},
            "facility": "eurecom",
            "Authorization": token,
        })
    );
    assert_eq!(
        body_of(&requests, "POST /flightplan"),
        &json!({"trialID": id, "flight_plan": {"flights": [{"id": 1, "waypoints": [[43.61, 7.05], [43.62, 7.06]]}]}})
    );
    let job = body_of(&requests, "POST /measurementjobs");
    assert_eq!(job["trialID"], id);
    assert_eq!(job["facility"], "eurecom");
    assert_eq!(job["measurement_job"]["ns"], format!("slice-{id}"));
    assert_eq!(
        job["measurement_job"]["kpis"],
        json!(["latency", "throughput"])
    );
    assert_eq!(job["measurement_job"]["interval"], 10);
    assert_eq!(job["measurement_job"]["auth"]["port"], 8086);
    assert_eq!(
        body_of(&requests, &format!("DELETE /measurementjobs/mj-{id}")),
        &json!({"trialID": id, "facility": "eurecom"})
    );
    assert_eq!(
        body_of(&requests, &format!("DELETE /sliceDeployment/{id}")),
        &json!({"Authorization": token})
    );
    let marking = body_of(&requests, "POST /markKPIData");
    assert_eq!(marking["TrialID"], id);
    assert_eq!(marking["MarkingID"], id);
    assert_eq!(marking["Marking"], "Idle");
    let timestamp = marking["Timestamp"].as_str().expect("timestamp");
    assert!(
        chrono::NaiveDateTime::parse_from_str(timestamp, "%Y-%m-%dT%H:%M:%S").is_ok(),
        "{timestamp}"
    );
    let kpi_auth = requests
        .iter()
        .find(|r| r.component == Component::Kpi)
        .and_then(|r| r.authorization.clone());
    assert_eq!(kpi_auth.as_deref(), Some("Bearer kpi-access-1"));
    assert_eq!(
        app.platform.issued_kpi_tokens(),
        1,
        "the OAuth2 token is cached"
    );

    let status = app.trial_status(id).await;
    assert_eq!(status["status"], "Finished");
    assert_eq!(status["kpi_status"], "Finished");
    assert_eq!(status["finished"], true);
    assert_eq!(status["failed"], false);
    assert_eq!(
        app.engines().await,
        [(id.to_owned(), "Finished".to_owned())]
    );

    let responses = app.get(&format!("/trial/{id}/responses")).await;
    assert_eq!(responses.status, StatusCode::OK);
    let recorded = responses.body["responses"].as_array().expect("list");
    assert_eq!(recorded.len(), expected.len());
    assert_eq!(recorded[2]["step"], "SliceDeployment");
    assert_eq!(recorded[2]["status"], 201);
    assert_eq!(recorded[2]["body"]["Slice"]["id"], format!("slice-{id}"));
    assert!(!responses.body.to_string().contains(&token), "token leaked");

    let verify = app
        .call_as(
            reqwest::Method::GET,
            &format!("/token/{id}"),
            None,
            Some(&token),
        )
        .await;
    // Revoked at the end: a component calling back is told the trial has finished.
    assert_eq!(verify.status, StatusCode::FORBIDDEN, "{verify:?}");
    assert!(verify.detail().contains("has finished"), "{verify:?}");
    assert!(app.failure_file(id).is_none());
}

#[tokio::test]
async fn finishing_from_idle_skips_active() {
    let app = spawn_app().await;
    let id = "idle-finish";
    app.start_trial(id).await;
    app.wait_waiting(id, "operator (active or finish)").await;
    assert_eq!(app.trial_status(id).await["kpi_status"], "Idle");
    // A body the route does not take is refused, and the trial is not finished by it.
    for (body, status) in [
        (
            r#"{"reason": "battery low", "force": true}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (r#"{"reason": "#, StatusCode::BAD_REQUEST),
    ] {
        let refused = app.post_text(&format!("/trial/{id}/finish"), body).await;
        assert_detail(&refused, status);
        let engine = app
            .delete_with_body(&format!("/debug/engine/{id}"), body)
            .await;
        assert_detail(&engine, status);
    }
    let refused = app.post_text(&format!("/trial/{id}/finish"), "{}x").await;
    assert!(refused.detail().contains("JSON"), "{refused:?}");
    app.wait_waiting(id, "operator (active or finish)").await;
    assert_eq!(
        app.event_kinds(id).await.last().map(String::as_str),
        Some("waiting")
    );
    // `{}` is no body.
    let finish = app.post_text(&format!("/trial/{id}/finish"), " {} ").await;
    assert_eq!(finish.status, StatusCode::OK, "{finish:?}");
    app.wait_finished(id).await;

    assert_eq!(lines(&app, id), full_sequence(id, false));
    assert_eq!(app.platform.status_history(id), SHORT_HISTORY);
    assert_eq!(app.platform.kpi_markings(id), ["Idle", "Finished"]);
}

#[tokio::test]
async fn the_vnf_branch_runs_end_to_end() {
    let app = spawn_app_with_settings(|s| s.executor.disable_vnf = false).await;
    let id = "vnf-1";
    app.run_to_finished(id).await;

    let all = lines(&app, id);
    let vnf: Vec<&str> = all
        .iter()
        .map(String::as_str)
        .filter(|l| l.contains("/vnf/") || l.contains("/tap"))
        .collect();
    assert_eq!(
        vnf,
        [
            "POST /vnf/cloud/boarding",
            "POST /vnf/cloud/deployment",
            "POST /vnf/edge/boarding",
            "POST /vnf/edge/deployment",
            "POST /tap"
        ]
    );
    let position = |line: &str| all.iter().position(|l| l == line).expect(line);
    assert!(position("POST /vnf/cloud/boarding") > position(&format!("PUT /trial/{id}/")));
    assert!(position("POST /tap") < position("POST /flightplan"));

    let requests = app.platform.requests_for(id);
    let token = app.token_of(id);
    for (path, kind) in [
        ("/vnf/cloud/boarding", "cloudvnfboarding"),
        ("/vnf/cloud/deployment", "cloudvnfdeployment"),
        ("/vnf/edge/boarding", "edgevnfonboarding"),
        ("/vnf/edge/deployment", "edgevnfdeployment"),
    ] {
        let request = requests.iter().find(|r| r.path == path).expect(path);
        assert_eq!(request.query["trialID"], id);
        assert_eq!(
            request.query["callback_url"],
            format!("{}/trial/{id}/callback/{kind}", app.address)
        );
        assert_eq!(request.body, Some(json!({"Authorization": token})));
    }
    assert_eq!(
        body_of(&requests, "POST /tap"),
        &json!({"trialID": id, "name": format!("Trial {id}"), "facility": "eurecom", "target": "dummy"})
    );
    let callbacks = app.platform.callbacks();
    assert_eq!(callbacks.len(), 6, "two slice and four VNF callbacks");
    assert!(
        callbacks.iter().all(|c| c.status == Some(200)),
        "{callbacks:?}"
    );
    assert_eq!(app.platform.status_history(id), FULL_HISTORY);
}

#[tokio::test]
async fn the_status_endpoint_describes_each_waiting_point() {
    let app = spawn_app().await;
    let id = "status-1";
    app.platform.inject(drop_slice_callback(id));
    app.start_trial(id).await;
    let status = app.wait_waiting(id, "slice callback (slice created)").await;
    assert_eq!(status["state"], "Waiting");
    assert_eq!(status["message"], "Status: Waiting State: Waiting");
    assert_eq!(status["kpi_status"], Value::Null);
    assert_eq!(status["engine_status"], "Active");
    assert_eq!(app.engines().await, [(id.to_owned(), "Active".to_owned())]);
    let missing = app.get("/trial/nobody/status").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.detail().contains("nobody"));
    let bad = app.get("/trial/bad%20id/status").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn each_service_gets_its_own_credentials_and_a_401_refreshes_the_oauth2_token() {
    let app = spawn_app_with_service_credentials().await;
    app.platform
        .inject(kpi_marking_fault(FaultAction::Status(401)).times(1));
    let id = "creds";
    app.start_trial(id).await;
    app.wait_waiting(id, "operator (active or finish)").await;

    let requests = app.platform.requests_for(id);
    let auth_of = |component: Component| {
        requests
            .iter()
            .filter(|r| r.component == component)
            .map(|r| r.authorization.clone().unwrap_or_default())
            .collect::<Vec<_>>()
    };
    assert!(
        auth_of(Component::Repository)
            .iter()
            .all(|a| a == "repo-key")
    );
    // "lcm:enforce-pw" in base64.
    assert!(
        auth_of(Component::Enforcement)
            .iter()
            .all(|a| a == "Basic bGNtOmVuZm9yY2UtcHc=")
    );
    assert_eq!(
        auth_of(Component::Kpi),
        [
            "Bearer kpi-access-1",
            "Bearer kpi-access-2",
            "Bearer kpi-access-2"
        ],
        "the 401 dropped the cached token; the retry used a fresh one"
    );
    assert_eq!(app.platform.issued_kpi_tokens(), 2);
    assert_eq!(app.platform.kpi_markings(id), ["Idle", "Idle"]);
}
