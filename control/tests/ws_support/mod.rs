//! A real server on 127.0.0.1:0 (no media plane) and raw tokio-tungstenite signaling clients,
//! shared by the WebSocket protocol tests.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use greenroom_control::config::Config;
use greenroom_control::{app, start_state, AppState};
use greenroom_proto::Role;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

/// How long a test waits for one step before it fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A client socket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Starts a server with `config`; returns its state and the signaling URL.
pub async fn server_with(config: Config) -> (Arc<AppState>, String) {
    let state = start_state(config, false).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = app(state.clone());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (state, format!("ws://{addr}/v1/signal"))
}

/// Connects `user` with a global `role`.
pub async fn connect(state: &AppState, url: &str, user: &str, role: Role) -> Ws {
    let token = state
        .auth
        .mint(user, None, Some(role), false, 3600)
        .unwrap();
    let (ws, _) = timeout(WAIT, connect_async(format!("{url}?token={token}")))
        .await
        .expect("connect timed out")
        .expect("connect failed");
    ws
}

/// Sends one JSON message.
pub async fn send(ws: &mut Ws, v: Value) {
    timeout(WAIT, ws.send(Message::text(v.to_string())))
        .await
        .expect("send timed out")
        .expect("send failed");
}

/// The next JSON message (a close fails the test).
pub async fn next(ws: &mut Ws) -> Value {
    loop {
        match timeout(WAIT, ws.next())
            .await
            .expect("no message")
            .unwrap()
            .unwrap()
        {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Close(f) => panic!("closed {f:?}"),
            _ => continue,
        }
    }
}
