//! The lean video path (docs/ARCHITECTURE.md, "Lean video path"): forwarded video of a
//! single-layer source (no simulcast: no layer choice, so no use for the subscriber's bandwidth
//! estimate) sent like lean audio ([`super::lean`]), plus what str0m did for it: keyframe
//! requests and retransmissions on the negotiated RTX stream from the subscriber's feedback
//! ([`super::lean_rtcp`]), out of one cache per source ([`crate::retransmit`]).
//!
//! Simulcast consumers, relayed (remote) sources and consumers of a peer without keys our SRTP
//! takes stay on str0m.

use super::lean::{self, LeanState};
use super::*;
use crate::metrics::add;
use crate::retransmit::{extend_seq, rtx_payload, RetransmitBudget, SeqMap};
use crate::rtp_out::{self, RtpFields, SenderInfo};
use str0m::media::{KeyframeRequestKind, Rids};

/// A lean video consumer's own state beyond a lean audio one's.
#[derive(Debug, Clone, Default)]
pub(super) struct VideoTx {
    /// Outgoing sequence numbers -> source packets.
    pub(super) map: SeqMap,
    /// Retransmits allowed (never more than the media packets).
    pub(super) budget: RetransmitBudget,
    /// The RTX stream's next sequence number (its own counter, RFC 4588 §4).
    rtx_seq: u64,
    /// Packets and payload octets (original sequence number included) sent on the RTX stream,
    /// for its sender reports.
    rtx_packets: u32,
    rtx_octets: u32,
    /// The subscriber's payload types -> their RTX payload types (resolved when the consumer
    /// is made and after each answer, [`Engine::refresh_rtx_pts`]; not per NACK).
    rtx_pts: Vec<(u8, u8)>,
}

impl VideoTx {
    /// The RTX payload type repairing payload type `pt`, if negotiated.
    fn rtx_pt(&self, pt: u8) -> Option<u8> {
        self.rtx_pts.iter().find(|(p, _)| *p == pt).map(|(_, r)| *r)
    }

    /// One retransmit of `payload_len` payload bytes went out on the RTX stream.
    fn rtx_sent(&mut self, payload_len: usize) {
        self.rtx_packets = self.rtx_packets.wrapping_add(1);
        // The RTX payload: the 2-byte original sequence number, then the payload.
        self.rtx_octets = self.rtx_octets.wrapping_add(payload_len as u32 + 2);
    }

    /// Appends to `out` (a compound packet holding the media stream's sender report `media`)
    /// the sender report of the RTX stream `rtx`, once it sent a packet: the same wall clock
    /// and RTP time (a repair carries its original's timestamp), its own packet and octet
    /// counts. `scratch` is overwritten. Returns whether one was added.
    pub(super) fn append_rtx_report(
        &self,
        rtx: Option<Ssrc>,
        media: &SenderInfo,
        out: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
    ) -> bool {
        let Some(rtx) = rtx else {
            return false;
        };
        if self.rtx_packets == 0 {
            return false;
        }
        let sr = SenderInfo {
            ssrc: *rtx,
            packets: self.rtx_packets,
            octets: self.rtx_octets,
            ..*media
        };
        rtp_out::write_sender_report(scratch, &sr);
        out.extend_from_slice(scratch);
        true
    }
}

/// The payload types of `rtc`'s codec config that have an RTX payload type, with it.
fn rtx_pts(rtc: &Rtc) -> Vec<(u8, u8)> {
    rtc.codec_config()
        .params()
        .iter()
        .filter_map(|p| Some((*p.pt(), *p.resend()?)))
        .collect()
}

impl Engine {
    /// Resolves again the RTX payload types of subscriber `sub`'s lean video consumers (after
    /// an answer: new consumers, or a renegotiated codec config).
    pub(super) fn refresh_rtx_pts(&mut self, sub: Key) {
        let Some(peer) = self.peers.get(sub) else {
            return;
        };
        let pts = rtx_pts(&peer.rtc);
        for pk in peer.sub_mids.values() {
            let Some(prod) = self.producers.get_mut(*pk) else {
                continue;
            };
            for c in prod.consumers.iter_mut().filter(|c| c.peer == sub) {
                if let Some(v) = c.lean.as_mut().and_then(|t| t.video.as_mut()) {
                    v.rtx_pts.clone_from(&pts);
                }
            }
        }
    }

    /// Whether producer `pk` has one layer for sure: a local publisher's m-line negotiated no
    /// simulcast. Relayed producers are not known to be single-layer.
    pub(super) fn single_layer(&self, pk: Key) -> bool {
        let Some(prod) = self.producers.get(pk) else {
            return false;
        };
        if prod.layers.len() > 1 {
            return false;
        }
        let Some(publisher) = self.peers.get(prod.publisher) else {
            return false;
        };
        publisher
            .rtc
            .media(prod.mid)
            .is_some_and(|m| !matches!(m.rids_rx(), Rids::Specific(r) if r.len() > 1))
    }

    /// A keyframe request from subscriber `sub` for its media of producer `pk` (from str0m's
    /// event, or from the engine's own RTCP read for lean streams).
    pub(super) fn keyframe_request_from(
        &mut self,
        sub: Key,
        pk: Key,
        kind: KeyframeRequestKind,
        now: Instant,
    ) {
        let layer = self.consumer_layer(pk, sub);
        self.request_keyframe(pk, layer, kind, now, false);
    }

    /// A NACK from subscriber `sub` for its lean video stream `ssrc` of producer `pk`: each
    /// named packet still in the source's cache is resent on the consumer's RTX stream
    /// (RFC 4588), within the consumer's budget. Never on the media SSRC (its sequence number
    /// was protected once already). Without RTX the NACK is only counted.
    pub(super) fn lean_retransmit(
        &mut self,
        sub: Key,
        pk: Key,
        ssrc: Ssrc,
        seqs: impl Iterator<Item = u16>,
        now: Instant,
    ) {
        let Engine {
            peers,
            producers,
            socket,
            lean_bufs,
            counters,
            ..
        } = self;
        let Some(prod) = producers.get_mut(pk) else {
            return;
        };
        let Some(cache) = prod.cache.as_ref() else {
            add(&counters.lean_nacks_ignored, 1);
            return;
        };
        let Some(c) = prod
            .consumers
            .iter_mut()
            .find(|c| c.peer == sub && c.ssrc == ssrc)
        else {
            return;
        };
        let (Some(rtx_ssrc), Some(tx)) = (c.rtx, c.lean.as_mut()) else {
            add(&counters.lean_nacks_ignored, 1);
            return;
        };
        let Some(max) = tx.max_seq() else {
            return;
        };
        let Some(peer) = peers.get_mut(sub) else {
            return;
        };
        let (mut sent, mut ignored) = (0u64, 0u64);
        for seq in seqs {
            let Some(v) = tx.video.as_mut() else {
                return;
            };
            let found = extend_seq(seq, max)
                .and_then(|out| Some((out, v.map.lookup(out)?)))
                .and_then(|(out, r)| Some((out, r, cache.get(r.epoch, r.seq, now)?)));
            let Some((out_seq, r, p)) = found else {
                ignored += 1;
                continue;
            };
            // The payload type the consumer got, and its repair type.
            let out_pt = match c.st.pts.get(p.pt) {
                crate::forward::PtLookup::Mapped(v) => v,
                _ => {
                    ignored += 1;
                    continue;
                }
            };
            let Some(rtx_pt) = v.rtx_pt(out_pt) else {
                ignored += 1;
                continue;
            };
            if !v.budget.take() {
                ignored += 1;
                continue;
            }
            let LeanState::Ready(srtp, path) = peer.lean.state(peer.connected) else {
                return;
            };
            let rtx_seq = v.rtx_seq;
            v.rtx_seq += 1;
            rtp_out::write_rtp_header(
                &mut lean_bufs.header,
                &RtpFields {
                    pt: rtx_pt,
                    marker: p.marker,
                    seq: rtx_seq as u16,
                    ts: p.ts.wrapping_add(r.ts_off),
                    ssrc: *rtx_ssrc,
                    level: None,
                    orientation: None,
                },
                &tx.exts,
            );
            rtx_payload(&mut lean_bufs.rtx, out_seq as u16, &p.payload);
            let ok = srtp
                .protect_rtp(
                    &lean_bufs.header,
                    &lean_bufs.rtx,
                    rtx_seq,
                    &mut lean_bufs.out,
                )
                .is_ok()
                && lean::transmit(&mut **socket, path, &lean_bufs.out).is_ok();
            if ok {
                v.rtx_sent(p.payload.len());
                sent += 1;
            }
        }
        add(&counters.lean_retransmits, sent);
        add(&counters.lean_nacks_ignored, ignored);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn media_sr() -> SenderInfo {
        SenderInfo {
            ssrc: 1,
            wall: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            rtp_ts: 90_000,
            packets: 300,
            octets: 300 * 1000,
        }
    }

    #[test]
    fn the_rtx_stream_reports_its_own_counts_after_its_first_packet() {
        let mut v = VideoTx::default();
        let (mut out, mut scratch) = (vec![0xaa; 28], Vec::new());
        assert!(
            !v.append_rtx_report(Some(Ssrc::from(2)), &media_sr(), &mut out, &mut scratch),
            "nothing resent yet"
        );
        assert_eq!(out.len(), 28);
        v.rtx_sent(1000);
        v.rtx_sent(500);
        assert!(
            !v.append_rtx_report(None, &media_sr(), &mut out, &mut scratch),
            "no RTX stream"
        );
        assert!(v.append_rtx_report(Some(Ssrc::from(2)), &media_sr(), &mut out, &mut scratch));
        assert_eq!(out.len(), 56, "appended after the media SR");
        assert_eq!(&out[..28], &[0xaa; 28]);
        let sr = &out[28..];
        assert_eq!(&sr[..4], &[0x80, 200, 0, 6]);
        assert_eq!(&sr[4..8], &2u32.to_be_bytes(), "the RTX SSRC");
        let mut media = Vec::new();
        rtp_out::write_sender_report(&mut media, &media_sr());
        assert_eq!(&sr[8..20], &media[8..20], "same NTP and RTP time");
        assert_eq!(&sr[20..24], &2u32.to_be_bytes(), "RTX packets");
        assert_eq!(
            &sr[24..28],
            &1504u32.to_be_bytes(),
            "RTX octets, OSNs included"
        );
    }

    #[test]
    fn the_rtx_payload_type_is_looked_up_in_the_resolved_table() {
        let v = VideoTx {
            rtx_pts: vec![(96, 97), (98, 99)],
            ..VideoTx::default()
        };
        assert_eq!(v.rtx_pt(98), Some(99));
        assert_eq!(v.rtx_pt(100), None);
    }

    #[test]
    fn the_table_holds_every_codec_with_a_repair_type() {
        let rtc = str0m::RtcConfig::new().build(Instant::now());
        let pts = rtx_pts(&rtc);
        let vp8 = rtc
            .codec_config()
            .find(|p| p.spec().codec == str0m::format::Codec::Vp8)
            .expect("str0m's default config has VP8");
        assert_eq!(
            pts.iter().find(|(p, _)| *p == *vp8.pt()).map(|(_, r)| *r),
            vp8.resend().map(|r| *r)
        );
        assert!(pts.iter().all(|(p, r)| p != r));
        assert!(!pts.is_empty());
    }
}
