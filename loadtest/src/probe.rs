//! The measurement trailer carried at the end of every synthetic RTP payload.
//!
//! Each payload a [`Publisher`](crate::media::Publisher) sends ends with a [`Probe`] of
//! [`PROBE_LEN`] bytes: a magic tag, flags, a per-track sequence number and the send time in
//! microseconds since the Unix epoch. Putting it at the *end* keeps it independent of the codec
//! headers at the start of the payload (VP8 payload descriptor, Opus TOC byte), which an SFU may
//! read or rewrite. Bots on one machine share the wall clock, so `receive time - send time` is the
//! one-way latency through the server.

use std::time::{SystemTime, UNIX_EPOCH};

/// Length in bytes of the trailer.
pub const PROBE_LEN: usize = 16;

/// Magic bytes opening the trailer: `GR`.
const MAGIC: [u8; 2] = *b"GR";
/// Trailer format version.
const VERSION: u8 = 1;

/// Flag: the packet belongs to a VP8 keyframe.
pub const FLAG_KEYFRAME: u8 = 0x01;
/// Flag: the packet is the first of a video frame.
pub const FLAG_FRAME_START: u8 = 0x02;
/// Flag bits 2-3: the simulcast layer plus one (0: not simulcast). Each layer has its own probe
/// sequence, so the receiver restarts its loss accounting when the layer changes.
pub const FLAG_LAYER_MASK: u8 = 0x0C;
/// Shift of the layer bits in the flags.
const FLAG_LAYER_SHIFT: u8 = 2;
/// Highest simulcast layer index a probe can carry.
pub const MAX_LAYER: u8 = 2;

/// The measurement data embedded in a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Per-track packet sequence, starting at 0 and incremented by one per packet sent
    /// (independent of the RTP sequence number, which a server may rewrite).
    pub seq: u32,
    /// Send time, microseconds since the Unix epoch.
    pub send_us: u64,
    /// [`FLAG_KEYFRAME`] and [`FLAG_FRAME_START`] bits.
    pub flags: u8,
}

impl Probe {
    /// Writes the trailer into the last [`PROBE_LEN`] bytes of `payload`.
    ///
    /// Does nothing if `payload` is shorter than [`PROBE_LEN`].
    pub fn write_trailer(&self, payload: &mut [u8]) {
        let Some(start) = payload.len().checked_sub(PROBE_LEN) else {
            return;
        };
        let t = &mut payload[start..];
        t[0..2].copy_from_slice(&MAGIC);
        t[2] = VERSION;
        t[3] = self.flags;
        t[4..8].copy_from_slice(&self.seq.to_be_bytes());
        t[8..16].copy_from_slice(&self.send_us.to_be_bytes());
    }

    /// The simulcast layer index (0 = lowest) the packet belongs to, if the sender marked one.
    pub fn layer(&self) -> Option<u8> {
        match (self.flags & FLAG_LAYER_MASK) >> FLAG_LAYER_SHIFT {
            0 => None,
            n => Some(n - 1),
        }
    }

    /// Marks the probe as belonging to simulcast layer `layer` (clamped to [`MAX_LAYER`]).
    pub fn with_layer(mut self, layer: u8) -> Probe {
        let bits = (layer.min(MAX_LAYER) + 1) << FLAG_LAYER_SHIFT;
        self.flags = (self.flags & !FLAG_LAYER_MASK) | bits;
        self
    }

    /// Rewrites the layer bits of the trailer at the end of `payload`; does nothing if the
    /// payload carries no trailer.
    pub fn set_layer_in(payload: &mut [u8], layer: u8) {
        if let Some(p) = Probe::parse_trailer(payload) {
            p.with_layer(layer).write_trailer(payload);
        }
    }

    /// Reads the trailer at the end of `payload`, or `None` if there is none (too short, wrong
    /// magic or version).
    pub fn parse_trailer(payload: &[u8]) -> Option<Probe> {
        let start = payload.len().checked_sub(PROBE_LEN)?;
        let t = &payload[start..];
        if t[0..2] != MAGIC || t[2] != VERSION {
            return None;
        }
        let seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
        let mut us = [0u8; 8];
        us.copy_from_slice(&t[8..16]);
        Some(Probe {
            seq,
            send_us: u64::from_be_bytes(us),
            flags: t[3],
        })
    }
}

/// Microseconds since the Unix epoch, the clock shared by senders and receivers on one host
/// (0 if the system clock is before 1970).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer_round_trips_at_the_end_of_a_payload() {
        let mut payload = vec![0xAAu8; 40];
        let p = Probe {
            seq: 0xDEAD_BEEF,
            send_us: 1_700_000_000_123_456,
            flags: FLAG_KEYFRAME | FLAG_FRAME_START,
        };
        p.write_trailer(&mut payload);
        assert_eq!(&payload[..24], &[0xAAu8; 24][..], "head untouched");
        assert_eq!(Probe::parse_trailer(&payload), Some(p));
    }

    #[test]
    fn payload_without_trailer_is_rejected() {
        assert_eq!(Probe::parse_trailer(&[0u8; 40]), None);
        assert_eq!(Probe::parse_trailer(&[0u8; 3]), None);
        let mut short = [0u8; 10];
        Probe {
            seq: 1,
            send_us: 2,
            flags: 0,
        }
        .write_trailer(&mut short);
        assert_eq!(short, [0u8; 10], "too short: left alone");
    }

    #[test]
    fn layer_bits_round_trip_and_keep_other_flags() {
        let mut payload = vec![0u8; 30];
        Probe {
            seq: 5,
            send_us: 6,
            flags: FLAG_KEYFRAME,
        }
        .write_trailer(&mut payload);
        assert_eq!(Probe::parse_trailer(&payload).unwrap().layer(), None);
        Probe::set_layer_in(&mut payload, 2);
        let p = Probe::parse_trailer(&payload).unwrap();
        assert_eq!(p.layer(), Some(2));
        assert_eq!(p.flags & FLAG_KEYFRAME, FLAG_KEYFRAME);
        assert_eq!(p.with_layer(9).layer(), Some(MAX_LAYER));
        assert_eq!(p.with_layer(0).layer(), Some(0));
    }

    #[test]
    fn clock_is_after_2020() {
        assert!(now_us() > 1_577_836_800_000_000);
    }
}
