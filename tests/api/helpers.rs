//! `spawn_app()`: the real service on 127.0.0.1 (random port) against simulated trial
//! components, and a client that speaks to it like a user would.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use lcm::config::{KeySettings, Secret, Settings};
use lcm::domain::TrialId;
use lcm::engine::EngineHooks;
use lcm::engine::sequence::Step;
use lcm::engine::state::{Checkpoint, Lifecycle, Position};
use lcm::sim::{Component, Fault, FaultAction, Gate, Platform, RecordedRequest, SimOptions};
use lcm::startup::Application;
use lcm::store::sqlite::SqliteBackend;
use lcm::store::{Backend, Op, TrialRecord};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub use crate::common::*;

/// How a test wants its app.
pub struct AppOptions {
    pub sim: SimOptions,
    pub settings: Box<dyn FnOnce(&mut Settings)>,
    pub hooks: EngineHooks,
    /// A store backend instead of the SQLite file in a temporary directory.
    pub backend: Option<Box<dyn FnOnce() -> FlakyBackend>>,
    /// Trials and faults the simulated platform has before the service starts.
    pub platform: Box<dyn FnOnce(&Platform)>,
    /// An in-memory store whose reads fail while this is on (instead of `backend`).
    pub busy_reads: Option<BusyReads>,
    /// The service stops (as on SIGTERM) once this opens; it serves until the test ends if
    /// none.
    pub stop: Option<Gate>,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            sim: SimOptions::default(),
            settings: Box::new(|_| {}),
            hooks: EngineHooks::default(),
            backend: None,
            platform: Box::new(|_| {}),
            busy_reads: None,
            stop: None,
        }
    }
}

/// An in-memory SQLite store with `faults`.
pub struct FlakyBackend {
    pub inner: lcm::store::sqlite::SqliteBackend,
    pub faults: StoreFaults,
}

/// What a [`FlakyBackend`] does wrong: it fails every write while `broken` is set, and every
/// write but a pause's while `full` is (a full disk commits a transaction that writes no page,
/// as SQLite's `UPDATE` of a trial paused already does), the saves that `refused` picks while
/// it is on, and holds the writes `held` picks while it is held.
#[derive(Clone, Default)]
pub struct StoreFaults {
    pub broken: Arc<AtomicBool>,
    pub full: Arc<AtomicBool>,
    pub refused: RefusedSaves,
    pub held: HeldWrites,
}

/// A gate that holds the store's writes that `of` picks while it is held (a store slow to
/// commit them), and counts the writes waiting at it.
#[derive(Clone)]
pub struct HeldWrites {
    of: fn(&lcm::store::Op) -> bool,
    held: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    pub waiting: Arc<AtomicUsize>,
}

impl Default for HeldWrites {
    fn default() -> Self {
        Self::of(|_| false)
    }
}

impl HeldWrites {
    /// Holds the writes `ops` picks (while held).
    pub fn of(ops: fn(&lcm::store::Op) -> bool) -> Self {
        Self {
            of: ops,
            held: Arc::default(),
            waiting: Arc::default(),
        }
    }

    fn set(&self, held: bool) {
        let (lock, changed) = &*self.held;
        *lock.lock().unwrap() = held;
        changed.notify_all();
    }

    pub fn hold(&self) {
        self.set(true);
    }

    pub fn release(&self) {
        self.set(false);
    }

    /// Blocks the store's writer thread while `ops` are picked and the gate is held.
    fn pass(&self, ops: &[lcm::store::Op]) {
        if !ops.iter().any(self.of) {
            return;
        }
        let (lock, changed) = &*self.held;
        let mut held = lock.lock().unwrap();
        if *held {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            while *held {
                held = changed.wait(held).unwrap();
            }
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// A switch that fails every save of a trial in the states `of` picks while it is on, and the
/// counts of those saves it failed and let through (of the backend's transactions: the store
/// tries a refused write that was batched with others again alone).
#[derive(Clone)]
pub struct RefusedSaves {
    pub of: fn(lcm::engine::state::Lifecycle) -> bool,
    pub refusing: Arc<AtomicBool>,
    pub refused: Arc<AtomicUsize>,
    pub passed: Arc<AtomicUsize>,
}

impl Default for RefusedSaves {
    fn default() -> Self {
        Self::of(|_| false)
    }
}

impl RefusedSaves {
    /// Refuses the saves of a trial in the states `states` picks (while switched on).
    pub fn of(states: fn(lcm::engine::state::Lifecycle) -> bool) -> Self {
        Self {
            of: states,
            refusing: Arc::default(),
            refused: Arc::default(),
            passed: Arc::default(),
        }
    }

    /// Switches the refusal on or off.
    pub fn refuse(&self, on: bool) {
        self.refusing.store(on, Ordering::SeqCst);
    }

    /// Waits until saves of `what` have been refused `times` times (a refused write that
    /// shared a commit with others is tried alone again, and counts twice).
    pub async fn wait_refused(&self, what: &str, times: usize) {
        eventually(&format!("{what} refused {times} times"), || async {
            match self.refused.load(Ordering::SeqCst) {
                n if n >= times => Ok(()),
                n => Err(format!("{n} refused")),
            }
        })
        .await;
    }

    fn refuses(&self, ops: &[lcm::store::Op]) -> bool {
        let picked = ops.iter().any(
            |op| matches!(op, lcm::store::Op::PutTrial(record) if (self.of)(record.lifecycle)),
        );
        if !picked {
            return false;
        }
        let refuses = self.refusing.load(Ordering::SeqCst);
        let count = if refuses { &self.refused } else { &self.passed };
        count.fetch_add(1, Ordering::SeqCst);
        refuses
    }
}

/// The service with its settings changed by `settings` (the rest as [`spawn_app`]).
pub async fn spawn_app_with_settings(settings: impl FnOnce(&mut Settings) + 'static) -> TestApp {
    spawn_app_with(AppOptions {
        settings: Box::new(settings),
        ..AppOptions::default()
    })
    .await
}

/// The service with `options` on an in-memory store whose writes fail while the returned
/// switch is on.
pub async fn spawn_app_with_flaky_store(options: AppOptions) -> (TestApp, Arc<AtomicBool>) {
    let (app, faults) = spawn_app_with_store_faults(options, StoreFaults::default()).await;
    (app, faults.broken)
}

/// The service on an in-memory store that refuses the saves of trials in the states `states`
/// picks while it is switched on; returns the switch and its counts.
pub async fn spawn_app_refusing_saves(
    states: fn(lcm::engine::state::Lifecycle) -> bool,
    settings: impl FnOnce(&mut Settings) + 'static,
) -> (TestApp, RefusedSaves) {
    let faults = StoreFaults {
        refused: RefusedSaves::of(states),
        ..StoreFaults::default()
    };
    let options = AppOptions {
        settings: Box::new(settings),
        ..AppOptions::default()
    };
    let (app, faults) = spawn_app_with_store_faults(options, faults).await;
    (app, faults.refused)
}

/// The service with `options` on an in-memory store with `faults`; returns them, to switch.
pub async fn spawn_app_with_store_faults(
    options: AppOptions,
    faults: StoreFaults,
) -> (TestApp, StoreFaults) {
    let switches = faults.clone();
    let app = spawn_app_with(AppOptions {
        backend: Some(Box::new(move || FlakyBackend {
            inner: lcm::store::sqlite::SqliteBackend::in_memory().expect("in-memory store"),
            faults,
        })),
        ..options
    })
    .await;
    (app, switches)
}

impl lcm::store::Backend for FlakyBackend {
    fn apply(&mut self, ops: &[lcm::store::Op]) -> Result<Vec<usize>, lcm::store::StoreError> {
        let faults = &self.faults;
        faults.held.pass(ops);
        // A full disk fails what writes; a transaction with nothing in it commits still.
        let broken = faults.broken.load(Ordering::SeqCst) && !ops.is_empty();
        let full = faults.full.load(Ordering::SeqCst)
            && !ops
                .iter()
                .all(|op| matches!(op, lcm::store::Op::SetPaused { .. }));
        if broken || full || faults.refused.refuses(ops) {
            return Err(lcm::store::StoreError::Unwritable(
                "disk I/O error (simulated)".into(),
            ));
        }
        self.inner.apply(ops)
    }

    fn load(&mut self) -> Result<lcm::store::Loaded, lcm::store::StoreError> {
        self.inner.load()
    }

    fn reader(&self) -> Result<Box<dyn lcm::store::Reader>, lcm::store::StoreError> {
        self.inner.reader()
    }

    fn check(&mut self) -> Result<(), lcm::store::StoreError> {
        self.inner.check()
    }
}

/// A switch that fails every read of the store while it is on (a store that does not
/// answer), and the count of the reads it failed; and a gate that holds the answers of reads
/// of a trial's record (a slow store).
#[derive(Clone, Default)]
pub struct BusyReads {
    pub on: Arc<AtomicBool>,
    pub refused: Arc<AtomicUsize>,
    pub slow: SlowReads,
}

/// While held, a read of a trial's record is made but its answer waits (what it read may be
/// stale by the time it arrives); counts the answers waiting.
#[derive(Clone, Default)]
pub struct SlowReads {
    held: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    waiting: Arc<AtomicUsize>,
}

impl SlowReads {
    pub fn hold(&self) {
        *self.held.0.lock().unwrap() = true;
    }

    pub fn release(&self) {
        *self.held.0.lock().unwrap() = false;
        self.held.1.notify_all();
    }

    /// How many answers wait at the gate.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Waits while the gate is held (on the store's blocking reader thread).
    fn pass(&self) {
        let (held, released) = &*self.held;
        let mut now = held.lock().unwrap();
        if *now {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            while *now {
                now = released.wait(now).unwrap();
            }
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// An in-memory SQLite store whose reads fail while its switch is on.
struct BusyBackend {
    inner: lcm::store::sqlite::SqliteBackend,
    reads: BusyReads,
}

impl lcm::store::Backend for BusyBackend {
    fn apply(&mut self, ops: &[lcm::store::Op]) -> Result<Vec<usize>, lcm::store::StoreError> {
        self.inner.apply(ops)
    }

    fn load(&mut self) -> Result<lcm::store::Loaded, lcm::store::StoreError> {
        self.inner.load()
    }

    fn reader(&self) -> Result<Box<dyn lcm::store::Reader>, lcm::store::StoreError> {
        Ok(Box::new(BusyReader {
            inner: self.inner.reader()?,
            reads: self.reads.clone(),
        }))
    }
}

/// The reader of a [`BusyBackend`].
struct BusyReader {
    inner: Box<dyn lcm::store::Reader>,
    reads: BusyReads,
}

impl BusyReader {
    /// Fails the read while the store is busy.
    fn answering(&self) -> Result<(), lcm::store::StoreError> {
        if !self.reads.on.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.reads.refused.fetch_add(1, Ordering::SeqCst);
        Err(lcm::store::StoreError::Backend(
            "database is locked (simulated)".into(),
        ))
    }
}

impl lcm::store::Reader for BusyReader {
    fn trials(
        &mut self,
        query: &lcm::store::TrialQuery,
    ) -> Result<Vec<lcm::store::ListedTrial>, lcm::store::StoreError> {
        self.answering()?;
        self.inner.trials(query)
    }

    fn counts(
        &mut self,
        id_contains: Option<&str>,
    ) -> Result<Vec<(lcm::store::ListedStatus, u64)>, lcm::store::StoreError> {
        self.answering()?;
        self.inner.counts(id_contains)
    }

    fn trial(
        &mut self,
        id: &lcm::domain::TrialId,
    ) -> Result<Option<lcm::store::StoredTrial>, lcm::store::StoreError> {
        self.answering()?;
        let read = self.inner.trial(id);
        self.reads.slow.pass();
        read
    }

    fn ids(&mut self) -> Result<Vec<String>, lcm::store::StoreError> {
        self.answering()?;
        self.inner.ids()
    }

    fn events(
        &mut self,
        id: &lcm::domain::TrialId,
    ) -> Result<Vec<lcm::engine::state::TrialEvent>, lcm::store::StoreError> {
        self.answering()?;
        self.inner.events(id)
    }

    fn responses(
        &mut self,
        id: &lcm::domain::TrialId,
    ) -> Result<Vec<lcm::engine::state::ResponseRecord>, lcm::store::StoreError> {
        self.answering()?;
        self.inner.responses(id)
    }

    fn audit(
        &mut self,
        query: &lcm::store::AuditQuery,
    ) -> Result<Vec<lcm::store::AuditEntry>, lcm::store::StoreError> {
        self.answering()?;
        self.inner.audit(query)
    }
}

/// How the service under test runs.
pub enum Server {
    /// In this process, on its own task.
    Task(tokio::task::JoinHandle<()>),
    /// The real `lcm` binary (killed when the test ends).
    Process(tokio::process::Child),
}

/// A running service and its simulated platform.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub platform: Platform,
    pub logs: tempfile::TempDir,
    pub server: Server,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        match &mut self.server {
            Server::Task(task) => task.abort(),
            Server::Process(child) => {
                let _ = child.start_kill();
            }
        }
    }
}

/// A response read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl Answer {
    /// The `detail` of an error answer.
    pub fn detail(&self) -> &str {
        self.body["detail"].as_str().unwrap_or_default()
    }
}

/// Settings that try every request once: one injected 500 fails the step.
pub fn single_attempt(settings: &mut Settings) {
    settings.executor.retry.max_attempts = 1;
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(AppOptions::default()).await
}

pub async fn spawn_app_with(options: AppOptions) -> TestApp {
    let platform = Platform::start(options.sim)
        .await
        .expect("simulators start");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let logs = tempfile::tempdir().expect("tempdir");
    let mut settings = Settings::defaults().expect("defaults");
    settings.server.bind = format!("127.0.0.1:{port}");
    settings.server.public_url = format!("http://127.0.0.1:{port}");
    settings.auth.api_key = Secret::new(API_KEY);
    settings.auth.token_secret = Secret::new(TOKEN_SECRET);
    settings.auth.keys = ROLE_KEYS
        .iter()
        .map(|(name, key, role)| KeySettings {
            name: (*name).to_owned(),
            key: Some(Secret::new(*key)),
            key_sha256: None,
            role: *role,
        })
        .collect();
    settings.executor.request_timeout_secs = 5;
    // The default policy's attempts, with waits short enough for tests.
    settings.executor.retry.initial_backoff_ms = 10;
    settings.executor.retry.max_backoff_ms = 50;
    settings.logging.dir = logs.path().to_path_buf();
    settings.store.data_dir = logs.path().join("data");
    platform.configure(&mut settings);
    (options.settings)(&mut settings);
    (options.platform)(&platform);
    let app = match (options.backend, options.busy_reads) {
        (Some(backend), None) => {
            Application::with_backend(settings, listener, options.hooks, backend()).await
        }
        (None, Some(reads)) => {
            let backend = BusyBackend {
                inner: lcm::store::sqlite::SqliteBackend::in_memory().expect("in-memory store"),
                reads,
            };
            Application::with_backend(settings, listener, options.hooks, backend).await
        }
        (None, None) => Application::with_listener(settings, listener, options.hooks).await,
        (Some(_), Some(_)) => panic!("busy reads come with a store of their own"),
    }
    .expect("app builds");
    let stop = options.stop;
    let server = tokio::spawn(async move {
        let stopped = async move {
            match stop {
                Some(gate) => gate.passed().await,
                None => std::future::pending().await,
            }
        };
        let _ = app.run_until(stopped).await;
    });
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        client: client(),
        platform,
        logs,
        server: Server::Task(server),
    }
}

/// The statuses a trial that goes active writes to the repository, in order.
pub const FULL_HISTORY: [&str; 6] = [
    "ACTIVATING_1",
    "ACTIVATING_2",
    "IDLE",
    "ACTIVE",
    "STOPPING",
    "FINISHED",
];

/// The statuses a trial finished from IDLE writes to the repository, in order.
pub const SHORT_HISTORY: [&str; 5] = [
    "ACTIVATING_1",
    "ACTIVATING_2",
    "IDLE",
    "STOPPING",
    "FINISHED",
];

/// What `waiting_for` says while a trial waits at IDLE for the operator.
pub const WAITING_OPERATOR: &str = "operator (active or finish)";

/// What `waiting_for` says while a trial waits for its slice to be created.
pub const WAITING_SLICE: &str = "slice callback (slice created)";

/// The requests a whole trial sends, in order (with or without going active).
pub fn full_sequence(id: &str, with_active: bool) -> Vec<String> {
    let mut lines = vec![
        "GET /trial/{id}/",
        "GET /trial/{id}/",
        "POST /sliceDeployment",
        "PUT /trial/{id}/",
        "GET /trial/{id}/",
        "POST /flightplan",
        "PUT /trial/{id}/",
        "GET /trial/{id}/",
        "POST /measurementjobs",
        "POST /markKPIData",
        "POST /markKPIData",
        "PUT /trial/{id}/",
    ];
    if with_active {
        lines.extend(["POST /markKPIData", "POST /markKPIData", "PUT /trial/{id}/"]);
    }
    lines.extend([
        "PUT /trial/{id}/",
        "POST /markKPIData",
        "POST /markKPIData",
        "DELETE /measurementjobs/mj-{id}",
        "DELETE /sliceDeployment/{id}",
        "PUT /trial/{id}/",
    ]);
    lines.iter().map(|l| l.replace("{id}", id)).collect()
}

/// An RFC 3339 time `ms` milliseconds from now, in UTC.
pub fn in_ms(ms: i64) -> String {
    (Utc::now() + chrono::Duration::milliseconds(ms))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl TestApp {
    /// Sends a request with the API key in the `Authorization` header.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        self.call_as(method, path, body, Some(API_KEY)).await
    }

    /// Sends a request with `credential` (if any) in the `Authorization` header.
    pub async fn call_as(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        credential: Option<&str>,
    ) -> Answer {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.address));
        if let Some(credential) = credential {
            request = request.header("Authorization", credential);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        read(request.send().await.expect("request reaches the service")).await
    }

    /// `POST path` with `key`; returns the minted token of `POST /token/{id}`.
    pub async fn post_as(&self, path: &str, key: &str) -> String {
        let answer = self.call_as(Method::POST, path, None, Some(key)).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        answer.body["Authorization"]
            .as_str()
            .expect("a token")
            .to_owned()
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Option<Value>) -> Answer {
        self.call(Method::POST, path, body).await
    }

    /// `POST path` with `body` sent as written, as JSON, with the API key.
    pub async fn post_text(&self, path: &str, body: &str) -> Answer {
        self.send_text(Method::POST, path, body).await
    }

    /// `DELETE path` with `body` sent as written, as JSON, with the API key.
    pub async fn delete_with_body(&self, path: &str, body: &str) -> Answer {
        self.send_text(Method::DELETE, path, body).await
    }

    async fn send_text(&self, method: Method, path: &str, body: &str) -> Answer {
        let request = self
            .client
            .request(method, format!("{}{path}", self.address))
            .header("Authorization", API_KEY)
            .header("Content-Type", "application/json")
            .body(body.to_owned());
        read(request.send().await.expect("request reaches the service")).await
    }

    /// Brings trial `id` to IDLE and sends `active`; the repository answers its status write
    /// 503 asking to be tried again in ten minutes (a wait the settings must allow). Returns
    /// once the write waits.
    pub async fn status_write_waiting_ten_minutes(&self, id: &str) {
        self.start_to_idle(id).await;
        let busy = FaultAction::RetryAfter(503, lcm::sim::RetryAfter::Seconds(600));
        self.platform.inject(
            Fault::new(Component::Repository, "PUT", "/trial/", busy)
                .for_trial(id)
                .times(1),
        );
        let active = self.post(&format!("/trial/{id}/active"), None).await;
        assert_eq!(active.status, StatusCode::OK, "{active:?}");
        self.wait_event(id, "step_retry", "trying again in 600")
            .await;
    }

    /// `POST /trial/{id}/abort` with `reason`.
    pub async fn ask_abort(&self, id: &str, reason: &str) -> Answer {
        self.post(
            &format!("/trial/{id}/abort"),
            Some(serde_json::json!({"reason": reason})),
        )
        .await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        self.call(Method::DELETE, path, None).await
    }

    /// `POST /debug/trial/schedule`.
    pub async fn schedule(&self, id: &str, start_time: &str) -> Answer {
        self.post(
            "/debug/trial/schedule",
            Some(json!({"trial_id": id, "start_time": start_time})),
        )
        .await
    }

    /// Puts an approved trial in the repository and schedules it to start right away.
    pub async fn start_trial(&self, id: &str) {
        self.platform.add_trial(Platform::trial(id, None));
        self.schedule_in(id, 300).await;
    }

    /// Deletes the engine of `id`, which may still have something deployed: refused (409),
    /// then deleted with `?force=true`. Returns the refusal and the forced delete's message.
    pub async fn delete_refused_then_forced(&self, id: &str) -> (Answer, String) {
        let refused = self.delete(&format!("/debug/engine/{id}")).await;
        assert_detail(&refused, StatusCode::CONFLICT);
        let forced = self.delete(&format!("/debug/engine/{id}?force=true")).await;
        assert_eq!(forced.status, StatusCode::OK, "{forced:?}");
        let message = forced.body["message"].as_str().unwrap_or_default();
        (refused, message.to_owned())
    }

    /// Starts trial `id` with its slice-created callback dropped and waits until its engine
    /// waits for it: a trial at a component's wait. Returns the trial's token.
    pub async fn wait_at_slice_callback(&self, id: &str) -> String {
        self.platform.inject(drop_slice_callback(id));
        self.start_trial(id).await;
        self.wait_waiting(id, WAITING_SLICE).await;
        self.token_of(id)
    }

    /// Starts trial `id` and waits until its engine waits at IDLE for the operator: a live
    /// engine that stays put.
    pub async fn start_to_idle(&self, id: &str) {
        self.start_trial(id).await;
        self.wait_waiting(id, "operator (active or finish)").await;
    }

    /// Starts trial `id` and waits until its slice deployment is in flight; returns a token
    /// of the trial, to send the slice callback early with.
    pub async fn slice_deployment_in_flight(&self, id: &str) -> String {
        self.start_trial(id).await;
        self.wait_for(id, "SliceDeployment in flight", |s| {
            s["step"] == "SliceDeployment"
        })
        .await;
        self.post_as(&format!("/token/{id}"), API_KEY).await
    }

    /// Schedules `id` to start `ms` milliseconds from now; returns the start time. On a busy
    /// machine the request can arrive after the start time it carries: then a new one is
    /// chosen, as a client would.
    pub async fn schedule_in(&self, id: &str, ms: i64) -> DateTime<Utc> {
        self.schedule_in_as(id, ms, API_KEY).await
    }

    /// [`TestApp::schedule_in`] with the API key `key`.
    pub async fn schedule_in_as(&self, id: &str, ms: i64, key: &str) -> DateTime<Utc> {
        self.schedule_written(id, ms, key, |start| {
            start.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        })
        .await
    }

    /// [`TestApp::schedule_in_as`] with the start time sent as `write` writes it.
    pub async fn schedule_written(
        &self,
        id: &str,
        ms: i64,
        key: &str,
        write: impl Fn(DateTime<Utc>) -> String,
    ) -> DateTime<Utc> {
        schedule_ahead(id, ms, |start| {
            let body = json!({"trial_id": id, "start_time": write(start)});
            async move {
                let answer = self
                    .call_as(Method::POST, "/debug/trial/schedule", Some(body), Some(key))
                    .await;
                (answer.status.as_u16(), answer.body)
            }
        })
        .await
    }

    /// Starts trial `id` 300 ms after `instant` (or after now, if that is later) and waits for
    /// its engine: once it is there, `instant` has passed, whatever was due then.
    pub async fn start_after(&self, id: &str, instant: DateTime<Utc>) {
        self.platform.add_trial(Platform::trial(id, None));
        let wait = (instant - Utc::now()).num_milliseconds().max(0);
        self.schedule_in(id, wait + 300).await;
        self.wait_engine(id).await;
    }

    /// Polls `GET /audit{query}` (as the admin) until its entries satisfy `done`; returns them.
    /// An entry is written once its answer is known, so a test waits for the one it expects.
    pub async fn audited(
        &self,
        query: &str,
        what: &str,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        eventually(what, || async {
            let audit = self.get(&format!("/audit{query}")).await;
            match audit.body["entries"].as_array() {
                Some(entries) if done(entries) => Ok(entries.clone()),
                _ => Err(format!("{audit:?}")),
            }
        })
        .await
    }

    /// The trial's history (`GET /trial/{id}/history`).
    pub async fn history(&self, id: &str) -> Vec<Value> {
        let answer = self.get(&format!("/trial/{id}/history")).await;
        match answer.body["history"].as_array() {
            Some(history) => history.clone(),
            None => panic!("no history for {id}: {answer:?}"),
        }
    }

    /// Holds the next `method path` request of trial `id` to `component` until the returned
    /// gate opens.
    pub fn hold_next(
        &self,
        component: Component,
        method: &'static str,
        path: &'static str,
        id: &str,
    ) -> Gate {
        let gate = Gate::default();
        self.platform.inject(
            Fault::new(
                component,
                method,
                path,
                FaultAction::HoldUntil(gate.clone()),
            )
            .for_trial(id)
            .times(1),
        );
        gate
    }

    /// Waits until the components have had trial `id`'s `method path` request: a step is
    /// shown before its request leaves, so an abort or pause meant for a request in flight
    /// waits for this instead.
    pub async fn wait_sent(&self, id: &str, method: &str, path: &str) {
        eventually_at_least(&format!("{method} {path} of {id} sent"), 1, || {
            sent(self, id, method, path).len()
        })
        .await;
    }

    /// Trial enforcement closes trial `id`'s slice once without calling back: the test sends
    /// the slice-closed callback itself.
    pub fn slice_closes_without_callback(&self, id: &str) {
        self.platform.inject(
            Fault::new(
                Component::Enforcement,
                "DELETE",
                "/sliceDeployment/",
                FaultAction::DropCallback,
            )
            .for_trial(id)
            .times(1),
        );
    }

    /// Waits until the trial's history holds a `kind` event whose detail contains `detail`;
    /// returns that event.
    pub async fn wait_event(&self, id: &str, kind: &str, detail: &str) -> Value {
        eventually(&format!("{id}: a {kind} event with {detail:?}"), || async {
            let history = self.history(id).await;
            history
                .iter()
                .find(|e| {
                    e["event"] == kind && e["detail"].as_str().unwrap_or_default().contains(detail)
                })
                .cloned()
                .ok_or_else(|| format!("{history:?}"))
        })
        .await
    }

    /// The kinds of a trial's history, in order.
    pub async fn event_kinds(&self, id: &str) -> Vec<String> {
        self.history(id)
            .await
            .iter()
            .map(|e| e["event"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// `GET /trial/{id}/status`.
    pub async fn trial_status(&self, id: &str) -> Value {
        let answer = self.get(&format!("/trial/{id}/status")).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        answer.body
    }

    /// Polls the trial's status until `done` holds; panics after 20 s with the last status.
    pub async fn wait_for(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let path = format!("/trial/{id}/status");
        eventually(&format!("trial {id}: {what}"), || async {
            let answer = self.get(&path).await;
            match answer.status == StatusCode::OK && done(&answer.body) {
                true => Ok(answer.body),
                false => Err(answer.body.to_string()),
            }
        })
        .await
    }

    /// Waits until the executor pauses at the waiting point described by `waiting_for`.
    pub async fn wait_waiting(&self, id: &str, waiting_for: &str) -> Value {
        self.wait_for(id, waiting_for, |s| {
            s["status"] == "Waiting"
                && s["waiting_for"]
                    .as_str()
                    .is_some_and(|w| w.contains(waiting_for))
        })
        .await
    }

    pub async fn wait_finished(&self, id: &str) -> Value {
        self.wait_for(id, "Finished", |s| s["finished"] == true)
            .await
    }

    /// Waits until the trial has failed and its failure procedure is done (restorable).
    /// Waits until trial `id`'s clean-up has failed (`cleanup_failed`); returns its status.
    pub async fn wait_cleanup_failed(&self, id: &str) -> Value {
        self.wait_for(id, "a failed clean-up", |s| s["cleanup_failed"] == true)
            .await
    }

    pub async fn wait_failed(&self, id: &str) -> Value {
        self.wait_for(id, "Failed", |s| {
            s["failed"] == true && s["restorable"] == true
        })
        .await
    }

    /// Starts trial `id` and drives it to FINISHED ([`TestApp::start_trial`], then
    /// [`TestApp::drive_to_finished`]).
    pub async fn run_to_finished(&self, id: &str) {
        self.start_trial(id).await;
        self.drive_to_finished(id).await;
    }

    /// Runs a started trial through IDLE, active, finish to FINISHED.
    pub async fn drive_to_finished(&self, id: &str) {
        self.wait_waiting(id, "operator (active or finish)").await;
        let answer = self.post(&format!("/trial/{id}/active"), None).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        self.wait_waiting(id, "operator (finish)").await;
        let answer = self.post(&format!("/trial/{id}/finish"), None).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        self.wait_finished(id).await;
    }

    /// The callback token the LCM handed to trial enforcement for `id`.
    pub fn token_of(&self, id: &str) -> String {
        self.sent_token(id)
            .expect("the LCM sent a token to trial enforcement")
    }

    /// [`Self::token_of`], once trial enforcement has it: a step is shown running before its
    /// request arrives.
    pub async fn token_once_sent(&self, id: &str) -> String {
        eventually("the LCM to send a token to trial enforcement", || async {
            self.sent_token(id).ok_or_else(|| "none yet".to_owned())
        })
        .await
    }

    fn sent_token(&self, id: &str) -> Option<String> {
        self.platform
            .requests_for(id)
            .into_iter()
            .filter(|r| r.component == Component::Enforcement)
            .find_map(|r| {
                r.body
                    .as_ref()
                    .and_then(|b| b.get("Authorization"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
    }

    /// Posts a callback for `id` with `token`.
    pub async fn callback(&self, id: &str, kind: &str, token: Option<&str>) -> Answer {
        self.call_as(
            Method::POST,
            &format!("/trial/{id}/callback/{kind}"),
            None,
            token,
        )
        .await
    }

    /// Opens the trial's event stream (`GET /trial/{id}/events`) with the API key.
    pub async fn open_events(&self, id: &str) -> reqwest::Response {
        let response = self
            .client
            .get(format!("{}/trial/{id}/events", self.address))
            .header("Authorization", API_KEY)
            .send()
            .await
            .expect("events");
        assert_eq!(response.status(), StatusCode::OK);
        response
    }

    /// The failure file of a trial, parsed.
    pub fn failure_file(&self, id: &str) -> Option<Value> {
        let path = self.logs.path().join(format!("executor_{id}_fail.log"));
        let text = std::fs::read_to_string(path).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Every engine in `/status` as (id, status).
    pub async fn engines(&self) -> Vec<(String, String)> {
        let status = self.get("/status").await;
        status.body["Executor_Engine_instances"]
            .as_array()
            .expect("an array")
            .iter()
            .map(|e| {
                (
                    e["ID"].as_str().unwrap_or_default().to_owned(),
                    e["status"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// Polls until the engine of `id` has left memory.
    pub async fn wait_engine_gone(&self, id: &str) {
        eventually(&format!("the engine of {id} to leave memory"), || async {
            let engines = self.engines().await;
            match engines.iter().any(|(e, _)| e == id) {
                false => Ok(()),
                true => Err(format!("{engines:?}")),
            }
        })
        .await
    }

    /// Polls until the engine of `id` exists; returns when it was first seen.
    pub async fn wait_engine(&self, id: &str) -> DateTime<Utc> {
        eventually(&format!("an engine for {id}"), || async {
            let engines = self.engines().await;
            match engines.iter().any(|(e, _)| e == id) {
                true => Ok(Utc::now()),
                false => Err(format!("{engines:?}")),
            }
        })
        .await
    }
}

/// Runs the `lcm` binary with `args` and extra environment in `dir` until it exits; panics if
/// it runs longer than `limit`.
pub async fn run_lcm(
    args: &[&str],
    env: &[(&str, &str)],
    dir: &std::path::Path,
    limit: Duration,
) -> std::process::Output {
    let mut command = lcm_command(dir);
    command
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tokio::time::timeout(limit, command.output())
        .await
        .unwrap_or_else(|_| panic!("lcm {args:?} did not end within {limit:?}"))
        .expect("the lcm binary runs")
}

/// Reads a response whole; a body that is not JSON becomes a string value.
pub async fn read(response: reqwest::Response) -> Answer {
    let status = response.status();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer { status, body }
}

/// The requests `id` caused that match `method` and contain `path`, in order.
pub fn sent(app: &TestApp, id: &str, method: &str, path: &str) -> Vec<RecordedRequest> {
    app.platform
        .requests_for(id)
        .into_iter()
        .filter(|r| r.method == method && r.path.contains(path))
        .collect()
}

/// The request lines (`METHOD /path`) a trial caused, in order.
pub fn lines(app: &TestApp, id: &str) -> Vec<String> {
    app.platform
        .requests_for(id)
        .iter()
        .map(|r| r.line())
        .collect()
}

/// Everything the service has logged so far to its log directory (the real binary logs
/// there; the in-process service logs to the test's output).
pub fn log_text(app: &TestApp) -> String {
    std::fs::read_dir(app.logs.path())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .collect()
}

/// The first line of the service's log that has every one of `words`, once it is written.
pub async fn logged(app: &TestApp, words: &[&str]) -> String {
    eventually(&format!("a log line with {words:?}"), || async {
        let log = log_text(app);
        log.lines()
            .find(|line| words.iter().all(|word| line.contains(word)))
            .map(str::to_owned)
            .ok_or(log)
    })
    .await
}

/// How a test wants the real binary (see [`spawn_binary_with`]).
pub struct BinaryOptions<'a> {
    /// `LCM__…` variables over the tests' own (and those over the built-in defaults).
    pub env: &'a [(&'a str, &'a str)],
    /// Where its stdout goes.
    pub stdout: Stdio,
    /// Trials and faults the simulated platform has before the binary starts.
    pub platform: Box<dyn FnOnce(&Platform) + 'a>,
}

impl Default for BinaryOptions<'_> {
    fn default() -> Self {
        Self {
            env: &[],
            stdout: Stdio::null(),
            platform: Box::new(|_| {}),
        }
    }
}

/// Reads a Server-Sent Events stream until what it sent so far satisfies `until`, or it ends;
/// returns all it sent. Each chunk must come within `limit`.
pub async fn read_sse(
    mut stream: reqwest::Response,
    until: impl Fn(&str) -> bool,
    limit: Duration,
) -> String {
    let mut seen = String::new();
    while !until(&seen) {
        let chunk = tokio::time::timeout(limit, stream.chunk())
            .await
            .unwrap_or_else(|_| panic!("nothing more within {limit:?}; so far: {seen}"))
            .unwrap_or_else(|e| panic!("the stream broke ({e}); so far: {seen}"));
        match chunk {
            Some(bytes) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            None => break,
        }
    }
    seen
}

pub async fn spawn_binary() -> TestApp {
    spawn_binary_with(BinaryOptions::default()).await
}

/// Simulated components (KPI monitoring without OAuth2), then the real `lcm` binary on a free
/// port against them, configured by environment: the test keys, its store and logs in
/// `app.logs`, `options.env` over that. Returns once it answers; it is killed when the app is
/// dropped.
pub async fn spawn_binary_with(options: BinaryOptions<'_>) -> TestApp {
    let platform = Platform::start(SimOptions {
        kpi_oauth2: false,
        ..SimOptions::default()
    })
    .await
    .expect("simulators");
    (options.platform)(&platform);
    let mut app = TestApp {
        address: format!("http://127.0.0.1:{}", free_port()),
        client: client(),
        platform,
        logs: tempfile::tempdir().expect("tempdir"),
        server: Server::Task(tokio::spawn(async {})),
    };
    let mut command = binary_command(&app);
    command
        .envs(options.env.iter().copied())
        .stdout(options.stdout);
    app.server = Server::Process(start_lcm(&mut command, app.port()).await);
    app
}

/// The binary of an app from [`spawn_binary_with`], with the tests' configuration only.
fn binary_command(app: &TestApp) -> tokio::process::Command {
    let dir = app.logs.path();
    let service = |address: &std::net::SocketAddr| format!("http://{address}");
    let mut command = lcm_command(dir);
    command
        .env("LCM__SERVER__BIND", format!("127.0.0.1:{}", app.port()))
        .env("LCM__SERVER__PUBLIC_URL", &app.address)
        .env("LCM__AUTH__API_KEY", API_KEY)
        .env("LCM__AUTH__TOKEN_SECRET", TOKEN_SECRET)
        .env("LCM__LOGGING__DIR", dir)
        .env("LCM__STORE__DATA_DIR", dir.join("data"))
        .env(
            "LCM__SERVICES__TRIAL_REPOSITORY__URL",
            service(&app.platform.repository),
        )
        .env(
            "LCM__SERVICES__TRIAL_ENFORCEMENT__URL",
            service(&app.platform.enforcement),
        )
        .env(
            "LCM__SERVICES__KPI_MONITORING__URL",
            service(&app.platform.kpi),
        );
    command
}

impl TestApp {
    /// The port the service listens on.
    pub fn port(&self) -> u16 {
        self.address
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .expect("the address ends in a port")
    }

    /// Starts the binary of an app from [`spawn_binary_with`] again, once it was killed or
    /// stopped: the same store, logs and port, with the tests' configuration (not the extra
    /// environment of its first start).
    pub async fn restart_binary(&mut self) {
        self.restart_binary_with(&[]).await;
    }

    /// [`Self::restart_binary`], with `LCM__…` variables over the tests' configuration.
    pub async fn restart_binary_with(&mut self, env: &[(&str, &str)]) {
        let mut command = binary_command(self);
        command.envs(env.iter().copied());
        self.server = Server::Process(start_lcm(&mut command, self.port()).await);
    }
}

/// The value of one series (name and labels, exactly as rendered) in a `GET /metrics` text,
/// if it is listed.
pub fn series_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The service's `GET /metrics` text.
pub async fn scrape(app: &TestApp) -> String {
    let response = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .expect("metrics");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    response.text().await.expect("text")
}

/// Sends SIGTERM to the binary and waits for it to exit; returns its exit status and how long
/// it took. Panics if it runs on longer than `limit`.
pub async fn terminate(app: &mut TestApp, limit: Duration) -> (std::process::ExitStatus, Duration) {
    let Server::Process(child) = &mut app.server else {
        unreachable!("the binary runs as a process");
    };
    let sent = tokio::time::Instant::now();
    send_signal(child, "-TERM").await;
    let status = tokio::time::timeout(limit, child.wait())
        .await
        .unwrap_or_else(|_| panic!("the service did not stop within {limit:?}"))
        .expect("exit status");
    (status, sent.elapsed())
}

/// A callback token for `trial` signed with `secret` (a forged one, unless it is
/// [`TOKEN_SECRET`]), expiring `exp_in_secs` from now (in the past, if negative).
pub fn signed_token(secret: &str, trial: &str, exp_in_secs: i64) -> String {
    let now = Utc::now().timestamp();
    let claims = json!({
        "trial_id": trial,
        "iat": now.min(now + exp_in_secs),
        "exp": now + exp_in_secs,
        "jti": uuid::Uuid::new_v4().to_string(),
    });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("the test token encodes")
}

/// When the `n`-th event of `kind` in `history` happened.
pub fn event_time(history: &[Value], kind: &str, n: usize) -> DateTime<Utc> {
    let event = history
        .iter()
        .filter(|e| e["event"] == kind)
        .nth(n)
        .unwrap_or_else(|| panic!("no {kind} event number {n}: {history:#?}"));
    event["at"]
        .as_str()
        .and_then(|at| at.parse().ok())
        .unwrap_or_else(|| panic!("no time in {event}"))
}

/// Asserts an error answer: `status`, and a JSON `detail` that says something.
pub fn assert_detail(answer: &Answer, status: StatusCode) {
    assert_eq!(answer.status, status, "{answer:?}");
    assert!(
        !answer.detail().is_empty(),
        "an error answer has a JSON detail string: {answer:?}"
    );
}

/// Asserts a 200 whose `message` says `part`.
pub fn assert_ok_saying(answer: &Answer, part: &str) {
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert!(
        answer.body["message"]
            .as_str()
            .is_some_and(|m| m.contains(part)),
        "a message saying '{part}': {answer:?}"
    );
}

/// Asserts that the repository was never told that trial `id` failed.
pub fn assert_never_reported_failed(app: &TestApp, id: &str) {
    let history = app.platform.status_history(id);
    assert!(
        !history.iter().any(|s| s == "FAILED"),
        "{id} was reported FAILED: {history:?}"
    );
}

/// Asserts that a trial's status (or listed row) has a `failure` saying `part`.
pub fn assert_failure_says(status: &Value, part: &str) {
    assert!(
        status["failure"].as_str().is_some_and(|f| f.contains(part)),
        "a failure saying '{part}': {status}"
    );
}

/// Trial enforcement never answers trial `id`'s first slice deployment; the one sent again
/// (after a restart, or by an engine brought back) is taken without a second callback, as a
/// component that honours the `Idempotency-Key` would.
pub fn first_deployment_hangs(id: &str) -> [Fault; 2] {
    [
        slice_deployment_fault(id, FaultAction::Hang),
        drop_slice_callback(id),
    ]
}

/// Trial enforcement meets trial `id`'s next slice deployment with `action`, once.
pub fn slice_deployment_fault(id: &str, action: FaultAction) -> Fault {
    Fault::new(Component::Enforcement, "POST", "/sliceDeployment", action)
        .for_trial(id)
        .times(1)
}

/// Trial enforcement meets trial `id`'s next flight plan with `action`, once.
pub fn flight_plan_fault(id: &str, action: FaultAction) -> Fault {
    Fault::new(Component::Enforcement, "POST", "/flightplan", action)
        .for_trial(id)
        .times(1)
}

/// KPI monitoring meets a marking (`POST /markKPIData`) with `action`, as often as the fault
/// says (every time, unless limited).
pub fn kpi_marking_fault(action: FaultAction) -> Fault {
    Fault::new(Component::Kpi, "POST", "/markKPIData", action)
}

/// Trial enforcement meets trial `id`'s next measurement job creation with `action`, once.
pub fn measurement_job_fault(id: &str, action: FaultAction) -> Fault {
    Fault::new(Component::Enforcement, "POST", "/measurementjobs", action)
        .for_trial(id)
        .times(1)
}

/// Trial enforcement takes trial `id`'s slice once and never calls back: the trial waits for
/// the slice callback until the test sends it.
pub fn drop_slice_callback(id: &str) -> Fault {
    slice_deployment_fault(id, FaultAction::DropCallback)
}

/// A client whose connections come from `ip` (any 127.x.y.z is this machine), that follows no
/// redirect.
pub fn client_from(ip: &str) -> reqwest::Client {
    lcm::sim::lcm_client()
        .local_address(ip.parse::<std::net::IpAddr>().expect("an address"))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client")
}

/// The service on a store whose reads fail while the returned switch is on, with trial `id` run
/// to its end and gone from memory (so what is asked of it is read from the store).
pub async fn spawn_app_with_an_ended_trial_on_busy_reads(id: &str) -> (TestApp, BusyReads) {
    let reads = BusyReads::default();
    let app = spawn_app_with(AppOptions {
        settings: Box::new(|s| s.engine.keep_finished_secs = 1),
        busy_reads: Some(reads.clone()),
        ..AppOptions::default()
    })
    .await;
    app.run_to_finished(id).await;
    app.wait_engine_gone(id).await;
    (app, reads)
}

/// The service with credentials for each service: an API key for the trial repository
/// (`repo-key`), HTTP Basic for trial enforcement (`lcm` / `enforce-pw`), and the simulated
/// KPI monitoring's OAuth2.
pub async fn spawn_app_with_service_credentials() -> TestApp {
    spawn_app_with_settings(|s| {
        s.services.trial_repository.apikey = Some(Secret::new("repo-key"));
        s.services.trial_enforcement.username = Some("lcm".into());
        s.services.trial_enforcement.password = Some(Secret::new("enforce-pw"));
    })
    .await
}

/// The record of trial `id`, stopped at `EnforceUavPlan`, created and last saved at `at`.
pub fn record(id: &str, lifecycle: Lifecycle, at: DateTime<Utc>) -> TrialRecord {
    let mut checkpoint = Checkpoint::new(at);
    checkpoint.position = Position::Run(Step::EnforceUavPlan);
    checkpoint.data.token = Some("a-token".to_owned());
    TrialRecord {
        id: TrialId::parse(id).expect("id"),
        lifecycle,
        checkpoint,
        created_at: at,
        updated_at: at,
        ended_at: lifecycle.is_ended().then_some(at),
    }
}

/// The saved job of trial `id`, due an hour ago: missed at the next start.
pub fn job_an_hour_ago(id: &str) -> Op {
    let hour_ago = Utc::now() - chrono::Duration::hours(1);
    Op::PutJob {
        id: TrialId::parse(id).expect("an id"),
        start: lcm::domain::StartTime::parse(&hour_ago.to_rfc3339()).expect("a time"),
        created_at: hour_ago - chrono::Duration::hours(1),
    }
}

/// A data directory holding a store made of `ops`, for an app to start on.
pub fn prepared_store(ops: Vec<Op>, damage: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = store_in(dir.path(), ops);
    if let Some(sql) = damage {
        store.connection().execute_batch(sql).expect("damaged");
    }
    dir
}

/// A store made of `ops` in data directory `dir` (made if missing).
pub fn store_in(dir: &std::path::Path, ops: Vec<Op>) -> SqliteBackend {
    std::fs::create_dir_all(dir).expect("data directory");
    let mut store = SqliteBackend::open(dir).expect("store");
    store.apply(&ops).expect("prepared");
    store
}

/// The directory `lcm demo` says its store and logs are in.
pub fn scratch_of(stdout: &str) -> std::path::PathBuf {
    let line = stdout
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("store and logs:"))
        .unwrap_or_else(|| panic!("no store directory printed:\n{stdout}"));
    let path = line.trim_start().split(" (").next().unwrap_or_default();
    std::path::PathBuf::from(path)
}

/// The events of one kind in a history.
pub fn events<'a>(history: &'a [Value], kind: &str) -> Vec<&'a Value> {
    history.iter().filter(|e| e["event"] == kind).collect()
}
