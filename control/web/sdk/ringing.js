// @ts-check
// Greenroom browser SDK: ringing. A user-level connection (the /v1/signal socket without a
// `join`) that rings this device for incoming calls and places, answers, rejects, cancels and
// ends calls. After an accept both sides join the media call `callCid` with `client.call(cid)`.
// Protocol: docs/PROTOCOL.md section 6.

import { Emitter } from './emitter.js';
import { GreenroomError } from './client.js';
import { PendingRequests } from './requests.js';

const REPLY_TIMEOUT_MS = 15000;
const PING_INTERVAL_MS = 20000;
const RECONNECT_MIN_MS = 500;
const RECONNECT_MAX_MS = 10000;
/** Extra time after `ring_timeout_ms` before this device stops ringing on its own (the server's `call.missed` normally comes first). */
const LOCAL_MISS_GRACE_MS = 3000;

/** @typedef {'audio'|'video'} CallKind */
/** @typedef {'rejected'|'busy'|'declined'} RejectReason */

/**
 * A ringing call as this device knows it.
 * @typedef {object} RingingCall
 * @property {string} callCid         The media call to join after an accept.
 * @property {'incoming'|'outgoing'} direction
 * @property {'ringing'|'active'|'ended'} phase
 * @property {string} callerUserId
 * @property {string[]} calleeUserIds  Everyone rung (a group's members but the caller).
 * @property {string|null} groupId
 * @property {CallKind} kind
 * @property {number} ringTimeoutMs
 * @property {number} receivedAtMs      When this device learned about the call (Date.now()).
 * @property {string|null} sessionId    The ringing's id (history key), when the server said it.
 * @property {string|null} outcome      How it ended, when known: accepted, rejected, busy, declined, cancelled, missed, ended.
 * @property {string[]} acceptedBy      Users who accepted.
 * @property {Array<{userId: string, reason: RejectReason}>} rejectedBy
 */

/**
 * One call in the history (`GET /v1/users/{id}/calls`), in the server's shape.
 * @typedef {object} CallRecord
 * @property {string} session_id
 * @property {string} call_cid
 * @property {string} caller_user_id
 * @property {string[]} callee_user_ids
 * @property {string} [group_id]
 * @property {CallKind} kind
 * @property {'accepted'|'rejected'|'busy'|'declined'|'cancelled'|'missed'} outcome
 * @property {number} started_at_ms
 * @property {number} [answered_at_ms]
 * @property {number} [ended_at_ms]
 * @property {number} [duration_ms]
 * @property {string[]} participants
 */

/** A random id for a fresh call (`default:<id>`) or a device. */
export function randomId(prefix = '') {
  const b = new Uint8Array(8);
  crypto.getRandomValues(b);
  return prefix + [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
}

/**
 * The user-level connection: rings this device and places / answers calls. Open it with
 * `client.connectUser()` (or `new RingClient(client).connect()`); it reconnects by itself until
 * `close()`.
 *
 * Events (`ring.on(name, fn)`), each with `callCid` and the `call` (RingingCall) when known:
 * - `incomingCall` {callCid, callerUserId, kind, members, groupId, ringTimeoutMs, call}: ring now
 * - `callAccepted` {callCid, userId, deviceId, call}: someone accepted (to the caller and those in the call)
 * - `callRejected` {callCid, userId, reason, call}: a callee rejected (or was busy)
 * - `callCancelled` {callCid, by, call}: the caller gave up; stop ringing
 * - `callMissed` {callCid, call}: nobody answered in time (or this user did not); stop ringing
 * - `callEnded` {callCid, endedBy, call}: the call is over
 * - `stopRinging` {callCid, call}: another device of this user answered or rejected
 * - `videoRequested` {callCid, requestedBy, call}; `switchedToVideo` {callCid, requestedBy, acceptedBy, call}
 * - `ringingChanged` RingingCall[]: the calls ringing on this device changed (incoming and outgoing)
 * - `connectionState` {state}: `connecting`, `connected`, `reconnecting`, `closed`
 * - `error` GreenroomError (not a reply to a request of yours)
 */
export class RingClient extends Emitter {
  /**
   * @param {import('./client.js').GreenroomClient} client
   * @param {{deviceId?: string, reconnect?: boolean}} [opts]  `deviceId`: this device's id
   *   (default: a random one); `reconnect` (default true): reopen the socket when it drops.
   */
  constructor(client, { deviceId, reconnect = true } = {}) {
    super();
    this.client = client;
    this.deviceId = deviceId ?? randomId('web-');
    /** @type {'idle'|'connecting'|'connected'|'reconnecting'|'closed'} */
    this.state = 'idle';
    /** Calls this device knows about, by call cid (ended ones are dropped after their event). @type {Map<string, RingingCall>} */
    this.calls = new Map();
    this._reconnect = reconnect;
    this._ws = null;
    this._requests = new PendingRequests('ring', (code, message, type) => new GreenroomError(code, message, { request: type }));
    this._pingTimer = null;
    this._retryTimer = null;
    this._retryMs = RECONNECT_MIN_MS;
    this._closed = false;
    this._missTimers = new Map();
  }

  // ---- connection ---------------------------------------------------------------------------

  /** Opens the socket; resolves once it is open (rejects if the server refuses it). */
  connect() {
    this._closed = false;
    if (this.state === 'connected') return Promise.resolve(this);
    this._setState(this.state === 'reconnecting' ? 'reconnecting' : 'connecting');
    return new Promise((resolve, reject) => {
      const url = `${this.client.signalUrl}?token=${encodeURIComponent(this.client.token)}&device_id=${encodeURIComponent(this.deviceId)}`;
      let ws;
      try {
        ws = new WebSocket(url);
      } catch (e) {
        reject(new GreenroomError('connection_failed', `cannot open ${this.client.signalUrl}: ${e.message}`));
        return;
      }
      this._ws = ws;
      let opened = false;
      ws.addEventListener('open', () => {
        opened = true;
        this._retryMs = RECONNECT_MIN_MS;
        this._setState('connected');
        clearInterval(this._pingTimer);
        this._pingTimer = setInterval(() => this._send({ type: 'ping' }), PING_INTERVAL_MS);
        resolve(this);
      });
      ws.addEventListener('close', (ev) => {
        if (this._ws !== ws) return;
        clearInterval(this._pingTimer);
        this._ws = null;
        const err = new GreenroomError(
          opened ? 'connection_closed' : 'connection_failed',
          opened ? `the connection to the server closed (code ${ev.code})` : 'could not reach the server, or the token was refused',
        );
        this._requests.rejectAll(err);
        if (!opened) reject(err);
        if (this._closed || !this._reconnect) {
          this._setState('closed');
          return;
        }
        this._setState('reconnecting');
        clearTimeout(this._retryTimer);
        this._retryTimer = setTimeout(() => this.connect().catch(() => {}), this._retryMs);
        this._retryMs = Math.min(this._retryMs * 2, RECONNECT_MAX_MS);
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

  /** Closes the socket for good (no reconnect). Calls ringing here are forgotten. */
  close() {
    this._closed = true;
    clearTimeout(this._retryTimer);
    clearInterval(this._pingTimer);
    for (const t of this._missTimers.values()) clearTimeout(t);
    this._missTimers.clear();
    const ws = this._ws;
    this._ws = null;
    try {
      ws?.close(1000, 'bye');
    } catch {
      /* closed */
    }
    this._requests.rejectAll(new GreenroomError('connection_closed', 'closed'));
    this._setState('closed');
  }

  // ---- calls --------------------------------------------------------------------------------

  /**
   * Calls users or a group. Resolves with the server's RingCallInfo (`session_id`, `call_cid`,
   * `phase`, `ring_timeout_ms`, `busy_user_ids`...). If every callee is busy the call is over
   * at once (`phase` `ended`, `outcome` `busy`).
   * @param {{userIds?: string[], groupId?: string, kind?: CallKind, callCid?: string}} opts
   *   `callCid` defaults to a fresh `default:<random>` (an ended call cannot be rung again).
   */
  async initiateCall({ userIds = [], groupId, kind = 'video', callCid } = {}) {
    const cid = callCid ?? `default:${randomId()}`;
    const msg = { type: 'ring_initiate', call_cid: cid, kind };
    if (groupId) msg.group_id = groupId;
    else msg.user_ids = userIds;
    const reply = await this._request(msg);
    const info = reply.call ?? null;
    const call = this._upsert(cid, {
      direction: 'outgoing',
      phase: info?.phase ?? 'ringing',
      callerUserId: this.client.userId,
      calleeUserIds: info?.callee_user_ids ?? userIds,
      groupId: groupId ?? null,
      kind,
      ringTimeoutMs: info?.ring_timeout_ms ?? 0,
      sessionId: info?.session_id ?? null,
      outcome: info?.outcome ?? null,
    });
    for (const u of info?.busy_user_ids ?? []) call.rejectedBy.push({ userId: u, reason: 'busy' });
    if (call.phase === 'ended') this._forget(cid);
    this._ringingChanged();
    return info ?? { call_cid: cid, phase: 'ended' };
  }

  /** Accepts an incoming call on this device (the first accept wins), then join `callCid`. @param {string} callCid */
  async acceptCall(callCid) {
    const reply = await this._request({ type: 'ring_accept', call_cid: callCid });
    const call = this.calls.get(callCid);
    if (call) {
      call.phase = 'active';
      call.outcome = 'accepted';
      if (!call.acceptedBy.includes(this.client.userId)) call.acceptedBy.push(this.client.userId);
      this._clearMiss(callCid);
    }
    this._ringingChanged();
    return reply.call ?? null;
  }

  /**
   * Rejects an incoming call.
   * @param {string} callCid
   * @param {RejectReason} [reason='rejected']
   */
  async rejectCall(callCid, reason = 'rejected') {
    const reply = await this._request({ type: 'ring_reject', call_cid: callCid, reason });
    this._end(callCid, 'rejected');
    return reply.call ?? null;
  }

  /** Cancels one's outgoing call before anyone accepted. @param {string} callCid */
  async cancelCall(callCid) {
    const reply = await this._request({ type: 'ring_cancel', call_cid: callCid });
    this._end(callCid, 'cancelled');
    return reply.call ?? null;
  }

  /** Ends the call for everyone (while ringing: cancel for the caller, reject for a callee). @param {string} callCid */
  async endCall(callCid) {
    const reply = await this._request({ type: 'ring_end', call_cid: callCid });
    this._end(callCid, 'ended');
    return reply.call ?? null;
  }

  /** Leaves the call (one-to-one: ends it; a group call ends with the last one). @param {string} callCid */
  async leaveCall(callCid) {
    const reply = await this._request({ type: 'ring_leave', call_cid: callCid });
    this._end(callCid, 'ended');
    return reply.call ?? null;
  }

  /** Asks the others to switch this audio call to video. @param {string} callCid */
  async requestVideo(callCid) {
    const reply = await this._request({ type: 'ring_request_video', call_cid: callCid });
    return reply.call ?? null;
  }

  /** Accepts someone's request to switch to video. @param {string} callCid */
  async acceptVideo(callCid) {
    const reply = await this._request({ type: 'ring_accept_video', call_cid: callCid });
    const call = this.calls.get(callCid);
    if (call) call.kind = 'video';
    return reply.call ?? null;
  }

  /** Calls ringing on this device now (incoming and outgoing, not yet answered). @returns {RingingCall[]} */
  ringingCalls() {
    return [...this.calls.values()].filter((c) => c.phase === 'ringing');
  }

  /** Incoming calls ringing on this device now, oldest first. @returns {RingingCall[]} */
  incomingCalls() {
    return this.ringingCalls().filter((c) => c.direction === 'incoming');
  }

  /**
   * This user's call history, newest first (see `GreenroomClient.callHistory`).
   * @param {{limit?: number, cursor?: string}} [opts]
   */
  history(opts = {}) {
    return this.client.callHistory(opts);
  }

  // ---- internals ----------------------------------------------------------------------------

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.emit('connectionState', { state });
  }

  _send(msg) {
    if (this._ws?.readyState !== WebSocket.OPEN) return false;
    this._ws.send(JSON.stringify(msg));
    return true;
  }

  /**
   * Sends a `ring_*` request with a fresh `request_id`; resolves with the `ring.ok` carrying it,
   * rejects with the `error` carrying it (protocol 2).
   * @param {any} msg
   * @returns {Promise<any>}
   */
  _request(msg) {
    const { requestId, promise } = this._requests.open(msg.type, REPLY_TIMEOUT_MS);
    if (!this._send({ ...msg, request_id: requestId })) {
      this._requests.settle(requestId, null, new GreenroomError('connection_closed', `not connected: cannot send ${msg.type}`, { request: msg.type }));
    }
    return promise;
  }

  _onMessage(msg) {
    if (msg.type === 'ring.ok') {
      this._requests.settle(msg.request_id, msg);
      return;
    }
    if (msg.type === 'error') {
      const err = new GreenroomError(msg.code, msg.message, { capability: msg.capability, request: msg.request, requestId: msg.request_id });
      if (!this._requests.settle(msg.request_id, null, err)) this.emit('error', err);
      return;
    }
    try {
      this._dispatch(msg);
    } catch (e) {
      this.emit('error', e);
    }
  }

  _dispatch(msg) {
    const cid = msg.call_cid;
    switch (msg.type) {
      case 'call.ring': {
        const known = this.calls.get(cid);
        if (known && known.phase !== 'ringing') break; // answered here already
        const call = this._upsert(cid, {
          direction: 'incoming',
          phase: 'ringing',
          callerUserId: msg.caller_user_id,
          calleeUserIds: msg.members ?? [],
          groupId: msg.group_id ?? null,
          kind: msg.kind ?? 'audio',
          ringTimeoutMs: msg.ring_timeout_ms ?? 0,
        });
        this._armMiss(cid, call.ringTimeoutMs);
        if (!known) {
          this.emit('incomingCall', { callCid: cid, callerUserId: call.callerUserId, kind: call.kind, members: call.calleeUserIds, groupId: call.groupId, ringTimeoutMs: call.ringTimeoutMs, call });
        }
        this._ringingChanged();
        break;
      }
      case 'call.accepted': {
        const call = this.calls.get(cid);
        if (call) {
          call.phase = 'active';
          call.outcome = 'accepted';
          if (!call.acceptedBy.includes(msg.user_id)) call.acceptedBy.push(msg.user_id);
          this._clearMiss(cid);
        }
        this.emit('callAccepted', { callCid: cid, userId: msg.user_id, deviceId: msg.device_id, call });
        this._ringingChanged();
        break;
      }
      case 'call.rejected': {
        const call = this.calls.get(cid);
        if (call) {
          call.rejectedBy.push({ userId: msg.user_id, reason: msg.reason ?? 'rejected' });
          // One-to-one (or everyone answered no): the call is over for the caller.
          const answered = new Set([...call.rejectedBy.map((r) => r.userId), ...call.acceptedBy]);
          if (call.phase === 'ringing' && call.calleeUserIds.every((u) => answered.has(u))) {
            call.phase = 'ended';
            call.outcome = msg.reason ?? 'rejected';
          }
        }
        this.emit('callRejected', { callCid: cid, userId: msg.user_id, reason: msg.reason ?? 'rejected', call });
        if (call?.phase === 'ended') this._forget(cid);
        this._ringingChanged();
        break;
      }
      case 'call.cancelled':
        this._emitEnd(cid, 'cancelled', 'callCancelled', { by: msg.by });
        break;
      case 'call.missed':
        this._emitEnd(cid, 'missed', 'callMissed', {});
        break;
      case 'call.ended':
        this._emitEnd(cid, this.calls.get(cid)?.outcome ?? 'ended', 'callEnded', { endedBy: msg.ended_by });
        break;
      case 'call.stop_ringing':
        this._emitEnd(cid, 'answered_elsewhere', 'stopRinging', {});
        break;
      case 'call.video_requested':
        this.emit('videoRequested', { callCid: cid, requestedBy: msg.requested_by, call: this.calls.get(cid) ?? null });
        break;
      case 'call.switched_to_video': {
        const call = this.calls.get(cid);
        if (call) call.kind = 'video';
        this.emit('switchedToVideo', { callCid: cid, requestedBy: msg.requested_by, acceptedBy: msg.accepted_by, call: call ?? null });
        break;
      }
      default:
        break;
    }
  }

  _upsert(cid, fields) {
    let call = this.calls.get(cid);
    if (!call) {
      call = {
        callCid: cid,
        direction: 'incoming',
        phase: 'ringing',
        callerUserId: '',
        calleeUserIds: [],
        groupId: null,
        kind: 'audio',
        ringTimeoutMs: 0,
        receivedAtMs: Date.now(),
        sessionId: null,
        outcome: null,
        acceptedBy: [],
        rejectedBy: [],
      };
      this.calls.set(cid, call);
    }
    for (const [k, v] of Object.entries(fields)) if (v !== undefined) call[k] = v;
    return call;
  }

  /** Ends a call locally and emits `event` (once; later events for it carry `call: null`). */
  _emitEnd(cid, outcome, event, extra) {
    const call = this.calls.get(cid) ?? null;
    if (call) {
      call.phase = 'ended';
      if (call.outcome !== 'accepted') call.outcome = outcome;
    }
    this._forget(cid);
    this.emit(event, { callCid: cid, ...extra, call });
    this._ringingChanged();
  }

  _end(cid, outcome) {
    const call = this.calls.get(cid);
    if (call) {
      call.phase = 'ended';
      call.outcome = call.outcome ?? outcome;
    }
    this._forget(cid);
    this._ringingChanged();
  }

  _forget(cid) {
    this._clearMiss(cid);
    this.calls.delete(cid);
  }

  _armMiss(cid, ringTimeoutMs) {
    this._clearMiss(cid);
    if (!ringTimeoutMs) return;
    this._missTimers.set(cid, setTimeout(() => {
      this._missTimers.delete(cid);
      const call = this.calls.get(cid);
      if (call?.phase === 'ringing') this._emitEnd(cid, 'missed', 'callMissed', { local: true });
    }, ringTimeoutMs + LOCAL_MISS_GRACE_MS));
  }

  _clearMiss(cid) {
    clearTimeout(this._missTimers.get(cid));
    this._missTimers.delete(cid);
  }

  _ringingChanged() {
    this.emit('ringingChanged', this.ringingCalls());
  }
}
