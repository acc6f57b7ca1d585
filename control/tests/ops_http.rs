//! The HTTP server over real sockets (`greenroom_control::server::serve` on 127.0.0.1:0, no
//! media plane): input validation answers the JSON error body, tokens must name a configured
//! key, and slow or silent connections are closed and capped per IP while `/healthz` and a real
//! join keep working. Every wait is bounded; nothing asserts speed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use greenroom_control::auth::Auth;
use greenroom_control::config::{ApiKey, Config};
use greenroom_control::server::{serve, ServeOptions};
use greenroom_control::{app, start_state, AppState};
use greenroom_proto::Role;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

struct Server {
    state: Arc<AppState>,
    addr: SocketAddr,
    http: reqwest::Client,
}

impl Server {
    async fn start(mut config: Config) -> Server {
        // The call history goes to a private directory, not the working directory.
        config.server.data_dir =
            std::env::temp_dir().join(format!("greenroom-ops-http-{}", uuid::Uuid::new_v4()));
        let opts = ServeOptions::from_config(&config.server);
        let state = start_state(config, false).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(
            listener,
            app(state.clone()),
            opts,
            std::future::pending(),
        ));
        Server {
            state,
            addr,
            // A new connection per request: the server closes a keep-alive connection that
            // stays idle past its header timeout (2 s in some tests here), and a request sent on
            // such a pooled connection as the close arrives fails with a reset (seen in CI). The
            // server is right to close it; the tests check the server, not the client's pool.
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
        }
    }

    fn admin(&self) -> String {
        self.state.auth.mint("srv", None, None, true, 600).unwrap()
    }

    /// POST with a raw body; returns (status, content-type, JSON or string body).
    async fn post_raw(&self, path: &str, token: &str, body: &str) -> (u16, String, Value) {
        let r = timeout(
            WAIT,
            self.http
                .post(format!("http://{}{path}", self.addr))
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(body.to_owned())
                .send(),
        )
        .await
        .unwrap()
        .unwrap();
        reply(r).await
    }

    async fn get(&self, path: &str, token: &str) -> (u16, String, Value) {
        let r = timeout(
            WAIT,
            self.http
                .get(format!("http://{}{path}", self.addr))
                .bearer_auth(token)
                .send(),
        )
        .await
        .unwrap()
        .unwrap();
        reply(r).await
    }

    async fn healthz(&self) -> u16 {
        let r = timeout(
            WAIT,
            self.http
                .get(format!("http://{}/healthz", self.addr))
                .send(),
        )
        .await
        .expect("healthz timed out")
        .expect("healthz failed");
        r.status().as_u16()
    }

    /// Joins `call` over a real WebSocket; returns the socket once `joined` arrived.
    async fn join(
        &self,
        user: &str,
        call: &str,
    ) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>> {
        let token = self
            .state
            .auth
            .mint(user, None, Some(Role::Host), false, 600)
            .unwrap();
        let url = format!("ws://{}/v1/signal?token={token}", self.addr);
        let (mut ws, _) = timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timed out")
            .expect("connect failed");
        ws.send(Message::text(
            json!({"type": "join", "call_cid": call, "create": true}).to_string(),
        ))
        .await
        .unwrap();
        loop {
            let m = timeout(WAIT, ws.next())
                .await
                .expect("no joined in time")
                .expect("socket ended")
                .unwrap();
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "joined" {
                    return ws;
                }
            }
        }
    }
}

async fn reply(r: reqwest::Response) -> (u16, String, Value) {
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, ct, v)
}

#[track_caller]
fn assert_json_error(got: &(u16, String, Value), status: u16, code: &str, what: &str) {
    assert_eq!(got.0, status, "{what}: {got:?}");
    assert!(
        got.1.starts_with("application/json"),
        "{what}: content-type {got:?}"
    );
    assert_eq!(got.2["code"], code, "{what}: {got:?}");
}

fn bad_ids() -> Vec<String> {
    vec![
        String::new(),
        "x".repeat(10_000),
        "a\0b".to_owned(),
        "../..".to_owned(),
    ]
}

#[tokio::test]
async fn user_ids_in_bodies_are_validated() {
    let s = Server::start(Config::default()).await;
    let admin = s.admin();
    let call = "/v1/calls/default/valid";
    let created = s.post_raw(call, &admin, "{}").await;
    assert_eq!(created.0, 200, "{created:?}");
    for id in bad_ids() {
        let shown: String = id.chars().take(12).collect();
        for (action, body) in [
            ("kick", json!({"user_id": id})),
            ("block", json!({"user_id": id})),
            ("unblock", json!({"user_id": id})),
            ("mute_users", json!({"user_ids": [id], "audio": true})),
            (
                "user_permissions",
                json!({"user_id": id, "grant_permissions": ["send-audio"]}),
            ),
        ] {
            let got = s
                .post_raw(&format!("{call}/{action}"), &admin, &body.to_string())
                .await;
            assert_json_error(&got, 400, "bad_request", &format!("{action} {shown:?}"));
        }
    }
    // A good id still works (bob is not in the call; blocking is allowed anyway).
    let ok = s
        .post_raw(&format!("{call}/block"), &admin, r#"{"user_id":"bob"}"#)
        .await;
    assert_eq!(ok.0, 200, "{ok:?}");
}

#[tokio::test]
async fn bodies_must_be_json_objects() {
    let s = Server::start(Config::default()).await;
    let admin = s.admin();
    // `[]` does not create a call.
    let got = s.post_raw("/v1/calls/default/arr", &admin, "[]").await;
    assert_json_error(&got, 400, "invalid_json", "[] as create body");
    let after = s.get("/v1/calls/default/arr", &admin).await;
    assert_json_error(&after, 404, "not_found", "the call was not created");
    // `[[{...}]]` does not add a member.
    let call = "/v1/calls/default/arr2";
    assert_eq!(s.post_raw(call, &admin, "").await.0, 200);
    let got = s
        .post_raw(call, &admin, r#"[[{"user_id":"mallory","role":"admin"}]]"#)
        .await;
    assert_json_error(&got, 400, "invalid_json", "[[member]] as create body");
    let state = s.get(call, &admin).await;
    assert_eq!(state.0, 200);
    assert!(
        !state.2.to_string().contains("mallory"),
        "member added: {}",
        state.2
    );
    // The same for the JSON-body actions.
    for (action, body) in [
        ("kick", r#"["bob"]"#),
        ("mute_users", "[[], false, true]"),
        ("request_permission", r#"[["send-audio"]]"#),
        ("block", "\"bob\""),
    ] {
        let got = s.post_raw(&format!("{call}/{action}"), &admin, body).await;
        assert_json_error(&got, 400, "invalid_json", action);
    }
}

#[tokio::test]
async fn query_and_path_rejections_answer_the_json_error_body() {
    let s = Server::start(Config::default()).await;
    let admin = s.admin();
    let got = s.get("/v1/users/alice/calls?limit=abc", &admin).await;
    assert_json_error(&got, 400, "bad_request", "limit=abc");
    // History path ids are validated like any id.
    for path in [
        "/v1/users/..%2F../calls",
        "/v1/users/a%00b/calls",
        &format!("/v1/users/{}/calls", "x".repeat(200)),
    ] {
        let got = s.get(path, &admin).await;
        assert_json_error(&got, 400, "bad_request", path);
    }
    // A path that is not UTF-8 is a path rejection.
    let got = s.get("/v1/calls/default/%FF", &admin).await;
    assert_json_error(&got, 400, "bad_request", "%FF in the path");
    // A good request still answers.
    let ok = s.get("/v1/users/alice/calls?limit=5", &admin).await;
    assert_eq!(ok.0, 200, "{ok:?}");
}

fn two_keys() -> Config {
    let mut c = Config::default();
    c.keys.api_key = "k2".into();
    c.keys.api_secret = "secret-2".into();
    c.keys.verify_only = vec![ApiKey {
        api_key: "k1".into(),
        api_secret: "secret-1".into(),
    }];
    c
}

#[tokio::test]
async fn tokens_must_name_a_configured_key_and_rotation_accepts_both() {
    let old = Auth::new("k1", "secret-1")
        .mint("srv", None, None, true, 600)
        .unwrap();
    let new = Auth::new("k2", "secret-2")
        .mint("srv", None, None, true, 600)
        .unwrap();
    // During the rotation both keys verify and new tokens carry the first.
    let s = Server::start(two_keys()).await;
    assert_eq!(s.state.auth.signing_key_id(), "k2");
    for (name, t) in [("old", &old), ("new", &new)] {
        let got = s.post_raw("/v1/calls/default/rot", t, "{}").await;
        assert_eq!(got.0, 200, "{name} key: {got:?}");
    }
    // A kid naming no key is refused, even with a secret that would verify.
    let wrong_kid = Auth::new("k3", "secret-2")
        .mint("srv", None, None, true, 600)
        .unwrap();
    let got = s.post_raw("/v1/calls/default/rot", &wrong_kid, "{}").await;
    assert_json_error(&got, 401, "unknown_key", "wrong kid");

    // After the rotation (k1 removed) the old key's tokens are refused.
    let mut after = two_keys();
    after.keys.verify_only.clear();
    let s = Server::start(after).await;
    let got = s.post_raw("/v1/calls/default/rot", &old, "{}").await;
    assert_json_error(&got, 401, "unknown_key", "removed key");
    assert_eq!(s.post_raw("/v1/calls/default/rot", &new, "{}").await.0, 200);
}

/// Waits (bounded) until the server closes `c`: EOF or a reset. Returns whether it did.
async fn closed_by_server(c: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, c.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A 408 or similar before the close is fine: keep reading to the end.
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_half_request_connections_are_closed_while_the_server_keeps_serving() {
    let mut config = Config::default();
    config.server.header_timeout_secs = 2;
    config.server.body_timeout_secs = 2;
    config.server.max_conns_per_ip = 400;
    let s = Server::start(config).await;
    let mut idle = Vec::new();
    for i in 0..300 {
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        if i % 2 == 1 {
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .unwrap();
        }
        idle.push(c);
    }
    // A body that never completes: its request fails once the body deadline passes.
    let mut slow_body = TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "POST /v1/calls/default/slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"members\"",
        s.admin()
    );
    slow_body.write_all(head.as_bytes()).await.unwrap();
    // The server keeps serving meanwhile: health and a real join.
    assert_eq!(s.healthz().await, 200);
    let mut ws = s.join("alice", "default:busy").await;
    // Every silent or half-sent connection is closed by the server (a bounded wait, far longer
    // than the 2 s header timeout; without the timeout they would stay open forever).
    for (i, c) in idle.iter_mut().enumerate() {
        assert!(
            closed_by_server(c, Duration::from_secs(30)).await,
            "connection {i} still open"
        );
    }
    let mut head = Vec::new();
    let _ = timeout(Duration::from_secs(30), slow_body.read_to_end(&mut head)).await;
    let head = String::from_utf8_lossy(&head);
    assert!(
        head.starts_with("HTTP/1.1 400"),
        "slow body answered: {head}"
    );
    // The upgraded WebSocket outlived the header timeout and still answers.
    ws.send(Message::Ping(b"still here".to_vec().into()))
        .await
        .unwrap();
    let pong = loop {
        match timeout(WAIT, ws.next()).await.expect("no pong").unwrap() {
            Ok(Message::Pong(p)) => break p,
            Ok(_) => {}
            Err(e) => panic!("websocket failed: {e}"),
        }
    };
    assert_eq!(&pong[..], b"still here");
    assert_eq!(s.healthz().await, 200);
}

#[tokio::test]
async fn connections_over_the_per_ip_cap_are_refused() {
    let mut config = Config::default();
    config.server.header_timeout_secs = 60;
    config.server.max_conns_per_ip = 5;
    let s = Server::start(config).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(TcpStream::connect(s.addr).await.unwrap());
    }
    // Make sure the server has admitted all five before the sixth.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(s.addr).await.unwrap();
    assert!(
        closed_by_server(&mut extra, Duration::from_secs(20)).await,
        "the sixth connection from one IP was kept (header timeout is 60 s)"
    );
    // The five held ones are still open: the cap, not a timeout, closed the sixth.
    for c in &mut held {
        let mut b = [0u8; 1];
        assert!(
            timeout(Duration::from_millis(100), c.read(&mut b))
                .await
                .is_err(),
            "a held connection was closed"
        );
    }
    // Closing one gives its slot back: health answers again (bounded retries).
    held.pop();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = timeout(
            WAIT,
            s.http.get(format!("http://{}/healthz", s.addr)).send(),
        )
        .await;
        if matches!(&r, Ok(Ok(resp)) if resp.status() == 200) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "healthz never answered after a slot was freed: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
