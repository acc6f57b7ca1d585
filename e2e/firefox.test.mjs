// The browser scenarios in Firefox (Debian's firefox-esr, headless, driven over WebDriver BiDi by
// puppeteer-core): two pages embed `<greenroom-call>` (control/web/sdk/examples/embed.html), join
// one call on a real `greenroom serve`, and must decode each other's video and receive each other's
// audio; then the server revokes alice's send-audio (bob's audio from alice stops) and grants it
// again (it resumes on the same participant session, without a rejoin).
//
// Firefox prefs: fake devices, no prompts, and a persisted camera/microphone permission for the
// test origin, without which Firefox offers only the default-route address and ICE against the
// server's 127.0.0.1 candidate fails (see e2e/README.md).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import puppeteer from 'puppeteer-core';
import { ROOT, startServer, freePort, mintToken, metricValue } from './lib.mjs';
import { SHOTS, ensureShots, waitUntil, waitGrowing, waitStalled } from './app-helpers.mjs';

const FIREFOX = process.env.FIREFOX_PATH || '/usr/bin/firefox-esr';
const MEDIA_TIMEOUT_MS = 30_000;
const rand = () => randomBytes(3).toString('hex');

let server;
let baseUrl;
let browser;
let profileDir;
let adminToken;
let joinedBothWays = false;
const pages = {};
const cid = `default:ff-${rand()}`;

before(async () => {
  if (!existsSync(FIREFOX)) throw new Error(`Firefox not found at ${FIREFOX}: run scripts/install-browser-deps.sh`);
  const http = await freePort();
  const udp = await freePort();
  baseUrl = `http://127.0.0.1:${http}`;
  process.env.GREENROOM_WEB_ROOT ??= join(ROOT, 'control/web');
  server = await startServer({
    httpUrl: baseUrl,
    args: ['--http-addr', `127.0.0.1:${http}`, '--udp-addr', `127.0.0.1:${udp}`],
    logName: 'firefox-server.log',
  });
  adminToken = await mintToken('e2e-admin', null, { admin: true });
  profileDir = mkdtempSync(join(tmpdir(), 'greenroom-ff-'));
  const perms = join(profileDir, 'perms.txt');
  writeFileSync(perms, ['camera', 'microphone'].map((p) => `origin\t${p}\t1\t${baseUrl}`).join('\n') + '\n');
  browser = await puppeteer.launch({
    browser: 'firefox',
    executablePath: FIREFOX,
    protocol: 'webDriverBiDi',
    headless: true,
    timeout: 30_000,
    extraPrefsFirefox: {
      'media.navigator.streams.fake': true,
      'media.navigator.permission.disabled': true,
      'media.navigator.permission.fake': true,
      'media.peerconnection.ice.loopback': true,
      'media.peerconnection.ice.obfuscate_host_addresses': false,
      'media.autoplay.default': 0,
      'media.autoplay.blocking_policy': 0,
      'permissions.manager.defaultsUrl': `file://${perms}`,
      'dom.ipc.processPrelaunch.enabled': false,
    },
  });
  ensureShots();
});

after(async () => {
  await browser?.close().catch(() => {});
  await server?.stop().catch(() => {});
  if (profileDir) rmSync(profileDir, { recursive: true, force: true });
});

async function openEmbed(user) {
  const page = await browser.newPage();
  const logs = [];
  page.on('console', (m) => logs.push(`[${user}] ${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`[${user}] pageerror: ${e.message}`));
  const token = await mintToken(user, cid);
  await page.goto(`${baseUrl}/sdk/examples/embed.html?${new URLSearchParams({ token, call: cid })}`);
  return { page, logs, user };
}

function elementState(page) {
  return page.evaluate(() => {
    const el = document.querySelector('greenroom-call');
    const root = el?.shadowRoot;
    return {
      state: el?.call?.state ?? null,
      participantId: el?.call?.localParticipant?.participantId ?? null,
      capabilities: [...(el?.call?.capabilities ?? [])],
      connection: el?.call?.connection ?? null,
      tiles: [...(root?.querySelectorAll('.tile') ?? [])].map((t) => ({
        user: t.dataset.userId,
        video: Boolean(t.querySelector('video')?.srcObject),
        paused: t.querySelector('video')?.paused ?? null,
        frames: t.querySelector('video')?.getVideoPlaybackQuality?.().totalVideoFrames ?? 0,
      })),
      events: window.embedEvents ?? [],
    };
  });
}

/** Video frames decoded from `userId` (inbound-rtp of the subscriber connection). */
async function framesFrom(page, userId) {
  return page.evaluate(async (u) => {
    const stats = (await document.querySelector('greenroom-call')?.call?.stats()) ?? [];
    return stats.filter((s) => s.kind === 'video' && s.userId === u).reduce((n, s) => n + (s.framesDecoded ?? 0), 0);
  }, userId);
}

async function audioBytesFrom(page, userId) {
  return page.evaluate(async (u) => {
    const stats = (await document.querySelector('greenroom-call')?.call?.stats()) ?? [];
    return stats.filter((s) => s.kind === 'audio' && s.userId === u).reduce((n, s) => n + s.bytesReceived, 0);
  }, userId);
}

async function diag() {
  const out = {};
  for (const [u, h] of Object.entries(pages)) {
    const stats = await h.page.evaluate(async () => JSON.stringify(await document.querySelector('greenroom-call')?.call?.stats())).catch((e) => String(e));
    out[u] = { state: await elementState(h.page).catch((e) => String(e)), stats, logs: h.logs.slice(-15) };
  }
  return JSON.stringify({ ...out, server: server.logTail(15) }, null, 1);
}

async function setAudioPermission(user, grant) {
  const [type, id] = cid.split(':');
  const body = { user_id: user, grant_permissions: grant ? ['send-audio'] : [], revoke_permissions: grant ? [] : ['send-audio'] };
  const r = await fetch(`${baseUrl}/v1/calls/${type}/${id}/user_permissions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${adminToken}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  assert.equal(r.status, 200, await r.text());
}

test('Firefox: two pages join one call and get video and audio both ways', { timeout: 90_000 }, async () => {
  pages.alice = await openEmbed('alice');
  pages.bob = await openEmbed('bob');
  for (const [me, other] of [['alice', 'bob'], ['bob', 'alice']]) {
    const { page } = pages[me];
    await waitUntil(`${me}: joined, with decoded video of ${other}`, async () => {
      const s = await elementState(page);
      return s.state === 'joined' && s.tiles.some((t) => t.user === other && t.video) && (await framesFrom(page, other)) > 0;
    }, { timeout: MEDIA_TIMEOUT_MS, diag });
    await waitGrowing(`${me}: audio from ${other}`, () => audioBytesFrom(page, other), { timeout: MEDIA_TIMEOUT_MS, min: 500, diag });
  }
  const s = await elementState(pages.alice.page);
  assert.ok(s.events.some((e) => e.type === 'joined'), JSON.stringify(s.events));
  assert.ok(!s.events.some((e) => e.type === 'error'), JSON.stringify(s.events));
  await pages.alice.page.screenshot({ path: join(SHOTS, 'firefox-alice.png') }).catch(() => {});
  // Firefox publishes one layer: its video went the lean path (rtc.lean_video on).
  const lean = await metricValue(baseUrl, 'greenroom_lean_video_packets_total');
  assert.ok(lean > 0, `lean video packets: ${lean}`);
  joinedBothWays = true;
});

test('Firefox: revoking send-audio stops alice at bob; granting resumes it on the same session', { timeout: 90_000 }, async () => {
  assert.ok(joinedBothWays, 'the join test passed first');
  const before = await elementState(pages.alice.page);
  await setAudioPermission('alice', false);
  await waitUntil('alice: send-audio gone', async () => !(await elementState(pages.alice.page)).capabilities.includes('send-audio'), { diag });
  const stalled = await waitStalled("alice's audio at bob after the revoke", () => audioBytesFrom(pages.bob.page, 'alice'), { diag });
  assert.ok(stalled > 0, 'audio had flowed before the revoke');
  await setAudioPermission('alice', true);
  await waitGrowing("alice's audio at bob after the re-grant", () => audioBytesFrom(pages.bob.page, 'alice'), { timeout: MEDIA_TIMEOUT_MS, min: 500, diag });
  const after = await elementState(pages.alice.page);
  assert.equal(after.participantId, before.participantId, 'same participant session (no rejoin)');
  assert.equal(after.state, 'joined');
});
