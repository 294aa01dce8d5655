//! The registry of engines: at most one per trial id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::domain::TrialId;
use crate::engine::state::EngineStatus;
use crate::engine::{EngineDeps, EngineHandle};
use crate::store::EngineRecord;

/// Every engine of this process, by trial id.
#[derive(Default)]
pub struct EngineRegistry {
    engines: Mutex<HashMap<TrialId, EngineHandle>>,
}

/// An engine for that trial exists already.
#[derive(Debug, Clone, thiserror::Error)]
#[error("an engine for trial '{0}' exists already")]
pub struct EngineExists(pub TrialId);

impl EngineRegistry {
    fn map(&self) -> MutexGuard<'_, HashMap<TrialId, EngineHandle>> {
        self.engines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates and starts the engine of `id`; refused if it has one.
    pub fn start(
        &self,
        id: &TrialId,
        deps: &Arc<EngineDeps>,
    ) -> Result<EngineHandle, EngineExists> {
        let mut engines = self.map();
        if engines.contains_key(id) {
            return Err(EngineExists(id.clone()));
        }
        let handle = EngineHandle::start(id.clone(), deps.clone());
        engines.insert(id.clone(), handle.clone());
        Ok(handle)
    }

    /// Registers an engine brought back from the store; `false` if the id has one already.
    pub fn recover(&self, deps: &Arc<EngineDeps>, record: EngineRecord) -> bool {
        let mut engines = self.map();
        if engines.contains_key(&record.id) {
            return false;
        }
        let id = record.id.clone();
        engines.insert(id, EngineHandle::recover(deps.clone(), record));
        true
    }

    /// Whether `id` has an engine.
    pub fn contains(&self, id: &TrialId) -> bool {
        self.map().contains_key(id)
    }

    /// The engine of `id`.
    pub fn get(&self, id: &TrialId) -> Option<EngineHandle> {
        self.map().get(id).cloned()
    }

    /// Removes the engine of `id` from the registry (the caller has stopped it).
    pub fn remove(&self, id: &TrialId) -> Option<EngineHandle> {
        self.map().remove(id)
    }

    /// Every engine's id and status, sorted by id.
    pub fn list(&self) -> Vec<(TrialId, EngineStatus)> {
        let mut list: Vec<_> = self
            .map()
            .iter()
            .map(|(id, handle)| (id.clone(), handle.snapshot().engine))
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }

    /// Stops every engine (service shutdown).
    pub fn stop_all(&self) {
        for handle in self.map().values() {
            handle.stop();
        }
    }
}
