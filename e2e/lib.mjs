// Shared helpers for the browser end-to-end tests: Chromium launch, a static file server,
// the greenroom server process, token minting, the two-party media page
// (control/web/test/media.html): opening it, its media stats, waiting for media both ways; and
// network namespaces (scripts/netns-udp-blocked.sh) with browsers and processes inside.

import { spawn, execFile, execFileSync } from 'node:child_process';
import assert from 'node:assert/strict';
import { randomInt } from 'node:crypto';
import {
  chmodSync, createReadStream, createWriteStream, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync,
  writeFileSync,
} from 'node:fs';
import { createServer } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { extname, join, normalize, resolve, sep, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

/** The repository root (parent of e2e/). */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
/** Where screenshots and logs go. */
export const ARTIFACTS = resolve(process.env.GREENROOM_ARTIFACTS || join(ROOT, 'test-artifacts'));
/** The Chromium binary (Debian package). */
export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
/** The greenroom binary. */
export const GREENROOM_BIN = resolve(ROOT, process.env.GREENROOM_BIN || 'target/debug/greenroom');

/** Flags measured to work here (see /work/shared/notes/real-clients.md). */
export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--allow-loopback-in-peer-connection',
  '--autoplay-policy=no-user-gesture-required',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];

export function ensureArtifacts() {
  mkdirSync(ARTIFACTS, { recursive: true });
  return ARTIFACTS;
}

/**
 * Launches headless Chromium with fake media devices.
 * `fakeUi: false` drops --use-fake-ui-for-media-stream so that permissions are controlled by the
 * test (context permissions, CDP Browser.setPermission); `extraArgs` are appended.
 * `executablePath` runs another executable in Chromium's place (e.g. a wrapper that starts it in
 * a network namespace), `timeout` is the launch timeout in ms.
 */
export async function launchBrowser({ fakeUi = true, extraArgs = [], executablePath = CHROMIUM, timeout = 20_000 } = {}) {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`Chromium not found at ${CHROMIUM}: run scripts/install-browser-deps.sh`);
  }
  const args = CHROMIUM_ARGS.filter((a) => fakeUi || a !== '--use-fake-ui-for-media-stream').concat(extraArgs);
  return chromium.launch({ executablePath, headless: true, args, timeout });
}

/** Collects a page's console output and page errors, for diagnostics. */
export function captureConsole(page, label) {
  const lines = [];
  page.on('console', (m) => lines.push(`[${label}] ${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => lines.push(`[${label}] pageerror: ${e.message}`));
  return lines;
}

/** A free TCP port on 127.0.0.1 (closed again, so nothing listens on it). */
export function freePort() {
  return new Promise((resolvePort, reject) => {
    const s = createNetServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolvePort(port));
    });
  });
}

const MIME = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
};

/** Serves a folder over HTTP on 127.0.0.1 (a stand-in for the server's static files). */
export function startStatic(root) {
  const base = resolve(root);
  const server = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    const file = normalize(join(base, path));
    if (!(file === base || file.startsWith(base + sep)) || !existsSync(file) || !statSync(file).isFile()) {
      res.writeHead(404).end('not found');
      return;
    }
    res.writeHead(200, { 'content-type': MIME[extname(file)] || 'application/octet-stream' });
    createReadStream(file).pipe(res);
  });
  return new Promise((resolveServer) => {
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      resolveServer({ url: `http://127.0.0.1:${port}`, close: () => new Promise((r) => server.close(r)) });
    });
  });
}

/** Runs the greenroom binary and returns its trimmed stdout. */
export function runBin(args, timeoutMs = 10_000) {
  return new Promise((resolveRun, reject) => {
    execFile(GREENROOM_BIN, args, { timeout: timeoutMs, cwd: ROOT }, (err, stdout, stderr) => {
      if (err) {
        reject(new Error(`${GREENROOM_BIN} ${args.join(' ')} failed: ${err.message}\nstderr: ${stderr}`));
      } else {
        resolveRun(stdout.trim());
      }
    });
  });
}

/**
 * Mints a signaling token with `greenroom token --user <user> --call <cid>` (cid may be null),
 * optionally with `--role <role>` or `--admin`.
 */
export async function mintToken(user, cid, { role = null, admin = false } = {}) {
  const args = ['token', '--user', user];
  if (cid) args.push('--call', cid);
  if (role) args.push('--role', role);
  if (admin) args.push('--admin');
  const out = await runBin(args);
  const jwt = out.split(/\s+/).pop() ?? '';
  if (!/^[\w-]+\.[\w-]+\.[\w-]*$/.test(jwt)) {
    throw new Error(`greenroom token printed no JWT for ${user}: ${JSON.stringify(out.slice(0, 300))}`);
  }
  return jwt;
}

async function httpOk(url) {
  try {
    const r = await fetch(url, { signal: AbortSignal.timeout(1000) });
    return r.ok;
  } catch {
    return false;
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export { sleep };

/**
 * Starts `greenroom serve` (defaults: HTTP 127.0.0.1:7880, media UDP 7882) and waits for /healthz.
 * Returns {url, stop(), logTail()}. The process is also killed if node exits.
 */
export async function startServer({ httpUrl = 'http://127.0.0.1:7880', healthTimeoutMs = 15_000, args = [], logName = 'server.log' } = {}) {
  if (!existsSync(GREENROOM_BIN)) {
    throw new Error(
      `greenroom binary not found at ${GREENROOM_BIN}: build it (cargo build -p greenroom-control) or set GREENROOM_BIN`,
    );
  }
  if (await httpOk(`${httpUrl}/healthz`)) {
    throw new Error(`something already answers ${httpUrl}/healthz: stop the other greenroom server first`);
  }
  ensureArtifacts();
  const logPath = join(ARTIFACTS, logName);
  const log = createWriteStream(logPath);
  const tail = [];
  const keep = (chunk) => {
    log.write(chunk);
    tail.push(...chunk.toString().split('\n'));
    if (tail.length > 200) tail.splice(0, tail.length - 200);
  };
  const child = spawn(GREENROOM_BIN, ['serve', ...args], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { RUST_LOG: 'info', ...process.env },
  });
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  let exited = null;
  const exitPromise = new Promise((r) => child.once('exit', (code, signal) => { exited = { code, signal }; r(); }));
  const killOnExit = () => { try { child.kill('SIGKILL'); } catch { /* gone */ } };
  process.once('exit', killOnExit);

  const stop = async () => {
    process.removeListener('exit', killOnExit);
    if (!exited) {
      child.kill('SIGTERM');
      const t = setTimeout(() => { if (!exited) child.kill('SIGKILL'); }, 3000);
      await exitPromise;
      clearTimeout(t);
    }
    await new Promise((r) => log.end(r));
  };
  const logTail = (n = 40) => tail.slice(-n).join('\n');

  const deadline = Date.now() + healthTimeoutMs;
  while (!(await httpOk(`${httpUrl}/healthz`))) {
    if (exited) {
      await stop();
      throw new Error(`greenroom serve exited (${JSON.stringify(exited)}) before /healthz answered:\n${logTail()}`);
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`greenroom serve: no /healthz after ${healthTimeoutMs} ms:\n${logTail()}`);
    }
    await sleep(200);
  }
  return { url: httpUrl, stop, logTail, exited: () => exited, logPath };
}

/**
 * The value of an unlabelled counter in the server's /metrics at `url` (0 when absent).
 */
export async function metricValue(url, name) {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.slice(name.length + 1)) : 0;
}

/**
 * Starts `greenroom serve` on free ports of `host` (HTTP and media UDP), with `args` appended;
 * returns what {@link startServer} returns.
 */
export async function startServerOnFreePorts({ host = '127.0.0.1', args = [], logName = 'server.log' } = {}) {
  const http = await freePort();
  const udp = await freePort();
  return startServer({
    httpUrl: `http://${host}:${http}`,
    args: ['--http-addr', `${host}:${http}`, '--udp-addr', `${host}:${udp}`, ...args],
    logName,
  });
}

/**
 * A page-script prelude that wraps RTCPeerConnection so that every connection the page makes is
 * collected in `window.__pcs` (for getStats). `setup` is script run first (it may use top-level
 * await); `configure` is a JavaScript expression over `config` giving the configuration each
 * connection is made with.
 */
export function pcPrelude({ setup = '', configure = 'config' } = {}) {
  return `${setup}
const __NativePc = window.RTCPeerConnection;
window.__pcs = [];
window.RTCPeerConnection = class extends __NativePc {
  constructor(config = {}) {
    super(${configure});
    window.__pcs.push(this);
  }
};
`;
}

/**
 * Opens control/web/test/media.html for `name` in a new context of `browser`, joined to `cid`
 * with `token`, its media.js served with `prelude` in front.
 */
export async function openMediaPage(browser, baseUrl, { token, cid, name, prelude = '' }) {
  const mediaJs = readFileSync(join(ROOT, 'control/web/test/media.js'), 'utf8');
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  await page.route('**/test/media.js', (route) =>
    route.fulfill({ status: 200, contentType: 'text/javascript; charset=utf-8', body: prelude + mediaJs }),
  );
  const q = new URLSearchParams({ token, call: cid, name });
  const resp = await page.goto(`${baseUrl}/test/media.html?${q}`);
  if (!resp?.ok()) {
    throw new Error(`GET ${baseUrl}/test/media.html answered ${resp?.status()}`);
  }
  return page;
}

/** On a media.html page: video frames decoded and audio bytes received from `other`, and the page's state. */
export async function mediaFrom(page, other) {
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
 * Two media.html pages, `users[i]` on `pages[i]`: waits until each decodes the other's video
 * and receives its audio (fails at once when a page reports an error, or after `timeoutMs`),
 * then checks 1.5 s later that both still flow. `server` gives the log tail for failures.
 */
export async function assertMediaBothWays(pages, users, { server, timeoutMs, what = '' }) {
  const sample = () => Promise.all(pages.map((p, i) => mediaFrom(p, users[1 - i])));
  const deadline = Date.now() + timeoutMs;
  let seen = [];
  for (;;) {
    seen = await sample();
    if (seen.every((s) => s.frames > 0 && s.bytes > 0)) break;
    const broken = seen.findIndex((s) => s.state === 'error' || s.errors.some((e) => /connection failed|server error/.test(e)));
    if (broken >= 0) {
      assert.fail(`${users[broken]}'s page failed: ${seen[broken].error ?? seen[broken].errors.join('; ')}\n${JSON.stringify(seen)}\n${server.logTail(30)}`);
    }
    if (Date.now() > deadline) {
      assert.fail(`no media both ways${what} after ${timeoutMs / 1000} s: ${JSON.stringify(seen)}\n${server.logTail(30)}`);
    }
    await sleep(500);
  }
  // Media keeps flowing.
  await sleep(1500);
  const later = await sample();
  for (const [i, user] of users.entries()) {
    assert.ok(later[i].frames > seen[i].frames, `${user}: video stopped (${seen[i].frames} -> ${later[i].frames})`);
    assert.ok(later[i].bytes > seen[i].bytes, `${user}: audio stopped (${seen[i].bytes} -> ${later[i].bytes})`);
  }
}

/** Screenshots each of `pages` into the artifacts as `<prefix>-<names[i]>.png` (best effort). */
export async function screenshotPages(pages, prefix, names) {
  const dir = ensureArtifacts();
  for (const [i, page] of pages.entries()) {
    await page.screenshot({ path: join(dir, `${prefix}-${names[i]}.png`) }).catch(() => {});
  }
  return dir;
}

/** Makes, cuts and removes the tests' network namespaces (see the script's header). */
export const NETNS = join(ROOT, 'scripts/netns-udp-blocked.sh');

/**
 * Makes a network namespace joined to the host by a veth pair, its UDP blocked unless `udpOk`
 * (`NETNS up`). Where namespaces cannot be made (not root, a kernel or container that refuses
 * them), skips the test `t` with a message naming `what` and returns null. Otherwise returns
 * `{ name, hostIp, nsIp, spawn, spawnReady, link, down }`:
 * - `spawn(cmd, options)`: a child process running `cmd` (an array) inside;
 * - `spawnReady(cmd, ready, what, env)`: the same, resolved once a line of its output matches
 *   `ready` (rejected if it exits first or after 30 s);
 * - `executable(path)`: a wrapper script that runs `path` inside (a browser's executable);
 * - `link(up)`: restores or cuts the namespace's link;
 * - `down()`: kills what was spawned inside and removes the namespace (also run when node exits;
 *   idempotent, never throws).
 */
export function netnsUp(t, { tag, udpOk = false, what }) {
  const index = randomInt(1, 251);
  const name = `gr-${tag}-${process.pid}-${index}`;
  let out;
  try {
    const args = ['up', name, String(index)].concat(udpOk ? ['udp-ok'] : []);
    out = execFileSync(NETNS, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 });
  } catch (e) {
    t.skip(`network namespaces unavailable here (${NETNS} up failed: ${String(e.stderr || e.message).trim()}); ${what} skipped`);
    return null;
  }
  const [hostIp, nsIp] = out.trim().split(/\s+/);
  const children = [];
  let tmp = null;
  let removed = false;
  const down = () => {
    for (const c of children.splice(0)) {
      try { c.kill('SIGKILL'); } catch { /* gone */ }
    }
    if (tmp) rmSync(tmp, { recursive: true, force: true });
    tmp = null;
    if (removed) return;
    removed = true;
    process.removeListener('exit', down);
    try {
      execFileSync(NETNS, ['down', name, String(index)], { stdio: 'ignore', timeout: 30_000 });
    } catch { /* best effort */ }
  };
  process.once('exit', down);
  const spawnInside = (cmd, options = {}) => {
    const child = spawn(NETNS, ['exec', name, ...cmd], options);
    children.push(child);
    return child;
  };
  const spawnReady = (cmd, ready, label, env = {}) => {
    const child = spawnInside(cmd, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let output = '';
    return new Promise((resolveChild, reject) => {
      const timer = setTimeout(() => reject(new Error(`${label}: not ready after 30 s:\n${output.slice(-2000)}`)), 30_000);
      const onData = (d) => {
        output += d.toString();
        if (ready.test(output)) {
          clearTimeout(timer);
          resolveChild(child);
        }
      };
      child.stdout.on('data', onData);
      child.stderr.on('data', onData);
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`${label} exited (${code}):\n${output.slice(-2000)}`));
      });
    });
  };
  const executable = (path) => {
    tmp ??= mkdtempSync(join(tmpdir(), `gr-${tag}-`));
    const wrapper = join(tmp, `in-netns-${children.length}-${randomInt(1e9)}`);
    writeFileSync(wrapper, `#!/bin/sh\nexec "${NETNS}" exec "${name}" "${path}" "$@"\n`);
    chmodSync(wrapper, 0o755);
    return wrapper;
  };
  const link = (up) => {
    execFileSync(NETNS, ['link', name, String(index), up ? 'up' : 'down'], { timeout: 10_000 });
  };
  return { name, hostIp, nsIp, spawn: spawnInside, spawnReady, executable, link, down };
}

/**
 * Starts `greenroom serve` on the host side of `netns`'s veth (free ports, ICE candidates on
 * that address), with `args` appended; returns what {@link startServer} returns. The web app is
 * served from control/web unless GREENROOM_WEB_ROOT says otherwise.
 */
export async function startServerForNetns(netns, { args = [], logName }) {
  process.env.GREENROOM_WEB_ROOT ??= join(ROOT, 'control/web');
  return startServerOnFreePorts({ host: netns.hostIp, args: ['--node-ip', netns.hostIp, ...args], logName });
}

/**
 * Launches headless Chromium inside `netns` (options as {@link launchBrowser}'s), treating
 * `url` (plain http to a non-loopback address) as a secure context.
 */
export async function launchBrowserInNetns(netns, url, { extraArgs = [], ...options } = {}) {
  return launchBrowser({
    ...options,
    executablePath: netns.executable(CHROMIUM),
    extraArgs: [secureOrigin(url), ...extraArgs],
    timeout: 30_000,
  });
}

/** The Chromium flag that makes plain http to `url` (not loopback) a secure context. */
export function secureOrigin(url) {
  return `--unsafely-treat-insecure-origin-as-secure=${url}`;
}
