//! ICE over TCP end to end: str0m clients that have NO UDP candidate (only an active TCP one,
//! RFC 6544) connect to the media plane's passive TCP candidate with RFC 4571 framing; a
//! publisher's audio and video reach a subscriber, both over TCP. Also the listener's limits:
//! an oversized frame and a first frame that is not STUN close the connection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{send_media, wait_for, ClientState, ALL};
use greenroom_proto::{CallCid, PublishTrack, TrackSource};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive, TcpType};
use str0m::{Candidate, Event, Input, Output, RtcConfig};

type Job = Box<dyn FnOnce(&mut ClientState) + Send>;

/// A str0m client whose only transport is one TCP connection to the server's ICE-TCP port.
struct TcpClient {
    jobs: std_mpsc::Sender<Job>,
    connected: Arc<Mutex<bool>>,
    /// RTP packets received per mid.
    rx: Arc<Mutex<HashMap<String, u64>>>,
    /// Transmits the client's str0m wanted to send over UDP (never sent: UDP is "blocked").
    udp_attempts: Arc<Mutex<u64>>,
}

impl TcpClient {
    fn connect(server: SocketAddr) -> TcpClient {
        let stream = TcpStream::connect(server).unwrap();
        stream.set_nodelay(true).unwrap();
        let local = stream.local_addr().unwrap();
        let now = Instant::now();
        let mut rtc = RtcConfig::new().set_rtp_mode(true).build(now);
        let cand = Candidate::builder()
            .tcp()
            .host(local)
            .tcptype(TcpType::Active)
            .build()
            .unwrap();
        rtc.add_local_candidate(cand);
        let (jobs, job_rx) = std_mpsc::channel::<Job>();
        let connected: Arc<Mutex<bool>> = Default::default();
        let rx: Arc<Mutex<HashMap<String, u64>>> = Default::default();
        let udp_attempts: Arc<Mutex<u64>> = Default::default();
        // Reader thread: frames from the server, into the pump.
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
        let (c2, rx2, u2) = (connected.clone(), rx.clone(), udp_attempts.clone());
        std::thread::spawn(move || {
            let mut st = ClientState {
                rtc,
                send: Vec::new(),
                sending: false,
                seq: 0,
                next_audio: now,
                next_video: now,
                frame: 0,
                periodic_keyframes: true,
                keyframe_wanted: false,
            };
            let mut writer = stream;
            loop {
                loop {
                    match job_rx.try_recv() {
                        Ok(job) => job(&mut st),
                        Err(std_mpsc::TryRecvError::Empty) => break,
                        Err(std_mpsc::TryRecvError::Disconnected) => return,
                    }
                }
                let now = Instant::now();
                if st.sending && *c2.lock().unwrap() {
                    send_media(&mut st, now);
                }
                st.rtc.handle_input(Input::Timeout(now)).unwrap();
                let timeout = loop {
                    match st.rtc.poll_output().unwrap() {
                        Output::Timeout(t) => break t,
                        Output::Transmit(t) if t.proto == Protocol::Tcp => {
                            let mut framed = (t.contents.len() as u16).to_be_bytes().to_vec();
                            framed.extend_from_slice(&t.contents);
                            if writer.write_all(&framed).is_err() {
                                return;
                            }
                        }
                        Output::Transmit(_) => *u2.lock().unwrap() += 1,
                        Output::Event(Event::Connected) => *c2.lock().unwrap() = true,
                        Output::Event(Event::RtpPacket(p)) => {
                            let mid = st
                                .rtc
                                .direct_api()
                                .stream_rx(&p.header.ssrc)
                                .map(|s| s.mid().to_string())
                                .unwrap_or_default();
                            *rx2.lock().unwrap().entry(mid).or_default() += 1;
                        }
                        Output::Event(Event::KeyframeRequest(_)) => st.keyframe_wanted = true,
                        Output::Event(_) => {}
                    }
                };
                let wait = timeout
                    .saturating_duration_since(Instant::now())
                    .clamp(Duration::from_millis(1), Duration::from_millis(5));
                if let Ok(data) = frames.recv_timeout(wait) {
                    if let Ok(r) = Receive::new(Protocol::Tcp, server, local, &data) {
                        st.rtc
                            .handle_input(Input::Receive(Instant::now(), r))
                            .unwrap();
                    }
                }
            }
        });
        TcpClient {
            jobs,
            connected,
            rx,
            udp_attempts,
        }
    }

    fn call<T: Send + 'static>(&self, f: impl FnOnce(&mut ClientState) -> T + Send + 'static) -> T {
        let (tx, rx) = std_mpsc::channel();
        self.jobs
            .send(Box::new(move |st| {
                let _ = tx.send(f(st));
            }))
            .unwrap();
        rx.recv().unwrap()
    }

    fn is_connected(&self) -> bool {
        *self.connected.lock().unwrap()
    }

    fn count(&self, mid: &str) -> u64 {
        self.rx.lock().unwrap().get(mid).copied().unwrap_or(0)
    }
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

    let p = TcpClient::connect(tcp_addr);
    let (offer, tracks, pending) = p.call(|st| {
        let mut api = st.rtc.sdp_api();
        let a = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        let v = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
        let (offer, pending) = api.apply().unwrap();
        st.send = vec![(a, Codec::Opus), (v, Codec::Vp8)];
        let tracks = vec![
            PublishTrack {
                mid: a.to_string(),
                source: TrackSource::Microphone,
            },
            PublishTrack {
                mid: v.to_string(),
                source: TrackSource::Camera,
            },
        ];
        (offer.to_sdp_string(), tracks, pending)
    });
    let answer = sfu.publish("p", offer, tracks).await.unwrap();
    let tcp_line = format!(
        "{} {} typ host tcptype passive",
        tcp_addr.ip(),
        tcp_addr.port()
    );
    assert!(
        answer.contains(&tcp_line),
        "the answer offers the passive TCP candidate {tcp_line}:\n{answer}"
    );
    p.call(move |st| {
        let answer = SdpAnswer::from_sdp_string(&answer).unwrap();
        st.rtc.sdp_api().accept_answer(pending, answer).unwrap();
    });

    let s = TcpClient::connect(tcp_addr);
    let (offer, sub_tracks) = events.offer("s").await;
    assert!(offer.contains("tcptype passive"), "{offer}");
    let answer = s.call(move |st| {
        st.rtc
            .sdp_api()
            .accept_offer(SdpOffer::from_sdp_string(&offer).unwrap())
            .unwrap()
            .to_sdp_string()
    });
    sfu.subscriber_answer("s", answer).await.unwrap();
    wait_for("both TCP clients connected", || {
        p.is_connected() && s.is_connected()
    })
    .await;
    p.call(|st| st.sending = true);
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
    assert_eq!(*p.udp_attempts.lock().unwrap(), 0);
    assert_eq!(*s.udp_attempts.lock().unwrap(), 0);
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
        let frame_copy = frame.clone();
        let closed = tokio::task::spawn_blocking(move || {
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            c.write_all(&frame_copy).unwrap();
            let mut b = [0u8; 1];
            // The server closes: EOF (0) or a reset.
            matches!(c.read(&mut b), Ok(0) | Err(_))
        })
        .await
        .unwrap();
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
    let refused = tokio::task::spawn_blocking(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 1];
        matches!(c.read(&mut b), Ok(0) | Err(_))
    })
    .await
    .unwrap();
    assert!(refused, "the second connection was not closed");
    assert_eq!(counters.refused.load(Relaxed), 1);
    // The silent first one goes by the idle timeout.
    let idle = tokio::task::spawn_blocking(move || {
        let mut c = first;
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 1];
        matches!(c.read(&mut b), Ok(0) | Err(_))
    })
    .await
    .unwrap();
    assert!(idle, "the idle connection was not closed");
    wait_for("idle close counted", || {
        counters.idle_closed.load(Relaxed) == 1 && counters.open.load(Relaxed) == 0
    })
    .await;
    assert_eq!(counters.accepted.load(Relaxed), 1);
}
