//! The publish path with arbitrary SDP: the engine parses the offer, answers it and maps the
//! announced tracks (microphone on mid "0", camera on mid "1"), offer after offer on one
//! participant (first publish, then renegotiations).
#![no_main]

use std::sync::Mutex;

use greenroom_sfu::fuzzing::PublishHarness;
use libfuzzer_sys::fuzz_target;

/// Rebuilt every this many inputs, so a long run does not pile up state.
const REBUILD_EVERY: u32 = 2000;

static HARNESS: Mutex<Option<(PublishHarness, u32)>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let Ok(sdp) = std::str::from_utf8(data) else {
        return;
    };
    let mut slot = HARNESS.lock().unwrap_or_else(|e| e.into_inner());
    if slot.as_ref().is_none_or(|(_, n)| *n >= REBUILD_EVERY) {
        *slot = Some((PublishHarness::default(), 0));
    }
    if let Some((harness, n)) = slot.as_mut() {
        *n += 1;
        let _ = harness.publish(sdp, ("0", "1"));
    }
});
