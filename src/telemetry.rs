//! Logging and metrics, set up once per process. Logs: stdout for `docker logs` (colour only
//! on a terminal), and a daily rolling file in `logging.dir` written by a non-blocking writer
//! (SPEC §10). Metrics: the Prometheus recorder behind `GET /metrics`, with every metric family
//! listed in one place.

use std::io::{self, IsTerminal};
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::{EnvFilter, Layer, fmt, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::{LogFormat, LoggingSettings};
use crate::domain::breaks_line;
use crate::engine::sequence::Step;
use crate::engine::state::Lifecycle;
use crate::services::retry::RetryReason;
use crate::services::{SendError, Service};
use crate::tokens::TokenError;

/// What keeps the log going: the file writer (dropping it flushes and stops it) and the log
/// directory's locks.
pub struct LogGuard {
    _writer: WorkerGuard,
    _locks: Vec<std::fs::File>,
}

/// The lock file in the log directory.
const LOCK_FILE: &str = "lcm-logs.lock";

/// Takes the log directory for this process: a second service writing there would mix its
/// lines into this one's files, and remove this one's failure files as those of trials its
/// own store does not know. Both the lock file and the directory itself are locked, so that a
/// lock file removed by hand lets no second service in. Released by the system when the
/// process ends, however it ends.
fn lock_log_dir(dir: &std::path::Path) -> io::Result<Vec<std::fs::File>> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| {
            io::Error::other(format!(
                "cannot open its lock file {}: {e} (remove what is there; the service makes the file)",
                path.display()
            ))
        })?;
    let mut locks = Vec::with_capacity(2);
    for (lock, shown) in [(file, path.as_path()), (std::fs::File::open(dir)?, dir)] {
        match lock.try_lock() {
            Ok(()) => locks.push(lock),
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(io::Error::other(format!(
                    "it is in use by another process ({} is locked): give each service its own log directory",
                    shown.display()
                )));
            }
            // Written before the subscriber exists: said on stderr, and the service goes on.
            Err(std::fs::TryLockError::Error(e)) => eprintln!(
                "lcm: the log directory cannot be locked ({e}): make sure no other service writes to {}",
                dir.display()
            ),
        }
    }
    Ok(locks)
}

/// Installs the global subscriber. Keep the returned guard alive for the life of the process.
/// A log directory another process holds is refused.
pub fn init(settings: &LoggingSettings) -> io::Result<LogGuard> {
    std::fs::create_dir_all(&settings.dir)?;
    let locks = lock_log_dir(&settings.dir)?;
    let appender = tracing_appender::rolling::Builder::new()
        .rotation(tracing_appender::rolling::Rotation::DAILY)
        .filename_prefix("lcm")
        .filename_suffix("log")
        .build(&settings.dir)
        .map_err(io::Error::other)?;
    let (file_writer, guard) = tracing_appender::non_blocking(appender);
    let filter = EnvFilter::try_new(&settings.level).unwrap_or_else(|_| EnvFilter::new("info"));

    let (stdout_layer, file_layer) = match settings.format {
        LogFormat::Text => (
            fmt::layer()
                .with_target(false)
                .fmt_fields(one_line_fields())
                .with_ansi(use_colour(
                    io::stdout().is_terminal(),
                    std::env::var("NO_COLOR").ok().as_deref(),
                ))
                .boxed(),
            fmt::layer()
                .with_target(false)
                .fmt_fields(one_line_fields())
                .with_ansi(false)
                .with_writer(file_writer)
                .boxed(),
        ),
        LogFormat::Json => (
            fmt::layer().json().flatten_event(true).boxed(),
            fmt::layer()
                .json()
                .flatten_event(true)
                .with_writer(file_writer)
                .boxed(),
        ),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(stdout_layer)
        .with(file_layer)
        .try_init()
        .map_err(io::Error::other)?;
    prune_logs(&settings.dir, settings.keep_days);
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let (dir, keep) = (settings.dir.clone(), settings.keep_days);
        runtime.spawn(async move {
            let mut ticks = tokio::time::interval(LOG_PRUNE_INTERVAL);
            loop {
                ticks.tick().await;
                let dir = dir.clone();
                let _ = tokio::task::spawn_blocking(move || prune_logs(&dir, keep)).await;
            }
        });
    }
    Ok(LogGuard {
        _writer: guard,
        _locks: locks,
    })
}

/// How often old daily log files are looked for once the service runs: a new day's file
/// starts at midnight UTC.
const LOG_PRUNE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes the daily log files (`lcm.<YYYY-MM-DD>.log`) but the newest `keep` by the date in
/// their names, today's included (`0` keeps every one). Any other file is left alone: an
/// operator's `lcm.old.log`, a failure file, a copy, and one dated after today (which would
/// otherwise count before today's, the file being written).
fn prune_logs(dir: &std::path::Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let today = chrono::Utc::now().date_naive();
    let mut daily: Vec<(chrono::NaiveDate, std::path::PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let text = name.strip_prefix("lcm.")?.strip_suffix(".log")?;
            let date = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
            let exact = date.format("%Y-%m-%d").to_string() == text && date <= today;
            (exact && entry.file_type().ok()?.is_file()).then(|| (date, entry.path()))
        })
        .collect();
    if keep == 0 || daily.len() <= keep {
        return;
    }
    daily.sort();
    let extra = daily.len() - keep;
    for (_, path) in daily.drain(..extra) {
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!(file = %path.display(), "old log file removed (logging.keep_days)")
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot remove an old log file")
            }
        }
    }
}

/// The text log's fields as tracing writes them (the message, then `name=value`), each on
/// one line: a character that [`breaks_line`] is written escaped (`\n`, `\u{2028}`), so that
/// nothing a field quotes from outside (a component's answer, a registry's field, an
/// operator's reason) can start a line of the log, or pose as one.
fn one_line_fields() -> impl for<'w> fmt::FormatFields<'w> + Send + Sync + 'static {
    fmt::format::debug_fn(|writer, field, value| {
        use std::fmt::Write as _;
        let mut line = OneLine(writer);
        match field.name() {
            "message" => write!(line, "{value:?}"),
            name => write!(line, "{}={value:?}", name.trim_start_matches("r#")),
        }
    })
    .delimited(" ")
}

/// Writes what it is given with each character that [`breaks_line`] escaped.
struct OneLine<W>(W);

impl<W: std::fmt::Write> std::fmt::Write for OneLine<W> {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        let mut from = 0;
        for (at, breaking) in text.match_indices(breaks_line) {
            self.0.write_str(&text[from..at])?;
            for escaped in breaking.chars().flat_map(char::escape_default) {
                self.0.write_char(escaped)?;
            }
            from = at + breaking.len();
        }
        self.0.write_str(&text[from..])
    }
}

/// What a panic said, for the log and the failure it is reported as.
pub fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}

/// Colour codes on stdout only for a person at a terminal: logs piped to a file or read with
/// `docker logs` stay plain text. `NO_COLOR` (set and not empty) turns colour off there too.
fn use_colour(stdout_is_terminal: bool, no_color: Option<&str>) -> bool {
    stdout_is_terminal && no_color.is_none_or(str::is_empty)
}

/// Buckets of `lcm_outbound_request_duration_seconds`, in seconds: from a quick answer on a
/// local network to the default request timeout (`executor.request_timeout_secs`, 30 s).
const OUTBOUND_DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often histogram samples are folded into their buckets between scrapes, so they do not
/// pile up when nobody scrapes.
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The process's Prometheus recorder, installed on first use with every metric family
/// registered (see [`install_metrics`]). One per process: every service built in it (tests
/// build many) reports into the same registry.
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new();
        let builder = builder
            .set_buckets_for_metric(
                Matcher::Full("lcm_outbound_request_duration_seconds".to_owned()),
                &OUTBOUND_DURATION_BUCKETS,
            )
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed: /metrics will stay empty");
        }
        register_families();
        handle
    })
}

/// Installs the Prometheus recorder; the service does it at start-up, before anything is
/// counted, so `/metrics` misses nothing and lists every family from the first scrape.
pub fn install_metrics() {
    metrics();
}

/// Folds histogram samples into their buckets every few seconds until aborted.
pub fn spawn_metrics_upkeep() -> tokio::task::JoinHandle<()> {
    tokio::spawn(async {
        let mut ticks = tokio::time::interval(METRICS_UPKEEP_INTERVAL);
        loop {
            ticks.tick().await;
            metrics().run_upkeep();
        }
    })
}

/// Every metric family the service exports, with its Prometheus type: all of them are there
/// from the first scrape.
pub const FAMILIES: [(&str, &str); 12] = [
    ("lcm_engines", "gauge"),
    ("lcm_trial_outcomes_total", "counter"),
    ("lcm_scheduled_jobs", "gauge"),
    ("lcm_missed_jobs", "gauge"),
    ("lcm_store_writable", "gauge"),
    ("lcm_steps_total", "counter"),
    ("lcm_outbound_request_duration_seconds", "histogram"),
    ("lcm_outbound_request_errors_total", "counter"),
    ("lcm_signals_total", "counter"),
    ("lcm_token_validations_total", "counter"),
    ("lcm_outbound_retries_total", "counter"),
    ("lcm_requests_throttled_total", "counter"),
];

/// The outcomes of `lcm_steps_total`.
const STEP_OUTCOMES: [&str; 2] = ["completed", "failed"];

/// The signals of `lcm_signals_total` (`Signal::name`).
const SIGNALS: [&str; 13] = [
    "slice callback",
    "cloudvnfboarding callback",
    "cloudvnfdeployment callback",
    "edgevnfonboarding callback",
    "edgevnfdeployment callback",
    "active",
    "finish",
    "progress",
    "abort",
    "pause",
    "resume",
    "step",
    "skip",
];

/// The outcomes of `lcm_signals_total` (`SignalOutcome::label`).
const SIGNAL_OUTCOMES: [&str; 6] = [
    "accepted",
    "not_saved",
    "held",
    "already_registered",
    "refused_wrong_phase",
    "refused_not_live",
];

/// The HTTP statuses each service answers on the trial's path, for
/// `lcm_outbound_request_duration_seconds` (any other status adds its own series when seen).
const EXPECTED_STATUSES: [(Service, &[&str]); 3] = [
    (Service::TrialRepository, &["200", "204"]),
    (Service::TrialEnforcement, &["200", "201", "204"]),
    (Service::KpiMonitoring, &["200"]),
];

/// The `outcome` labels of `lcm_trial_outcomes_total`.
const OUTCOMES: [&str; 3] = ["finished", "aborted", "failed"];

/// Counts an engine's move to `lifecycle` in `lcm_trial_outcomes_total`, if it is an outcome.
pub fn count_outcome(lifecycle: Lifecycle) {
    let outcome = match lifecycle {
        Lifecycle::Finished => "finished",
        Lifecycle::Aborted => "aborted",
        Lifecycle::Failed => "failed",
        Lifecycle::Running | Lifecycle::Waiting | Lifecycle::Stopped => return,
    };
    counter!("lcm_trial_outcomes_total", "outcome" => outcome).increment(1);
}

/// Every metric family the service exports, in one place: each is described (its `# HELP`)
/// and present from the first scrape, gauges at 0 and counters and histograms with every
/// label set known in advance at 0. A new family, or a new label value, is added here.
fn register_families() {
    describe_gauge!(
        "lcm_engines",
        "Engines in memory by status (Active, Failed, Finished, Aborted), taken at scrape time (an ended engine leaves memory after engine.keep_finished_secs: lcm_trial_outcomes_total counts outcomes)"
    );
    for status in ["Active", "Failed", "Finished", "Aborted"] {
        gauge!("lcm_engines", "status" => status).set(0.0);
    }
    describe_counter!(
        "lcm_trial_outcomes_total",
        "Trials that finished, were aborted or failed, since the service started (each failure counts: a restored trial that fails again counts again)"
    );
    for outcome in OUTCOMES {
        counter!("lcm_trial_outcomes_total", "outcome" => outcome).increment(0);
    }
    describe_gauge!(
        "lcm_scheduled_jobs",
        "Scheduled jobs waiting for their start time"
    );
    gauge!("lcm_scheduled_jobs").set(0.0);
    describe_gauge!(
        "lcm_missed_jobs",
        "Jobs whose start passed while the service was down, beyond the misfire grace"
    );
    gauge!("lcm_missed_jobs").set(0.0);
    describe_gauge!(
        "lcm_store_writable",
        "1 while the store's commits succeed, 0 once one failed (a full or read-only disk), until one succeeds"
    );
    gauge!("lcm_store_writable").set(1.0);

    describe_counter!(
        "lcm_steps_total",
        "Steps of the trial sequence run, by step and outcome (completed, failed)"
    );
    for step in Step::ALL {
        for outcome in STEP_OUTCOMES {
            counter!("lcm_steps_total", "step" => step.name(), "outcome" => outcome).increment(0);
        }
    }

    describe_histogram!(
        "lcm_outbound_request_duration_seconds",
        "Time from request to answer of the trial components, by service and HTTP status"
    );
    for (service, statuses) in EXPECTED_STATUSES {
        for status in statuses {
            // Registering the series is enough: it shows with empty buckets.
            let _ = histogram!(
                "lcm_outbound_request_duration_seconds",
                "service" => service.name(),
                "status" => *status
            );
        }
    }
    describe_counter!(
        "lcm_outbound_request_errors_total",
        "Requests to the trial components that got no answer, by service and error (timeout, connect, transport, auth)"
    );
    for service in Service::ALL {
        for error in SendError::LABELS {
            counter!(
                "lcm_outbound_request_errors_total",
                "service" => service.name(),
                "error" => error
            )
            .increment(0);
        }
    }

    describe_counter!(
        "lcm_signals_total",
        "Callbacks and operator signals received, by signal and outcome"
    );
    for signal in SIGNALS {
        for outcome in SIGNAL_OUTCOMES {
            counter!("lcm_signals_total", "signal" => signal, "outcome" => outcome).increment(0);
        }
    }

    describe_counter!(
        "lcm_outbound_retries_total",
        "Outbound requests tried again, by service and why (connect, timeout, status_503, ...)"
    );
    for service in Service::ALL {
        for reason in RetryReason::LABELS {
            counter!("lcm_outbound_retries_total", "service" => service.name(), "reason" => reason)
                .increment(0);
        }
    }

    describe_counter!(
        "lcm_token_validations_total",
        "Callback token checks, by outcome"
    );
    for outcome in TokenError::OUTCOMES {
        counter!("lcm_token_validations_total", "outcome" => outcome).increment(0);
    }

    describe_counter!(
        "lcm_requests_throttled_total",
        "Requests answered 429 because their address failed to authenticate too often, or their callback token was used more than auth.max_callbacks_per_minute (counted here, not written to the audit log)"
    );
    counter!("lcm_requests_throttled_total").increment(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_escapes_what_would_break_the_line_and_nothing_else() {
        use std::fmt::Write as _;
        let mut line = OneLine(String::new());
        write!(
            line,
            "plain – ünïcode a\r\nb\tc\u{0}d\u{1b}[31me\u{85}f\u{2028}g\u{2029}"
        )
        .unwrap();
        assert_eq!(
            line.0,
            "plain – ünïcode a\\r\\nb\\tc\\u{0}d\\u{1b}[31me\\u{85}f\\u{2028}g\\u{2029}"
        );
    }
    use crate::engine::sequence::WAITS;

    #[test]
    fn every_family_is_described_and_present_before_anything_is_counted() {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("lcm_outbound_request_duration_seconds".to_owned()),
                &OUTBOUND_DURATION_BUCKETS,
            )
            .expect("buckets")
            .build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, register_families);
        let text = handle.render();
        assert_eq!(
            text.matches("# TYPE ").count(),
            FAMILIES.len(),
            "every registered family is in FAMILIES: {text}"
        );
        for (family, kind) in FAMILIES {
            assert!(
                text.contains(&format!("# TYPE {family} {kind}\n")),
                "{family} is not a {kind}: {text}"
            );
            assert!(
                text.contains(&format!("# HELP {family} ")),
                "{family} has no help: {text}"
            );
        }
        assert!(text.contains("lcm_scheduled_jobs 0\n"), "{text}");
        assert!(
            text.contains(r#"lcm_steps_total{step="GetCallbackToken",outcome="completed"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"lcm_outbound_request_duration_seconds_bucket{service="trial_repository",status="204",le="0.1"} 0"#),
            "{text}"
        );
    }

    #[test]
    fn every_signal_of_the_sequence_is_registered() {
        for wait in WAITS {
            for (signal, _) in wait.exits {
                assert!(SIGNALS.contains(&signal.name()), "{}", signal.name());
            }
        }
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some("")));
        assert!(!use_colour(true, Some("1")));
        assert!(!use_colour(false, None));
    }
}
