//! `lcm bench --idle N`: N engines run to the IDLE waiting point and are held there, to
//! measure what a live engine costs in memory and threads; then they are finished.

use std::collections::HashSet;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::runtime::Handle;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinSet;

use super::overhead::percentile;
use super::trials::lcm_threads;
use super::{
    BenchOptions, Harness, bytes, check_open_files, machine, print_table, process, schedule_soon,
};
use crate::sim::Platform;
use crate::sim::StatusChange;
use crate::sim::operator::{Operator, OperatorSignal};

/// Status calls in flight at once.
const PARALLEL: usize = 32;
/// Trials on the move (scheduled but not yet IDLE, or finishing) at once: the next one is sent
/// when one arrives, so connections and sockets stay few however many engines wait.
const WINDOW: usize = 200;
/// How far ahead of its schedule call each trial starts.
const LEAD: Duration = Duration::from_millis(100);

/// Runs the idle benchmark and prints the report.
pub async fn run(
    n: usize,
    options: &BenchOptions,
    lcm_runtime: &Handle,
    dir: &Path,
) -> Result<(), String> {
    let n = n.max(1);
    check_open_files(n.min(WINDOW));
    let harness = Harness::start(options, lcm_runtime, dir).await?;
    let result = hold(&harness, options, n).await;
    harness.stop().await;
    result
}

async fn hold(harness: &Harness, options: &BenchOptions, n: usize) -> Result<(), String> {
    let platform = &harness.platform;
    let operator = &harness.operator;
    // The simulator's own records would weigh on the memory measured here.
    platform.set_recording(false);
    let ids: Vec<String> = (0..n).map(|i| format!("idle-{i:05}")).collect();
    for id in &ids {
        platform.add_trial(Platform::trial(id, None));
    }
    let mut changes = platform.status_changes();
    let deadline = Instant::now() + Duration::from_secs(120) + Duration::from_millis(20) * n as u32;
    let threads_before = process::threads().unwrap_or(0);
    let rss_before = process::status_bytes("VmRSS").unwrap_or(0);

    // A rolling start: each trial starts shortly after it is scheduled, and the next one is
    // scheduled when one reaches IDLE.
    let began = Instant::now();
    windowed(&ids, &mut changes, "IDLE", deadline, |id| {
        let operator = operator.clone();
        async move { schedule_soon(&operator, &id, LEAD).await.map(|_| ()) }
    })
    .await?;
    let to_idle = began.elapsed();
    let waiting = confirm_waiting(operator, &ids, deadline).await?;
    let polls = poll_cost(operator, &ids).await?;
    // Let connections and buffers of the burst settle before reading memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = process::status_bytes("VmRSS").unwrap_or(0);
    let hwm = process::status_bytes("VmHWM").unwrap_or(0);
    let threads_idle = process::threads().unwrap_or(0);
    let lcm = lcm_threads();
    let responses = operator
        .responses(&ids[0])
        .await
        .map(|r| r.to_string().len())
        .unwrap_or(0);

    let finishing = Instant::now();
    windowed(&ids, &mut changes, "FINISHED", deadline, |id| {
        let operator = operator.clone();
        async move {
            operator
                .signal(&id, OperatorSignal::Finish)
                .await
                .map(|_| ())
                .map_err(|e| format!("finishing {id}: {e}"))
        }
    })
    .await?;
    let finish_wall = finishing.elapsed();

    let per_engine = rss_idle.saturating_sub(rss_before) as f64 / n as f64;
    let rows = vec![
        (
            "engines held at IDLE".to_owned(),
            format!("{waiting} / {n}"),
            "`GET /trial/{id}/status` says Waiting for the operator (active or finish)".to_owned(),
        ),
        (
            "time to IDLE".to_owned(),
            format!("{:.1} s", to_idle.as_secs_f64()),
            format!(
                "first schedule call → the last trial's IDLE in the repository; each trial starts {} ms after its schedule call, {WINDOW} on their way at once",
                LEAD.as_millis()
            ),
        ),
        (
            "RSS before → at IDLE".to_owned(),
            format!("{} → {}", bytes(rss_before as f64), bytes(rss_idle as f64)),
            "VmRSS of the process before scheduling (trials already in the simulated repository) and with every engine at IDLE".to_owned(),
        ),
        (
            "memory per live engine".to_owned(),
            bytes(per_engine),
            format!("(RSS at IDLE − RSS before) / {n}: the engine (tasks, channels, snapshot, checkpoint, and its journal: recorded responses and history), its token, scheduler entries, plus pooled connections; simulator recording off"),
        ),
        (
            "recorded responses of one engine".to_owned(),
            bytes(responses as f64),
            "size of `GET /trial/{id}/responses` as JSON (the engine keeps these in memory)".to_owned(),
        ),
        (
            "peak RSS".to_owned(),
            bytes(hwm as f64),
            "VmHWM of the whole process".to_owned(),
        ),
        (
            "OS threads before → at IDLE".to_owned(),
            format!("{threads_before} → {threads_idle} (LCM: {lcm})"),
            "`Threads` of /proc/self/status; LCM threads by name".to_owned(),
        ),
        polls.row("GET /status", n),
        polls.trial_row(n),
        (
            "finished afterwards".to_owned(),
            format!("{n} / {n} in {:.1} s", finish_wall.as_secs_f64()),
            format!("`POST /trial/{{id}}/finish` to each ({WINDOW} finishing at once), until the repository shows FINISHED"),
        ),
    ];
    print_table(
        &format!(
            "lcm bench --idle: {n} engines held at IDLE, callbacks after {} ms, on {}",
            options.callback_delay.as_millis(),
            machine(),
        ),
        &rows,
    );
    Ok(())
}

/// Calls made to measure what a poller's read costs.
const POLLS: usize = 2000;

/// What the reads pollers make often cost the LCM, with every engine waiting.
struct PollCost {
    status: (Duration, Vec<f64>),
    trial: (Duration, Vec<f64>),
}

impl PollCost {
    fn describe(
        what: &str,
        (cpu, latencies): &(Duration, Vec<f64>),
        n: usize,
    ) -> (String, String, String) {
        (
            format!("{what} with {n} live trials"),
            format!(
                "{:.1} µs LCM CPU a call; p50 {:.2} ms, p99 {:.2} ms",
                cpu.as_secs_f64() * 1e6 / POLLS as f64,
                percentile(latencies, 50.0),
                percentile(latencies, 99.0)
            ),
            format!(
                "{POLLS} calls, {PARALLEL} in flight: LCM threads' CPU / calls, and each call's round trip; the snapshot is read in place, the history never copied"
            ),
        )
    }

    fn row(&self, what: &str, n: usize) -> (String, String, String) {
        Self::describe(what, &self.status, n)
    }

    fn trial_row(&self, n: usize) -> (String, String, String) {
        Self::describe("GET /trial/{id}/status", &self.trial, n)
    }
}

/// Calls `GET /status` and `GET /trial/{id}/status` [`POLLS`] times each.
async fn poll_cost(operator: &Operator, ids: &[String]) -> Result<PollCost, String> {
    let measure = |paths: Vec<String>| async move {
        let cpu_before = process::cpu_of_threads(super::LCM_PREFIX);
        let mut latencies: Vec<f64> = futures_util::stream::iter(paths)
            .map(|path| async move {
                let sent = Instant::now();
                operator
                    .call(reqwest::Method::GET, &path, None)
                    .await
                    .map(|_| sent.elapsed().as_secs_f64() * 1000.0)
                    .map_err(|e| e.to_string())
            })
            .buffer_unordered(PARALLEL)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        latencies.sort_by(f64::total_cmp);
        let cpu = process::cpu_of_threads(super::LCM_PREFIX)
            .since(cpu_before)
            .total();
        Ok::<_, String>((cpu, latencies))
    };
    let status = measure(vec!["/status".to_owned(); POLLS]).await?;
    let trial = measure(
        (0..POLLS)
            .map(|i| format!("/trial/{}/status", ids[i % ids.len()]))
            .collect(),
    )
    .await?;
    Ok(PollCost { status, trial })
}

/// Runs `action` for every trial, [`WINDOW`] at a time: the next one starts when the
/// repository stores `status` for one of those under way. Returns when all have it.
async fn windowed<F, Fut>(
    ids: &[String],
    changes: &mut UnboundedReceiver<StatusChange>,
    status: &str,
    deadline: Instant,
    action: F,
) -> Result<(), String>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let n = ids.len();
    let mut pending = ids.iter();
    let mut calls = JoinSet::new();
    for id in pending.by_ref().take(WINDOW) {
        calls.spawn(action(id.clone()));
    }
    let mut seen = HashSet::new();
    while seen.len() < n {
        tokio::select! {
            change = changes.recv() => {
                let change = change.ok_or("the simulated repository stopped")?;
                if change.status == "FAILED" {
                    return Err(format!("trial {} failed", change.trial));
                }
                if change.status == status && seen.insert(change.trial)
                    && let Some(id) = pending.next()
                {
                    calls.spawn(action(id.clone()));
                }
            }
            Some(done) = calls.join_next() => {
                done.map_err(|e| format!("a driver task failed: {e}"))??;
            }
            () = tokio::time::sleep_until(deadline.into()) => {
                return Err(format!("only {} of {n} trials reached {status} in time", seen.len()));
            }
        }
    }
    Ok(())
}

/// Checks over the REST API that every engine waits for the operator; returns how many do.
async fn confirm_waiting(
    operator: &Operator,
    ids: &[String],
    deadline: Instant,
) -> Result<usize, String> {
    let mut pending: Vec<&String> = ids.iter().collect();
    loop {
        let answers: Vec<(&String, bool)> = futures_util::stream::iter(pending.iter().copied())
            .map(|id| async move {
                let waiting = operator.status(id).await.ok().flatten().is_some_and(|s| {
                    s["waiting_for"]
                        .as_str()
                        .is_some_and(|w| w.contains("active or finish"))
                });
                (id, waiting)
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        pending = answers
            .into_iter()
            .filter(|(_, waiting)| !waiting)
            .map(|(id, _)| id)
            .collect();
        if pending.is_empty() {
            return Ok(ids.len());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} engines never reached the IDLE waiting point (e.g. {})",
                pending.len(),
                pending[0]
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
