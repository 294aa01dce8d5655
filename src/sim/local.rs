//! A Lifecycle Manager served in this process against the simulated platform, on 127.0.0.1,
//! with a scratch directory for its store and logs: what `lcm demo` and `lcm bench` run. It
//! needs no configuration file and writes nothing in the working directory.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::Platform;
use crate::config::{ConfigError, Secret, Settings};
use crate::engine::EngineHooks;
use crate::startup::{Application, StartupError};

/// The API key of a local LCM (printed by the demo: it protects nothing of value).
pub const LOCAL_API_KEY: &str = "demo-api-key";
/// The callback-token secret of a local LCM.
const LOCAL_TOKEN_SECRET: &str = "demo-token-secret";

/// A directory under the system's temporary directory, removed with everything in it when
/// dropped.
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// Creates `<tmp>/<prefix>-<pid>-<nanos>`: a fresh one per run, so a store left by an
    /// earlier run is never recovered into this one.
    pub fn new(prefix: &str) -> io::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(Self { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the directory and what is in it: it is no longer removed. Returns its path.
    pub fn keep(self) -> PathBuf {
        std::mem::ManuallyDrop::new(self).path.clone()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Settings for an LCM on `127.0.0.1:port` that talks to `platform` (or to the default
/// service URLs, for one that runs no trial), logs at `warn` (so a terminal stays readable)
/// and keeps its store and logs under `scratch`.
pub fn settings(
    platform: Option<&Platform>,
    port: u16,
    scratch: &Path,
) -> Result<Settings, ConfigError> {
    let mut settings = Settings::defaults()?;
    settings.server.bind = format!("127.0.0.1:{port}");
    settings.server.public_url = format!("http://127.0.0.1:{port}");
    settings.auth.api_key = Secret::new(LOCAL_API_KEY);
    settings.auth.token_secret = Secret::new(LOCAL_TOKEN_SECRET);
    settings.logging.level = "warn".to_owned();
    settings.logging.dir = scratch.join("logs");
    settings.store.data_dir = scratch.join("data");
    if let Some(platform) = platform {
        platform.configure(&mut settings);
    }
    settings.validate()?;
    Ok(settings)
}

/// Binds `127.0.0.1:port` (0 for any free port). A port in use is reported as such, so the
/// caller can say so plainly.
pub fn bind(port: u16) -> io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// An LCM serving on its own task.
pub struct LocalLcm {
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<io::Result<()>>,
}

impl LocalLcm {
    /// Builds the LCM on `listener` and serves it on `runtime`: everything the LCM does (its
    /// handlers, engines and outbound requests) runs on that runtime's threads, which lets the
    /// benchmark tell the LCM's CPU time from the simulator's.
    pub async fn start(
        settings: Settings,
        listener: std::net::TcpListener,
        runtime: &Handle,
    ) -> Result<Self, StartupError> {
        let address = listener.local_addr().map_err(|source| StartupError::Bind {
            addr: settings.server.bind.clone(),
            source,
        })?;
        let (ready_tx, ready) = oneshot::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = runtime.spawn(async move {
            let built = match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => {
                    Application::with_listener(settings, listener, EngineHooks::default()).await
                }
                Err(source) => Err(StartupError::Bind {
                    addr: address.to_string(),
                    source,
                }),
            };
            let app = match built {
                Ok(app) => {
                    let _ = ready_tx.send(Ok(()));
                    app
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return Ok(());
                }
            };
            app.run_until(async {
                let _ = stopped.await;
            })
            .await
        });
        match ready.await {
            Ok(Ok(())) => Ok(Self {
                address,
                stop: Some(stop),
                server,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StartupError::Bind {
                addr: address.to_string(),
                source: io::Error::other("the server task ended before it was ready"),
            }),
        }
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Its base URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Stops serving and waits (up to 10 s) until every job, engine and heartbeat is stopped.
    pub async fn stop(mut self) -> io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(Duration::from_secs(10), &mut self.server).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(io::Error::other(format!("the server task failed: {e}"))),
            Err(_) => {
                self.server.abort();
                Err(io::Error::other("the server did not stop within 10 s"))
            }
        }
    }
}
