//! Builds the service from its settings and runs it: binds the listener (port 0 in tests),
//! wires scheduler, engines, tokens and heartbeats, and serves (see [`crate::server`]) until
//! shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::access::Access;
use crate::api::{self, AppInner, AppState};
use crate::config::Settings;
use crate::deadline::elapsed_ms;
use crate::engine::redact::Secrets;
use crate::engine::{EngineDeps, EngineHooks};
use crate::heartbeat::Heartbeats;
use crate::scheduler::Scheduler;
use crate::server;
use crate::services::{ClientError, ServiceClient};
use crate::store::sqlite::SqliteBackend;
use crate::store::{Backend, Store, StoreError};
use crate::telemetry;
use crate::tokens::TokenManager;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0} (configuration key `store.data_dir`)")]
    Store(#[from] crate::store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// A built service, bound to its port and ready to serve.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    /// The scheduler's background tasks (registry poller, purger).
    tasks: Vec<JoinHandle<()>>,
}

impl Application {
    /// Binds `server.bind` and builds the service.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let addr = settings.bind_addr()?;
        // The address is the configuration's: the refusal names its key.
        let listener = TcpListener::bind(addr).await.map_err(|source| {
            crate::config::ConfigError::Invalid {
                key: "server.bind".to_owned(),
                reason: format!("cannot listen on {addr}: {source}"),
            }
        })?;
        Self::with_listener(settings, listener, EngineHooks::default()).await
    }

    /// Builds the service on a listener bound by the caller (tests bind port 0 first, so
    /// `server.public_url` can name the real port).
    pub async fn with_listener(
        settings: Settings,
        listener: TcpListener,
        hooks: EngineHooks,
    ) -> Result<Self, StartupError> {
        let (data_dir, synchronous) = (settings.store.data_dir.clone(), settings.store.synchronous);
        // Opening may take seconds after a crash (SQLite reads its write-ahead log back), while
        // the port already takes connections: the log says what the service is doing.
        info!(data_dir = %data_dir.display(), ?synchronous, "opening the store");
        let opening = Instant::now();
        let backend =
            tokio::task::spawn_blocking(move || SqliteBackend::open_with(&data_dir, synchronous))
                .await
                .map_err(|e| StoreError::Backend(format!("the store did not open: {e}")))??;
        info!(elapsed_ms = elapsed_ms(opening), "store opened");
        Self::with_backend(settings, listener, hooks, backend).await
    }

    /// Builds the service on a store backend of the caller's choice.
    pub async fn with_backend(
        settings: Settings,
        listener: TcpListener,
        hooks: EngineHooks,
        backend: impl Backend,
    ) -> Result<Self, StartupError> {
        settings.validate()?;
        // Before anything is counted (recovered engines run steps right away).
        telemetry::install_metrics();
        let access = Arc::new(Access::new(&settings.auth)?);
        let secrets = Arc::new(Secrets::new(settings.secret_values()));
        let settings = Arc::new(settings);
        // It reads the CA bundle's file, off the runtime's threads.
        let services = {
            let settings = settings.clone();
            tokio::task::spawn_blocking(move || ServiceClient::new(&settings))
                .await
                .map_err(|e| ClientError::Build(format!("the client was not built: {e}")))??
        };
        let reading = Instant::now();
        let (store, mut loaded) = tokio::task::spawn_blocking(move || Store::start(backend))
            .await
            .map_err(|e| StoreError::Backend(format!("the store did not start: {e}")))??;
        info!(
            elapsed_ms = elapsed_ms(reading),
            live_trials = loaded.trials.len(),
            jobs = loaded.jobs.len(),
            "store read: recovering its live trials and jobs"
        );
        let revoked = std::mem::take(&mut loaded.revoked);
        let tokens = Arc::new(
            TokenManager::new(&settings.auth.token_secret, settings.auth.token_ttl_secs)
                .with_store(store.clone(), revoked),
        );
        let held: Vec<&str> = (loaded.trials.iter())
            .filter_map(|trial| trial.record.checkpoint.data.token.as_deref())
            .collect();
        match tokens.lapse_unheld(&held).await {
            Ok(0) => {}
            Ok(lapsed) => info!(
                lapsed,
                "revocations kept for good of tokens no live trial holds lapse a token lifetime from now"
            ),
            Err(e) => warn!(error = %e, "revocations kept for good stay so: not saved"),
        }
        let (ended, ended_rx) = tokio::sync::mpsc::unbounded_channel();
        let deps = Arc::new(EngineDeps {
            settings: settings.clone(),
            services: services.clone(),
            tokens: tokens.clone(),
            store,
            secrets,
            hooks,
            ended,
        });
        for trial in &loaded.trials {
            let handed_out = trial.record.checkpoint.data.token.as_deref();
            if let Some(Err(why)) = handed_out.map(|token| tokens.decode_held(token, |_| true)) {
                warn!(trial = %trial.record.id, reason = %why, "the callback token this live trial handed to its components no longer verifies (auth.token_secret, or a lower auth.token_ttl_secs, since it was minted): its components' callbacks will be refused until the setting is put back; abort the trial if it cannot be");
            }
        }
        for (id, reason) in &loaded.quarantined {
            tracing::error!(trial = %id, reason = %reason, "a trial's record could not be read: listed as Corrupt in /trials");
        }
        let scheduler = Scheduler::new(deps, ended_rx, access.clone());
        scheduler.recover(loaded).await?;
        let poller = scheduler.spawn_poller();
        let purger = scheduler.spawn_purger();
        let heartbeats = Heartbeats::new(
            services,
            Duration::from_secs(settings.heartbeat.interval_secs),
        );
        let state = AppState::new(AppInner {
            settings,
            access,
            scheduler,
            tokens,
            heartbeats,
            started: Instant::now(),
            shutdown: tokio_util::sync::CancellationToken::new(),
            handlers: tokio_util::task::TaskTracker::new(),
            late_slices: std::sync::Mutex::default(),
        });
        #[cfg(unix)]
        if state.access.reloads() {
            reload_keys_on_sighup(&state);
        }
        Ok(Self {
            listener,
            state,
            tasks: [Some(poller), purger].into_iter().flatten().collect(),
        })
    }

    /// The address the service listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The service's shared state (for tools that drive it in-process).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes. Then, at once, every job, engine and heartbeat stops
    /// (no job fires and no step starts after that) and event streams end; an answer in flight
    /// and the open connections get what is left of `server.shutdown_grace_secs`, counted from
    /// then, to finish before this returns.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let Self {
            listener,
            state,
            tasks,
        } = self;
        // What an operator checks first when the service does not do what they configured.
        info!(
            addr = %listener.local_addr()?,
            version = env!("CARGO_PKG_VERSION"),
            public_url = %state.settings.server.public_url,
            config = %state.settings.file_shown(),
            "Lifecycle Manager listening"
        );
        let upkeep = telemetry::spawn_metrics_upkeep();
        let router = api::router(state.clone());
        let limits = server::Limits::from(&state.settings.server);
        let stopping = state.clone();
        let handlers = state.handlers.clone();
        server::serve(listener, router, limits, handlers, async move {
            shutdown.await;
            let began = tokio::time::Instant::now();
            for task in tasks {
                task.abort();
            }
            // At once: no job fires and no step starts once shutdown began, heartbeats stop
            // and event streams end. Nothing is reported as failed; every trial resumes from
            // its checkpoint at the next start (a deployment in flight has its answer first).
            stopping.heartbeats.stop_all();
            stopping.shutdown.cancel();
            stopping.scheduler.shutdown().await;
            info!("shutting down: jobs and engines stopped, draining connections");
            began
        })
        .await;
        upkeep.abort();
        // Every request has been handled (or the grace is over): commit the rows they queued,
        // and leave the whole store in its database file.
        if let Err(e) = state.scheduler.deps().store.close().await {
            warn!(error = %e, "shutting down: the store was not closed cleanly: keep its -wal file beside the database file");
        }
        info!("Lifecycle Manager stopped");
        Ok(())
    }
}

/// Loads the API keys again on every SIGHUP, for as long as the service runs (SIGHUP would
/// otherwise end the process), and hides the new ones in what is recorded, as the first
/// ones are. Keys that fail validation, or that are (or are part of) a trial id a viewer is
/// shown, leave the old ones in force.
#[cfg(unix)]
fn reload_keys_on_sighup(state: &AppState) {
    use tokio::signal::unix::{SignalKind, signal};
    // Installed before the service answers, so a SIGHUP sent once it does is never lost.
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(e) => {
            warn!("SIGHUP will not reload the API keys: cannot listen for it ({e})");
            return;
        }
    };
    // Weak: the task must not keep the service's state alive once it has stopped.
    let state = state.downgrade();
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let Some(state) = state.upgrade() else {
                break;
            };
            let (held, unread) = state.shown_ids().await;
            if let Some(e) = unread {
                warn!(
                    "SIGHUP: the ids of the trials only in the store could not be read ({e}); the new keys are checked against the ids in memory only"
                );
            }
            let access = state.access.clone();
            // The reload reads the configuration's files.
            match tokio::task::spawn_blocking(move || access.reload(&held)).await {
                Ok(Ok(reloaded)) => {
                    state.scheduler.deps().secrets.add(reloaded.secrets);
                    info!(
                        "SIGHUP: API keys reloaded: {} (only the keys: other settings take effect at the next start)",
                        reloaded.changes
                    );
                    for warning in reloaded.warnings {
                        warn!("SIGHUP: {warning}");
                    }
                }
                Ok(Err(e)) => {
                    // One line, each problem after the other: a log line is one line.
                    let problems = e.to_string().lines().collect::<Vec<_>>().join("; ");
                    error!("SIGHUP: API keys not reloaded, the previous keys stay: {problems}");
                }
                Err(e) => {
                    error!("SIGHUP: the key reload did not complete ({e}); the previous keys stay")
                }
            }
        }
    });
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => info!("SIGINT received: shutting down"),
        () = terminate => info!("SIGTERM received: shutting down"),
    }
}
