//! A shard's routing of datagrams to its peers, without I/O (tested on its own).
//!
//! * STUN names the server's ICE ufrag in its USERNAME: one map lookup finds the only peer
//!   that may answer it (no scan over the shard's peers, so a flood of STUN from unknown
//!   addresses costs one lookup and at most one integrity check each).
//! * Every other datagram (DTLS, SRTP, SRTCP) goes to a peer only from an address that peer
//!   validated: the engine calls [`PeerRoutes::validated`] after str0m accepted a binding
//!   request from that address (USERNAME and MESSAGE-INTEGRITY checked). A spoofed DTLS
//!   ClientHello from any other address never reaches a peer.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::demux::stun_local_ufrag;

/// Where a datagram may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Candidate<K> {
    /// STUN for this peer's ufrag: the peer checks its integrity.
    Stun(K),
    /// Non-STUN from an address this peer validated.
    Validated(K),
}

/// Ufrag -> peer and validated address -> peer maps of one shard.
#[derive(Debug)]
pub(crate) struct PeerRoutes<K> {
    by_ufrag: HashMap<String, K>,
    by_addr: HashMap<SocketAddr, K>,
}

impl<K: Copy + Eq> Default for PeerRoutes<K> {
    fn default() -> Self {
        PeerRoutes {
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
        }
    }
}

impl<K: Copy + Eq> PeerRoutes<K> {
    /// The peer a datagram from `src` may be for, or `None` (drop it).
    pub(crate) fn candidate(&self, data: &[u8], src: SocketAddr) -> Option<Candidate<K>> {
        if let Some(ufrag) = stun_local_ufrag(data) {
            return self.by_ufrag.get(ufrag).copied().map(Candidate::Stun);
        }
        self.by_addr.get(&src).copied().map(Candidate::Validated)
    }

    /// `key`'s local ufrag is now `ufrag` (a new peer, or a client's ICE restart).
    pub(crate) fn set_ufrag(&mut self, key: K, old: Option<&str>, ufrag: &str) {
        if let Some(old) = old {
            if self.by_ufrag.get(old) == Some(&key) {
                self.by_ufrag.remove(old);
            }
        }
        self.by_ufrag.insert(ufrag.to_owned(), key);
    }

    /// str0m accepted a binding request from `src` for `key`: media from `src` is `key`'s.
    pub(crate) fn validated(&mut self, src: SocketAddr, key: K) {
        self.by_addr.insert(src, key);
    }

    /// Forgets a peer: its ufrag and every address it validated.
    pub(crate) fn remove(&mut self, key: K, ufrag: &str) {
        if self.by_ufrag.get(ufrag) == Some(&key) {
            self.by_ufrag.remove(ufrag);
        }
        self.by_addr.retain(|_, k| *k != key);
    }

    /// Keeps only the routes of peers for which `alive` holds.
    pub(crate) fn retain(&mut self, mut alive: impl FnMut(K) -> bool) {
        self.by_ufrag.retain(|_, k| alive(*k));
        self.by_addr.retain(|_, k| alive(*k));
    }

    /// Validated addresses known (bounded by the peers and their candidate pairs).
    #[cfg(test)]
    pub(crate) fn addresses(&self) -> usize {
        self.by_addr.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demux::tests::stun;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    const DTLS_HELLO: [u8; 13] = [22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

    #[test]
    fn stun_finds_its_peer_by_ufrag_and_media_needs_a_validated_address() {
        let mut r = PeerRoutes::<u32>::default();
        r.set_ufrag(1, None, "g000aaaa");
        r.set_ufrag(2, None, "g000bbbb");
        assert_eq!(
            r.candidate(&stun("g000bbbb:cl"), addr(5000)),
            Some(Candidate::Stun(2))
        );
        assert_eq!(r.candidate(&stun("g000zzzz:cl"), addr(5000)), None);
        // Nothing validated yet: DTLS from the address that sent STUN is not routed.
        assert_eq!(r.candidate(&DTLS_HELLO, addr(5000)), None);
        r.validated(addr(5000), 2);
        assert_eq!(
            r.candidate(&DTLS_HELLO, addr(5000)),
            Some(Candidate::Validated(2))
        );
        // A spoofed ClientHello from another address still goes nowhere.
        assert_eq!(r.candidate(&DTLS_HELLO, addr(5001)), None);
        assert_eq!(r.addresses(), 1);
    }

    #[test]
    fn ice_restart_moves_the_ufrag_and_removal_forgets_everything() {
        let mut r = PeerRoutes::<u32>::default();
        r.set_ufrag(7, None, "g000old");
        r.validated(addr(6000), 7);
        r.set_ufrag(7, Some("g000old"), "RandomNew");
        assert_eq!(r.candidate(&stun("g000old:cl"), addr(6000)), None);
        assert_eq!(
            r.candidate(&stun("RandomNew:cl"), addr(6000)),
            Some(Candidate::Stun(7))
        );
        r.remove(7, "RandomNew");
        assert_eq!(r.candidate(&stun("RandomNew:cl"), addr(6000)), None);
        assert_eq!(r.candidate(&DTLS_HELLO, addr(6000)), None);
        // A ufrag taken over by another peer is not removed with the old one.
        r.set_ufrag(8, None, "g000same");
        r.remove(9, "g000same");
        assert_eq!(
            r.candidate(&stun("g000same:cl"), addr(1)),
            Some(Candidate::Stun(8))
        );
        r.validated(addr(2), 8);
        r.retain(|k| k != 8);
        assert_eq!(r.candidate(&stun("g000same:cl"), addr(1)), None);
        assert_eq!(r.addresses(), 0);
    }
}
