//! The media layer over real UDP on 127.0.0.1, without a server: a [`Publisher`] offers, a
//! [`Subscriber`] answers (playing the server's role), and synthetic Opus/VP8 flows between
//! two webrtc-rs connections.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use greenroom_loadtest::media::{OPUS_PT, VP8_PT};
use greenroom_loadtest::{Publisher, PublisherConfig, Subscriber, SubscriberConfig, TrackStats};
use greenroom_proto::{PublishTrack, SubscribedTrack, TrackInfo, TrackSource};

use common::init_logs;

const WAIT: Duration = Duration::from_secs(5);

/// The subscriber-side description of the publisher's tracks, as a server would send it.
fn subscribed(tracks: &[PublishTrack]) -> Vec<SubscribedTrack> {
    tracks
        .iter()
        .map(|t| SubscribedTrack {
            mid: t.mid.clone(),
            track: TrackInfo {
                track_id: format!("pub:{}", t.source),
                participant_id: "pub".into(),
                user_id: "alice".into(),
                source: t.source,
                muted: false,
            },
        })
        .collect()
}

/// Offer/answer between the two, then both connected and the publisher sending.
async fn pair(sources: &[TrackSource]) -> (Publisher, Subscriber) {
    let publisher = Publisher::new(sources, PublisherConfig::default())
        .await
        .unwrap();
    let subscriber = Subscriber::new(SubscriberConfig::default()).await.unwrap();
    let (offer, tracks) = publisher.create_offer().await.unwrap();
    assert_eq!(tracks.len(), sources.len());
    assert!(
        offer.contains("a=candidate"),
        "no trickle: candidates in the offer"
    );
    assert!(offer.contains("127.0.0.1"), "bound to loopback");
    let answer = subscriber
        .apply_offer(&offer, subscribed(&tracks))
        .await
        .unwrap();
    publisher.apply_answer(&answer).await.unwrap();
    publisher.wait_connected(WAIT).await.unwrap();
    subscriber.wait_connected(WAIT).await.unwrap();
    publisher.start();
    (publisher, subscriber)
}

fn get(s: &HashMap<String, TrackStats>, source: TrackSource) -> &TrackStats {
    s.get(&format!("pub:{source}"))
        .unwrap_or_else(|| panic!("no stats for {source}: {s:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opus_and_vp8_flow_and_are_counted() {
    init_logs();
    let (publisher, subscriber) = pair(&[TrackSource::Microphone, TrackSource::Camera]).await;
    let stats = subscriber
        .wait_for_stats(WAIT, |s| {
            s.get("pub:microphone").is_some_and(|t| t.packets >= 25)
                && s.get("pub:camera").is_some_and(|t| t.markers >= 15)
        })
        .await
        .unwrap();
    let sent = publisher.sent();

    let mic = get(&stats, TrackSource::Microphone);
    assert_eq!(mic.source, Some(TrackSource::Microphone));
    assert_eq!(mic.payload_type, OPUS_PT);
    assert_eq!(mic.ssrc, sent[&TrackSource::Microphone].ssrc);
    assert_eq!(mic.probes, mic.packets, "every payload carries a probe");
    assert_eq!(mic.first_seq, Some(0));
    assert_eq!(mic.lost, 0);
    assert_eq!(mic.keyframes, 0, "no keyframe detection on audio");
    assert!(mic.bytes >= mic.packets * 100 && mic.bytes <= mic.packets * 160);
    assert!(mic.mean_latency().is_some());

    let cam = get(&stats, TrackSource::Camera);
    assert_eq!(cam.payload_type, VP8_PT);
    assert_eq!(cam.ssrc, sent[&TrackSource::Camera].ssrc);
    assert_eq!(cam.first_seq, Some(0));
    assert_eq!(cam.lost, 0);
    assert!(cam.keyframes >= 1, "the first frame is a keyframe");
    // 500 kbit/s at 30 fps: about 2083 bytes per frame, so 2 packets (keyframes 6).
    assert!(cam.packets >= 2 * cam.markers, "frames are split: {cam:?}");
    assert!(cam.max_latency_us.is_some());
    assert_ne!(mic.mid, cam.mid);
    for t in [mic, cam] {
        eprintln!(
            "{}: packets={} bytes={} keyframes={} lost={} latency min/mean/max us = {:?}/{:?}/{:?}",
            t.track_id,
            t.packets,
            t.bytes,
            t.keyframes,
            t.lost,
            t.min_latency_us,
            t.mean_latency().map(|d| d.as_micros()),
            t.max_latency_us
        );
    }

    publisher.close().await.unwrap();
    subscriber.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_source_stops_and_resumes_with_a_keyframe() {
    init_logs();
    let (publisher, subscriber) = pair(&[TrackSource::Microphone, TrackSource::Camera]).await;
    subscriber
        .wait_for_stats(WAIT, |s| {
            s.get("pub:camera").is_some_and(|t| t.markers >= 5)
        })
        .await
        .unwrap();

    publisher.pause(TrackSource::Camera);
    assert_eq!(publisher.is_paused(TrackSource::Camera), Some(true));
    // Let a frame that was being written when the flag flipped finish.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let frozen = publisher.sent()[&TrackSource::Camera];
    assert!(frozen.paused);
    let mic_before = publisher.sent()[&TrackSource::Microphone].packets;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = publisher.sent();
    assert_eq!(
        after[&TrackSource::Camera].packets,
        frozen.packets,
        "paused: nothing sent"
    );
    assert!(
        after[&TrackSource::Microphone].packets > mic_before,
        "other sources go on"
    );
    // Everything sent arrives, and nothing more.
    let s = subscriber
        .wait_for_stats(WAIT, |s| {
            s.get("pub:camera")
                .is_some_and(|t| t.packets == frozen.packets)
        })
        .await
        .unwrap();
    let keyframes = get(&s, TrackSource::Camera).keyframes;

    publisher.resume(TrackSource::Camera);
    let s = subscriber
        .wait_for_stats(WAIT, |s| {
            s.get("pub:camera")
                .is_some_and(|t| t.keyframes > keyframes && t.packets > frozen.packets)
        })
        .await
        .unwrap();
    let cam = get(&s, TrackSource::Camera);
    assert_eq!(
        cam.lost, 0,
        "a pause is not loss: the probe sequence does not advance"
    );
    assert_eq!(cam.out_of_order, 0);

    publisher.close().await.unwrap();
    subscriber.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renegotiation_adds_sources_and_apply_offer_repeats() {
    init_logs();
    let (publisher, subscriber) = pair(&[TrackSource::Microphone]).await;
    subscriber
        .wait_for_stats(WAIT, |s| {
            s.get("pub:microphone").is_some_and(|t| t.packets >= 5)
        })
        .await
        .unwrap();

    publisher
        .add_sources(&[TrackSource::ScreenShare, TrackSource::ScreenShareAudio])
        .await
        .unwrap();
    let (offer, tracks) = publisher.create_offer().await.unwrap();
    assert_eq!(tracks.len(), 3);
    let mids: std::collections::HashSet<_> = tracks.iter().map(|t| t.mid.clone()).collect();
    assert_eq!(mids.len(), 3, "distinct mids: {tracks:?}");
    let answer = subscriber
        .apply_offer(&offer, subscribed(&tracks))
        .await
        .unwrap();
    publisher.apply_answer(&answer).await.unwrap();

    let s = subscriber
        .wait_for_stats(WAIT, |s| {
            s.get("pub:screen_share").is_some_and(|t| t.keyframes >= 1)
                && s.get("pub:screen_share_audio")
                    .is_some_and(|t| t.packets >= 5)
                && s.get("pub:microphone").is_some_and(|t| t.packets >= 30)
        })
        .await
        .unwrap();
    assert_eq!(get(&s, TrackSource::ScreenShareAudio).payload_type, OPUS_PT);
    assert_eq!(get(&s, TrackSource::ScreenShare).payload_type, VP8_PT);
    assert_eq!(get(&s, TrackSource::Microphone).lost, 0, "kept flowing");
    assert_eq!(subscriber.tracks().len(), 3);

    publisher.close().await.unwrap();
    subscriber.close().await.unwrap();
}
