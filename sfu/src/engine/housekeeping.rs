//! The periodic tick: connect deadlines, simulcast layer rates and choice, active speakers,
//! sender reports of lean audio streams.

use super::*;

impl Engine {
    pub(super) fn housekeeping(&mut self, now: Instant) {
        self.ticks += 1;
        let expired: Vec<Key> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.connected && p.deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| k)
            .collect();
        for k in expired {
            self.fail_peer(k, "ICE/DTLS timeout");
        }
        // Layer rates and choice.
        let secs = TICK.as_secs_f64();
        let simulcast: Vec<Key> = self
            .producers
            .iter()
            .filter(|(_, p)| p.layers.len() > 1)
            .map(|(k, _)| k)
            .collect();
        for pk in &simulcast {
            if let Some(p) = self.producers.get_mut(*pk) {
                for l in &mut p.layers {
                    let inst = l.bytes as f64 * 8.0 / secs;
                    l.rate_bps = if l.rate_bps == 0.0 {
                        inst
                    } else {
                        0.7 * l.rate_bps + 0.3 * inst
                    };
                    l.bytes = 0;
                }
            }
            self.choose_layers(*pk, now);
        }
        if self.ticks.is_multiple_of(2) {
            self.speakers();
        }
        self.relay_tick(now);
        self.park_silent_streams();
        self.lean_reports();
        let peers = &self.peers;
        self.routes.retain(|k| peers.get(k).is_some());
        self.publish_gauges();
    }

    pub(super) fn speakers(&mut self) {
        let mut levels: HashMap<CallCid, Vec<(String, f32)>> = HashMap::new();
        let keys: Vec<Key> = self.producers.iter().map(|(k, _)| k).collect();
        for k in keys {
            if let Some(p) = self.producers.get_mut(k) {
                if p.source == TrackSource::Microphone {
                    let open = p.gate.sends(p.bit);
                    let l = p.level.take();
                    levels
                        .entry(p.call.clone())
                        .or_default()
                        .push((p.owner.clone(), if open { l } else { 0.0 }));
                }
            }
        }
        for (call, state) in &mut self.calls {
            let l = levels.remove(call).unwrap_or_default();
            if let Some(speakers) = state.speakers.update(l) {
                let _ = self.events.send(SfuEvent::Speakers {
                    call: call.clone(),
                    speakers,
                });
            }
        }
    }
}
