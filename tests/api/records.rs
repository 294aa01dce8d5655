//! Records that last and stay small (SPEC §12): a database of the previous release is migrated
//! and its trials finish; checkpoints do not grow with the trial; `/trials` lists, filters and
//! pages; ended engines leave memory and read the same from the store; old trials are purged;
//! a corrupt record is set aside without stopping start-up.

use std::sync::atomic::Ordering;

use chrono::{Duration as Span, Utc};
use lcm::domain::{StartTime, TrialId};
use lcm::engine::state::Lifecycle;
use lcm::sim::{Component, Fault, FaultAction, Platform};
use lcm::store::Op;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

/// The checkpoint column of a trial, as the store holds it.
fn stored_checkpoint(app: &TestApp, id: &str) -> String {
    let path = app.logs.path().join("data").join("lcm.sqlite3");
    let conn =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("the store opens");
    conn.query_row(
        "SELECT checkpoint FROM trials WHERE trial_id = ?1",
        [id],
        |row| row.get(0),
    )
    .expect("the trial has a record")
}

async fn listed(app: &TestApp, query: &str) -> Value {
    let answer = app.get(&format!("/trials{query}")).await;
    assert_eq!(answer.status, StatusCode::OK, "{query}: {answer:?}");
    answer.body
}

/// Every trial `GET /trials{query}` lists, page after page, following `next_cursor`.
async fn walked(app: &TestApp, query: &str) -> Vec<String> {
    let mut rows = Vec::new();
    let mut next = query.to_owned();
    loop {
        let page = listed(app, &next).await;
        rows.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(cursor) => next = format!("{query}&cursor={cursor}"),
            None => return rows,
        }
    }
}

fn ids(page: &Value) -> Vec<String> {
    page["trials"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|t| t["trial_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_the_previous_release_is_migrated_and_its_trials_finish() {
    let data = tempfile::tempdir().expect("tempdir");
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/store-v1.sqlite3"
    );
    std::fs::copy(fixture, data.path().join("lcm.sqlite3")).expect("fixture copied");
    let path = data.path().to_path_buf();
    let app = spawn_app_with(AppOptions {
        // The configuration the previous release ran with: its tokens live ten years.
        settings: Box::new(move |s| {
            s.store.data_dir = path;
            s.auth.token_ttl_secs = 315_360_000;
        }),
        // The trials where the previous release left them in the repository.
        platform: Box::new(|platform| {
            for (id, status) in [
                ("v1-mid", "ACTIVATING_1"),
                ("v1-slice", "APPROVED"),
                ("v1-idle", "IDLE"),
                ("v1-active", "ACTIVE"),
                ("v1-failed", "FAILED"),
                ("v1-finished", "FINISHED"),
            ] {
                let mut trial = Platform::trial(id, None);
                trial["status"] = status.into();
                platform.add_trial(trial);
            }
        }),
        ..AppOptions::default()
    })
    .await;

    let engines = app.engines().await;
    for (id, status) in [
        ("v1-mid", "Active"),
        ("v1-slice", "Active"),
        ("v1-idle", "Active"),
        ("v1-active", "Active"),
        ("v1-failed", "Failed"),
    ] {
        assert!(
            engines.iter().any(|(e, s)| e == id && s == status),
            "{id} should be {status}: {engines:?}"
        );
    }
    let finished = app.trial_status("v1-finished").await;
    assert_eq!(finished["engine_status"], "Finished", "{finished}");
    let history = app.get("/trial/v1-finished/history").await.body;
    assert!(history["history"].as_array().expect("list").len() > 10);
    let scheduled = listed(&app, "?status=Scheduled").await;
    assert_eq!(ids(&scheduled), ["v1-future"]);
    let revoked = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/store-v1-revoked-token.txt"
    ))
    .expect("token");
    let verify = app
        .call_as(Method::GET, "/token/v1-idle", None, Some(revoked.trim()))
        .await;
    assert_eq!(verify.status, StatusCode::UNAUTHORIZED, "{verify:?}");

    // Every trial carries on to its end.
    app.wait_waiting("v1-slice", "slice callback (slice created)")
        .await;
    let token = app.post("/token/v1-slice", None).await.body["Authorization"]
        .as_str()
        .expect("token")
        .to_owned();
    assert_eq!(
        app.callback("v1-slice", "slice", Some(&token)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.post("/debug/engine/v1-failed/restore", None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        app.post("/trial/v1-active/finish", None).await.status,
        StatusCode::OK
    );
    for id in ["v1-mid", "v1-slice", "v1-idle", "v1-failed"] {
        app.drive_to_finished(id).await;
    }
    app.wait_finished("v1-active").await;
    assert_eq!(
        app.platform.status_history("v1-mid"),
        ["ACTIVATING_2", "IDLE", "ACTIVE", "STOPPING", "FINISHED"],
        "v1-mid re-ran the step in flight and went on"
    );
}

#[tokio::test]
async fn a_checkpoint_stays_the_same_size_however_long_the_trial_runs() {
    let app = spawn_app_with_settings(single_attempt).await;
    let id = "long-lived";
    // The repository refuses the status of UpdateUavPlanStatus (and the FAILED report after
    // it) ten times over.
    app.platform.inject(
        Fault::new(
            Component::Repository,
            "PUT",
            "/trial/",
            FaultAction::Status(500),
        )
        .after(1)
        .times(20),
    );
    app.start_trial(id).await;
    let mut sizes = Vec::new();
    for round in 0..10 {
        let failed = app.wait_failed(id).await;
        assert_eq!(failed["state"], "UpdateUavPlanStatus", "round {round}");
        sizes.push(stored_checkpoint(&app, id).len());
        let restore = app.post(&format!("/debug/engine/{id}/restore"), None).await;
        assert_eq!(restore.status, StatusCode::OK, "{restore:?}");
    }
    app.drive_to_finished(id).await;
    let history = app.get(&format!("/trial/{id}/history")).await.body;
    assert!(history["history"].as_array().expect("list").len() > 60);
    let (smallest, largest) = (
        sizes.iter().min().copied().unwrap_or_default(),
        sizes.iter().max().copied().unwrap_or_default(),
    );
    // Only the run counter grows a digit.
    assert!(
        largest - smallest <= 2,
        "the checkpoint grew with the trial: {sizes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listing_pages_newest_first_with_every_filter() {
    let app = spawn_app_with_settings(single_attempt).await;
    app.platform
        .inject(flight_plan_fault("list-failed", FaultAction::Status(500)));
    for id in ["list-idle", "list-failed", "list-done"] {
        app.start_trial(id).await;
        app.wait_engine(id).await;
    }
    for id in ["list-later-1", "list-later-2"] {
        let start = (Utc::now() + Span::hours(1)).to_rfc3339();
        assert_eq!(app.schedule(id, &start).await.status, StatusCode::OK);
    }
    app.wait_waiting("list-idle", "operator (active or finish)")
        .await;
    app.wait_failed("list-failed").await;
    app.drive_to_finished("list-done").await;

    let everything = ids(&listed(&app, "?limit=500").await);
    assert_eq!(
        everything,
        [
            "list-later-2",
            "list-later-1",
            "list-done",
            "list-failed",
            "list-idle"
        ],
        "newest first"
    );
    assert_eq!(
        walked(&app, "?limit=2").await,
        everything,
        "the pages hold every trial once"
    );

    for (query, expected) in [
        ("?status=Scheduled", vec!["list-later-2", "list-later-1"]),
        ("?status=Active", vec!["list-idle"]),
        ("?status=Failed,Finished", vec!["list-done", "list-failed"]),
        (
            "?status=Failed&status=Active",
            vec!["list-failed", "list-idle"],
        ),
        ("?q=later-1", vec!["list-later-1"]),
        ("?q=fail&status=Failed", vec!["list-failed"]),
        ("?status=Aborted", vec![]),
    ] {
        assert_eq!(ids(&listed(&app, query).await), expected, "{query}");
    }
    // Jobs newer than the active trial take no room on its page.
    let first = listed(&app, "?status=Active&limit=1").await;
    assert_eq!(ids(&first), ["list-idle"], "{first}");
    let idle = &listed(&app, "?status=Active").await["trials"][0];
    assert_eq!(idle["status"], "Waiting");
    assert_eq!(idle["waiting_for"], "the operator (active or finish)");
    let failed = &listed(&app, "?status=Failed").await["trials"][0];
    assert_failure_says(failed, "EnforceUavPlan failed");
    for bad in [
        "?status=Running",
        "?limit=0",
        "?limit=501",
        "?limit=ten",
        "?q=a%20b",
        "?cursor=not-a-cursor",
        "?page=2",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain(hand_made_cursors().map(|cursor| format!("?cursor={cursor}")))
    {
        let answer = app.get(&format!("/trials{bad}")).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}: {answer:?}");
        assert!(!answer.detail().is_empty());
    }
}

/// Cursors shaped like the service's (a time and a trial id) that it did not give.
fn hand_made_cursors() -> impl Iterator<Item = String> {
    use base64::Engine;
    [
        "x\ny",
        "0\ny",
        "9999-99-99T99:99:99Z\nzz",
        "2026-11-30T15:41:26+00:00\nlist-later-1",
        "2026-11-30 15:41:26\nlist-later-1",
    ]
    .into_iter()
    .map(|text| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text))
}

#[tokio::test]
async fn an_ended_engine_leaves_memory_and_reads_the_same_from_the_store() {
    // Kept long enough that the first reads, however slow, come from memory.
    let app = spawn_app_with_settings(|s| s.engine.keep_finished_secs = 8).await;
    let id = "evicted";
    app.run_to_finished(id).await;
    let read = |what: &'static str| {
        let app = &app;
        async move { app.get(&format!("/trial/{id}/{what}")).await.body }
    };
    let (status, history, responses) = (
        read("status").await,
        read("history").await,
        read("responses").await,
    );
    assert!(
        app.engines().await.iter().any(|(e, _)| e == id),
        "the first reads came from memory"
    );
    app.wait_engine_gone(id).await;
    assert_eq!(read("status").await, status);
    assert_eq!(read("history").await, history);
    assert_eq!(read("responses").await, responses);
    assert_eq!(status["engine_status"], "Finished");
    let listed = listed(&app, "?status=Finished").await;
    assert_eq!(ids(&listed), [id]);
    let again = app.schedule(id, &in_ms(60_000)).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{again:?}");
    assert!(again.detail().contains("has run already"), "{again:?}");
    let forgotten = app.delete(&format!("/debug/engine/{id}")).await;
    assert_eq!(forgotten.status, StatusCode::OK, "{forgotten:?}");
    assert_eq!(
        app.get(&format!("/trial/{id}/status")).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn trials_past_their_retention_are_purged_and_failed_ones_kept() {
    let now = Utc::now();
    let old = now - Span::days(30);
    let data = prepared_store(
        vec![
            Op::PutTrial(Box::new(record("old-finished", Lifecycle::Finished, old))),
            Op::PutTrial(Box::new(record("old-aborted", Lifecycle::Aborted, old))),
            Op::PutTrial(Box::new(record("old-failed", Lifecycle::Failed, old))),
            Op::PutTrial(Box::new(record(
                "recent-finished",
                Lifecycle::Finished,
                now,
            ))),
        ],
        None,
    );
    let path = data.path().to_path_buf();
    // Failure files left by earlier runs: a purged trial's goes with it.
    let logs = tempfile::tempdir().expect("tempdir");
    let file = |id: &str| logs.path().join(format!("executor_{id}_fail.log"));
    for id in ["old-finished", "old-failed", "recent-finished"] {
        std::fs::write(file(id), "{}").expect("a failure file");
    }
    // And what a kill left of a new version of one, written beside it before a rename.
    let leftover = |id: &str| logs.path().join(format!(".executor_{id}_fail.log.tmp"));
    for id in ["old-aborted", "recent-finished"] {
        std::fs::write(leftover(id), "{").expect("a leftover");
    }
    let logs_dir = logs.path().to_path_buf();
    let app = spawn_app_with_settings(move |s| {
        s.store.data_dir = path;
        s.store.retention_days = 7;
        s.logging.dir = logs_dir;
    })
    .await;
    eventually("the purge of old trials", || async {
        let left = ids(&listed(&app, "").await);
        match left == ["recent-finished", "old-failed"] {
            true => Ok(()),
            false => Err(format!("{left:?}")),
        }
    })
    .await;
    assert_eq!(
        app.get("/trial/old-finished/history").await.status,
        StatusCode::NOT_FOUND
    );
    eventually("the purged trials' failure files removed", || async {
        match (
            file("old-finished").exists(),
            leftover("old-aborted").exists(),
        ) {
            (false, false) => Ok(()),
            there => Err(format!("still there (file, leftover): {there:?}")),
        }
    })
    .await;
    assert!(file("old-failed").exists() && file("recent-finished").exists());
    assert!(
        leftover("recent-finished").exists(),
        "a kept trial's is kept"
    );
}

/// The service on a store of `trials` (id and lifecycle, made now), damaged by `damage`;
/// with the store's directory, kept while the service runs.
async fn on_damaged_store(
    trials: &[(&str, Lifecycle)],
    damage: &str,
) -> (TestApp, tempfile::TempDir) {
    let now = Utc::now();
    let ops = trials
        .iter()
        .map(|(id, lifecycle)| Op::PutTrial(Box::new(record(id, *lifecycle, now))))
        .collect();
    let data = prepared_store(ops, Some(damage));
    let path = data.path().to_path_buf();
    let app = spawn_app_with_settings(move |s| s.store.data_dir = path).await;
    (app, data)
}

#[tokio::test]
async fn the_status_filter_finds_an_ended_row_by_its_status_also_when_a_column_lists_it_corrupt() {
    let (app, _data) = on_damaged_store(
        &[
            ("ended-damaged", Lifecycle::Finished),
            ("ended-fine", Lifecycle::Finished),
        ],
        "UPDATE trials SET ended_at = CAST(ended_at AS BLOB) WHERE trial_id = 'ended-damaged'",
    )
    .await;
    let all = listed(&app, "").await;
    let damaged = all["trials"]
        .as_array()
        .and_then(|rows| rows.iter().find(|t| t["trial_id"] == "ended-damaged"))
        .cloned()
        .expect("listed");
    assert_eq!(damaged["engine_status"], "Corrupt", "{damaged}");
    assert!(
        damaged["failure"]
            .as_str()
            .is_some_and(|f| f.contains("ended_at")),
        "{damaged}"
    );
    // Found by the status the row holds, and listed as it is.
    let mut finished = ids(&listed(&app, "?status=Finished").await);
    finished.sort_unstable();
    assert_eq!(finished, ["ended-damaged", "ended-fine"]);
    assert!(ids(&listed(&app, "?status=Corrupt").await).is_empty());
}

#[tokio::test]
async fn a_walk_through_the_listing_pages_past_rows_whose_created_at_is_binary_data() {
    let (app, _data) = on_damaged_store(
        &[
            ("walk-live", Lifecycle::Waiting),
            ("walk-blob", Lifecycle::Waiting),
            ("walk-ended-blob", Lifecycle::Finished),
            ("walk-ended", Lifecycle::Finished),
        ],
        "UPDATE trials SET created_at = X'00' WHERE trial_id IN ('walk-blob', 'walk-ended-blob');
         INSERT INTO jobs (trial_id, start_time, created_at)
             VALUES ('walk-job', '2099-01-01T00:00:00Z', X'0001');",
    )
    .await;
    let mut whole = ids(&listed(&app, "?limit=500").await);
    whole.sort_unstable();
    assert_eq!(
        whole,
        [
            "walk-blob",
            "walk-ended",
            "walk-ended-blob",
            "walk-job",
            "walk-live"
        ]
    );
    for limit in 1..=3 {
        let mut walk = walked(&app, &format!("?limit={limit}")).await;
        walk.sort_unstable();
        assert_eq!(walk, whole, "limit {limit}: each once");
    }
}

#[tokio::test]
async fn corrupt_records_and_jobs_are_set_aside_and_start_up_goes_on() {
    let now = Utc::now();
    let data = prepared_store(
        vec![
            Op::PutTrial(Box::new(record("garbled", Lifecycle::Running, now))),
            Op::PutTrial(Box::new(record("deployed", Lifecycle::Waiting, now))),
            Op::PutTrial(Box::new(record(
                "healthy",
                Lifecycle::Running,
                now + Span::seconds(1),
            ))),
            Op::PutJob {
                id: TrialId::parse("garbled-job").expect("an id"),
                start: StartTime::parse(&(now + Span::hours(1)).to_rfc3339()).expect("a time"),
                created_at: now,
            },
        ],
        Some(
            "UPDATE trials SET checkpoint = 'not json' WHERE trial_id = 'garbled';
             UPDATE jobs SET start_time = 'garbage' WHERE trial_id = 'garbled-job';
             UPDATE trials SET checkpoint = json_set(checkpoint,
                 '$.position', json('{\"wait\": \"NoSuchWait\"}'),
                 '$.ledger', json('{\"slice\": \"created\", \"measurement_job\": {\"created\": \"mj-x\"}}'),
                 '$.info', json('{\"DeployedSlice\": {\"Slice\": {\"id\": \"slice-x\"}}}'))
                 WHERE trial_id = 'deployed';",
        ),
    );
    let path = data.path().to_path_buf();
    let app = spawn_app_with(AppOptions {
        settings: Box::new(move |s| s.store.data_dir = path),
        platform: Box::new(|platform| platform.add_trial(Platform::trial("healthy", None))),
        ..AppOptions::default()
    })
    .await;
    let engines = app.engines().await;
    assert!(engines.iter().any(|(e, _)| e == "healthy"), "{engines:?}");
    assert!(!engines.iter().any(|(e, _)| e == "garbled"), "{engines:?}");
    let corrupt = listed(&app, "?status=Corrupt").await;
    assert_eq!(ids(&corrupt), ["garbled-job", "garbled", "deployed"]);
    // What a live trial set aside had deployed is named, as far as its record can be read.
    let failure = corrupt["trials"][2]["failure"].as_str().unwrap_or_default();
    assert!(
        failure.contains("slice slice-x (created), measurement job mj-x"),
        "{failure}"
    );
    for (i, why) in [
        (0, "unreadable scheduled job"),
        (1, "unreadable checkpoint"),
    ] {
        assert!(
            corrupt["trials"][i]["failure"]
                .as_str()
                .is_some_and(|f| f.contains(why)),
            "{corrupt}"
        );
    }
    assert_eq!(
        corrupt["trials"][0]["created_at"],
        lcm::store::codec::time(now),
        "a job set aside keeps when it was scheduled, and its place in the listing"
    );
    let status = app.trial_status("garbled-job").await;
    assert_eq!(status["engine_status"], "Corrupt", "{status}");
    let again = app.schedule("garbled-job", &in_ms(3_600_000)).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{again:?}");
    assert!(again.detail().contains("set aside as Corrupt"), "{again:?}");
    assert!(
        app.get("/status").await.body["scheduled_trials"]
            .as_array()
            .is_some_and(Vec::is_empty)
    );
    let forgotten = app.delete("/debug/engine/garbled-job").await;
    assert_eq!(forgotten.status, StatusCode::OK, "{forgotten:?}");
    assert_eq!(
        app.get("/trial/garbled-job/status").await.status,
        StatusCode::NOT_FOUND
    );
    let status = app.trial_status("garbled").await;
    assert_eq!(status["engine_status"], "Corrupt", "{status}");
    // Nothing acts on it; the refusal says why.
    let refused = app.post("/trial/garbled/pause", None).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{refused:?}");
    assert!(
        refused
            .detail()
            .contains("has a record that cannot be read"),
        "{refused:?}"
    );
    // Nor is its record forgotten by a plain delete: it may have left a slice and a job.
    let says_why = |refused: &Answer, id: &str| {
        assert!(
            refused.detail().contains("its record cannot be read")
                && refused
                    .detail()
                    .contains(&format!("GET /trial/{id}/responses")),
            "{refused:?}"
        );
    };
    let kept = app.delete("/debug/engine/deployed").await;
    assert_detail(&kept, StatusCode::CONFLICT);
    says_why(&kept, "deployed");
    assert_eq!(
        app.trial_status("deployed").await["engine_status"],
        "Corrupt"
    );
    let (refused, message) = app.delete_refused_then_forced("garbled").await;
    says_why(&refused, "garbled");
    assert!(
        message.contains(
            "left deployed: slice unknown: its record cannot be read, measurement_job unknown: its record cannot be read"
        ),
        "{message}"
    );
    assert_eq!(
        app.get("/trial/garbled/status").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn the_listing_pages_on_past_a_row_whose_creation_is_not_a_time() {
    let now = Utc::now();
    let data = prepared_store(
        vec![
            Op::PutTrial(Box::new(record("first", Lifecycle::Finished, now))),
            Op::PutTrial(Box::new(record(
                "damaged",
                Lifecycle::Finished,
                now + Span::seconds(1),
            ))),
            Op::PutTrial(Box::new(record(
                "last",
                Lifecycle::Finished,
                now + Span::seconds(2),
            ))),
        ],
        // By hand: an ended trial's row is not read at start-up, it is only listed.
        Some("UPDATE trials SET created_at = 'garbage' WHERE trial_id = 'damaged'"),
    );
    let path = data.path().to_path_buf();
    let app = spawn_app_with_settings(move |s| s.store.data_dir = path).await;
    let everything = ["damaged", "last", "first"];
    assert_eq!(ids(&listed(&app, "?limit=500").await), everything);
    assert_eq!(walked(&app, "?limit=1").await, everything, "page by page");
}

#[tokio::test]
async fn a_job_whose_start_passed_beyond_the_grace_while_down_is_reported_not_run() {
    let data = prepared_store(vec![job_an_hour_ago("missed")], None);
    let path = data.path().to_path_buf();
    let app = spawn_app_with(AppOptions {
        settings: Box::new(move |s| s.store.data_dir = path),
        platform: Box::new(|platform| platform.add_trial(Platform::trial("missed", None))),
        ..AppOptions::default()
    })
    .await;
    let status = app.get("/status").await.body;
    let missed = status["missed_trials"].as_array().expect("a list");
    assert_eq!(missed.len(), 1, "{status}");
    assert_eq!(missed[0]["id"], "missed", "{status}");
    assert!(
        status["scheduled_trials"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "{status}"
    );
    assert!(app.engines().await.is_empty(), "{status}");
    assert!(app.platform.requests_for("missed").is_empty());
    let asked = app.get("/trial/missed/status").await;
    assert_eq!(asked.status, StatusCode::NOT_FOUND, "{asked:?}");
    assert!(
        asked.detail().contains("missed") && asked.detail().contains("schedule it again"),
        "{asked:?}"
    );
    // The operator can schedule it again, and then it is no longer missed.
    app.schedule_in("missed", 3_600_000).await;
    // (`lcm_missed_jobs` is the length of this list when scraped.)
    let status = app.get("/status").await.body;
    assert_eq!(status["missed_trials"], Value::Array(vec![]), "{status}");
}

#[tokio::test]
async fn a_missed_job_stays_listed_across_restarts_until_it_is_scheduled_again_or_removed() {
    let (kept, removed) = ("missed-kept", "missed-removed");
    let data = prepared_store(vec![job_an_hour_ago(kept), job_an_hour_ago(removed)], None);
    let dir = data.path().to_str().expect("a UTF-8 path").to_owned();
    let env = [("LCM__STORE__DATA_DIR", dir.as_str())];
    let mut app = spawn_binary_with(BinaryOptions {
        env: &env,
        ..BinaryOptions::default()
    })
    .await;
    async fn restart(app: &mut TestApp, env: &[(&str, &str)]) {
        let (status, _) = terminate(app, std::time::Duration::from_secs(30)).await;
        assert!(status.success(), "stopped cleanly: {status}");
        app.restart_binary_with(env).await;
    }
    for restarted in [false, true] {
        if restarted {
            restart(&mut app, &env).await;
        }
        let page = listed(&app, "?status=Missed").await;
        assert_eq!(ids(&page), [removed, kept], "{page}");
        assert_eq!(page["trials"][0]["engine_status"], "Missed", "{page}");
        assert!(ids(&listed(&app, "?status=Scheduled").await).is_empty());
        let status = app.get("/status").await.body;
        assert_eq!(
            status["missed_trials"].as_array().map(Vec::len),
            Some(2),
            "{status}"
        );
    }
    let answer = app
        .delete(&format!("/debug/trial/{removed}/schedule"))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let answer = app
        .delete(&format!("/debug/trial/{removed}/schedule"))
        .await;
    assert_detail(&answer, StatusCode::NOT_FOUND);
    app.schedule_in(kept, 3_600_000).await;
    restart(&mut app, &env).await;
    assert!(ids(&listed(&app, "?status=Missed").await).is_empty());
    assert_eq!(ids(&listed(&app, "").await), [kept]);
    let status = app.get("/status").await.body;
    assert_eq!(status["missed_trials"], Value::Array(vec![]), "{status}");
}

#[tokio::test]
async fn reads_the_store_cannot_answer_are_503_and_answer_again_once_it_does() {
    let id = "unread";
    let (app, reads) = spawn_app_with_an_ended_trial_on_busy_reads(id).await;
    let paths = [
        format!("/trial/{id}/status"),
        format!("/trial/{id}/history"),
        format!("/trial/{id}/responses"),
        "/trials".to_owned(),
        "/audit".to_owned(),
    ];
    reads.on.store(true, Ordering::SeqCst);
    for path in &paths {
        let answer = app.get(path).await;
        assert_eq!(
            answer.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{path}: {answer:?}"
        );
        assert!(
            answer.detail().contains("store could not be read"),
            "{path}: {answer:?}"
        );
    }
    reads.on.store(false, Ordering::SeqCst);
    for path in &paths {
        let answer = app.get(path).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {answer:?}");
    }
}

#[tokio::test]
async fn an_action_on_a_trial_without_a_live_engine_says_why_it_is_refused() {
    // In memory, finished (kept there for the default five minutes): it takes no signal.
    let kept = spawn_app().await;
    let id = "ended";
    kept.run_to_finished(id).await;
    let refused = kept.post(&format!("/trial/{id}/active"), None).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{refused:?}");
    assert!(
        refused
            .detail()
            .contains("does not take signals: its engine is Finished"),
        "{refused:?}"
    );
    // Gone from memory (in a service that keeps it a second): read from the store, and still
    // refused for what it is.
    let (app, _) = spawn_app_with_an_ended_trial_on_busy_reads(id).await;
    for action in ["active", "pause"] {
        let refused = app.post(&format!("/trial/{id}/{action}"), None).await;
        assert_eq!(refused.status, StatusCode::CONFLICT, "{refused:?}");
        assert!(
            refused.detail().contains("has ended (Finished)"),
            "{refused:?}"
        );
    }
    // Scheduled, not started: no engine yet, and when it will have one.
    let later = "later";
    app.platform.add_trial(Platform::trial(later, None));
    app.schedule_in(later, 3_600_000).await;
    let early = app.post(&format!("/trial/{later}/active"), None).await;
    assert_eq!(early.status, StatusCode::NOT_FOUND, "{early:?}");
    assert!(
        early
            .detail()
            .contains("has no engine yet: it is scheduled to start at"),
        "{early:?}"
    );
}

#[tokio::test]
async fn concurrent_removals_remove_an_engine_or_a_job_exactly_once() {
    let app = spawn_app().await;
    let (engine, job) = ("deleted-once", "unscheduled-once");
    app.start_to_idle(engine).await;
    app.schedule_in(job, 3_600_000).await;
    for path in [
        format!("/debug/engine/{engine}?force=true"),
        format!("/debug/trial/{job}/schedule"),
    ] {
        let answers = futures_util::future::join_all((0..10).map(|_| app.delete(&path))).await;
        let ok = answers
            .iter()
            .filter(|a| a.status == StatusCode::OK)
            .count();
        let gone = answers
            .iter()
            .filter(|a| a.status == StatusCode::NOT_FOUND)
            .count();
        assert_eq!((ok, gone), (1, 9), "{path}: {answers:?}");
    }
    let audit = app.get(&format!("/audit?trial_id={job}")).await.body;
    let removed = audit["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["outcome"] == 200 && e["action"] == "DELETE /debug/trial/{trial_id}/schedule")
        .count();
    assert_eq!(removed, 1, "{audit}");
}

#[tokio::test]
async fn a_trial_keeps_its_place_in_the_listing_when_its_job_starts() {
    let app = spawn_app().await;
    let (starting, later) = ("starts-soon", "starts-later");
    app.platform.add_trial(Platform::trial(starting, None));
    app.schedule_in(starting, 2_000).await;
    app.schedule_in(later, 3_600_000).await;
    let first = listed(&app, "?limit=1").await;
    assert_eq!(ids(&first), [later]);
    let cursor = first["next_cursor"].as_str().expect("a cursor").to_owned();
    let scheduled = listed(&app, &format!("?q={starting}")).await["trials"][0].clone();
    assert_eq!(scheduled["engine_status"], "Scheduled", "{scheduled}");

    app.wait_waiting(starting, "operator (active or finish)")
        .await;
    // The page after the cursor still holds it: it was scheduled before `later`.
    let next = listed(&app, &format!("?limit=1&cursor={cursor}")).await;
    assert_eq!(ids(&next), [starting], "{next}");
    assert_eq!(next["trials"][0]["engine_status"], "Active", "{next}");
    assert_eq!(next["trials"][0]["created_at"], scheduled["created_at"]);
    let status = app.trial_status(starting).await;
    assert_eq!(status["created_at"], scheduled["created_at"], "{status}");
}

#[tokio::test]
async fn the_listing_and_the_status_write_a_trial_s_times_alike() {
    use chrono::Timelike;
    // A time on a whole millisecond: the store writes it with six digits of the second.
    let at = (Utc::now() - Span::hours(1))
        .with_nanosecond(123_000_000)
        .expect("a time");
    let data = prepared_store(
        vec![Op::PutTrial(Box::new(record(
            "ended",
            Lifecycle::Finished,
            at,
        )))],
        None,
    );
    let path = data.path().to_path_buf();
    let app = spawn_app_with_settings(move |s| s.store.data_dir = path).await;
    let row = listed(&app, "").await["trials"][0].clone();
    let status = app.trial_status("ended").await;
    for field in ["created_at", "updated_at", "ended_at"] {
        assert_eq!(row[field], status[field], "{field}: {row} / {status}");
    }
    assert!(
        row["ended_at"]
            .as_str()
            .is_some_and(|t| t.ends_with(".123Z")),
        "{row}"
    );
}

#[tokio::test]
async fn the_listing_says_which_trials_are_paused_or_being_aborted() {
    let app = spawn_app().await;
    let (paused, aborting, plain) = ("held-paused", "held-aborting", "held-plain");
    // The slice is closed, but trial enforcement never says so: the clean-up waits.
    app.slice_closes_without_callback(aborting);
    for id in [paused, aborting, plain] {
        app.start_to_idle(id).await;
    }
    let pause = app.post(&format!("/trial/{paused}/pause"), None).await;
    assert_eq!(pause.status, StatusCode::OK, "{pause:?}");
    let abort = app.post(&format!("/trial/{aborting}/abort"), None).await;
    assert_eq!(abort.status, StatusCode::OK, "{abort:?}");
    app.wait_for(
        aborting,
        "the clean-up's wait for the slice to close",
        |s| {
            s["waiting_for"]
                .as_str()
                .is_some_and(|w| w.contains("slice closed"))
        },
    )
    .await;

    let page = listed(&app, "?q=held-").await;
    let marks = |id: &str| {
        let row = page["trials"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["trial_id"] == id))
            .unwrap_or_else(|| panic!("{id} listed: {page}"));
        (row["paused"].clone(), row["aborting"].clone())
    };
    assert_eq!(marks(paused), (json!(true), json!(false)));
    assert_eq!(marks(aborting), (json!(false), json!(true)));
    assert_eq!(marks(plain), (json!(false), json!(false)));
}
