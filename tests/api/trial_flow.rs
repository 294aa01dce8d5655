//! Tests: trial_flow.
