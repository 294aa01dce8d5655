//! Tests: failures.
