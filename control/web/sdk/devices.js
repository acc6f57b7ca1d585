// @ts-check
// Devices and browser permissions: secure-context check, the Permissions API, getUserMedia error
// classification, device lists and per-browser instructions. No server needed.

/**
 * What we know about one kind of device access.
 * - `granted`: a track was captured (or the Permissions API says granted);
 * - `denied`: the user or the browser blocked access (NotAllowedError / SecurityError, or
 *   Permissions API `denied`);
 * - `prompt`: not asked yet;
 * - `not-found`: no such device (NotFoundError / OverconstrainedError, or none listed);
 * - `in-use`: the device exists but cannot be opened (NotReadableError: another app holds it);
 * - `insecure`: the page is not a secure context (needs https or localhost);
 * - `unsupported`: the browser has no getUserMedia;
 * - `error`: anything else (see `error`).
 * @typedef {'granted'|'denied'|'prompt'|'not-found'|'in-use'|'insecure'|'unsupported'|'error'} AccessState
 */

/**
 * @typedef {object} AccessResult
 * @property {AccessState} state
 * @property {string|null} error  The DOMException name and message, when capture failed.
 * @property {MediaStreamTrack|null} track  The captured track (caller owns it and must stop it).
 */

/**
 * @typedef {object} DeviceLists
 * @property {MediaDeviceInfo[]} audioInputs
 * @property {MediaDeviceInfo[]} audioOutputs
 * @property {MediaDeviceInfo[]} videoInputs
 */

/** Permission names of the Permissions API, by device kind. */
export const PERMISSION_NAME = { audio: 'microphone', video: 'camera' };

/** Default capture constraints. */
export const VIDEO_CONSTRAINTS = { width: { ideal: 640 }, height: { ideal: 360 }, frameRate: { ideal: 24 } };

/**
 * Whether camera and microphone can work here at all.
 * @returns {{secure: boolean, supported: boolean, message: string|null}}
 */
export function environmentCheck() {
  const secure = typeof window === 'undefined' ? true : window.isSecureContext !== false;
  const supported = !!(globalThis.navigator?.mediaDevices?.getUserMedia && globalThis.RTCPeerConnection);
  let message = null;
  if (!secure) {
    message = `This page was opened over plain http (${location.host}). Browsers only give camera and microphone ` +
      'access to secure pages: open it over https, or on localhost.';
  } else if (!supported) {
    message = 'This browser cannot make calls (no WebRTC or camera/microphone support). Try a recent Chrome, Firefox, Safari or Edge.';
  }
  return { secure, supported, message };
}

/** @returns {'chrome'|'edge'|'firefox'|'safari'|'other'} */
export function browserName(ua = globalThis.navigator?.userAgent ?? '') {
  if (/Edg\//.test(ua)) return 'edge';
  if (/Firefox\//.test(ua)) return 'firefox';
  if (/Chrom(e|ium)\//.test(ua)) return 'chrome';
  if (/Safari\//.test(ua)) return 'safari';
  return 'other';
}

/**
 * Steps to allow a device in the current browser.
 * @param {'microphone'|'camera'|'both'} what
 * @param {string} [browser]
 * @returns {{browser: string, steps: string[]}}
 */
export function permissionInstructions(what, browser = browserName()) {
  const dev = what === 'both' ? 'camera and microphone' : what;
  switch (browser) {
    case 'chrome':
    case 'edge':
      return {
        browser: browser === 'edge' ? 'Edge' : 'Chrome',
        steps: [
          'Click the camera icon or the site-settings icon at the left of the address bar.',
          `Set ${dev} to "Allow".`,
          'Come back to this tab: the call picks the device up by itself (reload if it does not).',
        ],
      };
    case 'firefox':
      return {
        browser: 'Firefox',
        steps: [
          'Click the crossed-out camera or microphone icon in the address bar.',
          `Clear the "Blocked" setting for ${dev} (the × next to it).`,
          'Reload the page and choose "Allow" when Firefox asks.',
        ],
      };
    case 'safari':
      return {
        browser: 'Safari',
        steps: [
          'Open Safari > Settings… > Websites.',
          `Choose ${what === 'both' ? 'Camera, then Microphone' : what === 'camera' ? 'Camera' : 'Microphone'} in the list on the left.`,
          'Set this website to "Allow", then reload the page.',
        ],
      };
    default:
      return {
        browser: 'your browser',
        steps: [
          `Open your browser's site settings for this page.`,
          `Allow the ${dev}.`,
          'Reload the page.',
        ],
      };
  }
}

/**
 * The Permissions API state of `camera` or `microphone`, or `unsupported`.
 * @param {'camera'|'microphone'} name
 * @returns {Promise<'granted'|'denied'|'prompt'|'unsupported'>}
 */
export async function queryPermission(name) {
  try {
    const s = await navigator.permissions.query({ name });
    return s.state;
  } catch {
    return 'unsupported';
  }
}

/**
 * Watches a permission; calls `onChange(state)` on every change. Returns a stop function.
 * @param {'camera'|'microphone'} name
 * @param {(state: string) => void} onChange
 * @returns {Promise<() => void>}
 */
export async function watchPermission(name, onChange) {
  try {
    const status = await navigator.permissions.query({ name });
    const handler = () => onChange(status.state);
    status.addEventListener('change', handler);
    return () => status.removeEventListener('change', handler);
  } catch {
    return () => {};
  }
}

/**
 * Maps a getUserMedia failure to an access state.
 * @param {any} e
 * @returns {AccessState}
 */
export function classifyMediaError(e) {
  switch (e?.name) {
    case 'NotAllowedError':
    case 'PermissionDeniedError':
    case 'SecurityError':
      return 'denied';
    case 'NotFoundError':
    case 'DevicesNotFoundError':
    case 'OverconstrainedError':
      return 'not-found';
    case 'NotReadableError':
    case 'TrackStartError':
    case 'AbortError':
      return 'in-use';
    case 'TypeError':
      return 'unsupported';
    default:
      return 'error';
  }
}

/**
 * Captures one track of `kind` (separate calls per kind: losing one permission must not end the
 * other track).
 * @param {'audio'|'video'} kind
 * @param {string|null} [deviceId]
 * @returns {Promise<MediaStreamTrack>}
 */
export async function captureTrack(kind, deviceId = null) {
  const base = kind === 'video' ? { ...VIDEO_CONSTRAINTS } : { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
  const constraints = deviceId ? { ...base, deviceId: { exact: deviceId } } : base;
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ [kind]: constraints });
  } catch (e) {
    // A remembered device that is gone: fall back to the default one.
    if (deviceId && (e?.name === 'OverconstrainedError' || e?.name === 'NotFoundError')) {
      stream = await navigator.mediaDevices.getUserMedia({ [kind]: base });
    } else {
      throw e;
    }
  }
  const track = kind === 'video' ? stream.getVideoTracks()[0] : stream.getAudioTracks()[0];
  if (!track) throw new DOMException(`no ${kind} track`, 'NotFoundError');
  return track;
}

/**
 * Lists devices. Labels are empty until a permission was granted once.
 * @returns {Promise<DeviceLists>}
 */
export async function listDevices() {
  const all = (await navigator.mediaDevices?.enumerateDevices?.()) ?? [];
  return {
    audioInputs: all.filter((d) => d.kind === 'audioinput'),
    audioOutputs: all.filter((d) => d.kind === 'audiooutput'),
    videoInputs: all.filter((d) => d.kind === 'videoinput'),
  };
}

/** Whether audio output can be chosen (HTMLMediaElement.setSinkId). */
export function canSelectAudioOutput() {
  return typeof HTMLMediaElement !== 'undefined' && 'setSinkId' in HTMLMediaElement.prototype;
}

/**
 * Calls `onChange(lists)` when devices are plugged or unplugged. Returns a stop function.
 * @param {(lists: DeviceLists) => void} onChange
 */
export function watchDevices(onChange) {
  const md = navigator.mediaDevices;
  if (!md?.addEventListener) return () => {};
  const handler = async () => onChange(await listDevices());
  md.addEventListener('devicechange', handler);
  return () => md.removeEventListener('devicechange', handler);
}

/**
 * Checks camera and/or microphone before a call: secure context, Permissions API, then a real
 * capture per kind. Returns the captured tracks (caller owns them) so they can serve as preview
 * and be handed to `Call.join`.
 * @param {{audio?: boolean, video?: boolean, audioDeviceId?: string|null, videoDeviceId?: string|null, ask?: boolean}} [opts]
 *   `ask: false` only queries and never prompts (kinds in `prompt` stay `prompt`).
 * @returns {Promise<{microphone: AccessResult, camera: AccessResult, environment: ReturnType<typeof environmentCheck>}>}
 */
export async function checkMediaAccess(opts = {}) {
  const { audio = true, video = true, audioDeviceId = null, videoDeviceId = null, ask = true } = opts;
  const environment = environmentCheck();
  /** @type {AccessResult} */
  const none = { state: 'prompt', error: null, track: null };
  const result = { microphone: { ...none }, camera: { ...none }, environment };
  if (!environment.secure || !environment.supported) {
    const state = environment.secure ? 'unsupported' : 'insecure';
    result.microphone.state = state;
    result.camera.state = state;
    return result;
  }
  const devices = await listDevices().catch(() => null);
  const plan = [
    ['microphone', 'audio', audio, audioDeviceId, devices?.audioInputs],
    ['camera', 'video', video, videoDeviceId, devices?.videoInputs],
  ];
  for (const [name, kind, wanted, deviceId, listed] of plan) {
    const r = result[name];
    if (!wanted) continue;
    const perm = await queryPermission(name);
    if (listed && listed.length === 0) {
      r.state = 'not-found';
      continue;
    }
    if (perm === 'denied') {
      r.state = 'denied';
      continue;
    }
    if (!ask && perm !== 'granted') {
      r.state = 'prompt';
      continue;
    }
    try {
      r.track = await captureTrack(kind, deviceId);
      r.state = 'granted';
    } catch (e) {
      r.state = classifyMediaError(e);
      r.error = `${e?.name ?? 'Error'}: ${e?.message ?? e}`;
    }
  }
  return result;
}

/**
 * A human sentence for an access state.
 * @param {'microphone'|'camera'} name
 * @param {AccessState} state
 */
export function describeAccess(name, state) {
  const Dev = name === 'camera' ? 'Camera' : 'Microphone';
  switch (state) {
    case 'granted': return `${Dev} ready`;
    case 'denied': return `${Dev} access is blocked`;
    case 'prompt': return `${Dev} not allowed yet`;
    case 'not-found': return `No ${name} found`;
    case 'in-use': return `${Dev} is in use by another app`;
    case 'insecure': return `${Dev} needs a secure (https) page`;
    case 'unsupported': return `${Dev} not supported in this browser`;
    default: return `${Dev} could not be started`;
  }
}
