// End-to-end tests of the web app (control/web/index.html + the SDK in control/web/sdk/) against a
// real `greenroom serve`, in headless Chromium with fake devices. Permissions are controlled by the
// test: the main browser runs WITHOUT --use-fake-ui-for-media-stream; contexts get permissions at
// creation, and CDP Browser.setPermission revokes or grants one permission mid-call.
//
// The server listens on a free port (not 7880) so this file can run next to media.test.mjs.
// Screenshots: test-artifacts/screenshots/. Server log: test-artifacts/app-server.log.
// Media assertions need the media plane (sfu); every wait is bounded and says what is missing.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { ROOT, launchBrowser, startServer, freePort, mintToken } from './lib.mjs';
import {
  SHOTS, ensureShots, openApp, appState, audioBytesFrom, framesFrom, waitUntil, waitGrowing, waitStalled,
  setPermission, tileOf, diagnostics,
} from './app-helpers.mjs';

const MEDIA_TIMEOUT_MS = 20_000;
const UI_TIMEOUT_MS = 10_000;
const rand = () => randomBytes(3).toString('hex');

let server;
let baseUrl;
let browser;
let shareBrowser;
let adminToken;

before(async () => {
  const http = await freePort();
  const udp = await freePort();
  baseUrl = `http://127.0.0.1:${http}`;
  // Serve this checkout's web app, whichever binary runs.
  process.env.GREENROOM_WEB_ROOT ??= join(ROOT, 'control/web');
  server = await startServer({
    httpUrl: baseUrl,
    args: ['--http-addr', `127.0.0.1:${http}`, '--udp-addr', `127.0.0.1:${udp}`],
    logName: 'app-server.log',
  });
  browser = await launchBrowser({ fakeUi: false });
  adminToken = await mintToken('e2e-admin', null, { admin: true });
  ensureShots();
});

after(async () => {
  await browser?.close().catch(() => {});
  await shareBrowser?.close().catch(() => {});
  await server?.stop().catch(() => {});
});

async function getCall(cid) {
  const [type, id] = cid.split(':');
  const r = await fetch(`${baseUrl}/v1/calls/${type}/${id}`, { headers: { authorization: `Bearer ${adminToken}` } });
  return { status: r.status, body: await r.json().catch(() => null) };
}

async function shot(handle, name) {
  await handle.page.screenshot({ path: join(SHOTS, name) }).catch(() => {});
}

async function joinFromPrejoin(h) {
  const join = h.page.getByTestId('join');
  await join.waitFor({ state: 'visible', timeout: UI_TIMEOUT_MS });
  await waitUntil(`${h.user}: join button enabled`, () => join.isEnabled(), { timeout: UI_TIMEOUT_MS, diag: () => diagnostics([h], server) });
  await join.click();
  await waitUntil(`${h.user}: in the call`, async () => (await appState(h.page)).screen === 'call', { timeout: UI_TIMEOUT_MS, diag: () => diagnostics([h], server) });
}

// ---- pre-join permission checks --------------------------------------------------------------

test('pre-join: no camera/microphone permission shows why and does not join with media', { timeout: 45_000 }, async () => {
  const cid = `default:app-noperm-${rand()}`;
  const h = await openApp(browser, { baseUrl, user: 'nina', cid, permissions: [] });
  try {
    const perm = h.page.getByTestId('permission-message');
    await waitUntil('a blocking permission message', async () => (await perm.getAttribute('data-state')) === 'bad', { timeout: UI_TIMEOUT_MS, diag: () => diagnostics([h], server) });
    const text = await perm.innerText();
    assert.match(text, /microphone/i, text);
    assert.match(text, /blocked/i, text);
    assert.match(text, /Chrome/, `browser-specific instructions expected: ${text}`);
    assert.equal(await h.page.getByTestId('mic-status').getAttribute('data-state'), 'denied');
    assert.equal(await h.page.getByTestId('join').isDisabled(), true, 'join must be disabled without a microphone');
    await shot(h, 'prejoin-blocked.png');
    // Nobody joined: the call was never created.
    const c = await getCall(cid);
    assert.ok(c.status === 404 || (c.body?.call?.participants ?? []).length === 0, `call ${cid}: ${c.status} ${JSON.stringify(c.body)}`);

    // The user allows the devices and checks again: ready to join.
    // The app watches the permissions and checks again by itself; "Check again" is the fallback.
    await h.ctx.grantPermissions(['camera', 'microphone'], { origin: baseUrl });
    const auto = await waitUntil('the automatic re-check', async () => (await perm.getAttribute('data-state')) === 'ok', { timeout: 3000 }).catch(() => false);
    if (!auto) await h.page.getByTestId('check-again').click();
    await waitUntil('the ready message', async () => (await perm.getAttribute('data-state')) === 'ok', { timeout: UI_TIMEOUT_MS, diag: () => diagnostics([h], server) });
    assert.equal(await h.page.getByTestId('join').isEnabled(), true);
    await waitUntil('the camera preview', () => h.page.locator('#preview-video').isVisible(), { timeout: UI_TIMEOUT_MS });
    await shot(h, 'prejoin.png');
  } finally {
    await h.ctx.close();
  }
});

const count = (text, re) => (text.match(new RegExp(re, 'gi')) ?? []).length;

test('pre-join: missing devices are named exactly (microphone, camera or both), never repeated', { timeout: 45_000 }, async () => {
  const cases = [
    { hide: ['audioinput'], state: 'bad', heading: /^Connect a microphone$/, found: { microphone: 1, camera: 0 } },
    { hide: ['audioinput', 'videoinput'], state: 'bad', heading: /^Connect a microphone and a camera$/, found: { microphone: 1, camera: 1 } },
    { hide: ['videoinput'], state: 'warn', heading: /^Connect a camera to be seen$/, found: { microphone: 0, camera: 1 } },
  ];
  for (const c of cases) {
    const h = await openApp(browser, { baseUrl, user: 'nodev', cid: `default:app-nodev-${rand()}`, hideDevices: c.hide });
    try {
      const perm = h.page.getByTestId('permission-message');
      await waitUntil(`${c.hide}: the missing-device message`, async () => (await perm.getAttribute('data-state')) === c.state, { timeout: UI_TIMEOUT_MS, diag: () => diagnostics([h], server) });
      const text = await perm.innerText();
      const heading = (await perm.locator('strong').first().innerText()).trim();
      assert.match(heading, c.heading, `${c.hide}: ${text}`);
      // Each missing device is said once (its status pill), nothing is said twice.
      assert.equal(count(text, 'No microphone found'), c.found.microphone, `${c.hide}: ${text}`);
      assert.equal(count(text, 'No camera found'), c.found.camera, `${c.hide}: ${text}`);
      if (!c.hide.includes('videoinput')) assert.doesNotMatch(heading, /camera/i, 'only the microphone is missing');
      if (!c.hide.includes('audioinput')) assert.doesNotMatch(heading, /microphone/i, 'only the camera is missing');
      const lines = text.split('\n').map((l) => l.trim()).filter(Boolean);
      assert.equal(new Set(lines).size, lines.length, `a line is repeated: ${text}`);
      assert.equal(await h.page.getByTestId('join').isDisabled(), c.state === 'bad', `${c.hide}: join enabled only with a microphone`);
      await shot(h, `prejoin-missing-${c.hide.join('-')}.png`);
    } finally {
      await h.ctx.close();
    }
  }
});

test('pre-join on a phone: Join is visible without scrolling and a long call id is cut with an ellipsis', { timeout: 45_000 }, async () => {
  const viewport = { width: 390, height: 844 };
  const cid = `default:app-phone-weekly-sync-platform-reliability-team-${rand()}`;
  const h = await openApp(browser, { baseUrl, user: 'pia', cid, viewport });
  try {
    const join = h.page.getByTestId('join');
    await waitUntil('pia: join enabled', () => join.isEnabled(), { timeout: UI_TIMEOUT_MS, diag: () => diagnostics([h], server) });
    await waitUntil('pia: camera preview', () => h.page.locator('#preview-video').isVisible(), { timeout: UI_TIMEOUT_MS });
    const seen = await h.page.evaluate(() => {
      const b = document.querySelector('[data-testid=join]');
      const r = b.getBoundingClientRect();
      const top = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
      return { scrollY: window.scrollY, top: r.top, bottom: r.bottom, height: window.innerHeight, hit: !!top && (top === b || b.contains(top)) };
    });
    assert.equal(seen.scrollY, 0, 'the page was not scrolled');
    assert.ok(seen.top >= 0 && seen.bottom <= seen.height, `Join inside the first screen: ${JSON.stringify(seen)}`);
    assert.ok(seen.hit, `Join is not covered by anything: ${JSON.stringify(seen)}`);
    const id = await h.page.getByTestId('call-id').evaluate((el) => {
      const cs = getComputedStyle(el);
      return { text: el.textContent, overflow: cs.textOverflow, whiteSpace: cs.whiteSpace, cut: el.scrollWidth > el.clientWidth, right: el.getBoundingClientRect().right };
    });
    assert.equal(id.text, cid, 'the call id is shown');
    assert.equal(id.overflow, 'ellipsis');
    assert.equal(id.whiteSpace, 'nowrap');
    assert.ok(id.cut, `the long id overflows its line and is cut: ${JSON.stringify(id)}`);
    assert.ok(id.right <= viewport.width, `the id stays inside the screen: ${JSON.stringify(id)}`);
    const wide = await h.page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(wide <= viewport.width, `no horizontal scrolling (${wide} px wide)`);
    await shot(h, 'prejoin-phone.png');
  } finally {
    await h.ctx.close();
  }
});

// ---- audio-only, microphone and camera revoked mid-call --------------------------------------

/** alice: microphone only (camera denied); bob: both. Shared by the next tests. */
const duo = { cid: `default:app-duo-${rand()}`, alice: null, bob: null, alicePid: null };
const duoDiag = () => diagnostics([duo.alice, duo.bob], server);

test('camera denied, microphone granted: joins audio-only and the other side receives audio', { timeout: 60_000 }, async () => {
  duo.alice = await openApp(browser, { baseUrl, user: 'alice', cid: duo.cid, permissions: ['microphone'] });
  duo.bob = await openApp(browser, { baseUrl, user: 'bob', cid: duo.cid, permissions: ['camera', 'microphone'] });
  const { alice, bob } = duo;

  const perm = alice.page.getByTestId('permission-message');
  await waitUntil('alice: camera warning', async () => (await perm.getAttribute('data-state')) === 'warn', { timeout: UI_TIMEOUT_MS, diag: duoDiag });
  assert.match(await perm.innerText(), /audio only/i);
  assert.equal(await alice.page.getByTestId('camera-status').getAttribute('data-state'), 'denied');
  assert.match(await alice.page.getByTestId('join').innerText(), /audio only/i);

  await joinFromPrejoin(alice);
  await joinFromPrejoin(bob);
  const a = await appState(alice.page);
  duo.alicePid = a.call.participantId;
  assert.ok(duo.alicePid, 'alice has a participant id');
  assert.equal(a.call.local.audioOnly, true, 'alice joined audio-only');
  assert.equal(a.call.local.camera.published, false, 'alice does not publish a camera');
  await waitUntil('alice: audio-only banner', () => alice.page.getByTestId('audio-only').isVisible(), { timeout: UI_TIMEOUT_MS, diag: duoDiag });
  // Bob sees alice with the video-off placeholder.
  await waitUntil("bob: alice's tile with a placeholder", async () => {
    const t = tileOf(bob.page, 'alice');
    return (await t.count()) === 1 && (await t.getAttribute('data-video-off')) === 'true' && (await t.getByTestId('video-off').isVisible());
  }, { timeout: UI_TIMEOUT_MS, diag: duoDiag });
  await shot(bob, 'call.png');

  // Media: bob receives alice's audio.
  await waitUntil("bob receives alice's audio", async () => (await audioBytesFrom(bob.page, 'alice')) > 0, { timeout: MEDIA_TIMEOUT_MS, diag: duoDiag });
  await waitGrowing("alice's audio at bob keeps flowing", () => audioBytesFrom(bob.page, 'alice'), { timeout: 5000, diag: duoDiag });
  await waitUntil('bob: published camera decodes at alice', async () => (await framesFrom(alice.page, 'bob')) > 0, { timeout: MEDIA_TIMEOUT_MS, diag: duoDiag });
  await shot(bob, 'call.png');
  await bob.page.setViewportSize({ width: 390, height: 780 });
  await shot(bob, 'call-phone.png');
  await bob.page.setViewportSize({ width: 1100, height: 720 });
});

test('microphone revoked mid-call: "Microphone blocked", audio stops, then resumes in the same session', { timeout: 60_000 }, async () => {
  const { alice, bob } = duo;
  assert.ok(alice && bob && duo.alicePid, 'needs the call of the previous test');
  const tileBox = async () => {
    const boxes = {};
    for (const u of ['alice', 'bob']) boxes[u] = await tileOf(alice.page, u).boundingBox();
    return boxes;
  };
  const before = await tileBox();
  assert.ok(before.alice && before.bob, `both tiles on screen: ${JSON.stringify(before)}`);
  await setPermission(alice, 'microphone', 'denied');
  const banner = alice.page.getByTestId('microphone-blocked');
  await waitUntil('alice: "Microphone blocked"', () => banner.isVisible(), { timeout: UI_TIMEOUT_MS, diag: duoDiag });
  // The banner floats over the call: the tiles did not move or shrink.
  assert.deepEqual(await tileBox(), before, 'the banner moved the video tiles');
  assert.match(await alice.page.locator('#banners').evaluate((el) => getComputedStyle(el).position), /absolute|fixed/);
  assert.match(await banner.innerText(), /Microphone blocked/);
  const local = (await appState(alice.page)).call.local.microphone;
  assert.equal(local.on, false, 'alice no longer sends audio');
  assert.ok(local.blocked, 'the microphone is marked blocked');
  await shot(alice, 'call-mic-blocked.png');

  // Others see alice muted, and her audio stops reaching bob.
  await waitUntil("bob: alice's muted badge", () => tileOf(bob.page, 'alice').getByTestId('muted-badge').isVisible(), { timeout: UI_TIMEOUT_MS, diag: duoDiag });
  const stalledAt = await waitStalled("alice's audio at bob after the revoke", () => audioBytesFrom(bob.page, 'alice'), { diag: duoDiag });
  assert.ok(stalledAt > 0, 'audio had flowed before the revoke');

  // Granted again: same session, audio resumes.
  await setPermission(alice, 'microphone', 'granted');
  await waitUntil('alice: banner gone', async () => !(await banner.isVisible()), { timeout: UI_TIMEOUT_MS, diag: duoDiag });
  const after = await appState(alice.page);
  assert.equal(after.call.participantId, duo.alicePid, 'same participant session');
  assert.equal(after.call.local.microphone.on, true, 'microphone live again');
  await waitUntil("bob: alice's audio grows again", async () => (await audioBytesFrom(bob.page, 'alice')) > stalledAt, { timeout: MEDIA_TIMEOUT_MS, diag: duoDiag });
  const bobView = await appState(bob.page);
  assert.ok(bobView.call.participants.some((p) => p.participantId === duo.alicePid), 'bob still sees the same alice session');
  await waitUntil("bob: alice's muted badge gone", async () => !(await tileOf(bob.page, 'alice').getByTestId('muted-badge').isVisible()), { timeout: UI_TIMEOUT_MS, diag: duoDiag });
});

test('camera revoked mid-call: the other side shows the placeholder, audio keeps flowing', { timeout: 60_000 }, async () => {
  const { alice, bob } = duo;
  assert.ok(alice && bob, 'needs the call of the previous tests');
  await waitGrowing("alice decodes bob's camera", () => framesFrom(alice.page, 'bob'), { timeout: MEDIA_TIMEOUT_MS, diag: duoDiag });
  await waitUntil("alice: bob's video shown", async () => (await tileOf(alice.page, 'bob').getAttribute('data-video-off')) === 'false', { timeout: UI_TIMEOUT_MS, diag: duoDiag });

  await setPermission(bob, 'camera', 'denied');
  await waitUntil('bob: "Camera blocked"', () => bob.page.getByTestId('camera-blocked').isVisible(), { timeout: UI_TIMEOUT_MS, diag: duoDiag });
  await waitUntil("alice: bob's video-off placeholder", async () => {
    const t = tileOf(alice.page, 'bob');
    return (await t.getAttribute('data-video-off')) === 'true' && (await t.getByTestId('video-off').isVisible());
  }, { timeout: UI_TIMEOUT_MS, diag: duoDiag });
  await waitGrowing("bob's audio at alice keeps flowing", () => audioBytesFrom(alice.page, 'bob'), { timeout: 5000, diag: duoDiag });
  await shot(alice, 'call-camera-off.png');

  await setPermission(bob, 'camera', 'granted');
  await waitUntil("alice: bob's video back", async () => (await tileOf(alice.page, 'bob').getAttribute('data-video-off')) === 'false', { timeout: MEDIA_TIMEOUT_MS, diag: duoDiag });
  await waitGrowing("alice decodes bob's camera again", () => framesFrom(alice.page, 'bob'), { timeout: MEDIA_TIMEOUT_MS, diag: duoDiag });
});

test('reactions: the bar is shown to those who may react, and others see the reaction briefly', { timeout: 45_000 }, async () => {
  const { alice, bob } = duo;
  assert.ok(alice && bob, 'needs the call of the previous tests');
  for (const h of [alice, bob]) {
    const caps = (await appState(h.page)).call.capabilities;
    assert.ok(caps.includes('create-reaction'), `${h.user} may react: ${caps}`);
    await waitUntil(`${h.user}: reaction bar`, () => h.page.getByTestId('reaction-bar').isVisible(), { timeout: UI_TIMEOUT_MS, diag: duoDiag });
  }
  const popAtAlice = alice.page.locator('[data-testid=reaction][data-user-id=bob][data-type=heart]');
  assert.equal(await popAtAlice.count(), 0);
  await bob.page.getByTestId('react-heart').click();
  await waitUntil("alice: bob's heart", () => popAtAlice.isVisible(), { timeout: UI_TIMEOUT_MS, diag: duoDiag });
  assert.match(await popAtAlice.innerText(), /bob/);
  assert.match(await popAtAlice.innerText(), /\u2764/);
  await shot(alice, 'call-reaction.png');
  // Brief: it goes away by itself.
  await waitUntil("alice: bob's heart gone again", async () => (await popAtAlice.count()) === 0, { timeout: UI_TIMEOUT_MS, diag: duoDiag });
});

test('close the video call', async () => {
  for (const h of [duo.alice, duo.bob]) await h?.ctx.close().catch(() => {});
});

// ---- audio room: raise hand, approve, hear, revoke -------------------------------------------

test('audio room: a listener raises a hand, the host approves, a third page hears them; revoke stops it', { timeout: 75_000 }, async () => {
  const cid = `audio_room:app-room-${rand()}`;
  const host = await openApp(browser, { baseUrl, user: 'hana', role: 'host', cid, permissions: ['microphone'] });
  const handles = [host];
  const diag = () => diagnostics(handles, server);
  try {
    await joinFromPrejoin(host);
    await waitUntil('host: backstage banner', () => host.page.getByTestId('backstage-banner').isVisible(), { timeout: UI_TIMEOUT_MS, diag });
    await shot(host, 'audio-room-backstage.png');
    await host.page.getByTestId('go-live').click();
    await waitUntil('host: LIVE', () => host.page.getByTestId('live-badge').isVisible(), { timeout: UI_TIMEOUT_MS, diag });

    const leo = await openApp(browser, { baseUrl, user: 'leo', role: 'user', cid, permissions: ['microphone'] });
    const eve = await openApp(browser, { baseUrl, user: 'eve', role: 'user', cid, permissions: ['microphone'] });
    handles.push(leo, eve);
    assert.match(await leo.page.getByTestId('join').innerText(), /listener/i);
    await joinFromPrejoin(leo);
    await joinFromPrejoin(eve);
    await waitUntil('leo in the audience', () => leo.page.locator('[data-testid=room-audience] [data-user-id=leo]').isVisible(), { timeout: UI_TIMEOUT_MS, diag });
    // The reaction bar follows create-reaction, whatever the role grants.
    for (const h of [host, leo]) {
      const may = (await appState(h.page)).call.capabilities.includes('create-reaction');
      assert.equal(await h.page.getByTestId('reaction-bar').isVisible(), may, `${h.user}: reaction bar iff create-reaction (${may})`);
    }

    await leo.page.getByTestId('raise-hand').click();
    await waitUntil('leo: request pending', () => leo.page.getByTestId('hand-pending').isVisible(), { timeout: UI_TIMEOUT_MS, diag });
    await waitUntil("host: leo's request", () => host.page.getByTestId('request-leo').isVisible(), { timeout: UI_TIMEOUT_MS, diag });
    await shot(host, 'audio-room-request.png');
    await host.page.getByTestId('approve-leo').click();
    await waitUntil('leo: may speak', async () => (await appState(leo.page)).call.capabilities.includes('send-audio'), { timeout: UI_TIMEOUT_MS, diag });
    await waitUntil('leo: pending gone', async () => !(await leo.page.getByTestId('hand-pending').isVisible()), { timeout: UI_TIMEOUT_MS, diag });
    await waitUntil('leo: mic control', () => leo.page.getByTestId('toggle-mic').isVisible(), { timeout: UI_TIMEOUT_MS, diag });
    await shot(host, 'audio-room.png');

    // Eve asks too and the host declines: her hand goes down and she stays a listener.
    await eve.page.getByTestId('raise-hand').click();
    await waitUntil("host: eve's request", () => host.page.getByTestId('request-eve').isVisible(), { timeout: UI_TIMEOUT_MS, diag });
    await host.page.getByTestId('deny-eve').click();
    await waitUntil('eve: request answered', async () => (await eve.page.getByTestId('raise-hand').isVisible()) && (await appState(eve.page)).call.pending.length === 0, { timeout: UI_TIMEOUT_MS, diag });
    assert.ok(!(await appState(eve.page)).call.capabilities.includes('send-audio'), 'eve may not speak');
    await waitUntil("host: eve's request gone", async () => !(await host.page.getByTestId('request-eve').isVisible()), { timeout: UI_TIMEOUT_MS, diag });

    // Reactions follow create-reaction. A listener holds it by default in an audio room: eve has
    // the bar and the host sees her reaction; revoked, the bar goes; granted again, it comes back.
    const eveBar = eve.page.getByTestId('reaction-bar');
    const eveMay = async () => (await appState(eve.page)).call.capabilities.includes('create-reaction');
    assert.ok(await eveMay(), 'a listener may react by default');
    await waitUntil('eve: reaction bar by default', () => eveBar.isVisible(), { timeout: UI_TIMEOUT_MS, diag });
    await eve.page.getByTestId('react-like').click();
    await waitUntil("host: eve's like", () => host.page.locator('[data-testid=reaction][data-user-id=eve][data-type=like]').isVisible(), { timeout: UI_TIMEOUT_MS, diag });
    await host.page.evaluate(() => window.app.call.revokePermissions('eve', ['create-reaction']));
    await waitUntil('eve: reaction bar hidden without create-reaction', async () => !(await eveMay()) && !(await eveBar.isVisible()), { timeout: UI_TIMEOUT_MS, diag });
    await host.page.evaluate(() => window.app.call.grantPermissions('eve', ['create-reaction']));
    await waitUntil('eve: reaction bar back with create-reaction', async () => (await eveMay()) && (await eveBar.isVisible()), { timeout: UI_TIMEOUT_MS, diag });

    // Media: eve hears leo.
    await waitUntil("eve receives leo's audio", async () => (await audioBytesFrom(eve.page, 'leo')) > 0, { timeout: MEDIA_TIMEOUT_MS, diag });
    await waitGrowing("leo's audio at eve keeps flowing", () => audioBytesFrom(eve.page, 'leo'), { timeout: 5000, diag });
    await waitUntil('leo on stage at eve', () => eve.page.locator('[data-testid=room-stage] [data-user-id=leo]').isVisible(), { timeout: UI_TIMEOUT_MS, diag });
    await shot(host, 'audio-room.png');

    // Layout: large avatar seats, centered in the stage, wrapping onto new rows.
    // (The call screen is the <greenroom-call> element: its DOM is in an open shadow root.)
    const layout = await eve.page.getByTestId('room-stage').evaluate((grid) => {
      const g = grid.getBoundingClientRect();
      const seats = [...grid.querySelectorAll('[data-testid=seat]')].map((s) => s.getBoundingClientRect());
      const avatar = grid.querySelector('[data-testid=seat] .avatar').getBoundingClientRect();
      return { left: g.left, right: g.right, wrap: getComputedStyle(grid).flexWrap, seatsLeft: Math.min(...seats.map((r) => r.left)), seatsRight: Math.max(...seats.map((r) => r.right)), avatar: avatar.width, n: seats.length };
    });
    assert.ok(layout.n >= 2, `hana and leo on stage: ${JSON.stringify(layout)}`);
    assert.ok(layout.avatar >= 96, `large avatars: ${JSON.stringify(layout)}`);
    assert.equal(layout.wrap, 'wrap');
    const gapLeft = layout.seatsLeft - layout.left;
    const gapRight = layout.right - layout.seatsRight;
    assert.ok(gapLeft > 50 && Math.abs(gapLeft - gapRight) <= 2, `seats centered: ${JSON.stringify(layout)}`);

    // The host moves leo back to the audience: his audio stops.
    const revoke = host.page.getByTestId('revoke-leo');
    await waitUntil('host: revoke control for leo', () => revoke.isVisible(), { timeout: UI_TIMEOUT_MS, diag });
    await revoke.click();
    await waitUntil('leo: send-audio revoked', async () => !(await appState(leo.page)).call.capabilities.includes('send-audio'), { timeout: UI_TIMEOUT_MS, diag });
    await waitUntil('leo: told he is back in the audience', () => leo.page.getByTestId('revoked').isVisible(), { timeout: UI_TIMEOUT_MS, diag });
    await waitStalled("leo's audio at eve after the revoke", () => audioBytesFrom(eve.page, 'leo'), { diag });
    // Back in the audience, leo has no microphone control (no red "Unmute" the server would refuse).
    await waitUntil('leo: no mic control in the audience', async () => !(await leo.page.getByTestId('toggle-mic').isVisible()), { timeout: UI_TIMEOUT_MS, diag });
  } finally {
    for (const h of handles) await h.ctx.close().catch(() => {});
  }
});

// ---- screen share ----------------------------------------------------------------------------

test('screen share start and stop are seen by the other page', { timeout: 60_000 }, async () => {
  // getDisplayMedia needs the fake UI (auto-accepts the picker) in its own browser.
  shareBrowser = await launchBrowser({ fakeUi: true, extraArgs: ['--auto-select-desktop-capture-source=Entire screen'] });
  const cid = `default:app-share-${rand()}`;
  const sam = await openApp(shareBrowser, { baseUrl, user: 'sam', cid });
  const vic = await openApp(shareBrowser, { baseUrl, user: 'vic', cid });
  const diag = () => diagnostics([sam, vic], server);
  try {
    await joinFromPrejoin(sam);
    await joinFromPrejoin(vic);
    await sam.page.getByTestId('toggle-screen').click();
    await waitUntil('sam: sharing locally', () => tileOf(sam.page, 'sam', 'screen').isVisible(), { timeout: UI_TIMEOUT_MS, diag });
    await waitUntil("vic: sam's screen tile", () => tileOf(vic.page, 'sam', 'screen').isVisible(), { timeout: MEDIA_TIMEOUT_MS, diag });
    await waitUntil("vic decodes sam's screen", async () => (await framesFrom(vic.page, 'sam', 'screen_share')) > 0, { timeout: MEDIA_TIMEOUT_MS, diag });
    await vic.page.getByTestId('toggle-layout').click();
    await shot(vic, 'call-screenshare.png');
    await sam.page.getByTestId('toggle-screen').click();
    await waitUntil("vic: sam's screen tile gone", async () => (await tileOf(vic.page, 'sam', 'screen').count()) === 0, { timeout: UI_TIMEOUT_MS, diag });
  } finally {
    await sam.ctx.close().catch(() => {});
    await vic.ctx.close().catch(() => {});
  }
});
