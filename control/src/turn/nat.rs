//! NAT discovery: one STUN binding request to the configured server (`[nat] stun_server`) tells
//! the address this host is seen from outside; a node behind a 1:1 NAT advertises that IP in its
//! ICE candidate when `rtc.node_ip` was left at a loopback or unspecified address.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use stun::agent::TransactionId;
use stun::message::{Getter, Message, Setter, BINDING_REQUEST, CLASS_SUCCESS_RESPONSE};
use stun::xoraddr::XorMappedAddress;
use tokio::net::UdpSocket;

use crate::config::Config;

/// Attempts of the binding request (each waits `timeout / ATTEMPTS`).
const ATTEMPTS: u32 = 3;

/// Why the public address could not be discovered.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    /// The server name did not resolve.
    #[error("STUN server {0}: cannot resolve")]
    Resolve(String),
    /// A socket operation failed.
    #[error("STUN: {0}")]
    Io(#[from] std::io::Error),
    /// No answer in time.
    #[error("STUN server {0}: no answer")]
    Timeout(String),
    /// The request could not be built.
    #[error("STUN: {0}")]
    Stun(#[from] stun::Error),
}

/// Asks `server` (`host:port`) for this host's address as the server sees it.
pub async fn discover(server: &str, timeout: Duration) -> Result<SocketAddr, NatError> {
    let to = tokio::net::lookup_host(server)
        .await
        .map_err(|_| NatError::Resolve(server.to_owned()))?
        .next()
        .ok_or_else(|| NatError::Resolve(server.to_owned()))?;
    let bind: SocketAddr = if to.is_ipv4() {
        (IpAddr::from([0u8; 4]), 0).into()
    } else {
        (IpAddr::from([0u16; 8]), 0).into()
    };
    let sock = UdpSocket::bind(bind).await?;
    let mut req = Message::new();
    req.build(&[
        Box::new(TransactionId::new()) as Box<dyn Setter>,
        Box::new(BINDING_REQUEST),
    ])?;
    let mut buf = vec![0u8; 1500];
    for _ in 0..ATTEMPTS {
        sock.send_to(&req.raw, to).await?;
        let wait = tokio::time::sleep(timeout / ATTEMPTS);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                got = sock.recv_from(&mut buf) => {
                    let (n, from) = got?;
                    if from != to {
                        continue;
                    }
                    if let Some(addr) = mapped_address(&buf[..n], req.transaction_id) {
                        return Ok(addr);
                    }
                }
            }
        }
    }
    Err(NatError::Timeout(server.to_owned()))
}

/// The XOR-MAPPED-ADDRESS of a success response to transaction `tid`.
fn mapped_address(packet: &[u8], tid: TransactionId) -> Option<SocketAddr> {
    let mut m = Message {
        raw: packet.to_vec(),
        ..Default::default()
    };
    m.decode().ok()?;
    if m.transaction_id != tid || m.typ.class != CLASS_SUCCESS_RESPONSE {
        return None;
    }
    let mut a = XorMappedAddress::default();
    a.get_from(&m).ok()?;
    Some(SocketAddr::new(a.ip, a.port))
}

/// Runs the discovery when `[nat] stun_server` is set and `rtc.node_ip` is loopback or
/// unspecified, and advertises the discovered IP; returns it.
pub async fn apply(config: &mut Config) -> Result<Option<IpAddr>, NatError> {
    let Some(server) = config.nat.stun_server.clone() else {
        return Ok(None);
    };
    let ip = config.rtc.node_ip;
    if !(ip.is_loopback() || ip.is_unspecified()) {
        tracing::info!(node_ip = %ip, "rtc.node_ip is set: STUN discovery skipped");
        return Ok(None);
    }
    let public = discover(&server, Duration::from_secs(5)).await?;
    tracing::info!(stun_server = %server, public = %public.ip(), "discovered the public address");
    config.rtc.node_ip = public.ip();
    Ok(Some(public.ip()))
}
