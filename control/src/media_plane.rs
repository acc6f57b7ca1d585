//! The control plane's handle on media: where each participant's media lives and how its
//! operations get there.
//!
//! One process (no `[cluster]`): every operation goes to this node's [`Sfu`], exactly as the
//! signaling and call code called it before clusters existed.
//!
//! Cluster mode: the call's home runs the session (state, gates, events) and a participant's
//! media lives on the node its socket reached (named by the relaying node, see
//! [`crate::cluster::relay`]). Per call the home keeps [`CallNodes`] (each participant's media
//! node, the gates, one version) and carries its commands out: on this node's [`Sfu`] for the
//! node itself, over the media RPC ([`crate::cluster::media_rpc`]) for the others. Per
//! participant, `publish`, `subscriber_answer`, ICE, (un)subscribe, quality and ICE restarts go
//! to the participant's media node. On a media node this type also routes the media events of
//! participants a remote home created back over that home's channel.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use dashmap::DashMap;
use greenroom_proto::{CallCid, MediaGate, PeerTarget, PublishTrack, Quality, TrackSource};
use greenroom_sfu::{JoinOptions, RelayNode, Sfu, SfuEvent};
use tokio::sync::mpsc;

use crate::cluster::call_nodes::{CallNodes, Commands, NodeCmd};
use crate::cluster::media_rpc::{self, Op, RpcClient, WireEvent, WireRelayNode};
use crate::cluster::ClusterError;
use crate::error::ApiError;
use crate::state::AppState;

/// Where one participant's media lives.
#[derive(Debug, Clone)]
enum Host {
    /// On this node's [`Sfu`].
    Local,
    /// On another node, driven over its media channel.
    Remote(Arc<RpcClient>),
}

/// The media plane as the control plane sees it (see the module docs).
#[derive(Debug)]
pub struct MediaPlane {
    sfu: Option<Sfu>,
    /// This node's id in cluster mode (resolved before the media plane started).
    node_id: Option<String>,
    /// This node's relay address as the other nodes reach it.
    relay_advertise: Option<SocketAddr>,
    /// Set when the cluster started: the home-side bookkeeping below is used from then on.
    clustered: OnceLock<()>,
    /// Home side: each joined participant's media host (absent = local).
    hosts: DashMap<String, Host>,
    /// Home side: the media membership of each call with participants.
    calls: DashMap<CallCid, CallNodes>,
    /// Home side: open media channels by node id.
    clients: DashMap<String, Arc<RpcClient>>,
    /// Serializes opening channels (one per node).
    connecting: tokio::sync::Mutex<()>,
    /// Media-node side: the channel that created each participant (its events go there).
    served: DashMap<String, (u64, mpsc::Sender<WireEvent>)>,
    /// Media-node side: the channel that drives each call here (speaker events go there).
    served_calls: DashMap<CallCid, (u64, mpsc::Sender<WireEvent>)>,
    next_conn: AtomicU64,
}

impl MediaPlane {
    /// The media plane of a node: its [`Sfu`] (if running), and in cluster mode its node id and
    /// advertised relay address.
    pub fn new(
        sfu: Option<Sfu>,
        node_id: Option<String>,
        relay_advertise: Option<SocketAddr>,
    ) -> MediaPlane {
        MediaPlane {
            sfu,
            node_id,
            relay_advertise,
            clustered: OnceLock::new(),
            hosts: DashMap::new(),
            calls: DashMap::new(),
            clients: DashMap::new(),
            connecting: tokio::sync::Mutex::new(()),
            served: DashMap::new(),
            served_calls: DashMap::new(),
            next_conn: AtomicU64::new(1),
        }
    }

    /// This node's id in cluster mode.
    pub fn node_id(&self) -> Option<&str> {
        self.node_id.as_deref()
    }

    /// This node's relay address as the other nodes reach it (`None`: no relay).
    pub fn relay_advertise(&self) -> Option<SocketAddr> {
        self.relay_advertise
    }

    /// Turns on the cluster bookkeeping (called once the cluster started).
    pub fn start_cluster(&self, node_id: &str) {
        if self.node_id.as_deref() != Some(node_id) {
            tracing::warn!(
                node_id,
                "the media plane was started without this node id: calls will not span nodes"
            );
            return;
        }
        let _ = self.clustered.set(());
    }

    /// The node id when cluster bookkeeping is on.
    fn cluster_id(&self) -> Option<&str> {
        self.clustered.get().and(self.node_id.as_deref())
    }

    fn sfu(&self) -> Result<&Sfu, ApiError> {
        self.sfu
            .as_ref()
            .ok_or_else(|| ApiError::Media("the media plane is not running".into()))
    }

    fn host(&self, pid: &str) -> Host {
        match self.hosts.get(pid) {
            Some(h) => h.clone(),
            None => Host::Local,
        }
    }

    /// Number of participants whose media this node hosts for a remote home (tests, metrics).
    pub fn served_count(&self) -> usize {
        self.served.len()
    }

    /// The media node of a participant joined here (its id; this node's own id when local;
    /// `None` outside cluster mode or for an unknown participant).
    pub fn media_node_of(&self, call: &CallCid, pid: &str) -> Option<String> {
        self.calls
            .get(call)
            .and_then(|c| c.node_of(pid).map(str::to_owned))
    }

    /// The open channel to `node_id`, opened (the node's URL from the registry) when there is
    /// none. Cluster mode only; fails with `cluster_unavailable`.
    pub async fn connect(
        &self,
        state: &Arc<AppState>,
        node_id: &str,
    ) -> Result<Arc<RpcClient>, ApiError> {
        let me = self
            .cluster_id()
            .ok_or_else(|| ClusterError::Config("cluster mode is off".into()))?;
        if let Some(c) = self.clients.get(node_id).filter(|c| c.is_alive()) {
            return Ok(c.clone());
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.clients.get(node_id).filter(|c| c.is_alive()) {
            return Ok(c.clone());
        }
        let cluster = state
            .cluster
            .get()
            .ok_or_else(|| ClusterError::Config("cluster mode is off".into()))?;
        let url = cluster
            .registry()
            .advertise_url_of(node_id)
            .await?
            .ok_or_else(|| {
                ClusterError::Unavailable(format!("media node {node_id} is not registered"))
            })?;
        let client = media_rpc::connect(state, me, node_id, &url).await?;
        self.clients.insert(node_id.to_owned(), client.clone());
        Ok(client)
    }

    /// A participant joined (called under the call's lock): its media is created on its host
    /// (`remote`, else here) and, in cluster mode, the call's nodes learn about it.
    pub fn join(
        &self,
        call: &CallCid,
        pid: &str,
        user_id: &str,
        gate: MediaGate,
        options: JoinOptions,
        remote: Option<Arc<RpcClient>>,
    ) {
        let Some(me) = self.cluster_id() else {
            if let Some(sfu) = &self.sfu {
                sfu.join_with(call, pid, user_id, gate, options);
            }
            return;
        };
        let (node, host) = match remote {
            Some(c) => (c.node_id().to_owned(), Host::Remote(c)),
            None => (me.to_owned(), Host::Local),
        };
        if let Host::Remote(c) = &host {
            self.clients
                .entry(node.clone())
                .or_insert_with(|| c.clone());
        }
        self.hosts.insert(pid.to_owned(), host);
        let cmds = self
            .calls
            .entry(call.clone())
            .or_default()
            .join(pid, user_id, &node, gate);
        self.dispatch(call, cmds, options);
    }

    /// New gates of a call's participants (called under the call's lock): to this node's
    /// [`Sfu`], and in cluster mode with a new version to every node of the call.
    pub fn set_gates(&self, call: &CallCid, gates: &[(String, MediaGate)]) {
        if gates.is_empty() {
            return;
        }
        if self.cluster_id().is_some() {
            let cmds = match self.calls.get_mut(call) {
                Some(mut c) => c.set_gates(gates),
                None => Vec::new(),
            };
            if !cmds.is_empty() {
                return self.dispatch(call, cmds, JoinOptions::default());
            }
        }
        if let Some(sfu) = &self.sfu {
            for (pid, gate) in gates {
                sfu.set_gate(pid, *gate);
            }
        }
    }

    /// A participant left its call: its media is torn down (on every node of the call).
    pub fn leave(&self, call: &CallCid, pid: &str) {
        if self.cluster_id().is_some() {
            self.hosts.remove(pid);
            let cmds = match self.calls.get_mut(call) {
                Some(mut c) => c.leave(pid),
                None => Vec::new(),
            };
            self.calls.remove_if(call, |_, c| c.is_empty());
            if !cmds.is_empty() {
                return self.dispatch(call, cmds, JoinOptions::default());
            }
        }
        if let Some(sfu) = &self.sfu {
            sfu.leave(pid);
        }
    }

    /// Carries out commands: this node's on its [`Sfu`], the others' over their channels.
    fn dispatch(&self, call: &CallCid, cmds: Commands, options: JoinOptions) {
        let me = self.node_id.as_deref().unwrap_or_default();
        for (node, cmd) in cmds {
            if node == me {
                self.apply_local(call, cmd, options);
                continue;
            }
            let Some(client) = self.clients.get(&node).map(|c| c.clone()) else {
                tracing::warn!(node, "no media channel to a node of the call");
                continue;
            };
            let op = match cmd {
                NodeCmd::Join {
                    pid,
                    user_id,
                    gate,
                    version,
                } => Op::Join {
                    call: call.clone(),
                    pid,
                    user_id,
                    gate: gate.into(),
                    version,
                    bandwidth_estimation: options.bandwidth_estimation,
                },
                NodeCmd::JoinRemote {
                    pid,
                    user_id,
                    node_id,
                    gate,
                    version,
                } => Op::JoinRemote {
                    call: call.clone(),
                    pid,
                    user_id,
                    node_id,
                    gate: gate.into(),
                    version,
                },
                NodeCmd::SetCallNodes(ids) => Op::SetCallNodes {
                    call: call.clone(),
                    nodes: self
                        .relay_nodes(&ids)
                        .into_iter()
                        .map(|n| WireRelayNode {
                            node_id: n.node_id,
                            addr: n.addr,
                        })
                        .collect(),
                },
                NodeCmd::SetGate { pid, gate, version } => Op::SetGate {
                    pid,
                    gate: gate.into(),
                    version,
                },
                NodeCmd::Leave { pid } => Op::Leave { pid },
            };
            client.send(op);
        }
    }

    /// The relay addresses of nodes (this one's advertised address, the others' from their
    /// channels' hello); a node without one is left out (it cannot relay).
    fn relay_nodes(&self, ids: &[String]) -> Vec<RelayNode> {
        ids.iter()
            .filter_map(|id| {
                let addr = if Some(id.as_str()) == self.node_id.as_deref() {
                    self.relay_advertise
                } else {
                    self.clients.get(id).and_then(|c| c.relay_addr())
                };
                match addr {
                    Some(addr) => Some(RelayNode {
                        node_id: id.clone(),
                        addr,
                    }),
                    None => {
                        tracing::warn!(node = %id, "a node of the call has no relay address");
                        None
                    }
                }
            })
            .collect()
    }

    fn apply_local(&self, call: &CallCid, cmd: NodeCmd, options: JoinOptions) {
        let Some(sfu) = &self.sfu else { return };
        match cmd {
            NodeCmd::Join {
                pid,
                user_id,
                gate,
                version,
            } => {
                sfu.join_with(call, &pid, &user_id, gate, options);
                sfu.set_gate_versioned(&pid, gate, version);
            }
            NodeCmd::JoinRemote {
                pid,
                user_id,
                node_id,
                gate,
                version,
            } => sfu.join_remote(call, &pid, &user_id, &node_id, gate, version),
            NodeCmd::SetCallNodes(ids) => sfu.set_call_nodes(call, self.relay_nodes(&ids)),
            NodeCmd::SetGate { pid, gate, version } => {
                sfu.set_gate_versioned(&pid, gate, version);
            }
            NodeCmd::Leave { pid } => sfu.leave(&pid),
        }
    }

    /// A media channel ended (the node died or the channel broke): the node's participants
    /// leave their calls, the other nodes of those calls forget them and the node.
    pub fn node_lost(&self, state: &AppState, client: &Arc<RpcClient>) {
        let node = client.node_id().to_owned();
        self.clients.remove_if(&node, |_, c| Arc::ptr_eq(c, client));
        let calls: Vec<CallCid> = self.calls.iter().map(|e| e.key().clone()).collect();
        let mut gone = Vec::new();
        for cid in calls {
            let (lost, cmds) = match self.calls.get_mut(&cid) {
                Some(mut c) => c.node_lost(&node),
                None => continue,
            };
            self.calls.remove_if(&cid, |_, c| c.is_empty());
            self.dispatch(&cid, cmds, JoinOptions::default());
            for pid in lost {
                self.hosts.remove(&pid);
                gone.push((cid.clone(), pid));
            }
        }
        for (cid, pid) in gone {
            tracing::warn!(%cid, participant = %pid, node, "media node lost: participant leaves");
            state.forget_resumable(&pid);
            let user = state
                .read_call(&cid, |c| c.participant(&pid).map(|p| p.user_id))
                .ok()
                .flatten();
            let _ = state.with_call(&cid, |c| Ok(((), c.leave(&pid, "disconnected"))));
            if let Some(user) = user {
                state.ringing.session_left(state, &cid, &user);
            }
        }
    }

    /// Fails (`media`) when the participant's media is local and no media plane runs.
    pub fn ready(&self, pid: &str) -> Result<(), ApiError> {
        match self.host(pid) {
            Host::Local => self.sfu().map(|_| ()),
            Host::Remote(_) => Ok(()),
        }
    }

    /// `publish`: the SDP answer from the participant's media node.
    pub async fn publish(
        &self,
        pid: &str,
        sdp: String,
        tracks: Vec<PublishTrack>,
    ) -> Result<String, ApiError> {
        match self.host(pid) {
            Host::Local => self
                .sfu()?
                .publish(pid, sdp, tracks)
                .await
                .map_err(|e| ApiError::Media(e.to_string())),
            Host::Remote(c) => {
                let v = c
                    .call(Op::Publish {
                        pid: pid.to_owned(),
                        sdp,
                        tracks,
                    })
                    .await?;
                match v {
                    serde_json::Value::String(answer) => Ok(answer),
                    _ => Err(ApiError::Media("the media node sent no answer".into())),
                }
            }
        }
    }

    /// `subscriber_answer`.
    pub async fn subscriber_answer(&self, pid: &str, sdp: String) -> Result<(), ApiError> {
        match self.host(pid) {
            Host::Local => self
                .sfu()?
                .subscriber_answer(pid, sdp)
                .await
                .map_err(|e| ApiError::Media(e.to_string())),
            Host::Remote(c) => c
                .call(Op::SubscriberAnswer {
                    pid: pid.to_owned(),
                    sdp,
                })
                .await
                .map(|_| ())
                .map_err(ApiError::from),
        }
    }

    /// Sends a fire-and-forget operation to a participant's host, or runs `local` here.
    fn per_participant(
        &self,
        pid: &str,
        op: impl FnOnce() -> Op,
        local: impl FnOnce(&Sfu),
    ) -> Result<(), ApiError> {
        match self.host(pid) {
            Host::Local => {
                local(self.sfu()?);
                Ok(())
            }
            Host::Remote(c) => {
                c.send(op());
                Ok(())
            }
        }
    }

    /// `ice_candidate`.
    pub fn ice_candidate(
        &self,
        pid: &str,
        target: PeerTarget,
        candidate: String,
    ) -> Result<(), ApiError> {
        let c2 = candidate.clone();
        self.per_participant(
            pid,
            || Op::IceCandidate {
                pid: pid.to_owned(),
                target,
                candidate: c2,
            },
            |s| s.ice_candidate(pid, target, candidate),
        )
    }

    /// `unpublish` (no error when the media plane is not running, as before).
    pub fn unpublish(&self, pid: &str, source: TrackSource) {
        let _ = self.per_participant(
            pid,
            || Op::Unpublish {
                pid: pid.to_owned(),
                source,
            },
            |s| s.unpublish(pid, source),
        );
    }

    /// `subscribe` / `unsubscribe`.
    pub fn set_subscribed(&self, pid: &str, track_id: &str, on: bool) -> Result<(), ApiError> {
        self.per_participant(
            pid,
            || Op::SetSubscribed {
                pid: pid.to_owned(),
                track_id: track_id.to_owned(),
                subscribed: on,
            },
            |s| s.set_subscribed(pid, track_id, on),
        )
    }

    /// `set_quality`.
    pub fn set_quality(&self, pid: &str, track_id: &str, quality: Quality) -> Result<(), ApiError> {
        self.per_participant(
            pid,
            || Op::SetQuality {
                pid: pid.to_owned(),
                track_id: track_id.to_owned(),
                quality,
            },
            |s| s.set_quality(pid, track_id, quality),
        )
    }

    /// `restart_ice`.
    pub fn restart_ice(&self, pid: &str) -> Result<(), ApiError> {
        self.per_participant(
            pid,
            || Op::RestartIce {
                pid: pid.to_owned(),
            },
            |s| s.restart_subscriber_ice(pid),
        )
    }

    // ---- media-node side ----

    /// A fresh id for a served channel.
    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Routes a participant's events (and its call's speakers) to channel `conn`.
    pub(crate) fn serve(
        &self,
        conn: u64,
        pid: &str,
        call: &CallCid,
        events: mpsc::Sender<WireEvent>,
    ) {
        self.served.insert(pid.to_owned(), (conn, events.clone()));
        self.serve_call(conn, call, events);
    }

    /// Routes a call's speaker events to channel `conn`.
    pub(crate) fn serve_call(&self, conn: u64, call: &CallCid, events: mpsc::Sender<WireEvent>) {
        self.served_calls.insert(call.clone(), (conn, events));
    }

    /// Forgets what channel `conn` created (entries another channel took over stay).
    pub(crate) fn unserve(&self, conn: u64, pids: &HashSet<String>, calls: &HashSet<CallCid>) {
        for pid in pids {
            self.served.remove_if(pid, |_, (c, _)| *c == conn);
        }
        for call in calls {
            self.served_calls.remove_if(call, |_, (c, _)| *c == conn);
        }
    }

    /// A media event of this node's [`Sfu`]: sent to the remote home that created its
    /// participant (returns `None`), or handed back to be handled here.
    pub fn route_event(&self, ev: SfuEvent) -> Option<SfuEvent> {
        if self.served.is_empty() && self.served_calls.is_empty() {
            return Some(ev);
        }
        let (target, wire) = match ev {
            SfuEvent::SubscriberOffer {
                participant_id,
                sdp,
                tracks,
            } => match self.served.get(&participant_id).map(|e| e.1.clone()) {
                Some(tx) => (
                    tx,
                    WireEvent::SubscriberOffer {
                        pid: participant_id,
                        sdp,
                        tracks,
                    },
                ),
                None => {
                    return Some(SfuEvent::SubscriberOffer {
                        participant_id,
                        sdp,
                        tracks,
                    })
                }
            },
            SfuEvent::PeerFailed {
                participant_id,
                reason,
            } => match self.served.get(&participant_id).map(|e| e.1.clone()) {
                Some(tx) => (
                    tx,
                    WireEvent::PeerFailed {
                        pid: participant_id,
                        reason,
                    },
                ),
                None => {
                    return Some(SfuEvent::PeerFailed {
                        participant_id,
                        reason,
                    })
                }
            },
            SfuEvent::Speakers { call, speakers } => {
                match self.served_calls.get(&call).map(|e| e.1.clone()) {
                    Some(tx) => (tx, WireEvent::Speakers { call, speakers }),
                    None => return Some(SfuEvent::Speakers { call, speakers }),
                }
            }
        };
        if tx_full(&target, wire) {
            tracing::warn!("media channel event queue full: event dropped");
        }
        None
    }
}

/// Queues an event; true when it was dropped because the queue is full.
fn tx_full(tx: &mpsc::Sender<WireEvent>, ev: WireEvent) -> bool {
    matches!(tx.try_send(ev), Err(mpsc::error::TrySendError::Full(_)))
}
