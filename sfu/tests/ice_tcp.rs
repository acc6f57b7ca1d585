//! ICE over TCP end to end: str0m clients that have NO UDP candidate (only an active TCP one,
//! RFC 6544) connect to the media plane's passive TCP candidate with RFC 4571 framing; a
//! publisher's audio and video reach a subscriber, both over TCP. Also the listener's limits:
//! an oversized frame and a first frame that is not STUN close the connection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{answer_offer, publish_from, wait_for, Client, Transport, ALL};
use greenroom_proto::{CallCid, TrackSource};
use str0m::net::{Protocol, Receive, TcpType, Transmit};
use str0m::{Candidate, Input, Rtc, RtcConfig};

/// A client's only transport: one TCP connection to the server's ICE-TCP port, RFC 4571
/// framing. Transmits its str0m wants to send over UDP are counted, never sent: UDP is
/// "blocked".
struct TcpTransport {
    writer: TcpStream,
    /// Frames from the server, read by a thread of their own.
    frames: std_mpsc::Receiver<Vec<u8>>,
    server: SocketAddr,
    local: SocketAddr,
    udp_attempts: Arc<AtomicU64>,
}

impl Transport for TcpTransport {
    fn transmit(&mut self, t: &Transmit) -> bool {
        if t.proto != Protocol::Tcp {
            self.udp_attempts.fetch_add(1, SeqCst);
            return true;
        }
        let mut framed = (t.contents.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&t.contents);
        self.writer.write_all(&framed).is_ok()
    }

    fn receive(&mut self, wait: Duration, rtc: &mut Rtc) {
        if let Ok(data) = self.frames.recv_timeout(wait) {
            if let Ok(r) = Receive::new(Protocol::Tcp, self.server, self.local, &data) {
                rtc.handle_input(Input::Receive(Instant::now(), r)).unwrap();
            }
        }
    }
}

/// A str0m client whose only candidate is an active TCP one, connected to `server`; returns it
/// and its count of UDP transmit attempts.
fn tcp_client(server: SocketAddr) -> (Client, Arc<AtomicU64>) {
    let stream = TcpStream::connect(server).unwrap();
    stream.set_nodelay(true).unwrap();
    let local = stream.local_addr().unwrap();
    let mut rtc = RtcConfig::new().set_rtp_mode(true).build(Instant::now());
    let cand = Candidate::builder()
        .tcp()
        .host(local)
        .tcptype(TcpType::Active)
        .build()
        .unwrap();
    rtc.add_local_candidate(cand);
    let (frames_tx, frames) = std_mpsc::channel::<Vec<u8>>();
    let mut reader = stream.try_clone().unwrap();
    std::thread::spawn(move || loop {
        let mut len = [0u8; 2];
        if reader.read_exact(&mut len).is_err() {
            return;
        }
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if reader.read_exact(&mut buf).is_err() || frames_tx.send(buf).is_err() {
            return;
        }
    });
    let udp_attempts: Arc<AtomicU64> = Default::default();
    let transport = TcpTransport {
        writer: stream,
        frames,
        server,
        local,
        udp_attempts: udp_attempts.clone(),
    };
    (Client::spawn(rtc, transport), udp_attempts)
}

/// Reads from `c` until the server closes it: true on EOF or a reset, false when a byte
/// arrives or nothing happens for 10 s.
async fn closed_by_server(mut c: TcpStream) -> bool {
    tokio::task::spawn_blocking(move || {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 1];
        matches!(c.read(&mut b), Ok(0) | Err(_))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_only_clients_publish_and_subscribe_over_ice_tcp() {
    let (sfu, mut events) = common::start(greenroom_sfu::SfuOptions {
        ice_tcp_port: Some(0),
        ..Default::default()
    })
    .await;
    let tcp_addr = sfu.ice_tcp_addr().expect("ICE-TCP on");
    let call: CallCid = "default:icetcp".parse().unwrap();
    sfu.join(&call, "p", "alice", ALL);
    sfu.join(&call, "s", "bob", ALL);

    let (p, p_udp) = tcp_client(tcp_addr);
    let answer = publish_from(&sfu, "p", &p).await;
    let tcp_line = format!(
        "{} {} typ host tcptype passive",
        tcp_addr.ip(),
        tcp_addr.port()
    );
    assert!(
        answer.contains(&tcp_line),
        "the answer offers the passive TCP candidate {tcp_line}:\n{answer}"
    );

    let (s, s_udp) = tcp_client(tcp_addr);
    let (offer, sub_tracks) = answer_offer(&sfu, &mut events, "s", &s).await;
    assert!(offer.contains("tcptype passive"), "{offer}");
    wait_for("both TCP clients connected", || {
        p.is_connected() && s.is_connected()
    })
    .await;
    p.set_sending(true);
    let audio = common::mid_of(&sub_tracks, TrackSource::Microphone);
    let video = common::mid_of(&sub_tracks, TrackSource::Camera);
    wait_for("audio and video over TCP", || {
        s.count(&audio) > 20 && s.count(&video) > 20
    })
    .await;
    let counters = sfu.ice_tcp_counters().unwrap();
    assert!(counters.frames_in.load(Relaxed) > 40);
    assert_eq!(counters.accepted.load(Relaxed), 2);
    assert_eq!(counters.open.load(Relaxed), 2);
    let metrics = sfu.metrics_text();
    assert!(
        metrics.contains("greenroom_ice_tcp_connections 2\n"),
        "{metrics}"
    );
    // The clients never had a UDP path to use.
    assert_eq!(p_udp.load(SeqCst), 0);
    assert_eq!(s_udp.load(SeqCst), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn bad_frames_close_the_connection() {
    let (sfu, _events) = common::start(greenroom_sfu::SfuOptions {
        ice_tcp_port: Some(0),
        ..Default::default()
    })
    .await;
    let addr = sfu.ice_tcp_addr().unwrap();
    let counters = sfu.ice_tcp_counters().unwrap();
    for (i, frame) in [
        // Longer than the largest frame accepted (2048 by default).
        {
            let mut f = 4000u16.to_be_bytes().to_vec();
            f.extend_from_slice(&[0u8; 64]);
            f
        },
        // A well-framed first packet that is not a STUN request for a server ufrag.
        {
            let mut f = 4u16.to_be_bytes().to_vec();
            f.extend_from_slice(&[0x80, 0x60, 0, 1]);
            f
        },
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(&frame).unwrap();
        let closed = closed_by_server(c).await;
        assert!(closed, "frame {i} did not close the connection");
        wait_for("bad frame counted", || {
            counters.bad_frames.load(Relaxed) == i as u64 + 1
        })
        .await;
    }
    wait_for("connections gone", || counters.open.load(Relaxed) == 0).await;
}

#[tokio::test(flavor = "current_thread")]
async fn idle_connections_close_and_the_connection_limit_refuses() {
    let (sfu, _events) = common::start(greenroom_sfu::SfuOptions {
        ice_tcp_port: Some(0),
        ice_tcp_limits: greenroom_sfu::TcpLimits {
            max_connections: 1,
            idle_timeout: Duration::from_millis(300),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let addr = sfu.ice_tcp_addr().unwrap();
    let counters = sfu.ice_tcp_counters().unwrap();
    // One silent connection: open until the idle timeout closes it.
    let first = TcpStream::connect(addr).unwrap();
    wait_for("first connection open", || counters.open.load(Relaxed) == 1).await;
    // A second one while the first is open: over the limit, closed at once.
    let refused = closed_by_server(TcpStream::connect(addr).unwrap()).await;
    assert!(refused, "the second connection was not closed");
    assert_eq!(counters.refused.load(Relaxed), 1);
    // The silent first one goes by the idle timeout.
    let idle = closed_by_server(first).await;
    assert!(idle, "the idle connection was not closed");
    wait_for("idle close counted", || {
        counters.idle_closed.load(Relaxed) == 1 && counters.open.load(Relaxed) == 0
    })
    .await;
    assert_eq!(counters.accepted.load(Relaxed), 1);
}
