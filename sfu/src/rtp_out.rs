//! RTP headers and RTCP sender reports built by the engine itself, for the lean path
//! (docs/ARCHITECTURE.md, "Lean audio path", "Lean video path"): plain bytes, before SRTP
//! protection.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// RTCP packet type of a sender report (RFC 3550 §6.4.1).
pub(crate) const RTCP_SR: u8 = 200;
/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
/// Longest mid str0m writes and parses (RFC 8285 one-byte elements carry 1..=16 bytes).
const MAX_MID: usize = 16;

/// The longest header [`write_rtp_header_to`] writes: 12 fixed bytes, the extension block's
/// 4, the mid element (1 + 16), the audio level and the orientation (2 each), 3 of padding.
pub(crate) const MAX_HEADER: usize = 12 + 4 + (1 + MAX_MID) + 2 + 2 + 3;

/// The header extensions of one outgoing stream (audio, or video: no audio level), as the
/// subscriber negotiated them (RFC 8285 one-byte form, ids 1..=14). Inline (the mid too), so
/// writing a header reads nothing outside the stream's own state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct AudioExts {
    /// `urn:ietf:params:rtp-hdrext:sdes:mid` id, and the m-line's mid.
    pub(crate) mid: Option<(u8, MidBytes)>,
    /// `urn:ietf:params:rtp-hdrext:ssrc-audio-level` id (RFC 6464).
    pub(crate) audio_level: Option<u8>,
    /// `urn:3gpp:video-orientation` id (coordination of video orientation, 3GPP TS 26.114).
    pub(crate) video_orientation: Option<u8>,
}

/// A mid of 1..=16 bytes, inline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct MidBytes {
    len: u8,
    bytes: [u8; MAX_MID],
}

impl MidBytes {
    /// `mid`, if it has 1..=16 bytes.
    fn new(mid: &str) -> Option<MidBytes> {
        let m = mid.as_bytes();
        if m.is_empty() || m.len() > MAX_MID {
            return None;
        }
        let mut bytes = [0; MAX_MID];
        bytes[..m.len()].copy_from_slice(m);
        Some(MidBytes {
            len: m.len() as u8,
            bytes,
        })
    }

    /// The mid's bytes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl AudioExts {
    /// The extensions with ids in the one-byte range only (others are left out), and a mid
    /// no longer than one element carries.
    pub(crate) fn new(mid: Option<(u8, &str)>, audio_level: Option<u8>) -> AudioExts {
        let one_byte = |id: u8| (1..=14).contains(&id);
        AudioExts {
            mid: mid
                .filter(|(id, _)| one_byte(*id))
                .and_then(|(id, m)| Some((id, MidBytes::new(m)?))),
            audio_level: audio_level.filter(|id| one_byte(*id)),
            video_orientation: None,
        }
    }

    /// These extensions and the video orientation with id `id` (if in the one-byte range).
    pub(crate) fn with_video_orientation(self, id: Option<u8>) -> AudioExts {
        AudioExts {
            video_orientation: id.filter(|id| (1..=14).contains(id)),
            ..self
        }
    }
}

/// The fields of one outgoing RTP packet's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RtpFields {
    /// Payload type (0..=127).
    pub(crate) pt: u8,
    /// Marker bit.
    pub(crate) marker: bool,
    /// Sequence number (the low 16 bits of the extended one).
    pub(crate) seq: u16,
    /// RTP timestamp.
    pub(crate) ts: u32,
    /// Sender SSRC.
    pub(crate) ssrc: u32,
    /// Audio level (-127..=0 dBov) and voice activity; written only with both, as str0m does.
    pub(crate) level: Option<(i8, bool)>,
    /// Video orientation (the rotation bits str0m reads: 0..=3).
    pub(crate) orientation: Option<u8>,
}

/// Writes an RTP header (V=2, no padding, no CSRC, one-byte header extensions: the mid and the
/// audio level when negotiated) into `buf`, replacing its contents.
pub(crate) fn write_rtp_header(buf: &mut Vec<u8>, f: &RtpFields, exts: &AudioExts) {
    let mut h = [0; MAX_HEADER];
    let n = write_rtp_header_to(&mut h, f, exts);
    buf.clear();
    buf.extend_from_slice(&h[..n]);
}

/// [`write_rtp_header`] straight into `out` (the datagram being built: one copy of the
/// header), returning its length, at most [`MAX_HEADER`].
///
/// # Panics
///
/// When `out` is shorter than [`MAX_HEADER`] (callers size it so).
#[inline]
pub(crate) fn write_rtp_header_to(out: &mut [u8], f: &RtpFields, exts: &AudioExts) -> usize {
    let out = &mut out[..MAX_HEADER];
    out[0] = 0x80;
    out[1] = (f.pt & 0x7f) | if f.marker { 0x80 } else { 0 };
    out[2..4].copy_from_slice(&f.seq.to_be_bytes());
    out[4..8].copy_from_slice(&f.ts.to_be_bytes());
    out[8..12].copy_from_slice(&f.ssrc.to_be_bytes());
    let level = exts.audio_level.zip(f.level);
    let orientation = exts.video_orientation.zip(f.orientation);
    if exts.mid.is_none() && level.is_none() && orientation.is_none() {
        return 12;
    }
    out[0] |= 0x10;
    out[12..14].copy_from_slice(&[0xbe, 0xde]);
    let mut at = 16;
    if let Some((id, mid)) = &exts.mid {
        let mid = mid.as_bytes();
        // `MidBytes` holds 1..=16 bytes: the length field is len - 1.
        out[at] = (id << 4) | (mid.len() as u8 - 1);
        out[at + 1..at + 1 + mid.len()].copy_from_slice(mid);
        at += 1 + mid.len();
    }
    if let Some((id, (level, voice))) = level {
        out[at] = id << 4;
        out[at + 1] = if voice { 0x80 } else { 0 } | (level.unsigned_abs() & 0x7f);
        at += 2;
    }
    if let Some((id, rotation)) = orientation {
        out[at] = id << 4;
        out[at + 1] = rotation & 3;
        at += 2;
    }
    while !(at - 16).is_multiple_of(4) {
        out[at] = 0;
        at += 1;
    }
    let words = ((at - 16) / 4) as u16;
    out[14..16].copy_from_slice(&words.to_be_bytes());
    at
}

/// What one sender report says about a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SenderInfo {
    /// The stream's SSRC.
    pub(crate) ssrc: u32,
    /// Wall clock time of the report.
    pub(crate) wall: SystemTime,
    /// The RTP timestamp matching `wall`.
    pub(crate) rtp_ts: u32,
    /// Packets sent so far (wraps).
    pub(crate) packets: u32,
    /// Payload octets sent so far (wraps).
    pub(crate) octets: u32,
}

/// Writes an RTCP sender report without report blocks (RFC 3550 §6.4.1; sent alone, as
/// RFC 5506 reduced-size RTCP, which the subscriber's `a=rtcp-rsize` allows) into `buf`,
/// replacing its contents.
pub(crate) fn write_sender_report(buf: &mut Vec<u8>, sr: &SenderInfo) {
    buf.clear();
    // V=2, P=0, RC=0; length in 32-bit words minus one: 7 words.
    buf.extend_from_slice(&[0x80, RTCP_SR, 0, 6]);
    buf.extend_from_slice(&sr.ssrc.to_be_bytes());
    let (secs, frac) = ntp(sr.wall);
    buf.extend_from_slice(&secs.to_be_bytes());
    buf.extend_from_slice(&frac.to_be_bytes());
    buf.extend_from_slice(&sr.rtp_ts.to_be_bytes());
    buf.extend_from_slice(&sr.packets.to_be_bytes());
    buf.extend_from_slice(&sr.octets.to_be_bytes());
}

/// The middle 32 bits of the NTP time `t` as [`write_sender_report`] writes it (the low 16 bits
/// of the seconds, the high 16 of the fraction: what a receiver echoes as LSR, RFC 3550 §6.4.1).
pub(crate) fn ntp_middle(t: SystemTime) -> u32 {
    let (secs, frac) = ntp(t);
    (secs << 16) | (frac >> 16)
}

/// NTP seconds (wrapping in 2036, as NTP era 0 does) and fraction of `t`.
fn ntp(t: SystemTime) -> (u32, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = (d.as_secs() + NTP_UNIX_OFFSET) as u32;
    let frac = ((u64::from(d.subsec_nanos()) << 32) / 1_000_000_000) as u32;
    (secs, frac)
}

/// The RTP timestamp `elapsed` after a packet stamped `ts`, at `clock_rate` Hz.
pub(crate) fn extrapolate_ts(ts: u32, elapsed: Duration, clock_rate: u32) -> u32 {
    let ticks = elapsed.as_micros().saturating_mul(u128::from(clock_rate)) / 1_000_000;
    ts.wrapping_add(ticks as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> RtpFields {
        RtpFields {
            pt: 111,
            marker: true,
            seq: 0xabcd,
            ts: 0x0102_0304,
            ssrc: 0xdead_beef,
            level: Some((-37, true)),
            orientation: None,
        }
    }

    #[test]
    fn video_carries_the_mid_and_its_orientation() {
        let exts = AudioExts::new(Some((4, "1")), None).with_video_orientation(Some(3));
        let mut buf = Vec::new();
        let f = RtpFields {
            level: None,
            orientation: Some(1),
            ..fields()
        };
        write_rtp_header(&mut buf, &f, &exts);
        assert_eq!(&buf[12..], &[0xbe, 0xde, 0, 1, 0x40, b'1', 0x30, 1]);
        let exts = AudioExts::new(None, None).with_video_orientation(Some(15));
        write_rtp_header(&mut buf, &f, &exts);
        assert_eq!(buf.len(), 12, "id 15 is not a one-byte id");
    }

    #[test]
    fn a_plain_header_is_twelve_bytes() {
        let mut buf = vec![9; 40];
        write_rtp_header(&mut buf, &fields(), &AudioExts::default());
        assert_eq!(
            buf,
            [
                0x80,
                0x80 | 111,
                0xab,
                0xcd,
                1,
                2,
                3,
                4,
                0xde,
                0xad,
                0xbe,
                0xef
            ]
        );
    }

    #[test]
    fn extensions_are_written_in_the_one_byte_form() {
        let exts = AudioExts::new(Some((4, "12")), Some(1));
        let mut buf = Vec::new();
        write_rtp_header(&mut buf, &fields(), &exts);
        assert_eq!(buf[0], 0x90, "the X bit");
        // 0xBEDE, two words: mid (id 4, 2 bytes), audio level (id 1: V bit | 37), padding.
        assert_eq!(
            &buf[12..],
            &[0xbe, 0xde, 0, 2, 0x41, b'1', b'2', 0x10, 0x80 | 37, 0, 0, 0]
        );
    }

    #[test]
    fn out_of_range_ids_and_long_mids_are_left_out() {
        let exts = AudioExts::new(Some((15, "1")), Some(0));
        assert_eq!(exts, AudioExts::default());
        let exts = AudioExts::new(Some((3, "01234567890123456")), None);
        assert_eq!(exts.mid, None);
        let mut buf = Vec::new();
        let no_level = RtpFields {
            level: None,
            ..fields()
        };
        write_rtp_header(&mut buf, &no_level, &AudioExts::new(None, Some(2)));
        assert_eq!(buf.len(), 12, "no level value: no extension block");
    }

    #[test]
    fn the_longest_header_fits_and_matches_the_vec_form() {
        let exts =
            AudioExts::new(Some((4, "0123456789abcdef")), Some(1)).with_video_orientation(Some(3));
        let f = RtpFields {
            orientation: Some(2),
            ..fields()
        };
        let mut slot = [0xee; MAX_HEADER + 8];
        let n = write_rtp_header_to(&mut slot, &f, &exts);
        assert_eq!(
            n, MAX_HEADER,
            "12 + 4 + 17 + 2 + 2, then 3 bytes of padding"
        );
        assert_eq!(slot[n..], [0xee; 8], "nothing written past the header");
        let mut buf = vec![1, 2, 3];
        write_rtp_header(&mut buf, &f, &exts);
        assert_eq!(buf, slot[..n]);
        assert_eq!(&buf[16..18], &[0x4f, b'0']);
    }

    #[test]
    fn a_sender_report_has_the_rfc_3550_layout() {
        let wall = UNIX_EPOCH + Duration::from_millis(1_700_000_000_500);
        let mut buf = Vec::new();
        write_sender_report(
            &mut buf,
            &SenderInfo {
                ssrc: 7,
                wall,
                rtp_ts: 48_000,
                packets: 50,
                octets: 4000,
            },
        );
        assert_eq!(buf.len(), 28);
        assert_eq!(&buf[..4], &[0x80, 200, 0, 6]);
        assert_eq!(&buf[4..8], &7u32.to_be_bytes());
        let secs = u32::from_be_bytes(buf[8..12].try_into().unwrap());
        assert_eq!(u64::from(secs), 1_700_000_000 + NTP_UNIX_OFFSET);
        let frac = u32::from_be_bytes(buf[12..16].try_into().unwrap());
        assert_eq!(frac, 1 << 31, "half a second");
        assert_eq!(&buf[16..20], &48_000u32.to_be_bytes());
        assert_eq!(&buf[20..24], &50u32.to_be_bytes());
        assert_eq!(&buf[24..28], &4000u32.to_be_bytes());
        // What a receiver echoes as LSR: the report's middle 32 bits.
        assert_eq!(&buf[10..14], &ntp_middle(wall).to_be_bytes());
    }

    #[test]
    fn timestamps_extrapolate_at_the_clock_rate() {
        assert_eq!(
            extrapolate_ts(1000, Duration::from_millis(20), 48_000),
            1960
        );
        assert_eq!(
            extrapolate_ts(u32::MAX, Duration::from_millis(1), 48_000),
            47
        );
    }
}
