//! Reading an opened (decrypted) RTP packet of a publisher: the fixed header (RFC 3550 §5.1),
//! the header extensions the fan-out and the feedback need (RFC 8285, one- and two-byte forms,
//! by the ids the peer negotiated), the payload without padding, and the original sequence
//! number of a retransmission (RFC 4588 §4). str0m's own header parser is not public.
//!
//! Pure, and total: any bytes give a packet or a [`RtpParseError`], never a panic.

use str0m::rtp::{Extension, ExtensionMap, VideoOrientation};

/// Why a datagram is not a readable RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RtpParseError {
    /// Shorter than its own header says.
    #[error("RTP packet shorter than its header")]
    TooShort,
    /// Not RTP version 2.
    #[error("not RTP version 2")]
    Version,
    /// The padding count is 0 or longer than the payload.
    #[error("bad RTP padding")]
    Padding,
}

/// The ids of the header extensions read here, as one peer negotiated them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ExtIds {
    /// Transport-wide sequence number.
    pub(crate) transport_cc: Option<u8>,
    /// Audio level (RFC 6464).
    pub(crate) audio_level: Option<u8>,
    /// Coordination of video orientation.
    pub(crate) video_orientation: Option<u8>,
    /// RTP stream id (simulcast layers).
    pub(crate) rid: Option<u8>,
    /// Repaired RTP stream id (RTX of a simulcast layer).
    pub(crate) repaired_rid: Option<u8>,
}

impl ExtIds {
    /// The ids `map` gives these extensions.
    pub(crate) fn from_map(map: &ExtensionMap) -> ExtIds {
        ExtIds {
            transport_cc: map.id_of(Extension::TransportSequenceNumber),
            audio_level: map.id_of(Extension::AudioLevel),
            video_orientation: map.id_of(Extension::VideoOrientation),
            rid: map.id_of(Extension::RtpStreamId),
            repaired_rid: map.id_of(Extension::RepairedRtpStreamId),
        }
    }
}

/// One RTP packet, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RtpRead<'a> {
    /// Sender's SSRC.
    pub(crate) ssrc: u32,
    /// Sequence number (of this stream: for RTX, the retransmission's own).
    pub(crate) seq: u16,
    /// RTP timestamp.
    pub(crate) ts: u32,
    /// Payload type.
    pub(crate) pt: u8,
    /// Marker bit.
    pub(crate) marker: bool,
    /// Transport-wide sequence number, when the extension is negotiated and present.
    pub(crate) transport_cc: Option<u16>,
    /// Audio level in -dBov (0 loudest, -127 silence), and the voice activity flag.
    pub(crate) audio_level: Option<i8>,
    /// Voice activity flag of the audio level extension.
    pub(crate) voice_activity: Option<bool>,
    /// Video orientation.
    pub(crate) video_orientation: Option<VideoOrientation>,
    /// A RID or repaired RID is present: a simulcast layer (not for the lean ingress).
    pub(crate) has_rid: bool,
    /// The payload, padding removed.
    pub(crate) payload: &'a [u8],
}

/// Reads `buf` (a whole, opened RTP packet) with the extension ids `ids`.
pub(crate) fn read<'a>(buf: &'a [u8], ids: &ExtIds) -> Result<RtpRead<'a>, RtpParseError> {
    if buf.len() < 12 {
        return Err(RtpParseError::TooShort);
    }
    if buf[0] >> 6 != 2 {
        return Err(RtpParseError::Version);
    }
    let padded = buf[0] & 0x20 != 0;
    let extended = buf[0] & 0x10 != 0;
    let csrcs = usize::from(buf[0] & 0x0f);
    let be32 = |i: usize| u32::from_be_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    let mut r = RtpRead {
        ssrc: be32(8),
        seq: u16::from_be_bytes([buf[2], buf[3]]),
        ts: be32(4),
        pt: buf[1] & 0x7f,
        marker: buf[1] & 0x80 != 0,
        transport_cc: None,
        audio_level: None,
        voice_activity: None,
        video_orientation: None,
        has_rid: false,
        payload: &[],
    };
    let mut at = 12 + 4 * csrcs;
    if extended {
        let head = buf.get(at..at + 4).ok_or(RtpParseError::TooShort)?;
        let profile = u16::from_be_bytes([head[0], head[1]]);
        let words = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let body = buf
            .get(at + 4..at + 4 + 4 * words)
            .ok_or(RtpParseError::TooShort)?;
        read_extensions(profile, body, ids, &mut r);
        at += 4 + 4 * words;
    }
    let mut end = buf.len();
    if at > end {
        return Err(RtpParseError::TooShort);
    }
    if padded {
        let pad = usize::from(buf[end - 1]);
        if pad == 0 || pad > end - at {
            return Err(RtpParseError::Padding);
        }
        end -= pad;
    }
    r.payload = &buf[at..end];
    Ok(r)
}

/// Reads the extension elements of `body` (RFC 8285 §4.2 one-byte, §4.3 two-byte form; any
/// other profile is ignored) into `r`. A malformed element ends the reading.
fn read_extensions(profile: u16, body: &[u8], ids: &ExtIds, r: &mut RtpRead<'_>) {
    let two_byte = match profile {
        0xbede => false,
        p if p & 0xfff0 == 0x1000 => true,
        _ => return,
    };
    let mut i = 0;
    while i < body.len() {
        let (id, len, start) = if two_byte {
            let id = body[i];
            if id == 0 {
                i += 1;
                continue;
            }
            let Some(&len) = body.get(i + 1) else {
                return;
            };
            (id, usize::from(len), i + 2)
        } else {
            let b = body[i];
            if b == 0 {
                i += 1;
                continue;
            }
            let id = b >> 4;
            if id == 15 {
                return;
            }
            (id, usize::from(b & 0x0f) + 1, i + 1)
        };
        let Some(v) = body.get(start..start + len) else {
            return;
        };
        i = start + len;
        let is = |x: Option<u8>| x == Some(id);
        if is(ids.transport_cc) {
            if let [a, b, ..] = *v {
                r.transport_cc = Some(u16::from_be_bytes([a, b]));
            }
        } else if is(ids.audio_level) {
            if let [b, ..] = *v {
                // 7 bits: fits an i8 (as str0m reads it).
                r.audio_level = Some(-((b & 0x7f) as i8));
                r.voice_activity = Some(b & 0x80 != 0);
            }
        } else if is(ids.video_orientation) {
            if let [b, ..] = *v {
                r.video_orientation = Some(VideoOrientation::from(b & 3));
            }
        } else if is(ids.rid) || is(ids.repaired_rid) {
            r.has_rid = true;
        }
    }
}

/// The original sequence number at the start of an RTX payload and the original payload after
/// it (RFC 4588 §4); `None` when it is shorter than 2 bytes.
pub(crate) fn unwrap_rtx(payload: &[u8]) -> Option<(u16, &[u8])> {
    match payload {
        [a, b, rest @ ..] => Some((u16::from_be_bytes([*a, *b]), rest)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The extension ids of str0m's standard map (what a browser offer usually carries).
    fn ids() -> ExtIds {
        ExtIds::from_map(&ExtensionMap::standard())
    }

    /// An RTP packet with one-byte extensions `exts` (id, value) and `payload`, padded by
    /// `pad` bytes.
    fn packet(exts: &[(u8, &[u8])], payload: &[u8], pad: u8) -> Vec<u8> {
        let mut b = vec![
            0x80,
            0x80 | 96,
            0x12,
            0x34,
            0,
            0,
            0x10,
            0,
            0xde,
            0xad,
            0xbe,
            0xef,
        ];
        if !exts.is_empty() {
            b[0] |= 0x10;
            let mut body = Vec::new();
            for (id, v) in exts {
                body.push((id << 4) | (v.len() as u8 - 1));
                body.extend_from_slice(v);
            }
            while body.len() % 4 != 0 {
                body.push(0);
            }
            b.extend_from_slice(&[0xbe, 0xde]);
            b.extend_from_slice(&((body.len() / 4) as u16).to_be_bytes());
            b.extend_from_slice(&body);
        }
        b.extend_from_slice(payload);
        if pad > 0 {
            b[0] |= 0x20;
            b.extend(std::iter::repeat_n(0, usize::from(pad) - 1));
            b.push(pad);
        }
        b
    }

    #[test]
    fn header_extensions_and_payload_are_read() {
        let ids = ids();
        let twcc = ids.transport_cc.expect("standard map has transport-cc");
        let level = ids.audio_level.expect("standard map has audio level");
        let orient = ids.video_orientation.expect("standard map has orientation");
        let buf = packet(
            &[(twcc, &[0x01, 0x02]), (level, &[0x80 | 30]), (orient, &[3])],
            b"media",
            3,
        );
        let r = read(&buf, &ids).expect("valid");
        assert_eq!(r.ssrc, 0xdead_beef);
        assert_eq!(r.seq, 0x1234);
        assert_eq!(r.ts, 0x1000);
        assert_eq!(r.pt, 96);
        assert!(r.marker);
        assert_eq!(r.transport_cc, Some(0x0102));
        assert_eq!(r.audio_level, Some(-30));
        assert_eq!(r.voice_activity, Some(true));
        assert_eq!(r.video_orientation, Some(VideoOrientation::Deg90));
        assert!(!r.has_rid);
        assert_eq!(r.payload, b"media");
    }

    #[test]
    fn two_byte_extensions_and_rids_are_read() {
        let mut map = ExtensionMap::empty();
        // Ids above 14 exist only in the two-byte form.
        map.set(15, Extension::TransportSequenceNumber);
        map.set(16, Extension::RtpStreamId);
        let ids = ExtIds::from_map(&map);
        let mut buf = vec![0x90, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9];
        let body = [15, 2, 0xaa, 0xbb, 0, 16, 1, b'h', 0, 0, 0, 0];
        buf.extend_from_slice(&[0x10, 0x00, 0, 3]);
        buf.extend_from_slice(&body);
        buf.extend_from_slice(b"x");
        let r = read(&buf, &ids).expect("valid");
        assert_eq!(r.transport_cc, Some(0xaabb));
        assert!(r.has_rid);
        assert_eq!(r.payload, b"x");
    }

    #[test]
    fn unknown_ids_are_skipped() {
        let mut map = ExtensionMap::empty();
        map.set(5, Extension::TransportSequenceNumber);
        let ids = ExtIds::from_map(&map);
        let buf = packet(&[(4, &[1, 2, 3]), (5, &[0, 7])], b"p", 0);
        let r = read(&buf, &ids).expect("valid");
        assert_eq!(r.transport_cc, Some(7));
        assert_eq!(r.audio_level, None);
        assert_eq!(r.payload, b"p");
    }

    #[test]
    fn malformed_packets_are_errors() {
        let ids = ids();
        assert_eq!(read(&[0x80; 11], &ids), Err(RtpParseError::TooShort));
        let mut v1 = packet(&[], b"x", 0);
        v1[0] = 0x40;
        assert_eq!(read(&v1, &ids), Err(RtpParseError::Version));
        let mut pad = packet(&[], b"x", 0);
        pad[0] |= 0x20;
        *pad.last_mut().expect("payload") = 5;
        assert_eq!(read(&pad, &ids), Err(RtpParseError::Padding));
        let mut ext = packet(&[(1, &[1])], b"", 0);
        ext[15] = 9; // extension length past the end
        assert_eq!(read(&ext, &ids), Err(RtpParseError::TooShort));
        let mut csrc = packet(&[], b"", 0);
        csrc[0] |= 0x0f;
        assert_eq!(read(&csrc, &ids), Err(RtpParseError::TooShort));
    }

    #[test]
    fn rtx_payloads_give_the_original_sequence_number() {
        assert_eq!(
            unwrap_rtx(&[0x01, 0x02, 9, 9]),
            Some((0x0102, &[9u8, 9][..]))
        );
        assert_eq!(unwrap_rtx(&[0x01]), None);
    }

    #[test]
    fn garbage_never_panics() {
        let ids = ids();
        let mut x: u32 = 3;
        for len in 0..2000usize {
            let mut buf = Vec::with_capacity(len % 80);
            for _ in 0..len % 80 {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                buf.push((x >> 16) as u8);
            }
            if let Some(b) = buf.first_mut() {
                *b = 0x80 | (*b & 0x3f);
            }
            if let Ok(r) = read(&buf, &ids) {
                assert!(r.payload.len() <= buf.len());
            }
        }
    }
}
