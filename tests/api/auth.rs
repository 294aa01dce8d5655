//! Tests: the API key (header raw or `Bearer`, cookie), error answers, `GET /status` and the
//! heartbeat debug endpoints.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::*;

/// `GET /status` with a `Cookie` header instead of `Authorization`.
async fn status_with_cookie(app: &TestApp, cookie: &str) -> Answer {
    let response = app
        .client
        .get(format!("{}/status", app.address))
        .header("Cookie", cookie)
        .send()
        .await
        .expect("request reaches the service");
    read(response).await
}

fn assert_detail(answer: &Answer, status: StatusCode) {
    assert_eq!(answer.status, status, "{answer:?}");
    assert!(
        answer.body["detail"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "an error answer has a JSON detail string: {answer:?}"
    );
}

#[tokio::test]
async fn status_without_api_key_is_401_with_detail() {
    let app = spawn_app().await;
    let answer = app.call_as(Method::GET, "/status", None, None).await;
    assert_detail(&answer, StatusCode::UNAUTHORIZED);
    assert!(answer.body.get("message").is_none(), "{answer:?}");
}

#[tokio::test]
async fn status_with_wrong_api_key_is_401_with_detail() {
    let app = spawn_app().await;
    for wrong in [
        "not-the-key",
        "Bearer not-the-key",
        "test-api-ke",
        "test-api-key2",
    ] {
        let answer = app.call_as(Method::GET, "/status", None, Some(wrong)).await;
        assert_detail(&answer, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn status_accepts_the_raw_api_key_header() {
    let app = spawn_app().await;
    let answer = app
        .call_as(Method::GET, "/status", None, Some(API_KEY))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
}

#[tokio::test]
async fn status_accepts_a_bearer_api_key_header() {
    let app = spawn_app().await;
    let bearer = format!("Bearer {API_KEY}");
    let answer = app
        .call_as(Method::GET, "/status", None, Some(&bearer))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
}

#[tokio::test]
async fn status_accepts_the_api_key_in_an_authorization_cookie() {
    let app = spawn_app().await;
    let answer = status_with_cookie(&app, &format!("Authorization={API_KEY}")).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");

    let among_others = format!("theme=dark; Authorization={API_KEY}; lang=en");
    let answer = status_with_cookie(&app, &among_others).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
}

#[tokio::test]
async fn status_refuses_a_wrong_api_key_in_the_cookie() {
    let app = spawn_app().await;
    let answer = status_with_cookie(&app, "Authorization=not-the-key").await;
    assert_detail(&answer, StatusCode::UNAUTHORIZED);

    let answer = status_with_cookie(&app, &format!("authorisation={API_KEY}")).await;
    assert_detail(&answer, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn unknown_route_is_404_with_detail() {
    let app = spawn_app().await;
    let answer = app.get("/no/such/route").await;
    assert_detail(&answer, StatusCode::NOT_FOUND);

    let answer = app.post("/debug/trial/t1/unknown", None).await;
    assert_detail(&answer, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn wrong_method_is_405_with_detail() {
    let app = spawn_app().await;
    let answer = app.delete("/status").await;
    assert_detail(&answer, StatusCode::METHOD_NOT_ALLOWED);

    let answer = app.get("/debug/trial/schedule").await;
    assert_detail(&answer, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn status_has_the_documented_shape_when_idle() {
    let app = spawn_app().await;
    let answer = app.get("/status").await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let body = &answer.body;
    assert_eq!(
        body["message"],
        format!("This is Lifecycle Manager {}!", env!("CARGO_PKG_VERSION")),
        "{body}"
    );
    assert_eq!(body["Scheduler_status"], "Idle", "{body}");
    assert_eq!(body["Automatic_scheduling"], false, "{body}");
    for list in [
        "scheduled_trials",
        "Executor_Engine_instances",
        "Heartbeat_instances",
    ] {
        assert_eq!(
            body[list].as_array().map(Vec::len),
            Some(0),
            "{list} is an empty JSON array: {body}"
        );
    }
}

#[tokio::test]
async fn status_reports_scheduled_jobs_after_scheduling() {
    let app = spawn_app().await;
    let answer = app.schedule("t1", &in_ms(3_600_000)).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");

    let body = app.get("/status").await.body;
    assert_eq!(
        body["Scheduler_status"], "Scheduled job(s) initiated",
        "{body}"
    );
    assert!(body["Automatic_scheduling"].is_boolean(), "{body}");
    let jobs = body["scheduled_trials"].as_array().expect("an array");
    assert_eq!(jobs.len(), 1, "{body}");
    assert_eq!(jobs[0]["id"], "t1", "{body}");
    assert!(jobs[0]["trigger"].is_string(), "{body}");
    assert!(body["Executor_Engine_instances"].is_array(), "{body}");
    assert!(body["Heartbeat_instances"].is_array(), "{body}");
}

/// The heartbeat of `id` as listed in `/status`.
async fn heartbeat_of(app: &TestApp, id: &str) -> Option<Value> {
    let body = app.get("/status").await.body;
    body["Heartbeat_instances"]
        .as_array()
        .expect("Heartbeat_instances is an array")
        .iter()
        .find(|h| h["ID"] == id)
        .cloned()
}

#[tokio::test]
async fn added_heartbeat_reports_reachable_services_in_status() {
    let app = spawn_app().await;
    let answer = app.post("/debug/add-heartbeat?trial_id=t1", None).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert!(
        heartbeat_of(&app, "t1").await.is_some(),
        "listed right after being added"
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        last = heartbeat_of(&app, "t1").await;
        if let Some(heartbeat) = &last
            && !heartbeat["last_check"].is_null()
        {
            let services = heartbeat["services"].as_object().expect("services object");
            assert_eq!(services.len(), 3, "{heartbeat}");
            for (name, result) in services {
                assert!(
                    result.as_str().is_some_and(|r| r.starts_with("reachable")),
                    "{name} is reachable: {heartbeat}"
                );
            }
            assert_eq!(heartbeat["healthy"], true, "{heartbeat}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the heartbeat never checked the services; last: {last:?}");
}

#[tokio::test]
async fn adding_a_heartbeat_twice_is_409() {
    let app = spawn_app().await;
    let answer = app.post("/debug/add-heartbeat?trial_id=t1", None).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let answer = app.post("/debug/add-heartbeat?trial_id=t1", None).await;
    assert_detail(&answer, StatusCode::CONFLICT);
    let body = app.get("/status").await.body;
    assert_eq!(
        body["Heartbeat_instances"].as_array().map(Vec::len),
        Some(1),
        "{body}"
    );
}

#[tokio::test]
async fn adding_a_heartbeat_with_a_bad_trial_id_is_400() {
    let app = spawn_app().await;
    for query in ["trial_id=..%2Fetc", "trial_id=a%20b", "trial_id="] {
        let answer = app
            .post(&format!("/debug/add-heartbeat?{query}"), None)
            .await;
        assert_detail(&answer, StatusCode::BAD_REQUEST);
    }
    let body = app.get("/status").await.body;
    assert_eq!(
        body["Heartbeat_instances"].as_array().map(Vec::len),
        Some(0),
        "{body}"
    );
}

#[tokio::test]
async fn adding_a_heartbeat_without_trial_id_is_400() {
    let app = spawn_app().await;
    let answer = app.post("/debug/add-heartbeat", None).await;
    assert_detail(&answer, StatusCode::BAD_REQUEST);
    let answer = app.post("/debug/add-heartbeat?id=t1", None).await;
    assert_detail(&answer, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn deleting_a_heartbeat_removes_it_then_is_404() {
    let app = spawn_app().await;
    let answer = app.post("/debug/add-heartbeat?trial_id=t1", None).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");

    let answer = app.delete("/debug/heartbeat/t1").await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert!(heartbeat_of(&app, "t1").await.is_none(), "no longer listed");

    let answer = app.delete("/debug/heartbeat/t1").await;
    assert_detail(&answer, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn heartbeat_endpoints_need_the_api_key() {
    let app = spawn_app().await;
    let answer = app
        .call_as(Method::POST, "/debug/add-heartbeat?trial_id=t1", None, None)
        .await;
    assert_detail(&answer, StatusCode::UNAUTHORIZED);
    assert!(heartbeat_of(&app, "t1").await.is_none(), "nothing added");
}
