//! Many trials at once: 200 engines run side by side and all finish.

use std::time::Duration;

use futures_util::future::join_all;
use lcm::sim::Platform;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

const TRIALS: usize = 200;

/// Polls gently (many trials share the machine) until `done` holds for the trial.
async fn poll(app: &TestApp, id: &str, done: impl Fn(&Value) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        let answer = app.get(&format!("/trial/{id}/status")).await;
        if answer.status == StatusCode::OK && done(&answer.body) {
            return;
        }
        assert_ne!(
            answer.body["failed"], true,
            "{id} failed: {:?}",
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{id} stalled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_trials_at_once_all_finish() {
    let app = spawn_app().await;
    let ids: Vec<String> = (0..TRIALS).map(|i| format!("load-{i:03}")).collect();
    let start = in_ms(4000);
    for id in &ids {
        app.platform.add_trial(Platform::trial(id, None));
    }
    join_all(ids.iter().map(|id| {
        let (app, start) = (&app, &start);
        async move { assert_eq!(app.schedule(id, start).await.status, StatusCode::OK) }
    }))
    .await;
    join_all(ids.iter().map(|id| {
        let app = &app;
        async move {
            poll(app, id, |s| {
                s["waiting_for"]
                    .as_str()
                    .is_some_and(|w| w.contains("active or finish"))
            })
            .await;
            assert_eq!(
                app.post(&format!("/trial/{id}/active"), None).await.status,
                StatusCode::OK
            );
            poll(app, id, |s| {
                s["waiting_for"]
                    .as_str()
                    .is_some_and(|w| w.contains("(finish)"))
            })
            .await;
            assert_eq!(
                app.post(&format!("/trial/{id}/finish"), None).await.status,
                StatusCode::OK
            );
            poll(app, id, |s| s["finished"] == true).await;
        }
    }))
    .await;
    let engines = app.engines().await;
    assert_eq!(engines.len(), TRIALS);
    assert!(engines.iter().all(|(_, status)| status == "Finished"));
    for id in &ids {
        assert_eq!(app.platform.status_history(id), FULL_HISTORY, "{id}");
    }
}
