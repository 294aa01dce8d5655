//! `lcm bench`: the LCM under load, against the simulated trial components over real loopback
//! HTTP, driven through its REST API like an operator would.
//!
//! Two tokio runtimes share the process so the LCM's cost can be told apart: the LCM (its
//! handlers, engines, outbound requests) runs on threads named `lcm-rt`, next to its store
//! writer `lcm-store`; the simulated components and the driver run on `bench-rt`. CPU time is
//! read per thread from `/proc/self/task/*/stat`, memory and threads from `/proc/self/status`.
//!
//! - [`trials`]: N complete trials, C in flight at once; throughput, LCM overhead per step,
//!   CPU per trial, peak memory and threads.
//! - [`idle`]: N engines held at the IDLE waiting point; memory per live engine.
//!
//! The driver learns that a trial is IDLE, ACTIVE or FINISHED from the simulated repository
//! (as an operator watching the registry would), so it does not poll the LCM per trial; it
//! sends `active`/`finish` and reads `GET /status` over HTTP. Every wait has a deadline.

pub mod idle;
pub mod overhead;
pub mod process;
pub mod startup;
pub mod store;
pub mod trials;

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, Utc};

use tokio::runtime::{Builder, Handle, Runtime};

use crate::sim::local::{self, LOCAL_API_KEY, LocalLcm, Scratch};
use crate::sim::operator::Operator;
use crate::sim::{Platform, SimOptions};
use crate::store::sqlite::Synchronous;
use crate::telemetry;

/// Name of the LCM runtime's threads (the store's writer thread is `lcm-store`).
const LCM_THREADS: &str = "lcm-rt";
/// Prefix of every LCM thread.
pub const LCM_PREFIX: &str = "lcm-";
/// Name of the simulator's and driver's threads.
const BENCH_THREADS: &str = "bench-rt";

/// Options of `lcm bench`.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Complete trials to run.
    pub trials: usize,
    /// Trials in flight at once.
    pub concurrency: usize,
    /// Instead: hold this many engines at IDLE and measure their memory.
    pub idle: Option<usize>,
    /// Pause of the simulated trial enforcement before each callback.
    pub callback_delay: Duration,
    /// `executor.retry.max_attempts` of the LCM (1: no retries).
    pub max_attempts: u32,
    /// Instead: start an LCM on a store holding this many ended trials, and time it.
    pub startup: Option<usize>,
    /// `store.synchronous` of the LCM.
    pub synchronous: Synchronous,
}

/// Runs the benchmark on its own runtimes (call it outside any runtime).
pub fn run(options: BenchOptions) -> ExitCode {
    // The LCM's store and logs live here. It outlives both runtimes: an engine stopping late
    // must not write into a directory already removed.
    let scratch = match Scratch::new("lcm-bench") {
        Ok(scratch) => scratch,
        Err(e) => {
            eprintln!("lcm bench: cannot create a scratch directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dir = scratch.path().to_path_buf();
    let runtimes = Builder::new_multi_thread()
        .thread_name(LCM_THREADS)
        .enable_all()
        .build()
        .and_then(|lcm| {
            let bench = Builder::new_multi_thread()
                .thread_name(BENCH_THREADS)
                .enable_all()
                .build()?;
            Ok((lcm, bench))
        });
    let (lcm_runtime, bench_runtime) = match runtimes {
        Ok(runtimes) => runtimes,
        Err(e) => {
            eprintln!("lcm bench: cannot start the async runtimes: {e}");
            return ExitCode::FAILURE;
        }
    };
    let lcm = lcm_runtime.handle().clone();
    let result = bench_runtime.block_on(async move {
        match (options.idle, options.startup) {
            (Some(engines), _) => idle::run(engines, &options, &lcm, &dir).await,
            (None, Some(ended)) => startup::run(ended, &lcm, &dir).await,
            (None, None) => trials::run(&options, &lcm, &dir).await,
        }
    });
    shut(bench_runtime);
    shut(lcm_runtime);
    drop(scratch);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("lcm bench: {message}");
            ExitCode::FAILURE
        }
    }
}

fn shut(runtime: Runtime) {
    runtime.shutdown_timeout(Duration::from_secs(5));
}

/// The simulated platform and an LCM on loopback, ready to be driven.
pub struct Harness {
    pub platform: Platform,
    pub lcm: LocalLcm,
    pub operator: Operator,
    _log: telemetry::LogGuard,
}

impl Harness {
    /// Starts the simulator here and the LCM on `lcm_runtime`, logging at `warn`, with its
    /// store and logs in `dir`.
    pub async fn start(
        options: &BenchOptions,
        lcm_runtime: &Handle,
        dir: &Path,
    ) -> Result<Self, String> {
        let platform = Platform::start(SimOptions {
            callback_delay: options.callback_delay,
            ..SimOptions::default()
        })
        .await
        .map_err(|e| format!("cannot start the simulated components: {e}"))?;
        let listener = local::bind(0).map_err(|e| format!("cannot listen on 127.0.0.1: {e}"))?;
        let port = listener
            .local_addr()
            .map_err(|e| format!("cannot read the listening address: {e}"))?
            .port();
        let mut settings =
            local::settings(Some(&platform), port, dir).map_err(|e| e.to_string())?;
        settings.executor.retry.max_attempts = options.max_attempts;
        settings.store.synchronous = options.synchronous;
        let log = telemetry::init(&settings.logging)
            .map_err(|e| format!("cannot set up logging: {e}"))?;
        let lcm = LocalLcm::start(settings, listener, lcm_runtime)
            .await
            .map_err(|e| format!("the LCM did not start: {e}"))?;
        let operator = Operator::new(lcm.url(), LOCAL_API_KEY)
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            platform,
            lcm,
            operator,
            _log: log,
        })
    }

    /// Stops the LCM.
    pub async fn stop(self) {
        let Self { lcm, .. } = self;
        if let Err(e) = lcm.stop().await {
            eprintln!("lcm bench: stopping the LCM: {e}");
        }
    }
}

/// Schedules `id` to start `lead` from now; if the LCM finds that start already past (a busy
/// machine took longer than `lead` to take the call), tries again with twice the lead, a few
/// times. Returns the start time it was scheduled at.
pub async fn schedule_soon(
    operator: &Operator,
    id: &str,
    mut lead: Duration,
) -> Result<DateTime<Utc>, String> {
    for _ in 0..6 {
        let start = Utc::now() + chrono::Duration::from_std(lead).unwrap_or_default();
        match operator.schedule(id, start).await {
            Ok(_) => return Ok(start),
            Err(e) if e.status() == Some(400) && e.to_string().contains("past") => lead *= 2,
            Err(e) => return Err(format!("scheduling {id}: {e}")),
        }
    }
    Err(format!(
        "scheduling {id}: the start time was in the past every time, up to {} ms ahead",
        lead.as_millis() / 2
    ))
}

/// Warns when `ulimit -n` is too low for the connections `in_flight` trials need (each has
/// up to a few open at once: LCM → component, driver → LCM, callback → LCM, both ends each).
pub fn check_open_files(in_flight: usize) {
    let wanted = (in_flight as u64) * 6 + 256;
    if let Some(limit) = process::open_files_limit()
        && limit < wanted
    {
        eprintln!(
            "lcm bench: warning: the open-files limit is {limit}; {in_flight} trials in flight may need about {wanted} (raise it with `ulimit -n {wanted}`)"
        );
    }
}

/// Bytes in a readable unit.
pub fn bytes(n: f64) -> String {
    if n.abs() >= 1024.0 * 1024.0 {
        format!("{:.1} MB", n / (1024.0 * 1024.0))
    } else {
        format!("{:.1} KB", n / 1024.0)
    }
}

/// A Markdown table of `(metric, value, what is counted)`.
pub fn print_table(title: &str, rows: &[(String, String, String)]) {
    println!();
    println!("{title}");
    println!();
    println!("| metric | value | what is counted |");
    println!("|---|---|---|");
    for (metric, value, note) in rows {
        println!("| {metric} | {value} | {note} |");
    }
}

/// The machine, for the report: CPUs and model name.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    format!("{cpus} CPUs ({model})")
}
