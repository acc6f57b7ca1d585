//! The lean publisher ingress (issue 12; docs/ARCHITECTURE.md, "Publisher ingress"): a
//! publisher's SRTP opened by the engine, its RTP read ([`crate::ingress::packet`]) and handed
//! to [`Engine::forward`] without a str0m drive, and the receive feedback str0m would write
//! (receiver reports, NACKs, transport-wide feedback: [`PublisherFeedback`]) written, sealed as
//! SRTCP and sent by the engine, inline when due at a packet's arrival, else on the shard's
//! ingress timer.
//!
//! Per publisher peer, all of its RTP or none (str0m's transport-wide register is per
//! session): the switch happens once str0m delivered a packet of every stream of the
//! publisher's producers, none with a RID, over UDP, with keys of a profile our SRTP does. Then
//! str0m forgets those receive streams (`remove_stream_rx`: no more RR/NACK from it; it sees no
//! more RTP, so no more TWCC once its last pending report left). Anything the engine cannot
//! read goes to str0m as before; a stream str0m reports later (a new track) is taken over at
//! its first packet.

use super::*;
use crate::ingress::feedback::PublisherFeedback;
use crate::ingress::packet::{self, ExtIds};
use crate::ingress::rtcp;
use crate::ingress::twcc::extend;
use crate::metrics::add;
use crate::srtp::{DtlsRole, SrtpReceiver, SrtpSession};
use str0m::media::{KeyframeRequestKind, Rids};
use str0m::net::Protocol;
use tracing::debug;

/// Where a publisher peer's ingress stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Phase {
    /// str0m reads its RTP; the engine waits for the switch.
    #[default]
    Pending,
    /// The engine reads its RTP.
    Lean,
    /// Never (a RID, ICE-TCP, or keys our SRTP does not do): str0m reads everything.
    Never,
}

/// One stream of a lean publisher.
#[derive(Debug, Clone, Copy)]
struct Stream {
    /// The SSRC it arrives with.
    ssrc: u32,
    /// The media SSRC it repairs (an RTX stream), or its own.
    media: u32,
    /// RTX (RFC 4588): its payload starts with the original sequence number.
    rtx: bool,
    /// Its producer and layer, and the producer's m-line (to find the producer again after
    /// a renegotiation replaced it).
    pk: Key,
    layer: u8,
    mid: Mid,
    /// Highest extended sequence number of the media stream (RTX OSNs extend near it).
    highest: Option<u64>,
}

/// A publisher peer's lean ingress state (`Peer::ingress`).
#[derive(Default)]
pub(super) struct Ingress {
    phase: Phase,
    /// The publisher's SRTP (made at the switch).
    rx: Option<SrtpReceiver>,
    /// Our SRTCP to the publisher, its index from [`super::lean::RTCP_INDEX_BASE`] (clear of str0m's).
    tx: Option<SrtpSession>,
    /// The feedback we owe the publisher.
    fb: Option<PublisherFeedback>,
    /// The extension ids the publisher negotiated.
    ids: ExtIds,
    /// Its streams (media and RTX).
    streams: Vec<Stream>,
    /// Before the switch: the last extended sequence number str0m delivered per SSRC.
    seen: Vec<(u32, u64)>,
    /// RTX payload type -> the media payload type it repairs.
    rtx_pts: Vec<(u8, Pt)>,
    /// Our SSRC on the feedback.
    sender_ssrc: u32,
    /// The time of this peer's live entry in the shard's ingress timer heap.
    armed: Option<Instant>,
    /// FIR command sequence number.
    fir_seq: u8,
    /// Scratch: the opened packet.
    buf: Vec<u8>,
}

/// The first SSRC-like word of an RTP packet (bytes 8..12), without opening it.
fn rtp_ssrc(data: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(data.get(8..12)?.try_into().ok()?))
}

/// Sends one sealed packet to the publisher on its nominated path (over ICE-TCP when the path
/// moved there after the switch).
fn send(socket: &mut dyn crate::transport::Transport, path: super::lean::Path, out: Vec<u8>) {
    let sent = match path.proto {
        Protocol::Tcp => socket.send_tcp(&out, path.dest),
        _ => socket.send_owned(out, path.dest),
    };
    if let Err(e) = sent {
        debug!("feedback to {} failed: {e}", path.dest);
    }
}

/// Rounds `t` up to the next multiple of `grain` since `epoch` (never earlier than `t`).
fn round_up(t: Instant, epoch: Instant, grain: Duration) -> Instant {
    if t < epoch {
        return t;
    }
    let g = grain.as_nanos();
    let up = t.duration_since(epoch).as_nanos().div_ceil(g) * g;
    u64::try_from(up)
        .ok()
        .and_then(|n| epoch.checked_add(Duration::from_nanos(n)))
        .unwrap_or(t)
}

/// A random SSRC for our feedback (a constant if the system's generator fails: the SSRC only
/// names us, and our SRTCP index range is ours whatever it is).
fn random_ssrc() -> u32 {
    use aws_lc_rs::rand::SecureRandom;
    let mut b = [0u8; 4];
    let _ = aws_lc_rs::rand::SystemRandom::new().fill(&mut b);
    u32::from_be_bytes(b).max(1)
}

impl Engine {
    /// A datagram from peer `key` (already accepted by its `Rtc`) over `proto`: a lean
    /// publisher's RTP of a known stream is opened, read and forwarded here (returns true: no
    /// str0m drive); its SRTCP is read for sender reports (LSR) and still goes to str0m.
    /// Everything else returns false (str0m handles it as before).
    pub(super) fn lean_ingress(
        &mut self,
        key: Key,
        proto: Protocol,
        data: &[u8],
        now: Instant,
    ) -> bool {
        let Some(ing) = self
            .peers
            .get_mut(key)
            .and_then(|p| p.ingress.as_deref_mut())
        else {
            return false;
        };
        if ing.phase != Phase::Lean || proto != Protocol::Udp {
            return false;
        }
        // RFC 7983: 128..=191 is RTP or RTCP.
        if !matches!(data.first(), Some(128..=191)) {
            return false;
        }
        if super::lean_rtcp::is_rtcp(data) {
            self.ingress_rtcp(key, data, now);
            return false;
        }
        self.ingress_rtp(key, data, now)
    }

    /// A lean publisher's SRTCP: its sender reports feed LSR/DLSR.
    fn ingress_rtcp(&mut self, key: Key, data: &[u8], now: Instant) {
        let Some(ing) = self
            .peers
            .get_mut(key)
            .and_then(|p| p.ingress.as_deref_mut())
        else {
            return;
        };
        let (Some(rx), Some(fb)) = (ing.rx.as_mut(), ing.fb.as_mut()) else {
            return;
        };
        if rx.unprotect_rtcp(data, &mut ing.buf).is_err() {
            return;
        }
        let mut srs = Vec::new();
        rtcp::sender_reports(&ing.buf, &mut srs);
        for (ssrc, ntp) in srs {
            fb.on_sender_report(ssrc, ntp, now);
        }
    }

    /// Whether the producer and layer lean stream `st` forwards to still hold its SSRC; if
    /// not (a renegotiation replaced the producer of its m-line), finds the m-line's current
    /// producer and binds the stream (and its RTX) to it, as `resolve_ssrc` does for str0m's
    /// streams. False when the m-line has no producer any more.
    fn ingress_bound(&mut self, key: Key, st: Stream) -> bool {
        let media = Ssrc::from(st.media);
        let holds = self.producers.get(st.pk).is_some_and(|p| {
            p.publisher == key
                && p.layers
                    .get(usize::from(st.layer))
                    .is_some_and(|l| l.ssrc == Some(media))
        });
        if holds {
            return true;
        }
        let Some(owner) = self.peers.get(key).map(|p| p.owner.clone()) else {
            return false;
        };
        let Some(pk) = self.parts.get(&owner).and_then(|part| {
            part.producers.iter().copied().find(|pk| {
                self.producers
                    .get(*pk)
                    .is_some_and(|p| p.mid == st.mid && p.publisher == key)
            })
        }) else {
            return false;
        };
        let Some(prod) = self.producers.get_mut(pk) else {
            return false;
        };
        let li = prod.bind_layer(None, media);
        let Some(peer) = self.peers.get_mut(key) else {
            return false;
        };
        peer.ssrcs.retain(|(s, _, _)| *s != media);
        peer.ssrcs.push((media, pk, li));
        if let Some(ing) = peer.ingress.as_deref_mut() {
            for s in ing.streams.iter_mut().filter(|s| s.media == st.media) {
                s.pk = pk;
                s.layer = li;
            }
        }
        true
    }

    /// A lean publisher's RTP: true when handled here.
    fn ingress_rtp(&mut self, key: Key, data: &[u8], now: Instant) -> bool {
        let Some(ssrc) = rtp_ssrc(data) else {
            return false;
        };
        // The stream (one search per packet), then its producer (a renegotiation may have
        // replaced it; `ingress_bound` rebinds in place, so the index stays valid).
        let known = self
            .peers
            .get(key)
            .and_then(|p| p.ingress.as_deref())
            .and_then(|i| {
                let si = i.streams.iter().position(|s| s.ssrc == ssrc)?;
                Some((si, i.streams[si]))
            });
        if let Some((_, st)) = known {
            if !self.ingress_bound(key, st) {
                return false;
            }
        }
        let Some(peer) = self.peers.get_mut(key) else {
            return false;
        };
        let Some(ing) = peer.ingress.as_deref_mut() else {
            return false;
        };
        let (Some(rx), Some(fb)) = (ing.rx.as_mut(), ing.fb.as_mut()) else {
            return false;
        };
        let mut buf = std::mem::take(&mut ing.buf);
        let Some((si, _)) = known else {
            // libwebrtc's bandwidth probes on SSRC 0 carry no media and need only transport
            // feedback: ours, not str0m's (one transport-wide register per publisher).
            if ssrc == 0 && rx.unprotect_rtp(data, &mut buf).is_ok() {
                if let Ok(r) = packet::read(&buf, &ing.ids) {
                    fb.on_rtp(0, r.seq, r.ts, r.transport_cc, now, true);
                    ing.buf = buf;
                    self.ingress_feedback(key, now, false);
                    return true;
                }
            }
            ing.buf = buf;
            return false; // A stream str0m has not told us about.
        };
        let Ok(u) = rx.unprotect_rtp(data, &mut buf) else {
            ing.buf = buf;
            return false;
        };
        let Ok(r) = packet::read(&buf, &ing.ids) else {
            ing.buf = buf;
            return false;
        };
        if r.has_rid {
            ing.buf = buf;
            return false;
        }
        let st = ing.streams[si];
        let (seq, pt, payload, retransmitted) = if st.rtx {
            let Some((osn, payload)) = packet::unwrap_rtx(r.payload) else {
                // Padding-only RTX (a bandwidth probe): transport feedback only (its SSRC
                // names no stream of the feedback: no statistics, no NACK window moves).
                fb.on_rtp(st.ssrc, r.seq, r.ts, r.transport_cc, now, true);
                ing.buf = buf;
                self.ingress_feedback(key, now, false);
                return true;
            };
            let Some(pt) = ing
                .rtx_pts
                .iter()
                .find(|(rtx, _)| *rtx == r.pt)
                .map(|(_, pt)| *pt)
            else {
                ing.buf = buf;
                return false;
            };
            (extend(st.highest, osn), pt, payload, true)
        } else {
            (u.ext_seq, Pt::from(r.pt), r.payload, false)
        };
        let gap = fb.on_rtp(
            st.media,
            seq as u16,
            r.ts,
            r.transport_cc,
            now,
            retransmitted,
        );
        if !retransmitted {
            for s in ing.streams.iter_mut().filter(|s| s.media == st.media) {
                s.highest = Some(s.highest.map_or(seq, |h| h.max(seq)));
            }
        }
        if payload.is_empty() {
            ing.buf = buf;
            self.ingress_feedback(key, now, gap);
            return true;
        }
        let p = super::fanout::InPacket {
            ssrc: st.media,
            seq,
            ts: r.ts,
            pt,
            marker: r.marker,
            audio_level: r.audio_level,
            voice_activity: r.voice_activity,
            video_orientation: r.video_orientation,
            payload: Arc::from(payload),
            at: now,
        };
        ing.buf = buf;
        add(&self.counters.lean_ingress_packets, 1);
        self.forward(st.pk, st.layer, p, now);
        self.ingress_feedback(key, now, gap);
        true
    }

    /// Sends the publisher's feedback if due at `now` (or at once: `now_too`, a gap to NACK),
    /// then arms its timer for the next (fine grid for NACK retries, coarse for the rest).
    pub(super) fn ingress_feedback(&mut self, key: Key, now: Instant, now_too: bool) {
        let epoch = self.timer_epoch;
        let Engine {
            peers,
            socket,
            counters,
            ingress_timers,
            ..
        } = self;
        let Some(peer) = peers.get_mut(key) else {
            return;
        };
        let path = peer.lean.path;
        let Some(ing) = peer.ingress.as_deref_mut() else {
            return;
        };
        let (Some(fb), Some(tx)) = (ing.fb.as_mut(), ing.tx.as_mut()) else {
            return;
        };
        if now_too || fb.due().is_some_and(|d| d <= now) {
            let mut plain = Vec::new();
            if fb.poll(now, &mut plain) {
                // As str0m's ingress statistics counted them (`greenroom_nacks_total`).
                add(&counters.nacks[crate::metrics::INGRESS], fb.take_nacked());
                let mut out = Vec::with_capacity(plain.len() + tx.rtcp_overhead());
                match (tx.protect_rtcp(&plain, &mut out), path) {
                    (Ok(()), Some(path)) => {
                        send(&mut **socket, path, out);
                        add(&counters.lean_ingress_feedback, 1);
                    }
                    (Err(e), _) => debug!("ingress feedback not sealed: {e}"),
                    _ => {}
                }
            }
        }
        let next = match (fb.due(), fb.nack_due()) {
            (Some(d), Some(n)) if n <= d => Some(round_up(n, epoch, super::drive::TIMER_GRAIN)),
            (Some(d), _) => Some(round_up(d, epoch, super::drive::LAX_GRAIN)),
            (None, _) => None,
        };
        if next != ing.armed {
            ing.armed = next;
            if let Some(t) = next {
                ingress_timers.push(Reverse((t, key)));
            }
        }
    }

    /// The earliest live ingress timer (stale entries on top dropped).
    pub(super) fn ingress_next(&mut self) -> Option<Instant> {
        while let Some(Reverse((t, key))) = self.ingress_timers.peek().copied() {
            let live = self
                .peers
                .get(key)
                .and_then(|p| p.ingress.as_deref())
                .is_some_and(|i| i.armed == Some(t));
            if live {
                return Some(t);
            }
            self.ingress_timers.pop();
        }
        None
    }

    /// Sends the feedback of every lean publisher whose timer is due at `now`.
    pub(super) fn fire_ingress_timers(&mut self, now: Instant) {
        while let Some(t) = self.ingress_next() {
            if t > now {
                return;
            }
            let Some(Reverse((_, key))) = self.ingress_timers.pop() else {
                return;
            };
            if let Some(i) = self
                .peers
                .get_mut(key)
                .and_then(|p| p.ingress.as_deref_mut())
            {
                i.armed = None;
            }
            self.ingress_feedback(key, now, false);
        }
    }

    /// str0m delivered a packet of `ssrc` (extended sequence number `seq`) from publisher
    /// peer `key`: before the switch, noted and the switch tried; after it, a stream the
    /// engine does not read yet is taken over.
    pub(super) fn ingress_seen(&mut self, key: Key, ssrc: Ssrc, seq: u64, now: Instant) {
        let Some(ing) = self
            .peers
            .get_mut(key)
            .and_then(|p| p.ingress.as_deref_mut())
        else {
            return;
        };
        match ing.phase {
            Phase::Never => {}
            Phase::Pending => {
                match ing.seen.iter_mut().find(|(s, _)| *s == *ssrc) {
                    Some(e) => e.1 = e.1.max(seq),
                    None => ing.seen.push((*ssrc, seq)),
                }
                self.try_switch(key, now);
            }
            Phase::Lean => {
                if !ing.streams.iter().any(|s| s.ssrc == *ssrc) {
                    self.take_over(key, ssrc, seq, now);
                } else if let Some(p) = self.peers.get_mut(key) {
                    // A packet ours could not open went to str0m, which made the stream
                    // again: it must not report on it.
                    let _ = catch_unwind(AssertUnwindSafe(|| {
                        p.rtc.direct_api().remove_stream_rx(ssrc)
                    }));
                }
            }
        }
    }

    /// Switches publisher peer `key` to the lean ingress if it can be now (see the module
    /// docs); marks it `Never` if it never can.
    fn try_switch(&mut self, key: Key, now: Instant) {
        let Some(peer) = self.peers.get_mut(key) else {
            return;
        };
        if !peer.connected {
            return;
        }
        let Some(ing) = peer.ingress.as_deref_mut() else {
            return;
        };
        match peer.lean.path {
            Some(p) if p.proto == Protocol::Udp => {}
            Some(_) => {
                ing.phase = Phase::Never;
                return;
            }
            None => return,
        }
        // Every stream of every producer of this publisher seen, none simulcast.
        let Some(part) = self.parts.get(&peer.owner) else {
            return;
        };
        let mut media: Vec<(Ssrc, Key, u8, bool, u64)> = Vec::new();
        for pk in &part.producers {
            let Some(prod) = self.producers.get(*pk) else {
                continue;
            };
            if prod.publisher != key {
                continue;
            }
            // A simulcast m-line (RIDs negotiated in its SDP) keeps the whole publisher on str0m.
            let simulcast = peer
                .rtc
                .media(prod.mid)
                .is_some_and(|m| matches!(m.rids_rx(), Rids::Specific(v) if !v.is_empty()));
            if simulcast {
                ing.phase = Phase::Never;
                return;
            }
            for (li, l) in prod.layers.iter().enumerate() {
                if l.rid.is_some() {
                    ing.phase = Phase::Never;
                    return;
                }
                let Some(ssrc) = l.ssrc else {
                    return;
                };
                let Some(&(_, seq)) = ing.seen.iter().find(|(s, _)| *s == *ssrc) else {
                    return;
                };
                let li = li.min(usize::from(NO_LAYER - 1)) as u8;
                media.push((ssrc, *pk, li, prod.kind == MediaKind::Video, seq));
            }
        }
        if media.is_empty() {
            return;
        }
        // The keys (the DTLS handshake exported them before str0m reported the peer
        // connected).
        let Some(keys) = peer.lean.keys.get() else {
            ing.phase = Phase::Never;
            return;
        };
        let role = if keys.active {
            DtlsRole::Client
        } else {
            DtlsRole::Server
        };
        let made = SrtpReceiver::new(keys.profile, &keys.material, role).and_then(|rx| {
            let mut tx = SrtpSession::new(keys.profile, &keys.material, role)?;
            tx.set_rtcp_index_base(super::lean::RTCP_INDEX_BASE)?;
            Ok((rx, tx))
        });
        let (rx, tx) = match made {
            Ok(m) => m,
            Err(e) => {
                debug!("no lean ingress for {}: {e}", peer.owner);
                ing.phase = Phase::Never;
                return;
            }
        };
        ing.rx = Some(rx);
        ing.tx = Some(tx);
        ing.sender_ssrc = random_ssrc();
        // The extension ids and the RTX payload types, as negotiated.
        let mid = self.producers.get(media[0].1).map(|p| p.mid);
        if let Some(m) = mid.and_then(|mid| peer.rtc.media(mid)) {
            ing.ids = ExtIds::from_map(m.remote_extmap());
        }
        let twcc = ing.ids.transport_cc.is_some();
        ing.rtx_pts = peer
            .rtc
            .codec_config()
            .iter()
            .filter_map(|p| Some((*p.resend()?, p.pt())))
            .collect();
        ing.fb = Some(PublisherFeedback::new(ing.sender_ssrc, twcc, now));
        ing.phase = Phase::Lean;
        for (ssrc, pk, li, video, seq) in media {
            self.adopt(key, ssrc, pk, li, video, seq, now);
        }
        debug!("publisher peer switched to the lean ingress");
    }

    /// After the switch, a stream str0m reported first (a new track): the engine reads it from
    /// its next packet.
    fn take_over(&mut self, key: Key, ssrc: Ssrc, seq: u64, now: Instant) {
        let Some((pk, li)) = self.resolve_ssrc(key, ssrc) else {
            return;
        };
        let Some(prod) = self.producers.get(pk) else {
            return;
        };
        if prod
            .layers
            .get(usize::from(li))
            .is_none_or(|l| l.rid.is_some())
        {
            return;
        }
        let video = prod.kind == MediaKind::Video;
        self.adopt(key, ssrc, pk, li, video, seq, now);
    }

    /// The engine reads media stream `ssrc` (and its RTX) of producer `pk`, layer `li`, from
    /// now on; str0m forgets it.
    #[allow(clippy::too_many_arguments)]
    fn adopt(
        &mut self,
        key: Key,
        ssrc: Ssrc,
        pk: Key,
        li: u8,
        video: bool,
        seq: u64,
        now: Instant,
    ) {
        let Some(mid) = self.producers.get(pk).map(|p| p.mid) else {
            return;
        };
        let Some(peer) = self.peers.get_mut(key) else {
            return;
        };
        let Some(ing) = peer.ingress.as_deref_mut() else {
            return;
        };
        let rtx = catch_unwind(AssertUnwindSafe(|| {
            let mut api = peer.rtc.direct_api();
            let rtx = api.stream_rx(&ssrc).and_then(|rx| rx.rtx());
            api.remove_stream_rx(ssrc);
            rtx
        }))
        .unwrap_or(None);
        let (Some(fb), Some(rx)) = (ing.fb.as_mut(), ing.rx.as_mut()) else {
            return;
        };
        // Our receiver goes on where str0m's left the stream (its rollover counter too).
        if let Err(e) = rx.start_rtp_at(*ssrc, seq) {
            debug!("lean ingress cannot take stream {ssrc} over: {e}");
            return;
        }
        let clock = if video { 90_000 } else { 48_000 };
        fb.add_stream(*ssrc, clock, video, now);
        // str0m's last packet of the stream starts our NACK window, so that a loss at the
        // switch is still asked for.
        fb.on_rtp(*ssrc, seq as u16, 0, None, now, true);
        ing.streams.retain(|s| s.ssrc != *ssrc && s.media != *ssrc);
        let s = Stream {
            ssrc: *ssrc,
            media: *ssrc,
            rtx: false,
            pk,
            layer: li,
            mid,
            highest: Some(seq),
        };
        ing.streams.push(s);
        if let Some(r) = rtx {
            ing.streams.push(Stream {
                ssrc: *r,
                rtx: true,
                ..s
            });
        }
    }

    /// Publisher peer `key` applied a new offer: str0m declares the offer's SSRCs again, so
    /// the streams the engine reads are removed from it again (it must not report on them).
    pub(super) fn ingress_renegotiated(&mut self, key: Key) {
        let Some(peer) = self.peers.get_mut(key) else {
            return;
        };
        let Some(ing) = peer.ingress.as_deref() else {
            return;
        };
        let rtc = &mut peer.rtc;
        for s in ing.streams.iter().filter(|s| !s.rtx) {
            let _ = catch_unwind(AssertUnwindSafe(|| {
                rtc.direct_api().remove_stream_rx(Ssrc::from(s.ssrc))
            }));
        }
    }

    /// A keyframe request to a lean publisher (str0m no longer knows the stream): PLI or FIR
    /// written, sealed and sent here. False when the publisher is not lean (str0m asks).
    pub(super) fn ingress_keyframe(
        &mut self,
        publisher: Key,
        ssrc: Option<Ssrc>,
        kind: KeyframeRequestKind,
    ) -> bool {
        let Engine {
            peers,
            socket,
            counters,
            ..
        } = self;
        let Some(peer) = peers.get_mut(publisher) else {
            return false;
        };
        let path = peer.lean.path;
        let Some(ing) = peer.ingress.as_deref_mut() else {
            return false;
        };
        let Some(ssrc) = ssrc.filter(|s| ing.streams.iter().any(|x| x.ssrc == **s)) else {
            return false;
        };
        let (Some(tx), Some(path)) = (ing.tx.as_mut(), path) else {
            return false;
        };
        let mut plain = Vec::new();
        match kind {
            KeyframeRequestKind::Fir => {
                ing.fir_seq = ing.fir_seq.wrapping_add(1);
                rtcp::write_fir(ing.sender_ssrc, *ssrc, ing.fir_seq, &mut plain);
            }
            KeyframeRequestKind::Pli => rtcp::write_pli(ing.sender_ssrc, *ssrc, &mut plain),
        }
        let mut out = Vec::with_capacity(plain.len() + tx.rtcp_overhead());
        if tx.protect_rtcp(&plain, &mut out).is_err() {
            return false;
        }
        send(&mut **socket, path, out);
        add(&counters.lean_ingress_feedback, 1);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_round_up_to_their_grid_and_never_earlier() {
        let epoch = Instant::now();
        let at = |us: u64| epoch + Duration::from_micros(us);
        assert_eq!(round_up(at(1), epoch, super::drive::LAX_GRAIN), at(20_000));
        assert_eq!(
            round_up(at(20_000), epoch, super::drive::LAX_GRAIN),
            at(20_000)
        );
        assert_eq!(
            round_up(at(5_001), epoch, super::drive::TIMER_GRAIN),
            at(10_000)
        );
        for n in (0..100_000).step_by(777) {
            let t = round_up(at(n), epoch, super::drive::TIMER_GRAIN);
            assert!(t >= at(n) && t < at(n) + super::drive::TIMER_GRAIN);
        }
    }

    #[test]
    fn the_ssrc_is_read_from_the_fixed_header_and_short_packets_have_none() {
        let mut p = vec![0x80, 96, 0, 1, 0, 0, 0, 2, 0xde, 0xad, 0xbe, 0xef];
        assert_eq!(rtp_ssrc(&p), Some(0xdead_beef));
        p.truncate(11);
        assert_eq!(rtp_ssrc(&p), None);
    }
}
