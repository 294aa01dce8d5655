//! The service page: version and uptime, the scheduler (automatic scheduling and its switch,
//! schedule-all, missed jobs), the engines in memory, and the heartbeat instances (add and
//! remove them).
//!
//! The switch's button says which state it wants and the form sends it: pressing "Turn
//! automatic scheduling on" turns it on, or leaves it on if someone else did so since the
//! page was drawn (the API's `POST /trial/scheduling`, which it goes through, would toggle).

use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use maud::html;

use super::actions;
use super::layout::{self, Section};
use super::session::{Post, Signed};
use crate::api::AppState;
use crate::api::extract::{Admin, Operator};
use crate::api::status::VERSION;
use crate::config::Role;
use crate::domain::TrialId;

/// What the service page's forms do, and the API route each goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServiceAction {
    Automatic,
    ScheduleAll,
    AddHeartbeat,
    RemoveHeartbeat,
}

impl ServiceAction {
    fn parse(segment: &str) -> Option<Self> {
        Some(match segment {
            "automatic" => ServiceAction::Automatic,
            "schedule-all" => ServiceAction::ScheduleAll,
            "add-heartbeat" => ServiceAction::AddHeartbeat,
            "remove-heartbeat" => ServiceAction::RemoveHeartbeat,
            _ => return None,
        })
    }

    /// The role of the extractor of its API handler.
    fn role(self) -> Role {
        match self {
            ServiceAction::ScheduleAll => Operator::ROLE,
            ServiceAction::Automatic
            | ServiceAction::AddHeartbeat
            | ServiceAction::RemoveHeartbeat => Admin::ROLE,
        }
    }
}

fn uptime(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60,
    );
    if d > 0 {
        format!("{d} d {h} h {m} min")
    } else if h > 0 {
        format!("{h} h {m} min")
    } else {
        format!("{m} min {s} s")
    }
}

/// `GET /ui/service`.
pub async fn page(signed: Signed, State(state): State<AppState>) -> Response {
    let automatic = state.scheduler.automatic();
    let jobs = state.scheduler.jobs();
    let missed = state.scheduler.missed();
    let engines = state.scheduler.engines().list();
    let heartbeats = state.heartbeats.reports();
    let admin = signed.may(ServiceAction::Automatic.role());
    let store_failing = state.scheduler.deps().store.write_failure();
    let body = html! {
        h1 { "Service" }
        @if let Some(failing) = &store_failing {
            p.flash.error #store-failing role="alert" {
                span aria-hidden="true" { "✕ " }
                "The store has not written since " (failing.since.format("%Y-%m-%d %H:%M:%S UTC"))
                ": every change is refused and trials wait at their next checkpoint. " (failing.error)
            }
        }
        dl.facts {
            dt { "Version" } dd { "Lifecycle Manager " (VERSION) }
            dt { "Uptime" } dd { (uptime(state.started.elapsed().as_secs())) }
            dt { "Store" } dd #store-state { @if store_failing.is_some() { "not writing" } @else { "writing" } }
            dt { "Scheduled jobs" } dd { (jobs.len()) " (" a href="/ui/schedule" { "see them" } ")" }
            dt { "Engines in memory" } dd { (engines.len()) }
        }
        section aria-labelledby="scheduler-title" {
            h2 #scheduler-title { "Scheduler" }
            p {
                "Automatic scheduling (polls the trial registry every "
                (state.settings.scheduler.poll_interval_secs) " s): "
                @if automatic {
                    strong #automatic-state { span aria-hidden="true" { "● " } "on" }
                } @else {
                    strong #automatic-state { span aria-hidden="true" { "○ " } "off" }
                }
            }
            div.buttons {
                @if admin {
                    form method="post" action="/ui/service/automatic" {
                        (layout::csrf(&signed))
                        // The state wanted, not "the other one": see the module's comment.
                        input type="hidden" name="automatic" value=(if automatic { "off" } else { "on" });
                        button type="submit" { @if automatic { "Turn automatic scheduling off" } @else { "Turn automatic scheduling on" } }
                    }
                }
                @if signed.may(ServiceAction::ScheduleAll.role()) {
                    form method="post" action="/ui/service/schedule-all" {
                        (layout::csrf(&signed))
                        button type="submit" { "Schedule every future trial of the registry now" }
                    }
                }
            }
            @if !missed.is_empty() {
                h3 { "Missed while the service was down" }
                ul { @for job in &missed {
                    li { code { (job.id) } " was due at " (job.start_time.to_string()) }
                } }
            }
        }
        section aria-labelledby="engines-title" {
            h2 #engines-title { "Engines in memory" }
            @if engines.is_empty() {
                p.hint { "None." }
            } @else {
                ul.engines { @for (id, status) in &engines {
                    li { a href={ "/ui/trials/" (id) } { (id) } " " (layout::badge(status.name())) }
                } }
            }
        }
        section aria-labelledby="heartbeats-title" {
            h2 #heartbeats-title { "Heartbeat instances" }
            @if heartbeats.is_empty() {
                p.hint { "None." }
            } @else {
                div.table-wrap {
                    table {
                        thead { tr {
                            th scope="col" { "Trial" } th scope="col" { "Healthy" } th scope="col" { "Last check" }
                            th scope="col" { "Services" }
                            @if admin { th scope="col" { span.visually-hidden { "Actions" } } }
                        } }
                        tbody {
                            @for report in &heartbeats {
                                tr {
                                    th scope="row" { (report.id) }
                                    td { @match report.healthy {
                                        Some(true) => { span aria-hidden="true" { "✓ " } "yes" },
                                        Some(false) => { span aria-hidden="true" { "✕ " } "no" },
                                        None => { "not checked yet" },
                                    } }
                                    td { @if let Some(at) = report.last_check { (layout::time(at)) } }
                                    td { ul.plain { @for (service, result) in &report.services {
                                        li { code { (service) } ": " (result) }
                                    } } }
                                    @if admin {
                                        td {
                                            form method="post" action="/ui/service/remove-heartbeat" {
                                                (layout::csrf(&signed))
                                                input type="hidden" name="trial_id" value=(report.id);
                                                button.danger type="submit" { "Remove" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if admin {
                form.inline method="post" action="/ui/service/add-heartbeat" {
                    (layout::csrf(&signed))
                    label for="heartbeat_trial_id" { "Add a heartbeat for trial" }
                    input #heartbeat_trial_id name="trial_id" required maxlength="128"
                        pattern="[A-Za-z0-9][A-Za-z0-9._\\-]{0,127}";
                    button type="submit" { "Add" }
                }
            }
        }
    };
    layout::respond(
        StatusCode::OK,
        layout::shell("Service", Some(&signed), Some(Section::Service), None, body),
    )
}

/// `POST /ui/service/{action}`: the switch, schedule-all, heartbeats.
pub async fn action(
    State(state): State<AppState>,
    Path(segment): Path<String>,
    post: Post,
) -> Response {
    let Some(action) = ServiceAction::parse(&segment) else {
        return post.refused(StatusCode::NOT_FOUND, "No such action.");
    };
    // A valid trial id needs no escaping in a path or a query; an invalid one is refused as
    // typed, not as the form would encode it.
    let heartbeat = TrialId::parse(post.form.get("trial_id").unwrap_or_default());
    let mut body = None;
    let (method, path) = match (action, heartbeat) {
        (ServiceAction::Automatic, _) => {
            let on = match post.form.get("automatic") {
                Some("on") => true,
                Some("off") => false,
                _ => {
                    return post.refused(
                        StatusCode::BAD_REQUEST,
                        "Say whether to turn automatic scheduling on or off (the form's automatic field is on or off).",
                    );
                }
            };
            // The state its button wants: a change made since the page was drawn stands.
            body = Some(serde_json::json!({"automatic": on}));
            (Method::POST, "/trial/scheduling".to_owned())
        }
        (ServiceAction::ScheduleAll, _) => (Method::POST, "/debug/trial/schedule-all".to_owned()),
        (ServiceAction::AddHeartbeat, Ok(id)) => {
            (Method::POST, format!("/debug/add-heartbeat?trial_id={id}"))
        }
        (ServiceAction::RemoveHeartbeat, Ok(id)) => {
            (Method::DELETE, format!("/debug/heartbeat/{id}"))
        }
        (ServiceAction::AddHeartbeat | ServiceAction::RemoveHeartbeat, Err(e)) => {
            return post.refused(StatusCode::BAD_REQUEST, &e.to_string());
        }
    };
    let answered = actions::call_api(&state, &post, method, &path, body).await;
    actions::answer(&post.signed, answered, "/ui/service")
}
