//! The DTLS release on the engine's real peers: every listener drops its OpenSSL instance as
//! soon as its client sent SRTCP under its SRTP keys (the client's handshake is over), the
//! publisher once the handshake is over and `DTLS_RELEASE_GRACE` passed, and media keeps flowing
//! to the listeners throughout (their clients receive and decrypt it). The clock is virtual;
//! the counters are process-wide, so this binary holds this one test.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use greenroom_sfu::dtls_stats;
use greenroom_sfu::fuzzing::ShardBench;

#[test]
fn connected_peers_release_openssl_and_keep_forwarding() {
    let listeners = 3;
    let before = dtls_stats();
    let mut b = ShardBench::with_bwe(1, listeners, false, false).expect("peers connect");
    let created = dtls_stats();
    // The publisher's peer and one per listener, at least, hold an OpenSSL instance now.
    assert!(created.live >= before.live + 1 + listeners as u64);
    assert_eq!(created.released, before.released, "nothing released yet");
    // Six seconds of audio: the listeners' clients receive it and send receiver reports (a
    // str0m client sends its first one 5 s after its receive stream started).
    stream(&mut b, 300);
    let received = b.received();
    assert!(
        received >= 290 * listeners as u64,
        "media arrived: {received}"
    );
    let early = dtls_stats();
    assert_eq!(
        early.released - before.released,
        listeners as u64,
        "every listener's instance released once its client sent SRTCP, long before the grace; \
         the publisher's kept"
    );
    assert_eq!(early.live, created.live - listeners as u64);

    // Media still flows to the listeners, encrypted with the keys the released sessions
    // exported.
    let more = stream(&mut b, 25);
    assert!(
        more >= 20 * listeners as u64,
        "media arrived after the early release: {more}"
    );

    b.idle(greenroom_sfu::DTLS_RELEASE_GRACE + Duration::from_secs(1));
    let after = dtls_stats();
    let released = after.released - before.released;
    assert!(
        released > listeners as u64,
        "the publisher's instance released after the grace too: {released}"
    );
    assert_eq!(after.live, created.live - released);

    // Media still flows after every release.
    let more = stream(&mut b, 25);
    assert!(
        more >= 20 * listeners as u64,
        "media arrived after the release: {more}"
    );
    // Nothing needed DTLS after the handshake: no record arrived late, no SCTP data was sent.
    assert_eq!(dtls_stats().late_records, before.late_records);
}

/// Feeds `rounds` audio packets (20 ms apart) from the publisher through the shard; returns how
/// many packets the listeners' clients received and decrypted meanwhile.
fn stream(b: &mut ShardBench, rounds: usize) -> u64 {
    let start = b.received();
    for _ in 0..rounds {
        b.prepare(1);
        b.feed_delivered();
        b.pump();
    }
    b.received() - start
}
