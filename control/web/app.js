// Greenroom web app: dev login, pre-join (name, devices, permission check), video call
// (grid / spotlight) and audio room (stage, audience, raised hands, backstage). Built on the SDK
// in ./sdk/ (plain ES modules, no build step).
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
  permissionInstructions,
  environmentCheck,
  listDevices,
  captureTrack,
  watchDevices,
  canSelectAudioOutput,
  browserName,
  watchPermission,
  RingClient,
  randomId,
} from './sdk/index.js';

const $ = (id) => document.getElementById(id);

/** Creates an element: h('div', {class: 'x', onclick}, child, 'text'). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v == null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'testid') el.dataset.testid = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// Inline SVG icons (stroke icons drawn for this app; no icon font or emoji font needed).
const SVG = {
  mic: '<rect x="9" y="3" width="6" height="11" rx="3"/><path d="M5 11a7 7 0 0 0 14 0M12 18v3"/>',
  micOff: '<rect x="9" y="3" width="6" height="11" rx="3"/><path d="M5 11a7 7 0 0 0 14 0M12 18v3M4 4l16 16"/>',
  cam: '<rect x="3" y="7" width="12" height="10" rx="2"/><path d="M15 11l6-3v8l-6-3z"/>',
  camOff: '<rect x="3" y="7" width="12" height="10" rx="2"/><path d="M15 11l6-3v8l-6-3zM3 4l17 16"/>',
  screen: '<rect x="3" y="4" width="18" height="12" rx="2"/><path d="M8 20h8M12 16v4M9 10l3-3 3 3M12 7v6"/>',
  hand: '<path d="M8 13V5.5a1.5 1.5 0 0 1 3 0V12M11 11V4.5a1.5 1.5 0 0 1 3 0V12M14 11V6.5a1.5 1.5 0 0 1 3 0V15a6 6 0 0 1-6 6h-1a6 6 0 0 1-5-2.7L3 14.5a1.5 1.5 0 0 1 2.5-1.6L8 15"/>',
  leave: '<path d="M4 15c4.5-4 11.5-4 16 0l-2 3-3-1v-2.5a9 9 0 0 0-6 0V17l-3 1z"/>',
  people: '<circle cx="9" cy="8" r="3.5"/><path d="M2.5 20a6.5 6.5 0 0 1 13 0M16 4.5a3.5 3.5 0 0 1 0 7M18 14a6.5 6.5 0 0 1 3.5 6"/>',
  grid: '<rect x="3" y="3" width="8" height="8" rx="1"/><rect x="13" y="3" width="8" height="8" rx="1"/><rect x="3" y="13" width="8" height="8" rx="1"/><rect x="13" y="13" width="8" height="8" rx="1"/>',
  spot: '<rect x="3" y="3" width="18" height="13" rx="1.5"/><rect x="3" y="18" width="5" height="3" rx=".5"/><rect x="9.5" y="18" width="5" height="3" rx=".5"/><rect x="16" y="18" width="5" height="3" rx=".5"/>',
  end: '<rect x="6" y="6" width="12" height="12" rx="2"/>',
  live: '<circle cx="12" cy="12" r="4" fill="currentColor"/><path d="M6.3 6.3a8 8 0 0 0 0 11.4M17.7 6.3a8 8 0 0 1 0 11.4"/>',
  phone: '<path d="M5 3.5h3.5l2 5-2.5 1.6a11 11 0 0 0 5.9 5.9l1.6-2.5 5 2V19a2 2 0 0 1-2 2A17 17 0 0 1 3 5.5a2 2 0 0 1 2-2z"/>',
  video: '<rect x="3" y="7" width="12" height="10" rx="2"/><path d="M15 11l6-3v8l-6-3z"/>',
};
function icon(name) {
  const span = document.createElement('span');
  span.className = 'svg-ico';
  span.setAttribute('aria-hidden', 'true');
  span.innerHTML = `<svg viewBox="0 0 24 24" width="22" height="22" fill="none" stroke="currentColor" stroke-width="1.8" stroke-linecap="round" stroke-linejoin="round">${SVG[name]}</svg>`;
  return span;
}
const ICON = Object.fromEntries(Object.keys(SVG).map((k) => [k, k]));

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
  requests: new Map(),
  banners: new Map(),
  joinedAudioOnlyBecauseCamera: false,
  lastError: null,
  endReason: null,
  panelOpen: false,
  activeSpeaker: null,
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

function toast(text, kind = '') {
  const el = h('div', { class: `toast ${kind}`, role: 'status' }, text);
  const box = $('toasts');
  box.append(el);
  while (box.children.length > 3) box.firstElementChild.remove();
  setTimeout(() => el.remove(), 4000);
}

function initials(name) {
  const parts = String(name || '?').split(/[\s._@-]+/).filter(Boolean);
  return (parts[0]?.[0] ?? '?') + (parts[1]?.[0] ?? '');
}

function avatarColor(id) {
  let hsh = 0;
  for (const c of String(id)) hsh = (hsh * 31 + c.charCodeAt(0)) >>> 0;
  return `hsl(${hsh % 360} 45% 38%)`;
}

function avatar(id, name, cls = 'avatar') {
  const a = h('div', { class: cls }, initials(name));
  a.style.background = avatarColor(id);
  return a;
}

const isRoom = () => app.callType === 'audio_room';
const displayName = (p) => (p.isLocal ? `${localName()} (you)` : p.name ?? p.userId);
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

function fillSelect(sel, devices, current, fallback) {
  sel.replaceChildren(...devices.map((d, i) => h('option', { value: d.deviceId, selected: d.deviceId === current }, d.label || `${fallback} ${i + 1}`)));
  if (devices.length === 0) sel.append(h('option', { value: '' }, `No ${fallback.toLowerCase()} available`));
  sel.disabled = devices.length === 0 || !devices[0].label;
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

function instructionsList(what) {
  const ins = permissionInstructions(what, browserName());
  return h('div', {}, h('span', { class: 'hint' }, `In ${ins.browser}:`), h('ol', {}, ins.steps.map((s) => h('li', {}, s))));
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
  const call = app.client.call(app.cid);
  app.call = call;
  wireCall(call);
  const tracks = { audio: want.audio || !want.listener ? app.preview.audio : null, video: audioOnly ? null : app.preview.video };
  if (!tracks.audio) app.preview.audio?.stop();
  if (!tracks.video) app.preview.video?.stop();
  app.preview = { audio: null, video: null };
  try {
    await call.join({
      create: true,
      audioOnly,
      startAudioMuted: app.prefs.audioMuted,
      startVideoMuted: app.prefs.videoMuted,
      layout: app.prefs.layout,
      name: localName(),
      tracks,
      devices: { ...app.devices },
    });
  } catch (e) {
    await checkAccess(true);
    throw e;
  }
  app.requests.clear();
  app.banners.clear();
  $('reactions').replaceChildren();
  if (app.joinedAudioOnlyBecauseCamera) {
    setBanner('audio-only', 'info', 'You joined with audio only', 'To turn your camera on, allow it in your browser, then press Camera.');
  }
  show('call');
  renderCall();
}

function wireCall(call) {
  const rerender = () => renderCall();
  call.on('participantsChanged', rerender);
  call.on('localChanged', rerender);
  call.on('layoutChanged', rerender);
  call.on('callStateChanged', rerender);
  call.on('devicesChanged', () => { if (app.panelOpen) renderCallDevices(call); });
  call.on('connectionState', renderConnection);
  call.on('participantJoined', (p) => toast(`${p.name ?? p.userId} joined`));
  call.on('participantLeft', ({ participant, reason }) => toast(`${participant.userId} ${reason === 'disconnected' ? 'lost connection' : reason === 'kicked' ? 'was removed' : 'left'}`));
  call.on('userMuted', ({ userIds, by, sources, byModerator }) => {
    if (userIds.includes(app.client.userId) && byModerator && by !== app.client.userId) {
      toast(`${by} muted your ${sources.map(sourceName).join(' and ')}`, 'bad');
    }
  });
  call.on('screenShareStarted', ({ participant, local }) => toast(local ? 'You are sharing your screen' : `${participant.userId} is sharing their screen`));
  call.on('screenShareStopped', ({ participant, local }) => toast(local ? 'You stopped sharing' : `${participant.userId} stopped sharing`));
  call.on('callSwitchedToVideo', ({ initiator }) => { if (initiator !== app.client.userId) toast(`${initiator} turned on video`); });
  call.on('speakersChanged', (speakers) => { app.activeSpeaker = speakers[0]?.participantId ?? app.activeSpeaker; });
  call.on('permissionRequest', ({ userId, permissions }) => {
    app.requests.set(userId, permissions);
    toast(`${userId} raised a hand: asks to ${permissions.map(capName).join(', ')}`);
    app.panelOpen = true;
    renderCall();
  });
  call.on('permissionRequestAnswered', ({ capability, granted }) => {
    toast(granted ? `You can ${capName(capability)} now` : `A host declined your request to ${capName(capability)}`, granted ? '' : 'bad');
    renderCall();
  });
  call.on('permissionsUpdated', rerender);
  call.on('stopPublishing', ({ sources, reason }) => {
    if (reason === 'permission_revoked') {
      const text = isRoom() && sources.includes('microphone') ? 'A host moved you back to the audience.' : `A host took away your permission to share your ${sources.map(sourceName).join(' and ')}.`;
      setBanner('revoked', 'warn', 'Permission removed', text);
    }
  });
  call.on('liveStarted', () => toast(isRoom() ? 'The room is live' : 'The call is live'));
  call.on('liveStopped', () => toast('Back to backstage'));
  call.on('deviceBlocked', ({ source }) => {
    const mic = source === 'microphone';
    setBanner(`${source}-blocked`, 'bad', mic ? 'Microphone blocked' : 'Camera blocked',
      mic ? 'Greenroom lost access to your microphone: others see you muted and cannot hear you. Allow it again and your audio comes back without leaving the call.'
        : 'Greenroom lost access to your camera: others see your name instead of video. Your audio continues. Allow the camera again and your video comes back.',
      source);
  });
  call.on('deviceRestored', ({ source }) => {
    app.banners.delete(`${source}-blocked`);
    if (source === 'camera') app.banners.delete('audio-only');
    toast(source === 'microphone' ? 'Microphone is back: you are live again' : 'Camera is back');
    renderCall();
  });
  call.on('devicePermissionChanged', ({ source, state }) => {
    if (source === 'camera' && state === 'granted' && app.joinedAudioOnlyBecauseCamera && !call.local.camera.track) {
      setBanner('audio-only', 'info', 'Camera allowed', 'Press Camera to turn your video on.');
    }
  });
  call.on('reaction', ({ participant, userId, reaction, local }) => showReaction(participant, userId, reaction, local));
  call.on('autoplayBlocked', () => setBanner('autoplay', 'info', 'Sound is paused by the browser', 'Click anywhere to hear the call.'));
  call.on('error', (e) => {
    app.lastError = e;
    const text = e.code === 'media_error' ? `Media could not be connected: ${e.message}` : e.message;
    toast(text, 'bad');
  });
  call.on('left', ({ reason }) => {
    app.endReason = reason;
    if (app.ringCall?.callCid === call.cid) ringCallOver(call, reason);
    else if (app.screen === 'call') showEnd(reason);
  });
  call.on('callEnded', ({ endedBy }) => { app.endedBy = endedBy; });
}

function sourceName(s) {
  return { microphone: 'microphone', camera: 'camera', screen_share: 'screen share', screen_share_audio: 'screen audio' }[s] ?? s;
}

function capName(c) {
  return { 'send-audio': 'speak', 'send-video': 'turn on video', screenshare: 'share the screen' }[c] ?? c;
}

function setBanner(key, kind, title, text, instructionsFor, action) {
  app.banners.set(key, { kind, title, text, instructionsFor, action });
  renderCall();
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
  $('rejoin').onclick = () => { app.call = null; prejoin(); };
  show('end');
  $('connection').hidden = true;
}

// ---- in call --------------------------------------------------------------------------------

function renderConnection() {
  const el = $('connection');
  const c = app.call?.connection;
  if (!c || app.screen !== 'call') {
    el.hidden = true;
    return;
  }
  el.hidden = false;
  const text = { connected: 'Connected', connecting: 'Connecting…', 'connecting-media': 'Connecting media…', 'media-failed': 'Media connection failed', disconnected: 'Disconnected', new: 'Starting…' }[c.overall] ?? c.overall;
  el.textContent = text;
  el.dataset.state = c.overall;
  el.className = `pill ${c.overall === 'connected' ? 'ok' : c.overall === 'media-failed' || c.overall === 'disconnected' ? 'bad' : ''}`;
}

function renderCall() {
  const call = app.call;
  if (!call || app.screen !== 'call') return;
  renderTopbar(call);
  renderBanners(call);
  if (isRoom()) renderRoom(call);
  else renderTiles(call);
  renderControls(call);
  renderReactionBar(call);
  renderPanel(call);
  renderConnection();
}

function renderTopbar(call) {
  const n = call.participants.size;
  const title = app.ringCall?.callCid === call.cid ? `${app.ringCall.kind === 'audio' ? 'Audio' : 'Video'} call with ${app.ringCall.peer}` : app.cid;
  const parts = [h('span', { class: 'call-id', testid: 'call-id', title }, title), h('span', { class: 'pill' }, `${n} ${n === 1 ? 'person' : 'people'}`)];
  if (call.info.backstageEnabled) {
    parts.push(call.info.live ? h('span', { class: 'pill live', testid: 'live-badge' }, 'LIVE') : h('span', { class: 'pill backstage', testid: 'backstage-badge' }, 'Backstage'));
  }
  $('topbar-call').replaceChildren(...parts);
}

function renderBanners(call) {
  const out = [];
  if (call.info.backstageEnabled && !call.info.live) {
    const host = call.hasCapability('update-call');
    out.push(h('div', { class: 'banner warn', testid: 'backstage-banner' },
      h('div', {}, h('strong', {}, 'Backstage'), h('div', {}, host ? 'You are backstage: only hosts and moderators are here. Listeners can join once you go live.' : 'The room is not live yet.')),
      host ? h('button', { class: 'btn danger small', testid: 'go-live', onclick: () => call.goLive().catch(showErr) }, icon('live'), ' Go live') : null));
  }
  for (const [key, b] of app.banners) {
    const source = b.instructionsFor;
    out.push(h('div', { class: `banner ${b.kind}`, testid: key, role: b.kind === 'bad' ? 'alert' : 'status' },
      h('div', {}, h('strong', {}, b.title), h('div', {}, b.text), source ? instructionsList(source) : null),
      h('div', { class: 'person-actions' },
        source ? h('button', { class: 'btn small', onclick: () => call.retryDevice(source).catch((e) => toast(`Still blocked: ${e.message}`, 'bad')) }, 'Try again') : null,
        b.action ? h('button', { class: 'btn small primary', testid: `${key}-action`, onclick: () => { app.banners.delete(key); renderCall(); b.action.onclick(); } }, b.action.label) : null,
        h('button', { class: 'icon-btn', 'aria-label': 'Dismiss', onclick: () => { app.banners.delete(key); renderCall(); } }, '✕'))));
  }
  $('banners').replaceChildren(...out);
}

const tileEls = new Map();

function ensureTile(key) {
  let t = tileEls.get(key);
  if (!t) {
    const video = h('video', { autoplay: true, playsinline: true });
    video.muted = true; // audio plays through the SDK's audio elements
    const ph = h('div', { class: 'placeholder', testid: 'video-off' });
    const name = h('div', { class: 'name' });
    t = { el: h('div', { class: 'tile' }, video, ph, name), video, ph, name, track: null };
    tileEls.set(key, t);
  }
  return t;
}

function updateTile(t, p, kind) {
  const isScreen = kind === 'screen';
  const track = isScreen ? p.tracks.screen_share : p.tracks.camera;
  const camOff = !track || (!isScreen && (p.muted.has('camera') || (p.isLocal && !app.call.localState().camera.on)));
  t.el.className = `tile${p.isLocal ? ' local' : ''}${isScreen ? ' screen' : ''}${p.speaking && !isScreen ? ' speaking' : ''}`;
  t.el.dataset.participantId = p.participantId;
  t.el.dataset.userId = p.userId;
  t.el.dataset.kind = kind;
  t.el.dataset.testid = isScreen ? 'screen-tile' : 'tile';
  t.el.dataset.videoOff = String(camOff);
  t.video.className = isScreen ? '' : 'cam';
  if (!camOff && t.track !== track) {
    t.track = track;
    t.video.srcObject = new MediaStream([track]);
  } else if (camOff && t.track) {
    t.track = null;
    t.video.srcObject = null;
  }
  t.video.hidden = camOff;
  t.ph.hidden = !camOff;
  if (camOff) {
    const blocked = p.isLocal && app.call.local.camera.blocked;
    t.ph.replaceChildren(avatar(p.userId, p.isLocal ? localName() : p.name ?? p.userId, 'avatar big'), h('span', { class: 'label' }, blocked ? 'Camera blocked' : 'Camera off'));
  }
  const micMuted = !isScreen && (p.muted.has('microphone') || !p.published.has('microphone') || (p.isLocal && !app.call.localState().microphone.on));
  t.name.replaceChildren(
    ...[micMuted ? h('span', { class: 'badge-muted', testid: 'muted-badge', title: 'Muted' }, icon('micOff')) : null,
      h('span', {}, isScreen ? `${displayName(p)}: screen` : displayName(p))].filter(Boolean));
  if (t.video.srcObject && t.video.paused) t.video.play().catch(() => {});
}

function renderTiles(call) {
  const stage = $('stage');
  stage.className = `stage${call.layout === 'spotlight' ? ' spotlight' : ''}`;
  const items = [];
  for (const p of call.participantList()) {
    items.push({ key: `${p.participantId}:cam`, p, kind: 'cam' });
    const sharing = p.isLocal ? !!p.tracks.screen_share : p.published.has('screen_share') && !p.muted.has('screen_share');
    if (sharing) items.push({ key: `${p.participantId}:screen`, p, kind: 'screen' });
  }
  const keep = new Set(items.map((i) => i.key));
  for (const [k] of tileEls) if (!keep.has(k)) tileEls.delete(k);
  for (const i of items) updateTile(ensureTile(i.key), i.p, i.kind);
  if (call.layout === 'spotlight' && items.length > 1) {
    const main = items.find((i) => i.kind === 'screen')
      ?? items.find((i) => i.p.participantId === app.activeSpeaker && !i.p.isLocal)
      ?? items.find((i) => !i.p.isLocal) ?? items[0];
    const mainBox = h('div', { class: 'spot-main' }, tileEls.get(main.key).el);
    const strip = h('div', { class: 'spot-strip' }, items.filter((i) => i !== main).map((i) => tileEls.get(i.key).el));
    stage.replaceChildren(mainBox, strip);
  } else {
    stage.replaceChildren(...items.map((i) => tileEls.get(i.key).el));
  }
  for (const t of tileEls.values()) if (t.video.srcObject && t.video.paused) t.video.play().catch(() => {});
}

function onStage(call, p) {
  if (p.isLocal) return call.hasCapability('send-audio');
  return ['host', 'moderator', 'admin'].includes(p.role) || (p.published.has('microphone') && !p.muted.has('microphone'));
}

function seat(call, p) {
  const muted = p.muted.has('microphone') || !p.published.has('microphone') || (p.isLocal && !call.localState().microphone.on);
  const hand = app.requests.has(p.userId) || (p.isLocal && call.pendingRequests.size > 0);
  return h('div', { class: `seat${p.speaking ? ' speaking' : ''}`, testid: 'seat', dataset: { userId: p.userId, participantId: p.participantId } },
    avatar(p.userId, p.isLocal ? localName() : p.name ?? p.userId),
    hand ? h('span', { class: 'hand', title: 'Hand raised' }, icon('hand')) : null,
    muted && onStage(call, p) ? h('span', { class: 'badge-muted', testid: 'muted-badge' }, icon('micOff')) : null,
    h('div', {}, displayName(p)),
    h('div', { class: 'role' }, p.role));
}

function renderRoom(call) {
  const stage = $('stage');
  stage.className = 'stage room';
  tileEls.clear();
  const all = call.participantList();
  const speakers = all.filter((p) => onStage(call, p));
  const audience = all.filter((p) => !onStage(call, p));
  stage.replaceChildren(
    h('h3', {}, `On stage · ${speakers.length}`),
    h('div', { class: 'room-grid', testid: 'room-stage' }, speakers.length ? speakers.map((p) => seat(call, p)) : h('p', { class: 'empty' }, 'Nobody is speaking yet.')),
    h('h3', {}, `Listeners · ${audience.length}`),
    h('div', { class: 'room-grid audience', testid: 'room-audience' }, audience.length ? audience.map((p) => seat(call, p)) : h('p', { class: 'empty' }, 'No listeners yet.')));
}

function iconEl(name) {
  return SVG[name] ? icon(name) : name;
}

function ctrl(opts) {
  const { icon: ic, label, onclick, cls = '', testid, disabled = false, title, pressed } = opts;
  return h('button', { class: `ctrl ${cls}`, testid, onclick, disabled, title: title ?? label, 'aria-pressed': pressed == null ? null : String(pressed) },
    h('span', { class: 'ico', 'aria-hidden': 'true' }, iconEl(ic)), h('span', { class: 'lbl' }, label));
}

function showErr(e) {
  app.lastError = e;
  toast(e.message ?? String(e), 'bad');
}

function renderControls(call) {
  const ls = call.localState();
  const out = [];
  const canAudio = call.hasCapability('send-audio');
  if (!canAudio && ls.microphone.published && !isRoom()) {
    // Audio was revoked: say so instead of offering an Unmute that the server would refuse.
    out.push(ctrl({ icon: ICON.micOff, label: 'Mic not allowed', cls: 'off', testid: 'toggle-mic', pressed: true, disabled: true, onclick: () => {} }));
  }
  // A listener moved back to the audience has no microphone control (they may raise a hand).
  if (canAudio) {
    const blocked = !!ls.microphone.blocked;
    out.push(ctrl({
      icon: ls.microphone.on ? ICON.mic : ICON.micOff,
      label: blocked ? 'Mic blocked' : ls.microphone.on ? 'Mute' : 'Unmute',
      cls: ls.microphone.on ? '' : 'off',
      testid: 'toggle-mic',
      pressed: !ls.microphone.on,
      onclick: () => (blocked ? call.retryDevice('microphone') : call.setMicrophoneMuted(ls.microphone.on)).catch(showErr),
    }));
  }
  if (!isRoom()) {
    const blocked = !!ls.camera.blocked;
    out.push(ctrl({
      icon: ls.camera.on ? ICON.cam : ICON.camOff,
      label: blocked ? 'Camera blocked' : ls.camera.on ? 'Stop video' : 'Start video',
      cls: ls.camera.on ? '' : 'off',
      testid: 'toggle-camera',
      disabled: !call.hasCapability('send-video'),
      onclick: () => (blocked ? call.retryDevice('camera') : call.setCameraMuted(ls.camera.on)).catch(showErr),
    }));
    if (call.hasCapability('screenshare')) {
      const sharing = !!call.local.screen_share.track;
      out.push(ctrl({ icon: ICON.screen, label: sharing ? 'Stop sharing' : 'Share screen', cls: sharing ? 'active' : '', testid: 'toggle-screen',
        onclick: () => (sharing ? call.stopScreenShare() : call.startScreenShare()).catch((e) => showErr(e.name === 'NotAllowedError' ? new Error('Screen sharing was cancelled or blocked') : e)) }));
    }
    out.push(ctrl({ icon: call.layout === 'grid' ? ICON.spot : ICON.grid, label: call.layout === 'grid' ? 'Spotlight' : 'Grid', testid: 'toggle-layout',
      onclick: () => call.setLayout(call.layout === 'grid' ? 'spotlight' : 'grid') }));
  }
  for (const cap of ['send-audio', 'send-video', 'screenshare']) {
    if (!call.canRequest(cap)) continue;
    if (!isRoom() && cap !== 'send-audio' && call.capabilities.has('send-audio')) continue;
    const pending = call.pendingRequests.has(cap);
    out.push(ctrl({
      icon: ICON.hand,
      label: pending ? 'Waiting…' : isRoom() ? 'Raise hand' : `Ask to ${capName(cap)}`,
      cls: pending ? 'active' : '',
      testid: pending ? 'hand-pending' : 'raise-hand',
      title: pending ? 'Your request is waiting for a host. Click to lower your hand.' : 'Ask a host for permission',
      onclick: () => (pending ? Promise.resolve(call.cancelPermissionRequest()) : call.requestPermission([cap])).then(() => pending || toast('Request sent to the hosts')).catch(showErr),
    }));
    if (isRoom()) break;
  }
  const nReq = app.requests.size;
  out.push(ctrl({ icon: ICON.people, label: nReq ? `People (${nReq})` : 'People', cls: nReq ? 'active' : '', testid: 'toggle-people', onclick: () => { app.panelOpen = !app.panelOpen; renderCall(); } }));
  if (call.info.backstageEnabled && call.info.live && call.hasCapability('update-call')) {
    out.push(ctrl({ icon: ICON.end, label: 'Stop live', testid: 'stop-live', onclick: () => call.stopLive().catch(showErr) }));
  }
  if (app.ringCall?.callCid === call.cid) {
    if (call.settings.audioOnly && call.hasCapability('send-video')) {
      out.push(ctrl({ icon: ICON.video, label: 'Ask for video', testid: 'ask-video', onclick: () => app.ring.requestVideo(call.cid).then(() => toast('Asked to switch to video')).catch(showErr) }));
    }
    out.push(ctrl({ icon: ICON.leave, label: 'End call', cls: 'leave', testid: 'hang-up', onclick: () => hangUp() }));
    $('controls').replaceChildren(...out);
    return;
  }
  out.push(ctrl({ icon: ICON.leave, label: isRoom() ? 'Leave quietly' : 'Leave', cls: 'leave', testid: 'leave', onclick: () => call.leave() }));
  if (call.hasCapability('end-call')) {
    out.push(ctrl({ icon: ICON.end, label: 'End for all', cls: 'leave', testid: 'end-call', onclick: () => { if (confirm('End the call for everyone?')) call.endCall().catch(showErr); } }));
  }
  $('controls').replaceChildren(...out);
}

// ---- reactions --------------------------------------------------------------------------------

/** The reaction bar's buttons: `type` goes on the wire, `emoji` is what everyone sees. */
const REACTIONS = [
  { type: 'like', emoji: '\u{1F44D}', label: 'Like' },
  { type: 'heart', emoji: '\u{2764}\u{FE0F}', label: 'Heart' },
  { type: 'laugh', emoji: '\u{1F602}', label: 'Laugh' },
  { type: 'clap', emoji: '\u{1F44F}', label: 'Applause' },
  { type: 'raised-hand', emoji: '\u{270B}', label: 'Raise hand' },
];
/** How long a received reaction stays on screen. */
const REACTION_SHOW_MS = 4000;

/** Shows the reaction bar only to those with `create-reaction`. */
function renderReactionBar(call) {
  const bar = $('reaction-bar');
  const can = call.hasCapability('create-reaction');
  bar.hidden = !can;
  if (!can) {
    bar.replaceChildren();
    return;
  }
  if (bar.childElementCount === REACTIONS.length) return;
  bar.replaceChildren(...REACTIONS.map((r) => h('button', {
    class: 'react-btn', type: 'button', testid: `react-${r.type}`, title: r.label, 'aria-label': r.label,
    onclick: () => app.call?.sendReaction(r.type, { emojiCode: `:${r.type}:` }).catch(showErr),
  }, r.emoji)));
}

/** Floats a reaction (with who sent it) over the call for a few seconds. */
function showReaction(participant, userId, reaction, local) {
  const known = REACTIONS.find((r) => r.type === reaction?.type);
  const emoji = known?.emoji ?? reaction?.emoji_code ?? reaction?.type ?? '';
  const who = local ? 'You' : participant?.name ?? userId ?? 'Someone';
  const el = h('div', { class: 'reaction-pop', testid: 'reaction', dataset: { userId: userId ?? '', type: reaction?.type ?? '' } },
    h('span', { class: 'emoji', 'aria-hidden': 'true' }, emoji), h('span', { class: 'who' }, `${who}${known ? '' : ` · ${reaction?.type ?? ''}`}`));
  el.setAttribute('aria-label', `${who}: ${known?.label ?? reaction?.type ?? 'reaction'}`);
  const layer = $('reactions');
  layer.append(el);
  while (layer.childElementCount > 6) layer.firstElementChild?.remove();
  setTimeout(() => el.remove(), REACTION_SHOW_MS);
}

function renderPanel(call) {
  $('panel').hidden = !app.panelOpen;
  $('panel-close').onclick = () => { app.panelOpen = false; renderCall(); };
  if (!app.panelOpen) return;
  const canPerm = call.hasCapability('update-call-permissions');
  const reqs = [...app.requests].map(([userId, perms]) => h('div', { class: 'request', testid: `request-${userId}` },
    h('p', {}, icon('hand'), ` ${userId} asks to ${perms.map(capName).join(', ')}`),
    h('div', { class: 'person-actions' },
      h('button', { class: 'btn small primary', testid: `approve-${userId}`, onclick: () => answer(userId, perms, true) }, 'Approve'),
      h('button', { class: 'btn small ghost', testid: `deny-${userId}`, onclick: () => answer(userId, perms, false) }, 'Deny'))));
  $('requests').replaceChildren(...(canPerm ? reqs : []));
  const people = call.participantList().map((p) => {
    const micMuted = p.muted.has('microphone') || !p.published.has('microphone');
    const actions = [];
    if (!p.isLocal && call.hasCapability('mute-users') && !micMuted) {
      actions.push(h('button', { class: 'btn small ghost', testid: `mute-${p.userId}`, onclick: () => call.muteUsers([p.userId], { audio: true }).catch(showErr) }, 'Mute'));
    }
    if (!p.isLocal && canPerm && !['host', 'admin', 'moderator'].includes(p.role)) {
      const speaking = p.published.has('microphone') && !p.muted.has('microphone');
      if (isRoom() || call.requestable.size) {
        actions.push(speaking
          ? h('button', { class: 'btn small ghost', testid: `revoke-${p.userId}`, onclick: () => call.revokePermissions(p.userId, ['send-audio']).catch(showErr) }, isRoom() ? 'Move to audience' : 'Revoke audio')
          : h('button', { class: 'btn small ghost', testid: `grant-${p.userId}`, onclick: () => call.grantPermissions(p.userId, ['send-audio']).catch(showErr) }, isRoom() ? 'Invite to speak' : 'Allow audio'));
      }
    }
    return h('li', { dataset: { userId: p.userId } }, avatar(p.userId, p.isLocal ? localName() : p.name ?? p.userId),
      h('div', { class: 'who' }, displayName(p), h('small', {}, `${p.role}${micMuted ? ' · muted' : ''}${p.published.has('screen_share') ? ' · sharing' : ''}`)),
      h('div', { class: 'person-actions' }, actions));
  });
  $('people').replaceChildren(...people);
  renderCallDevices(call);
}

/** The in-call device pickers: switching keeps the call (replaceTrack / setSinkId). */
async function renderCallDevices(call) {
  const lists = await listDevices().catch(() => ({ audioInputs: [], audioOutputs: [], videoInputs: [] }));
  const cur = (src) => call.local[src].track?.getSettings?.().deviceId ?? null;
  fillSelect($('call-audio-in'), lists.audioInputs, cur('microphone') ?? call.devices.audioInput, 'Microphone');
  fillSelect($('call-video-in'), lists.videoInputs, cur('camera') ?? call.devices.videoInput, 'Camera');
  fillSelect($('call-audio-out'), lists.audioOutputs, call.devices.audioOutput, 'Speaker');
  $('call-video-in-wrap').hidden = isRoom();
  $('call-audio-out-wrap').hidden = !canSelectAudioOutput();
  const sw = (kind, what) => (e) => call.switchDevice(kind, e.target.value).then(() => toast(`${what} switched`)).catch(showErr);
  $('call-audio-in').onchange = sw('audioInput', 'Microphone');
  $('call-video-in').onchange = sw('videoInput', 'Camera');
  $('call-audio-out').onchange = sw('audioOutput', 'Speaker');
}

async function answer(userId, perms, approve) {
  try {
    if (approve) await app.call.grantPermissions(userId, perms);
    else await app.call.revokePermissions(userId, perms);
    app.requests.delete(userId);
    toast(approve ? `${userId} can ${perms.map(capName).join(', ')} now` : `Declined ${userId}'s request`);
  } catch (e) {
    showErr(e);
  }
  renderCall();
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
  $('connection').hidden = true;
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
    setBanner('video-request', 'info', `${ev.requestedBy} wants to switch to video`, 'Your camera turns on when you accept.', null,
      { label: 'Turn on video', onclick: () => ring.acceptVideo(ev.callCid).catch(showErr) });
  });
  ring.on('switchedToVideo', (ev) => {
    if (app.ringCall?.callCid !== ev.callCid || !app.call) return;
    app.ringCall.kind = 'video';
    app.banners.delete('video-request');
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
  app.requests.clear();
  app.banners.clear();
  $('reactions').replaceChildren();
  const call = app.client.call(cid);
  app.call = call;
  wireCall(call);
  $('topbar-call').textContent = `Connecting to ${peer}…`;
  try {
    await call.join({
      create: true,
      audioOnly: kind === 'audio',
      name: localName(),
      tracks: { audio: tracks?.audio ?? null, video: kind === 'audio' ? null : tracks?.video ?? null },
      devices: { ...app.devices },
    });
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
  renderCall();
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
  tileEls.clear();
  $('stage').replaceChildren();
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
  if (app.banners.delete('autoplay')) {
    app.call?.resumeAudio();
    renderCall();
  }
});
window.addEventListener('unhandledrejection', (ev) => { app.lastError = ev.reason; console.warn('unhandled', ev.reason); });
const env = environmentCheck();
if (!env.secure) console.warn(env.message);
boot();
