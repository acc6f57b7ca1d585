//! The sending side of a shard: the shared UDP socket in production, an in-memory sink for the
//! fuzz harness. Receiving is not part of it: datagrams reach a shard on its queue.

use std::io;
use std::net::{SocketAddr, UdpSocket};

/// Where a shard's outgoing datagrams go. Shared by the worker pool when a large fan-out is
/// driven in parallel, hence `Sync`.
pub(crate) trait Transport: Send + Sync {
    /// Sends one datagram to `dest`.
    fn send_to(&self, data: &[u8], dest: SocketAddr) -> io::Result<()>;

    /// Sends one packet over the ICE-TCP connection from `dest` (see `tcp`); without ICE-TCP
    /// there is none.
    fn send_tcp(&self, data: &[u8], dest: SocketAddr) -> io::Result<()> {
        let _ = (data, dest);
        Err(io::ErrorKind::Unsupported.into())
    }
}

impl Transport for UdpSocket {
    #[inline]
    fn send_to(&self, data: &[u8], dest: SocketAddr) -> io::Result<()> {
        UdpSocket::send_to(self, data, dest).map(|_| ())
    }
}
