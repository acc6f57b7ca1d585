//! A signaling `join` for a call homed on another node: the receiving node opens a WebSocket to
//! the home's `/v1/signal` on the client's behalf (a token with the client's claims, signed
//! with the cluster's shared key, and [`HOP_HEADER`]), sends the `join` there and from then on
//! relays every text message both ways unchanged. When this node runs a media plane with a
//! relay, it names itself in [`MEDIA_NODE_HEADER`]: the home keeps the session but puts the
//! participant's media here (driven over the media RPC, [`super::media_rpc`]), so the SDP answer
//! names this node's media address; otherwise the media goes to the home. A `resume` whose
//! token names another home node is relayed the same way ([`resume_elsewhere`]). When either
//! side closes, the other is closed with the same code.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use greenroom_proto::{CallCid, ClientMessage, JoinSettings};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use super::{ClusterError, Home, Route, HOP_HEADER, MEDIA_NODE_HEADER};
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

/// The request a client's join becomes at the home node.
pub struct JoinRequest<'a> {
    /// The client's verified claims.
    pub claims: &'a Claims,
    /// The client's device id (ringing).
    pub device_id: &'a str,
    /// The call.
    pub call_cid: &'a CallCid,
    /// The join's `create` flag.
    pub create: bool,
    /// The join's settings.
    pub settings: &'a JoinSettings,
    /// The join's `request_id`, echoed by the home.
    pub request_id: Option<&'a str>,
}

/// Cluster mode: when the call of a `join` is homed on another node, relays this socket there
/// and returns the relay; `None` when the join is served here (cluster mode off, a local call,
/// or a socket that already joined: the local join refuses it). Fails with `cluster_unavailable`
/// when the call cannot be placed or its home cannot be reached, and for a socket a peer relayed
/// here (`relayed`) whose call is homed elsewhere (a second hop is never made: the client
/// reconnects).
pub async fn join_elsewhere(
    state: &Arc<AppState>,
    relayed: bool,
    joined: bool,
    req: JoinRequest<'_>,
    outbox: &Outbox,
) -> Result<Option<Relay>, ApiError> {
    let Some(cluster) = state.cluster.get().cloned() else {
        return Ok(None);
    };
    if joined || state.is_shutting_down() || !req.claims.allows_call(req.call_cid) {
        // The local join answers these (served here, `shutting_down`, `wrong_call`).
        return Ok(None);
    }
    let home = match cluster.route(state, req.call_cid).await? {
        Route::Local => return Ok(None),
        Route::Remote(_) if relayed => {
            return Err(ClusterError::Unavailable(
                "the call is homed on another node: reconnect and join again".into(),
            )
            .into())
        }
        Route::Remote(home) => home,
    };
    let mut join = serde_json::to_value(ClientMessage::Join {
        call_cid: req.call_cid.clone(),
        create: req.create,
        settings: req.settings.clone(),
    })
    .map_err(|e| ClusterError::Config(e.to_string()))?;
    if let (Some(id), Some(obj)) = (req.request_id, join.as_object_mut()) {
        obj.insert("request_id".into(), id.into());
    }
    let relay = open(
        state,
        &home,
        req.claims,
        req.device_id,
        join,
        outbox.clone(),
    )
    .await?;
    tracing::info!(call = %req.call_cid, home = %home.node_id, "join relayed to the call's home");
    Ok(Some(relay))
}

/// A `resume` to relay to the session's home.
pub struct ResumeRequest<'a> {
    /// The client's verified claims.
    pub claims: &'a Claims,
    /// The client's device id (ringing).
    pub device_id: &'a str,
    /// The resume token.
    pub resume_token: &'a str,
    /// The message's `request_id`, echoed by the home.
    pub request_id: Option<&'a str>,
}

/// Cluster mode: a `resume` whose token names another home node (see
/// [`crate::state::new_resume_token`]) relays this socket there with the `resume`; `None` when
/// it is served here (cluster mode off, a token of this node or of no node, a socket a peer
/// relayed here, or one already joined). Fails with `cluster_unavailable` when the home is not
/// registered or cannot be reached.
pub async fn resume_elsewhere(
    state: &Arc<AppState>,
    relayed: bool,
    joined: bool,
    req: ResumeRequest<'_>,
    outbox: &Outbox,
) -> Result<Option<Relay>, ApiError> {
    let ResumeRequest {
        claims,
        device_id,
        resume_token,
        request_id,
    } = req;
    let Some(cluster) = state.cluster.get().cloned() else {
        return Ok(None);
    };
    let Some(home_id) = crate::state::resume_token_home(resume_token) else {
        return Ok(None);
    };
    if relayed || joined || home_id == cluster.node_id() || state.is_shutting_down() {
        return Ok(None);
    }
    let advertise_url = cluster
        .registry()
        .advertise_url_of(home_id)
        .await?
        .ok_or_else(|| {
            ClusterError::Unavailable(format!("the session's home node {home_id} is gone"))
        })?;
    let home = Home {
        node_id: home_id.to_owned(),
        advertise_url,
    };
    let mut resume = serde_json::to_value(ClientMessage::Resume {
        resume_token: resume_token.to_owned(),
    })
    .map_err(|e| ClusterError::Config(e.to_string()))?;
    if let (Some(id), Some(obj)) = (request_id, resume.as_object_mut()) {
        obj.insert("request_id".into(), id.into());
    }
    let relay = open(state, &home, claims, device_id, resume, outbox.clone()).await?;
    tracing::info!(home = %home.node_id, "resume relayed to the session's home");
    Ok(Some(relay))
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
