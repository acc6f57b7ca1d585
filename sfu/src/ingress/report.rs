//! Reception statistics of one received stream and its receiver report block (RFC 3550 §6.4.1,
//! Appendix A.3 and A.8): fraction lost since the last report, cumulative lost, extended
//! highest sequence number, interarrival jitter, and LSR/DLSR from the sender's last report.
//!
//! Pure: no sockets, no clock (every time is passed in).

use std::time::{Duration, Instant};

use super::twcc::extend;

/// RTCP packet type of a receiver report (RFC 3550 §6.4.2).
const RR: u8 = 201;

/// Most report blocks one receiver report holds (5-bit count).
pub(crate) const MAX_BLOCKS: usize = 31;

/// The 24-bit signed range of the cumulative number lost.
const LOST_MAX: i64 = 0x7f_ffff;
const LOST_MIN: i64 = -0x80_0000;

/// One report block, as written on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Block {
    /// The stream reported on (the sender's SSRC).
    pub(crate) ssrc: u32,
    /// Fraction lost since the previous report, in 1/256.
    pub(crate) fraction_lost: u8,
    /// Cumulative number lost (24-bit signed, clamped).
    pub(crate) cumulative_lost: i32,
    /// Extended highest sequence number received (cycles << 16 | seq).
    pub(crate) extended_max: u32,
    /// Interarrival jitter, in RTP timestamp units.
    pub(crate) jitter: u32,
    /// Middle 32 bits of the NTP time of the last sender report (0: none).
    pub(crate) lsr: u32,
    /// Delay since that sender report, in 1/65536 s (0: none).
    pub(crate) dlsr: u32,
}

/// What the receiver knows about one stream.
#[derive(Debug)]
pub(crate) struct ReceiveStats {
    /// The stream's RTP clock rate (Hz), for the jitter.
    clock_rate: u32,
    /// Arrival times are counted from here (in RTP units, wrapping).
    zero: Instant,
    /// First and highest extended sequence number received.
    first: Option<u64>,
    max: u64,
    /// Packets received (duplicates included, RFC 3550 A.3).
    received: u64,
    /// `expected` and `received` at the previous report.
    expected_prior: u64,
    received_prior: u64,
    /// Jitter times 16 (RFC 3550 A.8's integer form).
    jitter_q4: u64,
    /// The previous packet's relative transit time, in RTP units.
    transit: Option<u32>,
    /// The last sender report: its NTP middle 32 bits and when it arrived.
    last_sr: Option<(u32, Instant)>,
}

impl ReceiveStats {
    /// Statistics of a stream with RTP clock `clock_rate`, arrivals counted from `zero`.
    pub(crate) fn new(clock_rate: u32, zero: Instant) -> ReceiveStats {
        ReceiveStats {
            clock_rate: clock_rate.max(1),
            zero,
            first: None,
            max: 0,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            jitter_q4: 0,
            transit: None,
            last_sr: None,
        }
    }

    /// Records a packet: (original) sequence number `seq`, RTP timestamp `rtp_time`, arrived at
    /// `at`. A retransmission (`retransmitted`) counts as received but not in the jitter (its
    /// transit time says nothing about the network's).
    pub(crate) fn on_packet(&mut self, seq: u16, rtp_time: u32, at: Instant, retransmitted: bool) {
        let ext = extend(self.first.map(|_| self.max), seq);
        match self.first {
            None => {
                self.first = Some(ext);
                self.max = ext;
            }
            Some(first) => {
                if ext < first {
                    // Older than the first one seen: counts as the new first (reordering at
                    // the start of the stream).
                    self.first = Some(ext);
                }
                self.max = self.max.max(ext);
            }
        }
        self.received += 1;
        if retransmitted {
            return;
        }
        let arrival = self.rtp_units(at);
        let transit = arrival.wrapping_sub(rtp_time);
        if let Some(prev) = self.transit {
            // The difference of two wrapping transits, as a signed distance.
            let d = u64::from((transit.wrapping_sub(prev) as i32).unsigned_abs());
            // J += (|D| - J) / 16, in J * 16 (RFC 3550 A.8).
            self.jitter_q4 = (self.jitter_q4 + d).saturating_sub((self.jitter_q4 + 8) >> 4);
        }
        self.transit = Some(transit);
    }

    /// Records a sender report about this stream with NTP time `ntp` (64-bit), arrived `at`.
    pub(crate) fn on_sender_report(&mut self, ntp: u64, at: Instant) {
        // The middle 32 bits (truncation intended).
        self.last_sr = Some(((ntp >> 16) as u32, at));
    }

    /// Whether a packet was received (a report block says something).
    pub(crate) fn has_received(&self) -> bool {
        self.first.is_some()
    }

    /// The report block about `ssrc` at `now`; starts the next interval for the fraction lost.
    /// `None` before the first packet.
    pub(crate) fn block(&mut self, ssrc: u32, now: Instant) -> Option<Block> {
        let first = self.first?;
        let expected = self.max - first + 1;
        let lost = i64::try_from(expected)
            .unwrap_or(i64::MAX)
            .saturating_sub(i64::try_from(self.received).unwrap_or(i64::MAX))
            .clamp(LOST_MIN, LOST_MAX);
        let expected_interval = expected.saturating_sub(self.expected_prior);
        let received_interval = self.received.saturating_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval.saturating_sub(received_interval);
        let fraction_lost = if expected_interval == 0 || lost_interval == 0 {
            0
        } else {
            // lost_interval <= expected_interval, so the quotient is at most 256; 256 only
            // when nothing arrived, which cannot be (saturated to 255).
            ((lost_interval << 8) / expected_interval).min(255) as u8
        };
        let (lsr, dlsr) = match self.last_sr {
            Some((lsr, at)) => (lsr, to_1_65536(now.saturating_duration_since(at))),
            None => (0, 0),
        };
        Some(Block {
            ssrc,
            fraction_lost,
            // Clamped to 24 bits above.
            cumulative_lost: lost as i32,
            // The low 32 bits: 16 bits of cycles and the sequence number (truncation
            // intended, as RFC 3550 counts cycles modulo 2^16).
            extended_max: self.max as u32,
            // J * 16 / 16, at most u64::MAX / 16: saturate into 32 bits.
            jitter: u32::try_from(self.jitter_q4 >> 4).unwrap_or(u32::MAX),
            lsr,
            dlsr,
        })
    }

    /// `at` in RTP units since `zero` (wrapping, as RTP timestamps do).
    fn rtp_units(&self, at: Instant) -> u32 {
        let ns = at.saturating_duration_since(self.zero).as_nanos();
        // Wrapping to 32 bits is intended: only differences count.
        (ns * u128::from(self.clock_rate) / 1_000_000_000) as u32
    }
}

/// A duration in 1/65536 s, saturated to 32 bits.
fn to_1_65536(d: Duration) -> u32 {
    u32::try_from(d.as_micros() * 65536 / 1_000_000).unwrap_or(u32::MAX)
}

/// Writes a receiver report from `sender_ssrc` with `blocks` (at most [`MAX_BLOCKS`] of them,
/// the rest ignored), appended to `out`.
pub(crate) fn write_rr(sender_ssrc: u32, blocks: &[Block], out: &mut Vec<u8>) {
    let blocks = &blocks[..blocks.len().min(MAX_BLOCKS)];
    // At most 31 blocks: the count fits 5 bits and the length 16.
    let count = blocks.len() as u8;
    let words = (1 + 6 * blocks.len()) as u16;
    out.extend_from_slice(&[0x80 | count, RR]);
    out.extend_from_slice(&words.to_be_bytes());
    out.extend_from_slice(&sender_ssrc.to_be_bytes());
    for b in blocks {
        out.extend_from_slice(&b.ssrc.to_be_bytes());
        out.push(b.fraction_lost);
        out.extend_from_slice(&b.cumulative_lost.to_be_bytes()[1..]);
        out.extend_from_slice(&b.extended_max.to_be_bytes());
        out.extend_from_slice(&b.jitter.to_be_bytes());
        out.extend_from_slice(&b.lsr.to_be_bytes());
        out.extend_from_slice(&b.dlsr.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::rtp::rtcp::Rtcp;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn loss_figures_follow_the_intervals() {
        let t0 = Instant::now();
        let mut s = ReceiveStats::new(90_000, t0);
        assert!(s.block(1, t0).is_none());
        // 100 packets, 10 lost.
        for seq in 0u16..100 {
            if seq % 10 != 5 {
                s.on_packet(seq, u32::from(seq) * 3000, t0 + MS * u32::from(seq), false);
            }
        }
        let b = s.block(7, t0).expect("received");
        assert_eq!(b.ssrc, 7);
        assert_eq!(b.cumulative_lost, 10);
        assert_eq!(b.fraction_lost, (10 * 256 / 100) as u8);
        assert_eq!(b.extended_max, 99);
        // Next interval: 50 more, none lost; a retransmission of an old one makes the
        // cumulative lost 9.
        for seq in 100u16..150 {
            s.on_packet(seq, u32::from(seq) * 3000, t0 + MS * u32::from(seq), false);
        }
        s.on_packet(5, 15_000, t0 + MS * 151, true);
        let b = s.block(7, t0).expect("received");
        assert_eq!(b.fraction_lost, 0);
        assert_eq!(b.cumulative_lost, 9);
        assert_eq!(b.extended_max, 149);
        // Nothing new: fraction 0.
        assert_eq!(s.block(7, t0).expect("received").fraction_lost, 0);
    }

    #[test]
    fn the_extended_maximum_counts_cycles() {
        let t0 = Instant::now();
        let mut s = ReceiveStats::new(48_000, t0);
        for i in 0u32..20 {
            let seq = (65530 + i) as u16;
            s.on_packet(seq, i * 960, t0 + MS * (20 * i), false);
        }
        let b = s.block(1, t0).expect("received");
        assert_eq!(b.extended_max, (1 << 16) | 13);
        assert_eq!(b.cumulative_lost, 0);
    }

    #[test]
    fn jitter_is_zero_on_a_steady_stream_and_grows_with_variation() {
        let t0 = Instant::now();
        let mut s = ReceiveStats::new(90_000, t0);
        for i in 0u32..50 {
            // 33 ms apart on both clocks (2970 RTP units = 33 ms at 90 kHz).
            s.on_packet(i as u16, 1_000_000 + i * 2970, t0 + MS * (33 * i), false);
        }
        assert_eq!(s.block(1, t0).expect("received").jitter, 0);
        let mut j = ReceiveStats::new(90_000, t0);
        for i in 0u32..200 {
            // Arrivals alternately 10 ms early and late: |D| = 20 ms = 1800 units each time;
            // J converges to 1800.
            let wobble = if i % 2 == 0 { 0 } else { 20 };
            j.on_packet(i as u16, i * 2970, t0 + MS * (33 * i + wobble), false);
        }
        let jitter = j.block(1, t0).expect("received").jitter;
        assert!((1750..=1800).contains(&jitter), "jitter {jitter}");
    }

    #[test]
    fn lsr_and_dlsr_echo_the_last_sender_report() {
        let t0 = Instant::now();
        let mut s = ReceiveStats::new(90_000, t0);
        s.on_packet(1, 0, t0, false);
        assert_eq!(s.block(1, t0).map(|b| (b.lsr, b.dlsr)), Some((0, 0)));
        let ntp: u64 = 0x1234_5678_9abc_def0;
        s.on_sender_report(ntp, t0);
        let b = s
            .block(1, t0 + Duration::from_millis(500))
            .expect("received");
        assert_eq!(b.lsr, 0x5678_9abc);
        assert_eq!(b.dlsr, 32768);
    }

    #[test]
    fn the_report_round_trips_through_str0m() {
        let blocks = [
            Block {
                ssrc: 11,
                fraction_lost: 25,
                cumulative_lost: 10,
                extended_max: 0x1_0005,
                jitter: 300,
                lsr: 0xdead_beef,
                dlsr: 4096,
            },
            Block {
                ssrc: 12,
                fraction_lost: 0,
                cumulative_lost: -2,
                extended_max: 7,
                jitter: 0,
                lsr: 0,
                dlsr: 0,
            },
        ];
        let mut out = Vec::new();
        write_rr(99, &blocks, &mut out);
        let Ok(Rtcp::ReceiverReport(rr)) = Rtcp::try_from(&out[..]) else {
            panic!("not a receiver report");
        };
        assert_eq!(*rr.sender_ssrc, 99);
        let got: Vec<_> = rr.reports.iter().collect();
        assert_eq!(got.len(), 2);
        assert_eq!(*got[0].ssrc, 11);
        assert_eq!(got[0].fraction_lost, 25);
        assert_eq!(got[0].packets_lost, 10);
        assert_eq!(got[0].max_seq, 0x1_0005);
        assert_eq!(got[0].jitter, 300);
        assert_eq!(got[0].last_sr_time, 0xdead_beef);
        assert_eq!(got[0].last_sr_delay, 4096);
        assert_eq!(*got[1].ssrc, 12);
        // 24-bit two's complement of -2.
        assert_eq!(got[1].packets_lost, 0xff_fffe);
    }

    #[test]
    fn any_arrivals_never_panic() {
        let t0 = Instant::now();
        let mut s = ReceiveStats::new(90_000, t0);
        let mut x: u32 = 7;
        for i in 0..10_000u32 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            s.on_packet((x >> 16) as u16, x, t0 + MS * (x % 100_000), i % 7 == 0);
            if i % 50 == 0 {
                let b = s.block(1, t0).expect("received");
                assert!(i64::from(b.cumulative_lost) <= LOST_MAX);
            }
        }
    }
}
