//! Node-to-node media relay: one call's tracks carried between the nodes of a cluster.
//!
//! See docs/ARCHITECTURE.md, "Relay between nodes".

use std::net::SocketAddr;

/// Node-to-node relay options (`None` in [`crate::SfuOptions::relay`]: relay off, no socket).
#[derive(Clone)]
pub struct RelayOptions {
    /// UDP address of the relay socket (port 0 picks a free one; see [`crate::Sfu::relay_addr`]).
    pub bind: SocketAddr,
    /// This node's id, as the other nodes know it (authenticates its datagrams).
    pub node_id: String,
    /// The cluster's shared relay secret: every datagram carries a MAC keyed by it and the
    /// sending node's id.
    pub secret: [u8; 32],
}

impl std::fmt::Debug for RelayOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayOptions")
            .field("bind", &self.bind)
            .field("node_id", &self.node_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Another node that carries media of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayNode {
    /// The node's id (its [`RelayOptions::node_id`]).
    pub node_id: String,
    /// The node's relay socket address ([`crate::Sfu::relay_addr`] there).
    pub addr: SocketAddr,
}
