//! The embedded SQLite store: one file under `store.data_dir`, WAL mode, schema migrations run
//! at open. The SQL is plain (TEXT, INTEGER, `ON CONFLICT … DO UPDATE`, no JSON functions), so
//! a PostgreSQL backend can share it.

use std::path::{Path, PathBuf};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, params, params_from_iter};
use rusqlite_migration::{HookError, M, Migrations};
use tracing::{error, info, warn};

use super::codec::{self, decode_checkpoint, encode_checkpoint, parse_time, time};
use super::{
    AuditEntry, AuditQuery, Backend, ListedStatus, ListedTrial, Loaded, Op, Reader, RecoveredTrial,
    StoreError, StoredJob, StoredTrial, TrialQuery, TrialRecord, legacy,
};
use crate::domain::{StartTime, TrialId};
use crate::engine::sequence;
use crate::engine::state::{EventKind, Lifecycle, Position, ResponseRecord, TrialEvent};

/// Version 1: jobs, engines (each checkpoint the serde form of the whole in-memory backup),
/// revocations, settings. Never edit a published migration: add the next.
const V1: &str = "CREATE TABLE jobs (
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
     );";

/// Version 2: one row per trial with a small checkpoint of the store's own format, its
/// events and responses appended as rows, the audit log. The engines of version 1 are moved
/// over by [`migrate_engines`].
const V2: &str = "CREATE TABLE trials (
         trial_id      TEXT PRIMARY KEY,
         engine_status TEXT NOT NULL,
         status        TEXT,
         state         TEXT,
         step          TEXT,
         waiting_for   TEXT,
         failure       TEXT,
         live          INTEGER NOT NULL,
         paused        INTEGER NOT NULL DEFAULT 0,
         lifecycle     TEXT NOT NULL,
         checkpoint    TEXT NOT NULL,
         created_at    TEXT NOT NULL,
         updated_at    TEXT NOT NULL,
         ended_at      TEXT
     );
     CREATE INDEX trials_live ON trials (live);
     CREATE INDEX trials_newest ON trials (created_at, trial_id);
     CREATE TABLE trial_events (
         trial_id    TEXT NOT NULL,
         seq         INTEGER NOT NULL,
         at          TEXT NOT NULL,
         kind        TEXT NOT NULL,
         step        TEXT,
         detail      TEXT,
         duration_ms INTEGER,
         PRIMARY KEY (trial_id, seq)
     ) WITHOUT ROWID;
     CREATE TABLE trial_responses (
         trial_id    TEXT NOT NULL,
         seq         INTEGER NOT NULL,
         step        TEXT NOT NULL,
         service     TEXT NOT NULL,
         method      TEXT NOT NULL,
         path        TEXT NOT NULL,
         status      INTEGER,
         body        TEXT,
         error       TEXT,
         duration_ms INTEGER NOT NULL,
         attempt     INTEGER NOT NULL,
         at          TEXT NOT NULL,
         PRIMARY KEY (trial_id, seq)
     ) WITHOUT ROWID;
     ALTER TABLE jobs ADD COLUMN created_at TEXT NOT NULL DEFAULT '';
     CREATE INDEX jobs_newest ON jobs (created_at, trial_id);
     CREATE TABLE audit (
         seq         INTEGER PRIMARY KEY,
         at          TEXT NOT NULL,
         actor       TEXT NOT NULL,
         role        TEXT,
         action      TEXT NOT NULL,
         trial_id    TEXT,
         outcome     INTEGER NOT NULL,
         detail      TEXT,
         remote_addr TEXT
     );
     CREATE INDEX audit_trial ON audit (trial_id, seq);
     CREATE INDEX audit_actor ON audit (actor, seq);";

/// Version 3: the audit log's numbers are never used twice. Without `AUTOINCREMENT` SQLite
/// numbers a row after the highest one left, so a purge that removed every entry started the
/// log again at 1, under the cursor a reader kept.
const V3: &str = "CREATE TABLE audit_v3 (
         seq         INTEGER PRIMARY KEY AUTOINCREMENT,
         at          TEXT NOT NULL,
         actor       TEXT NOT NULL,
         role        TEXT,
         action      TEXT NOT NULL,
         trial_id    TEXT,
         outcome     INTEGER NOT NULL,
         detail      TEXT,
         remote_addr TEXT
     );
     INSERT INTO audit_v3 (seq, at, actor, role, action, trial_id, outcome, detail, remote_addr)
         SELECT seq, at, actor, role, action, trial_id, outcome, detail, remote_addr FROM audit;
     DROP TABLE audit;
     ALTER TABLE audit_v3 RENAME TO audit;
     CREATE INDEX audit_trial ON audit (trial_id, seq);
     CREATE INDEX audit_actor ON audit (actor, seq);";

/// Version 4: a trial's events and responses are kept in the order they happened, found by an
/// index on the trial and its number. Kept in order of the trial instead, each step's rows
/// landed on that trial's own pages, so a commit carrying the steps of many trials wrote a
/// page (and split one, as it filled) for each of them; in the order they happen, the rows of
/// one commit share pages, and only the small index entries go where their trial's are. The
/// index start-up reads live trials by also holds their status, so that a row whose status
/// says it runs is found whatever its `live` column says.
const V4: &str = "CREATE TABLE trial_events_v4 (
         trial_id    TEXT NOT NULL,
         seq         INTEGER NOT NULL,
         at          TEXT NOT NULL,
         kind        TEXT NOT NULL,
         step        TEXT,
         detail      TEXT,
         duration_ms INTEGER
     );
     INSERT INTO trial_events_v4 (trial_id, seq, at, kind, step, detail, duration_ms)
         SELECT trial_id, seq, at, kind, step, detail, duration_ms FROM trial_events;
     DROP TABLE trial_events;
     ALTER TABLE trial_events_v4 RENAME TO trial_events;
     CREATE UNIQUE INDEX trial_events_seq ON trial_events (trial_id, seq);
     CREATE TABLE trial_responses_v4 (
         trial_id    TEXT NOT NULL,
         seq         INTEGER NOT NULL,
         step        TEXT NOT NULL,
         service     TEXT NOT NULL,
         method      TEXT NOT NULL,
         path        TEXT NOT NULL,
         status      INTEGER,
         body        TEXT,
         error       TEXT,
         duration_ms INTEGER NOT NULL,
         attempt     INTEGER NOT NULL,
         at          TEXT NOT NULL
     );
     INSERT INTO trial_responses_v4 (trial_id, seq, step, service, method, path, status, body,
             error, duration_ms, attempt, at)
         SELECT trial_id, seq, step, service, method, path, status, body, error, duration_ms,
             attempt, at FROM trial_responses;
     DROP TABLE trial_responses;
     ALTER TABLE trial_responses_v4 RENAME TO trial_responses;
     CREATE UNIQUE INDEX trial_responses_seq ON trial_responses (trial_id, seq);
     DROP INDEX trials_live;
     CREATE INDEX trials_live ON trials (live, engine_status);";

/// Version 5: ended trials and audit entries found by their time, so that a purge reads only
/// what it removes.
const V5: &str = "CREATE INDEX trials_ended ON trials (ended_at);
     CREATE INDEX audit_at ON audit (at);";

/// Version 6: the start times an operator unscheduled, which polling the registry does not
/// schedule again; when a job was found missed at a start (kept, listed `Missed`).
const V6: &str = "CREATE TABLE unscheduled (
         trial_id TEXT PRIMARY KEY,
         start_at TEXT NOT NULL,
         unscheduled_at TEXT NOT NULL
     );
     ALTER TABLE jobs ADD COLUMN missed_at TEXT;";

/// The schema, one migration per version.
fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(V1),
        M::up_with_hook(V2, migrate_engines),
        M::up(V3),
        M::up(V4),
        M::up(V5),
        M::up(V6),
    ])
}

/// Brings the file to the latest schema. An older one is said to be migrated, before and
/// after: moving a large store's rows takes a while, once (about 20 s for 100,000 trials), and
/// the write-ahead log that held them is emptied afterwards.
fn migrate(conn: &mut Connection, shown: &str) -> Result<(), StoreError> {
    let migrations = migrations();
    let failed =
        |e: rusqlite_migration::Error| backend_error(&format!("cannot migrate {shown}"), e);
    let current = migrations.current_version(conn).map_err(failed)?;
    if let rusqlite_migration::SchemaVersion::Outside(version) = current {
        return Err(StoreError::Backend(format!(
            "{shown} has version {version} of the schema, newer than this release knows: a later release wrote it; run that release, or this one on a backup made before the upgrade"
        )));
    }
    let created = matches!(current, rusqlite_migration::SchemaVersion::NoneSet);
    let pending = migrations.pending_migrations(conn).map_err(failed)?;
    if created || pending == 0 {
        return migrations.to_latest(conn).map_err(failed);
    }
    info!(
        pending,
        "store: migrating {shown} to the latest schema; a large store takes a while, once"
    );
    let started = std::time::Instant::now();
    migrations.to_latest(conn).map_err(failed)?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(|e| backend_error(&format!("cannot empty the log of {shown}"), e))?;
    info!(
        elapsed_ms = crate::deadline::elapsed_ms(started),
        "store: {shown} migrated"
    );
    Ok(())
}

/// Moves every version-1 engine into the version-2 tables. A record that cannot be read is
/// kept, set aside as `Corrupt` with the reason, rather than stopping the upgrade.
fn migrate_engines(tx: &Transaction) -> Result<(), HookError> {
    // (the id it is kept under and the backup as it can be shown, and the columns as text or
    // why they are not)
    type EngineRow = (String, String, Result<[String; 4], String>);
    let rows: Vec<EngineRow> = {
        let mut stmt = tx.prepare("SELECT trial_id, status, backup, updated_at FROM engines")?;
        stmt.query_map([], |row| {
            let read = || {
                Ok([
                    text_of(row, 0, "trial_id")?,
                    text_of(row, 1, "status")?,
                    text_of(row, 2, "backup")?,
                    text_of(row, 3, "updated_at")?,
                ])
            };
            Ok((set_aside_id(row, 0)?, shown_of(row, 2)?, read()))
        })?
        .collect::<Result<_, _>>()?
    };
    let now = time(chrono::Utc::now());
    for (id, backup, read) in rows {
        let converted = read.and_then(|[id, status, backup, updated_at]| {
            legacy::convert(&id, &status, &backup, &updated_at)
        });
        match converted {
            Ok(converted) => {
                put_trial(tx, &converted.record)?;
                for event in &converted.events {
                    append_event(tx, converted.record.id.as_str(), event)?;
                }
                for response in &converted.responses {
                    append_response(tx, converted.record.id.as_str(), response)?;
                }
            }
            Err(reason) => {
                warn!(trial = %id, reason = %reason, "a version-1 engine record cannot be read: kept as Corrupt");
                set_aside(tx, &id, &reason, &backup, &now, &now)?;
            }
        }
    }
    tx.execute_batch("DROP TABLE engines;")?;
    exec(
        tx,
        "UPDATE jobs SET created_at = ?1 WHERE created_at = ''",
        params![now],
    )?;
    Ok(())
}

/// The statements of [`mend_binary_creation_times`], by table.
const MEND_CREATION_TIMES: [(&str, &str); 2] = [
    (
        "trials",
        "UPDATE trials SET created_at = 'x' || hex(created_at) WHERE created_at >= X''",
    ),
    (
        "jobs",
        "UPDATE jobs SET created_at = 'x' || hex(created_at) WHERE created_at >= X''",
    ),
];

/// Rewrites a `created_at` that is binary data (written by hand) as text, `x` and its bytes in
/// hex: binary data sorts after every time, and a listing's cursor, which carries text, could
/// not page past it. Found by the index the listing reads (binary data sorts after any text in
/// it), so a store of healthy rows costs nothing.
fn mend_binary_creation_times(conn: &Connection) -> rusqlite::Result<()> {
    for (table, mend) in MEND_CREATION_TIMES {
        let mended = conn.execute(mend, [])?;
        if mended > 0 {
            warn!(
                table,
                mended,
                "rows whose created_at was binary data, not a time: rewritten as 'x' and its bytes in hex, so that the listing pages past them"
            );
        }
    }
    Ok(())
}

/// How the reason of a scheduled job set aside begins: it never started, so it left nothing
/// deployed.
const JOB_SET_ASIDE: &str = "unreadable scheduled job";

/// Keeps a record that cannot be read as a trial row `Corrupt` with the reason, listed and
/// never run; `content` is what was read, kept for whoever mends it. A trial row already there
/// is left as it is.
fn set_aside(
    conn: &Connection,
    id: &str,
    reason: &str,
    content: &str,
    created_at: &str,
    now: &str,
) -> rusqlite::Result<usize> {
    exec(
        conn,
        "INSERT INTO trials (trial_id, engine_status, failure, live, lifecycle, checkpoint,
             created_at, updated_at)
         VALUES (?1, 'Corrupt', ?2, 0, 'Failed', ?3, ?4, ?5)
         ON CONFLICT (trial_id) DO NOTHING",
        params![id, reason, content, created_at, now],
    )
}

/// Column `i` (`name`) of a row as text, or why it is not: SQLite keeps whatever a hand or a
/// bug wrote into a column, and one such value must set its record aside, not stop start-up.
fn text_of(row: &rusqlite::Row<'_>, i: usize, name: &str) -> Result<String, String> {
    match row.get_ref(i) {
        Ok(ValueRef::Text(bytes)) => {
            String::from_utf8(bytes.to_vec()).map_err(|_| format!("{name} is not UTF-8 text"))
        }
        Ok(ValueRef::Integer(n)) => Ok(n.to_string()),
        Ok(ValueRef::Real(x)) => Ok(x.to_string()),
        Ok(ValueRef::Null) => Err(format!("{name} is empty (NULL)")),
        Ok(ValueRef::Blob(_)) => Err(format!("{name} is binary data (a BLOB), not text")),
        Err(e) => Err(format!("{name}: {e}")),
    }
}

/// Column `i` of a row as text, whatever it holds: to name or keep a record that cannot be
/// read.
fn shown_of(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<String> {
    Ok(match row.get_ref(i)? {
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => {
            String::from_utf8_lossy(bytes).into_owned()
        }
        ValueRef::Integer(n) => n.to_string(),
        ValueRef::Real(x) => x.to_string(),
        ValueRef::Null => String::new(),
    })
}

/// The id the record in column `i` of a row is kept under, should it be set aside: its own if
/// it is one, else one made of its bytes as stored (`unreadable-<hex>`, two ids alike once
/// shown kept apart), so that an operator can read and delete it through the API.
fn set_aside_id(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<String> {
    let stored = match row.get_ref(i)? {
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => bytes.to_vec(),
        ValueRef::Integer(n) => n.to_string().into_bytes(),
        ValueRef::Real(x) => x.to_string().into_bytes(),
        ValueRef::Null => Vec::new(),
    };
    if let Ok(text) = std::str::from_utf8(&stored)
        && TrialId::parse(text).is_ok()
    {
        return Ok(text.to_owned());
    }
    let hex: String = stored.iter().take(50).map(|b| format!("{b:02x}")).collect();
    Ok(format!("unreadable-{hex}"))
}

/// The file name of the database inside the data directory.
pub const FILE_NAME: &str = "lcm.sqlite3";

/// An open SQLite database.
pub struct SqliteBackend {
    conn: Connection,
    /// How a reader opens the same database.
    location: Location,
    /// The locks of the data directory and of the database file, held while the backend
    /// lives: one service per store.
    _locks: [Option<std::fs::File>; 2],
    /// The database file as opened (none in memory).
    file: Option<OpenedFile>,
}

/// The database file as opened, to notice it removed or replaced under the service: SQLite
/// would go on writing to a file no path leads to any more, and every change would be lost.
struct OpenedFile {
    path: PathBuf,
    /// Device and inode of the file opened.
    identity: (u64, u64),
    /// Its write-ahead log (`<path>-wal`), which holds the changes not yet copied into it,
    /// and the device and inode of the log SQLite keeps open, once seen.
    wal_path: PathBuf,
    wal: Option<(u64, u64)>,
    checked: std::time::Instant,
    gone: bool,
}

/// How often a write checks that the database file is still there (a `stat`).
const FILE_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl OpenedFile {
    fn new(path: PathBuf) -> Option<Self> {
        let identity = identity_of(&path)?;
        let mut wal_path = path.clone().into_os_string();
        wal_path.push("-wal");
        let wal_path = PathBuf::from(wal_path);
        Some(Self {
            wal: identity_of(&wal_path),
            wal_path,
            path,
            identity,
            checked: std::time::Instant::now(),
            gone: false,
        })
    }

    /// Whether the path still leads to the file opened: checked at most every second while
    /// it does, at every write once it did not.
    fn check(&mut self) -> Result<(), StoreError> {
        if !self.gone && self.checked.elapsed() < FILE_CHECK_EVERY {
            return Ok(());
        }
        self.checked = std::time::Instant::now();
        let shown = self.path.display();
        let wal = identity_of(&self.wal_path);
        if self.wal.is_none() {
            self.wal = wal;
        }
        if identity_of(&self.path) == Some(self.identity) && wal == self.wal {
            if self.gone {
                info!(path = %shown, "the database file is back: writes go on");
                self.gone = false;
            }
            return Ok(());
        }
        if !self.gone {
            error!(
                path = %shown,
                "the database file or its -wal was removed or replaced while the service runs: nothing is written until it is back at its path (trials wait, changes are refused); copy the file the service still has open (ls -l /proc/<pid>/fd, and its -wal) back to its path, then restart the service"
            );
            self.gone = true;
        }
        Err(StoreError::Unwritable(format!(
            "the database file {shown} or its -wal was removed or replaced while the service runs: nothing more is written to it"
        )))
    }
}

/// The device and inode of the file at `path`, if there is one.
fn identity_of(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The lock file in the data directory, next to the database.
const LOCK_FILE: &str = "lcm.lock";

/// Takes the lock of `path` in `data_dir` (the lock file, or the database file itself, so that
/// a lock file removed by hand lets no second service in): a second service on the same
/// store would run the same trials twice. Released by the system when the process ends,
/// however it ends.
fn lock_data_dir(
    data_dir: &Path,
    path: PathBuf,
    open: &std::fs::OpenOptions,
) -> Result<Option<std::fs::File>, StoreError> {
    let file = open
        .open(&path)
        .map_err(|e| backend_error(&format!("cannot open {}", path.display()), e))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Backend(format!(
            "the store in {} is in use by another process ({} is locked): one service per store",
            data_dir.display(),
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => {
            warn!(path = %path.display(), error = %e, "the data directory cannot be locked: make sure no other service uses this store");
            Ok(None)
        }
    }
}

#[derive(Clone)]
enum Location {
    File(PathBuf),
    /// A named in-memory database shared between this process's connections.
    Memory(String),
}

/// Runs a statement, compiled once per connection and kept (the writer runs the same few
/// statements over and over).
fn exec(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

fn backend_error(context: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("{context}: {e}"))
}

/// Why the database at `shown` could not be set up, in words an operator acts on.
fn setup_failed(shown: &str, e: &rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => {
            backend_error(&format!("{shown} is not a SQLite database"), e)
        }
        // A file cut short, say: what to do is what a damaged read says.
        Some(rusqlite::ErrorCode::DatabaseCorrupt) => read_error(&format!("set up {shown}"), e),
        _ => write_failed(&format!("{shown} cannot be set up"), e),
    }
}

/// A read that failed: [`StoreError::Damaged`], saying what to do, when the database file is
/// damaged, which no retry mends.
fn read_error(context: &str, e: &rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) => {
            StoreError::Damaged(format!(
                "{context}: the database file is damaged: restore it from a backup, or move it aside (with its -wal and -shm files) to start on an empty store: {e}"
            ))
        }
        _ => backend_error(context, e),
    }
}

/// A write that failed, saying so when the disk is to blame: SQLite's own message for a full
/// disk is often a bare "disk I/O error".
fn write_failed(context: &str, e: &rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    let disk = match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => ": its disk is full",
        Some(ErrorCode::SystemIoFailure) => {
            ": its disk could not be written (is it full, or read-only?)"
        }
        _ => "",
    };
    let error = format!("{context}{disk}: {e}");
    match e.sqlite_error_code() {
        // The store cannot write now, whatever is written: it may again later.
        Some(
            ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::ReadOnly
            | ErrorCode::CannotOpen
            | ErrorCode::PermissionDenied
            | ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::FileLockingProtocolFailed
            | ErrorCode::OutOfMemory,
        ) => StoreError::Unwritable(error),
        _ => StoreError::Backend(error),
    }
}

/// When a commit reaches the disk itself (`store.synchronous`, SQLite's pragma of that name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// At each checkpoint of the write-ahead log: a commit survives a crash of the process,
    /// and a power cut may lose what the kernel had not written back yet.
    #[default]
    Normal,
    /// At each commit (group commits share one): a commit survives a power cut too.
    Full,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

impl SqliteBackend {
    /// [`SqliteBackend::open_with`] and [`Synchronous::Normal`].
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(data_dir, Synchronous::Normal)
    }

    /// Opens (creating on first start) `<data_dir>/lcm.sqlite3` and migrates it, its commits
    /// made `synchronous`. A file that is not a database, or a directory that is not
    /// writable, is an error naming the path.
    pub fn open_with(data_dir: &Path, synchronous: Synchronous) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| backend_error(&format!("cannot create {}", data_dir.display()), e))?;
        let mut create = std::fs::OpenOptions::new();
        create.create(true).truncate(false).write(true);
        let lock = lock_data_dir(data_dir, data_dir.join(LOCK_FILE), &create)?;
        let path: PathBuf = data_dir.join(FILE_NAME);
        let shown = path.display().to_string();
        let mut conn = Connection::open(&path)
            .map_err(|e| backend_error(&format!("cannot open {shown}"), e))?;
        let locks = [
            lock,
            lock_data_dir(
                data_dir,
                path.clone(),
                std::fs::OpenOptions::new().read(true),
            )?,
        ];
        restrict_to_owner(&path);
        let setup = |conn: &mut Connection| -> rusqlite::Result<()> {
            conn.pragma_update(None, "journal_mode", "WAL")?;
            // With WAL, NORMAL keeps every commit across a crash of the process (not of the
            // machine's power), at a fraction of FULL's cost.
            conn.pragma_update(None, "synchronous", synchronous.pragma())?;
            // A trial's row is rewritten at every step: copying the log into the database
            // every 8,192 pages (32 MiB) instead of 1,000 copies each hot page once for many
            // rewrites, and a 32 MiB page cache keeps the pages the writer touches.
            conn.pragma_update(None, "wal_autocheckpoint", 8192)?;
            conn.pragma_update(None, "cache_size", -32_768)?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            Ok(())
        };
        setup(&mut conn).map_err(|e| setup_failed(&shown, &e))?;
        migrate(&mut conn, &shown)?;
        // Prove the file is writable now rather than at the first checkpoint. SQLite opens a
        // file it may not write read-only, without an error.
        let read_only = conn
            .is_readonly(rusqlite::MAIN_DB)
            .map_err(|e| backend_error(&format!("{shown} is not writable"), e))?;
        if read_only {
            return Err(StoreError::Backend(format!(
                "{shown} is not writable: it could be opened for reading only (its owner or mode)"
            )));
        }
        conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")
            .map_err(|e| backend_error(&format!("{shown} is not writable"), e))?;
        Ok(Self {
            conn,
            file: OpenedFile::new(path.clone()),
            location: Location::File(path),
            _locks: locks,
        })
    }

    /// A database in memory, private to this backend and its readers (tests).
    pub fn in_memory() -> Result<Self, StoreError> {
        let name = format!(
            "file:lcm-{}?mode=memory&cache=shared",
            uuid::Uuid::new_v4().simple()
        );
        let mut conn = Connection::open_with_flags(
            &name,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(|e| backend_error("in-memory", e))?;
        migrations()
            .to_latest(&mut conn)
            .map_err(|e| backend_error("in-memory migration", e))?;
        Ok(Self {
            conn,
            location: Location::Memory(name),
            _locks: [None, None],
            file: None,
        })
    }

    /// The connection, for tests that look at or damage what is stored.
    pub fn connection(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

/// The store holds callback tokens (a restored engine needs its own): only the service's user
/// may read it. (SQLite gives its -wal and -shm files the database file's permissions.)
#[cfg(unix)]
fn restrict_to_owner(file: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)) {
        warn!(path = %file.display(), error = %e, "cannot restrict the store's permissions");
    }
}

#[cfg(not(unix))]
fn restrict_to_owner(_: &Path) {}

/// Writes a trial's row: its checkpoint, and the columns the listing reads.
fn put_trial(tx: &Connection, record: &TrialRecord) -> rusqlite::Result<usize> {
    let checkpoint = &record.checkpoint;
    let (step, waiting_for) = match checkpoint.position {
        Position::Run(step) => (Some(step.name()), None),
        Position::Wait(wait) => (None, Some(sequence::wait_spec(wait).waiting_for)),
    };
    let lifecycle = record.lifecycle;
    exec(
        tx,
        "DELETE FROM jobs WHERE trial_id = ?1",
        params![record.id.as_str()],
    )?;
    exec(
        tx,
        "INSERT INTO trials (trial_id, engine_status, status, state, step, waiting_for, failure,
             live, paused, lifecycle, checkpoint, created_at, updated_at, ended_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
         ON CONFLICT (trial_id) DO UPDATE SET engine_status = excluded.engine_status,
             status = excluded.status, state = excluded.state, step = excluded.step,
             waiting_for = excluded.waiting_for, failure = excluded.failure,
             live = excluded.live, paused = excluded.paused, lifecycle = excluded.lifecycle,
             checkpoint = excluded.checkpoint, updated_at = excluded.updated_at,
             ended_at = excluded.ended_at",
        params![
            record.id.as_str(),
            lifecycle.engine_status().name(),
            lifecycle.executor_status().name(),
            checkpoint.position.state(),
            step,
            waiting_for,
            checkpoint.failure.as_ref().map(|f| f.reason.as_str()),
            i64::from(matches!(
                lifecycle,
                Lifecycle::Running | Lifecycle::Waiting | Lifecycle::Failed
            )),
            i64::from(checkpoint.paused),
            codec::lifecycle_name(lifecycle),
            encode_checkpoint(checkpoint),
            time(record.created_at),
            time(record.updated_at),
            record.ended_at.map(time),
        ],
    )
}

fn append_event(tx: &Connection, id: &str, event: &TrialEvent) -> rusqlite::Result<usize> {
    exec(
        tx,
        "INSERT INTO trial_events (trial_id, seq, at, kind, step, detail, duration_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (trial_id, seq) DO NOTHING",
        params![
            id,
            event.seq as i64,
            time(event.at),
            event.event.name(),
            event.step,
            event.detail,
            event.duration_ms.map(|d| d as i64),
        ],
    )
}

/// Every row `sql` (without parameters) selects, each read by `read`.
fn all_rows<T>(
    conn: &Connection,
    sql: &str,
    read: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    let mut stmt = conn.prepare(sql)?;
    stmt.query_map([], read)?.collect()
}

/// Appends a response after the trial's last one (numbered by the store, so a row that was
/// never written leaves no hole for a later one to fall into).
fn append_response(tx: &Connection, id: &str, record: &ResponseRecord) -> rusqlite::Result<usize> {
    exec(
        tx,
        "INSERT INTO trial_responses (trial_id, seq, step, service, method, path, status, body,
             error, duration_ms, attempt, at)
         VALUES (?1, (SELECT COALESCE(MAX(seq) + 1, 0) FROM trial_responses
                 WHERE trial_id = ?1 AND typeof(seq) = 'integer'),
             ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            id,
            record.step,
            record.service,
            record.method,
            record.path,
            record.status,
            record.body.as_ref().map(serde_json::Value::to_string),
            record.error,
            record.duration_ms as i64,
            record.attempt,
            time(record.at),
        ],
    )
}

/// Live trials only: start-up does not grow with the trials that have ended. Found by the
/// index, with those whose `live` was damaged by hand: one that is not a number (text and
/// binary data sort above numbers) is read to be set aside, and a row whose status says it
/// runs is recovered whatever its `live` says. (`+created_at` keeps the order from choosing
/// the index by creation, which would read every row.)
const LIVE_TRIALS: &str = "SELECT rowid, trial_id, lifecycle, checkpoint, paused, created_at,
         updated_at, ended_at, live
     FROM trials
     WHERE live > 0 OR live < 0 OR (live = 0 AND engine_status IN ('Active', 'Failed'))
     ORDER BY +created_at";

/// A time as the store writes it (fixed width, so that times sort as text): only such a time
/// is compared with a purge's cutoff. A damaged one (a number, another format) would sort
/// before any cutoff, and what holds it would be purged instead of listed as it is.
macro_rules! stored_time {
    () => {
        "LIKE '____-__-__T__:__:__.______Z'"
    };
}

/// The audit entries a purge removes (`?2` at most): written before the cutoff, the oldest
/// first, found by their time; one whose time is damaged is kept.
const PURGED_AUDIT: &str = concat!(
    "SELECT seq FROM audit WHERE at < ?1 AND at ",
    stored_time!(),
    " ORDER BY at LIMIT CAST(?2 AS INTEGER)"
);

/// The trials a purge removes (`?2` at most), each with the number of its events and
/// responses: ended (finished or aborted) before the cutoff, the earliest ended first, found
/// by their end (in the index's order, so no sort: trials that ended at the same instant come
/// in the order they were stored). Failed trials stay until they are restored, aborted or
/// deleted, and so does a trial whose end is not a time as the store writes it.
const PURGED: &str = concat!(
    "SELECT trial_id,
         (SELECT count(*) FROM trial_events e WHERE e.trial_id = trials.trial_id)
         + (SELECT count(*) FROM trial_responses r WHERE r.trial_id = trials.trial_id)
     FROM trials WHERE ended_at < ?1 AND ended_at ",
    stored_time!(),
    " AND engine_status IN ('Finished', 'Aborted')
     ORDER BY ended_at LIMIT CAST(?2 AS INTEGER)"
);

/// Rewrites one part of a trial's saved checkpoint, the rest as written.
fn patch_checkpoint(
    tx: &Transaction,
    id: &TrialId,
    patch: impl FnOnce(&str) -> Result<String, String>,
) -> rusqlite::Result<usize> {
    let saved: String = tx.query_row(
        "SELECT checkpoint FROM trials WHERE trial_id = ?1",
        params![id.as_str()],
        |row| row.get(0),
    )?;
    let patched = patch(&saved).map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?;
    exec(
        tx,
        "UPDATE trials SET checkpoint = ?2 WHERE trial_id = ?1",
        params![id.as_str(), patched],
    )
}

/// Removes a trial's record, events and responses (counts the records removed).
fn delete_trial(tx: &Transaction, id: &str) -> rusqlite::Result<usize> {
    for sql in [
        "DELETE FROM trial_events WHERE trial_id = ?1",
        "DELETE FROM trial_responses WHERE trial_id = ?1",
    ] {
        exec(tx, sql, params![id])?;
    }
    exec(tx, "DELETE FROM trials WHERE trial_id = ?1", params![id])
}

fn apply_op(tx: &Transaction, op: &Op) -> rusqlite::Result<usize> {
    match op {
        Op::PutJob {
            id,
            start,
            created_at,
        } => exec(
            tx,
            "INSERT INTO jobs (trial_id, start_time, created_at)
             SELECT ?1, ?2, ?3 WHERE NOT EXISTS (SELECT 1 FROM trials WHERE trial_id = ?1)
             ON CONFLICT (trial_id) DO UPDATE
             SET start_time = excluded.start_time, missed_at = NULL",
            params![id.as_str(), start.to_string(), time(*created_at)],
        )
        .and_then(|count| {
            exec(
                tx,
                "DELETE FROM unscheduled WHERE trial_id = ?1",
                params![id.as_str()],
            )
            .map(|_| count)
        }),
        Op::DeleteJob { id } => exec(
            tx,
            "DELETE FROM jobs WHERE trial_id = ?1",
            params![id.as_str()],
        ),
        Op::DeleteMissedJob { id } => exec(
            tx,
            "DELETE FROM jobs WHERE trial_id = ?1 AND missed_at IS NOT NULL",
            params![id.as_str()],
        ),
        Op::MarkMissed { id, at } => exec(
            tx,
            "UPDATE jobs SET missed_at = ?2 WHERE trial_id = ?1",
            params![id.as_str(), time(*at)],
        ),
        Op::Unschedule { id, start, at } => {
            let count = exec(
                tx,
                "DELETE FROM jobs WHERE trial_id = ?1",
                params![id.as_str()],
            )?;
            // A start time that has passed cannot be scheduled again: its mark goes.
            exec(
                tx,
                "DELETE FROM unscheduled WHERE start_at < ?1",
                params![time(*at)],
            )?;
            exec(
                tx,
                "INSERT INTO unscheduled (trial_id, start_at, unscheduled_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (trial_id) DO UPDATE
                 SET start_at = excluded.start_at, unscheduled_at = excluded.unscheduled_at",
                params![id.as_str(), time(*start), time(*at)],
            )?;
            Ok(count)
        }
        Op::PutTrial(record) => put_trial(tx, record),
        Op::SetPaused { id, paused } => exec(
            tx,
            "UPDATE trials SET paused = ?2 WHERE trial_id = ?1",
            params![id.as_str(), i64::from(*paused)],
        ),
        Op::SetHeld { id, held } => patch_checkpoint(tx, id, |saved| codec::with_held(saved, held)),
        Op::SetProgress { id, progress } => {
            patch_checkpoint(tx, id, |saved| codec::with_progress(saved, progress))
        }
        Op::AppendEvent { id, event } => append_event(tx, id.as_str(), event),
        Op::AppendResponse { id, record } => append_response(tx, id.as_str(), record),
        Op::DeleteTrial { id } => delete_trial(tx, id.as_str()),
        Op::Purge {
            ended_before,
            at_most,
            rows_at_most,
        } => {
            let candidates: Vec<(String, i64)> = tx
                .prepare_cached(PURGED)?
                .query_map(params![time(*ended_before), at_most.to_string()], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let (mut removed, mut rows) = (0, 0_usize);
            for (id, held) in candidates {
                let held = usize::try_from(held).unwrap_or(usize::MAX);
                if removed > 0 && rows.saturating_add(held) > *rows_at_most {
                    break;
                }
                delete_trial(tx, &id)?;
                removed += 1;
                rows += held;
            }
            Ok(removed)
        }
        Op::PurgeAudit { before, at_most } => exec(
            tx,
            &format!("DELETE FROM audit WHERE seq IN ({PURGED_AUDIT})"),
            params![time(*before), at_most.to_string()],
        ),
        Op::Revoke { jti, exp } => exec(
            tx,
            "INSERT INTO revoked_tokens (jti, expires_at) VALUES (?1, ?2)
             ON CONFLICT (jti) DO UPDATE SET expires_at = excluded.expires_at",
            params![jti, exp],
        ),
        Op::SetAutomatic(on) => exec(
            tx,
            "INSERT INTO settings (key, value) VALUES ('automatic', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![if *on { "true" } else { "false" }],
        ),
        Op::Audit(entry) | Op::AuditIfChanged(entry) => exec(
            tx,
            "INSERT INTO audit (at, actor, role, action, trial_id, outcome, detail, remote_addr)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                time(entry.at),
                entry.actor,
                entry.role,
                entry.action,
                entry.trial_id,
                entry.outcome,
                entry.detail,
                entry.remote_addr,
            ],
        ),
    }
}

impl Backend for SqliteBackend {
    fn apply(&mut self, ops: &[Op]) -> Result<Vec<usize>, StoreError> {
        if let Some(file) = &mut self.file {
            file.check()?;
        }
        let tx = self
            .conn
            .transaction()
            .map_err(|e| write_failed("begin", &e))?;
        let mut counts = Vec::with_capacity(ops.len());
        for op in ops {
            let count = match op {
                Op::AuditIfChanged(_) if counts.last() == Some(&0) => 0,
                op => apply_op(&tx, op).map_err(|e| write_failed(op.kind(), &e))?,
            };
            counts.push(count);
        }
        tx.commit().map_err(|e| write_failed("commit", &e))?;
        Ok(counts)
    }

    fn check(&mut self) -> Result<(), StoreError> {
        match &mut self.file {
            Some(file) => file.check(),
            None => Ok(()),
        }
    }

    fn close(&mut self) -> Result<(), StoreError> {
        // Every page of the write-ahead log copied into the database, and the log emptied.
        let busy: i64 = (self.conn)
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))
            .map_err(|e| backend_error("cannot fold the write-ahead log in", e))?;
        match busy {
            0 => Ok(()),
            _ => Err(StoreError::Backend(
                "the write-ahead log was not folded in: a read was under way".to_owned(),
            )),
        }
    }

    fn load(&mut self) -> Result<Loaded, StoreError> {
        let shown = match &self.location {
            Location::File(path) => path.display().to_string(),
            Location::Memory(name) => format!("the in-memory database {name}"),
        };
        let read = |e: rusqlite::Error| read_error(&format!("read {shown}"), &e);
        let mut loaded = Loaded::default();
        mend_binary_creation_times(&self.conn).map_err(read)?;

        // (rowid; the id it is kept under, start time and created_at as they can be shown;
        // then as text; when it was found missed, if it was)
        type JobRow = (
            i64,
            [String; 3],
            Result<[String; 3], String>,
            Option<chrono::DateTime<chrono::Utc>>,
        );
        let jobs: Vec<JobRow> = all_rows(
            &self.conn,
            "SELECT rowid, trial_id, start_time, created_at, missed_at FROM jobs
             ORDER BY start_time",
            |row| {
                let read = || {
                    Ok([
                        text_of(row, 1, "trial_id")?,
                        text_of(row, 2, "start_time")?,
                        text_of(row, 3, "created_at")?,
                    ])
                };
                let shown = [set_aside_id(row, 1)?, shown_of(row, 2)?, shown_of(row, 3)?];
                // Found missed at a time that cannot be read: missed all the same.
                let missed_at = match row.get_ref(4)? {
                    ValueRef::Null => None,
                    ValueRef::Text(at) => Some(
                        std::str::from_utf8(at)
                            .ok()
                            .and_then(|at| parse_time(at).ok())
                            .unwrap_or_else(chrono::Utc::now),
                    ),
                    _ => Some(chrono::Utc::now()),
                };
                Ok((row.get(0)?, shown, read(), missed_at))
            },
        )
        .map_err(read)?;
        for (rowid, [id, start, created_at], columns, missed_at) in jobs {
            let parsed = columns.and_then(|[id, start, created_at]| {
                match (
                    TrialId::parse(&id),
                    StartTime::parse(&start),
                    parse_time(&created_at),
                ) {
                    (Ok(id), Ok(start), Ok(created_at)) => Ok(StoredJob {
                        id,
                        start,
                        created_at,
                        missed_at,
                    }),
                    (Err(e), _, _) => Err(e.to_string()),
                    (_, Err(e), _) => Err(format!("start time '{start}': {e}")),
                    (_, _, Err(e)) => Err(format!("created_at {e}")),
                }
            });
            let reason = match parsed {
                Ok(job) => {
                    loaded.jobs.push(job);
                    continue;
                }
                Err(e) => format!("{JOB_SET_ASIDE}: {e}"),
            };
            error!(trial = %id, reason = %reason, "a saved job cannot be read: set aside as Corrupt");
            let tx = self.conn.transaction().map_err(read)?;
            // It keeps its place in the listing, when it was scheduled, if that can be read.
            let now = time(chrono::Utc::now());
            let scheduled = if parse_time(&created_at).is_ok() {
                &created_at
            } else {
                &now
            };
            set_aside(&tx, &id, &reason, &start, scheduled, &now).map_err(read)?;
            exec(&tx, "DELETE FROM jobs WHERE rowid = ?1", params![rowid]).map_err(read)?;
            tx.commit().map_err(read)?;
            loaded.quarantined.push((id, reason));
        }

        let live = all_rows(&self.conn, LIVE_TRIALS, |row| {
            let (rowid, id, read) = LiveRow::from_row(row)?;
            let read = match row.get_ref(8)? {
                ValueRef::Integer(0 | 1) => read,
                _ => Err("unreadable record: live is neither 0 nor 1".to_owned()),
            };
            Ok((rowid, id, read))
        })
        .map_err(read)?;
        for (rowid, id, row) in live {
            let recovered = row.and_then(|row| row.record()).and_then(|record| {
                let events = events_of(&self.conn, &record.id).map_err(|e| e.to_string())?;
                let responses = responses_of(&self.conn, &record.id).map_err(|e| e.to_string())?;
                // Only whole numbers: a damaged one is no number to go on from.
                let last_event = self
                    .conn
                    .query_row(
                        "SELECT MAX(seq) FROM trial_events
                         WHERE trial_id = ?1 AND typeof(seq) = 'integer' AND seq >= 0",
                        params![record.id.as_str()],
                        |row| row.get::<_, Option<i64>>(0),
                    )
                    .map_err(|e| e.to_string())?;
                Ok(RecoveredTrial {
                    record,
                    events,
                    responses,
                    next_event: last_event
                        .and_then(|seq| u64::try_from(seq).ok())
                        .map_or(0, |seq| seq + 1),
                })
            });
            match recovered {
                Ok(trial) => {
                    // The listing's column follows the record read, whatever it holds.
                    let status = trial.record.lifecycle.engine_status().name();
                    self.conn
                        .execute(
                            "UPDATE trials SET engine_status = ?2
                             WHERE trial_id = ?1 AND engine_status IS NOT ?2",
                            params![id, status],
                        )
                        .map_err(read)?;
                    loaded.trials.push(trial);
                }
                Err(reason) => {
                    // Read as far as it can be: not UTF-8, it names nothing.
                    let raw: Option<String> = self
                        .conn
                        .query_row(
                            "SELECT checkpoint FROM trials WHERE rowid = ?1",
                            params![rowid],
                            |row| Ok(text_of(row, 0, "checkpoint").ok()),
                        )
                        .optional()
                        .map_err(read)?
                        .flatten();
                    let reason = match raw.as_deref().and_then(codec::deployed_in) {
                        Some(left) => format!(
                            "{reason}; it may have left deployed {left}: undo that on the facility before deleting the record"
                        ),
                        None => reason,
                    };
                    error!(trial = %id, reason = %reason, "a trial's record cannot be read: set aside as Corrupt");
                    self.conn
                        .execute(
                            "UPDATE OR IGNORE trials SET engine_status = 'Corrupt', live = 0,
                                 status = NULL, failure = ?2, trial_id = ?3 WHERE rowid = ?1",
                            params![rowid, reason, id],
                        )
                        .map_err(read)?;
                    loaded.quarantined.push((id, reason));
                }
            }
        }

        let now = chrono::Utc::now().timestamp();
        self.conn
            .execute(
                "DELETE FROM revoked_tokens WHERE expires_at < ?1",
                params![now],
            )
            .map_err(read)?;
        let revoked = all_rows(
            &self.conn,
            "SELECT jti, expires_at FROM revoked_tokens",
            |row| {
                let expires_at = match row.get_ref(1)? {
                    ValueRef::Integer(at) => Some(at),
                    _ => None,
                };
                Ok((text_of(row, 0, "jti"), expires_at))
            },
        )
        .map_err(read)?;
        for (jti, expires_at) in revoked {
            match (jti, expires_at) {
                (Ok(jti), Some(at)) => loaded.revoked.push((jti, at)),
                (Ok(jti), None) => {
                    warn!("a revoked token's expiry cannot be read: it stays revoked for good");
                    loaded.revoked.push((jti, i64::MAX));
                }
                // No token has an id that is not text: nothing it could match.
                (Err(e), _) => warn!(error = %e, "a revocation that cannot be read is left out"),
            }
        }

        let unscheduled = all_rows(
            &self.conn,
            "SELECT trial_id, start_at FROM unscheduled",
            |row| Ok((text_of(row, 0, "trial_id"), text_of(row, 1, "start_at"))),
        )
        .map_err(read)?;
        for mark in unscheduled {
            match mark {
                (Ok(id), Ok(start)) => match (TrialId::parse(&id), parse_time(&start)) {
                    (Ok(id), Ok(start)) => loaded.unscheduled.push((id, start)),
                    // The registry's polling may schedule that trial again; nothing else is lost.
                    _ => {
                        warn!(trial = %id, "an unscheduled start time cannot be read: it is left out")
                    }
                },
                _ => warn!("an unscheduled start time cannot be read: it is left out"),
            }
        }

        let automatic = self
            .conn
            .query_row(
                "SELECT value FROM settings WHERE key = 'automatic'",
                [],
                |row| Ok(text_of(row, 0, "automatic")),
            )
            .optional()
            .map_err(read)?;
        loaded.automatic = match automatic.as_ref().map(|v| v.as_deref()) {
            None => None,
            Some(Ok("true")) => Some(true),
            Some(Ok("false")) => Some(false),
            Some(value) => {
                warn!(value = ?value, "the saved automatic scheduling switch cannot be read: the configured one is used");
                None
            }
        };
        Ok(loaded)
    }

    fn reader(&self) -> Result<Box<dyn Reader>, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI;
        let conn = match &self.location {
            Location::File(path) => Connection::open_with_flags(path, flags),
            Location::Memory(name) => Connection::open_with_flags(name, flags),
        }
        .map_err(|e| backend_error("cannot open a reader", e))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| backend_error("reader", e))?;
        Ok(Box::new(SqliteReader { conn }))
    }
}

/// A trial row as read, before it is checked.
struct LiveRow {
    trial_id: String,
    lifecycle: String,
    checkpoint: String,
    paused: bool,
    created_at: String,
    updated_at: String,
    ended_at: Option<String>,
}

impl LiveRow {
    /// The row's rowid, its trial id as it can be shown, and the row, or why a column of it
    /// cannot be read.
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, String, Result<Self, String>)> {
        let read = || {
            Ok(Self {
                trial_id: text_of(row, 1, "trial_id")?,
                lifecycle: text_of(row, 2, "lifecycle")?,
                checkpoint: text_of(row, 3, "checkpoint")?,
                paused: match row.get_ref(4) {
                    Ok(ValueRef::Integer(paused)) => paused != 0,
                    _ => return Err("paused is not a number".to_owned()),
                },
                created_at: text_of(row, 5, "created_at")?,
                updated_at: text_of(row, 6, "updated_at")?,
                ended_at: match row.get_ref(7) {
                    Ok(ValueRef::Null) => None,
                    _ => Some(text_of(row, 7, "ended_at")?),
                },
            })
        };
        let read = read().map_err(|e| format!("unreadable record: {e}"));
        Ok((row.get(0)?, set_aside_id(row, 1)?, read))
    }

    fn record(&self) -> Result<TrialRecord, String> {
        let mut checkpoint = decode_checkpoint(&self.checkpoint)?;
        // The pause is saved on its own, the moment the operator asks.
        checkpoint.paused = self.paused;
        Ok(TrialRecord {
            id: TrialId::parse(&self.trial_id).map_err(|e| e.to_string())?,
            lifecycle: codec::parse_lifecycle(&self.lifecycle)?,
            checkpoint,
            created_at: parse_time(&self.created_at)?,
            updated_at: parse_time(&self.updated_at)?,
            ended_at: self.ended_at.as_deref().map(parse_time).transpose()?,
        })
    }
}

fn events_of(conn: &Connection, id: &TrialId) -> Result<Vec<TrialEvent>, StoreError> {
    let read = |e: rusqlite::Error| read_error("read events", &e);
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, at, kind, step, detail, duration_ms FROM trial_events
             WHERE trial_id = ?1 ORDER BY seq",
        )
        .map_err(read)?;
    let rows = stmt
        .query_map(params![id.as_str()], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, Option<String>>(3)?,
                row.get::<_, Option<String>>(4)?,
                row.get::<_, Option<i64>>(5)?,
            ))
        })
        .map_err(read)?;
    let mut events = Vec::new();
    for row in rows {
        let Some((seq, at, kind, step, detail, duration_ms)) = readable(id, "event", row)? else {
            continue;
        };
        let Some(event) = EventKind::parse(&kind) else {
            // Written by a later release: this one cannot show it.
            warn!(trial = %id, kind = %kind, "an event of an unknown kind is left out");
            continue;
        };
        let Some(at) = readable_time(id, "event", &at) else {
            continue;
        };
        events.push(TrialEvent {
            seq: seq as u64,
            at,
            event,
            step,
            detail,
            duration_ms: duration_ms.map(|d| d as u64),
        });
    }
    Ok(events)
}

fn responses_of(conn: &Connection, id: &TrialId) -> Result<Vec<ResponseRecord>, StoreError> {
    let read = |e: rusqlite::Error| read_error("read responses", &e);
    let mut stmt = conn
        .prepare_cached(
            "SELECT step, service, method, path, status, body, error, duration_ms, attempt, at,
                 seq
             FROM trial_responses WHERE trial_id = ?1 ORDER BY seq",
        )
        .map_err(read)?;
    let rows = stmt
        .query_map(params![id.as_str()], |row| {
            Ok((
                ResponseRecord {
                    step: row.get(0)?,
                    service: row.get(1)?,
                    method: row.get(2)?,
                    path: row.get(3)?,
                    status: row.get(4)?,
                    body: None,
                    error: row.get(6)?,
                    duration_ms: row.get::<_, i64>(7)? as u64,
                    attempt: row.get(8)?,
                    at: chrono::Utc::now(),
                },
                row.get::<_, Option<String>>(5)?,
                row.get::<_, String>(9)?,
                // Read to be sure it is a whole number: a damaged one leaves the row out.
                row.get::<_, i64>(10)?,
            ))
        })
        .map_err(read)?;
    let mut responses = Vec::new();
    for row in rows {
        let Some((mut record, body, at, _)) = readable(id, "response", row)? else {
            continue;
        };
        let Some(at) = readable_time(id, "response", &at) else {
            continue;
        };
        record.body = body.and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok());
        record.at = at;
        responses.push(record);
    }
    Ok(responses)
}

/// A journal row as read; `None` for one holding a value this release cannot read (a text
/// where a number belongs), which is left out with a warning rather than making the trial's
/// whole history unreadable. A failure of the database itself fails the read.
fn readable<T>(
    id: &TrialId,
    what: &str,
    row: rusqlite::Result<T>,
) -> Result<Option<T>, StoreError> {
    match row {
        Ok(row) => Ok(Some(row)),
        Err(e) if unreadable(&e) => {
            warn!(trial = %id, error = %e, "an unreadable {what} is left out");
            Ok(None)
        }
        Err(e) => Err(read_error(&format!("read {what}s"), &e)),
    }
}

/// Whether a row could not be read for what one of its columns holds (the row is left out),
/// rather than for the store (the read fails).
fn unreadable(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::IntegralValueOutOfRange(..)
            | rusqlite::Error::Utf8Error(..)
    )
}

/// A journal row's time; `None` (left out, with a warning) if it is not one.
fn readable_time(id: &TrialId, what: &str, at: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    parse_time(at)
        .inspect_err(|e| warn!(trial = %id, error = %e, "an unreadable {what} is left out"))
        .ok()
}

/// A read-only connection for the API's queries.
struct SqliteReader {
    conn: Connection,
}

const LISTED: &str = "trial_id, engine_status, status, state, step, waiting_for, created_at, updated_at, ended_at, failure";

/// A listed status as the store wrote it; one it does not know (written by hand, or by a
/// later release) is read as `Corrupt`, with the reason, and the `Corrupt` filter finds it.
fn listed_status(name: &str) -> Result<ListedStatus, String> {
    ListedStatus::from_name(name)
        .ok_or_else(|| format!("unreadable record: unknown engine status '{name}'"))
}

/// A listed row; `job`: a scheduled job's, with its start time in column 10.
fn listed(row: &rusqlite::Row<'_>, job: bool) -> rusqlite::Result<ListedTrial> {
    // A column that is not text lists the row as `Corrupt`, saying which, rather than failing
    // the whole listing; what it holds is shown as far as it can be.
    let mut unreadable = None;
    let mut text = |i: usize, name: &str| -> rusqlite::Result<Option<String>> {
        if matches!(row.get_ref(i)?, ValueRef::Null) {
            return Ok(None);
        }
        match text_of(row, i, name) {
            Ok(text) => Ok(Some(text)),
            Err(e) => {
                unreadable.get_or_insert(e);
                shown_of(row, i).map(Some)
            }
        }
    };
    let mut listed = ListedTrial {
        trial_id: text(0, "trial_id")?.unwrap_or_default(),
        engine_status: ListedStatus::Corrupt,
        status: text(2, "status")?,
        state: text(3, "state")?,
        step: text(4, "step")?,
        waiting_for: text(5, "waiting_for")?,
        created_at: text(6, "created_at")?.unwrap_or_default(),
        updated_at: text(7, "updated_at")?.unwrap_or_default(),
        ended_at: text(8, "ended_at")?,
        failure: text(9, "failure")?,
        start_time: if job { text(10, "start_time")? } else { None },
        // Known of the engines in memory, which the listing asks (every live trial is one).
        paused: false,
        aborting: false,
    };
    let engine_status = text(1, "engine_status")?.unwrap_or_default();
    match (unreadable, listed_status(&engine_status)) {
        (Some(e), _) => listed.failure = Some(format!("unreadable record: {e}")),
        (None, Err(reason)) => listed.failure = Some(reason),
        (None, Ok(status)) => listed.engine_status = status,
    }
    Ok(listed)
}

/// The `WHERE` of a listing query over one table, with its parameters.
fn listing_filter(query: &TrialQuery, statuses: &[ListedStatus]) -> (String, Vec<String>) {
    let mut clauses = Vec::new();
    let mut values = Vec::new();
    if !statuses.is_empty() {
        let marks = vec!["?"; statuses.len()].join(", ");
        let mut clause = format!("engine_status IN ({marks})");
        values.extend(statuses.iter().map(|s| s.name().to_owned()));
        // A status the store does not know is listed as `Corrupt` (see `listed_status`).
        if statuses.contains(&ListedStatus::Corrupt) {
            let known = vec!["?"; ListedStatus::ALL.len()].join(", ");
            clause = format!("({clause} OR engine_status NOT IN ({known}))");
            values.extend(ListedStatus::ALL.iter().map(|s| s.name().to_owned()));
        }
        clauses.push(clause);
    }
    if let Some(part) = &query.id_contains {
        // GLOB, not LIKE: trial ids are case-sensitive. The part holds only trial-id
        // characters, none of them a GLOB wildcard.
        clauses.push("trial_id GLOB ?".to_owned());
        values.push(format!("*{part}*"));
    }
    if let Some((created_at, trial_id)) = &query.after {
        clauses.push("(created_at < ? OR (created_at = ? AND trial_id < ?))".to_owned());
        values.extend([created_at.clone(), created_at.clone(), trial_id.clone()]);
    }
    let filter = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    (filter, values)
}

/// The status a job is listed with.
const JOB_STATUS: &str = "CASE WHEN missed_at IS NULL THEN 'Scheduled' ELSE 'Missed' END";

impl Reader for SqliteReader {
    fn trials(&mut self, query: &TrialQuery) -> Result<Vec<ListedTrial>, StoreError> {
        let read = |e: rusqlite::Error| read_error("list trials", &e);
        let want =
            |status: ListedStatus| query.statuses.is_empty() || query.statuses.contains(&status);
        let limit = (query.limit + 1) as i64;
        let mut rows = Vec::new();
        // Jobs are listed from their own table.
        let trial_statuses: Vec<ListedStatus> = query
            .statuses
            .iter()
            .copied()
            .filter(|s| !matches!(s, ListedStatus::Scheduled | ListedStatus::Missed))
            .collect();
        if query.statuses.is_empty() || !trial_statuses.is_empty() {
            let (filter, mut values) = listing_filter(query, &trial_statuses);
            values.push(limit.to_string());
            let sql = format!(
                "SELECT {LISTED} FROM trials {filter}
                 ORDER BY created_at DESC, trial_id DESC LIMIT CAST(? AS INTEGER)"
            );
            let mut stmt = self.conn.prepare(&sql).map_err(read)?;
            let found = stmt
                .query_map(params_from_iter(values), |row| listed(row, false))
                .map_err(read)?;
            for row in found {
                rows.push(row.map_err(read)?);
            }
        }
        let (scheduled, missed) = (want(ListedStatus::Scheduled), want(ListedStatus::Missed));
        if scheduled || missed || !query.fired_jobs.is_empty() {
            let (mut filter, mut values) = listing_filter(query, &[]);
            if !(scheduled && missed) {
                let mut kept = Vec::new();
                if scheduled {
                    kept.push("missed_at IS NULL".to_owned());
                }
                if missed {
                    kept.push("missed_at IS NOT NULL".to_owned());
                }
                if !scheduled && !query.fired_jobs.is_empty() {
                    let marks = vec!["?"; query.fired_jobs.len()].join(", ");
                    kept.push(format!("(missed_at IS NULL AND trial_id IN ({marks}))"));
                    values.extend(query.fired_jobs.iter().cloned());
                }
                let joint = if filter.is_empty() { "WHERE" } else { " AND" };
                filter.push_str(&format!("{joint} ({})", kept.join(" OR ")));
            }
            values.push(limit.to_string());
            let sql = format!(
                "SELECT trial_id, {JOB_STATUS}, NULL, NULL, NULL, NULL, created_at, created_at,
                     NULL, NULL, start_time
                 FROM jobs {filter}
                 ORDER BY created_at DESC, trial_id DESC LIMIT CAST(? AS INTEGER)"
            );
            let mut stmt = self.conn.prepare(&sql).map_err(read)?;
            let found = stmt
                .query_map(params_from_iter(values), |row| listed(row, true))
                .map_err(read)?;
            for row in found {
                rows.push(row.map_err(read)?);
            }
        }
        rows.sort_by(|a, b| (&b.created_at, &b.trial_id).cmp(&(&a.created_at, &a.trial_id)));
        rows.truncate(query.limit + 1);
        Ok(rows)
    }

    fn counts(
        &mut self,
        id_contains: Option<&str>,
    ) -> Result<Vec<(ListedStatus, u64)>, StoreError> {
        let read = |e: rusqlite::Error| read_error("count trials", &e);
        let query = TrialQuery {
            id_contains: id_contains.map(str::to_owned),
            ..TrialQuery::default()
        };
        let (filter, values) = listing_filter(&query, &[]);
        let sql = format!(
            "SELECT engine_status, COUNT(*) FROM trials {filter} GROUP BY engine_status
             UNION ALL SELECT {JOB_STATUS}, COUNT(*) FROM jobs {filter} GROUP BY 1"
        );
        let mut stmt = self.conn.prepare(&sql).map_err(read)?;
        let both = values.iter().chain(values.iter());
        let rows = stmt
            .query_map(params_from_iter(both), |row| {
                // A status that is not text is counted as it is listed: `Corrupt`.
                let status = text_of(row, 0, "engine_status")
                    .and_then(|name| listed_status(&name))
                    .unwrap_or(ListedStatus::Corrupt);
                Ok((status, row.get::<_, i64>(1)?))
            })
            .map_err(read)?;
        let mut counts: Vec<(ListedStatus, u64)> = Vec::new();
        for row in rows {
            let (status, count) = row.map_err(read)?;
            let count = u64::try_from(count).unwrap_or(0);
            match counts.iter_mut().find(|(counted, _)| *counted == status) {
                Some((_, total)) => *total += count,
                None if count > 0 => counts.push((status, count)),
                None => {}
            }
        }
        Ok(counts)
    }

    fn trial(&mut self, id: &TrialId) -> Result<Option<StoredTrial>, StoreError> {
        let read = |e: rusqlite::Error| read_error("read trial", &e);
        let row = self
            .conn
            .query_row(
                "SELECT rowid, trial_id, lifecycle, checkpoint, paused, created_at, updated_at,
                     ended_at, engine_status, failure
                 FROM trials WHERE trial_id = ?1",
                params![id.as_str()],
                |row| {
                    let (_, _, read) = LiveRow::from_row(row)?;
                    Ok((read, shown_of(row, 8)?, shown_of(row, 9)?))
                },
            )
            .optional()
            .map_err(read)?;
        Ok(row.map(|(row, engine_status, failure)| {
            match listed_status(&engine_status) {
                Ok(ListedStatus::Corrupt) => {
                    let ran = !failure.starts_with(JOB_SET_ASIDE);
                    return StoredTrial::Corrupt {
                        reason: failure,
                        ran,
                    };
                }
                Err(reason) => return StoredTrial::Corrupt { reason, ran: true },
                Ok(_) => {}
            }
            match row.and_then(|row| row.record()) {
                Ok(record) => StoredTrial::Readable(Box::new(record)),
                Err(reason) => StoredTrial::Corrupt { reason, ran: true },
            }
        }))
    }

    fn ids(&mut self) -> Result<Vec<String>, StoreError> {
        let read = |e: rusqlite::Error| read_error("read trial ids", &e);
        let mut stmt = (self.conn)
            .prepare("SELECT trial_id FROM trials UNION SELECT trial_id FROM jobs")
            .map_err(read)?;
        let ids = stmt
            .query_map([], |row| row.get(0))
            .map_err(read)?
            .collect::<Result<_, _>>()
            .map_err(read)?;
        Ok(ids)
    }

    fn events(&mut self, id: &TrialId) -> Result<Vec<TrialEvent>, StoreError> {
        events_of(&self.conn, id)
    }

    fn responses(&mut self, id: &TrialId) -> Result<Vec<ResponseRecord>, StoreError> {
        responses_of(&self.conn, id)
    }

    fn audit(&mut self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let read = |e: rusqlite::Error| read_error("read audit", &e);
        let mut clauses = Vec::new();
        let mut values: Vec<String> = Vec::new();
        if let Some(trial) = &query.trial_id {
            clauses.push("trial_id = ?");
            values.push(trial.clone());
        }
        if let Some(actor) = &query.actor {
            clauses.push("actor = ?");
            values.push(actor.clone());
        }
        if let Some(before) = query.before {
            clauses.push("seq < CAST(? AS INTEGER)");
            values.push(before.to_string());
        }
        values.push((query.limit + 1).to_string());
        let filter = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let sql = format!(
            "SELECT seq, at, actor, role, action, trial_id, outcome, detail, remote_addr
             FROM audit {filter} ORDER BY seq DESC LIMIT CAST(? AS INTEGER)"
        );
        let mut stmt = self.conn.prepare(&sql).map_err(read)?;
        let rows = stmt
            .query_map(params_from_iter(values), |row| {
                Ok((
                    AuditEntry {
                        seq: row.get(0)?,
                        at: chrono::Utc::now(),
                        actor: row.get(2)?,
                        role: row.get(3)?,
                        action: row.get(4)?,
                        trial_id: row.get(5)?,
                        outcome: row.get(6)?,
                        detail: row.get(7)?,
                        remote_addr: row.get(8)?,
                    },
                    row.get::<_, String>(1)?,
                ))
            })
            .map_err(read)?;
        let mut entries = Vec::new();
        for row in rows {
            let (mut entry, at) = match row {
                Ok(row) => row,
                Err(e) if unreadable(&e) => {
                    warn!(error = %e, "an unreadable audit entry is left out");
                    continue;
                }
                Err(e) => return Err(read(e)),
            };
            let Ok(at) = parse_time(&at).inspect_err(|e| {
                warn!(seq = entry.seq, error = %e, "an unreadable audit entry is left out");
            }) else {
                continue;
            };
            entry.at = at;
            entries.push(entry);
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests;
