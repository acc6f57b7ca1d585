// A real network outage mid-call (issue 14): bob's Chromium runs inside a network namespace joined
// to the host by a veth pair (scripts/netns-udp-blocked.sh ... udp-ok: UDP allowed, made and
// removed here); alice's Chromium runs on the host; `greenroom serve` listens on the host side of
// the veth with a 20 s resume grace. Mid-call the test takes the namespace's link down (every
// packet of bob's, signaling and media, is lost; no socket is closed by anyone), waits until
// bob's SDK shows `reconnecting` (its ping gets no pong), keeps the link down at least 3 s, and
// brings it back: bob resumes with the same participant id, media flows both ways again (ICE
// restarted where it broke), and alice saw no leave. Skips with a message where network
// namespaces cannot be made.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  netnsUp, startServerForNetns, launchBrowser, launchBrowserInNetns, secureOrigin, mintToken, ensureArtifacts,
  captureConsole, sleep,
} from './lib.mjs';

const WAIT_MS = 25_000;
const GRACE_SECS = 20;
const MIN_CUT_MS = 3000;

let server;
const browsers = [];
let netns = null;
const consoles = [];

after(async () => {
  for (const b of browsers) await b.close().catch(() => {});
  await server?.stop().catch(() => {});
  netns?.down();
});

/** Opens a page on `url` that joins `cid` with the SDK and records its events in `window.t`. */
async function openPage(browser, url, user, cid) {
  const token = await mintToken(user, cid);
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  consoles.push(captureConsole(page, user));
  await page.goto(`${url}/healthz`);
  await page.evaluate(
    async ({ token, cid, graceMs }) => {
      const { GreenroomClient } = await import('/sdk/index.js');
      const t = { events: [], call: null };
      window.t = t;
      const call = new GreenroomClient({ token }).call(cid);
      t.call = call;
      call.on('connectionStateChanged', (e) => t.events.push(['conn', e.state, e.attempt, Date.now()]));
      call.on('participantLeft', (e) => t.events.push(['participantLeft', e.participant.userId, e.reason]));
      call.on('left', (e) => t.events.push(['left', e.reason]));
      call.on('iceRestart', (e) => t.events.push(['iceRestart', e.target]));
      await call.join({ reconnectTimeoutMs: graceMs });
    },
    { token, cid, graceMs: GRACE_SECS * 1000 },
  );
  return page;
}

/** Video frames decoded and audio bytes this page receives from `other`. */
async function received(page, other) {
  const stats = await page.evaluate(() => window.t.call.stats());
  const video = stats.find((s) => s.kind === 'video' && s.userId === other);
  const audio = stats.find((s) => s.kind === 'audio' && s.userId === other);
  return { frames: video?.framesDecoded ?? 0, bytes: audio?.bytesReceived ?? 0 };
}

const events = (page) => page.evaluate(() => window.t.events);
const participantId = (page) => page.evaluate(() => window.t.call.localParticipant?.participantId ?? null);

test('a cut network link mid-call: reconnecting, then the same session and media again, no leave seen', { timeout: 120_000 }, async (t) => {
  netns = netnsUp(t, { tag: 'linkcut', udpOk: true, what: 'link-cut test' });
  if (!netns) return;
  const dir = ensureArtifacts();
  const config = join(dir, 'linkcut-greenroom.toml');
  writeFileSync(config, `[limits]\nresume_grace_secs = ${GRACE_SECS}\n`);
  server = await startServerForNetns(netns, { args: ['--config', config], logName: 'linkcut-server.log' });
  const url = server.url;
  const cid = `default:linkcut-${randomBytes(4).toString('hex')}`;

  const host = await launchBrowser({ extraArgs: [secureOrigin(url)] });
  browsers.push(host);
  const inNs = await launchBrowserInNetns(netns, url);
  browsers.push(inNs);

  const pages = {
    alice: await openPage(host, url, 'alice', cid),
    bob: await openPage(inNs, url, 'bob', cid),
  };
  const diag = async () => JSON.stringify({ alice: await events(pages.alice), bob: await events(pages.bob) }) + `\n${server.logTail(30)}`;
  const both = async () => ({ alice: await received(pages.alice, 'bob'), bob: await received(pages.bob, 'alice') });
  /** Waits (bounded) until both pages' media from the other grows past `since`. */
  const mediaGrows = async (since) => {
    const deadline = Date.now() + WAIT_MS;
    for (;;) {
      const now = await both();
      if (['alice', 'bob'].every((u) => now[u].frames > since[u].frames && now[u].bytes > since[u].bytes)) return now;
      if (Date.now() > deadline) assert.fail(`media did not grow: before ${JSON.stringify(since)}, now ${JSON.stringify(now)}\n${await diag()}`);
      await sleep(300);
    }
  };
  /** Waits (bounded) until `page`'s events satisfy `pred`. */
  const until = async (page, what, pred) => {
    const deadline = Date.now() + WAIT_MS;
    for (;;) {
      const ev = await events(page);
      if (pred(ev)) return ev;
      if (Date.now() > deadline) assert.fail(`${what}\n${await diag()}`);
      await sleep(100);
    }
  };

  try {
    await mediaGrows({ alice: { frames: 0, bytes: 0 }, bob: { frames: 0, bytes: 0 } });
    const pid = await participantId(pages.bob);
    assert.ok(pid, 'bob joined');

    const cutAt = Date.now();
    t.diagnostic(`link down at ${cutAt}`);
    netns.link(false);
    try {
      await until(pages.bob, 'bob shows reconnecting while the link is down', (e) => e.some((x) => x[0] === 'conn' && x[1] === 'reconnecting'));
      const elapsed = Date.now() - cutAt;
      t.diagnostic(`bob shows reconnecting ${elapsed} ms after the cut`);
      if (elapsed < MIN_CUT_MS) await sleep(MIN_CUT_MS - elapsed);
      // Nothing gets through while the link is down.
      const during = await both();
      await sleep(1000);
      const still = await both();
      // (Audio bytes: a busy decoder can still be working through video frames received before.)
      assert.equal(still.alice.bytes, during.alice.bytes, "alice receives no audio of bob's while the link is down");
    } finally {
      netns.link(true);
    }
    const cut = await both();

    const ev = await until(pages.bob, 'bob reconnects after the link is back', (e) => {
      const i = e.findIndex((x) => x[0] === 'conn' && x[1] === 'reconnecting');
      return i >= 0 && e.slice(i).some((x) => x[0] === 'conn' && x[1] === 'connected' && x[2] > 0);
    });
    assert.ok(!ev.some((x) => x[0] === 'left'), `bob did not leave: ${JSON.stringify(ev)}`);
    assert.equal(await participantId(pages.bob), pid, 'the same participant id (resumed, not rejoined)');
    await mediaGrows(cut);
    const aliceEv = await events(pages.alice);
    assert.ok(!aliceEv.some((x) => x[0] === 'participantLeft'), `alice saw no leave: ${JSON.stringify(aliceEv)}`);
    const inCall = await pages.alice.evaluate(() => window.t.call.participantList().map((p) => p.participantId));
    assert.ok(inCall.includes(pid), 'alice still lists bob with the same participant id');
  } finally {
    writeFileSync(join(dir, 'linkcut-diagnostics.json'), JSON.stringify({ cid, events: await diag().catch((e) => String(e)), console: consoles }, null, 2));
    for (const b of browsers.splice(0)) await b.close().catch(() => {});
    await server.stop().catch(() => {});
    server = undefined;
    netns.down();
  }
});
