// Memory per idle signaling WebSocket: opens N sockets (one user each, dev key) to a server on
// 127.0.0.1:7880, sends a ping on each, reads the server's RSS from /proc, closes them all and
// reads it again. Usage: node scripts/ws-memory.mjs N SERVER_PID (docs/BENCHMARKS.md).
import crypto from 'node:crypto';
import fs from 'node:fs';
// Needs the e2e packages: (cd e2e && npm ci).
import WebSocket from '../e2e/node_modules/ws/index.js';
const N = Number(process.argv[2] ?? 1000);
const pid = process.argv[3];
const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
function token(user) {
  const h = b64({ alg: 'HS256', typ: 'JWT', kid: 'devkey' });
  const now = Math.floor(Date.now() / 1000);
  const p = b64({ sub: user, exp: now + 3600, iat: now, role: 'user' });
  const sig = crypto.createHmac('sha256', 'greenroom-dev-secret').update(`${h}.${p}`).digest('base64url');
  return `${h}.${p}.${sig}`;
}
const rss = () => Number(fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/)[1]);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
await sleep(500);
const r0 = rss();
const socks = [];
for (let i = 0; i < N; i++) {
  const ws = new WebSocket(`ws://127.0.0.1:7880/v1/signal?token=${token('memuser' + i)}`);
  await new Promise((res, rej) => { ws.on('open', res); ws.on('error', rej); });
  ws.send(JSON.stringify({ type: 'ping' }));
  socks.push(ws);
}
await sleep(2000);
const r1 = rss();
for (const ws of socks) ws.close();
await sleep(4000);
const r2 = rss();
console.log(`sockets ${N}: RSS before ${r0} KiB, open ${r1} KiB (+${((r1 - r0) / N).toFixed(1)} KiB/socket), after close ${r2} KiB (${((r2 - r0) / N).toFixed(1)} KiB/socket kept)`);
