//! Every route of the service and what it takes: one table, which the tests of roles, of the
//! README's Access table and of the OpenAPI document all check against.

use lcm::config::Role;
use serde_json::Value;

/// What a route takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// No credentials.
    Nothing,
    /// The trial's callback token, never an API key.
    Token,
    /// An API key of at least this role.
    Key(Role),
}

pub use Needs::{Key, Nothing, Token};

pub const VIEWER: Needs = Key(Role::Viewer);
pub const OPERATOR: Needs = Key(Role::Operator);
pub const ADMIN: Needs = Key(Role::Admin);

/// Every route and what it takes, including routes still to come (they are checked once they
/// are served).
pub const ROUTES: &[(&str, &str, Needs)] = &[
    ("GET", "/", Nothing),
    ("GET", "/openapi.json", Nothing),
    ("GET", "/metrics", Nothing),
    ("GET", "/status", VIEWER),
    ("GET", "/trials", VIEWER),
    ("GET", "/trial/{trial_id}/status", VIEWER),
    ("GET", "/trial/{trial_id}/responses", VIEWER),
    ("GET", "/trial/{trial_id}/history", VIEWER),
    ("GET", "/trial/{trial_id}/events", VIEWER),
    ("POST", "/trial/{trial_id}/active", OPERATOR),
    ("POST", "/trial/{trial_id}/finish", OPERATOR),
    ("POST", "/trial/{trial_id}/pause", OPERATOR),
    ("POST", "/trial/{trial_id}/resume", OPERATOR),
    ("POST", "/trial/{trial_id}/step", OPERATOR),
    ("POST", "/trial/{trial_id}/abort", OPERATOR),
    ("POST", "/debug/trial/schedule", OPERATOR),
    ("POST", "/debug/trial/{trial_id}/schedule", OPERATOR),
    ("POST", "/debug/trial/schedule-all", OPERATOR),
    ("DELETE", "/debug/trial/{trial_id}/schedule", OPERATOR),
    ("POST", "/trial/scheduling", ADMIN),
    ("POST", "/token/{trial_id}", ADMIN),
    ("POST", "/debug/engine/{trial_id}/restore", ADMIN),
    ("POST", "/debug/engine/{trial_id}/skip", ADMIN),
    ("DELETE", "/debug/engine/{trial_id}", ADMIN),
    ("POST", "/debug/add-heartbeat", ADMIN),
    ("DELETE", "/debug/heartbeat/{trial_id}", ADMIN),
    ("GET", "/audit", ADMIN),
    ("GET", "/token/{trial_id}", Token),
    ("DELETE", "/token/{trial_id}", Token),
    ("POST", "/trial/{trial_id}/callback/slice", Token),
    ("POST", "/trial/{trial_id}/callback/cloudvnfboarding", Token),
    (
        "POST",
        "/trial/{trial_id}/callback/cloudvnfdeployment",
        Token,
    ),
    (
        "POST",
        "/trial/{trial_id}/callback/edgevnfonboarding",
        Token,
    ),
    (
        "POST",
        "/trial/{trial_id}/callback/edgevnfdeployment",
        Token,
    ),
    ("POST", "/trial/{trial_id}/callback/progress", Token),
];

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

impl Needs {
    /// The OpenAPI security scheme the route is documented with, if any.
    pub fn scheme(self) -> Option<&'static str> {
        match self {
            Nothing => None,
            Token => Some("callback_token"),
            Key(_) => Some("api_key"),
        }
    }
}

/// What `path` with `method` takes, if it is in [`ROUTES`].
pub fn needs_of(method: &str, path: &str) -> Option<Needs> {
    ROUTES
        .iter()
        .find(|(m, p, _)| *m == method && *p == path)
        .map(|(_, _, needs)| *needs)
}

/// Every operation of an OpenAPI document as (METHOD, path, operation).
pub fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let paths = doc["paths"].as_object().expect("paths is an object");
    let mut found = Vec::new();
    for (path, item) in paths {
        for method in METHODS {
            if let Some(operation) = item.get(method) {
                found.push((method.to_uppercase(), path.clone(), operation.clone()));
            }
        }
    }
    found
}

/// Every operation the service documents (and so serves) as (METHOD, path).
pub fn documented_routes() -> Vec<(String, String)> {
    let doc = serde_json::to_value(lcm::api::openapi()).expect("the document is JSON");
    operations(&doc)
        .into_iter()
        .map(|(method, path, _)| (method, path))
        .collect()
}
