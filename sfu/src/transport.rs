//! The sending side of a shard: the shared UDP socket behind a batching queue in production
//! ([`BatchTransport`]), an in-memory sink for the fuzz harness. Receiving is not part of it:
//! datagrams reach a shard on its queue.
//!
//! `send_to` only queues; the shard calls `flush` at the end of each batch of work (before it
//! sleeps for its next datagram, command or timer), and a queue that reaches
//! [`crate::io::batch::MAX_BATCH`] datagrams is sent at once. A full socket buffer drops the
//! rest of a batch and counts it; the shard never blocks on the kernel (see
//! [`crate::io::batch`]).
//!
//! A transport belongs to one thread (`&mut self`, no lock). The parallel fan-out gives each
//! worker of the pool its own [`Transport::fork`]: the same socket and counters, its own queue,
//! flushed by that worker at the end of its share of the batch. No datagram takes a lock.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use tracing::debug;

use crate::io::batch::{send_batch, GsoState, SendOutcome, SendQueue, MAX_BATCH};

/// Where a shard's (or one fan-out worker's) outgoing datagrams go.
pub(crate) trait Transport: Send {
    /// Queues one datagram for `dest`; it leaves at the latest at the next [`Self::flush`].
    fn send_to(&mut self, data: &[u8], dest: SocketAddr) -> io::Result<()>;

    /// [`Self::send_to`] for a buffer the caller gives away (str0m's transmits): queued as it
    /// is, without a copy, where the transport can.
    fn send_owned(&mut self, data: Vec<u8>, dest: SocketAddr) -> io::Result<()> {
        self.send_to(&data, dest)
    }

    /// Queues one datagram for `dest` that `fill` writes in place into a zeroed slot of
    /// `max_len` bytes of the queue, returning the length it used (the lean audio path builds
    /// and seals its packets there: no copy). On `fill`'s error nothing is queued. The default
    /// fills a buffer of its own and hands it to [`Self::send_owned`].
    fn send_with(
        &mut self,
        max_len: usize,
        dest: SocketAddr,
        fill: &mut dyn FnMut(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<()> {
        let mut buf = vec![0; max_len];
        let len = fill(&mut buf)?;
        buf.truncate(len);
        self.send_owned(buf, dest)
    }

    /// Sends one packet over the ICE-TCP connection from `dest` (see `tcp`); without ICE-TCP
    /// there is none.
    fn send_tcp(&mut self, data: &[u8], dest: SocketAddr) -> io::Result<()> {
        let _ = (data, dest);
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Hands every queued datagram to the kernel (default: nothing is queued).
    fn flush(&mut self) {}

    /// Another transport to the same destinations with its own queue, for one worker of the
    /// parallel fan-out (it flushes its own queue).
    fn fork(&self) -> Box<dyn Transport>;
}

/// Egress figures of one shard's transport and its forks.
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
    socket: Arc<UdpSocket>,
    queue: SendQueue,
    batch: usize,
    gso: Arc<GsoState>,
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
        let batch = batch.clamp(1, MAX_BATCH);
        BatchTransport {
            socket: Arc::new(socket),
            queue: SendQueue::new(batch),
            batch,
            gso: Arc::new(GsoState::new(true)),
            counters,
        }
    }

    /// The same socket, GSO state and counters with an empty queue of its own.
    pub(crate) fn fork_batch(&self) -> BatchTransport {
        BatchTransport {
            socket: self.socket.clone(),
            queue: SendQueue::new(self.batch),
            batch: self.batch,
            gso: self.gso.clone(),
            counters: self.counters.clone(),
        }
    }

    fn send(&mut self) {
        let o = send_batch(&*self.socket, &mut self.queue, &self.gso);
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
    fn send_to(&mut self, data: &[u8], dest: SocketAddr) -> io::Result<()> {
        if self.queue.push(data, dest) {
            self.send();
        }
        Ok(())
    }

    fn send_owned(&mut self, data: Vec<u8>, dest: SocketAddr) -> io::Result<()> {
        if self.queue.push_owned(data, dest) {
            self.send();
        }
        Ok(())
    }

    fn send_with(
        &mut self,
        max_len: usize,
        dest: SocketAddr,
        fill: &mut dyn FnMut(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<()> {
        if self.queue.try_push_with(max_len, dest, fill)? {
            self.send();
        }
        Ok(())
    }

    fn flush(&mut self) {
        if !self.queue.is_empty() {
            self.send();
        }
    }

    fn fork(&self) -> Box<dyn Transport> {
        Box::new(self.fork_batch())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A receiving socket with a read timeout, its address, and a batch transport towards it
    /// with its counters.
    fn loopback_batch() -> (UdpSocket, SocketAddr, Arc<SendCounters>, BatchTransport) {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let dest = rx.local_addr().unwrap();
        let counters = Arc::new(SendCounters::default());
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let t = BatchTransport::new(sock, MAX_BATCH, counters.clone());
        (rx, dest, counters, t)
    }

    #[test]
    fn queued_datagrams_leave_at_flush_or_when_the_batch_is_full() {
        let (rx, dest, counters, mut t) = loopback_batch();
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

    #[test]
    fn datagrams_written_in_place_leave_with_the_others_and_a_failed_fill_queues_nothing() {
        let (rx, dest, counters, mut t) = loopback_batch();
        t.send_to(&[1; 10], dest).unwrap();
        let failed = t.send_with(100, dest, &mut |slot| {
            slot[..5].copy_from_slice(&[9; 5]);
            Err(io::ErrorKind::InvalidInput.into())
        });
        assert!(failed.is_err());
        t.send_with(100, dest, &mut |slot| {
            assert!(slot.iter().all(|b| *b == 0), "a zeroed slot");
            slot[..30].copy_from_slice(&[2; 30]);
            Ok(30)
        })
        .unwrap();
        t.send_to(&[3; 20], dest).unwrap();
        t.flush();
        assert_eq!(
            counters.sent.load(Relaxed),
            3,
            "the failed fill queued nothing"
        );
        let mut buf = [0u8; 200];
        for (len, byte) in [(10, 1), (30, 2), (20, 3)] {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(n, len);
            assert!(buf[..n].iter().all(|b| *b == byte));
        }
    }

    #[test]
    fn forks_keep_their_own_queue_and_share_the_counters() {
        let (rx, dest, counters, mut main) = loopback_batch();
        let mut a = main.fork();
        let mut b = main.fork();
        // Two workers queue at once, each on its own thread; nothing leaves before a flush.
        std::thread::scope(|s| {
            for (w, t) in [(1u8, &mut a), (2u8, &mut b)] {
                s.spawn(move || {
                    for _ in 0..10 {
                        t.send_to(&[w; 30], dest).unwrap();
                    }
                });
            }
        });
        main.send_owned(vec![3; 30], dest).unwrap();
        assert_eq!(
            counters.sent.load(Relaxed),
            0,
            "every queue waits for its flush"
        );
        a.flush();
        assert_eq!(counters.sent.load(Relaxed), 10, "only a's queue left");
        b.flush();
        main.flush();
        assert_eq!(counters.sent.load(Relaxed), 21);
        let mut buf = [0u8; 100];
        let mut by_worker = [0usize; 4];
        for _ in 0..21 {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(n, 30);
            by_worker[usize::from(buf[0])] += 1;
        }
        assert_eq!(by_worker, [0, 10, 10, 1]);
    }
}
