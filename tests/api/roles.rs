//! Tests: which role may call which route. Every route of the OpenAPI document is called with
//! a key of each role and checked against one table, so a route missing from the table fails
//! here, and a new route cannot forget its role. The README's table must say the same.

use std::collections::BTreeSet;

use axum::body::Body;
use lcm::access::{Actor, KeyHolder};
use lcm::config::{KeySettings, Role, Secret};
use reqwest::{Method, StatusCode};
use serde_json::json;
use tower::ServiceExt;

use crate::helpers::*;
use crate::routes::*;

#[tokio::test]
async fn every_route_answers_each_role_as_the_table_says() {
    let app = spawn_app_with(AppOptions {
        // This test fails authentication on purpose once per route.
        settings: Box::new(|s| s.auth.max_failures_per_minute = 10_000),
        ..AppOptions::default()
    })
    .await;
    let routes = documented_routes();
    let missing: Vec<String> = routes
        .iter()
        .filter(|(method, path)| needs_of(method, path).is_none())
        .map(|(method, path)| format!("{method} {path}"))
        .collect();
    assert!(
        missing.is_empty(),
        "routes without a role in ROUTES (and in the README's Access table): {missing:?}"
    );
    assert!(
        routes.len() >= 25,
        "the document lists the routes: {routes:?}"
    );

    for (method, path) in &routes {
        let needs = needs_of(method, path).expect("checked above");
        let url = path.replace("{trial_id}", "roles-t1");
        let method = Method::from_bytes(method.as_bytes()).expect("a method");
        let what = format!("{method} {path}");

        let anonymous = app.call_as(method.clone(), &url, None, None).await;
        match needs {
            Nothing => assert!(anonymous.status.is_success(), "{what}: {anonymous:?}"),
            Token | Key(_) => assert_eq!(
                anonymous.status,
                StatusCode::UNAUTHORIZED,
                "{what} without credentials: {anonymous:?}"
            ),
        }

        for (name, key, role) in ROLE_KEYS {
            let answer = app.call_as(method.clone(), &url, None, Some(key)).await;
            let what = format!("{what} as {name}");
            match needs {
                Nothing => assert!(answer.status.is_success(), "{what}: {answer:?}"),
                Token => {
                    assert_eq!(
                        answer.status,
                        StatusCode::UNAUTHORIZED,
                        "{what}: {answer:?}"
                    );
                    assert!(
                        answer
                            .detail()
                            .contains("takes the trial's callback token, not an API key"),
                        "{what}: {answer:?}"
                    );
                }
                Key(needed) if role < needed => {
                    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{what}: {answer:?}");
                    let detail = answer.detail();
                    for part in [
                        format!("needs the {needed} role"),
                        format!("key '{name}' has the {role} role"),
                    ] {
                        assert!(detail.contains(&part), "{what}: {part} in {answer:?}");
                    }
                    assert!(!detail.contains(key), "{what}: the key leaked: {answer:?}");
                }
                Key(_) => assert!(
                    !matches!(
                        answer.status,
                        StatusCode::UNAUTHORIZED
                            | StatusCode::FORBIDDEN
                            | StatusCode::TOO_MANY_REQUESTS
                    ),
                    "{what}: {answer:?}"
                ),
            }
        }
    }
}

#[test]
fn the_readme_access_table_says_what_the_test_table_says() {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("\n## Access and audit\n")
        .nth(1)
        .expect("the README has an 'Access and audit' section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut listed = BTreeSet::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().trim_matches('`'))
            .collect();
        if let [method, path, needs, ..] = cells[..] {
            listed.insert((method.to_owned(), path.to_owned(), needs.to_owned()));
        }
    }
    let expected: BTreeSet<(String, String, String)> = ROUTES
        .iter()
        .map(|(method, path, needs)| {
            let needs = match needs {
                Nothing => "none".to_owned(),
                Token => "token".to_owned(),
                Key(role) => role.to_string(),
            };
            (method.to_string(), path.to_string(), needs)
        })
        .collect();
    assert_eq!(
        listed.symmetric_difference(&expected).collect::<Vec<_>>(),
        Vec::<&(String, String, String)>::new(),
        "the README's Access table and ROUTES differ"
    );
}

#[tokio::test]
async fn a_key_with_too_small_a_role_changes_nothing() {
    let app = spawn_app().await;
    let answer = app
        .call_as(
            Method::POST,
            "/trial/scheduling",
            None,
            Some(key_of(Role::Operator)),
        )
        .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{answer:?}");
    assert_eq!(
        answer.detail(),
        "this route needs the admin role; key 'operator' has the operator role"
    );
    let status = app.get("/status").await.body;
    assert_eq!(status["Automatic_scheduling"], false, "{status}");

    let answer = app
        .call_as(
            Method::POST,
            "/debug/trial/schedule",
            Some(json!({"trial_id": "t1", "start_time": in_ms(3_600_000)})),
            Some(key_of(Role::Viewer)),
        )
        .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{answer:?}");
    let status = app.get("/status").await.body;
    assert_eq!(status["scheduled_trials"], json!([]), "{status}");

    let answer = app
        .call_as(
            Method::POST,
            "/debug/trial/schedule",
            Some(json!({"trial_id": "t1", "start_time": in_ms(3_600_000)})),
            Some(key_of(Role::Operator)),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
}

#[tokio::test]
async fn an_api_route_given_a_callback_token_says_it_wants_an_api_key() {
    let app = spawn_app().await;
    app.start_to_idle("t1").await;
    let token = app.post("/token/t1", None).await.body["Authorization"]
        .as_str()
        .expect("a token")
        .to_owned();
    for (method, path) in [(Method::GET, "/status"), (Method::POST, "/trial/t1/active")] {
        let answer = app.call_as(method, path, None, Some(&token)).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{answer:?}");
        assert_eq!(
            answer.detail(),
            "this route takes an API key, not a trial's callback token"
        );
    }
    // The token itself still works where it belongs.
    let answer = app
        .call_as(Method::GET, "/token/t1", None, Some(&token))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
}

#[tokio::test]
async fn a_token_route_given_a_wrong_credential_says_what_is_wrong_with_it() {
    let app = spawn_app().await;
    let bearer = format!("Bearer {API_KEY}");
    for key in [API_KEY, bearer.as_str(), key_of(Role::Viewer)] {
        let answer = app.callback("t1", "slice", Some(key)).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{answer:?}");
        assert_eq!(
            answer.detail(),
            "this route takes the trial's callback token, not an API key"
        );
    }
    let answer = app.callback("t1", "slice", Some("not-a-key")).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{answer:?}");
    assert!(
        answer.detail().contains("bad signature or malformed"),
        "{answer:?}"
    );
}

#[tokio::test]
async fn a_key_given_by_its_sha256_works_and_an_empty_api_key_means_no_default_key() {
    let app = spawn_app_with_settings(|s| {
        s.auth.api_key = Secret::new("");
        s.auth.keys.push(KeySettings {
            name: "hashed".into(),
            key: None,
            // SHA-256 of "hello".
            key_sha256: Some(
                "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824".into(),
            ),
            role: Role::Operator,
        });
    })
    .await;
    let answer = app
        .call_as(Method::POST, "/trial/t1/active", None, Some("hello"))
        .await;
    assert_eq!(
        answer.status,
        StatusCode::NOT_FOUND,
        "past the role: {answer:?}"
    );
    let answer = app
        .call_as(Method::POST, "/trial/scheduling", None, Some("hello"))
        .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{answer:?}");
    assert!(answer.detail().contains("key 'hashed'"), "{answer:?}");

    let answer = app.get("/status").await;
    assert_eq!(
        answer.status,
        StatusCode::UNAUTHORIZED,
        "no default key: {answer:?}"
    );
}

/// Sends a request through the service's router, as a layer around it would, and returns the
/// actor found on the answer.
async fn actor_seen_outside(
    app: &lcm::startup::Application,
    credential: &str,
    method: Method,
    uri: &str,
) -> Option<Actor> {
    let router = lcm::api::router(app.state().clone());
    let request = axum::http::Request::builder()
        .method(method.as_str())
        .uri(uri)
        .header("Authorization", credential)
        .body(Body::empty())
        .expect("a request");
    let response = router.oneshot(request).await.expect("an answer");
    response.extensions().get::<Actor>().cloned()
}

#[tokio::test]
async fn the_actor_is_in_the_answer_for_layers_outside_the_handlers() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = lcm::config::Settings::defaults().expect("defaults");
    settings.auth.api_key = Secret::new(API_KEY);
    settings.auth.token_secret = Secret::new(TOKEN_SECRET);
    settings.store.data_dir = dir.path().join("data");
    settings.auth.keys.push(KeySettings {
        name: "viewer".into(),
        key: Some(Secret::new(key_of(Role::Viewer))),
        key_sha256: None,
        role: Role::Viewer,
    });
    let app = lcm::startup::Application::with_listener(settings, listener, Default::default())
        .await
        .expect("app builds");

    let actor = actor_seen_outside(&app, key_of(Role::Viewer), Method::GET, "/status").await;
    assert_eq!(
        actor,
        Some(Actor::Key(KeyHolder {
            name: "viewer".into(),
            role: Role::Viewer
        }))
    );
    // Refused requests carry the actor too (a record of who tried).
    let actor = actor_seen_outside(
        &app,
        key_of(Role::Viewer),
        Method::POST,
        "/trial/scheduling",
    )
    .await;
    assert_eq!(actor.map(|a| a.to_string()), Some("viewer".to_owned()));

    let token = app
        .state()
        .tokens
        .mint(&lcm::domain::TrialId::parse("t9").unwrap())
        .unwrap();
    let actor = actor_seen_outside(&app, &token, Method::GET, "/token/t9").await;
    assert_eq!(actor.map(|a| a.to_string()), Some("callback:t9".to_owned()));

    assert_eq!(
        actor_seen_outside(&app, "nobody", Method::GET, "/status").await,
        None
    );
}

#[test]
fn the_document_describes_the_refusals_of_every_route_with_credentials() {
    let doc = serde_json::to_value(lcm::api::openapi()).expect("the document is JSON");
    for (method, path) in documented_routes() {
        let operation = &doc["paths"][&path][method.to_lowercase()];
        let needs = needs_of(&method, &path).expect("in ROUTES");
        let responses = operation["responses"].as_object().expect("responses");
        if needs == Nothing {
            assert!(!responses.contains_key("429"), "{method} {path}");
            continue;
        }
        for status in ["401", "403", "429"] {
            assert!(
                responses.contains_key(status),
                "{method} {path}: no {status}"
            );
        }
        let limited = &responses["429"];
        assert!(
            limited["headers"]["Retry-After"].is_object(),
            "{method} {path}: {limited}"
        );
        let says_token_limit = limited["description"]
            .as_str()
            .is_some_and(|d| d.contains("auth.max_callbacks_per_minute"));
        assert_eq!(
            says_token_limit,
            needs == Token,
            "{method} {path}: {limited}"
        );
        if let Key(_) = needs {
            assert!(
                responses["403"]["description"]
                    .as_str()
                    .is_some_and(|d| d.contains("role")),
                "{method} {path}: {}",
                responses["403"]
            );
        }
    }
}
