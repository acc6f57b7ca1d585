//! Graceful shutdown of the real `greenroom` binary: SIGTERM during a call sends `going_away`
//! with the drain time to the joined client, then closes its socket with 1001 and exits with
//! status 0 once the drain time is over. While draining `/healthz` answers 503 `draining`; a
//! webhook queued right before SIGTERM is still delivered and a call still ringing gets its
//! final history record before the process exits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ops_support;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use futures_util::{SinkExt, StreamExt};
use greenroom_proto::Role;
use ops_support::{command, free_tcp, free_udp, temp_dir, token, wait_ready, Server};
use parking_lot::Mutex;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const DRAIN_SECS: u64 = 2;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn join(http: std::net::SocketAddr, user: &str, call: &str, server: &Server) -> Ws {
    let url = format!("ws://{http}/v1/signal?token={}", token(user, Role::User));
    let (mut ws, _) = timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .unwrap()
    .unwrap();
    ws.send(Message::text(
        serde_json::json!({"type": "join", "call_cid": call, "create": true}).to_string(),
    ))
    .await
    .unwrap();
    loop {
        let Some(Message::Text(t)) = next(&mut ws).await else {
            panic!("no joined:\n{}", server.log())
        };
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        if v["type"] == "joined" {
            return ws;
        }
    }
}

/// The next message (bounded wait); `None` when the socket ended or nothing came.
async fn next(ws: &mut Ws) -> Option<Message> {
    timeout(Duration::from_secs(10), ws.next())
        .await
        .ok()
        .flatten()
        .and_then(|m| m.ok())
}

#[tokio::test]
async fn sigterm_notifies_clients_and_exits_after_the_drain() {
    let dir = temp_dir("shutdown");
    let http = free_tcp();
    let mut cmd = command();
    cmd.args([
        "serve",
        "--http-addr",
        &http.to_string(),
        "--udp-addr",
        &free_udp().to_string(),
        "--drain-secs",
        &DRAIN_SECS.to_string(),
    ]);
    let mut server = Server::spawn(&mut cmd, http, &dir);
    wait_ready(
        &mut server,
        &reqwest::Client::new(),
        &format!("http://{http}/healthz"),
    )
    .await;

    let url = format!("ws://{http}/v1/signal?token={}", token("alice", Role::User));
    let (mut ws, _) = timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .unwrap()
    .unwrap();
    ws.send(Message::text(
        r#"{"type":"join","call_cid":"default:shutdown","create":true}"#,
    ))
    .await
    .unwrap();
    loop {
        let Some(Message::Text(t)) = next(&mut ws).await else {
            panic!("no joined:\n{}", server.log())
        };
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        if v["type"] == "joined" {
            break;
        }
    }

    let status = std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    // going_away first, with the drain time...
    let going_away = loop {
        match next(&mut ws).await {
            Some(Message::Text(t)) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "going_away" {
                    break v;
                }
            }
            Some(_) => {}
            None => panic!("no going_away before the socket ended:\n{}", server.log()),
        }
    };
    assert_eq!(going_away["drain_ms"], DRAIN_SECS * 1000, "{going_away}");
    // ...then, the client staying, a close with 1001 (going away) at the end of the drain.
    let close = loop {
        match next(&mut ws).await {
            Some(Message::Close(frame)) => break frame,
            Some(_) => {}
            None => {
                let exit = server.wait_exit(Duration::from_secs(1));
                panic!(
                    "socket ended without a close frame (process: {exit:?}):\n{}",
                    server.log()
                )
            }
        }
    };
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Away));

    let (st, after) = server
        .wait_exit(Duration::from_secs(DRAIN_SECS + 8))
        .unwrap_or_else(|| panic!("still running after the drain:\n{}", server.log()));
    assert!(st.success(), "exit status {st}:\n{}", server.log());
    eprintln!("exited {after:?} after the close frame");
    let _ = std::fs::remove_dir_all(dir);
}

/// A webhook receiver on 127.0.0.1 that answers every delivery slowly (so events are still
/// queued when SIGTERM comes) and keeps the bodies.
async fn slow_receiver(delay: Duration) -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let inbox: Arc<Mutex<Vec<String>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let store = inbox.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: Bytes| {
            let store = store.clone();
            async move {
                tokio::time::sleep(delay).await;
                store
                    .lock()
                    .push(String::from_utf8_lossy(&body).into_owned());
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, inbox)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_reports_draining_flushes_webhooks_and_records_ringing_calls() {
    let dir = temp_dir("shutdown-flush");
    let http = free_tcp();
    let (hook, inbox) = slow_receiver(Duration::from_millis(1500)).await;
    let config = dir.join("greenroom.toml");
    std::fs::write(
        &config,
        format!("[webhooks]\nurls = [\"http://{hook}/hook\"]\nflush_secs = 60\n"),
    )
    .unwrap();
    let mut cmd = command();
    cmd.args([
        "--config",
        config.to_str().unwrap(),
        "serve",
        "--http-addr",
        &http.to_string(),
        "--udp-addr",
        &free_udp().to_string(),
        "--drain-secs",
        &DRAIN_SECS.to_string(),
        "--data-dir",
        dir.to_str().unwrap(),
    ]);
    let mut server = Server::spawn(&mut cmd, http, &dir);
    let client = reqwest::Client::new();
    let healthz = format!("http://{http}/healthz");
    wait_ready(&mut server, &client, &healthz).await;

    // A joined client keeps the drain going for its whole length.
    let mut ws = join(http, "alice", "default:stay", &server).await;
    // alice rings bob, who never answers (the ring timeout is far longer than the test).
    let ring = client
        .post(format!("http://{http}/v1/calls/default/ringing/ring"))
        .bearer_auth(token("carol", Role::User))
        .json(&serde_json::json!({"user_ids": ["bob"], "kind": "audio"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ring.status(), 200, "{}", ring.text().await.unwrap());
    let session_id = ring.json::<serde_json::Value>().await.unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The last event before SIGTERM: a call ends (its webhook queues behind the slow ones).
    let last = client
        .post(format!("http://{http}/v1/calls/default/last-before-term"))
        .bearer_auth(token("dave", Role::Admin))
        .send()
        .await
        .unwrap();
    assert_eq!(last.status(), 200);
    let ended = client
        .post(format!(
            "http://{http}/v1/calls/default/last-before-term/end"
        ))
        .bearer_auth(token("dave", Role::Admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status(), 200, "{}", ended.text().await.unwrap());
    let status = std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    // While draining, /healthz answers 503 with `draining` (bounded polling).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let draining = loop {
        let r = client.get(&healthz).send().await.unwrap();
        if r.status() == 503 {
            break r.json::<serde_json::Value>().await.unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never draining:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(draining["status"], "draining", "{draining}");
    // The client is told, then closed at the end of the drain.
    while let Some(m) = next(&mut ws).await {
        if matches!(m, Message::Close(_)) {
            break;
        }
    }

    let (st, _) = server
        .wait_exit(Duration::from_secs(90))
        .unwrap_or_else(|| panic!("still running:\n{}", server.log()));
    assert!(st.success(), "exit status {st}:\n{}", server.log());
    // The webhook queued right before SIGTERM was delivered before the process exited.
    let bodies = inbox.lock().clone();
    assert!(
        bodies.iter().any(|b| b.contains("last-before-term")),
        "{} deliveries, none for the last call:\n{}",
        bodies.len(),
        server.log()
    );
    // The call still ringing got its final record (missed, with an end time).
    let store =
        greenroom_control::history::HistoryStore::open(&dir.join("history.sqlite3")).unwrap();
    let rec = store
        .get(&session_id)
        .unwrap()
        .unwrap_or_else(|| panic!("no record for {session_id}:\n{}", server.log()));
    assert_eq!(rec.outcome, greenroom_proto::RingOutcome::Missed, "{rec:?}");
    assert!(rec.ended_at_ms.is_some(), "{rec:?}");
    let _ = std::fs::remove_dir_all(dir);
}
