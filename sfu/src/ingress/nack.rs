//! Generic NACKs (RFC 4585 §6.2.1) for one received video stream: a gap in the sequence
//! numbers is asked for as soon as the packet after it arrives, and asked again every retry
//! interval (the round trip plus a margin) while it is still missing, [`MAX_TRIES`] times at
//! most, then given up. Nothing missing, nothing due: no timer runs on a clean stream.
//!
//! The caller passes the original sequence number of a retransmission (RTX unwrapped): it
//! fills its gap. Pure: no sockets, no clock (every time is passed in).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::twcc::extend;

/// Times one missing packet is asked for before it is given up.
pub(crate) const MAX_TRIES: u8 = 5;

/// Retry interval before a round trip is known.
const DEFAULT_RTT: Duration = Duration::from_millis(100);

/// Added to the round trip before asking again (the sender's own reaction time).
const RETRY_MARGIN: Duration = Duration::from_millis(5);

/// Shortest retry interval (a round trip of ~0 on loopback must not flood NACKs).
const MIN_RETRY: Duration = Duration::from_millis(10);

/// Most sequence numbers tracked as missing: a longer gap is not worth recovering (a keyframe
/// request serves better) and only its newest ones are asked for.
const MAX_MISSING: u64 = 256;

/// Missing packets older than this many sequence numbers behind the newest are given up (the
/// decoder moved on).
const HISTORY: u64 = 1000;

/// RTCP packet type and FMT of a generic NACK (RTPFB, FMT 1).
const RTPFB: u8 = 205;
const FMT_NACK: u8 = 1;

/// One missing packet.
#[derive(Debug, Clone, Copy)]
struct Missing {
    /// When the gap was seen.
    since: Instant,
    /// Times asked for.
    tries: u8,
    /// When last asked for (`None`: not yet).
    asked: Option<Instant>,
}

/// What [`NackTracker::on_packet`] made of an arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NackArrival {
    /// The newest packet so far; `gap` packets before it are now missing.
    Advanced {
        /// Sequence numbers skipped (newly missing, up to [`MAX_MISSING`] of them tracked).
        gap: u64,
    },
    /// Filled a gap (a retransmission, or a reordered packet).
    Recovered,
    /// Neither newest nor missing: a duplicate, or older than what is tracked.
    Stale,
}

/// The missing packets of one stream and when to ask for them.
#[derive(Debug, Default)]
pub(crate) struct NackTracker {
    /// Highest extended sequence number received.
    max: Option<u64>,
    /// Missing extended sequence numbers.
    missing: BTreeMap<u64, Missing>,
    /// The last round trip measured (for the retry interval).
    rtt: Option<Duration>,
    /// Packets given up so far (asked [`MAX_TRIES`] times, or too old).
    given_up: u64,
    /// Packets recovered so far.
    recovered: u64,
}

impl NackTracker {
    /// A tracker that has seen nothing.
    pub(crate) fn new() -> NackTracker {
        NackTracker::default()
    }

    /// Sets the round trip the retry interval follows.
    #[allow(dead_code)] // The tests' (and a future metric's) view.
    pub(crate) fn set_rtt(&mut self, rtt: Duration) {
        self.rtt = Some(rtt);
    }

    /// Packets given up so far.
    #[allow(dead_code)] // The tests' (and a future metric's) view.
    pub(crate) fn given_up(&self) -> u64 {
        self.given_up
    }

    /// Packets recovered so far.
    #[allow(dead_code)] // The tests' (and a future metric's) view.
    pub(crate) fn recovered(&self) -> u64 {
        self.recovered
    }

    /// How many packets are missing now.
    #[allow(dead_code)] // The tests' (and a future metric's) view.
    pub(crate) fn missing(&self) -> usize {
        self.missing.len()
    }

    /// Records the arrival of (original) sequence number `seq` at `now`.
    pub(crate) fn on_packet(&mut self, seq: u16, now: Instant) -> NackArrival {
        let ext = extend(self.max, seq);
        let Some(max) = self.max else {
            self.max = Some(ext);
            return NackArrival::Advanced { gap: 0 };
        };
        if ext <= max {
            return if self.missing.remove(&ext).is_some() {
                self.recovered += 1;
                NackArrival::Recovered
            } else {
                NackArrival::Stale
            };
        }
        let gap = ext - max - 1;
        let from = (max + 1).max(ext.saturating_sub(MAX_MISSING));
        let untracked = from - (max + 1);
        self.given_up += untracked;
        for s in from..ext {
            self.missing.insert(
                s,
                Missing {
                    since: now,
                    tries: 0,
                    asked: None,
                },
            );
        }
        self.max = Some(ext);
        // Too old, or too many: the oldest go.
        let floor = ext.saturating_sub(HISTORY);
        while let Some((&s, _)) = self.missing.first_key_value() {
            if s >= floor && self.missing.len() as u64 <= MAX_MISSING {
                break;
            }
            self.missing.remove(&s);
            self.given_up += 1;
        }
        NackArrival::Advanced { gap }
    }

    /// The retry interval: the round trip plus a margin, [`MIN_RETRY`] at least.
    fn retry(&self) -> Duration {
        (self.rtt.unwrap_or(DEFAULT_RTT) + RETRY_MARGIN).max(MIN_RETRY)
    }

    /// When [`NackTracker::poll`] next has something to do: `None` while nothing is missing.
    pub(crate) fn due(&self) -> Option<Instant> {
        let retry = self.retry();
        let mut soonest: Option<Instant> = None;
        for m in self.missing.values() {
            // Never asked: due when seen (the caller polls right after an arrival, so this is
            // only seen when it did not).
            let at = m.asked.map_or(m.since, |t| t + retry);
            soonest = Some(soonest.map_or(at, |s| s.min(at)));
        }
        soonest
    }

    /// The sequence numbers to ask for now (appended to `out`, oldest first): those never
    /// asked for and those asked a retry interval ago. A packet asked [`MAX_TRIES`] times is
    /// given up once its last retry interval passed.
    pub(crate) fn poll(&mut self, now: Instant, out: &mut Vec<u16>) {
        let retry = self.retry();
        let mut gone = Vec::new();
        for (&seq, m) in self.missing.iter_mut() {
            let ready = m.asked.is_none_or(|t| now >= t + retry);
            if !ready {
                continue;
            }
            if m.tries >= MAX_TRIES {
                gone.push(seq);
                continue;
            }
            m.tries += 1;
            m.asked = Some(now);
            // The low 16 bits are the wire sequence number (truncation intended).
            out.push(seq as u16);
        }
        self.given_up += gone.len() as u64;
        for s in gone {
            self.missing.remove(&s);
        }
    }
}

/// Writes one generic NACK packet asking `media_ssrc` for `seqs` (ascending, as
/// [`NackTracker::poll`] gives them), appended to `out`; nothing when `seqs` is empty. Each
/// FCI entry is a packet id and the bitmask of the 16 after it.
pub(crate) fn write_nack(sender_ssrc: u32, media_ssrc: u32, seqs: &[u16], out: &mut Vec<u8>) {
    let Some(&first) = seqs.first() else {
        return;
    };
    let start = out.len();
    out.extend_from_slice(&[0x80 | FMT_NACK, RTPFB, 0, 0]);
    out.extend_from_slice(&sender_ssrc.to_be_bytes());
    out.extend_from_slice(&media_ssrc.to_be_bytes());
    let (mut pid, mut blp) = (first, 0u16);
    for &s in &seqs[1..] {
        let d = s.wrapping_sub(pid);
        if (1..=16).contains(&d) {
            blp |= 1 << (d - 1);
        } else if d != 0 {
            out.extend_from_slice(&pid.to_be_bytes());
            out.extend_from_slice(&blp.to_be_bytes());
            (pid, blp) = (s, 0);
        }
    }
    out.extend_from_slice(&pid.to_be_bytes());
    out.extend_from_slice(&blp.to_be_bytes());
    let words = (out.len() - start) / 4 - 1;
    // At most 3 + 256 words for what the tracker gives; a longer slice is the caller's
    // mistake and still fits 16 bits up to 65535 entries, beyond which it wraps harmlessly.
    out[start + 2..start + 4].copy_from_slice(&(words as u16).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::rtp::rtcp::Rtcp;

    /// The sequence numbers a NACK packet asks for, read by str0m.
    fn read(buf: &[u8]) -> (u32, Vec<u16>) {
        let Ok(Rtcp::Nack(n)) = Rtcp::try_from(buf) else {
            panic!("not a NACK: {buf:?}");
        };
        let mut seqs = Vec::new();
        for e in n.reports.iter() {
            seqs.push(e.pid);
            for k in 0..16 {
                if e.blp & (1 << k) != 0 {
                    seqs.push(e.pid.wrapping_add(k + 1));
                }
            }
        }
        (*n.ssrc, seqs)
    }

    #[test]
    fn a_gap_is_asked_for_at_once_and_the_nack_round_trips() {
        let t0 = Instant::now();
        let mut n = NackTracker::new();
        for s in 100..110 {
            assert!(matches!(
                n.on_packet(s, t0),
                NackArrival::Advanced { gap: 0 }
            ));
        }
        assert_eq!(n.due(), None);
        assert_eq!(n.on_packet(113, t0), NackArrival::Advanced { gap: 3 });
        let mut out = Vec::new();
        n.poll(t0, &mut out);
        assert_eq!(out, vec![110, 111, 112]);
        let mut buf = Vec::new();
        write_nack(1, 0xabcd, &out, &mut buf);
        assert_eq!(read(&buf), (0xabcd, vec![110, 111, 112]));
        // Asked: nothing more until the retry interval passed.
        out.clear();
        n.poll(t0 + Duration::from_millis(1), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn retries_follow_the_round_trip_then_give_up() {
        let t0 = Instant::now();
        let mut n = NackTracker::new();
        n.set_rtt(Duration::from_millis(40));
        n.on_packet(1, t0);
        n.on_packet(3, t0);
        let mut t = t0;
        let mut asked = 0;
        for _ in 0..20 {
            let mut out = Vec::new();
            n.poll(t, &mut out);
            if out == [2] {
                asked += 1;
            } else {
                assert!(out.is_empty());
            }
            match n.due() {
                Some(d) => {
                    assert_eq!(d, t + Duration::from_millis(45));
                    t = d;
                }
                None => break,
            }
        }
        assert_eq!(asked, usize::from(MAX_TRIES));
        assert_eq!(n.missing(), 0);
        assert_eq!(n.given_up(), 1);
        assert_eq!(n.due(), None);
    }

    #[test]
    fn a_retransmission_fills_its_gap_and_stops_the_timer() {
        let t0 = Instant::now();
        let mut n = NackTracker::new();
        n.on_packet(10, t0);
        n.on_packet(12, t0);
        let mut out = Vec::new();
        n.poll(t0, &mut out);
        assert_eq!(out, vec![11]);
        assert!(n.due().is_some());
        assert_eq!(n.on_packet(11, t0), NackArrival::Recovered);
        assert_eq!(n.recovered(), 1);
        assert_eq!(n.due(), None);
        assert_eq!(n.on_packet(11, t0), NackArrival::Stale);
        assert_eq!(n.on_packet(12, t0), NackArrival::Stale);
    }

    #[test]
    fn gaps_across_the_wrap_are_found() {
        let t0 = Instant::now();
        let mut n = NackTracker::new();
        n.on_packet(65533, t0);
        n.on_packet(1, t0);
        let mut out = Vec::new();
        n.poll(t0, &mut out);
        assert_eq!(out, vec![65534, 65535, 0]);
        let mut buf = Vec::new();
        write_nack(1, 2, &out, &mut buf);
        assert_eq!(read(&buf).1, vec![65534, 65535, 0]);
    }

    #[test]
    fn a_long_gap_tracks_only_its_newest() {
        let t0 = Instant::now();
        let mut n = NackTracker::new();
        n.on_packet(0, t0);
        assert_eq!(n.on_packet(1001, t0), NackArrival::Advanced { gap: 1000 });
        assert_eq!(n.missing() as u64, MAX_MISSING);
        assert_eq!(n.given_up(), 1000 - MAX_MISSING);
        let mut out = Vec::new();
        n.poll(t0, &mut out);
        assert_eq!(out.len() as u64, MAX_MISSING);
        assert_eq!(out[0], (1001 - MAX_MISSING) as u16);
        let mut buf = Vec::new();
        write_nack(1, 2, &out, &mut buf);
        let (_, got) = read(&buf);
        assert_eq!(got, out);
    }

    #[test]
    fn scattered_losses_pack_into_pid_and_bitmask() {
        let seqs = [5u16, 6, 21, 22, 40, 41, 57];
        let mut buf = Vec::new();
        write_nack(1, 2, &seqs, &mut buf);
        // Entries: 5 (with 6 and 21 in its bitmask), 22, 40 (with 41), 57.
        assert_eq!(read(&buf).1, seqs.to_vec());
        assert_eq!(buf.len() % 4, 0);
        let mut empty = Vec::new();
        write_nack(1, 2, &[], &mut empty);
        assert!(empty.is_empty());
    }

    #[test]
    fn any_arrivals_never_panic_and_stay_bounded() {
        let mut n = NackTracker::new();
        let t0 = Instant::now();
        let mut x: u32 = 99;
        let mut out = Vec::new();
        for i in 0..20_000u32 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            n.on_packet((x >> 16) as u16, t0);
            assert!(n.missing() as u64 <= MAX_MISSING);
            if i % 13 == 0 {
                out.clear();
                n.poll(t0 + Duration::from_millis(u64::from(i)), &mut out);
                let mut buf = Vec::new();
                write_nack(1, 2, &out, &mut buf);
            }
        }
    }
}
