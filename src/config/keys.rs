//! Every configuration key the settings take, with what each accepts: the one list that
//! suggests the key meant by a typo and says which values a key accepts.
//!
//! Keys are written as paths: `executor.retry.max_attempts`; an element of a list of tables is
//! `auth.keys[].role`. A table (`executor.retry`) is not listed: it is every prefix of a listed
//! key. A unit test proves the list matches the fields of the settings structs.

use std::fmt;
use std::sync::LazyLock;

use crate::services::Service;

/// What a key accepts, as said to whoever set it wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepts {
    /// Any text (a number or boolean written there is read as its text).
    Text,
    /// A whole number up to the given largest (whether 0 is taken is the key's own check).
    Whole(u64),
    /// A number, fractions allowed.
    Number,
    /// `true` or `false`.
    Boolean,
    /// One of these words.
    OneOf(&'static [&'static str]),
    /// A list of text, or one comma-separated text.
    TextList,
    /// A table with any keys and text values.
    AnyKeys,
    /// A list of tables, each with the keys listed under `<key>[]`.
    ListOfTables,
    /// A table with the keys listed under it.
    Table,
}

impl fmt::Display for Accepts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Accepts::Text => f.write_str("text"),
            Accepts::Whole(u64::MAX) => f.write_str("a whole number"),
            Accepts::Whole(max) => write!(f, "a whole number up to {max}"),
            Accepts::Number => f.write_str("a number"),
            Accepts::Boolean => f.write_str("a boolean (true or false)"),
            Accepts::OneOf(words) => write!(f, "one of: {}", words.join(", ")),
            Accepts::TextList => f.write_str("a list of text (or one comma-separated text)"),
            Accepts::AnyKeys => f.write_str("a table of names to text"),
            Accepts::ListOfTables => f.write_str("a list of tables"),
            Accepts::Table => f.write_str("a table"),
        }
    }
}

impl Accepts {
    /// A value this accepts: it stands in for a refused one while looking for more problems,
    /// and fills the test configuration that names every key.
    pub fn sample(self) -> config::Value {
        use config::ValueKind;
        let kind = match self {
            Accepts::Text => ValueKind::String("x".to_owned()),
            Accepts::Whole(_) => ValueKind::U64(1),
            Accepts::Number => ValueKind::Float(1.5),
            Accepts::Boolean => ValueKind::Boolean(true),
            Accepts::OneOf(words) => {
                ValueKind::String(words.first().copied().unwrap_or_default().to_owned())
            }
            Accepts::TextList => ValueKind::Array(vec![Accepts::Text.sample()]),
            Accepts::AnyKeys => ValueKind::Table(
                [("X".to_owned(), Accepts::Text.sample())]
                    .into_iter()
                    .collect(),
            ),
            Accepts::ListOfTables => ValueKind::Array(Vec::new()),
            Accepts::Table => ValueKind::Table(config::Map::new()),
        };
        config::Value::new(None, kind)
    }
}

/// The roles a key of `auth.keys` may have.
const ROLES: &[&str] = &["viewer", "operator", "admin"];
/// The values of `logging.format`.
const LOG_FORMATS: &[&str] = &["text", "json"];
/// The values of `store.synchronous`.
const SYNCHRONOUS: &[&str] = &["normal", "full"];

const SECS: Accepts = Accepts::Whole(u64::MAX);
const U64: Accepts = Accepts::Whole(u64::MAX);
const USIZE: Accepts = Accepts::Whole(usize::MAX as u64);
const U32: Accepts = Accepts::Whole(u32::MAX as u64);
const U16: Accepts = Accepts::Whole(u16::MAX as u64);

/// Every key outside `services.<service>` (see [`SERVICE_KEYS`]).
const KEYS: &[(&str, Accepts)] = &[
    ("server.bind", Accepts::Text),
    ("server.public_url", Accepts::Text),
    ("server.cors_origins", Accepts::TextList),
    ("server.max_body_bytes", USIZE),
    ("server.header_read_timeout_secs", SECS),
    ("server.idle_timeout_secs", SECS),
    ("server.max_connections", USIZE),
    ("server.shutdown_grace_secs", SECS),
    ("server.handler_timeout_secs", SECS),
    ("auth.api_key", Accepts::Text),
    ("auth.token_secret", Accepts::Text),
    ("auth.token_ttl_secs", SECS),
    ("auth.keys", Accepts::ListOfTables),
    ("auth.keys[].name", Accepts::Text),
    ("auth.keys[].key", Accepts::Text),
    ("auth.keys[].key_sha256", Accepts::Text),
    ("auth.keys[].role", Accepts::OneOf(ROLES)),
    ("auth.api_key_file", Accepts::Text),
    ("auth.keys_file", Accepts::Text),
    ("auth.token_secret_file", Accepts::Text),
    ("auth.max_failures_per_minute", U32),
    ("auth.max_callbacks_per_minute", U32),
    ("executor.disable_vnf", Accepts::Boolean),
    ("executor.request_timeout_secs", SECS),
    ("executor.callback_timeout_secs", SECS),
    ("executor.operator_timeout_secs", SECS),
    ("executor.callback_heartbeat_secs", SECS),
    ("executor.max_trial_secs", SECS),
    ("executor.cleanup_failed_after_secs", SECS),
    ("executor.aborted_repository_status", Accepts::Text),
    ("executor.retry.max_attempts", U32),
    ("executor.retry.initial_backoff_ms", U64),
    ("executor.retry.max_backoff_ms", U64),
    ("executor.retry.multiplier", Accepts::Number),
    ("tls.disable_cert_verification", Accepts::Boolean),
    ("tls.ca_bundle_path", Accepts::Text),
    ("scheduler.poll_interval_secs", SECS),
    ("scheduler.automatic", Accepts::Boolean),
    ("scheduler.misfire_grace_secs", SECS),
    ("heartbeat.interval_secs", SECS),
    ("engine.keep_finished_secs", SECS),
    ("store.data_dir", Accepts::Text),
    ("store.retention_days", U64),
    ("store.synchronous", Accepts::OneOf(SYNCHRONOUS)),
    ("logging.dir", Accepts::Text),
    ("logging.level", Accepts::Text),
    ("logging.format", Accepts::OneOf(LOG_FORMATS)),
    ("logging.keep_days", USIZE),
    ("facilities", Accepts::AnyKeys),
    ("services.abstraction_layer.url", Accepts::Text),
    ("services.abstraction_layer.port", U16),
    ("services.abstraction_layer.username", Accepts::Text),
    ("services.abstraction_layer.password", Accepts::Text),
    ("services.abstraction_layer.interval", U64),
];

/// The keys of each outbound service, under `services.<service>` for every [`Service`].
const SERVICE_KEYS: &[(&str, Accepts)] = &[
    ("url", Accepts::Text),
    ("apikey", Accepts::Text),
    ("username", Accepts::Text),
    ("password", Accepts::Text),
    ("oauth2.auth_url", Accepts::Text),
    ("oauth2.client_id", Accepts::Text),
    ("oauth2.client_secret", Accepts::Text),
    ("retry.max_attempts", U32),
    ("retry.initial_backoff_ms", U64),
    ("retry.max_backoff_ms", U64),
    ("retry.multiplier", Accepts::Number),
];

/// Every listed key with what it accepts, services expanded.
pub fn known() -> &'static [(String, Accepts)] {
    static KNOWN: LazyLock<Vec<(String, Accepts)>> =
        LazyLock::new(|| {
            let mut keys: Vec<(String, Accepts)> = KEYS
                .iter()
                .map(|(key, accepts)| ((*key).to_owned(), *accepts))
                .collect();
            for service in Service::ALL {
                keys.extend(SERVICE_KEYS.iter().map(|(key, accepts)| {
                    (format!("services.{}.{key}", service.name()), *accepts)
                }));
            }
            keys
        });
    &KNOWN
}

/// Every table: each proper prefix of a listed key, without the `[]` of a list element.
fn tables() -> &'static [String] {
    static TABLES: LazyLock<Vec<String>> = LazyLock::new(|| {
        let mut tables: Vec<String> = known()
            .iter()
            .flat_map(|(key, _)| {
                key.match_indices('.')
                    .map(|(at, _)| key[..at].trim_end_matches("[]").to_owned())
                    .collect::<Vec<_>>()
            })
            .collect();
        tables.sort();
        tables.dedup();
        tables
    });
    &TABLES
}

/// A concrete path (`auth.keys[2].role`) written the way the list writes it (`auth.keys[].role`).
fn pattern(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push_str("[]");
            }
            ']' => in_index = false,
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
}

/// Writes the indices of `path` back into the `[]`s of a listed key, in order.
fn with_indices(key: &str, path: &str) -> String {
    let mut indices = path
        .split('[')
        .skip(1)
        .filter_map(|rest| rest.split_once(']').map(|(index, _)| index));
    let mut parts = key.split("[]");
    let mut out = parts.next().unwrap_or_default().to_owned();
    for part in parts {
        out.push('[');
        out.push_str(indices.next().unwrap_or("0"));
        out.push(']');
        out.push_str(part);
    }
    out
}

/// What the key at `path` accepts, if it is a key or table of the settings.
pub fn accepts(path: &str) -> Option<Accepts> {
    let pattern = pattern(path);
    if let Some((_, accepts)) = known().iter().find(|(key, _)| *key == pattern) {
        return Some(*accepts);
    }
    if tables().contains(&pattern) {
        return Some(Accepts::Table);
    }
    // An element of a list of tables (`auth.keys[0]`) is a table too.
    pattern
        .strip_suffix("[]")
        .and_then(|list| known().iter().find(|(key, _)| key == list))
        .map(|_| Accepts::Table)
}

/// The keys directly under the table at `path`, for telling what a table takes.
pub fn children(path: &str) -> Vec<String> {
    let prefix = match path {
        "" => String::new(),
        path => format!("{}.", pattern(path)),
    };
    let mut children: Vec<String> = Vec::new();
    for rest in known()
        .iter()
        .filter_map(|(key, _)| key.strip_prefix(&prefix))
    {
        let child = rest.split(['.', '[']).next().unwrap_or(rest);
        if !children.iter().any(|c| c == child) {
            children.push(child.to_owned());
        }
    }
    children
}

/// The known key or table nearest to `path` by edit distance, if any is near enough to be the
/// one meant. The indices of `path` are kept (`auth.keys[0].rol` → `auth.keys[0].role`).
pub fn nearest(path: &str) -> Option<String> {
    /// Below this similarity (0 to 1) a suggestion is more likely noise than help.
    const NEAR_ENOUGH: f64 = 0.7;
    let pattern = pattern(path);
    known()
        .iter()
        .map(|(key, _)| key.as_str())
        .chain(tables().iter().map(String::as_str))
        .map(|candidate| {
            (
                strsim::normalized_damerau_levenshtein(&pattern, candidate),
                candidate,
            )
        })
        .filter(|(similarity, _)| *similarity >= NEAR_ENOUGH)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, key)| with_indices(key, path))
}

/// The environment variable that sets `path` (`LCM__EXECUTOR__REQUEST_TIMEOUT_SECS`); none for
/// a key inside a list.
pub fn env_var(path: &str) -> Option<String> {
    (!path.contains('[')).then(|| format!("LCM__{}", path.to_uppercase().replace('.', "__")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_find_the_key_meant() {
        for (typo, meant) in [
            (
                "executor.request_timeuot_secs",
                "executor.request_timeout_secs",
            ),
            ("executor.request_timeout", "executor.request_timeout_secs"),
            ("exector", "executor"),
            ("logging.formt", "logging.format"),
            ("auth.keys[3].rol", "auth.keys[3].role"),
            (
                "services.trial_repository.api_key",
                "services.trial_repository.apikey",
            ),
            (
                "services.kpi_monitoring.retry.max_attempt",
                "services.kpi_monitoring.retry.max_attempts",
            ),
            (
                "server.request_timeout_secs",
                "executor.request_timeout_secs",
            ),
        ] {
            assert_eq!(nearest(typo).as_deref(), Some(meant), "{typo}");
        }
        assert_eq!(nearest("colour"), None);
        assert_eq!(nearest("executor.timeout"), None, "too far to guess");
    }

    #[test]
    fn what_a_key_accepts() {
        assert_eq!(accepts("logging.format"), Some(Accepts::OneOf(LOG_FORMATS)));
        assert_eq!(accepts("auth.keys[1].role"), Some(Accepts::OneOf(ROLES)));
        assert_eq!(accepts("auth.keys[1]"), Some(Accepts::Table));
        assert_eq!(accepts("auth.keys"), Some(Accepts::ListOfTables));
        assert_eq!(accepts("executor.retry"), Some(Accepts::Table));
        assert_eq!(
            accepts("services.kpi_monitoring.oauth2"),
            Some(Accepts::Table)
        );
        assert_eq!(accepts("executor.nope"), None);
        assert_eq!(
            children("executor.retry"),
            [
                "max_attempts",
                "initial_backoff_ms",
                "max_backoff_ms",
                "multiplier"
            ]
        );
        assert_eq!(
            children("auth.keys[0]"),
            ["name", "key", "key_sha256", "role"]
        );
        assert_eq!(
            Accepts::Whole(u64::from(u16::MAX)).to_string(),
            "a whole number up to 65535"
        );
    }

    /// Every listed key set to a value it accepts, with nothing else.
    fn naming_every_key() -> config::Config {
        let mut builder = config::Config::builder();
        for (key, accepts) in known() {
            if *accepts != Accepts::ListOfTables {
                builder = builder
                    .set_override(key.replace("[]", "[0]"), accepts.sample())
                    .unwrap();
            }
        }
        builder.build().unwrap()
    }

    #[test]
    fn every_listed_key_is_a_setting_and_every_setting_is_listed() {
        let mut ignored = Vec::new();
        let settings: Result<crate::config::Settings, _> =
            serde_ignored::deserialize(naming_every_key(), |path| ignored.push(path.to_string()));
        let settings = settings.expect("a configuration of only the listed keys is complete");
        assert_eq!(
            ignored,
            Vec::<String>::new(),
            "listed keys the settings ignore"
        );
        assert_eq!(settings.auth.keys.len(), 1);
        assert!(settings.services.kpi_monitoring.oauth2.is_some());
        assert!(settings.services.trial_enforcement.retry.is_some());

        // The other way: each struct's fields are the keys listed under its table.
        use crate::config::*;
        use serde_aux::serde_introspection::serde_introspect;
        let mut tables: Vec<(String, &[&str])> = vec![
            (String::new(), serde_introspect::<Settings>()),
            ("server".into(), serde_introspect::<ServerSettings>()),
            ("auth".into(), serde_introspect::<AuthSettings>()),
            ("auth.keys[]".into(), serde_introspect::<KeySettings>()),
            ("executor".into(), serde_introspect::<ExecutorSettings>()),
            ("executor.retry".into(), serde_introspect::<RetrySettings>()),
            ("tls".into(), serde_introspect::<TlsSettings>()),
            ("scheduler".into(), serde_introspect::<SchedulerSettings>()),
            ("store".into(), serde_introspect::<StoreSettings>()),
            ("engine".into(), serde_introspect::<EngineSettings>()),
            ("heartbeat".into(), serde_introspect::<HeartbeatSettings>()),
            ("logging".into(), serde_introspect::<LoggingSettings>()),
            ("services".into(), serde_introspect::<ServicesSettings>()),
            (
                "services.abstraction_layer".into(),
                serde_introspect::<AbstractionLayerSettings>(),
            ),
        ];
        for service in Service::ALL {
            let name = service.name();
            tables.extend([
                (
                    format!("services.{name}"),
                    serde_introspect::<ServiceSettings>(),
                ),
                (
                    format!("services.{name}.oauth2"),
                    serde_introspect::<OAuth2Settings>(),
                ),
                (
                    format!("services.{name}.retry"),
                    serde_introspect::<RetryOverride>(),
                ),
            ]);
        }
        for (table, fields) in tables {
            let mut listed = children(&table);
            listed.sort();
            let mut fields: Vec<String> = fields.iter().map(|f| (*f).to_owned()).collect();
            fields.sort();
            assert_eq!(listed, fields, "the keys of `{table}`");
        }
        assert_eq!(serde_introspect::<Role>(), ROLES);
        assert_eq!(serde_introspect::<LogFormat>(), LOG_FORMATS);
    }

    #[test]
    fn environment_variables_of_keys() {
        assert_eq!(
            env_var("executor.request_timeout_secs").as_deref(),
            Some("LCM__EXECUTOR__REQUEST_TIMEOUT_SECS")
        );
        assert_eq!(env_var("auth.keys[0].role"), None);
    }
}
