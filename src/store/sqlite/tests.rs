use chrono::{Duration, Utc};

use super::*;
use crate::engine::sequence::{Step, Wait};
use crate::engine::state::{Checkpoint, Lifecycle, Position};

fn id(s: &str) -> TrialId {
    TrialId::parse(s).unwrap()
}

fn record(
    name: &str,
    lifecycle: Lifecycle,
    created_at: chrono::DateTime<chrono::Utc>,
) -> TrialRecord {
    let mut checkpoint = Checkpoint::new(created_at);
    checkpoint.position = Position::Run(Step::EnforceUavPlan);
    checkpoint.data.token = Some("tok".into());
    TrialRecord {
        id: id(name),
        lifecycle,
        checkpoint,
        created_at,
        updated_at: created_at,
        ended_at: lifecycle.is_ended().then_some(created_at),
    }
}

fn audit(action: &str, at: chrono::DateTime<chrono::Utc>) -> Box<AuditEntry> {
    Box::new(AuditEntry {
        seq: 0,
        at,
        actor: "operator".into(),
        role: Some("operator".into()),
        action: action.into(),
        trial_id: None,
        outcome: 200,
        detail: None,
        remote_addr: None,
    })
}

fn actions(store: &SqliteBackend) -> Vec<String> {
    let mut reader = store.reader().unwrap();
    let query = AuditQuery {
        limit: 10,
        ..AuditQuery::default()
    };
    reader
        .audit(&query)
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect()
}

fn put(store: &mut SqliteBackend, ops: Vec<Op>) -> Vec<usize> {
    store.apply(&ops).unwrap()
}

/// Event `seq` of `trial`: step `seq` completed.
fn event_op(trial: &TrialId, seq: u64, at: chrono::DateTime<chrono::Utc>) -> Op {
    Op::AppendEvent {
        id: trial.clone(),
        event: std::sync::Arc::new(TrialEvent {
            seq,
            at,
            event: EventKind::StepCompleted,
            step: Some(format!("step {seq}")),
            detail: None,
            duration_ms: Some(5),
        }),
    }
}

/// Attempt `attempt` of `trial`'s `GET` of its trial, answered `status`.
fn response_op(
    trial: &TrialId,
    attempt: u32,
    status: u16,
    at: chrono::DateTime<chrono::Utc>,
) -> Op {
    Op::AppendResponse {
        id: trial.clone(),
        record: std::sync::Arc::new(ResponseRecord {
            step: "GetTrialInfo".into(),
            service: "trial_repository".into(),
            method: "GET".into(),
            path: format!("trial/{trial}/"),
            status: Some(status),
            body: None,
            error: None,
            duration_ms: 3,
            attempt,
            at,
        }),
    }
}

/// The first rows of the listing, of the `statuses` given (all if none).
fn listed(store: &SqliteBackend, statuses: &[ListedStatus]) -> Vec<ListedTrial> {
    store
        .reader()
        .unwrap()
        .trials(&TrialQuery {
            statuses: statuses.to_vec(),
            limit: 10,
            ..TrialQuery::default()
        })
        .unwrap()
}

/// The ids of the first rows of the listing.
fn listed_ids(store: &SqliteBackend) -> Vec<String> {
    listed(store, &[]).into_iter().map(|t| t.trial_id).collect()
}

/// Every status's count, by status name.
fn counts(reader: &mut dyn Reader) -> Vec<(ListedStatus, u64)> {
    let mut counts = reader.counts(None).unwrap();
    counts.sort_by_key(|(status, _)| status.name());
    counts
}

/// The rows the listing shows as `Corrupt`.
fn corrupt(store: &SqliteBackend) -> Vec<ListedTrial> {
    listed(store, &[ListedStatus::Corrupt])
}

/// Asserts that `name` reads as `Corrupt`, and that the next start-up sets nothing aside again.
fn assert_set_aside_for_good(store: &mut SqliteBackend, name: &str) {
    assert!(matches!(
        store.reader().unwrap().trial(&id(name)).unwrap(),
        Some(StoredTrial::Corrupt { .. })
    ));
    assert!(
        store.load().unwrap().quarantined.is_empty(),
        "set aside once, not read again"
    );
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
    let now = Utc::now();
    let counts = put(
        &mut store,
        vec![
            Op::PutJob {
                id: id("t1"),
                start,
                created_at: now,
            },
            Op::PutJob {
                id: id("t2"),
                start,
                created_at: now,
            },
            Op::PutTrial(Box::new(record("t2", Lifecycle::Running, now))),
            Op::PutJob {
                id: id("t2"),
                start,
                created_at: now,
            },
            Op::Revoke {
                jti: "j1".into(),
                exp: now.timestamp() + 60,
            },
            Op::Revoke {
                jti: "old".into(),
                exp: 1,
            },
            Op::SetAutomatic(true),
            Op::SetPaused {
                id: id("t2"),
                paused: true,
            },
        ],
    );
    assert_eq!(
        counts[3], 0,
        "a job for a trial that has a record is not saved"
    );
    drop(store);

    let mut reopened = SqliteBackend::open(dir.path()).unwrap();
    let loaded = reopened.load().unwrap();
    assert_eq!(
        loaded.jobs,
        vec![StoredJob {
            id: id("t1"),
            start,
            created_at: chrono::SubsecRound::trunc_subsecs(now, 6),
            missed_at: None,
        }],
        "a trial supersedes its job"
    );
    assert_eq!(loaded.trials.len(), 1);
    let trial = &loaded.trials[0].record;
    assert_eq!(trial.lifecycle, Lifecycle::Running);
    assert_eq!(
        trial.checkpoint.position,
        Position::Run(Step::EnforceUavPlan)
    );
    assert!(trial.checkpoint.paused, "the pause saved on its own wins");
    assert_eq!(loaded.revoked.len(), 1, "expired revocations are dropped");
    assert_eq!(loaded.automatic, Some(true));
}

#[test]
fn a_failed_batch_changes_nothing() {
    let mut store = SqliteBackend::in_memory().unwrap();
    store.conn.execute_batch("DROP TABLE settings").unwrap();
    let result = store.apply(&[
        Op::PutJob {
            id: id("t1"),
            start: StartTime::parse("2999-01-01T10:00:00Z").unwrap(),
            created_at: Utc::now(),
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
    std::fs::write(
        dir.path().join(FILE_NAME),
        "this is not sqlite, just text ".repeat(20),
    )
    .unwrap();
    let err = SqliteBackend::open(dir.path())
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains(FILE_NAME), "{err}");
}

/// Overwrites the root page of `table` in the (closed) database at `path` with garbage.
fn damage_table(path: &Path, table: &str) {
    let (root, size): (i64, i64) = {
        let conn = Connection::open(path).unwrap();
        let root = conn
            .query_row(
                "SELECT rootpage FROM sqlite_master WHERE name = ?1",
                [table],
                |row| row.get(0),
            )
            .unwrap();
        (
            root,
            conn.pragma_query_value(None, "page_size", |row| row.get(0))
                .unwrap(),
        )
    };
    let mut bytes = std::fs::read(path).unwrap();
    let at = |page: i64| usize::try_from(page * size).unwrap();
    bytes[at(root - 1)..at(root)].fill(0xff);
    std::fs::write(path, bytes).unwrap();
}

/// Why a start on the store in `dir` (opening it, then the start-up read) is refused.
fn refused_at_start(dir: &Path) -> String {
    SqliteBackend::open(dir)
        .and_then(|mut store| store.load())
        .map(|_| ())
        .expect_err("refused")
        .to_string()
}

#[test]
fn a_damaged_part_start_up_does_not_read_is_told_as_damaged_when_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteBackend::open(dir.path()).unwrap();
    put(&mut store, vec![Op::Audit(audit("made", Utc::now()))]);
    drop(store);
    damage_table(&dir.path().join(FILE_NAME), "audit");
    let mut store = SqliteBackend::open(dir.path()).unwrap();
    store.load().unwrap();
    let query = AuditQuery {
        trial_id: None,
        actor: None,
        before: None,
        limit: 10,
    };
    let err = store.reader().unwrap().audit(&query).unwrap_err();
    assert!(matches!(err, StoreError::Damaged(_)), "{err:?}");
    assert!(
        err.to_string().contains("the database file is damaged"),
        "{err}"
    );
}

#[test]
fn a_damaged_database_is_refused_naming_the_file_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteBackend::open(dir.path()).unwrap();
    put(
        &mut store,
        vec![Op::PutTrial(Box::new(record(
            "live",
            Lifecycle::Waiting,
            Utc::now(),
        )))],
    );
    drop(store);
    let path = dir.path().join(FILE_NAME);
    damage_table(&path, "trials");
    let err = refused_at_start(dir.path());
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(
        err.contains("is damaged: restore it from a backup"),
        "{err}"
    );
    // Cut short, it is refused as it is opened, with the same advice.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = refused_at_start(dir.path());
    assert!(
        err.contains("is damaged: restore it from a backup"),
        "{err}"
    );
}

#[test]
fn one_service_per_store_a_second_open_is_refused_until_the_first_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let first = SqliteBackend::open(dir.path()).unwrap();
    let Err(refused) = SqliteBackend::open(dir.path()) else {
        panic!("a second backend opened the same store");
    };
    assert!(
        refused.to_string().contains("in use by another process"),
        "{refused}"
    );
    drop(first);
    assert!(SqliteBackend::open(dir.path()).is_ok());
}

#[test]
fn migrations_are_valid() {
    migrations().validate().unwrap();
}

#[test]
fn start_up_reads_live_trials_only_and_sets_a_corrupt_one_aside() {
    let mut store = SqliteBackend::in_memory().unwrap();
    let now = Utc::now();
    put(
        &mut store,
        vec![
            Op::PutTrial(Box::new(record("live", Lifecycle::Waiting, now))),
            Op::PutTrial(Box::new(record("failed", Lifecycle::Failed, now))),
            Op::PutTrial(Box::new(record("done", Lifecycle::Finished, now))),
            Op::PutTrial(Box::new(record("broken", Lifecycle::Running, now))),
        ],
    );
    store
        .conn
        .execute(
            "UPDATE trials SET checkpoint = '{\"format\":1' WHERE trial_id = 'broken'",
            [],
        )
        .unwrap();
    let loaded = store.load().unwrap();
    let mut ids: Vec<&str> = loaded.trials.iter().map(|t| t.record.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["failed", "live"]);
    assert_eq!(loaded.quarantined.len(), 1);
    assert_eq!(loaded.quarantined[0].0, "broken");
    let corrupt = corrupt(&store);
    assert_eq!(corrupt.len(), 1);
    assert!(
        corrupt[0]
            .failure
            .as_deref()
            .unwrap_or_default()
            .contains("unreadable")
    );
    assert_set_aside_for_good(&mut store, "broken");
}

#[test]
fn an_unreadable_journal_row_is_left_out_and_the_trial_goes_on_numbering_after_it() {
    let mut store = SqliteBackend::in_memory().unwrap();
    let now = Utc::now();
    let trial = id("damaged");
    let mut ops = vec![Op::PutTrial(Box::new(record(
        "damaged",
        Lifecycle::Waiting,
        now,
    )))];
    ops.extend((0..4).map(|seq| event_op(&trial, seq, now)));
    ops.extend((1..=4).map(|attempt| response_op(&trial, attempt, 503, now)));
    put(&mut store, ops);
    for damage in [
        "UPDATE trial_events SET duration_ms = 'abc' WHERE seq = 1",
        "UPDATE trial_events SET at = 'bad' WHERE seq = 3",
        "UPDATE trial_events SET seq = 4.5 WHERE seq = 2",
        "UPDATE trial_responses SET attempt = 'x' WHERE seq = 0",
        "UPDATE trial_responses SET at = '2026-13-01' WHERE seq = 2",
        "UPDATE trial_responses SET seq = 'q' WHERE seq = 1",
    ] {
        store.conn.execute(damage, []).unwrap();
    }
    let loaded = store.load().unwrap();
    assert!(loaded.quarantined.is_empty(), "{:?}", loaded.quarantined);
    let [recovered] = loaded.trials.as_slice() else {
        panic!("{:?}", loaded.trials);
    };
    let seqs = |events: &[TrialEvent]| events.iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(seqs(&recovered.events), [0]);
    assert_eq!(
        recovered.next_event, 4,
        "after the last one saved and numbered, read or not"
    );
    let attempts =
        |responses: &[ResponseRecord]| responses.iter().map(|r| r.attempt).collect::<Vec<_>>();
    assert_eq!(attempts(&recovered.responses), [4]);
    // The next response is numbered after the last whole-numbered one: it is written.
    put(&mut store, vec![response_op(&trial, 5, 503, now)]);
    let mut reader = store.reader().unwrap();
    assert_eq!(seqs(&reader.events(&trial).unwrap()), [0]);
    assert_eq!(attempts(&reader.responses(&trial).unwrap()), [4, 5]);
}

#[test]
fn an_engine_status_the_store_does_not_know_is_corrupt_everywhere_and_a_live_ones_is_mended() {
    let mut store = SqliteBackend::in_memory().unwrap();
    let now = Utc::now();
    put(
        &mut store,
        vec![
            Op::PutTrial(Box::new(record("done", Lifecycle::Finished, now))),
            Op::PutTrial(Box::new(record("fine", Lifecycle::Finished, now))),
            Op::PutTrial(Box::new(record("live", Lifecycle::Waiting, now))),
        ],
    );
    for (id, status) in [("done", "Finishd"), ("live", "Activ")] {
        store
            .conn
            .execute(
                "UPDATE trials SET engine_status = ?2 WHERE trial_id = ?1",
                params![id, status],
            )
            .unwrap();
    }
    let loaded = store.load().unwrap();
    assert_eq!(
        loaded.trials.len(),
        1,
        "the live one is read from its record"
    );
    let mut reader = store.reader().unwrap();
    let corrupt = corrupt(&store);
    assert_eq!(corrupt.len(), 1, "{corrupt:?}");
    assert_eq!(corrupt[0].trial_id, "done");
    assert_eq!(corrupt[0].engine_status, ListedStatus::Corrupt);
    assert_eq!(
        corrupt[0].failure.as_deref(),
        Some("unreadable record: unknown engine status 'Finishd'")
    );
    let active = listed(&store, &[ListedStatus::Active]);
    assert_eq!(active.len(), 1, "mended at start-up: {active:?}");
    assert_eq!(active[0].trial_id, "live");
    assert!(matches!(
        reader.trial(&id("done")).unwrap(),
        Some(StoredTrial::Corrupt { reason, ran: true }) if reason.contains("'Finishd'")
    ));
    assert_eq!(
        counts(reader.as_mut()),
        [
            (ListedStatus::Active, 1),
            (ListedStatus::Corrupt, 1),
            (ListedStatus::Finished, 1)
        ]
    );
}

#[test]
fn a_purge_removes_old_ended_trials_and_keeps_the_rest() {
    let mut store = SqliteBackend::in_memory().unwrap();
    let now = Utc::now();
    let old = now - Duration::days(100);
    let event = |seq| {
        std::sync::Arc::new(TrialEvent {
            seq,
            at: old,
            event: EventKind::StepStarted,
            step: None,
            detail: None,
            duration_ms: None,
        })
    };
    put(
        &mut store,
        vec![
            Op::PutTrial(Box::new(record("old-finished", Lifecycle::Finished, old))),
            Op::PutTrial(Box::new(record("old-aborted", Lifecycle::Aborted, old))),
            Op::PutTrial(Box::new(record("old-failed", Lifecycle::Failed, old))),
            Op::PutTrial(Box::new(record("new-finished", Lifecycle::Finished, now))),
            Op::PutTrial(Box::new(record("end-a-number", Lifecycle::Finished, now))),
            Op::PutTrial(Box::new(record("end-in-words", Lifecycle::Aborted, now))),
            Op::AppendEvent {
                id: id("old-finished"),
                event: event(0),
            },
            Op::AppendEvent {
                id: id("new-finished"),
                event: event(0),
            },
            Op::Audit(audit("old", old)),
            Op::Audit(audit("new", now)),
        ],
    );
    // Ends damaged by hand, which would sort before any cutoff: they are not purged, but
    // kept as they are.
    for damage in [
        "UPDATE trials SET ended_at = 1796097000 WHERE trial_id = 'end-a-number'",
        "UPDATE trials SET ended_at = '01/12/2026 03:52' WHERE trial_id = 'end-in-words'",
        "UPDATE audit SET at = 0 WHERE action = 'new'",
    ] {
        store.conn.execute(damage, []).unwrap();
    }
    let cutoff = now - Duration::days(90);
    let purge = || Op::Purge {
        ended_before: cutoff,
        at_most: 1,
        rows_at_most: 1_000,
    };
    // In steps of at most one, the earliest ended first (then as stored).
    assert_eq!(put(&mut store, vec![purge()]), [1]);
    assert!(!listed_ids(&store).contains(&"old-finished".to_owned()));
    assert!(listed_ids(&store).contains(&"old-aborted".to_owned()));
    assert_eq!(put(&mut store, vec![purge(), purge()]), [1, 0]);
    let audit_purge = Op::PurgeAudit {
        before: cutoff,
        at_most: 10,
    };
    assert_eq!(put(&mut store, vec![audit_purge]), [1]);
    let mut kept = listed_ids(&store);
    kept.sort_unstable();
    assert_eq!(
        kept,
        ["end-a-number", "end-in-words", "new-finished", "old-failed"]
    );
    let mut reader = store.reader().unwrap();
    assert!(reader.events(&id("old-finished")).unwrap().is_empty());
    assert_eq!(reader.events(&id("new-finished")).unwrap().len(), 1);
    let audit: Vec<String> =
        all_rows(&store.conn, "SELECT action FROM audit", |row| row.get(0)).unwrap();
    assert_eq!(
        audit,
        ["new"],
        "audit entries past retention go too, not one whose time is damaged"
    );
}

#[test]
fn an_audit_entry_of_a_change_is_written_only_if_the_change_was_made() {
    let mut store = SqliteBackend::in_memory().unwrap();
    let now = Utc::now();
    let job = |name: &str| Op::PutJob {
        id: id(name),
        start: StartTime::parse("2999-01-01T10:00:00Z").unwrap(),
        created_at: now,
    };
    put(
        &mut store,
        vec![Op::PutTrial(Box::new(record(
            "ran",
            Lifecycle::Finished,
            now,
        )))],
    );
    let counts = put(
        &mut store,
        vec![
            job("ran"),
            Op::AuditIfChanged(audit("refused", now)),
            job("fresh"),
            Op::AuditIfChanged(audit("made", now)),
        ],
    );
    assert_eq!(counts, [0, 0, 1, 1]);
    assert_eq!(actions(&store), ["made"]);
}

#[test]
fn the_listing_pages_newest_first_with_filters() {
    let mut store = SqliteBackend::in_memory().unwrap();
    let base = Utc::now();
    let mut ops = Vec::new();
    for i in 0..7 {
        let lifecycle = if i % 2 == 0 {
            Lifecycle::Finished
        } else {
            Lifecycle::Waiting
        };
        ops.push(Op::PutTrial(Box::new(record(
            &format!("t_{i}"),
            lifecycle,
            base + Duration::seconds(i),
        ))));
    }
    ops.push(Op::PutJob {
        id: id("job"),
        start: StartTime::parse("2999-01-01T10:00:00Z").unwrap(),
        created_at: base + Duration::seconds(3),
    });
    put(&mut store, ops);
    let mut reader = store.reader().unwrap();
    let page = |query: &TrialQuery, reader: &mut Box<dyn Reader>| -> Vec<String> {
        reader
            .trials(query)
            .unwrap()
            .into_iter()
            .map(|t| t.trial_id)
            .collect()
    };
    let mut query = TrialQuery {
        limit: 3,
        ..TrialQuery::default()
    };
    let mut seen = Vec::new();
    loop {
        let rows = reader.trials(&query).unwrap();
        let more = rows.len() > query.limit;
        let rows = &rows[..rows.len().min(query.limit)];
        seen.extend(rows.iter().map(|r| r.trial_id.clone()));
        if !more {
            break;
        }
        let last = rows.last().unwrap();
        query.after = Some((last.created_at.clone(), last.trial_id.clone()));
    }
    assert_eq!(
        seen,
        ["t_6", "t_5", "t_4", "t_3", "job", "t_2", "t_1", "t_0"]
    );
    let scheduled = TrialQuery {
        statuses: vec![ListedStatus::Scheduled],
        limit: 10,
        ..TrialQuery::default()
    };
    assert_eq!(page(&scheduled, &mut reader), ["job"]);
    let finished = TrialQuery {
        statuses: vec![ListedStatus::Finished, ListedStatus::Scheduled],
        limit: 10,
        ..TrialQuery::default()
    };
    assert_eq!(
        page(&finished, &mut reader),
        ["t_6", "t_4", "job", "t_2", "t_0"]
    );
    let search = TrialQuery {
        id_contains: Some("_5".into()),
        limit: 10,
        ..TrialQuery::default()
    };
    assert_eq!(page(&search, &mut reader), ["t_5"], "'_' is not a wildcard");
    let other_case = TrialQuery {
        id_contains: Some("T_5".into()),
        limit: 10,
        ..TrialQuery::default()
    };
    assert!(
        page(&other_case, &mut reader).is_empty(),
        "trial ids are case-sensitive"
    );
    assert_eq!(
        counts(reader.as_mut()),
        [
            (ListedStatus::Active, 3),
            (ListedStatus::Finished, 4),
            (ListedStatus::Scheduled, 1)
        ]
    );
    assert_eq!(
        reader.counts(Some("_5")).unwrap(),
        [(ListedStatus::Active, 1)],
        "counted among the ids searched for"
    );
}

#[test]
fn a_store_written_by_the_previous_release_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/store-v1.sqlite3"
    );
    std::fs::copy(fixture, dir.path().join(FILE_NAME)).unwrap();
    let mut store = SqliteBackend::open(dir.path()).unwrap();
    let loaded = store.load().unwrap();
    assert!(loaded.quarantined.is_empty(), "{:?}", loaded.quarantined);
    let find = |name: &str| {
        loaded
            .trials
            .iter()
            .find(|t| t.record.id.as_str() == name)
            .unwrap_or_else(|| panic!("{name} recovered"))
    };
    assert_eq!(
        find("v1-idle").record.checkpoint.position,
        Position::Wait(Wait::Idle)
    );
    assert_eq!(
        find("v1-active").record.checkpoint.position,
        Position::Wait(Wait::Active)
    );
    assert_eq!(
        find("v1-slice").record.checkpoint.position,
        Position::Wait(Wait::SliceCreated)
    );
    assert_eq!(
        find("v1-mid").record.checkpoint.position,
        Position::Run(Step::EnforceUavPlan)
    );
    let failed = find("v1-failed");
    assert_eq!(failed.record.lifecycle, Lifecycle::Failed);
    assert!(
        failed
            .record
            .checkpoint
            .failure
            .as_ref()
            .is_some_and(|f| f.reported)
    );
    assert!(!find("v1-active").events.is_empty());
    assert!(!find("v1-active").responses.is_empty());
    assert_eq!(
        loaded.trials.len(),
        5,
        "the finished trial is not recovered"
    );
    assert_eq!(loaded.jobs.len(), 1);
    assert_eq!(loaded.revoked.len(), 2);
    assert_eq!(loaded.automatic, Some(false));
    let mut reader = store.reader().unwrap();
    match reader.trial(&id("v1-finished")).unwrap() {
        Some(StoredTrial::Readable(record)) => assert_eq!(record.lifecycle, Lifecycle::Finished),
        other => panic!("v1-finished: {other:?}"),
    }
    assert!(reader.events(&id("v1-finished")).unwrap().len() > 10);
}

#[test]
fn a_value_of_the_wrong_type_sets_its_record_aside_and_start_up_goes_on() {
    let mut store = SqliteBackend::in_memory().unwrap();
    let now = Utc::now();
    let healthy = id("healthy");
    put(
        &mut store,
        vec![
            Op::PutTrial(Box::new(record("healthy", Lifecycle::Waiting, now))),
            Op::PutTrial(Box::new(record("blob", Lifecycle::Waiting, now))),
            Op::PutTrial(Box::new(record("not-utf8", Lifecycle::Waiting, now))),
            Op::PutTrial(Box::new(record("paused-text", Lifecycle::Waiting, now))),
            Op::AppendEvent {
                id: healthy.clone(),
                event: std::sync::Arc::new(TrialEvent {
                    seq: 0,
                    at: now,
                    event: EventKind::Waiting,
                    step: None,
                    detail: Some("fine".into()),
                    duration_ms: None,
                }),
            },
        ],
    );
    for damage in [
        "UPDATE trials SET checkpoint = X'00FF' WHERE trial_id = 'blob'",
        "UPDATE trials SET checkpoint = CAST(X'7BFF7D' AS TEXT) WHERE trial_id = 'not-utf8'",
        "UPDATE trials SET paused = 'yes' WHERE trial_id = 'paused-text'",
        "INSERT INTO trial_events (trial_id, seq, at, kind, detail)
             SELECT trial_id, 1, at, kind, CAST(X'FF' AS TEXT) FROM trial_events",
        "INSERT INTO jobs (trial_id, start_time, created_at) VALUES ('job-blob', X'01', '')",
        "INSERT INTO jobs (trial_id, start_time, created_at) VALUES (X'FF', '2099-01-01T00:00:00Z', '')",
        // Two ids that are not UTF-8, alike once shown: each kept under its own bytes.
        "INSERT INTO trials (trial_id, engine_status, live, paused, lifecycle, checkpoint, created_at, updated_at)
             SELECT X'FF00', engine_status, live, paused, lifecycle, checkpoint, created_at, updated_at
             FROM trials WHERE trial_id = 'healthy'",
        "INSERT INTO trials (trial_id, engine_status, live, paused, lifecycle, checkpoint, created_at, updated_at)
             SELECT X'FE00', engine_status, live, paused, lifecycle, checkpoint, created_at, updated_at
             FROM trials WHERE trial_id = 'healthy'",
        "INSERT INTO revoked_tokens (jti, expires_at) VALUES ('kept', 'soon')",
        "INSERT INTO revoked_tokens (jti, expires_at) VALUES (X'00', 9999999999)",
        "INSERT INTO settings (key, value) VALUES ('automatic', 'maybe')",
    ] {
        store.conn.execute(damage, []).unwrap();
    }
    let loaded = store.load().unwrap();
    let mut set_aside: Vec<&str> = loaded
        .quarantined
        .iter()
        .map(|(id, _)| id.as_str())
        .collect();
    set_aside.sort_unstable();
    assert_eq!(
        set_aside,
        [
            "blob",
            "job-blob",
            "not-utf8",
            "paused-text",
            "unreadable-fe00",
            "unreadable-ff",
            "unreadable-ff00"
        ],
        "{:?}",
        loaded.quarantined
    );
    let reasons: Vec<&str> = loaded.quarantined.iter().map(|(_, r)| r.as_str()).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("checkpoint is binary data")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("checkpoint is not UTF-8")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("start_time is binary data")),
        "{reasons:?}"
    );
    let [recovered] = loaded.trials.as_slice() else {
        panic!("{:?}", loaded.trials);
    };
    assert_eq!(recovered.record.id, healthy);
    assert_eq!(
        recovered.events.len(),
        1,
        "the unreadable event is left out"
    );
    assert_eq!(recovered.next_event, 2);
    assert_eq!(
        loaded.revoked,
        [("kept".to_owned(), i64::MAX)],
        "still revoked"
    );
    assert_eq!(loaded.automatic, None, "the configured switch is used");
    assert!(loaded.jobs.is_empty());
    assert_eq!(store.reader().unwrap().events(&healthy).unwrap().len(), 1);
    assert_set_aside_for_good(&mut store, "blob");
}

#[test]
fn a_version_1_record_of_the_wrong_type_is_set_aside_and_the_upgrade_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = Connection::open(dir.path().join(FILE_NAME)).unwrap();
        conn.execute_batch(V1).unwrap();
        conn.execute_batch(
            "PRAGMA user_version = 1;
             INSERT INTO engines VALUES ('v1-blob', 'Active', X'7B7D', '2026-01-01T00:00:00Z');
             INSERT INTO engines VALUES (X'FFFE', 'Active', '{}', '2026-01-01T00:00:00Z');",
        )
        .unwrap();
    }
    let mut store = SqliteBackend::open(dir.path()).unwrap();
    let loaded = store.load().unwrap();
    assert!(loaded.trials.is_empty(), "{:?}", loaded.trials);
    let corrupt = corrupt(&store);
    let mut failures: Vec<String> = corrupt
        .iter()
        .map(|t| t.failure.clone().unwrap_or_default())
        .collect();
    failures.sort_unstable();
    assert_eq!(corrupt.len(), 2, "{failures:?}");
    assert!(
        failures[0].contains("backup is binary data"),
        "{failures:?}"
    );
    assert!(
        failures[1].contains("trial_id is binary data"),
        "{failures:?}"
    );
}

#[test]
fn an_audit_number_is_never_used_again_even_after_a_purge_took_every_entry() {
    let mut store = SqliteBackend::in_memory().unwrap();
    let now = Utc::now();
    let old = now - Duration::days(100);
    put(
        &mut store,
        vec![
            Op::Audit(audit("first", old)),
            Op::Audit(audit("second", old)),
        ],
    );
    put(
        &mut store,
        vec![Op::PurgeAudit {
            before: now - Duration::days(90),
            at_most: 1,
        }],
    );
    assert_eq!(
        actions(&store),
        ["second"],
        "at most one a write, the oldest first"
    );
    put(
        &mut store,
        vec![Op::PurgeAudit {
            before: now - Duration::days(90),
            at_most: 1,
        }],
    );
    assert!(actions(&store).is_empty());
    put(&mut store, vec![Op::Audit(audit("after", now))]);
    let mut reader = store.reader().unwrap();
    let entries = reader
        .audit(&AuditQuery {
            limit: 10,
            ..AuditQuery::default()
        })
        .unwrap();
    let seqs: Vec<i64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [3], "after the two purged");
}

#[test]
fn a_store_written_by_a_later_release_is_refused_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteBackend::open(dir.path()).unwrap();
    store.conn.pragma_update(None, "user_version", 99).unwrap();
    drop(store);
    let Err(refused) = SqliteBackend::open(dir.path()) else {
        panic!("opened");
    };
    assert!(
        refused
            .to_string()
            .contains("version 99 of the schema, newer than this release knows"),
        "{refused}"
    );
}

#[test]
fn a_lock_file_removed_by_hand_lets_no_second_service_in() {
    let dir = tempfile::tempdir().unwrap();
    let _first = SqliteBackend::open(dir.path()).unwrap();
    std::fs::remove_file(dir.path().join(LOCK_FILE)).unwrap();
    let Err(refused) = SqliteBackend::open(dir.path()) else {
        panic!("a second backend opened the same store");
    };
    assert!(
        refused.to_string().contains("in use by another process"),
        "{refused}"
    );
}

#[test]
fn a_database_file_removed_under_the_service_refuses_writes_until_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteBackend::open(dir.path()).unwrap();
    let now = Utc::now();
    let write = |name| {
        vec![Op::PutTrial(Box::new(record(
            name,
            Lifecycle::Waiting,
            now,
        )))]
    };
    put(&mut store, write("before"));
    let path = dir.path().join(FILE_NAME);
    let moved = dir.path().join("moved-away");
    std::fs::rename(&path, &moved).unwrap();
    // (The check runs at most every second: as if that had passed.)
    let due = std::time::Instant::now()
        .checked_sub(FILE_CHECK_EVERY)
        .unwrap();
    store.file.as_mut().unwrap().checked = due;
    let refused = store.apply(&write("while-gone")).unwrap_err();
    assert!(
        refused.to_string().contains("removed or replaced"),
        "{refused}"
    );
    assert!(
        store.apply(&write("still-gone")).is_err(),
        "checked at every write while it is gone"
    );
    std::fs::rename(&moved, &path).unwrap();
    put(&mut store, write("back"));
    let listed = listed_ids(&store);
    assert!(listed.contains(&"back".to_owned()) && !listed.contains(&"while-gone".to_owned()));

    // Its write-ahead log too: it holds the changes not yet copied into the file.
    let wal = dir.path().join(format!("{FILE_NAME}-wal"));
    std::fs::rename(&wal, &moved).unwrap();
    store.file.as_mut().unwrap().checked = due;
    let refused = store.apply(&write("wal-gone")).unwrap_err();
    assert!(refused.to_string().contains("-wal"), "{refused}");
    std::fs::rename(&moved, &wal).unwrap();
    put(&mut store, write("wal-back"));
}

#[test]
fn a_row_of_the_wrong_type_is_listed_corrupt_and_an_unreadable_audit_entry_left_out() {
    let mut store = SqliteBackend::in_memory().unwrap();
    let now = Utc::now();
    put(
        &mut store,
        vec![
            Op::PutTrial(Box::new(record("fine", Lifecycle::Finished, now))),
            Op::PutTrial(Box::new(record("damaged", Lifecycle::Finished, now))),
            Op::Audit(audit("kept", now)),
            Op::Audit(audit("damaged", now)),
        ],
    );
    put(
        &mut store,
        vec![
            Op::PutTrial(Box::new(record("status-damaged", Lifecycle::Finished, now))),
            Op::PutJob {
                id: id("job-damaged"),
                start: StartTime::parse("2999-01-01T10:00:00Z").unwrap(),
                created_at: now,
            },
        ],
    );
    for damage in [
        "UPDATE trials SET engine_status = X'00FF' WHERE trial_id = 'status-damaged'",
        "UPDATE jobs SET start_time = X'00FF' WHERE trial_id = 'job-damaged'",
        "UPDATE trials SET created_at = X'00FF' WHERE trial_id = 'damaged'",
        "UPDATE trials SET failure = CAST(X'FF' AS TEXT) WHERE trial_id = 'fine'",
        "UPDATE audit SET detail = CAST(X'FF' AS TEXT) WHERE action = 'damaged'",
    ] {
        store.conn.execute(damage, []).unwrap();
    }
    let rows = listed(&store, &[]);
    let damaged = rows.iter().find(|r| r.trial_id == "damaged").unwrap();
    assert_eq!(damaged.engine_status, ListedStatus::Corrupt);
    assert!(
        damaged
            .failure
            .as_deref()
            .is_some_and(|f| f.contains("created_at is binary data")),
        "{damaged:?}"
    );
    let job = rows.iter().find(|r| r.trial_id == "job-damaged").unwrap();
    assert_eq!(job.engine_status, ListedStatus::Corrupt, "{job:?}");
    let fine = rows.iter().find(|r| r.trial_id == "fine").unwrap();
    assert_eq!(
        fine.engine_status,
        ListedStatus::Corrupt,
        "its failure is not text"
    );
    assert_eq!(actions(&store), ["kept"]);
    // Counted by the status each row holds: the one whose status is not text as `Corrupt`, as
    // it is listed.
    assert_eq!(
        counts(store.reader().unwrap().as_mut()),
        [
            (ListedStatus::Corrupt, 1),
            (ListedStatus::Finished, 2),
            (ListedStatus::Scheduled, 1)
        ]
    );
}

#[test]
fn a_live_record_without_a_usable_id_is_set_aside_under_one() {
    let mut store = SqliteBackend::in_memory().unwrap();
    put(
        &mut store,
        vec![Op::PutTrial(Box::new(record(
            "nameless",
            Lifecycle::Waiting,
            Utc::now(),
        )))],
    );
    store
        .conn
        .execute(
            "UPDATE trials SET trial_id = X'6269FF00' WHERE trial_id = 'nameless'",
            [],
        )
        .unwrap();
    let loaded = store.load().unwrap();
    assert_eq!(loaded.quarantined.len(), 1, "{:?}", loaded.quarantined);
    let name = &loaded.quarantined[0].0;
    assert!(TrialId::parse(name).is_ok(), "{name}");
    assert_set_aside_for_good(&mut store, name);
    assert_eq!(
        put(&mut store, vec![Op::DeleteTrial { id: id(name) }]),
        [1],
        "deleted by that name"
    );
}

#[test]
fn a_version_3_journal_is_moved_into_the_order_it_happened_in_and_reads_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now();
    let trial = id("v3-trial");
    let event = |seq| event_op(&trial, seq, now);
    let response = |attempt| response_op(&trial, attempt, 200, now);
    let (events, responses) = {
        let mut conn = Connection::open(dir.path().join(FILE_NAME)).unwrap();
        migrations().to_version(&mut conn, 3).unwrap();
        let tx = conn.transaction().unwrap();
        let mut ops = vec![Op::PutTrial(Box::new(record(
            "v3-trial",
            Lifecycle::Waiting,
            now,
        )))];
        ops.extend((0..3).map(event));
        ops.extend((1..=2).map(response));
        for op in &ops {
            apply_op(&tx, op).unwrap();
        }
        tx.commit().unwrap();
        (
            events_of(&conn, &trial).unwrap(),
            responses_of(&conn, &trial).unwrap(),
        )
    };
    assert_eq!((events.len(), responses.len()), (3, 2));

    let mut store = SqliteBackend::open(dir.path()).unwrap();
    let version: i64 = store
        .conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap();
    assert_eq!(version, 6);
    let schema: String = store
        .conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE name = 'trial_events'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert!(!schema.contains("WITHOUT ROWID"), "{schema}");
    let loaded = store.load().unwrap();
    let [recovered] = loaded.trials.as_slice() else {
        panic!("{:?}", loaded.trials);
    };
    assert_eq!(recovered.next_event, 3);
    let mut reader = store.reader().unwrap();
    assert_eq!(reader.events(&trial).unwrap(), events);
    assert_eq!(reader.responses(&trial).unwrap(), responses);

    // After the move: an event written again is kept once, and both go on numbering.
    put(&mut store, vec![event(2), event(3), response(3)]);
    let seqs: Vec<u64> = reader
        .events(&trial)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, [0, 1, 2, 3]);
    let attempts: Vec<u32> = reader
        .responses(&trial)
        .unwrap()
        .iter()
        .map(|r| r.attempt)
        .collect();
    assert_eq!(attempts, [1, 2, 3]);
}

#[test]
fn a_live_trial_whose_live_column_was_damaged_is_recovered_or_set_aside_never_left_out() {
    let mut store = SqliteBackend::in_memory().unwrap();
    let now = Utc::now();
    let names = ["healthy", "live-zero", "live-text", "live-two"];
    put(
        &mut store,
        names
            .iter()
            .map(|name| Op::PutTrial(Box::new(record(name, Lifecycle::Waiting, now))))
            .collect(),
    );
    for damage in [
        "UPDATE trials SET live = 0 WHERE trial_id = 'live-zero'",
        "UPDATE trials SET live = 'yes' WHERE trial_id = 'live-text'",
        "UPDATE trials SET live = 2 WHERE trial_id = 'live-two'",
    ] {
        store.conn.execute(damage, []).unwrap();
    }
    let loaded = store.load().unwrap();
    let mut recovered: Vec<&str> = loaded.trials.iter().map(|t| t.record.id.as_str()).collect();
    recovered.sort_unstable();
    assert_eq!(
        recovered,
        ["healthy", "live-zero"],
        "its status says it runs"
    );
    let mut set_aside: Vec<(&str, &str)> = loaded
        .quarantined
        .iter()
        .map(|(id, reason)| (id.as_str(), reason.as_str()))
        .collect();
    set_aside.sort_unstable();
    assert_eq!(
        set_aside,
        [
            ("live-text", "unreadable record: live is neither 0 nor 1"),
            ("live-two", "unreadable record: live is neither 0 nor 1"),
        ]
    );
    assert_set_aside_for_good(&mut store, "live-text");
}

#[test]
fn a_purge_step_takes_whole_trials_up_to_a_number_of_history_rows() {
    let mut store = SqliteBackend::in_memory().unwrap();
    let old = Utc::now() - Duration::days(100);
    let names = ["first", "second", "third", "fourth"];
    let mut ops: Vec<Op> = names
        .iter()
        .map(|name| Op::PutTrial(Box::new(record(name, Lifecycle::Finished, old))))
        .collect();
    // 300 rows for the first two, 30 for the others.
    for (name, rows) in names.iter().zip([300, 300, 30, 30]) {
        ops.extend((0..rows).map(|seq| event_op(&id(name), seq, old)));
    }
    put(&mut store, ops);
    let purge = Op::Purge {
        ended_before: Utc::now() - Duration::days(90),
        at_most: 50,
        rows_at_most: 100,
    };
    // A trial with more rows than a step takes goes alone; the next ones as many as fit.
    let steps = put(
        &mut store,
        vec![purge.clone(), purge.clone(), purge.clone(), purge],
    );
    assert_eq!(steps, [1, 1, 2, 0]);
    assert!(listed_ids(&store).is_empty());
    let left: i64 = store
        .conn
        .query_row("SELECT count(*) FROM trial_events", [], |row| row.get(0))
        .unwrap();
    assert_eq!(left, 0, "no history row outlives its trial");
}

/// How SQLite runs `sql` (with `params`) on a store of 2,000 ended trials, a step a line.
fn plan_among_ended_trials(sql: &str, params: impl rusqlite::Params) -> Vec<String> {
    let mut store = SqliteBackend::in_memory().unwrap();
    let now = Utc::now();
    put(
        &mut store,
        (0..2000)
            .map(|i| Op::PutTrial(Box::new(record(&format!("t{i}"), Lifecycle::Finished, now))))
            .collect(),
    );
    store
        .conn
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .unwrap()
        .query_map(params, |row| row.get(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Panics unless `plan` finds its rows of `table` by `index`, not by reading every row.
fn assert_found_by(plan: &[String], table: &str, index: &str) {
    assert!(
        plan.iter()
            .all(|step| !step.starts_with(&format!("SCAN {table}"))),
        "{plan:?}"
    );
    assert!(plan.iter().any(|step| step.contains(index)), "{plan:?}");
}

#[test]
fn start_up_finds_binary_creation_times_by_the_index_not_by_reading_every_row() {
    for (table, mend) in MEND_CREATION_TIMES {
        let plan = plan_among_ended_trials(mend, []);
        assert_found_by(&plan, table, &format!("{table}_newest"));
    }
}

#[test]
fn start_up_finds_the_live_trials_by_the_index_not_by_reading_every_row() {
    let plan = plan_among_ended_trials(LIVE_TRIALS, []);
    assert_found_by(&plan, "trials", "trials_live");
}

#[test]
fn a_purge_finds_the_trials_it_removes_by_their_end_not_by_reading_every_row() {
    let plan = plan_among_ended_trials(PURGED, params![time(Utc::now()), 200]);
    assert_found_by(&plan, "trials", "trials_ended");
    assert_found_by(&plan, "e", "trial_events_seq");
    assert_found_by(&plan, "r", "trial_responses_seq");
    assert!(
        plan.iter().all(|step| !step.contains("TEMP B-TREE")),
        "no sort of every old trial at each step: {plan:?}"
    );
    let plan = plan_among_ended_trials(PURGED_AUDIT, params![time(Utc::now()), 5000]);
    assert_found_by(&plan, "audit", "audit_at");
    assert!(
        plan.iter().all(|step| !step.contains("TEMP B-TREE")),
        "{plan:?}"
    );
}

#[test]
fn a_missed_job_is_removed_as_missed_only_and_scheduling_it_again_makes_it_a_job() {
    let mut store = SqliteBackend::in_memory().unwrap();
    let now = Utc::now();
    let job = |name: &str| Op::PutJob {
        id: id(name),
        start: StartTime::parse("2999-01-01T10:00:00Z").unwrap(),
        created_at: now,
    };
    let missed = |name: &str| Op::MarkMissed {
        id: id(name),
        at: now,
    };
    let delete = |name: &str| Op::DeleteMissedJob { id: id(name) };
    let counts = put(
        &mut store,
        vec![
            job("missed"),
            job("again"),
            job("scheduled"),
            missed("missed"),
            missed("again"),
            // Scheduled again, it is a job, not a missed one.
            job("again"),
            delete("missed"),
            delete("again"),
            delete("scheduled"),
        ],
    );
    assert_eq!(counts[6..], [1, 0, 0]);
    let mut kept: Vec<(String, bool)> = store
        .load()
        .unwrap()
        .jobs
        .into_iter()
        .map(|job| (job.id.to_string(), job.missed_at.is_some()))
        .collect();
    kept.sort();
    assert_eq!(
        kept,
        [("again".to_owned(), false), ("scheduled".to_owned(), false)]
    );
}

#[test]
fn commits_reach_the_disk_as_store_synchronous_says() {
    let dir = tempfile::tempdir().unwrap();
    let synchronous = |store: &SqliteBackend| -> i64 {
        store
            .conn
            .pragma_query_value(None, "synchronous", |row| row.get(0))
            .unwrap()
    };
    let store = SqliteBackend::open_with(dir.path(), Synchronous::Full).unwrap();
    assert_eq!(synchronous(&store), 2, "FULL");
    drop(store);
    let store = SqliteBackend::open(dir.path()).unwrap();
    assert_eq!(synchronous(&store), 1, "NORMAL");
}
