//! How each outbound service is authenticated (SPEC §7): an API key header, HTTP Basic, or an
//! OAuth2 client-credentials token cached until it expires or a 401 comes back.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tracing::warn;

use crate::config::{OAuth2Settings, Secret, ServiceSettings};

/// The credentials applied to every request to one service.
pub enum ServiceAuth {
    None,
    ApiKey(Secret),
    Basic { username: String, password: Secret },
    OAuth2(OAuth2Client),
}

impl ServiceAuth {
    /// Picks the auth mode configured for a service; OAuth2 wins over the others when set.
    pub fn from_settings(settings: &ServiceSettings) -> Self {
        if let Some(oauth2) = &settings.oauth2 {
            return Self::OAuth2(OAuth2Client::new(oauth2.clone()));
        }
        if let Some(key) = &settings.apikey {
            return Self::ApiKey(key.clone());
        }
        match (&settings.username, &settings.password) {
            (Some(username), Some(password)) => Self::Basic {
                username: username.clone(),
                password: password.clone(),
            },
            _ => Self::None,
        }
    }
}

/// An OAuth2 client-credentials grant with a cached access token.
pub struct OAuth2Client {
    settings: OAuth2Settings,
    /// The current token and when to stop using it. A plain mutex: it is never held across
    /// an `.await` (two concurrent refreshes may both fetch; the later one wins, harmlessly).
    cached: Mutex<Option<(Secret, Instant)>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    access_token: Option<String>,
    /// The OAuth2 error code an endpoint answers with (`invalid_client`, `invalid_grant`, …).
    #[serde(default)]
    error: Option<serde_json::Value>,
    /// Seconds, as a number or (some identity providers) a string of digits.
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

/// How long a token is used for when its endpoint does not say, or says it in a way that is
/// not a number of seconds.
const DEFAULT_LIFETIME_SECS: u64 = 300;
/// The longest a token is used before it is fetched again, whatever its endpoint says.
const MAX_LIFETIME_SECS: u64 = 24 * 3600;

/// How long to use a token whose endpoint said `expires_in`: a little less than that (so a
/// token never expires on its way), at most a day; a value that is not a number of seconds
/// counts as none.
fn lifetime(expires_in: Option<&serde_json::Value>) -> Duration {
    use serde_json::Value;
    // A whole number of seconds, or any other number (cut to whole seconds, from 0).
    let seconds = |f: f64| f.is_finite().then(|| f.max(0.0) as u64);
    let secs = match expires_in {
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_i64().map(|_| 0))
            .or_else(|| n.as_f64().and_then(seconds)),
        Some(Value::String(text)) => {
            let text = text.trim();
            text.parse()
                .ok()
                .or_else(|| text.parse().ok().and_then(seconds))
        }
        _ => None,
    };
    let secs = secs.unwrap_or_else(|| {
        if expires_in.is_some() {
            warn!("the token endpoint's expires_in is not a number of seconds: the token is used for {DEFAULT_LIFETIME_SECS} s");
        }
        DEFAULT_LIFETIME_SECS
    });
    Duration::from_secs(secs.min(MAX_LIFETIME_SECS).saturating_sub(5))
}

/// Why no access token could be had.
#[derive(Debug, thiserror::Error)]
pub enum OAuth2Error {
    #[error("token endpoint unreachable: {0}")]
    Transport(String),
    #[error("token endpoint answered {0}{code}", code = said(.1))]
    Status(u16, Option<String>),
    #[error("token endpoint answered without an access_token{code}", code = said(.0))]
    Malformed(Option<String>),
}

/// The OAuth2 error code an answer gave, as the reason shows it: ` (invalid_grant)`.
fn said(code: &Option<String>) -> String {
    code.as_ref()
        .map_or_else(String::new, |code| format!(" ({code})"))
}

/// The `error` code of a token endpoint's answer, if it gave one that reads as a code (a few
/// letters and underscores, as RFC 6749 names them): any other text may quote what the
/// client sent, its secret included, and is not shown.
fn error_code(error: Option<&serde_json::Value>) -> Option<String> {
    let code = error?.as_str()?;
    let is_code =
        (1..=64).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    is_code.then(|| code.to_owned())
}

impl OAuth2Error {
    /// The token endpoint may answer next time: it could not be reached, or failed on its side.
    pub fn retryable(&self) -> bool {
        match self {
            OAuth2Error::Transport(_) => true,
            OAuth2Error::Status(status, _) => *status >= 500 || *status == 429,
            OAuth2Error::Malformed(_) => false,
        }
    }
}

impl OAuth2Client {
    fn new(settings: OAuth2Settings) -> Self {
        Self {
            settings,
            cached: Mutex::new(None),
        }
    }

    /// A valid access token, from the cache or freshly fetched.
    pub async fn token(&self, http: &reqwest::Client) -> Result<Secret, OAuth2Error> {
        if let Some(token) = self.cached_token() {
            return Ok(token);
        }
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.settings.client_id.as_str()),
            ("client_secret", self.settings.client_secret.expose()),
        ];
        let response = http
            .post(&self.settings.auth_url)
            .form(&form)
            .send()
            .await
            .map_err(|e| OAuth2Error::Transport(e.without_url().to_string()))?;
        let status = response.status();
        let bytes = response.bytes().await;
        let body =
            (bytes.as_ref().ok()).and_then(|b| serde_json::from_slice::<TokenResponse>(b).ok());
        let code = body.as_ref().and_then(|b| error_code(b.error.as_ref()));
        if !status.is_success() {
            return Err(OAuth2Error::Status(status.as_u16(), code));
        }
        // An answer cut off, or not whole within the request's timeout, is no answer.
        if let Err(e) = bytes {
            let cut = format!("its answer was cut off: {}", e.without_url());
            return Err(OAuth2Error::Transport(cut));
        }
        let Some(body) = body else {
            return Err(OAuth2Error::Malformed(None));
        };
        let Some(access_token) = body.access_token.filter(|t| !t.trim().is_empty()) else {
            return Err(OAuth2Error::Malformed(code));
        };
        let token = Secret::new(access_token);
        let until = Instant::now() + lifetime(body.expires_in.as_ref());
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = Some((token.clone(), until));
        Ok(token)
    }

    /// Forgets the cached token (the service answered 401).
    pub fn invalidate(&self) {
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn cached_token(&self) -> Option<Secret> {
        let cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        match &*cached {
            Some((token, until)) if Instant::now() < *until => Some(token.clone()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_refusal_says_its_oauth2_error_code_and_nothing_else_it_said() {
        let refused = OAuth2Error::Status(400, error_code(Some(&json!("invalid_grant"))));
        assert_eq!(
            refused.to_string(),
            "token endpoint answered 400 (invalid_grant)"
        );
        for not_a_code in [json!("client secret s3cr3t is wrong"), json!(7), json!("")] {
            assert_eq!(error_code(Some(&not_a_code)), None, "{not_a_code}");
        }
        assert_eq!(
            OAuth2Error::Malformed(None).to_string(),
            "token endpoint answered without an access_token"
        );
    }

    #[test]
    fn a_token_s_lifetime_is_read_from_any_number_of_seconds_and_bounded() {
        let secs = |v: serde_json::Value| lifetime(Some(&v)).as_secs();
        assert_eq!(secs(json!(3600)), 3595);
        assert_eq!(secs(json!("3600")), 3595);
        assert_eq!(secs(json!("3600.5")), 3595);
        assert_eq!(secs(json!("18446744073709551616")), MAX_LIFETIME_SECS - 5);
        assert_eq!(secs(json!(3600.7)), 3595);
        assert_eq!(secs(json!(u64::MAX)), MAX_LIFETIME_SECS - 5);
        assert_eq!(secs(json!(i64::MAX)), MAX_LIFETIME_SECS - 5);
        assert_eq!(secs(json!(1e300)), MAX_LIFETIME_SECS - 5);
        assert_eq!(secs(json!(-5)), 0);
        assert_eq!(secs(json!(3)), 0);
        for unreadable in [json!("soon"), json!(null), json!([1])] {
            assert_eq!(secs(unreadable), DEFAULT_LIFETIME_SECS - 5);
        }
        assert_eq!(lifetime(None).as_secs(), DEFAULT_LIFETIME_SECS - 5);
    }
}
