//! `lcm demo`: one trial from schedule to FINISHED, watched step by step in the terminal.
//!
//! It starts the simulated trial components and an LCM on 127.0.0.1 (no configuration file,
//! nothing written in the working directory), puts an approved trial in the simulated
//! repository, and then acts as the operator over the real REST API: schedules the trial a
//! few seconds ahead, polls its status and prints every new step once, sends `active` at IDLE
//! and `finish` when ACTIVE. The simulated components answer slowly on purpose (each request
//! takes a moment, slice deployment a second) so the steps can be followed; while trial
//! enforcement deploys or closes the slice it sends progress callbacks, shown as they come.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::Value;

use crate::sim::local::{self, LOCAL_API_KEY, LocalLcm, Scratch};
use crate::sim::operator::{Operator, OperatorSignal};
use crate::sim::{Component, Fault, FaultAction, Platform, SimOptions};
use crate::startup::shutdown_signal;
use crate::telemetry;

/// The demo's trial.
pub const TRIAL_ID: &str = "demo-trial";
/// How long each simulated component takes to answer a request.
const ANSWER_DELAY: Duration = Duration::from_millis(120);
/// How long trial enforcement takes to deploy (and to close) the slice before calling back.
const SLICE_DELAY: Duration = Duration::from_millis(900);
/// How often trial enforcement reports its progress meanwhile.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// How far ahead the trial is scheduled.
const LEAD: Duration = Duration::from_secs(3);
/// How long the operator pauses at a waiting point before acting, so it can be seen.
const OPERATOR_PAUSE: Duration = Duration::from_millis(600);
/// How often the trial's status is polled.
const POLL: Duration = Duration::from_millis(50);
/// The whole run must be over by then.
const DEADLINE: Duration = Duration::from_secs(60);

/// Options of `lcm demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Port of the LCM on 127.0.0.1.
    pub port: u16,
    /// Exit once the trial is FINISHED instead of serving until Ctrl-C.
    pub exit: bool,
}

/// Runs the demo; call it inside a tokio runtime.
pub async fn run(options: DemoOptions) -> ExitCode {
    match demo(options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("lcm demo: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn demo(options: DemoOptions) -> Result<(), String> {
    let scratch =
        Scratch::new("lcm-demo").map_err(|e| format!("cannot create a scratch directory: {e}"))?;
    // Bind first: a port in use is the likeliest trouble, and it deserves a plain answer.
    let listener = local::bind(options.port).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "port {} on 127.0.0.1 is already in use (another LCM or demo?); pick another with --port",
            options.port
        ),
        _ => format!("cannot listen on 127.0.0.1:{}: {e}", options.port),
    })?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?
        .port();

    let platform = Platform::start(SimOptions {
        callback_delay: SLICE_DELAY,
        progress_interval: Some(PROGRESS_EVERY),
        ..SimOptions::default()
    })
    .await
    .map_err(|e| format!("cannot start the simulated components: {e}"))?;
    pace(&platform);
    let settings = local::settings(&platform, port, scratch.path()).map_err(|e| e.to_string())?;
    let _log_guard =
        telemetry::init(&settings.logging).map_err(|e| format!("cannot set up logging: {e}"))?;
    let lcm = LocalLcm::start(settings, listener, &tokio::runtime::Handle::current())
        .await
        .map_err(|e| format!("the LCM did not start: {e}"))?;
    let operator = Operator::new(lcm.url(), LOCAL_API_KEY)
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;

    println!("Lifecycle Manager demo");
    println!(
        "  simulated components: trial repository http://{}, trial enforcement http://{}, KPI monitoring http://{}",
        platform.repository, platform.enforcement, platform.kpi
    );
    println!(
        "  Lifecycle Manager:    {} (API key: {LOCAL_API_KEY})",
        lcm.url()
    );
    println!(
        "  Console:              {}/ui/ (sign in with the API key)",
        lcm.url()
    );

    let outcome = tokio::select! {
        outcome = tokio::time::timeout(DEADLINE, drive(&platform, &operator)) => {
            outcome.unwrap_or_else(|_| Err(format!("the trial did not finish within {} s", DEADLINE.as_secs())))
        }
        () = shutdown_signal() => Err("interrupted".to_owned()),
    };
    if let Err(message) = outcome {
        let _ = lcm.stop().await;
        return Err(message);
    }

    let history = platform.status_history(TRIAL_ID);
    println!();
    println!(
        "Trial repository status history of {TRIAL_ID}: {}",
        history.join(" -> ")
    );
    if options.exit {
        return lcm.stop().await.map_err(|e| format!("stopping: {e}"));
    }
    print_hint(&operator).await;
    shutdown_signal().await;
    println!("Stopping.");
    lcm.stop().await.map_err(|e| format!("stopping: {e}"))
}

/// Makes every simulated component take [`ANSWER_DELAY`] to answer, so each step lasts long
/// enough to be seen.
fn pace(platform: &Platform) {
    for component in [
        Component::Repository,
        Component::Enforcement,
        Component::Kpi,
    ] {
        for method in ["GET", "POST", "PUT", "DELETE"] {
            platform.inject(Fault::new(
                component,
                method,
                "/",
                FaultAction::Delay(ANSWER_DELAY),
            ));
        }
    }
}

/// Runs the trial through the REST API and prints its progress.
async fn drive(platform: &Platform, operator: &Operator) -> Result<(), String> {
    let began = Instant::now();
    let say = |what: &str| {
        let elapsed = format!("+{:.3}s", began.elapsed().as_secs_f64());
        println!("  {elapsed:>8}  {what}");
    };

    platform.add_trial(Platform::trial(TRIAL_ID, None));
    say(&format!(
        "trial {TRIAL_ID} added to the simulated repository (APPROVED)"
    ));
    let start = Utc::now() + chrono::Duration::from_std(LEAD).unwrap_or_default();
    operator
        .schedule(TRIAL_ID, start)
        .await
        .map_err(|e| e.to_string())?;
    say(&format!(
        "POST /debug/trial/schedule: {TRIAL_ID} starts at {} (in {} s)",
        start.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        LEAD.as_secs()
    ));

    let mut last = String::new();
    let mut signalled = Vec::new();
    loop {
        tokio::time::sleep(POLL).await;
        let Some(status) = operator.status(TRIAL_ID).await.map_err(|e| e.to_string())? else {
            continue;
        };
        let line = describe(&status);
        if line != last {
            say(&line);
            last = line;
        }
        if status["failed"] == true {
            return Err(format!(
                "the trial failed: {}",
                status["failure"].as_str().unwrap_or("no reason given")
            ));
        }
        if status["finished"] == true {
            return Ok(());
        }
        let waiting_for = status["waiting_for"].as_str().unwrap_or_default();
        let signal = if waiting_for.contains("active or finish") {
            OperatorSignal::Active
        } else if waiting_for.contains("(finish)") {
            OperatorSignal::Finish
        } else {
            continue;
        };
        if signalled.contains(&signal) {
            continue;
        }
        tokio::time::sleep(OPERATOR_PAUSE).await;
        let answer = operator
            .signal(TRIAL_ID, signal)
            .await
            .map_err(|e| e.to_string())?;
        signalled.push(signal);
        say(&format!(
            "operator: POST /trial/{TRIAL_ID}/{}: {}",
            signal.segment(),
            answer["message"].as_str().unwrap_or("accepted")
        ));
    }
}

/// One progress line: the running step, the waiting point (with the component's last
/// progress report, if any), or the end.
fn describe(status: &Value) -> String {
    if status["finished"] == true {
        return "FINISHED".to_owned();
    }
    if status["failed"] == true {
        return "FAILED".to_owned();
    }
    if let Some(waiting_for) = status["waiting_for"].as_str() {
        let percent = status["progress"].as_u64().map(|p| format!("{p}%"));
        let message = status["progress_message"].as_str().map(str::to_owned);
        let progress: Vec<String> = percent.into_iter().chain(message).collect();
        if progress.is_empty() {
            return format!("waiting for {waiting_for}");
        }
        return format!("waiting for {waiting_for}: {}", progress.join(" "));
    }
    status["step"]
        .as_str()
        .or_else(|| status["state"].as_str())
        .unwrap_or("?")
        .to_owned()
}

/// Says how to look around while the demo keeps serving.
async fn print_hint(operator: &Operator) {
    let base = operator.base();
    println!();
    // Point at a page at `/` only if the service has one.
    if let Ok((status, _)) = operator.call(reqwest::Method::GET, "/", None).await
        && status.is_success()
    {
        println!("Open {base}/ in a browser (API key: {LOCAL_API_KEY}).");
    }
    println!("The LCM keeps serving on {base} (API key: {LOCAL_API_KEY}); try:");
    println!("  curl -H 'Authorization: {LOCAL_API_KEY}' {base}/status");
    println!("  curl -H 'Authorization: {LOCAL_API_KEY}' {base}/trial/{TRIAL_ID}/status");
    println!("  curl -H 'Authorization: {LOCAL_API_KEY}' {base}/trial/{TRIAL_ID}/responses");
    println!("  curl -H 'Authorization: {LOCAL_API_KEY}' {base}/trial/{TRIAL_ID}/history");
    println!("Ctrl-C to stop.");
}
