//! The home's end of a media channel: opens it, queues requests in order, matches replies,
//! hands the node's media events to the state, and reports the node lost when it ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::wire::{Frame, Hello, Op, Request};
use super::{CONNECT_TIMEOUT, NODE_USER, PATH, QUEUE, REPLY_TIMEOUT};
use crate::cluster::ClusterError;
use crate::error::ApiError;
use crate::state::AppState;

/// Why a media RPC failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The channel to the node is closed (the node is gone, or the channel was stuck).
    #[error("the media node {0} is unreachable")]
    Closed(String),
    /// The node did not answer in time.
    #[error("the media node {0} did not answer in time")]
    Timeout(String),
    /// The node refused the operation (its media plane's error).
    #[error("{0}")]
    Refused(String),
}

impl From<RpcError> for ApiError {
    fn from(e: RpcError) -> Self {
        match e {
            RpcError::Refused(m) => ApiError::Media(m),
            other => ApiError::Cluster(ClusterError::Unavailable(other.to_string())),
        }
    }
}

type Pending = Mutex<HashMap<u64, oneshot::Sender<Result<serde_json::Value, String>>>>;

/// The home's end of a channel to one media node.
#[derive(Debug)]
pub struct RpcClient {
    node_id: String,
    relay_addr: Option<SocketAddr>,
    tx: mpsc::Sender<String>,
    pending: Arc<Pending>,
    next_id: AtomicU64,
    alive: Arc<AtomicBool>,
}

impl RpcClient {
    /// The media node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The media node's relay address.
    pub fn relay_addr(&self) -> Option<SocketAddr> {
        self.relay_addr
    }

    /// Whether the channel is open.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    fn queue(&self, req: &Request) -> Result<(), RpcError> {
        let text = serde_json::to_string(req).map_err(|e| RpcError::Refused(e.to_string()))?;
        if !self.is_alive() {
            return Err(RpcError::Closed(self.node_id.clone()));
        }
        self.tx.try_send(text).map_err(|e| {
            if let mpsc::error::TrySendError::Full(_) = e {
                // A stuck channel: the pump ends it (the node is treated as lost).
                tracing::warn!(node = %self.node_id, "media channel stuck, closing it");
                self.alive.store(false, Ordering::Relaxed);
            }
            RpcError::Closed(self.node_id.clone())
        })
    }

    /// Sends an operation without waiting (applied in order after the ones sent before).
    pub fn send(&self, op: Op) {
        if let Err(e) = self.queue(&Request { id: None, op }) {
            tracing::debug!("media command dropped: {e}");
        }
    }

    /// Sends an operation and waits for its reply.
    pub async fn call(&self, op: Op) -> Result<serde_json::Value, RpcError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(id, tx);
        if let Err(e) = self.queue(&Request { id: Some(id), op }) {
            self.pending.lock().remove(&id);
            return Err(e);
        }
        match tokio::time::timeout(REPLY_TIMEOUT, rx).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(RpcError::Refused(e)),
            Ok(Err(_)) => Err(RpcError::Closed(self.node_id.clone())),
            Err(_) => {
                self.pending.lock().remove(&id);
                Err(RpcError::Timeout(self.node_id.clone()))
            }
        }
    }
}

type NodeSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a channel to the media node at `advertise_url`. Its events go to the state's
/// [`AppState::on_sfu_event`]; when it ends, [`crate::media_plane::MediaPlane::node_lost`] runs.
pub async fn connect(
    state: &Arc<AppState>,
    my_node_id: &str,
    node_id: &str,
    advertise_url: &str,
) -> Result<Arc<RpcClient>, ClusterError> {
    let token = state
        .auth
        .mint(NODE_USER, None, None, true, 24 * 3600)
        .map_err(|e| ClusterError::Config(format!("minting the media channel token: {e}")))?;
    let base = advertise_url
        .replacen("https://", "wss://", 1)
        .replacen("http://", "ws://", 1);
    let mut request = format!("{base}{PATH}")
        .into_client_request()
        .map_err(|e| ClusterError::Unavailable(format!("media node URL: {e}")))?;
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .map_err(|_| ClusterError::Config("token is not a header value".into()))?,
    );
    let (mut ws, _) =
        tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(request))
            .await
            .map_err(|_| ClusterError::Unavailable(format!("media node {node_id}: timeout")))?
            .map_err(|e| ClusterError::Unavailable(format!("media node {node_id}: {e}")))?;
    // The hello, answered before anything else.
    let hello = Request {
        id: Some(0),
        op: Op::Hello {
            node_id: my_node_id.to_owned(),
        },
    };
    let text = serde_json::to_string(&hello).map_err(|e| ClusterError::Config(e.to_string()))?;
    let unavailable = |why: &str| ClusterError::Unavailable(format!("media node {node_id}: {why}"));
    ws.send(Message::text(text))
        .await
        .map_err(|e| unavailable(&e.to_string()))?;
    let hello: Hello = loop {
        let m = tokio::time::timeout(CONNECT_TIMEOUT, ws.next())
            .await
            .map_err(|_| unavailable("no hello"))?;
        match m {
            Some(Ok(Message::Text(t))) => match serde_json::from_str::<Frame>(t.as_str()) {
                Ok(Frame::Reply {
                    id: 0,
                    result: Some(r),
                    ..
                }) => break serde_json::from_value(r).map_err(|e| unavailable(&e.to_string()))?,
                Ok(Frame::Reply { error, .. }) => {
                    return Err(unavailable(&error.unwrap_or_default()));
                }
                _ => {}
            },
            Some(Ok(_)) => {}
            _ => return Err(unavailable("closed before its hello")),
        }
    };
    if hello.node_id != node_id {
        return Err(unavailable(&format!("answered as {}", hello.node_id)));
    }
    let (tx, rx) = mpsc::channel(QUEUE);
    let client = Arc::new(RpcClient {
        node_id: node_id.to_owned(),
        relay_addr: hello.relay_addr,
        tx,
        pending: Arc::new(Mutex::new(HashMap::new())),
        next_id: AtomicU64::new(1),
        alive: Arc::new(AtomicBool::new(true)),
    });
    tokio::spawn(client_pump(
        ws,
        rx,
        Arc::downgrade(&client),
        client.pending.clone(),
        client.alive.clone(),
        Arc::downgrade(state),
    ));
    tracing::info!(node = node_id, relay = ?hello.relay_addr, "media channel open");
    Ok(client)
}

async fn client_pump(
    ws: NodeSocket,
    mut rx: mpsc::Receiver<String>,
    client: Weak<RpcClient>,
    pending: Arc<Pending>,
    alive: Arc<AtomicBool>,
    state: Weak<AppState>,
) {
    let (mut sink, mut stream) = ws.split();
    // Wakes the loop regularly so a channel marked stuck ends.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Some(text) => {
                    if sink.send(Message::text(text)).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            m = stream.next() => match m {
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<Frame>(t.as_str()) {
                    Ok(Frame::Reply { id, result, error }) => {
                        if let Some(reply) = pending.lock().remove(&id) {
                            let _ = reply.send(match error {
                                Some(e) => Err(e),
                                None => Ok(result.unwrap_or_default()),
                            });
                        }
                    }
                    Ok(Frame::Event { event }) => {
                        if let Some(s) = state.upgrade() {
                            s.on_sfu_event(event.into());
                        }
                    }
                    Err(e) => tracing::warn!("media channel: bad frame: {e}"),
                },
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            _ = tick.tick() => {
                if !alive.load(Ordering::Relaxed) {
                    break;
                }
            }
        }
    }
    alive.store(false, Ordering::Relaxed);
    pending.lock().clear();
    let _ = sink.send(Message::Close(None)).await;
    if let (Some(state), Some(client)) = (state.upgrade(), client.upgrade()) {
        tracing::warn!(
            node = client.node_id(),
            "media channel closed: the node's participants fail"
        );
        state.media.node_lost(&state, &client);
    }
}
