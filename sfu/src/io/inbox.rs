//! What a shard's thread waits on, and how others reach it.
//!
//! Every shard has a bounded queue ([`crate::demux::SHARD_QUEUE`] messages) for commands,
//! ICE-TCP packets, relay datagrams and, with several shards, the media datagrams the receive
//! thread routes to it ([`crate::demux`]). Senders hold a [`ShardTx`].
//!
//! With ONE shard there is no receive thread: the shard reads the media socket itself
//! ([`InboxSetup::with_socket`]). It sleeps in one `ppoll` on two file descriptors, the socket and an
//! eventfd (its *bell*), with the timeout of its next timer (nanosecond precision, as the
//! channel's wait before it). Every [`ShardTx`] send rings the bell after queueing its message,
//! so a command (a gate change), an ICE-TCP packet or a relay datagram wakes the shard at once.
//! A publisher's datagram thus costs one thread wake-up (the shard's), not two (the receive
//! thread's, then the shard's on its queue).
//!
//! Order and guarantees kept from the two-thread design:
//!
//! * The queue is read before the socket at every wake-up and between reads, so a command sent
//!   before a datagram arrives takes effect before that datagram is handled.
//! * The socket is read with a non-blocking `recvmmsg` (up to [`RX_BATCH`] datagrams into a
//!   pooled buffer, no copy), routed by the same [`Reader`] as the receive thread's: datagrams
//!   from unknown addresses that are not tagged STUN are dropped and counted
//!   (`greenroom_udp_unrouted_total`). A read that filled its batch is followed by another
//!   before the shard sleeps again (more may be queued); the kernel's socket buffer bounds what
//!   waits, and its drops are counted (`greenroom_udp_receive_drops_total`).
//! * Before a pass ends in a `sendmmsg`, a lone shard looks once more ([`Inbox::absorb`]: the
//!   queue, then a non-blocking `recvmmsg` whatever the last read got), so datagrams that
//!   arrived while it worked join this pass's send batch instead of waking it again for a pass
//!   (and a `sendmmsg`) of their own. The engine bounds how many such looks one pass takes.
//! * `ppoll` is level-triggered: a datagram or a ring that arrives while the shard works makes
//!   the next `ppoll` return at once; nothing is lost between the last check and the sleep.

use std::net::UdpSocket;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::mpsc::{
    Receiver, RecvTimeoutError, SendError, SyncSender, TryRecvError, TrySendError,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{ppoll, PollFd, PollFlags};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::time::TimeSpec;
use tracing::warn;

use crate::demux::{DemuxCounters, Reader, UfragMap};
use crate::engine::ShardMsg;
use crate::io::rx::{RxBatch, RX_BATCH};

/// The eventfd a lone shard sleeps on next to its socket: rung by every send to its queue.
#[derive(Debug)]
pub(crate) struct Bell(EventFd);

impl Bell {
    /// A fresh, non-blocking eventfd.
    pub(crate) fn new() -> std::io::Result<Arc<Bell>> {
        let fd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        Ok(Arc::new(Bell(fd)))
    }

    /// Wakes the shard (or makes its next `ppoll` return at once).
    fn ring(&self) {
        // EAGAIN only when the counter is at its maximum: the bell is already rung.
        if let Err(e) = self.0.write(1) {
            if e != Errno::EAGAIN {
                warn!("shard bell: {e}");
            }
        }
    }

    /// Resets the bell after a wake-up (the messages are in the queue).
    fn reset(&self) {
        // EAGAIN: not rung. Nothing else can fail on an eventfd we own.
        let _ = self.0.read();
    }
}

/// The sending side of a shard's queue: a bounded channel, and the shard's bell when it reads
/// the socket itself (rung after every message queued).
#[derive(Clone, Debug)]
pub(crate) struct ShardTx {
    tx: SyncSender<ShardMsg>,
    bell: Option<Arc<Bell>>,
}

impl ShardTx {
    /// A sender on `tx`, ringing `bell` (if any) after each message.
    pub(crate) fn new(tx: SyncSender<ShardMsg>, bell: Option<Arc<Bell>>) -> ShardTx {
        ShardTx { tx, bell }
    }

    /// Queues `msg` unless the queue is full or the shard gone (never blocks).
    // The error hands the message back, as std's `try_send` does: callers count what it held.
    #[allow(clippy::result_large_err)]
    pub(crate) fn try_send(&self, msg: ShardMsg) -> Result<(), TrySendError<ShardMsg>> {
        self.tx.try_send(msg)?;
        self.ring();
        Ok(())
    }

    /// Queues `msg`, waiting for room when the queue is full; fails only if the shard is gone.
    #[allow(clippy::result_large_err)]
    pub(crate) fn send(&self, msg: ShardMsg) -> Result<(), SendError<ShardMsg>> {
        self.tx.send(msg)?;
        self.ring();
        Ok(())
    }

    fn ring(&self) {
        if let Some(b) = &self.bell {
            b.ring();
        }
    }
}

/// Why [`Inbox::wait`] returned.
pub(crate) enum Woken {
    /// A message from the queue.
    Queue(ShardMsg),
    /// Datagrams the shard read from its socket itself.
    Socket(RxBatch),
    /// The timeout passed.
    Timeout,
    /// Every sender is gone: the shard stops.
    Closed,
}

/// A shard's socket, read by the shard itself (one shard only).
struct OwnSocket {
    socket: UdpSocket,
    bell: Arc<Bell>,
    reader: Reader,
    /// The last read filled its batch: more may be queued in the kernel.
    more: bool,
}

impl OwnSocket {
    /// One non-blocking read; the batch of what it routed to this shard, if anything.
    fn read(&mut self) -> Option<RxBatch> {
        let mut out = None;
        let n = self
            .reader
            .read(self.socket.as_raw_fd(), false, |_, batch| out = Some(batch));
        self.more = n >= RX_BATCH;
        out.filter(|b| !b.is_empty())
    }
}

/// What a shard's [`Inbox`] is made of, handed to its thread (which makes the inbox there:
/// `recvmmsg`'s headers are not `Send`).
pub(crate) struct InboxSetup {
    rx: Receiver<ShardMsg>,
    own: Option<(UdpSocket, Arc<Bell>, UfragMap, Arc<DemuxCounters>)>,
}

impl InboxSetup {
    /// A shard that gets everything through its queue (several shards, tests, the fuzz harness).
    pub(crate) fn queue(rx: Receiver<ShardMsg>) -> InboxSetup {
        InboxSetup { rx, own: None }
    }

    /// A lone shard that reads `socket` itself (routing as the receive thread would, for one
    /// shard, counting drops in `counters`) and whose senders ring `bell`.
    pub(crate) fn with_socket(
        rx: Receiver<ShardMsg>,
        socket: UdpSocket,
        bell: Arc<Bell>,
        untagged: UfragMap,
        counters: Arc<DemuxCounters>,
    ) -> InboxSetup {
        InboxSetup {
            rx,
            own: Some((socket, bell, untagged, counters)),
        }
    }

    /// The inbox, on the shard's thread.
    pub(crate) fn open(self) -> Inbox {
        Inbox {
            rx: self.rx,
            own: self
                .own
                .map(|(socket, bell, untagged, counters)| OwnSocket {
                    socket,
                    bell,
                    reader: Reader::new(1, untagged, counters),
                    more: false,
                }),
        }
    }
}

/// What a shard's thread waits on: its queue, and with one shard also the media socket.
pub(crate) struct Inbox {
    rx: Receiver<ShardMsg>,
    own: Option<OwnSocket>,
}

impl Inbox {
    /// Waits up to `timeout` for a message or (lone shard) datagrams. Queued messages come
    /// first. A lone shard woken for nothing (a ring whose message it already took, datagrams
    /// that were all garbage) sleeps again until the timeout.
    pub(crate) fn wait(&mut self, timeout: Duration) -> Woken {
        let Some(own) = &mut self.own else {
            return match self.rx.recv_timeout(timeout) {
                Ok(msg) => Woken::Queue(msg),
                Err(RecvTimeoutError::Timeout) => Woken::Timeout,
                Err(RecvTimeoutError::Disconnected) => Woken::Closed,
            };
        };
        let deadline = Instant::now() + timeout;
        loop {
            match self.rx.try_recv() {
                Ok(msg) => return Woken::Queue(msg),
                Err(TryRecvError::Disconnected) => return Woken::Closed,
                Err(TryRecvError::Empty) => {}
            }
            if own.more {
                if let Some(batch) = own.read() {
                    return Woken::Socket(batch);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let (rung, readable) = {
                let mut fds = [
                    PollFd::new(own.socket.as_fd(), PollFlags::POLLIN),
                    PollFd::new(own.bell.0.as_fd(), PollFlags::POLLIN),
                ];
                match ppoll(&mut fds, Some(TimeSpec::from_duration(left)), None) {
                    Ok(0) => return Woken::Timeout,
                    Ok(_) => {
                        // Any event on the socket (an error too) is served by a read.
                        let fired = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
                        (fired(&fds[1]), fired(&fds[0]))
                    }
                    Err(Errno::EINTR) => (false, false),
                    Err(e) => {
                        warn!("shard poll failed: {e}");
                        std::thread::sleep(Duration::from_millis(1));
                        return Woken::Timeout;
                    }
                }
            };
            // The queue first: its messages were sent before these datagrams were read.
            if rung {
                own.bell.reset();
                match self.rx.try_recv() {
                    Ok(msg) => return Woken::Queue(msg),
                    Err(TryRecvError::Disconnected) => return Woken::Closed,
                    Err(TryRecvError::Empty) => {}
                }
            }
            if readable {
                if let Some(batch) = own.read() {
                    return Woken::Socket(batch);
                }
            }
            if Instant::now() >= deadline {
                return Woken::Timeout;
            }
        }
    }

    /// A lone shard's last look before its sends leave (see [`crate::engine`]'s run loop): what
    /// arrived while it worked, without waiting. A queued message first (a gate change takes
    /// effect before the datagrams read after it), else one non-blocking `recvmmsg` of the
    /// socket, whether or not the last read filled its batch. `None` when nothing arrived (or
    /// only garbage, dropped and counted), and always for a queue-only inbox: its messages
    /// are taken by [`Inbox::try_next`] while the shard works.
    pub(crate) fn absorb(&mut self) -> Option<ShardMsg> {
        let own = self.own.as_mut()?;
        if let Ok(msg) = self.rx.try_recv() {
            return Some(msg);
        }
        own.read().map(ShardMsg::Datagrams)
    }

    /// What is ready without waiting: a queued message first, else (lone shard) datagrams if
    /// the last read filled its batch. `None` when nothing is (or the queue closed: the next
    /// [`Inbox::wait`] says so).
    pub(crate) fn try_next(&mut self) -> Option<ShardMsg> {
        if let Ok(msg) = self.rx.try_recv() {
            return Some(msg);
        }
        let own = self.own.as_mut()?;
        if !own.more {
            return None;
        }
        own.read().map(ShardMsg::Datagrams)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demux::tests::stun;
    use std::net::SocketAddr;
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::mpsc::sync_channel;

    /// Longer than any wake-up takes on a loaded machine: a wait that times out means the
    /// shard was not woken.
    const LONG: Duration = Duration::from_secs(10);

    struct Lone {
        inbox: Inbox,
        tx: ShardTx,
        server: SocketAddr,
        counters: Arc<DemuxCounters>,
    }

    fn lone() -> Lone {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let server = socket.local_addr().unwrap();
        let (tx, rx) = sync_channel(crate::demux::SHARD_QUEUE);
        let bell = Bell::new().unwrap();
        let counters = Arc::new(DemuxCounters::default());
        let inbox = InboxSetup::with_socket(
            rx,
            socket,
            bell.clone(),
            UfragMap::default(),
            counters.clone(),
        )
        .open();
        Lone {
            inbox,
            tx: ShardTx::new(tx, Some(bell)),
            server,
            counters,
        }
    }

    fn tcp(n: u32) -> ShardMsg {
        ShardMsg::TcpPacket {
            data: n.to_be_bytes().to_vec(),
            src: SocketAddr::from(([127, 0, 0, 1], 9)),
        }
    }

    fn tcp_n(w: Woken) -> u32 {
        match w {
            Woken::Queue(ShardMsg::TcpPacket { data, .. }) => {
                u32::from_be_bytes(data.try_into().unwrap())
            }
            Woken::Queue(_) => panic!("another message"),
            Woken::Socket(_) => panic!("datagrams, not a message"),
            Woken::Timeout => panic!("timed out: not woken"),
            Woken::Closed => panic!("closed"),
        }
    }

    fn datagrams(w: Woken) -> Vec<Vec<u8>> {
        match w {
            Woken::Socket(b) => b.iter().map(|(d, _)| d.to_vec()).collect(),
            Woken::Queue(_) => panic!("a message, not datagrams"),
            Woken::Timeout => panic!("timed out: not woken"),
            Woken::Closed => panic!("closed"),
        }
    }

    #[test]
    fn a_message_sent_while_the_shard_sleeps_on_its_socket_wakes_it() {
        let mut l = lone();
        let tx = l.tx.clone();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            tx.send(tcp(7)).unwrap();
        });
        assert_eq!(tcp_n(l.inbox.wait(LONG)), 7);
        sender.join().unwrap();
    }

    #[test]
    fn messages_raced_against_the_sleep_are_never_lost() {
        let mut l = lone();
        for round in 0..300u32 {
            let tx = l.tx.clone();
            // The send and the wait start together: the message lands before the queue check,
            // between it and ppoll, or during ppoll.
            let sender = std::thread::spawn(move || tx.try_send(tcp(round)).unwrap());
            assert_eq!(tcp_n(l.inbox.wait(LONG)), round);
            sender.join().unwrap();
        }
        assert!(l.inbox.try_next().is_none(), "one message per round");
    }

    #[test]
    fn the_timeout_wakes_a_shard_with_nothing_to_do() {
        let mut l = lone();
        assert!(matches!(
            l.inbox.wait(Duration::from_millis(20)),
            Woken::Timeout
        ));
        // A ring already served (its message taken by try_next) wakes for nothing.
        l.tx.send(tcp(1)).unwrap();
        assert!(l.inbox.try_next().is_some());
        assert!(matches!(
            l.inbox.wait(Duration::from_millis(20)),
            Woken::Timeout
        ));
        assert!(matches!(
            l.inbox.wait(Duration::from_millis(20)),
            Woken::Timeout
        ));
    }

    #[test]
    fn a_datagram_wakes_the_shard_and_garbage_is_dropped_and_counted() {
        let mut l = lone();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
        let server = l.server;
        let c = client.try_clone().unwrap();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            c.send_to(&stun("g000abcd:cl"), server).unwrap();
        });
        assert_eq!(datagrams(l.inbox.wait(LONG)), vec![stun("g000abcd:cl")]);
        sender.join().unwrap();
        // Garbage from an unknown address wakes the shard, which drops it (counted) and
        // sleeps again; the known client's RTP that follows arrives.
        stranger.send_to(&[0x80, 1, 2, 3], server).unwrap();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            client.send_to(&[0x80, 9, 9, 9], server).unwrap();
        });
        assert_eq!(datagrams(l.inbox.wait(LONG)), vec![vec![0x80, 9, 9, 9]]);
        sender.join().unwrap();
        assert_eq!(l.counters.unrouted.load(Relaxed), 1);
    }

    #[test]
    fn queued_messages_come_before_datagrams_and_full_reads_are_followed_up() {
        let mut l = lone();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.send_to(&stun("g000abcd:cl"), l.server).unwrap();
        assert_eq!(datagrams(l.inbox.wait(LONG)).len(), 1);
        // More datagrams than one read takes, then a message: the message first.
        let n = RX_BATCH + 8;
        for i in 0..n {
            client.send_to(&[0x80, 0, 0, i as u8], l.server).unwrap();
        }
        // Loopback delivers in order, within the send; a pause for good measure.
        std::thread::sleep(Duration::from_millis(50));
        l.tx.send(tcp(3)).unwrap();
        assert_eq!(tcp_n(l.inbox.wait(LONG)), 3);
        let mut got = datagrams(l.inbox.wait(LONG));
        assert_eq!(got.len(), RX_BATCH, "one read takes a full batch");
        // The rest without sleeping: try_next follows a full read up.
        match l.inbox.try_next() {
            Some(ShardMsg::Datagrams(b)) => got.extend(b.iter().map(|(d, _)| d.to_vec())),
            _ => panic!("the rest of the queue was not read"),
        }
        let seq: Vec<u8> = got.iter().map(|d| d[3]).collect();
        assert_eq!(seq, (0..n as u8).collect::<Vec<u8>>());
        assert!(
            l.inbox.try_next().is_none(),
            "a short read ends the follow-up"
        );
    }

    fn one_datagram(msg: Option<ShardMsg>) -> Vec<u8> {
        match msg {
            Some(ShardMsg::Datagrams(b)) => {
                assert_eq!(b.len(), 1, "one datagram");
                b.get(0).map(|(d, _)| d.to_vec()).unwrap()
            }
            Some(_) => panic!("a message, not datagrams"),
            None => panic!("nothing absorbed"),
        }
    }

    /// Absorbs until something comes (loopback usually queues a datagram within send_to, but a
    /// loaded machine may defer it): never through [`Inbox::wait`].
    fn absorb_soon(inbox: &mut Inbox) -> Option<ShardMsg> {
        let deadline = Instant::now() + LONG;
        loop {
            if let Some(msg) = inbox.absorb() {
                return Some(msg);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::yield_now();
        }
    }

    /// A lone shard woken by a known client's first datagram, and that client.
    fn lone_with_client() -> (Lone, UdpSocket) {
        let mut l = lone();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.send_to(&stun("g000abcd:cl"), l.server).unwrap();
        assert_eq!(datagrams(l.inbox.wait(LONG)).len(), 1);
        (l, client)
    }

    #[test]
    fn a_datagram_that_arrives_during_a_pass_joins_it_before_the_flush() {
        let (mut l, client) = lone_with_client();
        // The pass runs; a datagram arrives (loopback queues it within send_to).
        client.send_to(&[0x80, 0, 0, 1], l.server).unwrap();
        // The last read was short: try_next does not look at the socket, absorb does.
        assert!(l.inbox.try_next().is_none());
        assert_eq!(one_datagram(absorb_soon(&mut l.inbox)), vec![0x80, 0, 0, 1]);
        assert!(l.inbox.absorb().is_none(), "read once");
        // A message queued during the pass comes before a datagram that arrived after it.
        l.tx.send(tcp(4)).unwrap();
        client.send_to(&[0x80, 0, 0, 2], l.server).unwrap();
        assert!(matches!(
            l.inbox.absorb(),
            Some(ShardMsg::TcpPacket { data, .. }) if data == 4u32.to_be_bytes()
        ));
        assert_eq!(one_datagram(absorb_soon(&mut l.inbox)), vec![0x80, 0, 0, 2]);
        // Garbage is dropped and counted there too, and absorbs nothing.
        let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
        stranger.send_to(&[0x80, 7], l.server).unwrap();
        assert!(l.inbox.absorb().is_none());
        assert_eq!(l.counters.unrouted.load(Relaxed), 1);
        // Nothing left for the next sleep but the bell rung by the absorbed message.
        assert!(matches!(
            l.inbox.wait(Duration::from_millis(20)),
            Woken::Timeout
        ));
    }

    #[test]
    fn datagrams_raced_against_the_absorbing_read_are_never_lost() {
        let (mut l, client) = lone_with_client();
        let client = Arc::new(client);
        for round in 0..300u32 {
            let c = client.clone();
            let server = l.server;
            // The datagram lands before the absorbing read, during it, or after it, as the
            // engine does it: absorb, and if nothing came, sleep.
            let sender = std::thread::spawn(move || {
                c.send_to(&round.to_be_bytes(), server).unwrap();
            });
            let got = match l.inbox.absorb() {
                Some(msg) => one_datagram(Some(msg)),
                // Not there yet: the shard flushes and sleeps, and the sleep gets it.
                None => datagrams(l.inbox.wait(LONG)).concat(),
            };
            sender.join().unwrap();
            assert_eq!(got, round.to_be_bytes(), "round {round}");
        }
        assert!(l.inbox.absorb().is_none(), "each datagram once");
        assert_eq!(l.counters.unrouted.load(Relaxed), 0);
    }

    #[test]
    fn a_queue_only_inbox_absorbs_nothing() {
        let (tx, rx) = sync_channel(4);
        let tx = ShardTx::new(tx, None);
        let mut inbox = InboxSetup::queue(rx).open();
        tx.send(tcp(1)).unwrap();
        assert!(inbox.absorb().is_none(), "try_next takes it");
        assert_eq!(tcp_n(Woken::Queue(inbox.try_next().unwrap())), 1);
    }

    #[test]
    fn the_inbox_closes_when_every_sender_is_gone() {
        let Lone { mut inbox, tx, .. } = lone();
        drop(tx);
        assert!(matches!(inbox.wait(LONG), Woken::Closed));
    }

    #[test]
    fn a_queue_only_inbox_waits_on_its_channel() {
        let (tx, rx) = sync_channel(4);
        let tx = ShardTx::new(tx, None);
        let mut inbox = InboxSetup::queue(rx).open();
        assert!(matches!(
            inbox.wait(Duration::from_millis(10)),
            Woken::Timeout
        ));
        let t = tx.clone();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            t.send(tcp(5)).unwrap();
        });
        assert_eq!(tcp_n(inbox.wait(LONG)), 5);
        sender.join().unwrap();
        drop(tx);
        assert!(matches!(inbox.wait(LONG), Woken::Closed));
    }
}
