//! Tests: minting, checking and revoking callback tokens over `/token/{id}`, and every kind of
//! token that must be refused.

use reqwest::{Method, StatusCode};
use serde_json::json;

use lcm::sim::FaultAction;

use crate::helpers::*;

/// `POST /token/{id}` with the API key; returns the token.
async fn mint(app: &TestApp, id: &str) -> String {
    let answer = app.post(&format!("/token/{id}"), None).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    answer.body["Authorization"]
        .as_str()
        .unwrap_or_else(|| panic!("a token string: {answer:?}"))
        .to_owned()
}

/// `GET /token/{id}` presenting `token` in the `Authorization` header.
async fn check(app: &TestApp, id: &str, token: Option<&str>) -> Answer {
    app.call_as(Method::GET, &format!("/token/{id}"), None, token)
        .await
}

#[tokio::test]
async fn minting_a_token_with_the_api_key_returns_it() {
    let app = spawn_app().await;
    let token = mint(&app, "t1").await;
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    assert_ne!(token, mint(&app, "t1").await, "each token is new");
}

#[tokio::test]
async fn minting_a_token_without_the_api_key_is_401() {
    let app = spawn_app().await;
    let answer = app.call_as(Method::POST, "/token/t1", None, None).await;
    assert_detail(&answer, StatusCode::UNAUTHORIZED);
    assert!(answer.body.get("Authorization").is_none(), "{answer:?}");

    let answer = app
        .call_as(Method::POST, "/token/t1", None, Some("wrong-key"))
        .await;
    assert_detail(&answer, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn checking_a_minted_token_succeeds() {
    let app = spawn_app().await;
    app.start_to_idle("t1").await;
    let token = mint(&app, "t1").await;
    let answer = check(&app, "t1", Some(&token)).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(answer.body, json!({"message": "Success"}));

    let bearer = format!("Bearer {token}");
    let answer = check(&app, "t1", Some(&bearer)).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
}

#[tokio::test]
async fn checking_a_token_in_a_cookie_succeeds() {
    let app = spawn_app().await;
    app.start_to_idle("t1").await;
    let token = mint(&app, "t1").await;
    let response = app
        .client
        .get(format!("{}/token/t1", app.address))
        .header("Cookie", format!("Authorization={token}"))
        .send()
        .await
        .expect("request reaches the service");
    let answer = read(response).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(answer.body, json!({"message": "Success"}));
}

#[tokio::test]
async fn a_token_for_another_trial_is_403() {
    let app = spawn_app().await;
    app.start_to_idle("t1").await;
    let token = mint(&app, "t1").await;
    let answer = check(&app, "t2", Some(&token)).await;
    assert_detail(&answer, StatusCode::FORBIDDEN);
    let answer = app
        .call_as(Method::DELETE, "/token/t2", None, Some(&token))
        .await;
    assert_detail(&answer, StatusCode::FORBIDDEN);
    // Still good for its own trial.
    assert_eq!(check(&app, "t1", Some(&token)).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_token_signed_with_another_secret_is_401() {
    let app = spawn_app().await;
    let forged = signed_token("not-the-secret", "t1", 3600);
    let answer = check(&app, "t1", Some(&forged)).await;
    assert_detail(&answer, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_token_whose_signature_was_tampered_with_is_401() {
    let app = spawn_app().await;
    let token = mint(&app, "t1").await;
    let (unsigned, signature) = token.rsplit_once('.').expect("a JWT");
    let flipped = if signature.starts_with('A') { 'B' } else { 'A' };
    let tampered = format!("{unsigned}.{flipped}{}", &signature[1..]);
    let answer = check(&app, "t1", Some(&tampered)).await;
    assert_detail(&answer, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_expired_token_is_401() {
    let app = spawn_app().await;
    app.start_to_idle("t1").await;
    let expired = signed_token(TOKEN_SECRET, "t1", -3600);
    let answer = check(&app, "t1", Some(&expired)).await;
    assert_detail(&answer, StatusCode::UNAUTHORIZED);

    // The same claims, still valid, pass: only the expiry is refused.
    let fresh = signed_token(TOKEN_SECRET, "t1", 3600);
    assert_eq!(check(&app, "t1", Some(&fresh)).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_garbage_token_is_401() {
    let app = spawn_app().await;
    for garbage in ["garbage", "a.b.c", "Bearer not-a-jwt", API_KEY] {
        let answer = check(&app, "t1", Some(garbage)).await;
        assert_detail(&answer, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn a_missing_token_is_401() {
    let app = spawn_app().await;
    let answer = check(&app, "t1", None).await;
    assert_detail(&answer, StatusCode::UNAUTHORIZED);
    let answer = app.call_as(Method::DELETE, "/token/t1", None, None).await;
    assert_detail(&answer, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn revoking_a_token_refuses_it_afterwards() {
    let app = spawn_app().await;
    app.start_to_idle("t1").await;
    let token = mint(&app, "t1").await;
    let other = mint(&app, "t1").await;

    let answer = app
        .call_as(Method::DELETE, "/token/t1", None, Some(&token))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");

    let answer = check(&app, "t1", Some(&token)).await;
    assert_detail(&answer, StatusCode::UNAUTHORIZED);
    let answer = app
        .call_as(Method::DELETE, "/token/t1", None, Some(&token))
        .await;
    assert_detail(&answer, StatusCode::UNAUTHORIZED);

    // Only that token went.
    assert_eq!(check(&app, "t1", Some(&other)).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_bad_trial_id_in_the_token_path_is_400() {
    let app = spawn_app().await;
    app.start_to_idle("t1").await;
    let token = mint(&app, "t1").await;
    let long = "a".repeat(200);
    for bad in ["..%2Fetc", "a%20b", long.as_str()] {
        let path = format!("/token/{bad}");
        let answer = app.post(&path, None).await;
        assert_detail(&answer, StatusCode::BAD_REQUEST);
        assert!(answer.body.get("Authorization").is_none(), "{answer:?}");
        let answer = app.call_as(Method::GET, &path, None, Some(&token)).await;
        assert_detail(&answer, StatusCode::BAD_REQUEST);
        let answer = app.call_as(Method::DELETE, &path, None, Some(&token)).await;
        assert_detail(&answer, StatusCode::BAD_REQUEST);
    }
    // Nothing was revoked on the way.
    assert_eq!(check(&app, "t1", Some(&token)).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_token_of_a_trial_without_an_engine_is_refused_with_404_and_can_be_revoked() {
    let app = spawn_app().await;
    let token = mint(&app, "t1").await;
    let answer = check(&app, "t1", Some(&token)).await;
    assert_detail(&answer, StatusCode::NOT_FOUND);
    assert!(answer.detail().contains("has no engine"), "{answer:?}");
    let answer = app.callback("t1", "slice", Some(&token)).await;
    assert_detail(&answer, StatusCode::NOT_FOUND);

    // Revoking it still works, and keeps it out of a later engine of the trial.
    let answer = app
        .call_as(Method::DELETE, "/token/t1", None, Some(&token))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    app.start_to_idle("t1").await;
    assert_detail(
        &check(&app, "t1", Some(&token)).await,
        StatusCode::UNAUTHORIZED,
    );
}

#[tokio::test]
async fn a_token_of_an_ended_trial_is_refused_the_same_once_it_has_left_memory() {
    let app = spawn_app_with_settings(|s| s.engine.keep_finished_secs = 5).await;
    let id = "ends";
    app.start_to_idle(id).await;
    let token = mint(&app, id).await;
    assert_eq!(check(&app, id, Some(&token)).await.status, StatusCode::OK);
    app.drive_to_finished(id).await;
    let refusals = || async {
        (
            check(&app, id, Some(&token)).await,
            app.callback(id, "slice", Some(&token)).await,
        )
    };
    let in_memory = refusals().await;
    assert!(app.engines().await.iter().any(|(e, _)| e == id));
    app.wait_engine_gone(id).await;
    let from_the_store = refusals().await;
    for (before, after) in [
        (&in_memory.0, &from_the_store.0),
        (&in_memory.1, &from_the_store.1),
    ] {
        assert_detail(before, StatusCode::FORBIDDEN);
        assert!(before.detail().contains("has finished"), "{before:?}");
        assert_eq!(after.status, before.status, "{after:?}");
        assert_eq!(after.detail(), before.detail());
    }
}

/// A token minted during one run of a trial does not speak for a later run of the same trial
/// id (deleted, then scheduled again); the later run's own tokens do.
#[tokio::test]
async fn a_token_of_an_earlier_run_of_the_trial_is_403() {
    let app = spawn_app().await;
    let id = "run-twice";
    app.start_to_idle(id).await;
    let earlier = mint(&app, id).await;
    assert_eq!(check(&app, id, Some(&earlier)).await.status, StatusCode::OK);
    let deleted = app.delete(&format!("/debug/engine/{id}?force=true")).await;
    assert_eq!(deleted.status, StatusCode::OK, "{deleted:?}");
    // Scheduled again at once, within the same second as the token's.
    app.start_to_idle(id).await;

    let refused = check(&app, id, Some(&earlier)).await;
    assert_detail(&refused, StatusCode::FORBIDDEN);
    assert!(refused.detail().contains("earlier run"), "{refused:?}");
    let callback = app.callback(id, "slice", Some(&earlier)).await;
    assert_eq!(callback.status, StatusCode::FORBIDDEN, "{callback:?}");
    let current = mint(&app, id).await;
    assert_eq!(check(&app, id, Some(&current)).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_trial_kept_waiting_past_its_token_s_lifetime_still_hears_its_components() {
    let app = spawn_app_with_settings(|s| {
        s.auth.token_ttl_secs = 1;
        s.auth.max_failures_per_minute = 10_000;
    })
    .await;
    let held = "kept-waiting";
    let (revoked_early, revoked_late) = ("revoked-while-valid", "revoked-once-expired");
    for id in [held, revoked_early, revoked_late] {
        app.start_to_idle(id).await;
    }
    // Revoked by its component while valid, it stays refused once expired.
    let revoke = |id: &'static str| {
        let token = app.token_of(id);
        let app = &app;
        async move {
            let path = format!("/token/{id}");
            let answer = app.call_as(Method::DELETE, &path, None, Some(&token)).await;
            assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        }
    };
    revoke(revoked_early).await;
    // Minted after the trials' own tokens, a token by hand expires after them: once it is
    // refused as expired, theirs have expired too.
    let minted = mint(&app, held).await;
    eventually_within(
        "the tokens' lifetime to pass",
        std::time::Duration::from_secs(20),
        std::time::Duration::from_millis(200),
        || async {
            let answer = check(&app, held, Some(&minted)).await;
            match answer.status {
                StatusCode::UNAUTHORIZED if answer.detail().contains("expired") => Ok(()),
                _ => Err(format!("{answer:?}")),
            }
        },
    )
    .await;

    // The token its engine handed out still speaks for the trial: the slice-closed callback
    // is taken and the trial finishes.
    let token = app.token_of(held);
    let answer = check(&app, held, Some(&token)).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    app.drive_to_finished(held).await;
    // Ended, the trial holds it no more: refused as the expired token it is.
    let answer = check(&app, held, Some(&token)).await;
    assert_detail(&answer, StatusCode::UNAUTHORIZED);
    assert!(answer.detail().contains("expired"), "{answer:?}");

    // Revoked by its component once expired, it is refused from then on; so is the one
    // revoked while valid, though revocations of tokens past their expiry have been dropped
    // since (the finished trial's revocation drops them).
    revoke(revoked_late).await;
    for id in [revoked_early, revoked_late] {
        let answer = check(&app, id, Some(&app.token_of(id))).await;
        assert_detail(&answer, StatusCode::UNAUTHORIZED);
        assert!(answer.detail().contains("revoked"), "{answer:?}");
    }
}

/// Every revocation the store in data directory `data` keeps: token id and until when.
fn revocations(data: &std::path::Path) -> Vec<(String, i64)> {
    let path = data.join("lcm.sqlite3");
    let conn =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("the store opens");
    let mut rows = conn
        .prepare("SELECT jti, expires_at FROM revoked_tokens ORDER BY expires_at")
        .expect("the revocations");
    rows.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("the revocations")
        .collect::<Result<_, _>>()
        .expect("the revocations")
}

/// The `exp` claim of a token (its payload read without checking it).
fn expiry(token: &str) -> i64 {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT");
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64"),
    )
    .expect("JSON claims");
    claims["exp"].as_i64().expect("an exp claim")
}

#[tokio::test]
async fn a_revocation_is_kept_only_for_as_long_as_its_token_could_open_anything() {
    let app = spawn_app().await;
    let id = "revoked-twice";
    app.start_to_idle(id).await;
    let minted = mint(&app, id).await;
    for token in [minted.clone(), app.token_of(id)] {
        let answer = app
            .call_as(Method::DELETE, &format!("/token/{id}"), None, Some(&token))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    }
    // The token the engine holds is refused for as long as the trial lives; one minted by
    // hand until its expiry, after which it is refused as expired anyway.
    let kept: Vec<i64> = revocations(&app.logs.path().join("data"))
        .into_iter()
        .map(|(_, until)| until)
        .collect();
    assert_eq!(kept, [expiry(&minted), i64::MAX]);

    // Its components can call back no more: the trial is removed, which revokes its token
    // again, up to its expiry. Nothing is kept for good.
    app.delete_refused_then_forced(id).await;
    let kept = revocations(&app.logs.path().join("data"));
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(kept.iter().all(|(_, until)| *until < i64::MAX), "{kept:?}");
    let answer = check(&app, id, Some(&app.token_of(id))).await;
    assert_detail(&answer, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_revocation_an_earlier_release_kept_for_good_lapses_after_the_next_start() {
    let kept = lcm::store::Op::Revoke {
        jti: "revoked-while-its-trial-lived".to_owned(),
        exp: i64::MAX,
    };
    let data = prepared_store(vec![kept], None);
    let path = data.path().to_path_buf();
    let app = spawn_app_with_settings(move |s| s.store.data_dir = path).await;
    // No live trial holds its token: it lapses a token lifetime from now, refused until then.
    let kept = revocations(data.path());
    assert_eq!(kept.len(), 1, "{kept:?}");
    let now = chrono::Utc::now().timestamp();
    assert!(now < kept[0].1 && kept[0].1 < i64::MAX, "{kept:?}");
    drop(app);
}

#[tokio::test]
async fn a_restart_with_another_token_secret_names_the_live_trials_whose_tokens_it_refuses() {
    let mut app = spawn_binary().await;
    let id = "signed-before";
    app.start_to_idle(id).await;
    let (status, _) = terminate(&mut app, std::time::Duration::from_secs(30)).await;
    assert!(status.success(), "stopped cleanly: {status}");
    app.restart_binary_with(&[("LCM__AUTH__TOKEN_SECRET", "another-secret-of-the-service")])
        .await;
    let line = logged(&app, &["no longer verifies", id]).await;
    assert!(line.contains("WARN"), "{line}");
    let answer = check(&app, id, Some(&app.token_of(id))).await;
    assert_detail(&answer, StatusCode::UNAUTHORIZED);
}

/// A failed trial still takes its components' callbacks (kept for its restore), so a token of
/// it that leaked can be revoked while it waits for the restore.
#[tokio::test]
async fn a_token_of_a_failed_trial_can_be_revoked() {
    let app = spawn_app_with_settings(single_attempt).await;
    let id = "fails";
    app.platform
        .inject(flight_plan_fault(id, FaultAction::Status(500)));
    app.start_trial(id).await;
    let leaked = mint(&app, id).await;
    let other = mint(&app, id).await;
    app.wait_failed(id).await;

    let answer = app
        .call_as(Method::DELETE, &format!("/token/{id}"), None, Some(&leaked))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let answer = app.callback(id, "slice", Some(&leaked)).await;
    assert_detail(&answer, StatusCode::UNAUTHORIZED);
    assert!(answer.detail().contains("revoked"), "{answer:?}");
    // The other token is left as it was: refused to check until the restore.
    assert_detail(&check(&app, id, Some(&other)).await, StatusCode::FORBIDDEN);
}
