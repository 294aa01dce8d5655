//! `lcm demo`: one trial from schedule to FINISHED, watched step by step in the terminal, then
//! a playground for the README's examples.
//!
//! It starts the simulated trial components and an LCM on 127.0.0.1 (no configuration file;
//! its store and logs go to a fresh temporary directory, which it prints), puts an approved
//! trial in the simulated repository, and then acts as the operator over the real REST API:
//! schedules the trial a few seconds ahead, follows its event stream (`GET /trial/{id}/events`)
//! and prints every event once, sends `active` at IDLE and `finish` when ACTIVE (or, with
//! `--abort`, aborts it there and shows its clean-up). The simulated components answer slowly on
//! purpose (each request takes a moment, slice deployment a second) so the steps can be
//! followed; while trial enforcement deploys or closes the slice it sends progress callbacks.
//!
//! Then it keeps serving. Its simulated registry takes any other valid trial id for an approved
//! trial starting a few seconds after it is first asked about, and leaves that trial's callbacks
//! to the user (`SimOptions::open_registry`), so every example of the README runs against it;
//! the flight plan of [`FAILING_TRIAL`] is refused twice, to show a failure, a restore and a
//! skip.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use chrono::Utc;
use reqwest::Method;
use serde_json::{Value, json};

use crate::engine::sequence::{self, Wait};
use crate::engine::state::EventKind;
use crate::sim::local::{self, LOCAL_API_KEY, LocalLcm, Scratch};
use crate::sim::operator::{Operator, OperatorSignal};
use crate::sim::{Component, Fault, FaultAction, Platform, SimOptions};
use crate::startup::shutdown_signal;
use crate::telemetry;

/// The demo's trial.
const TRIAL_ID: &str = "demo-trial";
/// The trial whose flight plan the simulated trial enforcement refuses (500) the first two
/// times: a failure to read, restore and skip.
const FAILING_TRIAL: &str = "bad-plan";
/// How many times it refuses it.
const FAILING_TIMES: usize = 2;
/// How long each simulated component takes to answer a request.
const ANSWER_DELAY: Duration = Duration::from_millis(120);
/// How long trial enforcement takes to deploy (and to close) the slice before calling back.
const SLICE_DELAY: Duration = Duration::from_millis(900);
/// How often trial enforcement reports its progress meanwhile.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// How far ahead the trial is scheduled.
const LEAD: Duration = Duration::from_secs(3);
/// How long after it is first asked about a trial the simulated registry makes up starts.
const PLAYGROUND_LEAD: Duration = Duration::from_secs(3);
/// How long the operator pauses at a waiting point before acting, so it can be seen.
const OPERATOR_PAUSE: Duration = Duration::from_millis(600);
/// The whole run must be over by then.
const DEADLINE: Duration = Duration::from_secs(60);
/// The reason the operator gives for an abort.
const ABORT_REASON: &str = "lcm demo --abort";

/// Options of `lcm demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Port of the LCM on 127.0.0.1.
    pub port: u16,
    /// Exit once the trial has ended instead of serving until Ctrl-C.
    pub exit: bool,
    /// Keep the directory of the store and logs when the demo exits.
    pub keep: bool,
    /// Abort the trial once it is ACTIVE instead of finishing it, to show the clean-up.
    pub abort: bool,
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
        open_registry: Some(PLAYGROUND_LEAD),
        ..SimOptions::default()
    })
    .await
    .map_err(|e| format!("cannot start the simulated components: {e}"))?;
    // Before the pace: the first fault that matches a request is the one applied.
    platform.inject(
        Fault::new(
            Component::Enforcement,
            "POST",
            "/flightplan",
            FaultAction::Status(500),
        )
        .for_trial(FAILING_TRIAL)
        .times(FAILING_TIMES),
    );
    pace(&platform);
    let settings =
        local::settings(Some(&platform), port, scratch.path()).map_err(|e| e.to_string())?;
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
        "  store and logs:       {} (the store in data/, the log and failure files in logs/; {})",
        scratch.path().display(),
        if options.keep {
            "kept when the demo exits"
        } else {
            "removed when the demo exits, unless --keep"
        }
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
        outcome = tokio::time::timeout(DEADLINE, drive(&platform, &operator, options.abort)) => {
            outcome.unwrap_or_else(|_| Err(format!("the trial did not end within {} s", DEADLINE.as_secs())))
        }
        () = shutdown_signal() => Err("interrupted".to_owned()),
    };
    if let Err(message) = outcome {
        let _ = lcm.stop().await;
        leave(scratch, options.keep);
        return Err(message);
    }

    let history = platform.status_history(TRIAL_ID);
    println!();
    println!(
        "Trial repository status history of {TRIAL_ID}: {}",
        history.join(" -> ")
    );
    if !options.exit {
        print_hint(&operator, scratch.path()).await;
        shutdown_signal().await;
        println!("Stopping.");
    }
    let stopped = lcm.stop().await.map_err(|e| format!("stopping: {e}"));
    leave(scratch, options.keep);
    stopped
}

/// Removes the scratch directory, or keeps it and says where it is.
fn leave(scratch: Scratch, keep: bool) {
    if keep {
        println!("Kept the store and logs in {}", scratch.keep().display());
    }
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

/// Runs the trial through the REST API and prints each of its events as it comes.
async fn drive(platform: &Platform, operator: &Operator, abort: bool) -> Result<(), String> {
    let began = Instant::now();
    let say = |what: &str| {
        let elapsed = format!("+{:.3}s", began.elapsed().as_secs_f64());
        println!("  {elapsed:>8}  {what}");
    };

    let start = Utc::now() + chrono::Duration::from_std(LEAD).unwrap_or_default();
    platform.add_trial(Platform::trial(TRIAL_ID, Some(start)));
    say(&format!(
        "trial {TRIAL_ID} added to the simulated repository (APPROVED)"
    ));
    operator
        .schedule(TRIAL_ID, start)
        .await
        .map_err(|e| e.to_string())?;
    say(&format!(
        "POST /debug/trial/schedule: {TRIAL_ID} starts at {} (in {} s)",
        start.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        LEAD.as_secs()
    ));
    let mut events = EventStream::open(operator, TRIAL_ID).await?;
    say(&format!(
        "GET /trial/{TRIAL_ID}/events: following the trial's events"
    ));

    let mut cleaning_up = false;
    // What the trial waits for: its progress reports are shown against it.
    let mut waiting_for = String::new();
    loop {
        let Some((name, event)) = events.next().await? else {
            return Err("the trial's event stream ended before the trial did".to_owned());
        };
        // `scheduled` is the stream's own, said already.
        let Some(kind) = EventKind::parse(&name) else {
            continue;
        };
        let step = event["step"].as_str().unwrap_or("?");
        let detail = event["detail"].as_str().unwrap_or_default();
        match kind {
            EventKind::StepCompleted => {}
            EventKind::StepStarted if cleaning_up => say(&format!("{step} (clean-up)")),
            EventKind::StepStarted => say(step),
            EventKind::Waiting => {
                waiting_for = detail.to_owned();
                say(&format!("waiting for {detail}"));
            }
            EventKind::Progress => say(&format!(
                "waiting for {waiting_for}: {}",
                detail.replacen("%: ", "% ", 1)
            )),
            EventKind::SignalAccepted => say(&format!("signal accepted: {detail}")),
            EventKind::AbortRequested => say(&format!("abort requested: {detail}")),
            EventKind::CleanupStarted => {
                cleaning_up = true;
                say(&format!("clean-up started: {detail}"));
            }
            EventKind::CleanupCompleted => say("clean-up completed"),
            EventKind::TrialFinished => {
                say("Finished");
                return Ok(());
            }
            EventKind::TrialAborted => {
                say("Aborted");
                return Ok(());
            }
            EventKind::TrialFailed => return Err(format!("the trial failed: {detail}")),
            other if detail.is_empty() => say(other.name()),
            other => say(&format!("{}: {detail}", other.name())),
        }
        if kind != EventKind::Waiting {
            continue;
        }
        // The operator's two waits, as the event names them.
        let at = |wait: Wait| detail == sequence::wait_spec(wait).waiting_for;
        let action = if at(Wait::Idle) {
            Action::Signal(OperatorSignal::Active)
        } else if at(Wait::Active) && abort {
            Action::Abort
        } else if at(Wait::Active) {
            Action::Signal(OperatorSignal::Finish)
        } else {
            continue;
        };
        tokio::time::sleep(OPERATOR_PAUSE).await;
        let (path, answer) = match action {
            Action::Signal(signal) => (
                format!("/trial/{TRIAL_ID}/{}", signal.segment()),
                operator
                    .signal(TRIAL_ID, signal)
                    .await
                    .map_err(|e| e.to_string())?,
            ),
            Action::Abort => {
                let path = format!("/trial/{TRIAL_ID}/abort");
                let (status, answer) = operator
                    .call(Method::POST, &path, Some(json!({"reason": ABORT_REASON})))
                    .await
                    .map_err(|e| e.to_string())?;
                if !status.is_success() {
                    return Err(format!("POST {path}: {status} {answer}"));
                }
                (path, answer)
            }
        };
        say(&format!(
            "operator: POST {path}: {}",
            answer["message"].as_str().unwrap_or("accepted")
        ));
    }
}

/// What the operator does at a waiting point.
enum Action {
    Signal(OperatorSignal),
    Abort,
}

/// A trial's event stream (`GET /trial/{id}/events`, Server-Sent Events), read event by
/// event. The LCM sends each event as an `event:` line (its kind) and one `data:` line (its
/// JSON); keep-alive comments carry no data and are passed over.
struct EventStream {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl EventStream {
    async fn open(operator: &Operator, id: &str) -> Result<Self, String> {
        let path = format!("/trial/{id}/events");
        // Its own client: the operator's gives up on a call after 30 s, a stream must not.
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let response = client
            .get(format!("{}{path}", operator.base()))
            .header("Authorization", LOCAL_API_KEY)
            .send()
            .await
            .map_err(|e| format!("GET {path}: {}", e.without_url()))?;
        if !response.status().is_success() {
            return Err(format!("GET {path}: {}", response.status()));
        }
        Ok(Self {
            response,
            buffer: Vec::new(),
        })
    }

    /// The next event's kind and data; `None` once the stream has ended.
    async fn next(&mut self) -> Result<Option<(String, Value)>, String> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let block = String::from_utf8_lossy(&block);
                let mut kind = "message";
                let mut data = None;
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        kind = value.trim();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data = Some(value.trim());
                    }
                }
                if let Some(data) = data {
                    let data = serde_json::from_str(data).unwrap_or(Value::Null);
                    return Ok(Some((kind.to_owned(), data)));
                }
                continue;
            }
            match self.response.chunk().await {
                Ok(Some(bytes)) => self.buffer.extend_from_slice(&bytes),
                Ok(None) => return Ok(None),
                Err(e) => return Err(format!("the trial's event stream broke: {e}")),
            }
        }
    }
}

/// Says how to look around while the demo keeps serving.
async fn print_hint(operator: &Operator, scratch: &Path) {
    let base = operator.base();
    println!();
    // Point at a page at `/` only if the service has one.
    if let Ok((status, _)) = operator.call(reqwest::Method::GET, "/", None).await
        && status.is_success()
    {
        println!("Open {base}/ in a browser (API key: {LOCAL_API_KEY}).");
    }
    println!("The LCM keeps serving on {base} (API key: {LOCAL_API_KEY}); try:");
    println!("  export LCM={base} LCM_API_KEY={LOCAL_API_KEY}");
    println!("  curl -H \"Authorization: $LCM_API_KEY\" $LCM/status");
    println!("  curl -H \"Authorization: $LCM_API_KEY\" $LCM/trial/{TRIAL_ID}/history");
    println!("  curl -X POST -H \"Authorization: $LCM_API_KEY\" $LCM/debug/trial/t1/schedule");
    println!(
        "Every other trial id is an approved trial of the simulated registry, starting {} s after \
it is first asked about; you send its callbacks, as trial enforcement would (README: Examples). \
The flight plan of trial {FAILING_TRIAL} is refused {FAILING_TIMES} times, to show a failure.",
        PLAYGROUND_LEAD.as_secs()
    );
    println!(
        "Its log and failure files are in {}.",
        scratch.join("logs").display()
    );
    println!("Ctrl-C to stop.");
}
