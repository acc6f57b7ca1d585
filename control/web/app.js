// Greenroom web app: dev login, pre-join (name, devices, permission check), then the call screen,
// which is the SDK's `<greenroom-call>` element (./sdk/call-element.js: video call in grid /
// spotlight, audio room with stage, audience, raised hands, backstage; banners, People panel,
// reactions). This file is the lobby and the glue: it joins through the element and listens to its
// events. Built on the SDK in ./sdk/ (plain ES modules, no build step).
//
// Ringing (docs/PROTOCOL.md section 6): with a token and no call (/?token=<JWT>), the idle screen
// keeps the user-level connection open, rings for incoming calls (WebAudio ring tone), calls
// people and lists the call history.
//
// Dev entry: /?token=<JWT>&call=<type:id>[&name=<display name>] or paste a token on the login form.
// Test hook: window.app = { screen, call, client, access, lastError, ring, ringCall, incoming, outgoing, history, ringtone }.

import {
  GreenroomClient,
  checkMediaAccess,
  describeAccess,
  environmentCheck,
  listDevices,
  captureTrack,
  watchDevices,
  canSelectAudioOutput,
  watchPermission,
  RingClient,
  randomId,
} from './sdk/index.js';
import { h, icon, initials, avatarColor, avatar } from './sdk/icons.js';
import { CALL_BUTTONS, fillSelect, instructionsList } from './sdk/call-ui.js';
import './sdk/call-element.js';
import { SHARED_CSS } from './sdk/call-ui-style.js';

// Buttons, pills, avatars and toasts look as in the call element: one source for both, put
// ahead of app.css so that the app's own rules still follow it. Every screen is hidden until
// this module shows one, so nothing is drawn without it.
document.head.prepend(Object.assign(document.createElement('style'), { textContent: SHARED_CSS }));

const $ = (id) => document.getElementById(id);
/** The call screen: `<greenroom-call>`. @returns {import('./sdk/call-element.js').GreenroomCallElement} */
const callEl = () => /** @type {any} */ ($('call-el'));

const app = {
  screen: 'loading',
  /** @type {GreenroomClient|null} */
  client: null,
  /** @type {import('./sdk/client.js').Call|null} */
  call: null,
  cid: '',
  callType: 'default',
  /** GET /v1/calls result, or null when the call does not exist yet. */
  callInfo: null,
  /** Capabilities known before joining (from GET), or null. */
  preCaps: null,
  access: null,
  preview: { audio: null, video: null },
  prefs: { audioMuted: false, videoMuted: false, audioOnly: false, layout: 'grid' },
  devices: { audioInput: null, videoInput: null, audioOutput: null },
  joinedAudioOnlyBecauseCamera: false,
  lastError: null,
  endReason: null,
  /** The user-level (ringing) connection, on the idle screen and during rung calls. */
  ring: null,
  /** The incoming call shown now: {callCid, callerUserId, kind, members, groupId}. */
  incoming: null,
  /** The outgoing call shown now: {callCid, calleeUserIds, kind, state, preview}. */
  outgoing: null,
  /** The rung call being joined or in progress: {callCid, kind, peer}. */
  ringCall: null,
  /** The last history page: CallRecord[]. */
  history: [],
  historyNext: null,
  ringtone: null,
};
window.app = app;

function show(screen) {
  app.screen = screen;
  $('app').dataset.screen = screen;
  for (const s of ['login', 'home', 'incoming', 'outgoing', 'prejoin', 'call', 'end']) $(`screen-${s}`).hidden = s !== screen;
}

/** A toast: over the call while in one (the element's), else the app's own. */
function toast(text, kind = '') {
  if (app.screen === 'call') {
    callEl().toast(text, kind);
    return;
  }
  const el = h('div', { class: `toast ${kind}`, role: 'status' }, text);
  const box = $('toasts');
  box.append(el);
  while (box.children.length > 3) box.firstElementChild.remove();
  setTimeout(() => el.remove(), 4000);
}

const isRoom = () => app.callType === 'audio_room';
const localName = () => ($('display-name').value.trim() || app.client?.userId || 'You');

// ---- boot & login ---------------------------------------------------------------------------

function boot() {
  const q = new URLSearchParams(location.search);
  const token = q.get('token') || sessionStorage.getItem('greenroom.token') || '';
  let cid = q.get('call') || sessionStorage.getItem('greenroom.call') || '';
  if (q.get('name')) localStorage.setItem('greenroom.name', q.get('name'));
  if (token && !cid) cid = decodeClaim(token).call || '';
  if (token && cid) {
    start(token, cid);
  } else if (token && decodeClaim(token).sub) {
    home(token);
  } else {
    $('login-token').value = token;
    $('login-call').value = cid;
    show('login');
  }
  $('login-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const t = $('login-token').value.trim();
    const c = $('login-call').value.trim() || decodeClaim(t).call || '';
    if (!decodeClaim(t).sub) {
      $('login-error').textContent = 'That does not look like a Greenroom token (a JWT with a user id).';
      $('login-error').hidden = false;
      return;
    }
    sessionStorage.setItem('greenroom.token', t);
    sessionStorage.setItem('greenroom.call', c);
    if (c) start(t, c);
    else home(t);
  });
}

function decodeClaim(token) {
  try {
    const p = token.split('.')[1];
    return JSON.parse(atob(p.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(p.length / 4) * 4, '=')));
  } catch {
    return {};
  }
}

async function start(token, cid) {
  app.client = new GreenroomClient({ token });
  app.cid = cid;
  app.callType = cid.split(':')[0] || 'default';
  $('display-name').value = localStorage.getItem('greenroom.name') || app.client.userId;
  await prejoin();
}

// ---- pre-join -------------------------------------------------------------------------------

async function prejoin() {
  show('prejoin');
  // In a span: a long call id is cut with an ellipsis (a flex container cannot cut bare text).
  $('topbar-call').replaceChildren(h('span', { class: 'call-id', testid: 'call-id', title: app.cid }, app.cid));
  $('prejoin-kind').textContent = isRoom() ? 'Audio room' : app.callType === 'livestream' ? 'Livestream' : 'Video call';
  $('opt-video-muted-wrap').hidden = isRoom();
  $('opt-audio-only-wrap').hidden = isRoom();
  $('opt-layout-wrap').hidden = isRoom();
  $('sel-audio-out-wrap').hidden = !canSelectAudioOutput();
  $('preview-avatar').textContent = initials(localName());
  $('preview-avatar').style.background = avatarColor(app.client.userId);
  $('display-name').oninput = () => {
    localStorage.setItem('greenroom.name', $('display-name').value.trim());
    $('preview-avatar').textContent = initials(localName());
  };
  $('join').onclick = () => join().catch((e) => joinFailed(e));
  $('pre-mic').onclick = () => {
    app.prefs.audioMuted = !app.prefs.audioMuted;
    $('opt-audio-muted').checked = app.prefs.audioMuted;
    renderPrejoin();
  };
  $('pre-cam').onclick = () => {
    app.prefs.videoMuted = !app.prefs.videoMuted;
    $('opt-video-muted').checked = app.prefs.videoMuted;
    renderPrejoin();
  };
  $('opt-audio-muted').onchange = (e) => { app.prefs.audioMuted = e.target.checked; renderPrejoin(); };
  $('opt-video-muted').onchange = (e) => { app.prefs.videoMuted = e.target.checked; renderPrejoin(); };
  $('opt-audio-only').onchange = (e) => { app.prefs.audioOnly = e.target.checked; renderPrejoin(); };
  $('opt-layout').onchange = (e) => { app.prefs.layout = e.target.value; };
  for (const [sel, kind] of [['sel-audio-in', 'audio'], ['sel-video-in', 'video']]) {
    $(sel).onchange = (e) => switchPreviewDevice(kind, e.target.value);
  }
  $('sel-audio-out').onchange = (e) => { app.devices.audioOutput = e.target.value; };

  // What the user may do in this call (when it exists already).
  try {
    app.callInfo = await app.client.getCall(app.cid);
    app.preCaps = new Set(app.callInfo.own_capabilities ?? []);
  } catch (e) {
    app.callInfo = null;
    app.preCaps = null;
    if (e.code === 'unauthorized' || e.code === 'unknown_key' || e.code === 'token_expired' || e.code === 'wrong_call') {
      return fatalPrejoin(e.code === 'token_expired' ? 'Your access token has expired. Get a new one and try again.' :
        e.code === 'wrong_call' ? `This token is for another call, not ${app.cid}.` : 'The server did not accept this access token.');
    }
    if (e.code !== 'not_found' && e.code !== 'missing_capability') console.warn('call lookup failed', e);
  }
  const info = app.callInfo?.call;
  $('prejoin-title').textContent = isRoom() ? (info?.live ? 'The room is live' : 'Ready to enter the room?') : 'Ready to join?';
  const n = info?.participants?.length ?? 0;
  $('prejoin-sub').textContent = info
    ? (n === 0 ? 'Nobody is here yet.' : `${n} ${n === 1 ? 'person is' : 'people are'} in the call: ${info.participants.map((p) => p.user_id).slice(0, 4).join(', ')}${n > 4 ? '…' : ''}`)
    : 'You will start this call.';

  await checkAccess(true);
  watchDevices(() => refreshDeviceLists());
  for (const name of ['microphone', 'camera']) {
    watchPermission(name, (state) => {
      if (app.screen !== 'prejoin') return;
      if (state === 'granted' || state === 'denied') checkAccess(true);
    });
  }
}

function fatalPrejoin(msg) {
  const perm = $('perm');
  perm.className = 'perm bad';
  perm.replaceChildren(h('strong', {}, 'Cannot join'), msg, h('div', {}, h('button', { class: 'btn small', onclick: () => { sessionStorage.clear(); location.search = ''; } }, 'Use another token')));
  $('join').disabled = true;
}

/** Whether this user needs to send audio / video here. */
function needs() {
  const caps = app.preCaps;
  const role = app.client.claims.role;
  const privileged = ['host', 'admin', 'moderator'].includes(role) || app.client.claims.admin;
  if (isRoom()) {
    const speaker = caps ? caps.has('send-audio') : privileged;
    return { audio: speaker, video: false, listener: !speaker };
  }
  return { audio: caps ? caps.has('send-audio') : true, video: caps ? caps.has('send-video') : true, listener: false };
}

async function checkAccess(ask) {
  stopPreview();
  const want = needs();
  const perm = $('perm');
  perm.className = 'perm';
  perm.textContent = 'Checking your camera and microphone…';
  $('join').disabled = true;
  const res = await checkMediaAccess({
    audio: true,
    video: !isRoom() && want.video,
    audioDeviceId: app.devices.audioInput,
    videoDeviceId: app.devices.videoInput,
    ask,
  });
  app.access = { microphone: res.microphone.state, camera: isRoom() ? 'unused' : res.camera.state, environment: res.environment, errors: { microphone: res.microphone.error, camera: res.camera.error } };
  app.preview.audio = res.microphone.track;
  app.preview.video = res.camera.track;
  await refreshDeviceLists();
  startMeter();
  renderPrejoin();
}

function stopPreview() {
  app.preview.audio?.stop();
  app.preview.video?.stop();
  app.preview = { audio: null, video: null };
  stopMeter();
}

async function switchPreviewDevice(kind, deviceId) {
  const key = kind === 'audio' ? 'audioInput' : 'videoInput';
  app.devices[key] = deviceId;
  try {
    const t = await captureTrack(kind, deviceId);
    app.preview[kind]?.stop();
    app.preview[kind] = t;
    if (kind === 'audio') startMeter();
    renderPrejoin();
  } catch (e) {
    toast(`Could not switch ${kind === 'audio' ? 'microphone' : 'camera'}: ${e.message}`, 'bad');
  }
}

async function refreshDeviceLists() {
  const lists = await listDevices().catch(() => ({ audioInputs: [], audioOutputs: [], videoInputs: [] }));
  fillSelect($('sel-audio-in'), lists.audioInputs, app.preview.audio?.getSettings?.().deviceId ?? app.devices.audioInput, 'Microphone');
  fillSelect($('sel-video-in'), lists.videoInputs, app.preview.video?.getSettings?.().deviceId ?? app.devices.videoInput, 'Camera');
  fillSelect($('sel-audio-out'), lists.audioOutputs, app.devices.audioOutput, 'Speaker');
  $('sel-video-in').closest('label').hidden = isRoom();
  return lists;
}

let meter = null;
function startMeter() {
  stopMeter();
  const t = app.preview.audio;
  if (!t || typeof AudioContext === 'undefined') return;
  try {
    const ctx = new AudioContext();
    const src = ctx.createMediaStreamSource(new MediaStream([t]));
    const an = ctx.createAnalyser();
    an.fftSize = 256;
    src.connect(an);
    const buf = new Uint8Array(an.fftSize);
    const tick = () => {
      an.getByteTimeDomainData(buf);
      let peak = 0;
      for (const v of buf) peak = Math.max(peak, Math.abs(v - 128));
      $('pre-meter').style.width = `${app.prefs.audioMuted ? 0 : Math.min(100, (peak / 64) * 100)}%`;
      meter.raf = requestAnimationFrame(tick);
    };
    meter = { ctx, raf: requestAnimationFrame(tick) };
  } catch {
    meter = null;
  }
}

function stopMeter() {
  if (!meter) return;
  cancelAnimationFrame(meter.raf);
  meter.ctx.close().catch(() => {});
  meter = null;
  $('pre-meter').style.width = '0';
}

/** Renders the permission panel, preview and join button from app.access. */
function renderPrejoin() {
  const a = app.access;
  if (!a) return;
  const want = needs();
  const mic = a.microphone;
  const cam = a.camera;
  const perm = $('perm');
  const retry = h('button', { class: 'btn small', type: 'button', testid: 'check-again', onclick: () => checkAccess(true) }, 'Check again');
  let cls = 'ok';
  let body = [];
  let canJoin = true;
  let audioOnly = app.prefs.audioOnly;
  let label = 'Join';
  const status = h('div', { class: 'status-row' },
    h('span', { class: `pill ${mic === 'granted' ? 'ok' : 'bad'}`, testid: 'mic-status', dataset: { state: mic } }, describeAccess('microphone', mic)),
    isRoom() ? null : h('span', { class: `pill ${cam === 'granted' ? 'ok' : 'bad'}`, testid: 'camera-status', dataset: { state: cam } }, describeAccess('camera', cam)));

  if (mic === 'insecure' || mic === 'unsupported') {
    cls = 'bad';
    canJoin = false;
    body = [h('strong', {}, mic === 'insecure' ? 'This page is not secure' : 'This browser cannot make calls'), a.environment.message];
  } else if (want.listener) {
    label = 'Join as listener';
    if (mic === 'granted') body = [h('strong', {}, 'You will join as a listener'), 'Raise your hand in the room to ask to speak. Your microphone is ready.'];
    else {
      cls = 'warn';
      body = [h('strong', {}, 'You will join as a listener'), `${describeAccess('microphone', mic)}: you can listen, but to speak you will need to allow it.`, mic === 'denied' ? instructionsList('microphone') : null, retry];
    }
  } else if (mic !== 'granted' && want.audio) {
    cls = 'bad';
    canJoin = false;
    const both = cam !== 'granted' && !isRoom();
    if (mic === 'denied') {
      body = [h('strong', {}, both ? 'Camera and microphone are blocked' : 'Microphone is blocked'),
        `You can't join ${isRoom() ? 'the stage' : 'this call'} until the browser lets Greenroom use your microphone: otherwise nobody would hear you.`,
        instructionsList(both ? 'both' : 'microphone'), retry];
    } else if (mic === 'not-found') {
      // The pills already say "No microphone found" / "No camera found": the heading names what to
      // connect (only what is missing), the text says how, without repeating either.
      const camMissing = !isRoom() && want.video && cam === 'not-found';
      body = [h('strong', { testid: 'missing-heading' }, camMissing ? 'Connect a microphone and a camera' : 'Connect a microphone'),
        camMissing ? 'This device has neither. Plug them in (a headset and a webcam work), then check again.' : 'This device has none. Plug one in (a headset works), then check again.', retry];
    } else if (mic === 'in-use') {
      body = [h('strong', {}, 'Your microphone is busy'), 'Another app is using it. Close that app, then check again.', retry];
    } else if (mic === 'prompt') {
      cls = 'warn';
      body = [h('strong', {}, 'Allow your microphone'), 'Your browser will ask for access so others can hear you.',
        h('button', { class: 'btn small primary', type: 'button', testid: 'allow-access', onclick: () => checkAccess(true) }, 'Allow access')];
    } else {
      body = [h('strong', {}, 'Microphone could not start'), a.errors.microphone ?? '', retry];
    }
  } else if (!isRoom() && want.video && cam !== 'granted') {
    cls = 'warn';
    audioOnly = true;
    label = 'Join with audio only';
    const why = cam === 'denied' ? 'Camera is blocked' : cam === 'not-found' ? 'Connect a camera to be seen' : cam === 'in-use' ? 'Your camera is busy' : 'Camera is not available';
    body = [h('strong', {}, why), 'You can join with audio only. To turn video on later, allow the camera in your browser and press the camera button in the call.',
      cam === 'denied' ? instructionsList('camera') : null,
      h('div', { class: 'actions' }, retry)];
  } else {
    body = [h('strong', {}, isRoom() ? 'Microphone ready' : 'Camera and microphone are ready'), audioOnly ? 'You will join with audio only.' : 'Check your picture and sound, then join.'];
  }
  perm.className = `perm ${cls}`;
  perm.dataset.state = cls;
  perm.replaceChildren(status, ...body.filter(Boolean).map((b) => (typeof b === 'string' ? h('div', {}, b) : b)));
  app.joinAudioOnly = audioOnly;
  const join = $('join');
  join.disabled = !canJoin;
  join.textContent = label;

  // Preview.
  const video = $('preview-video');
  const camOn = !isRoom() && app.preview.video && !app.prefs.videoMuted && !audioOnly;
  video.srcObject = camOn ? new MediaStream([app.preview.video]) : null;
  video.hidden = !camOn;
  $('preview-placeholder').hidden = !!camOn;
  $('preview-placeholder-text').textContent = isRoom() ? 'Audio room: voice only' : cam !== 'granted' ? describeAccess('camera', cam) : audioOnly ? 'Audio only' : 'Camera is off';
  const pm = $('pre-mic');
  pm.replaceChildren(icon(app.prefs.audioMuted || mic !== 'granted' ? 'micOff' : 'mic'));
  pm.classList.toggle('off', app.prefs.audioMuted || mic !== 'granted');
  pm.disabled = mic !== 'granted';
  pm.title = app.prefs.audioMuted ? 'Unmute' : 'Mute';
  const pc = $('pre-cam');
  pc.hidden = isRoom();
  pc.replaceChildren(icon(camOn ? 'cam' : 'camOff'));
  pc.classList.toggle('off', !camOn);
  pc.disabled = cam !== 'granted' || audioOnly;
}

function joinFailed(e) {
  const el = $('join-error');
  const msgs = {
    backstage: 'The room has not started yet: only hosts can enter backstage. Try again when it goes live.',
    blocked: 'You have been blocked from this call.',
    call_ended: 'This call has ended.',
    not_found: 'This call does not exist.',
    missing_capability: `You are not allowed to join this call (${e.capability ?? 'missing permission'}).`,
    wrong_call: 'This token is for another call.',
    connection_failed: 'Could not reach the server, or it refused the token.',
  };
  el.textContent = msgs[e.code] ?? `Could not join: ${e.message}`;
  el.hidden = false;
  $('join').disabled = false;
  app.lastError = e;
  app.call = null;
}

// ---- joining --------------------------------------------------------------------------------

async function join() {
  $('join').disabled = true;
  $('join-error').hidden = true;
  const want = needs();
  const audioOnly = isRoom() || app.joinAudioOnly;
  app.joinedAudioOnlyBecauseCamera = !isRoom() && !app.prefs.audioOnly && app.joinAudioOnly;
  app.devices.audioInput = app.preview.audio?.getSettings?.().deviceId ?? app.devices.audioInput;
  app.devices.videoInput = app.preview.video?.getSettings?.().deviceId ?? app.devices.videoInput;
  stopMeter();
  const tracks = { audio: want.audio || !want.listener ? app.preview.audio : null, video: audioOnly ? null : app.preview.video };
  if (!tracks.audio) app.preview.audio?.stop();
  if (!tracks.video) app.preview.video?.stop();
  app.preview = { audio: null, video: null };
  const el = callEl();
  el.settings = {
    create: true,
    audioOnly,
    startAudioMuted: app.prefs.audioMuted,
    startVideoMuted: app.prefs.videoMuted,
    layout: app.prefs.layout,
    name: localName(),
    buttons: CALL_BUTTONS,
  };
  el.actions = [];
  const joining = el.join({ client: app.client, callId: app.cid, tracks, devices: { ...app.devices } });
  app.call = el.call;
  try {
    await joining;
  } catch (e) {
    await checkAccess(true);
    throw e;
  }
  if (app.joinedAudioOnlyBecauseCamera) {
    el.setBanner('audio-only', { kind: 'info', title: 'You joined with audio only', text: 'To turn your camera on, allow it in your browser, then press Switch to video.' });
  }
  show('call');
  renderTopbar();
}

/** App-level glue: the element's events that change screens. Wired once. */
function wireCallElement() {
  const el = callEl();
  el.addEventListener('error', (ev) => { app.lastError = ev.detail.error; });
  el.addEventListener('left', (ev) => {
    const { reason, endedBy } = ev.detail;
    const call = app.call;
    app.endReason = reason;
    if (endedBy) app.endedBy = endedBy;
    if (call && app.ringCall?.callCid === call.cid) ringCallOver(call, reason);
    else if (app.screen === 'call') showEnd(reason);
  });
}

function showEnd(reason) {
  const titles = {
    call_ended: 'The call has ended',
    kicked: 'You were removed from the call',
    blocked: 'You were blocked from this call',
    disconnected: 'Connection lost',
    removed: 'You were removed from the call',
    left: 'You left the call',
  };
  $('end-title').textContent = titles[reason] ?? 'You left the call';
  $('end-text').textContent = reason === 'call_ended' && app.endedBy ? `Ended by ${app.endedBy}.` : reason === 'disconnected' ? 'The connection to the server dropped.' : '';
  $('rejoin').hidden = reason === 'call_ended' || reason === 'blocked';
  $('rejoin').onclick = () => { app.call = null; app.endedBy = null; prejoin(); };
  show('end');
}

/** The top bar in a call: what call this is (the element shows people, LIVE and connection). */
function renderTopbar() {
  const rc = app.ringCall;
  const title = rc && rc.callCid === app.call?.cid ? `${rc.kind === 'audio' ? 'Audio' : 'Video'} call with ${rc.peer}` : app.cid;
  $('topbar-call').replaceChildren(h('span', { class: 'call-id', testid: 'call-id', title }, title));
}

function showErr(e) {
  app.lastError = e;
  toast(e.message ?? String(e), 'bad');
}

// ---- ringing: idle screen, incoming and outgoing calls, history ------------------------------

/** The ring tone and the ringback tone, synthesized with WebAudio (no audio files). */
const ringtone = {
  /** @type {AudioContext|null} */
  ctx: null,
  master: null,
  timer: null,
  /** 'incoming' | 'outgoing' | null */
  playing: null,
  start(kind) {
    this.stop();
    if (typeof AudioContext === 'undefined') return;
    try {
      this.ctx ??= new AudioContext();
    } catch {
      return;
    }
    const ctx = this.ctx;
    ctx.resume().catch(() => {});
    const master = ctx.createGain();
    master.gain.value = kind === 'incoming' ? 0.2 : 0.12;
    master.connect(ctx.destination);
    this.master = master;
    this.playing = kind;
    const tone = (t0, dur, freqs) => {
      const g = ctx.createGain();
      const peak = 1 / freqs.length;
      g.gain.setValueAtTime(0, t0);
      g.gain.linearRampToValueAtTime(peak, t0 + 0.02);
      g.gain.setValueAtTime(peak, t0 + dur - 0.04);
      g.gain.linearRampToValueAtTime(0, t0 + dur);
      g.connect(master);
      for (const f of freqs) {
        const o = ctx.createOscillator();
        o.frequency.value = f;
        o.connect(g);
        o.start(t0);
        o.stop(t0 + dur + 0.02);
      }
    };
    const cycle = () => {
      const t = ctx.currentTime + 0.05;
      if (kind === 'incoming') {
        // A bright double trill, then a pause.
        for (let i = 0; i < 2; i += 1) {
          const t0 = t + i * 0.9;
          for (let j = 0; j < 4; j += 1) tone(t0 + j * 0.16, 0.13, j % 2 ? [659, 988] : [784, 1175]);
        }
        navigator.vibrate?.([500, 300, 500]);
      } else {
        tone(t, 1.5, [440, 480]); // ringback: 440 + 480 Hz
      }
    };
    cycle();
    this.timer = setInterval(cycle, kind === 'incoming' ? 3000 : 4000);
  },
  stop() {
    clearInterval(this.timer);
    this.timer = null;
    this.master?.disconnect();
    this.master = null;
    this.playing = null;
    navigator.vibrate?.(0);
  },
};
app.ringtone = ringtone;

async function home(token) {
  app.client = new GreenroomClient({ token });
  app.cid = '';
  app.callType = 'default';
  const me = app.client.userId;
  $('display-name').value = localStorage.getItem('greenroom.name') || me;
  $('home-user').textContent = me;
  $('home-avatar').textContent = initials(me);
  $('home-avatar').style.background = avatarColor(me);
  $('dial-form').onsubmit = (ev) => {
    ev.preventDefault();
    dial($('dial-user').value.trim(), document.querySelector('input[name="dial-kind"]:checked')?.value ?? 'video');
  };
  $('history-refresh').onclick = () => loadHistory();
  $('history-more').onclick = () => loadHistory(true);
  $('ring-accept').replaceChildren(icon('phone'));
  $('ring-reject').replaceChildren(icon('phone'));
  $('ring-cancel').replaceChildren(icon('phone'));
  $('ring-accept').onclick = () => acceptIncoming(false);
  $('ring-accept-audio').onclick = () => acceptIncoming(true);
  $('ring-reject').onclick = () => rejectIncoming();
  $('ring-cancel').onclick = () => cancelOutgoing();
  showHome();
  if (app.client.claims.call) {
    notice(`This token is limited to the call ${app.client.claims.call}: it can only ring for that call.`, 'bad');
  }
  let deviceId = sessionStorage.getItem('greenroom.device');
  if (!deviceId) {
    deviceId = randomId('web-');
    sessionStorage.setItem('greenroom.device', deviceId);
  }
  const ring = new RingClient(app.client, { deviceId });
  app.client.ringing = ring;
  app.ring = ring;
  wireRing(ring);
  try {
    await ring.connect();
  } catch (e) {
    app.lastError = e;
    notice(`Cannot reach the server: ${e.message}. Retrying…`, 'bad');
  }
}

function showHome() {
  show('home');
  document.title = 'Greenroom';
  $('topbar-call').textContent = '';
  renderRingStatus();
  loadHistory();
}

function notice(text, kind = '') {
  const el = $('home-notice');
  el.textContent = text;
  el.className = `notice ${kind}`;
  el.hidden = !text;
}

function renderRingStatus() {
  const el = $('ring-status');
  const st = app.ring?.state ?? 'connecting';
  el.dataset.state = st;
  el.textContent = { connected: 'Online: you can receive calls', connecting: 'Connecting…', reconnecting: 'Reconnecting…', closed: 'Offline' }[st] ?? st;
  el.className = `pill ${st === 'connected' ? 'ok' : st === 'closed' ? 'bad' : 'warn'}`;
  $('dial').disabled = st !== 'connected';
}

function wireRing(ring) {
  ring.on('connectionState', () => renderRingStatus());
  ring.on('error', (e) => { app.lastError = e; console.warn('ringing', e); });
  ring.on('incomingCall', (ev) => {
    if (app.incoming || app.outgoing || app.ringCall || app.screen === 'call' || app.screen === 'prejoin') {
      ring.rejectCall(ev.callCid, 'busy').catch(() => {});
      toast(`${ev.callerUserId} called you while you were busy`);
      return;
    }
    app.incoming = ev;
    showIncoming(ev);
  });
  const incomingOver = (ev, text) => {
    if (app.incoming?.callCid !== ev.callCid) return false;
    ringtone.stop();
    app.incoming = null;
    notice(text, text.startsWith('Missed') ? 'bad' : '');
    showHome();
    loadHistorySoon();
    return true;
  };
  ring.on('stopRinging', (ev) => incomingOver(ev, 'Answered on another device'));
  ring.on('callCancelled', (ev) => incomingOver(ev, `Missed call from ${app.incoming?.callerUserId ?? ev.by}`));
  ring.on('callMissed', (ev) => {
    if (!incomingOver(ev, `Missed call from ${app.incoming?.callerUserId ?? ''}`) && app.outgoing?.callCid === ev.callCid) {
      outgoingOver('missed', `${peerOf(app.outgoing)} did not answer`);
    }
  });
  ring.on('callAccepted', (ev) => {
    const o = app.outgoing;
    if (o?.callCid !== ev.callCid || o.state !== 'ringing') return;
    o.state = 'accepted';
    o.previewReady.then((tracks) => {
      o.preview = null;
      startRingCall(ev.callCid, o.kind, ev.userId, tracks);
    });
  });
  ring.on('callRejected', (ev) => {
    const o = app.outgoing;
    if (o?.callCid !== ev.callCid) return;
    if (ev.call && ev.call.phase !== 'ended') {
      toast(`${ev.userId} ${ev.reason === 'busy' ? 'is busy' : 'declined'}`);
      return;
    }
    outgoingOver(ev.reason === 'busy' ? 'busy' : 'rejected', ev.reason === 'busy' ? `${ev.userId} is busy` : `${ev.userId} declined your call`);
  });
  ring.on('callEnded', (ev) => {
    if (incomingOver(ev, `Missed call from ${app.incoming?.callerUserId ?? ev.endedBy}`)) return;
    if (app.outgoing?.callCid === ev.callCid && app.outgoing.state === 'ringing') {
      outgoingOver('ended', 'The call ended');
      return;
    }
    if (app.ringCall?.callCid === ev.callCid) {
      app.endedBy = ev.endedBy;
      app.call?.leave();
    }
  });
  ring.on('videoRequested', (ev) => {
    if (app.ringCall?.callCid !== ev.callCid) return;
    callEl().setBanner('video-request', { kind: 'info', title: `${ev.requestedBy} wants to switch to video`, text: 'Your camera turns on when you accept.',
      action: { label: 'Turn on video', onClick: () => ring.acceptVideo(ev.callCid).catch(showErr) } });
  });
  ring.on('switchedToVideo', (ev) => {
    if (app.ringCall?.callCid !== ev.callCid || !app.call) return;
    app.ringCall.kind = 'video';
    callEl().clearBanner('video-request');
    if (app.call.settings.audioOnly) app.call.enableVideo().catch(showErr);
    toast('Switched to video');
  });
}

const peerOf = (o) => (o?.calleeUserIds ?? []).join(', ');

function showIncoming(ev) {
  const who = ev.callerUserId;
  $('incoming-title').textContent = who;
  $('incoming-avatar').textContent = initials(who);
  $('incoming-avatar').style.background = avatarColor(who);
  $('incoming-kind').textContent = `Incoming ${ev.kind === 'audio' ? 'audio' : 'video'} call`;
  const others = (ev.members ?? []).filter((u) => u !== app.client.userId);
  $('incoming-sub').textContent = ev.groupId ? `Group ${ev.groupId}${others.length ? ` · also ringing ${others.join(', ')}` : ''}` : 'is calling you…';
  $('ring-accept-audio').hidden = ev.kind !== 'video';
  for (const id of ['ring-accept', 'ring-reject', 'ring-accept-audio']) $(id).disabled = false;
  $('topbar-call').textContent = 'Incoming call';
  document.title = `Incoming call from ${who}`;
  show('incoming');
  ringtone.start('incoming');
}

async function acceptIncoming(audioOnly) {
  const inc = app.incoming;
  if (!inc) return;
  for (const id of ['ring-accept', 'ring-reject', 'ring-accept-audio']) $(id).disabled = true;
  ringtone.stop();
  try {
    await app.ring.acceptCall(inc.callCid);
  } catch (e) {
    app.lastError = e;
    app.incoming = null;
    notice(e.status === 409 || e.code === 'not_found' ? `The call from ${inc.callerUserId} is no longer available` : `Could not answer: ${e.message}`, 'bad');
    showHome();
    return;
  }
  app.incoming = null;
  await startRingCall(inc.callCid, audioOnly ? 'audio' : inc.kind, inc.callerUserId, null);
}

function rejectIncoming() {
  const inc = app.incoming;
  if (!inc) return;
  ringtone.stop();
  app.incoming = null;
  app.ring.rejectCall(inc.callCid, 'rejected').catch((e) => { app.lastError = e; });
  notice(`You declined ${inc.callerUserId}'s call`);
  showHome();
  loadHistorySoon();
}

async function dial(userId, kind) {
  const err = $('dial-error');
  err.hidden = true;
  if (!userId) return;
  if (userId === app.client.userId) {
    err.textContent = 'You cannot call yourself.';
    err.hidden = false;
    return;
  }
  notice('');
  const o = { callCid: `default:${randomId()}`, calleeUserIds: [userId], kind, state: 'ringing', preview: null, previewReady: null };
  app.outgoing = o;
  $('outgoing-title').textContent = userId;
  $('outgoing-avatar').textContent = initials(userId);
  $('outgoing-avatar').style.background = avatarColor(userId);
  $('outgoing-avatar').classList.add('ringing');
  $('outgoing-kind').textContent = kind === 'audio' ? 'Audio call' : 'Video call';
  setOutgoingStatus('ringing', 'Calling…');
  $('ring-cancel-label').textContent = 'Cancel';
  $('ring-cancel').disabled = false;
  $('outgoing-preview').hidden = true;
  $('topbar-call').textContent = 'Outgoing call';
  show('outgoing');
  ringtone.start('outgoing');
  // The camera / microphone start now (the browser may ask while it rings) and go to the call.
  o.previewReady = capturePreview(o).catch(() => null);
  try {
    const info = await app.ring.initiateCall({ userIds: [userId], kind, callCid: o.callCid });
    if (app.outgoing !== o) return;
    if (info.phase === 'ended') {
      outgoingOver(info.outcome ?? 'ended', info.outcome === 'busy' ? `${userId} is busy` : `${userId} could not be reached`);
    } else if (o.state === 'ringing') {
      setOutgoingStatus('ringing', 'Ringing…');
    }
  } catch (e) {
    app.lastError = e;
    if (app.outgoing !== o) return;
    const why = e.code === 'not_found' ? `${userId} was not found` : e.status === 409 ? `Cannot call now: ${e.message}` : `Could not call ${userId}: ${e.message}`;
    outgoingOver('error', why);
  }
}

/** Captures the microphone (and camera) while it rings; resolves with the tracks for the call, or null. */
async function capturePreview(o) {
  const tracks = { audio: null, video: null };
  tracks.audio = await captureTrack('audio', app.devices.audioInput).catch(() => null);
  if (o.kind === 'video') tracks.video = await captureTrack('video', app.devices.videoInput).catch(() => null);
  if (o.state !== 'ringing' && o.state !== 'accepted') {
    // Over before the devices started: release them.
    tracks.audio?.stop();
    tracks.video?.stop();
    return null;
  }
  o.preview = tracks;
  if (tracks.video && o.state === 'ringing') {
    $('outgoing-video').srcObject = new MediaStream([tracks.video]);
    $('outgoing-preview').hidden = false;
  }
}

function setOutgoingStatus(state, text) {
  const el = $('outgoing-status');
  el.dataset.state = state;
  el.textContent = text;
}

function releasePreview(o) {
  o.preview?.audio?.stop();
  o.preview?.video?.stop();
  o.preview = null;
  $('outgoing-video').srcObject = null;
  $('outgoing-preview').hidden = true;
}

function cancelOutgoing() {
  const o = app.outgoing;
  if (!o) return;
  if (o.state === 'ringing') {
    app.ring.cancelCall(o.callCid).catch((e) => { app.lastError = e; });
    outgoingOver('cancelled', `You cancelled the call to ${peerOf(o)}`, 0);
  } else {
    outgoingOver(o.state, $('outgoing-status').textContent, 0);
  }
}

/** The outgoing call is over without a conversation: say why, then back to the idle screen. */
function outgoingOver(state, text, delayMs = 2500) {
  const o = app.outgoing;
  if (!o) return;
  ringtone.stop();
  releasePreview(o);
  o.state = state;
  setOutgoingStatus(state, text);
  $('outgoing-avatar').classList.remove('ringing');
  $('ring-cancel-label').textContent = 'Close';
  const done = () => {
    if (app.outgoing !== o) return;
    app.outgoing = null;
    notice(text, state === 'cancelled' ? '' : 'bad');
    showHome();
    loadHistorySoon();
  };
  if (delayMs) setTimeout(done, delayMs);
  else done();
}

/** Both sides join the media call once someone accepted. */
async function startRingCall(cid, kind, peer, tracks) {
  ringtone.stop();
  if (app.outgoing?.callCid === cid) app.outgoing = null;
  $('outgoing-video').srcObject = null;
  $('outgoing-preview').hidden = true;
  app.ringCall = { callCid: cid, kind, peer };
  app.cid = cid;
  app.callType = 'default';
  app.endedBy = null;
  const el = callEl();
  // A rung call: "End call" ends it for both sides (instead of Leave), and an audio call asks the
  // other side before switching to video (instead of switching at once).
  el.settings = { create: true, audioOnly: kind === 'audio', name: localName(), buttons: CALL_BUTTONS.filter((b) => !['leave', 'end-call', 'switch-video'].includes(b)) };
  el.actions = [
    { id: 'ask-video', label: 'Ask for video', icon: 'video', testid: 'ask-video', visible: (c) => c.settings.audioOnly && c.hasCapability('send-video'),
      onClick: (c) => app.ring.requestVideo(c.cid).then(() => el.toast('Asked to switch to video')) },
    { id: 'hang-up', label: 'End call', icon: 'leave', kind: 'leave', testid: 'hang-up', onClick: () => hangUp() },
  ];
  $('topbar-call').textContent = `Connecting to ${peer}…`;
  const joining = el.join({
    client: app.client,
    callId: cid,
    tracks: { audio: tracks?.audio ?? null, video: kind === 'audio' ? null : tracks?.video ?? null },
    devices: { ...app.devices },
  });
  app.call = el.call;
  try {
    await joining;
  } catch (e) {
    app.lastError = e;
    if (kind === 'audio') tracks?.video?.stop();
    app.ringCall = null;
    app.call = null;
    app.ring.endCall(cid).catch(() => {});
    notice(`Could not join the call: ${e.message}`, 'bad');
    showHome();
    return;
  }
  if (app.ringCall?.callCid !== cid) return; // ended while joining
  document.title = `Call with ${peer}`;
  show('call');
  renderTopbar();
}

/** Hang up a rung call: ends it for both sides (the other page returns to idle too). */
async function hangUp() {
  const rc = app.ringCall;
  if (!rc) return;
  app.endedBy = app.client.userId;
  await app.ring.endCall(rc.callCid).catch((e) => { app.lastError = e; });
  await app.call?.leave();
}

function ringCallOver(call, reason) {
  const rc = app.ringCall;
  if (rc?.callCid !== call.cid) return;
  app.ringCall = null;
  app.call = null;
  app.cid = '';
  const by = app.endedBy;
  notice(reason === 'disconnected' ? `Lost the connection to the call with ${rc.peer}`
    : by && by !== app.client.userId ? `${by} ended the call` : `Call with ${rc.peer} ended`);
  showHome();
  loadHistorySoon();
}

let historySeq = 0;
async function loadHistory(more = false) {
  if (!app.client) return;
  const seq = ++historySeq;
  try {
    const r = await app.client.callHistory({ limit: 20, cursor: more ? app.historyNext : undefined });
    if (seq !== historySeq) return;
    app.history = more ? app.history.concat(r?.calls ?? []) : (r?.calls ?? []);
    app.historyNext = r?.next ?? null;
    renderHistory();
  } catch (e) {
    if (seq !== historySeq) return;
    app.lastError = e;
    $('history').replaceChildren(h('li', { class: 'empty' }, `Could not load the history: ${e.message}`));
  }
}

/** Records are written as calls resolve: read again a moment later. */
function loadHistorySoon() {
  loadHistory();
  setTimeout(() => { if (app.screen === 'home') loadHistory(); }, 1500);
}

function fmtDuration(ms) {
  const s = Math.round(ms / 1000);
  const m = Math.floor(s / 60);
  return m >= 60 ? `${Math.floor(m / 60)}:${String(m % 60).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}` : `${m}:${String(s % 60).padStart(2, '0')}`;
}

function fmtWhen(ms) {
  const d = new Date(ms);
  const today = new Date();
  return d.toDateString() === today.toDateString() ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) : d.toLocaleDateString([], { month: 'short', day: 'numeric' });
}

function outcomeLabel(rec, outgoing) {
  switch (rec.outcome) {
    case 'accepted':
      return rec.duration_ms != null ? fmtDuration(rec.duration_ms) : rec.ended_at_ms ? 'Answered' : 'In progress';
    case 'missed':
      return outgoing ? 'No answer' : 'Missed';
    case 'rejected':
    case 'declined':
      return 'Declined';
    case 'cancelled':
      return outgoing ? 'Cancelled' : 'Missed';
    case 'busy':
      return 'Busy';
    default:
      return rec.outcome;
  }
}

function renderHistory() {
  const me = app.client.userId;
  const rows = app.history.map((rec) => {
    const outgoing = rec.caller_user_id === me;
    const peer = outgoing ? (rec.group_id ? `group ${rec.group_id}` : rec.callee_user_ids.join(', ')) : rec.caller_user_id;
    const label = outcomeLabel(rec, outgoing);
    const bad = !outgoing && (rec.outcome === 'missed' || rec.outcome === 'cancelled');
    return h('li', { testid: 'history-row', dataset: { sessionId: rec.session_id, callCid: rec.call_cid, outcome: rec.outcome, direction: outgoing ? 'outgoing' : 'incoming', peer } },
      avatar(peer, peer),
      h('div', { class: 'who' },
        h('strong', {}, peer),
        h('small', {},
          h('span', { class: 'dir', title: outgoing ? 'Outgoing' : 'Incoming' }, outgoing ? '↗ Outgoing' : '↙ Incoming'),
          h('span', {}, `· ${rec.kind}`),
          h('span', { class: `outcome ${bad ? 'missed' : rec.outcome}` }, `· ${label}`))),
      h('div', { class: 'when' }, fmtWhen(rec.started_at_ms)),
      rec.group_id ? null : h('button', { class: 'btn small ghost', title: `Call ${peer}`, testid: 'call-back', disabled: app.ring?.state !== 'connected',
        onclick: () => dial(peer, rec.kind) }, icon('phone')));
  });
  $('history').replaceChildren(...(rows.length ? rows : [h('li', { class: 'empty' }, 'No calls yet. Call someone: their devices ring.')]));
  $('history-more').hidden = !app.historyNext;
}

// A click anywhere resumes audio that the browser's autoplay policy paused.
document.addEventListener('click', () => {
  if (ringtone.playing && ringtone.ctx?.state === 'suspended') ringtone.ctx.resume().catch(() => {});
});
window.addEventListener('unhandledrejection', (ev) => { app.lastError = ev.reason; console.warn('unhandled', ev.reason); });
const env = environmentCheck();
if (!env.secure) console.warn(env.message);
wireCallElement();
boot();
