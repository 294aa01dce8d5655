//! What both test targets stand on (the API tests and the browser tests): the keys every test
//! service takes, waiting for a condition, a free port, and starting the real `lcm` binary.
//! Each target uses part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use lcm::config::Role;
use tokio::process::{Child, Command};

/// `auth.api_key`: the `admin` key named `default`.
pub const API_KEY: &str = "test-api-key";
/// `auth.token_secret`: what callback tokens are signed with.
pub const TOKEN_SECRET: &str = "test-token-secret";

/// A named key of each role, in `auth.keys` of every test service: (name, key, role).
pub const ROLE_KEYS: [(&str, &str, Role); 3] = [
    ("viewer", "test-viewer-key", Role::Viewer),
    ("operator", "test-operator-key", Role::Operator),
    ("admin", "test-admin-key", Role::Admin),
];

/// The key of `role` in [`ROLE_KEYS`].
pub fn key_of(role: Role) -> &'static str {
    ROLE_KEYS
        .iter()
        .find(|(_, _, r)| *r == role)
        .map(|(_, key, _)| *key)
        .expect("every role has a test key")
}

/// A keys file (`auth.keys_file`) holding `keys`: (name, key, role).
pub fn keys_file(keys: &[(&str, &str, Role)]) -> String {
    keys.iter()
        .map(|(name, key, role)| {
            format!("[[keys]]\nname = \"{name}\"\nkey = \"{key}\"\nrole = \"{role}\"\n\n")
        })
        .collect()
}

/// Polls `check` until it gives a value; panics after 20 s naming `what` and the last state
/// `check` described. The one way the tests wait for something to happen.
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    eventually_within(
        what,
        Duration::from_secs(20),
        Duration::from_millis(15),
        check,
    )
    .await
}

/// Schedules trial `id` to start `ms` from now through `send`, which sends the start time it
/// is given and answers the status and body; returns the start time. On a busy machine the
/// request can arrive after the start time it carries: then a new one is chosen twice as far
/// ahead, as a client would.
pub async fn schedule_ahead<F, Fut>(id: &str, ms: i64, send: F) -> chrono::DateTime<chrono::Utc>
where
    F: Fn(chrono::DateTime<chrono::Utc>) -> Fut,
    Fut: Future<Output = (u16, serde_json::Value)>,
{
    use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
    let ahead = AtomicI64::new(ms);
    eventually(&format!("trial {id} scheduled"), || async {
        let ms = ahead.load(Relaxed);
        ahead.store(ms.saturating_mul(2), Relaxed);
        let start = chrono::Utc::now() + chrono::Duration::milliseconds(ms);
        let (status, body) = send(start).await;
        let detail = body["detail"].as_str().unwrap_or_default();
        match status {
            200 => Ok(start),
            400 if detail.contains("in the past") => Err(detail.to_owned()),
            _ => panic!("scheduling {id}: {status} {body}"),
        }
    })
    .await
}

/// Polls until `count` reaches `at_least` (a counter a test watches: refused writes, requests
/// a component saw, …); panics after 20 s naming `what` and the last count.
pub async fn eventually_at_least(what: &str, at_least: usize, count: impl Fn() -> usize) {
    eventually(what, || async {
        match count() {
            n if n >= at_least => Ok(()),
            n => Err(format!("{n} so far")),
        }
    })
    .await;
}

/// [`eventually`] with its own limit and pause between checks (many trials at once share
/// the machine, and a browser is read through chromedriver: those are polled gently).
pub async fn eventually_within<T, F, Fut>(
    what: &str,
    limit: Duration,
    pause: Duration,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let last = match check().await {
            Ok(value) => return value,
            Err(last) => last,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "never reached {what}; last seen: {last}"
        );
        tokio::time::sleep(pause).await;
    }
}

/// A port on 127.0.0.1 that nothing listens on (bound, then let go): for a server to take, or
/// to find closed. It is below the kernel's ephemeral range, so no connection made meanwhile
/// (the tests make thousands) can take it as its own port before the server binds it, nor
/// while a killed binary is started again on it.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000, ephemeral.max(10_001));
    (0..1000)
        .map(|_| {
            // A random pick, so that test processes running at once pick apart.
            let random = std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish();
            low + (random % u64::from(high - low)) as u16
        })
        .find(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free port below the ephemeral range")
}

/// A port on 127.0.0.1 that refuses connections, and that no server of the tests can take
/// meanwhile: below 1024, where ports are never handed out for binding port 0.
pub fn closed_port() -> u16 {
    (1..1024)
        .find(|port| {
            std::net::TcpStream::connect(("127.0.0.1", *port))
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
        })
        .expect("a closed port below 1024")
}

/// The `lcm` binary, to run in `dir`: no configuration file nor `LCM_…` variable but those it
/// is given, its stdout dropped and its stderr kept in `dir`, killed when its child is
/// dropped. Arguments and environment are the caller's.
pub fn lcm_command(dir: &Path) -> Command {
    // What it says before its log exists (a setting refused, a port in use), kept in `dir`.
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(STDERR_FILE))
        .map_or_else(|_| Stdio::null(), Stdio::from);
    let mut command = Command::new(env!("CARGO_BIN_EXE_lcm"));
    // Settings from the environment the tests run in (`LCM__LOGGING__LEVEL`, say) would reach
    // every binary: only a test's own are given.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("LCM_") {
            command.env_remove(name);
        }
    }
    command
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true);
    command
}

/// The file in the binary's directory that its standard error goes to.
const STDERR_FILE: &str = "stderr.txt";

/// A client of the service as every client should be ([`lcm::sim::lcm_client`]).
pub fn client() -> reqwest::Client {
    lcm::sim::lcm_client().build().expect("a client")
}

/// Starts `command` (see [`lcm_command`]), configured to serve 127.0.0.1:`port` with
/// [`API_KEY`], and waits until `GET /status` answers 200.
pub async fn start_lcm(command: &mut Command, port: u16) -> Child {
    let child = std::sync::Mutex::new(command.spawn().expect("the binary starts"));
    let stderr = command
        .as_std()
        .get_current_dir()
        .map(|dir| dir.join(STDERR_FILE));
    // A client of its own, dropped here, so no connection of it stays open afterwards.
    let probe = reqwest::Client::new();
    eventually("the binary answering", || async {
        let exited = child.lock().expect("not poisoned").try_wait();
        if let Ok(Some(status)) = exited {
            let said = stderr
                .as_ref()
                .and_then(|file| std::fs::read_to_string(file).ok())
                .unwrap_or_default();
            panic!("the binary exited before answering ({status}); its stderr: {said}");
        }
        let answer = probe
            .get(format!("http://127.0.0.1:{port}/status"))
            .header("Authorization", API_KEY)
            .send()
            .await;
        match answer {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(r.status().to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    child.into_inner().expect("not poisoned")
}

/// Sends `signal` (`-HUP`, `-TERM`, …) to the binary.
pub async fn send_signal(child: &Child, signal: &str) {
    let pid = child.id().expect("the binary runs");
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .await
        .expect("kill runs");
    assert!(status.success(), "{signal} sent");
}

/// Sends SIGHUP to the binary: it loads its keys again.
pub async fn hang_up(child: &Child) {
    send_signal(child, "-HUP").await;
}
