//! Trials survive a crash: the real binary is killed with SIGKILL while trials stand at
//! different points, started again on the same store, and every trial completes.

use std::time::Duration;

use lcm::sim::{Component, Fault, FaultAction, Gate, Platform};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

async fn status_of(app: &TestApp, id: &str) -> Value {
    app.get(&format!("/trial/{id}/status")).await.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trials_survive_a_sigkill_and_complete_after_restart() {
    let (mid, slice, idle, active, failed, future, late) = (
        "crash-mid",
        "crash-slice",
        "crash-idle",
        "crash-active",
        "crash-failed",
        "crash-future",
        "crash-late",
    );
    let (cleanup, paused) = ("crash-cleanup", "crash-paused");
    let mut app = spawn_binary_with(BinaryOptions {
        platform: Box::new(move |platform| {
            for id in [
                mid, slice, idle, active, failed, future, late, cleanup, paused,
            ] {
                platform.add_trial(Platform::trial(id, None));
            }
            // One fault each, for one trial, once.
            for (trial, path, action) in [
                (
                    mid,
                    "/flightplan",
                    FaultAction::Delay(Duration::from_secs(60)),
                ),
                (slice, "/sliceDeployment", FaultAction::DropCallback),
                (failed, "/sliceDeployment", FaultAction::Status(500)),
            ] {
                platform.inject(
                    Fault::new(Component::Enforcement, "POST", path, action)
                        .for_trial(trial)
                        .times(1),
                );
            }
            platform.inject(
                Fault::new(
                    Component::Enforcement,
                    "DELETE",
                    "/measurementjobs/",
                    FaultAction::Delay(Duration::from_secs(60)),
                )
                .for_trial(cleanup)
                .times(1),
            );
        }),
        ..BinaryOptions::default()
    })
    .await;

    for id in [mid, slice, idle, active, failed, cleanup, paused] {
        app.schedule_in(id, 300).await;
    }
    // Due in an hour: however slow the steps up to the restart, it is still a job there.
    assert_eq!(
        app.schedule(future, &in_ms(3_600_000)).await.status,
        StatusCode::OK
    );

    app.wait_for(mid, "EnforceUavPlan in flight", |s| {
        s["state"] == "EnforceUavPlan"
    })
    .await;
    app.wait_waiting(slice, "slice callback (slice created)")
        .await;
    app.wait_waiting(idle, "operator (active or finish)").await;
    app.wait_waiting(active, "operator (active or finish)")
        .await;
    assert_eq!(
        app.post(&format!("/trial/{active}/active"), None)
            .await
            .status,
        StatusCode::OK
    );
    app.wait_waiting(active, "operator (finish)").await;
    app.wait_failed(failed).await;
    // An abort whose clean-up is in flight, and a paused trial.
    app.wait_waiting(cleanup, "operator (active or finish)")
        .await;
    assert_eq!(
        app.post(&format!("/trial/{cleanup}/abort"), None)
            .await
            .status,
        StatusCode::OK
    );
    app.wait_for(
        cleanup,
        "DeleteMeasurementJob of the clean-up in flight",
        |s| s["step"] == "DeleteMeasurementJob",
    )
    .await;
    app.wait_waiting(paused, "operator (active or finish)")
        .await;
    assert_eq!(
        app.post(&format!("/trial/{paused}/pause"), None)
            .await
            .status,
        StatusCode::OK
    );

    let spare = app.post(&format!("/token/{idle}"), None).await.body["Authorization"]
        .as_str()
        .expect("token")
        .to_owned();
    let revoked = app
        .call_as(
            Method::DELETE,
            &format!("/token/{idle}"),
            None,
            Some(&spare),
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK);

    // A job whose start passes while the service is down, within the misfire grace: due
    // far enough ahead that a slow test still kills the service before it fires.
    let late_start = app.schedule_in(late, 5_000).await;
    let flightplans_before = lines(&app, mid)
        .iter()
        .filter(|l| *l == "POST /flightplan")
        .count();
    assert_eq!(flightplans_before, 1);

    if let Server::Process(child) = &mut app.server {
        child.kill().await.expect("SIGKILL");
    }
    // The late job's start passes while the service is down.
    eventually("the late job's start time to pass", || async {
        match chrono::Utc::now() > late_start {
            true => Ok(()),
            false => Err(format!("before {late_start}")),
        }
    })
    .await;
    app.restart_binary().await;

    // Every trial is back where it was.
    let engines = app.engines().await;
    for (id, status) in [
        (mid, "Active"),
        (slice, "Active"),
        (idle, "Active"),
        (active, "Active"),
        (failed, "Failed"),
        (late, "Active"),
        (paused, "Active"),
    ] {
        assert!(
            engines.iter().any(|(e, s)| e == id && s == status),
            "{id} should be {status}: {engines:?}"
        );
    }
    let status = app.get("/status").await.body;
    let scheduled: Vec<&str> = status["scheduled_trials"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|j| j["id"].as_str())
        .collect();
    assert_eq!(scheduled, [future]);
    // The future trial is run now rather than in an hour: its job is taken off and set again
    // soon.
    let unscheduled = app.delete(&format!("/debug/trial/{future}/schedule")).await;
    assert_eq!(unscheduled.status, StatusCode::OK, "{unscheduled:?}");
    app.schedule_in(future, 300).await;

    // The revoked token stays refused.
    let verify = app
        .call_as(Method::GET, &format!("/token/{idle}"), None, Some(&spare))
        .await;
    assert_eq!(verify.status, StatusCode::UNAUTHORIZED);

    // The waiting trial takes its callback; the others carry on.
    app.wait_waiting(slice, "slice callback (slice created)")
        .await;
    let token = app.token_of(slice);
    assert_eq!(
        app.callback(slice, "slice", Some(&token)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        status_of(&app, active).await["waiting_for"],
        "the operator (finish)"
    );
    assert_eq!(
        app.post(&format!("/trial/{active}/finish"), None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        app.post(&format!("/debug/engine/{failed}/restore"), None)
            .await
            .status,
        StatusCode::OK
    );
    // The clean-up picks up where it was: the job is deleted (a 404 would do), the slice
    // closed, the repository told.
    app.wait_for(cleanup, "Aborted", |s| s["engine_status"] == "Aborted")
        .await;
    assert_eq!(
        app.platform.status_history(cleanup),
        ["ACTIVATING_1", "ACTIVATING_2", "IDLE", "ABORTED"]
    );
    assert!(
        lines(&app, cleanup)
            .iter()
            .any(|l| l.starts_with("DELETE /sliceDeployment/")),
        "the slice was closed"
    );
    assert_eq!(app.trial_status(paused).await["paused"], true);
    assert_eq!(
        app.post(&format!("/trial/{paused}/resume"), None)
            .await
            .status,
        StatusCode::OK
    );
    for id in [mid, slice, idle, failed, late, future, paused] {
        app.drive_to_finished(id).await;
    }
    app.wait_finished(active).await;

    for id in [slice, idle, late, future] {
        assert_eq!(lines(&app, id), full_sequence(id, true), "{id}");
    }
    assert_eq!(lines(&app, active), full_sequence(active, true));
    // The step in flight at the crash ran again (its GET and POST), and nothing else did.
    let mut expected_mid = full_sequence(mid, true);
    expected_mid.splice(
        6..6,
        [format!("GET /trial/{mid}/"), "POST /flightplan".to_owned()],
    );
    assert_eq!(lines(&app, mid), expected_mid);
    assert_eq!(
        app.platform
            .status_history(failed)
            .last()
            .map(String::as_str),
        Some("FINISHED")
    );
}

/// Reads a page of the audit as an admin: it flushes the rows waiting, and commits nothing else.
async fn read_the_audit(app: &TestApp) {
    app.call_as(
        Method::GET,
        "/audit?limit=1",
        None,
        Some(key_of(lcm::config::Role::Admin)),
    )
    .await;
}

#[tokio::test]
async fn a_store_that_stops_writing_holds_its_trials_and_refuses_changes_until_it_writes_again() {
    use std::sync::atomic::Ordering;

    let (app, broken) = spawn_app_with_flaky_store(AppOptions::default()).await;
    let id = "unsaved";
    app.start_trial(id).await;
    app.wait_waiting(id, "operator (active or finish)").await;

    broken.store(true, Ordering::SeqCst);
    let refused = app.schedule("later", &in_ms(3_600_000)).await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{refused:?}"
    );
    assert!(refused.detail().contains("not saved"), "{refused:?}");
    let status = app.get("/status").await.body;
    assert_eq!(
        status["scheduled_trials"],
        serde_json::json!([]),
        "nothing unsaved is promised"
    );
    // `/status` says the store does not write, since when and why.
    assert_eq!(status["store"]["writable"], false, "{status}");
    let since = status["store"]["failing"]["since"].clone();
    assert!(since.is_string(), "{status}");
    assert!(
        status["store"]["failing"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{status}"
    );

    // The signal is not taken: its checkpoint could not be saved. The trial is not failed
    // for it: it waits where it was, and nothing is reported anywhere.
    let sent_before = lines(&app, id);
    for _ in 0..3 {
        let refused = app.post(&format!("/trial/{id}/active"), None).await;
        assert_eq!(
            refused.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{refused:?}"
        );
        assert!(refused.detail().contains("not taken"), "{refused:?}");
    }
    let waiting = app.trial_status(id).await;
    assert_eq!(waiting["status"], "Waiting", "{waiting}");
    assert_eq!(lines(&app, id), sent_before, "no request while not saved");
    // Reading the audit commits nothing (a flush with no row): it does not clear the alert.
    read_the_audit(&app).await;
    let status = app.get("/status").await.body;
    assert_eq!(
        status["store"]["failing"]["since"], since,
        "the first failure's time"
    );

    // Once the store writes again, the same signal is taken and the trial ends on its own.
    broken.store(false, Ordering::SeqCst);
    app.drive_to_finished(id).await;
    assert_never_reported_failed(&app, id);
    let status = app.get("/status").await.body;
    assert_eq!(
        status["store"],
        serde_json::json!({"writable": true, "failing": null}),
        "{status}"
    );
}

/// A database file moved away under an idle service is seen without waiting for a change:
/// `/status` says the store does not write, and reading the audit (which commits nothing)
/// does not say otherwise. Once the file is back, the next change is made and clears it.
#[tokio::test]
async fn a_database_file_moved_away_is_seen_while_idle_until_a_change_is_written_again() {
    let app = spawn_app().await;
    let data = app.logs.path().join("data");
    let (file, aside) = (data.join("lcm.sqlite3"), data.join("aside.sqlite3"));
    std::fs::rename(&file, &aside).expect("moved away");
    let failing = eventually("the store seen not writing", || async {
        let status = app.get("/status").await.body;
        match status["store"]["writable"] == false {
            true => Ok(status["store"]["failing"].clone()),
            false => Err(status.to_string()),
        }
    })
    .await;
    assert!(
        failing["error"]
            .as_str()
            .is_some_and(|e| e.contains("removed or replaced")),
        "{failing}"
    );
    // Its answer does not matter here (the reader may not find the file either).
    read_the_audit(&app).await;
    let status = app.get("/status").await.body;
    assert_eq!(
        status["store"]["failing"]["since"], failing["since"],
        "{status}"
    );
    std::fs::rename(&aside, &file).expect("moved back");
    let made = app.schedule("after", &in_ms(3_600_000)).await;
    assert_eq!(made.status, StatusCode::OK, "{made:?}");
    let status = app.get("/status").await.body;
    assert_eq!(status["store"]["writable"], true, "{status}");
}

#[tokio::test]
async fn a_job_that_fires_while_the_store_refuses_sends_nothing_until_its_first_record_is_saved() {
    use lcm::engine::state::Lifecycle;

    let (app, refused) =
        spawn_app_refusing_saves(|lifecycle| lifecycle == Lifecycle::Running, |_| {}).await;
    let id = "first-unsaved";
    refused.refuse(true);
    app.start_trial(id).await;
    refused.wait_refused("the first record", 1).await;
    assert!(
        app.platform.requests_for(id).is_empty(),
        "nothing is sent before the first record is saved"
    );
    // An abort meanwhile is told at once that it cannot be saved now, and changes nothing.
    let abort = app.post(&format!("/trial/{id}/abort"), None).await;
    assert_eq!(abort.status, StatusCode::SERVICE_UNAVAILABLE, "{abort:?}");
    assert!(abort.detail().contains("not saved"), "{abort:?}");
    let restore = app.post(&format!("/debug/engine/{id}/restore"), None).await;
    assert_eq!(restore.status, StatusCode::CONFLICT, "{restore:?}");
    let pause = app.post(&format!("/trial/{id}/pause"), None).await;
    assert_eq!(pause.status, StatusCode::SERVICE_UNAVAILABLE, "{pause:?}");
    assert!(pause.detail().contains("first record"), "{pause:?}");
    // Its job has fired: it is listed as it stands, not as scheduled.
    let listed = app.get("/trials").await;
    let row = listed.body["trials"]
        .as_array()
        .and_then(|rows| rows.iter().find(|row| row["trial_id"] == id))
        .cloned()
        .unwrap_or_default();
    assert_eq!(row["engine_status"], "Active", "{listed:?}");
    let active = app.get("/trials?status=Active").await;
    assert_eq!(active.body["trials"][0]["trial_id"], id, "{active:?}");
    let scheduled = app.get("/trials?status=Scheduled").await;
    assert_eq!(
        scheduled.body["trials"],
        serde_json::json!([]),
        "{scheduled:?}"
    );
    refused.refuse(false);
    app.drive_to_finished(id).await;
    assert_never_reported_failed(&app, id);
}

/// Runs the binary to its exit with extra environment, in a fresh directory.
async fn run_to_exit(dir: &std::path::Path, env: &[(&str, &str)]) -> (bool, String) {
    let bind = format!("127.0.0.1:{}", free_port());
    let mut env = env.to_vec();
    env.insert(0, ("LCM__SERVER__BIND", &bind));
    let output = run_lcm(&[], &env, dir, Duration::from_secs(20)).await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test]
async fn a_configuration_that_cannot_work_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (key, value, named) in [
        ("LCM__SERVER__BIND", "nope", "server.bind"),
        ("LCM__AUTH__TOKEN_SECRET", "", "auth.token_secret"),
        (
            "LCM__SERVICES__TRIAL_ENFORCEMENT__URL",
            "not a url",
            "services.trial_enforcement.url",
        ),
        (
            "LCM__EXECUTOR__REQUEST_TIMEOUT_SECS",
            "0",
            "executor.request_timeout_secs",
        ),
        ("LCM__LOGGING__LEVEL", "verbose", "logging.level"),
    ] {
        let (ok, text) = run_to_exit(dir.path(), &[(key, value)]).await;
        assert!(!ok, "{key}={value} should stop start-up");
        assert!(text.contains(named), "{key}: {text}");
    }
    let missing = dir.path().join("nowhere.toml");
    let (ok, text) = run_to_exit(
        dir.path(),
        &[("LCM_CONFIG", missing.to_str().expect("path"))],
    )
    .await;
    assert!(!ok && text.contains("nowhere.toml"), "{text}");
}

#[tokio::test]
async fn a_store_in_use_by_another_service_stops_start_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let in_use = lcm::store::sqlite::SqliteBackend::open(&data).expect("the store");
    let (ok, text) = run_to_exit(dir.path(), &[("LCM__STORE__DATA_DIR", "data")]).await;
    assert!(!ok, "{text}");
    assert!(
        text.contains("in use by another process") && text.contains("store.data_dir"),
        "{text}"
    );
    drop(in_use);
}

/// The automatic-scheduling switch set through the API outlives a restart, over
/// `scheduler.automatic`; the start says so in the log, for whoever changed the configuration
/// and expects it to hold.
#[tokio::test]
async fn the_switch_set_through_the_api_outlives_a_restart_and_the_log_says_it_wins() {
    let mut app = spawn_binary().await;
    let set = app
        .post("/trial/scheduling", Some(json!({"automatic": true})))
        .await;
    assert_eq!(set.status, StatusCode::OK, "{set:?}");
    let (status, _) = terminate(&mut app, Duration::from_secs(30)).await;
    assert!(status.success(), "{status}");
    app.restart_binary_with(&[("LCM__SCHEDULER__AUTOMATIC", "false")])
        .await;
    let shown = app.get("/status").await.body["Automatic_scheduling"].clone();
    assert_eq!(shown, true);
    let line = logged(
        &app,
        &["automatic scheduling is as switched through the API"],
    )
    .await;
    assert!(
        line.contains("saved=true") && line.contains("configured=false"),
        "{line}"
    );
}

/// A secret configured after a trial with that id was scheduled (a service's API key, say)
/// is found at the next start: the log says so loudly, without naming the id.
#[tokio::test]
async fn a_secret_that_is_a_held_trial_s_id_is_told_at_start() {
    let mut app = spawn_binary().await;
    let id = "repository-key-0815-abcdef";
    let made = app.schedule(id, &in_ms(3_600_000)).await;
    assert_eq!(made.status, StatusCode::OK, "{made:?}");
    let (status, _) = terminate(&mut app, Duration::from_secs(30)).await;
    assert!(status.success(), "{status}");
    app.restart_binary_with(&[("LCM__SERVICES__TRIAL_REPOSITORY__APIKEY", id)])
        .await;
    let line = logged(
        &app,
        &["have an id that is one of the configured API keys or secrets"],
    )
    .await;
    assert!(line.contains("trials=1"), "{line}");
    assert!(!line.contains(id), "{line}");
}

/// A second service given the log directory of a running one is refused at start: it would
/// mix its lines into the first one's files, and remove the first one's failure files as
/// those of trials its own store does not know.
#[tokio::test]
async fn a_log_directory_in_use_by_another_service_stops_start_up() {
    let first = spawn_binary().await;
    let logs = first.logs.path().to_str().expect("path");
    let dir = tempfile::tempdir().expect("tempdir");
    let (ok, text) = run_to_exit(dir.path(), &[("LCM__LOGGING__DIR", logs)]).await;
    assert!(!ok, "{text}");
    assert!(
        text.contains("in use by another process") && text.contains("logging.dir"),
        "{text}"
    );
    // Nor with the lock file removed by hand: the directory itself is locked too.
    std::fs::remove_file(first.logs.path().join("lcm-logs.lock")).expect("the lock file");
    let (ok, text) = run_to_exit(dir.path(), &[("LCM__LOGGING__DIR", logs)]).await;
    assert!(!ok, "{text}");
    assert!(text.contains("in use by another process"), "{text}");
    assert_eq!(first.get("/status").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_store_that_is_not_a_database_stops_start_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::write(data.join("lcm.sqlite3"), "not a database ".repeat(100)).expect("garbage");
    let (ok, text) = run_to_exit(dir.path(), &[("LCM__STORE__DATA_DIR", "data")]).await;
    assert!(!ok, "{text}");
    assert!(
        text.contains("lcm.sqlite3 is not a SQLite database") && text.contains("store.data_dir"),
        "{text}"
    );
}

/// The real binary, with trial `id` started and waiting for the operator at IDLE.
async fn binary_with_a_trial_at_idle(id: &'static str) -> TestApp {
    let app = spawn_binary_with(BinaryOptions {
        platform: Box::new(move |platform| platform.add_trial(Platform::trial(id, None))),
        ..BinaryOptions::default()
    })
    .await;
    app.start_trial(id).await;
    app.wait_waiting(id, "operator (active or finish)").await;
    app
}

#[tokio::test]
async fn sigterm_stops_the_service_even_with_an_event_stream_open() {
    let id = "streamed";
    let mut app = binary_with_a_trial_at_idle(id).await;
    let mut stream = app.open_events(id).await;
    assert_eq!(stream.status(), StatusCode::OK);
    assert!(
        stream.chunk().await.expect("reads").is_some(),
        "the history arrives"
    );

    let (status, _) = terminate(&mut app, Duration::from_secs(10)).await;
    assert!(status.success(), "{status}");
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(rest.is_ok(), "the event stream ended");
}

/// A clean stop leaves the whole store in its database file: a copy of `lcm.sqlite3` alone,
/// taken after the stop, holds every trial and its history (its `-wal` is emptied).
#[tokio::test]
async fn after_a_clean_stop_the_database_file_alone_holds_the_store() {
    let id = "copied";
    let mut app = binary_with_a_trial_at_idle(id).await;
    let events = app.history(id).await.len();
    let (status, _) = terminate(&mut app, Duration::from_secs(10)).await;
    assert!(status.success(), "{status}");

    let data = app.logs.path().join("data");
    let wal = std::fs::metadata(data.join("lcm.sqlite3-wal")).map_or(0, |m| m.len());
    assert_eq!(wal, 0, "the -wal still holds {wal} bytes");
    let copy = tempfile::tempdir().expect("tempdir");
    let copied = copy.path().join("lcm.sqlite3");
    std::fs::copy(data.join("lcm.sqlite3"), &copied).expect("the database file copies");
    let conn = rusqlite::Connection::open(&copied).expect("the copy opens");
    let count = |sql: &str| -> i64 {
        conn.query_row(sql, [id], |row| row.get(0))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    };
    assert_eq!(count("SELECT count(*) FROM trials WHERE trial_id = ?1"), 1);
    let kept = count("SELECT count(*) FROM trial_events WHERE trial_id = ?1");
    assert_eq!(usize::try_from(kept).ok(), Some(events));
}

/// Audit entries of refused requests are rows written after the answer, with no change to
/// ride with: stopping the service must not lose them, nor those of a request still being
/// handled when SIGTERM comes.
#[tokio::test]
async fn requests_answered_before_or_during_sigterm_keep_their_audit_entries() {
    let slow = "slow-to-fetch";
    let mut app = spawn_binary_with(BinaryOptions {
        platform: Box::new(move |platform| {
            platform.add_trial(Platform::trial(
                slow,
                Some(chrono::Utc::now() + chrono::Duration::hours(1)),
            ));
            platform.inject(
                Fault::new(
                    Component::Repository,
                    "GET",
                    "/trial/",
                    FaultAction::Delay(Duration::from_secs(1)),
                )
                .for_trial(slow),
            );
        }),
        ..BinaryOptions::default()
    })
    .await;
    let refused = app.post("/trial/never-scheduled/active", None).await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND, "{refused:?}");
    let in_flight = app
        .client
        .post(format!("{}/debug/trial/{slow}/schedule", app.address))
        .header("Authorization", API_KEY)
        .send();
    let in_flight = tokio::spawn(in_flight);
    eventually("the schedule waits on the registry", || async {
        let asked = lines(&app, slow)
            .iter()
            .any(|l| l.starts_with("GET /trial/"));
        asked
            .then_some(())
            .ok_or_else(|| format!("{:?}", lines(&app, slow)))
    })
    .await;
    let (status, _) = terminate(&mut app, Duration::from_secs(20)).await;
    assert!(status.success(), "{status}");
    let answered = in_flight
        .await
        .expect("the request task")
        .expect("the request in flight is answered")
        .status();

    app.restart_binary().await;
    for (id, action, outcome) in [
        ("never-scheduled", "POST /trial/{trial_id}/active", 404),
        (
            slow,
            "POST /debug/trial/{trial_id}/schedule",
            answered.as_u16(),
        ),
    ] {
        let entries = app.get(&format!("/audit?trial_id={id}")).await.body["entries"].clone();
        assert_eq!(entries[0]["action"], action, "{entries}");
        assert_eq!(entries[0]["outcome"], outcome, "{entries}");
    }
    // And the answer held: a schedule answered 200 was kept, one refused was not made.
    let listed = app.get(&format!("/trials?q={slow}")).await.body["trials"].clone();
    match answered {
        StatusCode::OK => assert_eq!(listed[0]["engine_status"], "Scheduled", "{listed}"),
        StatusCode::SERVICE_UNAVAILABLE => assert_eq!(listed, serde_json::json!([]), "{listed}"),
        other => panic!("the schedule in flight was answered {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_service_reports_no_failure_and_every_trial_carries_on() {
    let (slice, idle, active, mid, paused) = (
        "stop-slice",
        "stop-idle",
        "stop-active",
        "stop-mid",
        "stop-paused",
    );
    let all = [slice, idle, active, mid, paused];
    let mut app = spawn_binary_with(BinaryOptions {
        platform: Box::new(move |platform| {
            for id in all {
                platform.add_trial(Platform::trial(id, None));
            }
            platform.inject(drop_slice_callback(slice));
            platform.inject(
                Fault::new(
                    Component::Enforcement,
                    "POST",
                    "/flightplan",
                    FaultAction::Delay(Duration::from_secs(600)),
                )
                .for_trial(mid)
                .times(1),
            );
        }),
        ..BinaryOptions::default()
    })
    .await;
    for id in all {
        app.start_trial(id).await;
    }
    app.wait_waiting(slice, "slice callback (slice created)")
        .await;
    for id in [idle, active, paused] {
        app.wait_waiting(id, "operator (active or finish)").await;
    }
    app.wait_for(mid, "EnforceUavPlan in flight", |s| {
        s["step"] == "EnforceUavPlan"
    })
    .await;
    assert_eq!(
        app.post(&format!("/trial/{active}/active"), None)
            .await
            .status,
        StatusCode::OK
    );
    app.wait_waiting(active, "operator (finish)").await;
    assert_eq!(
        app.post(&format!("/trial/{paused}/pause"), None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        app.post(&format!("/trial/{paused}/active"), None)
            .await
            .status,
        StatusCode::OK,
        "a paused trial still takes its signal"
    );
    app.wait_for(paused, "held before SendKpiActive", |s| {
        s["step"] == "SendKpiActive" && s["paused"] == true
    })
    .await;

    // Twice over: stopping the service while trials wait is never a failure.
    for _ in 0..2 {
        let (status, _) = terminate(&mut app, Duration::from_secs(20)).await;
        assert!(status.success(), "{status}");
        for id in all {
            assert!(
                !app.platform
                    .status_history(id)
                    .contains(&"FAILED".to_owned()),
                "{id} was reported FAILED: {:?}",
                app.platform.status_history(id)
            );
            assert!(
                !app.logs
                    .path()
                    .join(format!("executor_{id}_fail.log"))
                    .exists(),
                "{id} has a failure file"
            );
        }
        app.restart_binary().await;
        let engines = app.engines().await;
        for id in all {
            assert!(
                engines.iter().any(|(e, s)| e == id && s == "Active"),
                "{id} carries on: {engines:?}"
            );
        }
        let status = app.trial_status(paused).await;
        assert_eq!(
            status["paused"], true,
            "the pause outlives a restart: {status}"
        );
    }
    // Each history says the service started again, and from where the trial went on the first
    // time.
    for id in all {
        let history = app.history(id).await;
        let recovered = events(&history, "recovered");
        assert_eq!(recovered.len(), 2, "{id}: {history:?}");
        let said = recovered[0]["detail"].as_str().unwrap_or_default();
        assert!(said.contains("the service started again"), "{id}: {said}");
        let (step, then) = match id {
            "stop-mid" => (
                json!("EnforceUavPlan"),
                "it goes on with this step, run again",
            ),
            "stop-paused" => (
                json!("SendKpiActive"),
                "it goes on with this step, run again",
            ),
            _ => (Value::Null, "it waits again"),
        };
        assert_eq!(recovered[0]["step"], step, "{id}: {history:?}");
        assert!(said.ends_with(then), "{id}: {said}");
    }

    app.wait_waiting(slice, "slice callback (slice created)")
        .await;
    let token = app.token_of(slice);
    assert_eq!(
        app.callback(slice, "slice", Some(&token)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.post(&format!("/trial/{paused}/resume"), None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        app.post(&format!("/trial/{active}/finish"), None)
            .await
            .status,
        StatusCode::OK
    );
    for id in [slice, idle, mid] {
        app.drive_to_finished(id).await;
    }
    app.wait_waiting(paused, "operator (finish)").await;
    assert_eq!(
        app.post(&format!("/trial/{paused}/finish"), None)
            .await
            .status,
        StatusCode::OK
    );
    for id in all {
        app.wait_finished(id).await;
        assert_eq!(
            app.platform.last_status(id).as_deref(),
            Some("FINISHED"),
            "{id}"
        );
    }
    // This process resumed one trial: the binary's own metrics say so exactly.
    let metrics = scrape(&app).await;
    assert!(
        metrics
            .lines()
            .any(|l| l == r#"lcm_signals_total{signal="resume",outcome="accepted"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_early_callback_outlives_a_kill_in_the_middle_of_its_step() {
    let id = "early-kept";
    let mut app = spawn_binary_with(BinaryOptions {
        platform: Box::new(move |platform| {
            platform.add_trial(Platform::trial(id, None));
            for fault in first_deployment_hangs(id) {
                platform.inject(fault);
            }
        }),
        ..BinaryOptions::default()
    })
    .await;
    app.start_trial(id).await;
    eventually(
        "the slice deployment to reach trial enforcement",
        || async {
            match app.platform.requests_for(id).iter().any(|r| {
                r.component == Component::Enforcement && r.path.contains("/sliceDeployment")
            }) {
                true => Ok(()),
                false => Err("not yet".to_owned()),
            }
        },
    )
    .await;
    let early = app.callback(id, "slice", Some(&app.token_of(id))).await;
    assert_ok_saying(&early, "when SliceDeployment completes");

    if let Server::Process(child) = &mut app.server {
        child.kill().await.expect("SIGKILL");
    }
    app.restart_binary().await;

    // The step runs again, and the callback kept before the kill takes the trial on.
    app.wait_waiting(id, "operator (active or finish)").await;
    let history = app.history(id).await;
    assert!(
        history.iter().any(|e| e["detail"]
            .as_str()
            .is_some_and(|d| d.contains("arrived early"))),
        "{history:?}"
    );
    app.drive_to_finished(id).await;
    assert!(
        !app.platform
            .status_history(id)
            .contains(&"FAILED".to_owned())
    );
}

#[tokio::test]
async fn a_failed_clean_up_fails_at_its_first_failure_across_a_restart() {
    let mut app = spawn_binary().await;
    let id = "cleanup-restarted";
    app.start_to_idle(id).await;
    let token = app.post_as(&format!("/token/{id}"), API_KEY).await;
    // KPI monitoring refuses the Finished marking (403: the LCM's credentials, which can be
    // mended); trial enforcement closes the slice without calling back, so the clean-up waits
    // there when the service stops.
    app.platform
        .inject(kpi_marking_fault(FaultAction::Status(403)).times(1));
    app.slice_closes_without_callback(id);
    let aborted = app.post(&format!("/trial/{id}/abort"), None).await;
    assert_eq!(aborted.status, StatusCode::OK, "{aborted:?}");
    app.wait_waiting(id, "the slice callback (slice closed)")
        .await;
    let (status, _) = terminate(&mut app, Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}");
    app.restart_binary().await;

    // The slice-closed callback ends the undoing; the clean-up then fails where it first did.
    app.wait_waiting(id, "the slice callback (slice closed)")
        .await;
    let closed = app.callback(id, "slice", Some(&token)).await;
    assert_eq!(closed.status, StatusCode::OK, "{closed:?}");
    let failed = app.wait_cleanup_failed(id).await;
    assert_eq!(failed["state"], "SendKpiFinish", "{failed}");
    assert_failure_says(&failed, "SendKpiFinish failed");
    assert_eq!(failed["leftovers"], serde_json::json!([]), "{failed}");
}

#[tokio::test]
async fn a_progress_report_answered_outlives_a_kill_and_is_shown_until_its_wait_ends() {
    let id = "progress-kept";
    let mut app = spawn_binary_with(BinaryOptions {
        platform: Box::new(move |platform| {
            platform.add_trial(Platform::trial(id, None));
            platform.inject(drop_slice_callback(id));
        }),
        ..BinaryOptions::default()
    })
    .await;
    app.start_trial(id).await;
    app.wait_waiting(id, WAITING_SLICE).await;
    let token = app.token_of(id);
    let path = format!("/trial/{id}/callback/progress");
    for body in [
        json!({"progress": 40, "message": "deploying the core"}),
        json!({"progress": 60}),
    ] {
        let answer = app
            .call_as(Method::POST, &path, Some(body), Some(&token))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    }
    // Killed the moment the last report is answered: what it said was saved before.
    if let Server::Process(child) = &mut app.server {
        child.kill().await.expect("SIGKILL");
    }
    app.restart_binary().await;

    let status = app.trial_status(id).await;
    assert!(
        status["waiting_for"]
            .as_str()
            .is_some_and(|w| w.ends_with(WAITING_SLICE)),
        "{status}"
    );
    assert_eq!(status["progress"], 60, "{status}");
    assert_eq!(status["progress_message"], "deploying the core", "{status}");
    let reported: Vec<Value> = app
        .history(id)
        .await
        .into_iter()
        .filter(|e| e["event"] == "progress")
        .map(|e| e["detail"].clone())
        .collect();
    assert_eq!(reported, ["40%: deploying the core", "60%"]);

    // The wait ends: the progress goes with it.
    assert_eq!(
        app.callback(id, "slice", Some(&token)).await.status,
        StatusCode::OK
    );
    app.wait_waiting(id, "operator (active or finish)").await;
    let status = app.trial_status(id).await;
    assert!(status["progress"].is_null(), "{status}");
    assert!(status["progress_message"].is_null(), "{status}");
}

/// Sends SIGTERM to the binary while a component holds its answer to a deployment or status
/// write, waits until the service says the stop waits for it, lets the answer go, and waits
/// for the service to exit: with status 0.
async fn stop_once_it_waits_for_the_answer(app: &mut TestApp, answered: &Gate) {
    stop_while_an_answer_is_held(app).await;
    let_the_answer_go_and_exit(app, answered).await;
}

/// Sends SIGTERM to the binary, and waits until it says the stop waits for an answer.
async fn stop_while_an_answer_is_held(app: &mut TestApp) {
    let Server::Process(child) = &mut app.server else {
        unreachable!("the binary runs as a process");
    };
    send_signal(child, "-TERM").await;
    logged(app, &["stopping", "has its answer first"]).await;
}

/// Lets the held answer go, and waits for the binary to exit: with status 0.
async fn let_the_answer_go_and_exit(app: &mut TestApp, answered: &Gate) {
    answered.open();
    let Server::Process(child) = &mut app.server else {
        unreachable!("the binary runs as a process");
    };
    let exited = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the service stops")
        .expect("exit status");
    assert!(exited.success(), "{exited}");
}

/// The binary with trial `id` in its repository, whose first slice deployment trial
/// enforcement holds until the returned gate opens.
async fn with_its_slice_deployment_held(id: &'static str) -> (TestApp, Gate) {
    with_its_slice_deployment_held_and(id, &[]).await
}

/// [`with_its_slice_deployment_held`], with `LCM__…` variables `env`.
async fn with_its_slice_deployment_held_and(
    id: &'static str,
    env: &[(&str, &str)],
) -> (TestApp, Gate) {
    let answered = Gate::new();
    let held = answered.clone();
    let app = spawn_binary_with(BinaryOptions {
        env,
        platform: Box::new(move |platform| {
            platform.add_trial(Platform::trial(id, None));
            platform.inject(slice_deployment_fault(id, FaultAction::HoldUntil(held)));
        }),
        ..BinaryOptions::default()
    })
    .await;
    (app, answered)
}

/// The binary with trial `id` at IDLE, whose next status write the repository meets with
/// `held` of the returned gate.
async fn at_idle_with_the_next_status_write_held(
    id: &str,
    held: impl FnOnce(Gate) -> FaultAction,
) -> (TestApp, Gate) {
    let answered = Gate::new();
    let app = spawn_binary().await;
    app.start_to_idle(id).await;
    app.platform.inject(
        Fault::new(
            Component::Repository,
            "PUT",
            "/trial/",
            held(answered.clone()),
        )
        .for_trial(id)
        .times(1),
    );
    (app, answered)
}

/// How many times trial `id` wrote `status` to the repository.
fn status_writes(app: &TestApp, id: &str, status: &str) -> usize {
    app.platform
        .requests_for(id)
        .iter()
        .filter(|r| r.method == "PUT" && r.body.as_ref().is_some_and(|b| b["status"] == status))
        .count()
}

#[tokio::test]
async fn a_stop_lets_a_slice_deployment_in_flight_have_its_answer_and_it_is_never_sent_twice() {
    let id = "stop-mid-deploy";
    let (mut app, answered) = with_its_slice_deployment_held(id).await;
    app.start_trial(id).await;
    eventually_at_least("the slice deployment to be sent", 1, || {
        slice_deployments(&app, id)
    })
    .await;

    // Stopped while trial enforcement holds its answer: the stop waits for it, so the slice
    // it made is known, instead of asking for another one after the restart.
    stop_once_it_waits_for_the_answer(&mut app, &answered).await;

    // Its callback came while the service stopped, or comes now: sent again, it is taken once.
    app.restart_binary().await;
    app.wait_for(id, "the deployment's step done", |s| {
        s["step"] != "SliceDeployment"
    })
    .await;
    let token = app.token_of(id);
    let callback = app.callback(id, "slice", Some(&token)).await;
    assert_eq!(callback.status, StatusCode::OK, "{callback:?}");
    app.drive_to_finished(id).await;
    assert_eq!(
        slice_deployments(&app, id),
        1,
        "the slice was asked for once"
    );
    assert_never_reported_failed(&app, id);
}

#[tokio::test]
async fn a_status_write_refused_while_the_service_stops_is_not_tried_again_nor_a_failure() {
    let id = "stop-mid-refusal";
    // The repository holds its answer to the next status write (ACTIVE), then refuses it.
    let (mut app, answered) =
        at_idle_with_the_next_status_write_held(id, |held| FaultAction::HoldThenStatus(held, 500))
            .await;
    let active = app.post(&format!("/trial/{id}/active"), None).await;
    assert_eq!(active.status, StatusCode::OK, "{active:?}");
    let writes = |app: &TestApp| status_writes(app, id, "ACTIVE");
    eventually_at_least("ACTIVE to be written", 1, || writes(&app)).await;

    stop_once_it_waits_for_the_answer(&mut app, &answered).await;
    assert_eq!(writes(&app), 1, "no attempt after the stop began");

    // The step runs again after the restart, and the trial goes on: nothing failed.
    app.restart_binary().await;
    app.wait_waiting(id, "operator (finish)").await;
    assert_eq!(writes(&app), 2);
    assert_eq!(
        app.post(&format!("/trial/{id}/finish"), None).await.status,
        StatusCode::OK
    );
    app.wait_finished(id).await;
    assert_never_reported_failed(&app, id);
    assert!(app.failure_file(id).is_none(), "no failure file");
    assert_no_failure_said(&app, id).await;
}

#[tokio::test]
async fn a_clean_up_status_write_refused_while_the_service_stops_runs_again_and_is_not_a_failure() {
    let id = "stop-mid-aborted-refused";
    // The clean-up's one status write (ABORTED) is held, then refused: it runs again after
    // the restart, and the clean-up ends.
    let (app, writes) =
        abort_across_a_stop_mid_status_write(id, |held| FaultAction::HoldThenStatus(held, 500))
            .await;
    assert_eq!(writes, 2);
    assert_no_failure_said(&app, id).await;
}

/// Brings trial `id` to IDLE and aborts it; stops the service while the repository holds its
/// answer to the clean-up's status write (`ABORTED`) with `held`, and waits until the
/// restarted service has the trial `Aborted`. Answers how many times `ABORTED` was written.
async fn abort_across_a_stop_mid_status_write(
    id: &str,
    held: impl FnOnce(Gate) -> FaultAction,
) -> (TestApp, usize) {
    let (mut app, answered) = at_idle_with_the_next_status_write_held(id, held).await;
    let aborted = app.ask_abort(id, "stop mid clean-up").await;
    assert_eq!(aborted.status, StatusCode::OK, "{aborted:?}");
    let writes = |app: &TestApp| status_writes(app, id, "ABORTED");
    eventually_at_least("ABORTED to be written", 1, || writes(&app)).await;

    stop_once_it_waits_for_the_answer(&mut app, &answered).await;

    app.restart_binary().await;
    app.wait_for(id, "Aborted", |s| s["engine_status"] == "Aborted")
        .await;
    let written = writes(&app);
    (app, written)
}

/// Panics if trial `id`'s history or the service's log says the trial failed.
async fn assert_no_failure_said(app: &TestApp, id: &str) {
    let kinds = app.event_kinds(id).await;
    assert!(!kinds.contains(&"trial_failed".to_owned()), "{kinds:?}");
    let log = log_text(app);
    assert!(
        !log.lines()
            .any(|line| line.contains("ERROR") && line.contains(id)),
        "{log}"
    );
}

/// A status write waiting to be tried again (the repository asked for ten minutes) has
/// nothing in flight: the stop does not wait for it, nor its grace, and the write is made
/// after the restart.
#[tokio::test]
async fn a_stop_while_a_status_write_waits_to_be_tried_again_does_not_wait_for_it() {
    let id = "stop-mid-backoff";
    let ten_minutes = [
        ("LCM__SERVER__SHUTDOWN_GRACE_SECS", "600"),
        ("LCM__EXECUTOR__RETRY__MAX_BACKOFF_MS", "600000"),
    ];
    let mut app = spawn_binary_with(BinaryOptions {
        env: &ten_minutes,
        ..BinaryOptions::default()
    })
    .await;
    app.status_write_waiting_ten_minutes(id).await;

    // Far less than the grace or the wait: the stop is not held by either.
    let (status, _) = terminate(&mut app, Duration::from_secs(60)).await;
    assert!(status.success(), "{status}");
    assert_eq!(
        status_writes(&app, id, "ACTIVE"),
        1,
        "no attempt at the stop"
    );

    app.restart_binary().await;
    app.wait_waiting(id, "operator (finish)").await;
    assert_eq!(status_writes(&app, id, "ACTIVE"), 2);
    let finish = app.post(&format!("/trial/{id}/finish"), None).await;
    assert_eq!(finish.status, StatusCode::OK, "{finish:?}");
    app.wait_finished(id).await;
    assert_never_reported_failed(&app, id);
    assert_no_failure_said(&app, id).await;
}

#[tokio::test]
async fn a_stop_lets_the_clean_up_s_status_write_have_its_answer_and_it_is_written_once() {
    let id = "stop-mid-aborted";
    // The clean-up's one status write (ABORTED) is held.
    let (_, writes) = abort_across_a_stop_mid_status_write(id, FaultAction::HoldUntil).await;
    assert_eq!(writes, 1, "ABORTED written once");
}

#[tokio::test]
async fn an_abort_waiting_for_a_deployment_when_the_service_stops_is_told_503_and_not_carried_out()
{
    let id = "abort-then-stop";
    let (mut app, answered) = with_its_slice_deployment_held(id).await;
    app.start_trial(id).await;
    app.wait_for(id, "SliceDeployment in flight", |s| {
        s["step"] == "SliceDeployment"
    })
    .await;
    // The abort waits for the deployment's answer; the service is stopped meanwhile.
    let abort = abort_waiting_for_the_deployment(&app, id).await;
    stop_once_it_waits_for_the_answer(&mut app, &answered).await;
    assert_told_503(abort).await;

    // Told 503, not carried out: the trial goes on from the deployment's answer, to the wait
    // for its slice (or past it, if the callback came in time), not to a clean-up.
    app.restart_binary().await;
    assert_goes_on_saying_the_abort_was_not_carried_out(&app, id).await;
    assert_eq!(slice_deployments(&app, id), 1);
}

#[tokio::test]
async fn an_abort_waiting_for_a_deployment_unanswered_within_the_grace_is_not_carried_out_either() {
    let id = "abort-then-stop-unanswered";
    let (mut app, answered) =
        with_its_slice_deployment_held_and(id, &[("LCM__SERVER__SHUTDOWN_GRACE_SECS", "1")]).await;
    app.start_trial(id).await;
    let abort = abort_waiting_for_the_deployment(&app, id).await;
    // No answer within the grace: the service stops without it.
    let (exited, _) = terminate(&mut app, Duration::from_secs(30)).await;
    assert!(exited.success(), "{exited}");
    assert_told_503(abort).await;

    // The deployment, sent again after the restart, is answered.
    answered.open();
    app.restart_binary().await;
    assert_goes_on_saying_the_abort_was_not_carried_out(&app, id).await;
    assert_eq!(
        slice_deployments(&app, id),
        2,
        "sent again after the restart"
    );
}

#[tokio::test]
async fn an_abort_waiting_for_a_deployment_when_the_service_is_killed_is_said_not_carried_out() {
    let id = "abort-then-kill";
    let (mut app, answered) = with_its_slice_deployment_held(id).await;
    app.start_trial(id).await;
    let abort = abort_waiting_for_the_deployment(&app, id).await;
    // The abort's request is in the store (reading the audit log commits what waits), its
    // clean-up not: the service is killed while the abort waits for the deployment's answer.
    assert_eq!(app.get("/audit").await.status, StatusCode::OK);
    if let Server::Process(child) = &mut app.server {
        child.kill().await.expect("SIGKILL");
    }
    // Its caller is never told it was done (the connection drops with the process).
    let told = abort.await.expect("the abort's task");
    assert!(
        !told.as_ref().is_ok_and(|status| status.is_success()),
        "{told:?}"
    );

    answered.open();
    app.restart_binary().await;
    goes_on_not_aborting(&app, id).await;
    // Its history says the abort it shows asked for was not carried out, once.
    app.wait_event(id, "abort_not_carried_out", "killed, or it crashed")
        .await;
    let said = app
        .history(id)
        .await
        .iter()
        .filter(|e| e["event"] == "abort_not_carried_out")
        .count();
    assert_eq!(said, 1);
}

/// Asks for trial `id`'s abort once its slice deployment is in flight, and waits until the
/// abort waits for the deployment's answer; the abort's answer comes from the returned task.
async fn abort_waiting_for_the_deployment(
    app: &TestApp,
    id: &str,
) -> tokio::task::JoinHandle<reqwest::Result<StatusCode>> {
    // The deployment itself, not its step: an abort while the step still reads the trial from
    // the repository cancels that read and starts the clean-up at once.
    eventually_at_least("the slice deployment to be sent", 1, || {
        slice_deployments(app, id)
    })
    .await;
    let (client, url) = (
        app.client.clone(),
        format!("{}/trial/{id}/abort", app.address),
    );
    let abort = tokio::spawn(async move {
        client
            .post(url)
            .header("Authorization", API_KEY)
            .json(&json!({"reason": "abort then stop"}))
            .send()
            .await
            .map(|r| r.status())
    });
    app.wait_event(id, "abort_requested", "abort then stop")
        .await;
    abort
}

/// Panics unless the abort `abort` asked for was told the engine stopped before it was saved.
async fn assert_told_503(abort: tokio::task::JoinHandle<reqwest::Result<StatusCode>>) {
    let told = abort.await.expect("the abort's task");
    assert_eq!(
        told.expect("an answer"),
        StatusCode::SERVICE_UNAVAILABLE,
        "the engine stopped before the abort was saved"
    );
}

/// Waits until trial `id` waits on its own path (for its slice or the operator), and panics if
/// it is aborting.
async fn goes_on_not_aborting(app: &TestApp, id: &str) {
    let status = app
        .wait_for(id, "a wait of the trial's own path", |s| {
            s["waiting_for"]
                .as_str()
                .is_some_and(|w| w.ends_with(WAITING_SLICE) || w.contains("operator"))
        })
        .await;
    assert_eq!(status["aborting"], false, "{status}");
}

/// Waits until trial `id`, restarted after an abort that was not carried out, waits on its
/// own path, not cleaning up, and panics unless its history says why.
async fn assert_goes_on_saying_the_abort_was_not_carried_out(app: &TestApp, id: &str) {
    goes_on_not_aborting(app, id).await;
    assert!(
        !app.platform
            .status_history(id)
            .contains(&"ABORTED".to_owned())
    );
    // Its history says so, after the abort's request.
    app.wait_event(id, "abort_not_carried_out", "its caller was told 503")
        .await;
}

/// How many slice deployments trial `id` asked for.
fn slice_deployments(app: &TestApp, id: &str) -> usize {
    sent(app, id, "POST", "/sliceDeployment").len()
}

#[tokio::test]
async fn an_event_stream_ends_as_the_stop_begins_not_once_a_held_answer_comes() {
    let id = "streamed-mid-deploy";
    // A grace far longer than the test waits for the stream to end.
    let (mut app, answered) =
        with_its_slice_deployment_held_and(id, &[("LCM__SERVER__SHUTDOWN_GRACE_SECS", "120")])
            .await;
    app.start_trial(id).await;
    app.wait_for(id, "SliceDeployment in flight", |s| {
        s["step"] == "SliceDeployment"
    })
    .await;
    let mut stream = app.open_events(id).await;
    assert_eq!(stream.status(), StatusCode::OK);
    assert!(
        stream.chunk().await.expect("reads").is_some(),
        "the history arrives"
    );
    stop_while_an_answer_is_held(&mut app).await;
    // The stop waits for the deployment's answer; the stream has ended already.
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the event stream ended while the stop waited"
    );
    let_the_answer_go_and_exit(&mut app, &answered).await;
}

#[tokio::test]
async fn operator_changes_answered_outlive_a_kill_with_their_history_and_audit_entries() {
    let (restored, aborted, signalled) = ("kept-restore", "kept-abort", "kept-active");
    let mut app = spawn_binary_with(BinaryOptions {
        env: &[("LCM__EXECUTOR__RETRY__MAX_ATTEMPTS", "1")],
        platform: Box::new(move |platform| {
            for id in [restored, aborted, signalled] {
                platform.add_trial(Platform::trial(id, None));
            }
            for id in [restored, aborted] {
                platform.inject(flight_plan_fault(id, FaultAction::Status(500)));
            }
        }),
        ..BinaryOptions::default()
    })
    .await;
    for id in [restored, aborted, signalled] {
        app.start_trial(id).await;
    }
    app.wait_failed(restored).await;
    app.wait_failed(aborted).await;
    app.wait_waiting(signalled, "operator (active or finish)")
        .await;

    let paths = [
        format!("/debug/engine/{restored}/restore"),
        format!("/trial/{aborted}/abort"),
        format!("/trial/{signalled}/active"),
    ];
    let (restore, abort, active) = tokio::join!(
        app.post(&paths[0], None),
        app.post(&paths[1], None),
        app.post(&paths[2], None),
    );
    for answer in [&restore, &abort, &active] {
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    }
    // Killed the moment the last is answered: each change was committed with its history
    // and its audit entry before its answer left.
    if let Server::Process(child) = &mut app.server {
        child.kill().await.expect("SIGKILL");
    }
    app.restart_binary().await;

    let kinds = |history: Vec<Value>| -> Vec<String> {
        history
            .into_iter()
            .filter_map(|e| e["event"].as_str().map(str::to_owned))
            .collect()
    };
    let restored_kinds = kinds(app.history(restored).await);
    assert!(
        restored_kinds.iter().any(|k| k == "restored"),
        "{restored_kinds:?}"
    );
    let aborted_kinds = kinds(app.history(aborted).await);
    for kind in ["abort_requested", "cleanup_started"] {
        assert!(
            aborted_kinds.iter().any(|k| k == kind),
            "{kind}: {aborted_kinds:?}"
        );
    }
    for (id, action) in [
        (restored, "POST /debug/engine/{trial_id}/restore"),
        (aborted, "POST /trial/{trial_id}/abort"),
        (signalled, "POST /trial/{trial_id}/active"),
    ] {
        let audit = app.get(&format!("/audit?trial_id={id}")).await;
        let entries = audit.body["entries"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            entries
                .iter()
                .any(|e| e["action"] == action && e["outcome"] == 200),
            "{id}: {audit:?}"
        );
    }
}
