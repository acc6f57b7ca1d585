//! A participant removed (kicked) while its peers are still connected, in a three-party call:
//! the two others keep their subscriber peers (no `PeerFailed`), answer the re-offer without the
//! removed tracks and keep receiving each other. The BUNDLE tag (first bundled section) never
//! changes, even when its producer is the one kicked (Chromium closes the transport when the tag
//! is rejected), and no offer has every section stopped (no BUNDLE group); a newcomer's media
//! then reaches the same client peers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;

use common::*;
use greenroom_proto::{CallCid, TrackSource};

/// Every offer keeps at least one accepted (port != 0) section in its BUNDLE group.
fn assert_bundled(pid: &str, sdp: &str) {
    let group: Vec<&str> = sdp
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("a=group:BUNDLE"))
        .map(|g| g.split_whitespace().collect())
        .unwrap_or_default();
    assert!(
        !group.is_empty(),
        "{pid}: offer without a BUNDLE group:\n{sdp}"
    );
    assert!(
        sdp.lines().any(|l| l.starts_with("m=")
            && !l.starts_with("m=audio 0 ")
            && !l.starts_with("m=video 0 ")),
        "{pid}: offer with every section stopped:\n{sdp}"
    );
}

/// The BUNDLE tag: the first mid of the BUNDLE group, whose transport the others share.
fn bundle_tag(sdp: &str) -> String {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix("a=group:BUNDLE "))
        .and_then(|g| g.split_whitespace().next())
        .expect("a BUNDLE group")
        .to_owned()
}

/// Answers every queued offer of `pid` until none is left; returns the last offer and its tracks.
async fn settle(
    sfu: &greenroom_sfu::Sfu,
    events: &mut Events,
    pid: &str,
    client: &Client,
) -> (String, Vec<greenroom_proto::SubscribedTrack>) {
    loop {
        let (sdp, tracks) = answer_offer(sfu, events, pid, client).await;
        assert_bundled(pid, &sdp);
        // A queued re-offer goes out at once after the answer.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        if !events.has_offer(pid) {
            return (sdp, tracks);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kicking_a_connected_publisher_leaves_the_others_working() {
    let (sfu, mut events) = start(greenroom_sfu::SfuOptions::default()).await;
    let call: CallCid = "default:kick3".parse().unwrap();
    let names = ["alice", "bob", "carol"];
    let mut pubs = HashMap::new();
    let mut subs = HashMap::new();
    for pid in names {
        sfu.join(&call, pid, &format!("u-{pid}"), ALL);
        pubs.insert(pid, publisher(&sfu, pid).await);
        subs.insert(pid, Client::new());
    }
    let mut tracks = HashMap::new();
    let mut tags = HashMap::new();
    for pid in names {
        let (sdp, t) = settle(&sfu, &mut events, pid, &subs[pid]).await;
        assert_eq!(t.len(), 4, "{pid} receives the other two");
        tracks.insert(pid, t);
        tags.insert(pid, bundle_tag(&sdp));
    }
    wait_for("all connected", || {
        names
            .iter()
            .all(|n| pubs[n].is_connected() && subs[n].is_connected())
    })
    .await;
    for p in pubs.values() {
        p.set_sending(true);
    }
    let mid_from = |pid: &str, from: &str, src: TrackSource| -> String {
        tracks[pid]
            .iter()
            .find(|t| t.track.participant_id == from && t.track.source == src)
            .map(|t| t.mid.clone())
            .unwrap()
    };
    let b_from_c = mid_from("bob", "carol", TrackSource::Camera);
    let c_from_b = mid_from("carol", "bob", TrackSource::Camera);
    wait_for("media everywhere", || {
        subs["bob"].count(&b_from_c) > 20 && subs["carol"].count(&c_from_b) > 20
    })
    .await;

    // Kick alice while all her peers are connected and sending: her sections came first at bob
    // and carol, so they hold the BUNDLE tag, which must stay (parked, not stopped).
    sfu.leave("alice");
    for pid in ["bob", "carol"] {
        let (sdp, t) = settle(&sfu, &mut events, pid, &subs[pid]).await;
        assert_eq!(t.len(), 2, "{pid}: alice's tracks are gone");
        assert_eq!(bundle_tag(&sdp), tags[pid], "{pid}: the BUNDLE tag is kept");
    }
    let (b0, c0) = (subs["bob"].count(&b_from_c), subs["carol"].count(&c_from_b));
    wait_for("bob and carol keep receiving each other", || {
        subs["bob"].count(&b_from_c) > b0 + 50 && subs["carol"].count(&c_from_b) > c0 + 50
    })
    .await;
    events.assert_no_peer_failed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kicking_the_only_publisher_never_offers_all_sections_stopped() {
    let (sfu, mut events) = start(greenroom_sfu::SfuOptions::default()).await;
    let call: CallCid = "default:kick-only".parse().unwrap();
    sfu.join(&call, "carol", "u-carol", ALL);
    let carol = publisher(&sfu, "carol").await;
    let mut subs = HashMap::new();
    let mut mids = HashMap::new();
    let mut tags = HashMap::new();
    for pid in ["alice", "bob"] {
        sfu.join(&call, pid, &format!("u-{pid}"), ALL);
        let c = Client::new();
        let (sdp, t) = settle(&sfu, &mut events, pid, &c).await;
        assert_eq!(t.len(), 2, "{pid} receives carol");
        mids.insert(pid, mid_of(&t, TrackSource::Camera));
        tags.insert(pid, bundle_tag(&sdp));
        subs.insert(pid, c);
    }
    wait_for("connected", || {
        carol.is_connected() && subs.values().all(Client::is_connected)
    })
    .await;
    carol.set_sending(true);
    wait_for("carol's media arrives", || {
        subs.iter().all(|(pid, c)| c.count(&mids[pid]) > 20)
    })
    .await;

    // Kick the only publisher: stopping both sections would leave none accepted. The tag is
    // parked, the other stopped; the offer lists no track.
    sfu.leave("carol");
    drop(carol);
    for pid in ["alice", "bob"] {
        let (sdp, t) = settle(&sfu, &mut events, pid, &subs[pid]).await;
        assert!(t.is_empty(), "{pid}: no track left: {t:?}");
        assert_eq!(bundle_tag(&sdp), tags[pid], "{pid}: the BUNDLE tag is kept");
    }

    // A newcomer publishes: alice and bob are offered its tracks on their same client peers
    // (carol's old sections stopped now), and its media arrives.
    sfu.join(&call, "dave", "u-dave", ALL);
    let dave = publisher(&sfu, "dave").await;
    wait_for("dave connected", || dave.is_connected()).await;
    dave.set_sending(true);
    for pid in ["alice", "bob"] {
        let (sdp, t) = settle(&sfu, &mut events, pid, &subs[pid]).await;
        assert_eq!(bundle_tag(&sdp), tags[pid], "{pid}: the BUNDLE tag is kept");
        assert!(
            t.iter().all(|t| t.track.participant_id == "dave") && t.len() == 2,
            "{pid}: only dave's tracks are listed: {t:?}"
        );
        mids.insert(pid, mid_of(&t, TrackSource::Camera));
    }
    wait_for("dave's media reaches alice and bob", || {
        subs.iter().all(|(pid, c)| c.count(&mids[pid]) > 20)
    })
    .await;
    events.assert_no_peer_failed();
}

/// The `a=fingerprint` of an SDP.
fn fingerprint(sdp: &str) -> String {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix("a=fingerprint:"))
        .expect("a fingerprint")
        .to_owned()
}

/// The wire signal the SDK relies on to answer a replaced subscriber peer on a new
/// RTCPeerConnection: the fresh peer's offer carries another DTLS fingerprint (an ICE restart of
/// the same peer keeps it). A late answer to the old offer is refused without spending the fresh
/// one; a new client peer answering the fresh offer receives the media.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_subscriber_peer_offers_another_fingerprint() {
    let (sfu, mut events) = start(greenroom_sfu::SfuOptions {
        connect_timeout: std::time::Duration::from_secs(3),
        ..Default::default()
    })
    .await;
    let call: CallCid = "default:fresh".parse().unwrap();
    sfu.join(&call, "alice", "u-alice", ALL);
    sfu.join(&call, "bob", "u-bob", ALL);
    let alice = publisher(&sfu, "alice").await;
    wait_for("alice connected", || alice.is_connected()).await;
    alice.set_sending(true);

    // Bob never answers his first offer: his subscriber peer fails after the connect timeout.
    let (first, _) = events.offer("bob").await;
    let (fresh, tracks) = events.offer("bob").await;
    events.drain();
    assert!(
        events.failed.iter().any(|(pid, _)| pid == "bob"),
        "bob's first subscriber peer failed: {:?}",
        events.failed
    );
    assert_ne!(
        fingerprint(&first),
        fingerprint(&fresh),
        "a new server peer"
    );

    // A late answer to the replaced peer's offer is refused and does not spend the fresh offer.
    let late = Client::new().accept_offer(first);
    assert!(matches!(
        sfu.subscriber_answer("bob", late).await,
        Err(greenroom_sfu::SfuError::Sdp(_))
    ));

    // ICE restart on the same peer keeps the fingerprint.
    let bob = Client::new();
    let answer = bob.accept_offer(fresh.clone());
    sfu.subscriber_answer("bob", answer).await.unwrap();
    let cam = mid_of(&tracks, TrackSource::Camera);
    wait_for("bob receives alice", || bob.count(&cam) > 20).await;
    sfu.restart_subscriber_ice("bob");
    let (restart, _) = events.offer("bob").await;
    assert_eq!(fingerprint(&restart), fingerprint(&fresh), "same peer");
}
