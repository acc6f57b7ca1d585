// ICE over TCP with UDP blocked (issue 14): Chromium runs inside a network namespace whose UDP
// is dropped by nftables (scripts/netns-udp-blocked.sh, made and removed by this test), joined
// to the host by a veth pair; `greenroom serve` listens on the host side of the veth (HTTP,
// UDP, and ICE-TCP on the UDP port's number, the default). Two pages (alice, bob) must decode
// each other's video and receive each other's audio, and every PeerConnection's selected
// candidate pair must be TCP. Skips with a message where network namespaces cannot be made
// (not root, a kernel or container that refuses them).

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { readFileSync, writeFileSync, mkdtempSync, rmSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { ROOT, CHROMIUM, CHROMIUM_ARGS, startServer, mintToken, ensureArtifacts, freePort, sleep } from './lib.mjs';

const NETNS = join(ROOT, 'scripts/netns-udp-blocked.sh');
const MEDIA_TIMEOUT_MS = 40_000;
const USERS = ['alice', 'bob'];

// Collects the page's PeerConnections (for getStats) before media.js creates them.
const PRELUDE = `
const __NativePc = window.RTCPeerConnection;
window.__pcs = [];
window.RTCPeerConnection = class extends __NativePc {
  constructor(config = {}) {
    super(config);
    window.__pcs.push(this);
  }
};
`;

let server;
let browser;
let netns = null;
let tmp = null;

function netnsDown() {
  if (!netns) return;
  try {
    execFileSync(NETNS, ['down', netns.name, String(netns.index)], { stdio: 'ignore', timeout: 30_000 });
  } catch { /* best effort */ }
  netns = null;
}
process.once('exit', netnsDown);

after(async () => {
  await browser?.close().catch(() => {});
  await server?.stop().catch(() => {});
  netnsDown();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

/** Frames decoded / audio bytes from `other`, and the protocol of each selected ICE pair. */
async function look(page, other) {
  return page.evaluate(async (other) => {
    const g = window.greenroom;
    const stats = g ? await g.stats() : [];
    const video = stats.find((s) => s.kind === 'video' && s.user_id === other);
    const audio = stats.find((s) => s.kind === 'audio' && s.user_id === other);
    const protocols = [];
    for (const pc of window.__pcs ?? []) {
      const r = await pc.getStats();
      for (const s of r.values()) {
        if (s.type === 'transport' && s.selectedCandidatePairId) {
          const pair = r.get(s.selectedCandidatePairId);
          const local = pair && r.get(pair.localCandidateId);
          const remote = pair && r.get(pair.remoteCandidateId);
          protocols.push(`${local?.protocol}/${remote?.protocol}`);
        }
      }
    }
    return {
      state: g?.state,
      error: g?.error,
      errors: g?.errors ?? [],
      pcs: g?.pcs,
      frames: video?.framesDecoded ?? 0,
      bytes: audio?.bytesReceived ?? 0,
      protocols,
    };
  }, other);
}

test('Chromium with UDP blocked connects over ICE-TCP', { timeout: 120_000 }, async (t) => {
  const index = randomInt(1, 251);
  const name = `gr-icetcp-${process.pid}-${index}`;
  let hostIp;
  try {
    const out = execFileSync(NETNS, ['up', name, String(index)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 });
    netns = { name, index };
    hostIp = out.trim().split(/\s+/)[0];
  } catch (e) {
    t.skip(`network namespaces unavailable here (${NETNS} up failed: ${String(e.stderr || e.message).trim()}); ICE-TCP browser test skipped`);
    return;
  }

  const http = await freePort();
  const media = await freePort();
  const url = `http://${hostIp}:${http}`;
  server = await startServer({
    httpUrl: url,
    args: ['--http-addr', `${hostIp}:${http}`, '--udp-addr', `${hostIp}:${media}`, '--node-ip', hostIp],
    logName: 'icetcp-server.log',
  });
  const cid = `default:icetcp-${randomBytes(4).toString('hex')}`;
  const tokens = await Promise.all(USERS.map((u) => mintToken(u, cid)));

  // Chromium inside the namespace: a wrapper as its executable.
  tmp = mkdtempSync(join(tmpdir(), 'gr-icetcp-'));
  const wrapper = join(tmp, 'chromium-in-netns');
  writeFileSync(wrapper, `#!/bin/sh\nexec "${NETNS}" exec "${name}" "${CHROMIUM}" "$@"\n`);
  chmodSync(wrapper, 0o755);
  browser = await chromium.launch({
    executablePath: wrapper,
    headless: true,
    // Plain http to a non-loopback address is not a secure context without this flag.
    args: [...CHROMIUM_ARGS, `--unsafely-treat-insecure-origin-as-secure=${url}`],
    timeout: 30_000,
  });

  const mediaJs = readFileSync(join(ROOT, 'control/web/test/media.js'), 'utf8');
  const pages = [];
  try {
    for (const [i, user] of USERS.entries()) {
      const ctx = await browser.newContext();
      const page = await ctx.newPage();
      await page.route('**/test/media.js', (route) =>
        route.fulfill({ status: 200, contentType: 'text/javascript; charset=utf-8', body: PRELUDE + mediaJs }),
      );
      const q = new URLSearchParams({ token: tokens[i], call: cid, name: user });
      const resp = await page.goto(`${url}/test/media.html?${q}`);
      assert.ok(resp?.ok(), `GET /test/media.html from inside the namespace answered ${resp?.status()}`);
      pages.push(page);
    }

    const deadline = Date.now() + MEDIA_TIMEOUT_MS;
    let seen = [];
    for (;;) {
      seen = await Promise.all(pages.map((p, i) => look(p, USERS[1 - i])));
      if (seen.every((s) => s.frames > 0 && s.bytes > 0)) break;
      const broken = seen.findIndex((s) => s.state === 'error' || s.errors.some((e) => /connection failed|server error/.test(e)));
      if (broken >= 0) {
        assert.fail(`${USERS[broken]}'s page failed: ${seen[broken].error ?? seen[broken].errors.join('; ')}\n${JSON.stringify(seen)}\n${server.logTail(30)}`);
      }
      if (Date.now() > deadline) {
        assert.fail(`no media both ways over ICE-TCP after ${MEDIA_TIMEOUT_MS / 1000} s: ${JSON.stringify(seen)}\n${server.logTail(30)}`);
      }
      await sleep(500);
    }
    await sleep(1500);
    const later = await Promise.all(pages.map((p, i) => look(p, USERS[1 - i])));
    for (const [i, user] of USERS.entries()) {
      assert.ok(later[i].frames > seen[i].frames, `${user}: video stopped (${seen[i].frames} -> ${later[i].frames})`);
      assert.ok(later[i].bytes > seen[i].bytes, `${user}: audio stopped (${seen[i].bytes} -> ${later[i].bytes})`);
      assert.equal(later[i].protocols.length, 2, `${user}: a selected pair per PeerConnection: ${later[i].protocols}`);
      for (const p of later[i].protocols) {
        assert.equal(p, 'tcp/tcp', `${user}: selected candidate pair protocol (local/remote)`);
      }
    }
  } finally {
    const dir = ensureArtifacts();
    for (const [i, page] of pages.entries()) {
      await page.screenshot({ path: join(dir, `icetcp-${USERS[i]}.png`) }).catch(() => {});
    }
    await browser.close().catch(() => {});
    browser = undefined;
    await server.stop().catch(() => {});
    server = undefined;
    netnsDown();
  }
});
