//! The sending side of a shard: the shared UDP socket behind a batching queue in production
//! ([`BatchTransport`]), an in-memory sink for the fuzz harness. Receiving is not part of it:
//! datagrams reach a shard on its queue.
//!
//! `send_to` only queues; the shard calls `flush` at the end of each batch of work (before it
//! sleeps for its next datagram, command or timer), and a queue that reaches
//! [`crate::io::batch::MAX_BATCH`] datagrams is sent at once. A full socket buffer drops the
//! rest of a batch and counts it; the shard never blocks on the kernel (see
//! [`crate::io::batch`]).

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::Mutex;
use tracing::debug;

use crate::io::batch::{send_batch, GsoState, SendOutcome, SendQueue, MAX_BATCH};

/// Where a shard's outgoing datagrams go. Shared by the worker pool when a large fan-out is
/// driven in parallel, hence `Sync`.
pub(crate) trait Transport: Send + Sync {
    /// Queues one datagram for `dest`; it leaves at the latest at the next [`Self::flush`].
    fn send_to(&self, data: &[u8], dest: SocketAddr) -> io::Result<()>;

    /// Sends one packet over the ICE-TCP connection from `dest` (see `tcp`); without ICE-TCP
    /// there is none.
    fn send_tcp(&self, data: &[u8], dest: SocketAddr) -> io::Result<()> {
        let _ = (data, dest);
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Hands every queued datagram to the kernel (default: nothing is queued).
    fn flush(&self) {}
}

/// Egress figures of one shard's transport (several writers, all behind the queue's lock).
#[derive(Debug, Default)]
pub(crate) struct SendCounters {
    /// Datagrams the kernel accepted.
    pub(crate) sent: AtomicU64,
    /// Datagrams dropped on a full socket send buffer (`EAGAIN`).
    pub(crate) would_block: AtomicU64,
    /// Datagrams the kernel refused (any other error).
    pub(crate) failed: AtomicU64,
    /// `sendmmsg` / `sendmsg` calls.
    pub(crate) syscalls: AtomicU64,
    /// Datagrams sent inside UDP GSO sends.
    pub(crate) gso: AtomicU64,
}

impl SendCounters {
    /// `sum` plus this shard's figures (for a scrape).
    pub(crate) fn add_to(&self, mut sum: SendOutcome) -> SendOutcome {
        sum.sent += self.sent.load(Relaxed);
        sum.would_block += self.would_block.load(Relaxed);
        sum.failed += self.failed.load(Relaxed);
        sum.syscalls += self.syscalls.load(Relaxed);
        sum.gso_datagrams += self.gso.load(Relaxed);
        sum
    }

    fn record(&self, o: SendOutcome) {
        self.sent.fetch_add(o.sent, Relaxed);
        self.would_block.fetch_add(o.would_block, Relaxed);
        self.failed.fetch_add(o.failed, Relaxed);
        self.syscalls.fetch_add(o.syscalls, Relaxed);
        self.gso.fetch_add(o.gso_datagrams, Relaxed);
    }
}

/// A clone of the media socket with a queue of up to [`MAX_BATCH`] datagrams.
pub(crate) struct BatchTransport {
    socket: UdpSocket,
    queue: Mutex<SendQueue>,
    gso: GsoState,
    counters: Arc<SendCounters>,
}

impl BatchTransport {
    /// Sends through `socket` (left blocking for other users: every send passes
    /// `MSG_DONTWAIT`) in batches of up to `batch` datagrams (1..=[`MAX_BATCH`]), counting
    /// into `counters`.
    pub(crate) fn new(
        socket: UdpSocket,
        batch: usize,
        counters: Arc<SendCounters>,
    ) -> BatchTransport {
        BatchTransport {
            socket,
            queue: Mutex::new(SendQueue::new(batch.clamp(1, MAX_BATCH))),
            gso: GsoState::new(true),
            counters,
        }
    }

    fn send(&self, queue: &mut SendQueue) {
        let o = send_batch(&self.socket, queue, &self.gso);
        if o.would_block + o.failed > 0 {
            debug!(
                would_block = o.would_block,
                failed = o.failed,
                "datagrams dropped by the kernel"
            );
        }
        self.counters.record(o);
    }
}

impl Transport for BatchTransport {
    fn send_to(&self, data: &[u8], dest: SocketAddr) -> io::Result<()> {
        let mut q = self.queue.lock();
        if q.push(data, dest) {
            self.send(&mut q);
        }
        Ok(())
    }

    fn flush(&self) {
        let mut q = self.queue.lock();
        if !q.is_empty() {
            self.send(&mut q);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn queued_datagrams_leave_at_flush_or_when_the_batch_is_full() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let dest = rx.local_addr().unwrap();
        let counters = Arc::new(SendCounters::default());
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let t = BatchTransport::new(sock, MAX_BATCH, counters.clone());
        t.send_to(&[1; 50], dest).unwrap();
        assert_eq!(counters.sent.load(Relaxed), 0, "queued, not sent");
        t.flush();
        assert_eq!(counters.sent.load(Relaxed), 1);
        let mut buf = [0u8; 100];
        assert_eq!(rx.recv(&mut buf).unwrap(), 50);
        // A full batch goes out without a flush.
        for i in 0..MAX_BATCH {
            t.send_to(&vec![i as u8; 20 + (i % 2)], dest).unwrap();
        }
        assert_eq!(counters.sent.load(Relaxed), 1 + MAX_BATCH as u64);
        for _ in 0..MAX_BATCH {
            assert!(rx.recv(&mut buf).is_ok());
        }
        t.flush();
        assert!(counters.syscalls.load(Relaxed) > 0);
        assert_eq!(
            counters.would_block.load(Relaxed) + counters.failed.load(Relaxed),
            0
        );
    }
}
