//! The page of one trial: where it stands and where that is in the sequence (the §4 table
//! with the current step marked), a timeline of its steps and waits on a time axis drawn from
//! its history, a component's progress, the failure reason and the failure file, the recorded
//! responses (folded), its audit entries (for admin keys, like `GET /audit`), and the actions
//! its state and the key's role allow, each behind a confirmation. It updates itself as the
//! trial moves: its stream follows the engine's events and state.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::Utc;
use maud::{Markup, html};
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::sync::watch;

use super::actions::{self, TrialAction};
use super::layout::{self, Section};
use super::live;
use super::session::Signed;
use super::timeline;
use crate::api::AppState;
use crate::api::extract::Admin;
use crate::api::view::{self, Found};
use crate::config::Role;
use crate::domain::{StartTime, TrialId};
use crate::engine::failure::failure_file;
use crate::engine::redact::REDACTED;
use crate::engine::sequence::{self, Next, Step, Wait};
use crate::engine::state::{
    EventKind, Lifecycle, Mode, Position, ResponseRecord, Snapshot, TrialEvent,
};
use crate::engine::{EngineHandle, EngineShared};
use crate::store::{AuditEntry, AuditQuery, ListedStatus};

/// How many audit entries the page shows.
const AUDIT_ROWS: usize = 50;
/// The largest part of a failure file shown.
const FAILURE_FILE_LIMIT: usize = 256 * 1024;
/// While a trial is live its page is drawn again at least this often (the timeline's running
/// bar grows); what is sent is only the parts that changed.
const REDRAW: Duration = Duration::from_secs(5);

/// Where the trial was found.
enum Kind {
    /// Its engine is in memory.
    Engine,
    /// Only its record is left in the store.
    Stored,
    /// It has a job and no engine yet.
    Scheduled(StartTime),
    /// Its job's start passed while the service was down: it waits for the operator.
    Missed(StartTime),
    /// Its record could not be read.
    Corrupt(String),
}

/// Everything the page shows of a trial, read at one moment. Its history is borrowed when a
/// live page keeps it up to date itself ([`Following`]).
struct TrialView<'h> {
    id: TrialId,
    kind: Kind,
    snapshot: Option<Snapshot>,
    history: Cow<'h, [Arc<TrialEvent>]>,
    responses: Vec<Arc<ResponseRecord>>,
    failure_file: Option<String>,
    /// `None` when the key's role may not read the audit log.
    audit: Option<Vec<AuditEntry>>,
}

impl TrialView<'_> {
    /// Nothing more will happen to the trial (or to its page).
    fn settled(&self) -> bool {
        match self.kind {
            Kind::Engine => self
                .snapshot
                .as_ref()
                .is_none_or(|s| s.lifecycle().is_final()),
            Kind::Scheduled(_) | Kind::Missed(_) => false,
            Kind::Stored | Kind::Corrupt(_) => true,
        }
    }
}

/// Why a trial's page cannot be shown.
enum Unshown {
    /// The service knows no such trial: no job, no engine, no record.
    Unknown,
    /// The store did not answer (busy or failing), with the API's status for that. A later
    /// read may work.
    Unreadable(StatusCode),
}

/// A live page's hold on the trial's engine: the history, kept up to date from the engine's
/// event stream instead of copied again at every update, and the engine's state changes.
struct Following {
    engine: Weak<EngineShared>,
    history: Vec<Arc<TrialEvent>>,
    events: broadcast::Receiver<Arc<TrialEvent>>,
    /// Events were missed: the history must be read again, whole.
    lagged: bool,
    /// The event stream has ended (the engine is going): only its state is listened to.
    ended: bool,
    snapshots: watch::Receiver<Snapshot>,
}

impl Following {
    /// Starts following `engine`: its history so far, and a stream of what comes after.
    fn new(engine: &EngineHandle) -> Self {
        let (history, events) = engine.events();
        Self {
            engine: engine.weak(),
            history,
            events,
            lagged: false,
            ended: false,
            snapshots: engine.subscribe(),
        }
    }

    /// Whether this follows `engine` (and not an earlier engine of the same trial).
    fn follows(&self, engine: &EngineHandle) -> bool {
        engine.same(&self.engine)
    }

    /// Takes what the event stream delivered.
    fn take(&mut self, received: Result<Arc<TrialEvent>, RecvError>) {
        match received {
            Ok(event) => self.history.push(event),
            Err(RecvError::Lagged(_)) => self.lagged = true,
            Err(RecvError::Closed) => self.ended = true,
        }
    }

    /// Takes every event delivered since the last look, without waiting.
    fn catch_up(&mut self) {
        while !self.lagged && !self.ended {
            match self.events.try_recv() {
                Ok(event) => self.take(Ok(event)),
                Err(TryRecvError::Lagged(missed)) => self.take(Err(RecvError::Lagged(missed))),
                Err(TryRecvError::Closed) => self.take(Err(RecvError::Closed)),
                Err(TryRecvError::Empty) => return,
            }
        }
    }
}

/// Reads the trial `id` as the page shows it. A live page passes the engine it follows, whose
/// history it keeps itself.
async fn load<'h>(
    state: &AppState,
    signed: &Signed,
    id: &TrialId,
    following: Option<&'h mut Following>,
) -> Result<TrialView<'h>, Unshown> {
    let found = match state.find_trial(id).await {
        Ok(found) => found,
        Err(e) if e.status == StatusCode::NOT_FOUND => {
            let scheduled = state.scheduler.jobs().into_iter().find(|job| job.id == *id);
            let kind = match scheduled {
                Some(job) => Kind::Scheduled(job.start_time),
                None => match state.scheduler.missed().into_iter().find(|m| m.id == *id) {
                    Some(missed) => Kind::Missed(missed.start_time),
                    None => return Err(Unshown::Unknown),
                },
            };
            return Ok(TrialView {
                id: id.clone(),
                kind,
                snapshot: None,
                history: Cow::Owned(Vec::new()),
                responses: Vec::new(),
                failure_file: None,
                audit: audit_of(state, signed, id).await,
            });
        }
        Err(e) => return Err(Unshown::Unreadable(e.status)),
    };
    let (kind, snapshot) = match &found {
        Found::Engine(engine) => (Kind::Engine, Some(engine.snapshot().clone())),
        Found::Stored(record) => (Kind::Stored, Some(view::snapshot_of(record))),
        Found::Corrupt(reason) => (Kind::Corrupt(reason.clone()), None),
    };
    // The last view of an engine that has ended is read whole from it: the page it ends on
    // shows every event, whatever the stream it followed delivered.
    let ended = snapshot.as_ref().is_some_and(|s| s.lifecycle().is_final());
    let history = match (&found, following) {
        (Found::Engine(engine), Some(following)) if following.follows(engine) && !ended => {
            // Taken after the snapshot, as a copy would be: every event up to it is in.
            following.catch_up();
            match following.lagged {
                true => Cow::Owned(engine.history()),
                false => Cow::Borrowed(following.history.as_slice()),
            }
        }
        _ => Cow::Owned(
            state
                .history(&found, id)
                .await
                .map_err(|e| Unshown::Unreadable(e.status))?,
        ),
    };
    // A corrupt record's own rows (history, responses) are read like any other's.
    let responses = state
        .responses(&found, id)
        .await
        .map_err(|e| Unshown::Unreadable(e.status))?;
    let failure_file = match snapshot.as_ref().and_then(|s| s.failure.as_ref()) {
        Some(_) => read_failure_file(state, id).await,
        None => None,
    };
    Ok(TrialView {
        id: id.clone(),
        kind,
        snapshot,
        history,
        responses,
        failure_file,
        audit: audit_of(state, signed, id).await,
    })
}

/// The trial's audit entries, for a key that may read the audit log.
async fn audit_of(state: &AppState, signed: &Signed, id: &TrialId) -> Option<Vec<AuditEntry>> {
    if !signed.may(Admin::ROLE) {
        return None;
    }
    let query = AuditQuery {
        trial_id: Some(id.to_string()),
        limit: AUDIT_ROWS,
        ..AuditQuery::default()
    };
    let mut entries = state
        .scheduler
        .deps()
        .store
        .read(move |reader| reader.audit(&query))
        .await
        .unwrap_or_default();
    entries.truncate(AUDIT_ROWS);
    Some(entries)
}

async fn read_failure_file(state: &AppState, id: &TrialId) -> Option<String> {
    let bytes = tokio::fs::read(failure_file(&state.settings, id))
        .await
        .ok()?;
    Some(shown_file(&bytes))
}

/// A failure file as the page shows it: whole, or its first [`FAILURE_FILE_LIMIT`] bytes (cut
/// between characters) and a line that says it was cut.
fn shown_file(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.len() <= FAILURE_FILE_LIMIT {
        return text.into_owned();
    }
    let cut = text.floor_char_boundary(FAILURE_FILE_LIMIT);
    format!(
        "{}\n… cut here: the file holds {} bytes and the page shows the first {} KiB; read it whole in the service's log directory",
        &text[..cut],
        bytes.len(),
        FAILURE_FILE_LIMIT / 1024
    )
}

/// The actions the trial's state allows now (whatever the role).
fn available(view: &TrialView) -> Vec<TrialAction> {
    use TrialAction::*;
    let snapshot = match (&view.kind, &view.snapshot) {
        (Kind::Scheduled(_) | Kind::Missed(_), _) => return vec![Unschedule],
        (Kind::Stored | Kind::Corrupt(_), _) | (Kind::Engine, None) => return vec![Delete],
        (Kind::Engine, Some(snapshot)) => snapshot,
    };
    let mut actions = Vec::new();
    match snapshot.lifecycle() {
        Lifecycle::Running | Lifecycle::Waiting if snapshot.mode == Mode::Normal => {
            let waiting = snapshot.lifecycle() == Lifecycle::Waiting;
            match snapshot.position {
                Position::Wait(Wait::Idle) if waiting => actions.extend([Active, Finish]),
                Position::Wait(Wait::Active) if waiting => actions.push(Finish),
                _ => {}
            }
            if snapshot.paused {
                actions.push(Resume);
                // At a wait there is nothing to step: the signal or callback that ends it does;
                // nor in the middle of a step, which resume lets finish.
                if let Position::Run(_) = snapshot.position
                    && !snapshot.held_midway()
                {
                    actions.push(Step);
                }
            } else {
                actions.push(Pause);
            }
            actions.push(Abort);
        }
        Lifecycle::Failed => {
            if snapshot.restorable() {
                actions.push(Restore);
                let skippable = match snapshot.position {
                    Position::Run(step) => sequence::skip_refusal(step).is_none(),
                    Position::Wait(wait) => {
                        sequence::wait_spec(wait).waiter == sequence::Waiter::Component
                    }
                };
                if skippable {
                    actions.push(Skip);
                }
            }
            actions.push(Abort);
        }
        _ => {}
    }
    actions.push(Delete);
    actions
}

/// The summary: status, where the trial stands, its times.
fn summary(view: &TrialView) -> Markup {
    html! {
        @match (&view.kind, &view.snapshot) {
            (Kind::Scheduled(start), _) => {
                p.status-line { (layout::badge(ListedStatus::Scheduled.name())) " starts at "
                    strong { (start.to_string()) } " (" (layout::time(start.utc())) ")" }
            },
            (Kind::Missed(start), _) => {
                p.status-line { (layout::badge(ListedStatus::Missed.name())) " was to start at "
                    strong { (start.to_string()) } " (" (layout::time(start.utc())) ")" }
                p.hint { "Its start time passed while the service was down. Schedule it again from the Schedule page, or unschedule it." }
            },
            (Kind::Corrupt(reason), _) => {
                p.status-line { (layout::badge(ListedStatus::Corrupt.name())) }
                p.flash.error { "Its record cannot be read: " (reason) }
            },
            (_, Some(s)) => {
                @let status = s.lifecycle().executor_status().name();
                p.status-line {
                    (layout::badge(s.engine_status().name()))
                    " "
                    @if s.engine_status().name() != status { (layout::badge(status)) " " }
                    @if s.paused { span.badge.paused { span aria-hidden="true" { "‖ " } "Paused" } " " }
                    @if let Mode::Cleanup { .. } = s.mode {
                        @if s.lifecycle().is_live() { span.badge.aborted { span aria-hidden="true" { "⊘ " } "Aborting" } }
                    }
                }
                dl.facts {
                    dt { "State" } dd #trial-state { (view::state(s)) }
                    @if let Position::Run(step) = s.position { dt { "Step" } dd { (step.name()) } }
                    @if let Some(waiting) = view::waiting_for(s) { dt { "Waiting for" } dd { (waiting) } }
                    dt { "KPI marking" } dd { (s.kpi_status.map_or("none yet", |k| k.marking())) }
                    @if let Mode::Cleanup { reason, .. } = &s.mode { dt { "Abort reason" } dd { (reason) } }
                    dt { "Created" } dd { (layout::time(s.created_at)) }
                    dt { "Updated" } dd { (layout::time(s.updated_at)) }
                    @if let Some(ended) = s.ended_at { dt { "Ended" } dd { (layout::time(ended)) } }
                }
                @if matches!(view.kind, Kind::Stored) {
                    p.hint { "This trial has ended and left memory; what is shown is its record in the store." }
                }
            },
            (_, None) => {},
        }
    }
}

/// The action buttons the state and the role allow, each opening its confirmation.
fn action_bar(view: &TrialView, signed: &Signed) -> Markup {
    let all = available(view);
    let allowed: Vec<TrialAction> = all
        .iter()
        .copied()
        .filter(|a| signed.may(a.role()))
        .collect();
    html! {
        @if allowed.is_empty() {
            @if all.is_empty() {
                p.hint { "No action fits the trial's state." }
            } @else if signed.holder.role == Role::Viewer {
                p.hint { "Your key's role (viewer) can look but not act." }
            } @else {
                p.hint { "What the trial's state allows now ("
                    (all.iter().map(|a| a.label()).collect::<Vec<_>>().join(", "))
                    ") needs a role above yours (" (signed.holder.role) ")." }
            }
        } @else {
            // What a higher role could do instead (restore, skip); not Delete, which fits always.
            @let above: Vec<&str> = all.iter()
                .filter(|a| !signed.may(a.role()) && **a != TrialAction::Delete)
                .map(|a| a.label()).collect();
            @if !above.is_empty() {
                p.hint { (above.join(", ")) " also fit" @if above.len() == 1 { "s" } " the trial's state, but need"
                    @if above.len() == 1 { "s" } " a role above yours (" (signed.holder.role) ")." }
            }
            ul.actions {
                @for action in &allowed {
                    @let dialog = format!("confirm-{}", action.segment());
                    li {
                        a.button.danger[action.dangerous()]
                            href={ "/ui/trials/" (view.id) "/confirm/" (action.segment()) }
                            data-dialog=(dialog) data-action=(action.segment()) {
                            (action.label())
                        }
                        dialog id=(dialog) aria-labelledby={ (dialog) "-title" } {
                            h2 id={ (dialog) "-title" } { (action.label()) ": trial " (view.id) }
                            (actions::confirm_form(signed, &view.id, *action,
                                html! { button type="button" data-close { "Cancel" } }))
                        }
                    }
                }
            }
        }
    }
}

/// A component's progress: the last report, and the reports so far.
fn progress(view: &TrialView) -> Markup {
    let reports: Vec<&Arc<TrialEvent>> = view
        .history
        .iter()
        .filter(|e| e.event == EventKind::Progress)
        .collect();
    let current = view.snapshot.as_ref().and_then(|s| s.progress.as_ref());
    html! {
        @if let Some(p) = current {
            div.progress-now {
                @if let Some(percent) = p.progress {
                    label for="progress-bar" { "Progress " (percent) "%" }
                    progress #progress-bar max="100" value=(percent) { (percent) "%" }
                }
                @if let Some(message) = &p.message { p { (message) } }
            }
        }
        @if reports.is_empty() {
            p.hint { "No progress reports." }
        } @else {
            ol.progress-list reversed {
                @for e in reports.iter().rev().take(20) {
                    li { (layout::time(e.at)) " — " (e.detail.as_deref().unwrap_or("(no message)")) }
                }
            }
        }
    }
}

/// Why the trial failed, what a failed clean-up left, and the failure file.
fn failure(view: &TrialView) -> Markup {
    let Some(failure) = view.snapshot.as_ref().and_then(|s| s.failure.as_ref()) else {
        return html! {};
    };
    html! {
        h2 { "Failure" }
        p.flash.error.failure-reason role="alert" {
            span aria-hidden="true" { "✕ " } (failure.reason)
        }
        p { "Failed at " (layout::time(failure.at)) "."
            @if !failure.reported { " Reporting the failure (repository, failure file)…" } }
        @if failure.cleanup_failed {
            p { "The clean-up after an abort failed; Abort again retries it."
                @if failure.leftovers.is_empty() {
                    " Nothing is left deployed on the facility: the step named above is what failed."
                } }
        }
        @if !failure.leftovers.is_empty() {
            p { "Left deployed:" }
            ul { @for left in &failure.leftovers {
                li { (left.kind.name()) " " code { (left.id) } }
            } }
        }
        details #failure-file {
            summary { "Failure file " code { "executor_" (view.id) "_fail.log" } }
            @match &view.failure_file {
                Some(text) => pre.file { code { (text) } },
                None => p.hint { "Not written yet." },
            }
        }
    }
}

/// The mark of a row of the sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowMark {
    Done,
    Skipped,
    Running,
    Paused,
    Waiting,
    Failed,
    /// Begun, then left by an abort before it ended.
    CutShort,
    Pending,
    NotRun,
}

impl RowMark {
    fn parts(self) -> (&'static str, &'static str, &'static str) {
        match self {
            RowMark::Done => ("✓", "done", "done"),
            RowMark::Skipped => ("↷", "skipped", "skipped"),
            RowMark::Running => ("▶", "running", "running now"),
            RowMark::Paused => ("‖", "paused", "paused before it"),
            RowMark::Waiting => ("◔", "waiting", "waiting now"),
            RowMark::Failed => ("✕", "failed", "failed"),
            RowMark::CutShort => ("⊘", "cut-short", "cut short by the abort"),
            RowMark::Pending => ("·", "pending", "to come"),
            RowMark::NotRun => ("–", "not-run", "not run"),
        }
    }

    fn current(self) -> bool {
        matches!(
            self,
            RowMark::Running | RowMark::Paused | RowMark::Waiting | RowMark::Failed
        )
    }
}

/// What the history says of the steps and waits of one path (the sequence, or the clean-up).
struct Seen {
    completed: HashSet<String>,
    started: HashSet<String>,
    /// Steps whose last run failed.
    failed: HashSet<String>,
    /// The waiting points waited at, and those left through a signal, by what they wait for.
    waited: HashSet<String>,
    left: HashSet<String>,
    skipped: Vec<String>,
}

fn seen<'a>(events: impl Iterator<Item = &'a Arc<TrialEvent>>) -> Seen {
    let mut seen = Seen {
        completed: HashSet::new(),
        started: HashSet::new(),
        failed: HashSet::new(),
        waited: HashSet::new(),
        left: HashSet::new(),
        skipped: Vec::new(),
    };
    let mut waiting_at = None;
    for event in events {
        let step = event.step.clone().unwrap_or_default();
        match event.event {
            EventKind::StepCompleted => {
                seen.failed.remove(&step);
                seen.completed.insert(step);
            }
            EventKind::StepFailed => {
                seen.failed.insert(step);
            }
            EventKind::StepStarted => {
                seen.started.insert(step);
            }
            EventKind::Waiting => {
                seen.waited.extend(event.detail.clone());
                waiting_at = event.detail.clone();
            }
            EventKind::SignalAccepted => seen.left.extend(waiting_at.take()),
            EventKind::Skipped => seen
                .skipped
                .extend(event.detail.as_deref().map(str::to_owned)),
            _ => {}
        }
    }
    seen
}

/// One row of a path: a step, or the wait after it.
#[derive(Clone, Copy)]
enum PathRow {
    Step(Step),
    Wait(Wait),
}

/// How a row of a path is marked: where the engine stands (while it lives or has failed),
/// else what the history says. An ended engine's last position is history like the rest.
fn mark(row: PathRow, seen: &Seen, current: Option<(Position, Lifecycle)>, over: bool) -> RowMark {
    let here = |lifecycle: Lifecycle, standing: RowMark| match lifecycle {
        Lifecycle::Failed => Some(RowMark::Failed),
        Lifecycle::Running | Lifecycle::Waiting => Some(standing),
        Lifecycle::Finished | Lifecycle::Aborted | Lifecycle::Stopped => None,
    };
    let (at_row, done, failed, begun, skipped_as) = match row {
        PathRow::Step(step) => {
            let at_row = match current {
                Some((Position::Run(at), lifecycle)) if at == step => here(
                    lifecycle,
                    if lifecycle == Lifecycle::Waiting {
                        RowMark::Paused
                    } else {
                        RowMark::Running
                    },
                ),
                _ => None,
            };
            (
                at_row,
                seen.completed.contains(step.name()),
                seen.failed.contains(step.name()),
                seen.started.contains(step.name()),
                format!("{}:", step.name()),
            )
        }
        PathRow::Wait(wait) => {
            let spec = sequence::wait_spec(wait);
            let at_row = match current {
                Some((Position::Wait(at), lifecycle)) if at == wait => {
                    here(lifecycle, RowMark::Waiting)
                }
                _ => None,
            };
            let exited = spec
                .exits
                .iter()
                .any(|(_, next)| seen.started.contains(next.name()));
            (
                at_row,
                exited || seen.left.contains(spec.waiting_for),
                false,
                seen.waited.contains(spec.waiting_for),
                format!("the wait for {}:", spec.waiting_for),
            )
        }
    };
    if let Some(mark) = at_row {
        mark
    } else if seen.skipped.iter().any(|s| s.starts_with(&skipped_as)) {
        RowMark::Skipped
    } else if done {
        RowMark::Done
    } else if failed {
        RowMark::Failed
    } else if over && begun {
        RowMark::CutShort
    } else if over {
        RowMark::NotRun
    } else {
        RowMark::Pending
    }
}

/// The marks of a path's rows: those before where the engine stands that are still to come
/// were passed over (a clean-up step with nothing to undo), so they are not run.
fn marks(
    rows: &[PathRow],
    seen: &Seen,
    current: Option<(Position, Lifecycle)>,
    over: bool,
) -> Vec<RowMark> {
    let mut marks: Vec<RowMark> = rows
        .iter()
        .map(|row| mark(*row, seen, current, over))
        .collect();
    if let Some(here) = marks.iter().rposition(|m| m.current()) {
        for mark in &mut marks[..here] {
            if *mark == RowMark::Pending {
                *mark = RowMark::NotRun;
            }
        }
    }
    marks
}

fn path_table(
    caption: &str,
    rows: &[PathRow],
    seen: &Seen,
    current: Option<(Position, Lifecycle)>,
    over: bool,
) -> Markup {
    // Steps are numbered in the order they run; waits are not.
    let numbered = rows
        .iter()
        .scan(0, |n, row| {
            if let PathRow::Step(_) = row {
                *n += 1;
            }
            Some((*n, *row))
        })
        .zip(marks(rows, seen, current, over));
    html! {
        div.table-wrap {
            table.sequence {
                caption { (caption) }
                thead { tr { th scope="col" { "#" } th scope="col" { "Step or wait" } th scope="col" { "Where" } } }
                tbody {
                    @for ((number, row), row_mark) in numbered {
                        @let (symbol, class, words) = row_mark.parts();
                        tr class=(class) aria-current=[row_mark.current().then_some("step")] {
                            @match row {
                                PathRow::Step(step) => {
                                    td { (number) }
                                    th scope="row" { code { (step.name()) } }
                                },
                                PathRow::Wait(wait) => {
                                    td {}
                                    th scope="row" .wait { "wait: " (sequence::wait_spec(wait).waiting_for) }
                                },
                            }
                            td.mark { span aria-hidden="true" { (symbol) " " } (words) }
                        }
                    }
                }
            }
        }
    }
}

/// Where the trial is in the sequence (and in the clean-up path, once it is aborting).
fn position(view: &TrialView, vnf: bool) -> Markup {
    let Some(snapshot) = &view.snapshot else {
        return match view.kind {
            Kind::Corrupt(_) => html! {
                p.hint { "Its record cannot be read, so where it stands is not known: its timeline and responses are below." }
            },
            Kind::Engine | Kind::Stored | Kind::Scheduled(_) | Kind::Missed(_) => {
                html! { p.hint { "The trial has not started: nothing has run yet." } }
            }
        };
    };
    let cleanup_at = view
        .history
        .iter()
        .position(|e| e.event == EventKind::CleanupStarted);
    let (main, cleanup) = view
        .history
        .split_at(cleanup_at.unwrap_or(view.history.len()));
    let cleaning = matches!(snapshot.mode, Mode::Cleanup { .. });
    let current = Some((snapshot.position, snapshot.lifecycle()));
    let over = !snapshot.lifecycle().is_live() && snapshot.lifecycle() != Lifecycle::Failed;
    let mut rows = Vec::new();
    for step in sequence::happy_path(vnf) {
        rows.push(PathRow::Step(step));
        if let Some(Next::Wait(wait)) = sequence::after(step, vnf) {
            rows.push(PathRow::Wait(wait));
        }
    }
    let main_seen = seen(main.iter());
    // The clean-up waits for a late slice-created callback only after a close that found no
    // slice of a deployment never answered: shown while it does.
    let late_slice = cleaning && snapshot.position == Position::Wait(Wait::SliceCreated);
    let mut cleanup_rows = Vec::new();
    for (step, _) in sequence::CLEANUP {
        cleanup_rows.push(PathRow::Step(*step));
        if *step == Step::CloseService {
            if late_slice {
                cleanup_rows.push(PathRow::Wait(Wait::SliceCreated));
            }
            cleanup_rows.push(PathRow::Wait(Wait::SliceClosed));
        }
    }
    html! {
        (path_table(
            "The trial sequence",
            &rows,
            &main_seen,
            (!cleaning).then_some(current).flatten(),
            over || cleaning || cleanup_at.is_some(),
        ))
        @if cleaning || cleanup_at.is_some() {
            (path_table(
                "The clean-up path (abort)",
                &cleanup_rows,
                &seen(cleanup.iter()),
                cleaning.then_some(current).flatten(),
                over,
            ))
        }
    }
}

/// The timeline, and the history in words.
fn history(view: &TrialView) -> Markup {
    html! {
        (timeline::render(&view.history, Utc::now()))
        details #history-table {
            summary { "Every event (" (view.history.len()) ")" }
            div.table-wrap {
                table.events {
                    thead { tr { th scope="col" { "#" } th scope="col" { "At" } th scope="col" { "Event" } th scope="col" { "Took" } } }
                    tbody {
                        @for e in view.history.iter() {
                            tr {
                                td { (e.seq) }
                                td { (layout::time(e.at)) }
                                td { (timeline::describe(e)) }
                                td { @if let Some(ms) = e.duration_ms { (layout::duration(ms)) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The recorded responses, each folded.
fn responses(view: &TrialView) -> Markup {
    html! {
        @if view.responses.is_empty() {
            p.hint { "No responses recorded." }
        } @else {
            ol.responses {
                @for (i, r) in view.responses.iter().enumerate() {
                    li {
                        details id={ "response-" (i) } {
                            summary {
                                code { (r.step) } " · " (r.method) " " (r.service) " " code { (r.path) } " → "
                                @match r.status {
                                    Some(status) => { strong { (status) } },
                                    None => { strong { "no answer" } },
                                }
                                " · " (layout::duration(r.duration_ms))
                                @if r.attempt > 1 { " · attempt " (r.attempt) }
                            }
                            p.hint { (layout::time(r.at)) }
                            @if let Some(error) = &r.error { p { (error) } }
                            @if let Some(body) = &r.body { (layout::json_block(body)) }
                        }
                    }
                }
            }
        }
    }
}

/// The audit entries about the trial, for keys that may read the audit log.
fn audit(view: &TrialView) -> Markup {
    html! {
        @match &view.audit {
            None => { p.hint { "The audit log is for admin keys." } },
            Some(entries) if entries.is_empty() => { p.hint { "No audit entries." } },
            Some(entries) => {
                div.table-wrap {
                    table.audit {
                        thead { tr {
                            th scope="col" { "At" } th scope="col" { "Who" } th scope="col" { "Action" }
                            th scope="col" { "Outcome" } th scope="col" { "Detail" }
                        } }
                        tbody {
                            @for e in entries {
                                tr {
                                    td { (layout::time(e.at)) }
                                    td { (e.actor) @if let Some(role) = &e.role { " (" (role) ")" } }
                                    td { code { (e.action) } }
                                    td { (e.outcome) }
                                    td { (e.detail.as_deref().unwrap_or("")) }
                                }
                            }
                        }
                    }
                }
            },
        }
    }
}

/// Every live part of the page, by element id.
/// A titled section of the trial page around the part `trial-{name}` (the live updates
/// replace that part by its id).
fn panel(name: &str, title: &str, content: Markup) -> Markup {
    let title_id = format!("{name}-title");
    html! {
        section aria-labelledby=(title_id) {
            h2 id=(title_id) { (title) }
            div id=(format!("trial-{name}")) { (content) }
        }
    }
}

fn parts(view: &TrialView, signed: &Signed, vnf: bool) -> Vec<(&'static str, Markup)> {
    vec![
        ("trial-summary", summary(view)),
        ("trial-actions", action_bar(view, signed)),
        ("trial-failure", failure(view)),
        ("trial-progress", progress(view)),
        ("trial-position", position(view, vnf)),
        ("trial-history", history(view)),
        ("trial-responses", responses(view)),
        ("trial-audit", audit(view)),
    ]
}

fn vnf(state: &AppState) -> bool {
    !state.settings.executor.disable_vnf
}

/// The page of a trial id the service does not know, or that is none; an id that is, or
/// holds, a key or a secret (pasted into the address) is not shown back.
fn unknown(state: &AppState, signed: &Signed, raw: &str) -> Response {
    let (status, text) = match TrialId::parse(raw) {
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()),
        Ok(id) => (
            StatusCode::NOT_FOUND,
            format!("The service knows no trial '{id}' (no job, no engine, no record)."),
        ),
    };
    let mut text = state.scheduler.deps().secrets.redactor().text(&text);
    if state.scheduler.is_a_secret(raw) {
        // A key given by its digest only: the redactor does not know it.
        text = text.replace(raw, REDACTED);
    }
    layout::error_page(Some(signed), status, &text)
}

/// The page of a trial the store could not read now.
fn unreadable(signed: &Signed, status: StatusCode) -> Response {
    layout::error_page(
        Some(signed),
        status,
        "The trial could not be read: the store did not answer just now. Try again in a moment.",
    )
}

/// `GET /ui/trials/{trial_id}`.
pub async fn page(
    signed: Signed,
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Response {
    let Ok(id) = TrialId::parse(&raw) else {
        return unknown(&state, &signed, &raw);
    };
    let view = match load(&state, &signed, &id, None).await {
        Ok(view) => view,
        Err(Unshown::Unknown) => return unknown(&state, &signed, &raw),
        Err(Unshown::Unreadable(status)) => return unreadable(&signed, status),
    };
    let parts = parts(&view, &signed, vnf(&state));
    let part = |name: &str| {
        parts
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    };
    let live = format!("/ui/trials/{id}/live");
    let body = html! {
        p.crumbs { a href="/ui/trials" { "← Trials" } }
        h1 { "Trial " code { (id) } }
        section #trial-summary aria-label="Status" aria-live="polite" { (part("trial-summary")) }
        (panel("actions", "Actions", part("trial-actions")))
        section #trial-failure { (part("trial-failure")) }
        (panel("progress", "Progress", part("trial-progress")))
        (panel("history", "Timeline", part("trial-history")))
        (panel("position", "Where it is in the sequence", part("trial-position")))
        (panel("responses", "Recorded responses", part("trial-responses")))
        (panel("audit", "Audit entries", part("trial-audit")))
    };
    layout::respond(
        StatusCode::OK,
        layout::shell(
            &format!("Trial {id}"),
            Some(&signed),
            Some(Section::Trials),
            Some(&live),
            body,
        ),
    )
}

/// `GET /ui/trials/{trial_id}/live`: the page's parts, again whenever the trial changes.
pub async fn live(
    signed: Signed,
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Response {
    let Ok(id) = TrialId::parse(&raw) else {
        return unknown(&state, &signed, &raw);
    };
    live::stream(&state.clone(), signed.clone(), move |tx| async move {
        let mut following: Option<Following> = None;
        let mut sent = live::Sent::default();
        loop {
            // Follow the trial's engine (a scheduled trial gets one; a deleted trial loses it).
            following = match state.scheduler.engines().get(&id) {
                Some(engine) => match following.take() {
                    Some(kept) if kept.follows(&engine) && !kept.lagged => Some(kept),
                    _ => Some(Following::new(&engine)),
                },
                None => None,
            };
            if let Some(following) = &mut following {
                // Listen before reading, so no change between the two is missed.
                following.snapshots.mark_unchanged();
            }
            let view = match load(&state, &signed, &id, following.as_mut()).await {
                Ok(view) => Some(view),
                Err(Unshown::Unknown) => {
                    let gone = html! { p.flash.error role="alert" { "The service no longer knows this trial (it was deleted or unscheduled)." } };
                    let _ = tx.send(live::patch(&[("trial-summary", gone)])).await;
                    let _ = tx.send(live::done()).await;
                    return;
                }
                // The store did not answer (busy): the page stays as it is, and the next
                // update reads it again.
                Err(Unshown::Unreadable(_)) => None,
            };
            if let Some(view) = &view {
                if let Some(patch) = sent.patch(parts(view, &signed, vnf(&state)))
                    && tx.send(patch).await.is_err()
                {
                    return;
                }
                if view.settled() {
                    let _ = tx.send(live::done()).await;
                    return;
                }
            }
            let scheduled = view
                .as_ref()
                .is_some_and(|view| matches!(view.kind, Kind::Scheduled(_)));
            // A missed trial changes only when an operator schedules or removes it.
            let missed = view
                .as_ref()
                .is_some_and(|view| matches!(view.kind, Kind::Missed(_)));
            // Only a live trial's timeline grows while nothing happens (its running bar).
            let growing = view.as_ref().is_none_or(|view| {
                view.snapshot
                    .as_ref()
                    .is_some_and(|snapshot| snapshot.lifecycle().is_live())
            });
            // The view may borrow the followed history, which the wait below extends.
            drop(view);
            if missed {
                tokio::select! {
                    () = tokio::time::sleep(REDRAW) => {}
                    () = tx.closed() => return,
                }
                continue;
            }
            if scheduled {
                // The job's engine starts (or the job goes): either changes the page.
                tokio::select! {
                    _ = state.scheduler.wait_for_engine(&id) => {}
                    () = tx.closed() => return,
                }
                continue;
            }
            match &mut following {
                Some(following) => {
                    let listening = !following.lagged && !following.ended;
                    let received = tokio::select! {
                        received = following.events.recv(), if listening => Some(received),
                        _ = following.snapshots.changed() => None,
                        () = tokio::time::sleep(REDRAW), if growing => None,
                        () = tx.closed() => return,
                    };
                    if let Some(received) = received {
                        following.take(received);
                    }
                }
                None => tokio::select! {
                    () = tokio::time::sleep(REDRAW) => {}
                    () = tx.closed() => return,
                },
            }
            tokio::time::sleep(live::SETTLE).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen_of(completed: &[Step], left: &[Wait], skipped: &[&str]) -> Seen {
        Seen {
            completed: completed.iter().map(|s| s.name().to_owned()).collect(),
            started: completed.iter().map(|s| s.name().to_owned()).collect(),
            failed: HashSet::new(),
            waited: left
                .iter()
                .map(|w| sequence::wait_spec(*w).waiting_for.to_owned())
                .collect(),
            left: left
                .iter()
                .map(|w| sequence::wait_spec(*w).waiting_for.to_owned())
                .collect(),
            skipped: skipped.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn a_failed_clean_up_step_passed_steps_and_an_abort_mid_wait_are_marked_as_they_went() {
        let cleanup = [
            PathRow::Step(Step::SendKpiFinish),
            PathRow::Step(Step::DeleteMeasurementJob),
            PathRow::Step(Step::CloseService),
            PathRow::Wait(Wait::SliceClosed),
            PathRow::Step(Step::UpdateStatusAborted),
        ];
        // The job's delete failed; the clean-up went on and now waits for the slice to close.
        let mut seen = seen_of(&[], &[], &[]);
        seen.started.insert("DeleteMeasurementJob".into());
        seen.failed.insert("DeleteMeasurementJob".into());
        seen.started.insert("CloseService".into());
        seen.completed.insert("CloseService".into());
        let waiting = Some((Position::Wait(Wait::SliceClosed), Lifecycle::Waiting));
        assert_eq!(
            marks(&cleanup, &seen, waiting, false),
            [
                RowMark::NotRun,
                RowMark::Failed,
                RowMark::Done,
                RowMark::Waiting,
                RowMark::Pending
            ]
        );
        // The trial sequence of a trial aborted at its wait for the operator.
        let active = PathRow::Wait(Wait::Active);
        let mut waited = seen_of(&[], &[], &[]);
        waited
            .waited
            .insert(sequence::wait_spec(Wait::Active).waiting_for.to_owned());
        assert_eq!(mark(active, &waited, None, true), RowMark::CutShort);
        assert_eq!(
            mark(active, &seen_of(&[], &[], &[]), None, true),
            RowMark::NotRun
        );
    }

    #[test]
    fn a_large_failure_file_is_cut_between_characters_and_says_so() {
        assert_eq!(
            shown_file(b"{\"reason\": \"short\"}"),
            "{\"reason\": \"short\"}"
        );
        // A two-byte character across the limit is left out whole.
        let mut bytes = vec![b'a'; FAILURE_FILE_LIMIT - 1];
        bytes.extend_from_slice("é and more".as_bytes());
        let shown = shown_file(&bytes);
        let (kept, note) = shown.split_once('\n').expect("a note after the cut");
        assert_eq!(kept.len(), FAILURE_FILE_LIMIT - 1);
        assert!(!kept.contains('\u{FFFD}'));
        assert!(
            note.starts_with(&format!("… cut here: the file holds {} bytes", bytes.len())),
            "{note}"
        );
    }

    #[test]
    fn where_an_engine_stands_is_marked_only_while_it_lives_or_has_failed() {
        let seen = seen_of(&[Step::Finish], &[], &[]);
        let at_finish = Position::Run(Step::Finish);
        for (lifecycle, expected) in [
            (Lifecycle::Running, RowMark::Running),
            (Lifecycle::Waiting, RowMark::Paused),
            (Lifecycle::Failed, RowMark::Failed),
            (Lifecycle::Finished, RowMark::Done),
            (Lifecycle::Aborted, RowMark::Done),
        ] {
            let mark = mark(
                PathRow::Step(Step::Finish),
                &seen,
                Some((at_finish, lifecycle)),
                !lifecycle.is_live(),
            );
            assert_eq!(mark, expected, "{lifecycle:?}");
        }
    }

    #[test]
    fn a_wait_left_through_a_signal_is_done_and_a_skipped_one_is_skipped() {
        let slice = PathRow::Wait(Wait::SliceCreated);
        // Taken, and the next step paused before it starts.
        let paused_after = Some((
            Position::Run(Step::UpdateDeploymentSlice),
            Lifecycle::Waiting,
        ));
        let left = seen_of(&[], &[Wait::SliceCreated], &[]);
        assert_eq!(mark(slice, &left, paused_after, false), RowMark::Done);
        let skipped = seen_of(
            &[],
            &[Wait::SliceCreated],
            &["the wait for the slice callback (slice created): it came by mail"],
        );
        assert_eq!(mark(slice, &skipped, paused_after, false), RowMark::Skipped);
        let nothing = seen_of(&[], &[], &[]);
        assert_eq!(mark(slice, &nothing, None, false), RowMark::Pending);
        assert_eq!(mark(slice, &nothing, None, true), RowMark::NotRun);
        let waiting = Some((Position::Wait(Wait::SliceCreated), Lifecycle::Waiting));
        assert_eq!(mark(slice, &nothing, waiting, false), RowMark::Waiting);
    }
}
