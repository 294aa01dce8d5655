//! Validated types that guard the edge: once inside the core, a [`TrialId`] is always valid and
//! a [`StartTime`] always carries its instant exactly.

use std::fmt;

use chrono::{DateTime, FixedOffset, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

/// A trial id as the platform chose it: `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$` (SPEC §3). Safe
/// to use in a URL path segment and in a file name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TrialId(String);

/// Why a string is not a trial id.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid trial id '{shown}': use 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit"
)]
pub struct InvalidTrialId {
    shown: String,
}

impl TrialId {
    /// What a trial id looks like, as a regular expression (for the OpenAPI document).
    pub const PATTERN: &str = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$";

    /// Validates a trial id.
    pub fn parse(raw: &str) -> Result<Self, InvalidTrialId> {
        let mut chars = raw.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
        let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if first_ok && rest_ok && raw.len() <= 128 {
            Ok(Self(raw.to_owned()))
        } else {
            // Echo at most a short, printable prefix so a hostile id cannot flood the answer.
            let shown: String = raw
                .chars()
                .take(40)
                .map(|c| if c.is_control() { '?' } else { c })
                .collect();
            Err(InvalidTrialId { shown })
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TrialId {
    type Error = InvalidTrialId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<TrialId> for String {
    fn from(id: TrialId) -> Self {
        id.0
    }
}

impl fmt::Display for TrialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A start time with its offset, as the operator wrote it (`2021-02-23T07:17:15+02:00`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartTime(DateTime<FixedOffset>);

/// Why a start time was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum InvalidStartTime {
    #[error(
        "start_time '{0}' is not an RFC 3339 date-time with an offset, like 2021-02-23T07:17:15+02:00 or 2021-03-26T10:00:00Z"
    )]
    Malformed(String),
    #[error(
        "start_time '{0}' has the form of an RFC 3339 date-time, but no such time exists: a field is out of range (a day its month does not have, such as 29 February of a common year, a month past 12, an hour past 23, a minute past 59, an offset of 24 hours or more)"
    )]
    NoSuchTime(String),
    #[error("start_time {0} is in the past (now is {1})")]
    Past(String, String),
    #[error(
        "start_time '{0}' is after 9999-12-31T23:59:59Z, the latest time that can be written back in RFC 3339"
    )]
    TooLate(String),
    #[error(
        "start_time '{0}' is a leap second (second 60), which a timer cannot wait for: give the second before or after it"
    )]
    LeapSecond(String),
}

impl StartTime {
    /// Parses an RFC 3339 time; a time without an offset is refused rather than guessed, and
    /// so is one whose instant in UTC has a five-digit year (it could not be shown in a form
    /// that reads back).
    pub fn parse(raw: &str) -> Result<Self, InvalidStartTime> {
        let shown = || start_of(raw, 64).to_owned();
        let time = DateTime::parse_from_rfc3339(raw.trim()).map_err(|e| match e.kind() {
            chrono::format::ParseErrorKind::OutOfRange => InvalidStartTime::NoSuchTime(shown()),
            _ => InvalidStartTime::Malformed(shown()),
        })?;
        if time.with_timezone(&Utc) > latest() {
            return Err(InvalidStartTime::TooLate(shown()));
        }
        if chrono::Timelike::nanosecond(&time) >= 1_000_000_000 {
            return Err(InvalidStartTime::LeapSecond(shown()));
        }
        Ok(Self(time))
    }

    /// Parses and requires the time to be after `now`.
    pub fn parse_future(raw: &str, now: DateTime<Utc>) -> Result<Self, InvalidStartTime> {
        let time = Self::parse(raw)?;
        time.ensure_future(now)?;
        Ok(time)
    }

    /// Refuses a time that is not after `now`.
    pub fn ensure_future(&self, now: DateTime<Utc>) -> Result<(), InvalidStartTime> {
        if self.utc() <= now {
            return Err(InvalidStartTime::Past(
                self.to_string(),
                now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ));
        }
        Ok(())
    }

    /// The instant in UTC.
    pub fn utc(&self) -> DateTime<Utc> {
        self.0.with_timezone(&Utc)
    }
}

/// `text` if it has at most `max` characters; else its start, marked with `…` where it was
/// cut, `max` characters in all: what is kept or shown of a text that comes from outside, so
/// it cannot make a record as large as itself.
pub fn at_most(text: String, max: usize) -> String {
    if start_of(&text, max).len() == text.len() {
        return text;
    }
    format!("{}…", start_of(&text, max.saturating_sub(1)))
}

/// Whether `c` could start a line of its own where text is shown: a control character (a
/// line break, a tab, NUL, ESC…) or a Unicode line or paragraph separator.
pub fn breaks_line(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// The first `max` characters of `text`, borrowed.
pub fn start_of(text: &str, max: usize) -> &str {
    text.char_indices()
        .nth(max)
        .map_or(text, |(cut, _)| &text[..cut])
}

/// The latest instant RFC 3339 can write: 9999-12-31T23:59:59Z.
fn latest() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(9999, 12, 31)
        .and_then(|day| day.and_hms_opt(23, 59, 59))
        .map_or(DateTime::<Utc>::MAX_UTC, |time| time.and_utc())
}

impl From<DateTime<Utc>> for StartTime {
    fn from(time: DateTime<Utc>) -> Self {
        Self(time.fixed_offset())
    }
}

impl fmt::Display for StartTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trial_ids() {
        for ok in ["t1", "A", "trial-2021_03.x", &"a".repeat(128)] {
            assert!(TrialId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-x",
            ".hidden",
            "../etc",
            "a/b",
            "a b",
            "é",
            &"a".repeat(129),
            "a\n",
        ] {
            assert!(TrialId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn start_times_keep_their_offset() {
        let t = StartTime::parse("2021-02-23T07:17:15+02:00").unwrap();
        assert_eq!(t.utc().to_rfc3339(), "2021-02-23T05:17:15+00:00");
        assert!(StartTime::parse("2021-02-23T07:17:15").is_err());
        for impossible in [
            "2021-02-30T07:17:15Z",
            "2027-02-29T12:00:00Z",
            "2030-04-31T12:00:00+02:00",
            "2030-06-01T24:00:00Z",
            "2030-13-01T00:00:00Z",
            "2030-12-01T00:00:00+24:00",
        ] {
            assert!(
                matches!(
                    StartTime::parse(impossible),
                    Err(InvalidStartTime::NoSuchTime(_))
                ),
                "{impossible}"
            );
        }
        assert!(
            StartTime::parse("2028-02-29T12:00:00Z").is_ok(),
            "a leap day"
        );
        for malformed in ["tomorrow", "2030-12-01T00:00:00Zjunk"] {
            assert!(
                matches!(
                    StartTime::parse(malformed),
                    Err(InvalidStartTime::Malformed(_))
                ),
                "{malformed}"
            );
        }
        for leap in ["2030-06-30T23:59:60Z", "2030-06-01T12:00:60.5+02:00"] {
            assert!(
                matches!(StartTime::parse(leap), Err(InvalidStartTime::LeapSecond(_))),
                "{leap}"
            );
        }
        let now = Utc::now();
        assert!(matches!(
            StartTime::parse_future("2021-02-23T07:17:15Z", now),
            Err(InvalidStartTime::Past(..))
        ));
    }

    #[test]
    fn start_times_read_back_as_written_up_to_the_last_four_digit_year() {
        for raw in [
            "9999-12-31T23:59:59Z",
            "9999-12-31T23:59:59+05:00",
            "9999-12-31T00:00:00-23:59",
        ] {
            let time = StartTime::parse(raw).unwrap();
            let shown = serde_json::to_value(time).unwrap();
            let again = StartTime::parse(shown.as_str().unwrap()).unwrap();
            assert_eq!(again, time, "{raw} shown as {shown}");
            assert_eq!(StartTime::parse(&time.to_string()).unwrap(), time);
        }
        for raw in [
            "9999-12-31T23:59:59-23:59",
            "9999-12-31T23:59:59.5Z",
            "9999-12-31T23:00:00-01:00",
        ] {
            assert!(
                matches!(StartTime::parse(raw), Err(InvalidStartTime::TooLate(_))),
                "{raw}"
            );
        }
    }
}
