//! The registry of engines in memory: at most one per trial id. Live and failed engines stay;
//! an ended one leaves after `engine.keep_finished_secs` (its records stay in the store).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use chrono::{DateTime, Utc};

use crate::domain::TrialId;
use crate::engine::state::EngineStatus;
use crate::engine::watchdog::LastRecord;
use crate::engine::{EngineDeps, EngineHandle, EngineShared};
use crate::store::RecoveredTrial;

/// Every engine of this process in memory, by trial id.
#[derive(Default)]
pub struct EngineRegistry {
    engines: Mutex<HashMap<TrialId, EngineHandle>>,
    /// The service is stopping: no engine starts any more.
    closed: AtomicBool,
}

/// Why an engine was not started.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StartError {
    #[error("an engine for trial '{0}' exists already")]
    Exists(TrialId),
    #[error("the service is stopping; trial '{0}' starts at the next start-up")]
    ShuttingDown(TrialId),
}

impl EngineRegistry {
    fn map(&self) -> MutexGuard<'_, HashMap<TrialId, EngineHandle>> {
        self.engines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates and starts the engine of `id`, scheduled at `created_at`; refused if it has
    /// one, or once the service is stopping.
    pub fn start(
        &self,
        id: &TrialId,
        deps: &Arc<EngineDeps>,
        created_at: DateTime<Utc>,
    ) -> Result<EngineHandle, StartError> {
        let mut engines = self.map();
        if self.closed.load(Ordering::SeqCst) {
            return Err(StartError::ShuttingDown(id.clone()));
        }
        if engines.contains_key(id) {
            return Err(StartError::Exists(id.clone()));
        }
        let handle = EngineHandle::start(id.clone(), deps.clone(), created_at);
        engines.insert(id.clone(), handle.clone());
        Ok(handle)
    }

    /// Registers an engine brought back from the store; `false` if the id has one already.
    pub fn recover(&self, deps: &Arc<EngineDeps>, trial: RecoveredTrial) -> bool {
        let mut engines = self.map();
        if engines.contains_key(&trial.record.id) {
            return false;
        }
        let id = trial.record.id.clone();
        engines.insert(id, EngineHandle::recover(deps.clone(), trial));
        true
    }

    /// Brings `engine`, stopped, back from `last` in place of itself, if it is still the one
    /// of its trial in memory and the service is not stopping (then its record is what the next
    /// start-up recovers); `false` if not.
    pub fn bring_back(&self, engine: &EngineHandle, last: LastRecord) -> bool {
        let mut engines = self.map();
        if self.closed.load(Ordering::SeqCst) {
            return false;
        }
        match engines.get_mut(engine.id()) {
            Some(handle) if handle.same(&engine.weak()) => {
                *handle = engine.bring_back(last);
                true
            }
            _ => false,
        }
    }

    /// The ids of the engines in memory, in no order.
    pub fn ids(&self) -> Vec<TrialId> {
        self.map().keys().cloned().collect()
    }

    /// Whether `id` has an engine in memory.
    pub fn contains(&self, id: &TrialId) -> bool {
        self.map().contains_key(id)
    }

    /// The engine of `id`, if it is in memory.
    pub fn get(&self, id: &TrialId) -> Option<EngineHandle> {
        self.map().get(id).cloned()
    }

    /// Removes the engine of `id` from memory if it is `engine`, not one made later for the
    /// same trial; `true` if it did.
    pub fn remove(&self, id: &TrialId, engine: &Weak<EngineShared>) -> bool {
        let mut engines = self.map();
        if engines.get(id).is_some_and(|handle| handle.same(engine)) {
            engines.remove(id);
            return true;
        }
        false
    }

    /// Every engine's id and status, sorted by id.
    pub fn list(&self) -> Vec<(TrialId, EngineStatus)> {
        let mut list: Vec<_> = self
            .map()
            .iter()
            .map(|(id, handle)| (id.clone(), handle.snapshot().engine_status()))
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }

    /// The trials whose engine's first record is not saved yet (the store could not write
    /// when their job fired): each is still stored as its job.
    pub fn not_yet_saved(&self) -> Vec<TrialId> {
        self.map()
            .iter()
            .filter(|(_, handle)| !handle.first_record_saved())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Every engine in memory.
    pub fn handles(&self) -> Vec<EngineHandle> {
        self.map().values().cloned().collect()
    }

    /// Whether the registry is closed: the service is stopping.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Closes the registry (no engine starts any more) and returns every engine, to stop.
    pub fn close(&self) -> Vec<EngineHandle> {
        let engines = self.map();
        self.closed.store(true, Ordering::SeqCst);
        engines.values().cloned().collect()
    }
}
