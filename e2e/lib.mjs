// Shared helpers for the browser end-to-end tests: Chromium launch, a static file server,
// the greenroom server process and token minting.

import { spawn, execFile } from 'node:child_process';
import { createReadStream, createWriteStream, existsSync, mkdirSync, statSync } from 'node:fs';
import { createServer } from 'node:http';
import { createServer as createNetServer } from 'node:net';
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
 */
export async function launchBrowser({ fakeUi = true, extraArgs = [] } = {}) {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`Chromium not found at ${CHROMIUM}: run scripts/install-browser-deps.sh`);
  }
  const args = CHROMIUM_ARGS.filter((a) => fakeUi || a !== '--use-fake-ui-for-media-stream').concat(extraArgs);
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args, timeout: 20_000 });
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
