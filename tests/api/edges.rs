//! Input at the edge of what the service can represent: callback tokens signed with the right
//! secret that claim what the service never issues.

use reqwest::StatusCode;

use crate::helpers::*;

#[tokio::test]
async fn a_token_signed_with_the_secret_but_claiming_what_the_service_never_issues_is_refused() {
    let app = spawn_app().await;
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
