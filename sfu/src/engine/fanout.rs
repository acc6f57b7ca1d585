//! The hot path: one incoming RTP packet of a producer to every consumer: gate, layer, pause,
//! sequence/timestamp rewrite, payload type map, `write_rtp` into the subscriber's send stream,
//! or for audio and single-layer video to a connected subscriber the lean path
//! ([`super::lean`], [`super::lean_video`]): built, protected and queued on the socket here,
//! no drive; a video source with lean consumers also keeps its recent packets for their
//! retransmits.

use super::lean::{self, LeanPacket, LeanState};
use super::*;
use crate::forward::{changes, PtLookup, Step};
use crate::media::is_keyframe;
use crate::metrics::{add, cap_idx, kind_idx, ConsumerDrop};
use crate::retransmit::CachedPacket;
use str0m::media::KeyframeRequestKind;
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, SeqNo, VideoOrientation};

/// One RTP packet of a producer, from a publisher peer or relayed from another node.
pub(super) struct InPacket {
    /// The SSRC it arrived with (at the publisher's node).
    pub(super) ssrc: u32,
    /// Extended sequence number.
    pub(super) seq: u64,
    pub(super) ts: u32,
    pub(super) pt: Pt,
    pub(super) marker: bool,
    pub(super) audio_level: Option<i8>,
    pub(super) voice_activity: Option<bool>,
    pub(super) video_orientation: Option<VideoOrientation>,
    pub(super) payload: Arc<[u8]>,
    /// When it arrived.
    pub(super) at: Instant,
}
use tracing::warn;

impl Engine {
    /// The producer and layer of an incoming SSRC (cached per publisher peer).
    pub(super) fn resolve_ssrc(&mut self, key: Key, ssrc: Ssrc) -> Option<(Key, u8)> {
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
        let li = self.producers.get_mut(pk)?.bind_layer(rid, ssrc);
        peer.ssrcs.push((ssrc, pk, li));
        Some((pk, li))
    }

    /// An RTP packet from a publisher peer: its producer, then [`Engine::forward`].
    pub(super) fn on_rtp(&mut self, key: Key, pkt: RtpPacket, now: Instant) {
        let Some((pk, layer)) = self.resolve_ssrc(key, pkt.header.ssrc) else {
            return;
        };
        if self.opts.lean_ingress {
            self.ingress_seen(key, pkt.header.ssrc, *pkt.seq_no, now);
        }
        let ext = &pkt.header.ext_vals;
        let p = InPacket {
            ssrc: *pkt.header.ssrc,
            seq: *pkt.seq_no,
            ts: pkt.header.timestamp,
            pt: pkt.header.payload_type,
            marker: pkt.header.marker,
            audio_level: ext.audio_level,
            voice_activity: ext.voice_activity,
            video_orientation: ext.video_orientation,
            payload: pkt.payload,
            at: pkt.timestamp,
        };
        self.forward(pk, layer, p, now);
    }

    /// The hot path: one packet of a producer (local, or relayed from another node) to every
    /// consumer, and once to each other node of the call for a local producer (`relay_out`).
    pub(super) fn forward(&mut self, pk: Key, layer: u8, pkt: InPacket, now: Instant) {
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
        if !self.relay.is_idle() {
            self.relay_out(pk, layer, &pkt);
        }
        let Some(prod) = self.producers.get_mut(pk) else {
            return;
        };
        let mut want_keyframe = false;
        if !prod.open {
            prod.open = true;
            prod.epoch = prod.epoch.wrapping_add(1);
            want_keyframe = prod.kind == MediaKind::Video;
        }
        let pt = pkt.pt;
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
        if !video {
            if let Some(level) = pkt.audio_level {
                prod.level.observe(level);
            }
        }
        let out_ext = ExtensionValues {
            audio_level: pkt.audio_level,
            voice_activity: pkt.voice_activity,
            video_orientation: pkt.video_orientation,
            ..Default::default()
        };
        let simulcast = prod.layers.len() > 1;
        let keyframe = simulcast && is_keyframe(codec, &pkt.payload);
        let in_seq = pkt.seq;
        let in_ts = pkt.ts;
        let marker = pkt.marker;
        let epoch = prod.epoch;
        let level = pkt.audio_level.zip(pkt.voice_activity);
        let Engine {
            peers,
            dirty,
            producers,
            counters,
            socket,
            lean_bufs,
            ..
        } = self;
        let Some(prod) = producers.get_mut(pk) else {
            return;
        };
        // One layer only: the cache is keyed by the source's sequence number.
        if let Some(cache) = prod.cache.as_mut().filter(|_| !simulcast) {
            cache.insert(CachedPacket {
                epoch,
                seq: in_seq,
                ts: in_ts,
                pt: *pt,
                marker,
                at: pkt.at,
                payload: pkt.payload.clone(),
            });
        }
        // Per-packet tallies kept in registers, published once after the fan-out.
        let mut forwarded = 0u64;
        let mut lean_sent = 0u64;
        let mut lean_video = 0u64;
        let mut drops = [0u64; 3];
        // One read of the change counter per packet: each consumer's gate copy and lean route
        // are current iff they were made at this count (see `forward::GateCopy`).
        let now_changes = changes();
        for c in &mut prod.consumers {
            if simulcast && layer != c.cur {
                if layer == c.target && keyframe {
                    c.cur = layer;
                    c.st.fwd.resync();
                } else {
                    continue;
                }
            }
            let receives = c.gate.receives_at(now_changes);
            let (seq, ts, resumed) = match c
                .st
                .step(receives, epoch, in_seq, in_ts, pkt.at, clock_rate)
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
            let out_pt = match c.st.pts.get(*pt) {
                PtLookup::Mapped(v) => v,
                PtLookup::Unmappable => {
                    drops[ConsumerDrop::Other as usize] += 1;
                    continue;
                }
                PtLookup::Unknown => {
                    let Some(sub) = peers.get(c.peer) else {
                        drops[ConsumerDrop::Other as usize] += 1;
                        continue;
                    };
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
            if let Some(tx) = c.lean.as_mut() {
                // The route copied from the subscriber peer, or the peer looked up once after
                // something changed.
                let routed = tx.route(now_changes).is_some()
                    || match peers.get_mut(c.peer) {
                        None => {
                            drops[ConsumerDrop::Other as usize] += 1;
                            continue;
                        }
                        Some(sub) => match sub.lean.state(sub.connected) {
                            LeanState::Ready(srtp, path) => {
                                tx.set_route(now_changes, srtp, path);
                                true
                            }
                            // Not connected yet: str0m could not send it either.
                            LeanState::Waiting => {
                                drops[ConsumerDrop::Other as usize] += 1;
                                continue;
                            }
                            // No keys our SRTP takes: this stream goes through str0m after all
                            // (its send stream is declared again just below).
                            LeanState::Unavailable => false,
                        },
                    };
                if routed {
                    let p = LeanPacket {
                        pt: out_pt,
                        marker,
                        seq,
                        ts,
                        level,
                        orientation: pkt.video_orientation.map(|o| o as u8),
                        payload: &pkt.payload,
                        at: pkt.at,
                        clock_rate,
                    };
                    match lean::send(tx, c.ssrc, &p, lean_bufs, &mut **socket) {
                        Ok(()) => {
                            forwarded += 1;
                            match tx.video.as_mut() {
                                Some(v) => {
                                    v.map.record(seq, ts, in_seq, in_ts, epoch);
                                    v.budget.credit();
                                    lean_video += 1;
                                }
                                None => lean_sent += 1,
                            }
                        }
                        Err(_) => drops[ConsumerDrop::Other as usize] += 1,
                    }
                    want_keyframe |= resumed && video;
                    continue;
                }
                c.lean = None;
            }
            let Some(sub) = peers.get_mut(c.peer) else {
                drops[ConsumerDrop::Other as usize] += 1;
                continue;
            };
            // A silent video stream was parked (no padding): declare it again first.
            super::quiet::unpark(&mut sub.rtc, c);
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
                    pkt.at,
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
        if lean_sent > 0 {
            add(&counters.lean_packets, lean_sent);
        }
        if lean_video > 0 {
            add(&counters.lean_video_packets, lean_video);
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
}
