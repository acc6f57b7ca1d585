//! Arbitrary bytes as a client message on the signaling socket `/v1/signal`: a `ClientMessage`,
//! or a `RingClientMessage` when its `type` starts with `ring_`.
//!
//! The bytes take the server's path (text → `serde_json::Value` → dispatch on `type` → typed
//! message) and the direct typed parse. Invariants: nothing panics; a message that parses
//! serializes, its serialized form parses back to the same message and serializes to the same
//! text (server and SDKs agree on one wire form); when both paths parse, they agree.
#![no_main]

use std::fmt::Debug;

use greenroom_proto::{ClientMessage, RingClientMessage};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Checks the serialize/parse round trip of a parsed message.
fn round_trip<T: DeserializeOwned + Serialize + PartialEq + Debug>(msg: &T) {
    let text = serde_json::to_string(msg).expect("a parsed message serializes");
    let again: T = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("serialized form {text} does not parse back: {e}"));
    assert_eq!(&again, msg, "round trip changed the message ({text})");
    let text2 = serde_json::to_string(&again).expect("a parsed message serializes");
    assert_eq!(text2, text, "serialization is not stable");
}

/// Both parse paths for one message type; round trips whatever parses.
fn check<T: DeserializeOwned + Serialize + PartialEq + Debug>(
    data: &[u8],
    value: Option<&serde_json::Value>,
) {
    let direct = serde_json::from_slice::<T>(data).ok();
    let via_value = value.and_then(|v| serde_json::from_value::<T>(v.clone()).ok());
    if let Some(m) = &direct {
        round_trip(m);
    }
    if let Some(m) = &via_value {
        round_trip(m);
    }
    if let (Some(a), Some(b)) = (&direct, &via_value) {
        assert_eq!(a, b, "the direct and the server's (Value) parse disagree");
    }
}

fuzz_target!(|data: &[u8]| {
    // The server reads WebSocket text frames (UTF-8) into a Value first.
    let value = std::str::from_utf8(data)
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok());
    check::<ClientMessage>(data, value.as_ref());
    check::<RingClientMessage>(data, value.as_ref());
});
