//! The media RPC: how a call's home drives the media plane of another node (a call spanning
//! nodes: a participant's media lives on the node its socket reached, its session at the home).
//!
//! One WebSocket per (home, media node) pair, opened by the home to the media node's
//! `GET /v1/cluster/media` with an admin token signed by the cluster's shared key. Text frames
//! of JSON:
//!
//! * home → node: [`Request`] `{"id":7,"op":"publish",...}`; `id` only on requests that want a
//!   [`Frame::Reply`] (`hello`, `publish`, `subscriber_answer`); the others are applied in order
//!   and answered only by their effects;
//! * node → home: [`Frame::Reply`] `{"kind":"reply","id":7,"result":...}` or with `error`, and
//!   [`Frame::Event`] `{"kind":"event","event":{...}}`: the node's media events (subscriber
//!   offers, peer failures, speakers) for the participants and calls this channel created.
//!
//! One channel is ordered both ways, so a node applies one call's commands in the order the
//! home produced them. When the channel ends, the media node tears down everything it created
//! (participants, remote participants, call node sets), and the home treats the node's
//! participants as failed ([`crate::media_plane::MediaPlane::node_lost`]).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::extract::ws::{Message as AxMessage, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use greenroom_proto::{
    CallCid, MediaGate, PeerTarget, PublishTrack, Quality, SourceSet, SubscribedTrack, TrackSource,
};
use greenroom_sfu::{JoinOptions, RelayNode, SfuEvent};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::ClusterError;
use crate::auth::AuthError;
use crate::error::ApiError;
use crate::state::AppState;

/// The media RPC endpoint on every cluster node.
pub const PATH: &str = "/v1/cluster/media";
/// How long opening a channel (and its `hello`) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request waits for its reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(15);
/// Frames queued per direction before the channel is considered stuck and closed (the home
/// then treats the node as lost).
const QUEUE: usize = 8192;
/// The user id of the tokens nodes sign for each other's media channel.
const NODE_USER: &str = "greenroom-node";

/// A gate on the wire: the send bits of [`SourceSet`] and the receive flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireGate {
    /// [`SourceSet::bits`].
    pub send: u8,
    /// [`MediaGate::receive`].
    pub receive: bool,
}

impl From<MediaGate> for WireGate {
    fn from(g: MediaGate) -> Self {
        WireGate {
            send: g.send.bits(),
            receive: g.receive,
        }
    }
}

impl From<WireGate> for MediaGate {
    fn from(g: WireGate) -> Self {
        let send = SourceSet::ALL
            .iter()
            .filter(|s| g.send & SourceSet::bit(*s) != 0)
            .fold(SourceSet::EMPTY, SourceSet::with);
        MediaGate {
            send,
            receive: g.receive,
        }
    }
}

/// A relay peer on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireRelayNode {
    /// Node id.
    pub node_id: String,
    /// Its relay address.
    pub addr: SocketAddr,
}

/// One operation on the media node's plane (the [`greenroom_sfu::Sfu`] method of that name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Opens the channel: the reply is [`Hello`].
    Hello {
        /// The home's node id.
        node_id: String,
    },
    /// A participant whose media lives on this node.
    Join {
        /// Call.
        call: CallCid,
        /// Participant.
        pid: String,
        /// User.
        user_id: String,
        /// Gate.
        gate: WireGate,
        /// The call's gate version.
        version: u64,
        /// [`JoinOptions::bandwidth_estimation`].
        bandwidth_estimation: bool,
    },
    /// A participant whose media lives on another node.
    JoinRemote {
        /// Call.
        call: CallCid,
        /// Participant.
        pid: String,
        /// User.
        user_id: String,
        /// The node hosting its media.
        node_id: String,
        /// Gate.
        gate: WireGate,
        /// The call's gate version.
        version: u64,
    },
    /// The other nodes of a call.
    SetCallNodes {
        /// Call.
        call: CallCid,
        /// The other nodes.
        nodes: Vec<WireRelayNode>,
    },
    /// A versioned gate.
    SetGate {
        /// Participant.
        pid: String,
        /// Gate.
        gate: WireGate,
        /// The call's gate version.
        version: u64,
    },
    /// A publisher offer; the reply's result is the SDP answer.
    Publish {
        /// Participant.
        pid: String,
        /// The offer.
        sdp: String,
        /// Its tracks.
        tracks: Vec<PublishTrack>,
    },
    /// A subscriber answer; the reply says whether it applied.
    SubscriberAnswer {
        /// Participant.
        pid: String,
        /// The answer.
        sdp: String,
    },
    /// A trickled candidate.
    IceCandidate {
        /// Participant.
        pid: String,
        /// Which peer.
        target: PeerTarget,
        /// The candidate.
        candidate: String,
    },
    /// Stops a published source.
    Unpublish {
        /// Participant.
        pid: String,
        /// The source.
        source: TrackSource,
    },
    /// (Un)subscribes a track.
    SetSubscribed {
        /// Participant.
        pid: String,
        /// Track.
        track_id: String,
        /// Subscribed or not.
        subscribed: bool,
    },
    /// A simulcast quality.
    SetQuality {
        /// Participant.
        pid: String,
        /// Track.
        track_id: String,
        /// Quality.
        quality: Quality,
    },
    /// Restarts the subscriber peer's ICE.
    RestartIce {
        /// Participant.
        pid: String,
    },
    /// Removes a (local or remote) participant.
    Leave {
        /// Participant.
        pid: String,
    },
}

/// A request: an [`Op`] and, when a reply is wanted, an id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Set when a reply is wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// The operation.
    #[serde(flatten)]
    pub op: Op,
}

/// The reply to `hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The media node's id.
    pub node_id: String,
    /// Its relay address (`None`: it runs no relay).
    pub relay_addr: Option<SocketAddr>,
}

/// A media event of the node, for the home.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WireEvent {
    /// [`SfuEvent::SubscriberOffer`].
    SubscriberOffer {
        /// Participant.
        pid: String,
        /// Offer.
        sdp: String,
        /// Tracks.
        tracks: Vec<SubscribedTrack>,
    },
    /// [`SfuEvent::PeerFailed`].
    PeerFailed {
        /// Participant.
        pid: String,
        /// Why.
        reason: String,
    },
    /// [`SfuEvent::Speakers`].
    Speakers {
        /// Call.
        call: CallCid,
        /// (participant, level).
        speakers: Vec<(String, f32)>,
    },
}

impl From<WireEvent> for SfuEvent {
    fn from(e: WireEvent) -> Self {
        match e {
            WireEvent::SubscriberOffer { pid, sdp, tracks } => SfuEvent::SubscriberOffer {
                participant_id: pid,
                sdp,
                tracks,
            },
            WireEvent::PeerFailed { pid, reason } => SfuEvent::PeerFailed {
                participant_id: pid,
                reason,
            },
            WireEvent::Speakers { call, speakers } => SfuEvent::Speakers { call, speakers },
        }
    }
}

/// A frame from the media node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Frame {
    /// The reply to a request with an id.
    Reply {
        /// The request's id.
        id: u64,
        /// The result, on success.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<serde_json::Value>,
        /// Why it failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A media event.
    Event {
        /// The event.
        event: WireEvent,
    },
}

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

/// `GET /v1/cluster/media`: a home node's media channel to this node (admin token signed by
/// the shared key; 401 otherwise, 404 outside cluster mode).
pub async fn handler(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    if state.cluster.get().is_none() {
        return Err(ApiError::NotFound("cluster mode is off".into()));
    }
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or(AuthError::Missing)?;
    let claims = state.auth.verify(token)?;
    if !claims.admin {
        return Err(ApiError::Forbidden(
            "the media channel needs a node token".into(),
        ));
    }
    Ok(ws
        .max_message_size(16 << 20)
        .on_upgrade(move |socket| serve(state, socket)))
}

/// What one served channel created on this node (torn down when it ends).
#[derive(Default)]
struct Created {
    /// Participants (local and remote) and their call.
    pids: HashMap<String, CallCid>,
    /// Calls with participants or a node set here.
    calls: HashSet<CallCid>,
}

impl Created {
    /// Forgets a participant; returns its call when no other participant of it is left here.
    fn remove(&mut self, pid: &str) -> Option<CallCid> {
        let call = self.pids.remove(pid)?;
        if self.pids.values().any(|c| *c == call) {
            return None;
        }
        self.calls.remove(&call);
        Some(call)
    }
}

async fn serve(state: Arc<AppState>, socket: WebSocket) {
    let conn = state.media.next_conn_id();
    let (ev_tx, mut ev_rx) = mpsc::channel::<WireEvent>(QUEUE);
    let (mut sink, mut stream) = socket.split();
    let mut created = Created::default();
    let mut home = String::new();
    loop {
        tokio::select! {
            ev = ev_rx.recv() => {
                let Some(event) = ev else { break };
                let Ok(text) = serde_json::to_string(&Frame::Event { event }) else { continue };
                if sink.send(AxMessage::Text(text.into())).await.is_err() {
                    break;
                }
            }
            m = stream.next() => {
                let text = match m {
                    Some(Ok(AxMessage::Text(t))) => t,
                    Some(Ok(AxMessage::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => continue,
                };
                let req: Request = match serde_json::from_str(text.as_str()) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!("media channel: bad request: {e}");
                        continue;
                    }
                };
                if let Op::Hello { node_id } = &req.op {
                    home = node_id.clone();
                    tracing::info!(home = %home, "media channel from a home node");
                }
                let id = req.id;
                let result = apply(&state, conn, &ev_tx, &mut created, req.op).await;
                if let Some(id) = id {
                    let frame = match result {
                        Ok(v) => Frame::Reply { id, result: Some(v), error: None },
                        Err(e) => Frame::Reply { id, result: None, error: Some(e) },
                    };
                    let Ok(text) = serde_json::to_string(&frame) else { continue };
                    if sink.send(AxMessage::Text(text.into())).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    tracing::info!(home = %home, participants = created.pids.len(), "media channel ended: tearing down");
    if let Some(sfu) = &state.sfu {
        for pid in created.pids.keys() {
            sfu.leave(pid);
        }
        for call in &created.calls {
            sfu.set_call_nodes(call, Vec::new());
        }
    }
    let pids: HashSet<String> = created.pids.into_keys().collect();
    state.media.unserve(conn, &pids, &created.calls);
}

/// Applies one operation to this node's media plane.
async fn apply(
    state: &AppState,
    conn: u64,
    events: &mpsc::Sender<WireEvent>,
    created: &mut Created,
    op: Op,
) -> Result<serde_json::Value, String> {
    let sfu = state
        .sfu
        .as_ref()
        .ok_or_else(|| "the media plane is not running".to_owned())?;
    match op {
        Op::Hello { .. } => {
            let node_id = state.media.node_id().unwrap_or_default().to_owned();
            serde_json::to_value(Hello {
                node_id,
                relay_addr: state.media.relay_advertise(),
            })
            .map_err(|e| e.to_string())
        }
        Op::Join {
            call,
            pid,
            user_id,
            gate,
            version,
            bandwidth_estimation,
        } => {
            state.media.serve(conn, &pid, &call, events.clone());
            let options = JoinOptions {
                bandwidth_estimation,
            };
            sfu.join_with(&call, &pid, &user_id, gate.into(), options);
            sfu.set_gate_versioned(&pid, gate.into(), version);
            created.pids.insert(pid, call.clone());
            created.calls.insert(call);
            Ok(serde_json::Value::Null)
        }
        Op::JoinRemote {
            call,
            pid,
            user_id,
            node_id,
            gate,
            version,
        } => {
            state.media.serve(conn, &pid, &call, events.clone());
            sfu.join_remote(&call, &pid, &user_id, &node_id, gate.into(), version);
            created.pids.insert(pid, call.clone());
            created.calls.insert(call);
            Ok(serde_json::Value::Null)
        }
        Op::SetCallNodes { call, nodes } => {
            let forget = nodes.is_empty() && !created.pids.values().any(|c| *c == call);
            let nodes = nodes
                .into_iter()
                .map(|n| RelayNode {
                    node_id: n.node_id,
                    addr: n.addr,
                })
                .collect();
            sfu.set_call_nodes(&call, nodes);
            if forget {
                // The node left the call: nothing of it stays here.
                created.calls.remove(&call);
                state
                    .media
                    .unserve(conn, &HashSet::new(), &HashSet::from([call]));
            } else {
                state.media.serve_call(conn, &call, events.clone());
                created.calls.insert(call);
            }
            Ok(serde_json::Value::Null)
        }
        Op::SetGate { pid, gate, version } => {
            Ok(sfu.set_gate_versioned(&pid, gate.into(), version).into())
        }
        Op::Publish { pid, sdp, tracks } => sfu
            .publish(&pid, sdp, tracks)
            .await
            .map(serde_json::Value::String)
            .map_err(|e| e.to_string()),
        Op::SubscriberAnswer { pid, sdp } => sfu
            .subscriber_answer(&pid, sdp)
            .await
            .map(|()| serde_json::Value::Null)
            .map_err(|e| e.to_string()),
        Op::IceCandidate {
            pid,
            target,
            candidate,
        } => {
            sfu.ice_candidate(&pid, target, candidate);
            Ok(serde_json::Value::Null)
        }
        Op::Unpublish { pid, source } => {
            sfu.unpublish(&pid, source);
            Ok(serde_json::Value::Null)
        }
        Op::SetSubscribed {
            pid,
            track_id,
            subscribed,
        } => {
            sfu.set_subscribed(&pid, &track_id, subscribed);
            Ok(serde_json::Value::Null)
        }
        Op::SetQuality {
            pid,
            track_id,
            quality,
        } => {
            sfu.set_quality(&pid, &track_id, quality);
            Ok(serde_json::Value::Null)
        }
        Op::RestartIce { pid } => {
            sfu.restart_subscriber_ice(&pid);
            Ok(serde_json::Value::Null)
        }
        Op::Leave { pid } => {
            sfu.leave(&pid);
            // The last participant of a call here: its speaker events stop being routed (the
            // home sends the call's empty node set itself).
            let gone: HashSet<CallCid> = created.remove(&pid).into_iter().collect();
            state.media.unserve(conn, &HashSet::from([pid]), &gone);
            Ok(serde_json::Value::Null)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_is_forgotten_with_its_last_participant_here() {
        let call: CallCid = "default:x".parse().unwrap();
        let other: CallCid = "default:y".parse().unwrap();
        let mut c = Created::default();
        c.pids.insert("l".into(), call.clone());
        c.pids.insert("s".into(), call.clone());
        c.pids.insert("o".into(), other.clone());
        c.calls.extend([call.clone(), other.clone()]);
        assert_eq!(c.remove("l"), None, "s is still in the call");
        assert_eq!(c.remove("s"), Some(call.clone()));
        assert!(!c.calls.contains(&call));
        assert!(c.calls.contains(&other));
        assert_eq!(c.remove("s"), None, "a second leave is a no-op");
    }

    #[test]
    fn gates_round_trip_through_the_wire() {
        for bits in 0..=SourceSet::ALL.bits() {
            for receive in [false, true] {
                let g = MediaGate {
                    send: SourceSet::ALL
                        .iter()
                        .filter(|s| bits & SourceSet::bit(*s) != 0)
                        .fold(SourceSet::EMPTY, SourceSet::with),
                    receive,
                };
                let w = WireGate::from(g);
                let back: WireGate =
                    serde_json::from_str(&serde_json::to_string(&w).unwrap()).unwrap();
                assert_eq!(MediaGate::from(back), g);
            }
        }
    }

    #[test]
    fn requests_and_frames_have_a_stable_shape() {
        let r = Request {
            id: Some(3),
            op: Op::SetGate {
                pid: "p".into(),
                gate: WireGate {
                    send: 1,
                    receive: true,
                },
                version: 9,
            },
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["op"], "set_gate");
        assert_eq!(v["id"], 3);
        assert_eq!(v["version"], 9);
        let back: Request = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
        let no_id = serde_json::to_value(Request { id: None, ..r }).unwrap();
        assert!(no_id.get("id").is_none());
        let f = Frame::Event {
            event: WireEvent::PeerFailed {
                pid: "p".into(),
                reason: "ice".into(),
            },
        };
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(v["kind"], "event");
        assert_eq!(v["event"]["type"], "peer_failed");
    }
}
