//! Media-plane hardening over real UDP on 127.0.0.1 with independent str0m clients: a dead
//! engine shard does not stop the others, spoofed and garbage datagrams are dropped and counted
//! (also with one shard), the socket's kernel figures are exported, and a re-grant right after
//! a keyframe request during the revoke still gets its subscribers a keyframe at once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::*;
use greenroom_proto::{CallCid, MediaGate, SourceSet, TrackSource};
use greenroom_sfu::{MediaHealth, MediaStatus, SfuOptions};

/// The value of an unlabelled metric line `name value` in a Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_shard_fails_its_peers_and_the_other_shard_keeps_forwarding() {
    let (sfu, mut events) = start(SfuOptions {
        shards: 2,
        ..Default::default()
    })
    .await;
    let one: CallCid = "default:one".parse().unwrap();
    let two: CallCid = "default:two".parse().unwrap();
    let (_a, a_sub, (a_audio, _)) =
        publish_and_subscribe(&sfu, &mut events, &one, ("alice", "bob"), false).await;
    let (_d, d_sub, (d_audio, d_video)) =
        publish_and_subscribe(&sfu, &mut events, &two, ("dave", "erin"), false).await;
    let (dead, live) = (
        sfu.shard_of("alice").unwrap(),
        sfu.shard_of("dave").unwrap(),
    );
    assert_ne!(dead, live);
    wait_for("media in both calls", || {
        a_sub.count(&a_audio) > 10 && d_sub.count(&d_video) > 10
    })
    .await;
    assert_eq!(sfu.health().status, MediaStatus::Ok);

    // The shard's loop panics outside the per-peer isolation. Alice's client keeps sending
    // to it: the receive thread must drop those datagrams and keep serving the other shard.
    sfu.kill_shard(dead);
    wait_for("the shard is reported dead", || sfu.health().alive == 1).await;
    assert_eq!(
        sfu.health(),
        MediaHealth {
            status: MediaStatus::Degraded,
            shards: 2,
            alive: 1,
        }
    );
    let json = serde_json::to_string(&sfu.health()).unwrap();
    assert_eq!(json, r#"{"status":"degraded","shards":2,"alive":1}"#);
    wait_for("alice and bob are told their media failed", || {
        events.drain();
        ["alice", "bob"]
            .iter()
            .all(|p| events.failed.iter().any(|(f, _)| f == p))
    })
    .await;
    assert!(
        !events
            .failed
            .iter()
            .any(|(p, _)| p == "dave" || p == "erin"),
        "{:?}",
        events.failed
    );
    let (da, dv) = (d_sub.count(&d_audio), d_sub.count(&d_video));
    wait_for("the live shard keeps forwarding audio and video", || {
        d_sub.count(&d_audio) > da + 25 && d_sub.count(&d_video) > dv + 25
    })
    .await;
    // The dead shard's call moves to the live shard at its next join; new calls go there too.
    sfu.join(&one, "alice", "u-alice", ALL);
    assert_eq!(sfu.shard_of("alice"), Some(live));
    let three: CallCid = "default:three".parse().unwrap();
    sfu.join(&three, "frank", "u-frank", ALL);
    assert_eq!(sfu.shard_of("frank"), Some(live));
    assert!(sfu.metrics_text().contains("greenroom_udp_unrouted_total"));
}

/// A STUN binding request for `ufrag` with a MESSAGE-INTEGRITY that cannot be right.
fn forged_stun(ufrag: &str) -> Vec<u8> {
    let user = format!("{ufrag}:attacker");
    let mut attrs = Vec::new();
    attrs.extend_from_slice(&0x0006u16.to_be_bytes());
    attrs.extend_from_slice(&(user.len() as u16).to_be_bytes());
    attrs.extend_from_slice(user.as_bytes());
    while attrs.len() % 4 != 0 {
        attrs.push(0);
    }
    attrs.extend_from_slice(&0x0008u16.to_be_bytes());
    attrs.extend_from_slice(&20u16.to_be_bytes());
    attrs.extend_from_slice(&[0xab; 20]);
    let mut m = vec![0x00, 0x01];
    m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    m.extend_from_slice(&[9; 12]);
    m.extend_from_slice(&attrs);
    m
}

/// The shape of a DTLS 1.2 ClientHello record (content type 22, version 1.2).
fn client_hello() -> Vec<u8> {
    let mut m = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 40, 1, 0, 0, 36];
    m.resize(13 + 40, 0x11);
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_dtls_and_garbage_are_dropped_and_counted_with_one_shard() {
    let (sfu, mut events) = start(SfuOptions {
        shards: 1,
        ..Default::default()
    })
    .await;
    let call: CallCid = "default:spoof".parse().unwrap();
    sfu.join(&call, "alice", "u-alice", ALL);
    sfu.join(&call, "bob", "u-bob", ALL);
    let alice = Client::new();
    let (offer, tracks, pending) = alice.publish_offer();
    let answer = sfu.publish("alice", offer, tracks).await.unwrap();
    let ufrag = answer
        .lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .unwrap()
        .trim()
        .to_owned();

    // Before alice's client says anything, an attacker on another address sends garbage, a
    // binding request naming alice's server ufrag with a forged integrity, and then DTLS
    // ClientHellos that would race the real handshake.
    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    let server = sfu.local_addr();
    for i in 0..5u8 {
        attacker.send_to(&[0xde, 0xad, i], server).unwrap();
    }
    attacker.send_to(&forged_stun(&ufrag), server).unwrap();
    for _ in 0..3 {
        attacker.send_to(&client_hello(), server).unwrap();
    }
    wait_for("9 datagrams counted as unrouted", || {
        metric(&sfu.metrics_text(), "greenroom_udp_unrouted_total").unwrap() >= 9.0
    })
    .await;
    let text = sfu.metrics_text();
    assert_eq!(
        metric(&text, "greenroom_udp_unrouted_total"),
        Some(9.0),
        "every attack datagram dropped and counted once: {text}"
    );

    // The real client connects and media flows.
    alice.accept_answer(pending, answer);
    let bob = Client::new();
    let (sdp, tracks) = events.offer("bob").await;
    let answer = bob.accept_offer(sdp);
    sfu.subscriber_answer("bob", answer).await.unwrap();
    wait_for("both connected", || {
        alice.is_connected() && bob.is_connected()
    })
    .await;
    alice.set_sending(true);
    let video = mid_of(&tracks, TrackSource::Camera);
    wait_for("video reaches bob", || bob.count(&video) > 20).await;
    // More spoofed DTLS from the attacker while the session runs: dropped, media unharmed.
    let before = metric(&sfu.metrics_text(), "greenroom_udp_unrouted_total").unwrap();
    for _ in 0..3 {
        attacker.send_to(&client_hello(), server).unwrap();
    }
    wait_for("3 more counted", || {
        metric(&sfu.metrics_text(), "greenroom_udp_unrouted_total").unwrap() >= before + 3.0
    })
    .await;
    let v = bob.count(&video);
    wait_for("video keeps flowing", || bob.count(&video) > v + 20).await;
    assert!(events.failed.is_empty(), "{:?}", events.failed);

    // The socket's kernel figures are exported as numbers.
    let text = sfu.metrics_text();
    let drops = metric(&text, "greenroom_udp_receive_drops_total");
    assert!(drops.is_some_and(|d| d >= 0.0), "{text}");
    let rcvbuf = metric(
        &text,
        "greenroom_udp_socket_buffer_bytes{direction=\"receive\"}",
    );
    assert!(rcvbuf.is_some_and(|b| b > 0.0), "{text}");
    assert!(metric(&text, "greenroom_udp_queue_dropped_total").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regrant_right_after_a_keyframe_request_during_the_revoke_gets_a_keyframe_at_once() {
    let (sfu, mut events) = start(SfuOptions::default()).await;
    let call: CallCid = "default:regrant".parse().unwrap();
    let (alice, bob, (_, video)) =
        publish_and_subscribe(&sfu, &mut events, &call, ("alice", "bob"), false).await;
    // Keyframes only when asked: a keyframe at bob after the re-grant must be the answer to
    // the re-grant's own request.
    alice.call(|st| st.periodic_keyframes = false);
    wait_for("video with a keyframe reaches bob", || {
        let rx = bob.received(&video);
        rx.count > 20 && rx.keyframes > 0
    })
    .await;

    // Revoke the camera; the client keeps sending (its packets are gated).
    let audio_only = MediaGate {
        send: SourceSet::EMPTY.with(TrackSource::Microphone),
        receive: true,
    };
    sfu.set_gate("alice", audio_only);
    let drops = || {
        let text = sfu.metrics_text();
        metric(
            &text,
            "greenroom_packets_dropped_total{capability=\"send-video\"}",
        )
        .unwrap()
    };
    let d0 = drops();
    wait_for("video is gated", || drops() > d0 + 5.0).await;
    let asked = alice.keyframe_requests();

    // Bob asks for a keyframe during the revoke; the re-grant follows 0.1 s later.
    bob.request_keyframe(&video);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        alice.keyframe_requests(),
        asked,
        "a gated publisher is not asked for keyframes nobody receives"
    );
    let keyframes = bob.received(&video).keyframes;
    sfu.set_gate("alice", ALL);
    wait_for("the re-grant asks alice for a keyframe", || {
        alice.keyframe_requests() > asked
    })
    .await;
    wait_for("bob receives the keyframe", || {
        bob.received(&video).keyframes > keyframes
    })
    .await;
    assert!(events.failed.is_empty(), "{:?}", events.failed);
}
