//! The lean audio path: forwarded audio built, SRTP-protected and sent by the engine itself,
//! without a str0m drive per packet. Independent str0m clients on 127.0.0.1 decrypt it with
//! str0m's own SRTP, check its payload and sequence numbers, its sender reports, and that it
//! follows gates, renegotiations and an ICE restart to a new address.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use greenroom_proto::{CallCid, MediaGate, SourceSet, TrackSource};
use greenroom_sfu::{Sfu, SfuOptions};
use str0m::format::Codec;
use str0m::net::{Protocol, Receive, Transmit};
use str0m::{Candidate, Input, Rtc, RtcConfig};

fn options(lean: bool) -> SfuOptions {
    SfuOptions {
        shards: 1,
        lean_audio: lean,
        ..Default::default()
    }
}

/// Only the microphone: the publisher's video stays silent, so every forwarded packet is audio.
fn audio_only(c: &Client) {
    c.call(|st| st.send.retain(|(_, codec)| *codec == Codec::Opus));
}

/// Joins `publisher` (audio only, sending) and `subscriber` (no bandwidth estimation, as audio
/// rooms join) to `call`; returns both, connected, and the subscriber's audio mid, once
/// `warmup` audio packets arrived.
async fn audio_pair(
    sfu: &Sfu,
    events: &mut Events,
    call: &CallCid,
    pids: (&str, &str),
    sub_client: Client,
    warmup: u64,
) -> (Client, Client, String) {
    let source = (TrackSource::Microphone, false);
    one_source_pair(sfu, events, call, pids, sub_client, source, warmup).await
}

/// Starts an SFU (lean audio on or off) and joins alice (publisher) and bob (a new client)
/// to call `default:<name>`, after `warmup` packets: the SFU, its events, the call, alice, bob
/// and bob's audio mid.
async fn room(
    lean: bool,
    name: &str,
    warmup: u64,
) -> (Sfu, Events, CallCid, Client, Client, String) {
    let (sfu, mut events) = start(options(lean)).await;
    let call: CallCid = format!("default:{name}").parse().unwrap();
    let (alice, bob, audio) = audio_pair(
        &sfu,
        &mut events,
        &call,
        ("alice", "bob"),
        Client::new(),
        warmup,
    )
    .await;
    (sfu, events, call, alice, bob, audio)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lean_audio_decrypts_in_order_without_a_drive_per_packet() {
    let (sfu, mut events, _, _alice, bob, audio) = room(true, "lean", 25).await;

    let drives0 = metric(&sfu, "greenroom_engine_drives_total{cause=\"output\"}");
    let lean0 = metric(&sfu, "greenroom_lean_packets_total");
    let got0 = bob.count(&audio);
    let mid = audio.clone();
    wait_for("100 more packets", || bob.count(&mid) >= got0 + 100).await;
    let lean = metric(&sfu, "greenroom_lean_packets_total") - lean0;
    let drives = metric(&sfu, "greenroom_engine_drives_total{cause=\"output\"}") - drives0;
    assert!(lean >= 100.0, "sent on the lean path: {lean}");
    // str0m's path drives the subscriber once per forwarded packet; the lean one not at all
    // (commands and state changes still drive now and then).
    assert!(
        drives * 10.0 < lean,
        "{drives} output drives for {lean} lean packets"
    );

    let rx = bob.received(&audio);
    assert_eq!(rx.not_audio_payload, 0, "every payload is the publisher's");
    assert_eq!(rx.ssrcs.len(), 1, "one SSRC: {:?}", rx.ssrcs);
    assert!(contiguous(&rx.seqs), "contiguous: {:?}", rx.seqs);
    events.assert_no_peer_failed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_publisher_sends_nothing_lean_and_a_regrant_resumes() {
    let (sfu, mut events, _, _alice, bob, audio) = room(true, "lean-gate", 25).await;
    assert!(metric(&sfu, "greenroom_lean_packets_total") > 0.0);

    sfu.set_gate(
        "alice",
        MediaGate {
            send: SourceSet::ALL.without(TrackSource::Microphone),
            receive: true,
        },
    );
    // Packets in flight on loopback arrive within a moment; then nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let frozen = bob.count(&audio);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(bob.count(&audio), frozen, "no packet after the revoke");

    sfu.set_gate("alice", ALL);
    let mid = audio.clone();
    wait_for("audio resumes", || bob.count(&mid) >= frozen + 25).await;
    let rx = bob.received(&audio);
    assert_eq!(rx.not_audio_payload, 0);
    assert!(
        contiguous(&rx.seqs),
        "no gap across the revoke: {:?}",
        rx.seqs
    );
    events.assert_no_peer_failed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lean_streams_get_sender_reports_from_the_engine_only() {
    let (sfu, mut events, _, _alice, bob, audio) = room(true, "lean-sr", 10).await;
    let mid = audio.clone();
    // One report a second.
    wait_for("two sender reports", || bob.received(&mid).srs.len() >= 2).await;
    let rx = bob.received(&audio);
    let ssrc = rx.ssrcs[0];
    for (s, packets) in &rx.srs {
        assert_eq!(*s, ssrc, "reports are for the stream's SSRC");
        // str0m's own report on a stream it never wrote would say 0 packets.
        assert!(*packets > 0, "a report from the engine: {:?}", rx.srs);
        assert!(
            u64::from(*packets) <= rx.count + 60,
            "{packets} vs {}",
            rx.count
        );
    }
    assert!(metric(&sfu, "greenroom_lean_sender_reports_total") >= 2.0);
    events.assert_no_peer_failed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renegotiation_keeps_lean_audio_decrypting() {
    let (sfu, mut events, call, _alice, bob, a_audio) = room(true, "lean-reneg", 25).await;

    // Carol joins and publishes: bob gets an offer (alice's stream declared again for its
    // a=ssrc lines) and answers.
    let options = greenroom_sfu::JoinOptions {
        bandwidth_estimation: false,
    };
    sfu.join_with(&call, "carol", "u-carol", ALL, options);
    let carol = common::publisher(&sfu, "carol").await;
    audio_only(&carol);
    let (_, tracks) = answer_offer(&sfu, &mut events, "bob", &bob).await;
    let c_audio = tracks
        .iter()
        .find(|t| t.track.participant_id == "carol" && t.track.source == TrackSource::Microphone)
        .map(|t| t.mid.clone())
        .unwrap();
    wait_for("carol connected", || carol.is_connected()).await;
    carol.set_sending(true);
    let before = bob.count(&a_audio);
    let (a, c) = (a_audio.clone(), c_audio.clone());
    wait_for("both flow to bob", || {
        bob.count(&a) >= before + 50 && bob.count(&c) >= 50
    })
    .await;

    // Alice leaves: another offer and answer; carol's audio goes on.
    sfu.leave("alice");
    answer_offer(&sfu, &mut events, "bob", &bob).await;
    let before = bob.count(&c_audio);
    let c = c_audio.clone();
    wait_for("carol flows on", || bob.count(&c) >= before + 50).await;

    for mid in [&a_audio, &c_audio] {
        let rx = bob.received(mid);
        assert_eq!(rx.not_audio_payload, 0, "mid {mid}");
        assert_eq!(rx.ssrcs.len(), 1, "mid {mid}: {:?}", rx.ssrcs);
        assert!(contiguous(&rx.seqs), "mid {mid}: {:?}", rx.seqs);
        // Any report str0m sent for the stream in an offer window would say 0 packets.
        assert!(
            rx.srs.iter().all(|(_, n)| *n > 0),
            "mid {mid}: {:?}",
            rx.srs
        );
    }
    assert!(metric(&sfu, "greenroom_lean_packets_total") >= 150.0);
    events.assert_no_peer_failed();
}

/// A client transport with two sockets: A until `switched`, then B only (A's traffic, both
/// ways, is dropped: the old network is gone).
struct Switching {
    a: UdpSocket,
    b: UdpSocket,
    addr_a: SocketAddr,
    addr_b: SocketAddr,
    switched: Arc<AtomicBool>,
    buf: Vec<u8>,
}

impl Transport for Switching {
    fn transmit(&mut self, t: &Transmit) -> bool {
        let switched = self.switched.load(Ordering::SeqCst);
        let socket = if t.source == self.addr_b {
            &self.b
        } else if switched {
            return true;
        } else {
            &self.a
        };
        let _ = socket.send_to(&t.contents, t.destination);
        true
    }

    fn receive(&mut self, wait: Duration, rtc: &mut Rtc) {
        let until = Instant::now() + wait;
        loop {
            let switched = self.switched.load(Ordering::SeqCst);
            for (socket, addr) in [(&self.a, self.addr_a), (&self.b, self.addr_b)] {
                while let Ok((n, src)) = socket.recv_from(&mut self.buf) {
                    if addr == self.addr_a && switched {
                        continue;
                    }
                    if let Ok(r) = Receive::new(Protocol::Udp, src, addr, &self.buf[..n]) {
                        rtc.handle_input(Input::Receive(Instant::now(), r)).unwrap();
                        return;
                    }
                }
            }
            if Instant::now() >= until {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lean_audio_follows_an_ice_restart_to_a_new_address() {
    let (sfu, mut events) = start(options(true)).await;
    let call: CallCid = "default:lean-ice".parse().unwrap();
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    let (addr_a, addr_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    let switched = Arc::new(AtomicBool::new(false));
    let mut rtc = RtcConfig::new().set_rtp_mode(true).build(Instant::now());
    rtc.add_local_candidate(Candidate::host(addr_a, "udp").unwrap());
    let bob = Client::spawn(
        rtc,
        Switching {
            a,
            b,
            addr_a,
            addr_b,
            switched: switched.clone(),
            buf: vec![0; 2048],
        },
    );
    let (_alice, bob, audio) =
        audio_pair(&sfu, &mut events, &call, ("alice", "bob"), bob, 25).await;
    let lean0 = metric(&sfu, "greenroom_lean_packets_total");
    assert!(lean0 > 0.0);

    // Bob's network changes: A is gone, B is new; the server restarts ICE.
    switched.store(true, Ordering::SeqCst);
    bob.call(move |st| {
        st.rtc
            .add_local_candidate(Candidate::host(addr_b, "udp").unwrap());
    });
    sfu.restart_subscriber_ice("bob");
    answer_offer(&sfu, &mut events, "bob", &bob).await;
    let before = bob.count(&audio);
    let mid = audio.clone();
    wait_for("audio on the new address", || {
        bob.count(&mid) >= before + 50
    })
    .await;
    let rx = bob.received(&audio);
    assert_eq!(rx.not_audio_payload, 0);
    assert_eq!(rx.ssrcs.len(), 1);
    assert!(metric(&sfu, "greenroom_lean_packets_total") >= lean0 + 50.0);
    events.assert_no_peer_failed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lean_audio_off_every_packet_goes_through_str0m() {
    let (sfu, mut events, _, _alice, bob, audio) = room(false, "no-lean", 50).await;
    let rx = bob.received(&audio);
    assert_eq!(rx.not_audio_payload, 0);
    assert!(contiguous(&rx.seqs));
    assert_eq!(metric(&sfu, "greenroom_lean_packets_total"), 0.0);
    assert!(metric(&sfu, "greenroom_engine_drives_total{cause=\"output\"}") >= 50.0);
    events.assert_no_peer_failed();
}
