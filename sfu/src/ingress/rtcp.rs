//! The RTCP the engine would exchange with a lean publisher besides [`super::feedback`]:
//! keyframe requests to it (PLI, RFC 4585 §6.3.1; FIR, RFC 5104 §4.3.1), once str0m no longer
//! knows its streams, and the NTP time of its sender reports (for the report blocks' LSR).
//!
//! Pure, and total on input: a malformed compound packet ends the reading, never the server.

/// RTCP packet types: sender report (RFC 3550 §6.4.1), payload-specific feedback (RFC 4585).
const SR: u8 = 200;
const PSFB: u8 = 206;
/// PSFB message types: PLI and FIR.
const FMT_PLI: u8 = 1;
const FMT_FIR: u8 = 4;

/// Most sender reports taken from one compound packet (bounded work on a flood).
pub(crate) const MAX_REPORTS: usize = 16;

/// Writes a picture loss indication for `media_ssrc`, appended to `out`.
pub(crate) fn write_pli(sender_ssrc: u32, media_ssrc: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&[0x80 | FMT_PLI, PSFB, 0, 2]);
    out.extend_from_slice(&sender_ssrc.to_be_bytes());
    out.extend_from_slice(&media_ssrc.to_be_bytes());
}

/// Writes a full intra request for `media_ssrc` with command sequence number `seq_nr` (one
/// more for each new request, RFC 5104 §4.3.1.1), appended to `out`.
pub(crate) fn write_fir(sender_ssrc: u32, media_ssrc: u32, seq_nr: u8, out: &mut Vec<u8>) {
    out.extend_from_slice(&[0x80 | FMT_FIR, PSFB, 0, 4]);
    out.extend_from_slice(&sender_ssrc.to_be_bytes());
    // The media source field is unused in a FIR (the FCI names it).
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&media_ssrc.to_be_bytes());
    out.extend_from_slice(&[seq_nr, 0, 0, 0]);
}

/// Reads the (SSRC, 64-bit NTP time) of every sender report in a plain compound RTCP packet
/// into `out` (cleared first), at most [`MAX_REPORTS`]. Stops at the first malformed packet.
pub(crate) fn sender_reports(buf: &[u8], out: &mut Vec<(u32, u64)>) {
    out.clear();
    let mut at = 0;
    while at + 4 <= buf.len() && out.len() < MAX_REPORTS {
        if buf[at] >> 6 != 2 {
            return;
        }
        let words = usize::from(u16::from_be_bytes([buf[at + 2], buf[at + 3]]));
        let end = at + 4 + 4 * words;
        let Some(body) = buf.get(at + 4..end) else {
            return;
        };
        if buf[at + 1] == SR {
            if let Some(b) = body.get(..12) {
                let ssrc = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                let ntp = u64::from_be_bytes([b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11]]);
                out.push((ssrc, ntp));
            }
        }
        at = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::rtp::rtcp::Rtcp;

    #[test]
    fn pli_and_fir_round_trip_through_str0m() {
        let mut pli = Vec::new();
        write_pli(1, 0xfeed, &mut pli);
        let Ok(Rtcp::Pli(p)) = Rtcp::try_from(&pli[..]) else {
            panic!("a PLI");
        };
        assert_eq!((*p.sender_ssrc, *p.ssrc), (1, 0xfeed));
        let mut fir = Vec::new();
        write_fir(1, 0xbeef, 7, &mut fir);
        let Ok(Rtcp::Fir(f)) = Rtcp::try_from(&fir[..]) else {
            panic!("a FIR");
        };
        let e = f.reports.iter().next().expect("one entry");
        assert_eq!((*e.ssrc, e.seq_no), (0xbeef, 7));
    }

    /// A sender report from `ssrc` at NTP time `ntp` with `blocks` empty report blocks.
    fn sr(ssrc: u32, ntp: u64) -> Vec<u8> {
        let mut b = vec![0x80, SR, 0, 6];
        b.extend_from_slice(&ssrc.to_be_bytes());
        b.extend_from_slice(&ntp.to_be_bytes());
        b.extend_from_slice(&[0; 12]); // RTP time, packets, octets
        b
    }

    #[test]
    fn sender_reports_are_read_from_a_compound_packet() {
        let mut buf = sr(5, 0x0102_0304_0506_0708);
        write_pli(9, 9, &mut buf);
        buf.extend_from_slice(&sr(6, 42));
        let mut out = Vec::new();
        sender_reports(&buf, &mut out);
        assert_eq!(out, vec![(5, 0x0102_0304_0506_0708), (6, 42)]);
        // str0m reads the same first packet as a sender report from 5.
        let Ok(Rtcp::SenderReport(s)) = Rtcp::try_from(&buf[..28]) else {
            panic!("a sender report");
        };
        assert_eq!(*s.sender_info.ssrc, 5);
    }

    #[test]
    fn malformed_packets_end_the_reading() {
        let mut buf = sr(5, 1);
        buf.extend_from_slice(&[0x80, SR, 0, 9, 0, 0]); // length past the end
        let mut out = Vec::new();
        sender_reports(&buf, &mut out);
        assert_eq!(out, vec![(5, 1)]);
        sender_reports(&[0x40, SR, 0, 0], &mut out);
        assert!(out.is_empty());
        // A sender report too short for its NTP time is skipped.
        sender_reports(&[0x80, SR, 0, 1, 0, 0, 0, 1], &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_flood_is_capped_and_garbage_never_panics() {
        let mut buf = Vec::new();
        for i in 0..100 {
            buf.extend_from_slice(&sr(i, 0));
        }
        let mut out = Vec::new();
        sender_reports(&buf, &mut out);
        assert_eq!(out.len(), MAX_REPORTS);
        let mut x: u32 = 5;
        for len in 0..500usize {
            let mut g: Vec<u8> = (0..len % 64)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect();
            if let Some(b) = g.first_mut() {
                *b = 0x80;
            }
            sender_reports(&g, &mut out);
            assert!(out.len() <= MAX_REPORTS);
        }
    }
}
