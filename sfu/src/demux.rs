//! The UDP demultiplexer in front of the engine shards.
//!
//! Every peer of every shard shares ONE UDP port. With several shards, one receive thread owns
//! the reading side of the socket and hands each datagram to the shard that owns its peer; with
//! one shard, that shard reads the socket itself with the same [`Reader`] (see
//! [`crate::io::inbox`]: one wake-up per datagram instead of two). Routing:
//!
//! * A STUN binding request names the server's ICE ufrag in its USERNAME (`server:client`).
//!   Every server-side peer gets a ufrag that starts with its shard's tag ([`shard_ufrag`]), so
//!   the first datagram of a new peer (always STUN) is routed by that tag, and the source
//!   address is remembered.
//! * Every other datagram (DTLS, SRTP, SRTCP) is routed by its source address.
//! * Datagrams from unknown addresses that are not tagged STUN are dropped and counted
//!   (`greenroom_udp_unrouted_total`): garbage never reaches a shard, with one shard as with
//!   many.
//! * Each shard's queue is bounded ([`SHARD_QUEUE`] messages: batches of datagrams and
//!   commands): when a shard falls behind, datagrams for it are dropped and counted
//!   (`greenroom_udp_queue_dropped_total`, per datagram) instead of growing memory; a shard that
//!   died (see `engine::spawn`) gets nothing, and the others are still served.
//! * The address map is bounded too ([`MAX_ADDRS`]); this map is only a routing hint: the shard
//!   itself routes non-STUN datagrams only from addresses a peer validated (see `routes`).
//!
//! A client-initiated ICE restart makes str0m pick fresh random credentials for the answer,
//! without the tag; the shard then registers that ufrag in a shared map ([`UfragMap`]) that the
//! receive thread consults for untagged STUN only (rare: restarts and their consent checks).
//!
//! STUN is routed by its tag every time (not by the cached address), so an address that moves
//! to a peer on another shard (a client that rejoins into a call on another shard from the same
//! port) follows at its first consent check. Addresses not seen for [`FORGET_AFTER`] are
//! forgotten. The shards send on clones of the same socket themselves.
//!
//! The thread reads with `recvmmsg`: it sleeps until one datagram arrives, then takes every
//! datagram already queued (up to [`RX_BATCH`]) in the same system call, into the slots of a
//! pooled buffer ([`crate::io::rx`]). Each shard gets the datagrams of one `recvmmsg` as ONE
//! message, so it wakes once per batch, not once per datagram. When they all go to one shard
//! (always with one shard), the buffer itself is handed over and the thread takes a spare one
//! from the pool: no copy between the kernel and the shard. Otherwise each datagram is copied
//! once, at its own length, into its shard's batch. The shard returns the buffer to the pool
//! when it has handled the batch. Memory in flight is bounded by [`SHARD_QUEUE`] batches of
//! 64 KiB per shard.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::TrySendError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::MsgFlags;
use parking_lot::RwLock;
use str0m::IceCreds;
use tracing::debug;

use crate::engine::ShardMsg;
use crate::io::inbox::ShardTx;
use crate::io::recv::BatchReceiver;
use crate::io::rx::{RxBatch, RxPool, RX_BATCH};
use crate::metrics::add;

/// A cached address not seen for this long is forgotten.
pub(crate) const FORGET_AFTER: Duration = Duration::from_secs(60);
/// Messages (batches of up to [`RX_BATCH`] datagrams, commands) waiting for one shard; beyond
/// this, datagrams are dropped.
pub(crate) const SHARD_QUEUE: usize = 256;
/// Spare ingress buffers the receive thread keeps (64 KiB each).
const SPARE_BUFFERS: usize = 32;
/// Source addresses the receive thread remembers at most (STUN is routed by tag regardless).
pub(crate) const MAX_ADDRS: usize = 65_536;
/// The receive thread looks at its stop flag at least this often.
const POLL: Duration = Duration::from_millis(200);

/// Server ufrags without a shard tag (after a client's ICE restart) -> their shard.
pub(crate) type UfragMap = Arc<RwLock<HashMap<String, usize>>>;

/// The ufrag prefix that names a shard: `g` and the shard index as three decimal digits.
const TAG_LEN: usize = 4;

/// Fresh local ICE credentials for a peer of `shard` (random, with the shard tag in front).
pub(crate) fn shard_ufrag(shard: usize) -> IceCreds {
    let mut creds = IceCreds::new();
    creds.ufrag = format!("g{:03}{}", shard % 1000, creds.ufrag);
    creds
}

/// The shard named by a server ufrag made by [`shard_ufrag`].
pub(crate) fn shard_of_ufrag(ufrag: &str) -> Option<usize> {
    let tag = ufrag.get(..TAG_LEN)?;
    let digits = tag.strip_prefix('g')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The local (server) part of the USERNAME attribute of a STUN message, if `data` is one.
///
/// Only the framing is checked (RFC 8489: type with the two top bits clear, the magic cookie,
/// attribute lengths within the message); str0m verifies the integrity later.
pub(crate) fn stun_local_ufrag(data: &[u8]) -> Option<&str> {
    const USERNAME: u16 = 0x0006;
    if data.len() < 20 || data[0] & 0xc0 != 0 || data[4..8] != [0x21, 0x12, 0xa4, 0x42] {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([data[2], data[3]]));
    let body = data.get(20..20 + len)?;
    let mut at = 0;
    while at + 4 <= body.len() {
        let typ = u16::from_be_bytes([body[at], body[at + 1]]);
        let alen = usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
        let value = body.get(at + 4..at + 4 + alen)?;
        if typ == USERNAME {
            let user = std::str::from_utf8(value).ok()?;
            return user.split(':').next();
        }
        at += 4 + alen.div_ceil(4) * 4;
    }
    None
}

/// The routing decision for one datagram, without I/O (tested on its own).
pub(crate) struct Router {
    shards: usize,
    untagged: UfragMap,
    /// Source address -> (shard, last seen).
    addrs: HashMap<SocketAddr, (usize, Instant)>,
    last_sweep: Instant,
}

impl Router {
    pub(crate) fn new(shards: usize, untagged: UfragMap, now: Instant) -> Router {
        Router {
            shards: shards.max(1),
            untagged,
            addrs: HashMap::new(),
            last_sweep: now,
        }
    }

    /// The shard a datagram from `src` goes to, or `None` (drop it).
    pub(crate) fn route(&mut self, data: &[u8], src: SocketAddr, now: Instant) -> Option<usize> {
        if now.duration_since(self.last_sweep) >= FORGET_AFTER {
            self.addrs
                .retain(|_, (_, seen)| now.duration_since(*seen) < FORGET_AFTER);
            self.last_sweep = now;
        }
        if let Some(ufrag) = stun_local_ufrag(data) {
            let shard = shard_of_ufrag(ufrag)
                .filter(|s| *s < self.shards)
                .or_else(|| self.untagged.read().get(ufrag).copied());
            if let Some(shard) = shard {
                if self.addrs.len() < MAX_ADDRS || self.addrs.contains_key(&src) {
                    self.addrs.insert(src, (shard, now));
                }
                return Some(shard);
            }
        }
        let (shard, seen) = self.addrs.get_mut(&src)?;
        *seen = now;
        Some(*shard)
    }

    #[cfg(test)]
    fn known(&self) -> usize {
        self.addrs.len()
    }
}

/// Counters of the receive thread (single writer).
#[derive(Default)]
pub(crate) struct DemuxCounters {
    /// Datagrams dropped: no shard owns their source, or its shard died.
    pub(crate) unrouted: AtomicU64,
    /// Datagrams dropped because their shard's queue was full.
    pub(crate) queue_dropped: AtomicU64,
}

/// Hands datagrams (one batch, or one ICE-TCP packet) to their shard without blocking; a full
/// queue or a dead shard drops them (counted per datagram). Never stops the receive thread:
/// the other shards keep being served.
pub(crate) fn dispatch(shard: &ShardTx, msg: ShardMsg, counters: &DemuxCounters) {
    let datagrams = |m: &ShardMsg| match m {
        ShardMsg::Datagrams(b) => b.len() as u64,
        ShardMsg::TcpPacket { .. } => 1,
        ShardMsg::Relay(msgs) => msgs.len() as u64,
        ShardMsg::Cmd(_) => 0,
    };
    match shard.try_send(msg) {
        Ok(()) => {}
        Err(TrySendError::Full(m)) => add(&counters.queue_dropped, datagrams(&m)),
        Err(TrySendError::Disconnected(m)) => add(&counters.unrouted, datagrams(&m)),
    }
}

/// Spawns the receive thread. It ends when `stop` is set.
pub(crate) fn spawn(
    socket: UdpSocket,
    shards: Vec<ShardTx>,
    untagged: UfragMap,
    stop: Arc<AtomicBool>,
    counters: Arc<DemuxCounters>,
) -> std::io::Result<()> {
    socket.set_read_timeout(Some(POLL))?;
    std::thread::Builder::new()
        .name("greenroom-udp-rx".into())
        .spawn(move || {
            // Made on the thread: `recvmmsg`'s headers are not `Send`.
            let reader = Reader::new(shards.len(), untagged, counters);
            run(socket, reader, shards, stop)
        })?;
    Ok(())
}

fn run(socket: UdpSocket, mut reader: Reader, shards: Vec<ShardTx>, stop: Arc<AtomicBool>) {
    let fd = socket.as_raw_fd();
    let counters = reader.counters.clone();
    while !stop.load(Relaxed) {
        reader.read(fd, true, |shard, batch| {
            dispatch(&shards[shard], ShardMsg::Datagrams(batch), &counters)
        });
    }
}

/// One `recvmmsg` of the media socket and the routing of what it read: the receive thread's
/// work, which a lone shard that reads the socket itself (see [`crate::io::inbox`]) does too.
pub(crate) struct Reader {
    router: Router,
    pool: Arc<RxPool>,
    split: Split,
    /// The buffer the next `recvmmsg` fills.
    recv: RxBatch,
    receiver: BatchReceiver,
    counters: Arc<DemuxCounters>,
}

impl Reader {
    /// A reader routing to `shards` shards, counting its drops in `counters`.
    pub(crate) fn new(shards: usize, untagged: UfragMap, counters: Arc<DemuxCounters>) -> Reader {
        let pool = RxPool::new(SPARE_BUFFERS);
        Reader {
            router: Router::new(shards, untagged, Instant::now()),
            split: Split::new(shards.max(1)),
            recv: pool.take(),
            pool,
            receiver: BatchReceiver::new(RX_BATCH, "UDP"),
            counters,
        }
    }

    /// Reads what is queued on `fd` (up to [`RX_BATCH`] datagrams; with `block`, first waits
    /// for one up to the socket's read timeout, otherwise returns at once) and hands each
    /// shard its datagrams of this read as one batch (`deliver(shard, batch)`, in order).
    /// Datagrams no shard owns are dropped and counted. Returns how many datagrams the read
    /// took (routed or not): [`RX_BATCH`] means more may be queued.
    pub(crate) fn read(
        &mut self,
        fd: RawFd,
        block: bool,
        mut deliver: impl FnMut(usize, RxBatch),
    ) -> usize {
        let flags = if block {
            MsgFlags::MSG_WAITFORONE
        } else {
            MsgFlags::MSG_DONTWAIT
        };
        let recv = &mut self.recv;
        // What the read got, as the receiver holds it (no copy).
        let got = self.receiver.recv(fd, recv.slots_mut(), flags);
        if got.is_empty() {
            return 0;
        }
        for (slot, (len, src)) in got.iter().enumerate() {
            // A datagram without a usable source keeps its slot but is never routed.
            let src = src.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
            recv.set_slot(slot, *len, src);
        }
        let now = Instant::now();
        let split = &mut self.split;
        match split.route(&mut self.router, recv, got, now, &self.counters) {
            Routed::Nothing => {}
            Routed::One(shard) => {
                // Zero copy: this buffer goes to the shard, the next recvmmsg gets a spare.
                let keep = &split.dest;
                recv.retain_index(|i| keep[i].is_some());
                deliver(shard, std::mem::replace(recv, self.pool.take()));
            }
            Routed::Several => {
                for (i, dest) in split.dest.iter().enumerate() {
                    let (Some(shard), Some((data, src))) = (*dest, recv.get(i)) else {
                        continue;
                    };
                    split.out[shard]
                        .get_or_insert_with(|| self.pool.take())
                        .push(data, src);
                }
                for (shard, batch) in split.out.iter_mut().enumerate() {
                    if let Some(batch) = batch.take() {
                        deliver(shard, batch);
                    }
                }
            }
        }
        got.len()
    }
}

/// Where the datagrams of one `recvmmsg` go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Routed {
    /// All dropped.
    Nothing,
    /// Every routed datagram to this shard.
    One(usize),
    /// To more than one shard.
    Several,
}

/// The per-`recvmmsg` routing scratch of the receive thread (kept between batches).
struct Split {
    /// Each datagram's shard (`None`: dropped).
    dest: Vec<Option<usize>>,
    /// Per shard, the batch being filled when a `recvmmsg` is split.
    out: Vec<Option<RxBatch>>,
}

impl Split {
    fn new(shards: usize) -> Split {
        Split {
            dest: Vec::with_capacity(RX_BATCH),
            out: (0..shards).map(|_| None).collect(),
        }
    }

    /// Routes every datagram of `batch` (`got` says which had a source address); counts the
    /// dropped ones.
    fn route(
        &mut self,
        router: &mut Router,
        batch: &RxBatch,
        got: &[(usize, Option<SocketAddr>)],
        now: Instant,
        counters: &DemuxCounters,
    ) -> Routed {
        self.dest.clear();
        let mut routed = Routed::Nothing;
        for (i, (data, src)) in batch.iter().enumerate() {
            let shard = got
                .get(i)
                .and_then(|(_, s)| *s)
                .and_then(|_| router.route(data, src, now))
                .filter(|s| *s < self.out.len());
            if shard.is_none() {
                add(&counters.unrouted, 1);
                debug!("no shard for datagram from {src}");
            }
            routed = match (routed, shard) {
                (r, None) => r,
                (Routed::Nothing, Some(s)) => Routed::One(s),
                (Routed::One(a), Some(s)) if a == s => Routed::One(a),
                _ => Routed::Several,
            };
            self.dest.push(shard);
        }
        routed
    }
}

/// A std address from the kernel's (IPv4 or IPv6; anything else is not ours).
#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A STUN binding request with USERNAME `user` and a trailing dummy attribute.
    pub(crate) fn stun(user: &str) -> Vec<u8> {
        let mut attrs = Vec::new();
        attrs.extend_from_slice(&0x0006u16.to_be_bytes());
        attrs.extend_from_slice(&(user.len() as u16).to_be_bytes());
        attrs.extend_from_slice(user.as_bytes());
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        attrs.extend_from_slice(&[0x80, 0x28, 0, 4, 1, 2, 3, 4]); // FINGERPRINT-shaped
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attrs);
        m
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn shard_tag_round_trips_and_stays_a_valid_ufrag() {
        for shard in [0, 1, 7, 42, 999] {
            let c = shard_ufrag(shard);
            assert_eq!(shard_of_ufrag(&c.ufrag), Some(shard));
            assert!(c.ufrag.len() >= 4 + 16);
            assert!(c.ufrag.chars().all(|ch| ch.is_ascii_alphanumeric()));
        }
        assert_eq!(shard_of_ufrag("abcdef"), None);
        assert_eq!(shard_of_ufrag("g1x3abc"), None);
        assert_eq!(shard_of_ufrag("g0"), None);
    }

    #[test]
    fn stun_username_is_found_and_garbage_is_not_stun() {
        assert_eq!(stun_local_ufrag(&stun("g001abc:xyz")), Some("g001abc"));
        assert_eq!(stun_local_ufrag(&stun("srv:cl")), Some("srv"));
        // DTLS, RTP, short, wrong cookie, lying lengths.
        assert_eq!(stun_local_ufrag(&[22, 254, 253, 0, 0]), None);
        assert_eq!(stun_local_ufrag(&[0x80; 40]), None);
        assert_eq!(stun_local_ufrag(&[0; 10]), None);
        let mut bad = stun("g001abc:xyz");
        bad[4] = 0;
        assert_eq!(stun_local_ufrag(&bad), None);
        let mut long = stun("g001abc:xyz");
        long[3] = 0xff;
        assert_eq!(stun_local_ufrag(&long), None);
        let mut attr = stun("g001abc:xyz");
        attr[23] = 0xff; // USERNAME length beyond the message
        assert_eq!(stun_local_ufrag(&attr), None);
    }

    #[test]
    fn stun_routes_by_tag_then_media_follows_the_address() {
        let t0 = Instant::now();
        let mut r = Router::new(3, UfragMap::default(), t0);
        let rtp = [0x80u8, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        // Unknown address, not STUN: dropped.
        assert_eq!(r.route(&rtp, addr(5000), t0), None);
        assert_eq!(r.route(&stun("g002abcd:cl"), addr(5000), t0), Some(2));
        assert_eq!(r.route(&rtp, addr(5000), t0), Some(2));
        // A tag naming a shard that does not exist is not trusted.
        assert_eq!(r.route(&stun("g009abcd:cl"), addr(5001), t0), None);
        // The same address moves to another shard at its next STUN.
        assert_eq!(r.route(&stun("g001abcd:cl"), addr(5000), t0), Some(1));
        assert_eq!(r.route(&rtp, addr(5000), t0), Some(1));
    }

    #[test]
    fn untagged_ufrags_after_an_ice_restart_route_through_the_shared_map() {
        let t0 = Instant::now();
        let map = UfragMap::default();
        let mut r = Router::new(2, map.clone(), t0);
        assert_eq!(r.route(&stun("RandomUfrag:cl"), addr(8000), t0), None);
        map.write().insert("RandomUfrag".into(), 1);
        assert_eq!(r.route(&stun("RandomUfrag:cl"), addr(8000), t0), Some(1));
        assert_eq!(
            r.route(&[0x80, 0], addr(8000), t0),
            Some(1),
            "then by address"
        );
    }

    #[test]
    fn idle_addresses_are_forgotten_and_one_shard_takes_everything() {
        let t0 = Instant::now();
        let mut r = Router::new(2, UfragMap::default(), t0);
        assert_eq!(r.route(&stun("g001abcd:cl"), addr(6000), t0), Some(1));
        assert_eq!(r.route(&stun("g000abcd:cl"), addr(6001), t0), Some(0));
        let later = t0 + FORGET_AFTER / 2;
        assert_eq!(r.route(&[0x80, 0], addr(6001), later), Some(0));
        let much_later = t0 + FORGET_AFTER + Duration::from_secs(1);
        assert_eq!(r.route(&[0x80, 0], addr(6000), much_later), None);
        assert_eq!(r.known(), 1, "only the recently seen address is kept");
    }

    #[test]
    fn one_shard_drops_garbage_too() {
        let t0 = Instant::now();
        let mut one = Router::new(1, UfragMap::default(), t0);
        assert_eq!(one.route(&[1, 2, 3], addr(7000), t0), None);
        assert_eq!(one.route(&[22, 0xfe, 0xfd, 0], addr(7000), t0), None);
        assert_eq!(one.route(&stun("g000abcd:cl"), addr(7000), t0), Some(0));
        assert_eq!(one.route(&[0x80, 0], addr(7000), t0), Some(0));
    }

    #[test]
    fn full_and_dead_shard_queues_drop_and_count_without_blocking() {
        let counters = DemuxCounters::default();
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        let tx = ShardTx::new(tx, None);
        // Batches of three datagrams: a dropped batch counts each of its datagrams.
        let msg = || {
            let mut b = RxBatch::default();
            for _ in 0..3 {
                b.push(&[0x80, 0], addr(9000));
            }
            ShardMsg::Datagrams(b)
        };
        for _ in 0..5 {
            dispatch(&tx, msg(), &counters);
        }
        assert_eq!(counters.queue_dropped.load(Relaxed), 3 * 3);
        assert_eq!(rx.try_iter().count(), 2, "the queue kept its bound");
        drop(rx);
        dispatch(&tx, msg(), &counters);
        assert_eq!(
            counters.unrouted.load(Relaxed),
            3,
            "a dead shard's datagrams"
        );
    }

    #[test]
    fn the_address_map_is_bounded() {
        let t0 = Instant::now();
        let mut r = Router::new(2, UfragMap::default(), t0);
        for i in 0..MAX_ADDRS + 10 {
            let src = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 1));
            assert_eq!(r.route(&stun("g001abcd:cl"), src, t0), Some(1));
        }
        assert_eq!(r.known(), MAX_ADDRS);
    }

    #[test]
    fn one_recvmmsg_wakes_each_shard_once_with_its_datagrams_in_order() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = server.local_addr().unwrap();
        let (a, b) = (
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            UdpSocket::bind("127.0.0.1:0").unwrap(),
        );
        // Everything is in the socket's queue before the thread starts: its first recvmmsg
        // takes RX_BATCH datagrams at once. a talks to shard 0 (20 datagrams), b to shard 1
        // (10), interleaved; then 30 more from a alone (one shard: the buffer is handed over).
        a.send_to(&stun("g000aaaa:cl"), to).unwrap();
        b.send_to(&stun("g001bbbb:cl"), to).unwrap();
        for i in 0..19u8 {
            a.send_to(&[0x80, 0, 0, i], to).unwrap();
            if i < 9 {
                b.send_to(&[0x80, 1, 0, i], to).unwrap();
            }
        }
        for i in 19..49u8 {
            a.send_to(&[0x80, 0, 0, i], to).unwrap();
        }
        let (tx0, rx0) = std::sync::mpsc::sync_channel(SHARD_QUEUE);
        let (tx1, rx1) = std::sync::mpsc::sync_channel(SHARD_QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(DemuxCounters::default());
        spawn(
            server,
            vec![ShardTx::new(tx0, None), ShardTx::new(tx1, None)],
            UfragMap::default(),
            stop.clone(),
            counters.clone(),
        )
        .unwrap();
        let collect = |rx: &std::sync::mpsc::Receiver<ShardMsg>, want: usize| {
            let mut msgs = 0;
            let mut got: Vec<(Vec<u8>, SocketAddr)> = Vec::new();
            while got.len() < want {
                match rx.recv_timeout(Duration::from_secs(10)) {
                    Ok(ShardMsg::Datagrams(batch)) => {
                        msgs += 1;
                        got.extend(batch.iter().map(|(d, s)| (d.to_vec(), s)));
                    }
                    Ok(_) => panic!("only datagrams expected"),
                    Err(_) => break,
                }
            }
            (msgs, got)
        };
        let (msgs0, got0) = collect(&rx0, 50);
        let (msgs1, got1) = collect(&rx1, 10);
        stop.store(true, Relaxed);
        assert_eq!(got0.len(), 50);
        assert_eq!(got1.len(), 10);
        assert!(got0.iter().all(|(_, s)| *s == a.local_addr().unwrap()));
        assert!(got1.iter().all(|(_, s)| *s == b.local_addr().unwrap()));
        let seq0: Vec<u8> = got0[1..].iter().map(|(d, _)| d[3]).collect();
        assert_eq!(seq0, (0..49).collect::<Vec<u8>>(), "in order");
        let seq1: Vec<u8> = got1[1..].iter().map(|(d, _)| d[3]).collect();
        assert_eq!(seq1, (0..9).collect::<Vec<u8>>());
        // 60 datagrams in two recvmmsg calls: two messages for shard 0, one for shard 1.
        assert!(msgs0 <= 2, "{msgs0} messages for shard 0");
        assert_eq!(msgs1, 1);
        assert_eq!(counters.queue_dropped.load(Relaxed), 0);
        assert_eq!(counters.unrouted.load(Relaxed), 0);
    }
}
