#!/usr/bin/env bash
# Installs what the browser end-to-end tests need, idempotently and without prompts:
#   - Chromium (Debian package) at /usr/bin/chromium, plus chromium-driver;
#   - the Node dependencies of e2e/ (playwright-core, pinned by e2e/package-lock.json).
# Never downloads a browser through npm/playwright. Safe to run again: does nothing when all is present.
# Run as root (or with sudo available) on Debian 12 with node >= 18 and npm.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
E2E="$ROOT/e2e"
CHROMIUM="${CHROMIUM_PATH:-/usr/bin/chromium}"

log() { printf '[install-browser-deps] %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    log "not root and no sudo: cannot install packages"; fi
fi

install_chromium() {
  export DEBIAN_FRONTEND=noninteractive
  # A previous install that died half way leaves dpkg in a broken state: finish it first.
  $SUDO dpkg --configure -a || true
  log "apt-get update"
  $SUDO apt-get update -q
  log "installing chromium chromium-driver"
  if ! $SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver; then
    log "install failed; repairing dpkg state and retrying once"
    $SUDO dpkg --configure -a || true
    $SUDO apt-get install -y -q --fix-broken --no-install-recommends || true
    $SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver
  fi
}

if [ -x "$CHROMIUM" ]; then
  log "chromium present: $CHROMIUM"
else
  install_chromium
  [ -x "$CHROMIUM" ] || { log "chromium still missing at $CHROMIUM"; exit 1; }
fi
"$CHROMIUM" --version 2>/dev/null | grep -i chromium >&2 || true

# Node dependencies: install when node_modules is missing or older than the manifest/lockfile.
command -v npm >/dev/null 2>&1 || { log "npm not found"; exit 1; }
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
stamp="$E2E/node_modules/.install-stamp"
need_npm=0
if [ ! -d "$E2E/node_modules/playwright-core" ] || [ ! -f "$stamp" ]; then
  need_npm=1
elif [ "$E2E/package.json" -nt "$stamp" ] || { [ -f "$E2E/package-lock.json" ] && [ "$E2E/package-lock.json" -nt "$stamp" ]; }; then
  need_npm=1
fi
if [ "$need_npm" -eq 1 ]; then
  cd "$E2E"
  if [ -f package-lock.json ]; then
    log "npm ci in e2e/"
    npm ci --no-audit --no-fund
  else
    log "npm install in e2e/ (no lockfile)"
    npm install --no-audit --no-fund
  fi
  touch "$stamp"
else
  log "e2e/node_modules up to date"
fi
log "done"
