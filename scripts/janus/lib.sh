# Shell functions shared by scripts/compare-janus.sh and scripts/bench-issue12.sh (sourced, not
# run): a Greenroom server on free loopback ports, a fresh Janus, and the loopback check.
# Expects ROOT (the repository) and BIN_DIR (target/<profile>) to be set.

# Starts `greenroom serve` on 127.0.0.1 (HTTP 7880 / UDP 7882 when free, else free ports), its
# output in $1. Sets GR_PID, GR_URL, GR_UDP_PORT; waits for /healthz.
gr_start() {
  local log="$1" http udp
  read -r http udp < <(python3 - <<'PY'
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
  "$BIN_DIR/greenroom" serve --http-addr "127.0.0.1:$http" --udp-addr "127.0.0.1:$udp" \
    >"$log" 2>&1 &
  GR_PID=$!
  GR_URL="http://127.0.0.1:$http"
  GR_UDP_PORT="$udp"
  for _ in $(seq 1 100); do
    curl -fsS "$GR_URL/healthz" >/dev/null 2>&1 && return 0
    kill -0 "$GR_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "greenroom did not come up; see $log" >&2
  return 1
}

# Stops the Greenroom started by gr_start (its PID only).
gr_stop() {
  if [ -n "${GR_PID:-}" ]; then
    kill "$GR_PID" 2>/dev/null || true
    wait "$GR_PID" 2>/dev/null || true
    GR_PID=""
  fi
}

# Starts Janus through scripts/janus/start.sh (idempotent); with "fresh" as $1, stops the one
# it started before, so that its memory figures start from a new process. Sets JANUS_PID,
# JANUS_URL, JANUS_ICE_IP; refuses a media address other than 127.0.0.1.
janus_start() {
  if [ "${1:-}" = fresh ]; then
    "$ROOT/scripts/janus/stop.sh"
  fi
  local out
  out="$("$ROOT/scripts/janus/start.sh")"
  JANUS_PID="$(echo "$out" | tail -3 | sed -n 1p)"
  JANUS_URL="$(echo "$out" | tail -3 | sed -n 2p)"
  JANUS_ICE_IP="$(echo "$out" | tail -3 | sed -n 3p)"
  if [ "$JANUS_ICE_IP" != 127.0.0.1 ]; then
    echo "janus media address is $JANUS_ICE_IP, not 127.0.0.1: refusing to load-test it" >&2
    return 1
  fi
}

# Samples the UDP sockets of process $1 (`ss -uanp`) once a second into file $2, in the
# background, until sockets_stop. Sets SAMPLER.
sockets_start() {
  local pid="$1" file="$2"
  : >"$file"
  ( while kill -0 "$pid" 2>/dev/null; do
      ss -H -u -a -n -p 2>/dev/null | grep "pid=$pid," | awk '{print $4}' >>"$file" || true
      sleep 1
    done ) &
  SAMPLER=$!
}

# Stops the sampler, prints the addresses seen in file $1 under label $2, and fails when one is
# not 127.0.0.1 (JANUS_ALLOW_NON_LOOPBACK=1: only warn).
sockets_check() {
  local file="$1" label="$2" addrs
  kill "$SAMPLER" 2>/dev/null || true
  wait "$SAMPLER" 2>/dev/null || true
  addrs="$(sed 's/:[0-9]*$//' "$file" | sort -u | tr '\n' ' ')"
  echo "$label UDP socket addresses during the run: ${addrs:-none seen}" >&2
  if [ -n "$(sed 's/:[0-9]*$//' "$file" | grep -v '^127\.0\.0\.1$' || true)" ]; then
    echo "$label used a non-loopback address for media" >&2
    [ "${JANUS_ALLOW_NON_LOOPBACK:-0}" = 1 ] || return 1
  fi
}
