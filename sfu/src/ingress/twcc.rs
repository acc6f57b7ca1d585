//! Transport-wide congestion control feedback for one publisher (draft-holmer-rmcat-transport-
//! wide-cc-extensions-01 §3.1): which transport-wide sequence numbers arrived and when, written
//! as RTCP transport feedback (RTPFB, FMT 15) every [`INTERVAL`] while something is unreported.
//!
//! The transport-wide sequence is shared by all of a publisher's RTP streams, so one
//! [`TwccFeedback`] serves the whole publisher peer. Pure: no sockets, no clock (every time is
//! passed in), any input sequence is taken without panicking.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Feedback is sent at most this often while arrivals are unreported (str0m's own interval).
pub(crate) const INTERVAL: Duration = Duration::from_millis(50);

/// Most arrivals kept unreported: a sequence number more than this far past the oldest
/// unreported one drops the unreported ones (a sender restarting its sequence, or a flood).
const WINDOW: u64 = 4096;

/// The unit of the reference time: 64 ms, in 250 µs ticks.
const REFERENCE_TICKS: i64 = 256;

/// RTCP packet type and FMT of transport-wide feedback (RTPFB, RFC 4585 §6.1; FMT 15).
const RTPFB: u8 = 205;
const FMT_TWCC: u8 = 15;

/// Fixed part of one feedback packet: RTCP header, sender and media SSRC, base sequence
/// number, status count, reference time and feedback count.
const FIXED: usize = 20;

/// Status symbols (§3.1.1).
const NOT_RECEIVED: u8 = 0;
const SMALL: u8 = 1;
const LARGE: u8 = 2;

/// Longest run a run-length chunk holds (13 bits).
const MAX_RUN: usize = 0x1fff;

/// The arrivals of one publisher's transport-wide sequence numbers, not yet reported.
#[derive(Debug)]
pub(crate) struct TwccFeedback {
    /// Times are counted from here (the reference time's zero).
    zero: Instant,
    /// Extended sequence number of `arrivals[0]`, once a packet arrived.
    base: Option<u64>,
    /// Arrival of each sequence number from `base` on (`None`: not (yet) received). Ends with a
    /// received one whenever it is not empty.
    arrivals: VecDeque<Option<Instant>>,
    /// Highest extended sequence number seen (to extend the next 16-bit one).
    max: Option<u64>,
    /// Counter of feedback packets written (8 bits, wrapping).
    count: u8,
    /// When the last feedback packet was written.
    last_sent: Option<Instant>,
}

/// What [`TwccFeedback::on_packet`] did with an arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TwccArrival {
    /// Recorded for the next feedback.
    Recorded,
    /// Already reported (or older than the window): not reported again.
    Late,
    /// Recorded before: the first arrival is kept.
    Duplicate,
}

impl TwccFeedback {
    /// Feedback whose reference times count from `zero`.
    pub(crate) fn new(zero: Instant) -> TwccFeedback {
        TwccFeedback {
            zero,
            base: None,
            arrivals: VecDeque::new(),
            max: None,
            count: 0,
            last_sent: None,
        }
    }

    /// Records that transport-wide sequence number `seq` arrived at `at`.
    pub(crate) fn on_packet(&mut self, seq: u16, at: Instant) -> TwccArrival {
        let ext = extend(self.max, seq);
        self.max = Some(self.max.map_or(ext, |m| m.max(ext)));
        let base = *self.base.get_or_insert(ext);
        if ext < base {
            return TwccArrival::Late;
        }
        let mut index = ext - base;
        if index >= WINDOW {
            // Too far ahead: start over at this packet (the older unreported ones are dropped).
            self.arrivals.clear();
            self.base = Some(ext);
            index = 0;
        }
        // `index < WINDOW`, so it fits a usize.
        let index = index as usize;
        if index >= self.arrivals.len() {
            self.arrivals.resize(index + 1, None);
        }
        match &mut self.arrivals[index] {
            Some(_) => TwccArrival::Duplicate,
            slot => {
                *slot = Some(at);
                TwccArrival::Recorded
            }
        }
    }

    /// Whether some arrival is not reported yet.
    pub(crate) fn has_unreported(&self) -> bool {
        !self.arrivals.is_empty()
    }

    /// When the next feedback is due: `None` while nothing is unreported.
    pub(crate) fn due(&self) -> Option<Instant> {
        if !self.has_unreported() {
            return None;
        }
        Some(match self.last_sent {
            Some(t) => t + INTERVAL,
            None => self.zero,
        })
    }

    /// Writes one feedback packet (appended to `out`, at most `max_len` bytes, at least
    /// [`FIXED`] + 8) about the unreported arrivals, oldest first, and forgets those it
    /// reported. Returns whether it wrote one (not when nothing is unreported or `max_len` is
    /// too small). Call again while [`TwccFeedback::has_unreported`] for the rest when one
    /// packet did not hold them all.
    pub(crate) fn write(
        &mut self,
        sender_ssrc: u32,
        media_ssrc: u32,
        now: Instant,
        max_len: usize,
        out: &mut Vec<u8>,
    ) -> bool {
        let Some(base) = self.base else {
            return false;
        };
        let Some(first) = self.arrivals.iter().flatten().next().copied() else {
            return false;
        };
        if max_len < FIXED + 8 {
            return false;
        }
        let reference = (self.ticks(first) / REFERENCE_TICKS) & 0x00ff_ffff;
        let mut prev = reference * REFERENCE_TICKS;

        // Statuses and deltas, as many as fit. Chunks cost at most: one run-length chunk per
        // [`MAX_RUN`] of a leading gap of 14 or more, then one per 7 statuses (every chunk
        // [`write_chunks`] writes but the last holds 7 at least).
        let lead = self.arrivals.iter().take_while(|a| a.is_none()).count();
        let lead = if lead >= 14 { lead } else { 0 };
        let mut symbols: Vec<u8> = Vec::new();
        let mut deltas: Vec<u8> = Vec::new();
        for arrival in &self.arrivals {
            if symbols.len() == usize::from(u16::MAX) {
                break;
            }
            let (symbol, delta) = match arrival {
                None => (NOT_RECEIVED, None),
                Some(at) => {
                    let t = self.ticks(*at);
                    let d = t - prev;
                    if (0..=255).contains(&d) {
                        (SMALL, Some(d))
                    } else if (i64::from(i16::MIN)..=i64::from(i16::MAX)).contains(&d) {
                        (LARGE, Some(d))
                    } else {
                        // Not expressible here: it starts the next packet.
                        break;
                    }
                }
            };
            let delta_len = usize::from(symbol);
            let n = symbols.len() + 1;
            let chunk_bytes =
                (n.min(lead).div_ceil(MAX_RUN) + n.saturating_sub(lead).div_ceil(7)) * 2;
            if FIXED + chunk_bytes + deltas.len() + delta_len + 3 > max_len {
                break;
            }
            symbols.push(symbol);
            if let Some(d) = delta {
                prev += d;
                match symbol {
                    // In 0..=255 (checked above).
                    SMALL => deltas.push(d as u8),
                    // In i16's range (checked above).
                    _ => deltas.extend_from_slice(&(d as i16).to_be_bytes()),
                }
            }
        }
        // Trailing statuses not received are left for later (the arrivals always end with a
        // received one, so there is one at least).
        while symbols.last() == Some(&NOT_RECEIVED) {
            symbols.pop();
        }
        if symbols.is_empty() {
            return false;
        }

        let start = out.len();
        out.extend_from_slice(&[0x80 | FMT_TWCC, RTPFB, 0, 0]);
        out.extend_from_slice(&sender_ssrc.to_be_bytes());
        out.extend_from_slice(&media_ssrc.to_be_bytes());
        // The low 16 bits of the extended base (truncation intended).
        out.extend_from_slice(&(base as u16).to_be_bytes());
        // At most u16::MAX symbols (the loop above stops there).
        out.extend_from_slice(&(symbols.len() as u16).to_be_bytes());
        // 24 bits (masked above).
        out.extend_from_slice(&(reference as u32).to_be_bytes()[1..]);
        out.push(self.count);
        write_chunks(&symbols, out);
        out.extend_from_slice(&deltas);
        while !(out.len() - start).is_multiple_of(4) {
            out.push(0);
        }
        let words = (out.len() - start) / 4 - 1;
        // At most `max_len` / 4 words, and a datagram is far below 2^18 bytes.
        out[start + 2..start + 4].copy_from_slice(&(words as u16).to_be_bytes());

        self.count = self.count.wrapping_add(1);
        self.last_sent = Some(now);
        let reported = symbols.len();
        self.arrivals.drain(..reported);
        // Reported statuses are never reported again; the ones after them stay.
        self.base = Some(base + reported as u64);
        true
    }

    /// `at` in 250 µs ticks since `zero` (0 before it).
    fn ticks(&self, at: Instant) -> i64 {
        let us = at.saturating_duration_since(self.zero).as_micros();
        i64::try_from(us / 250).unwrap_or(i64::MAX / 2)
    }
}

/// Extends a 16-bit sequence number to the one nearest `max` (RFC 3550 A.1's cycles).
pub(crate) fn extend(max: Option<u64>, seq: u16) -> u64 {
    let Some(max) = max else {
        return u64::from(seq);
    };
    let cycle = max & !0xffff;
    let candidates = [
        cycle.checked_sub(0x1_0000),
        Some(cycle),
        cycle.checked_add(0x1_0000),
    ];
    candidates
        .into_iter()
        .flatten()
        .map(|c| c | u64::from(seq))
        .min_by_key(|&e| e.abs_diff(max))
        .unwrap_or(u64::from(seq))
}

/// Packet status chunks (§3.1.3, §3.1.4) for `symbols`: a run-length chunk for 14 or more of
/// one symbol, else a one-bit vector of 14 when none of them is a large delta, else a two-bit
/// vector of 7 (the last one padded with "not received", beyond the status count).
fn write_chunks(symbols: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < symbols.len() {
        let s = symbols[i];
        let run = symbols[i..]
            .iter()
            .take_while(|&&x| x == s)
            .take(MAX_RUN)
            .count();
        let chunk: u16 = if run >= 14 {
            i += run;
            // `run` <= 0x1fff and `s` <= 2.
            (u16::from(s) << 13) | run as u16
        } else if symbols.len() - i >= 14 && symbols[i..i + 14].iter().all(|&x| x != LARGE) {
            let mut v = 0x8000;
            for (k, &x) in symbols[i..i + 14].iter().enumerate() {
                v |= u16::from(x) << (13 - k);
            }
            i += 14;
            v
        } else {
            let mut v = 0xc000;
            for (k, &x) in symbols[i..].iter().take(7).enumerate() {
                v |= u16::from(x) << (12 - 2 * k);
            }
            i += 7;
            v
        };
        out.extend_from_slice(&chunk.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::rtp::rtcp::Rtcp;

    /// Parses `buf` with str0m and lists (extended seq, arrival) as str0m reads them.
    fn read(buf: &[u8], zero: Instant, extend_from: u64) -> Vec<(u64, Option<Instant>)> {
        let Ok(Rtcp::Twcc(t)) = Rtcp::try_from(buf) else {
            panic!("not a TWCC packet: {buf:?}");
        };
        t.into_iter(zero, extend_from.into())
            .map(|(seq, _, at)| (*seq, at))
            .collect()
    }

    fn close(a: Instant, b: Instant) -> bool {
        a.max(b) - a.min(b) < Duration::from_micros(250)
    }

    #[test]
    fn feedback_round_trips_through_str0m() {
        let zero = Instant::now();
        let mut fb = TwccFeedback::new(zero);
        let mut sent = Vec::new();
        // 40 packets 1 ms apart, 3 and 17..=20 lost, one 100 ms late (large delta), one
        // reordered back in time (negative delta).
        let mut t = zero + Duration::from_millis(1000);
        for seq in 0u16..40 {
            if seq == 3 || (17..=20).contains(&seq) {
                continue;
            }
            t += if seq == 30 {
                Duration::from_millis(100)
            } else {
                Duration::from_millis(1)
            };
            let at = if seq == 35 {
                t - Duration::from_millis(5)
            } else {
                t
            };
            assert_eq!(fb.on_packet(seq, at), TwccArrival::Recorded);
            sent.push((u64::from(seq), at));
        }
        let mut out = Vec::new();
        assert!(fb.write(1, 2, t, 1200, &mut out));
        assert_eq!(out.len() % 4, 0);
        assert!(!fb.has_unreported());
        let got = read(&out, zero, 0);
        assert_eq!(got.len(), 40);
        for (seq, at) in got {
            match sent.iter().find(|(s, _)| *s == seq) {
                Some((_, want)) => assert!(close(at.expect("received"), *want), "seq {seq}"),
                None => assert_eq!(at, None, "seq {seq} was lost"),
            }
        }
    }

    #[test]
    fn long_runs_and_wraparound_round_trip() {
        let zero = Instant::now();
        let mut fb = TwccFeedback::new(zero);
        let mut t = zero;
        let mut sent = Vec::new();
        // 100 packets across the 16-bit wrap, then a gap of 50, then 30 more.
        for i in 0u64..180 {
            if (100..150).contains(&i) {
                continue;
            }
            t += Duration::from_micros(500);
            let seq = 65500 + i;
            fb.on_packet(seq as u16, t);
            sent.push((seq, t));
        }
        let mut out = Vec::new();
        assert!(fb.write(7, 8, t, 1200, &mut out));
        let got = read(&out, zero, 65500);
        assert_eq!(got.len(), 180);
        assert_eq!(got[0].0, 65500);
        for (seq, at) in got {
            match sent.iter().find(|(s, _)| *s == seq) {
                Some((_, want)) => assert!(close(at.expect("received"), *want)),
                None => assert_eq!(at, None),
            }
        }
    }

    #[test]
    fn a_small_packet_reports_part_and_the_rest_follows() {
        let zero = Instant::now();
        let mut fb = TwccFeedback::new(zero);
        let mut t = zero;
        for seq in 0u16..300 {
            t += Duration::from_millis(2);
            fb.on_packet(seq, t);
        }
        let mut seen = Vec::new();
        let mut counts = Vec::new();
        while fb.has_unreported() {
            let mut out = Vec::new();
            assert!(fb.write(1, 2, t, 100, &mut out));
            assert!(out.len() <= 100);
            counts.push(out[19]);
            seen.extend(read(&out, zero, seen.last().map_or(0, |l: &(u64, _)| l.0)));
        }
        assert!(counts.len() > 1);
        assert_eq!(counts, (0..counts.len() as u8).collect::<Vec<_>>());
        let seqs: Vec<u64> = seen.iter().map(|s| s.0).collect();
        assert_eq!(seqs, (0..300).collect::<Vec<_>>());
        assert!(seen.iter().all(|s| s.1.is_some()));
    }

    #[test]
    fn late_and_duplicate_arrivals_are_not_reported_twice() {
        let zero = Instant::now();
        let mut fb = TwccFeedback::new(zero);
        fb.on_packet(10, zero);
        fb.on_packet(12, zero);
        assert_eq!(fb.on_packet(12, zero), TwccArrival::Duplicate);
        let mut out = Vec::new();
        assert!(fb.write(1, 2, zero, 1200, &mut out));
        assert!(!fb.has_unreported());
        assert_eq!(fb.on_packet(11, zero), TwccArrival::Late);
        assert_eq!(fb.on_packet(9, zero), TwccArrival::Late);
        assert!(!fb.has_unreported());
        assert_eq!(fb.due(), None);
    }

    #[test]
    fn feedback_is_due_an_interval_after_the_last_only_while_unreported() {
        let zero = Instant::now();
        let mut fb = TwccFeedback::new(zero);
        assert_eq!(fb.due(), None);
        fb.on_packet(1, zero);
        assert_eq!(fb.due(), Some(zero));
        let now = zero + Duration::from_millis(3);
        let mut out = Vec::new();
        assert!(fb.write(1, 2, now, 1200, &mut out));
        assert_eq!(fb.due(), None);
        fb.on_packet(2, now);
        assert_eq!(fb.due(), Some(now + INTERVAL));
    }

    #[test]
    fn a_jump_past_the_window_starts_over() {
        let zero = Instant::now();
        let mut fb = TwccFeedback::new(zero);
        fb.on_packet(0, zero);
        fb.on_packet(5000, zero + Duration::from_millis(1));
        let mut out = Vec::new();
        assert!(fb.write(1, 2, zero, 1200, &mut out));
        let got = read(&out, zero, 5000);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, 5000);
    }

    #[test]
    fn a_gap_too_long_for_one_delta_splits_the_report() {
        let zero = Instant::now();
        let mut fb = TwccFeedback::new(zero);
        let t0 = zero + Duration::from_secs(1);
        fb.on_packet(0, t0);
        // 20 s later: more than an i16 of 250 µs ticks (8.19 s).
        let t1 = t0 + Duration::from_secs(20);
        fb.on_packet(1, t1);
        let mut a = Vec::new();
        assert!(fb.write(1, 2, t1, 1200, &mut a));
        assert!(fb.has_unreported());
        let mut b = Vec::new();
        assert!(fb.write(1, 2, t1, 1200, &mut b));
        let ra = read(&a, zero, 0);
        let rb = read(&b, zero, 0);
        assert_eq!(ra.len(), 1);
        assert!(close(ra[0].1.expect("received"), t0));
        assert_eq!(rb.len(), 1);
        assert_eq!(rb[0].0, 1);
        assert!(close(rb[0].1.expect("received"), t1));
    }

    #[test]
    fn a_long_leading_gap_fits_a_small_packet() {
        let zero = Instant::now();
        let mut fb = TwccFeedback::new(zero);
        fb.on_packet(0, zero);
        let mut out = Vec::new();
        assert!(fb.write(1, 2, zero, 1200, &mut out));
        // 1..=3000 lost, 3001 arrives: the gap is a run-length chunk, not 3000 statuses'
        // worth of vectors, so even the smallest packet holds it and the arrival.
        let at = zero + Duration::from_millis(10);
        fb.on_packet(3001, at);
        out.clear();
        assert!(fb.write(1, 2, at, FIXED + 8, &mut out));
        assert!(!fb.has_unreported());
        let got = read(&out, zero, 0);
        assert_eq!(got.len(), 3001);
        assert_eq!(got[0].0, 1);
        assert!(got[..3000].iter().all(|g| g.1.is_none()));
        assert_eq!(got[3000].0, 3001);
        assert!(close(got[3000].1.expect("received"), at));
    }

    #[test]
    fn extension_picks_the_nearest_cycle() {
        assert_eq!(extend(None, 7), 7);
        assert_eq!(extend(Some(65535), 0), 65536);
        assert_eq!(extend(Some(65536), 65535), 65535);
        assert_eq!(extend(Some(10), 65535), 65535);
        assert_eq!(extend(Some(0x2_0005), 3), 0x2_0003);
    }

    #[test]
    fn any_arrivals_never_panic() {
        let zero = Instant::now();
        let mut fb = TwccFeedback::new(zero);
        let mut x: u32 = 12345;
        let mut out = Vec::new();
        for round in 0..5000u32 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let at = zero + Duration::from_micros(u64::from(x % 20_000_000));
            fb.on_packet((x >> 8) as u16, at);
            if round % 37 == 0 {
                out.clear();
                let len = 28 + (x as usize % 1200);
                if fb.write(1, 2, at, len, &mut out) {
                    assert!(out.len() <= len);
                    assert!(Rtcp::try_from(&out[..]).is_ok());
                }
            }
        }
    }
}
