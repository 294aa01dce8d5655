//! The README's examples are one session against a fresh `lcm demo`: every ```` ```sh ```` block,
//! in order, becomes one bash script run with curl and jq. Each command that calls curl ends
//! with the HTTP status it must answer (`# → 200`); the script stops at the first answer that
//! differs, at an unset variable or at a failing command, naming the README line. Blocks fenced
//! otherwise (`console`, `toml`, `text`) are not run.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::{free_port, lcm_command, scratch_of, send_signal};

const README: &str = include_str!("../../README.md");
/// Where the README's session expects the demo; the test's demo listens on another port.
const README_URL: &str = "http://127.0.0.1:5000";
/// What the demo prints once its own trial has ended and it serves.
const DEMO_READY: &str = "Ctrl-C to stop.";
/// The script's last line, so a script that stopped early is told apart.
const SESSION_END: &str = "README session: every status as expected";

/// A `curl` that keeps each answer's headers and body (the body is printed, then a newline), and
/// `__expect <status> <line>`, which checks the last answer's status.
const PRELUDE: &str = r#"set -euo pipefail
shopt -s inherit_errexit
curl() {
    rm -f "$__dir/headers" "$__dir/body"
    command curl --silent --show-error --dump-header "$__dir/headers" --output "$__dir/body" "$@" || return
    cat "$__dir/body"
    echo
}
__expect() {
    local got
    got=$(awk '/^HTTP\//{s=$2} END{print s}' "$__dir/headers" 2>/dev/null || true)
    if [ "$got" != "$1" ]; then
        echo "README.md:$2: expected HTTP $1, got ${got:-no answer}" >&2
        if [ -f "$__dir/body" ]; then cat "$__dir/body" >&2; echo >&2; fi
        exit 1
    fi
}
"#;

/// The lines of every `sh` block, with their line numbers in the README (from 1).
fn session_lines(readme: &str) -> Vec<(usize, &str)> {
    let mut lines = Vec::new();
    let mut in_sh = false;
    let mut in_other = false;
    for (index, line) in readme.lines().enumerate() {
        let fence = line.trim_start();
        if let Some(lang) = fence.strip_prefix("```") {
            match (in_sh, in_other) {
                (false, false) if lang.trim() == "sh" => in_sh = true,
                (false, false) => in_other = true,
                _ => (in_sh, in_other) = (false, false),
            }
            continue;
        }
        if in_sh {
            lines.push((index + 1, line));
        }
    }
    lines
}

/// The expected status written at the end of a command (`# → 200`).
fn expected_status(line: &str) -> Option<&str> {
    let (_, after) = line.split_once("# → ")?;
    after
        .get(..3)
        .filter(|status| status.bytes().all(|b| b.is_ascii_digit()))
}

/// The session as a bash script whose demo is at `url`: each command that calls curl is
/// followed by the check of its status. A command is its lines joined by a trailing `\` or
/// `|`; the polls of an `until` loop are not checked (they wait for a state). Refuses a curl
/// without its expected status.
fn script(readme: &str, url: &str, dir: &Path) -> Result<(String, usize), String> {
    let mut script = format!("__dir='{}'\n{PRELUDE}", dir.display());
    let mut checks = 0;
    let mut command: Vec<(usize, &str)> = Vec::new();
    for (number, line) in session_lines(readme) {
        script.push_str(&line.replace(README_URL, url));
        script.push('\n');
        command.push((number, line));
        let code = line.split(" #").next().unwrap_or_default().trim_end();
        if code.ends_with('\\') || code.ends_with('|') {
            continue;
        }
        let whole: Vec<&str> = command.iter().map(|(_, l)| l.trim_start()).collect();
        let first = command[0].0;
        command.clear();
        let calls_curl = whole
            .iter()
            .any(|l| !l.starts_with('#') && l.contains("curl "));
        if !calls_curl || whole[0].starts_with("until ") {
            continue;
        }
        let status = expected_status(whole.last().copied().unwrap_or_default()).ok_or_else(
            || format!("README.md:{first}: a curl without its expected status: end it with `# → <status>`"),
        )?;
        script.push_str(&format!("__expect {status} {number}\n"));
        checks += 1;
    }
    script.push_str(&format!("echo '{SESSION_END}'\n"));
    Ok((script, checks))
}

/// Panics, saying what to install, unless `tool --version` runs.
async fn require(tool: &str) {
    let found = tokio::process::Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|status| status.success());
    assert!(
        found,
        "the README test needs `{tool}` (apt-get install {tool})"
    );
}

#[tokio::test]
async fn the_readme_examples_run_in_order_against_the_demo() {
    require("curl").await;
    require("jq").await;
    assert!(
        README.contains(&format!("export LCM={README_URL}")),
        "the README's session must start with `export LCM={README_URL}`"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let (script, checks) = script(README, &url, dir.path()).unwrap_or_else(|e| panic!("{e}"));
    assert!(checks > 40, "only {checks} checked commands in the README");
    let script_path = dir.path().join("session.sh");
    std::fs::write(&script_path, &script).expect("write the script");

    // The demo as a newcomer starts it; the session begins once its own trial has ended.
    let mut demo = lcm_command(dir.path())
        .args(["demo", "--port", &port.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let mut demo_out = BufReader::new(demo.stdout.take().expect("stdout")).lines();
    let mut printed = String::new();
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = demo_out.next_line().await.expect("demo output") {
            printed.push_str(&line);
            printed.push('\n');
            if line == DEMO_READY {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(ready, Ok(true)),
        "the demo never got to serving:\n{printed}"
    );
    // Keep reading what it prints, so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = demo_out.next_line().await {} });

    let stdout_path = dir.path().join("stdout");
    let stderr_path = dir.path().join("stderr");
    let mut session = tokio::process::Command::new("bash")
        .arg(&script_path)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .kill_on_drop(true)
        .spawn()
        .expect("bash runs");
    let status = tokio::time::timeout(Duration::from_secs(180), session.wait()).await;
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let tail: String = {
        let lines: Vec<&str> = stdout.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    };
    let Ok(status) = status else {
        panic!(
            "the README session did not end within 180 s\nstdout (end):\n{tail}\nstderr:\n{stderr}"
        );
    };
    assert!(
        status.expect("bash waited for").success() && stdout.contains(SESSION_END),
        "the README session failed\nstderr:\n{stderr}\nstdout (end):\n{tail}"
    );

    // Ctrl-C, as the demo says: it stops and takes its store and logs with it.
    let scratch = scratch_of(&printed);
    assert!(
        scratch.is_dir(),
        "{} while the demo serves",
        scratch.display()
    );
    send_signal(&demo, "-INT").await;
    let stopped = tokio::time::timeout(Duration::from_secs(30), demo.wait())
        .await
        .expect("the demo stops within 30 s of Ctrl-C")
        .expect("exit status");
    assert!(stopped.success(), "{stopped}");
    assert!(!scratch.exists(), "{} left behind", scratch.display());
}

#[test]
fn a_readme_curl_without_its_expected_status_is_refused() {
    let readme = "text\n\n```sh\ncurl -s $LCM/status   # → 200\n```\n\n```console\n$ curl -s $LCM/x\n```\n\n```sh\ncurl -s -X POST \\\n  $LCM/trial/t1/active\n```\n";
    let error = script(readme, README_URL, Path::new("/tmp")).expect_err("refused");
    assert!(error.starts_with("README.md:12:"), "{error}");

    let fixed = readme.replace("/active\n", "/active   # → 409\n");
    let (script, checks) =
        script(&fixed, "http://127.0.0.1:9", Path::new("/tmp")).expect("a session");
    assert_eq!(checks, 2);
    assert!(script.contains("__expect 200 4\n"), "{script}");
    assert!(script.contains("__expect 409 13\n"), "{script}");
    assert!(
        !script.contains("$LCM/x"),
        "a console block is not run: {script}"
    );
}
