// Kicks in a call of Chromium pages using the SDK on a real `greenroom serve` (docs/PROTOCOL.md
// section 5, subscriber offers):
// 1. alice, bob and carol publish; an admin kicks carol while all her peers are connected:
//    alice and bob keep receiving each other (decoded frames and audio bytes grow), neither gets
//    a `media_error` nor a replaced subscriber PeerConnection, and a newcomer's (dave's) media
//    reaches both on their same subscriber PeerConnections;
// 2. bob and then dave are kicked: alice's last sections would all be stopped, an offer with no
//    BUNDLE group (Chromium refuses it, or closes the transport and the server's subscriber peer
//    died "connection closed"); the server sends no such offer, so when erin joins and publishes
//    alice receives her on the same subscriber PeerConnection, without a `media_error`.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT, launchBrowser, startServer, freePort, mintToken, ensureArtifacts, captureConsole, sleep } from './lib.mjs';

const WAIT_MS = 25_000;

let server;
let browser;
let baseUrl;
let adminToken;
const pages = {};
const consoles = [];
const id = `kick3-${randomBytes(4).toString('hex')}`;
const cid = `default:${id}`;

/** Opens a page on the server's origin that joins with the SDK and publishes camera + mic. */
async function openPage(user) {
  const token = await mintToken(user, cid);
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  consoles.push(captureConsole(page, user));
  await page.goto(`${baseUrl}/healthz`);
  await page.evaluate(
    async ({ token, signalUrl, cid }) => {
      const { GreenroomClient } = await import('/sdk/index.js');
      const t = { events: [], call: null };
      window.t = t;
      const client = new GreenroomClient({ token, signalUrl });
      const call = client.call(cid);
      t.call = call;
      call.on('error', (e) => t.events.push(['error', e.code ?? null, String(e.message ?? e)]));
      call.on('subscriberReplaced', () => t.events.push(['subscriberReplaced']));
      call.on('kicked', () => t.events.push(['kicked']));
      call.on('left', (e) => t.events.push(['left', e.reason]));
      await call.join();
    },
    { token, signalUrl: `${baseUrl.replace('http', 'ws')}/v1/signal`, cid },
  );
  return page;
}

/** Bytes and frames `page` receives from `other`. */
async function received(page, other) {
  const stats = await page.evaluate(() => window.t.call.stats());
  const video = stats.find((s) => s.kind === 'video' && s.userId === other);
  const audio = stats.find((s) => s.kind === 'audio' && s.userId === other);
  return { frames: video?.framesDecoded ?? 0, bytes: audio?.bytesReceived ?? 0 };
}

/**
 * Waits (bounded) until every [receiver, sender] pair's media grows past what it was at the
 * call (or appears at all when `fresh`).
 */
async function mediaGrows(pairs) {
  const since = {};
  for (const [r, s] of pairs) since[`${r}<-${s}`] = await received(pages[r], s);
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const now = {};
    for (const [r, s] of pairs) now[`${r}<-${s}`] = await received(pages[r], s);
    const grew = Object.keys(since).every((k) => now[k].frames > since[k].frames && now[k].bytes > since[k].bytes);
    if (grew) return now;
    if (Date.now() > deadline) assert.fail(`media did not grow: before ${JSON.stringify(since)}, now ${JSON.stringify(now)}\n${server.logTail(40)}`);
    await sleep(300);
  }
}

const events = (page) => page.evaluate(() => window.t.events);

/** No media error and no replaced subscriber PeerConnection on these pages. */
async function noFailure(users) {
  for (const u of users) {
    const ev = await events(pages[u]);
    const bad = ev.filter((e) => (e[0] === 'error' && e[1] === 'media_error') || e[0] === 'subscriberReplaced');
    assert.deepEqual(bad, [], `${u}: ${JSON.stringify(ev)}\n${server.logTail(40)}`);
  }
}

async function kick(user) {
  const r = await fetch(`${baseUrl}/v1/calls/default/${id}/kick`, {
    method: 'POST',
    headers: { authorization: `Bearer ${adminToken}`, 'content-type': 'application/json' },
    body: JSON.stringify({ user_id: user }),
  });
  assert.ok(r.ok, `kick ${user}: ${r.status} ${await r.text()}`);
  const deadline = Date.now() + WAIT_MS;
  while (!(await events(pages[user])).some((e) => e[0] === 'kicked')) {
    if (Date.now() > deadline) assert.fail(`${user} never saw the kick`);
    await sleep(100);
  }
}

before(async () => {
  const http = await freePort();
  const udp = await freePort();
  baseUrl = `http://127.0.0.1:${http}`;
  ensureArtifacts();
  process.env.GREENROOM_WEB_ROOT ??= join(ROOT, 'control/web');
  server = await startServer({
    httpUrl: baseUrl,
    args: ['--http-addr', `127.0.0.1:${http}`, '--udp-addr', `127.0.0.1:${udp}`],
    logName: 'kick3-server.log',
  });
  adminToken = await mintToken('e2e-admin', null, { admin: true });
  browser = await launchBrowser();
  for (const u of ['alice', 'bob', 'carol']) pages[u] = await openPage(u);
  await mediaGrows([
    ['alice', 'bob'], ['alice', 'carol'], ['bob', 'alice'], ['bob', 'carol'], ['carol', 'alice'], ['carol', 'bob'],
  ]);
});

after(async () => {
  const dir = ensureArtifacts();
  const diag = {};
  for (const [u, p] of Object.entries(pages)) diag[u] = await events(p).catch((e) => String(e));
  writeFileSync(join(dir, 'kick3-diagnostics.json'), JSON.stringify({ cid, events: diag, console: consoles }, null, 2));
  await browser?.close().catch(() => {});
  await server?.stop().catch(() => {});
});

test('kicking a connected publisher of three: the others keep receiving, then a newcomer', { timeout: 60_000 }, async () => {
  await kick('carol');
  await mediaGrows([['alice', 'bob'], ['bob', 'alice']]);
  pages.dave = await openPage('dave');
  await mediaGrows([['alice', 'dave'], ['bob', 'dave'], ['alice', 'bob'], ['bob', 'alice']]);
  await noFailure(['alice', 'bob']);
});

test('kicking the last publishers never kills the subscriber: a later newcomer reaches alice', { timeout: 60_000 }, async () => {
  await kick('bob');
  await mediaGrows([['alice', 'dave']]);
  await kick('dave');
  pages.erin = await openPage('erin');
  await mediaGrows([['alice', 'erin'], ['erin', 'alice']]);
  await noFailure(['alice']);
});
