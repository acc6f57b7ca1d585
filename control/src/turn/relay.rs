//! Relayed transport addresses that reach one peer only: this node's media socket. Each
//! allocation gets its own UDP socket (on the media socket's IP, so the SFU sees it as a local
//! peer); whatever the client asks, the socket sends only to the media address and accepts
//! packets only from it. The policy refuses other peers earlier with a proper error; this is the
//! guarantee underneath it (a permission is per IP, so without it the relay would reach every
//! port of the node).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use async_trait::async_trait;
use tokio::net::UdpSocket;
use turn::relay::RelayAddressGenerator;
use webrtc_util::Conn;

/// Where the relay may send.
#[derive(Debug, Clone, Copy)]
pub struct MediaTarget {
    /// The media address as clients see it (the SFU's candidate): the only peer clients may name.
    pub public: SocketAddr,
    /// Where the relay actually sends to reach it from this host (the local socket address,
    /// loopback for a socket on the unspecified address).
    pub local: SocketAddr,
}

impl MediaTarget {
    /// The target for an SFU socket bound to `bound`, advertised as `public`.
    pub fn new(public: SocketAddr, bound: SocketAddr) -> MediaTarget {
        let ip = match bound.ip() {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        MediaTarget {
            public,
            local: SocketAddr::new(ip, bound.port()),
        }
    }
}

/// Allocates relay sockets bound to the media IP.
pub struct MediaRelay {
    /// The one peer.
    pub target: MediaTarget,
}

#[async_trait]
impl RelayAddressGenerator for MediaRelay {
    fn validate(&self) -> Result<(), turn::Error> {
        Ok(())
    }

    async fn allocate_conn(
        &self,
        _use_ipv4: bool,
        _requested_port: u16,
    ) -> Result<(Arc<dyn Conn + Send + Sync>, SocketAddr), turn::Error> {
        let sock = UdpSocket::bind(SocketAddr::new(self.target.local.ip(), 0)).await?;
        let addr = sock.local_addr()?;
        Ok((
            Arc::new(MediaOnlyConn {
                sock,
                target: self.target,
            }),
            addr,
        ))
    }
}

/// A relay socket that talks to the media address only.
pub struct MediaOnlyConn {
    sock: UdpSocket,
    target: MediaTarget,
}

#[async_trait]
impl Conn for MediaOnlyConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Err(webrtc_util::Error::Other(
            "relay sockets do not connect".into(),
        ))
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        self.recv_from(buf).await.map(|(n, _)| n)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        loop {
            let (n, src) = self.sock.recv_from(buf).await?;
            if src == self.target.local {
                return Ok((n, self.target.public));
            }
        }
    }

    async fn send(&self, _buf: &[u8]) -> webrtc_util::Result<usize> {
        Err(webrtc_util::Error::Other(
            "relay sockets send to a peer".into(),
        ))
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        if target != self.target.public {
            return Err(webrtc_util::Error::Other(format!(
                "relay to {target} refused: only the media address is reachable"
            )));
        }
        Ok(self.sock.send_to(buf, self.target.local).await?)
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.sock.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}
