//! Ingress batches: the datagrams of one `recvmmsg` for one shard, handed over in one message
//! (one wake-up of the shard per batch, not per datagram), in buffers that go back to a pool
//! when the shard is done with them (no allocation per datagram or per batch once warm).
//!
//! A batch is filled in one of two ways:
//!
//! * [`RxBatch::slots_mut`] / [`RxBatch::set_slot`]: the kernel writes each datagram into its
//!   own fixed slot ([`RX_SLOT`] bytes) of the buffer. When every datagram of a `recvmmsg`
//!   goes to one shard (always with one shard, and most of the time with several), the receive
//!   thread hands this very buffer over: no copy between the kernel and str0m.
//! * [`RxBatch::push`]: a copy at the datagram's own length, packed after the previous one
//!   (a `recvmmsg` whose datagrams go to several shards is split this way).

use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;

/// Datagrams read per `recvmmsg` (and most datagrams in one batch).
pub const RX_BATCH: usize = 32;
/// Receive buffer per datagram (larger datagrams are truncated: no WebRTC peer sends them).
pub const RX_SLOT: usize = 2048;
/// Bytes of every batch buffer.
const BATCH_BYTES: usize = RX_BATCH * RX_SLOT;

/// Where one datagram of a batch lies in its buffer, and where it came from.
#[derive(Debug, Clone, Copy)]
struct Item {
    start: usize,
    len: usize,
    src: SocketAddr,
}

/// Spare batch buffers (at most `max`; more are freed when returned).
#[derive(Debug)]
pub struct RxPool {
    free: Mutex<Vec<(Vec<u8>, Vec<Item>)>>,
    max: usize,
}

impl RxPool {
    /// A pool keeping at most `max` spare buffers of [`RX_BATCH`] x [`RX_SLOT`] bytes.
    pub fn new(max: usize) -> Arc<RxPool> {
        Arc::new(RxPool {
            free: Mutex::new(Vec::new()),
            max,
        })
    }

    /// An empty batch: a spare buffer, or a new one when none is left.
    pub fn take(self: &Arc<Self>) -> RxBatch {
        let (buf, items) = self
            .free
            .lock()
            .pop()
            .unwrap_or_else(|| (vec![0u8; BATCH_BYTES], Vec::with_capacity(RX_BATCH)));
        RxBatch {
            buf,
            items,
            pool: Some(self.clone()),
        }
    }

    /// Spare buffers held now.
    pub fn spare(&self) -> usize {
        self.free.lock().len()
    }

    fn put(&self, buf: Vec<u8>, mut items: Vec<Item>) {
        items.clear();
        let mut free = self.free.lock();
        if free.len() < self.max {
            free.push((buf, items));
        }
    }
}

/// Up to [`RX_BATCH`] datagrams for one shard (see the module docs). Dropping it returns its
/// buffer to its pool.
#[derive(Debug)]
pub struct RxBatch {
    buf: Vec<u8>,
    items: Vec<Item>,
    pool: Option<Arc<RxPool>>,
}

impl Default for RxBatch {
    /// An empty batch outside any pool.
    fn default() -> RxBatch {
        RxBatch {
            buf: vec![0u8; BATCH_BYTES],
            items: Vec::with_capacity(RX_BATCH),
            pool: None,
        }
    }
}

impl RxBatch {
    /// Datagrams in the batch.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// No datagram in the batch.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The batch holds [`RX_BATCH`] datagrams.
    pub fn is_full(&self) -> bool {
        self.items.len() >= RX_BATCH
    }

    /// Appends a copy of `data` (at most [`RX_SLOT`] bytes are kept) from `src`; false (and
    /// nothing appended) when the batch is full.
    pub fn push(&mut self, data: &[u8], src: SocketAddr) -> bool {
        if self.is_full() {
            return false;
        }
        let start = self.items.last().map_or(0, |i| i.start + i.len);
        let len = data.len().min(RX_SLOT);
        // RX_BATCH items of at most RX_SLOT bytes each fit in BATCH_BYTES.
        self.buf[start..start + len].copy_from_slice(&data[..len]);
        self.items.push(Item { start, len, src });
        true
    }

    /// The [`RX_BATCH`] receive slots of an empty batch, for `recvmmsg` (then
    /// [`RxBatch::set_slot`] for each datagram received). Forgets what the batch held.
    pub fn slots_mut(&mut self) -> impl Iterator<Item = &mut [u8]> {
        self.items.clear();
        self.buf.chunks_exact_mut(RX_SLOT)
    }

    /// Records that slot `slot` received `len` bytes from `src` (slots in increasing order).
    pub fn set_slot(&mut self, slot: usize, len: usize, src: SocketAddr) {
        if slot < RX_BATCH {
            self.items.push(Item {
                start: slot * RX_SLOT,
                len: len.min(RX_SLOT),
                src,
            });
        }
    }

    /// Keeps only the datagrams for which `keep(index)` is true (in order).
    pub fn retain_index(&mut self, mut keep: impl FnMut(usize) -> bool) {
        let mut i = 0;
        self.items.retain(|_| {
            let k = keep(i);
            i += 1;
            k
        });
    }

    /// Datagram `i` and its source.
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        let it = self.items.get(i)?;
        Some((&self.buf[it.start..it.start + it.len], it.src))
    }

    /// The datagrams and their sources, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> + '_ {
        self.items
            .iter()
            .map(|it| (&self.buf[it.start..it.start + it.len], it.src))
    }
}

impl Drop for RxBatch {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.put(
                std::mem::take(&mut self.buf),
                std::mem::take(&mut self.items),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn pushed_datagrams_come_back_whole_in_order_and_the_batch_has_a_bound() {
        let mut b = RxBatch::default();
        for i in 0..RX_BATCH {
            assert!(b.push(&vec![i as u8; 1 + i * 60], addr(i as u16)));
        }
        assert!(b.is_full());
        assert!(!b.push(&[1], addr(1)), "a full batch takes nothing more");
        for (i, (d, src)) in b.iter().enumerate() {
            assert_eq!(d.len(), 1 + i * 60);
            assert!(d.iter().all(|x| *x == i as u8));
            assert_eq!(src, addr(i as u16));
        }
        // Oversized datagrams are truncated to a slot, as the kernel would.
        let mut big = RxBatch::default();
        for _ in 0..RX_BATCH {
            assert!(big.push(&[9; RX_SLOT + 100], addr(2)));
        }
        assert!(big.iter().all(|(d, _)| d.len() == RX_SLOT));
    }

    #[test]
    fn slots_take_received_datagrams_and_retain_drops_the_unrouted() {
        let mut b = RxBatch::default();
        for (i, slot) in b.slots_mut().enumerate().take(3) {
            slot[..4].copy_from_slice(&[i as u8; 4]);
        }
        for i in 0..3 {
            b.set_slot(i, 4, addr(i as u16));
        }
        b.retain_index(|i| i != 1);
        let got: Vec<(Vec<u8>, SocketAddr)> = b.iter().map(|(d, s)| (d.to_vec(), s)).collect();
        assert_eq!(got, vec![(vec![0; 4], addr(0)), (vec![2; 4], addr(2))]);
        assert_eq!(b.get(1).map(|(d, _)| d[0]), Some(2));
        // Reusing the slots forgets the old datagrams.
        assert_eq!(b.slots_mut().count(), RX_BATCH);
        assert!(b.is_empty());
    }

    #[test]
    fn buffers_return_to_the_pool_up_to_its_bound() {
        let pool = RxPool::new(2);
        let batches: Vec<RxBatch> = (0..3).map(|_| pool.take()).collect();
        assert_eq!(pool.spare(), 0);
        drop(batches);
        assert_eq!(pool.spare(), 2, "the third buffer is freed");
        let mut b = pool.take();
        assert_eq!(pool.spare(), 1);
        assert!(b.is_empty(), "a reused batch starts empty");
        b.push(&[1, 2, 3], addr(1));
        drop(b);
        let b = pool.take();
        assert!(b.is_empty());
        assert_eq!(b.iter().count(), 0);
    }
}
