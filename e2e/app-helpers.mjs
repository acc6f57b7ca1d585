// Helpers for e2e/app.test.mjs: open the web app as a user, read its state through window.app,
// change browser permissions mid-call (CDP), and poll with bounded waits.

import { join } from 'node:path';
import { mkdirSync } from 'node:fs';
import { captureConsole, mintToken, sleep, ARTIFACTS } from './lib.mjs';

/** Where the app screenshots go. */
export const SHOTS = join(ARTIFACTS, 'screenshots');

export function ensureShots() {
  mkdirSync(SHOTS, { recursive: true });
  return SHOTS;
}

/**
 * Opens the app for `user` in a new browser context.
 * @param {import('playwright-core').Browser} browser
 * `hideDevices` lists device kinds (`audioinput`, `videoinput`) the page must not see, as on a
 * computer with no microphone or no camera: enumerateDevices leaves them out and getUserMedia for
 * them fails with NotFoundError.
 * @param {{baseUrl: string, user: string, role?: string, cid: string, permissions?: string[], viewport?: {width: number, height: number}, hideDevices?: string[]}} o
 */
export async function openApp(browser, { baseUrl, user, role = null, cid, permissions = ['camera', 'microphone'], viewport = { width: 1100, height: 720 }, hideDevices = [] }) {
  const ctx = await browser.newContext({ permissions, viewport });
  if (hideDevices.length) {
    await ctx.addInitScript((hidden) => {
      const md = navigator.mediaDevices;
      const enumerate = md.enumerateDevices.bind(md);
      const gum = md.getUserMedia.bind(md);
      md.enumerateDevices = async () => (await enumerate()).filter((d) => !hidden.includes(d.kind));
      md.getUserMedia = async (c) => {
        if ((c?.audio && hidden.includes('audioinput')) || (c?.video && hidden.includes('videoinput'))) {
          throw new DOMException('Requested device not found', 'NotFoundError');
        }
        return gum(c);
      };
    }, hideDevices);
  }
  const page = await ctx.newPage();
  const logs = captureConsole(page, user);
  const token = await mintToken(user, cid, { role });
  const q = new URLSearchParams({ token, call: cid, name: user });
  const resp = await page.goto(`${baseUrl}/?${q}`);
  if (!resp?.ok()) throw new Error(`GET / answered ${resp?.status()}: does the server serve control/web/?`);
  return { ctx, page, logs, user, token, cdp: null };
}

/** What the app says about itself (screen, participants, local media, last error). */
export function appState(page) {
  return page.evaluate(() => {
    const a = window.app;
    if (!a) return { screen: 'no window.app' };
    const c = a.call;
    return {
      screen: a.screen,
      access: a.access ? { microphone: a.access.microphone, camera: a.access.camera } : null,
      lastError: a.lastError ? `${a.lastError.code ?? a.lastError.name}: ${a.lastError.message}` : null,
      call: c
        ? {
          state: c.state,
          participantId: c.localParticipant?.participantId ?? null,
          capabilities: [...c.capabilities],
          pending: [...c.pendingRequests],
          live: c.info.live,
          connection: c.connection,
          local: c.localState(),
          participants: c.participantList().map((p) => ({
            participantId: p.participantId,
            userId: p.userId,
            role: p.role,
            published: [...p.published],
            muted: [...p.muted],
            tracks: Object.keys(p.tracks),
          })),
          remoteTracks: c.remoteTracks.map((t) => `${t.mid}:${t.user_id}:${t.source}${t.muted ? ':muted' : ''}`),
        }
        : null,
    };
  });
}

/** Total audio bytes received from `userId` (0 when no track). */
export async function audioBytesFrom(page, userId) {
  return page.evaluate(async (u) => {
    const stats = (await window.app.call?.stats()) ?? [];
    return stats.filter((s) => s.kind === 'audio' && s.userId === u).reduce((n, s) => n + s.bytesReceived, 0);
  }, userId);
}

/** Video frames decoded from `userId`'s `source` (camera or screen_share). */
export async function framesFrom(page, userId, source = 'camera') {
  return page.evaluate(async ([u, src]) => {
    const stats = (await window.app.call?.stats()) ?? [];
    return stats.filter((s) => s.kind === 'video' && s.userId === u && s.source === src).reduce((n, s) => n + (s.framesDecoded ?? 0), 0);
  }, [userId, source]);
}

/**
 * Polls `fn` until it returns a truthy value; fails after `timeout` ms with `what` and the
 * diagnostics returned by `diag()`.
 */
export async function waitUntil(what, fn, { timeout = 15_000, interval = 250, diag = async () => '' } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      const d = await diag().catch((e) => `diag failed: ${e}`);
      throw new Error(`timed out after ${timeout / 1000} s waiting for ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})\n${d}`);
    }
    await sleep(interval);
  }
}

/** Waits until `count()` grows by at least `min` within `timeout`. */
export async function waitGrowing(what, count, { timeout = 15_000, min = 1, diag } = {}) {
  const start = await count();
  return waitUntil(what, async () => (await count()) >= start + min, { timeout, diag });
}

/**
 * Waits until `count()` stays the same across `window` ms (what was in flight has arrived);
 * fails if it still grows after `timeout`.
 */
export async function waitStalled(what, count, { window = 1500, timeout = 12_000, diag } = {}) {
  let prev = await count();
  const deadline = Date.now() + timeout;
  for (;;) {
    await sleep(window);
    const now = await count();
    if (now === prev) return now;
    if (Date.now() > deadline) {
      const d = diag ? await diag() : '';
      throw new Error(`${what}: still growing after ${timeout / 1000} s (${prev} -> ${now})\n${d}`);
    }
    prev = now;
  }
}

/**
 * Sets one permission (`camera` or `microphone`) of the page's origin to `granted`, `denied` or
 * `prompt` through CDP. The CDP session stays open (detaching resets the override).
 */
export async function setPermission(handle, name, setting) {
  if (!handle.cdp) {
    handle.cdp = await handle.ctx.newCDPSession(handle.page);
    const { targetInfo } = await handle.cdp.send('Target.getTargetInfo');
    handle.browserContextId = targetInfo.browserContextId;
  }
  const origin = new URL(handle.page.url()).origin;
  await handle.cdp.send('Browser.setPermission', {
    origin,
    browserContextId: handle.browserContextId,
    permission: { name },
    setting,
  });
}

/** The tile of `userId`'s camera on `page` (video call). */
export function tileOf(page, userId, kind = 'cam') {
  return page.locator(`.tile[data-user-id="${userId}"][data-kind="${kind}"]`);
}

/** A diagnostics string for failures: app states, console tails, the server log tail. */
export async function diagnostics(handles, server) {
  const parts = [];
  for (const h of handles.filter(Boolean)) {
    const st = await appState(h.page).catch((e) => ({ error: String(e) }));
    parts.push(`--- ${h.user} ---\n${JSON.stringify(st, null, 1)}\n${h.logs.slice(-12).join('\n')}`);
  }
  parts.push(`--- server log (tail) ---\n${server?.logTail(25) ?? '(no server)'}`);
  return parts.join('\n');
}
