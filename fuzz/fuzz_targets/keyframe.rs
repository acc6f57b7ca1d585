//! Keyframe detection of every codec on arbitrary RTP payloads. Input: a codec byte, then the
//! payload.
#![no_main]

use greenroom_sfu::fuzzing::is_keyframe;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let [codec, payload @ ..] = data {
        let _ = is_keyframe(*codec, payload);
    }
});
