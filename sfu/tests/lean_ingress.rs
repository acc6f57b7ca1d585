//! The lean publisher ingress (issue 12): a publisher's RTP opened, read and forwarded by the
//! engine without a str0m drive per packet, with the publisher's feedback (receiver reports,
//! NACKs, transport-wide feedback, keyframe requests) written by the engine. Independent str0m
//! clients on 127.0.0.1 publish and subscribe; the subscriber checks real payloads arrived.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use greenroom_proto::{CallCid, TrackSource};
use greenroom_sfu::{Sfu, SfuOptions};
use str0m::net::Transmit;
use str0m::{Candidate, Rtc, RtcConfig};

const LEAN: &str = "greenroom_lean_ingress_packets_total";
const FEEDBACK: &str = "greenroom_lean_ingress_feedback_total";
const INPUT_DRIVES: &str = "greenroom_engine_drives_total{cause=\"input\"}";

fn options(lean_ingress: bool) -> SfuOptions {
    SfuOptions {
        shards: 1,
        lean_ingress,
        ..Default::default()
    }
}

/// `alice` publishes her camera from `client`, `bob` subscribes; both connected, and bob's
/// video mid once 10 packets arrived.
async fn camera_pair(
    sfu: &Sfu,
    events: &mut Events,
    call: &CallCid,
    client: Client,
) -> (Client, Client, String) {
    for pid in ["alice", "bob"] {
        sfu.join(call, pid, &format!("u-{pid}"), ALL);
    }
    publish_from(sfu, "alice", &client).await;
    client.call(|st| st.send.retain(|(_, c)| *c != str0m::format::Codec::Opus));
    let bob = Client::new();
    let (_, tracks) = answer_offer(sfu, events, "bob", &bob).await;
    let mid = mid_of(&tracks, TrackSource::Camera);
    wait_for("pair connected", || {
        client.is_connected() && bob.is_connected()
    })
    .await;
    client.set_sending(true);
    let m = mid.clone();
    wait_for("media flows", || bob.count(&m) >= 10).await;
    (client, bob, mid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publishers_media_flows_lean_without_an_input_drive_per_packet() {
    let (sfu, mut events) = start(options(true)).await;
    let call: CallCid = "default:lean-ingress".parse().unwrap();
    let (alice, bob, mid) = camera_pair(&sfu, &mut events, &call, Client::new()).await;
    wait_for("the switch", || metric(&sfu, LEAN) >= 5.0).await;
    let (lean0, drives0, n0) = (
        metric(&sfu, LEAN),
        metric(&sfu, INPUT_DRIVES),
        bob.count(&mid),
    );
    let m = mid.clone();
    wait_for("60 more packets", || bob.count(&m) >= n0 + 60).await;
    let lean = metric(&sfu, LEAN) - lean0;
    let drives = metric(&sfu, INPUT_DRIVES) - drives0;
    assert!(lean >= 60.0, "{lean} lean packets");
    // Input drives left: STUN, DTLS, the clients' RTCP; far fewer than the media packets.
    assert!(
        drives < lean / 2.0,
        "{drives} input drives for {lean} packets"
    );
    let rx = bob.received(&mid);
    assert_eq!(
        rx.vp8_payloads, rx.count,
        "every payload is the publisher's"
    );
    assert!(contiguous(&rx.seqs), "contiguous: {:?}", rx.seqs);
    // Feedback (receiver reports, transport-wide feedback) is the engine's.
    wait_for("feedback sent", || metric(&sfu, FEEDBACK) >= 3.0).await;
    // A keyframe request from the subscriber reaches the lean publisher (PLI by the engine).
    let (fb0, kf0) = (metric(&sfu, FEEDBACK), alice.keyframe_requests());
    // The subscriber's first-ever request may fall within the keyframe rate limit of the
    // switch's own: ask until one arrives.
    let deadline = Instant::now() + Duration::from_secs(20);
    while alice.keyframe_requests() == kf0 {
        assert!(Instant::now() < deadline, "no keyframe request arrived");
        bob.request_keyframe(&mid);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(metric(&sfu, FEEDBACK) > fb0);
    events.assert_no_peer_failed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lean_ingress_off_every_packet_goes_through_str0m() {
    let (sfu, mut events) = start(options(false)).await;
    let call: CallCid = "default:str0m-ingress".parse().unwrap();
    let (_alice, bob, mid) = camera_pair(&sfu, &mut events, &call, Client::new()).await;
    let (drives0, n0) = (metric(&sfu, INPUT_DRIVES), bob.count(&mid));
    let m = mid.clone();
    wait_for("60 more packets", || bob.count(&m) >= n0 + 60).await;
    assert!(metric(&sfu, INPUT_DRIVES) - drives0 >= 60.0);
    assert_eq!(metric(&sfu, LEAN), 0.0);
    assert_eq!(metric(&sfu, FEEDBACK), 0.0);
    let rx = bob.received(&mid);
    assert_eq!(rx.vp8_payloads, rx.count);
    events.assert_no_peer_failed();
}

/// The publisher's uplink: drops the first transmission of every tenth video packet (its
/// payload type given) once `armed`, so that only a retransmission can bring it.
struct Lossy {
    inner: UdpTransport,
    video_pt: u8,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    dropped: std::sync::Arc<std::sync::Mutex<HashSet<u16>>>,
}

impl Transport for Lossy {
    fn transmit(&mut self, t: &Transmit) -> bool {
        let c = &t.contents;
        let rtp = c.len() > 12 && (128..=191).contains(&c[0]) && !(192..=223).contains(&c[1]);
        if rtp
            && self.armed.load(std::sync::atomic::Ordering::SeqCst)
            && c[1] & 0x7f == self.video_pt
        {
            let seq = u16::from_be_bytes([c[2], c[3]]);
            let mut d = self.dropped.lock().unwrap();
            if seq % 10 == 5 && d.insert(seq) {
                return true;
            }
        }
        self.inner.transmit(t)
    }

    fn receive(&mut self, wait: Duration, rtc: &mut Rtc) {
        self.inner.receive(wait, rtc)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packet_lost_on_the_uplink_is_nacked_by_the_engine_and_recovered() {
    let (sfu, mut events) = start(options(true)).await;
    let call: CallCid = "default:lean-ingress-loss".parse().unwrap();
    let (inner, addr) = UdpTransport::bind();
    let mut rtc = RtcConfig::new().set_rtp_mode(true).build(Instant::now());
    rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
    let video_pt = *pt_for(&rtc, str0m::format::Codec::Vp8);
    let armed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let dropped = std::sync::Arc::new(std::sync::Mutex::new(HashSet::new()));
    let lossy = Lossy {
        inner,
        video_pt,
        armed: armed.clone(),
        dropped: dropped.clone(),
    };
    let client = Client::spawn(rtc, lossy);
    let (_alice, bob, mid) = camera_pair(&sfu, &mut events, &call, client).await;
    wait_for("the switch", || metric(&sfu, LEAN) >= 5.0).await;
    let n0 = bob.count(&mid);
    armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let m = mid.clone();
    wait_for("100 more packets", || bob.count(&m) >= n0 + 100).await;
    armed.store(false, std::sync::atomic::Ordering::SeqCst);
    let lost = dropped.lock().unwrap().len();
    assert!(lost >= 5, "{lost} packets dropped on the uplink");
    // Every dropped packet came back through the engine's NACK and the publisher's RTX: the
    // subscriber's sequence has no hole once the last retransmission arrived.
    wait_for("every loss repaired", || {
        let mut seqs = bob.received(&m).seqs;
        seqs.sort_unstable();
        seqs.dedup();
        contiguous(&seqs)
    })
    .await;
    let rx = bob.received(&mid);
    assert_eq!(
        rx.vp8_payloads, rx.count,
        "recovered payloads are the publisher's"
    );
    assert!(metric(&sfu, FEEDBACK) >= lost as f64);
    let nacks = metric(&sfu, "greenroom_nacks_total{direction=\"ingress\"}");
    assert!(nacks >= lost as f64, "{nacks} NACKed for {lost} lost");
    events.assert_no_peer_failed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publishers_renegotiation_to_new_streams_stays_lean() {
    let (sfu, mut events) = start(options(true)).await;
    let call: CallCid = "default:lean-ingress-reneg".parse().unwrap();
    let (alice, bob, mid) = camera_pair(&sfu, &mut events, &call, Client::new()).await;
    wait_for("the switch", || metric(&sfu, LEAN) >= 5.0).await;
    // Alice offers again: her camera moves to a new m-line with a new SSRC (str0m reports
    // its first packets, then the engine takes it over).
    publish_from(&sfu, "alice", &alice).await;
    alice.call(|st| st.send.retain(|(_, c)| *c != str0m::format::Codec::Opus));
    let (lean0, n0) = (metric(&sfu, LEAN), bob.count(&mid));
    let m = mid.clone();
    wait_for("60 more packets", || bob.count(&m) >= n0 + 60).await;
    let lean = metric(&sfu, LEAN) - lean0;
    assert!(lean >= 50.0, "{lean} lean packets after the renegotiation");
    let rx = bob.received(&mid);
    assert_eq!(
        rx.vp8_payloads, rx.count,
        "every payload is the publisher's"
    );
    events.assert_no_peer_failed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_switch_one_writer_sends_the_publisher_its_feedback() {
    let (sfu, mut events) = start(options(true)).await;
    let call: CallCid = "default:lean-ingress-feedback".parse().unwrap();
    let client = Client::with_config(RtcConfig::new().enable_raw_packets(true));
    let (alice, _bob, _mid) = camera_pair(&sfu, &mut events, &call, client).await;
    wait_for("the switch", || metric(&sfu, LEAN) >= 5.0).await;
    // str0m's last pending report (about packets before the switch) leaves within its TWCC
    // interval; then only the engine writes.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t0 = Instant::now();
    let after = |alice: &Client| -> Vec<(char, u32)> {
        alice
            .received(RAW_FEEDBACK)
            .raw_feedback
            .into_iter()
            .filter(|(_, _, at)| *at > t0)
            .map(|(k, s, _)| (k, s))
            .collect()
    };
    wait_for("receiver reports and transport feedback", || {
        let fb = after(&alice);
        fb.iter().filter(|(k, _)| *k == 'r').count() >= 2
            && fb.iter().filter(|(k, _)| *k == 't').count() >= 5
    })
    .await;
    let fb = after(&alice);
    let senders: HashSet<u32> = fb.iter().map(|(_, s)| *s).collect();
    assert_eq!(senders.len(), 1, "one writer of feedback: {fb:?}");
    // The engine: it sent at least as many compound packets as the reports counted here.
    let rrs = fb.iter().filter(|(k, _)| *k == 'r').count();
    assert!(metric(&sfu, FEEDBACK) >= rrs as f64);
    events.assert_no_peer_failed();
}
