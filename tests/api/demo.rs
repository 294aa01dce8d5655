//! The real `lcm` binary: `lcm demo --exit` runs a trial to FINISHED and shows its steps in
//! order; `lcm bench` runs a few trials and prints its table.

use std::net::TcpListener;
use std::process::Output;
use std::time::Duration;

use crate::helpers::run_lcm;

/// Runs `lcm <args>` from a directory with no configuration (the demo and the benchmark must
/// not depend on the working directory).
async fn lcm(args: &[&str], limit: Duration) -> Output {
    run_lcm(args, &[], &std::env::temp_dir(), limit).await
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
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

#[tokio::test]
async fn the_demo_runs_a_trial_to_finished_and_shows_each_step() {
    let port = free_port().to_string();
    let output = lcm(
        &["demo", "--exit", "--port", &port],
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
            &format!("http://127.0.0.1:{port}"),
            "demo-api-key",
            "POST /debug/trial/schedule",
            "SliceDeployment",
            "waiting for the slice callback (slice created)",
            "waiting for the operator (active or finish)",
            "operator: POST /trial/demo-trial/active",
            "waiting for the operator (finish)",
            "operator: POST /trial/demo-trial/finish",
            "waiting for the slice callback (slice closed)",
            "FINISHED",
            "ACTIVATING_1 -> ACTIVATING_2 -> IDLE -> ACTIVE -> STOPPING -> FINISHED",
        ],
    );
    // Each step is printed once, with its elapsed time.
    assert_eq!(stdout.matches("  SliceDeployment").count(), 1, "{stdout}");
    assert!(stdout.contains("s  SliceDeployment"), "{stdout}");
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
            "| peak RSS |",
            "| OS threads at peak |",
            "| time to schedule |",
        ],
    );
}
