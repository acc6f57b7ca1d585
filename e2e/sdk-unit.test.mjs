// Unit tests of the browser SDK's pure parts in Node (no browser, no server): matched replies
// (PendingRequests), the token refresh hook, and race-safe mute toggles (the last call wins, a
// failed call rolls back only when no later call was made).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PendingRequests, newRequestId } from '../control/web/sdk/requests.js';
import { GreenroomClient, GreenroomError } from '../control/web/sdk/client.js';

const makeError = (code, message, type) => new GreenroomError(code, message, { request: type });

/** An unsigned JWT with these claims (the SDK only decodes it). */
function jwt(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${b64({ alg: 'HS256' })}.${b64(claims)}.sig`;
}

test('request ids are unique and within the protocol alphabet', () => {
  const ids = new Set();
  for (let i = 0; i < 1000; i++) {
    const id = newRequestId('call');
    assert.match(id, /^[A-Za-z0-9_.:-]{1,64}$/);
    ids.add(id);
  }
  assert.equal(ids.size, 1000);
});

test('PendingRequests settles exactly the request a reply names', async () => {
  const p = new PendingRequests('t', makeError);
  const a = p.open('publish', 10_000);
  const b = p.open('publish', 10_000);
  assert.equal(p.settle('nope', {}), false, 'an unknown id settles nothing');
  assert.equal(p.settle(undefined, {}), false, 'a reply without id settles nothing');
  // b's reply first: a stays waiting (matching by type would have given it to a).
  assert.equal(p.settle(b.requestId, { type: 'publish_answer', sdp: 'B' }), true);
  assert.equal((await b.promise).sdp, 'B');
  assert.equal(p.settle(a.requestId, null, new GreenroomError('media_error', 'no')), true);
  await assert.rejects(a.promise, (e) => e.code === 'media_error');
  assert.equal(p.settle(a.requestId, {}), false, 'settled once only');
  const c = p.open('join', 10_000);
  p.rejectAll(new GreenroomError('connection_closed', 'closed'));
  await assert.rejects(c.promise, (e) => e.code === 'connection_closed');
  assert.equal(p.waiting.size, 0);
});

test('PendingRequests times out with a typed error', async () => {
  const p = new PendingRequests('t', makeError);
  const { promise } = p.open('ping', 20);
  await assert.rejects(promise, (e) => e.code === 'timeout' && e.request === 'ping');
  assert.equal(p.waiting.size, 0);
});

test('tokenProvider is called before expiry and on token_expired; the request is retried', async (t) => {
  const now = Math.floor(Date.now() / 1000);
  let n = 0;
  const fresh = () => jwt({ sub: 'alice', exp: now + 3600, n: ++n });
  // Expires in 30 s with a 60 s margin: the refresh is due at once.
  const client = new GreenroomClient({ token: jwt({ sub: 'alice', exp: now + 30 }), baseUrl: 'http://127.0.0.1:1', tokenProvider: async () => fresh() });
  t.after(() => client.dispose());
  const refreshed = await new Promise((resolve) => client.on('tokenRefreshed', resolve));
  assert.equal(refreshed.token, client.token);
  assert.equal(client.claims.n, 1);

  // The HTTP API answers token_expired once: the client refreshes and retries with the new token.
  const seen = [];
  const realFetch = globalThis.fetch;
  t.after(() => { globalThis.fetch = realFetch; });
  globalThis.fetch = async (url, init) => {
    seen.push(init.headers.authorization);
    if (seen.length === 1) return new Response(JSON.stringify({ code: 'token_expired', message: 'expired' }), { status: 401 });
    return new Response(JSON.stringify({ ok: true }), { status: 200 });
  };
  const before = client.token;
  assert.deepEqual(await client.api('GET', '/v1/x'), { ok: true });
  assert.equal(seen.length, 2);
  assert.equal(seen[0], `Bearer ${before}`);
  assert.equal(seen[1], `Bearer ${client.token}`);
  assert.notEqual(before, client.token);
  assert.equal(client.claims.n, 2);

  // Without a provider the typed error comes through.
  const plain = new GreenroomClient({ token: jwt({ sub: 'bob' }), baseUrl: 'http://127.0.0.1:1' });
  globalThis.fetch = async () => new Response(JSON.stringify({ code: 'token_expired', message: 'expired' }), { status: 401 });
  await assert.rejects(plain.api('GET', '/v1/x'), (e) => e instanceof GreenroomError && e.code === 'token_expired' && e.status === 401);
});

/** A joined Call whose socket is a stub: `set_muted` requests settle when the test says so. */
function stubCall() {
  const client = new GreenroomClient({ token: jwt({ sub: 'alice' }), baseUrl: 'http://127.0.0.1:1' });
  const call = client.call('default:x');
  call.state = 'joined';
  call.capabilities = new Set(['send-audio', 'send-video']);
  call._transceivers.set('microphone', { direction: 'sendonly' });
  const track = { enabled: true, stop() {} };
  call.local.microphone.track = track;
  const sent = [];
  call._request = (msg) => new Promise((resolve, reject) => sent.push({ msg, resolve, reject }));
  return { call, track, sent };
}

test('mute toggles: the last call wins, and only the latest call may roll back (300 rounds)', async () => {
  for (let round = 0; round < 300; round++) {
    const { call, track, sent } = stubCall();
    const start = round % 2 === 0;
    call.local.microphone.muted = start;
    track.enabled = !start;
    // Two calls at once, each with a random outcome, settled in a random order.
    const first = call.setMicrophoneMuted(!start);
    const second = call.setMicrophoneMuted(start);
    assert.equal(sent.length, 2);
    assert.deepEqual(sent.map((s) => s.msg.muted), [!start, start], 'sent in call order');
    const fail = [Math.random() < 0.5, Math.random() < 0.5];
    const order = Math.random() < 0.5 ? [0, 1] : [1, 0];
    for (const i of order) {
      if (fail[i]) sent[i].reject(new GreenroomError('internal', 'refused'));
      else sent[i].resolve(null);
    }
    const results = await Promise.allSettled([first, second]);
    assert.deepEqual(results.map((r) => r.status), fail.map((f) => (f ? 'rejected' : 'fulfilled')));
    // The second (last) call decides; if it failed, it rolls back to the state before it, which
    // is the first call's optimistic state.
    const expected = fail[1] ? !start : start;
    assert.equal(call.local.microphone.muted, expected, `round ${round}: fail=${fail} order=${order}`);
    assert.equal(track.enabled, !expected);
  }
});

test('a single failed unmute rolls back to muted', async () => {
  const { call, track, sent } = stubCall();
  call.local.microphone.muted = true;
  track.enabled = false;
  const p = call.setMicrophoneMuted(false);
  assert.equal(call.local.microphone.muted, false, 'optimistic');
  assert.equal(track.enabled, true);
  sent[0].reject(new GreenroomError('missing_capability', 'no', { capability: 'send-audio' }));
  await assert.rejects(p, (e) => e.code === 'missing_capability');
  assert.equal(call.local.microphone.muted, true);
  assert.equal(track.enabled, false);
});

test('sdpFingerprint tells a new server peer (another certificate) from the same one', async () => {
  const { sdpFingerprint } = await import('../control/web/sdk/client.js');
  const a = 'v=0\r\ns=-\r\na=group:BUNDLE 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=fingerprint:sha-256 AB:CD\r\na=mid:0\r\n';
  const b = a.replace('AB:CD', 'EF:01');
  assert.equal(sdpFingerprint(a), 'sha-256 ab:cd');
  assert.notEqual(sdpFingerprint(a), sdpFingerprint(b));
  assert.equal(sdpFingerprint(a.replace('a=mid:0', 'a=mid:0\r\na=ice-ufrag:new')), sdpFingerprint(a), 'an ICE restart keeps it');
  assert.equal(sdpFingerprint('v=0\r\n'), null);
  assert.equal(sdpFingerprint(undefined), null);
});
