//! Tests: diagrams.
