//! The operator console over plain HTTP: sign-in and its cookie, the failed-sign-in limit,
//! what guards every console POST (session, CSRF token, origin), the role of each action as
//! the API decides it, the audit of console actions, and the live stream. What a browser
//! shows and does is in the browser tests (`--features browser`).

use std::sync::atomic::Ordering;

use lcm::config::Role;
use lcm::console::actions::TrialAction;
use lcm::sim::{Component, FaultAction};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use serde_json::Value;

use crate::helpers::*;

/// A client that follows no redirect, so each answer is seen as the console gives it.
fn no_redirects() -> reqwest::Client {
    lcm::sim::lcm_client()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// A signed-in session: its cookie header and its CSRF token.
struct Session {
    cookie: String,
    csrf: String,
}

async fn sign_in_with(app: &TestApp, key: &str) -> reqwest::Response {
    sign_in_from(&no_redirects(), app, key).await
}

async fn sign_in_from(client: &reqwest::Client, app: &TestApp, key: &str) -> reqwest::Response {
    client
        .post(format!("{}/ui/sign-in", app.address))
        .header("Origin", &app.address)
        .form(&[("key", key)])
        .send()
        .await
        .expect("an answer")
}

fn set_cookie(headers: &HeaderMap) -> String {
    headers
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

async fn sign_in(app: &TestApp, role: Role) -> Session {
    let answer = sign_in_with(app, key_of(role)).await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let cookie = set_cookie(answer.headers())
        .split(';')
        .next()
        .unwrap_or_default()
        .to_owned();
    let page = get_page(app, &cookie, "/ui/schedule").await;
    let marker = "name=\"csrf\" value=\"";
    let start = page.find(marker).expect("a CSRF field") + marker.len();
    let csrf = page[start..]
        .split('"')
        .next()
        .unwrap_or_default()
        .to_owned();
    Session { cookie, csrf }
}

/// The answer to `GET path` without a session, redirects not followed.
async fn ask(app: &TestApp, path: &str) -> reqwest::Response {
    no_redirects()
        .get(format!("{}{path}", app.address))
        .send()
        .await
        .expect("an answer")
}

/// A page (or asset) answered 200, asked for with `cookie` (empty: none).
async fn get_page(app: &TestApp, cookie: &str, path: &str) -> String {
    let answer = no_redirects()
        .get(format!("{}{path}", app.address))
        .header("Cookie", cookie)
        .send()
        .await
        .expect("an answer");
    assert_eq!(answer.status(), StatusCode::OK, "{path}");
    answer.text().await.expect("a page")
}

/// A console POST with the session's cookie, from the service's own origin.
async fn post(
    app: &TestApp,
    session: &Session,
    path: &str,
    fields: &[(&str, &str)],
) -> reqwest::Response {
    let mut form = vec![("csrf", session.csrf.as_str())];
    form.extend_from_slice(fields);
    no_redirects()
        .post(format!("{}{path}", app.address))
        .header("Cookie", &session.cookie)
        .header("Origin", &app.address)
        .form(&form)
        .send()
        .await
        .expect("an answer")
}

#[tokio::test]
async fn a_sign_in_gives_a_strict_http_only_session_cookie_never_the_key() {
    let app = spawn_app().await;
    let page = no_redirects()
        .get(format!("{}/ui/", app.address))
        .send()
        .await
        .expect("an answer");
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(page.text().await.unwrap().contains("API key"));

    let answer = sign_in_with(&app, key_of(Role::Operator)).await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    assert_eq!(answer.headers()[LOCATION], "/ui/trials");
    let cookie = set_cookie(answer.headers());
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(cookie.contains(flag), "{flag}: {cookie}");
    }
    assert!(!cookie.contains("Secure"), "http: {cookie}");
    assert!(!cookie.contains(key_of(Role::Operator)), "{cookie}");
    let session = cookie.split(';').next().unwrap().to_owned();
    let page = get_page(&app, &session, "/ui/trials").await;
    assert!(
        page.contains("Signed in as <strong>operator</strong>"),
        "{page}"
    );

    // Pages need a session; the API's `Authorization` cookie is not one.
    for cookie in [
        "",
        "lcm_session=forged",
        &format!("Authorization={API_KEY}"),
    ] {
        let answer = no_redirects()
            .get(format!("{}/ui/trials", app.address))
            .header("Cookie", cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::SEE_OTHER, "{cookie}");
        assert_eq!(answer.headers()[LOCATION], "/ui/");
    }

    // Signing out ends the session.
    let session = sign_in(&app, Role::Viewer).await;
    let answer = post(&app, &session, "/ui/sign-out", &[]).await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    assert!(set_cookie(answer.headers()).contains("Max-Age=0"));
    let answer = no_redirects()
        .get(format!("{}/ui/trials", app.address))
        .header("Cookie", &session.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn failed_sign_ins_count_toward_the_failed_authentication_limit_and_then_a_right_key_waits_too()
 {
    let app = spawn_app_with_settings(|s| s.auth.max_failures_per_minute = 2).await;
    // Not the address the test's own calls come from, which must not wait.
    let guesser = client_from("127.0.0.6");
    for _ in 0..2 {
        let answer = sign_in_from(&guesser, &app, "a-guess").await;
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    }
    let answer = sign_in_from(&guesser, &app, "another-guess").await;
    assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(answer.headers().contains_key("retry-after"));
    // The right key is refused alike while the address waits: the answer tells no guess apart.
    let answer = sign_in_from(&guesser, &app, key_of(Role::Viewer)).await;
    assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(answer.headers().get("set-cookie").is_none());
    // The same count as the API's.
    let answer = guesser
        .get(format!("{}/status", app.address))
        .header("Authorization", "a-third-guess")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
    // The refusals are audited; the throttled one is only counted. Another address's refusal
    // is written after it would have been: once that is there, this address's are all there.
    let other = sign_in_from(&client_from("127.0.0.7"), &app, "a-guess").await;
    assert_eq!(other.status(), StatusCode::UNAUTHORIZED);
    let from = |e: &Value, ip: &str| {
        e["remote_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with(&format!("{ip}:")))
    };
    let entries = app
        .audited(
            "?actor=anonymous",
            "the other address's failed sign-in audited",
            |entries| entries.iter().any(|e| from(e, "127.0.0.7")),
        )
        .await;
    let sign_ins: Vec<&Value> = entries
        .iter()
        .filter(|e| e["action"] == "POST /ui/sign-in")
        .collect();
    let here = sign_ins.iter().filter(|e| from(e, "127.0.0.6")).count();
    assert_eq!(here, 2, "{sign_ins:#?}");
}

#[tokio::test]
async fn a_console_post_needs_a_session_its_token_and_this_origin() {
    let app = spawn_app().await;
    let session = sign_in(&app, Role::Operator).await;
    let path = format!("{}/ui/trials/t1/actions/pause", app.address);
    let cases: [(&str, Option<&str>, &str, StatusCode); 4] = [
        ("no session", None, &session.csrf, StatusCode::UNAUTHORIZED),
        ("no token", Some(&app.address), "", StatusCode::FORBIDDEN),
        (
            "another site",
            Some("http://evil.example"),
            &session.csrf,
            StatusCode::FORBIDDEN,
        ),
        ("no origin", None, &session.csrf, StatusCode::FORBIDDEN),
    ];
    for (what, origin, csrf, expected) in cases {
        let mut request = no_redirects().post(&path).form(&[("csrf", csrf)]);
        if what != "no session" {
            request = request.header("Cookie", &session.cookie);
        }
        if let Some(origin) = origin {
            request = request.header("Origin", origin);
        }
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status(), expected, "{what}");
        assert!(
            answer.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html"),
            "{what}: the console answers HTML"
        );
    }
    // The refusals are audited, under the session's key where there is one.
    let entries = app
        .audited("?trial_id=t1", "four audit entries", |e| e.len() == 4)
        .await;
    let audit = format!("{entries:#?}");
    assert!(
        entries
            .iter()
            .all(|e| e["action"] == "POST /ui/trials/{trial_id}/actions/{action}"),
        "{audit}"
    );
    assert_eq!(
        entries.iter().filter(|e| e["actor"] == "operator").count(),
        3,
        "{audit}"
    );
}

/// The role just below `role`.
fn below(role: Role) -> Option<Role> {
    match role {
        Role::Viewer => None,
        Role::Operator => Some(Role::Viewer),
        Role::Admin => Some(Role::Operator),
    }
}

#[tokio::test]
async fn each_console_action_takes_the_role_its_api_route_takes() {
    let app = spawn_app().await;
    let mut sessions = Vec::new();
    for role in [Role::Viewer, Role::Operator, Role::Admin] {
        sessions.push((role, sign_in(&app, role).await));
    }
    let session = |role| &sessions.iter().find(|(r, _)| *r == role).unwrap().1;
    for action in TrialAction::ALL {
        let path = format!("/ui/trials/no-such-trial/actions/{}", action.segment());
        let fields = [("reason", "checking roles")];
        // The role the console shows the button to gets past the API's role check...
        let answer = post(&app, session(action.role()), &path, &fields).await;
        assert_eq!(answer.status(), StatusCode::SEE_OTHER, "{action:?}");
        // ...and the role below is refused by it.
        if let Some(smaller) = below(action.role()) {
            let answer = post(&app, session(smaller), &path, &fields).await;
            assert_eq!(answer.status(), StatusCode::FORBIDDEN, "{action:?}");
            let page = answer.text().await.unwrap();
            assert!(
                page.contains(&format!("needs the {} role", action.role())),
                "{page}"
            );
        }
    }
}

#[tokio::test]
async fn a_console_action_is_the_apis_audited_once_under_the_keys_name() {
    let app = spawn_app().await;
    app.schedule_in("t-console", 3_600_000).await;
    let session = sign_in(&app, Role::Operator).await;
    let answer = post(
        &app,
        &session,
        "/ui/trials/t-console/actions/unschedule",
        &[],
    )
    .await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    assert_eq!(answer.headers()[LOCATION], "/ui/trials");
    let page = get_page(&app, &session.cookie, "/ui/trials").await;
    assert!(
        page.contains("Scheduled job of trial t-console removed"),
        "the API's answer is shown: {page}"
    );
    let page = get_page(&app, &session.cookie, "/ui/trials").await;
    assert!(!page.contains("removed"), "once only");
    let entries = app
        .audited("?trial_id=t-console", "the unschedule audited", |entries| {
            entries
                .iter()
                .any(|e| e["action"] == "DELETE /debug/trial/{trial_id}/schedule")
        })
        .await;
    let unscheduled: Vec<_> = entries
        .iter()
        .filter(|e| e["action"] == "DELETE /debug/trial/{trial_id}/schedule")
        .collect();
    assert_eq!(unscheduled.len(), 1, "{entries:#?}");
    assert_eq!(unscheduled[0]["actor"], "operator");
    assert_eq!(unscheduled[0]["role"], "operator");
    assert_eq!(unscheduled[0]["outcome"], 200);
    assert!(
        !entries
            .iter()
            .any(|e| e["action"].as_str().unwrap().starts_with("POST /ui/")),
        "{entries:#?}"
    );
}

#[tokio::test]
async fn the_console_is_not_in_the_api_document_and_serves_its_assets() {
    let document = serde_json::to_value(lcm::api::openapi()).unwrap();
    let paths = document["paths"].as_object().unwrap();
    assert!(
        paths.keys().all(|p| !p.starts_with("/ui")),
        "{:?}",
        paths.keys()
    );

    let app = spawn_app().await;
    for (asset, kind) in [
        ("console.js", "text/javascript"),
        ("console.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let answer = ask(&app, &format!("/ui/assets/{asset}")).await;
        assert_eq!(answer.status(), StatusCode::OK, "{asset}");
        assert!(
            answer.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(kind),
            "{asset}"
        );
        assert!(
            answer.headers()["cache-control"]
                .to_str()
                .unwrap()
                .contains("max-age"),
            "{asset}"
        );
    }
}

#[tokio::test]
async fn a_live_stream_needs_a_session_and_starts_with_the_pages_parts() {
    let app = spawn_app().await;
    let answer = ask(&app, "/ui/trials/live").await;
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);

    app.schedule_in("t-live", 3_600_000).await;
    let session = sign_in(&app, Role::Viewer).await;
    let answer = no_redirects()
        .get(format!("{}/ui/trials/t-live/live", app.address))
        .header("Cookie", &session.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert!(
        answer.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let seen = read_sse(
        answer,
        |seen| seen.contains("\n\n"),
        std::time::Duration::from_secs(10),
    )
    .await;
    assert!(seen.starts_with("event: patch"), "{seen}");
    assert!(
        seen.contains("trial-summary") && seen.contains("Scheduled"),
        "{seen}"
    );
}

#[tokio::test]
async fn a_request_naming_no_valid_trial_or_action_gets_a_page_saying_which() {
    let app = spawn_app().await;
    let session = sign_in(&app, Role::Admin).await;
    for (path, status, says) in [
        (
            "/ui/trials/no%20id/confirm/pause",
            StatusCode::BAD_REQUEST,
            "not a valid trial id",
        ),
        (
            "/ui/trials/t1/confirm/explode",
            StatusCode::NOT_FOUND,
            "no such action",
        ),
    ] {
        let answer = no_redirects()
            .get(format!("{}{path}", app.address))
            .header("Cookie", &session.cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), status, "{path}");
        let page = answer.text().await.unwrap();
        assert!(page.contains(says), "{path}: {page}");

        let action = path.replace("/confirm/", "/actions/");
        let answer = post(&app, &session, &action, &[]).await;
        assert_eq!(answer.status(), status, "{action}");
        let page = answer.text().await.unwrap();
        assert!(page.contains(says), "{action}: {page}");
    }
    // A trial the service does not know is said so before anything is confirmed.
    let confirm = no_redirects()
        .get(format!("{}/ui/trials/nosuch/confirm/abort", app.address))
        .header("Cookie", &session.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(confirm.status(), StatusCode::NOT_FOUND);
    let page = confirm.text().await.unwrap();
    assert!(page.contains("trial 'nosuch' has no engine"), "{page}");
    let answer = post(&app, &session, "/ui/service/explode", &[]).await;
    assert_eq!(answer.status(), StatusCode::NOT_FOUND);
    // Refused, and audited under the session's key.
    app.audited(
        "?actor=admin",
        "the unknown service action audited under its key",
        |entries| {
            entries
                .iter()
                .any(|e| e["action"] == "POST /ui/service/{action}" && e["outcome"] == 404)
        },
    )
    .await;
}

#[tokio::test]
async fn a_sign_in_form_too_large_is_refused_as_such_and_not_counted_as_a_guess() {
    let app = spawn_app_with_settings(|s| s.auth.max_failures_per_minute = 1).await;
    let padding = "x".repeat(64 * 1024);
    let answer = no_redirects()
        .post(format!("{}/ui/sign-in", app.address))
        .header("Origin", &app.address)
        .form(&[("key", key_of(Role::Viewer)), ("padding", &padding)])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(answer.text().await.unwrap().contains("too large"));
    // Not a failed authentication: the one allowed is still there.
    let wrong = sign_in_with(&app, "a-guess").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_trials_pages_keep_their_size_and_dangerous_actions_look_so() {
    let app = spawn_app().await;
    for id in ["p1", "p2", "p3"] {
        app.schedule_in(id, 3_600_000).await;
    }
    let session = sign_in(&app, Role::Admin).await;
    let page = get_page(&app, &session.cookie, "/ui/trials?limit=1").await;
    let older = page
        .split("href=\"")
        .find(|part| part.contains("rel=\"next\""))
        .and_then(|part| part.split('"').next())
        .unwrap_or_else(|| panic!("an older page: {page}"))
        .replace("&amp;", "&");
    assert!(older.contains("limit=1"), "{older}");
    let next = get_page(&app, &session.cookie, &older).await;
    assert_eq!(next.matches("data-trial=").count(), 1, "{next}");

    let trial = get_page(&app, &session.cookie, "/ui/trials/p1").await;
    assert!(
        trial.contains(r#"class="button danger" href="/ui/trials/p1/confirm/unschedule""#),
        "{trial}"
    );
}

/// What the last `patch` event of a stream put in the part `name` (an element id).
fn last_part(seen: &str, name: &str) -> String {
    seen.lines()
        .rev()
        .filter_map(|line| line.strip_prefix("data:"))
        .filter_map(|data| serde_json::from_str::<serde_json::Value>(data.trim()).ok())
        .find_map(|parts| parts[name].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no {name} in the stream: {seen}"))
}

/// Reads a console stream until its `done` event; returns all it sent.
async fn read_to_done(stream: reqwest::Response) -> String {
    let done = |seen: &str| seen.contains("event: done");
    let seen = read_sse(stream, done, std::time::Duration::from_secs(20)).await;
    assert!(done(&seen), "the stream ended before done: {seen}");
    seen
}

#[tokio::test]
async fn a_trial_the_store_cannot_read_now_is_not_called_unknown_and_its_live_page_tries_again() {
    let id = "unreadable";
    let (app, reads) = spawn_app_with_an_ended_trial_on_busy_reads(id).await;
    let session = sign_in(&app, Role::Viewer).await;
    let page = format!("{}/ui/trials/{id}", app.address);

    // While the store does not answer, the page says so instead of "no such trial".
    reads.on.store(true, Ordering::SeqCst);
    let answer = no_redirects()
        .get(&page)
        .header("Cookie", &session.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    let text = answer.text().await.unwrap();
    assert!(text.contains("the store did not answer"), "{text}");
    assert!(!text.contains("knows no trial"), "{text}");

    // Its live stream is kept open past a refused read...
    let before = reads.refused.load(Ordering::SeqCst);
    let stream = no_redirects()
        .get(format!("{page}/live"))
        .header("Cookie", &session.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    eventually_at_least("the live page's read refused", before + 1, || {
        reads.refused.load(Ordering::SeqCst)
    })
    .await;
    // ...and shows the trial once the store answers again.
    reads.on.store(false, Ordering::SeqCst);
    let seen = read_to_done(stream).await;
    assert!(!seen.contains("no longer knows"), "{seen}");
    let summary = last_part(&seen, "trial-summary");
    assert!(summary.contains("Finished"), "{summary}");
}

#[tokio::test]
async fn a_live_trial_page_ends_showing_every_event_of_the_trial_once() {
    let app = spawn_app().await;
    let id = "t-followed";
    app.platform.add_trial(lcm::sim::Platform::trial(id, None));
    app.schedule_in(id, 300).await;
    let session = sign_in(&app, Role::Viewer).await;
    let stream = no_redirects()
        .get(format!("{}/ui/trials/{id}/live", app.address))
        .header("Cookie", &session.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    app.drive_to_finished(id).await;

    let seen = read_to_done(stream).await;
    let history = app.get(&format!("/trial/{id}/history")).await.body;
    let events = history["history"].as_array().expect("a history").len();
    let last = last_part(&seen, "trial-history");
    assert!(
        last.contains(&format!("Every event ({events})")),
        "{events} events, {} patches, ending on summary {}: {last}",
        seen.matches("event: patch").count(),
        last_part(&seen, "trial-summary")
    );
    let rows = last.matches("<tr><td>").count();
    assert_eq!(rows, events, "{last}");
    // A part is sent again only when it changed: the recorded responses, say, are not resent
    // with every event.
    let mut last_sent = std::collections::HashMap::new();
    for patch in seen
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .filter_map(|data| serde_json::from_str::<serde_json::Value>(data.trim()).ok())
    {
        for (part, content) in patch.as_object().expect("a patch of parts") {
            let before = last_sent.insert(part.clone(), content.clone());
            assert_ne!(
                before.as_ref(),
                Some(content),
                "{part} sent again unchanged"
            );
        }
    }

    // The finished trial's sequence marks every step done, none running.
    let page = no_redirects()
        .get(format!("{}/ui/trials/{id}", app.address))
        .header("Cookie", &session.cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains("running now"), "{page}");
    assert!(!page.contains("not run"), "{page}");
}

#[tokio::test]
async fn a_live_stream_ends_with_its_session() {
    let app = spawn_app().await;
    let id = "t-watched";
    app.schedule_in(id, 3_600_000).await;
    for page in ["/ui/trials".to_owned(), format!("/ui/trials/{id}")] {
        let session = sign_in(&app, Role::Viewer).await;
        let live = || {
            no_redirects()
                .get(format!("{}{page}/live", app.address))
                .header("Cookie", &session.cookie)
                .send()
        };
        let stream = live().await.expect("an answer");
        assert_eq!(stream.status(), StatusCode::OK, "{page}");
        let answer = post(&app, &session, "/ui/sign-out", &[]).await;
        assert_eq!(answer.status(), StatusCode::SEE_OTHER);
        // The open stream ends, and opening it again is refused.
        tokio::time::timeout(std::time::Duration::from_secs(30), stream.text())
            .await
            .unwrap_or_else(|_| panic!("{page}: the stream outlived its session"))
            .expect("the stream's body");
        let again = live().await.expect("an answer");
        assert_eq!(again.status(), StatusCode::UNAUTHORIZED, "{page}");
    }
}

#[tokio::test]
async fn a_trial_whose_record_cannot_be_read_still_shows_its_timeline_and_responses() {
    let data = tempfile::tempdir().expect("tempdir");
    let path = data.path().to_path_buf();
    let app = spawn_app_with_settings(move |s| {
        s.store.data_dir = path;
        s.engine.keep_finished_secs = 0;
    })
    .await;
    let id = "t-damaged";
    app.run_to_finished(id).await;
    app.wait_engine_gone(id).await;
    // By hand, beside the running service (which holds the store's lock).
    rusqlite::Connection::open(data.path().join("lcm.sqlite3"))
        .expect("the store")
        .execute_batch(
            "UPDATE trials SET engine_status = 'Corrupt', failure = 'damaged by hand'
             WHERE trial_id = 't-damaged'",
        )
        .expect("damaged");
    let session = sign_in(&app, Role::Viewer).await;
    let page = get_page(&app, &session.cookie, &format!("/ui/trials/{id}")).await;
    assert!(
        page.contains("Its record cannot be read: damaged by hand"),
        "{page}"
    );
    assert!(!page.contains("has not started"), "{page}");
    assert!(!page.contains("No responses recorded"), "{page}");
    assert!(page.contains("sliceDeployment"), "{page}");
}

#[tokio::test]
async fn console_forms_say_what_was_wrong_as_it_was_typed() {
    let app = spawn_app().await;
    let session = sign_in(&app, Role::Admin).await;
    let answer = post(
        &app,
        &session,
        "/ui/service/remove-heartbeat",
        &[("trial_id", "bad id")],
    )
    .await;
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
    let page = answer.text().await.unwrap();
    assert!(page.contains("'bad id'"), "{page}");

    let answer = post(
        &app,
        &session,
        "/ui/schedule",
        &[
            ("trial_id", "t-undated"),
            ("local", ""),
            ("offset", "+00:00"),
        ],
    )
    .await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let page = get_page(&app, &session.cookie, "/ui/schedule").await;
    assert!(page.contains("Choose a date and a time"), "{page}");
}

/// The service page says, at the top, when the store stops writing, and stops saying it once
/// it writes again.
#[tokio::test]
async fn the_service_page_warns_while_the_store_does_not_write() {
    let (app, broken) = spawn_app_with_flaky_store(AppOptions::default()).await;
    let session = sign_in(&app, Role::Viewer).await;
    let page = get_page(&app, &session.cookie, "/ui/service").await;
    assert!(
        page.contains(r#"<dd id="store-state">writing</dd>"#),
        "{page}"
    );
    assert!(!page.contains("store-failing"), "{page}");
    broken.store(true, Ordering::SeqCst);
    let refused = app.schedule("not-saved", &in_ms(3_600_000)).await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{refused:?}"
    );
    let page = get_page(&app, &session.cookie, "/ui/service").await;
    assert!(
        page.contains(r#"<dd id="store-state">not writing</dd>"#),
        "{page}"
    );
    assert!(page.contains("The store has not written since"), "{page}");
    broken.store(false, Ordering::SeqCst);
    let made = app.schedule("saved", &in_ms(3_600_000)).await;
    assert_eq!(made.status, StatusCode::OK, "{made:?}");
    let page = get_page(&app, &session.cookie, "/ui/service").await;
    assert!(
        page.contains(r#"<dd id="store-state">writing</dd>"#),
        "{page}"
    );
    assert!(!page.contains("store-failing"), "{page}");
}

#[tokio::test]
async fn the_scheduling_switch_is_set_to_what_its_button_says_whatever_happened_meanwhile() {
    let app = spawn_app().await;
    let automatic = || async { app.get("/status").await.body["Automatic_scheduling"].clone() };
    assert_eq!(automatic().await, false);
    let session = sign_in(&app, Role::Admin).await;
    let page = get_page(&app, &session.cookie, "/ui/service").await;
    assert!(page.contains("Turn automatic scheduling on"), "{page}");
    // Another admin turns it on through the API after the page was drawn...
    let toggled = app.post("/trial/scheduling", None).await;
    assert_eq!(toggled.body["Automatic_scheduling"], true, "{toggled:?}");
    // ...so the page's "on" finds it on: it stays on, and the page says so. "Off" turns it
    // off, and a second "off" (a second tab) leaves it off.
    for (wanted, now, said) in [
        ("on", true, "Automatic scheduling is already on"),
        ("off", false, "Automatic scheduling disabled"),
        ("off", false, "Automatic scheduling is already off"),
    ] {
        let answer = post(
            &app,
            &session,
            "/ui/service/automatic",
            &[("automatic", wanted)],
        )
        .await;
        assert_eq!(answer.status(), StatusCode::SEE_OTHER);
        assert_eq!(automatic().await, now);
        let page = get_page(&app, &session.cookie, "/ui/service").await;
        assert!(page.contains(said), "{page}");
    }
    // A form that does not say which is refused, and changes nothing.
    let answer = post(
        &app,
        &session,
        "/ui/service/automatic",
        &[("automatic", "maybe")],
    )
    .await;
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
    assert_eq!(automatic().await, false);
    // The API's switch is still a toggle.
    let toggled = app.post("/trial/scheduling", None).await;
    assert_eq!(toggled.body["Automatic_scheduling"], true, "{toggled:?}");
    // Each press is audited once, under the key's name, saying what it did.
    let entries = app
        .audited("?actor=admin", "the three presses audited", |entries| {
            entries
                .iter()
                .filter(|e| e["action"] == "POST /trial/scheduling")
                .count()
                == 3
        })
        .await;
    let details: Vec<&Value> = entries
        .iter()
        .filter(|e| e["action"] == "POST /trial/scheduling")
        .map(|e| &e["detail"])
        .collect();
    assert_eq!(
        details,
        [
            "Automatic scheduling is already off",
            "Automatic scheduling disabled",
            "Automatic scheduling is already on"
        ],
        "{entries:#?}"
    );
}

/// The `value` of the input `id` on `page`, if it has one.
fn value_of(page: &str, id: &str) -> Option<String> {
    let start = page.find(&format!("id=\"{id}\""))?;
    let tag = &page[start..start + page[start..].find('>')?];
    let value = tag.split(" value=\"").nth(1)?;
    value.split('"').next().map(str::to_owned)
}

#[tokio::test]
async fn a_refused_schedule_gives_the_form_back_as_it_was_typed() {
    let app = spawn_app().await;
    let session = sign_in(&app, Role::Operator).await;
    let typed = [
        ("trial_id", "t-late"),
        ("local", "2001-02-03T04:05"),
        ("offset", "+05:30"),
    ];
    let answer = post(&app, &session, "/ui/schedule", &typed).await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    assert_eq!(answer.headers()[LOCATION], "/ui/schedule");
    let page = get_page(&app, &session.cookie, "/ui/schedule").await;
    assert!(page.contains("is in the past"), "{page}");
    assert_eq!(
        value_of(&page, "trial_id").as_deref(),
        Some("t-late"),
        "{page}"
    );
    assert_eq!(
        value_of(&page, "local").as_deref(),
        Some("2001-02-03T04:05"),
        "{page}"
    );
    assert!(
        page.contains(r#"<option value="+05:30" selected>"#),
        "{page}"
    );
    // Given back once: the next visit has a blank form.
    let page = get_page(&app, &session.cookie, "/ui/schedule").await;
    assert_eq!(value_of(&page, "trial_id"), None, "{page}");
    assert!(
        page.contains(r#"<option value="+00:00" selected>"#),
        "{page}"
    );

    // A trial that is already scheduled: the API's refusal, and the form as typed.
    app.schedule_in("t-taken", 3_600_000).await;
    let later = (chrono::Utc::now() + chrono::Duration::hours(3))
        .format("%Y-%m-%dT%H:%M")
        .to_string();
    let typed = [
        ("trial_id", "t-taken"),
        ("local", later.as_str()),
        ("offset", "-03:00"),
    ];
    let answer = post(&app, &session, "/ui/schedule", &typed).await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let page = get_page(&app, &session.cookie, "/ui/schedule").await;
    assert!(page.contains("already scheduled"), "{page}");
    assert_eq!(value_of(&page, "trial_id").as_deref(), Some("t-taken"));
    assert_eq!(value_of(&page, "local").as_deref(), Some(later.as_str()));
    assert!(
        page.contains(r#"<option value="-03:00" selected>"#),
        "{page}"
    );

    // Without a time zone the time means nothing: none is assumed, nothing is scheduled.
    for offset in [None, Some("")] {
        let mut typed = vec![("trial_id", "t-zoneless"), ("local", later.as_str())];
        typed.extend(offset.map(|o| ("offset", o)));
        let answer = post(&app, &session, "/ui/schedule", &typed).await;
        assert_eq!(answer.status(), StatusCode::SEE_OTHER);
        let page = get_page(&app, &session.cookie, "/ui/schedule").await;
        assert!(page.contains("Choose a time zone"), "{page}");
    }
    let status = app.get("/status").await.body;
    assert!(
        !status["scheduled_trials"]
            .to_string()
            .contains("t-zoneless"),
        "{status}"
    );

    // The registry's form keeps its own id, and the other form stays blank.
    let answer = post(
        &app,
        &session,
        "/ui/schedule/registry",
        &[("trial_id", "bad id")],
    )
    .await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let page = get_page(&app, &session.cookie, "/ui/schedule").await;
    assert_eq!(
        value_of(&page, "registry_trial_id").as_deref(),
        Some("bad id")
    );
    assert_eq!(value_of(&page, "trial_id"), None, "{page}");
    // The refusals the console makes itself are audited as what they are, not as the
    // redirect back to the form.
    for (action, detail) in [
        ("POST /ui/schedule", "Choose a time zone"),
        ("POST /ui/schedule/registry", "invalid trial id 'bad id'"),
    ] {
        let entries = app
            .audited("?actor=operator&limit=100", action, |entries| {
                entries.iter().any(|e| e["action"] == action)
            })
            .await;
        let refused = entries
            .iter()
            .find(|e| {
                e["action"] == action && e["detail"].as_str().is_some_and(|d| d.contains(detail))
            })
            .unwrap_or_else(|| panic!("{action}: {entries:#?}"));
        assert_eq!(refused["outcome"], 400, "{refused}");
    }

    // A key pasted as the trial id is refused, and not given back in the form.
    let key = key_of(Role::Viewer);
    for (form, field) in [
        ("/ui/schedule", "trial_id"),
        ("/ui/schedule/registry", "registry_trial_id"),
    ] {
        let typed = [
            ("trial_id", key),
            ("local", later.as_str()),
            ("offset", "+00:00"),
        ];
        let answer = post(&app, &session, form, &typed).await;
        assert_eq!(answer.status(), StatusCode::SEE_OTHER);
        let page = get_page(&app, &session.cookie, "/ui/schedule").await;
        assert!(page.contains("API keys"), "{form}: {page}");
        assert_eq!(value_of(&page, field), None, "{form}: {page}");
        assert!(!page.contains(key), "{form}: {page}");
    }
}

#[tokio::test]
async fn a_trial_that_starts_while_its_page_is_read_is_shown_started_not_unknown() {
    let reads = BusyReads::default();
    let app = spawn_app_with(AppOptions {
        busy_reads: Some(reads.clone()),
        ..AppOptions::default()
    })
    .await;
    let id = "t-starting";
    let session = sign_in(&app, Role::Viewer).await;
    app.platform.add_trial(lcm::sim::Platform::trial(id, None));
    // Due in an hour: no engine, however slow the test is to ask for the page.
    app.schedule_in(id, 3_600_000).await;
    // The page looks for an engine (none yet), then for a record: the store reads none, and
    // its answer comes late...
    reads.slow.hold();
    let page = tokio::spawn(
        no_redirects()
            .get(format!("{}/ui/trials/{id}", app.address))
            .header("Cookie", &session.cookie)
            .send(),
    );
    eventually_at_least("the page's read of the record", 1, || reads.slow.waiting()).await;
    // ...after the job's time came (moved to now meanwhile): the engine started and the job is
    // gone.
    let unscheduled = app.delete(&format!("/debug/trial/{id}/schedule")).await;
    assert_eq!(unscheduled.status, StatusCode::OK, "{unscheduled:?}");
    app.schedule_in(id, 300).await;
    eventually("the trial started", || async {
        match app.platform.status_history(id).len() {
            0 => Err("not yet".to_owned()),
            _ => Ok(()),
        }
    })
    .await;
    reads.slow.release();
    let answer = page.await.expect("the request ran").expect("an answer");
    assert_eq!(answer.status(), StatusCode::OK);
    let page = answer.text().await.unwrap();
    assert!(!page.contains("knows no trial"), "{page}");
    assert!(page.contains("trial-summary"), "{page}");
}

#[tokio::test]
async fn a_live_page_says_it_is_not_live_until_its_script_connects() {
    let app = spawn_app().await;
    let session = sign_in(&app, Role::Viewer).await;
    let page = get_page(&app, &session.cookie, "/ui/trials").await;
    let start = page.find("id=\"live-state\"").expect("a live indicator");
    let end = page[start..]
        .find("class=\"holder\"")
        .expect("who is signed in");
    let indicator = &page[start..start + end];
    assert!(
        indicator.contains("Not live: reload for the latest"),
        "{indicator}"
    );
    assert!(!indicator.contains("Connecting"), "{indicator}");
    // The script says it connects when it starts.
    let script = get_page(&app, "", "/ui/assets/console.js").await;
    assert!(
        script.contains(r#"setState("connecting", "Connecting…""#),
        "{script}"
    );
}

#[tokio::test]
async fn a_reason_typed_on_several_lines_is_taken_as_one_line() {
    let app = spawn_app().await;
    let id = "t-lines";
    app.start_trial(id).await;
    app.wait_waiting(id, WAITING_OPERATOR).await;
    let session = sign_in(&app, Role::Operator).await;
    let answer = post(
        &app,
        &session,
        &format!("/ui/trials/{id}/actions/pause"),
        &[("reason", "  wrong facility\r\n\tbooked  ")],
    )
    .await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let paused = app.wait_event(id, "paused", "wrong facility booked").await;
    assert_eq!(paused["detail"], "wrong facility booked");
}

#[tokio::test]
async fn console_refusals_are_audited_with_their_reason() {
    let app = spawn_app().await;
    let session = sign_in(&app, Role::Admin).await;
    let path = format!("{}/ui/trials/t-refused/actions/pause", app.address);
    // No session, a stale token, another site.
    let no_session = no_redirects()
        .post(&path)
        .header("Origin", &app.address)
        .form(&[("csrf", session.csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(no_session.status(), StatusCode::UNAUTHORIZED);
    let stale = no_redirects()
        .post(&path)
        .header("Cookie", &session.cookie)
        .header("Origin", &app.address)
        .form(&[("csrf", "stale")])
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::FORBIDDEN);
    let cross_site = no_redirects()
        .post(&path)
        .header("Cookie", &session.cookie)
        .header("Origin", "http://evil.example")
        .form(&[("csrf", session.csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), StatusCode::FORBIDDEN);
    // A bad id, an unknown action.
    let bad_id = post(&app, &session, "/ui/trials/no%20id/actions/pause", &[]).await;
    assert_eq!(bad_id.status(), StatusCode::BAD_REQUEST);
    let unknown = post(&app, &session, "/ui/trials/t-refused/actions/explode", &[]).await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);

    let entries = app
        .audited("", "the five refusals audited", |entries| {
            entries
                .iter()
                .filter(|e| {
                    e["action"]
                        .as_str()
                        .is_some_and(|a| a.starts_with("POST /ui/trials/"))
                })
                .count()
                == 5
        })
        .await;
    let detail = |outcome: u16, actor: &str, trial: &str| -> String {
        entries
            .iter()
            .find(|e| e["outcome"] == outcome && e["actor"] == actor && e["trial_id"] == trial)
            .and_then(|e| e["detail"].as_str())
            .unwrap_or_else(|| panic!("{outcome} {actor} {trial}: {entries:#?}"))
            .to_owned()
    };
    assert!(detail(401, "anonymous", "t-refused").contains("not signed in"));
    let forbidden: Vec<&str> = entries
        .iter()
        .filter(|e| e["outcome"] == 403)
        .filter_map(|e| e["detail"].as_str())
        .collect();
    assert!(
        forbidden.iter().any(|d| d.contains("security token")),
        "{entries:#?}"
    );
    assert!(
        forbidden.iter().any(|d| d.contains("Origin")),
        "{entries:#?}"
    );
    assert!(detail(400, "admin", "no id").contains("not a valid trial id"));
    assert!(detail(404, "admin", "t-refused").contains("no such action"));
    // Nothing secret: no session id, no token.
    let audit = format!("{entries:?}");
    let session_id = session.cookie.trim_start_matches("lcm_session=");
    assert!(!audit.contains(session_id), "{audit}");
    assert!(!audit.contains(&session.csrf), "{audit}");
}

#[tokio::test]
async fn a_deep_link_survives_the_sign_in_and_cannot_lead_elsewhere() {
    let app = spawn_app().await;
    let asked = ask(&app, "/ui/trials/t-deep?x=1").await;
    assert_eq!(asked.status(), StatusCode::SEE_OTHER);
    let to = asked.headers()[LOCATION].to_str().unwrap().to_owned();
    assert_eq!(to, "/ui/?next=%2Fui%2Ftrials%2Ft-deep%3Fx%3D1");
    let page = get_page(&app, "", &to).await;
    assert!(
        page.contains(r#"name="next" value="/ui/trials/t-deep?x=1""#),
        "{page}"
    );
    let sign_in_to = |next: &'static str, key: &'static str| {
        no_redirects()
            .post(format!("{}/ui/sign-in", app.address))
            .header("Origin", &app.address)
            .form(&[("key", key), ("next", next)])
            .send()
    };
    // A wrong key keeps where to go in the form it shows again.
    let wrong = sign_in_to("/ui/trials/t-deep?x=1", "a-guess")
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let page = wrong.text().await.unwrap();
    assert!(
        page.contains(r#"name="next" value="/ui/trials/t-deep?x=1""#),
        "{page}"
    );
    let key = key_of(Role::Viewer);
    let answer = sign_in_to("/ui/trials/t-deep?x=1", key).await.unwrap();
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    assert_eq!(answer.headers()[LOCATION], "/ui/trials/t-deep?x=1");
    // Anywhere but a page of the console is refused: the trials page instead.
    for elsewhere in [
        "https://evil.example/ui/",
        "//evil.example/ui/",
        "/\\evil.example/ui/",
        "/ui\\..\\..\\x",
        "/uix",
        "/status",
        "javascript:alert(1)",
        "/ui/trials\r\nSet-Cookie: x=1",
        "",
    ] {
        let answer = sign_in_to(elsewhere, key).await.unwrap();
        assert_eq!(answer.status(), StatusCode::SEE_OTHER, "{elsewhere:?}");
        assert_eq!(answer.headers()[LOCATION], "/ui/trials", "{elsewhere:?}");
    }
    let front = ask(&app, "/ui/?next=%2F%2Fevil.example")
        .await
        .text()
        .await
        .unwrap();
    assert!(!front.contains("evil.example"), "{front}");
    // A form sent from a page left open after the session ended (a restart): its sign-in
    // link comes back to that page; one sent from elsewhere, to the sign-in alone.
    for (sent_from, link) in [
        (
            format!("{}/ui/trials/t-deep?tab=x", app.address),
            r#"href="/ui/?next=%2Fui%2Ftrials%2Ft-deep%3Ftab%3Dx""#,
        ),
        (
            "https://evil.example//evil".to_owned(),
            r#"href="/ui/">Sign in"#,
        ),
    ] {
        let answer = no_redirects()
            .post(format!("{}/ui/trials/t-deep/actions/pause", app.address))
            .header("Referer", sent_from)
            .form(&[("csrf", "stale")])
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
        let page = answer.text().await.unwrap();
        assert!(page.contains(link), "{link}: {page}");
    }
}

#[tokio::test]
async fn the_search_says_what_it_takes_and_an_empty_result_says_nothing_matches() {
    let app = spawn_app().await;
    let session = sign_in(&app, Role::Viewer).await;
    let page = get_page(&app, &session.cookie, "/ui/trials").await;
    let start = page.find("id=\"q\"").expect("a search box");
    let input = &page[start..start + page[start..].find('>').unwrap()];
    assert!(input.contains("title=\"Letters, digits"), "{input}");
    assert!(page.contains("No trials here yet"), "{page}");
    for query in ["?q=nothing-like-it", "?status=Failed"] {
        let page = get_page(&app, &session.cookie, &format!("/ui/trials{query}")).await;
        assert!(page.contains("No trial matches"), "{query}: {page}");
        assert!(!page.contains("No trials here yet"), "{query}: {page}");
    }
    // A later page that is empty has no older trials, filtered or not.
    let cursor = {
        use base64::Engine;
        let position = format!("{}\nzz", lcm::store::codec::time(chrono::Utc::now()));
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(position)
    };
    for filter in ["", "&status=Failed", "&q=x"] {
        let path = format!("/ui/trials?cursor={cursor}{filter}");
        let page = get_page(&app, &session.cookie, &path).await;
        assert!(page.contains("No older trials."), "{path}: {page}");
    }
}

/// An address a form posts to, opened as a page (typed in the address bar, a tab opened again
/// after a refusal drawn there), leads to the page the form is on, not to a bare 405.
#[tokio::test]
async fn an_address_a_form_posts_to_opened_as_a_page_leads_to_the_form_s_page() {
    let app = spawn_app().await;
    for (path, to) in [
        ("/ui/trials/t1/actions/active", "/ui/trials/t1"),
        ("/ui/trials/no%20id/actions/active", "/ui/trials"),
        ("/ui/sign-in", "/ui/"),
        ("/ui/sign-out", "/ui/"),
        ("/ui/schedule/registry", "/ui/schedule"),
        ("/ui/service/toggle", "/ui/service"),
    ] {
        let answer = ask(&app, path).await;
        assert_eq!(answer.status(), StatusCode::SEE_OTHER, "{path}");
        let location = answer
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok());
        assert_eq!(location, Some(to), "{path}");
    }
}

/// A trial's page offers what its state allows: an operator looking at a failed trial is told a
/// higher role could restore or skip it; a trial paused at a wait offers Resume, not Step (the
/// signal or callback that ends the wait does that).
#[tokio::test]
async fn a_trial_s_page_offers_what_fits_and_says_what_a_higher_role_could_do() {
    let app = spawn_app_with_settings(single_attempt).await;
    let (failed, paused) = ("console-failed", "console-paused");
    app.platform
        .inject(flight_plan_fault(failed, FaultAction::Status(500)));
    app.start_trial(failed).await;
    app.wait_failed(failed).await;
    app.start_to_idle(paused).await;
    let answer = app.post(&format!("/trial/{paused}/pause"), None).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");

    let operator = sign_in(&app, Role::Operator).await;
    let page = get_page(&app, &operator.cookie, &format!("/ui/trials/{failed}")).await;
    assert!(
        page.contains(
            "Restore, Skip step also fit the trial's state, but need a role above yours (operator)"
        ),
        "{page}"
    );
    assert!(page.contains("/confirm/abort"), "{page}");
    let page = get_page(&app, &operator.cookie, &format!("/ui/trials/{paused}")).await;
    assert!(page.contains("/confirm/resume"), "{page}");
    assert!(!page.contains("/confirm/step"), "{page}");
}

#[tokio::test]
async fn a_clean_up_that_failed_with_nothing_left_deployed_says_so() {
    let app = spawn_app_with_settings(single_attempt).await;
    let id = "kpi-left-open";
    app.start_to_idle(id).await;
    // The KPI marking that closes the trial's KPIs is refused; the slice and the job go.
    app.platform.inject(
        lcm::sim::Fault::new(
            lcm::sim::Component::Kpi,
            "POST",
            "/markKPIData",
            FaultAction::Status(500),
        )
        .for_trial(id),
    );
    let abort = app.post(&format!("/trial/{id}/abort"), None).await;
    assert_eq!(abort.status, StatusCode::OK, "{abort:?}");
    let failed = app.wait_cleanup_failed(id).await;
    assert_eq!(failed["leftovers"], serde_json::json!([]), "{failed}");

    let session = sign_in(&app, Role::Viewer).await;
    let page = get_page(&app, &session.cookie, &format!("/ui/trials/{id}")).await;
    assert!(page.contains("SendKpiFinish failed"), "{page}");
    assert!(
        page.contains("Nothing is left deployed on the facility"),
        "{page}"
    );
}

#[tokio::test]
async fn the_trials_page_marks_a_paused_trial() {
    let app = spawn_app().await;
    let id = "marked-paused";
    app.start_to_idle(id).await;
    let session = sign_in(&app, Role::Viewer).await;
    let listed = |page: &str| page.matches("badge paused").count();
    let before = get_page(&app, &session.cookie, "/ui/trials").await;
    assert_eq!(listed(&before), 0, "{before}");
    let pause = app.post(&format!("/trial/{id}/pause"), None).await;
    assert_eq!(pause.status, StatusCode::OK, "{pause:?}");
    let after = get_page(&app, &session.cookie, "/ui/trials").await;
    assert_eq!(listed(&after), 1, "{after}");
}

#[tokio::test]
async fn a_missed_trial_has_a_page_that_offers_to_unschedule_it() {
    let data = prepared_store(vec![job_an_hour_ago("missed-page")], None);
    let path = data.path().to_path_buf();
    let app = spawn_app_with_settings(move |s| s.store.data_dir = path).await;
    let session = sign_in(&app, Role::Operator).await;
    let page = get_page(&app, &session.cookie, "/ui/trials/missed-page").await;
    assert!(page.contains("was to start at"), "{page}");
    assert!(
        page.contains(r#"href="/ui/trials/missed-page/confirm/unschedule""#),
        "{page}"
    );
    let answer = post(
        &app,
        &session,
        "/ui/trials/missed-page/actions/unschedule",
        &[],
    )
    .await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    assert_eq!(answer.headers()[LOCATION], "/ui/trials");
    let status = app.get("/status").await.body;
    assert_eq!(status["missed_trials"], Value::Array(vec![]), "{status}");
}

#[tokio::test]
async fn a_trial_paused_in_the_middle_of_a_step_is_offered_resume_not_step() {
    let app = spawn_app().await;
    let id = "held-midway";
    // The step's first marking is held until the pause is taken: its second then waits.
    let marking = app.hold_next(Component::Kpi, "POST", "/markKPIData", id);
    app.start_trial(id).await;
    app.wait_sent(id, "POST", "/markKPIData").await;
    let answer = app.post(&format!("/trial/{id}/pause"), None).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    marking.open();
    app.wait_waiting(id, "in the middle of the step").await;
    let session = sign_in(&app, Role::Operator).await;
    let page = get_page(&app, &session.cookie, &format!("/ui/trials/{id}")).await;
    assert!(
        page.contains(&format!("/ui/trials/{id}/confirm/resume")),
        "{page}"
    );
    assert!(
        !page.contains(&format!("/ui/trials/{id}/confirm/step")),
        "{page}"
    );
}

/// A key pasted into the console's address (as a trial's id or the search) is not shown back
/// in the page, and a search that holds one is not made.
#[tokio::test]
async fn a_key_pasted_into_the_address_is_not_shown_back() {
    let app = spawn_app().await;
    let session = sign_in(&app, Role::Viewer).await;
    let key = key_of(Role::Operator);
    let get = |path: String| {
        no_redirects()
            .get(format!("{}{path}", app.address))
            .header("Cookie", session.cookie.clone())
            .send()
    };
    for path in [format!("/ui/trials/{key}"), format!("/ui/trials/x{key}")] {
        let answer = get(path.clone()).await.expect("an answer");
        assert_eq!(answer.status(), StatusCode::NOT_FOUND, "{path}");
        let page = answer.text().await.expect("a page");
        assert!(
            !page.contains(key) && page.contains("[redacted]"),
            "{path}: {page}"
        );
    }
    let answer = get(format!("/ui/trials?status=Active&q=part-{key}"))
        .await
        .expect("an answer");
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    assert_eq!(answer.headers()[LOCATION], "/ui/trials?status=Active");
    let page = get_page(&app, &session.cookie, "/ui/trials?status=Active").await;
    assert!(page.contains("it was not searched"), "{page}");
    assert!(!page.contains(key), "{page}");
}
