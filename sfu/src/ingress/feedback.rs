//! All the receive-side feedback of one publisher peer, as the engine would send it in place
//! of str0m: one transport-wide [`TwccFeedback`] for the peer, and per received stream its
//! [`ReceiveStats`] (receiver report blocks every [`REPORT_INTERVAL`]) and, for video, a
//! [`NackTracker`]. [`PublisherFeedback::poll`] writes one plain compound RTCP packet (a
//! receiver report first, as RFC 3550 §6.1 wants, then NACKs, then transport feedback), to be
//! sealed as SRTCP by the caller.
//!
//! Pure: no sockets, no clock (every time is passed in).

use std::time::{Duration, Instant};

use super::nack::{write_nack, NackArrival, NackTracker};
use super::report::{write_rr, Block, ReceiveStats, MAX_BLOCKS};
use super::twcc::TwccFeedback;

/// Receiver reports are sent this often (while a stream received something).
pub(crate) const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Largest compound packet written (leaves room for the SRTCP trailer in a 1200-byte MTU).
pub(crate) const MAX_RTCP: usize = 1100;

/// One received stream.
#[derive(Debug)]
struct RxStream {
    /// The publisher's SSRC of it.
    ssrc: u32,
    /// Its missing packets (video only).
    nack: Option<NackTracker>,
    /// Its reception statistics.
    stats: ReceiveStats,
}

/// The feedback state of one publisher peer.
#[derive(Debug)]
pub(crate) struct PublisherFeedback {
    /// Our SSRC on the feedback we write.
    sender_ssrc: u32,
    /// Transport-wide feedback, when the extension is negotiated.
    twcc: Option<TwccFeedback>,
    /// The streams received, in the order added.
    streams: Vec<RxStream>,
    /// When the next receiver report is due.
    next_report: Instant,
    /// Scratch: sequence numbers to NACK.
    seqs: Vec<u16>,
    /// Sequence numbers NACKed (retries included) since [`PublisherFeedback::take_nacked`].
    nacked: u64,
}

impl PublisherFeedback {
    /// Feedback written as `sender_ssrc`, with transport-wide feedback when `twcc`; times count
    /// from `zero`.
    pub(crate) fn new(sender_ssrc: u32, twcc: bool, zero: Instant) -> PublisherFeedback {
        PublisherFeedback {
            sender_ssrc,
            twcc: twcc.then(|| TwccFeedback::new(zero)),
            streams: Vec::new(),
            next_report: zero + REPORT_INTERVAL,
            seqs: Vec::new(),
            nacked: 0,
        }
    }

    /// Adds (or restarts) the stream `ssrc` with RTP clock `clock_rate`; `video` streams get
    /// NACKs.
    pub(crate) fn add_stream(&mut self, ssrc: u32, clock_rate: u32, video: bool, zero: Instant) {
        self.streams.retain(|s| s.ssrc != ssrc);
        self.streams.push(RxStream {
            ssrc,
            nack: video.then(NackTracker::new),
            stats: ReceiveStats::new(clock_rate, zero),
        });
    }

    /// Sets the round trip NACK retries follow. Not called by the engine yet: a lean
    /// publisher reports no round trip to us (it receives nothing), so retries keep the
    /// default pace.
    #[allow(dead_code)]
    pub(crate) fn set_rtt(&mut self, rtt: Duration) {
        for n in self.streams.iter_mut().filter_map(|s| s.nack.as_mut()) {
            n.set_rtt(rtt);
        }
    }

    /// An RTP packet arrived at `at`: stream `ssrc`, original sequence number `seq` (the OSN
    /// of a retransmission, `retransmitted`), RTP time `ts`, transport-wide sequence number
    /// `transport_cc`. Returns whether it revealed a gap to NACK: the caller polls at once.
    pub(crate) fn on_rtp(
        &mut self,
        ssrc: u32,
        seq: u16,
        ts: u32,
        transport_cc: Option<u16>,
        at: Instant,
        retransmitted: bool,
    ) -> bool {
        if let (Some(t), Some(seq)) = (self.twcc.as_mut(), transport_cc) {
            t.on_packet(seq, at);
        }
        let Some(s) = self.streams.iter_mut().find(|s| s.ssrc == ssrc) else {
            return false;
        };
        s.stats.on_packet(seq, ts, at, retransmitted);
        match s.nack.as_mut().map(|n| n.on_packet(seq, at)) {
            Some(NackArrival::Advanced { gap }) => gap > 0,
            _ => false,
        }
    }

    /// A sender report about `ssrc` with NTP time `ntp` arrived at `at` (for LSR/DLSR).
    pub(crate) fn on_sender_report(&mut self, ssrc: u32, ntp: u64, at: Instant) {
        if let Some(s) = self.streams.iter_mut().find(|s| s.ssrc == ssrc) {
            s.stats.on_sender_report(ntp, at);
        }
    }

    /// When [`PublisherFeedback::poll`] next has something to write: `None` while nothing
    /// was received (no timer for an idle peer). NACKs are due only while something is
    /// missing, transport feedback only while arrivals are unreported.
    pub(crate) fn due(&self) -> Option<Instant> {
        let report = self
            .streams
            .iter()
            .any(|s| s.stats.has_received())
            .then_some(self.next_report);
        let nacks = self
            .streams
            .iter()
            .filter_map(|s| s.nack.as_ref()?.due())
            .min();
        let twcc = self.twcc.as_ref().and_then(TwccFeedback::due);
        [report, nacks, twcc].into_iter().flatten().min()
    }

    /// The sequence numbers NACKed (retries included) since the last call.
    pub(crate) fn take_nacked(&mut self) -> u64 {
        std::mem::take(&mut self.nacked)
    }

    /// When the next NACK (or retry) is due, if anything is missing: the part of
    /// [`PublisherFeedback::due`] that wants a fine timer (loss recovery).
    pub(crate) fn nack_due(&self) -> Option<Instant> {
        self.streams
            .iter()
            .filter_map(|s| s.nack.as_ref()?.due())
            .min()
    }

    /// Writes what is due at `now` as one compound RTCP packet appended to `out`; returns
    /// whether it wrote one.
    pub(crate) fn poll(&mut self, now: Instant, out: &mut Vec<u8>) -> bool {
        let start = out.len();
        let report = now >= self.next_report;
        let mut blocks: Vec<Block> = Vec::new();
        if report {
            self.next_report = now + REPORT_INTERVAL;
            for s in &mut self.streams {
                if blocks.len() < MAX_BLOCKS {
                    blocks.extend(s.stats.block(s.ssrc, now));
                }
            }
        }
        write_rr(self.sender_ssrc, &blocks, out);
        let mut wrote = !blocks.is_empty();
        for s in &mut self.streams {
            let Some(n) = s.nack.as_mut() else {
                continue;
            };
            self.seqs.clear();
            n.poll(now, &mut self.seqs);
            // At most 256 missing (the tracker's bound): 4 bytes each in the worst case.
            if !self.seqs.is_empty() && out.len() - start + 12 + 4 * self.seqs.len() <= MAX_RTCP {
                write_nack(self.sender_ssrc, s.ssrc, &self.seqs, out);
                self.nacked += self.seqs.len() as u64;
                wrote = true;
            }
        }
        let media = self.streams.first().map_or(0, |s| s.ssrc);
        if let Some(t) = self.twcc.as_mut() {
            if t.due().is_some_and(|d| d <= now) {
                let room = MAX_RTCP.saturating_sub(out.len() - start);
                wrote |= t.write(self.sender_ssrc, media, now, room, out);
            }
        }
        if !wrote {
            out.truncate(start);
        }
        wrote
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::rtp::rtcp::Rtcp;

    const MS: Duration = Duration::from_millis(1);
    const VIDEO: u32 = 0x1111;
    const AUDIO: u32 = 0x2222;

    /// The packets of a compound RTCP packet, read by str0m.
    fn read(mut buf: &[u8]) -> Vec<Rtcp> {
        let mut v = Vec::new();
        while buf.len() >= 4 {
            let len = (usize::from(u16::from_be_bytes([buf[2], buf[3]])) + 1) * 4;
            v.push(Rtcp::try_from(&buf[..len]).expect("str0m reads it"));
            buf = &buf[len..];
        }
        assert!(buf.is_empty());
        v
    }

    fn nacked(pkts: &[Rtcp]) -> Vec<u16> {
        let mut seqs = Vec::new();
        for p in pkts {
            if let Rtcp::Nack(n) = p {
                for e in n.reports.iter() {
                    seqs.push(e.pid);
                    seqs.extend(
                        (0..16)
                            .filter(|k| e.blp & (1 << k) != 0)
                            .map(|k| e.pid + k + 1),
                    );
                }
            }
        }
        seqs
    }

    #[test]
    fn uplink_loss_is_nacked_at_once_and_the_retransmission_ends_it() {
        let t0 = Instant::now();
        let mut fb = PublisherFeedback::new(1, true, t0);
        fb.add_stream(VIDEO, 90_000, true, t0);
        fb.add_stream(AUDIO, 48_000, false, t0);
        let mut twcc = 0u16;
        let mut t = t0;
        let mut send = |fb: &mut PublisherFeedback, ssrc, seq: u16, t: Instant, rtx| {
            twcc += 1;
            fb.on_rtp(ssrc, seq, u32::from(seq) * 3000, Some(twcc), t, rtx)
        };
        for seq in 0u16..10 {
            t += MS * 10;
            assert!(!send(&mut fb, VIDEO, seq, t, false));
            assert!(!send(&mut fb, AUDIO, seq, t, false));
        }
        // 10 and 11 lost on the uplink: 12 reveals the gap.
        t += MS * 30;
        assert!(send(&mut fb, VIDEO, 12, t, false));
        let mut out = Vec::new();
        assert!(fb.poll(t, &mut out));
        let pkts = read(&out);
        assert!(matches!(pkts[0], Rtcp::ReceiverReport(_)));
        assert_eq!(nacked(&pkts), vec![10, 11]);
        assert_eq!(fb.take_nacked(), 2, "two sequence numbers asked for");
        assert_eq!(fb.take_nacked(), 0);
        assert!(pkts.iter().any(|p| matches!(p, Rtcp::Twcc(_))));
        // The retransmissions (original sequence numbers) fill the gap: no NACK is due again.
        t += MS * 5;
        send(&mut fb, VIDEO, 10, t, true);
        send(&mut fb, VIDEO, 11, t, true);
        let (mut seen_nack, mut seen_report) = (false, false);
        while let Some(d) = fb.due() {
            if d > t0 + Duration::from_millis(1500) {
                break;
            }
            let mut out = Vec::new();
            if fb.poll(d.max(t), &mut out) {
                let pkts = read(&out);
                seen_nack |= !nacked(&pkts).is_empty();
                for p in &pkts {
                    if let Rtcp::ReceiverReport(rr) = p {
                        seen_report |= !rr.reports.is_empty();
                        for r in rr.reports.iter() {
                            assert_eq!(r.packets_lost, 0, "recovered: none lost");
                            if *r.ssrc == VIDEO {
                                assert_eq!(r.max_seq, 12);
                            }
                        }
                    }
                }
            }
            t = d.max(t) + MS;
        }
        assert!(!seen_nack, "a recovered gap is not asked for again");
        assert!(seen_report, "a receiver report within the second");
    }

    #[test]
    fn a_clean_stream_needs_no_nack_timer() {
        let t0 = Instant::now();
        let mut fb = PublisherFeedback::new(1, false, t0);
        assert_eq!(fb.due(), None, "nothing received: no timer");
        fb.add_stream(VIDEO, 90_000, true, t0);
        for seq in 0u16..30 {
            assert!(!fb.on_rtp(VIDEO, seq, 0, None, t0 + MS * u32::from(seq), false));
        }
        // Only the receiver report is due.
        assert_eq!(fb.due(), Some(t0 + REPORT_INTERVAL));
        let mut out = Vec::new();
        assert!(!fb.poll(t0 + MS * 40, &mut out));
        assert!(out.is_empty());
        assert!(fb.poll(t0 + REPORT_INTERVAL, &mut out));
        let pkts = read(&out);
        assert_eq!(pkts.len(), 1);
        let Rtcp::ReceiverReport(rr) = &pkts[0] else {
            panic!("a receiver report");
        };
        assert_eq!(rr.reports.len(), 1);
        assert_eq!(rr.reports.iter().next().map(|r| r.max_seq), Some(29));
        assert_eq!(fb.due(), Some(t0 + REPORT_INTERVAL * 2));
    }

    #[test]
    fn an_audio_gap_is_reported_not_nacked() {
        let t0 = Instant::now();
        let mut fb = PublisherFeedback::new(1, false, t0);
        fb.add_stream(AUDIO, 48_000, false, t0);
        fb.on_rtp(AUDIO, 0, 0, None, t0, false);
        assert!(!fb.on_rtp(AUDIO, 5, 4800, None, t0 + MS * 100, false));
        let mut out = Vec::new();
        assert!(fb.poll(t0 + REPORT_INTERVAL, &mut out));
        let pkts = read(&out);
        assert!(nacked(&pkts).is_empty());
        let Rtcp::ReceiverReport(rr) = &pkts[0] else {
            panic!("a receiver report");
        };
        let r = rr.reports.iter().next().expect("one block");
        assert_eq!(r.packets_lost, 4);
        assert_eq!(r.fraction_lost, (4 * 256 / 6) as u8);
    }

    #[test]
    fn transport_feedback_covers_every_stream_of_the_peer() {
        let t0 = Instant::now();
        let mut fb = PublisherFeedback::new(1, true, t0);
        fb.add_stream(VIDEO, 90_000, true, t0);
        fb.add_stream(AUDIO, 48_000, false, t0);
        for i in 0u16..20 {
            let ssrc = if i % 2 == 0 { VIDEO } else { AUDIO };
            fb.on_rtp(ssrc, i / 2, 0, Some(100 + i), t0 + MS * u32::from(i), false);
        }
        let mut out = Vec::new();
        assert!(fb.poll(t0 + MS * 20, &mut out));
        let pkts = read(&out);
        let Some(Rtcp::Twcc(t)) = pkts.iter().find(|p| matches!(p, Rtcp::Twcc(_))) else {
            panic!("transport feedback");
        };
        assert_eq!(t.base_seq, 100);
        assert_eq!(t.status_count, 20);
        assert_eq!(*t.ssrc, VIDEO);
    }
}
