//! The trial registry as the scheduler sees it: a trial's start time, and the list of trials.

use reqwest::Method;
use serde_json::Value;

use super::{Outbound, Reply, SendError, Service, ServiceClient};
use crate::domain::TrialId;

/// Why the registry's answer could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    #[error("trial repository: {0}")]
    Unreachable(#[from] SendError),
    #[error("trial repository has no trial '{0}'")]
    NotFound(String),
    #[error("trial repository answered HTTP {0}")]
    Status(u16),
    #[error(
        "trial repository answered something that is not {expected}{}",
        unread.as_deref().map(|why| format!(" ({why})")).unwrap_or_default()
    )]
    Garbage {
        expected: &'static str,
        /// Why the answer could not be read, if it could not.
        unread: Option<String>,
    },
    #[error("trial repository answered trial '{answered}' when asked for trial '{asked}'")]
    OtherTrial { asked: String, answered: String },
}

/// A trial as listed by the registry: its id and, if it has one, its start time as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryTrial {
    pub id: String,
    pub start_time: Option<String>,
}

/// An entry of the registry's list that cannot be scheduled as it is written: which (its id,
/// or its place in the list when it has none), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unusable {
    pub entry: String,
    pub reason: &'static str,
}

/// The `id` of a trial object as the registry writes it: a string, or a number.
fn trial_id_of(trial: &Value) -> Option<String> {
    match trial.get("id")? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl RegistryTrial {
    fn from_value(value: &Value) -> Option<Self> {
        let id = trial_id_of(value)?;
        let start_time = value
            .get("start_time")
            .and_then(Value::as_str)
            .map(str::to_owned);
        Some(Self { id, start_time })
    }

    /// Entry `n` (from 1) of the registry's list.
    fn listed(n: usize, value: &Value) -> Result<Self, Unusable> {
        let unusable = |entry: String, reason| Unusable { entry, reason };
        if !value.is_object() {
            return Err(unusable(
                format!("entry {n}"),
                "the registry listed something that is not a trial object",
            ));
        }
        let Some(trial) = Self::from_value(value) else {
            return Err(unusable(
                format!("entry {n}"),
                "a trial object without an id (text or a number)",
            ));
        };
        match value.get("start_time") {
            Some(Value::String(_) | Value::Null) | None => Ok(trial),
            Some(_) => Err(unusable(trial.id, "start_time is not text")),
        }
    }
}

/// An answer that is not `expected`, with why it could not be read, if it could not.
fn garbage(expected: &'static str, reply: &Reply) -> RegistryError {
    RegistryError::Garbage {
        expected,
        unread: reply.unread.clone(),
    }
}

/// The refusal of a trial object that names another trial than `asked` (one without an id
/// names none).
pub fn other_trial(asked: &TrialId, trial: &Value) -> Option<RegistryError> {
    trial_id_of(trial)
        .filter(|answered| answered != asked.as_str())
        .map(|answered| RegistryError::OtherTrial {
            asked: asked.to_string(),
            answered,
        })
}

impl ServiceClient {
    /// `GET /trial/{id}/`: the trial object.
    pub async fn fetch_trial(&self, id: &TrialId) -> Result<RegistryTrial, RegistryError> {
        let reply = self
            .send(
                &Outbound::new(
                    Service::TrialRepository,
                    Method::GET,
                    format!("trial/{id}/"),
                ),
                |_| {},
            )
            .await?;
        match reply.status {
            200 => {}
            404 => return Err(RegistryError::NotFound(id.to_string())),
            other => return Err(RegistryError::Status(other)),
        }
        let json = reply.json.as_ref().filter(|v| v.is_object());
        let trial = json
            .and_then(RegistryTrial::from_value)
            .ok_or_else(|| garbage("a trial object with an id", &reply))?;
        match json.and_then(|json| other_trial(id, json)) {
            Some(other) => Err(other),
            None => Ok(trial),
        }
    }

    /// `GET /trial/`: every trial. Accepts a JSON array or a paginated `{"results": [...]}`.
    /// An entry that cannot be scheduled as it is written is listed too, saying why.
    pub async fn list_trials(&self) -> Result<Vec<Result<RegistryTrial, Unusable>>, RegistryError> {
        let reply = self
            .send(
                &Outbound::new(Service::TrialRepository, Method::GET, "trial/"),
                |_| {},
            )
            .await?;
        if reply.status != 200 {
            return Err(RegistryError::Status(reply.status));
        }
        let list = match &reply.json {
            Some(Value::Array(items)) => items,
            Some(Value::Object(map)) => match map.get("results") {
                Some(Value::Array(items)) => items,
                _ => return Err(garbage("a list of trials", &reply)),
            },
            _ => return Err(garbage("a list of trials", &reply)),
        };
        Ok(list
            .iter()
            .enumerate()
            .map(|(i, value)| RegistryTrial::listed(i + 1, value))
            .collect())
    }
}
