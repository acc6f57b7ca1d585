//! Batched UDP egress: datagrams are queued ([`SendQueue`]) and handed to the kernel with one
//! `sendmmsg` per batch, and runs of equal-size datagrams to one destination (the packets of a
//! video frame to one subscriber) with one UDP GSO `sendmsg` each ([`send_batch`]).
//!
//! Never blocks: every call passes `MSG_DONTWAIT`. When the socket's send buffer is full
//! (`EAGAIN`), the rest of the batch is dropped and counted ([`SendOutcome::would_block`]); a
//! datagram the kernel refuses for any other reason (an unreachable destination, ICMP errors
//! reported on the socket) is dropped alone and counted ([`SendOutcome::failed`]), and the rest
//! of the batch still goes out. Media is real-time: a shard never waits for the kernel, and
//! RTP's receivers recover from the loss (NACK/RTX, FEC, PLI) as they do from network loss.
//!
//! GSO is tried once per socket: if the kernel refuses it (`EINVAL`, `EIO`, `ENOTSUP` ...), it is
//! turned off for that socket ([`GsoState`]) and the run is sent datagram by datagram.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use nix::errno::Errno;
use nix::sys::socket::{
    sendmmsg, sendmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage,
};

/// Datagrams per `sendmmsg` (and the default capacity of a [`SendQueue`]).
pub const MAX_BATCH: usize = 64;
/// Most bytes one GSO send carries (the kernel's limit is 64 KiB including headers).
const GSO_MAX_BYTES: usize = 60_000;
/// Most segments in one GSO send (the kernel's `UDP_MAX_SEGMENTS` is 64 on older kernels).
const GSO_MAX_SEGMENTS: usize = 64;

/// Outgoing datagrams waiting for [`send_batch`]: copies in one contiguous buffer (no
/// allocation per datagram once the queue has grown to its capacity), or buffers handed over
/// whole ([`SendQueue::push_owned`]: str0m's transmits, no copy).
#[derive(Debug)]
pub struct SendQueue {
    buf: Vec<u8>,
    owned: Vec<Vec<u8>>,
    items: Vec<Item>,
    capacity: usize,
}

/// Where one queued datagram is: `buf[start..start + len]`, or `owned[start]` when `owned`.
#[derive(Debug, Clone, Copy)]
struct Item {
    start: usize,
    len: usize,
    owned: bool,
    dest: SocketAddr,
}

impl SendQueue {
    /// An empty queue for up to `capacity` datagrams (at least 1).
    pub fn new(capacity: usize) -> SendQueue {
        let capacity = capacity.max(1);
        SendQueue {
            buf: Vec::with_capacity(capacity * 256),
            owned: Vec::with_capacity(capacity),
            items: Vec::with_capacity(capacity),
            capacity,
        }
    }

    /// Queues `data` itself (no copy; it is freed once sent) for `dest`; returns true when the
    /// queue is now full.
    pub fn push_owned(&mut self, data: Vec<u8>, dest: SocketAddr) -> bool {
        self.items.push(Item {
            start: self.owned.len(),
            len: data.len(),
            owned: true,
            dest,
        });
        self.owned.push(data);
        self.is_full()
    }

    /// The bytes of item `i`.
    fn bytes(&self, i: usize) -> &[u8] {
        let it = self.items[i];
        if it.owned {
            &self.owned[it.start]
        } else {
            &self.buf[it.start..it.start + it.len]
        }
    }

    /// Queues a copy of `data` for `dest`; returns true when the queue is now full (the caller
    /// sends it before queueing more).
    pub fn push(&mut self, data: &[u8], dest: SocketAddr) -> bool {
        let start = self.buf.len();
        self.buf.extend_from_slice(data);
        self.items.push(Item {
            start,
            len: data.len(),
            owned: false,
            dest,
        });
        self.is_full()
    }

    /// Queues a datagram written in place by `fill` into a zeroed slot of `max_len` bytes;
    /// `fill` returns the length it used. Returns true when the queue is now full.
    pub fn push_with(
        &mut self,
        max_len: usize,
        dest: SocketAddr,
        fill: impl FnOnce(&mut [u8]) -> usize,
    ) -> bool {
        let full: Result<bool, std::convert::Infallible> =
            self.try_push_with(max_len, dest, |slot| Ok(fill(slot)));
        full.unwrap_or_else(|never| match never {})
    }

    /// [`SendQueue::push_with`] for a `fill` that may fail: on its error nothing is queued
    /// (the slot is given back) and the error is returned. Otherwise whether the queue is now
    /// full.
    pub fn try_push_with<E>(
        &mut self,
        max_len: usize,
        dest: SocketAddr,
        fill: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<bool, E> {
        let start = self.buf.len();
        self.buf.resize(start + max_len, 0);
        let len = match fill(&mut self.buf[start..]) {
            Ok(len) => len.min(max_len),
            Err(e) => {
                self.buf.truncate(start);
                return Err(e);
            }
        };
        self.buf.truncate(start + len);
        self.items.push(Item {
            start,
            len,
            owned: false,
            dest,
        });
        Ok(self.is_full())
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Nothing queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The queue holds `capacity` datagrams.
    pub fn is_full(&self) -> bool {
        self.items.len() >= self.capacity
    }

    /// Forgets every queued datagram (keeps the copy buffer's memory; frees the handed-over
    /// ones).
    pub fn clear(&mut self) {
        self.items.clear();
        self.buf.clear();
        self.owned.clear();
    }

    /// The queued datagrams, in order.
    pub fn datagrams(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> + '_ {
        (0..self.items.len()).map(|i| (self.bytes(i), self.items[i].dest))
    }

    /// How the queue goes out: GSO runs and single datagrams, in queue order.
    fn plan(&self, gso: bool) -> Vec<Chunk> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.items.len() {
            let first = self.items[i];
            let mut end = i + 1;
            if gso && first.len > 0 {
                let mut bytes = first.len;
                while end < self.items.len() && end - i < GSO_MAX_SEGMENTS {
                    let next = self.items[end];
                    // Equal segments to one place; the last may be shorter (then the run ends).
                    if next.dest != first.dest
                        || next.len > first.len
                        || next.len == 0
                        || bytes + next.len > GSO_MAX_BYTES
                        || self.items[end - 1].len != first.len
                    {
                        break;
                    }
                    bytes += next.len;
                    end += 1;
                }
            }
            if end - i >= 2 {
                out.push(Chunk::Gso {
                    first: i,
                    count: end - i,
                });
            } else {
                out.push(Chunk::Single(i));
            }
            i = end;
        }
        out
    }
}

/// One piece of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Items `first..first + count`: one GSO send of `count` segments.
    Gso { first: usize, count: usize },
    /// One item, batched with other singles into `sendmmsg`.
    Single(usize),
}

/// Whether a socket still uses GSO (turned off for good at the kernel's first refusal).
#[derive(Debug)]
pub struct GsoState(AtomicBool);

impl GsoState {
    /// GSO on where the platform has it (Linux), off elsewhere.
    pub fn new(enabled: bool) -> GsoState {
        GsoState(AtomicBool::new(enabled && cfg!(target_os = "linux")))
    }

    /// GSO is in use.
    pub fn enabled(&self) -> bool {
        self.0.load(Relaxed)
    }
}

/// What one [`send_batch`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendOutcome {
    /// Datagrams the kernel accepted.
    pub sent: u64,
    /// Datagrams dropped because the send buffer was full (`EAGAIN`).
    pub would_block: u64,
    /// Datagrams dropped because the kernel refused them (any other error).
    pub failed: u64,
    /// System calls made.
    pub syscalls: u64,
    /// Datagrams that went out inside GSO sends.
    pub gso_datagrams: u64,
    /// Bytes of the datagrams the kernel accepted.
    pub bytes: u64,
}

/// Sends every datagram of `queue` on `socket` without blocking (see the module docs) and
/// clears the queue.
pub fn send_batch(socket: &impl AsRawFd, queue: &mut SendQueue, gso: &GsoState) -> SendOutcome {
    let mut out = SendOutcome::default();
    if queue.is_empty() {
        return out;
    }
    let fd = socket.as_raw_fd();
    let plan = queue.plan(gso.enabled());
    let mut singles: Vec<usize> = Vec::with_capacity(queue.len());
    let mut blocked = false;
    for chunk in plan {
        if blocked {
            out.would_block += match chunk {
                Chunk::Gso { count, .. } => count as u64,
                Chunk::Single(_) => 1,
            };
            continue;
        }
        match chunk {
            Chunk::Single(i) => {
                singles.push(i);
                if singles.len() >= MAX_BATCH {
                    blocked = send_singles(fd, queue, &singles, &mut out);
                    singles.clear();
                }
            }
            Chunk::Gso { first, count } => {
                // Keep the order per destination: the singles queued before go first.
                if !singles.is_empty() {
                    blocked = send_singles(fd, queue, &singles, &mut out);
                    singles.clear();
                    if blocked {
                        out.would_block += count as u64;
                        continue;
                    }
                }
                match send_gso(fd, queue, first, count) {
                    Ok(()) => {
                        out.syscalls += 1;
                        out.sent += count as u64;
                        out.gso_datagrams += count as u64;
                        out.bytes += (first..first + count)
                            .map(|i| queue.items[i].len as u64)
                            .sum::<u64>();
                    }
                    Err(Errno::EAGAIN) => {
                        out.syscalls += 1;
                        out.would_block += count as u64;
                        blocked = true;
                    }
                    Err(_) => {
                        // The kernel (or the device) refuses GSO: never again on this socket.
                        out.syscalls += 1;
                        gso.0.store(false, Relaxed);
                        let run: Vec<usize> = (first..first + count).collect();
                        blocked = send_singles(fd, queue, &run, &mut out);
                    }
                }
            }
        }
    }
    if !singles.is_empty() {
        if blocked {
            out.would_block += singles.len() as u64;
        } else {
            send_singles(fd, queue, &singles, &mut out);
        }
    }
    queue.clear();
    out
}

/// One GSO send of items `first..first + count` (one I/O slice per segment: the kernel cuts
/// the concatenation at the segment size).
fn send_gso(fd: i32, queue: &SendQueue, first: usize, count: usize) -> Result<(), Errno> {
    let a = queue.items[first];
    let slices: Vec<IoSlice<'_>> = (first..first + count)
        .map(|i| IoSlice::new(queue.bytes(i)))
        .collect();
    let seg = u16::try_from(a.len).map_err(|_| Errno::EMSGSIZE)?;
    let addr = SockaddrStorage::from(a.dest);
    let cmsgs = [ControlMessage::UdpGsoSegments(&seg)];
    sendmsg(fd, &slices, &cmsgs, MsgFlags::MSG_DONTWAIT, Some(&addr)).map(|_| ())
}

/// `sendmmsg` of the given items; returns true if the socket's buffer is full (`EAGAIN`): the
/// items not sent are counted as dropped.
fn send_singles(fd: i32, queue: &SendQueue, which: &[usize], out: &mut SendOutcome) -> bool {
    let mut at = 0;
    while at < which.len() {
        let rest = &which[at..];
        let slices: Vec<[IoSlice<'_>; 1]> = rest
            .iter()
            .map(|&i| [IoSlice::new(queue.bytes(i))])
            .collect();
        let addrs: Vec<Option<SockaddrStorage>> = rest
            .iter()
            .map(|&i| Some(SockaddrStorage::from(queue.items[i].dest)))
            .collect();
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(rest.len(), None);
        let res = sendmmsg(
            fd,
            &mut headers,
            &slices,
            &addrs,
            [] as [ControlMessage<'_>; 0],
            MsgFlags::MSG_DONTWAIT,
        )
        .map(|r| r.count());
        out.syscalls += 1;
        match res {
            Ok(0) => {
                // Nothing taken without an error: treat as a full buffer rather than spin.
                out.would_block += rest.len() as u64;
                return true;
            }
            Ok(n) => {
                out.sent += n as u64;
                out.bytes += rest[..n]
                    .iter()
                    .map(|&i| queue.items[i].len as u64)
                    .sum::<u64>();
                at += n;
            }
            Err(Errno::EAGAIN) => {
                out.would_block += rest.len() as u64;
                return true;
            }
            Err(Errno::EINTR) => {}
            Err(_) => {
                // The first remaining datagram was refused: drop it alone.
                out.failed += 1;
                at += 1;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::Duration;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn queue_of(items: &[(usize, u16)]) -> SendQueue {
        let mut q = SendQueue::new(64);
        for (n, (len, port)) in items.iter().enumerate() {
            q.push(&vec![n as u8; *len], addr(*port));
        }
        q
    }

    #[test]
    fn gso_runs_are_equal_sizes_to_one_destination_with_a_shorter_last() {
        let q = queue_of(&[
            (1200, 1),
            (1200, 1),
            (900, 1), // shorter last segment ends the run
            (1200, 1),
            (100, 2),
            (100, 3),
            (100, 3),
            (200, 3), // longer: not in the run
        ]);
        assert_eq!(
            q.plan(true),
            vec![
                Chunk::Gso { first: 0, count: 3 },
                Chunk::Single(3),
                Chunk::Single(4),
                Chunk::Gso { first: 5, count: 2 },
                Chunk::Single(7),
            ]
        );
        assert!(q.plan(false).iter().all(|c| matches!(c, Chunk::Single(_))));
        // A run never exceeds the byte bound.
        let big = queue_of(&[(1400, 9); 60]);
        let plan = big.plan(true);
        assert!(plan.len() >= 2, "{plan:?}");
        for c in plan {
            if let Chunk::Gso { count, .. } = c {
                assert!(count * 1400 <= GSO_MAX_BYTES);
            }
        }
    }

    fn receive_all(rx: &UdpSocket, want: usize) -> Vec<Vec<u8>> {
        rx.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout is non-zero");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.len() < want {
            match rx.recv(&mut buf) {
                Ok(n) => got.push(buf[..n].to_vec()),
                Err(_) => break,
            }
        }
        got
    }

    #[test]
    fn a_batch_arrives_whole_and_in_order_with_and_without_gso() {
        for gso_on in [true, false] {
            let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
            let a = UdpSocket::bind("127.0.0.1:0").unwrap();
            let b = UdpSocket::bind("127.0.0.1:0").unwrap();
            let (pa, pb) = (a.local_addr().unwrap(), b.local_addr().unwrap());
            let mut q = SendQueue::new(64);
            // A frame of 5 to `a`, then 10 equal ones to `b` (two GSO runs), then one more to `a`.
            for i in 0..5u8 {
                q.push(&[i; 1000], pa);
            }
            for i in 0..10u8 {
                // Copies and handed-over buffers mix, in one GSO run too.
                if i % 2 == 0 {
                    q.push(&[100 + i; 80], pb);
                } else {
                    q.push_owned(vec![100 + i; 80], pb);
                }
            }
            q.push(&[9; 300], pa);
            let gso = GsoState::new(gso_on);
            let out = send_batch(&tx, &mut q, &gso);
            assert!(q.is_empty());
            assert_eq!(out.sent, 16, "{out:?}");
            assert_eq!(out.bytes, 5 * 1000 + 10 * 80 + 300, "{out:?}");
            assert_eq!(out.would_block + out.failed, 0);
            if gso.enabled() {
                assert_eq!(out.gso_datagrams, 5 + 10, "{out:?}");
            }
            assert!(out.syscalls <= 3, "{out:?}");
            let got_a = receive_all(&a, 6);
            let sizes: Vec<usize> = got_a.iter().map(Vec::len).collect();
            assert_eq!(sizes, vec![1000, 1000, 1000, 1000, 1000, 300]);
            for (i, d) in got_a.iter().take(5).enumerate() {
                assert!(d.iter().all(|x| *x == i as u8));
            }
            let got_b = receive_all(&b, 10);
            let firsts: Vec<u8> = got_b.iter().map(|d| d[0]).collect();
            assert_eq!(firsts, (100..110).collect::<Vec<u8>>());
        }
    }

    #[test]
    fn a_full_send_buffer_drops_and_counts_without_blocking() {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket2::SockRef::from(&tx)
            .set_send_buffer_size(4096)
            .unwrap();
        // Nobody drains `rx` and its receive buffer is small: sends pile up in tx's buffer
        // until the kernel says EAGAIN (loopback delivers synchronously, so the receive
        // side's drops may absorb them instead; either way nothing blocks).
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket2::SockRef::from(&rx).set_recv_buffer_size(1).unwrap();
        let dest = rx.local_addr().unwrap();
        let gso = GsoState::new(false);
        let mut total = SendOutcome::default();
        for _ in 0..200 {
            let mut q = SendQueue::new(64);
            for _ in 0..64 {
                q.push(&[7; 1200], dest);
            }
            let o = send_batch(&tx, &mut q, &gso);
            total.sent += o.sent;
            total.would_block += o.would_block;
            total.failed += o.failed;
        }
        assert_eq!(total.sent + total.would_block + total.failed, 200 * 64);
    }

    #[test]
    fn a_refused_datagram_is_dropped_alone() {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut q = SendQueue::new(8);
        q.push(&[1; 10], rx.local_addr().unwrap());
        // An IPv6 destination on an IPv4 socket: EAFNOSUPPORT / EINVAL for this one.
        q.push(&[2; 10], "[::1]:9".parse().unwrap());
        q.push(&[3; 10], rx.local_addr().unwrap());
        let out = send_batch(&tx, &mut q, &GsoState::new(false));
        assert_eq!((out.sent, out.failed, out.bytes), (2, 1, 20), "{out:?}");
        let got = receive_all(&rx, 2);
        assert_eq!(got, vec![vec![1; 10], vec![3; 10]]);
    }
}
