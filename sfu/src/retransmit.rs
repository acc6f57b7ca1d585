//! Retransmission state of the lean video path (docs/ARCHITECTURE.md, "Lean video path"): one
//! cache of recent packets per source track, shared by all its subscribers; per consumer, the
//! map from its outgoing sequence numbers back to the source's, and a retransmit budget.
//!
//! Pure: no sockets, no clocks (times are passed in).

use std::sync::Arc;
use std::time::{Duration, Instant};

/// Packets a source's cache holds (a power of two: the slot is the sequence number's low bits).
/// About 2 s of a 2.5 Mbit/s camera in 1200-byte packets (the age limit cuts at 1 s); the bytes held are bounded by
/// `CACHE_SLOTS` x the largest payload (one MTU), and shared with the packets in flight.
pub(crate) const CACHE_SLOTS: usize = 512;

/// A cached packet older than this is not resent (the subscriber's jitter buffer has moved on).
pub(crate) const CACHE_AGE: Duration = Duration::from_secs(1);

/// One packet of a source, as it arrived.
#[derive(Debug, Clone)]
pub(crate) struct CachedPacket {
    /// The producer's epoch when it arrived (the source's sequence space restarts with a new
    /// SSRC; an epoch names one space).
    pub(crate) epoch: u32,
    /// The source's extended sequence number.
    pub(crate) seq: u64,
    /// The source's RTP timestamp.
    pub(crate) ts: u32,
    /// The source's payload type.
    pub(crate) pt: u8,
    /// Marker bit.
    pub(crate) marker: bool,
    /// When it arrived.
    pub(crate) at: Instant,
    /// The payload (shared with the packet the fan-out forwarded).
    pub(crate) payload: Arc<[u8]>,
}

/// The last [`CACHE_SLOTS`] packets of one source track.
#[derive(Debug, Clone)]
pub(crate) struct RetransmitCache {
    slots: Vec<Option<CachedPacket>>,
}

impl Default for RetransmitCache {
    fn default() -> Self {
        RetransmitCache {
            slots: vec![None; CACHE_SLOTS],
        }
    }
}

impl RetransmitCache {
    /// Keeps `p`, replacing the packet `CACHE_SLOTS` sequence numbers older.
    pub(crate) fn insert(&mut self, p: CachedPacket) {
        let slot = (p.seq % CACHE_SLOTS as u64) as usize;
        self.slots[slot] = Some(p);
    }

    /// The packet `seq` of epoch `epoch`, if held and younger than [`CACHE_AGE`] at `now`.
    pub(crate) fn get(&self, epoch: u32, seq: u64, now: Instant) -> Option<&CachedPacket> {
        let slot = (seq % CACHE_SLOTS as u64) as usize;
        self.slots[slot].as_ref().filter(|p| {
            p.epoch == epoch && p.seq == seq && now.saturating_duration_since(p.at) <= CACHE_AGE
        })
    }

    /// Payload bytes held.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.slots.iter().flatten().map(|p| p.payload.len()).sum()
    }
}

/// Segments a consumer's sequence map keeps (a new one per forwarder break: gate, pause,
/// publisher restart); older ones are forgotten.
const SEGMENTS: usize = 8;

/// One run of packets the forwarder rewrote with constant offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    /// The first outgoing sequence number of the run.
    from: u64,
    /// The last one sent.
    to: u64,
    /// out seq = source seq + `seq_off` (wrapping).
    seq_off: u64,
    /// out ts = source ts + `ts_off` (wrapping).
    ts_off: u32,
    epoch: u32,
}

/// Where a consumer's outgoing packet came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SourceRef {
    /// The producer's epoch.
    pub(crate) epoch: u32,
    /// The source's extended sequence number.
    pub(crate) seq: u64,
    /// The consumer's timestamp offset (out ts = source ts + `ts_off`).
    pub(crate) ts_off: u32,
}

/// A consumer's outgoing sequence numbers mapped back to the source's: the forwarder keeps
/// the offsets constant between breaks, so a few segments cover the cache's reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SeqMap {
    segments: Vec<Segment>,
}

impl SeqMap {
    /// One packet sent: outgoing `out_seq`/`out_ts` from source `seq`/`ts` of `epoch`.
    pub(crate) fn record(&mut self, out_seq: u64, out_ts: u32, seq: u64, ts: u32, epoch: u32) {
        let seq_off = out_seq.wrapping_sub(seq);
        let ts_off = out_ts.wrapping_sub(ts);
        if let Some(last) = self.segments.last_mut() {
            if last.seq_off == seq_off && last.ts_off == ts_off && last.epoch == epoch {
                last.from = last.from.min(out_seq);
                last.to = last.to.max(out_seq);
                return;
            }
        }
        if self.segments.len() == SEGMENTS {
            self.segments.remove(0);
        }
        self.segments.push(Segment {
            from: out_seq,
            to: out_seq,
            seq_off,
            ts_off,
            epoch,
        });
    }

    /// The source packet sent as `out_seq`, if a known run covers it (the newest run wins).
    pub(crate) fn lookup(&self, out_seq: u64) -> Option<SourceRef> {
        let s = self
            .segments
            .iter()
            .rev()
            .find(|s| s.from <= out_seq && out_seq <= s.to)?;
        Some(SourceRef {
            epoch: s.epoch,
            seq: out_seq.wrapping_sub(s.seq_off),
            ts_off: s.ts_off,
        })
    }
}

/// The extended sequence number nearest `max` whose low 16 bits are `seq` and which is not
/// above `max` (a NACK names packets already sent).
pub(crate) fn extend_seq(seq: u16, max: u64) -> Option<u64> {
    let back = (max as u16).wrapping_sub(seq);
    max.checked_sub(u64::from(back))
}

/// Most retransmits a consumer may save up: a burst of NACKs after a loss is served up to this.
const BUDGET_CAP: u32 = 64;

/// Retransmits allowed to one consumer: one per media packet sent, saved up to
/// [`BUDGET_CAP`], so retransmits never exceed the media rate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RetransmitBudget {
    tokens: u32,
}

impl RetransmitBudget {
    /// One media packet was sent.
    pub(crate) fn credit(&mut self) {
        self.tokens = (self.tokens + 1).min(BUDGET_CAP);
    }

    /// Spends one retransmit; false when none is left.
    pub(crate) fn take(&mut self) -> bool {
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// The RTX payload (RFC 4588 §4): the original sequence number, then the original payload.
pub(crate) fn rtx_payload(out: &mut Vec<u8>, osn: u16, payload: &[u8]) {
    out.clear();
    out.extend_from_slice(&osn.to_be_bytes());
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(epoch: u32, seq: u64, at: Instant) -> CachedPacket {
        CachedPacket {
            epoch,
            seq,
            ts: seq as u32 * 3000,
            pt: 96,
            marker: true,
            at,
            payload: Arc::from(vec![seq as u8; 10]),
        }
    }

    #[test]
    fn the_cache_serves_recent_packets_of_the_right_epoch_only() {
        let t0 = Instant::now();
        let mut c = RetransmitCache::default();
        for seq in 1000..1000 + CACHE_SLOTS as u64 + 10 {
            c.insert(packet(1, seq, t0));
        }
        assert!(c.get(1, 1005, t0).is_none(), "overwritten by a newer one");
        let p = c.get(1, 1020, t0).expect("held");
        assert_eq!(p.seq, 1020);
        assert_eq!(&*p.payload, &[1020u64 as u8; 10]);
        assert!(c.get(2, 1020, t0).is_none(), "another epoch");
        assert!(
            c.get(1, 1020, t0 + CACHE_AGE + Duration::from_millis(1))
                .is_none(),
            "too old"
        );
        assert_eq!(c.bytes(), CACHE_SLOTS * 10, "bounded by the slots");
    }

    #[test]
    fn the_seq_map_follows_offset_changes() {
        let mut m = SeqMap::default();
        // Epoch 1: out = src + 100, ts + 5.
        for s in 0..10u64 {
            m.record(s + 100, s as u32 * 10 + 5, s, s as u32 * 10, 1);
        }
        // A break: out continues at 110 from source 500 of epoch 2.
        for s in 500..505u64 {
            m.record(s - 390, 7, s, 0, 2);
        }
        assert_eq!(
            m.lookup(103),
            Some(SourceRef {
                epoch: 1,
                seq: 3,
                ts_off: 5
            })
        );
        assert_eq!(m.lookup(112).map(|r| (r.epoch, r.seq)), Some((2, 502)));
        assert_eq!(m.lookup(99), None, "never sent");
        assert_eq!(m.lookup(115), None, "not sent yet");
        // Only the last SEGMENTS runs are kept.
        for k in 0..SEGMENTS as u64 {
            m.record(1000 + k, 0, k * 7, 0, 3 + k as u32);
        }
        assert_eq!(m.lookup(103), None);
        assert!(m.lookup(1000).is_some());
    }

    #[test]
    fn nacked_numbers_extend_below_the_highest_sent() {
        assert_eq!(extend_seq(10, 10), Some(10));
        assert_eq!(extend_seq(5, 10), Some(5));
        assert_eq!(extend_seq(0xfffe, 0x1_0002), Some(0xfffe));
        assert_eq!(extend_seq(20, 10), None, "would wrap below zero");
        assert_eq!(extend_seq(20, 0x2_0010), Some(0x1_0014));
    }

    #[test]
    fn retransmits_never_exceed_the_media_packets() {
        let mut b = RetransmitBudget::default();
        assert!(!b.take());
        for _ in 0..3 {
            b.credit();
        }
        assert!(b.take() && b.take() && b.take());
        assert!(!b.take());
        for _ in 0..1000 {
            b.credit();
        }
        let n = (0..1000).take_while(|_| b.take()).count();
        assert_eq!(n, BUDGET_CAP as usize);
    }

    #[test]
    fn the_rtx_payload_starts_with_the_original_sequence_number() {
        let mut out = vec![9; 3];
        rtx_payload(&mut out, 0xabcd, &[1, 2, 3]);
        assert_eq!(out, [0xab, 0xcd, 1, 2, 3]);
    }
}
