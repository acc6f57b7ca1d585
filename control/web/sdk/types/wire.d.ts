// Generated from the Rust types in proto/ by ts-rs. Do not edit: run
// `UPDATE_TS_TYPES=1 cargo test -p greenroom-proto --lib typescript` after changing them.

export type JsonValue = number | string | boolean | Array<JsonValue> | { [key in string]: JsonValue } | null;

/**
 * A permission a participant holds in a call, named exactly as on the wire.
 */
export type Capability = "join-call" | "read-call" | "join-backstage" | "join-ended-call" | "send-audio" | "send-video" | "screenshare" | "create-call" | "update-call" | "update-call-settings" | "update-call-permissions" | "mute-users" | "kick-user" | "block-users" | "end-call" | "create-reaction";

/**
 * A set of capabilities as a bit mask: the media plane's gate tests one bit per packet.
 */
export type CapabilitySet = Array<Capability>;

/**
 * Where a published track comes from; decides which capability gates it.
 */
export type TrackSource = "microphone" | "camera" | "screen_share" | "screen_share_audio";

/**
 * A role, globally (from the token) or per call (a call member's role overrides the global one).
 */
export type Role = "admin" | "host" | "moderator" | "user" | "call_member";

/**
 * The kind of call, which fixes the default grants and whether backstage is on.
 */
export type CallType = "default" | "audio_room" | "livestream" | "development";

/**
 * A call's full id, `type:id`, e.g. `audio_room:stage1`.
 */
export type CallCid = string;

/**
 * A machine-readable error code, used in HTTP error bodies and in `error` messages.
 */
export type ErrorCode = "invalid_json" | "bad_request" | "unauthorized" | "token_expired" | "unknown_key" | "missing_capability" | "wrong_call" | "not_found" | "blocked" | "call_ended" | "backstage" | "not_joined" | "already_joined" | "not_requestable" | "too_large" | "unknown_message" | "media_error" | "shutting_down" | "rate_limited" | "too_many_connections" | "resume_failed" | "cluster_unavailable" | "internal";

/**
 * The JSON body of every HTTP error and the payload of an `error` message.
 */
export type ErrorBody = { 
/**
 * Machine-readable code.
 */
code: ErrorCode, 
/**
 * Human-readable explanation.
 */
message: string, 
/**
 * The missing capability, for `missing_capability`.
 */
capability?: Capability | null, };

/**
 * A member of a call, with the role that applies to them in this call.
 */
export type Member = { 
/**
 * The user.
 */
user_id: string, 
/**
 * Their role in this call (overrides the global role).
 */
role: Role, };

/**
 * Settings chosen by a client when joining.
 */
export type JoinSettings = { 
/**
 * Join without video.
 */
audio_only?: boolean, 
/**
 * Join with the microphone muted.
 */
start_audio_muted?: boolean, 
/**
 * Join with the camera off.
 */
start_video_muted?: boolean, 
/**
 * The name others see: 1 to [`MAX_NAME_CHARS`] characters, no control characters, trimmed
 * (see [`validate_display_name`]). Absent: clients show the user id.
 */
name?: string, 
/**
 * App data shown to everyone with the participant: a JSON object of at most
 * [`MAX_CUSTOM_BYTES`] bytes.
 */
custom?: JsonValue, };

/**
 * A reaction as sent with `send_reaction` and delivered in `call.reaction`.
 */
export type Reaction = { 
/**
 * What kind of reaction, e.g. `like`, `raised-hand`, `fireworks` (1 to
 * [`MAX_REACTION_CHARS`] characters).
 */
type: string, 
/**
 * An emoji shortcode to show, e.g. `:heart:` (optional, same limits).
 */
emoji_code?: string, 
/**
 * App data (a JSON object of at most [`MAX_CUSTOM_BYTES`] bytes).
 */
custom?: JsonValue, };

/**
 * A published track as the call sees it.
 */
export type TrackInfo = { 
/**
 * Stable id of the track: `<participant_id>:<source>`.
 */
track_id: string, 
/**
 * The publishing participant session.
 */
participant_id: string, 
/**
 * The publishing user.
 */
user_id: string, 
/**
 * What the track carries.
 */
source: TrackSource, 
/**
 * Whether forwarding is stopped (muted by the user, by a moderator, or capability revoked).
 */
muted: boolean, };

/**
 * One joined session of a user.
 */
export type ParticipantInfo = { 
/**
 * The session id, unique per join.
 */
participant_id: string, 
/**
 * The user.
 */
user_id: string, 
/**
 * The role that applies to the user in this call.
 */
role: Role, 
/**
 * Unix milliseconds at join.
 */
joined_at_ms: number, 
/**
 * Sources the participant publishes.
 */
published: Array<TrackSource>, 
/**
 * Sources that are muted (by the user, a moderator or a revoke).
 */
muted: Array<TrackSource>, 
/**
 * The display name given at join, if any.
 */
name?: string, 
/**
 * The app data given at join, if any.
 */
custom?: JsonValue, };

/**
 * A call's state.
 */
export type CallState = { 
/**
 * `type:id`.
 */
cid: CallCid, 
/**
 * The call type.
 */
type: CallType, 
/**
 * The call id.
 */
id: string, 
/**
 * Who created the call.
 */
created_by: string, 
/**
 * Unix milliseconds at creation.
 */
created_at_ms: number, 
/**
 * Whether backstage applies to this call type.
 */
backstage_enabled: boolean, 
/**
 * Whether the call is in backstage (backstage on and not live).
 */
backstage: boolean, 
/**
 * Whether the call is live.
 */
live: boolean, 
/**
 * Whether the call has ended.
 */
ended: boolean, 
/**
 * Listed members and their roles.
 */
members: Array<Member>, 
/**
 * Joined sessions.
 */
participants: Array<ParticipantInfo>, 
/**
 * Users blocked from the call.
 */
blocked_user_ids: Array<string>, 
/**
 * Free-form settings given at creation.
 */
settings: JsonValue, };

/**
 * Which kinds of media a mute applies to.
 */
export type MuteKinds = { 
/**
 * Microphone.
 */
audio: boolean, 
/**
 * Camera.
 */
video: boolean, 
/**
 * Screen share (video and audio).
 */
screenshare: boolean, };

/**
 * An ICE server as `RTCIceServer` takes it: TURN URLs with a time-limited credential.
 */
export type IceServer = { 
/**
 * `turn:host:port?transport=udp|tcp` and `turns:host:port?transport=tcp` URLs.
 */
urls: Array<string>, 
/**
 * `<expiry-unix-seconds>:<user_id>`.
 */
username: string, 
/**
 * `base64(HMAC-SHA1(secret, username))`.
 */
credential: string, };

/**
 * Which PeerConnection an ICE candidate belongs to.
 */
export type PeerTarget = "publisher" | "subscriber";

/**
 * The mid of a publisher transceiver and the source it carries.
 */
export type PublishTrack = { 
/**
 * The transceiver's mid in the publisher offer.
 */
mid: string, 
/**
 * What it carries.
 */
source: TrackSource, };

/**
 * A subscriber transceiver's mid and the track it carries.
 */
export type SubscribedTrack = { 
/**
 * The transceiver's mid in the subscriber offer.
 */
mid: string, 
/**
 * Stable id of the track: `<participant_id>:<source>`.
 */
track_id: string, 
/**
 * The publishing participant session.
 */
participant_id: string, 
/**
 * The publishing user.
 */
user_id: string, 
/**
 * What the track carries.
 */
source: TrackSource, 
/**
 * Whether forwarding is stopped (muted by the user, by a moderator, or capability revoked).
 */
muted: boolean, };

/**
 * Simulcast quality a subscriber asks for.
 */
export type Quality = "low" | "medium" | "high";

/**
 * A message from a client on `/v1/signal`.
 */
export type ClientMessage = { "type": "join", 
/**
 * The call to join.
 */
call_cid: CallCid, 
/**
 * Create the call if it does not exist.
 */
create?: boolean, 
/**
 * Join settings.
 */
settings?: JoinSettings, } | { "type": "leave" } | { "type": "request_permission", 
/**
 * What to ask for.
 */
permissions: Array<Capability>, } | { "type": "set_muted", 
/**
 * The source.
 */
source: TrackSource, 
/**
 * Muted or not.
 */
muted: boolean, } | { "type": "ping" } | { "type": "publish", 
/**
 * SDP offer of the client's publisher PeerConnection.
 */
sdp: string, 
/**
 * Every sending transceiver's mid and source.
 */
tracks: Array<PublishTrack>, } | { "type": "unpublish", 
/**
 * The source to stop.
 */
source: TrackSource, } | { "type": "subscriber_answer", 
/**
 * SDP answer of the client's subscriber PeerConnection.
 */
sdp: string, } | { "type": "ice_candidate", 
/**
 * Which connection.
 */
target: PeerTarget, 
/**
 * The `candidate:` attribute value.
 */
candidate: string, } | { "type": "subscribe", 
/**
 * The track.
 */
track_id: string, } | { "type": "unsubscribe", 
/**
 * The track.
 */
track_id: string, } | { "type": "set_quality", 
/**
 * The track.
 */
track_id: string, 
/**
 * The quality.
 */
quality: Quality, } | { "type": "send_reaction", 
/**
 * The reaction.
 */
reaction: Reaction, } | { "type": "send_event", 
/**
 * The payload: a JSON object of at most [`MAX_EVENT_BYTES`] bytes.
 */
custom: JsonValue, } | { "type": "resume", 
/**
 * The `resume_token` of the last `joined` or `resumed`.
 */
resume_token: string, } | { "type": "restart_ice" };

/**
 * What a client sends on `/v1/signal`: a [`ClientMessage`] plus an optional `request_id`
 * (protocol 2) that the server echoes in its direct reply and in any `error` the message causes.
 */
export type ClientEnvelope = { 
/**
 * The client's id for this request: 1 to 64 characters of `A-Z a-z 0-9 _ - . :`.
 */
request_id?: string, } & ClientMessage;

/**
 * A signaling reply or media instruction from the server.
 */
export type SignalMessage = { "type": "joined", 
/**
 * Protocol version.
 */
protocol: number, 
/**
 * This session.
 */
participant: ParticipantInfo, 
/**
 * The call as it is now.
 */
call: CallState, 
/**
 * What this participant may do.
 */
own_capabilities: CapabilitySet, 
/**
 * Capabilities this participant may request in this call type.
 */
requestable: CapabilitySet, 
/**
 * A secret that takes this session back on a new socket within the grace period
 * (`resume`). Bound to this user and participant; rotated by every `resumed`.
 */
resume_token?: string, 
/**
 * ICE servers for this participant's PeerConnections (the node's embedded TURN server
 * with credentials that expire); empty when the node runs none.
 */
ice_servers: Array<IceServer>, } | { "type": "resumed", 
/**
 * Protocol version.
 */
protocol: number, 
/**
 * This session.
 */
participant: ParticipantInfo, 
/**
 * The call as it is now.
 */
call: CallState, 
/**
 * What this participant may do.
 */
own_capabilities: CapabilitySet, 
/**
 * Capabilities this participant may request in this call type.
 */
requestable: CapabilitySet, 
/**
 * The token for the next `resume` (the old one is spent).
 */
resume_token: string, 
/**
 * ICE servers for this participant's PeerConnections, as in `joined` (the node's embedded TURN server
 * with credentials that expire); empty when the node runs none.
 */
ice_servers: Array<IceServer>, } | { "type": "left", 
/**
 * The call.
 */
call_cid: CallCid, 
/**
 * The session that left: a client that left and joined again ignores a `left` for an
 * older session.
 */
participant_id: string, } | { "type": "error", 
/**
 * The `type` of the client message that failed, when known.
 */
request?: string | null, 
/**
 * Machine-readable code.
 */
code: ErrorCode, 
/**
 * Human-readable explanation.
 */
message: string, 
/**
 * The missing capability, for `missing_capability`.
 */
capability?: Capability | null, } | { "type": "pong" } | { "type": "publish_answer", 
/**
 * SDP answer.
 */
sdp: string, } | { "type": "subscriber_offer", 
/**
 * SDP offer.
 */
sdp: string, 
/**
 * Which mid carries which track.
 */
tracks: Array<SubscribedTrack>, } | { "type": "stop_publishing", 
/**
 * The sources.
 */
sources: Array<TrackSource>, 
/**
 * Why: `permission_revoked`, `muted_by_moderator`.
 */
reason: string, } | { "type": "going_away", 
/**
 * Milliseconds until the server closes the connection.
 */
drain_ms: number, };

/**
 * A direct reply of the server (`joined`, `left`, `publish_answer`, `pong`, `error`, `ring.ok`)
 * carrying the `request_id` of the client message it answers. Events never carry one.
 */
export type Reply<T> = { 
/**
 * The `request_id` of the client message this answers, when it had one.
 */
request_id?: string, } & T;

/**
 * One active speaker.
 */
export type Speaker = { 
/**
 * The session.
 */
participant_id: string, 
/**
 * The user.
 */
user_id: string, 
/**
 * Level 0.0 (silence) to 1.0 (loudest).
 */
level: number, };

/**
 * A call event, pushed to the participants who should see it.
 */
export type CallEvent = { "type": "call.session_participant_joined", 
/**
 * The call.
 */
call_cid: CallCid, 
/**
 * The new session.
 */
participant: ParticipantInfo, } | { "type": "call.session_participant_left", 
/**
 * The call.
 */
call_cid: CallCid, 
/**
 * The session that left.
 */
participant: ParticipantInfo, 
/**
 * `left`, `kicked`, `blocked`, `disconnected`, `call_ended`.
 */
reason: string, } | { "type": "call.permission_request", 
/**
 * The call.
 */
call_cid: CallCid, 
/**
 * Who asks.
 */
user_id: string, 
/**
 * What they ask for.
 */
permissions: Array<Capability>, } | { "type": "call.permissions_updated", 
/**
 * The call.
 */
call_cid: CallCid, 
/**
 * The user.
 */
user_id: string, 
/**
 * Their capabilities now.
 */
own_capabilities: CapabilitySet, } | { "type": "call.live_started", 
/**
 * The call.
 */
call_cid: CallCid, } | { "type": "call.live_stopped", 
/**
 * The call.
 */
call_cid: CallCid, } | { "type": "call.user_muted", 
/**
 * The call.
 */
call_cid: CallCid, 
/**
 * Who muted.
 */
from_user_id: string, 
/**
 * Who was muted.
 */
muted_user_ids: Array<string>, 
/**
 * Which sources.
 */
sources: Array<TrackSource>, } | { "type": "call.user_unmuted", 
/**
 * The call.
 */
call_cid: CallCid, 
/**
 * Who unmuted.
 */
user_id: string, 
/**
 * Which sources.
 */
sources: Array<TrackSource>, } | { "type": "call.kicked_user", 
/**
 * The call.
 */
call_cid: CallCid, 
/**
 * Who was kicked.
 */
user_id: string, 
/**
 * By whom.
 */
kicked_by: string, } | { "type": "call.blocked_user", 
/**
 * The call.
 */
call_cid: CallCid, 
/**
 * Who was blocked.
 */
user_id: string, 
/**
 * By whom.
 */
blocked_by: string, } | { "type": "call.unblocked_user", 
/**
 * The call.
 */
call_cid: CallCid, 
/**
 * Who was unblocked.
 */
user_id: string, 
/**
 * By whom.
 */
unblocked_by: string, } | { "type": "call.ended", 
/**
 * The call.
 */
call_cid: CallCid, 
/**
 * Who ended it.
 */
ended_by: string, } | { "type": "call.track_published", 
/**
 * The call.
 */
call_cid: CallCid, 
/**
 * The track.
 */
track: TrackInfo, } | { "type": "call.track_unpublished", 
/**
 * The call.
 */
call_cid: CallCid, 
/**
 * The track.
 */
track: TrackInfo, } | { "type": "call.reaction", 
/**
 * The call.
 */
call_cid: CallCid, 
/**
 * The sending session.
 */
participant_id: string, 
/**
 * The sending user.
 */
user_id: string, 
/**
 * The reaction.
 */
reaction: Reaction, } | { "type": "call.custom", 
/**
 * The call.
 */
call_cid: CallCid, 
/**
 * The sending session.
 */
participant_id: string, 
/**
 * The sending user.
 */
user_id: string, 
/**
 * The payload.
 */
custom: JsonValue, } | { "type": "call.speakers_changed", 
/**
 * The call.
 */
call_cid: CallCid, 
/**
 * Speaking sessions, loudest first.
 */
speakers: Array<Speaker>, };

/**
 * Anything the server sends on the socket: a signaling message or a call event.
 */
export type ServerMessage = SignalMessage | CallEvent;

/**
 * What a rung call carries.
 */
export type CallKind = "audio" | "video";

/**
 * Why a callee did not take a call.
 */
export type RejectReason = "rejected" | "busy" | "declined";

/**
 * How the ringing phase of a call ended.
 */
export type RingOutcome = "accepted" | "rejected" | "busy" | "declined" | "cancelled" | "missed";

/**
 * Where a rung call stands.
 */
export type RingPhase = "ringing" | "active" | "ended";

/**
 * A rung call as the caller (and anyone asking) sees it; the reply to initiating a call.
 *
 * The media session to join on `/v1/signal` is `call_cid`; `session_id` names this one ringing
 * of that call (history records are keyed by it).
 */
export type RingCallInfo = { 
/**
 * Unique id of this ringing (one call cid may be rung again later).
 */
session_id: string, 
/**
 * The media session to join.
 */
call_cid: CallCid, 
/**
 * Who called.
 */
caller_user_id: string, 
/**
 * Who was rung (a group's members minus the caller).
 */
callee_user_ids: Array<string>, 
/**
 * The group rung, if any.
 */
group_id?: string | null, 
/**
 * Audio or video (video after a switch).
 */
kind: CallKind, 
/**
 * Ringing, active or ended.
 */
phase: RingPhase, 
/**
 * How the ringing ended, once it has.
 */
outcome?: RingOutcome | null, 
/**
 * How long callees ring.
 */
ring_timeout_ms: number, 
/**
 * Unix milliseconds when the call was initiated.
 */
started_at_ms: number, 
/**
 * Users in the call now (the caller and those who accepted and have not left).
 */
participants: Array<string>, 
/**
 * Callees rejected automatically because they were in another call.
 */
busy_user_ids?: Array<string>, };

/**
 * One call in the history: who called whom, how the ringing ended, when, and who took part.
 */
export type CallRecord = { 
/**
 * Unique id of this ringing.
 */
session_id: string, 
/**
 * The call.
 */
call_cid: CallCid, 
/**
 * Who called.
 */
caller_user_id: string, 
/**
 * Who was rung.
 */
callee_user_ids: Array<string>, 
/**
 * The group rung, if any.
 */
group_id?: string | null, 
/**
 * Audio or video (video if the call was switched).
 */
kind: CallKind, 
/**
 * How the ringing ended.
 */
outcome: RingOutcome, 
/**
 * Unix milliseconds when the call was initiated.
 */
started_at_ms: number, 
/**
 * Unix milliseconds of the first accept.
 */
answered_at_ms?: number | null, 
/**
 * Unix milliseconds when the call ended (for unanswered calls: when the ringing stopped).
 */
ended_at_ms?: number | null, 
/**
 * Talk time: from the first accept to the end; absent for unanswered or ongoing calls.
 */
duration_ms?: number | null, 
/**
 * Everyone who took part (the caller, then the callees in the order they accepted).
 */
participants: Array<string>, };

/**
 * A ringing event, pushed to the devices of the users concerned.
 */
export type RingEvent = { "type": "call.ring", 
/**
 * The call (the media session to join after accepting).
 */
call_cid: CallCid, 
/**
 * Who calls.
 */
caller_user_id: string, 
/**
 * Audio or video.
 */
kind: CallKind, 
/**
 * Everyone rung (for a group: all members but the caller).
 */
members: Array<string>, 
/**
 * The group rung, if any.
 */
group_id?: string | null, 
/**
 * How long the device rings before the call counts as missed.
 */
ring_timeout_ms: number, } | { "type": "call.accepted", 
/**
 * The call.
 */
call_cid: CallCid, 
/**
 * Who accepted.
 */
user_id: string, 
/**
 * On which of their devices.
 */
device_id: string, } | { "type": "call.rejected", 
/**
 * The call.
 */
call_cid: CallCid, 
/**
 * Who rejected.
 */
user_id: string, 
/**
 * Why.
 */
reason: RejectReason, } | { "type": "call.cancelled", 
/**
 * The call.
 */
call_cid: CallCid, 
/**
 * The caller.
 */
by: string, } | { "type": "call.missed", 
/**
 * The call.
 */
call_cid: CallCid, } | { "type": "call.ended", 
/**
 * The call.
 */
call_cid: CallCid, 
/**
 * Who ended it (for a group call: the last to leave).
 */
ended_by: string, } | { "type": "call.stop_ringing", 
/**
 * The call.
 */
call_cid: CallCid, } | { "type": "call.video_requested", 
/**
 * The call.
 */
call_cid: CallCid, 
/**
 * Who asks.
 */
requested_by: string, } | { "type": "call.switched_to_video", 
/**
 * The call.
 */
call_cid: CallCid, 
/**
 * Who asked.
 */
requested_by: string, 
/**
 * Who accepted.
 */
accepted_by: string, };

/**
 * A ringing request from a client on its user-level socket.
 */
export type RingClientMessage = { "type": "ring_initiate", 
/**
 * The call (the media session everyone joins).
 */
call_cid: CallCid, 
/**
 * Users to ring (ignored when `group_id` is set).
 */
user_ids?: Array<string>, 
/**
 * A group whose members (but the caller) are rung.
 */
group_id?: string | null, 
/**
 * Audio or video.
 */
kind: CallKind, } | { "type": "ring_accept", 
/**
 * The call.
 */
call_cid: CallCid, } | { "type": "ring_reject", 
/**
 * The call.
 */
call_cid: CallCid, 
/**
 * Why (default `rejected`).
 */
reason?: RejectReason, } | { "type": "ring_cancel", 
/**
 * The call.
 */
call_cid: CallCid, } | { "type": "ring_end", 
/**
 * The call.
 */
call_cid: CallCid, } | { "type": "ring_leave", 
/**
 * The call.
 */
call_cid: CallCid, } | { "type": "ring_request_video", 
/**
 * The call.
 */
call_cid: CallCid, } | { "type": "ring_accept_video", 
/**
 * The call.
 */
call_cid: CallCid, };

/** Protocol version announced in `joined.protocol`. */
export const PROTOCOL_VERSION: 2;
