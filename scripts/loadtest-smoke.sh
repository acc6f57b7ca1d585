#!/usr/bin/env bash
# Load-test smoke: starts its own Greenroom server (target/debug/greenroom serve on free ports),
# runs a short scenario (1 audio + 1 video publisher, 2 subscribers, a few seconds) with the
# webrtc-rs bots, and fails (non-zero exit) if no media reaches the subscribers.
#
#   scripts/loadtest-smoke.sh            # builds what it needs
#   GREENROOM_BIN=... LOADTEST_BIN=... scripts/loadtest-smoke.sh   # prebuilt binaries
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
GREENROOM_BIN="${GREENROOM_BIN:-$TARGET_DIR/debug/greenroom}"
LOADTEST_BIN="${LOADTEST_BIN:-$TARGET_DIR/debug/greenroom-loadtest}"
if [ ! -x "$GREENROOM_BIN" ] || [ ! -x "$LOADTEST_BIN" ] || [ -z "${SMOKE_NO_BUILD:-}" ]; then
  cargo build -q -p greenroom-control -p greenroom-loadtest
fi

free_port() { # a free port: 7880/7882 when free, else one the kernel picks
  local want="$1" proto="$2"
  python3 - "$want" "$proto" <<'PY'
import socket, sys
want, proto = int(sys.argv[1]), sys.argv[2]
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
for port in (want, 0):
    s = socket.socket(socket.AF_INET, kind)
    try:
        s.bind(("127.0.0.1", port))
        print(s.getsockname()[1])
        break
    except OSError:
        pass
    finally:
        s.close()
PY
}
HTTP_PORT="$(free_port 7880 tcp)"
UDP_PORT="$(free_port 7882 udp)"
LOG="$TARGET_DIR/loadtest-smoke-server.log"
mkdir -p "$TARGET_DIR"

"$GREENROOM_BIN" serve --http-addr "127.0.0.1:$HTTP_PORT" --udp-addr "127.0.0.1:$UDP_PORT" \
  >"$LOG" 2>&1 &
SERVER_PID=$!
cleanup() { kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; }
trap cleanup EXIT

for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$HTTP_PORT/healthz" >/dev/null 2>&1 && break
  kill -0 "$SERVER_PID" 2>/dev/null || { echo "server exited:"; cat "$LOG"; exit 1; }
  sleep 0.1
done

set +e
"$LOADTEST_BIN" --target greenroom --url "http://127.0.0.1:$HTTP_PORT" --server-pid "$SERVER_PID" \
  --audio-publishers 1 --video-publishers 1 --subscribers 2 --duration "${SMOKE_DURATION:-3s}" \
  --video-preset low --name smoke --out "$TARGET_DIR/loadtest" --no-progress --require-media
RC=$?
set -e
if [ "$RC" -ne 0 ]; then
  echo "loadtest smoke FAILED (exit $RC); server log: $LOG" >&2
  tail -30 "$LOG" >&2 || true
  exit "$RC"
fi
echo "loadtest smoke passed"
