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

# shellcheck source=scripts/janus/lib.sh
. "$ROOT/scripts/janus/lib.sh"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

gr_start "$OUT/$NAME-greenroom-server.log"
trap gr_stop EXIT
# Janus (idempotent start; left running for later comparisons, stop with scripts/janus/stop.sh).
janus_start

echo "== greenroom (pid $GR_PID, $GR_URL, udp $GR_UDP_PORT)"
"$BIN_DIR/greenroom-loadtest" --target greenroom --url "$GR_URL" \
  --server-pid "$GR_PID" --name "$NAME" --out "$OUT" "$@" || echo "greenroom run failed"
sleep 2
echo "== janus (pid $JANUS_PID, $JANUS_URL, media on $JANUS_ICE_IP)"
# Janus's UDP sockets (its ICE candidates' addresses), sampled during the run.
SOCKS="$OUT/$NAME-janus-udp-sockets.txt"
sockets_start "$JANUS_PID" "$SOCKS"
"$BIN_DIR/greenroom-loadtest" --target janus --url "$JANUS_URL" \
  --server-pid "$JANUS_PID" --bind-ip "$JANUS_ICE_IP" --name "$NAME" --out "$OUT" "$@" || echo "janus run failed"
sockets_check "$SOCKS" janus

echo
echo "== side by side ($NAME)"
FILES=()
for t in greenroom janus; do
  [ -f "$OUT/$NAME-$t.json" ] && FILES+=("$OUT/$NAME-$t.json")
done
[ "${#FILES[@]}" -gt 0 ] && "$BIN_DIR/greenroom-loadtest" --compare "${FILES[@]}"
