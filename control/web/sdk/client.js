// @ts-check
// Greenroom browser SDK: a client (token + HTTP API) and a Call (signaling WebSocket, the
// publisher and subscriber PeerConnections, local devices and their permissions).
// Plain ES module, no build step. Protocol: docs/PROTOCOL.md.

import { Emitter } from './emitter.js';
import { PendingRequests } from './requests.js';
import { RingClient } from './ringing.js';
import { captureTrack, listDevices, watchDevices, watchPermission, queryPermission, classifyMediaError } from './devices.js';
import { backoffMs, attemptFits, IceWatchdog } from './reconnect.js';

/** @typedef {import('./types/wire').TrackSource} TrackSource */
/** @typedef {import('./types/wire').SubscribedTrack} SubscribedTrack */
/** @typedef {import('./types/wire').ServerMessage} ServerMessage */
/** @typedef {import('./types/wire').ErrorCode} ErrorCode */
/** @typedef {import('./types/wire').Capability} Capability */
/** @typedef {'grid'|'spotlight'} LayoutMode */

/**
 * A participant session as the SDK keeps it.
 * @typedef {object} Participant
 * @property {string} participantId
 * @property {string} userId
 * @property {string} role
 * @property {string|null} name  Display name given at join (null: show the user id).
 * @property {Record<string, any>|null} custom  App data given at join.
 * @property {boolean} isLocal
 * @property {number} joinedAtMs
 * @property {Set<TrackSource>} published  Sources the server says are published.
 * @property {Set<TrackSource>} muted       Sources muted (by the user, a moderator or a revoke).
 * @property {Partial<Record<TrackSource, MediaStreamTrack>>} tracks  Received (remote) or sent (local) tracks.
 * @property {number} audioLevel  0..1 from call.speakers_changed.
 * @property {boolean} speaking
 */

/**
 * Settings for `Call.join`.
 * @typedef {object} JoinOptions
 * @property {boolean} [create=true]          Create the call if it does not exist.
 * @property {boolean} [audioOnly=false]      Join without video.
 * @property {boolean} [startAudioMuted=false]
 * @property {boolean} [startVideoMuted=false]
 * @property {LayoutMode} [layout='grid']
 * @property {boolean} [publish=true]         Publish what the capabilities allow (microphone, camera unless audioOnly).
 * @property {{audio?: MediaStreamTrack|null, video?: MediaStreamTrack|null}} [tracks]  Tracks captured before joining (the preview); the call takes ownership.
 * @property {{audioInput?: string|null, videoInput?: string|null, audioOutput?: string|null}} [devices]
 * @property {string} [name]  Display name others see (1-64 characters; the server trims and validates it).
 * @property {Record<string, any>} [custom]  App data others see with the participant (a JSON object, at most 1 KiB).
 * @property {number} [reconnectTimeoutMs=15000]  How long to try to get the session back after the signaling socket drops (match the server's `limits.resume_grace_secs`); then `connectionStateChanged` `failed` and `left` `disconnected`.
 * @property {RTCIceTransportPolicy} [iceTransportPolicy='all']  `'relay'`: media only through the TURN servers of `joined.ice_servers`.
 */

const GATHER_TIMEOUT_MS = 4000;
const REPLY_TIMEOUT_MS = 15000;
/** A joined socket pings this often; no pong within PONG_TIMEOUT_MS counts as a dropped socket. */
const PING_INTERVAL_MS = 5000;
const PONG_TIMEOUT_MS = 5000;
/** A PeerConnection `disconnected` for this long gets an ICE restart (`failed` at once). */
const ICE_RESTART_DELAY_MS = 3000;
/** Audio level (0..1, from call.speakers_changed) from which a participant counts as speaking. */
const SPEAKING_LEVEL = 0.05;
/** @type {RTCConfiguration} */
const PC_CONFIG = { iceServers: [], bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require' };

/** Capability that gates each source. */
export const SOURCE_CAPABILITY = {
  microphone: 'send-audio',
  camera: 'send-video',
  screen_share: 'screenshare',
  screen_share_audio: 'screenshare',
};

/** An error from the server (`error` message or HTTP error body). */
export class GreenroomError extends Error {
  /**
   * @param {string} code  e.g. `missing_capability`, `backstage`, `not_found`
   * @param {string} message
   * @param {{capability?: string|null, request?: string|null, status?: number|null, requestId?: string|null}} [extra]
   */
  constructor(code, message, extra = {}) {
    super(message);
    this.name = 'GreenroomError';
    this.code = code;
    /** The missing capability, for `missing_capability`. */
    this.capability = extra.capability ?? null;
    /** The `type` of the request that failed, when known. */
    this.request = extra.request ?? null;
    /** The HTTP status, for HTTP API errors. */
    this.status = extra.status ?? null;
    /** The `request_id` of the signaling request that failed, when it had one. */
    this.requestId = extra.requestId ?? null;
  }
}

/**
 * Decodes a JWT's claims without verifying it (the server verifies).
 * @param {string} token
 * @returns {{sub?: string, role?: string, call?: string, exp?: number, admin?: boolean}}
 */
export function decodeToken(token) {
  try {
    const part = token.split('.')[1];
    const json = atob(part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '='));
    return JSON.parse(json);
  } catch {
    return {};
  }
}

/** Connects to a Greenroom server with a token: HTTP API calls and `Call` objects. */
/**
 * Options of `new GreenroomClient`.
 * @typedef {object} ClientOptions
 * @property {string} token  A JWT from your backend.
 * @property {string} [baseUrl]  Defaults to this page's origin.
 * @property {string} [signalUrl]  Defaults to ws(s)://<host of baseUrl>/v1/signal.
 * @property {() => Promise<string>} [tokenProvider]  Returns a fresh token: called
 *   `refreshMarginMs` before the token's `exp`, and once when the HTTP API answers
 *   `token_expired` (the request is then retried). Sockets opened later (joins, reconnects) use
 *   the fresh token; open sockets stay authenticated.
 * @property {number} [refreshMarginMs=60000]
 */

/**
 * Connects to a Greenroom server with a token: HTTP API calls and `Call` objects.
 * Events: `tokenRefreshed {token}`, `tokenRefreshFailed {error}`.
 */
export class GreenroomClient extends Emitter {
  /** @param {ClientOptions} opts */
  constructor({ token, baseUrl, signalUrl, tokenProvider, refreshMarginMs = 60_000 }) {
    super();
    if (!token) throw new Error('a token is required');
    this.token = token;
    this.baseUrl = (baseUrl ?? location.origin).replace(/\/$/, '');
    const u = new URL(this.baseUrl);
    this.signalUrl = signalUrl ?? `${u.protocol === 'https:' ? 'wss' : 'ws'}://${u.host}/v1/signal`;
    this.claims = decodeToken(token);
    /** The user id (`sub` of the token). */
    this.userId = this.claims.sub ?? '';
    /** The user-level (ringing) connection once `connectUser` opened it. @type {RingClient|null} */
    this.ringing = null;
    this.tokenProvider = tokenProvider ?? null;
    this.refreshMarginMs = refreshMarginMs;
    /** @type {ReturnType<typeof setTimeout>|null} */
    this._refreshTimer = null;
    /** @type {Promise<string>|null} */
    this._refreshing = null;
    this._scheduleRefresh();
  }

  /**
   * Replaces the token (e.g. one your app fetched itself); reschedules the refresh.
   * @param {string} token
   */
  setToken(token) {
    this.token = token;
    this.claims = decodeToken(token);
    this._scheduleRefresh();
  }

  /**
   * Gets a fresh token from `tokenProvider` now (one at a time) and uses it.
   * @returns {Promise<string>}
   */
  refreshToken() {
    if (!this.tokenProvider) return Promise.reject(new GreenroomError('token_expired', 'no tokenProvider to refresh the token'));
    this._refreshing ??= this.tokenProvider()
      .then((token) => {
        if (!token) throw new GreenroomError('token_expired', 'the tokenProvider returned no token');
        this.setToken(token);
        this.emit('tokenRefreshed', { token });
        return token;
      })
      .catch((error) => {
        this.emit('tokenRefreshFailed', { error });
        throw error;
      })
      .finally(() => {
        this._refreshing = null;
      });
    return this._refreshing;
  }

  /** Stops the refresh timer (call when the client is no longer used). */
  dispose() {
    if (this._refreshTimer) clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
  }

  _scheduleRefresh() {
    if (this._refreshTimer) clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    if (!this.tokenProvider || typeof this.claims.exp !== 'number') return;
    const due = Math.max(0, this.claims.exp * 1000 - this.refreshMarginMs - Date.now());
    // Timers over 2^31-1 ms fire at once: cap, the next schedule comes after a refresh anyway.
    this._refreshTimer = setTimeout(() => this.refreshToken().catch(() => {}), Math.min(due, 2 ** 31 - 1));
  }

  /**
   * Calls the HTTP API; throws GreenroomError with the server's code on failure.
   * @param {'GET'|'POST'} method
   * @param {string} path  e.g. `/v1/calls/default/room1`
   * @param {any} [body]
   */
  async api(method, path, body) {
    try {
      return await this._api(method, path, body);
    } catch (e) {
      if (!(e instanceof GreenroomError && e.code === 'token_expired' && this.tokenProvider)) throw e;
      await this.refreshToken();
      return this._api(method, path, body);
    }
  }

  /**
   * @param {'GET'|'POST'} method
   * @param {string} path
   * @param {any} [body]
   */
  async _api(method, path, body) {
    const res = await fetch(this.baseUrl + path, {
      method,
      headers: { authorization: `Bearer ${this.token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      body: body !== undefined ? JSON.stringify(body) : undefined,
    });
    const text = await res.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      /* not JSON */
    }
    if (!res.ok) {
      throw new GreenroomError(json?.code ?? `http_${res.status}`, json?.message ?? (text || res.statusText), {
        capability: json?.capability,
        status: res.status,
      });
    }
    return json;
  }

  /**
   * Reads a call (needs `read-call`): `{call, own_capabilities}`. Throws `not_found` if it does not exist.
   * @param {string} cid `type:id`
   */
  getCall(cid) {
    return this.api('GET', callPath(cid));
  }

  /**
   * A call object; nothing happens until `join`.
   * @param {string} cid `type:id`
   */
  call(cid) {
    return new Call(this, cid);
  }

  /**
   * Opens the user-level connection (ringing: incoming calls, initiateCall, acceptCall...),
   * usable without joining any call; it reconnects by itself until `close()`. One per client:
   * a second call returns the same connection.
   * @param {{deviceId?: string, reconnect?: boolean}} [opts]
   * @returns {Promise<RingClient>}
   */
  async connectUser(opts = {}) {
    if (!this.ringing || this.ringing.state === 'closed') this.ringing = new RingClient(this, opts);
    await this.ringing.connect();
    return this.ringing;
  }

  /**
   * A user's call history (ringing calls), newest first: `{calls: CallRecord[], next?}`; pass
   * `next` as `cursor` for the next older page. Needs to be that user, or an admin token.
   * @param {{userId?: string, limit?: number, cursor?: string}} [opts]  `userId` defaults to this user.
   */
  callHistory({ userId, limit, cursor } = {}) {
    const q = new URLSearchParams();
    if (limit != null) q.set('limit', String(limit));
    if (cursor) q.set('cursor', cursor);
    const qs = q.toString();
    return this.api('GET', `/v1/users/${encodeURIComponent(userId ?? this.userId)}/calls${qs ? '?' + qs : ''}`);
  }
}

function callPath(cid) {
  const i = cid.indexOf(':');
  if (i <= 0) throw new Error(`bad call id ${cid}: expected type:id`);
  return `/v1/calls/${encodeURIComponent(cid.slice(0, i))}/${encodeURIComponent(cid.slice(i + 1))}`;
}

/** Resolves when ICE gathering is complete, or after a timeout with what was gathered. */
/**
 * The `a=fingerprint` value of an SDP (the session's or the first section's), or `null`.
 * @param {string|undefined|null} sdp
 * @returns {string|null}
 */
export function sdpFingerprint(sdp) {
  const m = /^a=fingerprint:(.+?)\s*$/m.exec(sdp ?? '');
  return m ? m[1].toLowerCase() : null;
}

function gatheringComplete(pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', check);
      resolve();
    };
    const check = () => pc.iceGatheringState === 'complete' && done();
    const timer = setTimeout(done, GATHER_TIMEOUT_MS);
    pc.addEventListener('icegatheringstatechange', check);
  });
}

function kindOf(source) {
  return source === 'microphone' || source === 'screen_share_audio' ? 'audio' : 'video';
}

/**
 * One call. Events (subscribe with `call.on(name, fn)`):
 * - `joined` {participant}; `left` {reason}; `callEnded` {endedBy}
 * - `participantJoined` Participant; `participantLeft` {participant, reason}; `participantsChanged` Participant[]
 *   (also on mute, tracks, speaking changes: the list is the one to render)
 * - `userMuted` {userIds, by, sources, byModerator}; `userUnmuted` {userId, sources}
 * - `screenShareStarted` {participant, local}; `screenShareStopped` {participant, local}
 * - `callSwitchedToVideo` {}; `layoutChanged` LayoutMode
 * - `speakersChanged` [{participantId, userId, level}]
 * - `permissionRequest` {userId, permissions}; `permissionsUpdated` {capabilities: string[], granted: string[], revoked: string[]}
 * - `permissionRequestAnswered` {capability, granted}
 * - `liveStarted`, `liveStopped`; `callStateChanged` {live, backstage, ended}
 * - `stopPublishing` {sources, reason}
 * - `devicesChanged` DeviceLists; `deviceBlocked` {source, reason}; `deviceRestored` {source}; `localChanged` LocalState
 * - `connectionState` {signal, publisher, subscriber, overall}
 * - `connectionStateChanged` {state: 'connected'|'reconnecting'|'failed', attempt}: the session's
 *   signaling: `reconnecting` while the SDK gets a dropped socket's session back (`resume`),
 *   `connected` once it has, `failed` (followed by `left` `disconnected`) when it could not
 * - `iceRestart` {target: 'publisher'|'subscriber'}: an ICE restart began on that connection
 * - `error` GreenroomError|Error (non-fatal, the call goes on); `kicked`, `blocked`
 */
export class Call extends Emitter {
  /** @param {GreenroomClient} client @param {string} cid */
  constructor(client, cid) {
    super();
    this.client = client;
    this.cid = cid;
    this.type = cid.split(':')[0];
    /** @type {'idle'|'joining'|'joined'|'left'|'ended'} */
    this.state = 'idle';
    /** @type {Map<string, Participant>} */
    this.participants = new Map();
    /** @type {Participant|null} */
    this.localParticipant = null;
    /** @type {Set<string>} */
    this.capabilities = new Set();
    /** @type {Set<string>} */
    this.requestable = new Set();
    /** Capabilities asked for and not answered yet. @type {Set<string>} */
    this.pendingRequests = new Set();
    /** Call flags from the server. */
    this.info = { live: false, backstage: false, backstageEnabled: false, ended: false, createdBy: '' };
    /** @type {LayoutMode} */
    this.layout = 'grid';
    this.settings = { audioOnly: false, startAudioMuted: false, startVideoMuted: false };
    /** Local media state per source. */
    this.local = {
      microphone: { track: null, muted: false, blocked: null, stoppedByServer: null },
      camera: { track: null, muted: false, blocked: null, stoppedByServer: null },
      screen_share: { track: null, muted: false, blocked: null, stoppedByServer: null },
    };
    /** Chosen devices. */
    this.devices = { audioInput: null, videoInput: null, audioOutput: null };
    this.connection = { signal: 'new', publisher: 'new', subscriber: 'new', overall: 'new' };
    /** @type {Array<{mid: string, track_id: string, participant_id: string, user_id: string, source: TrackSource, muted: boolean}>} */
    this.remoteTracks = [];

    this._ws = null;
    /** Calls of `_setMuted` per source, so that only the latest one may roll back. @type {Record<string, number>} */
    this._muteGeneration = {};
    this._requests = new PendingRequests('call', (code, message, type) => new GreenroomError(code, message, { request: type }));
    this._pub = null;
    this._sub = null;
    /** @type {Map<TrackSource, RTCRtpTransceiver>} */
    this._transceivers = new Map();
    this._negotiation = Promise.resolve();
    this._subQueue = Promise.resolve();
    this._cleanups = [];
    this._audioEls = new Map();
    this._pingTimer = null;
    this._wantAutoPublish = new Set();
    this._blockWatch = new Map();
    /** `connected`, `reconnecting` or `failed` (see `connectionStateChanged`). */
    this.connectionState = 'new';
    /** Set by `join`: how long a reconnect may take. */
    this.reconnectTimeoutMs = 15000;
    /** The secret that takes this session back after a dropped socket (never logged). @type {string|null} */
    this._resumeToken = null;
    this._reconnecting = false;
    /** The `join` message, sent again when a resume fails. @type {any} */
    this._joinMsg = null;
    /** @type {IceWatchdog[]} */
    this._watchdogs = [];
    /** @type {IceWatchdog|null} the subscriber connection's watchdog */
    this._subDog = null;
    /** ICE restarts asked for while the socket was down. @type {Set<'publisher'|'subscriber'>} */
    this._iceRestartPending = new Set();
  }

  // ---- public API: joining ------------------------------------------------------------------

  /**
   * Opens the signaling socket, joins, then publishes what the user may send.
   * Resolves with the local participant once `joined` arrives; publishing continues in the
   * background (failures are `error` events).
   * @param {JoinOptions} [opts]
   * @returns {Promise<Participant>}
   */
  async join(opts = {}) {
    if (this.state !== 'idle') throw new Error(`join: call is ${this.state}`);
    const { create = true, audioOnly = false, startAudioMuted = false, startVideoMuted = false, layout = 'grid', publish = true, tracks = {}, devices = {}, name, custom, reconnectTimeoutMs = 15000, iceTransportPolicy = 'all' } = opts;
    this.reconnectTimeoutMs = reconnectTimeoutMs;
    this._iceTransportPolicy = iceTransportPolicy;
    this.settings = { audioOnly, startAudioMuted, startVideoMuted };
    this.layout = layout;
    Object.assign(this.devices, devices);
    this.local.microphone.muted = startAudioMuted;
    this.local.camera.muted = startVideoMuted || audioOnly;
    if (tracks.audio) this.local.microphone.track = tracks.audio;
    if (tracks.video && !audioOnly) this.local.camera.track = tracks.video;
    else tracks.video?.stop();
    this.state = 'joining';
    this._setConnection('signal', 'connecting');
    await this._openSocket();
    this._joinMsg = { type: 'join', call_cid: this.cid, create, settings: { audio_only: audioOnly, start_audio_muted: startAudioMuted, start_video_muted: startVideoMuted || audioOnly, ...(name ? { name } : {}), ...(custom ? { custom } : {}) } };
    const joined = await this._request(this._joinMsg).catch((e) => {
      this.state = 'idle';
      this._closeSocket();
      this._stopLocalTracks();
      throw e;
    });
    this._onJoined(joined);
    this._setupPeerConnections();
    this._watchLocalDevices();
    this._setSessionState('connected', 0);
    // Closing the tab is a leave, not a dropped socket: the others see it at once instead of
    // after the server's resume grace period.
    if (typeof window !== 'undefined') {
      const onPageHide = () => {
        if (this.state === 'joined') this._send({ type: 'leave' });
      };
      window.addEventListener('pagehide', onPageHide);
      this._cleanups.push(() => window.removeEventListener('pagehide', onPageHide));
    }
    if (publish) {
      this._publishInitial().catch((e) => this._emitError(e));
    }
    return this.localParticipant;
  }

  /** Leaves the call and releases every device. */
  async leave() {
    if (this.state === 'joined') {
      this._send({ type: 'leave' });
    }
    this._teardown('left');
  }

  // ---- public API: local media --------------------------------------------------------------

  /** Mutes or unmutes the microphone (the server stops forwarding at once). @param {boolean} muted */
  async setMicrophoneMuted(muted) {
    return this._setMuted('microphone', muted);
  }

  /** Pauses or resumes the camera. @param {boolean} muted */
  async setCameraMuted(muted) {
    if (!muted && !this._transceivers.has('camera')) return this.enableVideo();
    return this._setMuted('camera', muted);
  }

  /** Switches an audio-only call to video: captures and publishes the camera. */
  async enableVideo() {
    if (!this.capabilities.has('send-video')) {
      throw new GreenroomError('missing_capability', 'you may not send video in this call', { capability: 'send-video' });
    }
    const wasAudioOnly = this.settings.audioOnly;
    if (!this.local.camera.track) {
      this.local.camera.track = await this._capture('camera');
    }
    this.local.camera.muted = false;
    this.local.camera.track.enabled = true;
    this.settings.audioOnly = false;
    await this._publishSources(['camera']);
    this._send({ type: 'set_muted', source: 'camera', muted: false });
    this._localChanged();
    if (wasAudioOnly) this.emit('callSwitchedToVideo', { initiator: this.client.userId });
  }

  /** Starts sharing the screen (getDisplayMedia). */
  async startScreenShare() {
    if (!this.capabilities.has('screenshare')) {
      throw new GreenroomError('missing_capability', 'you may not share your screen in this call', { capability: 'screenshare' });
    }
    if (this.local.screen_share.track) return;
    const stream = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: { ideal: 15 } }, audio: false });
    const track = stream.getVideoTracks()[0];
    track.contentHint = 'detail';
    track.addEventListener('ended', () => this.stopScreenShare().catch((e) => this._emitError(e)));
    this.local.screen_share.track = track;
    this.local.screen_share.muted = false;
    try {
      await this._publishSources(['screen_share']);
    } catch (e) {
      track.stop();
      this.local.screen_share.track = null;
      throw e;
    }
    this._localChanged();
    this.emit('screenShareStarted', { participant: this.localParticipant, local: true });
  }

  /** Stops sharing the screen. */
  async stopScreenShare() {
    const track = this.local.screen_share.track;
    if (!track) return;
    this.local.screen_share.track = null;
    track.stop();
    const tr = this._transceivers.get('screen_share');
    if (tr) {
      await tr.sender.replaceTrack(null).catch(() => {});
      tr.direction = 'inactive';
      this._send({ type: 'unpublish', source: 'screen_share' });
    }
    this._localChanged();
    this.emit('screenShareStopped', { participant: this.localParticipant, local: true });
  }

  /**
   * Publishes one source now (microphone or camera), capturing it if needed.
   * @param {'microphone'|'camera'} source
   */
  async publish(source) {
    if (source === 'camera') return this.enableVideo();
    if (!this.local.microphone.track) this.local.microphone.track = await this._capture('microphone');
    this.local.microphone.track.enabled = !this.local.microphone.muted;
    await this._publishSources(['microphone']);
    this._localChanged();
  }

  /**
   * Stops publishing a source and releases its device.
   * @param {TrackSource} source
   */
  async unpublish(source) {
    if (source === 'screen_share') return this.stopScreenShare();
    const tr = this._transceivers.get(source);
    const st = this.local[source];
    st?.track?.stop();
    if (st) st.track = null;
    if (tr) {
      await tr.sender.replaceTrack(null).catch(() => {});
      tr.direction = 'inactive';
      this._send({ type: 'unpublish', source });
    }
    this._localChanged();
  }

  /**
   * Switches a device while in the call, without renegotiating (replaceTrack; setSinkId for output).
   * @param {'audioInput'|'videoInput'|'audioOutput'} kind
   * @param {string} deviceId
   */
  async switchDevice(kind, deviceId) {
    this.devices[kind] = deviceId;
    if (kind === 'audioOutput') {
      for (const el of this._audioEls.values()) await this._applySink(el);
      return;
    }
    const source = kind === 'audioInput' ? 'microphone' : 'camera';
    const st = this.local[source];
    if (!st.track || st.blocked) return; // used at the next capture
    const next = await this._capture(source);
    next.enabled = !st.muted && !st.stoppedByServer;
    const old = st.track;
    st.track = next;
    const tr = this._transceivers.get(source);
    if (tr && !st.stoppedByServer) await tr.sender.replaceTrack(next);
    old.stop();
    this._updateLocalParticipantTrack(source);
    this._localChanged();
  }

  /** Device lists (labels need a permission granted once). */
  listDevices() {
    return listDevices();
  }

  /** @param {LayoutMode} mode */
  setLayout(mode) {
    this.layout = mode;
    this.emit('layoutChanged', mode);
  }

  /**
   * Tries to get a blocked or lost device back (may show the browser prompt).
   * @param {'microphone'|'camera'} source
   */
  async retryDevice(source) {
    return this._restore(source, true);
  }

  // ---- public API: permissions and moderation -----------------------------------------------

  /** @param {string} capability */
  hasCapability(capability) {
    return this.capabilities.has(capability);
  }

  /** @param {string} capability Whether the user may ask for it. */
  canRequest(capability) {
    return this.requestable.has(capability) && !this.capabilities.has(capability);
  }

  /**
   * Asks the hosts for capabilities (e.g. raise a hand: `['send-audio']`). When granted, the
   * matching source is published at once (`autoPublish`).
   * @param {string[]} permissions
   * @param {{autoPublish?: boolean}} [opts]
   */
  async requestPermission(permissions, { autoPublish = true } = {}) {
    await this._request({ type: 'request_permission', permissions }, false);
    for (const p of permissions) {
      this.pendingRequests.add(p);
      if (autoPublish) this._wantAutoPublish.add(p);
    }
    this.emit('permissionsUpdated', { capabilities: [...this.capabilities], granted: [], revoked: [] });
  }

  /** Withdraws one's own pending requests locally (lower the hand). */
  cancelPermissionRequest() {
    this.pendingRequests.clear();
    this._wantAutoPublish.clear();
    this.emit('permissionsUpdated', { capabilities: [...this.capabilities], granted: [], revoked: [] });
  }

  /** @param {string} userId @param {string[]} permissions (needs `update-call-permissions`) */
  grantPermissions(userId, permissions) {
    return this._post('user_permissions', { user_id: userId, grant_permissions: permissions, revoke_permissions: [] });
  }

  /** @param {string} userId @param {string[]} permissions (needs `update-call-permissions`) */
  revokePermissions(userId, permissions) {
    return this._post('user_permissions', { user_id: userId, grant_permissions: [], revoke_permissions: permissions });
  }

  /**
   * Mutes other users (needs `mute-users`).
   * @param {string[]} userIds
   * @param {{audio?: boolean, video?: boolean, screenshare?: boolean}} [kinds]
   */
  muteUsers(userIds, kinds = { audio: true }) {
    return this._post('mute_users', { user_ids: userIds, mute_all_users: false, audio: !!kinds.audio, video: !!kinds.video, screenshare: !!kinds.screenshare });
  }

  /** Mutes everyone's microphone (needs `mute-users`). */
  muteAll() {
    return this._post('mute_users', { user_ids: [], mute_all_users: true, audio: true, video: false, screenshare: false });
  }

  /** @param {string} userId */
  kick(userId) {
    return this._post('kick', { user_id: userId });
  }

  /** @param {string} userId */
  block(userId) {
    return this._post('block', { user_id: userId });
  }

  goLive() {
    return this._post('go_live');
  }

  stopLive() {
    return this._post('stop_live');
  }

  /** Ends the call for everyone (needs `end-call`). */
  endCall() {
    return this._post('end');
  }

  // ---- public API: reactions and custom events ----------------------------------------------

  /**
   * Sends a reaction to everyone (needs `create-reaction`); everyone, you included, gets the
   * `reaction` event. At most 20 reactions and custom events per 10 s (`rate_limited`).
   * @param {string} type  e.g. `like`, `raised-hand` (1-32 characters)
   * @param {{emojiCode?: string, custom?: Record<string, any>}} [opts]  `emojiCode` e.g. `:heart:`; `custom` at most 1 KiB.
   * @returns {Promise<void>}
   */
  async sendReaction(type, { emojiCode, custom } = {}) {
    if (!this.capabilities.has('create-reaction')) {
      throw new GreenroomError('missing_capability', 'you may not send reactions in this call', { capability: 'create-reaction' });
    }
    await this._request({ type: 'send_reaction', reaction: { type, ...(emojiCode ? { emoji_code: emojiCode } : {}), ...(custom ? { custom } : {}) } }, false);
  }

  /**
   * Sends an app-defined event to everyone; everyone, you included, gets `customEvent`.
   * @param {Record<string, any>} custom  A JSON object of at most 5 KiB.
   * @returns {Promise<void>}
   */
  async sendEvent(custom) {
    await this._request({ type: 'send_event', custom }, false);
  }

  // ---- public API: inspection ---------------------------------------------------------------

  /** Participants, local first, then by join time. @returns {Participant[]} */
  participantList() {
    return [...this.participants.values()].sort((a, b) => (Number(b.isLocal) - Number(a.isLocal)) || (a.joinedAtMs - b.joinedAtMs));
  }

  /**
   * Receive statistics per remote track (inbound-rtp), with who sends it.
   * @returns {Promise<Array<{mid: string, kind: string, participantId: string|null, userId: string|null, source: string|null, bytesReceived: number, packetsReceived: number, framesDecoded?: number}>>}
   */
  async stats() {
    if (!this._sub) return [];
    const byMid = new Map(this.remoteTracks.map((t) => [String(t.mid), t]));
    const out = [];
    (await this._sub.getStats()).forEach((s) => {
      if (s.type !== 'inbound-rtp') return;
      /** @type {Partial<SubscribedTrack>} */
      const info = byMid.get(String(s.mid)) ?? {};
      out.push({
        mid: s.mid ?? null,
        kind: s.kind,
        participantId: info.participant_id ?? null,
        userId: info.user_id ?? null,
        source: info.source ?? null,
        bytesReceived: s.bytesReceived ?? 0,
        packetsReceived: s.packetsReceived ?? 0,
        framesDecoded: s.kind === 'video' ? (s.framesDecoded ?? 0) : undefined,
      });
    });
    return out;
  }

  /** Send statistics per published source (outbound-rtp). */
  async sendStats() {
    if (!this._pub) return [];
    const sourceByMid = new Map([...this._transceivers].map(([s, tr]) => [String(tr.mid), s]));
    const out = [];
    (await this._pub.getStats()).forEach((s) => {
      if (s.type === 'outbound-rtp') out.push({ mid: s.mid, source: sourceByMid.get(String(s.mid)) ?? null, bytesSent: s.bytesSent ?? 0, packetsSent: s.packetsSent ?? 0 });
    });
    return out;
  }

  // ---- signaling ----------------------------------------------------------------------------

  _openSocket() {
    return new Promise((resolve, reject) => {
      let ws;
      try {
        ws = new WebSocket(`${this.client.signalUrl}?token=${encodeURIComponent(this.client.token)}`);
      } catch (e) {
        reject(new GreenroomError('connection_failed', `cannot open ${this.client.signalUrl}: ${e.message}`));
        return;
      }
      this._ws = ws;
      let opened = false;
      ws.addEventListener('open', () => {
        opened = true;
        this._setConnection('signal', 'connected');
        clearInterval(this._pingTimer);
        this._pingTimer = setInterval(() => this._ping(ws), PING_INTERVAL_MS);
        resolve();
      });
      ws.addEventListener('close', (ev) => {
        // A socket this call already let go of (closed, or replaced by a reconnect).
        if (ws !== this._ws) return;
        clearInterval(this._pingTimer);
        this._setConnection('signal', 'closed');
        const err = new GreenroomError(
          opened ? 'connection_closed' : 'connection_failed',
          opened
            ? `the connection to the server closed (code ${ev.code}${ev.reason ? ': ' + ev.reason : ''})`
            : 'could not reach the server, or the token was refused (expired or for another call?)',
        );
        this._requests.rejectAll(err);
        if (!opened) reject(err);
        else if (this.state === 'joined') this._socketLost();
      });
      ws.addEventListener('message', (ev) => {
        let msg;
        try {
          msg = JSON.parse(ev.data);
        } catch {
          return;
        }
        this._onMessage(msg);
      });
    });
  }

  /**
   * Pings a joined socket; no pong in time means the socket is dead even if the browser has not
   * noticed yet (a network change): it is dropped and the session resumed on a new one.
   * @param {WebSocket} ws
   */
  _ping(ws) {
    if (ws !== this._ws || this.state !== 'joined') return;
    const { requestId, promise } = this._requests.open('ping', PONG_TIMEOUT_MS);
    promise.catch(() => {
      if (ws !== this._ws || this.state !== 'joined') return;
      this._closeSocket();
      this._setConnection('signal', 'closed');
      this._requests.rejectAll(new GreenroomError('connection_closed', 'the server stopped answering'));
      this._socketLost();
    });
    if (!this._send({ type: 'ping', request_id: requestId })) this._requests.settle(requestId, null, new GreenroomError('connection_closed', 'not connected'));
  }

  /** The joined session's socket dropped: get the session back on a new one. */
  _socketLost() {
    if (this._reconnecting || this.state !== 'joined') return;
    this._reconnect().catch((e) => this._emitError(e));
  }

  /**
   * Reconnects with backoff until `reconnectTimeoutMs` (the server's grace period): a fresh
   * token when a `tokenProvider` is set, a new socket, `resume` with the last resume token. A
   * `resume_failed` answer joins afresh (a new participant id). Past the bound: `failed`, and
   * the call is left with reason `disconnected`.
   */
  async _reconnect() {
    this._reconnecting = true;
    const deadline = Date.now() + this.reconnectTimeoutMs;
    let attempt = 0;
    try {
      while (this.state === 'joined') {
        attempt += 1;
        this._setSessionState('reconnecting', attempt);
        const delay = backoffMs(attempt);
        if (!attemptFits(Date.now(), deadline, delay)) break;
        await new Promise((r) => setTimeout(r, delay));
        if (this.state !== 'joined') return;
        if (this.client.tokenProvider) await this.client.refreshToken().catch(() => {});
        this._setConnection('signal', 'connecting');
        try {
          await this._openSocket();
        } catch {
          continue;
        }
        if (this.state !== 'joined') return;
        try {
          const resumed = await this._request({ type: 'resume', resume_token: this._resumeToken });
          this._onResumed(resumed);
        } catch (e) {
          if (this.state !== 'joined') return;
          if (!(e instanceof GreenroomError && e.code === 'resume_failed')) {
            this._closeSocket();
            continue;
          }
          try {
            await this._rejoin();
          } catch (e2) {
            // Joining afresh failed for good (blocked, call ended, ...): the call is over.
            this._emitError(e2);
            break;
          }
        }
        this._reconnecting = false;
        this._setSessionState('connected', attempt);
        this._afterReconnect();
        return;
      }
    } finally {
      this._reconnecting = false;
    }
    if (this.state === 'joined') {
      this._setSessionState('failed', attempt);
      this._teardown('disconnected');
    }
  }

  /** @param {'connected'|'reconnecting'|'failed'} state @param {number} attempt */
  _setSessionState(state, attempt) {
    this.connectionState = state;
    this.emit('connectionStateChanged', { state, attempt });
  }

  /** @param {any} msg  The `resumed` reply: rebuilds the call from its snapshot. */
  _onResumed(msg) {
    this._resumeToken = msg.resume_token ?? null;
    if (msg.ice_servers) this._iceServers = msg.ice_servers;
    const me = this.localParticipant?.participantId;
    const now = new Set((msg.call?.participants ?? []).map((p) => p.participant_id));
    const before = new Set(this.participants.keys());
    // Leaves missed while disconnected (the reason is not known any more).
    for (const [pid, p] of [...this.participants]) {
      if (pid === me || now.has(pid)) continue;
      this.participants.delete(pid);
      this._removeAudio(pid);
      this.emit('participantLeft', { participant: p, reason: 'unknown' });
    }
    this._applyCallState(msg.call);
    this.requestable = new Set(msg.requestable ?? []);
    this._setCapabilities(msg.own_capabilities ?? []);
    for (const pid of now) {
      if (!before.has(pid) && pid !== me) this.emit('participantJoined', this.participants.get(pid));
    }
    this._rebuildRemoteTracks();
    this._participantsChanged();
  }

  /** A resume failed: joins afresh with new PeerConnections and publishes the same sources. */
  async _rejoin() {
    for (const d of this._watchdogs.splice(0)) d.stop();
    this._pub?.close();
    this._sub?.close();
    this._transceivers.clear();
    this.remoteTracks = [];
    for (const pid of [...this._audioEls.keys()]) this._removeAudio(pid);
    this.participants.clear();
    this.localParticipant = null;
    const joined = await this._request(this._joinMsg);
    this._onJoined(joined);
    this._setupPeerConnections();
    this._publishInitial().catch((e) => this._emitError(e));
  }

  /** After a resume: restarts ICE where it was asked for meanwhile or where media is down. */
  _afterReconnect() {
    const want = new Set(this._iceRestartPending);
    this._iceRestartPending.clear();
    for (const [which, pc] of /** @type {Array<['publisher'|'subscriber', RTCPeerConnection|null]>} */ ([['publisher', this._pub], ['subscriber', this._sub]])) {
      if (pc && (pc.connectionState === 'failed' || pc.connectionState === 'disconnected')) want.add(which);
    }
    for (const which of want) this._restartIce(which);
  }

  /**
   * Restarts ICE on both PeerConnections (after a network change): the publisher re-offers with
   * new credentials, the subscriber asks the server for an offer that restarts ICE. Tracks and
   * forwarding are kept. The SDK does this by itself when a connection fails or stays
   * disconnected; call it when you know the network changed.
   */
  restartIce() {
    this._restartIce('publisher');
    this._restartIce('subscriber');
  }

  /** @param {'publisher'|'subscriber'} which */
  _restartIce(which) {
    if (this.state !== 'joined') return;
    if (this._reconnecting || this._ws?.readyState !== WebSocket.OPEN) {
      this._iceRestartPending.add(which);
      return;
    }
    if (which === 'publisher') {
      // Nothing was ever negotiated: there is no publisher connection to restart.
      if (!this._pub || !this._pub.localDescription) return;
      this.emit('iceRestart', { target: which });
      const pc = this._pub;
      this._negotiation = this._negotiation
        .catch(() => {})
        .then(async () => {
          pc.restartIce();
          await this._negotiatePublisher();
        });
      this._negotiation.catch((e) => this._emitError(e));
    } else {
      if (!this._sub || !this._sub.remoteDescription) return;
      this.emit('iceRestart', { target: which });
      this._send({ type: 'restart_ice' });
    }
  }

  _closeSocket() {
    clearInterval(this._pingTimer);
    try {
      this._ws?.close(1000, 'bye');
    } catch {
      /* closed */
    }
    this._ws = null;
  }

  _send(msg) {
    if (this._ws?.readyState !== WebSocket.OPEN) return false;
    this._ws.send(JSON.stringify(msg));
    return true;
  }

  /**
   * Sends a message with a fresh `request_id` and waits for the server's reply carrying it
   * (protocol 2), or the `error` carrying it. Messages without a direct reply (`set_muted`,
   * `request_permission`, ...) are followed by a `ping`: the server handles messages in order, so
   * once that `pong` arrives without an error for the request, it succeeded.
   * @param {any} msg
   * @param {boolean} [hasReply=true]  Whether the server answers this message directly.
   * @returns {Promise<any>}
   */
  _request(msg, hasReply = true) {
    const { requestId, promise } = this._requests.open(msg.type, REPLY_TIMEOUT_MS);
    if (!this._send({ ...msg, request_id: requestId })) {
      this._requests.settle(requestId, null, new GreenroomError('connection_closed', `not connected: cannot send ${msg.type}`, { request: msg.type }));
      return promise;
    }
    if (!hasReply) {
      const ping = this._requests.open('ping', REPLY_TIMEOUT_MS);
      ping.promise.then(
        () => this._requests.settle(requestId, null),
        (e) => this._requests.settle(requestId, null, e),
      );
      this._send({ type: 'ping', request_id: ping.requestId });
    }
    return promise;
  }

  async _post(action, body) {
    const res = await this.client.api('POST', `${callPath(this.cid)}/${action}`, body ?? {});
    if (res?.call) this._applyCallState(res.call);
    if (res?.own_capabilities) this._setCapabilities(res.own_capabilities);
    return res;
  }

  /** @param {any} msg  A parsed server message (checked by `type` in `_dispatch`). */
  _onMessage(msg) {
    // This socket is also a ringing device of the user (docs/PROTOCOL.md section 6): ringing
    // replies and events about other calls are not this call's business.
    if (msg.type === 'ring.ok' || (msg.type === 'error' && msg.request?.startsWith('ring_'))) return;
    if (msg.call_cid && msg.call_cid !== this.cid && msg.type?.startsWith('call.')) return;
    if (msg.type === 'error') {
      const err = new GreenroomError(msg.code, msg.message, { capability: msg.capability, request: msg.request, requestId: msg.request_id });
      if (!this._requests.settle(msg.request_id, null, err)) this._emitError(err);
      return;
    }
    this._requests.settle(msg.request_id, msg);
    try {
      this._dispatch(msg);
    } catch (e) {
      this._emitError(e);
    }
  }

  /** @param {ServerMessage} msg */
  _dispatch(msg) {
    switch (msg.type) {
      case 'subscriber_offer':
        this._subQueue = this._subQueue.then(() => this._answerSubscriber(msg)).catch((e) => this._emitError(e));
        break;
      case 'stop_publishing':
        this._onStopPublishing(msg.sources ?? [], msg.reason);
        break;
      case 'left':
        // A `left` for an older session of this socket (left and joined again) is stale.
        if (msg.participant_id && msg.participant_id !== this.localParticipant?.participantId) break;
        if (this.state === 'joined') this._teardown('removed');
        break;
      case 'going_away':
        this._emitError(new GreenroomError('going_away', `the server is restarting; the call closes in ${Math.round(msg.drain_ms / 1000)} s`));
        break;
      case 'call.session_participant_joined': {
        const p = this._upsertParticipant(msg.participant);
        this.emit('participantJoined', p);
        this._participantsChanged();
        break;
      }
      case 'call.session_participant_left': {
        const pid = msg.participant?.participant_id;
        const p = this.participants.get(pid);
        if (pid === this.localParticipant?.participantId) {
          if (msg.reason === 'kicked') this.emit('kicked', {});
          if (msg.reason === 'blocked') this.emit('blocked', {});
          if (msg.reason !== 'left') this._teardown(msg.reason);
          break;
        }
        if (p) {
          this.participants.delete(pid);
          this._removeAudio(pid);
          this.emit('participantLeft', { participant: p, reason: msg.reason });
          this._participantsChanged();
        }
        break;
      }
      case 'call.permission_request':
        this.emit('permissionRequest', { userId: msg.user_id, permissions: msg.permissions ?? [] });
        break;
      case 'call.permissions_updated':
        this._setCapabilities(msg.own_capabilities ?? []);
        break;
      case 'call.live_started':
        this.info.live = true;
        this.info.backstage = false;
        this.emit('liveStarted', {});
        this.emit('callStateChanged', { ...this.info });
        break;
      case 'call.live_stopped':
        this.info.live = false;
        this.info.backstage = this.info.backstageEnabled;
        this.emit('liveStopped', {});
        this.emit('callStateChanged', { ...this.info });
        break;
      case 'call.user_muted': {
        const sources = msg.sources ?? [];
        for (const p of this.participants.values()) {
          if ((msg.muted_user_ids ?? []).includes(p.userId)) for (const s of sources) p.muted.add(s);
        }
        const byModerator = !(msg.muted_user_ids ?? []).every((u) => u === msg.from_user_id);
        this.emit('userMuted', { userIds: msg.muted_user_ids ?? [], by: msg.from_user_id, sources, byModerator });
        this._participantsChanged();
        break;
      }
      case 'call.user_unmuted':
        for (const p of this.participants.values()) {
          if (p.userId === msg.user_id) for (const s of msg.sources ?? []) p.muted.delete(s);
        }
        this.emit('userUnmuted', { userId: msg.user_id, sources: msg.sources ?? [] });
        this._participantsChanged();
        break;
      case 'call.track_published':
      case 'call.track_unpublished': {
        const t = msg.track;
        const p = this.participants.get(t.participant_id);
        const on = msg.type === 'call.track_published';
        if (p) {
          if (on) p.published.add(t.source);
          else {
            p.published.delete(t.source);
            // The receiver may linger until the next subscriber offer: drop it now.
            if (!p.isLocal) delete p.tracks[t.source];
          }
          if (t.muted) p.muted.add(t.source);
          else p.muted.delete(t.source);
          if (t.source === 'screen_share' && !p.isLocal) {
            this.emit(on ? 'screenShareStarted' : 'screenShareStopped', { participant: p, local: false });
          }
          if (t.source === 'camera' && on && !p.isLocal) this.emit('callSwitchedToVideo', { initiator: p.userId });
          if (on && !p.isLocal) this._rebuildRemoteTracks();
          this._participantsChanged();
        }
        break;
      }
      case 'call.reaction': {
        const p = this.participants.get(msg.participant_id) ?? null;
        this.emit('reaction', { participant: p, userId: msg.user_id, reaction: msg.reaction, local: msg.participant_id === this.localParticipant?.participantId });
        break;
      }
      case 'call.custom': {
        const p = this.participants.get(msg.participant_id) ?? null;
        this.emit('customEvent', { participant: p, userId: msg.user_id, custom: msg.custom, local: msg.participant_id === this.localParticipant?.participantId });
        break;
      }
      case 'call.speakers_changed': {
        const speakers = msg.speakers ?? [];
        const levels = new Map(speakers.map((s) => [s.participant_id, s.level]));
        for (const p of this.participants.values()) {
          p.audioLevel = levels.get(p.participantId) ?? 0;
          p.speaking = p.audioLevel >= SPEAKING_LEVEL && !p.muted.has('microphone');
        }
        this.emit('speakersChanged', speakers.map((s) => ({ participantId: s.participant_id, userId: s.user_id, level: s.level })));
        this._participantsChanged();
        break;
      }
      case 'call.ended':
        this.info.ended = true;
        this.emit('callEnded', { endedBy: msg.ended_by });
        this._teardown('call_ended');
        break;
      case 'call.kicked_user':
      case 'call.blocked_user':
        if (msg.user_id === this.client.userId) {
          if (msg.type === 'call.kicked_user') this.emit('kicked', { by: msg.kicked_by });
          else this.emit('blocked', { by: msg.blocked_by });
        }
        break;
      default:
        break;
    }
  }

  /** @param {Extract<ServerMessage, {type: 'joined'}>} msg */
  _onJoined(msg) {
    this.state = 'joined';
    this._applyCallState(msg.call);
    this.requestable = new Set(msg.requestable ?? []);
    this.capabilities = new Set(msg.own_capabilities ?? []);
    this._iceServers = msg.ice_servers ?? [];
    const me = this._upsertParticipant(msg.participant, true);
    this.localParticipant = me;
    this._resumeToken = msg.resume_token ?? null;
    this.emit('joined', { participant: me });
    this._participantsChanged();
  }

  _applyCallState(call) {
    if (!call) return;
    const wasLive = this.info.live;
    this.info = {
      live: !!call.live,
      backstage: !!call.backstage,
      backstageEnabled: !!call.backstage_enabled,
      ended: !!call.ended,
      createdBy: call.created_by ?? '',
    };
    for (const p of call.participants ?? []) this._upsertParticipant(p, p.participant_id === this.localParticipant?.participantId);
    if (this.state === 'joined' && wasLive !== this.info.live) this.emit(this.info.live ? 'liveStarted' : 'liveStopped', {});
    this.emit('callStateChanged', { ...this.info });
  }

  _upsertParticipant(info, isLocal = false) {
    let p = this.participants.get(info.participant_id);
    if (!p) {
      p = {
        participantId: info.participant_id,
        userId: info.user_id,
        role: info.role,
        name: info.name ?? null,
        custom: info.custom ?? null,
        isLocal,
        joinedAtMs: info.joined_at_ms ?? Date.now(),
        published: new Set(),
        muted: new Set(),
        tracks: {},
        audioLevel: 0,
        speaking: false,
      };
      this.participants.set(p.participantId, p);
    }
    p.role = info.role ?? p.role;
    p.name = info.name ?? p.name;
    p.custom = info.custom ?? p.custom;
    p.isLocal = p.isLocal || isLocal;
    p.published = new Set(info.published ?? []);
    p.muted = new Set(info.muted ?? []);
    if (p.isLocal) for (const s of ['microphone', 'camera', 'screen_share']) this._updateLocalParticipantTrack(s, p);
    return p;
  }

  _setCapabilities(list) {
    const before = this.capabilities;
    const now = new Set(list);
    const granted = [...now].filter((c) => !before.has(c));
    const revoked = [...before].filter((c) => !now.has(c));
    this.capabilities = now;
    if (granted.length === 0 && revoked.length === 0 && this.pendingRequests.size === 0) return;
    for (const c of [...this.pendingRequests]) {
      this.pendingRequests.delete(c);
      if (now.has(c)) {
        this.emit('permissionRequestAnswered', { capability: c, granted: true });
      } else {
        // An update that leaves a pending capability out is the hosts' answer: denied
        // (a host's deny is a revoke, which changes nothing for a user who never had it).
        this._wantAutoPublish.delete(c);
        this.emit('permissionRequestAnswered', { capability: c, granted: false });
      }
    }
    this.emit('permissionsUpdated', { capabilities: [...now], granted, revoked });
    if (this.state === 'joined') this._onCapabilitiesGranted(granted).catch((e) => this._emitError(e));
  }

  async _onCapabilitiesGranted(granted) {
    for (const cap of granted) {
      const source = cap === 'send-audio' ? 'microphone' : cap === 'send-video' ? 'camera' : null;
      if (!source) continue;
      const st = this.local[source];
      const tr = this._transceivers.get(source);
      if (tr && st.stoppedByServer === 'permission_revoked') {
        // Granted again: resume on the same sender.
        st.stoppedByServer = null;
        if (!st.track && !st.blocked) st.track = await this._capture(source).catch((e) => this._deviceFailed(source, e));
        if (st.track) {
          st.track.enabled = !st.muted;
          await tr.sender.replaceTrack(st.track);
        }
        this._updateLocalParticipantTrack(source);
        this._localChanged();
      } else if (!tr && this._wantAutoPublish.has(cap)) {
        this._wantAutoPublish.delete(cap);
        st.muted = false;
        await this.publish(source);
      }
    }
  }

  _onStopPublishing(sources, reason) {
    for (const source of sources) {
      const st = this.local[source];
      if (!st) continue;
      st.stoppedByServer = reason;
      if (reason === 'muted_by_moderator') {
        st.muted = true;
        if (st.track) st.track.enabled = false;
      } else {
        // Capability revoked: stop sending and release the device until it is granted again.
        const tr = this._transceivers.get(source);
        tr?.sender.replaceTrack(null).catch(() => {});
        st.track?.stop();
        st.track = null;
        if (source === 'screen_share') this.stopScreenShare().catch(() => {});
      }
      this._updateLocalParticipantTrack(source);
    }
    this.emit('stopPublishing', { sources, reason });
    this._localChanged();
  }

  /**
   * Mutes or unmutes one source. Race-safe: the last call wins. The local state changes at once
   * (optimistic); the server applies `set_muted` messages in the order sent, so its state ends as
   * the last call asked. A failed call rolls back to the state before it only when no later call
   * was made meanwhile (a later call's state stands).
   * @param {'microphone'|'camera'} source
   * @param {boolean} muted
   */
  async _setMuted(source, muted) {
    const st = this.local[source];
    if (!muted && st.blocked) {
      throw new GreenroomError('device_blocked', `${source === 'microphone' ? 'Microphone' : 'Camera'} is blocked by the browser`);
    }
    if (!muted && !this.capabilities.has(SOURCE_CAPABILITY[source])) {
      throw new GreenroomError('missing_capability', `you may not send ${source === 'microphone' ? 'audio' : 'video'} in this call`, { capability: SOURCE_CAPABILITY[source] });
    }
    const generation = (this._muteGeneration[source] = (this._muteGeneration[source] ?? 0) + 1);
    if (!muted && !this._transceivers.has(source)) {
      st.muted = false;
      return this.publish(source);
    }
    const before = st.muted;
    st.muted = muted;
    if (!muted) st.stoppedByServer = null;
    if (st.track) st.track.enabled = !muted;
    this._localChanged();
    if (this.state === 'joined') {
      await this._request({ type: 'set_muted', source, muted }, false).catch((e) => {
        if (this._muteGeneration[source] === generation) {
          st.muted = before;
          if (st.track) st.track.enabled = !before;
          this._localChanged();
        }
        throw e;
      });
    }
  }

  // ---- media --------------------------------------------------------------------------------

  /** @returns {RTCConfiguration}  The PeerConnection settings: `joined.ice_servers` and the join's `iceTransportPolicy`. */
  _pcConfig() {
    return { ...PC_CONFIG, iceServers: this._iceServers ?? [], iceTransportPolicy: this._iceTransportPolicy ?? 'all' };
  }

  _setupPeerConnections() {
    const config = this._pcConfig();
    this._pub = new RTCPeerConnection(config);
    this._sub = new RTCPeerConnection(config);
    for (const [label, pc] of /** @type {Array<['publisher'|'subscriber', RTCPeerConnection]>} */ ([['publisher', this._pub], ['subscriber', this._sub]])) {
      const dog = new IceWatchdog(() => this._restartIce(label), { delayMs: ICE_RESTART_DELAY_MS });
      this._watchdogs.push(dog);
      if (label === 'subscriber') this._subDog = dog;
      this._watchConnection(label, pc, dog);
    }
    this._sub.addEventListener('track', () => this._rebuildRemoteTracks());
  }

  /**
   * @param {'publisher'|'subscriber'} label
   * @param {RTCPeerConnection} pc
   * @param {IceWatchdog} dog
   */
  _watchConnection(label, pc, dog) {
    pc.addEventListener('connectionstatechange', () => {
      // A replaced PeerConnection (closed) no longer speaks for the connection.
      if (pc !== this._pub && pc !== this._sub) return;
      this._setConnection(label, pc.connectionState);
      dog.update(pc.connectionState);
    });
  }

  /**
   * The server replaced its subscriber peer (the old one failed: `media_error`): its offer
   * carries another DTLS fingerprint (every server peer has its own certificate) and starts
   * its m-lines afresh, which the old RTCPeerConnection cannot apply ("Differing m-line
   * count", "order of m-lines"). Answer it on a new RTCPeerConnection.
   * @param {string} sdp
   * @returns {RTCPeerConnection}
   */
  _subscriberFor(sdp) {
    const old = this._sub;
    if (!old) return old;
    const before = sdpFingerprint(old.remoteDescription?.sdp);
    const now = sdpFingerprint(sdp);
    if (!before || !now || before === now) return old;
    const pc = new RTCPeerConnection(this._pcConfig());
    this._sub = pc;
    old.close();
    if (this._subDog) this._watchConnection('subscriber', pc, this._subDog);
    pc.addEventListener('track', () => this._rebuildRemoteTracks());
    this.emit('subscriberReplaced', {});
    return pc;
  }

  async _publishInitial() {
    const wants = [];
    const mic = this.local.microphone;
    if (this.capabilities.has('send-audio')) {
      if (!mic.track) mic.track = await this._capture('microphone').catch((e) => this._deviceFailed('microphone', e));
      if (mic.track) wants.push('microphone');
    } else {
      mic.track?.stop();
      mic.track = null;
    }
    const cam = this.local.camera;
    if (this.capabilities.has('send-video') && !this.settings.audioOnly) {
      if (!cam.track) cam.track = await this._capture('camera').catch((e) => this._deviceFailed('camera', e));
      if (cam.track) wants.push('camera');
    } else {
      cam.track?.stop();
      cam.track = null;
    }
    if (mic.track) mic.track.enabled = !mic.muted;
    if (cam.track) cam.track.enabled = !cam.muted;
    this._localChanged();
    if (wants.length) await this._publishSources(wants);
  }

  /** Adds (or re-activates) transceivers for `sources` and renegotiates the publisher. */
  _publishSources(sources) {
    const run = async () => {
      for (const source of sources) {
        const track = this.local[source].track;
        let tr = this._transceivers.get(source);
        if (tr) {
          tr.direction = 'sendonly';
          await tr.sender.replaceTrack(track);
        } else {
          tr = this._pub.addTransceiver(track ?? kindOf(source), { direction: 'sendonly' });
          this._transceivers.set(source, tr);
        }
        this._updateLocalParticipantTrack(source);
      }
      await this._negotiatePublisher();
    };
    this._negotiation = this._negotiation.catch(() => {}).then(run);
    return this._negotiation;
  }

  async _negotiatePublisher() {
    const pc = this._pub;
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    await gatheringComplete(pc);
    const tracks = [...this._transceivers]
      .filter(([, tr]) => tr.direction === 'sendonly' && tr.mid != null)
      .map(([source, tr]) => ({ mid: String(tr.mid), source }));
    try {
      const answer = await this._request({ type: 'publish', sdp: pc.localDescription.sdp, tracks });
      await pc.setRemoteDescription({ type: 'answer', sdp: answer.sdp });
    } catch (e) {
      await pc.setLocalDescription({ type: 'rollback' }).catch(() => {});
      throw e;
    }
  }

  async _answerSubscriber(msg) {
    if (!this._sub) return;
    const pc = this._subscriberFor(msg.sdp);
    this.remoteTracks = (msg.tracks ?? []).map((t) => ({ ...t, mid: String(t.mid) }));
    await pc.setRemoteDescription({ type: 'offer', sdp: msg.sdp });
    const answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    await gatheringComplete(pc);
    this._send({ type: 'subscriber_answer', sdp: pc.localDescription.sdp });
    this._rebuildRemoteTracks();
  }

  /** Maps the subscriber's receivers to participants, from the latest offer. */
  _rebuildRemoteTracks() {
    if (!this._sub) return;
    const byMid = new Map(this.remoteTracks.map((t) => [t.mid, t]));
    const seen = new Map();
    for (const tr of this._sub.getTransceivers()) {
      const info = byMid.get(String(tr.mid));
      if (!info || tr.currentDirection === 'inactive' || tr.currentDirection === 'stopped') continue;
      seen.set(`${info.participant_id}|${info.source}`, tr.receiver.track);
    }
    for (const p of this.participants.values()) {
      if (p.isLocal) continue;
      const next = {};
      for (const [key, track] of seen) {
        const [pid, source] = key.split('|');
        if (pid === p.participantId && p.published.has(source)) next[source] = track;
      }
      p.tracks = next;
      const audio = next.microphone;
      if (audio) this._playAudio(p.participantId, audio);
      else this._removeAudio(p.participantId);
    }
    this._participantsChanged();
  }

  _playAudio(pid, track) {
    let el = this._audioEls.get(pid);
    if (!el) {
      el = document.createElement('audio');
      el.autoplay = true;
      el.dataset.participantId = pid;
      el.style.display = 'none';
      document.body.append(el);
      this._audioEls.set(pid, el);
      this._applySink(el);
    }
    if (el.srcObject?.getTracks?.()[0] !== track) {
      el.srcObject = new MediaStream([track]);
      el.play().catch(() => this.emit('autoplayBlocked', {}));
    }
  }

  /** Resumes audio playback after a user gesture (when `autoplayBlocked` fired). */
  resumeAudio() {
    for (const el of this._audioEls.values()) el.play().catch(() => {});
  }

  async _applySink(el) {
    if (this.devices.audioOutput && typeof el.setSinkId === 'function') {
      await el.setSinkId(this.devices.audioOutput).catch((e) => this._emitError(e));
    }
  }

  _removeAudio(pid) {
    const el = this._audioEls.get(pid);
    if (el) {
      el.srcObject = null;
      el.remove();
      this._audioEls.delete(pid);
    }
  }

  // ---- local devices and their permissions --------------------------------------------------

  async _capture(source) {
    const kind = source === 'microphone' ? 'audio' : 'video';
    const track = await captureTrack(kind, kind === 'audio' ? this.devices.audioInput : this.devices.videoInput);
    this._watchTrack(source, track);
    return track;
  }

  _deviceFailed(source, e) {
    const state = classifyMediaError(e);
    this._block(source, state === 'denied' ? 'denied' : state);
    return null;
  }

  _watchTrack(source, track) {
    track.addEventListener('ended', () => {
      if (this.local[source].track !== track || this.state !== 'joined') return;
      // Ended by the browser: permission revoked or device unplugged.
      queryPermission(source).then((perm) => {
        if (this.local[source].track !== track) return;
        if (perm === 'denied' || perm === 'prompt') this._block(source, 'denied');
        else this._restore(source, false, true).catch(() => this._block(source, 'ended'));
      });
    });
  }

  async _watchLocalDevices() {
    for (const t of /** @type {const} */ (['microphone', 'camera'])) {
      if (this.local[t].track) this._watchTrack(t, this.local[t].track);
      const stop = await watchPermission(t, (state) => {
        this.emit('devicePermissionChanged', { source: t, state });
        if (state === 'denied') this._block(t, 'denied');
        else if (state === 'granted' && this.local[t].blocked) this._restore(t, false).catch(() => {});
      });
      this._cleanups.push(stop);
    }
    this._cleanups.push(watchDevices((lists) => this.emit('devicesChanged', lists)));
  }

  /** The browser took a device away: stop sending it at once and tell the server (others see it muted). */
  _block(source, reason) {
    const st = this.local[source];
    if (this.state !== 'joined' || st.blocked) {
      st.blocked = reason;
      return;
    }
    st.blocked = reason;
    const tr = this._transceivers.get(source);
    tr?.sender.replaceTrack(null).catch(() => {});
    st.track?.stop();
    st.track = null;
    // Others see the user muted; remembered so that the restore unmutes only what the block muted.
    st.mutedByBlock = !st.muted && !!tr;
    if (st.mutedByBlock) this._send({ type: 'set_muted', source, muted: true });
    this._updateLocalParticipantTrack(source);
    this.emit('deviceBlocked', { source, reason });
    this._localChanged();
  }

  /** Reacquires a device and resumes it on the same sender (same session). */
  async _restore(source, userAsked, force = false) {
    const st = this.local[source];
    if (!st.blocked && !force) return;
    if (this._restoring?.[source]) return this._restoring[source];
    this._restoring = this._restoring ?? {};
    const run = (async () => {
      const tr = this._transceivers.get(source);
      const wanted = tr || userAsked;
      if (!wanted) {
        st.blocked = null;
        this.emit('deviceRestored', { source });
        this._localChanged();
        return;
      }
      const track = await this._capture(source);
      const old = st.track;
      st.track = track;
      old?.stop();
      st.blocked = null;
      if (tr) {
        track.enabled = !st.muted || st.mutedByBlock;
        if (!st.stoppedByServer) await tr.sender.replaceTrack(track);
        if (st.mutedByBlock) {
          st.mutedByBlock = false;
          st.muted = false;
          this._send({ type: 'set_muted', source, muted: false });
        }
      } else if (userAsked && this.capabilities.has(SOURCE_CAPABILITY[source])) {
        track.enabled = !st.muted;
        if (source === 'camera' && !this.settings.audioOnly) await this._publishSources(['camera']);
      }
      this._updateLocalParticipantTrack(source);
      this.emit('deviceRestored', { source });
      this._localChanged();
    })();
    this._restoring[source] = run;
    try {
      await run;
    } catch (e) {
      const state = classifyMediaError(e);
      st.blocked = state === 'denied' ? 'denied' : state;
      this._localChanged();
      throw e;
    } finally {
      this._restoring[source] = null;
    }
  }

  _updateLocalParticipantTrack(source, p = this.localParticipant) {
    if (!p) return;
    const t = this.local[source]?.track;
    if (t && t.readyState === 'live') p.tracks[source] = t;
    else delete p.tracks[source];
  }

  _localChanged() {
    this.emit('localChanged', this.localState());
    this._participantsChanged();
  }

  /** A snapshot of the local media state. */
  localState() {
    const view = (s) => ({
      on: !!this.local[s].track && !this.local[s].muted && !this.local[s].blocked && !this.local[s].stoppedByServer,
      muted: this.local[s].muted,
      blocked: this.local[s].blocked,
      stoppedByServer: this.local[s].stoppedByServer,
      published: this._transceivers.has(s) && this._transceivers.get(s).direction === 'sendonly',
    });
    return { microphone: view('microphone'), camera: view('camera'), screenShare: view('screen_share'), audioOnly: this.settings.audioOnly };
  }

  _stopLocalTracks() {
    for (const s of Object.keys(this.local)) {
      this.local[s].track?.stop();
      this.local[s].track = null;
    }
  }

  // ---- lifecycle ----------------------------------------------------------------------------

  _participantsChanged() {
    this.emit('participantsChanged', this.participantList());
  }

  _setConnection(which, state) {
    this.connection[which] = state;
    const c = this.connection;
    let overall = 'connected';
    if (c.signal !== 'connected') overall = c.signal === 'connecting' ? 'connecting' : 'disconnected';
    else if ([c.publisher, c.subscriber].includes('failed')) overall = 'media-failed';
    else if ([c.publisher, c.subscriber].some((s) => s === 'connecting' || s === 'disconnected')) overall = 'connecting-media';
    c.overall = overall;
    this.emit('connectionState', { ...c });
  }

  _emitError(e) {
    const err = e instanceof Error ? e : new Error(String(e));
    console.warn('[greenroom]', /** @type {any} */ (err).code ?? err.name, err.message);
    this.emit('error', err);
  }

  _teardown(reason) {
    if (this.state === 'left' || this.state === 'ended') return;
    this.state = reason === 'call_ended' ? 'ended' : 'left';
    for (const c of this._cleanups.splice(0)) {
      try {
        c();
      } catch {
        /* ignore */
      }
    }
    this._stopLocalTracks();
    for (const d of this._watchdogs.splice(0)) d.stop();
    for (const pid of [...this._audioEls.keys()]) this._removeAudio(pid);
    this._pub?.close();
    this._sub?.close();
    this._closeSocket();
    this._requests.rejectAll(new GreenroomError('left', 'the call is over'));
    this.emit('left', { reason });
  }
}
