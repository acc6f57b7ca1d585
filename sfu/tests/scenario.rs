//! End-to-end scenario over real UDP on 127.0.0.1: the real engine, and independent str0m
//! clients (non-ICE-lite, each with its own socket and pump thread) as publisher and
//! subscribers. Shows forwarding to two subscribers, the gate cutting video while audio
//! continues, zero leaked video while gated, resumption on the same subscriber track without
//! renegotiation, the receive flag, garbage UDP, and leave.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::UdpSocket;

use common::*;
use greenroom_proto::{CallCid, MediaGate, PeerTarget, SourceSet, TrackSource};
use str0m::format::Codec;
use str0m::RtcConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_to_two_subscribers_with_gate_and_receive_flag() {
    let (sfu, mut events) = start(greenroom_sfu::SfuOptions::default()).await;
    let call: CallCid = "default:room1".parse().unwrap();
    sfu.join(&call, "alice", "u-alice", ALL);
    sfu.join(&call, "bob", "u-bob", ALL);
    sfu.join(&call, "carol", "u-carol", ALL);

    // Alice publishes audio + video.
    let alice = Client::new();
    let (offer, tracks, pending) = alice.publish_offer();
    let answer = sfu.publish("alice", offer, tracks).await.unwrap();
    alice.accept_answer(pending, answer);

    // Bob and Carol get offers with Alice's two tracks (never their own).
    let bob = Client::new();
    let carol = Client::new();
    let mut mids = HashMap::new();
    for (pid, client) in [("bob", &bob), ("carol", &carol)] {
        let (sdp, tracks) = events.offer(pid).await;
        assert_eq!(tracks.len(), 2, "{pid} gets alice's microphone and camera");
        assert!(tracks.iter().all(|t| t.track.participant_id == "alice"));
        assert!(tracks.iter().any(|t| t.track.track_id == "alice:camera"));
        let answer = client.accept_offer(sdp);
        sfu.subscriber_answer(pid, answer).await.unwrap();
        mids.insert(
            pid,
            (
                mid_of(&tracks, TrackSource::Microphone),
                mid_of(&tracks, TrackSource::Camera),
            ),
        );
    }
    assert!(!events.has_offer("alice"), "no offer of her own tracks");
    let (bob_a, bob_v) = mids["bob"].clone();
    let (carol_a, carol_v) = mids["carol"].clone();

    wait_for("all peers connected", || {
        alice.is_connected() && bob.is_connected() && carol.is_connected()
    })
    .await;
    alice.set_sending(true);

    // Garbage on the media port must disturb nobody.
    let junk = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..50u8 {
        let mut p = vec![0x80, 0x60 + (i % 3), i, i, 1, 2, 3, 4, 5, 6, 7, 8];
        p.extend(std::iter::repeat_n(i, usize::from(i)));
        junk.send_to(&p, sfu.local_addr()).unwrap();
        junk.send_to(&[i; 3], sfu.local_addr()).unwrap();
    }

    wait_for("audio+video at both subscribers", || {
        bob.count(&bob_a) > 20
            && bob.count(&bob_v) > 20
            && carol.count(&carol_a) > 20
            && carol.count(&carol_v) > 20
    })
    .await;

    // Revoke the camera: video stops, audio continues.
    sfu.set_gate(
        "alice",
        MediaGate {
            send: SourceSet::EMPTY.with(TrackSource::Microphone),
            receive: true,
        },
    );
    let a0 = bob.count(&bob_a);
    // Packets already in flight before the gate change may still land; let them.
    wait_for("audio continues", || bob.count(&bob_a) > a0 + 10).await;
    let (bv, cv) = (bob.received(&bob_v), carol.received(&carol_v));
    let (a1, c1) = (bob.count(&bob_a), carol.count(&carol_a));
    // Alice keeps sending video all along: none of it may leak.
    wait_for("more audio while gated", || {
        bob.count(&bob_a) > a1 + 50 && carol.count(&carol_a) > c1 + 50
    })
    .await;
    assert_eq!(bob.count(&bob_v), bv.count, "no video leaked to bob");
    assert_eq!(carol.count(&carol_v), cv.count, "no video leaked to carol");

    // Restore: the same subscriber track resumes, no renegotiation, continuous sequence.
    sfu.set_gate("alice", ALL);
    wait_for("video resumes", || {
        bob.count(&bob_v) > bv.count + 10 && carol.count(&carol_v) > cv.count + 10
    })
    .await;
    let bv2 = bob.received(&bob_v);
    assert_eq!(bv2.ssrcs.len(), 1, "same send stream on the same mid");
    let last_before = *bv.seqs.iter().max().unwrap();
    let first_after = bv2.seqs[bv.seqs.len()..].iter().min().copied().unwrap();
    assert_eq!(
        first_after,
        last_before + 1,
        "seamless sequence across the gate"
    );
    assert!(!events.has_offer("bob") && !events.has_offer("carol"));

    // Carol stops receiving: she gets nothing, Bob is unaffected.
    sfu.set_gate(
        "carol",
        MediaGate {
            send: SourceSet::ALL,
            receive: false,
        },
    );
    let b0 = bob.count(&bob_a);
    wait_for("bob audio", || bob.count(&bob_a) > b0 + 10).await;
    let (ca, cvv) = (carol.count(&carol_a), carol.count(&carol_v));
    let b1 = bob.count(&bob_a);
    wait_for("bob audio and video", || {
        bob.count(&bob_a) > b1 + 50 && bob.count(&bob_v) > bv2.count + 40
    })
    .await;
    assert_eq!(carol.count(&carol_a), ca, "receive=false: no audio");
    assert_eq!(carol.count(&carol_v), cvv, "receive=false: no video");
    sfu.set_gate("carol", ALL);
    wait_for("carol receives again", || {
        carol.count(&carol_a) > ca + 10 && carol.count(&carol_v) > cvv + 5
    })
    .await;

    // Active speaker: alice's audio level is reported for the call.
    wait_for("speakers", || {
        events.drain();
        events
            .speakers
            .iter()
            .any(|s| s.first().is_some_and(|(p, _)| p == "alice"))
    })
    .await;

    events.drain();
    assert!(
        events.failed.is_empty(),
        "no peer failed: {:?}",
        events.failed
    );

    // A panic inside str0m while driving Carol's subscriber peer ends that peer only.
    sfu.inject_panic("carol", PeerTarget::Subscriber);
    wait_for("carol's peer failed", || {
        events.drain();
        !events.failed.is_empty()
    })
    .await;
    assert_eq!(events.failed.len(), 1);
    assert_eq!(events.failed[0].0, "carol");
    // Carol is offered alice's tracks again on a fresh subscriber peer.
    let (_, fresh) = events.offer("carol").await;
    assert_eq!(fresh.len(), 2);
    // Bob keeps receiving both tracks.
    let (ba, bvv) = (bob.count(&bob_a), bob.count(&bob_v));
    wait_for("bob unaffected", || {
        bob.count(&bob_a) > ba + 20 && bob.count(&bob_v) > bvv + 10
    })
    .await;

    // Alice leaves: the others are re-offered without her tracks.
    sfu.leave("alice");
    let (_, tracks) = events.offer("bob").await;
    assert!(tracks.is_empty(), "bob: alice's tracks are gone");
    events.drain();
    assert_eq!(
        events.failed.len(),
        1,
        "only carol's peer failed: {:?}",
        events.failed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_pinned_to_shards_and_each_shard_forwards() {
    let (sfu, mut events) = start(greenroom_sfu::SfuOptions {
        shards: 2,
        ..Default::default()
    })
    .await;
    assert_eq!(sfu.shard_count(), 2);
    let one: CallCid = "default:one".parse().unwrap();
    let two: CallCid = "default:two".parse().unwrap();
    let (_a, a_sub, (a_audio, a_video)) =
        publish_and_subscribe(&sfu, &mut events, &one, ("alice", "bob"), true).await;
    // The second call's subscriber runs without bandwidth estimation (an audio room's choice).
    let (_d, d_sub, (d_audio, d_video)) =
        publish_and_subscribe(&sfu, &mut events, &two, ("dave", "erin"), false).await;

    // Both members of a call share its shard; the second call went to the idle shard.
    let shard_one = sfu.shard_of("alice").unwrap();
    let shard_two = sfu.shard_of("dave").unwrap();
    assert_eq!(sfu.shard_of("bob"), Some(shard_one));
    assert_eq!(sfu.shard_of("erin"), Some(shard_two));
    assert_ne!(shard_one, shard_two, "two calls on two shards");

    // Media flows in both calls through the one UDP port.
    wait_for("media in both calls", || {
        a_sub.count(&a_audio) > 20
            && a_sub.count(&a_video) > 20
            && d_sub.count(&d_audio) > 20
            && d_sub.count(&d_video) > 20
    })
    .await;
    let text = sfu.metrics_text();
    for shard in [shard_one, shard_two] {
        let line = format!("greenroom_shard_peers{{shard=\"{shard}\"}} 3\n");
        assert!(text.contains(&line), "3 peers on shard {shard}: {text}");
    }
    assert!(text.contains("greenroom_peers 6\n"), "summed over shards");

    // Gating on one shard leaves the other alone.
    sfu.set_gate(
        "dave",
        MediaGate {
            send: SourceSet::EMPTY.with(TrackSource::Microphone),
            receive: true,
        },
    );
    let d0 = d_sub.count(&d_audio);
    wait_for("dave's audio continues", || d_sub.count(&d_audio) > d0 + 10).await;
    let (dv, av) = (d_sub.count(&d_video), a_sub.count(&a_video));
    let d1 = d_sub.count(&d_audio);
    wait_for("more audio on shard two, video on shard one", || {
        d_sub.count(&d_audio) > d1 + 25 && a_sub.count(&a_video) > av + 25
    })
    .await;
    assert_eq!(d_sub.count(&d_video), dv, "dave's video gated");

    // When the first call empties, its shard is the least loaded: a new call goes there.
    sfu.leave("alice");
    sfu.leave("bob");
    let three: CallCid = "default:three".parse().unwrap();
    sfu.join(&three, "frank", "u-frank", ALL);
    assert_eq!(sfu.shard_of("frank"), Some(shard_one));
    assert_eq!(sfu.shard_of("alice"), None);
    // Moving a participant to a call on another shard takes its media along.
    sfu.join(&two, "frank", "u-frank", ALL);
    assert_eq!(sfu.shard_of("frank"), Some(shard_two));
    assert!(events.failed.is_empty(), "{:?}", events.failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_vp9_and_av1_publishers_reach_a_subscriber_in_their_codec() {
    let (sfu, mut events) = start(greenroom_sfu::SfuOptions::default()).await;
    let call: CallCid = "default:codecs".parse().unwrap();
    for pid in ["h", "v", "a", "sub"] {
        sfu.join(&call, pid, &format!("u-{pid}"), ALL);
    }
    // Each publisher offers only one video codec, so the server must take that one.
    let only = |codec: Codec| {
        let cfg = RtcConfig::new().clear_codecs().enable_opus(true, false);
        let cfg = match codec {
            Codec::H264 => cfg.enable_h264(true),
            Codec::Av1 => cfg.enable_av1(true),
            _ => cfg.enable_vp9(true),
        };
        Client::with_config(cfg)
    };
    let mut pubs = Vec::new();
    for (pid, codec, name) in [
        ("h", Codec::H264, "H264"),
        ("v", Codec::Vp9, "VP9"),
        ("a", Codec::Av1, "AV1"),
    ] {
        let c = only(codec);
        let (offer, tracks, pending) = c.publish_offer_with(codec);
        assert!(offer.contains(name), "{offer}");
        assert!(!offer.contains("VP8"), "{offer}");
        let answer = sfu.publish(pid, offer, tracks).await.unwrap();
        c.accept_answer(pending, answer);
        pubs.push(c);
    }
    // The subscriber (every codec enabled) gets both cameras; renegotiations may queue.
    let sub = Client::new();
    let mut video_mids: HashMap<String, String> = HashMap::new();
    while video_mids.len() < 3 {
        let (sdp, tracks) = events.offer("sub").await;
        let answer = sub.accept_offer(sdp);
        sfu.subscriber_answer("sub", answer).await.unwrap();
        for t in tracks
            .iter()
            .filter(|t| t.track.source == TrackSource::Camera)
        {
            video_mids.insert(t.track.participant_id.clone(), t.mid.clone());
        }
    }
    wait_for("all connected", || {
        sub.is_connected() && pubs.iter().all(Client::is_connected)
    })
    .await;
    for p in &pubs {
        p.set_sending(true);
    }
    let (h_mid, v_mid, a_mid) = (
        video_mids["h"].clone(),
        video_mids["v"].clone(),
        video_mids["a"].clone(),
    );
    wait_for("H.264, VP9 and AV1 video at the subscriber", || {
        sub.count(&h_mid) > 20 && sub.count(&v_mid) > 20 && sub.count(&a_mid) > 20
    })
    .await;
    // Each track arrives with the payload type the subscriber negotiated for its codec.
    for (mid, want) in [
        (h_mid, Codec::H264),
        (v_mid, Codec::Vp9),
        (a_mid, Codec::Av1),
    ] {
        let pts = sub.received(&mid).pts;
        let codecs: Vec<Codec> = sub.call(move |st| {
            pts.iter()
                .map(|pt| {
                    st.rtc
                        .codec_config()
                        .find(|p| *p.pt() == *pt)
                        .map(|p| p.spec().codec)
                        .unwrap()
                })
                .collect()
        });
        assert_eq!(codecs, vec![want], "mid {mid}");
    }
    assert!(events.failed.is_empty(), "{:?}", events.failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_fan_out_is_driven_on_the_worker_pool_and_reaches_everyone() {
    let (sfu, mut events) = start(greenroom_sfu::SfuOptions {
        shards: 1,
        parallel_fanout_min: 32,
        // The pool even on an idle shard (by default it waits for a loaded one).
        parallel_busy: 0.0,
        // The pool drives str0m's sends: the speaker's video stays on str0m (audio and
        // single-layer video are sent lean, without a drive).
        lean_video: false,
        ..Default::default()
    })
    .await;
    let call: CallCid = "audio_room:big".parse().unwrap();
    const LISTENERS: usize = 40;
    sfu.join(&call, "speaker", "u-speaker", ALL);
    let speaker = Client::new();
    let (offer, tracks, pending) = speaker.publish_offer();
    let answer = sfu.publish("speaker", offer, tracks).await.unwrap();
    speaker.accept_answer(pending, answer);
    let mut listeners = Vec::new();
    for i in 0..LISTENERS {
        let pid = format!("l{i}");
        sfu.join(&call, &pid, &format!("u-{pid}"), ALL);
        let c = Client::new();
        let (sdp, tracks) = events.offer(&pid).await;
        let answer = c.accept_offer(sdp);
        sfu.subscriber_answer(&pid, answer).await.unwrap();
        listeners.push((c, mid_of(&tracks, TrackSource::Microphone)));
    }
    wait_for("everyone connected", || {
        speaker.is_connected() && listeners.iter().all(|(c, _)| c.is_connected())
    })
    .await;
    speaker.set_sending(true);
    wait_for("audio at every listener", || {
        listeners.iter().all(|(c, mid)| c.count(mid) > 20)
    })
    .await;
    // Every listener got one continuous stream (no duplicates, no reordering by the pool).
    for (c, mid) in &listeners {
        let seqs = c.received(mid).seqs;
        assert!(seqs.windows(2).all(|w| w[1] > w[0]), "{seqs:?}");
    }
    let text = sfu.metrics_text();
    let fanouts: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("greenroom_engine_parallel_fanouts_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(fanouts > 0.0, "the pool never drove a fan-out:\n{text}");
    assert!(events.failed.is_empty(), "{:?}", events.failed);
}
