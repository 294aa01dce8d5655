//! Waiting for a deadline that may not be set, and how long something took.

use chrono::{DateTime, Utc};
use tokio::time::Instant;

/// The deadline of the instant `at` of the wall clock (now, if it has passed): what the
/// checkpoint keeps as a time, waited for on the runtime's clock.
pub fn at(at: DateTime<Utc>) -> Instant {
    Instant::now() + (at - Utc::now()).to_std().unwrap_or_default()
}

/// Waits until `deadline`, or forever when there is none: a `select!` arm that fires only
/// when a deadline is set.
pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Milliseconds since `since` (a step's run, a wait, opening the store), as the history and
/// the log write them.
pub fn elapsed_ms(since: std::time::Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}
