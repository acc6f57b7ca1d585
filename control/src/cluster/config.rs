//! The `[cluster]` table.

use serde::{Deserialize, Serialize};

/// Cluster mode on Redis. Absent from the configuration = one process, no Redis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Redis URL, e.g. `redis://redis:6379/0` (env `GREENROOM_CLUSTER__REDIS_URL` or
    /// `GREENROOM_REDIS_URL`).
    pub redis_url: String,
    /// This node's id, unique in the cluster; empty = the host name, else a random id.
    pub node_id: String,
    /// This node's HTTP/WebSocket base URL as the other nodes reach it, e.g.
    /// `http://10.0.0.5:7880`; empty = `http://<server.http_addr>`.
    pub advertise_url: String,
    /// This node's media address as clients reach it (informational, listed by `/v1/nodes`);
    /// empty = `<rtc.node_ip>:<rtc.udp_addr port>`.
    pub media_addr: String,
    /// Seconds a node's registration lives without a refresh; a node that stops refreshing
    /// disappears after this.
    pub node_ttl_secs: u64,
    /// Milliseconds between two refreshes of the registration (with the node's load).
    pub refresh_ms: u64,
    /// Milliseconds a Redis command may take before it fails (`cluster_unavailable`).
    pub redis_timeout_ms: u64,
    /// Key prefix of every Redis key, so several clusters can share one Redis.
    pub key_prefix: String,
    /// UDP address the node-to-node RTP relay binds (a call spanning nodes relays each track
    /// once to every other node of the call through it); port 0 picks a free port.
    pub relay_bind: String,
    /// The relay address as the other nodes reach it, `ip:port` or `host:port` (resolved once
    /// at start-up); empty = `<rtc.node_ip>:<bound port>`.
    pub relay_advertise: String,
}

impl ClusterConfig {
    /// This node's id: `node_id`, else the host name, else a random id (computed once per
    /// call: set `node_id` to keep it stable).
    pub fn resolved_node_id(&self) -> Result<String, String> {
        if self.node_id.is_empty() {
            return Ok(default_node_id());
        }
        greenroom_proto::validate_id(&self.node_id).map_err(|e| format!("cluster.node_id: {e}"))?;
        Ok(self.node_id.clone())
    }
}

/// The host name, else a random id.
fn default_node_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| greenroom_proto::validate_id(h).is_ok())
        .unwrap_or_else(|| format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]))
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis_url: "redis://127.0.0.1:6379/0".to_owned(),
            node_id: String::new(),
            advertise_url: String::new(),
            media_addr: String::new(),
            node_ttl_secs: 10,
            refresh_ms: 2000,
            redis_timeout_ms: 1000,
            key_prefix: "greenroom".to_owned(),
            relay_bind: "0.0.0.0:7883".to_owned(),
            relay_advertise: String::new(),
        }
    }
}
