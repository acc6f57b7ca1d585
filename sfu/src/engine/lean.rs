//! The lean path: forwarded audio (and video of single-layer sources, [`super::lean_video`]) to
//! a connected subscriber is built, SRTP-protected and queued on the shard's socket by the
//! engine itself, in the fan-out loop, instead of a str0m `write_rtp` and one full drive cycle
//! per packet per subscriber.
//!
//! str0m keeps everything else of the peer (ICE, DTLS, SDP, incoming RTCP, simulcast video).
//! What the engine needs, and where it comes from:
//!
//! * **Keys**: the SRTP keying material passes through our DTLS adapter
//!   ([`crate::dtls`]), which copies it into the peer's [`KeySlot`] (handed over at
//!   [`Engine::new_peer`]). Our [`SrtpSession`] derives the same contexts str0m does.
//! * **Path**: str0m sends every DTLS datagram to the nominated candidate pair, so each
//!   non-STUN transmit of a drive records (protocol, destination). A later nomination (ICE
//!   restart, a new pair) moves the path only when an authenticated one happened: a binding
//!   request with USE-CANDIDATE from X reached the peer and str0m answered it with a success
//!   response to X (str0m checked its MESSAGE-INTEGRITY). No unauthenticated datagram moves it.
//! * **No shared nonce**: an audio consumer is lean from its creation (the answer that opens
//!   its m-line): its str0m send stream is removed from the `Rtc` right there, so str0m never
//!   sends RTP or SRTCP on its SSRC with the same keys; it is declared again only while an
//!   offer is created (its `a=ssrc` lines) and removed again at once, before any str0m timer
//!   could write a sender report for it ([`Engine::repark_lean`]). Each lean stream
//!   never protects the same extended sequence number twice ([`SeqWindow`]), and our SRTCP
//!   index starts far above str0m's own counter ([`RTCP_INDEX_BASE`]).
//! * **Sender reports**: the engine sends one per lean stream every [`SR_TICKS`] housekeeping
//!   ticks (packets, octets, RTP time extrapolated from the last packet).

use super::*;
use crate::dtls::KeySlot;
use crate::forward::note_change;
use crate::metrics::add;
use crate::rtp_out::{self, AudioExts, RtpFields};
use crate::srtp::{DtlsRole, RtpSealer, SrtpReceiver, SrtpSession};
use str0m::net::Protocol;
use str0m::rtp::Extension;
use str0m_proto::crypto::dtls::SrtpProfile;
use tracing::debug;

/// Our SRTCP index starts here: str0m's own counter for the same session starts at 0 and
/// sends a few RTCP packets per second, so the two never meet (a peer lives far less than the
/// 2^30 / 10 s ≈ 3 years it would take).
pub(super) const RTCP_INDEX_BASE: u32 = 1 << 30;

/// Housekeeping ticks ([`TICK`]) between two sender reports of a lean stream (1 s).
pub(super) const SR_TICKS: u64 = 4;

/// Where a subscriber's media goes: its nominated candidate pair, seen from our side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Path {
    /// UDP, or an ICE-TCP connection.
    pub(super) proto: Protocol,
    /// The client's address.
    pub(super) dest: SocketAddr,
}

/// A subscriber peer's lean state: its keys, SRTP session and path.
#[derive(Default)]
pub(super) struct LeanPeer {
    /// Filled by the DTLS instance when the handshake exports its keys.
    pub(super) keys: KeySlot,
    /// Made from `keys` on first use (`None` while there are none, or for a profile our SRTP
    /// does not do: the peer then stays on str0m).
    srtp: Option<SrtpSession>,
    /// The subscriber's side of the same keys (its SRTCP: feedback about lean video streams
    /// and report blocks about lean audio and video, [`super::lean_rtcp`]); made with `srtp`.
    rx: Option<SrtpReceiver>,
    /// The keys were tried (successfully or not).
    tried: bool,
    /// The nominated pair, from str0m's DTLS transmits and authenticated nominations.
    pub(super) path: Option<Path>,
    /// A binding request with USE-CANDIDATE being handled in this drive: its transaction id
    /// and source.
    pub(super) nominating: Option<([u8; 12], SocketAddr)>,
    /// Lean streams of this subscriber, audio and video, one per m-line (the latest opened):
    /// their feedback and report blocks are read by the engine (str0m does not know them), and
    /// this index finds a block's consumer without scanning the subscriber's tracks. Entries
    /// of gone consumers find no consumer.
    pub(super) streams: Vec<LeanStream>,
}

/// One lean stream of a subscriber ([`LeanPeer::streams`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LeanStream {
    /// Our SSRC of the stream.
    pub(super) ssrc: Ssrc,
    /// Its m-line.
    pub(super) mid: Mid,
    /// The producer forwarded on it.
    pub(super) pk: Key,
    /// Video (keyframe requests and NACKs apply), or audio.
    pub(super) video: bool,
}

impl Drop for LeanPeer {
    /// The peer is gone: every [`Route`] cached from it is stale.
    fn drop(&mut self) {
        note_change();
    }
}

impl LeanPeer {
    /// Indexes a lean stream opened on `s.mid`, replacing what that m-line carried before (so
    /// the index holds at most one entry per m-line).
    pub(super) fn add_stream(&mut self, s: LeanStream) {
        self.streams.retain(|o| o.mid != s.mid);
        self.streams.push(s);
    }

    /// Forgets what m-line `mid` carried: it now carries a stream str0m sends.
    pub(super) fn forget(&mut self, mid: Mid) {
        self.streams.retain(|o| o.mid != mid);
    }

    /// Whether every one of `mids` carries a lean stream (so str0m sends no media for them).
    pub(super) fn covers<'a>(&self, mut mids: impl Iterator<Item = &'a Mid>) -> bool {
        mids.all(|m| self.streams.iter().any(|s| s.mid == *m))
    }

    /// The lean stream with our SSRC `ssrc`, if any.
    pub(super) fn stream(&self, ssrc: Ssrc) -> Option<&LeanStream> {
        self.streams.iter().find(|s| s.ssrc == ssrc)
    }

    /// One datagram str0m sends (a drive's transmit): DTLS records the path; a success
    /// response to the nomination being handled moves it.
    pub(super) fn on_transmit(&mut self, proto: Protocol, dest: SocketAddr, data: &[u8]) {
        match data.first() {
            // RFC 7983: 20..=63 is DTLS.
            Some(20..=63) => self.set_path(Path { proto, dest }),
            Some(0..=3) => {
                if let Some((tid, from)) = self.nominating {
                    if from == dest && stun_success_for(data, &tid) {
                        self.set_path(Path { proto, dest });
                        self.nominating = None;
                    }
                }
            }
            _ => {}
        }
    }

    /// Moves the path; a move makes every cached [`Route`] stale.
    fn set_path(&mut self, path: Path) {
        if self.path != Some(path) {
            self.path = Some(path);
            note_change();
        }
    }

    /// Whether the peer can take lean packets now: connected, with keys of a profile our SRTP
    /// does, and a path.
    pub(super) fn state(&mut self, connected: bool) -> LeanState<'_> {
        if !connected {
            return LeanState::Waiting;
        }
        self.make_sessions();
        match (self.srtp.as_mut(), self.path) {
            (Some(srtp), Some(path)) => LeanState::Ready(srtp, path),
            // str0m sends DTLS (hence a path) before it connects: never without one.
            _ => LeanState::Unavailable,
        }
    }

    /// The receiver of the subscriber's SRTCP, once connected with keys our SRTP takes.
    pub(super) fn receiver(&mut self, connected: bool) -> Option<&mut SrtpReceiver> {
        if !connected {
            return None;
        }
        self.make_sessions();
        self.rx.as_mut()
    }

    /// Makes the SRTP session and receiver from the exported keys, once.
    fn make_sessions(&mut self) {
        if !self.tried {
            // str0m reports the peer connected after the DTLS handshake exported the keys.
            let Some(keys) = self.keys.get() else {
                return;
            };
            self.tried = true;
            if lean_profile(keys.profile) {
                let role = if keys.active {
                    DtlsRole::Client
                } else {
                    DtlsRole::Server
                };
                let made =
                    SrtpSession::new(keys.profile, &keys.material, role).and_then(|mut s| {
                        s.set_rtcp_index_base(RTCP_INDEX_BASE)?;
                        Ok(s)
                    });
                self.srtp = made.map_err(|e| debug!("no lean SRTP session: {e}")).ok();
                self.rx = SrtpReceiver::rtcp_only(keys.profile, &keys.material, role)
                    .map_err(|e| debug!("no lean SRTP receiver: {e}"))
                    .ok();
            }
        }
    }
}

/// What a subscriber peer can do with lean packets.
pub(super) enum LeanState<'a> {
    /// Send them: the peer's SRTP session and path.
    Ready(&'a mut SrtpSession, Path),
    /// Not yet: DTLS is not connected (str0m could not send either).
    Waiting,
    /// Never: no keys, a profile our SRTP does not do, or no path. Its streams go through
    /// str0m.
    Unavailable,
}

/// The SRTP profiles the lean path sends with (others stay on str0m).
fn lean_profile(p: SrtpProfile) -> bool {
    matches!(
        p,
        SrtpProfile::AEAD_AES_128_GCM
            | SrtpProfile::AEAD_AES_256_GCM
            | SrtpProfile::AES128_CM_SHA1_80
    )
}

/// Whether `data` is a STUN binding request with USE-CANDIDATE (RFC 8445 §7.1.2): its
/// transaction id. Only the framing is read; str0m checks the rest.
pub(super) fn nomination(data: &[u8]) -> Option<[u8; 12]> {
    const USE_CANDIDATE: u16 = 0x0025;
    if data.len() < 20 || data[0..2] != [0x00, 0x01] || data[4..8] != MAGIC {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([data[2], data[3]]));
    let body = data.get(20..20 + len)?;
    let mut at = 0;
    while at + 4 <= body.len() {
        let kind = u16::from_be_bytes([body[at], body[at + 1]]);
        let alen = usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
        if kind == USE_CANDIDATE {
            return data[8..20].try_into().ok();
        }
        at += 4 + alen.div_ceil(4) * 4;
    }
    None
}

/// STUN magic cookie.
const MAGIC: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];

/// Whether `data` is a STUN binding success response to transaction `tid`.
fn stun_success_for(data: &[u8], tid: &[u8; 12]) -> bool {
    data.len() >= 20 && data[0..2] == [0x01, 0x01] && data[4..8] == MAGIC && &data[8..20] == tid
}

/// The extended sequence numbers a lean stream has protected: the highest, and which of the
/// 64 below it. A packet whose number was protected (a duplicate from the publisher) or is
/// older than the window is not sent: one (SSRC, index) never gets two different plaintexts
/// under one key (AES-GCM's nonce).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct SeqWindow {
    max: Option<u64>,
    /// Bit i: `max - i` was sent.
    sent: u64,
}

impl SeqWindow {
    /// Whether `seq` may be sent now (and records it); true only once per number.
    pub(super) fn admit(&mut self, seq: u64) -> bool {
        let Some(max) = self.max else {
            self.max = Some(seq);
            self.sent = 1;
            return true;
        };
        if seq > max {
            let shift = seq - max;
            self.sent = if shift >= 64 { 0 } else { self.sent << shift } | 1;
            self.max = Some(seq);
            return true;
        }
        let back = max - seq;
        if back >= 64 || self.sent & (1 << back) != 0 {
            return false;
        }
        self.sent |= 1 << back;
        true
    }

    /// The highest number sent.
    pub(super) fn max(&self) -> Option<u64> {
        self.max
    }
}

/// One lean stream (an audio or single-layer video consumer on the lean path).
#[derive(Debug, Clone)]
pub(super) struct LeanTx {
    /// The header extensions written (video: the mid only).
    pub(super) exts: AudioExts,
    window: SeqWindow,
    /// Packets and payload octets sent (for sender reports).
    packets: u32,
    octets: u32,
    /// The RTP timestamp of the highest packet, when it arrived, and the clock rate.
    last: Option<(u32, Instant, u32)>,
    /// Video: the sequence map, retransmit budget and RTX counter.
    pub(super) video: Option<super::lean_video::VideoTx>,
    /// Sender reports sent, and the subscriber's receiver reports ([`super::lean_stats`]).
    pub(super) reports: super::lean_stats::StreamReports,
    /// Where its packets go and the cipher that seals them, copied from the subscriber peer
    /// (so the fan-out does not look the peer up per packet).
    route: Option<Route>,
}

/// A lean stream's copy of its subscriber's send state: valid while the change counter
/// ([`crate::forward::changes`]) is still at the value it was copied at. Everything it copies
/// bumps the counter when it changes: the path (`LeanPeer::set_path`) and the peer itself
/// (dropped: `LeanPeer`'s `Drop`); the keys and `connected` never change once a route exists.
#[derive(Debug, Clone)]
pub(super) struct Route {
    at: u64,
    /// The subscriber's RTP cipher.
    pub(super) seal: RtpSealer,
    /// The subscriber's nominated pair.
    pub(super) path: Path,
}

impl LeanTx {
    /// A lean stream writing the header extensions `exts`.
    pub(super) fn new(exts: AudioExts) -> LeanTx {
        LeanTx {
            exts,
            window: SeqWindow::default(),
            packets: 0,
            octets: 0,
            last: None,
            video: None,
            reports: Default::default(),
            route: None,
        }
    }

    /// A lean video stream writing `exts`.
    pub(super) fn video(exts: AudioExts) -> LeanTx {
        LeanTx {
            video: Some(super::lean_video::VideoTx::default()),
            ..LeanTx::new(exts)
        }
    }

    /// The highest sequence number sent.
    pub(super) fn max_seq(&self) -> Option<u64> {
        self.window.max()
    }

    /// The cached route, if it is current at change count `now`.
    #[inline]
    pub(super) fn route(&self, now: u64) -> Option<&Route> {
        self.route.as_ref().filter(|r| r.at == now)
    }

    /// Caches the route read from the subscriber peer at change count `now`.
    pub(super) fn set_route(&mut self, now: u64, srtp: &SrtpSession, path: Path) -> &Route {
        self.route.insert(Route {
            at: now,
            seal: srtp.rtp_sealer(),
            path,
        })
    }
}

/// The header extensions str0m would write on `mid` of `rtc` for forwarded audio: the mid
/// (str0m writes it until the receiver's first report on the SSRC; here always, a few bytes)
/// and the audio level. Not written: abs-send-time (a receive-side video estimate input) and
/// transport-wide-cc (bandwidth estimation, off for audio-only listeners; with it on, audio
/// still goes lean and simply carries no TWCC sequence).
pub(super) fn audio_exts(rtc: &Rtc, mid: Mid) -> AudioExts {
    let Some(media) = rtc.media(mid) else {
        return AudioExts::default();
    };
    let map = media.remote_extmap();
    AudioExts::new(
        map.id_of(Extension::RtpMid).map(|id| (id, &*mid)),
        map.id_of(Extension::AudioLevel),
    )
}

/// The header extensions str0m would write on forwarded video of `mid`: the mid and the
/// video orientation (a rotated mobile camera). Not written: transport-wide-cc (the subscriber
/// then sends no TWCC feedback for the stream, so str0m's estimator and pacer never see, pad
/// or probe it) and abs-send-time.
pub(super) fn video_exts(rtc: &Rtc, mid: Mid) -> AudioExts {
    let Some(media) = rtc.media(mid) else {
        return AudioExts::default();
    };
    let map = media.remote_extmap();
    AudioExts::new(map.id_of(Extension::RtpMid).map(|id| (id, &*mid)), None)
        .with_video_orientation(map.id_of(Extension::VideoOrientation))
}

/// One forwarded packet as the lean path sends it.
pub(super) struct LeanPacket<'a> {
    pub(super) pt: u8,
    pub(super) marker: bool,
    pub(super) seq: u64,
    pub(super) ts: u32,
    pub(super) level: Option<(i8, bool)>,
    pub(super) orientation: Option<u8>,
    pub(super) payload: &'a [u8],
    pub(super) at: Instant,
    pub(super) clock_rate: u32,
}

/// The engine's scratch buffers for lean packets (reused: no allocation per packet).
#[derive(Default)]
pub(super) struct LeanBufs {
    pub(super) header: Vec<u8>,
    pub(super) out: Vec<u8>,
    /// An RTX payload (original sequence number, then the payload).
    pub(super) rtx: Vec<u8>,
    /// An unprotected SRTCP packet, and the feedback read from it.
    pub(super) rtcp: Vec<u8>,
    pub(super) feedback: Vec<super::lean_rtcp::Feedback>,
}

/// Why a lean packet was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LeanDrop {
    /// Its sequence number was sent already (a duplicate) or is too old.
    Replay,
    /// SRTP refused it, or the socket did.
    Failed,
}

/// Builds, protects and queues one packet of lean stream `tx` with SSRC `ssrc` on `socket`,
/// on its cached [`Route`] (none: [`LeanDrop::Failed`]).
pub(super) fn send(
    tx: &mut LeanTx,
    ssrc: Ssrc,
    p: &LeanPacket<'_>,
    bufs: &mut LeanBufs,
    socket: &mut dyn Transport,
) -> Result<(), LeanDrop> {
    let Some(Route { seal, path, .. }) = &tx.route else {
        return Err(LeanDrop::Failed);
    };
    let path = *path;
    if !tx.window.admit(p.seq) {
        return Err(LeanDrop::Replay);
    }
    let fields = RtpFields {
        pt: p.pt,
        marker: p.marker,
        seq: p.seq as u16,
        ts: p.ts,
        ssrc: *ssrc,
        level: p.level,
        orientation: p.orientation,
    };
    match path.proto {
        Protocol::Tcp => {
            rtp_out::write_rtp_header(&mut bufs.header, &fields, &tx.exts);
            seal.protect(&bufs.header, p.payload, p.seq, &mut bufs.out)
                .map_err(|_| LeanDrop::Failed)?;
            socket.send_tcp(&bufs.out, path.dest)
        }
        // UDP: the header is written, the payload copied and both sealed in place, in the
        // socket's send queue (one copy of each).
        _ => {
            let (exts, payload) = (&tx.exts, p.payload);
            let max = rtp_out::MAX_HEADER + payload.len() + seal.overhead();
            socket.send_with(max, path.dest, &mut |slot| {
                let h = rtp_out::write_rtp_header_to(slot, &fields, exts);
                let len = h + payload.len();
                slot[h..len].copy_from_slice(payload);
                seal.protect_in_place(slot, h, len, p.seq)
                    .map_err(|_| io::ErrorKind::InvalidInput.into())
            })
        }
    }
    .map_err(|_| LeanDrop::Failed)?;
    tx.packets = tx.packets.wrapping_add(1);
    tx.octets = tx.octets.wrapping_add(p.payload.len() as u32);
    if tx.window.max() == Some(p.seq) {
        tx.last = Some((p.ts, p.at, p.clock_rate));
    }
    Ok(())
}

/// Queues one protected datagram on `path`.
pub(super) fn transmit(socket: &mut dyn Transport, path: Path, data: &[u8]) -> io::Result<()> {
    match path.proto {
        Protocol::Tcp => socket.send_tcp(data, path.dest),
        _ => socket.send_to(data, path.dest),
    }
}

/// Sends one sender report for lean stream `tx` (nothing before its first packet), with its
/// RTX stream's `rtx` in the same compound packet once that sent.
fn report(
    tx: &mut LeanTx,
    ssrc: Ssrc,
    rtx: Option<Ssrc>,
    srtp: &mut SrtpSession,
    path: Path,
    bufs: &mut LeanBufs,
    socket: &mut dyn Transport,
) -> bool {
    let Some((ts, at, clock_rate)) = tx.last else {
        return false;
    };
    // One reading of both clocks: the RTP time is extrapolated to the report's wall time.
    let (now, wall) = (Instant::now(), std::time::SystemTime::now());
    let sr = rtp_out::SenderInfo {
        ssrc: *ssrc,
        wall,
        rtp_ts: rtp_out::extrapolate_ts(ts, now.saturating_duration_since(at), clock_rate),
        packets: tx.packets,
        octets: tx.octets,
    };
    rtp_out::write_sender_report(&mut bufs.header, &sr);
    if let Some(v) = &tx.video {
        v.append_rtx_report(rtx, &sr, &mut bufs.header, &mut bufs.rtx);
    }
    if srtp.protect_rtcp(&bufs.header, &mut bufs.out).is_err() {
        return false;
    }
    let sent = transmit(socket, path, &bufs.out).is_ok();
    if sent {
        tx.reports.sent(rtp_out::ntp_middle(wall), now);
    }
    sent
}

impl Engine {
    /// Sender reports of every lean stream (every [`SR_TICKS`] housekeeping ticks).
    pub(super) fn lean_reports(&mut self) {
        if !self.ticks.is_multiple_of(SR_TICKS) {
            return;
        }
        let Engine {
            peers,
            producers,
            socket,
            lean_bufs,
            counters,
            ..
        } = self;
        let mut sent = 0;
        for (_, prod) in producers.iter_mut() {
            for c in &mut prod.consumers {
                let Some(tx) = c.lean.as_mut() else {
                    continue;
                };
                let Some(peer) = peers.get_mut(c.peer) else {
                    continue;
                };
                let LeanState::Ready(srtp, path) = peer.lean.state(peer.connected) else {
                    continue;
                };
                if report(tx, c.ssrc, c.rtx, srtp, path, lean_bufs, &mut **socket) {
                    sent += 1;
                }
            }
        }
        add(&counters.lean_reports, sent);
    }

    /// Removes again the str0m send streams of subscriber `sub`'s lean consumers: after an
    /// offer was created from them (`unpark_all`), or after an answer made str0m declare new
    /// ones for their m-lines (it declares a stream for every sending m-line without one).
    /// Called before any drive of the peer, so str0m never writes a sender report for them.
    pub(super) fn repark_lean(&mut self, sub: Key) {
        let Engine {
            peers, producers, ..
        } = self;
        let Some(peer) = peers.get_mut(sub) else {
            return;
        };
        for (_, prod) in producers.iter_mut() {
            for c in prod.consumers.iter_mut() {
                if c.peer != sub || c.lean.is_none() {
                    continue;
                }
                // str0m may have declared a fresh stream (another SSRC) for the m-line.
                let ssrc = peer
                    .rtc
                    .direct_api()
                    .stream_tx_by_mid(c.mid, None)
                    .map(|s| s.ssrc());
                match ssrc {
                    Some(ssrc) => super::quiet::park(&mut peer.rtc, ssrc, &mut c.park),
                    None => c.park.set_parked(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_index_keeps_one_entry_per_mline_and_finds_by_ssrc() {
        let mut p = LeanPeer::default();
        let s = |ssrc: u32, mid: &str, video: bool| LeanStream {
            ssrc: Ssrc::from(ssrc),
            mid: Mid::from(mid),
            pk: Key::default(),
            video,
        };
        p.add_stream(s(1, "0", false));
        p.add_stream(s(2, "1", true));
        assert_eq!(p.stream(Ssrc::from(1)), Some(&s(1, "0", false)));
        assert_eq!(p.stream(Ssrc::from(2)).map(|x| x.video), Some(true));
        assert_eq!(p.stream(Ssrc::from(3)), None);
        // The m-line "1" reused for another track (another SSRC): the old entry is gone.
        p.add_stream(s(3, "1", false));
        assert_eq!(p.stream(Ssrc::from(2)), None);
        assert_eq!(p.stream(Ssrc::from(3)), Some(&s(3, "1", false)));
        assert_eq!(p.streams.len(), 2);
        // Hundreds of re-subscriptions on the same m-lines keep it at two entries.
        for i in 0..500 {
            p.add_stream(s(10 + i, if i % 2 == 0 { "0" } else { "1" }, i % 3 == 0));
        }
        assert_eq!(p.streams.len(), 2);
        // The m-line "0" reused for a stream str0m sends: no lean entry is left for it.
        let last0 = p.streams.iter().find(|x| x.mid == Mid::from("0")).copied();
        p.forget(Mid::from("0"));
        assert_eq!(p.streams.len(), 1);
        assert!(last0.is_some_and(|x| p.stream(x.ssrc).is_none()));
        assert!(p.streams.iter().all(|x| x.mid == Mid::from("1")));
    }

    #[test]
    fn the_index_covers_mlines_until_one_carries_a_stream_str0m_sends() {
        let mut p = LeanPeer::default();
        let s = |ssrc: u32, mid: &str| LeanStream {
            ssrc: Ssrc::from(ssrc),
            mid: Mid::from(mid),
            pk: Key::default(),
            video: false,
        };
        let mids = |v: &[&str]| v.iter().map(|m| Mid::from(*m)).collect::<Vec<_>>();
        // No m-line yet, then only lean ones.
        assert!(p.covers(mids(&[]).iter()));
        p.add_stream(s(1, "0"));
        p.add_stream(s(2, "1"));
        assert!(p.covers(mids(&["0", "1"]).iter()));
        // A third m-line str0m sends on (a simulcast source): not covered.
        assert!(!p.covers(mids(&["0", "1", "2"]).iter()));
        // The m-line "1" reused for a stream str0m sends: forgotten, so not covered either.
        p.forget(Mid::from("1"));
        assert!(!p.covers(mids(&["0", "1"]).iter()));
        assert!(p.covers(mids(&["0"]).iter()));
        assert_eq!(p.stream(Ssrc::from(2)), None);
    }

    #[test]
    fn every_sequence_number_is_sent_once() {
        let mut w = SeqWindow::default();
        assert!(w.admit(100));
        assert!(!w.admit(100), "a duplicate");
        assert!(w.admit(102));
        assert!(w.admit(101), "reordered, not sent yet");
        assert!(!w.admit(101));
        assert!(w.admit(200));
        assert!(!w.admit(136), "older than the window");
        assert!(w.admit(137), "inside the window, never sent");
        assert!(!w.admit(137));
        assert_eq!(w.max(), Some(200));
    }

    fn binding(use_candidate: bool) -> Vec<u8> {
        let mut attrs = Vec::new();
        // USERNAME "ab:cd" (5 bytes, padded to 8).
        attrs.extend_from_slice(&[
            0x00, 0x06, 0x00, 0x05, b'a', b'b', b':', b'c', b'd', 0, 0, 0,
        ]);
        if use_candidate {
            attrs.extend_from_slice(&[0x00, 0x25, 0x00, 0x00]);
        }
        // PRIORITY.
        attrs.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4]);
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        m.extend_from_slice(&MAGIC);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attrs);
        m
    }

    #[test]
    fn nominations_are_binding_requests_with_use_candidate() {
        assert_eq!(nomination(&binding(true)), Some([7; 12]));
        assert_eq!(nomination(&binding(false)), None);
        let mut truncated = binding(true);
        truncated.truncate(30);
        assert_eq!(nomination(&truncated), None);
        let mut response = binding(true);
        response[..2].copy_from_slice(&[0x01, 0x01]);
        assert_eq!(nomination(&response), None);
    }

    #[test]
    fn the_path_moves_only_on_an_answered_nomination() {
        let a: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:6000".parse().unwrap();
        let mut lp = LeanPeer::default();
        lp.on_transmit(Protocol::Udp, a, &[22, 254, 253]);
        assert_eq!(
            lp.path.map(|p| p.dest),
            Some(a),
            "DTLS to the nominated pair"
        );
        let mut ok = vec![0x01, 0x01, 0, 0];
        ok.extend_from_slice(&MAGIC);
        ok.extend_from_slice(&[7; 12]);
        // A success response without a nomination being handled: no move.
        lp.on_transmit(Protocol::Udp, b, &ok);
        assert_eq!(lp.path.map(|p| p.dest), Some(a));
        // A nomination from b answered to b: the path moves.
        lp.nominating = Some(([7; 12], b));
        let mut other = ok.clone();
        other[8] = 9;
        lp.on_transmit(Protocol::Udp, b, &other);
        assert_eq!(lp.path.map(|p| p.dest), Some(a), "another transaction");
        lp.on_transmit(Protocol::Udp, a, &ok);
        assert_eq!(lp.path.map(|p| p.dest), Some(a), "answered elsewhere");
        lp.on_transmit(Protocol::Udp, b, &ok);
        assert_eq!(lp.path.map(|p| p.dest), Some(b));
        // RTP (first byte 128..) never moves it.
        lp.on_transmit(Protocol::Udp, a, &[0x80, 111, 0, 1]);
        assert_eq!(lp.path.map(|p| p.dest), Some(b));
    }
}
