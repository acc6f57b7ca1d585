//! A call spanning nodes: three media planes in one process on 127.0.0.1, a publisher on node
//! A, subscribers on B (two) and C (one), media relayed A -> B and A -> C once per node.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::*;
use greenroom_proto::{CallCid, MediaGate, SourceSet, TrackSource};
use greenroom_sfu::{JoinOptions, RelayNode, RelayOptions, RelayStats, Sfu, SfuOptions};

const SECRET: [u8; 32] = [42; 32];

async fn node(id: &str, secret: [u8; 32]) -> (Sfu, Events) {
    start(SfuOptions {
        shards: 2,
        relay: Some(RelayOptions {
            bind: "127.0.0.1:0".parse().unwrap(),
            node_id: id.into(),
            secret,
        }),
        ..SfuOptions::default()
    })
    .await
}

fn relay_node(id: &str, sfu: &Sfu) -> RelayNode {
    RelayNode {
        node_id: id.into(),
        addr: sfu.relay_addr().unwrap(),
    }
}

fn stats(sfu: &Sfu) -> RelayStats {
    sfu.relay_stats().unwrap()
}

/// A subscriber on some node: its client and its (audio, video) mids.
struct Sub {
    client: Client,
    mids: (String, String),
}

impl Sub {
    fn counts(&self) -> (u64, u64) {
        (
            self.client.count(&self.mids.0),
            self.client.count(&self.mids.1),
        )
    }
}

struct Cluster {
    call: CallCid,
    a: Sfu,
    b: Sfu,
    c: Sfu,
    publisher: Client,
    /// b1, b2 on B; c1 on C.
    subs: Vec<Sub>,
    /// Receives what A relays to a fourth, fake node ("sniff").
    sniffer: UdpSocket,
    /// C's events.
    ec: Events,
}

const NO_VIDEO_BWE: JoinOptions = JoinOptions {
    bandwidth_estimation: false,
};

/// Answers the subscriber offer of `pid` on a node that holds the remote publisher's tracks.
async fn subscribe(sfu: &Sfu, events: &mut Events, pid: &str) -> Sub {
    let client = Client::new();
    let (sdp, tracks) = events.offer(pid).await;
    assert_eq!(tracks.len(), 2, "both remote tracks offered: {tracks:?}");
    assert!(tracks.iter().all(|t| t.track.participant_id == "pub"));
    assert!(tracks.iter().all(|t| t.track.user_id == "u-pub"));
    let answer = client.accept_offer(sdp);
    sfu.subscriber_answer(pid, answer).await.unwrap();
    let mids = (
        mid_of(&tracks, TrackSource::Microphone),
        mid_of(&tracks, TrackSource::Camera),
    );
    Sub { client, mids }
}

async fn cluster() -> Cluster {
    let call: CallCid = "default:spanning".parse().unwrap();
    let (a, mut ea) = node("A", SECRET).await;
    let (b, mut eb) = node("B", SECRET).await;
    let (c, mut ec) = node("C", SECRET).await;
    let sniffer = UdpSocket::bind("127.0.0.1:0").unwrap();
    sniffer
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let sniff = RelayNode {
        node_id: "sniff".into(),
        addr: sniffer.local_addr().unwrap(),
    };
    // The home node's control plane tells each node who else carries the call, and which
    // participant lives where (join_remote), with the gate and its version.
    a.join(&call, "pub", "u-pub", ALL);
    a.set_call_nodes(&call, vec![relay_node("B", &b), relay_node("C", &c), sniff]);
    for (sfu, pids) in [(&b, &["b1", "b2"][..]), (&c, &["c1"][..])] {
        sfu.join_remote(&call, "pub", "u-pub", "A", ALL, 1);
        for pid in pids {
            sfu.join_with(&call, pid, &format!("u-{pid}"), ALL, NO_VIDEO_BWE);
        }
        sfu.set_call_nodes(&call, vec![relay_node("A", &a)]);
    }
    let publisher = Client::new();
    let (offer, tracks, pending) = publisher.publish_offer();
    let answer = a.publish("pub", offer, tracks).await.unwrap();
    publisher.accept_answer(pending, answer);
    let subs = vec![
        subscribe(&b, &mut eb, "b1").await,
        subscribe(&b, &mut eb, "b2").await,
        subscribe(&c, &mut ec, "c1").await,
    ];
    ea.drain();
    wait_for("every client connected", || {
        publisher.is_connected() && subs.iter().all(|s| s.client.is_connected())
    })
    .await;
    publisher.set_sending(true);
    Cluster {
        call,
        a,
        b,
        c,
        publisher,
        subs,
        sniffer,
        ec,
    }
}

fn gate(send: &[TrackSource]) -> MediaGate {
    MediaGate {
        send: send.iter().copied().collect::<SourceSet>(),
        receive: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_on_one_node_reaches_subscribers_on_two_others_once_per_node() {
    let k = cluster().await;
    // Real media at every client: audio and decodable video (keyframes arrive).
    wait_for("audio and video on B and C", || {
        k.subs.iter().all(|s| {
            let (a, v) = s.counts();
            a >= 50 && v >= 30 && s.client.received(&s.mids.1).keyframes >= 1
        })
    })
    .await;
    for s in &k.subs {
        let v = s.client.received(&s.mids.1);
        assert_eq!(v.ssrcs.len(), 1, "one outgoing video stream");
        // Consecutive sequence numbers, as a decoder needs them (no reordering on loopback).
        let gaps = v.seqs.windows(2).filter(|w| w[1] != w[0] + 1).count();
        assert!(
            gaps <= v.seqs.len() / 10,
            "video sequence broken: {gaps} gaps"
        );
    }
    // Once per node: A encodes each packet once and sends it to B, C and the sniffer.
    let sa = stats(&k.a);
    assert!(sa.media_encoded > 0);
    let sent = sa.media_out + sa.dropped("send_error");
    assert_eq!(sent, 3 * sa.media_encoded, "{sa:?}");
    // B received at most what A encoded, although two subscribers there got it.
    let sb = stats(&k.b);
    let sa = stats(&k.a);
    assert!(sb.media_in <= sa.media_encoded, "{sb:?} vs {sa:?}");
    assert!(sb.announces_in >= 1 && sa.announces_out >= 1);
    let total_b: u64 = k.subs[..2]
        .iter()
        .map(|s| s.counts().0 + s.counts().1)
        .sum();
    assert!(total_b > sb.media_in, "the fan-out happens on B");
    // The datagrams on the wire carry the RTP payload, not one per subscriber.
    let mut buf = [0u8; 2048];
    let (n, _) = k.sniffer.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..2], b"GR");
    assert!(n > 16);

    // A subscriber on B asks for a keyframe: the request travels to A, and A asks the publisher.
    let settled = |sfu: &Sfu| stats(sfu).keyframe_requests_in;
    let mut last = (settled(&k.a), k.publisher.keyframe_requests());
    let quiet_since = Instant::now();
    // Wait until the joins' own keyframe requests are over (a second without one).
    while quiet_since.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = (settled(&k.a), k.publisher.keyframe_requests());
        if now == last {
            break;
        }
        last = now;
    }
    let out_b = stats(&k.b).keyframe_requests_out;
    k.subs[0].client.request_keyframe(&k.subs[0].mids.1);
    wait_for("keyframe request relayed from B to A's publisher", || {
        stats(&k.b).keyframe_requests_out > out_b
            && settled(&k.a) > last.0
            && k.publisher.keyframe_requests() > last.1
    })
    .await;
    assert!(k.b.metrics_text().contains("greenroom_relay_packets_total"));

    // The remote publisher leaves C: its tracks leave c1's offer, and what A still relays to C
    // is dropped there.
    let mut k = k;
    k.c.leave("pub");
    let (sdp, tracks) = k.ec.offer("c1").await;
    assert!(
        tracks.iter().all(|t| t.track.participant_id != "pub"),
        "{tracks:?}"
    );
    let answer = k.subs[2].client.accept_offer(sdp);
    k.c.subscriber_answer("c1", answer).await.unwrap();
    let dropped = stats(&k.c).dropped("unknown_track");
    wait_for("C drops the gone participant's packets", || {
        stats(&k.c).dropped("unknown_track") > dropped + 20
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_versioned_revoke_stops_relayed_media_everywhere_and_an_older_version_never_reopens() {
    let k = cluster().await;
    let nodes = [&k.a, &k.b, &k.c];
    wait_for("media on every subscriber", || {
        k.subs
            .iter()
            .all(|s| s.counts().0 >= 20 && s.counts().1 >= 10)
    })
    .await;
    // Revoke on every node (the receiving nodes first: the publisher's node still sends, the
    // adversarial publisher keeps sending throughout).
    for sfu in [&k.b, &k.c, &k.a] {
        assert!(sfu.set_gate_versioned("pub", gate(&[]), 2));
    }
    // What was in flight before the revoke may still land; then nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before: Vec<(u64, u64)> = k.subs.iter().map(Sub::counts).collect();
    // An older or equal version never re-opens the gate, on any node.
    for sfu in nodes {
        assert!(!sfu.set_gate_versioned("pub", ALL, 1));
        assert!(!sfu.set_gate_versioned("pub", ALL, 2));
        assert_eq!(sfu.gate("pub").unwrap().send, SourceSet::EMPTY);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after: Vec<(u64, u64)> = k.subs.iter().map(Sub::counts).collect();
    assert_eq!(
        before, after,
        "packets reached subscribers after the revoke"
    );
    // The publisher did keep sending: A dropped its packets at the gate.
    assert!(k
        .a
        .metrics_text()
        .contains("greenroom_packets_dropped_total"));

    // Re-grant with a newer version: media resumes everywhere.
    for sfu in nodes {
        assert!(sfu.set_gate_versioned("pub", ALL, 3));
    }
    wait_for("media resumed on every subscriber", || {
        k.subs
            .iter()
            .zip(&after)
            .all(|(s, b)| s.counts().0 >= b.0 + 20 && s.counts().1 >= b.1 + 10)
    })
    .await;

    // A receiving node that applied a revoke (4) and a re-grant (5) drops packets stamped
    // before the revoke even though its gate is open: A has not seen version 4 yet.
    assert!(k.b.set_gate_versioned("pub", gate(&[]), 4));
    assert!(k.b.set_gate_versioned("pub", ALL, 5));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stale0 = stats(&k.b).dropped("stale_version");
    let b_before: Vec<(u64, u64)> = k.subs[..2].iter().map(Sub::counts).collect();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let b_after: Vec<(u64, u64)> = k.subs[..2].iter().map(Sub::counts).collect();
    assert_eq!(
        b_before, b_after,
        "B forwarded packets stamped before its revoke"
    );
    assert!(stats(&k.b).dropped("stale_version") > stale0);
    // C is unaffected.
    let c0 = k.subs[2].counts();
    wait_for("C still receives", || k.subs[2].counts().0 > c0.0 + 10).await;
    // A learns version 5: its stamps pass B's floor again.
    assert!(k.a.set_gate_versioned("pub", ALL, 5));
    wait_for("B resumes", || {
        k.subs[..2]
            .iter()
            .zip(&b_after)
            .all(|(s, b)| s.counts().0 >= b.0 + 20)
    })
    .await;
    let _ = &k.call;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_truncated_and_foreign_datagrams_are_dropped_and_counted() {
    let k = cluster().await;
    wait_for("media on B", || k.subs[0].counts().0 >= 20).await;
    // Genuine datagrams from A, captured by the fake node.
    let mut genuine = Vec::new();
    let mut buf = [0u8; 4096];
    while genuine.len() < 20 {
        let (n, _) = k.sniffer.recv_from(&mut buf).unwrap();
        genuine.push(buf[..n].to_vec());
    }
    let to_b = k.b.relay_addr().unwrap();
    let evil = UdpSocket::bind("127.0.0.1:0").unwrap();
    let send = |d: &[u8]| {
        evil.send_to(d, to_b).unwrap();
    };
    let base = stats(&k.b);
    let rounds = 50u64;
    // A second call on B, also with node A: a datagram replayed into it fails the MAC (the
    // call key is signed).
    let other: CallCid = "default:other".parse().unwrap();
    k.b.set_call_nodes(&other, vec![relay_node("A", &k.a)]);
    let other_key = {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"default:other");
        d.as_ref()[..8].to_vec()
    };
    for i in 0..rounds as usize {
        let g = &genuine[i % genuine.len()];
        // Wrong MAC.
        let mut d = g.clone();
        let last = d.len() - 1;
        d[last] ^= 0x55;
        send(&d);
        // Replayed into another call.
        let mut d = g.clone();
        d[4..12].copy_from_slice(&other_key);
        send(&d);
        // A call B does not carry.
        let mut d = g.clone();
        d[4] ^= 0xff;
        send(&d);
        // A node outside the call's node set ("Z" instead of "A").
        let mut d = g.clone();
        d[13] = b'Z';
        send(&d);
        // Truncated.
        send(&g[..(i % 12) + 1]);
        // Garbage.
        let garbage: Vec<u8> = (0..(i * 7 % 300)).map(|j| (j * 31 + i) as u8).collect();
        send(&garbage);
    }
    wait_for("every forged datagram counted", || {
        let s = stats(&k.b);
        s.dropped("bad_mac") >= base.dropped("bad_mac") + 2 * rounds
            && s.dropped("unknown_call") >= base.dropped("unknown_call") + rounds
            && s.dropped("unknown_node") >= base.dropped("unknown_node") + rounds
            && s.dropped("malformed") >= base.dropped("malformed") + 2 * rounds
    })
    .await;
    // Nothing forged reached a subscriber as media, and B keeps serving.
    assert_eq!(k.b.health().alive, k.b.shard_count());
    let c0 = k.subs[0].counts();
    wait_for("B still forwards", || k.subs[0].counts().0 > c0.0 + 10).await;
    let _ = (&k.c, &k.call, &k.publisher);
}

/// A revoke and a newer grant fired at once, hundreds of times: the newest version always
/// wins, whichever call lands first, local and remote participants alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_versioned_gate_updates_end_at_the_newest_version() {
    let (sfu, _events) = node("A", SECRET).await;
    let call: CallCid = "default:race".parse().unwrap();
    sfu.join(&call, "local", "u-local", ALL);
    sfu.join_remote(&call, "remote", "u-remote", "B", ALL, 0);
    let revoke = gate(&[]);
    for round in 0..300u64 {
        for pid in ["local", "remote"] {
            let v = 2 * round + 1;
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
            let (s1, b1) = (sfu.clone(), barrier.clone());
            let t1 = std::thread::spawn(move || {
                b1.wait();
                s1.set_gate_versioned(pid, revoke, v)
            });
            let (s2, b2) = (sfu.clone(), barrier);
            let t2 = std::thread::spawn(move || {
                b2.wait();
                s2.set_gate_versioned(pid, ALL, v + 1)
            });
            let (revoked, granted) = (t1.join().unwrap(), t2.join().unwrap());
            assert!(granted, "round {round}: the newest version must apply");
            assert_eq!(
                sfu.gate(pid).unwrap(),
                ALL,
                "round {round} {pid} (revoke {revoked})"
            );
            // Neither is newer than what is held now.
            assert!(!sfu.set_gate_versioned(pid, revoke, v + 1));
        }
    }
}
