//! [`FilterConn`]: a listener connection with the [`Policy`] in front of the `turn` crate's
//! server. Refused requests are answered here and never reach the server; the server's answers
//! to `Allocate` are observed on the way out to count allocations.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use parking_lot::Mutex;
use webrtc_util::Conn;

use super::credentials::unix_now;
use super::policy::{Policy, Verdict};

/// A connection filtered by the policy.
pub struct FilterConn {
    inner: Arc<dyn Conn + Send + Sync>,
    policy: Arc<Mutex<Policy>>,
    local: SocketAddr,
}

impl FilterConn {
    /// Filters `inner` (a UDP socket or one TCP/TLS stream).
    pub fn new(
        inner: Arc<dyn Conn + Send + Sync>,
        policy: Arc<Mutex<Policy>>,
    ) -> webrtc_util::Result<FilterConn> {
        let local = inner.local_addr()?;
        Ok(FilterConn {
            inner,
            policy,
            local,
        })
    }
}

#[async_trait]
impl Conn for FilterConn {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        self.inner.connect(addr).await
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        self.recv_from(buf).await.map(|(n, _)| n)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        loop {
            let (n, src) = self.inner.recv_from(buf).await?;
            let verdict =
                self.policy
                    .lock()
                    .inbound(&buf[..n], src, self.local, Instant::now(), unix_now());
            match verdict {
                Verdict::Pass => return Ok((n, src)),
                Verdict::Drop => {}
                Verdict::Reply(answer) => {
                    if let Err(e) = self.inner.send_to(&answer, src).await {
                        tracing::debug!(%src, "TURN refusal not sent: {e}");
                    }
                }
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.inner.send(buf).await
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        self.policy.lock().outbound(buf, target, self.local);
        self.inner.send_to(buf, target).await
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        self.inner.remote_addr()
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        self.inner.close().await
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}
