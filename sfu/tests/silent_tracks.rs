//! No packet on a silent track: a subscriber with bandwidth estimation on (str0m's pacer pads
//! every video send stream with RTX toward 50 kbit/s) receives no padding while its only video
//! track is revoked or unsubscribed, and, with a live video track, real media and less padding
//! than media. Real UDP on 127.0.0.1, independent str0m clients that count every RTP packet
//! with an empty payload or an RTX payload type (raw packets).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use greenroom_proto::{CallCid, MediaGate, SourceSet, TrackSource};
use str0m::RtcConfig;

/// Joins alice (publishes audio + video) and bob (subscribes, bandwidth estimation on, counts
/// padding); returns both clients, connected, with media flowing, and bob's (audio, video) mids.
async fn pair(sfu: &greenroom_sfu::Sfu, events: &mut Events) -> (Client, Client, (String, String)) {
    let call: CallCid = "default:quiet".parse().unwrap();
    let options = greenroom_sfu::JoinOptions {
        bandwidth_estimation: true,
    };
    sfu.join_with(&call, "alice", "u-alice", ALL, options);
    sfu.join_with(&call, "bob", "u-bob", ALL, options);
    let alice = Client::new();
    let (offer, tracks, pending) = alice.publish_offer();
    let answer = sfu.publish("alice", offer, tracks).await.unwrap();
    alice.accept_answer(pending, answer);
    let bob = Client::with_config(RtcConfig::new().enable_raw_packets(true));
    let (sdp, tracks) = events.offer("bob").await;
    let answer = bob.accept_offer(sdp);
    sfu.subscriber_answer("bob", answer).await.unwrap();
    let mids = (
        mid_of(&tracks, TrackSource::Microphone),
        mid_of(&tracks, TrackSource::Camera),
    );
    wait_for("pair connected", || {
        alice.is_connected() && bob.is_connected()
    })
    .await;
    alice.set_sending(true);
    let video = mids.1.clone();
    wait_for("video reaches bob", || bob.count(&video) >= 30).await;
    (alice, bob, mids)
}

/// Over `window`: (padding packets, audio packets, video packets) bob received.
async fn window(bob: &Client, (audio, video): &(String, String), window: Duration) -> [u64; 3] {
    let before = [
        bob.padding.load(Ordering::SeqCst),
        bob.count(audio),
        bob.count(video),
    ];
    tokio::time::sleep(window).await;
    let after = [
        bob.padding.load(Ordering::SeqCst),
        bob.count(audio),
        bob.count(video),
    ];
    [0, 1, 2].map(|i| after[i] - before[i])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_padding_on_a_revoked_or_unsubscribed_video_track() {
    let (sfu, mut events) = start(greenroom_sfu::SfuOptions::default()).await;
    let (_alice, bob, mids) = pair(&sfu, &mut events).await;

    // Revoke alice's camera: audio goes on, video stops.
    sfu.set_gate(
        "alice",
        MediaGate {
            send: SourceSet::ALL.without(TrackSource::Camera),
            receive: true,
        },
    );
    // The stream is parked on the next housekeeping tick (250 ms): generous settling.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let [padding, audio, video] = window(&bob, &mids, Duration::from_secs(3)).await;
    eprintln!("silent window: padding {padding}, audio {audio}, video {video}");
    assert!(audio >= 20, "audio still flows ({audio} packets)");
    assert_eq!(video, 0, "a revoked track forwards nothing");
    assert_eq!(padding, 0, "no padding on a revoked video track");

    // Granted again: video resumes on the same track (the parked stream is declared again).
    sfu.set_gate("alice", ALL);
    let video_mid = mids.1.clone();
    let resumed_from = bob.count(&video_mid);
    wait_for("video resumes", || {
        bob.count(&video_mid) >= resumed_from + 30
    })
    .await;

    // Unsubscribed (paused consumer): nothing either.
    sfu.set_subscribed("bob", "alice:camera", false);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let [padding, audio, video] = window(&bob, &mids, Duration::from_secs(3)).await;
    eprintln!("silent window: padding {padding}, audio {audio}, video {video}");
    assert!(audio >= 20, "audio still flows ({audio} packets)");
    assert_eq!(video, 0, "an unsubscribed track forwards nothing");
    assert_eq!(padding, 0, "no padding on an unsubscribed video track");
    sfu.set_subscribed("bob", "alice:camera", true);
    let resumed_from = bob.count(&video_mid);
    wait_for("video resumes after subscribing", || {
        bob.count(&video_mid) >= resumed_from + 30
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_video_track_carries_media_and_less_padding_than_media() {
    let (sfu, mut events) = start(greenroom_sfu::SfuOptions::default()).await;
    let (_alice, bob, mids) = pair(&sfu, &mut events).await;
    let [padding, _, video] = window(&bob, &mids, Duration::from_secs(3)).await;
    eprintln!("live window: padding {padding}, video {video}");
    assert!(video >= 30, "video flows ({video} packets)");
    assert!(
        padding < video,
        "padding ({padding}) stays below media ({video}) on a live track"
    );
}
