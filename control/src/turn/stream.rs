//! TURN over TCP and TLS (RFC 8656 section 3.1, RFC 5766 section 11.5): STUN messages and
//! ChannelData frames back to back on a byte stream, each delimited by its own length header,
//! ChannelData padded to a multiple of four bytes. [`StreamConn`] turns one such stream into the
//! packet connection the `turn` crate works on (server side: one TURN server per connection, so
//! its allocations end with the connection; client side: the tests' TURN client).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{Mutex, Notify};
use webrtc_util::Conn;

/// The largest frame accepted (a STUN message or ChannelData with its header).
const MAX_FRAME: usize = 4 + 65535 + 3;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The first bytes are neither a STUN header nor a channel number.
    #[error("not a STUN message or ChannelData frame")]
    Framing,
    /// No frame arrived within the idle time.
    #[error("idle for too long")]
    Idle,
    /// The stream failed or closed.
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
}

/// The total length of the frame whose first four bytes are `head`, padding included, and the
/// length without the padding.
pub fn frame_len(head: [u8; 4]) -> Result<(usize, usize), FrameError> {
    let len = u16::from_be_bytes([head[2], head[3]]) as usize;
    match head[0] >> 6 {
        // STUN: a 20-byte header, then `len` bytes of attributes (always a multiple of 4).
        0b00 => Ok((20 + len, 20 + len)),
        // ChannelData: channel numbers 0x4000..=0x7FFF; 4-byte header, data padded over TCP.
        0b01 => Ok((4 + len.div_ceil(4) * 4, 4 + len)),
        _ => Err(FrameError::Framing),
    }
}

/// Reads one frame into `buf`; returns its length without padding. A frame larger than `buf` is
/// an error (the connection is closed).
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
) -> Result<usize, FrameError> {
    let mut head = [0u8; 4];
    r.read_exact(&mut head).await?;
    let (total, unpadded) = frame_len(head)?;
    if total > buf.len() || total > MAX_FRAME {
        return Err(FrameError::Framing);
    }
    buf[..4].copy_from_slice(&head);
    r.read_exact(&mut buf[4..total]).await?;
    Ok(unpadded)
}

/// One TCP or TLS stream as a packet connection.
pub struct StreamConn<S> {
    reader: Mutex<ReadHalf<S>>,
    writer: Mutex<WriteHalf<S>>,
    local: SocketAddr,
    peer: SocketAddr,
    idle: Duration,
    closed: Arc<Notify>,
}

impl<S: AsyncRead + AsyncWrite + Send + 'static> StreamConn<S> {
    /// Wraps a stream between `local` and `peer`; reading fails after `idle` without a frame.
    pub fn new(stream: S, local: SocketAddr, peer: SocketAddr, idle: Duration) -> StreamConn<S> {
        let (r, w) = tokio::io::split(stream);
        StreamConn {
            reader: Mutex::new(r),
            writer: Mutex::new(w),
            local,
            peer,
            idle,
            closed: Arc::new(Notify::new()),
        }
    }

    /// Notified once reading has failed or ended (the connection is over).
    pub fn closed(&self) -> Arc<Notify> {
        self.closed.clone()
    }

    async fn write_frame(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        let pad = match buf.first() {
            Some(b) if b >> 6 == 0b01 => (4 - buf.len() % 4) % 4,
            _ => 0,
        };
        let mut w = self.writer.lock().await;
        w.write_all(buf).await?;
        if pad > 0 {
            w.write_all(&[0u8; 3][..pad]).await?;
        }
        w.flush().await?;
        Ok(buf.len())
    }
}

#[async_trait]
impl<S: AsyncRead + AsyncWrite + Send + Sync + 'static> Conn for StreamConn<S> {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Err(webrtc_util::Error::Other(
            "a stream is connected already".into(),
        ))
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        self.recv_from(buf).await.map(|(n, _)| n)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let mut r = self.reader.lock().await;
        let read = match tokio::time::timeout(self.idle, read_frame(&mut *r, buf)).await {
            Ok(res) => res,
            Err(_) => Err(FrameError::Idle),
        };
        match read {
            Ok(n) => Ok((n, self.peer)),
            Err(e) => {
                self.closed.notify_one();
                Err(webrtc_util::Error::Other(e.to_string()))
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.write_frame(buf).await
    }

    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> webrtc_util::Result<usize> {
        self.write_frame(buf).await
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.peer)
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        let _ = self.writer.lock().await.shutdown().await;
        self.closed.notify_one();
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_lengths() {
        // A STUN header announcing 8 bytes of attributes.
        assert_eq!(frame_len([0x00, 0x01, 0x00, 0x08]).unwrap(), (28, 28));
        // ChannelData of 5 bytes: padded to 8 on the stream.
        assert_eq!(frame_len([0x40, 0x00, 0x00, 0x05]).unwrap(), (12, 9));
        assert_eq!(frame_len([0x7f, 0xff, 0x00, 0x04]).unwrap(), (8, 8));
        assert!(matches!(
            frame_len([0x80, 0, 0, 0]),
            Err(FrameError::Framing)
        ));
        assert!(matches!(
            frame_len([0xc0, 0, 0, 0]),
            Err(FrameError::Framing)
        ));
    }

    #[tokio::test]
    async fn frames_round_trip_with_padding() {
        let (a, b) = tokio::io::duplex(1024);
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let left = StreamConn::new(a, addr, addr, Duration::from_secs(30));
        let right = StreamConn::new(b, addr, addr, Duration::from_secs(30));
        let chan = [0x40, 0x01, 0x00, 0x03, 1, 2, 3];
        let mut stun = vec![0x00, 0x01, 0x00, 0x04];
        stun.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        stun.extend_from_slice(&[7u8; 12]);
        stun.extend_from_slice(&[0x80, 0x22, 0x00, 0x00]);
        left.send(&chan).await.unwrap();
        left.send(&stun).await.unwrap();
        let mut buf = [0u8; 1500];
        let (n, _) = right.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], &chan, "padding stripped");
        let (n, _) = right.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], &stun[..]);
        // Garbage closes the connection instead of desynchronising it.
        left.send(&[0xff, 0, 0, 0]).await.unwrap();
        assert!(right.recv_from(&mut buf).await.is_err());
    }
}
