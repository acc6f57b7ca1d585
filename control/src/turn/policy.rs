//! What the embedded TURN server lets through, decided per packet before the `turn` crate sees
//! it (a pure state machine, no sockets):
//!
//! - requests carrying credentials are checked first (username form, expiry, message integrity);
//!   a failure is answered `401 Unauthorized` (the crate itself would answer `400`);
//! - `CreatePermission`, `ChannelBind` and `Send` name peers: any peer other than this node's
//!   media address is refused (`403 Forbidden`, signed) or dropped (`Send` is an indication);
//! - packets that need an allocation (ChannelData, `Send`, `Refresh`, `CreatePermission`,
//!   `ChannelBind`) from a client transport without one, and methods the server does not serve,
//!   are dropped;
//! - `Allocate` counts against a per-user and a total limit (`486 Allocation Quota Reached`,
//!   `508 Insufficient Capacity`); an allocation counts from its success response until the
//!   crate reports it closed (expiry, refresh with lifetime 0, connection closed).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use stun::agent::TransactionId;
use stun::attributes::{
    ATTR_MESSAGE_INTEGRITY, ATTR_NONCE, ATTR_REALM, ATTR_USERNAME, ATTR_XOR_PEER_ADDRESS,
};
use stun::error_code::{
    ErrorCode, ErrorCodeAttribute, CODE_ALLOC_QUOTA_REACHED, CODE_FORBIDDEN,
    CODE_INSUFFICIENT_CAPACITY, CODE_UNAUTHORIZED,
};
use stun::integrity::MessageIntegrity;
use stun::message::{
    is_message, Message, MessageType, Method, Setter, CLASS_ERROR_RESPONSE, CLASS_INDICATION,
    CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, METHOD_ALLOCATE, METHOD_BINDING, METHOD_CHANNEL_BIND,
    METHOD_CREATE_PERMISSION, METHOD_REFRESH, METHOD_SEND,
};
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;

use super::credentials::Credentials;

/// An `Allocate` that got no answer in this time no longer counts against the limits.
const PENDING_TTL: Duration = Duration::from_secs(30);

/// What to do with a packet from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Hand it to the TURN server.
    Pass,
    /// Ignore it.
    Drop,
    /// Answer the client with this STUN message; the TURN server never sees the request.
    Reply(Vec<u8>),
}

/// The limits and the one peer the relay may reach.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// This node's media address as clients see it (the SFU's ICE candidate): the only peer.
    pub media_addr: SocketAddr,
    /// The realm of the long-term credentials.
    pub realm: String,
    /// Allocations one user may hold at once.
    pub max_allocations_per_user: usize,
    /// Allocations the server holds at once.
    pub max_allocations: usize,
}

/// One client transport: (client address, listener address).
type Flow = (SocketAddr, SocketAddr);

#[derive(Debug)]
struct Pending {
    user: String,
    flow: Flow,
    at: Instant,
}

/// The per-packet policy and the allocation counts.
#[derive(Debug)]
pub struct Policy {
    config: PolicyConfig,
    credentials: Credentials,
    active: HashMap<Flow, String>,
    per_user: HashMap<String, usize>,
    pending: HashMap<[u8; 12], Pending>,
}

/// A verified request: the user it was minted for and its integrity key.
struct Verified {
    user: String,
    key: Vec<u8>,
}

impl Policy {
    /// A policy with no allocations.
    pub fn new(config: PolicyConfig, credentials: Credentials) -> Policy {
        Policy {
            config,
            credentials,
            active: HashMap::new(),
            per_user: HashMap::new(),
            pending: HashMap::new(),
        }
    }

    /// Allocations held now.
    pub fn allocations(&self) -> usize {
        self.active.len()
    }

    /// Allocations `user` holds now.
    pub fn allocations_of(&self, user: &str) -> usize {
        self.per_user.get(user).copied().unwrap_or(0)
    }

    /// Decides on a packet from `client` received on `listener`.
    pub fn inbound(
        &mut self,
        packet: &[u8],
        client: SocketAddr,
        listener: SocketAddr,
        now: Instant,
        unix_now: u64,
    ) -> Verdict {
        let flow = (client, listener);
        let allocated = self.active.contains_key(&flow);
        if turn::proto::chandata::ChannelData::is_channel_data(packet) {
            // Channels are bound only to the media address (checked at ChannelBind). Without an
            // allocation there is nothing to relay (and the crate would log every such packet).
            return if allocated {
                Verdict::Pass
            } else {
                Verdict::Drop
            };
        }
        if !is_message(packet) {
            return Verdict::Drop;
        }
        let mut m = Message {
            raw: packet.to_vec(),
            ..Default::default()
        };
        if m.decode().is_err() {
            return Verdict::Drop;
        }
        if m.typ.class == CLASS_INDICATION {
            return match m.typ.method {
                METHOD_SEND if allocated && self.peers_allowed(&m) => Verdict::Pass,
                _ => Verdict::Drop,
            };
        }
        match m.typ.method {
            METHOD_BINDING | METHOD_ALLOCATE => {}
            // Requests on an allocation the flow does not have are dropped unanswered: the
            // crate answers none of them either, only logs an error per packet.
            METHOD_REFRESH | METHOD_CREATE_PERMISSION | METHOD_CHANNEL_BIND if allocated => {}
            _ => return Verdict::Drop,
        }
        if m.typ.class != CLASS_REQUEST || !m.contains(ATTR_MESSAGE_INTEGRITY) {
            // Binding requests, and the first unauthenticated request the server answers with
            // `401` and a nonce.
            return Verdict::Pass;
        }
        let verified = match self.verify(&m, unix_now) {
            Some(v) => v,
            None => return self.unauthorized(&m),
        };
        match m.typ.method {
            METHOD_CREATE_PERMISSION | METHOD_CHANNEL_BIND => {
                if self.peers_allowed(&m) {
                    Verdict::Pass
                } else {
                    signed_error(&m, CODE_FORBIDDEN, "peer not allowed", &verified.key)
                }
            }
            METHOD_ALLOCATE => self.allocate(&m, verified, flow, now),
            _ => Verdict::Pass,
        }
    }

    /// Observes a packet the server sends to `client` from `listener` (allocation results).
    pub fn outbound(&mut self, packet: &[u8], client: SocketAddr, listener: SocketAddr) {
        if self.pending.is_empty() || !is_message(packet) {
            return;
        }
        let mut m = Message {
            raw: packet.to_vec(),
            ..Default::default()
        };
        if m.decode().is_err() || m.typ.method != METHOD_ALLOCATE {
            return;
        }
        let Some(p) = self.pending.get(&m.transaction_id.0) else {
            return;
        };
        if p.flow != (client, listener) {
            return;
        }
        if m.typ.class == CLASS_SUCCESS_RESPONSE {
            if let Some(p) = self.pending.remove(&m.transaction_id.0) {
                if self.active.insert(p.flow, p.user.clone()).is_none() {
                    *self.per_user.entry(p.user).or_insert(0) += 1;
                }
            }
        } else if m.typ.class == CLASS_ERROR_RESPONSE {
            self.pending.remove(&m.transaction_id.0);
        }
    }

    /// The allocation of a client transport closed.
    pub fn closed(&mut self, client: SocketAddr, listener: SocketAddr) {
        if let Some(user) = self.active.remove(&(client, listener)) {
            if let Some(n) = self.per_user.get_mut(&user) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_user.remove(&user);
                }
            }
        }
    }

    fn allocate(&mut self, m: &Message, v: Verified, flow: Flow, now: Instant) -> Verdict {
        if self.active.contains_key(&flow) || self.pending.contains_key(&m.transaction_id.0) {
            // A retransmission, or a second Allocate on the same transport the server refuses.
            return Verdict::Pass;
        }
        self.pending
            .retain(|_, p| now.saturating_duration_since(p.at) < PENDING_TTL);
        let pending_of_user = self.pending.values().filter(|p| p.user == v.user).count();
        if self.allocations_of(&v.user) + pending_of_user >= self.config.max_allocations_per_user {
            return signed_error(
                m,
                CODE_ALLOC_QUOTA_REACHED,
                "allocation quota reached",
                &v.key,
            );
        }
        if self.active.len() + self.pending.len() >= self.config.max_allocations {
            return signed_error(m, CODE_INSUFFICIENT_CAPACITY, "server full", &v.key);
        }
        self.pending.insert(
            m.transaction_id.0,
            Pending {
                user: v.user,
                flow,
                at: now,
            },
        );
        Verdict::Pass
    }

    /// Checks the credentials and the integrity of a request that carries them.
    fn verify(&self, m: &Message, unix_now: u64) -> Option<Verified> {
        let username = TextAttribute::get_from_as(m, ATTR_USERNAME).ok()?.text;
        let realm = TextAttribute::get_from_as(m, ATTR_REALM).ok()?.text;
        if realm != self.config.realm {
            return None;
        }
        let key = self.credentials.key(&username, &realm, unix_now).ok()?;
        MessageIntegrity(key.clone()).check(&mut m.clone()).ok()?;
        let user = self.credentials.check(&username, unix_now).ok()?.to_owned();
        Some(Verified { user, key })
    }

    /// `401` with the realm and the client's nonce: a client that already sent these
    /// credentials gives up instead of retrying.
    fn unauthorized(&self, m: &Message) -> Verdict {
        let mut attrs: Vec<Box<dyn Setter>> = vec![
            Box::new(ErrorCodeAttribute {
                code: CODE_UNAUTHORIZED,
                reason: b"invalid or expired credentials".to_vec(),
            }),
            Box::new(TextAttribute::new(ATTR_REALM, self.config.realm.clone())),
        ];
        if let Ok(nonce) = TextAttribute::get_from_as(m, ATTR_NONCE) {
            attrs.push(Box::new(nonce));
        }
        reply(m.transaction_id, m.typ.method, attrs)
    }

    /// Whether the message names at least one peer and every peer is the media address.
    fn peers_allowed(&self, m: &Message) -> bool {
        let mut any = false;
        for attr in m
            .attributes
            .0
            .iter()
            .filter(|a| a.typ == ATTR_XOR_PEER_ADDRESS)
        {
            match peer_address(m.transaction_id, &attr.value) {
                Some(peer) if peer == self.config.media_addr => any = true,
                _ => return false,
            }
        }
        any
    }
}

/// Decodes one XOR-PEER-ADDRESS value (a message may carry several).
fn peer_address(tid: TransactionId, value: &[u8]) -> Option<SocketAddr> {
    let mut one = Message::new();
    one.transaction_id = tid;
    one.add(ATTR_XOR_PEER_ADDRESS, value);
    let mut a = XorMappedAddress::default();
    a.get_from_as(&one, ATTR_XOR_PEER_ADDRESS).ok()?;
    Some(SocketAddr::new(a.ip, a.port))
}

fn signed_error(m: &Message, code: ErrorCode, reason: &str, key: &[u8]) -> Verdict {
    reply(
        m.transaction_id,
        m.typ.method,
        vec![
            Box::new(ErrorCodeAttribute {
                code,
                reason: reason.as_bytes().to_vec(),
            }),
            Box::new(MessageIntegrity(key.to_vec())),
        ],
    )
}

fn reply(tid: TransactionId, method: Method, mut attrs: Vec<Box<dyn Setter>>) -> Verdict {
    let mut setters: Vec<Box<dyn Setter>> = vec![
        Box::new(Message {
            transaction_id: tid,
            ..Default::default()
        }),
        Box::new(MessageType::new(method, CLASS_ERROR_RESPONSE)),
    ];
    setters.append(&mut attrs);
    let mut msg = Message::new();
    match msg.build(&setters) {
        Ok(()) => Verdict::Reply(msg.raw),
        // Building from these attributes does not fail; if it ever did, no answer is safe.
        Err(_) => Verdict::Drop,
    }
}

#[cfg(test)]
mod tests {
    use stun::error_code::ErrorCodeAttribute;
    use stun::message::Getter;
    use turn::proto::peeraddr::PeerAddress;
    use turn::proto::reqtrans::RequestedTransport;
    use turn::proto::PROTO_UDP;

    use super::*;

    const NOW: u64 = 1_000_000;

    fn policy(per_user: usize, total: usize) -> Policy {
        Policy::new(
            PolicyConfig {
                media_addr: "192.0.2.1:7882".parse().unwrap(),
                realm: "r".into(),
                max_allocations_per_user: per_user,
                max_allocations: total,
            },
            Credentials::new("s", 3600),
        )
    }

    fn signed(p: &Policy, user: &str, method: Method, extra: Vec<Box<dyn Setter>>) -> Vec<u8> {
        let cred = p.credentials.mint(user, NOW);
        let mut setters: Vec<Box<dyn Setter>> = vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(method, CLASS_REQUEST)),
        ];
        setters.extend(extra);
        setters.push(Box::new(TextAttribute::new(
            ATTR_USERNAME,
            cred.username.clone(),
        )));
        setters.push(Box::new(TextAttribute::new(ATTR_REALM, "r".into())));
        setters.push(Box::new(TextAttribute::new(ATTR_NONCE, "n".into())));
        setters.push(Box::new(MessageIntegrity::new_long_term_integrity(
            cred.username,
            "r".into(),
            cred.password,
        )));
        let mut m = Message::new();
        m.build(&setters).unwrap();
        m.raw
    }

    fn code(v: &Verdict) -> u16 {
        let Verdict::Reply(raw) = v else {
            panic!("expected a reply, got {v:?}")
        };
        let mut m = Message {
            raw: raw.clone(),
            ..Default::default()
        };
        m.decode().unwrap();
        let mut e = ErrorCodeAttribute::default();
        e.get_from(&m).unwrap();
        e.code.0
    }

    fn success_for(request: &[u8]) -> Vec<u8> {
        let mut req = Message {
            raw: request.to_vec(),
            ..Default::default()
        };
        req.decode().unwrap();
        let mut m = Message::new();
        m.build(&[
            Box::new(Message {
                transaction_id: req.transaction_id,
                ..Default::default()
            }) as Box<dyn Setter>,
            Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_SUCCESS_RESPONSE)),
        ])
        .unwrap();
        m.raw
    }

    fn addr(i: u16) -> SocketAddr {
        SocketAddr::new([198, 51, 100, 1].into(), 40000 + i)
    }

    #[test]
    fn tampered_or_expired_requests_get_401() {
        let mut p = policy(10, 10);
        let listener = addr(0);
        let alloc = || -> Vec<Box<dyn Setter>> {
            vec![Box::new(RequestedTransport {
                protocol: PROTO_UDP,
            })]
        };
        let good = signed(&p, "u", METHOD_ALLOCATE, alloc());
        let mut tampered = good.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(
            code(&p.inbound(&tampered, addr(1), listener, Instant::now(), NOW)),
            401
        );
        // Past its expiry (minted at NOW, valid for an hour).
        assert_eq!(
            code(&p.inbound(&good, addr(1), listener, Instant::now(), NOW + 3600)),
            401
        );
        assert_eq!(
            p.inbound(&good, addr(1), listener, Instant::now(), NOW),
            Verdict::Pass
        );
        // Garbage is dropped.
        assert_eq!(
            p.inbound(&[0xff; 24], addr(1), listener, Instant::now(), NOW),
            Verdict::Drop
        );
    }

    #[test]
    fn peers_other_than_the_media_address_get_403() {
        let mut p = policy(10, 10);
        let a = signed(
            &p,
            "u",
            METHOD_ALLOCATE,
            vec![Box::new(RequestedTransport {
                protocol: PROTO_UDP,
            })],
        );
        // Without an allocation, permission requests are dropped unanswered.
        let perm = signed(&p, "u", METHOD_CREATE_PERMISSION, vec![]);
        assert_eq!(
            p.inbound(&perm, addr(1), addr(0), Instant::now(), NOW),
            Verdict::Drop
        );
        assert_eq!(
            p.inbound(&[0x40, 0, 0, 1, 7], addr(1), addr(0), Instant::now(), NOW),
            Verdict::Drop
        );
        assert_eq!(
            p.inbound(&a, addr(1), addr(0), Instant::now(), NOW),
            Verdict::Pass
        );
        p.outbound(&success_for(&a), addr(1), addr(0));
        assert_eq!(
            p.inbound(&[0x40, 0, 0, 1, 7], addr(1), addr(0), Instant::now(), NOW),
            Verdict::Pass
        );
        let media: SocketAddr = "192.0.2.1:7882".parse().unwrap();
        for (peer, want) in [
            (media, None),
            ("192.0.2.1:7883".parse().unwrap(), Some(403)),
            ("127.0.0.1:7882".parse().unwrap(), Some(403)),
            ("10.1.2.3:7882".parse().unwrap(), Some(403)),
        ] {
            let peer: SocketAddr = peer;
            let m = signed(
                &p,
                "u",
                METHOD_CREATE_PERMISSION,
                vec![Box::new(PeerAddress {
                    ip: peer.ip(),
                    port: peer.port(),
                })],
            );
            let v = p.inbound(&m, addr(1), addr(0), Instant::now(), NOW);
            match want {
                None => assert_eq!(v, Verdict::Pass, "{peer}"),
                Some(c) => assert_eq!(code(&v), c, "{peer}"),
            }
        }
        // A permission naming no peer is refused as well.
        let m = signed(&p, "u", METHOD_CREATE_PERMISSION, vec![]);
        assert_eq!(
            code(&p.inbound(&m, addr(1), addr(0), Instant::now(), NOW)),
            403
        );
    }

    #[test]
    fn allocations_count_from_success_until_closed() {
        let mut p = policy(2, 3);
        let l = addr(0);
        let alloc = |p: &Policy, u: &str| {
            signed(
                p,
                u,
                METHOD_ALLOCATE,
                vec![Box::new(RequestedTransport {
                    protocol: PROTO_UDP,
                })],
            )
        };
        let now = Instant::now();
        let a1 = alloc(&p, "u");
        assert_eq!(p.inbound(&a1, addr(1), l, now, NOW), Verdict::Pass);
        let a2 = alloc(&p, "u");
        assert_eq!(p.inbound(&a2, addr(2), l, now, NOW), Verdict::Pass);
        // Two pending: the third is over the per-user quota before any answer.
        assert_eq!(code(&p.inbound(&alloc(&p, "u"), addr(3), l, now, NOW)), 486);
        p.outbound(&success_for(&a1), addr(1), l);
        assert_eq!(p.allocations_of("u"), 1);
        // An error answer frees the pending slot.
        let mut err = success_for(&a2);
        err[0] |= 0x01;
        err[1] |= 0x10;
        p.outbound(&err, addr(2), l);
        assert_eq!(p.allocations_of("u"), 1);
        let a3 = alloc(&p, "u");
        assert_eq!(p.inbound(&a3, addr(3), l, now, NOW), Verdict::Pass);
        p.outbound(&success_for(&a3), addr(3), l);
        assert_eq!(p.allocations_of("u"), 2);
        let v = alloc(&p, "v");
        assert_eq!(p.inbound(&v, addr(4), l, now, NOW), Verdict::Pass);
        p.outbound(&success_for(&v), addr(4), l);
        // Total limit (3) reached.
        assert_eq!(code(&p.inbound(&alloc(&p, "w"), addr(5), l, now, NOW)), 508);
        p.closed(addr(1), l);
        assert_eq!(p.allocations_of("u"), 1);
        assert_eq!(p.allocations(), 2);
        // A pending Allocate never answered stops counting after a while.
        let x = alloc(&p, "w");
        assert_eq!(p.inbound(&x, addr(6), l, now, NOW), Verdict::Pass);
        let later = now + PENDING_TTL + Duration::from_secs(1);
        assert_eq!(
            p.inbound(&alloc(&p, "w"), addr(7), l, later, NOW),
            Verdict::Pass
        );
    }
}
