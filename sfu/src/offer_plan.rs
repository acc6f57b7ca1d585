//! What a subscriber offer does with a section whose producer is gone, without I/O.
//!
//! str0m writes a stopped section with port 0, outside the BUNDLE group (RFC 8843 §7.5.3). When
//! the stopped section is the BUNDLE tag (the first section of the group, whose transport the
//! others share), Chromium tears the bundled transport down (DTLS close_notify): the server's
//! subscriber peer died "connection closed", was replaced by a fresh peer, and that peer's offers
//! (fewer m-lines) failed on the client's old RTCPeerConnection ("Differing m-line count", "order
//! of m-lines"). That is what kicking the first publisher a participant received did, and why an
//! offer with every section stopped (no BUNDLE group at all) was refused.
//!
//! The rule: stale sections are stopped, except the BUNDLE tag, which is parked (direction
//! inactive, still accepted and bundled) for the rest of the peer's life. So the tag never
//! changes and an offer always has an accepted, bundled section.

/// What the next offer does with a stale section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stale {
    /// Stop it (port 0, out of the BUNDLE group; its slot may be recycled).
    Stop,
    /// Make it inactive and keep it: it is the BUNDLE tag.
    Park,
}

/// The action for a stale section; `is_bundle_tag`: it is the first section not stopped.
pub(crate) fn stale_section(is_bundle_tag: bool) -> Stale {
    if is_bundle_tag {
        Stale::Park
    } else {
        Stale::Stop
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundle_tag_is_parked_the_rest_stopped() {
        assert_eq!(stale_section(true), Stale::Park);
        assert_eq!(stale_section(false), Stale::Stop);
    }
}
