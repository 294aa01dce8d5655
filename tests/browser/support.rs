//! What the browser tests stand on: the real `lcm` binary configured against simulated trial
//! components, reached through a TCP proxy the test can cut (to drop the page's event
//! stream), and headless Chromium driven through chromedriver.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use lcm::sim::{Platform, SimOptions};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::task::{AbortHandle, JoinHandle};

use crate::common::{
    API_KEY, ROLE_KEYS, TOKEN_SECRET, eventually_within, free_port, hang_up, keys_file,
    lcm_command, schedule_ahead, start_lcm,
};

/// How long anything the browser tests wait for may take: Chromium shares a busy machine.
const PATIENCE: Duration = Duration::from_secs(30);
/// How often a condition is checked meanwhile: a page is read through chromedriver, so gently.
const POLL: Duration = Duration::from_millis(100);

/// [`eventually_within`] at the browser tests' pace: checks `check` every [`POLL`] until it
/// gives a value; panics after [`PATIENCE`] naming `what` and the last thing seen.
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    eventually_within(what, PATIENCE, POLL, check).await
}

/// A TCP proxy in front of the service; [`Proxy::cut`] drops every open connection.
pub struct Proxy {
    pub port: u16,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let connections: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let open = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let copy = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                open.lock().unwrap().push(copy.abort_handle());
            }
        });
        Self {
            port,
            connections,
            task,
        }
    }

    /// Drops every connection open now (the browser's too): a dropped network.
    pub fn cut(&self) {
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

/// The `lcm` binary on a free port, its simulated platform, and the proxy the browser uses.
pub struct Service {
    pub platform: Platform,
    pub dir: tempfile::TempDir,
    pub proxy: Proxy,
    /// Where the browser reaches the service (through the proxy).
    pub base: String,
    /// Where the tests' REST calls reach it directly.
    pub direct: String,
    pub http: reqwest::Client,
    child: Child,
}

impl Service {
    /// Starts the simulated components and the binary (one try per request, so an injected
    /// fault fails its step), and waits until it answers.
    pub async fn start() -> Self {
        let platform = Platform::start(SimOptions {
            kpi_oauth2: false,
            callback_delay: Duration::from_millis(400),
            progress_interval: Some(Duration::from_millis(150)),
            ..SimOptions::default()
        })
        .await
        .expect("simulators start");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        std::fs::write(dir.path().join("keys.toml"), keys_file(&ROLE_KEYS)).expect("keys written");
        let config = format!(
            r#"
[server]
bind = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"

[auth]
api_key = "{API_KEY}"
token_secret = "{TOKEN_SECRET}"
keys_file = "keys.toml"

[executor.retry]
max_attempts = 1

[store]
data_dir = "data"

[logging]
dir = "logs"
level = "warn"

[services.trial_repository]
url = "http://{}"

[services.trial_enforcement]
url = "http://{}"

[services.kpi_monitoring]
url = "http://{}"
"#,
            platform.repository, platform.enforcement, platform.kpi
        );
        std::fs::write(dir.path().join("lcm.toml"), config).expect("config written");
        let child = start_lcm(
            lcm_command(dir.path())
                .arg("--config")
                .arg(dir.path().join("lcm.toml")),
            port,
        )
        .await;
        let direct = format!("http://127.0.0.1:{port}");
        let http = lcm::sim::lcm_client()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let proxy = Proxy::start(([127, 0, 0, 1], port).into()).await;
        let base = format!("http://127.0.0.1:{}", proxy.port);
        Self {
            platform,
            dir,
            proxy,
            base,
            direct,
            http,
            child,
        }
    }

    /// A REST call with the admin API key: its status and JSON body.
    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.direct))
            .header("Authorization", API_KEY);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the service answers");
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Puts an approved trial in the simulated repository and schedules it `ms` from now. On a
    /// busy machine the request can arrive after the start time it carries: then a new one is
    /// chosen, as a client would.
    pub async fn schedule_in(&self, id: &str, ms: i64) {
        self.platform.add_trial(Platform::trial(id, None));
        schedule_ahead(id, ms, |start| {
            let body = json!({"trial_id": id, "start_time": start.to_rfc3339()});
            self.api(reqwest::Method::POST, "/debug/trial/schedule", Some(body))
        })
        .await;
    }

    /// Sends SIGHUP: the binary loads its keys again.
    pub async fn hangup(&self) {
        hang_up(&self.child).await;
    }
}

/// Headless Chromium, driven through its own chromedriver.
pub struct Browser {
    pub client: Client,
    driver_port: u16,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    /// Kills chromedriver and the Chromium it started (they share a process group of their
    /// own), also when a test panics: killing chromedriver alone would leave the browser.
    fn drop(&mut self) {
        if let Some(pid) = self.driver.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
        }
    }
}

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile.
    pub async fn start() -> Self {
        for path in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(path).exists(),
                "{path} is missing: install Debian's chromium and chromium-driver (see the README)"
            );
        }
        let driver_port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={driver_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().expect("tempdir");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--disable-quic",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        capabilities.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        let url = format!("http://127.0.0.1:{driver_port}");
        let client = eventually("chromedriver giving a browser session", || {
            let capabilities = capabilities.clone();
            let url = url.clone();
            async move {
                let mut builder = ClientBuilder::new(HttpConnector::new());
                builder.capabilities(capabilities);
                builder.connect(&url).await.map_err(|e| e.to_string())
            }
        })
        .await;
        Self {
            client,
            driver_port,
            driver,
            _profile: profile,
        }
    }

    /// Goes to `url` and waits until the page has loaded. A navigation the network broke (a
    /// connection the browser had opened ahead, closed meanwhile by the service's header
    /// timeout on a busy machine) is tried again, as a user would reload.
    pub async fn goto(&self, url: &str) {
        eventually(&format!("navigation to {url}"), || async {
            self.client.goto(url).await.map_err(|e| e.to_string())
        })
        .await;
    }

    /// Signs in on the console at `base` with `key`. A sign-in page that did not come (the
    /// browser shows an error page instead) is loaded again, as a user would.
    pub async fn sign_in(&self, base: &str, key: &str) {
        let field = eventually("the sign-in form", || async {
            self.goto(&format!("{base}/ui/")).await;
            match self.client.find(Locator::Css("#key")).await {
                Ok(field) => Ok(field),
                Err(e) => Err(format!(
                    "{e}; the page shows: {:?}",
                    self.text("body").await
                )),
            }
        })
        .await;
        field.send_keys(key).await.expect("typed");
        self.click("form[action='/ui/sign-in'] button[type=submit]")
            .await;
        self.wait_text("header .holder", "Signed in as").await;
    }

    /// Signs in with `key` on the sign-in page the browser shows now (where a page asked for
    /// without a session sent it).
    pub async fn sign_in_here(&self, key: &str) {
        let field = eventually("the sign-in form", || async {
            self.client
                .find(Locator::Css("#key"))
                .await
                .map_err(|e| e.to_string())
        })
        .await;
        field.send_keys(key).await.expect("typed");
        self.click("form[action='/ui/sign-in'] button[type=submit]")
            .await;
        self.wait_text("header .holder", "Signed in as").await;
    }

    /// Sets the size of the browser's window; returns the width of the page's viewport.
    pub async fn resize(&self, width: u32, height: u32) -> u64 {
        self.client
            .set_window_size(width, height)
            .await
            .expect("window resized");
        self.run("return window.innerWidth;")
            .await
            .as_u64()
            .expect("a width")
    }

    /// Clicks the element `css`. A live part of the page may be put in place between finding
    /// the element and clicking it: the element found is then stale, and the one shown now is
    /// found and clicked instead.
    pub async fn click(&self, css: &str) {
        eventually(&format!("a click on {css}"), || async {
            let element = self
                .client
                .find(Locator::Css(css))
                .await
                .map_err(|e| format!("{css}: {e}"))?;
            match element.click().await {
                Ok(()) => Ok(()),
                Err(e) if e.is_stale_element_reference() => Err(format!("{css} replaced: {e}")),
                Err(e) => panic!("click {css}: {e}"),
            }
        })
        .await
    }

    /// The text of the element `css`, if there is one.
    pub async fn text(&self, css: &str) -> Result<String, String> {
        let element = self
            .client
            .find(Locator::Css(css))
            .await
            .map_err(|e| format!("no {css}: {e}"))?;
        element.text().await.map_err(|e| e.to_string())
    }

    /// Waits until the element `css` shows `text`; returns all it shows.
    pub async fn wait_text(&self, css: &str, text: &str) -> String {
        eventually(&format!("{text:?} in {css}"), || async {
            let shown = self.text(css).await?;
            if shown.contains(text) {
                Ok(shown)
            } else {
                Err(shown)
            }
        })
        .await
    }

    /// How many elements match `css`.
    pub async fn count(&self, css: &str) -> usize {
        self.client
            .find_all(Locator::Css(css))
            .await
            .map_or(0, |found| found.len())
    }

    /// Runs `script` in the page and returns its value.
    pub async fn run(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .expect("script runs")
    }

    /// Marks the page in the browser's memory: the mark is gone once the page reloads.
    pub async fn mark_page(&self) {
        self.run("window.__notReloaded = true; return true;").await;
    }

    /// Whether the page marked by [`Browser::mark_page`] is still the one shown.
    pub async fn not_reloaded(&self) -> bool {
        self.run("return window.__notReloaded === true;").await == json!(true)
    }

    /// Opens the confirmation dialog of `action` on a trial page and confirms it.
    pub async fn confirm(&self, action: &str, reason: Option<&str>) {
        self.click(&format!("a[data-action='{action}']")).await;
        let dialog = format!("dialog#confirm-{action}");
        eventually(&format!("{dialog} open"), || async {
            let open = self
                .run(&format!(
                    "return document.querySelector('{dialog}')?.open === true;"
                ))
                .await;
            if open == json!(true) {
                Ok(())
            } else {
                Err(open.to_string())
            }
        })
        .await;
        if let Some(reason) = reason {
            let field = self
                .client
                .find(Locator::Css(&format!("{dialog} textarea")))
                .await
                .expect("reason field");
            field.send_keys(reason).await.expect("typed");
        }
        self.click(&format!("{dialog} button[data-confirm='{action}']"))
            .await;
    }

    /// The session cookie's value.
    pub async fn session_cookie(&self) -> String {
        self.client
            .get_named_cookie("lcm_session")
            .await
            .expect("a session cookie")
            .value()
            .to_owned()
    }

    /// What the page logged as errors so far (the browser's log, read through chromedriver).
    pub async fn console_errors(&self) -> Vec<String> {
        let session = self
            .client
            .session_id()
            .await
            .expect("session id")
            .expect("a session");
        let log: Value = reqwest::Client::new()
            .post(format!(
                "http://127.0.0.1:{}/session/{session}/se/log",
                self.driver_port
            ))
            .json(&json!({"type": "browser"}))
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .expect("a JSON log");
        log["value"]
            .as_array()
            .expect("log entries")
            .iter()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Saves a screenshot as `name` under `$LCM_SCREENSHOTS`, if it is set.
    pub async fn screenshot(&self, name: &str, height: u32) {
        let Ok(dir) = std::env::var("LCM_SCREENSHOTS") else {
            return;
        };
        self.client
            .set_window_size(1280, height)
            .await
            .expect("window resized");
        let png = self.client.screenshot().await.expect("a screenshot");
        std::fs::create_dir_all(&dir).expect("screenshot directory");
        std::fs::write(std::path::Path::new(&dir).join(name), png).expect("screenshot written");
        self.client
            .set_window_size(1280, 900)
            .await
            .expect("window resized");
    }

    /// Ends the browser session (then the drop ends chromedriver and Chromium).
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}
