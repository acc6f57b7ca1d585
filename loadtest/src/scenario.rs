//! What a load test does: how many publishers of which kind, how many subscribers, for how
//! long, at which join rate, against which server; and the standard suite.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use greenroom_proto::Quality;

use crate::light::SIMULCAST_LAYERS;
use crate::media::{AudioParams, VideoParams};
use crate::vp8::packet_count;

/// Which client implementation the bots use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BotKind {
    /// webrtc-rs 0.21 PeerConnections ([`Bot`](crate::Bot)): complete clients, about 55-70 µs
    /// of CPU per received packet in a release build.
    #[default]
    Webrtc,
    /// str0m 0.25 in RTP mode ([`LightBot`](crate::LightBot)): no depacketizing, one task and
    /// socket per peer, all on one thread; about 33 µs per received packet.
    Light,
}

impl BotKind {
    /// The name shown in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            BotKind::Webrtc => "webrtc",
            BotKind::Light => "light",
        }
    }
}

/// The server a scenario runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Greenroom: `/v1/signal` WebSocket signaling.
    Greenroom,
    /// Janus 1.x videoroom plugin over its HTTP API.
    Janus,
}

impl Target {
    /// The name shown in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Greenroom => "greenroom",
            Target::Janus => "janus",
        }
    }
}

/// Synthetic video quality presets (VP8 bitrate, frame rate, size written in keyframes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VideoPreset {
    /// 320x180, 15 fps, 150 kbit/s.
    Low,
    /// 640x360, 30 fps, 500 kbit/s.
    Medium,
    /// 1280x720, 30 fps, 1.5 Mbit/s.
    High,
}

impl VideoPreset {
    /// The publisher's video parameters for this preset.
    pub fn params(self) -> VideoParams {
        let (width, height, fps, bitrate_bps) = match self {
            VideoPreset::Low => (320, 180, 15, 150_000),
            VideoPreset::Medium => (640, 360, 30, 500_000),
            VideoPreset::High => (1280, 720, 30, 1_500_000),
        };
        VideoParams {
            fps,
            bitrate_bps,
            width,
            height,
            keyframe_interval: fps * 2,
            max_payload: 1200,
        }
    }

    /// Parses `low`, `medium` or `high` (also `360p`-style names).
    pub fn parse(s: &str) -> Option<VideoPreset> {
        match s.to_ascii_lowercase().as_str() {
            "low" | "180p" => Some(VideoPreset::Low),
            "medium" | "360p" => Some(VideoPreset::Medium),
            "high" | "720p" => Some(VideoPreset::High),
            _ => None,
        }
    }
}

/// One load-test case.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scenario {
    /// A short name for reports (`audio-room-1x200`).
    pub name: String,
    /// Publishers sending Opus only.
    pub audio_publishers: usize,
    /// Publishers sending VP8 video and Opus audio (a meeting participant with a camera).
    pub video_publishers: usize,
    /// Participants that only receive.
    pub subscribers: usize,
    /// Whether publishers also receive every other publisher (a meeting). Listeners always
    /// receive every publisher.
    pub publishers_subscribe: bool,
    /// How long media flows once everyone joined.
    pub duration: Duration,
    /// Joins started per second.
    pub join_rate: f64,
    /// Video parameters.
    #[serde(serialize_with = "ser_video")]
    pub video: VideoParams,
    /// Audio parameters.
    #[serde(serialize_with = "ser_audio")]
    pub audio: AudioParams,
    /// Greenroom call type (`default`, `audio_room`, `livestream`, `development`).
    pub call_type: String,
    /// Video publishers send three simulcast layers (light bots only).
    pub simulcast: bool,
    /// Receivers ask this quality for every video track (`set_quality`); the server's default
    /// (high) when `None`.
    pub quality: Option<Quality>,
}

impl Scenario {
    /// A scenario with defaults: no one, 10 s, 20 joins/s, medium video, call type `default`.
    pub fn new(name: impl Into<String>) -> Scenario {
        Scenario {
            name: name.into(),
            audio_publishers: 0,
            video_publishers: 0,
            subscribers: 0,
            publishers_subscribe: true,
            duration: Duration::from_secs(10),
            join_rate: 20.0,
            video: VideoPreset::Medium.params(),
            audio: AudioParams::default(),
            call_type: "default".into(),
            simulcast: false,
            quality: None,
        }
    }

    /// All publishers.
    pub fn publishers(&self) -> usize {
        self.audio_publishers + self.video_publishers
    }

    /// Every participant (bots that join).
    pub fn participants(&self) -> usize {
        self.publishers() + self.subscribers
    }

    /// Media packets per second one publisher of each kind sends: (audio, video). With
    /// simulcast, the video figure is the layer a receiver gets at the requested quality.
    pub fn packets_per_second(&self) -> (f64, f64) {
        let v = &self.video;
        let (num, den) = if self.simulcast {
            let i = match self.quality.unwrap_or(Quality::High) {
                Quality::Low => 0,
                Quality::Medium => 1,
                Quality::High => 2,
            };
            let (_, num, den) = SIMULCAST_LAYERS[i];
            (f64::from(num), f64::from(den))
        } else {
            (1.0, 1.0)
        };
        let frame_bytes = f64::from(v.bitrate_bps) * num / den / 8.0 / f64::from(v.fps.max(1));
        let per_frame = (frame_bytes / v.max_payload.max(1) as f64).ceil().max(1.0);
        (50.0, per_frame * f64::from(v.fps))
    }

    /// Media packets per second all publishers together send at their nominal rate: 50 Opus
    /// packets each, and per video layer `fps` frames a second packetized as the bots do, a
    /// keyframe (three times the bytes) every `keyframe_interval` frames. Forced keyframes
    /// (answers to PLI/FIR) come on top, so a healthy publisher may send slightly more.
    pub fn nominal_send_rate(&self) -> f64 {
        let v = &self.video;
        let fps = v.fps.max(1);
        let layer_rates: Vec<u32> = if self.simulcast {
            SIMULCAST_LAYERS
                .iter()
                .map(|(_, num, den)| {
                    (u64::from(v.bitrate_bps) * u64::from(*num) / u64::from(*den)) as u32
                })
                .collect()
        } else {
            vec![v.bitrate_bps]
        };
        let video: f64 = layer_rates
            .iter()
            .map(|rate| {
                let frame = (rate / 8 / fps) as usize;
                let delta = packet_count(frame, false, v.max_payload) as f64;
                let key = packet_count(frame * 3, true, v.max_payload) as f64;
                let per_frame = match v.keyframe_interval {
                    0 => delta,
                    k => (key + delta * f64::from(k - 1)) / f64::from(k),
                };
                per_frame * f64::from(fps)
            })
            .sum();
        self.audio_publishers as f64 * 50.0 + self.video_publishers as f64 * (50.0 + video)
    }

    /// Forwarded packets per second the server should send in the steady state.
    pub fn expected_forward_rate(&self) -> f64 {
        let (a, v) = self.packets_per_second();
        let per_pub_audio = a;
        let per_pub_video = a + v;
        let receivers_of_each = |is_self_publisher: bool| {
            self.subscribers
                + if self.publishers_subscribe {
                    self.publishers() - usize::from(is_self_publisher)
                } else {
                    0
                }
        };
        let r = receivers_of_each(true) as f64;
        self.audio_publishers as f64 * per_pub_audio * r
            + self.video_publishers as f64 * per_pub_video * r
    }

    /// Bots' media is sent by these many sources: used for sanity checks.
    pub fn validate(&self) -> Result<(), String> {
        if self.publishers() == 0 {
            return Err("a scenario needs at least one publisher".into());
        }
        if self.join_rate.is_nan() || self.join_rate <= 0.0 {
            return Err("--join-rate must be positive".into());
        }
        if self.duration.is_zero() {
            return Err("--duration must be positive".into());
        }
        Ok(())
    }
}

fn ser_video<S: serde::Serializer>(v: &VideoParams, s: S) -> Result<S::Ok, S::Error> {
    serde_json::json!({
        "fps": v.fps, "bitrate_bps": v.bitrate_bps, "width": v.width, "height": v.height,
        "keyframe_interval": v.keyframe_interval, "max_payload": v.max_payload,
    })
    .serialize(s)
}

fn ser_audio<S: serde::Serializer>(a: &AudioParams, s: S) -> Result<S::Ok, S::Error> {
    serde_json::json!({ "min_payload": a.min_payload, "max_payload": a.max_payload }).serialize(s)
}

/// The standard suite: an audio room (1 and 10 speakers x listeners), a meeting (N x N) and a
/// livestream (1 x many). `scale` caps the listener counts (bots cost CPU too).
pub fn suite(max_listeners: usize, duration: Duration) -> Vec<Scenario> {
    let mut out = Vec::new();
    let mut audio1 = Scenario::new(format!("audio-room-1x{max_listeners}"));
    audio1.audio_publishers = 1;
    audio1.subscribers = max_listeners;
    audio1.publishers_subscribe = false;
    out.push(audio1);
    let mut audio10 = Scenario::new(format!("audio-room-10x{max_listeners}"));
    audio10.audio_publishers = 10;
    audio10.subscribers = max_listeners;
    out.push(audio10);
    for n in [4usize, 8] {
        let mut meeting = Scenario::new(format!("meeting-{n}x{n}"));
        meeting.video_publishers = n;
        out.push(meeting);
    }
    let viewers = (max_listeners / 2).max(1);
    let mut live = Scenario::new(format!("livestream-1x{viewers}"));
    live.video_publishers = 1;
    live.subscribers = viewers;
    live.publishers_subscribe = false;
    out.push(live);
    for s in &mut out {
        s.duration = duration;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meeting_forward_rate() {
        let mut m = Scenario::new("m");
        m.video_publishers = 4;
        // medium: 500 kbit/s at 30 fps = 2084 B/frame = 2 packets, 60 pps + 50 audio.
        let (a, v) = m.packets_per_second();
        assert_eq!((a, v), (50.0, 60.0));
        // each of 4 publishers reaches 3 others.
        assert_eq!(m.expected_forward_rate(), 4.0 * 110.0 * 3.0);
        assert!(m.validate().is_ok());
        let mut none = Scenario::new("x");
        none.subscribers = 3;
        assert!(none.validate().is_err());
    }

    #[test]
    fn nominal_send_rate_counts_keyframes_and_layers() {
        let mut s = Scenario::new("n");
        s.audio_publishers = 2;
        assert_eq!(s.nominal_send_rate(), 100.0);
        s.audio_publishers = 0;
        s.video_publishers = 1;
        // medium: 2083 B frames = 2 packets, keyframes 6249 B = 6 packets, one in 60 frames.
        let per_frame = (6.0 + 2.0 * 59.0) / 60.0;
        assert!((s.nominal_send_rate() - (50.0 + 30.0 * per_frame)).abs() < 1e-9);
        // Simulcast q/h/f at 125/250/500 kbit/s: 520/1041/2083 B frames.
        s.simulcast = true;
        let q = (2.0 + 59.0) / 60.0;
        let h = (3.0 + 59.0) / 60.0;
        let expected = 50.0 + 30.0 * (q + h + per_frame);
        assert!((s.nominal_send_rate() - expected).abs() < 1e-9);
    }

    #[test]
    fn audio_room_forward_rate_and_suite() {
        let s = suite(100, Duration::from_secs(5));
        assert_eq!(s[0].expected_forward_rate(), 50.0 * 100.0);
        // 10 speakers hear each other too: 109 receivers each.
        assert_eq!(s[1].expected_forward_rate(), 10.0 * 50.0 * 109.0);
        assert!(s.iter().all(|x| x.validate().is_ok()));
        assert_eq!(VideoPreset::parse("720p"), Some(VideoPreset::High));
    }
}
