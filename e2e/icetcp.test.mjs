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
import { writeFileSync, mkdtempSync, rmSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  ROOT, CHROMIUM, launchBrowser, startServerOnFreePorts, mintToken, pcPrelude, openMediaPage,
  assertMediaBothWays, screenshotPages,
} from './lib.mjs';

const NETNS = join(ROOT, 'scripts/netns-udp-blocked.sh');
const MEDIA_TIMEOUT_MS = 40_000;
const USERS = ['alice', 'bob'];

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

/** The protocol (local/remote) of the selected ICE candidate pair of each PeerConnection. */
async function selectedProtocols(page) {
  return page.evaluate(async () => {
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
    return protocols;
  });
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

  server = await startServerOnFreePorts({ host: hostIp, args: ['--node-ip', hostIp], logName: 'icetcp-server.log' });
  const url = server.url;
  const cid = `default:icetcp-${randomBytes(4).toString('hex')}`;
  const tokens = await Promise.all(USERS.map((u) => mintToken(u, cid)));

  // Chromium inside the namespace: a wrapper as its executable.
  tmp = mkdtempSync(join(tmpdir(), 'gr-icetcp-'));
  const wrapper = join(tmp, 'chromium-in-netns');
  writeFileSync(wrapper, `#!/bin/sh\nexec "${NETNS}" exec "${name}" "${CHROMIUM}" "$@"\n`);
  chmodSync(wrapper, 0o755);
  browser = await launchBrowser({
    executablePath: wrapper,
    // Plain http to a non-loopback address is not a secure context without this flag.
    extraArgs: [`--unsafely-treat-insecure-origin-as-secure=${url}`],
    timeout: 30_000,
  });

  const pages = [];
  try {
    for (const [i, user] of USERS.entries()) {
      pages.push(await openMediaPage(browser, url, { token: tokens[i], cid, name: user, prelude: pcPrelude() }));
    }
    await assertMediaBothWays(pages, USERS, { server, timeoutMs: MEDIA_TIMEOUT_MS, what: ' over ICE-TCP' });
    for (const [i, user] of USERS.entries()) {
      const protocols = await selectedProtocols(pages[i]);
      assert.equal(protocols.length, 2, `${user}: a selected pair per PeerConnection: ${protocols}`);
      for (const p of protocols) {
        assert.equal(p, 'tcp/tcp', `${user}: selected candidate pair protocol (local/remote)`);
      }
    }
  } finally {
    await screenshotPages(pages, 'icetcp', USERS);
    await browser.close().catch(() => {});
    browser = undefined;
    await server.stop().catch(() => {});
    server = undefined;
    netnsDown();
  }
});
