//! Simulated trial components: the trial repository, trial enforcement (which answers, then
//! calls back `callback_url` with the token taken from the request body) and KPI monitoring
//! (with an OAuth2 token endpoint). Each is a real HTTP server on 127.0.0.1 that records every
//! request it receives (with when it answered) and obeys injected [`Fault`]s; a component can
//! be stopped (connections to it are refused) and started again on the same port. Trial
//! enforcement can report its progress while it works before a callback. The integration
//! tests, the demo and the benchmark drive the LCM against them; [`local`] serves an LCM wired
//! to them, and [`operator`] drives an LCM over its REST API.

mod behaviour;
pub mod local;
pub mod operator;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use axum::Router;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::{OAuth2Settings, Secret, Settings};

/// Which simulated component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    Repository,
    Enforcement,
    Kpi,
}

/// A request a component received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub component: Component,
    pub method: String,
    pub path: String,
    pub query: HashMap<String, String>,
    pub body: Option<Value>,
    pub authorization: Option<String>,
    /// The `Idempotency-Key` header, if the request carried one.
    pub idempotency_key: Option<String>,
    /// When the request arrived.
    pub at: DateTime<Utc>,
    /// When the component answered it (just before the answer was sent); `None` while it has
    /// not, or if it never does.
    pub answered_at: Option<DateTime<Utc>>,
}

impl RecordedRequest {
    /// `"METHOD /path"`, the form the tests compare sequences in.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// A callback a component made, and what the LCM answered.
#[derive(Debug, Clone)]
pub struct RecordedCallback {
    pub url: String,
    pub status: Option<u16>,
    pub body: Option<Value>,
    /// When the component started sending it.
    pub sent_at: DateTime<Utc>,
    /// When the LCM's answer to it came back.
    pub at: DateTime<Utc>,
}

/// A trial status the repository stored (`PUT /trial/{id}/`), sent to
/// [`Platform::status_changes`] receivers just before the repository answers.
#[derive(Debug, Clone)]
pub struct StatusChange {
    pub trial: String,
    pub status: String,
    pub at: DateTime<Utc>,
}

/// What requests held by [`FaultAction::HoldUntil`] wait for: closed until [`Gate::open`], then
/// open for good, for the requests held and those still to come.
#[derive(Debug, Clone)]
pub struct Gate(Arc<tokio::sync::Semaphore>);

impl Default for Gate {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::Semaphore::new(0)))
    }
}

impl Gate {
    pub fn new() -> Self {
        Self::default()
    }

    /// Lets every held request go on, and every later one pass.
    pub fn open(&self) {
        self.0.close();
    }

    /// Ready once the gate is open.
    pub async fn passed(&self) {
        // A semaphore without permits: acquiring fails exactly when it is closed.
        let _ = self.0.acquire().await;
    }
}

/// What an injected fault does.
#[derive(Debug, Clone)]
pub enum FaultAction {
    /// Answer this status with a JSON error body.
    Status(u16),
    /// Answer the usual status with a body that is not JSON.
    Garbage,
    /// Answer this status with this text (not JSON) as the body.
    Text(u16, String),
    /// Answer this status and JSON body.
    Json(u16, Value),
    /// Answer `307 Temporary Redirect` to this URL (a component sending the request elsewhere).
    Redirect(String),
    /// Answer this status with a `Retry-After` header (a service asking to be left alone).
    RetryAfter(u16, RetryAfter),
    /// Wait, then answer as usual.
    Delay(Duration),
    /// Never answer.
    Hang,
    /// Answer 200, then break the connection partway through the body (a component that
    /// crashes while answering).
    CutOff,
    /// Do as usual (its callback too), then break the connection instead of answering: a
    /// component whose answer is lost on its way.
    AnswerLost,
    /// Wait until the gate is opened, then answer as usual.
    HoldUntil(Gate),
    /// Wait until the gate is opened, then answer this status with a JSON error body.
    HoldThenStatus(Gate, u16),
    /// Answer as usual but never make the callback.
    DropCallback,
    /// Wait until the gate is opened, then answer as usual but never make the callback.
    HoldThenDropCallback(Gate),
    /// Make the callback (and wait for its answer) before answering the request.
    EarlyCallback,
    /// Make the callback twice (a component retrying).
    DuplicateCallback,
    /// Answer as usual, with the request's JSON body echoed under `"echo"` (a component
    /// that repeats what it was sent, secrets included).
    EchoRequest,
    /// Answer as usual, with the request's `Authorization` header echoed under
    /// `"authorization"` (a component that shows the credentials it was sent).
    EchoAuthorization,
}

/// The `Retry-After` value a fault answers with.
#[derive(Debug, Clone, Copy)]
pub enum RetryAfter {
    /// Delay-seconds: `Retry-After: 2`.
    Seconds(u64),
    /// An HTTP date this long after the answer: `Retry-After: Sun, 06 Nov 1994 08:49:37 GMT`.
    /// The date has whole seconds: the wait it asks for is between this less a second and
    /// this.
    DateIn(Duration),
}

impl RetryAfter {
    /// The header's value, for an answer sent now.
    pub fn header_value(self) -> String {
        match self {
            RetryAfter::Seconds(secs) => secs.to_string(),
            RetryAfter::DateIn(after) => httpdate::fmt_http_date(SystemTime::now() + after),
        }
    }
}

/// A fault for requests whose method and path match.
#[derive(Debug, Clone)]
pub struct Fault {
    pub component: Component,
    pub method: &'static str,
    /// Matches when the request path contains this.
    pub path_contains: String,
    pub action: FaultAction,
    /// How many matching requests it applies to; `None` for all.
    pub times: Option<usize>,
    /// How many matching requests pass untouched before it applies.
    pub skip: usize,
    /// Only requests that concern this trial match (by path, query or body).
    pub trial: Option<String>,
}

impl Fault {
    /// A fault on every matching request.
    pub fn new(
        component: Component,
        method: &'static str,
        path_contains: impl Into<String>,
        action: FaultAction,
    ) -> Self {
        Self {
            component,
            method,
            path_contains: path_contains.into(),
            action,
            times: None,
            skip: 0,
            trial: None,
        }
    }

    /// Only for requests that concern `trial`.
    pub fn for_trial(mut self, trial: &str) -> Self {
        self.trial = Some(trial.to_owned());
        self
    }

    /// Lets the first `n` matching requests pass before it applies.
    pub fn after(mut self, n: usize) -> Self {
        self.skip = n;
        self
    }

    /// Only for the first `n` matching requests.
    pub fn times(mut self, n: usize) -> Self {
        self.times = Some(n);
        self
    }
}

/// Options of the simulated platform.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Pause between trial enforcement's answer and its callback.
    pub callback_delay: Duration,
    /// KPI monitoring requires an OAuth2 bearer token from its `/token` endpoint.
    pub kpi_oauth2: bool,
    /// While trial enforcement works towards a callback (for `callback_delay`), it reports its
    /// progress this often with `POST .../callback/progress` (a percentage and what it is
    /// doing); `None` for never.
    pub progress_interval: Option<Duration>,
    /// When set, the repository takes any valid trial id it does not know for an approved
    /// trial starting this long after it is first asked about (created then and remembered,
    /// so later status writes stick), and its trial list also holds [`PLANNED_TRIALS`]. Trial
    /// enforcement leaves the callbacks of such trials to whoever plays it by hand. `lcm demo`
    /// sets it so that every example of the README can be tried; `None` (the tests) knows only
    /// the trials given with [`Platform::add_trial`].
    pub open_registry: Option<Duration>,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            callback_delay: Duration::from_millis(20),
            kpi_oauth2: true,
            progress_interval: None,
            open_registry: None,
        }
    }
}

/// The future trials an open registry (see [`SimOptions::open_registry`]) lists besides the
/// ones it was asked about, with how long after its first listing each starts: something for
/// `schedule-all` to schedule.
pub const PLANNED_TRIALS: [(&str, Duration); 2] = [
    ("planned-1", Duration::from_secs(10 * 60)),
    ("planned-2", Duration::from_secs(20 * 60)),
];

/// The state the three components share.
pub struct SimState {
    options: SimOptions,
    trials: Mutex<HashMap<String, Value>>,
    /// The trials an open registry made up; trial enforcement does not call back for them.
    made_up: Mutex<HashSet<String>>,
    requests: Mutex<Vec<RecordedRequest>>,
    callbacks: Mutex<Vec<RecordedCallback>>,
    faults: Mutex<Vec<Fault>>,
    issued_tokens: Mutex<Vec<String>>,
    /// Whether requests and callbacks are recorded (on by default).
    recording: AtomicBool,
    status_watchers: Mutex<Vec<mpsc::UnboundedSender<StatusChange>>>,
    http: reqwest::Client,
}

impl SimState {
    /// Records a request; returns its index in the record, if recording is on.
    fn record_request(&self, request: RecordedRequest) -> Option<usize> {
        if !self.recording.load(Ordering::Relaxed) {
            return None;
        }
        let mut requests = lock(&self.requests);
        requests.push(request);
        Some(requests.len() - 1)
    }

    /// Notes that the request recorded at `index` has been answered.
    fn mark_answered(&self, index: Option<usize>) {
        if let Some(index) = index
            && let Some(request) = lock(&self.requests).get_mut(index)
        {
            request.answered_at = Some(Utc::now());
        }
    }

    fn record_callback(&self, callback: RecordedCallback) {
        if self.recording.load(Ordering::Relaxed) {
            lock(&self.callbacks).push(callback);
        }
    }

    fn notify_status(&self, trial: &str, status: &str) {
        let mut watchers = lock(&self.status_watchers);
        if watchers.is_empty() {
            return;
        }
        let change = StatusChange {
            trial: trial.to_owned(),
            status: status.to_owned(),
            at: Utc::now(),
        };
        watchers.retain(|watcher| watcher.send(change.clone()).is_ok());
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The three simulated components, running.
pub struct Platform {
    pub state: Arc<SimState>,
    pub repository: SocketAddr,
    pub enforcement: SocketAddr,
    pub kpi: SocketAddr,
    /// The components that are serving (a stopped one is not in it).
    servers: Mutex<HashMap<Component, Serving>>,
    /// The ports of stopped components, bound without listening: a connection is refused,
    /// and no other server (of another test running at once) can take the port meanwhile.
    held: Mutex<HashMap<Component, TcpSocket>>,
}

/// One component's server.
struct Serving {
    /// Sent (or dropped) to stop it.
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Serves `component` on `listener` until told to stop.
fn serve(state: &Arc<SimState>, component: Component, listener: TcpListener) -> Serving {
    let app = Router::new()
        .fallback(behaviour::handle)
        .with_state((state.clone(), component));
    let (shutdown, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
    });
    Serving { shutdown, task }
}

/// How long a stopping component gives the requests in flight to be answered.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// An HTTP client of the LCM as every client should be: it keeps an idle connection for less
/// than the LCM's `server.header_read_timeout_secs` (10 s by default). An HTTP client may open
/// a connection ahead and leave it unused; the LCM closes such a connection once that time has
/// passed, and a request sent on it just then would get no answer.
pub fn lcm_client() -> reqwest::ClientBuilder {
    reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(5))
}

/// The OAuth2 client the simulated KPI monitoring accepts.
pub const KPI_CLIENT_ID: &str = "lcm";
/// See [`KPI_CLIENT_ID`].
pub const KPI_CLIENT_SECRET: &str = "sim-kpi-secret";

impl Platform {
    /// Starts the three components on random loopback ports.
    pub async fn start(options: SimOptions) -> std::io::Result<Self> {
        crate::services::install_crypto_provider();
        let http = lcm_client()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(std::io::Error::other)?;
        let state = Arc::new(SimState {
            options,
            trials: Mutex::new(HashMap::new()),
            made_up: Mutex::new(HashSet::new()),
            requests: Mutex::new(Vec::new()),
            callbacks: Mutex::new(Vec::new()),
            faults: Mutex::new(Vec::new()),
            issued_tokens: Mutex::new(Vec::new()),
            recording: AtomicBool::new(true),
            status_watchers: Mutex::new(Vec::new()),
            http,
        });
        let mut servers = HashMap::new();
        let mut addrs = Vec::new();
        for component in [
            Component::Repository,
            Component::Enforcement,
            Component::Kpi,
        ] {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            addrs.push(listener.local_addr()?);
            servers.insert(component, serve(&state, component, listener));
        }
        Ok(Self {
            state,
            repository: addrs[0],
            enforcement: addrs[1],
            kpi: addrs[2],
            servers: Mutex::new(servers),
            held: Mutex::new(HashMap::new()),
        })
    }

    /// Where a component listens (or listened, while it is stopped).
    pub fn address(&self, component: Component) -> SocketAddr {
        match component {
            Component::Repository => self.repository,
            Component::Enforcement => self.enforcement,
            Component::Kpi => self.kpi,
        }
    }

    /// Stops a component the way a crash or a restart of it looks from outside: it stops
    /// listening, so connecting to it is refused, and closes its idle connections. Requests in
    /// flight get a few seconds to be answered. Callbacks it scheduled still go out.
    pub async fn stop(&self, component: Component) {
        let Some(serving) = lock(&self.servers).remove(&component) else {
            return;
        };
        let _ = serving.shutdown.send(());
        let mut task = serving.task;
        if tokio::time::timeout(STOP_GRACE, &mut task).await.is_err() {
            task.abort();
        }
        // Bound without listening, so connecting is refused and no other server nor outgoing
        // connection is given the port meanwhile. Without SO_REUSEADDR no listener at all can
        // share it; while the connections just closed linger in TIME_WAIT only a bind with it
        // succeeds (then a server binding that very port could share it; servers bind port 0).
        // Should the port be taken already, it is left to chance, as it would be without this.
        let address = self.address(component);
        let held = [false, true].into_iter().find_map(|reuse| {
            let socket = match address {
                SocketAddr::V4(_) => TcpSocket::new_v4(),
                SocketAddr::V6(_) => TcpSocket::new_v6(),
            }
            .ok()?;
            socket.set_reuseaddr(reuse).ok()?;
            socket.bind(address).ok()?;
            Some(socket)
        });
        if let Some(socket) = held {
            lock(&self.held).insert(component, socket);
        }
    }

    /// Starts a stopped component again on its port; does nothing if it is serving.
    pub async fn start_again(&self, component: Component) -> std::io::Result<()> {
        if lock(&self.servers).contains_key(&component) {
            return Ok(());
        }
        // The port held since the stop starts listening: there is no moment it is free.
        let held = lock(&self.held).remove(&component);
        let listener = match held {
            Some(socket) => socket.listen(1024)?,
            None => TcpListener::bind(self.address(component)).await?,
        };
        let serving = serve(&self.state, component, listener);
        if let Some(raced) = lock(&self.servers).insert(component, serving) {
            raced.task.abort();
        }
        Ok(())
    }

    /// Points the LCM's service settings at these components.
    pub fn configure(&self, settings: &mut Settings) {
        let services = &mut settings.services;
        services.trial_repository.url = format!("http://{}", self.repository);
        services.trial_enforcement.url = format!("http://{}", self.enforcement);
        services.kpi_monitoring.url = format!("http://{}", self.kpi);
        services.kpi_monitoring.oauth2 = self.state.options.kpi_oauth2.then(|| OAuth2Settings {
            auth_url: format!("http://{}/token", self.kpi),
            client_id: KPI_CLIENT_ID.to_owned(),
            client_secret: Secret::new(KPI_CLIENT_SECRET),
        });
    }

    /// Adds or replaces a trial in the repository.
    pub fn add_trial(&self, trial: Value) {
        if let Some(id) = trial.get("id").and_then(Value::as_str) {
            lock(&self.state.trials).insert(id.to_owned(), trial);
        }
    }

    /// A trial object as the repository holds it, approved and ready to run.
    pub fn trial(id: &str, start_time: Option<DateTime<Utc>>) -> Value {
        json!({
            "id": id,
            "name": format!("Trial {id}"),
            "facility": "EUR",
            "status": "APPROVED",
            "kpis": ["latency", "throughput"],
            "nst": "{'name': 'eMBB slice', 'isolated': True, 'shared': False, 'qos': None}",
            "flights": [{"id": 1, "waypoints": [[43.61, 7.05], [43.62, 7.06]]}],
            "start_time": start_time.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        })
    }

    /// A trial's current repository status.
    pub fn trial_status(&self, id: &str) -> Option<String> {
        lock(&self.state.trials)
            .get(id)
            .and_then(|t| t.get("status"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    /// Injects a fault.
    pub fn inject(&self, fault: Fault) {
        lock(&self.state.faults).push(fault);
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        lock(&self.state.faults).clear();
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.requests).clone()
    }

    /// The requests that concern one trial (by path, query or body), in order.
    pub fn requests_for(&self, trial: &str) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| behaviour::concerns(r, trial))
            .collect()
    }

    /// Every callback made, in order.
    pub fn callbacks(&self) -> Vec<RecordedCallback> {
        lock(&self.state.callbacks).clone()
    }

    /// The last status the LCM wrote for a trial, if any.
    pub fn last_status(&self, trial: &str) -> Option<String> {
        self.status_history(trial).pop()
    }

    /// The statuses the LCM wrote for a trial with `PUT /trial/{id}/`, in order.
    pub fn status_history(&self, trial: &str) -> Vec<String> {
        let path = format!("/trial/{trial}/");
        self.requests()
            .into_iter()
            .filter(|r| r.component == Component::Repository && r.method == "PUT" && r.path == path)
            .filter_map(|r| {
                r.body
                    .as_ref()
                    .and_then(|b| b.get("status"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .collect()
    }

    /// The `Marking`s KPI monitoring received for a trial or slice id, in order.
    pub fn kpi_markings(&self, marked: &str) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| r.component == Component::Kpi && r.path == "/markKPIData")
            .filter(|r| {
                r.body
                    .as_ref()
                    .and_then(|b| b.get("MarkingID"))
                    .and_then(Value::as_str)
                    == Some(marked)
            })
            .filter_map(|r| {
                r.body
                    .as_ref()
                    .and_then(|b| b.get("Marking"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .collect()
    }

    /// Turns the recording of requests and callbacks on or off (on by default). The benchmark
    /// turns it off where the records would only weigh on the memory it measures.
    pub fn set_recording(&self, on: bool) {
        self.state.recording.store(on, Ordering::Relaxed);
    }

    /// Every trial status the repository stores from now on, as it stores it: how an operator
    /// watching the registry learns that a trial is IDLE, ACTIVE or FINISHED.
    pub fn status_changes(&self) -> mpsc::UnboundedReceiver<StatusChange> {
        let (sender, receiver) = mpsc::unbounded_channel();
        lock(&self.state.status_watchers).push(sender);
        receiver
    }

    /// How many OAuth2 tokens KPI monitoring has issued.
    pub fn issued_kpi_tokens(&self) -> usize {
        lock(&self.state.issued_tokens).len()
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        for serving in lock(&self.servers).values() {
            serving.task.abort();
        }
    }
}
