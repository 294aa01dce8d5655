//! The API's own description: `GET /openapi.json` lists exactly the routes the service serves,
//! each with the right credential, and Swagger UI at `/` loads from the binary, no CDN.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode, header};
use serde_json::Value;

use lcm::domain::{StartTime, TrialId};
use lcm::engine::state::Lifecycle;
use lcm::sim::{FaultAction, Platform};
use lcm::store::Op;

use crate::helpers::{
    API_KEY, AppOptions, eventually, prepared_store, record, single_attempt,
    slice_deployment_fault, spawn_app, spawn_app_with, spawn_app_with_settings,
};
use crate::routes::{ROUTES, operations};

/// The document, fetched without credentials.
async fn document(app: &crate::helpers::TestApp) -> Value {
    let answer = app.call_as(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    answer.body
}

#[tokio::test]
async fn the_document_lists_exactly_the_served_routes_with_their_credentials() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "not an OpenAPI 3 document: {}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "Lifecycle Manager");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));

    let documented: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(method, path, _)| (method, path))
        .collect();
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(method, path, _)| (method.to_string(), path.to_string()))
        .collect();
    assert_eq!(
        documented.difference(&expected).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "documented but not in ROUTES"
    );
    assert_eq!(
        expected.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "in ROUTES but not documented"
    );

    for (method, path, needs) in ROUTES {
        let operation = &doc["paths"][*path][method.to_lowercase()];
        let security: Vec<String> = operation["security"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(Value::as_object)
                    .flat_map(|requirement| requirement.keys().cloned())
                    .collect()
            })
            .unwrap_or_default();
        let expected: Vec<String> = needs.scheme().iter().map(|s| s.to_string()).collect();
        assert_eq!(security, expected, "security of {method} {path}");
    }
}

#[tokio::test]
async fn the_document_describes_parameters_bodies_errors_and_credentials() {
    let app = spawn_app().await;
    let doc = document(&app).await;

    for name in ["api_key", "callback_token"] {
        let scheme = &doc["components"]["securitySchemes"][name];
        assert_eq!(scheme["type"], "apiKey", "{name}: {scheme}");
        assert_eq!(scheme["in"], "header", "{name}: {scheme}");
        assert_eq!(scheme["name"], "Authorization", "{name}: {scheme}");
    }
    let error = &doc["components"]["schemas"]["ErrorBody"];
    assert_eq!(error["properties"]["detail"]["type"], "string", "{error}");
    assert_eq!(error["required"], serde_json::json!(["detail"]), "{error}");

    for (method, path, operation) in operations(&doc) {
        let what = format!("{method} {path}");
        assert!(
            operation["summary"].as_str().is_some_and(|s| !s.is_empty()),
            "{what} has no summary"
        );
        // Every `{name}` of the path is a documented, required path parameter.
        let parameters = operation["parameters"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for segment in path.split('/') {
            if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                assert!(
                    parameters
                        .iter()
                        .any(|p| p["name"] == name && p["in"] == "path" && p["required"] == true),
                    "{what}: no path parameter {name}"
                );
            }
        }
        let responses = operation["responses"].as_object().expect("responses");
        assert!(responses.contains_key("200"), "{what}: no 200");
        for (status, response) in responses {
            assert!(
                response["description"]
                    .as_str()
                    .is_some_and(|d| !d.is_empty()),
                "{what} {status}: no description"
            );
            if status.starts_with('4') || status.starts_with('5') {
                assert_eq!(
                    response["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{what} {status}: not the {{\"detail\"}} schema"
                );
            }
        }
        if operation["security"].is_array() {
            assert!(responses.contains_key("401"), "{what}: no 401");
        }
    }

    let add_heartbeat = &doc["paths"]["/debug/add-heartbeat"]["post"]["parameters"];
    assert!(
        add_heartbeat.as_array().is_some_and(|p| p
            .iter()
            .any(|p| p["name"] == "trial_id" && p["in"] == "query" && p["required"] == true)),
        "{add_heartbeat}"
    );

    let body = &doc["paths"]["/debug/trial/schedule"]["post"]["requestBody"];
    assert_eq!(body["required"], true, "{body}");
    let reference = body["content"]["application/json"]["schema"]["$ref"]
        .as_str()
        .expect("the body is a named schema");
    let name = reference.rsplit('/').next().unwrap_or_default();
    let schema = &doc["components"]["schemas"][name];
    for field in ["trial_id", "start_time"] {
        assert_eq!(schema["properties"][field]["type"], "string", "{schema}");
    }
    let mut required: Vec<&str> = schema["required"]
        .as_array()
        .expect("required fields")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    required.sort_unstable();
    assert_eq!(required, ["start_time", "trial_id"], "{schema}");
}

/// Where the document names a value `name`: each parameter of that name and each schema
/// property of that name, with the JSON path it was found at.
fn values_named<'a>(doc: &'a Value, name: &str) -> Vec<(String, &'a Value)> {
    fn walk<'a>(at: String, value: &'a Value, name: &str, found: &mut Vec<(String, &'a Value)>) {
        match value {
            Value::Object(object) => {
                if object.get("name").and_then(Value::as_str) == Some(name)
                    && object.contains_key("in")
                    && let Some(schema) = object.get("schema")
                {
                    found.push((at.clone(), schema));
                }
                if let Some(property) = object.get("properties").and_then(|p| p.get(name)) {
                    found.push((format!("{at}/properties/{name}"), property));
                }
                for (key, child) in object {
                    walk(format!("{at}/{key}"), child, name, found);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(format!("{at}/{i}"), child, name, found);
                }
            }
            _ => {}
        }
    }
    let mut found = Vec::new();
    walk(String::new(), doc, name, &mut found);
    found
}

#[tokio::test]
async fn every_trial_id_states_its_pattern_and_every_start_time_its_format() {
    let app = spawn_app().await;
    let doc = document(&app).await;

    let trial_ids = values_named(&doc, "trial_id");
    let at: Vec<&str> = trial_ids.iter().map(|(at, _)| at.as_str()).collect();
    // Paths are keyed by their own text, slashes and all.
    for (path, method) in [
        ("/debug/add-heartbeat", "post"),
        ("/trial/{trial_id}/status", "get"),
    ] {
        let expected = format!("/paths/{path}/{method}/parameters/");
        assert!(
            at.iter().any(|a| a.starts_with(&expected)),
            "no trial_id parameter of {method} {path}: {at:?}"
        );
    }
    let schedule_body = &doc["paths"]["/debug/trial/schedule"]["post"]["requestBody"]["content"]["application/json"]
        ["schema"]["$ref"];
    let body_name = schedule_body
        .as_str()
        .and_then(|r| r.rsplit('/').next())
        .expect("the body is a named schema");
    let body_field = format!("/components/schemas/{body_name}/properties/trial_id");
    assert!(at.contains(&body_field.as_str()), "{body_field}: {at:?}");
    // An audit entry keeps the trial id a refused request named, valid or not.
    let as_written = "/components/schemas/AuditEntry/properties/trial_id";
    assert!(at.contains(&as_written), "{as_written}: {at:?}");
    for (at, schema) in &trial_ids {
        if at == as_written {
            assert!(schema["pattern"].is_null(), "trial_id at {at}: {schema}");
            continue;
        }
        assert_eq!(
            schema["pattern"],
            lcm::domain::TrialId::PATTERN,
            "trial_id at {at}: {schema}"
        );
    }

    let start_times = values_named(&doc, "start_time");
    let at: Vec<&str> = start_times.iter().map(|(at, _)| at.as_str()).collect();
    let body_field = format!("/components/schemas/{body_name}/properties/start_time");
    assert!(at.contains(&body_field.as_str()), "{body_field}: {at:?}");
    for (at, schema) in &start_times {
        assert_eq!(
            schema["format"], "date-time",
            "start_time at {at}: {schema}"
        );
    }
}

#[tokio::test]
async fn every_route_is_served_with_its_credential() {
    // Every secured route is probed without credentials: more than the default limit of
    // failed authentications a minute.
    let app = spawn_app_with_settings(|s| s.auth.max_failures_per_minute = 1000).await;

    // What the router's fallback answers, so a probe can tell "not routed" apart.
    let fallback = app.call_as(Method::GET, "/no/such/route", None, None).await;
    assert_eq!(fallback.status, StatusCode::NOT_FOUND);
    assert_eq!(fallback.detail(), "no such route");
    let unknown_kind = app
        .call_as(Method::POST, "/trial/t1/callback/nonsense", None, None)
        .await;
    assert_eq!(unknown_kind.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown_kind.detail(), "no such route");

    for (method, path, needs) in ROUTES {
        let url = path.replace("{trial_id}", "probe-1");
        let method = Method::from_bytes(method.as_bytes()).expect("a method");
        let answer = app.call_as(method.clone(), &url, None, None).await;
        assert!(
            !(answer.status == StatusCode::NOT_FOUND && answer.detail() == "no such route"),
            "{method} {path} is not routed"
        );
        if needs.scheme().is_some() {
            // Without credentials a secured route refuses, which also proves it is routed.
            assert_eq!(
                answer.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path}: {answer:?}"
            );
            assert!(!answer.detail().is_empty(), "{method} {path}: {answer:?}");
        } else {
            assert_eq!(answer.status, StatusCode::OK, "{method} {path}: {answer:?}");
        }
    }

    // The API key opens a route documented with it, not one documented with the token.
    let status = app.get("/status").await;
    assert_eq!(status.status, StatusCode::OK, "{status:?}");
    let with_key = app
        .call_as(Method::GET, "/token/probe-1", None, Some(API_KEY))
        .await;
    assert_eq!(with_key.status, StatusCode::UNAUTHORIZED, "{with_key:?}");
}

/// The files a page loads: its `src="…"` and `href="…"` values.
fn referenced_files(html: &str) -> Vec<String> {
    let mut found = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        let mut rest = html;
        while let Some(start) = rest.find(attribute) {
            rest = &rest[start + attribute.len()..];
            let end = rest.find('"').expect("a closing quote");
            found.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    found
}

#[tokio::test]
async fn swagger_ui_is_served_from_the_binary_without_credentials() {
    let app = spawn_app().await;
    let page = app
        .client
        .get(format!("{}/", app.address))
        .send()
        .await
        .expect("GET /");
    assert_eq!(page.status(), StatusCode::OK);
    let content_type = page.headers()[header::CONTENT_TYPE]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let html = page.text().await.expect("body");
    assert!(html.contains("swagger-ui"), "{html}");

    let files = referenced_files(&html);
    assert!(
        files.iter().any(|f| f.ends_with("swagger-ui-bundle.js")),
        "{files:?}"
    );
    assert!(files.iter().any(|f| f.ends_with(".css")), "{files:?}");
    for file in &files {
        assert!(
            !file.contains("://") && !file.starts_with("//"),
            "the page loads {file} from elsewhere"
        );
        let path = format!("/{}", file.trim_start_matches("./").trim_start_matches('/'));
        let answer = app
            .client
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .expect("GET a file");
        assert_eq!(answer.status(), StatusCode::OK, "{path}");
        let bytes = answer.bytes().await.expect("body");
        assert!(!bytes.is_empty(), "{path} is empty");
    }

    // The page shows this service's document.
    let initializer = app
        .client
        .get(format!("{}/swagger-initializer.js", app.address))
        .send()
        .await
        .expect("GET the initializer");
    assert_eq!(initializer.status(), StatusCode::OK);
    let script = initializer.text().await.expect("body");
    assert!(script.contains("/openapi.json"), "{script}");

    // The UI's files are not routes: another method on one is the router's 404, not a 405.
    let answer = app
        .call_as(Method::POST, "/swagger-ui-bundle.js", None, None)
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND, "{answer:?}");
    assert_eq!(answer.detail(), "no such route");
}

#[tokio::test]
async fn every_route_documents_and_answers_the_refusals_of_a_body() {
    let app = spawn_app_with_settings(|s| s.server.max_body_bytes = 64).await;
    let doc = document(&app).await;
    let send = |method: &str, path: &str, content_type: &str, body: String| {
        let url = format!("{}{}", app.address, path.replace("{trial_id}", "probe-1"));
        let method = Method::from_bytes(method.as_bytes()).expect("a method");
        let request = app
            .client
            .request(method, url)
            .header(header::AUTHORIZATION, API_KEY)
            .header(header::CONTENT_TYPE, content_type)
            .body(body);
        async move { crate::helpers::read(request.send().await.expect("the service answers")).await }
    };
    let (mut too_large, mut not_json, mut no_body) = (0, 0, 0);
    for (method, path, operation) in operations(&doc) {
        let what = format!("{method} {path}");
        let responses = &operation["responses"];
        let takes_json = operation["requestBody"].is_object();
        // What the document lists is what the route answers (a route with a key; the token
        // routes check the token before the body, and the callbacks take what a component
        // sends).
        let keyed = operation["security"][0].get("api_key").is_some();
        let takes_none = keyed && !takes_json && method != "GET";
        for status in ["408", "413", "431", "500", "504"] {
            assert!(responses[status].is_object(), "{what}: {status}");
        }
        assert_eq!(
            responses["415"].is_object(),
            takes_json || takes_none,
            "{what}: 415"
        );
        assert_eq!(
            responses["422"].is_object(),
            takes_json || takes_none,
            "{what}: 422"
        );
        if !keyed {
            continue;
        }
        if takes_none {
            // A body sent to a route that takes none is refused, whatever it says.
            for (content_type, body, status) in [
                ("text/plain", "finish", StatusCode::UNSUPPORTED_MEDIA_TYPE),
                ("application/json", r#"{"x": "#, StatusCode::BAD_REQUEST),
                ("application/json", "[]", StatusCode::UNPROCESSABLE_ENTITY),
                (
                    "application/json",
                    r#"{"force": true}"#,
                    StatusCode::UNPROCESSABLE_ENTITY,
                ),
            ] {
                let answer = send(&method, &path, content_type, body.to_owned()).await;
                assert_eq!(answer.status, status, "{what} {body}: {answer:?}");
                assert!(responses[status.as_str()].is_object(), "{what}: {status}");
            }
            no_body += 1;
        }
        let answer = send(&method, &path, "application/json", "x".repeat(65)).await;
        assert_eq!(
            answer.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{what}: {answer:?}"
        );
        too_large += 1;
        if takes_json {
            // An optional body is left out: `null` is refused like any body not an object, so
            // the document does not offer it.
            let schema = &operation["requestBody"]["content"]["application/json"]["schema"];
            assert!(schema.get("oneOf").is_none(), "{what}: {schema}");
            let answer = send(&method, &path, "application/json", "null".to_owned()).await;
            assert_eq!(
                answer.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{what}: {answer:?}"
            );
            let body = r#"{"reason": "x"}"#.to_owned();
            let answer = send(&method, &path, "text/plain", body).await;
            assert_eq!(
                answer.status,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{what}: {answer:?}"
            );
            not_json += 1;
        }
    }
    // A head too large is refused before any route, as the document says of every one.
    let answer = crate::helpers::read(
        (app.client.get(format!("{}/status", app.address)))
            .header(header::AUTHORIZATION, API_KEY)
            .header("x-padding", "p".repeat(70_000))
            .send()
            .await
            .expect("the service answers"),
    )
    .await;
    crate::helpers::assert_detail(&answer, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert!(
        too_large >= 20 && not_json >= 6 && no_body >= 10,
        "only {too_large}, {not_json} and {no_body} probed"
    );
}

/// The schema a `$ref` names, or the schema itself.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let name = reference
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("not a reference to a component: {reference}"));
            let named = &doc["components"]["schemas"][name];
            assert!(named.is_object(), "{reference} is not in the components");
            resolve(doc, named)
        }
        None => schema,
    }
}

/// The JSON type of a value, as a schema names it.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// How `value`, found at `at`, does not fit `schema` (its `$ref`s resolved in `doc`): a field
/// the schema does not list or a required one missing, an object whose schema lists no
/// fields, a value of another type or outside its `enum`. Looks into every field and into the
/// first element of every list. A value fits `oneOf` or `anyOf` if it fits one of them.
fn misfits(doc: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
    let schema = resolve(doc, schema);
    for alternatives in ["oneOf", "anyOf"] {
        if let Some(alternatives) = schema[alternatives].as_array() {
            let tried: Vec<Vec<String>> = alternatives
                .iter()
                .map(|alternative| misfits(doc, alternative, value, at))
                .collect();
            return match tried.iter().any(Vec::is_empty) {
                true => Vec::new(),
                false => tried.concat(),
            };
        }
    }
    assert!(
        schema.get("allOf").is_none(),
        "{at}: allOf is not read here"
    );
    let mut found = Vec::new();
    let kind = json_type(value);
    let types: Vec<&str> = match &schema["type"] {
        Value::String(one) => vec![one.as_str()],
        Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty()
        && !types
            .iter()
            .any(|t| *t == kind || (*t, kind) == ("number", "integer"))
    {
        found.push(format!("{at}: a {kind}, the schema says {types:?}"));
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        found.push(format!("{at}: {value} is not one of {allowed:?}"));
    }
    match value {
        Value::Object(fields) => match schema["properties"].as_object() {
            Some(properties) => {
                let keys: BTreeSet<&String> = fields.keys().collect();
                let listed: BTreeSet<&String> = properties.keys().collect();
                if keys != listed {
                    found.push(format!(
                        "{at}: the answer has {:?} the schema does not list, the schema lists {:?} the answer lacks",
                        keys.difference(&listed).collect::<Vec<_>>(),
                        listed.difference(&keys).collect::<Vec<_>>()
                    ));
                }
                for required in schema["required"].as_array().into_iter().flatten() {
                    let name = required.as_str().unwrap_or_default();
                    if !fields.contains_key(name) {
                        found.push(format!("{at}: required {name} is missing"));
                    }
                }
                for (name, field) in fields {
                    if let Some(property) = properties.get(name) {
                        found.extend(misfits(doc, property, field, &format!("{at}.{name}")));
                    }
                }
            }
            // A map: each value fits the one schema.
            None => match schema.get("additionalProperties") {
                Some(each) if each.as_object().is_some_and(|each| !each.is_empty()) => {
                    for (name, field) in fields {
                        found.extend(misfits(doc, each, field, &format!("{at}.{name}")));
                    }
                }
                // Any JSON value, as the schema says (a component's answer kept as it came).
                _ if types.is_empty() => {}
                _ => found.push(format!("{at}: the schema lists no fields: {schema}")),
            },
        },
        Value::Array(items) => {
            if let Some(first) = items.first() {
                found.extend(misfits(doc, &schema["items"], first, &format!("{at}[0]")));
            }
        }
        _ => {}
    }
    found
}

#[tokio::test]
async fn every_typed_answer_has_exactly_the_fields_its_schema_lists() {
    // A store with a record that cannot be read and a job whose start passed while the service
    // was down: a corrupt trial's status and a missed trial in `/status`.
    let hour = chrono::Duration::hours(1);
    let hour_ago = chrono::Utc::now() - hour;
    let data = prepared_store(
        vec![
            Op::PutTrial(Box::new(record(
                "typed-garbled",
                Lifecycle::Running,
                hour_ago,
            ))),
            Op::PutJob {
                id: TrialId::parse("typed-missed").expect("an id"),
                start: StartTime::parse(&hour_ago.to_rfc3339()).expect("a time"),
                created_at: hour_ago - hour,
            },
        ],
        Some("UPDATE trials SET checkpoint = 'not json' WHERE trial_id = 'typed-garbled';"),
    );
    let path = data.path().to_path_buf();
    let app = spawn_app_with(AppOptions {
        settings: Box::new(move |s| {
            s.store.data_dir = path;
            single_attempt(s);
        }),
        ..AppOptions::default()
    })
    .await;
    let doc = document(&app).await;

    // A trial that failed at its slice deployment (so it has a failure and an error answer
    // among its responses), then restored; a heartbeat of it.
    let id = "typed-1";
    app.platform
        .inject(slice_deployment_fault(id, FaultAction::Status(500)));
    app.start_trial(id).await;
    app.wait_failed(id).await;
    let mut answers = vec![
        (
            "get",
            "/trial/{trial_id}/status",
            app.get(&format!("/trial/{id}/status")).await,
        ),
        (
            "get",
            "/trial/{trial_id}/responses",
            app.get(&format!("/trial/{id}/responses")).await,
        ),
        (
            "get",
            "/trial/{trial_id}/history",
            app.get(&format!("/trial/{id}/history")).await,
        ),
        (
            "get",
            "/trial/{trial_id}/status",
            app.get("/trial/typed-garbled/status").await,
        ),
        (
            "post",
            "/debug/engine/{trial_id}/restore",
            app.post(&format!("/debug/engine/{id}/restore"), None).await,
        ),
    ];
    let added = app
        .post(&format!("/debug/add-heartbeat?trial_id={id}"), None)
        .await;
    assert_eq!(added.status, StatusCode::OK, "{added:?}");
    eventually("a heartbeat's first check", || async {
        let status = app.get("/status").await.body;
        match status["Heartbeat_instances"][0]["last_check"].is_string() {
            true => Ok(()),
            false => Err(status.to_string()),
        }
    })
    .await;

    // The registry holds a trial ahead (scheduled) and one in the past (skipped).
    let now = chrono::Utc::now();
    app.platform
        .add_trial(Platform::trial("typed-later", Some(now + hour)));
    app.platform
        .add_trial(Platform::trial("typed-past", Some(now - hour)));
    answers.push((
        "post",
        "/debug/trial/schedule-all",
        app.post("/debug/trial/schedule-all", None).await,
    ));
    answers.push(("get", "/status", app.get("/status").await));
    answers.push(("get", "/trials", app.get("/trials").await));
    app.audited(
        &format!("?trial_id={id}"),
        "the restore's entry",
        |entries| {
            entries
                .iter()
                .any(|e| e["action"] == "POST /debug/engine/{trial_id}/restore")
        },
    )
    .await;
    answers.push(("get", "/audit", app.get("/audit").await));

    for (method, path, answer) in &answers {
        let what = format!("{method} {path}");
        assert_eq!(answer.status, StatusCode::OK, "{what}: {answer:?}");
        let schema = &doc["paths"][*path][*method]["responses"]["200"]["content"]["application/json"]
            ["schema"];
        assert!(schema.is_object(), "{what}: no schema of its answer");
        let found = misfits(&doc, schema, &answer.body, &what);
        assert!(found.is_empty(), "{}\n{}", found.join("\n"), answer.body);
    }
    // The lists looked into had an element, and the corrupt trial's status was looked at.
    let body = |path: &str| {
        let (_, _, answer) = answers
            .iter()
            .rev()
            .find(|(_, p, _)| *p == path)
            .expect("asked");
        &answer.body
    };
    let status = body("/status");
    for list in [
        "scheduled_trials",
        "missed_trials",
        "Executor_Engine_instances",
        "Heartbeat_instances",
    ] {
        assert!(status[list][0].is_object(), "{list}: {status}");
    }
    let all = body("/debug/trial/schedule-all");
    assert!(all["skipped"][0].is_object(), "{all}");
    for path in ["/trials", "/audit"] {
        let page = body(path);
        assert!(
            page.as_object()
                .and_then(|p| p.values().find_map(|v| v.get(0)))
                .is_some(),
            "{path}: {page}"
        );
    }
    let corrupt = &answers[3].2.body;
    assert_eq!(corrupt["engine_status"], "Corrupt", "{corrupt}");
}

/// Every field of every schema says what it is: a generated client's documentation is the
/// document's.
#[tokio::test]
async fn every_field_of_every_schema_is_described() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    let schemas = doc["components"]["schemas"]
        .as_object()
        .expect("schemas")
        .clone();
    let mut bare = Vec::new();
    for (name, schema) in &schemas {
        for (field, property) in schema["properties"].as_object().into_iter().flatten() {
            // An optional reference carries it on the reference, inside its `oneOf`.
            let said = |p: &Value| {
                p["description"]
                    .as_str()
                    .is_some_and(|d| !d.trim().is_empty())
            };
            let described = said(property)
                || property["oneOf"]
                    .as_array()
                    .is_some_and(|choices| choices.iter().any(said));
            if !described {
                bare.push(format!("{name}.{field}"));
            }
        }
    }
    assert!(bare.is_empty(), "fields without a description: {bare:?}");
}
