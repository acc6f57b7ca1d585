//! Driving one peer's str0m `Rtc`: an input (a datagram or a timeout), then its output until
//! it asks for a timeout. Transmits go to the socket, events are queued for the shard.

use super::*;
use crate::metrics::{add, DRIVE_INPUT, DRIVE_OUTPUT, DRIVE_TIMER};
use crate::routes::Candidate as Route;
use rayon::prelude::*;
use str0m::net::{Protocol, Receive};
use str0m::{Input, Output, PacerReason, Reason};
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
    socket: &mut dyn Transport,
    events: &mut Vec<(Key, Event)>,
) -> Result<Instant, String> {
    peer.dirty = false;
    #[cfg(feature = "fault-injection")]
    let inject = std::mem::take(&mut peer.panic_next);
    let rtc = &mut peer.rtc;
    let lean = &mut peer.lean;
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
                    // The lean audio path follows str0m's nominated pair (see `lean`).
                    lean.on_transmit(t.proto, t.destination, &t.contents);
                    // UDP transmits are handed over whole: the queue keeps str0m's buffer
                    // instead of copying it.
                    let sent = match t.proto {
                        Protocol::Tcp => socket.send_tcp(&t.contents, t.destination),
                        _ => socket.send_owned(t.contents.into(), t.destination),
                    };
                    if let Err(e) = sent {
                        debug!("send to {} failed: {e}", t.destination);
                    }
                }
                Output::Event(e) => events.push((key, e)),
            }
        }
    }));
    // A nomination counts only when answered within its own drive.
    peer.lean.nominating = None;
    match res {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(format!("rtc error: {e}")),
        Err(_) => Err("media engine panic in peer".into()),
    }
}

/// The fine grid: str0m's pacer padding (a filler towards a target rate, which a coarse grid
/// would make bursty) and NACK checks (a coarse grid would delay loss recovery) are rounded up
/// to it, so that a shard's peers share wake-ups.
pub(super) const TIMER_GRAIN: Duration = Duration::from_millis(5);

/// The coarse grid for str0m's periodic bookkeeping timers (reports, stats, ICE, pause checks,
/// TWCC feedback, the pacer's budget refresh, the estimator's delay control): their periods
/// are 25 ms to seconds, and a peer that receives media (a publisher, about every
/// 10 ms) runs them in the drive of its next datagram anyway (every `handle_input` also
/// handles str0m's due timeouts), so on this grid most of them never need a drive of their
/// own; the rest of a shard's peers share one wake-up per grain.
pub(super) const LAX_GRAIN: Duration = Duration::from_millis(20);

/// The grid of the estimator's delay control on a subscriber none of whose media goes through
/// str0m (every consumer lean, or none yet): only packets str0m sends carry a transport-wide
/// sequence number, so such an estimator has no feedback to work on, and its 25 ms update
/// would be about 25 drives a second per subscriber for nothing (docs/BENCHMARKS.md,
/// *Per-subscriber fixed costs*). It returns to [`LAX_GRAIN`] as soon as a consumer goes
/// through str0m (a simulcast source).
pub(super) const IDLE_ESTIMATOR_GRAIN: Duration = Duration::from_millis(500);

/// When to drive a peer whose str0m asked for a timeout at `t` (with `reason`): pacer timeouts
/// that release media, probing, send-stream and DTLS timers and anything already due keep
/// their time; padding and NACK checks are rounded up to the next multiple of [`TIMER_GRAIN`]
/// since `epoch`, every other timer (reports, stats, ICE, TWCC feedback, the pacer's budget
/// refresh, the estimator's delay control) to the next multiple of [`LAX_GRAIN`], and the
/// estimator's delay control of a peer whose estimator has nothing to work on
/// (`estimator_idle`) to the next multiple of [`IDLE_ESTIMATOR_GRAIN`]. Never earlier than `t`.
pub(super) fn coalesce(
    t: Instant,
    now: Instant,
    epoch: Instant,
    reason: Reason,
    estimator_idle: bool,
) -> Instant {
    let precise = matches!(
        reason,
        Reason::Pacer(
            PacerReason::FirstEver
                | PacerReason::Unpaced
                | PacerReason::Probe1
                | PacerReason::Probe2
                | PacerReason::Paced
                | PacerReason::Immediate
        ) | Reason::BweProbeControl
            | Reason::BweProbeEstimator
            | Reason::SendStream
            | Reason::DTLS
    );
    if precise || t <= now || t < epoch {
        return t;
    }
    let grain = match reason {
        Reason::Pacer(PacerReason::Padding) | Reason::Nack => TIMER_GRAIN,
        Reason::BweDelayControl if estimator_idle => IDLE_ESTIMATOR_GRAIN,
        _ => LAX_GRAIN,
    }
    .as_nanos();
    let since = t.duration_since(epoch).as_nanos();
    let up = since.div_ceil(grain) * grain;
    // Rounding up by less than one grain cannot overflow a u64 of nanoseconds in practice;
    // if it somehow did, keep str0m's own time.
    u64::try_from(up)
        .ok()
        .and_then(|n| epoch.checked_add(Duration::from_nanos(n)))
        .unwrap_or(t)
}

/// The group of [`crate::metrics::TIMER_REASONS`] a str0m timeout reason counts under.
pub(super) fn timer_reason_idx(reason: Reason) -> usize {
    match reason {
        Reason::Pacer(PacerReason::Handle) => 1,
        Reason::Pacer(PacerReason::Padding) => 2,
        Reason::Pacer(_) => 0,
        Reason::BweDelayControl | Reason::BweProbeControl | Reason::BweProbeEstimator => 3,
        Reason::Twcc => 4,
        Reason::Nack => 5,
        Reason::Feedback => 6,
        Reason::Stats => 7,
        Reason::Ice => 8,
        _ => 9,
    }
}

impl Engine {
    /// One datagram, handled at once: [`Engine::receive`], then [`Engine::settle`].
    #[cfg(feature = "fuzzing")]
    pub(crate) fn on_datagram(&mut self, data: &[u8], src: SocketAddr, now: Instant) {
        self.receive(data, src, now);
        self.settle(now);
    }

    /// One datagram of a batch from the receive thread: STUN goes to the peer its ufrag names,
    /// anything else only to the peer that validated its source address; the rest is dropped
    /// and counted (`greenroom_udp_unrouted_total`). No scan over the shard's peers. The peer
    /// is driven with the datagram; its events (RTP to fan out) wait for [`Engine::settle`]
    /// at the end of the batch, which writes every packet and then drives each subscriber
    /// written to once.
    pub(crate) fn receive(&mut self, data: &[u8], src: SocketAddr, now: Instant) {
        self.receive_packet(Protocol::Udp, data, src, now);
    }

    /// One packet of a batch over UDP or ICE-TCP (addressed to the matching local candidate),
    /// routed as [`Engine::receive`] describes.
    pub(crate) fn receive_packet(
        &mut self,
        proto: Protocol,
        data: &[u8],
        src: SocketAddr,
        now: Instant,
    ) {
        let local = match (proto, self.opts.ice_tcp_port) {
            (Protocol::Tcp, Some(port)) => SocketAddr::new(self.local.ip(), port),
            _ => self.local,
        };
        let Some(route) = self.routes.candidate(data, src) else {
            add(&self.counters.unrouted, 1);
            debug!("no peer for datagram from {src}");
            return;
        };
        let Ok(recv) = Receive::new(proto, src, local, data) else {
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
            // A nomination (USE-CANDIDATE) moves the lean audio path if str0m answers it.
            if let Some(tid) = lean::nomination(data) {
                if let Some(p) = self.peers.get_mut(key) {
                    p.lean.nominating = Some((tid, src));
                }
            }
        }
        // A lean publisher's RTP: opened and forwarded by the engine (see `ingress`).
        if self.lean_ingress(key, proto, data, now) {
            return;
        }
        // Feedback about lean streams: str0m does not know their SSRCs (see `lean_rtcp`). A
        // subscriber all of whose m-lines are lean sends nothing str0m needs: no drive, but a
        // timer drive after its first authenticated packet (the DTLS release, `dtls`).
        if lean_rtcp::is_rtcp(data) {
            match self.lean_feedback(key, data, now) {
                lean_rtcp::Read::Str0mToo => {}
                lean_rtcp::Read::Only => {
                    add(&self.counters.lean_rtcp_only, 1);
                    return;
                }
                lean_rtcp::Read::OnlyFirstProof => {
                    add(&self.counters.lean_rtcp_only, 1);
                    add(&self.counters.drives[DRIVE_TIMER], 1);
                    self.drive(key, None, now);
                    return;
                }
            }
        }
        add(&self.counters.drives[DRIVE_INPUT], 1);
        self.drive(key, Some(input), now);
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
        let res = drive_peer(peer, key, input, now, &mut **socket, pending_events);
        self.after_drive(key, res, now);
    }

    /// Drives every dirty peer at once on the worker pool (a large fan-out), then files their
    /// events, timeouts and failures in this thread. The peers are split into one share per
    /// worker; each share is driven with its own transport ([`Transport::fork`]), whose queue
    /// the worker flushes when its share is done: no lock per datagram.
    pub(super) fn drive_dirty_parallel(&mut self, now: Instant) {
        add(&self.counters.drives[DRIVE_OUTPUT], self.dirty.len() as u64);
        add(&self.counters.parallel_fanouts, 1);
        self.dirty.clear();
        // What the shard already queued leaves first: the workers send their own queues as
        // soon as they finish, so a packet queued earlier on the shard's socket (a timer or
        // input drive in this pass) would otherwise reach its subscriber after later ones.
        self.socket.flush();
        let Engine {
            peers,
            socket,
            workers,
            ..
        } = self;
        let mut batch: Vec<(Key, &mut Peer)> = peers.iter_mut().filter(|(_, p)| p.dirty).collect();
        let threads = rayon::current_num_threads().clamp(1, batch.len().max(1));
        while workers.len() < threads {
            workers.push(socket.fork());
        }
        let share = batch.len().div_ceil(threads).max(1);
        let done: Vec<Vec<Driven>> = batch
            .par_chunks_mut(share)
            .zip(workers.par_iter_mut())
            .map(|(peers, tx)| {
                let tx: &mut dyn Transport = &mut **tx;
                let out = peers
                    .iter_mut()
                    .map(|(key, peer)| {
                        let mut events = Vec::new();
                        let res = drive_peer(peer, *key, None, now, tx, &mut events);
                        (*key, res, events)
                    })
                    .collect();
                tx.flush();
                out
            })
            .collect();
        for (key, res, events) in done.into_iter().flatten() {
            self.pending_events.extend(events);
            self.after_drive(key, res, now);
        }
    }

    /// Files a drive's outcome: the peer's next timeout, or its failure.
    pub(super) fn after_drive(&mut self, key: Key, res: Result<Instant, String>, now: Instant) {
        let fail = match res {
            Ok(t) => {
                let Some(peer) = self.peers.get_mut(key) else {
                    return;
                };
                let reason = peer.rtc.last_timeout_reason();
                // Whether the estimator has feedback to work on: only media str0m sends
                // carries transport-wide sequence numbers.
                let estimator_idle = matches!(reason, Reason::BweDelayControl)
                    && peer.role == Role::Subscriber
                    && peer.lean.covers(peer.sub_mids.keys());
                let t = coalesce(t, now, self.timer_epoch, reason, estimator_idle);
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

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::PacerReason;

    #[test]
    fn lax_timers_round_up_to_their_grain_and_precise_ones_keep_their_time() {
        let epoch = Instant::now();
        let now = epoch + Duration::from_millis(100);
        let ms = |n: u64| epoch + Duration::from_millis(n) + Duration::from_micros(300);
        let at = |n: u64| epoch + Duration::from_millis(n);
        // A report timer at 101.3 ms fires at 120 ms (the lax grid); one on the grid stays.
        assert_eq!(
            coalesce(ms(101), now, epoch, Reason::Feedback, false),
            at(120)
        );
        assert_eq!(coalesce(at(140), now, epoch, Reason::Stats, false), at(140));
        // Many peers' timers within one lax grain share one wake-up.
        let a = coalesce(ms(101), now, epoch, Reason::Twcc, false);
        let b = coalesce(ms(119), now, epoch, Reason::Ice, false);
        assert_eq!(a, b);
        // Padding and NACK checks keep the fine grid.
        for r in [Reason::Pacer(PacerReason::Padding), Reason::Nack] {
            assert_eq!(coalesce(ms(101), now, epoch, r, false), at(105));
        }
        // Pacing that releases media and anything already due are not moved.
        for r in [
            Reason::Pacer(PacerReason::Paced),
            Reason::Pacer(PacerReason::Immediate),
            Reason::BweProbeControl,
            Reason::SendStream,
            Reason::DTLS,
        ] {
            assert_eq!(coalesce(ms(101), now, epoch, r, false), ms(101));
        }
        // The pacer's periodic refresh, the estimator's update, TWCC and pause checks join the
        // lax grid.
        for r in [
            Reason::Pacer(PacerReason::Handle),
            Reason::BweDelayControl,
            Reason::Twcc,
            Reason::PauseCheck,
        ] {
            assert_eq!(coalesce(ms(101), now, epoch, r, false), at(120));
        }
        assert_eq!(
            coalesce(ms(50), now, epoch, Reason::Feedback, false),
            ms(50)
        );
        // An estimator with nothing to work on joins the idle grid; only its delay control.
        assert_eq!(
            coalesce(ms(101), now, epoch, Reason::BweDelayControl, true),
            at(500)
        );
        assert_eq!(coalesce(ms(101), now, epoch, Reason::Twcc, true), at(120));
        assert_eq!(
            coalesce(ms(101), now, epoch, Reason::BweProbeControl, true),
            ms(101)
        );
        // Never earlier than asked, never later than one grain.
        for n in 100..160 {
            let t = coalesce(ms(n), now, epoch, Reason::Twcc, false);
            assert!(t >= ms(n) && t < ms(n) + LAX_GRAIN);
            let p = coalesce(
                ms(n),
                now,
                epoch,
                Reason::Pacer(PacerReason::Padding),
                false,
            );
            assert!(p >= ms(n) && p < ms(n) + TIMER_GRAIN);
        }
    }

    #[test]
    fn timer_reasons_map_onto_their_metric_groups() {
        use crate::metrics::TIMER_REASONS;
        let name = |r| TIMER_REASONS[timer_reason_idx(r)];
        assert_eq!(name(Reason::Pacer(PacerReason::Immediate)), "pacer_media");
        assert_eq!(name(Reason::Pacer(PacerReason::Paced)), "pacer_media");
        assert_eq!(name(Reason::Pacer(PacerReason::Handle)), "pacer_handle");
        assert_eq!(name(Reason::Pacer(PacerReason::Padding)), "pacer_padding");
        assert_eq!(name(Reason::BweDelayControl), "bwe");
        assert_eq!(name(Reason::Twcc), "twcc");
        assert_eq!(name(Reason::Nack), "nack");
        assert_eq!(name(Reason::Feedback), "feedback");
        assert_eq!(name(Reason::Stats), "stats");
        assert_eq!(name(Reason::Ice), "ice");
        assert_eq!(name(Reason::DTLS), "other");
        assert_eq!(name(Reason::PauseCheck), "other");
    }
}
