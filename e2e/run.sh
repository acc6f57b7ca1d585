#!/usr/bin/env bash
# Runs the browser end-to-end tests: installs Chromium, Firefox ESR and the node dependencies
# (playwright-core, puppeteer-core, typescript) if needed, type-checks the SDK, then node --test.
# Expects the greenroom binary to be built already (cargo build -p greenroom-control), or GREENROOM_BIN.
# Screenshots, the server log and diagnostics land in test-artifacts/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
./scripts/install-browser-deps.sh
# Firefox ESR (Debian) for e2e/firefox.test.mjs, driven over WebDriver BiDi by puppeteer-core.
FIREFOX="${FIREFOX_PATH:-/usr/bin/firefox-esr}"
if [ ! -x "$FIREFOX" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends firefox-esr
fi
# nftables for e2e/icetcp.test.mjs (UDP dropped inside a network namespace; needs root).
if ! command -v nft >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nftables
fi
# The SDK's JavaScript is type-checked against its JSDoc and the wire types generated from proto/.
e2e/node_modules/.bin/tsc -p control/web/sdk
exec node --test e2e/ "$@"
