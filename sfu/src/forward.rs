//! The per-packet forwarding path: the gate bits and the per-consumer rewrite.
//!
//! Everything here is pure (no sockets, no str0m state), so it is unit-tested beside the code
//! and measured by `benches/forward.rs`. The engine calls [`ConsumerState::step`] once per
//! packet per consumer, after one [`GateCell::sends`] test per packet for the producer; each
//! consumer reads its subscriber's `receive` flag through a [`GateCopy`], which re-reads the
//! shared cell only after some gate changed ([`changes`]).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use greenroom_proto::{MediaGate, Quality, SourceSet, TrackSource};

/// Bit of the `receive` flag in a [`GateCell`] (the low four bits are the send [`SourceSet`]).
const RECEIVE_BIT: u8 = 0x80;

/// A participant's [`MediaGate`] packed in one byte, shared between the control-plane handle
/// (writer) and the engine's producers and consumers (readers).
///
/// A store by `set_gate` is visible to the engine's next load, so the new gate applies to the
/// very next packet the engine handles; a load is one relaxed atomic read, no lock.
#[derive(Debug, Default)]
pub struct GateCell(AtomicU8);

impl GateCell {
    /// A cell holding `gate`.
    pub fn new(gate: MediaGate) -> GateCell {
        GateCell(AtomicU8::new(Self::pack(gate)))
    }

    fn pack(gate: MediaGate) -> u8 {
        gate.send.bits() | if gate.receive { RECEIVE_BIT } else { 0 }
    }

    /// Replaces the gate, then bumps the change counter ([`changes`]): every [`GateCopy`]
    /// re-reads its cell at its next packet.
    pub fn store(&self, gate: MediaGate) {
        self.0.store(Self::pack(gate), Ordering::Release);
        note_change();
    }

    /// The current gate.
    pub fn load(&self) -> MediaGate {
        let v = self.0.load(Ordering::Acquire);
        MediaGate {
            send: TrackSource::ALL
                .into_iter()
                .filter(|s| v & SourceSet::bit(*s) != 0)
                .collect(),
            receive: v & RECEIVE_BIT != 0,
        }
    }

    /// Whether packets of the source whose bit is `bit` ([`SourceSet::bit`]) may be forwarded.
    #[inline]
    pub fn sends(&self, bit: u8) -> bool {
        self.0.load(Ordering::Relaxed) & bit != 0
    }

    /// Whether the participant may receive media.
    #[inline]
    pub fn receives(&self) -> bool {
        self.0.load(Ordering::Relaxed) & RECEIVE_BIT != 0
    }
}

/// The process-wide change counter behind [`GateCopy`] (and the engine's cached lean routes):
/// bumped after every [`GateCell::store`] and every other change a cached copy depends on.
static CHANGES: AtomicU64 = AtomicU64::new(0);

/// The change counter's current value: read once per packet by the fan-out. A copy made at an
/// older value may be stale and is refreshed; one made at this value is current. The counter is
/// shared by every shard (and every `Sfu` of a process): a change anywhere only makes the others
/// refresh once, which is cheap, and a change is never missed.
#[inline]
pub fn changes() -> u64 {
    // Acquire: pairs with `note_change`, so a reader that sees the new count also sees the
    // store made before it (the gate byte, a new path).
    CHANGES.load(Ordering::Acquire)
}

/// Bumps the change counter (after the change itself is stored).
pub fn note_change() {
    CHANGES.fetch_add(1, Ordering::AcqRel);
}

/// A consumer's copy of its subscriber's `receive` flag, kept next to the consumer's own state
/// so the fan-out reads no shared cell per consumer per packet (a cache miss each).
///
/// Exactly as immediate as reading the cell: [`GateCell::store`] bumps [`changes`] after
/// storing, and [`GateCopy::receives`] re-reads the cell whenever the count it was made at is
/// not the one the packet was handled at, so a `set_gate` that returned before a packet's
/// [`changes`] read applies to that packet.
#[derive(Debug)]
pub struct GateCopy {
    cell: Arc<GateCell>,
    /// The change count the copy was read at (`u64::MAX`: never read).
    at: u64,
    receives: bool,
}

impl GateCopy {
    /// A copy of `cell`, read at its first use.
    pub fn new(cell: Arc<GateCell>) -> GateCopy {
        GateCopy {
            cell,
            at: u64::MAX,
            receives: false,
        }
    }

    /// Whether the participant may receive media, for a packet handled at change count `now`
    /// ([`changes`], read once per packet).
    #[inline]
    pub fn receives_at(&mut self, now: u64) -> bool {
        if self.at != now {
            self.receives = self.cell.receives();
            self.at = now;
        }
        self.receives
    }

    /// Whether the participant may receive media now (reads the shared cell).
    pub fn receives(&self) -> bool {
        self.cell.receives()
    }
}

/// Lowest first outgoing sequence number (leaves room for slightly reordered packets).
const FIRST_SEQ_BASE: u64 = 1024;

/// Rewrites one consumer's sequence numbers and timestamps.
///
/// The outgoing stream is continuous across everything that breaks the incoming one: a producer
/// restart (new SSRC), a simulcast layer switch, a gate or pause gap. Each such break starts a
/// new *epoch*; the first packet of an epoch continues the outgoing sequence at `last + 1` and
/// advances the timestamp by the wall-clock time elapsed since the last forwarded packet. Within
/// an epoch the offsets are constant, so losses stay visible (and NACKable) downstream. The
/// first outgoing sequence number is always below 65536 (a non-zero SRTP rollover counter on
/// the first packet breaks decryption at the receiver).
#[derive(Debug, Clone, Default)]
pub struct Forwarder {
    state: Option<FwdState>,
    epoch: u32,
    resync: bool,
}

#[derive(Debug, Clone)]
struct FwdState {
    seq_off: u64,
    ts_off: u32,
    epoch_first_in: u64,
    max_out_seq: u64,
    last_out_ts: u32,
    last_wall: Instant,
}

impl Forwarder {
    /// A forwarder that has forwarded nothing yet.
    pub fn new() -> Forwarder {
        Forwarder::default()
    }

    /// The highest extended sequence number forwarded so far (`None` before the first).
    pub fn last_seq(&self) -> Option<u64> {
        self.state.as_ref().map(|s| s.max_out_seq)
    }

    /// Forces the next packet to start a new epoch (e.g. after a pause or a layer switch).
    pub fn resync(&mut self) {
        self.resync = true;
    }

    /// Rewrites one packet: `in_seq` is the extended incoming sequence number, `in_ts` the RTP
    /// timestamp, `epoch` the producer's epoch (bumped on SSRC change or gate reopening).
    /// Returns the extended outgoing sequence number and timestamp, or `None` for a packet that
    /// belongs before the current epoch (it cannot be placed without a sequence collision).
    #[inline]
    pub fn rewrite(
        &mut self,
        epoch: u32,
        in_seq: u64,
        in_ts: u32,
        arrival: Instant,
        clock_rate: u32,
    ) -> Option<(u64, u32)> {
        let st = match &mut self.state {
            None => {
                self.epoch = epoch;
                self.resync = false;
                let start = FIRST_SEQ_BASE + (in_seq & 0x3fff);
                self.state.insert(FwdState {
                    seq_off: start.wrapping_sub(in_seq),
                    ts_off: 0,
                    epoch_first_in: in_seq,
                    max_out_seq: start,
                    last_out_ts: in_ts,
                    last_wall: arrival,
                })
            }
            Some(st) => {
                if self.resync || epoch != self.epoch {
                    self.resync = false;
                    self.epoch = epoch;
                    let next = st.max_out_seq + 1;
                    st.seq_off = next.wrapping_sub(in_seq);
                    let elapsed = arrival.saturating_duration_since(st.last_wall);
                    let ticks = (elapsed.as_micros() as u64).saturating_mul(u64::from(clock_rate))
                        / 1_000_000;
                    let ticks = ticks.clamp(1, u64::from(u32::MAX / 2)) as u32;
                    st.ts_off = st.last_out_ts.wrapping_add(ticks).wrapping_sub(in_ts);
                    st.epoch_first_in = in_seq;
                }
                st
            }
        };
        if in_seq < st.epoch_first_in {
            return None;
        }
        let out_seq = in_seq.wrapping_add(st.seq_off);
        let out_ts = in_ts.wrapping_add(st.ts_off);
        if out_seq >= st.max_out_seq {
            st.max_out_seq = out_seq;
            st.last_out_ts = out_ts;
            st.last_wall = arrival;
        }
        Some((out_seq, out_ts))
    }
}

/// Sentinel in a [`PtMap`]: not looked up yet.
const PT_UNKNOWN: u8 = 0xff;
/// Sentinel in a [`PtMap`]: the subscriber has no matching codec.
const PT_NONE: u8 = 0xfe;

/// Incoming payload type -> the subscriber's negotiated payload type, filled lazily.
#[derive(Debug, Clone)]
pub struct PtMap([u8; 128]);

impl Default for PtMap {
    fn default() -> Self {
        PtMap([PT_UNKNOWN; 128])
    }
}

/// Result of a [`PtMap`] lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PtLookup {
    /// Mapped to this outgoing payload type.
    Mapped(u8),
    /// Never looked up: call [`PtMap::set`] with the codec match result.
    Unknown,
    /// The subscriber cannot take this codec.
    Unmappable,
}

impl PtMap {
    /// Looks up an incoming payload type.
    #[inline]
    pub fn get(&self, pt: u8) -> PtLookup {
        match self.0.get(usize::from(pt)).copied() {
            None | Some(PT_NONE) => PtLookup::Unmappable,
            Some(PT_UNKNOWN) => PtLookup::Unknown,
            Some(v) => PtLookup::Mapped(v),
        }
    }

    /// Records the mapping of `pt` (`None`: no matching codec).
    pub fn set(&mut self, pt: u8, out: Option<u8>) {
        if let Some(slot) = self.0.get_mut(usize::from(pt)) {
            *slot = out.filter(|v| *v < 128).unwrap_or(PT_NONE);
        }
    }
}

/// What one consumer does with one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Not forwarded (receive off, paused, unmappable or too old).
    Drop,
    /// Forward with these extended sequence number and timestamp. `resumed`: the first packet
    /// after a gap this consumer caused (ask the publisher for a keyframe if video).
    Forward {
        /// Outgoing extended sequence number.
        seq: u64,
        /// Outgoing RTP timestamp.
        ts: u32,
        /// First packet after a receive/pause gap.
        resumed: bool,
    },
}

/// The forwarding state of one consumer that is independent of str0m.
#[derive(Debug, Clone, Default)]
pub struct ConsumerState {
    /// Sequence/timestamp rewrite.
    pub fwd: Forwarder,
    /// Payload type mapping.
    pub pts: PtMap,
    /// Unsubscribed by the subscriber (`set_subscribed(false)`).
    pub paused: bool,
    /// Packets were withheld since the last forwarded one.
    blocked: bool,
}

impl ConsumerState {
    /// A consumer that has forwarded nothing yet (`paused`: unsubscribed).
    pub fn new(paused: bool) -> ConsumerState {
        ConsumerState {
            paused,
            ..Default::default()
        }
    }

    /// Decides and rewrites one packet for this consumer; `receives` is the subscriber's gate
    /// (`GateCell::receives`).
    #[inline]
    pub fn step(
        &mut self,
        receives: bool,
        epoch: u32,
        in_seq: u64,
        in_ts: u32,
        arrival: Instant,
        clock_rate: u32,
    ) -> Step {
        if !receives || self.paused {
            self.blocked = true;
            return Step::Drop;
        }
        let resumed = std::mem::take(&mut self.blocked);
        if resumed {
            self.fwd.resync();
        }
        match self.fwd.rewrite(epoch, in_seq, in_ts, arrival, clock_rate) {
            Some((seq, ts)) => Step::Forward { seq, ts, resumed },
            None => Step::Drop,
        }
    }
}

/// Chooses the simulcast layer for one subscriber.
///
/// `rates` are the layers' measured incoming bit rates (index = layer). Layers that carry
/// nothing (rate 0: not sent by the publisher, for instance because its own uplink estimate
/// dropped them) are never chosen while another layer flows. Among the flowing layers, ordered
/// by rate (rid names carry no order), `quality` picks the lowest, middle or highest, then the
/// subscriber's bandwidth estimate `bwe_bps` steps down while the layer's rate exceeds 90% of
/// it; the lowest flowing layer is the floor. Returns `None` when there are no layers.
pub fn pick_layer(rates: &[f64], quality: Quality, bwe_bps: Option<f64>) -> Option<usize> {
    let mut order: Vec<usize> = (0..rates.len()).filter(|i| rates[*i] > 0.0).collect();
    if order.is_empty() {
        order = (0..rates.len()).collect();
    }
    order.sort_by(|a, b| rates[*a].total_cmp(&rates[*b]).then(a.cmp(b)));
    let last = order.len().checked_sub(1)?;
    let mut rank = match quality {
        Quality::Low => 0,
        Quality::Medium => order.len() / 2,
        Quality::High => last,
    };
    if let Some(b) = bwe_bps {
        while rank > 0 && rates[order[rank]] > b * 0.9 {
            rank -= 1;
        }
    }
    Some(order[rank])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_choice_follows_quality_rate_order_and_bandwidth() {
        // rid order in the SDP is arbitrary: layer 0 is the high one here.
        let rates = [1_500_000.0, 150_000.0, 500_000.0];
        assert_eq!(pick_layer(&rates, Quality::High, None), Some(0));
        assert_eq!(pick_layer(&rates, Quality::Medium, None), Some(2));
        assert_eq!(pick_layer(&rates, Quality::Low, None), Some(1));
        // The estimate steps down until the layer fits in 90% of it.
        assert_eq!(
            pick_layer(&rates, Quality::High, Some(1_700_000.0)),
            Some(0)
        );
        assert_eq!(
            pick_layer(&rates, Quality::High, Some(1_600_000.0)),
            Some(2)
        );
        assert_eq!(pick_layer(&rates, Quality::High, Some(300_000.0)), Some(1));
        // Never below the lowest layer, even when nothing fits.
        assert_eq!(pick_layer(&rates, Quality::High, Some(10_000.0)), Some(1));
        // A low wish is not raised by a big estimate.
        assert_eq!(pick_layer(&rates, Quality::Low, Some(1e9)), Some(1));
    }

    #[test]
    fn layers_that_carry_nothing_are_skipped() {
        // The publisher stopped sending its high layer (index 2).
        let rates = [150_000.0, 500_000.0, 0.0];
        assert_eq!(pick_layer(&rates, Quality::High, None), Some(1));
        assert_eq!(pick_layer(&rates, Quality::Low, None), Some(0));
        // Nothing measured yet: order by index, still a choice.
        assert_eq!(pick_layer(&[0.0, 0.0, 0.0], Quality::High, None), Some(2));
        assert_eq!(pick_layer(&[], Quality::High, None), None);
        assert_eq!(pick_layer(&[0.0], Quality::Low, Some(1.0)), Some(0));
    }
    use std::time::Duration;

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn first_seq_below_65536_even_for_huge_input() {
        let now = t0();
        for first in [0u64, 1, 65_535, 65_536, 1 << 20, (1 << 40) + 12_345] {
            let mut f = Forwarder::new();
            let (seq, _) = f.rewrite(0, first, 1000, now, 90_000).unwrap();
            assert!(seq < 65_536, "first seq {seq} for input {first}");
            assert!(seq >= FIRST_SEQ_BASE);
            let (seq2, _) = f.rewrite(0, first + 1, 1000, now, 90_000).unwrap();
            assert_eq!(seq2, seq + 1);
        }
    }

    #[test]
    fn constant_offset_keeps_loss_visible_and_timestamps() {
        let now = t0();
        let mut f = Forwarder::new();
        let (s0, t0v) = f.rewrite(0, 500, 90_000, now, 90_000).unwrap();
        // Packet 501 lost upstream: 502 keeps the gap, so the subscriber can NACK.
        let (s2, t2) = f.rewrite(0, 502, 93_000, now, 90_000).unwrap();
        assert_eq!(s2, s0 + 2);
        assert_eq!(t2.wrapping_sub(t0v), 3_000);
        // The repaired 501 arrives late and fills the hole.
        let (s1, _) = f.rewrite(0, 501, 90_000, now, 90_000).unwrap();
        assert_eq!(s1, s0 + 1);
    }

    #[test]
    fn producer_restart_is_continuous() {
        let start = t0();
        let mut f = Forwarder::new();
        let mut last = (0, 0);
        for i in 0..10u64 {
            last = f
                .rewrite(0, 40_000 + i, 1_000_000 + i as u32 * 3000, start, 90_000)
                .unwrap();
        }
        // Restart: new SSRC, sequence and timestamp start elsewhere, 100 ms later.
        let later = start + Duration::from_millis(100);
        let (seq, ts) = f.rewrite(1, 7, 5, later, 90_000).unwrap();
        assert_eq!(seq, last.0 + 1);
        assert_eq!(ts, last.1.wrapping_add(9_000));
        let (seq, ts2) = f.rewrite(1, 8, 3005, later, 90_000).unwrap();
        assert_eq!(seq, last.0 + 2);
        assert_eq!(ts2.wrapping_sub(ts), 3000);
        // A straggler of the old epoch (retransmission) cannot be placed: dropped.
        assert_eq!(f.rewrite(1, 3, 0, later, 90_000), None);
    }

    #[test]
    fn layer_switch_via_resync_is_continuous() {
        let start = t0();
        let mut f = Forwarder::new();
        let (s, t) = f.rewrite(0, 100, 10_000, start, 90_000).unwrap();
        f.resync();
        // Another layer: unrelated numbering, same capture clock.
        let (s2, t2) = f
            .rewrite(0, 9_000, 777_777, start + Duration::from_millis(33), 90_000)
            .unwrap();
        assert_eq!(s2, s + 1);
        assert_eq!(t2.wrapping_sub(t), 2_970);
    }

    #[test]
    fn wraps_past_65535_with_extended_numbers() {
        let now = t0();
        let mut f = Forwarder::new();
        let (s0, _) = f.rewrite(0, 65_000, u32::MAX - 10, now, 48_000).unwrap();
        let mut prev = s0;
        for i in 1..70_000u64 {
            let ts = (u32::MAX - 10).wrapping_add(960u32.wrapping_mul(i as u32));
            let (s, t) = f.rewrite(0, 65_000 + i, ts, now, 48_000).unwrap();
            assert_eq!(s, prev + 1);
            assert_eq!(t, ts, "first epoch keeps the publisher's timestamps");
            prev = s;
        }
        // The extended number passed 65535: the 16-bit value wrapped and the ROC went up.
        assert!(prev > 65_535);
        assert_eq!(prev, s0 + 69_999);
    }

    #[test]
    fn gate_bits() {
        let gate = MediaGate {
            send: SourceSet::EMPTY.with(TrackSource::Microphone),
            receive: true,
        };
        let cell = GateCell::new(gate);
        assert!(cell.sends(SourceSet::bit(TrackSource::Microphone)));
        assert!(!cell.sends(SourceSet::bit(TrackSource::Camera)));
        assert!(cell.receives());
        assert_eq!(cell.load(), gate);
        cell.store(MediaGate {
            send: SourceSet::ALL,
            receive: false,
        });
        assert!(cell.sends(SourceSet::bit(TrackSource::Camera)));
        assert!(!cell.receives());
    }

    #[test]
    fn gated_consumer_outputs_nothing_then_resumes_seamlessly() {
        let start = t0();
        let cell = GateCell::new(MediaGate {
            send: SourceSet::ALL,
            receive: true,
        });
        let mut c = ConsumerState::default();
        let mut last = 0;
        for i in 0..5u64 {
            match c.step(cell.receives(), 0, i, i as u32 * 960, start, 48_000) {
                Step::Forward { seq, resumed, .. } => {
                    assert!(!resumed);
                    last = seq;
                }
                Step::Drop => panic!("open gate dropped"),
            }
        }
        cell.store(MediaGate {
            send: SourceSet::ALL,
            receive: false,
        });
        for i in 5..50u64 {
            assert_eq!(
                c.step(cell.receives(), 0, i, i as u32 * 960, start, 48_000),
                Step::Drop
            );
        }
        cell.store(MediaGate {
            send: SourceSet::ALL,
            receive: true,
        });
        match c.step(cell.receives(), 0, 50, 50 * 960, start, 48_000) {
            Step::Forward { seq, resumed, .. } => {
                assert!(resumed);
                assert_eq!(seq, last + 1, "same consumer continues without a gap");
            }
            Step::Drop => panic!("reopened gate dropped"),
        }
    }

    /// A gate that may send everything and receive, and the same gate with receiving revoked.
    fn receive_gates() -> (MediaGate, MediaGate) {
        let open = MediaGate {
            send: SourceSet::ALL,
            receive: true,
        };
        (
            open,
            MediaGate {
                receive: false,
                ..open
            },
        )
    }

    #[test]
    fn a_gate_copy_follows_every_store() {
        let (open, closed) = receive_gates();
        let cell = Arc::new(GateCell::new(open));
        let mut copy = GateCopy::new(cell.clone());
        assert!(copy.receives_at(changes()));
        cell.store(closed);
        assert!(
            !copy.receives_at(changes()),
            "the next packet sees the revoke"
        );
        assert!(!copy.receives(), "the cell itself");
        cell.store(open);
        assert!(copy.receives_at(changes()));
    }

    /// A control thread revokes and grants the receive gate of several consumers' subscriber
    /// while the shard thread handles packets through their gate copies, for hundreds of
    /// rounds: a packet handled after a revoke's `store` returned is never forwarded, and one
    /// handled after a grant's always is.
    #[test]
    fn no_packet_passes_a_gate_copy_after_a_revoke() {
        use std::sync::atomic::AtomicU32;
        const ROUNDS: u32 = 400;
        /// Set in `phase` while the control thread is storing (the packet's outcome may be
        /// either).
        const CHANGING: u32 = 1 << 31;
        let (open, closed) = receive_gates();
        let cell = Arc::new(GateCell::new(open));
        // Another participant's cell, stored at the same time: its changes must not confuse
        // the copies of `cell`.
        let other = Arc::new(GateCell::new(open));
        // 2 * round + 1: round's revoke stored; 2 * round + 2: its grant stored.
        let phase = Arc::new(AtomicU32::new(0));
        // The last phase the shard thread checked a packet in.
        let seen = Arc::new(AtomicU32::new(0));
        let control = {
            let (cell, other, phase, seen) =
                (cell.clone(), other.clone(), phase.clone(), seen.clone());
            std::thread::spawn(move || {
                for round in 0..ROUNDS {
                    for (gate, p) in [(closed, 2 * round + 1), (open, 2 * round + 2)] {
                        phase.fetch_or(CHANGING, Ordering::SeqCst);
                        cell.store(gate);
                        other.store(if round % 2 == 0 { closed } else { open });
                        phase.store(p, Ordering::SeqCst);
                        // Let at least one packet be checked in this phase (generous: a
                        // loaded machine may not schedule the shard thread for a while).
                        let deadline = Instant::now() + std::time::Duration::from_secs(20);
                        while seen.load(Ordering::SeqCst) < p && Instant::now() < deadline {
                            std::thread::yield_now();
                        }
                    }
                }
            })
        };
        let start = t0();
        let mut consumers: Vec<(GateCopy, ConsumerState)> = (0..8)
            .map(|_| (GateCopy::new(cell.clone()), ConsumerState::default()))
            .collect();
        let mut bystander = GateCopy::new(other.clone());
        let (mut forwarded, mut dropped) = (0u64, 0u64);
        let mut i = 0u64;
        let deadline = Instant::now() + std::time::Duration::from_secs(25);
        while seen.load(Ordering::SeqCst) < 2 * ROUNDS && Instant::now() < deadline {
            i += 1;
            let before = phase.load(Ordering::SeqCst);
            let now = changes();
            let _ = bystander.receives_at(now);
            let steps: Vec<Step> = consumers
                .iter_mut()
                .map(|(copy, st)| {
                    let ts = (i as u32).wrapping_mul(960);
                    st.step(copy.receives_at(now), 0, i, ts, start, 48_000)
                })
                .collect();
            // Checked only when no store overlapped the packet.
            if before != phase.load(Ordering::SeqCst) || before & CHANGING != 0 || before == 0 {
                continue;
            }
            for step in steps {
                if before % 2 == 1 {
                    assert_eq!(
                        step,
                        Step::Drop,
                        "packet {i} forwarded after revoke {before}"
                    );
                    dropped += 1;
                } else {
                    assert!(
                        matches!(step, Step::Forward { .. }),
                        "packet {i} dropped after grant {before}"
                    );
                    forwarded += 1;
                }
            }
            seen.store(before, Ordering::SeqCst);
        }
        control.join().unwrap();
        assert_eq!(
            seen.load(Ordering::SeqCst),
            2 * ROUNDS,
            "every round was checked"
        );
        assert!(forwarded >= u64::from(ROUNDS) * 8 && dropped >= u64::from(ROUNDS) * 8);
    }

    #[test]
    fn paused_consumer_drops() {
        let now = t0();
        let mut c = ConsumerState::new(true);
        assert_eq!(c.step(true, 0, 1, 1, now, 90_000), Step::Drop);
        c.paused = false;
        assert!(matches!(
            c.step(true, 0, 2, 1, now, 90_000),
            Step::Forward { resumed: true, .. }
        ));
    }

    #[test]
    fn pt_map() {
        let mut m = PtMap::default();
        assert_eq!(m.get(96), PtLookup::Unknown);
        m.set(96, Some(100));
        m.set(97, None);
        assert_eq!(m.get(96), PtLookup::Mapped(100));
        assert_eq!(m.get(97), PtLookup::Unmappable);
        assert_eq!(m.get(200), PtLookup::Unmappable);
    }
}
