//! The media channel's frames (JSON text frames; see the module above).

use std::net::SocketAddr;

use greenroom_proto::{
    CallCid, MediaGate, PeerTarget, PublishTrack, Quality, SourceSet, SubscribedTrack, TrackSource,
};
use greenroom_sfu::SfuEvent;
use serde::{Deserialize, Serialize};

/// A gate on the wire: the send bits of [`SourceSet`] and the receive flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireGate {
    /// [`SourceSet::bits`].
    pub send: u8,
    /// [`MediaGate::receive`].
    pub receive: bool,
}

impl From<MediaGate> for WireGate {
    fn from(g: MediaGate) -> Self {
        WireGate {
            send: g.send.bits(),
            receive: g.receive,
        }
    }
}

impl From<WireGate> for MediaGate {
    fn from(g: WireGate) -> Self {
        let send = SourceSet::ALL
            .iter()
            .filter(|s| g.send & SourceSet::bit(*s) != 0)
            .fold(SourceSet::EMPTY, SourceSet::with);
        MediaGate {
            send,
            receive: g.receive,
        }
    }
}

/// A relay peer on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireRelayNode {
    /// Node id.
    pub node_id: String,
    /// Its relay address.
    pub addr: SocketAddr,
}

/// One operation on the media node's plane (the [`greenroom_sfu::Sfu`] method of that name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Opens the channel: the reply is [`Hello`].
    Hello {
        /// The home's node id.
        node_id: String,
    },
    /// A participant whose media lives on this node.
    Join {
        /// Call.
        call: CallCid,
        /// Participant.
        pid: String,
        /// User.
        user_id: String,
        /// Gate.
        gate: WireGate,
        /// The call's gate version.
        version: u64,
        /// [`JoinOptions::bandwidth_estimation`].
        bandwidth_estimation: bool,
    },
    /// A participant whose media lives on another node.
    JoinRemote {
        /// Call.
        call: CallCid,
        /// Participant.
        pid: String,
        /// User.
        user_id: String,
        /// The node hosting its media.
        node_id: String,
        /// Gate.
        gate: WireGate,
        /// The call's gate version.
        version: u64,
    },
    /// The other nodes of a call.
    SetCallNodes {
        /// Call.
        call: CallCid,
        /// The other nodes.
        nodes: Vec<WireRelayNode>,
    },
    /// A versioned gate.
    SetGate {
        /// Participant.
        pid: String,
        /// Gate.
        gate: WireGate,
        /// The call's gate version.
        version: u64,
    },
    /// A publisher offer; the reply's result is the SDP answer.
    Publish {
        /// Participant.
        pid: String,
        /// The offer.
        sdp: String,
        /// Its tracks.
        tracks: Vec<PublishTrack>,
    },
    /// A subscriber answer; the reply says whether it applied.
    SubscriberAnswer {
        /// Participant.
        pid: String,
        /// The answer.
        sdp: String,
    },
    /// A trickled candidate.
    IceCandidate {
        /// Participant.
        pid: String,
        /// Which peer.
        target: PeerTarget,
        /// The candidate.
        candidate: String,
    },
    /// Stops a published source.
    Unpublish {
        /// Participant.
        pid: String,
        /// The source.
        source: TrackSource,
    },
    /// (Un)subscribes a track.
    SetSubscribed {
        /// Participant.
        pid: String,
        /// Track.
        track_id: String,
        /// Subscribed or not.
        subscribed: bool,
    },
    /// A simulcast quality.
    SetQuality {
        /// Participant.
        pid: String,
        /// Track.
        track_id: String,
        /// Quality.
        quality: Quality,
    },
    /// Restarts the subscriber peer's ICE.
    RestartIce {
        /// Participant.
        pid: String,
    },
    /// Removes a (local or remote) participant.
    Leave {
        /// Participant.
        pid: String,
    },
}

/// A request: an [`Op`] and, when a reply is wanted, an id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Set when a reply is wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// The operation.
    #[serde(flatten)]
    pub op: Op,
}

/// The reply to `hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The media node's id.
    pub node_id: String,
    /// Its relay address (`None`: it runs no relay).
    pub relay_addr: Option<SocketAddr>,
}

/// A media event of the node, for the home.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WireEvent {
    /// [`SfuEvent::SubscriberOffer`].
    SubscriberOffer {
        /// Participant.
        pid: String,
        /// Offer.
        sdp: String,
        /// Tracks.
        tracks: Vec<SubscribedTrack>,
    },
    /// [`SfuEvent::PeerFailed`].
    PeerFailed {
        /// Participant.
        pid: String,
        /// Why.
        reason: String,
    },
    /// [`SfuEvent::Speakers`].
    Speakers {
        /// Call.
        call: CallCid,
        /// (participant, level).
        speakers: Vec<(String, f32)>,
    },
}

impl From<WireEvent> for SfuEvent {
    fn from(e: WireEvent) -> Self {
        match e {
            WireEvent::SubscriberOffer { pid, sdp, tracks } => SfuEvent::SubscriberOffer {
                participant_id: pid,
                sdp,
                tracks,
            },
            WireEvent::PeerFailed { pid, reason } => SfuEvent::PeerFailed {
                participant_id: pid,
                reason,
            },
            WireEvent::Speakers { call, speakers } => SfuEvent::Speakers { call, speakers },
        }
    }
}

/// A frame from the media node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Frame {
    /// The reply to a request with an id.
    Reply {
        /// The request's id.
        id: u64,
        /// The result, on success.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<serde_json::Value>,
        /// Why it failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A media event.
    Event {
        /// The event.
        event: WireEvent,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_round_trip_through_the_wire() {
        for bits in 0..=SourceSet::ALL.bits() {
            for receive in [false, true] {
                let g = MediaGate {
                    send: SourceSet::ALL
                        .iter()
                        .filter(|s| bits & SourceSet::bit(*s) != 0)
                        .fold(SourceSet::EMPTY, SourceSet::with),
                    receive,
                };
                let w = WireGate::from(g);
                let back: WireGate =
                    serde_json::from_str(&serde_json::to_string(&w).unwrap()).unwrap();
                assert_eq!(MediaGate::from(back), g);
            }
        }
    }

    #[test]
    fn requests_and_frames_have_a_stable_shape() {
        let r = Request {
            id: Some(3),
            op: Op::SetGate {
                pid: "p".into(),
                gate: WireGate {
                    send: 1,
                    receive: true,
                },
                version: 9,
            },
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["op"], "set_gate");
        assert_eq!(v["id"], 3);
        assert_eq!(v["version"], 9);
        let back: Request = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
        let no_id = serde_json::to_value(Request { id: None, ..r }).unwrap();
        assert!(no_id.get("id").is_none());
        let f = Frame::Event {
            event: WireEvent::PeerFailed {
                pid: "p".into(),
                reason: "ice".into(),
            },
        };
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(v["kind"], "event");
        assert_eq!(v["event"]["type"], "peer_failed");
    }
}
