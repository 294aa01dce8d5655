//! Which failed attempts are tried again and how long to wait first (SPEC §13), as pure
//! functions the outbound client applies.
//!
//! - Retried: no answer (connection refused, timeout, transport error, no OAuth2 token) and
//!   the answers 408, 429, 500, 502, 503, 504. Any other answer is final: a 4xx means the
//!   request is wrong.
//! - A request that creates something ([`super::Outbound::creates`]) is retried only when
//!   nothing can have reached the service: the connection was refused, or no access token
//!   could be had.
//! - The wait is drawn uniformly between 0 and the capped exponential (full jitter), unless
//!   the answer's `Retry-After` sets it (capped too).

use std::time::{Duration, SystemTime};

use super::{Reply, SendError};
use crate::config::RetrySettings;

/// An answer worth trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetriedStatus {
    RequestTimeout,
    TooManyRequests,
    InternalServerError,
    BadGateway,
    ServiceUnavailable,
    GatewayTimeout,
}

impl RetriedStatus {
    const ALL: [RetriedStatus; 6] = [
        RetriedStatus::RequestTimeout,
        RetriedStatus::TooManyRequests,
        RetriedStatus::InternalServerError,
        RetriedStatus::BadGateway,
        RetriedStatus::ServiceUnavailable,
        RetriedStatus::GatewayTimeout,
    ];

    /// The status code.
    fn code(self) -> u16 {
        match self {
            RetriedStatus::RequestTimeout => 408,
            RetriedStatus::TooManyRequests => 429,
            RetriedStatus::InternalServerError => 500,
            RetriedStatus::BadGateway => 502,
            RetriedStatus::ServiceUnavailable => 503,
            RetriedStatus::GatewayTimeout => 504,
        }
    }

    /// The answer `status`, if it is worth trying again.
    fn of(status: u16) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|retried| retried.code() == status)
    }
}

/// Why an attempt is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// The connection could not be made: the request never left.
    Connect,
    /// No access token could be had for the service: the request never left.
    Auth,
    Timeout,
    Transport,
    /// An answer worth trying again.
    Status(RetriedStatus),
}

impl RetryReason {
    /// The reason as a metrics label.
    pub fn label(self) -> &'static str {
        match self {
            RetryReason::Connect => "connect",
            RetryReason::Auth => "auth",
            RetryReason::Timeout => "timeout",
            RetryReason::Transport => "transport",
            RetryReason::Status(RetriedStatus::RequestTimeout) => "status_408",
            RetryReason::Status(RetriedStatus::TooManyRequests) => "status_429",
            RetryReason::Status(RetriedStatus::InternalServerError) => "status_500",
            RetryReason::Status(RetriedStatus::BadGateway) => "status_502",
            RetryReason::Status(RetriedStatus::ServiceUnavailable) => "status_503",
            RetryReason::Status(RetriedStatus::GatewayTimeout) => "status_504",
        }
    }

    /// Every label, for the metric families that exist from the first scrape.
    pub const LABELS: [&'static str; 10] = [
        "connect",
        "auth",
        "timeout",
        "transport",
        "status_408",
        "status_429",
        "status_500",
        "status_502",
        "status_503",
        "status_504",
    ];
}

impl std::fmt::Display for RetryReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RetryReason::Connect => f.write_str("connection failed"),
            RetryReason::Auth => f.write_str("no access token"),
            RetryReason::Timeout => f.write_str("timed out"),
            RetryReason::Transport => f.write_str("transport error"),
            RetryReason::Status(status) => write!(f, "answered {}", status.code()),
        }
    }
}

/// Whether an attempt's outcome is tried again, and why. `creates`: the request may create
/// something twice if it is repeated after it reached the service.
pub fn retry_reason(creates: bool, outcome: &Result<Reply, SendError>) -> Option<RetryReason> {
    match outcome {
        Err(e) if creates && e.may_have_reached() => None,
        Err(SendError::Connect { .. }) => Some(RetryReason::Connect),
        Err(SendError::Auth { retryable, .. }) => retryable.then_some(RetryReason::Auth),
        Err(SendError::Timeout { .. }) => Some(RetryReason::Timeout),
        Err(SendError::Transport { .. }) => Some(RetryReason::Transport),
        Ok(_) if creates => None,
        Ok(reply) => RetriedStatus::of(reply.status).map(RetryReason::Status),
    }
}

/// The wait before retry number `retry` (1 for the first retry). `jitter` is uniform in
/// [0, 1); `retry_after` is what the service asked for.
pub fn backoff(
    policy: &RetrySettings,
    retry: u32,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Duration {
    let cap = Duration::from_millis(policy.max_backoff_ms);
    if let Some(asked) = retry_after {
        return asked.min(cap);
    }
    let exponent = i32::try_from(retry.saturating_sub(1)).unwrap_or(i32::MAX);
    let ceiling_ms = (policy.initial_backoff_ms as f64 * policy.multiplier.powi(exponent))
        .min(policy.max_backoff_ms as f64);
    Duration::from_secs_f64(ceiling_ms * jitter.clamp(0.0, 1.0) / 1000.0)
}

/// A `Retry-After` value: delay-seconds, or an HTTP date (a date in the past means now).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // More seconds than a u64 holds is still a wait, the longest there is (then capped).
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetrySettings {
        RetrySettings {
            max_attempts: 4,
            initial_backoff_ms: 200,
            max_backoff_ms: 1000,
            multiplier: 2.0,
        }
    }

    fn reply(status: u16) -> Result<Reply, SendError> {
        Ok(Reply {
            status,
            json: None,
            text: None,
            bytes: 0,
            unread: None,
            duration: Duration::ZERO,
            retry_after: None,
        })
    }

    #[test]
    fn which_outcomes_are_retried() {
        for status in RetriedStatus::ALL {
            let reason = RetryReason::Status(status);
            assert_eq!(retry_reason(false, &reply(status.code())), Some(reason));
            assert_eq!(reason.label(), format!("status_{}", status.code()));
            assert_eq!(reason.to_string(), format!("answered {}", status.code()));
            assert_eq!(
                retry_reason(true, &reply(status.code())),
                None,
                "a create is not repeated"
            );
        }
        for status in [200, 201, 204, 400, 401, 403, 404, 409, 422, 501] {
            assert_eq!(retry_reason(false, &reply(status)), None, "{status}");
        }
        let refused = Err(SendError::Connect {
            service: "trial_enforcement",
            url: "http://127.0.0.1:1/sliceDeployment".into(),
            reason: "connection refused".into(),
        });
        assert_eq!(retry_reason(true, &refused), Some(RetryReason::Connect));
        let timeout = Err(SendError::Timeout {
            service: "trial_enforcement",
            url: "http://127.0.0.1:1/sliceDeployment".into(),
            secs: 1,
        });
        assert_eq!(retry_reason(false, &timeout), Some(RetryReason::Timeout));
        assert_eq!(retry_reason(true, &timeout), None, "it may have arrived");
        let no_credentials = SendError::Auth {
            service: "trial_enforcement",
            reason: "the token endpoint answered 503".into(),
            retryable: true,
        };
        for (outcome, reached) in [
            (refused, false),
            (Err(no_credentials), false),
            (timeout, true),
        ] {
            assert_eq!(outcome.err().is_some_and(|e| e.may_have_reached()), reached);
        }
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let p = policy();
        assert_eq!(backoff(&p, 1, None, 0.5), Duration::from_millis(100));
        assert_eq!(backoff(&p, 2, None, 0.5), Duration::from_millis(200));
        assert_eq!(backoff(&p, 3, None, 0.5), Duration::from_millis(400));
        assert_eq!(
            backoff(&p, 9, None, 0.5),
            Duration::from_millis(500),
            "capped"
        );
        assert_eq!(backoff(&p, 3, None, 0.0), Duration::ZERO);
        assert_eq!(
            backoff(&p, 1, Some(Duration::from_secs(60)), 0.1),
            Duration::from_secs(1),
            "Retry-After is capped"
        );
        assert_eq!(
            backoff(&p, 1, Some(Duration::from_millis(300)), 0.1),
            Duration::from_millis(300)
        );
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:40 GMT", now),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(
            parse_retry_after("18446744073709551616", now),
            Some(Duration::from_secs(u64::MAX)),
            "beyond a u64: the longest wait, which the policy caps"
        );
    }
}
