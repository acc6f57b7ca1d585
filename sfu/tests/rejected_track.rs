//! A publish offer whose first m-line the server rejects (video in H.265 only, a codec the
//! server does not forward), followed by Opus audio: announcing the rejected track is an error
//! (`SfuError::TrackRejected`, `media_error` on the wire), and the answer for the accepted
//! audio carries the server's ICE candidate in the accepted, bundled section (RFC 8843), not in
//! the rejected port-0 one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use greenroom_proto::{CallCid, MediaGate, PublishTrack, SourceSet, TrackSource};
use greenroom_sfu::{Sfu, SfuConfig, SfuError};
use str0m::media::{Direction, MediaKind};
use str0m::{Candidate, RtcConfig};

/// An offer from a client that sends H.265 video (mid of the first m-line) then Opus audio.
fn h265_then_opus_offer() -> (String, String, String) {
    let mut rtc = RtcConfig::new()
        .clear_codecs()
        .enable_h265(true)
        .enable_opus(true, false)
        .set_rtp_mode(true)
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host("127.0.0.1:9".parse().unwrap(), "udp").unwrap());
    let mut api = rtc.sdp_api();
    let video = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let audio = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let (offer, _pending) = api.apply().unwrap();
    (offer.to_sdp_string(), video.to_string(), audio.to_string())
}

/// The m-sections of an SDP, each as its lines.
fn sections(sdp: &str) -> Vec<Vec<&str>> {
    let mut out: Vec<Vec<&str>> = Vec::new();
    for l in sdp.split("\r\n").filter(|l| !l.is_empty()) {
        if l.starts_with("m=") {
            out.push(Vec::new());
        }
        if let Some(s) = out.last_mut() {
            s.push(l);
        }
    }
    out
}

#[tokio::test(flavor = "current_thread")]
async fn a_rejected_first_m_line_is_an_error_and_moves_the_candidate() {
    let (sfu, _rx) = Sfu::start(SfuConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        advertise_ip: "127.0.0.1".parse().unwrap(),
    })
    .await
    .unwrap();
    let call: CallCid = "default:rejected".parse().unwrap();
    let gate = MediaGate {
        send: SourceSet::ALL,
        receive: true,
    };
    sfu.join(&call, "a", "alice", gate);
    sfu.join(&call, "b", "bob", gate);

    // Announcing the H.265 camera: the server rejected its m-line, so publish fails.
    let (offer, video, audio) = h265_then_opus_offer();
    let tracks = vec![
        PublishTrack {
            mid: video.clone(),
            source: TrackSource::Camera,
        },
        PublishTrack {
            mid: audio.clone(),
            source: TrackSource::Microphone,
        },
    ];
    match sfu.publish("a", offer, tracks).await {
        Err(SfuError::TrackRejected(mid)) => assert_eq!(mid, video),
        other => panic!("expected TrackRejected({video}), got {other:?}"),
    }

    // Announcing only the audio: an answer, whose candidate sits in the audio section.
    let (offer, video, audio) = h265_then_opus_offer();
    let tracks = vec![PublishTrack {
        mid: audio.clone(),
        source: TrackSource::Microphone,
    }];
    let answer = sfu.publish("b", offer, tracks).await.unwrap();
    let secs = sections(&answer);
    let by_mid = |mid: &str| {
        secs.iter()
            .find(|s| s.contains(&format!("a=mid:{mid}").as_str()))
            .cloned()
            .unwrap_or_default()
    };
    let v = by_mid(&video);
    let a = by_mid(&audio);
    assert!(v[0].starts_with("m=video 0 "), "video rejected:\n{answer}");
    assert!(
        !v.iter().any(|l| l.starts_with("a=candidate:")),
        "no candidate in the rejected section:\n{answer}"
    );
    assert!(
        a.iter().any(|l| l.starts_with("a=candidate:")),
        "the candidate is in the accepted audio section:\n{answer}"
    );
    let bundle = answer
        .split("\r\n")
        .find_map(|l| l.strip_prefix("a=group:BUNDLE "))
        .unwrap_or_default();
    assert!(
        bundle.split(' ').any(|m| m == audio),
        "audio bundled: {bundle}"
    );
    assert!(
        !bundle.split(' ').any(|m| m == video),
        "rejected video outside BUNDLE: {bundle}"
    );
}
