//! Seeing inside: metrics move when a trial runs; history and the live event stream tell a
//! whole trial in order.

use std::time::Duration;

use lcm::engine::sequence::{Step, happy_path};
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

/// The value of a metric line starting with `series` (name and labels), or 0.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn metrics_change_when_a_trial_runs() {
    let app = spawn_app().await;
    let scrape = || async {
        let response = app
            .client
            .get(format!("{}/metrics", app.address))
            .send()
            .await
            .expect("metrics");
        assert_eq!(response.status(), StatusCode::OK);
        response.text().await.expect("text")
    };
    let steps = r#"lcm_steps_total{step="CloseService",outcome="completed"}"#;
    let before = metric(&scrape().await, steps);

    let id = "metered";
    app.start_trial(id).await;
    app.drive_to_finished(id).await;

    let text = scrape().await;
    assert!(metric(&text, steps) >= before + 1.0, "{text}");
    assert!(
        metric(&text, r#"lcm_engines{status="Finished"}"#) >= 1.0,
        "{text}"
    );
    assert!(text.contains("lcm_scheduled_jobs"), "{text}");
    assert!(
        metric(
            &text,
            r#"lcm_outbound_request_duration_seconds_count{service="trial_repository",status="204"}"#
        ) >= 6.0,
        "{text}"
    );
    assert!(
        metric(&text, r#"lcm_token_validations_total{outcome="valid"}"#) >= 2.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            r#"lcm_signals_total{signal="slice callback",outcome="accepted"}"#
        ) >= 2.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            r#"lcm_signals_total{signal="active",outcome="accepted"}"#
        ) >= 1.0
    );
}

/// Reads an SSE stream to its end and returns the JSON of every `data:` line.
async fn read_events(mut response: reqwest::Response) -> Vec<Value> {
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let chunk = tokio::time::timeout_at(deadline, response.chunk())
            .await
            .expect("the stream ends when the trial finishes")
            .expect("stream reads");
        match chunk {
            Some(bytes) => text.push_str(&String::from_utf8_lossy(&bytes)),
            None => break,
        }
    }
    text.lines()
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
