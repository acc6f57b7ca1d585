// Helpers for e2e/ring.test.mjs: open the web app's idle screen as a user (a token without a
// call), read the ringing state through window.app, read the history list from the UI.

import { captureConsole, mintToken } from './lib.mjs';
import { waitUntil } from './app-helpers.mjs';

/**
 * Opens the app's idle screen for `user` (token not limited to a call) in a new browser context
 * and waits until its user-level connection is open.
 * @param {import('playwright-core').Browser} browser
 * @param {{baseUrl: string, user: string, permissions?: string[], viewport?: {width: number, height: number}}} o
 */
export async function openHome(browser, { baseUrl, user, permissions = ['camera', 'microphone'], viewport = { width: 1000, height: 680 } }) {
  const ctx = await browser.newContext({ permissions, viewport });
  const page = await ctx.newPage();
  const logs = captureConsole(page, user);
  const token = await mintToken(user, null);
  const q = new URLSearchParams({ token, name: user });
  const resp = await page.goto(`${baseUrl}/?${q}`);
  if (!resp?.ok()) throw new Error(`GET / answered ${resp?.status()}`);
  const handle = { ctx, page, logs, user, token, cdp: null };
  await waitUntil(`${user}: idle screen, online`, async () => {
    const st = await ringState(page);
    return st.screen === 'home' && st.ringConnection === 'connected';
  }, { timeout: 10_000, diag: async () => `${JSON.stringify(await ringState(page))}\n${logs.slice(-10).join('\n')}` });
  return handle;
}

/** The app's ringing state: screen, incoming / outgoing call, ring tone, the call joined. */
export function ringState(page) {
  return page.evaluate(() => {
    const a = window.app;
    if (!a) return { screen: 'no window.app' };
    const $ = (id) => document.getElementById(id);
    return {
      screen: a.screen,
      ringConnection: a.ring?.state ?? null,
      incoming: a.incoming ? { callCid: a.incoming.callCid, callerUserId: a.incoming.callerUserId, kind: a.incoming.kind } : null,
      outgoing: a.outgoing ? { callCid: a.outgoing.callCid, kind: a.outgoing.kind } : null,
      outgoingState: a.outgoing?.state ?? null,
      outgoingStatus: { state: $('outgoing-status')?.dataset.state ?? null, text: $('outgoing-status')?.textContent ?? '' },
      notice: $('home-notice')?.hidden ? '' : ($('home-notice')?.textContent ?? ''),
      ringtone: { playing: a.ringtone?.playing ?? null, context: a.ringtone?.ctx?.state ?? null },
      ringCall: a.ringCall ? { ...a.ringCall } : null,
      callState: a.call?.state ?? null,
      callCid: a.call?.cid ?? null,
      lastError: a.lastError ? `${a.lastError.code ?? a.lastError.name}: ${a.lastError.message}` : null,
    };
  });
}

/** The rows of the history list as shown (data attributes and text). */
export function historyRows(page) {
  return page.locator('[data-testid="history-row"]').evaluateAll((els) => els.map((el) => ({
    sessionId: el.dataset.sessionId,
    callCid: el.dataset.callCid,
    outcome: el.dataset.outcome,
    direction: el.dataset.direction,
    peer: el.dataset.peer,
    text: el.innerText,
  })));
}

/**
 * Waits until the history list on the page shows `callCid` with `outcome` (pressing Refresh
 * between polls); returns the row.
 */
export async function waitHistoryRow(handle, callCid, outcome, { timeout = 10_000, diag } = {}) {
  let polls = 0;
  return waitUntil(`${handle.user}: history row for ${callCid} (${outcome})`, async () => {
    const row = (await historyRows(handle.page)).find((r) => r.callCid === callCid && r.outcome === outcome);
    if (row) return row;
    polls += 1;
    if (polls % 4 === 0) await handle.page.getByTestId('history-refresh').click();
    return null;
  }, { timeout, diag: async () => `${JSON.stringify(await historyRows(handle.page))}\n${diag ? await diag() : ''}` });
}
