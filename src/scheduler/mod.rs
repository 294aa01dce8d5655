//! The scheduler (SPEC §8): owns the scheduled jobs and the registry of engines. At a job's
//! start time it creates the trial's engine. Jobs come from the debug API, from the trial
//! registry on request, or from automatic polling of the registry. It also keeps memory and
//! the store small (SPEC §12): ended engines leave memory after `engine.keep_finished_secs`,
//! ended trials leave the store after `store.retention_days`.
//!
//! A job is saved before it is armed, and a removal is saved before it is made, with the
//! store write queued under the jobs lock: what the store holds and what runs never disagree,
//! and a change that could not be saved did not happen.

pub mod engines;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{AbortHandle, JoinHandle};
use tracing::{error, info, warn};

use crate::access::Access;
use crate::domain::{InvalidStartTime, StartTime, TrialId};
use crate::engine::redact::REDACTED;
use crate::engine::state;
use crate::engine::state::Leftover;
use crate::engine::watchdog::LastRecord;
use crate::engine::{EngineDeps, EngineHandle, EngineShared, failure, leftovers_of};
use crate::services::registry::{RegistryError, Unusable};
use crate::store::{AuditEntry, Loaded, Op, Store, StoreError, StoredTrial};
use engines::EngineRegistry;

/// Why a trial could not be scheduled.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ScheduleError {
    #[error("trial '{0}' is already scheduled")]
    JobExists(TrialId),
    #[error("trial '{0}' already has an engine")]
    EngineExists(TrialId),
    #[error(
        "trial '{0}' has run already (or its record was set aside as Corrupt) and its record is kept; DELETE /debug/engine/{0} forgets it"
    )]
    Ran(TrialId),
    #[error(transparent)]
    Time(#[from] InvalidStartTime),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("trial repository gives trial '{0}' no start_time")]
    NoStartTime(TrialId),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a delete found to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deleted {
    /// An engine in memory, stopped and forgotten (its audit entry written with the change),
    /// and what it `left` deployed (a delete that was told to leave it).
    Engine { left: Vec<Leftover> },
    /// Nothing, since the trial may still have something deployed on the facility and the
    /// delete was not told to leave it: the engine goes on; what undoes it.
    Deployed(Undo),
    /// The record of an ended trial no longer in memory, or of one `set_aside` as corrupt,
    /// and what it `left` deployed (a delete that was told to leave it).
    Record {
        left: Vec<Leftover>,
        set_aside: bool,
    },
    /// Nothing: no such trial, or another delete of it is under way.
    Nothing,
}

/// What undoes what a trial a delete was refused for may still have deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undo {
    /// An abort: its clean-up undoes it.
    Abort,
    /// The clean-up under way.
    CleanUp,
    /// A human, on the facility: the trial has ended.
    ByHand,
    /// A human, on the facility, after reading its recorded responses: its record, set aside
    /// as corrupt, cannot say what it deployed.
    Unreadable,
}

/// A job whose start passed while the service was down, longer ago than the misfire grace.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MissedJob {
    /// The trial's id.
    #[schema(value_type = String)]
    pub id: TrialId,
    /// When it was to start, with the offset it was given.
    #[schema(value_type = String)]
    pub start_time: StartTime,
    /// When the service, starting again, found it missed.
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
    /// Trials whose engine is running (or failed, waiting for the operator).
    pub already_executing: Vec<String>,
    /// Trials that ran to their end (finished or aborted).
    pub already_ended: Vec<String>,
    pub skipped: Vec<Skipped>,
}

/// A registry trial that was not scheduled, and why.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Skipped {
    /// The trial's id, as the registry wrote it.
    pub id: String,
    /// Why it was not scheduled: its start is past, unreadable, or it was listed again.
    pub reason: String,
}

struct Job {
    start: StartTime,
    generation: u64,
    timer: Timer,
    /// When the trial was scheduled: its engine keeps it, so the trial keeps its place in
    /// `GET /trials` when it starts.
    created_at: DateTime<Utc>,
}

impl Job {
    /// A job not armed yet.
    fn new(start: StartTime, generation: u64, created_at: DateTime<Utc>) -> Self {
        Self {
            start,
            generation,
            timer: Timer::Unarmed,
            created_at,
        }
    }

    /// Its removal is being saved: a second removal finds no job, and its timer starts
    /// nothing.
    fn removing(&self) -> bool {
        matches!(self.timer, Timer::Removing)
    }
}

/// Where a job's timer stands.
enum Timer {
    /// Not started: the job's save is under way, or the service is stopping.
    Unarmed,
    /// Running: it starts the engine at the job's start time.
    Armed(AbortHandle),
    /// Stopped because the job's removal is being saved.
    Removing,
}

impl Timer {
    /// Stops the timer if it runs, leaving it `next`.
    fn stop(&mut self, next: Timer) {
        if let Timer::Armed(handle) = std::mem::replace(self, next) {
            handle.abort();
        }
    }

    /// Stops the timer if it runs; a job being removed stays so.
    fn disarm(&mut self) {
        if let Timer::Armed(_) = self {
            self.stop(Timer::Unarmed);
        }
    }
}

/// Why a trial id that is an API key or a secret is not taken.
pub const A_SECRET_AS_ID: &str = "the trial id is, or holds, one of this service's API keys or secrets: not taken, since trial ids are shown to every viewer; change that key or secret now, and give the trial's own id";

/// The scheduler handle (cheap to clone).
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: Mutex<HashMap<TrialId, Job>>,
    /// The API keys in force: a trial id that is one is never scheduled.
    access: Arc<Access>,
    /// The trials an operator unscheduled, with the start time each had: polling the
    /// registry does not schedule them at that time again. Taken after `jobs`, never before.
    unscheduled: Mutex<HashMap<TrialId, DateTime<Utc>>>,
    missed: Mutex<Vec<MissedJob>>,
    engines: EngineRegistry,
    deps: Arc<EngineDeps>,
    automatic: Arc<watch::Sender<bool>>,
    /// The task that owns the switch: it takes one turn at a time, so each turns what the
    /// one before it saved.
    turns: mpsc::Sender<SwitchTurn>,
    generation: AtomicU64,
    /// Bumped whenever a job goes away or an engine starts, for those waiting on either.
    changes: watch::Sender<()>,
}

/// What a turn of the automatic-scheduling switch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switched {
    /// Whether automatic scheduling is on now.
    pub on: bool,
    /// Whether the turn changed it (setting it to the state it is in changes nothing).
    pub changed: bool,
}

/// How a turn moves the switch.
#[derive(Debug, Clone, Copy)]
enum Turn {
    /// To the other state (`POST /trial/scheduling`).
    Toggle,
    /// To this state, whatever it is now (the console's buttons say which they want).
    To(bool),
}

/// A turn of the switch: how, the audit entry for what it did, and where to answer.
struct SwitchTurn {
    turn: Turn,
    audit: Box<dyn FnOnce(Switched) -> Option<AuditEntry> + Send>,
    reply: oneshot::Sender<Result<Switched, StoreError>>,
}

/// Logs each registry trial that automatic scheduling skipped, with why, unless `told` holds
/// it (it was skipped at the poll before too); returns the trials skipped now. One that is
/// scheduled, or leaves the registry, is told again if it is skipped again later.
fn tell_skips(skipped: Vec<Skipped>, told: &HashSet<String>) -> HashSet<String> {
    skipped
        .into_iter()
        .map(|Skipped { id, reason }| {
            if !told.contains(&id) {
                // The id is the registry's text: kept to what a trial id can be, and more, and
                // quoted, so that a line break in it cannot start a line of its own.
                let shown: String = id.chars().take(200).collect();
                warn!(trial = ?shown, reason = %reason, "automatic scheduling skipped a registry trial");
            }
            id
        })
        .collect()
}

/// Starts the task that owns the switch of automatic scheduling: each turn moves it from
/// what the one before it saved, so a toggle and a set never race on a state read before
/// another turn; a change is shown once it is saved. It ends with the scheduler.
fn spawn_switch(store: Store, automatic: Arc<watch::Sender<bool>>) -> mpsc::Sender<SwitchTurn> {
    let (turns, mut taken) = mpsc::channel::<SwitchTurn>(16);
    tokio::spawn(async move {
        while let Some(SwitchTurn { turn, audit, reply }) = taken.recv().await {
            let was = *automatic.borrow();
            let on = match turn {
                Turn::Toggle => !was,
                Turn::To(on) => on,
            };
            let switched = Switched {
                on,
                changed: on != was,
            };
            let entry = audit(switched);
            let saved = if switched.changed {
                store.write_audited(Op::SetAutomatic(on), entry).await
            } else if let Some(entry) = entry {
                // Nothing to change (the saved setting is left as it is, or unset): the
                // request is in the log all the same.
                store.write(Op::Audit(Box::new(entry))).await
            } else {
                Ok(0)
            };
            if saved.is_ok() && switched.changed {
                automatic.send_replace(on);
                info!(automatic = on, "automatic scheduling switched");
            }
            // A caller that went away meanwhile finds the switch as it was saved.
            let _ = reply.send(saved.map(|_| switched));
        }
    });
    turns
}

/// How often ended trials older than `store.retention_days` are purged.
const PURGE_INTERVAL: Duration = Duration::from_secs(3600);
/// How long a job's timer sleeps at most before it reads the wall clock again.
const WALL_CLOCK_CHECK: Duration = Duration::from_secs(30);

/// How many trials (with at most how many events and responses in all), and audit entries,
/// one write of a purge removes: the writes of running trials go in between, so a purge of a
/// large backlog (a retention shortened on a store of years) holds none of them up for long,
/// and the write-ahead log stays small.
const PURGE_TRIALS: usize = 50;
const PURGE_ROWS: usize = 5_000;
const PURGE_AUDIT: usize = 5_000;

/// Removes `what` past a retention of `days`, writing `step` until a write removes nothing,
/// and says how many went (or why the rest did not: the next purge removes them).
async fn purge_in_steps(store: &Store, what: &str, days: u64, step: impl Fn() -> Op) {
    let mut purged = 0;
    loop {
        match store.write(step()).await {
            Ok(0) => break,
            Ok(removed) => purged += removed,
            Err(e) => {
                warn!(error = %e, purged, "the purge of old {what} failed; it runs again later");
                return;
            }
        }
    }
    if purged > 0 {
        info!(purged, days, "{what} past their retention purged");
    }
}

impl Scheduler {
    /// A scheduler with no jobs and no engines; `ended` receives the engines whose trial ended
    /// (the `ended` sender of `deps`).
    pub fn new(
        deps: Arc<EngineDeps>,
        ended: mpsc::UnboundedReceiver<Weak<EngineShared>>,
        access: Arc<Access>,
    ) -> Self {
        let automatic = Arc::new(watch::Sender::new(deps.settings.scheduler.automatic));
        let turns = spawn_switch(deps.store.clone(), automatic.clone());
        let scheduler = Self {
            inner: Arc::new(Inner {
                jobs: Mutex::new(HashMap::new()),
                access,
                unscheduled: Mutex::new(HashMap::new()),
                missed: Mutex::new(Vec::new()),
                engines: EngineRegistry::default(),
                deps,
                automatic,
                turns,
                generation: AtomicU64::new(0),
                changes: watch::Sender::new(()),
            }),
        };
        scheduler.spawn_evictor(ended);
        scheduler
    }

    fn jobs_map(&self) -> MutexGuard<'_, HashMap<TrialId, Job>> {
        self.inner.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn missed_list(&self) -> MutexGuard<'_, Vec<MissedJob>> {
        self.inner.missed.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn unscheduled(&self) -> MutexGuard<'_, HashMap<TrialId, DateTime<Utc>>> {
        self.inner
            .unscheduled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The trials shown by `/status` and `/trials` as live: an engine in memory or a job.
    pub fn held_ids(&self) -> Vec<TrialId> {
        let mut ids = self.engines().ids();
        ids.extend(self.jobs_map().keys().cloned());
        ids
    }

    /// Whether `id` has a job that has not fired yet.
    pub fn is_scheduled(&self, id: &TrialId) -> bool {
        self.jobs_map().contains_key(id)
    }

    /// The engines in memory.
    pub fn engines(&self) -> &EngineRegistry {
        &self.inner.engines
    }

    /// The dependencies every engine is built with.
    pub fn deps(&self) -> &Arc<EngineDeps> {
        &self.inner.deps
    }

    fn store(&self) -> &Store {
        &self.inner.deps.store
    }

    fn next_generation(&self) -> u64 {
        self.inner.generation.fetch_add(1, Ordering::Relaxed)
    }

    /// Schedules `id` at `start`, which must be in the future; refused if the trial has a job,
    /// an engine, or a record of an earlier run. Returns once the job (and `audit`, in the same
    /// transaction) is saved and armed.
    pub async fn schedule(
        &self,
        id: &TrialId,
        start: StartTime,
        audit: Option<AuditEntry>,
    ) -> Result<(), ScheduleError> {
        // What the trial already has is the first answer: a trial that ran, scheduled again
        // at its own (past) start time, is told so rather than that the time has passed.
        self.ensure_free(&self.jobs_map(), id)?;
        if let Err(past) = start.ensure_future(Utc::now()) {
            let key = id.clone();
            let stored = self.store().read(move |r| r.trial(&key)).await?;
            return Err(match stored {
                Some(_) => ScheduleError::Ran(id.clone()),
                None => past.into(),
            });
        }
        let (generation, saved) = {
            let mut jobs = self.jobs_map();
            self.ensure_free(&jobs, id)?;
            let generation = self.next_generation();
            let created_at = crate::engine::state::now();
            jobs.insert(id.clone(), Job::new(start, generation, created_at));
            let mut ops = vec![Op::PutJob {
                id: id.clone(),
                start,
                created_at,
            }];
            // A trial that has run already is refused: its entry is the refusal's.
            ops.extend(audit.map(|entry| Op::AuditIfChanged(Box::new(entry))));
            let saved = self.store().write_all(ops);
            (generation, saved)
        };
        match saved.await {
            Ok(0) => {
                self.drop_reservation(id, generation);
                Err(ScheduleError::Ran(id.clone()))
            }
            Ok(_) => {
                self.saved(id, generation);
                info!(trial = %id, start = %start, "trial scheduled");
                Ok(())
            }
            Err(e) => {
                error!(trial = %id, error = %e, "the job was not saved, so it was not made");
                self.drop_reservation(id, generation);
                Err(e.into())
            }
        }
    }

    /// Refuses a trial that has a job or an engine.
    fn ensure_free(&self, jobs: &HashMap<TrialId, Job>, id: &TrialId) -> Result<(), ScheduleError> {
        if jobs.contains_key(id) {
            return Err(ScheduleError::JobExists(id.clone()));
        }
        if self.inner.engines.contains(id) {
            return Err(ScheduleError::EngineExists(id.clone()));
        }
        Ok(())
    }

    fn drop_reservation(&self, id: &TrialId, generation: u64) {
        let mut jobs = self.jobs_map();
        if jobs.get(id).is_some_and(|job| job.generation == generation) {
            jobs.remove(id);
            self.inner.changes.send_replace(());
        }
    }

    /// Gives a job whose new start time was not saved its saved one back, and its timer.
    fn put_back(&self, id: &TrialId, generation: u64, start: StartTime) {
        match self.jobs_map().get_mut(id) {
            Some(job) if job.generation == generation => job.start = start,
            _ => return,
        }
        self.arm(id, generation);
    }

    /// Waits until the scheduled trial `id` has its engine; `None` if its job goes away
    /// without one.
    pub async fn wait_for_engine(&self, id: &TrialId) -> Option<crate::engine::EngineHandle> {
        let mut changes = self.inner.changes.subscribe();
        loop {
            // The job first: it leaves only once its engine is in, so a job gone means the
            // engine is there, or there will be none.
            if !self.jobs_map().contains_key(id) {
                return self.inner.engines.get(id);
            }
            if let Some(engine) = self.inner.engines.get(id) {
                return Some(engine);
            }
            changes.changed().await.ok()?;
        }
    }

    /// Starts the timer of a saved job (unless it was removed or replaced meanwhile).
    fn arm(&self, id: &TrialId, generation: u64) {
        let mut jobs = self.jobs_map();
        // Once the service stops (checked under the jobs' lock, which its stop takes after
        // closing), no timer starts: the saved job starts the trial at the next start-up.
        if self.inner.engines.is_closed() {
            return;
        }
        let Some(job) = jobs
            .get_mut(id)
            .filter(|job| job.generation == generation && !job.removing())
        else {
            return;
        };
        let start = job.start.utc();
        let scheduler = self.clone();
        let job_id = id.clone();
        let timer = tokio::spawn(async move {
            // A sleep counts on the monotonic clock, the start time is on the wall clock: the
            // wall clock is read again at least every WALL_CLOCK_CHECK, so one stepped back (an
            // NTP correction) does not start the trial early, nor one stepped forward (or a
            // host suspended) long after its time.
            while let Ok(left) = (start - Utc::now()).to_std()
                && !left.is_zero()
            {
                tokio::time::sleep(left.min(WALL_CLOCK_CHECK)).await;
            }
            let late = (Utc::now() - start).num_seconds();
            if late > 2 * WALL_CLOCK_CHECK.as_secs() as i64 {
                warn!(trial = %job_id, late_secs = late, "the timer woke long after the start time (the wall clock stepped forward, or the host was suspended): starting now");
            }
            scheduler.fire(&job_id, generation);
        });
        job.timer.stop(Timer::Armed(timer.abort_handle()));
    }

    /// A job's save is done: its timer starts, and the trial is missed or unscheduled no more
    /// (the store forgot both marks with the save), unless an unschedule came meanwhile:
    /// its own mark stands, or polling the registry would schedule the trial again.
    fn saved(&self, id: &TrialId, generation: u64) {
        self.arm(id, generation);
        self.missed_list().retain(|missed| missed.id != *id);
        let jobs = self.jobs_map();
        if jobs
            .get(id)
            .is_some_and(|job| job.generation == generation && !job.removing())
        {
            self.unscheduled().remove(id);
        }
    }

    /// The start time has come: the job gives way to the engine.
    fn fire(&self, id: &TrialId, generation: u64) {
        let mut jobs = self.jobs_map();
        // A job that was removed or replaced since this timer was set does nothing, nor does
        // one whose removal is being saved: its timer was stopped, but a timer that had
        // already woken up could not be, and waited here for the lock.
        let Some(created_at) = jobs
            .get(id)
            .filter(|job| job.generation == generation && !job.removing())
            .map(|job| job.created_at)
        else {
            return;
        };
        match self.inner.engines.start(id, &self.inner.deps, created_at) {
            Ok(_) => {
                jobs.remove(id);
                self.inner.changes.send_replace(());
                info!(trial = %id, "start time reached: engine started");
            }
            // Stopping: the saved job starts the trial at the next start-up.
            Err(e) => {
                warn!(trial = %id, error = %e, "start time reached but the engine was not started")
            }
        }
    }

    /// Removes a scheduled job; `false` if there was none. The timer stops first and comes
    /// back if the removal cannot be saved, so the job neither fires meanwhile nor is lost.
    pub async fn unschedule(
        &self,
        id: &TrialId,
        audit: Option<AuditEntry>,
    ) -> Result<bool, StoreError> {
        let found = {
            let mut jobs = self.jobs_map();
            jobs.get_mut(id).filter(|job| !job.removing()).map(|job| {
                job.timer.stop(Timer::Removing);
                (job.generation, job.start.utc())
            })
        };
        let Some((generation, start)) = found else {
            return self.remove_missed(id, audit).await;
        };
        let unschedule = Op::Unschedule {
            id: id.clone(),
            start,
            at: Utc::now(),
        };
        let saved = self.store().write_audited(unschedule, audit);
        match saved.await {
            Ok(_) => {
                self.unscheduled().insert(id.clone(), start);
                self.drop_reservation(id, generation);
                info!(trial = %id, "scheduled job removed: polling the registry does not schedule it at that start time again");
                Ok(true)
            }
            Err(e) => {
                if let Some(job) = self
                    .jobs_map()
                    .get_mut(id)
                    .filter(|job| job.generation == generation)
                {
                    job.timer = Timer::Unarmed;
                }
                self.arm(id, generation);
                Err(e)
            }
        }
    }

    /// Removes the job of `id` missed while the service was down; `false` if there was none.
    async fn remove_missed(
        &self,
        id: &TrialId,
        audit: Option<AuditEntry>,
    ) -> Result<bool, StoreError> {
        if !self.missed_list().iter().any(|missed| missed.id == *id) {
            return Ok(false);
        }
        // Of removals at once, the one whose write removed the row answers that it did; a job
        // scheduled again meanwhile stays.
        let removed = self
            .store()
            .write_audited(Op::DeleteMissedJob { id: id.clone() }, audit)
            .await?
            > 0;
        self.missed_list().retain(|missed| missed.id != *id);
        if removed {
            info!(trial = %id, "missed job removed");
        }
        Ok(removed)
    }

    /// Stops and forgets a trial's engine (or, for an ended trial no longer in memory, its
    /// record), revoking its token. If the removal cannot be saved, nothing of it is made: the
    /// engine is brought back from where it stood, as a restart would, and its token stays.
    /// An engine whose trial may still have something deployed is removed only if told to
    /// `leave_deployed` it (what it left is answered, and added to the audit entry).
    pub async fn delete_engine(
        &self,
        id: &TrialId,
        mut audit: Option<AuditEntry>,
        leave_deployed: bool,
    ) -> Result<Deleted, StoreError> {
        let Some(engine) = self.inner.engines.get(id) else {
            // An ended trial's record may be the only one of a slice a skipped close left.
            let key = id.clone();
            let stored = self.store().read(move |reader| reader.trial(&key)).await?;
            let (left, set_aside) = match &stored {
                Some(StoredTrial::Readable(record)) => (leftovers_of(record), false),
                // It may have been a live trial with its slice deployed.
                Some(StoredTrial::Corrupt { ran: true, .. }) => (Leftover::unreadable(), true),
                Some(StoredTrial::Corrupt { ran: false, .. }) => (Vec::new(), true),
                None => (Vec::new(), false),
            };
            if !left.is_empty() && !leave_deployed {
                // Only an ended trial, or a corrupt one, is not in memory.
                let undo = if set_aside {
                    Undo::Unreadable
                } else {
                    Undo::ByHand
                };
                return Ok(Deleted::Deployed(undo));
            }
            // Whether there was a record to forget is known only once this is written: the
            // answer's audit entry is written after it.
            let removed = self
                .store()
                .write(Op::DeleteTrial { id: id.clone() })
                .await?;
            if removed == 0 {
                return Ok(Deleted::Nothing);
            }
            failure::remove_file(&self.inner.deps.settings, id).await;
            return Ok(Deleted::Record { left, set_aside });
        };
        // Forgotten with its engine, a slice would stay on the facility with nothing to say so.
        if !leave_deployed {
            let shown = engine.snapshot();
            if shown.deployed {
                let undo = if shown.lifecycle().is_ended() {
                    Undo::ByHand
                } else if shown.aborting() {
                    Undo::CleanUp
                } else {
                    Undo::Abort
                };
                return Ok(Deleted::Deployed(undo));
            }
        }
        if !engine.claim_delete() {
            return Ok(Deleted::Nothing);
        }
        // Once the tasks have ended, nothing of this engine reaches a service or the store.
        let last = engine.stop().await;
        let left = (last.as_ref()).map_or_else(Vec::new, |last| leftovers_of(&last.record));
        if !left.is_empty() && !leave_deployed {
            // It deployed something while the delete was on its way.
            self.give_back(&engine, last);
            return Ok(Deleted::Deployed(Undo::Abort));
        }
        if !left.is_empty()
            && let Some(entry) = audit.as_mut()
        {
            let said = entry.detail.take().unwrap_or_default();
            entry.detail = Some(format!("{said}; {}", state::left_deployed(&left)));
        }
        // Its token must not let callbacks into a later engine of the same trial: revoked
        // with the removal, both or neither.
        let tokens = &self.inner.deps.tokens;
        let revocation = engine.token().and_then(|token| tokens.revocation(&token));
        let mut ops: Vec<Op> = revocation.iter().map(|r| r.op()).collect();
        ops.push(Op::DeleteTrial { id: id.clone() });
        ops.extend(audit.map(|entry| Op::Audit(Box::new(entry))));
        if let Err(e) = self.store().write_all(ops).await {
            warn!(trial = %id, error = %e, "the removal was not saved");
            self.give_back(&engine, last);
            return Err(e);
        }
        if let Some(revocation) = revocation {
            tokens.revoked(revocation);
        }
        self.inner.engines.remove(id, &engine.weak());
        failure::remove_file(&self.inner.deps.settings, id).await;
        Ok(Deleted::Engine { left })
    }

    /// Gives an engine a delete stopped, but did not remove, back its work: it goes on from
    /// where it stood.
    fn give_back(&self, engine: &EngineHandle, last: Option<LastRecord>) {
        let id = engine.id();
        if last.is_some_and(|last| self.inner.engines.bring_back(engine, last)) {
            warn!(trial = %id, "the engine was not removed: it goes on");
        } else {
            // Stopping, or its stop was taken by the shutdown: the next start-up recovers the
            // trial from its record.
            engine.release_delete();
            error!(trial = %id, "the engine was not removed, and stays stopped until the next start");
        }
    }

    /// Jobs that were missed while the service was down.
    pub fn missed(&self) -> Vec<MissedJob> {
        self.missed_list().clone()
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

    /// Whether `id` is one of this service's API keys or secrets, or holds one (a key given
    /// by its digest only when it is the whole id): such an id (pasted into the wrong field,
    /// most likely) is never taken, since every viewer sees trial ids in `/status`, `/trials`
    /// and the log.
    pub fn is_a_secret(&self, id: &str) -> bool {
        self.inner.access.key_holder(id).is_some()
            || self.inner.deps.secrets.redactor().hides_in(id)
    }

    /// Fetches the trial's start time from the registry and schedules it.
    pub async fn schedule_from_registry(
        &self,
        id: &TrialId,
        audit: Option<AuditEntry>,
    ) -> Result<StartTime, ScheduleError> {
        let trial = self.inner.deps.services.fetch_trial(id).await?;
        let raw = trial
            .start_time
            .ok_or_else(|| ScheduleError::NoStartTime(id.clone()))?;
        let start = StartTime::parse(&raw)?;
        let audit = audit.map(|entry| AuditEntry {
            detail: Some(format!("Trial {id} scheduled at {start}")),
            ..entry
        });
        self.schedule(id, start, audit).await?;
        Ok(start)
    }

    /// Schedules every future trial of the registry; a trial whose start time changed is
    /// rescheduled.
    pub async fn schedule_all(&self) -> Result<ScheduleAllReport, RegistryError> {
        let trials = self.inner.deps.services.list_trials().await?;
        let now = Utc::now();
        let mut report = ScheduleAllReport::default();
        let mut saves = Vec::new();
        let mut listed = std::collections::HashSet::new();
        for listing in trials {
            let trial = match listing {
                Ok(trial) => trial,
                Err(Unusable { entry, reason }) => {
                    report.skipped.push(Skipped {
                        id: self.inner.deps.secrets.redactor().text(&entry),
                        reason: reason.to_owned(),
                    });
                    continue;
                }
            };
            if self.is_a_secret(&trial.id) {
                report.skipped.push(Skipped {
                    id: REDACTED.to_owned(),
                    reason: A_SECRET_AS_ID.to_owned(),
                });
                continue;
            }
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
            if listed.contains(&id) {
                skip(
                    &mut report,
                    "listed more than once by the registry: its first usable listing is taken"
                        .to_owned(),
                );
                continue;
            }
            // The jobs lock is held from the engine check to the queued save, as in
            // `schedule`, so a job firing meanwhile cannot leave a job beside its engine.
            let mut jobs = self.jobs_map();
            if let Some(engine) = self.inner.engines.get(&id) {
                listed.insert(id);
                if engine.snapshot().lifecycle().is_ended() {
                    report.already_ended.push(trial.id);
                } else {
                    report.already_executing.push(trial.id);
                }
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
                // A job at another time is the operator's or an earlier poll's: it stands.
                let reason = match jobs.get(&id).filter(|job| !job.removing()) {
                    Some(job) if job.start.utc() != start.utc() => format!(
                        "{e}; its job at {} stays: unschedule it if it should not run",
                        job.start
                    ),
                    _ => e.to_string(),
                };
                skip(&mut report, reason);
                continue;
            }
            listed.insert(id.clone());
            // The start time the job had, if it is rescheduled. A rescheduled job keeps when
            // it was first scheduled (the store keeps it too).
            let (previous, created_at) = match jobs.get(&id) {
                Some(job) if job.removing() => {
                    skip(&mut report, "an operator is unscheduling it".to_owned());
                    continue;
                }
                Some(job) if job.start.utc() == start.utc() => {
                    report.already_scheduled.push(trial.id);
                    continue;
                }
                Some(job) => (Some(job.start), job.created_at),
                None if self.unscheduled().get(&id) == Some(&start.utc()) => {
                    skip(
                        &mut report,
                        "an operator unscheduled it at this start time: schedule it by hand to run it then, or give it another start time in the registry".to_owned(),
                    );
                    continue;
                }
                None => (None, crate::engine::state::now()),
            };
            let generation = self.next_generation();
            if let Some(mut old) = jobs.insert(id.clone(), Job::new(start, generation, created_at))
            {
                old.timer.stop(Timer::Unarmed);
            }
            let saved = self.store().write(Op::PutJob {
                id: id.clone(),
                start,
                created_at,
            });
            saves.push((id, start, generation, previous, saved));
        }
        for (id, start, generation, previous, saved) in saves {
            match saved.await {
                Ok(0) => {
                    self.drop_reservation(&id, generation);
                    report.already_ended.push(id.to_string());
                }
                Ok(_) => {
                    self.saved(&id, generation);
                    if previous.is_some() {
                        info!(trial = %id, start = %start, "start time changed: trial rescheduled");
                        report.rescheduled.push(id.to_string());
                    } else {
                        info!(trial = %id, start = %start, "trial scheduled from the registry");
                        report.scheduled.push(id.to_string());
                    }
                }
                Err(e) => {
                    match previous {
                        // The saved job stands: it keeps its time and its timer.
                        Some(previous) => self.put_back(&id, generation, previous),
                        None => self.drop_reservation(&id, generation),
                    }
                    report.skipped.push(Skipped {
                        id: id.to_string(),
                        reason: e.to_string(),
                    });
                }
            }
        }
        Ok(report)
    }

    /// Whether automatic scheduling is on.
    pub fn automatic(&self) -> bool {
        *self.inner.automatic.borrow()
    }

    /// Turns automatic scheduling on if it is off, off if it is on; returns what it did once
    /// it is saved, with the audit entry `audit` makes for it.
    pub async fn toggle_automatic(
        &self,
        audit: impl FnOnce(Switched) -> Option<AuditEntry> + Send + 'static,
    ) -> Result<Switched, StoreError> {
        self.turn_automatic(Turn::Toggle, audit).await
    }

    /// Sets automatic scheduling to `on`, whatever it is now (nothing changes if it is so
    /// already); returns what it did once it is saved, with the audit entry `audit` makes for
    /// it (written in either case).
    pub async fn set_automatic(
        &self,
        on: bool,
        audit: impl FnOnce(Switched) -> Option<AuditEntry> + Send + 'static,
    ) -> Result<Switched, StoreError> {
        self.turn_automatic(Turn::To(on), audit).await
    }

    async fn turn_automatic(
        &self,
        turn: Turn,
        audit: impl FnOnce(Switched) -> Option<AuditEntry> + Send + 'static,
    ) -> Result<Switched, StoreError> {
        let (reply, answer) = oneshot::channel();
        let request = SwitchTurn {
            turn,
            audit: Box::new(audit),
            reply,
        };
        if self.inner.turns.send(request).await.is_err() {
            return Err(StoreError::Closed);
        }
        answer.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Brings back what the store held at start-up: engines resume (or wait for the
    /// operator, if failed), future jobs are set again, a job whose start passed while the
    /// service was down starts now if within `scheduler.misfire_grace_secs`, otherwise it is
    /// reported as missed.
    pub async fn recover(&self, loaded: Loaded) -> Result<(), StoreError> {
        if let Some(on) = loaded.automatic {
            let configured = self.inner.deps.settings.scheduler.automatic;
            if on != configured {
                // Whoever changed the configuration expects it to hold: the log says why not.
                warn!(
                    saved = on,
                    configured,
                    "automatic scheduling is as switched through the API and saved, not as scheduler.automatic says: switch it with POST /trial/scheduling"
                );
            }
            self.inner.automatic.send_replace(on);
        }
        self.unscheduled().extend(loaded.unscheduled);
        // Taken before the key or secret was: it is shown to every viewer from here on.
        let secret_ids = (loaded.trials.iter().map(|t| t.record.id.as_str()))
            .chain(loaded.jobs.iter().map(|job| job.id.as_str()))
            .filter(|id| self.is_a_secret(id))
            .count();
        if secret_ids > 0 {
            error!(
                trials = secret_ids,
                "trials held by the store have an id that is one of the configured API keys or secrets: /status, /trials and the log show trial ids to every viewer; change that key or secret now"
            );
        }
        for trial in loaded.trials {
            let (id, lifecycle) = (trial.record.id.clone(), trial.record.lifecycle);
            if self.inner.engines.recover(&self.inner.deps, trial) {
                info!(trial = %id, ?lifecycle, "engine recovered from the store");
            }
        }
        let now = Utc::now();
        let grace = chrono::Duration::seconds(
            i64::try_from(self.inner.deps.settings.scheduler.misfire_grace_secs)
                .unwrap_or(i64::MAX),
        );
        for job in loaded.jobs {
            let (id, start, created_at) = (job.id, job.start, job.created_at);
            if let Some(noticed_at) = job.missed_at {
                // Found missed at an earlier start: it stays so until an operator acts.
                self.missed_list().push(MissedJob {
                    id,
                    start_time: start,
                    noticed_at,
                });
            } else if self.inner.engines.contains(&id) {
                warn!(trial = %id, start = %start, "a saved job of a trial that has an engine already is dropped: the engine runs the trial");
                self.store().write(Op::DeleteJob { id }).await?;
            } else if start.utc() > now {
                let generation = self.next_generation();
                self.jobs_map()
                    .insert(id.clone(), Job::new(start, generation, created_at));
                self.arm(&id, generation);
                info!(trial = %id, start = %start, "scheduled job recovered");
            } else if now - start.utc() <= grace {
                warn!(trial = %id, start = %start, "start time passed while the service was down: starting now");
                // The engine's first saved record replaces the job's.
                if let Err(e) = self.inner.engines.start(&id, &self.inner.deps, created_at) {
                    error!(trial = %id, error = %e, "the late job was not started");
                }
            } else {
                warn!(trial = %id, start = %start, "start time passed while the service was down, beyond the misfire grace: missed; it is listed Missed until it is scheduled again or unscheduled");
                self.store()
                    .write(Op::MarkMissed {
                        id: id.clone(),
                        at: now,
                    })
                    .await?;
                self.missed_list().push(MissedJob {
                    id,
                    start_time: start,
                    noticed_at: now,
                });
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
            // The skips told already: each is told once, not at every poll.
            let mut told = HashSet::new();
            loop {
                if switch.wait_for(|on| *on).await.is_err() {
                    return;
                }
                match scheduler.schedule_all().await {
                    Ok(report) => {
                        info!(
                            scheduled = report.scheduled.len(),
                            rescheduled = report.rescheduled.len(),
                            skipped = report.skipped.len(),
                            "automatic scheduling polled the registry"
                        );
                        told = tell_skips(report.skipped, &told);
                    }
                    Err(e) => warn!(error = %e, "automatic scheduling could not poll the registry"),
                }
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    changed = switch.changed() => if changed.is_err() { return },
                }
            }
        })
    }

    /// Ended engines leave memory `engine.keep_finished_secs` after their end.
    fn spawn_evictor(&self, mut ended: mpsc::UnboundedReceiver<Weak<EngineShared>>) {
        let scheduler = Arc::downgrade(&self.inner);
        let keep = Duration::from_secs(self.inner.deps.settings.engine.keep_finished_secs);
        tokio::spawn(async move {
            while let Some(engine) = ended.recv().await {
                let scheduler = scheduler.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(keep).await;
                    let (Some(inner), Some(shared)) = (scheduler.upgrade(), engine.upgrade())
                    else {
                        return;
                    };
                    let id = shared.id.clone();
                    drop(shared);
                    if inner.engines.remove(&id, &engine) {
                        info!(trial = %id, "ended engine left memory; its records stay in the store");
                    }
                });
            }
        });
    }

    /// Starts the task that purges ended trials older than `store.retention_days` (at once,
    /// then every hour); none when retention is 0 (keep forever).
    pub fn spawn_purger(&self) -> Option<JoinHandle<()>> {
        let days = self.inner.deps.settings.store.retention_days;
        if days == 0 {
            return None;
        }
        let scheduler = self.clone();
        Some(tokio::spawn(async move {
            loop {
                let cutoff = Utc::now()
                    - chrono::Duration::days(i64::try_from(days).unwrap_or(i64::MAX / 86_400));
                let store = scheduler.store();
                purge_in_steps(store, "ended trials", days, || Op::Purge {
                    ended_before: cutoff,
                    at_most: PURGE_TRIALS,
                    rows_at_most: PURGE_ROWS,
                })
                .await;
                purge_in_steps(store, "audit entries", days, || Op::PurgeAudit {
                    before: cutoff,
                    at_most: PURGE_AUDIT,
                })
                .await;
                scheduler.remove_forgotten_failure_files().await;
                tokio::time::sleep(PURGE_INTERVAL).await;
            }
        }))
    }

    /// Removes the failure files of trials neither in memory nor in the store (purged).
    async fn remove_forgotten_failure_files(&self) {
        let settings = &self.inner.deps.settings;
        for id in failure::trials_with_files(settings).await {
            if self.inner.engines.get(&id).is_some() {
                continue;
            }
            let query = id.clone();
            match self.store().read(move |reader| reader.trial(&query)).await {
                Ok(None) => failure::remove_file(settings, &id).await,
                Ok(Some(_)) => {}
                Err(e) => {
                    warn!(error = %e, "cannot tell which failure files are of purged trials; tried again at the next purge");
                    return;
                }
            }
        }
    }

    /// Stops every job and engine (service shutdown): no job fires and no step starts once
    /// this begins. Nothing is reported as failed; each trial resumes from its checkpoint at
    /// the next start.
    pub async fn shutdown(&self) {
        // Closed first: a job saved meanwhile is not armed after its timer was stopped here.
        let engines = self.inner.engines.close();
        for job in self.jobs_map().values_mut() {
            job.timer.disarm();
        }
        // A deployment or status write in flight has its answer within the shutdown's grace.
        let grace = Duration::from_secs(self.inner.deps.settings.server.shutdown_grace_secs);
        futures_util::future::join_all(engines.iter().map(|engine| engine.shut_down(grace))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scheduler on an in-memory store, with the built-in settings.
    fn scheduler() -> Scheduler {
        let (deps, ended_rx) = EngineDeps::for_tests();
        let access = Access::new(&deps.settings.auth).expect("the built-in keys");
        Scheduler::new(deps, ended_rx, Arc::new(access))
    }

    #[tokio::test]
    async fn a_timer_that_woke_up_while_its_job_was_being_removed_starts_nothing() {
        let scheduler = scheduler();
        let id = TrialId::parse("raced").unwrap();
        let start = StartTime::parse(&(Utc::now() + chrono::Duration::hours(1)).to_rfc3339());
        scheduler.schedule(&id, start.unwrap(), None).await.unwrap();
        // What an unschedule does first, under the lock: it marks the job as being removed,
        // takes the timer and stops it. A timer already past its sleep cannot be stopped, and
        // fires once it gets the lock.
        let generation = {
            let mut jobs = scheduler.jobs_map();
            let job = jobs.get_mut(&id).unwrap();
            assert!(
                matches!(job.timer, Timer::Armed(_)),
                "the saved job is armed"
            );
            job.timer.stop(Timer::Removing);
            job.generation
        };
        scheduler.fire(&id, generation);
        assert!(!scheduler.engines().contains(&id), "the trial started");
        assert_eq!(scheduler.jobs().len(), 1, "the removal decides");
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_goes_by_the_wall_clock_not_by_the_time_it_slept() {
        let scheduler = scheduler();
        let id = TrialId::parse("stepped").unwrap();
        let start = StartTime::parse(&(Utc::now() + chrono::Duration::hours(1)).to_rfc3339());
        scheduler.schedule(&id, start.unwrap(), None).await.unwrap();
        let settle = || async {
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
        };
        // The timer is asleep; then two hours pass on the monotonic clock and none on the
        // wall clock: what a wall clock stepped back by two hours looks like to it.
        settle().await;
        tokio::time::advance(Duration::from_secs(2 * 3600)).await;
        settle().await;
        assert!(!scheduler.engines().contains(&id), "started early");
        assert_eq!(scheduler.jobs().len(), 1, "the job waits for its time");
    }

    #[tokio::test]
    async fn an_unschedule_that_ends_before_its_schedule_s_save_is_answered_keeps_its_mark() {
        let scheduler = scheduler();
        let id = TrialId::parse("raced").unwrap();
        let start = StartTime::parse(&(Utc::now() + chrono::Duration::hours(1)).to_rfc3339());
        scheduler.schedule(&id, start.unwrap(), None).await.unwrap();
        let generation = scheduler.jobs_map()[&id].generation;
        // The unschedule queued behind the schedule's save ends first...
        assert!(scheduler.unschedule(&id, None).await.unwrap());
        // ...then the schedule's save is answered.
        scheduler.saved(&id, generation);
        assert!(
            scheduler.unscheduled().contains_key(&id),
            "the registry's poller would schedule it again"
        );
        assert!(scheduler.jobs().is_empty());
    }

    #[tokio::test]
    async fn a_job_whose_save_ends_after_the_service_began_to_stop_is_not_armed() {
        let scheduler = scheduler();
        let id = TrialId::parse("late-save").unwrap();
        let start = StartTime::parse(&(Utc::now() + chrono::Duration::hours(1)).to_rfc3339());
        scheduler.schedule(&id, start.unwrap(), None).await.unwrap();
        scheduler.shutdown().await;
        let generation = {
            let jobs = scheduler.jobs_map();
            let job = jobs.get(&id).unwrap();
            assert!(matches!(job.timer, Timer::Unarmed), "stopped by the stop");
            job.generation
        };
        // What a schedule whose save ends now does: it arms its job.
        scheduler.arm(&id, generation);
        assert!(
            matches!(scheduler.jobs_map()[&id].timer, Timer::Unarmed),
            "no timer starts once the service stops"
        );
    }
}
