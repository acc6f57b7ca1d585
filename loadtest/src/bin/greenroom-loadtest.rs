//! `greenroom-loadtest`: runs load-test scenarios with real WebRTC bots against Greenroom or
//! Janus's videoroom, and writes a table, a JSON file and an HTML report.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use greenroom_loadtest::floor;
use greenroom_loadtest::procstat::ServerProbe;
use greenroom_loadtest::report;
use greenroom_loadtest::revoke::RevokePlan;
use greenroom_loadtest::runner::{self, FindMax, RunConfig, RunResult};
use greenroom_loadtest::scenario::{suite, BotKind, Scenario, Target, VideoPreset};
use greenroom_proto::Quality;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TargetArg {
    Greenroom,
    Janus,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BotsArg {
    /// webrtc-rs PeerConnections: complete clients, heavier (about 55-70 µs CPU per packet).
    Webrtc,
    /// str0m in RTP mode, no depacketizing, all peers on one thread: about half the CPU
    /// (about 33 µs per packet).
    Light,
}

#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
enum TransportArg {
    /// Media straight to the server's UDP port.
    Udp,
    /// Media over ICE-TCP: one TCP connection per peer to the server's passive TCP candidate
    /// (RFC 4571 framing; `rtc.ice_tcp_port`; light bots only).
    Tcp,
    /// Media relayed by the node's embedded TURN server over UDP (`[turn] enabled`; webrtc-rs
    /// bots only): relayed candidates only.
    Turn,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum QualityArg {
    Low,
    Medium,
    High,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PresetArg {
    Low,
    Medium,
    High,
}

/// Load-test a Greenroom server (or Janus's videoroom, for comparison) with WebRTC bots
/// (webrtc-rs, or light str0m bots with --bots light).
#[derive(Debug, Parser)]
#[command(name = "greenroom-loadtest", version)]
struct Args {
    /// The server kind.
    #[arg(long, value_enum, default_value = "greenroom")]
    target: TargetArg,
    /// Server URL (default http://127.0.0.1:7880, or http://127.0.0.1:8088/janus for Janus).
    #[arg(long, conflicts_with = "urls")]
    url: Option<String>,
    /// Greenroom cluster: node URLs, comma-separated; bots are spread over them round robin
    /// (bot i joins through node i mod n; the first publisher through the first node).
    #[arg(long, value_delimiter = ',')]
    urls: Vec<String>,
    /// API key of Greenroom tokens (the JWT `kid`; must name a key the server is configured with).
    #[arg(long, env = "GREENROOM_API_KEY", default_value = "devkey")]
    api_key: String,
    /// HS256 secret for Greenroom tokens.
    #[arg(
        long,
        env = "GREENROOM_JWT_SECRET",
        default_value = "greenroom-dev-secret"
    )]
    secret: String,
    /// How the bots' media reaches a Greenroom server.
    #[arg(long, value_enum, default_value = "udp")]
    transport: TransportArg,
    /// TURN URL for --transport turn (default `turn:<host of --url>:3478?transport=udp`; UDP only:
    /// the webrtc-rs bots cannot relay over TCP or TLS).
    #[arg(long)]
    turn_url: Option<String>,
    /// Secret of the server's TURN credentials for --transport turn (default: --secret).
    #[arg(long)]
    turn_secret: Option<String>,
    /// --transport turn: how long a bot's ICE agent waits, from its start, before it may
    /// nominate a relayed pair. webrtc-rs waits 2s by default, which delays first media by that
    /// much; a relay-only browser does not wait.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    turn_relay_wait: Duration,
    /// Read the server's CPU and memory from /proc/<pid> (local server).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Read the server's CPU and memory from its Prometheus endpoint instead.
    #[arg(long, conflicts_with = "server_pid")]
    metrics_url: Option<String>,
    /// Publishers sending Opus.
    #[arg(long, default_value_t = 0)]
    audio_publishers: usize,
    /// Publishers sending VP8 + Opus.
    #[arg(long, default_value_t = 0)]
    video_publishers: usize,
    /// Participants that only receive.
    #[arg(long, default_value_t = 0)]
    subscribers: usize,
    /// Publishers do not receive each other (default: they do, like a meeting).
    #[arg(long)]
    no_cross_subscribe: bool,
    /// How long to measure once everyone joined (e.g. 10s, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Video preset.
    #[arg(long, value_enum, default_value = "medium")]
    video_preset: PresetArg,
    /// Video bitrate in kbit/s (overrides the preset's).
    #[arg(long)]
    video_bitrate: Option<u32>,
    /// Video frames per second (overrides the preset's).
    #[arg(long)]
    video_fps: Option<u32>,
    /// Bot implementation: webrtc (webrtc-rs) or light (str0m in RTP mode, about half the CPU
    /// per received packet).
    #[arg(long, value_enum, default_value = "webrtc")]
    bots: BotsArg,
    /// Video publishers send three simulcast layers (rids q, h, f at 1/4, 1/2 and the full
    /// bitrate). Needs --bots light and --target greenroom.
    #[arg(long)]
    simulcast: bool,
    /// Receivers ask this simulcast quality (set_quality) for every video track
    /// (default: the server's, high).
    #[arg(long, value_enum)]
    quality: Option<QualityArg>,
    /// Greenroom call type (default, audio_room, livestream, development).
    #[arg(long, default_value = "default")]
    call_type: String,
    /// Joins started per second.
    #[arg(long, default_value_t = 20.0)]
    join_rate: f64,
    /// Run the standard suite (audio rooms, meetings, livestream) instead of one scenario.
    #[arg(long)]
    suite: bool,
    /// Listeners in the suite's audio rooms (livestream viewers: half).
    #[arg(long, default_value_t = 100)]
    suite_listeners: usize,
    /// Ramp subscribers until loss or latency breaks a bound; report the capacity.
    #[arg(long)]
    find_max: bool,
    /// find-max: subscribers added per step.
    #[arg(long, default_value_t = 25)]
    step: usize,
    /// find-max: measurement per step.
    #[arg(long, default_value = "4s", value_parser = parse_duration)]
    step_duration: Duration,
    /// find-max: never go beyond this many subscribers.
    #[arg(long, default_value_t = 200)]
    max_subscribers: usize,
    /// find-max: loss bound, percent.
    #[arg(long, default_value_t = 1.0)]
    max_loss: f64,
    /// find-max: latency p99 bound, ms.
    #[arg(long, default_value_t = 200.0)]
    max_p99_ms: f64,
    /// Scenario name in reports.
    #[arg(long)]
    name: Option<String>,
    /// Directory for the JSON and HTML reports.
    #[arg(long, default_value = "target/loadtest")]
    out: PathBuf,
    /// Timeout for each join/connection.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Local address of the bots' media sockets (default 127.0.0.1; for Janus, the media
    /// address scripts/janus/start.sh chose: $JANUS_ICE_IP or target/janus/ice-ip).
    #[arg(long)]
    bind_ip: Option<std::net::IpAddr>,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Revoke the first video publisher's send-video this long into the measurement window
    /// (Greenroom only), with a moderator's token; every publisher then ignores
    /// stop_publishing, like a hostile client. Reports what the subscribers received of that
    /// video before, in the revoked window and after --regrant-after, next to the server's
    /// datagrams out in the revoked window.
    #[arg(long, value_parser = parse_duration)]
    revoke_after: Option<Duration>,
    /// Grant send-video again this long into the window (needs --revoke-after).
    #[arg(long, value_parser = parse_duration, requires = "revoke_after")]
    regrant_after: Option<Duration>,
    /// After the window, keep every bot connected and its media flowing this long, then read
    /// the server's RSS again and report the memory per listener then too (e.g. `35s`: past
    /// the server's 30 s DTLS release, what a long-lived room holds).
    #[arg(long, value_parser = parse_duration)]
    settle: Option<Duration>,
    /// Exit with an error if no media was forwarded (smoke tests).
    #[arg(long)]
    require_media: bool,
    /// Print the summaries of earlier JSON reports side by side, and exit.
    #[arg(long, num_args = 1..)]
    compare: Vec<PathBuf>,
    /// With --compare: print one markdown table, a row per run (scripts/bench-issue12.sh).
    #[arg(long, requires = "compare")]
    markdown: bool,
    /// Measure this machine's forwarding floor (100 B and 1200 B) for this long each before
    /// the run, to report the server's CPU per packet as a multiple of it; 0s: skip.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    floor_time: Duration,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Measure the forwarding floor of this machine (copy + RTP rewrite + SRTP AES-GCM +
    /// sendmmsg x32 to loopback, thread CPU time) and print ns per packet as JSON.
    Floor {
        /// Measurement time per payload size.
        #[arg(long, default_value = "3s", value_parser = parse_duration)]
        time: Duration,
    },
}

/// Measures the floor on a blocking thread.
async fn measure_floor(each: Duration) -> anyhow::Result<floor::FloorFigures> {
    let f = tokio::task::spawn_blocking(move || floor::measure(each)).await??;
    Ok(f)
}

fn compare(files: &[PathBuf], markdown: bool) -> anyhow::Result<()> {
    let mut summaries = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        for r in v.as_array().into_iter().flatten() {
            let s: runner::Summary = serde_json::from_value(r["summary"].clone())
                .with_context(|| format!("summary in {}", f.display()))?;
            summaries.push(s);
        }
    }
    let refs: Vec<&runner::Summary> = summaries.iter().collect();
    if markdown {
        print!("{}", report::markdown(&refs));
    } else {
        print!("{}", report::side_by_side(&refs));
    }
    Ok(())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad duration {s:?}"))?;
    if v.is_nan() || v < 0.0 {
        return Err(format!("bad duration {s:?}"));
    }
    Duration::try_from_secs_f64(v * mult).map_err(|e| format!("bad duration {s:?}: {e}"))
}

fn scenario_of(a: &Args) -> Scenario {
    let name = a.name.clone().unwrap_or_else(|| {
        format!(
            "a{}-v{}-s{}",
            a.audio_publishers, a.video_publishers, a.subscribers
        )
    });
    let mut s = Scenario::new(name);
    s.audio_publishers = a.audio_publishers;
    s.video_publishers = a.video_publishers;
    s.subscribers = a.subscribers;
    s.publishers_subscribe = !a.no_cross_subscribe;
    s.duration = a.duration;
    s.join_rate = a.join_rate;
    s.call_type = a.call_type.clone();
    s.video = match a.video_preset {
        PresetArg::Low => VideoPreset::Low,
        PresetArg::Medium => VideoPreset::Medium,
        PresetArg::High => VideoPreset::High,
    }
    .params();
    if let Some(k) = a.video_bitrate {
        s.video.bitrate_bps = k.saturating_mul(1000);
    }
    if let Some(f) = a.video_fps {
        s.video.fps = f.max(1);
    }
    s.simulcast = a.simulcast;
    s.quality = a.quality.map(quality_of);
    s
}

fn quality_of(q: QualityArg) -> Quality {
    match q {
        QualityArg::Low => Quality::Low,
        QualityArg::Medium => Quality::Medium,
        QualityArg::High => Quality::High,
    }
}

fn write_reports(out: &std::path::Path, stem: &str, results: &[RunResult]) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json = out.join(format!("{stem}.json"));
    let html = out.join(format!("{stem}.html"));
    std::fs::write(&json, serde_json::to_string_pretty(results)?)?;
    std::fs::write(&html, report::html(results))?;
    eprintln!("reports: {} {}", json.display(), html.display());
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if !args.compare.is_empty() {
        return compare(&args.compare, args.markdown);
    }
    if let Some(Command::Floor { time }) = args.command {
        let f = measure_floor(time).await?;
        println!("{}", serde_json::to_string(&f)?);
        return Ok(());
    }
    let target = match args.target {
        TargetArg::Greenroom => Target::Greenroom,
        TargetArg::Janus => Target::Janus,
    };
    let url = args
        .url
        .clone()
        .or_else(|| args.urls.first().cloned())
        .unwrap_or_else(|| match target {
            Target::Greenroom => "http://127.0.0.1:7880".into(),
            Target::Janus => "http://127.0.0.1:8088/janus".into(),
        });
    let mut config = RunConfig::new(target, url);
    config.urls = args.urls.clone();
    config.bots = match args.bots {
        BotsArg::Webrtc => BotKind::Webrtc,
        BotsArg::Light => BotKind::Light,
    };
    config.api_key = args.api_key.clone();
    config.secret = args.secret.clone();
    if args.transport == TransportArg::Tcp {
        config.transport = greenroom_loadtest::light::PeerTransport::Tcp;
    }
    if args.transport == TransportArg::Turn {
        if !matches!((target, config.bots), (Target::Greenroom, BotKind::Webrtc)) {
            anyhow::bail!("--transport turn needs --target greenroom and --bots webrtc");
        }
        let url = match &args.turn_url {
            Some(u) => u.clone(),
            None => {
                let parsed = reqwest::Url::parse(&config.url)?;
                let host = parsed
                    .host_str()
                    .ok_or_else(|| anyhow::anyhow!("--url has no host"))?;
                format!("turn:{host}:3478?transport=udp")
            }
        };
        if url.starts_with("turns:") || url.contains("transport=tcp") {
            // webrtc-rs 0.21's TURN relayer skips secure and non-UDP TURN URLs (it would gather
            // no relayed candidate and every join would time out), and str0m has no TURN client.
            anyhow::bail!(
                "--transport turn relays over UDP only ({url}): the webrtc-rs bots' TURN client \
                 has no TCP or TLS"
            );
        }
        config.turn = Some(greenroom_loadtest::turn::TurnRelay {
            url,
            secret: args
                .turn_secret
                .clone()
                .unwrap_or_else(|| args.secret.clone()),
            relay_acceptance_min_wait: Some(args.turn_relay_wait),
        });
    }
    config.timeout = args.timeout;
    config.settle = args.settle;
    config.progress = !args.no_progress;
    if let Some(after) = args.revoke_after {
        if args.find_max || args.suite {
            bail!("--revoke-after runs one scenario: not with --find-max or --suite");
        }
        config.revoke = Some(RevokePlan {
            after,
            regrant_after: args.regrant_after,
        });
    }
    config.bind_ip = match (args.bind_ip, target) {
        (Some(ip), _) => ip,
        (None, Target::Janus) => std::env::var("JANUS_ICE_IP")
            .ok()
            .or_else(|| std::fs::read_to_string("target/janus/ice-ip").ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(config.bind_ip),
        (None, Target::Greenroom) => config.bind_ip,
    };
    config.server = match (args.server_pid, &args.metrics_url) {
        (Some(pid), _) => ServerProbe::Pid(pid),
        (None, Some(u)) => ServerProbe::metrics(u.clone()),
        (None, None) => ServerProbe::None,
    };
    if !args.floor_time.is_zero() {
        let f = measure_floor(args.floor_time).await?;
        eprintln!(
            "floor: {:.0} ns/pkt at {} B, {:.0} ns/pkt at {} B",
            f.ns_small,
            floor::SMALL,
            f.ns_large,
            floor::LARGE
        );
        config.floor = Some(f);
    }
    let scenarios = if args.suite {
        suite(args.suite_listeners, args.duration)
            .into_iter()
            .map(|mut s| {
                s.join_rate = args.join_rate;
                s.call_type = args.call_type.clone();
                s.simulcast = args.simulcast;
                s.quality = args.quality.map(quality_of);
                s
            })
            .collect()
    } else {
        vec![scenario_of(&args)]
    };
    for s in &scenarios {
        if let Err(e) = runner::check_bots(s, &config) {
            bail!("{e}");
        }
    }
    let mut results = Vec::new();
    for s in &scenarios {
        eprintln!(
            "== {} on {} ({} bots): {} audio + {} video publishers, {} subscribers, {:?}",
            s.name,
            target.as_str(),
            config.bots.as_str(),
            s.audio_publishers,
            s.video_publishers,
            s.subscribers,
            s.duration
        );
        let r = if args.find_max {
            let bounds = FindMax {
                step: args.step.max(1),
                step_duration: args.step_duration,
                max_subscribers: args.max_subscribers,
                max_loss_pct: args.max_loss,
                max_p99_ms: args.max_p99_ms,
            };
            runner::find_max(s, &config, bounds).await
        } else {
            runner::run(s, &config).await
        };
        match r {
            Ok(r) => {
                println!("{}", report::table(&r.summary));
                if let Some(c) = &r.capacity {
                    println!(
                        "capacity: {} subscribers ({})",
                        c.max_subscribers, c.stopped_because
                    );
                }
                results.push(r);
            }
            Err(e) => {
                eprintln!("{}: {e}", s.name);
                if !args.suite {
                    return Err(e.into());
                }
            }
        }
    }
    let stem = if args.suite {
        format!("suite-{}", target.as_str())
    } else {
        format!("{}-{}", scenarios[0].name, target.as_str())
    };
    write_reports(&args.out, &stem, &results)?;
    if args.require_media {
        let none = results.is_empty() || results.iter().any(|r| r.summary.forwarded_packets == 0);
        if none {
            bail!("no media arrived at the subscribers");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
