//! str0m events other than RTP: connection state, bandwidth estimates, keyframe requests from
//! subscribers, and stats (RTT, loss, jitter, NACKs).

use super::*;
use crate::metrics::{add, kind_idx, EGRESS, INGRESS};
use str0m::bwe::BweKind;
use str0m::IceConnectionState;
use tracing::debug;

impl Engine {
    pub(super) fn on_event(&mut self, key: Key, ev: Event, now: Instant) {
        match ev {
            Event::RtpPacket(pkt) => self.on_rtp(key, pkt, now),
            Event::KeyframeRequest(req) => {
                let prod = self
                    .peers
                    .get(key)
                    .and_then(|p| p.sub_mids.get(&req.mid).copied());
                if let Some(pk) = prod {
                    self.keyframe_request_from(key, pk, req.kind, now);
                }
            }
            Event::Connected => {
                if let Some(p) = self.peers.get_mut(key) {
                    p.connected = true;
                    p.deadline = None;
                    debug!("peer {} ({:?}) connected", p.owner, p.role);
                }
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.fail_peer(key, "ICE disconnected");
            }
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                if let Some(p) = self.peers.get_mut(key) {
                    p.bwe = Some(estimate);
                }
            }
            Event::Closed => self.fail_peer(key, "closed by remote"),
            Event::MediaIngressStats(s) => {
                let clock = self.clock_rate_of(key, s.mid);
                let c = &self.counters;
                if let Some(rtt) = s.rtt {
                    c.rtt[INGRESS].observe(rtt.as_secs_f64());
                }
                if let Some(loss) = s.loss {
                    c.loss[INGRESS].observe(f64::from(loss));
                }
                c.jitter[INGRESS].observe(f64::from(s.jitter) / clock);
                self.count_nacks(key, s.mid, s.rid, s.nacks, INGRESS);
            }
            Event::MediaEgressStats(s) => {
                let clock = self.clock_rate_of(key, s.mid);
                let c = &self.counters;
                if let Some(rtt) = s.rtt {
                    c.rtt[EGRESS].observe(rtt.as_secs_f64());
                }
                if let Some(loss) = s.loss {
                    c.loss[EGRESS].observe(f64::from(loss));
                }
                if let Some(r) = &s.remote {
                    c.jitter[EGRESS].observe(f64::from(r.jitter) / clock);
                }
                self.count_nacks(key, s.mid, s.rid, s.nacks, EGRESS);
            }
            _ => {}
        }
    }

    /// The RTP clock rate of a peer's media (for jitter in seconds): the producer's codec when
    /// known, else 48 kHz audio / 90 kHz video.
    pub(super) fn clock_rate_of(&self, key: Key, mid: Mid) -> f64 {
        let Some(peer) = self.peers.get(key) else {
            return 90_000.0;
        };
        let pk = match peer.role {
            Role::Subscriber => peer.sub_mids.get(&mid).copied(),
            Role::Publisher => self.parts.get(&peer.owner).and_then(|p| {
                p.producers
                    .iter()
                    .copied()
                    .find(|pk| self.producers.get(*pk).is_some_and(|pr| pr.mid == mid))
            }),
        };
        match pk.and_then(|pk| self.producers.get(pk)) {
            Some(p) => match p.params.first() {
                Some((_, params)) => f64::from(params.spec().clock_rate.get()),
                None if p.kind == MediaKind::Audio => 48_000.0,
                None => 90_000.0,
            },
            None => 90_000.0,
        }
    }

    /// Adds the growth of a stream's cumulative NACK count (from a stats event) to the counter.
    pub(super) fn count_nacks(
        &mut self,
        key: Key,
        mid: Mid,
        rid: Option<Rid>,
        total: u64,
        dir: usize,
    ) {
        let Some(peer) = self.peers.get_mut(key) else {
            return;
        };
        let delta = match peer
            .nacks_seen
            .iter_mut()
            .find(|(m, r, _)| *m == mid && *r == rid)
        {
            Some((_, _, seen)) => {
                // A restarted stream starts counting from zero again.
                let d = if total >= *seen { total - *seen } else { total };
                *seen = total;
                d
            }
            None => {
                peer.nacks_seen.push((mid, rid, total));
                total
            }
        };
        if delta > 0 {
            add(&self.counters.nacks[dir], delta);
        }
    }

    /// Recomputes the producer, consumer and peer gauges.
    pub(super) fn publish_gauges(&self) {
        let (mut producers, mut consumers) = ([0u64; 2], [0u64; 2]);
        for (_, p) in self.producers.iter() {
            let k = kind_idx(p.kind);
            producers[k] += 1;
            consumers[k] += p.consumers.len() as u64;
        }
        let c = &self.counters;
        for k in 0..2 {
            c.producers[k].store(producers[k], Relaxed);
            c.consumers[k].store(consumers[k], Relaxed);
        }
        c.peers.store(self.peers.iter().count() as u64, Relaxed);
    }
}
