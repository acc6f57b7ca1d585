//! The HTTP server: our own accept loop over hyper's HTTP/1 connection driver, so that every
//! connection is bounded (header read timeout, body read deadline, per-IP connection cap,
//! TLS handshake timeout) and every accepted socket has `TCP_NODELAY` set.
//!
//! `axum::serve` has no header timeout: a client that connects and sends nothing (or half a
//! request) would hold its socket and file descriptor forever. Here hyper closes a connection
//! whose request head is not complete within [`ServeOptions::header_timeout`] (this includes an
//! idle keep-alive connection waiting for its next request), a request body must be complete
//! within [`ServeOptions::body_timeout`], and one IP address may hold at most
//! [`ServeOptions::max_conns_per_ip`] connections (the extra ones are closed at once). WebSocket
//! upgrades leave these limits behind: once upgraded, the socket belongs to the signaling code.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt;

/// How the server treats connections.
#[derive(Clone)]
pub struct ServeOptions {
    /// A connection whose request head is not complete within this time is closed (also the
    /// TLS handshake's limit, and the idle limit of a keep-alive connection between requests).
    pub header_timeout: Duration,
    /// A request body must be complete within this time after its head (else the request fails
    /// with `400 invalid_json` / `bad_request`).
    pub body_timeout: Duration,
    /// Connections one IP address may hold open at once; further ones are closed on accept.
    pub max_conns_per_ip: usize,
    /// Serve HTTPS/WSS with this TLS configuration.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("header_timeout", &self.header_timeout)
            .field("body_timeout", &self.body_timeout)
            .field("max_conns_per_ip", &self.max_conns_per_ip)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl ServeOptions {
    /// The options of a configuration's `[server]` section (without TLS).
    pub fn from_config(c: &crate::config::ServerConfig) -> ServeOptions {
        ServeOptions {
            header_timeout: Duration::from_secs(c.header_timeout_secs.max(1)),
            body_timeout: Duration::from_secs(c.body_timeout_secs.max(1)),
            max_conns_per_ip: c.max_conns_per_ip.max(1),
            tls: None,
        }
    }
}

/// Sets up an accepted socket: `TCP_NODELAY` on, so that small messages written back to back
/// (a WebSocket `participant_left` then `left`) are not held back by Nagle's algorithm waiting
/// for the peer's delayed ACK.
pub fn configure_socket(stream: &TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)
}

/// Open connections per IP address.
#[derive(Debug, Default)]
struct PerIp {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; gives its slot back when dropped.
struct Slot {
    ip: IpAddr,
    per_ip: Arc<PerIp>,
}

impl PerIp {
    fn admit(self: &Arc<Self>, ip: IpAddr, cap: usize) -> Option<Slot> {
        let mut counts = self.counts.lock();
        let n = counts.entry(ip).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(Slot {
            ip,
            per_ip: self.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.per_ip.counts.lock();
        if let Some(n) = counts.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// The request body was not complete within [`ServeOptions::body_timeout`].
#[derive(Debug, thiserror::Error)]
#[error("request body not received within the body timeout")]
pub struct BodyTimeout;

/// A request body that fails once its deadline passes.
struct DeadlineBody {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(BodyTimeout.into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `app` on `listener` until `stop` resolves: then no new connection is accepted, open
/// HTTP connections finish their request in flight and close, and this returns once they have
/// (at most `header_timeout` later; upgraded WebSockets are not waited for).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    opts: ServeOptions,
    stop: impl Future<Output = ()> + Send,
) {
    let per_ip = Arc::new(PerIp::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let accepted = tokio::select! {
            () = &mut stop => break,
            a = listener.accept() => a,
            // Reap finished connection tasks so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors (EMFILE) or a connection reset before accept: wait a
                // little rather than spin, the condition usually clears as sockets close.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = per_ip.admit(peer.ip(), opts.max_conns_per_ip) else {
            tracing::debug!(%peer, cap = opts.max_conns_per_ip, "per-IP connection cap reached: closed");
            drop(stream);
            continue;
        };
        if let Err(e) = configure_socket(&stream) {
            tracing::debug!(%peer, "cannot set TCP_NODELAY: {e}");
        }
        conns.spawn(connection(
            stream,
            peer,
            app.clone(),
            opts.clone(),
            stop_rx.clone(),
            slot,
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let grace = opts.header_timeout + Duration::from_secs(1);
    if tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::debug!("HTTP connections still open after the grace time: dropped");
        conns.abort_all();
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    opts: ServeOptions,
    stop: watch::Receiver<bool>,
    slot: Slot,
) {
    match &opts.tls {
        None => drive(stream, peer, app, &opts, stop, slot).await,
        Some(acceptor) => {
            match tokio::time::timeout(opts.header_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => drive(tls, peer, app, &opts, stop, slot).await,
                Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
}

async fn drive<IO>(
    io: IO,
    peer: SocketAddr,
    app: Router,
    opts: &ServeOptions,
    mut stop: watch::Receiver<bool>,
    slot: Slot,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let body_timeout = opts.body_timeout;
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let req = req.map(|inner| {
            Body::new(DeadlineBody {
                inner,
                deadline: Box::pin(tokio::time::sleep(body_timeout)),
            })
        });
        app.clone().oneshot(req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_timeout)
        .keep_alive(true);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let res = tokio::select! {
        r = conn.as_mut() => r,
        () = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = res {
        tracing::debug!(%peer, "HTTP connection ended: {e}");
    }
    // The slot is held until the HTTP connection is over (an upgraded WebSocket has left it).
    drop(slot);
}

/// Resolves once the server stops (or the stop sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Raises the soft limit of open files to the hard limit, so that many clients do not run the
/// process out of file descriptors at the default soft limit (often 1024). Returns the new soft
/// limit, or `None` (with a warning logged) when it cannot be read or raised.
pub fn raise_open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        match getrlimit(Resource::RLIMIT_NOFILE) {
            Ok((soft, hard)) if soft < hard => {
                match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                    Ok(()) => Some(hard),
                    Err(e) => {
                        tracing::warn!(soft, hard, "cannot raise the open-file limit: {e}");
                        Some(soft)
                    }
                }
            }
            Ok((soft, _)) => Some(soft),
            Err(e) => {
                tracing::warn!("cannot read the open-file limit: {e}");
                None
            }
        }
    }
    #[cfg(not(unix))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_have_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(TcpStream::connect(addr));
        let (server_side, _) = listener.accept().await.unwrap();
        let _client = client.await.unwrap().unwrap();
        assert!(!server_side.nodelay().unwrap(), "off by default");
        configure_socket(&server_side).unwrap();
        assert!(server_side.nodelay().unwrap());
    }

    #[test]
    fn per_ip_slots_are_capped_and_given_back() {
        let per_ip = Arc::new(PerIp::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = per_ip.admit(a, 2).unwrap();
        let _s2 = per_ip.admit(a, 2).unwrap();
        assert!(per_ip.admit(a, 2).is_none(), "third from the same IP");
        assert!(per_ip.admit(b, 2).is_some(), "another IP is not affected");
        drop(s1);
        assert!(
            per_ip.admit(a, 2).is_some(),
            "a closed connection frees its slot"
        );
    }

    #[test]
    fn open_file_limit_is_raised_to_the_hard_limit() {
        use nix::sys::resource::{getrlimit, Resource};
        let got = raise_open_file_limit().unwrap();
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(got, soft);
        assert_eq!(soft, hard);
    }
}
