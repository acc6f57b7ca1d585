// ICE over TCP with UDP blocked, in Firefox ESR (issue 14: "Chromium and Firefox must be able to
// connect with UDP blocked"). Like e2e/icetcp.test.mjs: a network namespace whose UDP is dropped
// by nftables (scripts/netns-udp-blocked.sh, made and removed here), joined to the host by a veth
// pair; `greenroom serve` listens on the host side (HTTP, UDP, and ICE-TCP on the UDP port's
// number). Firefox runs INSIDE the namespace; two pages embed `<greenroom-call>` and must decode
// each other's video and receive each other's audio, and every selected candidate pair must be
// TCP. Skips with a message where network namespaces cannot be made.
//
// Driving Firefox in another namespace: its WebDriver BiDi server listens on the namespace's
// 127.0.0.1 only, so a small TCP forwarder (node, also inside the namespace) exposes it on the
// namespace's veth address (rewriting the handshake's Host header, which Firefox checks), and
// puppeteer-core connects there. Prefs: fake devices, ICE-TCP on
// (`media.peerconnection.ice.tcp`), the test origin treated as secure (plain http to a
// non-loopback address) and holding a camera/microphone permission (see e2e/firefox.test.mjs).

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import puppeteer from 'puppeteer-core';
import { netnsUp, startServerForNetns, mintToken, pcPrelude, screenshotPages, sleep } from './lib.mjs';

const FIREFOX = process.env.FIREFOX_PATH || '/usr/bin/firefox-esr';
const MEDIA_TIMEOUT_MS = 40_000;
const USERS = ['alice', 'bob'];
// Inside the fresh namespace nothing else listens: fixed ports are free.
const BIDI_PORT = 9222;
const FORWARD_PORT = 9223;

// TCP forwarder: listen on argv[1]:argv[2], connect each client to 127.0.0.1:argv[3]. Firefox's
// HTTP server answers 400 to a Host it does not serve, so the handshake's Host header is
// rewritten to 127.0.0.1:<port> (the first chunk holds the request line and headers).
const FORWARDER = `
const net = require('node:net');
const [host, port, target] = process.argv.slice(1);
net.createServer((c) => {
  const u = net.connect(Number(target), '127.0.0.1');
  c.once('data', (first) => {
    u.write(first.toString('latin1').replace(/^Host:.*$/im, 'Host: 127.0.0.1:' + target), 'latin1');
    c.pipe(u);
  });
  u.pipe(c);
  c.on('error', () => u.destroy()); u.on('error', () => c.destroy());
}).listen(Number(port), host, () => console.log('forwarding'));
`;

let server;
let browser;
let netns = null;
let tmp = null;

after(async () => {
  await browser?.disconnect().catch(() => {});
  await server?.stop().catch(() => {});
  netns?.down();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

/** Decoded frames / audio bytes from `other`, and local/remote protocol of each selected pair. */
async function look(page, other) {
  return page.evaluate(async (other) => {
    const call = document.querySelector('greenroom-call')?.call;
    const stats = (await call?.stats()) ?? [];
    const frames = stats.filter((s) => s.kind === 'video' && s.userId === other).reduce((n, s) => n + (s.framesDecoded ?? 0), 0);
    const bytes = stats.filter((s) => s.kind === 'audio' && s.userId === other).reduce((n, s) => n + (s.bytesReceived ?? 0), 0);
    const protocols = [];
    for (const pc of window.__pcs ?? []) {
      const r = await pc.getStats();
      // Firefox has no `transport` stats: its selected pair is flagged `selected`.
      for (const s of r.values()) {
        if (s.type === 'candidate-pair' && s.selected) {
          const local = r.get(s.localCandidateId);
          const remote = r.get(s.remoteCandidateId);
          protocols.push(`${local?.protocol}/${remote?.protocol}`);
        }
      }
    }
    return { state: call?.state ?? null, connection: call?.connection ?? null, pcs: (window.__pcs ?? []).length, frames, bytes, protocols };
  }, other);
}

test('Firefox with UDP blocked connects over ICE-TCP', { timeout: 120_000 }, async (t) => {
  if (!existsSync(FIREFOX)) throw new Error(`Firefox not found at ${FIREFOX}: run scripts/install-browser-deps.sh`);
  netns = netnsUp(t, { tag: 'icetcp-ff', what: 'Firefox ICE-TCP test' });
  if (!netns) return;
  const { hostIp, nsIp } = netns;
  server = await startServerForNetns(netns, { logName: 'icetcp-firefox-server.log' });
  const url = server.url;
  const cid = `default:icetcp-ff-${randomBytes(4).toString('hex')}`;

  tmp = mkdtempSync(join(tmpdir(), 'gr-icetcp-ff-'));
  const profile = join(tmp, 'profile');
  const perms = join(tmp, 'perms.txt');
  writeFileSync(perms, ['camera', 'microphone'].map((p) => `origin\t${p}\t1\t${url}`).join('\n') + '\n');
  const prefs = {
    'media.navigator.streams.fake': true,
    'media.navigator.permission.disabled': true,
    'media.navigator.permission.fake': true,
    'media.peerconnection.ice.tcp': true,
    'media.peerconnection.ice.obfuscate_host_addresses': false,
    'media.autoplay.default': 0,
    'media.autoplay.blocking_policy': 0,
    // Plain http to a non-loopback address: a secure context only when allow-listed.
    'dom.securecontext.allowlist': hostIp,
    'media.devices.insecure.enabled': true,
    'media.getusermedia.insecure.enabled': true,
    'permissions.manager.defaultsUrl': `file://${perms}`,
    'dom.ipc.processPrelaunch.enabled': false,
    'browser.shell.checkDefaultBrowser': false,
    'datareporting.policy.dataSubmissionEnabled': false,
    'toolkit.telemetry.reportingpolicy.firstRun': false,
    'remote.enabled': true,
  };
  mkdirSync(profile, { recursive: true });
  writeFileSync(join(profile, 'user.js'), Object.entries(prefs).map(([k, v]) => `user_pref(${JSON.stringify(k)}, ${JSON.stringify(v)});`).join('\n') + '\n');

  await netns.spawnReady(
    [FIREFOX, '--headless', '--no-remote', '--profile', profile, '--remote-debugging-port', String(BIDI_PORT), 'about:blank'],
    /WebDriver BiDi listening on ws:\/\//,
    'Firefox in the namespace',
    { HOME: tmp, MOZ_CRASHREPORTER_DISABLE: '1' },
  );
  await netns.spawnReady([process.execPath, '-e', FORWARDER, nsIp, String(FORWARD_PORT), String(BIDI_PORT)], /forwarding/, 'BiDi forwarder');
  browser = await puppeteer.connect({ browserWSEndpoint: `ws://${nsIp}:${FORWARD_PORT}/session`, protocol: 'webDriverBiDi' });

  const pages = [];
  const logs = [];
  try {
    for (const user of USERS) {
      const page = await browser.newPage();
      page.on('console', (m) => logs.push(`[${user}] ${m.type()}: ${m.text()}`));
      page.on('pageerror', (e) => logs.push(`[${user}] pageerror: ${e.message}`));
      await page.evaluateOnNewDocument(pcPrelude());
      const token = await mintToken(user, cid);
      await page.goto(`${url}/sdk/examples/embed.html?${new URLSearchParams({ token, call: cid })}`);
      pages.push(page);
    }
    const deadline = Date.now() + MEDIA_TIMEOUT_MS;
    let seen = [];
    for (;;) {
      seen = await Promise.all(pages.map((p, i) => look(p, USERS[1 - i])));
      if (seen.every((s) => s.frames > 0 && s.bytes > 0)) break;
      if (Date.now() > deadline) {
        assert.fail(`no media both ways over ICE-TCP after ${MEDIA_TIMEOUT_MS / 1000} s: ${JSON.stringify(seen)}\n${logs.slice(-20).join('\n')}\n${server.logTail(30)}`);
      }
      await sleep(500);
    }
    await sleep(1500);
    const later = await Promise.all(pages.map((p, i) => look(p, USERS[1 - i])));
    for (const [i, user] of USERS.entries()) {
      assert.ok(later[i].frames > seen[i].frames, `${user}: video stopped (${seen[i].frames} -> ${later[i].frames})`);
      assert.ok(later[i].bytes > seen[i].bytes, `${user}: audio stopped (${seen[i].bytes} -> ${later[i].bytes})`);
      assert.equal(later[i].protocols.length, 2, `${user}: a selected pair per PeerConnection: ${JSON.stringify(later[i])}`);
      for (const p of later[i].protocols) {
        assert.equal(p, 'tcp/tcp', `${user}: selected candidate pair protocol (local/remote)`);
      }
    }
  } finally {
    await screenshotPages(pages, 'icetcp-firefox', USERS);
    await browser.close().catch(() => {});
    browser = undefined;
    await server.stop().catch(() => {});
    server = undefined;
    netns.down();
  }
});
