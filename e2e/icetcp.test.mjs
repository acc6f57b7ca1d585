// ICE over TCP with UDP blocked (issue 14): Chromium runs inside a network namespace whose UDP
// is dropped by nftables (scripts/netns-udp-blocked.sh, made and removed by this test), joined
// to the host by a veth pair; `greenroom serve` listens on the host side of the veth (HTTP,
// UDP, and ICE-TCP on the UDP port's number, the default). Two pages (alice, bob) must decode
// each other's video and receive each other's audio, and every PeerConnection's selected
// candidate pair must be TCP. Skips with a message where network namespaces cannot be made
// (not root, a kernel or container that refuses them).

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  netnsUp, startServerForNetns, launchBrowserInNetns, mintToken, pcPrelude, openMediaPage,
  assertMediaBothWays, screenshotPages,
} from './lib.mjs';

const MEDIA_TIMEOUT_MS = 40_000;
const USERS = ['alice', 'bob'];

let server;
let browser;
let netns = null;

after(async () => {
  await browser?.close().catch(() => {});
  await server?.stop().catch(() => {});
  netns?.down();
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
  netns = netnsUp(t, { tag: 'icetcp', what: 'ICE-TCP browser test' });
  if (!netns) return;
  server = await startServerForNetns(netns, { logName: 'icetcp-server.log' });
  const url = server.url;
  const cid = `default:icetcp-${randomBytes(4).toString('hex')}`;
  const tokens = await Promise.all(USERS.map((u) => mintToken(u, cid)));
  browser = await launchBrowserInNetns(netns, url);

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
    netns.down();
  }
});
