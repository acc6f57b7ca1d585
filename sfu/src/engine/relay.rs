//! The shard side of the node-to-node relay (see [`crate::relay`]): local tracks out once per
//! other node of their call, announcements of them, remote participants and their tracks as
//! producers without a str0m `Rtc`, relayed packets into [`Engine::forward`], and keyframe
//! requests in both directions.

use super::fanout::InPacket;
use super::*;
use crate::relay::wire::{self, Body, Head, TrackDesc};
use crate::relay::{
    GateVersion, InBody, MediaIn, RelayDrop, RelayIn, RelayLink, RelayNode, RelayOut,
};
use greenroom_proto::SourceSet;
use slotmap::SecondaryMap;
use str0m::media::KeyframeRequestKind;
use str0m::rtp::VideoOrientation;

/// A node repeats each publisher's track announcement this often (and at once on a change).
const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);
/// An empty announcement (the publisher stopped every track) is repeated this many times.
const EMPTY_REPEATS: u8 = 3;
/// Most simulcast layers a relayed track gets.
const MAX_LAYERS: usize = 4;

/// A relay command from the handle.
pub(crate) enum RelayCmd {
    /// The relay socket to send on (sent once at start when the relay is on).
    Link(Arc<RelayLink>),
    /// The other nodes of a call (empty: none).
    CallNodes {
        call: CallCid,
        nodes: Vec<RelayNode>,
    },
    /// A local participant's gate version (stamped on its relayed packets).
    Version {
        pid: String,
        version: Arc<GateVersion>,
    },
    /// A participant whose media lives on another node.
    JoinRemote {
        call: CallCid,
        pid: String,
        user_id: String,
        node_id: String,
        gate: Arc<GateCell>,
        version: Arc<GateVersion>,
    },
}

/// One call's other nodes.
struct CallRelay {
    key: u64,
    nodes: Vec<RelayNode>,
    addrs: Arc<[SocketAddr]>,
}

/// A local producer being relayed: what each of its packets needs, found without a lookup.
struct OutTrack {
    call: u64,
    pid: String,
    source: TrackSource,
    version: Arc<GateVersion>,
    addrs: Arc<[SocketAddr]>,
    /// The rid of each of its layers (by layer index; a layer created since is looked up once).
    rids: Vec<Option<Rid>>,
}

/// The last announcement of a local publisher.
struct Announced {
    call: CallCid,
    json: String,
    at: Instant,
    repeats: u8,
}

/// A shard's relay state (empty and idle when the relay is off).
#[derive(Default)]
pub(super) struct RelayShard {
    /// The relay socket and this shard's queue of media datagrams on it.
    tx: Option<RelayOut>,
    calls: HashMap<CallCid, CallRelay>,
    /// Gate versions of this shard's participants, local and remote.
    versions: HashMap<String, Arc<GateVersion>>,
    /// Remote participant -> its node.
    remote: HashMap<String, String>,
    /// Local producers relayed, rebuilt on every tick and node-set change.
    out: SecondaryMap<Key, OutTrack>,
    /// By participant id (a participant is in one call).
    announced: HashMap<String, Announced>,
    buf: Vec<u8>,
}

impl RelayShard {
    /// Nothing to relay out (the per-packet check).
    #[inline]
    pub(super) fn is_idle(&self) -> bool {
        self.out.is_empty()
    }

    fn link(&self) -> Option<&RelayLink> {
        self.tx.as_ref().map(RelayOut::link)
    }
}

impl Engine {
    pub(super) fn on_relay_cmd(&mut self, cmd: RelayCmd, now: Instant) {
        match cmd {
            RelayCmd::Link(link) => self.relay.tx = Some(RelayOut::new(link)),
            RelayCmd::CallNodes { call, nodes } => {
                if nodes.is_empty() {
                    self.relay.calls.remove(&call);
                } else {
                    let addrs = nodes.iter().map(|n| n.addr).collect();
                    let key = wire::call_key(&call);
                    self.relay
                        .calls
                        .insert(call.clone(), CallRelay { key, nodes, addrs });
                }
                self.relay.announced.retain(|_, a| a.call != call);
                self.relay_tick(now);
            }
            RelayCmd::Version { pid, version } => {
                // A local participant now (it may have been remote on this shard before).
                self.relay.remote.remove(&pid);
                self.relay.versions.insert(pid, version);
            }
            RelayCmd::JoinRemote {
                call,
                pid,
                user_id,
                node_id,
                gate,
                version,
            } => {
                if self.parts.contains_key(&pid) {
                    self.leave(&pid, now);
                }
                self.parts.insert(
                    pid.clone(),
                    Participant {
                        call: call.clone(),
                        user_id,
                        gate,
                        publisher: None,
                        // No subscriber peer: the null key finds nothing.
                        subscriber: Key::default(),
                        producers: Vec::new(),
                        sub: Negotiation::default(),
                        unsubscribed: HashSet::new(),
                        quality: HashMap::new(),
                        bwe: false,
                    },
                );
                self.calls
                    .entry(call)
                    .or_default()
                    .members
                    .push(pid.clone());
                self.relay.remote.insert(pid.clone(), node_id);
                self.relay.versions.insert(pid, version);
            }
        }
    }

    /// The periodic relay work: forget gone participants, rebuild the relayed producers,
    /// announce changed tracks (and repeat every [`ANNOUNCE_EVERY`]).
    pub(super) fn relay_tick(&mut self, now: Instant) {
        let parts = &self.parts;
        let r = &mut self.relay;
        r.remote.retain(|pid, _| {
            parts
                .get(pid)
                .is_some_and(|p| p.subscriber == Key::default())
        });
        r.versions.retain(|pid, _| parts.contains_key(pid));
        r.out.clear();
        if r.calls.is_empty() || r.tx.is_none() {
            r.announced.clear();
            return;
        }
        for (pk, prod) in self.producers.iter() {
            if r.remote.contains_key(&prod.owner) {
                continue;
            }
            let Some(c) = r.calls.get(&prod.call) else {
                continue;
            };
            let version = r.versions.entry(prod.owner.clone()).or_default().clone();
            r.out.insert(
                pk,
                OutTrack {
                    call: c.key,
                    pid: prod.owner.clone(),
                    source: prod.source,
                    version,
                    addrs: c.addrs.clone(),
                    rids: prod.layers.iter().map(|l| l.rid).collect(),
                },
            );
        }
        self.announce(now);
    }

    /// Sends the track list of every local publisher of a relayed call when it changed or
    /// [`ANNOUNCE_EVERY`] passed.
    fn announce(&mut self, now: Instant) {
        let mut due = Vec::new();
        let mut live = HashSet::new();
        for (call, c) in &self.relay.calls {
            let Some(state) = self.calls.get(call) else {
                continue;
            };
            for pid in &state.members {
                if self.relay.remote.contains_key(pid) {
                    continue;
                }
                let Some(part) = self.parts.get(pid) else {
                    continue;
                };
                let last = self.relay.announced.get(pid.as_str());
                if part.producers.is_empty() && last.is_none() {
                    // A listener: nothing to announce, now or before.
                    continue;
                }
                let tracks: Vec<TrackDesc> = part
                    .producers
                    .iter()
                    .filter_map(|pk| self.producers.get(*pk))
                    .map(|p| self.describe(p))
                    .collect();
                let json = serde_json::to_string(&tracks).unwrap_or_default();
                let send = match last {
                    None => !tracks.is_empty(),
                    Some(a) if a.json != json => true,
                    Some(a) => {
                        now.saturating_duration_since(a.at) >= ANNOUNCE_EVERY
                            && (!tracks.is_empty() || a.repeats < EMPTY_REPEATS)
                    }
                };
                live.insert(pid.clone());
                if send {
                    due.push((
                        call.clone(),
                        pid.clone(),
                        c.key,
                        c.addrs.clone(),
                        tracks,
                        json,
                    ));
                }
            }
        }
        self.relay.announced.retain(|id, _| live.contains(id));
        let r = &mut self.relay;
        let Some(link) = r.tx.as_ref().map(RelayOut::link) else {
            return;
        };
        for (call, pid, key, addrs, tracks, json) in due {
            let head = Head {
                kind: wire::Kind::Announce,
                call: key,
                node: &link.node_id,
                pid: &pid,
                source: TrackSource::Microphone,
            };
            if wire::encode(&mut r.buf, &head, &Body::Announce(tracks), &link.key).is_err() {
                link.counters.dropped(RelayDrop::Malformed);
                continue;
            }
            for a in addrs.iter() {
                link.send(wire::Kind::Announce, &r.buf, *a);
            }
            let e = r.announced.entry(pid).or_insert(Announced {
                call: call.clone(),
                json: String::new(),
                at: now,
                repeats: 0,
            });
            e.repeats = if e.json == json {
                e.repeats.saturating_add(1)
            } else {
                0
            };
            e.json = json;
            e.call = call;
            e.at = now;
        }
    }

    /// A local producer as an announcement describes it: the codecs of the payload types it
    /// sent so far, or before its first packet every codec of its kind the publisher's peer
    /// knows (the announce changes, and is sent again, when a new payload type shows up).
    fn describe(&self, p: &Producer) -> TrackDesc {
        let audio = p.kind == MediaKind::Audio;
        let seen: Vec<PayloadParams> = p.params.iter().map(|(_, params)| *params).collect();
        let params = if !seen.is_empty() {
            seen
        } else {
            self.peers
                .get(p.publisher)
                .map(|peer| {
                    peer.rtc
                        .codec_config()
                        .params()
                        .iter()
                        .filter(|c| c.spec().codec.is_audio() == audio)
                        .copied()
                        .collect()
                })
                .unwrap_or_default()
        };
        TrackDesc {
            source: p.source,
            audio,
            params,
            rids: p
                .layers
                .iter()
                .filter_map(|l| l.rid.map(|r| r.to_string()))
                .collect(),
        }
    }

    /// A local producer's packet (past its gate) to each other node of its call: encoded and
    /// signed once, queued once per node on the shard's relay queue ([`RelayOut`], sent in one
    /// `sendmmsg` at the end of the shard's batch of work: [`Engine::relay_flush`]).
    pub(super) fn relay_out(&mut self, pk: Key, layer: u8, p: &InPacket) {
        let r = &mut self.relay;
        let (Some(tx), Some(t)) = (r.tx.as_mut(), r.out.get_mut(pk)) else {
            return;
        };
        let li = usize::from(layer);
        if li >= t.rids.len() {
            // A layer that started since the last tick: its rid, once.
            if let Some(prod) = self.producers.get(pk) {
                t.rids = prod.layers.iter().map(|l| l.rid).collect();
            }
        }
        let rid = t.rids.get(li).copied().flatten();
        let link = tx.link();
        let head = Head {
            kind: wire::Kind::Media,
            call: t.call,
            node: &link.node_id,
            pid: &t.pid,
            source: t.source,
        };
        let body = Body::Media(wire::Media {
            rid: rid.as_deref(),
            ssrc: p.ssrc,
            version: t.version.version(),
            seq: p.seq,
            ts: p.ts,
            pt: *p.pt,
            marker: p.marker,
            audio_level: p.audio_level,
            voice_activity: p.voice_activity,
            orientation: p.video_orientation.map(|o| o as u8),
            payload: &p.payload,
        });
        if wire::encode(&mut r.buf, &head, &body, &link.key).is_err() {
            link.counters.dropped(RelayDrop::Malformed);
            return;
        }
        link.counters.encoded();
        for a in t.addrs.iter() {
            tx.push_media(&r.buf, *a);
        }
    }

    /// Sends the relayed media this shard queued (called where the shard flushes its media
    /// socket, at the end of each batch of work).
    pub(super) fn relay_flush(&mut self) {
        if let Some(tx) = self.relay.tx.as_mut() {
            tx.flush();
        }
    }

    /// A keyframe request for a remote producer goes to its node; returns false for a local
    /// producer (the caller asks the publisher peer).
    pub(super) fn relay_keyframe(
        &mut self,
        pk: Key,
        rid: Option<Rid>,
        kind: KeyframeRequestKind,
        force: bool,
    ) -> bool {
        let Some(prod) = self.producers.get(pk) else {
            return false;
        };
        let r = &mut self.relay;
        let Some(node) = r.remote.get(&prod.owner) else {
            return false;
        };
        let (Some(link), Some(c)) = (r.tx.as_ref().map(RelayOut::link), r.calls.get(&prod.call))
        else {
            return true;
        };
        let Some(addr) = c.nodes.iter().find(|n| n.node_id == *node).map(|n| n.addr) else {
            return true;
        };
        let head = Head {
            kind: wire::Kind::Keyframe,
            call: c.key,
            node: &link.node_id,
            pid: &prod.owner,
            source: prod.source,
        };
        let body = Body::Keyframe {
            rid: rid.as_deref(),
            fir: kind == KeyframeRequestKind::Fir,
            force,
        };
        if wire::encode(&mut r.buf, &head, &body, &link.key).is_ok() {
            link.send(wire::Kind::Keyframe, &r.buf, addr);
        }
        true
    }

    /// A datagram from another node (authenticated by the receive thread).
    pub(super) fn on_relay(&mut self, msg: RelayIn, now: Instant) {
        let RelayIn {
            call,
            from,
            pid,
            source,
            body,
        } = msg;
        let call_matches = self
            .parts
            .get(&pid)
            .and_then(|p| self.relay.calls.get(&p.call))
            .is_some_and(|c| c.key == call);
        let remote_from_sender = self.relay.remote.get(&pid).is_some_and(|n| *n == from);
        let counters = self.relay.link().map(|l| l.counters.clone());
        let dropped = |why| {
            if let Some(c) = &counters {
                c.dropped(why);
            }
        };
        match body {
            InBody::Keyframe { rid, fir, force } => {
                // For a local publisher of the call, from any node of the call.
                if !call_matches || self.relay.remote.contains_key(&pid) {
                    return dropped(RelayDrop::UnknownTrack);
                }
                let Some((pk, layer)) = self.producer_of(&pid, source).map(|pk| {
                    let layer = self
                        .producers
                        .get(pk)
                        .and_then(|p| p.layers.iter().position(|l| l.rid == rid));
                    (pk, layer)
                }) else {
                    return dropped(RelayDrop::UnknownTrack);
                };
                let kind = if fir {
                    KeyframeRequestKind::Fir
                } else {
                    KeyframeRequestKind::Pli
                };
                self.request_keyframe(pk, layer, kind, now, force);
            }
            InBody::Announce(tracks) => {
                if !call_matches || !remote_from_sender {
                    return dropped(RelayDrop::UnknownTrack);
                }
                self.apply_announce(&pid, tracks, now);
            }
            InBody::Media(m) => {
                if !call_matches || !remote_from_sender {
                    return dropped(RelayDrop::UnknownTrack);
                }
                let Some(pk) = self.producer_of(&pid, source) else {
                    return dropped(RelayDrop::UnknownTrack);
                };
                if self
                    .relay
                    .versions
                    .get(&pid)
                    .is_some_and(|v| v.stale(source, m.version))
                {
                    return dropped(RelayDrop::StaleVersion);
                }
                let Some(layer) = self.remote_layer(pk, &m) else {
                    return dropped(RelayDrop::Malformed);
                };
                let p = InPacket {
                    ssrc: m.ssrc,
                    seq: m.seq,
                    ts: m.ts,
                    pt: Pt::from(m.pt),
                    marker: m.marker,
                    audio_level: m.audio_level,
                    voice_activity: m.voice_activity,
                    video_orientation: m.orientation.map(VideoOrientation::from),
                    payload: m.payload,
                    at: now,
                };
                self.forward(pk, layer, p, now);
            }
        }
    }

    /// The producer of `pid`'s `source`.
    fn producer_of(&self, pid: &str, source: TrackSource) -> Option<Key> {
        self.parts
            .get(pid)?
            .producers
            .iter()
            .copied()
            .find(|pk| self.producers.get(*pk).is_some_and(|p| p.source == source))
    }

    /// The layer of a relayed packet (created at its first packet, like a local one's); a new
    /// SSRC on a layer starts a new epoch.
    fn remote_layer(&mut self, pk: Key, m: &MediaIn) -> Option<u8> {
        let prod = self.producers.get_mut(pk)?;
        let li = match prod.layers.iter().position(|l| l.rid == m.rid) {
            Some(i) => i,
            None if prod.layers.len() < MAX_LAYERS => {
                prod.layers.push(Layer {
                    rid: m.rid,
                    ssrc: None,
                    last_keyframe_req: None,
                    bytes: 0,
                    rate_bps: 0.0,
                });
                prod.layers.len() - 1
            }
            None => return None,
        };
        let layer = &mut prod.layers[li];
        let ssrc = Ssrc::from(m.ssrc);
        if layer.ssrc.is_some_and(|s| s != ssrc) {
            prod.epoch = prod.epoch.wrapping_add(1);
        }
        layer.ssrc = Some(ssrc);
        // `li` < MAX_LAYERS, so it fits.
        Some(li as u8)
    }

    /// A remote publisher's complete track list: producers added, updated or removed; the
    /// call's local subscribers are re-offered when the set changed.
    fn apply_announce(&mut self, pid: &str, tracks: Vec<TrackDesc>, now: Instant) {
        let Some(part) = self.parts.get(pid) else {
            return;
        };
        let (call, gate, old) = (part.call.clone(), part.gate.clone(), part.producers.clone());
        let mut changed = false;
        for pk in old {
            let keep = self.producers.get(pk).is_some_and(|p| {
                tracks
                    .iter()
                    .any(|t| t.source == p.source && t.audio == (p.kind == MediaKind::Audio))
            });
            if !keep {
                self.remove_producer(pk);
                changed = true;
            }
        }
        for t in tracks {
            let params: Vec<(Pt, PayloadParams)> = t.params.iter().map(|p| (p.pt(), *p)).collect();
            if let Some(pk) = self.producer_of(pid, t.source) {
                if let Some(p) = self.producers.get_mut(pk) {
                    p.params = params;
                }
                continue;
            }
            let kind = if t.audio {
                MediaKind::Audio
            } else {
                MediaKind::Video
            };
            let pk = self.producers.insert(Producer {
                owner: pid.to_owned(),
                call: call.clone(),
                source: t.source,
                bit: SourceSet::bit(t.source),
                gate: gate.clone(),
                // No publisher peer: packets arrive by relay.
                publisher: Key::default(),
                mid: Mid::from("relay"),
                kind,
                epoch: 0,
                open: false,
                layers: Vec::new(),
                params,
                consumers: Vec::new(),
                level: LevelMeter::default(),
                cache: None,
            });
            if let Some(p) = self.parts.get_mut(pid) {
                p.producers.push(pk);
            }
            changed = true;
        }
        if changed {
            self.renegotiate_call_of(pid, now);
        }
    }
}
