//! What the publisher and subscriber connections share: codecs, the event handler, state
//! tracking, and waiting for ICE gathering (no trickle).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind,
};
use tokio::sync::watch;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCBundlePolicy, RTCConfigurationBuilder, RTCIceGatheringState,
    RTCIceServer, RTCIceTransportPolicy, RTCPeerConnectionState, Registry, SettingEngineBuilder,
};

use crate::error::{BotError, Result};

/// Payload type offered for Opus.
pub const OPUS_PT: u8 = 111;
/// Payload type offered for VP8.
pub const VP8_PT: u8 = 96;
/// Opus MIME type.
pub const MIME_OPUS: &str = "audio/opus";
/// VP8 MIME type.
pub const MIME_VP8: &str = "video/VP8";

/// ICE servers and policy of a connection (default: none, all candidates).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IceConfig {
    /// STUN/TURN servers (webrtc-rs relays over TURN/UDP only).
    pub servers: Vec<RTCIceServer>,
    /// Gather relayed candidates only: all media goes through the TURN server.
    pub relay_only: bool,
    /// How long the ICE agent waits, from its start, before it may nominate a pair with a
    /// relayed candidate; `None`: webrtc-rs's default, 2 s (a browser has no such wait).
    pub relay_acceptance_min_wait: Option<Duration>,
}

/// A shared handle on a webrtc-rs connection.
pub type Pc = Arc<dyn PeerConnection>;

/// Callback for remote tracks; must return at once (spawn for work).
pub(crate) type OnTrack = Arc<dyn Fn(Arc<dyn TrackRemote>) + Send + Sync>;

/// The event handler of both connections: publishes states on watch channels.
pub(crate) struct Handler {
    pub(crate) state: watch::Sender<RTCPeerConnectionState>,
    pub(crate) gathering: watch::Sender<RTCIceGatheringState>,
    pub(crate) on_track: Option<OnTrack>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        self.gathering.send_replace(state);
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::debug!(%state, "peer connection state");
        self.state.send_replace(state);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        if let Some(f) = &self.on_track {
            f(track);
        }
    }
}

/// Opus as offered by browsers.
pub(crate) fn opus_codec() -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_OPUS.to_owned(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
            rtcp_feedback: vec![],
        },
        payload_type: OPUS_PT,
    }
}

/// VP8 with the usual feedback.
pub(crate) fn vp8_codec() -> RTCRtpCodecParameters {
    let fb = |typ: &str, parameter: &str| RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    };
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_VP8.to_owned(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: vec![fb("nack", ""), fb("nack", "pli"), fb("ccm", "fir")],
        },
        payload_type: VP8_PT,
    }
}

/// State channels of one connection.
pub(crate) struct PeerState {
    pub(crate) state: watch::Receiver<RTCPeerConnectionState>,
    pub(crate) gathering: watch::Receiver<RTCIceGatheringState>,
}

/// Builds a connection with Opus and VP8 only, bound to one UDP socket on `bind_ip`.
pub(crate) async fn build_peer(
    bind_ip: IpAddr,
    ice: &IceConfig,
    on_track: Option<OnTrack>,
) -> Result<(Pc, PeerState)> {
    let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
    let (gathering_tx, gathering) = watch::channel(RTCIceGatheringState::New);
    let handler = Arc::new(Handler {
        state: state_tx,
        gathering: gathering_tx,
        on_track,
    });
    let mut media = MediaEngine::default();
    media.register_codec(opus_codec(), RtpCodecKind::Audio)?;
    media.register_codec(vp8_codec(), RtpCodecKind::Video)?;
    let registry = register_default_interceptors(Registry::new(), &mut media)?;
    let config = RTCConfigurationBuilder::new()
        .with_bundle_policy(RTCBundlePolicy::MaxBundle)
        .with_ice_servers(ice.servers.clone())
        .with_ice_transport_policy(if ice.relay_only {
            RTCIceTransportPolicy::Relay
        } else {
            RTCIceTransportPolicy::All
        })
        .build();
    let settings = SettingEngineBuilder::default()
        .with_relay_acceptance_min_wait(ice.relay_acceptance_min_wait)
        .build();
    let pc = PeerConnectionBuilder::new()
        .with_configuration(config)
        .with_setting_engine(settings)
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_handler(handler)
        .with_udp_addrs(vec![SocketAddr::new(bind_ip, 0)])
        .build()
        .await?;
    Ok((Arc::new(pc), PeerState { state, gathering }))
}

/// Waits until ICE gathering is complete, then returns the local SDP (candidates included).
pub(crate) async fn gathered_local_sdp(
    pc: &Pc,
    gathering: &watch::Receiver<RTCIceGatheringState>,
    timeout: Duration,
) -> Result<String> {
    let mut g = gathering.clone();
    let done = tokio::time::timeout(timeout, async {
        g.wait_for(|s| *s == RTCIceGatheringState::Complete)
            .await
            .is_ok()
    })
    .await
    .map_err(|_| BotError::timeout("ICE gathering", timeout))?;
    if !done {
        return Err(BotError::ConnectionFailed("closed while gathering".into()));
    }
    pc.local_description()
        .await
        .map(|d| d.sdp)
        .ok_or_else(|| BotError::Protocol("no local description after gathering".into()))
}

/// Waits for `Connected`; fails at once on `Failed` or `Closed`.
pub(crate) async fn wait_connected(
    state: &watch::Receiver<RTCPeerConnectionState>,
    timeout: Duration,
) -> Result<()> {
    let mut s = state.clone();
    let res = tokio::time::timeout(timeout, async {
        s.wait_for(|s| {
            matches!(
                s,
                RTCPeerConnectionState::Connected
                    | RTCPeerConnectionState::Failed
                    | RTCPeerConnectionState::Closed
            )
        })
        .await
        .map(|s| *s)
    })
    .await
    .map_err(|_| BotError::timeout("peer connection Connected", timeout))?;
    match res {
        Ok(RTCPeerConnectionState::Connected) => Ok(()),
        Ok(other) => Err(BotError::ConnectionFailed(other.to_string())),
        Err(_) => Err(BotError::ConnectionFailed("handler gone".into())),
    }
}

/// Whether `a` and `b` point to the same object (ignoring vtables).
pub(crate) fn same_object<T: ?Sized, U: ?Sized>(a: &Arc<T>, b: &Arc<U>) -> bool {
    std::ptr::eq(Arc::as_ptr(a).cast::<()>(), Arc::as_ptr(b).cast::<()>())
}
