//! The Redis side of the cluster: the node registry (a hash per node with a TTL, refreshed with
//! the node's load) and atomic call placement (one Lua script: keep a live home, else claim the
//! least-loaded active node). Keys, under `key_prefix`:
//!
//! * `<p>:nodes`: set of node ids (members whose hash expired are removed lazily);
//! * `<p>:node:<id>`: hash `advertise_url media_addr relay_addr state score cpu participants pps
//!   calls updated_ms`, expires after `node_ttl_secs` without a refresh;
//! * `<p>:call:<type:id>`: the call's home node id, expires after `3 × node_ttl_secs` unless the
//!   home refreshes it (it does, for every call it holds, at each registry refresh).

use std::time::Duration;

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use super::ClusterError;

/// A node's state in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Takes new calls.
    Active,
    /// Shutting down: keeps its calls until they end, takes no new ones.
    Draining,
}

impl NodeState {
    fn as_str(self) -> &'static str {
        match self {
            NodeState::Active => "active",
            NodeState::Draining => "draining",
        }
    }
}

/// A node's load, as reported at each refresh.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Load {
    /// CPU used by the process over the last refresh interval, as a fraction of the machine
    /// (0.0 to 1.0).
    pub cpu: f64,
    /// Joined participants.
    pub participants: u64,
    /// RTP packets forwarded per second over the last interval.
    pub pps: f64,
    /// Calls held.
    pub calls: u64,
}

impl Load {
    /// The placement score: lower is less loaded. A participant counts 1, a whole machine's CPU
    /// counts 1000 (a node at 50 % CPU looks like one with 500 participants).
    pub fn score(&self) -> f64 {
        self.participants as f64 + self.cpu * 1000.0
    }
}

/// One node as listed by `GET /v1/nodes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeInfo {
    /// The node id.
    pub node_id: String,
    /// Its HTTP/WebSocket base URL.
    pub advertise_url: String,
    /// Its media address.
    pub media_addr: String,
    /// Its node-to-node RTP relay address (empty when it runs no media plane).
    #[serde(default)]
    pub relay_addr: String,
    /// `active` or `draining`.
    pub state: String,
    /// The placement score (lower is less loaded).
    pub score: f64,
    /// CPU fraction of the machine.
    pub cpu: f64,
    /// Joined participants.
    pub participants: u64,
    /// Forwarded packets per second.
    pub pps: f64,
    /// Calls held.
    pub calls: u64,
    /// When it last refreshed, unix ms.
    pub updated_ms: u64,
}

/// Where a call lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    /// The home node's id.
    pub node_id: String,
    /// Its HTTP/WebSocket base URL.
    pub advertise_url: String,
}

/// Keep a live home (refreshing the claim), else claim the least-loaded active node: all in one
/// script, so two nodes placing the same call at once get the same answer. Returns
/// `{node_id, advertise_url}` or nil when no active node is registered.
const PLACE: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  local url = redis.call('HGET', ARGV[1] .. cur, 'advertise_url')
  if url then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {cur, url}
  end
end
local best, best_score, best_url = nil, nil, nil
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local h = redis.call('HMGET', ARGV[1] .. id, 'state', 'score', 'advertise_url')
  if not h[1] then
    redis.call('SREM', KEYS[2], id)
  elseif h[1] == 'active' then
    local s = tonumber(h[2]) or 0
    if best == nil or s < best_score or (s == best_score and id < best) then
      best, best_score, best_url = id, s, h[3]
    end
  end
end
if best == nil then return false end
redis.call('SET', KEYS[1], best, 'PX', ARGV[2])
redis.call('HINCRBYFLOAT', ARGV[1] .. best, 'score', 1)
return {best, best_url}
";

/// Refreshes the claims this node holds: `KEYS` are call keys, `ARGV[1]` the node id,
/// `ARGV[2]` the claim TTL in ms. A claim taken over by another node is left alone.
const REFRESH_CLAIMS: &str = r"
local n = 0
for _, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[1] then
    redis.call('PEXPIRE', k, ARGV[2])
    n = n + 1
  end
end
return n
";

/// The registry client of one node.
#[derive(Clone)]
pub struct Registry {
    conn: ConnectionManager,
    prefix: String,
    node_id: String,
    advertise_url: String,
    media_addr: String,
    relay_addr: String,
    node_ttl: Duration,
    timeout: Duration,
    place: redis::Script,
    refresh_claims: redis::Script,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("node_id", &self.node_id)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// What a registry needs to know about its node.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    /// Node id.
    pub node_id: String,
    /// HTTP/WS base URL.
    pub advertise_url: String,
    /// Media address.
    pub media_addr: String,
    /// Node-to-node RTP relay address (empty: no media plane).
    pub relay_addr: String,
}

impl Registry {
    /// Connects to Redis (failing when it cannot be reached within `timeout`).
    pub async fn connect(
        url: &str,
        prefix: &str,
        me: NodeIdentity,
        node_ttl: Duration,
        timeout: Duration,
    ) -> Result<Registry, ClusterError> {
        let client = redis::Client::open(url).map_err(|e| ClusterError::Config(e.to_string()))?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            .set_number_of_retries(1)
            .set_max_delay(1000);
        let conn =
            tokio::time::timeout(timeout * 3, ConnectionManager::new_with_config(client, cfg))
                .await
                .map_err(|_| ClusterError::Unavailable("connecting to Redis timed out".into()))?
                .map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        Ok(Registry {
            conn,
            prefix: prefix.to_owned(),
            node_id: me.node_id,
            advertise_url: me.advertise_url,
            media_addr: me.media_addr,
            relay_addr: me.relay_addr,
            node_ttl,
            timeout,
            place: redis::Script::new(PLACE),
            refresh_claims: redis::Script::new(REFRESH_CLAIMS),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// This node's advertised URL.
    pub fn advertise_url(&self) -> &str {
        &self.advertise_url
    }

    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    fn node_prefix(&self) -> String {
        format!("{}:node:", self.prefix)
    }

    fn call_key(&self, cid: &str) -> String {
        format!("{}:call:{cid}", self.prefix)
    }

    fn claim_ttl(&self) -> Duration {
        self.node_ttl * 3
    }

    async fn run<T>(
        &self,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, ClusterError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(ClusterError::Unavailable(e.to_string())),
            Err(_) => Err(ClusterError::Unavailable(
                "Redis did not answer in time".into(),
            )),
        }
    }

    /// Registers (or refreshes) this node with its load and state; refreshes the claims of the
    /// calls in `calls` that are still this node's.
    pub async fn refresh(
        &self,
        load: &Load,
        state: NodeState,
        calls: &[String],
    ) -> Result<(), ClusterError> {
        let key = format!("{}{}", self.node_prefix(), self.node_id);
        let now = crate::auth::unix_now_ms();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(
                &key,
                &[
                    ("advertise_url", self.advertise_url.clone()),
                    ("media_addr", self.media_addr.clone()),
                    ("relay_addr", self.relay_addr.clone()),
                    ("state", state.as_str().to_owned()),
                    ("score", load.score().to_string()),
                    ("cpu", load.cpu.to_string()),
                    ("participants", load.participants.to_string()),
                    ("pps", load.pps.to_string()),
                    ("calls", load.calls.to_string()),
                    ("updated_ms", now.to_string()),
                ],
            )
            .ignore()
            .pexpire(&key, self.node_ttl.as_millis() as i64)
            .ignore()
            .sadd(self.nodes_key(), &self.node_id)
            .ignore();
        let mut conn = self.conn.clone();
        self.run(pipe.query_async::<()>(&mut conn)).await?;
        for chunk in calls.chunks(500) {
            let mut inv = self.refresh_claims.prepare_invoke();
            for cid in chunk {
                inv.key(self.call_key(cid));
            }
            inv.arg(&self.node_id)
                .arg(self.claim_ttl().as_millis() as u64);
            let mut conn = self.conn.clone();
            self.run(inv.invoke_async::<u64>(&mut conn)).await?;
        }
        Ok(())
    }

    /// Removes this node from the registry now (its claims are re-placed at their next join).
    pub async fn deregister(&self) -> Result<(), ClusterError> {
        let key = format!("{}{}", self.node_prefix(), self.node_id);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(&key)
            .ignore()
            .srem(self.nodes_key(), &self.node_id)
            .ignore();
        let mut conn = self.conn.clone();
        self.run(pipe.query_async::<()>(&mut conn)).await
    }

    /// The home of a call: its live home, else a new claim on the least-loaded active node.
    pub async fn place(&self, cid: &str) -> Result<Home, ClusterError> {
        let mut inv = self.place.prepare_invoke();
        inv.key(self.call_key(cid))
            .key(self.nodes_key())
            .arg(self.node_prefix())
            .arg(self.claim_ttl().as_millis() as u64);
        let mut conn = self.conn.clone();
        let r: Option<(String, String)> = self.run(inv.invoke_async(&mut conn)).await?;
        match r {
            Some((node_id, advertise_url)) => Ok(Home {
                node_id,
                advertise_url,
            }),
            None => Err(ClusterError::NoActiveNode),
        }
    }

    /// The advertised URL of a live node (`None` when it is not registered or expired).
    pub async fn advertise_url_of(&self, node_id: &str) -> Result<Option<String>, ClusterError> {
        let mut conn = self.conn.clone();
        self.run(
            redis::cmd("HGET")
                .arg(format!("{}{node_id}", self.node_prefix()))
                .arg("advertise_url")
                .query_async(&mut conn),
        )
        .await
    }

    /// Every registered node, by id.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, ClusterError> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = self
            .run(
                redis::cmd("SMEMBERS")
                    .arg(self.nodes_key())
                    .query_async(&mut conn),
            )
            .await?;
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hgetall(format!("{}{id}", self.node_prefix()));
        }
        let mut conn = self.conn.clone();
        let maps: Vec<std::collections::HashMap<String, String>> =
            self.run(pipe.query_async(&mut conn)).await?;
        let mut out: Vec<NodeInfo> = ids
            .into_iter()
            .zip(maps)
            .filter(|(_, m)| !m.is_empty())
            .map(|(node_id, m)| {
                let s = |k: &str| m.get(k).cloned().unwrap_or_default();
                let f = |k: &str| m.get(k).and_then(|v| v.parse().ok()).unwrap_or(0.0);
                let u = |k: &str| m.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
                NodeInfo {
                    node_id,
                    advertise_url: s("advertise_url"),
                    media_addr: s("media_addr"),
                    relay_addr: s("relay_addr"),
                    state: s("state"),
                    score: f("score"),
                    cpu: f("cpu"),
                    participants: u("participants"),
                    pps: f("pps"),
                    calls: u("calls"),
                    updated_ms: u("updated_ms"),
                }
            })
            .collect();
        out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(out)
    }
}
