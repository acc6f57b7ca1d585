// Minimal Greenroom media client for end-to-end tests. Plain ES module, no build step.
//
// Query string:
//   token   JWT for /v1/signal (required)
//   call    call cid, e.g. default:room1 (required)
//   name    label shown on the page (optional)
//   signal  full WebSocket URL (optional; default ws(s)://<this host>/v1/signal)
//   audio=0 / video=0   do not capture/publish that kind (optional)
//
// Flow: getUserMedia (microphone and camera separately) -> open the WebSocket -> join (create) ->
// publish on the publisher RTCPeerConnection (client offers, no trickle) -> answer every
// subscriber_offer on the subscriber RTCPeerConnection -> show received tracks.
//
// Exposes window.greenroom = { state, error, errors, events, participant, local, remote, pcs,
//   async stats() } for the test harness. `state` goes
//   init -> media -> joining -> joined -> publishing -> published, or `error` (see `error`),
//   or `closed` when the socket closes after a successful join.

const params = new URLSearchParams(location.search);
const token = params.get('token') || '';
const callCid = params.get('call') || '';
const name = params.get('name') || '';
const wantAudio = params.get('audio') !== '0';
const wantVideo = params.get('video') !== '0';
const defaultSignal = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/signal`;
const signalUrl = params.get('signal') || defaultSignal;

const GATHER_TIMEOUT_MS = 5000;
const PING_INTERVAL_MS = 20000;
const MAX_EVENTS = 500;

const $ = (id) => document.getElementById(id);

/** Track info of the subscriber connection, by mid (from the latest subscriber_offer). */
const remoteByMid = new Map();

const gr = {
  state: 'init',
  /** The error that ended the session (state `error`), or null. */
  error: null,
  /** Every error seen, fatal or not, as strings. */
  errors: [],
  /** Log of what happened: {t, dir: 'in'|'out'|'local', type, ...}. */
  events: [],
  /** The participant from `joined`. */
  participant: null,
  /** Local capture: {audio: {label, readyState}|null, video: ...|null}. */
  local: { audio: null, video: null },
  /** Tracks of the latest subscriber offer: [{mid, track_id, user_id, source, muted, kind}]. */
  remote: [],
  /** Connection states. */
  pcs: { publisher: 'new', subscriber: 'new', publisherIce: 'new', subscriberIce: 'new' },
  /** Per received track: {mid, kind, user_id, source, track_id, framesDecoded, bytesReceived, packetsReceived}. */
  async stats() {
    const out = [];
    const report = await subPc.getStats();
    report.forEach((s) => {
      if (s.type !== 'inbound-rtp') return;
      const info = remoteByMid.get(s.mid) || {};
      out.push({
        mid: s.mid ?? null,
        kind: s.kind,
        user_id: info.user_id ?? null,
        participant_id: info.participant_id ?? null,
        source: info.source ?? null,
        track_id: info.track_id ?? null,
        framesDecoded: s.kind === 'video' ? (s.framesDecoded ?? 0) : undefined,
        bytesReceived: s.bytesReceived ?? 0,
        packetsReceived: s.packetsReceived ?? 0,
      });
    });
    return out;
  },
};
window.greenroom = gr;

function now() {
  return Math.round(performance.now());
}

function record(ev) {
  gr.events.push({ t: now(), ...ev });
  if (gr.events.length > MAX_EVENTS) gr.events.splice(0, gr.events.length - MAX_EVENTS);
  const line = `${now()} ${ev.dir} ${ev.type}${ev.detail ? ' ' + ev.detail : ''}\n`;
  const log = $('log');
  log.textContent += line;
  log.scrollTop = log.scrollHeight;
}

function setState(s) {
  if (gr.state === 'error') return; // error is final
  gr.state = s;
  const el = $('status');
  el.textContent = s;
  el.dataset.state = s;
  record({ dir: 'local', type: 'state', detail: s });
}

function showError(msg) {
  gr.errors.push(msg);
  $('errors').textContent = gr.errors.join('\n');
  record({ dir: 'local', type: 'error', detail: msg });
  console.error('[greenroom]', msg);
}

/** A fatal error: the session is over. */
function fail(msg) {
  showError(msg);
  if (gr.state === 'error') return;
  gr.error = msg;
  setState('error');
  try { ws?.close(); } catch { /* already closed */ }
}

function describe(e) {
  if (!e) return String(e);
  if (e.name || e.message) return `${e.name || 'Error'}: ${e.message || ''}`;
  return String(e);
}

// ---- connections -------------------------------------------------------------------------

const pcConfig = { iceServers: [], bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require' };
const pubPc = new RTCPeerConnection(pcConfig);
const subPc = new RTCPeerConnection(pcConfig);

for (const [label, pc] of [['publisher', pubPc], ['subscriber', subPc]]) {
  pc.addEventListener('connectionstatechange', () => {
    gr.pcs[label] = pc.connectionState;
    record({ dir: 'local', type: `${label}.connection`, detail: pc.connectionState });
    if (pc.connectionState === 'failed') showError(`${label} connection failed (ICE/DTLS)`);
  });
  pc.addEventListener('iceconnectionstatechange', () => {
    gr.pcs[`${label}Ice`] = pc.iceConnectionState;
  });
}

/** Resolves when ICE gathering is complete (or after a timeout: what was gathered is used). */
function gatheringComplete(pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      showError('ICE gathering did not complete in time; sending the candidates gathered so far');
      done();
    }, GATHER_TIMEOUT_MS);
    function check() {
      if (pc.iceGatheringState === 'complete') done();
    }
    function done() {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', check);
      resolve();
    }
    pc.addEventListener('icegatheringstatechange', check);
  });
}

// ---- signaling ---------------------------------------------------------------------------

let ws = null;
let pingTimer = null;
let joined = false;

function send(msg) {
  if (!ws || ws.readyState !== WebSocket.OPEN) {
    showError(`cannot send ${msg.type}: socket not open`);
    return false;
  }
  ws.send(JSON.stringify(msg));
  record({ dir: 'out', type: msg.type });
  return true;
}

function connect() {
  return new Promise((resolve) => {
    setState('joining');
    try {
      ws = new WebSocket(`${signalUrl}?token=${encodeURIComponent(token)}`);
    } catch (e) {
      fail(`cannot open WebSocket ${signalUrl}: ${describe(e)}`);
      resolve();
      return;
    }
    let opened = false;
    ws.addEventListener('open', () => {
      opened = true;
      record({ dir: 'local', type: 'ws.open' });
      send({ type: 'join', call_cid: callCid, create: true });
      pingTimer = setInterval(() => send({ type: 'ping' }), PING_INTERVAL_MS);
      resolve();
    });
    ws.addEventListener('error', () => {
      // The close event follows with the code; report there.
      record({ dir: 'local', type: 'ws.error' });
    });
    ws.addEventListener('close', (ev) => {
      clearInterval(pingTimer);
      record({ dir: 'local', type: 'ws.close', detail: `${ev.code} ${ev.reason}` });
      if (!opened) {
        fail(`WebSocket to ${signalUrl} failed (close code ${ev.code}${ev.reason ? ': ' + ev.reason : ''}); is the server running?`);
      } else if (!joined) {
        fail(`WebSocket closed before joined (code ${ev.code}${ev.reason ? ': ' + ev.reason : ''})`);
      } else if (gr.state !== 'error') {
        showError(`WebSocket closed (code ${ev.code}${ev.reason ? ': ' + ev.reason : ''})`);
        setState('closed');
      }
      resolve();
    });
    ws.addEventListener('message', (ev) => {
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        showError(`non-JSON message from server: ${String(ev.data).slice(0, 200)}`);
        return;
      }
      onMessage(msg).catch((e) => fail(`handling ${msg?.type}: ${describe(e)}`));
    });
  });
}

// Subscriber offers are applied one at a time, in order.
let subQueue = Promise.resolve();

async function onMessage(msg) {
  const type = msg?.type ?? '?';
  record({ dir: 'in', type, detail: type === 'error' ? `${msg.code}: ${msg.message}` : undefined });
  switch (type) {
    case 'joined':
      joined = true;
      gr.participant = msg.participant ?? null;
      setState('joined');
      await publish();
      break;
    case 'publish_answer':
      await pubPc.setRemoteDescription({ type: 'answer', sdp: msg.sdp });
      setState('published');
      break;
    case 'subscriber_offer':
      subQueue = subQueue.then(() => answerSubscriber(msg)).catch((e) => fail(`subscriber negotiation: ${describe(e)}`));
      await subQueue;
      break;
    case 'stop_publishing':
      await stopPublishing(msg.sources || [], msg.reason);
      break;
    case 'error': {
      const text = `server error ${msg.code}${msg.capability ? ' (' + msg.capability + ')' : ''}${msg.request ? ' on ' + msg.request : ''}: ${msg.message}`;
      if (!joined) fail(text);
      else showError(text);
      break;
    }
    case 'going_away':
      showError(`server going away in ${msg.drain_ms} ms`);
      break;
    default:
      // pong, left and call.* events: recorded above.
      break;
  }
}

// ---- publishing --------------------------------------------------------------------------

/** Sender per source, to stop on stop_publishing. */
const senders = new Map();
const localTracks = { audio: null, video: null };

async function capture() {
  setState('media');
  // Separate calls, so losing one permission does not end the other track.
  if (wantAudio) {
    try {
      const s = await navigator.mediaDevices.getUserMedia({ audio: true });
      localTracks.audio = s.getAudioTracks()[0] ?? null;
    } catch (e) {
      showError(`microphone: ${describe(e)}`);
    }
  }
  if (wantVideo) {
    try {
      const s = await navigator.mediaDevices.getUserMedia({ video: { width: 320, height: 240, frameRate: 15 } });
      localTracks.video = s.getVideoTracks()[0] ?? null;
    } catch (e) {
      showError(`camera: ${describe(e)}`);
    }
  }
  for (const kind of ['audio', 'video']) {
    const t = localTracks[kind];
    gr.local[kind] = t ? { label: t.label, readyState: t.readyState } : null;
    if (t) {
      t.addEventListener('ended', () => {
        gr.local[kind] = { label: t.label, readyState: 'ended' };
        showError(`local ${kind} track ended`);
      });
    }
  }
  if (localTracks.video) {
    addTile($('local'), 'local', `me (${name || 'local'}) camera`, new MediaStream([localTracks.video]), 'video');
  }
}

async function publish() {
  const tracks = [];
  if (localTracks.audio) {
    const tr = pubPc.addTransceiver(localTracks.audio, { direction: 'sendonly' });
    senders.set('microphone', tr.sender);
    tracks.push({ tr, source: 'microphone' });
  }
  if (localTracks.video) {
    const tr = pubPc.addTransceiver(localTracks.video, { direction: 'sendonly' });
    senders.set('camera', tr.sender);
    tracks.push({ tr, source: 'camera' });
  }
  if (tracks.length === 0) {
    showError('nothing to publish (no microphone and no camera); receiving only');
    return;
  }
  setState('publishing');
  const offer = await pubPc.createOffer();
  await pubPc.setLocalDescription(offer);
  await gatheringComplete(pubPc);
  send({
    type: 'publish',
    sdp: pubPc.localDescription.sdp,
    tracks: tracks.map(({ tr, source }) => ({ mid: tr.mid, source })),
  });
}

async function stopPublishing(sources, reason) {
  for (const source of sources) {
    const sender = senders.get(source);
    if (sender) {
      await sender.replaceTrack(null);
      showError(`server stopped ${source} (${reason})`);
    }
  }
}

// ---- subscribing -------------------------------------------------------------------------

async function answerSubscriber(msg) {
  remoteByMid.clear();
  for (const t of msg.tracks || []) remoteByMid.set(String(t.mid), t);
  gr.remote = (msg.tracks || []).map((t) => ({ ...t }));
  await subPc.setRemoteDescription({ type: 'offer', sdp: msg.sdp });
  const answer = await subPc.createAnswer();
  await subPc.setLocalDescription(answer);
  await gatheringComplete(subPc);
  send({ type: 'subscriber_answer', sdp: subPc.localDescription.sdp });
  // Drop tiles of mids that are gone or inactive.
  for (const tr of subPc.getTransceivers()) {
    const gone = !remoteByMid.has(String(tr.mid)) || tr.currentDirection === 'inactive';
    if (gone) document.querySelector(`[data-mid="${CSS.escape(String(tr.mid))}"]`)?.remove();
  }
}

subPc.addEventListener('track', (ev) => {
  const tr = ev.transceiver;
  const mid = String(tr?.mid ?? '');
  const info = remoteByMid.get(mid) || {};
  const kind = ev.track.kind;
  const label = `${info.user_id ?? '?'} ${info.source ?? kind} (mid ${mid})`;
  record({ dir: 'local', type: 'track', detail: label });
  document.querySelector(`[data-mid="${CSS.escape(mid)}"]`)?.remove();
  addTile($('remote'), mid, label, new MediaStream([ev.track]), kind);
});

function addTile(parent, mid, label, stream, kind) {
  const tile = document.createElement('div');
  tile.className = 'tile';
  tile.dataset.mid = mid;
  const el = document.createElement(kind === 'video' ? 'video' : 'audio');
  el.muted = true;
  el.autoplay = true;
  el.playsInline = true;
  el.srcObject = stream;
  if (kind === 'audio') el.controls = false;
  const caption = document.createElement('span');
  caption.textContent = label;
  tile.append(el, caption);
  parent.append(tile);
  el.play().catch(() => { /* autoplay of muted media is allowed; ignore a racing pause */ });
}

// ---- main --------------------------------------------------------------------------------

async function main() {
  $('who').textContent = `${name || '(no name)'} in ${callCid || '(no call)'}`;
  if (!token || !callCid) {
    fail('missing query parameters: token and call are required (?token=<JWT>&call=default:room1&name=alice)');
    return;
  }
  if (!window.RTCPeerConnection || !navigator.mediaDevices?.getUserMedia) {
    fail('this browser lacks WebRTC or getUserMedia (a secure context is required: https or localhost)');
    return;
  }
  await capture();
  await connect();
}

window.addEventListener('error', (ev) => showError(`uncaught: ${ev.message}`));
window.addEventListener('unhandledrejection', (ev) => showError(`unhandled: ${describe(ev.reason)}`));
main().catch((e) => fail(`startup: ${describe(e)}`));
