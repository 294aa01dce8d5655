//! Keeps secrets out of everything that is recorded or shown: the trial's callback token and
//! every secret of the configuration (service API keys and passwords, the OAuth2 client
//! secret, the abstraction layer's password), wherever a service echoes them back.

use std::sync::{Arc, RwLock};

use serde_json::Value;

use crate::domain::at_most;

/// What stands in for a redacted secret.
pub const REDACTED: &str = "[redacted]";

/// The shortest value treated as a secret to hide.
pub(crate) const MIN_SECRET_LEN: usize = 4;

/// How much of an answer that is not JSON is shown (a failure's reason, a recorded error).
const EXCERPT_CHARS: usize = 200;

/// The secrets to hide, shared by everything that records or shows: the configuration's,
/// and the API keys each reload of them puts in force (still hidden once out of force: they
/// were secrets).
#[derive(Debug, Default)]
pub struct Secrets {
    current: RwLock<Arc<Redactor>>,
}

impl Secrets {
    pub fn new<S: AsRef<str>>(secrets: impl IntoIterator<Item = S>) -> Self {
        Self {
            current: RwLock::new(Arc::new(Redactor::new(secrets))),
        }
    }

    /// What hides them as they stand.
    pub fn redactor(&self) -> Arc<Redactor> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// These secrets and one more (the trial's token).
    pub fn with(&self, extra: Option<&str>) -> Redactor {
        self.redactor().with(extra)
    }

    /// Hides `more` too, from now on.
    pub fn add<S: AsRef<str>>(&self, more: impl IntoIterator<Item = S>) {
        let mut current = self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let secrets = current.secrets.iter().map(String::to_owned);
        let grown = Redactor::new(secrets.chain(more.into_iter().map(|s| s.as_ref().to_owned())));
        *current = Arc::new(grown);
    }
}

/// The secrets to hide.
#[derive(Debug, Default, Clone)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    /// Hides each of `secrets`. Values shorter than [`MIN_SECRET_LEN`] are left alone: hiding
    /// a two-letter word everywhere would mangle every record and protect nothing.
    pub fn new<S: AsRef<str>>(secrets: impl IntoIterator<Item = S>) -> Self {
        let mut secrets: Vec<String> = secrets
            .into_iter()
            .map(|s| s.as_ref().to_owned())
            .filter(|s| s.len() >= MIN_SECRET_LEN)
            .collect();
        // Longest first, so a secret that contains another is hidden whole.
        secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        secrets.dedup();
        Self { secrets }
    }

    /// These secrets and one more (the trial's token).
    pub fn with(&self, extra: Option<&str>) -> Self {
        Self::new(self.secrets.iter().map(String::as_str).chain(extra))
    }

    /// Replaces every secret in a text.
    pub fn text(&self, text: &str) -> String {
        self.secrets.iter().fold(text.to_owned(), |text, secret| {
            text.replace(secret, REDACTED)
        })
    }

    /// The start of an answer's text, its secrets replaced first: a secret the cut would
    /// split is hidden whole, not shown in part.
    pub fn excerpt(&self, text: &str) -> String {
        at_most(self.text(text), EXCERPT_CHARS)
    }

    /// [`Self::text`], and every JSON Web Token in it (three base64url parts, the first a
    /// JSON header: `eyJ…`): a component's free text may quote a token of the trial minted by
    /// hand, or one of its own, which no list of secrets holds.
    pub fn text_and_tokens(&self, text: &str) -> String {
        let text = self.text(text);
        let mut shown = String::with_capacity(text.len());
        let mut rest = text.as_str();
        while let Some(at) = rest.find("eyJ") {
            let (before, candidate) = rest.split_at(at);
            shown.push_str(before);
            let length = jwt_length(candidate);
            if length > 0 {
                shown.push_str(REDACTED);
                rest = &candidate[length..];
            } else {
                shown.push_str("eyJ");
                rest = &candidate[3..];
            }
        }
        shown.push_str(rest);
        shown
    }

    /// Whether `text` holds one of the secrets (or is one).
    pub fn hides_in(&self, text: &str) -> bool {
        self.secrets.iter().any(|secret| text.contains(secret))
    }

    /// Replaces every secret in the strings of a JSON value, its objects' keys too.
    pub fn value(&self, value: &mut Value) {
        match value {
            Value::String(s) if self.hides_in(s) => *s = self.text(s),
            Value::Array(items) => items.iter_mut().for_each(|v| self.value(v)),
            Value::Object(map) => {
                if map.keys().any(|key| self.hides_in(key)) {
                    *map = std::mem::take(map)
                        .into_iter()
                        .map(|(key, v)| (self.text(&key), v))
                        .collect();
                }
                map.values_mut().for_each(|v| self.value(v));
            }
            _ => {}
        }
    }
}

/// The length of the JSON Web Token `text` starts with, or 0: base64url parts joined by dots,
/// the first two JSON objects (`eyJ…`), the signature possibly empty or missing (an unsigned
/// token is a token all the same).
fn jwt_length(text: &str) -> usize {
    let base64url = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_';
    let part = |at: usize| {
        text.as_bytes()[at..]
            .iter()
            .take_while(|b| base64url(b))
            .count()
    };
    let header = part(0);
    let payload_at = header + 1;
    if text.as_bytes().get(header) != Some(&b'.') || !text[payload_at..].starts_with("eyJ") {
        return 0;
    }
    let end = payload_at + part(payload_at);
    match text.as_bytes().get(end) {
        Some(b'.') => end + 1 + part(end + 1),
        _ => end,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn secrets_added_later_are_hidden_too_and_each_once() {
        let secrets = Secrets::new(["first"]);
        secrets.add(["second", "first"]);
        secrets.add(["second"]);
        assert_eq!(secrets.redactor().secrets, ["second", "first"]);
        assert_eq!(
            secrets.with(Some("token")).text("first second token"),
            "[redacted] [redacted] [redacted]"
        );
    }

    #[test]
    fn every_secret_is_redacted_everywhere() {
        let redactor = Redactor::new(["pass"]).with(Some("token"));
        let mut value = json!({"a": "token", "b": ["x token y", {"c": "pass"}], "d": 1});
        redactor.value(&mut value);
        assert_eq!(
            value,
            json!({"a": REDACTED, "b": [format!("x {REDACTED} y"), {"c": REDACTED}], "d": 1})
        );
        assert_eq!(
            redactor.text("Bearer token pass"),
            "Bearer [redacted] [redacted]"
        );
        assert_eq!(Redactor::new(["", "lcm"]).text("lcm kept"), "lcm kept");
    }

    #[test]
    fn a_key_that_holds_a_secret_is_redacted_too() {
        let mut value = json!({"key_token": 1, "ok": {"pw_pass": "pass"}});
        Redactor::new(["pass", "token"]).value(&mut value);
        assert_eq!(
            value,
            json!({format!("key_{REDACTED}"): 1, "ok": {format!("pw_{REDACTED}"): REDACTED}})
        );
    }

    #[test]
    fn a_json_web_token_in_a_text_is_redacted_whatever_its_secret() {
        let redactor = Redactor::new(["pass"]);
        assert_eq!(
            redactor.text_and_tokens("use eyJhbGci.eyJzdWIi.c2ln-_x, pass, eyJ alone, eyJa.b"),
            "use [redacted], [redacted], eyJ alone, eyJa.b"
        );
        // Unsigned: an empty signature, or none.
        assert_eq!(
            redactor.text_and_tokens("eyJhbGci.eyJzdWIi. end, eyJhbGci.eyJzdWIi"),
            "[redacted] end, [redacted]"
        );
        assert_eq!(
            redactor.text_and_tokens("é eyJa.eyJb.c é"),
            "é [redacted] é"
        );
    }

    /// A secret that the excerpt's end would cut is hidden whole: no part of it is shown.
    #[test]
    fn an_excerpt_never_shows_part_of_a_secret() {
        let secret = "SECRETenfPASS777";
        let text = format!("{}{secret}", "y".repeat(EXCERPT_CHARS - 5));
        let shown = Redactor::new([secret]).excerpt(&text);
        assert!(!shown.contains("SECRETenf"), "{shown}");
        assert!(shown.ends_with('…'), "{shown}");
        assert_eq!(Redactor::new([secret]).excerpt("short"), "short");
    }

    /// A service may escape characters JSON allows to escape (`\/`, `\u002b`): the secret is
    /// found in the string as read, not in the bytes.
    #[test]
    fn a_secret_written_escaped_in_json_is_redacted_once_parsed() {
        let body = r#"{"echo": "Bearer a\/b\u002bc", "ok": "a/b"}"#;
        assert!(!body.contains("a/b+c"));
        let mut value: Value = serde_json::from_str(body).unwrap();
        Redactor::new(["a/b+c"]).value(&mut value);
        assert_eq!(
            value,
            json!({"echo": format!("Bearer {REDACTED}"), "ok": "a/b"})
        );
    }
}
