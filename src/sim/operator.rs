//! A simulated operator: drives a running LCM over its REST API with the API key, the way the
//! platform and the LCM team do (schedule, watch a trial's status, send `active` / `finish`).
//! The demo and the benchmark use it; it speaks only HTTP, never to the LCM's insides.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A call the LCM did not answer as hoped.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// No HTTP answer.
    #[error("{call}: {reason}")]
    Transport { call: String, reason: String },
    /// An HTTP answer other than success.
    #[error("{call}: {status} {detail}")]
    Refused {
        call: String,
        status: u16,
        detail: String,
    },
}

impl OperatorError {
    /// The status code of a refusal (`None` when no answer came).
    pub fn status(&self) -> Option<u16> {
        match self {
            OperatorError::Refused { status, .. } => Some(*status),
            OperatorError::Transport { .. } => None,
        }
    }
}

/// The operator's signals to a trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorSignal {
    Active,
    Finish,
}

impl OperatorSignal {
    /// The path segment: `/trial/{id}/<segment>`.
    pub fn segment(self) -> &'static str {
        match self {
            OperatorSignal::Active => "active",
            OperatorSignal::Finish => "finish",
        }
    }
}

/// An HTTP client for one LCM, holding its API key.
#[derive(Clone)]
pub struct Operator {
    http: reqwest::Client,
    base: String,
    api_key: String,
}

impl Operator {
    /// A client for the LCM at `base` (e.g. `http://127.0.0.1:5000`).
    pub fn new(base: impl Into<String>, api_key: impl Into<String>) -> reqwest::Result<Self> {
        crate::services::install_crypto_provider();
        let http = super::lcm_client()
            .timeout(Duration::from_secs(30))
            // Loopback only: an HTTP(S)_PROXY in the environment must not catch these calls.
            .no_proxy()
            .build()?;
        Ok(Self {
            http,
            base: base.into(),
            api_key: api_key.into(),
        })
    }

    /// The LCM's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends one call with the API key and returns the status and JSON body (or `null`).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value), OperatorError> {
        let name = format!("{method} {path}");
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("Authorization", &self.api_key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let transport = |e: reqwest::Error| OperatorError::Transport {
            call: name.clone(),
            reason: e.without_url().to_string(),
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(transport)?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// Like [`Operator::call`], but any status other than 2xx is an error carrying `detail`.
    async fn call_ok(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, OperatorError> {
        let name = format!("{method} {path}");
        let (status, body) = self.call(method, path, body).await?;
        if status.is_success() {
            return Ok(body);
        }
        Err(OperatorError::Refused {
            call: name,
            status: status.as_u16(),
            detail: body["detail"]
                .as_str()
                .map_or_else(|| body.to_string(), str::to_owned),
        })
    }

    /// `POST /debug/trial/schedule` with an RFC 3339 start time (UTC, milliseconds).
    pub async fn schedule(&self, id: &str, start: DateTime<Utc>) -> Result<Value, OperatorError> {
        let body = json!({
            "trial_id": id,
            "start_time": start.to_rfc3339_opts(SecondsFormat::Millis, true),
        });
        self.call_ok(Method::POST, "/debug/trial/schedule", Some(body))
            .await
    }

    /// `GET /trial/{id}/status`; `None` while the trial has no engine (404).
    pub async fn status(&self, id: &str) -> Result<Option<Value>, OperatorError> {
        match self
            .call_ok(Method::GET, &format!("/trial/{id}/status"), None)
            .await
        {
            Ok(status) => Ok(Some(status)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST /trial/{id}/active` or `/finish`; a 409 (not at the waiting point yet) is an error
    /// the caller may retry.
    pub async fn signal(&self, id: &str, signal: OperatorSignal) -> Result<Value, OperatorError> {
        self.call_ok(
            Method::POST,
            &format!("/trial/{id}/{}", signal.segment()),
            None,
        )
        .await
    }

    /// `GET /status`: every engine as `(id, status)`.
    pub async fn engines(&self) -> Result<Vec<(String, String)>, OperatorError> {
        let status = self.call_ok(Method::GET, "/status", None).await?;
        Ok(status["Executor_Engine_instances"]
            .as_array()
            .map(|engines| {
                engines
                    .iter()
                    .map(|e| {
                        (
                            e["ID"].as_str().unwrap_or_default().to_owned(),
                            e["status"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// `GET /trial/{id}/responses`: the responses the trial's engine recorded.
    pub async fn responses(&self, id: &str) -> Result<Value, OperatorError> {
        self.call_ok(Method::GET, &format!("/trial/{id}/responses"), None)
            .await
    }
}
