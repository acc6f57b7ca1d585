//! Feedback from a subscriber about its lean streams (docs/ARCHITECTURE.md, "Lean video
//! path"). str0m does not know their SSRCs (their send streams are removed), so it reports no
//! PLI, FIR or NACK and no round trip or loss for them: the engine reads the subscriber's SRTCP
//! itself, with its own [`crate::srtp::SrtpReceiver`] on the same keys, before the datagram
//! goes on to str0m unchanged (str0m still needs the reports about its own streams), except
//! from a subscriber whose every m-line is lean: nothing in it is str0m's then, and it gets no
//! str0m drive ([`Read::Only`]). Receiver report blocks about lean audio and video streams go
//! to [`super::lean_stats`].
//!
//! [`parse_feedback`] is pure and takes any bytes: a malformed compound packet ends the parse,
//! never the server.

use super::lean::LeanStream;
use super::lean_stats::ReportBlock;
use super::*;
use crate::metrics::{add, EGRESS, STATS_INTERVAL};
use str0m::media::KeyframeRequestKind;

// RTCP packet types (RFC 3550 §6.4): sender (the one our reports are written with) and
// receiver report, both carrying report blocks.
use crate::rtp_out::RTCP_SR as SR;
/// RTCP packet type of a receiver report (RFC 3550 §6.4.2).
const RR: u8 = 201;
/// RTCP packet types (RFC 4585 §6.1): transport-layer and payload-specific feedback.
const RTPFB: u8 = 205;
const PSFB: u8 = 206;
/// Feedback message types: generic NACK (RTPFB), PLI and FIR (PSFB, RFC 5104 §4.3.1).
const FMT_NACK: u8 = 1;
const FMT_PLI: u8 = 1;
const FMT_FIR: u8 = 4;

/// Most feedback items taken from one compound packet (a flood costs bounded work).
pub(super) const MAX_ITEMS: usize = 64;

/// One feedback item about a media stream the subscriber receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Feedback {
    /// Picture loss indication for `media`.
    Pli { media: u32 },
    /// Full intra request for `media`.
    Fir { media: u32 },
    /// Generic NACK: packet `pid` and those of the bitmask `blp` after it (RFC 4585 §6.2.1).
    Nack { media: u32, pid: u16, blp: u16 },
    /// A report block of a receiver (or sender) report about stream `ssrc`.
    Report(ReportBlock),
}

impl Feedback {
    /// The SSRC of the (our) stream the item is about.
    pub(super) fn media(&self) -> u32 {
        match *self {
            Feedback::Pli { media } | Feedback::Fir { media } | Feedback::Nack { media, .. } => {
                media
            }
            Feedback::Report(b) => b.ssrc,
        }
    }
}

/// Whether a datagram is RTCP by RFC 7983 (first byte 128..=191) and RFC 5761 (packet type
/// 192..=223).
pub(super) fn is_rtcp(data: &[u8]) -> bool {
    matches!(data, [128..=191, 192..=223, ..])
}

/// Reads the feedback items of a plain compound RTCP packet into `out` (cleared first), at most
/// [`MAX_ITEMS`]. Stops at the first malformed packet (wrong version, length past the end).
pub(super) fn parse_feedback(buf: &[u8], out: &mut Vec<Feedback>) {
    out.clear();
    let mut at = 0;
    while at + 4 <= buf.len() && out.len() < MAX_ITEMS {
        let (b0, pt) = (buf[at], buf[at + 1]);
        if b0 >> 6 != 2 {
            return;
        }
        let words = usize::from(u16::from_be_bytes([buf[at + 2], buf[at + 3]]));
        let end = at + 4 + words * 4;
        let Some(body) = buf.get(at + 4..end) else {
            return;
        };
        at = end;
        let room = MAX_ITEMS - out.len();
        // Reports: sender SSRC (and a sender's info), then report blocks (RC of them).
        let blocks_at = match pt {
            SR => Some(24),
            RR => Some(4),
            _ => None,
        };
        if let Some(from) = blocks_at {
            let count = usize::from(b0 & 0x1f);
            let blocks = body.get(from..).unwrap_or_default();
            out.extend(
                blocks
                    .chunks_exact(24)
                    .take(count.min(room))
                    .filter_map(|c| c.try_into().ok())
                    .map(|c| Feedback::Report(ReportBlock::read(c))),
            );
            continue;
        }
        // Feedback: sender SSRC, media SSRC, then the FCI.
        if body.len() < 8 {
            continue;
        }
        let media = be32(&body[4..8]);
        let fci = &body[8..];
        match (pt, b0 & 0x1f) {
            (RTPFB, FMT_NACK) => {
                out.extend(fci.chunks_exact(4).take(room).map(|c| Feedback::Nack {
                    media,
                    pid: u16::from_be_bytes([c[0], c[1]]),
                    blp: u16::from_be_bytes([c[2], c[3]]),
                }))
            }
            (PSFB, FMT_PLI) => out.push(Feedback::Pli { media }),
            // FIR names its streams in the FCI (SSRC, sequence number, reserved).
            (PSFB, FMT_FIR) => out.extend(
                fci.chunks_exact(8)
                    .take(room)
                    .map(|c| Feedback::Fir { media: be32(c) }),
            ),
            _ => {}
        }
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// The sequence numbers one NACK item names: `pid`, then `pid + i + 1` for each bit i of `blp`.
pub(super) fn nacked(pid: u16, blp: u16) -> impl Iterator<Item = u16> {
    std::iter::once(pid).chain(
        (0..16u16)
            .filter(move |i| blp & (1 << i) != 0)
            .map(move |i| pid.wrapping_add(i + 1)),
    )
}

/// Who an SRTCP datagram from a subscriber was for, once the engine read it
/// ([`Engine::lean_feedback`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Read {
    /// str0m gets it too: the peer has an m-line str0m sends media on (its reports and
    /// feedback are str0m's), or the engine could not read it (no keys, not a subscriber on
    /// the lean path, not authentic: str0m decides).
    Str0mToo,
    /// Only the engine: every m-line of the subscriber carries a lean stream, so nothing in
    /// it concerns a stream str0m sends (no str0m stream has an SSRC it could name, and lean
    /// packets carry no transport-wide sequence number to give TWCC feedback on).
    Only,
    /// Only the engine, as [`Read::Only`], and it was the client's first authenticated packet:
    /// its DTLS instance releases its OpenSSL session when str0m next polls it, so the caller
    /// drives str0m once with a timeout (not with the packet: str0m would keep an RTCP queue
    /// of about 2 KiB for the rest of the peer's life to parse it).
    OnlyFirstProof,
}

impl Engine {
    /// An SRTCP datagram from subscriber peer `key` (already accepted by its `Rtc`): if the
    /// peer is on the lean path (it has the keys; publishers never do), unprotect it with the
    /// engine's receiver and act on what concerns its lean streams: keyframe requests and
    /// retransmits (video), report blocks (audio and video, [`Engine::lean_report`]). Returns
    /// whether str0m needs the datagram as well ([`Read`]): a subscriber whose every m-line is
    /// lean (a livestream viewer, a meeting's subscriber of single-layer sources) costs no
    /// str0m drive per report, one SRTCP decryption instead of two.
    pub(super) fn lean_feedback(&mut self, key: Key, data: &[u8], now: Instant) -> Read {
        let Engine {
            peers, lean_bufs, ..
        } = self;
        let Some(peer) = peers.get_mut(key) else {
            return Read::Str0mToo;
        };
        if peer.role != Role::Subscriber {
            return Read::Str0mToo;
        }
        let all_lean = peer.lean.covers(peer.sub_mids.keys());
        let Some(rx) = peer.lean.receiver(peer.connected) else {
            return Read::Str0mToo;
        };
        if rx.unprotect_rtcp(data, &mut lean_bufs.rtcp).is_err() {
            return Read::Str0mToo;
        }
        // The client protects with its keys: it completed its DTLS handshake (`dtls`). Its
        // DTLS instance releases its OpenSSL session when str0m next polls it, so the first
        // such packet also drives str0m once (`Read::OnlyFirstProof`), whatever the m-lines.
        let first_proof = peer.lean.keys.set_peer_keyed();
        let mut items = std::mem::take(&mut lean_bufs.feedback);
        parse_feedback(&lean_bufs.rtcp, &mut items);
        for f in &items {
            if let Feedback::Report(b) = f {
                self.lean_report(key, b, now);
                continue;
            }
            let Some(pk) = self
                .peers
                .get(key)
                .and_then(|p| p.lean.stream(Ssrc::from(f.media())))
                .filter(|s| s.video)
                .map(|s| s.pk)
            else {
                continue;
            };
            match *f {
                Feedback::Pli { .. } | Feedback::Fir { .. } => {
                    let kind = if matches!(f, Feedback::Fir { .. }) {
                        KeyframeRequestKind::Fir
                    } else {
                        KeyframeRequestKind::Pli
                    };
                    add(&self.counters.lean_plis, 1);
                    self.keyframe_request_from(key, pk, kind, now);
                }
                Feedback::Nack { media, pid, blp } => {
                    self.lean_retransmit(key, pk, Ssrc::from(media), nacked(pid, blp), now);
                }
                Feedback::Report(_) => {}
            }
        }
        self.lean_bufs.feedback = items;
        // str0m needs it when some m-line is str0m's; a drive (not the packet) once to release
        // the DTLS session.
        match (all_lean, first_proof) {
            (false, _) => Read::Str0mToo,
            (true, false) => Read::Only,
            (true, true) => Read::OnlyFirstProof,
        }
    }

    /// A report block from subscriber `sub`: if it is about one of its lean streams (audio or
    /// video), the stream's round trip, loss and jitter are updated
    /// ([`super::lean_stats::StreamReports`]) and, at most once per [`STATS_INTERVAL`] per
    /// stream, sampled into the egress RTT, loss and jitter histograms str0m's
    /// `MediaEgressStats` feed for its own streams. Blocks about str0m's streams are str0m's.
    pub(super) fn lean_report(&mut self, sub: Key, b: &ReportBlock, now: Instant) {
        let Some(peer) = self.peers.get(sub) else {
            return;
        };
        let ssrc = Ssrc::from(b.ssrc);
        // The stream by its SSRC (the peer's index of its lean streams), then this peer's
        // consumer among the producer's (as a NACK's lookup); SRTCP authenticated it first.
        let Some(&LeanStream { mid, pk, .. }) = peer.lean.stream(ssrc) else {
            return;
        };
        let Some(i) = self.producers.get(pk).and_then(|p| {
            p.consumers
                .iter()
                .position(|c| c.peer == sub && c.ssrc == ssrc && c.lean.is_some())
        }) else {
            return;
        };
        let clock = self.clock_rate_of(sub, mid);
        let Some(tx) = self
            .producers
            .get_mut(pk)
            .and_then(|p| p.consumers.get_mut(i))
            .and_then(|c| c.lean.as_mut())
        else {
            return;
        };
        let lost = tx.reports.received(b, now);
        let sample = tx.reports.sample(now, STATS_INTERVAL);
        let c = &self.counters;
        add(&c.lean_receiver_reports, 1);
        add(&c.lean_packets_lost, lost);
        if let Some(s) = sample {
            if let Some(rtt) = s.rtt {
                c.rtt[EGRESS].observe(rtt.as_secs_f64());
            }
            c.loss[EGRESS].observe(f64::from(s.loss));
            c.jitter[EGRESS].observe(f64::from(s.jitter) / clock);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fb(pt: u8, fmt: u8, media: u32, fci: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80 | fmt, pt, 0, 0];
        p.extend_from_slice(&1u32.to_be_bytes());
        p.extend_from_slice(&media.to_be_bytes());
        p.extend_from_slice(fci);
        let words = (p.len() / 4 - 1) as u16;
        p[2..4].copy_from_slice(&words.to_be_bytes());
        p
    }

    #[test]
    fn a_compound_packet_yields_its_pli_fir_and_nacks() {
        // A receiver report first (skipped), then PLI, NACK with two items, FIR for two SSRCs.
        let mut c = vec![0x80, 201, 0, 1, 0, 0, 0, 1];
        c.extend(fb(PSFB, FMT_PLI, 7, &[]));
        c.extend(fb(RTPFB, FMT_NACK, 8, &[0, 10, 0, 0b101, 0xff, 0xff, 0, 0]));
        let mut fir = Vec::new();
        fir.extend_from_slice(&9u32.to_be_bytes());
        fir.extend_from_slice(&[3, 0, 0, 0]);
        fir.extend_from_slice(&10u32.to_be_bytes());
        fir.extend_from_slice(&[4, 0, 0, 0]);
        c.extend(fb(PSFB, FMT_FIR, 0, &fir));
        let mut out = Vec::new();
        parse_feedback(&c, &mut out);
        assert_eq!(
            out,
            [
                Feedback::Pli { media: 7 },
                Feedback::Nack {
                    media: 8,
                    pid: 10,
                    blp: 0b101
                },
                Feedback::Nack {
                    media: 8,
                    pid: 0xffff,
                    blp: 0
                },
                Feedback::Fir { media: 9 },
                Feedback::Fir { media: 10 },
            ]
        );
    }

    /// A report block about `ssrc` (24 bytes).
    fn block(ssrc: u32, fraction: u8, lsr: u32) -> Vec<u8> {
        let mut b = ssrc.to_be_bytes().to_vec();
        b.extend_from_slice(&[fraction, 0xff, 0xff, 0xfe]); // cumulative lost -2
        b.extend_from_slice(&500u32.to_be_bytes());
        b.extend_from_slice(&33u32.to_be_bytes());
        b.extend_from_slice(&lsr.to_be_bytes());
        b.extend_from_slice(&0x8000u32.to_be_bytes());
        b
    }

    /// A report of type `pt` (SR or RR) with `rc` in its count field and `body` after the
    /// header (sender SSRC, sender info, blocks).
    fn report(pt: u8, rc: u8, body: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80 | rc, pt, 0, 0];
        p.extend_from_slice(body);
        let words = (p.len() / 4 - 1) as u16;
        p[2..4].copy_from_slice(&words.to_be_bytes());
        p
    }

    #[test]
    fn receiver_and_sender_reports_yield_their_blocks() {
        let mut rr = 1u32.to_be_bytes().to_vec();
        rr.extend(block(7, 10, 0x1111_2222));
        rr.extend(block(8, 20, 0));
        let mut sr = 1u32.to_be_bytes().to_vec();
        sr.extend_from_slice(&[0; 20]); // sender info
        sr.extend(block(9, 30, 5));
        let mut c = report(RR, 2, &rr);
        c.extend(report(SR, 1, &sr));
        c.extend(fb(PSFB, FMT_PLI, 7, &[]));
        let mut out = Vec::new();
        parse_feedback(&c, &mut out);
        let blocks: Vec<ReportBlock> = out
            .iter()
            .filter_map(|f| match f {
                Feedback::Report(b) => Some(*b),
                _ => None,
            })
            .collect();
        assert_eq!(blocks.len(), 3, "{out:?}");
        assert_eq!(
            blocks[0],
            ReportBlock {
                ssrc: 7,
                fraction_lost: 10,
                cumulative_lost: -2,
                jitter: 33,
                lsr: 0x1111_2222,
                dlsr: 0x8000,
            }
        );
        assert_eq!((blocks[1].ssrc, blocks[1].fraction_lost), (8, 20));
        assert_eq!((blocks[2].ssrc, blocks[2].lsr), (9, 5));
        assert_eq!(out.last(), Some(&Feedback::Pli { media: 7 }));
        assert_eq!(
            out.iter().map(Feedback::media).collect::<Vec<_>>(),
            [7, 8, 9, 7]
        );
    }

    #[test]
    fn malformed_reports_yield_only_whole_blocks() {
        let mut out = Vec::new();
        // An empty receiver report (RC 0), and one whose RC claims more blocks than it has.
        let mut rr = 1u32.to_be_bytes().to_vec();
        rr.extend(block(7, 0, 0));
        let mut c = report(RR, 0, &1u32.to_be_bytes());
        c.extend(report(RR, 5, &rr));
        parse_feedback(&c, &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        // Fewer blocks than RC says are read (the extra bytes are not a block).
        let mut rr = 1u32.to_be_bytes().to_vec();
        rr.extend(block(7, 0, 0));
        rr.extend(block(8, 0, 0));
        parse_feedback(&report(RR, 1, &rr), &mut out);
        assert_eq!(out.len(), 1);
        // A sender report too short for its sender info; a block cut short by the length.
        parse_feedback(&report(SR, 1, &[0; 12]), &mut out);
        assert!(out.is_empty());
        let mut cut = report(RR, 1, &rr);
        cut.truncate(20);
        cut[2..4].copy_from_slice(&4u16.to_be_bytes());
        parse_feedback(&cut, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn nack_items_name_the_pid_and_the_bitmask() {
        assert_eq!(nacked(10, 0b101).collect::<Vec<_>>(), [10, 11, 13]);
        assert_eq!(nacked(0xffff, 1 << 15).collect::<Vec<_>>(), [0xffff, 15]);
        assert_eq!(nacked(5, 0xffff).count(), 17);
    }

    #[test]
    fn malformed_packets_end_the_parse() {
        let mut out = vec![Feedback::Pli { media: 1 }];
        parse_feedback(&[], &mut out);
        assert!(out.is_empty());
        // Wrong version.
        let mut bad = fb(PSFB, FMT_PLI, 7, &[]);
        bad[0] = 0x40 | FMT_PLI;
        parse_feedback(&bad, &mut out);
        assert!(out.is_empty());
        // A length past the end: the packet before it still counts.
        let mut c = fb(PSFB, FMT_PLI, 7, &[]);
        c.extend_from_slice(&[0x81, PSFB, 0x10, 0, 0, 0]);
        parse_feedback(&c, &mut out);
        assert_eq!(out, [Feedback::Pli { media: 7 }]);
        // A feedback packet too short for its SSRCs is skipped.
        parse_feedback(&[0x81, PSFB, 0, 1, 0, 0, 0, 1], &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_flood_of_items_is_capped() {
        let fci: Vec<u8> = (0..200u16).flat_map(|i| [0, i as u8, 0, 0]).collect();
        let mut out = Vec::new();
        parse_feedback(&fb(RTPFB, FMT_NACK, 1, &fci), &mut out);
        assert_eq!(out.len(), MAX_ITEMS);
    }

    #[test]
    fn garbage_never_panics() {
        // A deterministic sweep of short byte strings with RTCP-looking starts.
        let mut out = Vec::new();
        let mut x = 0x1234_5678u32;
        for len in 0..64 {
            for _ in 0..200 {
                let bytes: Vec<u8> = (0..len)
                    .map(|i| {
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        match i {
                            0 => 0x80 | (x as u8 & 0x1f),
                            1 => [PSFB, RTPFB, SR, RR][x as usize % 4],
                            _ => x as u8,
                        }
                    })
                    .collect();
                parse_feedback(&bytes, &mut out);
                assert!(out.len() <= MAX_ITEMS);
            }
        }
    }

    #[test]
    fn rtcp_is_told_from_rtp_by_its_second_byte() {
        assert!(is_rtcp(&[0x81, 206, 0, 2]));
        assert!(is_rtcp(&[0x80, 200]));
        assert!(!is_rtcp(&[0x80, 96, 0, 1]), "RTP");
        assert!(!is_rtcp(&[0x80, 0x80 | 96]), "RTP with the marker");
        assert!(!is_rtcp(&[22, 254]), "DTLS");
        assert!(!is_rtcp(&[0x80]));
    }
}
