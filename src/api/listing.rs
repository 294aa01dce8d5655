//! `GET /trials` (SPEC §12): every trial the store knows, newest first, with scheduled jobs
//! and records set aside as corrupt, filtered and paginated. Rows of engines in memory show
//! their live state.

use axum::Json;
use axum::extract::{Query, State};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::Viewer;
use super::{paging, view};
use crate::store::codec::{self, parse_time, time};
use crate::store::{ListedStatus, ListedTrial, TrialQuery};

/// The routes of this area.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

/// One page of the listing: its rows, and the cursor of the next page if there is one. The
/// answer of `GET /trials`, and what the console's list shows.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = TrialPage)]
pub struct Page {
    /// The page's trials, newest first.
    pub trials: Vec<ListedTrial>,
    /// The `cursor` of the next page; none on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// The page's query (`status`, `q`, `limit`, `cursor`), checked.
pub fn parse_query(pairs: Vec<(String, String)>) -> Result<TrialQuery, ApiError> {
    let mut query = TrialQuery {
        limit: paging::DEFAULT_LIMIT,
        ..TrialQuery::default()
    };
    paging::once_each(&pairs, &["status"])?;
    for (key, value) in pairs {
        match key.as_str() {
            "status" => {
                for status in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let known = ListedStatus::parse(status)
                        .filter(|known| ListedStatus::filters().any(|s| s == *known))
                        .ok_or_else(|| {
                            let names: Vec<&str> =
                                ListedStatus::filters().map(ListedStatus::name).collect();
                            ApiError::bad_request(format!(
                                "status '{status}' is not one of: {}",
                                names.join(", ")
                            ))
                        })?;
                    query.statuses.push(known);
                }
            }
            "q" => {
                let valid = value.len() <= 128
                    && value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
                if !valid {
                    return Err(ApiError::bad_request(
                        "q is a part of a trial id: at most 128 letters, digits, '.', '_' or '-'",
                    ));
                }
                query.id_contains = (!value.is_empty()).then_some(value);
            }
            "limit" => query.limit = paging::limit(&value)?,
            "cursor" => query.after = Some(decode_cursor(&value)?),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter '{other}': use status, q, limit or cursor"
                )));
            }
        }
    }
    Ok(query)
}

/// What marks a position whose `created_at` is not a time as the store writes it (an ended
/// trial's row damaged by hand, which start-up does not read): that text is carried encoded
/// after it, so the listing pages on past such a row too.
const NOT_A_TIME: char = '~';

fn encode_cursor(row: &ListedTrial) -> String {
    let created_at = match is_written_time(&row.created_at) {
        true => row.created_at.clone(),
        false => format!("{NOT_A_TIME}{}", paging::cursor(&row.created_at)),
    };
    paging::cursor(&format!("{created_at}\n{}", row.trial_id))
}

fn is_written_time(text: &str) -> bool {
    parse_time(text).ok().map(time).as_deref() == Some(text)
}

/// The position a cursor carries: a `created_at` (a time as the store writes it, or the text
/// of one that is not, marked) and a trial id.
fn decode_cursor(cursor: &str) -> Result<(String, String), ApiError> {
    paging::position(cursor, |text| {
        // A `created_at` holds no line break (one not a time is carried encoded); an id edited
        // by hand may.
        let (created_at, trial_id) = text.split_once('\n')?;
        let created_at = match created_at.strip_prefix(NOT_A_TIME) {
            Some(marked) => paging::position(marked, |text| Some(text.to_owned())).ok()?,
            None => is_written_time(created_at).then(|| created_at.to_owned())?,
        };
        Some((created_at, trial_id.to_owned()))
    })
}

/// The page of trials
///
/// `{"trials": [{"trial_id", "engine_status", "status", "state", "step", "waiting_for",
/// "created_at", "updated_at", "ended_at", "failure", "start_time", "paused", "aborting"}],
/// "next_cursor"}`, newest first. Query: `status` (engine status: Active, Failed, Finished,
/// Aborted, Scheduled, Corrupt; repeatable or comma-separated), `q` (part of the id), `limit`
/// (1–500, default 50), `cursor` (the `next_cursor` of the previous page).
#[utoipa::path(
    get,
    path = "/trials",
    tag = "trials",
    security(("api_key" = [])),
    params(
        ("status" = Option<String>, Query, description = "Engine statuses to keep, comma-separated or repeated", example = "Active,Failed"),
        ("q" = Option<String>, Query, description = "Keep trial ids containing this", example = "drone"),
        ("limit" = Option<u32>, Query, description = "Rows per page, 1 to 500 (default 50)", minimum = 1, maximum = 500),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of trials", body = Page),
        (status = 400, description = "An unknown status or parameter, a bad limit or cursor", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
    ),
)]
async fn list(
    _: Viewer,
    State(state): State<AppState>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<Page>, ApiError> {
    Ok(Json(page(&state, parse_query(pairs)?).await?))
}

/// The page of trials `query` asks for, newest first; rows of engines in memory show their
/// live state.
pub async fn page(state: &AppState, mut query: TrialQuery) -> Result<Page, ApiError> {
    let limit = query.limit;
    let wanted = query.statuses.clone();
    // A trial whose job fired while its first record could not be saved is stored as its job
    // until it is: it is found as `Active`, as it is shown.
    if wanted.contains(&ListedStatus::Active) && !wanted.contains(&ListedStatus::Scheduled) {
        query.fired_jobs = state
            .scheduler
            .engines()
            .not_yet_saved()
            .iter()
            .map(ToString::to_string)
            .collect();
    }
    let mut rows = state
        .scheduler
        .deps()
        .store
        .read(move |reader| reader.trials(&query))
        .await?;
    let next_cursor = (rows.len() > limit).then(|| {
        rows.truncate(limit);
        rows.last().map(encode_cursor)
    });
    let engines = state.scheduler.engines();
    let trials: Vec<ListedTrial> = rows
        .into_iter()
        .map(|mut row| {
            let id = crate::domain::TrialId::parse(&row.trial_id).ok();
            // A job row is the trial's until its job fires: the store keeps the row until the
            // engine's first record is saved.
            let live = id.and_then(|id| {
                let fired = row.engine_status != ListedStatus::Scheduled
                    || !state.scheduler.is_scheduled(&id);
                engines.get(&id).filter(|_| fired)
            });
            // A trial's row the store listed is listed as it found it (the store's filter goes
            // by the status the row holds, also when a damaged column lists it `Corrupt`); one
            // that memory knows better is filtered by what memory says, and so is a job (the
            // store lists fired ones whatever is asked).
            let known_better = live.is_some() || row.engine_status == ListedStatus::Scheduled;
            if let Some(engine) = live {
                // The store saves at every step; memory knows the moment.
                let snapshot = engine.snapshot();
                row.engine_status = snapshot.engine_status().into();
                row.status = Some(snapshot.lifecycle().executor_status().name().to_owned());
                row.state = Some(view::state(&snapshot).to_owned());
                row.step = match snapshot.position {
                    crate::engine::state::Position::Run(step) => Some(step.name().to_owned()),
                    crate::engine::state::Position::Wait(_) => None,
                };
                row.waiting_for = view::waiting_for(&snapshot);
                row.updated_at = time(snapshot.updated_at);
                row.ended_at = snapshot.ended_at.map(time);
                row.failure = snapshot.failure.as_ref().map(|f| f.reason.clone());
                row.paused = snapshot.paused;
                row.aborting = snapshot.aborting();
            }
            // Written as the trial's status writes them (the store's have a fixed width, to
            // sort as text).
            row.created_at = codec::shown(&row.created_at);
            row.updated_at = codec::shown(&row.updated_at);
            row.ended_at = row.ended_at.as_deref().map(codec::shown);
            (known_better, row)
        })
        .filter(|(known_better, row)| {
            !known_better || wanted.is_empty() || wanted.contains(&row.engine_status)
        })
        .map(|(_, row)| row)
        .collect();
    Ok(Page {
        trials,
        next_cursor: next_cursor.flatten(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let row = ListedTrial {
            trial_id: "t_1".into(),
            engine_status: ListedStatus::Finished,
            status: None,
            state: None,
            step: None,
            waiting_for: None,
            created_at: "2026-01-01T00:00:00.000000Z".into(),
            updated_at: String::new(),
            ended_at: None,
            failure: None,
            start_time: None,
            paused: false,
            aborting: false,
        };
        assert_eq!(
            decode_cursor(&encode_cursor(&row)).unwrap(),
            ("2026-01-01T00:00:00.000000Z".to_owned(), "t_1".to_owned())
        );
        assert!(decode_cursor("%%%").is_err());
        assert!(decode_cursor(&paging::cursor("no newline")).is_err());
        // A row edited by hand is listed under the id it holds, whatever it is: its cursor
        // pages past it.
        for edited in [
            "",
            "bad id",
            "q'uote",
            "ctl\u{1}x",
            "nl\nx",
            &"x".repeat(200),
        ] {
            let row = ListedTrial {
                trial_id: edited.into(),
                ..row.clone()
            };
            assert_eq!(decode_cursor(&encode_cursor(&row)).unwrap().1, edited);
        }
        for not_a_time in ["", "garbage", "2026-01-01 00:00:00", "a\nb"] {
            let row = ListedTrial {
                created_at: not_a_time.into(),
                ..row.clone()
            };
            assert_eq!(
                decode_cursor(&encode_cursor(&row)).unwrap(),
                (not_a_time.to_owned(), "t_1".to_owned())
            );
        }
    }

    #[test]
    fn the_query_is_checked() {
        let pairs = |list: &[(&str, &str)]| {
            list.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<Vec<_>>()
        };
        let query = parse_query(pairs(&[
            ("status", "active,Failed"),
            ("status", "scheduled"),
        ]))
        .unwrap();
        assert_eq!(
            query.statuses,
            [
                ListedStatus::Active,
                ListedStatus::Failed,
                ListedStatus::Scheduled
            ]
        );
        assert!(parse_query(pairs(&[("status", "Bogus")])).is_err());
        assert!(parse_query(pairs(&[("status", "Stopped")])).is_err());
        assert!(parse_query(pairs(&[("limit", "0")])).is_err());
        assert!(parse_query(pairs(&[("limit", "1"), ("limit", "2")])).is_err());
        assert!(parse_query(pairs(&[("q", "a"), ("q", "b")])).is_err());
        assert_eq!(
            parse_query(pairs(&[("status", "Active"), ("status", "Failed")]))
                .unwrap()
                .statuses,
            [ListedStatus::Active, ListedStatus::Failed]
        );
        assert_eq!(parse_query(pairs(&[("limit", "500")])).unwrap().limit, 500);
        assert!(parse_query(pairs(&[("q", "a b")])).is_err());
        assert!(parse_query(pairs(&[("page", "2")])).is_err());
    }
}
