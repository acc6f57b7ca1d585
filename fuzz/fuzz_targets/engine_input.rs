//! Arbitrary STUN, DTLS, SRTP, SRTCP and publisher RTP payloads into an engine shard with a
//! connected publisher and subscriber (in-memory transport). Input: records of a length byte
//! and that many bytes; each record is one `EngineHarness::input`.
#![no_main]

use std::cell::RefCell;

use greenroom_sfu::fuzzing::EngineHarness;
use libfuzzer_sys::fuzz_target;

/// Building a harness runs two DTLS handshakes, so it is reused and rebuilt every this many
/// inputs (garbage may have failed its peers meanwhile).
const REBUILD_EVERY: u32 = 500;

thread_local! {
    /// The harness, rebuilt every [`REBUILD_EVERY`] inputs. Per thread: an engine shard lives on
    /// one thread (its lone-shard inbox holds `recvmmsg` headers, which are not `Send`), and
    /// libFuzzer runs the inputs of one process on one thread.
    static HARNESS: RefCell<Option<(EngineHarness, u32)>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    HARNESS.with_borrow_mut(|slot| {
        if slot.as_ref().is_none_or(|(_, n)| *n >= REBUILD_EVERY) {
            *slot = Some((EngineHarness::new(), 0));
        }
        let Some((harness, n)) = slot.as_mut() else {
            return;
        };
        *n += 1;
        let mut rest = data;
        while let [len, tail @ ..] = rest {
            let take = usize::from(*len).min(tail.len());
            harness.input(&tail[..take]);
            rest = &tail[take..];
        }
    });
});
