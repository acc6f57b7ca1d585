//! The sending connection: send-only transceivers and synthetic Opus/VP8 senders.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use greenroom_proto::{PublishTrack, TrackSource};
use parking_lot::Mutex;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::MediaStreamTrack;
use webrtc::peer_connection::{RTCPeerConnectionState, RTCSessionDescription};
use webrtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};

use super::peer::{
    build_peer, gathered_local_sdp, opus_codec, vp8_codec, wait_connected, IceConfig, Pc,
    PeerState, MIME_OPUS, MIME_VP8, OPUS_PT, VP8_PT,
};
use crate::error::{BotError, Result};
use crate::probe::{now_us, Probe, FLAG_FRAME_START, PROBE_LEN};
use crate::vp8::{packetize_frame, Vp8FrameSpec};

/// Synthetic video parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoParams {
    /// Frames per second (at least 1).
    pub fps: u32,
    /// Target bitrate in bits per second (interframes; keyframes are 3 times larger).
    pub bitrate_bps: u32,
    /// A keyframe every this many frames (0: only the first frame and after a resume).
    pub keyframe_interval: u32,
    /// Largest RTP payload in bytes.
    pub max_payload: usize,
    /// Width written in keyframe headers.
    pub width: u16,
    /// Height written in keyframe headers.
    pub height: u16,
}

impl Default for VideoParams {
    fn default() -> Self {
        VideoParams {
            fps: 30,
            bitrate_bps: 500_000,
            keyframe_interval: 60,
            max_payload: 1200,
            width: 640,
            height: 360,
        }
    }
}

/// Synthetic audio parameters: one packet per 20 ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioParams {
    /// Smallest payload in bytes (raised to hold the probe).
    pub min_payload: usize,
    /// Largest payload in bytes.
    pub max_payload: usize,
}

impl Default for AudioParams {
    fn default() -> Self {
        AudioParams {
            min_payload: 100,
            max_payload: 160,
        }
    }
}

/// How a [`Publisher`] is built.
#[derive(Debug, Clone, PartialEq)]
pub struct PublisherConfig {
    /// The local address to bind (a concrete address: a wildcard skips loopback).
    pub bind_ip: IpAddr,
    /// Video sources' parameters.
    pub video: VideoParams,
    /// Audio sources' parameters.
    pub audio: AudioParams,
    /// Limit for ICE gathering.
    pub gather_timeout: Duration,
    /// ICE servers and policy.
    pub ice: IceConfig,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        PublisherConfig {
            bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            video: VideoParams::default(),
            audio: AudioParams::default(),
            gather_timeout: Duration::from_secs(5),
            ice: IceConfig::default(),
        }
    }
}

/// What a publisher has sent on one source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SentStats {
    /// RTP packets handed to the connection.
    pub packets: u64,
    /// Payload bytes handed to the connection.
    pub bytes: u64,
    /// Video frames (audio: packets).
    pub frames: u64,
    /// VP8 keyframes.
    pub keyframes: u64,
    /// Writes the connection refused (not connected yet, closed).
    pub write_errors: u64,
    /// Whether the source is paused now.
    pub paused: bool,
    /// The SSRC of the source.
    pub ssrc: u32,
    /// The payload type used.
    pub payload_type: u8,
}

#[derive(Default)]
struct Counters {
    packets: AtomicU64,
    bytes: AtomicU64,
    frames: AtomicU64,
    keyframes: AtomicU64,
    write_errors: AtomicU64,
}

/// One sent source.
struct LocalSource {
    source: TrackSource,
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    payload_type: AtomicU8,
    paused: AtomicBool,
    force_keyframe: AtomicBool,
    counters: Counters,
}

impl LocalSource {
    fn snapshot(&self) -> SentStats {
        let c = &self.counters;
        SentStats {
            packets: c.packets.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            frames: c.frames.load(Ordering::Relaxed),
            keyframes: c.keyframes.load(Ordering::Relaxed),
            write_errors: c.write_errors.load(Ordering::Relaxed),
            paused: self.paused.load(Ordering::Relaxed),
            ssrc: self.ssrc,
            payload_type: self.payload_type.load(Ordering::Relaxed),
        }
    }

    async fn write(&self, header: rtp::header::Header, payload: Vec<u8>) {
        let len = payload.len() as u64;
        let packet = rtp::Packet {
            header,
            payload: Bytes::from(payload),
        };
        match self.track.write_rtp(packet).await {
            Ok(()) => {
                self.counters.packets.fetch_add(1, Ordering::Relaxed);
                self.counters.bytes.fetch_add(len, Ordering::Relaxed);
            }
            Err(e) => {
                let n = self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                if n.is_multiple_of(100) {
                    tracing::debug!(source = %self.source, error = %e, "write_rtp failed");
                }
            }
        }
    }

    fn header(&self, marker: bool, seq: u16, ts: u32) -> rtp::header::Header {
        rtp::header::Header {
            version: 2,
            marker,
            payload_type: self.payload_type.load(Ordering::Relaxed),
            sequence_number: seq,
            timestamp: ts,
            ssrc: self.ssrc,
            ..Default::default()
        }
    }
}

/// A publisher PeerConnection: it offers send-only transceivers, one per source (Opus for
/// microphone and screen-share audio, VP8 for camera and screen share), and after
/// [`Publisher::start`] sends synthetic media on each until paused, closed or dropped, whatever
/// the remote peer says.
pub struct Publisher {
    pc: Pc,
    state: PeerState,
    config: PublisherConfig,
    sources: Mutex<Vec<Arc<LocalSource>>>,
    tasks: Mutex<HashMap<TrackSource, JoinHandle<()>>>,
    started: AtomicBool,
}

impl Publisher {
    /// Builds the connection and a send-only transceiver per source (duplicates ignored).
    pub async fn new(sources: &[TrackSource], config: PublisherConfig) -> Result<Publisher> {
        let (pc, state) = build_peer(config.bind_ip, &config.ice, None).await?;
        let p = Publisher {
            pc,
            state,
            config,
            sources: Mutex::new(Vec::new()),
            tasks: Mutex::new(HashMap::new()),
            started: AtomicBool::new(false),
        };
        p.add_sources(sources).await?;
        Ok(p)
    }

    /// Adds transceivers for sources not published yet; call [`Publisher::create_offer`] next
    /// to renegotiate. Senders start at once if [`Publisher::start`] was called.
    pub async fn add_sources(&self, sources: &[TrackSource]) -> Result<()> {
        for &source in sources {
            if self.sources.lock().iter().any(|s| s.source == source) {
                continue;
            }
            let (kind, codec) = if source.is_audio() {
                (RtpCodecKind::Audio, opus_codec())
            } else {
                (RtpCodecKind::Video, vp8_codec())
            };
            let ssrc = rand::random::<u32>() | 1;
            let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                "greenroom-bot".to_owned(),
                format!("bot-{source}"),
                source.as_str().to_owned(),
                kind,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(ssrc),
                        ..Default::default()
                    },
                    active: true,
                    codec: codec.rtp_codec.clone(),
                    ..Default::default()
                }],
            )));
            self.pc
                .add_transceiver_from_track(
                    track.clone(),
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Sendonly,
                        streams: vec![],
                        send_encodings: vec![],
                    }),
                )
                .await?;
            let local = Arc::new(LocalSource {
                source,
                track,
                ssrc,
                payload_type: AtomicU8::new(codec.payload_type),
                paused: AtomicBool::new(false),
                force_keyframe: AtomicBool::new(false),
                counters: Counters::default(),
            });
            self.sources.lock().push(local.clone());
            if self.started.load(Ordering::SeqCst) {
                self.spawn_sender(local);
            }
        }
        Ok(())
    }

    /// Creates an offer, waits for ICE gathering to complete, and returns the SDP (candidates
    /// included: no trickle) with the mid of each source, ready for a `publish` message.
    pub async fn create_offer(&self) -> Result<(String, Vec<PublishTrack>)> {
        let offer = self.pc.create_offer(None).await?;
        self.pc.set_local_description(offer).await?;
        let sdp =
            gathered_local_sdp(&self.pc, &self.state.gathering, self.config.gather_timeout).await?;
        let by_ssrc = self.transceivers_by_ssrc().await?;
        let mut tracks = Vec::new();
        for s in self.sources.lock().iter() {
            let mid = by_ssrc
                .get(&s.ssrc)
                .and_then(|(mid, _)| mid.clone())
                .ok_or_else(|| BotError::Protocol(format!("no mid for {}", s.source)))?;
            tracks.push(PublishTrack {
                mid,
                source: s.source,
            });
        }
        Ok((sdp, tracks))
    }

    /// Applies the remote answer and takes the negotiated payload types.
    pub async fn apply_answer(&self, sdp: &str) -> Result<()> {
        let answer = RTCSessionDescription::answer(sdp.to_owned())?;
        self.pc.set_remote_description(answer).await?;
        let by_ssrc = self.transceivers_by_ssrc().await?;
        for s in self.sources.lock().iter() {
            let mime = if s.source.is_audio() {
                MIME_OPUS
            } else {
                MIME_VP8
            };
            if let Some((_, Some(pt))) = by_ssrc
                .get(&s.ssrc)
                .map(|(mid, codecs)| (mid, codecs.get(&mime.to_ascii_lowercase()).copied()))
            {
                s.payload_type.store(pt, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Waits until the connection is `Connected` (fails at once on `Failed`/`Closed`).
    pub async fn wait_connected(&self, timeout: Duration) -> Result<()> {
        wait_connected(&self.state.state, timeout).await
    }

    /// The connection state now.
    pub fn connection_state(&self) -> RTCPeerConnectionState {
        *self.state.state.borrow()
    }

    /// Starts one sender task per source (idempotent). Each waits for `Connected`, then sends
    /// until the publisher is closed or dropped: write errors are counted, never fatal, and
    /// no server message stops it (only [`Publisher::pause`]).
    pub fn start(&self) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let sources: Vec<_> = self.sources.lock().clone();
        for s in sources {
            self.spawn_sender(s);
        }
    }

    /// Stops sending `source` (RTP timestamps keep running, sequence numbers do not).
    pub fn pause(&self, source: TrackSource) {
        if let Some(s) = self.find(source) {
            s.paused.store(true, Ordering::SeqCst);
        }
    }

    /// Resumes `source`; video resumes with a keyframe.
    pub fn resume(&self, source: TrackSource) {
        if let Some(s) = self.find(source) {
            s.force_keyframe.store(true, Ordering::SeqCst);
            s.paused.store(false, Ordering::SeqCst);
        }
    }

    /// Makes the next frame of a video source a keyframe.
    pub fn request_keyframe(&self, source: TrackSource) {
        if let Some(s) = self.find(source) {
            s.force_keyframe.store(true, Ordering::SeqCst);
        }
    }

    /// Whether `source` is paused (`None` if not published).
    pub fn is_paused(&self, source: TrackSource) -> Option<bool> {
        self.find(source).map(|s| s.paused.load(Ordering::SeqCst))
    }

    /// The published sources.
    pub fn sources(&self) -> Vec<TrackSource> {
        self.sources.lock().iter().map(|s| s.source).collect()
    }

    /// What was sent per source.
    pub fn sent(&self) -> HashMap<TrackSource, SentStats> {
        self.sources
            .lock()
            .iter()
            .map(|s| (s.source, s.snapshot()))
            .collect()
    }

    /// The underlying webrtc-rs connection.
    pub fn peer_connection(&self) -> &Pc {
        &self.pc
    }

    /// Stops the senders and closes the connection.
    pub async fn close(&self) -> Result<()> {
        self.abort_tasks();
        self.pc.close().await?;
        Ok(())
    }

    fn find(&self, source: TrackSource) -> Option<Arc<LocalSource>> {
        self.sources
            .lock()
            .iter()
            .find(|s| s.source == source)
            .cloned()
    }

    fn abort_tasks(&self) {
        for (_, t) in self.tasks.lock().drain() {
            t.abort();
        }
    }

    fn spawn_sender(&self, s: Arc<LocalSource>) {
        let state = self.state.state.clone();
        let source = s.source;
        let task = if source.is_audio() {
            tokio::spawn(run_audio(s, self.config.audio, state))
        } else {
            tokio::spawn(run_video(s, self.config.video, state))
        };
        if let Some(old) = self.tasks.lock().insert(source, task) {
            old.abort();
        }
    }

    /// Transceivers keyed by the SSRC of their sender: (mid, negotiated mime -> payload type).
    async fn transceivers_by_ssrc(
        &self,
    ) -> Result<HashMap<u32, (Option<String>, HashMap<String, u8>)>> {
        let mut out = HashMap::new();
        for t in self.pc.get_transceivers().await {
            let Some(sender) = t.sender().await? else {
                continue;
            };
            let params = sender.get_parameters().await?;
            let codecs: HashMap<String, u8> = params
                .rtp_parameters
                .codecs
                .iter()
                .map(|c| (c.rtp_codec.mime_type.to_ascii_lowercase(), c.payload_type))
                .collect();
            let mid = t.mid().await?;
            for e in &params.encodings {
                if let Some(ssrc) = e.rtp_coding_parameters.ssrc {
                    out.insert(ssrc, (mid.clone(), codecs.clone()));
                }
            }
        }
        Ok(out)
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.abort_tasks();
    }
}

/// Waits for `Connected` (the only state in which webrtc-rs accepts writes).
async fn until_connected(state: &mut watch::Receiver<RTCPeerConnectionState>) -> bool {
    state
        .wait_for(|s| *s == RTCPeerConnectionState::Connected)
        .await
        .is_ok()
}

/// Opus-like packets every 20 ms, timestamp +960, payload sizes cycling in the configured range.
async fn run_audio(
    s: Arc<LocalSource>,
    params: AudioParams,
    mut state: watch::Receiver<RTCPeerConnectionState>,
) {
    if !until_connected(&mut state).await {
        return;
    }
    let min = params.min_payload.max(PROBE_LEN + 1);
    let max = params.max_payload.max(min);
    let mut seq: u16 = rand::random();
    let mut ts: u32 = rand::random();
    let mut probe_seq: u32 = 0;
    let mut interval = tokio::time::interval(Duration::from_millis(20));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        ts = ts.wrapping_add(960);
        if s.paused.load(Ordering::Relaxed) {
            continue;
        }
        let span = (max - min + 1) as u32;
        let len = min + (probe_seq.wrapping_mul(37) % span) as usize;
        let mut payload = vec![0x5Au8; len];
        // TOC: config 31 (CELT fullband 20 ms), mono, one frame.
        payload[0] = 0xF8;
        Probe {
            seq: probe_seq,
            send_us: now_us(),
            flags: FLAG_FRAME_START,
        }
        .write_trailer(&mut payload);
        let header = s.header(probe_seq == 0, seq, ts);
        s.write(header, payload).await;
        s.counters.frames.fetch_add(1, Ordering::Relaxed);
        seq = seq.wrapping_add(1);
        probe_seq = probe_seq.wrapping_add(1);
    }
}

/// VP8-like frames at the configured rate, each split into packets, a keyframe every
/// `keyframe_interval` frames.
async fn run_video(
    s: Arc<LocalSource>,
    params: VideoParams,
    mut state: watch::Receiver<RTCPeerConnectionState>,
) {
    if !until_connected(&mut state).await {
        return;
    }
    let fps = params.fps.max(1);
    let ts_step = 90_000 / fps;
    let frame_bytes = (params.bitrate_bps / 8 / fps) as usize;
    let mut seq: u16 = rand::random();
    let mut ts: u32 = rand::random();
    let mut probe_seq: u32 = 0;
    let mut picture_id: u16 = rand::random::<u16>() & 0x7FFF;
    let mut frame: u64 = 0;
    let mut interval = tokio::time::interval(Duration::from_micros(1_000_000 / u64::from(fps)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        ts = ts.wrapping_add(ts_step);
        if s.paused.load(Ordering::Relaxed) {
            continue;
        }
        let periodic = params.keyframe_interval > 0
            && frame.is_multiple_of(u64::from(params.keyframe_interval));
        let keyframe = frame == 0 || periodic || s.force_keyframe.swap(false, Ordering::SeqCst);
        let spec = Vp8FrameSpec {
            frame_bytes: if keyframe {
                frame_bytes * 3
            } else {
                frame_bytes
            },
            keyframe,
            picture_id,
            width: params.width,
            height: params.height,
        };
        let payloads = packetize_frame(&spec, params.max_payload, probe_seq, now_us());
        let n = payloads.len();
        for (i, p) in payloads.into_iter().enumerate() {
            let header = s.header(i + 1 == n, seq, ts);
            s.write(header, p).await;
            seq = seq.wrapping_add(1);
        }
        probe_seq = probe_seq.wrapping_add(n as u32);
        picture_id = (picture_id + 1) & 0x7FFF;
        frame += 1;
        s.counters.frames.fetch_add(1, Ordering::Relaxed);
        if keyframe {
            s.counters.keyframes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The payload type offered for a source (before negotiation).
pub fn default_payload_type(source: TrackSource) -> u8 {
    if source.is_audio() {
        OPUS_PT
    } else {
        VP8_PT
    }
}
