#!/usr/bin/env bash
# Runs the browser end-to-end tests: installs Chromium + playwright-core if needed, then node --test.
# Expects the greenroom binary to be built already (cargo build -p greenroom-control), or GREENROOM_BIN.
# Screenshots, the server log and diagnostics land in test-artifacts/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
./scripts/install-browser-deps.sh
exec node --test e2e/ "$@"
