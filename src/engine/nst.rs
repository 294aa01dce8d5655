//! The trial object's `nst` field: a JSON object, or text holding a Python dict literal (the
//! registry stores it as text, with single quotes and `True`/`False`/`None`).

use serde_json::Value;

/// Parses `nst` into JSON; `None` when it is neither an object nor a parsable literal.
pub fn parse(nst: &Value) -> Option<Value> {
    match nst {
        Value::Object(_) => Some(nst.clone()),
        Value::String(text) => {
            let json5_text = python_keywords_to_json(text);
            json5::from_str::<Value>(&json5_text)
                .ok()
                .filter(Value::is_object)
        }
        _ => None,
    }
}

/// Rewrites the bare words `True`, `False` and `None` outside string literals into their JSON
/// spelling; quoting, escapes and trailing commas are left to the JSON5 parser.
fn python_keywords_to_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        out.push_str(match word.as_str() {
            "True" => "true",
            "False" => "false",
            "None" => "null",
            other => other,
        });
        word.clear();
    };
    for c in text.chars() {
        if let Some(q) = quote {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
            continue;
        }
        flush(&mut word, &mut out);
        if c == '\'' || c == '"' {
            quote = Some(c);
        }
        out.push(c);
    }
    flush(&mut word, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_pass_through() {
        let nst = json!({"a": 1});
        assert_eq!(parse(&nst), Some(nst));
    }

    #[test]
    fn python_literals_become_json() {
        let nst = json!(
            "{'name': 'eMBB', 'isolated': True, 'shared': False, 'owner': None, 'text': 'True None', 'n': [1, 2,],}"
        );
        assert_eq!(
            parse(&nst),
            Some(
                json!({"name": "eMBB", "isolated": true, "shared": false, "owner": null, "text": "True None", "n": [1, 2]})
            )
        );
        assert_eq!(
            parse(&json!(r#"{"quoted": "it's"}"#)),
            Some(json!({"quoted": "it's"}))
        );
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(parse(&json!("{'unterminated")), None);
        assert_eq!(parse(&json!("[1, 2]")), None);
        assert_eq!(parse(&json!(42)), None);
    }
}
