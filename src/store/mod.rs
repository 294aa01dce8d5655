//! Durable records (SPEC §12): scheduled jobs, each trial's checkpoint, its events and
//! recorded responses (appended once each, as they happen), token revocations, the
//! automatic-scheduling switch and the audit log.
//!
//! A [`Backend`] is what a database implements: apply a batch of [`Op`]s in one transaction,
//! load what start-up needs (live trials only), and open a [`Reader`] for queries. [`Store`]
//! runs one backend on a dedicated writer thread: callers `await` their write (or
//! [`Store::submit`] it when nothing waits on it: a journal row, handed over with the next
//! awaited write, or committed alone when none comes within 20 ms), writes are applied in the
//! order they were submitted, and writes that queue up meanwhile are committed together (group
//! commit). One thread whatever the number of trials, and no blocking on the async threads.
//! Reads go to a separate connection on the blocking pool.
//!
//! The records are plain data with the store's own names (`codec.rs`): renaming a Rust type
//! or variant changes nothing on disk.

pub mod codec;
mod legacy;
pub mod sqlite;

use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::oneshot;
use tracing::{error, warn};
use utoipa::ToSchema;

use crate::domain::{StartTime, TrialId};
use crate::engine::sequence::{Signal, Wait};
use crate::engine::state::{
    Checkpoint, EngineStatus, Lifecycle, Progress, ResponseRecord, TrialEvent,
};
use crate::telemetry::panic_message;

/// The name of the writer thread.
pub const WRITER_THREAD: &str = "lcm-store";
// Linux keeps 15 bytes of a thread's name: a longer one would be cut where it is looked up.
const _: () = assert!(WRITER_THREAD.len() <= 15);

/// Why the store could not do something.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Backend(String),
    /// The store cannot write now, whatever is written (a full or read-only disk, an I/O
    /// error): it may again later.
    #[error("store: {0}")]
    Unwritable(String),
    #[error("store: the writer thread has stopped")]
    Closed,
    /// A query failed: nothing was changed, the answer is just not known.
    #[error("store: {0}")]
    Unreadable(String),
    /// The database file is damaged where a query read it: asking again does not help.
    #[error("store: {0}")]
    Damaged(String),
}

/// A trial as the store keeps it: its checkpoint and where it stands.
#[derive(Debug, Clone, PartialEq)]
pub struct TrialRecord {
    pub id: TrialId,
    /// One of `Running`, `Waiting`, `Failed`, `Finished`, `Aborted`.
    pub lifecycle: Lifecycle,
    pub checkpoint: Checkpoint,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
}

/// One entry of the audit log (SPEC §15).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct AuditEntry {
    /// Its place in the log, assigned by the store (0 before it is written): later entries
    /// have larger numbers.
    pub seq: i64,
    /// When the request was answered.
    pub at: DateTime<Utc>,
    /// Who asked: the key's name, `callback:<trial id>` for a callback token, or `anonymous`
    /// when no credential was recognised.
    pub actor: String,
    /// The key's role (`viewer`, `operator`, `admin`); none for a callback token or an
    /// unrecognised caller.
    #[schema(required = true)]
    pub role: Option<String>,
    /// What was asked, e.g. `POST /trial/{trial_id}/abort`.
    pub action: String,
    /// The trial the request named, in its path, query or body, as the client wrote it
    /// (valid or not, cut after 200 characters); none if it named none.
    #[schema(required = true)]
    pub trial_id: Option<String>,
    /// The HTTP status of the answer.
    pub outcome: u16,
    /// The answer's `message` or `detail`, if it had one.
    #[schema(required = true)]
    pub detail: Option<String>,
    /// The client's address and port.
    #[schema(required = true)]
    pub remote_addr: Option<String>,
}

/// One change to the durable state.
#[derive(Debug, Clone)]
pub enum Op {
    /// Saves a job; changes nothing (counts 0) if the trial has a record already.
    PutJob {
        id: TrialId,
        start: StartTime,
        created_at: DateTime<Utc>,
    },
    DeleteJob {
        id: TrialId,
    },
    /// Keeps a job whose start time passed while the service was down, beyond the misfire
    /// grace, as missed: listed until it is scheduled again (a `PutJob`) or removed.
    MarkMissed {
        id: TrialId,
        at: DateTime<Utc>,
    },
    /// Removes a job kept as missed (counts 0, and changes nothing, if the trial's job has been
    /// scheduled again meanwhile).
    DeleteMissedJob {
        id: TrialId,
    },
    /// Removes the job an operator unscheduled and remembers its start time, so that polling
    /// the registry does not schedule the trial at that time again (a later job of the trial
    /// forgets it); counts the jobs removed. Marks of start times passed at `at` go.
    Unschedule {
        id: TrialId,
        start: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// Saves a trial's checkpoint and where it stands; a trial supersedes its job.
    PutTrial(Box<TrialRecord>),
    /// Saves the operator's pause on its own, at once, whatever the executor is doing.
    SetPaused {
        id: TrialId,
        paused: bool,
    },
    /// Saves the early signals kept while a step runs, at once, before they are answered: an
    /// accepted callback outlives a restart in the middle of the step.
    SetHeld {
        id: TrialId,
        held: Vec<(Wait, Signal)>,
    },
    /// Saves the progress a component reported at the trial's waiting point, at once: it is
    /// shown until the wait ends, across restarts.
    SetProgress {
        id: TrialId,
        progress: Progress,
    },
    AppendEvent {
        id: TrialId,
        event: Arc<TrialEvent>,
    },
    /// Appends a response after the trial's last one.
    AppendResponse {
        id: TrialId,
        record: Arc<ResponseRecord>,
    },
    /// Forgets a trial: its record, events and responses (counts the records removed).
    DeleteTrial {
        id: TrialId,
    },
    /// Removes up to `at_most` finished and aborted trials that ended before this instant,
    /// the earliest ended first, and no more than fit in `rows_at_most` events and responses
    /// (but at least one, whatever it holds); counts them. A purge goes in such bounded
    /// steps, so that the writes of running trials are never held up long and the write-ahead
    /// log stays small, however long the purged trials' histories are.
    Purge {
        ended_before: DateTime<Utc>,
        at_most: usize,
        rows_at_most: usize,
    },
    /// Removes up to `at_most` audit entries written before this instant, the oldest first
    /// (counts them).
    PurgeAudit {
        before: DateTime<Utc>,
        at_most: usize,
    },
    Revoke {
        jti: String,
        exp: i64,
    },
    SetAutomatic(bool),
    Audit(Box<AuditEntry>),
    /// The audit entry of the operation just before it in the same write, written only if
    /// that operation changed something (a refused change leaves the refusal's entry).
    AuditIfChanged(Box<AuditEntry>),
}

impl Op {
    /// What the operation does, for logs (a record holds secrets: never log it whole).
    pub fn kind(&self) -> &'static str {
        match self {
            Op::PutJob { .. } => "put job",
            Op::DeleteJob { .. } => "delete job",
            Op::Unschedule { .. } => "unschedule job",
            Op::MarkMissed { .. } => "mark job missed",
            Op::DeleteMissedJob { .. } => "delete missed job",
            Op::PutTrial(_) => "put trial",
            Op::SetPaused { .. } => "set paused",
            Op::SetHeld { .. } => "set held signals",
            Op::SetProgress { .. } => "set progress",
            Op::AppendEvent { .. } => "append event",
            Op::AppendResponse { .. } => "append response",
            Op::DeleteTrial { .. } => "delete trial",
            Op::Purge { .. } => "purge ended trials",
            Op::PurgeAudit { .. } => "purge audit entries",
            Op::Revoke { .. } => "revoke token",
            Op::SetAutomatic(_) => "set automatic scheduling",
            Op::Audit(_) | Op::AuditIfChanged(_) => "append audit entry",
        }
    }
}

/// A saved job.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredJob {
    pub id: TrialId,
    pub start: StartTime,
    /// When it was scheduled.
    pub created_at: DateTime<Utc>,
    /// When a start found it missed (see [`Op::MarkMissed`]).
    pub missed_at: Option<DateTime<Utc>>,
}

/// A live trial brought back at start-up, with its journal so far.
#[derive(Debug, Clone)]
pub struct RecoveredTrial {
    pub record: TrialRecord,
    pub events: Vec<TrialEvent>,
    pub responses: Vec<ResponseRecord>,
    /// The number the trial's next event takes: one past the last saved, also when that one
    /// could not be read.
    pub next_event: u64,
}

/// What start-up reads: live trials only, however many have ended.
#[derive(Debug, Default)]
pub struct Loaded {
    pub jobs: Vec<StoredJob>,
    pub trials: Vec<RecoveredTrial>,
    /// Revoked token ids that have not expired, with their expiry.
    pub revoked: Vec<(String, i64)>,
    pub automatic: Option<bool>,
    /// The trials an operator unscheduled, with the start time each had.
    pub unscheduled: Vec<(TrialId, DateTime<Utc>)>,
    /// Records that could not be read, set aside as `Corrupt`: `(trial id, reason)`.
    pub quarantined: Vec<(String, String)>,
}

/// The status a trial is listed with (SPEC §12): its engine's, `Scheduled` for a job that has
/// not started, `Corrupt` for a record set aside. Its name is how the store and the API write
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
pub enum ListedStatus {
    Active,
    Failed,
    Finished,
    Aborted,
    Stopped,
    Scheduled,
    /// A job whose start time passed while the service was down, beyond
    /// `scheduler.misfire_grace_secs`: kept until it is scheduled again or removed.
    Missed,
    Corrupt,
}

impl ListedStatus {
    const ALL: [ListedStatus; 8] = [
        ListedStatus::Active,
        ListedStatus::Failed,
        ListedStatus::Finished,
        ListedStatus::Aborted,
        ListedStatus::Stopped,
        ListedStatus::Scheduled,
        ListedStatus::Missed,
        ListedStatus::Corrupt,
    ];

    /// The statuses a listing can filter on: those a stored record or a job has (an engine
    /// is `Stopped` only in memory, while the service stops).
    pub fn filters() -> impl Iterator<Item = ListedStatus> {
        Self::ALL
            .into_iter()
            .filter(|status| *status != ListedStatus::Stopped)
    }

    pub fn name(self) -> &'static str {
        match self {
            ListedStatus::Active => "Active",
            ListedStatus::Failed => "Failed",
            ListedStatus::Finished => "Finished",
            ListedStatus::Aborted => "Aborted",
            ListedStatus::Stopped => "Stopped",
            ListedStatus::Scheduled => "Scheduled",
            ListedStatus::Missed => "Missed",
            ListedStatus::Corrupt => "Corrupt",
        }
    }

    /// The status named exactly `name`, as the store writes it.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.name() == name)
    }

    /// The status named `name`, in any case.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|status| status.name().eq_ignore_ascii_case(name))
    }
}

impl From<EngineStatus> for ListedStatus {
    fn from(status: EngineStatus) -> Self {
        match status {
            EngineStatus::Active => ListedStatus::Active,
            EngineStatus::Failed => ListedStatus::Failed,
            EngineStatus::Finished => ListedStatus::Finished,
            EngineStatus::Aborted => ListedStatus::Aborted,
            EngineStatus::Stopped => ListedStatus::Stopped,
        }
    }
}

/// Which trials `GET /trials` wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrialQuery {
    /// The statuses to keep; empty keeps all.
    pub statuses: Vec<ListedStatus>,
    /// Keep ids containing this (validated: only trial-id characters).
    pub id_contains: Option<String>,
    /// Rows strictly after this `(created_at, trial_id)` in newest-first order.
    pub after: Option<(String, String)>,
    /// Jobs to list even when `Scheduled` is not asked for: those that fired while their
    /// trial's first record could not be saved (the caller shows them as they run).
    pub fired_jobs: Vec<String>,
    pub limit: usize,
}

/// One row of the trial listing, as stored (and, with an engine's live state laid over it,
/// as `GET /trials` answers it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ListedTrial {
    /// The trial's id.
    pub trial_id: String,
    /// The engine's status; `Scheduled` for a job not started yet, `Corrupt` for a record
    /// set aside because it cannot be read.
    pub engine_status: ListedStatus,
    /// The executor status (none for a scheduled job or a corrupt record).
    #[schema(required = true)]
    pub status: Option<String>,
    /// The current step, or `Waiting` at a waiting point or held by a pause.
    #[schema(required = true)]
    pub state: Option<String>,
    /// The step the executor is at; none at a waiting point.
    #[schema(required = true)]
    pub step: Option<String>,
    /// What the engine waits for, while it waits.
    #[schema(required = true)]
    pub waiting_for: Option<String>,
    /// When the trial was scheduled or its engine created (RFC 3339, UTC).
    #[schema(format = DateTime)]
    pub created_at: String,
    /// When its record last changed.
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// When the trial ended (finished or aborted).
    #[schema(required = true, format = DateTime)]
    pub ended_at: Option<String>,
    /// Why the trial failed, or why its record was set aside.
    #[schema(required = true)]
    pub failure: Option<String>,
    /// A scheduled job's start time, as given.
    #[schema(required = true)]
    pub start_time: Option<String>,
    /// The operator has paused the trial (live trials only).
    pub paused: bool,
    /// The trial is being aborted: its clean-up runs, or waits for its failure's report
    /// (live and failed trials only).
    pub aborting: bool,
}

/// A trial read back from the store: readable, or set aside as corrupt.
#[derive(Debug, Clone)]
pub enum StoredTrial {
    Readable(Box<TrialRecord>),
    /// `ran`: it is the record of a trial that may have run, not of a scheduled job that never
    /// started.
    Corrupt {
        reason: String,
        ran: bool,
    },
}

/// Which audit entries `GET /audit` wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub trial_id: Option<String>,
    pub actor: Option<String>,
    /// Entries with a `seq` below this (newest first).
    pub before: Option<i64>,
    pub limit: usize,
}

/// What a database must do to hold the LCM's state.
pub trait Backend: Send + 'static {
    /// Applies the operations in one transaction, all or nothing; returns, per operation,
    /// how many records it changed.
    fn apply(&mut self, ops: &[Op]) -> Result<Vec<usize>, StoreError>;
    /// Reads what start-up needs: jobs, live trials with their journals, revocations, the
    /// switch. A record that cannot be read is set aside (quarantined), not an error.
    fn load(&mut self) -> Result<Loaded, StoreError>;
    /// Opens a separate connection for queries.
    fn reader(&self) -> Result<Box<dyn Reader>, StoreError>;
    /// Whether writes could be made, checked while none comes (a database file removed
    /// under the service): `Err` says why not.
    fn check(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Leaves everything committed in the database itself, with nothing in a log beside it
    /// (at shutdown): a copy of the database alone then holds the store.
    fn close(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The queries of the API and the console.
pub trait Reader: Send + 'static {
    /// One page of the listing, newest first; at most `limit + 1` rows (one more than asked
    /// tells that there is a next page).
    fn trials(&mut self, query: &TrialQuery) -> Result<Vec<ListedTrial>, StoreError>;
    /// How many trials have each engine status (scheduled jobs as `Scheduled`), among those
    /// whose id contains `id_contains` if given.
    fn counts(&mut self, id_contains: Option<&str>)
    -> Result<Vec<(ListedStatus, u64)>, StoreError>;
    /// One trial's record.
    fn trial(&mut self, id: &TrialId) -> Result<Option<StoredTrial>, StoreError>;
    /// The ids of every trial and job in the store.
    fn ids(&mut self) -> Result<Vec<String>, StoreError>;
    /// A trial's events, in order.
    fn events(&mut self, id: &TrialId) -> Result<Vec<TrialEvent>, StoreError>;
    /// A trial's responses, in order.
    fn responses(&mut self, id: &TrialId) -> Result<Vec<ResponseRecord>, StoreError>;
    /// Audit entries, newest first; at most `limit + 1`.
    fn audit(&mut self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError>;
}

type Reply = oneshot::Sender<Result<usize, StoreError>>;
/// Operations applied together, all or nothing, and who waits for the first one's count.
type Request = (Vec<Op>, Reply);

/// What the writer thread is handed at once: the rows submitted since it was last handed any
/// (each its own write, nobody waiting), then at most one request.
struct Handover {
    rows: Vec<Op>,
    request: Option<Request>,
    /// Who waits for the backend to fold its log into the database file, once what was
    /// handed over before is committed (see [`Store::close`]).
    close: Option<oneshot::Sender<Result<(), StoreError>>>,
}

/// The handle to the writer thread and the reader (cheap to clone).
#[derive(Clone)]
pub struct Store {
    writer: mpsc::Sender<Handover>,
    /// Rows submitted and not handed over yet, in order. They go with the next request, or
    /// the writer takes them itself when none comes within [`ROWS_LINGER`]: a trial's rows
    /// ride with its checkpoint instead of waking the writer one by one.
    rows: Arc<Mutex<Vec<Op>>>,
    reader: Arc<Mutex<Box<dyn Reader>>>,
    /// Why the writer's last commit failed, and since when they fail; `None` while they
    /// succeed.
    failing: Arc<Mutex<Option<WriteFailure>>>,
}

/// The store's writes have been failing (a full or read-only disk, the file removed): what
/// `/status` shows, while `lcm_store_writable` is 0.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WriteFailure {
    /// When the first of the failing commits failed.
    pub since: DateTime<Utc>,
    /// Why the last one failed.
    pub error: String,
}

impl Store {
    /// Loads the backend's state and starts its writer thread.
    pub fn start(backend: impl Backend) -> Result<(Self, Loaded), StoreError> {
        Self::start_lingering(backend, ROWS_LINGER)
    }

    /// [`Store::start`], with rows handed over alone waiting up to `linger` for a request.
    fn start_lingering(
        mut backend: impl Backend,
        linger: Duration,
    ) -> Result<(Self, Loaded), StoreError> {
        let loaded = backend.load()?;
        let reader = backend.reader()?;
        let (writer, queue) = mpsc::channel::<Handover>();
        let rows = Arc::new(Mutex::new(Vec::new()));
        let failing = Arc::new(Mutex::new(None));
        let (pending, told) = (rows.clone(), failing.clone());
        thread::Builder::new()
            .name(WRITER_THREAD.to_owned())
            .spawn(move || write_loop(backend, &queue, &pending, linger, &told))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        Ok((
            Self {
                writer,
                rows,
                reader: Arc::new(Mutex::new(reader)),
                failing,
            },
            loaded,
        ))
    }

    /// Why the store's writes fail, while they do.
    pub fn write_failure(&self) -> Option<WriteFailure> {
        lock(&self.failing).clone()
    }

    /// Queues one change at once (so writes queued under a lock keep that lock's order) and
    /// returns a future of how many records it changed, ready once it is committed.
    pub fn write(
        &self,
        op: Op,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send + 'static + use<> {
        self.write_audited(op, None)
    }

    /// [`Store::write`] with the audit entry of the request that made the change, committed
    /// in the same transaction: both or neither.
    pub fn write_audited(
        &self,
        op: Op,
        audit: Option<AuditEntry>,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send + 'static + use<> {
        let mut ops = vec![op];
        ops.extend(audit.map(|entry| Op::Audit(Box::new(entry))));
        self.write_all(ops)
    }

    /// Applies `ops` in one transaction, all or nothing; returns a future of how many records
    /// the first one changed, ready once it is committed.
    pub fn write_all(
        &self,
        ops: Vec<Op>,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send + 'static + use<> {
        let (reply, done) = oneshot::channel();
        let queued = {
            let mut rows = lock(&self.rows);
            self.writer.send(Handover {
                rows: std::mem::take(&mut *rows),
                request: Some((ops, reply)),
                close: None,
            })
        };
        async move {
            queued.map_err(|_| StoreError::Closed)?;
            done.await.unwrap_or(Err(StoreError::Closed))
        }
    }

    /// Commits every row submitted so far: at shutdown, so that no journal or audit row is
    /// left waiting.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.write_all(Vec::new()).await.map(|_| ())
    }

    /// Commits every row submitted so far, then has the backend leave everything in its
    /// database file (SQLite folds its write-ahead log in): at shutdown, so that a copy of
    /// the file alone holds the store. Writes made afterwards are made as before.
    pub async fn close(&self) -> Result<(), StoreError> {
        self.flush().await?;
        let (reply, done) = oneshot::channel();
        let handover = Handover {
            rows: Vec::new(),
            request: None,
            close: Some(reply),
        };
        self.writer.send(handover).map_err(|_| StoreError::Closed)?;
        done.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Queues a change nobody waits for (a journal row): it is committed in order with the
    /// others, so a later awaited write finds it committed; a failure is logged.
    pub fn submit(&self, op: Op) {
        let mut rows = lock(&self.rows);
        rows.push(op);
        // The first row since the writer last took them: make sure it comes for them.
        if rows.len() == 1
            && self
                .writer
                .send(Handover {
                    rows: Vec::new(),
                    request: None,
                    close: None,
                })
                .is_err()
        {
            rows.clear();
            error!("store: the writer thread has stopped; a journal row is lost");
        }
    }

    /// Runs a query on the reader, off the async threads.
    pub async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&mut dyn Reader) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reader = self.reader.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut reader = reader.lock().unwrap_or_else(|p| p.into_inner());
            query(reader.as_mut())
        })
        .await
        .map_err(|e| StoreError::Unreadable(format!("the read did not run: {e}")))?;
        read.map_err(|e| match e {
            StoreError::Backend(e) => StoreError::Unreadable(e),
            other => other,
        })
    }
}

/// The count of the first operation of a write (0 for a write of none, a flush); a backend
/// that answers fewer counts than it was given operations is broken.
fn count_of(counts: &[usize], write: std::ops::Range<usize>) -> Result<usize, StoreError> {
    if write.is_empty() {
        return Ok(0);
    }
    counts.get(write.start).copied().ok_or_else(|| {
        StoreError::Backend(format!(
            "the store answered {} counts for more operations",
            counts.len()
        ))
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The writes committed together: their operations in one list, each write's as a range of
/// it, with who waits for it.
#[derive(Default)]
struct Batch {
    ops: Vec<Op>,
    writes: Vec<(std::ops::Range<usize>, Option<Reply>)>,
    closes: Vec<oneshot::Sender<Result<(), StoreError>>>,
}

impl Batch {
    fn rows(&mut self, rows: Vec<Op>) {
        for row in rows {
            self.writes.push((self.ops.len()..self.ops.len() + 1, None));
            self.ops.push(row);
        }
    }

    fn take(&mut self, handover: Handover) {
        self.rows(handover.rows);
        self.closes.extend(handover.close);
        if let Some((request, reply)) = handover.request {
            let start = self.ops.len();
            self.ops.extend(request);
            self.writes.push((start..self.ops.len(), Some(reply)));
        }
    }
}

/// Applies what it is handed, in order, committing whatever queued up meanwhile together
/// (group commit). Rows nobody waits for that could not be committed because the store could
/// not write wait for the next commit, before what came after them.
fn write_loop(
    mut backend: impl Backend,
    queue: &mpsc::Receiver<Handover>,
    rows: &Mutex<Vec<Op>>,
    linger: Duration,
    failing: &Mutex<Option<WriteFailure>>,
) {
    let mut waiting = Waiting::default();
    loop {
        let first = match queue.recv_timeout(IDLE_CHECK_EVERY) {
            Ok(first) => first,
            Err(mpsc::RecvTimeoutError::Timeout) if waiting.rows.is_empty() => {
                note(failing, backend.check(), false, &waiting);
                continue;
            }
            // Rows wait for the store: tried again now and then, whether a write comes or not.
            Err(mpsc::RecvTimeoutError::Timeout) => Handover {
                rows: Vec::new(),
                request: None,
                close: None,
            },
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = Batch::default();
        batch.rows(std::mem::take(&mut waiting.rows));
        batch.take(first);
        wait_for_request(&mut batch, queue, linger);
        {
            // Everything handed over before this lock is in the queue now, and the rows
            // submitted since come after it.
            let mut rows = lock(rows);
            while let Ok(handover) = queue.try_recv() {
                batch.take(handover);
            }
            batch.rows(std::mem::take(&mut *rows));
        }
        let closes = std::mem::take(&mut batch.closes);
        if !batch.writes.is_empty() {
            // A flush with nothing to write commits nothing: its success says nothing of a
            // full disk.
            let wrote = !batch.ops.is_empty();
            let committed = commit(&mut backend, batch);
            waiting.keep(committed.again);
            note(failing, committed.outcome, wrote, &waiting);
            if wrote && waiting.rows.is_empty() {
                waiting.dropped = 0;
            }
            for (reply, answer) in committed.answers {
                let _ = reply.send(answer);
            }
        }
        for close in closes {
            let _ = close.send(backend.close());
        }
    }
}

/// The rows nobody waits for that wait for the store to write again.
#[derive(Default)]
struct Waiting {
    rows: Vec<Op>,
    /// Rows given up on meanwhile, beyond [`MAX_WAITING_ROWS`].
    dropped: usize,
}

impl Waiting {
    fn keep(&mut self, rows: Vec<Op>) {
        self.rows = rows;
        let over = self.rows.len().saturating_sub(MAX_WAITING_ROWS);
        if over > 0 {
            self.rows.drain(..over);
            self.dropped += over;
        }
    }
}

/// The most rows kept waiting while the store cannot write (about a thousand trials' steps):
/// beyond it the oldest are given up, and counted.
const MAX_WAITING_ROWS: usize = 100_000;

/// How often the writer checks, while no write comes, that writes could be made (and tries
/// the rows waiting again).
const IDLE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Keeps what a commit or a check told of the store's writes for `/status` and
/// `lcm_store_writable`: a failure from then on (since the first of a run of them), until a
/// commit that wrote something succeeds (`clears`). The log says when the store stops
/// writing and when it writes again, once each, not at every write that fails.
fn note(
    failing: &Mutex<Option<WriteFailure>>,
    outcome: Result<(), StoreError>,
    clears: bool,
    waiting: &Waiting,
) {
    let mut failing = lock(failing);
    match outcome {
        Ok(()) if clears => {
            if let Some(failure) = failing.take() {
                let secs = (Utc::now() - failure.since).num_seconds();
                warn!(
                    after_secs = secs,
                    rows_given_up = waiting.dropped,
                    "the store writes again: changes are taken again, and the rows that waited are written"
                );
            }
        }
        Ok(()) => {}
        Err(e) => {
            if failing.is_none() {
                error!(error = %e, "the store cannot write: every change is answered 503 and every trial waits where it is until it can (the history and audit rows of the meanwhile wait in memory); see store in GET /status");
            }
            *failing = Some(WriteFailure {
                since: failing.as_ref().map_or_else(Utc::now, |f| f.since),
                error: e.to_string(),
            });
        }
    }
    metrics::gauge!("lcm_store_writable").set(f64::from(u8::from(failing.is_none())));
}

/// How long rows that nobody waits for may wait for an awaited write to ride with.
const ROWS_LINGER: Duration = Duration::from_millis(20);

/// Rows handed over alone wait up to `linger` for a request, so that a step's journal rows
/// are committed with its checkpoint: one transaction, each page written once, instead of a
/// transaction per row. A request is never held back.
fn wait_for_request(batch: &mut Batch, queue: &mpsc::Receiver<Handover>, linger: Duration) {
    let deadline = Instant::now() + linger;
    while !batch.writes.iter().any(|(_, reply)| reply.is_some()) {
        match queue.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(handover) => batch.take(handover),
            Err(_) => return,
        }
    }
}

/// Applies `ops` in one transaction. A backend that panics fails the batch (its transaction
/// rolled back), not the writer thread: the writes after it go on being made.
fn apply(backend: &mut impl Backend, ops: &[Op]) -> Result<Vec<usize>, StoreError> {
    panic::catch_unwind(AssertUnwindSafe(|| backend.apply(ops))).unwrap_or_else(|payload| {
        Err(StoreError::Backend(format!(
            "the write panicked: {}",
            panic_message(payload)
        )))
    })
}

/// The answers of a batch's writes, sent once what the batch told of the store is noted: a
/// client answered 200 finds `/status` saying the store writes.
type Answers = Vec<(Reply, Result<usize, StoreError>)>;

/// What a commit did.
struct Committed {
    /// `Err` if nothing of it could be committed (one bad write among good ones is not the
    /// store failing).
    outcome: Result<(), StoreError>,
    answers: Answers,
    /// The rows nobody waits for that were not committed because the store could not write:
    /// they wait for the next commit.
    again: Vec<Op>,
}

/// Commits the batch in one transaction and returns each write's answer.
fn commit(backend: &mut impl Backend, Batch { ops, writes, .. }: Batch) -> Committed {
    let mut answers = Vec::with_capacity(writes.len());
    let mut again = Vec::new();
    match apply(backend, &ops) {
        Ok(counts) => {
            for (range, reply) in writes {
                if let Some(reply) = reply {
                    answers.push((reply, count_of(&counts, range)));
                }
            }
            Committed {
                outcome: Ok(()),
                answers,
                again,
            }
        }
        // One bad write must not fail the others: retry each alone to find it (a request's
        // operations stay together).
        Err(_) if writes.len() > 1 => {
            // The first row that failed: a flush after it answers with it.
            let mut lost_row: Option<StoreError> = None;
            let (mut committed, mut first_error) = (false, None);
            for (range, reply) in writes {
                let result = match ops.get(range.clone()) {
                    Some(alone) if !alone.is_empty() => {
                        apply(backend, alone).and_then(|counts| count_of(&counts, 0..alone.len()))
                    }
                    _ => lost_row.clone().map_or(Ok(0), Err),
                };
                match &result {
                    Ok(_) => committed = true,
                    Err(e) => {
                        first_error.get_or_insert_with(|| e.clone());
                    }
                }
                match (result, reply) {
                    (Ok(_), None) => {}
                    (Err(e), None) => {
                        if let StoreError::Unwritable(_) = e {
                            again.extend_from_slice(&ops[range]);
                        } else {
                            error!(error = %e, op = ops[range.start].kind(), "store write failed: the row is given up");
                        }
                        lost_row.get_or_insert(e);
                    }
                    (result, Some(reply)) => answers.push((reply, result)),
                }
            }
            let outcome = match (committed, first_error) {
                (false, Some(e)) => Err(e),
                _ => Ok(()),
            };
            Committed {
                outcome,
                answers,
                again,
            }
        }
        // One write: whoever waits for it is told; a row waits for the next commit.
        Err(e) => {
            for (range, reply) in writes {
                match reply {
                    Some(reply) => answers.push((reply, Err(e.clone()))),
                    None if matches!(e, StoreError::Unwritable(_)) => {
                        again.extend_from_slice(&ops[range]);
                    }
                    None => {
                        error!(error = %e, op = ops[range.start].kind(), "store write failed: the row is given up");
                    }
                }
            }
            Committed {
                outcome: Err(e),
                answers,
                again,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

    use super::sqlite::SqliteBackend;
    use super::*;

    /// The actions of the audit entries of one transaction: committed, or refused.
    type Applied = Result<Vec<String>, Vec<String>>;

    /// An in-memory SQLite store that reports each transaction it applies, and refuses any
    /// transaction holding the action `refuse`.
    struct Watched {
        inner: SqliteBackend,
        applied: UnboundedSender<Applied>,
        /// While set, every transaction fails as on a full disk.
        full: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Backend for Watched {
        fn apply(&mut self, ops: &[Op]) -> Result<Vec<usize>, StoreError> {
            let actions: Vec<String> = ops
                .iter()
                .filter_map(|op| match op {
                    Op::Audit(entry) => Some(entry.action.clone()),
                    _ => None,
                })
                .collect();
            if actions.iter().any(|a| a == "panic") {
                panic!("a backend fault");
            }
            if self.full.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError::Unwritable("disk full (simulated)".into()));
            }
            if actions.iter().any(|a| a == "refuse") {
                let _ = self.applied.send(Err(actions));
                return Err(StoreError::Backend("refused".into()));
            }
            let counts = self.inner.apply(ops)?;
            let _ = self.applied.send(Ok(actions));
            Ok(counts)
        }

        fn load(&mut self) -> Result<Loaded, StoreError> {
            self.inner.load()
        }

        fn reader(&self) -> Result<Box<dyn Reader>, StoreError> {
            self.inner.reader()
        }
    }

    fn start() -> (Store, UnboundedReceiver<Applied>) {
        start_lingering(ROWS_LINGER)
    }

    fn start_lingering(linger: Duration) -> (Store, UnboundedReceiver<Applied>) {
        let (store, seen, _) = start_with_full_switch(linger);
        (store, seen)
    }

    /// The store, its transactions, and the switch that makes its disk full.
    fn start_with_full_switch(
        linger: Duration,
    ) -> (
        Store,
        UnboundedReceiver<Applied>,
        Arc<std::sync::atomic::AtomicBool>,
    ) {
        let (applied, seen) = unbounded_channel();
        let full = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let backend = Watched {
            inner: SqliteBackend::in_memory().unwrap(),
            applied,
            full: full.clone(),
        };
        let store = Store::start_lingering(backend, linger).unwrap().0;
        (store, seen, full)
    }

    fn entry(action: &str) -> Op {
        Op::Audit(Box::new(AuditEntry {
            seq: 0,
            at: Utc::now(),
            actor: "operator".into(),
            role: None,
            action: action.into(),
            trial_id: None,
            outcome: 200,
            detail: None,
            remote_addr: None,
        }))
    }

    /// Every action committed, oldest first.
    async fn committed(store: &Store) -> Vec<String> {
        let query = AuditQuery {
            limit: 100,
            ..AuditQuery::default()
        };
        let mut entries = store.read(move |r| r.audit(&query)).await.unwrap();
        entries.reverse();
        entries.into_iter().map(|e| e.action).collect()
    }

    #[tokio::test]
    async fn rows_submitted_before_a_write_are_committed_with_it_in_order() {
        let (store, _seen) = start();
        store.submit(entry("row 1"));
        store.submit(entry("row 2"));
        store.write(entry("write")).await.unwrap();
        store.submit(entry("row 3"));
        store.write(entry("second write")).await.unwrap();
        assert_eq!(
            committed(&store).await,
            ["row 1", "row 2", "write", "row 3", "second write"]
        );
    }

    /// The next transaction the store applies.
    async fn next_applied(seen: &mut UnboundedReceiver<Applied>) -> Applied {
        tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .expect("a transaction within 10 s")
            .expect("the store is running")
    }

    #[tokio::test]
    async fn rows_submitted_alone_wait_for_the_next_write_and_are_committed_with_it() {
        let (store, mut seen) = start_lingering(Duration::from_secs(60));
        store.submit(entry("row 1"));
        // A query's round trip is ample time for a writer that does not wait to commit it.
        assert!(committed(&store).await.is_empty());
        store.submit(entry("row 2"));
        store.write(entry("write")).await.unwrap();
        assert_eq!(
            next_applied(&mut seen).await,
            Ok(vec![
                "row 1".to_owned(),
                "row 2".to_owned(),
                "write".to_owned()
            ])
        );
    }

    #[tokio::test]
    async fn a_flush_commits_the_rows_waiting_for_a_write() {
        let (store, _seen) = start_lingering(Duration::from_secs(60));
        store.flush().await.unwrap();
        store.submit(entry("waiting"));
        store.flush().await.unwrap();
        // A row that cannot be written fails alone, and the flush says a row was lost.
        store.submit(entry("refuse"));
        store.submit(entry("kept"));
        assert!(store.flush().await.is_err());
        store.flush().await.unwrap();
        assert_eq!(committed(&store).await, ["waiting", "kept"]);
    }

    #[tokio::test]
    async fn rows_the_store_could_not_write_wait_and_are_written_in_order_once_it_can() {
        use std::sync::atomic::Ordering::SeqCst;
        let (store, _seen, full) = start_with_full_switch(ROWS_LINGER);
        store.write(entry("before")).await.unwrap();
        full.store(true, SeqCst);
        store.submit(entry("row 1"));
        assert!(store.write(entry("refused write")).await.is_err());
        store.submit(entry("row 2"));
        assert!(store.flush().await.is_err(), "the rows wait");
        full.store(false, SeqCst);
        store.write(entry("after")).await.unwrap();
        assert_eq!(
            committed(&store).await,
            ["before", "row 1", "row 2", "after"]
        );

        // With no write after them, they are tried again on their own.
        full.store(true, SeqCst);
        store.submit(entry("row 3"));
        assert!(store.flush().await.is_err());
        full.store(false, SeqCst);
        let waited = Instant::now();
        while committed(&store).await.len() < 5 {
            assert!(waited.elapsed() < Duration::from_secs(10), "never written");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            committed(&store).await.last().map(String::as_str),
            Some("row 3")
        );
    }

    #[tokio::test]
    async fn rows_submitted_with_no_write_after_them_are_committed() {
        let (store, mut seen) = start();
        store.submit(entry("alone"));
        assert_eq!(next_applied(&mut seen).await, Ok(vec!["alone".to_owned()]));
        store.submit(entry("alone again"));
        assert_eq!(
            next_applied(&mut seen).await,
            Ok(vec!["alone again".to_owned()])
        );
        assert_eq!(committed(&store).await, ["alone", "alone again"]);
    }

    #[tokio::test]
    async fn a_backend_that_panics_fails_its_writes_and_the_writer_goes_on() {
        let (store, _seen) = start();
        let failed = store.write(entry("panic")).await;
        assert!(
            matches!(&failed, Err(StoreError::Backend(e)) if e.contains("panicked: a backend fault")),
            "{failed:?}"
        );
        store.submit(entry("panic"));
        store.write(entry("after a row that panics")).await.unwrap();
        store.write(entry("after")).await.unwrap();
        assert_eq!(
            committed(&store).await,
            ["after a row that panics", "after"]
        );
    }

    #[tokio::test]
    async fn a_row_that_cannot_be_written_fails_alone() {
        let (store, mut seen) = start();
        store.submit(entry("refuse"));
        store.submit(entry("kept"));
        store.write(entry("write")).await.unwrap();
        assert_eq!(committed(&store).await, ["kept", "write"]);
        let mut refused = Vec::new();
        while let Ok(applied) = seen.try_recv() {
            if let Err(actions) = applied {
                refused.push(actions);
            }
        }
        // The whole batch first, then the row on its own.
        assert_eq!(refused.last(), Some(&vec!["refuse".to_owned()]));
    }
}
