//! What the server sent to the light peers of this process, by kind. Every datagram (or ICE-TCP
//! frame) a light peer receives is classified from its first two bytes, before str0m sees it:
//! STUN, DTLS and RTP/RTCP apart as RFC 7983 demultiplexes them, RTCP apart from RTP by its
//! packet type (RFC 5761), and RTP with the padding bit set (the header is not encrypted by
//! SRTP). Only the server under test sends to the bots, so these count the server's datagrams
//! out: media, RTCP, ICE keepalives, and padding or probing.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// What a received datagram is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramKind {
    /// First byte 0-3: a STUN message (ICE connectivity checks and keepalives).
    Stun,
    /// First byte 20-63: a DTLS record.
    Dtls,
    /// First byte 128-191, packet type not an RTCP one: an (S)RTP packet; `padded` when its
    /// padding bit is set (padding-only packets are how a sender probes bandwidth).
    Rtp {
        /// The RTP header's P bit.
        padded: bool,
    },
    /// First byte 128-191, second byte 192-223 (RTCP packet types 192-223): an (S)RTCP packet.
    Rtcp,
    /// Anything else.
    Other,
}

/// Classifies one datagram from its first two bytes.
pub fn classify(datagram: &[u8]) -> DatagramKind {
    match datagram.first() {
        Some(0..=3) => DatagramKind::Stun,
        Some(20..=63) => DatagramKind::Dtls,
        Some(&b @ 128..=191) => match datagram.get(1) {
            Some(192..=223) => DatagramKind::Rtcp,
            Some(_) => DatagramKind::Rtp {
                padded: b & 0x20 != 0,
            },
            None => DatagramKind::Other,
        },
        _ => DatagramKind::Other,
    }
}

/// Datagrams received by the light peers of this process, by kind (cumulative since start).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DatagramCounts {
    /// Every datagram (or ICE-TCP frame).
    pub total: u64,
    /// STUN.
    pub stun: u64,
    /// DTLS.
    pub dtls: u64,
    /// RTP, padded or not.
    pub rtp: u64,
    /// RTP with the padding bit (included in `rtp`).
    pub rtp_padded: u64,
    /// RTCP.
    pub rtcp: u64,
    /// Anything else.
    pub other: u64,
}

impl DatagramCounts {
    /// The counts between `earlier` and `self`.
    pub fn since(&self, earlier: &DatagramCounts) -> DatagramCounts {
        DatagramCounts {
            total: self.total.saturating_sub(earlier.total),
            stun: self.stun.saturating_sub(earlier.stun),
            dtls: self.dtls.saturating_sub(earlier.dtls),
            rtp: self.rtp.saturating_sub(earlier.rtp),
            rtp_padded: self.rtp_padded.saturating_sub(earlier.rtp_padded),
            rtcp: self.rtcp.saturating_sub(earlier.rtcp),
            other: self.other.saturating_sub(earlier.other),
        }
    }
}

/// [`DatagramCounts`] over a window, per second, with the RTP datagrams that carried no media
/// packet the bots counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct DatagramRates {
    /// RTP datagrams per second.
    pub rtp: f64,
    /// RTP datagrams that did not surface as a received RTP packet (padding-only packets,
    /// probes, RTX the bots dropped, undecryptable ones): RTP datagrams - RTP packets received.
    pub rtp_no_media: f64,
    /// RTP datagrams with the padding bit set.
    pub rtp_padded: f64,
    /// RTCP datagrams per second.
    pub rtcp: f64,
    /// STUN datagrams per second.
    pub stun: f64,
    /// DTLS and anything else per second.
    pub other: f64,
}

impl DatagramCounts {
    /// Rates over `secs`, given the RTP packets the bots received in the same window.
    pub fn rates(&self, secs: f64, rtp_packets_received: u64) -> DatagramRates {
        let secs = secs.max(1e-6);
        let r = |n: u64| n as f64 / secs;
        DatagramRates {
            rtp: r(self.rtp),
            rtp_no_media: r(self.rtp.saturating_sub(rtp_packets_received)),
            rtp_padded: r(self.rtp_padded),
            rtcp: r(self.rtcp),
            stun: r(self.stun),
            other: r(self.dtls + self.other),
        }
    }
}

const TOTAL: usize = 0;
const STUN: usize = 1;
const DTLS: usize = 2;
const RTP: usize = 3;
const RTP_PADDED: usize = 4;
const RTCP: usize = 5;
const OTHER: usize = 6;

/// The process-wide counters, indexed by the constants above.
static COUNTS: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];

/// Counts one received datagram.
pub(crate) fn count(datagram: &[u8]) {
    let bump = |i: usize| COUNTS[i].fetch_add(1, Ordering::Relaxed);
    bump(TOTAL);
    match classify(datagram) {
        DatagramKind::Stun => bump(STUN),
        DatagramKind::Dtls => bump(DTLS),
        DatagramKind::Rtp { padded } => {
            if padded {
                bump(RTP_PADDED);
            }
            bump(RTP)
        }
        DatagramKind::Rtcp => bump(RTCP),
        DatagramKind::Other => bump(OTHER),
    };
}

/// The counts so far (see the module documentation).
pub fn datagram_counts() -> DatagramCounts {
    let get = |i: usize| COUNTS[i].load(Ordering::Relaxed);
    DatagramCounts {
        total: get(TOTAL),
        stun: get(STUN),
        dtls: get(DTLS),
        rtp: get(RTP),
        rtp_padded: get(RTP_PADDED),
        rtcp: get(RTCP),
        other: get(OTHER),
    }
}

/// Datagrams received so far by all light peers of this process, of every kind.
pub fn datagrams_received() -> u64 {
    COUNTS[TOTAL].load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_are_told_apart_by_their_first_bytes() {
        // STUN binding request, DTLS handshake record.
        assert_eq!(classify(&[0x00, 0x01, 0, 0]), DatagramKind::Stun);
        assert_eq!(classify(&[22, 0xfe, 0xfd]), DatagramKind::Dtls);
        // RTP: V=2, no padding, PT 111 (Opus) with and without the marker bit; VP8 PT 96.
        assert_eq!(classify(&[0x80, 111]), DatagramKind::Rtp { padded: false });
        assert_eq!(
            classify(&[0x80, 0x80 | 96]),
            DatagramKind::Rtp { padded: false }
        );
        // RTP with the padding bit: a probe.
        assert_eq!(classify(&[0xA0, 97]), DatagramKind::Rtp { padded: true });
        // RTCP: SR (200), RR (201), transport feedback (205), PLI (206).
        for pt in [200u8, 201, 205, 206] {
            assert_eq!(classify(&[0x81, pt]), DatagramKind::Rtcp, "pt {pt}");
        }
        assert_eq!(classify(&[0x80]), DatagramKind::Other);
        assert_eq!(classify(&[]), DatagramKind::Other);
        assert_eq!(classify(&[64, 0]), DatagramKind::Other);
    }

    #[test]
    fn counts_accumulate_and_subtract() {
        let before = datagram_counts();
        count(&[0x80, 96]);
        count(&[0xA0, 96]);
        count(&[0x81, 201]);
        count(&[0x01, 0x01]);
        let d = datagram_counts().since(&before);
        // Other tests of this process may count too: at least ours.
        assert!(d.total >= 4 && d.rtp >= 2 && d.rtp_padded >= 1 && d.rtcp >= 1 && d.stun >= 1);
        assert!(d.rtp_padded <= d.rtp && d.rtp <= d.total);
        assert_eq!(
            DatagramCounts::default().since(&d),
            DatagramCounts::default()
        );
    }

    #[test]
    fn rates_split_rtp_without_media() {
        let c = DatagramCounts {
            total: 70,
            stun: 4,
            dtls: 2,
            rtp: 60,
            rtp_padded: 6,
            rtcp: 4,
            other: 0,
        };
        let r = c.rates(2.0, 50);
        assert_eq!((r.rtp, r.rtp_no_media, r.rtp_padded), (30.0, 5.0, 3.0));
        assert_eq!((r.rtcp, r.stun, r.other), (2.0, 2.0, 1.0));
        // More packets than datagrams (another process's bots): no negative rate.
        assert_eq!(c.rates(1.0, 100).rtp_no_media, 0.0);
    }
}
