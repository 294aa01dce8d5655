//! Waiting for a deadline that may not be set.

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
