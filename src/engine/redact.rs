//! Keeps the trial's callback token out of everything that is recorded or shown.

use serde_json::Value;

/// What stands in for a redacted secret.
pub const REDACTED: &str = "[redacted]";

/// Replaces the token wherever it occurs in the strings of a JSON value.
pub fn redact_value(value: &mut Value, token: &str) {
    if token.is_empty() {
        return;
    }
    match value {
        Value::String(s) if s.contains(token) => *s = s.replace(token, REDACTED),
        Value::Array(items) => items.iter_mut().for_each(|v| redact_value(v, token)),
        Value::Object(map) => map.values_mut().for_each(|v| redact_value(v, token)),
        _ => {}
    }
}

/// Replaces the token in a text, if there is a token.
pub fn redact_text(text: &str, token: Option<&str>) -> String {
    match token {
        Some(token) if !token.is_empty() => text.replace(token, REDACTED),
        _ => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn token_is_redacted_everywhere() {
        let mut value = json!({"a": "tok", "b": ["x tok y", {"c": "tok"}], "d": 1});
        redact_value(&mut value, "tok");
        assert_eq!(
            value,
            json!({"a": REDACTED, "b": [format!("x {REDACTED} y"), {"c": REDACTED}], "d": 1})
        );
        assert_eq!(redact_text("Bearer tok", Some("tok")), "Bearer [redacted]");
    }
}
