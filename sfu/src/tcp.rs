//! ICE over TCP: the passive TCP candidate's listener and RFC 4571 framing.
//!
//! Clients behind firewalls that drop UDP reach the server over TCP (RFC 6544): every server
//! peer also offers a host candidate `tcp ... tcptype passive` on [`crate::SfuOptions::ice_tcp_port`],
//! the client connects, and each packet travels as a 2-byte big-endian length followed by the
//! packet (RFC 4571). Each connection's packets enter the owning shard exactly like UDP
//! datagrams ([`ShardMsg::TcpPacket`]): the first frame must be a STUN binding request whose
//! USERNAME names a server ufrag with a shard tag (or one registered after an ICE restart), and
//! later STUN re-routes the connection the same way; str0m then checks integrity and the
//! candidate pair, as for UDP.
//!
//! The shard answers through [`MediaTransport`]: a transmit whose protocol is TCP goes to the
//! connection with that remote address, through a bounded per-connection queue drained by the
//! connection's writer task. A slow reader never blocks a shard: when its queue is full the
//! packet is dropped and counted ([`TcpCounters::send_dropped`]); a packet for a connection that
//! is gone is counted too.
//!
//! Limits ([`TcpLimits`]): connections at once (beyond, new ones are closed at accept), the
//! largest frame (a longer length prefix closes the connection), an idle timeout (no frame
//! read, or a write stuck, for that long closes it) and the per-connection write queue.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use str0m::net::TcpType;
use str0m::Candidate;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::demux::{dispatch, shard_of_ufrag, stun_local_ufrag, DemuxCounters, UfragMap};
use crate::engine::ShardMsg;
use crate::io::inbox::ShardTx;
use crate::metrics::add;
use crate::transport::Transport;

/// The accept loop looks at the stop flag at least this often.
const POLL: Duration = Duration::from_millis(200);

/// Limits of the ICE-TCP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpLimits {
    /// Connections open at once; beyond, new connections are closed at once. Default 4096.
    pub max_connections: usize,
    /// The largest RFC 4571 frame accepted, in bytes (at least 1500); a longer one closes the
    /// connection. Default 2048.
    pub max_frame: usize,
    /// A connection with no frame received (or a write blocked) for this long is closed. ICE
    /// consent checks arrive every few seconds on a live connection. Default 30 s.
    pub idle_timeout: Duration,
    /// Packets waiting to be written to one connection; beyond, they are dropped (a slow reader
    /// never blocks a shard). Default 256.
    pub write_queue: usize,
}

impl Default for TcpLimits {
    fn default() -> Self {
        TcpLimits {
            max_connections: 4096,
            max_frame: 2048,
            idle_timeout: Duration::from_secs(30),
            write_queue: 256,
        }
    }
}

/// Counters of the ICE-TCP listener.
#[derive(Debug, Default)]
pub struct TcpCounters {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections closed at accept because [`TcpLimits::max_connections`] were open.
    pub refused: AtomicU64,
    /// Connections open now.
    pub open: AtomicUsize,
    /// Connections closed for a bad frame: too long, empty, or a first frame that is not a
    /// STUN request for a known server ufrag.
    pub bad_frames: AtomicU64,
    /// Connections closed by the idle timeout.
    pub idle_closed: AtomicU64,
    /// Frames handed to a shard.
    pub frames_in: AtomicU64,
    /// Packets for a TCP destination dropped: its write queue was full or it is gone.
    pub send_dropped: AtomicU64,
}

impl TcpCounters {
    /// Appends the counters in the Prometheus text format (`greenroom_ice_tcp_*`).
    pub(crate) fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let rows: [(&str, &str, &str, u64); 7] = [
            ("greenroom_ice_tcp_accepted_total", "counter", "ICE-TCP connections accepted", self.accepted.load(Relaxed)),
            ("greenroom_ice_tcp_refused_total", "counter", "ICE-TCP connections closed at accept: connection limit reached", self.refused.load(Relaxed)),
            ("greenroom_ice_tcp_connections", "gauge", "ICE-TCP connections open", self.open.load(Relaxed) as u64),
            ("greenroom_ice_tcp_bad_frames_total", "counter", "ICE-TCP connections closed for a bad frame (too long, empty, or a first frame that is no STUN request for us)", self.bad_frames.load(Relaxed)),
            ("greenroom_ice_tcp_idle_closed_total", "counter", "ICE-TCP connections closed by the idle timeout", self.idle_closed.load(Relaxed)),
            ("greenroom_ice_tcp_frames_in_total", "counter", "ICE-TCP frames handed to an engine shard", self.frames_in.load(Relaxed)),
            ("greenroom_ice_tcp_send_dropped_total", "counter", "Packets for an ICE-TCP connection dropped: its write queue was full or it was gone", self.send_dropped.load(Relaxed)),
        ];
        for (name, typ, help, v) in rows {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {typ}\n{name} {v}");
        }
    }
}

/// The write side of every open connection, by remote address.
#[derive(Clone, Default)]
pub(crate) struct Writers {
    conns: Arc<RwLock<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>>,
    counters: Arc<TcpCounters>,
}

impl Writers {
    /// Queues one packet for the connection from `dest`, never blocking: a full queue or an
    /// unknown destination drops it (counted) and answers `WouldBlock` / `NotConnected`.
    pub(crate) fn send(&self, data: &[u8], dest: SocketAddr) -> io::Result<()> {
        let conns = self.conns.read();
        let Some(tx) = conns.get(&dest) else {
            add(&self.counters.send_dropped, 1);
            return Err(io::ErrorKind::NotConnected.into());
        };
        match tx.try_send(data.to_vec()) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                add(&self.counters.send_dropped, 1);
                Err(io::ErrorKind::WouldBlock.into())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                add(&self.counters.send_dropped, 1);
                Err(io::ErrorKind::NotConnected.into())
            }
        }
    }

    /// The listener's counters.
    pub(crate) fn counters(&self) -> &Arc<TcpCounters> {
        &self.counters
    }
}

/// A shard's sending side when ICE-TCP is on: UDP transmits to the shared socket, TCP ones to
/// their connection.
pub(crate) struct MediaTransport {
    /// The shared media UDP socket (a clone), batched.
    pub(crate) udp: crate::transport::BatchTransport,
    /// The TCP connections.
    pub(crate) tcp: Writers,
}

impl Transport for MediaTransport {
    fn send_to(&mut self, data: &[u8], dest: SocketAddr) -> io::Result<()> {
        self.udp.send_to(data, dest)
    }

    fn send_owned(&mut self, data: Vec<u8>, dest: SocketAddr) -> io::Result<()> {
        self.udp.send_owned(data, dest)
    }

    fn send_with(
        &mut self,
        max_len: usize,
        dest: SocketAddr,
        fill: &mut dyn FnMut(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.udp.send_with(max_len, dest, fill)
    }

    fn flush(&mut self) {
        self.udp.flush();
    }

    fn send_tcp(&mut self, data: &[u8], dest: SocketAddr) -> io::Result<()> {
        self.tcp.send(data, dest)
    }

    fn fork(&self) -> Box<dyn Transport> {
        Box::new(MediaTransport {
            udp: self.udp.fork_batch(),
            tcp: self.tcp.clone(),
        })
    }
}

/// The passive TCP host candidate for `addr`.
pub(crate) fn candidate(addr: SocketAddr) -> Result<Candidate, str0m::error::IceError> {
    Candidate::builder()
        .tcp()
        .host(addr)
        .tcptype(TcpType::Passive)
        .build()
}

/// Everything a connection task needs.
#[derive(Clone)]
struct Shared {
    shards: Arc<Vec<ShardTx>>,
    untagged: UfragMap,
    writers: Writers,
    limits: TcpLimits,
    demux: Arc<DemuxCounters>,
    stop: Arc<AtomicBool>,
}

/// Starts the accept loop on the current tokio runtime; it ends when `stop` is set.
pub(crate) fn spawn(
    listener: TcpListener,
    shards: Vec<ShardTx>,
    untagged: UfragMap,
    writers: Writers,
    limits: TcpLimits,
    demux: Arc<DemuxCounters>,
    stop: Arc<AtomicBool>,
) {
    let shared = Shared {
        shards: Arc::new(shards),
        untagged,
        writers,
        limits,
        demux,
        stop,
    };
    if let Ok(a) = listener.local_addr() {
        info!(addr = %a, "ICE-TCP listening");
    }
    tokio::spawn(accept_loop(listener, shared));
}

async fn accept_loop(listener: TcpListener, shared: Shared) {
    let counters = shared.writers.counters.clone();
    while !shared.stop.load(Relaxed) {
        let (stream, peer) = match tokio::time::timeout(POLL, listener.accept()).await {
            Err(_) => continue,
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                debug!("ICE-TCP accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if counters.open.load(Relaxed) >= shared.limits.max_connections {
            add(&counters.refused, 1);
            debug!("ICE-TCP connection from {peer} refused: limit reached");
            continue;
        }
        counters.open.fetch_add(1, Relaxed);
        add(&counters.accepted, 1);
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            serve(stream, peer, &shared).await;
            shared.writers.counters.open.fetch_sub(1, Relaxed);
        });
    }
}

/// Why a connection's read loop ended.
enum End {
    Closed,
    Idle,
    BadFrame,
}

/// One connection: its writer task, then the read loop feeding its shard.
async fn serve(stream: TcpStream, peer: SocketAddr, shared: &Shared) {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(shared.limits.write_queue.max(1));
    let idle = shared.limits.idle_timeout;
    let writer = tokio::spawn(async move {
        let mut buf = Vec::with_capacity(2048);
        while let Some(p) = rx.recv().await {
            // Frames longer than 65 535 bytes cannot be framed; str0m never sends them.
            let Ok(len) = u16::try_from(p.len()) else {
                continue;
            };
            buf.clear();
            buf.extend_from_slice(&len.to_be_bytes());
            buf.extend_from_slice(&p);
            match tokio::time::timeout(idle, wr.write_all(&buf)).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
    });
    shared.writers.conns.write().insert(peer, tx.clone());
    let end = read_loop(&mut rd, peer, shared).await;
    match end {
        End::Idle => add(&shared.writers.counters.idle_closed, 1),
        End::BadFrame => add(&shared.writers.counters.bad_frames, 1),
        End::Closed => {}
    }
    {
        let mut conns = shared.writers.conns.write();
        // A new connection from the same address may have replaced ours meanwhile.
        if conns.get(&peer).is_some_and(|t| t.same_channel(&tx)) {
            conns.remove(&peer);
        }
    }
    writer.abort();
    debug!("ICE-TCP connection from {peer} closed");
}

async fn read_loop(rd: &mut tokio::net::tcp::OwnedReadHalf, peer: SocketAddr, s: &Shared) -> End {
    let idle = s.limits.idle_timeout;
    let mut frame = vec![0u8; s.limits.max_frame.max(1500)];
    let mut shard: Option<usize> = None;
    loop {
        if s.stop.load(Relaxed) {
            return End::Closed;
        }
        let mut len = [0u8; 2];
        match tokio::time::timeout(idle, rd.read_exact(&mut len)).await {
            Err(_) => return End::Idle,
            Ok(Err(_)) => return End::Closed,
            Ok(Ok(_)) => {}
        }
        let len = usize::from(u16::from_be_bytes(len));
        if len == 0 || len > frame.len() {
            debug!("ICE-TCP frame of {len} bytes from {peer}: closing");
            return End::BadFrame;
        }
        match tokio::time::timeout(idle, rd.read_exact(&mut frame[..len])).await {
            Err(_) => return End::Idle,
            Ok(Err(_)) => return End::Closed,
            Ok(Ok(_)) => {}
        }
        let data = &frame[..len];
        if let Some(ufrag) = stun_local_ufrag(data) {
            let found = shard_of_ufrag(ufrag)
                .filter(|i| *i < s.shards.len())
                .or_else(|| s.untagged.read().get(ufrag).copied());
            if found.is_some() {
                shard = found;
            }
        }
        let Some(i) = shard else {
            debug!("ICE-TCP first frame from {peer} is no STUN request for us: closing");
            return End::BadFrame;
        };
        let Some(tx) = s.shards.get(i) else {
            return End::BadFrame;
        };
        add(&s.writers.counters.frames_in, 1);
        let msg = ShardMsg::TcpPacket {
            data: data.to_vec(),
            src: peer,
        };
        dispatch(tx, msg, &s.demux);
    }
}

/// Binds the ICE-TCP listener on `addr` (port 0: any free port).
pub(crate) async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_candidate_is_passive_tcp() {
        let c = candidate("127.0.0.1:7882".parse().unwrap()).unwrap();
        let s = c.to_sdp_string();
        assert!(s.contains(" tcp "), "{s}");
        assert!(s.contains("tcptype passive"), "{s}");
    }

    #[test]
    fn counters_render_as_prometheus_text() {
        let c = TcpCounters::default();
        add(&c.send_dropped, 3);
        c.open.store(2, Relaxed);
        let mut out = String::new();
        c.render(&mut out);
        assert!(
            out.contains("greenroom_ice_tcp_send_dropped_total 3\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "# TYPE greenroom_ice_tcp_connections gauge\ngreenroom_ice_tcp_connections 2\n"
            ),
            "{out}"
        );
        assert_eq!(out.matches("# HELP ").count(), 7);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_write_queue_drops_and_counts_instead_of_blocking() {
        let w = Writers::default();
        let dest: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let (tx, _rx) = mpsc::channel(2);
        w.conns.write().insert(dest, tx);
        assert!(w.send(b"a", dest).is_ok());
        assert!(w.send(b"b", dest).is_ok());
        for _ in 0..100 {
            assert_eq!(
                w.send(b"c", dest).unwrap_err().kind(),
                io::ErrorKind::WouldBlock
            );
        }
        assert_eq!(w.counters.send_dropped.load(Relaxed), 100);
        let gone: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        assert_eq!(
            w.send(b"x", gone).unwrap_err().kind(),
            io::ErrorKind::NotConnected
        );
        assert_eq!(w.counters.send_dropped.load(Relaxed), 101);
    }
}
