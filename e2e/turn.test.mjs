// Media through the embedded TURN server only: two Chromium pages join with the SDK's
// `iceTransportPolicy: 'relay'`, so their only candidates are relayed ones from the ICE servers
// in `joined.ice_servers`; the server runs its TURN listener on TCP (first test) or TLS with the
// --dev-tls certificate (second test, Chromium started with --ignore-certificate-errors). Each
// page must decode the other's video and receive the other's audio, and both PeerConnections'
// selected candidate pairs must be relayed over the expected protocol.
//
// Env: GREENROOM_BIN, CHROMIUM_PATH, GREENROOM_ARTIFACTS (server logs turn-tcp-server.log,
// turn-tls-server.log).

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT, launchBrowser, startServer, freePort, mintToken, sleep } from './lib.mjs';

const MEDIA_TIMEOUT_MS = 40_000;
const USERS = ['alice', 'bob'];
// The --dev-tls certificate is self-signed: node's fetch (health checks) must accept it too.
process.env.NODE_TLS_REJECT_UNAUTHORIZED = '0';
process.env.GREENROOM_WEB_ROOT ??= join(ROOT, 'control/web');

const cleanups = [];
after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {});
});

/** What a page sees: receive stats per remote track and each PeerConnection's selected pair. */
function pageState(page) {
  return page.evaluate(async () => {
    const call = /** @type {any} */ (window).call;
    const selected = async (pc) => {
      if (!pc) return null;
      const stats = new Map();
      (await pc.getStats()).forEach((s) => stats.set(s.id, s));
      for (const s of stats.values()) {
        if (s.type !== 'transport' || !s.selectedCandidatePairId) continue;
        const pair = stats.get(s.selectedCandidatePairId);
        const local = pair && stats.get(pair.localCandidateId);
        return local ? { candidateType: local.candidateType, relayProtocol: local.relayProtocol ?? null } : null;
      }
      return null;
    };
    return {
      error: /** @type {any} */ (window).joinError ?? null,
      stats: call ? await call.stats() : [],
      pub: await selected(call?._pub),
      sub: await selected(call?._sub),
      connection: call?.connection ?? null,
    };
  });
}

function mediaFrom(state, other) {
  const video = state.stats.filter((s) => s.kind === 'video' && s.userId === other).reduce((n, s) => n + (s.framesDecoded ?? 0), 0);
  const audio = state.stats.filter((s) => s.kind === 'audio' && s.userId === other).reduce((n, s) => n + s.bytesReceived, 0);
  return { video, audio };
}

async function relayCall(transport) {
  const [http, udp, turnPort] = [await freePort(), await freePort(), await freePort()];
  const dir = mkdtempSync(join(tmpdir(), `greenroom-turn-${transport}-`));
  cleanups.push(async () => rmSync(dir, { recursive: true, force: true }));
  const configPath = join(dir, 'greenroom.toml');
  writeFileSync(
    configPath,
    `[turn]\nenabled = true\ntransports = ["${transport}"]\n` +
      `tcp_addr = "127.0.0.1:${turnPort}"\ntls_addr = "127.0.0.1:${turnPort}"\n`,
  );
  const tls = transport === 'tls';
  const baseUrl = `${tls ? 'https' : 'http'}://127.0.0.1:${http}`;
  const server = await startServer({
    httpUrl: baseUrl,
    args: [
      '--config', configPath, '--http-addr', `127.0.0.1:${http}`, '--udp-addr', `127.0.0.1:${udp}`,
      '--data-dir', join(dir, 'data'), ...(tls ? ['--dev-tls'] : []),
    ],
    logName: `turn-${transport}-server.log`,
  });
  const browser = await launchBrowser({ extraArgs: tls ? ['--ignore-certificate-errors'] : [] });
  try {
    const cid = `default:turn-${transport}-${randomBytes(4).toString('hex')}`;
    const pages = [];
    for (const user of USERS) {
      const page = await (await browser.newContext({ ignoreHTTPSErrors: true })).newPage();
      await page.goto(`${baseUrl}/healthz`);
      const token = await mintToken(user, cid);
      const ice = await page.evaluate(async ({ token, cid }) => {
        const w = /** @type {any} */ (window);
        const { GreenroomClient } = await import('/sdk/client.js');
        const call = new GreenroomClient({ token }).call(cid);
        w.call = call;
        try {
          await call.join({ iceTransportPolicy: 'relay' });
        } catch (e) {
          w.joinError = String(e);
        }
        return call._iceServers ?? null;
      }, { token, cid });
      assert.ok(Array.isArray(ice) && ice.length === 1, `joined.ice_servers: ${JSON.stringify(ice)}`);
      const scheme = tls ? 'turns' : 'turn';
      assert.deepEqual(ice[0].urls, [`${scheme}:127.0.0.1:${turnPort}?transport=tcp`]);
      assert.match(ice[0].username, new RegExp(`^\\d+:${user}$`));
      pages.push(page);
    }

    const deadline = Date.now() + MEDIA_TIMEOUT_MS;
    let states = [];
    for (;;) {
      states = await Promise.all(pages.map(pageState));
      const ok = states.every((s, i) => {
        const m = mediaFrom(s, USERS[1 - i]);
        return m.video > 0 && m.audio > 0 && s.pub?.candidateType === 'relay' && s.sub?.candidateType === 'relay';
      });
      if (ok) break;
      if (Date.now() > deadline) {
        assert.fail(`no media both ways through TURN/${transport}:\n${JSON.stringify(states, null, 2)}\n--- server log ---\n${server.logTail(40)}`);
      }
      await sleep(500);
    }
    for (const s of states) {
      assert.equal(s.error, null);
      for (const pc of [s.pub, s.sub]) {
        assert.equal(pc.candidateType, 'relay', JSON.stringify(s));
        assert.equal(pc.relayProtocol, transport, JSON.stringify(s));
      }
    }
    // Media keeps flowing through the relay.
    const before = states.map((s, i) => mediaFrom(s, USERS[1 - i]));
    await sleep(2000);
    const later = (await Promise.all(pages.map(pageState))).map((s, i) => mediaFrom(s, USERS[1 - i]));
    for (const i of [0, 1]) {
      assert.ok(later[i].video > before[i].video, `${USERS[i]}: video from ${USERS[1 - i]} stopped`);
      assert.ok(later[i].audio > before[i].audio, `${USERS[i]}: audio from ${USERS[1 - i]} stopped`);
    }
  } finally {
    await browser.close().catch(() => {});
    await server.stop().catch(() => {});
  }
}

test('media both ways with only the embedded TURN over TCP as ICE server (relay policy)', { timeout: 90_000 }, async () => {
  await relayCall('tcp');
});

test('media both ways with only the embedded TURN over TLS as ICE server (relay policy)', { timeout: 90_000 }, async () => {
  await relayCall('tls');
});
