//! How each simulated component answers, and how faults bend that.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Value, json};

use super::{
    Component, FaultAction, KPI_CLIENT_ID, KPI_CLIENT_SECRET, PLANNED_TRIALS, Platform,
    RecordedCallback, RecordedRequest, SimState, lock,
};
use crate::domain::TrialId;

/// The usual answer to a request, and the callback it triggers.
struct Answer {
    status: u16,
    body: Option<Value>,
    callback: Option<Callback>,
    /// A trial status the repository just stored: `(trial id, status)`.
    status_change: Option<(String, String)>,
}

struct Callback {
    url: String,
    token: String,
    /// What the component does before it calls back, for its progress reports.
    activity: &'static str,
}

fn answer(status: u16, body: Option<Value>) -> Answer {
    Answer {
        status,
        body,
        callback: None,
        status_change: None,
    }
}

/// Every request of every component comes here.
pub async fn handle(
    State((sim, component)): State<(Arc<SimState>, Component)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query: HashMap<String, String> = uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let json_body = serde_json::from_slice::<Value>(&body).ok();
    let form_body: HashMap<String, String> =
        url::form_urlencoded::parse(&body).into_owned().collect();
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let idempotency_key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let path = uri.path().to_owned();
    let recorded = RecordedRequest {
        component,
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        body: json_body.clone(),
        authorization: authorization.clone(),
        idempotency_key,
        at: Utc::now(),
        answered_at: None,
    };
    let fault = take_fault(&sim, &recorded);
    let index = sim.record_request(recorded);
    // Every way out goes through here, so the answer's time is taken just before it is sent.
    let answered = |response: Response| {
        sim.mark_answered(index);
        response
    };
    match &fault {
        Some(FaultAction::Status(code)) => {
            return answered(reply(*code, Some(json!({"detail": "injected failure"}))));
        }
        Some(FaultAction::HoldThenStatus(gate, code)) => {
            gate.passed().await;
            return answered(reply(*code, Some(json!({"detail": "injected failure"}))));
        }
        Some(FaultAction::Json(code, value)) => {
            return answered(reply(*code, Some(value.clone())));
        }
        Some(FaultAction::Redirect(to)) => {
            let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
            if let Ok(value) = HeaderValue::from_str(to) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            return answered(response);
        }
        Some(FaultAction::Text(code, text)) => {
            let status = StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return answered((status, text.clone()).into_response());
        }
        Some(FaultAction::RetryAfter(code, after)) => {
            let mut response = reply(*code, Some(json!({"detail": "busy: try again later"})));
            if let Ok(value) = HeaderValue::from_str(&after.header_value()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return answered(response);
        }
        Some(FaultAction::Delay(pause)) => tokio::time::sleep(*pause).await,
        Some(FaultAction::Hang) => std::future::pending::<()>().await,
        Some(FaultAction::CutOff) => return answered(cut_off()),
        Some(FaultAction::HoldUntil(gate) | FaultAction::HoldThenDropCallback(gate)) => {
            gate.passed().await;
        }
        _ => {}
    }

    let usual = match component {
        Component::Repository => repository(&sim, &method, &path, json_body.as_ref()),
        Component::Enforcement => enforcement(&sim, &method, &path, &query, json_body.as_ref()),
        Component::Kpi => kpi(&sim, &method, &path, &form_body, authorization.as_deref()),
    };
    if let Some(callback) = usual.callback {
        match fault {
            Some(FaultAction::DropCallback | FaultAction::HoldThenDropCallback(_)) => {}
            Some(FaultAction::EarlyCallback) => call_back(&sim, &callback).await,
            Some(FaultAction::DuplicateCallback) => {
                let sim = sim.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(sim.options.callback_delay).await;
                    call_back(&sim, &callback).await;
                    call_back(&sim, &callback).await;
                });
            }
            _ => {
                let sim = sim.clone();
                tokio::spawn(async move {
                    work(&sim, &callback).await;
                    call_back(&sim, &callback).await;
                });
            }
        }
    }
    if matches!(fault, Some(FaultAction::Garbage)) {
        return answered(
            (
                StatusCode::from_u16(usual.status).unwrap_or(StatusCode::OK),
                [(header::CONTENT_TYPE, "text/html")],
                "<html><body>502 proxy error, not JSON</body></html>",
            )
                .into_response(),
        );
    }
    if let Some((trial, status)) = &usual.status_change {
        sim.notify_status(trial, status);
    }
    if matches!(fault, Some(FaultAction::AnswerLost)) {
        return answered(cut_off());
    }
    let mut body = usual.body;
    if let Some(Value::Object(map)) = &mut body {
        match fault {
            Some(FaultAction::EchoRequest) => {
                map.insert("echo".to_owned(), json_body.clone().unwrap_or(Value::Null));
            }
            Some(FaultAction::EchoAuthorization) => {
                map.insert("authorization".to_owned(), json!(authorization));
            }
            _ => {}
        }
    }
    answered(reply(usual.status, body))
}

/// An answer that breaks off: the head and the start go out while the body waits (hyper
/// writes what it has when the body is pending), then the body fails and the connection is
/// dropped.
fn cut_off() -> Response {
    let start = futures_util::stream::iter([Ok(Bytes::from_static(b"{\"id\": \""))]);
    let crash = futures_util::stream::once(async {
        tokio::task::yield_now().await;
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "the component crashed while answering",
        ))
    });
    let body = futures_util::StreamExt::chain(start, crash);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

fn reply(status: u16, body: Option<Value>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match body {
        Some(body) => (status, axum::Json(body)).into_response(),
        None => status.into_response(),
    }
}

fn take_fault(sim: &SimState, request: &RecordedRequest) -> Option<FaultAction> {
    let mut faults = lock(&sim.faults);
    let index = faults.iter().position(|f| {
        f.component == request.component
            && f.method == request.method
            && request.path.contains(&f.path_contains)
            && f.trial
                .as_deref()
                .is_none_or(|trial| concerns(request, trial))
    })?;
    if faults[index].skip > 0 {
        faults[index].skip -= 1;
        return None;
    }
    let action = faults[index].action.clone();
    if let Some(times) = &mut faults[index].times {
        *times -= 1;
        if *times == 0 {
            faults.remove(index);
        }
    }
    Some(action)
}

/// Works towards a callback for `callback_delay`; with a `progress_interval`, reports how far
/// along it is that often meanwhile, as a component taking its time would.
async fn work(sim: &SimState, callback: &Callback) {
    let total = sim.options.callback_delay;
    let started = tokio::time::Instant::now();
    if let Some(every) = sim
        .options
        .progress_interval
        .filter(|every| !every.is_zero())
    {
        let mut done = every;
        while done < total {
            tokio::time::sleep_until(started + done).await;
            let percent = (done.as_secs_f64() * 100.0 / total.as_secs_f64()) as u8;
            report_progress(sim, callback, percent).await;
            done += every;
        }
    }
    tokio::time::sleep_until(started + total).await;
}

/// `POST <trial>/callback/progress` (beside the callback's own URL) with the callback's token.
async fn report_progress(sim: &SimState, callback: &Callback, percent: u8) {
    let Some((base, _kind)) = callback.url.rsplit_once('/') else {
        return;
    };
    let body = json!({"progress": percent, "message": callback.activity});
    post_callback(sim, format!("{base}/progress"), &callback.token, body).await;
}

async fn call_back(sim: &SimState, callback: &Callback) {
    post_callback(
        sim,
        callback.url.clone(),
        &callback.token,
        json!({"status": "ok"}),
    )
    .await;
}

/// Attempts of a callback that gets no answer or a 429 (like a component that retries): the
/// LCM may have closed the pooled connection it went out on just then, or held its token back.
const CALLBACK_ATTEMPTS: usize = 3;
/// The pause before a callback that got no answer is sent again.
const CALLBACK_RETRY_PAUSE: Duration = Duration::from_millis(100);
/// The longest a 429's `Retry-After` is waited before the callback is sent again.
const CALLBACK_LONGEST_WAIT: Duration = Duration::from_secs(5);

/// Posts to the LCM with the trial's token and records what it answered, each attempt: one
/// that gets no answer at all, or a 429, is sent again (after its `Retry-After`; a repeated
/// callback is taken once).
async fn post_callback(sim: &SimState, url: String, token: &str, body: Value) {
    for attempt in 1..=CALLBACK_ATTEMPTS {
        let sent_at = Utc::now();
        let result = sim
            .http
            .post(&url)
            .header(header::AUTHORIZATION, token)
            .json(&body)
            .send()
            .await;
        let (status, answer, asked_wait) = match result {
            Ok(response) => {
                let status = response.status().as_u16();
                // A 429 says when to send again; the wait asked for is kept short here.
                let asked_wait = (response.headers().get(header::RETRY_AFTER))
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                    .map(|secs| Duration::from_secs(secs).min(CALLBACK_LONGEST_WAIT));
                (
                    Some(status),
                    response.json::<Value>().await.ok(),
                    asked_wait,
                )
            }
            Err(_) => (None, None, None),
        };
        sim.record_callback(RecordedCallback {
            url: url.clone(),
            status,
            body: answer,
            sent_at,
            at: Utc::now(),
        });
        let held_back = status == Some(429);
        if (status.is_some() && !held_back) || attempt == CALLBACK_ATTEMPTS {
            return;
        }
        tokio::time::sleep(asked_wait.unwrap_or(CALLBACK_RETRY_PAUSE)).await;
    }
}

fn segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

fn repository(sim: &SimState, method: &Method, path: &str, body: Option<&Value>) -> Answer {
    match (method.as_str(), segments(path).as_slice()) {
        ("GET", []) => answer(200, Some(json!({"service": "trial repository"}))),
        ("GET", ["trial"]) => {
            let mut trials = lock(&sim.trials);
            for (id, lead) in PLANNED_TRIALS {
                make_up(sim, &mut trials, id, lead);
            }
            let mut trials: Vec<Value> = trials.values().cloned().collect();
            trials.sort_by_key(|t| t.get("id").and_then(Value::as_str).map(str::to_owned));
            answer(200, Some(Value::Array(trials)))
        }
        ("GET", ["trial", id]) => {
            let mut trials = lock(&sim.trials);
            make_up(sim, &mut trials, id, Duration::ZERO);
            match trials.get(*id) {
                Some(trial) => answer(200, Some(trial.clone())),
                None => answer(404, Some(json!({"detail": "Not found."}))),
            }
        }
        ("PUT", ["trial", id]) => {
            let mut trials = lock(&sim.trials);
            make_up(sim, &mut trials, id, Duration::ZERO);
            let Some(trial) = trials.get_mut(*id) else {
                return answer(404, Some(json!({"detail": "Not found."})));
            };
            match (body.and_then(|b| b.get("status")), trial.as_object_mut()) {
                (Some(status), Some(object)) => {
                    object.insert("status".to_owned(), status.clone());
                    let text = status
                        .as_str()
                        .map_or_else(|| status.to_string(), str::to_owned);
                    Answer {
                        status_change: Some(((*id).to_owned(), text)),
                        ..answer(204, None)
                    }
                }
                _ => answer(400, Some(json!({"detail": "status is required"}))),
            }
        }
        _ => answer(404, Some(json!({"detail": "no such route"}))),
    }
}

/// With an open registry ([`super::SimOptions::open_registry`]), makes up trial `id` if it is
/// valid and unknown: approved, starting the registry's lead plus `later` from now.
fn make_up(sim: &SimState, trials: &mut HashMap<String, Value>, id: &str, later: Duration) {
    let Some(lead) = sim.options.open_registry else {
        return;
    };
    if trials.contains_key(id) || TrialId::parse(id).is_err() {
        return;
    }
    let start = Utc::now() + chrono::Duration::from_std(lead + later).unwrap_or_default();
    trials.insert(id.to_owned(), Platform::trial(id, Some(start)));
    lock(&sim.made_up).insert(id.to_owned());
}

/// The trial a callback URL (`…/trial/{id}/callback/{kind}`) is for.
fn callback_trial(url: &str) -> Option<String> {
    let url = url::Url::parse(url).ok()?;
    let mut segments = url.path_segments()?;
    segments.find(|s| *s == "trial")?;
    segments.next().map(str::to_owned)
}

fn enforcement(
    sim: &SimState,
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
    body: Option<&Value>,
) -> Answer {
    let trial_id = body
        .and_then(|b| b.get("trialID"))
        .and_then(Value::as_str)
        .or_else(|| query.get("trialID").map(String::as_str))
        .unwrap_or("unknown")
        .to_owned();
    let callback = |activity: &'static str| {
        let url = query.get("callback_url")?.clone();
        let token = body?.get("Authorization")?.as_str()?.to_owned();
        Some(Callback {
            url,
            token,
            activity,
        })
    };
    let with_callback = |status: u16, body: Option<Value>, activity| match callback(activity) {
        // A made-up trial's callbacks are sent by hand.
        Some(callback)
            if callback_trial(&callback.url)
                .is_some_and(|trial| lock(&sim.made_up).contains(&trial)) =>
        {
            answer(status, body)
        }
        Some(callback) => Answer {
            callback: Some(callback),
            ..answer(status, body)
        },
        None => answer(
            400,
            Some(json!({"detail": "callback_url and Authorization are required"})),
        ),
    };
    match (method.as_str(), segments(path).as_slice()) {
        ("GET", []) => answer(200, Some(json!({"service": "trial enforcement"}))),
        ("POST", ["sliceDeployment"]) => with_callback(
            201,
            Some(json!({"Slice": {"id": format!("slice-{trial_id}")}, "status": "deploying"})),
            "deploying the slice",
        ),
        ("DELETE", ["sliceDeployment", _id]) => {
            with_callback(200, Some(json!({"status": "closing"})), "closing the slice")
        }
        ("POST", ["flightplan"]) => answer(201, Some(json!({"status": "flight plan enforced"}))),
        ("POST", ["measurementjobs"]) => answer(
            201,
            Some(json!({"MeasurementID": format!("mj-{trial_id}"), "status": "created"})),
        ),
        ("DELETE", ["measurementjobs", _id]) => answer(204, None),
        ("POST", ["vnf", "cloud" | "edge", "boarding" | "deployment"]) => with_callback(
            201,
            Some(json!({"status": "accepted"})),
            "setting up the VNF",
        ),
        ("POST", ["tap"]) => answer(200, Some(json!({"status": "testing started"}))),
        _ => answer(404, Some(json!({"detail": "no such route"}))),
    }
}

fn kpi(
    sim: &SimState,
    method: &Method,
    path: &str,
    form: &HashMap<String, String>,
    authorization: Option<&str>,
) -> Answer {
    match (method.as_str(), segments(path).as_slice()) {
        ("GET", []) => answer(200, Some(json!({"service": "kpi monitoring"}))),
        ("POST", ["token"]) => {
            let valid = form.get("grant_type").map(String::as_str) == Some("client_credentials")
                && form.get("client_id").map(String::as_str) == Some(KPI_CLIENT_ID)
                && form.get("client_secret").map(String::as_str) == Some(KPI_CLIENT_SECRET);
            if !valid {
                return answer(401, Some(json!({"error": "invalid_client"})));
            }
            let mut issued = lock(&sim.issued_tokens);
            let token = format!("kpi-access-{}", issued.len() + 1);
            issued.push(token.clone());
            answer(
                200,
                Some(json!({"access_token": token, "token_type": "Bearer", "expires_in": 3600})),
            )
        }
        ("POST", ["markKPIData"]) => {
            if sim.options.kpi_oauth2 {
                let presented = authorization.and_then(|a| a.strip_prefix("Bearer "));
                let known =
                    presented.is_some_and(|t| lock(&sim.issued_tokens).iter().any(|i| i == t));
                if !known {
                    return answer(401, Some(json!({"detail": "bearer token required"})));
                }
            }
            answer(200, Some(json!({"status": "marked"})))
        }
        _ => answer(404, Some(json!({"detail": "no such route"}))),
    }
}

/// Whether a recorded request concerns `trial` (its path, query or body names it, or the
/// slice or measurement job the simulator named after it).
pub fn concerns(request: &RecordedRequest, trial: &str) -> bool {
    let slice = format!("slice-{trial}");
    let job = format!("mj-{trial}");
    let in_path = segments(&request.path)
        .iter()
        .any(|s| *s == trial || *s == job);
    let in_query = request.query.get("trialID").map(String::as_str) == Some(trial);
    let in_body = request.body.as_ref().is_some_and(|b| {
        ["trialID", "TrialID"].iter().any(|k| {
            b.get(*k)
                .and_then(Value::as_str)
                .is_some_and(|v| v == trial || v == slice)
        })
    });
    in_path || in_query || in_body
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::sim::{Platform, SimOptions};

    #[tokio::test]
    async fn a_stopped_component_refuses_connections_and_keeps_its_port() {
        let platform = Platform::start(SimOptions::default()).await.expect("sim");
        let address = platform.address(Component::Enforcement);
        platform.stop(Component::Enforcement).await;
        let refused = tokio::net::TcpStream::connect(address).await;
        assert!(
            refused.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused),
            "connections are refused"
        );
        assert!(
            TcpListener::bind(address).await.is_err(),
            "no other server takes the port meanwhile"
        );
        platform
            .start_again(Component::Enforcement)
            .await
            .expect("serves again on its port");
        assert!(tokio::net::TcpStream::connect(address).await.is_ok());
    }

    #[tokio::test]
    async fn a_callback_that_gets_no_answer_is_sent_again() {
        let platform = Platform::start(SimOptions::default()).await.expect("sim");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let url = format!(
            "http://{}/trial/t1/callback/slice",
            listener.local_addr().expect("addr")
        );
        let lcm = tokio::spawn(async move {
            // The first connection is closed unanswered, the second gets its answer.
            let (first, _) = listener.accept().await.expect("first");
            drop(first);
            let (mut second, _) = listener.accept().await.expect("second");
            let mut head = vec![0; 4096];
            let _ = second.read(&mut head).await.expect("reads");
            let body = r#"{"message":"taken"}"#;
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            second.write_all(answer.as_bytes()).await.expect("answers");
        });
        post_callback(&platform.state, url, "token", json!({"status": "ok"})).await;
        lcm.abort();
        let made: Vec<Option<u16>> = platform.callbacks().iter().map(|c| c.status).collect();
        assert_eq!(made, [None, Some(200)]);
    }
}
