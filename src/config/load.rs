//! Reading the layers and refusing what the settings do not take. Each layer is kept apart so
//! a refused key can be told with where it was set: unknown keys (with the known key nearest
//! to each), values of the wrong type (with what the key accepts) and values that cannot work
//! ([`Settings::validate`]). The `config` crate's own messages are translated here, in one place.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use config::{Config, Environment, File, FileFormat, Value, ValueKind};

use super::keys::{self, Accepts};
use super::{ConfigError, DEFAULTS, Settings};

/// The optional file layered over the built-in defaults, relative to the working directory.
pub(super) const WORKING_DIRECTORY_FILE: &str = "config/default.toml";

/// How the configuration file was named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOrigin {
    /// The `--config <path>` option.
    Flag,
    /// The `LCM_CONFIG` environment variable.
    Variable,
}

/// The configuration file layered over the defaults, and how it was named.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub origin: FileOrigin,
}

impl fmt::Display for ConfigFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.origin {
            FileOrigin::Flag => write!(f, "--config {}", self.path.display()),
            FileOrigin::Variable => write!(f, "LCM_CONFIG={}", self.path.display()),
        }
    }
}

/// Where a value was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The built-in defaults.
    Defaults,
    /// `config/default.toml` in the working directory.
    WorkingDirectory,
    /// The file of `--config` or `LCM_CONFIG`.
    File(PathBuf),
    /// This environment variable.
    Env(String),
}

/// One thing wrong with the configuration, with where it was set.
#[derive(Debug)]
pub struct Problem {
    key: String,
    source: Source,
    kind: ProblemKind,
}

#[derive(Debug)]
enum ProblemKind {
    /// The settings have no such key; the known key nearest to it.
    Unknown { nearest: Option<String> },
    /// The value is refused for this reason.
    Refused(String),
    /// A table was set without this key, which it needs; what the key takes.
    Missing { takes: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = &self.key;
        match (&self.kind, &self.source) {
            (ProblemKind::Unknown { nearest }, Source::Env(variable)) => {
                write!(
                    f,
                    "environment variable {variable}: `{key}` is not a setting"
                )?;
                if let Some(nearest) = nearest {
                    write!(f, "; did you mean `{nearest}`")?;
                    // A table has no variable of its own.
                    if keys::accepts(nearest) != Some(Accepts::Table)
                        && let Some(variable) = keys::env_var(nearest)
                    {
                        write!(f, " ({variable})")?;
                    }
                    f.write_str("?")?;
                }
                Ok(())
            }
            (ProblemKind::Unknown { nearest }, source) => {
                write!(
                    f,
                    "configuration key `{key}`{} is not a setting",
                    Where(source)
                )?;
                if let Some(nearest) = nearest {
                    write!(f, "; did you mean `{nearest}`?")?;
                }
                Ok(())
            }
            (ProblemKind::Refused(reason), source) => {
                write!(f, "configuration key `{key}`{}: {reason}", Where(source))
            }
            (ProblemKind::Missing { takes }, Source::Env(variable)) => {
                let table = key.rfind(['.', '[']).map_or(key.as_str(), |at| &key[..at]);
                write!(
                    f,
                    "configuration key `{key}` is missing (it takes {takes}); environment variable {variable} sets `{table}` without it"
                )
            }
            (ProblemKind::Missing { takes }, source) => write!(
                f,
                "configuration key `{key}` is missing{}; it takes {takes}",
                Where(source)
            ),
        }
    }
}

/// ` (in <file>)` or ` (from environment variable <name>)`; nothing for the defaults.
struct Where<'a>(&'a Source);

impl fmt::Display for Where<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Source::Defaults => Ok(()),
            Source::WorkingDirectory => {
                write!(f, " (in {WORKING_DIRECTORY_FILE} of the working directory)")
            }
            Source::File(path) => write!(f, " (in {})", path.display()),
            Source::Env(variable) => write!(f, " (from environment variable {variable})"),
        }
    }
}

/// Problems, one a line.
#[derive(Debug)]
pub struct Problems(Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// One source of settings, parsed on its own.
struct Layer {
    source: LayerSource,
    config: Config,
}

enum LayerSource {
    Defaults,
    WorkingDirectory,
    File(PathBuf),
    /// The `LCM__…` variables, by the key each sets.
    Env(HashMap<String, String>),
}

impl Layer {
    fn defaults() -> Result<Self, ConfigError> {
        Ok(Self {
            source: LayerSource::Defaults,
            config: Config::builder()
                .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
                .build()?,
        })
    }

    fn file(path: &Path, source: LayerSource) -> Result<Self, ConfigError> {
        let config = Config::builder()
            .add_source(File::from(path).format(FileFormat::Toml))
            .build()
            .map_err(|e| ConfigError::File {
                path: path.to_path_buf(),
                // The parser quotes the line at fault, which may hold a secret.
                reason: match super::without_quoted_text(e) {
                    config::ConfigError::FileParse { cause, .. } => {
                        format!("is not valid TOML: {cause}")
                    }
                    other => format!("cannot be read: {other}"),
                },
            })?;
        Ok(Self { source, config })
    }

    fn env(env: HashMap<String, String>) -> Result<Self, ConfigError> {
        // The same mapping as the Environment source: lower case, prefix off, `__` is `.`.
        let mut spellings: BTreeMap<String, Vec<&String>> = BTreeMap::new();
        for variable in env.keys() {
            if let Some(key) = variable.to_lowercase().strip_prefix("lcm__") {
                spellings
                    .entry(key.replace("__", "."))
                    .or_default()
                    .push(variable);
            }
        }
        // Which of two spellings the reader would take is not said anywhere: neither is.
        let mut twice: Vec<ConfigError> = spellings
            .iter_mut()
            .filter(|(_, named)| named.len() > 1)
            .map(|(key, named)| {
                named.sort();
                let named: Vec<&str> = named.iter().map(|v| v.as_str()).collect();
                super::invalid(
                    key.clone(),
                    format!(
                        "set by more than one environment variable ({}): keep one",
                        named.join(", ")
                    ),
                )
            })
            .collect();
        match twice.len() {
            0 => {}
            1 => return Err(twice.remove(0)),
            _ => return Err(ConfigError::Several(twice)),
        }
        let variables: HashMap<String, String> = spellings
            .into_iter()
            .map(|(key, named)| (key, named[0].clone()))
            .collect();
        let config = Config::builder()
            .add_source(
                // Values stay text (an API key "0123" must not become 123); typed fields
                // parse their text when the settings are read.
                Environment::with_prefix("LCM")
                    .prefix_separator("__")
                    .separator("__")
                    .source(Some(env)),
            )
            .build()?;
        Ok(Self {
            source: LayerSource::Env(variables),
            config,
        })
    }

    fn has(&self, path: &str) -> bool {
        self.config.get::<Value>(path).is_ok()
    }

    fn source_of(&self, path: &str) -> Source {
        match &self.source {
            LayerSource::Defaults => Source::Defaults,
            LayerSource::WorkingDirectory => Source::WorkingDirectory,
            LayerSource::File(path) => Source::File(path.clone()),
            LayerSource::Env(variables) => {
                // A table set through the environment is set by the variables below it.
                let below = format!("{path}.");
                let variable = variables.get(path).cloned().or_else(|| {
                    let mut below: Vec<_> = variables
                        .iter()
                        .filter(|(key, _)| key.starts_with(&below))
                        .map(|(_, variable)| variable.clone())
                        .collect();
                    below.sort();
                    below.into_iter().next()
                });
                variable.map_or(Source::Defaults, Source::Env)
            }
        }
    }
}

/// The layers in order, later overriding earlier.
struct Layers(Vec<Layer>);

impl Layers {
    /// The defaults, the working directory's file, the named file and the environment.
    fn all(file: Option<&ConfigFile>, env: HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut layers = vec![Layer::defaults()?];
        let working = Path::new(WORKING_DIRECTORY_FILE);
        if working.is_file() {
            layers.push(Layer::file(working, LayerSource::WorkingDirectory)?);
        } else if working.symlink_metadata().is_ok() {
            // Something is there, meant to be read: a mount gone wrong is not passed over.
            return Err(ConfigError::File {
                path: working.to_path_buf(),
                reason: "is there but is not a file that can be read (a directory, or a link to nothing)".to_owned(),
            });
        }
        if let Some(file) = file {
            if !file.path.is_file() {
                return Err(ConfigError::NoFile(file.clone()));
            }
            layers.push(Layer::file(
                &file.path,
                LayerSource::File(file.path.clone()),
            )?);
        }
        layers.push(Layer::env(env)?);
        Ok(Self(layers))
    }

    fn merged(&self, overrides: &[(String, Value)]) -> Result<Config, ConfigError> {
        let mut builder = Config::builder();
        for layer in &self.0 {
            builder = builder.add_source(layer.config.clone());
        }
        for (key, value) in overrides {
            builder = builder.set_override(key.as_str(), value.clone())?;
        }
        Ok(builder.build()?)
    }

    /// Where the value at `path` was set: the last layer that has it (the defaults when none
    /// has, as they are not worth a mention).
    fn source_of(&self, path: &str) -> Source {
        self.0
            .iter()
            .rev()
            .find(|layer| layer.has(path))
            .map_or(Source::Defaults, |layer| layer.source_of(path))
    }

    /// The settings, or every unknown key and every refused value found.
    fn settings(&self) -> Result<Settings, ConfigError> {
        let mut problems: Vec<Problem> = Vec::new();
        // A refused value is replaced by its default (or by nothing) and the settings are read
        // again, so one start tells every problem; each key is replaced at most once.
        let mut stand_ins: Vec<(String, Value)> = Vec::new();
        // Each file on its own: a wrong value in one is told even where a later layer sets the
        // key too. The environment's values are text, which typed keys parse when read.
        for layer in &self.0 {
            let (LayerSource::WorkingDirectory | LayerSource::File(_)) = layer.source else {
                continue;
            };
            let mut mistyped = Vec::new();
            if let ValueKind::Table(top) = &layer.config.cache.kind {
                for (key, value) in top {
                    mistyped_below(key, value, &mut mistyped);
                }
            }
            for (key, value, accepts) in mistyped {
                let kind = ProblemKind::Refused(format!(
                    "{} is not {}",
                    shown(&value, accepts),
                    takes(&key, accepts)
                ));
                if !stand_ins.iter().any(|(k, _)| *k == key) {
                    stand_ins.push((key.clone(), self.stand_in(&key)));
                }
                problems.push(Problem {
                    source: layer.source_of(&key),
                    kind,
                    key,
                });
            }
        }
        loop {
            let merged = self.merged(&stand_ins)?;
            let mut ignored = Vec::new();
            let result: Result<Settings, _> =
                serde_ignored::deserialize(merged.clone(), |path| ignored.push(render(&path)));
            for key in ignored {
                if !problems.iter().any(|p| p.key == key) {
                    problems.push(self.unknown(key));
                }
            }
            let error = match result {
                Ok(settings) if problems.is_empty() => return Ok(settings),
                Ok(_) => break,
                Err(error) => error,
            };
            let Some(key) = key_of(&error) else {
                return Err(error.into());
            };
            if stand_ins.iter().any(|(k, _)| *k == key) {
                break;
            }
            let kind = refusal(&key, &error, &merged);
            // A missing key was set nowhere: the table that lacks it was.
            let source = match kind {
                ProblemKind::Missing { .. } => key
                    .rfind(['.', '['])
                    .map_or(Source::Defaults, |at| self.source_of(&key[..at])),
                _ => self.source_of(&key),
            };
            problems.push(Problem {
                source,
                kind,
                key: key.clone(),
            });
            stand_ins.push((key.clone(), self.stand_in(&key)));
        }
        problems.sort_by(|a, b| a.key.cmp(&b.key));
        Err(ConfigError::Refused(Problems(problems)))
    }

    /// What stands in for a refused value at `key`: its default, or a value it accepts.
    fn stand_in(&self, key: &str) -> Value {
        self.0[0].config.get::<Value>(key).unwrap_or_else(|_| {
            keys::accepts(key).map_or_else(|| Value::new(None, ValueKind::Nil), Accepts::sample)
        })
    }

    fn unknown(&self, key: String) -> Problem {
        Problem {
            source: self.source_of(&key),
            kind: ProblemKind::Unknown {
                nearest: keys::nearest(&key),
            },
            key,
        }
    }

    /// A [`ConfigError::Invalid`] from validation, told with where its key was set.
    fn locate(&self, error: ConfigError) -> ConfigError {
        match error {
            ConfigError::Invalid { key, reason } => ConfigError::Refused(Problems(vec![Problem {
                source: self.source_of(&key),
                kind: ProblemKind::Refused(reason),
                key,
            }])),
            ConfigError::Several(errors) => {
                let (mut problems, mut others) = (Vec::new(), Vec::new());
                for error in errors {
                    match self.locate(error) {
                        ConfigError::Refused(Problems(more)) => problems.extend(more),
                        other => others.push(other),
                    }
                }
                if !problems.is_empty() {
                    others.insert(0, ConfigError::Refused(Problems(problems)));
                }
                match others.len() {
                    1 => others.remove(0),
                    _ => ConfigError::Several(others),
                }
            }
            other => other,
        }
    }
}

/// A path as the `config` crate writes one: `auth.keys[0].role`.
pub(super) fn render(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", render(parent)),
        Path::Map { parent, key } => match render(parent) {
            parent if parent.is_empty() => key.clone(),
            parent => format!("{parent}.{key}"),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => render(parent),
    }
}

/// The key a deserialization error is about. The crate writes `keys[0]role` for
/// `keys[0].role`; the dot is put back.
fn key_of(error: &config::ConfigError) -> Option<String> {
    let key = match error {
        config::ConfigError::Type { key, .. } | config::ConfigError::At { key, .. } => {
            key.clone()?
        }
        config::ConfigError::NotFound(key) => key.clone(),
        _ => return None,
    };
    let mut fixed = String::with_capacity(key.len() + 2);
    let mut after_index = false;
    for c in key.chars() {
        if after_index && c != '[' && c != '.' {
            fixed.push('.');
        }
        after_index = c == ']';
        fixed.push(c);
    }
    Some(fixed)
}

/// Every value at or below `key` whose type its key does not take, though the `config` crate
/// would convert it (`1.5` or `true` to a whole number, `"yes"` to a boolean, a number to a
/// word, `true` or a number to a text: `api_key = true` would make the key the word "true"),
/// with what the key accepts. Unknown keys are left to the settings' reading.
fn mistyped_below(key: &str, value: &Value, out: &mut Vec<(String, Value, Accepts)>) {
    let Some(accepts) = keys::accepts(key) else {
        return;
    };
    let fits = match (accepts, &value.kind) {
        (_, ValueKind::Nil) | (Accepts::Text, ValueKind::String(_)) => true,
        (
            Accepts::Whole(_),
            ValueKind::I64(_) | ValueKind::I128(_) | ValueKind::U64(_) | ValueKind::U128(_),
        )
        | (
            Accepts::Number,
            ValueKind::I64(_)
            | ValueKind::I128(_)
            | ValueKind::U64(_)
            | ValueKind::U128(_)
            | ValueKind::Float(_),
        )
        | (Accepts::Boolean, ValueKind::Boolean(_))
        | (Accepts::OneOf(_), ValueKind::String(_))
        | (Accepts::TextList, ValueKind::String(_) | ValueKind::Array(_)) => true,
        (Accepts::AnyKeys, ValueKind::Table(table)) => {
            for (child, value) in table {
                if !matches!(value.kind, ValueKind::String(_)) {
                    out.push((format!("{key}.{child}"), value.clone(), Accepts::Text));
                }
            }
            true
        }
        (Accepts::Table, ValueKind::Table(table)) => {
            for (child, value) in table {
                mistyped_below(&format!("{key}.{child}"), value, out);
            }
            true
        }
        (Accepts::ListOfTables, ValueKind::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                mistyped_below(&format!("{key}[{i}]"), item, out);
            }
            true
        }
        (
            Accepts::Text
            | Accepts::Whole(_)
            | Accepts::Number
            | Accepts::Boolean
            | Accepts::OneOf(_)
            | Accepts::TextList
            | Accepts::AnyKeys
            | Accepts::Table
            | Accepts::ListOfTables,
            _,
        ) => false,
    };
    if !fits {
        out.push((key.to_owned(), value.clone(), accepts));
    }
}

/// What the key at `key` accepts, told: the keys a table takes are listed.
fn takes(key: &str, accepts: Accepts) -> String {
    match accepts {
        Accepts::Table => format!("a table of: {}", keys::children(key).join(", ")),
        Accepts::ListOfTables => format!(
            "a list of tables of: {}",
            keys::children(&format!("{key}[]")).join(", ")
        ),
        other => other.to_string(),
    }
}

/// Why the value at `key` was refused, and what the key accepts.
fn refusal(key: &str, error: &config::ConfigError, merged: &Config) -> ProblemKind {
    let value = merged.get::<Value>(key).ok();
    let missing = matches!(error, config::ConfigError::NotFound(_))
        || value
            .as_ref()
            .is_none_or(|v| matches!(v.kind, ValueKind::Nil));
    let Some(accepts) = keys::accepts(key) else {
        return ProblemKind::Refused(error.to_string());
    };
    let what = takes(key, accepts);
    match value {
        _ if missing => ProblemKind::Missing { takes: what },
        Some(value) => ProblemKind::Refused(format!("{} is not {what}", shown(&value, accepts))),
        None => ProblemKind::Refused(format!("is not {what}")),
    }
}

/// A refused value as it can be shown. Only the values of number, boolean and word keys are
/// repeated: any other may be a secret, or one put under the wrong key.
fn shown(value: &Value, accepts: Accepts) -> String {
    match (&value.kind, accepts) {
        (ValueKind::Table(_), _) => "a table".to_owned(),
        (ValueKind::Array(_), _) => "a list".to_owned(),
        (ValueKind::Nil, _) => "nothing".to_owned(),
        (other, Accepts::Whole(_) | Accepts::Number | Accepts::Boolean | Accepts::OneOf(_)) => {
            format!("'{other}'")
        }
        (ValueKind::String(_), _) => "a text".to_owned(),
        (ValueKind::Boolean(_), _) => "a boolean".to_owned(),
        (
            ValueKind::I64(_)
            | ValueKind::I128(_)
            | ValueKind::U64(_)
            | ValueKind::U128(_)
            | ValueKind::Float(_),
            _,
        ) => "a number".to_owned(),
    }
}

/// The layered settings, with every problem told with where it was set.
pub(super) fn load(
    file: Option<&ConfigFile>,
    env: HashMap<String, String>,
) -> Result<Settings, ConfigError> {
    let layers = Layers::all(file, env)?;
    let mut settings = layers.settings()?;
    // Every problem at once: the files that could not be read, and the values.
    let mut problems = settings.auth.read_files();
    problems.extend(settings.problems());
    match ConfigError::of(problems) {
        None => Ok(settings),
        Some(e) => Err(layers.locate(e)),
    }
}

/// The built-in defaults alone.
pub(super) fn defaults() -> Result<Settings, ConfigError> {
    Layers(vec![Layer::defaults()?]).settings()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    /// A configuration file named by `--config`, in a directory dropped with the guard.
    fn file(text: &str) -> (tempfile::TempDir, ConfigFile) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lcm.toml");
        std::fs::write(&path, text).unwrap();
        let file = ConfigFile {
            path,
            origin: FileOrigin::Flag,
        };
        (dir, file)
    }

    fn refused(file: Option<&ConfigFile>, pairs: &[(&str, &str)]) -> String {
        Settings::load_with_env(file, env(pairs))
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn one_key_set_by_two_spellings_of_its_variable_is_refused_naming_both() {
        let text = refused(
            None,
            &[
                ("LCM__SCHEDULER__AUTOMATIC", "true"),
                ("lcm__scheduler__automatic", "false"),
            ],
        );
        assert!(
            text.contains("`scheduler.automatic`")
                && text.contains(
                    "set by more than one environment variable (LCM__SCHEDULER__AUTOMATIC, lcm__scheduler__automatic): keep one"
                ),
            "{text}"
        );
    }

    #[test]
    fn an_unknown_key_is_refused_naming_the_key_meant() {
        let (_dir, f) = file("[executor]\nrequest_timeuot_secs = 5\n");
        assert_eq!(
            refused(Some(&f), &[]),
            format!(
                "configuration key `executor.request_timeuot_secs` (in {}) is not a setting; did you mean `executor.request_timeout_secs`?",
                f.path.display()
            )
        );
        assert_eq!(
            refused(None, &[("LCM__EXECUTOR__REQUEST_TIMEOUT", "5")]),
            "environment variable LCM__EXECUTOR__REQUEST_TIMEOUT: `executor.request_timeout` is not a setting; did you mean `executor.request_timeout_secs` (LCM__EXECUTOR__REQUEST_TIMEOUT_SECS)?"
        );
        assert_eq!(
            refused(None, &[("LCM__COLOUR", "blue")]),
            "environment variable LCM__COLOUR: `colour` is not a setting",
            "no suggestion when nothing is near"
        );
    }

    #[test]
    fn unknown_keys_inside_lists_and_nested_tables_are_refused() {
        let (_dir, f) = file(
            r#"
[[auth.keys]]
name = "ops"
key = "k"
role = "operator"
rol = "admin"

[executor.retry]
max_atempts = 3

[services.trial_repository.retry]
backoff = 1

[services.kpi_monitoring.oauth2]
auth_url = "http://kpi/token"
client_id = "lcm"
client_secret = "s"
scope = "all"
"#,
        );
        let text = refused(Some(&f), &[]);
        for expected in [
            "configuration key `auth.keys[0].rol` (in ",
            "did you mean `auth.keys[0].role`?",
            "`executor.retry.max_atempts`",
            "did you mean `executor.retry.max_attempts`?",
            "`services.trial_repository.retry.backoff`",
            "`services.kpi_monitoring.oauth2.scope`",
        ] {
            assert!(text.contains(expected), "{expected}: {text}");
        }
        assert_eq!(text.lines().count(), 4, "one line each: {text}");
    }

    #[test]
    fn facilities_take_any_key() {
        let (_dir, f) = file("[facilities]\nMARS = \"red-planet\"\n");
        let settings =
            Settings::load_with_env(Some(&f), env(&[("LCM__FACILITIES__MOON", "grey")])).unwrap();
        assert_eq!(settings.facilities["MARS"], "red-planet");
        assert_eq!(settings.facilities["moon"], "grey");
    }

    #[test]
    fn a_facility_that_is_not_a_name_is_refused_naming_it() {
        let (_dir, f) =
            file("[facilities]\nEUR = \"eurecom\"\nUMA = 7\nOUL = true\nATH = [\"x\"]\n");
        let text = refused(Some(&f), &[]);
        for key in ["facilities.UMA", "facilities.OUL", "facilities.ATH"] {
            assert!(
                text.contains(&format!("configuration key `{key}` (in ")),
                "{key}: {text}"
            );
        }
        assert!(text.contains("a number is not text"), "{text}");
        assert!(text.contains("a list is not text"), "{text}");
        assert!(!text.contains("EUR"), "{text}");
        let (_dir, f) = file("facilities = [\"EUR\"]\n");
        let text = refused(Some(&f), &[]);
        assert!(
            text.contains("`facilities`")
                && text.contains("a list is not a table of names to text"),
            "{text}"
        );
        let (_dir, f) = file("[facilities]\nEUR = \"\"\n");
        let text = refused(Some(&f), &[]);
        assert!(
            text.contains("`facilities.EUR`") && text.contains("empty"),
            "{text}"
        );
    }

    #[test]
    fn a_value_of_the_wrong_type_names_the_key_the_variable_and_what_it_accepts() {
        assert_eq!(
            refused(None, &[("LCM__EXECUTOR__REQUEST_TIMEOUT_SECS", "abc")]),
            "configuration key `executor.request_timeout_secs` (from environment variable LCM__EXECUTOR__REQUEST_TIMEOUT_SECS): 'abc' is not a whole number"
        );
        assert_eq!(
            refused(None, &[("LCM__LOGGING__FORMAT", "xml")]),
            "configuration key `logging.format` (from environment variable LCM__LOGGING__FORMAT): 'xml' is not one of: text, json"
        );
        for (pairs, expected) in [
            (
                ("LCM__EXECUTOR__RETRY__MULTIPLIER", "fast"),
                "'fast' is not a number",
            ),
            (
                ("LCM__STORE__SYNCHRONOUS", "always"),
                "'always' is not one of: normal, full",
            ),
            (
                ("LCM__SERVICES__ABSTRACTION_LAYER__PORT", "70000"),
                "'70000' is not a whole number up to 65535",
            ),
            (
                ("LCM__EXECUTOR__OPERATOR_TIMEOUT_SECS", "-1"),
                "'-1' is not a whole number",
            ),
            (
                ("LCM__EXECUTOR__RETRY", "3"),
                "a text is not a table of: max_attempts, initial_backoff_ms, max_backoff_ms, multiplier",
            ),
        ] {
            let text = refused(None, &[pairs]);
            assert!(text.contains(expected), "{expected}: {text}");
            assert!(text.contains(pairs.0), "names the variable: {text}");
        }

        let (_dir, f) = file(
            r#"
[executor]
disable_vnf = "maybe"

[[auth.keys]]
name = "ops"
key = "k"
role = "root"

[[auth.keys]]
name = "nobody"
key = "k2"
"#,
        );
        let text = refused(Some(&f), &[]);
        let at = format!("(in {})", f.path.display());
        for expected in [
            format!(
                "configuration key `auth.keys[0].role` {at}: 'root' is not one of: viewer, operator, admin"
            ),
            format!(
                "configuration key `auth.keys[1].role` is missing {at}; it takes one of: viewer, operator, admin"
            ),
            format!(
                "configuration key `executor.disable_vnf` {at}: 'maybe' is not a boolean (true or false)"
            ),
        ] {
            assert!(text.lines().any(|l| l == expected), "{expected}\n{text}");
        }
    }

    #[test]
    fn a_file_value_the_crate_would_convert_is_refused_as_the_wrong_type() {
        let (_dir, f) = file(
            r#"
[executor]
request_timeout_secs = 1.5
callback_timeout_secs = true
disable_vnf = "yes"

[executor.retry]
multiplier = "2"

[logging]
format = 1

[[auth.keys]]
name = "ops"
key = "k"
role = true

[auth]
api_key = true
token_secret = 12345
"#,
        );
        let text = refused(Some(&f), &[]);
        let at = format!("(in {})", f.path.display());
        for expected in [
            format!(
                "configuration key `executor.request_timeout_secs` {at}: '1.5' is not a whole number"
            ),
            format!(
                "configuration key `executor.callback_timeout_secs` {at}: 'true' is not a whole number"
            ),
            format!(
                "configuration key `executor.disable_vnf` {at}: 'yes' is not a boolean (true or false)"
            ),
            format!("configuration key `executor.retry.multiplier` {at}: '2' is not a number"),
            format!("configuration key `logging.format` {at}: '1' is not one of: text, json"),
            format!(
                "configuration key `auth.keys[0].role` {at}: 'true' is not one of: viewer, operator, admin"
            ),
            format!("configuration key `auth.api_key` {at}: a boolean is not text"),
            format!("configuration key `auth.token_secret` {at}: a number is not text"),
        ] {
            assert!(text.lines().any(|l| l == expected), "{expected}\n{text}");
        }
        assert!(!text.contains("12345"), "a secret is not repeated: {text}");
        assert_eq!(text.lines().count(), 8, "one line each: {text}");
        // The same values as text from the environment are read as the keys' types.
        let settings = Settings::load_with_env(
            None,
            env(&[
                ("LCM__EXECUTOR__REQUEST_TIMEOUT_SECS", "7"),
                ("LCM__EXECUTOR__DISABLE_VNF", "false"),
            ]),
        )
        .unwrap();
        assert_eq!(settings.executor.request_timeout_secs, 7);
    }

    #[test]
    fn a_wrong_file_value_is_refused_even_where_a_variable_sets_the_key_too() {
        let (_dir, f) = file("[executor]\nrequest_timeout_secs = \"5\"\n[auth]\napi_key = true\n");
        let text = refused(
            Some(&f),
            &[
                ("LCM__EXECUTOR__REQUEST_TIMEOUT_SECS", "5"),
                ("LCM__AUTH__API_KEY", "from-the-environment"),
            ],
        );
        let at = format!("(in {})", f.path.display());
        for expected in [
            format!("configuration key `auth.api_key` {at}: a boolean is not text"),
            format!(
                "configuration key `executor.request_timeout_secs` {at}: '5' is not a whole number"
            ),
        ] {
            assert!(text.lines().any(|l| l == expected), "{expected}\n{text}");
        }
        assert_eq!(text.lines().count(), 2, "one line each: {text}");
        assert!(!text.contains("from-the-environment"), "{text}");
    }

    #[test]
    fn a_secret_under_a_list_or_table_key_is_not_repeated() {
        let (_dir, f) = file("[auth]\nkeys = \"hunter2-list\"\n");
        let text = refused(
            Some(&f),
            &[("LCM__SERVICES__KPI_MONITORING__OAUTH2", "hunter2-table")],
        );
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("`auth.keys`"), "{text}");
        assert!(text.contains("`services.kpi_monitoring.oauth2`"), "{text}");
    }

    #[test]
    fn every_problem_is_told_at_once_and_secrets_are_not_repeated() {
        let (_dir, f) = file(
            "[auth]\napi_kee = \"hunter2-file\"\n[auth.token_secret]\nvalue = \"hunter2-table\"\n",
        );
        let text = refused(
            Some(&f),
            &[
                ("LCM__SCHEDULER__AUTOMATIC", "perhaps"),
                ("LCM__SERVICES__TRIAL_REPOSITORY__APIKEY_", "hunter2-env"),
            ],
        );
        assert_eq!(text.lines().count(), 4, "{text}");
        assert!(text.contains("`auth.api_kee`"), "{text}");
        assert!(text.contains("`auth.token_secret`") && text.contains("a table is not text"));
        assert!(text.contains("LCM__SCHEDULER__AUTOMATIC"), "{text}");
        assert!(
            text.contains("LCM__SERVICES__TRIAL_REPOSITORY__APIKEY_"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn a_value_that_cannot_work_says_where_it_was_set() {
        assert_eq!(
            refused(None, &[("LCM__SERVER__BIND", "nope")]),
            "configuration key `server.bind` (from environment variable LCM__SERVER__BIND): 'nope' is not an address like 0.0.0.0:5000 (invalid socket address syntax)"
        );
        assert_eq!(
            refused(None, &[("LCM__SERVICES__KPI_MONITORING__USERNAME", "u")]),
            "configuration key `services.kpi_monitoring.password`: missing: `services.kpi_monitoring.username` is set, and username and password go together"
        );
        assert_eq!(
            refused(
                None,
                &[(
                    "LCM__SERVICES__KPI_MONITORING__OAUTH2__AUTH_URL",
                    "http://kpi/token"
                )]
            )
            .lines()
            .next(),
            Some(
                "configuration key `services.kpi_monitoring.oauth2.client_id` is missing (it takes text); environment variable LCM__SERVICES__KPI_MONITORING__OAUTH2__AUTH_URL sets `services.kpi_monitoring.oauth2` without it"
            )
        );
        let (_dir, f) = file("[services.trial_enforcement]\npassword = \"p\"\n");
        assert_eq!(
            refused(Some(&f), &[]),
            "configuration key `services.trial_enforcement.username`: missing: `services.trial_enforcement.password` is set, and username and password go together"
        );
    }

    #[test]
    fn a_file_that_is_not_there_or_not_toml_is_named_with_how_it_was_given() {
        let missing = PathBuf::from("/nowhere/lcm.toml");
        for (origin, expected) in [
            (FileOrigin::Flag, "--config /nowhere/lcm.toml: "),
            (FileOrigin::Variable, "LCM_CONFIG=/nowhere/lcm.toml: "),
        ] {
            let file = ConfigFile {
                path: missing.clone(),
                origin,
            };
            let text = refused(Some(&file), &[]);
            assert!(text.starts_with(expected), "{text}");
            assert!(text.contains("no configuration file"), "{text}");
        }
        let (_dir, f) = file("[server\nbind = 1");
        let text = refused(Some(&f), &[]);
        assert!(
            text.starts_with(&format!(
                "configuration file {}: is not valid TOML",
                f.path.display()
            )),
            "{text}"
        );
        let (_dir, f) = file("[executor]\nrequest_timeout_secs = 99999999999999999999\n");
        let text = refused(Some(&f), &[]);
        assert!(
            text.contains("is not valid TOML: TOML parse error at line 2: "),
            "{text}"
        );
    }
}
