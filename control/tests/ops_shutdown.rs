//! Graceful shutdown of the real `greenroom` binary: SIGTERM during a call sends `going_away`
//! with the drain time to the joined client, then closes its socket with 1001 and exits with
//! status 0 once the drain time is over.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ops_support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use greenroom_proto::Role;
use ops_support::{command, free_tcp, free_udp, temp_dir, token, wait_ready, Server};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const DRAIN_SECS: u64 = 2;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

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
