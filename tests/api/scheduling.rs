//! Tests: scheduling.
