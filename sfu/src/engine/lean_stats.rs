//! What a subscriber reports about one lean stream (docs/ARCHITECTURE.md, "Lean video path",
//! receiver reports): the sender reports the engine sent (to match the report blocks' LSR), and
//! the round-trip time, loss and jitter read from the subscriber's report blocks
//! ([`super::lean_rtcp`]). str0m computed these for its own streams (`MediaEgressStats`); the
//! lean streams are unknown to it.
//!
//! Pure: no sockets, no clocks (times are passed in).

use std::time::{Duration, Instant};

/// Sender reports remembered per stream (one a second: a report block may echo one up to this
/// many seconds old).
const SR_HISTORY: usize = 4;

/// Longest round trip believed (a larger one is a report block about something else).
const MAX_RTT: Duration = Duration::from_secs(60);

/// One report block (RFC 3550 §6.4.1) about a stream the subscriber receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ReportBlock {
    /// The stream reported on (ours).
    pub(super) ssrc: u32,
    /// Fraction of packets lost since the previous report, in 1/256.
    pub(super) fraction_lost: u8,
    /// Packets lost since the start (24-bit signed: duplicates can make it negative).
    pub(super) cumulative_lost: i32,
    /// Interarrival jitter, in RTP timestamp units.
    pub(super) jitter: u32,
    /// The middle 32 bits of the NTP time of the last sender report received (0: none).
    pub(super) lsr: u32,
    /// Delay since that sender report, in 1/65536 s.
    pub(super) dlsr: u32,
}

impl ReportBlock {
    /// Reads one 24-byte report block.
    pub(super) fn read(b: &[u8; 24]) -> ReportBlock {
        let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        // The 24-bit field, sign-extended.
        let lost = i32::from_be_bytes([b[5], b[6], b[7], 0]) >> 8;
        ReportBlock {
            ssrc: be(0),
            fraction_lost: b[4],
            cumulative_lost: lost,
            jitter: be(12),
            lsr: be(16),
            dlsr: be(20),
        }
    }
}

/// The round trip by RFC 3550 §6.4.1: arrival `a` minus `lsr` minus `dlsr`, all in the middle
/// 32 bits of NTP time (1/65536 s), wrapping. `None` without a sender report (`lsr` 0), when
/// the difference is negative, or implausibly large.
pub(super) fn rtt(a: u32, lsr: u32, dlsr: u32) -> Option<Duration> {
    if lsr == 0 {
        return None;
    }
    let since = a.wrapping_sub(lsr);
    let units = since.checked_sub(dlsr)?;
    let d = Duration::from_micros(u64::from(units) * 1_000_000 / 65_536);
    (d <= MAX_RTT).then_some(d)
}

/// Duration in 1/65536 s (NTP middle-32 units), saturating.
fn units(d: Duration) -> u32 {
    u32::try_from(d.as_micros() * 65_536 / 1_000_000).unwrap_or(u32::MAX)
}

/// One sample of a stream's receiver-side figures, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Sample {
    /// Round trip, if the last block allowed one.
    pub(super) rtt: Option<Duration>,
    /// Fraction lost (0..1).
    pub(super) loss: f32,
    /// Jitter in RTP timestamp units.
    pub(super) jitter: u32,
}

/// One lean stream's sender reports sent and what the subscriber reported back.
#[derive(Debug, Clone, Default)]
pub(super) struct StreamReports {
    /// The last sender reports sent: (NTP middle 32 bits, when), a ring.
    srs: [Option<(u32, Instant)>; SR_HISTORY],
    next: usize,
    /// The last round trip computed.
    pub(super) rtt: Option<Duration>,
    /// The last report block's fraction lost (1/256), cumulative loss and jitter.
    pub(super) fraction_lost: u8,
    pub(super) cumulative_lost: i32,
    pub(super) jitter: u32,
    /// Report blocks read.
    pub(super) blocks: u64,
    /// When the metrics last took a sample, and whether it had a round trip.
    sampled: Option<(Instant, bool)>,
}

impl StreamReports {
    /// A sender report whose NTP middle 32 bits are `ntp` was sent at `at`.
    pub(super) fn sent(&mut self, ntp: u32, at: Instant) {
        self.srs[self.next] = Some((ntp, at));
        self.next = (self.next + 1) % SR_HISTORY;
    }

    /// Reads report block `b` arriving at `now`. Returns how many more packets it says were
    /// lost than the previous one did (for a lost-packets counter; never negative).
    pub(super) fn received(&mut self, b: &ReportBlock, now: Instant) -> u64 {
        // The arrival in NTP middle-32 units, from the matching report's send time and the
        // monotonic clock (a wall clock step between the two does not skew the round trip).
        let sr = self.srs.iter().flatten().find(|(ntp, _)| *ntp == b.lsr);
        if let Some(&(ntp, at)) = sr {
            let a = ntp.wrapping_add(units(now.saturating_duration_since(at)));
            if let Some(r) = rtt(a, b.lsr, b.dlsr) {
                self.rtt = Some(r);
            }
        }
        let more = if self.blocks == 0 {
            b.cumulative_lost.max(0)
        } else {
            b.cumulative_lost
                .saturating_sub(self.cumulative_lost)
                .max(0)
        };
        self.fraction_lost = b.fraction_lost;
        self.cumulative_lost = b.cumulative_lost;
        self.jitter = b.jitter;
        self.blocks += 1;
        more.unsigned_abs().into()
    }

    /// A sample for the metrics at `now`: at most one per `every` (str0m's stats interval,
    /// so both paths weigh a stream alike), and only after a report block; except that the
    /// first round trip is sampled at once (a stream's first report blocks may come before
    /// they can echo a sender report).
    pub(super) fn sample(&mut self, now: Instant, every: Duration) -> Option<Sample> {
        if self.blocks == 0 {
            return None;
        }
        if let Some((t, had_rtt)) = self.sampled {
            let first_rtt = !had_rtt && self.rtt.is_some();
            if now.saturating_duration_since(t) < every && !first_rtt {
                return None;
            }
        }
        self.sampled = Some((now, self.rtt.is_some()));
        Some(Sample {
            rtt: self.rtt,
            loss: f32::from(self.fraction_lost) / 256.0,
            jitter: self.jitter,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(ssrc: u32, fraction: u8, lost: i32, lsr: u32, dlsr: u32) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[..4].copy_from_slice(&ssrc.to_be_bytes());
        b[4] = fraction;
        b[5..8].copy_from_slice(&lost.to_be_bytes()[1..]);
        b[8..12].copy_from_slice(&1234u32.to_be_bytes());
        b[12..16].copy_from_slice(&90u32.to_be_bytes());
        b[16..20].copy_from_slice(&lsr.to_be_bytes());
        b[20..24].copy_from_slice(&dlsr.to_be_bytes());
        b
    }

    #[test]
    fn a_report_block_reads_its_fields_and_signed_loss() {
        let b = ReportBlock::read(&block(7, 64, 300, 0xaabb_ccdd, 0x8000));
        assert_eq!(
            b,
            ReportBlock {
                ssrc: 7,
                fraction_lost: 64,
                cumulative_lost: 300,
                jitter: 90,
                lsr: 0xaabb_ccdd,
                dlsr: 0x8000,
            }
        );
        assert_eq!(
            ReportBlock::read(&block(7, 0, -2, 0, 0)).cumulative_lost,
            -2
        );
        assert_eq!(
            ReportBlock::read(&block(7, 0, 0x7f_ffff, 0, 0)).cumulative_lost,
            0x7f_ffff
        );
    }

    #[test]
    fn the_round_trip_is_arrival_minus_lsr_minus_dlsr() {
        // 1.5 s after the SR arrived back, of which the subscriber held it 1 s: 0.5 s.
        let r = rtt(0x0001_8000 + 100, 100, 0x0001_0000).unwrap();
        assert_eq!(r, Duration::from_millis(500));
        assert_eq!(rtt(500, 0, 10), None, "no sender report received yet");
        assert_eq!(rtt(100, 90, 20), None, "negative");
        assert_eq!(rtt(100, 90, 10), Some(Duration::ZERO));
        assert_eq!(
            rtt(0x00ff_0000, 1, 0),
            None,
            "over a minute is not a round trip"
        );
    }

    #[test]
    fn the_round_trip_survives_the_ntp_middle_wrapping() {
        // LSR just before the 32-bit wrap (every 65536 s), the block arrives after it.
        let lsr = 0xffff_f000;
        let a = 0x0000_1000;
        assert_eq!(
            rtt(a, lsr, 0x1000),
            Some(Duration::from_micros(0x1000 * 1_000_000 / 65_536))
        );
    }

    #[test]
    fn reports_match_the_sender_report_they_echo() {
        let t0 = Instant::now();
        let mut s = StreamReports::default();
        assert_eq!(s.sample(t0, Duration::ZERO), None, "nothing reported yet");
        s.sent(0xffff_ff00, t0);
        s.sent(0x0000_ff00, t0 + Duration::from_secs(1));
        // The block echoes the first SR (across the wrap), held 200 ms, back 300 ms after it.
        let b = ReportBlock::read(&block(7, 0, 0, 0xffff_ff00, 65_536 / 5));
        s.received(&b, t0 + Duration::from_millis(300));
        let r = s.rtt.unwrap();
        assert!(
            r >= Duration::from_millis(99) && r <= Duration::from_millis(101),
            "{r:?}"
        );
        // An LSR we never sent gives no round trip (the last one stays).
        let b = ReportBlock::read(&block(7, 0, 0, 0x1234_5678, 0));
        s.received(&b, t0 + Duration::from_secs(5));
        assert_eq!(s.rtt, Some(r));
        // Only the last SR_HISTORY reports are remembered.
        for i in 0..SR_HISTORY as u32 {
            s.sent(0x10_0000 + i, t0);
        }
        let b = ReportBlock::read(&block(7, 0, 0, 0x0000_ff00, 0));
        s.received(&b, t0 + Duration::from_secs(9));
        assert_eq!(s.rtt, Some(r), "forgotten");
    }

    #[test]
    fn loss_counts_only_increases_and_samples_are_spaced() {
        let t0 = Instant::now();
        let mut s = StreamReports::default();
        assert_eq!(s.received(&ReportBlock::read(&block(7, 0, 5, 0, 0)), t0), 5);
        assert_eq!(s.received(&ReportBlock::read(&block(7, 0, 8, 0, 0)), t0), 3);
        assert_eq!(
            s.received(&ReportBlock::read(&block(7, 0, 6, 0, 0)), t0),
            0,
            "duplicates lowered it"
        );
        assert_eq!(
            s.received(&ReportBlock::read(&block(7, 128, 9, 0, 0)), t0),
            3
        );
        assert_eq!((s.cumulative_lost, s.blocks), (9, 4));
        let every = Duration::from_secs(5);
        let first = s.sample(t0, every).unwrap();
        assert_eq!(first.loss, 0.5);
        assert_eq!(first.jitter, 90);
        assert_eq!(first.rtt, None);
        assert_eq!(s.sample(t0 + Duration::from_secs(4), every), None);
        assert!(s.sample(t0 + every, every).is_some());
        // The first round trip is sampled at once, later ones at the interval again.
        s.sent(77, t0);
        s.received(
            &ReportBlock::read(&block(7, 0, 9, 77, 0)),
            t0 + every + Duration::from_millis(30),
        );
        let now = t0 + every + Duration::from_secs(1);
        let r = s.sample(now, every).expect("first round trip");
        assert!(r.rtt.is_some());
        assert_eq!(s.sample(now + Duration::from_secs(1), every), None);
    }
}
