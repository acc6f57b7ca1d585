#!/usr/bin/env bash
# Runs one load-test scenario against Greenroom and against Janus's videoroom on this machine,
# one after the other in one run, and prints the two servers' figures side by side (CPU per
# forwarded packet, loss, latency, memory). Both servers listen on 127.0.0.1 only, and every
# datagram stays on loopback: Janus gathers 127.0.0.1 candidates (scripts/janus/start.sh), and
# the script checks during the run that Janus's UDP sockets are all bound to 127.0.0.1
# (JANUS_ALLOW_NON_LOOPBACK=1 to only warn).
#
#   scripts/compare-janus.sh --audio-publishers 1 --subscribers 100 --duration 20s
#   scripts/compare-janus.sh --video-publishers 4 --duration 20s       # a 4x4 meeting
#
# Arguments are greenroom-loadtest scenario options (not --target/--url/--server-pid).
# Builds in release mode (LOADTEST_PROFILE=debug to skip). Reports in target/loadtest/compare-*.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
PROFILE="${LOADTEST_PROFILE:-release}"
if [ "$PROFILE" = release ]; then
  cargo build -q --release -p greenroom-control -p greenroom-loadtest
else
  cargo build -q -p greenroom-control -p greenroom-loadtest
fi
BIN_DIR="$TARGET_DIR/$PROFILE"
NAME="compare-$(date +%Y%m%d-%H%M%S)"
OUT="$TARGET_DIR/loadtest"
mkdir -p "$OUT"

# Greenroom on free ports.
read -r HTTP_PORT UDP_PORT < <(python3 - <<'PY'
import socket
ports = []
for kind, want in ((socket.SOCK_STREAM, 7880), (socket.SOCK_DGRAM, 7882)):
    for p in (want, 0):
        s = socket.socket(socket.AF_INET, kind)
        try:
            s.bind(("127.0.0.1", p)); ports.append(s.getsockname()[1]); break
        except OSError:
            pass
        finally:
            s.close()
print(*ports)
PY
)
"$BIN_DIR/greenroom" serve --http-addr "127.0.0.1:$HTTP_PORT" --udp-addr "127.0.0.1:$UDP_PORT" \
  >"$OUT/$NAME-greenroom-server.log" 2>&1 &
GR_PID=$!
cleanup() { kill "$GR_PID" 2>/dev/null || true; wait "$GR_PID" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$HTTP_PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

# Janus (idempotent start; left running for later comparisons, stop with scripts/janus/stop.sh).
JANUS_OUT="$(scripts/janus/start.sh)"
JANUS_PID="$(echo "$JANUS_OUT" | tail -3 | sed -n 1p)"
JANUS_URL="$(echo "$JANUS_OUT" | tail -3 | sed -n 2p)"
JANUS_ICE_IP="$(echo "$JANUS_OUT" | tail -3 | sed -n 3p)"

echo "== greenroom (pid $GR_PID, http $HTTP_PORT, udp $UDP_PORT)"
"$BIN_DIR/greenroom-loadtest" --target greenroom --url "http://127.0.0.1:$HTTP_PORT" \
  --server-pid "$GR_PID" --name "$NAME" --out "$OUT" "$@" || echo "greenroom run failed"
sleep 2
echo "== janus (pid $JANUS_PID, $JANUS_URL, media on $JANUS_ICE_IP)"
if [ "$JANUS_ICE_IP" != 127.0.0.1 ]; then
  echo "janus media address is $JANUS_ICE_IP, not 127.0.0.1: refusing to load-test it" >&2
  exit 1
fi
# Janus's UDP sockets (its ICE candidates' addresses), sampled during the run.
SOCKS="$OUT/$NAME-janus-udp-sockets.txt"
: >"$SOCKS"
( while kill -0 "$JANUS_PID" 2>/dev/null; do
    ss -H -u -a -n -p 2>/dev/null | grep "pid=$JANUS_PID," | awk '{print $4}' >>"$SOCKS" || true
    sleep 1
  done ) &
SAMPLER=$!
"$BIN_DIR/greenroom-loadtest" --target janus --url "$JANUS_URL" \
  --server-pid "$JANUS_PID" --bind-ip "$JANUS_ICE_IP" --name "$NAME" --out "$OUT" "$@" || echo "janus run failed"
kill "$SAMPLER" 2>/dev/null || true
wait "$SAMPLER" 2>/dev/null || true
ADDRS="$(sed 's/:[0-9]*$//' "$SOCKS" | sort -u | tr '\n' ' ')"
echo "janus UDP socket addresses during the run: ${ADDRS:-none seen}"
if [ -n "$(sed 's/:[0-9]*$//' "$SOCKS" | grep -v '^127\.0\.0\.1$' || true)" ]; then
  echo "janus used a non-loopback address for media" >&2
  [ "${JANUS_ALLOW_NON_LOOPBACK:-0}" = 1 ] || exit 1
fi

echo
echo "== side by side ($NAME)"
FILES=()
for t in greenroom janus; do
  [ -f "$OUT/$NAME-$t.json" ] && FILES+=("$OUT/$NAME-$t.json")
done
[ "${#FILES[@]}" -gt 0 ] && "$BIN_DIR/greenroom-loadtest" --compare "${FILES[@]}"
