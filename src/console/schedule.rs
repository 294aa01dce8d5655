//! The schedule page: schedule a trial at a date and time in a chosen UTC offset (the offset
//! is kept, as the API keeps it), or at the start time the trial registry gives it; and the
//! scheduled jobs, soonest first. A refused form comes back as it was typed, with the reason.

use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde_json::json;

use super::actions::{self, TrialAction};
use super::layout::{self, Section};
use super::session::{Post, Signed, Typed};
use crate::api::AppState;
use crate::api::audit::{AuditDetail, AuditOutcome};
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

/// The forms of the page, by their `action`.
const AT_TIME: &str = "/ui/schedule";
const FROM_REGISTRY: &str = "/ui/schedule/registry";

/// The labelled trial id input of a form, checked in the browser as `TrialId::parse` checks it,
/// holding `typed` if the form comes back.
fn trial_id_field(input_id: &str, typed: Option<&str>) -> Markup {
    html! {
        label for=(input_id) { "Trial id" }
        input id=(input_id) name="trial_id" value=[typed] required maxlength="128"
            pattern="[A-Za-z0-9][A-Za-z0-9._\\-]{0,127}" autocomplete="off";
    }
}

/// The two forms, filled in with what was typed in the one refused just before (if any).
fn form(signed: &Signed, typed: Option<&Typed>) -> Markup {
    let at_time = typed.filter(|t| t.form == AT_TIME);
    let from_registry = typed.filter(|t| t.form == FROM_REGISTRY);
    let all = offsets();
    let kept_offset = at_time
        .and_then(|t| t.get("offset"))
        .filter(|o| all.iter().any(|offset| offset == o));
    let chosen = kept_offset.unwrap_or("+00:00");
    html! {
        section aria-labelledby="at-time-title" {
            h2 #at-time-title { "At a time" }
            form.schedule method="post" action=(AT_TIME) {
                (layout::csrf(signed))
                (trial_id_field("trial_id", at_time.and_then(|t| t.get("trial_id"))))
                label for="local" { "Start (date and time)" }
                input #local type="datetime-local" name="local" step="1" required
                    value=[at_time.and_then(|t| t.get("local"))];
                label for="offset" { "Time zone (UTC offset)" }
                // A kept offset was chosen: the script proposes none in its place.
                select #offset name="offset" data-chosen[kept_offset.is_some()] {
                    @for offset in &all {
                        option value=(offset) selected[offset == chosen] {
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
            form.schedule method="post" action=(FROM_REGISTRY) {
                (layout::csrf(signed))
                (trial_id_field("registry_trial_id", from_registry.and_then(|t| t.get("trial_id"))))
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
    let typed = signed.take_typed();
    let body = html! {
        h1 { "Schedule a trial" }
        @if signed.may(Operator::ROLE) {
            (form(&signed, typed.as_ref()))
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

/// The fields of each form that come back when it is refused.
const AT_TIME_FIELDS: [&str; 3] = ["trial_id", "local", "offset"];
const FROM_REGISTRY_FIELDS: [&str; 1] = ["trial_id"];

/// Keeps what was typed in `form` for the page the refusal goes back to, but a value that is,
/// or holds, a key or a secret (pasted into the wrong field): the page would show it.
fn keep_typed(state: &AppState, post: &Post, form: &'static str, fields: &[&str]) {
    let mut typed = Typed::of(form, &post.form, fields);
    typed.forget_where(|value| state.scheduler.is_a_secret(value));
    post.signed.keep_typed(typed);
}

/// Back to the form, as it was typed, with what was wrong (its audit entry says it too, with
/// the refusal's status, 400, rather than the redirect's).
fn refuse(
    state: &AppState,
    post: &Post,
    form: &'static str,
    fields: &[&str],
    text: &str,
) -> Response {
    let text = state.scheduler.deps().secrets.redactor().text(text);
    post.signed.flash(false, &text);
    keep_typed(state, post, form, fields);
    let mut response = Redirect::to("/ui/schedule").into_response();
    let extensions = response.extensions_mut();
    extensions.insert(AuditDetail(text));
    extensions.insert(AuditOutcome(StatusCode::BAD_REQUEST));
    post.audited(response)
}

/// `POST /ui/schedule`: `POST /debug/trial/schedule` with the id and the start time.
pub async fn at_time(State(state): State<AppState>, post: Post) -> Response {
    let refused = |text| refuse(&state, &post, AT_TIME, &AT_TIME_FIELDS, text);
    let id = post.form.get("trial_id").unwrap_or_default().to_owned();
    if post.form.get("local").unwrap_or_default().trim().is_empty() {
        return refused("Choose a date and a time to start the trial at.");
    }
    let Some(start) = start_time(
        post.form.get("local").unwrap_or_default(),
        // Without one the wall-clock time means nothing: none is assumed.
        post.form.get("offset").unwrap_or_default(),
    ) else {
        return refused("Choose a time zone from the list.");
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
        _ => {
            keep_typed(&state, &post, AT_TIME, &AT_TIME_FIELDS);
            "/ui/schedule".to_owned()
        }
    };
    actions::answer(&post.signed, answered, &back)
}

/// `POST /ui/schedule/registry`: `POST /debug/trial/{id}/schedule`.
pub async fn from_registry(State(state): State<AppState>, post: Post) -> Response {
    let raw = post.form.get("trial_id").unwrap_or_default();
    let id = match TrialId::parse(raw) {
        Ok(id) => id,
        Err(e) => {
            let text = e.to_string();
            return refuse(&state, &post, FROM_REGISTRY, &FROM_REGISTRY_FIELDS, &text);
        }
    };
    let path = format!("/debug/trial/{id}/schedule");
    let answered = actions::call_api(&state, &post, Method::POST, &path, None).await;
    let back = if answered.status.is_success() {
        format!("/ui/trials/{id}")
    } else {
        keep_typed(&state, &post, FROM_REGISTRY, &FROM_REGISTRY_FIELDS);
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
