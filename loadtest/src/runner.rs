//! Runs a [`Scenario`] against a server: joins bots at the join rate (publishers first), lets
//! media flow, samples throughput, loss, latency and CPU/memory every second, and summarises.
//! [`find_max`] ramps subscribers until loss or latency breaks a bound.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use greenroom_proto::TrackSource;
use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::Mutex;
use serde::Serialize;

use crate::bot::StopMode;
use crate::bot::{Bot, BotConfig};
use crate::error::BotError;
use crate::floor::FloorFigures;
use crate::histogram::LatencyHistogram;
use crate::janus::{
    JanusError, JanusHandle, JanusLightPublisher, JanusLightSubscriber, JanusPublisher,
    JanusSession, JanusSubscriber,
};
use crate::light::{DatagramCounts, DatagramRates, LightBot, LightConfig};
use crate::media::SentStats;
use crate::media::{IceConfig, PublisherConfig, SubscriberConfig};
use crate::procstat::{read_pid, ProcError, ProcSample, ServerProbe};
use crate::revoke::{self, RevokePlan, RevokeSummary, REVOKE_GRACE};
use crate::scenario::{BotKind, Scenario, Target};
use crate::stats::TrackStats;
use crate::token;

/// Errors of a load-test run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A Greenroom bot failed.
    #[error(transparent)]
    Bot(#[from] BotError),
    /// Janus signaling failed.
    #[error(transparent)]
    Janus(#[from] JanusError),
    /// Reading resource usage failed.
    #[error(transparent)]
    Proc(#[from] ProcError),
    /// A token could not be signed.
    #[error("token: {0}")]
    Token(#[from] jsonwebtoken::errors::Error),
    /// HTTP (go-live) failed.
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    /// The scenario or options are not usable.
    #[error("{0}")]
    Config(String),
    /// Not enough publishers came up to run the scenario.
    #[error("no publisher could join: {0}")]
    NoPublisher(String),
}

/// Below this percentage of their nominal rate the publishers, i.e. the load tester, limited the
/// run: [`crate::report::table`] and [`crate::report::markdown`] warn.
pub const PUBLISHER_RATE_WARN_PCT: f64 = 95.0;

/// How to reach the server and what to measure.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The server.
    pub target: Target,
    /// Greenroom base URL (`http://127.0.0.1:7880`) or Janus API URL
    /// (`http://127.0.0.1:8088/janus`).
    pub url: String,
    /// Greenroom cluster nodes: when not empty, bot `i` joins through `urls[i % len]` (round
    /// robin) instead of `url`.
    pub urls: Vec<String>,
    /// API key of Greenroom tokens (their `kid`).
    pub api_key: String,
    /// HS256 secret for Greenroom tokens.
    pub secret: String,
    /// Where the server's CPU and memory are read.
    pub server: ServerProbe,
    /// Limit for each join and connection.
    pub timeout: Duration,
    /// Sampling period of the timeline.
    pub sample_every: Duration,
    /// Ignore this long after the last join before measuring.
    pub warmup: Duration,
    /// Show a progress bar.
    pub progress: bool,
    /// Local address of the bots' media sockets.
    pub bind_ip: std::net::IpAddr,
    /// Which bots join.
    pub bots: BotKind,
    /// Relay every webrtc-rs bot's media through the node's TURN server (`--transport turn`).
    pub turn: Option<crate::turn::TurnRelay>,
    /// How the light bots' media reaches the server: UDP, or ICE-TCP (`--transport tcp`).
    pub transport: crate::light::PeerTransport,
    /// This machine's forwarding floor, measured before the run (`None`: not reported).
    pub floor: Option<FloorFigures>,
    /// Revoke the first video publisher's `send-video` mid-run (Greenroom only; publishers
    /// then ignore `stop_publishing`): see [`crate::revoke`].
    pub revoke: Option<RevokePlan>,
    /// Keep every bot connected and its media flowing this long after the measurement window,
    /// then read the server's RSS again (`--settle`): the memory per listener of a long-lived
    /// room, past the server's 30 s DTLS release. `None`: only the end-of-window figure.
    pub settle: Option<Duration>,
}

impl RunConfig {
    /// The URL bot `index` connects through: round robin over `urls`, else `url`.
    pub fn url_for(&self, index: usize) -> &str {
        match self.urls.len() {
            0 => &self.url,
            n => &self.urls[index % n],
        }
    }

    /// `udp`, `tcp` or `turn`.
    pub fn transport_name(&self) -> &'static str {
        match (&self.turn, self.transport) {
            (Some(_), _) => "turn",
            (None, crate::light::PeerTransport::Tcp) => "tcp",
            (None, crate::light::PeerTransport::Udp) => "udp",
        }
    }

    /// Defaults for `target` at `url`: dev secret, no server probe, 10 s timeouts, 1 s samples.
    pub fn new(target: Target, url: impl Into<String>) -> RunConfig {
        RunConfig {
            target,
            url: url.into(),
            urls: Vec::new(),
            api_key: token::DEV_KEY.into(),
            secret: token::DEV_SECRET.into(),
            server: ServerProbe::None,
            timeout: Duration::from_secs(10),
            sample_every: Duration::from_secs(1),
            warmup: Duration::from_secs(1),
            progress: false,
            bind_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            bots: BotKind::Webrtc,
            turn: None,
            transport: crate::light::PeerTransport::Udp,
            floor: None,
            revoke: None,
            settle: None,
        }
    }
}

/// One point of the timeline (rates over the preceding sample period).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    /// Seconds since the run started.
    pub t: f64,
    /// Participants connected.
    pub joined: usize,
    /// Joins that failed so far.
    pub failed: usize,
    /// Media packets received by all bots per second (= forwarded by the server).
    pub rx_pps: f64,
    /// Media bits received per second (payload).
    pub rx_bps: f64,
    /// Packets sent by all publishers per second.
    pub tx_pps: f64,
    /// Probe loss in the period, percent.
    pub loss_pct: f64,
    /// Latency p50 in the period, ms.
    pub p50_ms: Option<f64>,
    /// Latency p99 in the period, ms.
    pub p99_ms: Option<f64>,
    /// Server CPU in the period, percent of one core.
    pub server_cpu_pct: Option<f64>,
    /// Server resident memory, MiB.
    pub server_rss_mib: Option<f64>,
    /// Load tester CPU in the period, percent of one core.
    pub bot_cpu_pct: f64,
}

/// Percentiles of a set of durations, ms.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Spread {
    /// Count.
    pub n: usize,
    /// Median.
    pub p50_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
    /// Maximum.
    pub max_ms: Option<f64>,
}

impl Spread {
    fn of(mut v: Vec<f64>) -> Spread {
        v.sort_by(f64::total_cmp);
        let q = |q: f64| -> Option<f64> {
            if v.is_empty() {
                return None;
            }
            let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
            Some(v[i])
        };
        Spread {
            n: v.len(),
            p50_ms: q(0.5),
            p99_ms: q(0.99),
            max_ms: v.last().copied(),
        }
    }
}

/// The figures of a run (measurement window: after the last join + warm-up, to the end).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Summary {
    /// The server.
    pub target: String,
    /// The scenario name.
    pub scenario: String,
    /// The bots used (`webrtc` or `light`).
    #[serde(default)]
    pub bots: String,
    /// How media reached the server: `udp`, `tcp` (ICE-TCP) or `turn`.
    #[serde(default)]
    pub transport: String,
    /// Unix time of the start.
    pub started_unix: u64,
    /// Participants that joined and connected.
    pub joined: usize,
    /// Joins that failed.
    pub join_failures: usize,
    /// Signaling join to media connection up, per participant.
    pub join_time: Spread,
    /// Join start to first media packet, per receiving participant.
    pub first_media: Spread,
    /// Length of the measurement window, s.
    pub window_secs: f64,
    /// Packets sent by publishers in the window.
    pub sent_packets: u64,
    /// Media packets the publishers sent per second in the window.
    #[serde(default)]
    pub sent_pps: f64,
    /// What the scenario's publishers send per second at their nominal rate
    /// ([`Scenario::nominal_send_rate`]; publishers that failed to join count as silent).
    #[serde(default)]
    pub nominal_sent_pps: f64,
    /// `sent_pps` as a percentage of `nominal_sent_pps`: below
    /// [`PUBLISHER_RATE_WARN_PCT`] the bots, not the server, set the rate of the run.
    #[serde(default)]
    pub publisher_rate_pct: Option<f64>,
    /// Packets received by all bots in the window (= forwarded by the server).
    pub forwarded_packets: u64,
    /// Forwarded packets per second.
    pub forwarded_pps: f64,
    /// What the scenario should forward per second at full delivery.
    pub expected_pps: f64,
    /// Packets lost (probe sequence gaps) in the window.
    pub lost_packets: u64,
    /// Loss, percent.
    pub loss_pct: f64,
    /// One-way latency through the server, p50, ms.
    pub latency_p50_ms: Option<f64>,
    /// p99, ms.
    pub latency_p99_ms: Option<f64>,
    /// p99.9, ms.
    pub latency_p999_ms: Option<f64>,
    /// Server CPU time in the window, s.
    pub server_cpu_seconds: Option<f64>,
    /// Server CPU, percent of one core.
    pub server_cpu_pct: Option<f64>,
    /// Server CPU-seconds per million forwarded packets.
    pub server_cpu_s_per_mpkt: Option<f64>,
    /// Server RSS before the bots joined, MiB.
    pub server_rss_before_mib: Option<f64>,
    /// Server RSS at the end, MiB.
    pub server_rss_after_mib: Option<f64>,
    /// (RSS after - before) / receiving participants, KiB.
    pub server_kib_per_subscriber: Option<f64>,
    /// Listeners (receive-only participants) connected at the end of the window.
    #[serde(default)]
    pub listeners_joined: usize,
    /// Server RSS once the publishers had joined, just before the first listener, MiB.
    #[serde(default)]
    pub server_rss_before_listeners_mib: Option<f64>,
    /// The server's memory per listener, KiB: (RSS at the end of the window, every listener
    /// still connected - RSS just before the first listener joined) / listeners connected.
    /// A scenario without listeners (a meeting) divides (RSS at the end - RSS before the first
    /// join) by the participants connected instead; [`Summary::memory_per`] says which.
    #[serde(default)]
    pub server_kib_per_listener: Option<f64>,
    /// What [`Summary::server_kib_per_listener`] is per: `listener` or `participant`.
    #[serde(default)]
    pub memory_per: String,
    /// Seconds the run went on after the window, every bot connected and media flowing
    /// ([`RunConfig::settle`]); `None` without `--settle`.
    #[serde(default)]
    pub settle_secs: Option<f64>,
    /// [`Summary::server_kib_per_listener`] read again after the settle: same listeners, same
    /// basis, RSS at the end of the settle.
    #[serde(default)]
    pub server_kib_per_listener_settled: Option<f64>,
    /// Load tester CPU in the window, s.
    pub bot_cpu_seconds: f64,
    /// Load tester CPU, percent of one core.
    pub bot_cpu_pct: f64,
    /// Load tester CPU per received packet, µs.
    pub bot_cpu_us_per_packet: Option<f64>,
    /// The bots used more CPU than the server: on a shared machine the bots limit the test.
    pub bots_heavier_than_server: Option<bool>,
    /// Received video bitrate per received video track, kbit/s (payload).
    #[serde(default)]
    pub video_rx_kbps_per_track: Option<f64>,
    /// Video packets received per simulcast layer (q, h, f) in the window; zeros without
    /// simulcast.
    #[serde(default)]
    pub video_layer_packets: [u64; 3],
    /// Mean RTP payload bytes per forwarded packet.
    #[serde(default)]
    pub mean_payload_bytes: Option<f64>,
    /// The forwarding floor at that payload size, CPU ns per packet (see [`crate::floor`]).
    #[serde(default)]
    pub floor_ns_per_packet: Option<f64>,
    /// Server CPU per forwarded packet as a multiple of the floor.
    #[serde(default)]
    pub server_cpu_x_floor: Option<f64>,
    /// UDP datagrams the server sent to the bots per second (every datagram the light bots
    /// received: media, RTCP, STUN, padding and probes); `None` with webrtc-rs bots.
    #[serde(default)]
    pub server_datagrams_out_per_s: Option<f64>,
    /// Those datagrams per forwarded media packet (1.0 plus RTCP, STUN and padding/probing).
    #[serde(default)]
    pub datagrams_per_media_packet: Option<f64>,
    /// Those datagrams per second by kind (light bots): whether the server sends anything but
    /// media, e.g. padding or probing, and how much RTCP and STUN per media packet.
    #[serde(default)]
    pub datagrams_by_kind_per_s: Option<DatagramRates>,
    /// The revoke scenario's figures (`--revoke-after`). The run's loss then includes the
    /// revoked track's packets the server rightly dropped.
    #[serde(default)]
    pub revoke: Option<RevokeSummary>,
    /// The first errors seen.
    pub errors: Vec<String>,
}

/// One step of [`find_max`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct Step {
    /// Subscribers connected during the step.
    pub subscribers: usize,
    /// Forwarded packets per second.
    pub forwarded_pps: f64,
    /// Loss, percent.
    pub loss_pct: f64,
    /// Latency p99, ms.
    pub p99_ms: Option<f64>,
    /// Server CPU, percent of one core.
    pub server_cpu_pct: Option<f64>,
    /// Load tester CPU, percent of one core.
    pub bot_cpu_pct: f64,
    /// Whether the step met the bounds.
    pub ok: bool,
}

/// The outcome of [`find_max`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct Capacity {
    /// Subscribers of the last step within bounds.
    pub max_subscribers: usize,
    /// Why the ramp stopped.
    pub stopped_because: String,
    /// Every step.
    pub steps: Vec<Step>,
    /// Loss bound, percent.
    pub max_loss_pct: f64,
    /// Latency p99 bound, ms.
    pub max_p99_ms: f64,
}

/// A run's result: the summary, the timeline and (for [`find_max`]) the capacity.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunResult {
    /// The scenario.
    pub scenario: Option<Scenario>,
    /// Figures.
    pub summary: Summary,
    /// The timeline.
    pub samples: Vec<Sample>,
    /// The ramp, for find-max runs.
    pub capacity: Option<Capacity>,
}

/// One joined participant.
enum Member {
    Greenroom(Bot),
    Light(LightBot),
    JanusPublisher(JanusPublisher, Mutex<Option<Arc<JanusSubscriber>>>),
    JanusSubscriber(JanusSubscriber),
    JanusLightPublisher(
        JanusLightPublisher,
        Mutex<Option<Arc<JanusLightSubscriber>>>,
    ),
    JanusLightSubscriber(JanusLightSubscriber),
}

impl Member {
    fn received(&self) -> HashMap<String, TrackStats> {
        match self {
            Member::Greenroom(b) => b.received(),
            Member::Light(b) => b.received(),
            Member::JanusSubscriber(s) => s.subscriber.stats(),
            Member::JanusLightSubscriber(s) => s.subscriber.stats(),
            Member::JanusLightPublisher(_, s) => {
                let s = s.lock().clone();
                s.map(|s| s.subscriber.stats()).unwrap_or_default()
            }
            Member::JanusPublisher(_, s) => {
                let s = s.lock().clone();
                s.map(|s| s.subscriber.stats()).unwrap_or_default()
            }
        }
    }

    fn sent(&self) -> HashMap<TrackSource, SentStats> {
        match self {
            Member::Greenroom(b) => b.sent(),
            Member::Light(b) => b.sent(),
            Member::JanusPublisher(p, _) => p.publisher.sent(),
            Member::JanusLightPublisher(p, _) => p.publisher.sent(),
            Member::JanusSubscriber(_) | Member::JanusLightSubscriber(_) => HashMap::new(),
        }
    }

    fn sent_packets(&self) -> u64 {
        self.sent().values().map(|s| s.packets).sum()
    }

    /// `stop_publishing` messages received (Greenroom bots; 0 otherwise).
    fn stop_publishing_received(&self) -> u64 {
        match self {
            Member::Light(b) => b.stop_publishing_received(),
            Member::Greenroom(b) => b
                .events()
                .iter()
                .filter(|m| {
                    matches!(
                        m,
                        greenroom_proto::ServerMessage::Signal(
                            greenroom_proto::SignalMessage::StopPublishing { .. }
                        )
                    )
                })
                .count() as u64,
            _ => 0,
        }
    }

    async fn close(&self) {
        match self {
            Member::Greenroom(b) => {
                let _ = b.close().await;
            }
            Member::Light(b) => b.close().await,
            Member::JanusPublisher(p, s) => {
                let s = s.lock().take();
                if let Some(s) = s {
                    s.close().await;
                }
                p.close().await;
            }
            Member::JanusSubscriber(s) => s.close().await,
            Member::JanusLightPublisher(p, s) => {
                let s = s.lock().take();
                if let Some(s) = s {
                    s.close().await;
                }
                p.close().await;
            }
            Member::JanusLightSubscriber(s) => s.close().await,
        }
    }
}

/// Cumulative counters over all members.
#[derive(Debug, Clone, Default)]
struct Totals {
    rx_packets: u64,
    rx_bytes: u64,
    video_bytes: u64,
    video_tracks: usize,
    layer_packets: [u64; 3],
    lost: u64,
    tx_packets: u64,
    hist: LatencyHistogram,
    at: Option<Instant>,
    server: Option<ProcSample>,
    bot: ProcSample,
    /// Datagrams received by the light bots, by kind (see [`crate::light::counters`]).
    datagrams: DatagramCounts,
    /// RTP packets received that carried a probe (media).
    rx_probes: u64,
    /// Of the revoke scenario's video track: RTP packets and media packets received by all,
    /// and packets its publisher sent.
    revoked_rx_packets: u64,
    revoked_rx_probes: u64,
    revoked_tx_packets: u64,
}

impl Totals {
    /// Rates and loss between `earlier` and `self`.
    fn since(&self, earlier: &Totals) -> Delta {
        let secs = match (self.at, earlier.at) {
            (Some(a), Some(b)) => a.duration_since(b).as_secs_f64().max(1e-6),
            _ => 1.0,
        };
        let rx = self.rx_packets.saturating_sub(earlier.rx_packets);
        let mut layers = [0u64; 3];
        for (i, l) in layers.iter_mut().enumerate() {
            *l = self.layer_packets[i].saturating_sub(earlier.layer_packets[i]);
        }
        let video_tracks = self.video_tracks.max(earlier.video_tracks);
        let video_bytes = self.video_bytes.saturating_sub(earlier.video_bytes);
        let lost = self.lost.saturating_sub(earlier.lost);
        let hist = self.hist.since(&earlier.hist);
        let server_cpu = match (self.server, earlier.server) {
            (Some(a), Some(b)) => Some((a.cpu_seconds - b.cpu_seconds).max(0.0)),
            _ => None,
        };
        Delta {
            secs,
            rx,
            rx_bytes: self.rx_bytes.saturating_sub(earlier.rx_bytes),
            video_kbps_per_track: (video_tracks > 0)
                .then(|| video_bytes as f64 * 8.0 / 1000.0 / secs / video_tracks as f64),
            layers,
            tx: self.tx_packets.saturating_sub(earlier.tx_packets),
            lost,
            loss_pct: if rx + lost > 0 {
                lost as f64 * 100.0 / (rx + lost) as f64
            } else {
                0.0
            },
            hist,
            server_cpu,
            bot_cpu: (self.bot.cpu_seconds - earlier.bot.cpu_seconds).max(0.0),
            datagrams: self.datagrams.since(&earlier.datagrams),
            rx_probes: self.rx_probes.saturating_sub(earlier.rx_probes),
            revoked_rx_packets: self
                .revoked_rx_packets
                .saturating_sub(earlier.revoked_rx_packets),
            revoked_rx_probes: self
                .revoked_rx_probes
                .saturating_sub(earlier.revoked_rx_probes),
            revoked_tx_packets: self
                .revoked_tx_packets
                .saturating_sub(earlier.revoked_tx_packets),
        }
    }
}

/// The listeners of a run, for the memory per listener.
#[derive(Debug, Clone, Copy, Default)]
struct Listeners {
    /// The server's resources once the publishers had joined, before the first listener.
    rss_before: Option<ProcSample>,
    /// Listeners connected.
    joined: usize,
}

struct Delta {
    secs: f64,
    rx: u64,
    rx_bytes: u64,
    video_kbps_per_track: Option<f64>,
    layers: [u64; 3],
    tx: u64,
    lost: u64,
    loss_pct: f64,
    hist: LatencyHistogram,
    server_cpu: Option<f64>,
    bot_cpu: f64,
    datagrams: DatagramCounts,
    rx_probes: u64,
    revoked_rx_packets: u64,
    revoked_rx_probes: u64,
    revoked_tx_packets: u64,
}

/// Memory per member, KiB: (RSS `after` - RSS `base`) / `count`; `None` without both samples
/// or members.
fn kib_per(base: Option<u64>, after: Option<u64>, count: usize) -> Option<f64> {
    match (base, after) {
        (Some(b), Some(a)) if count > 0 => Some((a as f64 - b as f64) / 1024.0 / count as f64),
        _ => None,
    }
}

fn ms(us: Option<u64>) -> Option<f64> {
    us.map(|u| u as f64 / 1000.0)
}

/// Live state of a run, shared with the sampler.
struct Run {
    config: RunConfig,
    scenario: Scenario,
    members: Mutex<Vec<Arc<Member>>>,
    /// When each member's join started, parallel to `members`.
    join_started: Mutex<Vec<Instant>>,
    join_times: Mutex<Vec<f64>>,
    failed: Mutex<usize>,
    errors: Mutex<Vec<String>>,
    started: Instant,
    samples: Mutex<Vec<Sample>>,
    bar: ProgressBar,
    /// Greenroom call or Janus room.
    greenroom_cid: String,
    janus: Option<JanusCtx>,
    feeds: Mutex<Vec<u64>>,
    /// The revoke scenario's video track (`<participant_id>:camera`) once its publisher joined.
    revoke_track: Mutex<Option<String>>,
    /// That publisher.
    revoke_member: Mutex<Option<Arc<Member>>>,
}

/// The totals the revoke scenario reads: the start of the window, the revoke, the revoked
/// window (after the grace) and, with a re-grant, the window after it.
struct RevokeMarks {
    start: Totals,
    revoked: Totals,
    during_from: Totals,
    during_to: Totals,
    after: Option<(Totals, Totals)>,
}

struct JanusCtx {
    session: Arc<JanusSession>,
    control: JanusHandle,
    room: u64,
}

impl Run {
    async fn totals(&self) -> Totals {
        let members = self.members();
        let revoke_track = self.revoke_track.lock().clone();
        let mut t = Totals::default();
        for m in &members {
            for s in m.received().values() {
                if revoke_track.as_deref() == Some(s.track_id.as_str()) {
                    t.revoked_rx_packets += s.packets;
                    t.revoked_rx_probes += s.probes;
                }
                t.rx_probes += s.probes;
                t.rx_packets += s.packets;
                t.rx_bytes += s.bytes;
                if s.source.is_some_and(|src| !src.is_audio()) {
                    t.video_bytes += s.bytes;
                    t.video_tracks += 1;
                    for (sum, n) in t.layer_packets.iter_mut().zip(s.layer_packets) {
                        *sum += n;
                    }
                }
                t.lost += s.lost;
                t.hist.merge(&s.latency_hist);
            }
            t.tx_packets += m.sent_packets();
        }
        t.datagrams = crate::light::datagram_counts();
        let revoke_member = self.revoke_member.lock().clone();
        if let Some(m) = revoke_member {
            t.revoked_tx_packets = m.sent().get(&TrackSource::Camera).map_or(0, |s| s.packets);
        }
        t.at = Some(Instant::now());
        t.server = match self.config.server.read().await {
            Ok(s) => s,
            Err(e) => {
                self.error(format!("server probe: {e}"));
                None
            }
        };
        t.bot = read_pid(std::process::id()).unwrap_or_default();
        t
    }

    fn error(&self, e: String) {
        let mut errors = self.errors.lock();
        if errors.len() < 20 {
            tracing::warn!("{e}");
            errors.push(e);
        }
    }

    fn members(&self) -> Vec<Arc<Member>> {
        self.members.lock().clone()
    }

    fn joined(&self) -> usize {
        self.members.lock().len()
    }

    /// Joins participant `index` (a publisher of `sources`, or a listener when empty).
    async fn join_one(self: Arc<Self>, index: usize, sources: Vec<TrackSource>) {
        let t0 = Instant::now();
        let res = match self.config.target {
            Target::Greenroom => self.join_greenroom(index, &sources).await,
            Target::Janus => self.join_janus(index, &sources).await,
        };
        match res {
            Ok(m) => {
                self.join_times
                    .lock()
                    .push(t0.elapsed().as_secs_f64() * 1000.0);
                let m = Arc::new(m);
                if self.is_revoke_target(index) {
                    *self.revoke_member.lock() = Some(m.clone());
                }
                let mut members = self.members.lock();
                members.push(m);
                self.join_started.lock().push(t0);
            }
            Err(e) => {
                *self.failed.lock() += 1;
                self.error(format!("join {index}: {e}"));
            }
        }
        self.bar.inc(1);
    }

    async fn join_greenroom(
        &self,
        index: usize,
        sources: &[TrackSource],
    ) -> Result<Member, LoadError> {
        let publisher = !sources.is_empty();
        let role = if publisher { "host" } else { "user" };
        let user = format!("bot-{index}");
        let tok = token::mint(
            &self.config.api_key,
            &self.config.secret,
            &user,
            &self.greenroom_cid,
            role,
            3600,
        )?;
        if self.config.bots == BotKind::Light {
            return self.join_light(index, sources, tok).await;
        }
        let mut cfg = BotConfig::new(self.config.url_for(index), tok.clone());
        cfg.quality = self.scenario.quality;
        cfg.timeout = self.config.timeout;
        cfg.publisher = self.publisher_config();
        if let Some(t) = &self.config.turn {
            cfg.publisher.ice = t.ice_for(&user);
        }
        cfg.bind_ip = self.config.bind_ip;
        cfg.stop_mode = self.stop_mode();
        let bot = Bot::connect(cfg).await?;
        let joined = bot.join(&self.greenroom_cid, publisher).await?;
        self.note_revoke_target(index, &joined.participant.participant_id);
        if publisher {
            if index == 0 && self.needs_go_live() {
                self.go_live(&tok).await?;
            }
            bot.publish(sources).await?;
        } else {
            // Wait for the subscriber connection when the server offers at join; media
            // arrival is measured separately (first_media).
            let _ = bot.subscriber().wait_connected(self.config.timeout).await;
        }
        Ok(Member::Greenroom(bot))
    }

    async fn join_light(
        &self,
        index: usize,
        sources: &[TrackSource],
        tok: String,
    ) -> Result<Member, LoadError> {
        let publisher = !sources.is_empty();
        let mut cfg = LightConfig::new(self.config.url_for(index), tok.clone());
        cfg.timeout = self.config.timeout;
        cfg.bind_ip = self.config.bind_ip;
        cfg.audio = self.scenario.audio;
        cfg.video = self.scenario.video;
        cfg.simulcast = self.scenario.simulcast;
        cfg.quality = self.scenario.quality;
        cfg.transport = self.config.transport;
        cfg.stop_mode = self.stop_mode();
        let bot = LightBot::connect(cfg).await?;
        let joined = bot.join(&self.greenroom_cid, publisher).await?;
        self.note_revoke_target(index, &joined.participant_id);
        if publisher {
            if index == 0 && self.needs_go_live() {
                self.go_live(&tok).await?;
            }
            bot.publish(sources).await?;
        } else {
            // As for the webrtc-rs bots: media arrival is measured separately (first_media).
            let _ = bot.wait_subscriber_connected(self.config.timeout).await;
        }
        Ok(Member::Light(bot))
    }

    /// Publishers ignore `stop_publishing` in the revoke scenario (a hostile client).
    fn stop_mode(&self) -> StopMode {
        match self.config.revoke {
            Some(_) => StopMode::Adversarial,
            None => StopMode::Obedient,
        }
    }

    /// Whether participant `index` is the revoke scenario's publisher: the first video
    /// publisher.
    fn is_revoke_target(&self, index: usize) -> bool {
        self.config.revoke.is_some() && index == self.scenario.audio_publishers
    }

    fn note_revoke_target(&self, index: usize, participant_id: &str) {
        if self.is_revoke_target(index) {
            *self.revoke_track.lock() = Some(format!("{participant_id}:camera"));
        }
    }

    /// Revokes (or grants again) the revoke scenario's publisher's `send-video`, as a
    /// moderator of the call.
    async fn set_send_video(&self, grant: bool) -> Result<(), LoadError> {
        let tok = token::mint(
            &self.config.api_key,
            &self.config.secret,
            "bot-moderator",
            &self.greenroom_cid,
            "host",
            3600,
        )?;
        let user = format!("bot-{}", self.scenario.audio_publishers);
        revoke::set_send_video(
            &self.config.url,
            &self.greenroom_cid,
            &tok,
            &user,
            grant,
            self.config.timeout,
        )
        .await?;
        Ok(())
    }

    /// The revoke scenario's schedule, from `start` (the window's start, totals `from`):
    /// revoke, grace, the revoked window, and with a re-grant, grace and the window after it.
    async fn revoke_schedule(
        &self,
        plan: RevokePlan,
        start: Instant,
        end: Instant,
        from: Totals,
    ) -> Result<RevokeMarks, LoadError> {
        tokio::time::sleep_until((start + plan.after).into()).await;
        let revoked = self.totals().await;
        self.set_send_video(false).await?;
        tokio::time::sleep(REVOKE_GRACE).await;
        let during_from = self.totals().await;
        let until = plan.regrant_after.map_or(end, |r| start + r);
        tokio::time::sleep_until(until.into()).await;
        let during_to = self.totals().await;
        let mut after = None;
        if plan.regrant_after.is_some() {
            self.set_send_video(true).await?;
            tokio::time::sleep(REVOKE_GRACE).await;
            let a = self.totals().await;
            tokio::time::sleep_until(end.into()).await;
            after = Some((a, self.totals().await));
        }
        Ok(RevokeMarks {
            start: from,
            revoked,
            during_from,
            during_to,
            after,
        })
    }

    /// The revoke scenario's figures from its marks.
    fn summarize_revoke(&self, plan: RevokePlan, m: &RevokeMarks) -> RevokeSummary {
        let before = m.revoked.since(&m.start);
        let during = m.during_to.since(&m.during_from);
        let light = self.config.bots == BotKind::Light;
        let per_s = |n: u64| light.then(|| n as f64 / during.secs);
        let g = &during.datagrams;
        let member = self.revoke_member.lock().clone();
        RevokeSummary {
            user_id: format!("bot-{}", self.scenario.audio_publishers),
            track_id: self.revoke_track.lock().clone().unwrap_or_default(),
            revoke_after_s: plan.after.as_secs_f64(),
            regrant_after_s: plan.regrant_after.map(|r| r.as_secs_f64()),
            grace_ms: REVOKE_GRACE.as_millis() as u64,
            stop_publishing_received: member.map_or(0, |m| m.stop_publishing_received()),
            video_pps_before: before.revoked_rx_probes as f64 / before.secs,
            revoked_secs: during.secs,
            revoked_video_media_packets: during.revoked_rx_probes,
            revoked_video_rtp_packets: during.revoked_rx_packets,
            publisher_video_sent: during.revoked_tx_packets,
            media_pps: during.rx_probes as f64 / during.secs,
            datagrams_out_per_s: per_s(g.total),
            rtp_per_s: per_s(g.rtp),
            non_media_rtp_per_s: per_s(g.rtp.saturating_sub(during.rx)),
            padded_rtp_per_s: per_s(g.rtp_padded),
            rtcp_per_s: per_s(g.rtcp),
            stun_per_s: per_s(g.stun),
            video_pps_after_regrant: m.after.as_ref().map(|(a, b)| {
                let d = b.since(a);
                d.revoked_rx_probes as f64 / d.secs
            }),
        }
    }

    fn needs_go_live(&self) -> bool {
        matches!(
            self.scenario.call_type.as_str(),
            "audio_room" | "livestream"
        )
    }

    async fn go_live(&self, host_token: &str) -> Result<(), LoadError> {
        let (ty, id) = self
            .greenroom_cid
            .split_once(':')
            .ok_or_else(|| LoadError::Config("bad call cid".into()))?;
        let url = format!(
            "{}/v1/calls/{ty}/{id}/go_live",
            self.config.url.trim_end_matches('/')
        );
        reqwest::Client::new()
            .post(url)
            .bearer_auth(host_token)
            .timeout(self.config.timeout)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    fn publisher_config(&self) -> PublisherConfig {
        PublisherConfig {
            video: self.scenario.video,
            audio: self.scenario.audio,
            gather_timeout: self.config.timeout,
            bind_ip: self.config.bind_ip,
            ice: IceConfig::default(),
        }
    }

    fn subscriber_config(&self) -> SubscriberConfig {
        SubscriberConfig {
            gather_timeout: self.config.timeout,
            bind_ip: self.config.bind_ip,
            ice: IceConfig::default(),
        }
    }

    async fn join_janus(&self, index: usize, sources: &[TrackSource]) -> Result<Member, LoadError> {
        let ctx = self
            .janus
            .as_ref()
            .ok_or_else(|| LoadError::Config("no janus session".into()))?;
        if self.config.bots == BotKind::Light {
            let ip = self.config.bind_ip;
            if sources.is_empty() {
                let feeds = self.feeds.lock().clone();
                let s = JanusLightSubscriber::join(
                    &ctx.session,
                    ctx.room,
                    &feeds,
                    ip,
                    self.config.timeout,
                )
                .await?;
                return Ok(Member::JanusLightSubscriber(s));
            }
            let p = JanusLightPublisher::join(
                &ctx.session,
                ctx.room,
                &format!("bot-{index}"),
                sources,
                (ip, self.scenario.audio, self.scenario.video),
                self.config.timeout,
            )
            .await?;
            self.feeds.lock().push(p.feed);
            return Ok(Member::JanusLightPublisher(p, Mutex::new(None)));
        }
        if sources.is_empty() {
            let feeds = self.feeds.lock().clone();
            let s = JanusSubscriber::join(
                &ctx.session,
                ctx.room,
                &feeds,
                self.subscriber_config(),
                self.config.timeout,
            )
            .await?;
            return Ok(Member::JanusSubscriber(s));
        }
        let p = JanusPublisher::join(
            &ctx.session,
            ctx.room,
            &format!("bot-{index}"),
            sources,
            self.publisher_config(),
            self.config.timeout,
        )
        .await?;
        self.feeds.lock().push(p.feed);
        Ok(Member::JanusPublisher(p, Mutex::new(None)))
    }

    /// Janus meetings: each publisher also subscribes to the other publishers' feeds.
    async fn janus_cross_subscribe(self: &Arc<Self>) {
        let Some(ctx) = &self.janus else { return };
        let feeds = self.feeds.lock().clone();
        let gap = Duration::try_from_secs_f64(1.0 / self.scenario.join_rate)
            .unwrap_or(Duration::from_secs(1));
        for m in self.members() {
            if let Member::JanusLightPublisher(p, slot) = &*m {
                let others: Vec<u64> = feeds.iter().copied().filter(|f| *f != p.feed).collect();
                if others.is_empty() {
                    continue;
                }
                match JanusLightSubscriber::join(
                    &ctx.session,
                    ctx.room,
                    &others,
                    self.config.bind_ip,
                    self.config.timeout,
                )
                .await
                {
                    Ok(s) => *slot.lock() = Some(Arc::new(s)),
                    Err(e) => self.error(format!("publisher subscription: {e}")),
                }
                tokio::time::sleep(gap).await;
                continue;
            }
            let Member::JanusPublisher(p, slot) = &*m else {
                continue;
            };
            let others: Vec<u64> = feeds.iter().copied().filter(|f| *f != p.feed).collect();
            if others.is_empty() {
                continue;
            }
            match JanusSubscriber::join(
                &ctx.session,
                ctx.room,
                &others,
                self.subscriber_config(),
                self.config.timeout,
            )
            .await
            {
                Ok(s) => *slot.lock() = Some(Arc::new(s)),
                Err(e) => self.error(format!("publisher subscription: {e}")),
            }
            tokio::time::sleep(gap).await;
        }
    }

    /// Starts `count` joins at the join rate and waits for all of them.
    async fn join_many(
        self: &Arc<Self>,
        first_index: usize,
        count: usize,
        sources: &[TrackSource],
    ) {
        let gap = Duration::try_from_secs_f64(1.0 / self.scenario.join_rate)
            .unwrap_or(Duration::from_secs(1))
            .max(Duration::from_micros(100));
        let mut tasks = Vec::with_capacity(count);
        let mut tick = tokio::time::interval(gap);
        for i in 0..count {
            tick.tick().await;
            tasks.push(tokio::spawn(
                self.clone().join_one(first_index + i, sources.to_vec()),
            ));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    fn sample_from(&self, prev: &Totals, now: &Totals) -> Sample {
        let d = now.since(prev);
        Sample {
            t: now
                .at
                .map(|a| a.duration_since(self.started).as_secs_f64())
                .unwrap_or(0.0),
            joined: self.joined(),
            failed: *self.failed.lock(),
            rx_pps: d.rx as f64 / d.secs,
            rx_bps: d.rx_bytes as f64 * 8.0 / d.secs,
            tx_pps: d.tx as f64 / d.secs,
            loss_pct: d.loss_pct,
            p50_ms: ms(d.hist.quantile(0.5)),
            p99_ms: ms(d.hist.quantile(0.99)),
            server_cpu_pct: d.server_cpu.map(|c| c * 100.0 / d.secs),
            server_rss_mib: now.server.map(|s| s.rss_bytes as f64 / 1048576.0),
            bot_cpu_pct: d.bot_cpu * 100.0 / d.secs,
        }
    }

    fn spawn_sampler(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let run = self.clone();
        tokio::spawn(async move {
            let mut prev = run.totals().await;
            let mut tick = tokio::time::interval(run.config.sample_every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let now = run.totals().await;
                let s = run.sample_from(&prev, &now);
                run.bar.set_message(format!(
                    "joined {} fail {} | {:.0} pkt/s fwd | loss {:.2}% | p99 {} | server {} | bots {:.0}%",
                    s.joined,
                    s.failed,
                    s.rx_pps,
                    s.loss_pct,
                    s.p99_ms.map_or("-".into(), |v| format!("{v:.1} ms")),
                    s.server_cpu_pct.map_or("-".into(), |v| format!("{v:.0}%")),
                    s.bot_cpu_pct,
                ));
                run.samples.lock().push(s);
                prev = now;
            }
        })
    }

    fn first_media(&self) -> Spread {
        let members: Vec<Arc<Member>> = self.members();
        let starts = self.join_started.lock().clone();
        let mut v = Vec::new();
        for (m, start) in members.iter().zip(starts.iter()) {
            let first = m
                .received()
                .values()
                .filter_map(|s| s.first_packet_at)
                .min();
            if let Some(first) = first {
                v.push(first.saturating_duration_since(*start).as_secs_f64() * 1000.0);
            }
        }
        Spread::of(v)
    }

    async fn close_all(&self) {
        let members: Vec<Arc<Member>> = self.members.lock().drain(..).collect();
        let closing = futures_util::future::join_all(members.iter().map(|m| m.close()));
        let _ = tokio::time::timeout(Duration::from_secs(15), closing).await;
        if let Some(ctx) = &self.janus {
            ctx.control.destroy_room(ctx.room).await;
            ctx.session.destroy().await;
        }
    }
}

/// Bounds and steps of [`find_max`].
#[derive(Debug, Clone, Copy)]
pub struct FindMax {
    /// Subscribers added per step.
    pub step: usize,
    /// Measurement per step (after a warm-up).
    pub step_duration: Duration,
    /// Stop here even if the bounds hold (bots cost CPU on the same machine).
    pub max_subscribers: usize,
    /// Loss bound, percent.
    pub max_loss_pct: f64,
    /// Latency p99 bound, ms.
    pub max_p99_ms: f64,
}

impl Default for FindMax {
    fn default() -> Self {
        FindMax {
            step: 25,
            step_duration: Duration::from_secs(4),
            max_subscribers: 200,
            max_loss_pct: 1.0,
            max_p99_ms: 200.0,
        }
    }
}

/// Refuses the combinations the bots cannot run.
pub fn check_bots(scenario: &Scenario, config: &RunConfig) -> Result<(), String> {
    if scenario.simulcast && config.bots == BotKind::Webrtc {
        return Err(
            "--simulcast needs --bots light: the webrtc-rs bots publish one layer \
                    per track"
                .into(),
        );
    }
    if scenario.simulcast && config.target == Target::Janus {
        return Err("--simulcast is not supported against Janus".into());
    }
    if let Some(plan) = &config.revoke {
        if config.target == Target::Janus {
            return Err(
                "--revoke-after needs --target greenroom: Janus's videoroom has no \
                        capabilities to revoke (a publisher there publishes until it unpublishes \
                        or is kicked)"
                    .into(),
            );
        }
        plan.validate(scenario)?;
    }
    if config.transport == crate::light::PeerTransport::Tcp
        && (config.bots != BotKind::Light || config.target != Target::Greenroom)
    {
        return Err("--transport tcp needs --bots light and --target greenroom".into());
    }
    Ok(())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Run {
    async fn start(scenario: &Scenario, config: &RunConfig) -> Result<Arc<Run>, LoadError> {
        scenario.validate().map_err(LoadError::Config)?;
        check_bots(scenario, config).map_err(LoadError::Config)?;
        let room: u64 = rand::random::<u64>() % (1u64 << 40) + 1;
        let janus = match config.target {
            Target::Janus => {
                let session = JanusSession::create(&config.url, config.timeout).await?;
                let control = session.attach().await?;
                control.create_room(room, scenario.publishers() + 1).await?;
                Some(JanusCtx {
                    session,
                    control,
                    room,
                })
            }
            Target::Greenroom => None,
        };
        let bar = if config.progress {
            let b = ProgressBar::new(scenario.participants() as u64);
            b.set_style(
                ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} {msg}")
                    .map_err(|e| LoadError::Config(e.to_string()))?
                    .progress_chars("=> "),
            );
            b.set_prefix("joining");
            b
        } else {
            ProgressBar::hidden()
        };
        Ok(Arc::new(Run {
            config: config.clone(),
            scenario: scenario.clone(),
            members: Mutex::new(Vec::new()),
            join_started: Mutex::new(Vec::new()),
            join_times: Mutex::new(Vec::new()),
            failed: Mutex::new(0),
            errors: Mutex::new(Vec::new()),
            started: Instant::now(),
            samples: Mutex::new(Vec::new()),
            bar,
            greenroom_cid: format!("{}:lt{room:x}", scenario.call_type),
            janus,
            feeds: Mutex::new(Vec::new()),
            revoke_track: Mutex::new(None),
            revoke_member: Mutex::new(None),
        }))
    }

    /// Publishers (audio, then video), Janus cross-subscriptions, then `subscribers` listeners.
    async fn join_publishers(self: &Arc<Self>) -> Result<(), LoadError> {
        let s = &self.scenario;
        self.join_many(0, s.audio_publishers, &[TrackSource::Microphone])
            .await;
        self.join_many(
            s.audio_publishers,
            s.video_publishers,
            &[TrackSource::Microphone, TrackSource::Camera],
        )
        .await;
        if self.joined() == 0 {
            let first = self.errors.lock().first().cloned().unwrap_or_default();
            return Err(LoadError::NoPublisher(first));
        }
        if let Some(ctx) = &self.janus {
            let feeds = self.feeds.lock().clone();
            ctx.control
                .wait_publishing(ctx.room, &feeds, self.config.timeout)
                .await?;
        }
        if self.config.target == Target::Janus && s.publishers_subscribe {
            self.janus_cross_subscribe().await;
        }
        Ok(())
    }

    fn receivers(&self, subscribers: usize) -> usize {
        let s = &self.scenario;
        subscribers
            + if s.publishers_subscribe && s.publishers() > 1 {
                s.publishers()
            } else {
                0
            }
    }

    fn summarize(
        &self,
        from: &Totals,
        to: &Totals,
        before: Option<ProcSample>,
        receivers: usize,
        listeners: Listeners,
    ) -> Summary {
        let d = to.since(from);
        let mib = |b: u64| b as f64 / 1048576.0;
        let server_cpu_pct = d.server_cpu.map(|c| c * 100.0 / d.secs);
        let per_m = d
            .server_cpu
            .filter(|_| d.rx > 0)
            .map(|c| c / (d.rx as f64 / 1e6));
        let rss_after = to.server.map(|s| s.rss_bytes);
        let per_sub = match (before, rss_after) {
            (Some(b), Some(a)) if receivers > 0 => {
                Some((a as f64 - b.rss_bytes as f64) / 1024.0 / receivers as f64)
            }
            _ => None,
        };
        let (memory_per, base, count) = if self.scenario.subscribers > 0 {
            ("listener", listeners.rss_before, listeners.joined)
        } else {
            ("participant", before, self.joined())
        };
        let per_listener = kib_per(base.map(|b| b.rss_bytes), rss_after, count);
        let mean_payload = (d.rx > 0).then(|| d.rx_bytes as f64 / d.rx as f64);
        let floor_ns = self
            .config
            .floor
            .zip(mean_payload)
            .map(|(f, b)| f.ns_for(b));
        let x_floor = match (per_m, floor_ns) {
            // CPU-s per M packets = µs per packet.
            (Some(us), Some(ns)) if ns > 0.0 => Some(us * 1000.0 / ns),
            _ => None,
        };
        let nominal = self.scenario.nominal_send_rate();
        let sent_pps = d.tx as f64 / d.secs;
        let light = self.config.bots == BotKind::Light;
        let datagrams_out = light.then(|| d.datagrams.total as f64 / d.secs);
        Summary {
            mean_payload_bytes: mean_payload,
            floor_ns_per_packet: floor_ns,
            server_cpu_x_floor: x_floor,
            server_datagrams_out_per_s: datagrams_out,
            datagrams_per_media_packet: (light && d.rx > 0)
                .then(|| d.datagrams.total as f64 / d.rx as f64),
            datagrams_by_kind_per_s: light.then(|| d.datagrams.rates(d.secs, d.rx)),
            revoke: None,
            target: self.config.target.as_str().into(),
            scenario: self.scenario.name.clone(),
            bots: self.config.bots.as_str().into(),
            transport: self.config.transport_name().into(),
            video_rx_kbps_per_track: d.video_kbps_per_track,
            video_layer_packets: d.layers,
            started_unix: unix_now(),
            joined: self.joined(),
            join_failures: *self.failed.lock(),
            join_time: Spread::of(self.join_times.lock().clone()),
            first_media: self.first_media(),
            window_secs: d.secs,
            sent_packets: d.tx,
            sent_pps,
            nominal_sent_pps: nominal,
            publisher_rate_pct: (nominal > 0.0).then(|| sent_pps * 100.0 / nominal),
            forwarded_packets: d.rx,
            forwarded_pps: d.rx as f64 / d.secs,
            expected_pps: 0.0,
            lost_packets: d.lost,
            loss_pct: d.loss_pct,
            latency_p50_ms: ms(d.hist.quantile(0.5)),
            latency_p99_ms: ms(d.hist.quantile(0.99)),
            latency_p999_ms: ms(d.hist.quantile(0.999)),
            server_cpu_seconds: d.server_cpu,
            server_cpu_pct,
            server_cpu_s_per_mpkt: per_m,
            server_rss_before_mib: before.map(|b| mib(b.rss_bytes)),
            server_rss_after_mib: rss_after.map(mib),
            server_kib_per_subscriber: per_sub,
            listeners_joined: listeners.joined,
            server_rss_before_listeners_mib: listeners.rss_before.map(|b| mib(b.rss_bytes)),
            server_kib_per_listener: per_listener,
            memory_per: memory_per.into(),
            settle_secs: None,
            server_kib_per_listener_settled: None,
            bot_cpu_seconds: d.bot_cpu,
            bot_cpu_pct: d.bot_cpu * 100.0 / d.secs,
            bot_cpu_us_per_packet: (d.rx > 0).then(|| d.bot_cpu * 1e6 / d.rx as f64),
            bots_heavier_than_server: d.server_cpu.map(|c| d.bot_cpu > c),
            errors: self.errors.lock().clone(),
        }
    }

    /// Keeps everyone connected, media flowing, for `settle` after the window, then reads the
    /// server's RSS again into [`Summary::server_kib_per_listener_settled`], over the same
    /// basis (`base`, RSS bytes) and members (`count`) as the end-of-window figure.
    async fn settle(
        &self,
        summary: &mut Summary,
        settle: Duration,
        base: Option<u64>,
        count: usize,
    ) {
        self.bar.set_prefix("settling");
        tokio::time::sleep(settle).await;
        let after = self.config.server.read().await.ok().flatten();
        summary.settle_secs = Some(settle.as_secs_f64());
        summary.server_kib_per_listener_settled = kib_per(base, after.map(|a| a.rss_bytes), count);
    }

    /// Measures `duration` after `warmup`, moving the bar, and runs the revoke scenario's
    /// schedule in it when `revoke` is set.
    async fn measure(
        &self,
        duration: Duration,
        revoke: Option<RevokePlan>,
    ) -> Result<(Totals, Totals, Option<RevokeSummary>), LoadError> {
        tokio::time::sleep(self.config.warmup).await;
        let from = self.totals().await;
        self.bar.set_prefix("running");
        self.bar.set_length(duration.as_secs().max(1));
        self.bar.set_position(0);
        let start = Instant::now();
        let end = start + duration;
        let bar = async {
            while Instant::now() < end {
                let left = end.saturating_duration_since(Instant::now());
                tokio::time::sleep(left.min(Duration::from_secs(1))).await;
                self.bar.inc(1);
            }
        };
        let schedule = async {
            match revoke {
                Some(plan) => {
                    let marks = self.revoke_schedule(plan, start, end, from.clone()).await?;
                    Ok::<_, LoadError>(Some(self.summarize_revoke(plan, &marks)))
                }
                None => Ok(None),
            }
        };
        let ((), revoked) = tokio::join!(bar, schedule);
        let to = self.totals().await;
        Ok((from, to, revoked?))
    }
}

/// Runs `scenario` once: joins everyone, measures for its duration, leaves.
pub async fn run(scenario: &Scenario, config: &RunConfig) -> Result<RunResult, LoadError> {
    let run = Run::start(scenario, config).await?;
    let before = config.server.read().await.ok().flatten();
    let sampler = run.spawn_sampler();
    let joined = run.join_publishers().await;
    let publishers = run.joined();
    let mut listeners = Listeners::default();
    if joined.is_ok() {
        listeners.rss_before = config.server.read().await.ok().flatten();
        run.join_many(scenario.publishers(), scenario.subscribers, &[])
            .await;
    }
    let result = match joined {
        Ok(()) => match run.measure(scenario.duration, config.revoke).await {
            Ok((from, to, revoked)) => {
                listeners.joined = run.joined().saturating_sub(publishers);
                let mut summary = run.summarize(
                    &from,
                    &to,
                    before,
                    run.receivers(scenario.subscribers),
                    listeners,
                );
                summary.expected_pps = scenario.expected_forward_rate();
                summary.revoke = revoked;
                if let Some(settle) = config.settle {
                    // The end-of-window figure's basis and members (`summarize`).
                    let (base, count) = if scenario.subscribers > 0 {
                        (listeners.rss_before, listeners.joined)
                    } else {
                        (before, run.joined())
                    };
                    let base = base.map(|b| b.rss_bytes);
                    run.settle(&mut summary, settle, base, count).await;
                }
                Ok(summary)
            }
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    sampler.abort();
    run.bar.finish_and_clear();
    run.close_all().await;
    let summary = result?;
    let samples = run.samples.lock().clone();
    Ok(RunResult {
        scenario: Some(scenario.clone()),
        summary,
        samples,
        capacity: None,
    })
}

/// Ramps subscribers by `bounds.step` until loss or latency p99 breaks a bound, joins fail, or
/// `bounds.max_subscribers` is reached. The scenario's own subscribers are the first step.
pub async fn find_max(
    scenario: &Scenario,
    config: &RunConfig,
    bounds: FindMax,
) -> Result<RunResult, LoadError> {
    let run = Run::start(scenario, config).await?;
    let before = config.server.read().await.ok().flatten();
    let sampler = run.spawn_sampler();
    let mut capacity = Capacity {
        max_loss_pct: bounds.max_loss_pct,
        max_p99_ms: bounds.max_p99_ms,
        ..Capacity::default()
    };
    let mut last_summary = None;
    let outcome = async {
        run.join_publishers().await?;
        let rss_before = config.server.read().await.ok().flatten();
        let mut subscribers = 0usize;
        let mut next_index = scenario.publishers();
        let mut add = scenario.subscribers.max(bounds.step.min(bounds.max_subscribers));
        loop {
            let failed_before = *run.failed.lock();
            run.join_many(next_index, add, &[]).await;
            next_index += add;
            let failed = *run.failed.lock() - failed_before;
            subscribers += add - failed;
            let (from, to, _) = run.measure(bounds.step_duration, None).await?;
            let d = to.since(&from);
            let p99 = ms(d.hist.quantile(0.99));
            let step = Step {
                subscribers,
                forwarded_pps: d.rx as f64 / d.secs,
                loss_pct: d.loss_pct,
                p99_ms: p99,
                server_cpu_pct: d.server_cpu.map(|c| c * 100.0 / d.secs),
                bot_cpu_pct: d.bot_cpu * 100.0 / d.secs,
                ok: d.loss_pct <= bounds.max_loss_pct
                    && p99.is_some_and(|p| p <= bounds.max_p99_ms),
            };
            let line = format!(
                "step: {} subscribers, {:.0} pkt/s, loss {:.2}%, p99 {:?} ms, server {:?}%, bots {:.0}%",
                step.subscribers, step.forwarded_pps, step.loss_pct, step.p99_ms,
                step.server_cpu_pct.map(|c| c.round()), step.bot_cpu_pct
            );
            if run.bar.is_hidden() {
                eprintln!("{line}");
            } else {
                run.bar.println(line);
            }
            let ok = step.ok;
            let bot_pct = step.bot_cpu_pct;
            capacity.steps.push(step);
            if !ok {
                capacity.stopped_because = format!(
                    "bound exceeded at {subscribers} subscribers (loss {:.2}% / p99 {:?} ms)",
                    d.loss_pct, p99
                );
                break;
            }
            capacity.max_subscribers = subscribers;
            let listeners = Listeners {
                rss_before,
                joined: subscribers,
            };
            let mut s = run.summarize(
                &from,
                &to,
                before,
                run.receivers(subscribers),
                listeners,
            );
            s.expected_pps = {
                let mut sc = scenario.clone();
                sc.subscribers = subscribers;
                sc.expected_forward_rate()
            };
            last_summary = Some(s);
            if failed * 2 > add {
                capacity.stopped_because = format!("{failed} of {add} joins failed");
                break;
            }
            if subscribers + bounds.step > bounds.max_subscribers {
                capacity.stopped_because = format!(
                    "reached --max-subscribers {} within bounds (load tester at {bot_pct:.0}% CPU)",
                    bounds.max_subscribers
                );
                break;
            }
            add = bounds.step;
        }
        Ok::<(), LoadError>(())
    }
    .await;
    sampler.abort();
    run.bar.finish_and_clear();
    run.close_all().await;
    outcome?;
    let samples = run.samples.lock().clone();
    Ok(RunResult {
        scenario: Some(scenario.clone()),
        summary: last_summary.unwrap_or_default(),
        samples,
        capacity: Some(capacity),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_per_member_needs_both_samples_and_members() {
        // 200 listeners that added 20 MiB: 102.4 KiB each; RSS that fell gives a negative figure.
        let mib = 1 << 20;
        assert_eq!(kib_per(Some(10 * mib), Some(30 * mib), 200), Some(102.4));
        assert_eq!(kib_per(Some(30 * mib), Some(10 * mib), 200), Some(-102.4));
        assert_eq!(kib_per(None, Some(mib), 200), None);
        assert_eq!(kib_per(Some(mib), None, 200), None);
        assert_eq!(kib_per(Some(mib), Some(2 * mib), 0), None);
    }

    #[test]
    fn bots_are_spread_over_the_urls_round_robin() {
        let mut c = RunConfig::new(Target::Greenroom, "http://one");
        assert_eq!(c.url_for(3), "http://one");
        c.urls = vec!["http://a".into(), "http://b".into(), "http://c".into()];
        let picked: Vec<&str> = (0..5).map(|i| c.url_for(i)).collect();
        assert_eq!(
            picked,
            ["http://a", "http://b", "http://c", "http://a", "http://b"]
        );
    }

    #[test]
    fn spread_percentiles() {
        let s = Spread::of((1..=100).map(f64::from).collect());
        assert_eq!(s.n, 100);
        assert_eq!(s.p50_ms, Some(50.0));
        assert_eq!(s.p99_ms, Some(99.0));
        assert_eq!(s.max_ms, Some(100.0));
        assert_eq!(Spread::of(vec![]).p50_ms, None);
    }

    #[test]
    fn totals_delta_loss_and_rates() {
        let t0 = Instant::now();
        let a = Totals {
            rx_packets: 100,
            lost: 0,
            at: Some(t0),
            server: Some(ProcSample {
                cpu_seconds: 1.0,
                rss_bytes: 0,
            }),
            ..Totals::default()
        };
        let b = Totals {
            rx_packets: 1090,
            lost: 10,
            at: Some(t0 + Duration::from_secs(2)),
            server: Some(ProcSample {
                cpu_seconds: 1.5,
                rss_bytes: 0,
            }),
            ..Totals::default()
        };
        let d = b.since(&a);
        assert_eq!(d.rx, 990);
        assert!((d.loss_pct - 1.0).abs() < 1e-9);
        assert_eq!(d.server_cpu, Some(0.5));
        assert!((d.secs - 2.0).abs() < 1e-9);
    }
}
