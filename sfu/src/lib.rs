//! Greenroom's media plane.
//!
//! CONTRACT ONLY (placeholder until the engine lands): the control plane programs against this
//! API. The engine behind it replaces the bodies, keeping the signatures.

use std::net::{IpAddr, SocketAddr};

use greenroom_proto::{
    CallCid, MediaGate, PeerTarget, PublishTrack, Quality, SubscribedTrack, TrackSource,
};
use tokio::sync::mpsc;

/// Media plane configuration.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// UDP address to bind (all peers share this one port).
    pub bind: SocketAddr,
    /// IP advertised in the host candidate.
    pub advertise_ip: IpAddr,
}

/// Errors returned to the control plane.
#[derive(Debug, thiserror::Error)]
pub enum SfuError {
    /// Binding the UDP socket failed.
    #[error("cannot bind UDP {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// The SDP could not be parsed or negotiated.
    #[error("bad SDP: {0}")]
    Sdp(String),
    /// No such participant in the media plane.
    #[error("unknown participant {0}")]
    UnknownParticipant(String),
    /// The media engine stopped.
    #[error("media engine stopped")]
    Stopped,
}

/// Something the media plane tells the control plane.
#[derive(Debug, Clone)]
pub enum SfuEvent {
    /// Send this subscriber offer to the participant (`subscriber_offer`).
    SubscriberOffer {
        /// The subscriber.
        participant_id: String,
        /// SDP offer.
        sdp: String,
        /// Every mid and its track.
        tracks: Vec<SubscribedTrack>,
    },
    /// Loudest participants of a call changed.
    Speakers {
        /// The call.
        call: CallCid,
        /// (participant id, level 0..1), loudest first.
        speakers: Vec<(String, f32)>,
    },
    /// A participant's media failed (ICE/DTLS timeout or engine panic); the peer was dropped.
    PeerFailed {
        /// The participant.
        participant_id: String,
        /// Why.
        reason: String,
    },
}

/// Handle to the running media plane; cheap to clone.
#[derive(Debug, Clone)]
pub struct Sfu {
    local_addr: SocketAddr,
}

impl Sfu {
    /// Binds the UDP port, starts the engine, returns the handle and the event stream.
    pub async fn start(
        cfg: SfuConfig,
    ) -> Result<(Sfu, mpsc::UnboundedReceiver<SfuEvent>), SfuError> {
        let (_tx, rx) = mpsc::unbounded_channel();
        Ok((
            Sfu {
                local_addr: cfg.bind,
            },
            rx,
        ))
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Registers a joined participant with its gate.
    pub fn join(&self, _call: &CallCid, _participant_id: &str, _user_id: &str, _gate: MediaGate) {}

    /// Applies a publisher offer; returns the answer.
    pub async fn publish(
        &self,
        participant_id: &str,
        _sdp: String,
        _tracks: Vec<PublishTrack>,
    ) -> Result<String, SfuError> {
        Err(SfuError::UnknownParticipant(participant_id.to_owned()))
    }

    /// Applies a subscriber answer.
    pub async fn subscriber_answer(
        &self,
        participant_id: &str,
        _sdp: String,
    ) -> Result<(), SfuError> {
        Err(SfuError::UnknownParticipant(participant_id.to_owned()))
    }

    /// Adds a trickled remote candidate.
    pub fn ice_candidate(&self, _participant_id: &str, _target: PeerTarget, _candidate: String) {}

    /// Stops and removes a published source.
    pub fn unpublish(&self, _participant_id: &str, _source: TrackSource) {}

    /// Replaces a participant's gate; takes effect on the next packet.
    pub fn set_gate(&self, _participant_id: &str, _gate: MediaGate) {}

    /// Subscribes or unsubscribes a participant to a track.
    pub fn set_subscribed(&self, _participant_id: &str, _track_id: &str, _subscribed: bool) {}

    /// Sets the preferred simulcast quality of a subscribed track.
    pub fn set_quality(&self, _participant_id: &str, _track_id: &str, _quality: Quality) {}

    /// The media plane's counters in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        String::new()
    }

    /// Tears down a participant's media at once.
    pub fn leave(&self, _participant_id: &str) {}
}
