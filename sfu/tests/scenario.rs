//! End-to-end scenario over real UDP on 127.0.0.1: the real engine, and independent str0m
//! clients (non-ICE-lite, each with its own socket and pump thread) as publisher and
//! subscribers. Shows forwarding to two subscribers, the gate cutting video while audio
//! continues, zero leaked video while gated, resumption on the same subscriber track without
//! renegotiation, the receive flag, garbage UDP, and leave.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use greenroom_proto::{
    CallCid, MediaGate, PeerTarget, PublishTrack, SourceSet, SubscribedTrack, TrackSource,
};
use greenroom_sfu::{Sfu, SfuConfig, SfuEvent};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpWrite, SeqNo};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};
use tokio::sync::mpsc::UnboundedReceiver;

/// What a client received: per mid, packet count, SSRCs seen and sequence numbers.
#[derive(Default, Debug, Clone)]
struct Rx {
    count: u64,
    ssrcs: Vec<u32>,
    seqs: Vec<u64>,
    /// Payload types seen.
    pts: Vec<u8>,
}

type Job = Box<dyn FnOnce(&mut ClientState) + Send>;

struct ClientState {
    rtc: Rtc,
    /// (mid, codec) of media this client sends synthetic RTP on.
    send: Vec<(Mid, Codec)>,
    sending: bool,
    seq: u64,
    next_audio: Instant,
    next_video: Instant,
    frame: u32,
}

/// A str0m client peer with its own UDP socket, pumped by its own thread.
struct Client {
    jobs: std_mpsc::Sender<Job>,
    rx: Arc<Mutex<HashMap<String, Rx>>>,
    connected: Arc<Mutex<bool>>,
}

impl Client {
    fn new() -> Client {
        Client::with_config(RtcConfig::new())
    }

    /// A client with its own codec configuration (RTP mode is always set).
    fn with_config(cfg: RtcConfig) -> Client {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let now = Instant::now();
        let mut rtc = cfg.set_rtp_mode(true).build(now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        let (jobs, job_rx) = std_mpsc::channel::<Job>();
        let rx: Arc<Mutex<HashMap<String, Rx>>> = Default::default();
        let connected: Arc<Mutex<bool>> = Default::default();
        let (rx2, conn2) = (rx.clone(), connected.clone());
        std::thread::spawn(move || {
            let mut st = ClientState {
                rtc,
                send: Vec::new(),
                sending: false,
                seq: 0,
                next_audio: now,
                next_video: now,
                frame: 0,
            };
            pump(&mut st, socket, addr, job_rx, rx2, conn2);
        });
        Client {
            jobs,
            rx,
            connected,
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

    fn received(&self, mid: &str) -> Rx {
        self.rx
            .lock()
            .unwrap()
            .get(mid)
            .cloned()
            .unwrap_or_default()
    }

    fn count(&self, mid: &str) -> u64 {
        self.received(mid).count
    }

    /// Creates a publisher offer with audio + video (SendOnly).
    fn publish_offer(&self) -> (String, Vec<PublishTrack>, SdpPendingOffer) {
        self.publish_offer_with(Codec::Vp8)
    }

    /// [`Client::publish_offer`], sending `video` on the camera track.
    fn publish_offer_with(&self, video: Codec) -> (String, Vec<PublishTrack>, SdpPendingOffer) {
        self.call(move |st| {
            let mut api = st.rtc.sdp_api();
            let a = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
            let v = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
            let (offer, pending) = api.apply().unwrap();
            st.send = vec![(a, Codec::Opus), (v, video)];
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
        })
    }

    fn accept_answer(&self, pending: SdpPendingOffer, answer: String) {
        self.call(move |st| {
            let answer = SdpAnswer::from_sdp_string(&answer).unwrap();
            st.rtc.sdp_api().accept_answer(pending, answer).unwrap();
        })
    }

    fn accept_offer(&self, offer: String) -> String {
        self.call(move |st| {
            let offer = SdpOffer::from_sdp_string(&offer).unwrap();
            st.rtc
                .sdp_api()
                .accept_offer(offer)
                .unwrap()
                .to_sdp_string()
        })
    }

    fn set_sending(&self, on: bool) {
        self.call(move |st| st.sending = on)
    }

    fn is_connected(&self) -> bool {
        *self.connected.lock().unwrap()
    }
}

fn pump(
    st: &mut ClientState,
    socket: UdpSocket,
    addr: SocketAddr,
    jobs: std_mpsc::Receiver<Job>,
    rx: Arc<Mutex<HashMap<String, Rx>>>,
    connected: Arc<Mutex<bool>>,
) {
    let mut buf = vec![0u8; 2048];
    loop {
        loop {
            match jobs.try_recv() {
                Ok(job) => job(st),
                Err(std_mpsc::TryRecvError::Empty) => break,
                Err(std_mpsc::TryRecvError::Disconnected) => return,
            }
        }
        let now = Instant::now();
        if st.sending && *connected.lock().unwrap() {
            send_media(st, now);
        }
        st.rtc.handle_input(Input::Timeout(now)).unwrap();
        let timeout = loop {
            match st.rtc.poll_output().unwrap() {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    let _ = socket.send_to(&t.contents, t.destination);
                }
                Output::Event(Event::Connected) => *connected.lock().unwrap() = true,
                Output::Event(Event::RtpPacket(p)) => {
                    let mid = st
                        .rtc
                        .direct_api()
                        .stream_rx(&p.header.ssrc)
                        .map(|s| s.mid().to_string())
                        .unwrap_or_default();
                    let mut m = rx.lock().unwrap();
                    let e = m.entry(mid).or_default();
                    e.count += 1;
                    if !e.ssrcs.contains(&*p.header.ssrc) {
                        e.ssrcs.push(*p.header.ssrc);
                    }
                    e.seqs.push(*p.seq_no);
                    if !e.pts.contains(&*p.header.payload_type) {
                        e.pts.push(*p.header.payload_type);
                    }
                }
                Output::Event(_) => {}
            }
        };
        let mut wait = timeout.saturating_duration_since(Instant::now());
        if st.sending {
            wait = wait.min(Duration::from_millis(5));
        }
        let wait = wait.clamp(Duration::from_millis(1), Duration::from_millis(20));
        socket.set_read_timeout(Some(wait)).unwrap();
        if let Ok((n, src)) = socket.recv_from(&mut buf) {
            if let Ok(r) = Receive::new(Protocol::Udp, src, addr, &buf[..n]) {
                st.rtc
                    .handle_input(Input::Receive(Instant::now(), r))
                    .unwrap();
            }
        }
    }
}

fn pt_for(rtc: &Rtc, codec: Codec) -> Pt {
    rtc.codec_config()
        .find(|p| p.spec().codec == codec)
        .map(|p| p.pt())
        .unwrap()
}

/// Synthetic media: Opus-sized audio every 20 ms, one VP8 packet per 33 ms frame.
fn send_media(st: &mut ClientState, now: Instant) {
    let send = st.send.clone();
    for (mid, codec) in send {
        let audio = codec == Codec::Opus;
        let due = if audio { st.next_audio } else { st.next_video };
        if now < due {
            continue;
        }
        if audio {
            st.next_audio = now + Duration::from_millis(20);
        } else {
            st.next_video = now + Duration::from_millis(33);
            st.frame += 1;
        }
        st.seq += 1;
        let pt = pt_for(&st.rtc, codec);
        let (ts, payload): (u32, Vec<u8>) = if audio {
            (st.seq as u32 * 960, vec![0xfc; 80])
        } else {
            // A keyframe every 30 frames, delta frames otherwise, in the codec's own framing.
            let key = st.frame % 30 == 1;
            let mut p = match codec {
                // Single NAL unit: IDR (5) or non-IDR slice (1).
                Codec::H264 => vec![if key { 0x65 } else { 0x41 }, 0x88],
                // Payload descriptor: B (begin) and, for delta frames, P (inter-predicted).
                Codec::Vp9 => vec![if key { 0x08 } else { 0x48 }, 0x80],
                // Aggregation header: N (new coded video sequence) on keyframes.
                Codec::Av1 => vec![if key { 0x18 } else { 0x10 }, 0x0a],
                _ => vec![0x10, if key { 0x00 } else { 0x01 }, 0x9d, 0x01, 0x2a],
            };
            p.resize(600, 0x55);
            (st.frame * 3000, p)
        };
        let mut ext = ExtensionValues::default();
        if audio {
            ext.audio_level = Some(-20);
            ext.voice_activity = Some(true);
        }
        let mut api = st.rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(mid, None) else {
            continue;
        };
        // Separate sequence spaces per stream: audio and video each count their own packets.
        let seq = if audio { st.seq } else { u64::from(st.frame) };
        tx.write_rtp(
            RtpWrite::new(pt, SeqNo::from(seq), ts, now, payload)
                .marker(true)
                .ext_vals(ext)
                .nackable(!audio),
        );
    }
}

/// The SFU's event stream with per-participant offer queues.
struct Events {
    rx: UnboundedReceiver<SfuEvent>,
    offers: HashMap<String, VecDeque<(String, Vec<SubscribedTrack>)>>,
    speakers: Vec<Vec<(String, f32)>>,
    failed: Vec<(String, String)>,
}

impl Events {
    fn drain(&mut self) {
        while let Ok(ev) = self.rx.try_recv() {
            self.push(ev);
        }
    }

    fn push(&mut self, ev: SfuEvent) {
        match ev {
            SfuEvent::SubscriberOffer {
                participant_id,
                sdp,
                tracks,
            } => self
                .offers
                .entry(participant_id)
                .or_default()
                .push_back((sdp, tracks)),
            SfuEvent::Speakers { speakers, .. } => self.speakers.push(speakers),
            SfuEvent::PeerFailed {
                participant_id,
                reason,
            } => self.failed.push((participant_id, reason)),
        }
    }

    async fn offer(&mut self, pid: &str) -> (String, Vec<SubscribedTrack>) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(o) = self.offers.get_mut(pid).and_then(|q| q.pop_front()) {
                return o;
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(ev)) => self.push(ev),
                _ => panic!("no subscriber offer for {pid}"),
            }
        }
    }

    fn has_offer(&mut self, pid: &str) -> bool {
        self.drain();
        self.offers.get(pid).is_some_and(|q| !q.is_empty())
    }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(Instant::now() < deadline, "gave up waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn mid_of(tracks: &[SubscribedTrack], source: TrackSource) -> String {
    tracks
        .iter()
        .find(|t| t.track.source == source)
        .map(|t| t.mid.clone())
        .unwrap()
}

/// A media plane on a free port of 127.0.0.1, and its event stream.
async fn start(options: greenroom_sfu::SfuOptions) -> (Sfu, Events) {
    let (sfu, rx) = Sfu::start_with(
        SfuConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            advertise_ip: "127.0.0.1".parse().unwrap(),
        },
        options,
    )
    .await
    .unwrap();
    let events = Events {
        rx,
        offers: HashMap::new(),
        speakers: Vec::new(),
        failed: Vec::new(),
    };
    (sfu, events)
}

const ALL: MediaGate = MediaGate {
    send: SourceSet::ALL,
    receive: true,
};

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

/// Joins `publisher` and `subscriber` to `call`, publishes audio + video from the first, answers
/// the second's offer; returns both clients, connected, and the subscriber's (audio, video) mids.
/// `bwe`: bandwidth estimation on the subscriber's peer.
async fn publish_and_subscribe(
    sfu: &Sfu,
    events: &mut Events,
    call: &CallCid,
    (publisher, subscriber): (&str, &str),
    bwe: bool,
) -> (Client, Client, (String, String)) {
    let options = greenroom_sfu::JoinOptions {
        bandwidth_estimation: bwe,
    };
    for pid in [publisher, subscriber] {
        sfu.join_with(call, pid, &format!("u-{pid}"), ALL, options);
    }
    let p = Client::new();
    let (offer, tracks, pending) = p.publish_offer();
    let answer = sfu.publish(publisher, offer, tracks).await.unwrap();
    p.accept_answer(pending, answer);
    let s = Client::new();
    let (sdp, tracks) = events.offer(subscriber).await;
    let answer = s.accept_offer(sdp);
    sfu.subscriber_answer(subscriber, answer).await.unwrap();
    let mids = (
        mid_of(&tracks, TrackSource::Microphone),
        mid_of(&tracks, TrackSource::Camera),
    );
    wait_for("pair connected", || p.is_connected() && s.is_connected()).await;
    p.set_sending(true);
    (p, s, mids)
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
