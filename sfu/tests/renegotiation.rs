//! Subscriber renegotiation through the real engine (SDP only, no media): an offer queued
//! while the previous one is unanswered, unpublish, publisher renegotiation, gated publish,
//! errors for unknown participants and bad SDP; and a peer that never connects failing after
//! the connect timeout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use greenroom_proto::{CallCid, MediaGate, PublishTrack, SourceSet, SubscribedTrack, TrackSource};
use greenroom_sfu::{Sfu, SfuConfig, SfuError, SfuEvent};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::media::{Direction, MediaKind, Mid};
use str0m::{Candidate, Rtc, RtcConfig};
use tokio::sync::mpsc::UnboundedReceiver;

struct Events {
    rx: UnboundedReceiver<SfuEvent>,
    offers: HashMap<String, VecDeque<(String, Vec<SubscribedTrack>)>>,
}

impl Events {
    fn drain(&mut self) {
        while let Ok(ev) = self.rx.try_recv() {
            if let SfuEvent::SubscriberOffer {
                participant_id,
                sdp,
                tracks,
            } = ev
            {
                self.offers
                    .entry(participant_id)
                    .or_default()
                    .push_back((sdp, tracks));
            }
        }
    }

    /// Offers are emitted before the command that caused them replies, but `join`,
    /// `unpublish` and `leave` do not reply: give the engine a moment for those.
    async fn offer(&mut self, pid: &str) -> (String, Vec<SubscribedTrack>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.drain();
            if let Some(o) = self.offers.get_mut(pid).and_then(|q| q.pop_front()) {
                return o;
            }
            assert!(Instant::now() < deadline, "no offer for {pid}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn pending(&mut self, pid: &str) -> usize {
        self.drain();
        self.offers.get(pid).map_or(0, |q| q.len())
    }
}

fn client() -> Rtc {
    let mut rtc = RtcConfig::new().set_rtp_mode(true).build(Instant::now());
    rtc.add_local_candidate(Candidate::host("127.0.0.1:9".parse().unwrap(), "udp").unwrap());
    rtc
}

/// A publisher offer from `rtc` adding the given sources; returns the offer and the tracks.
fn publisher_offer(rtc: &mut Rtc, sources: &[TrackSource]) -> (String, Vec<PublishTrack>) {
    let mut api = rtc.sdp_api();
    let mut tracks = Vec::new();
    for s in sources {
        let kind = if s.is_audio() {
            MediaKind::Audio
        } else {
            MediaKind::Video
        };
        let mid: Mid = api.add_media(kind, Direction::SendOnly, None, None, None);
        tracks.push(PublishTrack {
            mid: mid.to_string(),
            source: *s,
        });
    }
    let (offer, pending) = api.apply().unwrap();
    // Keep the client's state consistent: answer comes back through `finish`.
    PENDING.with(|p| *p.borrow_mut() = Some(pending));
    (offer.to_sdp_string(), tracks)
}

thread_local! {
    static PENDING: std::cell::RefCell<Option<str0m::change::SdpPendingOffer>> =
        const { std::cell::RefCell::new(None) };
}

fn finish(rtc: &mut Rtc, answer: String) {
    let pending = PENDING.with(|p| p.borrow_mut().take()).unwrap();
    rtc.sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
        .unwrap();
}

fn answer(rtc: &mut Rtc, offer: &str) -> String {
    rtc.sdp_api()
        .accept_offer(SdpOffer::from_sdp_string(offer).unwrap())
        .unwrap()
        .to_sdp_string()
}

fn track_ids(tracks: &[SubscribedTrack]) -> Vec<String> {
    let mut v: Vec<_> = tracks.iter().map(|t| t.track.track_id.clone()).collect();
    v.sort();
    v
}

fn ids(tracks: &[SubscribedTrack]) -> Vec<(String, String)> {
    let mut v: Vec<_> = tracks
        .iter()
        .map(|t| (t.mid.clone(), t.track.track_id.clone()))
        .collect();
    v.sort();
    v
}

const ALL: MediaGate = MediaGate {
    send: SourceSet::ALL,
    receive: true,
};

#[tokio::test(flavor = "current_thread")]
async fn queued_offers_unpublish_and_publisher_renegotiation() {
    let (sfu, rx) = Sfu::start(SfuConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        advertise_ip: "127.0.0.1".parse().unwrap(),
    })
    .await
    .unwrap();
    let mut ev = Events {
        rx,
        offers: HashMap::new(),
    };
    let call: CallCid = "default:stage".parse().unwrap();
    let mut a = client();
    let mut b = client();
    let mut c = client();

    // Unknown participant and bad SDP are errors, not panics.
    let (offer, tracks) = publisher_offer(&mut a, &[TrackSource::Microphone]);
    assert!(matches!(
        sfu.publish("nobody", offer.clone(), tracks.clone()).await,
        Err(SfuError::UnknownParticipant(_))
    ));
    sfu.join(&call, "a", "ua", ALL);
    sfu.join(&call, "b", "ub", ALL);
    assert!(matches!(
        sfu.publish("a", "v=0 garbage".into(), tracks.clone()).await,
        Err(SfuError::Sdp(_))
    ));
    assert!(matches!(
        sfu.subscriber_answer("b", "nonsense".into()).await,
        Err(SfuError::Sdp(_))
    ));

    // A publishes the microphone plus a camera it may not send: both are registered (the
    // camera gated), so B is offered both.
    sfu.set_gate(
        "a",
        MediaGate {
            send: SourceSet::EMPTY.with(TrackSource::Microphone),
            receive: true,
        },
    );
    let mut a2 = client();
    let (offer, tracks) = publisher_offer(&mut a2, &[TrackSource::Microphone, TrackSource::Camera]);
    let ans = sfu.publish("a", offer, tracks).await.unwrap();
    finish(&mut a2, ans);
    let (offer1, t1) = ev.offer("b").await;
    assert_eq!(track_ids(&t1), ["a:camera", "a:microphone"]);
    let cam = t1
        .iter()
        .find(|t| t.track.source == TrackSource::Camera)
        .unwrap();
    assert!(cam.track.muted, "gated camera is announced muted");

    // C joins and publishes while B's offer is unanswered: the re-offer is queued.
    sfu.join(&call, "c", "uc", ALL);
    let (offer, tracks) = publisher_offer(&mut c, &[TrackSource::Microphone]);
    let ans = sfu.publish("c", offer, tracks).await.unwrap();
    finish(&mut c, ans);
    // C itself is offered A's tracks.
    let (_, tc) = ev.offer("c").await;
    assert_eq!(tc.len(), 2);
    assert_eq!(
        ev.pending("b"),
        0,
        "no second offer while the first is unanswered"
    );

    // B answers the first offer: the queued renegotiation goes out at once, with the first
    // two mids unchanged.
    let ans1 = answer(&mut b, &offer1);
    sfu.subscriber_answer("b", ans1).await.unwrap();
    let (offer2, t2) = ev.offer("b").await;
    assert_eq!(t2.len(), 3);
    for t in &t1 {
        assert!(ids(&t2).contains(&(t.mid.clone(), t.track.track_id.clone())));
    }
    let ans2 = answer(&mut b, &offer2);
    sfu.subscriber_answer("b", ans2.clone()).await.unwrap();
    // A second answer to the same offer is refused.
    assert!(matches!(
        sfu.subscriber_answer("b", ans2).await,
        Err(SfuError::Sdp(_))
    ));

    // Unpublishing A's camera re-offers B without it.
    sfu.unpublish("a", TrackSource::Camera);
    let (offer3, t3) = ev.offer("b").await;
    assert_eq!(track_ids(&t3), ["a:microphone", "c:microphone"]);
    let ans3 = answer(&mut b, &offer3);
    sfu.subscriber_answer("b", ans3).await.unwrap();

    // C leaves: B is re-offered only A's microphone.
    sfu.leave("c");
    let (_, t4) = ev.offer("b").await;
    assert_eq!(track_ids(&t4), ["a:microphone"]);
    // A got C's microphone offered (and, unanswered, the re-offer after C left is queued);
    // never its own tracks.
    ev.drain();
    let a_offers = ev.offers.remove("a").unwrap_or_default();
    assert_eq!(a_offers.len(), 1);
    assert_eq!(track_ids(&a_offers[0].1), ["c:microphone"]);
    drop(b);
}

#[tokio::test(flavor = "current_thread")]
async fn peer_that_never_connects_fails_after_the_connect_timeout() {
    let (sfu, mut rx) = greenroom_sfu::Sfu::start_with(
        SfuConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            advertise_ip: "127.0.0.1".parse().unwrap(),
        },
        greenroom_sfu::SfuOptions {
            connect_timeout: Duration::from_millis(300),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let call: CallCid = "default:t".parse().unwrap();
    sfu.join(&call, "ghost", "u", ALL);
    // The offer's client never sends a STUN check.
    let mut ghost = client();
    let (offer, tracks) = publisher_offer(&mut ghost, &[TrackSource::Microphone]);
    sfu.publish("ghost", offer, tracks).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match rx.recv().await {
                Some(SfuEvent::PeerFailed {
                    participant_id,
                    reason,
                }) => return (participant_id, reason),
                Some(_) => {}
                None => panic!("engine stopped"),
            }
        }
    })
    .await
    .expect("PeerFailed after the connect timeout");
    assert_eq!(ev.0, "ghost");
    assert!(ev.1.contains("timeout"), "{}", ev.1);
}
