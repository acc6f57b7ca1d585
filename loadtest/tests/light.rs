//! Light (str0m) bots against the real Greenroom server (HTTP, signaling and media plane on
//! ephemeral ports, in this process): media flows through the server with probe accounting,
//! the scenario runner works with `--bots light`, and simulcast layer selection follows
//! `set_quality`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use greenroom_loadtest::runner::{self, RunConfig};
use greenroom_loadtest::scenario::{BotKind, Scenario, Target};
use greenroom_loadtest::stats::TrackStats;
use greenroom_loadtest::{token, LightBot, LightConfig};
use greenroom_proto::{Quality, TrackSource};

use common::{init_logs, server};

const WAIT: Duration = Duration::from_secs(5);

fn cid() -> String {
    format!("default:light{:x}", rand::random::<u32>())
}

async fn bot(
    url: &str,
    call: &str,
    user: &str,
    role: &str,
    cfg: impl FnOnce(&mut LightConfig),
) -> LightBot {
    let tok = token::mint(token::DEV_KEY, token::DEV_SECRET, user, call, role, 600).unwrap();
    let mut c = LightConfig::new(url, tok);
    cfg(&mut c);
    LightBot::connect(c).await.unwrap()
}

fn camera(s: &HashMap<String, TrackStats>) -> Option<&TrackStats> {
    s.values().find(|t| t.source == Some(TrackSource::Camera))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn light_bots_publish_and_receive_through_greenroom() {
    init_logs();
    let url = server().await;
    let call = cid();
    let alice = bot(&url, &call, "alice", "host", |_| {}).await;
    let joined = alice.join(&call, true).await.unwrap();
    let bob = bot(&url, &call, "bob", "user", |_| {}).await;
    bob.join(&call, false).await.unwrap();
    alice
        .publish(&[TrackSource::Microphone, TrackSource::Camera])
        .await
        .unwrap();
    let mic = format!("{}:microphone", joined.participant_id);
    let cam = format!("{}:camera", joined.participant_id);
    let stats = bob
        .wait_for_received(WAIT, |s| {
            s.get(&mic).is_some_and(|t| t.packets >= 50)
                && s.get(&cam)
                    .is_some_and(|t| t.keyframes >= 1 && t.markers >= 30)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}: {:?}", bob.received()));
    for id in [&mic, &cam] {
        let t = &stats[id];
        assert!(t.probes > 0, "{id}: probes");
        let mean = t.mean_latency().unwrap();
        assert!(mean < Duration::from_secs(1), "{id}: latency {mean:?}");
        assert!(
            t.lost <= t.packets / 20,
            "{id}: lost {} of {}",
            t.lost,
            t.packets
        );
    }
    assert_eq!(stats[&mic].source, Some(TrackSource::Microphone));
    assert!(bob.answers_sent() >= 1);
    assert!(alice.sent()[&TrackSource::Camera].keyframes >= 1);
    assert!(alice.errors().is_empty() && bob.errors().is_empty());
    alice.close().await;
    bob.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_with_light_bots_measures_media() {
    init_logs();
    let url = server().await;
    let mut s = Scenario::new("light-runner");
    s.audio_publishers = 1;
    s.video_publishers = 1;
    s.subscribers = 3;
    s.duration = Duration::from_secs(3);
    s.video = greenroom_loadtest::scenario::VideoPreset::Low.params();
    let mut config = RunConfig::new(Target::Greenroom, url);
    config.bots = BotKind::Light;
    let r = runner::run(&s, &config).await.unwrap();
    let sum = &r.summary;
    assert_eq!(sum.bots, "light");
    assert_eq!((sum.joined, sum.join_failures), (5, 0), "{:?}", sum.errors);
    assert!(sum.forwarded_packets > 0, "nothing forwarded");
    assert!(
        sum.forwarded_pps > sum.expected_pps * 0.5,
        "{} of {} pkt/s",
        sum.forwarded_pps,
        sum.expected_pps
    );
    let p50 = sum.latency_p50_ms.expect("latency measured");
    assert!(p50.is_finite() && p50 < 1000.0, "p50 {p50} ms");
    assert!(sum.loss_pct < 5.0, "loss {}%", sum.loss_pct);
    assert!(sum.video_rx_kbps_per_track.is_some_and(|k| k > 0.0));
    // The publishers (on their own thread) kept their nominal rate: a correctness check of the
    // bots, not a speed bound on the server. A stalled publisher sends far less; the bound is
    // loose for a loaded 2-core machine, the top catches double counting.
    let rate = sum.publisher_rate_pct.expect("a nominal rate");
    assert!(
        (80.0..=125.0).contains(&rate),
        "publishers sent {rate:.1} % of nominal ({:.0} of {:.0} pkt/s)",
        sum.sent_pps,
        sum.nominal_sent_pps
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulcast_low_receives_a_lower_layer_than_high() {
    init_logs();
    let url = server().await;
    let call = cid();
    let alice = bot(&url, &call, "alice", "host", |c| c.simulcast = true).await;
    alice.join(&call, true).await.unwrap();
    let low = bot(&url, &call, "low", "user", |c| {
        c.quality = Some(Quality::Low)
    })
    .await;
    low.join(&call, false).await.unwrap();
    let high = bot(&url, &call, "high", "user", |c| {
        c.quality = Some(Quality::High)
    })
    .await;
    high.join(&call, false).await.unwrap();
    alice.publish(&[TrackSource::Camera]).await.unwrap();
    // Wait until both receive video, then let the layer choice settle.
    for b in [&low, &high] {
        b.wait_for_received(WAIT, |s| camera(s).is_some_and(|t| t.packets > 10))
            .await
            .unwrap_or_else(|e| panic!("{e}: {:?}", b.received()));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let bytes = |b: &LightBot| camera(&b.received()).map_or(0, |t| t.bytes);
    let (l0, h0) = (bytes(&low), bytes(&high));
    let window = Duration::from_secs(3);
    tokio::time::sleep(window).await;
    let kbps = |b0: u64, b1: u64| (b1 - b0) as f64 * 8.0 / 1000.0 / window.as_secs_f64();
    let low_kbps = kbps(l0, bytes(&low));
    let high_kbps = kbps(h0, bytes(&high));
    let low_stats = camera(&low.received()).cloned().unwrap();
    let high_stats = camera(&high.received()).cloned().unwrap();
    eprintln!(
        "low: {low_kbps:.0} kbit/s layers {:?}; high: {high_kbps:.0} kbit/s layers {:?}",
        low_stats.layer_packets, high_stats.layer_packets
    );
    assert_eq!(low_stats.layer, Some(0), "low receives layer q");
    assert!(
        high_stats.layer.is_some_and(|l| l > 0),
        "high receives h or f"
    );
    assert!(
        high_kbps > 1.8 * low_kbps && low_kbps > 0.0,
        "low {low_kbps:.0} kbit/s vs high {high_kbps:.0} kbit/s"
    );
    assert!(alice.errors().is_empty());
}
