//! Entry points for the fuzz targets in `fuzz/` (cargo feature `fuzzing`). Not part of the
//! normal API: nothing here is stable, and production code never enables the feature.
//!
//! * [`DatagramRouter`]: the receive thread's routing decision, then a shard's, for arbitrary
//!   bytes and sources.
//! * [`EngineHarness`]: one engine shard with a joined publisher and subscriber, both connected
//!   (ICE, DTLS, SRTP) to in-memory str0m clients; arbitrary datagrams go in as STUN, DTLS,
//!   SRTP or SRTCP from validated or strange addresses, or as RTP the publisher's client
//!   encrypts (so arbitrary payloads reach the forwarding path). The shard sends into memory.
//! * [`PublishHarness`]: the real publish path (parse an offer, answer it, map its tracks).
//! * [`is_keyframe`]: keyframe detection for each codec.
//! * [`ShardBench`]: one shard with publishers and listeners connected to in-memory str0m
//!   clients, for the forwarding benchmark (`benches/forward.rs`): the engine's real path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use greenroom_proto::{CallCid, MediaGate, PublishTrack, SourceSet, TrackSource};
use parking_lot::Mutex;
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, SeqNo};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};
use tokio::sync::{mpsc, oneshot};

use crate::demux::{Router, UfragMap};
use crate::engine::{Cmd, Engine, ShardMsg, ShardSetup};
use crate::forward::GateCell;
use crate::metrics::{SfuCounters, DRIVE_INPUT, DRIVE_OUTPUT, DRIVE_TIMER};
use crate::routes::PeerRoutes;
use crate::transport::Transport;
use crate::{SfuEvent, SfuOptions};

/// The server's advertised address in the harnesses.
const SERVER: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)),
    3478,
);

/// Keyframe detection of `media` for a codec chosen by `codec` (VP8, VP9, H.264, AV1, Opus).
pub fn is_keyframe(codec: u8, payload: &[u8]) -> bool {
    let codec = match codec % 5 {
        0 => Codec::Vp8,
        1 => Codec::Vp9,
        2 => Codec::H264,
        3 => Codec::Av1,
        _ => Codec::Opus,
    };
    crate::media::is_keyframe(codec, payload)
}

/// The receive thread's router (3 shards, one untagged ufrag registered) followed by a
/// shard's peer routes (two peers), kept across calls like the real ones.
pub struct DatagramRouter {
    router: Router,
    peers: PeerRoutes<u8>,
    now: Instant,
}

impl Default for DatagramRouter {
    fn default() -> Self {
        let untagged = UfragMap::default();
        untagged.write().insert("Restarted".into(), 2);
        let now = Instant::now();
        let mut peers = PeerRoutes::default();
        peers.set_ufrag(0, None, "g000peer");
        peers.set_ufrag(1, None, "g001peer");
        DatagramRouter {
            router: Router::new(3, untagged, now),
            peers,
            now,
        }
    }
}

impl DatagramRouter {
    /// Routes one datagram from `src` (the clock advances by `advance_ms`); returns the shard
    /// and whether a peer of that shard may take it. Tagged STUN validates its source.
    pub fn route(
        &mut self,
        data: &[u8],
        src: SocketAddr,
        advance_ms: u16,
    ) -> (Option<usize>, bool) {
        self.now += Duration::from_millis(u64::from(advance_ms));
        let shard = self.router.route(data, src, self.now);
        let peer = self.peers.candidate(data, src);
        if let Some(crate::routes::Candidate::Stun(k)) = peer {
            self.peers.validated(src, k);
        }
        (shard, peer.is_some())
    }
}

/// Datagrams a shard sent, kept in memory (or only counted while `discard` is set).
#[derive(Default)]
struct MemSink {
    sent: Mutex<Vec<(SocketAddr, Vec<u8>)>>,
    /// Count, do not keep, all but STUN (a benchmark's timed region).
    discard: AtomicBool,
    /// Datagrams sent, kept or not.
    count: AtomicU64,
}

/// The shard's (and each fan-out worker's) handle on the shared [`MemSink`].
struct MemTransport(Arc<MemSink>);

impl Transport for MemTransport {
    fn send_to(&mut self, data: &[u8], dest: SocketAddr) -> std::io::Result<()> {
        let sink = &self.0;
        sink.count.fetch_add(1, Relaxed);
        // STUN (first byte 0 or 1) is kept even then: the clients need their consent answers.
        if !sink.discard.load(Relaxed) || data.first().is_some_and(|b| *b < 2) {
            sink.sent.lock().push((dest, data.to_vec()));
        }
        Ok(())
    }

    fn fork(&self) -> Box<dyn Transport> {
        Box::new(MemTransport(self.0.clone()))
    }
}

/// A shard engine without a thread: commands and datagrams are applied in the caller's thread.
struct Shard {
    engine: Engine,
    sink: Arc<MemSink>,
    counters: Arc<SfuCounters>,
    events: mpsc::UnboundedReceiver<SfuEvent>,
    /// Keeps the engine's queue open.
    _queue: SyncSender<ShardMsg>,
}

impl Shard {
    fn new() -> Shard {
        let (queue, input) = sync_channel(1);
        let (events_tx, events) = mpsc::unbounded_channel();
        let sink = Arc::new(MemSink::default());
        let counters = Arc::new(SfuCounters::default());
        let engine = Engine::new(ShardSetup {
            shard: 0,
            opts: SfuOptions {
                shards: 1,
                parallel_fanout_min: 0,
                ..SfuOptions::default()
            },
            socket: Box::new(MemTransport(sink.clone())),
            advertised: SERVER,
            input: crate::io::inbox::InboxSetup::queue(input),
            events: events_tx,
            counters: counters.clone(),
            untagged: UfragMap::default(),
        });
        Shard {
            engine,
            sink,
            counters,
            events,
            _queue: queue,
        }
    }

    fn join(&mut self, pid: &str) {
        self.join_with(pid, true);
    }

    /// Joins `pid`; `bwe` turns on bandwidth estimation on its subscriber peer.
    fn join_with(&mut self, pid: &str, bwe: bool) {
        let call: CallCid = match "default:fuzz".parse() {
            Ok(c) => c,
            Err(_) => return,
        };
        let gate = MediaGate {
            send: SourceSet::ALL,
            receive: true,
        };
        self.engine.on_cmd(
            Cmd::Join {
                call,
                pid: pid.to_owned(),
                user_id: pid.to_owned(),
                gate: Arc::new(GateCell::new(gate)),
                bwe,
            },
            Instant::now(),
        );
    }

    fn publish(&mut self, pid: &str, sdp: &str, tracks: Vec<PublishTrack>) -> Option<String> {
        let (reply, mut answer) = oneshot::channel();
        self.engine.on_cmd(
            Cmd::Publish {
                pid: pid.to_owned(),
                sdp: sdp.to_owned(),
                tracks,
                reply,
            },
            Instant::now(),
        );
        answer.try_recv().ok()?.ok()
    }

    fn subscriber_offer(&mut self) -> Option<String> {
        let mut last = None;
        while let Ok(ev) = self.events.try_recv() {
            if let SfuEvent::SubscriberOffer { sdp, .. } = ev {
                last = Some(sdp);
            }
        }
        last
    }
}

/// An in-memory str0m client of the harness.
struct Client {
    rtc: Rtc,
    addr: SocketAddr,
    /// Media this client sends: (mid, kind).
    send: Vec<(Mid, MediaKind)>,
    /// RTP packets received and decrypted.
    rtp: u64,
}

impl Client {
    fn new(port: u16) -> Client {
        let addr = SocketAddr::new(std::net::IpAddr::V4([10, 0, 0, 2].into()), port);
        let mut rtc = RtcConfig::new().set_rtp_mode(true).build(Instant::now());
        if let Ok(c) = Candidate::host(addr, "udp") {
            rtc.add_local_candidate(c);
        }
        Client {
            rtc,
            addr,
            send: Vec::new(),
            rtp: 0,
        }
    }

    /// Feeds a datagram from the server; ignores what the client refuses.
    fn receive(&mut self, data: &[u8], now: Instant) {
        if let Ok(r) = Receive::new(Protocol::Udp, SERVER, self.addr, data) {
            let _ = self.rtc.handle_input(Input::Receive(now, r));
        }
    }

    /// Advances the client to `now`; returns what it transmits to the server.
    fn poll(&mut self, now: Instant) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        if self.rtc.handle_input(Input::Timeout(now)).is_err() {
            return out;
        }
        while let Ok(o) = self.rtc.poll_output() {
            match o {
                Output::Timeout(_) => break,
                Output::Transmit(t) => out.push(t.contents.to_vec()),
                Output::Event(Event::RtpPacket(_)) => self.rtp += 1,
                Output::Event(Event::Connected) | Output::Event(_) => {}
            }
        }
        out
    }
}

/// One engine shard with a connected publisher and subscriber (see the module docs).
pub struct EngineHarness {
    shard: Shard,
    publisher: Client,
    subscriber: Client,
    /// The publisher peer's server-side ICE ufrag, from its answer.
    server_ufrag: Option<String>,
    seq: u64,
}

impl EngineHarness {
    /// Joins a publisher (audio + video) and a subscriber, connects both over memory.
    pub fn new() -> EngineHarness {
        let mut shard = Shard::new();
        shard.join("pub");
        shard.join("sub");
        let mut publisher = Client::new(5000);
        let mut api = publisher.rtc.sdp_api();
        let a = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        let v = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
        let offer = api.apply();
        publisher.send = vec![(a, MediaKind::Audio), (v, MediaKind::Video)];
        let tracks = vec![
            PublishTrack {
                mid: a.to_string(),
                source: TrackSource::Microphone,
            },
            PublishTrack {
                mid: v.to_string(),
                source: TrackSource::Camera,
            },
        ];
        let mut server_ufrag = None;
        if let Some((offer, pending)) = offer {
            if let Some(answer) = shard.publish("pub", &offer.to_sdp_string(), tracks) {
                server_ufrag = answer
                    .lines()
                    .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
                    .map(|u| u.trim().to_owned());
                if let Ok(answer) = SdpAnswer::from_sdp_string(&answer) {
                    let _ = publisher.rtc.sdp_api().accept_answer(pending, answer);
                }
            }
        }
        let mut subscriber = Client::new(6000);
        if let Some(offer) = shard.subscriber_offer() {
            if let Ok(offer) = SdpOffer::from_sdp_string(&offer) {
                if let Ok(answer) = subscriber.rtc.sdp_api().accept_offer(offer) {
                    let (reply, _) = oneshot::channel();
                    shard.engine.on_cmd(
                        Cmd::SubscriberAnswer {
                            pid: "sub".into(),
                            sdp: answer.to_sdp_string(),
                            reply,
                        },
                        Instant::now(),
                    );
                }
            }
        }
        let mut h = EngineHarness {
            shard,
            publisher,
            subscriber,
            server_ufrag,
            seq: 0,
        };
        for _ in 0..200 {
            h.pump();
            if h.publisher.rtc.is_connected() && h.subscriber.rtc.is_connected() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        h
    }

    /// Whether both clients connected (ICE + DTLS) when the harness was built.
    pub fn connected(&self) -> bool {
        self.publisher.rtc.is_connected() && self.subscriber.rtc.is_connected()
    }

    /// Exchanges datagrams between the shard and the clients until both are quiet.
    fn pump(&mut self) {
        for _ in 0..50 {
            let now = Instant::now();
            let sent = std::mem::take(&mut *self.shard.sink.sent.lock());
            for (dest, data) in &sent {
                for c in [&mut self.publisher, &mut self.subscriber] {
                    if c.addr == *dest {
                        c.receive(data, now);
                    }
                }
            }
            let mut moved = !sent.is_empty();
            for c in [&mut self.publisher, &mut self.subscriber] {
                for data in c.poll(now) {
                    moved = true;
                    self.shard.engine.on_datagram(&data, c.addr, now);
                }
            }
            self.shard.engine.advance(now);
            if !moved {
                break;
            }
        }
        // What the clients do not take is dropped (the subscriber's events are not needed).
        while self.shard.events.try_recv().is_ok() {}
    }

    /// Applies one fuzz input. Its first byte picks what the rest is:
    /// * 0..=2: a raw datagram from the publisher's, the subscriber's or a stranger's address;
    /// * 3: a STUN message whose USERNAME is patched to name the publisher's server ufrag;
    /// * 4..: an RTP payload the publisher's client encrypts and sends (audio or video, with
    ///   the second byte as payload type index and the third as marker).
    pub fn input(&mut self, data: &[u8]) {
        let Some((&mode, rest)) = data.split_first() else {
            return;
        };
        let now = Instant::now();
        match mode % 6 {
            m @ 0..=2 => {
                let src = match m {
                    0 => self.publisher.addr,
                    1 => self.subscriber.addr,
                    _ => SocketAddr::new(std::net::IpAddr::V4([10, 9, 9, 9].into()), 9),
                };
                self.shard.engine.on_datagram(rest, src, now);
            }
            3 => {
                let ufrag = self.server_ufrag.clone();
                let mut msg = rest.to_vec();
                if let (Some(u), true) = (ufrag, msg.len() >= 28) {
                    // Type binding request, the magic cookie, a USERNAME attribute first.
                    msg[0] = 0;
                    msg[1] = 1;
                    msg[4..8].copy_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
                    let user = format!("{u}:x");
                    let mut attr = vec![0, 6];
                    attr.extend_from_slice(&(user.len() as u16).to_be_bytes());
                    attr.extend_from_slice(user.as_bytes());
                    while attr.len() % 4 != 0 {
                        attr.push(0);
                    }
                    msg.splice(20..20, attr);
                    let len = (msg.len() - 20) as u16;
                    msg[2..4].copy_from_slice(&len.to_be_bytes());
                }
                self.shard
                    .engine
                    .on_datagram(&msg, self.publisher.addr, now);
            }
            m => {
                let video = m == 5;
                let (pt_idx, marker, payload) = match rest {
                    [a, b, p @ ..] => (*a, *b & 1 == 1, p.to_vec()),
                    _ => (0, false, rest.to_vec()),
                };
                let kind = if video {
                    MediaKind::Video
                } else {
                    MediaKind::Audio
                };
                let mid = self.publisher.send.iter().find(|(_, k)| *k == kind);
                let pts: Vec<_> = self
                    .publisher
                    .rtc
                    .codec_config()
                    .params()
                    .iter()
                    .map(|p| p.pt())
                    .collect();
                if let (Some(&(mid, _)), false) = (mid, pts.is_empty()) {
                    let pt = pts[usize::from(pt_idx) % pts.len()];
                    self.seq += 1;
                    let mut api = self.publisher.rtc.direct_api();
                    if let Some(tx) = api.stream_tx_by_mid(mid, None) {
                        tx.write_rtp(
                            RtpWrite::new(
                                pt,
                                SeqNo::from(self.seq),
                                self.seq as u32 * 3000,
                                now,
                                payload,
                            )
                            .marker(marker),
                        );
                    }
                }
            }
        }
        self.pump();
    }
}

/// One shard with `publishers` participants that publish one track each (Opus, or VP8 for
/// video) and subscribe to each other, and `listeners` that only subscribe; every peer is
/// connected (ICE, DTLS, SRTP) to an in-memory str0m client. [`ShardBench::prepare`] has each
/// publisher's client encrypt packets (untimed), [`ShardBench::feed`] gives them to the shard as
/// one batch of datagrams (the engine's real receive, fan-out, drive and protect path, batched
/// as in the shard's loop; the
/// shard's output is counted, not kept), [`ShardBench::pump`] lets the clients talk back
/// (consent checks, RTCP) outside the timed region. The clock is virtual.
pub struct ShardBench {
    shard: Shard,
    /// Publisher clients (source address, client, the mid it sends on, payload type).
    senders: Vec<(Client, Mid, str0m::media::Pt)>,
    /// Every client by address (publishers' and subscribers').
    receivers: HashMap<SocketAddr, Client>,
    queued: Vec<(SocketAddr, Vec<u8>)>,
    video: bool,
    seq: u64,
    now: Instant,
}

impl ShardBench {
    /// Builds and connects the shard, with bandwidth estimation on every subscriber peer;
    /// `None` if a peer did not connect.
    pub fn new(publishers: usize, listeners: usize, video: bool) -> Option<ShardBench> {
        Self::with_bwe(publishers, listeners, video, true)
    }

    /// [`ShardBench::new`]; `bwe` turns bandwidth estimation on the subscriber peers on or off
    /// (off as in an audio room).
    pub fn with_bwe(
        publishers: usize,
        listeners: usize,
        video: bool,
        bwe: bool,
    ) -> Option<ShardBench> {
        let mut shard = Shard::new();
        let mut now = Instant::now();
        let total = publishers + listeners;
        for i in 0..total {
            shard.join_with(&format!("p{i}"), bwe);
        }
        let kind = if video {
            MediaKind::Video
        } else {
            MediaKind::Audio
        };
        let codec = if video { Codec::Vp8 } else { Codec::Opus };
        let mut senders = Vec::new();
        for i in 0..publishers {
            let mut client = Client::new(20_000 + i as u16);
            let mut api = client.rtc.sdp_api();
            let mid = api.add_media(kind, Direction::SendOnly, None, None, None);
            let (offer, pending) = api.apply()?;
            let tracks = vec![PublishTrack {
                mid: mid.to_string(),
                source: if video {
                    TrackSource::Camera
                } else {
                    TrackSource::Microphone
                },
            }];
            let answer = shard.publish(&format!("p{i}"), &offer.to_sdp_string(), tracks)?;
            let answer = SdpAnswer::from_sdp_string(&answer).ok()?;
            client.rtc.sdp_api().accept_answer(pending, answer).ok()?;
            let pt = client
                .rtc
                .codec_config()
                .find(|p| p.spec().codec == codec)?
                .pt();
            senders.push((client, mid, pt));
        }
        let mut receivers: HashMap<SocketAddr, Client> = HashMap::new();
        let mut subs: HashMap<String, SocketAddr> = HashMap::new();
        for i in 0..total {
            let c = Client::new(30_000 + i as u16);
            subs.insert(format!("p{i}"), c.addr);
            receivers.insert(c.addr, c);
        }
        let mut answered = std::collections::HashSet::new();
        // Answer offers until none is left (an answer can release a queued re-offer).
        loop {
            let mut offers = Vec::new();
            while let Ok(ev) = shard.events.try_recv() {
                if let SfuEvent::SubscriberOffer {
                    participant_id,
                    sdp,
                    ..
                } = ev
                {
                    offers.push((participant_id, sdp));
                }
            }
            if offers.is_empty() {
                break;
            }
            for (pid, sdp) in offers {
                let addr = *subs.get(&pid)?;
                answered.insert(addr);
                let client = receivers.get_mut(&addr)?;
                let offer = SdpOffer::from_sdp_string(&sdp).ok()?;
                let answer = client.rtc.sdp_api().accept_offer(offer).ok()?;
                let (reply, _) = oneshot::channel();
                shard.engine.on_cmd(
                    Cmd::SubscriberAnswer {
                        pid,
                        sdp: answer.to_sdp_string(),
                        reply,
                    },
                    now,
                );
            }
        }
        // A participant with nothing to receive got no offer and has no subscriber client.
        let offered: Vec<SocketAddr> = answered.into_iter().collect();
        receivers.retain(|addr, _| offered.contains(addr));
        let mut b = ShardBench {
            shard,
            senders,
            receivers,
            queued: Vec::new(),
            video,
            seq: 0,
            now,
        };
        for _ in 0..2_000 {
            now += Duration::from_millis(5);
            b.now = now;
            b.pump();
            if b.connected() {
                return Some(b);
            }
        }
        None
    }

    fn connected(&self) -> bool {
        self.senders.iter().all(|(c, _, _)| c.rtc.is_connected())
            && self.receivers.values().all(|c| c.rtc.is_connected())
    }

    /// Has every publisher's client encrypt `packets` RTP packets (1100 B video, 100 B audio;
    /// the virtual clock advances 3 ms (video) or 20 ms (audio) per packet). Untimed.
    pub fn prepare(&mut self, packets: usize) {
        let size = if self.video { 1_100 } else { 100 };
        let step = Duration::from_millis(if self.video { 3 } else { 20 });
        for _ in 0..packets {
            self.seq += 1;
            self.now += step;
            let (seq, now) = (self.seq, self.now);
            for (client, mid, pt) in &mut self.senders {
                let mut api = client.rtc.direct_api();
                if let Some(tx) = api.stream_tx_by_mid(*mid, None) {
                    tx.write_rtp(
                        RtpWrite::new(
                            *pt,
                            SeqNo::from(seq),
                            seq as u32 * 960,
                            now,
                            vec![0x42; size],
                        )
                        .marker(true),
                    );
                }
                let addr = client.addr;
                for data in client.poll(now) {
                    self.queued.push((addr, data));
                }
            }
        }
    }

    /// Gives the prepared datagrams to the shard as one batch, then lets it fire its due
    /// timers: the timed part. Returns the number of datagrams the shard sent.
    pub fn feed(&mut self) -> u64 {
        self.feed_inner(true)
    }

    /// [`ShardBench::feed`], keeping the shard's datagrams for the clients: the next
    /// [`ShardBench::pump`] delivers the media ([`ShardBench::received`] counts it).
    pub fn feed_delivered(&mut self) -> u64 {
        self.feed_inner(false)
    }

    fn feed_inner(&mut self, discard: bool) -> u64 {
        self.shard.sink.discard.store(discard, Relaxed);
        let before = self.shard.sink.count.load(Relaxed);
        let now = self.now;
        // As the shard's loop does with a batch: receive every datagram, then fan out and
        // drive each subscriber written to once; then the timers that fell due.
        for (src, data) in self.queued.drain(..) {
            self.shard.engine.receive(&data, src, now);
        }
        self.shard.engine.settle(now);
        self.shard.engine.advance(now);
        self.shard.sink.discard.store(false, Relaxed);
        self.shard.sink.count.load(Relaxed) - before
    }

    /// Lets the clients and the shard exchange datagrams (consent checks, RTCP) until quiet.
    /// Untimed.
    pub fn pump(&mut self) {
        let now = self.now;
        for _ in 0..50 {
            let sent = std::mem::take(&mut *self.shard.sink.sent.lock());
            for (dest, data) in &sent {
                if let Some(c) = self.receivers.get_mut(dest) {
                    c.receive(data, now);
                } else if let Some((c, _, _)) =
                    self.senders.iter_mut().find(|(c, _, _)| c.addr == *dest)
                {
                    c.receive(data, now);
                }
            }
            let mut moved = !sent.is_empty();
            let clients = self
                .receivers
                .values_mut()
                .chain(self.senders.iter_mut().map(|(c, _, _)| c));
            for c in clients {
                for data in c.poll(now) {
                    moved = true;
                    self.shard.engine.on_datagram(&data, c.addr, now);
                }
            }
            self.shard.engine.advance(now);
            if !moved {
                break;
            }
        }
        while self.shard.events.try_recv().is_ok() {}
    }

    /// Drops the in-memory clients (the shard keeps its peers): what stays allocated is the
    /// shard's, for a memory measurement.
    pub fn drop_clients(&mut self) {
        self.receivers = HashMap::new();
        self.shard.sink.sent.lock().clear();
        self.queued = Vec::new();
    }

    /// Advances the virtual clock by `d` without media, letting the clients and the shard
    /// exchange consent checks and RTCP every 250 ms. Untimed.
    pub fn idle(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += Duration::from_millis(250);
            self.pump();
        }
    }

    /// RTP packets the subscribers' clients received and decrypted so far (until
    /// [`ShardBench::drop_clients`]).
    pub fn received(&self) -> u64 {
        self.receivers.values().map(|c| c.rtp).sum()
    }

    /// Packets forwarded so far (to all subscribers).
    pub fn forwarded(&self) -> u64 {
        self.shard
            .counters
            .fwd_packets
            .iter()
            .map(|c| c.load(Relaxed))
            .sum()
    }

    /// str0m drive cycles so far: (input, output, timer).
    pub fn drives(&self) -> (u64, u64, u64) {
        let d = &self.shard.counters.drives;
        (
            d[DRIVE_INPUT].load(Relaxed),
            d[DRIVE_OUTPUT].load(Relaxed),
            d[DRIVE_TIMER].load(Relaxed),
        )
    }
}

impl Default for EngineHarness {
    fn default() -> Self {
        EngineHarness::new()
    }
}

/// The real publish path on one shard: one joined participant that publishes offer after offer
/// (the first creates its publisher peer, later ones renegotiate it).
pub struct PublishHarness {
    shard: Shard,
}

impl Default for PublishHarness {
    fn default() -> Self {
        let mut shard = Shard::new();
        shard.join("pub");
        PublishHarness { shard }
    }
}

impl PublishHarness {
    /// Parses and answers `sdp` as the participant's publisher offer, announcing a microphone
    /// on `mids.0` and a camera on `mids.1`; returns the answer if it was accepted.
    pub fn publish(&mut self, sdp: &str, mids: (&str, &str)) -> Option<String> {
        let tracks = vec![
            PublishTrack {
                mid: mids.0.to_owned(),
                source: TrackSource::Microphone,
            },
            PublishTrack {
                mid: mids.1.to_owned(),
                source: TrackSource::Camera,
            },
        ];
        let answer = self.shard.publish("pub", sdp, tracks);
        while self.shard.events.try_recv().is_ok() {}
        self.shard.sink.sent.lock().clear();
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_harness_connects_and_takes_every_kind_of_input() {
        let mut h = EngineHarness::new();
        assert!(h.connected(), "both in-memory clients connect");
        for input in [
            &[0u8, 0x80, 0x60, 0, 1][..],
            &[1, 0x81, 0xc8, 0, 1],
            &[2, 22, 0xfe, 0xfd],
            &[3; 40],
            &[5, 0, 1, 0x10, 0x00, 0x9d],
            &[4, 0, 0, 0xfc],
            &[],
        ] {
            h.input(input);
        }
        assert!(h.connected());
    }

    #[test]
    fn the_publish_harness_answers_a_real_offer_and_refuses_garbage() {
        let mut p = PublishHarness::default();
        assert!(p.publish("v=0 garbage", ("0", "1")).is_none());
        let mut client = Client::new(5000);
        let mut api = client.rtc.sdp_api();
        let a = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        let v = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
        let (offer, _) = api.apply().unwrap();
        let answer = p.publish(&offer.to_sdp_string(), (&a.to_string(), &v.to_string()));
        assert!(answer.is_some_and(|a| a.contains("m=video")));
    }

    #[test]
    fn the_shard_bench_forwards_to_every_listener() {
        let mut b = ShardBench::new(1, 3, false).expect("connects");
        b.prepare(5);
        let sent = b.feed();
        assert_eq!(b.forwarded(), 15, "5 packets to 3 listeners");
        assert!(sent > 0, "the shard sent media");
        b.pump();
        // Minutes of virtual time: the peers stay connected and every packet arrives.
        for round in 0..3_000u64 {
            let before = b.forwarded();
            b.prepare(1);
            b.feed();
            assert_eq!(b.forwarded() - before, 3, "round {round}");
            if round % 10 == 9 {
                b.pump();
            }
        }
        let mut m = ShardBench::new(2, 0, true).expect("connects");
        m.prepare(3);
        m.feed();
        assert_eq!(m.forwarded(), 6, "each of 2 publishers to the other");
        // The bench's video 4x4 variant: frames of three packets, each to the three others,
        // for seconds of virtual time (the shard's timers must not spin).
        let mut v = ShardBench::new(4, 0, true).expect("connects");
        for round in 0..200u64 {
            let before = v.forwarded();
            v.prepare(3);
            v.feed();
            assert_eq!(v.forwarded() - before, 4 * 3 * 3, "round {round}");
            if round % 10 == 9 {
                v.pump();
            }
        }
    }

    #[test]
    fn routing_and_keyframe_entries_never_panic_on_odd_input() {
        let mut r = DatagramRouter::default();
        let src = SocketAddr::from(([127, 0, 0, 1], 1));
        assert_eq!(r.route(&[1, 2, 3], src, 0), (None, false));
        assert!(is_keyframe(0, &[0x10, 0x00, 0x9d]));
        assert!(!is_keyframe(4, &[0xff]));
    }
}
