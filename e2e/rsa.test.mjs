// RSA DTLS client certificates (issue 14): alice's Chromium page uses an RSA-2048 certificate
// (`RTCPeerConnection.generateCertificate({name: "RSASSA-PKCS1-v1_5", ...})`) on both of its
// PeerConnections, bob's keeps Chromium's default ECDSA one. Both must publish and subscribe:
// each decodes the other's video and receives the other's audio, and the certificates the
// connections actually used (from getStats) are checked to be RSA and EC respectively, and the
// negotiated SRTP cipher to be AEAD-GCM.
//
// The test page creates its PeerConnections when its module loads, so the test serves it a copy
// of control/web/test/media.js with a prelude that awaits the RSA certificate (top-level await)
// and wraps RTCPeerConnection to use it.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, X509Certificate } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT, launchBrowser, startServer, mintToken, ensureArtifacts, freePort, sleep } from './lib.mjs';

const MEDIA_TIMEOUT_MS = 30_000;

const RSA_PRELUDE = `
const __rsaCert = await RTCPeerConnection.generateCertificate({
  name: 'RSASSA-PKCS1-v1_5', modulusLength: 2048,
  publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256',
});
const __NativePc = window.RTCPeerConnection;
window.__pcs = [];
window.RTCPeerConnection = class extends __NativePc {
  constructor(config = {}) {
    super({ ...config, certificates: [__rsaCert] });
    window.__pcs.push(this);
  }
};
`;
const DEFAULT_PRELUDE = `
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
after(async () => {
  await browser?.close().catch(() => {});
  await server?.stop().catch(() => {});
});

/** Video frames decoded and audio bytes received from `other`, plus the page's state. */
async function mediaFrom(page, other) {
  return page.evaluate(async (other) => {
    const g = window.greenroom;
    const stats = g ? await g.stats() : [];
    const video = stats.find((s) => s.kind === 'video' && s.user_id === other);
    const audio = stats.find((s) => s.kind === 'audio' && s.user_id === other);
    return {
      state: g?.state,
      error: g?.error,
      errors: g?.errors ?? [],
      frames: video?.framesDecoded ?? 0,
      bytes: audio?.bytesReceived ?? 0,
    };
  }, other);
}

/**
 * Per connected transport of the page: the DER (base64) of the local certificate it used and
 * the negotiated SRTP cipher.
 */
async function transports(page) {
  return page.evaluate(async () => {
    const out = [];
    for (const pc of window.__pcs) {
      const report = await pc.getStats();
      for (const s of report.values()) {
        if (s.type === 'transport' && s.localCertificateId) {
          out.push({
            cert: report.get(s.localCertificateId)?.base64Certificate ?? null,
            srtpCipher: s.srtpCipher ?? null,
          });
        }
      }
    }
    return out;
  });
}

test('a Chromium client with an RSA DTLS certificate publishes and subscribes', { timeout: 90_000 }, async () => {
  const http = await freePort();
  const udp = await freePort();
  const url = `http://127.0.0.1:${http}`;
  server = await startServer({
    httpUrl: url,
    args: ['--http-addr', `127.0.0.1:${http}`, '--udp-addr', `127.0.0.1:${udp}`],
    logName: 'rsa-server.log',
  });
  const cid = `default:rsa-${randomBytes(4).toString('hex')}`;
  const users = ['alice', 'bob'];
  const tokens = await Promise.all(users.map((u) => mintToken(u, cid)));
  const mediaJs = readFileSync(join(ROOT, 'control/web/test/media.js'), 'utf8');

  browser = await launchBrowser();
  const pages = [];
  try {
    for (const [i, user] of users.entries()) {
      const ctx = await browser.newContext();
      const page = await ctx.newPage();
      const prelude = user === 'alice' ? RSA_PRELUDE : DEFAULT_PRELUDE;
      await page.route('**/test/media.js', (route) =>
        route.fulfill({ status: 200, contentType: 'text/javascript; charset=utf-8', body: prelude + mediaJs }),
      );
      const q = new URLSearchParams({ token: tokens[i], call: cid, name: user });
      const resp = await page.goto(`${url}/test/media.html?${q}`);
      assert.ok(resp?.ok(), `GET /test/media.html answered ${resp?.status()}`);
      pages.push(page);
    }

    const deadline = Date.now() + MEDIA_TIMEOUT_MS;
    let seen = [];
    for (;;) {
      seen = await Promise.all(pages.map((p, i) => mediaFrom(p, users[1 - i])));
      if (seen.every((s) => s.frames > 0 && s.bytes > 0)) break;
      const broken = seen.findIndex((s) => s.state === 'error' || s.errors.some((e) => /connection failed|server error/.test(e)));
      if (broken >= 0) {
        assert.fail(`${users[broken]}'s page failed: ${seen[broken].error ?? seen[broken].errors.join('; ')}\n${server.logTail(30)}`);
      }
      if (Date.now() > deadline) {
        assert.fail(`no media both ways after ${MEDIA_TIMEOUT_MS / 1000} s: ${JSON.stringify(seen)}\n${server.logTail(30)}`);
      }
      await sleep(500);
    }
    // Media keeps flowing.
    await sleep(1500);
    const later = await Promise.all(pages.map((p, i) => mediaFrom(p, users[1 - i])));
    for (const [i, user] of users.entries()) {
      assert.ok(later[i].frames > seen[i].frames, `${user}: video stopped (${seen[i].frames} -> ${later[i].frames})`);
      assert.ok(later[i].bytes > seen[i].bytes, `${user}: audio stopped (${seen[i].bytes} -> ${later[i].bytes})`);
    }

    // The connections really used the certificates the test meant: RSA for alice, EC for bob.
    const expected = { alice: 'rsa', bob: 'ec' };
    for (const [i, user] of users.entries()) {
      const ts = await transports(pages[i]);
      assert.ok(ts.length >= 2, `${user}: expected a transport per PeerConnection, got ${ts.length}`);
      for (const { cert: b64, srtpCipher } of ts) {
        assert.ok(b64, `${user}: a transport without a certificate`);
        const cert = new X509Certificate(Buffer.from(b64, 'base64'));
        assert.equal(cert.publicKey.asymmetricKeyType, expected[user], `${user}'s DTLS certificate key type`);
        // AEAD-GCM SRTP stays negotiated with the OpenSSL DTLS.
        assert.match(String(srtpCipher), /^(SRTP_)?AEAD_AES_(256|128)_GCM$/, `${user}'s SRTP cipher`);
      }
    }
  } finally {
    const dir = ensureArtifacts();
    for (const [i, page] of pages.entries()) {
      await page.screenshot({ path: join(dir, `rsa-${users[i]}.png`) }).catch(() => {});
    }
    writeFileSync(join(dir, 'rsa-server-tail.log'), server?.logTail(200) ?? '');
    await browser.close().catch(() => {});
    browser = undefined;
    await server.stop().catch(() => {});
    server = undefined;
  }
});
