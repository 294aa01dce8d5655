//! Per-trial callback tokens (SPEC §6): HS256 JWTs carrying `trial_id`, `iat`, `exp` and `jti`,
//! and the set of revoked ones.
//!
//! A token proves which trial a caller speaks for. Whether the trial's engine still accepts it
//! (exists, not finished, not failed) is the API layer's check, since only it sees the engines.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

use crate::config::Secret;
use crate::domain::TrialId;
use crate::store::{AuditEntry, Op, Store, StoreError};

/// How far in the future a token's `iat` may be: a wall clock stepped back (an NTP correction)
/// after a token was minted does not make the trial's components' callbacks refused.
const CLOCK_STEP_SECS: i64 = 300;

/// The claims of a callback token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub trial_id: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    /// When it was issued, in microseconds (`iat` counts whole seconds), as exact as the times
    /// the service keeps: a token of an earlier run of the trial is told from one of this run
    /// however soon the run was scheduled again. Absent from tokens issued before it was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat_us: Option<i64>,
}

impl Claims {
    /// Whether the token was issued before `instant` (to the microsecond when it says so).
    pub fn issued_before(&self, instant: chrono::DateTime<chrono::Utc>) -> bool {
        match self.iat_us {
            Some(us) => us < instant.timestamp_micros(),
            None => self.iat < instant.timestamp(),
        }
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token has expired")]
    Expired,
    #[error("token is not valid (bad signature or malformed)")]
    Invalid,
    #[error("token has been revoked")]
    Revoked,
    #[error("token was issued for another trial")]
    OtherTrial,
    #[error("token is not valid yet (issued or valid from a time in the future)")]
    NotYetValid,
    #[error("token lives longer than this service issues tokens for (auth.token_ttl_secs)")]
    TooLong,
}

impl TokenError {
    /// Every outcome of a token check, as the `lcm_token_validations_total` label.
    pub const OUTCOMES: [&str; 7] = [
        "valid",
        "expired",
        "invalid",
        "revoked",
        "other_trial",
        "not_yet_valid",
        "too_long",
    ];

    /// The outcome as a metrics label.
    fn label(&self) -> &'static str {
        match self {
            TokenError::Expired => "expired",
            TokenError::Invalid => "invalid",
            TokenError::Revoked => "revoked",
            TokenError::OtherTrial => "other_trial",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::TooLong => "too_long",
        }
    }
}

/// A token's revocation, to save and then to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    jti: String,
    exp: i64,
}

impl Revocation {
    /// The store's operation that saves it.
    pub fn op(&self) -> Op {
        Op::Revoke {
            jti: self.jti.clone(),
            exp: self.exp,
        }
    }
}

/// Mints, verifies and revokes callback tokens.
pub struct TokenManager {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// [`Self::validation`] without the expiry: for a token its live trial's engine holds.
    past_expiry: Validation,
    ttl_secs: i64,
    /// Revoked token ids with their expiry; an entry may go once the token has expired anyway.
    revoked: Mutex<HashMap<String, i64>>,
    /// Where revocations are saved, so they outlive a restart.
    store: Option<Store>,
}

impl TokenManager {
    /// A manager signing with `secret`; tokens live `ttl_secs`.
    pub fn new(secret: &Secret, ttl_secs: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // An expired token is expired, and one valid from a later time is not valid yet: no
        // grace period either way (the tokens are minted and checked on this one clock).
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        let mut past_expiry = validation.clone();
        past_expiry.validate_exp = false;
        Self {
            encoding: EncodingKey::from_secret(secret.expose().as_bytes()),
            decoding: DecodingKey::from_secret(secret.expose().as_bytes()),
            validation,
            past_expiry,
            ttl_secs: i64::try_from(ttl_secs).unwrap_or(i64::MAX / 2),
            revoked: Mutex::new(HashMap::new()),
            store: None,
        }
    }

    /// Saves revocations in `store`, and starts from the ones it holds.
    pub fn with_store(mut self, store: Store, revoked: Vec<(String, i64)>) -> Self {
        self.store = Some(store);
        self.revoked = Mutex::new(revoked.into_iter().collect());
        self
    }

    /// Lets lapse the revocations kept for good but those of `held`, the tokens live trials'
    /// engines hold (which outlive their expiry while the trial lives): a release before this
    /// one kept any token revoked while its trial lived for good. Each lapses a token lifetime
    /// from now, when no token it names is taken any more. Returns how many lapse.
    pub async fn lapse_unheld(&self, held: &[&str]) -> Result<usize, StoreError> {
        // Read unchecked: a token that no longer verifies keeps its revocation all the same.
        let held: HashSet<String> = held.iter().filter_map(|t| jti_unchecked(t)).collect();
        let until = chrono::Utc::now().timestamp().saturating_add(self.ttl_secs);
        let lapsing: Vec<Revocation> = {
            let revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
            (revoked.iter())
                .filter(|(jti, exp)| **exp == i64::MAX && !held.contains(*jti))
                .map(|(jti, _)| Revocation {
                    jti: jti.clone(),
                    exp: until,
                })
                .collect()
        };
        if lapsing.is_empty() {
            return Ok(0);
        }
        if let Some(store) = &self.store {
            store
                .write_all(lapsing.iter().map(Revocation::op).collect())
                .await?;
        }
        let lapsed = lapsing.len();
        for revocation in lapsing {
            self.revoked(revocation);
        }
        Ok(lapsed)
    }

    /// Mints a token for `trial`.
    pub fn mint(&self, trial: &TrialId) -> Result<String, TokenError> {
        let now = chrono::Utc::now();
        let iat = now.timestamp();
        let claims = Claims {
            trial_id: trial.to_string(),
            iat,
            exp: iat.saturating_add(self.ttl_secs),
            jti: uuid::Uuid::new_v4().to_string(),
            iat_us: Some(now.timestamp_micros()),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|_| TokenError::Invalid)
    }

    /// Verifies signature, expiry, revocation and that the token speaks for `trial`; an
    /// expired token is taken if `held` says its live trial's engine holds it (see
    /// [`Self::decode_held`]).
    pub fn verify(
        &self,
        token: &str,
        trial: &TrialId,
        held: impl Fn(&Claims) -> bool,
    ) -> Result<Claims, TokenError> {
        let result = self.check(token, trial, held);
        let outcome = match &result {
            Ok(_) => "valid",
            Err(e) => e.label(),
        };
        metrics::counter!("lcm_token_validations_total", "outcome" => outcome).increment(1);
        result
    }

    fn check(
        &self,
        token: &str,
        trial: &TrialId,
        held: impl Fn(&Claims) -> bool,
    ) -> Result<Claims, TokenError> {
        let claims = self.decode_held(token, held)?;
        if claims.trial_id != trial.as_str() {
            return Err(TokenError::OtherTrial);
        }
        if self.is_revoked(&claims.jti) {
            return Err(TokenError::Revoked);
        }
        Ok(claims)
    }

    /// Signature and times only: not expired, not issued (`iat`) or valid (`nbf`) from a time
    /// in the future, and not living longer than `auth.token_ttl_secs` (the service never
    /// issues such a token, so it was not made here as issued).
    pub fn decode(&self, token: &str) -> Result<Claims, TokenError> {
        self.decode_held(token, |_| false)
    }

    /// [`Self::decode`], but an expired token is taken when `held` says the engine of its
    /// trial, live, holds it: the token it handed out speaks for the trial for as long as the
    /// trial lives (SPEC §6), however long the trial waits for its operator or for a restore.
    pub fn decode_held(
        &self,
        token: &str,
        held: impl Fn(&Claims) -> bool,
    ) -> Result<Claims, TokenError> {
        let decoded = |validation| {
            jsonwebtoken::decode::<Claims>(token, &self.decoding, validation)
                .map(|data| data.claims)
                .map_err(|e| match e.kind() {
                    ErrorKind::ExpiredSignature => TokenError::Expired,
                    ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                    _ => TokenError::Invalid,
                })
        };
        let claims = match decoded(&self.validation) {
            Err(TokenError::Expired) => Some(decoded(&self.past_expiry)?)
                .filter(|c| held(c))
                .ok_or(TokenError::Expired)?,
            other => other?,
        };
        if claims.iat > chrono::Utc::now().timestamp() + CLOCK_STEP_SECS {
            return Err(TokenError::NotYetValid);
        }
        if claims.exp.saturating_sub(claims.iat) > self.ttl_secs {
            return Err(TokenError::TooLong);
        }
        Ok(claims)
    }

    /// Revokes by token id; it stays refused for the rest of its lifetime. Returns once the
    /// revocation (and `audit`, in the same transaction) is saved.
    pub async fn revoke_id(
        &self,
        jti: &str,
        exp: i64,
        audit: Option<AuditEntry>,
    ) -> Result<(), StoreError> {
        let revocation = Revocation {
            jti: jti.to_owned(),
            exp,
        };
        if let Some(store) = &self.store {
            store.write_audited(revocation.op(), audit).await?;
        }
        self.revoked(revocation);
        Ok(())
    }

    /// Revokes a token the LCM handed out. One signed with another secret opens nothing, so
    /// there is nothing to revoke.
    pub async fn revoke(&self, token: &str) -> Result<(), StoreError> {
        match self.revocation(token) {
            Some(r) => self.revoke_id(&r.jti, r.exp, None).await,
            None => Ok(()),
        }
    }

    /// The revocation of a token the LCM handed out, to save with other changes and then
    /// apply with [`TokenManager::revoked`]; `None` for a token that opens nothing anyway
    /// (signed with another secret). An expired one is revoked too, for a whole lifetime from
    /// now: its live trial's engine may hold it, and take it ([`Self::decode_held`]).
    pub fn revocation(&self, token: &str) -> Option<Revocation> {
        let now = chrono::Utc::now().timestamp();
        self.decode_held(token, |_| true)
            .ok()
            .map(|claims| Revocation {
                jti: claims.jti,
                exp: claims.exp.max(now.saturating_add(self.ttl_secs)),
            })
    }

    /// Whether `token`, one the LCM handed out (expired or not), has the id `jti`.
    pub fn has_id(&self, token: &str, jti: &str) -> bool {
        self.decode_held(token, |_| true)
            .is_ok_and(|claims| claims.jti == jti)
    }

    /// Refuses the revoked token from now on; call once its revocation is saved.
    pub fn revoked(&self, revocation: Revocation) {
        self.forget_until_expiry(&revocation.jti, revocation.exp);
    }

    fn forget_until_expiry(&self, jti: &str, exp: i64) {
        let now = chrono::Utc::now().timestamp();
        let mut revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        revoked.retain(|_, exp| *exp >= now);
        revoked.insert(jti.to_owned(), exp);
    }

    fn is_revoked(&self, jti: &str) -> bool {
        let revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        revoked.contains_key(jti)
    }
}

/// The id of a token the LCM handed out, read without checking the token.
fn jti_unchecked(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<Claims>(&bytes).ok().map(|c| c.jti)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager(ttl: u64) -> TokenManager {
        TokenManager::new(&Secret::new("test-secret"), ttl)
    }

    #[tokio::test]
    async fn mint_verify_revoke() {
        let tokens = manager(60);
        let t1 = TrialId::parse("t1").unwrap();
        let token = tokens.mint(&t1).unwrap();
        let claims = tokens.verify(&token, &t1, |_| false).unwrap();
        assert_eq!(claims.trial_id, "t1");
        assert_eq!(
            tokens.verify(&token, &TrialId::parse("t2").unwrap(), |_| false),
            Err(TokenError::OtherTrial)
        );
        tokens.revoke(&token).await.unwrap();
        assert_eq!(
            tokens.verify(&token, &t1, |_| false),
            Err(TokenError::Revoked)
        );
    }

    #[tokio::test]
    async fn revocations_kept_for_good_lapse_unless_a_live_trial_holds_the_token() {
        let (store, _) =
            Store::start(crate::store::sqlite::SqliteBackend::in_memory().unwrap()).unwrap();
        let tokens = manager(60).with_store(store, Vec::new());
        let t1 = TrialId::parse("t1").unwrap();
        let (held, minted) = (tokens.mint(&t1).unwrap(), tokens.mint(&t1).unwrap());
        for token in [&held, &minted] {
            let jti = jti_unchecked(token).unwrap();
            tokens.revoke_id(&jti, i64::MAX, None).await.unwrap();
        }
        assert_eq!(tokens.lapse_unheld(&[&held]).await.unwrap(), 1);
        let kept = |token: &str| tokens.revoked.lock().unwrap()[&jti_unchecked(token).unwrap()];
        assert_eq!(kept(&held), i64::MAX);
        let lapses = kept(&minted);
        assert!(lapses < i64::MAX && lapses <= chrono::Utc::now().timestamp() + 60);
        // Both stay refused meanwhile.
        for token in [&held, &minted] {
            assert_eq!(
                tokens.verify(token, &t1, |_| false),
                Err(TokenError::Revoked)
            );
        }
        assert_eq!(tokens.lapse_unheld(&[&held]).await.unwrap(), 0);
    }

    /// To the microsecond when the token says it, else to the second.
    #[test]
    fn a_token_tells_if_it_was_issued_before_an_instant() {
        let at = |text: &str| text.parse::<chrono::DateTime<chrono::Utc>>().unwrap();
        let claims = Claims {
            trial_id: "t1".into(),
            iat: at("2026-01-01T00:00:05Z").timestamp(),
            exp: at("2026-01-01T01:00:05Z").timestamp(),
            jti: "x".into(),
            iat_us: Some(at("2026-01-01T00:00:05.100100Z").timestamp_micros()),
        };
        assert!(claims.issued_before(at("2026-01-01T00:00:05.100200Z")));
        assert!(!claims.issued_before(at("2026-01-01T00:00:05.100050Z")));
        let older = Claims {
            iat_us: None,
            ..claims
        };
        assert!(!older.issued_before(at("2026-01-01T00:00:05.300Z")));
        assert!(older.issued_before(at("2026-01-01T00:00:06Z")));
    }

    #[test]
    fn forged_and_expired_tokens_are_refused() {
        let t1 = TrialId::parse("t1").unwrap();
        let other = TokenManager::new(&Secret::new("another-secret"), 60);
        let forged = other.mint(&t1).unwrap();
        assert_eq!(
            manager(60).verify(&forged, &t1, |_| false),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            manager(60).verify("not.a.jwt", &t1, |_| false),
            Err(TokenError::Invalid)
        );

        let tokens = manager(60);
        let past = chrono::Utc::now().timestamp() - 10;
        let claims = Claims {
            trial_id: "t1".into(),
            iat: past - 60,
            exp: past,
            jti: "x".into(),
            iat_us: None,
        };
        let signed = |secret: &[u8]| {
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(secret),
            )
            .unwrap()
        };
        let expired = signed(b"test-secret");
        assert_eq!(
            tokens.verify(&expired, &t1, |_| false),
            Err(TokenError::Expired)
        );
        // Held by its live trial's engine, it is taken; signed with another secret, never.
        let held = tokens.verify(&expired, &t1, |c| c.jti == "x");
        assert_eq!(held.map(|c| c.exp), Ok(past));
        assert_eq!(
            tokens.verify(&signed(b"another-secret"), &t1, |_| true),
            Err(TokenError::Invalid)
        );
    }

    /// A token signed with the right secret, with these claims.
    fn forge(claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(b"test-secret"),
        )
        .unwrap()
    }

    #[test]
    fn tokens_from_the_future_or_living_too_long_are_refused() {
        let tokens = manager(3600);
        let t1 = TrialId::parse("t1").unwrap();
        let now = chrono::Utc::now().timestamp();
        let claims = |iat: i64, exp: i64| serde_json::json!({"trial_id": "t1", "iat": iat, "exp": exp, "jti": "x"});

        // Minted before the wall clock was stepped back by a minute: taken.
        let stepped_back = forge(&claims(now + 60, now + 1200));
        assert!(tokens.verify(&stepped_back, &t1, |_| false).is_ok());
        let issued_later = forge(&claims(now + 600, now + 1200));
        assert_eq!(
            tokens.verify(&issued_later, &t1, |_| false),
            Err(TokenError::NotYetValid)
        );
        let mut not_before = claims(now, now + 1200);
        not_before["nbf"] = (now + 600).into();
        assert_eq!(
            tokens.verify(&forge(&not_before), &t1, |_| false),
            Err(TokenError::NotYetValid)
        );
        let too_long = forge(&claims(now - 10, now - 10 + 3601));
        assert_eq!(
            tokens.verify(&too_long, &t1, |_| false),
            Err(TokenError::TooLong)
        );

        // At the limits, a token is fine.
        let full_life = forge(&claims(now, now + 3600));
        assert!(tokens.verify(&full_life, &t1, |_| false).is_ok());
        not_before["nbf"] = now.into();
        assert!(tokens.verify(&forge(&not_before), &t1, |_| false).is_ok());
        assert!(
            tokens
                .verify(&tokens.mint(&t1).unwrap(), &t1, |_| false)
                .is_ok()
        );
    }
}
