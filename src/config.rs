//! Typed settings, loaded in layers with the `config` crate (SPEC §9).
//!
//! Order, later overriding earlier: the compiled-in `config/default.toml`, a
//! `config/default.toml` in the working directory, the file named by `--config` or
//! `LCM_CONFIG`, and `LCM__SECTION__KEY` environment variables. A key the settings do not take
//! is refused, naming the known key nearest to it; a value of the wrong type is refused, saying
//! what the key accepts; [`Settings::validate`] turns a configuration that cannot work into an
//! error that names the key. Each says where the key was set (the file or the variable).

mod keys;
mod load;

pub use load::{ConfigFile, FileOrigin};

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use url::Url;

use crate::engine::redact::MIN_SECRET_LEN;

/// The built-in defaults, so the binary runs from any working directory.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

/// Placeholder values shipped in the defaults; running with them logs a loud warning.
pub const PLACEHOLDER_API_KEY: &str = "Please_change_this";
/// See [`PLACEHOLDER_API_KEY`].
const PLACEHOLDER_TOKEN_SECRET: &str = "CHANGE_THIS";

/// The longest duration a setting may give (ten years): beyond it timers overflow.
const MAX_DURATION_SECS: u64 = 10 * 366 * 24 * 3600;

/// A configuration that cannot be loaded or cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The `config` crate failed in a way not told more precisely.
    #[error("cannot load configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A value parsed but cannot work; names the key.
    #[error("configuration key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
    /// The file named by `--config` or `LCM_CONFIG` is not there.
    #[error("{0}: there is no configuration file there")]
    NoFile(ConfigFile),
    /// A configuration file could not be read or is not TOML.
    #[error("configuration file {}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    /// An `LCM__…` environment variable whose value is not UTF-8 text.
    #[error("environment variable {0}: the value is not UTF-8 text")]
    NotText(String),
    /// Unknown keys and refused values, each with where it was set; one a line.
    #[error("{0}")]
    Refused(load::Problems),
    /// Values that cannot work, one a line.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several(Vec<ConfigError>),
}

impl ConfigError {
    /// The one error that tells `problems`: none, one, or several.
    fn of(mut problems: Vec<ConfigError>) -> Option<ConfigError> {
        match problems.len() {
            0 => None,
            1 => Some(problems.remove(0)),
            _ => Some(Self::Several(problems)),
        }
    }
}

/// The most `server.max_connections` can be: far above what one process can hold open (each
/// connection is a file descriptor), and below what counting them with a semaphore allows.
const MAX_CONNECTIONS_LIMIT: usize = 10_000_000;

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// A secret string: never printed by `Debug` or `Display`, nor by the error of a value of the
/// wrong type (serde's would quote it).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SecretText;

        impl serde::de::Visitor<'_> for SecretText {
            type Value = Secret;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a secret as a string")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret::new(v))
            }

            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(E::custom(NOT_TEXT))
            }

            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
                Err(E::custom(NOT_TEXT))
            }

            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
                Err(E::custom(NOT_TEXT))
            }

            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(E::custom(NOT_TEXT))
            }
        }

        const NOT_TEXT: &str = "a secret must be a string (put it in quotes)";
        deserializer.deserialize_string(SecretText)
    }
}

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// All settings of the service.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub auth: AuthSettings,
    pub executor: ExecutorSettings,
    pub tls: TlsSettings,
    pub scheduler: SchedulerSettings,
    pub heartbeat: HeartbeatSettings,
    pub engine: EngineSettings,
    pub store: StoreSettings,
    pub logging: LoggingSettings,
    /// Facility keys used by the trial registry, mapped to the names trial enforcement knows.
    pub facilities: BTreeMap<String, String>,
    pub services: ServicesSettings,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    pub bind: String,
    pub public_url: String,
    /// A list, or (from the environment) one comma-separated string.
    #[serde(deserialize_with = "list_or_commas")]
    pub cors_origins: Vec<String>,
    pub max_body_bytes: usize,
    /// A connection whose request head has not arrived in time is closed (slowloris).
    pub header_read_timeout_secs: u64,
    /// An idle keep-alive connection is closed after this long.
    pub idle_timeout_secs: u64,
    /// Open connections at most; beyond it new ones wait. A request whose caller hung up
    /// keeps its connection's place until its handling ends.
    pub max_connections: usize,
    /// How long open connections get on SIGTERM/SIGINT before the process exits.
    pub shutdown_grace_secs: u64,
    /// A request not answered within this long gets 504; its handling goes on to its end.
    pub handler_timeout_secs: u64,
}

fn list_or_commas<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrText {
        List(Vec<String>),
        Text(String),
    }
    Ok(match ListOrText::deserialize(deserializer)? {
        ListOrText::List(list) => list,
        ListOrText::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    /// The `admin` key named `default`.
    pub api_key: Secret,
    pub token_secret: Secret,
    pub token_ttl_secs: u64,
    /// Named keys with their roles.
    #[serde(default)]
    pub keys: Vec<KeySettings>,
    /// A file holding `api_key` (trailing newline trimmed).
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// A TOML file of `[[keys]]` tables shaped like `auth.keys`.
    #[serde(default)]
    pub keys_file: Option<PathBuf>,
    /// A file holding `token_secret` (trailing newline trimmed).
    #[serde(default)]
    pub token_secret_file: Option<PathBuf>,
    /// Failed authentications allowed per client address and minute.
    pub max_failures_per_minute: u32,
    /// Requests allowed per trial's callback token and minute.
    pub max_callbacks_per_minute: u32,
    /// The keys read from `keys_file` by [`Settings::load`].
    #[serde(skip)]
    pub keys_from_file: Vec<KeySettings>,
    /// Where these settings were loaded from, so the keys can be read again (SIGHUP); `None`
    /// for settings made in code, which have nothing to read again.
    #[serde(skip)]
    pub sources: Option<Sources>,
}

/// The sources a configuration was loaded from: the `--config` file and the environment.
#[derive(Clone)]
pub struct Sources {
    file: Option<ConfigFile>,
    /// Whether `config/default.toml` of the working directory was read.
    working_file: bool,
    env: Option<HashMap<String, String>>,
}

impl fmt::Debug for Sources {
    // The environment holds secrets (`LCM__AUTH__API_KEY`): only the file is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sources")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// The shape of `auth.keys_file` (a key it does not take is told with the nearest one).
#[derive(Deserialize)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<KeySettings>,
}

/// One named API key (`auth.keys`): the key itself or its SHA-256, and its role.
#[derive(Debug, Clone, Deserialize)]
pub struct KeySettings {
    pub name: String,
    #[serde(default)]
    pub key: Option<Secret>,
    /// Hex SHA-256 of the key, so the configuration need not hold the key itself.
    #[serde(default)]
    pub key_sha256: Option<String>,
    pub role: Role,
}

/// What a key may do (SPEC §15); each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every `GET`.
    Viewer,
    /// Also runs trials: active, finish, pause, resume, step, abort, schedule, unschedule.
    Operator,
    /// Everything, including `/debug/*`, token minting and the scheduling switch.
    Admin,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        })
    }
}

/// The name `auth.api_key` goes by among the keys.
const DEFAULT_KEY_NAME: &str = "default";
/// The actor the audit log names when no credential was recognised: no key may be named so.
pub const ANONYMOUS_ACTOR: &str = "anonymous";
/// A key shorter than this is warned about: it could be guessed.
const SHORT_KEY_CHARS: usize = 16;

/// A configured secret shorter than this (and long enough to be hidden at all) is warned of:
/// hidden wherever its text appears, it is found inside ordinary words.
const SHORT_SECRET: usize = 8;

/// Why `key` could never be presented as given: HTTP drops the blanks around a header's value
/// (and a cookie's), so a key that starts or ends with one is never matched.
fn unpresentable(key: &str) -> Option<&'static str> {
    (key.trim() != key).then_some(
        "starts or ends with a blank, which HTTP drops from a header: it could never be presented",
    )
}

/// A validated API key: its name, the SHA-256 of its secret, and its role. Requests are
/// checked against the digest, so the key itself need not be kept.
#[derive(Clone, PartialEq, Eq)]
pub struct NamedKey {
    pub name: String,
    pub sha256: [u8; 32],
    pub role: Role,
}

impl fmt::Debug for NamedKey {
    // The digest of a short key can be guessed offline: it is not shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NamedKey")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl NamedKey {
    /// The SHA-256 of a presented or configured key.
    pub fn digest(key: &str) -> [u8; 32] {
        Sha256::digest(key.as_bytes()).into()
    }
}

impl AuthSettings {
    /// The secret values of this section: the API keys given as they are (not those given
    /// by digest) and the token secret.
    pub fn secret_values(&self) -> Vec<String> {
        (self.written_keys().map(|(_, key)| key))
            .chain([self.token_secret.expose()])
            .map(str::to_owned)
            .collect()
    }

    /// The name and the key of each API key given as it is (not by digest).
    pub fn written_keys(&self) -> impl Iterator<Item = (&str, &str)> {
        let default =
            (!self.api_key.expose().is_empty()).then(|| (DEFAULT_KEY_NAME, self.api_key.expose()));
        default.into_iter().chain(
            (self.keys.iter().chain(&self.keys_from_file))
                .filter_map(|k| Some((k.name.as_str(), k.key.as_ref()?.expose()))),
        )
    }

    /// Warnings about keys that work but should not: the placeholder, and keys short enough
    /// to guess (by name, never the key). Told at start and at every reload.
    pub fn key_warnings(&self) -> Vec<String> {
        let placeholder = NamedKey::digest(PLACEHOLDER_API_KEY);
        let default = (!self.api_key.expose().is_empty())
            .then(|| (DEFAULT_KEY_NAME, Some(self.api_key.expose()), None));
        let named = self.keys.iter().chain(&self.keys_from_file).map(|k| {
            let secret = k.key.as_ref().map(Secret::expose);
            (k.name.as_str(), secret, k.key_sha256.as_deref())
        });
        let mut warnings = Vec::new();
        for (name, secret, hex) in default.into_iter().chain(named) {
            let digest = secret
                .map(NamedKey::digest)
                .or_else(|| hex.and_then(parse_sha256));
            if digest == Some(placeholder) {
                warnings.push(if name == DEFAULT_KEY_NAME {
                    "auth.api_key is still the built-in placeholder: anyone who read the defaults can call this API; set LCM__AUTH__API_KEY".to_owned()
                } else {
                    format!(
                        "key '{name}' is the built-in placeholder: anyone who read the defaults can call this API with its role"
                    )
                });
            } else if let Some(chars) = secret.map(|key| key.chars().count())
                && chars < SHORT_KEY_CHARS
            {
                warnings.push(format!(
                    "key '{name}' is {chars} character(s) long: a key shorter than {SHORT_KEY_CHARS} can be guessed; use a long random one"
                ));
            }
        }
        warnings
    }

    /// The configuration key that gives the key named `name`: `auth.api_key`, `auth.keys` or
    /// `auth.keys_file`.
    pub fn source_of(&self, name: &str) -> &'static str {
        if name == DEFAULT_KEY_NAME && !self.api_key.expose().is_empty() {
            "auth.api_key"
        } else if self.keys.iter().any(|k| k.name == name) {
            "auth.keys"
        } else {
            "auth.keys_file"
        }
    }

    /// Every API key these settings give, validated: `api_key` (unless empty) as the `admin` key
    /// named `default`, then `keys`, then the keys of `keys_file`. Each key has exactly one of
    /// `key` and `key_sha256`; names are unique; no two keys share a secret; at least one key
    /// exists.
    pub fn api_keys(&self) -> Result<Vec<NamedKey>, ConfigError> {
        let (keys, problems) = self.key_problems();
        match ConfigError::of(problems) {
            None => Ok(keys),
            Some(e) => Err(e),
        }
    }

    /// The valid keys these settings give, and every problem of the others.
    fn key_problems(&self) -> (Vec<NamedKey>, Vec<ConfigError>) {
        // Each key with the configuration key to name when it is wrong, and where under it.
        let mut keys: Vec<(String, String, NamedKey)> = Vec::new();
        // Every problem is told, not only the first.
        let mut problems = Vec::new();
        if let Some(why) = unpresentable(self.api_key.expose()) {
            problems.push(invalid("auth.api_key", why));
        } else if !self.api_key.expose().is_empty() {
            keys.push((
                "auth.api_key".to_owned(),
                String::new(),
                NamedKey {
                    name: DEFAULT_KEY_NAME.to_owned(),
                    sha256: NamedKey::digest(self.api_key.expose()),
                    role: Role::Admin,
                },
            ));
        }
        for (i, key) in self.keys.iter().enumerate() {
            let at = format!("auth.keys[{i}]");
            match key.validate() {
                Ok(key) => keys.push((at, String::new(), key)),
                Err(reason) => problems.push(invalid(&at, reason)),
            }
        }
        if let Some(path) = &self.keys_file {
            for (i, key) in self.keys_from_file.iter().enumerate() {
                let at = format!("{}: keys[{i}]: ", path.display());
                match key.validate() {
                    Ok(key) => keys.push(("auth.keys_file".to_owned(), at, key)),
                    Err(reason) => {
                        problems.push(invalid("auth.keys_file", format!("{at}{reason}")));
                    }
                }
            }
        }
        if keys.is_empty() && problems.is_empty() {
            problems.push(invalid(
                "auth.api_key",
                "must not be empty unless auth.keys or auth.keys_file give other keys",
            ));
        }
        let token_secret = NamedKey::digest(self.token_secret.expose());
        for (i, (config_key, at, key)) in keys.iter().enumerate() {
            if key.sha256 == token_secret {
                problems.push(invalid(
                    config_key,
                    format!(
                        "{at}key '{}' is auth.token_secret, and whoever holds it could sign callback tokens for any trial: give the key a secret of its own",
                        key.name
                    ),
                ));
            }
            if let Some((_, _, first)) = keys[..i].iter().find(|(_, _, k)| k.name == key.name) {
                problems.push(invalid(
                    config_key,
                    format!(
                        "{at}the name '{}' is already taken by another key",
                        first.name
                    ),
                ));
            }
            if let Some((_, _, first)) = keys[..i].iter().find(|(_, _, k)| k.sha256 == key.sha256) {
                problems.push(invalid(
                    config_key,
                    format!(
                        "{at}key '{}' has the same secret as key '{}': give each key its own",
                        key.name, first.name
                    ),
                ));
            }
        }
        (keys.into_iter().map(|(_, _, key)| key).collect(), problems)
    }

    /// These settings loaded again from the sources they came from (with their files read
    /// again); `None` for settings made in code. Reads files: call it off the async threads.
    pub fn reload(&self) -> Option<Result<AuthSettings, ConfigError>> {
        let sources = self.sources.as_ref()?;
        Some(
            Settings::load_with_env(sources.file.as_ref(), sources.env.clone())
                .map(|settings| settings.auth),
        )
    }

    /// Reads `api_key_file` and `token_secret_file` into `api_key` and `token_secret`, and the
    /// keys of `keys_file` into `keys_from_file`; answers every file that could not be read.
    fn read_files(&mut self) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        fn put<T>(read: Result<T, ConfigError>, into: &mut T, problems: &mut Vec<ConfigError>) {
            match read {
                Ok(value) => *into = value,
                Err(e) => problems.push(e),
            }
        }
        if let Some(path) = &self.api_key_file {
            let read = read_secret("auth.api_key_file", path);
            put(read, &mut self.api_key, &mut problems);
        }
        if let Some(path) = &self.token_secret_file {
            let read = read_secret("auth.token_secret_file", path);
            put(read, &mut self.token_secret, &mut problems);
        }
        if let Some(path) = &self.keys_file {
            put(
                read_keys_file(path),
                &mut self.keys_from_file,
                &mut problems,
            );
        }
        problems
    }
}

impl KeySettings {
    fn validate(&self) -> Result<NamedKey, String> {
        let name = &self.name;
        let valid_name = (1..=64).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
        if !valid_name {
            return Err(format!(
                "the name '{name}' is not 1 to 64 letters, digits, '.', '_', '-' or '@'"
            ));
        }
        if name.eq_ignore_ascii_case(ANONYMOUS_ACTOR) {
            return Err(format!(
                "the name '{name}' is reserved: the audit log names callers with no recognised credential so"
            ));
        }
        let sha256 = match (&self.key, &self.key_sha256) {
            (Some(key), None) if key.expose().is_empty() => {
                return Err(format!("key '{name}': `key` must not be empty"));
            }
            (Some(key), None) if let Some(why) = unpresentable(key.expose()) => {
                return Err(format!("key '{name}': `key` {why}"));
            }
            (Some(key), None) => NamedKey::digest(key.expose()),
            (None, Some(hex)) => parse_sha256(hex).ok_or_else(|| {
                format!("key '{name}': `key_sha256` must be 64 hexadecimal digits (a SHA-256)")
            })?,
            _ => {
                return Err(format!(
                    "key '{name}': give exactly one of `key` and `key_sha256`"
                ));
            }
        };
        Ok(NamedKey {
            name: name.clone(),
            sha256,
            role: self.role,
        })
    }
}

/// 64 hexadecimal digits as 32 bytes.
fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(digest)
}

/// config's error for a file that is not TOML quotes the offending line, which may hold a
/// secret (this error is printed at start-up and logged on SIGHUP): keep the line number and
/// the reason only.
fn without_quoted_text(e: config::ConfigError) -> config::ConfigError {
    let config::ConfigError::FileParse { uri, cause } = e else {
        return e;
    };
    let text = uri.as_deref().and_then(|p| std::fs::read_to_string(p).ok());
    let cause = match cause.downcast::<toml::de::Error>() {
        Ok(toml) => toml_error(&toml, text.as_deref()).into(),
        // A value the `config` crate cannot hold (a number past 64 bits): its error says
        // where no more, but the TOML parser finds the same value, and its line.
        Err(other) => match text.as_deref().map(toml::from_str::<toml::Table>) {
            Some(Err(toml)) => match toml_line(&toml, text.as_deref()) {
                Some(line) => format!("TOML parse error at line {line}: {other}").into(),
                None => other,
            },
            _ => other,
        },
    };
    config::ConfigError::FileParse { uri, cause }
}

/// A TOML error as it may be shown: where it is, and its message without the values it
/// quotes (the error's own display quotes the file's line, secret and all).
fn toml_error(e: &toml::de::Error, text: Option<&str>) -> String {
    let at = toml_line(e, text)
        .map(|l| format!(" at line {l}"))
        .unwrap_or_default();
    format!("TOML parse error{at}: {}", without_quotes(e.message()))
}

/// The line of `text` a TOML error points at.
fn toml_line(e: &toml::de::Error, text: Option<&str>) -> Option<usize> {
    let (span, text) = (e.span()?, text?);
    let start = span.start.min(text.len());
    Some(text.get(..start)?.matches('\n').count() + 1)
}

/// A secret kept in a file (a container secret): its content less the trailing newline.
fn read_secret(key: &str, path: &Path) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(invalid(key, format!("{} is empty", path.display())));
    }
    Ok(Secret::new(secret))
}

/// The `[[keys]]` tables of a keys file.
fn read_keys_file(path: &Path) -> Result<Vec<KeySettings>, ConfigError> {
    const KEY: &str = "auth.keys_file";
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(KEY, format!("cannot read {}: {e}", path.display())))?;
    let mut ignored = Vec::new();
    let file: KeysFile = toml::Deserializer::parse(&text)
        .and_then(|toml| serde_ignored::deserialize(toml, |p| ignored.push(load::render(&p))))
        .map_err(|e| {
            invalid(
                KEY,
                format!(
                    "{} is not a TOML file of [[keys]] tables: {}",
                    path.display(),
                    toml_error(&e, Some(&text))
                ),
            )
        })?;
    if file.keys.is_empty() && ignored.is_empty() {
        return Err(invalid(
            KEY,
            format!("{} is empty: it has no [[keys]] table", path.display()),
        ));
    }
    if let Some(unknown) = ignored.first() {
        let nearest = keys::nearest(&format!("auth.{unknown}"))
            .and_then(|key| {
                key.strip_prefix("auth.")
                    .map(|key| format!("; did you mean `{key}`?"))
            })
            .unwrap_or_default();
        return Err(invalid(
            KEY,
            format!("{}: `{unknown}` is not a setting{nearest}", path.display()),
        ));
    }
    Ok(file.keys)
}

/// An error message with the values it quotes (`"…"` or `` `…` ``) left out, as one may be a
/// secret; what was expected, after `, expected`, is kept, and so is the name a "missing
/// field" message quotes (a setting's name, not a value).
fn without_quotes(message: &str) -> String {
    if message.starts_with("missing field `") {
        return message.to_owned();
    }
    let (told, expected) = match message.split_once(", expected") {
        Some((told, expected)) => (told, Some(expected)),
        None => (message, None),
    };
    let mut out = String::with_capacity(message.len());
    let mut quote = None;
    for c in told.chars() {
        match quote {
            Some(open) if c == open => {
                quote = None;
                out.push_str("(value not shown)");
            }
            Some(_) => {}
            None if matches!(c, '"' | '`') => quote = Some(c),
            None => out.push(c),
        }
    }
    if let Some(expected) = expected {
        out.push_str(", expected");
        out.push_str(expected);
    }
    out
}

/// `[executor]`
#[derive(Debug, Clone, Deserialize)]
pub struct ExecutorSettings {
    pub disable_vnf: bool,
    pub request_timeout_secs: u64,
    pub callback_timeout_secs: u64,
    #[serde(default)]
    pub operator_timeout_secs: Option<u64>,
    /// A component wait fails when neither its callback nor a progress callback came for
    /// this long.
    #[serde(default)]
    pub callback_heartbeat_secs: Option<u64>,
    /// A trial is finished on its own this long after it started.
    #[serde(default)]
    pub max_trial_secs: Option<u64>,
    /// A failed trial not restored within this long is aborted on its own.
    #[serde(default)]
    pub cleanup_failed_after_secs: Option<u64>,
    /// The repository status written at the end of an abort's clean-up.
    pub aborted_repository_status: String,
    /// How outbound requests are retried (each service may override it).
    pub retry: RetrySettings,
}

/// A retry policy (SPEC §13): up to `max_attempts` tries, waiting a random time between 0 and
/// `min(max_backoff_ms, initial_backoff_ms * multiplier^(attempt-1))` before each retry.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct RetrySettings {
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub multiplier: f64,
}

/// A service's changes to `executor.retry`; unset fields keep the default policy's.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct RetryOverride {
    #[serde(default)]
    pub max_attempts: Option<u32>,
    #[serde(default)]
    pub initial_backoff_ms: Option<u64>,
    #[serde(default)]
    pub max_backoff_ms: Option<u64>,
    #[serde(default)]
    pub multiplier: Option<f64>,
}

impl RetrySettings {
    /// This policy with a service's overrides applied.
    pub fn with(self, overrides: Option<&RetryOverride>) -> Self {
        let Some(o) = overrides else { return self };
        Self {
            max_attempts: o.max_attempts.unwrap_or(self.max_attempts),
            initial_backoff_ms: o.initial_backoff_ms.unwrap_or(self.initial_backoff_ms),
            max_backoff_ms: o.max_backoff_ms.unwrap_or(self.max_backoff_ms),
            multiplier: o.multiplier.unwrap_or(self.multiplier),
        }
    }

    /// Every problem of this policy: the field, and why.
    fn problems(&self) -> Vec<(RetryField, &'static str)> {
        let mut problems = Vec::new();
        if self.max_attempts == 0 {
            problems.push((RetryField::MaxAttempts, "must be at least 1"));
        }
        if self.max_attempts > 100 {
            problems.push((RetryField::MaxAttempts, "at most 100"));
        }
        if self.initial_backoff_ms == 0 {
            problems.push((RetryField::InitialBackoffMs, "must be greater than 0"));
        }
        if self.max_backoff_ms == 0 {
            problems.push((RetryField::MaxBackoffMs, "must be greater than 0"));
        }
        if self.max_backoff_ms > MAX_DURATION_SECS * 1000 {
            problems.push((RetryField::MaxBackoffMs, "at most ten years"));
        }
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            problems.push((RetryField::Multiplier, "must be a number of at least 1.0"));
        }
        problems
    }
}

/// A key of a retry policy (`executor.retry`, `services.<service>.retry`).
#[derive(Debug, Clone, Copy)]
enum RetryField {
    MaxAttempts,
    InitialBackoffMs,
    MaxBackoffMs,
    Multiplier,
}

impl RetryField {
    fn name(self) -> &'static str {
        match self {
            Self::MaxAttempts => "max_attempts",
            Self::InitialBackoffMs => "initial_backoff_ms",
            Self::MaxBackoffMs => "max_backoff_ms",
            Self::Multiplier => "multiplier",
        }
    }
}

impl RetryOverride {
    /// Whether the service sets `field` itself, rather than taking `executor.retry`'s.
    fn sets(&self, field: RetryField) -> bool {
        match field {
            RetryField::MaxAttempts => self.max_attempts.is_some(),
            RetryField::InitialBackoffMs => self.initial_backoff_ms.is_some(),
            RetryField::MaxBackoffMs => self.max_backoff_ms.is_some(),
            RetryField::Multiplier => self.multiplier.is_some(),
        }
    }
}

/// `[tls]`
#[derive(Debug, Clone, Deserialize)]
pub struct TlsSettings {
    pub disable_cert_verification: bool,
    #[serde(default)]
    pub ca_bundle_path: Option<PathBuf>,
}

/// `[scheduler]`
#[derive(Debug, Clone, Deserialize)]
pub struct SchedulerSettings {
    pub poll_interval_secs: u64,
    pub automatic: bool,
    pub misfire_grace_secs: u64,
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
pub struct StoreSettings {
    pub data_dir: PathBuf,
    /// Ended trials are purged this many days after they ended, audit entries this many days
    /// after they were written; 0 keeps them forever.
    pub retention_days: u64,
    /// When a commit reaches the disk itself.
    pub synchronous: crate::store::sqlite::Synchronous,
}

/// `[engine]`
#[derive(Debug, Clone, Deserialize)]
pub struct EngineSettings {
    /// A finished or aborted engine leaves memory after this long.
    pub keep_finished_secs: u64,
}

/// `[heartbeat]`
#[derive(Debug, Clone, Deserialize)]
pub struct HeartbeatSettings {
    pub interval_secs: u64,
}

/// `[logging]`
#[derive(Debug, Clone, Deserialize)]
pub struct LoggingSettings {
    pub dir: PathBuf,
    pub level: String,
    pub format: LogFormat,
    /// How many daily log files are kept, today's included (0 keeps every one).
    pub keep_days: usize,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `[services]`: the platform components the executor talks to.
#[derive(Debug, Clone, Deserialize)]
pub struct ServicesSettings {
    pub trial_repository: ServiceSettings,
    pub trial_enforcement: ServiceSettings,
    pub kpi_monitoring: ServiceSettings,
    pub abstraction_layer: AbstractionLayerSettings,
}

/// One outbound service: its base URL and at most one way to authenticate (SPEC §7).
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceSettings {
    pub url: String,
    #[serde(default)]
    pub apikey: Option<Secret>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub oauth2: Option<OAuth2Settings>,
    /// Changes to `executor.retry` for this service.
    #[serde(default)]
    pub retry: Option<RetryOverride>,
}

/// OAuth2 client-credentials grant.
#[derive(Debug, Clone, Deserialize)]
pub struct OAuth2Settings {
    pub auth_url: String,
    pub client_id: String,
    pub client_secret: Secret,
}

/// Where the KPI measurement job reads its data from; passed on to trial enforcement.
#[derive(Debug, Clone, Deserialize)]
pub struct AbstractionLayerSettings {
    pub url: String,
    pub port: u16,
    pub username: String,
    pub password: Secret,
    pub interval: u64,
}

impl Settings {
    /// The configuration files read over the built-in defaults, for the start-up log:
    /// `config/default.toml` of the working directory, then the one named by `--config` or
    /// `LCM_CONFIG` as named (`--config <path>`), or `none`.
    pub fn file_shown(&self) -> String {
        let Some(sources) = &self.auth.sources else {
            return "none".to_owned();
        };
        let working = sources
            .working_file
            .then(|| format!("{} (working directory)", load::WORKING_DIRECTORY_FILE));
        let named = sources.file.as_ref().map(ToString::to_string);
        let read: Vec<String> = working.into_iter().chain(named).collect();
        match read.is_empty() {
            true => "none".to_owned(),
            false => read.join(", then "),
        }
    }

    /// Loads the layered configuration; `file` is the one of `--config` or `LCM_CONFIG`.
    pub fn load(file: Option<&ConfigFile>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, None)
    }

    /// [`Settings::load`], reading `env` instead of the process environment when given.
    pub fn load_with_env(
        file: Option<&ConfigFile>,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Self, ConfigError> {
        let env = match env {
            Some(env) => env,
            None => process_env()?,
        };
        let sources = Sources {
            file: file.cloned(),
            working_file: Path::new(load::WORKING_DIRECTORY_FILE).is_file(),
            env: Some(env.clone()),
        };
        let mut settings = load::load(file, env)?;
        settings.auth.sources = Some(sources);
        Ok(settings)
    }

    /// Loads only the compiled-in defaults (tests, demo and benchmark start from these).
    pub fn defaults() -> Result<Self, ConfigError> {
        load::defaults()
    }

    /// Refuses a configuration that cannot work, naming the key: every problem at once, so
    /// that mending them takes one start, not one each.
    pub fn validate(&self) -> Result<(), ConfigError> {
        ConfigError::of(self.problems()).map_or(Ok(()), Err)
    }

    /// Every value of these settings that cannot work, each naming its key.
    fn problems(&self) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        problems.extend(self.bind_addr().err());
        problems.extend(parse_http_url("server.public_url", &self.server.public_url).err());
        for origin in &self.server.cors_origins {
            if origin != "*" && !is_origin(origin) {
                problems.push(invalid(
                    "server.cors_origins",
                    match Url::parse(origin) {
                        Ok(url) => format!(
                            "'{}' is not an origin like https://console.example (scheme, host and port only, no trailing '/'), nor *",
                            crate::services::shown_url(&url)
                        ),
                        Err(e) => format!(
                            "an entry is not an origin like https://console.example, nor * ({e}; the value is not shown)"
                        ),
                    },
                ));
            }
        }
        problems.extend(self.auth.key_problems().1);
        if self.auth.token_secret.expose().is_empty() {
            problems.push(invalid("auth.token_secret", "must not be empty"));
        }
        for (key, value) in [
            (
                "executor.request_timeout_secs",
                Some(self.executor.request_timeout_secs),
            ),
            (
                "executor.callback_timeout_secs",
                Some(self.executor.callback_timeout_secs),
            ),
            (
                "executor.operator_timeout_secs",
                self.executor.operator_timeout_secs,
            ),
            (
                "scheduler.poll_interval_secs",
                Some(self.scheduler.poll_interval_secs),
            ),
            (
                "heartbeat.interval_secs",
                Some(self.heartbeat.interval_secs),
            ),
            (
                "executor.callback_heartbeat_secs",
                self.executor.callback_heartbeat_secs,
            ),
            ("executor.max_trial_secs", self.executor.max_trial_secs),
            (
                "executor.cleanup_failed_after_secs",
                self.executor.cleanup_failed_after_secs,
            ),
            (
                "server.header_read_timeout_secs",
                Some(self.server.header_read_timeout_secs),
            ),
            (
                "server.idle_timeout_secs",
                Some(self.server.idle_timeout_secs),
            ),
            (
                "server.shutdown_grace_secs",
                Some(self.server.shutdown_grace_secs),
            ),
            (
                "server.handler_timeout_secs",
                Some(self.server.handler_timeout_secs),
            ),
            (
                "engine.keep_finished_secs",
                Some(self.engine.keep_finished_secs),
            ),
            (
                "scheduler.misfire_grace_secs",
                Some(self.scheduler.misfire_grace_secs),
            ),
            ("auth.token_ttl_secs", Some(self.auth.token_ttl_secs)),
        ] {
            if value.is_some_and(|v| v > MAX_DURATION_SECS) {
                problems.push(invalid(
                    key,
                    format!("at most {MAX_DURATION_SECS} (ten years)"),
                ));
            }
        }
        let max_days = MAX_DURATION_SECS / 86_400;
        if self.store.retention_days > max_days {
            problems.push(invalid(
                "store.retention_days",
                format!("at most {max_days} (ten years)"),
            ));
        }
        let positive = [
            (
                "server.max_body_bytes",
                u64::try_from(self.server.max_body_bytes).unwrap_or(u64::MAX),
            ),
            ("auth.token_ttl_secs", self.auth.token_ttl_secs),
            (
                "executor.request_timeout_secs",
                self.executor.request_timeout_secs,
            ),
            (
                "executor.callback_timeout_secs",
                self.executor.callback_timeout_secs,
            ),
            (
                "server.header_read_timeout_secs",
                self.server.header_read_timeout_secs,
            ),
            ("server.idle_timeout_secs", self.server.idle_timeout_secs),
            (
                "server.handler_timeout_secs",
                self.server.handler_timeout_secs,
            ),
            (
                "auth.max_failures_per_minute",
                u64::from(self.auth.max_failures_per_minute),
            ),
            (
                "auth.max_callbacks_per_minute",
                u64::from(self.auth.max_callbacks_per_minute),
            ),
            (
                "scheduler.poll_interval_secs",
                self.scheduler.poll_interval_secs,
            ),
            ("heartbeat.interval_secs", self.heartbeat.interval_secs),
            (
                "services.abstraction_layer.interval",
                self.services.abstraction_layer.interval,
            ),
        ];
        for (key, _) in positive.iter().filter(|(_, value)| *value == 0) {
            problems.push(invalid(*key, "must be greater than 0"));
        }
        if self.executor.operator_timeout_secs == Some(0) {
            problems.push(invalid(
                "executor.operator_timeout_secs",
                "must be greater than 0 (leave it unset for no deadline)",
            ));
        }
        for (key, value) in [
            (
                "executor.callback_heartbeat_secs",
                self.executor.callback_heartbeat_secs,
            ),
            ("executor.max_trial_secs", self.executor.max_trial_secs),
            (
                "executor.cleanup_failed_after_secs",
                self.executor.cleanup_failed_after_secs,
            ),
        ] {
            if value == Some(0) {
                problems.push(invalid(
                    key,
                    "must be greater than 0 (leave it unset for none)",
                ));
            }
        }
        if !(1..=MAX_CONNECTIONS_LIMIT).contains(&self.server.max_connections) {
            problems.push(invalid(
                "server.max_connections",
                format!("must be between 1 and {MAX_CONNECTIONS_LIMIT}"),
            ));
        }
        if self.executor.aborted_repository_status.trim().is_empty() {
            problems.push(invalid(
                "executor.aborted_repository_status",
                "must not be empty",
            ));
        }
        // A service's policy inherits executor.retry: a value wrong there is told once, under
        // executor.retry, and a service's own wrong value under its own key.
        for (field, why) in self.executor.retry.problems() {
            problems.push(invalid(format!("executor.retry.{}", field.name()), why));
        }
        for service in crate::services::Service::ALL {
            let overrides = self.service(service).retry.as_ref();
            for (field, why) in self.retry_policy(service).problems() {
                if overrides.is_some_and(|o| o.sets(field)) {
                    let key = format!("services.{}.retry.{}", service.name(), field.name());
                    problems.push(invalid(key, why));
                }
            }
        }
        if !valid_log_filter(&self.logging.level) {
            problems.push(invalid(
                "logging.level",
                format!("'{}' is not a log level or filter", self.logging.level),
            ));
        }
        for (key, dir) in [
            ("store.data_dir", &self.store.data_dir),
            ("logging.dir", &self.logging.dir),
        ] {
            if dir.to_str().is_some_and(|dir| dir.trim().is_empty()) {
                problems.push(invalid(
                    key,
                    "is empty or blank: give a directory ('.' for the working directory)",
                ));
            }
        }
        if self.facilities.is_empty() {
            problems.push(invalid("facilities", "at least one facility is needed"));
        }
        for (code, name) in &self.facilities {
            if name.trim().is_empty() {
                problems.push(invalid(
                    format!("facilities.{code}"),
                    "is empty: give the facility's name as trial enforcement knows it",
                ));
            }
        }
        if let Some(path) = &self.tls.ca_bundle_path
            && !path.is_file()
        {
            problems.push(invalid(
                "tls.ca_bundle_path",
                format!("no file at {}", path.display()),
            ));
        }
        for service in crate::services::Service::ALL {
            service_problems(service.name(), self.service(service))
                .into_iter()
                .for_each(|p| problems.push(p));
        }
        let services = &self.services;
        problems.extend(
            parse_http_url(
                "services.abstraction_layer.url",
                &services.abstraction_layer.url,
            )
            .err(),
        );
        if services.abstraction_layer.port == 0 {
            problems.push(invalid(
                "services.abstraction_layer.port",
                "must be a port from 1 to 65535",
            ));
        }
        problems
    }

    /// The retry policy of a service: `executor.retry` with the service's overrides.
    pub fn retry_policy(&self, service: crate::services::Service) -> RetrySettings {
        self.executor
            .retry
            .with(self.service(service).retry.as_ref())
    }

    /// The settings of one outbound service.
    pub fn service(&self, service: crate::services::Service) -> &ServiceSettings {
        match service {
            crate::services::Service::TrialRepository => &self.services.trial_repository,
            crate::services::Service::TrialEnforcement => &self.services.trial_enforcement,
            crate::services::Service::KpiMonitoring => &self.services.kpi_monitoring,
        }
    }

    /// The parsed `server.bind` address.
    /// Port 0 is refused: the port the system would choose is not the one
    /// `server.public_url` names, so no component could call back.
    pub fn bind_addr(&self) -> Result<SocketAddr, ConfigError> {
        let addr: SocketAddr = self.server.bind.parse().map_err(|e| {
            invalid(
                "server.bind",
                format!(
                    "'{}' is not an address like 0.0.0.0:5000 ({e})",
                    self.server.bind
                ),
            )
        })?;
        match addr.port() {
            0 => Err(invalid(
                "server.bind",
                format!(
                    "'{}' has port 0, which would listen on a port the system picks and server.public_url cannot name: give the port",
                    self.server.bind
                ),
            )),
            _ => Ok(addr),
        }
    }

    /// Every secret value of the configuration, to keep out of what is recorded: each as
    /// written, and a service's HTTP Basic credentials also as its `Authorization` header
    /// carries them (a service that echoes the header must not have them recorded).
    pub fn secret_values(&self) -> Vec<String> {
        let services = &self.services;
        let mut secrets = self.auth.secret_values();
        let named = self.service_secrets().into_iter();
        secrets.extend(named.map(|(_, secret)| secret.expose().to_owned()));
        for service in [
            &services.trial_repository,
            &services.trial_enforcement,
            &services.kpi_monitoring,
        ] {
            if let (Some(username), Some(password)) = (&service.username, &service.password) {
                secrets.push(STANDARD.encode(format!("{username}:{}", password.expose())));
            }
        }
        secrets
    }

    /// Each secret of the `services` section, with the key that sets it.
    fn service_secrets(&self) -> Vec<(String, &Secret)> {
        let services = &self.services;
        let mut named = vec![(
            "services.abstraction_layer.password".to_owned(),
            &services.abstraction_layer.password,
        )];
        for (name, service) in [
            ("trial_repository", &services.trial_repository),
            ("trial_enforcement", &services.trial_enforcement),
            ("kpi_monitoring", &services.kpi_monitoring),
        ] {
            let own = [
                ("apikey", service.apikey.as_ref()),
                ("password", service.password.as_ref()),
                (
                    "oauth2.client_secret",
                    service.oauth2.as_ref().map(|o| &o.client_secret),
                ),
            ];
            for (field, secret) in own {
                if let Some(secret) = secret {
                    named.push((format!("services.{name}.{field}"), secret));
                }
            }
        }
        named
    }

    /// Warnings about settings that work but should not reach production.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = self.auth.key_warnings();
        if self.auth.token_secret.expose() == PLACEHOLDER_TOKEN_SECRET {
            warnings.push(
                "auth.token_secret is still the built-in placeholder: callback tokens can be forged; set LCM__AUTH__TOKEN_SECRET".to_owned(),
            );
        }
        // Hidden wherever its text appears, a short secret is found inside ordinary words.
        let token_secret = ("auth.token_secret".to_owned(), &self.auth.token_secret);
        for (name, secret) in self.service_secrets().into_iter().chain([token_secret]) {
            let length = secret.expose().len();
            if (MIN_SECRET_LEN..SHORT_SECRET).contains(&length) {
                warnings.push(format!(
                    "{name} is {length} characters long: it is hidden as [redacted] wherever its text appears in what is recorded and shown, inside other words too, and a trial id that holds it is refused; give it {SHORT_SECRET} characters or more"
                ));
            }
        }
        if self.tls.disable_cert_verification {
            warnings.push(
                "tls.disable_cert_verification = true: outbound HTTPS certificates are NOT verified".to_owned(),
            );
        }
        warnings
    }
}

/// Warnings about the process's variables that look meant for the service but are not read:
/// `LCM_SECTION__KEY` (one underscore after the prefix) and the like. Only their names are
/// said: a value may be a secret.
pub fn stray_variables() -> Vec<String> {
    let mut stray: Vec<String> = std::env::vars_os()
        .filter_map(|(key, _)| key.into_string().ok())
        .filter(|key| {
            let upper = key.to_uppercase();
            upper.starts_with("LCM_") && !upper.starts_with("LCM__") && upper != "LCM_CONFIG"
        })
        .map(|key| {
            format!(
                "environment variable {key} is not read: a setting is LCM__<SECTION>__<KEY>, with two underscores after LCM"
            )
        })
        .collect();
    stray.sort();
    stray
}

/// The process's `LCM__…` variables; one whose value is not UTF-8 text is refused rather than
/// read as something else.
fn process_env() -> Result<std::collections::HashMap<String, String>, ConfigError> {
    std::env::vars_os()
        .filter_map(|(key, value)| {
            let key = key.into_string().ok()?;
            key.to_lowercase()
                .starts_with("lcm__")
                .then_some((key, value))
        })
        .map(|(key, value)| match value.into_string() {
            Ok(value) => Ok((key, value)),
            Err(_) => Err(ConfigError::NotText(key)),
        })
        .collect()
}

/// A level (`info`) or a list of directives, each a level or `target=level`. A bare word that
/// is not a level would silently be read as a target name, so it is refused.
fn valid_log_filter(filter: &str) -> bool {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    tracing_subscriber::EnvFilter::try_new(filter).is_ok()
        && filter.split(',').all(|directive| {
            let directive = directive.trim();
            directive.contains('=') || LEVELS.contains(&directive.to_ascii_lowercase().as_str())
        })
}

/// Every problem of one outbound service's settings.
fn service_problems(name: &str, service: &ServiceSettings) -> Vec<ConfigError> {
    let key = |field: &str| format!("services.{name}.{field}");
    let mut problems: Vec<ConfigError> = parse_http_url(&key("url"), &service.url)
        .err()
        .into_iter()
        .collect();
    // A credential given empty would be sent empty: one left out is not sent at all.
    let given = [
        ("apikey", service.apikey.as_ref().map(Secret::expose)),
        ("username", service.username.as_deref()),
        ("password", service.password.as_ref().map(Secret::expose)),
        (
            "oauth2.client_id",
            service.oauth2.as_ref().map(|o| o.client_id.as_str()),
        ),
        (
            "oauth2.client_secret",
            service.oauth2.as_ref().map(|o| o.client_secret.expose()),
        ),
    ];
    for (field, _) in given
        .iter()
        .filter(|(_, value)| value.is_some_and(|v| v.trim().is_empty()))
    {
        problems.push(invalid(
            key(field),
            "must not be empty: leave it out to send no credential",
        ));
    }
    // Name the half that is missing, not the half that was set.
    let (set, missing) = match (&service.username, &service.password) {
        (Some(_), None) => ("username", "password"),
        (None, Some(_)) => ("password", "username"),
        _ => ("", ""),
    };
    if !missing.is_empty() {
        problems.push(invalid(
            key(missing),
            format!(
                "missing: `{}` is set, and username and password go together",
                key(set)
            ),
        ));
    }
    if let Some(oauth2) = &service.oauth2 {
        problems.extend(parse_http_url(&key("oauth2.auth_url"), &oauth2.auth_url).err());
    }
    problems
}

fn parse_http_url(key: &str, value: &str) -> Result<Url, ConfigError> {
    // A value that does not parse is not repeated: it may hold credentials, which only a
    // parsed URL can be shown without.
    let url = Url::parse(value)
        .map_err(|e| invalid(key, format!("is not a URL ({e}); the value is not shown")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(invalid(
            key,
            format!(
                "is not an http(s) URL with a host (its scheme is '{}'); the value is not shown",
                url.scheme()
            ),
        ));
    }
    let shown = crate::services::shown_url(&url);
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(
            key,
            format!(
                "'{shown}' has a query or a fragment: it is a base URL, which paths are added to"
            ),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            key,
            format!(
                "'{shown}' carries credentials, which would show wherever the URL does: give them as the service's `username` and `password`"
            ),
        ));
    }
    Ok(url)
}

/// Whether `value` is a web origin exactly as a browser sends it (the CORS layer compares
/// it as written): `scheme://host[:port]`, nothing more.
fn is_origin(value: &str) -> bool {
    Url::parse(value).is_ok_and(|url| {
        matches!(url.scheme(), "http" | "https") && url.origin().ascii_serialization() == value
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_warn_about_placeholders() {
        let settings = Settings::defaults().expect("defaults load");
        settings.validate().expect("defaults are valid");
        assert_eq!(settings.bind_addr().unwrap().port(), 5000);
        assert_eq!(settings.warnings().len(), 2);
        assert_eq!(settings.facilities["EUR"], "eurecom");
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let mut settings = Settings::defaults().unwrap();
        settings.server.bind = "not-an-address".into();
        let err = settings.validate().unwrap_err().to_string();
        assert!(err.contains("server.bind"), "{err}");
        settings.server.bind = "127.0.0.1:0".into();
        let err = settings.validate().unwrap_err().to_string();
        assert!(
            err.contains("server.bind") && err.contains("port 0"),
            "{err}"
        );

        let mut settings = Settings::defaults().unwrap();
        settings.auth.token_secret = Secret::new("");
        let err = settings.validate().unwrap_err().to_string();
        assert!(err.contains("auth.token_secret"), "{err}");

        let mut settings = Settings::defaults().unwrap();
        settings.logging.level = "verbose".into();
        let err = settings.validate().unwrap_err().to_string();
        assert!(err.contains("logging.level"), "{err}");
        settings.logging.level = "warn,lcm=debug".into();
        settings
            .validate()
            .expect("a filter with directives is fine");

        let mut settings = Settings::defaults().unwrap();
        for connections in [0, MAX_CONNECTIONS_LIMIT + 1, usize::MAX] {
            settings.server.max_connections = connections;
            let err = settings.validate().unwrap_err().to_string();
            assert!(
                err.contains("server.max_connections") && err.contains("between 1 and 10000000"),
                "{err}"
            );
        }
        settings.server.max_connections = MAX_CONNECTIONS_LIMIT;
        settings.validate().expect("the largest allowed");

        // Each change alone is refused, naming its key and why.
        type Change = fn(&mut Settings);
        let refused: [(Change, &str, &str); 9] = [
            (
                |s| s.services.trial_repository.url = "ftp://x".into(),
                "services.trial_repository.url",
                "",
            ),
            (
                |s| s.scheduler.misfire_grace_secs = 9_300_000_000_000_000,
                "scheduler.misfire_grace_secs",
                "ten years",
            ),
            (
                |s| s.auth.token_ttl_secs = 9_300_000_000_000_000,
                "auth.token_ttl_secs",
                "ten years",
            ),
            (
                |s| s.store.retention_days = 3_661,
                "store.retention_days",
                "at most 3660 (ten years)",
            ),
            (
                |s| s.services.abstraction_layer.port = 0,
                "services.abstraction_layer.port",
                "",
            ),
            (
                |s| s.services.abstraction_layer.interval = 0,
                "services.abstraction_layer.interval",
                "greater than 0",
            ),
            (
                |s| s.services.kpi_monitoring.apikey = Some(Secret::new("")),
                "services.kpi_monitoring.apikey",
                "must not be empty",
            ),
            (
                |s| {
                    s.services.trial_repository.username = Some(" ".into());
                    s.services.trial_repository.password = Some(Secret::new("p"));
                },
                "services.trial_repository.username",
                "must not be empty",
            ),
            (
                |s| {
                    s.services.trial_enforcement.oauth2 = Some(OAuth2Settings {
                        auth_url: "http://127.0.0.1:1/token".into(),
                        client_id: "lcm".into(),
                        client_secret: Secret::new(""),
                    });
                },
                "services.trial_enforcement.oauth2.client_secret",
                "must not be empty",
            ),
        ];
        for (change, key, why) in refused {
            let mut settings = Settings::defaults().unwrap();
            change(&mut settings);
            let err = settings.validate().unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(why), "{err}");
        }
        let mut settings = Settings::defaults().unwrap();
        settings.store.retention_days = 3_660;
        settings.validate().expect("ten years of days");

        // Every value that cannot work is told at once, also several of one service or one
        // retry policy; a value a service inherits is told once, where it was set.
        let mut settings = Settings::defaults().unwrap();
        let repository = &mut settings.services.trial_repository;
        repository.url = "ftp://x".into();
        repository.apikey = Some(Secret::new(""));
        repository.username = Some(String::new());
        settings.executor.retry.max_attempts = 0;
        settings.services.kpi_monitoring.retry = Some(RetryOverride {
            max_attempts: Some(0),
            multiplier: Some(0.5),
            ..RetryOverride::default()
        });
        settings.server.cors_origins = vec![
            "nope".into(),
            "https://ok.example".into(),
            "also/bad".into(),
        ];
        let err = settings.validate().unwrap_err().to_string();
        for key in [
            "`services.trial_repository.url`",
            "`services.trial_repository.apikey`",
            "`services.trial_repository.username`",
            "`services.trial_repository.password`",
            "`executor.retry.max_attempts`",
            "`services.kpi_monitoring.retry.max_attempts`",
            "`services.kpi_monitoring.retry.multiplier`",
        ] {
            let told = format!("configuration key {key}:");
            assert_eq!(err.matches(&told).count(), 1, "{key}: {err}");
        }
        let origins = "configuration key `server.cors_origins`:";
        assert_eq!(err.matches(origins).count(), 2, "{err}");
        assert!(
            !err.contains("trial_enforcement.retry"),
            "inherited, told once: {err}"
        );

        // A ceiling below the first wait caps it: a service's own low ceiling is meaningful.
        let mut settings = Settings::defaults().unwrap();
        settings.services.kpi_monitoring.retry = Some(RetryOverride {
            max_backoff_ms: Some(50),
            ..RetryOverride::default()
        });
        settings.validate().expect("a low ceiling of one service");
        let policy = settings.retry_policy(crate::services::Service::KpiMonitoring);
        assert_eq!(
            crate::services::retry::backoff(&policy, 1, None, 1.0),
            std::time::Duration::from_millis(50)
        );
    }

    #[test]
    fn cors_origins_are_origins() {
        for origin in ["https://console.example", "http://127.0.0.1:8080", "*"] {
            let mut settings = Settings::defaults().unwrap();
            settings.server.cors_origins = vec![origin.to_owned()];
            settings.validate().expect(origin);
        }
        for origin in [
            "not an origin",
            "https://console.example/ui",
            "console.example",
        ] {
            let mut settings = Settings::defaults().unwrap();
            settings.server.cors_origins = vec![origin.to_owned()];
            let err = settings.validate().unwrap_err().to_string();
            assert!(
                err.contains("server.cors_origins") && err.contains(origin),
                "{err}"
            );
        }
    }

    #[test]
    fn a_bad_url_is_shown_without_its_credentials() {
        for (url, shown) in [
            (
                "http://user:s3cret@host:99999/x",
                "is not a URL (invalid port number)",
            ),
            ("bob:s3cret@127.0.0.1:47101", "its scheme is 'bob'"),
            ("ftp://user:s3cret@host/", "its scheme is 'ftp'"),
            (
                "http://user:s3cret@host/",
                "'http://host/' carries credentials",
            ),
            (
                "http://repo.example/api/?token=s3cret",
                "'http://repo.example/api/' has a query or a fragment",
            ),
        ] {
            let mut settings = Settings::defaults().unwrap();
            settings.services.kpi_monitoring.url = url.into();
            let err = settings.validate().unwrap_err().to_string();
            assert!(
                err.contains("services.kpi_monitoring.url")
                    && err.contains(shown)
                    && !err.contains("s3cret"),
                "{err}"
            );
        }
        let mut settings = Settings::defaults().unwrap();
        settings.server.public_url = "http://lcm.example/base/#x".into();
        let err = settings.validate().unwrap_err().to_string();
        assert!(
            err.contains("server.public_url") && err.contains("query or a fragment"),
            "{err}"
        );
    }

    #[test]
    fn environment_values_keep_their_text_and_typed_keys_parse() {
        let env = [
            ("LCM__AUTH__API_KEY", "0123"),
            ("LCM__AUTH__TOKEN_SECRET", "1e3"),
            (
                "LCM__SERVER__CORS_ORIGINS",
                "https://a.example, https://b.example",
            ),
            ("LCM__EXECUTOR__REQUEST_TIMEOUT_SECS", "7"),
            ("LCM__EXECUTOR__DISABLE_VNF", "false"),
            ("LCM__EXECUTOR__OPERATOR_TIMEOUT_SECS", "60"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let settings = Settings::load_with_env(None, Some(env)).expect("loads");
        assert_eq!(settings.auth.api_key.expose(), "0123");
        assert_eq!(settings.auth.token_secret.expose(), "1e3");
        assert_eq!(
            settings.server.cors_origins,
            ["https://a.example", "https://b.example"]
        );
        assert_eq!(settings.executor.request_timeout_secs, 7);
        assert!(!settings.executor.disable_vnf);
        assert_eq!(settings.executor.operator_timeout_secs, Some(60));

        let huge = [(
            "LCM__EXECUTOR__CALLBACK_TIMEOUT_SECS".to_owned(),
            u64::MAX.to_string(),
        )]
        .into_iter()
        .collect();
        let err = Settings::load_with_env(None, Some(huge))
            .unwrap_err()
            .to_string();
        assert!(err.contains("executor.callback_timeout_secs"), "{err}");
    }

    fn key(name: &str, key: Option<&str>, sha256: Option<&str>, role: Role) -> KeySettings {
        KeySettings {
            name: name.to_owned(),
            key: key.map(Secret::new),
            key_sha256: sha256.map(str::to_owned),
            role,
        }
    }

    /// The SHA-256 of "hello", in hex.
    const HELLO_SHA256: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn named_keys_are_validated_and_name_where_they_are_wrong() {
        let mut auth = Settings::defaults().unwrap().auth;
        auth.keys = vec![
            key("ci", Some("ci-key"), None, Role::Viewer),
            key(
                "ops",
                None,
                Some(&HELLO_SHA256.to_uppercase()),
                Role::Operator,
            ),
        ];
        let keys = auth.api_keys().expect("valid keys");
        let names: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["default", "ci", "ops"]);
        assert_eq!(keys[0].role, Role::Admin);
        assert_eq!(keys[2].sha256, NamedKey::digest("hello"));

        let cases: [(Vec<KeySettings>, &str, &str); 9] = [
            (
                vec![key("a", Some("x"), Some(HELLO_SHA256), Role::Viewer)],
                "auth.keys[0]",
                "exactly one of `key` and `key_sha256`",
            ),
            (
                vec![key("a", None, None, Role::Viewer)],
                "auth.keys[0]",
                "exactly one",
            ),
            (
                vec![key("a", None, Some("abc"), Role::Viewer)],
                "auth.keys[0]",
                "64 hexadecimal digits",
            ),
            (
                vec![key("a", None, Some(&"g".repeat(64)), Role::Viewer)],
                "auth.keys[0]",
                "64 hexadecimal digits",
            ),
            (
                vec![
                    key("a", Some("one"), None, Role::Viewer),
                    key("a", Some("two"), None, Role::Viewer),
                ],
                "auth.keys[1]",
                "name 'a' is already taken",
            ),
            (
                vec![
                    key("a", Some("hello"), None, Role::Viewer),
                    key("b", None, Some(HELLO_SHA256), Role::Admin),
                ],
                "auth.keys[1]",
                "same secret as key 'a'",
            ),
            (
                vec![key("default", Some("other"), None, Role::Viewer)],
                "auth.keys[0]",
                "name 'default' is already taken",
            ),
            (
                vec![key("Anonymous", Some("other"), None, Role::Admin)],
                "auth.keys[0]",
                "the name 'Anonymous' is reserved",
            ),
            (
                vec![key("spacey", Some(" k-with-blanks "), None, Role::Viewer)],
                "auth.keys[0]",
                "starts or ends with a blank",
            ),
        ];
        for (keys, at, reason) in cases {
            auth.keys = keys;
            let err = auth.api_keys().unwrap_err().to_string();
            assert!(err.contains(&format!("`{at}`")), "{err}");
            assert!(err.contains(reason), "{err}");
        }

        // Nor may a key be the token secret, written out or by its digest.
        auth.token_secret = Secret::new("hello");
        for secret in [
            key("t", Some("hello"), None, Role::Viewer),
            key("t", None, Some(HELLO_SHA256), Role::Viewer),
        ] {
            auth.keys = vec![secret];
            let err = auth.api_keys().unwrap_err().to_string();
            assert!(
                err.contains("`auth.keys[0]`: key 't' is auth.token_secret"),
                "{err}"
            );
            assert!(!err.contains("hello"), "{err}");
        }
        auth.keys = Vec::new();
        auth.api_key = Secret::new("hello");
        let err = auth.api_keys().unwrap_err().to_string();
        assert!(
            err.contains("`auth.api_key`: key 'default' is auth.token_secret"),
            "{err}"
        );
        auth.api_key = Settings::defaults().unwrap().auth.api_key;

        auth.keys = vec![key("a b", Some("k"), None, Role::Viewer)];
        let err = auth.api_keys().unwrap_err().to_string();
        assert!(err.contains("the name 'a b'"), "{err}");

        auth.keys = Vec::new();
        auth.api_key = Secret::new("admin-key-with-a-tab\t");
        let err = auth.api_keys().unwrap_err().to_string();
        assert!(err.contains("`auth.api_key`: starts or ends"), "{err}");
    }

    #[test]
    fn a_secret_short_enough_to_be_found_inside_words_is_warned_of_by_name() {
        let mut settings = Settings::defaults().unwrap();
        let short = |warnings: Vec<String>| -> Vec<String> {
            (warnings.into_iter())
                .filter(|w| w.contains("characters long: it is hidden"))
                .collect()
        };
        assert_eq!(short(settings.warnings()), Vec::<String>::new());
        settings.services.trial_repository.username = Some("lcm".to_owned());
        settings.services.trial_repository.password = Some(Secret::new("test"));
        settings.services.kpi_monitoring.apikey = Some(Secret::new("abc"));
        settings.auth.token_secret = Secret::new("a-long-enough-token-secret");
        let warnings = short(settings.warnings());
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("services.trial_repository.password is 4 characters long"),
            "{warnings:?}"
        );
        assert!(!warnings[0].contains("test"), "{warnings:?}");
    }

    #[test]
    fn keys_short_enough_to_guess_are_warned_of_by_name() {
        let mut auth = Settings::defaults().unwrap().auth;
        assert_eq!(auth.key_warnings().len(), 1, "the placeholder alone");
        auth.api_key = Secret::new("a-long-random-admin-key");
        auth.keys = vec![
            key("short", Some("abc"), None, Role::Viewer),
            key("digest", None, Some(HELLO_SHA256), Role::Viewer),
            key("long", Some("another-long-random-key"), None, Role::Viewer),
        ];
        let warnings = auth.key_warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("key 'short' is 3 character(s)"),
            "{warnings:?}"
        );
        assert!(!warnings[0].contains("abc"), "{warnings:?}");

        // The placeholder as a named key, written out or by digest.
        let digest: String = NamedKey::digest(PLACEHOLDER_API_KEY)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        auth.keys = vec![
            key("ph", Some(PLACEHOLDER_API_KEY), None, Role::Admin),
            key("ph-digest", None, Some(&digest), Role::Viewer),
        ];
        let warnings = auth.key_warnings();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].starts_with("key 'ph' is the built-in placeholder"),
            "{warnings:?}"
        );
        assert!(warnings[1].starts_with("key 'ph-digest' is the built-in placeholder"));
    }

    #[test]
    fn an_empty_api_key_means_no_default_key_when_other_keys_exist() {
        let mut settings = Settings::defaults().unwrap();
        settings.auth.api_key = Secret::new("");
        let err = settings.validate().unwrap_err().to_string();
        assert!(err.contains("auth.api_key"), "{err}");

        settings.auth.keys = vec![key("ops", Some("ops-key"), None, Role::Operator)];
        settings.validate().expect("other keys exist");
        let keys = settings.auth.api_keys().unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].name, "ops");
    }

    #[test]
    fn secrets_come_from_files_less_the_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let api_key = dir.path().join("api_key");
        std::fs::write(&api_key, "key-from-file\n").unwrap();
        let secret = dir.path().join("token_secret");
        std::fs::write(&secret, "secret-from-file\r\n").unwrap();
        let keys = dir.path().join("keys.toml");
        std::fs::write(
            &keys,
            "[[keys]]\nname = \"ci\"\nkey = \"ci-key\"\nrole = \"viewer\"\n\n\
             [[keys]]\nname = \"ops\"\nkey_sha256 = \"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824\"\nrole = \"operator\"\n",
        )
        .unwrap();
        let env = [
            ("LCM__AUTH__API_KEY_FILE", &api_key),
            ("LCM__AUTH__TOKEN_SECRET_FILE", &secret),
            ("LCM__AUTH__KEYS_FILE", &keys),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.display().to_string()))
        .collect();
        let settings = Settings::load_with_env(None, Some(env)).expect("loads");
        assert_eq!(settings.auth.api_key.expose(), "key-from-file");
        assert_eq!(settings.auth.token_secret.expose(), "secret-from-file");
        let names: Vec<String> = settings
            .auth
            .api_keys()
            .unwrap()
            .into_iter()
            .map(|k| k.name)
            .collect();
        assert_eq!(names, ["default", "ci", "ops"]);
        assert!(settings.secret_values().contains(&"ci-key".to_owned()));
    }

    #[test]
    fn a_bad_secret_file_names_its_key_and_path_and_never_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nowhere");
        let load = |key: &str, path: &Path| {
            let env = [(key.to_owned(), path.display().to_string())]
                .into_iter()
                .collect();
            Settings::load_with_env(None, Some(env))
                .unwrap_err()
                .to_string()
        };
        // Files that cannot be read are told with every other problem, not instead of them.
        let env = [
            ("LCM__AUTH__API_KEY_FILE", missing.display().to_string()),
            ("LCM__AUTH__KEYS_FILE", missing.display().to_string()),
            ("LCM__EXECUTOR__REQUEST_TIMEOUT_SECS", "0".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let err = Settings::load_with_env(None, Some(env))
            .unwrap_err()
            .to_string();
        for key in [
            "auth.api_key_file",
            "auth.keys_file",
            "executor.request_timeout_secs",
        ] {
            assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
        }
        for (env, key) in [
            ("LCM__AUTH__API_KEY_FILE", "auth.api_key_file"),
            ("LCM__AUTH__TOKEN_SECRET_FILE", "auth.token_secret_file"),
            ("LCM__AUTH__KEYS_FILE", "auth.keys_file"),
        ] {
            let err = load(env, &missing);
            assert!(err.contains(&format!("`{key}`")), "{err}");
            assert!(err.contains(&missing.display().to_string()), "{err}");
            assert!(
                err.contains(&format!("(from environment variable {env})")),
                "where it was set: {err}"
            );
        }

        let keys = dir.path().join("keys.toml");
        for (content, reason) in [
            (
                "[[keys]]\nname = \"ci\"\nkey = 907153224\nrole = \"viewer\"\n",
                "a secret must be a string",
            ),
            (
                "[[keys]]\nname = \"ci\"\nkey = \"907153224\nrole = \"viewer\"\n",
                "line 3",
            ),
            (
                "[[keys]]\nname = \"ci\"\nkey = \"k\"\nrole = \"907153224\"\n",
                "unknown variant (value not shown), expected one of `viewer`",
            ),
            (
                "keys = \"907153224\"\n",
                "invalid type: string (value not shown), expected a sequence",
            ),
            ("# no keys yet\n", "is empty: it has no [[keys]] table"),
            (
                "[[keys]]\nname = \"ci\"\nkey = \"907153224\"\nrolle = \"viewer\"\n",
                "missing field `role`",
            ),
            (
                "[[kyes]]\nname = \"ci\"\nkey = \"907153224\"\nrole = \"viewer\"\n",
                "`kyes` is not a setting; did you mean `keys`?",
            ),
            (
                "[[keys]]\nname = \"ci\"\nkey = \"907153224\"\nrole = \"viewer\"\nrol = \"admin\"\n",
                "`keys[0].rol` is not a setting; did you mean `keys[0].role`?",
            ),
            (
                "[[keys]]\nname = \"ci\"\nkey = \"907153224\"\nrole = \"viewer\"\n\
                 [[keys]]\nname = \"ci2\"\nkey = \"907153224\"\nrole = \"admin\"\n",
                "same secret",
            ),
            (
                "[[keys]]\nname = \"half\"\nrole = \"viewer\"\n\
                 [[keys]]\nname = \"no name\"\nkey = \"907153224\"\nrole = \"admin\"\n",
                "keys[0]: key 'half': give exactly one of `key` and `key_sha256`",
            ),
            (
                "[[keys]]\nname = \"half\"\nrole = \"viewer\"\n\
                 [[keys]]\nname = \"no name\"\nkey = \"907153224\"\nrole = \"admin\"\n",
                "keys[1]: the name 'no name' is not",
            ),
        ] {
            std::fs::write(&keys, content).unwrap();
            let err = load("LCM__AUTH__KEYS_FILE", &keys);
            assert!(err.contains("`auth.keys_file`"), "{err}");
            assert!(err.contains(&keys.display().to_string()), "{err}");
            assert!(err.contains(reason), "{reason}: {err}");
            assert!(!err.contains("907153224"), "the secret leaked: {err}");
        }

        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let err = load("LCM__AUTH__API_KEY_FILE", &empty);
        assert!(
            err.contains("`auth.api_key_file`") && err.contains("is empty"),
            "{err}"
        );
    }

    #[test]
    fn a_configuration_file_that_is_not_toml_is_refused_without_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lcm.toml");
        std::fs::write(&file, "[auth]\napi_key = \"271828182845\n").unwrap();
        let file = ConfigFile {
            path: file,
            origin: FileOrigin::Flag,
        };
        let err = Settings::load_with_env(Some(&file), Some(HashMap::new()))
            .unwrap_err()
            .to_string();
        let file = file.path;
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains(&file.display().to_string()), "{err}");
        assert!(!err.contains("271828182845"), "the secret leaked: {err}");
    }

    #[test]
    fn basic_credentials_are_secret_also_as_the_header_carries_them() {
        let mut settings = Settings::defaults().unwrap();
        let repository = &mut settings.services.trial_repository;
        repository.username = Some("lcm".into());
        repository.password = Some(Secret::new("s3cret-pass"));
        let secrets = settings.secret_values();
        assert!(secrets.contains(&"s3cret-pass".to_owned()));
        // What `Authorization: Basic …` carries for lcm:s3cret-pass.
        assert!(
            secrets.contains(&"bGNtOnMzY3JldC1wYXNz".to_owned()),
            "{secrets:?}"
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let settings = Settings::defaults().unwrap();
        let printed = format!("{settings:?}");
        assert!(!printed.contains(PLACEHOLDER_API_KEY));
        assert!(!printed.contains(PLACEHOLDER_TOKEN_SECRET));
    }
}
