//! The page shell every console page is drawn in (header, navigation, who is signed in, the
//! live indicator, a message shown once), and the small pieces pages share: status badges
//! (a symbol and a word, never colour alone), times, error pages.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::assets;
use super::session::{Flash, Signed};
use crate::api::audit::AuditDetail;
use crate::api::status::VERSION;

/// Which part of the console a page belongs to (marked in the navigation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Trials,
    Schedule,
    Service,
}

impl Section {
    const ALL: [Section; 3] = [Section::Trials, Section::Schedule, Section::Service];

    fn href(self) -> &'static str {
        match self {
            Section::Trials => "/ui/trials",
            Section::Schedule => "/ui/schedule",
            Section::Service => "/ui/service",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Section::Trials => "Trials",
            Section::Schedule => "Schedule",
            Section::Service => "Service",
        }
    }
}

/// A whole page: `title`, the signed-in person (if any), the section it belongs to, the
/// address of its live stream (if it has one), and its content.
pub fn shell(
    title: &str,
    signed: Option<&Signed>,
    section: Option<Section>,
    live: Option<&str>,
    content: Markup,
) -> Markup {
    let flash = signed.and_then(Signed::take_flash);
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · LCM console" }
                link rel="icon" type="image/svg+xml" href=(assets::href("favicon.svg"));
                link rel="stylesheet" href=(assets::href("console.css"));
                script src=(assets::href("console.js")) defer {}
            }
            body data-live=[live] {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/ui/" { span aria-hidden="true" { "◈ " } "LCM console" }
                    @if let Some(signed) = signed {
                        nav aria-label="Console" {
                            ul {
                                @for s in Section::ALL {
                                    li {
                                        @if section == Some(s) {
                                            a href=(s.href()) aria-current="page" { (s.label()) }
                                        } @else {
                                            a href=(s.href()) { (s.label()) }
                                        }
                                    }
                                }
                            }
                        }
                        div.who {
                            @if live.is_some() {
                                // True without scripts; the script says "Connecting…" when it
                                // opens the stream, then how the stream goes.
                                span #live-state .live-state role="status" data-state="static" {
                                    span aria-hidden="true" { "○ " } "Not live: reload for the latest"
                                }
                            }
                            span.holder {
                                "Signed in as " strong { (signed.holder.name) }
                                " (" (signed.holder.role) ")"
                            }
                            form method="post" action="/ui/sign-out" {
                                (csrf(signed))
                                button.link type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main #main tabindex="-1" {
                    @if let Some(flash) = flash { (flash_message(&flash)) }
                    (content)
                }
                footer { "Lifecycle Manager " (VERSION) " · " a href="/" { "API docs" } }
            }
        }
    }
}

/// A message shown once: what an action did, or why it was refused.
fn flash_message(flash: &Flash) -> Markup {
    html! {
        @if flash.ok {
            p.flash.ok role="status" { span aria-hidden="true" { "✓ " } (flash.text) }
        } @else {
            p.flash.error role="alert" { span aria-hidden="true" { "✕ " } (flash.text) }
        }
    }
}

/// The hidden field with the session's CSRF token, for every form that posts.
pub fn csrf(signed: &Signed) -> Markup {
    html! { input type="hidden" name="csrf" value=(signed.csrf); }
}

/// A finished page as an answer.
pub fn respond(status: StatusCode, page: Markup) -> Response {
    (status, Html(page.into_string())).into_response()
}

/// An error page with `status` and what went wrong (also the `detail` of its audit entry, if
/// the request is audited: nothing secret is ever put in `text`).
pub fn error_page(signed: Option<&Signed>, status: StatusCode, text: &str) -> Response {
    error_page_signing_in_to(signed, status, text, "/ui/")
}

/// Like [`error_page`]; without a session its "Sign in" link goes to `sign_in` (which may
/// carry the page to come back to).
pub fn error_page_signing_in_to(
    signed: Option<&Signed>,
    status: StatusCode,
    text: &str,
    sign_in: &str,
) -> Response {
    let reason = status.canonical_reason().unwrap_or("Error");
    let body = html! {
        h1 { (status.as_u16()) " " (reason) }
        p.flash.error role="alert" { span aria-hidden="true" { "✕ " } (text) }
        p {
            @if signed.is_some() {
                a href="/ui/trials" { "Back to the trials" }
            } @else {
                a href=(sign_in) { "Sign in" }
            }
        }
    };
    let mut response = respond(status, shell(reason, signed, None, None, body));
    response
        .extensions_mut()
        .insert(AuditDetail(text.to_owned()));
    response
}

/// The symbol and word of an engine status (or `Scheduled`, `Missed`, `Corrupt`), and its CSS
/// class.
fn status_parts(status: &str) -> (&'static str, &'static str) {
    match status {
        "Active" => ("▶", "active"),
        "Running" => ("▶", "active"),
        "Waiting" => ("‖", "waiting"),
        "Failed" => ("✕", "failed"),
        "Finished" => ("✓", "finished"),
        "Aborted" => ("⊘", "aborted"),
        "Stopped" => ("■", "stopped"),
        "Scheduled" => ("◷", "scheduled"),
        "Missed" => ("⌛", "missed"),
        "Corrupt" => ("⚠", "corrupt"),
        _ => ("•", "other"),
    }
}

/// A status as a badge: a symbol and the word, coloured as well.
pub fn badge(status: &str) -> Markup {
    let (symbol, class) = status_parts(status);
    html! {
        span class={ "badge " (class) } {
            span aria-hidden="true" { (symbol) " " } (status)
        }
    }
}

/// A time in UTC, readable, with its exact value for machines.
pub fn time(at: DateTime<Utc>) -> Markup {
    html! {
        time datetime=(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)) {
            (at.format("%Y-%m-%d %H:%M:%S UTC"))
        }
    }
}

/// A time as the store writes it (RFC 3339); shown as [`time`] if it reads back.
pub fn time_text(text: &str) -> Markup {
    match DateTime::parse_from_rfc3339(text) {
        Ok(at) => time(at.with_timezone(&Utc)),
        Err(_) => html! { (text) },
    }
}

/// A duration in words: `850 ms`, `12.4 s`, `3 min 05 s`, `2 h 01 min`.
pub fn duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{} min {:02} s", ms / 60_000, (ms / 1000) % 60),
        _ => format!("{} h {:02} min", ms / 3_600_000, (ms / 60_000) % 60),
    }
}

/// JSON shown as indented text.
pub fn json_block(value: &serde_json::Value) -> Markup {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    html! { pre.json { code { (text) } } }
}

/// Text that is already HTML (a fragment rendered by this module's functions).
pub fn raw(text: String) -> Markup {
    PreEscaped(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(12_400), "12.4 s");
        assert_eq!(duration(185_000), "3 min 05 s");
        assert_eq!(duration(7_260_000), "2 h 01 min");
    }

    #[test]
    fn every_status_has_a_symbol_besides_its_colour() {
        for status in crate::store::ListedStatus::filters().map(|s| s.name()) {
            let (symbol, class) = status_parts(status);
            assert_ne!(symbol, "•", "{status}");
            assert_ne!(class, "other", "{status}");
        }
    }
}
