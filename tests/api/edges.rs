//! Input at the edge of what the service can represent: start times in the last four-digit
//! year, and callback tokens signed with the right secret that claim what the service never
//! issues.

use reqwest::StatusCode;

use crate::helpers::*;

#[tokio::test]
async fn start_times_show_as_given_and_read_back_up_to_the_last_four_digit_year() {
    let app = spawn_app().await;
    let last = "9999-12-31T23:59:59+05:00";
    let answer = app.schedule("far", last).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(answer.body["start_time"], last);
    let status = app.get("/status").await.body;
    let job = &status["scheduled_trials"][0];
    assert_eq!(job["start_time"], last, "{job}");
    assert_eq!(job["trigger"], format!("date[{last}]"), "{job}");

    // Its UTC instant is in year 10000: refused, and nothing is scheduled.
    let answer = app.schedule("farther", "9999-12-31T23:59:59-23:59").await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{answer:?}");
    assert!(
        answer.detail().contains("9999-12-31T23:59:59Z"),
        "{answer:?}"
    );
    let status = app.get("/status").await.body;
    assert_eq!(
        status["scheduled_trials"].as_array().map(Vec::len),
        Some(1),
        "{status}"
    );
}

#[tokio::test]
async fn a_token_signed_with_the_secret_but_claiming_what_the_service_never_issues_is_refused() {
    let app = spawn_app().await;
    app.start_to_idle("t1").await;
    let now = chrono::Utc::now().timestamp();
    let ttl = 604_800;
    let forge = |iat: i64, exp: i64, nbf: Option<i64>| {
        let mut claims =
            serde_json::json!({"trial_id": "t1", "iat": iat, "exp": exp, "jti": "forged"});
        if let Some(nbf) = nbf {
            claims["nbf"] = nbf.into();
        }
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(TOKEN_SECRET.as_bytes()),
        )
        .expect("signed")
    };
    for (token, why) in [
        (forge(now + 600, now + 1200, None), "not valid yet"),
        (forge(now, now + 1200, Some(now + 600)), "not valid yet"),
        (
            forge(now - 10, now - 10 + ttl + 1, None),
            "auth.token_ttl_secs",
        ),
    ] {
        let answer = app
            .call_as(reqwest::Method::GET, "/token/t1", None, Some(&token))
            .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{answer:?}");
        assert!(answer.detail().contains(why), "{answer:?}");
    }
    // The same secret and a lifetime the service does issue: accepted.
    let token = forge(now, now + ttl, Some(now));
    let answer = app
        .call_as(reqwest::Method::GET, "/token/t1", None, Some(&token))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
}
