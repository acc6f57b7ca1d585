//! A light peer's media transport: its UDP socket, or (`--transport tcp`) one TCP connection to
//! the server's passive ICE-TCP candidate, each packet framed as RFC 4571 says (a 2-byte
//! big-endian length, then the packet).
//!
//! A TCP peer has no transport until the server's SDP names its passive candidate
//! ([`passive_tcp_candidate`]): [`connect_tcp`] opens the connection then, and the peer's only
//! local candidate is an active TCP host candidate on the connection's local address, so ICE
//! can only pair it with the server's TCP candidate. Writes never block the peer task: framed
//! packets wait in a buffer drained whenever the socket is writable; beyond
//! [`MAX_WRITE_BUFFER`] bytes a packet is dropped whole, as a full UDP socket buffer would drop
//! a datagram.

use std::io;
use std::net::{IpAddr, SocketAddr};

use str0m::net::{Protocol, TcpType};
use str0m::Candidate;
use tokio::io::{Interest, Ready};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

/// Framed bytes waiting to be written on a TCP link at most; a packet beyond is dropped.
pub const MAX_WRITE_BUFFER: usize = 1 << 20;

/// What a light peer's media travels over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PeerTransport {
    /// One UDP socket, one host candidate (the server's UDP port).
    #[default]
    Udp,
    /// One TCP connection to the server's passive ICE-TCP candidate (RFC 6544, RFC 4571).
    Tcp,
}

/// The peer task's transport.
pub(crate) enum Link {
    /// No transport yet (a TCP peer before its connection is handed over).
    Pending,
    /// The UDP socket and its local address.
    Udp(UdpSocket, SocketAddr),
    /// The TCP connection.
    Tcp(TcpLink),
}

/// What [`Link::wait`] saw.
pub(crate) enum LinkEvent {
    /// A datagram of this length from this address is in the buffer.
    Datagram(usize, SocketAddr),
    /// The TCP connection is readable and/or writable.
    Tcp(Ready),
}

impl Link {
    /// Waits until something can be read (or, on TCP with bytes waiting, written).
    pub(crate) async fn wait(&self, buf: &mut [u8]) -> io::Result<LinkEvent> {
        match self {
            Link::Pending => std::future::pending().await,
            Link::Udp(socket, _) => socket
                .recv_from(buf)
                .await
                .map(|(n, src)| LinkEvent::Datagram(n, src)),
            Link::Tcp(t) => {
                let interest = if t.wbuf.is_empty() {
                    Interest::READABLE
                } else {
                    Interest::READABLE | Interest::WRITABLE
                };
                t.stream.ready(interest).await.map(LinkEvent::Tcp)
            }
        }
    }

    /// Sends one packet of `proto` to `dest` without blocking: a full socket (UDP) or buffer
    /// (TCP) drops it, like the network would; a packet for another protocol or (TCP) another
    /// address than the connection's is dropped.
    pub(crate) fn send(&mut self, proto: Protocol, dest: SocketAddr, data: &[u8]) {
        match self {
            Link::Pending => {}
            Link::Udp(socket, _) => {
                if proto == Protocol::Udp {
                    let _ = socket.try_send_to(data, dest);
                }
            }
            Link::Tcp(t) => {
                if proto == Protocol::Tcp && dest == t.remote {
                    t.queue(data);
                }
            }
        }
    }

    /// `(protocol, local address)` of received packets.
    pub(crate) fn local(&self) -> Option<(Protocol, SocketAddr)> {
        match self {
            Link::Pending => None,
            Link::Udp(_, local) => Some((Protocol::Udp, *local)),
            Link::Tcp(t) => Some((Protocol::Tcp, t.local)),
        }
    }
}

/// One TCP connection with RFC 4571 framing.
pub(crate) struct TcpLink {
    stream: TcpStream,
    local: SocketAddr,
    /// The server's ICE-TCP address.
    pub(crate) remote: SocketAddr,
    /// Bytes read that do not make a whole frame yet.
    rbuf: Vec<u8>,
    /// Framed bytes not written yet.
    wbuf: Vec<u8>,
}

impl TcpLink {
    /// Registers `stream` (connected, non-blocking) with the current runtime.
    pub(crate) fn new(stream: std::net::TcpStream) -> io::Result<TcpLink> {
        let stream = TcpStream::from_std(stream)?;
        Ok(TcpLink {
            local: stream.local_addr()?,
            remote: stream.peer_addr()?,
            stream,
            rbuf: Vec::with_capacity(4096),
            wbuf: Vec::new(),
        })
    }

    fn queue(&mut self, data: &[u8]) {
        if frame_into(&mut self.wbuf, data) {
            // A write error shows as a read error (or EOF) on the next wake-up.
            let _ = self.flush();
        }
    }

    /// Writes what the socket takes now.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        let mut written = 0;
        while written < self.wbuf.len() {
            match self.stream.try_write(&self.wbuf[written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        self.wbuf.drain(..written);
        Ok(())
    }

    /// Reads what is available and appends the whole frames to `frames`. `Ok(false)`: the
    /// server closed the connection.
    pub(crate) fn read(&mut self, frames: &mut Vec<Vec<u8>>) -> io::Result<bool> {
        loop {
            self.rbuf.reserve(16 * 1024);
            match self.stream.try_read_buf(&mut self.rbuf) {
                Ok(0) => return Ok(false),
                Ok(_) => take_frames(&mut self.rbuf, frames),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) => return Err(e),
            }
        }
    }
}

/// Appends `data` framed (RFC 4571) to `wbuf`, unless it is longer than a frame can be or the
/// buffer would grow beyond [`MAX_WRITE_BUFFER`]. Returns whether it was appended.
pub(crate) fn frame_into(wbuf: &mut Vec<u8>, data: &[u8]) -> bool {
    let Ok(len) = u16::try_from(data.len()) else {
        return false;
    };
    if wbuf.len() + 2 + data.len() > MAX_WRITE_BUFFER {
        return false;
    }
    wbuf.extend_from_slice(&len.to_be_bytes());
    wbuf.extend_from_slice(data);
    true
}

/// Moves the whole RFC 4571 frames at the start of `buf` into `frames`, keeping the rest.
pub(crate) fn take_frames(buf: &mut Vec<u8>, frames: &mut Vec<Vec<u8>>) {
    let mut at = 0;
    while buf.len() - at >= 2 {
        let len = usize::from(u16::from_be_bytes([buf[at], buf[at + 1]]));
        if buf.len() - at - 2 < len {
            break;
        }
        frames.push(buf[at + 2..at + 2 + len].to_vec());
        at += 2 + len;
    }
    buf.drain(..at);
}

/// The server's passive TCP candidate in `sdp` with the address family of `bind_ip`, if any.
pub fn passive_tcp_candidate(sdp: &str, bind_ip: IpAddr) -> Option<SocketAddr> {
    sdp.lines()
        .filter_map(|l| l.trim().strip_prefix("a="))
        .filter(|l| l.starts_with("candidate:"))
        .filter_map(|l| Candidate::from_sdp_string(l).ok())
        .filter(|c| c.proto() == Protocol::Tcp && c.tcptype() == Some(TcpType::Passive))
        .map(|c| c.addr())
        .find(|a| a.is_ipv4() == bind_ip.is_ipv4())
}

/// Opens the connection to `server` from `bind_ip`; returns it non-blocking, ready for
/// [`TcpLink::new`] on another runtime.
pub(crate) async fn connect_tcp(
    bind_ip: IpAddr,
    server: SocketAddr,
) -> io::Result<std::net::TcpStream> {
    let socket = match bind_ip {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(bind_ip, 0))?;
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    // `into_std` leaves the socket non-blocking.
    stream.into_std()
}

/// The active TCP host candidate of a connection from `local`.
pub(crate) fn active_candidate(local: SocketAddr) -> Result<Candidate, str0m::error::IceError> {
    Candidate::builder()
        .tcp()
        .host(local)
        .tcptype(TcpType::Active)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_reads_are_reassembled() {
        let mut wire = Vec::new();
        assert!(frame_into(&mut wire, b"hello"));
        assert!(frame_into(&mut wire, b""));
        assert!(frame_into(&mut wire, &[7u8; 300]));
        let mut frames = Vec::new();
        let mut buf = Vec::new();
        // One byte at a time: frames come out whole, in order, and only once complete.
        for b in &wire {
            buf.push(*b);
            take_frames(&mut buf, &mut frames);
        }
        assert!(buf.is_empty());
        assert_eq!(frames, vec![b"hello".to_vec(), Vec::new(), vec![7u8; 300]]);
    }

    #[test]
    fn oversized_packets_and_a_full_buffer_drop_whole_packets() {
        let mut wbuf = Vec::new();
        assert!(!frame_into(&mut wbuf, &vec![0u8; 70_000]));
        assert!(wbuf.is_empty());
        let packet = vec![1u8; 60_000];
        while frame_into(&mut wbuf, &packet) {}
        assert!(wbuf.len() <= MAX_WRITE_BUFFER);
        assert_eq!(wbuf.len() % (packet.len() + 2), 0, "only whole frames");
    }

    #[test]
    fn finds_the_passive_tcp_candidate_of_the_family() {
        let sdp = "v=0\r\n\
            a=candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host\r\n\
            a=candidate:2 1 tcp 1518214911 ::1 7883 typ host tcptype passive\r\n\
            a=candidate:3 1 tcp 1518214911 127.0.0.1 7884 typ host tcptype passive\r\n";
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            passive_tcp_candidate(sdp, v4),
            Some("127.0.0.1:7884".parse().unwrap())
        );
        let v6: IpAddr = "::1".parse().unwrap();
        assert_eq!(passive_tcp_candidate(sdp, v6).map(|a| a.port()), Some(7883));
        let udp_only = "a=candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host\r\n";
        assert_eq!(passive_tcp_candidate(udp_only, v4), None);
    }
}
