//! Keeps secrets out of everything that is recorded or shown: the trial's callback token and
//! every secret of the configuration (service API keys and passwords, the OAuth2 client
//! secret, the abstraction layer's password), wherever a service echoes them back.

use serde_json::Value;

/// What stands in for a redacted secret.
pub const REDACTED: &str = "[redacted]";

/// The shortest value treated as a secret to hide.
const MIN_SECRET_LEN: usize = 4;

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
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
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

    /// Replaces every secret in the strings of a JSON value.
    pub fn value(&self, value: &mut Value) {
        match value {
            Value::String(s) if self.secrets.iter().any(|secret| s.contains(secret)) => {
                *s = self.text(s);
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.value(v)),
            Value::Object(map) => map.values_mut().for_each(|v| self.value(v)),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
