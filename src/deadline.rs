//! Waiting for a deadline that may not be set.

use tokio::time::Instant;

/// Waits until `deadline`, or forever when there is none: a `select!` arm that fires only
/// when a deadline is set.
pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
