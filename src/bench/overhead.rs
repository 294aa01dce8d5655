//! The LCM's overhead per step, measured where the trial components see it: from a
//! component's answer (or the start of its callback) to the LCM's next request for the same
//! trial. Waits that are not the LCM's (for a callback, for the operator's `active` or
//! `finish`) are left out; what remains is the LCM receiving the answer, checkpointing,
//! deciding the next step and sending its request, plus both loopback hops.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::sim::{Component, RecordedCallback, RecordedRequest};

/// Gaps in milliseconds.
#[derive(Debug, Default)]
pub struct Gaps {
    /// Every LCM gap: after an answer or a callback.
    pub steps: Vec<f64>,
    /// The gaps that followed a callback (the LCM took the callback, then sent its request).
    pub after_callback: Vec<f64>,
    /// From a trial's scheduled start to its first request.
    pub start: Vec<f64>,
}

/// Measures the gaps of the trials in `starts` (trial id → scheduled start).
pub fn measure(
    requests: &[RecordedRequest],
    callbacks: &[RecordedCallback],
    starts: &HashMap<String, DateTime<Utc>>,
) -> Gaps {
    let known: HashSet<&str> = starts.keys().map(String::as_str).collect();
    let mut by_trial: HashMap<&str, Vec<&RecordedRequest>> = HashMap::new();
    for request in requests {
        if let Some(trial) = trial_of(request, &known) {
            by_trial.entry(trial).or_default().push(request);
        }
    }
    let mut calls_by_trial: HashMap<&str, Vec<DateTime<Utc>>> = HashMap::new();
    for callback in callbacks {
        if let Some(trial) = callback_trial(&callback.url).filter(|t| known.contains(t)) {
            calls_by_trial
                .entry(trial)
                .or_default()
                .push(callback.sent_at);
        }
    }

    let mut gaps = Gaps::default();
    for (trial, mut requests) in by_trial {
        requests.sort_by_key(|r| r.at);
        if let (Some(first), Some(start)) = (requests.first(), starts.get(trial)) {
            gaps.start.push(millis(first.at - *start));
        }
        let calls = calls_by_trial.get(trial).map_or(&[][..], Vec::as_slice);
        for pair in requests.windows(2) {
            let (previous, next) = (pair[0], pair[1]);
            if awaits_operator(previous) {
                continue;
            }
            let Some(answered) = previous.answered_at else {
                continue;
            };
            // A callback made between the two requests: the LCM waited for it, so the gap
            // counts from the later of the answer and the callback.
            let callback = calls
                .iter()
                .copied()
                .filter(|sent| *sent > previous.at && *sent <= next.at)
                .max();
            let from = callback.map_or(answered, |sent| sent.max(answered));
            let gap = millis(next.at - from).max(0.0);
            gaps.steps.push(gap);
            if callback.is_some_and(|sent| sent >= answered) {
                gaps.after_callback.push(gap);
            }
        }
    }
    for list in [&mut gaps.steps, &mut gaps.after_callback, &mut gaps.start] {
        list.sort_by(f64::total_cmp);
    }
    gaps
}

/// After writing IDLE or ACTIVE the executor waits for the operator: not the LCM's time.
fn awaits_operator(request: &RecordedRequest) -> bool {
    request.component == Component::Repository
        && request.method == "PUT"
        && request
            .body
            .as_ref()
            .and_then(|b| b.get("status"))
            .and_then(Value::as_str)
            .is_some_and(|s| s == "IDLE" || s == "ACTIVE")
}

/// The trial a request is about: by path (`/trial/{id}/`, `/sliceDeployment/{id}`,
/// `/measurementjobs/mj-{id}`), query (`trialID`) or body (`trialID`, `TrialID`, which may name
/// the trial's slice `slice-{id}`).
fn trial_of<'a>(request: &RecordedRequest, known: &HashSet<&'a str>) -> Option<&'a str> {
    let lookup = |candidate: &str| known.get(candidate).copied();
    let segments: Vec<&str> = request.path.split('/').filter(|s| !s.is_empty()).collect();
    if let [_, id] = segments.as_slice() {
        let id = id.strip_prefix("mj-").unwrap_or(id);
        if let Some(trial) = lookup(id) {
            return Some(trial);
        }
    }
    if let Some(trial) = request.query.get("trialID").and_then(|id| lookup(id)) {
        return Some(trial);
    }
    let body = request.body.as_ref()?;
    ["trialID", "TrialID"].iter().find_map(|key| {
        let id = body.get(*key)?.as_str()?;
        lookup(id.strip_prefix("slice-").unwrap_or(id))
    })
}

/// The trial of a callback URL `…/trial/{id}/callback/{kind}`.
fn callback_trial(url: &str) -> Option<&str> {
    url.split("/trial/").nth(1)?.split('/').next()
}

fn millis(delta: chrono::TimeDelta) -> f64 {
    delta
        .num_microseconds()
        .map_or(f64::MAX, |us| us as f64 / 1000.0)
}

/// The nearest-rank percentile of sorted values (0 when there are none).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;
    use serde_json::json;

    fn request(path: &str, body: Option<Value>, at: i64, answered: i64) -> RecordedRequest {
        let base = DateTime::<Utc>::UNIX_EPOCH;
        RecordedRequest {
            component: if path.starts_with("/trial") {
                Component::Repository
            } else {
                Component::Enforcement
            },
            method: if body.as_ref().is_some_and(|b| b.get("status").is_some()) {
                "PUT".into()
            } else {
                "POST".into()
            },
            path: path.into(),
            query: HashMap::new(),
            body,
            authorization: None,
            idempotency_key: None,
            at: base + TimeDelta::microseconds(at),
            answered_at: Some(base + TimeDelta::microseconds(answered)),
        }
    }

    #[test]
    fn counts_from_the_answer_or_the_callback_and_skips_operator_waits() {
        let base = DateTime::<Utc>::UNIX_EPOCH;
        let requests = vec![
            request("/trial/t1/", None, 1_000, 1_100),
            request(
                "/sliceDeployment",
                Some(json!({"trialID": "t1"})),
                1_400,
                1_500,
            ),
            // The callback starts at 20 ms; the LCM's next request comes 0.5 ms later.
            request(
                "/trial/t1/",
                Some(json!({"status": "ACTIVATING_1"})),
                20_500,
                20_600,
            ),
            request(
                "/trial/t1/",
                Some(json!({"status": "IDLE"})),
                21_000,
                21_100,
            ),
            // The operator took its time: not counted.
            request(
                "/markKPIData",
                Some(json!({"TrialID": "slice-t1"})),
                90_000,
                90_100,
            ),
            request("/other", None, 90_300, 90_400),
        ];
        let callbacks = vec![RecordedCallback {
            url: "http://127.0.0.1:1/trial/t1/callback/slice".into(),
            status: Some(200),
            body: None,
            sent_at: base + TimeDelta::microseconds(20_000),
            at: base + TimeDelta::microseconds(20_700),
        }];
        let starts = HashMap::from([("t1".to_owned(), base)]);
        let gaps = measure(&requests, &callbacks, &starts);
        // 1.1→1.4, cb 20.0→20.5, 20.6→21.0, (IDLE wait skipped); "/other" is not t1's.
        assert_eq!(gaps.steps, [0.3, 0.4, 0.5]);
        assert_eq!(gaps.after_callback, [0.5]);
        assert_eq!(gaps.start, [1.0]);
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), 50.0);
        assert_eq!(percentile(&values, 99.0), 99.0);
        assert_eq!(percentile(&values, 100.0), 100.0);
        assert_eq!(percentile(&[], 99.0), 0.0);
    }
}
