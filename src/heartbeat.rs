//! Heartbeat instances: one periodic task per trial that checks the trial's services answer,
//! and keeps the last result for `/status`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde::Serialize;
use tokio::task::AbortHandle;
use tracing::{Instrument, info, warn};

use crate::domain::TrialId;
use crate::services::{Outbound, Service, ServiceClient};

/// The last check of one heartbeat, as shown in `/status`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HeartbeatReport {
    /// The trial's id.
    #[serde(rename = "ID")]
    pub id: String,
    /// When the services were last checked; none before the first check.
    #[schema(required = true)]
    pub last_check: Option<DateTime<Utc>>,
    /// Per service: `"reachable (HTTP 200)"` or why not.
    pub services: BTreeMap<&'static str, String>,
    /// Whether every service was reachable at the last check; none before the first check.
    #[schema(required = true)]
    pub healthy: Option<bool>,
}

struct Heartbeat {
    report: Arc<Mutex<HeartbeatReport>>,
    task: AbortHandle,
}

/// Every heartbeat instance.
pub struct Heartbeats {
    services: ServiceClient,
    interval: Duration,
    instances: Mutex<HashMap<TrialId, Heartbeat>>,
    /// Set once [`Heartbeats::stop_all`] ran: a request still being handled starts none.
    closed: AtomicBool,
}

/// Why a heartbeat was not added.
#[derive(Debug, thiserror::Error)]
pub enum HeartbeatRefused {
    #[error("trial '{0}' has a heartbeat already")]
    Exists(TrialId),
    #[error("the service is stopping: no heartbeat starts now")]
    Stopping,
    #[error(
        "there are {MAX_HEARTBEATS} heartbeat instances already, the most kept: remove one first"
    )]
    TooMany,
}

/// The most heartbeat instances at once: each checks every service at every interval.
pub const MAX_HEARTBEATS: usize = 100;

impl Heartbeats {
    /// No heartbeats yet; each will check every `interval`.
    pub fn new(services: ServiceClient, interval: Duration) -> Self {
        Self {
            services,
            interval,
            instances: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<TrialId, Heartbeat>> {
        self.instances.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The id of every heartbeat instance.
    pub fn ids(&self) -> Vec<TrialId> {
        self.map().keys().cloned().collect()
    }

    /// Starts a heartbeat for `id`; its first check runs at once.
    pub fn add(&self, id: &TrialId) -> Result<(), HeartbeatRefused> {
        let mut instances = self.map();
        // Read under the lock `stop_all` drains with: a heartbeat is either refused or
        // stopped with the others.
        if self.closed.load(Ordering::SeqCst) {
            return Err(HeartbeatRefused::Stopping);
        }
        if instances.contains_key(id) {
            return Err(HeartbeatRefused::Exists(id.clone()));
        }
        if instances.len() >= MAX_HEARTBEATS {
            return Err(HeartbeatRefused::TooMany);
        }
        let report = Arc::new(Mutex::new(HeartbeatReport {
            id: id.to_string(),
            last_check: None,
            services: BTreeMap::new(),
            healthy: None,
        }));
        let services = self.services.clone();
        let interval = self.interval;
        let shared = report.clone();
        let task = tokio::spawn(
            async move {
                let mut ticker = tokio::time::interval(interval);
                // A check slower than the interval is followed by a pause, not a burst.
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticker.tick().await;
                    let (results, healthy) = check(&services).await;
                    if !healthy {
                        warn!(?results, "heartbeat: a service is not reachable");
                    }
                    let mut report = shared.lock().unwrap_or_else(|p| p.into_inner());
                    report.last_check = Some(Utc::now());
                    report.services = results;
                    report.healthy = Some(healthy);
                }
            }
            .instrument(tracing::error_span!("heartbeat", trial = %id)),
        );
        instances.insert(
            id.clone(),
            Heartbeat {
                report,
                task: task.abort_handle(),
            },
        );
        info!(trial = %id, "heartbeat added");
        Ok(())
    }

    /// Stops and removes the heartbeat of `id`; `false` if there was none.
    pub fn remove(&self, id: &TrialId) -> bool {
        match self.map().remove(id) {
            Some(heartbeat) => {
                heartbeat.task.abort();
                info!(trial = %id, "heartbeat removed");
                true
            }
            None => false,
        }
    }

    /// Every heartbeat's last report, sorted by id.
    pub fn reports(&self) -> Vec<HeartbeatReport> {
        let mut reports: Vec<_> = self
            .map()
            .values()
            .map(|h| h.report.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .collect();
        reports.sort_by(|a, b| a.id.cmp(&b.id));
        reports
    }

    /// Stops every heartbeat.
    pub fn stop_all(&self) {
        self.closed.store(true, Ordering::SeqCst);
        for (_, heartbeat) in self.map().drain() {
            heartbeat.task.abort();
        }
    }
}

/// Checks every service: what each gave, in words, and whether all were reachable. Any HTTP
/// answer from a service's base URL counts as reachable.
async fn check(services: &ServiceClient) -> (BTreeMap<&'static str, String>, bool) {
    let mut results = BTreeMap::new();
    let mut healthy = true;
    for service in Service::ALL {
        let outcome = match services
            .attempt(&Outbound::new(service, Method::GET, ""))
            .await
        {
            Ok(reply) => format!("reachable (HTTP {})", reply.status),
            Err(e) => {
                healthy = false;
                format!("unreachable: {e}")
            }
        };
        results.insert(service.name(), outcome);
    }
    (results, healthy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn once_stopped_no_heartbeat_starts() {
        let settings = crate::config::Settings::defaults().expect("defaults");
        let services = ServiceClient::new(&settings).expect("client");
        let heartbeats = Heartbeats::new(services, Duration::from_secs(3600));
        let id = TrialId::parse("t1").expect("id");
        heartbeats.add(&id).expect("added");
        assert!(matches!(
            heartbeats.add(&id),
            Err(HeartbeatRefused::Exists(_))
        ));
        heartbeats.stop_all();
        assert!(!heartbeats.remove(&id), "stopped with the others");
        assert!(matches!(
            heartbeats.add(&id),
            Err(HeartbeatRefused::Stopping)
        ));
    }
}
