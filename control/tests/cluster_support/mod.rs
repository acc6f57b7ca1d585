//! Cluster tests: a real `redis-server` per test (free port, no persistence, stopped on drop)
//! and Greenroom nodes (control state + HTTP server, no media plane) in the test process.
//! Tests skip with a message when `redis-server` is not installed (scripts/test installs it).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use greenroom_control::cluster::{Cluster, ClusterConfig};
use greenroom_control::config::Config;
use greenroom_control::{app, start_state, AppState};
use tokio::net::TcpListener;

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
