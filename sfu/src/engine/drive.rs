//! Driving one peer's str0m `Rtc`: an input (a datagram or a timeout), then its output until
//! it asks for a timeout. Transmits go to the socket, events are queued for the shard.

use super::*;
use crate::metrics::{add, DRIVE_INPUT, DRIVE_OUTPUT};
use crate::routes::Candidate as Route;
use rayon::prelude::*;
use str0m::net::{Protocol, Receive};
use str0m::{Input, Output};
use tracing::debug;

/// A peer driven on the worker pool: its key, next timeout or failure, and its events.
type Driven = (Key, Result<Instant, String>, Vec<(Key, Event)>);

/// Runs one peer's str0m cycle: the input (or a timeout), then its output until it asks for a
/// timeout; transmits go straight to the socket, events into `events`. A panic inside str0m is
/// caught here and reported as this peer's failure. Free of the engine, so the worker pool can
/// run many peers at once.
fn drive_peer(
    peer: &mut Peer,
    key: Key,
    input: Option<Input<'_>>,
    now: Instant,
    socket: &dyn Transport,
    events: &mut Vec<(Key, Event)>,
) -> Result<Instant, String> {
    peer.dirty = false;
    #[cfg(feature = "fault-injection")]
    let inject = std::mem::take(&mut peer.panic_next);
    let rtc = &mut peer.rtc;
    let res = catch_unwind(AssertUnwindSafe(|| -> Result<Instant, str0m::RtcError> {
        #[cfg(feature = "fault-injection")]
        if inject {
            panic!("injected fault");
        }
        rtc.handle_input(input.unwrap_or(Input::Timeout(now)))?;
        loop {
            match rtc.poll_output()? {
                Output::Timeout(t) => return Ok(t),
                Output::Transmit(t) => {
                    if let Err(e) = socket.send_to(&t.contents, t.destination) {
                        debug!("send to {} failed: {e}", t.destination);
                    }
                }
                Output::Event(e) => events.push((key, e)),
            }
        }
    }));
    match res {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(format!("rtc error: {e}")),
        Err(_) => Err("media engine panic in peer".into()),
    }
}

impl Engine {
    /// One datagram from the receive thread: STUN goes to the peer its ufrag names, anything
    /// else only to the peer that validated its source address; the rest is dropped and
    /// counted (`greenroom_udp_unrouted_total`). No scan over the shard's peers.
    pub(crate) fn on_datagram(&mut self, data: &[u8], src: SocketAddr, now: Instant) {
        let Some(route) = self.routes.candidate(data, src) else {
            add(&self.counters.unrouted, 1);
            debug!("no peer for datagram from {src}");
            return;
        };
        let Ok(recv) = Receive::new(Protocol::Udp, src, self.local, data) else {
            add(&self.counters.unrouted, 1);
            return; // Not STUN, DTLS, RTP or RTCP.
        };
        let input = Input::Receive(now, recv);
        let (Route::Stun(key) | Route::Validated(key)) = route;
        // For STUN, str0m checks USERNAME and MESSAGE-INTEGRITY here; for the rest, that the
        // source is one of the peer's candidate pairs.
        let accepted = self.peers.get(key).is_some_and(|p| {
            catch_unwind(AssertUnwindSafe(|| p.rtc.accepts(&input))).unwrap_or(false)
        });
        if !accepted {
            add(&self.counters.unrouted, 1);
            debug!("peer refuses datagram from {src}");
            return;
        }
        if matches!(route, Route::Stun(_)) {
            self.routes.validated(src, key);
        }
        add(&self.counters.drives[DRIVE_INPUT], 1);
        self.drive(key, Some(input), now);
        self.settle(now);
    }

    /// Runs one peer: input (or a timeout), then drains its output until it asks for a timeout.
    pub(super) fn drive(&mut self, key: Key, input: Option<Input<'_>>, now: Instant) {
        let Engine {
            peers,
            socket,
            pending_events,
            ..
        } = self;
        let Some(peer) = peers.get_mut(key) else {
            return;
        };
        let res = drive_peer(peer, key, input, now, &**socket, pending_events);
        self.after_drive(key, res);
    }

    /// Drives every dirty peer at once on the worker pool (a large fan-out), then files their
    /// events, timeouts and failures in this thread.
    pub(super) fn drive_dirty_parallel(&mut self, now: Instant) {
        add(&self.counters.drives[DRIVE_OUTPUT], self.dirty.len() as u64);
        add(&self.counters.parallel_fanouts, 1);
        self.dirty.clear();
        let Engine { peers, socket, .. } = self;
        let socket: &dyn Transport = &**socket;
        let batch: Vec<(Key, &mut Peer)> = peers.iter_mut().filter(|(_, p)| p.dirty).collect();
        let done: Vec<Driven> = batch
            .into_par_iter()
            .map(|(key, peer)| {
                let mut events = Vec::new();
                let res = drive_peer(peer, key, None, now, socket, &mut events);
                (key, res, events)
            })
            .collect();
        for (key, res, events) in done {
            self.pending_events.extend(events);
            self.after_drive(key, res);
        }
    }

    /// Files a drive's outcome: the peer's next timeout, or its failure.
    pub(super) fn after_drive(&mut self, key: Key, res: Result<Instant, String>) {
        let fail = match res {
            Ok(t) => {
                let Some(peer) = self.peers.get_mut(key) else {
                    return;
                };
                if Some(t) != peer.timeout {
                    peer.timeout = Some(t);
                    self.timers.push(Reverse((t, key)));
                }
                (!peer.rtc.is_alive()).then(|| "connection closed".to_owned())
            }
            Err(reason) => Some(reason),
        };
        if let Some(reason) = fail {
            self.fail_peer(key, &reason);
        }
    }

    pub(super) fn mark_dirty(&mut self, key: Key) {
        if let Some(p) = self.peers.get_mut(key) {
            if !p.dirty {
                p.dirty = true;
                self.dirty.push(key);
            }
        }
    }
}
