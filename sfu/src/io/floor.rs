//! The floor: what forwarding one packet to one subscriber costs at least on this machine.
//!
//! Per packet: copy the incoming RTP packet into the outgoing batch, rewrite its header
//! (payload type, sequence number, timestamp, SSRC), SRTP-protect it with AEAD_AES_128_GCM
//! (aws-lc-rs, a real seal with the per-packet IV of RFC 7714 section 8.1 and the header as
//! associated data, tag appended), then send the batch of [`BATCH`] with one `sendmmsg` to a
//! loopback socket (the same [`send_batch`] the server uses, GSO off: a fan-out goes to many
//! destinations). The receiving socket is drained between batches, outside the measurement.
//!
//! The cost is the calling thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not wall time, so a
//! busy machine slows the measurement without changing its result much. On loopback the sender's
//! CPU also pays the kernel's delivery into the receiving socket, as the server does with
//! local bots. `benches/limits.rs` (criterion) and `greenroom-loadtest floor` both run it.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use nix::time::{clock_gettime, ClockId};

use crate::io::batch::{send_batch, GsoState, SendQueue};

/// Packets per `sendmmsg` in the floor measurement.
pub const BATCH: usize = 32;
/// RTP header length used (no CSRC, no extension).
const HEADER: usize = 12;
/// GCM tag length.
const TAG: usize = 16;

/// Why the floor could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    /// A loopback socket could not be made or used.
    #[error("loopback socket: {0}")]
    Io(#[from] std::io::Error),
    /// The thread's CPU clock could not be read.
    #[error("thread CPU clock: {0}")]
    Clock(#[from] nix::Error),
    /// The AEAD key could not be built.
    #[error("AES-GCM key rejected")]
    Key,
    /// The kernel sent nothing (every datagram dropped).
    #[error("no datagram was sent")]
    NothingSent,
}

/// One floor measurement's state: a sender, a drained receiver, a key and one input packet.
pub struct Floor {
    tx: UdpSocket,
    rx: UdpSocket,
    dest: SocketAddr,
    key: LessSafeKey,
    salt: [u8; 12],
    input: Vec<u8>,
    queue: SendQueue,
    gso: GsoState,
    seq: u16,
    ts: u32,
    drain_buf: Vec<u8>,
}

impl Floor {
    /// A floor for `payload`-byte RTP payloads.
    pub fn new(payload: usize) -> Result<Floor, FloorError> {
        let tx = UdpSocket::bind("127.0.0.1:0")?;
        let rx = UdpSocket::bind("127.0.0.1:0")?;
        rx.set_nonblocking(true)?;
        let big = 8 << 20;
        let _ = socket2::SockRef::from(&rx).set_recv_buffer_size(big);
        let _ = socket2::SockRef::from(&tx).set_send_buffer_size(big);
        let dest = rx.local_addr()?;
        let key = UnboundKey::new(&AES_128_GCM, &[0x5a; 16]).map_err(|_| FloorError::Key)?;
        let mut input = vec![0u8; HEADER + payload];
        input[0] = 0x80;
        input[1] = 111;
        input[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        for (i, b) in input[HEADER..].iter_mut().enumerate() {
            *b = i as u8;
        }
        Ok(Floor {
            tx,
            rx,
            dest,
            key: LessSafeKey::new(key),
            salt: [0x3c; 12],
            input,
            queue: SendQueue::new(BATCH),
            gso: GsoState::new(false),
            seq: 0,
            ts: 0,
            drain_buf: vec![0u8; 4096],
        })
    }

    /// Forwards one batch of [`BATCH`] packets; returns the CPU time it took and the
    /// datagrams the kernel accepted.
    pub fn batch(&mut self) -> Result<(Duration, u64), FloorError> {
        let t0 = thread_cpu()?;
        for _ in 0..BATCH {
            self.seq = self.seq.wrapping_add(1);
            self.ts = self.ts.wrapping_add(960);
            let (seq, ts) = (self.seq, self.ts);
            let (input, key, salt) = (&self.input, &self.key, &self.salt);
            self.queue.push_with(input.len() + TAG, self.dest, |out| {
                protect(out, input, key, salt, seq, ts)
            });
        }
        let sent = send_batch(&self.tx, &mut self.queue, &self.gso).sent;
        let t1 = thread_cpu()?;
        self.drain();
        Ok((t1.saturating_sub(t0), sent))
    }

    /// Reads everything waiting on the receiving socket.
    fn drain(&mut self) {
        while self.rx.recv(&mut self.drain_buf).is_ok() {}
    }

    /// Runs batches for about `wall` of wall time; returns the CPU nanoseconds per packet.
    pub fn measure(&mut self, wall: Duration) -> Result<f64, FloorError> {
        // Warm the caches and the socket first.
        for _ in 0..16 {
            self.batch()?;
        }
        let end = Instant::now() + wall;
        let (mut cpu, mut sent) = (Duration::ZERO, 0u64);
        while Instant::now() < end {
            let (c, s) = self.batch()?;
            cpu += c;
            sent += s;
        }
        if sent == 0 {
            return Err(FloorError::NothingSent);
        }
        Ok(cpu.as_nanos() as f64 / sent as f64)
    }
}

/// Copy + header rewrite + SRTP AEAD_AES_128_GCM protect of `input` into `out`; returns the
/// protected length.
fn protect(
    out: &mut [u8],
    input: &[u8],
    key: &LessSafeKey,
    salt: &[u8; 12],
    seq: u16,
    ts: u32,
) -> usize {
    let n = input.len();
    out[..n].copy_from_slice(input);
    // The rewrite a forwarder does: the subscriber's payload type, sequence, timestamp, SSRC.
    out[1] = (out[1] & 0x80) | 96;
    out[2..4].copy_from_slice(&seq.to_be_bytes());
    out[4..8].copy_from_slice(&ts.to_be_bytes());
    out[8..12].copy_from_slice(&0x0bad_cafeu32.to_be_bytes());
    // RFC 7714 8.1: IV = (00 00 || SSRC || ROC || SEQ) XOR salt.
    let mut iv = [0u8; 12];
    iv[2..6].copy_from_slice(&out[8..12]);
    iv[6..10].copy_from_slice(&0u32.to_be_bytes());
    iv[10..12].copy_from_slice(&seq.to_be_bytes());
    for (b, s) in iv.iter_mut().zip(salt) {
        *b ^= s;
    }
    let (header, rest) = out.split_at_mut(HEADER);
    let (payload, tag_out) = rest.split_at_mut(n - HEADER);
    match key.seal_in_place_separate_tag(
        Nonce::assume_unique_for_key(iv),
        Aad::from(&*header),
        payload,
    ) {
        Ok(tag) => {
            tag_out[..TAG].copy_from_slice(tag.as_ref());
            n + TAG
        }
        // AES-GCM seals any length up to 2^36 bytes: unreachable for a datagram.
        Err(_) => 0,
    }
}

fn thread_cpu() -> Result<Duration, FloorError> {
    let t = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)?;
    Ok(Duration::from(t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::aead::Aad;

    #[test]
    fn protected_packets_open_with_the_same_key_and_reach_the_receiver() {
        let mut f = Floor::new(100).unwrap();
        let mut out = vec![0u8; 200];
        let n = protect(&mut out, &f.input.clone(), &f.key, &f.salt, 7, 960);
        assert_eq!(n, HEADER + 100 + TAG);
        assert_eq!(&out[2..4], &7u16.to_be_bytes());
        // Decrypt with the same IV construction: the ciphertext is a real GCM seal.
        let mut iv = [0u8; 12];
        iv[2..6].copy_from_slice(&out[8..12]);
        iv[10..12].copy_from_slice(&7u16.to_be_bytes());
        for (b, s) in iv.iter_mut().zip(&f.salt) {
            *b ^= s;
        }
        let (header, body) = out[..n].split_at_mut(HEADER);
        let plain = f
            .key
            .open_in_place(Nonce::assume_unique_for_key(iv), Aad::from(&*header), body)
            .unwrap();
        assert_eq!(plain, &f.input[HEADER..]);
        // One batch goes out and arrives.
        f.rx.set_nonblocking(false).unwrap();
        f.rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        f.queue.clear();
        for _ in 0..BATCH {
            let (input, key, salt) = (&f.input, &f.key, &f.salt);
            f.queue.push_with(input.len() + TAG, f.dest, |o| {
                protect(o, input, key, salt, 1, 1)
            });
        }
        let out = send_batch(&f.tx, &mut f.queue, &f.gso);
        assert_eq!(out.sent, BATCH as u64);
        let mut buf = [0u8; 2048];
        assert_eq!(f.rx.recv(&mut buf).unwrap(), HEADER + 100 + TAG);
    }
}
