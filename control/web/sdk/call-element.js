// @ts-check
// `<greenroom-call>`: a framework-neutral custom element that joins a call and renders it (video
// tiles in a grid or spotlight, names, mute states, a button bar), with settings like a call
// settings builder and DOM events out. Importing this module defines the element.
//
//   <script type="module" src="/sdk/call-element.js"></script>
//   <greenroom-call token="JWT" call-id="default:room1" layout="spotlight" buttons="mic,camera,leave"></greenroom-call>

import { GreenroomClient } from './client.js';

/** @typedef {import('./client.js').Call} Call */
/** @typedef {import('./client.js').Participant} Participant */
/** @typedef {'mic'|'camera'|'screen'|'react'|'layout'|'switch-video'|'leave'} CallButton */

/**
 * Settings of a `<greenroom-call>` (attributes in kebab-case, or the `settings` property).
 * @typedef {object} CallSettings
 * @property {boolean} [defaultLayout=true]   Render the call UI; `false` renders nothing but plays audio (build your own UI on `element.call`).
 * @property {CallButton[]} [buttons]          Which buttons show (default: all that apply).
 * @property {boolean} [audioOnly=false]       Join without video.
 * @property {boolean} [startAudioMuted=false]
 * @property {boolean} [startVideoMuted=false]
 * @property {'grid'|'spotlight'} [layout='grid']
 * @property {boolean} [allowSwitchToVideo=true] Show the "switch to video" button in audio-only calls.
 * @property {boolean} [create=true]           Create the call if it does not exist.
 * @property {string} [name]                    Your display name (others see it; default: your user id).
 */

/** Every button, in bar order. @type {CallButton[]} */
export const CALL_BUTTONS = ['mic', 'camera', 'screen', 'react', 'layout', 'switch-video', 'leave'];

/**
 * The events the element dispatches (`CustomEvent`, bubbling and composed), with their `detail`.
 * @typedef {object} CallElementEvents
 * @property {{participant: Participant}} joined
 * @property {{reason: string}} left
 * @property {{participant: Participant}} user-joined
 * @property {{participant: Participant, reason: string}} user-left
 * @property {{userIds: string[], by: string, sources: string[], byModerator: boolean}} muted
 * @property {{participant: Participant, local: boolean}} screen-share-started
 * @property {{participant: Participant, local: boolean}} screen-share-stopped
 * @property {{initiator: string}} switched-to-video
 * @property {{participant: Participant|null, userId: string, reaction: {type: string, emoji_code?: string}, local: boolean}} reaction
 * @property {{error: Error}} error
 */

const STYLE = `
:host { display: block; position: relative; background: #111; color: #eee; font: 14px system-ui, sans-serif; min-height: 240px; }
.tiles { display: grid; gap: 6px; padding: 6px; grid-template-columns: repeat(auto-fit, minmax(220px, 1fr)); height: calc(100% - 56px); box-sizing: border-box; }
.tiles.spotlight { grid-template-columns: 1fr; grid-auto-rows: 1fr; }
.tiles.spotlight .tile:not(:first-child) { display: none; }
.tile { position: relative; background: #222; border-radius: 8px; overflow: hidden; aspect-ratio: 16 / 9; }
.tile.speaking { outline: 3px solid #3b82f6; }
.tile[data-reaction]::after { content: '👍'; position: absolute; top: 8px; right: 10px; font-size: 2em; }
video { width: 100%; height: 100%; object-fit: cover; }
.avatar { position: absolute; inset: 0; display: grid; place-items: center; font-size: 2.2em; }
.name { position: absolute; left: 6px; bottom: 6px; background: #0009; padding: 2px 8px; border-radius: 6px; max-width: calc(100% - 24px); overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.bar { display: flex; gap: 8px; justify-content: center; padding: 8px; flex-wrap: wrap; }
button { font: inherit; border: 0; border-radius: 20px; padding: 8px 14px; background: #333; color: #eee; cursor: pointer; }
button.off { background: #b91c1c; }
button.leave { background: #dc2626; }
.status { padding: 8px; }
`;

/** Reads a boolean attribute: present and not "false". */
function boolAttr(el, name, dflt) {
  if (!el.hasAttribute(name)) return dflt;
  const v = el.getAttribute(name);
  return v !== 'false' && v !== '0';
}

/** A `<greenroom-call>` element. */
export class GreenroomCallElement extends HTMLElement {
  static get observedAttributes() {
    return ['layout'];
  }

  constructor() {
    super();
    /** The SDK call once `join` ran. @type {Call|null} */
    this.call = null;
    /** The SDK client. @type {GreenroomClient|null} */
    this.client = null;
    /** Settings given as a property (they win over attributes). @type {CallSettings} */
    this._settings = {};
    /** @type {Map<string, {el: HTMLElement, video: HTMLVideoElement, name: HTMLElement, avatar: HTMLElement}>} */
    this._tiles = new Map();
    this._root = this.attachShadow({ mode: 'open' });
    this._root.innerHTML = `<style>${STYLE}</style><div class="status" part="status"></div><div class="tiles" part="tiles"></div><div class="bar" part="bar"></div>`;
    /** @type {HTMLElement} */ this._status = /** @type {HTMLElement} */ (this._root.querySelector('.status'));
    /** @type {HTMLElement} */ this._grid = /** @type {HTMLElement} */ (this._root.querySelector('.tiles'));
    /** @type {HTMLElement} */ this._bar = /** @type {HTMLElement} */ (this._root.querySelector('.bar'));
  }

  /** The effective settings: the `settings` property over the attributes. @returns {Required<CallSettings>} */
  get settings() {
    const a = {
      defaultLayout: boolAttr(this, 'default-layout', true),
      buttons: /** @type {CallButton[]} */ (
        this.getAttribute('buttons')?.split(',').map((s) => s.trim()).filter((s) => CALL_BUTTONS.includes(/** @type {CallButton} */ (s))) ?? CALL_BUTTONS
      ),
      audioOnly: boolAttr(this, 'audio-only', false),
      startAudioMuted: boolAttr(this, 'start-audio-muted', false),
      startVideoMuted: boolAttr(this, 'start-video-muted', false),
      layout: this.getAttribute('layout') === 'spotlight' ? 'spotlight' : 'grid',
      allowSwitchToVideo: boolAttr(this, 'allow-switch-to-video', true),
      create: boolAttr(this, 'create', true),
      name: this.getAttribute('name') ?? '',
    };
    return /** @type {Required<CallSettings>} */ ({ ...a, ...this._settings });
  }

  /** @param {CallSettings} s */
  set settings(s) {
    this._settings = { ...s };
    this._render();
  }

  connectedCallback() {
    if (!this.hasAttribute('manual') && this.getAttribute('token') && this.getAttribute('call-id') && !this.call) {
      this.join().catch(() => {});
    }
  }

  disconnectedCallback() {
    this.call?.leave();
  }

  attributeChangedCallback() {
    if (this.call) this.call.setLayout(this.settings.layout);
    this._render();
  }

  /**
   * Joins the call named by `call-id` with `token` (attributes) or the arguments.
   * @param {{token?: string, callId?: string, baseUrl?: string}} [opts]
   * @returns {Promise<Participant>}
   */
  async join(opts = {}) {
    const token = opts.token ?? this.getAttribute('token') ?? '';
    const cid = opts.callId ?? this.getAttribute('call-id') ?? '';
    const baseUrl = opts.baseUrl ?? this.getAttribute('base-url') ?? undefined;
    const s = this.settings;
    this._status.textContent = 'Joining…';
    try {
      this.client = new GreenroomClient({ token, baseUrl });
      const call = this.client.call(cid);
      this.call = call;
      this._wire(call);
      const me = await call.join({
        create: s.create,
        audioOnly: s.audioOnly,
        startAudioMuted: s.startAudioMuted,
        startVideoMuted: s.startVideoMuted,
        layout: s.layout,
        ...(s.name ? { name: s.name } : {}),
      });
      this._status.textContent = '';
      this._fire('joined', { participant: me });
      this._render();
      return me;
    } catch (e) {
      this._status.textContent = `Could not join: ${e instanceof Error ? e.message : e}`;
      this._fire('error', { error: e });
      this.call = null;
      throw e;
    }
  }

  /** Leaves the call (the element shows "Left"). */
  leave() {
    this.call?.leave();
  }

  /**
   * @param {string} type
   * @param {any} detail
   */
  _fire(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail, bubbles: true, composed: true }));
  }

  /** @param {Call} call */
  _wire(call) {
    call.on('participantsChanged', () => this._render());
    call.on('localChanged', () => this._render());
    call.on('layoutChanged', () => this._render());
    call.on('participantJoined', (p) => this._fire('user-joined', { participant: p }));
    call.on('participantLeft', (d) => this._fire('user-left', d));
    call.on('userMuted', (d) => this._fire('muted', d));
    call.on('screenShareStarted', (d) => this._fire('screen-share-started', d));
    call.on('screenShareStopped', (d) => this._fire('screen-share-stopped', d));
    call.on('callSwitchedToVideo', (d) => this._fire('switched-to-video', d));
    call.on('error', (e) => this._fire('error', { error: e }));
    call.on('reaction', (d) => {
      this._fire('reaction', d);
      const tile = d.participant && this._tiles.get(d.participant.participantId);
      if (tile) {
        tile.el.dataset.reaction = d.reaction.emoji_code ?? d.reaction.type;
        setTimeout(() => { if (tile.el.dataset.reaction === (d.reaction.emoji_code ?? d.reaction.type)) delete tile.el.dataset.reaction; }, 3000);
      }
    });
    call.on('left', ({ reason }) => {
      this._status.textContent = reason === 'call_ended' ? 'The call has ended' : 'You left the call';
      this._fire('left', { reason });
      this._render();
    });
  }

  _render() {
    const s = this.settings;
    const call = this.call;
    const show = s.defaultLayout && call && call.state === 'joined';
    this._grid.hidden = !show;
    this._bar.hidden = !show;
    if (!show || !call) {
      for (const t of this._tiles.values()) t.el.remove();
      this._tiles.clear();
      this._bar.replaceChildren();
      return;
    }
    this._grid.classList.toggle('spotlight', (call.layout ?? s.layout) === 'spotlight');
    // Tiles: one per participant (the speaker or a screen share first in spotlight).
    const list = call.participantList();
    const ordered = [...list].sort((a, b) => Number(Boolean(b.tracks.screen_share)) - Number(Boolean(a.tracks.screen_share)) || Number(b.speaking) - Number(a.speaking));
    const seen = new Set();
    for (const p of ordered) {
      seen.add(p.participantId);
      let t = this._tiles.get(p.participantId);
      if (!t) {
        const el = document.createElement('div');
        el.className = 'tile';
        el.setAttribute('part', 'tile');
        el.dataset.userId = p.userId;
        const video = document.createElement('video');
        video.autoplay = true;
        video.playsInline = true;
        video.muted = true; // audio plays through the SDK's audio elements
        const avatar = document.createElement('div');
        avatar.className = 'avatar';
        const name = document.createElement('div');
        name.className = 'name';
        el.append(video, avatar, name);
        t = { el, video, name, avatar };
        this._tiles.set(p.participantId, t);
      }
      this._grid.append(t.el); // keeps the order
      const track = p.tracks.screen_share ?? (p.muted.has('camera') ? undefined : p.tracks.camera);
      const current = /** @type {MediaStream|null} */ (t.video.srcObject)?.getVideoTracks()[0];
      if (track && current !== track) t.video.srcObject = new MediaStream([track]);
      if (!track && t.video.srcObject) t.video.srcObject = null;
      t.video.hidden = !track;
      t.avatar.textContent = track ? '' : ((p.name ?? p.userId)[0] ?? '?').toUpperCase();
      const mic = p.muted.has('microphone') || !p.published.has('microphone') ? ' 🔇' : '';
      t.name.textContent = `${p.name ?? p.userId}${p.isLocal ? ' (you)' : ''}${mic}`;
      t.el.classList.toggle('speaking', p.speaking);
    }
    for (const [pid, t] of this._tiles) {
      if (!seen.has(pid)) {
        t.el.remove();
        this._tiles.delete(pid);
      }
    }
    this._renderBar(s, call);
  }

  /**
   * @param {Required<CallSettings>} s
   * @param {Call} call
   */
  _renderBar(s, call) {
    const local = call.localState();
    /** @type {HTMLButtonElement[]} */
    const buttons = [];
    /**
     * @param {CallButton} id
     * @param {string} label
     * @param {boolean} off
     * @param {() => any} onClick
     */
    const add = (id, label, off, onClick) => {
      if (!s.buttons.includes(id)) return;
      const b = document.createElement('button');
      b.dataset.action = id;
      b.setAttribute('part', `button button-${id}`);
      b.textContent = label;
      b.classList.toggle('off', off);
      if (id === 'leave') b.classList.add('leave');
      b.addEventListener('click', () => Promise.resolve(onClick()).catch((e) => this._fire('error', { error: e })));
      buttons.push(b);
    };
    const micMuted = !local.microphone.on;
    if (call.hasCapability('send-audio')) add('mic', micMuted ? 'Unmute' : 'Mute', micMuted, () => call.setMicrophoneMuted(!micMuted));
    const audioOnly = local.audioOnly;
    if (!audioOnly && call.hasCapability('send-video')) {
      const camOff = !local.camera.on;
      add('camera', camOff ? 'Start video' : 'Stop video', camOff, () => call.setCameraMuted(!camOff));
    }
    if (call.hasCapability('screenshare')) {
      const sharing = local.screenShare.on;
      add('screen', sharing ? 'Stop sharing' : 'Share screen', false, () => (sharing ? call.stopScreenShare() : call.startScreenShare()));
    }
    if (call.hasCapability('create-reaction')) add('react', '👍', false, () => call.sendReaction('like', { emojiCode: ':+1:' }));
    add('layout', call.layout === 'spotlight' ? 'Grid' : 'Spotlight', false, () => call.setLayout(call.layout === 'spotlight' ? 'grid' : 'spotlight'));
    if (audioOnly && s.allowSwitchToVideo && call.hasCapability('send-video')) add('switch-video', 'Switch to video', false, () => call.enableVideo());
    add('leave', 'Leave', false, () => call.leave());
    this._bar.replaceChildren(...buttons);
  }
}

if (typeof customElements !== 'undefined' && !customElements.get('greenroom-call')) {
  customElements.define('greenroom-call', GreenroomCallElement);
}
