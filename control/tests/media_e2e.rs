//! End-to-end media tests: bots built on the `webrtc` crate (an independent WebRTC stack) join
//! through the real server (HTTP, WebSocket signaling, str0m media plane on real UDP) and the
//! tests check which RTP packets arrive, and which do not.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use greenroom_loadtest::{Bot, BotConfig, StopMode, TrackStats};
use greenroom_proto::{ErrorCode, Role, TrackSource};

const WAIT: Duration = Duration::from_secs(10);

mod media_support;

use media_support::{server, Server};

impl Server {
    fn token(&self, user: &str, role: Role) -> String {
        self.state
            .auth
            .mint(user, None, Some(role), false, 600)
            .unwrap()
    }

    async fn bot(&self, user: &str, role: Role) -> Bot {
        Bot::connect(BotConfig::new(self.url.clone(), self.token(user, role)))
            .await
            .unwrap()
    }

    /// POSTs an admin action; panics with the body unless it succeeds.
    async fn admin(&self, cid: &str, action: &str, body: serde_json::Value) {
        let token = self
            .state
            .auth
            .mint("backend", None, None, true, 600)
            .unwrap();
        let (t, id) = cid.split_once(':').unwrap();
        let res = reqwest::Client::new()
            .post(format!("{}/v1/calls/{t}/{id}/{action}", self.url))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = res.status();
        let text = res.text().await.unwrap();
        assert!(status.is_success(), "{action}: {status} {text}");
    }
}

fn track(stats: &HashMap<String, TrackStats>, id: &str) -> u64 {
    stats.get(id).map(|t| t.packets).unwrap_or(0)
}

/// Waits until a bot has received more than `n` packets on a track.
async fn received_more(bot: &Bot, id: &str, n: u64) -> u64 {
    let s = bot
        .wait_for_received(WAIT, |s| track(s, id) > n)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "no packets on {id} beyond {n}: {e}; have {:?}",
                bot.received()
            )
        });
    track(&s, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opus_and_vp8_reach_two_subscribers() {
    let s = server().await;
    let alice = s.bot("alice", Role::User).await;
    let bob = s.bot("bob", Role::User).await;
    let carol = s.bot("carol", Role::User).await;
    let cid = "default:e2e-fanout";
    let a = alice.join(cid, true).await.unwrap();
    bob.join(cid, false).await.unwrap();
    carol.join(cid, false).await.unwrap();
    alice
        .publish(&[TrackSource::Microphone, TrackSource::Camera])
        .await
        .unwrap();
    let pid = a.participant.participant_id;
    for sub in [&bob, &carol] {
        let stats = sub
            .wait_for_received(WAIT, |st| {
                track(st, &format!("{pid}:microphone")) > 25
                    && st
                        .get(&format!("{pid}:camera"))
                        .is_some_and(|t| t.packets > 25 && t.keyframes > 0)
            })
            .await
            .unwrap();
        let mic = &stats[&format!("{pid}:microphone")];
        let cam = &stats[&format!("{pid}:camera")];
        assert!(mic.bytes > 25 * 100, "opus bytes {}", mic.bytes);
        assert!(cam.bytes > cam.packets * 100, "vp8 bytes {}", cam.bytes);
    }
    // Nobody receives their own tracks.
    assert!(alice.received().keys().all(|k| !k.starts_with(&pid)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_video_stops_video_only_and_regrant_resumes_same_track() {
    let s = server().await;
    let alice = s.bot("alice", Role::User).await;
    let bob = s.bot("bob", Role::User).await;
    let cid = "default:e2e-revoke";
    let a = alice.join(cid, true).await.unwrap();
    bob.join(cid, false).await.unwrap();
    alice
        .publish(&[TrackSource::Microphone, TrackSource::Camera])
        .await
        .unwrap();
    let pid = a.participant.participant_id;
    let (mic, cam) = (format!("{pid}:microphone"), format!("{pid}:camera"));
    received_more(&bob, &cam, 20).await;
    received_more(&bob, &mic, 10).await;
    let answers = bob.answers_sent();

    let from = alice.cursor();
    s.admin(
        cid,
        "user_permissions",
        serde_json::json!({"user_id":"alice","revoke_permissions":["send-video"]}),
    )
    .await;
    let (sources, reason) = alice.wait_for_stop_publishing(from, WAIT).await.unwrap();
    assert_eq!(sources, vec![TrackSource::Camera]);
    assert_eq!(reason, "permission_revoked");
    bob.wait_for_event(0, "call.user_muted", WAIT)
        .await
        .unwrap();

    // Let in-flight packets land, then video must stay frozen while audio flows on.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let frozen_video = track(&bob.received(), &cam);
    let audio_before = track(&bob.received(), &mic);
    received_more(&bob, &mic, audio_before + 25).await;
    assert_eq!(
        track(&bob.received(), &cam),
        frozen_video,
        "video leaked after revoke"
    );

    // Granting again resumes the same track on the same connections.
    s.admin(
        cid,
        "user_permissions",
        serde_json::json!({"user_id":"alice","grant_permissions":["send-video"]}),
    )
    .await;
    // The obedient client resumes when its capability comes back.
    alice.set_muted(TrackSource::Camera, false).await.unwrap();
    received_more(&bob, &cam, frozen_video + 10).await;
    assert_eq!(bob.answers_sent(), answers, "resume needed a renegotiation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_publisher_leaks_nothing_after_revoke() {
    let s = server().await;
    let alice = s.bot("alice", Role::User).await;
    alice.set_stop_mode(StopMode::Adversarial);
    let bob = s.bot("bob", Role::User).await;
    let cid = "default:e2e-adversary";
    let a = alice.join(cid, true).await.unwrap();
    bob.join(cid, false).await.unwrap();
    alice
        .publish(&[TrackSource::Microphone, TrackSource::Camera])
        .await
        .unwrap();
    let pid = a.participant.participant_id;
    let (mic, cam) = (format!("{pid}:microphone"), format!("{pid}:camera"));
    received_more(&bob, &cam, 20).await;
    received_more(&bob, &mic, 10).await;

    let from = alice.cursor();
    s.admin(
        cid,
        "user_permissions",
        serde_json::json!({"user_id":"alice","revoke_permissions":["send-video","send-audio"]}),
    )
    .await;
    alice.wait_for_stop_publishing(from, WAIT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (v0, a0) = (track(&bob.received(), &cam), track(&bob.received(), &mic));
    let sent0 = alice.sent();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let sent1 = alice.sent();
    // The adversary really kept sending...
    assert!(
        sent1[&TrackSource::Camera].packets > sent0[&TrackSource::Camera].packets + 20,
        "the adversarial publisher stopped sending"
    );
    assert!(sent1[&TrackSource::Microphone].packets > sent0[&TrackSource::Microphone].packets + 20);
    // ...and nothing was forwarded.
    assert_eq!(track(&bob.received(), &cam), v0, "video leaked");
    assert_eq!(track(&bob.received(), &mic), a0, "audio leaked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_live_opens_media_to_listeners() {
    let s = server().await;
    let cid = "audio_room:e2e-stage";
    let host = s.bot("host1", Role::Host).await;
    let cohost = s.bot("cohost", Role::Host).await;
    let listener = s.bot("listener", Role::User).await;
    let h = host.join(cid, true).await.unwrap();
    cohost.join(cid, false).await.unwrap();
    // Backstage: the listener may not join yet.
    match listener.join(cid, false).await {
        Err(e) => assert!(format!("{e:?}").contains("backstage"), "{e:?}"),
        Ok(_) => panic!("listener joined a call in backstage"),
    }
    host.publish(&[TrackSource::Microphone]).await.unwrap();
    let mic = format!("{}:microphone", h.participant.participant_id);
    // Backstage participants already exchange media.
    received_more(&cohost, &mic, 10).await;
    // A host of an audio room may not publish video.
    let err = host
        .publish(&[TrackSource::Microphone, TrackSource::Camera])
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("send-video"), "{err:?}");

    s.admin(cid, "go_live", serde_json::json!({})).await;
    let listener = s.bot("listener", Role::User).await;
    listener.join(cid, false).await.unwrap();
    received_more(&listener, &mic, 10).await;
    // The listener cannot publish without send-audio.
    let err = listener
        .publish(&[TrackSource::Microphone])
        .await
        .unwrap_err();
    let text = format!("{err:?}");
    assert!(text.contains("send-audio"), "{text}");
    let _ = ErrorCode::MissingCapability;
}
