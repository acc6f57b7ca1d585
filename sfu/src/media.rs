//! Codec helpers: keyframe detection from the RTP payload (RTP mode gets no depacketized
//! frames, and simulcast layers may only be switched on a keyframe).

use str0m::format::Codec;

/// Whether this RTP payload starts (or is part of the start of) a keyframe.
pub(crate) fn is_keyframe(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::Vp8 => vp8_keyframe(payload),
        Codec::Vp9 => vp9_keyframe(payload),
        Codec::H264 => h264_keyframe(payload),
        Codec::Av1 => payload.first().is_some_and(|b| b & 0x08 != 0),
        _ => false,
    }
}

fn vp8_keyframe(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    let start = b0 & 0x10 != 0;
    let pid = b0 & 0x07;
    if !start || pid != 0 {
        return false;
    }
    let mut i = 1;
    if b0 & 0x80 != 0 {
        let Some(&x) = p.get(i) else { return false };
        i += 1;
        if x & 0x80 != 0 {
            // PictureID: 7 or 15 bits.
            let Some(&m) = p.get(i) else { return false };
            i += if m & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            i += 1; // TID / KEYIDX
        }
    }
    // VP8 payload header: P bit (bit 0 of the first byte) is 0 for a keyframe.
    p.get(i).is_some_and(|h| h & 0x01 == 0)
}

fn vp9_keyframe(p: &[u8]) -> bool {
    // I P L F B E V Z: not inter-predicted and beginning of a frame.
    p.first().is_some_and(|b| b & 0x40 == 0 && b & 0x08 != 0)
}

fn h264_keyframe(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    match b0 & 0x1f {
        5 | 7 => true,
        24 => {
            // STAP-A: 16-bit sizes followed by NAL units.
            let mut i = 1;
            while i + 2 < p.len() {
                let size = usize::from(u16::from_be_bytes([p[i], p[i + 1]]));
                if matches!(p[i + 2] & 0x1f, 5 | 7) {
                    return true;
                }
                i += 2 + size;
            }
            false
        }
        28 => p
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && matches!(fu & 0x1f, 5 | 7)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8() {
        // S=1, PID=0, no extension; payload header P=0.
        assert!(is_keyframe(Codec::Vp8, &[0x10, 0x00, 0x9d]));
        // Delta frame.
        assert!(!is_keyframe(Codec::Vp8, &[0x10, 0x01]));
        // Extended with a 15-bit picture id.
        assert!(is_keyframe(Codec::Vp8, &[0x90, 0x80, 0x81, 0x23, 0x00]));
        // Not the start of a partition.
        assert!(!is_keyframe(Codec::Vp8, &[0x00, 0x00]));
        assert!(!is_keyframe(Codec::Vp8, &[]));
        assert!(!is_keyframe(Codec::Vp8, &[0x90]));
    }

    #[test]
    fn h264() {
        assert!(is_keyframe(Codec::H264, &[0x65, 1, 2]));
        assert!(!is_keyframe(Codec::H264, &[0x41, 1, 2]));
        // STAP-A carrying SPS.
        assert!(is_keyframe(Codec::H264, &[0x18, 0x00, 0x02, 0x67, 0x42]));
        // FU-A start of an IDR.
        assert!(is_keyframe(Codec::H264, &[0x7c, 0x85, 0]));
        assert!(!is_keyframe(Codec::H264, &[0x7c, 0x05, 0]));
        // Truncated STAP-A never panics.
        assert!(!is_keyframe(Codec::H264, &[0x18, 0xff]));
    }

    #[test]
    fn vp9_av1_and_audio() {
        assert!(is_keyframe(Codec::Vp9, &[0x08]));
        assert!(!is_keyframe(Codec::Vp9, &[0x48]));
        assert!(is_keyframe(Codec::Av1, &[0x08]));
        assert!(!is_keyframe(Codec::Opus, &[0xff]));
    }
}
