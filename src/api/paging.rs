//! Pages of a listing (`/trials`, `/audit`): how many rows, and an opaque cursor that says
//! where the next page starts.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::error::ApiError;

/// Rows per page when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 50;
/// The most rows a page may have.
const MAX_LIMIT: usize = 500;

/// Refuses a query parameter given twice, unless it is one of `repeatable`: two of any other
/// would leave one unheeded.
pub fn once_each(pairs: &[(String, String)], repeatable: &[&str]) -> Result<(), ApiError> {
    let mut seen = std::collections::HashSet::new();
    for (key, _) in pairs {
        if !repeatable.contains(&key.as_str()) && !seen.insert(key) {
            return Err(ApiError::bad_request(format!(
                "query parameter '{key}' is given more than once"
            )));
        }
    }
    Ok(())
}

/// The `limit` parameter, checked.
pub fn limit(value: &str) -> Result<usize, ApiError> {
    value
        .parse::<usize>()
        .ok()
        .filter(|l| (1..=MAX_LIMIT).contains(l))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "limit must be a whole number from 1 to {MAX_LIMIT}, not '{value}'"
            ))
        })
}

/// The cursor that carries `position` to the next request.
pub fn cursor(position: &str) -> String {
    URL_SAFE_NO_PAD.encode(position)
}

/// The position a `cursor` parameter carries, read by `read`; a cursor this service did not
/// give is refused.
pub fn position<T>(cursor: &str, read: impl FnOnce(&str) -> Option<T>) -> Result<T, ApiError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| read(&text))
        .ok_or_else(|| {
            ApiError::bad_request("cursor is not one this service gave: use next_cursor as it came")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parameter_given_twice_is_refused_unless_it_may_be_repeated() {
        let pairs = |keys: &[&str]| -> Vec<(String, String)> {
            keys.iter()
                .map(|k| ((*k).to_owned(), "1".to_owned()))
                .collect()
        };
        assert!(once_each(&pairs(&["limit", "cursor"]), &[]).is_ok());
        assert!(once_each(&pairs(&["limit", "cursor", "limit"]), &[]).is_err());
        assert!(once_each(&pairs(&["status", "status"]), &["status"]).is_ok());
    }

    #[test]
    fn limits_and_cursors_are_checked() {
        assert!(limit("0").is_err());
        assert!(limit("501").is_err());
        assert!(limit("ten").is_err());
        assert_eq!(limit("500").unwrap(), 500);
        let seq = |text: &str| text.strip_prefix("seq:")?.parse::<i64>().ok();
        assert_eq!(position(&cursor("seq:42"), seq).unwrap(), 42);
        assert!(position("%%%", seq).is_err());
        assert!(position(&cursor("other"), seq).is_err());
    }
}
