//! The real binary, started for tests that need a process of their own (its own metrics
//! recorder, its own stdout, its own signals).

use std::process::Stdio;
use std::time::Duration;

use lcm::sim::{Platform, SimOptions};
use reqwest::StatusCode;
use tokio::time::Instant;

use crate::helpers::*;

/// The real `lcm` binary on a free port of 127.0.0.1, in a temporary directory, against
/// simulated components, with `env` (`LCM__…` variables) over its built-in defaults; `stdout`
/// is where its stdout goes. Returns once it answers `/status`.
pub async fn spawn_binary_with(env: &[(&str, &str)], stdout: Stdio) -> TestApp {
    let platform = Platform::start(SimOptions {
        kpi_oauth2: false,
        ..SimOptions::default()
    })
    .await
    .expect("simulators");
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let address = format!("http://127.0.0.1:{port}");
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_lcm"));
    command
        .current_dir(dir.path())
        .env_remove("LCM_CONFIG")
        .env("LCM__SERVER__BIND", format!("127.0.0.1:{port}"))
        .env("LCM__SERVER__PUBLIC_URL", &address)
        .env("LCM__AUTH__API_KEY", API_KEY)
        .env("LCM__AUTH__TOKEN_SECRET", TOKEN_SECRET)
        .env("LCM__LOGGING__DIR", dir.path())
        .env("LCM__STORE__DATA_DIR", dir.path().join("data"))
        .env(
            "LCM__SERVICES__TRIAL_REPOSITORY__URL",
            format!("http://{}", platform.repository),
        )
        .env(
            "LCM__SERVICES__TRIAL_ENFORCEMENT__URL",
            format!("http://{}", platform.enforcement),
        )
        .env(
            "LCM__SERVICES__KPI_MONITORING__URL",
            format!("http://{}", platform.kpi),
        )
        .stdout(stdout)
        .stderr(Stdio::null())
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    let child = command.spawn().expect("the binary starts");

    // A client of its own, dropped here, so its connection does not stay open afterwards.
    let probe = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let up = probe
            .get(format!("{address}/status"))
            .header("Authorization", API_KEY)
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK);
        if up {
            break;
        }
        assert!(Instant::now() < deadline, "the binary did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    TestApp {
        address,
        client: reqwest::Client::new(),
        platform,
        logs: dir,
        server: Server::Process(child),
    }
}

/// Sends SIGTERM to the binary and waits for it to exit; returns how long that took.
pub async fn terminate(app: &mut TestApp, limit: Duration) -> (std::process::ExitStatus, Duration) {
    let Server::Process(child) = &mut app.server else {
        unreachable!("the binary runs as a process");
    };
    let pid = child.id().expect("pid");
    let sent = Instant::now();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .expect("kill runs");
    assert!(killed.success());
    let status = tokio::time::timeout(limit, child.wait())
        .await
        .unwrap_or_else(|_| panic!("the service did not stop within {limit:?}"))
        .expect("exit status");
    (status, sent.elapsed())
}
