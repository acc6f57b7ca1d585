//! The embedded TURN server (docs/ARCHITECTURE.md, TURN): UDP, TCP and TLS listeners running
//! the `turn` crate's server (webrtc-rs), with this project's policy in front of it: credentials
//! that expire ([`credentials`]), relaying only to this node's media address and allocation
//! limits ([`policy`], [`relay`]). Clients get the URLs and a credential in `joined`
//! ([`ice_servers`]). Also NAT discovery by STUN ([`nat`]).
//!
//! Start-up is in two steps so that `joined` can carry the bound ports: [`TurnListeners::bind`]
//! before the control state is built (it writes the bound addresses into the configuration),
//! [`TurnServer::start`] once the media socket's address is known.

pub mod credentials;
pub mod filter;
pub mod nat;
pub mod policy;
pub mod relay;
pub mod stream;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use greenroom_proto::IceServer;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use turn::allocation::AllocationInfo;
use turn::server::config::{ConnConfig, ServerConfig};
use turn::server::Server;
use webrtc_util::Conn;

use crate::config::{Config, TurnConfig, TurnTransport};
use credentials::{unix_now, Credentials};
use filter::FilterConn;
use policy::{Policy, PolicyConfig};
use relay::{MediaRelay, MediaTarget};
use stream::StreamConn;

/// A TCP/TLS connection that sends no frame for this long is closed (clients refresh
/// allocations and permissions, and ICE checks consent, far more often).
const STREAM_IDLE: Duration = Duration::from_secs(120);
/// Time a TLS handshake may take.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// Errors starting the TURN server.
#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    /// A listener could not be bound.
    #[error("TURN {transport:?} listener on {addr}: {source}")]
    Bind {
        /// Which listener.
        transport: TurnTransport,
        /// Its address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The `turn` crate refused the configuration.
    #[error("TURN server: {0}")]
    Turn(#[from] turn::Error),
    /// A socket error.
    #[error("TURN: {0}")]
    Util(#[from] webrtc_util::Error),
}

/// The ICE servers for `user_id` in `joined`: the embedded TURN server's URLs with a fresh
/// credential, or none when it is off.
pub fn ice_servers(config: &Config, user_id: &str) -> Vec<IceServer> {
    let t = &config.turn;
    if !t.enabled || t.transports.is_empty() {
        return Vec::new();
    }
    let host = match &t.host {
        Some(h) => h.clone(),
        None => match config.rtc.node_ip {
            IpAddr::V6(v6) => format!("[{v6}]"),
            ip => ip.to_string(),
        },
    };
    let urls = t
        .transports
        .iter()
        .map(|tr| match tr {
            TurnTransport::Udp => format!("turn:{host}:{}?transport=udp", t.udp_addr.port()),
            TurnTransport::Tcp => format!("turn:{host}:{}?transport=tcp", t.tcp_addr.port()),
            TurnTransport::Tls => format!("turns:{host}:{}?transport=tcp", t.tls_addr.port()),
        })
        .collect();
    let cred = credentials_of(config).mint(user_id, unix_now());
    vec![IceServer {
        urls,
        username: cred.username,
        credential: cred.password,
    }]
}

/// The credential minter and checker of a configuration.
pub fn credentials_of(config: &Config) -> Credentials {
    let secret = config
        .turn
        .secret
        .as_deref()
        .unwrap_or(&config.keys.api_secret);
    Credentials::new(secret, config.turn.credential_ttl_secs)
}

/// Bound, not yet serving, listeners.
pub struct TurnListeners {
    udp: Option<UdpSocket>,
    tcp: Option<TcpListener>,
    tls: Option<(TcpListener, TlsAcceptor)>,
}

impl TurnListeners {
    /// Binds the configured transports (TLS only with a certificate: `tls` is the HTTPS
    /// acceptor, whose certificate is reused) and writes the bound addresses, and the
    /// transports actually running, back into `config`.
    pub async fn bind(
        config: &mut TurnConfig,
        tls: Option<&TlsAcceptor>,
    ) -> Result<TurnListeners, TurnError> {
        let mut l = TurnListeners {
            udp: None,
            tcp: None,
            tls: None,
        };
        let bind_err = |transport, addr| {
            move |source| TurnError::Bind {
                transport,
                addr,
                source,
            }
        };
        let mut running = Vec::new();
        for &t in &config.transports {
            match t {
                TurnTransport::Udp => {
                    let s = UdpSocket::bind(config.udp_addr)
                        .await
                        .map_err(bind_err(t, config.udp_addr))?;
                    config.udp_addr = s.local_addr().map_err(bind_err(t, config.udp_addr))?;
                    l.udp = Some(s);
                }
                TurnTransport::Tcp => {
                    let s = TcpListener::bind(config.tcp_addr)
                        .await
                        .map_err(bind_err(t, config.tcp_addr))?;
                    config.tcp_addr = s.local_addr().map_err(bind_err(t, config.tcp_addr))?;
                    l.tcp = Some(s);
                }
                TurnTransport::Tls => {
                    let Some(acceptor) = tls else {
                        tracing::warn!(
                            "turn: TLS listener skipped: no certificate (server.tls or --dev-tls)"
                        );
                        continue;
                    };
                    let s = TcpListener::bind(config.tls_addr)
                        .await
                        .map_err(bind_err(t, config.tls_addr))?;
                    config.tls_addr = s.local_addr().map_err(bind_err(t, config.tls_addr))?;
                    // The HTTPS acceptor offers ALPN `http/1.1`; TURN clients offer none or
                    // their own, so the TURN listener offers nothing.
                    let mut c = (*acceptor.config()).as_ref().clone();
                    c.alpn_protocols.clear();
                    l.tls = Some((s, TlsAcceptor::from(Arc::new(c))));
                }
            }
            running.push(t);
        }
        config.transports = running;
        Ok(l)
    }
}

/// What the server needs besides its listeners.
#[derive(Debug, Clone)]
pub struct TurnSettings {
    /// Credential checks.
    pub credentials: Credentials,
    /// The one peer.
    pub media: MediaTarget,
    /// Realm and limits.
    pub policy: PolicyConfig,
}

impl TurnSettings {
    /// Settings from the configuration, for a media socket bound to `media_bound` and
    /// advertised at `rtc.node_ip`.
    pub fn from_config(config: &Config, media_bound: SocketAddr) -> TurnSettings {
        let public = SocketAddr::new(config.rtc.node_ip, media_bound.port());
        TurnSettings {
            credentials: credentials_of(config),
            media: MediaTarget::new(public, media_bound),
            policy: PolicyConfig {
                media_addr: public,
                realm: config.turn.realm.clone(),
                max_allocations_per_user: config.turn.max_allocations_per_user,
                max_allocations: config.turn.max_allocations,
            },
        }
    }
}

/// The running TURN server.
pub struct TurnServer {
    udp: Option<Server>,
    tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    policy: Arc<Mutex<Policy>>,
}

/// What every listener's servers share.
#[derive(Clone)]
struct Shared {
    settings: TurnSettings,
    policy: Arc<Mutex<Policy>>,
    closed_tx: tokio::sync::mpsc::Sender<AllocationInfo>,
    stop: watch::Receiver<bool>,
}

impl Shared {
    async fn server(&self, conn: Arc<dyn Conn + Send + Sync>) -> Result<Server, TurnError> {
        let conn = Arc::new(FilterConn::new(conn, self.policy.clone())?);
        Ok(Server::new(ServerConfig {
            conn_configs: vec![ConnConfig {
                conn,
                relay_addr_generator: Box::new(MediaRelay {
                    target: self.settings.media,
                }),
            }],
            realm: self.settings.policy.realm.clone(),
            auth_handler: Arc::new(self.settings.credentials.clone()),
            channel_bind_timeout: Duration::ZERO,
            alloc_close_notify: Some(self.closed_tx.clone()),
        })
        .await?)
    }
}

impl TurnServer {
    /// Serves the listeners.
    pub async fn start(
        listeners: TurnListeners,
        settings: TurnSettings,
    ) -> Result<TurnServer, TurnError> {
        let policy = Arc::new(Mutex::new(Policy::new(
            settings.policy.clone(),
            settings.credentials.clone(),
        )));
        let (stop, stop_rx) = watch::channel(false);
        let (closed_tx, mut closed_rx) = tokio::sync::mpsc::channel::<AllocationInfo>(256);
        let connections = Arc::new(Semaphore::new(settings.policy.max_allocations));
        let shared = Shared {
            settings,
            policy: policy.clone(),
            closed_tx,
            stop: stop_rx,
        };
        let mut tasks = Vec::new();
        let counts = policy.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(info) = closed_rx.recv().await {
                let f = info.five_tuple;
                counts.lock().closed(f.src_addr, f.dst_addr);
            }
        }));
        let udp = match listeners.udp {
            Some(s) => Some(shared.server(Arc::new(s)).await?),
            None => None,
        };
        if let Some(l) = listeners.tcp {
            let shared = shared.clone();
            let connections = connections.clone();
            tasks.push(tokio::spawn(accept_loop(l, None, shared, connections)));
        }
        if let Some((l, acceptor)) = listeners.tls {
            tasks.push(tokio::spawn(accept_loop(
                l,
                Some(acceptor),
                shared,
                connections,
            )));
        }
        Ok(TurnServer {
            udp,
            tasks,
            stop,
            policy,
        })
    }

    /// Allocations held now.
    pub fn allocations(&self) -> usize {
        self.policy.lock().allocations()
    }

    /// Allocations `user` holds now.
    pub fn allocations_of(&self, user: &str) -> usize {
        self.policy.lock().allocations_of(user)
    }

    /// Stops the listeners and closes every allocation.
    pub async fn close(self) {
        let _ = self.stop.send(true);
        if let Some(s) = &self.udp {
            let _ = s.close().await;
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Shared,
    connections: Arc<Semaphore>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("TURN accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "TURN connection refused: too many connections");
            continue;
        };
        let shared = shared.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = serve_stream(stream, peer, tls, shared).await {
                tracing::debug!(%peer, "TURN connection: {e}");
            }
        });
    }
}

/// Runs one TURN server for one TCP or TLS connection until it closes: its allocations end
/// with the connection (RFC 8656 section 3.1).
async fn serve_stream(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    shared: Shared,
) -> Result<(), TurnError> {
    let local = stream.local_addr().map_err(|e| TurnError::Util(e.into()))?;
    let _ = stream.set_nodelay(true);
    match tls {
        None => run_conn(StreamConn::new(stream, local, peer, STREAM_IDLE), shared).await,
        Some(acceptor) => {
            let stream = match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(TurnError::Util(e.into())),
                Err(_) => {
                    return Err(TurnError::Util(webrtc_util::Error::Other(
                        "TLS handshake timed out".into(),
                    )))
                }
            };
            run_conn(StreamConn::new(stream, local, peer, STREAM_IDLE), shared).await
        }
    }
}

async fn run_conn<S>(conn: StreamConn<S>, shared: Shared) -> Result<(), TurnError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Sync + 'static,
{
    let closed = conn.closed();
    let server = shared.server(Arc::new(conn)).await?;
    let mut stop = shared.stop.clone();
    tokio::select! {
        _ = closed.notified() => {}
        _ = stop.wait_for(|s| *s) => {}
    }
    let _ = server.close().await;
    Ok(())
}
