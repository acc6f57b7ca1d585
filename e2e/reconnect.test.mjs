// Reconnection in Chromium (docs/PROTOCOL.md section 4.5, "ICE restart" in section 5): two pages
// (alice, bob) use the SDK on a real `greenroom serve` with a 10 s resume grace. Bob's signaling
// socket goes through a TCP proxy made here (node `net`), so the test can really kill it:
// 1. the proxy destroys bob's sockets mid-call: bob's SDK shows `reconnecting`, resumes with the
//    same participant id, media keeps flowing both ways, alice saw no leave;
// 2. bob's socket stays down while carol joins and publishes: on resume the server re-sends the
//    subscriber offer it made meanwhile, and bob receives carol's media (no rejoin);
// 3. bob restarts ICE on both PeerConnections (`call.restartIce()`, new ufrags): media resumes;
// 4. the proxy stays down past the grace: bob's SDK shows `failed` and leaves, alice sees bob
//    leave with `disconnected`.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT, launchBrowser, startServer, freePort, mintToken, ensureArtifacts, captureConsole, sleep } from './lib.mjs';

const WAIT_MS = 20_000;
const GRACE_SECS = 10;

let server;
let browser;
let proxy;
let baseUrl;
const pages = {};
const consoles = [];
const cid = `default:reconnect-${randomBytes(4).toString('hex')}`;

/**
 * A TCP proxy to `port` that can cut every connection (`cut()`) and refuse new ones (`down`).
 * @param {number} port
 */
async function startProxy(port) {
  const sockets = new Set();
  const p = { port: 0, down: false, accepted: 0, cut: () => {}, close: () => {} };
  const srv = net.createServer((client) => {
    if (p.down) {
      client.destroy();
      return;
    }
    p.accepted += 1;
    const upstream = net.connect(port, '127.0.0.1');
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {});
    }
    client.pipe(upstream);
    upstream.pipe(client);
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  p.port = /** @type {net.AddressInfo} */ (srv.address()).port;
  p.cut = () => {
    for (const s of sockets) s.destroy();
  };
  p.close = () => {
    p.cut();
    srv.close();
  };
  return p;
}

/** Opens a page on the server's origin that joins with the SDK through `signalUrl`. */
async function openPage(user, signalUrl) {
  const token = await mintToken(user, cid);
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  consoles.push(captureConsole(page, user));
  await page.goto(`${baseUrl}/healthz`);
  await page.evaluate(
    async ({ token, signalUrl, cid, graceMs }) => {
      const { GreenroomClient } = await import('/sdk/index.js');
      const t = { events: [], refreshes: 0, call: null };
      window.t = t;
      const client = new GreenroomClient({
        token,
        signalUrl,
        // The same token: the test checks that a reconnect asks for a fresh one.
        tokenProvider: async () => {
          t.refreshes += 1;
          return token;
        },
      });
      const call = client.call(cid);
      t.call = call;
      call.on('connectionStateChanged', (e) => t.events.push(['conn', e.state, e.attempt]));
      call.on('participantLeft', (e) => t.events.push(['participantLeft', e.participant.userId, e.reason]));
      call.on('left', (e) => t.events.push(['left', e.reason]));
      call.on('iceRestart', (e) => t.events.push(['iceRestart', e.target]));
      await call.join({ reconnectTimeoutMs: graceMs });
    },
    { token, signalUrl, cid, graceMs: GRACE_SECS * 1000 },
  );
  return page;
}

/** Bytes and frames this page receives from `other`. */
async function received(page, other) {
  const stats = await page.evaluate(() => window.t.call.stats());
  const video = stats.find((s) => s.kind === 'video' && s.userId === other);
  const audio = stats.find((s) => s.kind === 'audio' && s.userId === other);
  return { frames: video?.framesDecoded ?? 0, bytes: audio?.bytesReceived ?? 0 };
}

/** Waits (bounded) until both pages' media from the other grows past `since`. */
async function mediaGrows(since = { alice: { frames: 0, bytes: 0 }, bob: { frames: 0, bytes: 0 } }) {
  const deadline = Date.now() + WAIT_MS;
  let now;
  for (;;) {
    now = { alice: await received(pages.alice, 'bob'), bob: await received(pages.bob, 'alice') };
    const grew = ['alice', 'bob'].every((u) => now[u].frames > since[u].frames && now[u].bytes > since[u].bytes);
    if (grew) return now;
    if (Date.now() > deadline) assert.fail(`media did not grow: before ${JSON.stringify(since)}, now ${JSON.stringify(now)}\n${server.logTail(30)}`);
    await sleep(300);
  }
}

const events = (page) => page.evaluate(() => window.t.events);
const participantId = (page) => page.evaluate(() => window.t.call.localParticipant?.participantId ?? null);

/** Waits (bounded) until `page`'s events satisfy `pred`. */
async function until(page, what, pred) {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const ev = await events(page);
    if (pred(ev)) return ev;
    if (Date.now() > deadline) assert.fail(`${what}: events ${JSON.stringify(ev)}\n${server.logTail(30)}`);
    await sleep(100);
  }
}

before(async () => {
  const http = await freePort();
  const udp = await freePort();
  baseUrl = `http://127.0.0.1:${http}`;
  const dir = ensureArtifacts();
  const config = join(dir, 'reconnect-greenroom.toml');
  writeFileSync(config, `[limits]\nresume_grace_secs = ${GRACE_SECS}\n`);
  process.env.GREENROOM_WEB_ROOT ??= join(ROOT, 'control/web');
  server = await startServer({
    httpUrl: baseUrl,
    args: ['--config', config, '--http-addr', `127.0.0.1:${http}`, '--udp-addr', `127.0.0.1:${udp}`],
    logName: 'reconnect-server.log',
  });
  proxy = await startProxy(http);
  browser = await launchBrowser();
  pages.alice = await openPage('alice', `ws://127.0.0.1:${http}/v1/signal`);
  pages.bob = await openPage('bob', `ws://127.0.0.1:${proxy.port}/v1/signal`);
  await mediaGrows();
});

after(async () => {
  const dir = ensureArtifacts();
  const diag = {};
  for (const [u, p] of Object.entries(pages)) diag[u] = await events(p).catch((e) => String(e));
  writeFileSync(join(dir, 'reconnect-diagnostics.json'), JSON.stringify({ cid, events: diag, console: consoles }, null, 2));
  proxy?.close();
  await browser?.close().catch(() => {});
  await server?.stop().catch(() => {});
});

test('a killed signaling socket resumes: same participant, media flows, no leave seen', { timeout: 30_000 }, async () => {
  const pid = await participantId(pages.bob);
  assert.ok(pid);
  const accepted = proxy.accepted;
  const before = { alice: await received(pages.alice, 'bob'), bob: await received(pages.bob, 'alice') };
  proxy.cut();
  const ev = await until(pages.bob, 'bob reconnects', (e) => {
    const i = e.findIndex((x) => x[0] === 'conn' && x[1] === 'reconnecting');
    return i >= 0 && e.slice(i).some((x) => x[0] === 'conn' && x[1] === 'connected' && x[2] > 0);
  });
  assert.ok(proxy.accepted > accepted, 'bob opened a new socket through the proxy');
  assert.equal(await participantId(pages.bob), pid, 'the same participant id');
  assert.ok(!ev.some((x) => x[0] === 'left'), `bob did not leave: ${JSON.stringify(ev)}`);
  assert.ok((await pages.bob.evaluate(() => window.t.refreshes)) > 0, 'the reconnect asked the token provider');
  await mediaGrows(before);
  const aliceEv = await events(pages.alice);
  assert.ok(!aliceEv.some((x) => x[0] === 'participantLeft'), `alice saw no leave: ${JSON.stringify(aliceEv)}`);
  const inCall = await pages.alice.evaluate(() => window.t.call.participantList().map((p) => p.participantId));
  assert.ok(inCall.includes(pid), 'alice still lists bob with the same participant id');
});

test('an offer made while the socket is down is re-sent on resume: bob receives a newcomer', { timeout: 30_000 }, async () => {
  const pid = await participantId(pages.bob);
  const reconnects = async () => (await events(pages.bob)).filter((x) => x[0] === 'conn' && x[1] === 'connected').length;
  const done = await reconnects();
  proxy.down = true;
  proxy.cut();
  await until(pages.bob, 'bob notices', (e) => e.filter((x) => x[0] === 'conn' && x[1] === 'reconnecting').length > 1);
  pages.carol = await openPage('carol', `${baseUrl.replace('http', 'ws')}/v1/signal`);
  // Carol publishes: alice receives her, bob (parked) is offered her tracks.
  const fromCarol = async (page) => received(page, 'carol');
  let deadline = Date.now() + WAIT_MS;
  while ((await fromCarol(pages.alice)).frames === 0) {
    if (Date.now() > deadline) assert.fail(`alice never received carol\n${server.logTail(30)}`);
    await sleep(200);
  }
  assert.equal(await reconnects(), done, 'bob is still down');
  proxy.down = false;
  await until(pages.bob, 'bob resumes', (e) => e.filter((x) => x[0] === 'conn' && x[1] === 'connected').length > done);
  assert.equal(await participantId(pages.bob), pid, 'resumed, not rejoined');
  deadline = Date.now() + WAIT_MS;
  let got;
  for (;;) {
    got = await fromCarol(pages.bob);
    if (got.frames > 0 && got.bytes > 0) break;
    if (Date.now() > deadline) assert.fail(`bob never received carol: ${JSON.stringify(got)}\n${server.logTail(30)}`);
    await sleep(200);
  }
  const users = await pages.bob.evaluate(() => window.t.call.participantList().map((p) => p.userId));
  assert.ok(users.includes('carol'), `bob lists carol from the snapshot: ${users}`);
  const aliceEv = await events(pages.alice);
  assert.ok(!aliceEv.some((x) => x[0] === 'participantLeft' && x[1] === 'bob'), `alice saw no leave: ${JSON.stringify(aliceEv)}`);
  await pages.carol.close();
  delete pages.carol;
});

test('an ICE restart on both connections mid-call: media resumes', { timeout: 30_000 }, async () => {
  const ufrags = () =>
    pages.bob.evaluate(() => {
      const u = (sdp) => /a=ice-ufrag:(\S+)/.exec(sdp ?? '')?.[1] ?? null;
      const c = window.t.call;
      return { pubLocal: u(c._pub.localDescription?.sdp), pubRemote: u(c._pub.remoteDescription?.sdp), subRemote: u(c._sub.remoteDescription?.sdp) };
    });
  const old = await ufrags();
  const before = { alice: await received(pages.alice, 'bob'), bob: await received(pages.bob, 'alice') };
  await pages.bob.evaluate(() => window.t.call.restartIce());
  // Both connections got new credentials on both sides (the server's answer and offer too).
  const deadline = Date.now() + WAIT_MS;
  let now;
  for (;;) {
    now = await ufrags();
    if (now.pubLocal !== old.pubLocal && now.pubRemote !== old.pubRemote && now.subRemote !== old.subRemote) break;
    if (Date.now() > deadline) assert.fail(`no ICE restart: ${JSON.stringify(old)} -> ${JSON.stringify(now)}\n${server.logTail(30)}`);
    await sleep(200);
  }
  // Each connection's selected candidate pair is of the new ICE generation (its local candidate
  // carries the new ufrag) and the server answered checks on it: the server routed the STUN
  // with its new ufrag to the peer.
  const selected = () =>
    pages.bob.evaluate(async () => {
      const c = window.t.call;
      const out = {};
      for (const [name, pc] of [['pub', c._pub], ['sub', c._sub]]) {
        const ufrag = /a=ice-ufrag:(\S+)/.exec(pc.localDescription?.sdp ?? '')?.[1] ?? null;
        const stats = await pc.getStats();
        let pair = null;
        stats.forEach((s) => {
          if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
        });
        const local = pair ? stats.get(pair.localCandidateId) : null;
        out[name] = { ufrag, pairUfrag: local?.usernameFragment ?? null, responses: pair?.responsesReceived ?? 0 };
      }
      return out;
    });
  let sel;
  const pairDeadline = Date.now() + WAIT_MS;
  const baseline = await selected();
  for (;;) {
    sel = await selected();
    const ok = ['pub', 'sub'].every((k) => sel[k].pairUfrag === sel[k].ufrag && sel[k].responses > 0);
    if (ok) break;
    if (Date.now() > pairDeadline) assert.fail(`the new ICE generation was not selected: ${JSON.stringify(sel)} (right after: ${JSON.stringify(baseline)})\n${server.logTail(30)}`);
    await sleep(200);
  }
  assert.notEqual(sel.sub.ufrag, null);
  const ev = await events(pages.bob);
  assert.ok(ev.some((x) => x[0] === 'iceRestart' && x[1] === 'publisher'));
  assert.ok(ev.some((x) => x[0] === 'iceRestart' && x[1] === 'subscriber'));
  // Media through the new ICE paths: a wide window so that old in-flight packets do not count.
  await sleep(1000);
  const mid = { alice: await received(pages.alice, 'bob'), bob: await received(pages.bob, 'alice') };
  assert.ok(mid.bob.frames >= before.bob.frames);
  await mediaGrows(mid);
  const states = await pages.bob.evaluate(() => ({ pub: window.t.call._pub.connectionState, sub: window.t.call._sub.connectionState }));
  assert.deepEqual(states, { pub: 'connected', sub: 'connected' });
});

test('a socket kept down past the grace period: bob fails and leaves, alice sees the leave', { timeout: 30_000 }, async () => {
  const pid = await participantId(pages.bob);
  proxy.down = true;
  proxy.cut();
  const bobEv = await until(pages.bob, 'bob gives up', (e) => e.some((x) => x[0] === 'left'));
  assert.ok(bobEv.some((x) => x[0] === 'conn' && x[1] === 'failed'), `bob shows failed: ${JSON.stringify(bobEv)}`);
  assert.deepEqual(bobEv.find((x) => x[0] === 'left'), ['left', 'disconnected']);
  const bobLeft = (x) => x[0] === 'participantLeft' && x[1] === 'bob';
  const aliceEv = await until(pages.alice, 'alice sees bob leave', (e) => e.some(bobLeft));
  assert.deepEqual(aliceEv.filter(bobLeft), [['participantLeft', 'bob', 'disconnected']]);
  const inCall = await pages.alice.evaluate(() => window.t.call.participantList().map((p) => p.participantId));
  assert.ok(!inCall.includes(pid));
});
