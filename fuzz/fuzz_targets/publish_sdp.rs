//! The publish path with arbitrary SDP: the engine parses the offer, answers it and maps the
//! announced tracks (microphone on mid "0", camera on mid "1"), offer after offer on one
//! participant (first publish, then renegotiations).
#![no_main]

use std::cell::RefCell;

use greenroom_sfu::fuzzing::PublishHarness;
use libfuzzer_sys::fuzz_target;

/// Rebuilt every this many inputs, so a long run does not pile up state.
const REBUILD_EVERY: u32 = 2000;

thread_local! {
    /// The harness, rebuilt every [`REBUILD_EVERY`] inputs. Per thread: an engine shard lives on
    /// one thread (its lone-shard inbox holds `recvmmsg` headers, which are not `Send`), and
    /// libFuzzer runs the inputs of one process on one thread.
    static HARNESS: RefCell<Option<(PublishHarness, u32)>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    let Ok(sdp) = std::str::from_utf8(data) else {
        return;
    };
    HARNESS.with_borrow_mut(|slot| {
        if slot.as_ref().is_none_or(|(_, n)| *n >= REBUILD_EVERY) {
            *slot = Some((PublishHarness::default(), 0));
        }
        if let Some((harness, n)) = slot.as_mut() {
            *n += 1;
            let _ = harness.publish(sdp, ("0", "1"));
        }
    });
});
