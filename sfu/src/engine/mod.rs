//! One engine shard: a thread that owns its peers' `Rtc`s, producers and consumers, gets
//! datagrams (from [`crate::demux`]) and commands on one channel, and sends on its own clone of
//! the shared UDP socket. See the crate docs for the structure.
//!
//! The shard's code, by concern:
//!
//! * [`run`]: the thread's loop (wait for a datagram, a command or the next timer).
//! * [`drive`]: driving one peer's str0m `Rtc` (input, `poll_output`, timeout) and the
//!   datagram entry point.
//! * [`fanout`]: the hot path, one incoming RTP packet to every consumer of its producer.
//! * [`keyframes`]: keyframe requests and simulcast layer choice.
//! * [`negotiation`]: a subscriber peer's offer/answer bookkeeping, a pure state machine.
//! * [`subscribe`]: that state machine applied to the subscriber's `Rtc`.
//! * [`commands`]: the commands from the [`crate::Sfu`] handle.
//! * [`peers`]: creating, dropping and failing server-side peers.
//! * [`events`]: str0m events other than RTP (connection state, estimates, stats).
//! * [`housekeeping`]: the periodic tick (deadlines, layer rates, active speakers).
//! * [`relay`]: the node-to-node relay's shard side (remote tracks, relaying local ones).
//! * [`quiet`]: silent video send streams parked (no padding on a silent track).
//! * [`ingress`]: the lean publisher ingress (a publisher's RTP opened and forwarded, its
//!   feedback written, without a str0m drive per packet).
//! * [`lean`]: the lean path (forwarded audio, and video of single-layer sources, sent
//!   without a str0m drive); [`lean_video`] and [`lean_rtcp`]: what video needs beyond audio
//!   (retransmits, the subscriber's feedback); [`lean_stats`]: round trip and loss of lean
//!   streams from the subscriber's receiver reports.

mod commands;
mod drive;
mod events;
mod fanout;
mod housekeeping;
mod ingress;
mod keyframes;
mod lean;
mod lean_rtcp;
mod lean_stats;
mod lean_video;
mod negotiation;
mod peers;
mod quiet;
mod relay;
mod run;
mod subscribe;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use greenroom_proto::{CallCid, PeerTarget, PublishTrack, Quality, TrackSource};
use slotmap::SlotMap;
use str0m::bwe::Bitrate;
use str0m::change::SdpPendingOffer;
use str0m::format::PayloadParams;
use str0m::media::{MediaKind, Mid, Pt, Rid};
use str0m::rtp::Ssrc;
use str0m::{Event, Rtc};
use tokio::sync::{mpsc, oneshot};
use tracing::error;

use crate::demux::UfragMap;
use crate::forward::{ConsumerState, GateCell, GateCopy};
use crate::metrics::SfuCounters;
use crate::routes::PeerRoutes;
use crate::speakers::{LevelMeter, SpeakerRanking};
use crate::transport::Transport;
use crate::{SfuError, SfuEvent, SfuOptions};

use negotiation::Negotiation;
pub use peers::{rtc_config, subscriber_config};
pub(crate) use relay::RelayCmd;

/// Housekeeping period (deadlines, layer choice); speakers run every second tick.
const TICK: Duration = Duration::from_millis(250);
/// Shortest sleep of a shard waiting for its next timer.
const MIN_SLEEP: Duration = Duration::from_millis(1);
/// Initial bandwidth estimate towards subscribers.
const INITIAL_BWE: Bitrate = Bitrate::kbps(2_500);

/// A command from the [`crate::Sfu`] handle.
pub(crate) enum Cmd {
    Join {
        call: CallCid,
        pid: String,
        user_id: String,
        gate: Arc<GateCell>,
        bwe: bool,
    },
    Publish {
        pid: String,
        sdp: String,
        tracks: Vec<PublishTrack>,
        reply: oneshot::Sender<Result<String, SfuError>>,
    },
    SubscriberAnswer {
        pid: String,
        sdp: String,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    IceCandidate {
        pid: String,
        target: PeerTarget,
        candidate: String,
    },
    Unpublish {
        pid: String,
        source: TrackSource,
    },
    SetSubscribed {
        pid: String,
        track_id: String,
        subscribed: bool,
    },
    SetQuality {
        pid: String,
        track_id: String,
        quality: Quality,
    },
    Leave {
        pid: String,
    },
    /// Offer the subscriber peer again with new ICE credentials (a client's network changed).
    RestartIce {
        pid: String,
    },
    /// Node-to-node relay (see `relay`).
    Relay(RelayCmd),
    #[cfg(feature = "fault-injection")]
    InjectPanic {
        pid: String,
        target: PeerTarget,
    },
    /// Test hook: panic the shard's own loop, outside every `catch_unwind` of a peer.
    #[cfg(feature = "fault-injection")]
    PanicShard,
    Stop,
}

/// What a shard's thread waits for: a datagram for one of its peers, or a command.
pub(crate) enum ShardMsg {
    /// Datagrams routed to this shard by the demultiplexer: what one `recvmmsg` read for it.
    Datagrams(crate::io::rx::RxBatch),
    /// A packet from an ICE-TCP connection (RFC 4571 frame), routed like a datagram.
    TcpPacket {
        /// The packet, without its length prefix.
        data: Vec<u8>,
        /// The connection's remote address.
        src: SocketAddr,
    },
    /// A command from the handle.
    Cmd(Cmd),
    /// Datagrams from other nodes' relays, authenticated (see [`crate::relay`]): what one
    /// `recvmmsg` of the relay socket read for this shard, in arrival order.
    Relay(Vec<crate::relay::RelayIn>),
}

/// Where a shard lives and what it talks to.
pub(crate) struct ShardSetup {
    /// The shard's index (tagged into its peers' ICE ufrags).
    pub(crate) shard: usize,
    /// Engine tuning.
    pub(crate) opts: SfuOptions,
    /// Where outgoing datagrams go (a clone of the shared socket).
    pub(crate) socket: Box<dyn Transport>,
    /// The address in host candidates.
    pub(crate) advertised: SocketAddr,
    /// Datagrams and commands (with one shard, the socket too).
    pub(crate) input: crate::io::inbox::InboxSetup,
    /// Events to the control plane.
    pub(crate) events: mpsc::UnboundedSender<SfuEvent>,
    /// This shard's counters.
    pub(crate) counters: Arc<SfuCounters>,
    /// Where this shard registers server ufrags that lost their shard tag.
    pub(crate) untagged: UfragMap,
}

/// Spawns one shard's engine thread, supervised: if the shard's loop panics (outside the
/// per-peer `catch_unwind`), every participant of the shard gets [`SfuEvent::PeerFailed`], the
/// shard's queue closes (the receive thread then drops its datagrams, counted, and keeps
/// serving the other shards), and `alive` turns false so that the handle places no call
/// there again and reports the media plane degraded.
pub(crate) fn spawn(setup: ShardSetup, alive: Arc<AtomicBool>) -> io::Result<()> {
    std::thread::Builder::new()
        .name(format!("greenroom-sfu-{}", setup.shard))
        .spawn(move || {
            let mut engine = Engine::new(setup);
            let res = catch_unwind(AssertUnwindSafe(|| engine.run()));
            alive.store(false, Relaxed);
            if res.is_err() {
                engine.died();
            }
        })?;
    Ok(())
}

slotmap::new_key_type! {
    /// A peer or producer of this shard (generational: a stale key finds nothing).
    struct Key;
}

// ---------------------------------------------------------------------------------------------
// State.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Publisher,
    Subscriber,
}

struct Peer {
    /// Boxed: str0m's `Rtc` is about 10 KiB inline, and the peers' `SlotMap` keeps up to twice
    /// as many slots as peers (its capacity doubles), so an inline `Rtc` cost every empty slot
    /// its size. The lean fan-out never reads it per packet (it keeps a route).
    rtc: Box<Rtc>,
    owner: String,
    role: Role,
    /// Next timeout str0m asked for (`None` while its timer entry is being fired).
    timeout: Option<Instant>,
    dirty: bool,
    connected: bool,
    /// ICE/DTLS must connect before this.
    deadline: Option<Instant>,
    /// Publisher: incoming SSRC -> (producer, layer index).
    ssrcs: Vec<(Ssrc, Key, u8)>,
    /// Subscriber: outgoing mid -> producer.
    sub_mids: HashMap<Mid, Key>,
    /// Subscriber: latest egress bandwidth estimate.
    bwe: Option<Bitrate>,
    /// Cumulative NACK counts last seen in str0m's stats, per (mid, rid).
    nacks_seen: Vec<(Mid, Option<Rid>, u64)>,
    /// Local ICE ufrag (routes this peer's STUN).
    ufrag: String,
    /// Local ufrag registered in the untagged map (after a client's ICE restart).
    untagged_ufrag: Option<String>,
    /// Subscriber: SRTP keys, path and lean video streams of the lean path.
    lean: lean::LeanPeer,
    /// Publisher with the lean ingress on: its state (see [`ingress`]).
    ingress: Option<Box<ingress::Ingress>>,
    /// Test hook: panic inside the next drive of this peer.
    #[cfg(feature = "fault-injection")]
    panic_next: bool,
}

struct Participant {
    call: CallCid,
    user_id: String,
    gate: Arc<GateCell>,
    publisher: Option<Key>,
    subscriber: Key,
    producers: Vec<Key>,
    /// The subscriber peer's offer/answer state.
    sub: Negotiation<Key, SdpPendingOffer>,
    unsubscribed: HashSet<String>,
    quality: HashMap<String, Quality>,
    /// Bandwidth estimation on the subscriber peer.
    bwe: bool,
}

struct Layer {
    rid: Option<Rid>,
    ssrc: Option<Ssrc>,
    last_keyframe_req: Option<Instant>,
    /// Bytes received in the current tick, and the smoothed rate in bits per second.
    bytes: u64,
    rate_bps: f64,
}

/// No layer chosen yet.
const NO_LAYER: u8 = u8::MAX;

struct Consumer {
    peer: Key,
    ssrc: Ssrc,
    /// The send stream's RTX SSRC and m-line (to declare it again after parking).
    rtx: Option<Ssrc>,
    mid: Mid,
    /// Silent video: the send stream is parked ([`quiet`]).
    park: quiet::ParkState,
    /// The subscriber's `receive` flag, copied (refreshed when [`crate::forward::changes`]
    /// moved).
    gate: GateCopy,
    st: ConsumerState,
    quality: Quality,
    /// Simulcast: the layer being forwarded and the one wanted.
    cur: u8,
    target: u8,
    /// Audio, or video of a single-layer source, on the lean path (its str0m send stream
    /// parked).
    lean: Option<lean::LeanTx>,
}

struct Producer {
    owner: String,
    call: CallCid,
    source: TrackSource,
    bit: u8,
    gate: Arc<GateCell>,
    publisher: Key,
    mid: Mid,
    kind: MediaKind,
    /// Bumped on SSRC change and gate reopening.
    epoch: u32,
    open: bool,
    layers: Vec<Layer>,
    /// Incoming payload type -> its codec parameters (filled lazily).
    params: Vec<(Pt, PayloadParams)>,
    consumers: Vec<Consumer>,
    level: LevelMeter,
    /// Recent packets for retransmits to lean video consumers (made with the first one that
    /// has RTX; see [`lean_video`]).
    cache: Option<Box<crate::retransmit::RetransmitCache>>,
}

impl Producer {
    fn track_id(&self) -> String {
        format!("{}:{}", self.owner, self.source)
    }

    /// The index of the layer of `rid` (added if new) once bound to `ssrc`: a new SSRC on a
    /// layer that had one is a restarted stream (a new epoch for every consumer).
    fn bind_layer(&mut self, rid: Option<Rid>, ssrc: Ssrc) -> u8 {
        let li = match self.layers.iter().position(|l| l.rid == rid) {
            Some(i) => i,
            None => {
                self.layers.push(Layer {
                    rid,
                    ssrc: None,
                    last_keyframe_req: None,
                    bytes: 0,
                    rate_bps: 0.0,
                });
                self.layers.len() - 1
            }
        };
        let layer = &mut self.layers[li];
        if layer.ssrc.is_some_and(|s| s != ssrc) {
            self.epoch = self.epoch.wrapping_add(1);
        }
        layer.ssrc = Some(ssrc);
        li.min(usize::from(NO_LAYER - 1)) as u8
    }
}

#[derive(Default)]
struct CallState {
    members: Vec<String>,
    speakers: SpeakerRanking,
}

/// One shard's state (see the module docs).
pub(crate) struct Engine {
    shard: usize,
    opts: SfuOptions,
    socket: Box<dyn Transport>,
    /// One transport per worker of the parallel fan-out (forks of `socket`, made on first use).
    workers: Vec<Box<dyn Transport>>,
    local: SocketAddr,
    untagged: UfragMap,
    input: crate::io::inbox::Inbox,
    events: mpsc::UnboundedSender<SfuEvent>,
    peers: SlotMap<Key, Peer>,
    producers: SlotMap<Key, Producer>,
    parts: HashMap<String, Participant>,
    calls: HashMap<CallCid, CallState>,
    /// Ufrag -> peer and ICE-validated address -> peer.
    routes: PeerRoutes<Key>,
    timers: BinaryHeap<Reverse<(Instant, Key)>>,
    /// Lean ingress publishers' feedback timers (see [`ingress`]).
    ingress_timers: BinaryHeap<Reverse<(Instant, Key)>>,
    /// Events collected while driving peers, handled after.
    pending_events: Vec<(Key, Event)>,
    dirty: Vec<Key>,
    next_tick: Instant,
    /// Origin of the grid str0m's lax timers are rounded to (see `drive::coalesce`).
    timer_epoch: Instant,
    ticks: u64,
    /// How busy this thread is (decides the parallel fan-out).
    busy: run::Busy,
    /// Metrics, written by this thread only.
    counters: Arc<SfuCounters>,
    /// The node-to-node relay's state (idle when the relay is off).
    relay: relay::RelayShard,
    /// Scratch buffers of the lean path.
    lean_bufs: lean::LeanBufs,
}

impl Engine {
    /// A shard's state, not yet running.
    pub(crate) fn new(setup: ShardSetup) -> Engine {
        let ShardSetup {
            shard,
            opts,
            socket,
            advertised,
            input,
            events,
            counters,
            untagged,
        } = setup;
        let opts_busy = opts.parallel_busy;
        Engine {
            shard,
            opts,
            socket,
            workers: Vec::new(),
            local: advertised,
            untagged,
            input: input.open(),
            events,
            peers: SlotMap::with_key(),
            producers: SlotMap::with_key(),
            parts: HashMap::new(),
            calls: HashMap::new(),
            routes: PeerRoutes::default(),
            timers: BinaryHeap::new(),
            ingress_timers: BinaryHeap::new(),
            pending_events: Vec::new(),
            dirty: Vec::new(),
            next_tick: Instant::now() + TICK,
            timer_epoch: Instant::now(),
            ticks: 0,
            busy: run::Busy::new(Instant::now(), opts_busy),
            counters,
            relay: relay::RelayShard::default(),
            lean_bufs: lean::LeanBufs::default(),
        }
    }

    /// The shard died (its loop panicked): every participant's media fails, and ufrags it
    /// registered for the receive thread are withdrawn. The state may be half-updated, so
    /// only participant ids and peer ufrags are read.
    pub(super) fn died(&mut self) {
        error!(shard = self.shard, "media engine shard died");
        let reason = format!("media engine shard {} failed", self.shard);
        for pid in self.parts.keys() {
            let _ = self.events.send(SfuEvent::PeerFailed {
                participant_id: pid.clone(),
                reason: reason.clone(),
            });
        }
        let mut map = self.untagged.write();
        for (_, p) in self.peers.iter() {
            if let Some(u) = &p.untagged_ufrag {
                map.remove(u);
            }
        }
        let c = &self.counters;
        c.peers.store(0, Relaxed);
        for k in 0..2 {
            c.producers[k].store(0, Relaxed);
            c.consumers[k].store(0, Relaxed);
        }
    }
}
