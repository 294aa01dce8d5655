//! The API's own description: the OpenAPI document at `GET /openapi.json` and Swagger UI at
//! `/`.
//!
//! The document's paths are not written here: each handler carries its `#[utoipa::path]` and
//! is routed by the `routes!` call that also adds that description (see [`super::api`]). This
//! module holds the document's frame (title, tags, the two security schemes) and serves the
//! document and the UI. The UI's files are compiled into the binary (utoipa-swagger-ui's
//! `vendored` feature), so it works offline, with no CDN.

use std::sync::{Arc, LazyLock};

use axum::Json;
use axum::extract::Extension;
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::RefOr;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::Type;
use utoipa::openapi::schema::{ArrayItems, KnownFormat, Schema, SchemaFormat};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::Config;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use crate::domain::TrialId;

/// Where the document is served (and where Swagger UI fetches it).
const OPENAPI_PATH: &str = "/openapi.json";

/// The document's frame; the paths come from the routers.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Lifecycle Manager",
        description = "Schedules 5G drone trials and runs one engine per trial. Every error \
            answer is `{\"detail\": \"<reason>\"}`. Credentials go in the `Authorization` header, \
            raw or as `Bearer <value>`, or in a cookie named `Authorization`."
    ),
    modifiers(&SecuritySchemes, &NoLicense),
    components(schemas(ErrorBody)),
    tags(
        (name = "status", description = "The service's state"),
        (name = "scheduling", description = "Scheduled jobs and automatic scheduling"),
        (name = "trials", description = "A running trial: operator signals, status, responses"),
        (name = "callbacks", description = "The trial components' callbacks (callback token)"),
        (name = "engines", description = "Restore or remove an engine"),
        (name = "heartbeats", description = "Periodic reachability checks of a trial's services"),
        (name = "tokens", description = "Callback tokens"),
        (name = "docs", description = "This document and Swagger UI (no credentials)"),
    )
)]
pub struct ApiDoc;

/// The two credentials (SPEC §5): both travel in `Authorization`, so they are apiKey schemes.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "One of the service's API keys (`auth.api_key`, `auth.keys`), raw or as \
                 `Bearer <key>`; a cookie named `Authorization` also works. Each key has a \
                 role (viewer: every GET; operator: also runs and schedules trials; admin: \
                 everything); a key whose role is too small is answered 403.",
            ))),
        );
        components.add_security_scheme(
            "callback_token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "The trial's callback token, a JWT minted by `POST /token/{trial_id}` and handed \
                 to the trial's components; raw or as `Bearer <token>`, or in a cookie named \
                 `Authorization`.",
            ))),
        );
    }
}

/// Adds to every operation the refusals the extractors and layers answer for all of them,
/// where the operation does not describe its own: to one that takes credentials, 429 once the
/// client's address failed to authenticate too often and 403 for a key whose role is too small
/// (the token routes describe a 403 of their own); to every one, 413 for a body over
/// `server.max_body_bytes`; to one that takes a JSON body, 415 for one that is not
/// `application/json`; to one that takes an API key and changes something but takes no body
/// ([`super::extract::NoBody`]), 415 and 422 for a body sent all the same.
pub fn describe_common_refusals(openapi: &mut utoipa::openapi::OpenApi) {
    let error_body = || {
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build()
    };
    let refusal = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content("application/json", error_body())
            .build()
            .into()
    };
    let api_key = SecurityRequirement::new("api_key", Vec::<String>::new());
    let callback_token = SecurityRequirement::new("callback_token", Vec::<String>::new());
    for item in openapi.paths.paths.values_mut() {
        // Each with whether it changes something (all but `GET`).
        let operations = [
            (false, &mut item.get),
            (true, &mut item.put),
            (true, &mut item.post),
            (true, &mut item.delete),
            (true, &mut item.patch),
        ];
        for (changes, operation) in operations {
            let Some(operation) = operation else { continue };
            let takes_json = operation.request_body.is_some();
            let keyed = (operation.security.iter().flatten()).any(|r| *r == api_key);
            let tokened = (operation.security.iter().flatten()).any(|r| *r == callback_token);
            let responses = &mut operation.responses.responses;
            // A body sent to any route is refused beyond its limit (and, sent to a route with
            // a key that takes none, refused; a callback leaves it unused).
            responses
                .entry("413".to_owned())
                .or_insert_with(|| refusal("The body is larger than `server.max_body_bytes`"));
            if takes_json {
                responses
                    .entry("415".to_owned())
                    .or_insert_with(|| refusal("The body is not `application/json`"));
            } else if changes && keyed {
                responses
                    .entry("400".to_owned())
                    .or_insert_with(|| refusal("The body sent is not JSON"));
                responses.entry("415".to_owned()).or_insert_with(|| {
                    refusal("The route takes no body: one sent must be `application/json`, `{}`")
                });
                responses.entry("422".to_owned()).or_insert_with(|| {
                    refusal(
                        "The route takes no body: a field sent is refused (the detail names it)",
                    )
                });
            }
            // What any request may meet, before its route or around it (README: Errors).
            for (status, description) in COMMON_FAILURES {
                responses
                    .entry(status.to_owned())
                    .or_insert_with(|| refusal(description));
            }
            if operation.security.is_none() {
                continue;
            }
            responses.entry("403".to_owned()).or_insert_with(|| {
                refusal(
                    "The key's role is too small for this route (the detail names the role \
                     needed)",
                )
            });
            let throttled = match tokened {
                true => {
                    "Too many failed authentications from this address, or the token used more \
                     than `auth.max_callbacks_per_minute` (nothing was done); try again after \
                     `Retry-After` seconds"
                }
                false => {
                    "Too many failed authentications from this address; try again after \
                     `Retry-After` seconds"
                }
            };
            responses.entry("429".to_owned()).or_insert_with(|| {
                ResponseBuilder::new()
                    .description(throttled)
                    .header(
                        "Retry-After",
                        HeaderBuilder::new()
                            .schema(Some(
                                utoipa::openapi::ObjectBuilder::new().schema_type(Type::Integer),
                            ))
                            .description(Some("Seconds to wait"))
                            .build(),
                    )
                    .content("application/json", error_body())
                    .build()
                    .into()
            });
        }
    }
}

/// The answers any request may get, whatever its route.
const COMMON_FAILURES: [(&str, &str); 4] = [
    (
        "408",
        "The request head, or then its body, did not arrive whole within \
         `server.header_read_timeout_secs`: nothing was done, and the connection is closed",
    ),
    (
        "431",
        "The request head is larger than 64 KiB or has more than 100 header fields; the \
         connection is closed",
    ),
    (
        "500",
        "An internal error, logged: the request could not be handled",
    ),
    (
        "504",
        "No answer within `server.handler_timeout_secs`: the request goes on, so look at its \
         effect before sending it again",
    ),
];

/// The crate declares no license, which would otherwise show as a license with an empty name.
struct NoLicense;

impl Modify for NoLicense {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi.info.license = None;
    }
}

/// The schemas whose fields keep what a client wrote, valid or not: an audit entry records
/// the trial id of a refused request too, so its `trial_id` states no pattern.
const AS_CLIENTS_WROTE: [&str; 1] = ["AuditEntry"];

/// States what a trial id and a start time must look like wherever the document takes or
/// gives one — a path or query parameter, a body field, an answer's field — so generated
/// clients and contract testers know what is valid: a `trial_id` gets its `pattern`, a
/// `start_time` `format: date-time` (except in [`AS_CLIENTS_WROTE`]). Applied to the whole
/// document once the routers have added their paths, so a route added later is covered too.
pub fn describe_inputs(mut openapi: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    for item in openapi.paths.paths.values_mut() {
        for parameter in item.parameters.iter_mut().flatten() {
            describe_parameter(parameter);
        }
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            describe_operation(operation);
        }
    }
    if let Some(components) = &mut openapi.components {
        for (name, schema) in &mut components.schemas {
            if !AS_CLIENTS_WROTE.contains(&name.as_str()) {
                describe_fields(schema);
            }
        }
    }
    openapi
}

fn describe_operation(operation: &mut Operation) {
    for parameter in operation.parameters.iter_mut().flatten() {
        describe_parameter(parameter);
    }
    if let Some(RefOr::T(body)) = &mut operation.request_body {
        for content in body.content.values_mut() {
            if let RefOr::T(content) = content
                && let Some(schema) = &mut content.schema
            {
                not_null(schema);
                describe_fields(schema);
            }
        }
    }
}

/// An optional body (`Option<T>`, one of T or null) as T: it is left out, not sent as `null`,
/// which is refused like any body that is not an object. The body stays not required.
fn not_null(schema: &mut RefOr<Schema>) {
    let RefOr::T(Schema::OneOf(one_of)) = schema else {
        return;
    };
    let is_null = |item: &RefOr<Schema>| {
        matches!(item, RefOr::T(Schema::Object(object))
            if object.schema_type == utoipa::openapi::schema::SchemaType::Type(Type::Null))
    };
    let bodies: Vec<&RefOr<Schema>> = one_of.items.iter().filter(|i| !is_null(i)).collect();
    if let [body] = bodies.as_slice()
        && one_of.items.len() == 2
    {
        *schema = (*body).clone();
    }
}

fn describe_parameter(parameter: &mut RefOr<utoipa::openapi::path::Parameter>) {
    if let RefOr::T(parameter) = parameter
        && let Some(schema) = &mut parameter.schema
    {
        describe_value(&parameter.name, schema);
    }
}

/// Describes the fields of an object schema, and of the schemas inside it.
fn describe_fields(schema: &mut RefOr<Schema>) {
    match schema {
        RefOr::T(Schema::Object(object)) => {
            for (name, field) in &mut object.properties {
                describe_value(name, field);
                describe_fields(field);
            }
        }
        RefOr::T(Schema::Array(array)) => {
            if let ArrayItems::RefOrSchema(items) = &mut array.items {
                describe_fields(items);
            }
        }
        RefOr::T(Schema::OneOf(one_of)) => one_of.items.iter_mut().for_each(describe_fields),
        RefOr::T(Schema::AllOf(all_of)) => all_of.items.iter_mut().for_each(describe_fields),
        RefOr::T(Schema::AnyOf(any_of)) => any_of.items.iter_mut().for_each(describe_fields),
        _ => {}
    }
}

/// Describes a value by the name it goes by.
fn describe_value(name: &str, schema: &mut RefOr<Schema>) {
    let RefOr::T(Schema::Object(value)) = schema else {
        return;
    };
    match name {
        "trial_id" => value.pattern = Some(TrialId::PATTERN.to_owned()),
        "start_time" => value.format = Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)),
        _ => {}
    }
}

/// The routes of this area.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(openapi_json))
        .routes(routes!(swagger_ui))
}

/// This OpenAPI document
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "docs",
    responses((status = 200, description = "The OpenAPI 3.1 document of the whole API", body = Object)),
)]
async fn openapi_json(
    Extension(openapi): Extension<Arc<utoipa::openapi::OpenApi>>,
) -> Json<Arc<utoipa::openapi::OpenApi>> {
    Json(openapi)
}

/// Swagger UI
///
/// The page loads its scripts and styles from this service (`/swagger-ui-bundle.js`,
/// `/swagger-ui.css`, …), never from a CDN, and shows the document at `/openapi.json`.
#[utoipa::path(
    get,
    path = "/",
    tag = "docs",
    responses((status = 200, description = "Swagger UI's page", content_type = "text/html", body = String)),
)]
async fn swagger_ui() -> Response {
    ui_file("index.html").unwrap_or_else(|| ApiError::not_found("no such route").into_response())
}

/// The router's fallback: the Swagger UI file a `GET` names (the page loads them relative to
/// `/`), else 404 "no such route". The files are not routes, so they never shadow one, nor
/// turn an unknown path's 404 into a 405.
pub async fn ui_asset_or_no_route(method: Method, uri: Uri) -> Response {
    if method == Method::GET || method == Method::HEAD {
        let name = uri.path().trim_start_matches('/');
        // An empty name would be the index page, which has its own route at `/`.
        if !name.is_empty()
            && let Some(file) = ui_file(name)
        {
            return file;
        }
    }
    ApiError::not_found("no such route").into_response()
}

/// A Swagger UI file by name, compiled into the binary.
fn ui_file(name: &str) -> Option<Response> {
    static CONFIG: LazyLock<Arc<Config<'static>>> =
        LazyLock::new(|| Arc::new(Config::from(OPENAPI_PATH)));
    match utoipa_swagger_ui::serve(name, CONFIG.clone()) {
        Ok(Some(file)) => {
            Some(([(header::CONTENT_TYPE, file.content_type)], file.bytes).into_response())
        }
        Ok(None) => None,
        Err(e) => Some(
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("Swagger UI file '{name}' could not be served: {e}"),
            )
            .into_response(),
        ),
    }
}
