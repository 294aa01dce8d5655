//! Seeing inside: metrics list every family from the first scrape and count exactly what a
//! trial did (against the real binary, whose recorder nothing else shares); logs piped from
//! stdout are plain text; history and the live event stream tell a whole trial in order.

use std::process::Stdio;
use std::time::Duration;

use lcm::engine::sequence::{Step, happy_path};
use lcm::sim::FaultAction;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::AsyncReadExt;

use crate::helpers::*;

/// Every series of a family whose labels include `label`, summed.
fn sum_of(text: &str, family: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn the_first_scrape_of_a_fresh_service_lists_every_family() {
    // Its own process, so its own recorder: nothing else has counted anything in it.
    let app = spawn_binary().await;
    let text = scrape(&app).await;
    for (family, kind) in lcm::telemetry::FAMILIES {
        assert!(
            text.contains(&format!("# TYPE {family} {kind}\n")),
            "{family} is not listed as a {kind}: {text}"
        );
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "{family}: {text}"
        );
    }
    for series in [
        r#"lcm_engines{status="Active"}"#,
        "lcm_scheduled_jobs",
        "lcm_missed_jobs",
        r#"lcm_steps_total{step="GetCallbackToken",outcome="completed"}"#,
        r#"lcm_steps_total{step="CloseService",outcome="failed"}"#,
        r#"lcm_outbound_request_duration_seconds_bucket{service="trial_repository",status="204",le="+Inf"}"#,
        r#"lcm_outbound_request_duration_seconds_count{service="kpi_monitoring",status="200"}"#,
        r#"lcm_outbound_request_errors_total{service="trial_enforcement",error="timeout"}"#,
        r#"lcm_signals_total{signal="slice callback",outcome="accepted"}"#,
        r#"lcm_token_validations_total{outcome="valid"}"#,
    ] {
        assert_eq!(series_value(&text, series), Some(0.0), "{series}: {text}");
    }
}

#[tokio::test]
async fn metrics_count_exactly_what_one_trial_did() {
    let app = spawn_binary().await;
    let id = "metered";
    app.start_trial(id).await;
    let scheduled = scrape(&app).await;
    app.drive_to_finished(id).await;
    let text = scrape(&app).await;

    // Fresh binary: each value below is what this one trial did.
    for step in happy_path(false) {
        let series = format!(
            r#"lcm_steps_total{{step="{}",outcome="completed"}}"#,
            step.name()
        );
        assert_eq!(series_value(&text, &series), Some(1.0), "{series}: {text}");
    }
    assert_eq!(sum_of(&text, "lcm_steps_total", r#"outcome="failed""#), 0.0);
    assert_eq!(
        series_value(&text, r#"lcm_engines{status="Finished"}"#),
        Some(1.0)
    );
    assert_eq!(
        series_value(&text, r#"lcm_engines{status="Active"}"#),
        Some(0.0)
    );
    assert!(
        series_value(&scheduled, "lcm_scheduled_jobs") == Some(1.0)
            || series_value(&scheduled, r#"lcm_engines{status="Active"}"#) == Some(1.0),
        "the trial is a job or an engine: {scheduled}"
    );
    assert_eq!(series_value(&text, "lcm_scheduled_jobs"), Some(0.0));
    for (service, status, count) in [
        ("trial_repository", "200", 4.0),
        ("trial_repository", "204", 6.0),
        ("kpi_monitoring", "200", 6.0),
    ] {
        for series in [
            format!(
                r#"lcm_outbound_request_duration_seconds_count{{service="{service}",status="{status}"}}"#
            ),
            format!(
                r#"lcm_outbound_request_duration_seconds_bucket{{service="{service}",status="{status}",le="+Inf"}}"#
            ),
        ] {
            assert_eq!(
                series_value(&text, &series),
                Some(count),
                "{series}: {text}"
            );
        }
    }
    assert_eq!(
        sum_of(&text, "lcm_outbound_request_errors_total", "service="),
        0.0
    );
    // The slice callbacks come from the simulated enforcement: each is taken at its waiting
    // point, or held if it overtakes the end of its step.
    assert_eq!(
        sum_of(&text, "lcm_signals_total", r#"signal="slice callback""#),
        2.0,
        "{text}"
    );
    assert_eq!(
        series_value(
            &text,
            r#"lcm_signals_total{signal="slice callback",outcome="accepted"}"#
        )
        .unwrap_or_default()
            + series_value(
                &text,
                r#"lcm_signals_total{signal="slice callback",outcome="held"}"#
            )
            .unwrap_or_default(),
        2.0
    );
    for signal in ["active", "finish"] {
        let series = format!(r#"lcm_signals_total{{signal="{signal}",outcome="accepted"}}"#);
        assert_eq!(series_value(&text, &series), Some(1.0), "{series}: {text}");
        assert_eq!(
            sum_of(&text, "lcm_signals_total", &format!(r#"signal="{signal}""#)),
            1.0
        );
    }
    assert_eq!(
        series_value(&text, r#"lcm_token_validations_total{outcome="valid"}"#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sum_of(&text, "lcm_token_validations_total", "outcome="),
        2.0
    );
}

#[tokio::test]
async fn what_an_engine_no_longer_live_refuses_is_counted_alike() {
    let app = spawn_binary().await;
    let (failed, finished) = ("counted-failed", "counted-finished");
    app.platform
        .inject(slice_deployment_fault(failed, FaultAction::Status(400)));
    app.start_trial(failed).await;
    app.wait_failed(failed).await;
    app.run_to_finished(finished).await;
    for id in [failed, finished] {
        for action in ["active", "finish", "pause", "resume", "step"] {
            let answer = app.post(&format!("/trial/{id}/{action}"), None).await;
            assert_eq!(
                answer.status,
                StatusCode::CONFLICT,
                "{id} {action}: {answer:?}"
            );
        }
    }
    let answer = app.post(&format!("/trial/{finished}/abort"), None).await;
    assert_eq!(answer.status, StatusCode::CONFLICT, "{answer:?}");
    let text = scrape(&app).await;
    for (action, times) in [
        ("active", 2.0),
        ("finish", 2.0),
        ("pause", 2.0),
        ("resume", 2.0),
        ("step", 2.0),
        ("abort", 1.0),
    ] {
        let series =
            format!(r#"lcm_signals_total{{signal="{action}",outcome="refused_not_live"}}"#);
        assert_eq!(
            series_value(&text, &series),
            Some(times),
            "{series}: {text}"
        );
    }
}

#[tokio::test]
async fn logs_piped_from_stdout_carry_no_colour_codes() {
    let mut app = spawn_binary_with(BinaryOptions {
        env: &[("LCM__LOGGING__FORMAT", "text")],
        stdout: Stdio::piped(),
        ..BinaryOptions::default()
    })
    .await;
    let Server::Process(child) = &mut app.server else {
        unreachable!("the binary runs as a process");
    };
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = tokio::spawn(async move {
        let mut out = Vec::new();
        stdout.read_to_end(&mut out).await.expect("reads stdout");
        out
    });
    assert_eq!(app.get("/status").await.status, StatusCode::OK);
    let (status, _) = terminate(&mut app, Duration::from_secs(20)).await;
    assert!(status.success(), "{status}");
    let out = reader.await.expect("reader");
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("Lifecycle Manager listening"), "{text}");
    assert!(!out.contains(&0x1b), "colour codes in piped logs: {text:?}");
}

/// Reads an SSE stream to its end and returns the JSON of every `data:` line.
async fn read_events(response: reqwest::Response) -> Vec<Value> {
    read_sse(response, |_| false, Duration::from_secs(30))
        .await
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|data| serde_json::from_str(data.trim()).expect("event JSON"))
        .collect()
}

#[tokio::test]
async fn the_event_stream_tells_a_whole_trial_in_order() {
    let app = spawn_app().await;
    let id = "watched";
    app.start_trial(id).await;
    app.wait_engine(id).await;
    let response = app.open_events(id).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap_or_default()
            .starts_with("text/event-stream")
    );
    let (events, ()) = tokio::join!(read_events(response), app.drive_to_finished(id));

    for (i, event) in events.iter().enumerate() {
        assert_eq!(
            event["seq"], i,
            "events arrive once each, in order: {events:?}"
        );
    }
    let started: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "step_started")
        .filter_map(|e| e["step"].as_str())
        .collect();
    let expected: Vec<&str> = happy_path(false).into_iter().map(Step::name).collect();
    assert_eq!(started, expected);
    let completed = events
        .iter()
        .filter(|e| e["event"] == "step_completed")
        .count();
    assert_eq!(completed, expected.len());
    let waits: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "waiting")
        .filter_map(|e| e["detail"].as_str())
        .collect();
    assert_eq!(
        waits,
        [
            "the slice callback (slice created)",
            "the operator (active or finish)",
            "the operator (finish)",
            "the slice callback (slice closed)"
        ]
    );
    assert_eq!(events.last().expect("events")["event"], "trial_finished");

    let history = app.get(&format!("/trial/{id}/history")).await;
    assert_eq!(history.status, StatusCode::OK);
    let history = history.body["history"].as_array().expect("list").clone();
    assert_eq!(history, events, "the history and the stream agree");
    assert!(
        history
            .iter()
            .filter(|e| e["event"] == "step_completed" || e["event"] == "signal_accepted")
            .all(|e| e["duration_ms"].is_u64()),
        "transitions carry durations"
    );
    // Every entry has every field, null where the event has none.
    for entry in &history {
        let mut keys: Vec<&str> = entry
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["at", "detail", "duration_ms", "event", "seq", "step"],
            "{entry}"
        );
    }
    let late = app.open_events(id).await;
    assert_eq!(
        read_events(late).await,
        events,
        "a finished trial's stream replays and ends"
    );
    assert_eq!(
        app.get("/trial/nobody/history").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_request_that_found_no_service_is_counted_as_a_connect_error() {
    // Nothing listens where trial enforcement should be.
    let app = spawn_binary_with(BinaryOptions {
        env: &[(
            "LCM__SERVICES__TRIAL_ENFORCEMENT__URL",
            "http://127.0.0.1:1",
        )],
        ..BinaryOptions::default()
    })
    .await;
    let id = "nowhere";
    app.start_trial(id).await;
    app.wait_failed(id).await;
    let attempts = app.get(&format!("/trial/{id}/responses")).await.body["responses"]
        .as_array()
        .expect("a list")
        .iter()
        .filter(|r| r["step"] == "SliceDeployment" && r["service"] == "trial_enforcement")
        .count();
    assert!(attempts > 0);
    let text = scrape(&app).await;
    let series = |error: &str| {
        series_value(
            &text,
            &format!(
                r#"lcm_outbound_request_errors_total{{service="trial_enforcement",error="{error}"}}"#
            ),
        )
    };
    assert_eq!(series("connect"), Some(attempts as f64), "{text}");
    for other in ["timeout", "transport", "auth"] {
        assert_eq!(series(other), Some(0.0), "{other}: {text}");
    }
}

/// `lcm_engines` counts engines in memory, which ended ones leave: what became of trials is
/// counted by `lcm_trial_outcomes_total`, which stays.
#[tokio::test]
async fn trial_outcomes_are_counted_after_their_engines_leave_memory() {
    let app = spawn_binary_with(BinaryOptions {
        env: &[("LCM__ENGINE__KEEP_FINISHED_SECS", "0")],
        ..BinaryOptions::default()
    })
    .await;
    let (failed, finished, aborted) = ("outcome-failed", "outcome-finished", "outcome-aborted");
    app.platform
        .inject(slice_deployment_fault(failed, FaultAction::Status(400)));
    app.start_trial(failed).await;
    app.wait_failed(failed).await;
    app.run_to_finished(finished).await;
    app.start_to_idle(aborted).await;
    assert_eq!(
        app.ask_abort(aborted, "counted").await.status,
        StatusCode::OK
    );
    for id in [finished, aborted] {
        app.wait_engine_gone(id).await;
    }
    let text = scrape(&app).await;
    for (outcome, times) in [("finished", 1.0), ("aborted", 1.0), ("failed", 1.0)] {
        let series = format!(r#"lcm_trial_outcomes_total{{outcome="{outcome}"}}"#);
        assert_eq!(
            series_value(&text, &series),
            Some(times),
            "{series}: {text}"
        );
    }
    for status in ["Finished", "Aborted"] {
        let series = format!(r#"lcm_engines{{status="{status}"}}"#);
        assert_eq!(series_value(&text, &series), Some(0.0), "{series}: {text}");
    }
}
