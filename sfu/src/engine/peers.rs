//! Server-side peers: their str0m configuration, creation, removal and failure.

use super::*;
use crate::demux::{shard_of_ufrag, shard_ufrag};
use str0m::media::MediaKind;
use str0m::rtp::{Extension, ExtensionMap};
use str0m::{Candidate, RtcConfig};
use tracing::warn;

/// RTX cache of a server-side audio send stream, in packets. Audio is forwarded without RTX
/// (not NACKable), so nothing is ever cached: the smallest size str0m takes.
pub const AUDIO_SEND_BUFFER: usize = 1;
/// RTX cache of a server-side video send stream, at most, in packets (about 110 KiB: one
/// `RtpPacket` per slot, the payload is shared): [`VIDEO_RTX_AGE`] of a stream up to about
/// 2 Mbit/s. The cache grows on demand (a 500 kbit/s track, about 60 packets/s, keeps 80
/// slots). str0m's default is 1000 packets.
pub const VIDEO_SEND_BUFFER: usize = 256;
/// How long a forwarded video packet stays resendable (answers NACKs). str0m's default is 3 s;
/// a NACK comes one round trip after the loss, so 1 s covers round trips up to several hundred
/// ms with retries. Each cached packet costs its `RtpPacket` (the payload is shared).
pub const VIDEO_RTX_AGE: Duration = Duration::from_secs(1);
/// The RTX ratio cap (str0m's default): queued resends are dropped while more than 15 % of
/// the stream's bytes are resends.
const RTX_RATIO_CAP: Option<f32> = Some(0.15);

/// The str0m configuration of every server-side peer; `bwe` turns on send-side bandwidth
/// estimation (TWCC) and str0m's pacer, for subscribers that may need a simulcast step-down.
/// Send streams' RTX caches are sized with [`AUDIO_SEND_BUFFER`] and [`VIDEO_SEND_BUFFER`].
/// Each peer keeps its own DTLS certificate: the SDK tells a replaced server peer by its new
/// fingerprint (docs/PROTOCOL.md).
pub fn rtc_config(bwe: bool) -> RtcConfig {
    let mut cfg = RtcConfig::new()
        .set_ice_lite(true)
        .set_crypto_provider(crate::dtls::provider())
        .set_rtp_mode(true)
        .enable_h265(false)
        .enable_h266(false)
        .set_send_buffer_audio(AUDIO_SEND_BUFFER)
        .set_send_buffer_video(VIDEO_SEND_BUFFER)
        .set_stats_interval(Some(crate::metrics::STATS_INTERVAL));
    if bwe {
        cfg = cfg.enable_bwe(Some(INITIAL_BWE));
    }
    cfg
}

/// The str0m configuration of a subscriber peer: [`rtc_config`]; without an estimate, no
/// transport-wide-cc either: the client then sends no TWCC feedback (about ten SRTCP packets
/// per second per subscriber to decrypt for nothing) and str0m keeps no TWCC send register
/// (up to 1000 records, about 80 KiB, per peer).
pub fn subscriber_config(bwe: bool) -> RtcConfig {
    if bwe {
        rtc_config(true)
    } else {
        rtc_config(false).set_extension_map(without_twcc())
    }
}

/// Sizes a server-side send stream's RTX cache by its kind: audio keeps nothing (no RTX, no
/// resend statistics), video [`VIDEO_SEND_BUFFER`] packets for [`VIDEO_RTX_AGE`].
pub(super) fn configure_send_stream(tx: &mut str0m::rtp::StreamTx, kind: MediaKind) {
    match kind {
        MediaKind::Audio => tx.set_rtx_cache(AUDIO_SEND_BUFFER, Duration::ZERO, None),
        MediaKind::Video => tx.set_rtx_cache(VIDEO_SEND_BUFFER, VIDEO_RTX_AGE, RTX_RATIO_CAP),
    }
}

/// str0m's standard RTP header extensions without transport-wide-cc.
fn without_twcc() -> ExtensionMap {
    let mut map = ExtensionMap::empty();
    for (id, ext) in ExtensionMap::standard().iter() {
        if *ext != Extension::TransportSequenceNumber {
            map.set(id, ext.clone());
        }
    }
    map
}

impl Engine {
    /// A new server-side peer; `bwe` turns on bandwidth estimation (subscribers only).
    pub(super) fn new_peer(&mut self, owner: &str, role: Role, bwe: bool, now: Instant) -> Key {
        let cfg = match role {
            // Publishers keep transport-wide-cc: their own uplink estimate needs our feedback.
            Role::Publisher => rtc_config(false),
            Role::Subscriber => subscriber_config(bwe),
        };
        let creds = shard_ufrag(self.shard);
        let ufrag = creds.ufrag.clone();
        // The DTLS instance `build` creates (synchronously, on this thread) stores its SRTP keys
        // in the peer's slot, for the lean audio path (subscribers only).
        let lean = lean::LeanPeer::default();
        let cfg = cfg.set_local_ice_credentials(creds);
        let ingress = role == Role::Publisher && self.opts.lean_ingress;
        let mut rtc = if ingress
            || role == Role::Subscriber && (self.opts.lean_audio || self.opts.lean_video)
        {
            crate::dtls::with_key_slot(&lean.keys, || cfg.build(now))
        } else {
            cfg.build(now)
        };
        match Candidate::host(self.local, "udp") {
            Ok(c) => {
                rtc.add_local_candidate(c);
            }
            Err(e) => warn!("host candidate {}: {e}", self.local),
        }
        if let Some(port) = self.opts.ice_tcp_port {
            let addr = SocketAddr::new(self.local.ip(), port);
            match crate::tcp::candidate(addr) {
                Ok(c) => {
                    rtc.add_local_candidate(c);
                }
                Err(e) => warn!("TCP host candidate {addr}: {e}"),
            }
        }
        let key = self.peers.insert(Peer {
            rtc: Box::new(rtc),
            ufrag: ufrag.clone(),
            owner: owner.to_owned(),
            role,
            timeout: None,
            dirty: false,
            connected: false,
            deadline: None,
            ssrcs: Vec::new(),
            sub_mids: HashMap::new(),
            bwe: None,
            nacks_seen: Vec::new(),
            untagged_ufrag: None,
            lean,
            ingress: ingress.then(Box::default),
            #[cfg(feature = "fault-injection")]
            panic_next: false,
        });
        self.routes.set_ufrag(key, None, &ufrag);
        key
    }

    /// Routes a peer's STUN by its local ufrag after an ICE restart changed it (the new one
    /// lacks the shard tag, so it goes into the shared untagged map too).
    pub(super) fn route_new_local_ufrag(&mut self, key: Key) {
        let Some(peer) = self.peers.get_mut(key) else {
            return;
        };
        let ufrag = peer.rtc.direct_api().local_ice_credentials().ufrag;
        if ufrag == peer.ufrag {
            return;
        }
        self.routes.set_ufrag(key, Some(&peer.ufrag), &ufrag);
        peer.ufrag = ufrag.clone();
        if shard_of_ufrag(&ufrag) != Some(self.shard) {
            let mut map = self.untagged.write();
            if let Some(old) = peer.untagged_ufrag.take() {
                map.remove(&old);
            }
            map.insert(ufrag.clone(), self.shard);
            peer.untagged_ufrag = Some(ufrag);
        }
    }

    /// Removes a peer and everything that forwards to it.
    pub(super) fn drop_peer(&mut self, key: Key) {
        let Some(peer) = self.peers.remove(key) else {
            return;
        };
        if let Some(u) = &peer.untagged_ufrag {
            self.untagged.write().remove(u);
        }
        if peer.role == Role::Subscriber {
            for pk in peer.sub_mids.values() {
                if let Some(p) = self.producers.get_mut(*pk) {
                    p.consumers.retain(|c| c.peer != key);
                }
            }
        }
        self.routes.remove(key, &peer.ufrag);
    }

    /// A peer failed (timeout, error, panic): drop it, tell the control plane, and keep the
    /// participant usable (fresh subscriber peer, publisher removed with its producers).
    pub(super) fn fail_peer(&mut self, key: Key, reason: &str) {
        let Some(peer) = self.peers.get(key) else {
            return;
        };
        let (owner, role) = (peer.owner.clone(), peer.role);
        warn!("peer of {owner} ({role:?}) failed: {reason}");
        self.drop_peer(key);
        let _ = self.events.send(SfuEvent::PeerFailed {
            participant_id: owner.clone(),
            reason: reason.to_owned(),
        });
        let now = Instant::now();
        match role {
            Role::Publisher => {
                let pks = match self.parts.get_mut(&owner) {
                    Some(p) if p.publisher == Some(key) => {
                        p.publisher = None;
                        p.producers.clone()
                    }
                    _ => return,
                };
                for pk in pks {
                    self.remove_producer(pk);
                }
                self.renegotiate_call_of(&owner, now);
            }
            Role::Subscriber => {
                let is_current = self.parts.get(&owner).is_some_and(|p| p.subscriber == key);
                if !is_current {
                    return;
                }
                let bwe = self.parts.get(&owner).is_some_and(|p| p.bwe);
                let fresh = self.new_peer(&owner, Role::Subscriber, bwe, now);
                if let Some(p) = self.parts.get_mut(&owner) {
                    p.subscriber = fresh;
                    p.sub = Negotiation::default();
                }
                self.renegotiate(&owner, now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{rtc_config, AUDIO_SEND_BUFFER, INITIAL_BWE, VIDEO_SEND_BUFFER};
    use str0m::rtp::{Extension, ExtensionMap};

    #[test]
    fn listeners_get_small_send_buffers_and_no_estimate() {
        // An audio room's listener: no bandwidth estimation (no pacer, no TWCC, no padding),
        // a one-packet audio send buffer (audio has no RTX), a bounded video buffer.
        let cfg = rtc_config(false);
        assert_eq!(cfg.bwe_initial_bitrate(), None);
        assert_eq!(cfg.send_buffer_audio(), AUDIO_SEND_BUFFER);
        assert_eq!(AUDIO_SEND_BUFFER, 1);
        assert_eq!(cfg.send_buffer_video(), VIDEO_SEND_BUFFER);
        assert!(VIDEO_SEND_BUFFER < str0m::RtcConfig::new().send_buffer_video());
        assert!(cfg.stats_interval().is_some(), "NACK metrics need stats");
        let video = rtc_config(true);
        assert_eq!(video.bwe_initial_bitrate(), Some(INITIAL_BWE));
        assert_eq!(video.send_buffer_audio(), AUDIO_SEND_BUFFER);
    }

    #[test]
    fn a_listener_keeps_no_twcc_register_and_a_subscriber_with_bwe_does() {
        // Measured (benches/memory.rs): str0m keeps a TWCC send register of up to 1000
        // records per peer that negotiated transport-wide-cc; a listener without an estimate
        // does not negotiate it. Stats stay on: turning them off saved under 1 KiB.
        let mut listener = super::subscriber_config(false);
        assert_eq!(listener.bwe_initial_bitrate(), None);
        assert_eq!(
            listener
                .extension_map()
                .id_of(Extension::TransportSequenceNumber),
            None
        );
        assert!(listener.stats_interval().is_some());
        assert_eq!(listener.send_buffer_audio(), AUDIO_SEND_BUFFER);
        let mut with_bwe = super::subscriber_config(true);
        assert_eq!(with_bwe.bwe_initial_bitrate(), Some(INITIAL_BWE));
        assert!(with_bwe
            .extension_map()
            .id_of(Extension::TransportSequenceNumber)
            .is_some());
        assert_eq!(with_bwe.send_buffer_video(), VIDEO_SEND_BUFFER);
    }

    #[test]
    fn subscribers_without_estimate_do_not_offer_twcc() {
        let map = super::without_twcc();
        assert_eq!(map.id_of(Extension::TransportSequenceNumber), None);
        let std = ExtensionMap::standard();
        assert!(std.id_of(Extension::TransportSequenceNumber).is_some());
        assert_eq!(map.iter().count() + 1, std.iter().count());
        assert_eq!(
            map.id_of(Extension::AudioLevel),
            std.id_of(Extension::AudioLevel)
        );
    }
}

#[cfg(test)]
mod size_tests {
    use super::{Peer, Rtc};
    use std::mem::size_of;

    #[test]
    fn a_peer_slot_does_not_hold_the_rtc_inline() {
        // The peers' `SlotMap` keeps up to twice as many slots as peers: an empty slot must
        // cost the small `Peer`, not str0m's ~10 KiB `Rtc` (docs/BENCHMARKS.md, *Memory per
        // audio listener, media plane*).
        println!(
            "size_of: Peer {} B, Rtc {} B",
            size_of::<Peer>(),
            size_of::<Rtc>()
        );
        assert!(size_of::<Rtc>() > 4096, "str0m's Rtc is large inline");
        assert!(size_of::<Peer>() <= 1024, "Peer is {} B", size_of::<Peer>());
    }
}
