//! Browser tests (written below).
