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
use crate::rtp_out::{self, RtpFields};
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
}

impl Engine {
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
            let rtx_pt = peer
                .rtc
                .codec_config()
                .find(|x| *x.pt() == out_pt)
                .and_then(|x| x.resend());
            let Some(rtx_pt) = rtx_pt else {
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
                    pt: *rtx_pt,
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
                sent += 1;
            }
        }
        add(&counters.lean_retransmits, sent);
        add(&counters.lean_nacks_ignored, ignored);
    }
}
