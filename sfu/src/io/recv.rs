//! The batched UDP read both receive threads share (the media socket's in [`crate::demux`],
//! the relay socket's in [`crate::relay`]) and a lone shard's ([`crate::io::inbox`]): one
//! `recvmmsg` that sleeps until one datagram arrives (or, for the shard, which waited in `ppoll`,
//! does not sleep), then takes what else is already queued in the same system call.

use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
use tracing::warn;

/// One receive thread's `recvmmsg` state: its message headers and what the last read got.
pub(crate) struct BatchReceiver {
    headers: MultiHeaders<SockaddrStorage>,
    got: Vec<(usize, Option<SocketAddr>)>,
    /// Names the socket in the log line of a failed read.
    what: &'static str,
}

impl BatchReceiver {
    /// A receiver of up to `batch` datagrams per read, for the socket named `what` in logs.
    pub(crate) fn new(batch: usize, what: &'static str) -> BatchReceiver {
        BatchReceiver {
            headers: MultiHeaders::preallocate(batch, None),
            got: Vec::with_capacity(batch),
            what,
        }
    }

    /// One read from `fd` into `bufs` (one datagram per buffer, at most as many as the
    /// receiver was made for): with `MSG_WAITFORONE` in `flags` it blocks for the first
    /// datagram (up to the socket's read timeout), with `MSG_DONTWAIT` it returns at once; then
    /// it takes what else is already queued. Returns each datagram's length (at most its
    /// buffer's) and source, in order: datagram `i` is in the first bytes of buffer `i`.
    /// Nothing on a timeout, an interrupt or an ICMP error of an earlier send; any other
    /// error is logged and the thread backs off for a millisecond.
    pub(crate) fn recv<'a>(
        &mut self,
        fd: RawFd,
        bufs: impl Iterator<Item = &'a mut [u8]>,
        flags: MsgFlags,
    ) -> &[(usize, Option<SocketAddr>)] {
        self.got.clear();
        let mut slices: Vec<[IoSliceMut<'_>; 1]> = bufs.map(|b| [IoSliceMut::new(b)]).collect();
        match recvmmsg(fd, &mut self.headers, slices.iter_mut(), flags, None) {
            Ok(msgs) => self
                .got
                .extend(msgs.map(|m| (m.bytes, m.address.and_then(socket_addr)))),
            Err(
                Errno::EAGAIN
                | Errno::EINTR
                | Errno::ETIMEDOUT
                | Errno::ECONNRESET
                | Errno::ECONNREFUSED,
            ) => {}
            Err(e) => {
                warn!("{} receive failed: {e}", self.what);
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        &self.got
    }
}

fn socket_addr(a: SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn one_read_takes_every_queued_datagram_in_order_with_its_source() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..5u8 {
            tx.send_to(&vec![i; 10 + usize::from(i)], rx.local_addr().unwrap())
                .unwrap();
        }
        // Wait until the last one is queued (loopback delivers in order).
        let mut peek = [0u8; 64];
        while rx.peek(&mut peek).is_err() {}
        std::thread::sleep(Duration::from_millis(50));
        let mut bufs = vec![vec![0u8; 12]; 8];
        let mut r = BatchReceiver::new(8, "test");
        let got = r.recv(
            rx.as_raw_fd(),
            bufs.iter_mut().map(|b| b.as_mut_slice()),
            MsgFlags::MSG_WAITFORONE,
        );
        let got = got.to_vec();
        assert_eq!(got.len(), 5, "{got:?}");
        for (i, (len, src)) in got.iter().enumerate() {
            // A datagram longer than its buffer shows as the buffer's length.
            assert_eq!(*len, (10 + i).min(12));
            assert_eq!(*src, Some(tx.local_addr().unwrap()));
            assert!(bufs[i][..*len].iter().all(|b| *b == i as u8));
        }
    }
}
