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
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  launchBrowser, startServerOnFreePorts, mintToken, pcPrelude, openMediaPage, assertMediaBothWays,
  screenshotPages,
} from './lib.mjs';

const MEDIA_TIMEOUT_MS = 30_000;

// Alice's connections use an RSA certificate made before media.js runs; bob's the default.
const RSA_PRELUDE = pcPrelude({
  setup: `const __rsaCert = await RTCPeerConnection.generateCertificate({
  name: 'RSASSA-PKCS1-v1_5', modulusLength: 2048,
  publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256',
});`,
  configure: '{ ...config, certificates: [__rsaCert] }',
});
const DEFAULT_PRELUDE = pcPrelude();

let server;
let browser;
after(async () => {
  await browser?.close().catch(() => {});
  await server?.stop().catch(() => {});
});

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
  server = await startServerOnFreePorts({ logName: 'rsa-server.log' });
  const cid = `default:rsa-${randomBytes(4).toString('hex')}`;
  const users = ['alice', 'bob'];
  const tokens = await Promise.all(users.map((u) => mintToken(u, cid)));

  browser = await launchBrowser();
  const pages = [];
  try {
    for (const [i, user] of users.entries()) {
      const prelude = user === 'alice' ? RSA_PRELUDE : DEFAULT_PRELUDE;
      pages.push(await openMediaPage(browser, server.url, { token: tokens[i], cid, name: user, prelude }));
    }
    await assertMediaBothWays(pages, users, { server, timeoutMs: MEDIA_TIMEOUT_MS });

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
    const dir = await screenshotPages(pages, 'rsa', users);
    writeFileSync(join(dir, 'rsa-server-tail.log'), server?.logTail(200) ?? '');
    await browser.close().catch(() => {});
    browser = undefined;
    await server.stop().catch(() => {});
    server = undefined;
  }
});
