//! A signaling `join` for a call homed on another node: the receiving node opens a WebSocket to
//! the home's `/v1/signal` on the client's behalf (a token with the client's claims, signed
//! with the cluster's shared key, and [`HOP_HEADER`]), sends the `join` there and from then on
//! relays every text message both ways unchanged. When this node runs a media plane with a
//! relay, it names itself in [`MEDIA_NODE_HEADER`]: the home keeps the session but puts the
//! participant's media here (driven over the media RPC, [`super::media_rpc`]), so the SDP answer
//! names this node's media address; otherwise the media goes to the home. A `resume` whose
//! token names another home node is relayed the same way ([`relay_elsewhere`]). When either
//! side closes, the other is closed with the same code.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use greenroom_proto::{CallCid, ClientMessage, JoinSettings};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use super::{Cluster, ClusterError, Home, Route, HOP_HEADER, MEDIA_NODE_HEADER};
use crate::auth::Claims;
use crate::error::ApiError;
use crate::state::{AppState, Outbox, SESSION_QUEUE};

/// How long opening the node-to-node socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A client socket relayed to the call's home node. Dropping it closes the node-to-node socket
/// (the session leaves the call at its home).
#[derive(Debug)]
pub struct Relay {
    tx: mpsc::Sender<String>,
    outbox: Outbox,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The task sends a close frame when the channel ends; abort only if it is stuck.
        let task = self.task.abort_handle();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    task.abort();
                });
            }
            Err(_) => task.abort(),
        }
    }
}

impl Relay {
    /// Forwards one client message to the home node; a full queue closes the client (1008),
    /// as a slow local client would be.
    pub fn forward(&self, text: &str) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(text.to_owned()) {
            self.outbox.close(1008, "too slow");
        }
    }
}

/// A client message that may be served at another node: a `join` of a call homed elsewhere, or
/// a `resume` whose token names another home.
pub enum Entry {
    /// A `join`.
    Join {
        /// The call.
        call_cid: CallCid,
        /// The join's `create` flag.
        create: bool,
        /// The join's settings.
        settings: JoinSettings,
    },
    /// A `resume`.
    Resume {
        /// The resume token.
        resume_token: String,
    },
}

impl Entry {
    /// The message as the client sent it (without its `request_id`).
    fn message(&self) -> ClientMessage {
        match self {
            Entry::Join {
                call_cid,
                create,
                settings,
            } => ClientMessage::Join {
                call_cid: call_cid.clone(),
                create: *create,
                settings: settings.clone(),
            },
            Entry::Resume { resume_token } => ClientMessage::Resume {
                resume_token: resume_token.clone(),
            },
        }
    }
}

/// The client socket an [`Entry`] came on.
pub struct Client<'a> {
    /// The client's verified claims.
    pub claims: &'a Claims,
    /// The client's device id (ringing).
    pub device_id: &'a str,
    /// The message's `request_id`, echoed by the home.
    pub request_id: Option<&'a str>,
    /// A socket a peer node relayed here (a second hop is never made).
    pub relayed: bool,
    /// The socket already joined a call here.
    pub joined: bool,
}

/// Cluster mode: when `entry` is served by another node, relays this socket there (sending
/// `entry` first) and returns the relay; `None` when it is served here.
///
/// * A `join` is served here with cluster mode off, for a local call, or on a socket that
///   already joined (the local join refuses it); it fails with `cluster_unavailable` when the
///   call cannot be placed or its home cannot be reached, and on a socket a peer relayed here
///   (`relayed`) whose call is homed elsewhere (the client reconnects).
/// * A `resume` is served here with cluster mode off, for a token of this node or of no node
///   (see [`crate::state::new_resume_token`]), on a relayed socket or one already joined; it
///   fails with `cluster_unavailable` when the home is not registered or cannot be reached.
pub async fn relay_elsewhere(
    state: &Arc<AppState>,
    client: Client<'_>,
    entry: &Entry,
    outbox: &Outbox,
) -> Result<Option<Relay>, ApiError> {
    let Some(cluster) = state.cluster.get().cloned() else {
        return Ok(None);
    };
    if client.joined || state.is_shutting_down() {
        // The local join or resume answers these (`shutting_down` for either).
        return Ok(None);
    }
    let home = match entry {
        Entry::Join { call_cid, .. } => join_home(state, &cluster, &client, call_cid).await?,
        Entry::Resume { resume_token } => resume_home(&cluster, &client, resume_token).await?,
    };
    let Some(home) = home else {
        return Ok(None);
    };
    let mut first =
        serde_json::to_value(entry.message()).map_err(|e| ClusterError::Config(e.to_string()))?;
    if let (Some(id), Some(obj)) = (client.request_id, first.as_object_mut()) {
        obj.insert("request_id".into(), id.into());
    }
    let relay = open(
        state,
        &home,
        client.claims,
        client.device_id,
        first,
        outbox.clone(),
    )
    .await?;
    match entry {
        Entry::Join { call_cid, .. } => {
            tracing::info!(call = %call_cid, home = %home.node_id, "join relayed to the call's home")
        }
        Entry::Resume { .. } => {
            tracing::info!(home = %home.node_id, "resume relayed to the session's home")
        }
    }
    Ok(Some(relay))
}

/// The home of a joined call when it is another node.
async fn join_home(
    state: &Arc<AppState>,
    cluster: &Cluster,
    client: &Client<'_>,
    call_cid: &CallCid,
) -> Result<Option<Home>, ApiError> {
    if !client.claims.allows_call(call_cid) {
        // The local join answers `wrong_call`.
        return Ok(None);
    }
    match cluster.route(state, call_cid).await? {
        Route::Local => Ok(None),
        Route::Remote(_) if client.relayed => Err(ClusterError::Unavailable(
            "the call is homed on another node: reconnect and join again".into(),
        )
        .into()),
        Route::Remote(home) => Ok(Some(home)),
    }
}

/// The home named by a resume token when it is another node.
async fn resume_home(
    cluster: &Cluster,
    client: &Client<'_>,
    resume_token: &str,
) -> Result<Option<Home>, ApiError> {
    let Some(home_id) = crate::state::resume_token_home(resume_token) else {
        return Ok(None);
    };
    if client.relayed || home_id == cluster.node_id() {
        return Ok(None);
    }
    let advertise_url = cluster
        .registry()
        .advertise_url_of(home_id)
        .await?
        .ok_or_else(|| {
            ClusterError::Unavailable(format!("the session's home node {home_id} is gone"))
        })?;
    Ok(Some(Home {
        node_id: home_id.to_owned(),
        advertise_url,
    }))
}

async fn open(
    state: &AppState,
    home: &Home,
    c: &Claims,
    device_id: &str,
    first: serde_json::Value,
    outbox: Outbox,
) -> Result<Relay, ClusterError> {
    let call = c.call.as_deref().and_then(|s| s.parse::<CallCid>().ok());
    let ttl = c
        .exp
        .saturating_sub(crate::auth::unix_now_ms() / 1000)
        .max(60);
    let token = state
        .auth
        .mint(&c.sub, call.as_ref(), c.role, c.admin, ttl)
        .map_err(|e| ClusterError::Config(format!("minting the relay token: {e}")))?;
    let base = home
        .advertise_url
        .replacen("https://", "wss://", 1)
        .replacen("http://", "ws://", 1);
    let url = format!("{base}/v1/signal?device_id={device_id}");
    let mut request = url
        .into_client_request()
        .map_err(|e| ClusterError::Unavailable(format!("home node URL: {e}")))?;
    let headers = request.headers_mut();
    headers.insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .map_err(|_| ClusterError::Config("token is not a header value".into()))?,
    );
    headers.insert(
        HOP_HEADER,
        tokio_tungstenite::tungstenite::http::HeaderValue::from_static("1"),
    );
    // Media follows the socket: this node hosts the participant's media when it can relay.
    if let (Some(me), Some(_)) = (state.media.node_id(), state.media.relay_advertise()) {
        if let Ok(v) = me.parse() {
            headers.insert(MEDIA_NODE_HEADER, v);
        }
    }
    let (ws, _) = tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(request))
        .await
        .map_err(|_| ClusterError::Unavailable("the call's home node did not answer".into()))?
        .map_err(|e| ClusterError::Unavailable(format!("the call's home node: {e}")))?;
    let (tx, rx) = mpsc::channel(SESSION_QUEUE);
    tx.try_send(first.to_string())
        .map_err(|_| ClusterError::Config("relay queue".into()))?;
    let task = tokio::spawn(pump(ws, rx, outbox.clone()));
    Ok(Relay { tx, outbox, task })
}

type NodeSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Moves messages both ways until one side ends.
async fn pump(ws: NodeSocket, mut rx: mpsc::Receiver<String>, outbox: Outbox) {
    let (mut sink, mut stream) = ws.split();
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Some(text) => {
                    if sink.send(Message::text(text)).await.is_err() {
                        outbox.close(1011, "the call's home node went away");
                        return;
                    }
                }
                None => {
                    // The client's socket ended: leave at the home too.
                    let _ = sink.send(Message::Close(None)).await;
                    return;
                }
            },
            m = stream.next() => match m {
                Some(Ok(Message::Text(t))) => outbox.send_text(t.as_str().to_owned().into()),
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.as_str().to_owned()))
                        .unwrap_or((u16::from(CloseCode::Away), String::new()));
                    outbox.close(code, &reason);
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    outbox.close(1011, "the call's home node went away");
                    return;
                }
            },
        }
    }
}
