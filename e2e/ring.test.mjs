// End-to-end test of ringing in the web app (docs/PROTOCOL.md section 6) against a real
// `greenroom serve`, in headless Chromium with fake devices: user A calls user B from the idle
// screen, B's page rings (incoming-call screen, WebAudio ring tone), B accepts, both pages join the
// media call and receive each other's video and audio (SDK stats), A hangs up, both return to the
// idle screen, and both histories list the call. Then B rejects a call and A's page says so.
//
// The server listens on free ports with a fresh data directory (the history database).
// Screenshots: test-artifacts/screenshots/ring-*.png. Server log: test-artifacts/ring-server.log.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT, launchBrowser, startServer, freePort } from './lib.mjs';
import { SHOTS, ensureShots, audioBytesFrom, framesFrom, waitUntil, waitGrowing, diagnostics } from './app-helpers.mjs';
import { openHome, ringState, historyRows, waitHistoryRow } from './ring-helpers.mjs';

const MEDIA_TIMEOUT_MS = 20_000;
const UI_TIMEOUT_MS = 10_000;
const rand = randomBytes(3).toString('hex');
const ANN = `ann-${rand}`;
const BEN = `ben-${rand}`;

let server;
let baseUrl;
let browser;
let dataDir;
let ann;
let ben;
const diag = () => diagnostics([ann, ben], server);

before(async () => {
  const http = await freePort();
  const udp = await freePort();
  baseUrl = `http://127.0.0.1:${http}`;
  process.env.GREENROOM_WEB_ROOT ??= join(ROOT, 'control/web');
  dataDir = mkdtempSync(join(tmpdir(), 'greenroom-ring-e2e-'));
  process.env.GREENROOM_DATA_DIR = dataDir;
  server = await startServer({
    httpUrl: baseUrl,
    args: ['--http-addr', `127.0.0.1:${http}`, '--udp-addr', `127.0.0.1:${udp}`],
    logName: 'ring-server.log',
  });
  browser = await launchBrowser();
  ensureShots();
  ann = await openHome(browser, { baseUrl, user: ANN });
  ben = await openHome(browser, { baseUrl, user: BEN });
});

after(async () => {
  await browser?.close().catch(() => {});
  await server?.stop().catch(() => {});
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

async function shot(handle, name) {
  await handle.page.screenshot({ path: join(SHOTS, name) }).catch(() => {});
}

const screenOf = async (h) => (await ringState(h.page)).screen;

async function dial(h, user, kind) {
  await h.page.getByTestId('dial-user').fill(user);
  await h.page.getByTestId(`dial-kind-${kind}`).check();
  await h.page.getByTestId('dial').click();
  await waitUntil(`${h.user}: outgoing-call screen`, async () => (await screenOf(h)) === 'outgoing', { timeout: UI_TIMEOUT_MS, diag });
  return waitUntil(`${h.user}: the outgoing call's cid`, async () => (await ringState(h.page)).outgoing?.callCid, { timeout: UI_TIMEOUT_MS, diag });
}

async function waitIncoming(h, from) {
  await waitUntil(`${h.user}: incoming-call screen`, async () => (await screenOf(h)) === 'incoming', { timeout: UI_TIMEOUT_MS, diag });
  assert.equal((await h.page.getByTestId('incoming-caller').innerText()).trim(), from);
}

test('A calls B, B accepts, both receive media, A hangs up, both back to idle, history lists it', { timeout: 75_000 }, async () => {
  const cid = await dial(ann, BEN, 'video');
  await waitUntil(`${ANN}: ringing`, async () => (await ringState(ann.page)).outgoingState === 'ringing', { timeout: UI_TIMEOUT_MS, diag });
  assert.equal((await ringState(ann.page)).ringtone.playing, 'outgoing');

  await waitIncoming(ben, ANN);
  const bs = await ringState(ben.page);
  assert.equal(bs.incoming?.callCid, cid);
  assert.equal(bs.incoming?.kind, 'video');
  assert.equal(bs.ringtone.playing, 'incoming', 'the ring tone plays while it rings');
  assert.equal(bs.ringtone.context, 'running', 'the ring tone AudioContext runs');
  await waitUntil(`${ANN}: camera preview while ringing`, () => ann.page.locator('#outgoing-video').isVisible(), { timeout: UI_TIMEOUT_MS, diag });
  await shot(ben, 'ring-incoming-call.png');
  await shot(ann, 'ring-outgoing-call.png');

  await ben.page.getByTestId('ring-accept').click();
  for (const h of [ben, ann]) {
    await waitUntil(`${h.user}: in the call`, async () => (await ringState(h.page)).callState === 'joined' && (await screenOf(h)) === 'call', { timeout: UI_TIMEOUT_MS, diag });
  }
  assert.equal((await ringState(ben.page)).ringtone.playing, null, 'the ring tone stops once accepted');
  assert.equal((await ringState(ann.page)).ringtone.playing, null, 'the ringback stops once accepted');
  assert.equal((await ringState(ann.page)).callCid, cid);
  assert.equal((await ringState(ben.page)).callCid, cid);

  // Each page decodes the other's camera and receives the other's microphone (SDK stats).
  for (const [h, other] of [[ann, BEN], [ben, ANN]]) {
    await waitUntil(`${h.user}: video frames from ${other}`, async () => (await framesFrom(h.page, other)) > 0, { timeout: MEDIA_TIMEOUT_MS, diag });
    await waitUntil(`${h.user}: audio from ${other}`, async () => (await audioBytesFrom(h.page, other)) > 0, { timeout: MEDIA_TIMEOUT_MS, diag });
    await waitGrowing(`${h.user}: audio bytes from ${other} keep growing`, () => audioBytesFrom(h.page, other), { timeout: MEDIA_TIMEOUT_MS, min: 1000, diag });
    await waitGrowing(`${h.user}: frames from ${other} keep growing`, () => framesFrom(h.page, other), { timeout: MEDIA_TIMEOUT_MS, min: 5, diag });
  }
  await waitUntil(`${ANN}: ${BEN}'s tile shows video`, async () => (await ann.page.locator(`.tile[data-user-id="${BEN}"][data-kind="cam"]`).getAttribute('data-video-off')) === 'false', { timeout: UI_TIMEOUT_MS, diag });
  await shot(ann, 'ring-in-call.png');

  await ann.page.getByTestId('hang-up').click();
  await waitUntil(`${ANN}: back to idle`, async () => (await screenOf(ann)) === 'home', { timeout: UI_TIMEOUT_MS, diag });
  await waitUntil(`${BEN}: back to idle`, async () => (await screenOf(ben)) === 'home', { timeout: UI_TIMEOUT_MS, diag });
  assert.match(await ben.page.getByTestId('home-notice').innerText(), new RegExp(`${ANN} ended the call`));
  for (const h of [ann, ben]) {
    const st = await ringState(h.page);
    assert.equal(st.callState, null, `${h.user}: no call object left`);
    assert.equal(st.ringConnection, 'connected', `${h.user}: the user-level connection stays open when idle`);
  }

  // Both histories list the call (in the UI list), answered, with the right direction.
  const annRow = await waitHistoryRow(ann, cid, 'accepted', { timeout: UI_TIMEOUT_MS, diag });
  assert.equal(annRow.direction, 'outgoing');
  assert.equal(annRow.peer, BEN);
  assert.match(annRow.text, /video/);
  const benRow = await waitHistoryRow(ben, cid, 'accepted', { timeout: UI_TIMEOUT_MS, diag });
  assert.equal(benRow.direction, 'incoming');
  assert.equal(benRow.peer, ANN);
  assert.match(benRow.text, /\d+:\d\d/, `an answered call shows its duration: ${benRow.text}`);
  await shot(ben, 'ring-history.png');
});

test('B rejects: A sees the rejection, both histories say declined', { timeout: 40_000 }, async () => {
  const cid = await dial(ann, BEN, 'audio');
  await waitIncoming(ben, ANN);
  assert.equal((await ringState(ben.page)).incoming?.kind, 'audio');
  await ben.page.getByTestId('ring-reject').click();
  await waitUntil(`${BEN}: back to idle after rejecting`, async () => (await screenOf(ben)) === 'home', { timeout: UI_TIMEOUT_MS, diag });
  assert.equal((await ringState(ben.page)).ringtone.playing, null);

  // A's outgoing screen says so, then A is back to idle with the notice.
  const seen = await waitUntil(`${ANN}: the rejection`, async () => {
    const st = await ringState(ann.page);
    if (st.screen === 'outgoing' && st.outgoingStatus.state === 'rejected') return st.outgoingStatus.text;
    if (st.screen === 'home' && /declined/.test(st.notice)) return st.notice;
    return null;
  }, { timeout: UI_TIMEOUT_MS, interval: 100, diag });
  assert.match(seen, new RegExp(`${BEN} declined`));
  if ((await screenOf(ann)) === 'outgoing') await shot(ann, 'ring-rejected.png');
  await waitUntil(`${ANN}: back to idle`, async () => (await screenOf(ann)) === 'home', { timeout: UI_TIMEOUT_MS, diag });
  assert.match(await ann.page.getByTestId('home-notice').innerText(), new RegExp(`${BEN} declined your call`));

  const annRow = await waitHistoryRow(ann, cid, 'rejected', { timeout: UI_TIMEOUT_MS, diag });
  assert.equal(annRow.direction, 'outgoing');
  assert.match(annRow.text, /Declined/);
  await waitHistoryRow(ben, cid, 'rejected', { timeout: UI_TIMEOUT_MS, diag });
  const rows = await historyRows(ann.page);
  assert.ok(rows.length >= 2, `two calls in ${ANN}'s history: ${JSON.stringify(rows)}`);
  assert.equal(rows[0].callCid, cid, 'newest first');
});
