//! A real server on 127.0.0.1:0 (no media plane) and tokio-tungstenite signaling clients,
//! shared by the WebSocket protocol tests: raw sockets ([`connect`], [`send`], [`next`]), or a
//! [`Server`] with HTTP through its router and named [`Client`]s whose every read is bounded.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use futures_util::{SinkExt, StreamExt};
use greenroom_control::config::Config;
use greenroom_control::{app, start_state, AppState};
use greenroom_proto::Role;
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};
use tower::ServiceExt;

/// How long a test waits for one step before it fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A client socket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Starts a server with `config`; returns its state and the signaling URL.
pub async fn server_with(config: Config) -> (Arc<AppState>, String) {
    let (state, addr) = listen(config).await;
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

/// A server on 127.0.0.1:0 (no media plane) for the signaling tests: its state and address.
pub struct Server {
    /// The server's state (its router serves the HTTP calls of [`Server::http`]).
    pub state: Arc<AppState>,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Server {
    /// A server with the default configuration.
    pub async fn start() -> Server {
        Server::start_with(Config::default()).await
    }

    /// A server with `config`.
    pub async fn start_with(config: Config) -> Server {
        let (state, addr) = listen(config).await;
        Server { state, addr }
    }

    /// A token of `user` with the global `role`.
    pub fn token(&self, user: &str, role: Role) -> String {
        self.state
            .auth
            .mint(user, None, Some(role), false, 3600)
            .unwrap()
    }

    /// The signaling URL with `token`.
    pub fn url_with(&self, token: &str) -> String {
        format!("ws://{}/v1/signal?token={token}", self.addr)
    }

    /// The signaling URL of `user` with the global `role`.
    pub fn url(&self, user: &str, role: Role) -> String {
        self.url_with(&self.token(user, role))
    }

    /// A client of `user` with the global `role`.
    pub async fn connect(&self, user: &str, role: Role) -> Client {
        Client::connect(&self.url(user, role), user).await
    }

    /// A client named `name` connected with `token`.
    pub async fn connect_token(&self, name: &str, token: &str) -> Client {
        Client::connect(&self.url_with(token), name).await
    }

    /// An HTTP request through the same state's router (see [`http`]).
    pub async fn http(
        &self,
        method: Method,
        token: &str,
        path: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        http(&self.state, method, token, path, body).await
    }
}

/// Starts a server with `config`; returns its state and address.
async fn listen(config: Config) -> (Arc<AppState>, SocketAddr) {
    let state = start_state(config, false).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = app(state.clone());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (state, addr)
}

/// An HTTP request with `token` through `state`'s router (no socket): a JSON body unless
/// `body` is null. Returns the status and the JSON answer (null when there is none).
pub async fn http(
    state: &Arc<AppState>,
    method: Method,
    token: &str,
    path: &str,
    body: Value,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    let body = if body.is_null() {
        Body::empty()
    } else {
        req = req.header(header::CONTENT_TYPE, "application/json");
        Body::from(body.to_string())
    };
    let resp = app(state.clone())
        .oneshot(req.body(body).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// A named signaling client; every read is bounded by [`WAIT`] and names the client when it
/// fails.
pub struct Client {
    /// The socket.
    pub ws: Ws,
    /// Who it is, in failure messages.
    pub name: String,
    /// Messages read ahead and not consumed yet (the next reads return them first).
    pub pending: VecDeque<Value>,
}

impl Client {
    /// Connects to `url` as `name`.
    pub async fn connect(url: &str, name: &str) -> Client {
        let (ws, _) = timeout(WAIT, connect_async(url))
            .await
            .expect("connect timed out")
            .expect("connect failed");
        Client {
            ws,
            name: name.to_owned(),
            pending: VecDeque::new(),
        }
    }

    /// Sends one JSON message.
    pub async fn send(&mut self, v: Value) {
        self.send_text(v.to_string()).await;
    }

    /// Sends one text frame.
    pub async fn send_text(&mut self, s: String) {
        timeout(WAIT, self.ws.send(Message::text(s)))
            .await
            .expect("send timed out")
            .expect("send failed");
    }

    /// The next JSON message within `within` (control frames skipped), `None` on timeout;
    /// panics on close.
    pub async fn try_next(&mut self, within: Duration) -> Option<Value> {
        if let Some(m) = self.pending.pop_front() {
            return Some(m);
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = timeout(left, self.ws.next()).await.ok()?;
            let msg = msg
                .unwrap_or_else(|| panic!("{}: socket ended", self.name))
                .unwrap_or_else(|e| panic!("{}: socket error {e}", self.name));
            match msg {
                Message::Text(t) => return Some(serde_json::from_str(&t).unwrap()),
                Message::Close(f) => panic!("{}: closed {f:?}", self.name),
                _ => continue,
            }
        }
    }

    /// The next JSON message; panics on close or after [`WAIT`].
    pub async fn next(&mut self) -> Value {
        match self.try_next(WAIT).await {
            Some(v) => v,
            None => panic!("{}: no message within {WAIT:?}", self.name),
        }
    }

    /// Reads until a message of `kind` that satisfies `pred` arrives (within one [`WAIT`]);
    /// other messages are skipped.
    pub async fn wait_until(&mut self, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(msg) = self.try_next(left).await else {
                panic!(
                    "{}: no {kind} within {WAIT:?}; saw {}",
                    self.name,
                    seen.join(", ")
                )
            };
            if msg["type"] == kind && pred(&msg) {
                return msg;
            }
            seen.push(msg["type"].as_str().unwrap_or("?").to_owned());
        }
    }

    /// Reads until a message of `kind` arrives; other messages are skipped.
    pub async fn wait_for(&mut self, kind: &str) -> Value {
        self.wait_until(kind, |_| true).await
    }

    /// Reads (skipping messages) until the server's close frame, within `within`; returns its
    /// code.
    pub async fn close_code(&mut self, within: Duration) -> u16 {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, self.ws.next()).await {
                Err(_) => panic!("{}: no close frame within {within:?}", self.name),
                Ok(None) => panic!("{}: stream ended without a close frame", self.name),
                Ok(Some(Err(e))) => panic!("{}: error before close frame: {e}", self.name),
                Ok(Some(Ok(Message::Close(Some(f))))) => return u16::from(f.code),
                Ok(Some(Ok(Message::Close(None)))) => panic!("{}: close without code", self.name),
                Ok(Some(Ok(_))) => continue,
            }
        }
    }
}
