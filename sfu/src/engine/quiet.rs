//! Silent video send streams send nothing: no padding, no probing.
//!
//! With bandwidth estimation on, str0m's pacer pads toward a 50 kbit/s floor on every video send
//! stream that has RTX and has sent a packet, whether or not media still flows: a subscriber of
//! a revoked camera received about 180 empty padding packets per second. str0m 0.25 has no
//! switch for that floor, so a silent video consumer's send stream is *parked*: removed from the
//! subscriber's `Rtc` (no stream, no padding source), and declared again, with the same SSRC and
//! RTX SSRC, just before the next packet is written to it ([`Engine::unpark`], called by the
//! fan-out) or before the next offer (whose `a=ssrc` lines come from the send streams).
//!
//! A video consumer is silent ([`ParkState::tick`], once per housekeeping tick) when it cannot
//! forward: the publisher's gate is closed (revoked, muted by a moderator), the subscriber may
//! not receive, or it unsubscribed (paused); parked on the next tick. Or when nothing was
//! forwarded to it for [`IDLE_TICKS`] ticks (the publisher stopped sending, or the subscriber's
//! simulcast layer does not flow). Audio send streams have no RTX, never pad, and are not
//! parked. str0m probes (padding on SSRC 0) only towards a desired bitrate, which the engine
//! never sets: no probing either.
//!
//! Parking also frees the stream's RTX cache; NACKs for packets sent before the silence get
//! no resend (the subscriber has moved on by then).
//!
//! Consumers on the lean path ([`super::lean`]: audio, and video of single-layer sources) are
//! parked the same way, for good: their packets do not go through str0m at all.

use super::*;
use crate::engine::peers::configure_send_stream;

/// Ticks ([`TICK`]) without a forwarded packet after which a video send stream is parked.
pub(super) const IDLE_TICKS: u8 = 4;

/// Whether one consumer's send stream is parked, and how long it has been idle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct ParkState {
    /// The send stream is removed from the subscriber's `Rtc`.
    parked: bool,
    /// The forwarder's last outgoing sequence number at the previous tick.
    last_seq: Option<u64>,
    /// Consecutive ticks without a forwarded packet.
    idle: u8,
}

impl ParkState {
    /// Whether the send stream is parked (must be declared again before a write).
    pub(super) fn parked(&self) -> bool {
        self.parked
    }

    /// One housekeeping tick: `can_forward` is false while the consumer cannot forward
    /// (gate closed, receive off, paused), `last_seq` the forwarder's last outgoing sequence
    /// number. Returns true when the stream must be parked now (by [`park`], which marks it).
    pub(super) fn tick(&mut self, can_forward: bool, last_seq: Option<u64>) -> bool {
        let moved = last_seq != self.last_seq;
        self.last_seq = last_seq;
        if moved {
            self.idle = 0;
        } else {
            self.idle = self.idle.saturating_add(1);
        }
        if self.parked {
            return false;
        }
        !can_forward || self.idle >= IDLE_TICKS
    }

    /// The stream was removed from the `Rtc` ([`park`]; or a lean stream whose m-line has no
    /// str0m stream left, see [`super::lean`]).
    pub(super) fn set_parked(&mut self) {
        self.parked = true;
    }

    /// The stream was declared again.
    pub(super) fn unparked(&mut self) {
        self.parked = false;
        self.idle = 0;
    }
}

impl Engine {
    /// Parks the send streams of silent video consumers (see the module docs).
    pub(super) fn park_silent_streams(&mut self) {
        let Engine {
            peers, producers, ..
        } = self;
        for (_, prod) in producers.iter_mut() {
            if prod.kind != MediaKind::Video {
                continue;
            }
            let sends = prod.gate.sends(prod.bit);
            for c in &mut prod.consumers {
                let can_forward = sends && c.gate.receives() && !c.st.paused;
                if !c.park.tick(can_forward, c.st.fwd.last_seq()) {
                    continue;
                }
                match peers.get_mut(c.peer) {
                    Some(peer) => park(&mut peer.rtc, c.ssrc, &mut c.park),
                    // No subscriber peer, no stream to remove: the consumer goes with it.
                    None => c.park.set_parked(),
                }
            }
        }
    }

    /// Declares the parked send streams of subscriber `sub` again (before an offer).
    pub(super) fn unpark_all(&mut self, sub: Key) {
        let Engine {
            peers, producers, ..
        } = self;
        let Some(peer) = peers.get_mut(sub) else {
            return;
        };
        for (_, prod) in producers.iter_mut() {
            for c in prod.consumers.iter_mut().filter(|c| c.peer == sub) {
                unpark(&mut peer.rtc, c);
            }
        }
    }
}

/// Removes the str0m send stream `ssrc` (with its RTX stream) from `rtc` and marks it parked:
/// str0m then never sends on it (no RTP, no padding, no sender report).
pub(super) fn park(rtc: &mut Rtc, ssrc: Ssrc, state: &mut ParkState) {
    rtc.direct_api().remove_stream_tx(ssrc);
    state.set_parked();
}

/// Declares a parked consumer's send stream again, with its SSRC and RTX SSRC; no-op if it is
/// not parked or its m-line is gone (the stream is then never written again).
pub(super) fn unpark(rtc: &mut Rtc, c: &mut Consumer) {
    if !c.park.parked() {
        return;
    }
    let Some(kind) = rtc.media(c.mid).map(|m| m.kind()) else {
        return;
    };
    let mut api = rtc.direct_api();
    let tx = api.declare_stream_tx(c.ssrc, c.rtx, c.mid, None);
    configure_send_stream(tx, kind);
    c.park.unparked();
}

#[cfg(test)]
mod tests {
    use super::{ParkState, IDLE_TICKS};

    #[test]
    fn a_closed_consumer_is_parked_on_the_next_tick_and_once() {
        let mut p = ParkState::default();
        assert!(!p.tick(true, Some(10)));
        assert!(p.tick(false, Some(10)), "gate closed: park now");
        assert!(
            !p.parked(),
            "marked by park() only, with the stream removed"
        );
        p.set_parked();
        assert!(p.parked());
        assert!(!p.tick(false, Some(10)), "already parked");
        p.unparked();
        assert!(!p.parked());
        assert!(!p.tick(true, Some(11)));
    }

    #[test]
    fn an_idle_consumer_is_parked_after_the_idle_ticks() {
        let mut p = ParkState::default();
        assert!(!p.tick(true, Some(5)), "first packet seen");
        for _ in 1..IDLE_TICKS {
            assert!(!p.tick(true, Some(5)));
        }
        assert!(p.tick(true, Some(5)), "idle for IDLE_TICKS ticks");
        p.set_parked();
        assert!(!p.tick(true, Some(5)), "parked once");
    }

    #[test]
    fn a_flowing_consumer_is_never_parked() {
        let mut p = ParkState::default();
        for seq in 0..100u64 {
            assert!(!p.tick(true, Some(seq)));
        }
        assert!(!p.parked());
    }

    #[test]
    fn a_consumer_that_never_forwarded_is_parked_once_idle() {
        let mut p = ParkState::default();
        let parked: Vec<bool> = (0..IDLE_TICKS + 2)
            .map(|_| {
                let now = p.tick(true, None);
                if now {
                    p.set_parked();
                }
                now
            })
            .collect();
        assert_eq!(parked.iter().filter(|x| **x).count(), 1);
        assert!(p.parked());
    }
}
