//! The scheduler (SPEC §8): owns the scheduled jobs and the registry of engines. At a job's
//! start time it creates the trial's engine. Jobs come from the debug API, from the trial
//! registry on request, or from automatic polling of the registry.

pub mod engines;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};
use tracing::{error, info, warn};

use crate::domain::{InvalidStartTime, StartTime, TrialId};
use crate::engine::EngineDeps;
use crate::services::registry::RegistryError;
use crate::store::{Loaded, Op, Store, StoreError};
use engines::EngineRegistry;

/// Why a trial could not be scheduled.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ScheduleError {
    #[error("trial '{0}' is already scheduled")]
    JobExists(TrialId),
    #[error("trial '{0}' already has an engine")]
    EngineExists(TrialId),
    #[error(transparent)]
    Time(#[from] InvalidStartTime),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("trial repository gives trial '{0}' no start_time")]
    NoStartTime(TrialId),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A job whose start passed while the service was down, longer ago than the misfire grace.
#[derive(Debug, Clone, Serialize)]
pub struct MissedJob {
    pub id: TrialId,
    pub start_time: StartTime,
    pub noticed_at: chrono::DateTime<Utc>,
}

/// A scheduled job as listed in `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduledJob {
    pub id: TrialId,
    pub start_time: StartTime,
}

/// What `schedule-all` did with each trial of the registry.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ScheduleAllReport {
    pub scheduled: Vec<String>,
    pub rescheduled: Vec<String>,
    pub already_scheduled: Vec<String>,
    pub already_executing: Vec<String>,
    pub skipped: Vec<Skipped>,
}

/// A registry trial that was not scheduled, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub id: String,
    pub reason: String,
}

struct Job {
    start: StartTime,
    generation: u64,
    task: AbortHandle,
}

/// The scheduler handle (cheap to clone).
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: Mutex<HashMap<TrialId, Job>>,
    missed: Mutex<Vec<MissedJob>>,
    engines: EngineRegistry,
    deps: Arc<EngineDeps>,
    automatic: watch::Sender<bool>,
    generation: AtomicU64,
}

impl Scheduler {
    /// A scheduler with no jobs and no engines.
    pub fn new(deps: Arc<EngineDeps>) -> Self {
        let automatic = deps.settings.scheduler.automatic;
        Self {
            inner: Arc::new(Inner {
                jobs: Mutex::new(HashMap::new()),
                missed: Mutex::new(Vec::new()),
                engines: EngineRegistry::default(),
                deps,
                automatic: watch::Sender::new(automatic),
                generation: AtomicU64::new(0),
            }),
        }
    }

    fn jobs_map(&self) -> MutexGuard<'_, HashMap<TrialId, Job>> {
        self.inner.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The engines.
    pub fn engines(&self) -> &EngineRegistry {
        &self.inner.engines
    }

    /// The dependencies every engine is built with.
    pub fn deps(&self) -> &Arc<EngineDeps> {
        &self.inner.deps
    }

    /// Schedules `id` at `start`, which must be in the future; refused if the trial has a job
    /// or an engine. Returns once the job is saved.
    pub async fn schedule(&self, id: &TrialId, start: StartTime) -> Result<(), ScheduleError> {
        start.ensure_future(Utc::now())?;
        {
            let mut jobs = self.jobs_map();
            if jobs.contains_key(id) {
                return Err(ScheduleError::JobExists(id.clone()));
            }
            if self.inner.engines.contains(id) {
                return Err(ScheduleError::EngineExists(id.clone()));
            }
            let job = self.spawn_job(id, start);
            jobs.insert(id.clone(), job);
        }
        self.save_job(id, start).await?;
        info!(trial = %id, start = %start, "trial scheduled");
        Ok(())
    }

    /// Saves a job; if that fails the job is dropped again, so nothing unsaved is promised.
    async fn save_job(&self, id: &TrialId, start: StartTime) -> Result<(), StoreError> {
        let saved = self
            .store()
            .write(Op::PutJob {
                id: id.clone(),
                start,
            })
            .await;
        if let Err(e) = &saved {
            error!(trial = %id, error = %e, "the job was not saved: dropped");
            if let Some(job) = self.jobs_map().remove(id) {
                job.task.abort();
            }
        }
        saved
    }

    fn store(&self) -> &Store {
        &self.inner.deps.store
    }

    fn spawn_job(&self, id: &TrialId, start: StartTime) -> Job {
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed);
        let delay = (start.utc() - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO);
        let scheduler = self.clone();
        let job_id = id.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            scheduler.fire(&job_id, generation);
        });
        Job {
            start,
            generation,
            task: task.abort_handle(),
        }
    }

    /// The start time has come: the job gives way to the engine.
    fn fire(&self, id: &TrialId, generation: u64) {
        let mut jobs = self.jobs_map();
        // A job that was removed or replaced since this timer was set does nothing.
        if jobs.get(id).is_none_or(|job| job.generation != generation) {
            return;
        }
        jobs.remove(id);
        match self.inner.engines.start(id, &self.inner.deps) {
            Ok(_) => info!(trial = %id, "start time reached: engine started"),
            Err(e) => {
                error!(trial = %id, error = %e, "start time reached but the engine was not started")
            }
        }
    }

    /// Removes a scheduled job; `false` if there was none.
    pub async fn unschedule(&self, id: &TrialId) -> Result<bool, StoreError> {
        if !self.jobs_map().contains_key(id) {
            return Ok(false);
        }
        // Saved first: a removal that is not saved would come back at the next start.
        self.store().write(Op::DeleteJob { id: id.clone() }).await?;
        // The job may have fired meanwhile; then its engine runs and there is no job left.
        let Some(job) = self.jobs_map().remove(id) else {
            return Ok(false);
        };
        job.task.abort();
        info!(trial = %id, "scheduled job removed");
        Ok(true)
    }

    /// Stops and removes a trial's engine; `false` if there was none. If the removal cannot
    /// be saved the engine stays listed (stopped), so the delete can be tried again.
    pub async fn delete_engine(&self, id: &TrialId) -> Result<bool, StoreError> {
        let Some(engine) = self.inner.engines.get(id) else {
            return Ok(false);
        };
        // Once the watchdog has ended, every write it made is queued ahead of this delete,
        // and the store applies writes in order: the engine cannot come back.
        engine.stop_and_wait().await;
        // Its token must not let callbacks into a later engine of the same trial.
        if let Some(token) = engine.token() {
            self.inner.deps.tokens.revoke(&token).await?;
        }
        self.store()
            .write(Op::DeleteEngine { id: id.clone() })
            .await?;
        self.inner.engines.remove(id);
        Ok(true)
    }

    /// Jobs that were missed while the service was down.
    pub fn missed(&self) -> Vec<MissedJob> {
        self.inner
            .missed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every scheduled job, soonest first.
    pub fn jobs(&self) -> Vec<ScheduledJob> {
        let mut jobs: Vec<_> = self
            .jobs_map()
            .iter()
            .map(|(id, job)| ScheduledJob {
                id: id.clone(),
                start_time: job.start,
            })
            .collect();
        jobs.sort_by_key(|job| (job.start_time.utc(), job.id.clone()));
        jobs
    }

    /// Fetches the trial's start time from the registry and schedules it.
    pub async fn schedule_from_registry(&self, id: &TrialId) -> Result<StartTime, ScheduleError> {
        let trial = self.inner.deps.services.fetch_trial(id).await?;
        let raw = trial
            .start_time
            .ok_or_else(|| ScheduleError::NoStartTime(id.clone()))?;
        let start = StartTime::parse(&raw)?;
        self.schedule(id, start).await?;
        Ok(start)
    }

    /// Schedules every future trial of the registry; a trial whose start time changed is
    /// rescheduled.
    pub async fn schedule_all(&self) -> Result<ScheduleAllReport, RegistryError> {
        let trials = self.inner.deps.services.list_trials().await?;
        let now = Utc::now();
        let mut report = ScheduleAllReport::default();
        let mut to_save = Vec::new();
        for trial in trials {
            let skip = |report: &mut ScheduleAllReport, reason: String| {
                report.skipped.push(Skipped {
                    id: trial.id.clone(),
                    reason,
                });
            };
            let id = match TrialId::parse(&trial.id) {
                Ok(id) => id,
                Err(e) => {
                    skip(&mut report, e.to_string());
                    continue;
                }
            };
            // The jobs lock is held from the engine check to the insert, as in `schedule`, so
            // a job firing meanwhile cannot leave a job beside its engine.
            let mut jobs = self.jobs_map();
            if self.inner.engines.contains(&id) {
                report.already_executing.push(trial.id);
                continue;
            }
            let Some(raw) = &trial.start_time else {
                skip(&mut report, "no start_time".to_owned());
                continue;
            };
            let start = match StartTime::parse(raw) {
                Ok(start) => start,
                Err(e) => {
                    skip(&mut report, e.to_string());
                    continue;
                }
            };
            if let Err(e) = start.ensure_future(now) {
                skip(&mut report, e.to_string());
                continue;
            }
            match jobs.get(&id) {
                Some(job) if job.start.utc() == start.utc() => {
                    report.already_scheduled.push(trial.id);
                }
                Some(job) => {
                    job.task.abort();
                    let new_job = self.spawn_job(&id, start);
                    jobs.insert(id.clone(), new_job);
                    info!(trial = %id, start = %start, "start time changed: trial rescheduled");
                    report.rescheduled.push(trial.id);
                    to_save.push((id, start));
                }
                None => {
                    let job = self.spawn_job(&id, start);
                    jobs.insert(id.clone(), job);
                    info!(trial = %id, start = %start, "trial scheduled from the registry");
                    report.scheduled.push(trial.id);
                    to_save.push((id, start));
                }
            }
        }
        for (id, start) in to_save {
            if let Err(e) = self.save_job(&id, start).await {
                report.scheduled.retain(|s| s != id.as_str());
                report.rescheduled.retain(|s| s != id.as_str());
                report.skipped.push(Skipped {
                    id: id.to_string(),
                    reason: e.to_string(),
                });
            }
        }
        Ok(report)
    }

    /// Whether automatic scheduling is on.
    pub fn automatic(&self) -> bool {
        *self.inner.automatic.borrow()
    }

    /// Turns automatic scheduling on or off; returns the new value once it is saved.
    pub async fn toggle_automatic(&self) -> Result<bool, StoreError> {
        let now_on = !self.automatic();
        self.store().write(Op::SetAutomatic(now_on)).await?;
        self.inner.automatic.send_replace(now_on);
        info!(automatic = now_on, "automatic scheduling toggled");
        Ok(now_on)
    }

    /// Brings back what the store held at start-up: engines resume (or wait for a restore,
    /// if failed), future jobs are set again, a job whose start passed while the service was
    /// down starts now if within `scheduler.misfire_grace_secs`, otherwise it is reported as
    /// missed.
    pub async fn recover(&self, loaded: Loaded) -> Result<(), StoreError> {
        if let Some(on) = loaded.automatic {
            self.inner.automatic.send_replace(on);
        }
        for record in loaded.engines {
            let (id, status) = (record.id.clone(), record.status);
            if self.inner.engines.recover(&self.inner.deps, record) {
                info!(trial = %id, ?status, "engine recovered from the store");
            }
        }
        let now = Utc::now();
        let grace = chrono::Duration::seconds(
            i64::try_from(self.inner.deps.settings.scheduler.misfire_grace_secs)
                .unwrap_or(i64::MAX),
        );
        for (id, start) in loaded.jobs {
            if self.inner.engines.contains(&id) {
                self.store().write(Op::DeleteJob { id }).await?;
            } else if start.utc() > now {
                let job = self.spawn_job(&id, start);
                self.jobs_map().insert(id.clone(), job);
                info!(trial = %id, start = %start, "scheduled job recovered");
            } else if now - start.utc() <= grace {
                warn!(trial = %id, start = %start, "start time passed while the service was down: starting now");
                // The engine's first saved record replaces the job's.
                if let Err(e) = self.inner.engines.start(&id, &self.inner.deps) {
                    error!(trial = %id, error = %e, "the late job was not started");
                }
            } else {
                warn!(trial = %id, start = %start, "start time passed while the service was down, beyond the misfire grace: missed");
                self.inner
                    .missed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(MissedJob {
                        id: id.clone(),
                        start_time: start,
                        noticed_at: now,
                    });
                self.store().write(Op::DeleteJob { id }).await?;
            }
        }
        Ok(())
    }

    /// Starts the task that polls the registry while automatic scheduling is on.
    pub fn spawn_poller(&self) -> JoinHandle<()> {
        let scheduler = self.clone();
        let mut switch = self.inner.automatic.subscribe();
        let interval = Duration::from_secs(self.inner.deps.settings.scheduler.poll_interval_secs);
        tokio::spawn(async move {
            loop {
                if switch.wait_for(|on| *on).await.is_err() {
                    return;
                }
                match scheduler.schedule_all().await {
                    Ok(report) => info!(
                        scheduled = report.scheduled.len(),
                        rescheduled = report.rescheduled.len(),
                        skipped = report.skipped.len(),
                        "automatic scheduling polled the registry"
                    ),
                    Err(e) => warn!(error = %e, "automatic scheduling could not poll the registry"),
                }
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    changed = switch.changed() => if changed.is_err() { return },
                }
            }
        })
    }

    /// Stops every job and engine (service shutdown).
    pub fn shutdown(&self) {
        for (_, job) in self.jobs_map().drain() {
            job.task.abort();
        }
        self.inner.engines.stop_all();
    }
}
