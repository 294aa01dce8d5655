//! `lcm bench --trials N --concurrency C`: N complete trials (schedule → slice callback →
//! IDLE → active → ACTIVE → finish → slice-closed callback → FINISHED), C in flight at once.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::overhead::{self, percentile};
use super::process;
use super::{
    BenchOptions, Harness, LCM_PREFIX, bytes, check_open_files, machine, print_table, schedule_soon,
};
use crate::sim::Platform;
use crate::sim::operator::{Operator, OperatorSignal};
use crate::store::WRITER_THREAD;

/// Schedule calls in flight at once while the first wave is scheduled.
const SCHEDULE_PARALLEL: usize = 16;
/// Operator calls (`active`, `finish`, refills) in flight at once.
const SIGNAL_PARALLEL: usize = 128;
/// How far ahead a trial that refills the window is scheduled.
const REFILL_LEAD: Duration = Duration::from_millis(100);
/// How often memory and threads are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// What a driver task did.
enum Done {
    Signalled,
    Scheduled {
        id: String,
        start: DateTime<Utc>,
        latency: Duration,
    },
}

/// Runs the trials and prints the report.
pub async fn run(options: &BenchOptions, lcm_runtime: &Handle, dir: &Path) -> Result<(), String> {
    let n = options.trials.max(1);
    let wave = options.concurrency.clamp(1, n);
    check_open_files(wave);
    let harness = Harness::start(options, lcm_runtime, dir).await?;
    let result = drive(&harness, n, wave).await;
    harness.stop().await;
    let (mut rows, written) = result?;
    let sizes = super::store::sizes(&dir.join("data"))?;
    rows.extend(store_rows(&sizes, written));
    print_table(
        &format!(
            "lcm bench: {n} trials, {wave} at once, callbacks after {} ms, retries up to {} attempts, store.synchronous {:?}, on {}",
            options.callback_delay.as_millis(),
            options.max_attempts,
            options.synchronous,
            machine()
        ),
        &rows,
    );
    Ok(())
}

/// What the store holds per trial and per step.
fn store_rows(
    sizes: &super::store::StoreSizes,
    written: Option<process::Written>,
) -> Vec<(String, String, String)> {
    let trials = sizes.trials.max(1) as f64;
    let steps = sizes.steps.max(1) as f64;
    vec![
        (
            "checkpoint size".to_owned(),
            format!(
                "{:.0} B (largest {} B)",
                sizes.checkpoint_avg, sizes.checkpoint_max
            ),
            "the checkpoint document of a trial, saved after every step and every signal taken: the same size at the first step and the last".to_owned(),
        ),
        (
            "journal rows per trial".to_owned(),
            format!(
                "{:.1} events ({}), {:.1} responses ({})",
                sizes.events as f64 / trials,
                bytes(sizes.event_bytes as f64 / trials),
                sizes.responses as f64 / trials,
                bytes(sizes.response_bytes as f64 / trials)
            ),
            "appended once each, when they happen (columns' bytes)".to_owned(),
        ),
        (
            "bytes written per step".to_owned(),
            format!("{:.0} B", sizes.bytes_per_step()),
            format!(
                "({} checkpoints × their size + journal rows) / {} steps completed",
                sizes.checkpoints, sizes.steps
            ),
        ),
        (
            "written to disk per step".to_owned(),
            written.map_or_else(
                || "not known: this kernel does not account I/O per thread".to_owned(),
                |written| {
                    format!(
                        "{} in {:.1} write calls ({} and {:.0} calls a trial)",
                        bytes(written.bytes as f64 / steps),
                        written.calls as f64 / steps,
                        bytes(written.bytes as f64 / trials),
                        written.calls as f64 / trials
                    )
                },
            ),
            format!(
                "what the store's writer thread `{WRITER_THREAD}` handed to the kernel (wchar, syscw of /proc/self/task/*/io) during the run / {} steps: SQLite writes whole 4 KiB pages to its write-ahead log, each page a commit changed once per commit",
                sizes.steps
            ),
        ),
        (
            "outbound retries".to_owned(),
            sizes.retries.to_string(),
            "answers recorded with attempt > 1: the happy path needs none, so the retry policy costs one check per answer".to_owned(),
        ),
        (
            "store on disk".to_owned(),
            format!(
                "{} ({} a trial)",
                bytes(sizes.file_bytes as f64),
                bytes(sizes.file_bytes as f64 / trials)
            ),
            "the SQLite file and its write-ahead log at the end".to_owned(),
        ),
    ]
}

async fn drive(
    harness: &Harness,
    n: usize,
    wave: usize,
) -> Result<(Vec<(String, String, String)>, Option<process::Written>), String> {
    let platform = &harness.platform;
    let operator = &harness.operator;
    let ids: Vec<String> = (0..n).map(|i| format!("bench-{i:05}")).collect();
    for id in &ids {
        platform.add_trial(Platform::trial(id, None));
    }
    let mut changes = platform.status_changes();
    let sampler = Sampler::start();
    let rss_before = process::status_bytes("VmRSS").unwrap_or(0);
    let lcm_cpu_before = process::cpu_of_threads(LCM_PREFIX);
    let writer_cpu_before = process::cpu_of_threads(WRITER_THREAD);
    let cpu_before = process::process_cpu();
    let written_before = process::written_by(WRITER_THREAD);
    let deadline = Instant::now() + Duration::from_secs(60) + Duration::from_millis(30) * n as u32;

    // The first wave: all at the same start time, far enough ahead to schedule them all.
    let lead = Duration::from_millis(1000 + 3 * wave as u64);
    let first_start = Utc::now() + lead;
    let mut starts: HashMap<String, DateTime<Utc>> = HashMap::new();
    let scheduling = Instant::now();
    let mut latencies: Vec<f64> = futures_util::stream::iter(&ids[..wave])
        .map(|id| async move {
            let sent = Instant::now();
            operator
                .schedule(id, first_start)
                .await
                .map(|_| sent.elapsed().as_secs_f64() * 1000.0)
        })
        .buffer_unordered(SCHEDULE_PARALLEL)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(|e| {
            format!(
                "scheduling failed: {e} (if the start time passed, scheduling {wave} trials took longer than the {} ms lead)",
                lead.as_millis()
            )
        })?;
    let schedule_wall = scheduling.elapsed();
    for id in &ids[..wave] {
        starts.insert(id.clone(), first_start);
    }

    let refused = Arc::new(AtomicUsize::new(0));
    let permits = Arc::new(Semaphore::new(SIGNAL_PARALLEL));
    let mut tasks: JoinSet<Result<Done, String>> = JoinSet::new();
    let mut next = wave;
    let mut finished = 0;
    let mut last_finished = first_start;
    while finished < n {
        tokio::select! {
            change = changes.recv() => {
                let Some(change) = change else {
                    return Err("the simulated repository stopped".to_owned());
                };
                let signal = match change.status.as_str() {
                    "IDLE" => OperatorSignal::Active,
                    "ACTIVE" => OperatorSignal::Finish,
                    "FINISHED" => {
                        finished += 1;
                        last_finished = last_finished.max(change.at);
                        if next < n {
                            let id = ids[next].clone();
                            next += 1;
                            tasks.spawn(refill(operator.clone(), id, permits.clone()));
                        }
                        continue;
                    }
                    "FAILED" => return Err(failure(operator, &change.trial).await),
                    _ => continue,
                };
                tasks.spawn(signal_when_ready(
                    operator.clone(),
                    change.trial,
                    signal,
                    deadline,
                    refused.clone(),
                    permits.clone(),
                ));
            }
            Some(done) = tasks.join_next() => {
                match done.map_err(|e| format!("a driver task failed: {e}"))?? {
                    Done::Scheduled { id, start, latency } => {
                        starts.insert(id, start);
                        latencies.push(latency.as_secs_f64() * 1000.0);
                    }
                    Done::Signalled => {}
                }
            }
            () = tokio::time::sleep_until(deadline.into()) => {
                return Err(format!("only {finished} of {n} trials finished before the deadline"));
            }
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| format!("a driver task failed: {e}"))??;
    }
    let wall = (last_finished - first_start)
        .to_std()
        .unwrap_or_default()
        .max(Duration::from_micros(1));
    let listed = all_finished(operator, n, deadline).await?;
    let writer_cpu = process::cpu_of_threads(WRITER_THREAD).since(writer_cpu_before);
    let lcm_cpu = process::cpu_of_threads(LCM_PREFIX).since(lcm_cpu_before);
    let cpu = process::process_cpu().since(cpu_before);
    let others_cpu = cpu.since(lcm_cpu);
    let runtime_cpu = lcm_cpu.since(writer_cpu);
    let written = process::written_by(WRITER_THREAD)
        .zip(written_before)
        .map(|(after, before)| after.since(before));
    let peak = sampler.stop().await;
    let hwm = process::status_bytes("VmHWM").unwrap_or(0);

    let gaps = overhead::measure(&platform.requests(), &platform.callbacks(), &starts);
    latencies.sort_by(f64::total_cmp);
    let per_trial = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0 / n as f64);
    let split = |cpu: process::Cpu| {
        format!(
            "{} (in the kernel {})",
            per_trial(cpu.total()),
            per_trial(cpu.kernel)
        )
    };
    let spread = |values: &[f64]| {
        format!(
            "{:.2} / {:.2} / {:.2} ms ({} gaps)",
            percentile(values, 50.0),
            percentile(values, 99.0),
            percentile(values, 100.0),
            values.len()
        )
    };
    let rows = vec![
        (
            "trials finished".to_owned(),
            format!("{listed} / {n}"),
            "engines listed `Finished` by `GET /status` at the end".to_owned(),
        ),
        (
            "wall time".to_owned(),
            format!("{:.3} s", wall.as_secs_f64()),
            "first scheduled start → the last trial's FINISHED written to the repository".to_owned(),
        ),
        (
            "trials per second".to_owned(),
            format!("{:.1}", n as f64 / wall.as_secs_f64()),
            "trials / wall time".to_owned(),
        ),
        (
            "LCM overhead per step p50 / p99 / max".to_owned(),
            spread(&gaps.steps),
            "seen by the components: their answer (or callback) → the LCM's next request for that trial; waits for callbacks and for the operator excluded; includes both loopback hops".to_owned(),
        ),
        (
            "… after a callback p50 / p99 / max".to_owned(),
            spread(&gaps.after_callback),
            "callback sent → next request (the LCM authenticates the callback, wakes the engine)".to_owned(),
        ),
        (
            "engine start p50 / p99 / max".to_owned(),
            spread(&gaps.start),
            "scheduled start time → the trial's first request".to_owned(),
        ),
        (
            "LCM CPU per trial".to_owned(),
            split(lcm_cpu),
            format!(
                "utime+stime of threads named {LCM_PREFIX}* (runtime workers and blocking threads, store writer) / trials; includes answering the driver's calls; 10 ms tick resolution; in the kernel: stime"
            ),
        ),
        (
            "… runtime threads / store writer".to_owned(),
            format!("{} / {}", split(runtime_cpu), split(writer_cpu)),
            format!(
                "the runtime threads send and answer the HTTP exchanges and run the engines; the writer `{WRITER_THREAD}` commits to SQLite"
            ),
        ),
        (
            "process CPU per trial".to_owned(),
            split(cpu),
            "every thread: LCM + simulated components + driver".to_owned(),
        ),
        (
            "components + driver CPU per trial".to_owned(),
            split(others_cpu),
            "the other end of the same HTTP exchanges (no store, no engine): process − LCM".to_owned(),
        ),
        (
            "peak RSS".to_owned(),
            bytes(hwm as f64),
            "VmHWM of the whole process (LCM + simulator + driver)".to_owned(),
        ),
        (
            "memory per live engine".to_owned(),
            bytes(hwm.saturating_sub(rss_before) as f64 / wave as f64),
            format!("(peak RSS − RSS before scheduling) / {wave} trials in flight; includes the simulator's records and connection buffers"),
        ),
        (
            "OS threads at peak".to_owned(),
            format!("{} (LCM: {})", peak.threads, peak.lcm_threads),
            "`Threads` of /proc/self/status, sampled every 50 ms; LCM threads by name".to_owned(),
        ),
        (
            "time to schedule".to_owned(),
            format!(
                "{wave} trials in {:.0} ms; per call p50 {:.2} ms, p99 {:.2} ms",
                schedule_wall.as_secs_f64() * 1000.0,
                percentile(&latencies, 50.0),
                percentile(&latencies, 99.0)
            ),
            format!("wall time of the POST /debug/trial/schedule calls of the first wave, {SCHEDULE_PARALLEL} in flight (per-call figures over all {n})"),
        ),
        (
            "operator signals retried".to_owned(),
            refused.load(Ordering::Relaxed).to_string(),
            "active/finish refused with 409 because the executor had not reached the waiting point yet".to_owned(),
        ),
    ];
    if listed < n {
        return Err(format!("only {listed} of {n} engines are listed Finished"));
    }
    Ok((rows, written))
}

/// Sends `active` or `finish` once the executor takes it, retrying a 409 with a short backoff
/// (the repository shows IDLE or ACTIVE a moment before the executor reaches its wait).
async fn signal_when_ready(
    operator: Operator,
    id: String,
    signal: OperatorSignal,
    deadline: Instant,
    refused: Arc<AtomicUsize>,
    permits: Arc<Semaphore>,
) -> Result<Done, String> {
    let _permit = permits.acquire_owned().await.map_err(|e| e.to_string())?;
    let mut pause = Duration::from_millis(2);
    loop {
        match operator.signal(&id, signal).await {
            Ok(_) => return Ok(Done::Signalled),
            Err(e) if e.status() == Some(409) && Instant::now() < deadline => {
                refused.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(e) => return Err(format!("trial {id}: {e}")),
        }
    }
}

/// Schedules the next trial, shortly ahead, when one finished (C < N).
async fn refill(operator: Operator, id: String, permits: Arc<Semaphore>) -> Result<Done, String> {
    let _permit = permits.acquire_owned().await.map_err(|e| e.to_string())?;
    let sent = Instant::now();
    let start = schedule_soon(&operator, &id, REFILL_LEAD).await?;
    Ok(Done::Scheduled {
        id,
        start,
        latency: sent.elapsed(),
    })
}

/// Why a trial failed, from its status.
async fn failure(operator: &Operator, id: &str) -> String {
    let reason = match operator.status(id).await {
        Ok(Some(status)) => status["failure"]
            .as_str()
            .unwrap_or("no reason given")
            .to_owned(),
        Ok(None) => "no engine".to_owned(),
        Err(e) => e.to_string(),
    };
    format!("trial {id} failed: {reason}")
}

/// Polls `GET /status` (every 100 ms) until `n` engines are listed Finished; returns how many.
async fn all_finished(operator: &Operator, n: usize, deadline: Instant) -> Result<usize, String> {
    let deadline = deadline.max(Instant::now() + Duration::from_secs(10));
    loop {
        let engines = operator.engines().await.map_err(|e| e.to_string())?;
        let finished = engines.iter().filter(|(_, s)| s == "Finished").count();
        if finished >= n || Instant::now() >= deadline {
            return Ok(finished);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The most threads seen.
pub struct Peak {
    pub threads: u64,
    /// The LCM's threads at that moment, by name.
    pub lcm_threads: String,
}

/// Samples the thread count while the benchmark runs.
pub struct Sampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Peak>,
}

impl Sampler {
    /// Starts sampling every 50 ms.
    pub fn start() -> Self {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut peak = Peak {
                threads: 0,
                lcm_threads: String::new(),
            };
            loop {
                let threads = process::threads().unwrap_or(0);
                if threads > peak.threads {
                    peak.threads = threads;
                    peak.lcm_threads = lcm_threads();
                }
                tokio::select! {
                    _ = &mut stopped => return peak,
                    () = tokio::time::sleep(SAMPLE_EVERY) => {}
                }
            }
        });
        Self { stop, task }
    }

    /// Stops and returns the peak.
    pub async fn stop(self) -> Peak {
        let _ = self.stop.send(());
        self.task.await.unwrap_or(Peak {
            threads: process::threads().unwrap_or(0),
            lcm_threads: lcm_threads(),
        })
    }
}

/// The LCM's threads, e.g. `3 = lcm-rt ×2, lcm-store ×1`.
pub fn lcm_threads() -> String {
    let named = process::threads_named(LCM_PREFIX);
    let total: usize = named.iter().map(|(_, n)| n).sum();
    let list: Vec<String> = named
        .iter()
        .map(|(name, count)| format!("{name} ×{count}"))
        .collect();
    format!("{total} = {}", list.join(", "))
}
