//! Which of a subscriber's stale m-sections the next offer may stop, without I/O.
//!
//! str0m writes a stopped m-section with port 0 and leaves it out of the BUNDLE group (RFC 8843
//! §7.5.3). An offer in which *every* section is stopped therefore has no section accepted and
//! an empty BUNDLE group: Chromium refuses it ("no BUNDLE group") or, when it accepts it, tears
//! the bundled transport down (DTLS close_notify), so the server saw the subscriber peer
//! "connection closed", failed it, and offered a fresh peer with fewer m-lines to the client's old
//! `RTCPeerConnection` ("Differing m-line count", "order of m-lines"). That is what happened to
//! the others when the only publisher of a call was kicked.
//!
//! The rule: the stale sections (their producer is gone) are stopped only in an offer that keeps
//! or adds at least one live section. Otherwise they are left as they are (nothing is forwarded
//! on them, their producer is gone) and stopped by the next offer that adds a track.

/// Whether the next subscriber offer may stop its stale sections: `live_kept` sections keep a
/// producer and `added` new ones are added, so some section stays accepted and bundled.
pub(crate) fn may_stop_stale(live_kept: usize, added: usize) -> bool {
    live_kept + added > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_stops_every_section() {
        assert!(!may_stop_stale(0, 0), "all stopped: no accepted section");
        assert!(may_stop_stale(1, 0), "a live section stays");
        assert!(may_stop_stale(0, 1), "a new section is added");
        assert!(may_stop_stale(3, 2));
    }
}
