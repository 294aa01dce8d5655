//! Tests: scheduling trials by hand, from the trial repository, all at once and automatically;
//! unscheduling; time zones; and every kind of bad request, which must change nothing.

use std::time::Duration;

use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use lcm::config::Role;
use lcm::sim::{Component, Fault, FaultAction, Platform};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

/// A time `secs` seconds from now, as the repository stores it.
fn in_secs(secs: i64) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::seconds(secs)
}

/// The trial repository answers every `GET` of a path containing `path` with `body`.
fn registry_answers(app: &TestApp, path: &str, body: Value) {
    app.platform.inject(Fault::new(
        Component::Repository,
        "GET",
        path,
        FaultAction::Json(200, body),
    ));
}

/// The scheduled jobs listed in `/status`.
async fn scheduled_trials(app: &TestApp) -> Vec<Value> {
    let answer = app.get("/status").await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    answer.body["scheduled_trials"]
        .as_array()
        .expect("scheduled_trials is an array")
        .clone()
}

/// The job of `id` in `/status`, if any.
async fn job_of(app: &TestApp, id: &str) -> Option<Value> {
    scheduled_trials(app)
        .await
        .into_iter()
        .find(|job| job["id"] == id)
}

/// Asserts the service has no job and no engine.
async fn assert_nothing_scheduled(app: &TestApp) {
    let body = app.get("/status").await.body;
    assert_eq!(body["scheduled_trials"], json!([]), "{body}");
    assert_eq!(body["Scheduler_status"], "Idle", "{body}");
    assert_eq!(body["Executor_Engine_instances"], json!([]), "{body}");
}

/// Sends `body` as-is to `POST /debug/trial/schedule`, with the given content type.
async fn post_raw(app: &TestApp, body: impl Into<String>, content_type: Option<&str>) -> Answer {
    let mut request = app
        .client
        .post(format!("{}/debug/trial/schedule", app.address))
        .header("Authorization", API_KEY)
        .body(body.into());
    if let Some(content_type) = content_type {
        request = request.header("Content-Type", content_type);
    }
    read(request.send().await.expect("request reaches the service")).await
}

/// Asserts that the job `job`, as `/status` lists it, starts at `start` (to the second).
fn assert_starts_at(job: &Value, start: DateTime<Utc>) {
    let listed = job["start_time"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .expect("the job has an RFC 3339 start_time");
    assert_eq!(listed.timestamp(), start.timestamp(), "{job}");
}

/// Polls `/status` until `id` has a job, or panics after `secs`.
async fn wait_job(app: &TestApp, id: &str, secs: u64) -> Value {
    let limit = Duration::from_secs(secs);
    eventually_within(
        &format!("a job for {id}"),
        limit,
        Duration::from_millis(50),
        || async { job_of(app, id).await.ok_or_else(|| "no job".to_owned()) },
    )
    .await
}

// --- POST /debug/trial/schedule ---------------------------------------------------------------

#[tokio::test]
async fn scheduling_a_trial_lists_it_with_its_trigger() {
    let app = spawn_app().await;
    let answer = app.schedule("t1", "2999-01-01T10:00:00+02:00").await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");

    let body = app.get("/status").await.body;
    assert_eq!(
        body["Scheduler_status"], "Scheduled job(s) initiated",
        "{body}"
    );
    let jobs = body["scheduled_trials"].as_array().expect("an array");
    assert_eq!(jobs.len(), 1, "{body}");
    assert_eq!(jobs[0]["id"], "t1", "{body}");
    let trigger = jobs[0]["trigger"].as_str().expect("trigger is a string");
    assert!(trigger.contains("2999-01-01"), "{trigger}");
}

#[tokio::test]
async fn scheduling_the_same_trial_twice_is_409() {
    let app = spawn_app().await;
    let first = app.schedule("t1", &in_ms(3_600_000)).await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    let job = job_of(&app, "t1").await.expect("t1 scheduled");

    let again = app.schedule("t1", &in_ms(7_200_000)).await;
    assert_detail(&again, StatusCode::CONFLICT);
    assert_eq!(
        job_of(&app, "t1").await.as_ref(),
        Some(&job),
        "the first job is kept as it was"
    );
    assert_eq!(scheduled_trials(&app).await.len(), 1);
}

#[tokio::test]
async fn scheduling_a_trial_that_has_an_engine_is_409() {
    let app = spawn_app().await;
    app.start_trial("t1").await;
    app.wait_engine("t1").await;

    let answer = app.schedule("t1", &in_ms(3_600_000)).await;
    assert_detail(&answer, StatusCode::CONFLICT);
    assert!(job_of(&app, "t1").await.is_none(), "no job was added");
}

#[tokio::test]
async fn unscheduling_removes_the_job_and_it_never_fires() {
    let app = spawn_app().await;
    app.platform.add_trial(Platform::trial("t1", None));
    // Far enough ahead that the job is still there to unschedule, however slow the test.
    let start = app.schedule_in("t1", 5_000).await;

    let answer = app.delete("/debug/trial/t1/schedule").await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert!(job_of(&app, "t1").await.is_none(), "the job is gone");
    let answer = app.delete("/debug/trial/t1/schedule").await;
    assert_detail(&answer, StatusCode::NOT_FOUND);

    // A trial due after t1's start time: once it has started, t1's time has passed.
    app.start_after("after-t1", start).await;
    let engines = app.engines().await;
    assert!(
        engines.iter().all(|(id, _)| id != "t1"),
        "an unscheduled job fired: {engines:?}"
    );
    assert!(scheduled_trials(&app).await.is_empty());
}

#[tokio::test]
async fn unscheduling_a_trial_without_job_is_404() {
    let app = spawn_app().await;
    let answer = app.delete("/debug/trial/t1/schedule").await;
    assert_detail(&answer, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_start_time_with_an_offset_fires_at_that_instant() {
    let app = spawn_app().await;
    app.platform.add_trial(Platform::trial("tz1", None));
    let plus_two = FixedOffset::east_opt(2 * 3600).expect("a valid offset");
    let write = |instant: DateTime<Utc>| {
        instant
            .with_timezone(&plus_two)
            .to_rfc3339_opts(SecondsFormat::Millis, false)
    };
    let instant = app.schedule_written("tz1", 1_500, API_KEY, write).await;
    let written = write(instant);
    assert!(written.ends_with("+02:00"), "{written}");

    let seen = app.wait_engine("tz1").await;
    assert!(
        seen >= instant,
        "fired early: seen {seen}, start time {instant} (written {written})"
    );
    assert!(
        seen - instant < chrono::Duration::seconds(10),
        "fired late: seen {seen}, start time {instant} (written {written})"
    );
}

#[tokio::test]
async fn a_start_time_without_offset_is_400() {
    let app = spawn_app().await;
    let naive = in_secs(3600).format("%Y-%m-%dT%H:%M:%S").to_string();
    let answer = app.schedule("t1", &naive).await;
    assert_detail(&answer, StatusCode::BAD_REQUEST);
    assert_nothing_scheduled(&app).await;
}

#[tokio::test]
async fn an_impossible_date_is_400() {
    let app = spawn_app().await;
    // Each says what is wrong with it: a field out of range, a leap second, or no such form.
    for (bad, says) in [
        ("2999-02-30T10:00:00Z", "no such time exists"),
        ("2021-02-30T10:00:00Z", "no such time exists"),
        ("2027-02-29T12:00:00Z", "no such time exists"),
        ("2030-06-01T24:00:00+05:30", "no such time exists"),
        ("2030-13-01T00:00:00Z", "no such time exists"),
        ("2999-06-30T23:59:60Z", "leap second"),
        ("tomorrow", "is not an RFC 3339 date-time with an offset"),
        ("", "is not an RFC 3339 date-time with an offset"),
    ] {
        let answer = app.schedule("t1", bad).await;
        assert_detail(&answer, StatusCode::BAD_REQUEST);
        assert!(answer.detail().contains(says), "{bad}: {answer:?}");
    }
    let leap = app.schedule("t1", "2999-06-30T23:59:60Z").await;
    assert!(leap.detail().contains("leap second"), "{leap:?}");
    assert_nothing_scheduled(&app).await;
}

#[tokio::test]
async fn a_start_time_in_the_past_is_400() {
    let app = spawn_app().await;
    for past in ["2021-02-23T07:17:15+02:00".to_owned(), in_ms(-1_000)] {
        let answer = app.schedule("t1", &past).await;
        assert_detail(&answer, StatusCode::BAD_REQUEST);
    }
    assert_nothing_scheduled(&app).await;
}

#[tokio::test]
async fn a_malformed_json_body_is_400() {
    let app = spawn_app().await;
    let answer = post_raw(
        &app,
        r#"{"trial_id": "t1", "start_time": "2999-01-01T00:00:00Z""#,
        Some("application/json"),
    )
    .await;
    assert_detail(&answer, StatusCode::BAD_REQUEST);
    assert_nothing_scheduled(&app).await;
}

#[tokio::test]
async fn a_body_with_wrong_types_is_422() {
    let app = spawn_app().await;
    for body in [
        json!({"trial_id": 5, "start_time": "2999-01-01T00:00:00Z"}),
        json!({"trial_id": "t1", "start_time": 1_700_000_000}),
        json!({"trial_id": "t1"}),
        json!({"trial_id": null, "start_time": "2999-01-01T00:00:00Z"}),
        json!(["t1", "2999-01-01T00:00:00Z"]),
    ] {
        let answer = app.post("/debug/trial/schedule", Some(body)).await;
        assert_detail(&answer, StatusCode::UNPROCESSABLE_ENTITY);
    }
    assert_nothing_scheduled(&app).await;
}

#[tokio::test]
async fn a_body_with_an_unknown_field_is_422() {
    let app = spawn_app().await;
    let body = json!({"trial_id": "t1", "start_time": "2999-01-01T00:00:00Z", "priority": 1});
    let answer = app.post("/debug/trial/schedule", Some(body)).await;
    assert_detail(&answer, StatusCode::UNPROCESSABLE_ENTITY);
    assert_nothing_scheduled(&app).await;
}

#[tokio::test]
async fn a_body_without_json_content_type_is_415() {
    let app = spawn_app().await;
    let body = r#"{"trial_id": "t1", "start_time": "2999-01-01T00:00:00Z"}"#;
    let answer = post_raw(&app, body, None).await;
    assert_detail(&answer, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let answer = post_raw(&app, body, Some("text/plain")).await;
    assert_detail(&answer, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_nothing_scheduled(&app).await;
}

#[tokio::test]
async fn an_oversized_body_is_413() {
    let app = spawn_app_with_settings(|s| s.server.max_body_bytes = 256).await;
    let body = json!({
        "trial_id": "t1",
        "start_time": "2999-01-01T00:00:00Z",
        "padding": "x".repeat(1_000),
    });
    let answer = app.post("/debug/trial/schedule", Some(body)).await;
    assert_detail(&answer, StatusCode::PAYLOAD_TOO_LARGE);
    assert_nothing_scheduled(&app).await;

    // A small body still gets through the same limit.
    let answer = app.schedule("t1", "2999-01-01T00:00:00Z").await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
}

#[tokio::test]
async fn a_bad_trial_id_in_the_body_is_400() {
    let app = spawn_app().await;
    let long = "a".repeat(200);
    for bad in ["../etc", "a b", "", "-leading-dash", "é", long.as_str()] {
        let answer = app.schedule(bad, "2999-01-01T00:00:00Z").await;
        assert_detail(&answer, StatusCode::BAD_REQUEST);
    }
    assert_nothing_scheduled(&app).await;
}

#[tokio::test]
async fn a_bad_trial_id_in_the_path_is_400() {
    let app = spawn_app().await;
    app.platform
        .add_trial(Platform::trial("t1", Some(in_secs(3600))));
    let long = "a".repeat(200);
    for bad in ["..%2Fetc", "a%20b", "%2Fetc", long.as_str()] {
        let path = format!("/debug/trial/{bad}/schedule");
        let answer = app.post(&path, None).await;
        assert_detail(&answer, StatusCode::BAD_REQUEST);
        let answer = app.delete(&path).await;
        assert_detail(&answer, StatusCode::BAD_REQUEST);
    }
    assert_nothing_scheduled(&app).await;
}

#[tokio::test]
async fn scheduling_needs_the_api_key() {
    let app = spawn_app().await;
    let body = json!({"trial_id": "t1", "start_time": "2999-01-01T00:00:00Z"});
    let answer = app
        .call_as(Method::POST, "/debug/trial/schedule", Some(body), None)
        .await;
    assert_detail(&answer, StatusCode::UNAUTHORIZED);
    let answer = app
        .call_as(
            Method::POST,
            "/debug/trial/schedule-all",
            None,
            Some("wrong"),
        )
        .await;
    assert_detail(&answer, StatusCode::UNAUTHORIZED);
    assert_nothing_scheduled(&app).await;
}

// --- POST /debug/trial/{id}/schedule ------------------------------------------------------------

#[tokio::test]
async fn scheduling_from_the_repository_uses_its_start_time() {
    let app = spawn_app().await;
    let start = in_secs(3600);
    app.platform.add_trial(Platform::trial("t1", Some(start)));

    let answer = app.post("/debug/trial/t1/schedule", None).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");

    let job = job_of(&app, "t1").await.expect("t1 scheduled");
    assert_starts_at(&job, start);
}

#[tokio::test]
async fn scheduling_an_unknown_trial_from_the_repository_is_404() {
    let app = spawn_app().await;
    let answer = app.post("/debug/trial/nope/schedule", None).await;
    assert_detail(&answer, StatusCode::NOT_FOUND);
    assert_nothing_scheduled(&app).await;
}

#[tokio::test]
async fn scheduling_a_past_trial_from_the_repository_is_400() {
    let app = spawn_app().await;
    app.platform
        .add_trial(Platform::trial("old", Some(in_secs(-3600))));
    let answer = app.post("/debug/trial/old/schedule", None).await;
    assert_detail(&answer, StatusCode::BAD_REQUEST);
    assert_nothing_scheduled(&app).await;
}

#[tokio::test]
async fn scheduling_from_a_repository_answering_garbage_is_502() {
    let app = spawn_app().await;
    app.platform
        .add_trial(Platform::trial("t1", Some(in_secs(3600))));
    app.platform.inject(Fault::new(
        Component::Repository,
        "GET",
        "/trial/",
        FaultAction::Garbage,
    ));
    let answer = app.post("/debug/trial/t1/schedule", None).await;
    assert_detail(&answer, StatusCode::BAD_GATEWAY);
    assert_nothing_scheduled(&app).await;
}

/// A start time the registry gives that cannot be used is the registry's fault (502), and the
/// detail says what is wrong with it.
#[tokio::test]
async fn scheduling_from_a_repository_giving_an_impossible_start_time_is_502_saying_why() {
    let app = spawn_app().await;
    for (id, time, says) in [
        ("t1", "2027-02-29T12:00:00Z", "no such time exists"),
        ("t2", "2999-06-30T23:59:60Z", "leap second"),
        ("t3", "soon", "is not an RFC 3339 date-time with an offset"),
    ] {
        registry_answers(
            &app,
            &format!("/trial/{id}/"),
            json!({"id": id, "start_time": time}),
        );
        let answer = app.post(&format!("/debug/trial/{id}/schedule"), None).await;
        assert_detail(&answer, StatusCode::BAD_GATEWAY);
        assert!(
            answer.detail().contains(&format!(
                "trial repository gives trial '{id}' a start_time that cannot be used: start_time '{time}'"
            )) && answer.detail().contains(says),
            "{answer:?}"
        );
    }
    assert_nothing_scheduled(&app).await;
}

#[tokio::test]
async fn scheduling_from_a_repository_answering_another_trial_is_502() {
    let app = spawn_app().await;
    registry_answers(
        &app,
        "/trial/t1/",
        json!({"id": "someone-else", "start_time": in_secs(3600)}),
    );
    let answer = app.post("/debug/trial/t1/schedule", None).await;
    assert_detail(&answer, StatusCode::BAD_GATEWAY);
    assert!(answer.detail().contains("'someone-else'"), "{answer:?}");
    assert_nothing_scheduled(&app).await;
}

#[tokio::test]
async fn scheduling_from_the_repository_twice_is_409() {
    let app = spawn_app().await;
    app.platform
        .add_trial(Platform::trial("t1", Some(in_secs(3600))));
    let answer = app.post("/debug/trial/t1/schedule", None).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let answer = app.post("/debug/trial/t1/schedule", None).await;
    assert_detail(&answer, StatusCode::CONFLICT);
    assert_eq!(scheduled_trials(&app).await.len(), 1);
}

// --- POST /debug/trial/schedule-all -----------------------------------------------------------

fn ids(report: &Value, key: &str) -> Vec<String> {
    report[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} is an array: {report}"))
        .iter()
        .map(|v| v.as_str().expect("an id string").to_owned())
        .collect()
}

#[tokio::test]
async fn schedule_all_schedules_future_trials_and_skips_past_ones() {
    let app = spawn_app().await;
    app.platform
        .add_trial(Platform::trial("future1", Some(in_secs(3600))));
    app.platform
        .add_trial(Platform::trial("future2", Some(in_secs(7200))));
    app.platform
        .add_trial(Platform::trial("past", Some(in_secs(-3600))));

    let answer = app.post("/debug/trial/schedule-all", None).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let report = &answer.body;
    let mut scheduled = ids(report, "scheduled");
    scheduled.sort();
    assert_eq!(scheduled, ["future1", "future2"], "{report}");
    let skipped = report["skipped"].as_array().expect("skipped is an array");
    assert_eq!(skipped.len(), 1, "{report}");
    assert_eq!(skipped[0]["id"], "past", "{report}");
    assert!(
        skipped[0]["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "a skipped trial has a reason: {report}"
    );

    let mut listed: Vec<String> = scheduled_trials(&app)
        .await
        .iter()
        .map(|job| job["id"].as_str().expect("an id").to_owned())
        .collect();
    listed.sort();
    assert_eq!(listed, ["future1", "future2"]);
}

/// A registry trial whose id is one of the API keys or secrets is not scheduled: every viewer
/// would read it in `/trials`, `/status` and the log. The report does not name it.
#[tokio::test]
async fn schedule_all_skips_a_trial_whose_id_is_a_key_or_a_secret_without_naming_it() {
    let app = spawn_app().await;
    let admin = key_of(Role::Admin);
    for id in [key_of(Role::Operator), admin, TOKEN_SECRET, "plain"] {
        app.platform
            .add_trial(Platform::trial(id, Some(in_secs(3600))));
    }
    let answer = app.post("/debug/trial/schedule-all", None).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(ids(&answer.body, "scheduled"), ["plain"], "{answer:?}");
    let skipped = answer.body["skipped"].as_array().expect("skipped");
    assert_eq!(skipped.len(), 3, "{answer:?}");
    for skip in skipped {
        assert_eq!(skip["id"], "[redacted]", "{answer:?}");
        assert!(
            skip["reason"]
                .as_str()
                .is_some_and(|r| r.contains("API keys")),
            "{answer:?}"
        );
    }
    let listed = app.get("/trials").await.body.to_string();
    let status = app.get("/status").await.body.to_string();
    for shown in [answer.body.to_string(), listed, status, log_text(&app)] {
        for secret in [key_of(Role::Operator), admin, TOKEN_SECRET] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }
}

#[tokio::test]
async fn schedule_all_skips_what_is_not_a_usable_trial_saying_which_entry_and_why() {
    let app = spawn_app().await;
    let good = in_secs(3600).to_rfc3339();
    registry_answers(
        &app,
        "/trial/",
        json!([
            "junk",
            17,
            null,
            {},
            {"id": null, "start_time": good},
            {"id": true},
            {"id": "number-start", "start_time": 1_800_000_000},
            {"id": "listed-well", "start_time": good},
        ]),
    );
    let answer = app.post("/debug/trial/schedule-all", None).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let report = &answer.body;
    assert_eq!(ids(report, "scheduled"), ["listed-well"], "{report}");
    let skipped: Vec<(String, String)> = report["skipped"]
        .as_array()
        .expect("skipped is an array")
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap_or_default().to_owned(),
                s["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let not_a_trial = "the registry listed something that is not a trial object";
    let no_id = "a trial object without an id (text or a number)";
    let expected = [
        ("entry 1", not_a_trial),
        ("entry 2", not_a_trial),
        ("entry 3", not_a_trial),
        ("entry 4", no_id),
        ("entry 5", no_id),
        ("entry 6", no_id),
        ("number-start", "start_time is not text"),
    ];
    assert_eq!(
        skipped,
        expected.map(|(id, why)| (id.to_owned(), why.to_owned())),
        "{report}"
    );
}

#[tokio::test]
async fn answers_over_a_mebibyte_are_used_and_recorded_as_a_note() {
    let app = spawn_app().await;
    // A listing of 1.5 MiB: its trials carry long descriptions.
    for i in 0..3 {
        let mut trial = Platform::trial(&format!("described-{i}"), Some(in_secs(3600)));
        trial["description"] = json!("d".repeat(512 * 1024));
        app.platform.add_trial(trial);
    }
    let answer = app.post("/debug/trial/schedule-all", None).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(ids(&answer.body, "scheduled").len(), 3, "{answer:?}");

    // A trial whose flight plan alone is over 1 MiB runs, and its plan reaches enforcement.
    let id = "long-flight";
    let mut trial = Platform::trial(id, None);
    let flights = json!([{"id": 1, "waypoints": vec![[43.61, 7.05]; 120_000]}]);
    trial["flights"] = flights.clone();
    app.platform.add_trial(trial);
    app.schedule_in(id, 300).await;
    app.wait_waiting(id, "operator (active or finish)").await;
    let plan = app
        .platform
        .requests_for(id)
        .into_iter()
        .find(|r| r.path == "/flightplan")
        .and_then(|r| r.body)
        .expect("the flight plan was sent");
    assert!(
        plan["flight_plan"]["flights"] == flights,
        "the plan was changed"
    );
    let responses = app.get(&format!("/trial/{id}/responses")).await.body;
    let info = responses["responses"]
        .as_array()
        .expect("list")
        .iter()
        .find(|r| r["step"] == "GetTrialInfo")
        .expect("the trial's answer")
        .clone();
    assert_eq!(info["status"], 200, "{}", info["error"]);
    assert!(info["body"].is_null(), "the body is not kept whole");
    assert!(
        info["error"]
            .as_str()
            .is_some_and(|e| e.contains("larger than 1048576 bytes, not kept")),
        "{}",
        info["error"]
    );
}

#[tokio::test]
async fn schedule_all_twice_reports_already_scheduled() {
    let app = spawn_app().await;
    app.platform
        .add_trial(Platform::trial("t1", Some(in_secs(3600))));
    let first = app.post("/debug/trial/schedule-all", None).await;
    assert_eq!(ids(&first.body, "scheduled"), ["t1"], "{first:?}");

    let second = app.post("/debug/trial/schedule-all", None).await;
    assert_eq!(second.status, StatusCode::OK, "{second:?}");
    assert_eq!(ids(&second.body, "already_scheduled"), ["t1"], "{second:?}");
    assert!(ids(&second.body, "scheduled").is_empty(), "{second:?}");
    assert!(ids(&second.body, "rescheduled").is_empty(), "{second:?}");
    assert_eq!(scheduled_trials(&app).await.len(), 1);
}

#[tokio::test]
async fn schedule_all_reschedules_a_trial_whose_start_time_changed() {
    let app = spawn_app().await;
    app.platform
        .add_trial(Platform::trial("t1", Some(in_secs(3600))));
    let first = app.post("/debug/trial/schedule-all", None).await;
    assert_eq!(ids(&first.body, "scheduled"), ["t1"], "{first:?}");

    let moved = in_secs(7200);
    app.platform.add_trial(Platform::trial("t1", Some(moved)));
    let second = app.post("/debug/trial/schedule-all", None).await;
    assert_eq!(second.status, StatusCode::OK, "{second:?}");
    assert_eq!(ids(&second.body, "rescheduled"), ["t1"], "{second:?}");
    assert!(
        ids(&second.body, "already_scheduled").is_empty(),
        "{second:?}"
    );

    let jobs = scheduled_trials(&app).await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let listed = jobs[0]["start_time"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .expect("the job has an RFC 3339 start_time");
    assert_eq!(listed.timestamp(), moved.timestamp(), "{jobs:?}");
}

#[tokio::test]
async fn schedule_all_reports_a_trial_with_an_engine_as_already_executing() {
    let app = spawn_app().await;
    app.start_trial("running").await;
    app.wait_engine("running").await;
    app.platform
        .add_trial(Platform::trial("running", Some(in_secs(3600))));

    let answer = app.post("/debug/trial/schedule-all", None).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(
        ids(&answer.body, "already_executing"),
        ["running"],
        "{answer:?}"
    );
    assert!(ids(&answer.body, "scheduled").is_empty(), "{answer:?}");
    assert!(job_of(&app, "running").await.is_none(), "no job was added");
}

#[tokio::test]
async fn schedule_all_with_the_repository_down_is_502() {
    let app = spawn_app_with_settings(|s| {
        s.services.trial_repository.url = "http://127.0.0.1:1".to_owned();
    })
    .await;
    let answer = app.post("/debug/trial/schedule-all", None).await;
    assert_detail(&answer, StatusCode::BAD_GATEWAY);
    assert!(
        answer.detail().contains("trial repository"),
        "the detail names the repository: {answer:?}"
    );
    assert_nothing_scheduled(&app).await;
}

#[tokio::test]
async fn schedule_all_with_a_repository_answering_garbage_is_502() {
    let app = spawn_app().await;
    app.platform
        .add_trial(Platform::trial("t1", Some(in_secs(3600))));
    app.platform.inject(Fault::new(
        Component::Repository,
        "GET",
        "/trial/",
        FaultAction::Garbage,
    ));
    let answer = app.post("/debug/trial/schedule-all", None).await;
    assert_detail(&answer, StatusCode::BAD_GATEWAY);
    assert_nothing_scheduled(&app).await;
}

#[tokio::test]
async fn schedule_all_with_a_repository_answering_an_object_is_502() {
    let app = spawn_app().await;
    app.platform
        .add_trial(Platform::trial("t1", Some(in_secs(3600))));
    registry_answers(
        &app,
        "/trial/",
        json!({"id": "t1", "start_time": "2999-01-01T00:00:00Z"}),
    );
    let answer = app.post("/debug/trial/schedule-all", None).await;
    assert_detail(&answer, StatusCode::BAD_GATEWAY);
    assert_nothing_scheduled(&app).await;
}

#[tokio::test]
async fn schedule_all_takes_a_trial_listed_twice_once() {
    let app = spawn_app().await;
    let first = in_secs(3600);
    registry_answers(
        &app,
        "/trial/",
        json!([
            Platform::trial("twice", Some(first)),
            Platform::trial("twice", Some(in_secs(7200))),
        ]),
    );
    let answer = app.post("/debug/trial/schedule-all", None).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let report = &answer.body;
    assert_eq!(ids(report, "scheduled"), ["twice"], "{report}");
    assert!(ids(report, "rescheduled").is_empty(), "{report}");
    assert_eq!(report["skipped"][0]["id"], "twice", "{report}");
    let jobs = scheduled_trials(&app).await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(
        jobs[0]["trigger"]
            .as_str()
            .map(|t| t.contains(&first.format("%H:%M:%S").to_string())),
        Some(true),
        "the first listing is taken: {jobs:?}"
    );
}

// --- POST /trial/scheduling -------------------------------------------------------------------

#[tokio::test]
async fn toggling_automatic_scheduling_turns_it_on_then_off() {
    let app = spawn_app().await;
    assert_eq!(app.get("/status").await.body["Automatic_scheduling"], false);

    let answer = app.post("/trial/scheduling", None).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(answer.body["Automatic_scheduling"], true, "{answer:?}");
    assert_eq!(app.get("/status").await.body["Automatic_scheduling"], true);

    let answer = app.post("/trial/scheduling", None).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(answer.body["Automatic_scheduling"], false, "{answer:?}");
    assert_eq!(app.get("/status").await.body["Automatic_scheduling"], false);
}

#[tokio::test]
async fn a_body_sets_automatic_scheduling_to_the_state_it_names() {
    let app = spawn_app().await;
    let switch = |body: Value| app.post("/trial/scheduling", Some(body));
    let answer = switch(json!({"automatic": false})).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(answer.body["Automatic_scheduling"], false, "{answer:?}");
    let message = answer.body["message"].as_str().unwrap_or_default();
    assert!(message.contains("already off"), "{answer:?}");
    for _ in 0..2 {
        let answer = switch(json!({"automatic": true})).await;
        assert_eq!(answer.body["Automatic_scheduling"], true, "{answer:?}");
    }
    for bad in [
        json!({"automatic": "off"}),
        json!({"on": false}),
        json!([false]),
    ] {
        let answer = switch(bad).await;
        assert_detail(&answer, StatusCode::UNPROCESSABLE_ENTITY);
    }
    let answer = app
        .post_text("/trial/scheduling", "{\"automatic\": fal")
        .await;
    assert_detail(&answer, StatusCode::BAD_REQUEST);
    assert_eq!(
        app.get("/status").await.body["Automatic_scheduling"],
        true,
        "unchanged by the refusals"
    );
}

#[tokio::test]
async fn automatic_scheduling_picks_up_a_new_trial_from_the_repository() {
    let app = spawn_app_with_settings(|s| s.scheduler.poll_interval_secs = 1).await;
    let answer = app.post("/trial/scheduling", None).await;
    assert_eq!(answer.body["Automatic_scheduling"], true, "{answer:?}");

    // Added after the switch: only a later poll can find it.
    let start = in_secs(3600);
    app.platform
        .add_trial(Platform::trial("auto1", Some(start)));
    let job = wait_job(&app, "auto1", 10).await;
    assert_starts_at(&job, start);
}

#[tokio::test]
async fn automatic_scheduling_off_leaves_new_trials_alone() {
    let app = spawn_app_with_settings(|s| {
        s.scheduler.poll_interval_secs = 1;
        s.heartbeat.interval_secs = 1;
    })
    .await;
    app.platform
        .add_trial(Platform::trial("manual", Some(in_secs(3600))));
    // A heartbeat on the same one-second timers: once it has checked the repository twice, a
    // poller wrongly running while off has had a whole interval to show itself.
    let answer = app.post("/debug/add-heartbeat?trial_id=clock", None).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let repository_checks = || {
        app.platform
            .requests()
            .iter()
            .filter(|r| r.component == Component::Repository && r.path == "/")
            .count()
    };
    eventually_at_least("two heartbeat checks, a second apart", 2, repository_checks).await;
    assert!(
        job_of(&app, "manual").await.is_none(),
        "scheduled while off"
    );
    let polled = app
        .platform
        .requests()
        .iter()
        .any(|r| r.component == Component::Repository && r.path == "/trial/");
    assert!(
        !polled,
        "the repository was polled while automatic scheduling was off"
    );
}

#[tokio::test]
async fn schedule_all_reports_a_trial_that_ran_as_already_ended() {
    for keep_finished_secs in [300, 0] {
        let app =
            spawn_app_with_settings(move |s| s.engine.keep_finished_secs = keep_finished_secs)
                .await;
        let id = "ran";
        app.run_to_finished(id).await;
        if keep_finished_secs == 0 {
            app.wait_engine_gone(id).await;
        }
        app.platform
            .add_trial(Platform::trial(id, Some(in_secs(3600))));
        let answer = app.post("/debug/trial/schedule-all", None).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        assert_eq!(ids(&answer.body, "already_ended"), [id], "{answer:?}");
        assert!(
            ids(&answer.body, "already_executing").is_empty(),
            "{answer:?}"
        );
        assert!(job_of(&app, id).await.is_none(), "no job was added");
    }
}

#[tokio::test]
async fn automatic_scheduling_logs_each_trial_it_skips_once_with_why() {
    let app = spawn_binary_with(BinaryOptions {
        env: &[("LCM__SCHEDULER__POLL_INTERVAL_SECS", "1")],
        platform: Box::new(|platform| {
            platform.add_trial(Platform::trial("auto-past", Some(in_secs(-3600))));
        }),
        ..BinaryOptions::default()
    })
    .await;
    let answer = app.post("/trial/scheduling", None).await;
    assert_eq!(answer.body["Automatic_scheduling"], true, "{answer:?}");
    let line = logged(&app, &["automatic scheduling skipped", "auto-past"]).await;
    assert!(line.contains("past"), "says why: {line}");
    // Polled twice more: the same skip is not told again.
    eventually("two more polls", || async {
        let polls = log_text(&app)
            .lines()
            .filter(|l| l.contains("automatic scheduling polled the registry"))
            .count();
        (polls >= 3).then_some(()).ok_or(format!("{polls} polls"))
    })
    .await;
    let told = log_text(&app)
        .lines()
        .filter(|l| l.contains("automatic scheduling skipped") && l.contains("auto-past"))
        .count();
    assert_eq!(told, 1);
}

#[tokio::test]
async fn scheduling_a_trial_that_ran_at_its_past_start_time_says_it_ran() {
    let app = spawn_app_with_settings(|s| s.engine.keep_finished_secs = 1).await;
    app.run_to_finished("ran").await;
    app.platform
        .add_trial(Platform::trial("ran", Some(in_secs(-60))));

    // Whether its engine is still in memory or has left, the answer is what the trial has,
    // not that its start time is in the past.
    let answer = app.post("/debug/trial/ran/schedule", None).await;
    assert_detail(&answer, StatusCode::CONFLICT);
    app.wait_engine_gone("ran").await;
    let answer = app.post("/debug/trial/ran/schedule", None).await;
    assert_detail(&answer, StatusCode::CONFLICT);
    assert!(answer.detail().contains("has run already"), "{answer:?}");
    assert_nothing_scheduled(&app).await;
}

/// How many times the service has listed the registry's trials (each poll, each schedule-all).
fn registry_listings(app: &TestApp) -> usize {
    app.platform
        .requests()
        .iter()
        .filter(|r| r.component == Component::Repository && r.path == "/trial/")
        .count()
}

#[tokio::test]
async fn a_trial_an_operator_unscheduled_stays_unscheduled_while_the_registry_is_polled() {
    let start = in_secs(3600);
    let every_second = [("LCM__SCHEDULER__POLL_INTERVAL_SECS", "1")];
    let mut app = spawn_binary_with(BinaryOptions {
        env: &every_second,
        platform: Box::new(move |platform| {
            platform.add_trial(Platform::trial("held", Some(start)));
        }),
        ..BinaryOptions::default()
    })
    .await;
    let answer = app.post("/trial/scheduling", None).await;
    assert_eq!(answer.body["Automatic_scheduling"], true, "{answer:?}");
    wait_job(&app, "held", 10).await;

    let answer = app.delete("/debug/trial/held/schedule").await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    // Two more polls, across a restart: the job stays away.
    for restart in [false, true] {
        if restart {
            let (status, _) = terminate(&mut app, Duration::from_secs(30)).await;
            assert!(status.success(), "stopped cleanly: {status}");
            app.restart_binary_with(&every_second).await;
        }
        let polled = registry_listings(&app);
        eventually_at_least("two more polls", polled + 2, || registry_listings(&app)).await;
        assert!(job_of(&app, "held").await.is_none(), "scheduled again");
    }
    let answer = app.post("/debug/trial/schedule-all", None).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert!(ids(&answer.body, "scheduled").is_empty(), "{answer:?}");
    let skipped = &answer.body["skipped"][0];
    assert_eq!(skipped["id"], "held", "{answer:?}");
    let reason = skipped["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("unscheduled"), "says why: {reason}");

    // Scheduled by hand, it runs at its time; unscheduled again and given another start time
    // by the registry, polling takes the new plan.
    let answer = app.post("/debug/trial/held/schedule", None).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let answer = app.post("/debug/trial/schedule-all", None).await;
    assert_eq!(
        ids(&answer.body, "already_scheduled"),
        ["held"],
        "{answer:?}"
    );
    let answer = app.delete("/debug/trial/held/schedule").await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let later = in_secs(7200);
    app.platform.add_trial(Platform::trial("held", Some(later)));
    let job = wait_job(&app, "held", 10).await;
    assert_starts_at(&job, later);
}

#[tokio::test]
async fn schedule_all_says_a_job_stays_when_the_registry_moves_its_start_into_the_past() {
    let app = spawn_app().await;
    app.platform
        .add_trial(Platform::trial("moved", Some(in_secs(3600))));
    let answer = app.post("/debug/trial/schedule-all", None).await;
    assert_eq!(ids(&answer.body, "scheduled"), ["moved"], "{answer:?}");

    app.platform
        .add_trial(Platform::trial("moved", Some(in_secs(-60))));
    let answer = app.post("/debug/trial/schedule-all", None).await;
    assert_eq!(answer.body["skipped"][0]["id"], "moved", "{answer:?}");
    let reason = answer.body["skipped"][0]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reason.contains("past") && reason.contains("its job at") && reason.contains("stays"),
        "says the job stays: {reason}"
    );
    assert!(job_of(&app, "moved").await.is_some(), "the job stands");
}
