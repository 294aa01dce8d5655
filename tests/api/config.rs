//! Tests: the first hour with lcm. A typo in a configuration key or a value of the wrong type
//! stops start-up naming the key, where it was set and what it accepts; a service that cannot
//! be reached is named with its URL and the cause; the commands' help says what each does.

use std::path::Path;
use std::time::Duration;

use lcm::sim::{Component, Fault, FaultAction};
use reqwest::StatusCode;

use crate::helpers::*;

/// Runs the binary (bound to a free port) in `dir` until it exits; it must fail. Returns what
/// it wrote to stderr.
async fn refused(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let bind = format!("127.0.0.1:{}", free_port());
    let mut env = env.to_vec();
    env.insert(0, ("LCM__SERVER__BIND", &bind));
    let output = run_lcm(args, &env, dir, Duration::from_secs(20)).await;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "{args:?} {env:?} started: {stderr}"
    );
    stderr
}

/// The stderr lines of a refused start, without the `lcm: ` mark.
fn lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .map(|line| line.strip_prefix("lcm: ").unwrap_or(line))
        .collect()
}

#[tokio::test]
async fn a_typo_in_a_key_stops_start_up_naming_the_key_meant() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stderr = refused(dir.path(), &[], &[("LCM__EXECUTOR__REQUEST_TIMEOUT", "5")]).await;
    assert_eq!(
        lines(&stderr),
        [
            "environment variable LCM__EXECUTOR__REQUEST_TIMEOUT: `executor.request_timeout` is not a setting; did you mean `executor.request_timeout_secs` (LCM__EXECUTOR__REQUEST_TIMEOUT_SECS)?"
        ]
    );

    let file = dir.path().join("lcm.toml");
    std::fs::write(&file, "[executor]\nrequest_timeuot_secs = 5\n").expect("written");
    let named = file.to_str().expect("path");
    let expected = format!(
        "configuration key `executor.request_timeuot_secs` (in {named}) is not a setting; did you mean `executor.request_timeout_secs`?"
    );
    let stderr = refused(dir.path(), &["--config", named], &[]).await;
    assert_eq!(lines(&stderr), [expected.as_str()]);
    let stderr = refused(dir.path(), &[], &[("LCM_CONFIG", named)]).await;
    assert_eq!(lines(&stderr), [expected.as_str()]);

    std::fs::create_dir_all(dir.path().join("config")).expect("config dir");
    std::fs::write(
        dir.path().join("config/default.toml"),
        "[[auth.keys]]\nname = \"ops\"\nkey = \"k\"\nrole = \"operator\"\nrol = \"admin\"\n",
    )
    .expect("written");
    let stderr = refused(dir.path(), &[], &[]).await;
    assert_eq!(
        lines(&stderr),
        [
            "configuration key `auth.keys[0].rol` (in config/default.toml of the working directory) is not a setting; did you mean `auth.keys[0].role`?"
        ]
    );
}

#[tokio::test]
async fn a_value_of_the_wrong_type_names_the_key_where_it_was_set_and_what_it_accepts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stderr = refused(
        dir.path(),
        &[],
        &[("LCM__EXECUTOR__REQUEST_TIMEOUT_SECS", "abc")],
    )
    .await;
    assert_eq!(
        lines(&stderr),
        [
            "configuration key `executor.request_timeout_secs` (from environment variable LCM__EXECUTOR__REQUEST_TIMEOUT_SECS): 'abc' is not a whole number"
        ]
    );

    let file = dir.path().join("lcm.toml");
    std::fs::write(
        &file,
        "[executor]\ndisable_vnf = \"maybe\"\n\n[logging]\nformat = \"xml\"\n\n[[auth.keys]]\nname = \"ops\"\nkey = \"k\"\nrole = \"root\"\n",
    )
    .expect("written");
    let named = file.to_str().expect("path");
    let stderr = refused(dir.path(), &[], &[("LCM_CONFIG", named)]).await;
    assert_eq!(
        lines(&stderr),
        [
            format!(
                "configuration key `auth.keys[0].role` (in {named}): 'root' is not one of: viewer, operator, admin"
            ),
            format!(
                "configuration key `executor.disable_vnf` (in {named}): 'maybe' is not a boolean (true or false)"
            ),
            format!(
                "configuration key `logging.format` (in {named}): 'xml' is not one of: text, json"
            ),
        ],
        "every problem at once"
    );

    let stderr = refused(
        dir.path(),
        &[],
        &[("LCM__SERVICES__KPI_MONITORING__USERNAME", "lcm")],
    )
    .await;
    assert_eq!(
        lines(&stderr),
        [
            "configuration key `services.kpi_monitoring.password`: missing: `services.kpi_monitoring.username` is set, and username and password go together"
        ]
    );

    // Values that cannot work are told all at once too.
    let stderr = refused(
        dir.path(),
        &[],
        &[
            ("LCM__SERVER__MAX_CONNECTIONS", "0"),
            ("LCM__LOGGING__LEVEL", "loud"),
            ("LCM__SERVICES__KPI_MONITORING__APIKEY", ""),
        ],
    )
    .await;
    assert_eq!(
        lines(&stderr),
        [
            "configuration key `server.max_connections` (from environment variable LCM__SERVER__MAX_CONNECTIONS): must be between 1 and 10000000",
            "configuration key `logging.level` (from environment variable LCM__LOGGING__LEVEL): 'loud' is not a log level or filter",
            "configuration key `services.kpi_monitoring.apikey` (from environment variable LCM__SERVICES__KPI_MONITORING__APIKEY): must not be empty: leave it out to send no credential",
        ],
        "every value that cannot work at once"
    );
}

#[tokio::test]
async fn a_port_already_taken_names_the_key_that_chose_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let addr = taken.local_addr().expect("its address").to_string();
    let stderr = refused(dir.path(), &[], &[("LCM__SERVER__BIND", &addr)]).await;
    assert!(
        stderr.contains(&format!(
            "configuration key `server.bind`: cannot listen on {addr}"
        )),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_missing_configuration_file_says_whether_the_flag_or_the_variable_named_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nowhere.toml");
    let missing = missing.to_str().expect("path");
    let stderr = refused(dir.path(), &["--config", missing], &[]).await;
    assert_eq!(
        lines(&stderr),
        [format!(
            "--config {missing}: there is no configuration file there"
        )]
    );
    let stderr = refused(dir.path(), &[], &[("LCM_CONFIG", missing)]).await;
    assert_eq!(
        lines(&stderr),
        [format!(
            "LCM_CONFIG={missing}: there is no configuration file there"
        )]
    );
    let stderr = refused(dir.path(), &[], &[("LCM_CONFIG", "")]).await;
    assert_eq!(
        lines(&stderr),
        [
            "the environment variable LCM_CONFIG is empty: give the configuration file's path, or unset it to run without one"
        ]
    );
    // A working directory's config/default.toml that is not a file is not passed over.
    let working = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(working.path().join("config/default.toml")).expect("a directory");
    let stderr = refused(working.path(), &[], &[]).await;
    assert_eq!(
        lines(&stderr),
        [
            "configuration file config/default.toml: is there but is not a file that can be read (a directory, or a link to nothing)"
        ]
    );
    // The flag is taken over the variable, empty or not, also after `serve`.
    for args in [&["--config", missing][..], &["serve", "--config", missing]] {
        for variable in ["", "/nowhere/else.toml"] {
            let stderr = refused(dir.path(), args, &[("LCM_CONFIG", variable)]).await;
            assert_eq!(
                lines(&stderr),
                [format!(
                    "--config {missing}: there is no configuration file there"
                )],
                "{args:?} with LCM_CONFIG={variable:?}"
            );
        }
    }
}

#[tokio::test]
async fn each_command_says_what_it_does_with_an_example() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (args, does, example) in [
        (
            &["--help"][..],
            "Without a command it runs the service",
            "  LCM__AUTH__API_KEY=a-long-random-key lcm --config /etc/lcm/lcm.toml",
        ),
        (
            &["demo", "--help"][..],
            "Runs one trial from schedule to FINISHED",
            "  lcm demo --port 5050 --exit",
        ),
        (
            &["bench", "--help"][..],
            "Measures the Lifecycle Manager under load",
            "  lcm bench --trials 1000 --concurrency 100",
        ),
    ] {
        let output = run_lcm(args, &[], dir.path(), Duration::from_secs(20)).await;
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{args:?}: {help}");
        assert!(help.contains(does), "{args:?}: {help}");
        let example_follows = help
            .split_once("Example:\n")
            .is_some_and(|(_, rest)| rest.lines().next() == Some(example));
        assert!(example_follows, "{args:?}: {help}");
    }
}

/// An app whose trial repository is at `url`.
async fn app_with_registry_at(url: String) -> TestApp {
    spawn_app_with_settings(move |s| s.services.trial_repository.url = url).await
}

#[tokio::test]
async fn an_unreachable_registry_is_named_with_its_url_and_the_cause() {
    let port = closed_port();
    let app = app_with_registry_at(format!("http://127.0.0.1:{port}")).await;

    let answer = app.post("/debug/trial/t1/schedule", None).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{answer:?}");
    assert_eq!(
        answer.detail(),
        format!(
            "trial repository: trial_repository unreachable at http://127.0.0.1:{port}/trial/t1/: connection refused"
        )
    );

    let answer = app.post("/debug/trial/schedule-all", None).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{answer:?}");
    assert_eq!(
        answer.detail(),
        format!(
            "trial repository: trial_repository unreachable at http://127.0.0.1:{port}/trial/: connection refused"
        )
    );
}

#[tokio::test]
async fn a_registry_host_that_does_not_resolve_is_named_with_the_dns_failure() {
    let app = app_with_registry_at("http://does-not-exist.invalid".into()).await;
    let answer = app.post("/debug/trial/t1/schedule", None).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{answer:?}");
    assert!(
        answer.detail().starts_with(
            "trial repository: trial_repository unreachable at http://does-not-exist.invalid/trial/t1/: DNS lookup failed ("
        ),
        "{answer:?}"
    );
}

#[tokio::test]
async fn a_trial_failing_on_an_unreachable_component_names_its_url_and_the_cause() {
    let port = closed_port();
    let app = spawn_app_with_settings(move |s| {
        s.services.trial_enforcement.url = format!("http://127.0.0.1:{port}/api");
    })
    .await;
    app.start_trial("gone").await;
    let failed = app.wait_failed("gone").await;
    let reason = failed["failure"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!(
            "trial_enforcement unreachable at http://127.0.0.1:{port}/api/sliceDeployment: connection refused"
        )),
        "{reason}"
    );
}

/// The start-up line says what an operator checks first: the version, where components call
/// back, and which configuration file was read.
#[tokio::test]
async fn the_start_up_line_names_the_version_the_public_url_and_the_file_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("lcm.toml");
    std::fs::write(&file, "[scheduler]\npoll_interval_secs = 30\n").expect("config file");
    let file = file.to_str().expect("path");
    let mut app = spawn_binary_with(BinaryOptions {
        env: &[("LCM_CONFIG", file)],
        ..BinaryOptions::default()
    })
    .await;
    let line = logged(&app, &["Lifecycle Manager listening"]).await;
    for part in [
        format!("version=\"{}\"", env!("CARGO_PKG_VERSION")),
        format!("public_url={}", app.address),
        format!("config=LCM_CONFIG={file}"),
    ] {
        assert!(line.contains(&part), "{part}: {line}");
    }
    // A `config/default.toml` in the working directory is read too, and named first.
    let working = app.logs.path().join("config");
    std::fs::create_dir_all(&working).expect("config dir");
    std::fs::write(
        working.join("default.toml"),
        "[heartbeat]\ninterval_secs = 20\n",
    )
    .expect("working file");
    let (status, _) = terminate(&mut app, Duration::from_secs(30)).await;
    assert!(status.success(), "{status}");
    app.restart_binary_with(&[("LCM_CONFIG", file)]).await;
    let second = eventually("the second start's line", || async {
        let log = log_text(&app);
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("Lifecycle Manager listening"))
            .collect();
        match lines.as_slice() {
            [_, second] => Ok((*second).to_owned()),
            _ => Err(log.clone()),
        }
    })
    .await;
    assert!(
        second.contains(&format!(
            "config=config/default.toml (working directory), then LCM_CONFIG={file}"
        )),
        "{second}"
    );
}

/// Old daily log files are removed at start (and as new days' files start), the newest
/// `logging.keep_days` kept by the date in their names, today's among them; other files in the
/// directory, even named like the log or dated after today, are left alone.
#[tokio::test]
async fn old_daily_log_files_are_removed_keeping_logging_keep_days() {
    let logs = tempfile::tempdir().expect("tempdir");
    // Written newest first: their creation times do not decide.
    let mine = [
        "operator-notes.log",
        "lcm.old.log",
        "lcm.2026-13-45.log",
        "lcm.2026-11-1.log",
        "lcm.2999-01-01.log",
    ];
    for name in (1..=5)
        .rev()
        .map(|day| format!("lcm.2026-11-0{day}.log"))
        .chain(mine.map(str::to_owned))
    {
        std::fs::write(logs.path().join(name), "old\n").expect("a file");
    }
    let dir = logs.path().to_str().expect("path");
    let app = spawn_binary_with(BinaryOptions {
        env: &[("LCM__LOGGING__DIR", dir), ("LCM__LOGGING__KEEP_DAYS", "3")],
        ..BinaryOptions::default()
    })
    .await;
    assert_eq!(app.get("/status").await.status, StatusCode::OK);
    let mut names: Vec<String> = std::fs::read_dir(logs.path())
        .expect("the log directory")
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name != "lcm-logs.lock")
        .collect();
    names.sort();
    let today = format!("lcm.{}.log", chrono::Utc::now().format("%Y-%m-%d"));
    let mut expected: Vec<String> = ["lcm.2026-11-04.log", "lcm.2026-11-05.log", &today]
        .into_iter()
        .chain(mine)
        .map(str::to_owned)
        .collect();
    expected.sort();
    assert_eq!(names, expected);
}

#[tokio::test]
async fn an_engine_s_lines_name_its_trial_at_every_log_level() {
    let app = spawn_binary_with(BinaryOptions {
        env: &[("LCM__LOGGING__LEVEL", "warn")],
        ..BinaryOptions::default()
    })
    .await;
    let id = "quiet-failure";
    app.platform
        .inject(slice_deployment_fault(id, FaultAction::Status(400)));
    app.start_trial(id).await;
    app.wait_failed(id).await;
    let line = logged(&app, &["trial failed"]).await;
    assert!(line.contains(&format!("trial={id}")), "{line}");
}

#[tokio::test]
async fn the_log_says_why_a_request_ended_with_a_server_error() {
    let app = spawn_binary().await;
    app.platform.inject(Fault::new(
        Component::Repository,
        "GET",
        "/trial/t1/",
        FaultAction::Status(500),
    ));
    let answer = app.post("/debug/trial/t1/schedule", None).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{answer:?}");
    let line = logged(&app, &["ended with a server error"]).await;
    assert!(
        line.contains("/debug/trial/t1/schedule") && line.contains(answer.detail()),
        "the line says what the client was told ({}): {line}",
        answer.detail()
    );
}

#[tokio::test]
async fn the_log_names_the_url_and_the_cause_of_an_unreachable_service() {
    let repository = format!("http://127.0.0.1:{}", closed_port());
    let app = spawn_binary_with(BinaryOptions {
        env: &[("LCM__SERVICES__TRIAL_REPOSITORY__URL", &repository)],
        ..BinaryOptions::default()
    })
    .await;
    let answer = app.post("/debug/trial/t1/schedule", None).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{answer:?}");

    let wanted = format!("{repository}/trial/t1/: connection refused");
    let line = logged(&app, &[&wanted]).await;
    assert!(
        line.contains("WARN") && line.contains("GET trial/t1/"),
        "{line}"
    );
}

/// At `debug`, each request's line names its path, not its query: a token a client put there
/// is not written; and no more than the path's first 200 characters.
#[tokio::test]
async fn a_token_sent_in_a_query_is_not_written_in_the_log() {
    let app = spawn_binary_with(BinaryOptions {
        env: &[("LCM__LOGGING__LEVEL", "debug")],
        ..BinaryOptions::default()
    })
    .await;
    let id = "queried-token";
    app.start_to_idle(id).await;
    let token = app.token_of(id);
    let answer = app.get(&format!("/token/{id}?token={token}")).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{answer:?}");
    logged(&app, &["/token/queried-token"]).await;
    assert!(!log_text(&app).contains(&token), "the token is in the log");
    // Nor a key or a token pasted into the path as a trial id.
    for pasted in [API_KEY, token.as_str()] {
        let answer = app.get(&format!("/trial/{pasted}/status")).await;
        assert!(answer.status.is_client_error(), "{answer:?}");
    }
    logged(&app, &["/trial/[redacted]/status"]).await;
    assert!(
        !log_text(&app).contains(API_KEY),
        "the API key is in the log"
    );
    assert!(!log_text(&app).contains(&token), "the token is in the log");
    // A path is the client's too: a line keeps its first 200 characters.
    let long = format!("/trial/{}/active", "k".repeat(60_000));
    assert_eq!(app.post(&long, None).await.status, StatusCode::BAD_REQUEST);
    logged(&app, &["request refused", "/trial/{trial_id}/active"]).await;
    let longest = log_text(&app).lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 5_000, "a log line of {longest} bytes");
}

#[tokio::test]
async fn a_variable_with_one_underscore_after_the_prefix_is_said_to_be_unread() {
    let app = spawn_binary_with(BinaryOptions {
        env: &[("LCM_AUTH__API_KEY", "typed-with-one-underscore")],
        ..BinaryOptions::default()
    })
    .await;
    let line = logged(&app, &["LCM_AUTH__API_KEY", "is not read"]).await;
    assert!(line.contains("WARN"), "{line}");
    assert!(
        !log_text(&app).contains("typed-with-one-underscore"),
        "its value is not repeated"
    );
}
