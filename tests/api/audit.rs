//! The audit log (SPEC §15): who did what, to which trial, with what outcome — refusals
//! included — read back with filters and pages, never holding a secret.

use std::sync::atomic::Ordering;

use lcm::config::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

async fn audit(app: &TestApp, query: &str) -> Value {
    let answer = app
        .call_as(
            Method::GET,
            &format!("/audit{query}"),
            None,
            Some(key_of(Role::Admin)),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{query}: {answer:?}");
    answer.body
}

fn entries(page: &Value) -> Vec<Value> {
    page["entries"].as_array().cloned().expect("a list")
}

/// The entry of `action` about `trial`, the newest one.
fn entry<'a>(entries: &'a [Value], action: &str, trial: &str) -> &'a Value {
    entries
        .iter()
        .find(|e| e["action"] == action && e["trial_id"] == trial)
        .unwrap_or_else(|| panic!("no {action} about {trial} in {entries:#?}"))
}

#[tokio::test]
async fn every_change_and_every_refusal_is_recorded_with_who_and_how_it_ended() {
    let app = spawn_app().await;
    let (id, other) = ("audited", "audited-refused");
    app.platform.add_trial(lcm::sim::Platform::trial(id, None));
    let start = in_ms(3_600_000);
    let body = json!({"trial_id": other, "start_time": start});
    let as_role = |role| Some(key_of(role));
    // A viewer may not schedule; a wrong key is nobody; an operator may.
    let refused = app
        .call_as(
            Method::POST,
            "/debug/trial/schedule",
            Some(body.clone()),
            as_role(Role::Viewer),
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let nobody = app
        .call_as(
            Method::POST,
            "/debug/trial/schedule",
            Some(body),
            Some("a-guessed-key-4711"),
        )
        .await;
    assert_eq!(nobody.status, StatusCode::UNAUTHORIZED);
    app.schedule_in_as(id, 400, key_of(Role::Operator)).await;
    app.wait_waiting(id, "operator (active or finish)").await;
    let token = app.token_of(id);
    let early = app.callback(id, "cloudvnfboarding", Some(&token)).await;
    assert_eq!(
        early.status,
        StatusCode::CONFLICT,
        "no VNF callback is awaited now"
    );
    let abort = app
        .call_as(
            Method::POST,
            &format!("/trial/{id}/abort"),
            Some(json!({"reason": "test"})),
            as_role(Role::Operator),
        )
        .await;
    assert_eq!(abort.status, StatusCode::OK);
    app.wait_for(id, "Aborted", |s| s["engine_status"] == "Aborted")
        .await;
    let deleted = app
        .call_as(
            Method::DELETE,
            &format!("/debug/engine/{id}"),
            None,
            as_role(Role::Admin),
        )
        .await;
    assert_eq!(deleted.status, StatusCode::OK);
    // Reading changes nothing, and is not recorded.
    app.get("/status").await;

    let all = entries(&audit(&app, "?limit=500").await);
    let seqs: Vec<i64> = all
        .iter()
        .map(|e| e["seq"].as_i64().unwrap_or_default())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seqs:?}"
    );
    assert!(all.iter().all(|e| e["action"] != "GET /status"));

    let schedule = "POST /debug/trial/schedule";
    let by_viewer = all
        .iter()
        .find(|e| e["action"] == schedule && e["outcome"] == 403)
        .expect("the viewer's refused schedule");
    assert_eq!(by_viewer["trial_id"], other);
    assert_eq!(by_viewer["actor"], "viewer");
    assert_eq!(by_viewer["role"], "viewer");
    assert!(
        by_viewer["remote_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:"))
    );
    let by_nobody = all
        .iter()
        .find(|e| e["action"] == schedule && e["outcome"] == 401)
        .expect("the refused unknown key");
    assert_eq!(by_nobody["actor"], "anonymous");
    assert_eq!(by_nobody["trial_id"], other, "the trial named in the body");
    let done = entry(&all, schedule, id);
    assert_eq!(
        (done["actor"].as_str(), done["outcome"].as_u64()),
        (Some("operator"), Some(200))
    );
    assert!(
        done["detail"]
            .as_str()
            .is_some_and(|d| d.contains("scheduled at")),
        "{done}"
    );
    let callback = entry(&all, "POST /trial/{trial_id}/callback/cloudvnfboarding", id);
    assert_eq!(callback["actor"], format!("callback:{id}"));
    assert_eq!(callback["outcome"], 409);
    let aborted = entry(&all, "POST /trial/{trial_id}/abort", id);
    assert_eq!(aborted["outcome"], 200);
    assert!(
        aborted["detail"]
            .as_str()
            .is_some_and(|d| d.contains("abort accepted"))
    );
    let removed = entry(&all, "DELETE /debug/engine/{trial_id}", id);
    assert_eq!(
        (removed["actor"].as_str(), removed["outcome"].as_u64()),
        (Some("admin"), Some(200))
    );
}

#[tokio::test]
async fn the_log_filters_pages_and_is_for_admins_only() {
    let app = spawn_app().await;
    for i in 0..5 {
        let id = format!("paged-{i}");
        let answer = app
            .call_as(
                Method::POST,
                "/debug/trial/schedule",
                Some(json!({"trial_id": id, "start_time": in_ms(3_600_000)})),
                Some(key_of(Role::Operator)),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    assert_eq!(
        app.delete("/debug/trial/paged-3/schedule").await.status,
        StatusCode::OK
    );

    let about = entries(&audit(&app, "?trial_id=paged-3").await);
    let actions: Vec<&str> = about.iter().filter_map(|e| e["action"].as_str()).collect();
    assert_eq!(
        actions,
        [
            "DELETE /debug/trial/{trial_id}/schedule",
            "POST /debug/trial/schedule"
        ]
    );
    let operator = entries(&audit(&app, "?actor=operator").await);
    assert_eq!(operator.len(), 5);
    let mut seen = Vec::new();
    let mut query = "?actor=operator&limit=2".to_owned();
    loop {
        let page = audit(&app, &query).await;
        seen.extend(entries(&page).into_iter().map(|e| e["seq"].clone()));
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("?actor=operator&limit=2&cursor={cursor}"),
            None => break,
        }
    }
    let all: Vec<Value> = operator.iter().map(|e| e["seq"].clone()).collect();
    assert_eq!(seen, all, "the pages hold every entry once");

    for bad in [
        "?limit=0",
        "?limit=501",
        "?trial_id=a%20b",
        "?cursor=bogus",
        // seq:-5 and seq:0, numbers no entry has
        "?cursor=c2VxOi01",
        "?cursor=c2VxOjA",
        "?who=me",
        "?actor=",
    ] {
        let answer = app
            .call_as(
                Method::GET,
                &format!("/audit{bad}"),
                None,
                Some(key_of(Role::Admin)),
            )
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}: {answer:?}");
    }
    for role in [Role::Viewer, Role::Operator] {
        let answer = app
            .call_as(Method::GET, "/audit", None, Some(key_of(role)))
            .await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{role:?}");
    }
}

#[tokio::test]
async fn no_secret_and_no_token_is_ever_written_in_the_log() {
    let app = spawn_app().await;
    let id = "secretive";
    app.start_trial(id).await;
    app.wait_waiting(id, "operator (active or finish)").await;
    let minted = app.post(&format!("/token/{id}"), None).await.body["Authorization"]
        .as_str()
        .expect("token")
        .to_owned();
    assert_eq!(
        app.call_as(Method::GET, &format!("/token/{id}"), None, Some(&minted))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        app.call_as(Method::DELETE, &format!("/token/{id}"), None, Some(&minted))
            .await
            .status,
        StatusCode::OK
    );
    let guess = "guessed-secret-key-0815";
    app.call_as(Method::POST, "/trial/scheduling", None, Some(guess))
        .await;
    let sent = app.token_of(id);
    // Secrets pasted into the wrong fields: refused, quoting what was sent, with the secret
    // hidden in the answer too.
    for start_time in [API_KEY, TOKEN_SECRET, sent.as_str()] {
        let refused = app.schedule("pasted", start_time).await;
        assert_detail(&refused, StatusCode::BAD_REQUEST);
        assert!(
            refused.detail().contains("start_time '[redacted]'"),
            "{refused:?}"
        );
    }
    let refused = app
        .post("/debug/trial/schedule", Some(json!({TOKEN_SECRET: 1})))
        .await;
    assert_detail(&refused, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(!refused.detail().contains(TOKEN_SECRET), "{refused:?}");
    // A key pasted as a trial id (a valid one) is refused, not made a trial every viewer sees.
    let key_as_id = key_of(Role::Operator);
    let refused = app.schedule(key_as_id, &in_ms(3_600_000)).await;
    assert_detail(&refused, StatusCode::BAD_REQUEST);
    assert!(refused.detail().contains("API keys"), "{refused:?}");
    let refused = app
        .post(&format!("/debug/trial/{key_as_id}/schedule"), None)
        .await;
    assert_detail(&refused, StatusCode::BAD_REQUEST);
    let listed = app.get("/trials").await;
    assert!(!listed.body.to_string().contains(key_as_id), "{listed:?}");
    // Any other route's answer names the trial it was asked about: not in the log either.
    let refused = app.post(&format!("/trial/{key_as_id}/abort"), None).await;
    assert_detail(&refused, StatusCode::NOT_FOUND);
    assert_eq!(refused.detail(), "trial '[redacted]' has no engine");
    // Nor is a heartbeat or a token made for such an id, or one that holds a key or secret:
    // a viewer would read it in `/status`.
    let holding = [format!("x{key_as_id}"), format!("{TOKEN_SECRET}-2")];
    for secret in [key_as_id, TOKEN_SECRET, &holding[0], &holding[1]] {
        for made in [
            app.post(&format!("/debug/add-heartbeat?trial_id={secret}"), None)
                .await,
            app.post(&format!("/token/{secret}"), None).await,
        ] {
            assert_detail(&made, StatusCode::BAD_REQUEST);
            assert!(made.detail().contains("API keys"), "{made:?}");
        }
        let deleted = app.delete(&format!("/debug/engine/{secret}")).await;
        assert_detail(&deleted, StatusCode::NOT_FOUND);
        let detail = deleted.detail();
        assert!(
            detail.contains("[redacted]")
                && detail.ends_with("' has no engine")
                && !detail.contains(key_as_id)
                && !detail.contains(TOKEN_SECRET),
            "{deleted:?}"
        );
    }
    let status = app.get("/status").await.body.to_string();
    assert!(!status.contains(TOKEN_SECRET), "{status}");
    app.callback(id, "slice", Some(&sent)).await;
    app.post(&format!("/trial/{id}/finish"), None).await;
    app.wait_finished(id).await;

    let text = audit(&app, "?limit=500").await.to_string();
    let mut secrets = vec![API_KEY, TOKEN_SECRET, guess, minted.as_str(), sent.as_str()];
    secrets.extend(ROLE_KEYS.iter().map(|(_, key, _)| *key));
    let log = log_text(&app);
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "the audit log holds a secret: {secret}"
        );
        assert!(!log.contains(secret), "the log holds a secret: {secret}");
    }
    assert!(!text.contains("eyJ"), "the audit log holds a token");
    let page = audit(&app, "?limit=500").await;
    let all = entries(&page);
    assert_eq!(entry(&all, "DELETE /token/{trial_id}", id)["outcome"], 200);
    assert_eq!(entry(&all, "POST /token/{trial_id}", id)["outcome"], 200);
}

#[tokio::test]
async fn a_change_that_was_not_saved_is_recorded_as_refused_once_the_store_writes_again() {
    let (app, broken) = spawn_app_with_flaky_store(AppOptions::default()).await;
    broken.store(true, Ordering::SeqCst);
    let refused = app.schedule("not-made", &in_ms(3_600_000)).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    // Reading the audit log commits what waits first: the refusal's entry cannot be written.
    let read = app
        .call_as(Method::GET, "/audit", None, Some(key_of(Role::Admin)))
        .await;
    assert_eq!(read.status, StatusCode::OK, "{read:?}");
    broken.store(false, Ordering::SeqCst);
    let made = app.schedule("made", &in_ms(3_600_000)).await;
    assert_eq!(made.status, StatusCode::OK);
    let all = entries(&audit(&app, "?limit=500").await);
    assert!(
        !all.iter()
            .any(|e| e["trial_id"] == "not-made" && e["outcome"] == 200),
        "{all:#?}"
    );
    assert_eq!(
        entry(&all, "POST /debug/trial/schedule", "made")["outcome"],
        200
    );
    // The refusal itself is recorded: its entry waited for the store to write again.
    assert_eq!(
        entry(&all, "POST /debug/trial/schedule", "not-made")["outcome"],
        503,
        "{all:#?}"
    );
}

#[tokio::test]
async fn a_refused_schedule_is_recorded_as_refused_only() {
    let app = spawn_app_with_settings(|s| s.engine.keep_finished_secs = 0).await;
    let id = "ran-once";
    app.run_to_finished(id).await;
    app.wait_engine_gone(id).await;
    let again = app.schedule(id, &in_ms(3_600_000)).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{again:?}");
    // The refusal's entry is written once the answer is known: wait until it is there.
    let outcomes = |entries: &[Value]| -> Vec<Value> {
        entries
            .iter()
            .filter(|e| e["action"] == "POST /debug/trial/schedule")
            .map(|e| e["outcome"].clone())
            .collect()
    };
    let entries = app
        .audited(&format!("?trial_id={id}"), "the refusal in the log", |e| {
            outcomes(e).first().is_some_and(|latest| *latest == 409)
        })
        .await;
    // Newest first. Older 400s, if any, are schedules that arrived after the start time they
    // carried on a busy machine, sent again by the helper.
    let outcomes = outcomes(&entries);
    assert!(
        outcomes.get(..2).is_some_and(|newest| newest == [409, 200])
            && outcomes[2..].iter().all(|o| *o == 400),
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn requests_that_reach_no_route_or_are_too_large_to_read_are_not_written() {
    let app = spawn_app_with_settings(|s| s.server.max_body_bytes = 1024).await;
    for _ in 0..3 {
        let nowhere = app.post("/no/such/route", None).await;
        assert_eq!(nowhere.status, StatusCode::NOT_FOUND, "{nowhere:?}");
        for (method, path) in [
            (Method::PUT, "/status"),
            (Method::PATCH, "/trials"),
            (Method::PUT, "/trial/wrong-method/active"),
        ] {
            let wrong = app.call_as(method, path, None, None).await;
            assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED, "{wrong:?}");
        }
        let huge = app
            .post(
                "/debug/trial/schedule",
                Some(json!({"trial_id": "huge", "start_time": "x".repeat(4096)})),
            )
            .await;
        assert_eq!(huge.status, StatusCode::PAYLOAD_TOO_LARGE, "{huge:?}");
    }
    // A change written after them: once it is there, they would be too.
    assert_eq!(
        app.schedule("after", &in_ms(3_600_000)).await.status,
        StatusCode::OK
    );
    let all = app
        .audited("?limit=500", "the schedule in the log", |all| {
            all.iter().any(|e| e["trial_id"] == "after")
        })
        .await;
    assert!(
        all.iter()
            .all(|e| ![404, 405, 413].contains(&e["outcome"].as_u64().unwrap_or(0))),
        "{all:#?}"
    );
}

#[tokio::test]
async fn a_refused_requests_entry_is_there_as_soon_as_it_is_answered() {
    let app = spawn_app().await;
    for round in 0..5 {
        let id = format!("refused-{round}");
        let refused = app
            .call_as(
                Method::POST,
                &format!("/trial/{id}/active"),
                None,
                Some("not-a-key"),
            )
            .await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{refused:?}");
        let paused = app.post(&format!("/trial/{id}/pause"), None).await;
        assert_eq!(paused.status, StatusCode::NOT_FOUND, "{paused:?}");
        let logged = entries(&audit(&app, &format!("?trial_id={id}")).await);
        let outcomes: Vec<_> = logged.iter().map(|e| e["outcome"].clone()).collect();
        assert_eq!(outcomes, [json!(404), json!(401)], "{logged:#?}");
    }
}

/// What a client writes is kept short wherever it lands: a trial id in a body (even one sent
/// without a key) in the entry, an unknown field's name in the answer's detail, the entry and the log.
#[tokio::test]
async fn a_client_s_long_text_is_cut_in_the_answer_the_entry_and_the_log() {
    let app = spawn_binary_with(BinaryOptions::default()).await;
    let long_id = format!("long-{}", "z".repeat(100_000));
    let refused = app
        .call_as(
            Method::POST,
            "/debug/trial/schedule",
            Some(json!({"trial_id": long_id, "start_time": in_ms(3_600_000)})),
            Some("not-a-key"),
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{refused:?}");
    let field = format!("unknown-{}", "k".repeat(100_000));
    let unknown = app
        .post("/trial/anything/abort", Some(json!({field: 1})))
        .await;
    assert_eq!(unknown.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        unknown.detail().chars().count() <= 1000,
        "{}",
        unknown.detail().len()
    );
    assert!(unknown.detail().ends_with('…'), "{}", unknown.detail());

    let all = app
        .audited("?limit=500", "both requests in the log", |all| {
            all.iter()
                .any(|e| e["action"] == "POST /trial/{trial_id}/abort")
                && all.iter().any(|e| e["outcome"] == 401)
        })
        .await;
    let kept = |e: &Value, field: &str| e[field].as_str().map_or(0, |s| s.chars().count());
    let scheduled = all
        .iter()
        .find(|e| e["outcome"] == 401)
        .expect("the refusal");
    assert!(
        kept(scheduled, "trial_id") <= 200,
        "{}",
        kept(scheduled, "trial_id")
    );
    let aborted = all.iter().find(|e| e["outcome"] == 422).expect("the 422");
    assert!(
        kept(aborted, "detail") <= 1000,
        "{}",
        kept(aborted, "detail")
    );
    let line = logged(&app, &["request refused", "/trial/{trial_id}/abort"]).await;
    assert!(line.len() < 2_000, "a log line of {} bytes", line.len());
}
