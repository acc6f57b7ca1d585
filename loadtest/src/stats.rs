//! Receive-side accounting: packets, bytes, loss from [`Probe`] sequence gaps, one-way latency.

use std::time::{Duration, Instant};

use greenroom_proto::TrackSource;

use crate::histogram::LatencyHistogram;
use crate::probe::Probe;
use crate::vp8;

/// What a subscriber has received on one track.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrackStats {
    /// The track (`<participant_id>:<source>`), or `mid:<mid>` for a mid the last offer did
    /// not describe.
    pub track_id: String,
    /// The mid it arrived on.
    pub mid: String,
    /// The source, when the offer said.
    pub source: Option<TrackSource>,
    /// RTP packets received.
    pub packets: u64,
    /// RTP payload bytes received.
    pub bytes: u64,
    /// Packets that carried a valid [`Probe`].
    pub probes: u64,
    /// Packets missing from the probe sequence: `highest - lowest + 1 - distinct received`.
    /// Packets the server deliberately did not forward (e.g. an adversarial publisher after
    /// `stop_publishing`) count here too.
    pub lost: u64,
    /// Packets whose probe sequence was lower than the highest seen (late or duplicate).
    pub out_of_order: u64,
    /// Lowest probe sequence seen.
    pub first_seq: Option<u32>,
    /// Highest probe sequence seen.
    pub highest_seq: Option<u32>,
    /// VP8 keyframes seen (first packet of a keyframe).
    pub keyframes: u64,
    /// RTP packets with the marker bit (for video: frames completed).
    pub markers: u64,
    /// Latency of the last probe, microseconds.
    pub last_latency_us: Option<u64>,
    /// Lowest probe latency, microseconds.
    pub min_latency_us: Option<u64>,
    /// Highest probe latency, microseconds.
    pub max_latency_us: Option<u64>,
    /// Sum of probe latencies, microseconds (see [`TrackStats::mean_latency`]).
    pub sum_latency_us: u64,
    /// SSRC of the last packet.
    pub ssrc: u32,
    /// Payload type of the last packet.
    pub payload_type: u8,
    /// When the first packet arrived.
    pub first_packet_at: Option<Instant>,
    /// When the last packet arrived.
    pub last_packet_at: Option<Instant>,
    /// Distribution of probe latencies, microseconds (for percentiles).
    pub latency_hist: LatencyHistogram,
    /// Simulcast layer of the last probe (0 = lowest), `None` for a non-simulcast sender.
    pub layer: Option<u8>,
    /// Packets received per simulcast layer (q, h, f), from the probes' layer bits.
    pub layer_packets: [u64; 3],
    /// Payload bytes received per simulcast layer (q, h, f).
    pub layer_bytes: [u64; 3],
}

impl TrackStats {
    /// Mean one-way latency of the probes received.
    pub fn mean_latency(&self) -> Option<Duration> {
        (self.probes > 0).then(|| Duration::from_micros(self.sum_latency_us / self.probes))
    }

    /// Time since the last packet (`None` if none arrived).
    pub fn since_last_packet(&self) -> Option<Duration> {
        self.last_packet_at.map(|t| t.elapsed())
    }

    /// Whether a packet arrived after `t`.
    pub fn received_since(&self, t: Instant) -> bool {
        self.last_packet_at.is_some_and(|l| l > t)
    }
}

/// One received RTP packet, as the counter needs it.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    /// SSRC.
    pub ssrc: u32,
    /// Payload type.
    pub payload_type: u8,
    /// Marker bit.
    pub marker: bool,
    /// The payload (without RTP header and padding).
    pub payload: &'a [u8],
    /// Wall clock at reception, microseconds since the Unix epoch.
    pub recv_us: u64,
    /// Monotonic time of reception.
    pub at: Instant,
}

/// Accumulates [`TrackStats`] for one track.
#[derive(Debug, Clone, Default)]
pub struct TrackCounter {
    stats: TrackStats,
    /// Probe sequences received above `highest - WINDOW`, as a bit window for duplicate checks.
    window: u128,
}

impl TrackCounter {
    /// A counter for `track_id` on `mid`.
    pub fn new(track_id: String, mid: String, source: Option<TrackSource>) -> Self {
        TrackCounter {
            stats: TrackStats {
                track_id,
                mid,
                source,
                ..TrackStats::default()
            },
            window: 0,
        }
    }

    /// The stats so far.
    pub fn stats(&self) -> &TrackStats {
        &self.stats
    }

    /// Sets the mid and source (after a renegotiation moved the track).
    pub fn relabel(&mut self, mid: &str, source: Option<TrackSource>) {
        if self.stats.mid != mid {
            self.stats.mid = mid.to_owned();
        }
        if source.is_some() {
            self.stats.source = source;
        }
    }

    /// Counts one packet.
    pub fn record(&mut self, r: &Received<'_>) {
        let s = &mut self.stats;
        s.packets += 1;
        s.bytes += r.payload.len() as u64;
        s.ssrc = r.ssrc;
        s.payload_type = r.payload_type;
        if r.marker {
            s.markers += 1;
        }
        if vp8_like(s.source) && vp8::is_keyframe_start(r.payload) {
            s.keyframes += 1;
        }
        s.first_packet_at.get_or_insert(r.at);
        s.last_packet_at = Some(r.at);
        let Some(probe) = Probe::parse_trailer(r.payload) else {
            return;
        };
        s.probes += 1;
        let latency = r.recv_us.saturating_sub(probe.send_us);
        s.last_latency_us = Some(latency);
        s.min_latency_us = Some(s.min_latency_us.map_or(latency, |m| m.min(latency)));
        s.max_latency_us = Some(s.max_latency_us.map_or(latency, |m| m.max(latency)));
        s.sum_latency_us = s.sum_latency_us.saturating_add(latency);
        s.latency_hist.record(latency);
        let layer = probe.layer();
        if let Some(l) = layer {
            let i = usize::from(l).min(2);
            s.layer_packets[i] += 1;
            s.layer_bytes[i] += r.payload.len() as u64;
        }
        if layer != s.layer {
            // Each simulcast layer has its own probe sequence: the server switched layers, so
            // the accounting restarts on the new layer's sequence (no loss is counted for it).
            s.layer = layer;
            s.first_seq = None;
            s.highest_seq = None;
            self.window = 0;
        }
        self.sequence(probe.seq);
    }

    /// Loss accounting on the probe sequence, with a 128-packet window for duplicates.
    fn sequence(&mut self, seq: u32) {
        let s = &mut self.stats;
        let (Some(first), Some(high)) = (s.first_seq, s.highest_seq) else {
            s.first_seq = Some(seq);
            s.highest_seq = Some(seq);
            self.window = 1;
            return;
        };
        if seq > high {
            let gap = u64::from(seq - high - 1);
            s.lost += gap;
            let shift = seq - high;
            self.window = if shift >= 128 {
                0
            } else {
                self.window << shift
            };
            self.window |= 1;
            s.highest_seq = Some(seq);
            return;
        }
        s.out_of_order += 1;
        if seq < first {
            // Earlier than anything seen: the range grows by the packets before it.
            s.lost += u64::from(first - seq - 1);
            s.first_seq = Some(seq);
            return;
        }
        let back = high - seq;
        if back < 128 {
            let bit = 1u128 << back;
            if self.window & bit == 0 {
                // A late packet fills a gap counted as lost.
                self.window |= bit;
                s.lost = s.lost.saturating_sub(1);
            }
        }
    }
}

/// Whether keyframe detection applies (video sources, or unknown source).
fn vp8_like(source: Option<TrackSource>) -> bool {
    source.is_none_or(|s| !s.is_audio())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vp8::{packetize_frame, Vp8FrameSpec};

    fn probe_payload(seq: u32, send_us: u64) -> Vec<u8> {
        let mut p = vec![0xF8u8; 120];
        Probe {
            seq,
            send_us,
            flags: 0,
        }
        .write_trailer(&mut p);
        p
    }

    fn feed(c: &mut TrackCounter, seq: u32, send_us: u64, recv_us: u64) {
        let p = probe_payload(seq, send_us);
        c.record(&Received {
            ssrc: 1,
            payload_type: 111,
            marker: false,
            payload: &p,
            recv_us,
            at: Instant::now(),
        });
    }

    #[test]
    fn gaps_count_as_loss_and_late_packets_fill_them() {
        let mut c = TrackCounter::new("p:microphone".into(), "0".into(), None);
        for seq in [10, 11, 14, 15] {
            feed(&mut c, seq, 0, 0);
        }
        assert_eq!(c.stats().lost, 2);
        feed(&mut c, 12, 0, 0);
        assert_eq!(c.stats().lost, 1);
        assert_eq!(c.stats().out_of_order, 1);
        feed(&mut c, 12, 0, 0);
        assert_eq!(c.stats().lost, 1, "duplicate does not reduce loss");
        assert_eq!(c.stats().out_of_order, 2);
        feed(&mut c, 8, 0, 0);
        assert_eq!(c.stats().lost, 2, "9 is missing too");
        assert_eq!(c.stats().first_seq, Some(8));
        assert_eq!(c.stats().highest_seq, Some(15));
        assert_eq!(c.stats().packets, 7);
        assert_eq!(c.stats().probes, 7);
        assert_eq!(c.stats().bytes, 7 * 120);
    }

    #[test]
    fn a_simulcast_layer_switch_restarts_the_sequence_without_loss() {
        let mut c = TrackCounter::new("t".into(), "1".into(), Some(TrackSource::Camera));
        let mut feed_layer = |seq: u32, layer: u8| {
            let mut p = probe_payload(seq, 0);
            Probe::set_layer_in(&mut p, layer);
            c.record(&Received {
                ssrc: 1,
                payload_type: 96,
                marker: false,
                payload: &p,
                recv_us: 0,
                at: Instant::now(),
            });
        };
        for seq in 100..110 {
            feed_layer(seq, 0);
        }
        for seq in 5000..5010 {
            feed_layer(seq, 2);
        }
        feed_layer(5011, 2);
        let s = c.stats();
        assert_eq!(s.lost, 1, "only the gap inside layer 2");
        assert_eq!(s.layer, Some(2));
        assert_eq!(s.layer_packets, [10, 0, 11]);
        assert_eq!(s.layer_bytes[0], 10 * 120);
    }

    #[test]
    fn big_jump_clears_the_window() {
        let mut c = TrackCounter::new("t".into(), "0".into(), None);
        feed(&mut c, 0, 0, 0);
        feed(&mut c, 1000, 0, 0);
        assert_eq!(c.stats().lost, 999);
        feed(&mut c, 1, 0, 0);
        assert_eq!(c.stats().lost, 999, "too old for the window: not credited");
    }

    #[test]
    fn latency_min_max_mean() {
        let mut c = TrackCounter::new("t".into(), "0".into(), None);
        feed(&mut c, 0, 1_000, 1_500);
        feed(&mut c, 1, 2_000, 3_000);
        feed(&mut c, 2, 5_000, 4_000); // clock skew: clamps to 0
        let s = c.stats();
        assert_eq!(s.min_latency_us, Some(0));
        assert_eq!(s.max_latency_us, Some(1_000));
        assert_eq!(s.last_latency_us, Some(0));
        assert_eq!(s.mean_latency(), Some(Duration::from_micros(500)));
    }

    #[test]
    fn payload_without_probe_counts_packets_only() {
        let mut c = TrackCounter::new("t".into(), "0".into(), Some(TrackSource::Microphone));
        c.record(&Received {
            ssrc: 9,
            payload_type: 111,
            marker: true,
            payload: &[1, 2, 3],
            recv_us: 0,
            at: Instant::now(),
        });
        let s = c.stats();
        assert_eq!((s.packets, s.bytes, s.probes, s.markers), (1, 3, 0, 1));
        assert_eq!(s.mean_latency(), None);
        assert_eq!(s.ssrc, 9);
    }

    #[test]
    fn keyframes_are_counted_for_video() {
        let mut c = TrackCounter::new("t".into(), "1".into(), Some(TrackSource::Camera));
        for (i, key) in [true, false, false, true].into_iter().enumerate() {
            let spec = Vp8FrameSpec {
                frame_bytes: 2000,
                keyframe: key,
                picture_id: i as u16,
                width: 320,
                height: 240,
            };
            let pkts = packetize_frame(&spec, 1200, i as u32 * 2, 0);
            let n = pkts.len();
            for (j, p) in pkts.iter().enumerate() {
                c.record(&Received {
                    ssrc: 1,
                    payload_type: 96,
                    marker: j + 1 == n,
                    payload: p,
                    recv_us: 0,
                    at: Instant::now(),
                });
            }
        }
        assert_eq!(c.stats().keyframes, 2);
        assert_eq!(c.stats().markers, 4);
        assert_eq!(c.stats().lost, 0);
    }
}
