//! The revoke scenario (`--revoke-after`) against the real Greenroom server in this process:
//! a moderator revokes the video publisher's `send-video` mid-run while the light publisher,
//! like a hostile client, ignores `stop_publishing` and keeps sending; the subscribers must get
//! none of that video after a short grace, and get it again after the re-grant. Its own test
//! binary: the datagram counters are per process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use greenroom_loadtest::report;
use greenroom_loadtest::revoke::RevokePlan;
use greenroom_loadtest::runner::{self, RunConfig};
use greenroom_loadtest::scenario::{BotKind, Scenario, Target, VideoPreset};

use common::server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_publisher_reaches_no_subscriber_until_granted_again() {
    let url = server().await;
    let mut s = Scenario::new("revoke");
    s.video_publishers = 1;
    s.subscribers = 2;
    s.publishers_subscribe = false;
    s.duration = Duration::from_secs(6);
    s.video = VideoPreset::Low.params();
    let mut config = RunConfig::new(Target::Greenroom, url);
    config.bots = BotKind::Light;
    config.revoke = Some(RevokePlan {
        after: Duration::from_millis(1500),
        regrant_after: Some(Duration::from_secs(4)),
    });
    let r = runner::run(&s, &config).await.unwrap();
    let sum = &r.summary;
    eprintln!("{}", report::table(sum));
    assert_eq!((sum.joined, sum.join_failures), (3, 0), "{:?}", sum.errors);
    let rv = sum.revoke.as_ref().expect("revoke figures");
    assert!(rv.track_id.ends_with(":camera"), "{}", rv.track_id);
    assert!(rv.video_pps_before > 5.0, "video before the revoke: {rv:?}");
    // The publisher ignored stop_publishing and kept sending video; none of it was forwarded
    // once the grace for packets in flight was over, while its audio kept flowing.
    assert!(rv.stop_publishing_received >= 1, "{rv:?}");
    assert!(rv.publisher_video_sent > 10, "{rv:?}");
    assert_eq!(rv.revoked_video_media_packets, 0, "{rv:?}");
    assert!(rv.media_pps > 10.0, "audio in the revoked window: {rv:?}");
    assert!(rv.datagrams_out_per_s.is_some_and(|d| d > 0.0), "{rv:?}");
    // Granted again: the same track comes back.
    assert!(
        rv.video_pps_after_regrant.is_some_and(|v| v > 1.0),
        "video after the re-grant: {rv:?}"
    );
}

#[test]
fn janus_has_no_revoke() {
    let mut s = Scenario::new("revoke");
    s.video_publishers = 1;
    s.subscribers = 1;
    let mut config = RunConfig::new(Target::Janus, "http://127.0.0.1:1/janus");
    config.revoke = Some(RevokePlan {
        after: Duration::from_secs(1),
        regrant_after: None,
    });
    let e = runner::check_bots(&s, &config).unwrap_err();
    assert!(e.contains("--target greenroom"), "{e}");
    config.target = Target::Greenroom;
    assert!(runner::check_bots(&s, &config).is_ok());
}
