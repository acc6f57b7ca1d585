// @ts-check
// `<greenroom-call>`: a framework-neutral custom element that joins a call and renders the whole
// call screen (the same one the Greenroom web app uses): video tiles in a grid or spotlight, or an
// audio room's stage and audience; banners, the People panel (requests, moderation, devices),
// reactions and the control bar. Settings like a call settings builder, DOM events out.
// Importing this module defines the element.
//
//   <script type="module" src="/sdk/call-element.js"></script>
//   <greenroom-call token="JWT" call-id="default:room1" layout="spotlight" buttons="mic,camera,leave"></greenroom-call>

import { GreenroomClient } from './client.js';
import { CallUI, CALL_BUTTONS, CALL_UI_HTML } from './call-ui.js';
import { CALL_UI_CSS } from './call-ui-style.js';

export { CALL_BUTTONS, REACTIONS } from './call-ui.js';

/** @typedef {import('./client.js').Call} Call */
/** @typedef {import('./client.js').Participant} Participant */
/** @typedef {import('./call-ui.js').CallButton} CallButton */
/** @typedef {import('./call-ui.js').CallAction} CallAction */
/** @typedef {import('./call-ui.js').Banner} Banner */

/**
 * Settings of a `<greenroom-call>` (attributes in kebab-case, or the `settings` property).
 * @typedef {object} CallSettings
 * @property {boolean} [defaultLayout=true]   Render the call UI; `false` renders nothing but plays audio (build your own UI on `element.call`).
 * @property {CallButton[]} [buttons]          Which buttons show (default: all that apply; `react` is the reaction bar).
 * @property {boolean} [audioOnly=false]       Join without video.
 * @property {boolean} [startAudioMuted=false]
 * @property {boolean} [startVideoMuted=false]
 * @property {'grid'|'spotlight'} [layout='grid']
 * @property {boolean} [allowSwitchToVideo=true] Show the "Switch to video" button in audio-only calls.
 * @property {boolean} [create=true]           Create the call if it does not exist.
 * @property {string} [name]                    Your display name (others see it; default: your user id).
 * @property {string} [heading]                 A title shown above the call (default: none).
 */

/**
 * The events the element dispatches (`CustomEvent`, bubbling and composed), with their `detail`.
 * @typedef {object} CallElementEvents
 * @property {{participant: Participant}} joined
 * @property {{reason: string, endedBy: string|null}} left
 * @property {{participant: Participant}} user-joined
 * @property {{participant: Participant, reason: string}} user-left
 * @property {{userIds: string[], by: string, sources: string[], byModerator: boolean}} muted
 * @property {{participant: Participant, local: boolean}} screen-share-started
 * @property {{participant: Participant, local: boolean}} screen-share-stopped
 * @property {{initiator: string}} switched-to-video
 * @property {{participant: Participant|null, userId: string, reaction: {type: string, emoji_code?: string}, local: boolean}} reaction
 * @property {{state: 'connected'|'reconnecting'|'failed'}} connectionstatechange
 * @property {{error: Error}} error
 */

/**
 * Options of `element.join()`; each falls back to the element's attribute.
 * @typedef {object} ElementJoinOptions
 * @property {string} [token]        Access token (attribute `token`).
 * @property {string} [callId]       `type:id` (attribute `call-id`).
 * @property {string} [baseUrl]      Server URL (attribute `base-url`; default: this page's origin).
 * @property {GreenroomClient} [client] An existing client to join with (then `token` and `baseUrl` are unused).
 * @property {{audio?: MediaStreamTrack|null, video?: MediaStreamTrack|null}} [tracks] Tracks captured already (a pre-join preview).
 * @property {{audioInput?: string|null, videoInput?: string|null, audioOutput?: string|null}} [devices] Chosen devices.
 * @property {Record<string, any>} [custom] Custom data others see with your participant.
 */

/**
 * Reads a boolean attribute: present and not "false".
 * @param {Element} el @param {string} name @param {boolean} dflt
 */
function boolAttr(el, name, dflt) {
  if (!el.hasAttribute(name)) return dflt;
  const v = el.getAttribute(name);
  return v !== 'false' && v !== '0';
}

/** A `<greenroom-call>` element. */
export class GreenroomCallElement extends HTMLElement {
  static get observedAttributes() {
    return ['layout', 'buttons', 'default-layout', 'heading', 'name'];
  }

  constructor() {
    super();
    /** The SDK call once `join` ran. @type {Call|null} */
    this.call = null;
    /** The SDK client. @type {GreenroomClient|null} */
    this.client = null;
    /** Settings given as a property (they win over attributes). @type {CallSettings} */
    this._settings = {};
    /** @type {CallAction[]} */
    this._actions = [];
    /** Who ended the call, when someone did. @type {string|null} */
    this._endedBy = null;
    this._root = this.attachShadow({ mode: 'open' });
    this._root.innerHTML = `<style>${CALL_UI_CSS}</style>${CALL_UI_HTML}`;
    /** @type {HTMLElement} */ this._status = /** @type {HTMLElement} */ (this._root.querySelector('.status'));
    /** @type {HTMLElement} */ this._view = /** @type {HTMLElement} */ (this._root.querySelector('.call'));
    this._ui = new CallUI(this._root, {
      settings: () => this.settings,
      actions: () => this._actions,
      fire: (type, detail) => this._fire(type, detail),
    });
    this._onDocClick = () => {
      // A click anywhere resumes audio that the browser's autoplay policy paused.
      if (this._ui.banners.has('autoplay')) {
        this.call?.resumeAudio();
        this._ui.clearBanner('autoplay');
      }
    };
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
      heading: this.getAttribute('heading') ?? '',
    };
    return /** @type {Required<CallSettings>} */ ({ ...a, ...this._settings });
  }

  /** @param {CallSettings} s */
  set settings(s) {
    this._settings = { ...s };
    this._render();
  }

  /** Extra control-bar buttons (before Leave), e.g. a ringing app's "End call". @returns {CallAction[]} */
  get actions() {
    return this._actions;
  }

  /** @param {CallAction[]} list */
  set actions(list) {
    this._actions = [...list];
    this._render();
  }

  connectedCallback() {
    document.addEventListener('click', this._onDocClick);
    if (!this.hasAttribute('manual') && this.getAttribute('token') && this.getAttribute('call-id') && !this.call) {
      this.join().catch(() => {});
    }
  }

  disconnectedCallback() {
    document.removeEventListener('click', this._onDocClick);
    this.call?.leave();
  }

  attributeChangedCallback(/** @type {string} */ name) {
    if (name === 'layout' && this.call) this.call.setLayout(this.settings.layout);
    this._render();
  }

  /**
   * Joins the call named by `call-id` with `token` (attributes) or the options. Rejects with the
   * SDK's `GreenroomError` (e.g. `backstage`, `blocked`, `missing_capability`) when refused; the
   * element also dispatches `error`. A new `join` after `left` joins again.
   * @param {ElementJoinOptions} [opts]
   * @returns {Promise<Participant>}
   */
  async join(opts = {}) {
    if (this.call && (this.call.state === 'joining' || this.call.state === 'joined')) throw new Error(`join: already ${this.call.state}`);
    const token = opts.token ?? this.getAttribute('token') ?? '';
    const cid = opts.callId ?? this.getAttribute('call-id') ?? '';
    const baseUrl = opts.baseUrl ?? this.getAttribute('base-url') ?? undefined;
    const s = this.settings;
    this._setStatus('Joining…');
    this._endedBy = null;
    try {
      this.client = opts.client ?? new GreenroomClient({ token, baseUrl });
      const call = this.client.call(cid);
      this.call = call;
      this._ui.attach(call);
      this._wire(call);
      const me = await call.join({
        create: s.create,
        audioOnly: s.audioOnly,
        startAudioMuted: s.startAudioMuted,
        startVideoMuted: s.startVideoMuted,
        layout: s.layout,
        ...(s.name ? { name: s.name } : {}),
        ...(opts.tracks ? { tracks: opts.tracks } : {}),
        ...(opts.devices ? { devices: opts.devices } : {}),
        ...(opts.custom ? { custom: opts.custom } : {}),
      });
      this._setStatus('');
      this._fire('joined', { participant: me });
      this._render();
      return me;
    } catch (e) {
      this._setStatus(`Could not join: ${e instanceof Error ? e.message : e}`, 'bad');
      this._fire('error', { error: e });
      this._ui.detach();
      this.call = null;
      throw e;
    }
  }

  /** Leaves the call (the element shows "You left the call" and dispatches `left`). */
  leave() {
    return this.call?.leave();
  }

  /**
   * Shows a short message over the call for a few seconds.
   * @param {string} text
   * @param {''|'bad'} [kind]
   */
  toast(text, kind = '') {
    this._ui.toast(text, kind);
  }

  /**
   * Shows (or replaces) a banner over the call; its `data-testid` is `key`.
   * @param {string} key
   * @param {Banner} banner
   */
  setBanner(key, banner) {
    this._ui.setBanner(key, banner);
  }

  /** Removes the banner `key`. @param {string} key */
  clearBanner(key) {
    this._ui.clearBanner(key);
  }

  /**
   * @param {string} text
   * @param {''|'bad'} [kind]
   */
  _setStatus(text, kind = '') {
    this._status.textContent = text;
    this._status.className = `status ${kind}`;
  }

  /**
   * @param {string} type
   * @param {any} detail
   */
  _fire(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail, bubbles: true, composed: true }));
  }

  /** SDK events -> DOM events. @param {Call} call */
  _wire(call) {
    const mine = (/** @type {Function} */ fn) => (/** @type {any} */ d) => { if (this.call === call) fn(d); };
    call.on('participantJoined', mine((p) => this._fire('user-joined', { participant: p })));
    call.on('participantLeft', mine((d) => this._fire('user-left', d)));
    call.on('userMuted', mine((d) => this._fire('muted', d)));
    call.on('screenShareStarted', mine((d) => this._fire('screen-share-started', d)));
    call.on('screenShareStopped', mine((d) => this._fire('screen-share-stopped', d)));
    call.on('callSwitchedToVideo', mine((d) => this._fire('switched-to-video', d)));
    call.on('error', mine((e) => this._fire('error', { error: e })));
    call.on('reaction', mine((d) => this._fire('reaction', d)));
    call.on('connectionStateChanged', mine((d) => this._fire('connectionstatechange', { state: d.state })));
    call.on('callEnded', mine(({ endedBy }) => { this._endedBy = endedBy ?? null; }));
    call.on('left', mine(({ reason }) => {
      this._setStatus(reason === 'call_ended' ? 'The call has ended' : 'You left the call');
      this._ui.detach();
      this._fire('left', { reason, endedBy: this._endedBy });
    }));
  }

  _render() {
    const s = this.settings;
    // Without the default layout only the status line shows (audio still plays).
    this._view.classList.toggle('no-ui', !s.defaultLayout);
    if (s.defaultLayout) this._ui.render();
  }
}

if (typeof customElements !== 'undefined' && !customElements.get('greenroom-call')) {
  customElements.define('greenroom-call', GreenroomCallElement);
}
