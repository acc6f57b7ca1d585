//! One engine shard: a thread that owns its peers' `Rtc`s, producers and consumers, gets
//! datagrams (from [`crate::demux`]) and commands on one channel, and sends on its own clone of
//! the shared UDP socket. See the crate docs for the structure.

use std::cmp::Reverse;

use rayon::prelude::*;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use greenroom_proto::{
    CallCid, PeerTarget, PublishTrack, Quality, SourceSet, SubscribedTrack, TrackInfo, TrackSource,
};
use str0m::bwe::{Bitrate, BweKind};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::PayloadParams;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Pt, Rid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{Extension, ExtensionMap, ExtensionValues, RtpPacket, RtpWrite, SeqNo, Ssrc};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::demux::{shard_of_ufrag, shard_ufrag, UfragMap};
use crate::forward::{pick_layer, ConsumerState, GateCell, PtLookup, Step};
use crate::media::is_keyframe;
use crate::metrics::{
    add, cap_idx, kind_idx, ConsumerDrop, SfuCounters, DRIVE_INPUT, DRIVE_OUTPUT, DRIVE_TIMER,
    EGRESS, INGRESS,
};
use crate::routes::{Candidate as Route, PeerRoutes};
use crate::speakers::{LevelMeter, SpeakerRanking};
use crate::transport::Transport;
use crate::{SfuError, SfuEvent, SfuOptions};

/// Housekeeping period (deadlines, layer choice); speakers run every second tick.
const TICK: Duration = Duration::from_millis(250);
/// At most one keyframe request per producer layer per this interval (unless forced).
const KEYFRAME_INTERVAL: Duration = Duration::from_millis(500);

/// Whether a keyframe request may go to the publisher now: at most one per
/// [`KEYFRAME_INTERVAL`] per layer, except `force`d ones (a new subscriber, a resumed track),
/// which always go: a resume that waits out the interval leaves its subscribers frozen.
pub(crate) fn keyframe_due(last: Option<Instant>, now: Instant, force: bool) -> bool {
    force || last.is_none_or(|t| now.saturating_duration_since(t) >= KEYFRAME_INTERVAL)
}
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
    /// A datagram routed to this shard by the demultiplexer.
    Datagram {
        /// The datagram.
        data: Vec<u8>,
        /// Its source.
        src: SocketAddr,
    },
    /// A packet from an ICE-TCP connection (RFC 4571 frame), routed like a datagram.
    TcpPacket {
        /// The packet, without its length prefix.
        data: Vec<u8>,
        /// The connection's remote address.
        src: SocketAddr,
    },
    /// A command from the handle.
    Cmd(Cmd),
}

/// Where a shard lives and what it talks to.
pub(crate) struct ShardSetup {
    /// The shard's index (tagged into its peers' ICE ufrags).
    pub(crate) shard: usize,
    /// Engine tuning.
    pub(crate) opts: SfuOptions,
    /// Where outgoing datagrams go (a clone of the shared socket).
    pub(crate) socket: Arc<dyn Transport>,
    /// The address in host candidates.
    pub(crate) advertised: SocketAddr,
    /// Datagrams and commands.
    pub(crate) input: Receiver<ShardMsg>,
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

/// The str0m configuration of every server-side peer; `bwe` turns on send-side bandwidth
/// estimation (TWCC) and str0m's pacer, for subscribers that may need a simulcast step-down.
pub fn rtc_config(bwe: bool) -> RtcConfig {
    let mut cfg = RtcConfig::new()
        .set_ice_lite(true)
        .set_crypto_provider(crate::dtls::provider())
        .set_rtp_mode(true)
        .enable_h265(false)
        .enable_h266(false)
        .set_stats_interval(Some(crate::metrics::STATS_INTERVAL));
    if bwe {
        cfg = cfg.enable_bwe(Some(INITIAL_BWE));
    }
    cfg
}

/// A peer driven on the worker pool: its key, next timeout or failure, and its events.
type Driven = (Key, Result<Instant, String>, Vec<(Key, Event)>);

/// Runs one peer's str0m cycle: the input (or a timeout), then its output until it asks for a
/// timeout; transmits go straight to the socket, events into `events`. A panic inside str0m is
/// caught here and reported as this peer's failure. Free of the engine, so the worker pool can
/// run many peers at once.
fn drive_peer(
    peer: &mut Peer,
    key: Key,
    input: Option<Input<'_>>,
    now: Instant,
    socket: &dyn Transport,
    events: &mut Vec<(Key, Event)>,
) -> Result<Instant, String> {
    peer.dirty = false;
    #[cfg(feature = "fault-injection")]
    let inject = std::mem::take(&mut peer.panic_next);
    let rtc = &mut peer.rtc;
    let res = catch_unwind(AssertUnwindSafe(|| -> Result<Instant, str0m::RtcError> {
        #[cfg(feature = "fault-injection")]
        if inject {
            panic!("injected fault");
        }
        rtc.handle_input(input.unwrap_or(Input::Timeout(now)))?;
        loop {
            match rtc.poll_output()? {
                Output::Timeout(t) => return Ok(t),
                Output::Transmit(t) => {
                    let sent = match t.proto {
                        Protocol::Tcp => socket.send_tcp(&t.contents, t.destination),
                        _ => socket.send_to(&t.contents, t.destination),
                    };
                    if let Err(e) = sent {
                        debug!("send to {} failed: {e}", t.destination);
                    }
                }
                Output::Event(e) => events.push((key, e)),
            }
        }
    }));
    match res {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(format!("rtc error: {e}")),
        Err(_) => Err("media engine panic in peer".into()),
    }
}

/// str0m's standard RTP header extensions without transport-wide-cc.
fn without_twcc() -> ExtensionMap {
    let mut map = ExtensionMap::empty();
    for (id, ext) in ExtensionMap::standard().iter() {
        if *ext != Extension::TransportSequenceNumber {
            map.set(id, ext.clone());
        }
    }
    map
}

// ---------------------------------------------------------------------------------------------
// Generational slab.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    idx: u32,
    gen: u32,
}

struct Slab<T> {
    items: Vec<(u32, Option<T>)>,
    free: Vec<u32>,
}

impl<T> Slab<T> {
    fn new() -> Self {
        Slab {
            items: Vec::new(),
            free: Vec::new(),
        }
    }

    fn insert(&mut self, v: T) -> Key {
        if let Some(idx) = self.free.pop() {
            let slot = &mut self.items[idx as usize];
            slot.0 = slot.0.wrapping_add(1);
            slot.1 = Some(v);
            Key { idx, gen: slot.0 }
        } else {
            let idx = self.items.len() as u32;
            self.items.push((0, Some(v)));
            Key { idx, gen: 0 }
        }
    }

    #[inline]
    fn get(&self, k: Key) -> Option<&T> {
        match self.items.get(k.idx as usize) {
            Some((g, Some(v))) if *g == k.gen => Some(v),
            _ => None,
        }
    }

    #[inline]
    fn get_mut(&mut self, k: Key) -> Option<&mut T> {
        match self.items.get_mut(k.idx as usize) {
            Some((g, Some(v))) if *g == k.gen => Some(v),
            _ => None,
        }
    }

    fn remove(&mut self, k: Key) -> Option<T> {
        match self.items.get_mut(k.idx as usize) {
            Some((g, v @ Some(_))) if *g == k.gen => {
                self.free.push(k.idx);
                v.take()
            }
            _ => None,
        }
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (Key, &mut T)> {
        self.items.iter_mut().enumerate().filter_map(|(i, (g, v))| {
            v.as_mut().map(|v| {
                (
                    Key {
                        idx: i as u32,
                        gen: *g,
                    },
                    v,
                )
            })
        })
    }

    fn iter(&self) -> impl Iterator<Item = (Key, &T)> {
        self.items.iter().enumerate().filter_map(|(i, (g, v))| {
            v.as_ref().map(|v| {
                (
                    Key {
                        idx: i as u32,
                        gen: *g,
                    },
                    v,
                )
            })
        })
    }
}

// ---------------------------------------------------------------------------------------------
// State.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Publisher,
    Subscriber,
}

struct Peer {
    rtc: Rtc,
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
    /// Test hook: panic inside the next drive of this peer.
    #[cfg(feature = "fault-injection")]
    panic_next: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubTrackState {
    Negotiating,
    Open,
    Stopping,
    /// The BUNDLE tag section whose producer is gone: inactive, never stopped (`offer_plan`).
    Parked,
}

struct SubTrack {
    mid: Mid,
    producer: Key,
    state: SubTrackState,
}

#[derive(Default)]
struct SubState {
    tracks: Vec<SubTrack>,
    pending: Option<SdpPendingOffer>,
    /// A change arrived while an offer was unanswered.
    again: bool,
    /// The next offer restarts ICE.
    restart_ice: bool,
    /// The mids of the pending offer, in order: an answer with other mids is not its answer
    /// (e.g. a late answer to the offer of a failed, replaced peer) and is refused without
    /// consuming the pending offer.
    offered_mids: Vec<String>,
}

struct Participant {
    call: CallCid,
    user_id: String,
    gate: Arc<GateCell>,
    publisher: Option<Key>,
    subscriber: Key,
    producers: Vec<Key>,
    sub: SubState,
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
    gate: Arc<GateCell>,
    st: ConsumerState,
    quality: Quality,
    /// Simulcast: the layer being forwarded and the one wanted.
    cur: u8,
    target: u8,
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
}

impl Producer {
    fn track_id(&self) -> String {
        format!("{}:{}", self.owner, self.source)
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
    socket: Arc<dyn Transport>,
    local: SocketAddr,
    untagged: UfragMap,
    input: Receiver<ShardMsg>,
    events: mpsc::UnboundedSender<SfuEvent>,
    peers: Slab<Peer>,
    producers: Slab<Producer>,
    parts: HashMap<String, Participant>,
    calls: HashMap<CallCid, CallState>,
    /// Ufrag -> peer and ICE-validated address -> peer.
    routes: PeerRoutes<Key>,
    timers: BinaryHeap<Reverse<(Instant, Key)>>,
    /// Events collected while driving peers, handled after.
    pending_events: Vec<(Key, Event)>,
    dirty: Vec<Key>,
    next_tick: Instant,
    ticks: u64,
    /// Metrics, written by this thread only.
    counters: Arc<SfuCounters>,
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
        Engine {
            shard,
            opts,
            socket,
            local: advertised,
            untagged,
            input,
            events,
            peers: Slab::new(),
            producers: Slab::new(),
            parts: HashMap::new(),
            calls: HashMap::new(),
            routes: PeerRoutes::default(),
            timers: BinaryHeap::new(),
            pending_events: Vec::new(),
            dirty: Vec::new(),
            next_tick: Instant::now() + TICK,
            ticks: 0,
            counters,
        }
    }

    /// The shard died (its loop panicked): every participant's media fails, and ufrags it
    /// registered for the receive thread are withdrawn. The state may be half-updated, so
    /// only participant ids and peer ufrags are read.
    fn died(&mut self) {
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

    fn run(&mut self) {
        loop {
            let now = Instant::now();
            self.fire_timers(now);
            if now >= self.next_tick {
                self.housekeeping(now);
                self.next_tick = now + TICK;
            }
            self.settle(Instant::now());

            let next = self
                .timers
                .peek()
                .map(|Reverse((t, _))| *t)
                .unwrap_or(self.next_tick)
                .min(self.next_tick);
            // Sleep at least a millisecond: the timers that fall due meanwhile fire together
            // (str0m's deadlines tolerate that), instead of a wake-up per sub-ms deadline.
            let wait = next
                .saturating_duration_since(Instant::now())
                .max(MIN_SLEEP);
            // The batch of work is done: what it queued leaves in one sendmmsg before we wait.
            self.socket.flush();
            match self.input.recv_timeout(wait) {
                Ok(ShardMsg::Datagram { data, src }) => {
                    self.on_datagram(&data, src, Instant::now());
                }
                Ok(ShardMsg::TcpPacket { data, src }) => {
                    self.on_packet(Protocol::Tcp, &data, src, Instant::now());
                }
                Ok(ShardMsg::Cmd(Cmd::Stop)) | Err(RecvTimeoutError::Disconnected) => {
                    info!(shard = self.shard, "media engine shard stopping");
                    return;
                }
                Ok(ShardMsg::Cmd(cmd)) => {
                    let now = Instant::now();
                    self.on_cmd(cmd, now);
                    self.settle(now);
                    self.publish_gauges();
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    // ----------------------------------------------------------------------------------------
    // Driving peers.

    /// One datagram from the receive thread: STUN goes to the peer its ufrag names, anything
    /// else only to the peer that validated its source address; the rest is dropped and
    /// counted (`greenroom_udp_unrouted_total`). No scan over the shard's peers.
    pub(crate) fn on_datagram(&mut self, data: &[u8], src: SocketAddr, now: Instant) {
        self.on_packet(Protocol::Udp, data, src, now);
    }

    /// A packet over UDP or ICE-TCP (addressed to the matching local candidate).
    fn on_packet(&mut self, proto: Protocol, data: &[u8], src: SocketAddr, now: Instant) {
        let local = match (proto, self.opts.ice_tcp_port) {
            (Protocol::Tcp, Some(port)) => SocketAddr::new(self.local.ip(), port),
            _ => self.local,
        };
        let Some(route) = self.routes.candidate(data, src) else {
            add(&self.counters.unrouted, 1);
            debug!("no peer for datagram from {src}");
            return;
        };
        let Ok(recv) = Receive::new(proto, src, local, data) else {
            add(&self.counters.unrouted, 1);
            return; // Not STUN, DTLS, RTP or RTCP.
        };
        let input = Input::Receive(now, recv);
        let (Route::Stun(key) | Route::Validated(key)) = route;
        // For STUN, str0m checks USERNAME and MESSAGE-INTEGRITY here; for the rest, that the
        // source is one of the peer's candidate pairs.
        let accepted = self.peers.get(key).is_some_and(|p| {
            catch_unwind(AssertUnwindSafe(|| p.rtc.accepts(&input))).unwrap_or(false)
        });
        if !accepted {
            add(&self.counters.unrouted, 1);
            debug!("peer refuses datagram from {src}");
            return;
        }
        if matches!(route, Route::Stun(_)) {
            self.routes.validated(src, key);
        }
        add(&self.counters.drives[DRIVE_INPUT], 1);
        self.drive(key, Some(input), now);
        self.settle(now);
    }

    /// Runs one peer: input (or a timeout), then drains its output until it asks for a timeout.
    fn drive(&mut self, key: Key, input: Option<Input<'_>>, now: Instant) {
        let Engine {
            peers,
            socket,
            pending_events,
            ..
        } = self;
        let Some(peer) = peers.get_mut(key) else {
            return;
        };
        let res = drive_peer(peer, key, input, now, &**socket, pending_events);
        self.after_drive(key, res);
    }

    /// Drives every dirty peer at once on the worker pool (a large fan-out), then files their
    /// events, timeouts and failures in this thread.
    fn drive_dirty_parallel(&mut self, now: Instant) {
        add(&self.counters.drives[DRIVE_OUTPUT], self.dirty.len() as u64);
        add(&self.counters.parallel_fanouts, 1);
        self.dirty.clear();
        let Engine { peers, socket, .. } = self;
        let socket: &dyn Transport = &**socket;
        let batch: Vec<(Key, &mut Peer)> = peers.iter_mut().filter(|(_, p)| p.dirty).collect();
        let done: Vec<Driven> = batch
            .into_par_iter()
            .map(|(key, peer)| {
                let mut events = Vec::new();
                let res = drive_peer(peer, key, None, now, socket, &mut events);
                (key, res, events)
            })
            .collect();
        for (key, res, events) in done {
            self.pending_events.extend(events);
            self.after_drive(key, res);
        }
    }

    /// Files a drive's outcome: the peer's next timeout, or its failure.
    fn after_drive(&mut self, key: Key, res: Result<Instant, String>) {
        let fail = match res {
            Ok(t) => {
                let Some(peer) = self.peers.get_mut(key) else {
                    return;
                };
                if Some(t) != peer.timeout {
                    peer.timeout = Some(t);
                    self.timers.push(Reverse((t, key)));
                }
                (!peer.rtc.is_alive()).then(|| "connection closed".to_owned())
            }
            Err(reason) => Some(reason),
        };
        if let Some(reason) = fail {
            self.fail_peer(key, &reason);
        }
    }

    fn mark_dirty(&mut self, key: Key) {
        if let Some(p) = self.peers.get_mut(key) {
            if !p.dirty {
                p.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    /// Fires the timers due at `now` and settles (the run loop's work without waiting);
    /// used by the fuzz harness, which owns the clock.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn advance(&mut self, now: Instant) {
        self.fire_timers(now);
        self.settle(now);
    }

    /// Handles collected events and drives dirty peers until nothing is left.
    fn settle(&mut self, now: Instant) {
        loop {
            if !self.pending_events.is_empty() {
                let mut evs = std::mem::take(&mut self.pending_events);
                for (k, e) in evs.drain(..) {
                    self.on_event(k, e, now);
                }
                if self.pending_events.is_empty() {
                    self.pending_events = evs;
                }
                continue;
            }
            let min = self.opts.parallel_fanout_min;
            if min > 0 && self.dirty.len() >= min {
                self.drive_dirty_parallel(now);
                continue;
            }
            if let Some(k) = self.dirty.pop() {
                add(&self.counters.drives[DRIVE_OUTPUT], 1);
                self.drive(k, None, now);
                continue;
            }
            break;
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        // Collect the due peers first and drive each once per pass: a peer whose str0m asks
        // again for a timeout at `now` is re-armed by `drive` and waits for the next pass,
        // instead of being popped and driven again here forever (the shard would spin).
        let mut due: Vec<Key> = Vec::new();
        while let Some(Reverse((t, key))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            if let Some(p) = self.peers.get_mut(key) {
                if p.timeout == Some(t) {
                    // Re-armed by `drive` whatever timeout str0m asks for next.
                    p.timeout = None;
                    due.push(key);
                }
            }
        }
        for key in due {
            add(&self.counters.drives[DRIVE_TIMER], 1);
            self.drive(key, None, now);
        }
    }

    /// A new server-side peer; `bwe` turns on bandwidth estimation (subscribers only).
    fn new_peer(&mut self, owner: &str, role: Role, bwe: bool, now: Instant) -> Key {
        let cfg = match role {
            // Publishers keep transport-wide-cc: their own uplink estimate needs our feedback.
            Role::Publisher => rtc_config(false),
            Role::Subscriber if bwe => rtc_config(true),
            // Without an estimate, no TWCC either: the client then sends no TWCC feedback
            // (about ten SRTCP packets per second per subscriber to decrypt for nothing).
            Role::Subscriber => rtc_config(false).set_extension_map(without_twcc()),
        };
        let creds = shard_ufrag(self.shard);
        let ufrag = creds.ufrag.clone();
        let mut rtc = cfg.set_local_ice_credentials(creds).build(now);
        match Candidate::host(self.local, "udp") {
            Ok(c) => {
                rtc.add_local_candidate(c);
            }
            Err(e) => warn!("host candidate {}: {e}", self.local),
        }
        if let Some(port) = self.opts.ice_tcp_port {
            let addr = SocketAddr::new(self.local.ip(), port);
            match crate::tcp::candidate(addr) {
                Ok(c) => {
                    rtc.add_local_candidate(c);
                }
                Err(e) => warn!("TCP host candidate {addr}: {e}"),
            }
        }
        let key = self.peers.insert(Peer {
            rtc,
            ufrag: ufrag.clone(),
            owner: owner.to_owned(),
            role,
            timeout: None,
            dirty: false,
            connected: false,
            deadline: None,
            ssrcs: Vec::new(),
            sub_mids: HashMap::new(),
            bwe: None,
            nacks_seen: Vec::new(),
            untagged_ufrag: None,
            #[cfg(feature = "fault-injection")]
            panic_next: false,
        });
        self.routes.set_ufrag(key, None, &ufrag);
        key
    }

    // ----------------------------------------------------------------------------------------
    // Events from peers.

    fn on_event(&mut self, key: Key, ev: Event, now: Instant) {
        match ev {
            Event::RtpPacket(pkt) => self.on_rtp(key, pkt, now),
            Event::KeyframeRequest(req) => {
                let prod = self
                    .peers
                    .get(key)
                    .and_then(|p| p.sub_mids.get(&req.mid).copied());
                if let Some(pk) = prod {
                    let layer = self.consumer_layer(pk, key);
                    self.request_keyframe(pk, layer, req.kind, now, false);
                }
            }
            Event::Connected => {
                if let Some(p) = self.peers.get_mut(key) {
                    p.connected = true;
                    p.deadline = None;
                    debug!("peer {} ({:?}) connected", p.owner, p.role);
                }
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.fail_peer(key, "ICE disconnected");
            }
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                if let Some(p) = self.peers.get_mut(key) {
                    p.bwe = Some(estimate);
                }
            }
            Event::Closed => self.fail_peer(key, "closed by remote"),
            Event::MediaIngressStats(s) => {
                let clock = self.clock_rate_of(key, s.mid);
                let c = &self.counters;
                if let Some(rtt) = s.rtt {
                    c.rtt[INGRESS].observe(rtt.as_secs_f64());
                }
                if let Some(loss) = s.loss {
                    c.loss[INGRESS].observe(f64::from(loss));
                }
                c.jitter[INGRESS].observe(f64::from(s.jitter) / clock);
                self.count_nacks(key, s.mid, s.rid, s.nacks, INGRESS);
            }
            Event::MediaEgressStats(s) => {
                let clock = self.clock_rate_of(key, s.mid);
                let c = &self.counters;
                if let Some(rtt) = s.rtt {
                    c.rtt[EGRESS].observe(rtt.as_secs_f64());
                }
                if let Some(loss) = s.loss {
                    c.loss[EGRESS].observe(f64::from(loss));
                }
                if let Some(r) = &s.remote {
                    c.jitter[EGRESS].observe(f64::from(r.jitter) / clock);
                }
                self.count_nacks(key, s.mid, s.rid, s.nacks, EGRESS);
            }
            _ => {}
        }
    }

    /// The RTP clock rate of a peer's media (for jitter in seconds): the producer's codec when
    /// known, else 48 kHz audio / 90 kHz video.
    fn clock_rate_of(&self, key: Key, mid: Mid) -> f64 {
        let Some(peer) = self.peers.get(key) else {
            return 90_000.0;
        };
        let pk = match peer.role {
            Role::Subscriber => peer.sub_mids.get(&mid).copied(),
            Role::Publisher => self.parts.get(&peer.owner).and_then(|p| {
                p.producers
                    .iter()
                    .copied()
                    .find(|pk| self.producers.get(*pk).is_some_and(|pr| pr.mid == mid))
            }),
        };
        match pk.and_then(|pk| self.producers.get(pk)) {
            Some(p) => match p.params.first() {
                Some((_, params)) => f64::from(params.spec().clock_rate.get()),
                None if p.kind == MediaKind::Audio => 48_000.0,
                None => 90_000.0,
            },
            None => 90_000.0,
        }
    }

    /// Adds the growth of a stream's cumulative NACK count (from a stats event) to the counter.
    fn count_nacks(&mut self, key: Key, mid: Mid, rid: Option<Rid>, total: u64, dir: usize) {
        let Some(peer) = self.peers.get_mut(key) else {
            return;
        };
        let delta = match peer
            .nacks_seen
            .iter_mut()
            .find(|(m, r, _)| *m == mid && *r == rid)
        {
            Some((_, _, seen)) => {
                // A restarted stream starts counting from zero again.
                let d = if total >= *seen { total - *seen } else { total };
                *seen = total;
                d
            }
            None => {
                peer.nacks_seen.push((mid, rid, total));
                total
            }
        };
        if delta > 0 {
            add(&self.counters.nacks[dir], delta);
        }
    }

    /// Recomputes the producer, consumer and peer gauges.
    fn publish_gauges(&self) {
        let (mut producers, mut consumers) = ([0u64; 2], [0u64; 2]);
        for (_, p) in self.producers.iter() {
            let k = kind_idx(p.kind);
            producers[k] += 1;
            consumers[k] += p.consumers.len() as u64;
        }
        let c = &self.counters;
        for k in 0..2 {
            c.producers[k].store(producers[k], Relaxed);
            c.consumers[k].store(consumers[k], Relaxed);
        }
        c.peers.store(self.peers.iter().count() as u64, Relaxed);
    }

    fn consumer_layer(&self, pk: Key, sub: Key) -> Option<usize> {
        let prod = self.producers.get(pk)?;
        let c = prod.consumers.iter().find(|c| c.peer == sub)?;
        let l = if c.target != NO_LAYER {
            c.target
        } else {
            c.cur
        };
        (l != NO_LAYER).then_some(usize::from(l))
    }

    /// The producer and layer of an incoming SSRC (cached per publisher peer).
    fn resolve_ssrc(&mut self, key: Key, ssrc: Ssrc) -> Option<(Key, u8)> {
        let peer = self.peers.get_mut(key)?;
        if let Some((_, pk, l)) = peer.ssrcs.iter().find(|(s, _, _)| *s == ssrc) {
            return Some((*pk, *l));
        }
        let (mid, rid) = {
            let mut api = peer.rtc.direct_api();
            let rx = api.stream_rx(&ssrc)?;
            (rx.mid(), rx.rid())
        };
        let owner = self.parts.get(&peer.owner)?;
        let pk = owner
            .producers
            .iter()
            .copied()
            .find(|pk| self.producers.get(*pk).is_some_and(|p| p.mid == mid))?;
        let prod = self.producers.get_mut(pk)?;
        let li = match prod.layers.iter().position(|l| l.rid == rid) {
            Some(i) => i,
            None => {
                prod.layers.push(Layer {
                    rid,
                    ssrc: None,
                    last_keyframe_req: None,
                    bytes: 0,
                    rate_bps: 0.0,
                });
                prod.layers.len() - 1
            }
        };
        let layer = &mut prod.layers[li];
        if layer.ssrc.is_some_and(|s| s != ssrc) {
            // The publisher restarted this stream: new epoch for every consumer.
            prod.epoch = prod.epoch.wrapping_add(1);
        }
        layer.ssrc = Some(ssrc);
        let li = li.min(usize::from(NO_LAYER - 1)) as u8;
        peer.ssrcs.push((ssrc, pk, li));
        Some((pk, li))
    }

    /// The hot path: one incoming RTP packet to every consumer of its producer.
    fn on_rtp(&mut self, key: Key, pkt: RtpPacket, now: Instant) {
        let Some((pk, layer)) = self.resolve_ssrc(key, pkt.header.ssrc) else {
            return;
        };
        let Some(prod) = self.producers.get_mut(pk) else {
            return;
        };
        let len = pkt.payload.len() as u64;
        if let Some(l) = prod.layers.get_mut(usize::from(layer)) {
            l.bytes += len;
        }
        let kind = kind_idx(prod.kind);
        let counters = &*self.counters;
        add(&counters.rx_packets[kind], 1);
        add(&counters.rx_bytes[kind], len);
        // Gate: one bit test against the publisher's current gate.
        if !prod.gate.sends(prod.bit) {
            prod.open = false;
            add(&counters.gate_drops[cap_idx(prod.source)], 1);
            return;
        }
        let mut want_keyframe = false;
        if !prod.open {
            prod.open = true;
            prod.epoch = prod.epoch.wrapping_add(1);
            want_keyframe = prod.kind == MediaKind::Video;
        }
        let pt = pkt.header.payload_type;
        let params = match prod.params.iter().find(|(p, _)| *p == pt) {
            Some((_, params)) => *params,
            None => {
                let Some(pubpeer) = self.peers.get(prod.publisher) else {
                    return;
                };
                let Some(params) = pubpeer.rtc.codec_config().find(|p| p.pt() == pt).copied()
                else {
                    return;
                };
                prod.params.push((pt, params));
                params
            }
        };
        let codec = params.spec().codec;
        let clock_rate = params.spec().clock_rate.get();
        let video = prod.kind == MediaKind::Video;
        let ext = &pkt.header.ext_vals;
        if !video {
            if let Some(level) = ext.audio_level {
                prod.level.observe(level);
            }
        }
        let out_ext = ExtensionValues {
            audio_level: ext.audio_level,
            voice_activity: ext.voice_activity,
            video_orientation: ext.video_orientation,
            ..Default::default()
        };
        let simulcast = prod.layers.len() > 1;
        let keyframe = simulcast && is_keyframe(codec, &pkt.payload);
        let in_seq = *pkt.seq_no;
        let in_ts = pkt.header.timestamp;
        let marker = pkt.header.marker;
        let epoch = prod.epoch;
        let Engine {
            peers,
            dirty,
            producers,
            counters,
            ..
        } = self;
        let Some(prod) = producers.get_mut(pk) else {
            return;
        };
        // Per-packet tallies kept in registers, published once after the fan-out.
        let mut forwarded = 0u64;
        let mut drops = [0u64; 3];
        for c in &mut prod.consumers {
            if simulcast && layer != c.cur {
                if layer == c.target && keyframe {
                    c.cur = layer;
                    c.st.fwd.resync();
                } else {
                    continue;
                }
            }
            let receives = c.gate.receives();
            let (seq, ts, resumed) =
                match c
                    .st
                    .step(receives, epoch, in_seq, in_ts, pkt.timestamp, clock_rate)
                {
                    Step::Drop => {
                        let why = if !receives {
                            ConsumerDrop::Receive
                        } else if c.st.paused {
                            ConsumerDrop::Paused
                        } else {
                            ConsumerDrop::Other
                        };
                        drops[why as usize] += 1;
                        continue;
                    }
                    Step::Forward { seq, ts, resumed } => (seq, ts, resumed),
                };
            let Some(sub) = peers.get_mut(c.peer) else {
                drops[ConsumerDrop::Other as usize] += 1;
                continue;
            };
            let out_pt = match c.st.pts.get(*pt) {
                PtLookup::Mapped(v) => v,
                PtLookup::Unmappable => {
                    drops[ConsumerDrop::Other as usize] += 1;
                    continue;
                }
                PtLookup::Unknown => {
                    let m = sub.rtc.codec_config().match_params(params).map(|p| *p.pt());
                    c.st.pts.set(*pt, m);
                    match m {
                        Some(v) => v,
                        None => {
                            warn!("subscriber {} cannot take codec {codec:?}", sub.owner);
                            drops[ConsumerDrop::Other as usize] += 1;
                            continue;
                        }
                    }
                }
            };
            let mut api = sub.rtc.direct_api();
            let Some(tx) = api.stream_tx(&c.ssrc) else {
                drops[ConsumerDrop::Other as usize] += 1;
                continue;
            };
            tx.write_rtp(
                RtpWrite::new(
                    Pt::from(out_pt),
                    SeqNo::from(seq),
                    ts,
                    pkt.timestamp,
                    pkt.payload.clone(),
                )
                .marker(marker)
                .ext_vals(out_ext.clone())
                .nackable(video),
            );
            if !sub.dirty {
                sub.dirty = true;
                dirty.push(c.peer);
            }
            forwarded += 1;
            want_keyframe |= resumed && video;
        }
        if forwarded > 0 {
            add(&counters.fwd_packets[kind], forwarded);
            add(&counters.fwd_bytes[kind], forwarded * len);
        }
        if drops != [0; 3] {
            for (cell, n) in counters.consumer_drops.iter().zip(drops) {
                add(cell, n);
            }
        }
        if want_keyframe {
            // The producer reopened (a re-grant) or a consumer resumed: its subscribers wait
            // for a keyframe, so this request bypasses the rate limit.
            self.request_keyframe(
                pk,
                Some(usize::from(layer)),
                KeyframeRequestKind::Pli,
                now,
                true,
            );
        }
    }

    fn request_keyframe(
        &mut self,
        pk: Key,
        layer: Option<usize>,
        kind: KeyframeRequestKind,
        now: Instant,
        force: bool,
    ) {
        let Some(prod) = self.producers.get_mut(pk) else {
            return;
        };
        // A gated publisher's keyframe would be dropped by the gate: asking for it only spends
        // the rate limit that the resume's own request needs.
        if prod.kind != MediaKind::Video || !prod.gate.sends(prod.bit) {
            return;
        }
        let li = layer.unwrap_or(0);
        let rid = match prod.layers.get_mut(li) {
            Some(l) => {
                if !keyframe_due(l.last_keyframe_req, now, force) {
                    return;
                }
                l.last_keyframe_req = Some(now);
                l.rid
            }
            None => None,
        };
        let (publisher, mid) = (prod.publisher, prod.mid);
        let Some(peer) = self.peers.get_mut(publisher) else {
            return;
        };
        let sent = catch_unwind(AssertUnwindSafe(|| {
            let mut api = peer.rtc.direct_api();
            match api.stream_rx_by_mid(mid, rid) {
                Some(rx) => {
                    rx.request_keyframe(kind);
                    true
                }
                None => false,
            }
        }))
        .unwrap_or(false);
        if sent {
            add(&self.counters.plis, 1);
            self.mark_dirty(publisher);
        }
    }

    // ----------------------------------------------------------------------------------------
    // Commands.

    /// Applies one command from the handle.
    pub(crate) fn on_cmd(&mut self, cmd: Cmd, now: Instant) {
        match cmd {
            Cmd::Join {
                call,
                pid,
                user_id,
                gate,
                bwe,
            } => self.join(call, pid, user_id, gate, bwe, now),
            Cmd::Publish {
                pid,
                sdp,
                tracks,
                reply,
            } => {
                let r = self.publish(&pid, &sdp, tracks, now);
                let _ = reply.send(r);
            }
            Cmd::RestartIce { pid } => {
                if let Some(p) = self.parts.get_mut(&pid) {
                    p.sub.restart_ice = true;
                }
                self.renegotiate(&pid, now);
            }
            Cmd::SubscriberAnswer { pid, sdp, reply } => {
                let r = self.subscriber_answer(&pid, &sdp, now);
                let _ = reply.send(r);
            }
            Cmd::IceCandidate {
                pid,
                target,
                candidate,
            } => self.ice_candidate(&pid, target, &candidate),
            Cmd::Unpublish { pid, source } => {
                let pks: Vec<Key> = self
                    .parts
                    .get(&pid)
                    .map(|p| p.producers.clone())
                    .unwrap_or_default();
                for pk in pks {
                    if self.producers.get(pk).is_some_and(|p| p.source == source) {
                        self.remove_producer(pk);
                    }
                }
                self.renegotiate_call_of(&pid, now);
            }
            Cmd::SetSubscribed {
                pid,
                track_id,
                subscribed,
            } => self.set_subscribed(&pid, &track_id, subscribed, now),
            Cmd::SetQuality {
                pid,
                track_id,
                quality,
            } => {
                if let Some(p) = self.parts.get_mut(&pid) {
                    p.quality.insert(track_id.clone(), quality);
                }
                if let Some((pk, sub)) = self.find_consumer(&pid, &track_id) {
                    if let Some(c) = self
                        .producers
                        .get_mut(pk)
                        .and_then(|p| p.consumers.iter_mut().find(|c| c.peer == sub))
                    {
                        c.quality = quality;
                    }
                    self.choose_layers(pk, now);
                }
            }
            Cmd::Leave { pid } => self.leave(&pid, now),
            #[cfg(feature = "fault-injection")]
            Cmd::InjectPanic { pid, target } => {
                let key = self.parts.get(&pid).and_then(|p| match target {
                    PeerTarget::Publisher => p.publisher,
                    PeerTarget::Subscriber => Some(p.subscriber),
                });
                if let Some(peer) = key.and_then(|k| self.peers.get_mut(k)) {
                    peer.panic_next = true;
                }
            }
            #[cfg(feature = "fault-injection")]
            Cmd::PanicShard => panic!("injected shard fault"),
            Cmd::Stop => {}
        }
    }

    fn join(
        &mut self,
        call: CallCid,
        pid: String,
        user_id: String,
        gate: Arc<GateCell>,
        bwe: bool,
        now: Instant,
    ) {
        if self.parts.contains_key(&pid) {
            self.leave(&pid, now);
        }
        let subscriber = self.new_peer(&pid, Role::Subscriber, bwe, now);
        self.parts.insert(
            pid.clone(),
            Participant {
                call: call.clone(),
                user_id,
                gate,
                publisher: None,
                subscriber,
                producers: Vec::new(),
                sub: SubState::default(),
                unsubscribed: HashSet::new(),
                quality: HashMap::new(),
                bwe,
            },
        );
        self.calls
            .entry(call)
            .or_default()
            .members
            .push(pid.clone());
        self.renegotiate(&pid, now);
    }

    fn publish(
        &mut self,
        pid: &str,
        sdp: &str,
        tracks: Vec<PublishTrack>,
        now: Instant,
    ) -> Result<String, SfuError> {
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| SfuError::Sdp(e.to_string()))?;
        let part = self
            .parts
            .get(pid)
            .ok_or_else(|| SfuError::UnknownParticipant(pid.to_owned()))?;
        let existing = part.publisher.filter(|k| self.peers.get(*k).is_some());
        let key = match existing {
            Some(k) => k,
            None => self.new_peer(pid, Role::Publisher, false, now),
        };
        if let Some(p) = self.parts.get_mut(pid) {
            p.publisher = Some(key);
        }
        let peer = self
            .peers
            .get_mut(key)
            .ok_or_else(|| SfuError::UnknownParticipant(pid.to_owned()))?;
        let rtc = &mut peer.rtc;
        let answer = match catch_unwind(AssertUnwindSafe(|| rtc.sdp_api().accept_offer(offer))) {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => return Err(SfuError::Sdp(e.to_string())),
            Err(_) => {
                self.fail_peer(key, "media engine panic while applying the offer");
                return Err(SfuError::Sdp("offer made the engine fail".into()));
            }
        };
        if !peer.connected && peer.deadline.is_none() {
            peer.deadline = Some(now + self.opts.connect_timeout);
        }
        // A client-initiated ICE restart gave this peer random credentials without our shard
        // tag: let the receive thread find the shard by the new ufrag.
        let ufrag = peer.rtc.direct_api().local_ice_credentials().ufrag;
        if ufrag != peer.ufrag {
            self.routes.set_ufrag(key, Some(&peer.ufrag), &ufrag);
            peer.ufrag = ufrag.clone();
        }
        if shard_of_ufrag(&ufrag) != Some(self.shard) && peer.untagged_ufrag != Some(ufrag.clone())
        {
            let mut map = self.untagged.write();
            if let Some(old) = peer.untagged_ufrag.take() {
                map.remove(&old);
            }
            map.insert(ufrag.clone(), self.shard);
            peer.untagged_ufrag = Some(ufrag);
        }
        peer.ssrcs.clear();
        // Resolve each announced track to its m-line.
        let mut wanted: Vec<(TrackSource, Mid, MediaKind)> = Vec::new();
        for t in &tracks {
            let mid = Mid::from(t.mid.as_str());
            match peer.rtc.media(mid) {
                Some(m) if m.disabled() => return Err(SfuError::TrackRejected(t.mid.clone())),
                Some(m) if m.kind().is_audio() == t.source.is_audio() => {
                    if !wanted.iter().any(|w| w.0 == t.source) {
                        wanted.push((t.source, mid, m.kind()));
                    }
                }
                Some(_) => {
                    return Err(SfuError::Sdp(format!(
                        "mid {} does not carry {} media",
                        t.mid,
                        if t.source.is_audio() {
                            "audio"
                        } else {
                            "video"
                        }
                    )))
                }
                None => return Err(SfuError::Sdp(format!("mid {} not in the offer", t.mid))),
            }
        }
        let Some(part) = self.parts.get(pid) else {
            return Err(SfuError::UnknownParticipant(pid.to_owned()));
        };
        let (call, gate, old) = (part.call.clone(), part.gate.clone(), part.producers.clone());
        let mut changed = false;
        // Drop producers whose source left the list.
        for pk in &old {
            let keep = self
                .producers
                .get(*pk)
                .is_some_and(|p| wanted.iter().any(|w| w.0 == p.source));
            if !keep {
                self.remove_producer(*pk);
                changed = true;
            }
        }
        for (source, mid, kind) in wanted {
            let pks = self
                .parts
                .get(pid)
                .map(|p| p.producers.clone())
                .unwrap_or_default();
            let existing = pks
                .into_iter()
                .find(|pk| self.producers.get(*pk).is_some_and(|p| p.source == source));
            match existing.and_then(|pk| self.producers.get_mut(pk)) {
                Some(p) => {
                    if p.mid != mid {
                        p.mid = mid;
                        p.layers.clear();
                        p.epoch = p.epoch.wrapping_add(1);
                    }
                    p.publisher = key;
                    p.params.clear();
                }
                None => {
                    let pk = self.producers.insert(Producer {
                        owner: pid.to_owned(),
                        call: call.clone(),
                        source,
                        bit: SourceSet::bit(source),
                        gate: gate.clone(),
                        publisher: key,
                        mid,
                        kind,
                        epoch: 0,
                        open: false,
                        layers: Vec::new(),
                        params: Vec::new(),
                        consumers: Vec::new(),
                        level: LevelMeter::default(),
                    });
                    if let Some(p) = self.parts.get_mut(pid) {
                        p.producers.push(pk);
                    }
                    changed = true;
                }
            }
        }
        self.mark_dirty(key);
        if changed {
            self.renegotiate_call_of(pid, now);
        }
        Ok(crate::sdp::candidates_in_bundled_section(
            &answer.to_sdp_string(),
        ))
    }

    fn remove_producer(&mut self, pk: Key) {
        let Some(prod) = self.producers.remove(pk) else {
            return;
        };
        if let Some(p) = self.parts.get_mut(&prod.owner) {
            p.producers.retain(|k| *k != pk);
        }
        if let Some(peer) = self.peers.get_mut(prod.publisher) {
            peer.ssrcs.retain(|(_, k, _)| *k != pk);
        }
        for c in &prod.consumers {
            if let Some(peer) = self.peers.get_mut(c.peer) {
                peer.sub_mids.retain(|_, k| *k != pk);
            }
        }
    }

    /// Re-offers to everyone in `pid`'s call except `pid` (their track set changed).
    fn renegotiate_call_of(&mut self, pid: &str, now: Instant) {
        let Some(call) = self.parts.get(pid).map(|p| p.call.clone()) else {
            return;
        };
        let members = self
            .calls
            .get(&call)
            .map(|c| c.members.clone())
            .unwrap_or_default();
        for m in members.iter().filter(|m| *m != pid) {
            self.renegotiate(m, now);
        }
    }

    /// Brings `pid`'s subscriber peer in line with the producers it may receive: adds media
    /// for new producers, stops media of gone ones, offers (or queues if an offer is pending).
    fn renegotiate(&mut self, pid: &str, now: Instant) {
        let Some(part) = self.parts.get(pid) else {
            return;
        };
        if part.sub.pending.is_some() {
            if let Some(p) = self.parts.get_mut(pid) {
                p.sub.again = true;
            }
            return;
        }
        let call = part.call.clone();
        let sub_key = part.subscriber;
        let desired: Vec<Key> = self
            .producers
            .iter()
            .filter(|(_, p)| p.call == call && p.owner != pid)
            .map(|(k, _)| k)
            .collect();
        let Some(part) = self.parts.get_mut(pid) else {
            return;
        };
        let Some(peer) = self.peers.get_mut(sub_key) else {
            return;
        };
        let producers = &self.producers;
        let restart_ice = std::mem::take(&mut part.sub.restart_ice);
        let res = catch_unwind(AssertUnwindSafe(|| {
            let mut api = peer.rtc.sdp_api();
            if restart_ice {
                api.ice_restart(true);
            }
            // A gone producer's section is stopped, except the BUNDLE tag (the first section
            // not stopped): Chromium tears the bundled transport down when it is rejected
            // (the peer then dies "connection closed"), so it is parked inactive, for good.
            let tag = part
                .sub
                .tracks
                .iter()
                .position(|t| t.state != SubTrackState::Stopping);
            for (i, t) in part.sub.tracks.iter_mut().enumerate() {
                let stale = matches!(t.state, SubTrackState::Open | SubTrackState::Negotiating)
                    && producers.get(t.producer).is_none();
                if !stale {
                    continue;
                }
                match crate::offer_plan::stale_section(tag == Some(i)) {
                    crate::offer_plan::Stale::Stop => {
                        api.stop_media(t.mid);
                        t.state = SubTrackState::Stopping;
                    }
                    crate::offer_plan::Stale::Park => {
                        api.set_direction(t.mid, Direction::Inactive);
                        t.state = SubTrackState::Parked;
                    }
                }
            }
            for pk in &desired {
                if part.sub.tracks.iter().any(|t| t.producer == *pk) {
                    continue;
                }
                let Some(prod) = producers.get(*pk) else {
                    continue;
                };
                let mid = api.add_media(
                    prod.kind,
                    Direction::SendOnly,
                    Some(prod.owner.clone()),
                    Some(prod.track_id()),
                    None,
                );
                part.sub.tracks.push(SubTrack {
                    mid,
                    producer: *pk,
                    state: SubTrackState::Negotiating,
                });
            }
            if !api.has_changes() {
                return None;
            }
            api.apply()
        }));
        let (offer, pending) = match res {
            Ok(Some(x)) => x,
            Ok(None) => return,
            Err(_) => {
                self.fail_peer(sub_key, "media engine panic while creating an offer");
                return;
            }
        };
        let offer_sdp = crate::sdp::candidates_in_bundled_section(&offer.to_sdp_string());
        part.sub.offered_mids = crate::sdp::mids(&offer_sdp);
        part.sub.pending = Some(pending);
        if !peer.connected && peer.deadline.is_none() {
            peer.deadline = Some(now + self.opts.connect_timeout);
        }
        let listed: Vec<(Mid, Key)> = part
            .sub
            .tracks
            .iter()
            .filter(|t| matches!(t.state, SubTrackState::Open | SubTrackState::Negotiating))
            .map(|t| (t.mid, t.producer))
            .collect();
        let tracks = listed
            .into_iter()
            .filter_map(|(mid, pk)| {
                let prod = self.producers.get(pk)?;
                Some(SubscribedTrack {
                    mid: mid.to_string(),
                    track: TrackInfo {
                        track_id: prod.track_id(),
                        participant_id: prod.owner.clone(),
                        user_id: self
                            .parts
                            .get(&prod.owner)
                            .map(|p| p.user_id.clone())
                            .unwrap_or_default(),
                        source: prod.source,
                        muted: !prod.gate.sends(prod.bit),
                    },
                })
            })
            .collect();
        let _ = self.events.send(SfuEvent::SubscriberOffer {
            participant_id: pid.to_owned(),
            sdp: offer_sdp,
            tracks,
        });
    }

    /// Routes a peer's STUN by its local ufrag after an ICE restart changed it (the new one
    /// lacks the shard tag, so it goes into the shared untagged map too).
    fn route_new_local_ufrag(&mut self, key: Key) {
        let Some(peer) = self.peers.get_mut(key) else {
            return;
        };
        let ufrag = peer.rtc.direct_api().local_ice_credentials().ufrag;
        if ufrag == peer.ufrag {
            return;
        }
        self.routes.set_ufrag(key, Some(&peer.ufrag), &ufrag);
        peer.ufrag = ufrag.clone();
        if shard_of_ufrag(&ufrag) != Some(self.shard) {
            let mut map = self.untagged.write();
            if let Some(old) = peer.untagged_ufrag.take() {
                map.remove(&old);
            }
            map.insert(ufrag.clone(), self.shard);
            peer.untagged_ufrag = Some(ufrag);
        }
    }

    fn subscriber_answer(&mut self, pid: &str, sdp: &str, now: Instant) -> Result<(), SfuError> {
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| SfuError::Sdp(e.to_string()))?;
        let part = self
            .parts
            .get_mut(pid)
            .ok_or_else(|| SfuError::UnknownParticipant(pid.to_owned()))?;
        if part.sub.pending.is_some() && crate::sdp::mids(sdp) != part.sub.offered_mids {
            // Not the answer to this offer (a late one to a replaced peer's offer): applying it
            // would spend the offer the client is about to answer.
            return Err(SfuError::Sdp(
                "the answer's mids are not the pending subscriber offer's".into(),
            ));
        }
        let pending = part
            .sub
            .pending
            .take()
            .ok_or_else(|| SfuError::Sdp("no subscriber offer is pending".into()))?;
        let sub_key = part.subscriber;
        let gate = part.gate.clone();
        let Some(peer) = self.peers.get_mut(sub_key) else {
            return Err(SfuError::UnknownParticipant(pid.to_owned()));
        };
        let rtc = &mut peer.rtc;
        match catch_unwind(AssertUnwindSafe(|| {
            rtc.sdp_api().accept_answer(pending, answer)
        })) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // The offer is gone; roll the track list back so the next offer retries.
                part.sub
                    .tracks
                    .retain(|t| t.state != SubTrackState::Negotiating);
                let again = std::mem::take(&mut part.sub.again);
                if again {
                    self.renegotiate(pid, now);
                }
                return Err(SfuError::Sdp(e.to_string()));
            }
            Err(_) => {
                self.fail_peer(sub_key, "media engine panic while applying the answer");
                return Err(SfuError::Sdp("answer made the engine fail".into()));
            }
        }
        part.sub
            .tracks
            .retain(|t| t.state != SubTrackState::Stopping);
        // An answer to an ICE-restart offer switched the peer to new local credentials.
        self.route_new_local_ufrag(sub_key);
        let Some(part) = self.parts.get_mut(pid) else {
            return Ok(());
        };
        let mut opened = Vec::new();
        for t in &mut part.sub.tracks {
            if t.state == SubTrackState::Negotiating {
                t.state = SubTrackState::Open;
                opened.push((t.mid, t.producer));
            }
        }
        let again = std::mem::take(&mut part.sub.again);
        let unsubscribed = part.unsubscribed.clone();
        let quality = part.quality.clone();
        for (mid, pk) in opened {
            let Some(peer) = self.peers.get_mut(sub_key) else {
                break;
            };
            let ssrc = peer
                .rtc
                .direct_api()
                .stream_tx_by_mid(mid, None)
                .map(|s| s.ssrc());
            let Some(ssrc) = ssrc else {
                warn!("subscriber {pid}: no send stream for mid {mid}");
                continue;
            };
            peer.sub_mids.insert(mid, pk);
            let Some(prod) = self.producers.get_mut(pk) else {
                continue;
            };
            let track_id = prod.track_id();
            prod.consumers.push(Consumer {
                peer: sub_key,
                ssrc,
                gate: gate.clone(),
                st: ConsumerState::new(unsubscribed.contains(&track_id)),
                quality: quality.get(&track_id).copied().unwrap_or(Quality::High),
                cur: NO_LAYER,
                target: NO_LAYER,
            });
            self.choose_layers(pk, now);
            // A new subscriber needs a keyframe at once.
            let layer = self.consumer_layer(pk, sub_key);
            self.request_keyframe(pk, layer, KeyframeRequestKind::Pli, now, true);
        }
        self.mark_dirty(sub_key);
        if again {
            self.renegotiate(pid, now);
        }
        Ok(())
    }

    fn ice_candidate(&mut self, pid: &str, target: PeerTarget, candidate: &str) {
        let Some(part) = self.parts.get(pid) else {
            return;
        };
        let key = match target {
            PeerTarget::Publisher => part.publisher,
            PeerTarget::Subscriber => Some(part.subscriber),
        };
        let Some(peer) = key.and_then(|k| self.peers.get_mut(k)) else {
            return;
        };
        let s = candidate.trim();
        let s = s.strip_prefix("a=").unwrap_or(s);
        let parsed = Candidate::from_sdp_string(s)
            .or_else(|_| Candidate::from_sdp_string(&format!("candidate:{s}")));
        match parsed {
            Ok(c) => peer.rtc.add_remote_candidate(c),
            Err(e) => debug!("ignoring candidate {s:?}: {e}"),
        }
    }

    fn find_consumer(&self, pid: &str, track_id: &str) -> Option<(Key, Key)> {
        let sub = self.parts.get(pid)?.subscriber;
        let (owner, source) = track_id.rsplit_once(':')?;
        let owner = self.parts.get(owner)?;
        owner.producers.iter().copied().find_map(|pk| {
            let p = self.producers.get(pk)?;
            (p.source.as_str() == source).then_some((pk, sub))
        })
    }

    fn set_subscribed(&mut self, pid: &str, track_id: &str, subscribed: bool, now: Instant) {
        if let Some(p) = self.parts.get_mut(pid) {
            if subscribed {
                p.unsubscribed.remove(track_id);
            } else {
                p.unsubscribed.insert(track_id.to_owned());
            }
        }
        let Some((pk, sub)) = self.find_consumer(pid, track_id) else {
            return;
        };
        let Some(c) = self
            .producers
            .get_mut(pk)
            .and_then(|p| p.consumers.iter_mut().find(|c| c.peer == sub))
        else {
            return;
        };
        c.st.paused = !subscribed;
        if subscribed {
            let layer = self.consumer_layer(pk, sub);
            self.request_keyframe(pk, layer, KeyframeRequestKind::Pli, now, false);
        }
    }

    fn leave(&mut self, pid: &str, now: Instant) {
        let Some(part) = self.parts.get(pid) else {
            return;
        };
        let call = part.call.clone();
        let peers: Vec<Key> = part
            .publisher
            .into_iter()
            .chain([part.subscriber])
            .collect();
        for pk in part.producers.clone() {
            self.remove_producer(pk);
        }
        for k in peers {
            self.drop_peer(k);
        }
        self.parts.remove(pid);
        if let Some(c) = self.calls.get_mut(&call) {
            c.members.retain(|m| m != pid);
            if c.members.is_empty() {
                self.calls.remove(&call);
            }
        }
        let members = self
            .calls
            .get(&call)
            .map(|c| c.members.clone())
            .unwrap_or_default();
        for m in members {
            self.renegotiate(&m, now);
        }
    }

    /// Removes a peer and everything that forwards to it.
    fn drop_peer(&mut self, key: Key) {
        let Some(peer) = self.peers.remove(key) else {
            return;
        };
        if let Some(u) = &peer.untagged_ufrag {
            self.untagged.write().remove(u);
        }
        if peer.role == Role::Subscriber {
            for pk in peer.sub_mids.values() {
                if let Some(p) = self.producers.get_mut(*pk) {
                    p.consumers.retain(|c| c.peer != key);
                }
            }
        }
        self.routes.remove(key, &peer.ufrag);
    }

    /// A peer failed (timeout, error, panic): drop it, tell the control plane, and keep the
    /// participant usable (fresh subscriber peer, publisher removed with its producers).
    fn fail_peer(&mut self, key: Key, reason: &str) {
        let Some(peer) = self.peers.get(key) else {
            return;
        };
        let (owner, role) = (peer.owner.clone(), peer.role);
        warn!("peer of {owner} ({role:?}) failed: {reason}");
        self.drop_peer(key);
        let _ = self.events.send(SfuEvent::PeerFailed {
            participant_id: owner.clone(),
            reason: reason.to_owned(),
        });
        let now = Instant::now();
        match role {
            Role::Publisher => {
                let pks = match self.parts.get_mut(&owner) {
                    Some(p) if p.publisher == Some(key) => {
                        p.publisher = None;
                        p.producers.clone()
                    }
                    _ => return,
                };
                for pk in pks {
                    self.remove_producer(pk);
                }
                self.renegotiate_call_of(&owner, now);
            }
            Role::Subscriber => {
                let is_current = self.parts.get(&owner).is_some_and(|p| p.subscriber == key);
                if !is_current {
                    return;
                }
                let bwe = self.parts.get(&owner).is_some_and(|p| p.bwe);
                let fresh = self.new_peer(&owner, Role::Subscriber, bwe, now);
                if let Some(p) = self.parts.get_mut(&owner) {
                    p.subscriber = fresh;
                    p.sub = SubState::default();
                }
                self.renegotiate(&owner, now);
            }
        }
    }

    // ----------------------------------------------------------------------------------------
    // Housekeeping.

    fn housekeeping(&mut self, now: Instant) {
        self.ticks += 1;
        let expired: Vec<Key> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.connected && p.deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| k)
            .collect();
        for k in expired {
            self.fail_peer(k, "ICE/DTLS timeout");
        }
        // Layer rates and choice.
        let secs = TICK.as_secs_f64();
        let simulcast: Vec<Key> = self
            .producers
            .iter()
            .filter(|(_, p)| p.layers.len() > 1)
            .map(|(k, _)| k)
            .collect();
        for pk in &simulcast {
            if let Some(p) = self.producers.get_mut(*pk) {
                for l in &mut p.layers {
                    let inst = l.bytes as f64 * 8.0 / secs;
                    l.rate_bps = if l.rate_bps == 0.0 {
                        inst
                    } else {
                        0.7 * l.rate_bps + 0.3 * inst
                    };
                    l.bytes = 0;
                }
            }
            self.choose_layers(*pk, now);
        }
        if self.ticks.is_multiple_of(2) {
            self.speakers();
        }
        let peers = &self.peers;
        self.routes.retain(|k| peers.get(k).is_some());
        self.publish_gauges();
    }

    /// Picks each consumer's simulcast layer: the requested quality, stepped down while the
    /// subscriber's bandwidth estimate cannot carry it. Switches happen on the next keyframe.
    fn choose_layers(&mut self, pk: Key, now: Instant) {
        let Some(prod) = self.producers.get_mut(pk) else {
            return;
        };
        if prod.layers.len() <= 1 {
            for c in &mut prod.consumers {
                c.cur = 0;
                c.target = 0;
            }
            return;
        }
        let rates: Vec<f64> = prod.layers.iter().map(|l| l.rate_bps).collect();
        let mut requests = Vec::new();
        for c in &mut prod.consumers {
            let bwe = self
                .peers
                .get(c.peer)
                .and_then(|p| p.bwe)
                .map(|b| b.as_f64());
            let Some(target) = pick_layer(&rates, c.quality, bwe) else {
                continue;
            };
            let target = target as u8;
            if target != c.target {
                c.target = target;
                if target != c.cur {
                    requests.push(usize::from(target));
                }
            }
        }
        requests.dedup();
        for l in requests {
            self.request_keyframe(pk, Some(l), KeyframeRequestKind::Pli, now, false);
        }
    }

    fn speakers(&mut self) {
        let mut levels: HashMap<CallCid, Vec<(String, f32)>> = HashMap::new();
        let keys: Vec<Key> = self.producers.iter().map(|(k, _)| k).collect();
        for k in keys {
            if let Some(p) = self.producers.get_mut(k) {
                if p.source == TrackSource::Microphone {
                    let open = p.gate.sends(p.bit);
                    let l = p.level.take();
                    levels
                        .entry(p.call.clone())
                        .or_default()
                        .push((p.owner.clone(), if open { l } else { 0.0 }));
                }
            }
        }
        for (call, state) in &mut self.calls {
            let l = levels.remove(call).unwrap_or_default();
            if let Some(speakers) = state.speakers.update(l) {
                let _ = self.events.send(SfuEvent::Speakers {
                    call: call.clone(),
                    speakers,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use str0m::rtp::{Extension, ExtensionMap};

    #[test]
    fn subscribers_without_estimate_do_not_offer_twcc() {
        let map = super::without_twcc();
        assert_eq!(map.id_of(Extension::TransportSequenceNumber), None);
        let std = ExtensionMap::standard();
        assert!(std.id_of(Extension::TransportSequenceNumber).is_some());
        assert_eq!(map.iter().count() + 1, std.iter().count());
        assert_eq!(
            map.id_of(Extension::AudioLevel),
            std.id_of(Extension::AudioLevel)
        );
    }
}
