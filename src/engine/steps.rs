//! What each step of [`super::sequence`] sends and what it needs back (SPEC §4, §4.1, §4.2).

use chrono::Utc;
use reqwest::Method;
use serde_json::{Value, json};

use super::EngineDeps;
use super::nst;
use super::redact::Redactor;
use super::sequence::Step;
use super::state::{KpiStatus, ResponseRecord, TrialData, TrialInfo};
use crate::domain::TrialId;
use crate::services::{Outbound, Reply, SendError, Service};

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
}

/// Runs one step.
pub async fn run(cx: &mut StepCx<'_>) -> Result<(), StepError> {
    match cx.step {
        Step::GetCallbackToken => get_callback_token(cx),
        Step::GetTrialInfo => get_trial_info(cx).await,
        Step::SliceDeployment => slice_deployment(cx).await,
        Step::UpdateDeploymentSlice => cx.update_status("ACTIVATING_1").await,
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
        Step::UpdateUavPlanStatus => cx.update_status("ACTIVATING_2").await,
        Step::CreateMeasurementJob => create_measurement_job(cx).await,
        Step::SendKpiIdle => cx.mark_kpis(KpiStatus::Idle).await,
        Step::UpdateStatusIdle => cx.update_status("IDLE").await,
        Step::SendKpiActive => cx.mark_kpis(KpiStatus::Active).await,
        Step::UpdateStatusActive => cx.update_status("ACTIVE").await,
        Step::UpdateStatusStopping => cx.update_status("STOPPING").await,
        Step::SendKpiFinish => cx.mark_kpis(KpiStatus::Finished).await,
        Step::DeleteMeasurementJob => delete_measurement_job(cx).await,
        Step::CloseService => close_service(cx).await,
        Step::UpdateStatusFinish => cx.update_status("FINISHED").await,
        Step::RemoveCallbackToken => remove_callback_token(cx).await,
        Step::Finish => Ok(()),
    }
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
            "unknown facility '{facility_key}' (known: {})",
            known.join(", ")
        ));
    };
    field("id")?;
    cx.data.info = Some(TrialInfo {
        trial_id: cx.id.to_string(),
        facility: facility.clone(),
        kpis: field("kpis")?,
        name: field("name")?,
        target: "dummy".to_owned(),
        deployed_slice: json!({}),
        measurement_job: json!({}),
    });
    Ok(())
}

async fn slice_deployment(cx: &mut StepCx<'_>) -> Result<(), StepError> {
    let trial = cx.fetch_trial().await?;
    match trial.get("status").and_then(Value::as_str) {
        Some("APPROVED") => {}
        // A restored trial finds the status this LCM wrote when it failed: nobody else has
        // changed the trial since, so it is still ours to run.
        Some(ours) if cx.data.repository_status.as_deref() == Some(ours) => {}
        Some(other) => return fail(format!("trial status is '{other}', not APPROVED")),
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
    let request = Outbound::new(Service::TrialEnforcement, Method::POST, "sliceDeployment")
        .query("callback_url", cx.callback_url("slice"))
        .json(body);
    let reply = cx.call(request, 201).await?;
    if reply.pointer("/Slice/id").is_none_or(Value::is_null) {
        return fail("trial enforcement's slice deployment answer has no 'Slice.id'");
    }
    cx.info_mut()?.deployed_slice = reply;
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
    cx.call(
        Outbound::new(Service::TrialEnforcement, Method::POST, "tap").json(body),
        200,
    )
    .await?;
    Ok(())
}

async fn enforce_uav_plan(cx: &mut StepCx<'_>) -> Result<(), StepError> {
    let trial = cx.fetch_trial().await?;
    let Some(flights) = trial.get("flights").cloned() else {
        return fail("trial object has no 'flights'");
    };
    let body = json!({"trialID": cx.id.as_str(), "flight_plan": {"flights": flights}});
    cx.call(
        Outbound::new(Service::TrialEnforcement, Method::POST, "flightplan").json(body),
        201,
    )
    .await?;
    Ok(())
}

async fn create_measurement_job(cx: &mut StepCx<'_>) -> Result<(), StepError> {
    cx.fetch_trial().await?;
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
    let request =
        Outbound::new(Service::TrialEnforcement, Method::POST, "measurementjobs").json(body);
    let reply = cx.call(request, 201).await?;
    if reply.get("MeasurementID").is_none_or(Value::is_null) {
        return fail("trial enforcement's measurement job answer has no 'MeasurementID'");
    }
    cx.info_mut()?.measurement_job = reply;
    Ok(())
}

async fn delete_measurement_job(cx: &mut StepCx<'_>) -> Result<(), StepError> {
    let info = cx.info()?;
    let measurement_id = match info.measurement_job.get("MeasurementID") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return fail("no MeasurementID was kept from CreateMeasurementJob"),
    };
    let body = json!({"trialID": info.trial_id, "facility": info.facility});
    let path = format!("measurementjobs/{}", urlencode_segment(&measurement_id));
    // Run again, the job may be gone already: 404 then means done.
    let ok: &[u16] = if cx.rerun { &[204, 404] } else { &[204] };
    cx.call_expecting(
        Outbound::new(Service::TrialEnforcement, Method::DELETE, path).json(body),
        ok,
    )
    .await?;
    Ok(())
}

async fn close_service(cx: &mut StepCx<'_>) -> Result<(), StepError> {
    let body = json!({"Authorization": cx.token()?});
    let request = Outbound::new(
        Service::TrialEnforcement,
        Method::DELETE,
        format!("sliceDeployment/{}", cx.id),
    )
    .query("callback_url", cx.callback_url("slice"))
    .json(body);
    // Run again, the slice may be closed already: 404 then means done (its callback may
    // still come, or the wait times out and the trial is restorable).
    let ok: &[u16] = if cx.rerun { &[200, 404] } else { &[200] };
    cx.call_expecting(request, ok).await?;
    Ok(())
}

async fn remove_callback_token(cx: &mut StepCx<'_>) -> Result<(), StepError> {
    let token = cx.token()?;
    cx.deps
        .tokens
        .revoke(&token)
        .await
        .map_err(|e| StepError(format!("the revocation was not saved: {e}")))
}

/// The record of one answer (or of its absence), with every secret redacted.
pub fn record(
    label: &str,
    request: &Outbound,
    reply: &Result<Reply, SendError>,
    redactor: &Redactor,
) -> ResponseRecord {
    let mut record = ResponseRecord {
        step: label.to_owned(),
        service: request.service.name().to_owned(),
        method: request.method.to_string(),
        path: request.path.clone(),
        status: None,
        body: None,
        error: None,
        duration_ms: 0,
        at: Utc::now(),
    };
    match reply {
        Ok(reply) => {
            record.status = Some(reply.status);
            record.body = reply.json.clone();
            record.error = reply.text.clone();
            record.duration_ms = u64::try_from(reply.duration.as_millis()).unwrap_or(u64::MAX);
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

impl StepCx<'_> {
    /// Sends a request, records the answer under the step, and requires `expected`. Returns
    /// the JSON body (`null` when there was none).
    pub async fn call(&mut self, request: Outbound, expected: u16) -> Result<Value, StepError> {
        self.call_expecting(request, &[expected]).await
    }

    /// Like [`Self::call`], for a request whose success may be one of several statuses.
    pub async fn call_expecting(
        &mut self,
        request: Outbound,
        expected: &[u16],
    ) -> Result<Value, StepError> {
        let reply = self.deps.services.send(&request).await;
        let redactor = self.deps.redactor.with(self.data.token.as_deref());
        let entry = record(self.step.name(), &request, &reply, &redactor);
        self.data.record(entry);
        let reply = reply.map_err(|e| {
            StepError(redactor.text(&format!(
                "{} {} {}: {e}",
                request.service.name(),
                request.method,
                request.path
            )))
        })?;
        if !expected.contains(&reply.status) {
            let detail = reply
                .text
                .as_deref()
                .map(|t| format!(": {t}"))
                .unwrap_or_default();
            return Err(StepError(redactor.text(&format!(
                    "{} {} {} answered {} (expected {}){detail}",
                    request.service.name(),
                    request.method,
                    request.path,
                    reply.status,
                    expected
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(" or "),
                ))));
        }
        // What a step keeps of an answer (the deployed slice, the measurement job) is kept
        // without secrets too.
        let mut json = reply.json.unwrap_or(Value::Null);
        redactor.value(&mut json);
        Ok(json)
    }

    /// `GET trial_repository /trial/{id}/`, which must answer a JSON object.
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
        Ok(trial)
    }

    /// `PUT trial_repository /trial/{id}/ {"status": status}`, answered 204.
    async fn update_status(&mut self, status: &str) -> Result<(), StepError> {
        let path = format!("trial/{}/", self.id);
        self.call(
            Outbound::new(Service::TrialRepository, Method::PUT, path)
                .json(json!({"status": status})),
            204,
        )
        .await?;
        self.data.repository_status = Some(status.to_owned());
        Ok(())
    }

    /// `markKPIData` for the trial id, then for the slice id.
    async fn mark_kpis(&mut self, marking: KpiStatus) -> Result<(), StepError> {
        let slice_id = self.slice_id()?;
        for marked in [self.id.to_string(), slice_id] {
            let body = json!({
                "TrialID": marked,
                "MarkingID": marked,
                "Timestamp": Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string(),
                "Marking": marking.marking(),
            });
            self.call(
                Outbound::new(Service::KpiMonitoring, Method::POST, "markKPIData").json(body),
                200,
            )
            .await?;
        }
        self.data.kpi_status = Some(marking);
        Ok(())
    }

    /// A VNF request of §4.2: `POST <path>?trialID=..&callback_url=..` with the token, 201.
    async fn vnf_request(&mut self, path: &str, callback: &str) -> Result<(), StepError> {
        let request = Outbound::new(Service::TrialEnforcement, Method::POST, path)
            .query("trialID", self.id.to_string())
            .query("callback_url", self.callback_url(callback))
            .json(json!({"Authorization": self.token()?}));
        self.call(request, 201).await?;
        Ok(())
    }

    fn callback_url(&self, kind: &str) -> String {
        let base = self.deps.settings.server.public_url.trim_end_matches('/');
        format!("{base}/trial/{}/callback/{kind}", self.id)
    }

    fn token(&self) -> Result<String, StepError> {
        self.data
            .token
            .clone()
            .ok_or_else(|| StepError("no callback token (GetCallbackToken did not run)".into()))
    }

    fn info(&self) -> Result<TrialInfo, StepError> {
        self.data
            .info
            .clone()
            .ok_or_else(|| StepError("no trial info (GetTrialInfo did not run)".into()))
    }

    fn info_mut(&mut self) -> Result<&mut TrialInfo, StepError> {
        self.data
            .info
            .as_mut()
            .ok_or_else(|| StepError("no trial info (GetTrialInfo did not run)".into()))
    }

    fn slice_id(&self) -> Result<String, StepError> {
        let info = self.info()?;
        match info.deployed_slice.pointer("/Slice/id") {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            _ => fail("no Slice.id was kept from SliceDeployment"),
        }
    }
}
