//! Cluster tests: a real `redis-server` per test (free port, no persistence, stopped on drop)
//! and Greenroom nodes (control state + HTTP server, with or without a media plane) in the test
//! process, and the clients' helpers the cluster tests share (signaling sockets, bots' counts).
//! Tests skip with a message when `redis-server` is not installed (scripts/test installs it).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use greenroom_control::cluster::{Cluster, ClusterConfig, Route};
use greenroom_control::config::Config;
use greenroom_control::{app, start_state, AppState};
use greenroom_loadtest::Bot;
use greenroom_proto::{CallCid, Role};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// How long a test waits for one step before it fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// A `redis-server` child on a free loopback port.
pub struct Redis {
    /// Its port.
    pub port: u16,
    child: Option<Child>,
}

impl Redis {
    /// Starts one, or `None` (with a message) when `redis-server` is not installed.
    pub async fn start() -> Option<Redis> {
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            eprintln!(
                "SKIPPED: redis-server is not installed (apt-get install redis-server; \
                 scripts/test installs it)"
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = Redis { port, child: None };
        r.spawn().await;
        Some(r)
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the process (kill, then wait for it).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: no persistence).
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One node: its state, HTTP address and cluster membership.
pub struct Node {
    /// The control state.
    pub state: Arc<AppState>,
    /// HTTP address.
    pub addr: SocketAddr,
    /// The cluster membership.
    pub cluster: Arc<Cluster>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Node {
    /// Base HTTP URL.
    pub fn http(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Signaling URL.
    pub fn ws(&self) -> String {
        format!("ws://{}/v1/signal", self.addr)
    }
}

/// The cluster table of a test node: short TTL and refresh, a prefix of its own.
pub fn cluster_config(redis: &Redis, node_id: &str, prefix: &str) -> ClusterConfig {
    ClusterConfig {
        redis_url: redis.url(),
        node_id: node_id.to_owned(),
        node_ttl_secs: 2,
        refresh_ms: 200,
        redis_timeout_ms: 500,
        key_prefix: prefix.to_owned(),
        relay_bind: "127.0.0.1:0".to_owned(),
        ..Default::default()
    }
}

/// The environment of a `greenroom serve` child in the cluster on `redis` (the real binary's
/// twin of [`cluster_config`]: short TTL and refresh, relay on a free port, a dropped socket's
/// resume grace of 1 s), under the key `prefix` (`None`: the default, `greenroom`).
pub fn cluster_env(redis: &Redis, node_id: &str, prefix: Option<&str>) -> Vec<(String, String)> {
    let mut env = vec![
        ("GREENROOM_REDIS_URL", redis.url()),
        ("GREENROOM_CLUSTER__NODE_ID", node_id.to_owned()),
        ("GREENROOM_CLUSTER__NODE_TTL_SECS", "2".to_owned()),
        ("GREENROOM_CLUSTER__REFRESH_MS", "200".to_owned()),
        ("GREENROOM_CLUSTER__RELAY_BIND", "127.0.0.1:0".to_owned()),
        ("GREENROOM_LIMITS__RESUME_GRACE_SECS", "1".to_owned()),
    ];
    if let Some(p) = prefix {
        env.push(("GREENROOM_CLUSTER__KEY_PREFIX", p.to_owned()));
    }
    env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// Starts a node in cluster mode (no media plane).
pub async fn node(redis: &Redis, node_id: &str, prefix: &str) -> Node {
    node_with(redis, node_id, prefix, false).await
}

/// Starts a node in cluster mode, with its media plane on an ephemeral UDP port when `media`.
pub async fn node_with(redis: &Redis, node_id: &str, prefix: &str, media: bool) -> Node {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = Config::default();
    let mut c = cluster_config(redis, node_id, prefix);
    c.advertise_url = format!("http://{addr}");
    config.cluster = Some(c);
    config.server.http_addr = addr;
    config.rtc.udp_addr = "127.0.0.1:0".parse().unwrap();
    // A dropped socket leaves the call once its resume grace is over (15 s by default, as long as
    // WAIT): the tests that drop a socket expect the leave well within WAIT.
    config.limits.resume_grace_secs = 1;
    let state = start_state(config, media).await.unwrap();
    let cluster = Cluster::start(&state).await.unwrap();
    let router = app(state.clone());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Node {
        state,
        addr,
        cluster,
        server,
    }
}

/// A unique key prefix per test.
pub fn prefix(test: &str) -> String {
    format!("t{}-{test}", std::process::id())
}

/// Starts three nodes `<name>-a`, `<name>-b`, `<name>-c` under the key prefix of `name`, with
/// their media planes when `media`.
pub async fn three_nodes(redis: &Redis, name: &str, media: bool) -> [Node; 3] {
    let p = prefix(name);
    [
        node_with(redis, &format!("{name}-a"), &p, media).await,
        node_with(redis, &format!("{name}-b"), &p, media).await,
        node_with(redis, &format!("{name}-c"), &p, media).await,
    ]
}

/// The home of call `cid` among `nodes` (placing the call through the first one), and the
/// other nodes in their order.
pub async fn split_by_home<'a>(nodes: &[&'a Node], cid: &str) -> (&'a Node, Vec<&'a Node>) {
    let parsed: CallCid = cid.parse().unwrap();
    let home_id = match nodes[0]
        .cluster
        .route(&nodes[0].state, &parsed)
        .await
        .unwrap()
    {
        Route::Local => nodes[0].cluster.node_id().to_owned(),
        Route::Remote(h) => h.node_id,
    };
    let (home, others): (Vec<&Node>, Vec<&Node>) =
        nodes.iter().partition(|n| n.cluster.node_id() == home_id);
    (home[0], others)
}

/// An admin token of node `n` (the backend's).
pub fn admin(n: &Node) -> String {
    n.state.auth.mint("backend", None, None, true, 600).unwrap()
}

/// A token of `user` with the global `role`, minted by node `n`.
pub fn token(n: &Node, user: &str, role: Role) -> String {
    n.state
        .auth
        .mint(user, None, Some(role), false, 600)
        .unwrap()
}

/// `POST /v1/calls/default/{id}` at node `n` with `token`: creates the call (or gets it).
pub async fn create_call(n: &Node, token: &str, id: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/v1/calls/default/{id}", n.http()))
        .bearer_auth(token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap()
}

/// Creating call `default:{id}` at node `n` is refused while Redis is down: 503
/// `cluster_unavailable`.
pub async fn refused_while_redis_is_down(n: &Node, token: &str, id: &str) {
    let r = create_call(n, token, id).await;
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "cluster_unavailable", "{body}");
}

/// Creates call `default:{id}` at node `n` once Redis is back (503 until then, within
/// [`WAIT`]).
pub async fn created_once_redis_is_back(n: &Node, token: &str, id: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = create_call(n, token, id).await;
        if r.status() == 200 {
            return;
        }
        assert_eq!(r.status(), 503);
        assert!(tokio::time::Instant::now() < deadline, "no recovery");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `GET /v1/nodes` at node `n` with `token`.
pub async fn list_nodes(n: &Node, token: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{}/v1/nodes", n.http()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// Grants and revokes (`body`) in call `default:{call_id}` through node `n`'s API, as admin.
pub async fn user_permissions(n: &Node, call_id: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!(
            "{}/v1/calls/default/{call_id}/user_permissions",
            n.http()
        ))
        .bearer_auth(admin(n))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// A signaling client's socket.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a signaling socket at `n` as `user` with `role`.
pub async fn connect(n: &Node, user: &str, role: Role) -> Ws {
    let token = n
        .state
        .auth
        .mint(user, None, Some(role), false, 600)
        .unwrap();
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async(format!("{}?token={token}", n.ws())),
    )
    .await
    .unwrap()
    .unwrap();
    ws
}

/// Sends one JSON message.
pub async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// The next message of `kind` (others are skipped); a close fails the test.
pub async fn wait_for(ws: &mut Ws, kind: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no {kind}"))
            .unwrap()
            .unwrap();
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == kind {
                return v;
            }
        } else if let Message::Close(f) = m {
            panic!("closed waiting for {kind}: {f:?}");
        }
    }
}

/// Packets `bot` received on `track` so far.
pub fn packets(bot: &Bot, track: &str) -> u64 {
    bot.received().get(track).map(|t| t.packets).unwrap_or(0)
}

/// Waits until `bot` received more than `n` packets on `track`; returns the count.
pub async fn received_more(bot: &Bot, track: &str, n: u64) -> u64 {
    let s = bot
        .wait_for_received(WAIT, |s| s.get(track).is_some_and(|t| t.packets > n))
        .await
        .unwrap_or_else(|e| panic!("no packets on {track} beyond {n}: {e}"));
    s[track].packets
}
