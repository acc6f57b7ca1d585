//! The shard thread's loop: fire due timers, housekeeping, wait for a datagram or a command
//! (on its queue, or with one shard on the socket itself: [`crate::io::inbox`]; a lone shard
//! also reads once more before its sends leave, so that what arrived while it worked joins
//! them); and how busy the thread is ([`Busy`], which decides whether a large fan-out goes to the
//! worker pool).

use super::*;
use crate::io::inbox::Woken;
use crate::metrics::{add, DRIVE_OUTPUT, DRIVE_TIMER, WAKE_QUEUE, WAKE_SOCKET, WAKE_TIMER};
use std::ops::ControlFlow;
use str0m::net::Protocol;
use str0m::Reason;
use tracing::info;

/// At most this many queued datagrams (and commands) are taken before the subscribers they
/// wrote to are driven (bounds the latency a batch adds to its first packet).
const BATCH: usize = 64;

/// Most batches a lone shard absorbs (reads without sleeping, see [`crate::io::inbox`]) before
/// what it queued to send leaves: datagrams that arrive while it works join the running
/// `sendmmsg`, and the first packet queued waits for at most this many more batches of work.
const ABSORB_ROUNDS: usize = 4;

/// Most extra drive cycles one peer's pacer gets in a row (see [`Engine::pace_out`]): a
/// frame's packets to one subscriber.
const PACE_BURST: usize = 16;
/// A pacer timeout at most this far ahead counts as "immediate" ([`Engine::pace_out`]); str0m
/// asks for one microsecond after each packet, while a pacer holding media back asks for
/// milliseconds.
const PACE_SLACK: Duration = Duration::from_micros(50);

/// How busy the shard's thread is: the share of wall time it spent working (not waiting for
/// its queue) over the last housekeeping tick. The parallel fan-out engages only while this
/// share is at least [`crate::SfuOptions::parallel_busy`]: with headroom on its own thread, a shard drives a
/// fan-out serially, which costs the least CPU (no hand-off to the pool, no wake-ups of its
/// workers, which spin before they sleep); once the thread is loaded, large fan-outs spread
/// over every core so the queue does not grow.
#[derive(Debug)]
pub(super) struct Busy {
    window_start: Instant,
    awake_since: Option<Instant>,
    busy: Duration,
    loaded: bool,
    threshold: f64,
}

impl Busy {
    /// A thread awake since `now` that counts as loaded when busy at least `threshold` (a
    /// share of wall time; 0: always loaded).
    pub(super) fn new(now: Instant, threshold: f64) -> Busy {
        Busy {
            window_start: now,
            awake_since: Some(now),
            busy: Duration::ZERO,
            loaded: threshold <= 0.0,
            threshold,
        }
    }

    /// The thread starts working (it woke up).
    pub(super) fn wake(&mut self, now: Instant) {
        if self.awake_since.is_none() {
            self.awake_since = Some(now);
        }
    }

    /// The thread goes to wait for its queue.
    pub(super) fn sleep(&mut self, now: Instant) {
        if let Some(t) = self.awake_since.take() {
            self.busy += now.saturating_duration_since(t);
        }
    }

    /// Closes the window at `now` (once per tick): whether the thread counts as loaded for the
    /// next one.
    pub(super) fn tick(&mut self, now: Instant) {
        if let Some(t) = self.awake_since {
            self.busy += now.saturating_duration_since(t);
            self.awake_since = Some(now);
        }
        let window = now.saturating_duration_since(self.window_start);
        self.loaded = self.threshold <= 0.0
            || (!window.is_zero()
                && self.busy.as_secs_f64() >= self.threshold * window.as_secs_f64());
        self.window_start = now;
        self.busy = Duration::ZERO;
    }

    /// The thread was busy at least `threshold` of the last tick.
    pub(super) fn loaded(&self) -> bool {
        self.loaded
    }
}

/// Whether a peer's timeout at `t` for `reason` is its pacer asking to be driven again at
/// once (see [`Engine::pace_out`]), at `now`.
fn pacer_due(reason: Reason, t: Instant, now: Instant) -> bool {
    matches!(reason, Reason::Pacer(_)) && t <= now + PACE_SLACK
}

/// Pops the entries on top of a timer heap that `live` says are stale, up to the first live
/// one.
fn prune_stale<K: Ord + Copy>(
    heap: &mut BinaryHeap<Reverse<(Instant, K)>>,
    live: impl Fn(Instant, K) -> bool,
) {
    while let Some(Reverse((t, key))) = heap.peek().copied() {
        if live(t, key) {
            return;
        }
        heap.pop();
    }
}

impl Engine {
    pub(super) fn run(&mut self) {
        // Batches a lone shard absorbed since it last flushed (see below).
        let mut absorbed = 0;
        loop {
            let now = Instant::now();
            self.fire_timers(now);
            self.fire_ingress_timers(now);
            if now >= self.next_tick {
                self.housekeeping(now);
                self.next_tick = now + TICK;
                self.busy.tick(now);
            }
            self.settle(Instant::now());

            // A lone shard reads what arrived while it worked before its sends leave: those
            // datagrams join this pass's sendmmsg instead of waking the shard for a pass of
            // their own (with several shards the receive thread queues them, and `try_next`
            // takes them into the running batch). Bounded, so that what is queued to send
            // waits at most ABSORB_ROUNDS batches of work.
            if absorbed < ABSORB_ROUNDS {
                if let Some(msg) = self.input.absorb() {
                    absorbed += 1;
                    add(&self.counters.absorbed, 1);
                    if self.handle(msg).is_break() {
                        return;
                    }
                    // Timers that fell due meanwhile, then another look.
                    continue;
                }
            }
            absorbed = 0;

            // A stale entry on top (its peer re-armed or gone) would wake the thread for
            // nothing: about a fifth of the wake-ups of a 4 x 4 meeting did.
            self.prune_timers();
            let next = self
                .timers
                .peek()
                .map(|Reverse((t, _))| *t)
                .unwrap_or(self.next_tick)
                .min(self.next_tick)
                .min(self.ingress_next().unwrap_or(self.next_tick));
            // Sleep at least a millisecond: the timers that fall due meanwhile fire together
            // (str0m's deadlines tolerate that), instead of a wake-up per sub-ms deadline.
            let wait = next
                .saturating_duration_since(Instant::now())
                .max(MIN_SLEEP);
            // The batch of work is done: what it queued leaves in one sendmmsg before we wait.
            self.socket.flush();
            self.relay_flush();
            self.busy.sleep(Instant::now());
            // Its queue, and with one shard the socket too (`io::inbox`).
            let woken = self.input.wait(wait);
            self.busy.wake(Instant::now());
            let (cause, first) = match woken {
                Woken::Queue(msg) => (WAKE_QUEUE, msg),
                Woken::Socket(batch) => (WAKE_SOCKET, ShardMsg::Datagrams(batch)),
                Woken::Timeout => {
                    add(&self.counters.wakeups[WAKE_TIMER], 1);
                    continue;
                }
                Woken::Closed => {
                    info!(shard = self.shard, "media engine shard stopping");
                    return;
                }
            };
            add(&self.counters.wakeups[cause], 1);
            if self.handle(first).is_break() {
                return;
            }
        }
    }

    /// One batch of work: `first` and whatever else is queued (up to [`BATCH`]). Datagrams are
    /// received first, then every subscriber they wrote to is driven once. `Break` when the
    /// shard is told to stop.
    fn handle(&mut self, first: ShardMsg) -> ControlFlow<()> {
        let now = Instant::now();
        let mut next_msg = Some(first);
        let mut taken = 0;
        while let Some(msg) = next_msg.take() {
            taken += 1;
            match msg {
                ShardMsg::Datagrams(batch) => {
                    for (data, src) in batch.iter() {
                        self.receive(data, src, now);
                    }
                    taken += batch.len().saturating_sub(1);
                    // Dropping the batch hands its buffer back to the receive thread.
                }
                ShardMsg::TcpPacket { data, src } => {
                    self.receive_packet(Protocol::Tcp, &data, src, now)
                }
                ShardMsg::Relay(msgs) => {
                    taken += msgs.len().saturating_sub(1);
                    for msg in msgs {
                        self.on_relay(msg, now);
                    }
                }
                ShardMsg::Cmd(Cmd::Stop) => {
                    info!(shard = self.shard, "media engine shard stopping");
                    return ControlFlow::Break(());
                }
                ShardMsg::Cmd(cmd) => {
                    // Commands see the datagrams before them fully handled.
                    self.settle(now);
                    self.on_cmd(cmd, now);
                    self.settle(now);
                    self.publish_gauges();
                }
            }
            if taken < BATCH {
                next_msg = self.input.try_next();
            }
        }
        self.settle(now);
        ControlFlow::Continue(())
    }

    /// Handles collected events and drives dirty peers until nothing is left.
    pub(crate) fn settle(&mut self, now: Instant) {
        loop {
            if !self.pending_events.is_empty() {
                let mut evs = std::mem::take(&mut self.pending_events);
                for (k, e) in evs.drain(..) {
                    self.on_event(k, e, now);
                }
                if self.pending_events.is_empty() {
                    self.pending_events = evs;
                }
                continue;
            }
            let min = self.opts.parallel_fanout_min;
            if min > 0 && self.dirty.len() >= min && self.busy.loaded() {
                self.drive_dirty_parallel(now);
                continue;
            }
            if let Some(k) = self.dirty.pop() {
                add(&self.counters.drives[DRIVE_OUTPUT], 1);
                self.drive(k, None, now);
                self.pace_out(k, now);
                continue;
            }
            break;
        }
    }

    /// Drives each peer whose timer is due at `now`, once: a timeout str0m asks for at or
    /// before `now` again waits for the next call (the loop sleeps at least [`MIN_SLEEP`]), so a
    /// peer that keeps asking for "now" cannot spin the shard.
    pub(super) fn fire_timers(&mut self, now: Instant) {
        let mut due = Vec::new();
        while let Some(Reverse((t, key))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            due.push((t, key));
        }
        for (t, key) in due {
            if let Some(p) = self.peers.get_mut(key) {
                if p.timeout == Some(t) {
                    // Re-armed by `drive` whatever timeout str0m asks for next.
                    p.timeout = None;
                    let why = drive::timer_reason_idx(p.rtc.last_timeout_reason());
                    add(&self.counters.drives[DRIVE_TIMER], 1);
                    add(&self.counters.timer_reasons[why], 1);
                    self.drive(key, None, now);
                    self.pace_out(key, now);
                }
            }
        }
    }

    /// Drops stale entries (a peer gone, or re-armed to another time) from the top of the timer
    /// heap, so that the loop does not wake up for a timer that fires nothing.
    fn prune_timers(&mut self) {
        let peers = &self.peers;
        prune_stale(&mut self.timers, |t, key| {
            peers.get(key).is_some_and(|p| p.timeout == Some(t))
        });
    }

    /// Drives a peer again while its str0m pacer asks for an immediate timeout: with bandwidth
    /// estimation on, str0m's pacer releases one packet per drive cycle and then asks to be
    /// driven again a microsecond later, so without this each further packet of a frame waited
    /// for the loop's next pass (at least [`MIN_SLEEP`]: a wake-up of the thread per packet).
    /// At most [`PACE_BURST`] cycles; a pacer that asks for a later time (it holds media back
    /// to respect its rate) waits for its timer as before.
    fn pace_out(&mut self, key: Key, now: Instant) {
        for _ in 0..PACE_BURST {
            let Some(p) = self.peers.get_mut(key) else {
                return;
            };
            let Some(t) = p.timeout else {
                return;
            };
            if !pacer_due(p.rtc.last_timeout_reason(), t, now) {
                return;
            }
            // The heap's entry for `t` goes stale (`fire_timers` checks `p.timeout`). The
            // clock moves by str0m's microsecond per packet: the batch's time, as for every
            // drive of the batch (the fuzz harness owns its clock).
            p.timeout = None;
            let why = drive::timer_reason_idx(p.rtc.last_timeout_reason());
            add(&self.counters.drives[DRIVE_TIMER], 1);
            add(&self.counters.timer_reasons[why], 1);
            self.drive(key, None, t.max(now));
        }
    }

    /// Fires the timers due at `now` and settles (the run loop's work without waiting);
    /// used by the fuzz harness, which owns the clock.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn advance(&mut self, now: Instant) {
        self.fire_timers(now);
        self.fire_ingress_timers(now);
        self.settle(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::PacerReason;

    #[test]
    fn only_an_immediate_pacer_timeout_is_driven_again_at_once() {
        let now = Instant::now();
        let us = |n: u64| now + Duration::from_micros(n);
        // str0m asks for "a microsecond after the last handle" after each paced packet.
        assert!(pacer_due(Reason::Pacer(PacerReason::Immediate), us(1), now));
        assert!(pacer_due(Reason::Pacer(PacerReason::Paced), now, now));
        // A pacer holding media back (its debt) waits for its timer.
        assert!(!pacer_due(
            Reason::Pacer(PacerReason::Paced),
            us(5_000),
            now
        ));
        // Other timers are never pulled forward, even when due.
        for r in [
            Reason::Nack,
            Reason::Twcc,
            Reason::BweDelayControl,
            Reason::Feedback,
        ] {
            assert!(!pacer_due(r, now, now));
        }
    }

    #[test]
    fn stale_timer_entries_are_dropped_up_to_the_first_live_one() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut heap = BinaryHeap::new();
        for (t, k) in [(1, 1u32), (2, 2), (3, 3), (4, 4)] {
            heap.push(Reverse((ms(t), k)));
        }
        // Keys 1 and 2 were re-armed (stale); 3 is live; 4 is stale but behind a live one.
        prune_stale(&mut heap, |_, k| k == 3);
        assert_eq!(heap.peek().copied(), Some(Reverse((ms(3), 3))));
        assert_eq!(heap.len(), 2);
        prune_stale(&mut heap, |_, _| false);
        assert!(heap.is_empty());
    }

    #[test]
    fn the_thread_counts_as_loaded_only_when_busy_for_the_threshold_share() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut b = Busy::new(t0, 0.5);
        assert!(!b.loaded(), "not loaded before the first window");
        // 100 ms awake, 150 ms asleep: 40 % busy.
        b.sleep(ms(100));
        b.wake(ms(250));
        b.tick(ms(250));
        assert!(!b.loaded());
        // Then 200 ms awake (twice woken), 50 ms asleep: 80 %.
        b.sleep(ms(350));
        b.wake(ms(400));
        b.wake(ms(420)); // already awake: no effect
        b.tick(ms(500));
        assert!(b.loaded());
        // Asleep across a tick: the open sleep does not count as work.
        b.sleep(ms(510));
        b.tick(ms(750));
        assert!(!b.loaded(), "10 ms of 250");
        b.wake(ms(800));
        b.tick(ms(1000));
        assert!(
            b.loaded(),
            "200 ms of 250, the wake-up counted up to the tick"
        );
        // A threshold of 0 means always.
        let mut always = Busy::new(t0, 0.0);
        assert!(always.loaded());
        always.sleep(ms(1));
        always.tick(ms(250));
        assert!(always.loaded());
    }
}
