//! Media plane counters, written by the engine shards and read by [`crate::Sfu::metrics_text`].
//!
//! Each shard has its own [`SfuCounters`]; a scrape sums them ([`render`]), so the counters
//! keep a single writer each.
//!
//! Cost on the hot path: every counter is an `AtomicU64` with ONE writer (its shard's thread), so
//! an update is a relaxed load and a relaxed store ([`add`]): two plain moves on x86-64 and
//! aarch64, no lock prefix, no allocation, no map lookup. `on_rtp` makes two such updates per
//! incoming packet (packets and bytes received) plus two per packet for the whole fan-out
//! (forwarded packets and bytes, summed in registers over the consumers). Readers (a scrape) see
//! each value eventually; a scrape may see `packets` and `bytes` from slightly different moments.
//! Gauges are recomputed on commands and on the 250 ms housekeeping tick; histograms are fed
//! from str0m's stats events (once per [`STATS_INTERVAL`] per stream).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use greenroom_proto::{Capability, TrackSource};
use str0m::media::MediaKind;

/// How often str0m emits `MediaIngressStats` / `MediaEgressStats` per peer.
pub const STATS_INTERVAL: Duration = Duration::from_secs(5);

/// Adds `n` to a counter that only the calling thread writes (no read-modify-write instruction).
#[inline]
pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

/// Index of a media kind in the per-kind arrays: 0 audio, 1 video.
#[inline]
pub(crate) fn kind_idx(kind: MediaKind) -> usize {
    usize::from(kind == MediaKind::Video)
}

const KINDS: [&str; 2] = ["audio", "video"];

/// Index of the capability a source needs, in [`CAPS`].
#[inline]
pub(crate) fn cap_idx(source: TrackSource) -> usize {
    match source.capability() {
        Capability::SendAudio => 0,
        Capability::SendVideo => 1,
        _ => 2,
    }
}

const CAPS: [Capability; 3] = [
    Capability::SendAudio,
    Capability::SendVideo,
    Capability::Screenshare,
];

/// Why a consumer did not get a packet its producer forwarded.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ConsumerDrop {
    /// The subscriber's gate has `receive` off.
    Receive = 0,
    /// The subscriber unsubscribed the track (paused).
    Paused = 1,
    /// Too old for the current epoch, codec the subscriber cannot take, or no send stream.
    Other = 2,
}

const DROP_REASONS: [&str; 3] = ["receive", "paused", "other"];

/// Index in [`SfuCounters::drives`]: a datagram for the peer.
pub(crate) const DRIVE_INPUT: usize = 0;
/// See [`DRIVE_INPUT`]: packets were written to the peer (fan-out) or its state changed.
pub(crate) const DRIVE_OUTPUT: usize = 1;
/// See [`DRIVE_INPUT`]: the peer's str0m timeout fell due.
pub(crate) const DRIVE_TIMER: usize = 2;
const DRIVE_CAUSES: [&str; 3] = ["input", "output", "timer"];

/// The timer drives ([`DRIVE_TIMER`]) by the str0m timeout reason that armed them, grouped
/// (index into [`SfuCounters::timer_reasons`]; the engine maps `str0m::Reason` onto these).
pub(crate) const TIMER_REASONS: [&str; 10] = [
    "pacer_media",
    "pacer_handle",
    "pacer_padding",
    "bwe",
    "twcc",
    "nack",
    "feedback",
    "stats",
    "ice",
    "other",
];

/// Index in [`SfuCounters::wakeups`]: the shard thread woke up for its queue (datagrams,
/// commands).
pub(crate) const WAKE_QUEUE: usize = 0;
/// See [`WAKE_QUEUE`]: it woke up for a timer (a peer's timeout or the housekeeping tick).
pub(crate) const WAKE_TIMER: usize = 1;
/// See [`WAKE_QUEUE`]: a lone shard woke up for datagrams on the socket it reads itself.
pub(crate) const WAKE_SOCKET: usize = 2;
const WAKE_CAUSES: [&str; 3] = ["queue", "timer", "socket"];

/// Index in the ingress/egress arrays of the histograms.
pub(crate) const INGRESS: usize = 0;
/// See [`INGRESS`].
pub(crate) const EGRESS: usize = 1;
const DIRECTIONS: [&str; 2] = ["ingress", "egress"];

/// A fixed-bucket histogram with a single writer.
pub(crate) struct Histogram<const N: usize> {
    bounds: [f64; N],
    /// Per-bucket (not cumulative) counts; values above the last bound count in `inf`.
    counts: [AtomicU64; N],
    inf: AtomicU64,
    /// `f64` bits.
    sum: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    fn new(bounds: [f64; N]) -> Self {
        Histogram {
            bounds,
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            inf: AtomicU64::new(0),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// Records one value (engine thread only). NaN and negative values are ignored.
    pub(crate) fn observe(&self, v: f64) {
        if v.is_nan() || v < 0.0 {
            return;
        }
        match self.bounds.iter().position(|b| v <= *b) {
            Some(i) => add(&self.counts[i], 1),
            None => add(&self.inf, 1),
        }
        let sum = f64::from_bits(self.sum.load(Relaxed)) + v;
        self.sum.store(sum.to_bits(), Relaxed);
    }

    /// Adds another histogram's counts and sum into this one (scrape time; same bounds).
    fn absorb(&self, other: &Self) {
        for (a, b) in self.counts.iter().zip(&other.counts) {
            add(a, b.load(Relaxed));
        }
        add(&self.inf, other.inf.load(Relaxed));
        let sum = f64::from_bits(self.sum.load(Relaxed)) + f64::from_bits(other.sum.load(Relaxed));
        self.sum.store(sum.to_bits(), Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cum += c.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cum}");
        }
        cum += self.inf.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cum}");
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = f64::from_bits(self.sum.load(Relaxed));
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        // The count is the +Inf bucket, so the two always agree within one scrape.
        let _ = writeln!(out, "{name}_count{braces} {cum}");
    }
}

/// Every media plane counter; shared by the engine (writer) and the handle (reader).
pub(crate) struct SfuCounters {
    pub(crate) rx_packets: [AtomicU64; 2],
    pub(crate) rx_bytes: [AtomicU64; 2],
    pub(crate) fwd_packets: [AtomicU64; 2],
    pub(crate) fwd_bytes: [AtomicU64; 2],
    /// Gate drops at the producer, by [`cap_idx`].
    pub(crate) gate_drops: [AtomicU64; 3],
    /// Drops at a consumer, by [`ConsumerDrop`].
    pub(crate) consumer_drops: [AtomicU64; 3],
    /// NACKs received from subscribers / sent to publishers.
    pub(crate) nacks: [AtomicU64; 2],
    /// Keyframe requests (PLI or FIR) sent to publishers.
    pub(crate) plis: AtomicU64,
    pub(crate) producers: [AtomicU64; 2],
    pub(crate) consumers: [AtomicU64; 2],
    pub(crate) peers: AtomicU64,
    /// str0m drive cycles (`handle_input` + `poll_output`), by [`DRIVE_INPUT`] etc.
    pub(crate) drives: [AtomicU64; 3],
    /// Timer drives by the reason of the timeout, by [`TIMER_REASONS`].
    pub(crate) timer_reasons: [AtomicU64; 10],
    /// Wake-ups of the shard thread, by [`WAKE_QUEUE`] / [`WAKE_TIMER`] / [`WAKE_SOCKET`].
    pub(crate) wakeups: [AtomicU64; 3],
    /// Fan-outs whose subscriber peers were driven on the worker pool.
    pub(crate) parallel_fanouts: AtomicU64,
    /// Batches a lone shard read before flushing its sends (see `io::inbox`): they joined the
    /// running pass instead of waking the shard.
    pub(crate) absorbed: AtomicU64,
    /// Lean audio path: RTP packets the engine sent itself (no str0m drive), and RTCP sender
    /// reports for those streams.
    pub(crate) lean_packets: AtomicU64,
    pub(crate) lean_reports: AtomicU64,
    /// Lean video path: RTP packets sent, retransmits sent on RTX, NACKed packets not resent
    /// (no RTX, not cached, over budget), keyframe requests (PLI/FIR) read by the engine.
    pub(crate) lean_video_packets: AtomicU64,
    pub(crate) lean_retransmits: AtomicU64,
    pub(crate) lean_nacks_ignored: AtomicU64,
    pub(crate) lean_plis: AtomicU64,
    /// SRTCP datagrams from subscribers whose every m-line is lean, read by the engine only
    /// (no str0m drive: nothing in them concerns a stream str0m sends).
    pub(crate) lean_rtcp_only: AtomicU64,
    /// Publishers' RTP packets opened and forwarded by the engine (lean ingress, no str0m
    /// drive).
    pub(crate) lean_ingress_packets: AtomicU64,
    /// Feedback packets (compound RTCP: RR, NACK, TWCC; and PLI/FIR) the engine sent to lean
    /// ingress publishers.
    pub(crate) lean_ingress_feedback: AtomicU64,
    /// Lean streams (audio and video): report blocks read from the subscribers' receiver
    /// reports, and the packets they report lost (increases of the cumulative count).
    pub(crate) lean_receiver_reports: AtomicU64,
    pub(crate) lean_packets_lost: AtomicU64,
    /// Datagrams the shard dropped before any peer: no peer for their ufrag or validated
    /// address, or refused by that peer (STUN integrity, unknown candidate pair).
    pub(crate) unrouted: AtomicU64,
    pub(crate) rtt: [Histogram<9>; 2],
    pub(crate) loss: [Histogram<8>; 2],
    pub(crate) jitter: [Histogram<8>; 2],
}

fn zeros<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

const RTT_BOUNDS: [f64; 9] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0];
const LOSS_BOUNDS: [f64; 8] = [0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5];
const JITTER_BOUNDS: [f64; 8] = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25];

impl Default for SfuCounters {
    fn default() -> Self {
        SfuCounters {
            rx_packets: zeros(),
            rx_bytes: zeros(),
            fwd_packets: zeros(),
            fwd_bytes: zeros(),
            gate_drops: zeros(),
            consumer_drops: zeros(),
            nacks: zeros(),
            plis: AtomicU64::new(0),
            producers: zeros(),
            consumers: zeros(),
            peers: AtomicU64::new(0),
            drives: zeros(),
            timer_reasons: zeros(),
            wakeups: zeros(),
            parallel_fanouts: AtomicU64::new(0),
            absorbed: AtomicU64::new(0),
            lean_packets: AtomicU64::new(0),
            lean_reports: AtomicU64::new(0),
            lean_video_packets: AtomicU64::new(0),
            lean_retransmits: AtomicU64::new(0),
            lean_nacks_ignored: AtomicU64::new(0),
            lean_plis: AtomicU64::new(0),
            lean_rtcp_only: AtomicU64::new(0),
            lean_ingress_packets: AtomicU64::new(0),
            lean_ingress_feedback: AtomicU64::new(0),
            lean_receiver_reports: AtomicU64::new(0),
            lean_packets_lost: AtomicU64::new(0),
            unrouted: AtomicU64::new(0),
            rtt: std::array::from_fn(|_| Histogram::new(RTT_BOUNDS)),
            loss: std::array::from_fn(|_| Histogram::new(LOSS_BOUNDS)),
            jitter: std::array::from_fn(|_| Histogram::new(JITTER_BOUNDS)),
        }
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A metric with one label whose samples are `cells`, one per label value: its header and
/// its samples.
fn by_label(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    label: &str,
    values: &[&str],
    cells: &[AtomicU64],
) {
    header(out, name, kind, help);
    for (v, c) in values.iter().zip(cells) {
        let _ = writeln!(out, "{name}{{{label}=\"{v}\"}} {}", c.load(Relaxed));
    }
}

/// A histogram per direction (ingress, egress) under one header.
fn by_direction<const N: usize>(
    out: &mut String,
    name: &str,
    help: &str,
    histograms: &[Histogram<N>; 2],
) {
    header(out, name, "histogram", help);
    for (d, h) in DIRECTIONS.iter().zip(histograms) {
        h.render(out, name, &format!("direction=\"{d}\""));
    }
}

/// A metric without labels: its header and its one sample.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// A metric with one label: its header and a sample per (label value, value).
fn labelled<V: std::fmt::Display>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    label: &str,
    samples: &[(&str, V)],
) {
    header(out, name, kind, help);
    for (v, value) in samples {
        let _ = writeln!(out, "{name}{{{label}=\"{v}\"}} {value}");
    }
}

fn absorb_all(into: &[AtomicU64], from: &[AtomicU64]) {
    for (a, b) in into.iter().zip(from) {
        add(a, b.load(Relaxed));
    }
}

/// Figures of the UDP socket and the receive thread, for [`render`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct UdpFigures {
    /// Datagrams the receive thread dropped: no shard for them, or their shard died.
    pub(crate) unrouted: u64,
    /// Datagrams the receive thread dropped because their shard's queue was full.
    pub(crate) queue_dropped: u64,
    /// Effective SO_RCVBUF and SO_SNDBUF in bytes, as the kernel reports them.
    pub(crate) buffers: (usize, usize),
    /// Datagrams the kernel dropped on our socket (receive buffer full), if readable.
    pub(crate) kernel_drops: Option<u64>,
    /// What the shards' transports sent and dropped, summed.
    pub(crate) egress: crate::io::batch::SendOutcome,
}

/// The Prometheus text of the media plane: every shard's counters summed, then the per-shard
/// peer gauge and the socket's figures.
pub(crate) fn render(shards: &[&SfuCounters], udp: UdpFigures) -> String {
    let total = SfuCounters::default();
    for s in shards {
        total.absorb(s);
    }
    let mut o = total.render();
    let name = "greenroom_shard_peers";
    header(
        &mut o,
        name,
        "gauge",
        "str0m peer connections per engine shard",
    );
    for (i, s) in shards.iter().enumerate() {
        let _ = writeln!(o, "{name}{{shard=\"{i}\"}} {}", s.peers.load(Relaxed));
    }
    let dtls = crate::dtls::stats();
    single(
        &mut o,
        "greenroom_dtls_sessions",
        "gauge",
        "OpenSSL DTLS sessions held (each is released 30 s after its handshake)",
        dtls.live,
    );
    single(
        &mut o,
        "greenroom_dtls_released_total",
        "counter",
        "OpenSSL DTLS sessions released after their handshake",
        dtls.released,
    );
    single(
        &mut o,
        "greenroom_dtls_late_records_total",
        "counter",
        "DTLS records ignored because their session had been released",
        dtls.late_records,
    );
    single(
        &mut o,
        "greenroom_udp_unrouted_total",
        "counter",
        "Datagrams dropped before reaching a peer: no shard or peer for their ufrag or \
         validated source address, or refused by the peer (STUN integrity)",
        udp.unrouted + total.unrouted.load(Relaxed),
    );
    single(
        &mut o,
        "greenroom_udp_queue_dropped_total",
        "counter",
        "Datagrams dropped because their engine shard's queue was full",
        udp.queue_dropped,
    );
    let (receive, send) = udp.buffers;
    labelled(
        &mut o,
        "greenroom_udp_socket_buffer_bytes",
        "gauge",
        "Effective UDP socket buffer sizes (SO_RCVBUF, SO_SNDBUF) as the kernel reports them",
        "direction",
        &[("receive", receive), ("send", send)],
    );
    let e = udp.egress;
    single(
        &mut o,
        "greenroom_udp_sent_datagrams_total",
        "counter",
        "Datagrams the kernel accepted for sending",
        e.sent,
    );
    labelled(
        &mut o,
        "greenroom_udp_send_dropped_total",
        "counter",
        "Datagrams dropped on sending: send buffer full (would_block) or refused (error)",
        "reason",
        &[("would_block", e.would_block), ("error", e.failed)],
    );
    single(
        &mut o,
        "greenroom_udp_send_syscalls_total",
        "counter",
        "sendmmsg and sendmsg calls",
        e.syscalls,
    );
    single(
        &mut o,
        "greenroom_udp_gso_datagrams_total",
        "counter",
        "Datagrams sent inside UDP GSO sends",
        e.gso_datagrams,
    );
    if let Some(drops) = udp.kernel_drops {
        single(
            &mut o,
            "greenroom_udp_receive_drops_total",
            "counter",
            "Datagrams the kernel dropped on the media socket (receive buffer full)",
            drops,
        );
    }
    o
}

impl SfuCounters {
    /// Adds another shard's values into this one (used on a fresh total at scrape time).
    fn absorb(&self, o: &SfuCounters) {
        for (a, b) in [
            (&self.rx_packets, &o.rx_packets),
            (&self.rx_bytes, &o.rx_bytes),
            (&self.fwd_packets, &o.fwd_packets),
            (&self.fwd_bytes, &o.fwd_bytes),
            (&self.nacks, &o.nacks),
            (&self.producers, &o.producers),
            (&self.consumers, &o.consumers),
        ] {
            absorb_all(a, b);
        }
        absorb_all(&self.gate_drops, &o.gate_drops);
        absorb_all(&self.drives, &o.drives);
        absorb_all(&self.timer_reasons, &o.timer_reasons);
        absorb_all(&self.wakeups, &o.wakeups);
        add(&self.parallel_fanouts, o.parallel_fanouts.load(Relaxed));
        add(&self.absorbed, o.absorbed.load(Relaxed));
        add(&self.lean_packets, o.lean_packets.load(Relaxed));
        add(&self.lean_reports, o.lean_reports.load(Relaxed));
        add(&self.lean_video_packets, o.lean_video_packets.load(Relaxed));
        add(&self.lean_retransmits, o.lean_retransmits.load(Relaxed));
        add(&self.lean_nacks_ignored, o.lean_nacks_ignored.load(Relaxed));
        add(&self.lean_plis, o.lean_plis.load(Relaxed));
        add(&self.lean_rtcp_only, o.lean_rtcp_only.load(Relaxed));
        add(
            &self.lean_ingress_packets,
            o.lean_ingress_packets.load(Relaxed),
        );
        add(
            &self.lean_ingress_feedback,
            o.lean_ingress_feedback.load(Relaxed),
        );
        add(
            &self.lean_receiver_reports,
            o.lean_receiver_reports.load(Relaxed),
        );
        add(&self.lean_packets_lost, o.lean_packets_lost.load(Relaxed));
        add(&self.unrouted, o.unrouted.load(Relaxed));
        absorb_all(&self.consumer_drops, &o.consumer_drops);
        add(&self.plis, o.plis.load(Relaxed));
        add(&self.peers, o.peers.load(Relaxed));
        for d in 0..2 {
            self.rtt[d].absorb(&o.rtt[d]);
            self.loss[d].absorb(&o.loss[d]);
            self.jitter[d].absorb(&o.jitter[d]);
        }
    }

    /// The Prometheus text exposition of every counter.
    pub(crate) fn render(&self) -> String {
        let mut o = String::with_capacity(8 * 1024);
        let caps: Vec<&str> = CAPS.iter().map(|c| c.as_str()).collect();
        for (name, help, cells) in [
            (
                "greenroom_packets_received_total",
                "RTP packets received from publishers (gated ones included)",
                &self.rx_packets,
            ),
            (
                "greenroom_bytes_received_total",
                "RTP payload bytes received from publishers",
                &self.rx_bytes,
            ),
            (
                "greenroom_packets_forwarded_total",
                "RTP packets written to subscribers (one per packet per subscriber)",
                &self.fwd_packets,
            ),
            (
                "greenroom_bytes_forwarded_total",
                "RTP payload bytes written to subscribers",
                &self.fwd_bytes,
            ),
        ] {
            by_label(&mut o, name, "counter", help, "kind", &KINDS, cells);
        }
        by_label(
            &mut o,
            "greenroom_packets_dropped_total",
            "counter",
            "Packets from publishers dropped by the gate, by the capability the source needs",
            "capability",
            &caps,
            &self.gate_drops,
        );
        by_label(
            &mut o,
            "greenroom_consumer_packets_dropped_total",
            "counter",
            "Packets not written to one subscriber: receive off, paused (unsubscribed), other",
            "reason",
            &DROP_REASONS,
            &self.consumer_drops,
        );
        by_label(
            &mut o,
            "greenroom_nacks_total",
            "counter",
            "NACKs received from subscribers (egress) and sent to publishers (ingress), from str0m stats and the lean ingress",
            "direction",
            // In the cells' order (`INGRESS`, `EGRESS`).
            &DIRECTIONS,
            &self.nacks,
        );
        single(
            &mut o,
            "greenroom_plis_total",
            "counter",
            "Keyframe requests (PLI or FIR) sent to publishers",
            self.plis.load(Relaxed),
        );
        for (name, help, cells) in [
            ("greenroom_producers", "Published tracks", &self.producers),
            (
                "greenroom_consumers",
                "Subscriber tracks being forwarded to",
                &self.consumers,
            ),
        ] {
            by_label(&mut o, name, "gauge", help, "kind", &KINDS, cells);
        }
        single(
            &mut o,
            "greenroom_peers",
            "gauge",
            "str0m peer connections (publishers and subscribers)",
            self.peers.load(Relaxed),
        );
        by_label(
            &mut o,
            "greenroom_engine_drives_total",
            "counter",
            "str0m drive cycles by cause: a datagram (input), written packets or state (output), a due timeout (timer)",
            "cause",
            &DRIVE_CAUSES,
            &self.drives,
        );
        by_label(
            &mut o,
            "greenroom_engine_timer_drives_total",
            "counter",
            "Timer drives (greenroom_engine_drives_total{cause=\"timer\"}) by the str0m timeout that armed them: pacer releasing media, pacer budget refresh, pacer padding, bandwidth estimator, TWCC feedback, NACK, RTCP reports, stats, ICE, other",
            "reason",
            &TIMER_REASONS,
            &self.timer_reasons,
        );
        by_label(
            &mut o,
            "greenroom_engine_wakeups_total",
            "counter",
            "Wake-ups of the shard threads: for their queue (datagrams, commands) or for a timer",
            "cause",
            &WAKE_CAUSES,
            &self.wakeups,
        );
        single(
            &mut o,
            "greenroom_engine_parallel_fanouts_total",
            "counter",
            "Fan-outs large enough to drive their subscriber peers on the worker pool (all cores)",
            self.parallel_fanouts.load(Relaxed),
        );
        single(
            &mut o,
            "greenroom_engine_absorbed_total",
            "counter",
            "Batches (datagrams or messages) a lone shard read before flushing its sends: they joined that pass's sendmmsg instead of waking the shard for a pass of their own",
            self.absorbed.load(Relaxed),
        );
        single(
            &mut o,
            "greenroom_lean_packets_total",
            "counter",
            "Audio RTP packets sent on the lean path (built and SRTP-protected by the engine, no str0m drive); also counted in greenroom_packets_forwarded_total",
            self.lean_packets.load(Relaxed),
        );
        single(
            &mut o,
            "greenroom_lean_sender_reports_total",
            "counter",
            "RTCP sender reports the engine sent for lean audio and video streams",
            self.lean_reports.load(Relaxed),
        );
        single(
            &mut o,
            "greenroom_lean_video_packets_total",
            "counter",
            "Video RTP packets sent on the lean path (single-layer sources; no str0m drive); also counted in greenroom_packets_forwarded_total",
            self.lean_video_packets.load(Relaxed),
        );
        single(
            &mut o,
            "greenroom_lean_retransmits_total",
            "counter",
            "Lean video packets resent on the subscriber's RTX stream after a NACK",
            self.lean_retransmits.load(Relaxed),
        );
        single(
            &mut o,
            "greenroom_lean_nacks_ignored_total",
            "counter",
            "Packets NACKed on lean video streams and not resent (no RTX negotiated, no longer cached, or over the retransmit budget)",
            self.lean_nacks_ignored.load(Relaxed),
        );
        single(
            &mut o,
            "greenroom_lean_keyframe_requests_total",
            "counter",
            "PLI and FIR on lean video streams read by the engine from the subscriber's RTCP",
            self.lean_plis.load(Relaxed),
        );
        single(
            &mut o,
            "greenroom_lean_rtcp_only_total",
            "counter",
            "SRTCP datagrams from subscribers whose every m-line is lean, read by the engine only (no str0m drive)",
            self.lean_rtcp_only.load(Relaxed),
        );
        single(
            &mut o,
            "greenroom_lean_ingress_packets_total",
            "counter",
            "Publishers' RTP packets opened and forwarded by the engine (lean ingress, no str0m drive)",
            self.lean_ingress_packets.load(Relaxed),
        );
        single(
            &mut o,
            "greenroom_lean_ingress_feedback_total",
            "counter",
            "Feedback packets (RR, NACK, TWCC, PLI/FIR) the engine sent to lean ingress publishers",
            self.lean_ingress_feedback.load(Relaxed),
        );
        single(
            &mut o,
            "greenroom_lean_receiver_reports_total",
            "counter",
            "Report blocks about lean audio and video streams read by the engine from the subscribers' RTCP (their round trip, loss and jitter feed the egress histograms)",
            self.lean_receiver_reports.load(Relaxed),
        );
        single(
            &mut o,
            "greenroom_lean_packets_lost_total",
            "counter",
            "Packets of lean audio and video streams that subscribers report lost (increases of their cumulative loss)",
            self.lean_packets_lost.load(Relaxed),
        );
        by_direction(
            &mut o,
            "greenroom_rtt_seconds",
            "Round-trip time per stream from RTCP, sampled every stats interval",
            &self.rtt,
        );
        by_direction(
            &mut o,
            "greenroom_loss_ratio",
            "Fraction of packets lost per stream from RTCP receiver reports",
            &self.loss,
        );
        by_direction(
            &mut o,
            "greenroom_jitter_seconds",
            "Interarrival jitter per stream (ingress: measured here; egress: reported by subscribers)",
            &self.jitter,
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let c = SfuCounters::default();
        add(&c.fwd_packets[kind_idx(MediaKind::Video)], 3);
        add(&c.gate_drops[cap_idx(TrackSource::Camera)], 2);
        add(&c.gate_drops[cap_idx(TrackSource::ScreenShareAudio)], 1);
        c.rtt[EGRESS].observe(0.02);
        c.rtt[EGRESS].observe(2.0);
        c.rtt[EGRESS].observe(f64::NAN);
        let t = c.render();
        assert!(
            t.contains("greenroom_packets_forwarded_total{kind=\"video\"} 3\n"),
            "{t}"
        );
        assert!(t.contains("greenroom_packets_forwarded_total{kind=\"audio\"} 0\n"));
        assert!(t.contains("greenroom_packets_dropped_total{capability=\"send-video\"} 2\n"));
        assert!(t.contains("greenroom_packets_dropped_total{capability=\"screenshare\"} 1\n"));
        assert!(t.contains("greenroom_rtt_seconds_bucket{direction=\"egress\",le=\"0.01\"} 0\n"));
        assert!(t.contains("greenroom_rtt_seconds_bucket{direction=\"egress\",le=\"0.025\"} 1\n"));
        assert!(t.contains("greenroom_rtt_seconds_bucket{direction=\"egress\",le=\"+Inf\"} 2\n"));
        assert!(t.contains("greenroom_rtt_seconds_count{direction=\"egress\"} 2\n"));
        assert!(t.contains("greenroom_rtt_seconds_sum{direction=\"egress\"} 2.02\n"));
        // Every sample line is `name{labels} value` or a comment.
        let other = SfuCounters::default();
        add(&other.fwd_packets[kind_idx(MediaKind::Video)], 4);
        add(&other.peers, 5);
        add(&other.drives[DRIVE_TIMER], 2);
        add(&c.drives[DRIVE_TIMER], 1);
        add(&other.timer_reasons[5], 2);
        add(&c.timer_reasons[5], 1);
        add(&other.wakeups[WAKE_QUEUE], 6);
        add(&c.wakeups[WAKE_TIMER], 4);
        other.rtt[EGRESS].observe(0.02);
        add(&other.unrouted, 2);
        let udp = UdpFigures {
            unrouted: 7,
            queue_dropped: 4,
            buffers: (8192, 4096),
            kernel_drops: Some(11),
            egress: crate::io::batch::SendOutcome {
                sent: 40,
                would_block: 3,
                failed: 1,
                syscalls: 2,
                gso_datagrams: 5,
                bytes: 0,
            },
        };
        let t = render(&[&c, &other], udp);
        assert!(
            t.contains("greenroom_packets_forwarded_total{kind=\"video\"} 7\n"),
            "{t}"
        );
        assert!(t.contains("greenroom_rtt_seconds_count{direction=\"egress\"} 3\n"));
        assert!(t.contains("greenroom_rtt_seconds_bucket{direction=\"egress\",le=\"0.025\"} 2\n"));
        assert!(t.contains("greenroom_shard_peers{shard=\"1\"} 5\n"));
        assert!(
            t.contains("greenroom_udp_unrouted_total 9\n"),
            "receive thread + shards"
        );
        assert!(t.contains("greenroom_udp_queue_dropped_total 4\n"));
        assert!(t.contains("\ngreenroom_dtls_sessions "));
        assert!(t.contains("\ngreenroom_dtls_released_total "));
        assert!(t.contains("\ngreenroom_dtls_late_records_total "));
        assert!(t.contains("greenroom_udp_socket_buffer_bytes{direction=\"receive\"} 8192\n"));
        assert!(t.contains("greenroom_udp_receive_drops_total 11\n"));
        assert!(t.contains("greenroom_udp_sent_datagrams_total 40\n"));
        assert!(t.contains("greenroom_udp_send_dropped_total{reason=\"would_block\"} 3\n"));
        assert!(t.contains("greenroom_udp_send_dropped_total{reason=\"error\"} 1\n"));
        assert!(t.contains("greenroom_engine_drives_total{cause=\"timer\"} 3\n"));
        assert!(t.contains("greenroom_engine_timer_drives_total{reason=\"nack\"} 3\n"));
        assert!(t.contains("greenroom_engine_timer_drives_total{reason=\"twcc\"} 0\n"));
        assert!(t.contains("greenroom_engine_wakeups_total{cause=\"queue\"} 6\n"));
        assert!(t.contains("greenroom_engine_wakeups_total{cause=\"timer\"} 4\n"));
        for line in t.lines() {
            assert!(
                line.starts_with("# ") || line.split(' ').count() == 2,
                "bad line {line:?}"
            );
        }
    }
}
