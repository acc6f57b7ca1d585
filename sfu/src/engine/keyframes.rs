//! Keyframe requests to publishers (rate-limited per layer) and simulcast layer choice.

use super::*;
use crate::forward::pick_layer;
use crate::metrics::add;
use str0m::media::KeyframeRequestKind;

/// At most one keyframe request per producer layer per this interval (unless forced).
const KEYFRAME_INTERVAL: Duration = Duration::from_millis(500);

/// Whether a keyframe request may go to the publisher now: at most one per
/// [`KEYFRAME_INTERVAL`] per layer, except `force`d ones (a new subscriber, a resumed track),
/// which always go: a resume that waits out the interval leaves its subscribers frozen.
pub(crate) fn keyframe_due(last: Option<Instant>, now: Instant, force: bool) -> bool {
    force || last.is_none_or(|t| now.saturating_duration_since(t) >= KEYFRAME_INTERVAL)
}

impl Engine {
    pub(super) fn request_keyframe(
        &mut self,
        pk: Key,
        layer: Option<usize>,
        kind: KeyframeRequestKind,
        now: Instant,
        force: bool,
    ) {
        let Some(prod) = self.producers.get_mut(pk) else {
            return;
        };
        // A gated publisher's keyframe would be dropped by the gate: asking for it only spends
        // the rate limit that the resume's own request needs.
        if prod.kind != MediaKind::Video || !prod.gate.sends(prod.bit) {
            return;
        }
        let li = layer.unwrap_or(0);
        let (rid, ssrc) = match prod.layers.get_mut(li) {
            Some(l) => {
                if !keyframe_due(l.last_keyframe_req, now, force) {
                    return;
                }
                l.last_keyframe_req = Some(now);
                (l.rid, l.ssrc)
            }
            None => (None, None),
        };
        let (publisher, mid) = (prod.publisher, prod.mid);
        // A remote producer's publisher is on another node: the request goes there.
        if self.relay_keyframe(pk, rid, kind, force) {
            return;
        }
        // A lean ingress publisher: str0m no longer knows the stream; the engine asks.
        if self.ingress_keyframe(publisher, ssrc, kind) {
            add(&self.counters.plis, 1);
            return;
        }
        let Some(peer) = self.peers.get_mut(publisher) else {
            return;
        };
        let sent = catch_unwind(AssertUnwindSafe(|| {
            let mut api = peer.rtc.direct_api();
            match api.stream_rx_by_mid(mid, rid) {
                Some(rx) => {
                    rx.request_keyframe(kind);
                    true
                }
                None => false,
            }
        }))
        .unwrap_or(false);
        if sent {
            add(&self.counters.plis, 1);
            self.mark_dirty(publisher);
        }
    }

    pub(super) fn consumer_layer(&self, pk: Key, sub: Key) -> Option<usize> {
        let prod = self.producers.get(pk)?;
        let c = prod.consumers.iter().find(|c| c.peer == sub)?;
        let l = if c.target != NO_LAYER {
            c.target
        } else {
            c.cur
        };
        (l != NO_LAYER).then_some(usize::from(l))
    }

    /// Picks each consumer's simulcast layer: the requested quality, stepped down while the
    /// subscriber's bandwidth estimate cannot carry it. Switches happen on the next keyframe.
    pub(super) fn choose_layers(&mut self, pk: Key, now: Instant) {
        let Some(prod) = self.producers.get_mut(pk) else {
            return;
        };
        if prod.layers.len() <= 1 {
            for c in &mut prod.consumers {
                c.cur = 0;
                c.target = 0;
            }
            return;
        }
        let rates: Vec<f64> = prod.layers.iter().map(|l| l.rate_bps).collect();
        let mut requests = Vec::new();
        for c in &mut prod.consumers {
            let bwe = self
                .peers
                .get(c.peer)
                .and_then(|p| p.bwe)
                .map(|b| b.as_f64());
            let Some(target) = pick_layer(&rates, c.quality, bwe) else {
                continue;
            };
            let target = target as u8;
            if target != c.target {
                c.target = target;
                if target != c.cur {
                    requests.push(usize::from(target));
                }
            }
        }
        requests.dedup();
        for l in requests {
            self.request_keyframe(pk, Some(l), KeyframeRequestKind::Pli, now, false);
        }
    }
}
