//! Tests: the API key (header raw or `Bearer`, cookie), error answers, `GET /status` and the
//! heartbeat debug endpoints.

use std::time::Duration;

use lcm::config::Role;
use lcm::engine::state::Lifecycle;
use lcm::store::Op;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

/// `GET /status` with a `Cookie` header instead of `Authorization`.
async fn status_with_cookie(app: &TestApp, cookie: &str) -> Answer {
    let response = app
        .client
        .get(format!("{}/status", app.address))
        .header("Cookie", cookie)
        .send()
        .await
        .expect("request reaches the service");
    read(response).await
}

#[tokio::test]
async fn status_without_api_key_is_401_with_detail() {
    let app = spawn_app().await;
    let answer = app.call_as(Method::GET, "/status", None, None).await;
    assert_detail(&answer, StatusCode::UNAUTHORIZED);
    assert!(answer.body.get("message").is_none(), "{answer:?}");
}

#[tokio::test]
async fn status_with_wrong_api_key_is_401_with_detail() {
    let app = spawn_app().await;
    for wrong in [
        "not-the-key",
        "Bearer not-the-key",
        "test-api-ke",
        "test-api-key2",
    ] {
        let answer = app.call_as(Method::GET, "/status", None, Some(wrong)).await;
        assert_detail(&answer, StatusCode::UNAUTHORIZED);
    }
    // A header that is not text is a wrong key, not a missing one.
    let response = app
        .client
        .get(format!("{}/status", app.address))
        .header(
            "Authorization",
            reqwest::header::HeaderValue::from_bytes(b"key-\xff").expect("a header value"),
        )
        .send()
        .await
        .expect("request reaches the service");
    let answer = read(response).await;
    assert_detail(&answer, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.detail(), "wrong API key");
}

#[tokio::test]
async fn status_accepts_the_raw_api_key_header() {
    let app = spawn_app().await;
    let answer = app
        .call_as(Method::GET, "/status", None, Some(API_KEY))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
}

#[tokio::test]
async fn status_accepts_a_bearer_api_key_header() {
    let app = spawn_app().await;
    let bearer = format!("Bearer {API_KEY}");
    let answer = app
        .call_as(Method::GET, "/status", None, Some(&bearer))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
}

#[tokio::test]
async fn status_accepts_the_api_key_in_an_authorization_cookie() {
    let app = spawn_app().await;
    let answer = status_with_cookie(&app, &format!("Authorization={API_KEY}")).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");

    let among_others = format!("theme=dark; Authorization={API_KEY}; lang=en");
    let answer = status_with_cookie(&app, &among_others).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
}

#[tokio::test]
async fn status_refuses_a_wrong_api_key_in_the_cookie() {
    let app = spawn_app().await;
    let answer = status_with_cookie(&app, "Authorization=not-the-key").await;
    assert_detail(&answer, StatusCode::UNAUTHORIZED);

    let answer = status_with_cookie(&app, &format!("authorisation={API_KEY}")).await;
    assert_detail(&answer, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn unknown_route_is_404_with_detail() {
    let app = spawn_app().await;
    let answer = app.get("/no/such/route").await;
    assert_detail(&answer, StatusCode::NOT_FOUND);

    let answer = app.post("/debug/trial/t1/unknown", None).await;
    assert_detail(&answer, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn wrong_method_is_405_with_detail() {
    let app = spawn_app().await;
    let answer = app.delete("/status").await;
    assert_detail(&answer, StatusCode::METHOD_NOT_ALLOWED);

    let answer = app.get("/debug/trial/schedule").await;
    assert_detail(&answer, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn status_has_the_documented_shape_when_idle() {
    let app = spawn_app().await;
    let answer = app.get("/status").await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let body = &answer.body;
    assert_eq!(
        body["message"],
        format!("This is Lifecycle Manager {}!", env!("CARGO_PKG_VERSION")),
        "{body}"
    );
    assert_eq!(body["Scheduler_status"], "Idle", "{body}");
    assert_eq!(body["Automatic_scheduling"], false, "{body}");
    for list in [
        "scheduled_trials",
        "Executor_Engine_instances",
        "Heartbeat_instances",
    ] {
        assert_eq!(
            body[list].as_array().map(Vec::len),
            Some(0),
            "{list} is an empty JSON array: {body}"
        );
    }
}

#[tokio::test]
async fn status_reports_scheduled_jobs_after_scheduling() {
    let app = spawn_app().await;
    let answer = app.schedule("t1", &in_ms(3_600_000)).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");

    let body = app.get("/status").await.body;
    assert_eq!(
        body["Scheduler_status"], "Scheduled job(s) initiated",
        "{body}"
    );
    assert!(body["Automatic_scheduling"].is_boolean(), "{body}");
    let jobs = body["scheduled_trials"].as_array().expect("an array");
    assert_eq!(jobs.len(), 1, "{body}");
    assert_eq!(jobs[0]["id"], "t1", "{body}");
    assert!(jobs[0]["trigger"].is_string(), "{body}");
    assert!(body["Executor_Engine_instances"].is_array(), "{body}");
    assert!(body["Heartbeat_instances"].is_array(), "{body}");
}

/// The heartbeat of `id` as listed in `/status`.
async fn heartbeat_of(app: &TestApp, id: &str) -> Option<Value> {
    let body = app.get("/status").await.body;
    body["Heartbeat_instances"]
        .as_array()
        .expect("Heartbeat_instances is an array")
        .iter()
        .find(|h| h["ID"] == id)
        .cloned()
}

#[tokio::test]
async fn added_heartbeat_reports_reachable_services_in_status() {
    let app = spawn_app().await;
    let answer = app.post("/debug/add-heartbeat?trial_id=t1", None).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert!(
        heartbeat_of(&app, "t1").await.is_some(),
        "listed right after being added"
    );

    let heartbeat = first_check(&app, "t1").await;
    let services = heartbeat["services"].as_object().expect("services object");
    assert_eq!(services.len(), 3, "{heartbeat}");
    for (name, result) in services {
        assert!(
            result.as_str().is_some_and(|r| r.starts_with("reachable")),
            "{name} is reachable: {heartbeat}"
        );
    }
    assert_eq!(heartbeat["healthy"], true, "{heartbeat}");
}

/// Waits for the first check of the heartbeat of `id`; returns its report.
async fn first_check(app: &TestApp, id: &str) -> Value {
    eventually("the heartbeat's first check", || async {
        match heartbeat_of(app, id).await {
            Some(h) if !h["last_check"].is_null() => Ok(h),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

#[tokio::test]
async fn a_heartbeat_names_the_service_it_cannot_reach() {
    let app =
        spawn_app_with_settings(|s| s.services.kpi_monitoring.url = "http://127.0.0.1:1".into())
            .await;
    let answer = app.post("/debug/add-heartbeat?trial_id=t1", None).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let heartbeat = first_check(&app, "t1").await;
    assert_eq!(heartbeat["healthy"], false, "{heartbeat}");
    let services = &heartbeat["services"];
    let kpi = services["kpi_monitoring"].as_str().unwrap_or_default();
    assert!(kpi.starts_with("unreachable: "), "{heartbeat}");
    let repository = services["trial_repository"].as_str().unwrap_or_default();
    assert!(repository.starts_with("reachable"), "{heartbeat}");
}

#[tokio::test]
async fn adding_a_heartbeat_twice_is_409() {
    let app = spawn_app().await;
    let answer = app.post("/debug/add-heartbeat?trial_id=t1", None).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let answer = app.post("/debug/add-heartbeat?trial_id=t1", None).await;
    assert_detail(&answer, StatusCode::CONFLICT);
    let body = app.get("/status").await.body;
    assert_eq!(
        body["Heartbeat_instances"].as_array().map(Vec::len),
        Some(1),
        "{body}"
    );
}

#[tokio::test]
async fn heartbeats_are_bounded_and_a_deleted_trial_takes_its_own_with_it() {
    let app = spawn_app().await;
    app.run_to_finished("gone").await;
    let answer = app.post("/debug/add-heartbeat?trial_id=gone", None).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    for n in 1..100 {
        let answer = app
            .post(&format!("/debug/add-heartbeat?trial_id=h{n}"), None)
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    }
    let answer = app.post("/debug/add-heartbeat?trial_id=h100", None).await;
    assert_detail(&answer, StatusCode::CONFLICT);
    assert!(
        answer.detail().contains("100 heartbeat instances"),
        "{answer:?}"
    );
    assert!(heartbeat_of(&app, "h100").await.is_none(), "not added");

    let answer = app.delete("/debug/engine/gone").await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert!(heartbeat_of(&app, "gone").await.is_none(), "still checking");
    assert!(
        heartbeat_of(&app, "h1").await.is_some(),
        "another's went too"
    );
    let answer = app.post("/debug/add-heartbeat?trial_id=h100", None).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
}

#[tokio::test]
async fn adding_a_heartbeat_with_a_bad_trial_id_is_400() {
    let app = spawn_app().await;
    for query in [
        "trial_id=..%2Fetc",
        "trial_id=a%20b",
        "trial_id=",
        "trial_id=t1&trial_id=t2",
        "trial_id=t1&foo=1",
    ] {
        let answer = app
            .post(&format!("/debug/add-heartbeat?{query}"), None)
            .await;
        assert_detail(&answer, StatusCode::BAD_REQUEST);
    }
    let body = app.get("/status").await.body;
    assert_eq!(
        body["Heartbeat_instances"].as_array().map(Vec::len),
        Some(0),
        "{body}"
    );
}

#[tokio::test]
async fn adding_a_heartbeat_without_trial_id_is_400() {
    let app = spawn_app().await;
    let answer = app.post("/debug/add-heartbeat", None).await;
    assert_detail(&answer, StatusCode::BAD_REQUEST);
    let answer = app.post("/debug/add-heartbeat?id=t1", None).await;
    assert_detail(&answer, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn deleting_a_heartbeat_removes_it_then_is_404() {
    let app = spawn_app().await;
    let answer = app.post("/debug/add-heartbeat?trial_id=t1", None).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");

    let answer = app.delete("/debug/heartbeat/t1").await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert!(heartbeat_of(&app, "t1").await.is_none(), "no longer listed");

    let answer = app.delete("/debug/heartbeat/t1").await;
    assert_detail(&answer, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn heartbeat_endpoints_need_the_api_key() {
    let app = spawn_app().await;
    let answer = app
        .call_as(Method::POST, "/debug/add-heartbeat?trial_id=t1", None, None)
        .await;
    assert_detail(&answer, StatusCode::UNAUTHORIZED);
    assert!(heartbeat_of(&app, "t1").await.is_none(), "nothing added");
}

/// `GET /status` with `credential` from `client`, answered whole with its `Retry-After`.
async fn status_from(
    app: &TestApp,
    client: &reqwest::Client,
    path: &str,
    credential: Option<&str>,
) -> (Answer, Option<u64>) {
    let mut request = client.get(format!("{}{path}", app.address));
    if let Some(credential) = credential {
        request = request.header("Authorization", credential);
    }
    let response = request.send().await.expect("request reaches the service");
    let retry_after = response
        .headers()
        .get("Retry-After")
        .map(|v| v.to_str().expect("text").parse().expect("whole seconds"));
    (read(response).await, retry_after)
}

async fn spawn_app_allowing_failures(per_minute: u32) -> TestApp {
    spawn_app_with_settings(move |s| s.auth.max_failures_per_minute = per_minute).await
}

#[tokio::test]
async fn failed_authentication_beyond_the_limit_is_429_and_a_right_key_waits_alike() {
    // The binary, so the throttling counter it shows counts this test's refusals alone.
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys.toml");
    std::fs::write(&keys, keys_file(&ROLE_KEYS)).expect("keys file written");
    let keys = keys.display().to_string();
    let app = spawn_binary_with(BinaryOptions {
        env: &[
            ("LCM__AUTH__MAX_FAILURES_PER_MINUTE", "3"),
            ("LCM__AUTH__KEYS_FILE", &keys),
        ],
        ..BinaryOptions::default()
    })
    .await;
    // Not the address the test's own calls come from, which must not wait.
    let client = client_from("127.0.0.4");
    for _ in 0..3 {
        let (answer, retry_after) = status_from(&app, &client, "/status", Some("guess")).await;
        assert_detail(&answer, StatusCode::UNAUTHORIZED);
        assert_eq!(retry_after, None);
    }
    let (answer, retry_after) = status_from(&app, &client, "/status", Some("guess")).await;
    assert_detail(&answer, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        answer.detail().contains("too many failed authentications"),
        "{answer:?}"
    );
    let retry_after = retry_after.expect("a Retry-After header");
    assert!(
        (1..=60).contains(&retry_after),
        "Retry-After: {retry_after}"
    );

    // While the address waits, a right key is refused alike, on a key route or a token route
    // (where it would otherwise be told it is a key): a 429 tells no guess apart. Another
    // address is served, and a callback token, which cannot be guessed, still passes.
    for (path, key) in [
        ("/status", API_KEY),
        ("/status", key_of(Role::Viewer)),
        ("/token/t1", API_KEY),
    ] {
        let (answer, retry_after) = status_from(&app, &client, path, Some(key)).await;
        assert_detail(&answer, StatusCode::TOO_MANY_REQUESTS);
        assert!(retry_after.is_some(), "{answer:?}");
    }
    let elsewhere = client_from("127.0.0.8");
    let (answer, _) = status_from(&app, &elsewhere, "/status", Some(API_KEY)).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let minted = elsewhere
        .post(format!("{}/token/t1", app.address))
        .header("Authorization", API_KEY)
        .send()
        .await
        .expect("request reaches the service");
    let minted = read(minted).await;
    assert_eq!(minted.status, StatusCode::OK, "{minted:?}");
    let token = minted.body["Authorization"]
        .as_str()
        .expect("a token")
        .to_owned();
    let (answer, _) = status_from(&app, &client, "/token/t1", Some(&token)).await;
    assert_token_taken(&answer);
    // Every kind of failure is limited: no credentials, a bad callback token.
    let (answer, _) = status_from(&app, &client, "/status", None).await;
    assert_detail(&answer, StatusCode::TOO_MANY_REQUESTS);
    let (answer, _) = status_from(&app, &client, "/token/t1", Some("not.a.token")).await;
    assert_detail(&answer, StatusCode::TOO_MANY_REQUESTS);

    // A guesser's refused changes are counted, not written to the audit log one by one.
    let guess = |client: &reqwest::Client| {
        client
            .post(format!("{}/debug/trial/schedule", app.address))
            .header("Authorization", "guess")
            .json(&serde_json::json!({"trial_id": "guessed", "start_time": in_ms(3_600_000)}))
            .send()
    };
    let throttled = guess(&client).await.expect("request reaches the service");
    assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
    // Another address's refusal is written after it: once that is there, so would it be.
    let other = guess(&client_from("127.0.0.9"))
        .await
        .expect("request reaches the service");
    assert_eq!(other.status(), StatusCode::UNAUTHORIZED);
    let entries = app
        .audited(
            "?actor=anonymous&limit=500",
            "the other address's refusal in the log",
            |entries| entries.iter().any(|e| e["outcome"] == 401),
        )
        .await;
    assert!(entries.iter().all(|e| e["outcome"] != 429), "{entries:#?}");
    let counted = series_value(&scrape(&app).await, "lcm_requests_throttled_total");
    assert_eq!(counted, Some(7.0), "the seven 429 answers above");
}

#[tokio::test]
async fn failed_token_checks_count_and_the_limit_is_per_client_address() {
    let app = spawn_app_allowing_failures(3).await;
    let first = client_from("127.0.0.2");
    for _ in 0..3 {
        let (answer, _) = status_from(&app, &first, "/token/t1", Some("forged")).await;
        assert_detail(&answer, StatusCode::UNAUTHORIZED);
    }
    let (answer, retry_after) = status_from(&app, &first, "/status", Some("guess")).await;
    assert_detail(&answer, StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after.is_some(), "{answer:?}");

    let second = client_from("127.0.0.3");
    let (answer, _) = status_from(&app, &second, "/status", Some("guess")).await;
    assert_detail(&answer, StatusCode::UNAUTHORIZED);
}

/// The token passed every check of its own: `GET /token/t1` answers about the trial, which
/// has no engine in these tests (404), not about the token (401).
fn assert_token_taken(answer: &Answer) {
    assert_detail(answer, StatusCode::NOT_FOUND);
    assert!(answer.detail().contains("has no engine"), "{answer:?}");
}

/// The real `lcm` binary, run from its own directory with `lcm.toml` (its logs go to `logs/`
/// there), killed when the test ends.
struct Binary {
    dir: tempfile::TempDir,
    child: tokio::process::Child,
    app: TestApp,
}

impl Binary {
    /// Writes the configuration (`auth` is the body of its `[auth]` table, which may go on with
    /// `[[auth.keys]]` tables), starts the binary and waits until `ready_key` is let in.
    async fn start(dir: tempfile::TempDir, auth: &str, ready_key: &str) -> Self {
        let port = free_port();
        std::fs::write(
            dir.path().join("lcm.toml"),
            format!(
                "[server]\nbind = \"127.0.0.1:{port}\"\n\n\
                 [store]\ndata_dir = \"data\"\n\n\
                 [logging]\ndir = \"logs\"\n\n\
                 [auth]\n{auth}\n"
            ),
        )
        .expect("configuration written");
        // Started first: it also readies the HTTP client's TLS.
        let platform = lcm::sim::Platform::start(Default::default())
            .await
            .expect("simulators");
        let child = lcm_command(dir.path())
            .args(["serve", "--config", "lcm.toml"])
            .spawn()
            .expect("the binary starts");
        let app = TestApp {
            address: format!("http://127.0.0.1:{port}"),
            client: client(),
            platform,
            logs: tempfile::tempdir().expect("tempdir"),
            server: Server::Task(tokio::spawn(async {})),
        };
        let binary = Self { dir, child, app };
        binary.wait_for_key(ready_key, StatusCode::OK).await;
        binary
    }

    /// The status of `GET /status` with `key`, or `None` while nothing answers.
    async fn status_with(&self, key: &str) -> Option<StatusCode> {
        self.app
            .client
            .get(format!("{}/status", self.app.address))
            .header("Authorization", key)
            .send()
            .await
            .ok()
            .map(|r| r.status())
    }

    /// Polls `GET /status` with `key` until it answers `status`.
    async fn wait_for_key(&self, key: &str, status: StatusCode) {
        eventually(&format!("{key} answering {status}"), || async {
            match self.status_with(key).await {
                Some(got) if got == status => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }

    /// Polls the log file until it holds `text`; returns the log.
    async fn wait_for_log(&self, text: &str) -> String {
        eventually(&format!("the log holding {text:?}"), || async {
            let log = self.log();
            match log.contains(text) {
                true => Ok(log),
                false => Err(log),
            }
        })
        .await
    }

    /// The second line that says a reload was refused, once it is written.
    async fn second_refused_reload(&self) -> String {
        self.refused_reload(2).await
    }

    /// The `n`th line that says a reload was refused, once it is written.
    async fn refused_reload(&self, n: usize) -> String {
        eventually(&format!("refusal {n} in the log"), || async {
            let log = self.log();
            log.lines()
                .filter(|line| line.contains("API keys not reloaded"))
                .nth(n - 1)
                .map(str::to_owned)
                .ok_or(log)
        })
        .await
    }

    fn write(&self, name: &str, content: &str) {
        std::fs::write(self.dir.path().join(name), content).expect("file written");
    }

    /// Everything the binary logged to its file so far.
    fn log(&self) -> String {
        let Ok(entries) = std::fs::read_dir(self.dir.path().join("logs")) else {
            return String::new();
        };
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("lcm"))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .collect()
    }
}

#[tokio::test]
async fn the_binary_takes_its_keys_and_token_secret_from_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("api_key"), "file-admin-key\n").unwrap();
    std::fs::write(dir.path().join("token_secret"), "file-token-secret\n").unwrap();
    std::fs::write(
        dir.path().join("keys.toml"),
        keys_file(&[("watcher", "file-viewer-key", Role::Viewer)]),
    )
    .unwrap();
    let auth = "api_key = \"config-admin-key\"\n\
                api_key_file = \"api_key\"\n\
                token_secret_file = \"token_secret\"\n\
                keys_file = \"keys.toml\"\n\n\
                [[auth.keys]]\nname = \"ops\"\nkey = \"config-operator-key\"\nrole = \"operator\"\n";
    let binary = Binary::start(dir, auth, "file-admin-key").await;
    let app = &binary.app;

    // The file's key replaces auth.api_key.
    let answer = app
        .call_as(Method::GET, "/status", None, Some("config-admin-key"))
        .await;
    assert_detail(&answer, StatusCode::UNAUTHORIZED);
    let answer = app
        .call_as(Method::GET, "/status", None, Some("file-viewer-key"))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let answer = app
        .call_as(
            Method::POST,
            "/trial/scheduling",
            None,
            Some("file-viewer-key"),
        )
        .await;
    assert_detail(&answer, StatusCode::FORBIDDEN);
    assert!(answer.detail().contains("key 'watcher'"), "{answer:?}");
    let answer = app
        .call_as(
            Method::POST,
            "/trial/t1/active",
            None,
            Some("config-operator-key"),
        )
        .await;
    assert_detail(&answer, StatusCode::NOT_FOUND);

    // Tokens are signed with the file's secret.
    let token = signed_token("file-token-secret", "t1", 3600);
    let answer = app
        .call_as(Method::GET, "/token/t1", None, Some(&token))
        .await;
    assert_token_taken(&answer);
    let token = signed_token("config-token-secret", "t1", 3600);
    let answer = app
        .call_as(Method::GET, "/token/t1", None, Some(&token))
        .await;
    assert_detail(&answer, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn sighup_reloads_the_keys_and_a_bad_reload_keeps_the_old_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("keys.toml"),
        keys_file(&[("old", "old-key", Role::Viewer)]),
    )
    .unwrap();
    let auth = |extra: &str, secret: &str| {
        format!(
            "api_key = \"admin-key\"\ntoken_secret = \"{secret}\"\nkeys_file = \"keys.toml\"\n{extra}"
        )
    };
    let mut binary = Binary::start(dir, &auth("", "first-secret"), "old-key").await;
    let token = binary.app.post_as("/token/t1", "admin-key").await;
    // An event stream opened with a key ends when the key is taken away.
    let scheduled = binary
        .app
        .call_as(
            Method::POST,
            "/debug/trial/schedule",
            Some(serde_json::json!({"trial_id": "watched", "start_time": in_ms(3_600_000)})),
            Some("admin-key"),
        )
        .await;
    assert_eq!(scheduled.status, StatusCode::OK, "{scheduled:?}");
    let stream = binary
        .app
        .client
        .get(format!("{}/trial/watched/events", binary.app.address))
        .header("Authorization", "old-key")
        .send()
        .await
        .expect("the stream opens");
    assert_eq!(stream.status(), StatusCode::OK);
    let watching = tokio::spawn(read_sse(stream, |_| false, Duration::from_secs(30)));

    // A key added to the keys file and one added to the configuration work, a removed one
    // stops working; a changed token secret is not taken (tokens handed out keep working).
    binary.write(
        "keys.toml",
        &keys_file(&[("new", "new-key", Role::Operator)]),
    );
    binary.write(
        "lcm.toml",
        &std::fs::read_to_string(binary.dir.path().join("lcm.toml"))
            .unwrap()
            .replace(
                &auth("", "first-secret"),
                &auth(
                    "\n[[auth.keys]]\nname = \"cfg\"\nkey = \"cfg-key\"\nrole = \"viewer\"\n",
                    "second-secret",
                ),
            ),
    );
    hang_up(&binary.child).await;
    binary.wait_for_key("new-key", StatusCode::OK).await;
    binary
        .wait_for_log("API keys reloaded: 3 key(s) in force; added: cfg, new; removed: old")
        .await;
    assert_eq!(
        binary.status_with("old-key").await,
        Some(StatusCode::UNAUTHORIZED)
    );
    // Its keep-alive comments would go on for ever: a bound on the whole, not on each chunk.
    let seen = tokio::time::timeout(Duration::from_secs(60), watching)
        .await
        .expect("the stream ended with its key")
        .expect("the stream was read to its end");
    assert!(seen.contains("event: scheduled"), "{seen}");
    assert_eq!(binary.status_with("cfg-key").await, Some(StatusCode::OK));
    assert_eq!(binary.status_with("admin-key").await, Some(StatusCode::OK));
    // The keys a reload brought are hidden where they are pasted, as the first ones are.
    let pasted = binary
        .app
        .call_as(
            Method::POST,
            "/debug/trial/schedule",
            Some(serde_json::json!({"trial_id": "pasted", "start_time": "new-key cfg-key"})),
            Some("admin-key"),
        )
        .await;
    assert_eq!(pasted.status, StatusCode::BAD_REQUEST, "{pasted:?}");
    let audit = binary
        .app
        .call_as(
            Method::GET,
            "/audit?trial_id=pasted",
            None,
            Some("admin-key"),
        )
        .await;
    let detail = audit.body["entries"][0]["detail"]
        .as_str()
        .unwrap_or_default();
    assert!(detail.contains("[redacted] [redacted]"), "{audit:?}");
    let refused = binary.wait_for_log("trial=\"pasted\"").await;
    for secret in ["new-key", "cfg-key"] {
        assert!(!refused.contains(secret), "{secret} in the log: {refused}");
    }
    let answer = binary
        .app
        .call_as(Method::GET, "/token/t1", None, Some(&token))
        .await;
    assert_token_taken(&answer);
    assert!(
        binary.child.try_wait().expect("waits").is_none(),
        "still running"
    );

    // A keys file that fails validation leaves the keys as they were, and says why.
    binary.write(
        "keys.toml",
        "[[keys]]\nname = \"half\"\nrole = \"viewer\"\n",
    );
    hang_up(&binary.child).await;
    let log = binary.wait_for_log("API keys not reloaded").await;
    assert!(log.contains("keys.toml"), "{log}");
    assert!(
        log.contains("exactly one of `key` and `key_sha256`"),
        "{log}"
    );
    // A configuration with several problems says them all, on the one line, so a log
    // shipper that reads lines keeps them.
    binary.write(
        "keys.toml",
        &keys_file(&[("new", "new-key", Role::Operator)]),
    );
    let config = std::fs::read_to_string(binary.dir.path().join("lcm.toml")).unwrap();
    binary.write(
        "lcm.toml",
        &config.replace(
            "role = \"viewer\"",
            "role = \"root\"\n[[auth.keys]]\nname = \"two\"\nkey = \"two-key\"\nrole = \"boss\"",
        ),
    );
    hang_up(&binary.child).await;
    let line = binary.second_refused_reload().await;
    assert!(
        line.contains("auth.keys[0].role") && line.contains("auth.keys[1].role"),
        "{line}"
    );
    assert_eq!(binary.status_with("new-key").await, Some(StatusCode::OK));
    assert_eq!(binary.status_with("cfg-key").await, Some(StatusCode::OK));
    assert!(
        binary.child.try_wait().expect("waits").is_none(),
        "still running"
    );
    for secret in [
        "admin-key",
        "new-key",
        "cfg-key",
        "old-key",
        "first-secret",
        "second-secret",
    ] {
        assert!(!log.contains(secret), "{secret} in the log: {log}");
    }
}

#[tokio::test]
async fn a_reload_that_would_let_the_placeholder_in_keeps_the_keys_and_short_keys_are_warned_of() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("api_key"), "admin-key-from-a-file\n").unwrap();
    std::fs::write(
        dir.path().join("keys.toml"),
        keys_file(&[("watcher", "watcher-key-long-enough", Role::Viewer)]),
    )
    .unwrap();
    let auth = "api_key_file = \"api_key\"\nkeys_file = \"keys.toml\"\ntoken_secret = \"s3\"";
    let binary = Binary::start(dir, auth, "admin-key-from-a-file").await;
    let placeholder = "Please_change_this";

    // The key file's line lost: the reload would make the built-in placeholder the admin key.
    let config = std::fs::read_to_string(binary.dir.path().join("lcm.toml")).unwrap();
    binary.write(
        "lcm.toml",
        &config.replace("api_key_file = \"api_key\"\n", ""),
    );
    hang_up(&binary.child).await;
    let log = binary.wait_for_log("API keys not reloaded").await;
    assert!(
        log.contains("auth.api_key") && log.contains("placeholder"),
        "{log}"
    );
    assert_eq!(
        binary.status_with(placeholder).await,
        Some(StatusCode::UNAUTHORIZED)
    );
    assert_eq!(
        binary.status_with("admin-key-from-a-file").await,
        Some(StatusCode::OK)
    );

    // Nor may a named key be the placeholder.
    binary.write("lcm.toml", &config);
    binary.write("keys.toml", &keys_file(&[("ph", placeholder, Role::Admin)]));
    hang_up(&binary.child).await;
    let line = binary.second_refused_reload().await;
    assert!(
        line.contains("auth.keys_file")
            && line.contains("key 'ph' would be the built-in placeholder with the admin role"),
        "{line}"
    );
    assert_eq!(
        binary.status_with(placeholder).await,
        Some(StatusCode::UNAUTHORIZED)
    );

    // A key short enough to guess is taken, and warned of by name.
    binary.write("keys.toml", &keys_file(&[("tiny", "abc", Role::Viewer)]));
    hang_up(&binary.child).await;
    let log = binary.wait_for_log("SIGHUP: key 'tiny'").await;
    assert!(log.contains("3 character(s) long"), "{log}");
    assert_eq!(binary.status_with("abc").await, Some(StatusCode::OK));
    assert!(!log.contains("admin-key-from-a-file"), "{log}");
}

/// Trial ids are shown to every viewer: a reload does not put in force a key that is the id of
/// a trial the service holds, in memory or only in its store, and says which key to change
/// without naming the trial.
#[tokio::test]
async fn a_reload_refuses_a_key_that_is_the_id_of_a_held_trial() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A trial that ended before this start: only the store holds it, and `/trials` lists it.
    let ended = "ended-before-this-start-4711";
    let record = record(ended, Lifecycle::Finished, chrono::Utc::now());
    store_in(
        &dir.path().join("data"),
        vec![Op::PutTrial(Box::new(record))],
    );
    let watcher = ("watcher", "watcher-key-long-enough", Role::Viewer);
    std::fs::write(dir.path().join("keys.toml"), keys_file(&[watcher])).unwrap();
    let admin = "admin-key-long-enough";
    let auth = format!("api_key = \"{admin}\"\nkeys_file = \"keys.toml\"\ntoken_secret = \"s3\"");
    let binary = Binary::start(dir, &auth, admin).await;
    let id = "pasted-as-a-trial-id-0815";
    let body = json!({"trial_id": id, "start_time": in_ms(3_600_000)});
    let made = binary
        .app
        .call_as(
            Method::POST,
            "/debug/trial/schedule",
            Some(body),
            Some(admin),
        )
        .await;
    assert_eq!(made.status, StatusCode::OK, "{made:?}");
    // A heartbeat's id: `/status` shows those to every viewer.
    let beat = "heartbeat-id-0815-long-enough";
    let added = (binary.app)
        .call_as(
            Method::POST,
            &format!("/debug/add-heartbeat?trial_id={beat}"),
            None,
            Some(admin),
        )
        .await;
    assert_eq!(added.status, StatusCode::OK, "{added:?}");

    let offer = |key: &str| {
        binary.write(
            "keys.toml",
            &keys_file(&[watcher, ("newcomer", key, Role::Viewer)]),
        );
        hang_up(&binary.child)
    };
    // The trial's id, a key its id holds (the id would show it), the heartbeat's id.
    let refused = [
        (id, "is the id of a trial"),
        ("as-a-trial-id", "is part of the id of a trial"),
        (beat, "is the id of a trial"),
        (ended, "is the id of a trial"),
        ("before-this-start", "is part of the id of a trial"),
    ];
    for (n, (key, says)) in refused.into_iter().enumerate() {
        offer(key).await;
        let line = binary.refused_reload(n + 1).await;
        assert!(
            line.contains("auth.keys_file") && line.contains(&format!("key 'newcomer' {says}")),
            "{line}"
        );
        assert!(!line.contains(key), "{line}");
        assert_eq!(
            binary.status_with(key).await,
            Some(StatusCode::UNAUTHORIZED)
        );
    }

    // Another key is taken.
    let other = "newcomer-key-long-enough";
    offer(other).await;
    binary.wait_for_key(other, StatusCode::OK).await;
}

#[tokio::test]
async fn a_placeholder_key_already_in_force_gains_no_role_by_a_reload() {
    let placeholder = "Please_change_this";
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("keys.toml"),
        keys_file(&[("ph", placeholder, Role::Viewer)]),
    )
    .unwrap();
    let auth =
        "api_key = \"admin-key-long-enough\"\nkeys_file = \"keys.toml\"\ntoken_secret = \"s3\"";
    let binary = Binary::start(dir, auth, placeholder).await;
    binary
        .wait_for_log("key 'ph' is the built-in placeholder")
        .await;
    binary.write("keys.toml", &keys_file(&[("ph", placeholder, Role::Admin)]));
    hang_up(&binary.child).await;
    let log = binary.wait_for_log("API keys not reloaded").await;
    assert!(log.contains("with the admin role"), "{log}");
    let audit = binary
        .app
        .call_as(Method::GET, "/audit", None, Some(placeholder))
        .await;
    assert_eq!(
        audit.status,
        StatusCode::FORBIDDEN,
        "still a viewer: {audit:?}"
    );
}

#[tokio::test]
async fn a_refused_callback_is_in_the_log_with_its_trial_and_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = Binary::start(
        dir,
        "api_key = \"admin-key\"\ntoken_secret = \"the-secret\"\n",
        "admin-key",
    )
    .await;
    let forged = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ0OSJ9.c2lnbmF0dXJl";
    let answer = binary
        .app
        .call_as(Method::POST, "/trial/t9/callback/slice", None, Some(forged))
        .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{answer:?}");
    // A line break in what the client wrote stays inside the line.
    let answer = binary
        .app
        .call_as(
            Method::POST,
            "/trial/t8%0AERROR%20forged/callback/slice",
            None,
            Some(forged),
        )
        .await;
    assert!(answer.status.is_client_error(), "{answer:?}");
    let log = binary.wait_for_log("t8\\nERROR forged").await;
    let line = log
        .lines()
        .find(|l| l.contains("request refused") && l.contains("t9"))
        .unwrap_or_default();
    for part in ["trial=\"t9\"", "status=401", "/callback/slice"] {
        assert!(line.contains(part), "{part}: {line}");
    }
    assert!(
        !log.lines().any(|l| l.starts_with("ERROR forged")),
        "a line of the client's own: {log}"
    );
    assert!(!log.contains(forged), "the token is not logged");
}

#[tokio::test]
async fn a_bad_secret_file_stops_start_up_naming_the_key_and_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys.toml");
    std::fs::write(
        &keys,
        "[[keys]]\nname = \"ci\"\nkey = 31415926\nrole = \"viewer\"\n",
    )
    .unwrap();
    let missing = dir.path().join("no-such-file");
    for (env, path, key) in [
        ("LCM__AUTH__KEYS_FILE", &keys, "auth.keys_file"),
        ("LCM__AUTH__API_KEY_FILE", &missing, "auth.api_key_file"),
        (
            "LCM__AUTH__TOKEN_SECRET_FILE",
            &missing,
            "auth.token_secret_file",
        ),
    ] {
        let path = path.display().to_string();
        let bind = format!("127.0.0.1:{}", free_port());
        let output = run_lcm(
            &["serve"],
            &[(env, &path), ("LCM__SERVER__BIND", &bind)],
            dir.path(),
            Duration::from_secs(30),
        )
        .await;
        assert!(!output.status.success(), "{key}: start-up stops");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&format!("`{key}`")), "{stderr}");
        assert!(stderr.contains(&path), "{stderr}");
        assert!(!stderr.contains("31415926"), "the secret leaked: {stderr}");
    }
}

/// `POST {path}` with `credential` from `client`.
async fn post_from(
    app: &TestApp,
    client: &reqwest::Client,
    path: &str,
    credential: Option<&str>,
) -> Answer {
    let mut request = client
        .post(format!("{}{path}", app.address))
        .header("Origin", &app.address);
    if let Some(credential) = credential {
        request = request.header("Authorization", credential);
    }
    read(request.send().await.expect("request reaches the service")).await
}

#[tokio::test]
async fn a_client_not_let_in_is_counted_whatever_it_asks_for_and_fills_no_log() {
    let app = spawn_app_allowing_failures(3).await;
    let client = client_from("127.0.0.5");
    let bad_path = "/trial/not%20an%20id/callback/slice";
    // A console path that names nothing: its own 404 page, not written down.
    let answer = post_from(&app, &client, "/ui/no/such/page", None).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND, "{answer:?}");
    // A token route whose trial id is malformed, without a token and with a forged one, and
    // a console form without a session: each a failed authentication, not a 400 or a page.
    let answer = post_from(&app, &client, bad_path, None).await;
    assert_detail(&answer, StatusCode::UNAUTHORIZED);
    let answer = post_from(&app, &client, bad_path, Some("forged")).await;
    assert_detail(&answer, StatusCode::UNAUTHORIZED);
    assert!(answer.detail().contains("token"), "{answer:?}");
    let answer = post_from(&app, &client, "/ui/trials/t1/actions/abort", None).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{answer:?}");
    for path in [bad_path, "/ui/trials/t1/actions/abort", "/ui/sign-out"] {
        let answer = post_from(&app, &client, path, None).await;
        assert_eq!(
            answer.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{path}: {answer:?}"
        );
    }

    // A token this service signed names its caller: the malformed path is the mistake (400),
    // written down under the trial it speaks for.
    let token = signed_token(TOKEN_SECRET, "t9", 600);
    let answer = post_from(&app, &client_from("127.0.0.6"), bad_path, Some(&token)).await;
    assert_detail(&answer, StatusCode::BAD_REQUEST);
    app.audited(
        "?actor=callback:t9",
        "the signed caller's refusal in the log",
        |entries| entries.iter().any(|e| e["outcome"] == 400),
    )
    .await;
    let anonymous = app
        .audited("?actor=anonymous", "the refusals written before it", |_| {
            true
        })
        .await;
    assert_eq!(
        anonymous.len(),
        3,
        "only the refusals before the limit: {anonymous:#?}"
    );
    assert!(
        anonymous.iter().all(|e| e["outcome"] == 401),
        "{anonymous:#?}"
    );
}
