//! The shard thread's loop: fire due timers, housekeeping, wait for a datagram or a command.

use super::*;
use crate::metrics::{add, DRIVE_OUTPUT, DRIVE_TIMER};
use std::sync::mpsc::RecvTimeoutError;
use tracing::info;

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
            match self.input.recv_timeout(wait) {
                Ok(ShardMsg::Datagram { data, src }) => {
                    self.on_datagram(&data, src, Instant::now());
                }
                Ok(ShardMsg::Cmd(Cmd::Stop)) | Err(RecvTimeoutError::Disconnected) => {
                    info!(shard = self.shard, "media engine shard stopping");
                    return;
                }
                Ok(ShardMsg::Cmd(cmd)) => {
                    let now = Instant::now();
                    self.on_cmd(cmd, now);
                    self.settle(now);
                    self.publish_gauges();
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// Handles collected events and drives dirty peers until nothing is left.
    pub(super) fn settle(&mut self, now: Instant) {
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

    pub(super) fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((t, key))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
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
