//! The real `lcm` binary: `lcm demo --exit` runs a trial to FINISHED and shows each of its
//! steps once, in order (`--keep` keeps its store, `--abort` shows an abort's clean-up);
//! `lcm bench` runs a few trials and prints its table.

use std::net::TcpListener;
use std::process::Output;
use std::time::Duration;

use crate::helpers::{free_port, run_lcm, scratch_of};

/// Runs `lcm <args>` from an empty directory of its own (the demo and the benchmark must not
/// depend on the working directory).
async fn lcm(args: &[&str], limit: Duration) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    run_lcm(args, &[], dir.path(), limit).await
}

/// Panics unless `wanted` appear in `text` in this order.
fn assert_in_order(text: &str, wanted: &[&str]) {
    let mut rest = text;
    for want in wanted {
        match rest.find(want) {
            Some(at) => rest = &rest[at + want.len()..],
            None => panic!("{want:?} missing (or out of order) in:\n{text}"),
        }
    }
}

/// The steps of the trial up to the operator's last waiting point, in order.
const TO_ACTIVE: [&str; 15] = [
    "GetCallbackToken",
    "GetTrialInfo",
    "SliceDeployment",
    "waiting for the slice callback (slice created)",
    "waiting for the slice callback (slice created): ",
    "signal accepted: slice callback",
    "UpdateDeploymentSlice",
    "EnforceUavPlan",
    "UpdateUavPlanStatus",
    "CreateMeasurementJob",
    "SendKpiIdle",
    "UpdateStatusIdle",
    "waiting for the operator (active or finish)",
    "operator: POST /trial/demo-trial/active",
    "SendKpiActive",
];

/// Runs `lcm demo --exit <extra>` on a free port; panics unless it succeeds. Returns its
/// output and port.
async fn demo(extra: &[&str]) -> (String, String) {
    let port = free_port().to_string();
    let mut args = vec!["demo", "--exit", "--port", &port];
    args.extend_from_slice(extra);
    let output = lcm(&args, Duration::from_secs(60)).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    (stdout, port)
}

/// Panics unless each step is printed exactly once, as a line of its own after its time.
fn assert_once(stdout: &str, steps: &[&str]) {
    for step in steps {
        let line = format!("s  {step}\n");
        assert_eq!(stdout.matches(&line).count(), 1, "{step}:\n{stdout}");
    }
}

#[tokio::test]
async fn the_demo_runs_a_trial_to_finished_and_shows_each_step() {
    let (stdout, port) = demo(&[]).await;
    let url = format!("http://127.0.0.1:{port}");
    let mut wanted = vec![
        url.as_str(),
        "demo-api-key",
        "POST /debug/trial/schedule",
        "GET /trial/demo-trial/events",
    ];
    wanted.extend(TO_ACTIVE);
    wanted.extend([
        "UpdateStatusActive",
        "waiting for the operator (finish)",
        "operator: POST /trial/demo-trial/finish",
        "UpdateStatusStopping",
        "SendKpiFinish",
        "DeleteMeasurementJob",
        "CloseService",
        "waiting for the slice callback (slice closed)",
        "UpdateStatusFinish",
        "RemoveCallbackToken",
        "Finish\n",
        "Finished\n",
        "ACTIVATING_1 -> ACTIVATING_2 -> IDLE -> ACTIVE -> STOPPING -> FINISHED",
    ]);
    assert_in_order(&stdout, &wanted);
    // Every step once, the first one included: it used to be missed between two polls.
    assert_once(&stdout, &TO_ACTIVE[..3]);
    assert_once(&stdout, &["CloseService", "RemoveCallbackToken", "Finish"]);
    // Without --keep, the directory it printed is gone once it has exited.
    let scratch = scratch_of(&stdout);
    assert!(scratch.starts_with(std::env::temp_dir()), "{stdout}");
    assert!(!scratch.exists(), "{} is left behind", scratch.display());
    assert!(!stdout.contains("Kept"), "{stdout}");
}

#[tokio::test]
async fn the_demo_says_it_does_not_read_a_configuration_file_it_was_given() {
    let port = free_port().to_string();
    let output = lcm(
        &[
            "--config",
            "/nowhere/lcm.toml",
            "demo",
            "--exit",
            "--port",
            &port,
        ],
        Duration::from_secs(60),
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("lcm demo: /nowhere/lcm.toml is not read: --config")
            && stderr.contains("the demo runs on the built-in defaults"),
        "{stderr}"
    );

    // Nor the file LCM_CONFIG names, which an operator may have exported long ago; an empty
    // one names none, and is no reason to stop.
    for (variable, said) in [
        (
            "/nowhere/lcm.toml",
            "lcm demo: /nowhere/lcm.toml is not read: LCM_CONFIG",
        ),
        ("", ""),
    ] {
        let port = free_port().to_string();
        let dir = tempfile::tempdir().expect("tempdir");
        let output = run_lcm(
            &["demo", "--exit", "--port", &port],
            &[("LCM_CONFIG", variable)],
            dir.path(),
            Duration::from_secs(60),
        )
        .await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{variable:?}: {stderr}");
        assert!(stderr.contains(said), "{stderr}");
    }
}

#[tokio::test]
async fn the_demo_keeps_its_store_and_logs_with_keep() {
    let (stdout, _) = demo(&["--keep"]).await;
    let scratch = scratch_of(&stdout);
    let kept = format!("Kept the store and logs in {}\n", scratch.display());
    assert!(stdout.ends_with(&kept), "{stdout}");
    let store = scratch.join("data").join("lcm.sqlite3");
    let finished: String = rusqlite::Connection::open(&store)
        .expect("the store opens")
        .query_row(
            "SELECT engine_status FROM trials WHERE trial_id = 'demo-trial'",
            [],
            |row| row.get(0),
        )
        .expect("the demo's trial is in the store");
    assert_eq!(finished, "Finished");
    assert!(scratch.join("logs").is_dir());
    std::fs::remove_dir_all(&scratch).expect("remove the kept directory");
}

#[tokio::test]
async fn the_demo_aborts_its_trial_with_abort_and_shows_the_clean_up() {
    let (stdout, _) = demo(&["--abort"]).await;
    let mut wanted = vec!["POST /debug/trial/schedule"];
    wanted.extend(TO_ACTIVE);
    wanted.extend([
        "UpdateStatusActive",
        "waiting for the operator (finish)",
        "operator: POST /trial/demo-trial/abort: trial demo-trial: abort accepted",
        "abort requested: lcm demo --abort",
        "clean-up started",
        "SendKpiFinish (clean-up)",
        "DeleteMeasurementJob (clean-up)",
        "CloseService (clean-up)",
        "waiting for the slice callback (slice closed)",
        "UpdateStatusAborted (clean-up)",
        "RemoveCallbackToken (clean-up)",
        "clean-up completed",
        "Aborted\n",
        "ACTIVATING_1 -> ACTIVATING_2 -> IDLE -> ACTIVE -> ABORTED",
    ]);
    assert_in_order(&stdout, &wanted);
    assert!(!stdout.contains("UpdateStatusStopping"), "{stdout}");
    assert!(!stdout.contains("Finished\n"), "{stdout}");
}

#[tokio::test]
async fn the_demo_says_plainly_that_its_port_is_taken() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let output = lcm(
        &["demo", "--exit", "--port", &port],
        Duration::from_secs(30),
    )
    .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("already in use"), "{stderr}");
    assert!(stderr.contains(&port), "{stderr}");
}

#[tokio::test]
async fn a_small_benchmark_finishes_and_prints_its_table() {
    let output = lcm(
        &["bench", "--trials", "5", "--concurrency", "5"],
        Duration::from_secs(60),
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    assert_in_order(
        &stdout,
        &[
            "| metric | value | what is counted |",
            "| trials finished | 5 / 5 |",
            "| trials per second |",
            "| LCM overhead per step p50 / p99 / max |",
            "| LCM CPU per trial |",
            "| components + driver CPU per trial |",
            "| peak RSS |",
            "| OS threads at peak |",
            "| time to schedule |",
        ],
    );
}
