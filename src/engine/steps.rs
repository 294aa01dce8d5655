//! What each step of [`super::sequence`] sends and what it needs back (SPEC §4, §4.1, §4.2,
//! §14's clean-up), and what it records of what the trial deployed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::journal::Journal;
use super::nst;
use super::redact::Redactor;
use super::sequence::{self, Step};
use super::state;
use super::state::{
    EventKind, JobState, KpiStatus, Ledger, ResponseRecord, SliceState, TrialData, TrialInfo,
    slice_id,
};
use super::{EngineDeps, EngineShared};
use crate::config::Settings;
use crate::domain::TrialId;
use crate::services::{Attempt, Outbound, SendError, Service, registry};

/// Why a step failed, in words for the operator.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct StepError(pub String);

fn fail<T>(message: impl Into<String>) -> Result<T, StepError> {
    Err(StepError(message.into()))
}

/// The context a step runs in.
pub struct StepCx<'a> {
    pub deps: &'a EngineDeps,
    pub id: &'a TrialId,
    pub data: &'a mut TrialData,
    pub step: Step,
    /// The step runs again after a failure or a crash: what it did the first time may
    /// already have taken effect.
    pub rerun: bool,
    /// Part of an abort's clean-up: what is gone already counts as undone.
    pub cleanup: bool,
    /// The trial's run (restores so far), for idempotency keys.
    pub run: u32,
    /// When the engine was created, for `executor.max_trial_secs`.
    pub started_at: DateTime<Utc>,
    /// `POST`s sent by this step so far, for idempotency keys.
    pub posts: u32,
    /// Whether the last request may have made what it asked for: an attempt may have reached
    /// its service (it got an answer, or failed after it could have been sent), and the last
    /// answer was no refusal (a 4xx makes nothing).
    pub may_have_made: bool,
    /// Whether an attempt of the last request before its final one may have done what it
    /// asked (it may have reached its service, and was not refused with a 4xx): a close that
    /// finds nothing to close on its retry may have closed it itself.
    pub done_before_last: bool,
    /// Cancelled once an abort waits for the request in flight, or the engine is stopped: no
    /// further attempt is made, and a wait for one ends at once.
    pub last_attempt: &'a CancellationToken,
    /// The engine: its journal records the step's answers; its `uncut` is set while a request
    /// an abort does not cut short is in flight (see [`StepCx::call_uncut`]); its shown
    /// `paused` holds every request the step has not started yet (SPEC §14: no new request
    /// starts until resume) unless the operator stepped to it.
    pub shared: &'a EngineShared,
    /// The operator stepped the paused trial to this step: its requests go.
    pub stepping: bool,
}

/// Runs one step.
pub async fn run(cx: &mut StepCx<'_>) -> Result<(), StepError> {
    match cx.step {
        Step::GetCallbackToken => get_callback_token(cx),
        Step::GetTrialInfo => get_trial_info(cx).await,
        Step::SliceDeployment => slice_deployment(cx).await,
        Step::CloudVnfOnboarding => {
            cx.vnf_request("vnf/cloud/boarding", "cloudvnfboarding")
                .await
        }
        Step::CloudVnfDeployment => {
            cx.vnf_request("vnf/cloud/deployment", "cloudvnfdeployment")
                .await
        }
        Step::EdgeVnfOnboarding => {
            cx.vnf_request("vnf/edge/boarding", "edgevnfonboarding")
                .await
        }
        Step::EdgeVnfDeployment => {
            cx.vnf_request("vnf/edge/deployment", "edgevnfdeployment")
                .await
        }
        Step::Start5GresourceTesting => start_5g_resource_testing(cx).await,
        Step::EnforceUavPlan => enforce_uav_plan(cx).await,
        Step::CreateMeasurementJob => create_measurement_job(cx).await,
        Step::SendKpiIdle => cx.mark_kpis(KpiStatus::Idle).await,
        Step::SendKpiActive => cx.mark_kpis(KpiStatus::Active).await,
        Step::SendKpiFinish => cx.mark_kpis(KpiStatus::Finished).await,
        Step::DeleteMeasurementJob => delete_measurement_job(cx).await,
        Step::CloseService => close_service(cx).await,
        Step::RemoveCallbackToken => remove_callback_token(cx).await,
        Step::Finish => Ok(()),
        Step::UpdateDeploymentSlice
        | Step::UpdateUavPlanStatus
        | Step::UpdateStatusIdle
        | Step::UpdateStatusActive
        | Step::UpdateStatusStopping
        | Step::UpdateStatusFinish => match sequence::status_written(cx.step) {
            Some(status) => cx.update_status(status).await,
            None => fail(format!("{} writes no status", cx.step.name())),
        },
        Step::UpdateStatusAborted => report_aborted(cx).await,
    }
}

/// The repository told the trial is aborted, once everything is undone. Its refusal for good
/// (a 4xx: 404 or 410, it no longer has the trial; 409 or 422, it takes no such status now; …)
/// is not a failure of the clean-up: nothing is left to undo, and asking again would be
/// answered the same. It is logged, recorded with the answers, and the trial ends aborted. Not
/// so a 401 or 403 (the LCM's credentials, which can be mended), nor a 408 or 429 (asking
/// again later may be answered): those, and a 5xx, fail the clean-up, which is retried.
async fn report_aborted(cx: &mut StepCx<'_>) -> Result<(), StepError> {
    let status = cx.deps.settings.executor.aborted_repository_status.clone();
    let path = format!("trial/{}/", cx.id);
    let request =
        Outbound::new(Service::TrialRepository, Method::PUT, path).json(json!({"status": status}));
    let takes = |answer: u16| answer == 204 || refused_for_good(answer);
    let expected = || or_refused_for_good(204);
    // Like every status write, it has its answer before a stop.
    match cx.call_uncut_accepting(request, &takes, &expected).await? {
        (204, _) => cx.data.repository_status = Some(status),
        (refused, _) => warn!(
            status = refused,
            "the trial repository refused the {status} status for good: the trial is aborted all the same, with nothing left to undo"
        ),
    }
    Ok(())
}

/// A 4xx that asking again would get again: not one about the LCM's own credentials (401,
/// 403), which can be mended, nor a timeout or a rate limit (408, 429). A clean-up step that
/// only tells a component (the repository's status, KPI monitoring's marking) takes it: with
/// what was deployed undone, the trial is aborted all the same.
fn refused_for_good(answer: u16) -> bool {
    (400..500).contains(&answer) && ![401, 403, 408, 429].contains(&answer)
}

/// What a step that takes [`refused_for_good`] expects, in the reason of a failure.
fn or_refused_for_good(ok: u16) -> String {
    format!("{ok}, or a refusal for good (a 4xx but 401, 403, 408, 429)")
}

fn get_callback_token(cx: &mut StepCx<'_>) -> Result<(), StepError> {
    let token = cx
        .deps
        .tokens
        .mint(cx.id)
        .map_err(|e| StepError(format!("cannot mint the callback token: {e}")))?;
    cx.data.token = Some(token);
    Ok(())
}

async fn get_trial_info(cx: &mut StepCx<'_>) -> Result<(), StepError> {
    let trial = cx.fetch_trial().await?;
    let field = |name: &str| {
        trial
            .get(name)
            .cloned()
            .ok_or_else(|| StepError(format!("trial object has no '{name}'")))
    };
    let facility_key = field("facility")?;
    let Some(facility_key) = facility_key.as_str() else {
        return fail("trial object's 'facility' is not a string");
    };
    let Some(facility) = cx.deps.settings.facilities.get(facility_key) else {
        let known: Vec<&str> = cx
            .deps
            .settings
            .facilities
            .keys()
            .map(String::as_str)
            .collect();
        return fail(format!(
            "unknown facility '{}' (known: {})",
            cx.quote(facility_key),
            known.join(", ")
        ));
    };
    field("id")?;
    cx.data.deadline = deadline(cx, &trial)?;
    cx.data.info = Some(Arc::new(TrialInfo {
        trial_id: cx.id.to_string(),
        facility: facility.clone(),
        kpis: match field("kpis")? {
            kpis @ Value::Array(_) => kpis,
            _ => return fail("trial object's 'kpis' is not a list"),
        },
        name: field("name")?,
        target: "dummy".to_owned(),
        deployed_slice: json!({}),
        measurement_job: json!({}),
    }));
    Ok(())
}

/// When the trial finishes on its own: `executor.max_trial_secs` after it started, or the
/// registry's `end_time`, whichever comes first. An `end_time` already past is an error.
fn deadline(cx: &StepCx<'_>, trial: &Value) -> Result<Option<DateTime<Utc>>, StepError> {
    let configured = cx.deps.settings.executor.max_trial_secs.map(|secs| {
        cx.started_at + chrono::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX / 2))
    });
    let end_time = match trial.get("end_time") {
        None | Some(Value::Null) => None,
        Some(Value::String(raw)) => {
            let end = DateTime::parse_from_rfc3339(raw)
                .map_err(|_| {
                    StepError(format!(
                        "trial object's end_time '{}' is not an RFC 3339 time with an offset",
                        cx.quote(raw)
                    ))
                })?
                .with_timezone(&Utc);
            if end <= Utc::now() {
                return fail(format!(
                    "trial object's end_time {} is in the past: the trial would end before it starts",
                    cx.quote(raw)
                ));
            }
            Some(end)
        }
        Some(_) => return fail("trial object's end_time is not a string"),
    };
    Ok(match (configured, end_time) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

async fn slice_deployment(cx: &mut StepCx<'_>) -> Result<(), StepError> {
    let trial = cx.fetch_trial().await?;
    match trial.get("status").and_then(Value::as_str) {
        Some("APPROVED") => {}
        // A restored trial finds the status this LCM wrote when it failed: nobody else has
        // changed the trial since, so it is still ours to run.
        Some(ours) if cx.data.repository_status.as_deref() == Some(ours) => {}
        Some(other) => {
            return fail(format!(
                "trial status is '{}', not APPROVED",
                cx.quote(other)
            ));
        }
        None => return fail("trial object has no 'status'"),
    }
    let Some(raw_nst) = trial.get("nst") else {
        return fail("trial object has no 'nst'");
    };
    let Some(nst) = nst::parse(raw_nst) else {
        return fail("trial object's 'nst' is neither a JSON object nor a parsable dict literal");
    };
    let body = json!({
        "trialID": cx.id.as_str(),
        "NST": {"nst": nst},
        "facility": cx.info()?.facility,
        "Authorization": cx.token()?,
    });
    let mut request = cx
        .post(Service::TrialEnforcement, "sliceDeployment")
        .creating()
        .query("callback_url", cx.callback_url("slice"))
        .json(body);
    // A deployment sent before and never answered goes again as itself, with its key.
    if let SliceState::Requested(Some(key)) = &cx.data.ledger.slice {
        request = request.idempotency_key(key.clone());
    }
    let requested = SliceState::Requested(request.idempotency_key.clone());
    let reply = call_creating(cx, request, |l| &mut l.slice, requested).await?;
    let Some(id) = slice_id(&reply) else {
        return fail(
            "trial enforcement's slice deployment answer has no 'Slice.id' (a string that is not blank, or a number)",
        );
    };
    // The checkpoint keeps what later steps use, the id; the whole answer is in the trial's
    // recorded responses.
    cx.info_mut()?.deployed_slice = json!({"Slice": {"id": id}});
    cx.data.ledger.slice = SliceState::Created;
    Ok(())
}

async fn start_5g_resource_testing(cx: &mut StepCx<'_>) -> Result<(), StepError> {
    let info = cx.info()?;
    let body = json!({
        "trialID": info.trial_id,
        "name": info.name,
        "facility": info.facility,
        "target": info.target,
    });
    let request = cx
        .post(Service::TrialEnforcement, "tap")
        .creating()
        .json(body);
    cx.call(request, 200).await?;
    Ok(())
}

async fn enforce_uav_plan(cx: &mut StepCx<'_>) -> Result<(), StepError> {
    let trial = cx.fetch_trial().await?;
    let Some(flights) = trial.get("flights").cloned() else {
        return fail("trial object has no 'flights'");
    };
    let body = json!({"trialID": cx.id.as_str(), "flight_plan": {"flights": flights}});
    let request = cx
        .post(Service::TrialEnforcement, "flightplan")
        .creating()
        .json(body);
    cx.call_expecting(request, CREATION_ANSWERS).await?;
    Ok(())
}

/// What a creating `POST` may be answered: 201, or 200 for a replay: a component that honours
/// the `Idempotency-Key` answers a creation it made already with what it made the first time.
/// The key of a creation is the same whenever it is sent in the same run, so a 200 is taken
/// even where no record says it was sent before: a power cut may have lost that record with
/// the last commits.
const CREATION_ANSWERS: &[u16] = &[201, 200];

/// The `Idempotency-Key` of a trial's `n`th `POST` in `step`, in run `run` of an engine started
/// at `started`.
fn idempotency_key(id: &TrialId, started: DateTime<Utc>, step: Step, run: u32, n: u32) -> String {
    format!(
        "{id}-{}-{}-r{run}-{n}",
        started.timestamp_millis(),
        step.name()
    )
}

/// The `Idempotency-Key` of `step`'s first `POST` (a slice deployment's or a measurement
/// job's creation) in run `run` of an engine started at `started`.
pub fn first_post_key(id: &TrialId, started: DateTime<Utc>, step: Step, run: u32) -> String {
    idempotency_key(id, started, step, run, 1)
}

async fn create_measurement_job(cx: &mut StepCx<'_>) -> Result<(), StepError> {
    cx.fetch_trial().await?;
    let request = measurement_job_request(cx)?;
    let requested = JobState::Requested(request.idempotency_key.clone().unwrap_or_default());
    let reply = call_creating(cx, request, |l| &mut l.measurement_job, requested).await?;
    keep_measurement_job(cx, &reply).map(drop)
}

/// Sends a creation whose result the clean-up undoes (the slice, the measurement job). Once
/// it has left, what it asks for may exist, whatever the answer (or its absence) says: its
/// place in the ledger is `requested` until the step keeps what the answer names, unless no
/// attempt could have reached the service or it refused the request (a 4xx). The place is
/// marked when the call returns (an abort or a stop lets it return, and a step cut short
/// before it left has asked for nothing). It may be answered as a replay (see
/// [`CREATION_ANSWERS`]).
async fn call_creating<S>(
    cx: &mut StepCx<'_>,
    request: Outbound,
    place: fn(&mut Ledger) -> &mut S,
    requested: S,
) -> Result<Value, StepError> {
    let answer = cx
        .call_uncut(request, CREATION_ANSWERS)
        .await
        .map(|(_, reply)| reply);
    if answer.is_ok() || cx.may_have_made {
        *place(&mut cx.data.ledger) = requested;
    }
    answer
}

/// Keeps the job trial enforcement's answer names: in the trial info and the ledger.
fn keep_measurement_job(cx: &mut StepCx<'_>, reply: &Value) -> Result<String, StepError> {
    let Some(measurement_id) = measurement_id(reply) else {
        return fail(
            "trial enforcement's measurement job answer has no 'MeasurementID' (a string that is not blank, or a number)",
        );
    };
    cx.info_mut()?.measurement_job = json!({"MeasurementID": measurement_id});
    cx.data.ledger.measurement_job = JobState::Created(measurement_id.clone());
    Ok(measurement_id)
}

/// `POST /measurementjobs` for the trial. A creation sent before and never answered goes
/// again as itself, with its key: a component that honours it answers with the job it made
/// then instead of making a second (also after a restore, which is otherwise a new run).
fn measurement_job_request(cx: &mut StepCx<'_>) -> Result<Outbound, StepError> {
    let layer = &cx.deps.settings.services.abstraction_layer;
    let info = cx.info()?;
    let body = json!({
        "trialID": info.trial_id,
        "facility": info.facility,
        "measurement_job": {
            "auth": {
                "host": layer.url,
                "password": layer.password.expose(),
                "port": layer.port,
                "username": layer.username,
            },
            "interval": layer.interval,
            "kpis": info.kpis,
            "ns": cx.slice_id()?,
        },
    });
    let mut request = cx
        .post(Service::TrialEnforcement, "measurementjobs")
        .creating()
        .json(body);
    if let JobState::Requested(key) = &cx.data.ledger.measurement_job {
        request = request.idempotency_key(key.clone());
    }
    Ok(request)
}

fn measurement_id(job: &Value) -> Option<String> {
    match job.get("MeasurementID") {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// The id of a measurement job whose creation was sent but never answered, learnt by sending
/// the creation again with its key: a component that honours it answers with that job (201,
/// or 200 for a replay; one that does not makes another, which the clean-up then deletes in
/// its place). Any other answer, once the retry policy is spent, proves nothing about the first
/// creation (a 409 may say it is still being processed): the step fails and the job stays a
/// leftover, for a later abort.
async fn recover_measurement_job(cx: &mut StepCx<'_>) -> Result<String, StepError> {
    let mut request = measurement_job_request(cx)?;
    // Sent again under the first creation's key, which a component that honours it makes no
    // second job of however often it comes: retried like a request safe to repeat (408, 429,
    // 5xx, no answer), so a component's bad minute does not fail the clean-up.
    request.creates = false;
    // A creation sent again: like the first, it has its answer before a stop (or an abort).
    let (_, reply) = cx
        .call_uncut(request, &[201, 200])
        .await
        .map_err(|StepError(why)| {
            StepError(format!(
                "the job's creation was never answered, so it was sent again (same Idempotency-Key) to learn the job's id: {why}"
            ))
        })?;
    keep_measurement_job(cx, &reply)
}

async fn delete_measurement_job(cx: &mut StepCx<'_>) -> Result<(), StepError> {
    let info = cx.info()?;
    let measurement_id = match &cx.data.ledger.measurement_job {
        JobState::Created(id) => id.clone(),
        JobState::Deleted => return Ok(()),
        JobState::Requested(_) => recover_measurement_job(cx).await?,
        JobState::None => match measurement_id(&info.measurement_job) {
            Some(id) => id,
            None => return fail("no MeasurementID was kept from CreateMeasurementJob"),
        },
    };
    let body = json!({"trialID": info.trial_id, "facility": info.facility});
    let path = format!("measurementjobs/{}", urlencode_segment(&measurement_id));
    // A job that is not there is deleted: 404 means done. It is what a retry finds once the
    // first attempt deleted the job and its answer was lost, and what a step run again or a
    // clean-up finds after an earlier delete.
    cx.call_expecting(
        Outbound::new(Service::TrialEnforcement, Method::DELETE, path).json(body),
        &[204, 404],
    )
    .await?;
    cx.data.ledger.measurement_job = JobState::Deleted;
    Ok(())
}

/// `CloseService`'s request: `DELETE trial_enforcement /sliceDeployment/{id}`, carrying the
/// trial's `token` and the slice callback's URL.
pub fn close_request(settings: &Settings, id: &TrialId, token: &str) -> Outbound {
    Outbound::new(
        Service::TrialEnforcement,
        Method::DELETE,
        format!("sliceDeployment/{id}"),
    )
    .query("callback_url", callback_url(settings, id, "slice"))
    .json(json!({"Authorization": token}))
}

/// Where a component calls back trial `id` with a callback of `kind`.
fn callback_url(settings: &Settings, id: &TrialId, kind: &str) -> String {
    let base = settings.server.public_url.trim_end_matches('/');
    format!("{base}/trial/{id}/callback/{kind}")
}

async fn close_service(cx: &mut StepCx<'_>) -> Result<(), StepError> {
    let request = close_request(&cx.deps.settings, cx.id, &cx.token()?);
    // A slice that is not there is closed: 404 means done. It is what a retry finds once the
    // first attempt closed the slice and its answer was lost, and what a step run again or a
    // clean-up finds (or one whose slice was never made). On the trial's own path the closing's
    // callback may still come, or the wait times out and the trial is restorable.
    let answer = cx.call_expecting(request, &[200, 404]).await;
    let slice = &mut cx.data.ledger.slice;
    let (status, _) = match answer {
        // A slice announced but not listed yet that a close may have closed after all (no
        // answer, or a 5xx): its slice-closed callback may come, and a close run again that
        // finds nothing to close knows it is done.
        Err(e) if cx.may_have_made && *slice == SliceState::Announced => {
            *slice = SliceState::Closing;
            return Err(e);
        }
        answer => answer?,
    };
    cx.data.ledger.slice = match (status, &cx.data.ledger.slice) {
        // This close's own earlier attempt may have closed it (its answer was lost): its
        // slice-closed callback is due, as after a 200.
        (404, SliceState::Announced) if cx.done_before_last => SliceState::Closing,
        // Not listed yet, or closed by an earlier close whose answer was lost (a run of this
        // step before the slice was announced): the clean-up's next try closes it again, and
        // a 404 then counts it closed.
        (404, SliceState::Announced) => {
            cx.data.ledger.slice = SliceState::Closing;
            return fail(format!(
                "trial enforcement has no slice of trial {} although its slice-created callback came (no answer to its deployment said what it made): it may still be making it, or an earlier close whose answer was lost closed it; the clean-up's next try (or an abort) closes it again, and counts it closed if trial enforcement has none then",
                cx.id
            ));
        }
        // A deployment never answered may still make its slice after this 404: it stays in
        // doubt, and the clean-up waits for its slice-created callback (then closes it) or
        // for that callback's deadline (then nothing was made).
        (404, SliceState::Requested(_)) if cx.cleanup => cx.data.ledger.slice.clone(),
        // Cleaning up, or run again, a 404 finds the slice closed by an earlier close: no
        // callback is due. The first close's 404 (its own retry) leaves its callback to come.
        (404, _) if cx.cleanup || cx.rerun => SliceState::Closed,
        _ => SliceState::Closing,
    };
    Ok(())
}

async fn remove_callback_token(cx: &mut StepCx<'_>) -> Result<(), StepError> {
    // An abort before the first step has no token to revoke.
    if cx.cleanup && cx.data.token.is_none() {
        return Ok(());
    }
    let token = cx.token()?;
    cx.deps
        .tokens
        .revoke(&token)
        .await
        .map_err(|e| StepError(format!("the revocation was not saved: {e}")))
}

/// The largest answer body kept with the trial (1 MiB).
const MAX_RECORDED_BYTES: usize = 1024 * 1024;

/// The record of one attempt's answer (or of its absence), with every secret redacted.
pub fn record(
    label: &str,
    request: &Outbound,
    attempt: &Attempt<'_>,
    redactor: &Redactor,
) -> ResponseRecord {
    let reply = attempt.outcome;
    let mut record = ResponseRecord {
        step: label.to_owned(),
        service: request.service.name().to_owned(),
        method: request.method.to_string(),
        path: request.path.clone(),
        status: None,
        body: None,
        error: None,
        // Answered or not (a timeout took its whole time).
        duration_ms: u64::try_from(attempt.took.as_millis()).unwrap_or(u64::MAX),
        attempt: attempt.number,
        at: state::now(),
    };
    match reply {
        // Every answer is kept with the trial: a large one only as a note of its size.
        Ok(reply) if reply.unread.is_none() && reply.bytes > MAX_RECORDED_BYTES => {
            record.status = Some(reply.status);
            record.error = Some(format!(
                "{} body of {} bytes: larger than {MAX_RECORDED_BYTES} bytes, not kept",
                request.service.name(),
                reply.bytes
            ));
        }
        Ok(reply) => {
            record.status = Some(reply.status);
            record.body = reply.json.clone();
            record.error = reply
                .unread
                .clone()
                .or_else(|| reply.text.as_deref().map(|text| redactor.excerpt(text)));
        }
        Err(e) => record.error = Some(e.to_string()),
    }
    if let Some(body) = &mut record.body {
        redactor.value(body);
    }
    record.error = record.error.map(|e| redactor.text(&e));
    record
}

/// Percent-encodes a value for use as one path segment.
fn urlencode_segment(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// Records every attempt of a request for the trial: its answer under the step, and a
/// `step_retry` event when it is tried again.
pub fn recorder<'a>(
    journal: &'a Journal,
    label: &'a str,
    step: Option<Step>,
    request: &'a Outbound,
    redactor: &'a Redactor,
) -> impl FnMut(Attempt<'_>) + 'a {
    move |attempt: Attempt<'_>| {
        journal.response(record(label, request, &attempt, redactor));
        if let Some((wait, reason)) = attempt.retry {
            // No access token: why not, from the token endpoint's side.
            let cause = match attempt.outcome {
                Err(SendError::Auth { reason, .. }) => format!(" ({})", redactor.text(reason)),
                _ => String::new(),
            };
            let detail = format!(
                "attempt {} of {}: {} {} {reason}{cause}; trying again in {:.1} s",
                attempt.number,
                attempt.max_attempts,
                request.method,
                request.path,
                wait.as_secs_f64()
            );
            tracing::info!(step = label, "{detail}");
            journal.event(
                EventKind::StepRetry,
                step,
                Some(detail),
                Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)),
            );
        }
    }
}

/// The mark of a request an abort or a stop lets have its answer ([`StepCx::uncut`]), for as
/// long as the call lasts: taken away when it returns, and when its step is dropped (the
/// executor aborted, or panicking).
struct Uncut<'a>(&'a AtomicBool);

impl<'a> Uncut<'a> {
    fn set(flag: &'a AtomicBool) -> Self {
        flag.store(true, Ordering::SeqCst);
        Self(flag)
    }
}

impl Drop for Uncut<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// The statuses a step expects, as a failure's reason says them: `201 or 200`.
fn statuses_said(expected: &[u16]) -> String {
    let said: Vec<String> = expected.iter().map(u16::to_string).collect();
    said.join(" or ")
}

impl StepCx<'_> {
    /// A `POST` to a service, carrying an `Idempotency-Key` stable for this trial's engine
    /// (the instant it started, so a trial deleted and scheduled again is a new one), step,
    /// run and request: the same after a crash re-runs the step, new after a restore (but for
    /// a creation that may have made what it asked for, which goes again with its own key).
    fn post(&mut self, service: Service, path: &str) -> Outbound {
        self.posts += 1;
        let key = idempotency_key(self.id, self.started_at, self.step, self.run, self.posts);
        Outbound::new(service, Method::POST, path).idempotency_key(key)
    }

    /// Like [`Self::call_expecting`] for a request an abort meanwhile lets have its answer: a
    /// `POST` that makes what the clean-up undoes, so what it made is known and undone; a
    /// status written to the repository, so that the status the clean-up writes after it is
    /// the last the repository takes. A stop lets it have its answer too. Its access token is
    /// fetched first (`ServiceClient::authorize`): until then nothing has left, and an abort
    /// cuts the step short.
    async fn call_uncut(
        &mut self,
        request: Outbound,
        expected: &[u16],
    ) -> Result<(u16, Value), StepError> {
        let said = || statuses_said(expected);
        self.call_uncut_accepting(request, &|status| expected.contains(&status), &said)
            .await
    }

    /// [`Self::call_uncut`] for a request that takes the answers `accepts` takes.
    async fn call_uncut_accepting(
        &mut self,
        request: Outbound,
        accepts: &(dyn Fn(u16) -> bool + Sync),
        expected: &(dyn Fn() -> String + Sync),
    ) -> Result<(u16, Value), StepError> {
        // Held before it is in flight: an abort meanwhile cuts the step, as it would before.
        self.while_paused().await;
        self.deps.services.authorize(request.service).await;
        let _in_flight = Uncut::set(&self.shared.uncut);
        self.send_recorded(request, accepts, expected).await
    }

    /// Returns once the operator's pause lets a new request start: at once unless the trial
    /// is paused, or when it was stepped here or is being cleaned up.
    async fn while_paused(&self) {
        if self.stepping || self.cleanup || !self.shared.state.borrow().paused {
            return;
        }
        // Paused since, resumed before this: `wait_for` sees either at once.
        let mut shown = self.shared.state.subscribe();
        // Shown waiting meanwhile, for what.
        self.shared.show_held(true);
        // The engine gone, nothing waits.
        let _ = shown.wait_for(|s| !s.paused).await;
        self.shared.show_held(false);
    }

    /// Waits out a retry's backoff, then [`Self::while_paused`]: a pause that comes during
    /// the backoff is shown at once, as holding the next attempt, and a resume as not.
    async fn retry_wait(&self, backoff: Duration) {
        let mut backoff = std::pin::pin!(tokio::time::sleep(backoff));
        if self.stepping || self.cleanup {
            backoff.await;
            return;
        }
        let mut shown = self.shared.state.subscribe();
        loop {
            let paused = shown.borrow_and_update().paused;
            self.shared.show_held(paused);
            tokio::select! {
                () = &mut backoff => break,
                // The engine gone, the backoff alone is left.
                Ok(()) = shown.changed() => {}
            }
        }
        self.while_paused().await;
    }

    /// Sends a request, records the answer under the step, and requires `expected`. Returns
    /// the JSON body (`null` when there was none).
    async fn call(&mut self, request: Outbound, expected: u16) -> Result<Value, StepError> {
        Ok(self.call_expecting(request, &[expected]).await?.1)
    }

    /// Like [`Self::call`], for a request whose success may be one of several statuses;
    /// returns the status too.
    async fn call_expecting(
        &mut self,
        request: Outbound,
        expected: &[u16],
    ) -> Result<(u16, Value), StepError> {
        let said = || statuses_said(expected);
        self.call_accepting(request, &|status| expected.contains(&status), &said)
            .await
    }

    /// Like [`Self::call_expecting`], for a step that takes the answers `accepts` takes
    /// (`expected` says which, in the reason of a failure: only then is it written).
    async fn call_accepting(
        &mut self,
        request: Outbound,
        accepts: &(dyn Fn(u16) -> bool + Sync),
        expected: &(dyn Fn() -> String + Sync),
    ) -> Result<(u16, Value), StepError> {
        self.while_paused().await;
        self.send_recorded(request, accepts, expected).await
    }

    /// Sends a request (each attempt after the first held while the trial is paused), records
    /// its answers under the step, and requires an answer `accepts` takes.
    async fn send_recorded(
        &mut self,
        request: Outbound,
        accepts: &(dyn Fn(u16) -> bool + Sync),
        expected: &(dyn Fn() -> String + Sync),
    ) -> Result<(u16, Value), StepError> {
        let redactor = self.deps.secrets.with(self.data.token.as_deref());
        let mut attempts = 0;
        let mut reached = false;
        let (mut done, mut done_before_last) = (false, false);
        let reply = {
            let mut record = recorder(
                &self.shared.journal,
                self.step.name(),
                Some(self.step),
                &request,
                &redactor,
            );
            let last_attempt = self.last_attempt;
            self.deps
                .services
                .send_until(
                    &request,
                    |attempt| {
                        attempts = attempt.number;
                        let may_have_reached = attempt
                            .outcome
                            .as_ref()
                            .err()
                            .is_none_or(SendError::may_have_reached);
                        let refused = attempt
                            .outcome
                            .as_ref()
                            .is_ok_and(|reply| (400..500).contains(&reply.status));
                        reached |= may_have_reached;
                        done_before_last = done;
                        done |= may_have_reached && !refused;
                        record(attempt);
                    },
                    last_attempt.cancelled(),
                    |backoff| self.retry_wait(backoff),
                )
                .await
        };
        self.done_before_last = done_before_last;
        self.may_have_made = reached
            && !reply
                .as_ref()
                .is_ok_and(|reply| (400..500).contains(&reply.status));
        let after = if attempts > 1 {
            format!(" after {attempts} attempts")
        } else {
            String::new()
        };
        // Said as it is: the executor redacts a step's reason where it is shown.
        let what = format!(
            "{} {} {}",
            request.service.name(),
            request.method,
            request.path
        );
        let reply = reply.map_err(|e| StepError(format!("{what}: {e}{after}")))?;
        if !accepts(reply.status) {
            let detail = match (&reply.unread, &reply.text) {
                (Some(why), _) => format!(": {why}"),
                (None, Some(text)) => format!(": {}", redactor.excerpt(text)),
                (None, None) => String::new(),
            };
            return Err(StepError(format!(
                "{what} answered {} (expected {}){after}{detail}",
                reply.status,
                expected(),
            )));
        }
        if let Some(why) = reply.unread {
            return Err(StepError(format!(
                "{what} answered {}, but {why}{after}",
                reply.status
            )));
        }
        // The step uses the answer as it came: what it passes on (the trial's flights, its
        // KPIs) must reach the components unchanged, even where a text holds a configured
        // secret. Only what is shown (the recorded answers, the failure file) is redacted.
        Ok((reply.status, reply.json.unwrap_or(Value::Null)))
    }

    /// `GET trial_repository /trial/{id}/`, which must answer a JSON object.
    /// The start of a value a component gave, as a reason quotes it, its secrets hidden: a
    /// value as large as the component likes makes no reason, row or log line as large.
    fn quote(&self, raw: &str) -> String {
        self.deps
            .secrets
            .with(self.data.token.as_deref())
            .excerpt(raw)
    }

    async fn fetch_trial(&mut self) -> Result<Value, StepError> {
        let path = format!("trial/{}/", self.id);
        let trial = self
            .call(
                Outbound::new(Service::TrialRepository, Method::GET, path),
                200,
            )
            .await?;
        if !trial.is_object() {
            return fail("trial repository answered something that is not a trial object");
        }
        match registry::other_trial(self.id, &trial) {
            Some(other) => fail(other.to_string()),
            None => Ok(trial),
        }
    }

    /// `PUT trial_repository /trial/{id}/ {"status": status}`, answered 204.
    async fn update_status(&mut self, status: &str) -> Result<(), StepError> {
        let path = format!("trial/{}/", self.id);
        self.call_uncut(
            Outbound::new(Service::TrialRepository, Method::PUT, path)
                .json(json!({"status": status})),
            &[204],
        )
        .await?;
        self.data.repository_status = Some(status.to_owned());
        Ok(())
    }

    /// `markKPIData` for the trial id, then for the slice id.
    async fn mark_kpis(&mut self, marking: KpiStatus) -> Result<(), StepError> {
        let slice_id = self.slice_id()?;
        let before = self.data.kpi_status;
        // The clean-up's marking only tells KPI monitoring: refused for good, it does not hold
        // the abort.
        let cleanup = self.cleanup && marking == KpiStatus::Finished;
        let takes = |answer: u16| answer == 200 || (cleanup && refused_for_good(answer));
        let expected = || match cleanup {
            true => or_refused_for_good(200),
            false => statuses_said(&[200]),
        };
        for (i, marked) in [self.id.to_string(), slice_id].into_iter().enumerate() {
            let body = json!({
                "TrialID": marked,
                "MarkingID": marked,
                "Timestamp": Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string(),
                "Marking": marking.marking(),
            });
            let request = self.post(Service::KpiMonitoring, "markKPIData").json(body);
            // A marking that opens (Idle, Active) counts from the moment its first request
            // leaves, so that an abort's clean-up closes it: an abort that cancels the
            // request, or an answer that never comes, cannot tell whether KPI monitoring took
            // it. Only a first request refused (a 4xx) opened nothing.
            if marking != KpiStatus::Finished {
                self.data.kpi_status = Some(marking);
            }
            match self.call_accepting(request, &takes, &expected).await {
                Ok((200, _)) => {}
                Ok((refused, _)) => warn!(
                    status = refused,
                    marking = marking.marking(),
                    "KPI monitoring refused the marking for good: the trial is aborted all the same, with nothing left to undo"
                ),
                Err(e) => {
                    if i == 0 && !self.may_have_made {
                        self.data.kpi_status = before;
                    }
                    return Err(e);
                }
            }
            // Shown as a restart would read it while the step's next request waits (for
            // resume, or its answer): a marking that opens counts once sent.
            self.shared.show_kpi_status(self.data.kpi_status);
        }
        self.data.kpi_status = Some(marking);
        Ok(())
    }

    /// A VNF request of §4.2: `POST <path>?trialID=..&callback_url=..` with the token, 201.
    async fn vnf_request(&mut self, path: &str, callback: &str) -> Result<(), StepError> {
        let request = self
            .post(Service::TrialEnforcement, path)
            .creating()
            .query("trialID", self.id.to_string())
            .query("callback_url", self.callback_url(callback))
            .json(json!({"Authorization": self.token()?}));
        self.call_expecting(request, CREATION_ANSWERS).await?;
        Ok(())
    }

    fn callback_url(&self, kind: &str) -> String {
        callback_url(&self.deps.settings, self.id, kind)
    }

    fn token(&self) -> Result<String, StepError> {
        self.data
            .token
            .clone()
            .ok_or_else(|| StepError("no callback token (GetCallbackToken did not run)".into()))
    }

    fn info(&self) -> Result<Arc<TrialInfo>, StepError> {
        self.data
            .info
            .clone()
            .ok_or_else(|| StepError("no trial info (GetTrialInfo did not run)".into()))
    }

    fn info_mut(&mut self) -> Result<&mut TrialInfo, StepError> {
        self.data
            .info
            .as_mut()
            .map(Arc::make_mut)
            .ok_or_else(|| StepError("no trial info (GetTrialInfo did not run)".into()))
    }

    fn slice_id(&self) -> Result<String, StepError> {
        slice_id(&self.info()?.deployed_slice)
            .ok_or_else(|| StepError("no Slice.id was kept from SliceDeployment".into()))
    }
}
