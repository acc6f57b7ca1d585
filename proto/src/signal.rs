//! Messages on the signaling WebSocket and the call events pushed over it.

use serde::{Deserialize, Serialize};
use ts_rs::TS;
use utoipa::ToSchema;

use crate::{CallCid, CallType, Capability, CapabilitySet, Role, TrackSource};

/// A machine-readable error code, used in HTTP error bodies and in `error` messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, TS)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request body or message is not valid JSON or misses fields.
    InvalidJson,
    /// The request is well-formed but its values are wrong.
    BadRequest,
    /// No token, or a token that does not verify.
    Unauthorized,
    /// The token has expired.
    TokenExpired,
    /// The token's header `kid` names no configured API key (or is missing).
    UnknownKey,
    /// The caller lacks a capability; `capability` names it.
    MissingCapability,
    /// The token is limited to another call.
    WrongCall,
    /// The call, user or track does not exist.
    NotFound,
    /// The user is blocked from this call.
    Blocked,
    /// The call has ended.
    CallEnded,
    /// The call is in backstage and the user may not join backstage.
    Backstage,
    /// The action needs a joined call first.
    NotJoined,
    /// The socket already joined a call.
    AlreadyJoined,
    /// The permission may not be requested in this call type.
    NotRequestable,
    /// A message or body larger than allowed.
    TooLarge,
    /// A message type the server does not know.
    UnknownMessage,
    /// SDP or media negotiation failed.
    MediaError,
    /// The server is shutting down.
    ShuttingDown,
    /// The socket sent more messages than its rate allows; the message was dropped.
    RateLimited,
    /// The user holds as many signaling sockets as allowed (HTTP 429 before the upgrade).
    TooManyConnections,
    /// A `resume` failed: the token is unknown, expired (past the grace period), another
    /// user's, or its session has left the call. The client joins afresh.
    ResumeFailed,
    /// Cluster mode: the call cannot be placed or reached now (Redis or its home node is
    /// unreachable, or no node takes new calls); HTTP 503. Retry later.
    ClusterUnavailable,
    /// An unexpected server error.
    Internal,
}

/// The JSON body of every HTTP error and the payload of an `error` message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, TS)]
pub struct ErrorBody {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
    /// The missing capability, for `missing_capability`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability: Option<Capability>,
}

/// A member of a call, with the role that applies to them in this call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, TS)]
pub struct Member {
    /// The user.
    pub user_id: String,
    /// Their role in this call (overrides the global role).
    pub role: Role,
}

/// Settings chosen by a client when joining.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema, TS)]
pub struct JoinSettings {
    /// Join without video.
    #[serde(default)]
    #[ts(as = "Option<_>", optional)]
    pub audio_only: bool,
    /// Join with the microphone muted.
    #[serde(default)]
    #[ts(as = "Option<_>", optional)]
    pub start_audio_muted: bool,
    /// Join with the camera off.
    #[serde(default)]
    #[ts(as = "Option<_>", optional)]
    pub start_video_muted: bool,
    /// The name others see: 1 to [`MAX_NAME_CHARS`] characters, no control characters, trimmed
    /// (see [`validate_display_name`]). Absent: clients show the user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[ts(optional)]
    pub name: Option<String>,
    /// App data shown to everyone with the participant: a JSON object of at most
    /// [`MAX_CUSTOM_BYTES`] bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[ts(optional)]
    pub custom: Option<serde_json::Value>,
}

/// Longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Largest `custom` object of a join or a reaction, serialized, in bytes.
pub const MAX_CUSTOM_BYTES: usize = 1024;
/// Largest `custom` object of a `send_event`, serialized, in bytes.
pub const MAX_EVENT_BYTES: usize = 5 * 1024;
/// Longest reaction `type` and `emoji_code`, in characters.
pub const MAX_REACTION_CHARS: usize = 32;

/// Why a display name, reaction or custom payload is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Empty after trimming, too long, or with control characters.
    #[error("{field}: 1 to {max} characters without control characters")]
    BadText {
        /// The field.
        field: &'static str,
        /// Its limit in characters.
        max: usize,
    },
    /// Not a JSON object.
    #[error("{0}: must be a JSON object")]
    NotAnObject(&'static str),
    /// Over the size limit.
    #[error("{field}: at most {max} bytes of JSON")]
    TooLarge {
        /// The field.
        field: &'static str,
        /// Its limit in bytes.
        max: usize,
    },
}

/// Checks a short text field (a display name, a reaction type) and returns it trimmed.
pub fn validate_text(field: &'static str, text: &str, max: usize) -> Result<String, PayloadError> {
    let t = text.trim();
    if t.is_empty() || t.chars().count() > max || t.chars().any(char::is_control) {
        return Err(PayloadError::BadText { field, max });
    }
    Ok(t.to_owned())
}

/// Checks a display name (see [`JoinSettings::name`]) and returns it trimmed.
pub fn validate_display_name(name: &str) -> Result<String, PayloadError> {
    validate_text("name", name, MAX_NAME_CHARS)
}

/// Checks an app-defined `custom` payload: a JSON object of at most `max` bytes.
pub fn validate_custom(
    field: &'static str,
    custom: &serde_json::Value,
    max: usize,
) -> Result<(), PayloadError> {
    if !custom.is_object() {
        return Err(PayloadError::NotAnObject(field));
    }
    // Serializing a Value cannot fail (string keys only); an error counts as too large.
    let len = serde_json::to_vec(custom)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if len > max {
        return Err(PayloadError::TooLarge { field, max });
    }
    Ok(())
}

/// A reaction as sent with `send_reaction` and delivered in `call.reaction`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, TS)]
pub struct Reaction {
    /// What kind of reaction, e.g. `like`, `raised-hand`, `fireworks` (1 to
    /// [`MAX_REACTION_CHARS`] characters).
    #[serde(rename = "type")]
    pub reaction_type: String,
    /// An emoji shortcode to show, e.g. `:heart:` (optional, same limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[ts(optional)]
    pub emoji_code: Option<String>,
    /// App data (a JSON object of at most [`MAX_CUSTOM_BYTES`] bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[ts(optional)]
    #[schema(value_type = Option<Object>)]
    pub custom: Option<serde_json::Value>,
}

/// A published track as the call sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, TS)]
pub struct TrackInfo {
    /// Stable id of the track: `<participant_id>:<source>`.
    pub track_id: String,
    /// The publishing participant session.
    pub participant_id: String,
    /// The publishing user.
    pub user_id: String,
    /// What the track carries.
    pub source: TrackSource,
    /// Whether forwarding is stopped (muted by the user, by a moderator, or capability revoked).
    pub muted: bool,
}

/// One joined session of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, TS)]
pub struct ParticipantInfo {
    /// The session id, unique per join.
    pub participant_id: String,
    /// The user.
    pub user_id: String,
    /// The role that applies to the user in this call.
    pub role: Role,
    /// Unix milliseconds at join.
    pub joined_at_ms: u64,
    /// Sources the participant publishes.
    #[serde(default)]
    pub published: Vec<TrackSource>,
    /// Sources that are muted (by the user, a moderator or a revoke).
    #[serde(default)]
    pub muted: Vec<TrackSource>,
    /// The display name given at join, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[ts(optional)]
    pub name: Option<String>,
    /// The app data given at join, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[ts(optional)]
    #[schema(value_type = Option<Object>)]
    pub custom: Option<serde_json::Value>,
}

/// A call's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, TS)]
pub struct CallState {
    /// `type:id`.
    pub cid: CallCid,
    /// The call type.
    #[serde(rename = "type")]
    pub call_type: CallType,
    /// The call id.
    pub id: String,
    /// Who created the call.
    pub created_by: String,
    /// Unix milliseconds at creation.
    pub created_at_ms: u64,
    /// Whether backstage applies to this call type.
    pub backstage_enabled: bool,
    /// Whether the call is in backstage (backstage on and not live).
    pub backstage: bool,
    /// Whether the call is live.
    pub live: bool,
    /// Whether the call has ended.
    pub ended: bool,
    /// Listed members and their roles.
    pub members: Vec<Member>,
    /// Joined sessions.
    pub participants: Vec<ParticipantInfo>,
    /// Users blocked from the call.
    pub blocked_user_ids: Vec<String>,
    /// Free-form settings given at creation.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub settings: serde_json::Value,
}

/// Which kinds of media a mute applies to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema, TS)]
pub struct MuteKinds {
    /// Microphone.
    #[serde(default)]
    pub audio: bool,
    /// Camera.
    #[serde(default)]
    pub video: bool,
    /// Screen share (video and audio).
    #[serde(default)]
    pub screenshare: bool,
}

impl MuteKinds {
    /// Whether a source is covered.
    pub fn covers(self, source: TrackSource) -> bool {
        match source {
            TrackSource::Microphone => self.audio,
            TrackSource::Camera => self.video,
            TrackSource::ScreenShare | TrackSource::ScreenShareAudio => self.screenshare,
        }
    }

    /// Whether nothing is covered.
    pub fn is_empty(self) -> bool {
        !(self.audio || self.video || self.screenshare)
    }
}

/// An ICE server as `RTCIceServer` takes it: TURN URLs with a time-limited credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, TS)]
pub struct IceServer {
    /// `turn:host:port?transport=udp|tcp` and `turns:host:port?transport=tcp` URLs.
    pub urls: Vec<String>,
    /// `<expiry-unix-seconds>:<user_id>`.
    pub username: String,
    /// `base64(HMAC-SHA1(secret, username))`.
    pub credential: String,
}

/// Which PeerConnection an ICE candidate belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, TS)]
#[serde(rename_all = "snake_case")]
pub enum PeerTarget {
    /// The client's sending connection (client offers).
    Publisher,
    /// The client's receiving connection (server offers).
    Subscriber,
}

/// The mid of a publisher transceiver and the source it carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, TS)]
pub struct PublishTrack {
    /// The transceiver's mid in the publisher offer.
    pub mid: String,
    /// What it carries.
    pub source: TrackSource,
}

/// A subscriber transceiver's mid and the track it carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, TS)]
pub struct SubscribedTrack {
    /// The transceiver's mid in the subscriber offer.
    pub mid: String,
    /// The track it carries.
    #[serde(flatten)]
    pub track: TrackInfo,
}

/// Simulcast quality a subscriber asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, TS)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    /// The lowest layer.
    Low,
    /// The middle layer.
    Medium,
    /// The highest layer.
    High,
}

/// A message from a client on `/v1/signal`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Join a call (it must exist unless `create` is set and the caller may create calls).
    Join {
        /// The call to join.
        call_cid: CallCid,
        /// Create the call if it does not exist.
        #[serde(default)]
        #[ts(as = "Option<_>", optional)]
        create: bool,
        /// Join settings.
        #[serde(default)]
        #[ts(as = "Option<_>", optional)]
        settings: JoinSettings,
    },
    /// Leave the joined call.
    Leave,
    /// Ask the call's moderators for capabilities.
    RequestPermission {
        /// What to ask for.
        permissions: Vec<Capability>,
    },
    /// Mute or unmute one of one's own sources.
    SetMuted {
        /// The source.
        source: TrackSource,
        /// Muted or not.
        muted: bool,
    },
    /// Keep-alive; answered with `pong`.
    Ping,
    /// A publisher offer (first publish and every renegotiation) with the source of each mid.
    Publish {
        /// SDP offer of the client's publisher PeerConnection.
        sdp: String,
        /// Every sending transceiver's mid and source.
        tracks: Vec<PublishTrack>,
    },
    /// Stop publishing a source (the client then renegotiates or stops the sender).
    Unpublish {
        /// The source to stop.
        source: TrackSource,
    },
    /// The answer to a `subscriber_offer`.
    SubscriberAnswer {
        /// SDP answer of the client's subscriber PeerConnection.
        sdp: String,
    },
    /// A trickled ICE candidate (optional: the server is ICE-lite and learns addresses from checks).
    IceCandidate {
        /// Which connection.
        target: PeerTarget,
        /// The `candidate:` attribute value.
        candidate: String,
    },
    /// Receive a track (every track is subscribed by default).
    Subscribe {
        /// The track.
        track_id: String,
    },
    /// Stop receiving a track.
    Unsubscribe {
        /// The track.
        track_id: String,
    },
    /// Ask for a simulcast quality of a track.
    SetQuality {
        /// The track.
        track_id: String,
        /// The quality.
        quality: Quality,
    },
    /// Send a reaction to everyone in the call (needs `create-reaction`; rate-limited).
    SendReaction {
        /// The reaction.
        reaction: Reaction,
    },
    /// Send an app-defined event to everyone in the call (rate-limited).
    SendEvent {
        /// The payload: a JSON object of at most [`MAX_EVENT_BYTES`] bytes.
        custom: serde_json::Value,
    },
    /// Take back a session whose socket dropped, within the grace period: the first call
    /// message of a new socket of the same user. Answered with `resumed` or `error`
    /// `resume_failed`.
    Resume {
        /// The `resume_token` of the last `joined` or `resumed`.
        resume_token: String,
    },
    /// Ask the server for a `subscriber_offer` that restarts ICE on the subscriber connection
    /// (new ice-ufrag/pwd; tracks and forwarding are kept). The publisher connection restarts
    /// ICE with a new `publish` offer instead.
    RestartIce,
}

/// What a client sends on `/v1/signal`: a [`ClientMessage`] plus an optional `request_id`
/// (protocol 2) that the server echoes in its direct reply and in any `error` the message causes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
pub struct ClientEnvelope {
    /// The message.
    #[serde(flatten)]
    pub message: ClientMessage,
    /// The client's id for this request: 1 to 64 characters of `A-Z a-z 0-9 _ - . :`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[ts(optional)]
    pub request_id: Option<String>,
}

/// A direct reply of the server (`joined`, `left`, `publish_answer`, `pong`, `error`, `ring.ok`)
/// carrying the `request_id` of the client message it answers. Events never carry one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
pub struct Reply<T> {
    /// The reply.
    #[serde(flatten)]
    pub message: T,
    /// The `request_id` of the client message this answers, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[ts(optional)]
    pub request_id: Option<String>,
}

/// Checks a `request_id`: 1 to 64 characters of `A-Z a-z 0-9 _ - . :`.
pub fn validate_request_id(id: &str) -> Result<(), crate::ProtoError> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(crate::ProtoError::InvalidRequestId(
            id.chars().take(80).collect(),
        ))
    }
}

impl ClientMessage {
    /// The first field of a client message object whose value does not have that field's type,
    /// with serde's reason, e.g. `("source", "unknown variant `keyboard`, ...")`. It names the bad
    /// field of a known message that failed to parse (serde's errors inside internally tagged
    /// enums carry no path). `None` when every known field is well typed (the failure is then a
    /// missing field, which serde's error names).
    pub fn bad_field(message: &serde_json::Value) -> Option<(String, String)> {
        fn check<T: serde::de::DeserializeOwned>(v: &serde_json::Value) -> Result<(), String> {
            T::deserialize(v).map(|_: T| ()).map_err(|e| e.to_string())
        }
        let object = message.as_object()?;
        object.iter().find_map(|(key, v)| {
            let r = match key.as_str() {
                "call_cid" => check::<CallCid>(v),
                "create" | "muted" => check::<bool>(v),
                "settings" => check::<JoinSettings>(v),
                "permissions" => check::<Vec<Capability>>(v),
                "source" => check::<TrackSource>(v),
                "sdp" | "candidate" | "track_id" | "resume_token" => check::<String>(v),
                "tracks" => check::<Vec<PublishTrack>>(v),
                "target" => check::<PeerTarget>(v),
                "quality" => check::<Quality>(v),
                "reaction" => check::<Reaction>(v),
                _ => Ok(()),
            };
            r.err().map(|e| (key.clone(), e))
        })
    }

    /// Every `type` of a client message on `/v1/signal` (besides the `ring_*` messages).
    pub const TYPES: &'static [&'static str] = &[
        "join",
        "leave",
        "request_permission",
        "set_muted",
        "ping",
        "publish",
        "unpublish",
        "subscriber_answer",
        "ice_candidate",
        "subscribe",
        "unsubscribe",
        "set_quality",
        "send_reaction",
        "send_event",
        "resume",
        "restart_ice",
    ];

    /// The message's `type` string, e.g. `join`.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMessage::Join { .. } => "join",
            ClientMessage::Leave => "leave",
            ClientMessage::RequestPermission { .. } => "request_permission",
            ClientMessage::SetMuted { .. } => "set_muted",
            ClientMessage::Ping => "ping",
            ClientMessage::Publish { .. } => "publish",
            ClientMessage::Unpublish { .. } => "unpublish",
            ClientMessage::SubscriberAnswer { .. } => "subscriber_answer",
            ClientMessage::IceCandidate { .. } => "ice_candidate",
            ClientMessage::Subscribe { .. } => "subscribe",
            ClientMessage::Unsubscribe { .. } => "unsubscribe",
            ClientMessage::SetQuality { .. } => "set_quality",
            ClientMessage::SendReaction { .. } => "send_reaction",
            ClientMessage::SendEvent { .. } => "send_event",
            ClientMessage::Resume { .. } => "resume",
            ClientMessage::RestartIce => "restart_ice",
        }
    }
}

/// A signaling reply or media instruction from the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SignalMessage {
    /// The join succeeded.
    Joined {
        /// Protocol version.
        protocol: u32,
        /// This session.
        participant: ParticipantInfo,
        /// The call as it is now.
        call: Box<CallState>,
        /// What this participant may do.
        own_capabilities: CapabilitySet,
        /// Capabilities this participant may request in this call type.
        requestable: CapabilitySet,
        /// A secret that takes this session back on a new socket within the grace period
        /// (`resume`). Bound to this user and participant; rotated by every `resumed`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[ts(optional)]
        resume_token: Option<String>,
        /// ICE servers for this participant's PeerConnections (the node's embedded TURN server
        /// with credentials that expire); empty when the node runs none.
        #[serde(default)]
        ice_servers: Vec<IceServer>,
    },
    /// A `resume` succeeded: the session is back on this socket with the same participant id
    /// and media connections. Carries what `joined` carries (the call as it is now covers the
    /// events missed while disconnected) and a new `resume_token`.
    Resumed {
        /// Protocol version.
        protocol: u32,
        /// This session.
        participant: ParticipantInfo,
        /// The call as it is now.
        call: Box<CallState>,
        /// What this participant may do.
        own_capabilities: CapabilitySet,
        /// Capabilities this participant may request in this call type.
        requestable: CapabilitySet,
        /// The token for the next `resume` (the old one is spent).
        resume_token: String,
        /// ICE servers for this participant's PeerConnections, as in `joined` (the node's embedded TURN server
        /// with credentials that expire); empty when the node runs none.
        #[serde(default)]
        ice_servers: Vec<IceServer>,
    },
    /// The socket left the call (by `leave`, kick, block or the end of the call).
    Left {
        /// The call.
        call_cid: CallCid,
        /// The session that left: a client that left and joined again ignores a `left` for an
        /// older session.
        participant_id: String,
    },
    /// A request failed; the connection stays.
    Error {
        /// The error.
        #[serde(flatten)]
        error: ErrorBody,
        /// The `type` of the client message that failed, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<String>,
    },
    /// Reply to `ping`.
    Pong,
    /// The answer to a `publish` offer.
    PublishAnswer {
        /// SDP answer.
        sdp: String,
    },
    /// The server offers (or renegotiates) the subscriber connection.
    SubscriberOffer {
        /// SDP offer.
        sdp: String,
        /// Which mid carries which track.
        tracks: Vec<SubscribedTrack>,
    },
    /// The server stopped forwarding these sources and asks the client to stop sending them.
    StopPublishing {
        /// The sources.
        sources: Vec<TrackSource>,
        /// Why: `permission_revoked`, `muted_by_moderator`.
        reason: String,
    },
    /// The server is shutting down; reconnect later.
    GoingAway {
        /// Milliseconds until the server closes the connection.
        drain_ms: u64,
    },
}

/// A call event, pushed to the participants who should see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
#[serde(tag = "type")]
pub enum CallEvent {
    /// Someone joined.
    #[serde(rename = "call.session_participant_joined")]
    ParticipantJoined {
        /// The call.
        call_cid: CallCid,
        /// The new session.
        participant: ParticipantInfo,
    },
    /// Someone left (or was kicked, blocked, dropped).
    #[serde(rename = "call.session_participant_left")]
    ParticipantLeft {
        /// The call.
        call_cid: CallCid,
        /// The session that left.
        participant: ParticipantInfo,
        /// `left`, `kicked`, `blocked`, `disconnected`, `call_ended`.
        reason: String,
    },
    /// A user asks for capabilities; sent to holders of `update-call-permissions`.
    #[serde(rename = "call.permission_request")]
    PermissionRequest {
        /// The call.
        call_cid: CallCid,
        /// Who asks.
        user_id: String,
        /// What they ask for.
        permissions: Vec<Capability>,
    },
    /// A user's capabilities changed; sent to that user.
    #[serde(rename = "call.permissions_updated")]
    PermissionsUpdated {
        /// The call.
        call_cid: CallCid,
        /// The user.
        user_id: String,
        /// Their capabilities now.
        own_capabilities: CapabilitySet,
    },
    /// The call went live.
    #[serde(rename = "call.live_started")]
    LiveStarted {
        /// The call.
        call_cid: CallCid,
    },
    /// The call went back to backstage.
    #[serde(rename = "call.live_stopped")]
    LiveStopped {
        /// The call.
        call_cid: CallCid,
    },
    /// Users were muted (by a moderator or by themselves).
    #[serde(rename = "call.user_muted")]
    UserMuted {
        /// The call.
        call_cid: CallCid,
        /// Who muted.
        from_user_id: String,
        /// Who was muted.
        muted_user_ids: Vec<String>,
        /// Which sources.
        sources: Vec<TrackSource>,
    },
    /// A user unmuted a source.
    #[serde(rename = "call.user_unmuted")]
    UserUnmuted {
        /// The call.
        call_cid: CallCid,
        /// Who unmuted.
        user_id: String,
        /// Which sources.
        sources: Vec<TrackSource>,
    },
    /// A user was kicked.
    #[serde(rename = "call.kicked_user")]
    KickedUser {
        /// The call.
        call_cid: CallCid,
        /// Who was kicked.
        user_id: String,
        /// By whom.
        kicked_by: String,
    },
    /// A user was blocked.
    #[serde(rename = "call.blocked_user")]
    BlockedUser {
        /// The call.
        call_cid: CallCid,
        /// Who was blocked.
        user_id: String,
        /// By whom.
        blocked_by: String,
    },
    /// A user was unblocked.
    #[serde(rename = "call.unblocked_user")]
    UnblockedUser {
        /// The call.
        call_cid: CallCid,
        /// Who was unblocked.
        user_id: String,
        /// By whom.
        unblocked_by: String,
    },
    /// The call ended for everyone.
    #[serde(rename = "call.ended")]
    Ended {
        /// The call.
        call_cid: CallCid,
        /// Who ended it.
        ended_by: String,
    },
    /// A track was published.
    #[serde(rename = "call.track_published")]
    TrackPublished {
        /// The call.
        call_cid: CallCid,
        /// The track.
        track: TrackInfo,
    },
    /// A track was unpublished.
    #[serde(rename = "call.track_unpublished")]
    TrackUnpublished {
        /// The call.
        call_cid: CallCid,
        /// The track.
        track: TrackInfo,
    },
    /// Someone sent a reaction; sent to everyone, the sender included.
    #[serde(rename = "call.reaction")]
    Reaction {
        /// The call.
        call_cid: CallCid,
        /// The sending session.
        participant_id: String,
        /// The sending user.
        user_id: String,
        /// The reaction.
        reaction: Reaction,
    },
    /// An app-defined event (`send_event`); sent to everyone, the sender included.
    #[serde(rename = "call.custom")]
    Custom {
        /// The call.
        call_cid: CallCid,
        /// The sending session.
        participant_id: String,
        /// The sending user.
        user_id: String,
        /// The payload.
        custom: serde_json::Value,
    },
    /// The loudest participants changed (debounced).
    #[serde(rename = "call.speakers_changed")]
    SpeakersChanged {
        /// The call.
        call_cid: CallCid,
        /// Speaking sessions, loudest first.
        speakers: Vec<Speaker>,
    },
}

/// One active speaker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, TS)]
pub struct Speaker {
    /// The session.
    pub participant_id: String,
    /// The user.
    pub user_id: String,
    /// Level 0.0 (silence) to 1.0 (loudest).
    pub level: f32,
}

/// Anything the server sends on the socket: a signaling message or a call event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
#[serde(untagged)]
pub enum ServerMessage {
    /// A reply or media instruction.
    Signal(SignalMessage),
    /// A call event.
    Event(CallEvent),
}

impl CallEvent {
    /// The event's `type` string, e.g. `call.ended`.
    pub fn kind(&self) -> &'static str {
        match self {
            CallEvent::ParticipantJoined { .. } => "call.session_participant_joined",
            CallEvent::ParticipantLeft { .. } => "call.session_participant_left",
            CallEvent::PermissionRequest { .. } => "call.permission_request",
            CallEvent::PermissionsUpdated { .. } => "call.permissions_updated",
            CallEvent::LiveStarted { .. } => "call.live_started",
            CallEvent::LiveStopped { .. } => "call.live_stopped",
            CallEvent::UserMuted { .. } => "call.user_muted",
            CallEvent::UserUnmuted { .. } => "call.user_unmuted",
            CallEvent::KickedUser { .. } => "call.kicked_user",
            CallEvent::BlockedUser { .. } => "call.blocked_user",
            CallEvent::UnblockedUser { .. } => "call.unblocked_user",
            CallEvent::Ended { .. } => "call.ended",
            CallEvent::TrackPublished { .. } => "call.track_published",
            CallEvent::TrackUnpublished { .. } => "call.track_unpublished",
            CallEvent::SpeakersChanged { .. } => "call.speakers_changed",
            CallEvent::Reaction { .. } => "call.reaction",
            CallEvent::Custom { .. } => "call.custom",
        }
    }
}

#[cfg(test)]
mod bad_field_tests {
    use super::ClientMessage;

    #[test]
    fn names_the_field_with_a_bad_value() {
        let v = serde_json::json!({"type": "set_muted", "source": "keyboard", "muted": true});
        let (field, why) = ClientMessage::bad_field(&v).unwrap_or_default();
        assert_eq!(field, "source");
        assert!(why.contains("keyboard"), "{why}");
        let v = serde_json::json!({"type": "publish", "sdp": "v=0", "tracks": [{"mid": "0", "source": 3}]});
        assert_eq!(
            ClientMessage::bad_field(&v).map(|f| f.0).as_deref(),
            Some("tracks")
        );
        let v = serde_json::json!({"type": "set_muted", "source": "camera"});
        assert_eq!(
            ClientMessage::bad_field(&v),
            None,
            "a missing field is not a bad value"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_parses_from_documented_json() {
        let m: ClientMessage =
            serde_json::from_str(r#"{"type":"join","call_cid":"audio_room:stage1"}"#).unwrap();
        match m {
            ClientMessage::Join {
                call_cid,
                create,
                settings,
            } => {
                assert_eq!(call_cid.to_string(), "audio_room:stage1");
                assert!(!create);
                assert_eq!(settings, JoinSettings::default());
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn types_list_every_client_message() {
        let all = [
            ClientMessage::Join {
                call_cid: "default:x".parse().unwrap(),
                create: false,
                settings: JoinSettings::default(),
            },
            ClientMessage::Leave,
            ClientMessage::RequestPermission {
                permissions: vec![],
            },
            ClientMessage::SetMuted {
                source: TrackSource::Camera,
                muted: true,
            },
            ClientMessage::Ping,
            ClientMessage::Publish {
                sdp: String::new(),
                tracks: vec![],
            },
            ClientMessage::Unpublish {
                source: TrackSource::Camera,
            },
            ClientMessage::SubscriberAnswer { sdp: String::new() },
            ClientMessage::IceCandidate {
                target: PeerTarget::Publisher,
                candidate: String::new(),
            },
            ClientMessage::Subscribe {
                track_id: String::new(),
            },
            ClientMessage::Unsubscribe {
                track_id: String::new(),
            },
            ClientMessage::SetQuality {
                track_id: String::new(),
                quality: Quality::Low,
            },
            ClientMessage::SendReaction {
                reaction: Reaction {
                    reaction_type: "like".into(),
                    emoji_code: None,
                    custom: None,
                },
            },
            ClientMessage::SendEvent {
                custom: serde_json::json!({}),
            },
            ClientMessage::Resume {
                resume_token: String::new(),
            },
            ClientMessage::RestartIce,
        ];
        assert_eq!(all.len(), ClientMessage::TYPES.len());
        for m in all {
            let j = serde_json::to_value(&m).unwrap();
            assert_eq!(j["type"], m.kind());
            assert!(ClientMessage::TYPES.contains(&m.kind()), "{}", m.kind());
        }
    }

    #[test]
    fn unknown_type_is_an_error() {
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"fly"}"#).is_err());
    }

    #[test]
    fn events_serialize_with_dotted_type() {
        let e = ServerMessage::Event(CallEvent::LiveStarted {
            call_cid: "audio_room:x".parse().unwrap(),
        });
        let j = serde_json::to_value(&e).unwrap();
        assert_eq!(j["type"], "call.live_started");
        assert_eq!(j["call_cid"], "audio_room:x");
        let back: ServerMessage = serde_json::from_value(j).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn request_id_rides_along_every_client_message() {
        for json in [
            r#"{"type":"leave","request_id":"r-1"}"#,
            r#"{"type":"ping","request_id":"r-1"}"#,
            r#"{"type":"join","call_cid":"default:a","request_id":"r-1"}"#,
        ] {
            let e: ClientEnvelope = serde_json::from_str(json).unwrap();
            assert_eq!(e.request_id.as_deref(), Some("r-1"), "{json}");
            // The plain message parses too: old servers and code paths ignore the field.
            let m: ClientMessage = serde_json::from_str(json).unwrap();
            assert_eq!(m, e.message);
        }
        let e: ClientEnvelope = serde_json::from_str(r#"{"type":"ping"}"#).unwrap();
        assert_eq!(e.request_id, None);
    }

    #[test]
    fn replies_carry_the_request_id_top_level() {
        let r = Reply {
            message: ServerMessage::Signal(SignalMessage::Pong),
            request_id: Some("abc".into()),
        };
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j, serde_json::json!({"type": "pong", "request_id": "abc"}));
        let r = Reply {
            message: ServerMessage::Signal(SignalMessage::Error {
                error: ErrorBody {
                    code: ErrorCode::NotJoined,
                    message: "join first".into(),
                    capability: None,
                },
                request: Some("leave".into()),
            }),
            request_id: Some("x:1".into()),
        };
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["type"], "error");
        assert_eq!(j["code"], "not_joined");
        assert_eq!(j["request_id"], "x:1");
        let none = Reply {
            message: SignalMessage::Pong,
            request_id: None,
        };
        assert_eq!(serde_json::to_string(&none).unwrap(), r#"{"type":"pong"}"#);
    }

    #[test]
    fn reactions_and_custom_events_parse_from_documented_json() {
        let m: ClientMessage = serde_json::from_str(
            r#"{"type":"send_reaction","reaction":{"type":"like","emoji_code":":heart:","custom":{"x":1}},"request_id":"r"}"#,
        )
        .unwrap();
        let ClientMessage::SendReaction { reaction } = m else {
            panic!("not a reaction: {m:?}")
        };
        assert_eq!(reaction.reaction_type, "like");
        assert_eq!(reaction.emoji_code.as_deref(), Some(":heart:"));
        assert_eq!(reaction.custom, Some(serde_json::json!({"x": 1})));
        let m: ClientMessage =
            serde_json::from_str(r#"{"type":"send_event","custom":{"kind":"poll","q":"?"}}"#)
                .unwrap();
        assert!(matches!(m, ClientMessage::SendEvent { .. }));
        let e = CallEvent::Reaction {
            call_cid: "default:a".parse().unwrap(),
            participant_id: "p".into(),
            user_id: "u".into(),
            reaction: Reaction {
                reaction_type: "like".into(),
                emoji_code: None,
                custom: None,
            },
        };
        let j = serde_json::to_value(&e).unwrap();
        assert_eq!(j["type"], "call.reaction");
        assert_eq!(j["reaction"], serde_json::json!({"type": "like"}));
        assert_eq!(e.kind(), "call.reaction");
    }

    #[test]
    fn names_and_payloads_are_validated_and_sized() {
        assert_eq!(crate::validate_display_name("  Ada L. ").unwrap(), "Ada L.");
        assert_eq!(
            crate::validate_display_name(&"é".repeat(MAX_NAME_CHARS)).unwrap(),
            "é".repeat(MAX_NAME_CHARS)
        );
        for bad in ["", "   ", "a\nb", "\u{7}", &"x".repeat(MAX_NAME_CHARS + 1)] {
            assert!(crate::validate_display_name(bad).is_err(), "{bad:?}");
        }
        let ok = serde_json::json!({"a": "x".repeat(MAX_CUSTOM_BYTES - 10)});
        assert!(crate::validate_custom("custom", &ok, MAX_CUSTOM_BYTES).is_ok());
        let big = serde_json::json!({"a": "x".repeat(MAX_CUSTOM_BYTES)});
        assert_eq!(
            crate::validate_custom("custom", &big, MAX_CUSTOM_BYTES),
            Err(PayloadError::TooLarge {
                field: "custom",
                max: MAX_CUSTOM_BYTES
            })
        );
        assert_eq!(
            crate::validate_custom("custom", &serde_json::json!([1]), MAX_CUSTOM_BYTES),
            Err(PayloadError::NotAnObject("custom"))
        );
        // Old joins without name or custom still parse, and the settings stay default.
        let s: JoinSettings = serde_json::from_str("{}").unwrap();
        assert_eq!(s, JoinSettings::default());
    }

    #[test]
    fn request_id_validation() {
        for ok in ["a", "A-z_0.9:x", &"x".repeat(64)] {
            assert!(crate::validate_request_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "é", "a/b", &"x".repeat(65)] {
            assert!(crate::validate_request_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn error_message_flattens_body() {
        let e = ServerMessage::Signal(SignalMessage::Error {
            error: ErrorBody {
                code: ErrorCode::MissingCapability,
                message: "missing send-video".into(),
                capability: Some(Capability::SendVideo),
            },
            request: Some("publish".into()),
        });
        let j = serde_json::to_value(&e).unwrap();
        assert_eq!(j["type"], "error");
        assert_eq!(j["code"], "missing_capability");
        assert_eq!(j["capability"], "send-video");
        assert_eq!(j["request"], "publish");
        let back: ServerMessage = serde_json::from_value(j).unwrap();
        assert_eq!(back, e);
    }
}

/// A set of track sources as a bit mask (bit = index in [`TrackSource::ALL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SourceSet(u8);

impl SourceSet {
    /// No source.
    pub const EMPTY: SourceSet = SourceSet(0);
    /// Every source.
    pub const ALL: SourceSet = SourceSet(0b1111);

    /// The bit of one source.
    pub const fn bit(source: TrackSource) -> u8 {
        1 << (source as u8)
    }

    /// Whether `source` is in the set.
    pub const fn contains(self, source: TrackSource) -> bool {
        self.0 & SourceSet::bit(source) != 0
    }

    /// This set plus `source`.
    #[must_use]
    pub const fn with(self, source: TrackSource) -> SourceSet {
        SourceSet(self.0 | SourceSet::bit(source))
    }

    /// This set without `source`.
    #[must_use]
    pub const fn without(self, source: TrackSource) -> SourceSet {
        SourceSet(self.0 & !SourceSet::bit(source))
    }

    /// The raw mask.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// The sources in the set.
    pub fn iter(self) -> impl Iterator<Item = TrackSource> {
        TrackSource::ALL
            .into_iter()
            .filter(move |s| self.contains(*s))
    }
}

impl FromIterator<TrackSource> for SourceSet {
    fn from_iter<I: IntoIterator<Item = TrackSource>>(iter: I) -> Self {
        iter.into_iter().fold(SourceSet::EMPTY, |s, x| s.with(x))
    }
}

/// What the media plane lets one participant do, computed by the control plane after every
/// change (capabilities, mutes, backstage/live, kick) and tested per packet by the SFU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MediaGate {
    /// Sources whose packets are forwarded: the capability is held, the source is not muted,
    /// and the call is live or the publisher may be backstage.
    pub send: SourceSet,
    /// Whether the participant receives media (false while backstage for a listener).
    pub receive: bool,
}
