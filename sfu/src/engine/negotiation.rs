//! A subscriber peer's offer/answer bookkeeping as a pure state machine (no str0m, no socket):
//! which m-lines are being negotiated, open or stopping, whether an offer is out, and whether a
//! change arrived while it was out. [`super::subscribe`] applies it to the subscriber's `Rtc`.
//!
//! The rules:
//! * At most one offer is out at a time. A change while one is out is remembered
//!   ([`Negotiation::begin`] returns false) and offered once the answer (or its failure) is in.
//! * A track added for a new producer is `Negotiating` until the answer; then `Open`.
//! * A track whose producer left is `Stopping` from the offer that stops it, and gone once
//!   that offer is answered; except the BUNDLE tag (the first track not stopping), which is
//!   `Parked` inactive for good ([`crate::offer_plan`]).
//! * An answer must carry the pending offer's mids, in order; another one (e.g. a late answer
//!   to a replaced peer's offer) is refused without spending the pending offer.
//! * A refused answer rolls back the tracks that offer added; the next offer adds them again.

use str0m::media::Mid;

use crate::offer_plan::{stale_section, Stale};

/// Where one m-line of the subscriber peer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TrackState {
    /// Added in the offer that is out.
    Negotiating,
    /// Answered: the send stream exists.
    Open,
    /// Stopped in the offer that is out (its producer left).
    Stopping,
    /// The BUNDLE tag section whose producer is gone: inactive, never stopped (`offer_plan`).
    Parked,
}

/// One m-line of the subscriber peer and the producer it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SubTrack<K> {
    /// The m-line.
    pub(super) mid: Mid,
    /// What it carries.
    pub(super) producer: K,
    /// Where it stands.
    pub(super) state: TrackState,
}

/// The negotiation state of one subscriber peer; `K` names a producer, `P` is the pending offer
/// (str0m's `SdpPendingOffer` in the engine).
#[derive(Debug)]
pub(super) struct Negotiation<K, P> {
    tracks: Vec<SubTrack<K>>,
    pending: Option<P>,
    /// A change arrived while an offer was unanswered.
    again: bool,
    /// The next offer restarts ICE.
    restart_ice: bool,
    /// The mids of the pending offer, in order: an answer with other mids is not its answer.
    offered_mids: Vec<String>,
}

impl<K, P> Default for Negotiation<K, P> {
    fn default() -> Self {
        Negotiation {
            tracks: Vec::new(),
            pending: None,
            again: false,
            restart_ice: false,
            offered_mids: Vec::new(),
        }
    }
}

impl<K: Copy + PartialEq, P> Negotiation<K, P> {
    /// Whether an offer may be made now. With one out, remembers to offer again after its
    /// answer and returns false.
    pub(super) fn begin(&mut self) -> bool {
        if self.pending.is_some() {
            self.again = true;
            false
        } else {
            true
        }
    }

    /// The next offer restarts ICE (new local credentials).
    pub(super) fn request_ice_restart(&mut self) {
        self.restart_ice = true;
    }

    /// Whether the offer being made restarts ICE (asked once, then cleared).
    pub(super) fn take_ice_restart(&mut self) -> bool {
        std::mem::take(&mut self.restart_ice)
    }

    /// Retires the open or negotiating tracks whose producer is gone (`alive` false): each is
    /// stopped, except the BUNDLE tag (the first track not stopping), which is parked. Returns
    /// their mids with the action, to apply in the next offer.
    pub(super) fn retire_gone(&mut self, alive: impl Fn(K) -> bool) -> Vec<(Mid, Stale)> {
        let tag = self
            .tracks
            .iter()
            .position(|t| t.state != TrackState::Stopping);
        let mut retired = Vec::new();
        for (i, t) in self.tracks.iter_mut().enumerate() {
            let stale =
                matches!(t.state, TrackState::Open | TrackState::Negotiating) && !alive(t.producer);
            if !stale {
                continue;
            }
            let action = stale_section(tag == Some(i));
            t.state = match action {
                Stale::Stop => TrackState::Stopping,
                Stale::Park => TrackState::Parked,
            };
            retired.push((t.mid, action));
        }
        retired
    }

    /// The producers of `desired` that have no track yet, in order.
    pub(super) fn missing(&self, desired: &[K]) -> Vec<K> {
        desired
            .iter()
            .copied()
            .filter(|k| !self.tracks.iter().any(|t| t.producer == *k))
            .collect()
    }

    /// A track was added (m-line `mid`) for `producer` in the offer being made.
    pub(super) fn added(&mut self, mid: Mid, producer: K) {
        self.tracks.push(SubTrack {
            mid,
            producer,
            state: TrackState::Negotiating,
        });
    }

    /// The offer went out (its m-lines' mids in order); its answer must come before the next.
    pub(super) fn offered(&mut self, pending: P, mids: Vec<String>) {
        self.pending = Some(pending);
        self.offered_mids = mids;
    }

    /// Whether an answer with these mids (in order) must be refused: an offer is out and they
    /// are not its mids. The pending offer is kept for its real answer.
    pub(super) fn answer_mismatch(&self, mids: &[String]) -> bool {
        self.pending.is_some() && self.offered_mids != mids
    }

    /// Whether an offer is out.
    #[cfg(test)]
    fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// The tracks the subscriber is told about with an offer (open and negotiating ones).
    pub(super) fn listed(&self) -> impl Iterator<Item = (Mid, K)> + '_ {
        self.tracks
            .iter()
            .filter(|t| matches!(t.state, TrackState::Open | TrackState::Negotiating))
            .map(|t| (t.mid, t.producer))
    }

    /// Takes the offer that is out, to apply its answer; `None` if none is.
    pub(super) fn take_pending(&mut self) -> Option<P> {
        self.pending.take()
    }

    /// The answer was accepted: stopping tracks go, negotiating ones open. Returns the tracks
    /// that opened and whether a change waits for a new offer.
    pub(super) fn accepted(&mut self) -> (Vec<(Mid, K)>, bool) {
        self.tracks.retain(|t| t.state != TrackState::Stopping);
        let mut opened = Vec::new();
        for t in &mut self.tracks {
            if t.state == TrackState::Negotiating {
                t.state = TrackState::Open;
                opened.push((t.mid, t.producer));
            }
        }
        (opened, std::mem::take(&mut self.again))
    }

    /// The answer was refused: the tracks that offer added roll back (the next offer adds them
    /// again). Returns whether a change waits for a new offer.
    pub(super) fn refused(&mut self) -> bool {
        self.tracks.retain(|t| t.state != TrackState::Negotiating);
        std::mem::take(&mut self.again)
    }

    /// The state of the track on `mid`, if any.
    #[cfg(test)]
    fn state_of(&self, mid: Mid) -> Option<TrackState> {
        self.tracks.iter().find(|t| t.mid == mid).map(|t| t.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type N = Negotiation<u32, &'static str>;

    fn mid(s: &str) -> Mid {
        Mid::from(s)
    }

    /// Makes an offer adding every missing producer of `desired` (mids "m<producer>") and
    /// stopping gone ones; returns what it stopped and added, or `None` if it had to wait.
    fn offer(n: &mut N, desired: &[u32]) -> Option<(Vec<Mid>, Vec<u32>)> {
        if !n.begin() {
            return None;
        }
        let stopped = n
            .retire_gone(|k| desired.contains(&k))
            .into_iter()
            .map(|(m, _)| m)
            .collect();
        let added = n.missing(desired);
        for k in &added {
            n.added(mid(&format!("m{k}")), *k);
        }
        let mids = n.tracks.iter().map(|t| t.mid.to_string()).collect();
        n.offered("offer", mids);
        Some((stopped, added))
    }

    #[test]
    fn an_answer_opens_the_offered_tracks() {
        let mut n = N::default();
        assert_eq!(offer(&mut n, &[1, 2]), Some((vec![], vec![1, 2])));
        assert!(n.is_pending());
        assert_eq!(n.state_of(mid("m1")), Some(TrackState::Negotiating));
        assert_eq!(n.take_pending(), Some("offer"));
        let (opened, again) = n.accepted();
        assert_eq!(opened, vec![(mid("m1"), 1), (mid("m2"), 2)]);
        assert!(!again);
        assert!(!n.is_pending());
        assert_eq!(n.state_of(mid("m2")), Some(TrackState::Open));
        // Nothing changed: the next offer adds and stops nothing.
        assert_eq!(offer(&mut n, &[1, 2]), Some((vec![], vec![])));
    }

    #[test]
    fn a_change_while_an_offer_is_out_waits_for_the_answer() {
        let mut n = N::default();
        offer(&mut n, &[1]);
        // Producer 2 arrives while the first offer is out: no second offer.
        assert_eq!(offer(&mut n, &[1, 2]), None);
        assert_eq!(n.missing(&[1, 2]), vec![2]);
        n.take_pending();
        let (opened, again) = n.accepted();
        assert_eq!(opened, vec![(mid("m1"), 1)]);
        assert!(again, "the queued change is offered after the answer");
        assert_eq!(offer(&mut n, &[1, 2]), Some((vec![], vec![2])));
        n.take_pending();
        let (opened, again) = n.accepted();
        assert_eq!(opened, vec![(mid("m2"), 2)]);
        assert!(!again);
    }

    #[test]
    fn a_removed_producer_stops_its_track_until_the_answer() {
        let mut n = N::default();
        offer(&mut n, &[1, 2]);
        n.take_pending();
        n.accepted();
        // m2 is not the BUNDLE tag: stopped.
        assert_eq!(offer(&mut n, &[1]), Some((vec![mid("m2")], vec![])));
        assert_eq!(n.state_of(mid("m2")), Some(TrackState::Stopping));
        assert_eq!(n.listed().collect::<Vec<_>>(), vec![(mid("m1"), 1)]);
        // Stopping is not repeated by a later offer.
        assert!(n.retire_gone(|k| k == 1).is_empty());
        n.take_pending();
        let (opened, _) = n.accepted();
        assert!(opened.is_empty());
        assert_eq!(n.state_of(mid("m2")), None);
    }

    #[test]
    fn the_bundle_tag_is_parked_for_good_never_stopped() {
        let mut n = N::default();
        offer(&mut n, &[1, 2]);
        n.take_pending();
        n.accepted();
        n.begin();
        assert_eq!(
            n.retire_gone(|k| k == 2),
            vec![(mid("m1"), Stale::Park)],
            "m1 is the first section not stopped"
        );
        n.offered("offer", vec!["m1".into(), "m2".into()]);
        assert_eq!(n.state_of(mid("m1")), Some(TrackState::Parked));
        assert_eq!(n.listed().collect::<Vec<_>>(), vec![(mid("m2"), 2)]);
        n.take_pending();
        n.accepted();
        assert_eq!(n.state_of(mid("m1")), Some(TrackState::Parked));
        // Producer 2 leaves too: the tag is still m1 (parked), so m2 is stopped.
        assert_eq!(offer(&mut n, &[]), Some((vec![mid("m2")], vec![])));
        assert_eq!(n.state_of(mid("m2")), Some(TrackState::Stopping));
        n.take_pending();
        n.accepted();
        assert_eq!(n.state_of(mid("m1")), Some(TrackState::Parked));
        assert_eq!(n.state_of(mid("m2")), None);
        // A parked section is never retired again.
        assert!(n.retire_gone(|_| false).is_empty());
    }

    #[test]
    fn an_answer_with_other_mids_keeps_the_pending_offer() {
        let mut n = N::default();
        assert!(!n.answer_mismatch(&[]), "no offer out: nothing to compare");
        offer(&mut n, &[1, 2]);
        assert!(n.answer_mismatch(&["m1".to_owned()]));
        assert!(n.answer_mismatch(&["m2".to_owned(), "m1".to_owned()]));
        assert!(!n.answer_mismatch(&["m1".to_owned(), "m2".to_owned()]));
        assert_eq!(n.take_pending(), Some("offer"));
    }

    #[test]
    fn an_ice_restart_is_taken_by_one_offer() {
        let mut n = N::default();
        assert!(!n.take_ice_restart());
        n.request_ice_restart();
        assert!(n.take_ice_restart());
        assert!(!n.take_ice_restart());
    }

    #[test]
    fn a_producer_removed_while_its_track_is_offered_is_stopped_next() {
        let mut n = N::default();
        offer(&mut n, &[1]);
        // Producer 1 leaves while the offer adding it is out.
        assert_eq!(offer(&mut n, &[]), None);
        n.take_pending();
        let (opened, again) = n.accepted();
        assert_eq!(opened, vec![(mid("m1"), 1)]);
        assert!(again);
        // m1 is the BUNDLE tag: parked, not stopped.
        assert_eq!(offer(&mut n, &[]), Some((vec![mid("m1")], vec![])));
        n.take_pending();
        n.accepted();
        assert_eq!(n.listed().count(), 0);
        assert_eq!(n.state_of(mid("m1")), Some(TrackState::Parked));
    }

    #[test]
    fn a_refused_answer_rolls_back_and_the_next_offer_retries() {
        let mut n = N::default();
        offer(&mut n, &[1]);
        n.take_pending();
        n.accepted();
        offer(&mut n, &[1, 2]);
        assert_eq!(offer(&mut n, &[1, 2, 3]), None);
        n.take_pending();
        assert!(n.refused(), "the change queued meanwhile is still offered");
        assert_eq!(n.state_of(mid("m2")), None);
        assert_eq!(n.state_of(mid("m1")), Some(TrackState::Open));
        assert_eq!(offer(&mut n, &[1, 2, 3]), Some((vec![], vec![2, 3])));
    }

    #[test]
    fn no_answer_without_an_offer() {
        let mut n = N::default();
        assert_eq!(n.take_pending(), None);
        offer(&mut n, &[1]);
        assert_eq!(n.take_pending(), Some("offer"));
        assert_eq!(n.take_pending(), None, "one answer per offer");
    }
}
