//! The media UDP socket's kernel side: buffer sizes and the kernel's receive drops.
//!
//! A burst (a keyframe to a large fan-out, a scheduling hiccup of the receive thread) must not
//! overflow the kernel's receive queue, so the socket asks for large buffers
//! ([`crate::SfuOptions::socket_buffer_bytes`], 4 MiB by default). Linux caps the request at
//! `net.core.rmem_max` / `wmem_max` (and doubles it for bookkeeping); the effective sizes are
//! logged at start and exported (`greenroom_udp_socket_buffer_bytes`). Datagrams the kernel still
//! drops are read from the `drops` column of `/proc/net/udp` and `/proc/net/udp6` for our
//! socket's inode at each scrape (`greenroom_udp_receive_drops_total`): no per-packet cost and
//! no `recvmsg` control messages on the hot path. Elsewhere than Linux the drop count is absent.

use std::net::UdpSocket;

use socket2::SockRef;
use tracing::{info, warn};

/// Asks for `bytes` of receive and send buffer (0: leave the system default); returns the
/// effective (receive, send) sizes.
pub(crate) fn size_buffers(socket: &UdpSocket, bytes: usize) -> (usize, usize) {
    let sock = SockRef::from(socket);
    if bytes > 0 {
        if let Err(e) = sock.set_recv_buffer_size(bytes) {
            warn!("cannot set SO_RCVBUF to {bytes}: {e}");
        }
        if let Err(e) = sock.set_send_buffer_size(bytes) {
            warn!("cannot set SO_SNDBUF to {bytes}: {e}");
        }
    }
    let rcv = sock.recv_buffer_size().unwrap_or(0);
    let snd = sock.send_buffer_size().unwrap_or(0);
    info!(
        requested = bytes,
        receive = rcv,
        send = snd,
        "media socket buffers (raise net.core.rmem_max/wmem_max if below the request)"
    );
    (rcv, snd)
}

/// The inode of the socket (to find it in `/proc/net/udp`); `None` where there is no procfs.
pub(crate) fn inode(socket: &UdpSocket) -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        let fd = socket.as_raw_fd();
        std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .ok()
            .map(|m| m.ino())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = socket;
        None
    }
}

/// The kernel's drop count for the socket with this inode, from `/proc/net/udp{,6}`.
pub(crate) fn kernel_drops(inode: u64) -> Option<u64> {
    ["/proc/net/udp", "/proc/net/udp6"].iter().find_map(|path| {
        let table = std::fs::read_to_string(path).ok()?;
        drops_in_table(&table, inode)
    })
}

/// The `drops` column of the row whose `inode` column is `inode` in a `/proc/net/udp` table.
fn drops_in_table(table: &str, inode: u64) -> Option<u64> {
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next()?.split_whitespace().collect();
    // The header names `tx_queue rx_queue` and `tr tm->when` as one column each in the rows.
    let col = |name: &str| -> Option<usize> {
        let i = header.iter().position(|h| *h == name)?;
        Some(
            i - header[..i]
                .iter()
                .filter(|h| **h == "rx_queue" || **h == "tm->when")
                .count(),
        )
    };
    let (inode_col, drops_col) = (col("inode")?, col("drops")?);
    lines.find_map(|row| {
        let fields: Vec<&str> = row.split_whitespace().collect();
        if fields.get(inode_col)?.parse::<u64>().ok()? != inode {
            return None;
        }
        fields.get(drops_col)?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  123: 00000000:1F4A 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 17
  124: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 99 2 0000000000000000 0
";

    #[test]
    fn drops_are_read_from_our_row_only() {
        assert_eq!(drops_in_table(TABLE, 4242), Some(17));
        assert_eq!(drops_in_table(TABLE, 99), Some(0));
        assert_eq!(drops_in_table(TABLE, 7), None);
        assert_eq!(drops_in_table("", 7), None);
    }

    #[test]
    fn a_real_socket_gets_buffers_and_a_drop_count() {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (rcv, snd) = size_buffers(&s, 1 << 20);
        assert!(rcv > 0 && snd > 0);
        if cfg!(target_os = "linux") {
            let ino = inode(&s).expect("procfs inode");
            assert_eq!(kernel_drops(ino), Some(0), "a fresh socket dropped nothing");
        }
    }
}
