// End-to-end media test: two headless Chromium pages (alice and bob, fake camera + microphone) join
// one call on a real `greenroom serve`, publish, and must each decode the other's video and receive
// the other's audio through the server.
//
// Env: GREENROOM_BIN (default target/debug/greenroom), GREENROOM_URL (default http://127.0.0.1:7880,
// where `greenroom serve` listens with its defaults), CHROMIUM_PATH, GREENROOM_ARTIFACTS.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { launchBrowser, startServer, mintToken, ensureArtifacts, captureConsole, sleep, metricValue } from './lib.mjs';

const SERVER_URL = process.env.GREENROOM_URL || 'http://127.0.0.1:7880';
const MEDIA_TIMEOUT_MS = 30_000;
const GROWTH_WINDOW_MS = 2_000;
const USERS = ['alice', 'bob'];

let server;
let browser;
after(async () => {
  await browser?.close().catch(() => {});
  await server?.stop().catch(() => {});
});

/** What one page says about itself: state, errors, connections, offered tracks, stats. */
async function snapshot(page) {
  return page.evaluate(async () => {
    const g = window.greenroom;
    if (!g) return { state: 'no window.greenroom (page did not load media.js)' };
    let stats = [];
    try {
      stats = await g.stats();
    } catch (e) {
      stats = [{ error: String(e) }];
    }
    return {
      state: g.state,
      error: g.error,
      errors: g.errors,
      pcs: g.pcs,
      participant: g.participant?.participant_id ?? null,
      remote: g.remote.map((t) => `${t.mid}:${t.user_id}:${t.source}${t.muted ? ':muted' : ''}`),
      stats,
      lastEvents: g.events.slice(-25).map((e) => `${e.t} ${e.dir} ${e.type}${e.detail ? ' ' + e.detail : ''}`),
    };
  });
}

/** The stats of the other user's video and audio as seen by this page. */
function fromOther(snap, other) {
  const stats = Array.isArray(snap.stats) ? snap.stats : [];
  const video = stats.find((s) => s.kind === 'video' && s.user_id === other);
  const audio = stats.find((s) => s.kind === 'audio' && s.user_id === other);
  return { video, audio };
}

function hasMedia(snap, other) {
  const { video, audio } = fromOther(snap, other);
  return (video?.framesDecoded ?? 0) > 0 && (audio?.bytesReceived ?? 0) > 0;
}

function report(snaps, extra = '') {
  const parts = USERS.map((u, i) => `--- ${u} ---\n${JSON.stringify(snaps[i], null, 2)}`);
  return `${parts.join('\n')}\n--- server log (tail) ---\n${server?.logTail(40) ?? '(no server)'}${extra}`;
}

test('alice and bob receive each other\'s audio and video through greenroom', { timeout: 90_000 }, async () => {
  server = await startServer({ httpUrl: SERVER_URL });
  const cid = `default:e2e-${randomBytes(4).toString('hex')}`;
  const tokens = await Promise.all(USERS.map((u) => mintToken(u, cid)));

  browser = await launchBrowser();
  const pages = [];
  const consoles = [];
  try {
    for (const [i, user] of USERS.entries()) {
      const ctx = await browser.newContext();
      const page = await ctx.newPage();
      consoles.push(captureConsole(page, user));
      const q = new URLSearchParams({ token: tokens[i], call: cid, name: user });
      const resp = await page.goto(`${SERVER_URL}/test/media.html?${q}`);
      assert.ok(resp?.ok(), `GET /test/media.html answered ${resp?.status()}: does the server serve control/web/?`);
      pages.push(page);
    }

    // Wait (bounded) until each page decodes video and receives audio from the other user.
    const deadline = Date.now() + MEDIA_TIMEOUT_MS;
    let snaps = [];
    for (;;) {
      snaps = await Promise.all(pages.map(snapshot));
      const done = snaps.every((s, i) => hasMedia(s, USERS[1 - i]));
      if (done) break;
      const broken = snaps.findIndex((s) => s.state === 'error' || s.state === 'closed');
      if (broken >= 0) {
        assert.fail(`${USERS[broken]}'s page stopped: ${snaps[broken].error ?? snaps[broken].state}\n${report(snaps)}`);
      }
      const fatal = snaps.findIndex((s) => (s.errors ?? []).some((e) => /^server error|connection failed/.test(e)));
      if (fatal >= 0) {
        assert.fail(`${USERS[fatal]}'s page: ${snaps[fatal].errors.join('; ')}\n${report(snaps)}`);
      }
      if (server.exited()) {
        assert.fail(`greenroom serve exited during the test: ${JSON.stringify(server.exited())}\n${report(snaps)}`);
      }
      if (Date.now() > deadline) {
        const missing = snaps
          .map((s, i) => {
            const other = USERS[1 - i];
            const { video, audio } = fromOther(s, other);
            return `${USERS[i]}: video from ${other} framesDecoded=${video?.framesDecoded ?? 'no track'}, ` +
              `audio from ${other} bytesReceived=${audio?.bytesReceived ?? 'no track'} (state ${s.state})`;
          })
          .join('; ');
        assert.fail(`no media after ${MEDIA_TIMEOUT_MS / 1000} s: ${missing}\n${report(snaps)}`);
      }
      await sleep(500);
    }

    // Media keeps flowing: both counters grow over a short window.
    await sleep(GROWTH_WINDOW_MS);
    const later = await Promise.all(pages.map(snapshot));
    for (const [i, user] of USERS.entries()) {
      const other = USERS[1 - i];
      const before = fromOther(snaps[i], other);
      const after2 = fromOther(later[i], other);
      assert.ok(before.video.framesDecoded > 0, `${user} decoded video from ${other}`);
      assert.ok(before.audio.bytesReceived > 0, `${user} received audio from ${other}`);
      assert.ok(
        (after2.video?.framesDecoded ?? 0) > before.video.framesDecoded,
        `${user}: video from ${other} stopped decoding (${before.video.framesDecoded} -> ${after2.video?.framesDecoded})\n${report(later)}`,
      );
      assert.ok(
        (after2.audio?.bytesReceived ?? 0) > before.audio.bytesReceived,
        `${user}: audio from ${other} stopped (${before.audio.bytesReceived} -> ${after2.audio?.bytesReceived} bytes)\n${report(later)}`,
      );
      assert.ok(['published'].includes(later[i].state), `${user} state ${later[i].state}`);
    }
    // The browsers publish one layer: their video went the lean path (rtc.lean_video on).
    const lean = await metricValue(SERVER_URL, 'greenroom_lean_video_packets_total');
    assert.ok(lean > 0, `lean video packets: ${lean}`);
  } finally {
    const dir = ensureArtifacts();
    for (const [i, page] of pages.entries()) {
      await page.screenshot({ path: join(dir, `media-${USERS[i]}.png`) }).catch(() => {});
    }
    const finalSnaps = await Promise.all(pages.map((p) => snapshot(p).catch((e) => ({ error: String(e) }))));
    writeFileSync(join(dir, 'media-diagnostics.json'), JSON.stringify({ cid, pages: finalSnaps, console: consoles }, null, 2));
    await browser.close().catch(() => {});
    browser = undefined;
    await server.stop().catch(() => {});
    server = undefined;
  }
});
