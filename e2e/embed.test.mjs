// The embeddable call UI: a sample page (control/web/sdk/examples/embed.html) that only imports the
// SDK package's `<greenroom-call>` element joins a call on a real `greenroom serve` in headless
// Chromium. Two pages (alice, bob) must each see the other's tile with decoded video and receive
// the other's audio; the element's settings (layout, buttons) and events (joined, user-joined,
// user-left, left) are checked. Also checks that matched replies (request_id) are in use.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { ROOT, launchBrowser, startServer, freePort, mintToken, captureConsole } from './lib.mjs';
import { SHOTS, ensureShots, waitUntil, waitGrowing } from './app-helpers.mjs';

const MEDIA_TIMEOUT_MS = 25_000;
const rand = () => randomBytes(3).toString('hex');

let server;
let baseUrl;
let browser;

before(async () => {
  const http = await freePort();
  const udp = await freePort();
  baseUrl = `http://127.0.0.1:${http}`;
  process.env.GREENROOM_WEB_ROOT ??= join(ROOT, 'control/web');
  server = await startServer({
    httpUrl: baseUrl,
    args: ['--http-addr', `127.0.0.1:${http}`, '--udp-addr', `127.0.0.1:${udp}`],
    logName: 'embed-server.log',
  });
  browser = await launchBrowser({ fakeUi: true });
  ensureShots();
});

after(async () => {
  await browser?.close().catch(() => {});
  await server?.stop().catch(() => {});
});

async function openEmbed(user, cid, params = {}) {
  const ctx = await browser.newContext({ permissions: ['camera', 'microphone'], viewport: { width: 900, height: 600 } });
  const page = await ctx.newPage();
  const logs = captureConsole(page, user);
  // Record what goes over the socket: every client request must carry a request_id.
  page.on('websocket', (ws) => ws.on('framesent', (f) => {
    let m = {};
    try { m = JSON.parse(String(f.payload)); } catch { /* not JSON */ }
    logs.push(`[${user}] sent ${JSON.stringify({ type: m.type, request_id: m.request_id })}`);
  }));
  const token = await mintToken(user, cid);
  const q = new URLSearchParams({ token, call: cid, ...params });
  const resp = await page.goto(`${baseUrl}/sdk/examples/embed.html?${q}`);
  assert.ok(resp?.ok(), `GET embed.html answered ${resp?.status()}`);
  return { ctx, page, logs, user };
}

/** What the element says: call state, tiles (user, has video) and buttons in its shadow DOM. */
function elementState(page) {
  return page.evaluate(() => {
    const el = document.querySelector('greenroom-call');
    const root = el?.shadowRoot;
    return {
      state: el?.call?.state ?? null,
      layout: el?.call?.layout ?? null,
      spotlight: root?.querySelector('.tiles')?.classList.contains('spotlight') ?? false,
      tiles: [...(root?.querySelectorAll('.tile') ?? [])].map((t) => ({
        user: t.dataset.userId,
        name: t.querySelector('.name')?.textContent ?? '',
        video: Boolean(t.querySelector('video')?.srcObject),
        frames: t.querySelector('video')?.getVideoPlaybackQuality?.().totalVideoFrames ?? 0,
      })),
      buttons: [...(root?.querySelectorAll('.bar button') ?? [])].map((b) => b.dataset.action),
      reactionBar: [...(root?.querySelectorAll('.reaction-bar:not([hidden]) button') ?? [])].map((b) => b.dataset.reaction),
      events: window.embedEvents ?? [],
    };
  });
}

async function audioBytesFrom(page, userId) {
  return page.evaluate(async (u) => {
    const stats = (await document.querySelector('greenroom-call')?.call?.stats()) ?? [];
    return stats.filter((s) => s.kind === 'audio' && s.userId === u).reduce((n, s) => n + s.bytesReceived, 0);
  }, userId);
}

test('a page that only embeds <greenroom-call> joins a call with media both ways', { timeout: 60_000 }, async () => {
  const cid = `default:embed-${rand()}`;
  const a = await openEmbed('alice', cid, { layout: 'grid', name: 'Alice A.' });
  const b = await openEmbed('bob', cid, { layout: 'spotlight', buttons: 'mic,leave' });
  const diag = async () => JSON.stringify({ a: await elementState(a.page), b: await elementState(b.page), logs: [...a.logs, ...b.logs].slice(-30), server: server.logTail(15) }, null, 1);
  try {
    for (const [h, other] of [[a, 'bob'], [b, 'alice']]) {
      await waitUntil(`${h.user}: a tile of ${other} with decoded video`, async () => {
        const s = await elementState(h.page);
        return s.state === 'joined' && s.tiles.some((t) => t.user === other && t.video && t.frames > 0);
      }, { timeout: MEDIA_TIMEOUT_MS, diag });
      await waitGrowing(`${h.user}: audio from ${other}`, () => audioBytesFrom(h.page, other), { timeout: MEDIA_TIMEOUT_MS, min: 500, diag });
    }
    const sa = await elementState(a.page);
    const sb = await elementState(b.page);
    // Settings: alice has the default bar (every button that applies to a user in a video call)
    // and the reaction bar (`react`) in a grid; bob only mic + leave in spotlight, no reactions.
    assert.deepEqual(sa.buttons, ['mic', 'camera', 'screen', 'layout', 'people', 'leave'], JSON.stringify(sa.buttons));
    assert.deepEqual(sa.reactionBar, ['like', 'heart', 'laugh', 'clap', 'raised-hand'], JSON.stringify(sa.reactionBar));
    assert.deepEqual(sb.buttons, ['mic', 'leave']);
    assert.deepEqual(sb.reactionBar, []);
    assert.equal(sa.spotlight, false);
    assert.equal(sb.spotlight, true);
    assert.equal(sb.layout, 'spotlight');
    assert.ok(sa.tiles.some((t) => t.user === 'alice' && t.name.includes('Alice A. (you)')), JSON.stringify(sa.tiles));
    // Display names: bob sees alice's name, not her user id.
    assert.ok(sb.tiles.some((t) => t.user === 'alice' && t.name.startsWith('Alice A.')), JSON.stringify(sb.tiles));
    // Reactions: alice presses the reaction bar's first button (like); both elements get the `reaction` event.
    await a.page.evaluate(() => document.querySelector('greenroom-call').shadowRoot.querySelector('button[data-action="react"]').click());
    for (const h of [a, b]) {
      await waitUntil(`${h.user}: reaction from alice`, async () => (await elementState(h.page)).events.some((e) => e.type === 'reaction' && e.userId === 'alice'), { diag });
    }
    // Events out.
    assert.ok(sa.events.some((e) => e.type === 'joined'), JSON.stringify(sa.events));
    assert.ok(sa.events.some((e) => e.type === 'user-joined' && e.userId === 'bob'), JSON.stringify(sa.events));
    assert.ok(!sa.events.some((e) => e.type === 'error'), JSON.stringify(sa.events));
    // Matched replies: the join and publish requests carried a request_id.
    const sent = a.logs.filter((l) => l.includes(' sent {'));
    assert.ok(sent.some((l) => l.includes('"type":"join"') && l.includes('"request_id":"call-')), sent.join('\n'));
    assert.ok(sent.some((l) => l.includes('"type":"publish"') && l.includes('"request_id":"call-')), sent.join('\n'));
    await a.page.screenshot({ path: join(SHOTS, 'embed-alice.png') }).catch(() => {});
    await b.page.screenshot({ path: join(SHOTS, 'embed-bob.png') }).catch(() => {});

    // Connection states: the Call's `connectionStateChanged` (emitted here by hand on the SDK
    // call, as the SDK's reconnection does) shows a non-blocking "Reconnecting…" banner (the tiles
    // do not move), removes it on `connected`, shows an error on `failed`, and is re-emitted as the
    // DOM event `connectionstatechange`.
    const connection = (state) => a.page.evaluate((st) => document.querySelector('greenroom-call').call.emit('connectionStateChanged', { state: st }), state);
    const banner = (id) => a.page.evaluate((t) => {
      const el = document.querySelector('greenroom-call').shadowRoot.querySelector(`.banners [data-testid="${t}"]`);
      return el ? el.textContent : null;
    }, id);
    const tileBoxes = () => a.page.evaluate(() => [...document.querySelector('greenroom-call').shadowRoot.querySelectorAll('.tile')].map((t) => JSON.stringify(t.getBoundingClientRect())));
    const boxesBefore = await tileBoxes();
    await connection('reconnecting');
    await waitUntil('alice: Reconnecting banner', async () => (await banner('reconnecting'))?.includes('Reconnecting'), { diag });
    assert.deepEqual(await tileBoxes(), boxesBefore, 'the banner moved the tiles');
    assert.equal((await elementState(a.page)).state, 'joined', 'still in the call while reconnecting');
    await connection('connected');
    await waitUntil('alice: Reconnecting banner gone', async () => (await banner('reconnecting')) === null, { diag });
    await connection('failed');
    await waitUntil('alice: connection error', async () => (await banner('connection-failed'))?.includes('Connection lost'), { diag });
    await connection('connected');
    await waitUntil('alice: connection error gone', async () => (await banner('connection-failed')) === null, { diag });
    const states = (await elementState(a.page)).events.filter((e) => e.type === 'connectionstatechange').map((e) => e.state);
    assert.deepEqual(states, ['reconnecting', 'connected', 'failed', 'connected']);

    // Bob leaves with his element's Leave button: bob gets `left`, alice `user-left`.
    await b.page.evaluate(() => document.querySelector('greenroom-call').shadowRoot.querySelector('button[data-action="leave"]').click());
    await waitUntil('bob: left event', async () => (await elementState(b.page)).events.some((e) => e.type === 'left'), { diag });
    await waitUntil('alice: user-left for bob', async () => (await elementState(a.page)).events.some((e) => e.type === 'user-left' && e.userId === 'bob'), { diag });
    await waitUntil('alice: bob tile gone', async () => !(await elementState(a.page)).tiles.some((t) => t.user === 'bob'), { diag });
  } finally {
    await a.ctx.close().catch(() => {});
    await b.ctx.close().catch(() => {});
  }
});
