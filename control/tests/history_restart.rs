//! The call history survives a restart: calls rung through a real server (127.0.0.1:0, sockets
//! and HTTP) are listed, newest first and paged, by a new server state opened on the same data
//! directory after the first one was stopped. Every wait is bounded (5 s).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use futures_util::{SinkExt, StreamExt};
use greenroom_control::config::Config;
use greenroom_control::{app, start_state, AppState};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};
use tower::ServiceExt;

const WAIT: Duration = Duration::from_secs(5);

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Server {
    state: Arc<AppState>,
    url: String,
    task: JoinHandle<()>,
}

async fn start(dir: &Path) -> Server {
    let mut config = Config::default();
    config.server.data_dir = dir.to_owned();
    let state = start_state(config, false).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/v1/signal", listener.local_addr().unwrap());
    let router = app(state.clone());
    let task = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    Server { state, url, task }
}

impl Server {
    async fn device(&self, user: &str) -> Ws {
        let token = self.state.auth.mint(user, None, None, false, 600).unwrap();
        let (ws, _) = timeout(WAIT, connect_async(format!("{}?token={token}", self.url)))
            .await
            .expect("connect timed out")
            .expect("connect failed");
        let mut ws = Ws(ws);
        // The device is registered once the socket answers.
        ws.send(json!({"type": "ping"})).await;
        ws.wait_for("pong").await;
        ws
    }

    async fn get(&self, user: &str, path: &str) -> (StatusCode, Value) {
        let token = self.state.auth.mint(user, None, None, false, 600).unwrap();
        let req = Request::builder()
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        let resp = app(self.state.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

struct Ws(WebSocketStream<MaybeTlsStream<TcpStream>>);

impl Ws {
    async fn send(&mut self, v: Value) {
        timeout(WAIT, self.0.send(Message::text(v.to_string())))
            .await
            .expect("send timed out")
            .expect("send failed");
    }

    /// Reads until a message of `kind` arrives; an `error` fails the test.
    async fn wait_for(&mut self, kind: &str) -> Value {
        loop {
            let m = timeout(WAIT, self.0.next())
                .await
                .unwrap_or_else(|_| panic!("no {kind} within {WAIT:?}"))
                .expect("socket ended")
                .expect("socket error");
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).unwrap();
                assert_ne!(v["type"], "error", "waiting for {kind}: {v}");
                if v["type"] == kind {
                    return v;
                }
            }
        }
    }
}

/// alice rings bob for `cid`; bob accepts then ends, or rejects.
async fn one_call(alice: &mut Ws, bob: &mut Ws, cid: &str, accept: bool) -> String {
    alice
        .send(
            json!({"type": "ring_initiate", "call_cid": cid, "user_ids": ["bob"], "kind": "audio"}),
        )
        .await;
    let ok = alice.wait_for("ring.ok").await;
    bob.wait_for("call.ring").await;
    if accept {
        bob.send(json!({"type": "ring_accept", "call_cid": cid}))
            .await;
        bob.wait_for("ring.ok").await;
        alice.wait_for("call.accepted").await;
        bob.send(json!({"type": "ring_end", "call_cid": cid})).await;
        bob.wait_for("ring.ok").await;
        alice.wait_for("call.ended").await;
    } else {
        bob.send(json!({"type": "ring_reject", "call_cid": cid}))
            .await;
        bob.wait_for("ring.ok").await;
        alice.wait_for("call.rejected").await;
    }
    ok["call"]["session_id"].as_str().unwrap().to_owned()
}

fn sessions(page: &Value) -> Vec<String> {
    page["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["session_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn history_survives_a_restart() {
    let dir = TempDir(std::env::temp_dir().join(format!(
        "greenroom-history-restart-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    )));
    let server = start(&dir.0).await;
    let mut alice = server.device("alice").await;
    let mut bob = server.device("bob").await;
    let s1 = one_call(&mut alice, &mut bob, "default:h1", false).await;
    let s2 = one_call(&mut alice, &mut bob, "default:h2", true).await;
    let s3 = one_call(&mut alice, &mut bob, "default:h3", false).await;
    let (st, before) = server.get("bob", "/v1/users/bob/calls").await;
    assert_eq!(st, StatusCode::OK, "{before}");
    assert_eq!(sessions(&before), [s3.clone(), s2.clone(), s1.clone()]);
    assert!(dir.0.join("history.sqlite3").exists());

    // Stop the first server: sockets, listener, state.
    drop((alice, bob));
    server.task.abort();
    let _ = server.task.await;
    drop(server.state);

    let server = start(&dir.0).await;
    let (st, after) = server.get("alice", "/v1/users/alice/calls").await;
    assert_eq!(st, StatusCode::OK, "{after}");
    assert_eq!(
        after["calls"], before["calls"],
        "same records after the restart"
    );
    let outcomes: Vec<_> = after["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["outcome"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(outcomes, ["rejected", "accepted", "rejected"]);

    // Paged: two then one.
    let (_, p1) = server.get("alice", "/v1/users/alice/calls?limit=2").await;
    assert_eq!(sessions(&p1), [s3, s2]);
    let next = p1["next"].as_str().expect("a next cursor").to_owned();
    let (_, p2) = server
        .get(
            "alice",
            &format!("/v1/users/alice/calls?limit=2&cursor={next}"),
        )
        .await;
    assert_eq!(sessions(&p2), [s1]);
    assert!(p2.get("next").is_none());
    let (st, _) = server
        .get("alice", "/v1/users/alice/calls?cursor=garbage")
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
}
