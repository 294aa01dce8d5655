//! Outbound HTTP to the platform's services (SPEC §7, §13). Every request goes through
//! [`ServiceClient::send`], which applies the service's auth, the TLS settings, the request
//! timeout and the service's retry policy ([`retry`]), tells its caller about every attempt
//! (so each is recorded for the trial), and returns the last [`Reply`].

pub mod auth;
pub mod registry;
pub mod retry;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::warn;
use url::Url;

use crate::config::{RetrySettings, Secret, Settings};
use crate::engine::redact::Redactor;
use auth::ServiceAuth;
use retry::RetryReason;

/// The services the LCM calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Service {
    TrialRepository,
    TrialEnforcement,
    KpiMonitoring,
}

impl Service {
    /// Every service, in configuration order.
    pub const ALL: [Service; 3] = [
        Service::TrialRepository,
        Service::TrialEnforcement,
        Service::KpiMonitoring,
    ];

    /// The configuration name of the service.
    pub fn name(self) -> &'static str {
        match self {
            Service::TrialRepository => "trial_repository",
            Service::TrialEnforcement => "trial_enforcement",
            Service::KpiMonitoring => "kpi_monitoring",
        }
    }
}

/// One request to a service. `path` is relative to the service's base URL.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub service: Service,
    pub method: Method,
    pub path: String,
    pub query: Vec<(&'static str, String)>,
    pub body: Option<Value>,
    /// Repeating the request after it reached the service may create something twice: it is
    /// retried only when it cannot have reached it.
    pub creates: bool,
    /// Sent as the `Idempotency-Key` header, so a service that honours it can deduplicate.
    pub idempotency_key: Option<String>,
}

impl Outbound {
    /// A request without query or body.
    pub fn new(service: Service, method: Method, path: impl Into<String>) -> Self {
        Self {
            service,
            method,
            path: path.into(),
            query: Vec::new(),
            body: None,
            creates: false,
            idempotency_key: None,
        }
    }

    /// Marks a request that creates something (SPEC §13's create-type requests).
    pub fn creating(mut self) -> Self {
        self.creates = true;
        self
    }

    /// Sets the `Idempotency-Key` header.
    pub fn idempotency_key(mut self, key: String) -> Self {
        self.idempotency_key = Some(key);
        self
    }

    /// Adds a query parameter.
    pub fn query(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.query.push((key, value.into()));
        self
    }

    /// Sets the JSON body.
    pub fn json(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }
}

/// What a service answered.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// The body, when it is JSON.
    pub json: Option<Value>,
    /// A body that is not JSON, whole: shown only as a redacted excerpt.
    pub text: Option<String>,
    /// The size of the body in bytes.
    pub bytes: usize,
    /// Why the body was not read (larger than the client reads), if it was not.
    pub unread: Option<String>,
    pub duration: Duration,
    /// How long the service asked to wait before trying again (`Retry-After`).
    pub retry_after: Option<Duration>,
}

/// One attempt of a request, as [`ServiceClient::send`] reports it.
pub struct Attempt<'a> {
    /// From 1.
    pub number: u32,
    pub outcome: &'a Result<Reply, SendError>,
    /// How long the attempt took, answered or not.
    pub took: Duration,
    /// The attempt is tried again after this wait, for this reason.
    pub retry: Option<(Duration, RetryReason)>,
    /// How many attempts the policy allows.
    pub max_attempts: u32,
}

/// A request that got no HTTP answer. `url` is the request's URL without its query (the base
/// URL of the configuration and the request path, so no secret is in it).
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    #[error("{service} at {url} did not answer within {secs} s")]
    Timeout {
        service: &'static str,
        url: String,
        secs: u64,
    },
    /// No connection: `reason` says why (connection refused, DNS lookup failed, TLS
    /// handshake failed, timed out).
    #[error("{service} unreachable at {url}: {reason}")]
    Connect {
        service: &'static str,
        url: String,
        reason: String,
    },
    #[error("{service} at {url}: transport error: {reason}")]
    Transport {
        service: &'static str,
        url: String,
        reason: String,
    },
    #[error("{service}: {reason}")]
    Auth {
        service: &'static str,
        reason: String,
        /// The token endpoint may answer next time (it failed, or answered 5xx).
        retryable: bool,
    },
}

impl SendError {
    /// Every [`Self::label`], for the metrics to show from the first scrape.
    pub const LABELS: [&'static str; 4] = ["timeout", "connect", "transport", "auth"];

    /// What went wrong, as a metrics label (the retries' reasons say the same words).
    pub fn label(&self) -> &'static str {
        Self::LABELS[match self {
            SendError::Timeout { .. } => 0,
            SendError::Connect { .. } => 1,
            SendError::Transport { .. } => 2,
            SendError::Auth { .. } => 3,
        }]
    }

    /// Whether the request may have reached the service: not when no connection was made, nor
    /// when its credentials could not be had (it never left). A timeout counts as reached.
    pub fn may_have_reached(&self) -> bool {
        match self {
            SendError::Connect { .. } | SendError::Auth { .. } => false,
            SendError::Timeout { .. } | SendError::Transport { .. } => true,
        }
    }
}

/// Why the client could not be built from the settings.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("configuration key `tls.ca_bundle_path`: {0}")]
    CaBundle(String),
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
    #[error("configuration key `services.{0}.url`: {1}")]
    Url(&'static str, String),
}

struct Endpoint {
    base: Url,
    auth: ServiceAuth,
}

/// The shared outbound client (one connection pool for every trial).
#[derive(Clone)]
pub struct ServiceClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    http: reqwest::Client,
    timeout_secs: u64,
    endpoints: [Endpoint; 3],
    /// Each service's retry policy, in the order of [`Service::ALL`].
    policies: [RetrySettings; 3],
}

/// The largest answer body read (16 MiB): a registry listing thousands of trials, or a trial
/// with a long flight plan, fits; a runaway body does not.
const MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;

/// Installs the process-wide rustls crypto provider (ring) once; later calls do nothing.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl ServiceClient {
    /// Builds the client from the settings: TLS roots, timeout and each service's auth.
    pub fn new(settings: &Settings) -> Result<Self, ClientError> {
        install_crypto_provider();
        let timeout_secs = settings.executor.request_timeout_secs;
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(timeout_secs))
            .connect_timeout(Duration::from_secs(timeout_secs.min(CONNECT_TIMEOUT_SECS)))
            .pool_idle_timeout(Duration::from_secs(30))
            // A redirect is answered as it came (a status the step does not expect): followed,
            // it would send the trial's token in a body, or a credential, to another host.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &settings.tls.ca_bundle_path {
            let pem = std::fs::read(path)
                .map_err(|e| ClientError::CaBundle(format!("{}: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                // reqwest's own words ("builder error") say nothing: its sources do.
                let why: Vec<String> =
                    std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
                        .map(ToString::to_string)
                        .collect();
                let why = why.join(": ");
                ClientError::CaBundle(format!(
                    "{} is not a bundle of PEM certificates ({why})",
                    path.display()
                ))
            })?;
            if certs.is_empty() {
                return Err(ClientError::CaBundle(format!(
                    "{} holds no PEM certificate",
                    path.display()
                )));
            }
            builder = builder.tls_certs_merge(certs);
        }
        if settings.tls.disable_cert_verification {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Build(e.to_string()))?;
        let services = &settings.services;
        let endpoint = |service: Service, s: &crate::config::ServiceSettings| {
            let mut base =
                Url::parse(&s.url).map_err(|e| ClientError::Url(service.name(), e.to_string()))?;
            // Relative paths join below the base's path, not beside it.
            if !base.path().ends_with('/') {
                base.set_path(&format!("{}/", base.path()));
            }
            Ok::<_, ClientError>(Endpoint {
                base,
                auth: ServiceAuth::from_settings(s),
            })
        };
        Ok(Self {
            inner: Arc::new(ClientInner {
                http,
                timeout_secs,
                endpoints: [
                    endpoint(Service::TrialRepository, &services.trial_repository)?,
                    endpoint(Service::TrialEnforcement, &services.trial_enforcement)?,
                    endpoint(Service::KpiMonitoring, &services.kpi_monitoring)?,
                ],
                policies: Service::ALL.map(|service| settings.retry_policy(service)),
            }),
        })
    }

    fn endpoint(&self, service: Service) -> &Endpoint {
        &self.inner.endpoints[service as usize]
    }

    /// Fetches `service`'s OAuth2 access token now, if it takes one and none is kept, so that
    /// the first attempt of a request sent next does not wait for it. A fetch that fails is
    /// left for that attempt to make again and report.
    pub async fn authorize(&self, service: Service) {
        if let ServiceAuth::OAuth2(oauth2) = &self.endpoint(service).auth {
            let _ = oauth2.token(&self.inner.http).await;
        }
    }

    /// Sends a request under its service's retry policy (an OAuth2 401 also refreshes the
    /// token once per attempt), telling `observe` about every attempt, and returns the last
    /// outcome. Dropping the future (an abort, a deleted engine) cancels the attempt in flight
    /// or the wait for the next.
    pub async fn send(
        &self,
        request: &Outbound,
        observe: impl FnMut(Attempt<'_>),
    ) -> Result<Reply, SendError> {
        self.send_until(request, observe, std::future::pending(), tokio::time::sleep)
            .await
    }

    /// Like [`Self::send`], with no attempt after the one in flight once `last_attempt`
    /// completes (an abort waits for this request's answer, or the service stops): a wait for
    /// the next attempt then ends at once, with the answer the request had. The wait before
    /// each attempt after the first is what `wait` returns for the backoff chosen: the backoff,
    /// and whatever else holds the next attempt (the operator's pause).
    pub async fn send_until<W: Future<Output = ()>>(
        &self,
        request: &Outbound,
        mut observe: impl FnMut(Attempt<'_>),
        last_attempt: impl Future<Output = ()>,
        wait: impl Fn(Duration) -> W,
    ) -> Result<Reply, SendError> {
        let policy = self.inner.policies[request.service as usize];
        let mut last_attempt = std::pin::pin!(last_attempt);
        let mut number = 1;
        loop {
            let started = Instant::now();
            let outcome = self.attempt(request).await;
            let took = started.elapsed();
            let last = last_attempt.as_mut().now_or_never().is_some();
            let retry = (number < policy.max_attempts && !last)
                .then(|| retry::retry_reason(request.creates, &outcome))
                .flatten()
                .map(|reason| {
                    let asked = outcome.as_ref().ok().and_then(|r| r.retry_after);
                    let wait = retry::backoff(&policy, number, asked, fastrand::f64());
                    (wait, reason)
                });
            observe(Attempt {
                number,
                outcome: &outcome,
                took,
                retry,
                max_attempts: policy.max_attempts,
            });
            let Some((backoff, reason)) = retry else {
                return outcome;
            };
            metrics::counter!(
                "lcm_outbound_retries_total",
                "service" => request.service.name(),
                "reason" => reason.label()
            )
            .increment(1);
            tokio::select! {
                biased;
                () = last_attempt.as_mut() => return outcome,
                () = wait(backoff) => {}
            }
            number += 1;
        }
    }

    /// One attempt: auth applied, an OAuth2 401 answered by refreshing the token once.
    pub async fn attempt(&self, request: &Outbound) -> Result<Reply, SendError> {
        let started = Instant::now();
        let result = self.attempt_once(request, started).await;
        match &result {
            Ok(reply) => metrics::histogram!(
                "lcm_outbound_request_duration_seconds",
                "service" => request.service.name(),
                "status" => reply.status.to_string()
            )
            .record(reply.duration.as_secs_f64()),
            Err(e) => {
                let path = match request.path.as_str() {
                    "" => "/",
                    path => path,
                };
                warn!(
                    service = request.service.name(),
                    error = %e,
                    "{} {path}: no usable answer",
                    request.method
                );
                metrics::counter!(
                    "lcm_outbound_request_errors_total",
                    "service" => request.service.name(),
                    "error" => e.label()
                )
                .increment(1);
            }
        }
        result
    }

    async fn attempt_once(&self, request: &Outbound, started: Instant) -> Result<Reply, SendError> {
        let mut refreshed = false;
        loop {
            let (response, bearer) = self.send_once(request).await?;
            if response.status() == reqwest::StatusCode::UNAUTHORIZED
                && !refreshed
                && let ServiceAuth::OAuth2(oauth2) = &self.endpoint(request.service).auth
            {
                warn!(
                    service = request.service.name(),
                    "{} {}: answered 401 to the OAuth2 access token: a fresh token is fetched and the request sent again, in the same attempt",
                    request.method,
                    request.path
                );
                oauth2.invalidate();
                refreshed = true;
                continue;
            }
            return self
                .read_reply(request.service, response, started, bearer.as_ref())
                .await;
        }
    }

    /// Sends the request once; answers the response and the OAuth2 access token it carried.
    async fn send_once(
        &self,
        request: &Outbound,
    ) -> Result<(reqwest::Response, Option<Secret>), SendError> {
        let service = request.service.name();
        let endpoint = self.endpoint(request.service);
        let path = request.path.trim_start_matches('/');
        let url = endpoint.base.join(path).map_err(|e| SendError::Transport {
            service,
            url: shown_url(&endpoint.base),
            reason: format!("bad path {path}: {e}"),
        })?;
        // Cleaned for an error message only when there is one: most requests get an answer.
        let requested = url.clone();
        let mut builder = self.inner.http.request(request.method.clone(), url);
        if !request.query.is_empty() {
            builder = builder.query(&request.query);
        }
        if let Some(body) = &request.body {
            builder = builder.json(body);
        }
        if let Some(key) = &request.idempotency_key {
            builder = builder.header("Idempotency-Key", key);
        }
        let mut bearer = None;
        builder = match &endpoint.auth {
            ServiceAuth::None => builder,
            ServiceAuth::ApiKey(key) => builder.header("Authorization", key.expose()),
            ServiceAuth::Basic { username, password } => {
                builder.basic_auth(username, Some(password.expose()))
            }
            ServiceAuth::OAuth2(oauth2) => {
                let token = oauth2
                    .token(&self.inner.http)
                    .await
                    .map_err(|e| SendError::Auth {
                        service,
                        retryable: e.retryable(),
                        reason: e.to_string(),
                    })?;
                let builder = builder.bearer_auth(token.expose());
                bearer = Some(token);
                builder
            }
        };
        let response = builder
            .send()
            .await
            .map_err(|e| self.classify(service, shown_url(&requested), &e))?;
        Ok((response, bearer))
    }

    /// Reads the answer; an access token it echoes (`bearer`, fetched at run time, so not
    /// among the configuration's secrets the recorder hides) is hidden here. A body cut off
    /// (the connection broke, or the request's time ran out while it came) is no answer: it
    /// fails like a broken connection or a timeout, and is retried as they are.
    async fn read_reply(
        &self,
        service: Service,
        mut response: reqwest::Response,
        started: Instant,
        bearer: Option<&Secret>,
    ) -> Result<Reply, SendError> {
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry::parse_retry_after(v, std::time::SystemTime::now()));
        let unreadable = |reason: String, bytes: usize| {
            let reason = format!("{} body {reason}", service.name());
            Reply {
                status,
                json: None,
                text: None,
                bytes,
                unread: Some(reason),
                duration: started.elapsed(),
                retry_after,
            }
        };
        let mut bytes = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) if bytes.len() + chunk.len() > MAX_REPLY_BYTES => {
                    return Ok(unreadable(
                        format!("is larger than {MAX_REPLY_BYTES} bytes: not read"),
                        bytes.len() + chunk.len(),
                    ));
                }
                Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
                Ok(None) => break,
                // What the answer said so far is kept: for a request that made something (its
                // status 201), that is how an operator learns it did.
                Err(e) => {
                    let why = if e.is_timeout() {
                        format!(
                            "its body did not come whole within {} s",
                            self.inner.timeout_secs
                        )
                    } else {
                        format!("its body was cut off ({})", Cause::of(&e))
                    };
                    return Err(SendError::Transport {
                        service: service.name(),
                        url: shown_url(response.url()),
                        reason: format!(
                            "answered {status}, then {why} after {} bytes",
                            bytes.len()
                        ),
                    });
                }
            }
        }
        let mut json = serde_json::from_slice::<Value>(&bytes).ok();
        let mut text: Option<String> = match (&json, bytes.is_empty()) {
            // Whole: it is cut where it is shown, once its secrets are hidden.
            (None, false) => Some(String::from_utf8_lossy(&bytes).into_owned()),
            _ => None,
        };
        // In what was read, not in the bytes: a JSON string may write the token escaped.
        if let Some(token) = bearer {
            let hidden = Redactor::new([token.expose()]);
            if let Some(json) = &mut json {
                hidden.value(json);
            }
            text = text.map(|text| hidden.text(&text));
        }
        Ok(Reply {
            status,
            json,
            text,
            bytes: bytes.len(),
            unread: None,
            duration: started.elapsed(),
            retry_after,
        })
    }

    /// Which kind of failure (this decides what is retried) and why, told with the URL.
    fn classify(&self, service: &'static str, url: String, error: &reqwest::Error) -> SendError {
        if error.is_timeout() {
            // A connection attempt has its own, shorter limit.
            let secs = if error.is_connect() {
                self.inner.timeout_secs.min(CONNECT_TIMEOUT_SECS)
            } else {
                self.inner.timeout_secs
            };
            SendError::Timeout { service, url, secs }
        } else if error.is_connect() {
            SendError::Connect {
                service,
                url,
                reason: Cause::of(error).to_string(),
            }
        } else {
            SendError::Transport {
                service,
                url,
                reason: Cause::of(error).to_string(),
            }
        }
    }
}

/// The longest a connection attempt may take (less when the request timeout is shorter).
const CONNECT_TIMEOUT_SECS: u64 = 10;

/// A URL as it may be shown: without query, fragment or credentials.
pub(crate) fn shown_url(url: &Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    url.set_fragment(None);
    // Cannot fail for the http(s) URLs the configuration allows.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
}

/// Why a request got no answer, read from the error's chain of sources.
#[derive(Debug, PartialEq, Eq)]
enum Cause {
    ConnectionRefused,
    /// The host name did not resolve; the resolver's words.
    Dns(String),
    /// The TLS handshake failed; rustls's words.
    Tls(String),
    TimedOut,
    /// Anything else: the chain's words.
    Other(String),
}

impl Cause {
    fn of(error: &reqwest::Error) -> Self {
        let mut dns = false;
        let mut words: Vec<String> = Vec::new();
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(current) = next {
            if let Some(tls) = current.downcast_ref::<rustls::Error>() {
                return Cause::Tls(tls.to_string());
            }
            next = current.source();
            if let Some(io) = current.downcast_ref::<std::io::Error>() {
                match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => return Cause::ConnectionRefused,
                    std::io::ErrorKind::TimedOut => return Cause::TimedOut,
                    _ => {}
                }
                // An io::Error's `source` skips the error it wraps (where rustls's is).
                if let Some(inner) = io.get_ref() {
                    next = Some(inner);
                }
            }
            // hyper-util's resolver errors carry no type of their own to look for.
            let text = current.to_string();
            dns |= text.to_ascii_lowercase().contains("dns");
            if !words.contains(&text) {
                words.push(text);
            }
        }
        // The first words are reqwest's own ("error sending request"), the last the cause.
        let last = words.last().cloned().unwrap_or_default();
        if dns {
            return Cause::Dns(last);
        }
        match words.get(1..) {
            Some(rest) if !rest.is_empty() => Cause::Other(rest.join(": ")),
            _ => Cause::Other(last),
        }
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::ConnectionRefused => f.write_str("connection refused"),
            Cause::Dns(words) => write!(f, "DNS lookup failed ({words})"),
            Cause::Tls(words) => write!(f, "TLS handshake failed ({words})"),
            Cause::TimedOut => f.write_str("timed out"),
            Cause::Other(words) => f.write_str(words),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn cause_of(url: &str) -> Cause {
        install_crypto_provider();
        let error = reqwest::Client::new()
            .get(url)
            .send()
            .await
            .expect_err("no answer");
        Cause::of(&error)
    }

    #[test]
    fn a_ca_bundle_without_certificates_is_refused_saying_why() {
        let dir = tempfile::tempdir().unwrap();
        for (content, says) in [
            ("hello\n", "holds no PEM certificate"),
            ("", "holds no PEM certificate"),
            (
                "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
                "is not a bundle of PEM certificates (",
            ),
        ] {
            let path = dir.path().join("ca.pem");
            std::fs::write(&path, content).unwrap();
            let mut settings = Settings::defaults().unwrap();
            settings.tls.ca_bundle_path = Some(path);
            let err = ServiceClient::new(&settings)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                err.contains("tls.ca_bundle_path") && err.contains(says),
                "{says}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn why_a_request_got_no_answer() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        assert_eq!(
            cause_of(&format!("http://127.0.0.1:{port}/")).await,
            Cause::ConnectionRefused
        );

        let dns = cause_of("http://does-not-exist.invalid/").await;
        assert!(matches!(dns, Cause::Dns(_)), "{dns:?}");
        assert!(dns.to_string().starts_with("DNS lookup failed ("), "{dns}");

        // A plain HTTP server where TLS is expected.
        let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = plain.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            while let Ok((mut stream, _)) = plain.accept().await {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        let tls = cause_of(&format!("https://127.0.0.1:{port}/")).await;
        assert!(matches!(tls, Cause::Tls(_)), "{tls:?}");
        assert!(
            tls.to_string().starts_with("TLS handshake failed ("),
            "{tls}"
        );
    }

    #[test]
    fn a_shown_url_has_no_query_or_credentials() {
        let url = Url::parse("https://user:pw@repo.example/api/trial/t1/?token=x#f").unwrap();
        assert_eq!(shown_url(&url), "https://repo.example/api/trial/t1/");
    }
}
