//! Configuration: embedded defaults, then a TOML file, then `GREENROOM_*` environment variables,
//! then command-line flags (applied by the binary). Unknown keys in the file are an error that
//! names the key.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use greenroom_proto::CallType;
use serde::{Deserialize, Serialize};

use crate::policy::CallTypeOverride;

/// The development API key used when none is configured.
pub const DEV_API_KEY: &str = "devkey";
/// The development API secret used when none is configured. Never use it in production.
pub const DEV_API_SECRET: &str = "greenroom-dev-secret";

/// Errors loading configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The file is not valid TOML or has unknown keys or wrong types.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
    /// An environment variable has a bad value.
    #[error("environment variable {0}: {1}")]
    Env(&'static str, String),
    /// Values that do not fit together.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP and WebSocket.
    pub server: ServerConfig,
    /// Media plane.
    pub rtc: RtcConfig,
    /// API key and secret for tokens.
    pub keys: KeysConfig,
    /// Limits.
    pub limits: LimitsConfig,
    /// Per call type overrides of the default grants.
    pub call_types: BTreeMap<CallType, CallTypeOverride>,
    /// Webhook receivers.
    pub webhooks: crate::webhook::WebhookConfig,
}

/// HTTP and WebSocket settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the HTTP API and WebSocket.
    pub http_addr: SocketAddr,
    /// Folder with the web app and SDK served at `/` (default: the one built into the crate).
    pub web_root: Option<PathBuf>,
    /// Serve HTTPS and WSS with this certificate and key.
    pub tls: Option<TlsConfig>,
    /// Seconds to drain connections on shutdown before exiting.
    pub drain_secs: u64,
    /// Directory of the server's files (the call history database `history.sqlite3`).
    pub data_dir: PathBuf,
}

/// A certificate and key (PEM files) for HTTPS and WSS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, PEM.
    pub cert_path: PathBuf,
    /// Private key, PEM.
    pub key_path: PathBuf,
}

/// Media plane settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtcConfig {
    /// The one UDP address all peers use.
    pub udp_addr: SocketAddr,
    /// IP advertised to clients in the host candidate (the node IP).
    pub node_ip: IpAddr,
    /// Media engine shards (forwarding threads, calls pinned to one each); 0 = one per core.
    pub shards: usize,
    /// Fan-outs to at least this many subscribers are driven on every core; 0 = never.
    pub parallel_fanout_min: usize,
}

/// Token signing keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// API key (the token's `kid`).
    pub api_key: String,
    /// API secret (HS256 key).
    pub api_secret: String,
}

/// Limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest accepted WebSocket message; larger ones close the socket with 1009.
    pub max_message_bytes: usize,
    /// Largest accepted HTTP body.
    pub max_body_bytes: usize,
    /// Seconds a signaling socket that is not in a call may stay without sending `ping`,
    /// `join` or a ring message before it is closed (4408); 0 = never.
    pub idle_ws_secs: u64,
    /// Signaling sockets one user may hold at once; more are refused (429).
    pub max_connections_per_user: usize,
    /// Signaling messages per second one socket may send (token bucket refill rate).
    pub signal_rate_per_sec: u32,
    /// Signaling messages one socket may send in a burst (token bucket size).
    pub signal_burst: u32,
    /// Milliseconds after which an unanswered `subscriber_offer` is sent again.
    pub subscriber_offer_timeout_ms: u64,
    /// Seconds an ended call with nobody in it stays in memory before it is freed.
    pub ended_call_ttl_secs: u64,
    /// Seconds a call with nobody in it (never joined, or everyone left) stays in memory.
    pub empty_call_ttl_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            http_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7880),
            web_root: None,
            tls: None,
            drain_secs: 10,
            data_dir: PathBuf::from("./data"),
        }
    }
}

impl Default for RtcConfig {
    fn default() -> Self {
        RtcConfig {
            udp_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7882),
            node_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            shards: 0,
            parallel_fanout_min: 64,
        }
    }
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            api_key: DEV_API_KEY.to_owned(),
            api_secret: DEV_API_SECRET.to_owned(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_bytes: 64 * 1024,
            max_body_bytes: 64 * 1024,
            idle_ws_secs: 60,
            max_connections_per_user: 16,
            signal_rate_per_sec: 50,
            signal_burst: 100,
            subscriber_offer_timeout_ms: 5000,
            ended_call_ttl_secs: 300,
            empty_call_ttl_secs: 3600,
        }
    }
}

fn env_parse<T: std::str::FromStr>(
    name: &'static str,
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<T>, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match get(name) {
        None => Ok(None),
        Some(v) => v
            .parse::<T>()
            .map(Some)
            .map_err(|e| ConfigError::Env(name, format!("`{v}`: {e}"))),
    }
}

impl Config {
    /// Parses a TOML document.
    pub fn from_toml(path: &Path, text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_owned(), e))?;
        Config::from_toml(path, &text)
    }

    /// Loads the file (when given) and applies the process environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut c = match path {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        c.apply_env(&|k| std::env::var(k).ok())?;
        c.validate()?;
        Ok(c)
    }

    /// Applies `GREENROOM_*` variables read through `get`.
    pub fn apply_env(&mut self, get: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = env_parse("GREENROOM_HTTP_ADDR", get)? {
            self.server.http_addr = v;
        }
        if let Some(v) = env_parse::<PathBuf>("GREENROOM_WEB_ROOT", get)? {
            self.server.web_root = Some(v);
        }
        if let Some(v) = env_parse("GREENROOM_UDP_ADDR", get)? {
            self.rtc.udp_addr = v;
        }
        if let Some(v) = env_parse("GREENROOM_NODE_IP", get)? {
            self.rtc.node_ip = v;
        }
        if let Some(v) = env_parse("GREENROOM_RTC_SHARDS", get)? {
            self.rtc.shards = v;
        }
        if let Some(v) = env_parse("GREENROOM_RTC_PARALLEL_FANOUT_MIN", get)? {
            self.rtc.parallel_fanout_min = v;
        }
        if let Some(v) = get("GREENROOM_API_KEY") {
            self.keys.api_key = v;
        }
        if let Some(v) = get("GREENROOM_API_SECRET") {
            self.keys.api_secret = v;
        }
        if let Some(v) = env_parse("GREENROOM_DRAIN_SECS", get)? {
            self.server.drain_secs = v;
        }
        if let Some(v) = get("GREENROOM_DATA_DIR") {
            self.server.data_dir = PathBuf::from(v);
        }
        if let Some(v) = get("GREENROOM_WEBHOOK_URLS") {
            self.webhooks.urls = v
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
        }
        if let Some(v) = get("GREENROOM_WEBHOOK_SECRET") {
            self.webhooks.secret = v;
        }
        if let Some(v) = env_parse("GREENROOM_MAX_MESSAGE_BYTES", get)? {
            self.limits.max_message_bytes = v;
        }
        Ok(())
    }

    /// Checks values that parse but do not make sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.keys.api_key.is_empty() || self.keys.api_secret.is_empty() {
            return Err(ConfigError::Invalid(
                "keys.api_key and keys.api_secret must be set".into(),
            ));
        }
        if self.limits.max_message_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "limits.max_message_bytes must be at least 1024".into(),
            ));
        }
        if self.limits.max_connections_per_user == 0
            || self.limits.signal_rate_per_sec == 0
            || self.limits.signal_burst == 0
            || self.limits.subscriber_offer_timeout_ms == 0
        {
            return Err(ConfigError::Invalid(
                "limits.max_connections_per_user, signal_rate_per_sec, signal_burst and \
                 subscriber_offer_timeout_ms must be at least 1"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Whether the development secret is in use (the server warns at start-up).
    pub fn uses_dev_secret(&self) -> bool {
        self.keys.api_secret == DEV_API_SECRET
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named() {
        let e = Config::from_toml(Path::new("x.toml"), "[server]\nhttp_adr = \"1.2.3.4:5\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("http_adr"), "{e}");
    }

    #[test]
    fn env_overrides_file() {
        let mut c = Config::from_toml(
            Path::new("x.toml"),
            "[server]\nhttp_addr = \"127.0.0.1:9000\"\n[rtc]\nnode_ip = \"10.0.0.1\"\n",
        )
        .unwrap();
        assert_eq!(c.server.http_addr.port(), 9000);
        c.apply_env(&|k| (k == "GREENROOM_HTTP_ADDR").then(|| "127.0.0.1:9100".to_owned()))
            .unwrap();
        assert_eq!(c.server.http_addr.port(), 9100);
        assert_eq!(c.rtc.node_ip.to_string(), "10.0.0.1");
        let bad = c.apply_env(&|k| (k == "GREENROOM_UDP_ADDR").then(|| "nope".to_owned()));
        assert!(bad.unwrap_err().to_string().contains("GREENROOM_UDP_ADDR"));
        assert_eq!(c.rtc.shards, 0, "one shard per core by default");
        c.apply_env(&|k| (k == "GREENROOM_RTC_SHARDS").then(|| "3".to_owned()))
            .unwrap();
        assert_eq!(c.rtc.shards, 3);
        c.apply_env(&|k| (k == "GREENROOM_RTC_PARALLEL_FANOUT_MIN").then(|| "0".to_owned()))
            .unwrap();
        assert_eq!(c.rtc.parallel_fanout_min, 0);
        let bad = c.apply_env(&|k| (k == "GREENROOM_RTC_SHARDS").then(|| "-1".to_owned()));
        assert!(bad
            .unwrap_err()
            .to_string()
            .contains("GREENROOM_RTC_SHARDS"));
    }

    #[test]
    fn call_type_overrides_parse() {
        let c = Config::from_toml(
            Path::new("x.toml"),
            "[call_types.audio_room]\nrequestable = [\"send-audio\", \"send-video\"]\n",
        )
        .unwrap();
        let o = &c.call_types[&CallType::AudioRoom];
        assert_eq!(o.requestable.unwrap().to_vec().len(), 2);
    }
}
