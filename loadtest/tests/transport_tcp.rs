//! `--transport tcp` against the real Greenroom server (HTTP, signaling, media plane and its
//! ICE-TCP listener on ephemeral ports, in this process): light bots whose only candidate is an
//! active TCP one reach the server over ICE-TCP, media flows both ways without loss, and the
//! server saw TCP connections (its counters), not UDP peers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use greenroom_loadtest::light::PeerTransport;
use greenroom_loadtest::runner::{self, RunConfig};
use greenroom_loadtest::scenario::{BotKind, Scenario, Target, VideoPreset};

use common::{init_logs, local_config, server_with};

/// Starts the whole server with ICE-TCP on a free port; returns its base URL and the state.
async fn server() -> (String, std::sync::Arc<greenroom_control::AppState>) {
    // The TCP port is picked by binding and releasing it (ICE-TCP on port 0 means off).
    let tcp_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = local_config();
    config.rtc.ice_tcp_port = Some(tcp_port);
    server_with(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_over_ice_tcp_forwards_media_without_loss() {
    init_logs();
    let (url, state) = server().await;
    let sfu = state.sfu.as_ref().expect("media plane on");
    let counters = sfu.ice_tcp_counters().expect("ICE-TCP on");
    let mut s = Scenario::new("tcp-smoke");
    s.audio_publishers = 1;
    s.video_publishers = 1;
    s.subscribers = 2;
    s.duration = Duration::from_secs(3);
    s.video = VideoPreset::Low.params();
    let mut config = RunConfig::new(Target::Greenroom, url);
    config.bots = BotKind::Light;
    config.transport = PeerTransport::Tcp;
    let r = runner::run(&s, &config).await.unwrap();
    let sum = &r.summary;
    assert_eq!(sum.transport, "tcp");
    assert_eq!((sum.joined, sum.join_failures), (4, 0), "{:?}", sum.errors);
    assert!(sum.forwarded_packets > 0, "nothing forwarded");
    assert!(
        sum.video_rx_kbps_per_track.is_some_and(|k| k > 0.0),
        "no video bytes received"
    );
    // TCP retransmits: nothing is lost on loopback.
    assert_eq!(sum.lost_packets, 0, "loss over ICE-TCP: {sum:?}");
    assert!(sum.latency_p50_ms.is_some(), "latency measured");
    // Each bot has a subscriber connection, each publisher one more: all over TCP.
    let accepted = counters.accepted.load(std::sync::atomic::Ordering::Relaxed);
    assert!(accepted >= 4, "ICE-TCP connections accepted: {accepted}");
    let frames = counters
        .frames_in
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        frames > sum.sent_packets / 2,
        "frames in {frames}, sent {}",
        sum.sent_packets
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_transport_needs_light_bots() {
    let s = Scenario::new("x");
    let mut config = RunConfig::new(Target::Greenroom, "http://127.0.0.1:1");
    config.transport = PeerTransport::Tcp;
    assert!(runner::check_bots(&s, &config).is_err());
    config.bots = BotKind::Light;
    assert!(runner::check_bots(&s, &config).is_ok());
}
