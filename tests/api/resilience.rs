//! Resilience (SPEC §13), each as a user's session: components that answer 503, ask to be left
//! alone with `Retry-After`, refuse connections or fail their token endpoint; requests that are
//! never repeated; a delete during a retry wait; idempotency keys across a crash and a restore;
//! progress callbacks and heartbeats; trials that end on their own at their deadline.

use std::time::Duration;

use chrono::{DateTime, Utc};
use lcm::config::RetryOverride;
use lcm::sim::{Component, Fault, FaultAction, Platform, RecordedRequest, RetryAfter, SimOptions};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

/// A list in a trial's answer (`GET /trial/{id}/<what>`, its field `what`), or why not (the
/// trial has no engine yet).
async fn trial_list(app: &TestApp, id: &str, what: &str) -> Result<Vec<Value>, String> {
    let answer = app.get(&format!("/trial/{id}/{what}")).await;
    match (answer.status, answer.body[what].as_array()) {
        (StatusCode::OK, Some(list)) => Ok(list.clone()),
        _ => Err(format!("{answer:?}")),
    }
}

/// The trial's recorded responses under `step` (`GET /trial/{id}/responses`).
async fn responses_of(app: &TestApp, id: &str, step: &str) -> Vec<Value> {
    trial_list(app, id, "responses")
        .await
        .expect("responses")
        .into_iter()
        .filter(|r| r["step"] == step)
        .collect()
}

fn attempts(responses: &[Value]) -> Vec<u64> {
    responses
        .iter()
        .map(|r| r["attempt"].as_u64().expect("attempt"))
        .collect()
}

/// How long the LCM waited between a first request and its retry, as the component saw it:
/// from its answer to the first to the arrival of the second.
fn gap(first: &RecordedRequest, second: &RecordedRequest) -> Duration {
    let answered = first.answered_at.expect("the first attempt was answered");
    (second.at - answered)
        .to_std()
        .expect("the retry came later")
}

/// The sum of the metric lines starting with `series` (name and labels), or 0.
async fn metric(app: &TestApp, series: &str) -> f64 {
    scrape(app)
        .await
        .lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn repository_put(id: &str, action: FaultAction) -> Fault {
    Fault::new(Component::Repository, "PUT", "/trial/", action).for_trial(id)
}

#[tokio::test]
async fn a_put_answered_503_twice_is_retried_and_the_trial_finishes() {
    // Its own process, so its own metrics: no other test's retries are counted with these.
    let app = spawn_binary_with(BinaryOptions {
        env: &[
            ("LCM__EXECUTOR__RETRY__INITIAL_BACKOFF_MS", "10"),
            ("LCM__EXECUTOR__RETRY__MAX_BACKOFF_MS", "50"),
        ],
        ..BinaryOptions::default()
    })
    .await;
    let id = "retry-503";
    let series = r#"lcm_outbound_retries_total{service="trial_repository",reason="status_503"}"#;
    app.platform
        .inject(repository_put(id, FaultAction::Status(503)).times(2));

    app.run_to_finished(id).await;

    // Three PUTs of ACTIVATING_1 reached the repository: two refused, the third taken.
    let mut expected = vec!["ACTIVATING_1", "ACTIVATING_1"];
    expected.extend(FULL_HISTORY);
    assert_eq!(app.platform.status_history(id), expected);

    let history = app.history(id).await;
    let retries = events(&history, "step_retry");
    assert_eq!(retries.len(), 2, "{history:#?}");
    for (n, retry) in retries.iter().enumerate() {
        assert_eq!(retry["step"], "UpdateDeploymentSlice");
        let detail = retry["detail"].as_str().expect("detail");
        assert!(
            detail.starts_with(&format!(
                "attempt {} of 4: PUT trial/{id}/ answered 503",
                n + 1
            )),
            "{detail}"
        );
        assert!(retry["duration_ms"].as_u64().expect("the wait") <= 50);
    }

    let puts = responses_of(&app, id, "UpdateDeploymentSlice").await;
    assert_eq!(attempts(&puts), [1, 2, 3], "{puts:#?}");
    let statuses: Vec<&Value> = puts.iter().map(|r| &r["status"]).collect();
    assert_eq!(statuses, [503, 503, 204]);

    assert_eq!(metric(&app, series).await, 2.0, "the retries are counted");
}

#[tokio::test]
async fn retry_after_sets_the_wait_up_to_the_cap() {
    let app = spawn_app_with_settings(|s| {
        // Without Retry-After the first retry waits at most 10 ms (initial_backoff_ms).
        s.executor.retry.max_backoff_ms = 10_000;
        s.services.kpi_monitoring.retry = Some(RetryOverride {
            max_backoff_ms: Some(300),
            ..RetryOverride::default()
        });
    })
    .await;
    let (seconds, date, capped) = ("after-seconds", "after-date", "after-capped");
    let busy = |after| FaultAction::RetryAfter(429, after);
    app.platform
        .inject(repository_put(seconds, busy(RetryAfter::Seconds(2))).times(1));
    // An HTTP date has whole seconds: three seconds ahead asks for more than two.
    app.platform
        .inject(repository_put(date, busy(RetryAfter::DateIn(Duration::from_secs(3)))).times(1));
    app.platform.inject(
        Fault::new(
            Component::Kpi,
            "POST",
            "/markKPIData",
            busy(RetryAfter::Seconds(30)),
        )
        .for_trial(capped)
        .times(1),
    );
    for id in [seconds, date, capped] {
        app.start_trial(id).await;
    }
    for id in [seconds, date, capped] {
        app.wait_waiting(id, WAITING_OPERATOR).await;
    }

    // At least what was asked was waited; how much more a busy machine took is not asked: the
    // wait the service chose is in the history.
    for id in [seconds, date] {
        let puts = sent(&app, id, "PUT", "/trial/");
        let waited = gap(&puts[0], &puts[1]);
        assert!(
            waited >= Duration::from_millis(1900),
            "{id}: the retry came {waited:?} after the 429"
        );
    }
    let retry = app.history(date).await;
    let chosen = events(&retry, "step_retry")[0]["duration_ms"]
        .as_u64()
        .expect("the wait");
    assert!(
        chosen <= 3000,
        "the date asked at most 3 s, {chosen} ms waited"
    );
    let retry = app.history(seconds).await;
    let retry = events(&retry, "step_retry");
    assert_eq!(retry.len(), 1);
    assert_eq!(retry[0]["duration_ms"], 2000);
    assert!(
        retry[0]["detail"]
            .as_str()
            .expect("detail")
            .ends_with("answered 429; trying again in 2.0 s"),
        "{retry:?}"
    );

    // Thirty seconds asked, kpi_monitoring's max_backoff_ms (300) waited.
    let marks = sent(&app, capped, "POST", "/markKPIData");
    let waited = gap(&marks[0], &marks[1]);
    assert!(
        waited >= Duration::from_millis(250),
        "the capped retry came {waited:?} after the 429"
    );
    let retry = app.history(capped).await;
    assert_eq!(events(&retry, "step_retry")[0]["duration_ms"], 300);
}

#[tokio::test]
async fn an_answer_cut_off_midway_is_retried_like_a_broken_connection() {
    let app = spawn_app().await;
    let id = "cut-off";
    app.platform.inject(
        Fault::new(Component::Repository, "GET", "/trial/", FaultAction::CutOff)
            .for_trial(id)
            .times(1),
    );
    app.start_to_idle(id).await;

    let gets = responses_of(&app, id, "GetTrialInfo").await;
    assert_eq!(attempts(&gets), [1, 2], "{gets:#?}");
    assert_eq!(gets[0]["status"], Value::Null, "{gets:#?}");
    let error = gets[0]["error"].as_str().expect("why");
    assert!(
        error.contains("answered 200, then its body was cut off"),
        "{error}"
    );
    assert_eq!(gets[1]["status"], 200);
    let history = app.history(id).await;
    let retries = events(&history, "step_retry");
    assert_eq!(retries.len(), 1, "{history:#?}");
    assert_eq!(retries[0]["step"], "GetTrialInfo");
}

#[tokio::test]
async fn a_400_and_a_503_to_a_slice_deployment_are_not_retried() {
    let app = spawn_app().await;
    let (wrong, create) = ("not-retried-400", "not-retried-create");
    app.platform
        .inject(repository_put(wrong, FaultAction::Status(400)).times(1));
    app.platform
        .inject(slice_deployment_fault(create, FaultAction::Status(503)));
    app.start_trial(wrong).await;
    app.start_trial(create).await;

    let failed = app.wait_failed(wrong).await;
    let reason = failed["failure"].as_str().expect("reason");
    assert_eq!(
        reason,
        format!(
            "UpdateDeploymentSlice failed: trial_repository PUT trial/{wrong}/ answered 400 (expected 204)"
        )
    );
    assert_eq!(
        app.platform.status_history(wrong),
        ["ACTIVATING_1", "FAILED"],
        "one attempt, then the failure report"
    );
    assert_eq!(
        attempts(&responses_of(&app, wrong, "UpdateDeploymentSlice").await),
        [1]
    );

    // A create that may have reached the component is never sent twice.
    let failed = app.wait_failed(create).await;
    let reason = failed["failure"].as_str().expect("reason");
    assert_eq!(
        reason,
        "SliceDeployment failed: trial_enforcement POST sliceDeployment answered 503 (expected 201 or 200)"
    );
    assert_eq!(sent(&app, create, "POST", "/sliceDeployment").len(), 1);
    let posts: Vec<Value> = responses_of(&app, create, "SliceDeployment")
        .await
        .into_iter()
        .filter(|r| r["method"] == "POST")
        .collect();
    assert_eq!(attempts(&posts), [1]);

    for id in [wrong, create] {
        assert!(
            events(&app.history(id).await, "step_retry").is_empty(),
            "{id}"
        );
    }
}

#[tokio::test]
async fn a_refused_connection_to_slice_deployment_is_retried_until_it_comes_back() {
    let app = spawn_app_with_settings(|s| {
        // Plenty of short tries: the component comes back within them.
        s.services.trial_enforcement.retry = Some(RetryOverride {
            max_attempts: Some(100),
            initial_backoff_ms: Some(100),
            max_backoff_ms: Some(100),
            multiplier: Some(1.0),
        });
    })
    .await;
    let id = "refused-then-back";
    app.platform.stop(Component::Enforcement).await;
    app.start_trial(id).await;

    eventually("a refused slice deployment", || async {
        let posts = trial_list(&app, id, "responses").await?;
        let refused = posts.iter().any(|r| {
            r["method"] == "POST"
                && r["step"] == "SliceDeployment"
                && r["error"]
                    .as_str()
                    .is_some_and(|e| e.ends_with("connection refused"))
        });
        match refused {
            true => Ok(()),
            false => Err(format!("{posts:?}")),
        }
    })
    .await;
    app.platform
        .start_again(Component::Enforcement)
        .await
        .expect("trial enforcement starts again on its port");

    app.wait_waiting(id, WAITING_OPERATOR).await;
    let posts: Vec<Value> = responses_of(&app, id, "SliceDeployment")
        .await
        .into_iter()
        .filter(|r| r["method"] == "POST")
        .collect();
    let (last, refused) = posts.split_last().expect("attempts");
    assert!(!refused.is_empty());
    assert_eq!(last["status"], 201);
    assert!(refused.iter().all(|r| r["status"].is_null()), "{posts:#?}");
    assert_eq!(
        attempts(&posts),
        (1..=posts.len() as u64).collect::<Vec<_>>()
    );
    assert_eq!(
        sent(&app, id, "POST", "/sliceDeployment").len(),
        1,
        "only the attempt that connected reached trial enforcement"
    );
    let history = app.history(id).await;
    let retries = events(&history, "step_retry");
    assert_eq!(retries.len(), refused.len());
    assert!(
        retries.iter().all(|r| r["step"] == "SliceDeployment"
            && r["detail"]
                .as_str()
                .is_some_and(|d| d.contains("POST sliceDeployment connection failed"))),
        "{retries:#?}"
    );

    let answer = app.post(&format!("/trial/{id}/finish"), None).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    app.wait_finished(id).await;
    assert_eq!(app.platform.status_history(id), SHORT_HISTORY);
}

#[tokio::test]
async fn when_attempts_run_out_the_reason_names_them_and_the_last_answer() {
    let app = spawn_app().await;
    let id = "exhausted";
    app.platform.inject(
        kpi_marking_fault(FaultAction::Status(502))
            .for_trial(id)
            .times(4),
    );
    app.start_trial(id).await;
    let failed = app.wait_failed(id).await;
    assert_eq!(
        failed["failure"],
        "SendKpiIdle failed: kpi_monitoring POST markKPIData answered 502 (expected 200) after 4 attempts"
    );
    assert_eq!(events(&app.history(id).await, "step_retry").len(), 3);

    let file = app.failure_file(id).expect("a failure file");
    assert_eq!(file["reason"], failed["failure"]);
    let marks: Vec<&Value> = file["responses"]
        .as_array()
        .expect("responses")
        .iter()
        .filter(|r| r["step"] == "SendKpiIdle")
        .collect();
    let listed: Vec<(u64, u64)> = marks
        .iter()
        .map(|r| {
            (
                r["attempt"].as_u64().unwrap(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(listed, [(1, 502), (2, 502), (3, 502), (4, 502)]);

    // The component is fine again: a restore finishes the trial.
    let restore = app.post(&format!("/debug/engine/{id}/restore"), None).await;
    assert_eq!(restore.status, StatusCode::OK, "{restore:?}");
    app.drive_to_finished(id).await;

    // No answer at all: the reason names the last error.
    let app = spawn_app_with_settings(|s| s.executor.retry.max_attempts = 3).await;
    let id = "exhausted-refused";
    app.platform.stop(Component::Enforcement).await;
    app.start_trial(id).await;
    let failed = app.wait_failed(id).await;
    let reason = failed["failure"].as_str().expect("reason");
    let url = format!("http://{}/sliceDeployment", app.platform.enforcement);
    assert_eq!(
        reason,
        format!(
            "SliceDeployment failed: trial_enforcement POST sliceDeployment: trial_enforcement unreachable at {url}: connection refused after 3 attempts"
        )
    );
    let file = app.failure_file(id).expect("a failure file");
    let posts: Vec<&Value> = file["responses"]
        .as_array()
        .expect("responses")
        .iter()
        .filter(|r| r["step"] == "SliceDeployment" && r["method"] == "POST")
        .collect();
    assert_eq!(posts.len(), 3);
    for (n, post) in posts.iter().enumerate() {
        assert_eq!(post["attempt"], n as u64 + 1);
        assert!(post["status"].is_null());
        assert!(
            post["error"]
                .as_str()
                .is_some_and(|e| e.ends_with("connection refused")),
            "{post}"
        );
    }
}

#[tokio::test]
async fn deleting_an_engine_during_a_retry_wait_cancels_the_retry() {
    let app = spawn_app_with_settings(|s| s.executor.retry.max_backoff_ms = 10_000).await;
    let (deleted, later) = ("deleted-in-wait", "later-trial");
    // Long enough that the test, however slow, acts while the retry waits.
    let wait = Duration::from_secs(8);
    let busy = || FaultAction::RetryAfter(504, RetryAfter::Seconds(wait.as_secs()));
    app.platform
        .inject(repository_put(deleted, busy()).times(1));
    app.platform.inject(repository_put(later, busy()).times(1));
    app.start_trial(deleted).await;
    let history = eventually("a retry wait", || async {
        let history = trial_list(&app, deleted, "history").await?;
        match events(&history, "step_retry").is_empty() {
            false => Ok(history),
            true => Err(format!("{history:?}")),
        }
    })
    .await;
    // When the retry is due, by the service's own clock: what waited for it is answered later.
    let due =
        event_time(&history, "step_retry", 0) + chrono::Duration::from_std(wait).expect("secs");

    // The wait holds up no one: a signal is answered before it ends (a finish before IDLE is
    // refused).
    let answer = app.post(&format!("/trial/{deleted}/finish"), None).await;
    assert_eq!(answer.status, StatusCode::CONFLICT, "{answer:?}");
    assert!(
        answer.detail().contains("UpdateDeploymentSlice"),
        "{answer:?}"
    );
    assert_eq!(
        app.trial_status(deleted).await["step"],
        "UpdateDeploymentSlice"
    );
    assert!(
        Utc::now() < due,
        "the signal was answered after the retry was due ({due}): it waited for the retry"
    );

    let answer = app
        .delete(&format!("/debug/engine/{deleted}?force=true"))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let deleted_at = Utc::now();
    assert!(
        deleted_at < due,
        "the delete answered after the retry was due ({due}): it waited for the retry"
    );
    assert!(!app.engines().await.iter().any(|(e, _)| e == deleted));

    // The later trial waits as long after the delete as the deleted one would have.
    app.start_trial(later).await;
    app.wait_waiting(later, WAITING_OPERATOR).await;
    assert!(
        (Utc::now() - deleted_at).to_std().expect("later") >= wait,
        "the deleted trial's retry would have been seen by now"
    );
    let afterwards: Vec<String> = app
        .platform
        .requests_for(deleted)
        .iter()
        .filter(|r| r.at > deleted_at)
        .map(|r| r.line())
        .collect();
    assert!(
        afterwards.is_empty(),
        "sent after the delete: {afterwards:?}"
    );
    assert_eq!(
        sent(&app, deleted, "PUT", "/trial/").len(),
        1,
        "the retried PUT never went out"
    );
}

/// Trial `id`'s `SendKpiIdle` marked the trial at its second try, the first failing with
/// `why`, and the slice at its first.
async fn marked_idle_at_the_second_try(app: &TestApp, id: &str, why: &str) {
    let marks = responses_of(app, id, "SendKpiIdle").await;
    assert_eq!(attempts(&marks), [1, 2, 1], "{marks:#?}");
    assert!(
        marks[0]["error"].as_str().is_some_and(|e| e.contains(why)),
        "{marks:#?}"
    );
}

/// A token answer cut off is no answer: the marking is tried again with a new token. A token
/// answer whose `access_token` is empty is none: nothing goes out with an empty bearer.
#[tokio::test]
async fn a_token_answer_cut_off_is_tried_again_and_an_empty_token_is_refused() {
    let (cut, empty) = tokio::join!(spawn_app(), spawn_app());
    let token = |action| Fault::new(Component::Kpi, "POST", "/token", action);
    cut.platform.inject(token(FaultAction::CutOff).times(1));
    let empty_token = json!({"access_token": "", "error": "invalid_client", "expires_in": 300});
    empty
        .platform
        .inject(token(FaultAction::Json(200, empty_token)));
    let (id, refused) = ("token-cut", "token-empty");
    empty.start_trial(refused).await;
    cut.run_to_finished(id).await;
    marked_idle_at_the_second_try(&cut, id, "answer was cut off").await;

    let failed = empty.wait_failed(refused).await;
    // The OAuth2 error code it gave says why.
    assert_failure_says(&failed, "without an access_token (invalid_client)");
    assert!(
        sent(&empty, refused, "POST", "/markKPIData").is_empty(),
        "a marking went out without a token"
    );
}

#[tokio::test]
async fn a_token_endpoint_failing_once_does_not_fail_a_kpi_marking() {
    let app = spawn_app().await;
    let id = "token-500";
    app.platform
        .inject(Fault::new(Component::Kpi, "POST", "/token", FaultAction::Status(500)).times(1));
    app.run_to_finished(id).await;

    assert_eq!(
        app.platform.kpi_markings(id),
        ["Idle", "Active", "Finished"]
    );
    marked_idle_at_the_second_try(&app, id, "token endpoint answered 500").await;
    let history = app.history(id).await;
    let retries = events(&history, "step_retry");
    assert_eq!(retries.len(), 1, "{retries:#?}");
    assert_eq!(retries[0]["step"], "SendKpiIdle");
    assert!(
        retries[0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("no access token (token endpoint answered 500)")),
        "{retries:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_post_carries_an_idempotency_key_kept_across_a_crash_and_renewed_by_a_restore() {
    let id = "keyed";
    let mut app = spawn_binary_with(BinaryOptions {
        platform: Box::new(|platform| {
            platform.add_trial(Platform::trial(id, None));
            // The flight plan hangs while the LCM is killed; the measurement job fails once.
            platform.inject(
                Fault::new(
                    Component::Enforcement,
                    "POST",
                    "/flightplan",
                    FaultAction::Delay(Duration::from_secs(60)),
                )
                .for_trial(id)
                .times(1),
            );
            platform.inject(measurement_job_fault(id, FaultAction::Status(500)));
        }),
        ..BinaryOptions::default()
    })
    .await;

    app.schedule_in(id, 300).await;
    eventually("the flight plan in flight", || async {
        match sent(&app, id, "POST", "/flightplan").len() {
            1 => Ok(()),
            n => Err(format!("{n} flight plans")),
        }
    })
    .await;
    if let Server::Process(child) = &mut app.server {
        child.kill().await.expect("SIGKILL");
    }
    app.restart_binary().await;

    // The flight plan is sent again; the measurement job fails; a restore sends it again.
    app.wait_failed(id).await;
    let restore = app.post(&format!("/debug/engine/{id}/restore"), None).await;
    assert_eq!(restore.status, StatusCode::OK, "{restore:?}");
    app.drive_to_finished(id).await;

    let posts: Vec<RecordedRequest> = app
        .platform
        .requests_for(id)
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    let key = |r: &RecordedRequest| {
        r.idempotency_key
            .clone()
            .unwrap_or_else(|| panic!("{} has no Idempotency-Key", r.line()))
    };
    let keys: Vec<String> = posts.iter().map(key).collect();
    // `<trial>-<when its engine started>-<step>-r<run>-<n>`: one engine, one start.
    let started = |key: &str| {
        let rest = key
            .strip_prefix(&format!("{id}-"))
            .expect("the trial first");
        let (started, step) = rest.split_once('-').expect("then when it started");
        assert!(started.parse::<u64>().is_ok(), "{key}");
        (started.to_owned(), step.to_owned())
    };
    let (engine, _) = started(&keys[0]);
    let step_of = |request: &RecordedRequest| {
        let (when, step) = started(&key(request));
        assert_eq!(when, engine, "one engine: {}", key(request));
        step
    };
    let plans = sent(&app, id, "POST", "/flightplan");
    assert_eq!(plans.len(), 2);
    assert_eq!(
        key(&plans[0]),
        key(&plans[1]),
        "the step re-run after the crash sends the same key"
    );
    assert_eq!(step_of(&plans[0]), "EnforceUavPlan-r0-1");
    let jobs = sent(&app, id, "POST", "/measurementjobs");
    assert_eq!(jobs.len(), 2);
    assert_eq!(step_of(&jobs[0]), "CreateMeasurementJob-r0-1");
    assert_eq!(
        step_of(&jobs[1]),
        "CreateMeasurementJob-r0-1",
        "answered 500, the job may exist: its creation goes again as itself, restore or not"
    );
    // Apart from the flight plan and the measurement job sent twice, every POST has its own
    // key; the markings after the restore are of its new run.
    let mut distinct = keys.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), keys.len() - 2, "{keys:#?}");
    let marks: Vec<String> = sent(&app, id, "POST", "/markKPIData")
        .iter()
        .map(step_of)
        .collect();
    assert_eq!(marks.len(), 6);
    assert_eq!(marks[0], "SendKpiIdle-r1-1");
    assert_eq!(marks[1], "SendKpiIdle-r1-2");

    // Deleted and scheduled again, the trial is a new one: no key of the first is sent again.
    let deleted = app.delete(&format!("/debug/engine/{id}?force=true")).await;
    assert_eq!(deleted.status, StatusCode::OK, "{deleted:?}");
    app.start_to_idle(id).await;
    let again: Vec<String> = app
        .platform
        .requests_for(id)
        .iter()
        .filter(|r| r.method == "POST")
        .skip(posts.len())
        .map(key)
        .collect();
    assert!(!again.is_empty());
    for key in &again {
        assert!(!keys.contains(key), "{key} was the first trial's");
    }
}

#[tokio::test]
async fn progress_callbacks_are_checked_shown_and_taken_only_at_a_component_wait() {
    let app = spawn_app().await;
    let id = "progress-checked";
    let token = app.wait_at_slice_callback(id).await;
    let path = format!("/trial/{id}/callback/progress");
    let progress = |body: Option<Value>, token: Option<String>| {
        let path = path.clone();
        let app = &app;
        async move {
            app.call_as(Method::POST, &path, body, token.as_deref())
                .await
        }
    };

    let long = "x".repeat(501);
    for (body, detail) in [
        (
            json!({"progress": 101}),
            "'progress' must be between 0 and 100",
        ),
        (
            json!({"progress": -1}),
            "'progress' must be between 0 and 100",
        ),
        (json!({"progress": "half"}), "wrong shape"),
        (
            json!({"message": long}),
            "'message' is longer than 500 characters",
        ),
        (
            json!({"message": "deploying\nERROR trial failed"}),
            "'message' holds a control character",
        ),
        (json!({"progress": 5, "eta": 10}), "unknown field `eta`"),
        (json!([40, "deploying"]), "must be a JSON object"),
    ] {
        let answer = progress(Some(body.clone()), Some(token.clone())).await;
        assert_eq!(
            answer.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {answer:?}"
        );
        assert!(answer.detail().contains(detail), "{body}: {answer:?}");
    }
    let malformed = app
        .client
        .post(format!("{}{path}", app.address))
        .header("Authorization", &token)
        .header("Content-Type", "application/json")
        .body("{\"progress\": ")
        .send()
        .await
        .expect("sent");
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);

    let other = app.post("/token/another-trial", None).await.body["Authorization"]
        .as_str()
        .expect("token")
        .to_owned();
    let good = json!({"progress": 40, "message": "deploying the core network functions"});
    for (token, status, what) in [
        (None, StatusCode::UNAUTHORIZED, "missing"),
        (
            Some(signed_token("another-secret", id, 600)),
            StatusCode::UNAUTHORIZED,
            "forged",
        ),
        (Some(other), StatusCode::FORBIDDEN, "other trial's"),
    ] {
        let answer = progress(Some(good.clone()), token.clone()).await;
        assert_eq!(answer.status, status, "{what} token: {answer:?}");
        assert!(!answer.detail().is_empty());
        // Credentials come first, as everywhere: a caller without them learns nothing else.
        for bad in [json!({"progress": 101}), json!({"eta": 10})] {
            let answer = progress(Some(bad), token.clone()).await;
            assert_eq!(answer.status, status, "{what} token, bad body: {answer:?}");
        }
    }
    let status = app.trial_status(id).await;
    assert!(
        status["progress"].is_null(),
        "refusals changed nothing: {status}"
    );
    assert!(events(&app.history(id).await, "progress").is_empty());

    let answer = progress(None, Some(token.clone())).await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "an empty body is a heartbeat: {answer:?}"
    );
    let answer = progress(Some(good.clone()), Some(token.clone())).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let status = app.trial_status(id).await;
    assert_eq!(status["progress"], 40);
    assert_eq!(
        status["progress_message"],
        "deploying the core network functions"
    );
    assert_eq!(status["status"], "Waiting");
    // A later report's missing field keeps what the last one said; a heartbeat wipes nothing.
    for (body, shown) in [
        (
            None,
            (json!(40), json!("deploying the core network functions")),
        ),
        (
            Some(json!({"progress": 55})),
            (json!(55), json!("deploying the core network functions")),
        ),
        (
            Some(json!({"message": "y".repeat(500)})),
            (json!(55), json!("y".repeat(500))),
        ),
    ] {
        let answer = progress(body.clone(), Some(token.clone())).await;
        assert_eq!(answer.status, StatusCode::OK, "{body:?}: {answer:?}");
        let status = app.trial_status(id).await;
        assert_eq!(
            (
                status["progress"].clone(),
                status["progress_message"].clone()
            ),
            shown,
            "after {body:?}"
        );
    }
    let history = app.history(id).await;
    let reports = events(&history, "progress");
    assert_eq!(reports.len(), 5, "{reports:#?}");
    assert_eq!(
        reports[1]["detail"],
        "40%: deploying the core network functions"
    );

    // At the operator's wait there is no component to hear from.
    let answer = app.callback(id, "slice", Some(&token)).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let status = app.wait_waiting(id, WAITING_OPERATOR).await;
    assert!(
        status["progress"].is_null(),
        "the wait's progress went with it"
    );
    let answer = progress(Some(good), Some(token)).await;
    assert_eq!(answer.status, StatusCode::CONFLICT, "{answer:?}");
    assert!(answer.detail().contains("operator"), "{answer:?}");
}

#[tokio::test]
async fn heartbeats_keep_a_component_wait_alive_and_without_them_it_fails() {
    // Long enough that a slow test still beats (and calls back after a restore) in time; the
    // two trials run side by side, so the silent one's wait passes while the other beats.
    let limit = 5;
    let app =
        spawn_app_with_settings(move |s| s.executor.callback_heartbeat_secs = Some(limit)).await;
    let (silent, beating) = ("silent", "beating");
    app.platform.inject(drop_slice_callback(silent));
    app.platform.inject(drop_slice_callback(beating));
    app.start_trial(silent).await;
    app.start_trial(beating).await;

    let fails = async {
        let failed = app.wait_failed(silent).await;
        assert_eq!(
            failed["failure"],
            format!(
                "timed out waiting for the slice callback (slice created): no progress for {limit} s"
            )
        );
        let restore = app
            .post(&format!("/debug/engine/{silent}/restore"), None)
            .await;
        assert_eq!(restore.status, StatusCode::OK, "{restore:?}");
        let token = app.token_of(silent);
        let answer = app.callback(silent, "slice", Some(&token)).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        app.wait_waiting(silent, WAITING_OPERATOR).await;
    };
    let beats = async {
        app.wait_waiting(beating, WAITING_SLICE).await;
        // Beats until the wait has lasted half as long again as its limit, by the service's
        // own clock.
        let began = event_time(&app.history(beating).await, "waiting", 0);
        let outlasted =
            began + chrono::Duration::milliseconds(1500 * i64::try_from(limit).unwrap());
        let token = app.token_of(beating);
        let path = format!("/trial/{beating}/callback/progress");
        let mut every = tokio::time::interval(Duration::from_millis(500));
        let mut n = 0;
        while Utc::now() <= outlasted {
            every.tick().await;
            n += 1;
            let body = json!({"progress": n, "message": format!("heartbeat {n}")});
            let answer = app
                .call_as(Method::POST, &path, Some(body), Some(&token))
                .await;
            assert_eq!(answer.status, StatusCode::OK, "heartbeat {n}: {answer:?}");
        }
        n
    };
    let ((), beats) = tokio::join!(fails, beats);

    let token = app.token_of(beating);
    let answer = app.callback(beating, "slice", Some(&token)).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    app.wait_waiting(beating, WAITING_OPERATOR).await;
    let history = app.history(beating).await;
    assert_eq!(events(&history, "progress").len(), beats);
    assert!(events(&history, "trial_failed").is_empty(), "{history:#?}");
}

/// Waits until the trial has finished on its own and checks it went the operator's finish way,
/// its deadline first.
async fn finished_by_its_deadline(app: &TestApp, id: &str, statuses: &[&str]) {
    app.wait_finished(id).await;
    assert_eq!(app.platform.status_history(id), statuses);
    assert_eq!(
        app.platform.kpi_markings(id).last().map(String::as_str),
        Some("Finished")
    );
    let history = app.history(id).await;
    let at = history
        .iter()
        .position(|e| e["event"] == "trial_deadline")
        .unwrap_or_else(|| panic!("no trial_deadline: {history:#?}"));
    assert_eq!(history[at + 1]["event"], "signal_accepted");
    assert_eq!(history[at + 1]["detail"], "finish (trial deadline)");
    assert_eq!(history[at + 2]["step"], "UpdateStatusStopping");
}

/// Starts `id` and, with `active`, marks it active at IDLE. (Where each waits once it is left
/// is not looked at: its deadline may end the wait first; [`finished_by_its_deadline`] checks
/// the way it went.)
async fn start_and_leave(app: &TestApp, id: &str, active: bool) {
    app.start_trial(id).await;
    if active {
        app.wait_waiting(id, WAITING_OPERATOR).await;
        let answer = app.post(&format!("/trial/{id}/active"), None).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    }
}

#[tokio::test]
async fn max_trial_secs_finishes_a_trial_from_idle_and_from_active() {
    // Long enough for the active one to be marked active first, however slow the test.
    let app = spawn_app_with_settings(|s| s.executor.max_trial_secs = Some(6)).await;
    let (idle, active) = ("bounded-idle", "bounded-active");
    start_and_leave(&app, idle, false).await;
    start_and_leave(&app, active, true).await;
    finished_by_its_deadline(&app, idle, &SHORT_HISTORY).await;
    finished_by_its_deadline(&app, active, &FULL_HISTORY).await;
}

#[tokio::test]
async fn the_registry_end_time_finishes_a_trial_and_one_already_past_fails_it() {
    let app = spawn_app().await;
    let ends = |id: &str, at: DateTime<Utc>| {
        let mut trial = Platform::trial(id, None);
        trial["end_time"] = json!(at.to_rfc3339());
        app.platform.add_trial(trial);
    };
    let (idle, active, past) = ("ends-idle", "ends-active", "ended-already");
    // Far enough ahead for the active one to be marked active first, however slow the test.
    let soon = Utc::now() + chrono::Duration::seconds(8);
    ends(idle, soon);
    ends(active, soon);
    ends(past, Utc::now() - chrono::Duration::minutes(1));
    for id in [idle, active, past] {
        app.schedule_in(id, 300).await;
    }

    app.wait_waiting(active, WAITING_OPERATOR).await;
    let answer = app.post(&format!("/trial/{active}/active"), None).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");

    let failed = app.wait_failed(past).await;
    assert_eq!(failed["state"], "GetTrialInfo");
    let reason = failed["failure"].as_str().expect("reason");
    assert!(
        reason.starts_with("GetTrialInfo failed: trial object's end_time ")
            && reason.ends_with("is in the past: the trial would end before it starts"),
        "{reason}"
    );

    finished_by_its_deadline(&app, idle, &SHORT_HISTORY).await;
    finished_by_its_deadline(&app, active, &FULL_HISTORY).await;
}

#[tokio::test]
async fn simulated_enforcement_reports_progress_while_it_deploys_and_closes() {
    let app = spawn_app_with(AppOptions {
        // Many reports over two seconds (within `auth.max_callbacks_per_minute` for both
        // waits): those sent before the service has taken the request's answer are refused,
        // and a busy service takes a while.
        sim: SimOptions {
            callback_delay: Duration::from_millis(2000),
            progress_interval: Some(Duration::from_millis(100)),
            ..SimOptions::default()
        },
        ..AppOptions::default()
    })
    .await;
    let id = "reported";
    app.run_to_finished(id).await;

    let history = app.history(id).await;
    let slice_callbacks: Vec<usize> = history
        .iter()
        .enumerate()
        .filter(|(_, e)| e["event"] == "signal_accepted" && e["detail"] == "slice callback")
        .map(|(at, _)| at)
        .collect();
    assert_eq!(slice_callbacks.len(), 2, "{history:#?}");
    let reports = |range: std::ops::Range<usize>| -> Vec<String> {
        history[range]
            .iter()
            .filter(|e| e["event"] == "progress")
            .map(|e| e["detail"].as_str().expect("detail").to_owned())
            .collect()
    };
    let deploying = reports(0..slice_callbacks[0]);
    let closing = reports(slice_callbacks[0]..slice_callbacks[1]);
    assert!(deploying.len() >= 2, "{deploying:?}");
    assert!(closing.len() >= 2, "{closing:?}");
    assert!(
        deploying
            .iter()
            .all(|d| d.ends_with("%: deploying the slice")),
        "{deploying:?}"
    );
    assert!(
        closing.iter().all(|d| d.ends_with("%: closing the slice")),
        "{closing:?}"
    );
    let percents: Vec<u32> = deploying
        .iter()
        .map(|d| d.split('%').next().unwrap().parse().unwrap())
        .collect();
    assert!(percents.windows(2).all(|w| w[0] < w[1]), "{percents:?}");
}

#[tokio::test]
async fn the_demo_shows_progress_as_it_comes() {
    let port = free_port().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let output = run_lcm(
        &["demo", "--exit", "--port", &port],
        &[],
        dir.path(),
        Duration::from_secs(60),
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let deploying: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("waiting for the slice callback (slice created): "))
        .collect();
    assert!(deploying.len() >= 2, "{stdout}");
    assert!(
        deploying
            .iter()
            .all(|l| l.ends_with("% deploying the slice")),
        "{stdout}"
    );
    assert!(
        stdout.contains("waiting for the slice callback (slice closed): "),
        "{stdout}"
    );
}

/// A component's progress message that quotes a secret (the trial's token, one minted by hand,
/// a configured credential) is kept and shown redacted, as its answers are.
#[tokio::test]
async fn a_secret_in_a_progress_message_is_redacted_where_it_is_shown() {
    let app = spawn_app_with_settings(|s| {
        s.services.abstraction_layer.password = lcm::config::Secret::new("al-secret-pw");
    })
    .await;
    let id = "progress-secret";
    let token = app.wait_at_slice_callback(id).await;
    let minted = app.post(&format!("/token/{id}"), None).await.body["Authorization"]
        .as_str()
        .expect("a minted token")
        .to_owned();
    let path = format!("/trial/{id}/callback/progress");
    let mut shown = Vec::new();
    for quoted in [&token, &minted] {
        let report = json!({"progress": 10, "message": format!("using {quoted} and al-secret-pw")});
        let answer = app
            .call_as(Method::POST, &path, Some(report), Some(&token))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        shown.push(app.trial_status(id).await["progress_message"].clone());
    }
    assert_eq!(
        shown,
        [
            json!("using [redacted] and [redacted]"),
            json!("using [redacted] and [redacted]")
        ]
    );
    let history = format!("{:?}", app.history(id).await);
    for secret in [token.as_str(), minted.as_str(), "al-secret-pw"] {
        assert!(!history.contains(secret), "{history}");
    }
}

#[tokio::test]
async fn a_slice_deployment_that_may_have_made_a_slice_goes_again_as_itself_after_a_restore() {
    let app = spawn_app_with_settings(single_attempt).await;
    // Answered 500, the deployment may have made the slice; refused 400, it made nothing.
    let (doubtful, refused) = ("slice-in-doubt", "slice-refused");
    for (id, status) in [(doubtful, 500), (refused, 400)] {
        app.platform.inject(
            Fault::new(
                Component::Enforcement,
                "POST",
                "/sliceDeployment",
                FaultAction::Status(status),
            )
            .for_trial(id)
            .times(1),
        );
    }
    for id in [doubtful, refused] {
        app.start_trial(id).await;
        app.wait_failed(id).await;
        let restore = app.post(&format!("/debug/engine/{id}/restore"), None).await;
        assert_eq!(restore.status, StatusCode::OK, "{restore:?}");
        app.drive_to_finished(id).await;
    }
    let keys = |id: &str| -> Vec<String> {
        sent(&app, id, "POST", "/sliceDeployment")
            .into_iter()
            .map(|r| r.idempotency_key.unwrap_or_default())
            .collect()
    };
    let doubtful_keys = keys(doubtful);
    assert_eq!(doubtful_keys.len(), 2, "{doubtful_keys:?}");
    assert_eq!(
        doubtful_keys[0], doubtful_keys[1],
        "a component that honours the key answers with the slice it made, instead of a second"
    );
    assert!(
        doubtful_keys[0].ends_with("-SliceDeployment-r0-1"),
        "{doubtful_keys:?}"
    );
    let refused_keys = keys(refused);
    assert_eq!(refused_keys.len(), 2, "{refused_keys:?}");
    assert!(
        refused_keys[1].ends_with("-SliceDeployment-r1-1"),
        "{refused_keys:?}"
    );
}
