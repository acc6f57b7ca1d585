//! A synthetic VP8 RTP packetizer (RFC 7741) and the matching descriptor parser.
//!
//! Frames are not real VP8 bitstreams, but every packet carries a valid VP8 payload descriptor
//! (extended form with a 15-bit PictureID, like browsers send), the S bit on the first packet of
//! a frame, and the first packet of every frame starts with a well-formed VP8 payload header:
//! the 3-byte frame tag whose P bit is 0 on keyframes, followed on keyframes by the start code
//! `9d 01 2a` and the frame size. A server can therefore detect keyframes exactly as it would in
//! a browser's stream. The last [`PROBE_LEN`] bytes of each payload are a [`Probe`].

use crate::probe::{Probe, FLAG_FRAME_START, FLAG_KEYFRAME, PROBE_LEN};

/// Length of the payload descriptor this packetizer writes (X, I with a 15-bit PictureID).
pub const DESCRIPTOR_LEN: usize = 4;
/// Length of the VP8 payload header of a keyframe (frame tag + start code + size).
pub const KEYFRAME_HEADER_LEN: usize = 10;
/// Length of the VP8 payload header of an interframe (frame tag).
pub const INTERFRAME_HEADER_LEN: usize = 3;

/// One synthetic frame to packetize.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8FrameSpec {
    /// Size of the (synthetic) encoded frame in bytes, headers included; raised to the VP8
    /// payload header length if smaller.
    pub frame_bytes: usize,
    /// Whether this is a keyframe (P bit 0).
    pub keyframe: bool,
    /// The picture id (15 bits; higher bits are dropped).
    pub picture_id: u16,
    /// Width written in keyframe headers.
    pub width: u16,
    /// Height written in keyframe headers.
    pub height: u16,
}

/// How many payloads [`packetize_frame`] makes of a frame of `frame_bytes` (a keyframe or
/// not) with payloads of at most `max_payload` bytes.
pub fn packet_count(frame_bytes: usize, keyframe: bool, max_payload: usize) -> usize {
    let header_len = if keyframe {
        KEYFRAME_HEADER_LEN
    } else {
        INTERFRAME_HEADER_LEN
    };
    let max_payload = max_payload.max(DESCRIPTOR_LEN + KEYFRAME_HEADER_LEN + PROBE_LEN + 1);
    let per_packet = max_payload - DESCRIPTOR_LEN - PROBE_LEN;
    frame_bytes.max(header_len).div_ceil(per_packet)
}

/// Splits a synthetic frame into RTP payloads of at most `max_payload` bytes.
///
/// Packet `i` carries a [`Probe`] with sequence `first_seq + i` and `send_us`. The caller sets
/// the RTP marker bit on the last payload. `max_payload` is raised to the smallest size that can
/// carry a descriptor, a keyframe header and a probe if it is smaller.
pub fn packetize_frame(
    spec: &Vp8FrameSpec,
    max_payload: usize,
    first_seq: u32,
    send_us: u64,
) -> Vec<Vec<u8>> {
    let header_len = if spec.keyframe {
        KEYFRAME_HEADER_LEN
    } else {
        INTERFRAME_HEADER_LEN
    };
    let max_payload = max_payload.max(DESCRIPTOR_LEN + KEYFRAME_HEADER_LEN + PROBE_LEN + 1);
    let frame_bytes = spec.frame_bytes.max(header_len);
    let bitstream = synthetic_bitstream(spec, frame_bytes, header_len);

    let per_packet = max_payload - DESCRIPTOR_LEN - PROBE_LEN;
    let picture_id = spec.picture_id & 0x7FFF;
    let mut out = Vec::with_capacity(frame_bytes.div_ceil(per_packet));
    for (i, chunk) in bitstream.chunks(per_packet).enumerate() {
        let start = i == 0;
        let mut p = Vec::with_capacity(DESCRIPTOR_LEN + chunk.len() + PROBE_LEN);
        // X=1, N=0, S=start, PID=0.
        p.push(0x80 | if start { 0x10 } else { 0x00 });
        // I=1 (PictureID present), L=T=K=0.
        p.push(0x80);
        // M=1: 15-bit PictureID.
        p.push(0x80 | (picture_id >> 8) as u8);
        p.push((picture_id & 0xFF) as u8);
        p.extend_from_slice(chunk);
        p.resize(p.len() + PROBE_LEN, 0);
        let mut flags = 0;
        if spec.keyframe {
            flags |= FLAG_KEYFRAME;
        }
        if start {
            flags |= FLAG_FRAME_START;
        }
        Probe {
            seq: first_seq.wrapping_add(i as u32),
            send_us,
            flags,
        }
        .write_trailer(&mut p);
        out.push(p);
    }
    out
}

/// The frame's bytes: a valid VP8 payload header followed by filler.
fn synthetic_bitstream(spec: &Vp8FrameSpec, frame_bytes: usize, header_len: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(frame_bytes);
    // Frame tag: size0(3) | show_frame(1) | version(3) | P(1), then size1, size2, little endian.
    let first_part = (frame_bytes - header_len).min(0x7_FFFF) as u32;
    let p_bit = u32::from(!spec.keyframe);
    let tag = (first_part << 5) | (1 << 4) | p_bit;
    b.extend_from_slice(&tag.to_le_bytes()[..3]);
    if spec.keyframe {
        b.extend_from_slice(&[0x9d, 0x01, 0x2a]);
        b.extend_from_slice(&(spec.width & 0x3FFF).to_le_bytes());
        b.extend_from_slice(&(spec.height & 0x3FFF).to_le_bytes());
    }
    let fill = (spec.picture_id as u8) | 0x01;
    b.resize(frame_bytes, fill);
    b
}

/// A parsed VP8 payload descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8Descriptor {
    /// The S bit: this packet starts a VP8 partition.
    pub start_of_partition: bool,
    /// The partition index (PID).
    pub partition_id: u8,
    /// The PictureID, if present (7 or 15 bits).
    pub picture_id: Option<u16>,
    /// Bytes taken by the descriptor; the VP8 payload starts after them.
    pub len: usize,
}

/// Parses the VP8 payload descriptor at the start of an RTP payload; `None` if truncated.
pub fn parse_descriptor(payload: &[u8]) -> Option<Vp8Descriptor> {
    let b0 = *payload.first()?;
    let mut len = 1;
    let mut picture_id = None;
    if b0 & 0x80 != 0 {
        let x = *payload.get(len)?;
        len += 1;
        if x & 0x80 != 0 {
            let i0 = *payload.get(len)?;
            len += 1;
            if i0 & 0x80 != 0 {
                let i1 = *payload.get(len)?;
                len += 1;
                picture_id = Some((u16::from(i0 & 0x7F) << 8) | u16::from(i1));
            } else {
                picture_id = Some(u16::from(i0 & 0x7F));
            }
        }
        if x & 0x40 != 0 {
            len += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            len += 1; // TID/Y/KEYIDX
        }
    }
    if len > payload.len() {
        return None;
    }
    Some(Vp8Descriptor {
        start_of_partition: b0 & 0x10 != 0,
        partition_id: b0 & 0x07,
        picture_id,
        len,
    })
}

/// Whether the payload is the first packet of a VP8 keyframe: S=1, PID=0 and the P bit of the
/// VP8 payload header is 0.
pub fn is_keyframe_start(payload: &[u8]) -> bool {
    match parse_descriptor(payload) {
        Some(d) if d.start_of_partition && d.partition_id == 0 => {
            payload.get(d.len).is_some_and(|first| first & 0x01 == 0)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(frame_bytes: usize, keyframe: bool) -> Vp8FrameSpec {
        Vp8FrameSpec {
            frame_bytes,
            keyframe,
            picture_id: 0x1234,
            width: 640,
            height: 360,
        }
    }

    #[test]
    fn packet_count_matches_the_packetizer() {
        for (bytes, key, max) in [
            (0, false, 1200),
            (1, true, 1200),
            (1250, false, 1200),
            (2083, false, 1200),
            (6249, true, 1200),
            (3540, true, 1200),
            (500, false, 10),
        ] {
            assert_eq!(
                packet_count(bytes, key, max),
                packetize_frame(&spec(bytes, key), max, 0, 0).len(),
                "{bytes} B, keyframe {key}, max {max}"
            );
        }
    }

    #[test]
    fn keyframe_is_split_with_s_bit_only_on_first_packet() {
        let pkts = packetize_frame(&spec(3000, true), 1200, 7, 99);
        // 3000 bytes of frame, 1180 per packet: 3 packets.
        assert_eq!(pkts.len(), 3);
        let mut frame_bytes = 0;
        for (i, p) in pkts.iter().enumerate() {
            assert!(p.len() <= 1200);
            let d = parse_descriptor(p).unwrap();
            assert_eq!(d.len, DESCRIPTOR_LEN);
            assert_eq!(d.partition_id, 0);
            assert_eq!(d.picture_id, Some(0x1234));
            assert_eq!(d.start_of_partition, i == 0);
            let probe = Probe::parse_trailer(p).unwrap();
            assert_eq!(probe.seq, 7 + i as u32);
            assert_eq!(probe.send_us, 99);
            assert_ne!(probe.flags & FLAG_KEYFRAME, 0);
            assert_eq!(probe.flags & FLAG_FRAME_START != 0, i == 0);
            frame_bytes += p.len() - DESCRIPTOR_LEN - PROBE_LEN;
        }
        assert_eq!(frame_bytes, 3000);
        assert!(is_keyframe_start(&pkts[0]));
        assert!(!is_keyframe_start(&pkts[1]), "no S bit");
        // Start code and dimensions.
        let body = &pkts[0][DESCRIPTOR_LEN..];
        assert_eq!(&body[3..6], &[0x9d, 0x01, 0x2a]);
        assert_eq!(u16::from_le_bytes([body[6], body[7]]), 640);
        assert_eq!(u16::from_le_bytes([body[8], body[9]]), 360);
        // show_frame set, version 0.
        assert_eq!(body[0] & 0x1F, 0x10);
    }

    #[test]
    fn interframe_has_p_bit_set() {
        let pkts = packetize_frame(&spec(500, false), 1200, 0, 0);
        assert_eq!(pkts.len(), 1);
        assert!(!is_keyframe_start(&pkts[0]));
        assert_eq!(pkts[0][DESCRIPTOR_LEN] & 0x01, 1);
        assert_eq!(pkts[0].len(), DESCRIPTOR_LEN + 500 + PROBE_LEN);
    }

    #[test]
    fn first_partition_size_is_encoded_in_the_frame_tag() {
        let pkts = packetize_frame(&spec(1000, false), 1200, 0, 0);
        let t = &pkts[0][DESCRIPTOR_LEN..];
        let tag = u32::from_le_bytes([t[0], t[1], t[2], 0]);
        assert_eq!(tag >> 5, 1000 - INTERFRAME_HEADER_LEN as u32);
    }

    #[test]
    fn tiny_frames_and_payload_limits_are_clamped() {
        let pkts = packetize_frame(&spec(0, true), 5, 0, 0);
        assert_eq!(pkts.len(), 1);
        assert!(is_keyframe_start(&pkts[0]));
        assert!(Probe::parse_trailer(&pkts[0]).is_some());
    }

    #[test]
    fn descriptor_parser_handles_all_extension_forms() {
        // Minimal descriptor: no X.
        let d = parse_descriptor(&[0x10, 0x00]).unwrap();
        assert_eq!(d.len, 1);
        assert!(d.start_of_partition);
        assert_eq!(d.picture_id, None);
        // X with 7-bit picture id, TL0PICIDX and TID/KEYIDX.
        let d = parse_descriptor(&[0x90, 0xF0, 0x05, 0x11, 0x22, 0x00]).unwrap();
        assert_eq!(d.picture_id, Some(5));
        assert_eq!(d.len, 5);
        // Truncated extensions.
        assert_eq!(parse_descriptor(&[0x90, 0x80]), None);
        assert_eq!(parse_descriptor(&[0x90, 0x80, 0x80]), None);
        assert_eq!(parse_descriptor(&[]), None);
        assert!(!is_keyframe_start(&[0x90, 0x80, 0x81, 0x00]), "no payload");
        // PID != 0 is never a keyframe start.
        assert!(!is_keyframe_start(&[0x11, 0x00]));
    }
}
