//! The schedule page: schedule a trial at a date and time in a chosen UTC offset (the offset
//! is kept, as the API keeps it), or at the start time the trial registry gives it; and the
//! scheduled jobs, soonest first.

use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde_json::json;

use super::actions::{self, TrialAction};
use super::layout::{self, Section};
use super::session::{Post, Signed};
use crate::api::AppState;
use crate::api::extract::Operator;
use crate::domain::TrialId;

/// Every UTC offset in use somewhere (from −12:00 to +14:00, in quarter hours), as `±HH:MM`.
fn offsets() -> Vec<String> {
    (-48..=56)
        .map(|quarters: i32| {
            let sign = if quarters < 0 { '-' } else { '+' };
            let minutes = quarters.abs() * 15;
            format!("{sign}{:02}:{:02}", minutes / 60, minutes % 60)
        })
        .collect()
}

/// The start time from the form: a local date and time (`YYYY-MM-DDTHH:MM[:SS]`) and an
/// offset, as RFC 3339.
fn start_time(local: &str, offset: &str) -> Option<String> {
    let local = local.trim();
    let with_seconds = match local.len() {
        16 => format!("{local}:00"),
        _ => local.to_owned(),
    };
    offsets().contains(&offset.to_owned()).then(|| {
        format!(
            "{with_seconds}{}",
            if offset == "+00:00" { "Z" } else { offset }
        )
    })
}

/// The labelled trial id input of a form, checked in the browser as `TrialId::parse` checks it.
fn trial_id_field(input_id: &str) -> Markup {
    html! {
        label for=(input_id) { "Trial id" }
        input id=(input_id) name="trial_id" required maxlength="128"
            pattern="[A-Za-z0-9][A-Za-z0-9._\\-]{0,127}" autocomplete="off";
    }
}

fn form(signed: &Signed) -> Markup {
    html! {
        section aria-labelledby="at-time-title" {
            h2 #at-time-title { "At a time" }
            form.schedule method="post" action="/ui/schedule" {
                (layout::csrf(signed))
                (trial_id_field("trial_id"))
                label for="local" { "Start (date and time)" }
                input #local type="datetime-local" name="local" step="1" required;
                label for="offset" { "Time zone (UTC offset)" }
                select #offset name="offset" {
                    @for offset in offsets() {
                        option value=(offset) selected[offset == "+00:00"] {
                            "UTC" (offset)
                        }
                    }
                }
                p.hint #start-preview aria-live="polite" {
                    "The offset is kept: the trial starts at that wall-clock time in that zone."
                }
                button type="submit" { "Schedule" }
            }
        }
        section aria-labelledby="registry-title" {
            h2 #registry-title { "At the registry's start time" }
            form.schedule method="post" action="/ui/schedule/registry" {
                (layout::csrf(signed))
                (trial_id_field("registry_trial_id"))
                button type="submit" { "Schedule from the registry" }
            }
        }
    }
}

fn jobs(state: &AppState, signed: &Signed) -> Markup {
    let jobs = state.scheduler.jobs();
    let may_unschedule = signed.may(TrialAction::Unschedule.role());
    html! {
        section aria-labelledby="jobs-title" {
            h2 #jobs-title { "Scheduled (" (jobs.len()) ")" }
            @if jobs.is_empty() {
                p.hint { "Nothing is scheduled." }
            } @else {
                div.table-wrap {
                    table {
                        thead { tr { th scope="col" { "Trial" } th scope="col" { "Starts at (as given)" } th scope="col" { "In UTC" }
                            @if may_unschedule { th scope="col" { span.visually-hidden { "Actions" } } } } }
                        tbody {
                            @for job in &jobs {
                                tr {
                                    th scope="row" { a href={ "/ui/trials/" (job.id) } { (job.id) } }
                                    td { (job.start_time.to_string()) }
                                    td { (layout::time(job.start_time.utc())) }
                                    @if may_unschedule {
                                        td { a.button.danger href={ "/ui/trials/" (job.id) "/confirm/unschedule" } { "Unschedule" } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /ui/schedule`.
pub async fn page(signed: Signed, State(state): State<AppState>) -> Response {
    let body = html! {
        h1 { "Schedule a trial" }
        @if signed.may(Operator::ROLE) {
            (form(&signed))
        } @else {
            p.hint { "Your key's role (" (signed.holder.role) ") can look but not schedule." }
        }
        (jobs(&state, &signed))
    };
    layout::respond(
        StatusCode::OK,
        layout::shell(
            "Schedule",
            Some(&signed),
            Some(Section::Schedule),
            None,
            body,
        ),
    )
}

/// Back to the form with what was wrong.
fn refuse(post: &Post, text: &str) -> Response {
    post.signed.flash(false, text);
    post.audited(Redirect::to("/ui/schedule").into_response())
}

/// `POST /ui/schedule`: `POST /debug/trial/schedule` with the id and the start time.
pub async fn at_time(State(state): State<AppState>, post: Post) -> Response {
    let id = post.form.get("trial_id").unwrap_or_default().to_owned();
    if post.form.get("local").unwrap_or_default().trim().is_empty() {
        return refuse(&post, "Choose a date and a time to start the trial at.");
    }
    let Some(start) = start_time(
        post.form.get("local").unwrap_or_default(),
        post.form.get("offset").unwrap_or("+00:00"),
    ) else {
        return refuse(&post, "Choose a time zone from the list.");
    };
    let body = json!({"trial_id": id, "start_time": start});
    let answered = actions::call_api(
        &state,
        &post,
        Method::POST,
        "/debug/trial/schedule",
        Some(body),
    )
    .await;
    let back = match TrialId::parse(&id) {
        Ok(id) if answered.status.is_success() => format!("/ui/trials/{id}"),
        _ => "/ui/schedule".to_owned(),
    };
    actions::answer(&post.signed, answered, &back)
}

/// `POST /ui/schedule/registry`: `POST /debug/trial/{id}/schedule`.
pub async fn from_registry(State(state): State<AppState>, post: Post) -> Response {
    let raw = post.form.get("trial_id").unwrap_or_default();
    let id = match TrialId::parse(raw) {
        Ok(id) => id,
        Err(e) => return refuse(&post, &e.to_string()),
    };
    let path = format!("/debug/trial/{id}/schedule");
    let answered = actions::call_api(&state, &post, Method::POST, &path, None).await;
    let back = if answered.status.is_success() {
        format!("/ui/trials/{id}")
    } else {
        "/ui/schedule".to_owned()
    };
    actions::answer(&post.signed, answered, &back)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_time_and_an_offset_make_an_rfc3339_time() {
        assert_eq!(
            start_time("2031-02-23T07:17", "+02:00").as_deref(),
            Some("2031-02-23T07:17:00+02:00")
        );
        assert_eq!(
            start_time("2031-02-23T07:17:15", "+00:00").as_deref(),
            Some("2031-02-23T07:17:15Z")
        );
        assert_eq!(start_time("2031-02-23T07:17", "+02:10"), None);
        let all = offsets();
        assert_eq!(all.first().map(String::as_str), Some("-12:00"));
        assert_eq!(all.last().map(String::as_str), Some("+14:00"));
        assert!(all.contains(&"+05:45".to_owned()));
    }
}
