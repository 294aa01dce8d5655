//! Many trials at once: 200 engines run side by side and all finish.

use std::time::Duration;

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

const TRIALS: usize = 200;

/// Polls gently (many trials share the machine) until `done` holds for the trial.
async fn poll(app: &TestApp, id: &str, done: impl Fn(&Value) -> bool) {
    let path = format!("/trial/{id}/status");
    eventually_within(
        &format!("{id} moving on"),
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            let answer = app.get(&path).await;
            assert_ne!(
                answer.body["failed"], true,
                "{id} failed: {:?}",
                answer.body
            );
            match answer.status == StatusCode::OK && done(&answer.body) {
                true => Ok(()),
                false => Err(answer.body.to_string()),
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_trials_at_once_all_finish() {
    let app = spawn_app().await;
    let ids: Vec<String> = (0..TRIALS).map(|i| format!("load-{i:03}")).collect();
    join_all(ids.iter().map(|id| app.start_trial(id))).await;
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
