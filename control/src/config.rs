//! Configuration: embedded defaults, then a TOML file, then `GREENROOM_SECTION__KEY` environment
//! variables, then command-line flags; the layering is in [`load`](self::load). Unknown keys are
//! an error that names the key and its source.

mod load;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use greenroom_proto::CallType;
use serde::{Deserialize, Serialize};

use crate::policy::CallTypeOverride;

pub use load::{env_in_use, env_key, Overrides, ENV_ALIASES, ENV_PREFIX, ENV_SEPARATOR};

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
    /// A value (from the file, a variable or a flag) is wrong: names the key and its source.
    #[error("{origin}: key `{key}`: {message}")]
    Value {
        /// The dotted key, e.g. `limits.idle_ws_secs`.
        key: String,
        /// Where the value came from: the file, `environment variable NAME` or `flag --x`.
        origin: String,
        /// What is wrong.
        message: String,
    },
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
    /// API keys and secrets for tokens: `[keys]` (one) or `[[keys]]` (several, the first signs).
    pub keys: KeysConfig,
    /// Limits.
    pub limits: LimitsConfig,
    /// Per call type overrides of the default grants.
    pub call_types: BTreeMap<CallType, CallTypeOverride>,
    /// Webhook receivers.
    pub webhooks: crate::webhook::WebhookConfig,
    /// Cluster mode on Redis; absent = one process with no external service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// The embedded TURN server (off by default).
    pub turn: TurnConfig,
    /// Discovery of the node's public address.
    pub nat: NatConfig,
}

/// A transport of the embedded TURN server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TurnTransport {
    /// TURN over UDP (`turn:host:port?transport=udp`).
    Udp,
    /// TURN over TCP (`turn:host:port?transport=tcp`).
    Tcp,
    /// TURN over TLS (`turns:host:port?transport=tcp`), with the server's certificate.
    Tls,
}

/// The embedded TURN server (docs/ARCHITECTURE.md, TURN). It relays only to this node's media
/// address, with credentials that expire, handed to clients in `joined` as `ice_servers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TurnConfig {
    /// Run it.
    pub enabled: bool,
    /// Listeners to run; `tls` needs a certificate (`server.tls` or `--dev-tls`) and is skipped
    /// with a warning without one.
    pub transports: Vec<TurnTransport>,
    /// UDP listener address.
    pub udp_addr: SocketAddr,
    /// TCP listener address.
    pub tcp_addr: SocketAddr,
    /// TLS listener address (443 in deploy/, where firewalls let it through).
    pub tls_addr: SocketAddr,
    /// Host name or IP put in the `urls` clients get (default: `rtc.node_ip`); TLS clients check
    /// the certificate against it.
    pub host: Option<String>,
    /// Realm of the credentials.
    pub realm: String,
    /// Secret the credentials are derived from (default: the signing API secret).
    pub secret: Option<String>,
    /// Seconds a credential handed out in `joined` stays valid.
    pub credential_ttl_secs: u64,
    /// Allocations one user may hold at once.
    pub max_allocations_per_user: usize,
    /// Allocations the server holds at once (also the bound on open TCP/TLS connections).
    pub max_allocations: usize,
}

impl Default for TurnConfig {
    fn default() -> Self {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        TurnConfig {
            enabled: false,
            transports: vec![TurnTransport::Udp, TurnTransport::Tcp, TurnTransport::Tls],
            udp_addr: SocketAddr::new(any, 3478),
            tcp_addr: SocketAddr::new(any, 3478),
            tls_addr: SocketAddr::new(any, 5349),
            host: None,
            realm: "greenroom".to_owned(),
            secret: None,
            credential_ttl_secs: 6 * 3600,
            max_allocations_per_user: 10,
            max_allocations: 1000,
        }
    }
}

impl TurnConfig {
    /// Checks values that parse but do not make sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        if self.credential_ttl_secs < 60
            || self.max_allocations_per_user == 0
            || self.max_allocations == 0
            || self.realm.is_empty()
            || self.secret.as_ref().is_some_and(|s| s.is_empty())
        {
            return Err(ConfigError::Invalid(
                "turn: credential_ttl_secs must be at least 60, the allocation limits at least 1, \
                 realm and secret not empty"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Discovery of the node's public address.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatConfig {
    /// A STUN server (`host:port`) asked at start for this node's public IP, which is then
    /// advertised in ICE candidates when `rtc.node_ip` is left at a loopback or unspecified
    /// address.
    pub stun_server: Option<String>,
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
    /// Seconds a connection may take to send a complete request head (and a TLS handshake);
    /// also how long an idle keep-alive connection is kept. Slower connections are closed.
    pub header_timeout_secs: u64,
    /// Seconds a request body may take to arrive completely after its head.
    pub body_timeout_secs: u64,
    /// Connections one IP address may hold open at once (loopback included); further ones are
    /// closed on accept.
    pub max_conns_per_ip: usize,
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
    /// Media engine shards (forwarding threads, calls pinned to one each); 0 = one up to two
    /// cores, else one per core (`greenroom_sfu::default_shards`).
    pub shards: usize,
    /// Fan-outs to at least this many subscribers are driven on every core; 0 = never.
    pub parallel_fanout_min: usize,
    /// The share (0..1) of the last 250 ms a shard's thread must have been busy for a large
    /// fan-out to go to every core (`parallel_fanout_min`); 0 = whenever it is large enough.
    pub parallel_busy: f64,
    /// Forwarded audio to connected subscribers skips str0m's per-packet drive: the engine
    /// builds, SRTP-protects and sends it itself (docs/ARCHITECTURE.md, "Lean audio path").
    /// Default true; false: every packet through str0m. Env: `GREENROOM_RTC__LEAN_AUDIO`.
    pub lean_audio: bool,
    /// Forwarded video of single-layer (non-simulcast) sources skips str0m's per-packet drive
    /// too: the engine sends it, reads the subscriber's PLI/FIR/NACK and resends on RTX
    /// (docs/ARCHITECTURE.md, "Lean video path"). Default true; false: through str0m.
    /// Env: `GREENROOM_RTC__LEAN_VIDEO`.
    pub lean_video: bool,
    /// A publisher's RTP (single-layer sources) skips str0m's per-packet drive: the engine
    /// opens and forwards it and writes the publisher's feedback (receiver reports, NACKs,
    /// transport-wide feedback) itself (docs/ARCHITECTURE.md, "Publisher ingress"). Default
    /// true; false: every packet through str0m. Env: `GREENROOM_RTC__LEAN_INGRESS`.
    pub lean_ingress: bool,
    /// Receive and send buffer size requested for the media UDP socket, in bytes (the kernel
    /// caps it at `net.core.rmem_max` / `wmem_max`; the effective size is exported).
    pub socket_buffer_bytes: usize,
    /// ICE over TCP (passive TCP candidates, RFC 4571 framing) on this TCP port of the UDP
    /// address's IP, for clients whose UDP is blocked. Unset: the UDP port's number (if that
    /// TCP port is taken, the server starts without ICE-TCP and logs a warning); 0: off; a port
    /// given here must bind or the server does not start.
    #[serde(default)]
    pub ice_tcp_port: Option<u16>,
    /// Most datagrams a shard hands to the kernel in one `sendmmsg` (1..=64; 1 = one system call
    /// per datagram). Unset: 64. Env: `GREENROOM_RTC__SEND_BATCH`.
    #[serde(default)]
    pub send_batch: Option<usize>,
}

/// One API key: the name carried in a token's `kid` and its HS256 secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// API key (the token's `kid`).
    pub api_key: String,
    /// API secret (HS256 key).
    pub api_secret: String,
}

/// Token signing keys. In the file either one table (`[keys]`, missing fields default to the
/// development key) or a list (`[[keys]]`): the first key signs new tokens, tokens of every
/// listed key verify, so a secret is rotated without downtime by listing the new key next to
/// the old one, then making it first, then removing the old one.
#[derive(Debug, Clone, PartialEq)]
pub struct KeysConfig {
    /// API key new tokens are signed with (the token's `kid`).
    pub api_key: String,
    /// API secret of `api_key` (HS256 key).
    pub api_secret: String,
    /// Further keys whose tokens still verify (e.g. the previous key during a rotation).
    pub verify_only: Vec<ApiKey>,
}

impl KeysConfig {
    /// Every configured key, the signing one first.
    pub fn all(&self) -> Vec<ApiKey> {
        let mut all = vec![ApiKey {
            api_key: self.api_key.clone(),
            api_secret: self.api_secret.clone(),
        }];
        all.extend(self.verify_only.iter().cloned());
        all
    }
}

/// The single-table form, `[keys]`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct SingleKey {
    api_key: String,
    api_secret: String,
}

impl Default for SingleKey {
    fn default() -> Self {
        SingleKey {
            api_key: DEV_API_KEY.to_owned(),
            api_secret: DEV_API_SECRET.to_owned(),
        }
    }
}

impl Serialize for KeysConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.verify_only.is_empty() {
            SingleKey {
                api_key: self.api_key.clone(),
                api_secret: self.api_secret.clone(),
            }
            .serialize(s)
        } else {
            self.all().serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for KeysConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> serde::de::Visitor<'de> for Keys {
            type Value = KeysConfig;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a [keys] table or a [[keys]] list of {api_key, api_secret}")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<KeysConfig, A::Error> {
                let one =
                    SingleKey::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(KeysConfig {
                    api_key: one.api_key,
                    api_secret: one.api_secret,
                    verify_only: Vec::new(),
                })
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<KeysConfig, A::Error> {
                let mut list =
                    Vec::<ApiKey>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?
                        .into_iter();
                let first = list
                    .next()
                    .ok_or_else(|| serde::de::Error::custom("[[keys]] needs at least one key"))?;
                Ok(KeysConfig {
                    api_key: first.api_key,
                    api_secret: first.api_secret,
                    verify_only: list.collect(),
                })
            }
        }
        d.deserialize_any(Keys)
    }
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
    /// Seconds a session whose signaling socket dropped (without `leave`) stays in its call,
    /// waiting for a `resume`; then it leaves with reason `disconnected`. 0 = leave at once.
    pub resume_grace_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            http_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7880),
            web_root: None,
            tls: None,
            drain_secs: 10,
            data_dir: PathBuf::from("./data"),
            header_timeout_secs: 10,
            body_timeout_secs: 15,
            max_conns_per_ip: 256,
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
            parallel_busy: 0.5,
            lean_audio: true,
            lean_video: true,
            lean_ingress: true,
            socket_buffer_bytes: 4 << 20,
            ice_tcp_port: None,
            send_batch: None,
        }
    }
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            api_key: DEV_API_KEY.to_owned(),
            api_secret: DEV_API_SECRET.to_owned(),
            verify_only: Vec::new(),
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
            resume_grace_secs: 15,
        }
    }
}

impl Config {
    /// Checks values that parse but do not make sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let keys = self.keys.all();
        for (i, k) in keys.iter().enumerate() {
            if k.api_key.is_empty() || k.api_secret.is_empty() {
                return Err(ConfigError::Invalid(
                    "keys.api_key and keys.api_secret must be set".into(),
                ));
            }
            if keys[..i].iter().any(|o| o.api_key == k.api_key) {
                return Err(ConfigError::Invalid(format!(
                    "keys: api_key `{}` is listed twice",
                    k.api_key
                )));
            }
        }
        if self.server.header_timeout_secs == 0
            || self.server.body_timeout_secs == 0
            || self.server.max_conns_per_ip == 0
        {
            return Err(ConfigError::Invalid(
                "server.header_timeout_secs, server.body_timeout_secs and server.max_conns_per_ip must be at least 1".into(),
            ));
        }
        if !(0.0..=1.0).contains(&self.rtc.parallel_busy) {
            return Err(ConfigError::Invalid(
                "rtc.parallel_busy must be between 0 and 1".into(),
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
        self.turn.validate()?;
        Ok(())
    }

    /// The configuration as TOML with every set secret replaced by `"<redacted>"`: keys named like
    /// `*secret*`, `*password*` or `*token*`, and the password of URLs (`redis://:pw@host`).
    pub fn to_redacted_toml(&self) -> Result<String, toml::ser::Error> {
        let mut v = toml::Value::try_from(self)?;
        redact(&mut v, false);
        toml::to_string_pretty(&v)
    }

    /// Whether the development secret is in use (the server warns at start-up).
    pub fn uses_dev_secret(&self) -> bool {
        self.keys.api_secret == DEV_API_SECRET
    }
}

/// The placeholder `config check` prints instead of a secret.
pub const REDACTED: &str = "<redacted>";

fn redact(v: &mut toml::Value, secret: bool) {
    match v {
        toml::Value::String(s) => {
            if secret && !s.is_empty() {
                *s = REDACTED.to_owned();
            } else if let Some(clean) = redact_url(s) {
                *s = clean;
            }
        }
        toml::Value::Array(a) => a.iter_mut().for_each(|x| redact(x, secret)),
        toml::Value::Table(t) => {
            for (k, x) in t.iter_mut() {
                let k = k.to_ascii_lowercase();
                let s = secret
                    || ["secret", "password", "token"]
                        .iter()
                        .any(|w| k.contains(w));
                redact(x, s);
            }
        }
        _ => {}
    }
}

/// `scheme://user:password@host...` with the password replaced, or `None`.
fn redact_url(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once("://")?;
    let at = rest.find('@')?;
    let (userinfo, host) = rest.split_at(at);
    if userinfo.contains('/') {
        return None;
    }
    let (user, _) = userinfo.split_once(':')?;
    Some(format!("{scheme}://{user}:{REDACTED}{host}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn unknown_key_is_named() {
        let e = Config::from_toml(Path::new("x.toml"), "[server]\nhttp_adr = \"1.2.3.4:5\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("http_adr"), "{e}");
    }

    #[test]
    fn lean_ingress_defaults_on_and_can_be_turned_off() {
        assert!(Config::default().rtc.lean_ingress);
        let off = Config::from_toml(Path::new("x.toml"), "[rtc]\nlean_ingress = false\n").unwrap();
        assert!(!off.rtc.lean_ingress);
        assert!(off.rtc.lean_video, "the other switches keep their defaults");
    }

    #[test]
    fn secrets_are_redacted() {
        let mut c = Config::default();
        c.webhooks.secret = "hook-secret".into();
        c.cluster = Some(crate::cluster::ClusterConfig {
            redis_url: "redis://:pw123@redis:6379/0".into(),
            ..Default::default()
        });
        let text = c.to_redacted_toml().unwrap();
        assert!(!text.contains(DEV_API_SECRET), "{text}");
        assert!(!text.contains("hook-secret"), "{text}");
        assert!(!text.contains("pw123"), "{text}");
        assert!(text.contains("redis://:<redacted>@redis:6379/0"), "{text}");
        assert!(text.contains(DEV_API_KEY), "the key name is not a secret");
    }

    #[test]
    fn keys_table_or_list() {
        let one = Config::from_toml(Path::new("x.toml"), "[keys]\napi_secret = \"s\"\n").unwrap();
        assert_eq!(one.keys.api_key, DEV_API_KEY);
        assert_eq!(one.keys.api_secret, "s");
        assert!(one.keys.verify_only.is_empty());
        let two = Config::from_toml(
            Path::new("x.toml"),
            "[[keys]]\napi_key = \"new\"\napi_secret = \"s2\"\n\
             [[keys]]\napi_key = \"old\"\napi_secret = \"s1\"\n",
        )
        .unwrap();
        assert_eq!(two.keys.api_key, "new");
        assert_eq!(two.keys.verify_only.len(), 1);
        assert_eq!(two.keys.verify_only[0].api_key, "old");
        two.validate().unwrap();
        // The printed form reads back the same.
        let text = toml::to_string_pretty(&two).unwrap();
        assert_eq!(Config::from_toml(Path::new("y.toml"), &text).unwrap(), two);
        let dup = Config::from_toml(
            Path::new("x.toml"),
            "[[keys]]\napi_key = \"k\"\napi_secret = \"a\"\n\
             [[keys]]\napi_key = \"k\"\napi_secret = \"b\"\n",
        )
        .unwrap();
        assert!(dup.validate().unwrap_err().to_string().contains("twice"));
        let typo = Config::from_toml(Path::new("x.toml"), "[[keys]]\napi_kee = \"k\"\n");
        assert!(typo.unwrap_err().to_string().contains("api_kee"));
    }

    #[test]
    fn call_type_overrides_parse() {
        let c = Config::from_toml(
            Path::new("x.toml"),
            "[call_types.audio_room]\nrequestable = [\"send-audio\", \"send-video\"]\n\
             [call_types.livestream]\nbandwidth_estimation = false\n",
        )
        .unwrap();
        let o = &c.call_types[&CallType::AudioRoom];
        assert_eq!(o.requestable.unwrap().to_vec().len(), 2);
        assert_eq!(o.bandwidth_estimation, None);
        let l = &c.call_types[&CallType::Livestream];
        assert_eq!(l.bandwidth_estimation, Some(false));
    }
}
