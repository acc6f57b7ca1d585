//! Cluster mode through the real `greenroom` binary: configured by environment alone, it
//! registers in Redis; SIGTERM marks it `draining` before it drains, and it deregisters on exit;
//! after `kill -9` its registration disappears within the TTL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cluster_support;
mod ops_support;

use std::time::Duration;

use cluster_support::{cluster_env, Redis, WAIT};
use futures_util::{SinkExt, StreamExt};
use greenroom_proto::Role;
use ops_support::{command, free_tcp, free_udp, temp_dir, token, wait_ready, Server};

async fn node_state(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<String> {
    redis::cmd("HGET")
        .arg(key)
        .arg("state")
        .query_async(conn)
        .await
        .unwrap()
}

/// Polls until the node's registered state is `want` (`None`: not registered).
async fn wait_state(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
    want: Option<&str>,
    server: &Server,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = node_state(conn, key).await;
        if s.as_deref() == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node state {s:?}, want {want:?}:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spawn(redis: &Redis, id: &str, dir: &std::path::Path) -> Server {
    let http = free_tcp();
    let mut cmd = command();
    cmd.env("GREENROOM_HTTP_ADDR", http.to_string())
        .env("GREENROOM_UDP_ADDR", free_udp().to_string())
        .env("GREENROOM_DATA_DIR", dir)
        .envs(cluster_env(redis, id, None))
        .args(["serve", "--drain-secs", "2"]);
    Server::spawn(&mut cmd, http, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_marks_the_node_draining_then_deregisters_it() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let dir = temp_dir("cluster-term");
    let mut server = spawn(&redis, "term-1", &dir);
    let http = server.http;
    wait_ready(
        &mut server,
        &reqwest::Client::new(),
        &format!("http://{http}/healthz"),
    )
    .await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = "greenroom:node:term-1";
    wait_state(&mut conn, key, Some("active"), &server).await;
    // A joined client keeps the drain going for its whole length.
    let url = format!("ws://{http}/v1/signal?token={}", token("alice", Role::User));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        r#"{"type":"join","call_cid":"default:drain","create":true}"#,
    ))
    .await
    .unwrap();
    let _ = tokio::time::timeout(WAIT, ws.next()).await.unwrap();

    let status = std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_state(&mut conn, key, Some("draining"), &server).await;
    assert!(
        server.wait_exit(Duration::from_secs(20)).is_some(),
        "no exit:\n{}",
        server.log()
    );
    assert_eq!(node_state(&mut conn, key).await, None, "still registered");
    drop(ws);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_disappears_within_its_ttl() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let dir = temp_dir("cluster-kill");
    let mut server = spawn(&redis, "kill-1", &dir);
    let http = server.http;
    wait_ready(
        &mut server,
        &reqwest::Client::new(),
        &format!("http://{http}/healthz"),
    )
    .await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = "greenroom:node:kill-1";
    wait_state(&mut conn, key, Some("active"), &server).await;
    server.child.kill().unwrap();
    let _ = server.child.wait();
    // The TTL is 2 s; WAIT bounds the wait generously.
    wait_state(&mut conn, key, None, &server).await;
    let _ = std::fs::remove_dir_all(dir);
}
