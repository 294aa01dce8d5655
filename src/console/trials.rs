//! The trials page: every trial the service knows (live, scheduled, failed, ended), newest
//! first, filtered by status and searched by id, with the count of each status, in pages
//! like `GET /trials` (the same query, the same rows). It updates itself while open.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};

use super::layout::{self, Section};
use super::live;
use super::session::Signed;
use crate::api::AppState;
use crate::api::listing::{self, Page};
use crate::api::paging;
use crate::store::{ListedStatus, ListedTrial, TrialQuery};

/// The status tabs: a label and the statuses it shows (none: all).
const TABS: &[(&str, &[ListedStatus])] = &[
    ("All", &[]),
    ("Active", &[ListedStatus::Active]),
    ("Scheduled", &[ListedStatus::Scheduled]),
    ("Missed", &[ListedStatus::Missed]),
    ("Failed", &[ListedStatus::Failed]),
    ("Ended", &[ListedStatus::Finished, ListedStatus::Aborted]),
    ("Corrupt", &[ListedStatus::Corrupt]),
];

/// Tabs shown only when they have trials (or are chosen).
const RARE: [&str; 2] = ["Missed", "Corrupt"];

/// How often an open page checks whether the trials in memory changed.
const CHECK: Duration = Duration::from_millis(500);
/// An open page is refreshed at least this often (ended trials leave memory, records go).
const REFRESH: Duration = Duration::from_secs(15);

/// The page's query, as given and as checked.
struct Query {
    raw: String,
    parsed: TrialQuery,
}

fn query(raw: Option<String>) -> Result<Query, String> {
    let raw = raw.unwrap_or_default();
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(raw.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let parsed = listing::parse_query(pairs).map_err(|e| e.detail)?;
    Ok(Query { raw, parsed })
}

/// A link to the listing with these statuses, keeping the search.
fn href(statuses: &[ListedStatus], query: &TrialQuery, cursor: Option<&str>) -> String {
    let mut pairs = url::form_urlencoded::Serializer::new(String::new());
    if !statuses.is_empty() {
        pairs.append_pair("status", &names(statuses));
    }
    if let Some(q) = &query.id_contains {
        pairs.append_pair("q", q);
    }
    if query.limit != paging::DEFAULT_LIMIT {
        pairs.append_pair("limit", &query.limit.to_string());
    }
    if let Some(cursor) = cursor {
        pairs.append_pair("cursor", cursor);
    }
    let pairs = pairs.finish();
    if pairs.is_empty() {
        "/ui/trials".to_owned()
    } else {
        format!("/ui/trials?{pairs}")
    }
}

/// Statuses as a query writes them: `Finished,Aborted`.
fn names(statuses: &[ListedStatus]) -> String {
    let names: Vec<&str> = statuses.iter().map(|s| s.name()).collect();
    names.join(",")
}

fn same_statuses(a: &[ListedStatus], b: &[ListedStatus]) -> bool {
    a.len() == b.len() && b.iter().all(|s| a.contains(s))
}

/// The status tabs with their counts.
fn tabs(query: &TrialQuery, counts: &[(ListedStatus, u64)]) -> Markup {
    let count = |statuses: &[ListedStatus]| -> u64 {
        counts
            .iter()
            .filter(|(s, _)| statuses.is_empty() || statuses.contains(s))
            .map(|(_, n)| n)
            .sum()
    };
    html! {
        ul.tabs {
            @for (label, statuses) in TABS {
                @let n = count(statuses);
                @let current = same_statuses(&query.statuses, statuses);
                @if n > 0 || current || !RARE.contains(label) {
                    li {
                        a href=(href(statuses, query, None))
                            aria-current=[current.then_some("page")] {
                            (label) " " span.count { (n) }
                        }
                    }
                }
            }
        }
    }
}

/// Where a row's trial stands, in a few words: held by the operator or being aborted first.
fn whereabouts(row: &ListedTrial) -> Markup {
    html! {
        @if row.aborting { span.badge.aborted { span aria-hidden="true" { "⊘ " } "Aborting" } " " }
        @if row.paused { span.badge.paused { span aria-hidden="true" { "‖ " } "Paused" } " " }
        @match row.engine_status {
            ListedStatus::Scheduled => {
                "starts at " @if let Some(start) = &row.start_time { (layout::time_text(start)) }
            },
            ListedStatus::Missed => {
                "was to start at " @if let Some(start) = &row.start_time { (layout::time_text(start)) }
                ", while the service was down: schedule it again, or unschedule it"
            },
            ListedStatus::Failed | ListedStatus::Corrupt => {
                span.reason { (row.failure.as_deref().unwrap_or("")) }
            },
            ListedStatus::Finished | ListedStatus::Aborted | ListedStatus::Stopped => {
                "ended " @if let Some(ended) = &row.ended_at { (layout::time_text(ended)) }
            },
            ListedStatus::Active => {
                @if let Some(waiting) = &row.waiting_for {
                    span aria-hidden="true" { "‖ " } "waiting for " (waiting)
                } @else if let Some(step) = &row.step {
                    span aria-hidden="true" { "▶ " } (step)
                } @else if let Some(state) = &row.state {
                    (state)
                }
            },
        }
    }
}

/// What an empty page says: a later page, that there are no older trials (with a search or
/// a filter too: the first page had some); else no trial matches the search or the filter,
/// if one is chosen; otherwise there are none yet.
fn nothing_listed(query: &TrialQuery) -> Markup {
    let search = query.id_contains.as_deref();
    let filter = (!query.statuses.is_empty()).then(|| names(&query.statuses));
    html! {
        @if query.after.is_some() {
            p.empty { "No older trials." }
        } @else if search.is_some() || filter.is_some() {
            p.empty {
                "No trial matches "
                @if let Some(q) = search { "the search “" (q) "”" }
                @if search.is_some() && filter.is_some() { " and " }
                @if let Some(filter) = &filter { "the filter " strong { (filter) } }
                ". " a href="/ui/trials" { "Show every trial" } "."
            }
        } @else {
            p.empty { "No trials here yet. " a href="/ui/schedule" { "Schedule one" } "." }
        }
    }
}

/// The table of one page, and the link to the next.
fn listing(query: &TrialQuery, page: &Page) -> Markup {
    let statuses = &query.statuses;
    html! {
        @if page.trials.is_empty() {
            (nothing_listed(query))
        } @else {
            div.table-wrap {
                table.trials {
                    caption.visually-hidden { "Trials, newest first" }
                    thead { tr {
                        th scope="col" { "Trial" }
                        th scope="col" { "Status" }
                        th scope="col" { "Where it stands" }
                        th scope="col" { "Created" }
                        th scope="col" { "Updated" }
                    } }
                    tbody {
                        @for row in &page.trials {
                            tr data-trial=(row.trial_id) data-status=(row.engine_status.name()) {
                                th scope="row" { a href={ "/ui/trials/" (row.trial_id) } { (row.trial_id) } }
                                td { (layout::badge(row.engine_status.name())) }
                                td { (whereabouts(row)) }
                                // Labelled in the cell too: on a phone a row is a card, without
                                // the table's head.
                                td { span.cell-label { "Created " } (layout::time_text(&row.created_at)) }
                                td { span.cell-label { "Updated " } (layout::time_text(&row.updated_at)) }
                            }
                        }
                    }
                }
            }
        }
        nav.pager aria-label="Pages" {
            @if query.after.is_some() {
                a href=(href(statuses, query, None)) { "← Newest" }
            }
            @if let Some(cursor) = &page.next_cursor {
                a href=(href(statuses, query, Some(cursor))) rel="next" { "Older →" }
            }
        }
    }
}

/// The page's live parts, read now.
async fn parts(
    state: &AppState,
    query: &TrialQuery,
) -> Result<Vec<(&'static str, Markup)>, String> {
    let q = query.id_contains.clone();
    let counts = state
        .scheduler
        .deps()
        .store
        .read(move |reader| reader.counts(q.as_deref()))
        .await
        .map_err(|e| e.to_string())?;
    let page = listing::page(state, query.clone())
        .await
        .map_err(|e| e.detail)?;
    Ok(vec![
        ("trial-tabs", tabs(query, &counts)),
        ("trial-listing", listing(query, &page)),
    ])
}

/// `GET /ui/trials`: the listing (`status`, `q`, `limit`, `cursor` as in `GET /trials`).
pub async fn page(
    signed: Signed,
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Response {
    let query = match query(raw) {
        Ok(query) => query,
        Err(detail) => return layout::error_page(Some(&signed), StatusCode::BAD_REQUEST, &detail),
    };
    let searched = query.parsed.id_contains.as_deref();
    if searched.is_some_and(|q| state.scheduler.is_a_secret(q)) {
        // Not searched, and out of the page's address, links and search box.
        signed.flash(
            false,
            "The search was, or held, an API key or a secret: it was not searched. Change that key or secret: it was pasted where it shows.",
        );
        let without = TrialQuery {
            id_contains: None,
            ..query.parsed.clone()
        };
        return Redirect::to(&href(&query.parsed.statuses, &without, None)).into_response();
    }
    let parts = match parts(&state, &query.parsed).await {
        Ok(parts) => parts,
        Err(e) => {
            return layout::error_page(Some(&signed), StatusCode::SERVICE_UNAVAILABLE, &e);
        }
    };
    let live = if query.raw.is_empty() {
        "/ui/trials/live".to_owned()
    } else {
        format!("/ui/trials/live?{}", query.raw)
    };
    let body = html! {
        h1 { "Trials" }
        nav #trial-tabs aria-label="Trials by status" { (parts[0].1) }
        form.search method="get" action="/ui/trials" role="search" {
            @if !query.parsed.statuses.is_empty() {
                input type="hidden" name="status" value=(names(&query.parsed.statuses));
            }
            label for="q" { "Search by id" }
            input #q type="search" name="q" value=[query.parsed.id_contains.as_deref()]
                pattern="[A-Za-z0-9._\\-]*" maxlength="128"
                title="Letters, digits, '.', '_' or '-' (a trial id or a part of one), at most 128";
            button type="submit" { "Search" }
        }
        section #trial-listing aria-live="polite" { (parts[1].1) }
    };
    layout::respond(
        StatusCode::OK,
        layout::shell(
            "Trials",
            Some(&signed),
            Some(Section::Trials),
            Some(&live),
            body,
        ),
    )
}

/// What the trials in memory and the jobs look like now, in one number: when it changes,
/// the listing has changed.
fn fingerprint(state: &AppState) -> u64 {
    let mut hasher = DefaultHasher::new();
    for job in state.scheduler.jobs() {
        job.id.hash(&mut hasher);
        job.start_time.to_string().hash(&mut hasher);
    }
    for engine in state.scheduler.engines().handles() {
        engine.id().hash(&mut hasher);
        let snapshot = engine.snapshot();
        snapshot.updated_at.hash(&mut hasher);
        snapshot.paused.hash(&mut hasher);
        // The executor status names every lifecycle apart (the engine status folds two).
        snapshot
            .lifecycle()
            .executor_status()
            .name()
            .hash(&mut hasher);
    }
    hasher.finish()
}

/// `GET /ui/trials/live`: the listing's parts, again whenever they change.
pub async fn live(
    signed: Signed,
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Response {
    let query = match query(raw) {
        Ok(query) => query.parsed,
        Err(detail) => return layout::error_page(None, StatusCode::BAD_REQUEST, &detail),
    };
    live::stream(&state.clone(), signed, move |tx| async move {
        let mut last = None;
        let mut sent = live::Sent::default();
        let mut sent_at = tokio::time::Instant::now();
        loop {
            let now = fingerprint(&state);
            if last != Some(now) || sent_at.elapsed() >= REFRESH {
                last = Some(now);
                sent_at = tokio::time::Instant::now();
                let Ok(parts) = parts(&state, &query).await else {
                    // The store did not answer; the next check tries again.
                    tokio::time::sleep(CHECK).await;
                    continue;
                };
                if let Some(patch) = sent.patch(parts)
                    && tx.send(patch).await.is_err()
                {
                    return;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(CHECK) => {}
                () = tx.closed() => return,
            }
        }
    })
}
