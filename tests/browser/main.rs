//! Browser tests of the operator console (SPEC §16): headless Chromium, driven through
//! chromedriver, against the real `lcm` binary and the simulated trial components. Built only
//! with `--features browser` (they need Debian's `chromium` and `chromium-driver`):
//!
//! ```sh
//! cargo test --features browser --test browser
//! LCM_SCREENSHOTS=docs cargo test --features browser --test browser   # and the README's pictures
//! ```

#[path = "../common/mod.rs"]
mod common;
mod support;

use std::time::Duration;

use common::{ROLE_KEYS, key_of, keys_file, schedule_ahead};
use fantoccini::wd::TimeoutConfiguration;
use lcm::config::Role;
use lcm::sim::{Component, Fault, FaultAction, Platform};
use reqwest::Method;
use serde_json::{Value, json};

use support::{Browser, Service, eventually};

/// The `engine_status` data attribute of a trial's row on the trials page.
async fn row_status(browser: &Browser, id: &str) -> Result<String, String> {
    let status = browser
        .run(&format!(
            "return document.querySelector(\"tr[data-trial='{id}']\")?.dataset.status ?? null;"
        ))
        .await;
    status
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| status.to_string())
}

fn no_errors(errors: &[String]) {
    assert!(
        errors.is_empty(),
        "the browser console has errors: {errors:#?}"
    );
}

/// Fills the schedule form on the page shown: trial `id`, the start `local` (as the form's
/// date-and-time field takes it) at UTC `offset`; then sends it.
async fn fill_schedule_form(browser: &Browser, id: &str, local: &str, offset: &str) {
    browser
        .client
        .find(fantoccini::Locator::Css("#trial_id"))
        .await
        .expect("id field")
        .send_keys(id)
        .await
        .expect("typed");
    browser
        .run(&format!(
            "document.getElementById('local').value = '{local}'; return true;"
        ))
        .await;
    browser
        .client
        .find(fantoccini::Locator::Css("#offset"))
        .await
        .expect("offset field")
        .select_by_value(offset)
        .await
        .expect("offset chosen");
    browser
        .click("form[action='/ui/schedule'] button[type=submit]")
        .await;
}

/// Fills the schedule form for `id`, three seconds ahead written in UTC+02:00, and sends it
/// (again with a new time if it arrived after that one, see [`schedule_ahead`]); returns the
/// message shown.
async fn schedule_through_form(browser: &Browser, base: &str, id: &str) -> String {
    schedule_ahead(id, 3000, |start| async move {
        browser.goto(&format!("{base}/ui/schedule")).await;
        let local = (start + chrono::Duration::hours(2)).format("%Y-%m-%dT%H:%M:%S");
        fill_schedule_form(browser, id, &local.to_string(), "+02:00").await;
        // The page shows the API's answer: said again as the API's status and detail.
        eventually("the schedule form's answer", || async {
            let shown = browser.text("main .flash").await?;
            if shown.contains("scheduled at") {
                Ok((200, Value::Null))
            } else if shown.contains("in the past") {
                Ok((400, json!({ "detail": shown })))
            } else {
                Err(shown)
            }
        })
        .await
    })
    .await;
    browser.text("main .flash").await.expect("the answer shown")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_schedules_a_trial_and_steers_it_to_finished_without_reloading() {
    let service = Service::start().await;
    let browser = Browser::start().await;
    let base = &service.base;

    // A key that is not one is refused on the sign-in page.
    browser.goto(&format!("{base}/ui/")).await;
    let field = browser
        .client
        .find(fantoccini::Locator::Css("#key"))
        .await
        .expect("key field");
    field.send_keys("not-a-key").await.expect("typed");
    browser
        .click("form[action='/ui/sign-in'] button[type=submit]")
        .await;
    browser.wait_text("main", "not a key of this service").await;
    // That refusal (401) is the one error the browser may log.
    let errors = browser.console_errors().await;
    assert!(
        errors.len() == 1 && errors[0].contains("/ui/sign-in") && errors[0].contains("401"),
        "{errors:#?}"
    );
    browser.sign_in(base, key_of(Role::Operator)).await;

    // A start in the past is refused, and the form keeps what was typed (the offset too,
    // which the script would otherwise propose anew).
    browser.goto(&format!("{base}/ui/schedule")).await;
    fill_schedule_form(&browser, "browser-late", "2001-02-03T04:05", "+05:30").await;
    browser.wait_text("main .flash", "in the past").await;
    let kept = browser
        .run(
            "return ['trial_id', 'local', 'offset']
                .map(id => document.getElementById(id).value);",
        )
        .await;
    assert_eq!(kept, json!(["browser-late", "2001-02-03T04:05", "+05:30"]));
    no_errors(&browser.console_errors().await);

    // Scheduled through the form, three seconds ahead, written in UTC+02:00: the offset is
    // honoured (dropped, the trial would start two hours off).
    let id = "browser-flow";
    service.platform.add_trial(Platform::trial(id, None));
    let flash = schedule_through_form(&browser, base, id).await;
    assert!(flash.contains("+02:00"), "{flash}");
    let url = browser.client.current_url().await.expect("url");
    assert_eq!(url.path(), format!("/ui/trials/{id}"));

    // The trial page follows the trial from its start to IDLE by itself.
    browser.mark_page().await;
    browser
        .wait_text("#trial-summary", "the operator (active or finish)")
        .await;
    assert!(browser.not_reloaded().await, "the page reloaded");
    assert_eq!(service.platform.trial_status(id).as_deref(), Some("IDLE"));
    browser
        .wait_text(
            "#trial-position tr[aria-current]",
            "the operator (active or finish)",
        )
        .await;
    assert!(
        browser.count("#trial-progress ol.progress-list li").await > 0,
        "the slice deployment's progress reports are listed"
    );
    assert!(
        browser.count("#trial-history svg.timeline g.bar").await >= 9,
        "a bar per step and wait so far"
    );

    browser.confirm("active", None).await;
    browser.wait_text("main .flash", "active accepted").await;
    browser
        .wait_text("#trial-summary", "the operator (finish)")
        .await;
    browser.confirm("finish", None).await;
    browser.wait_text("main .flash", "finish accepted").await;
    browser.wait_text("#trial-summary", "Finished").await;
    browser.wait_text("#live-state", "Up to date").await;
    assert_eq!(
        service.platform.status_history(id),
        [
            "ACTIVATING_1",
            "ACTIVATING_2",
            "IDLE",
            "ACTIVE",
            "STOPPING",
            "FINISHED"
        ]
    );
    browser.screenshot("console-trial.png", 1700).await;

    // The console's actions are the API's, audited once under the key's name.
    let by_operator = |audit: &Value, action: &str| {
        audit["entries"].as_array().is_some_and(|entries| {
            entries
                .iter()
                .any(|e| e["action"] == action && e["actor"] == "operator" && e["outcome"] == 200)
        })
    };
    let audit = eventually("the console's actions in the audit log", || async {
        let (_, audit) = service
            .api(Method::GET, &format!("/audit?trial_id={id}"), None)
            .await;
        let all = [
            "POST /debug/trial/schedule",
            "POST /trial/{trial_id}/active",
            "POST /trial/{trial_id}/finish",
        ]
        .iter()
        .all(|action| by_operator(&audit, action));
        if all {
            Ok(audit)
        } else {
            Err(audit.to_string())
        }
    })
    .await;
    let entries = audit["entries"].as_array().expect("entries");
    assert!(
        !entries
            .iter()
            .any(|e| e["action"].as_str().is_some_and(|a| a.contains("/ui/"))),
        "an action is audited once: {audit:#}"
    );

    // The trials page updates itself: a trial scheduled elsewhere appears and starts.
    browser.goto(&format!("{base}/ui/trials")).await;
    assert_eq!(row_status(&browser, id).await.as_deref(), Ok("Finished"));
    browser.mark_page().await;
    // Due in an hour while the page is looked at, however slow the browser; then soon.
    service.schedule_in("browser-second", 3_600_000).await;
    eventually("the new trial listed as scheduled", || async {
        row_status(&browser, "browser-second")
            .await
            .and_then(|s| if s == "Scheduled" { Ok(()) } else { Err(s) })
    })
    .await;
    let (removed, body) = service
        .api(Method::DELETE, "/debug/trial/browser-second/schedule", None)
        .await;
    assert_eq!(removed, 200, "{body}");
    service.schedule_in("browser-second", 300).await;
    eventually("the new trial listed as active", || async {
        row_status(&browser, "browser-second")
            .await
            .and_then(|s| if s == "Active" { Ok(()) } else { Err(s) })
    })
    .await;
    assert!(browser.not_reloaded().await, "the page reloaded");
    browser.wait_text("#trial-tabs", "Ended 1").await;
    // Two more, for the picture: one that fails, one due in an hour.
    service.platform.inject(
        Fault::new(
            Component::Enforcement,
            "POST",
            "flightplan",
            FaultAction::Status(503),
        )
        .for_trial("browser-third"),
    );
    service.schedule_in("browser-third", 200).await;
    service.schedule_in("browser-later", 3_600_000).await;
    browser.wait_text("#trial-tabs", "Failed 1").await;
    browser.wait_text("#trial-tabs", "Scheduled 1").await;
    browser
        .wait_text(
            "tr[data-trial='browser-second']",
            "waiting for the operator",
        )
        .await;
    browser.screenshot("console-trials.png", 760).await;

    no_errors(&browser.console_errors().await);
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_trial_shows_its_reason_and_restore_brings_it_to_idle() {
    let service = Service::start().await;
    let id = "browser-fails";
    service.platform.inject(
        Fault::new(
            Component::Enforcement,
            "POST",
            "flightplan",
            FaultAction::Status(500),
        )
        .for_trial(id)
        .times(1),
    );
    let browser = Browser::start().await;
    let base = &service.base;
    browser.sign_in(base, key_of(Role::Admin)).await;
    service.schedule_in(id, 1000).await;
    browser.goto(&format!("{base}/ui/trials/{id}")).await;
    browser.mark_page().await;

    let reason = browser
        .wait_text("#trial-failure .failure-reason", "EnforceUavPlan failed")
        .await;
    assert!(reason.contains("500"), "{reason}");
    browser
        .wait_text("#trial-position tr.failed", "EnforceUavPlan")
        .await;
    // The failure file, folded, once the failure is reported.
    eventually("the failure file on the page", || async {
        let shown = browser
            .run("return document.querySelector('#failure-file pre') !== null;")
            .await;
        if shown == json!(true) {
            Ok(())
        } else {
            Err(shown.to_string())
        }
    })
    .await;
    browser.click("#failure-file summary").await;
    let file = browser
        .text("#failure-file pre")
        .await
        .expect("the file shown");
    assert!(file.contains("EnforceUavPlan"), "{file}");
    assert!(browser.not_reloaded().await, "the page reloaded");

    eventually("the Restore button", || async {
        match browser.count("a[data-action='restore']").await {
            1 => Ok(()),
            n => Err(format!("{n} buttons")),
        }
    })
    .await;
    browser.confirm("restore", None).await;
    browser.wait_text("main .flash", "restored").await;
    browser
        .wait_text("#trial-summary", "the operator (active or finish)")
        .await;
    assert_eq!(service.platform.trial_status(id).as_deref(), Some("IDLE"));
    // An admin sees the trial's audit entries, the restore among them, by the key's name.
    let audit = browser
        .wait_text("#trial-audit", "/debug/engine/{trial_id}/restore")
        .await;
    assert!(audit.contains("admin (admin)"), "{audit}");

    no_errors(&browser.console_errors().await);
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_sees_no_action_and_a_forged_post_with_its_session_is_refused() {
    let service = Service::start().await;
    let id = "browser-viewed";
    service.schedule_in(id, 300).await;
    let browser = Browser::start().await;
    let base = &service.base;
    // A link to the trial, followed before signing in: the sign-in lands on it.
    browser.goto(&format!("{base}/ui/trials/{id}")).await;
    browser.sign_in_here(key_of(Role::Viewer)).await;
    let url = browser.client.current_url().await.expect("url");
    assert_eq!(url.path(), format!("/ui/trials/{id}"));
    browser
        .wait_text("#trial-summary", "the operator (active or finish)")
        .await;
    browser
        .wait_text("#trial-actions", "can look but not act")
        .await;
    assert_eq!(
        browser.count("a[data-action], dialog, form.confirm").await,
        0
    );
    assert_eq!(
        browser.count("#trial-audit table").await,
        0,
        "the audit log is for admins"
    );

    // A forged POST with the viewer's session and a valid CSRF token: the API's role rule
    // refuses it, and the trial does not move.
    let cookie = format!("lcm_session={}", browser.session_cookie().await);
    let csrf = browser
        .run("return document.querySelector('input[name=csrf]').value;")
        .await;
    let csrf = csrf.as_str().expect("a CSRF token").to_owned();
    let forge = |origin: &str, csrf: &str| {
        service
            .http
            .post(format!("{base}/ui/trials/{id}/actions/active"))
            .header("Cookie", &cookie)
            .header("Origin", origin)
            .form(&[("csrf", csrf)])
            .send()
    };
    let refused = forge(base, &csrf).await.expect("an answer");
    assert_eq!(refused.status(), 403);
    let page = refused.text().await.expect("a page");
    assert!(page.contains("needs the operator role"), "{page}");
    // Without its token, or from another site, the form is not even sent on.
    for (origin, token) in [
        (base.as_str(), "forged"),
        ("http://evil.example", csrf.as_str()),
    ] {
        let refused = forge(origin, token).await.expect("an answer");
        assert_eq!(refused.status(), 403, "{origin} {token}");
    }
    let (_, status) = service
        .api(Method::GET, &format!("/trial/{id}/status"), None)
        .await;
    assert_eq!(status["waiting_for"], "the operator (active or finish)");
    let audit = eventually("the three refusals in the audit log", || async {
        let (_, audit) = service.api(Method::GET, "/audit?actor=viewer", None).await;
        let refused = audit["entries"].as_array().map_or(0, |entries| {
            entries.iter().filter(|e| e["outcome"] == 403).count()
        });
        if refused == 3 {
            Ok(audit)
        } else {
            Err(audit.to_string())
        }
    })
    .await;
    let refusals: Vec<&Value> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["outcome"] == 403)
        .collect();
    assert!(
        refusals
            .iter()
            .any(|e| e["action"] == "POST /trial/{trial_id}/active"),
        "{audit:#}"
    );

    // A reload of the keys that removes the viewer's key ends its session.
    let kept: Vec<_> = ROLE_KEYS
        .into_iter()
        .filter(|(_, _, role)| *role != Role::Viewer)
        .collect();
    std::fs::write(service.dir.path().join("keys.toml"), keys_file(&kept)).expect("keys written");
    service.hangup().await;
    eventually("the viewer's session to end", || async {
        let answer = service
            .http
            .get(format!("{base}/ui/trials"))
            .header("Cookie", &cookie)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let to = answer
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if answer.status() == 303 && to == "/ui/" {
            Ok(())
        } else {
            Err(format!("{} {to}", answer.status()))
        }
    })
    .await;
    browser.goto(&format!("{base}/ui/trials")).await;
    assert_eq!(browser.count("#key").await, 1, "back at the sign-in page");

    no_errors(&browser.console_errors().await);
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_reconnects_and_shows_what_happened_meanwhile_once() {
    let service = Service::start().await;
    let id = "browser-reconnects";
    service.schedule_in(id, 300).await;
    let browser = Browser::start().await;
    let base = &service.base;
    browser.sign_in(base, key_of(Role::Operator)).await;
    browser.goto(&format!("{base}/ui/trials/{id}")).await;
    browser
        .wait_text("#trial-summary", "the operator (active or finish)")
        .await;
    browser.wait_text("#live-state", "Live").await;
    browser.mark_page().await;
    let errors_before = browser.console_errors().await;
    no_errors(&errors_before);

    // The network drops; meanwhile the trial moves on through the API.
    service.proxy.cut();
    let (status, body) = service
        .api(Method::POST, &format!("/trial/{id}/active"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    browser
        .wait_text("#trial-summary", "the operator (finish)")
        .await;
    browser.wait_text("#live-state", "Live").await;
    assert!(browser.not_reloaded().await, "the page reloaded");

    // Nothing shown twice: the page lists exactly the trial's history.
    let (_, history) = service
        .api(Method::GET, &format!("/trial/{id}/history"), None)
        .await;
    let events = history["history"].as_array().expect("history").len();
    assert_eq!(browser.count("#history-table tbody tr").await, events);
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_phone_the_trials_list_labels_its_times_and_the_timeline_stays_legible() {
    let service = Service::start().await;
    let id = "browser-narrow";
    service.schedule_in(id, 300).await;
    let browser = Browser::start().await;
    let base = &service.base;
    browser.sign_in(base, key_of(Role::Viewer)).await;
    let width = browser.resize(360, 800).await;
    assert!(width <= 400, "a phone's width: {width}");

    browser.goto(&format!("{base}/ui/trials")).await;
    let row = browser
        .wait_text(&format!("tr[data-trial='{id}']"), "Created")
        .await;
    assert!(row.contains("Updated"), "{row}");

    // The timeline scrolls sideways rather than shrinking its words out of reach.
    browser.goto(&format!("{base}/ui/trials/{id}")).await;
    browser
        .wait_text("#trial-summary", "the operator (active or finish)")
        .await;
    let drawn = browser
        .run("return document.querySelector('svg.timeline').getBoundingClientRect().width;")
        .await;
    let drawn = drawn.as_f64().expect("a width");
    // Its words are 12 units of 1000: at least 10 px.
    assert!(drawn >= 830.0, "the timeline is drawn {drawn} px wide");

    // On a laptop, the table's head names the columns instead.
    browser.resize(1280, 900).await;
    browser.goto(&format!("{base}/ui/trials")).await;
    let row = browser
        .wait_text(&format!("tr[data-trial='{id}']"), id)
        .await;
    assert!(!row.contains("Created"), "{row}");

    no_errors(&browser.console_errors().await);
    browser.close().await;
}

/// A browser keeps six connections to one host, and a live page's stream holds one: pages left
/// for the Back button and tabs out of sight give theirs back, so going from page to page and
/// opening many tabs never leaves a page waiting for a connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_out_of_sight_give_their_streams_back_so_the_console_never_freezes() {
    let service = Service::start().await;
    let browser = Browser::start().await;
    let base = &service.base;
    // A page that waits for a connection fails here rather than after five minutes.
    let timeouts = TimeoutConfiguration::new(None, Some(Duration::from_secs(15)), None);
    browser
        .client
        .update_timeouts(timeouts)
        .await
        .expect("timeouts set");
    browser.sign_in(base, key_of(Role::Viewer)).await;
    for round in 0..10 {
        let filter = if round % 2 == 0 {
            "?status=Scheduled"
        } else {
            ""
        };
        browser.goto(&format!("{base}/ui/trials{filter}")).await;
        browser.wait_text("#live-state", "Live").await;
    }
    let first = browser.client.window().await.expect("the first tab");
    for _ in 0..8 {
        let tab = browser.client.new_window(true).await.expect("a new tab");
        browser
            .client
            .switch_to_window(tab.handle)
            .await
            .expect("switched");
        browser.goto(&format!("{base}/ui/trials")).await;
        browser.wait_text("#live-state", "Live").await;
    }
    browser
        .client
        .switch_to_window(first)
        .await
        .expect("switched back");
    browser.wait_text("#live-state", "Live").await;
    no_errors(&browser.console_errors().await);
    browser.close().await;
}
