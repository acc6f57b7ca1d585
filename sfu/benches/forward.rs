//! Forwarding path benchmark: one incoming packet -> N consumers, each doing the gate test,
//! the receive/pause test, the seq/ts rewrite, the payload type map, `write_rtp` into the
//! subscriber's real str0m send stream, and draining that peer (pacing + SRTP protect, AEAD
//! GCM as negotiated between two str0m peers), without the socket.
//!
//! Run: `cargo bench -p greenroom-sfu --bench forward` (quick: append `-- --quick`; smoke
//! test in CI: `-- --test`). Prints ns per forwarded packet for N = 1, 10, 100.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use greenroom_proto::{MediaGate, SourceSet, TrackSource};
use greenroom_sfu::forward::{ConsumerState, GateCell, PtLookup, Step};
use greenroom_sfu::rtc_config;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpWrite, SeqNo, Ssrc};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

struct Consumer {
    rtc: Rtc,
    /// The in-memory remote peer, pumped outside the timed region (ICE consent, RTCP).
    client: Rtc,
    server_addr: SocketAddr,
    client_addr: SocketAddr,
    ssrc: Ssrc,
    st: ConsumerState,
    gate: Arc<GateCell>,
    pt: u8,
}

/// A server-side subscriber peer connected (ICE, DTLS, SRTP) to an in-memory str0m client.
fn connected_consumer(i: u16, now: &mut Instant) -> Consumer {
    let server_addr: SocketAddr = "10.0.0.1:7882".parse().unwrap();
    let client_addr = SocketAddr::new("10.0.0.2".parse().unwrap(), 10_000 + i);
    // Same config as the engine's subscribers, minus BWE: no pacer, so each packet leaves
    // (SRTP-protected) in the same drain that follows its write.
    let _ = rtc_config(true);
    let mut server = rtc_config(false).build(*now);
    server.add_local_candidate(Candidate::host(server_addr, "udp").unwrap());
    let mut client = RtcConfig::new().set_rtp_mode(true).build(*now);
    client.add_local_candidate(Candidate::host(client_addr, "udp").unwrap());
    let mut api = server.sdp_api();
    let mid = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, pending) = api.apply().unwrap();
    let answer = client.sdp_api().accept_offer(offer).unwrap();
    server.sdp_api().accept_answer(pending, answer).unwrap();
    let (mut s_ok, mut c_ok) = (false, false);
    for _ in 0..2_000 {
        s_ok |= pump(&mut server, &mut client, server_addr, client_addr, *now);
        c_ok |= pump(&mut client, &mut server, client_addr, server_addr, *now);
        if s_ok && c_ok {
            break;
        }
        *now += Duration::from_millis(5);
    }
    assert!(s_ok && c_ok, "in-memory peers connect");
    let ssrc = server
        .direct_api()
        .stream_tx_by_mid(mid, None)
        .unwrap()
        .ssrc();
    let vp8 = *server
        .codec_config()
        .find(|p| p.spec().codec == Codec::Vp8)
        .unwrap()
        .pt();
    Consumer {
        rtc: server,
        client,
        server_addr,
        client_addr,
        ssrc,
        st: ConsumerState::new(false),
        gate: Arc::new(GateCell::new(MediaGate {
            send: SourceSet::ALL,
            receive: true,
        })),
        pt: vp8,
    }
}

/// Drives `from` and delivers its datagrams to `to`; true once `from` reported Connected.
fn pump(
    from: &mut Rtc,
    to: &mut Rtc,
    from_addr: SocketAddr,
    to_addr: SocketAddr,
    now: Instant,
) -> bool {
    let mut connected = false;
    from.handle_input(Input::Timeout(now)).unwrap();
    loop {
        match from.poll_output().unwrap() {
            Output::Timeout(_) => return connected,
            Output::Transmit(t) => {
                let r = Receive::new(Protocol::Udp, from_addr, to_addr, &t.contents).unwrap();
                to.handle_input(Input::Receive(now, r)).unwrap();
            }
            Output::Event(Event::Connected) => connected = true,
            Output::Event(_) => {}
        }
    }
}

fn forward(c: &mut Criterion) {
    let mut group = c.benchmark_group("forward");
    for n in [1usize, 10, 100] {
        let mut now = Instant::now();
        let mut consumers: Vec<Consumer> = (0..n)
            .map(|i| connected_consumer(i as u16, &mut now))
            .collect();
        let publisher_gate = GateCell::new(MediaGate {
            send: SourceSet::ALL,
            receive: true,
        });
        let bit = SourceSet::bit(TrackSource::Camera);
        let payload: Arc<[u8]> = vec![0x42u8; 1_100].into();
        let mut in_seq = 0u64;
        let total_ns = Cell::new(0u128);
        let total_pkts = Cell::new(0u128);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut start = Instant::now();
                let mut sent = 0u64;
                for i in 0..iters {
                    in_seq += 1;
                    // Virtual clock: 1000 packets per second per stream, so str0m's
                    // time-based state (RTX cache, reports, ICE consent) stays realistic.
                    now += Duration::from_millis(1);
                    if i % 500 == 499 {
                        // Untimed: let each client talk back (STUN consent, RTCP).
                        timed += start.elapsed();
                        for c in &mut consumers {
                            pump(&mut c.client, &mut c.rtc, c.client_addr, c.server_addr, now);
                        }
                        start = Instant::now();
                    }
                    let in_ts = (in_seq * 3000) as u32;
                    if !publisher_gate.sends(bit) {
                        continue;
                    }
                    for c in &mut consumers {
                        let Step::Forward { seq, ts, .. } =
                            c.st.step(c.gate.receives(), 0, in_seq, in_ts, now, 90_000)
                        else {
                            continue;
                        };
                        let PtLookup::Mapped(pt) = c.st.pts.get(96) else {
                            c.st.pts.set(96, Some(c.pt));
                            continue;
                        };
                        let mut api = c.rtc.direct_api();
                        let tx = api.stream_tx(&c.ssrc).unwrap();
                        tx.write_rtp(
                            RtpWrite::new(Pt::from(pt), SeqNo::from(seq), ts, now, payload.clone())
                                .marker(true)
                                .ext_vals(ExtensionValues::default())
                                .nackable(true),
                        );
                        c.rtc.handle_input(Input::Timeout(now)).unwrap();
                        loop {
                            match c.rtc.poll_output().unwrap() {
                                Output::Timeout(_) => break,
                                Output::Transmit(t) => {
                                    sent += 1;
                                    std::hint::black_box(&t.contents);
                                }
                                Output::Event(_) => {}
                            }
                        }
                    }
                }
                let el = timed + start.elapsed();
                total_ns.set(total_ns.get() + el.as_nanos());
                total_pkts.set(total_pkts.get() + u128::from(sent));
                el
            })
        });
        if total_pkts.get() > 0 {
            println!(
                "forward N={n}: {:.0} ns per forwarded packet ({} packets sent)",
                total_ns.get() as f64 / total_pkts.get() as f64,
                total_pkts.get()
            );
        }
    }
    group.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
