#!/usr/bin/env bash
# Starts Janus (Debian package `janus`, videoroom plugin, HTTP API) bound to 127.0.0.1 only, for
# the load tester's side-by-side comparison. Idempotent: installs the package if missing, writes
# its configuration under target/janus/, and does nothing if the Janus it started is still running.
#
#   scripts/janus/start.sh            # HTTP API on 127.0.0.1:8088 (JANUS_HTTP_PORT to change)
#   scripts/janus/stop.sh
#
# Prints three lines: the PID (also in target/janus/janus.pid), the API URL, and the address of
# its media sockets (127.0.0.1; bots bind it: --bind-ip).
#
# Every datagram stays on loopback. Janus's ICE code skips interfaces flagged IFF_LOOPBACK, so on
# its own it would gather the host's global address; a small LD_PRELOAD shim
# (scripts/janus/loopback-shim.c, compiled here with cc) clears that flag in getifaddrs()
# results, and `ice_enforce_list = "lo"` keeps Janus to the loopback interface: its candidates
# are 127.0.0.1.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DIR="${JANUS_DIR:-$ROOT/target/janus}"
PORT="${JANUS_HTTP_PORT:-8088}"
RTP_RANGE="${JANUS_RTP_RANGE:-20000-40000}"
DEBUG_LEVEL="${JANUS_DEBUG_LEVEL:-3}"
# Janus's default runs one event-loop thread per handle; JANUS_EVENT_LOOPS=N shares N loops.
EVENT_LOOPS_LINE=""
[ -n "${JANUS_EVENT_LOOPS:-}" ] && EVENT_LOOPS_LINE="event_loops = $JANUS_EVENT_LOOPS"

if ! command -v janus >/dev/null 2>&1; then
  echo "installing the janus package" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq >&2 || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends janus >&2
fi

ICE_IP=127.0.0.1
ICE_IF=lo
mkdir -p "$DIR"
SHIM="$DIR/loopback-shim.so"
SHIM_SRC="$ROOT/scripts/janus/loopback-shim.c"
if [ ! -f "$SHIM" ] || [ "$SHIM_SRC" -nt "$SHIM" ]; then
  cc -shared -fPIC -O2 -Wall -Werror -o "$SHIM" "$SHIM_SRC" -ldl
fi

mkdir -p "$DIR/conf"
PIDFILE="$DIR/janus.pid"
if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null \
  && [ "$(cat "$DIR/ice-ip" 2>/dev/null)" = "$ICE_IP" ] \
  && curl -fsS "http://127.0.0.1:$PORT/janus/info" >/dev/null 2>&1; then
  cat "$PIDFILE"
  echo "http://127.0.0.1:$PORT/janus"
  cat "$DIR/ice-ip"
  exit 0
fi

PLUGINS=/usr/lib/x86_64-linux-gnu/janus/plugins
if [ ! -d "$PLUGINS" ]; then
  PLUGINS="$( (dpkg -L janus 2>/dev/null || true) | grep '/janus/plugins$' | head -1)"
fi
TRANSPORTS="$(dirname "$PLUGINS")/transports"

cat > "$DIR/conf/janus.jcfg" <<CFG
general: {
  configs_folder = "$DIR/conf"
  plugins_folder = "$PLUGINS"
  transports_folder = "$TRANSPORTS"
  events_folder = "$(dirname "$PLUGINS")/events"
  loggers_folder = "$(dirname "$PLUGINS")/loggers"
  debug_level = $DEBUG_LEVEL
  admin_secret = "janusoverlord-disabled"
  protected_folders = [ "/bin", "/boot", "/dev", "/etc", "/initrd", "/lib", "/lib32", "/lib64", "/proc", "/sbin", "/sys", "/usr", "/var" ]
  session_timeout = 120
  $EVENT_LOOPS_LINE
}
certificates: {
}
media: {
  rtp_port_range = "$RTP_RANGE"
  nack_optimizations = false
}
nat: {
  nice_debug = false
  ice_lite = false
  ice_tcp = false
  full_trickle = false
  ice_enforce_list = "$ICE_IF"
}
plugins: {
  disable = "libjanus_audiobridge.so,libjanus_duktape.so,libjanus_echotest.so,libjanus_lua.so,libjanus_nosip.so,libjanus_recordplay.so,libjanus_sip.so,libjanus_streaming.so,libjanus_textroom.so,libjanus_videocall.so,libjanus_voicemail.so"
}
transports: {
  disable = "libjanus_websockets.so,libjanus_pfunix.so,libjanus_mqtt.so,libjanus_nanomsg.so,libjanus_rabbitmq.so"
}
loggers: {
  disable = "libjanus_jsonlog.so"
}
events: {
  broadcast = false
}
CFG

cat > "$DIR/conf/janus.transport.http.jcfg" <<CFG
general: {
  json = "indented"
  base_path = "/janus"
  http = true
  port = $PORT
  ip = "127.0.0.1"
  https = false
}
admin: {
  admin_http = false
  admin_https = false
}
cors: {
}
CFG

# Rooms are created by the load tester through the API; no static rooms.
cat > "$DIR/conf/janus.plugin.videoroom.jcfg" <<CFG
general: {
  string_ids = false
}
CFG

rm -f "$PIDFILE"
: >"$DIR/janus.log"
# A Janus left from an older configuration (global address) is stopped first.
if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  kill "$(cat "$PIDFILE")" 2>/dev/null || true
  sleep 1
fi
# One UDP socket per PeerConnection (plus its event loop's descriptors): a 1 x 600 room needs
# more than the usual soft limit of 1024.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
LD_PRELOAD="$SHIM" janus --config="$DIR/conf/janus.jcfg" --configs-folder="$DIR/conf" \
  --interface="$ICE_IP" --ice-enforce-list="$ICE_IF" \
  --log-file="$DIR/janus.log" --disable-stdout --disable-colors \
  --pid-file="$PIDFILE" --daemon >/dev/null 2>&1 || true

for _ in $(seq 1 100); do
  if curl -fsS "http://127.0.0.1:$PORT/janus/info" >/dev/null 2>&1 && [ -s "$PIDFILE" ]; then
    cat "$PIDFILE"
    echo "http://127.0.0.1:$PORT/janus"
    echo "$ICE_IP" | tee "$DIR/ice-ip"
    exit 0
  fi
  sleep 0.1
done
echo "janus did not come up; see $DIR/janus.log" >&2
tail -20 "$DIR/janus.log" >&2 || true
exit 1
