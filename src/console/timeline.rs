//! A trial's timeline, drawn from its history on a time axis: one bar per run of a step and
//! per wait, in the order they began, and marks for what happened in between (progress
//! reports, retries, pauses, failures, restores). Bars differ by shape as well as colour: a
//! step is solid, a wait hatched, a failure ends in a cross, what is still going on is open
//! at its end. The history table beside it says the same in words.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use maud::{Markup, html};

use super::layout;
use crate::engine::state::{EventKind, TrialEvent};

/// What a bar stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    Step,
    Wait,
    Paused,
}

/// How a bar ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Done,
    Failed,
    /// Still going on (drawn to now), or cut short by the end of the trial.
    Open,
}

/// One bar of the timeline.
#[derive(Debug, Clone)]
pub struct Bar {
    pub kind: BarKind,
    pub label: String,
    pub from: DateTime<Utc>,
    pub to: Option<DateTime<Utc>>,
    pub ending: Ending,
}

/// A mark at one instant: an event that is not a bar.
#[derive(Debug, Clone)]
pub struct Mark {
    pub at: DateTime<Utc>,
    pub kind: EventKind,
    pub text: String,
}

/// The bars and marks of a history.
pub fn build(history: &[Arc<TrialEvent>]) -> (Vec<Bar>, Vec<Mark>) {
    let mut bars: Vec<Bar> = Vec::new();
    let mut marks = Vec::new();
    // Indexes of the bars still open, by kind.
    let mut step: Option<usize> = None;
    let mut wait: Option<usize> = None;
    let mut pause: Option<usize> = None;
    let close = |bars: &mut Vec<Bar>, open: &mut Option<usize>, at, ending| {
        if let Some(i) = open.take() {
            bars[i].to = Some(at);
            bars[i].ending = ending;
        }
    };
    for event in history {
        let at = event.at;
        let text = describe(event);
        match event.event {
            EventKind::StepStarted => {
                close(&mut bars, &mut wait, at, Ending::Done);
                close(&mut bars, &mut step, at, Ending::Open);
                step = Some(bars.len());
                bars.push(Bar {
                    kind: BarKind::Step,
                    label: event.step.clone().unwrap_or_default(),
                    from: at,
                    to: None,
                    ending: Ending::Open,
                });
            }
            EventKind::StepCompleted => close(&mut bars, &mut step, at, Ending::Done),
            EventKind::StepFailed => {
                close(&mut bars, &mut step, at, Ending::Failed);
                marks.push(Mark {
                    at,
                    kind: event.event,
                    text,
                });
            }
            EventKind::Waiting => {
                close(&mut bars, &mut wait, at, Ending::Open);
                wait = Some(bars.len());
                bars.push(Bar {
                    kind: BarKind::Wait,
                    label: format!("wait: {}", event.detail.as_deref().unwrap_or("a signal")),
                    from: at,
                    to: None,
                    ending: Ending::Open,
                });
            }
            EventKind::SignalAccepted => {
                close(&mut bars, &mut wait, at, Ending::Done);
                marks.push(Mark {
                    at,
                    kind: event.event,
                    text,
                });
            }
            EventKind::Paused => {
                if pause.is_none() {
                    pause = Some(bars.len());
                    bars.push(Bar {
                        kind: BarKind::Paused,
                        label: "paused".to_owned(),
                        from: at,
                        to: None,
                        ending: Ending::Open,
                    });
                }
                marks.push(Mark {
                    at,
                    kind: event.event,
                    text,
                });
            }
            EventKind::Resumed => {
                close(&mut bars, &mut pause, at, Ending::Done);
                marks.push(Mark {
                    at,
                    kind: event.event,
                    text,
                });
            }
            EventKind::TrialFailed => {
                close(&mut bars, &mut step, at, Ending::Failed);
                close(&mut bars, &mut wait, at, Ending::Failed);
                marks.push(Mark {
                    at,
                    kind: event.event,
                    text,
                });
            }
            EventKind::TrialFinished | EventKind::TrialAborted => {
                close(&mut bars, &mut step, at, Ending::Open);
                close(&mut bars, &mut wait, at, Ending::Open);
                close(&mut bars, &mut pause, at, Ending::Done);
                marks.push(Mark {
                    at,
                    kind: event.event,
                    text,
                });
            }
            EventKind::AbortRequested => {
                close(&mut bars, &mut wait, at, Ending::Open);
                marks.push(Mark {
                    at,
                    kind: event.event,
                    text,
                });
            }
            _ => marks.push(Mark {
                at,
                kind: event.event,
                text,
            }),
        }
    }
    (bars, marks)
}

/// An event in words.
pub fn describe(event: &TrialEvent) -> String {
    let mut text = event.event.name().replace('_', " ");
    if let Some(step) = &event.step {
        text.push_str(": ");
        text.push_str(step);
    }
    if let Some(detail) = &event.detail {
        text.push_str(if event.step.is_some() { " — " } else { ": " });
        text.push_str(detail);
    }
    text
}

/// The symbol of a mark.
fn mark_symbol(kind: EventKind) -> &'static str {
    match kind {
        EventKind::StepFailed | EventKind::TrialFailed => "✕",
        EventKind::TrialFinished => "✓",
        EventKind::TrialAborted | EventKind::AbortRequested => "⊘",
        EventKind::Progress => "◆",
        EventKind::StepRetry => "↻",
        EventKind::Paused => "‖",
        EventKind::Resumed | EventKind::Stepped => "▶",
        EventKind::Restored | EventKind::Skipped => "↺",
        EventKind::Recovered => "⟲",
        _ => "•",
    }
}

/// A step for the axis ticks, in seconds, so that a span has at most six.
fn tick_step(span_secs: f64) -> f64 {
    const STEPS: [f64; 17] = [
        0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0,
        3600.0, 7200.0,
    ];
    STEPS
        .into_iter()
        .find(|step| span_secs / step <= 6.0)
        .unwrap_or_else(|| (span_secs / 6.0 / 3600.0).ceil() * 3600.0)
}

fn tick_label(secs: f64) -> String {
    if secs == 0.0 {
        "0".to_owned()
    } else if secs < 1.0 {
        format!("+{secs:.1} s")
    } else if secs < 120.0 {
        format!("+{secs:.0} s")
    } else if secs < 7200.0 {
        // Whole seconds from here on: each tick is a whole multiple of its step.
        let whole = secs.round() as u64;
        match whole % 60 {
            0 => format!("+{} min", whole / 60),
            s => format!("+{} min {s} s", whole / 60),
        }
    } else {
        let whole = secs.round() as u64;
        match (whole % 3600) / 60 {
            0 => format!("+{} h", whole / 3600),
            m => format!("+{} h {m} min", whole / 3600),
        }
    }
}

// The drawing's geometry, in the SVG's own units.
const WIDTH: f64 = 1000.0;
const LABEL_WIDTH: f64 = 330.0;
const TRACK_X: f64 = LABEL_WIDTH + 10.0;
const TRACK_WIDTH: f64 = WIDTH - TRACK_X - 20.0;
const ROW: f64 = 22.0;
const AXIS: f64 = 26.0;

/// The timeline of `history` as an SVG drawing, up to `now` for what is still going on.
pub fn render(history: &[Arc<TrialEvent>], now: DateTime<Utc>) -> Markup {
    let (bars, marks) = build(history);
    let Some(first) = history.first().map(|e| e.at) else {
        return html! { p.empty { "Nothing has happened yet." } };
    };
    let last = history.last().map_or(first, |e| e.at);
    let open = bars.iter().any(|b| b.to.is_none());
    let end = if open { now.max(last) } else { last };
    let span = ((end - first).num_milliseconds().max(1) as f64) / 1000.0;
    let x = |at: DateTime<Utc>| {
        let secs = (at - first).num_milliseconds() as f64 / 1000.0;
        TRACK_X + (secs / span).clamp(0.0, 1.0) * TRACK_WIDTH
    };
    let step = tick_step(span);
    let ticks: Vec<f64> = (0..)
        .map(|i| f64::from(i) * step)
        .take_while(|t| *t <= span + 1e-9)
        .collect();
    let height = AXIS + ROW * (bars.len() as f64 + 1.0) + 6.0;
    let marks_y = AXIS + ROW * bars.len() as f64;
    let summary = format!(
        "Timeline: {} bars over {}, from {}",
        bars.len(),
        layout::duration((span * 1000.0) as u64),
        first.format("%H:%M:%S UTC")
    );
    html! {
        div.timeline-wrap {
            svg.timeline viewBox={ "0 0 " (WIDTH) " " (height) } role="img" aria-label=(summary)
                xmlns="http://www.w3.org/2000/svg" {
                defs {
                    pattern #hatch width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)" {
                        rect.hatch-bg width="6" height="6" {}
                        line.hatch-line x1="0" y1="0" x2="0" y2="6" {}
                    }
                }
                g.axis {
                    @for t in &ticks {
                        @let tx = TRACK_X + t / span * TRACK_WIDTH;
                        line.tick x1=(tx) y1=(AXIS - 4.0) x2=(tx) y2=(height) {}
                        text.tick-label x=(tx) y=(AXIS - 8.0) text-anchor="middle" { (tick_label(*t)) }
                    }
                }
                @for (i, bar) in bars.iter().enumerate() {
                    @let y = AXIS + ROW * i as f64;
                    @let to = bar.to.unwrap_or(end);
                    @let x0 = x(bar.from);
                    @let w = (x(to) - x0).max(2.0);
                    @let ms = (to - bar.from).num_milliseconds().max(0) as u64;
                    @let (class, state) = match (bar.kind, bar.ending) {
                        (_, Ending::Failed) => ("bar failed", "failed"),
                        (BarKind::Wait, Ending::Open) if bar.to.is_none() => ("bar wait open", "waiting"),
                        (BarKind::Wait, _) => ("bar wait", "done"),
                        (BarKind::Paused, _) => ("bar paused", "paused"),
                        (BarKind::Step, Ending::Open) if bar.to.is_none() => ("bar step open", "running"),
                        (BarKind::Step, Ending::Open) => ("bar step cut", "cut short"),
                        (BarKind::Step, Ending::Done) => ("bar step", "done"),
                    };
                    g class=(class) {
                        title { (bar.label) " — " (state) ", " (layout::duration(ms)) }
                        text.bar-label x=(LABEL_WIDTH) y=(y + 15.0) text-anchor="end" {
                            (ellipsis(&bar.label, 44))
                            @if bar.ending == Ending::Failed { " ✕" }
                        }
                        rect x=(x0) y=(y + 4.0) width=(w) height=(ROW - 8.0) rx="2" {}
                        @if bar.to.is_none() {
                            text.bar-open x=(x0 + w + 4.0) y=(y + 15.0) { "…" }
                        }
                    }
                }
                g.marks {
                    text.bar-label x=(LABEL_WIDTH) y=(marks_y + 15.0) text-anchor="end" { "events" }
                    @for mark in &marks {
                        text.mark x=(x(mark.at)) y=(marks_y + 15.0) text-anchor="middle" {
                            title { (mark.at.format("%H:%M:%S%.3f")) " " (mark.text) }
                            (mark_symbol(mark.kind))
                        }
                    }
                }
            }
        }
    }
}

fn ellipsis(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(max - 1).collect();
    short.push('…');
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(
        seq: u64,
        ms: i64,
        kind: EventKind,
        step: Option<&str>,
        detail: Option<&str>,
    ) -> Arc<TrialEvent> {
        Arc::new(TrialEvent {
            seq,
            at: DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::milliseconds(ms),
            event: kind,
            step: step.map(str::to_owned),
            detail: detail.map(str::to_owned),
            duration_ms: None,
        })
    }

    #[test]
    fn steps_and_waits_become_bars_in_order() {
        let history = vec![
            event(0, 0, EventKind::StepStarted, Some("GetTrialInfo"), None),
            event(1, 100, EventKind::StepCompleted, Some("GetTrialInfo"), None),
            event(2, 100, EventKind::Waiting, None, Some("the slice callback")),
            event(3, 150, EventKind::Progress, None, Some("40%")),
            event(
                4,
                900,
                EventKind::SignalAccepted,
                None,
                Some("slice callback"),
            ),
            event(
                5,
                900,
                EventKind::StepStarted,
                Some("UpdateDeploymentSlice"),
                None,
            ),
            event(
                6,
                950,
                EventKind::StepFailed,
                Some("UpdateDeploymentSlice"),
                Some("500"),
            ),
            event(
                7,
                960,
                EventKind::TrialFailed,
                None,
                Some("UpdateDeploymentSlice failed"),
            ),
        ];
        let (bars, marks) = build(&history);
        let summary: Vec<(BarKind, &str, Ending)> = bars
            .iter()
            .map(|b| (b.kind, b.label.as_str(), b.ending))
            .collect();
        assert_eq!(
            summary,
            [
                (BarKind::Step, "GetTrialInfo", Ending::Done),
                (BarKind::Wait, "wait: the slice callback", Ending::Done),
                (BarKind::Step, "UpdateDeploymentSlice", Ending::Failed),
            ]
        );
        assert!(bars.iter().all(|b| b.to.is_some()));
        let kinds: Vec<EventKind> = marks.iter().map(|m| m.kind).collect();
        assert_eq!(
            kinds,
            [
                EventKind::Progress,
                EventKind::SignalAccepted,
                EventKind::StepFailed,
                EventKind::TrialFailed
            ]
        );
        let drawn = render(&history, DateTime::<Utc>::UNIX_EPOCH).into_string();
        assert!(drawn.contains("UpdateDeploymentSlice ✕"), "{drawn}");
    }

    #[test]
    fn what_is_going_on_stays_open() {
        let history = vec![event(
            0,
            0,
            EventKind::StepStarted,
            Some("GetTrialInfo"),
            None,
        )];
        let (bars, _) = build(&history);
        assert_eq!(bars[0].to, None);
        let now = DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::seconds(3);
        let drawn = render(&history, now).into_string();
        assert!(drawn.contains("running"), "{drawn}");
    }

    #[test]
    fn ticks_are_few_and_round() {
        assert_eq!(tick_step(3.0), 0.5);
        assert_eq!(tick_step(25.0), 5.0);
        assert_eq!(tick_step(3000.0), 600.0);
        assert_eq!(tick_label(120.0), "+2 min");
        // Ticks 30 s apart past two minutes are told apart.
        assert_eq!(tick_label(150.0), "+2 min 30 s");
        assert_eq!(tick_label(9000.0), "+2 h 30 min");
        assert_eq!(tick_label(10_800.0), "+3 h");
    }
}
