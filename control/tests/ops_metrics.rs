//! `/metrics` during a real media session (webrtc-rs bots through the real server): the media
//! plane's forwarded counters grow while media flows, and after `send-video` is revoked from an
//! adversarial publisher (who keeps sending) the gate drops show up under
//! `capability="send-video"` while forwarded video stays put.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use greenroom_loadtest::{Bot, BotConfig, StopMode};
use greenroom_proto::{Role, TrackSource};

const WAIT: Duration = Duration::from_secs(10);

mod media_support;

use media_support::{server, Server};

impl Server {
    async fn bot(&self, user: &str) -> Bot {
        let token = self
            .state
            .auth
            .mint(user, None, Some(Role::User), false, 600)
            .unwrap();
        Bot::connect(BotConfig::new(self.url.clone(), token))
            .await
            .unwrap()
    }

    async fn scrape(&self) -> String {
        let r = reqwest::get(format!("{}/metrics", self.url)).await.unwrap();
        assert!(r.status().is_success());
        r.text().await.unwrap()
    }

    /// Scrapes until `pred` holds (bounded); returns that scrape.
    async fn scrape_until(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let t = self.scrape().await;
            if pred(&t) {
                return t;
            }
            assert!(Instant::now() < deadline, "{what} never held:\n{t}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The value of one sample (`name{labels}` exactly as exposed); panics when absent.
fn value(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {sample} in:\n{text}"))
        .parse()
        .unwrap()
}

const FWD_VIDEO: &str = "greenroom_packets_forwarded_total{kind=\"video\"}";
const FWD_AUDIO: &str = "greenroom_packets_forwarded_total{kind=\"audio\"}";
const RX_VIDEO: &str = "greenroom_packets_received_total{kind=\"video\"}";
const DROP_VIDEO: &str = "greenroom_packets_dropped_total{capability=\"send-video\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_forwarding_and_gate_drops() {
    let s = server().await;
    let before = s.scrape().await;
    assert_eq!(value(&before, FWD_VIDEO), 0.0);
    assert_eq!(value(&before, "greenroom_peers"), 0.0);

    let alice = s.bot("alice").await;
    alice.set_stop_mode(StopMode::Adversarial);
    let bob = s.bot("bob").await;
    let cid = "default:ops-metrics";
    let a = alice.join(cid, true).await.unwrap();
    bob.join(cid, false).await.unwrap();
    alice
        .publish(&[TrackSource::Microphone, TrackSource::Camera])
        .await
        .unwrap();
    let pid = a.participant.participant_id;
    let cam = format!("{pid}:camera");
    bob.wait_for_received(WAIT, |st| st.get(&cam).is_some_and(|t| t.packets > 20))
        .await
        .unwrap();

    // Forwarding grows while media flows.
    let t1 = s.scrape().await;
    let v1 = value(&t1, FWD_VIDEO);
    assert!(v1 > 0.0, "{t1}");
    let t2 = s
        .scrape_until("forwarded video and audio growing", |t| {
            value(t, FWD_VIDEO) > v1 + 10.0 && value(t, FWD_AUDIO) > value(&t1, FWD_AUDIO)
        })
        .await;
    // One subscriber: nothing is forwarded that was not received.
    assert!(value(&t2, FWD_VIDEO) <= value(&t2, RX_VIDEO));
    assert!(value(&t2, "greenroom_bytes_forwarded_total{kind=\"video\"}") > 0.0);
    assert_eq!(value(&t2, DROP_VIDEO), 0.0);
    // New subscriber -> a keyframe request went to the publisher.
    assert!(value(&t2, "greenroom_plis_total") >= 1.0, "{t2}");
    // alice: publisher + subscriber peer, bob: subscriber peer.
    let t2 = s
        .scrape_until("gauges", |t| {
            value(t, "greenroom_peers") == 3.0
                && value(t, "greenroom_producers{kind=\"video\"}") == 1.0
                && value(t, "greenroom_consumers{kind=\"video\"}") == 1.0
        })
        .await;
    assert_eq!(value(&t2, "greenroom_producers{kind=\"audio\"}"), 1.0);

    // Revoke send-video; the adversarial publisher keeps sending its camera.
    let from = alice.cursor();
    let admin = s.state.auth.mint("backend", None, None, true, 600).unwrap();
    let r = reqwest::Client::new()
        .post(format!(
            "{}/v1/calls/default/ops-metrics/user_permissions",
            s.url
        ))
        .bearer_auth(admin)
        .json(&serde_json::json!({"user_id":"alice","revoke_permissions":["send-video"]}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    alice.wait_for_stop_publishing(from, WAIT).await.unwrap();
    // Let packets already written to bob's peer leave, then take the baseline.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let t3 = s.scrape().await;
    let (fwd_v, drop_v) = (value(&t3, FWD_VIDEO), value(&t3, DROP_VIDEO));
    assert!(drop_v > 0.0, "no gate drop counted:\n{t3}");
    let sent0 = alice.sent()[&TrackSource::Camera].packets;
    let t4 = s
        .scrape_until("send-video drops growing", |t| {
            value(t, DROP_VIDEO) > drop_v + 20.0 && value(t, FWD_AUDIO) > value(&t3, FWD_AUDIO)
        })
        .await;
    assert!(
        alice.sent()[&TrackSource::Camera].packets > sent0,
        "the adversary stopped sending"
    );
    assert_eq!(value(&t4, FWD_VIDEO), fwd_v, "video forwarded after revoke");
    // Received video keeps counting (the packets do reach the server).
    assert!(value(&t4, RX_VIDEO) > value(&t3, RX_VIDEO));
    assert_eq!(
        value(
            &t4,
            "greenroom_packets_dropped_total{capability=\"send-audio\"}"
        ),
        0.0
    );
    // Exposition sanity: every media metric has HELP and TYPE.
    for name in [
        "greenroom_packets_forwarded_total",
        "greenroom_packets_dropped_total",
        "greenroom_rtt_seconds",
        "greenroom_peers",
        "greenroom_shard_peers",
        "greenroom_engine_drives_total",
        "greenroom_udp_unrouted_total",
        "greenroom_process_cpu_seconds_total",
    ] {
        assert!(t4.contains(&format!("# TYPE {name} ")), "{name}");
    }
    // Forwarding drove the subscriber peers; the server's CPU clock advanced with 10 ms steps.
    assert!(value(&t4, "greenroom_engine_drives_total{cause=\"output\"}") > 0.0);
    assert!(
        value(&t4, "greenroom_process_cpu_seconds_total")
            > value(&t3, "greenroom_process_cpu_seconds_total")
    );
}
