//! Greenroom's media plane: str0m 0.25 in RTP mode, ICE-lite, DTLS-SRTP, every peer on one UDP
//! port, and a gated Producer -> Router -> Consumer fan-out.
//!
//! # Engine structure
//!
//! [`Sfu::start`] binds the UDP socket and spawns N engine *shards* ([`default_shards`] by
//! default, [`SfuOptions::shards`]) and, with more than one, one receive thread (a lone shard
//! reads the socket itself: [`io::inbox`]). A shard is a dedicated thread that owns its
//! peers' str0m `Rtc`s, producers and consumers; nothing in a shard is shared or locked except
//! each participant's [`forward::GateCell`] (one atomic byte written by [`Sfu::set_gate`], read
//! by the shard per packet), so a gate change applies to the very next packet the shard handles
//! after `set_gate` returns.
//!
//! * Calls are pinned to shards: the first participant of a call places it on the shard with the
//!   fewest participants, and every later participant of that call joins the same shard, so a
//!   call's whole fan-out (producer -> consumers) runs on one thread with no cross-thread hop.
//!   Different calls run in parallel on different cores.
//! * One port for everything: the receive thread (see `demux`) reads the socket and routes each
//!   datagram to its shard: STUN by the shard tag in the server's ICE ufrag (every peer's ufrag
//!   starts with it), everything else by the source address learnt from that STUN. Shards send
//!   on their own clones of the socket.
//! * Commands from the control plane and datagrams arrive on the same channel per shard, so a
//!   shard sleeps in one `recv_timeout` until a datagram, a command or its next timer. Replies
//!   (SDP answers) come back on oneshot channels.
//! * Inside a shard (see `routes`), STUN finds its peer by the server ufrag it names (one map
//!   lookup, then str0m's integrity check), and DTLS/SRTP/SRTCP only by a source address that
//!   peer validated with an accepted binding request; everything else is dropped and counted.
//!   No datagram scans the shard's peers.
//! * Every shard queue is bounded: the receive thread drops (and counts) datagrams for a full
//!   queue instead of blocking or growing.
//! * Only the peer that got input is driven (`handle_input` + `poll_output` until `Timeout`),
//!   plus the subscribers that packets were written to; each peer's next timeout lives in a
//!   min-heap (lazy deletion), so idle peers cost nothing.
//! * Each `handle_input`/`poll_output` run and each SDP operation is wrapped in `catch_unwind`:
//!   a panic inside str0m ends that peer only and emits [`SfuEvent::PeerFailed`]. A panic in a
//!   shard's own loop ends that shard only: its participants get [`SfuEvent::PeerFailed`], it is
//!   marked dead ([`Sfu::health`]), and its calls move to live shards at their next join.
//! * A 250 ms housekeeping tick per shard checks ICE/DTLS deadlines, publishes active speakers
//!   (debounced 500 ms) and re-chooses simulcast layers from the bandwidth estimates.
//!
//! Per participant there is one publisher `Rtc` (client offers) and one subscriber `Rtc`
//! (server offers every other participant's producers in the same call as SendOnly media).
//!
//! A call can span nodes: with [`SfuOptions::relay`] on, each local track of a call is relayed
//! once to every other node carrying it ([`Sfu::set_call_nodes`]), and tracks of participants
//! on other nodes ([`Sfu::join_remote`]) are fanned out here like local ones; see `relay`.
//!
//! A single call larger than one core can forward stays on one shard: splitting one call's
//! consumers over shards (a producer piped to consumer shards) is not done.

mod demux;
mod dtls;
mod engine;
pub mod forward;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod ingress;
pub mod io;
mod lazy_srtp;
mod media;
mod metrics;
mod offer_plan;
mod relay;
mod retransmit;
mod routes;
mod rtp_out;
mod sdp;
mod socket;
mod speakers;
pub mod srtp;
mod tcp;
mod transport;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use greenroom_proto::{
    CallCid, MediaGate, PeerTarget, PublishTrack, Quality, SubscribedTrack, TrackSource,
};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use crate::demux::DemuxCounters;
pub use crate::dtls::{stats as dtls_stats, DtlsStats, RELEASE_GRACE as DTLS_RELEASE_GRACE};
pub use crate::engine::{rtc_config, subscriber_config};
use crate::engine::{Cmd, RelayCmd, ShardMsg, ShardSetup};
use crate::forward::GateCell;
use crate::io::batch::SendOutcome;
pub use crate::metrics::STATS_INTERVAL;
use crate::metrics::{SfuCounters, UdpFigures};
#[cfg(feature = "fuzzing")]
pub use crate::relay::bench as relay_bench;
use crate::relay::GateVersion;
pub use crate::relay::{RelayNode, RelayOptions, RelayStats};
pub use crate::tcp::{TcpCounters, TcpLimits};
use crate::transport::{BatchTransport, SendCounters};

/// Media plane configuration.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// UDP address to bind (all peers share this one port).
    pub bind: SocketAddr,
    /// IP advertised in the host candidate.
    pub advertise_ip: IpAddr,
}

/// Engine tuning; [`Sfu::start`] uses the defaults.
#[derive(Debug, Clone)]
pub struct SfuOptions {
    /// ICE + DTLS must complete within this time after a peer's SDP exchange, or the peer is
    /// dropped with [`SfuEvent::PeerFailed`]. Default 20 s.
    pub connect_timeout: std::time::Duration,
    /// Engine shards (threads that forward media); 0 = [`default_shards`] of the available
    /// cores (one on a machine of one or two cores, else one per core).
    pub shards: usize,
    /// A fan-out that leaves at least this many subscriber peers to drive runs them on a
    /// worker pool over every core, so one large call is not limited to its shard's thread;
    /// 0 = never. Default 64. It costs some CPU per packet (pool hand-off and wake-ups) in
    /// exchange for a call's capacity, so it engages only while the shard's thread is loaded
    /// (see [`SfuOptions::parallel_busy`]); see docs/BENCHMARKS.md.
    pub parallel_fanout_min: usize,
    /// The share of wall time (0..1) a shard's thread must have been busy over the last
    /// housekeeping tick (250 ms) for [`SfuOptions::parallel_fanout_min`] to apply; 0 = always.
    /// Default 0.5. The server sets it from its configuration (`rtc.parallel_busy`).
    pub parallel_busy: f64,
    /// SO_RCVBUF and SO_SNDBUF requested for the media socket, in bytes; 0 = the system
    /// default. Default 4 MiB. The kernel caps it (Linux: `net.core.rmem_max`/`wmem_max`); the
    /// effective sizes are logged and exported as `greenroom_udp_socket_buffer_bytes`.
    pub socket_buffer_bytes: usize,
    /// ICE over TCP (RFC 6544 passive candidates, RFC 4571 framing): the TCP port to listen on,
    /// on the UDP socket's IP; `Some(0)` picks a free port; `None` (the default here) turns it
    /// off. The server's configuration (`rtc.ice_tcp_port`) defaults to the UDP port's number.
    pub ice_tcp_port: Option<u16>,
    /// Limits of the ICE-TCP listener.
    pub ice_tcp_limits: TcpLimits,
    /// Most datagrams a shard hands to the kernel in one `sendmmsg` (1..=64; 1 = one system
    /// call per datagram, as before batching). Default 64. The server sets it from its
    /// configuration (`rtc.send_batch`); the library reads no environment.
    pub send_batch: usize,
    /// Node-to-node media relay (a call spanning nodes); `None` (the default): off, no socket.
    pub relay: Option<RelayOptions>,
    /// The lean audio path: forwarded audio to a connected subscriber is built, SRTP-protected
    /// and sent by the engine itself instead of one str0m drive per packet per subscriber
    /// (docs/ARCHITECTURE.md, "Lean audio path"). Default true. The server sets it from its
    /// configuration (`rtc.lean_audio`).
    pub lean_audio: bool,
    /// The lean video path: forwarded video of a single-layer source (no simulcast) is sent
    /// like lean audio, with keyframe requests and RTX retransmits driven by the engine from
    /// the subscriber's RTCP (docs/ARCHITECTURE.md, "Lean video path"). Default true. The
    /// server sets it from its configuration (`rtc.lean_video`).
    pub lean_video: bool,
    /// The lean publisher ingress: a publisher's RTP (single-layer sources, all of its
    /// streams or none) is opened, read and forwarded by the engine itself, which also writes
    /// the receive feedback (receiver reports, NACKs, transport-wide feedback) instead of
    /// one str0m drive per packet (docs/ARCHITECTURE.md, "Publisher ingress"). Default true.
    /// The server sets it from its configuration (`rtc.lean_ingress`).
    pub lean_ingress: bool,
}

impl Default for SfuOptions {
    fn default() -> Self {
        SfuOptions {
            connect_timeout: std::time::Duration::from_secs(20),
            shards: 0,
            parallel_fanout_min: 64,
            parallel_busy: 0.5,
            socket_buffer_bytes: 4 << 20,
            ice_tcp_port: None,
            ice_tcp_limits: TcpLimits::default(),
            send_batch: io::batch::MAX_BATCH,
            relay: None,
            lean_audio: true,
            lean_video: true,
            lean_ingress: true,
        }
    }
}

/// The media plane's health, as `/healthz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MediaHealth {
    /// `ok`: every shard runs; `degraded`: some died (their calls move to live shards at the
    /// next join); `down`: none runs.
    pub status: MediaStatus,
    /// Engine shards started.
    pub shards: usize,
    /// Engine shards still running.
    pub alive: usize,
}

/// The media plane's overall state (see [`MediaHealth`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaStatus {
    /// Every shard runs.
    Ok,
    /// Some shards died.
    Degraded,
    /// No shard runs.
    Down,
}

impl SfuOptions {
    /// The number of shards these options start: `shards`, or [`default_shards`] of the
    /// available cores when 0.
    pub fn shard_count(&self) -> usize {
        match self.shards {
            0 => default_shards(std::thread::available_parallelism().map_or(1, |n| n.get())),
            n => n,
        }
    }
}

/// The shard count for a machine of `cores` cores when none is configured: ONE up to two
/// cores, else one per core. A lone shard reads the UDP socket itself (no receive thread,
/// one wake-up per datagram: [`io::inbox`]) and its large fan-outs still spread over every
/// core ([`SfuOptions::parallel_fanout_min`]); a second shard on two cores buys a receive
/// thread competing for them, and measured more CPU per packet and a higher p99 in the
/// 1 x 600 audio room (docs/BENCHMARKS.md "The lone shard, finished"). Many small concurrent
/// calls on a two-core machine share the one shard's thread: configure 2 there.
pub fn default_shards(cores: usize) -> usize {
    if cores <= 2 {
        1
    } else {
        cores
    }
}

/// Per-participant media options given at [`Sfu::join_with`].
#[derive(Debug, Clone, Copy)]
pub struct JoinOptions {
    /// Send-side bandwidth estimation (TWCC) on the participant's subscriber peer, so simulcast
    /// layers step down when its link cannot carry them. It costs a str0m timer cycle every
    /// ~25 ms per subscriber plus pacing; calls that never carry video (audio rooms) turn it
    /// off. Default on.
    pub bandwidth_estimation: bool,
}

impl Default for JoinOptions {
    fn default() -> Self {
        JoinOptions {
            bandwidth_estimation: true,
        }
    }
}

/// Errors returned to the control plane.
#[derive(Debug, thiserror::Error)]
pub enum SfuError {
    /// Binding the UDP socket failed.
    #[error("cannot bind UDP {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// Binding the ICE-TCP listener failed.
    #[error("cannot bind ICE-TCP {0}: {1}")]
    BindTcp(SocketAddr, std::io::Error),
    /// The SDP could not be parsed or negotiated.
    #[error("bad SDP: {0}")]
    Sdp(String),
    /// A track listed in `publish` sits on an m-line the server rejected (port 0 in the
    /// answer: none of its codecs is forwarded, or the client offered it stopped).
    #[error("track on mid {0} rejected by the server (no codec it forwards)")]
    TrackRejected(String),
    /// No such participant in the media plane.
    #[error("unknown participant {0}")]
    UnknownParticipant(String),
    /// The media engine stopped.
    #[error("media engine stopped")]
    Stopped,
}

/// Something the media plane tells the control plane.
#[derive(Debug, Clone)]
pub enum SfuEvent {
    /// Send this subscriber offer to the participant (`subscriber_offer`).
    SubscriberOffer {
        /// The subscriber.
        participant_id: String,
        /// SDP offer.
        sdp: String,
        /// Every mid and its track.
        tracks: Vec<SubscribedTrack>,
    },
    /// Loudest participants of a call changed.
    Speakers {
        /// The call.
        call: CallCid,
        /// (participant id, level 0..1), loudest first.
        speakers: Vec<(String, f32)>,
    },
    /// A participant's media failed (ICE/DTLS timeout or engine panic); the peer was dropped.
    PeerFailed {
        /// The participant.
        participant_id: String,
        /// Why.
        reason: String,
    },
}

/// Handle to the running media plane; cheap to clone.
#[derive(Clone)]
pub struct Sfu {
    inner: Arc<Inner>,
}

struct Shard {
    tx: io::inbox::ShardTx,
    counters: Arc<SfuCounters>,
    /// What the shard's transport sent and dropped.
    egress: Arc<SendCounters>,
    /// False once the shard's thread ended (it died, or the plane stopped).
    alive: Arc<AtomicBool>,
}

/// Where participants and calls live.
#[derive(Default)]
struct Registry {
    parts: HashMap<String, PartEntry>,
    calls: HashMap<CallCid, CallEntry>,
    /// Participants per shard.
    load: Vec<usize>,
}

struct PartEntry {
    gate: Arc<GateCell>,
    /// The gate's version ([`Sfu::set_gate_versioned`]) and revoke floors.
    version: Arc<GateVersion>,
    shard: usize,
    call: CallCid,
}

struct CallEntry {
    shard: usize,
    members: usize,
}

impl Registry {
    /// Forgets a participant; returns its shard.
    fn remove(&mut self, pid: &str) -> Option<usize> {
        let e = self.parts.remove(pid)?;
        if let Some(l) = self.load.get_mut(e.shard) {
            *l = l.saturating_sub(1);
        }
        if let Some(c) = self.calls.get_mut(&e.call) {
            c.members = c.members.saturating_sub(1);
            if c.members == 0 {
                self.calls.remove(&e.call);
            }
        }
        Some(e.shard)
    }

    /// The call's shard, or for a new call (or one whose shard died) the least loaded live one
    /// (lowest index on ties; shard 0 when none lives, where commands then fail).
    fn place(&mut self, call: &CallCid, alive: &[bool]) -> usize {
        let live = |s: usize| alive.get(s).copied().unwrap_or(false);
        if let Some(c) = self.calls.get_mut(call) {
            if live(c.shard) {
                c.members += 1;
                return c.shard;
            }
        }
        let shard = (0..self.load.len())
            .filter(|i| live(*i))
            .min_by_key(|i| (self.load[*i], *i))
            .unwrap_or(0);
        let members = self.calls.get(call).map_or(0, |c| c.members) + 1;
        self.calls
            .insert(call.clone(), CallEntry { shard, members });
        shard
    }
}

struct Inner {
    local_addr: SocketAddr,
    /// Effective (SO_RCVBUF, SO_SNDBUF).
    buffers: (usize, usize),
    /// The socket's inode, to read the kernel's drops for it.
    inode: Option<u64>,
    shards: Vec<Shard>,
    registry: Mutex<Registry>,
    demux: Arc<DemuxCounters>,
    /// The ICE-TCP listener's address and connections (when on).
    tcp: Option<(SocketAddr, tcp::Writers)>,
    /// The node-to-node relay (when on).
    relay: Option<RelayHandle>,
    stop: Arc<AtomicBool>,
}

/// The handle's side of the node-to-node relay.
struct RelayHandle {
    addr: SocketAddr,
    node_id: String,
    secret: [u8; 32],
    routes: Arc<relay::Routes>,
    counters: Arc<relay::RelayCounters>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        for s in &self.shards {
            let _ = s.tx.send(ShardMsg::Cmd(Cmd::Stop));
        }
    }
}

impl std::fmt::Debug for Sfu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sfu")
            .field("local_addr", &self.inner.local_addr)
            .field("shards", &self.inner.shards.len())
            .finish_non_exhaustive()
    }
}

impl Sfu {
    /// Binds the UDP port, starts the engine, returns the handle and the event stream.
    pub async fn start(
        cfg: SfuConfig,
    ) -> Result<(Sfu, mpsc::UnboundedReceiver<SfuEvent>), SfuError> {
        Sfu::start_with(cfg, SfuOptions::default()).await
    }

    /// [`Sfu::start`] with explicit engine options.
    pub async fn start_with(
        cfg: SfuConfig,
        mut opts: SfuOptions,
    ) -> Result<(Sfu, mpsc::UnboundedReceiver<SfuEvent>), SfuError> {
        let bind_err = |e| SfuError::Bind(cfg.bind, e);
        let socket = UdpSocket::bind(cfg.bind).map_err(bind_err)?;
        let local_addr = socket.local_addr().map_err(bind_err)?;
        // ICE-TCP: bind first, so the shards learn the actual port for their candidates.
        let tcp = match opts.ice_tcp_port {
            Some(port) => {
                let addr = SocketAddr::new(local_addr.ip(), port);
                let listener = tcp::bind(addr)
                    .await
                    .map_err(|e| SfuError::BindTcp(addr, e))?;
                let bound = listener
                    .local_addr()
                    .map_err(|e| SfuError::BindTcp(addr, e))?;
                opts.ice_tcp_port = Some(bound.port());
                Some((listener, bound, tcp::Writers::default()))
            }
            None => None,
        };
        let buffers = socket::size_buffers(&socket, opts.socket_buffer_bytes);
        let inode = socket::inode(&socket);
        let advertised = SocketAddr::new(cfg.advertise_ip, local_addr.port());
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let n = opts.shard_count();
        let mut shards = Vec::with_capacity(n);
        let untagged = demux::UfragMap::default();
        let demux = Arc::new(DemuxCounters::default());
        // One shard reads the socket itself (one wake-up per datagram); several get their
        // datagrams from the receive thread (`demux`).
        let lone = n == 1;
        for shard in 0..n {
            let (tx, rx) = std::sync::mpsc::sync_channel(demux::SHARD_QUEUE);
            let (tx, input) = if lone {
                let bell = io::inbox::Bell::new().map_err(bind_err)?;
                let input = io::inbox::InboxSetup::with_socket(
                    rx,
                    socket.try_clone().map_err(bind_err)?,
                    bell.clone(),
                    untagged.clone(),
                    demux.clone(),
                );
                (io::inbox::ShardTx::new(tx, Some(bell)), input)
            } else {
                (
                    io::inbox::ShardTx::new(tx, None),
                    io::inbox::InboxSetup::queue(rx),
                )
            };
            let counters = Arc::new(SfuCounters::default());
            let egress = Arc::new(SendCounters::default());
            let alive = Arc::new(AtomicBool::new(true));
            engine::spawn(
                ShardSetup {
                    shard,
                    opts: opts.clone(),
                    socket: {
                        let udp = BatchTransport::new(
                            socket.try_clone().map_err(bind_err)?,
                            opts.send_batch,
                            egress.clone(),
                        );
                        match &tcp {
                            Some((_, _, writers)) => Box::new(tcp::MediaTransport {
                                udp,
                                tcp: writers.clone(),
                            }),
                            None => Box::new(udp),
                        }
                    },
                    advertised,
                    input,
                    events: ev_tx.clone(),
                    counters: counters.clone(),
                    untagged: untagged.clone(),
                },
                alive.clone(),
            )
            .map_err(bind_err)?;
            shards.push(Shard {
                tx,
                counters,
                egress,
                alive,
            });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let tcp = tcp.map(|(listener, bound, writers)| {
            tcp::spawn(
                listener,
                shards.iter().map(|s| s.tx.clone()).collect(),
                untagged.clone(),
                writers.clone(),
                opts.ice_tcp_limits,
                demux.clone(),
                stop.clone(),
            );
            (bound, writers)
        });
        if !lone {
            demux::spawn(
                socket,
                shards.iter().map(|s| s.tx.clone()).collect(),
                untagged,
                stop.clone(),
                demux.clone(),
            )
            .map_err(bind_err)?;
        }
        let relay = match &opts.relay {
            Some(r) => Some(relay_start(r, &shards, &stop)?),
            None => None,
        };
        let registry = Registry {
            load: vec![0; n],
            ..Registry::default()
        };
        let inner = Inner {
            local_addr,
            buffers,
            inode,
            shards,
            registry: Mutex::new(registry),
            demux,
            tcp,
            relay,
            stop,
        };
        Ok((
            Sfu {
                inner: Arc::new(inner),
            },
            ev_rx,
        ))
    }

    /// Sends a command to a shard. Commands are never dropped: on a full queue this waits
    /// for the shard to take one (it drains its queue continuously); a dead shard fails at once.
    fn send_to_shard(&self, shard: usize, cmd: Cmd) -> Result<(), SfuError> {
        self.inner
            .shards
            .get(shard)
            .ok_or(SfuError::Stopped)?
            .tx
            .send(ShardMsg::Cmd(cmd))
            .map_err(|_| SfuError::Stopped)
    }

    /// Sends a command to the shard of a participant (shard 0 for unknown ones, which answers
    /// with [`SfuError::UnknownParticipant`] where a reply is expected).
    fn send(&self, participant_id: &str, cmd: Cmd) -> Result<(), SfuError> {
        let shard = self.shard_of(participant_id).unwrap_or(0);
        self.send_to_shard(shard, cmd)
    }

    /// The shard a participant's media runs on (`None`: unknown participant).
    pub fn shard_of(&self, participant_id: &str) -> Option<usize> {
        self.inner
            .registry
            .lock()
            .parts
            .get(participant_id)
            .map(|e| e.shard)
    }

    /// The number of engine shards.
    pub fn shard_count(&self) -> usize {
        self.inner.shards.len()
    }

    /// Which engine shards still run.
    fn alive(&self) -> Vec<bool> {
        self.inner
            .shards
            .iter()
            .map(|s| s.alive.load(Relaxed))
            .collect()
    }

    /// The media plane's health: how many engine shards run (for `/healthz`).
    pub fn health(&self) -> MediaHealth {
        let shards = self.inner.shards.len();
        let alive = self.alive().into_iter().filter(|a| *a).count();
        let status = if alive == shards {
            MediaStatus::Ok
        } else if alive > 0 {
            MediaStatus::Degraded
        } else {
            MediaStatus::Down
        };
        MediaHealth {
            status,
            shards,
            alive,
        }
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The ICE-TCP listener's bound address (`None`: ICE-TCP is off).
    pub fn ice_tcp_addr(&self) -> Option<SocketAddr> {
        self.inner.tcp.as_ref().map(|(a, _)| *a)
    }

    /// The ICE-TCP listener's counters (`None`: ICE-TCP is off).
    pub fn ice_tcp_counters(&self) -> Option<Arc<TcpCounters>> {
        self.inner.tcp.as_ref().map(|(_, w)| w.counters().clone())
    }

    /// Registers a joined participant with its gate.
    /// A participant that joins again (same id) is moved: its old media is torn down first.
    pub fn join(&self, call: &CallCid, participant_id: &str, user_id: &str, gate: MediaGate) {
        self.join_with(call, participant_id, user_id, gate, JoinOptions::default());
    }

    /// [`Sfu::join`] with explicit options.
    pub fn join_with(
        &self,
        call: &CallCid,
        participant_id: &str,
        user_id: &str,
        gate: MediaGate,
        options: JoinOptions,
    ) {
        let (cell, version, shard) = self.register(call, participant_id, gate, 0);
        let _ = self.send_to_shard(
            shard,
            Cmd::Join {
                call: call.clone(),
                pid: participant_id.to_owned(),
                user_id: user_id.to_owned(),
                gate: cell,
                bwe: options.bandwidth_estimation,
            },
        );
        if self.inner.relay.is_some() {
            let _ = self.send_to_shard(
                shard,
                Cmd::Relay(RelayCmd::Version {
                    pid: participant_id.to_owned(),
                    version,
                }),
            );
        }
    }

    /// Places a (re)joining participant, local or remote, in the registry (its old media is
    /// torn down first when it moves shards); returns its gate, gate version and shard.
    fn register(
        &self,
        call: &CallCid,
        participant_id: &str,
        gate: MediaGate,
        version: u64,
    ) -> (Arc<GateCell>, Arc<GateVersion>, usize) {
        let cell = Arc::new(GateCell::new(gate));
        let version = Arc::new(GateVersion::new(version));
        let alive = self.alive();
        let (old, shard) = {
            let mut reg = self.inner.registry.lock();
            let old = reg.remove(participant_id);
            let shard = reg.place(call, &alive);
            if let Some(l) = reg.load.get_mut(shard) {
                *l += 1;
            }
            reg.parts.insert(
                participant_id.to_owned(),
                PartEntry {
                    gate: cell.clone(),
                    version: version.clone(),
                    shard,
                    call: call.clone(),
                },
            );
            (old, shard)
        };
        if let Some(old) = old.filter(|o| *o != shard) {
            let _ = self.send_to_shard(
                old,
                Cmd::Leave {
                    pid: participant_id.to_owned(),
                },
            );
        }
        if let Some(r) = &self.inner.relay {
            r.routes.set_shard(relay::wire::call_key(call), shard);
        }
        (cell, version, shard)
    }

    /// Applies a publisher offer (first publish or renegotiation with the full track list);
    /// returns the answer. Sources outside the gate's `send` set are registered but forward
    /// nothing until the gate lets them.
    pub async fn publish(
        &self,
        participant_id: &str,
        sdp: String,
        tracks: Vec<PublishTrack>,
    ) -> Result<String, SfuError> {
        let (tx, rx) = oneshot::channel();
        self.send(
            participant_id,
            Cmd::Publish {
                pid: participant_id.to_owned(),
                sdp,
                tracks,
                reply: tx,
            },
        )?;
        rx.await.map_err(|_| SfuError::Stopped)?
    }

    /// Applies a subscriber answer.
    pub async fn subscriber_answer(
        &self,
        participant_id: &str,
        sdp: String,
    ) -> Result<(), SfuError> {
        let (tx, rx) = oneshot::channel();
        self.send(
            participant_id,
            Cmd::SubscriberAnswer {
                pid: participant_id.to_owned(),
                sdp,
                reply: tx,
            },
        )?;
        rx.await.map_err(|_| SfuError::Stopped)?
    }

    /// Adds a trickled remote candidate.
    pub fn ice_candidate(&self, participant_id: &str, target: PeerTarget, candidate: String) {
        let _ = self.send(
            participant_id,
            Cmd::IceCandidate {
                pid: participant_id.to_owned(),
                target,
                candidate,
            },
        );
    }

    /// Stops and removes a published source.
    pub fn unpublish(&self, participant_id: &str, source: TrackSource) {
        let _ = self.send(
            participant_id,
            Cmd::Unpublish {
                pid: participant_id.to_owned(),
                source,
            },
        );
    }

    /// Replaces a participant's gate; takes effect on the next packet.
    pub fn set_gate(&self, participant_id: &str, gate: MediaGate) {
        if let Some(e) = self.inner.registry.lock().parts.get(participant_id) {
            e.gate.store(gate);
        }
    }

    /// The gate last set for a participant (`None`: unknown participant).
    pub fn gate(&self, participant_id: &str) -> Option<MediaGate> {
        self.inner
            .registry
            .lock()
            .parts
            .get(participant_id)
            .map(|e| e.gate.load())
    }

    /// Subscribes or unsubscribes a participant to a track (`<participant_id>:<source>`);
    /// unsubscribing pauses the consumer without renegotiation.
    pub fn set_subscribed(&self, participant_id: &str, track_id: &str, subscribed: bool) {
        let _ = self.send(
            participant_id,
            Cmd::SetSubscribed {
                pid: participant_id.to_owned(),
                track_id: track_id.to_owned(),
                subscribed,
            },
        );
    }

    /// Sets the preferred simulcast quality of a subscribed track.
    pub fn set_quality(&self, participant_id: &str, track_id: &str, quality: Quality) {
        let _ = self.send(
            participant_id,
            Cmd::SetQuality {
                pid: participant_id.to_owned(),
                track_id: track_id.to_owned(),
                quality,
            },
        );
    }

    /// The media plane's counters in the Prometheus text format (appended to `/metrics`):
    ///
    /// * `greenroom_packets_received_total{kind}`, `greenroom_bytes_received_total{kind}`:
    ///   RTP from publishers (`kind` = `audio` | `video`; bytes are RTP payload bytes), gated
    ///   packets included.
    /// * `greenroom_packets_forwarded_total{kind}`, `greenroom_bytes_forwarded_total{kind}`:
    ///   written to subscribers, one per packet per subscriber.
    /// * `greenroom_packets_dropped_total{capability}`: dropped by the publisher's gate, by the
    ///   capability the source needs (`send-audio` | `send-video` | `screenshare`).
    /// * `greenroom_consumer_packets_dropped_total{reason}`: not written to one subscriber
    ///   (`receive` off, `paused` = unsubscribed, `other` = too old or no matching codec).
    /// * `greenroom_nacks_total{direction}`: NACKs received from subscribers (`egress`) and sent
    ///   to publishers (`ingress`), from str0m's stats every [`STATS_INTERVAL`].
    /// * `greenroom_plis_total`: keyframe requests (PLI/FIR) sent to publishers.
    /// * gauges `greenroom_producers{kind}`, `greenroom_consumers{kind}`, `greenroom_peers`,
    ///   and `greenroom_shard_peers{shard}` (the balance over the engine shards).
    /// * `greenroom_engine_drives_total{cause}`: str0m drive cycles (`input` = a datagram,
    ///   `output` = packets written to the peer, `timer` = its timeout fell due).
    /// * `greenroom_engine_parallel_fanouts_total`: fan-outs with at least
    ///   [`SfuOptions::parallel_fanout_min`] subscriber peers to drive, driven on the worker
    ///   pool (every core) instead of the shard's thread.
    /// * `greenroom_engine_absorbed_total`: batches a lone shard read just before flushing its
    ///   sends (they joined that pass's `sendmmsg`; see `io::inbox`).
    /// * `greenroom_dtls_sessions` (gauge): OpenSSL DTLS sessions held, process-wide;
    ///   `greenroom_dtls_released_total`: released after their handshake
    ///   ([`DTLS_RELEASE_GRACE`]); `greenroom_dtls_late_records_total`: DTLS records ignored
    ///   after their session's release.
    /// * `greenroom_lean_packets_total`: audio packets sent on the lean path (built and
    ///   SRTP-protected by the engine, no drive; also in `greenroom_packets_forwarded_total`),
    ///   `greenroom_lean_sender_reports_total`: the sender reports sent for lean streams.
    /// * `greenroom_lean_video_packets_total`: video packets sent on the lean path;
    ///   `greenroom_lean_retransmits_total`: resent on RTX after a NACK;
    ///   `greenroom_lean_nacks_ignored_total`: NACKed and not resent (no RTX, not cached, over
    ///   budget); `greenroom_lean_keyframe_requests_total`: PLI/FIR read by the engine;
    ///   `greenroom_lean_rtcp_only_total`: SRTCP of subscribers whose every m-line is lean,
    ///   read by the engine alone (no str0m drive).
    /// * `greenroom_lean_ingress_packets_total`: publishers' RTP packets opened and forwarded
    ///   by the engine (no str0m drive); `greenroom_lean_ingress_feedback_total`: feedback
    ///   packets (RR, NACK, TWCC, PLI/FIR) the engine sent to those publishers.
    /// * `greenroom_lean_receiver_reports_total`: report blocks about lean audio and video
    ///   streams read from the subscribers' RTCP (their round trip, loss and jitter feed the
    ///   `egress` histograms below); `greenroom_lean_packets_lost_total`: packets of lean
    ///   streams the subscribers report lost.
    /// * `greenroom_udp_unrouted_total`: datagrams dropped before reaching a peer (no shard or
    ///   peer for their ufrag or ICE-validated source address, a dead shard, or a STUN
    ///   integrity failure); `greenroom_udp_queue_dropped_total`: dropped on a full shard queue.
    /// * `greenroom_udp_socket_buffer_bytes{direction}`: effective socket buffers;
    ///   `greenroom_udp_receive_drops_total`: the kernel's drops on the socket (Linux).
    /// * with ICE-TCP on: `greenroom_ice_tcp_{accepted,refused,bad_frames,idle_closed,
    ///   frames_in,send_dropped}_total` and the gauge `greenroom_ice_tcp_connections` (see
    ///   [`TcpCounters`]).
    /// * `greenroom_udp_sent_datagrams_total`: datagrams the kernel accepted;
    ///   `greenroom_udp_send_dropped_total{reason="would_block"|"error"}`: dropped on a full
    ///   send buffer or refused; `greenroom_udp_send_syscalls_total` (`sendmmsg`/`sendmsg`
    ///   calls) and `greenroom_udp_gso_datagrams_total` (sent inside UDP GSO sends).
    /// * with the relay on (a call spanning nodes): `greenroom_relay_packets_total{direction}`,
    ///   `greenroom_relay_bytes_total{direction}`, `greenroom_relay_encoded_total`,
    ///   `greenroom_relay_control_total{kind,direction}` and
    ///   `greenroom_relay_dropped_total{reason}` (see [`RelayStats`]).
    /// * histograms `greenroom_rtt_seconds`, `greenroom_loss_ratio`, `greenroom_jitter_seconds`
    ///   `{direction="ingress"|"egress"}`, one sample per stream per [`STATS_INTERVAL`].
    ///
    /// Retransmissions are not counted: str0m 0.25 keeps its resent-packet count private.
    pub fn metrics_text(&self) -> String {
        let shards: Vec<&SfuCounters> = self.inner.shards.iter().map(|s| &*s.counters).collect();
        let udp = UdpFigures {
            unrouted: self.inner.demux.unrouted.load(Relaxed),
            queue_dropped: self.inner.demux.queue_dropped.load(Relaxed),
            buffers: self.inner.buffers,
            kernel_drops: self.inner.inode.and_then(socket::kernel_drops),
            egress: self
                .inner
                .shards
                .iter()
                .fold(SendOutcome::default(), |sum, s| s.egress.add_to(sum)),
        };
        let mut text = metrics::render(&shards, udp);
        if let Some((_, writers)) = &self.inner.tcp {
            writers.counters().render(&mut text);
        }
        if let Some(r) = &self.inner.relay {
            r.counters.render(&mut text);
        }
        text
    }

    /// Test hook (feature `fault-injection`): the shard's own loop panics, outside the
    /// per-peer isolation; the shard dies and is supervised as in production.
    #[cfg(feature = "fault-injection")]
    pub fn kill_shard(&self, shard: usize) {
        let _ = self.send_to_shard(shard, Cmd::PanicShard);
    }

    /// Test hook (feature `fault-injection`): the next time the engine drives this
    /// participant's peer, str0m's driver panics inside it. Only that peer must end.
    #[cfg(feature = "fault-injection")]
    pub fn inject_panic(&self, participant_id: &str, target: PeerTarget) {
        let _ = self.send(
            participant_id,
            Cmd::InjectPanic {
                pid: participant_id.to_owned(),
                target,
            },
        );
    }

    /// Restarts ICE on a participant's subscriber peer: a new `SubscriberOffer` with new ICE
    /// credentials follows (after any offer still pending is answered); tracks and forwarding
    /// are kept. The publisher peer restarts with the client's own offer (`publish`).
    pub fn restart_subscriber_ice(&self, participant_id: &str) {
        let _ = self.send(
            participant_id,
            Cmd::RestartIce {
                pid: participant_id.to_owned(),
            },
        );
    }

    /// The relay socket's bound address (`None`: relay off).
    pub fn relay_addr(&self) -> Option<SocketAddr> {
        self.inner.relay.as_ref().map(|r| r.addr)
    }

    /// The relay's counters (`None`: relay off); also in [`Sfu::metrics_text`].
    pub fn relay_stats(&self) -> Option<RelayStats> {
        self.inner.relay.as_ref().map(|r| r.counters.stats())
    }

    /// Sets the OTHER nodes that carry media of `call` (replaces the previous set; empty:
    /// none). Every track published on this node in `call` is sent once to each of them;
    /// packets they relay for `call` are accepted, anything else is dropped and counted.
    ///
    /// This node's own id in `nodes` is ignored. `set_call_nodes(call, vec![])` when the call
    /// ends here frees its relay state. No-op when the relay is off.
    pub fn set_call_nodes(&self, call: &CallCid, mut nodes: Vec<RelayNode>) {
        let Some(r) = &self.inner.relay else {
            return;
        };
        nodes.retain(|n| n.node_id != r.node_id);
        let shard = self.inner.registry.lock().calls.get(call).map(|c| c.shard);
        r.routes
            .set_nodes(relay::wire::call_key(call), shard, &nodes, &r.secret);
        // Every shard learns the node set: the call may be placed on any of them later.
        for s in 0..self.inner.shards.len() {
            let _ = self.send_to_shard(
                s,
                Cmd::Relay(RelayCmd::CallNodes {
                    call: call.clone(),
                    nodes: nodes.clone(),
                }),
            );
        }
    }

    /// Registers a participant of `call` whose media lives on node `node_id`: its tracks arrive
    /// by relay and are offered to and fanned out to this node's subscribers of the call exactly
    /// like a local publisher's (same track ids `<participant_id>:<source>`), under `gate`.
    pub fn join_remote(
        &self,
        call: &CallCid,
        participant_id: &str,
        user_id: &str,
        node_id: &str,
        gate: MediaGate,
        version: u64,
    ) {
        let (cell, version, shard) = self.register(call, participant_id, gate, version);
        let _ = self.send_to_shard(
            shard,
            Cmd::Relay(RelayCmd::JoinRemote {
                call: call.clone(),
                pid: participant_id.to_owned(),
                user_id: user_id.to_owned(),
                node_id: node_id.to_owned(),
                gate: cell,
                version,
            }),
        );
    }

    /// Replaces a participant's gate (local or remote) if `version` is newer than the one it
    /// holds; returns whether it applied. ([`Sfu::set_gate`] stays, as version-less.)
    pub fn set_gate_versioned(&self, participant_id: &str, gate: MediaGate, version: u64) -> bool {
        let reg = self.inner.registry.lock();
        let Some(e) = reg.parts.get(participant_id) else {
            return false;
        };
        // Floors first: a receiving shard that sees the new gate also sees its floors.
        if !e.version.advance(e.gate.load(), gate, version) {
            return false;
        }
        e.gate.store(gate);
        true
    }

    /// Tears down a participant's media at once and re-offers to the others (a remote
    /// participant's tracks disappear from this node's subscribers).
    pub fn leave(&self, participant_id: &str) {
        let Some(shard) = self.inner.registry.lock().remove(participant_id) else {
            return;
        };
        let _ = self.send_to_shard(
            shard,
            Cmd::Leave {
                pid: participant_id.to_owned(),
            },
        );
    }
}

/// Binds the relay socket, gives every shard its sending side, starts the receive thread.
fn relay_start(
    opts: &RelayOptions,
    shards: &[Shard],
    stop: &Arc<AtomicBool>,
) -> Result<RelayHandle, SfuError> {
    let err = |e| SfuError::Bind(opts.bind, e);
    let socket = UdpSocket::bind(opts.bind).map_err(err)?;
    let addr = socket.local_addr().map_err(err)?;
    socket::size_buffers(&socket, 4 << 20);
    let counters = Arc::new(relay::RelayCounters::default());
    let link = Arc::new(relay::RelayLink {
        socket: socket.try_clone().map_err(err)?,
        node_id: opts.node_id.clone(),
        key: relay::wire::node_key(&opts.secret, &opts.node_id),
        counters: counters.clone(),
    });
    for s in shards {
        let _ =
            s.tx.send(ShardMsg::Cmd(Cmd::Relay(RelayCmd::Link(link.clone()))));
    }
    let routes = Arc::new(relay::Routes::default());
    relay::spawn_receiver(
        socket,
        routes.clone(),
        shards.iter().map(|s| s.tx.clone()).collect(),
        counters.clone(),
        stop.clone(),
    )
    .map_err(err)?;
    Ok(RelayHandle {
        addr,
        node_id: opts.node_id.clone(),
        secret: opts.secret,
        routes,
        counters,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shard_up_to_two_cores_then_one_per_core() {
        assert_eq!(default_shards(1), 1);
        assert_eq!(default_shards(2), 1);
        assert_eq!(default_shards(3), 3);
        assert_eq!(default_shards(8), 8);
        // A configured count wins.
        let opts = SfuOptions {
            shards: 2,
            ..SfuOptions::default()
        };
        assert_eq!(opts.shard_count(), 2);
    }
}
