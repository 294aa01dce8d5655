//! Tests: callbacks.
