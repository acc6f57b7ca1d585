// Checks of the browser side alone (no greenroom server): Chromium launches with the test flags,
// fake devices capture, and control/web/test/media.html reports a missing server cleanly.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { ROOT, launchBrowser, startStatic, freePort, ensureArtifacts, captureConsole } from './lib.mjs';

let browser;
let web;

before(async () => {
  browser = await launchBrowser();
  web = await startStatic(join(ROOT, 'control/web'));
});

after(async () => {
  await browser?.close();
  await web?.close();
});

test('fake camera and microphone capture in headless Chromium', { timeout: 20_000 }, async () => {
  const page = await browser.newPage();
  try {
    await page.goto(`${web.url}/test/media.html?audio=0&video=0`); // any secure-context page
    const r = await page.evaluate(async () => {
      const a = await navigator.mediaDevices.getUserMedia({ audio: true });
      const v = await navigator.mediaDevices.getUserMedia({ video: true });
      const at = a.getAudioTracks()[0];
      const vt = v.getVideoTracks()[0];
      const out = { audio: at?.readyState, video: vt?.readyState, size: vt?.getSettings() };
      at?.stop();
      vt?.stop();
      return out;
    });
    assert.equal(r.audio, 'live');
    assert.equal(r.video, 'live');
    assert.ok(r.size.width > 0 && r.size.height > 0, `video settings ${JSON.stringify(r.size)}`);
  } finally {
    await page.close();
  }
});

test('media.html captures, tries to join, and reports a missing server as an error', { timeout: 20_000 }, async () => {
  const port = await freePort(); // nothing listens here
  const page = await browser.newPage();
  const logs = captureConsole(page, 'page');
  try {
    const q = new URLSearchParams({
      token: 'not-a-real-token',
      call: 'default:nobody',
      name: 'alice',
      signal: `ws://127.0.0.1:${port}/v1/signal`,
    });
    await page.goto(`${web.url}/test/media.html?${q}`);
    await page.waitForFunction(() => window.greenroom?.state === 'error', null, { timeout: 10_000 });
    const gr = await page.evaluate(() => ({
      state: window.greenroom.state,
      error: window.greenroom.error,
      local: window.greenroom.local,
      states: window.greenroom.events.filter((e) => e.type === 'state').map((e) => e.detail),
    }));
    assert.deepEqual(gr.states, ['media', 'joining', 'error'], JSON.stringify(gr));
    assert.match(gr.error, /WebSocket to ws:\/\/127\.0\.0\.1:\d+\/v1\/signal failed .*is the server running/);
    assert.equal(gr.local.audio?.readyState, 'live', 'microphone captured');
    assert.equal(gr.local.video?.readyState, 'live', 'camera captured');
    const shown = await page.locator('#errors').innerText();
    assert.match(shown, /WebSocket .* failed/, 'the error is shown on the page');
    assert.equal(await page.locator('#status').innerText(), 'error');
    assert.equal(await page.locator('#local video').count(), 1, 'local camera preview');
    // stats() works before any subscriber media: no inbound tracks.
    assert.deepEqual(await page.evaluate(() => window.greenroom.stats()), []);
    await page.screenshot({ path: join(ensureArtifacts(), 'page-no-server.png') });
  } catch (e) {
    e.message += `\nconsole:\n${logs.join('\n')}`;
    throw e;
  } finally {
    await page.close();
  }
});

test('media.html without token and call shows what is missing', { timeout: 10_000 }, async () => {
  const page = await browser.newPage();
  try {
    await page.goto(`${web.url}/test/media.html`);
    await page.waitForFunction(() => window.greenroom?.state === 'error', null, { timeout: 5_000 });
    const err = await page.evaluate(() => window.greenroom.error);
    assert.match(err, /token and call are required/);
    assert.match(await page.locator('#errors').innerText(), /token and call are required/);
  } finally {
    await page.close();
  }
});
