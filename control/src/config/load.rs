//! Loading the configuration in layers with `figment`, one rule for every key:
//!
//! 1. embedded defaults ([`Config::default`], including the defaults of every field added later);
//! 2. the TOML file;
//! 3. environment variables `GREENROOM_<SECTION>__<KEY>` (nested tables with more `__`, e.g.
//!    `GREENROOM_LIMITS__IDLE_WS_SECS`, `GREENROOM_SERVER__TLS__CERT_PATH`), and the documented
//!    short names kept for compatibility ([`ENV_ALIASES`], e.g. `GREENROOM_HTTP_ADDR`);
//! 4. command-line flags ([`Overrides`]: the binary's named flags and `--set key=value`).
//!
//! A variable's value is converted to its key's type (`42`, `true`, an address, a path; `[a, b]`
//! for lists). Every error names the key and where its value came from ([`ConfigError::Value`]).

use std::path::{Path, PathBuf};

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use super::{Config, ConfigError};

/// Prefix of every configuration variable.
pub const ENV_PREFIX: &str = "GREENROOM_";

/// Separator between the table names and the key in a variable name.
pub const ENV_SEPARATOR: &str = "__";

/// Variables that do not follow `GREENROOM_SECTION__KEY` and are kept because they were
/// documented before the rule: (variable, key). Each is applied before the variables that follow
/// the rule, so `GREENROOM_SERVER__HTTP_ADDR` wins over `GREENROOM_HTTP_ADDR`.
pub const ENV_ALIASES: &[(&str, &str)] = &[
    ("GREENROOM_HTTP_ADDR", "server.http_addr"),
    ("GREENROOM_WEB_ROOT", "server.web_root"),
    ("GREENROOM_DRAIN_SECS", "server.drain_secs"),
    ("GREENROOM_DATA_DIR", "server.data_dir"),
    ("GREENROOM_UDP_ADDR", "rtc.udp_addr"),
    ("GREENROOM_NODE_IP", "rtc.node_ip"),
    ("GREENROOM_RTC_SHARDS", "rtc.shards"),
    (
        "GREENROOM_RTC_PARALLEL_FANOUT_MIN",
        "rtc.parallel_fanout_min",
    ),
    (
        "GREENROOM_RTC_SOCKET_BUFFER_BYTES",
        "rtc.socket_buffer_bytes",
    ),
    ("GREENROOM_API_KEY", "keys.api_key"),
    ("GREENROOM_API_SECRET", "keys.api_secret"),
    ("GREENROOM_WEBHOOK_URLS", "webhooks.urls"),
    ("GREENROOM_WEBHOOK_SECRET", "webhooks.secret"),
    ("GREENROOM_MAX_MESSAGE_BYTES", "limits.max_message_bytes"),
    ("GREENROOM_REDIS_URL", "cluster.redis_url"),
];

/// Aliases whose value is a comma-separated list (the rule itself takes `[a, b]`).
const LIST_ALIASES: &[&str] = &["GREENROOM_WEBHOOK_URLS"];

/// Variables with the prefix that are not configuration keys (read by the binary itself).
pub const ENV_NOT_KEYS: &[&str] = &["GREENROOM_CONFIG", "GREENROOM_LOG_FORMAT"];

/// Command-line values, the last layer: each is a key path (`server.http_addr`) and a value.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    entries: Vec<(String, String, Value)>,
}

impl Overrides {
    /// No overrides.
    pub fn new() -> Overrides {
        Overrides::default()
    }

    /// Sets `key` from a typed value given by flag `flag` (for error messages).
    pub fn set<T: serde::Serialize>(&mut self, flag: &str, key: &str, value: &T) {
        match Value::serialize(value) {
            Ok(v) => self.entries.push((flag.to_owned(), key.to_owned(), v)),
            // Flags are plain scalars and paths: they always serialize.
            Err(e) => tracing::error!(flag, "cannot use the flag's value: {e}"),
        }
    }

    /// Parses `key=value` (from `--set`); the value is read like an environment variable's.
    pub fn parse_set(&mut self, item: &str) -> Result<(), ConfigError> {
        let (key, value) = item.split_once('=').ok_or_else(|| ConfigError::Value {
            key: item.to_owned(),
            origin: "flag --set".to_owned(),
            message: "expected KEY=VALUE, e.g. limits.idle_ws_secs=30".to_owned(),
        })?;
        let key = key.trim();
        if key.is_empty() || key.split('.').any(str::is_empty) {
            return Err(ConfigError::Value {
                key: key.to_owned(),
                origin: "flag --set".to_owned(),
                message: "a key is dotted table names and a field, e.g. limits.idle_ws_secs"
                    .to_owned(),
            });
        }
        self.entries
            .push((format!("--set {key}"), key.to_owned(), parse_value(value)));
        Ok(())
    }

    /// Whether no override is set.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// One value from one named source (a variable or a flag): errors about it name that source.
struct Single {
    source: String,
    key: String,
    value: Value,
}

impl Provider for Single {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.source.clone())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let nested = figment::util::nest(&self.key, self.value.clone());
        let dict = nested
            .into_dict()
            .ok_or_else(|| figment::Error::from(format!("{}: empty key", self.source)))?;
        Ok(Profile::Default.collect(dict))
    }
}

/// Reads a variable's or `--set` value: `[..]` and `{..}` are parsed as arrays and tables,
/// anything else stays a string that the extraction converts to the key's type (`"30"` for a
/// number, `"true"` for a flag), so a secret or node id made of digits stays a string.
fn parse_value(text: &str) -> Value {
    match text.parse::<Value>() {
        Ok(v @ (Value::Array(..) | Value::Dict(..))) => v,
        _ => Value::from(text.to_owned()),
    }
}

/// The key a variable sets, or `None` when it is not a configuration variable.
pub fn env_key(name: &str) -> Option<String> {
    if let Some((_, key)) = ENV_ALIASES.iter().find(|(n, _)| *n == name) {
        return Some((*key).to_owned());
    }
    let rest = name.strip_prefix(ENV_PREFIX)?;
    if ENV_NOT_KEYS.contains(&name) || !rest.contains(ENV_SEPARATOR) {
        return None;
    }
    let parts: Vec<String> = rest
        .split(ENV_SEPARATOR)
        .map(|p| p.to_ascii_lowercase())
        .collect();
    if parts.iter().any(String::is_empty) {
        return None;
    }
    Some(parts.join("."))
}

/// The environment layer from `vars` (name, value): aliases first, then the rule, each sorted
/// by name so the result does not depend on the environment's order.
fn env_layers(vars: impl IntoIterator<Item = (String, String)>) -> Vec<Single> {
    let mut aliases = Vec::new();
    let mut rule = Vec::new();
    for (name, text) in vars {
        let Some(key) = env_key(&name) else { continue };
        let value = if LIST_ALIASES.contains(&name.as_str()) {
            Value::from(
                text.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>(),
            )
        } else {
            parse_value(&text)
        };
        let single = Single {
            source: format!("environment variable {name}"),
            key,
            value,
        };
        if ENV_ALIASES.iter().any(|(n, _)| *n == name) {
            aliases.push(single);
        } else {
            rule.push(single);
        }
    }
    aliases.sort_by(|a, b| a.source.cmp(&b.source));
    rule.sort_by(|a, b| a.source.cmp(&b.source));
    aliases.extend(rule);
    aliases
}

/// Turns figment's error into one naming the key and its source.
fn to_config_error(e: figment::Error) -> ConfigError {
    let key = e.path.join(".");
    let source = match &e.metadata {
        Some(m) => match &m.source {
            Some(figment::Source::File(p)) => p.display().to_string(),
            _ => m.name.to_string(),
        },
        None => "the configuration".to_owned(),
    };
    let message = match &e.kind {
        // An unknown field is reported at its parent's path: name the field itself.
        figment::error::Kind::UnknownField(field, _) => {
            let full = if key.is_empty() {
                field.clone()
            } else {
                format!("{key}.{field}")
            };
            return ConfigError::Value {
                key: full,
                origin: source,
                message: e.kind.to_string(),
            };
        }
        k => k.to_string(),
    };
    ConfigError::Value {
        key,
        origin: source,
        message,
    }
}

impl Config {
    /// Loads defaults, the file (when given), the process environment and `overrides`, then
    /// validates the result.
    pub fn load_with(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        Config::load_from(path, std::env::vars(), overrides)
    }

    /// Loads the file (when given) and the process environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_with(path, &Overrides::new())
    }

    /// Loads from explicit environment variables (tests).
    pub fn load_from(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(p) = path {
            fig = fig.merge(file_layer(p)?);
        }
        for single in env_layers(env) {
            fig = fig.merge(single);
        }
        for (flag, key, value) in &overrides.entries {
            fig = fig.merge(Single {
                source: format!("flag {flag}"),
                key: key.clone(),
                value: value.clone(),
            });
        }
        let c: Config = fig.extract_lossy().map_err(to_config_error)?;
        c.validate()?;
        Ok(c)
    }

    /// Parses a TOML document alone (no defaults layer beyond serde's, no environment).
    pub fn from_toml(path: &Path, text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }
}

/// The file layer; a missing or unreadable file is an error, not the defaults.
fn file_layer(path: &Path) -> Result<figment::providers::Data<Toml>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_owned(), e))?;
    // Syntax errors are reported with toml's line and column.
    toml::from_str::<toml::Table>(&text).map_err(|e| ConfigError::Parse {
        path: PathBuf::from(path),
        message: e.to_string(),
    })?;
    Ok(Toml::file_exact(path))
}

/// Every variable of the rule and its aliases that is set, for `config check` (names only).
pub fn env_in_use(vars: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
    let mut names: Vec<String> = vars
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| env_key(n).is_some())
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn variable_names_map_to_keys() {
        assert_eq!(
            env_key("GREENROOM_LIMITS__IDLE_WS_SECS").as_deref(),
            Some("limits.idle_ws_secs")
        );
        assert_eq!(
            env_key("GREENROOM_SERVER__TLS__CERT_PATH").as_deref(),
            Some("server.tls.cert_path")
        );
        assert_eq!(
            env_key("GREENROOM_HTTP_ADDR").as_deref(),
            Some("server.http_addr")
        );
        assert_eq!(
            env_key("GREENROOM_REDIS_URL").as_deref(),
            Some("cluster.redis_url")
        );
        assert_eq!(env_key("GREENROOM_CONFIG"), None);
        assert_eq!(env_key("GREENROOM_LOG_FORMAT"), None);
        assert_eq!(env_key("GREENROOM_LIMITS____X"), None);
        assert_eq!(env_key("OTHER_LIMITS__X"), None);
    }

    #[test]
    fn the_send_batch_comes_from_its_key_alone() {
        let none = Overrides::new();
        let c = Config::load_from(None, env(&[("GREENROOM_RTC__SEND_BATCH", "1")]), &none).unwrap();
        assert_eq!(c.rtc.send_batch, Some(1));
        // The old variable is no key: nothing reads it.
        let c = Config::load_from(None, env(&[("GREENROOM_RTC_SEND_BATCH", "1")]), &none).unwrap();
        assert_eq!(c.rtc.send_batch, None);
        assert_eq!(greenroom_sfu::SfuOptions::default().send_batch, 64);
    }

    #[test]
    fn every_layer_in_order() {
        let dir = std::env::temp_dir().join(format!("gr-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            "[limits]\nidle_ws_secs = 7\nsignal_burst = 9\n[server]\ndrain_secs = 4\n",
        )
        .unwrap();
        let none = Overrides::new();
        let c = Config::load_from(Some(&file), env(&[]), &none).unwrap();
        assert_eq!(c.limits.idle_ws_secs, 7);
        assert_eq!(c.limits.signal_rate_per_sec, 50, "default kept");
        let c = Config::load_from(
            Some(&file),
            env(&[
                ("GREENROOM_LIMITS__IDLE_WS_SECS", "8"),
                ("GREENROOM_DRAIN_SECS", "5"),
                ("GREENROOM_SERVER__DRAIN_SECS", "6"),
                ("GREENROOM_WEBHOOK_URLS", "http://a/x, http://b/y"),
                ("GREENROOM_CONFIG", "ignored.toml"),
            ]),
            &none,
        )
        .unwrap();
        assert_eq!(c.limits.idle_ws_secs, 8);
        assert_eq!(c.limits.signal_burst, 9);
        assert_eq!(c.server.drain_secs, 6, "the rule wins over the alias");
        assert_eq!(c.webhooks.urls, vec!["http://a/x", "http://b/y"]);
        // Digits stay a string where the key is one (a secret, a node id).
        let c = Config::load_from(
            None,
            env(&[
                ("GREENROOM_API_SECRET", "123456"),
                ("GREENROOM_CLUSTER__NODE_ID", "7"),
                ("GREENROOM_RTC__SHARDS", "2"),
                ("GREENROOM_WEBHOOKS__URLS", "[\"http://h/1\"]"),
            ]),
            &none,
        )
        .unwrap();
        assert_eq!(c.keys.api_secret, "123456");
        assert_eq!(c.cluster.unwrap().node_id, "7");
        assert_eq!(c.rtc.shards, 2);
        assert_eq!(c.webhooks.urls, vec!["http://h/1"]);
        let mut flags = Overrides::new();
        flags.set("--drain-secs", "server.drain_secs", &11u64);
        flags.parse_set("limits.idle_ws_secs=12").unwrap();
        let c = Config::load_from(
            Some(&file),
            env(&[("GREENROOM_LIMITS__IDLE_WS_SECS", "8")]),
            &flags,
        )
        .unwrap();
        assert_eq!(c.server.drain_secs, 11);
        assert_eq!(c.limits.idle_ws_secs, 12);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_keys_list_in_the_file_replaces_the_default_table() {
        let dir = std::env::temp_dir().join(format!("gr-cfg-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("k.toml");
        std::fs::write(
            &file,
            "[[keys]]\napi_key = \"new\"\napi_secret = \"s2\"\n\
             [[keys]]\napi_key = \"old\"\napi_secret = \"s1\"\n",
        )
        .unwrap();
        let c = Config::load_from(Some(&file), env(&[]), &Overrides::new()).unwrap();
        assert_eq!(c.keys.api_key, "new");
        assert_eq!(c.keys.verify_only.len(), 1);
        assert_eq!(c.keys.verify_only[0].api_key, "old");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn errors_name_the_key_and_the_source() {
        let none = Overrides::new();
        let e = Config::load_from(
            None,
            env(&[("GREENROOM_LIMITS__IDLE_WS_SECS", "soon")]),
            &none,
        )
        .unwrap_err();
        match &e {
            ConfigError::Value { key, origin, .. } => {
                assert_eq!(key, "limits.idle_ws_secs");
                assert!(origin.contains("GREENROOM_LIMITS__IDLE_WS_SECS"), "{e}");
            }
            other => panic!("unexpected {other:?}"),
        }
        let e = Config::load_from(None, env(&[("GREENROOM_LIMITS__IDLE_WS_SEC", "1")]), &none)
            .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("idle_ws_sec") && text.contains("GREENROOM_LIMITS__IDLE_WS_SEC"));
        let e = Config::load_from(None, env(&[("GREENROOM_UDP_ADDR", "nope")]), &none).unwrap_err();
        assert!(e.to_string().contains("GREENROOM_UDP_ADDR"), "{e}");
        let mut flags = Overrides::new();
        flags.parse_set("server.drain_secs=ten").unwrap();
        let e = Config::load_from(None, env(&[]), &flags).unwrap_err();
        assert!(e.to_string().contains("--set server.drain_secs"), "{e}");
        assert!(Overrides::new().parse_set("novalue").is_err());
    }
}
