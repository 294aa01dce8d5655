//! Callbacks and operator signals: tokens checked on every callback, signals that do not fit,
//! duplicates, early callbacks and callback deadlines.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;

use lcm::sim::{Component, Fault, FaultAction, Gate};
use reqwest::{Method, StatusCode};

use crate::helpers::*;

#[tokio::test]
async fn callbacks_with_bad_tokens_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    let id = "tokens-cb";
    app.wait_at_slice_callback(id).await;

    let forged = signed_token("another-secret", id, 600);
    let expired = signed_token(TOKEN_SECRET, id, -5);
    let other = app.post("/token/other-trial", None).await.body["Authorization"]
        .as_str()
        .expect("token")
        .to_owned();
    let revoked = app.post(&format!("/token/{id}"), None).await.body["Authorization"]
        .as_str()
        .expect("token")
        .to_owned();
    let revoke = app
        .call_as(
            Method::DELETE,
            &format!("/token/{id}"),
            None,
            Some(&revoked),
        )
        .await;
    assert_eq!(revoke.status, StatusCode::OK, "{revoke:?}");

    for (token, status, what) in [
        (None, StatusCode::UNAUTHORIZED, "missing"),
        (Some(forged.as_str()), StatusCode::UNAUTHORIZED, "forged"),
        (Some(expired.as_str()), StatusCode::UNAUTHORIZED, "expired"),
        (Some(revoked.as_str()), StatusCode::UNAUTHORIZED, "revoked"),
        (Some("garbage"), StatusCode::UNAUTHORIZED, "garbage"),
        (Some(other.as_str()), StatusCode::FORBIDDEN, "other trial's"),
    ] {
        let answer = app.callback(id, "slice", token).await;
        assert_eq!(answer.status, status, "{what} token: {answer:?}");
        assert!(!answer.detail().is_empty(), "{what} token has a detail");
        let status = app.trial_status(id).await;
        assert_eq!(status["status"], "Waiting", "{what} token moved the trial");
    }
    assert!(
        !lines(&app, id).contains(&format!("PUT /trial/{id}/")),
        "no step ran after a refused callback"
    );

    let token = app.token_of(id);
    let answer = app
        .callback(id, "slice", Some(&format!("Bearer {token}")))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    app.wait_waiting(id, WAITING_OPERATOR).await;
}

#[tokio::test]
async fn a_callback_for_a_trial_without_engine_is_not_found() {
    let app = spawn_app().await;
    let token = app.post("/token/ghost", None).await.body["Authorization"]
        .as_str()
        .expect("token")
        .to_owned();
    let answer = app.callback("ghost", "slice", Some(&token)).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND, "{answer:?}");
    let unknown_kind = app.callback("ghost", "nonsense", Some(&token)).await;
    assert_eq!(unknown_kind.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn signals_that_do_not_fit_are_refused_with_409() {
    let app = spawn_app().await;
    let id = "wrong-time";
    let token = app.wait_at_slice_callback(id).await;

    for path in ["active", "finish"] {
        let answer = app.post(&format!("/trial/{id}/{path}"), None).await;
        assert_eq!(answer.status, StatusCode::CONFLICT, "{path}: {answer:?}");
        assert!(
            answer.detail().contains("waiting for the slice callback"),
            "{answer:?}"
        );
    }
    let vnf = app.callback(id, "cloudvnfboarding", Some(&token)).await;
    assert_eq!(vnf.status, StatusCode::CONFLICT, "{vnf:?}");
    assert_eq!(app.trial_status(id).await["status"], "Waiting");

    assert_eq!(
        app.callback(id, "slice", Some(&token)).await.status,
        StatusCode::OK
    );
    app.wait_waiting(id, WAITING_OPERATOR).await;
    let unknown = app.post("/trial/nobody/active", None).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn finish_while_a_step_before_idle_runs_is_refused() {
    let app = spawn_app().await;
    let id = "early-finish";
    // The flight plan is held until the test has sent its finish.
    let plan = app.hold_next(Component::Enforcement, "POST", "/flightplan", id);
    app.start_trial(id).await;
    app.wait_for(id, "EnforceUavPlan", |s| s["state"] == "EnforceUavPlan")
        .await;
    let answer = app.post(&format!("/trial/{id}/finish"), None).await;
    assert_eq!(answer.status, StatusCode::CONFLICT, "{answer:?}");
    assert!(
        answer.detail().contains("running EnforceUavPlan"),
        "{answer:?}"
    );
    plan.open();
    app.drive_to_finished(id).await;
}

#[tokio::test]
async fn finish_while_going_active_is_kept_and_applied() {
    let app = spawn_app().await;
    let id = "finish-held";
    app.start_trial(id).await;
    app.wait_waiting(id, WAITING_OPERATOR).await;
    // The marking that `active` starts is held until the test has sent its finish.
    let marking = app.hold_next(Component::Kpi, "POST", "/markKPIData", id);
    assert_eq!(
        app.post(&format!("/trial/{id}/active"), None).await.status,
        StatusCode::OK
    );
    let finish = app.post(&format!("/trial/{id}/finish"), None).await;
    assert_eq!(finish.status, StatusCode::OK, "{finish:?}");
    assert!(
        finish.body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("takes effect"),
        "{finish:?}"
    );
    marking.open();
    app.wait_finished(id).await;
    assert_eq!(app.platform.status_history(id), FULL_HISTORY);
}

#[tokio::test]
async fn a_repeated_slice_callback_at_idle_is_already_registered_not_slice_closed() {
    let app = spawn_app().await;
    let id = "dup-slice";
    app.start_trial(id).await;
    app.wait_waiting(id, WAITING_OPERATOR).await;
    let token = app.token_of(id);

    let again = app.callback(id, "slice", Some(&token)).await;
    assert_eq!(again.status, StatusCode::OK, "{again:?}");
    assert!(
        again.body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("already registered")
    );
    let status = app.trial_status(id).await;
    assert_eq!(status["status"], "Waiting");
    assert_eq!(status["finished"], false);
    assert_eq!(app.platform.last_status(id).as_deref(), Some("IDLE"));

    let active = app.post(&format!("/trial/{id}/active"), None).await;
    assert_eq!(active.status, StatusCode::OK);
    let active_again = app.post(&format!("/trial/{id}/active"), None).await;
    assert_eq!(active_again.status, StatusCode::OK, "{active_again:?}");
    app.wait_waiting(id, "operator (finish)").await;
    assert_eq!(
        app.post(&format!("/trial/{id}/finish"), None).await.status,
        StatusCode::OK
    );
    app.wait_finished(id).await;
    assert_eq!(
        app.platform.kpi_markings(id),
        ["Idle", "Active", "Finished"]
    );
}

#[tokio::test]
async fn a_component_retrying_its_callback_gets_already_registered() {
    let app = spawn_app().await;
    let id = "retrying";
    app.platform.inject(Fault::new(
        Component::Enforcement,
        "POST",
        "/sliceDeployment",
        FaultAction::DuplicateCallback,
    ));
    app.start_trial(id).await;
    app.wait_waiting(id, WAITING_OPERATOR).await;
    let callbacks = eventually("the component's second callback", || async {
        let callbacks = app.platform.callbacks();
        match callbacks.len() >= 2 {
            true => Ok(callbacks),
            false => Err(format!("{} callbacks", callbacks.len())),
        }
    })
    .await;
    assert_eq!(callbacks.len(), 2);
    assert!(callbacks.iter().all(|c| c.status == Some(200)));
    let second = callbacks[1].body.as_ref().expect("json answer");
    assert!(
        second["message"]
            .as_str()
            .unwrap_or_default()
            .contains("already registered"),
        "{second}"
    );
    app.post(&format!("/trial/{id}/finish"), None).await;
    app.wait_finished(id).await;
}

#[tokio::test]
async fn early_callbacks_are_kept_until_their_step_completes() {
    let app = spawn_app().await;
    let id = "early";
    for method_path in [
        ("POST", "/sliceDeployment"),
        ("DELETE", "/sliceDeployment/"),
    ] {
        app.platform.inject(Fault::new(
            Component::Enforcement,
            method_path.0,
            method_path.1,
            FaultAction::EarlyCallback,
        ));
    }
    app.start_trial(id).await;
    app.wait_waiting(id, WAITING_OPERATOR).await;
    app.post(&format!("/trial/{id}/finish"), None).await;
    app.wait_finished(id).await;

    let callbacks = app.platform.callbacks();
    assert_eq!(callbacks.len(), 2);
    for (callback, step) in callbacks.iter().zip(["SliceDeployment", "CloseService"]) {
        assert_eq!(callback.status, Some(200));
        let message = callback.body.as_ref().expect("json")["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            message.contains(&format!("when {step} completes")),
            "{message}"
        );
    }
    assert_eq!(app.platform.status_history(id), SHORT_HISTORY);
}

#[tokio::test]
async fn a_missing_callback_times_out_and_the_trial_can_be_restored() {
    // Long enough that the callback sent after the restore comes within the wait's time
    // again, however slow the test.
    let app = spawn_app_with_settings(|s| s.executor.callback_timeout_secs = 5).await;
    let id = "timeout";
    app.platform.inject(drop_slice_callback(id));
    app.start_trial(id).await;
    let failed = app.wait_failed(id).await;
    assert_eq!(
        failed["failure"],
        "timed out waiting for the slice callback (slice created)"
    );
    assert_eq!(app.platform.trial_status(id).as_deref(), Some("FAILED"));
    let file = app.failure_file(id).expect("failure file");
    assert!(
        file["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("timed out")
    );

    // The callback comes late, once the trial has failed: it is kept for the restore (the
    // component does not send it again); a progress report is not.
    let token = app.token_of(id);
    let kept = app.callback(id, "slice", Some(&token)).await;
    assert_eq!(kept.status, StatusCode::OK, "{kept:?}");
    assert!(
        kept.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("kept for trial timeout")),
        "{kept:?}"
    );
    let again = app.callback(id, "slice", Some(&token)).await;
    assert!(
        again.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("already registered")),
        "{again:?}"
    );
    let progress = app
        .call_as(
            Method::POST,
            &format!("/trial/{id}/callback/progress"),
            None,
            Some(&token),
        )
        .await;
    assert_eq!(progress.status, StatusCode::FORBIDDEN, "{progress:?}");

    let restore = app.post(&format!("/debug/engine/{id}/restore"), None).await;
    assert_eq!(restore.status, StatusCode::OK, "{restore:?}");
    app.wait_waiting(id, WAITING_OPERATOR).await;
    assert_eq!(
        lines(&app, id)
            .iter()
            .filter(|l| *l == "POST /sliceDeployment")
            .count(),
        1,
        "a restore at a waiting point waits again instead of re-sending"
    );
    app.wait_event(id, "signal_accepted", "arrived early").await;
}

#[tokio::test]
async fn a_slice_callback_that_comes_while_its_deployment_failed_is_taken_after_the_restore() {
    let app = spawn_app_with_settings(single_attempt).await;
    let id = "made-then-failed";
    // The deployment is answered 500 (the slice may have been made); sent again after the
    // restore with its key, it is answered as a replay, and no second callback comes.
    app.platform
        .inject(slice_deployment_fault(id, FaultAction::Status(500)));
    app.platform.inject(drop_slice_callback(id));
    app.start_trial(id).await;
    app.wait_failed(id).await;
    let token = app.token_of(id);
    let kept = app.callback(id, "slice", Some(&token)).await;
    assert_eq!(kept.status, StatusCode::OK, "{kept:?}");
    // An operator's signal still does not fit a failed trial.
    let active = app.post(&format!("/trial/{id}/active"), None).await;
    assert_eq!(active.status, StatusCode::CONFLICT, "{active:?}");

    let restore = app.post(&format!("/debug/engine/{id}/restore"), None).await;
    assert_eq!(restore.status, StatusCode::OK, "{restore:?}");
    app.wait_waiting(id, WAITING_OPERATOR).await;
    app.wait_event(id, "signal_accepted", "arrived early").await;
}

#[tokio::test]
async fn the_operator_wait_has_a_deadline_only_when_configured() {
    let app = spawn_app_with_settings(|s| s.executor.operator_timeout_secs = Some(1)).await;
    let id = "operator-timeout";
    app.start_trial(id).await;
    let failed = app.wait_failed(id).await;
    assert_eq!(
        failed["failure"],
        "timed out waiting for the operator (active or finish)"
    );
}

#[tokio::test]
async fn an_early_callback_that_cannot_be_saved_is_refused_with_503_and_not_kept() {
    let (app, broken) = spawn_app_with_flaky_store(AppOptions::default()).await;
    let id = "early-unsaved";
    let gate = Gate::default();
    app.platform.inject(slice_deployment_fault(
        id,
        FaultAction::HoldUntil(gate.clone()),
    ));
    let token = app.slice_deployment_in_flight(id).await;

    broken.store(true, std::sync::atomic::Ordering::SeqCst);
    let refused = app.callback(id, "slice", Some(&token)).await;
    broken.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_detail(&refused, StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.detail().contains("not taken"), "{refused:?}");

    // Not kept: the same callback sent again is kept now, not "already registered".
    let kept = app.callback(id, "slice", Some(&token)).await;
    assert_ok_saying(&kept, "when SliceDeployment completes");
    gate.open();
    app.wait_waiting(id, WAITING_OPERATOR).await;
}

#[tokio::test]
async fn an_early_callback_is_dropped_with_its_refused_step_and_a_restore_awaits_its_own() {
    let app = spawn_app_with_settings(single_attempt).await;
    let id = "early-failed";
    // Refused (400), the deployment made nothing: a restore deploys anew under a new key.
    let token = fail_after_an_early_slice_callback(&app, id, 400).await;

    // The restored run deploys again and waits for that deployment's callback.
    app.wait_waiting(id, WAITING_SLICE).await;
    assert_ok_saying(&app.callback(id, "slice", Some(&token)).await, "accepted");
    app.wait_waiting(id, WAITING_OPERATOR).await;
}

#[tokio::test]
async fn a_signal_whose_checkpoint_is_not_saved_is_not_taken_and_the_trial_waits_for_it_again() {
    let (app, broken) = spawn_app_with_flaky_store(AppOptions::default()).await;
    let id = "answered-saved";
    app.start_to_idle(id).await;
    broken.store(true, Ordering::SeqCst);
    let refused = app.post(&format!("/trial/{id}/active"), None).await;
    broken.store(false, Ordering::SeqCst);
    // Not told it was accepted: the change was not saved, so it was not made.
    assert_detail(&refused, StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.detail().contains("not taken"), "{refused:?}");
    // The trial is where the signal found it, not failed: `active` sent again is taken.
    let waiting = app.wait_waiting(id, WAITING_OPERATOR).await;
    assert_eq!(waiting["failed"], false, "{waiting}");
    app.drive_to_finished(id).await;
    assert_never_reported_failed(&app, id);
}

#[tokio::test]
async fn a_signal_refused_503_is_not_taken_by_the_engine_a_failed_delete_brings_back() {
    let (app, broken) = spawn_app_with_flaky_store(AppOptions::default()).await;
    let id = "refused-then-back";
    app.start_to_idle(id).await;
    let statuses = app.platform.status_history(id);
    broken.store(true, Ordering::SeqCst);
    let refused = app.post(&format!("/trial/{id}/active"), None).await;
    assert_detail(&refused, StatusCode::SERVICE_UNAVAILABLE);
    // The removal cannot be saved either: the engine is brought back from the record it kept.
    let kept = app.delete(&format!("/debug/engine/{id}?force=true")).await;
    assert_detail(&kept, StatusCode::SERVICE_UNAVAILABLE);
    broken.store(false, Ordering::SeqCst);

    // Back where the refused signal found it: waiting for the operator, nothing more sent.
    let waiting = app.wait_waiting(id, WAITING_OPERATOR).await;
    assert_eq!(waiting["failed"], false, "{waiting}");
    assert_eq!(
        app.platform.status_history(id),
        statuses,
        "no ACTIVE written"
    );
    // Taken once the engine's record is saved again (until then it is refused, 503).
    eventually("active taken by the engine brought back", || async {
        let answer = app.post(&format!("/trial/{id}/active"), None).await;
        match answer.status {
            StatusCode::OK => Ok(()),
            StatusCode::SERVICE_UNAVAILABLE => Err(answer.detail().to_owned()),
            _ => panic!("{answer:?}"),
        }
    })
    .await;
    app.wait_waiting(id, "operator (finish)").await;
    let finished = app.post(&format!("/trial/{id}/finish"), None).await;
    assert_eq!(finished.status, StatusCode::OK, "{finished:?}");
    app.wait_finished(id).await;
    assert_never_reported_failed(&app, id);
}

#[tokio::test]
async fn a_checkpoint_the_store_refuses_is_saved_again_and_the_trial_goes_on_with_its_early_callback()
 {
    use lcm::engine::state::Lifecycle;
    let (app, refused) =
        spawn_app_refusing_saves(|lifecycle| lifecycle == Lifecycle::Waiting, |_| {}).await;
    let id = "early-then-unsaved";
    // Trial enforcement calls back before it answers the deployment, and never again.
    app.platform
        .inject(slice_deployment_fault(id, FaultAction::EarlyCallback));
    // The step completes, and the checkpoint at the slice wait is refused: the trial waits
    // there, its next request not sent, until the store takes it.
    refused.refuse(true);
    app.start_trial(id).await;
    refused
        .wait_refused("the checkpoint at the slice wait", 1)
        .await;
    let held = app.trial_status(id).await;
    assert_eq!(held["failed"], false, "{held}");
    let sent = lines(&app, id);
    refused.refuse(false);
    // Saved on its next try, with the callback its completed step was answered with.
    app.wait_waiting(id, WAITING_OPERATOR).await;
    let after = lines(&app, id);
    assert_eq!(after[..sent.len()], sent[..], "nothing sent twice");
    assert_never_reported_failed(&app, id);
}

#[tokio::test]
async fn a_signal_whose_engine_is_deleted_before_it_answers_is_503() {
    let (app, faults) = spawn_app_with_store_faults(
        AppOptions::default(),
        StoreFaults {
            held: HeldWrites::of(|op| matches!(op, lcm::store::Op::PutTrial(_))),
            ..StoreFaults::default()
        },
    )
    .await;
    let id = "answer-outrun";
    app.start_to_idle(id).await;
    // `active` is taken, and its checkpoint waits at a store slow to commit it; the engine is
    // deleted meanwhile.
    faults.held.hold();
    let (answered, done) = tokio::sync::oneshot::channel();
    let signal = async {
        let answer = app.post(&format!("/trial/{id}/active"), None).await;
        let _ = answered.send(());
        answer
    };
    let delete = async {
        eventually("the checkpoint to wait for the store", || async {
            match faults.held.waiting.load(Ordering::SeqCst) {
                0 => Err("not yet".to_owned()),
                _ => Ok(()),
            }
        })
        .await;
        let release = async {
            let _ = done.await;
            faults.held.release();
        };
        let path = format!("/debug/engine/{id}?force=true");
        tokio::join!(app.delete(&path), release).0
    };
    let (signalled, deleted) = tokio::join!(signal, delete);
    assert_detail(&signalled, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(deleted.status, StatusCode::OK, "{deleted:?}");
}

#[tokio::test]
async fn a_signal_whose_checkpoint_is_saved_as_the_service_stops_is_answered_as_taken() {
    let (answer, trial) =
        ask_as_the_service_stops("taken-as-it-stops", "active", None, PUT_TRIAL).await;
    let checkpoint = trial.record.checkpoint;
    // Told it was taken: the store holds it taken.
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert!(
        checkpoint
            .accepted
            .iter()
            .any(|(_, signal)| *signal == lcm::engine::sequence::Signal::Active),
        "{checkpoint:?}"
    );
}

#[tokio::test]
async fn an_abort_whose_clean_up_is_saved_as_the_service_stops_is_answered_as_accepted() {
    let body = serde_json::json!({"reason": "as it stops"});
    let (answer, trial) =
        ask_as_the_service_stops("aborted-as-it-stops", "abort", Some(body), PUT_TRIAL).await;
    let checkpoint = trial.record.checkpoint;
    // Told it was accepted: the store holds the clean-up begun.
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert!(
        matches!(checkpoint.mode, lcm::engine::state::Mode::Cleanup { .. }),
        "{checkpoint:?}"
    );
}

#[tokio::test]
async fn a_pause_saved_as_the_service_stops_is_answered_as_done_and_recorded() {
    let set_paused = |op: &lcm::store::Op| matches!(op, lcm::store::Op::SetPaused { .. });
    let (answer, trial) =
        ask_as_the_service_stops("paused-as-it-stops", "pause", None, set_paused).await;
    // Told it was paused: the store holds it paused, and its history says so.
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert!(trial.record.checkpoint.paused, "{:?}", trial.record);
    assert!(
        trial
            .events
            .iter()
            .any(|e| e.event == lcm::engine::state::EventKind::Paused),
        "{:?}",
        trial.events
    );
}

/// The store's write of every checkpoint.
const PUT_TRIAL: fn(&lcm::store::Op) -> bool = |op| matches!(op, lcm::store::Op::PutTrial(_));

/// Brings trial `id` to IDLE and sends `POST /trial/{id}/{action}` (with `body`); the
/// write that takes it (`held` tells which) waits at a store slow to commit it, the service
/// begins to stop meanwhile, and the store commits it then. Answers the request's answer,
/// and the trial as the store holds it once the service has stopped.
async fn ask_as_the_service_stops(
    id: &str,
    action: &str,
    body: Option<serde_json::Value>,
    held: fn(&lcm::store::Op) -> bool,
) -> (Answer, lcm::store::RecoveredTrial) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, stop) = (dir.path().to_path_buf(), Gate::new());
    let faults = StoreFaults {
        held: HeldWrites::of(held),
        ..StoreFaults::default()
    };
    let held = faults.held.clone();
    let mut app = spawn_app_with(AppOptions {
        backend: Some(Box::new(move || FlakyBackend {
            inner: lcm::store::sqlite::SqliteBackend::open(&data).expect("the store opens"),
            faults,
        })),
        stop: Some(stop.clone()),
        ..AppOptions::default()
    })
    .await;
    app.start_to_idle(id).await;
    let mut stream = app.open_events(id).await;
    held.hold();
    let path = format!("/trial/{id}/{action}");
    let asked = app.post(&path, body);
    let stopping = async {
        eventually("the checkpoint to wait for the store", || async {
            match held.waiting.load(Ordering::SeqCst) {
                0 => Err("not yet".to_owned()),
                _ => Ok(()),
            }
        })
        .await;
        stop.open();
        // Event streams end as the stop begins, with the engines told to stop.
        while let Ok(Some(_)) = stream.chunk().await {}
        held.release();
    };
    let (answer, _) = tokio::join!(asked, stopping);
    let Server::Task(server) = &mut app.server else {
        unreachable!("the service runs in this process");
    };
    server.await.expect("the service stops");
    // Its writer thread lets go of the store as it ends.
    let mut store = eventually("the store to be free", || async {
        lcm::store::sqlite::SqliteBackend::open(dir.path()).map_err(|e| e.to_string())
    })
    .await;
    let loaded = lcm::store::Backend::load(&mut store).expect("the store loads");
    let trial = loaded
        .trials
        .into_iter()
        .find(|t| t.record.id.as_str() == id)
        .expect("the trial's record");
    (answer, trial)
}

/// A wait's deadline counts from when the trial reached it, across restarts: a service
/// restarted more often than `executor.callback_timeout_secs` still times a lost callback out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_does_not_give_a_wait_its_whole_time_again() {
    let id = "timed-across-restarts";
    // Long enough for the service to be stopped before it runs out, however slow the test.
    let timeout = [("LCM__EXECUTOR__CALLBACK_TIMEOUT_SECS", "6")];
    let whole = chrono::Duration::seconds(6);
    let mut app = spawn_binary_with(BinaryOptions {
        env: &timeout,
        platform: Box::new(|platform| platform.inject(drop_slice_callback(id))),
        ..BinaryOptions::default()
    })
    .await;
    app.start_trial(id).await;
    app.wait_waiting(id, WAITING_SLICE).await;
    let reached = event_time(&app.history(id).await, "waiting", 0);
    terminate(&mut app, Duration::from_secs(10)).await;
    // The wait's whole time passes while the service is down.
    let due = reached + whole;
    eventually(
        "the wait's time passed while the service is down",
        || async {
            match Utc::now() >= due {
                true => Ok(()),
                false => Err(format!("due at {due}")),
            }
        },
    )
    .await;
    app.restart_binary_with(&timeout).await;

    let failed = app.wait_failed(id).await;
    assert_failure_says(&failed, "timed out waiting for the slice callback");
    let history = app.history(id).await;
    let resumed = event_time(&history, "waiting", 1);
    let ended = event_time(&history, "trial_failed", 0);
    assert!(
        ended - resumed < whole,
        "it waited its whole time again after the restart ({resumed} to {ended}): {history:#?}"
    );
}

#[tokio::test]
async fn a_callback_refused_because_the_store_cannot_write_does_not_time_its_wait_out() {
    use lcm::engine::state::Lifecycle;
    let (app, refused) = spawn_app_refusing_saves(
        |lifecycle| lifecycle == Lifecycle::Running,
        // Long enough for the first callback to come within it, however slow the test; the
        // callback is sent again as often as a poll comes.
        |s| {
            s.executor.callback_timeout_secs = 5;
            s.auth.max_callbacks_per_minute = 100_000;
        },
    )
    .await;
    let id = "refused-callback";
    let token = app.wait_at_slice_callback(id).await;
    refused.refuse(true);
    // Trial enforcement calls back, and sends it again while it is refused, until after the
    // wait's time (counted from when the service says the wait began).
    let due = event_time(&app.history(id).await, "waiting", 0) + chrono::Duration::seconds(5);
    eventually(
        "the wait's time passing while its callback is refused",
        || async {
            let answer = app.callback(id, "slice", Some(&token)).await;
            assert_detail(&answer, StatusCode::SERVICE_UNAVAILABLE);
            match Utc::now() > due {
                true => Ok(()),
                false => Err(format!("the wait's time runs until {due}")),
            }
        },
    )
    .await;
    refused.refuse(false);
    assert_ok_saying(&app.callback(id, "slice", Some(&token)).await, "accepted");
    app.wait_waiting(id, WAITING_OPERATOR).await;
    assert_never_reported_failed(&app, id);
}

#[tokio::test]
async fn a_progress_report_that_cannot_be_saved_is_refused_with_503() {
    let (app, broken) = spawn_app_with_flaky_store(AppOptions::default()).await;
    let id = "progress-unsaved";
    let token = app.wait_at_slice_callback(id).await;
    let path = format!("/trial/{id}/callback/progress");
    let report = Some(serde_json::json!({"progress": 30}));

    broken.store(true, std::sync::atomic::Ordering::SeqCst);
    let refused = app
        .call_as(Method::POST, &path, report.clone(), Some(&token))
        .await;
    broken.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_detail(&refused, StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.detail().contains("not saved"), "{refused:?}");
    assert!(
        app.trial_status(id).await["progress"].is_null(),
        "a report not saved is not shown"
    );
    let progress_events = || async { events(&app.history(id).await, "progress").len() };
    assert_eq!(
        progress_events().await,
        0,
        "a report not saved is not in the history"
    );

    // Sent again once the store writes: recorded.
    let recorded = app.call_as(Method::POST, &path, report, Some(&token)).await;
    assert_eq!(recorded.status, StatusCode::OK, "{recorded:?}");
    assert_eq!(app.trial_status(id).await["progress"], 30);
    assert_eq!(progress_events().await, 1);
}

/// A component in a loop is held back per token: beyond `auth.max_callbacks_per_minute`, its
/// requests are answered 429 with `Retry-After`, do nothing and write nothing (no history
/// event, no audit entry), while another token of the trial is still taken.
#[tokio::test]
async fn a_callback_token_used_too_often_is_answered_429_and_nothing_is_written() {
    let app = spawn_app_with_settings(|s| s.auth.max_callbacks_per_minute = 5).await;
    let id = "progress-loop";
    let token = app.wait_at_slice_callback(id).await;
    let path = format!("/trial/{id}/callback/progress");
    let report = |n: u32| Some(serde_json::json!({"progress": n}));
    for n in 1..=5 {
        let answer = app
            .call_as(Method::POST, &path, report(n), Some(&token))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{n}: {answer:?}");
    }
    let query = format!("?trial_id={id}");
    let audited = |n: usize| {
        app.audited(&query, "the trial's audit entries", move |entries| {
            entries.len() >= n
        })
    };
    let before = audited(5).await;
    let response = app
        .client
        .post(format!("{}{path}", app.address))
        .header("Authorization", &token)
        .json(&serde_json::json!({"progress": 6}))
        .send()
        .await
        .expect("answered");
    let retry_after = response.headers().get("retry-after").cloned();
    let held = read(response).await;
    assert_detail(&held, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        held.detail().contains(&format!(
            "too many requests with the callback token of trial {id}: at most 5 a minute"
        )),
        "{held:?}"
    );
    assert!(retry_after.is_some(), "{held:?}");
    // So is its callback: the token, not the route, is counted.
    let callback = app.callback(id, "slice", Some(&token)).await;
    assert_detail(&callback, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(app.trial_status(id).await["progress"], 5);

    // A token minted for the trial counts apart.
    let minted = app.post(&format!("/token/{id}"), None).await.body["Authorization"]
        .as_str()
        .expect("a minted token")
        .to_owned();
    let taken = app
        .call_as(Method::POST, &path, report(7), Some(&minted))
        .await;
    assert_eq!(taken.status, StatusCode::OK, "{taken:?}");
    let progress: Vec<serde_json::Value> = events(&app.history(id).await, "progress")
        .into_iter()
        .map(|e| e["detail"].clone())
        .collect();
    assert_eq!(progress, ["1%", "2%", "3%", "4%", "5%", "7%"]);
    // The held requests wrote nothing to the audit: the entries since are the mint's and the
    // minted token's report.
    let after = audited(before.len() + 2).await;
    assert_eq!(after.len(), before.len() + 2, "{after:#?}");
}

/// A component answered 429 sends its callback again after `Retry-After`, as the simulated
/// trial enforcement does: the callback is taken then, and the trial goes on.
#[tokio::test]
async fn a_callback_held_back_is_taken_when_sent_again_after_retry_after() {
    // A burst of 20, then one every 3 s.
    let app = spawn_app_with_settings(|s| s.auth.max_callbacks_per_minute = 20).await;
    let id = "held-back";
    let deployment = Gate::default();
    app.platform.inject(slice_deployment_fault(
        id,
        FaultAction::HoldUntil(deployment.clone()),
    ));
    app.start_trial(id).await;
    // The token trial enforcement was handed with the deployment, used up before its
    // callback comes.
    let token = app.token_once_sent(id).await;
    for _ in 0..20 {
        let answer = app
            .call_as(Method::GET, &format!("/token/{id}"), None, Some(&token))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    }
    deployment.open();
    app.wait_waiting(id, WAITING_OPERATOR).await;
    let answered: Vec<Option<u16>> = (app.platform.callbacks().into_iter())
        .filter(|c| c.url.contains(&format!("/trial/{id}/")))
        .map(|c| c.status)
        .collect();
    assert_eq!(answered, [Some(429), Some(200)]);
}

/// A component that reports in a tight loop does not fill the memory and the store: a wait
/// keeps the history events of its first 1,000 reports and one that says so; the status
/// shows every report.
#[tokio::test]
async fn a_wait_keeps_the_history_of_its_first_thousand_progress_reports() {
    let app = spawn_app_with_settings(|s| s.auth.max_callbacks_per_minute = 100_000).await;
    let id = "progress-flood";
    let token = app.wait_at_slice_callback(id).await;
    let path = format!("/trial/{id}/callback/progress");
    for n in 1..=1_002 {
        let report = serde_json::json!({"progress": n % 101, "message": format!("report {n}")});
        let answer = app
            .call_as(Method::POST, &path, Some(report), Some(&token))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{n}: {answer:?}");
    }
    let history = app.history(id).await;
    let kept = events(&history, "progress");
    assert_eq!(kept.len(), 1_001);
    assert_eq!(kept[999]["detail"], "91%: report 1000");
    assert_eq!(
        kept[1_000]["detail"],
        "more than 1000 progress reports in this wait: the next ones show in the status only"
    );
    assert_eq!(
        app.trial_status(id).await["progress_message"],
        "report 1002"
    );
}

#[tokio::test]
async fn a_slice_callback_held_by_a_deployment_that_then_failed_is_taken_after_the_restore() {
    let app = spawn_app_with_settings(single_attempt).await;
    let id = "held-then-failed";
    // Answered 500, the deployment may have made the slice: sent again after the restore with
    // its key, it is replayed without a callback, and the one that came is taken.
    fail_after_an_early_slice_callback(&app, id, 500).await;
    app.wait_waiting(id, WAITING_OPERATOR).await;
    app.wait_event(id, "signal_accepted", "arrived early").await;
}

/// Trial `id`'s slice deployment: trial enforcement calls back before it answers, then
/// answers `status`, and the trial fails; it is restored, and enforcement's next deployment
/// sends no callback. Returns the trial's token.
async fn fail_after_an_early_slice_callback(app: &TestApp, id: &str, status: u16) -> String {
    let answer = Gate::default();
    app.platform.inject(slice_deployment_fault(
        id,
        FaultAction::HoldThenStatus(answer.clone(), status),
    ));
    app.platform.inject(drop_slice_callback(id));
    let token = app.slice_deployment_in_flight(id).await;
    let early = app.callback(id, "slice", Some(&token)).await;
    assert_ok_saying(&early, "when SliceDeployment completes");
    answer.open();
    app.wait_failed(id).await;
    let restored = app.post(&format!("/debug/engine/{id}/restore"), None).await;
    assert_eq!(restored.status, StatusCode::OK, "{restored:?}");
    token
}
