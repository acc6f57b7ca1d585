// @ts-check
// The call screen of `<greenroom-call>` (and so of the web app): a head row (people, LIVE /
// Backstage, connection), floating banners, video tiles in a grid or spotlight or the audio
// room's stage and audience, the People panel (permission requests, moderation, devices), the
// reaction bar, the control bar and toasts. `CallUI` renders one joined `Call` into a shadow root;
// it owns no connection and sends only what the user clicks.

import { h, icon, avatar } from './icons.js';
import { listDevices, canSelectAudioOutput, permissionInstructions, browserName } from './devices.js';

/** @typedef {import('./client.js').Call} Call */
/** @typedef {import('./client.js').Participant} Participant */

/**
 * A button of the control bar. `mic`, `camera` (video calls), `screen` (with `screenshare`),
 * `layout` (grid / spotlight), `switch-video` (audio-only calls), `hand` (raise a hand / ask for a
 * capability one may request), `people` (the People panel), `stop-live` (hosts of a live
 * backstage call), `leave`, `end-call` (with `end-call`); `react` shows the reaction bar.
 * @typedef {'mic'|'camera'|'screen'|'react'|'layout'|'switch-video'|'hand'|'people'|'stop-live'|'leave'|'end-call'} CallButton
 */

/** Every button, in bar order. @type {CallButton[]} */
export const CALL_BUTTONS = ['mic', 'camera', 'screen', 'layout', 'switch-video', 'hand', 'people', 'stop-live', 'react', 'leave', 'end-call'];

/**
 * An extra control-bar button the page adds (before Leave), e.g. a ringing app's "End call".
 * @typedef {object} CallAction
 * @property {string} id            `data-action` of the button.
 * @property {string} label
 * @property {string} [icon]        An icon name of `icons.js` (`leave`, `video`, `phone`, ...).
 * @property {string} [testid]      `data-testid` of the button.
 * @property {''|'off'|'active'|'leave'} [kind]  Its look.
 * @property {(call: Call) => boolean} [visible] Shown only while this returns true.
 * @property {(call: Call) => any} onClick
 */

/**
 * A banner over the call.
 * @typedef {object} Banner
 * @property {'info'|'warn'|'bad'} kind
 * @property {string} title
 * @property {string} [text]
 * @property {'microphone'|'camera'} [instructionsFor]  Adds the browser's steps and "Try again" for this device.
 * @property {{label: string, onClick: () => any}} [action]
 * @property {boolean} [persistent]  No dismiss button.
 */

/** The reaction bar's buttons: `type` goes on the wire, `emoji` is what everyone sees. */
export const REACTIONS = [
  { type: 'like', emoji: '\u{1F44D}', label: 'Like' },
  { type: 'heart', emoji: '\u{2764}\u{FE0F}', label: 'Heart' },
  { type: 'laugh', emoji: '\u{1F602}', label: 'Laugh' },
  { type: 'clap', emoji: '\u{1F44F}', label: 'Applause' },
  { type: 'raised-hand', emoji: '\u{270B}', label: 'Raise hand' },
];
/** How long a received reaction stays on screen. */
const REACTION_SHOW_MS = 4000;
const TOAST_MS = 4000;

/** @param {string} s */
export function sourceName(s) {
  return { microphone: 'microphone', camera: 'camera', screen_share: 'screen share', screen_share_audio: 'screen audio' }[s] ?? s;
}

/** @param {string} c */
export function capName(c) {
  return { 'send-audio': 'speak', 'send-video': 'turn on video', screenshare: 'share the screen', 'create-reaction': 'react' }[c] ?? c;
}

/**
 * @param {HTMLSelectElement} sel
 * @param {MediaDeviceInfo[]} devices
 * @param {string|null} current
 * @param {string} fallback
 */
export function fillSelect(sel, devices, current, fallback) {
  sel.replaceChildren(...devices.map((d, i) => h('option', { value: d.deviceId, selected: d.deviceId === current }, d.label || `${fallback} ${i + 1}`)));
  if (devices.length === 0) sel.append(h('option', { value: '' }, `No ${fallback.toLowerCase()} available`));
  sel.disabled = devices.length === 0 || !devices[0].label;
}

/** @param {'microphone'|'camera'|'both'} what */
export function instructionsList(what) {
  const ins = permissionInstructions(what, browserName());
  return h('div', {}, h('span', { class: 'hint' }, `In ${ins.browser}:`), h('ol', {}, ins.steps.map((s) => h('li', {}, s))));
}

/**
 * What the renderer needs from its element.
 * @typedef {object} CallUIHost
 * @property {() => {buttons: CallButton[], layout: string, name: string, heading: string, allowSwitchToVideo: boolean}} settings
 * @property {() => CallAction[]} actions
 * @property {(type: string, detail: any) => void} fire
 */

/** Renders one call into a root (the element's shadow root). */
export class CallUI {
  /**
   * @param {ShadowRoot} root
   * @param {CallUIHost} host
   */
  constructor(root, host) {
    this.host = host;
    const q = (/** @type {string} */ sel) => /** @type {HTMLElement} */ (root.querySelector(sel));
    this.el = {
      head: q('.call-head'),
      banners: q('.banners'),
      stage: q('.stage'),
      panel: q('.panel'),
      requests: q('.requests'),
      people: q('.people'),
      audioIn: /** @type {HTMLSelectElement} */ (q('[data-testid=call-select-microphone]')),
      videoIn: /** @type {HTMLSelectElement} */ (q('[data-testid=call-select-camera]')),
      audioOut: /** @type {HTMLSelectElement} */ (q('[data-testid=call-select-speaker]')),
      reactions: q('.reactions'),
      reactionBar: q('.reaction-bar'),
      controls: q('.controls'),
      toasts: q('.toasts'),
    };
    q('.panel-close').addEventListener('click', () => { this.panelOpen = false; this.render(); });
    /** @type {Call|null} */
    this.call = null;
    this._reset();
  }

  _reset() {
    /** Open permission requests to answer: user id -> capabilities. @type {Map<string, string[]>} */
    this.requests = new Map();
    /** @type {Map<string, Banner>} */
    this.banners = new Map();
    this.panelOpen = false;
    /** @type {string|null} */
    this.activeSpeaker = null;
    /** @type {Map<string, {el: HTMLElement, video: HTMLVideoElement, ph: HTMLElement, name: HTMLElement, track: MediaStreamTrack|null}>} */
    this.tiles = new Map();
    this.el.stage.replaceChildren();
    this.el.reactions.replaceChildren();
    this.el.reactionBar.replaceChildren();
    this.el.controls.replaceChildren();
    this.el.banners.replaceChildren();
    this.el.head.replaceChildren();
  }

  /** Whether the call is an audio room (stage and audience instead of video tiles). */
  get isRoom() {
    return this.call?.type === 'audio_room';
  }

  /**
   * Starts rendering `call` (before or after it joined) and reacts to its events.
   * @param {Call} call
   */
  attach(call) {
    this._reset();
    this.call = call;
    const mine = (/** @type {Function} */ fn) => (/** @type {any} */ d) => { if (this.call === call) fn(d); };
    const rerender = mine(() => this.render());
    call.on('participantsChanged', rerender);
    call.on('localChanged', rerender);
    call.on('layoutChanged', rerender);
    call.on('callStateChanged', rerender);
    call.on('permissionsUpdated', rerender);
    call.on('connectionState', rerender);
    call.on('devicesChanged', mine(() => { if (this.panelOpen) this._renderDevices(); }));
    call.on('participantJoined', mine((p) => this.toast(`${p.name ?? p.userId} joined`)));
    call.on('participantLeft', mine(({ participant, reason }) => this.toast(`${participant.name ?? participant.userId} ${reason === 'disconnected' ? 'lost connection' : reason === 'kicked' ? 'was removed' : 'left'}`)));
    call.on('userMuted', mine(({ userIds, by, sources, byModerator }) => {
      if (userIds.includes(call.client.userId) && byModerator && by !== call.client.userId) {
        this.toast(`${by} muted your ${sources.map(sourceName).join(' and ')}`, 'bad');
      }
    }));
    call.on('screenShareStarted', mine(({ participant, local }) => this.toast(local ? 'You are sharing your screen' : `${participant.name ?? participant.userId} is sharing their screen`)));
    call.on('screenShareStopped', mine(({ participant, local }) => this.toast(local ? 'You stopped sharing' : `${participant.name ?? participant.userId} stopped sharing`)));
    call.on('callSwitchedToVideo', mine(({ initiator }) => { if (initiator !== call.client.userId) this.toast(`${initiator} turned on video`); }));
    call.on('speakersChanged', mine((speakers) => { this.activeSpeaker = speakers[0]?.participantId ?? this.activeSpeaker; }));
    call.on('permissionRequest', mine(({ userId, permissions }) => {
      if (!call.hasCapability('update-call-permissions')) return;
      this.requests.set(userId, permissions);
      this.toast(`${userId} raised a hand: asks to ${permissions.map(capName).join(', ')}`);
      this.panelOpen = true;
      this.render();
    }));
    call.on('permissionRequestAnswered', mine(({ capability, granted }) => {
      this.toast(granted ? `You can ${capName(capability)} now` : `A host declined your request to ${capName(capability)}`, granted ? '' : 'bad');
      this.render();
    }));
    call.on('stopPublishing', mine(({ sources, reason }) => {
      if (reason !== 'permission_revoked') return;
      const text = this.isRoom && sources.includes('microphone') ? 'A host moved you back to the audience.' : `A host took away your permission to share your ${sources.map(sourceName).join(' and ')}.`;
      this.setBanner('revoked', { kind: 'warn', title: 'Permission removed', text });
    }));
    call.on('liveStarted', mine(() => this.toast(this.isRoom ? 'The room is live' : 'The call is live')));
    call.on('liveStopped', mine(() => this.toast('Back to backstage')));
    call.on('deviceBlocked', mine(({ source }) => {
      const mic = source === 'microphone';
      this.setBanner(`${source}-blocked`, {
        kind: 'bad',
        title: mic ? 'Microphone blocked' : 'Camera blocked',
        text: mic ? 'Greenroom lost access to your microphone: others see you muted and cannot hear you. Allow it again and your audio comes back without leaving the call.'
          : 'Greenroom lost access to your camera: others see your name instead of video. Your audio continues. Allow the camera again and your video comes back.',
        instructionsFor: source,
      });
    }));
    call.on('deviceRestored', mine(({ source }) => {
      this.banners.delete(`${source}-blocked`);
      if (source === 'camera') this.banners.delete('audio-only');
      this.toast(source === 'microphone' ? 'Microphone is back: you are live again' : 'Camera is back');
      this.render();
    }));
    call.on('devicePermissionChanged', mine(({ source, state }) => {
      if (source === 'camera' && state === 'granted' && this.banners.has('audio-only') && !call.local.camera.track) {
        this.setBanner('audio-only', { kind: 'info', title: 'Camera allowed', text: 'Press Switch to video to turn your video on.' });
      }
    }));
    call.on('reaction', mine(({ participant, userId, reaction, local }) => this._showReaction(participant, userId, reaction, local)));
    call.on('autoplayBlocked', mine(() => this.setBanner('autoplay', { kind: 'info', title: 'Sound is paused by the browser', text: 'Click anywhere to hear the call.' })));
    call.on('error', mine((e) => this.toast(e.code === 'media_error' ? `Media could not be connected: ${e.message}` : e.message, 'bad')));
    call.on('connectionStateChanged', mine(({ state }) => this.setConnectionState(state)));
  }

  /**
   * Shows the signaling connection's state: a non-blocking "Reconnecting…" banner while
   * `reconnecting`, nothing once `connected`, an error banner on `failed`.
   * @param {'connected'|'reconnecting'|'failed'} state
   */
  setConnectionState(state) {
    this.banners.delete('reconnecting');
    this.banners.delete('connection-failed');
    if (state === 'reconnecting') {
      this.banners.set('reconnecting', { kind: 'warn', title: 'Reconnecting…', text: 'The connection to the call dropped. You stay in the call while Greenroom reconnects.', persistent: true });
    } else if (state === 'failed') {
      this.banners.set('connection-failed', { kind: 'bad', title: 'Connection lost', text: 'Greenroom could not reconnect to the call.', persistent: true });
    }
    this.render();
  }

  /** Stops rendering (after the call is over). */
  detach() {
    this.call = null;
    this._reset();
  }

  /**
   * Shows a short message over the call for a few seconds.
   * @param {string} text
   * @param {''|'bad'} [kind]
   */
  toast(text, kind = '') {
    const el = h('div', { class: `toast ${kind}`, role: 'status', testid: 'toast' }, text);
    const box = this.el.toasts;
    box.append(el);
    while (box.children.length > 3) box.firstElementChild?.remove();
    setTimeout(() => el.remove(), TOAST_MS);
  }

  /**
   * Shows (or replaces) the banner `key` (`data-testid` = key).
   * @param {string} key
   * @param {Banner} banner
   */
  setBanner(key, banner) {
    this.banners.set(key, banner);
    this.render();
  }

  /** @param {string} key */
  clearBanner(key) {
    if (this.banners.delete(key)) this.render();
  }

  /** @param {any} e */
  _showErr(e) {
    this.host.fire('error', { error: e });
    this.toast(e?.message ?? String(e), 'bad');
  }

  /** The local user's name as shown. */
  _localName() {
    const c = this.call;
    return this.host.settings().name || c?.localParticipant?.name || c?.client.userId || 'You';
  }

  /** @param {Participant} p */
  _displayName(p) {
    return p.isLocal ? `${this._localName()} (you)` : p.name ?? p.userId;
  }

  /** Renders everything from the call's state. */
  render() {
    const call = this.call;
    if (!call || call.state !== 'joined') return;
    this._renderHead(call);
    this._renderBanners(call);
    if (this.isRoom) this._renderRoom(call);
    else this._renderTiles(call);
    this._renderControls(call);
    this._renderReactionBar(call);
    this._renderPanel(call);
  }

  /** @param {Call} call */
  _renderHead(call) {
    const s = this.host.settings();
    const n = call.participants.size;
    const c = call.connection;
    const conn = { connected: 'Connected', connecting: 'Connecting…', 'connecting-media': 'Connecting media…', 'media-failed': 'Media connection failed', disconnected: 'Disconnected', new: 'Starting…' }[c.overall] ?? c.overall;
    this.el.head.replaceChildren(...[
      s.heading ? h('span', { class: 'title', title: s.heading }, s.heading) : null,
      h('span', { class: 'pill count', testid: 'people-count' }, `${n} ${n === 1 ? 'person' : 'people'}`),
      call.info.backstageEnabled
        ? (call.info.live ? h('span', { class: 'pill live', testid: 'live-badge' }, 'LIVE') : h('span', { class: 'pill backstage', testid: 'backstage-badge' }, 'Backstage'))
        : null,
      h('span', { class: 'spacer' }),
      h('span', {
        class: `pill ${c.overall === 'connected' ? 'ok' : c.overall === 'media-failed' || c.overall === 'disconnected' ? 'bad' : ''}`,
        testid: 'connection',
        dataset: { state: c.overall },
      }, conn),
    ].filter((x) => x !== null));
  }

  /** @param {Call} call */
  _renderBanners(call) {
    const out = [];
    if (call.info.backstageEnabled && !call.info.live) {
      const host = call.hasCapability('update-call');
      out.push(h('div', { class: 'banner warn', testid: 'backstage-banner' },
        h('div', {}, h('strong', {}, 'Backstage'), h('div', {}, host ? 'You are backstage: only hosts and moderators are here. Listeners can join once you go live.' : 'The room is not live yet.')),
        host ? h('button', { class: 'btn danger small', testid: 'go-live', onclick: () => call.goLive().catch((e) => this._showErr(e)) }, icon('live'), ' Go live') : null));
    }
    for (const [key, b] of this.banners) {
      const source = b.instructionsFor;
      out.push(h('div', { class: `banner ${b.kind}`, testid: key, role: b.kind === 'bad' ? 'alert' : 'status' },
        h('div', {}, h('strong', {}, b.title), b.text ? h('div', {}, b.text) : null, source ? instructionsList(source) : null),
        h('div', { class: 'person-actions' },
          source ? h('button', { class: 'btn small', onclick: () => call.retryDevice(source).catch((e) => this.toast(`Still blocked: ${e.message}`, 'bad')) }, 'Try again') : null,
          b.action ? h('button', { class: 'btn small primary', testid: `${key}-action`, onclick: () => { this.banners.delete(key); this.render(); b.action?.onClick(); } }, b.action.label) : null,
          b.persistent ? null : h('button', { class: 'icon-btn', 'aria-label': 'Dismiss', onclick: () => this.clearBanner(key) }, '✕'))));
    }
    this.el.banners.replaceChildren(...out);
  }

  /** @param {string} key */
  _tile(key) {
    let t = this.tiles.get(key);
    if (!t) {
      const video = /** @type {HTMLVideoElement} */ (h('video', { autoplay: true, playsinline: true }));
      video.muted = true; // audio plays through the SDK's audio elements
      const ph = h('div', { class: 'placeholder', testid: 'video-off' });
      const name = h('div', { class: 'name' });
      t = { el: h('div', { class: 'tile', part: 'tile' }, video, ph, name), video, ph, name, track: null };
      this.tiles.set(key, t);
    }
    return t;
  }

  /**
   * @param {Call} call
   * @param {{el: HTMLElement, video: HTMLVideoElement, ph: HTMLElement, name: HTMLElement, track: MediaStreamTrack|null}} t
   * @param {Participant} p
   * @param {'cam'|'screen'} kind
   */
  _updateTile(call, t, p, kind) {
    const isScreen = kind === 'screen';
    const track = isScreen ? p.tracks.screen_share : p.tracks.camera;
    const camOff = !track || (!isScreen && (p.muted.has('camera') || (p.isLocal && !call.localState().camera.on)));
    t.el.className = `tile${p.isLocal ? ' local' : ''}${isScreen ? ' screen' : ''}${p.speaking && !isScreen ? ' speaking' : ''}`;
    t.el.dataset.participantId = p.participantId;
    t.el.dataset.userId = p.userId;
    t.el.dataset.kind = kind;
    t.el.dataset.testid = isScreen ? 'screen-tile' : 'tile';
    t.el.dataset.videoOff = String(camOff);
    t.video.className = isScreen ? '' : 'cam';
    if (!camOff && track && t.track !== track) {
      t.track = track;
      t.video.srcObject = new MediaStream([track]);
    } else if (camOff && t.track) {
      t.track = null;
      t.video.srcObject = null;
    }
    t.video.hidden = camOff;
    t.ph.hidden = !camOff;
    if (camOff) {
      const blocked = p.isLocal && call.local.camera.blocked;
      t.ph.replaceChildren(avatar(p.userId, p.isLocal ? this._localName() : p.name ?? p.userId, 'avatar big'), h('span', { class: 'label' }, blocked ? 'Camera blocked' : 'Camera off'));
    }
    const micMuted = !isScreen && (p.muted.has('microphone') || !p.published.has('microphone') || (p.isLocal && !call.localState().microphone.on));
    t.name.replaceChildren(
      ...[micMuted ? h('span', { class: 'badge-muted', testid: 'muted-badge', title: 'Muted' }, icon('micOff')) : null,
        h('span', {}, isScreen ? `${this._displayName(p)}: screen` : this._displayName(p))].filter(Boolean));
  }

  /** @param {Call} call */
  _renderTiles(call) {
    const stage = this.el.stage;
    const spotlight = call.layout === 'spotlight';
    stage.className = `stage tiles${spotlight ? ' spotlight' : ''}`;
    /** @type {{key: string, p: Participant, kind: 'cam'|'screen'}[]} */
    const items = [];
    for (const p of call.participantList()) {
      items.push({ key: `${p.participantId}:cam`, p, kind: 'cam' });
      const sharing = p.isLocal ? !!p.tracks.screen_share : p.published.has('screen_share') && !p.muted.has('screen_share');
      if (sharing) items.push({ key: `${p.participantId}:screen`, p, kind: 'screen' });
    }
    const keep = new Set(items.map((i) => i.key));
    for (const [k] of this.tiles) if (!keep.has(k)) this.tiles.delete(k);
    for (const i of items) this._updateTile(call, this._tile(i.key), i.p, i.kind);
    const el = (/** @type {{key: string}} */ i) => /** @type {HTMLElement} */ (this.tiles.get(i.key)?.el);
    if (spotlight && items.length > 1) {
      const main = items.find((i) => i.kind === 'screen')
        ?? items.find((i) => i.p.participantId === this.activeSpeaker && !i.p.isLocal)
        ?? items.find((i) => !i.p.isLocal) ?? items[0];
      stage.replaceChildren(h('div', { class: 'spot-main' }, el(main)), h('div', { class: 'spot-strip' }, items.filter((i) => i !== main).map(el)));
    } else {
      stage.replaceChildren(...items.map(el));
    }
    for (const t of this.tiles.values()) if (t.video.srcObject && t.video.paused) t.video.play().catch(() => {});
  }

  /** @param {Call} call @param {Participant} p */
  _onStage(call, p) {
    if (p.isLocal) return call.hasCapability('send-audio');
    return ['host', 'moderator', 'admin'].includes(p.role) || (p.published.has('microphone') && !p.muted.has('microphone'));
  }

  /** @param {Call} call @param {Participant} p */
  _seat(call, p) {
    const muted = p.muted.has('microphone') || !p.published.has('microphone') || (p.isLocal && !call.localState().microphone.on);
    const hand = this.requests.has(p.userId) || (p.isLocal && call.pendingRequests.size > 0);
    return h('div', { class: `seat${p.speaking ? ' speaking' : ''}`, testid: 'seat', dataset: { userId: p.userId, participantId: p.participantId } },
      avatar(p.userId, p.isLocal ? this._localName() : p.name ?? p.userId),
      hand ? h('span', { class: 'hand', title: 'Hand raised' }, icon('hand')) : null,
      muted && this._onStage(call, p) ? h('span', { class: 'badge-muted', testid: 'muted-badge' }, icon('micOff')) : null,
      h('div', {}, this._displayName(p)),
      h('div', { class: 'role' }, p.role));
  }

  /** @param {Call} call */
  _renderRoom(call) {
    const stage = this.el.stage;
    stage.className = 'stage room';
    this.tiles.clear();
    const all = call.participantList();
    const speakers = all.filter((p) => this._onStage(call, p));
    const audience = all.filter((p) => !this._onStage(call, p));
    stage.replaceChildren(
      h('h3', {}, `On stage · ${speakers.length}`),
      h('div', { class: 'room-grid', testid: 'room-stage' }, speakers.length ? speakers.map((p) => this._seat(call, p)) : h('p', { class: 'empty' }, 'Nobody is speaking yet.')),
      h('h3', {}, `Listeners · ${audience.length}`),
      h('div', { class: 'room-grid audience', testid: 'room-audience' }, audience.length ? audience.map((p) => this._seat(call, p)) : h('p', { class: 'empty' }, 'No listeners yet.')));
  }

  /** @param {Call} call */
  _renderControls(call) {
    const s = this.host.settings();
    const show = (/** @type {CallButton} */ id) => s.buttons.includes(id);
    const ls = call.localState();
    const room = this.isRoom;
    /** @type {HTMLElement[]} */
    const out = [];
    /**
     * @param {string} action
     * @param {{icon: string, label: string, onClick: () => any, cls?: string, testid?: string, disabled?: boolean, title?: string, pressed?: boolean}} o
     */
    const ctrl = (action, o) => {
      const b = h('button', {
        class: `ctrl ${o.cls ?? ''}`, type: 'button', testid: o.testid, disabled: o.disabled ?? false, title: o.title ?? o.label,
        'aria-pressed': o.pressed == null ? null : String(o.pressed), dataset: { action }, part: `button button-${action}`,
      }, h('span', { class: 'ico', 'aria-hidden': 'true' }, icon(o.icon)), h('span', { class: 'lbl' }, o.label));
      b.addEventListener('click', () => { Promise.resolve().then(o.onClick).catch((e) => this._showErr(e)); });
      out.push(b);
    };
    const canAudio = call.hasCapability('send-audio');
    if (show('mic') && !canAudio && ls.microphone.published && !room) {
      // Audio was revoked: say so instead of offering an Unmute that the server would refuse.
      ctrl('mic', { icon: 'micOff', label: 'Mic not allowed', cls: 'off', testid: 'toggle-mic', pressed: true, disabled: true, onClick: () => {} });
    }
    // A listener moved back to the audience has no microphone control (they may raise a hand).
    if (show('mic') && canAudio) {
      const blocked = !!ls.microphone.blocked;
      ctrl('mic', {
        icon: ls.microphone.on ? 'mic' : 'micOff',
        label: blocked ? 'Mic blocked' : ls.microphone.on ? 'Mute' : 'Unmute',
        cls: ls.microphone.on ? '' : 'off',
        testid: 'toggle-mic',
        pressed: !ls.microphone.on,
        onClick: () => (blocked ? call.retryDevice('microphone') : call.setMicrophoneMuted(ls.microphone.on)),
      });
    }
    if (!room) {
      if (show('camera') && !ls.audioOnly) {
        const blocked = !!ls.camera.blocked;
        ctrl('camera', {
          icon: ls.camera.on ? 'cam' : 'camOff',
          label: blocked ? 'Camera blocked' : ls.camera.on ? 'Stop video' : 'Start video',
          cls: ls.camera.on ? '' : 'off',
          testid: 'toggle-camera',
          disabled: !call.hasCapability('send-video'),
          onClick: () => (blocked ? call.retryDevice('camera') : call.setCameraMuted(ls.camera.on)),
        });
      }
      if (show('screen') && call.hasCapability('screenshare')) {
        const sharing = !!call.local.screen_share.track;
        ctrl('screen', {
          icon: 'screen', label: sharing ? 'Stop sharing' : 'Share screen', cls: sharing ? 'active' : '', testid: 'toggle-screen',
          onClick: () => (sharing ? call.stopScreenShare() : call.startScreenShare()).catch((e) => { throw e.name === 'NotAllowedError' ? new Error('Screen sharing was cancelled or blocked') : e; }),
        });
      }
      if (show('layout')) {
        const grid = call.layout !== 'spotlight';
        ctrl('layout', { icon: grid ? 'spot' : 'grid', label: grid ? 'Spotlight' : 'Grid', testid: 'toggle-layout', onClick: () => call.setLayout(grid ? 'spotlight' : 'grid') });
      }
      if (show('switch-video') && ls.audioOnly && s.allowSwitchToVideo !== false && call.hasCapability('send-video')) {
        ctrl('switch-video', { icon: 'video', label: 'Switch to video', testid: 'switch-video', onClick: () => call.enableVideo() });
      }
    }
    if (show('hand')) {
      for (const cap of ['send-audio', 'send-video', 'screenshare']) {
        if (!call.canRequest(cap)) continue;
        if (!room && cap !== 'send-audio' && call.capabilities.has('send-audio')) continue;
        const pending = call.pendingRequests.has(cap);
        ctrl('hand', {
          icon: 'hand',
          label: pending ? 'Waiting…' : room ? 'Raise hand' : `Ask to ${capName(cap)}`,
          cls: pending ? 'active' : '',
          testid: pending ? 'hand-pending' : 'raise-hand',
          title: pending ? 'Your request is waiting for a host. Click to lower your hand.' : 'Ask a host for permission',
          onClick: () => (pending ? Promise.resolve(call.cancelPermissionRequest()) : call.requestPermission([cap])).then(() => pending || this.toast('Request sent to the hosts')),
        });
        if (room) break;
      }
    }
    if (show('people')) {
      const nReq = this.requests.size;
      ctrl('people', { icon: 'people', label: nReq ? `People (${nReq})` : 'People', cls: nReq ? 'active' : '', testid: 'toggle-people', onClick: () => { this.panelOpen = !this.panelOpen; this.render(); } });
    }
    if (show('stop-live') && call.info.backstageEnabled && call.info.live && call.hasCapability('update-call')) {
      ctrl('stop-live', { icon: 'end', label: 'Stop live', testid: 'stop-live', onClick: () => call.stopLive() });
    }
    for (const a of this.host.actions()) {
      if (a.visible && !a.visible(call)) continue;
      ctrl(a.id, { icon: a.icon ?? 'phone', label: a.label, cls: a.kind ?? '', testid: a.testid, onClick: () => a.onClick(call) });
    }
    if (show('leave')) {
      ctrl('leave', { icon: 'leave', label: room ? 'Leave quietly' : 'Leave', cls: 'leave', testid: 'leave', onClick: () => call.leave() });
    }
    if (show('end-call') && call.hasCapability('end-call')) {
      ctrl('end-call', { icon: 'end', label: 'End for all', cls: 'leave', testid: 'end-call', onClick: () => { if (confirm('End the call for everyone?')) return call.endCall(); } });
    }
    this.el.controls.replaceChildren(...out);
  }

  /** Shows the reaction bar (setting `react`) only to those with `create-reaction`. @param {Call} call */
  _renderReactionBar(call) {
    const bar = this.el.reactionBar;
    const can = this.host.settings().buttons.includes('react') && call.hasCapability('create-reaction');
    bar.hidden = !can;
    if (!can) {
      bar.replaceChildren();
      return;
    }
    if (bar.childElementCount === REACTIONS.length) return;
    bar.replaceChildren(...REACTIONS.map((r) => h('button', {
      class: 'react-btn', type: 'button', testid: `react-${r.type}`, title: r.label, 'aria-label': r.label, dataset: { action: 'react', reaction: r.type },
      onclick: () => this.call?.sendReaction(r.type, { emojiCode: `:${r.type}:` }).catch((e) => this._showErr(e)),
    }, r.emoji)));
  }

  /**
   * Floats a reaction (with who sent it) over the call for a few seconds.
   * @param {Participant|null} participant
   * @param {string} userId
   * @param {{type: string, emoji_code?: string}} reaction
   * @param {boolean} local
   */
  _showReaction(participant, userId, reaction, local) {
    const known = REACTIONS.find((r) => r.type === reaction?.type);
    const emoji = known?.emoji ?? reaction?.emoji_code ?? reaction?.type ?? '';
    const who = local ? 'You' : participant?.name ?? userId ?? 'Someone';
    const el = h('div', { class: 'reaction-pop', testid: 'reaction', dataset: { userId: userId ?? '', type: reaction?.type ?? '' } },
      h('span', { class: 'emoji', 'aria-hidden': 'true' }, emoji), h('span', { class: 'who' }, `${who}${known ? '' : ` · ${reaction?.type ?? ''}`}`));
    el.setAttribute('aria-label', `${who}: ${known?.label ?? reaction?.type ?? 'reaction'}`);
    const layer = this.el.reactions;
    layer.append(el);
    while (layer.childElementCount > 6) layer.firstElementChild?.remove();
    setTimeout(() => el.remove(), REACTION_SHOW_MS);
  }

  /** @param {Call} call */
  _renderPanel(call) {
    this.el.panel.hidden = !this.panelOpen;
    if (!this.panelOpen) return;
    const canPerm = call.hasCapability('update-call-permissions');
    const reqs = [...this.requests].map(([userId, perms]) => h('div', { class: 'request', testid: `request-${userId}` },
      h('p', {}, icon('hand'), ` ${userId} asks to ${perms.map(capName).join(', ')}`),
      h('div', { class: 'person-actions' },
        h('button', { class: 'btn small primary', testid: `approve-${userId}`, onclick: () => this._answer(userId, perms, true) }, 'Approve'),
        h('button', { class: 'btn small ghost', testid: `deny-${userId}`, onclick: () => this._answer(userId, perms, false) }, 'Deny'))));
    this.el.requests.replaceChildren(...(canPerm ? reqs : []));
    const err = (/** @type {any} */ e) => this._showErr(e);
    const people = call.participantList().map((p) => {
      const micMuted = p.muted.has('microphone') || !p.published.has('microphone');
      const actions = [];
      if (!p.isLocal && call.hasCapability('mute-users') && !micMuted) {
        actions.push(h('button', { class: 'btn small ghost', testid: `mute-${p.userId}`, onclick: () => call.muteUsers([p.userId], { audio: true }).catch(err) }, 'Mute'));
      }
      if (!p.isLocal && canPerm && !['host', 'admin', 'moderator'].includes(p.role)) {
        const speaking = p.published.has('microphone') && !p.muted.has('microphone');
        if (this.isRoom || call.requestable.size) {
          actions.push(speaking
            ? h('button', { class: 'btn small ghost', testid: `revoke-${p.userId}`, onclick: () => call.revokePermissions(p.userId, ['send-audio']).catch(err) }, this.isRoom ? 'Move to audience' : 'Revoke audio')
            : h('button', { class: 'btn small ghost', testid: `grant-${p.userId}`, onclick: () => call.grantPermissions(p.userId, ['send-audio']).catch(err) }, this.isRoom ? 'Invite to speak' : 'Allow audio'));
        }
      }
      if (!p.isLocal && call.hasCapability('kick-user')) {
        actions.push(h('button', { class: 'btn small ghost', testid: `kick-${p.userId}`, onclick: () => call.kick(p.userId).catch(err) }, 'Remove'));
      }
      return h('li', { dataset: { userId: p.userId } }, avatar(p.userId, p.isLocal ? this._localName() : p.name ?? p.userId),
        h('div', { class: 'who' }, this._displayName(p), h('small', {}, `${p.role}${micMuted ? ' · muted' : ''}${p.published.has('screen_share') ? ' · sharing' : ''}`)),
        h('div', { class: 'person-actions' }, actions));
    });
    this.el.people.replaceChildren(...people);
    this._renderDevices();
  }

  /** The in-call device pickers: switching keeps the call (replaceTrack / setSinkId). */
  async _renderDevices() {
    const call = this.call;
    if (!call) return;
    const lists = await listDevices().catch(() => ({ audioInputs: [], audioOutputs: [], videoInputs: [] }));
    const cur = (/** @type {'microphone'|'camera'} */ src) => call.local[src].track?.getSettings?.().deviceId ?? null;
    const { audioIn, videoIn, audioOut } = this.el;
    fillSelect(audioIn, lists.audioInputs, cur('microphone') ?? call.devices.audioInput, 'Microphone');
    fillSelect(videoIn, lists.videoInputs, cur('camera') ?? call.devices.videoInput, 'Camera');
    fillSelect(audioOut, lists.audioOutputs, call.devices.audioOutput, 'Speaker');
    /** @type {HTMLElement} */ (videoIn.closest('label')).hidden = this.isRoom;
    /** @type {HTMLElement} */ (audioOut.closest('label')).hidden = !canSelectAudioOutput();
    const sw = (/** @type {'audioInput'|'videoInput'|'audioOutput'} */ kind, /** @type {string} */ what) => (/** @type {Event} */ e) =>
      call.switchDevice(kind, /** @type {HTMLSelectElement} */ (e.target).value).then(() => this.toast(`${what} switched`)).catch((er) => this._showErr(er));
    audioIn.onchange = sw('audioInput', 'Microphone');
    videoIn.onchange = sw('videoInput', 'Camera');
    audioOut.onchange = sw('audioOutput', 'Speaker');
  }

  /**
   * @param {string} userId
   * @param {string[]} perms
   * @param {boolean} approve
   */
  async _answer(userId, perms, approve) {
    const call = this.call;
    if (!call) return;
    try {
      if (approve) await call.grantPermissions(userId, perms);
      else await call.revokePermissions(userId, perms);
      this.requests.delete(userId);
      this.toast(approve ? `${userId} can ${perms.map(capName).join(', ')} now` : `Declined ${userId}'s request`);
    } catch (e) {
      this._showErr(e);
    }
    this.render();
  }
}

/** The call screen's markup (inside the shadow root, after the stylesheet). */
export const CALL_UI_HTML = `
<div class="call" part="call">
  <div class="call-head" part="head"></div>
  <div class="status" part="status" role="status"></div>
  <div class="banners" id="banners" aria-live="polite"></div>
  <div class="call-body">
    <section class="stage tiles" id="stage" part="tiles"></section>
    <aside class="panel" id="panel" part="panel" hidden>
      <div class="panel-head"><h2>People</h2><button class="icon-btn panel-close" type="button" aria-label="Close">✕</button></div>
      <div class="requests"></div>
      <ul class="people"></ul>
      <div class="devices-panel">
        <h2>Devices</h2>
        <label>Microphone<select data-testid="call-select-microphone"></select></label>
        <label>Camera<select data-testid="call-select-camera"></select></label>
        <label>Speaker<select data-testid="call-select-speaker"></select></label>
      </div>
    </aside>
  </div>
  <div class="reactions" data-testid="reactions" aria-live="polite"></div>
  <div class="reaction-bar" data-testid="reaction-bar" part="reaction-bar" role="toolbar" aria-label="Reactions" hidden></div>
  <nav class="controls bar" part="bar" aria-label="Call controls"></nav>
  <div class="toasts" aria-live="polite"></div>
</div>`;
