//! Node-to-node media relay: one call's tracks carried between the nodes of a cluster.
//!
//! * One UDP socket per node ([`RelayOptions::bind`]) and its own receive thread
//!   ([`spawn_receiver`], `recvmmsg` up to 32 datagrams per call): each datagram's head names the call (a 64-bit key) and the sending
//!   node; the thread accepts it only for a call whose node set ([`crate::Sfu::set_call_nodes`])
//!   holds that node, checks its MAC with that node's key ([`wire`]), and hands it to the call's
//!   shard through the shard's bounded queue (dropped and counted when full).
//! * The shard side (`engine::relay`) sends every packet of a local track once per other node of
//!   the call (encoded once, queued per node and sent in batches: [`RelayOut`]), turns announces
//!   into producers without a str0m `Rtc` (remote tracks), and feeds relayed packets into the
//!   same fan-out as local ones.
//! * Gate versions ([`GateVersion`]) travel with every packet: a receiving node drops a packet
//!   stamped older than the newest version that revoked its source there.
//!
//! See docs/ARCHITECTURE.md, "Relay between nodes".

pub(crate) mod wire;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::TrySendError;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
use greenroom_proto::{MediaGate, TrackSource};
use nix::sys::socket::{sendto, MsgFlags, SockaddrStorage};
use parking_lot::RwLock;
use str0m::media::Rid;

use crate::engine::ShardMsg;
use crate::io::batch::{send_batch, GsoState, SendOutcome, SendQueue, MAX_BATCH};
use crate::io::inbox::ShardTx;
use crate::io::recv::BatchReceiver;
use wire::{Body, TrackDesc, WireError};

/// Node-to-node relay options (`None` in [`crate::SfuOptions::relay`]: relay off, no socket).
#[derive(Clone)]
pub struct RelayOptions {
    /// UDP address of the relay socket (port 0 picks a free one; see [`crate::Sfu::relay_addr`]).
    pub bind: SocketAddr,
    /// This node's id, as the other nodes know it (at most 255 bytes; it selects the key that
    /// authenticates this node's datagrams).
    pub node_id: String,
    /// The cluster's shared relay secret: every datagram carries a MAC keyed by it and the
    /// sending node's id.
    pub secret: [u8; 32],
}

impl std::fmt::Debug for RelayOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayOptions")
            .field("bind", &self.bind)
            .field("node_id", &self.node_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Another node that carries media of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayNode {
    /// The node's id (its [`RelayOptions::node_id`]).
    pub node_id: String,
    /// The node's relay socket address ([`crate::Sfu::relay_addr`] there).
    pub addr: SocketAddr,
}

/// Why the relay dropped a datagram (index into [`RelayCounters::dropped`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RelayDrop {
    /// Garbage, truncated, unknown version or kind, malformed field.
    Malformed = 0,
    /// The MAC does not match the sending node's key.
    BadMac = 1,
    /// No node set for the call on this node (or no shard holds it yet).
    UnknownCall = 2,
    /// The sending node is not in the call's node set.
    UnknownNode = 3,
    /// No remote participant or track for it here (not joined with `join_remote`, not from
    /// the participant's node, or not announced yet).
    UnknownTrack = 4,
    /// Stamped with a gate version older than the newest that revoked its source here.
    StaleVersion = 5,
    /// The call's shard queue was full.
    QueueFull = 6,
    /// Sending failed (socket buffer full or an error).
    SendError = 7,
}

const DROP_REASONS: [&str; 8] = [
    "malformed",
    "bad_mac",
    "unknown_call",
    "unknown_node",
    "unknown_track",
    "stale_version",
    "queue_full",
    "send_error",
];

/// The relay's counters (shared by the receive thread and the shards: `fetch_add`).
#[derive(Debug, Default)]
pub(crate) struct RelayCounters {
    /// Media packets encoded for relay (once per packet, whatever the number of nodes).
    media_encoded: AtomicU64,
    /// Media datagrams sent (one per packet per node) and their bytes.
    media_out: AtomicU64,
    bytes_out: AtomicU64,
    /// Media datagrams accepted (authenticated, for a known call) and their bytes.
    media_in: AtomicU64,
    bytes_in: AtomicU64,
    /// Control datagrams: [announce, keyframe request] x [out, in].
    control: [[AtomicU64; 2]; 2],
    /// Drops by [`RelayDrop`].
    dropped: [AtomicU64; 8],
}

impl RelayCounters {
    pub(crate) fn dropped(&self, why: RelayDrop) {
        self.dropped[why as usize].fetch_add(1, Relaxed);
    }

    pub(crate) fn encoded(&self) {
        self.media_encoded.fetch_add(1, Relaxed);
    }

    /// Counts what one batch of queued media datagrams did: sent (and their bytes), or dropped
    /// by the kernel (a full buffer or an error: [`RelayDrop::SendError`]).
    fn media_sent(&self, o: SendOutcome) {
        self.media_out.fetch_add(o.sent, Relaxed);
        self.bytes_out.fetch_add(o.bytes, Relaxed);
        self.dropped[RelayDrop::SendError as usize].fetch_add(o.would_block + o.failed, Relaxed);
    }

    pub(crate) fn sent(&self, kind: wire::Kind, bytes: usize) {
        match kind {
            wire::Kind::Media => {
                self.media_out.fetch_add(1, Relaxed);
                self.bytes_out.fetch_add(bytes as u64, Relaxed);
            }
            wire::Kind::Announce => {
                self.control[0][0].fetch_add(1, Relaxed);
            }
            wire::Kind::Keyframe => {
                self.control[1][0].fetch_add(1, Relaxed);
            }
        }
    }

    fn received(&self, kind: wire::Kind, bytes: usize) {
        match kind {
            wire::Kind::Media => {
                self.media_in.fetch_add(1, Relaxed);
                self.bytes_in.fetch_add(bytes as u64, Relaxed);
            }
            wire::Kind::Announce => {
                self.control[0][1].fetch_add(1, Relaxed);
            }
            wire::Kind::Keyframe => {
                self.control[1][1].fetch_add(1, Relaxed);
            }
        }
    }

    /// A snapshot.
    pub(crate) fn stats(&self) -> RelayStats {
        let l = |c: &AtomicU64| c.load(Relaxed);
        RelayStats {
            media_encoded: l(&self.media_encoded),
            media_out: l(&self.media_out),
            bytes_out: l(&self.bytes_out),
            media_in: l(&self.media_in),
            bytes_in: l(&self.bytes_in),
            announces_out: l(&self.control[0][0]),
            announces_in: l(&self.control[0][1]),
            keyframe_requests_out: l(&self.control[1][0]),
            keyframe_requests_in: l(&self.control[1][1]),
            dropped: DROP_REASONS
                .iter()
                .zip(&self.dropped)
                .map(|(r, c)| (*r, l(c)))
                .collect(),
        }
    }

    /// Appends the Prometheus text of the counters.
    pub(crate) fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let s = self.stats();
        let _ = writeln!(
            out,
            "# HELP greenroom_relay_packets_total Media datagrams relayed between nodes.\n\
             # TYPE greenroom_relay_packets_total counter\n\
             greenroom_relay_packets_total{{direction=\"out\"}} {}\n\
             greenroom_relay_packets_total{{direction=\"in\"}} {}\n\
             # HELP greenroom_relay_bytes_total Bytes of relayed media datagrams.\n\
             # TYPE greenroom_relay_bytes_total counter\n\
             greenroom_relay_bytes_total{{direction=\"out\"}} {}\n\
             greenroom_relay_bytes_total{{direction=\"in\"}} {}\n\
             # HELP greenroom_relay_encoded_total Local packets encoded for relay (once each, \
             whatever the number of nodes).\n\
             # TYPE greenroom_relay_encoded_total counter\n\
             greenroom_relay_encoded_total {}\n\
             # HELP greenroom_relay_control_total Relay control datagrams.\n\
             # TYPE greenroom_relay_control_total counter\n\
             greenroom_relay_control_total{{kind=\"announce\",direction=\"out\"}} {}\n\
             greenroom_relay_control_total{{kind=\"announce\",direction=\"in\"}} {}\n\
             greenroom_relay_control_total{{kind=\"keyframe\",direction=\"out\"}} {}\n\
             greenroom_relay_control_total{{kind=\"keyframe\",direction=\"in\"}} {}\n\
             # HELP greenroom_relay_dropped_total Relay datagrams dropped, by reason.\n\
             # TYPE greenroom_relay_dropped_total counter",
            s.media_out,
            s.media_in,
            s.bytes_out,
            s.bytes_in,
            s.media_encoded,
            s.announces_out,
            s.announces_in,
            s.keyframe_requests_out,
            s.keyframe_requests_in,
        );
        for (r, n) in &s.dropped {
            let _ = writeln!(out, "greenroom_relay_dropped_total{{reason=\"{r}\"}} {n}");
        }
    }
}

/// A snapshot of the relay's counters ([`crate::Sfu::relay_stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Local media packets encoded for relay: once per packet, whatever the number of nodes.
    pub media_encoded: u64,
    /// Media datagrams sent (one per encoded packet per other node of its call).
    pub media_out: u64,
    /// Bytes of the media datagrams sent.
    pub bytes_out: u64,
    /// Media datagrams accepted (authenticated, for a call with a node set here).
    pub media_in: u64,
    /// Bytes of the media datagrams accepted.
    pub bytes_in: u64,
    /// Track announcements sent.
    pub announces_out: u64,
    /// Track announcements accepted.
    pub announces_in: u64,
    /// Keyframe requests sent to producing nodes.
    pub keyframe_requests_out: u64,
    /// Keyframe requests accepted from receiving nodes.
    pub keyframe_requests_in: u64,
    /// Dropped datagrams by reason (`malformed`, `bad_mac`, `unknown_call`, `unknown_node`,
    /// `unknown_track`, `stale_version`, `queue_full`, `send_error`).
    pub dropped: Vec<(&'static str, u64)>,
}

impl RelayStats {
    /// Drops counted for `reason` (0 for an unknown reason).
    pub fn dropped(&self, reason: &str) -> u64 {
        self.dropped
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }
}

/// A participant's gate version and, per source, the newest version that revoked it here.
///
/// Written by the handle under the registry lock ([`crate::Sfu::set_gate_versioned`]), read by
/// the shards: the publishing node stamps `version` on every relayed packet, and a receiving
/// node drops a packet whose stamp is below its source's `floor`.
#[derive(Debug, Default)]
pub(crate) struct GateVersion {
    version: AtomicU64,
    floors: [AtomicU64; 4],
}

impl GateVersion {
    pub(crate) fn new(version: u64) -> GateVersion {
        let v = GateVersion::default();
        v.version.store(version, Relaxed);
        v
    }

    /// The version held.
    pub(crate) fn version(&self) -> u64 {
        self.version.load(Relaxed)
    }

    /// Records `version` for a change from `old` to `new`: every source `new` stops sending
    /// gets `version` as its floor. Returns false (nothing changed) unless `version` is newer.
    pub(crate) fn advance(&self, old: MediaGate, new: MediaGate, version: u64) -> bool {
        if version <= self.version() {
            return false;
        }
        for (i, s) in TrackSource::ALL.into_iter().enumerate() {
            if old.send.contains(s) && !new.send.contains(s) {
                self.floors[i].store(version, Relaxed);
            }
        }
        self.version.store(version, Relaxed);
        true
    }

    /// Whether a packet of `source` stamped with `stamp` is older than the source's last revoke.
    #[inline]
    pub(crate) fn stale(&self, source: TrackSource, stamp: u64) -> bool {
        let i = TrackSource::ALL
            .iter()
            .position(|s| *s == source)
            .unwrap_or(0);
        stamp < self.floors[i].load(Relaxed)
    }
}

/// What a shard needs to send relay datagrams.
pub(crate) struct RelayLink {
    /// A non-blocking clone of the relay socket.
    pub(crate) socket: UdpSocket,
    /// This node's id.
    pub(crate) node_id: String,
    /// This node's MAC key.
    pub(crate) key: hmac::Key,
    pub(crate) counters: Arc<RelayCounters>,
}

impl RelayLink {
    /// Sends one encoded datagram to `addr` without blocking (the socket itself blocks, for
    /// the receive thread's timeout); a full buffer or an error drops it (counted).
    pub(crate) fn send(&self, kind: wire::Kind, data: &[u8], addr: SocketAddr) {
        let to = SockaddrStorage::from(addr);
        match sendto(self.socket.as_raw_fd(), data, &to, MsgFlags::MSG_DONTWAIT) {
            Ok(_) => self.counters.sent(kind, data.len()),
            Err(_) => self.counters.dropped(RelayDrop::SendError),
        }
    }
}

/// A shard's relayed media on its way out: datagrams queue here and leave in one `sendmmsg`
/// (and UDP GSO runs, see [`crate::io::batch`]) when the queue is full or the shard ends its batch
/// of work ([`RelayOut::flush`], next to the media socket's flush), never blocking. Control
/// datagrams (announcements, keyframe requests: a few a second) go out at once
/// ([`RelayLink::send`]), ahead of the media queued before them.
pub(crate) struct RelayOut {
    link: Arc<RelayLink>,
    queue: SendQueue,
    gso: GsoState,
}

impl RelayOut {
    /// An empty queue of [`MAX_BATCH`] datagrams for `link`'s socket.
    pub(crate) fn new(link: Arc<RelayLink>) -> RelayOut {
        RelayOut {
            link,
            queue: SendQueue::new(MAX_BATCH),
            gso: GsoState::new(true),
        }
    }

    /// The socket, node id, key and counters.
    pub(crate) fn link(&self) -> &RelayLink {
        &self.link
    }

    /// Queues a copy of one encoded media datagram for `addr` (sent at once when the queue is
    /// full).
    pub(crate) fn push_media(&mut self, data: &[u8], addr: SocketAddr) {
        if self.queue.push(data, addr) {
            self.flush();
        }
    }

    /// Hands every queued datagram to the kernel and counts what it did.
    pub(crate) fn flush(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let o = send_batch(&self.link.socket, &mut self.queue, &self.gso);
        self.link.counters.media_sent(o);
    }
}

/// One call's relay route on this node: its shard and the other nodes allowed to send for it.
struct CallRoute {
    shard: Option<usize>,
    nodes: Vec<(String, hmac::Key)>,
}

/// Call key -> route, read by the receive thread per datagram, written by the handle.
#[derive(Default)]
pub(crate) struct Routes(RwLock<HashMap<u64, CallRoute>>);

impl Routes {
    /// Sets (or with no nodes, removes) a call's node set.
    pub(crate) fn set_nodes(
        &self,
        call: u64,
        shard: Option<usize>,
        nodes: &[RelayNode],
        secret: &[u8; 32],
    ) {
        let mut map = self.0.write();
        if nodes.is_empty() {
            map.remove(&call);
            return;
        }
        let nodes = nodes
            .iter()
            .map(|n| (n.node_id.clone(), wire::node_key(secret, &n.node_id)))
            .collect();
        map.insert(call, CallRoute { shard, nodes });
    }

    /// The call moved to (or was placed on) `shard`.
    pub(crate) fn set_shard(&self, call: u64, shard: usize) {
        if let Some(r) = self.0.write().get_mut(&call) {
            r.shard = Some(shard);
        }
    }
}

/// A relayed datagram for a shard, authenticated and decoded.
#[derive(Debug)]
pub(crate) struct RelayIn {
    pub(crate) call: u64,
    pub(crate) from: String,
    pub(crate) pid: String,
    pub(crate) source: TrackSource,
    pub(crate) body: InBody,
}

/// The body of a [`RelayIn`].
#[derive(Debug)]
pub(crate) enum InBody {
    Media(MediaIn),
    Announce(Vec<TrackDesc>),
    Keyframe {
        rid: Option<Rid>,
        fir: bool,
        force: bool,
    },
}

/// One relayed RTP packet, owned by the shard's message.
pub(crate) type MediaIn = wire::MediaOf<Option<Rid>, Arc<[u8]>>;

/// Checks one datagram and routes it: the shard index, the datagram's kind and the message, or
/// why it was dropped. Every check of the bytes is the wire's ([`wire::peek`]: length, magic,
/// version, kind; [`wire::open`]: MAC, body).
pub(crate) fn route(
    routes: &Routes,
    data: &[u8],
) -> Result<(usize, wire::Kind, RelayIn), RelayDrop> {
    let sealed = wire::peek(data).map_err(|_| RelayDrop::Malformed)?;
    let head = &sealed.head;
    let map = routes.0.read();
    let route = map.get(&head.call).ok_or(RelayDrop::UnknownCall)?;
    let (_, key) = route
        .nodes
        .iter()
        .find(|(id, _)| id == head.node)
        .ok_or(RelayDrop::UnknownNode)?;
    let body = wire::open(&sealed, key).map_err(|e| match e {
        WireError::BadMac => RelayDrop::BadMac,
        _ => RelayDrop::Malformed,
    })?;
    let shard = route.shard.ok_or(RelayDrop::UnknownCall)?;
    drop(map);
    let body = match body {
        Body::Media(m) => InBody::Media(m.map(|r| r.map(Rid::from), Arc::from)),
        Body::Announce(t) => InBody::Announce(t),
        Body::Keyframe { rid, fir, force } => InBody::Keyframe {
            rid: rid.map(Rid::from),
            fir,
            force,
        },
    };
    Ok((
        shard,
        head.kind,
        RelayIn {
            call: head.call,
            from: head.node.to_owned(),
            pid: head.pid.to_owned(),
            source: head.source,
            body,
        },
    ))
}

/// The receive thread looks at its stop flag at least this often.
const POLL: Duration = Duration::from_millis(200);
/// Datagrams read per `recvmmsg`.
const RX_BATCH: usize = 32;

/// Spawns the relay socket's receive thread. It ends when `stop` is set.
pub(crate) fn spawn_receiver(
    socket: UdpSocket,
    routes: Arc<Routes>,
    shards: Vec<ShardTx>,
    counters: Arc<RelayCounters>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    socket.set_read_timeout(Some(POLL))?;
    std::thread::Builder::new()
        .name("greenroom-relay-rx".into())
        .spawn(move || receive(socket, &routes, &shards, &counters, &stop))?;
    Ok(())
}

/// The receive loop: `recvmmsg` (sleeps until one datagram arrives, then takes what else is
/// queued, up to [`RX_BATCH`]), each datagram routed by [`route`] to its call's shard.
fn receive(
    socket: UdpSocket,
    routes: &Routes,
    shards: &[ShardTx],
    counters: &RelayCounters,
    stop: &AtomicBool,
) {
    let fd = socket.as_raw_fd();
    // One byte more than the largest datagram: a longer one shows as too long, and is dropped.
    let mut bufs = vec![vec![0u8; wire::MAX_DATAGRAM + 1]; RX_BATCH];
    let mut receiver = BatchReceiver::new(RX_BATCH, "relay socket");
    let mut got = Vec::with_capacity(RX_BATCH);
    while !stop.load(Relaxed) {
        got.clear();
        got.extend_from_slice(receiver.recv(
            fd,
            bufs.iter_mut().map(|b| b.as_mut_slice()),
            MsgFlags::MSG_WAITFORONE,
        ));
        let mut read = ShardBatches::default();
        for (buf, (len, _)) in bufs.iter().zip(&got) {
            // An empty datagram is garbage like the rest; a longer one fills the buffer (one
            // byte over the limit): the wire refuses it.
            let data = &buf[..*len];
            match route(routes, data) {
                Ok((shard, kind, msg)) => read.push(shard, msg, (kind, data.len())),
                Err(why) => counters.dropped(why),
            }
        }
        read.deliver(shards, counters);
    }
}

/// The routed datagrams of one `recvmmsg` read, grouped by shard: each shard is woken once
/// per read (one queue message), as the media socket's receive thread does.
#[derive(Default)]
struct ShardBatches {
    /// (shard, its datagrams in arrival order, each one's kind and size for the counters).
    by_shard: Vec<(usize, Vec<RelayIn>, Vec<KindLen>)>,
}

/// A routed datagram's kind and size, counted once its shard took it.
type KindLen = (wire::Kind, usize);

impl ShardBatches {
    /// Adds one routed datagram for `shard`, of `size` (its kind and length).
    fn push(&mut self, shard: usize, msg: RelayIn, size: KindLen) {
        let i = match self.by_shard.iter().position(|(s, _, _)| *s == shard) {
            Some(i) => i,
            None => {
                self.by_shard.push((shard, Vec::new(), Vec::new()));
                self.by_shard.len() - 1
            }
        };
        let (_, msgs, sizes) = &mut self.by_shard[i];
        msgs.push(msg);
        sizes.push(size);
    }

    /// Hands each shard its datagrams in one queue message, or drops and counts them (per
    /// datagram) when the queue is full or the shard is gone.
    fn deliver(self, shards: &[ShardTx], counters: &RelayCounters) {
        for (shard, msgs, sizes) in self.by_shard {
            let dropped = |why| {
                for _ in &sizes {
                    counters.dropped(why);
                }
            };
            let Some(tx) = shards.get(shard) else {
                dropped(RelayDrop::UnknownCall);
                continue;
            };
            match tx.try_send(ShardMsg::Relay(msgs)) {
                Ok(()) => {
                    for (kind, len) in &sizes {
                        counters.received(*kind, *len);
                    }
                }
                Err(TrySendError::Full(_)) => dropped(RelayDrop::QueueFull),
                // A dead shard: its calls move at their next join.
                Err(TrySendError::Disconnected(_)) => dropped(RelayDrop::UnknownCall),
            }
        }
    }
}

/// The relay codec for the benchmark and the fuzz targets (feature `fuzzing`; not a public
/// API): one sender's datagrams and one receiver's routing, without sockets.
#[cfg(feature = "fuzzing")]
pub mod bench {
    use super::*;

    /// Encodes and signs the sample media datagram (node `a`, call 1) of `payload` into `buf`.
    fn encode_sample(buf: &mut Vec<u8>, key: &hmac::Key, payload: &[u8]) -> Result<(), WireError> {
        let head = wire::Head {
            kind: wire::Kind::Media,
            call: 1,
            node: "a",
            pid: "participant-0123456789",
            source: TrackSource::Camera,
        };
        let body = Body::Media(wire::Media {
            rid: None,
            ssrc: 1,
            version: 1,
            seq: 1,
            ts: 1,
            pt: 96,
            marker: true,
            audio_level: None,
            voice_activity: None,
            orientation: None,
            payload,
        });
        wire::encode(buf, &head, &body, key)
    }

    /// A sender (node `a`) and a receiver that carries call 1 with node `a`.
    pub struct RelayCodec {
        buf: Vec<u8>,
        key: hmac::Key,
        routes: Routes,
    }

    impl Default for RelayCodec {
        fn default() -> Self {
            let secret = [9u8; 32];
            let routes = Routes::default();
            let a = RelayNode {
                node_id: "a".into(),
                addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            };
            routes.set_nodes(1, Some(0), &[a], &secret);
            RelayCodec {
                buf: Vec::new(),
                key: wire::node_key(&secret, "a"),
                routes,
            }
        }
    }

    impl RelayCodec {
        /// Encodes and signs one media datagram of `payload` (what a publishing node does once
        /// per packet); returns it.
        pub fn encode_media(&mut self, payload: &[u8]) -> &[u8] {
            if encode_sample(&mut self.buf, &self.key, payload).is_err() {
                self.buf.clear();
            }
            &self.buf
        }

        /// What the receive thread does per datagram (head, route, MAC, decode); whether it
        /// was accepted.
        pub fn route(&self, data: &[u8]) -> bool {
            route(&self.routes, data).is_ok()
        }
    }

    /// A publishing node's sending side on loopback: `nodes` other nodes of one call (sockets
    /// nobody reads: the kernel drops what their buffers cannot hold, as it would for a slow
    /// node), what a shard does per relayed packet and at the end of its batch of work.
    pub struct RelaySender {
        buf: Vec<u8>,
        out: RelayOut,
        /// Queued and sent in batches (the shard's path), else one `sendto` per datagram.
        batched: bool,
        addrs: Vec<SocketAddr>,
        _sinks: Vec<UdpSocket>,
    }

    impl RelaySender {
        /// A sender to `nodes` receivers on 127.0.0.1, `batched` (what a shard does) or with
        /// one `sendto` per datagram (for comparison: how the relay sent before batching, and
        /// how it still sends its few control datagrams).
        pub fn new(nodes: usize, batched: bool) -> std::io::Result<RelaySender> {
            let sinks = (0..nodes)
                .map(|_| UdpSocket::bind("127.0.0.1:0"))
                .collect::<std::io::Result<Vec<_>>>()?;
            let addrs = sinks
                .iter()
                .map(UdpSocket::local_addr)
                .collect::<std::io::Result<Vec<_>>>()?;
            let link = RelayLink {
                socket: UdpSocket::bind("127.0.0.1:0")?,
                node_id: "a".into(),
                key: wire::node_key(&[9u8; 32], "a"),
                counters: Arc::new(RelayCounters::default()),
            };
            Ok(RelaySender {
                buf: Vec::new(),
                out: RelayOut::new(Arc::new(link)),
                batched,
                addrs,
                _sinks: sinks,
            })
        }

        /// One local packet of `payload` out to every node (encoded and signed once, queued
        /// once per node).
        pub fn send_media(&mut self, payload: &[u8]) {
            if encode_sample(&mut self.buf, &self.out.link().key, payload).is_err() {
                return;
            }
            for a in &self.addrs {
                if self.batched {
                    self.out.push_media(&self.buf, *a);
                } else {
                    self.out.link().send(wire::Kind::Media, &self.buf, *a);
                }
            }
        }

        /// The end of a shard's batch of work: the queued datagrams leave.
        pub fn flush(&mut self) {
            self.out.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use greenroom_proto::SourceSet;

    fn gate(send: &[TrackSource]) -> MediaGate {
        MediaGate {
            send: send.iter().copied().collect::<SourceSet>(),
            receive: true,
        }
    }

    #[test]
    fn a_revoke_sets_the_floor_of_the_revoked_sources_only() {
        let v = GateVersion::new(1);
        let both = gate(&[TrackSource::Microphone, TrackSource::Camera]);
        let cam = gate(&[TrackSource::Camera]);
        assert!(v.advance(both, cam, 5));
        assert!(v.stale(TrackSource::Microphone, 4));
        assert!(!v.stale(TrackSource::Microphone, 5));
        assert!(!v.stale(TrackSource::Camera, 1));
        // Older or equal versions never apply (a late re-grant cannot reopen).
        assert!(!v.advance(cam, both, 5));
        assert!(!v.advance(cam, both, 3));
        assert_eq!(v.version(), 5);
        assert!(v.advance(cam, both, 6));
        // The re-grant keeps the floor: packets stamped before the revoke stay out.
        assert!(v.stale(TrackSource::Microphone, 4));
    }

    fn datagram(call: u64, node: &str, secret: &[u8; 32]) -> Vec<u8> {
        let mut buf = Vec::new();
        wire::encode(
            &mut buf,
            &wire::Head {
                kind: wire::Kind::Keyframe,
                call,
                node,
                pid: "p",
                source: TrackSource::Camera,
            },
            &Body::Keyframe {
                rid: None,
                fir: false,
                force: false,
            },
            &wire::node_key(secret, node),
        )
        .unwrap();
        buf
    }

    #[test]
    fn routing_accepts_only_the_calls_nodes_with_their_keys() {
        let secret = [1u8; 32];
        let routes = Routes::default();
        let b = RelayNode {
            node_id: "b".into(),
            addr: "127.0.0.1:1".parse().unwrap(),
        };
        routes.set_nodes(7, Some(2), std::slice::from_ref(&b), &secret);
        let (shard, kind, msg) = route(&routes, &datagram(7, "b", &secret)).unwrap();
        assert_eq!((shard, msg.from.as_str(), msg.pid.as_str()), (2, "b", "p"));
        assert_eq!(kind, wire::Kind::Keyframe);
        assert!(matches!(msg.body, InBody::Keyframe { .. }));
        assert_eq!(
            route(&routes, &datagram(8, "b", &secret)).err(),
            Some(RelayDrop::UnknownCall)
        );
        assert_eq!(
            route(&routes, &datagram(7, "c", &secret)).err(),
            Some(RelayDrop::UnknownNode)
        );
        assert_eq!(
            route(&routes, &datagram(7, "b", &[2u8; 32])).err(),
            Some(RelayDrop::BadMac)
        );
        assert_eq!(route(&routes, b"GR").err(), Some(RelayDrop::Malformed));
        let mut long = datagram(7, "b", &secret);
        long.resize(wire::MAX_DATAGRAM + 1, 0);
        assert_eq!(route(&routes, &long).err(), Some(RelayDrop::Malformed));
        routes.set_nodes(7, Some(2), &[], &secret);
        assert_eq!(
            route(&routes, &datagram(7, "b", &secret)).err(),
            Some(RelayDrop::UnknownCall)
        );
    }
}
