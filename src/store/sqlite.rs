//! The embedded SQLite store: one file under `store.data_dir`, WAL mode, schema migrations run
//! at open.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use rusqlite_migration::{M, Migrations};

use super::{Backend, EngineRecord, Loaded, Op, StoreError};
use crate::domain::{StartTime, TrialId};
use crate::engine::state::EngineStatus;

/// The schema, one migration per version; never edit a published one, add the next.
fn migrations() -> Migrations<'static> {
    Migrations::new(vec![M::up(
        "CREATE TABLE jobs (
             trial_id   TEXT PRIMARY KEY,
             start_time TEXT NOT NULL
         );
         CREATE TABLE engines (
             trial_id   TEXT PRIMARY KEY,
             status     TEXT NOT NULL,
             backup     TEXT NOT NULL,
             updated_at TEXT NOT NULL
         );
         CREATE TABLE revoked_tokens (
             jti        TEXT PRIMARY KEY,
             expires_at INTEGER NOT NULL
         );
         CREATE TABLE settings (
             key   TEXT PRIMARY KEY,
             value TEXT NOT NULL
         );",
    )])
}

/// The file name of the database inside the data directory.
pub const FILE_NAME: &str = "lcm.sqlite3";

/// An open SQLite database.
pub struct SqliteBackend {
    conn: Connection,
}

fn backend_error(context: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("{context}: {e}"))
}

impl SqliteBackend {
    /// Opens (creating on first start) `<data_dir>/lcm.sqlite3` and migrates it. A file that
    /// is not a database, or a directory that is not writable, is an error naming the path.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| backend_error(&format!("cannot create {}", data_dir.display()), e))?;
        let path: PathBuf = data_dir.join(FILE_NAME);
        let shown = path.display().to_string();
        let mut conn = Connection::open(&path)
            .map_err(|e| backend_error(&format!("cannot open {shown}"), e))?;
        restrict_to_owner(&path);
        let setup = |conn: &mut Connection| -> rusqlite::Result<()> {
            conn.pragma_update(None, "journal_mode", "WAL")?;
            // With WAL, NORMAL keeps every commit across a crash of the process (not of the
            // machine's power), at a fraction of FULL's cost.
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            Ok(())
        };
        setup(&mut conn)
            .map_err(|e| backend_error(&format!("{shown} is not a usable SQLite database"), e))?;
        migrations()
            .to_latest(&mut conn)
            .map_err(|e| backend_error(&format!("cannot migrate {shown}"), e))?;
        // Prove the file is writable now rather than at the first checkpoint.
        conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")
            .map_err(|e| backend_error(&format!("{shown} is not writable"), e))?;
        Ok(Self { conn })
    }

    /// An in-memory database (unit tests).
    pub fn in_memory() -> Result<Self, StoreError> {
        let mut conn = Connection::open_in_memory().map_err(|e| backend_error("in-memory", e))?;
        migrations()
            .to_latest(&mut conn)
            .map_err(|e| backend_error("in-memory migration", e))?;
        Ok(Self { conn })
    }
}

/// The store holds callback tokens (a restored engine needs its own): only the service's user
/// may read it. (SQLite gives its -wal and -shm files the database file's permissions.)
#[cfg(unix)]
fn restrict_to_owner(file: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)) {
        tracing::warn!(path = %file.display(), error = %e, "cannot restrict the store's permissions");
    }
}

#[cfg(not(unix))]
fn restrict_to_owner(_: &Path) {}

fn status_name(status: EngineStatus) -> &'static str {
    match status {
        EngineStatus::Active => "Active",
        EngineStatus::Failed => "Failed",
        EngineStatus::Finished => "Finished",
        EngineStatus::Stopped => "Stopped",
    }
}

impl Backend for SqliteBackend {
    fn apply(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction()
            .map_err(|e| backend_error("begin", e))?;
        for op in ops {
            let result = match op {
                Op::PutJob { id, start } => tx.execute(
                    "INSERT INTO jobs (trial_id, start_time) VALUES (?1, ?2)
                     ON CONFLICT (trial_id) DO UPDATE SET start_time = excluded.start_time",
                    params![id.as_str(), start.to_string()],
                ),
                Op::DeleteJob { id } => {
                    tx.execute("DELETE FROM jobs WHERE trial_id = ?1", params![id.as_str()])
                }
                Op::PutEngine(record) => {
                    let backup = serde_json::to_string(&record.backup)
                        .map_err(|e| backend_error("serialise backup", e))?;
                    tx.execute(
                        "DELETE FROM jobs WHERE trial_id = ?1",
                        params![record.id.as_str()],
                    )
                    .and_then(|_| {
                        tx.execute(
                            "INSERT INTO engines (trial_id, status, backup, updated_at)
                             VALUES (?1, ?2, ?3, ?4)
                             ON CONFLICT (trial_id) DO UPDATE SET status = excluded.status,
                                 backup = excluded.backup, updated_at = excluded.updated_at",
                            params![
                                record.id.as_str(),
                                status_name(record.status),
                                backup,
                                chrono::Utc::now().to_rfc3339()
                            ],
                        )
                    })
                }
                Op::DeleteEngine { id } => tx.execute(
                    "DELETE FROM engines WHERE trial_id = ?1",
                    params![id.as_str()],
                ),
                Op::Revoke { jti, exp } => tx.execute(
                    "INSERT OR REPLACE INTO revoked_tokens (jti, expires_at) VALUES (?1, ?2)",
                    params![jti, exp],
                ),
                Op::SetAutomatic(on) => tx.execute(
                    "INSERT OR REPLACE INTO settings (key, value) VALUES ('automatic', ?1)",
                    params![if *on { "true" } else { "false" }],
                ),
            };
            result.map_err(|e| backend_error(op.kind(), e))?;
        }
        tx.commit().map_err(|e| backend_error("commit", e))
    }

    fn load(&mut self) -> Result<Loaded, StoreError> {
        let read = |e| backend_error("read", e);
        let mut loaded = Loaded::default();

        let mut stmt = self
            .conn
            .prepare("SELECT trial_id, start_time FROM jobs ORDER BY start_time")
            .map_err(read)?;
        let rows = stmt
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })
            .map_err(read)?;
        for row in rows {
            let (id, start) = row.map_err(read)?;
            let id = TrialId::parse(&id).map_err(|e| backend_error("corrupt job", e))?;
            let start = StartTime::parse(&start).map_err(|e| backend_error("corrupt job", e))?;
            loaded.jobs.push((id, start));
        }
        drop(stmt);

        let mut stmt = self
            .conn
            .prepare("SELECT trial_id, status, backup FROM engines ORDER BY trial_id")
            .map_err(read)?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                ))
            })
            .map_err(read)?;
        for row in rows {
            let (id, status, backup) = row.map_err(read)?;
            let id = TrialId::parse(&id).map_err(|e| backend_error("corrupt engine", e))?;
            let status = match status.as_str() {
                "Active" => EngineStatus::Active,
                "Failed" => EngineStatus::Failed,
                "Finished" => EngineStatus::Finished,
                _ => EngineStatus::Stopped,
            };
            let backup = serde_json::from_str(&backup)
                .map_err(|e| backend_error(&format!("corrupt checkpoint of trial {id}"), e))?;
            loaded.engines.push(EngineRecord { id, status, backup });
        }
        drop(stmt);

        let now = chrono::Utc::now().timestamp();
        self.conn
            .execute(
                "DELETE FROM revoked_tokens WHERE expires_at < ?1",
                params![now],
            )
            .map_err(read)?;
        let mut stmt = self
            .conn
            .prepare("SELECT jti, expires_at FROM revoked_tokens")
            .map_err(read)?;
        loaded.revoked = stmt
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(read)?
            .collect::<Result<_, _>>()
            .map_err(read)?;
        drop(stmt);

        loaded.automatic = self
            .conn
            .query_row(
                "SELECT value FROM settings WHERE key = 'automatic'",
                [],
                |row| row.get::<_, String>(0),
            )
            .optional()
            .map_err(read)?
            .map(|v| v == "true");
        Ok(loaded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::sequence::Step;
    use crate::engine::state::{Backup, Position, TrialData};

    fn record(id: &str, status: EngineStatus) -> EngineRecord {
        EngineRecord {
            id: TrialId::parse(id).unwrap(),
            status,
            backup: Backup {
                position: Position::Run(Step::EnforceUavPlan),
                data: TrialData {
                    token: Some("tok".into()),
                    ..TrialData::default()
                },
                accepted: Vec::new(),
                held: Vec::new(),
                failure: None,
            },
        }
    }

    #[test]
    fn migrates_an_empty_file_and_round_trips_everything() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteBackend::open(dir.path()).unwrap();
        assert!(dir.path().join(FILE_NAME).is_file());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(FILE_NAME))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(
                mode & 0o777,
                0o600,
                "only the owner reads the tokens it holds"
            );
        }
        let start = StartTime::parse("2999-01-01T10:00:00+02:00").unwrap();
        let t1 = TrialId::parse("t1").unwrap();
        store
            .apply(&[
                Op::PutJob {
                    id: t1.clone(),
                    start,
                },
                Op::PutJob {
                    id: TrialId::parse("t2").unwrap(),
                    start,
                },
                Op::PutEngine(Box::new(record("t2", EngineStatus::Active))),
                Op::Revoke {
                    jti: "j1".into(),
                    exp: chrono::Utc::now().timestamp() + 60,
                },
                Op::Revoke {
                    jti: "old".into(),
                    exp: 1,
                },
                Op::SetAutomatic(true),
            ])
            .unwrap();
        drop(store);

        let mut reopened = SqliteBackend::open(dir.path()).unwrap();
        let loaded = reopened.load().unwrap();
        assert_eq!(
            loaded.jobs,
            vec![(t1, start)],
            "an engine supersedes its job"
        );
        assert_eq!(loaded.engines.len(), 1);
        assert_eq!(loaded.engines[0].status, EngineStatus::Active);
        assert_eq!(
            loaded.engines[0].backup.position,
            Position::Run(Step::EnforceUavPlan)
        );
        assert_eq!(loaded.revoked.len(), 1, "expired revocations are dropped");
        assert_eq!(loaded.automatic, Some(true));
    }

    #[test]
    fn a_failed_batch_changes_nothing() {
        let mut store = SqliteBackend::in_memory().unwrap();
        store.conn.execute_batch("DROP TABLE settings").unwrap();
        let result = store.apply(&[
            Op::PutJob {
                id: TrialId::parse("t1").unwrap(),
                start: StartTime::parse("2999-01-01T10:00:00Z").unwrap(),
            },
            Op::SetAutomatic(true),
        ]);
        assert!(result.is_err());
        store
            .conn
            .execute_batch("CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            .unwrap();
        assert!(store.load().unwrap().jobs.is_empty());
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), b"this is not sqlite, just text that goes on and on and on and on and on and on and on and on and on and on").unwrap();
        let err = SqliteBackend::open(dir.path())
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains(FILE_NAME), "{err}");
    }

    #[test]
    fn migrations_are_valid() {
        migrations().validate().unwrap();
    }
}
