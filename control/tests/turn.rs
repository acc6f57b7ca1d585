//! The embedded TURN server over UDP and TCP (and TLS): allocations with valid credentials relay
//! both ways to the media address (the `turn` crate's client); expired credentials and a wrong
//! password get 401; peers other than the media address are refused; the per-user allocation
//! limit holds, also when allocations race; NAT discovery against the TURN server's STUN.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ws_support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use greenroom_control::config::{Config, TurnTransport};
use greenroom_control::turn::credentials::{unix_now, Credential, Credentials};
use greenroom_control::turn::stream::StreamConn;
use greenroom_control::turn::{TurnListeners, TurnServer, TurnSettings};
use stun::agent::TransactionId;
use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
use stun::error_code::ErrorCodeAttribute;
use stun::integrity::MessageIntegrity;
use stun::message::{
    Getter, Message, MessageType, Method, Setter, CLASS_ERROR_RESPONSE, CLASS_INDICATION,
    CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, METHOD_ALLOCATE, METHOD_CHANNEL_BIND,
    METHOD_CREATE_PERMISSION, METHOD_REFRESH, METHOD_SEND,
};
use stun::textattrs::TextAttribute;
use tokio::net::{TcpStream, UdpSocket};
use turn::proto::channum::ChannelNumber;
use turn::proto::data::Data;
use turn::proto::lifetime::Lifetime;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::relayaddr::RelayedAddress;
use turn::proto::reqtrans::RequestedTransport;
use turn::proto::PROTO_UDP;
use webrtc_util::Conn;

const REALM: &str = "greenroom";
const WAIT: Duration = Duration::from_secs(20);

struct Node {
    server: Option<TurnServer>,
    udp: SocketAddr,
    tcp: SocketAddr,
    tls: Option<SocketAddr>,
    /// Stands in for the SFU's media socket.
    media: UdpSocket,
    creds: Credentials,
    /// The configuration, with the bound TURN addresses.
    config: Config,
}

impl Node {
    async fn start(per_user: usize, tls: Option<&tokio_rustls::TlsAcceptor>) -> Node {
        let media = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut config = Config::default();
        config.turn.enabled = true;
        config.turn.udp_addr = "127.0.0.1:0".parse().unwrap();
        config.turn.tcp_addr = "127.0.0.1:0".parse().unwrap();
        config.turn.tls_addr = "127.0.0.1:0".parse().unwrap();
        config.turn.max_allocations_per_user = per_user;
        config.rtc.node_ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let listeners = TurnListeners::bind(&mut config.turn, tls).await.unwrap();
        let settings = TurnSettings::from_config(&config, media.local_addr().unwrap());
        let server = TurnServer::start(listeners, settings).await.unwrap();
        Node {
            server: Some(server),
            udp: config.turn.udp_addr,
            tcp: config.turn.tcp_addr,
            tls: config
                .turn
                .transports
                .contains(&TurnTransport::Tls)
                .then_some(config.turn.tls_addr),
            media,
            creds: greenroom_control::turn::credentials_of(&config),
            config,
        }
    }

    fn server(&self) -> &TurnServer {
        self.server.as_ref().unwrap()
    }

    fn media_addr(&self) -> SocketAddr {
        self.media.local_addr().unwrap()
    }

    fn cred(&self, user: &str) -> Credential {
        self.creds.mint(user, unix_now())
    }

    async fn wait_allocations_of(&self, user: &str, n: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.server().allocations_of(user) != n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{user} holds {} allocations, expected {n}",
                self.server().allocations_of(user)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    Udp,
    Tcp,
}

/// A client transport to the TURN server: a UDP socket or one TCP stream.
async fn connect(node: &Node, t: Transport) -> (Arc<dyn Conn + Send + Sync>, SocketAddr) {
    match t {
        Transport::Udp => {
            let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            (Arc::new(s), node.udp)
        }
        Transport::Tcp => {
            let s = TcpStream::connect(node.tcp).await.unwrap();
            let local = s.local_addr().unwrap();
            (
                Arc::new(StreamConn::new(s, local, node.tcp, WAIT)),
                node.tcp,
            )
        }
    }
}

/// A raw STUN client: one transport, long-term credentials once the server gave a nonce.
struct Raw {
    conn: Arc<dyn Conn + Send + Sync>,
    server: SocketAddr,
    username: String,
    key: MessageIntegrity,
    nonce: String,
}

enum Answer {
    Success(Message),
    Error(u16),
}

impl Raw {
    fn new(conn: Arc<dyn Conn + Send + Sync>, server: SocketAddr, cred: &Credential) -> Raw {
        Raw {
            conn,
            server,
            username: cred.username.clone(),
            key: MessageIntegrity::new_long_term_integrity(
                cred.username.clone(),
                REALM.to_owned(),
                cred.password.clone(),
            ),
            nonce: String::new(),
        }
    }

    fn build(
        &self,
        method: Method,
        class: stun::message::MessageClass,
        attrs: Vec<Box<dyn Setter>>,
        signed: bool,
    ) -> Message {
        let mut setters: Vec<Box<dyn Setter>> = vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(method, class)),
        ];
        setters.extend(attrs);
        if signed {
            setters.push(Box::new(TextAttribute::new(
                ATTR_USERNAME,
                self.username.clone(),
            )));
            setters.push(Box::new(TextAttribute::new(ATTR_REALM, REALM.to_owned())));
            setters.push(Box::new(TextAttribute::new(ATTR_NONCE, self.nonce.clone())));
            setters.push(Box::new(self.key.clone()));
        }
        let mut m = Message::new();
        m.build(&setters).unwrap();
        m
    }

    async fn send(&self, m: Message) -> TransactionId {
        self.conn.send_to(&m.raw, self.server).await.unwrap();
        m.transaction_id
    }

    async fn recv(&self, tid: TransactionId) -> Message {
        let mut buf = vec![0u8; 1500];
        loop {
            let (n, _) = tokio::time::timeout(WAIT, self.conn.recv_from(&mut buf))
                .await
                .expect("a TURN answer")
                .unwrap();
            let mut m = Message {
                raw: buf[..n].to_vec(),
                ..Default::default()
            };
            if m.decode().is_ok() && m.transaction_id == tid {
                return m;
            }
        }
    }

    async fn request(
        &mut self,
        method: Method,
        attrs: impl Fn() -> Vec<Box<dyn Setter>>,
    ) -> Answer {
        if self.nonce.is_empty() {
            // The first, unauthenticated request gets 401 with the realm and a nonce.
            let tid = self
                .send(self.build(method, CLASS_REQUEST, attrs(), false))
                .await;
            let m = self.recv(tid).await;
            assert_eq!(m.typ.class, CLASS_ERROR_RESPONSE);
            assert_eq!(code(&m), 401);
            self.nonce = TextAttribute::get_from_as(&m, ATTR_NONCE).unwrap().text;
            let realm = TextAttribute::get_from_as(&m, ATTR_REALM).unwrap().text;
            assert_eq!(realm, REALM);
        }
        let tid = self
            .send(self.build(method, CLASS_REQUEST, attrs(), true))
            .await;
        let m = self.recv(tid).await;
        if m.typ.class == CLASS_SUCCESS_RESPONSE {
            Answer::Success(m)
        } else {
            Answer::Error(code(&m))
        }
    }

    async fn allocate(&mut self) -> Result<SocketAddr, u16> {
        match self
            .request(METHOD_ALLOCATE, || {
                vec![Box::new(RequestedTransport {
                    protocol: PROTO_UDP,
                })]
            })
            .await
        {
            Answer::Success(m) => {
                let mut a = RelayedAddress::default();
                a.get_from(&m).unwrap();
                Ok(SocketAddr::new(a.ip, a.port))
            }
            Answer::Error(c) => Err(c),
        }
    }

    async fn permission(&mut self, peers: &[SocketAddr]) -> Result<(), u16> {
        let peers = peers.to_vec();
        let attrs = move || {
            peers
                .iter()
                .map(|p| {
                    Box::new(PeerAddress {
                        ip: p.ip(),
                        port: p.port(),
                    }) as Box<dyn Setter>
                })
                .collect()
        };
        match self.request(METHOD_CREATE_PERMISSION, attrs).await {
            Answer::Success(_) => Ok(()),
            Answer::Error(c) => Err(c),
        }
    }

    async fn channel_bind(&mut self, peer: SocketAddr, number: u16) -> Result<(), u16> {
        let attrs = move || {
            vec![
                Box::new(ChannelNumber(number)) as Box<dyn Setter>,
                Box::new(PeerAddress {
                    ip: peer.ip(),
                    port: peer.port(),
                }),
            ]
        };
        match self.request(METHOD_CHANNEL_BIND, attrs).await {
            Answer::Success(_) => Ok(()),
            Answer::Error(c) => Err(c),
        }
    }

    async fn send_indication(&self, peer: SocketAddr, data: &[u8]) {
        let m = self.build(
            METHOD_SEND,
            CLASS_INDICATION,
            vec![
                Box::new(PeerAddress {
                    ip: peer.ip(),
                    port: peer.port(),
                }),
                Box::new(Data(data.to_vec())),
            ],
            false,
        );
        self.send(m).await;
    }

    async fn release(&mut self) {
        let answer = self
            .request(METHOD_REFRESH, || vec![Box::new(Lifetime(Duration::ZERO))])
            .await;
        assert!(
            matches!(answer, Answer::Success(_)),
            "refresh with lifetime 0"
        );
    }
}

fn code(m: &Message) -> u16 {
    let mut e = ErrorCodeAttribute::default();
    e.get_from(m).unwrap();
    e.code.0
}

/// Waits for a datagram on `sock`.
async fn recv(sock: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 1500];
    let (n, from) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf))
        .await
        .expect("a relayed datagram")
        .unwrap();
    (buf[..n].to_vec(), from)
}

async fn relay_both_ways(t: Transport) {
    let node = Node::start(10, None).await;
    let cred = node.cred("alice");
    let (conn, server) = connect(&node, t).await;
    let client = turn::client::Client::new(turn::client::ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: cred.username.clone(),
        password: cred.password.clone(),
        realm: REALM.to_owned(),
        software: String::new(),
        rto_in_ms: 0,
        conn,
        vnet: None,
    })
    .await
    .unwrap();
    client.listen().await.unwrap();
    let relay = client.allocate().await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    node.wait_allocations_of("alice", 1).await;
    // Client -> media through the relay (the client creates the permission first).
    relay
        .send_to(b"to the sfu", node.media_addr())
        .await
        .unwrap();
    let (got, from) = recv(&node.media).await;
    assert_eq!(got, b"to the sfu");
    assert_eq!(
        from, relay_addr,
        "the media socket sees the relayed address"
    );
    // Media -> client.
    node.media.send_to(b"to the client", from).await.unwrap();
    let mut buf = vec![0u8; 1500];
    let (n, peer) = tokio::time::timeout(WAIT, relay.recv_from(&mut buf))
        .await
        .expect("relayed back")
        .unwrap();
    assert_eq!(&buf[..n], b"to the client");
    assert_eq!(peer, node.media_addr());
    // Another port on the media IP: the permission (per IP) exists, yet nothing reaches it;
    // the datagram to the media address sent after it on the same path arrives.
    let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let _ = relay
        .send_to(b"elsewhere", other.local_addr().unwrap())
        .await;
    relay.send_to(b"again", node.media_addr()).await.unwrap();
    let (got, _) = recv(&node.media).await;
    assert_eq!(got, b"again");
    let mut buf = [0u8; 64];
    assert!(
        other.try_recv_from(&mut buf).is_err(),
        "relayed to another port"
    );
    relay.close().await.unwrap();
    client.close().await.unwrap();
    node.server.unwrap().close().await;
}

#[tokio::test]
async fn udp_allocation_relays_both_ways_to_the_media_address() {
    relay_both_ways(Transport::Udp).await;
}

#[tokio::test]
async fn tcp_allocation_relays_both_ways_to_the_media_address() {
    relay_both_ways(Transport::Tcp).await;
}

#[tokio::test]
async fn expired_credentials_and_wrong_password_get_401() {
    let node = Node::start(10, None).await;
    for t in [Transport::Udp, Transport::Tcp] {
        let expired = node.creds.mint("bob", unix_now() - 7 * 3600);
        assert!(expired.expires_unix < unix_now());
        let (conn, server) = connect(&node, t).await;
        assert_eq!(
            Raw::new(conn, server, &expired).allocate().await,
            Err(401),
            "{t:?}"
        );

        let mut wrong = node.cred("bob");
        wrong.password = "not-the-password".into();
        let (conn, server) = connect(&node, t).await;
        assert_eq!(
            Raw::new(conn, server, &wrong).allocate().await,
            Err(401),
            "{t:?}"
        );

        // Another secret's credentials.
        let foreign = Credentials::new("another-secret", 3600).mint("bob", unix_now());
        let (conn, server) = connect(&node, t).await;
        assert_eq!(
            Raw::new(conn, server, &foreign).allocate().await,
            Err(401),
            "{t:?}"
        );

        // The same request with valid credentials works.
        let (conn, server) = connect(&node, t).await;
        assert!(
            Raw::new(conn, server, &node.cred("bob"))
                .allocate()
                .await
                .is_ok(),
            "{t:?}"
        );
    }
    assert_eq!(node.server().allocations_of("bob"), 2);
    node.server.unwrap().close().await;
}

#[tokio::test]
async fn only_the_media_address_is_reachable() {
    let node = Node::start(10, None).await;
    let media = node.media_addr();
    let bystander = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let others: Vec<SocketAddr> = vec![
        bystander.local_addr().unwrap(),
        SocketAddr::new(media.ip(), media.port().wrapping_add(1)),
        "127.0.0.1:22".parse().unwrap(),
        "10.0.0.1:7882".parse().unwrap(),
        "192.168.1.1:7882".parse().unwrap(),
        "8.8.8.8:53".parse().unwrap(),
        "[::1]:7882".parse().unwrap(),
    ];
    for t in [Transport::Udp, Transport::Tcp] {
        let (conn, server) = connect(&node, t).await;
        let mut c = Raw::new(conn, server, &node.cred("carol"));
        c.allocate().await.unwrap();
        for other in &others {
            assert_eq!(
                c.permission(&[*other]).await,
                Err(403),
                "{t:?} permission {other}"
            );
            assert_eq!(
                c.channel_bind(*other, 0x4001).await,
                Err(403),
                "{t:?} bind {other}"
            );
        }
        // One forbidden peer among allowed ones refuses the whole request.
        assert_eq!(c.permission(&[media, others[0]]).await, Err(403), "{t:?}");
        assert_eq!(c.permission(&[media]).await, Ok(()), "{t:?}");
        assert_eq!(c.channel_bind(media, 0x4000).await, Ok(()), "{t:?}");
        // Send indications: the one to the bystander is dropped, the one to the media address
        // (sent after it on the same path) arrives; then the bystander has nothing.
        c.send_indication(others[0], b"to the bystander").await;
        c.send_indication(media, b"to the media").await;
        let (got, _) = recv(&node.media).await;
        assert_eq!(got, b"to the media", "{t:?}");
        let mut buf = [0u8; 64];
        assert!(
            bystander.try_recv_from(&mut buf).is_err(),
            "{t:?}: relayed to a bystander"
        );
    }
    node.server.unwrap().close().await;
}

#[tokio::test]
async fn per_user_allocation_limit_holds() {
    let node = Node::start(2, None).await;
    let mut held = Vec::new();
    for t in [Transport::Udp, Transport::Tcp] {
        let (conn, server) = connect(&node, t).await;
        let mut c = Raw::new(conn, server, &node.cred("dave"));
        c.allocate().await.unwrap();
        held.push(c);
    }
    for t in [Transport::Udp, Transport::Tcp] {
        let (conn, server) = connect(&node, t).await;
        assert_eq!(
            Raw::new(conn, server, &node.cred("dave")).allocate().await,
            Err(486),
            "{t:?}"
        );
    }
    // Another user is not affected.
    let (conn, server) = connect(&node, Transport::Udp).await;
    assert!(Raw::new(conn, server, &node.cred("erin"))
        .allocate()
        .await
        .is_ok());
    assert_eq!(node.server().allocations_of("dave"), 2);
    // Releasing one (UDP: refresh with lifetime 0) makes room again.
    held[0].release().await;
    node.wait_allocations_of("dave", 1).await;
    let (conn, server) = connect(&node, Transport::Udp).await;
    assert!(Raw::new(conn, server, &node.cred("dave"))
        .allocate()
        .await
        .is_ok());
    node.wait_allocations_of("dave", 2).await;
    // Closing a TCP connection ends its allocation.
    drop(held.pop());
    node.wait_allocations_of("dave", 1).await;
    node.server.unwrap().close().await;
}

#[tokio::test]
async fn racing_allocations_respect_the_limit() {
    let node = Arc::new(Node::start(10, None).await);
    // Every client stays open to the end: a UDP port freed and reused by a later round would
    // meet the earlier allocation on its 5-tuple (437 Allocation Mismatch).
    let mut held = Vec::new();
    for round in 0..5 {
        let user = format!("racer{round}");
        let mut tasks = Vec::new();
        for i in 0..25 {
            let node = node.clone();
            let user = user.clone();
            tasks.push(tokio::spawn(async move {
                let t = if i % 2 == 0 {
                    Transport::Udp
                } else {
                    Transport::Tcp
                };
                let (conn, server) = connect(&node, t).await;
                let mut c = Raw::new(conn, server, &node.cred(&user));
                (c.allocate().await, c)
            }));
        }
        let mut ok = 0;
        for t in tasks {
            let (r, c) = t.await.unwrap();
            match r {
                Ok(_) => ok += 1,
                Err(code) => assert_eq!(code, 486),
            }
            held.push(c);
        }
        assert_eq!(ok, 10, "round {round}: exactly the limit succeeds");
        assert_eq!(node.server().allocations_of(&user), 10);
    }
}

#[tokio::test]
async fn tls_allocation_works_with_the_server_certificate() {
    let (cert, key) = greenroom_control::tls::self_signed(&["localhost".to_owned()]).unwrap();
    let dir = std::env::temp_dir().join(format!("greenroom-turn-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cert.pem"), &cert).unwrap();
    std::fs::write(dir.join("key.pem"), &key).unwrap();
    let acceptor =
        greenroom_control::tls::from_files(&dir.join("cert.pem"), &dir.join("key.pem")).unwrap();
    let node = Node::start(10, Some(&acceptor)).await;
    let tls_addr = node.tls.expect("TLS listener with a certificate");

    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(tls_addr).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = connector.connect(name, tcp).await.unwrap();
    let conn = Arc::new(StreamConn::new(stream, local, tls_addr, WAIT));
    let mut c = Raw::new(conn, tls_addr, &node.cred("frank"));
    let relay = c.allocate().await.unwrap();
    assert_eq!(relay.ip(), node.media_addr().ip());
    assert_eq!(c.permission(&[node.media_addr()]).await, Ok(()));
    c.send_indication(node.media_addr(), b"over tls").await;
    let (got, from) = recv(&node.media).await;
    assert_eq!(got, b"over tls");
    assert_eq!(from, relay);
    std::fs::remove_dir_all(&dir).ok();
    node.server.unwrap().close().await;
}

#[tokio::test]
async fn nat_discovery_asks_the_stun_server() {
    let node = Node::start(10, None).await;
    let mut config = Config::default();
    config.rtc.node_ip = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    config.nat.stun_server = Some(node.udp.to_string());
    let found = greenroom_control::turn::nat::apply(&mut config)
        .await
        .unwrap();
    assert_eq!(found, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    assert_eq!(config.rtc.node_ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
    // A configured node_ip wins.
    config.rtc.node_ip = "203.0.113.7".parse().unwrap();
    assert_eq!(
        greenroom_control::turn::nat::apply(&mut config)
            .await
            .unwrap(),
        None
    );
    assert_eq!(config.rtc.node_ip.to_string(), "203.0.113.7");
    // No answer is an error, not a hang.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let e = greenroom_control::turn::nat::discover(
        &silent.local_addr().unwrap().to_string(),
        Duration::from_millis(600),
    )
    .await;
    assert!(matches!(
        e,
        Err(greenroom_control::turn::nat::NatError::Timeout(_))
    ));
    node.server.unwrap().close().await;
}

#[tokio::test]
async fn joined_carries_ice_servers_the_turn_server_accepts() {
    let node = Node::start(10, None).await;
    let (state, url) = ws_support::server_with(node.config.clone()).await;
    let mut ws = ws_support::connect(&state, &url, "gina", greenroom_proto::Role::Host).await;
    let join = serde_json::json!({"type": "join", "call_cid": "default:turn1", "create": true});
    ws_support::send(&mut ws, join).await;
    let joined = loop {
        let m = ws_support::next(&mut ws).await;
        if m["type"] == "joined" {
            break m;
        }
    };
    let servers = joined["ice_servers"].as_array().unwrap();
    assert_eq!(servers.len(), 1, "{joined}");
    let urls: Vec<&str> = servers[0]["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert_eq!(
        urls,
        vec![
            format!("turn:127.0.0.1:{}?transport=udp", node.udp.port()),
            format!("turn:127.0.0.1:{}?transport=tcp", node.tcp.port()),
        ]
    );
    let cred = Credential {
        username: servers[0]["username"].as_str().unwrap().to_owned(),
        password: servers[0]["credential"].as_str().unwrap().to_owned(),
        expires_unix: 0,
    };
    assert!(cred.username.ends_with(":gina"), "{}", cred.username);
    for t in [Transport::Udp, Transport::Tcp] {
        let (conn, server) = connect(&node, t).await;
        assert!(
            Raw::new(conn, server, &cred).allocate().await.is_ok(),
            "{t:?}"
        );
    }
    assert_eq!(node.server().allocations_of("gina"), 2);

    // TURN off: an empty list.
    let (state, url) = ws_support::server_with(Config::default()).await;
    let mut ws = ws_support::connect(&state, &url, "gina", greenroom_proto::Role::Host).await;
    let join = serde_json::json!({"type": "join", "call_cid": "default:turn2", "create": true});
    ws_support::send(&mut ws, join).await;
    let joined = loop {
        let m = ws_support::next(&mut ws).await;
        if m["type"] == "joined" {
            break m;
        }
    };
    assert_eq!(joined["ice_servers"], serde_json::json!([]));
}
