//! The shard thread's loop: fire due timers, housekeeping, wait for a datagram or a command.

use super::*;
use crate::metrics::{add, DRIVE_OUTPUT, DRIVE_TIMER};
use std::sync::mpsc::RecvTimeoutError;
use str0m::net::Protocol;
use tracing::info;

/// At most this many queued datagrams (and commands) are taken before the subscribers they
/// wrote to are driven (bounds the latency a batch adds to its first packet).
const BATCH: usize = 64;

impl Engine {
    pub(super) fn run(&mut self) {
        loop {
            let now = Instant::now();
            self.fire_timers(now);
            if now >= self.next_tick {
                self.housekeeping(now);
                self.next_tick = now + TICK;
            }
            self.settle(Instant::now());

            let next = self
                .timers
                .peek()
                .map(|Reverse((t, _))| *t)
                .unwrap_or(self.next_tick)
                .min(self.next_tick);
            // Sleep at least a millisecond: the timers that fall due meanwhile fire together
            // (str0m's deadlines tolerate that), instead of a wake-up per sub-ms deadline.
            let wait = next
                .saturating_duration_since(Instant::now())
                .max(MIN_SLEEP);
            // The batch of work is done: what it queued leaves in one sendmmsg before we wait.
            self.socket.flush();
            let first = match self.input.recv_timeout(wait) {
                Ok(msg) => msg,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    info!(shard = self.shard, "media engine shard stopping");
                    return;
                }
            };
            // A batch: this message and whatever else is queued (up to BATCH). Datagrams are
            // received first, then every subscriber they wrote to is driven once.
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
                    ShardMsg::Cmd(Cmd::Stop) => {
                        info!(shard = self.shard, "media engine shard stopping");
                        return;
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
                    next_msg = self.input.try_recv().ok();
                }
            }
            self.settle(now);
        }
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
            if min > 0 && self.dirty.len() >= min {
                self.drive_dirty_parallel(now);
                continue;
            }
            if let Some(k) = self.dirty.pop() {
                add(&self.counters.drives[DRIVE_OUTPUT], 1);
                self.drive(k, None, now);
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
                    add(&self.counters.drives[DRIVE_TIMER], 1);
                    self.drive(key, None, now);
                }
            }
        }
    }

    /// Fires the timers due at `now` and settles (the run loop's work without waiting);
    /// used by the fuzz harness, which owns the clock.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn advance(&mut self, now: Instant) {
        self.fire_timers(now);
        self.settle(now);
    }
}
