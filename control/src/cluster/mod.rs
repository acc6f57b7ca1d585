//! Cluster mode on Redis (off by default: without a `[cluster]` table the server is one process
//! with no external service and none of this runs). A node registers itself with a TTL and its
//! load ([`registry`]), the first request for a call places it atomically on the least-loaded
//! live node, and any node serves any call: HTTP requests for a call homed elsewhere are
//! proxied to its home ([`proxy`]), a signaling `join` for it is relayed over a node-to-node
//! WebSocket ([`relay`]). docs/SCALING.md has the design.

pub mod call_nodes;
mod config;
mod load;
pub mod media_rpc;
pub mod proxy;
pub mod registry;
pub mod relay;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use greenroom_proto::CallCid;

pub use config::ClusterConfig;
pub use registry::{Home, Load, NodeInfo, NodeState};

use crate::config::Config;
use crate::state::AppState;

/// The header a node adds to a request or socket it forwards to a call's home: the home serves
/// it locally (no second hop), and answers 503 `cluster_unavailable` rather than forward again.
pub const HOP_HEADER: &str = "x-greenroom-hop";

/// The header a node adds to a socket it relays to a call's home when it hosts the
/// participant's media itself (its node id): media follows the socket. Honoured only on a
/// relayed socket (with [`HOP_HEADER`]) and only for a registered node.
pub const MEDIA_NODE_HEADER: &str = "x-greenroom-media-node";

/// Cluster failures.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The `[cluster]` table is wrong (e.g. a bad Redis URL).
    #[error("cluster configuration: {0}")]
    Config(String),
    /// Redis (or the call's home node) cannot be reached: no new placement is possible.
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// Every registered node is draining (or none is registered).
    #[error("cluster unavailable: no active node to place the call on")]
    NoActiveNode,
}

/// Where a request for a call is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// On this node.
    Local,
    /// On another node, the call's home.
    Remote(Home),
}

/// This node's membership in the cluster.
#[derive(Debug)]
pub struct Cluster {
    registry: registry::Registry,
    draining: AtomicBool,
    refresh: Duration,
    /// Client for proxied HTTP requests.
    http: reqwest::Client,
}

impl Cluster {
    /// Connects to Redis and registers this node (active, no load yet, no relay address).
    /// Fails when Redis cannot be reached.
    pub async fn connect(config: &Config) -> Result<Arc<Cluster>, ClusterError> {
        Cluster::connect_with(config, None, None).await
    }

    /// [`Cluster::connect`] with this node's id (when already resolved: the media plane's
    /// relay uses it) and its RTP relay address, listed in the registry.
    pub async fn connect_with(
        config: &Config,
        node_id: Option<String>,
        relay_addr: Option<std::net::SocketAddr>,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let c = config
            .cluster
            .as_ref()
            .ok_or_else(|| ClusterError::Config("no [cluster] table".into()))?;
        let node_id = match node_id {
            Some(id) => id,
            None => c.resolved_node_id().map_err(ClusterError::Config)?,
        };
        let advertise_url = if c.advertise_url.is_empty() {
            format!("http://{}", config.server.http_addr)
        } else {
            c.advertise_url.trim_end_matches('/').to_owned()
        };
        let media_addr = if c.media_addr.is_empty() {
            format!("{}:{}", config.rtc.node_ip, config.rtc.udp_addr.port())
        } else {
            c.media_addr.clone()
        };
        if c.node_ttl_secs == 0 || c.refresh_ms == 0 || c.redis_timeout_ms == 0 {
            return Err(ClusterError::Config(
                "cluster.node_ttl_secs, refresh_ms and redis_timeout_ms must be at least 1".into(),
            ));
        }
        if c.refresh_ms >= c.node_ttl_secs * 1000 {
            return Err(ClusterError::Config(
                "cluster.refresh_ms must be shorter than cluster.node_ttl_secs".into(),
            ));
        }
        let timeout = Duration::from_millis(c.redis_timeout_ms);
        let registry = registry::Registry::connect(
            &c.redis_url,
            &c.key_prefix,
            registry::NodeIdentity {
                node_id,
                advertise_url,
                media_addr,
                relay_addr: relay_addr.map(|a| a.to_string()).unwrap_or_default(),
            },
            Duration::from_secs(c.node_ttl_secs),
            timeout,
        )
        .await?;
        registry
            .refresh(&Load::default(), NodeState::Active, &[])
            .await?;
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ClusterError::Config(e.to_string()))?;
        tracing::info!(
            node_id = registry.node_id(),
            url = registry.advertise_url(),
            "joined the cluster"
        );
        Ok(Arc::new(Cluster {
            registry,
            draining: AtomicBool::new(false),
            refresh: Duration::from_millis(c.refresh_ms),
            http,
        }))
    }

    /// Connects (see [`Cluster::connect`]), attaches the cluster to `state` and starts the
    /// refresh task (it ends when the state is dropped).
    pub async fn start(state: &Arc<AppState>) -> Result<Arc<Cluster>, ClusterError> {
        let cluster = Cluster::connect_with(
            &state.config,
            state.media.node_id().map(str::to_owned),
            state.media.relay_advertise(),
        )
        .await?;
        if state.cluster.set(cluster.clone()).is_err() {
            return Err(ClusterError::Config(
                "the cluster is already started".into(),
            ));
        }
        state.media.start_cluster(cluster.node_id());
        let weak = Arc::downgrade(state);
        tokio::spawn(refresh_loop(weak, cluster.clone()));
        Ok(cluster)
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        self.registry.node_id()
    }

    /// The registry client.
    pub fn registry(&self) -> &registry::Registry {
        &self.registry
    }

    /// Marks this node draining (no new calls are placed here) and tells Redis now.
    pub async fn drain(&self, state: &AppState) {
        self.draining.store(true, Ordering::Relaxed);
        if let Err(e) = self
            .refresh_once(state, &mut load::Sampler::default())
            .await
        {
            tracing::warn!("cluster: cannot mark this node draining: {e}");
        }
    }

    /// Removes this node from the registry (at the end of a shutdown).
    pub async fn deregister(&self) {
        if let Err(e) = self.registry.deregister().await {
            tracing::warn!("cluster: cannot deregister: {e}");
        }
    }

    fn node_state(&self) -> NodeState {
        if self.draining.load(Ordering::Relaxed) {
            NodeState::Draining
        } else {
            NodeState::Active
        }
    }

    async fn refresh_once(
        &self,
        state: &AppState,
        sampler: &mut load::Sampler,
    ) -> Result<(), ClusterError> {
        let calls: Vec<String> = state.call_cids().iter().map(|c| c.to_string()).collect();
        let load = sampler.sample(state, calls.len() as u64);
        self.registry
            .refresh(&load, self.node_state(), &calls)
            .await
    }

    /// Where a call is served: here when it is in this node's memory (no Redis round trip, so
    /// calls already here keep working while Redis is down), else at its home, placing it
    /// (atomically, on the least-loaded active node) when it has none.
    pub async fn route(&self, state: &AppState, cid: &CallCid) -> Result<Route, ClusterError> {
        if state.read_call(cid, |_| ()).is_ok() {
            return Ok(Route::Local);
        }
        let home = self.registry.place(&cid.to_string()).await?;
        if home.node_id == self.node_id() {
            Ok(Route::Local)
        } else {
            Ok(Route::Remote(home))
        }
    }
}

/// Refreshes the registration every `refresh_ms` until the state is dropped. A failed refresh
/// is logged and retried at the next tick (the node disappears from the registry after the TTL,
/// its calls here keep working).
async fn refresh_loop(state: Weak<AppState>, cluster: Arc<Cluster>) {
    let mut tick = tokio::time::interval(cluster.refresh);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sampler = load::Sampler::default();
    let mut failing = false;
    loop {
        tick.tick().await;
        let Some(state) = state.upgrade() else { break };
        match cluster.refresh_once(&state, &mut sampler).await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("cluster: registry refresh works again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!("cluster: registry refresh failed: {e}");
            }
            Err(_) => {}
        }
    }
}
