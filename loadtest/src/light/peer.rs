//! One light peer: a str0m [`Rtc`] in RTP mode (full ICE agent, one host candidate), one tokio
//! UDP socket (or one ICE-TCP connection, see [`super::link`]) and one tokio task that drives
//! both, sends synthetic media and counts what
//! arrives, without depacketizing anything. Every peer task of the process runs on one
//! dedicated current-thread runtime ("light-bots" thread; publishing peers on their own
//! "light-publishers" thread, see [`PeerRole`]), and str0m's own timers are rounded to a shared
//! 10 ms grid, so many peers are served per wake-up.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use greenroom_proto::{PublishTrack, SubscribedTrack, TrackSource};
use parking_lot::Mutex;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{
    Direction, KeyframeRequest, MediaKind, Mid, Pt, Rid, Simulcast, SimulcastLayer,
};
use str0m::net::Receive;
use str0m::rtp::{RtpPacket, RtpWrite, SeqNo};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::counters;
use super::link::{
    active_candidate, connect_tcp, passive_tcp_candidate, Link, LinkEvent, PeerTransport, TcpLink,
};
use crate::error::{BotError, Result};
use crate::media::{AudioParams, SentStats, VideoParams};
use crate::probe::{now_us, Probe, FLAG_FRAME_START, PROBE_LEN};
use crate::stats::{Received, TrackCounter, TrackStats};
use crate::vp8::{packetize_frame, Vp8FrameSpec};

/// The simulcast layers a light publisher sends: rid and share of the full bitrate, lowest
/// first.
pub const SIMULCAST_LAYERS: [(&str, u32, u32); 3] = [("q", 1, 4), ("h", 1, 2), ("f", 1, 1)];

/// Forced keyframes (answers to PLI/FIR) are sent at most this often per layer.
const MIN_FORCED_KEYFRAME_GAP: Duration = Duration::from_millis(500);

/// str0m's own timers (ICE keepalives, RTCP, stats) are rounded up to this grid, shared by
/// every peer of the process, so that many peers' timers fire in one runtime wake-up.
const TIMER_GRID: Duration = Duration::from_millis(10);

/// Which of the two light-bot threads a peer's task runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PeerRole {
    /// A receiving peer: shares the "light-bots" thread with every other receiving peer.
    #[default]
    Subscriber,
    /// A sending peer: runs on the "light-publishers" thread, shared only with other
    /// publishers, so that hundreds of listeners' packets never delay the publisher's frames
    /// (the bots, not the server, would then set the rate).
    Publisher,
}

/// The runtime of `role`'s peer tasks: one current-thread tokio runtime on its own OS thread
/// per role, so that a burst of datagrams for many peers (the server's fan-out) is handled in
/// one reactor wake-up without handing tasks between worker threads, and publishers keep
/// their pace whatever the listeners cost. `None` if the thread or runtime cannot be created
/// (the caller's runtime is used then).
fn light_runtime(role: PeerRole) -> Option<tokio::runtime::Handle> {
    type Slot = std::sync::OnceLock<Option<tokio::runtime::Handle>>;
    static SUBSCRIBERS: Slot = std::sync::OnceLock::new();
    static PUBLISHERS: Slot = std::sync::OnceLock::new();
    let (slot, name) = match role {
        PeerRole::Subscriber => (&SUBSCRIBERS, "light-bots"),
        PeerRole::Publisher => (&PUBLISHERS, "light-publishers"),
    };
    slot.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        let handle = rt.handle().clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || rt.block_on(std::future::pending::<()>()))
            .ok()?;
        Some(handle)
    })
    .clone()
}

/// `t` rounded up to the next [`TIMER_GRID`] tick of the process-wide grid.
fn on_grid(t: Instant) -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    let since = t.saturating_duration_since(epoch).as_micros();
    let grid = TIMER_GRID.as_micros();
    let ticks = since.div_ceil(grid);
    let micros = u64::try_from(ticks.saturating_mul(grid)).unwrap_or(u64::MAX);
    epoch + Duration::from_micros(micros)
}

/// Connection state of a light peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerStatus {
    /// ICE/DTLS not done yet.
    New,
    /// ICE and DTLS are up: media flows.
    Connected,
    /// The peer stopped (str0m error, socket error or closed); the reason.
    Failed(String),
}

/// What the peer task shares with its handle.
#[derive(Default)]
pub(crate) struct Shared {
    /// mid -> the track the last offer put there.
    mids: Mutex<HashMap<String, SubscribedTrack>>,
    /// track_id -> counter.
    counters: Mutex<HashMap<String, TrackCounter>>,
    /// What was sent, per source.
    sent: Mutex<HashMap<TrackSource, SentStats>>,
}

type Job = Box<dyn FnOnce(&mut State) + Send>;

/// One RTP stream the peer sends: a source, or one simulcast layer of a video source.
struct Layer {
    rid: Option<Rid>,
    /// Index in [`SIMULCAST_LAYERS`] when simulcast.
    index: Option<u8>,
    bitrate_bps: u32,
    next: Instant,
    seq: u64,
    ts: u32,
    probe_seq: u32,
    frame: u64,
    picture_id: u16,
    force_keyframe: bool,
    last_forced: Option<Instant>,
}

impl Layer {
    fn new(rid: Option<Rid>, index: Option<u8>, bitrate_bps: u32, now: Instant) -> Layer {
        Layer {
            rid,
            index,
            bitrate_bps,
            next: now,
            seq: u64::from(rand::random::<u16>() & 0x3FFF),
            ts: rand::random(),
            probe_seq: 0,
            frame: 0,
            picture_id: rand::random::<u16>() & 0x7FFF,
            force_keyframe: false,
            last_forced: None,
        }
    }
}

/// One sent source.
struct Sender {
    source: TrackSource,
    mid: Mid,
    audio: bool,
    layers: Vec<Layer>,
    paused: bool,
    pt: Option<Pt>,
}

/// The state the peer task owns.
pub(crate) struct State {
    rtc: Rtc,
    /// A TCP connection for the task to take as its link (set by a job).
    new_tcp: Option<std::net::TcpStream>,
    shared: Arc<Shared>,
    status: watch::Sender<PeerStatus>,
    senders: Vec<Sender>,
    sending: bool,
    audio: AudioParams,
    video: VideoParams,
    pending: Option<SdpPendingOffer>,
    /// ssrc -> (track id, mid, source), cleared on every offer.
    routes: HashMap<u32, (String, String, Option<TrackSource>)>,
}

impl State {
    fn now_connected(&self) -> bool {
        *self.status.borrow() == PeerStatus::Connected
    }

    /// Polls str0m until it asks for a timeout, sending its packets.
    fn drive(&mut self, link: &mut Link) -> Result<Instant> {
        loop {
            match self.rtc.poll_output()? {
                Output::Timeout(t) => return Ok(t),
                Output::Transmit(t) => link.send(t.proto, t.destination, &t.contents),
                Output::Event(e) => self.event(e),
            }
        }
    }

    fn event(&mut self, e: Event) {
        match e {
            Event::Connected => {
                self.status.send_replace(PeerStatus::Connected);
            }
            Event::RtpPacket(p) => self.record(&p),
            Event::KeyframeRequest(r) => self.keyframe_request(&r),
            _ => {}
        }
    }

    fn keyframe_request(&mut self, r: &KeyframeRequest) {
        for s in &mut self.senders {
            if s.mid != r.mid {
                continue;
            }
            for l in &mut s.layers {
                if r.rid.is_none() || l.rid == r.rid {
                    l.force_keyframe = true;
                }
            }
        }
    }

    fn record(&mut self, p: &RtpPacket) {
        let ssrc = *p.header.ssrc;
        if !self.routes.contains_key(&ssrc) {
            let mid = self
                .rtc
                .direct_api()
                .stream_rx(&p.header.ssrc)
                .map(|s| s.mid().to_string())
                .unwrap_or_else(|| format!("ssrc-{ssrc}"));
            let route = match self.shared.mids.lock().get(&mid) {
                Some(t) => (t.track.track_id.clone(), mid, Some(t.track.source)),
                None => (format!("mid:{mid}"), mid, None),
            };
            self.routes.insert(ssrc, route);
        }
        let Some((track_id, mid, source)) = self.routes.get(&ssrc) else {
            return;
        };
        let mut counters = self.shared.counters.lock();
        let c = match counters.get_mut(track_id) {
            Some(c) => c,
            None => counters
                .entry(track_id.clone())
                .or_insert_with(|| TrackCounter::new(track_id.clone(), mid.clone(), *source)),
        };
        c.relabel(mid, *source);
        c.record(&Received {
            ssrc,
            payload_type: *p.header.payload_type,
            marker: p.header.marker,
            payload: &p.payload,
            recv_us: now_us(),
            at: Instant::now(),
        });
    }

    /// The earliest time a sender is due, if sending.
    fn next_media(&self) -> Option<Instant> {
        if !self.sending || !self.now_connected() {
            return None;
        }
        self.senders
            .iter()
            .filter(|s| !s.paused)
            .flat_map(|s| s.layers.iter().map(|l| l.next))
            .min()
    }

    /// Sends every frame that is due.
    fn send_due(&mut self, now: Instant) {
        if !self.sending || !self.now_connected() {
            return;
        }
        let (audio_params, video_params) = (self.audio, self.video);
        for si in 0..self.senders.len() {
            let (paused, cached, audio) = {
                let s = &self.senders[si];
                (s.paused, s.pt, s.audio)
            };
            if paused {
                continue;
            }
            let pt = match cached {
                Some(pt) => pt,
                None => {
                    let codec = if audio { Codec::Opus } else { Codec::Vp8 };
                    let Some(pt) = self
                        .rtc
                        .codec_config()
                        .find(|p| p.spec().codec == codec)
                        .map(|p| p.pt())
                    else {
                        continue;
                    };
                    self.senders[si].pt = Some(pt);
                    pt
                }
            };
            let s = &self.senders[si];
            let (mid, audio, source) = (s.mid, s.audio, s.source);
            for li in 0..s.layers.len() {
                let l = &mut self.senders[si].layers[li];
                if l.next > now {
                    continue;
                }
                let period = if audio {
                    Duration::from_millis(20)
                } else {
                    Duration::from_micros(1_000_000 / u64::from(video_params.fps.max(1)))
                };
                l.next += period;
                if l.next < now {
                    // Late (starved task): skip ahead instead of bursting.
                    l.next = now + period;
                }
                let (payloads, keyframe) = if audio {
                    (vec![audio_payload(l, audio_params)], false)
                } else {
                    video_frame(l, video_params, now)
                };
                let n = payloads.len();
                let mut bytes = 0u64;
                let mut api = self.rtc.direct_api();
                let Some(tx) = api.stream_tx_by_mid(mid, l.rid) else {
                    continue;
                };
                for (i, p) in payloads.into_iter().enumerate() {
                    bytes += p.len() as u64;
                    let marker = if audio { l.probe_seq == 1 } else { i + 1 == n };
                    tx.write_rtp(
                        RtpWrite::new(pt, SeqNo::from(l.seq), l.ts, now, p)
                            .marker(marker)
                            .nackable(!audio),
                    );
                    l.seq += 1;
                }
                let mut sent = self.shared.sent.lock();
                let st = sent.entry(source).or_default();
                st.packets += n as u64;
                st.bytes += bytes;
                st.frames += 1;
                st.keyframes += u64::from(keyframe);
                st.payload_type = *pt;
            }
        }
    }

    fn input(&mut self, link: &mut Link, src: SocketAddr, data: &[u8]) -> Result<()> {
        let Some((proto, local)) = link.local() else {
            return Ok(());
        };
        // Not STUN/DTLS/RTP: ignored, like any stray datagram.
        let Ok(r) = Receive::new(proto, src, local, data) else {
            return Ok(());
        };
        self.rtc.handle_input(Input::Receive(Instant::now(), r))?;
        self.drive(link).map(|_| ())
    }
}

/// One Opus-like packet; advances the layer's counters.
fn audio_payload(l: &mut Layer, params: AudioParams) -> Vec<u8> {
    let min = params.min_payload.max(PROBE_LEN + 1);
    let max = params.max_payload.max(min);
    let span = (max - min + 1) as u32;
    let len = min + (l.probe_seq.wrapping_mul(37) % span) as usize;
    let mut payload = vec![0x5Au8; len];
    // TOC: config 31 (CELT fullband 20 ms), mono, one frame.
    payload[0] = 0xF8;
    Probe {
        seq: l.probe_seq,
        send_us: now_us(),
        flags: FLAG_FRAME_START,
    }
    .write_trailer(&mut payload);
    l.ts = l.ts.wrapping_add(960);
    l.probe_seq = l.probe_seq.wrapping_add(1);
    l.frame += 1;
    payload
}

/// One VP8-like frame split into payloads (the same sizes as the webrtc-rs publisher's);
/// returns the payloads and whether it is a keyframe.
fn video_frame(l: &mut Layer, params: VideoParams, now: Instant) -> (Vec<Vec<u8>>, bool) {
    let fps = params.fps.max(1);
    l.ts = l.ts.wrapping_add(90_000 / fps);
    let frame_bytes = (l.bitrate_bps / 8 / fps) as usize;
    let periodic =
        params.keyframe_interval > 0 && l.frame.is_multiple_of(u64::from(params.keyframe_interval));
    let forced = l.force_keyframe
        && l.last_forced
            .is_none_or(|t| now.saturating_duration_since(t) >= MIN_FORCED_KEYFRAME_GAP);
    if forced {
        l.force_keyframe = false;
        l.last_forced = Some(now);
    }
    let keyframe = l.frame == 0 || periodic || forced;
    let spec = Vp8FrameSpec {
        frame_bytes: if keyframe {
            frame_bytes * 3
        } else {
            frame_bytes
        },
        keyframe,
        picture_id: l.picture_id,
        width: params.width,
        height: params.height,
    };
    let mut payloads = packetize_frame(&spec, params.max_payload, l.probe_seq, now_us());
    if let Some(index) = l.index {
        for p in &mut payloads {
            Probe::set_layer_in(p, index);
        }
    }
    l.probe_seq = l.probe_seq.wrapping_add(payloads.len() as u32);
    l.picture_id = (l.picture_id + 1) & 0x7FFF;
    l.frame += 1;
    (payloads, keyframe)
}

/// What woke the task.
enum Wake {
    Job(Option<Job>),
    Net(std::io::Result<LinkEvent>),
    Timer,
}

/// Handles a readable/writable TCP link: writes what waits, feeds every whole frame read.
fn on_tcp(st: &mut State, link: &mut Link, ready: tokio::io::Ready) -> Result<()> {
    let Link::Tcp(t) = link else {
        return Ok(());
    };
    let remote = t.remote;
    if ready.is_writable() {
        t.flush()?;
    }
    let mut frames = Vec::new();
    let open = if ready.is_readable() || ready.is_read_closed() {
        t.read(&mut frames)?
    } else {
        true
    };
    for f in &frames {
        counters::count(f);
        st.input(link, remote, f)?;
    }
    if !open {
        return Err(BotError::ConnectionFailed(
            "the server closed the ICE-TCP connection".into(),
        ));
    }
    Ok(())
}

/// The task: socket reads, str0m timeouts, media timers and jobs from the handle. The socket
/// (or the TCP connection a job hands over) is registered with the runtime the task runs on.
async fn run(
    mut st: State,
    socket: Option<std::net::UdpSocket>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
) {
    let fail = |st: &State, why: String| {
        st.status.send_replace(PeerStatus::Failed(why));
    };
    let mut link = match socket {
        None => Link::Pending,
        Some(s) => match s
            .local_addr()
            .and_then(|a| Ok((tokio::net::UdpSocket::from_std(s)?, a)))
        {
            Ok((socket, local)) => Link::Udp(socket, local),
            Err(e) => return fail(&st, e.to_string()),
        },
    };
    let mut buf = vec![0u8; 2048];
    let far = Duration::from_secs(3600);
    loop {
        let rtc_next = match st.drive(&mut link) {
            Ok(t) => t,
            Err(e) => return fail(&st, e.to_string()),
        };
        let rtc_next = on_grid(rtc_next);
        let media_next = st.next_media();
        let next = media_next
            .map_or(rtc_next, |m| m.min(rtc_next))
            .max(Instant::now())
            .min(Instant::now() + far);
        let wake = tokio::select! {
            job = jobs.recv() => Wake::Job(job),
            r = link.wait(&mut buf) => Wake::Net(r),
            _ = tokio::time::sleep_until(next.into()) => Wake::Timer,
        };
        let res = match wake {
            Wake::Job(None) => return,
            Wake::Job(Some(job)) => {
                job(&mut st);
                match st.new_tcp.take().map(TcpLink::new) {
                    None => Ok(()),
                    Some(Ok(t)) => {
                        link = Link::Tcp(t);
                        Ok(())
                    }
                    Some(Err(e)) => Err(BotError::Io(e)),
                }
            }
            Wake::Net(Ok(LinkEvent::Datagram(n, src))) => {
                counters::count(&buf[..n]);
                st.input(&mut link, src, &buf[..n])
            }
            Wake::Net(Ok(LinkEvent::Tcp(ready))) => on_tcp(&mut st, &mut link, ready),
            // UDP: e.g. ICMP port unreachable reported on the socket: keep going.
            Wake::Net(Err(e)) if matches!(link, Link::Udp(..)) => {
                tracing::trace!(error = %e, "light peer socket");
                Ok(())
            }
            Wake::Net(Err(e)) => Err(BotError::Io(e)),
            Wake::Timer => Ok(()),
        };
        if let Err(e) = res {
            return fail(&st, e.to_string());
        }
        let now = Instant::now();
        let media_due = media_next.is_some_and(|m| m <= now);
        if media_due {
            st.send_due(now);
        }
        // A received datagram was already handled (and str0m polled) in `input`: str0m only
        // needs the clock when its timer or a media frame is due.
        if media_due || rtc_next <= now {
            if let Err(e) = st.rtc.handle_input(Input::Timeout(now)) {
                return fail(&st, e.to_string());
            }
        }
    }
}

/// A handle on a light peer's task. Dropping it stops the task.
pub struct LightPeer {
    jobs: mpsc::UnboundedSender<Job>,
    transport: PeerTransport,
    bind_ip: IpAddr,
    /// TCP: the connection was opened (on the first offer or answer).
    tcp_opened: tokio::sync::Mutex<bool>,
    shared: Arc<Shared>,
    status: watch::Receiver<PeerStatus>,
    task: JoinHandle<()>,
}

impl LightPeer {
    /// Binds a UDP socket on `bind_ip` (a concrete address), builds the str0m peer (RTP mode,
    /// full ICE agent, one host candidate) and starts its task.
    pub async fn new(bind_ip: IpAddr, audio: AudioParams, video: VideoParams) -> Result<LightPeer> {
        LightPeer::with_transport(bind_ip, PeerTransport::Udp, audio, video).await
    }

    /// [`LightPeer::new`] over `transport`. With [`PeerTransport::Tcp`] the peer has no
    /// candidate until the first offer or answer it applies names the server's passive TCP
    /// candidate: it then connects from `bind_ip` and its only candidate is that connection's
    /// (active TCP).
    pub async fn with_transport(
        bind_ip: IpAddr,
        transport: PeerTransport,
        audio: AudioParams,
        video: VideoParams,
    ) -> Result<LightPeer> {
        LightPeer::with_role(bind_ip, transport, PeerRole::Subscriber, audio, video).await
    }

    /// [`LightPeer::with_transport`] on `role`'s thread: a peer that publishes should be a
    /// [`PeerRole::Publisher`], so that receiving peers never delay its frames.
    pub async fn with_role(
        bind_ip: IpAddr,
        transport: PeerTransport,
        role: PeerRole,
        audio: AudioParams,
        video: VideoParams,
    ) -> Result<LightPeer> {
        let mut rtc = RtcConfig::new()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .build(Instant::now());
        let socket = match transport {
            PeerTransport::Tcp => None,
            PeerTransport::Udp => {
                let socket = std::net::UdpSocket::bind(SocketAddr::new(bind_ip, 0))?;
                socket.set_nonblocking(true)?;
                let candidate = Candidate::host(socket.local_addr()?, "udp")
                    .map_err(|e| BotError::Protocol(e.to_string()))?;
                rtc.add_local_candidate(candidate);
                Some(socket)
            }
        };
        let shared = Arc::new(Shared::default());
        let (status_tx, status) = watch::channel(PeerStatus::New);
        let state = State {
            rtc,
            new_tcp: None,
            shared: shared.clone(),
            status: status_tx,
            senders: Vec::new(),
            sending: false,
            audio,
            video,
            pending: None,
            routes: HashMap::new(),
        };
        let (jobs, jobs_rx) = mpsc::unbounded_channel();
        let task = match light_runtime(role) {
            Some(rt) => rt.spawn(run(state, socket, jobs_rx)),
            None => tokio::spawn(run(state, socket, jobs_rx)),
        };
        Ok(LightPeer {
            jobs,
            transport,
            bind_ip,
            tcp_opened: tokio::sync::Mutex::new(false),
            shared,
            status,
            task,
        })
    }

    /// Runs `f` on the peer's task and returns its result.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut State) -> T + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move |st| {
                let _ = tx.send(f(st));
            }))
            .map_err(|_| self.gone())?;
        rx.await.map_err(|_| self.gone())
    }

    fn gone(&self) -> BotError {
        match &*self.status.borrow() {
            PeerStatus::Failed(why) => BotError::ConnectionFailed(format!("failed: {why}")),
            _ => BotError::ConnectionFailed("peer task stopped".into()),
        }
    }

    /// Creates the publish offer: one send-only m-line per source (duplicates ignored), video
    /// with three simulcast layers (rids `q`, `h`, `f`) when `simulcast`. Returns the SDP and
    /// which mid carries which source; apply the server's answer with
    /// [`LightPeer::accept_answer`].
    pub async fn publish_offer(
        &self,
        sources: &[TrackSource],
        simulcast: bool,
    ) -> Result<(String, Vec<PublishTrack>)> {
        let sources = sources.to_vec();
        self.call(move |st| {
            let now = Instant::now();
            let mut api = st.rtc.sdp_api();
            let mut added = Vec::new();
            for source in sources {
                if st.senders.iter().any(|s| s.source == source)
                    || added.iter().any(|(s, _, _)| *s == source)
                {
                    continue;
                }
                let audio = source.is_audio();
                let kind = if audio {
                    MediaKind::Audio
                } else {
                    MediaKind::Video
                };
                let sim = (simulcast && !audio).then(|| {
                    let mut s = Simulcast::new();
                    for (rid, _, _) in SIMULCAST_LAYERS {
                        s.add_send_layer(SimulcastLayer::new(rid));
                    }
                    s
                });
                let mid = api.add_media(
                    kind,
                    Direction::SendOnly,
                    Some("greenroom-light".into()),
                    Some(format!("light-{source}")),
                    sim,
                );
                added.push((source, mid, audio));
            }
            let offer = api.apply();
            let full = st.video.bitrate_bps;
            for (source, mid, audio) in added {
                let layers = if audio {
                    vec![Layer::new(None, None, 0, now)]
                } else if simulcast {
                    SIMULCAST_LAYERS
                        .iter()
                        .enumerate()
                        .map(|(i, (rid, num, den))| {
                            let rate = (u64::from(full) * u64::from(*num) / u64::from(*den)) as u32;
                            Layer::new(Some(Rid::from(*rid)), Some(i as u8), rate, now)
                        })
                        .collect()
                } else {
                    vec![Layer::new(None, None, full, now)]
                };
                st.senders.push(Sender {
                    source,
                    mid,
                    audio,
                    layers,
                    paused: false,
                    pt: None,
                });
            }
            let tracks: Vec<PublishTrack> = st
                .senders
                .iter()
                .map(|s| PublishTrack {
                    mid: s.mid.to_string(),
                    source: s.source,
                })
                .collect();
            match offer {
                Some((offer, pending)) => {
                    st.pending = Some(pending);
                    Ok((offer.to_sdp_string(), tracks))
                }
                None => Err(BotError::Protocol("nothing to offer".into())),
            }
        })
        .await?
    }

    /// TCP: on the first SDP from the server, connects to its passive TCP candidate and hands
    /// the connection and its active candidate to the task. UDP: nothing.
    async fn open_tcp(&self, server_sdp: &str) -> Result<()> {
        if self.transport != PeerTransport::Tcp {
            return Ok(());
        }
        let mut opened = self.tcp_opened.lock().await;
        if *opened {
            return Ok(());
        }
        let server = passive_tcp_candidate(server_sdp, self.bind_ip).ok_or_else(|| {
            BotError::ConnectionFailed(
                "the server's SDP has no passive TCP candidate (ICE-TCP off?)".into(),
            )
        })?;
        let stream = connect_tcp(self.bind_ip, server).await?;
        let candidate = active_candidate(stream.local_addr()?)
            .map_err(|e| BotError::Protocol(e.to_string()))?;
        self.call(move |st| {
            st.rtc.add_local_candidate(candidate);
            st.new_tcp = Some(stream);
        })
        .await?;
        *opened = true;
        Ok(())
    }

    /// Applies the answer to the last [`LightPeer::publish_offer`].
    pub async fn accept_answer(&self, sdp: &str) -> Result<()> {
        let answer = SdpAnswer::from_sdp_string(sdp)
            .map_err(|e| BotError::Protocol(format!("bad answer SDP: {e}")))?;
        self.open_tcp(sdp).await?;
        self.call(move |st| {
            let pending = st
                .pending
                .take()
                .ok_or_else(|| BotError::Protocol("answer without a pending offer".into()))?;
            st.rtc.sdp_api().accept_answer(pending, answer)?;
            Ok(())
        })
        .await?
    }

    /// Applies an offer (first or renegotiation) describing which mid carries which track and
    /// returns the answer SDP (candidates included: no trickle).
    pub async fn accept_offer(&self, sdp: &str, tracks: Vec<SubscribedTrack>) -> Result<String> {
        let offer = SdpOffer::from_sdp_string(sdp)
            .map_err(|e| BotError::Protocol(format!("bad offer SDP: {e}")))?;
        self.open_tcp(sdp).await?;
        {
            let mut mids = self.shared.mids.lock();
            mids.clear();
            mids.extend(tracks.into_iter().map(|t| (t.mid.clone(), t)));
        }
        self.call(move |st| {
            st.routes.clear();
            let answer = st.rtc.sdp_api().accept_offer(offer)?;
            Ok(answer.to_sdp_string())
        })
        .await?
    }

    /// Starts sending on every source once connected (and on sources added later).
    pub async fn start(&self) -> Result<()> {
        self.call(|st| st.sending = true).await
    }

    /// Pauses or resumes one source; a resumed video source starts with a keyframe.
    pub async fn set_paused(&self, source: TrackSource, paused: bool) -> Result<()> {
        self.call(move |st| {
            let now = Instant::now();
            for s in st.senders.iter_mut().filter(|s| s.source == source) {
                if s.paused && !paused {
                    for l in &mut s.layers {
                        l.force_keyframe = true;
                        l.last_forced = None;
                        l.next = now;
                    }
                }
                s.paused = paused;
            }
        })
        .await
    }

    /// Waits for ICE and DTLS; fails at once if the peer stopped.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<()> {
        let mut s = self.status.clone();
        let res = tokio::time::timeout(timeout, s.wait_for(|s| !matches!(s, PeerStatus::New)))
            .await
            .map_err(|_| BotError::timeout("light peer connected", timeout))?;
        match res.map(|s| s.clone()) {
            Ok(PeerStatus::Connected) => Ok(()),
            Ok(PeerStatus::Failed(why)) => Err(BotError::ConnectionFailed(why)),
            Ok(PeerStatus::New) | Err(_) => Err(self.gone()),
        }
    }

    /// The connection state now.
    pub fn status(&self) -> PeerStatus {
        self.status.borrow().clone()
    }

    /// The tracks of the last offer, by mid.
    pub fn tracks(&self) -> HashMap<String, SubscribedTrack> {
        self.shared.mids.lock().clone()
    }

    /// A snapshot of what arrived, by track id.
    pub fn stats(&self) -> HashMap<String, TrackStats> {
        self.shared
            .counters
            .lock()
            .iter()
            .map(|(k, c)| (k.clone(), c.stats().clone()))
            .collect()
    }

    /// What was sent, per source.
    pub fn sent(&self) -> HashMap<TrackSource, SentStats> {
        self.shared.sent.lock().clone()
    }

    /// Stops the task (the server notices by ICE timeout or the signaling close).
    pub fn close(&self) {
        self.task.abort();
    }
}

impl Drop for LightPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
