//! Greenroom's media plane: str0m 0.25 in RTP mode, ICE-lite, DTLS-SRTP, every peer on one UDP
//! port, and a gated Producer -> Router -> Consumer fan-out.
//!
//! # Engine structure
//!
//! [`Sfu::start`] binds the UDP socket and spawns ONE dedicated engine thread that owns the
//! socket, every str0m `Rtc`, every producer and consumer. Nothing in the engine is shared or
//! locked except each participant's [`forward::GateCell`] (one atomic byte written by
//! [`Sfu::set_gate`], read by the engine per packet), so a gate change applies to the very next
//! packet the engine handles after `set_gate` returns.
//!
//! * Commands from the control plane go through a channel; the handle then sends an empty
//!   datagram from a private "waker" socket to the engine's port, which wakes the engine's
//!   blocking `recv_from` at once (the engine recognises the waker's address and drains the
//!   channel). Replies (SDP answers) come back on oneshot channels.
//! * Demultiplexing: a map source address -> peer, filled on the first `Rtc::accepts` hit, so
//!   only unknown addresses (first STUN of a new peer) scan the peers.
//! * Only the peer that got input is driven (`handle_input` + `poll_output` until `Timeout`),
//!   plus the subscribers that packets were written to; each peer's next timeout lives in a
//!   min-heap (lazy deletion), so idle peers cost nothing.
//! * Each `handle_input`/`poll_output` run and each SDP operation is wrapped in `catch_unwind`:
//!   a panic inside str0m ends that peer only and emits [`SfuEvent::PeerFailed`].
//! * A 250 ms housekeeping tick checks ICE/DTLS deadlines, publishes active speakers
//!   (debounced 500 ms) and re-chooses simulcast layers from the bandwidth estimates.
//!
//! Per participant there is one publisher `Rtc` (client offers) and one subscriber `Rtc`
//! (server offers every other participant's producers in the same call as SendOnly media).
//!
//! # Scaling across cores (design)
//!
//! Calls are independent: the engine state is already partitioned by call (router, producers,
//! consumers). Sharding = N engine threads, each with its own `SO_REUSEPORT` socket on the same
//! port or a socket per shard; a participant is pinned to `hash(call) % N` at `join`, and its
//! ICE ufrag carries the shard index so the first STUN can be steered. The handle would keep
//! one command channel per shard. Not implemented yet: one engine thread today.

mod engine;
pub mod forward;
mod media;
mod metrics;
mod speakers;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;

use greenroom_proto::{
    CallCid, MediaGate, PeerTarget, PublishTrack, Quality, SubscribedTrack, TrackSource,
};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

pub use crate::engine::rtc_config;
use crate::engine::Cmd;
use crate::forward::GateCell;
use crate::metrics::SfuCounters;
pub use crate::metrics::STATS_INTERVAL;

/// Media plane configuration.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// UDP address to bind (all peers share this one port).
    pub bind: SocketAddr,
    /// IP advertised in the host candidate.
    pub advertise_ip: IpAddr,
}

/// Engine tuning; [`Sfu::start`] uses the defaults.
#[derive(Debug, Clone)]
pub struct SfuOptions {
    /// ICE + DTLS must complete within this time after a peer's SDP exchange, or the peer is
    /// dropped with [`SfuEvent::PeerFailed`]. Default 20 s.
    pub connect_timeout: std::time::Duration,
}

impl Default for SfuOptions {
    fn default() -> Self {
        SfuOptions {
            connect_timeout: std::time::Duration::from_secs(20),
        }
    }
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
#[derive(Clone)]
pub struct Sfu {
    inner: Arc<Inner>,
}

struct Inner {
    local_addr: SocketAddr,
    cmds: std::sync::mpsc::Sender<Cmd>,
    waker: UdpSocket,
    wake_to: SocketAddr,
    gates: Mutex<std::collections::HashMap<String, Arc<GateCell>>>,
    counters: Arc<SfuCounters>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.cmds.send(Cmd::Stop);
        let _ = self.waker.send_to(&[], self.wake_to);
    }
}

impl std::fmt::Debug for Sfu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sfu")
            .field("local_addr", &self.inner.local_addr)
            .finish_non_exhaustive()
    }
}

impl Sfu {
    /// Binds the UDP port, starts the engine, returns the handle and the event stream.
    pub async fn start(
        cfg: SfuConfig,
    ) -> Result<(Sfu, mpsc::UnboundedReceiver<SfuEvent>), SfuError> {
        Sfu::start_with(cfg, SfuOptions::default()).await
    }

    /// [`Sfu::start`] with explicit engine options.
    pub async fn start_with(
        cfg: SfuConfig,
        opts: SfuOptions,
    ) -> Result<(Sfu, mpsc::UnboundedReceiver<SfuEvent>), SfuError> {
        let socket = UdpSocket::bind(cfg.bind).map_err(|e| SfuError::Bind(cfg.bind, e))?;
        let local_addr = socket
            .local_addr()
            .map_err(|e| SfuError::Bind(cfg.bind, e))?;
        // The waker talks to the engine over loopback when bound to a wildcard address.
        let wake_ip: IpAddr = match local_addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let wake_to = SocketAddr::new(wake_ip, local_addr.port());
        let waker = UdpSocket::bind(SocketAddr::new(wake_ip, 0))
            .map_err(|e| SfuError::Bind(cfg.bind, e))?;
        let wake_from = waker
            .local_addr()
            .map_err(|e| SfuError::Bind(cfg.bind, e))?;
        let advertised = SocketAddr::new(cfg.advertise_ip, local_addr.port());
        let (cmd_tx, cmd_rx) = std::sync::mpsc::channel();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let counters = Arc::new(SfuCounters::default());
        engine::spawn(
            opts,
            socket,
            advertised,
            wake_from,
            cmd_rx,
            ev_tx,
            counters.clone(),
        )
        .map_err(|e| SfuError::Bind(cfg.bind, e))?;
        let inner = Inner {
            local_addr,
            cmds: cmd_tx,
            waker,
            wake_to,
            gates: Mutex::new(Default::default()),
            counters,
        };
        Ok((
            Sfu {
                inner: Arc::new(inner),
            },
            ev_rx,
        ))
    }

    fn send(&self, cmd: Cmd) -> Result<(), SfuError> {
        self.inner.cmds.send(cmd).map_err(|_| SfuError::Stopped)?;
        // A lost wake-up datagram only delays the command until the next packet or timer.
        let _ = self.inner.waker.send_to(&[], self.inner.wake_to);
        Ok(())
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Registers a joined participant with its gate.
    pub fn join(&self, call: &CallCid, participant_id: &str, user_id: &str, gate: MediaGate) {
        let cell = Arc::new(GateCell::new(gate));
        self.inner
            .gates
            .lock()
            .insert(participant_id.to_owned(), cell.clone());
        let _ = self.send(Cmd::Join {
            call: call.clone(),
            pid: participant_id.to_owned(),
            user_id: user_id.to_owned(),
            gate: cell,
        });
    }

    /// Applies a publisher offer (first publish or renegotiation with the full track list);
    /// returns the answer. Sources outside the gate's `send` set are registered but forward
    /// nothing until the gate lets them.
    pub async fn publish(
        &self,
        participant_id: &str,
        sdp: String,
        tracks: Vec<PublishTrack>,
    ) -> Result<String, SfuError> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Publish {
            pid: participant_id.to_owned(),
            sdp,
            tracks,
            reply: tx,
        })?;
        rx.await.map_err(|_| SfuError::Stopped)?
    }

    /// Applies a subscriber answer.
    pub async fn subscriber_answer(
        &self,
        participant_id: &str,
        sdp: String,
    ) -> Result<(), SfuError> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::SubscriberAnswer {
            pid: participant_id.to_owned(),
            sdp,
            reply: tx,
        })?;
        rx.await.map_err(|_| SfuError::Stopped)?
    }

    /// Adds a trickled remote candidate.
    pub fn ice_candidate(&self, participant_id: &str, target: PeerTarget, candidate: String) {
        let _ = self.send(Cmd::IceCandidate {
            pid: participant_id.to_owned(),
            target,
            candidate,
        });
    }

    /// Stops and removes a published source.
    pub fn unpublish(&self, participant_id: &str, source: TrackSource) {
        let _ = self.send(Cmd::Unpublish {
            pid: participant_id.to_owned(),
            source,
        });
    }

    /// Replaces a participant's gate; takes effect on the next packet.
    pub fn set_gate(&self, participant_id: &str, gate: MediaGate) {
        if let Some(cell) = self.inner.gates.lock().get(participant_id) {
            cell.store(gate);
        }
    }

    /// The gate last set for a participant (`None`: unknown participant).
    pub fn gate(&self, participant_id: &str) -> Option<MediaGate> {
        self.inner
            .gates
            .lock()
            .get(participant_id)
            .map(|c| c.load())
    }

    /// Subscribes or unsubscribes a participant to a track (`<participant_id>:<source>`);
    /// unsubscribing pauses the consumer without renegotiation.
    pub fn set_subscribed(&self, participant_id: &str, track_id: &str, subscribed: bool) {
        let _ = self.send(Cmd::SetSubscribed {
            pid: participant_id.to_owned(),
            track_id: track_id.to_owned(),
            subscribed,
        });
    }

    /// Sets the preferred simulcast quality of a subscribed track.
    pub fn set_quality(&self, participant_id: &str, track_id: &str, quality: Quality) {
        let _ = self.send(Cmd::SetQuality {
            pid: participant_id.to_owned(),
            track_id: track_id.to_owned(),
            quality,
        });
    }

    /// The media plane's counters in the Prometheus text format (appended to `/metrics`):
    ///
    /// * `greenroom_packets_received_total{kind}`, `greenroom_bytes_received_total{kind}`:
    ///   RTP from publishers (`kind` = `audio` | `video`; bytes are RTP payload bytes), gated
    ///   packets included.
    /// * `greenroom_packets_forwarded_total{kind}`, `greenroom_bytes_forwarded_total{kind}`:
    ///   written to subscribers, one per packet per subscriber.
    /// * `greenroom_packets_dropped_total{capability}`: dropped by the publisher's gate, by the
    ///   capability the source needs (`send-audio` | `send-video` | `screenshare`).
    /// * `greenroom_consumer_packets_dropped_total{reason}`: not written to one subscriber
    ///   (`receive` off, `paused` = unsubscribed, `other` = too old or no matching codec).
    /// * `greenroom_nacks_total{direction}`: NACKs received from subscribers (`egress`) and sent
    ///   to publishers (`ingress`), from str0m's stats every [`STATS_INTERVAL`].
    /// * `greenroom_plis_total`: keyframe requests (PLI/FIR) sent to publishers.
    /// * gauges `greenroom_producers{kind}`, `greenroom_consumers{kind}`, `greenroom_peers`.
    /// * histograms `greenroom_rtt_seconds`, `greenroom_loss_ratio`, `greenroom_jitter_seconds`
    ///   `{direction="ingress"|"egress"}`, one sample per stream per [`STATS_INTERVAL`].
    ///
    /// Retransmissions are not counted: str0m 0.25 keeps its resent-packet count private.
    pub fn metrics_text(&self) -> String {
        self.inner.counters.render()
    }

    /// Test hook (feature `fault-injection`): the next time the engine drives this
    /// participant's peer, str0m's driver panics inside it. Only that peer must end.
    #[cfg(feature = "fault-injection")]
    pub fn inject_panic(&self, participant_id: &str, target: PeerTarget) {
        let _ = self.send(Cmd::InjectPanic {
            pid: participant_id.to_owned(),
            target,
        });
    }

    /// Tears down a participant's media at once and re-offers to the others.
    pub fn leave(&self, participant_id: &str) {
        self.inner.gates.lock().remove(participant_id);
        let _ = self.send(Cmd::Leave {
            pid: participant_id.to_owned(),
        });
    }
}
