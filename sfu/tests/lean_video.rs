//! The lean video path: forwarded video of a single-layer source built, SRTP-protected and sent
//! by the engine itself, with keyframe requests and RTX retransmits driven by the engine from
//! the subscriber's own RTCP. Independent str0m clients on 127.0.0.1 decrypt it with str0m's
//! SRTP and check payloads, sequence numbers, keyframe requests, retransmits and gates.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use greenroom_proto::{CallCid, MediaGate, PublishTrack, SourceSet, TrackSource};
use greenroom_sfu::{Sfu, SfuOptions};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Rid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::rtp::{RtpWrite, SeqNo};
use str0m::{Candidate, Input, Rtc, RtcConfig};

fn options(lean_video: bool) -> SfuOptions {
    SfuOptions {
        shards: 1,
        lean_video,
        ..Default::default()
    }
}

/// Joins `alice` (camera only, sending) and `bob` (bandwidth estimation on, as meetings join)
/// to `call`; returns both, connected, and bob's video mid once `warmup` packets arrived.
async fn video_pair(
    sfu: &Sfu,
    events: &mut Events,
    call: &CallCid,
    bob: Client,
    warmup: u64,
) -> (Client, Client, String) {
    let source = (TrackSource::Camera, true);
    one_source_pair(sfu, events, call, ("alice", "bob"), bob, source, warmup).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lean_video_decrypts_with_the_publishers_payloads() {
    let (sfu, mut events) = start(options(true)).await;
    let call: CallCid = "default:lean-video".parse().unwrap();
    let (_alice, bob, video) = video_pair(&sfu, &mut events, &call, Client::new(), 10).await;
    let mid = video.clone();
    wait_for("60 packets and a sender report", || {
        let rx = bob.received(&mid);
        rx.count >= 60 && !rx.srs.is_empty()
    })
    .await;
    let rx = bob.received(&video);
    let lean = metric(&sfu, "greenroom_lean_video_packets_total");
    assert!(
        lean >= rx.count as f64,
        "{lean} lean of {} received",
        rx.count
    );
    assert_eq!(
        rx.vp8_payloads, rx.count,
        "every payload is the publisher's"
    );
    assert!(rx.keyframes >= 1, "the first frame is a keyframe");
    assert_eq!(rx.ssrcs.len(), 1, "one SSRC: {:?}", rx.ssrcs);
    assert!(contiguous(&rx.seqs), "contiguous: {:?}", rx.seqs);
    // The engine's own reports (str0m's on a stream it never wrote would say 0 packets).
    assert!(
        rx.srs.iter().all(|(s, n)| *s == rx.ssrcs[0] && *n > 0),
        "{:?}",
        rx.srs
    );
    events.assert_no_peer_failed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pli_on_a_lean_stream_reaches_the_publisher() {
    let (sfu, mut events) = start(options(true)).await;
    let call: CallCid = "default:lean-pli".parse().unwrap();
    let (alice, bob, video) = video_pair(&sfu, &mut events, &call, Client::new(), 10).await;
    // Past the keyframe rate limit of the subscriber's own first request.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (kf0, read0) = (
        alice.keyframe_requests(),
        metric(&sfu, "greenroom_lean_keyframe_requests_total"),
    );
    bob.request_keyframe(&video);
    wait_for("the request reaches alice", || {
        alice.keyframe_requests() > kf0
            && metric(&sfu, "greenroom_lean_keyframe_requests_total") > read0
    })
    .await;
    // And the keyframe she sends reaches bob.
    let keyframes = bob.received(&video).keyframes;
    let mid = video.clone();
    wait_for("a keyframe back", || {
        bob.received(&mid).keyframes > keyframes
    })
    .await;
    events.assert_no_peer_failed();
}

/// A client socket that loses the first copy of every 20th large RTP packet (a video packet)
/// of the first SSRC it sees lose one: the client's str0m NACKs them. The losses are recorded.
/// Its own RTCP leaves `rtcp_delay` late (a longer round trip than loopback's).
struct Lossy {
    socket: UdpSocket,
    addr: SocketAddr,
    buf: Vec<u8>,
    ssrc: Option<u32>,
    lost: Arc<Mutex<HashSet<u16>>>,
    rtcp_delay: Duration,
}

impl common::Transport for Lossy {
    fn transmit(&mut self, t: &Transmit) -> bool {
        let d = &t.contents;
        if d.len() > 1 && (128..=191).contains(&d[0]) && (192..=223).contains(&d[1]) {
            std::thread::sleep(self.rtcp_delay);
        }
        let _ = self.socket.send_to(d, t.destination);
        true
    }

    fn receive(&mut self, wait: Duration, rtc: &mut Rtc) {
        self.socket.set_read_timeout(Some(wait)).unwrap();
        let Ok((n, src)) = self.socket.recv_from(&mut self.buf) else {
            return;
        };
        let d = &self.buf[..n];
        // SRTP leaves the RTP header in the clear: RTP (not RTCP), video-sized.
        if n > 500 && (128..=191).contains(&d[0]) && !(192..=223).contains(&d[1]) {
            let seq = u16::from_be_bytes([d[2], d[3]]);
            let ssrc = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
            if seq % 20 == 7 && *self.ssrc.get_or_insert(ssrc) == ssrc {
                let mut lost = self.lost.lock().unwrap();
                if lost.insert(seq) {
                    return;
                }
            }
        }
        if let Ok(r) = Receive::new(Protocol::Udp, src, self.addr, d) {
            rtc.handle_input(Input::Receive(Instant::now(), r)).unwrap();
        }
    }
}

/// A subscriber client on a [`Lossy`] socket (raw packets on: it sees RTX and every SR), and
/// the sequence numbers it lost.
fn lossy_client(rtcp_delay: Duration) -> (Client, Arc<Mutex<HashSet<u16>>>) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let mut rtc = RtcConfig::new()
        .enable_raw_packets(true)
        .set_rtp_mode(true)
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
    let lost: Arc<Mutex<HashSet<u16>>> = Default::default();
    let client = Client::spawn(
        rtc,
        Lossy {
            socket,
            addr,
            buf: vec![0; 2048],
            ssrc: None,
            lost: lost.clone(),
            rtcp_delay,
        },
    );
    (client, lost)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_is_answered_on_rtx_with_the_original_packet() {
    let (sfu, mut events) = start(options(true)).await;
    let call: CallCid = "default:lean-nack".parse().unwrap();
    let (bob, lost) = lossy_client(Duration::ZERO);
    let (_alice, bob, video) = video_pair(&sfu, &mut events, &call, bob, 10).await;
    wait_for("three retransmits", || {
        bob.received(REPAIRS).repairs.len() >= 3
    })
    .await;
    let repairs = bob.received(REPAIRS).repairs;
    let lost = lost.lock().unwrap().clone();
    for (osn, payload_ok) in &repairs {
        assert!(lost.contains(osn), "resent {osn}, lost {lost:?}");
        assert!(payload_ok, "the original payload after the OSN");
    }
    assert!(metric(&sfu, "greenroom_lean_retransmits_total") >= 3.0);
    // Never resent on the media SSRC: bob saw one SSRC on the mid, and each lost number at
    // most once (the repair, unwrapped by str0m).
    let rx = bob.received(&video);
    assert_eq!(rx.ssrcs.len(), 1, "{:?}", rx.ssrcs);
    let mut seqs = rx.seqs.clone();
    seqs.sort_unstable();
    let n = seqs.len();
    seqs.dedup();
    assert_eq!(seqs.len(), n, "no sequence number delivered twice");
    events.assert_no_peer_failed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_camera_sends_nothing_lean_and_a_regrant_resumes_on_a_keyframe() {
    let (sfu, mut events) = start(options(true)).await;
    let call: CallCid = "default:lean-video-gate".parse().unwrap();
    let (alice, bob, video) = video_pair(&sfu, &mut events, &call, Client::new(), 10).await;
    alice.call(|st| st.periodic_keyframes = false);
    sfu.set_gate(
        "alice",
        MediaGate {
            send: SourceSet::ALL.without(TrackSource::Camera),
            receive: true,
        },
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let frozen = bob.received(&video);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        bob.count(&video),
        frozen.count,
        "no packet after the revoke"
    );

    sfu.set_gate("alice", ALL);
    let mid = video.clone();
    wait_for("video resumes on a keyframe", || {
        let rx = bob.received(&mid);
        rx.count >= frozen.count + 10 && rx.keyframes > frozen.keyframes
    })
    .await;
    let rx = bob.received(&video);
    assert_eq!(rx.vp8_payloads, rx.count);
    assert_eq!(rx.ssrcs.len(), 1);
    events.assert_no_peer_failed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lean_video_off_video_goes_through_str0m() {
    let (sfu, mut events) = start(options(false)).await;
    let call: CallCid = "default:no-lean-video".parse().unwrap();
    let (_alice, bob, video) = video_pair(&sfu, &mut events, &call, Client::new(), 30).await;
    let rx = bob.received(&video);
    assert_eq!(rx.vp8_payloads, rx.count);
    assert!(contiguous(&rx.seqs));
    assert_eq!(metric(&sfu, "greenroom_lean_video_packets_total"), 0.0);
    assert!(metric(&sfu, "greenroom_engine_drives_total{cause=\"output\"}") >= 30.0);
    events.assert_no_peer_failed();
}

/// Publishes a simulcast camera (rids "h" and "l") from a new client as `pid`; returns it and
/// the camera's mid. Nothing is sent yet.
async fn simulcast_publisher(sfu: &Sfu, pid: &str) -> (Client, Mid) {
    let client = Client::new();
    let (offer, tracks, pending, mid) = client.call(|st| {
        let mut sim = Simulcast::new();
        sim.add_send_layer(SimulcastLayer::new("h"));
        sim.add_send_layer(SimulcastLayer::new("l"));
        let mut api = st.rtc.sdp_api();
        let v = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, Some(sim));
        let (offer, pending) = api.apply().unwrap();
        let tracks = vec![PublishTrack {
            mid: v.to_string(),
            source: TrackSource::Camera,
        }];
        (offer.to_sdp_string(), tracks, pending, v)
    });
    let answer = sfu.publish(pid, offer, tracks).await.unwrap();
    client.accept_answer(pending, answer);
    (client, mid)
}

/// One synthetic VP8 frame on both simulcast layers (a keyframe every 10th).
fn send_simulcast_frame(st: &mut ClientState, mid: Mid) {
    st.frame += 1;
    let key = st.frame % 10 == 1;
    let mut payload = vec![0x10, if key { 0x00 } else { 0x01 }, 0x9d, 0x01, 0x2a];
    payload.resize(600, 0x55);
    let pt = pt_for(&st.rtc, Codec::Vp8);
    let now = Instant::now();
    for rid in ["h", "l"] {
        let mut api = st.rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(mid, Some(Rid::from(rid))) else {
            continue;
        };
        tx.write_rtp(
            RtpWrite::new(
                pt,
                SeqNo::from(u64::from(st.frame)),
                st.frame * 3000,
                now,
                payload.clone(),
            )
            .marker(true)
            .nackable(true),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulcast_consumers_stay_on_str0m() {
    let (sfu, mut events) = start(options(true)).await;
    let call: CallCid = "default:lean-simulcast".parse().unwrap();
    for pid in ["alice", "bob"] {
        sfu.join(&call, pid, &format!("u-{pid}"), ALL);
    }
    let (alice, cam) = simulcast_publisher(&sfu, "alice").await;
    let bob = Client::new();
    let (_, tracks) = answer_offer(&sfu, &mut events, "bob", &bob).await;
    let video = mid_of(&tracks, TrackSource::Camera);
    wait_for("pair connected", || {
        alice.is_connected() && bob.is_connected()
    })
    .await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let (jobs, stop) = (alice.jobs.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let job: Job = Box::new(move |st| send_simulcast_frame(st, cam));
                if jobs.send(job).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(33));
            }
        })
    };
    let mid = video.clone();
    wait_for("simulcast video flows", || bob.count(&mid) >= 30).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    sender.join().unwrap();
    let rx = bob.received(&video);
    assert_eq!(rx.vp8_payloads, rx.count);
    // Every packet bob got went through str0m: the lean path sent none.
    assert_eq!(metric(&sfu, "greenroom_lean_video_packets_total"), 0.0);
    // bob's video m-line is str0m's: his SRTCP always goes on to str0m.
    assert_eq!(metric(&sfu, "greenroom_lean_rtcp_only_total"), 0.0);
    // A simulcast publisher stays on str0m's ingress, all of its streams.
    assert_eq!(metric(&sfu, "greenroom_lean_ingress_packets_total"), 0.0);
    events.assert_no_peer_failed();
}

/// The RTX stream gets sender reports of its own once it resent something, and the server
/// reads the subscriber's receiver reports about its lean stream: a round trip (the client's
/// RTCP leaves 20 ms late, so at least that), loss and report blocks counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rtx_stream_is_reported_and_receiver_reports_give_a_round_trip() {
    let (sfu, mut events) = start(options(true)).await;
    let call: CallCid = "default:lean-rr".parse().unwrap();
    let delay = Duration::from_millis(20);
    let (bob, _lost) = lossy_client(delay);
    let (_alice, bob, video) = video_pair(&sfu, &mut events, &call, bob, 10).await;
    wait_for("a repair, then a sender report on its SSRC", || {
        let repairs = bob.received(REPAIRS);
        let Some(rtx) = repairs.ssrcs.first().copied() else {
            return false;
        };
        bob.received(RAW_SRS)
            .raw_srs
            .iter()
            .any(|(s, n, _)| *s == rtx && *n > 0)
    })
    .await;
    let repairs = bob.received(REPAIRS);
    let media = bob.received(&video).ssrcs;
    assert_eq!(repairs.ssrcs.len(), 1, "one RTX SSRC: {:?}", repairs.ssrcs);
    let rtx = repairs.ssrcs[0];
    assert_eq!(media.len(), 1);
    assert_ne!(rtx, media[0], "repairs never on the media SSRC");
    let srs = bob.received(RAW_SRS).raw_srs;
    for (_, packets, octets) in srs.iter().filter(|(s, _, _)| *s == rtx) {
        assert!(
            *packets as usize <= repairs.repairs.len(),
            "{packets} reported, {} repairs received",
            repairs.repairs.len()
        );
        // Every repair is a 600-byte VP8 payload after its 2-byte original sequence number.
        assert_eq!(*octets, packets * 602, "{srs:?}");
    }
    assert!(
        srs.iter().any(|(s, n, _)| *s == media[0] && *n > 0),
        "the media stream's own reports go on: {srs:?}"
    );

    // The client's receiver reports echo the engine's SRs: a round trip is recorded.
    let egress = |what: &str| metric(&sfu, &format!("greenroom_rtt_seconds_{what}"));
    wait_for("a round trip from the client's receiver reports", || {
        egress("count{direction=\"egress\"}") >= 1.0
    })
    .await;
    assert!(metric(&sfu, "greenroom_lean_receiver_reports_total") >= 1.0);
    // Every m-line of bob's is lean: the engine read his SRTCP alone, without a str0m drive
    // (counted just after the report is read: waited for, not raced).
    wait_for("bob's SRTCP read by the engine alone", || {
        metric(&sfu, "greenroom_lean_rtcp_only_total") >= 1.0
    })
    .await;
    // Only lean streams flow here (str0m samples none): each round trip includes the delay.
    assert!(egress("sum{direction=\"egress\"}") > 0.0);
    assert_eq!(
        egress("bucket{direction=\"egress\",le=\"0.01\"}"),
        0.0,
        "every round trip is at least the client's {delay:?}"
    );
    // The client lost every 20th packet first time: loss is reported and sampled too.
    assert!(metric(&sfu, "greenroom_loss_ratio_count{direction=\"egress\"}") >= 1.0);
    events.assert_no_peer_failed();
}

/// Lean audio's receiver reports are read too (the engine reads every lean subscriber's
/// SRTCP, not only one with lean video: here video is off the lean path): a round trip of at
/// least the client's delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lean_audio_receiver_reports_give_a_round_trip_too() {
    let (sfu, mut events) = start(options(false)).await;
    let call: CallCid = "default:lean-audio-rr".parse().unwrap();
    let (bob, _lost) = lossy_client(Duration::from_millis(20));
    let source = (TrackSource::Microphone, true);
    let (_alice, bob, audio) =
        one_source_pair(&sfu, &mut events, &call, ("alice", "bob"), bob, source, 10).await;
    wait_for("a round trip from the client's receiver reports", || {
        metric(&sfu, "greenroom_rtt_seconds_count{direction=\"egress\"}") >= 1.0
    })
    .await;
    assert!(metric(&sfu, "greenroom_lean_receiver_reports_total") >= 1.0);
    assert_eq!(
        metric(
            &sfu,
            "greenroom_rtt_seconds_bucket{direction=\"egress\",le=\"0.01\"}"
        ),
        0.0
    );
    // The audio was lean.
    assert!(metric(&sfu, "greenroom_lean_packets_total") >= bob.count(&audio) as f64);
    events.assert_no_peer_failed();
}
