//! What the store holds after a run: the size of a checkpoint and of the journal rows, to
//! report the bytes a step writes.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use crate::store::sqlite::FILE_NAME;

/// Sizes read from the store of a run.
pub struct StoreSizes {
    pub trials: u64,
    /// Average and largest checkpoint document, in bytes.
    pub checkpoint_avg: f64,
    pub checkpoint_max: u64,
    /// Journal rows and the bytes of their text and blob columns.
    pub events: u64,
    pub event_bytes: u64,
    pub responses: u64,
    pub response_bytes: u64,
    /// Answers to a retried request (attempt 2 and later).
    pub retries: u64,
    /// Steps completed, and checkpoints saved (one after every step and every signal taken).
    pub steps: u64,
    pub checkpoints: u64,
    /// The database file (with its write-ahead log).
    pub file_bytes: u64,
}

impl StoreSizes {
    /// Bytes written per completed step: its share of the checkpoints and of the journal.
    pub fn bytes_per_step(&self) -> f64 {
        let written = self.checkpoints as f64 * self.checkpoint_avg
            + self.event_bytes as f64
            + self.response_bytes as f64;
        written / self.steps.max(1) as f64
    }
}

/// Reads the sizes from the store in `data_dir`.
pub fn sizes(data_dir: &Path) -> Result<StoreSizes, String> {
    let path = data_dir.join(FILE_NAME);
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let query = |sql: &str| -> Result<(f64, f64, f64), String> {
        conn.query_row(sql, [], |row| {
            Ok((
                row.get::<_, Option<f64>>(0)?.unwrap_or(0.0),
                row.get::<_, Option<f64>>(1)?.unwrap_or(0.0),
                row.get::<_, Option<f64>>(2)?.unwrap_or(0.0),
            ))
        })
        .map_err(|e| format!("reading the store: {e}"))
    };
    let (trials, checkpoint_avg, checkpoint_max) =
        query("SELECT COUNT(*), AVG(LENGTH(checkpoint)), MAX(LENGTH(checkpoint)) FROM trials")?;
    let (events, event_bytes, _) = query(
        "SELECT COUNT(*), SUM(LENGTH(trial_id) + LENGTH(at) + LENGTH(kind) + 16
             + COALESCE(LENGTH(step), 0) + COALESCE(LENGTH(detail), 0)), 0 FROM trial_events",
    )?;
    let (responses, response_bytes, _) = query(
        "SELECT COUNT(*), SUM(LENGTH(trial_id) + LENGTH(step) + LENGTH(service) + LENGTH(method)
             + LENGTH(path) + LENGTH(at) + 24 + COALESCE(LENGTH(body), 0)
             + COALESCE(LENGTH(error), 0)), 0 FROM trial_responses",
    )?;
    let (retries, _, _) = query("SELECT COUNT(*), 0, 0 FROM trial_responses WHERE attempt > 1")?;
    let (steps, checkpoints, _) = query(
        "SELECT SUM(kind = 'step_completed'),
             SUM(kind IN ('step_completed', 'signal_accepted')), 0 FROM trial_events",
    )?;
    let file_bytes = ["", "-wal"]
        .iter()
        .filter_map(|suffix| std::fs::metadata(data_dir.join(format!("{FILE_NAME}{suffix}"))).ok())
        .map(|m| m.len())
        .sum();
    Ok(StoreSizes {
        trials: trials as u64,
        checkpoint_avg,
        checkpoint_max: checkpoint_max as u64,
        events: events as u64,
        event_bytes: event_bytes as u64,
        responses: responses as u64,
        response_bytes: response_bytes as u64,
        retries: retries as u64,
        steps: steps as u64,
        checkpoints: checkpoints as u64,
        file_bytes,
    })
}
