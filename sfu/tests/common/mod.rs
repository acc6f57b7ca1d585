//! The harness of the end-to-end tests: independent str0m clients (non-ICE-lite, each with
//! its own UDP socket and pump thread) publishing synthetic media and subscribing, the media
//! plane on 127.0.0.1, and its event stream. Each test file uses part of it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use greenroom_proto::{CallCid, MediaGate, PublishTrack, SourceSet, SubscribedTrack, TrackSource};
use greenroom_sfu::{Sfu, SfuConfig, SfuEvent};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::rtp::rtcp::Rtcp;
use str0m::rtp::RawPacket;
use str0m::rtp::{ExtensionValues, RtpWrite, SeqNo};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};
use tokio::sync::mpsc::UnboundedReceiver;

/// What a client received: per mid, packet count, SSRCs seen and sequence numbers.
#[derive(Default, Debug, Clone)]
pub struct Rx {
    pub count: u64,
    pub ssrcs: Vec<u32>,
    pub seqs: Vec<u64>,
    /// Payload types seen.
    pub pts: Vec<u8>,
    /// VP8 keyframe packets (as [`send_media`] frames them) seen.
    pub keyframes: u64,
    /// Packets whose payload differs from what [`send_media`] sends on audio (80 x 0xfc),
    /// counted on every mid (video mids count all their packets here).
    pub not_audio_payload: u64,
    /// Sender reports received: (SSRC, packet count).
    pub srs: Vec<(u32, u32)>,
    /// Packets whose payload is a [`send_media`] VP8 packet, byte for byte.
    pub vp8_payloads: u64,
    /// Under [`REPAIRS`] only: RTX packets received (with `enable_raw_packets`): their
    /// original sequence number and whether the rest is a [`send_media`] VP8 payload (their
    /// SSRCs are in `ssrcs`).
    pub repairs: Vec<(u16, bool)>,
    /// Under [`RAW_SRS`] only: every sender report received, whatever its SSRC (with
    /// `enable_raw_packets`): (SSRC, packet count, octet count).
    pub raw_srs: Vec<(u32, u32, u32)>,
    /// Under [`RAW_FEEDBACK`] only: the receive feedback this client got about what it sends
    /// (with `enable_raw_packets`): kind (`'r'` a receiver report with blocks, `'t'`
    /// transport-wide feedback, `'n'` a NACK), the feedback's sender SSRC and when.
    pub raw_feedback: Vec<(char, u32, Instant)>,
}

/// The key of [`Rx::repairs`] in a client's received map.
pub const REPAIRS: &str = "(rtx)";

/// The key of [`Rx::raw_feedback`] in a client's received map.
pub const RAW_FEEDBACK: &str = "(feedback)";

/// The key of [`Rx::raw_srs`] in a client's received map.
pub const RAW_SRS: &str = "(sr)";

/// Whether `p` is a VP8 packet exactly as [`send_media`] sends it.
pub fn is_synthetic_vp8(p: &[u8]) -> bool {
    p.len() == 600
        && p[0] == 0x10
        && p[1] <= 1
        && p[2..5] == [0x9d, 0x01, 0x2a]
        && p[5..].iter().all(|b| *b == 0x55)
}

/// The value of an unlabelled metric line, or of one labelled `label`.
pub fn metric(sfu: &Sfu, name: &str) -> f64 {
    sfu.metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Sequence numbers without a gap or a repeat (the forwarder never reorders on loopback).
pub fn contiguous(seqs: &[u64]) -> bool {
    seqs.windows(2).all(|w| w[1] == w[0] + 1)
}

pub type Job = Box<dyn FnOnce(&mut ClientState) + Send>;

pub struct ClientState {
    pub rtc: Rtc,
    /// (mid, codec) of media this client sends synthetic RTP on.
    pub send: Vec<(Mid, Codec)>,
    pub sending: bool,
    pub seq: u64,
    pub next_audio: Instant,
    pub next_video: Instant,
    pub frame: u32,
    /// A keyframe every 30 frames (else only the first and requested ones).
    pub periodic_keyframes: bool,
    /// A keyframe request arrived: the next video frame is a keyframe.
    pub keyframe_wanted: bool,
}

/// A str0m client peer with its own UDP socket, pumped by its own thread.
pub struct Client {
    pub jobs: std_mpsc::Sender<Job>,
    pub rx: Arc<Mutex<HashMap<String, Rx>>>,
    pub connected: Arc<Mutex<bool>>,
    /// Keyframe requests (PLI/FIR) this client received.
    pub keyframe_requests: Arc<AtomicU64>,
    /// Padding this client received: RTP packets with an empty payload or on a repair (RTX)
    /// payload type (counted only with `RtcConfig::enable_raw_packets(true)`).
    pub padding: Arc<AtomicU64>,
}

impl ClientState {
    /// A client's state around `rtc`, sending nothing yet.
    pub fn new(rtc: Rtc, now: Instant) -> ClientState {
        ClientState {
            rtc,
            send: Vec::new(),
            sending: false,
            seq: 0,
            next_audio: now,
            next_video: now,
            frame: 0,
            periodic_keyframes: true,
            keyframe_wanted: false,
        }
    }
}

/// How a client's pump thread moves packets between its `Rtc` and the network.
pub trait Transport: Send + 'static {
    /// Sends one packet the client's str0m wants out; false when the transport is gone (the
    /// pump ends).
    fn transmit(&mut self, t: &Transmit) -> bool;
    /// Waits up to `wait` for one incoming packet and feeds it to `rtc`.
    fn receive(&mut self, wait: Duration, rtc: &mut Rtc);
}

/// A client's own UDP socket.
pub struct UdpTransport {
    socket: UdpSocket,
    addr: SocketAddr,
    buf: Vec<u8>,
}

impl UdpTransport {
    /// A transport on a new socket on 127.0.0.1 (an ephemeral port); its address too.
    pub fn bind() -> (UdpTransport, SocketAddr) {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let t = UdpTransport {
            socket,
            addr,
            buf: vec![0u8; 2048],
        };
        (t, addr)
    }
}

impl Transport for UdpTransport {
    fn transmit(&mut self, t: &Transmit) -> bool {
        let _ = self.socket.send_to(&t.contents, t.destination);
        true
    }

    fn receive(&mut self, wait: Duration, rtc: &mut Rtc) {
        self.socket.set_read_timeout(Some(wait)).unwrap();
        if let Ok((n, src)) = self.socket.recv_from(&mut self.buf) {
            if let Ok(r) = Receive::new(Protocol::Udp, src, self.addr, &self.buf[..n]) {
                rtc.handle_input(Input::Receive(Instant::now(), r)).unwrap();
            }
        }
    }
}

impl Client {
    pub fn new() -> Client {
        Client::with_config(RtcConfig::new())
    }

    /// A client with its own codec configuration (RTP mode is always set).
    pub fn with_config(cfg: RtcConfig) -> Client {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let mut rtc = cfg.set_rtp_mode(true).build(Instant::now());
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        let transport = UdpTransport {
            socket,
            addr,
            buf: vec![0u8; 2048],
        };
        Client::spawn(rtc, transport)
    }

    /// A client around `rtc` (its local candidates added), pumped by its own thread over
    /// `transport`.
    pub fn spawn(rtc: Rtc, transport: impl Transport) -> Client {
        let now = Instant::now();
        let (jobs, job_rx) = std_mpsc::channel::<Job>();
        let rx: Arc<Mutex<HashMap<String, Rx>>> = Default::default();
        let connected: Arc<Mutex<bool>> = Default::default();
        let keyframe_requests: Arc<AtomicU64> = Default::default();
        let padding: Arc<AtomicU64> = Default::default();
        let (rx2, conn2, kf2) = (rx.clone(), connected.clone(), keyframe_requests.clone());
        let pad2 = padding.clone();
        std::thread::spawn(move || {
            let mut st = ClientState::new(rtc, now);
            pump(&mut st, transport, job_rx, rx2, conn2, kf2, pad2);
        });
        Client {
            jobs,
            rx,
            connected,
            keyframe_requests,
            padding,
        }
    }

    pub fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut ClientState) -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = std_mpsc::channel();
        self.jobs
            .send(Box::new(move |st| {
                let _ = tx.send(f(st));
            }))
            .unwrap();
        rx.recv().unwrap()
    }

    pub fn received(&self, mid: &str) -> Rx {
        self.rx
            .lock()
            .unwrap()
            .get(mid)
            .cloned()
            .unwrap_or_default()
    }

    pub fn count(&self, mid: &str) -> u64 {
        self.received(mid).count
    }

    /// Creates a publisher offer with audio + video (SendOnly).
    pub fn publish_offer(&self) -> (String, Vec<PublishTrack>, SdpPendingOffer) {
        self.publish_offer_with(Codec::Vp8)
    }

    /// [`Client::publish_offer`], sending `video` on the camera track.
    pub fn publish_offer_with(&self, video: Codec) -> (String, Vec<PublishTrack>, SdpPendingOffer) {
        self.call(move |st| {
            let mut api = st.rtc.sdp_api();
            let a = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
            let v = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
            let (offer, pending) = api.apply().unwrap();
            st.send = vec![(a, Codec::Opus), (v, video)];
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
            (offer.to_sdp_string(), tracks, pending)
        })
    }

    pub fn accept_answer(&self, pending: SdpPendingOffer, answer: String) {
        self.call(move |st| {
            let answer = SdpAnswer::from_sdp_string(&answer).unwrap();
            st.rtc.sdp_api().accept_answer(pending, answer).unwrap();
        })
    }

    pub fn accept_offer(&self, offer: String) -> String {
        self.call(move |st| {
            let offer = SdpOffer::from_sdp_string(&offer).unwrap();
            st.rtc
                .sdp_api()
                .accept_offer(offer)
                .unwrap()
                .to_sdp_string()
        })
    }

    pub fn set_sending(&self, on: bool) {
        self.call(move |st| st.sending = on)
    }

    /// Sends a PLI for the media this client receives on `mid`.
    pub fn request_keyframe(&self, mid: &str) {
        let mid = Mid::from(mid);
        self.call(move |st| {
            let mut api = st.rtc.direct_api();
            let rx = api.stream_rx_by_mid(mid, None).expect("a receive stream");
            rx.request_keyframe(KeyframeRequestKind::Pli);
        })
    }

    /// Keyframe requests received so far.
    pub fn keyframe_requests(&self) -> u64 {
        self.keyframe_requests.load(Ordering::SeqCst)
    }

    pub fn is_connected(&self) -> bool {
        *self.connected.lock().unwrap()
    }
}

/// Runs a client: its jobs, its synthetic media, its str0m output onto `transport` and what
/// arrives back, until its [`Client`] is dropped or the transport is gone.
#[allow(clippy::too_many_arguments)]
pub fn pump(
    st: &mut ClientState,
    mut transport: impl Transport,
    jobs: std_mpsc::Receiver<Job>,
    rx: Arc<Mutex<HashMap<String, Rx>>>,
    connected: Arc<Mutex<bool>>,
    keyframe_requests: Arc<AtomicU64>,
    padding: Arc<AtomicU64>,
) {
    loop {
        loop {
            match jobs.try_recv() {
                Ok(job) => job(st),
                Err(std_mpsc::TryRecvError::Empty) => break,
                Err(std_mpsc::TryRecvError::Disconnected) => return,
            }
        }
        let now = Instant::now();
        if st.sending && *connected.lock().unwrap() {
            send_media(st, now);
        }
        st.rtc.handle_input(Input::Timeout(now)).unwrap();
        let timeout = loop {
            match st.rtc.poll_output().unwrap() {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    if !transport.transmit(&t) {
                        return;
                    }
                }
                Output::Event(Event::Connected) => *connected.lock().unwrap() = true,
                Output::Event(Event::KeyframeRequest(_)) => {
                    st.keyframe_wanted = true;
                    keyframe_requests.fetch_add(1, Ordering::SeqCst);
                }
                Output::Event(Event::RtpPacket(p)) => {
                    let mid = st
                        .rtc
                        .direct_api()
                        .stream_rx(&p.header.ssrc)
                        .map(|s| s.mid().to_string())
                        .unwrap_or_default();
                    let mut m = rx.lock().unwrap();
                    let e = m.entry(mid).or_default();
                    e.count += 1;
                    if !e.ssrcs.contains(&*p.header.ssrc) {
                        e.ssrcs.push(*p.header.ssrc);
                    }
                    e.seqs.push(*p.seq_no);
                    if p.payload.starts_with(&[0x10, 0x00]) {
                        e.keyframes += 1;
                    }
                    if !e.pts.contains(&*p.header.payload_type) {
                        e.pts.push(*p.header.payload_type);
                    }
                    if *p.payload != [0xfc; 80] {
                        e.not_audio_payload += 1;
                    }
                    if is_synthetic_vp8(&p.payload) {
                        e.vp8_payloads += 1;
                    }
                }
                Output::Event(Event::SenderFeedback(f)) => {
                    let si = f.sender_info;
                    let mut m = rx.lock().unwrap();
                    let e = m.entry(f.mid.to_string()).or_default();
                    e.srs.push((*si.ssrc, si.sender_packet_count));
                }
                Output::Event(Event::RawPacket(raw)) => match *raw {
                    RawPacket::RtpRx(header, payload) => {
                        let repair = st
                            .rtc
                            .codec_config()
                            .params()
                            .iter()
                            .any(|p| p.resend() == Some(header.payload_type));
                        if payload.is_empty() || repair {
                            padding.fetch_add(1, Ordering::SeqCst);
                        }
                        if repair && payload.len() > 2 {
                            let osn = u16::from_be_bytes([payload[0], payload[1]]);
                            let mut m = rx.lock().unwrap();
                            let e = m.entry(REPAIRS.to_owned()).or_default();
                            e.repairs.push((osn, is_synthetic_vp8(&payload[2..])));
                            if !e.ssrcs.contains(&*header.ssrc) {
                                e.ssrcs.push(*header.ssrc);
                            }
                        }
                    }
                    RawPacket::RtcpRx(
                        ref fb @ (Rtcp::ReceiverReport(_) | Rtcp::Twcc(_) | Rtcp::Nack(_)),
                    ) => {
                        let (kind, sender) = match fb {
                            Rtcp::ReceiverReport(rr) if !rr.reports.is_empty() => {
                                ('r', rr.sender_ssrc)
                            }
                            Rtcp::Twcc(t) => ('t', t.sender_ssrc),
                            Rtcp::Nack(n) => ('n', n.sender_ssrc),
                            _ => ('-', 0.into()),
                        };
                        if kind != '-' {
                            let mut m = rx.lock().unwrap();
                            let e = m.entry(RAW_FEEDBACK.to_owned()).or_default();
                            e.raw_feedback.push((kind, *sender, Instant::now()));
                        }
                    }
                    RawPacket::RtcpRx(Rtcp::SenderReport(sr)) => {
                        let si = sr.sender_info;
                        let mut m = rx.lock().unwrap();
                        let e = m.entry(RAW_SRS.to_owned()).or_default();
                        e.raw_srs
                            .push((*si.ssrc, si.sender_packet_count, si.sender_octet_count));
                    }
                    _ => {}
                },
                Output::Event(_) => {}
            }
        };
        let mut wait = timeout.saturating_duration_since(Instant::now());
        if st.sending {
            wait = wait.min(Duration::from_millis(5));
        }
        let wait = wait.clamp(Duration::from_millis(1), Duration::from_millis(20));
        transport.receive(wait, &mut st.rtc);
    }
}

pub fn pt_for(rtc: &Rtc, codec: Codec) -> Pt {
    rtc.codec_config()
        .find(|p| p.spec().codec == codec)
        .map(|p| p.pt())
        .unwrap()
}

/// Synthetic media: Opus-sized audio every 20 ms, one VP8 packet per 33 ms frame.
pub fn send_media(st: &mut ClientState, now: Instant) {
    let send = st.send.clone();
    for (mid, codec) in send {
        let audio = codec == Codec::Opus;
        let due = if audio { st.next_audio } else { st.next_video };
        if now < due {
            continue;
        }
        if audio {
            st.next_audio = now + Duration::from_millis(20);
        } else {
            st.next_video = now + Duration::from_millis(33);
            st.frame += 1;
        }
        st.seq += 1;
        let pt = pt_for(&st.rtc, codec);
        let (ts, payload): (u32, Vec<u8>) = if audio {
            (st.seq as u32 * 960, vec![0xfc; 80])
        } else {
            // A keyframe every 30 frames, delta frames otherwise, in the codec's own framing.
            let periodic = if st.periodic_keyframes {
                st.frame % 30 == 1
            } else {
                st.frame == 1
            };
            let key = periodic || std::mem::take(&mut st.keyframe_wanted);
            let mut p = match codec {
                // Single NAL unit: IDR (5) or non-IDR slice (1).
                Codec::H264 => vec![if key { 0x65 } else { 0x41 }, 0x88],
                // Payload descriptor: B (begin) and, for delta frames, P (inter-predicted).
                Codec::Vp9 => vec![if key { 0x08 } else { 0x48 }, 0x80],
                // Aggregation header: N (new coded video sequence) on keyframes.
                Codec::Av1 => vec![if key { 0x18 } else { 0x10 }, 0x0a],
                _ => vec![0x10, if key { 0x00 } else { 0x01 }, 0x9d, 0x01, 0x2a],
            };
            p.resize(600, 0x55);
            (st.frame * 3000, p)
        };
        let mut ext = ExtensionValues::default();
        if audio {
            ext.audio_level = Some(-20);
            ext.voice_activity = Some(true);
        }
        let mut api = st.rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(mid, None) else {
            continue;
        };
        // Separate sequence spaces per stream: audio and video each count their own packets.
        let seq = if audio { st.seq } else { u64::from(st.frame) };
        tx.write_rtp(
            RtpWrite::new(pt, SeqNo::from(seq), ts, now, payload)
                .marker(true)
                .ext_vals(ext)
                .nackable(!audio),
        );
    }
}

/// The SFU's event stream with per-participant offer queues.
pub struct Events {
    pub rx: UnboundedReceiver<SfuEvent>,
    pub offers: HashMap<String, VecDeque<(String, Vec<SubscribedTrack>)>>,
    pub speakers: Vec<Vec<(String, f32)>>,
    pub failed: Vec<(String, String)>,
}

impl Events {
    pub fn drain(&mut self) {
        while let Ok(ev) = self.rx.try_recv() {
            self.push(ev);
        }
    }

    pub fn push(&mut self, ev: SfuEvent) {
        match ev {
            SfuEvent::SubscriberOffer {
                participant_id,
                sdp,
                tracks,
            } => self
                .offers
                .entry(participant_id)
                .or_default()
                .push_back((sdp, tracks)),
            SfuEvent::Speakers { speakers, .. } => self.speakers.push(speakers),
            SfuEvent::PeerFailed {
                participant_id,
                reason,
            } => self.failed.push((participant_id, reason)),
        }
    }

    pub async fn offer(&mut self, pid: &str) -> (String, Vec<SubscribedTrack>) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(o) = self.offers.get_mut(pid).and_then(|q| q.pop_front()) {
                return o;
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(ev)) => self.push(ev),
                _ => panic!("no subscriber offer for {pid}"),
            }
        }
    }

    pub fn has_offer(&mut self, pid: &str) -> bool {
        self.drain();
        self.offers.get(pid).is_some_and(|q| !q.is_empty())
    }

    /// Drains the stream and checks that no peer failed.
    pub fn assert_no_peer_failed(&mut self) {
        self.drain();
        assert!(self.failed.is_empty(), "no peer failed: {:?}", self.failed);
    }
}

pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(Instant::now() < deadline, "gave up waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn mid_of(tracks: &[SubscribedTrack], source: TrackSource) -> String {
    tracks
        .iter()
        .find(|t| t.track.source == source)
        .map(|t| t.mid.clone())
        .unwrap()
}

/// A media plane on a free port of 127.0.0.1, and its event stream.
pub async fn start(options: greenroom_sfu::SfuOptions) -> (Sfu, Events) {
    let (sfu, rx) = Sfu::start_with(
        SfuConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            advertise_ip: "127.0.0.1".parse().unwrap(),
        },
        options,
    )
    .await
    .unwrap();
    let events = Events {
        rx,
        offers: HashMap::new(),
        speakers: Vec::new(),
        failed: Vec::new(),
    };
    (sfu, events)
}

pub const ALL: MediaGate = MediaGate {
    send: SourceSet::ALL,
    receive: true,
};

/// Joins `publisher` and `subscriber` to `call`, publishes audio + video from the first, answers
/// the second's offer; returns both clients, connected, and the subscriber's (audio, video) mids.
/// `bwe`: bandwidth estimation on the subscriber's peer.
pub async fn publish_and_subscribe(
    sfu: &Sfu,
    events: &mut Events,
    call: &CallCid,
    (publisher, subscriber): (&str, &str),
    bwe: bool,
) -> (Client, Client, (String, String)) {
    let options = greenroom_sfu::JoinOptions {
        bandwidth_estimation: bwe,
    };
    for pid in [publisher, subscriber] {
        sfu.join_with(call, pid, &format!("u-{pid}"), ALL, options);
    }
    let p = self::publisher(sfu, publisher).await;
    let s = Client::new();
    let (_, tracks) = answer_offer(sfu, events, subscriber, &s).await;
    let mids = (
        mid_of(&tracks, TrackSource::Microphone),
        mid_of(&tracks, TrackSource::Camera),
    );
    wait_for("pair connected", || p.is_connected() && s.is_connected()).await;
    p.set_sending(true);
    (p, s, mids)
}

/// Joins `publisher` and `subscriber` to `call` (`bwe`: bandwidth estimation on the
/// subscriber's peer), publishes audio + video from the first but sends only `source`'s track
/// (the microphone: Opus; the camera: video), answers the subscriber's offer from `sub_client`;
/// returns both clients, connected, and the subscriber's mid of `source`, once `warmup`
/// packets of it arrived.
pub async fn one_source_pair(
    sfu: &Sfu,
    events: &mut Events,
    call: &CallCid,
    (publisher, subscriber): (&str, &str),
    sub_client: Client,
    (source, bwe): (TrackSource, bool),
    warmup: u64,
) -> (Client, Client, String) {
    let options = greenroom_sfu::JoinOptions {
        bandwidth_estimation: bwe,
    };
    for pid in [publisher, subscriber] {
        sfu.join_with(call, pid, &format!("u-{pid}"), ALL, options);
    }
    let p = self::publisher(sfu, publisher).await;
    let audio = source == TrackSource::Microphone;
    p.call(move |st| {
        st.send
            .retain(|(_, codec)| (*codec == Codec::Opus) == audio)
    });
    let (_, tracks) = answer_offer(sfu, events, subscriber, &sub_client).await;
    let mid = mid_of(&tracks, source);
    wait_for("pair connected", || {
        p.is_connected() && sub_client.is_connected()
    })
    .await;
    p.set_sending(true);
    let m = mid.clone();
    wait_for("media flows", || sub_client.count(&m) >= warmup).await;
    (p, sub_client, mid)
}

/// Publishes audio + video from `client` as participant `pid` (joined already) and accepts the
/// answer; returns the answer's SDP. The client connects but does not send yet.
pub async fn publish_from(sfu: &Sfu, pid: &str, client: &Client) -> String {
    let (offer, tracks, pending) = client.publish_offer();
    let answer = sfu.publish(pid, offer, tracks).await.unwrap();
    client.accept_answer(pending, answer.clone());
    answer
}

/// [`publish_from`] a new UDP client; returns the client.
pub async fn publisher(sfu: &Sfu, pid: &str) -> Client {
    let client = Client::new();
    publish_from(sfu, pid, &client).await;
    client
}

/// Waits for the next subscriber offer of `pid` and answers it from `client`; returns the
/// offer's SDP and its tracks.
pub async fn answer_offer(
    sfu: &Sfu,
    events: &mut Events,
    pid: &str,
    client: &Client,
) -> (String, Vec<SubscribedTrack>) {
    let (sdp, tracks) = events.offer(pid).await;
    let answer = client.accept_offer(sdp.clone());
    sfu.subscriber_answer(pid, answer).await.unwrap();
    (sdp, tracks)
}
