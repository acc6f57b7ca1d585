//! Greenroom's load tester and WebRTC client bots, built on the `webrtc` crate (webrtc-rs 0.21),
//! and light bots on str0m 0.25 ([`light`]: [`LightBot`]) that cost a fraction of the CPU.
//!
//! Three layers, usable separately:
//!
//! - [`media`]: a [`Publisher`] (one PeerConnection with send-only Opus/VP8 transceivers that
//!   sends synthetic RTP) and a [`Subscriber`] (answers offers, counts packets per track). No
//!   signaling: SDP strings in, SDP strings out.
//! - [`signal`]: a WebSocket client for `/v1/signal` speaking [`greenroom_proto`] messages.
//! - [`Bot`]: both together, behaving like a client: join, publish, auto-answer
//!   `subscriber_offer`, obey (or, in [`StopMode::Adversarial`], ignore) `stop_publishing`,
//!   record every server message.
//!
//! # The load tester
//!
//! The `greenroom-loadtest` binary (see `docs/BENCHMARKS.md`) is built from [`scenario`] (what
//! to run), [`runner`] (joins bots at a join rate, samples throughput, loss, latency, CPU and
//! memory every second, [`runner::find_max`] ramps subscribers to a bound), [`revoke`] (a
//! moderator revokes a publisher's `send-video` mid-run), [`janus`] (the same
//! media layer behind Janus videoroom signaling), [`procstat`] (server CPU and RSS from `/proc`
//! or `/metrics`), [`histogram`] (latency percentiles), [`token`] (HS256 tokens) and [`report`]
//! (table, JSON, self-contained HTML).
//!
//! # Synthetic media
//!
//! Opus: 50 packets/s, 100-160 byte payloads, timestamp +960. VP8: `fps` frames per second at
//! `bitrate_bps`, split into payloads of at most 1200 bytes with a valid VP8 payload descriptor
//! (S bit on the first packet, RTP marker on the last) and a keyframe (VP8 header P bit 0)
//! every `keyframe_interval` frames and after every resume. Every payload ends with a
//! [`probe::Probe`]: a per-track packet sequence and the send time in microseconds since the
//! Unix epoch, from which the subscriber computes loss and one-way latency.
//!
//! # How an end-to-end test uses it
//!
//! ```no_run
//! # async fn e2e() -> Result<(), greenroom_loadtest::BotError> {
//! use std::time::Duration;
//! use greenroom_loadtest::{Bot, BotConfig, StopMode};
//! use greenroom_proto::TrackSource;
//!
//! let url = "http://127.0.0.1:7880";
//! # let (alice_token, bob_token) = (String::new(), String::new());
//! let alice = Bot::connect(BotConfig::new(url, alice_token)).await?;
//! let bob = Bot::connect(BotConfig::new(url, bob_token)).await?;
//! let joined = alice.join("default:room1", true).await?;
//! bob.join("default:room1", false).await?;
//!
//! // Alice publishes; Bob's bot answers the server's subscriber offers by itself.
//! alice
//!     .publish(&[TrackSource::Microphone, TrackSource::Camera])
//!     .await?;
//! let camera = format!("{}:camera", joined.participant.participant_id);
//! let stats = bob
//!     .wait_for_received(Duration::from_secs(5), |s| {
//!         s.get(&camera).is_some_and(|t| t.packets > 50 && t.keyframes > 0)
//!     })
//!     .await?;
//! assert_eq!(stats[&camera].lost, 0);
//!
//! // An adversarial publisher keeps sending after `stop_publishing`; the server must stop
//! // forwarding by itself.
//! alice.set_stop_mode(StopMode::Adversarial);
//! let from = alice.cursor();
//! // ... a moderator revokes alice's send-video here ...
//! let (sources, _reason) = alice
//!     .wait_for_stop_publishing(from, Duration::from_secs(5))
//!     .await?;
//! assert!(sources.contains(&TrackSource::Camera));
//! let frozen = bob.received()[&camera].packets;
//! tokio::time::sleep(Duration::from_millis(500)).await;
//! assert!(alice.sent()[&TrackSource::Camera].packets > 0);
//! assert!(bob.received()[&camera].packets <= frozen + 5); // in-flight packets only
//! # Ok(())
//! # }
//! ```
//!
//! Without a server, a [`Publisher`] can be paired directly with a [`Subscriber`] (see
//! `tests/media.rs`): the subscriber answers the publisher's offer.
//!
//! # Caveats (webrtc-rs 0.21)
//!
//! - `write_rtp` reports most rejections only in logs: install a `tracing` subscriber (it
//!   bridges the `log` records of webrtc-rs) when a test sees fewer packets than expected.
//! - Remote tracks appear on their first packet; a track that never carries media never shows
//!   in [`Subscriber::stats`].
//! - RTCP keyframe requests (PLI/FIR) are not acted on: keyframes come periodically, on resume,
//!   and on [`Publisher::request_keyframe`].

pub mod bot;
pub mod error;
pub mod floor;
pub mod histogram;
pub mod janus;
pub mod light;
pub mod media;
pub mod probe;
pub mod procstat;
pub mod report;
pub mod revoke;
pub mod runner;
pub mod scenario;
pub mod signal;
pub mod stats;
pub mod token;
pub mod turn;
pub mod vp8;

pub use bot::{Bot, BotConfig, Joined, StopMode};
pub use error::{BotError, Result};
pub use light::{LightBot, LightConfig, LightPeer};
pub use media::{Publisher, PublisherConfig, Subscriber, SubscriberConfig};
pub use signal::SignalClient;
pub use stats::TrackStats;
